/* SPDX-License-Identifier: MIT */
#pragma once

/* Intrusive doubly linked lists, after systemd's list.h: the links live in the item
 * (LIST_FIELDS), the head is a plain pointer, nothing is allocated. name picks the pair of
 * fields, so an item can be on several lists at once (a lease on its resource's list and on
 * its connection's). Removing is O(1) and safe on an item that is not linked (its links
 * are NULL and it is not the head). */

#include <assert.h>
#include <stddef.h>

/* In the item's struct: the links of list "name". */
#define LIST_FIELDS(t, name) t *name##_next, *name##_prev

/* Links item at the front of the list whose head is head. */
#define LIST_PREPEND(name, head, item)                                                  \
        do {                                                                            \
                __typeof__(*(head)) **_head = &(head), *_item = (item);                 \
                assert(_item);                                                          \
                if ((_item->name##_next = *_head))                                      \
                        _item->name##_next->name##_prev = _item;                        \
                _item->name##_prev = NULL;                                              \
                *_head = _item;                                                         \
        } while (0)

/* Links item at the end; tail is the list's tail pointer (a queue keeps both). */
#define LIST_APPEND_TAIL(name, head, tail, item)                                        \
        do {                                                                            \
                __typeof__(*(head)) **_head = &(head), **_tail = &(tail), *_item = (item); \
                assert(_item);                                                          \
                _item->name##_next = NULL;                                              \
                if ((_item->name##_prev = *_tail))                                      \
                        _item->name##_prev->name##_next = _item;                        \
                else                                                                    \
                        *_head = _item;                                                 \
                *_tail = _item;                                                         \
        } while (0)

/* Unlinks item from the list whose head is head; its links become NULL. */
#define LIST_REMOVE(name, head, item)                                                   \
        do {                                                                            \
                __typeof__(*(head)) **_head = &(head), *_item = (item);                 \
                assert(_item);                                                          \
                if (_item->name##_next)                                                 \
                        _item->name##_next->name##_prev = _item->name##_prev;           \
                if (_item->name##_prev)                                                 \
                        _item->name##_prev->name##_next = _item->name##_next;           \
                else if (*_head == _item)                                               \
                        *_head = _item->name##_next;                                    \
                _item->name##_next = _item->name##_prev = NULL;                         \
        } while (0)

/* The same for a list that keeps a tail pointer too. */
#define LIST_REMOVE_TAIL(name, head, tail, item)                                        \
        do {                                                                            \
                __typeof__(*(head)) **_tail = &(tail), *_it = (item);                   \
                if (*_tail == _it)                                                      \
                        *_tail = _it->name##_prev;                                      \
                LIST_REMOVE(name, head, _it);                                           \
        } while (0)

#define LIST_FOREACH(name, i, head) for (__typeof__(*(head)) *i = (head); i; i = i->name##_next)

/* Safe against freeing i in the body. */
#define LIST_FOREACH_SAFE(name, i, n, head)                                             \
        for (__typeof__(*(head)) *i = (head), *n = i ? i->name##_next : NULL; i;        \
             i = n, n = i ? i->name##_next : NULL)

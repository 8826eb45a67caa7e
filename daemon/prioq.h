/* SPDX-License-Identifier: MIT */
#pragma once

/* A binary min-heap of deadlines. Items are embedded in their owners (leases, waiters)
 * and know their own index, so removal and re-keying are O(log n): TTL renewals and
 * releases at a million leases stay cheap, and one ev_timer is armed for the top. */

#include <stddef.h>
#include <stdint.h>

#include "usec.h"

#define PRIOQ_IDX_NULL UINT32_MAX

typedef struct PrioqItem {
        usec_t when;            /* ro while queued: change it with prioq_reshuffle() */
        uint32_t idx;           /* private: PRIOQ_IDX_NULL when not queued */
        uint32_t tag;           /* the owner's: a 32-bit index leaves this word free (16-byte items) */
} PrioqItem;

typedef struct Prioq {
        PrioqItem **items;      /* private */
        size_t n, allocated;    /* ro: n */
} Prioq;

/* Leaves tag alone. */
static inline void prioq_item_init(PrioqItem *i) {
        i->when = USEC_INFINITY;
        i->idx = PRIOQ_IDX_NULL;
}
static inline int prioq_item_queued(const PrioqItem *i) {
        return i->idx != PRIOQ_IDX_NULL;
}

void prioq_done(Prioq *q);
/* 0, -ENOMEM, or -E2BIG past 2^32 - 1 items. */
int prioq_put(Prioq *q, PrioqItem *i);
void prioq_remove(Prioq *q, PrioqItem *i);
/* Moves i to its place after i->when changed. */
void prioq_reshuffle(Prioq *q, PrioqItem *i);
static inline PrioqItem *prioq_peek(const Prioq *q) {
        return q->n ? q->items[0] : NULL;
}

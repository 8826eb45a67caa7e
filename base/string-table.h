/* SPDX-License-Identifier: MIT */
#pragma once

/* Enums and their names from one table, as systemd's string-table.h: an array indexed by
 * the enum (designated initializers, NULL for a gap), read both ways. */

#include <errno.h>
#include <stdbool.h>
#include <string.h>
#include <sys/types.h>

static inline bool streq(const char *a, const char *b) {
        return strcmp(a, b) == 0;
}

/* Either may be NULL; two NULLs are equal. */
static inline bool streq_ptr(const char *a, const char *b) {
        return a && b ? strcmp(a, b) == 0 : a == b;
}

/* The index of s in table (n entries), or -EINVAL (also for s NULL). */
static inline ssize_t string_table_lookup(const char *const *table, size_t n, const char *s) {
        for (size_t i = 0; s && i < n; i++)
                if (table[i] && strcmp(table[i], s) == 0)
                        return (ssize_t) i;
        return -EINVAL;
}

/* Whether s is one of the NULL-terminated list l (the keys a method allows, say). */
static inline bool strv_contains(const char *const *l, const char *s) {
        for (; *l; l++)
                if (strcmp(*l, s) == 0)
                        return true;
        return false;
}

/* name##_to_string(type) → the table's entry or NULL (out of range, negative included),
 * and name##_from_string(const char *) → the value or -EINVAL, from name##_table. scope:
 * static, or nothing, or _public_. */
#define DEFINE_STRING_TABLE_LOOKUP_TO_STRING(name, type, scope)                         \
        scope const char *name##_to_string(type i) {                                    \
                size_t _i = (size_t) i;                                                 \
                return _i < sizeof(name##_table) / sizeof(name##_table[0]) ? name##_table[_i] : NULL; \
        }
#define DEFINE_STRING_TABLE_LOOKUP_FROM_STRING(name, type, scope)                       \
        scope type name##_from_string(const char *s) {                                  \
                return (type) string_table_lookup(name##_table,                         \
                                                  sizeof(name##_table) / sizeof(name##_table[0]), s); \
        }
#define DEFINE_STRING_TABLE_LOOKUP(name, type)                                          \
        DEFINE_STRING_TABLE_LOOKUP_TO_STRING(name, type, )                              \
        DEFINE_STRING_TABLE_LOOKUP_FROM_STRING(name, type, )

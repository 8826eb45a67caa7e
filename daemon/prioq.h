/* SPDX-License-Identifier: MIT */
#pragma once

/* A binary min-heap of deadlines. Items are embedded in their owners (leases, waiters)
 * and know their own index, so removal and re-keying are O(log n): TTL renewals and
 * releases at a million leases stay cheap, and one ev_timer is armed for the top. */

#include <stddef.h>

#include "usec.h"

#define PRIOQ_IDX_NULL ((size_t) -1)

typedef struct PrioqItem {
        usec_t when;            /* ro while queued: change it with prioq_reshuffle() */
        size_t idx;             /* private: PRIOQ_IDX_NULL when not queued */
} PrioqItem;

typedef struct Prioq {
        PrioqItem **items;      /* private */
        size_t n, allocated;    /* ro: n */
} Prioq;

static inline void prioq_item_init(PrioqItem *i) {
        *i = (PrioqItem) { .when = USEC_INFINITY, .idx = PRIOQ_IDX_NULL };
}
static inline int prioq_item_queued(const PrioqItem *i) {
        return i->idx != PRIOQ_IDX_NULL;
}

void prioq_done(Prioq *q);
/* 0 or -ENOMEM. */
int prioq_put(Prioq *q, PrioqItem *i);
void prioq_remove(Prioq *q, PrioqItem *i);
/* Moves i to its place after i->when changed. */
void prioq_reshuffle(Prioq *q, PrioqItem *i);
static inline PrioqItem *prioq_peek(const Prioq *q) {
        return q->n ? q->items[0] : NULL;
}

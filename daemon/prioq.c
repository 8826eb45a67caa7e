/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>

#include "prioq.h"

void prioq_done(Prioq *q) {
        for (size_t i = 0; i < q->n; i++)
                q->items[i]->idx = PRIOQ_IDX_NULL;
        free(q->items);
        *q = (Prioq) {};
}

static void set(Prioq *q, size_t k, PrioqItem *i) {
        q->items[k] = i;
        i->idx = (uint32_t) k;
}

static void sift_up(Prioq *q, size_t k) {
        PrioqItem *i = q->items[k];
        while (k > 0) {
                size_t p = (k - 1) / 2;
                if (q->items[p]->when <= i->when)
                        break;
                set(q, k, q->items[p]);
                k = p;
        }
        set(q, k, i);
}

static void sift_down(Prioq *q, size_t k) {
        PrioqItem *i = q->items[k];
        for (;;) {
                size_t c = 2 * k + 1;
                if (c >= q->n)
                        break;
                if (c + 1 < q->n && q->items[c + 1]->when < q->items[c]->when)
                        c++;
                if (i->when <= q->items[c]->when)
                        break;
                set(q, k, q->items[c]);
                k = c;
        }
        set(q, k, i);
}

int prioq_put(Prioq *q, PrioqItem *i) {
        if (q->n >= PRIOQ_IDX_NULL)
                return -E2BIG;
        if (q->n >= q->allocated) {
                size_t a = q->allocated ? q->allocated * 2 : 64;
                PrioqItem **p = realloc(q->items, a * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                q->items = p;
                q->allocated = a;
        }
        set(q, q->n++, i);
        sift_up(q, q->n - 1);
        return 0;
}

void prioq_remove(Prioq *q, PrioqItem *i) {
        if (i->idx == PRIOQ_IDX_NULL)
                return;
        size_t k = i->idx;
        i->idx = PRIOQ_IDX_NULL;
        if (--q->n == k)
                return;
        set(q, k, q->items[q->n]);
        prioq_reshuffle(q, q->items[k]);
}

void prioq_reshuffle(Prioq *q, PrioqItem *i) {
        size_t k = i->idx;
        if (k == PRIOQ_IDX_NULL)
                return;
        if (k > 0 && q->items[(k - 1) / 2]->when > i->when)
                sift_up(q, k);
        else
                sift_down(q, k);
}

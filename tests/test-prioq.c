/* SPDX-License-Identifier: MIT */
/* The two containers under the engine: the deadline heap (pops in order, removal and
 * re-keying from anywhere keep the heap valid, indices stay true) and the string hash
 * map (many entries, removal during iteration, lookups after growth, the per-uid keys), and the map of
 * objects that carry their key (the same, plus hashes that collide). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"
#include "objmap.h"
#include "prioq.h"

static uint64_t rng_state = 0x243f6a8885a308d3ULL;
static uint64_t rng(void) {
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1dULL;
}

/* Every parent is not later than its children, and every item knows its index. */
static void check_heap(const Prioq *q) {
        for (size_t k = 0; k < q->n; k++) {
                assert_int_equal(q->items[k]->idx, k);
                if (k > 0)
                        assert_true(q->items[(k - 1) / 2]->when <= q->items[k]->when);
        }
}

static void test_prioq_order(void **state) {
        enum { N = 5000 };
        PrioqItem *items = calloc(N, sizeof(*items));
        assert_non_null(items);
        Prioq q = {};
        for (size_t i = 0; i < N; i++) {
                prioq_item_init(&items[i]);
                assert_false(prioq_item_queued(&items[i]));
                items[i].when = rng() % 1000;   /* many equal deadlines */
                assert_int_equal(prioq_put(&q, &items[i]), 0);
                assert_true(prioq_item_queued(&items[i]));
        }
        check_heap(&q);

        /* Remove a third from anywhere, re-key another third. */
        for (size_t i = 0; i < N; i += 3)
                prioq_remove(&q, &items[i]);
        for (size_t i = 1; i < N; i += 3) {
                items[i].when = rng() % 2000;
                prioq_reshuffle(&q, &items[i]);
        }
        check_heap(&q);
        for (size_t i = 0; i < N; i += 3)
                assert_false(prioq_item_queued(&items[i]));
        /* Removing twice is harmless. */
        prioq_remove(&q, &items[0]);

        usec_t last = 0;
        size_t popped = 0;
        PrioqItem *top;
        while ((top = prioq_peek(&q))) {
                assert_true(top->when >= last);
                last = top->when;
                prioq_remove(&q, top);
                popped++;
        }
        assert_int_equal(popped, N - (N + 2) / 3);
        assert_int_equal(q.n, 0);
        prioq_done(&q);
        free(items);
}

static void test_prioq_done_unqueues(void **state) {
        PrioqItem a, b;
        prioq_item_init(&a);
        prioq_item_init(&b);
        a.when = 5;
        b.when = 1;
        Prioq q = {};
        assert_int_equal(prioq_put(&q, &a), 0);
        assert_int_equal(prioq_put(&q, &b), 0);
        assert_ptr_equal(prioq_peek(&q), &b);
        prioq_done(&q);
        assert_false(prioq_item_queued(&a));
        assert_false(prioq_item_queued(&b));
        assert_null(prioq_peek(&q));
}

static void test_hashmap(void **state) {
        enum { N = 20000 };
        char (*keys)[16] = calloc(N, sizeof(*keys));
        assert_non_null(keys);
        Hashmap h;
        hashmap_init(&h);
        for (int i = 0; i < N; i++) {
                snprintf(keys[i], sizeof(keys[i]), "k%d", i);
                assert_int_equal(hashmap_put(&h, keys[i], &keys[i]), 0);
        }
        assert_int_equal(h.size, N);
        assert_int_equal(hashmap_put(&h, keys[7], &keys[8]), -EEXIST);
        for (int i = 0; i < N; i++)
                assert_ptr_equal(hashmap_get(&h, keys[i]), &keys[i]);
        assert_null(hashmap_get(&h, "absent"));
        /* Lookups go by content, not by pointer. */
        assert_ptr_equal(hashmap_get(&h, "k123"), &keys[123]);

        /* Remove every other entry while iterating; each value is seen exactly once. */
        unsigned char *seen = calloc(N, 1);
        assert_non_null(seen);
        HashmapIter it = {};
        void *v;
        size_t visited = 0;
        while (hashmap_iterate(&h, &it, &v)) {
                int i = (int) ((char (*)[16]) v - keys);
                assert_true(i >= 0 && i < N);
                assert_int_equal(seen[i], 0);
                seen[i] = 1;
                visited++;
                if (i % 2 == 0)
                        assert_ptr_equal(hashmap_remove(&h, keys[i]), v);
        }
        assert_int_equal(visited, N);
        assert_int_equal(h.size, N / 2);
        for (int i = 0; i < N; i++)
                assert_ptr_equal(hashmap_get(&h, keys[i]), i % 2 ? &keys[i] : NULL);
        assert_null(hashmap_remove(&h, keys[0]));

        /* Remove everything while iterating. */
        it = (HashmapIter) {};
        while (hashmap_iterate(&h, &it, &v))
                assert_non_null(hashmap_remove(&h, *(char (*)[16]) v));
        assert_int_equal(h.size, 0);
        it = (HashmapIter) {};
        assert_false(hashmap_iterate(&h, &it, &v));

        /* Churn, as leases come and go: removed entries leave tombstones, which must not
         * fill the table (a lookup would then never find an empty slot) or hide entries. */
        for (int i = 0; i < 10; i++)
                assert_int_equal(hashmap_put(&h, keys[i], &keys[i]), 0);
        for (int i = 10; i < N; i++) {
                assert_int_equal(hashmap_put(&h, keys[i], &keys[i]), 0);
                assert_ptr_equal(hashmap_remove(&h, keys[i]), &keys[i]);
                assert_null(hashmap_get(&h, keys[i]));
        }
        assert_int_equal(h.size, 10);
        for (int i = 0; i < 10; i++)
                assert_ptr_equal(hashmap_get(&h, keys[i]), &keys[i]);
        assert_true(h.n_used * 4 <= h.n_slots * 3);
        hashmap_done(&h);
        free(seen);
        free(keys);
}

typedef struct Obj {
        char key[16];
} Obj;

static bool obj_eq(const void *obj, const void *key) {
        return strcmp(((const Obj *) obj)->key, key) == 0;
}

/* hash_mask: which bits of the real hash to keep; 0 makes every hash collide, so
 * that only ObjMap.eq tells the objects apart. */
static void check_objmap(unsigned n, uint32_t hash_mask) {
        Obj *objs = calloc(n, sizeof(*objs));
        assert_non_null(objs);
        ObjMap m;
        objmap_init(&m, obj_eq);
#define H(k) (objmap_hash_string(k) & hash_mask)
        for (unsigned i = 0; i < n; i++) {
                snprintf(objs[i].key, sizeof(objs[i].key), "k%u", i);
                assert_int_equal(objmap_put(&m, H(objs[i].key), objs[i].key, &objs[i]), 0);
        }
        assert_int_equal(m.size, n);
        /* The same key in another object is a duplicate. */
        Obj dup = { .key = "k7" };
        assert_int_equal(objmap_put(&m, H(dup.key), dup.key, &dup), -EEXIST);
        for (unsigned i = 0; i < n; i++)
                assert_ptr_equal(objmap_get(&m, H(objs[i].key), objs[i].key), &objs[i]);
        assert_null(objmap_get(&m, H("absent"), "absent"));
        /* Lookups go by content, not by pointer. */
        assert_ptr_equal(objmap_get(&m, H("k12"), "k12"), &objs[12]);

        /* Remove every other object while iterating; each is seen exactly once. */
        unsigned char *seen = calloc(n, 1);
        assert_non_null(seen);
        ObjMapIter it = {};
        void *v;
        unsigned visited = 0;
        while (objmap_iterate(&m, &it, &v)) {
                unsigned i = (unsigned) ((Obj *) v - objs);
                assert_true(i < n);
                assert_int_equal(seen[i], 0);
                seen[i] = 1;
                visited++;
                if (i % 2 == 0)
                        assert_ptr_equal(objmap_remove(&m, H(objs[i].key), objs[i].key), v);
        }
        assert_int_equal(visited, n);
        assert_int_equal(m.size, n / 2);
        for (unsigned i = 0; i < n; i++)
                assert_ptr_equal(objmap_get(&m, H(objs[i].key), objs[i].key), i % 2 ? &objs[i] : NULL);
        assert_null(objmap_remove(&m, H(objs[0].key), objs[0].key));

        /* Churn: tombstones must neither fill the table nor hide objects. */
        for (unsigned i = 0; i < n; i += 2) {
                assert_int_equal(objmap_put(&m, H(objs[i].key), objs[i].key, &objs[i]), 0);
                assert_ptr_equal(objmap_remove(&m, H(objs[i].key), objs[i].key), &objs[i]);
        }
        assert_int_equal(m.size, n / 2);
        for (unsigned i = 1; i < n; i += 2)
                assert_ptr_equal(objmap_get(&m, H(objs[i].key), objs[i].key), &objs[i]);
        assert_true(m.n_used * 4 <= m.n_slots * 3);
        /* At most 4 slots an object after growth (load ≥ 1/4 just after a rehash at ≤ 1/2). */
        assert_true(m.n_slots <= 4 * (size_t) n + 64);
#undef H
        objmap_done(&m);
        assert_int_equal(m.size, 0);
        free(seen);
        free(objs);
}

static void test_objmap(void **state) {
        check_objmap(20000, UINT32_MAX);
        check_objmap(300, 0);           /* every hash the same */
        check_objmap(2000, 0xf);        /* 16 hashes */
}

/* Per-uid entries are keyed by the uid in decimal ("%u"), at the extremes too, and the
 * same uid finds the same entry. */
static void test_uid_entry_keys(void **state) {
        Hashmap h;
        hashmap_init(&h);
        static const uint32_t uids[] = { 0, 7, 10, 99, 1000, 65534, 4294967295u };
        char *e[(sizeof(uids) / sizeof(uids[0]))];
        for (size_t i = 0; i < (sizeof(uids) / sizeof(uids[0])); i++) {
                char want[16];
                snprintf(want, sizeof(want), "%u", uids[i]);
                e[i] = hashmap_uid_entry(&h, uids[i], 32, true);
                assert_non_null(e[i]);
                assert_string_equal(e[i], want);
                assert_ptr_equal(hashmap_get(&h, want), e[i]);
        }
        for (size_t i = 0; i < (sizeof(uids) / sizeof(uids[0])); i++)
                assert_ptr_equal(hashmap_uid_entry(&h, uids[i], 32, false), e[i]);
        assert_null(hashmap_uid_entry(&h, 12345, 32, false));
        for (size_t i = 0; i < (sizeof(uids) / sizeof(uids[0])); i++) {
                hashmap_remove(&h, e[i]);
                free(e[i]);
        }
        hashmap_done(&h);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_prioq_order),
                cmocka_unit_test(test_prioq_done_unqueues),
                cmocka_unit_test(test_hashmap),
                cmocka_unit_test(test_objmap),
                cmocka_unit_test(test_uid_entry_keys),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

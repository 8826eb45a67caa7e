/* SPDX-License-Identifier: MIT */
/* The random pool: ids and secrets cost one getrandom() per pool, not one per grant, and
 * stay distinct; a failing source is an error, never a predictable id. getrandom() is
 * interposed below (the daemon's code is linked in statically), so the count is of what
 * the engine really calls. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "hashmap.h"
#include "macro.h"
#include "random-pool.h"

static unsigned n_getrandom;
static bool getrandom_fails;

ssize_t getrandom(void *buf, size_t n, unsigned flags) {
        n_getrandom++;
        if (getrandom_fails) {
                errno = EIO;
                return -1;
        }
        return syscall(SYS_getrandom, buf, n, flags);
}

/* A source that hands out at most 100 bytes per call, as getrandom() may when a signal
 * interrupts a large request. */
static ssize_t short_fill(void *buf, size_t n, unsigned flags) {
        n_getrandom++;
        return getrandom(buf, MIN(n, (size_t) 100), flags) >= 0 ? (ssize_t) MIN(n, (size_t) 100) : -1;
}

static void test_pool_draws(void **state) {
        RandomPool *p = malloc(sizeof(*p));
        assert_non_null(p);
        random_pool_init(p, NULL);
        n_getrandom = 0;
        uint8_t prev[24] = {}, cur[24];
        for (unsigned i = 0; i < 1000; i++) {
                assert_int_equal(random_pool_get(p, cur, sizeof(cur)), 0);
                assert_memory_not_equal(prev, cur, sizeof(cur));
                memcpy(prev, cur, sizeof(cur));
        }
        /* 24 000 bytes from 4 KiB pools. */
        assert_int_equal(n_getrandom, (1000 * 24 + RANDOM_POOL_SIZE - 1) / RANDOM_POOL_SIZE);
        /* What was handed out is not left in the pool. */
        for (size_t i = 0; i < p->pos; i++)
                assert_int_equal(p->buf[i], 0);

        /* Larger than a pool: straight from the source. */
        uint8_t *big = calloc(1, RANDOM_POOL_SIZE * 2);
        assert_non_null(big);
        assert_int_equal(random_pool_get(p, big, RANDOM_POOL_SIZE * 2), 0);
        assert_memory_not_equal(big, big + RANDOM_POOL_SIZE, 64);
        free(big);

        /* Short reads are completed. */
        random_pool_init(p, short_fill);
        n_getrandom = 0;
        assert_int_equal(random_pool_get(p, cur, sizeof(cur)), 0);
        assert_true(n_getrandom >= RANDOM_POOL_SIZE / 100);
        random_pool_done(p);
        free(p);
}

static void test_pool_fails(void **state) {
        RandomPool p;
        random_pool_init(&p, NULL);
        uint8_t b[24];
        getrandom_fails = true;
        assert_int_equal(random_pool_get(&p, b, sizeof(b)), -EIO);
        assert_int_equal(random_pool_get(&p, b, sizeof(b)), -EIO);
        getrandom_fails = false;
        assert_int_equal(random_pool_get(&p, b, sizeof(b)), 0);
        random_pool_done(&p);
}

static void noop_event(Engine *e, const Event *ev, Lease *l, void *u) {
}
static const EngineCallbacks callbacks = { .event = noop_event };
static const Owner owner = { .uid = 1, .gid = 1, .pid = 1, .comm = (char *) "t" };

#define N_GRANTS 2000

/* The grant path: N_GRANTS leases need one getrandom() per 4 KiB of ids and secrets
 * (before the pool: one per grant), and every id is new. */
static void test_engine_grants(void **state) {
        Engine *e;
        assert_int_equal(engine_new(NULL, NULL, &callbacks, NULL, &e), 0);
        Holder h = {};
        Hashmap ids;
        hashmap_init(&ids);
        static char names[N_GRANTS][16];
        static char id_copy[N_GRANTS][LEASE_ID_LEN + 1];
        n_getrandom = 0;
        for (unsigned i = 0; i < N_GRANTS; i++) {
                snprintf(names[i], sizeof(names[i]), "r%u", i);
                Lease *l = NULL;
                Waiter *w = NULL;
                AcquireParams p = { .resource = names[i], .owner = &owner, .try_once = true };
                assert_int_equal(engine_acquire(e, &p, &h, NULL, &l, &w), 0);
                assert_non_null(l);
                lease_id_to_string(l->id, id_copy[i]);
                assert_int_equal(strlen(id_copy[i]), LEASE_ID_LEN);
                assert_null(hashmap_get(&ids, id_copy[i]));
                assert_int_equal(hashmap_put(&ids, id_copy[i], id_copy[i]), 0);
        }
        size_t per_grant = (LEASE_ID_LEN + LEASE_SECRET_LEN) / 2;
        assert_true(n_getrandom <= (N_GRANTS * per_grant) / RANDOM_POOL_SIZE + 1);
        hashmap_done(&ids);
        engine_free(e);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_pool_draws),
                cmocka_unit_test(test_pool_fails),
                cmocka_unit_test(test_engine_grants),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

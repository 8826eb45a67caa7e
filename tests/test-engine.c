/* SPDX-License-Identifier: MIT */
/* The lease engine on its own: grant order, units, exclusivity, tokens, deadlines on a
 * clock the test moves, restore from a real sqlite store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "engine.h"
#include "macro.h"
#include "store.h"

typedef struct Fixture {
        usec_t mono, real;
        Engine *engine;
        Holder holders[8];
        /* what the callbacks saw */
        Waiter *granted_waiters[32];
        char granted_ids[32][LEASE_ID_LEN + 1];
        void *granted_userdata[32];
        unsigned n_granted;
        unsigned n_timed_out;
        void *timed_out_userdata[8];
        unsigned n_moved;
        unsigned n_events[_EVENT_TYPE_MAX];
        char last_reason[128];
} Fixture;

static usec_t clock_mono(void *u) {
        return ((Fixture *) u)->mono;
}
static usec_t clock_real(void *u) {
        return ((Fixture *) u)->real;
}

static void cb_granted(Engine *e, Waiter *w, Lease *l, void *u) {
        Fixture *f = u;
        assert_true(f->n_granted < ELEMENTSOF(f->granted_ids));
        snprintf(f->granted_ids[f->n_granted], sizeof(f->granted_ids[0]), "%s", LEASE_ID_STR(l));
        f->granted_userdata[f->n_granted] = w->userdata;
        f->n_granted++;
}
static void cb_timed_out(Engine *e, Waiter *w, void *u) {
        Fixture *f = u;
        f->timed_out_userdata[f->n_timed_out++ % 8] = w->userdata;
}
static void cb_moved(Engine *e, Waiter *w, void *u) {
        ((Fixture *) u)->n_moved++;
}
static void cb_event(Engine *e, const Event *ev, Lease *l, void *u) {
        Fixture *f = u;
        f->n_events[ev->type]++;
        snprintf(f->last_reason, sizeof(f->last_reason), "%s", strempty(ev->reason));
}

static const EngineCallbacks callbacks = {
        .granted = cb_granted,
        .timed_out = cb_timed_out,
        .moved = cb_moved,
        .event = cb_event,
};

static const Owner owner = { .uid = 1000, .gid = 1000, .pid = 4242, .comm = (char *) "test" };

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        f->mono = 1000 * USEC_PER_SEC;
        f->real = 1700000000 * USEC_PER_SEC;
        EngineClock clock = { .monotonic = clock_mono, .realtime = clock_real, .userdata = f };
        assert_int_equal(engine_new(&clock, NULL, &callbacks, f, &f->engine), 0);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        engine_free(f->engine);
        free(f);
        return 0;
}

static int acquire(Fixture *f, const char *res, unsigned units, bool exclusive, usec_t timeout, usec_t ttl,
                   unsigned holder, void *userdata, Lease **ret_l, Waiter **ret_w) {
        AcquireParams p = {
                .resource = res,
                .units = units,
                .exclusive = exclusive,
                .try_once = timeout == 0,
                .timeout = timeout,
                .ttl = ttl,
                .owner = &owner,
        };
        Lease *l = NULL;
        Waiter *w = NULL;
        int k = engine_acquire(f->engine, &p, &f->holders[holder], userdata, &l, &w);
        if (ret_l)
                *ret_l = l;
        if (ret_w)
                *ret_w = w;
        return k;
}

static void declare(Fixture *f, const char *name, unsigned capacity) {
        ResourceDecl d = { .name = name, .capacity = capacity };
        assert_int_equal(engine_configure(f->engine, &d, 1, true), 0);
}

static void test_mutex_fifo(void **state) {
        Fixture *f = *state;
        Lease *l;
        Waiter *w;
        int tags[3];

        assert_int_equal(acquire(f, "m", 1, false, USEC_INFINITY, 0, 0, NULL, &l, NULL), 0);
        for (int i = 0; i < 3; i++) {
                assert_int_equal(acquire(f, "m", 1, false, USEC_INFINITY, 0, i + 1, &tags[i], NULL, &w), 1);
                assert_int_equal(w->position, (unsigned) i + 1);
        }
        assert_int_equal(engine_n_waiters(f->engine), 3);

        /* Each release hands the mutex to the longest waiter, and only to it. */
        for (int i = 0; i < 3; i++) {
                Lease *held = f->holders[i].leases;
                assert_non_null(held);
                assert_int_equal(engine_lease_end(f->engine, held, EVENT_RELEASED, "done"), 0);
                assert_int_equal(f->n_granted, (unsigned) i + 1);
                assert_ptr_equal(f->granted_userdata[i], &tags[i]);
                assert_int_equal(engine_n_leases(f->engine), 1);
        }
        assert_int_equal(engine_n_waiters(f->engine), 0);
        /* Positions moved 2→1 and 3→2, then 2→1 again. */
        assert_int_equal(f->n_moved, 3);
}

static void test_try_once_busy(void **state) {
        Fixture *f = *state;
        assert_int_equal(acquire(f, "t", 1, false, 0, 0, 0, NULL, NULL, NULL), 0);
        assert_int_equal(acquire(f, "t", 1, false, 0, 0, 1, NULL, NULL, NULL), -ETIMEDOUT);
        assert_int_equal(engine_n_waiters(f->engine), 0);
}

static void test_units_and_no_overtaking(void **state) {
        Fixture *f = *state;
        Lease *a, *b;
        Waiter *big, *small;
        int tag_big, tag_small;
        declare(f, "gpu", 4);

        assert_int_equal(acquire(f, "gpu", 2, false, USEC_INFINITY, 0, 0, NULL, &a, NULL), 0);
        assert_int_equal(acquire(f, "gpu", 1, false, USEC_INFINITY, 0, 1, NULL, &b, NULL), 0);
        assert_int_equal(engine_resource_get(f->engine, "gpu")->used, 3);
        /* 3 units are not free: the big request waits at the head ... */
        assert_int_equal(acquire(f, "gpu", 3, false, USEC_INFINITY, 0, 2, &tag_big, NULL, &big), 1);
        /* ... and a small one that would fit must not overtake it. */
        assert_int_equal(acquire(f, "gpu", 1, false, USEC_INFINITY, 0, 3, &tag_small, NULL, &small), 1);
        assert_int_equal(small->position, 2);
        assert_int_equal(f->n_granted, 0);

        engine_lease_end(f->engine, a, EVENT_RELEASED, NULL);    /* 1 used: 3 free */
        assert_int_equal(f->n_granted, 1);
        assert_ptr_equal(f->granted_userdata[0], &tag_big);
        engine_lease_end(f->engine, b, EVENT_RELEASED, NULL);    /* 3 used: 1 free */
        assert_int_equal(f->n_granted, 2);
        assert_ptr_equal(f->granted_userdata[1], &tag_small);
        assert_int_equal(engine_resource_get(f->engine, "gpu")->used, 4);

        /* More units than the capacity is refused, not queued forever. */
        assert_int_equal(acquire(f, "gpu", 5, false, USEC_INFINITY, 0, 4, NULL, NULL, NULL), -EINVAL);
}

static void test_exclusive(void **state) {
        Fixture *f = *state;
        Lease *a, *x;
        Waiter *w;
        int tag;
        declare(f, "slots", 3);

        assert_int_equal(acquire(f, "slots", 1, false, USEC_INFINITY, 0, 0, NULL, &a, NULL), 0);
        assert_int_equal(acquire(f, "slots", 0, true, USEC_INFINITY, 0, 1, &tag, NULL, &w), 1);
        assert_int_equal(w->units, 3);
        engine_lease_end(f->engine, a, EVENT_RELEASED, NULL);
        assert_int_equal(f->n_granted, 1);
        x = f->holders[1].leases;
        assert_non_null(x);
        assert_true(x->exclusive);
        assert_int_equal(x->units, 3);
        assert_int_equal(acquire(f, "slots", 1, false, 0, 0, 2, NULL, NULL, NULL), -ETIMEDOUT);
}

static void test_tokens_increase(void **state) {
        Fixture *f = *state;
        uint64_t last = 0;
        for (int i = 0; i < 50; i++) {
                Lease *l;
                char name[16];
                snprintf(name, sizeof(name), "r%d", i % 7);
                assert_int_equal(acquire(f, name, 1, false, USEC_INFINITY, 0, 0, NULL, &l, NULL), 0);
                assert_true(l->token > last);
                last = l->token;
                engine_lease_end(f->engine, l, EVENT_RELEASED, NULL);
        }
        assert_int_equal(engine_last_token(f->engine), last);
}

/* A mass expiry in bounded steps: each run ends at most max leases; the rest stay due. */
static void test_timers_bounded(void **state) {
        Fixture *f = *state;
        for (unsigned i = 0; i < 600; i++) {
                char name[16];
                snprintf(name, sizeof(name), "b%u", i);
                assert_int_equal(acquire(f, name, 1, false, USEC_INFINITY, USEC_PER_SEC, i % 8, NULL, NULL, NULL),
                                 0);
        }
        f->mono += 2 * USEC_PER_SEC;
        assert_int_equal(engine_run_timers_max(f->engine, 256), 256);
        assert_int_equal(f->n_events[EVENT_EXPIRED], 256);
        assert_true(engine_next_deadline(f->engine) <= f->mono);
        assert_int_equal(engine_run_timers_max(f->engine, 256), 256);
        assert_int_equal(engine_run_timers_max(f->engine, 256), 88);
        assert_int_equal(f->n_events[EVENT_EXPIRED], 600);
        assert_int_equal(engine_n_leases(f->engine), 0);
        assert_int_equal(engine_run_timers_max(f->engine, 256), 0);
        assert_int_equal(engine_next_deadline(f->engine), USEC_INFINITY);
}

static void test_ttl_expiry_on_clock(void **state) {
        Fixture *f = *state;
        Lease *l;
        Waiter *w;
        int tag;
        assert_int_equal(acquire(f, "ttl", 1, false, USEC_INFINITY, 5 * USEC_PER_SEC, 0, NULL, &l, NULL), 0);
        assert_int_equal(acquire(f, "ttl", 1, false, USEC_INFINITY, 0, 1, &tag, NULL, &w), 1);
        assert_int_equal(engine_next_deadline(f->engine), f->mono + 5 * USEC_PER_SEC);

        f->mono += 4 * USEC_PER_SEC;
        engine_run_timers(f->engine);
        assert_int_equal(f->n_events[EVENT_EXPIRED], 0);

        /* Renewing pushes the deadline to now + TTL. */
        assert_int_equal(engine_lease_renew(f->engine, l, 0), 0);
        assert_int_equal(engine_next_deadline(f->engine), f->mono + 5 * USEC_PER_SEC);
        f->mono += 4 * USEC_PER_SEC;
        engine_run_timers(f->engine);
        assert_int_equal(f->n_events[EVENT_EXPIRED], 0);

        /* A wall-clock jump changes nothing. */
        f->real += 3600 * USEC_PER_SEC;
        engine_run_timers(f->engine);
        assert_int_equal(f->n_events[EVENT_EXPIRED], 0);

        f->mono += 1 * USEC_PER_SEC;
        engine_run_timers(f->engine);
        assert_int_equal(f->n_events[EVENT_EXPIRED], 1);
        assert_int_equal(f->n_granted, 1);
        assert_ptr_equal(f->granted_userdata[0], &tag);

        /* A lease without TTL cannot be renewed without one. */
        Lease *g = f->holders[1].leases;
        assert_int_equal(engine_lease_renew(f->engine, g, 0), -EINVAL);
}

static void test_waiter_timeout_unblocks_smaller(void **state) {
        Fixture *f = *state;
        Lease *a;
        int tag_big, tag_small;
        declare(f, "cap2", 2);
        assert_int_equal(acquire(f, "cap2", 1, false, USEC_INFINITY, 0, 0, NULL, &a, NULL), 0);
        assert_int_equal(acquire(f, "cap2", 2, false, 2 * USEC_PER_SEC, 0, 1, &tag_big, NULL, NULL), 1);
        assert_int_equal(acquire(f, "cap2", 1, false, USEC_INFINITY, 0, 2, &tag_small, NULL, NULL), 1);
        f->mono += 2 * USEC_PER_SEC;
        engine_run_timers(f->engine);
        assert_int_equal(f->n_timed_out, 1);
        assert_ptr_equal(f->timed_out_userdata[0], &tag_big);
        /* With the big head gone, the small one fits at once. */
        assert_int_equal(f->n_granted, 1);
        assert_ptr_equal(f->granted_userdata[0], &tag_small);
}

static void test_holder_gone(void **state) {
        Fixture *f = *state;
        Lease *bound, *detached;
        AcquireParams p = { .resource = "d", .owner = &owner, .timeout = USEC_INFINITY, .detached = true,
                            .ttl = 60 * USEC_PER_SEC };
        Waiter *w = NULL;
        assert_int_equal(engine_acquire(f->engine, &p, &f->holders[0], NULL, &detached, &w), 0);
        assert_int_equal(acquire(f, "b", 1, false, USEC_INFINITY, 0, 0, NULL, &bound, NULL), 0);
        assert_int_equal(f->holders[0].n_leases, 2);
        engine_holder_gone(f->engine, &f->holders[0]);
        assert_int_equal(f->holders[0].n_leases, 0);
        assert_int_equal(engine_n_leases(f->engine), 1);
        assert_non_null(engine_lease_get(f->engine, LEASE_ID_STR(detached)));
        assert_null(detached->holder);
        assert_string_equal(f->last_reason, "connection closed");
        /* Undeclared resources vanish once unused. */
        assert_null(engine_resource_get(f->engine, "b"));
        assert_non_null(engine_resource_get(f->engine, "d"));
}

static void test_undeclared_forbidden(void **state) {
        Fixture *f = *state;
        ResourceDecl d = { .name = "only", .capacity = 1 };
        assert_int_equal(engine_configure(f->engine, &d, 1, false), 0);
        assert_int_equal(acquire(f, "other", 1, false, USEC_INFINITY, 0, 0, NULL, NULL, NULL), -ENXIO);
        assert_int_equal(acquire(f, "only", 1, false, USEC_INFINITY, 0, 0, NULL, NULL, NULL), 0);
}

/* Opens the store in dir and an engine on it, restored for boot_id: a daemon start. */
static int start_engine(Fixture *f, const char *dir, const char *boot_id, usec_t grace, Store **ret_s,
                        Engine **ret_e) {
        char *err = NULL;
        EngineClock clock = { .monotonic = clock_mono, .realtime = clock_real, .userdata = f };
        assert_int_equal(store_sqlite_open(dir, STORE_SYNC_NORMAL, 100, ret_s, &err), 0);
        assert_int_equal(engine_new(&clock, *ret_s, &callbacks, f, ret_e), 0);
        return engine_restore(*ret_e, boot_id, grace);
}

/* A crash or a stop: the engine goes away without releasing anything. */
static void stop_engine(Fixture *f, Store *s, Engine *e) {
        memset(f->holders, 0, sizeof(f->holders));
        engine_free(e);
        store_free(s);
}

static void remove_dir(const char *dir) {
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        assert_int_equal(system(cmd), 0);
}

/* With the real sqlite store: leases, tokens and grace survive an engine restart. */
static void test_restore_with_store(void **state) {
        Fixture *f = *state;
        char dir[] = "/tmp/agend-test-engine-XXXXXX";
        assert_non_null(mkdtemp(dir));
        Store *s;
        Engine *e;
        Lease *lb, *ld, *n;
        Waiter *w;

        assert_int_equal(start_engine(f, dir, "boot-a", 10 * USEC_PER_SEC, &s, &e), 0);
        AcquireParams bound = { .resource = "r", .owner = &owner, .timeout = USEC_INFINITY };
        AcquireParams det = { .resource = "q", .owner = &owner, .timeout = USEC_INFINITY, .detached = true,
                              .ttl = 30 * USEC_PER_SEC };
        assert_int_equal(engine_acquire(e, &bound, &f->holders[0], NULL, &lb, &w), 0);
        assert_int_equal(engine_acquire(e, &det, &f->holders[0], NULL, &ld, &w), 0);
        char id_b[LEASE_ID_LEN + 1], secret_b[LEASE_SECRET_LEN + 1];
        lease_id_to_string(lb->id, id_b);
        lease_secret_to_string(lb, secret_b);
        uint64_t tok_b = lb->token, tok_d = ld->token;
        assert_int_equal(s->ops->commit(s), 1);
        stop_engine(f, s, e);

        assert_int_equal(start_engine(f, dir, "boot-a", 10 * USEC_PER_SEC, &s, &e), 2);
        Lease *rb = engine_lease_get(e, id_b);
        assert_non_null(rb);
        assert_int_equal(rb->state, LEASE_RECLAIMABLE);
        assert_int_equal(rb->token, tok_b);
        assert_true(lease_secret_eq(rb, secret_b));
        assert_true(engine_in_grace(e));
        /* No grant collides with the unreclaimed lease. */
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "r", .owner = &owner, .try_once = true },
                                        &f->holders[1], NULL, &n, &w),
                         -ETIMEDOUT);
        assert_int_equal(engine_lease_reclaim(e, rb, &f->holders[1]), 0);
        assert_false(engine_in_grace(e));
        /* New tokens stay above every old one. */
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "z", .owner = &owner }, &f->holders[1],
                                        NULL, &n, &w),
                         0);
        assert_true(n->token > MAX(tok_b, tok_d));
        assert_int_equal(s->ops->commit(s), 1);
        stop_engine(f, s, e);

        /* Another boot voids everything, and tokens still go up. */
        unsigned voided = f->n_events[EVENT_VOIDED];
        assert_int_equal(start_engine(f, dir, "boot-b", 10 * USEC_PER_SEC, &s, &e), 3);
        assert_int_equal(f->n_events[EVENT_VOIDED] - voided, 3);
        assert_int_equal(engine_n_leases(e), 0);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "r", .owner = &owner }, &f->holders[2], NULL,
                                        &n, &w),
                         0);
        assert_true(n->token > MAX(tok_b, tok_d) + 1);
        stop_engine(f, s, e);
        remove_dir(dir);
}

static void test_grace_expiry_releases(void **state) {
        Fixture *f = *state;
        char dir[] = "/tmp/agend-test-engine-XXXXXX";
        assert_non_null(mkdtemp(dir));
        Store *s;
        Engine *e;
        Lease *l;
        Waiter *w;
        int tag;

        assert_int_equal(start_engine(f, dir, "boot", 1 * USEC_PER_SEC, &s, &e), 0);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "g", .owner = &owner }, &f->holders[0],
                                        NULL, &l, &w),
                         0);
        assert_int_equal(s->ops->commit(s), 1);
        stop_engine(f, s, e);

        assert_int_equal(start_engine(f, dir, "boot", 1 * USEC_PER_SEC, &s, &e), 1);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "g", .owner = &owner, .timeout = USEC_INFINITY },
                                        &f->holders[1], &tag, &l, &w),
                         1);
        f->mono += 1 * USEC_PER_SEC;
        engine_run_timers(e);
        assert_string_equal(f->last_reason, "");        /* the last event is the grant */
        assert_int_equal(f->n_granted, 1);
        assert_ptr_equal(f->granted_userdata[0], &tag);
        assert_int_equal(engine_n_leases(e), 1);
        stop_engine(f, s, e);
        remove_dir(dir);
}

/* A restored place whose waiter never comes back (it never learned its ticket) gets the
 * grace once, counted from the restart that first restored it: restarts quicker than the
 * grace must not hold the queue forever. A place claimed in time keeps its place. */
static void test_grace_from_first_restore(void **state) {
        Fixture *f = *state;
        char dir[] = "/tmp/agend-test-engine-XXXXXX";
        assert_non_null(mkdtemp(dir));
        Store *s;
        Engine *e;
        Lease *l;
        Waiter *w;
        const usec_t grace = 1 * USEC_PER_SEC;

        assert_int_equal(start_engine(f, dir, "boot", grace, &s, &e), 0);
        /* Detached: the lease stays held across restarts, so the place stays a place. */
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "q", .owner = &owner, .detached = true },
                                        &f->holders[0], NULL, &l, &w),
                         0);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "q", .owner = &owner, .timeout = USEC_INFINITY },
                                        &f->holders[1], NULL, &l, &w),
                         1);
        assert_int_equal(s->ops->commit(s), 1);
        stop_engine(f, s, e);

        /* Restarts every 0.4 s; the place's grace (1 s) started at the first of them. */
        unsigned waiting[5];
        for (unsigned i = 0; i < ELEMENTSOF(waiting); i++) {
                f->mono += 400 * USEC_PER_MSEC;
                assert_int_equal(start_engine(f, dir, "boot", grace, &s, &e), 1);
                engine_run_timers(e);
                waiting[i] = engine_n_waiters(e);
                assert_true(s->ops->commit(s) >= 0);    /* a restart that changes nothing writes nothing */
                stop_engine(f, s, e);
        }
        /* First restored at t = 0.4 s, so still there at 0.8 and 1.2... */
        assert_int_equal(waiting[0], 1);
        assert_int_equal(waiting[1], 1);
        assert_int_equal(waiting[2], 1);
        /* ...and gone at 1.6: its grace ended at 1.4, while the daemon was down. */
        assert_int_equal(waiting[3], 0);
        assert_int_equal(waiting[4], 0);

        /* Within one start the timer ends it at its own end, not a full grace after this start. */
        assert_int_equal(start_engine(f, dir, "boot", grace, &s, &e), 1);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "q", .owner = &owner, .timeout = USEC_INFINITY },
                                        &f->holders[1], NULL, &l, &w),
                         1);
        assert_int_equal(s->ops->commit(s), 1);
        stop_engine(f, s, e);
        f->mono += 100 * USEC_PER_MSEC;         /* first restored here */
        assert_int_equal(start_engine(f, dir, "boot", grace, &s, &e), 1);
        assert_int_equal(s->ops->commit(s), 1);
        stop_engine(f, s, e);
        f->mono += 600 * USEC_PER_MSEC;
        assert_int_equal(start_engine(f, dir, "boot", grace, &s, &e), 1);
        assert_int_equal(engine_n_waiters(e), 1);
        f->mono += 300 * USEC_PER_MSEC;         /* 0.9 s after its first restore */
        engine_run_timers(e);
        assert_int_equal(engine_n_waiters(e), 1);
        f->mono += 100 * USEC_PER_MSEC;         /* 1.0 s */
        engine_run_timers(e);
        assert_int_equal(engine_n_waiters(e), 0);
        assert_true(s->ops->commit(s) >= 0);
        stop_engine(f, s, e);
        remove_dir(dir);
}

/* Ids and secrets are kept as bits and written as lowercase hex: the text round-trips, and
 * only text that would round-trip is accepted (another spelling of an id is no id). */
static void test_id_secret_text(void **state) {
        Fixture *f = *state;
        uint64_t id;
        assert_int_equal(lease_id_from_string("0123456789abcdef", &id), 0);
        assert_true(id == 0x0123456789abcdefULL);
        assert_string_equal(lease_id_to_string(id, (char[LEASE_ID_LEN + 1]) {}), "0123456789abcdef");
        assert_string_equal(lease_id_to_string(0, (char[LEASE_ID_LEN + 1]) {}), "0000000000000000");
        static const char *const bad[] = {
                "", "0123456789abcde", "0123456789abcdef0", "0123456789ABCDEF", "0123456789abcdeg",
                " 123456789abcdef", "0x23456789abcdef",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_int_equal(lease_id_from_string(bad[i], &id), -EINVAL);
        assert_int_equal(lease_id_from_string(NULL, &id), -EINVAL);

        Lease *l;
        assert_int_equal(acquire(f, "t", 1, false, 0, 0, 0, NULL, &l, NULL), 0);
        char text[LEASE_ID_LEN + 1], secret[LEASE_SECRET_LEN + 1];
        lease_id_to_string(l->id, text);
        assert_int_equal(strlen(text), LEASE_ID_LEN);
        assert_ptr_equal(engine_lease_get(f->engine, text), l);
        char upper[LEASE_ID_LEN + 1];
        bool changed = false;
        for (size_t i = 0; i <= LEASE_ID_LEN; i++) {
                upper[i] = text[i] >= 'a' && text[i] <= 'f' ? (char) (text[i] - 'a' + 'A') : text[i];
                changed |= upper[i] != text[i];
        }
        if (changed)
                assert_null(engine_lease_get(f->engine, upper));
        assert_null(engine_lease_get(f->engine, "not an id"));

        lease_secret_to_string(l, secret);
        assert_int_equal(strlen(secret), LEASE_SECRET_LEN);
        assert_true(lease_secret_eq(l, secret));
        uint8_t bits[LEASE_SECRET_SIZE];
        assert_int_equal(lease_secret_from_string(secret, bits), 0);
        assert_memory_equal(bits, l->secret, LEASE_SECRET_SIZE);
        char other[LEASE_SECRET_LEN + 1];
        for (size_t i = 0; i < LEASE_SECRET_LEN; i++) {
                memcpy(other, secret, sizeof(other));
                other[i] = other[i] == '0' ? '1' : '0';
                assert_false(lease_secret_eq(l, other));
        }
        memcpy(other, secret, sizeof(other));
        other[LEASE_SECRET_LEN - 1] = 0;
        assert_false(lease_secret_eq(l, other));
        assert_false(lease_secret_eq(l, ""));
        assert_false(lease_secret_eq(l, NULL));
}

/* Leases of one owner share one owner record; another pid is another owner; the record
 * goes with its last lease (ASan and valgrind runs see a leak or a use after free). */
static void test_shared_owner(void **state) {
        Fixture *f = *state;
        Lease *a, *b, *c;
        Waiter *w;
        Owner other = owner;
        other.pid++;
        assert_int_equal(acquire(f, "o1", 1, false, 0, 0, 0, NULL, &a, NULL), 0);
        assert_int_equal(acquire(f, "o2", 1, false, 0, 0, 1, NULL, &b, NULL), 0);
        assert_int_equal(engine_acquire(f->engine, &(AcquireParams) { .resource = "o3", .owner = &other }, &f->holders[2],
                                        NULL, &c, &w),
                         0);
        assert_ptr_equal(a->owner, b->owner);
        assert_ptr_not_equal(a->owner, c->owner);
        assert_ptr_not_equal(a->owner, &owner);
        assert_int_equal(a->owner->pid, owner.pid);
        assert_string_equal(a->owner->comm, "test");
        assert_int_equal(c->owner->pid, other.pid);
        assert_int_equal(engine_lease_end(f->engine, a, EVENT_RELEASED, NULL), 0);
        assert_int_equal(b->owner->uid, owner.uid);
        assert_string_equal(b->owner->comm, "test");
        assert_int_equal(engine_lease_end(f->engine, b, EVENT_RELEASED, NULL), 0);
        /* The record is made again for the next lease of that owner. */
        assert_int_equal(acquire(f, "o1", 1, false, 0, 0, 0, NULL, &a, NULL), 0);
        assert_string_equal(a->owner->comm, "test");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_mutex_fifo, setup, teardown),
                cmocka_unit_test_setup_teardown(test_id_secret_text, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shared_owner, setup, teardown),
                cmocka_unit_test_setup_teardown(test_try_once_busy, setup, teardown),
                cmocka_unit_test_setup_teardown(test_units_and_no_overtaking, setup, teardown),
                cmocka_unit_test_setup_teardown(test_exclusive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_tokens_increase, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_expiry_on_clock, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timers_bounded, setup, teardown),
                cmocka_unit_test_setup_teardown(test_waiter_timeout_unblocks_smaller, setup, teardown),
                cmocka_unit_test_setup_teardown(test_holder_gone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_undeclared_forbidden, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restore_with_store, setup, teardown),
                cmocka_unit_test_setup_teardown(test_grace_expiry_releases, setup, teardown),
                cmocka_unit_test_setup_teardown(test_grace_from_first_restore, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

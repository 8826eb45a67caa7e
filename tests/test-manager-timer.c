/* SPDX-License-Identifier: MIT */
/* manager.c's engine timer over an engine with a clock of its own (as tests/fuzz's
 * dispatch harness gives it): the timer is armed at the engine's clock, so that the loop
 * sleeps while a commit is in flight instead of turning at once, again and again, on a
 * deadline that the system clock says has passed and the engine's says has not; and it
 * still fires once the engine's clock reaches the deadline. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "conn.h"
#include "engine.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "store-guard.h"
#include "store-pipe.h"
#include "store.h"
#include "varlink-server.h"

#define TTL (30 * USEC_PER_SEC)
/* Each commit sleeps this long on the commit thread: a loop that does not sleep meanwhile
 * turns thousands of times (the fuzz harness's bound is 100 000 turns). */
#define COMMIT_DELAY (20 * USEC_PER_MSEC)
/* Turns for one commit in flight: the one that ends with its ev_async, and slack. */
#define MAX_TURNS_PER_COMMIT 4

typedef struct Fixture {
        Manager *m;
        usec_t mono;
} Fixture;

static usec_t clock_mono(void *userdata) {
        return ((Fixture *) userdata)->mono;
}

static usec_t clock_real(void *userdata) {
        return (usec_t) 1700000000 * USEC_PER_SEC;
}

/* The commit path as manager_run() sets it up, over a slow in-memory store and the
 * fixture's clock (tests/fuzz/fuzz-dispatch.c's service_new(), without clients). */
static void fixture_init(Fixture *f, usec_t mono) {
        f->mono = mono;
        assert_int_equal(manager_new(&(ManagerOptions) { .sync = -1, .grace = -1 }, &f->m), 0);
        Manager *m = f->m;
        m->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
        assert_non_null(m->loop);
        const char *tmp = getenv("TMPDIR");
        assert_int_equal(store_guard_new(tmp && *tmp ? tmp : "/tmp", &m->guard), 0);
        Store *inner;
        assert_int_equal(
                store_memory_new(&(StoreMemoryOptions) { .history_size = 16, .commit_delay = COMMIT_DELAY }, &inner),
                0);
        assert_int_equal(manager_pipeline_new(m, inner), 0);
        assert_int_equal(engine_new(&(EngineClock) { clock_mono, clock_real, f }, m->store, &methods_engine_callbacks,
                                    m, &m->engine),
                         0);
        assert_int_equal(engine_configure(m->engine, NULL, 0, true), 0);
        assert_int_equal(varlink_server_new(m->loop,
                                            &(VarlinkServerOptions) { .error_protocol = "io.agend.Lease.ProtocolError",
                                                                      .error_limit = "io.agend.Lease.LimitExceeded" },
                                            &manager_server_callbacks, m, &m->server),
                         0);
        manager_apply_limits(m);
        manager_loop_start(m);
}

/* Loop turns until the commit in flight is done. */
static unsigned turns_in_flight(Manager *m) {
        unsigned n = 0;
        while (store_pipe_in_flight(m->pipe) && n < 1000000) {
                ev_run(m->loop, EVRUN_ONCE);
                n++;
        }
        assert_false(store_pipe_in_flight(m->pipe));
        return n;
}

static void run(usec_t mono) {
        Fixture f;
        fixture_init(&f, mono);
        Manager *m = f.m;

        /* A lease with a TTL: the engine's next deadline is mono + TTL on its clock. */
        Owner owner = { .uid = 1000, .gid = 1000, .pid = 1, .comm = (char *) "test" };
        Lease *l;
        Waiter *w;
        assert_int_equal(engine_acquire(m->engine,
                                        &(AcquireParams) { .resource = "r", .ttl = TTL, .detached = true,
                                                           .timeout = USEC_INFINITY, .owner = &owner },
                                        NULL, NULL, &l, &w),
                         0);
        assert_int_equal(engine_next_deadline(m->engine), mono + TTL);

        /* Its commit on the thread (as when the loop is busy): the turns until it is done
         * sleep until its ev_async, whatever the system clock says of mono + TTL. */
        assert_int_equal(store_pipe_submit(m->pipe), 0);
        unsigned n = turns_in_flight(m);
        print_message("mono %.0f s: %u loop turns for a commit of %.0f ms in flight\n", usec_to_sec(mono), n,
                      usec_to_sec(COMMIT_DELAY) * 1000);
        assert_in_range(n, 1, MAX_TURNS_PER_COMMIT);
        double left = ev_timer_remaining(m->loop, &m->timer);
        assert_true(ev_is_active(&m->timer));
        assert_true(left > usec_to_sec(TTL) - 1 && left <= usec_to_sec(TTL));

        /* The engine's clock passes the deadline: the timer is due and the lease expires. */
        f.mono += TTL + USEC_PER_SEC;
        for (int i = 0; i < 8 && engine_n_leases(m->engine) > 0; i++)
                ev_run(m->loop, EVRUN_NOWAIT);
        assert_int_equal(engine_n_leases(m->engine), 0);
        assert_int_equal(engine_next_deadline(m->engine), USEC_INFINITY);
        (void) turns_in_flight(m);
        manager_free(m);
}

/* The engine's clock behind the system's (the harness starts it at 1000 s): without the
 * engine's clock in arm_timer(), the timer was due at every turn and the loop spun while
 * the commit ran. (This needs the system's monotonic clock past 31 s, i.e. any machine
 * up for more than half a minute.) */
static void test_engine_clock_behind(void **state) {
        run(1 * USEC_PER_SEC);
}

/* Ahead of it: without the engine's clock in arm_timer(), the timer was set that much too
 * late. */
static void test_engine_clock_ahead(void **state) {
        run(usec_now(CLOCK_MONOTONIC) + 1000000 * USEC_PER_SEC);
}

int main(void) {
        log_set_max_level(LOG_ERR);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_engine_clock_behind),
                cmocka_unit_test(test_engine_clock_ahead),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

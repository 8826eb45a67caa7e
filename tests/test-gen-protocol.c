/* SPDX-License-Identifier: MIT */
/* The rest of the async-generator protocol (issue 13), with generators written here (no
 * daemon): cancelling a step in progress, asend and athrow with PEP 525's meaning, the
 * scoped close, the finalizer warning, and agen_loop_shutdown() after an idle loop and
 * from inside a callback. Each test counts callbacks, runs the loop, asserts the counts and
 * ends with no live generator, no per-loop state and no active watcher. */

#include <ev.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "test-fds.h"

#include "agen/agen.h"
#include "gen-internal.h"

/* A generator that waits: each step is completed by a timer after `delay` seconds (never,
 * if delay < 0), yielding the step number, or what was sent in. Its cleanup takes
 * close_delay seconds. It counts what ran. */
typedef struct Waiter {
        struct ev_loop *loop;
        double delay, close_delay;
        bool cancellable, handles_throw;
        ev_timer timer;
        agen_co *co;
        bool co_is_close;
        int value;
        unsigned steps, closes, cancels, throws, destroyed;
        int thrown;
        char thrown_message[64];
} Waiter;

static void waiter_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Waiter *s = w->data;
        agen_co *co = TAKE_PTR(s->co);
        if (s->co_is_close)
                assert_int_equal(agen_co_return(co), 0);
        else
                assert_int_equal(agen_co_yield(co, &s->value), 0);
}

static void waiter_arm(Waiter *s, agen_co *co, double delay, bool close) {
        s->co = co;
        s->co_is_close = close;
        if (delay < 0)
                return;
        ev_timer_set(&s->timer, delay, 0.);
        ev_timer_start(s->loop, &s->timer);
}

static void waiter_step(agen_gen *gen, agen_co *co, void *userdata) {
        Waiter *s = userdata;
        s->steps++;
        const int *sent = agen_co_get_sent(co);
        s->value = sent ? *sent : (int) s->steps;
        waiter_arm(s, co, s->delay, false);
}

static void waiter_close(agen_gen *gen, agen_co *co, void *userdata) {
        Waiter *s = userdata;
        s->closes++;
        waiter_arm(s, co, s->close_delay, true);
}

static void waiter_cancel(agen_gen *gen, agen_co *co, void *userdata) {
        Waiter *s = userdata;
        assert_ptr_equal(co, s->co);
        s->cancels++;
        ev_timer_stop(s->loop, &s->timer);
        s->co = NULL;
        assert_int_equal(agen_co_fail(co, -ECANCELED, "cancelled"), 0);
}

/* Handles a thrown error by yielding its negation; -EPIPE is re-raised. */
static void waiter_athrow(agen_gen *gen, agen_co *co, int error, const char *message, void *userdata) {
        Waiter *s = userdata;
        s->throws++;
        s->thrown = error;
        snprintf(s->thrown_message, sizeof(s->thrown_message), "%s", message ?: "");
        if (error == -EPIPE) {
                assert_int_equal(agen_co_fail(co, error, message), 0);
                return;
        }
        s->value = -error;
        assert_int_equal(agen_co_yield(co, &s->value), 0);
}

static void waiter_abandon(agen_gen *gen, void *userdata) {
        Waiter *s = userdata;
        ev_timer_stop(s->loop, &s->timer);
}

static void waiter_destroy(void *userdata) {
        Waiter *s = userdata;
        assert_false(ev_is_active(&s->timer));
        __atomic_add_fetch(&s->destroyed, 1, __ATOMIC_SEQ_CST); /* read by another thread */
}

static const agen_gen_ops waiter_ops_plain = {
        .step = waiter_step,
        .close = waiter_close,
        .abandon = waiter_abandon,
        .destroy = waiter_destroy,
};
static const agen_gen_ops waiter_ops_cancel = {
        .step = waiter_step,
        .close = waiter_close,
        .abandon = waiter_abandon,
        .destroy = waiter_destroy,
        .cancel = waiter_cancel,
};
static const agen_gen_ops waiter_ops_throw = {
        .step = waiter_step,
        .close = waiter_close,
        .abandon = waiter_abandon,
        .destroy = waiter_destroy,
        .cancel = waiter_cancel,
        .athrow = waiter_athrow,
};

/* The Waiter lives in the test's frame; destroy only counts. */
static agen_gen *waiter_new(struct ev_loop *loop, Waiter *s, const agen_gen_ops *ops) {
        ev_timer_init(&s->timer, waiter_timer_cb, 0., 0.);
        s->timer.data = s;
        s->loop = loop;
        agen_gen *g = NULL;
        assert_int_equal(agen_gen_new(loop, ops, s, &g), 0);
        return g;
}

typedef struct Rec {
        unsigned n_next, n_close;
        int status, value, close_status;
        char order[8];
        unsigned n_order;
        /* From inside the next callback: */
        bool shutdown_in_cb;
        int shutdown_result;
        double shutdown_took;
} Rec;

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static void rec_next_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        Rec *r = userdata;
        r->n_next++;
        r->status = status;
        r->value = status == 0 ? *(const int *) value : 0;
        if (r->n_order < sizeof(r->order))
                r->order[r->n_order++] = 'n';
        if (r->shutdown_in_cb) {
                r->shutdown_in_cb = false;
                double t0 = now();
                r->shutdown_result = agen_loop_shutdown(agen_gen_get_loop(gen), 2.0);
                r->shutdown_took = now() - t0;
        }
}

static void rec_close_cb(agen_gen *gen, int status, void *userdata) {
        Rec *r = userdata;
        r->n_close++;
        r->close_status = status;
        if (r->n_order < sizeof(r->order))
                r->order[r->n_order++] = 'c';
}

static void run_until(struct ev_loop *loop, const unsigned *n, unsigned want) {
        for (unsigned i = 0; *n < want && i < 100000; i++)
                ev_run(loop, EVRUN_ONCE);
        assert_int_equal(*n, want);
}

typedef struct Fixture {
        struct ev_loop *loop;
        unsigned fds;
        ev_timer guard;
} Fixture;

static void guard_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        fail_msg("guard timer: the loop did not finish in time");
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        f->fds = count_fds();
        f->loop = ev_loop_new(EVFLAG_AUTO);
        assert_non_null(f->loop);
        ev_timer_init(&f->guard, guard_cb, 20., 0.);
        ev_timer_start(f->loop, &f->guard);
        ev_unref(f->loop);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        assert_int_equal(agen_loop_shutdown(f->loop, 1.0), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        assert_int_equal(gen_loop_state_count(), 0);
        ev_ref(f->loop);
        ev_timer_stop(f->loop, &f->guard);
        assert_int_equal(ev_run(f->loop, EVRUN_NOWAIT), 0);
        ev_loop_destroy(f->loop);
        assert_int_equal(count_fds(), f->fds);
        free(f);
        return 0;
}

/* ---- cancel ---- */

static void test_aclose_cancels_a_waiting_step(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = -1 };
        Rec r = {};
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_cancel);

        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        ev_run(f->loop, EVRUN_NOWAIT);
        assert_int_equal(s.steps, 1);
        /* The step never ends by itself; the close cancels it, then cleans up. */
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        assert_int_equal(s.cancels, 0); /* never inside the call */
        run_until(f->loop, &r.n_close, 1);
        assert_int_equal(s.cancels, 1);
        assert_int_equal(r.status, -ECANCELED);
        assert_int_equal(s.closes, 1); /* interrupted where it waited: its cleanup runs */
        assert_int_equal(r.close_status, 0);
        assert_memory_equal(r.order, "nc", 2);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        agen_gen_unref(g);
        assert_int_equal(s.destroyed, 1);
}

static void test_close_sync_and_next_timeout_cancel(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = -1 };
        Rec r = {};
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_cancel);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        /* Used to hang: the close waited for a step that never ends. */
        assert_int_equal(agen_gen_close_sync(g), 0);
        assert_int_equal(r.status, -ECANCELED);
        assert_int_equal(s.closes, 1);
        agen_gen_unref(g);

        Waiter t = { .delay = -1 };
        g = waiter_new(f->loop, &t, &waiter_ops_cancel);
        assert_int_equal(agen_gen_next_sync_timeout(g, 0.05, NULL), -ETIMEDOUT);
        assert_int_equal(t.cancels, 1);
        run_until(f->loop, &t.closes, 1);
        assert_int_equal(agen_gen_close_sync_timeout(g, 1.0), 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        agen_gen_unref(g);

        /* Without a cancel op the step keeps running; the close waits for it. */
        Waiter u = { .delay = -1, .close_delay = -1 };
        g = waiter_new(f->loop, &u, &waiter_ops_plain);
        assert_int_equal(agen_gen_next_sync_timeout(g, 0.05, NULL), -ETIMEDOUT);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_RUNNING);
        assert_int_equal(agen_gen_close_sync_timeout(g, 0.05), -ETIMEDOUT);
        assert_int_equal(agen_loop_shutdown(f->loop, 0.05), 1);
        agen_gen_unref(g);
}

static void test_dropped_while_waiting_is_cancelled(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = -1 };
        Rec r = {};
        unsigned warnings = 0;
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_cancel);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        ev_run(f->loop, EVRUN_NOWAIT);
        /* The program lets go of it: the step is cancelled, the cleanup runs, it is freed. */
        agen_gen_unref(g);
        run_until(f->loop, &s.destroyed, 1);
        assert_int_equal(s.cancels, 1);
        assert_int_equal(r.status, -ECANCELED);
        assert_int_equal(s.closes, 1);
        (void) warnings;
}

static void test_shutdown_cancels_waiting_steps(void **state) {
        Fixture *f = *state;
        Waiter s[5] = {};
        Rec r[5] = {};
        agen_gen *g[5];
        for (unsigned i = 0; i < 5; i++) {
                s[i].delay = -1;
                g[i] = waiter_new(f->loop, &s[i], &waiter_ops_cancel);
                assert_int_equal(agen_gen_anext(g[i], rec_next_cb, &r[i]), 0);
        }
        ev_run(f->loop, EVRUN_NOWAIT);
        assert_int_equal(agen_loop_shutdown(f->loop, 1.0), 0);
        for (unsigned i = 0; i < 5; i++) {
                assert_int_equal(r[i].status, -ECANCELED);
                assert_int_equal(s[i].closes, 1);
                agen_gen_unref(g[i]);
                assert_int_equal(s[i].destroyed, 1);
        }
}

/* ---- asend, athrow ---- */

static void test_asend(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = 0 };
        Rec r = {};
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_cancel);
        int x = 42;

        /* A just-started generator has no yield to receive a value (PEP 525: TypeError). */
        assert_int_equal(agen_gen_asend(g, &x, rec_next_cb, &r), -EINVAL);
        assert_int_equal(agen_gen_asend(g, NULL, rec_next_cb, &r), 0); /* asend(None) = anext */
        run_until(f->loop, &r.n_next, 1);
        assert_int_equal(r.value, 1);
        assert_int_equal(agen_gen_asend(g, &x, rec_next_cb, &r), 0);
        assert_int_equal(agen_gen_asend(g, &x, rec_next_cb, &r), -EBUSY);
        run_until(f->loop, &r.n_next, 2);
        assert_int_equal(r.value, 42);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 3);
        assert_int_equal(r.value, 3);
        assert_int_equal(agen_gen_close_sync(g), 0);
        assert_int_equal(agen_gen_asend(g, &x, rec_next_cb, &r), -ESTALE);
        agen_gen_unref(g);
}

static void test_athrow_handled_and_raised(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = 0 };
        Rec r = {};
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_throw);

        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 1);
        /* Handled at the suspension point: the generator yields and goes on. */
        assert_int_equal(agen_gen_athrow(g, -EAGAIN, "try later", rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 2);
        assert_int_equal(s.throws, 1);
        assert_int_equal(s.thrown, -EAGAIN);
        assert_string_equal(s.thrown_message, "try later");
        assert_int_equal(r.status, 0);
        assert_int_equal(r.value, EAGAIN);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_SUSPENDED);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 3);
        assert_int_equal(r.status, 0);

        /* Raised again: the generator is finished; no cleanup runs after it. */
        assert_int_equal(agen_gen_athrow(g, -EPIPE, NULL, rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 4);
        assert_int_equal(r.status, -EPIPE);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_int_equal(s.closes, 0);
        assert_int_equal(agen_gen_athrow(g, -EPIPE, NULL, rec_next_cb, &r), -ESTALE);
        assert_int_equal(agen_gen_athrow(g, 5, NULL, rec_next_cb, &r), -EINVAL);
        agen_gen_unref(g);
}

static void test_athrow_unhandled_runs_cleanup(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = 0, .close_delay = 0.01 };
        Rec r = {};
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_cancel); /* no athrow op */

        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 1);
        assert_int_equal(agen_gen_athrow(g, -EIO, "disk gone", rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 2);
        /* The error unwound the generator: its cleanup ran, then the step failed with it. */
        assert_int_equal(s.closes, 1);
        assert_int_equal(s.steps, 1);
        assert_int_equal(r.status, -EIO);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_int_equal(agen_loop_live(f->loop), 0);
        agen_gen_unref(g);

        /* Into a generator that never ran: it ends at once, nothing runs. */
        Waiter t = {};
        g = waiter_new(f->loop, &t, &waiter_ops_throw);
        assert_int_equal(agen_gen_athrow(g, -EIO, NULL, rec_next_cb, &r), 0);
        run_until(f->loop, &r.n_next, 3);
        assert_int_equal(r.status, -EIO);
        assert_int_equal(t.steps + t.closes + t.throws, 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        agen_gen_unref(g);
}

/* ---- scoped close, finalizer warning ---- */

static void count_warning(struct ev_loop *loop, agen_gen *gen, void *userdata) {
        (*(unsigned *) userdata)++;
        assert_int_equal(agen_gen_get_state(gen), AGEN_GEN_CLOSING);
}

static void test_scoped_close_and_warning(void **state) {
        Fixture *f = *state;
        unsigned warnings = 0;
        Waiter a = { .delay = 0 }, b = { .delay = 0 }, c = { .delay = 0 };
        Rec r = {};

        /* Default: no warning hook; the finalizer closes quietly. */
        agen_gen *g = waiter_new(f->loop, &c, &waiter_ops_cancel);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        agen_gen_unref(g);
        run_until(f->loop, &c.destroyed, 1);

        assert_int_equal(agen_loop_set_finalizer_warning(f->loop, count_warning, &warnings), 0);
        {
                AGEN_CLEANUP_ACLOSE agen_gen *scoped = waiter_new(f->loop, &a, &waiter_ops_cancel);
                assert_int_equal(agen_gen_anext(scoped, rec_next_cb, &r), 0);
                run_until(f->loop, &r.n_next, 1);
                /* Leaving the scope closes it (like `async with aclosing(gen)`). */
        }
        run_until(f->loop, &a.destroyed, 1);
        assert_int_equal(a.closes, 1);
        assert_int_equal(warnings, 0); /* closed on purpose */

        g = waiter_new(f->loop, &b, &waiter_ops_cancel);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        agen_gen_unref(g); /* forgotten */
        run_until(f->loop, &b.destroyed, 1);
        assert_int_equal(b.closes, 1);
        assert_int_equal(warnings, 1);
        assert_int_equal(agen_loop_set_finalizer_warning(f->loop, NULL, NULL), 0);
        assert_int_equal(agen_loop_set_finalizer_warning(NULL, NULL, NULL), -EINVAL);
}

/* ---- agen_loop_shutdown() and the loop's clock; nested shutdown ---- */

static void test_shutdown_after_idle_loop(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = 0, .close_delay = 0.05 };
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_cancel);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        /* The loop is not run for a second: its cached clock is a second old. */
        struct timespec ts = { .tv_sec = 1 };
        nanosleep(&ts, NULL);
        /* A healthy cleanup of 50 ms fits a 0.5 s timeout counted from now. */
        assert_int_equal(agen_loop_shutdown(f->loop, 0.5), 0);
        assert_int_equal(s.closes, 1);
        agen_gen_unref(g);
}

static void test_nested_shutdown_delivers_its_batch(void **state) {
        Fixture *f = *state;
        Waiter a = { .delay = 0 }, b = { .delay = 0 };
        Rec ra = { .shutdown_in_cb = true }, rb = {};
        agen_gen *ga = waiter_new(f->loop, &a, &waiter_ops_cancel);
        agen_gen *gb = waiter_new(f->loop, &b, &waiter_ops_cancel);

        /* Both steps end in the same loop iteration: their results are one delivery batch,
         * and a's callback shuts the loop down while b's result is still in it. */
        assert_int_equal(agen_gen_anext(ga, rec_next_cb, &ra), 0);
        assert_int_equal(agen_gen_anext(gb, rec_next_cb, &rb), 0);
        run_until(f->loop, &ra.n_next, 1);
        assert_int_equal(ra.shutdown_result, 0);
        print_message("nested shutdown took %.2f ms\n", ra.shutdown_took * 1e3);
        assert_int_equal(rb.n_next, 1);
        assert_int_equal(rb.status, 0);
        assert_int_equal(a.closes, 1);
        assert_int_equal(b.closes, 1);
        assert_int_equal(agen_loop_live(f->loop), 0);
        agen_gen_unref(ga);
        agen_gen_unref(gb);
}

/* ---- last unref on another thread than the one that ran the loop last ---- */

typedef struct Worker {
        struct ev_loop *loop;
        ev_async stop;
        pthread_t thread;
} Worker;

static void worker_stop_cb(struct ev_loop *loop, ev_async *w, int revents) {
        ev_break(loop, EVBREAK_ALL);
}

static void *worker_main(void *userdata) {
        Worker *w = userdata;
        ev_run(w->loop, 0);
        return NULL;
}

static void test_unref_after_loop_moved_thread(void **state) {
        Fixture *f = *state;
        Waiter s = { .delay = 0 };
        agen_gen *g = waiter_new(f->loop, &s, &waiter_ops_cancel);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0); /* run on this thread */

        Worker w = { .loop = f->loop };
        ev_async_init(&w.stop, worker_stop_cb);
        ev_async_start(f->loop, &w.stop);
        assert_int_equal(pthread_create(&w.thread, NULL, worker_main, &w), 0);
        struct timespec ts = { .tv_nsec = 50 * 1000 * 1000 };
        nanosleep(&ts, NULL);

        /* Dropped here, while the worker blocks in the loop: the worker must wake. */
        agen_gen_unref(g);
        for (unsigned i = 0; i < 500 && !__atomic_load_n(&s.destroyed, __ATOMIC_SEQ_CST); i++)
                nanosleep(&(struct timespec) { .tv_nsec = 10 * 1000 * 1000 }, NULL);
        unsigned destroyed = __atomic_load_n(&s.destroyed, __ATOMIC_SEQ_CST);

        ev_async_send(f->loop, &w.stop);
        assert_int_equal(pthread_join(w.thread, NULL), 0);
        ev_async_stop(f->loop, &w.stop);
        assert_int_equal(destroyed, 1);
        assert_int_equal(s.closes, 1);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_aclose_cancels_a_waiting_step, setup, teardown),
                cmocka_unit_test_setup_teardown(test_close_sync_and_next_timeout_cancel, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dropped_while_waiting_is_cancelled, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_cancels_waiting_steps, setup, teardown),
                cmocka_unit_test_setup_teardown(test_asend, setup, teardown),
                cmocka_unit_test_setup_teardown(test_athrow_handled_and_raised, setup, teardown),
                cmocka_unit_test_setup_teardown(test_athrow_unhandled_runs_cleanup, setup, teardown),
                cmocka_unit_test_setup_teardown(test_scoped_close_and_warning, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_after_idle_loop, setup, teardown),
                cmocka_unit_test_setup_teardown(test_nested_shutdown_delivers_its_batch, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unref_after_loop_moved_thread, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

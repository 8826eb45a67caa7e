/* SPDX-License-Identifier: MIT */
/* The async-generator runtime alone, with generators written here (no daemon). Each test
 * counts callbacks, runs the loop, asserts the counts and ends with no live generator, no
 * per-loop state, no active watcher and no fd left (as libuv's test-close-order.c). */

#include <dirent.h>
#include <ev.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "test-fds.h"

#include "agen/agen.h"
#include "gen-internal.h"

enum {
        CLOSE_OK,
        CLOSE_FAIL,
        CLOSE_YIELD,
        CLOSE_HANG,
};

static unsigned n_destroyed;
static pthread_t last_close_thread;

/* Yields 1..n, then returns. Steps and closes complete at once, or from a timer (async). */
typedef struct Counter {
        struct ev_loop *loop;
        int i, n;
        int value;
        int fail_at;     /* the step that yields this value fails instead (0 = none) */
        bool async;
        int close_mode;
        ev_timer timer;
        agen_co *co;
        bool co_is_close;
        unsigned steps, closes, abandons;
        pthread_t close_thread;
        agen_gen *spawn; /* CLOSE_OK + spawn: the cleanup starts another generator */
} Counter;

static const agen_gen_ops counter_ops;

static void counter_complete_step(Counter *c, agen_co *co) {
        if (c->fail_at && c->i + 1 == c->fail_at) {
                assert_int_equal(agen_co_fail(co, -EIO, "step failed on purpose"), 0);
                return;
        }
        if (c->i < c->n) {
                c->value = ++c->i;
                assert_int_equal(agen_co_yield(co, &c->value), 0);
        } else
                assert_int_equal(agen_co_return(co), 0);
        /* A completion handle completes once. */
        assert_int_equal(agen_co_return(co), -ESTALE);
}

static void counter_complete_close(Counter *c, agen_co *co) {
        switch (c->close_mode) {
        case CLOSE_OK:
                assert_int_equal(agen_co_return(co), 0);
                break;
        case CLOSE_FAIL:
                assert_int_equal(agen_co_fail(co, -EIO, "cleanup failed on purpose"), 0);
                break;
        case CLOSE_YIELD:
                assert_int_equal(agen_co_yield(co, &c->value), 0);
                break;
        default:
                fail();
        }
}

static void counter_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Counter *c = w->data;
        agen_co *co = c->co;
        c->co = NULL;
        if (c->co_is_close)
                counter_complete_close(c, co);
        else
                counter_complete_step(c, co);
}

static void counter_step(agen_gen *gen, agen_co *co, void *userdata) {
        Counter *c = userdata;
        assert_ptr_equal(agen_co_get_gen(co), gen);
        assert_int_equal(agen_gen_get_state(gen), AGEN_GEN_RUNNING);
        c->steps++;
        if (c->async) {
                c->co = co;
                c->co_is_close = false;
                ev_timer_set(&c->timer, 0.001, 0.);
                ev_timer_start(c->loop, &c->timer);
                return;
        }
        counter_complete_step(c, co);
}

static void spawned_next_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        assert_int_equal(status, 0);
}

static void counter_close(agen_gen *gen, agen_co *co, void *userdata) {
        Counter *c = userdata;
        assert_int_equal(agen_gen_get_state(gen), AGEN_GEN_CLOSING);
        c->closes++;
        c->close_thread = last_close_thread = pthread_self();
        if (c->spawn) {
                /* A cleanup that iterates another generator: shutdown must close it too. */
                assert_int_equal(agen_gen_anext(c->spawn, spawned_next_cb, NULL), 0);
                c->spawn = agen_gen_unref(c->spawn);
        }
        if (c->close_mode == CLOSE_HANG)
                return;
        if (c->async) {
                c->co = co;
                c->co_is_close = true;
                ev_timer_set(&c->timer, 0.001, 0.);
                ev_timer_start(c->loop, &c->timer);
                return;
        }
        counter_complete_close(c, co);
}

static void counter_abandon(agen_gen *gen, void *userdata) {
        Counter *c = userdata;
        c->abandons++;
        ev_timer_stop(c->loop, &c->timer);
}

static void counter_destroy(void *userdata) {
        Counter *c = userdata;
        assert_false(ev_is_active(&c->timer));
        agen_gen_unref(c->spawn);
        free(c);
        n_destroyed++;
}

static const agen_gen_ops counter_ops = {
        .step = counter_step,
        .close = counter_close,
        .abandon = counter_abandon,
        .destroy = counter_destroy,
};

static agen_gen *counter_new(struct ev_loop *loop, int n, bool async, int close_mode, Counter **ret) {
        Counter *c = calloc(1, sizeof(*c));
        assert_non_null(c);
        *c = (Counter) { .loop = loop, .n = n, .async = async, .close_mode = close_mode };
        ev_timer_init(&c->timer, counter_timer_cb, 0., 0.);
        c->timer.data = c;
        agen_gen *g = NULL;
        assert_int_equal(agen_gen_new(loop, &counter_ops, c, &g), 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CREATED);
        assert_ptr_equal(agen_gen_get_loop(g), loop);
        assert_ptr_equal(agen_gen_get_userdata(g), c);
        if (ret)
                *ret = c;
        return g;
}

/* ---- recording callbacks ---- */

typedef struct Rec {
        unsigned n_next, n_close;
        int last_status, last_value, close_status;
        agen_gen_state state_in_cb;
        int order[8];
        unsigned n_order;
        bool unref_in_cb;
        bool chain; /* call anext again from the callback until the end */
} Rec;

static void rec_next_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        Rec *r = userdata;
        r->n_next++;
        r->last_status = status;
        r->last_value = status == 0 ? *(const int *) value : -1;
        r->state_in_cb = agen_gen_get_state(gen);
        if (r->n_order < 8)
                r->order[r->n_order++] = 'n';
        if (r->unref_in_cb)
                agen_gen_unref(gen);
        else if (r->chain && status == 0)
                assert_int_equal(agen_gen_anext(gen, rec_next_cb, r), 0);
}

static void rec_close_cb(agen_gen *gen, int status, void *userdata) {
        Rec *r = userdata;
        r->n_close++;
        r->close_status = status;
        r->state_in_cb = agen_gen_get_state(gen);
        if (r->n_order < 8)
                r->order[r->n_order++] = 'c';
}

typedef struct Errors {
        unsigned n;
        int last_error;
        char last_message[256];
} Errors;

static void errors_handler(struct ev_loop *loop, agen_gen *gen, int error, const char *message,
                           void *userdata) {
        Errors *e = userdata;
        e->n++;
        e->last_error = error;
        snprintf(e->last_message, sizeof(e->last_message), "%s", message ?: "");
}

/* ---- fixture: a fresh loop; at the end nothing of ours may be left ---- */


typedef struct Fixture {
        struct ev_loop *loop;
        unsigned fds;
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        f->fds = count_fds();
        f->loop = ev_loop_new(EVFLAG_AUTO);
        assert_non_null(f->loop);
        n_destroyed = 0;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        assert_int_equal(agen_loop_shutdown(f->loop, 1.0), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        assert_int_equal(gen_loop_state_count(), 0);
        /* No active watcher of ours is left on the loop. */
        assert_int_equal(ev_run(f->loop, EVRUN_NOWAIT), 0);
        ev_loop_destroy(f->loop);
        assert_int_equal(count_fds(), f->fds);
        free(f);
        return 0;
}

/* ---- tests ---- */

static void test_states_and_no_reentrancy(void **state) {
        Fixture *f = *state;
        Counter *c;
        Rec r = {};
        agen_gen *g = counter_new(f->loop, 3, false, CLOSE_OK, &c);

        assert_string_equal(agen_gen_state_to_string(AGEN_GEN_SUSPENDED), "suspended");
        assert_null(agen_gen_state_to_string(_AGEN_GEN_STATE_MAX));

        /* Nothing is registered before the first step. */
        assert_int_equal(agen_loop_live(f->loop), 0);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        /* firstiter */
        assert_int_equal(agen_loop_live(f->loop), 1);
        /* The step completes synchronously, yet its callback waits for the loop. */
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_RUNNING);
        assert_int_equal(r.n_next, 0);
        assert_int_equal(c->steps, 0);

        ev_run(f->loop, 0);
        assert_int_equal(r.n_next, 1);
        assert_int_equal(r.last_status, 0);
        assert_int_equal(r.last_value, 1);
        assert_int_equal(r.state_in_cb, AGEN_GEN_SUSPENDED);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_SUSPENDED);

        /* The rest, each step started from the previous step's callback. */
        r.chain = true;
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        ev_run(f->loop, 0);
        assert_int_equal(r.n_next, 4);
        assert_int_equal(r.last_status, AGEN_STOP);
        assert_int_equal(r.state_in_cb, AGEN_GEN_CLOSED);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_int_equal(c->steps, 4);
        /* A generator that finished runs no cleanup, and leaves the live set. */
        assert_int_equal(c->closes, 0);
        assert_int_equal(agen_loop_live(f->loop), 0);

        /* anext after the end is an error, not undefined behaviour. */
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), -ESTALE);
        /* Closing a finished generator succeeds and runs nothing. */
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        assert_int_equal(r.n_close, 0);
        ev_run(f->loop, 0);
        assert_int_equal(r.n_close, 1);
        assert_int_equal(r.close_status, 0);
        assert_int_equal(c->closes, 0);

        assert_null(agen_gen_unref(g));
        assert_int_equal(n_destroyed, 1);
        assert_null(agen_gen_unref(NULL));
        assert_null(agen_gen_ref(NULL));
}

static void test_anext_busy_and_deferred_close(void **state) {
        Fixture *f = *state;
        Counter *c;
        Rec r = {};
        agen_gen *g = counter_new(f->loop, 5, true, CLOSE_OK, &c);

        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), -EBUSY);
        /* aclose while running, on a generator that cannot be cancelled: 0 (never the
         * positive AGEN_DEFERRED that `if (r != 0)` misread), queued for the step's end. */
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_RUNNING);
        ev_run(f->loop, 0);

        assert_int_equal(r.n_next, 1);
        assert_int_equal(r.last_status, 0);
        assert_int_equal(r.n_close, 1);
        assert_int_equal(r.close_status, 0);
        assert_memory_equal(r.order, ((int[]) { 'n', 'c' }), 2 * sizeof(int));
        assert_int_equal(c->steps, 1);
        assert_int_equal(c->closes, 1);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), -ESTALE);
        agen_gen_unref(g);
        assert_int_equal(n_destroyed, 1);
}

static void test_anext_while_closing(void **state) {
        Fixture *f = *state;
        Counter *c;
        Rec r = {};
        agen_gen *g = counter_new(f->loop, 5, true, CLOSE_OK, &c);

        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSING);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), -EBUSY);
        ev_run(f->loop, 0);
        assert_int_equal(r.n_close, 1);
        assert_int_equal(r.n_next, 0);
        agen_gen_unref(g);
}

static void test_aclose_unstarted_runs_nothing(void **state) {
        Fixture *f = *state;
        Counter *c;
        Rec r = {};
        agen_gen *g = counter_new(f->loop, 3, false, CLOSE_OK, &c);

        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        assert_int_equal(r.n_close, 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        ev_run(f->loop, 0);
        assert_int_equal(r.n_close, 1);
        assert_int_equal(r.close_status, 0);
        assert_int_equal(c->steps + c->closes, 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), -ESTALE);

        /* A second aclose succeeds. */
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        ev_run(f->loop, 0);
        assert_int_equal(r.n_close, 2);
        assert_int_equal(r.close_status, 0);
        assert_int_equal(c->closes, 0);
        agen_gen_unref(g);

        /* Dropping an unstarted generator frees it at once: nothing to clean up. */
        g = counter_new(f->loop, 3, false, CLOSE_OK, &c);
        agen_gen_unref(g);
        assert_int_equal(n_destroyed, 2);
}

static void test_second_aclose_succeeds(void **state) {
        Fixture *f = *state;
        Counter *c;
        Rec r1 = {}, r2 = {}, r3 = {};
        agen_gen *g = counter_new(f->loop, 3, true, CLOSE_OK, &c);

        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r1), 0);
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r2), 0);
        ev_run(f->loop, 0);
        assert_int_equal(r1.n_close, 1);
        assert_int_equal(r2.n_close, 1);
        assert_int_equal(c->closes, 1);
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r3), 0);
        assert_int_equal(agen_gen_aclose(g, NULL, NULL), 0);
        ev_run(f->loop, 0);
        assert_int_equal(r3.n_close, 1);
        assert_int_equal(r3.close_status, 0);
        assert_int_equal(c->closes, 1);
        agen_gen_unref(g);
}

static void test_step_fails(void **state) {
        Fixture *f = *state;
        Counter *c;
        Rec r = {};
        Errors e = {};
        agen_gen *g = counter_new(f->loop, 3, true, CLOSE_OK, &c);
        c->fail_at = 2;

        assert_int_equal(agen_loop_set_exception_handler(f->loop, errors_handler, &e), 0);
        r.chain = true;
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        ev_run(f->loop, 0);
        assert_int_equal(r.n_next, 2);
        assert_int_equal(r.last_status, -EIO);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_int_equal(c->closes, 0);
        /* Awaited: the error went to the callback, not to the handler. */
        assert_int_equal(e.n, 0);
        agen_gen_unref(g);

        /* Not awaited (no callback): the handler gets it. */
        g = counter_new(f->loop, 3, false, CLOSE_OK, &c);
        c->fail_at = 1;
        assert_int_equal(agen_gen_anext(g, NULL, NULL), 0);
        ev_run(f->loop, 0);
        assert_int_equal(e.n, 1);
        assert_int_equal(e.last_error, -EIO);
        assert_string_equal(e.last_message, "step failed on purpose");
        agen_gen_unref(g);
}

static void test_cleanup_errors_reach_the_handler(void **state) {
        Fixture *f = *state;
        Counter *c;
        Rec r = {};
        Errors e = {};

        assert_int_equal(agen_loop_set_exception_handler(f->loop, errors_handler, &e), 0);

        /* Awaited close: the status is the caller's. */
        agen_gen *g = counter_new(f->loop, 3, true, CLOSE_FAIL, &c);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_gen_close_sync(g), -EIO);
        assert_int_equal(e.n, 0);
        agen_gen_unref(g);

        /* aclose without a callback: nobody awaits, so the handler gets it. */
        g = counter_new(f->loop, 3, true, CLOSE_FAIL, &c);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_gen_aclose(g, NULL, NULL), 0);
        ev_run(f->loop, 0);
        assert_int_equal(e.n, 1);
        assert_int_equal(e.last_error, -EIO);
        assert_string_equal(e.last_message, "cleanup failed on purpose");
        agen_gen_unref(g);

        /* Dropped: the finalizer's close fails, the handler gets it. */
        g = counter_new(f->loop, 3, false, CLOSE_FAIL, &c);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        agen_gen_unref(g);
        ev_run(f->loop, 0);
        assert_int_equal(e.n, 2);
        assert_int_equal(e.last_error, -EIO);

        /* A yield during close is an error, always reported, and not a hang. */
        g = counter_new(f->loop, 3, true, CLOSE_YIELD, &c);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        ev_run(f->loop, 0);
        assert_int_equal(r.n_close, 1);
        assert_int_equal(r.close_status, -EPROTO);
        assert_int_equal(e.n, 3);
        assert_int_equal(e.last_error, -EPROTO);
        assert_string_equal(e.last_message, "generator yielded during close");
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        agen_gen_unref(g);
        assert_int_equal(n_destroyed, 4);

        /* Back to the default handler (stderr). */
        assert_int_equal(agen_loop_set_exception_handler(f->loop, NULL, NULL), 0);
        g = counter_new(f->loop, 3, false, CLOSE_FAIL, &c);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        agen_gen_unref(g);
        ev_run(f->loop, 0);
        assert_int_equal(e.n, 3);
        assert_int_equal(n_destroyed, 5);
}

static void test_finalizer_on_last_unref(void **state) {
        Fixture *f = *state;
        Counter *c;
        agen_gen *g = counter_new(f->loop, 3, true, CLOSE_OK, &c);

        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_loop_live(f->loop), 1);
        agen_gen_ref(g);
        agen_gen_unref(g);
        assert_int_equal(c->closes, 0);
        agen_gen_unref(g);
        /* Scheduled, not run in the unref. */
        assert_int_equal(n_destroyed, 0);
        assert_int_equal(c->closes, 0);
        ev_run(f->loop, 0);
        assert_int_equal(n_destroyed, 1);
        assert_int_equal(agen_loop_live(f->loop), 0);
}

static unsigned closes_seen;

static void counting_destroy(void *userdata) {
        Counter *c = userdata;
        closes_seen += c->closes;
        counter_destroy(userdata);
}

static const agen_gen_ops counting_ops = {
        .step = counter_step,
        .close = counter_close,
        .abandon = counter_abandon,
        .destroy = counting_destroy,
};

static void test_finalizer_from_own_callback(void **state) {
        Fixture *f = *state;
        Rec r = { .unref_in_cb = true };
        Counter *c = calloc(1, sizeof(*c));
        *c = (Counter) { .loop = f->loop, .n = 3, .async = true };
        ev_timer_init(&c->timer, counter_timer_cb, 0., 0.);
        c->timer.data = c;
        agen_gen *g;
        assert_int_equal(agen_gen_new(f->loop, &counting_ops, c, &g), 0);

        closes_seen = 0;
        assert_int_equal(agen_gen_anext(g, rec_next_cb, &r), 0);
        ev_run(f->loop, 0);
        /* The callback dropped the last reference: the generator was closed, then freed. */
        assert_int_equal(r.n_next, 1);
        assert_int_equal(n_destroyed, 1);
        assert_int_equal(closes_seen, 1);
}

typedef struct ThreadDrop {
        agen_gen *gen;
        pthread_t thread;
} ThreadDrop;

static void *thread_drop(void *p) {
        ThreadDrop *t = p;
        t->thread = pthread_self();
        agen_gen_unref(t->gen);
        return NULL;
}

static void guard_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        unsigned *ticks = w->data;
        if (n_destroyed > 0 || ++*ticks > 500) /* bounded: 5 s */
                ev_break(loop, EVBREAK_ONE);
}

static void test_finalizer_from_another_thread(void **state) {
        Fixture *f = *state;
        Counter *c = calloc(1, sizeof(*c));
        *c = (Counter) { .loop = f->loop, .n = 3, .async = true };
        ev_timer_init(&c->timer, counter_timer_cb, 0., 0.);
        c->timer.data = c;
        agen_gen *g;
        assert_int_equal(agen_gen_new(f->loop, &counting_ops, c, &g), 0);
        closes_seen = 0;

        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        ThreadDrop t = { .gen = g };
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, thread_drop, &t), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        /* The other thread only handed it over. */
        assert_int_equal(n_destroyed, 0);

        unsigned ticks = 0;
        ev_timer guard;
        ev_timer_init(&guard, guard_cb, 0.01, 0.01);
        guard.data = &ticks;
        ev_timer_start(f->loop, &guard);
        ev_run(f->loop, 0);
        ev_timer_stop(f->loop, &guard);

        assert_int_equal(n_destroyed, 1);
        assert_int_equal(closes_seen, 1);

        /* The cleanup ran on the loop's thread, not on the dropping one. */
        assert_true(pthread_equal(last_close_thread, pthread_self()));
        assert_false(pthread_equal(last_close_thread, t.thread));

        /* An unstarted generator dropped on another thread is freed there. */
        g = counter_new(f->loop, 3, false, CLOSE_OK, NULL);
        t = (ThreadDrop) { .gen = g };
        assert_int_equal(pthread_create(&th, NULL, thread_drop, &t), 0);
        assert_int_equal(pthread_join(th, NULL), 0);
        assert_int_equal(n_destroyed, 2);
}

static void *thread_drop_many(void *p) {
        agen_gen **v = p;
        for (unsigned i = 0; v[i]; i++)
                agen_gen_unref(v[i]);
        return NULL;
}

static void test_finalizer_threads_race(void **state) {
        Fixture *f = *state;
        enum { N = 64 };
        agen_gen *a[N / 2 + 1] = {}, *b[N / 2 + 1] = {};

        for (unsigned i = 0; i < N; i++) {
                agen_gen *g = counter_new(f->loop, 3, i % 2, CLOSE_OK, NULL);
                assert_int_equal(agen_gen_next_sync(g, NULL), 0);
                if (i % 2)
                        a[i / 2] = g;
                else
                        b[i / 2] = g;
        }
        assert_int_equal(agen_loop_live(f->loop), N);
        pthread_t t1, t2;
        assert_int_equal(pthread_create(&t1, NULL, thread_drop_many, a), 0);
        assert_int_equal(pthread_create(&t2, NULL, thread_drop_many, b), 0);

        unsigned ticks = 0;
        ev_timer guard;
        ev_timer_init(&guard, guard_cb, 0.01, 0.01);
        guard.data = &ticks;
        ev_timer_start(f->loop, &guard);
        while (n_destroyed < N && ticks <= 500)
                ev_run(f->loop, EVRUN_ONCE);
        ev_timer_stop(f->loop, &guard);
        assert_int_equal(pthread_join(t1, NULL), 0);
        assert_int_equal(pthread_join(t2, NULL), 0);
        /* Whatever the threads dropped last is closed by shutdown (in teardown) at worst. */
        assert_int_equal(agen_loop_shutdown(f->loop, 5.0), 0);
        assert_int_equal(n_destroyed, N);
}

static void test_shutdown_closes_all(void **state) {
        Fixture *f = *state;
        Errors e = {};
        Counter *c[5];
        agen_gen *g[5];
        Rec r = {};

        assert_int_equal(agen_loop_set_exception_handler(f->loop, errors_handler, &e), 0);
        g[0] = counter_new(f->loop, 3, true, CLOSE_OK, &c[0]);
        g[1] = counter_new(f->loop, 3, false, CLOSE_OK, &c[1]);
        g[2] = counter_new(f->loop, 3, true, CLOSE_FAIL, &c[2]);
        g[3] = counter_new(f->loop, 3, true, CLOSE_OK, &c[3]);
        g[4] = counter_new(f->loop, 3, false, CLOSE_OK, &c[4]); /* never started */
        for (unsigned i = 0; i < 4; i++)
                assert_int_equal(agen_gen_next_sync(g[i], NULL), 0);
        /* One in the middle of a step. */
        assert_int_equal(agen_gen_anext(g[3], rec_next_cb, &r), 0);
        /* One dropped: the finalizer's close is pending. */
        agen_gen_unref(TAKE_PTR(g[1]));
        /* One whose cleanup starts another generator. */
        c[0]->spawn = counter_new(f->loop, 3, true, CLOSE_OK, NULL);
        assert_int_equal(agen_loop_live(f->loop), 4);

        assert_int_equal(agen_loop_shutdown(f->loop, 5.0), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        assert_int_equal(c[0]->closes, 1);
        assert_int_equal(c[2]->closes, 1);
        assert_int_equal(c[3]->closes, 1);
        assert_int_equal(c[4]->closes + c[4]->steps, 0);
        /* The step in progress finished first, then the close ran. */
        assert_int_equal(r.n_next, 1);
        assert_int_equal(r.last_status, 0);
        /* The failing cleanup was reported: shutdown awaits nobody's status. */
        assert_int_equal(e.n, 1);
        assert_int_equal(e.last_error, -EIO);
        /* The dropped one and the spawned one were freed. */
        assert_int_equal(n_destroyed, 2);
        for (unsigned i = 0; i < 5; i++)
                if (g[i]) {
                        /* Shutdown leaves an unstarted generator alone. */
                        assert_int_equal(agen_gen_get_state(g[i]), i == 4 ? AGEN_GEN_CREATED : AGEN_GEN_CLOSED);
                        agen_gen_unref(g[i]);
                }
        assert_int_equal(n_destroyed, 6);
}

static void test_shutdown_timeout_abandons(void **state) {
        Fixture *f = *state;
        Errors e = {};
        Counter *c, *c2;
        Rec r = {}, r2 = {};

        assert_int_equal(agen_loop_set_exception_handler(f->loop, errors_handler, &e), 0);
        agen_gen *g = counter_new(f->loop, 3, true, CLOSE_HANG, &c);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_gen_aclose(g, rec_close_cb, &r), 0);
        /* And one whose step never completes. */
        agen_gen *g2 = counter_new(f->loop, 3, false, CLOSE_OK, &c2);
        c2->async = true;
        c2->fail_at = 0;
        assert_int_equal(agen_gen_next_sync(g2, NULL), 0);
        assert_int_equal(agen_gen_anext(g2, rec_next_cb, &r2), 0);
        ev_run(f->loop, EVRUN_NOWAIT); /* the step starts its timer... */
        ev_timer_stop(f->loop, &c2->timer); /* ...which we take away: it hangs */

        assert_int_equal(agen_loop_shutdown(f->loop, 0.05), 2);
        assert_int_equal(c->abandons, 1);
        assert_int_equal(c2->abandons, 1);
        assert_int_equal(r.n_close, 1);
        assert_int_equal(r.close_status, -ETIMEDOUT);
        assert_int_equal(r2.n_next, 1);
        assert_int_equal(r2.last_status, -ECANCELED);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_int_equal(agen_gen_get_state(g2), AGEN_GEN_CLOSED);
        assert_int_equal(agen_loop_live(f->loop), 0);
        /* A late completion of an abandoned step is refused. */
        assert_int_equal(agen_co_return(c2->co), -ESTALE);
        agen_gen_unref(g);
        agen_gen_unref(g2);
        assert_int_equal(n_destroyed, 2);
}

static void test_two_loops(void **state) {
        Fixture *f = *state;
        struct ev_loop *other = ev_loop_new(EVFLAG_AUTO);
        Counter *ca, *cb;

        agen_gen *a1 = counter_new(f->loop, 3, false, CLOSE_OK, &ca);
        agen_gen *a2 = counter_new(f->loop, 3, false, CLOSE_OK, NULL);
        agen_gen *b1 = counter_new(other, 3, true, CLOSE_OK, &cb);
        assert_int_equal(agen_gen_next_sync(a1, NULL), 0);
        assert_int_equal(agen_gen_next_sync(a2, NULL), 0);
        assert_int_equal(agen_gen_next_sync(b1, NULL), 0);
        assert_int_equal(agen_loop_live(f->loop), 2);
        assert_int_equal(agen_loop_live(other), 1);
        assert_int_equal(gen_loop_state_count(), 2);

        /* Each loop has its own set: shutting one down leaves the other alone. */
        assert_int_equal(agen_loop_shutdown(f->loop, 1.0), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        assert_int_equal(agen_loop_live(other), 1);
        assert_int_equal(ca->closes, 1);
        assert_int_equal(cb->closes, 0);

        /* Dropped: closed on its own loop, when that loop runs. */
        agen_gen_unref(b1);
        ev_run(f->loop, 0);
        assert_int_equal(n_destroyed, 0);
        ev_run(other, 0);
        assert_int_equal(n_destroyed, 1);

        agen_gen_unref(a1);
        agen_gen_unref(a2);
        assert_int_equal(n_destroyed, 3);
        assert_int_equal(agen_loop_shutdown(other, 1.0), 0);
        ev_loop_destroy(other);
}

static void test_sync_api(void **state) {
        Fixture *f = *state;
        Counter *c;
        agen_gen *g = counter_new(f->loop, 2, true, CLOSE_OK, &c);
        const void *v = NULL;

        assert_int_equal(agen_gen_next_sync(g, &v), 0);
        assert_int_equal(*(const int *) v, 1);
        assert_int_equal(agen_gen_next_sync(g, &v), 0);
        assert_int_equal(*(const int *) v, 2);
        assert_int_equal(agen_gen_next_sync(g, &v), AGEN_STOP);
        assert_int_equal(agen_gen_next_sync(g, &v), -ESTALE);
        assert_int_equal(agen_gen_close_sync(g), 0);
        agen_gen_unref(g);

        /* A step that never completes and nothing else to wait for: no hang. */
        g = counter_new(f->loop, 2, true, CLOSE_OK, &c);
        assert_int_equal(agen_gen_next_sync(g, NULL), 0);
        assert_int_equal(agen_gen_anext(g, NULL, NULL), 0);
        ev_run(f->loop, EVRUN_NOWAIT);
        ev_timer_stop(f->loop, &c->timer);
        assert_int_equal(agen_gen_close_sync(g), -EDEADLK);
        agen_gen_unref(g);
        assert_int_equal(agen_loop_shutdown(f->loop, 0.01), 1);
        assert_int_equal(n_destroyed, 2);
}

static void test_bad_arguments(void **state) {
        Fixture *f = *state;
        agen_gen *g = NULL;
        static const agen_gen_ops no_step = {};

        assert_int_equal(agen_gen_new(NULL, &counter_ops, NULL, &g), -EINVAL);
        assert_int_equal(agen_gen_new(f->loop, &no_step, NULL, &g), -EINVAL);
        assert_int_equal(agen_gen_new(f->loop, &counter_ops, NULL, NULL), -EINVAL);
        assert_null(g);
        assert_int_equal(agen_gen_anext(NULL, NULL, NULL), -EINVAL);
        assert_int_equal(agen_gen_aclose(NULL, NULL, NULL), -EINVAL);
        assert_int_equal(agen_loop_shutdown(NULL, 0), -EINVAL);
        assert_int_equal(agen_loop_live(NULL), 0);
        assert_int_equal(agen_loop_set_exception_handler(NULL, NULL, NULL), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_states_and_no_reentrancy, setup, teardown),
                cmocka_unit_test_setup_teardown(test_anext_busy_and_deferred_close, setup, teardown),
                cmocka_unit_test_setup_teardown(test_anext_while_closing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_aclose_unstarted_runs_nothing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_second_aclose_succeeds, setup, teardown),
                cmocka_unit_test_setup_teardown(test_step_fails, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cleanup_errors_reach_the_handler, setup, teardown),
                cmocka_unit_test_setup_teardown(test_finalizer_on_last_unref, setup, teardown),
                cmocka_unit_test_setup_teardown(test_finalizer_from_own_callback, setup, teardown),
                cmocka_unit_test_setup_teardown(test_finalizer_from_another_thread, setup, teardown),
                cmocka_unit_test_setup_teardown(test_finalizer_threads_race, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_closes_all, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_timeout_abandons, setup, teardown),
                cmocka_unit_test_setup_teardown(test_two_loops, setup, teardown),
                cmocka_unit_test_setup_teardown(test_sync_api, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_arguments, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* The async-generator runtime: states, deferred delivery, the per-loop live set, the
 * finalizer hand-off and loop shutdown.
 *
 * Threads. Everything here runs on the thread of the generator's loop, except
 * agen_gen_ref()/agen_gen_unref() (any thread) and the parts of the per-loop state they
 * touch, which sit under registry_lock: the registry, LoopState.n_ref, the drop list, the
 * live count and starting/stopping the ev_async.
 *
 * References. The runtime holds a reference on a generator while an operation is in
 * flight (from agen_gen_anext() until its callback has returned; from the start of a close
 * until its callbacks have returned) and while it sits in the loop's delivery queue. So a
 * reference count of zero means nothing is in flight, and the state is CREATED, SUSPENDED
 * or CLOSED and nobody else will change it. SUSPENDED is the one that needs a cleanup: the
 * generator is resurrected (count 1, owned by the finalizer) and closed on its loop. On the
 * loop's thread the close is queued on the ev_idle at once; on another thread the last
 * unref pushes the generator on its loop's drop list and wakes the loop through an
 * ev_async. The cleanup therefore never runs on the dropping thread (anchors §3 item 6).
 *
 * LoopState lifetime. It is refcounted under registry_lock by: each generator of the loop,
 * an exception handler set on it, the ev_idle while active, the ev_async while active, and
 * a callback of ours while it runs. The ev_async is active exactly while the live set is
 * non-empty; a generator on the drop list is still in the live set, so a thread that
 * drops one always finds the ev_async active, and it calls ev_async_send() under the lock
 * so the loop cannot stop and free it in between. When the count reaches zero no watcher
 * of ours is active on the loop, so any thread may free it. */

#include <ev.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agen/agen.h"
#include "gen-internal.h"
#include "macro.h"

enum {
        ACT_STEP = 1 << 0,       /* call ops->step */
        ACT_NEXT_DONE = 1 << 1,  /* deliver the step's result to the agen_next_cb */
        ACT_CLOSE = 1 << 2,      /* call ops->close */
        ACT_CLOSE_DONE = 1 << 3, /* deliver the close status to the close waiters */
};

enum {
        CO_NONE,
        CO_STEP,
        CO_CLOSE,
};

struct agen_co {
        agen_gen *gen; /* ro */
        int kind;      /* CO_*: what a completion completes; CO_NONE = nothing pending */
};

typedef struct CloseWaiter CloseWaiter;
struct CloseWaiter {
        agen_close_cb cb;
        void *userdata;
        bool internal; /* the finalizer or shutdown: nobody else sees the status */
        CloseWaiter *next;
};

typedef struct LoopState LoopState;
struct LoopState {
        struct ev_loop *loop;
        LoopState *next;     /* registry, under registry_lock */
        unsigned n_ref;      /* under registry_lock */

        ev_idle idle;        /* active while the queue is non-empty */
        bool idle_active;
        agen_gen *queue_head, *queue_tail;

        pthread_t thread;    /* the loop's thread, as last seen running our code; under registry_lock */
        ev_async async;      /* active while the live set is non-empty; unref'd on the loop */
        bool async_active;   /* under registry_lock */
        agen_gen *drops;     /* under registry_lock */

        agen_gen *live;      /* the live set: started, not closed */
        unsigned n_live;     /* written under registry_lock */
        unsigned shutdown_depth;

        agen_exception_handler handler;
        void *handler_userdata;
        bool handler_pinned; /* holds a reference */
};

struct agen_gen {
        atomic_uint n_ref;
        LoopState *st;           /* ro, holds a reference */
        const agen_gen_ops *ops; /* ro */
        void *userdata;          /* ro */
        agen_gen_state state;
        agen_co co;

        bool close_requested; /* an aclose came: no more steps */
        bool close_deferred;  /* it came while a step ran; the close starts when it ends */
        bool report_always;   /* the close error is a bug of the generator: always report */
        bool shutdown_closing;

        unsigned pending;     /* ACT_* */
        bool queued;
        agen_gen *queue_next;

        agen_next_cb next_cb;
        void *next_userdata;
        int result;
        const void *value;

        int close_status;
        char *message;
        CloseWaiter *waiters, **waiters_tail;

        bool live;
        agen_gen *live_prev, *live_next;
        agen_gen *drop_next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static LoopState *registry = NULL;

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents);
static void async_cb(struct ev_loop *loop, ev_async *w, int revents);

static LoopState *loop_state_find_locked(struct ev_loop *loop) {
        for (LoopState *st = registry; st; st = st->next)
                if (st->loop == loop)
                        return st;
        return NULL;
}

/* Finds or makes the loop's state and takes a reference on it. */
static LoopState *loop_state_acquire_locked(struct ev_loop *loop) {
        LoopState *st = loop_state_find_locked(loop);
        if (!st) {
                st = calloc(1, sizeof(*st));
                if (!st)
                        return NULL;
                *st = (LoopState) {
                        .loop = loop,
                        .next = registry,
                        .thread = pthread_self(),
                };
                ev_idle_init(&st->idle, idle_cb);
                ev_set_priority(&st->idle, EV_MAXPRI);
                ev_async_init(&st->async, async_cb);
                registry = st;
        }
        st->n_ref++;
        return st;
}

static void loop_state_unref_locked(LoopState *st) {
        assert(st->n_ref > 0);
        if (--st->n_ref > 0)
                return;
        assert(!st->idle_active && !st->async_active && !st->live && !st->drops && !st->queue_head);
        for (LoopState **p = &registry; *p; p = &(*p)->next)
                if (*p == st) {
                        *p = st->next;
                        break;
                }
        free(st);
}

/* Called from code that runs on the loop's thread (our watchers, anext, aclose). */
static void loop_state_note_thread(LoopState *st) {
        pthread_t self = pthread_self();
        if (pthread_equal(st->thread, self))
                return;
        pthread_mutex_lock(&registry_lock);
        st->thread = self;
        pthread_mutex_unlock(&registry_lock);
}

static void loop_state_ref(LoopState *st) {
        pthread_mutex_lock(&registry_lock);
        st->n_ref++;
        pthread_mutex_unlock(&registry_lock);
}

static void loop_state_unref(LoopState *st) {
        pthread_mutex_lock(&registry_lock);
        loop_state_unref_locked(st);
        pthread_mutex_unlock(&registry_lock);
}

unsigned gen_loop_state_count(void) {
        unsigned n = 0;
        pthread_mutex_lock(&registry_lock);
        for (LoopState *st = registry; st; st = st->next)
                n++;
        pthread_mutex_unlock(&registry_lock);
        return n;
}

static void default_exception_handler(struct ev_loop *loop, agen_gen *gen, int error,
                                      const char *message, void *userdata) {
        fprintf(stderr, "agen: %s: %s\n", message ?: "generator error", strerror(error < 0 ? -error : error));
}

static void gen_report(agen_gen *g, int error, const char *message) {
        LoopState *st = g->st;
        agen_exception_handler h = st->handler ?: default_exception_handler;
        h(st->loop, g, error, message, st->handler ? st->handler_userdata : NULL);
}

static void gen_free(agen_gen *g) {
        LoopState *st = g->st;

        assert(!g->queued && !g->live && !g->waiters);
        if (g->ops->destroy)
                g->ops->destroy(g->userdata);
        free(g->message);
        free(g);
        loop_state_unref(st);
}

/* Queues g for the loop's ev_idle. The queue holds a reference. */
static void gen_schedule(agen_gen *g, unsigned act) {
        LoopState *st = g->st;

        g->pending |= act;
        if (g->queued)
                return;
        g->queued = true;
        agen_gen_ref(g);
        g->queue_next = NULL;
        if (st->queue_tail)
                st->queue_tail->queue_next = g;
        else
                st->queue_head = g;
        st->queue_tail = g;
        if (!st->idle_active) {
                ev_idle_start(st->loop, &st->idle);
                st->idle_active = true;
                loop_state_ref(st);
        }
}

static void gen_link_live(agen_gen *g) {
        LoopState *st = g->st;

        assert(!g->live);
        pthread_mutex_lock(&registry_lock);
        g->live = true;
        g->live_prev = NULL;
        g->live_next = st->live;
        if (st->live)
                st->live->live_prev = g;
        st->live = g;
        if (st->n_live++ == 0) {
                assert(!st->async_active);
                ev_async_start(st->loop, &st->async);
                /* A suspended generator does not keep ev_run() from returning, as in asyncio. */
                ev_unref(st->loop);
                st->async_active = true;
                st->n_ref++;
        }
        pthread_mutex_unlock(&registry_lock);
}

static void gen_unlink_live(agen_gen *g) {
        LoopState *st = g->st;

        if (!g->live)
                return;
        pthread_mutex_lock(&registry_lock);
        if (g->live_prev)
                g->live_prev->live_next = g->live_next;
        else
                st->live = g->live_next;
        if (g->live_next)
                g->live_next->live_prev = g->live_prev;
        g->live = false;
        g->live_prev = g->live_next = NULL;
        if (--st->n_live == 0) {
                assert(st->async_active && !st->drops);
                ev_ref(st->loop);
                ev_async_stop(st->loop, &st->async);
                st->async_active = false;
                loop_state_unref_locked(st); /* g still holds one: never the last */
        }
        pthread_mutex_unlock(&registry_lock);
}

static int gen_add_waiter(agen_gen *g, agen_close_cb cb, void *userdata, bool internal) {
        if (!cb)
                return 0;
        CloseWaiter *w = malloc(sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (CloseWaiter) { .cb = cb, .userdata = userdata, .internal = internal };
        *g->waiters_tail = w;
        g->waiters_tail = &w->next;
        return 1;
}

static void gen_set_message(agen_gen *g, const char *message) {
        free(g->message);
        g->message = message ? strdup(message) : NULL;
}

/* SUSPENDED → CLOSING. The close holds its own reference until its waiters have run. */
static void gen_start_close(agen_gen *g) {
        assert(g->state == AGEN_GEN_SUSPENDED);
        g->close_requested = true;
        g->state = AGEN_GEN_CLOSING;
        agen_gen_ref(g);
        gen_schedule(g, ACT_CLOSE);
}

static void gen_run_close(agen_gen *g) {
        if (g->state != AGEN_GEN_CLOSING)
                return;
        if (!g->ops->close) {
                g->close_status = 0;
                gen_schedule(g, ACT_CLOSE_DONE);
                return;
        }
        g->co.kind = CO_CLOSE;
        g->ops->close(g, &g->co, g->userdata);
}

static void gen_deliver_next(agen_gen *g) {
        int r = g->result;
        const void *v = g->value;
        agen_next_cb cb = g->next_cb;
        void *ud = g->next_userdata;
        _cleanup_free_ char *msg = TAKE_PTR(g->message);

        assert(g->state == AGEN_GEN_RUNNING);
        g->next_cb = NULL;
        g->next_userdata = NULL;
        if (r == 0)
                g->state = AGEN_GEN_SUSPENDED;
        else {
                /* Finished or failed: it cleaned up itself, as a Python generator that
                 * returned or raised has run its finally blocks. */
                g->state = AGEN_GEN_CLOSED;
                g->value = NULL;
                gen_unlink_live(g);
        }

        if (cb)
                cb(g, r, v, ud);
        else if (r < 0)
                gen_report(g, r, msg ?: "generator step failed");

        if (g->close_deferred) {
                g->close_deferred = false;
                if (g->state == AGEN_GEN_SUSPENDED)
                        gen_start_close(g);
                else if (g->waiters)
                        gen_schedule(g, ACT_CLOSE_DONE);
        }
        agen_gen_unref(g); /* the reference agen_gen_anext() took */
}

static void gen_deliver_close(agen_gen *g) {
        bool was_closing = g->state == AGEN_GEN_CLOSING;
        int r = g->close_status;
        _cleanup_free_ char *msg = TAKE_PTR(g->message);
        bool report = g->report_always;
        CloseWaiter *w = TAKE_PTR(g->waiters);

        g->waiters_tail = &g->waiters;
        g->close_status = 0;
        g->report_always = false;
        if (was_closing) {
                g->state = AGEN_GEN_CLOSED;
                gen_unlink_live(g);
        }

        if (r < 0 && !report) {
                /* Somebody awaits the status: then it is theirs, else it would be lost. */
                report = true;
                for (CloseWaiter *i = w; i; i = i->next)
                        if (!i->internal)
                                report = false;
        }
        if (r < 0 && report)
                gen_report(g, r, msg ?: "generator cleanup failed");

        while (w) {
                CloseWaiter *next = w->next;
                w->cb(g, r, w->userdata);
                free(w);
                w = next;
        }
        if (was_closing)
                agen_gen_unref(g); /* the reference gen_start_close() took */
}

static void gen_process(agen_gen *g, unsigned acts) {
        if (acts & ACT_STEP) {
                g->co.kind = CO_STEP;
                g->ops->step(g, &g->co, g->userdata);
        }
        if (acts & ACT_NEXT_DONE)
                gen_deliver_next(g);
        if (acts & ACT_CLOSE)
                gen_run_close(g);
        if (acts & ACT_CLOSE_DONE)
                gen_deliver_close(g);
}

/* Delivers one batch: what was queued when it started. What its callbacks queue waits for
 * the next loop iteration, so a generator that yields synchronously forever cannot starve
 * the loop's I/O. */
static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents) {
        LoopState *st = container_of(w, LoopState, idle);
        agen_gen *batch = st->queue_head;

        loop_state_ref(st);
        loop_state_note_thread(st);
        st->queue_head = st->queue_tail = NULL;
        while (batch) {
                agen_gen *g = batch;
                batch = g->queue_next;
                g->queue_next = NULL;
                g->queued = false;
                unsigned acts = g->pending;
                g->pending = 0;
                gen_process(g, acts);
                agen_gen_unref(g);
        }
        if (!st->queue_head && st->idle_active) {
                ev_idle_stop(loop, &st->idle);
                st->idle_active = false;
                loop_state_unref(st);
        }
        loop_state_unref(st);
}

static void gen_internal_close_done(agen_gen *g, int status, void *userdata) {
        agen_gen_unref(g);
}

/* Closes g on behalf of the finalizer or shutdown. The caller holds a reference that
 * passes to the close; it is dropped when the close has been delivered. */
static void gen_close_internal(agen_gen *g) {
        CloseWaiter *w = malloc(sizeof(*w));
        if (!w) {
                /* Out of memory: run the close anyway; the reference goes at once. */
                if (g->state == AGEN_GEN_SUSPENDED && !g->close_requested)
                        gen_start_close(g);
                agen_gen_unref(g);
                return;
        }
        *w = (CloseWaiter) { .cb = gen_internal_close_done, .internal = true };
        *g->waiters_tail = w;
        g->waiters_tail = &w->next;

        switch (g->state) {
        case AGEN_GEN_SUSPENDED:
                if (!g->close_requested)
                        gen_start_close(g);
                break;
        case AGEN_GEN_RUNNING:
                g->close_requested = true;
                g->close_deferred = true;
                break;
        case AGEN_GEN_CLOSING:
                break;
        default:
                gen_schedule(g, ACT_CLOSE_DONE);
        }
}

static void loop_state_process_drops(LoopState *st) {
        pthread_mutex_lock(&registry_lock);
        agen_gen *list = TAKE_PTR(st->drops);
        pthread_mutex_unlock(&registry_lock);

        while (list) {
                agen_gen *g = list;
                list = g->drop_next;
                g->drop_next = NULL;
                /* Resurrected: this reference belongs to the finalizer's close. */
                atomic_store(&g->n_ref, 1);
                gen_close_internal(g);
        }
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents) {
        LoopState *st = container_of(w, LoopState, async);

        loop_state_ref(st);
        loop_state_note_thread(st);
        loop_state_process_drops(st);
        loop_state_unref(st);
}

/* The last reference is gone: free what needs no cleanup, hand the rest to the loop. */
static void gen_finalize(agen_gen *g) {
        if (g->state == AGEN_GEN_SUSPENDED) {
                LoopState *st = g->st;

                pthread_mutex_lock(&registry_lock);
                assert(g->live && st->async_active);
                if (pthread_equal(st->thread, pthread_self())) {
                        /* On the loop's thread (in a callback, or between runs): queue the
                         * close on the ev_idle, which keeps the loop running until it is
                         * done. Nothing of the generator runs inside this unref. */
                        pthread_mutex_unlock(&registry_lock);
                        atomic_store(&g->n_ref, 1);
                        gen_close_internal(g);
                        return;
                }
                /* Another thread: the ev_async hands it over. */
                g->drop_next = st->drops;
                st->drops = g;
                ev_async_send(st->loop, &st->async);
                pthread_mutex_unlock(&registry_lock);
                return;
        }
        assert(IN_SET(g->state, AGEN_GEN_CREATED, AGEN_GEN_CLOSED));
        gen_free(g);
}

_public_ int agen_gen_new(struct ev_loop *loop, const agen_gen_ops *ops, void *userdata, agen_gen **ret) {
        assert_return(loop, -EINVAL);
        assert_return(ops && ops->step, -EINVAL);
        assert_return(ret, -EINVAL);

        agen_gen *g = malloc(sizeof(*g));
        if (!g)
                return -ENOMEM;

        pthread_mutex_lock(&registry_lock);
        LoopState *st = loop_state_acquire_locked(loop);
        pthread_mutex_unlock(&registry_lock);
        if (!st) {
                free(g);
                return -ENOMEM;
        }

        *g = (agen_gen) {
                .st = st,
                .ops = ops,
                .userdata = userdata,
                .state = AGEN_GEN_CREATED,
        };
        atomic_init(&g->n_ref, 1);
        g->co.gen = g;
        g->waiters_tail = &g->waiters;
        *ret = g;
        return 0;
}

_public_ agen_gen *agen_gen_ref(agen_gen *gen) {
        if (!gen)
                return NULL;
        unsigned prev = atomic_fetch_add_explicit(&gen->n_ref, 1, memory_order_relaxed);
        assert(prev > 0);
        (void) prev;
        return gen;
}

_public_ agen_gen *agen_gen_unref(agen_gen *gen) {
        if (!gen)
                return NULL;
        unsigned prev = atomic_fetch_sub_explicit(&gen->n_ref, 1, memory_order_acq_rel);
        assert(prev > 0);
        if (prev == 1)
                gen_finalize(gen);
        return NULL;
}

/* A reference from the live set, which is weak: fails if the count already reached zero
 * (then the generator is on its way to the drop list, and the finalizer closes it). */
static bool gen_try_ref(agen_gen *g) {
        unsigned n = atomic_load(&g->n_ref);
        while (n > 0)
                if (atomic_compare_exchange_weak(&g->n_ref, &n, n + 1))
                        return true;
        return false;
}

_public_ agen_gen_state agen_gen_get_state(agen_gen *gen) {
        assert_return(gen, _AGEN_GEN_STATE_FORCE_INT32);
        return gen->state;
}

_public_ struct ev_loop *agen_gen_get_loop(agen_gen *gen) {
        assert_return(gen, NULL);
        return gen->st->loop;
}

_public_ void *agen_gen_get_userdata(agen_gen *gen) {
        assert_return(gen, NULL);
        return gen->userdata;
}

static const char *const gen_state_table[_AGEN_GEN_STATE_MAX] = {
        [AGEN_GEN_CREATED] = "created",
        [AGEN_GEN_SUSPENDED] = "suspended",
        [AGEN_GEN_RUNNING] = "running",
        [AGEN_GEN_CLOSING] = "closing",
        [AGEN_GEN_CLOSED] = "closed",
};

_public_ const char *agen_gen_state_to_string(agen_gen_state state) {
        if ((unsigned) state >= ELEMENTSOF(gen_state_table))
                return NULL;
        return gen_state_table[state];
}

_public_ agen_gen *agen_co_get_gen(agen_co *co) {
        assert_return(co, NULL);
        return co->gen;
}

_public_ int agen_co_yield(agen_co *co, const void *value) {
        assert_return(co, -EINVAL);
        agen_gen *g = co->gen;

        switch (co->kind) {
        case CO_STEP:
                co->kind = CO_NONE;
                g->result = 0;
                g->value = value;
                gen_schedule(g, ACT_NEXT_DONE);
                return 0;
        case CO_CLOSE:
                /* Python: "async generator ignored GeneratorExit". An error, never a hang;
                 * the generator counts as closed. */
                co->kind = CO_NONE;
                g->close_status = -EPROTO;
                g->report_always = true;
                gen_set_message(g, "generator yielded during close");
                gen_schedule(g, ACT_CLOSE_DONE);
                return 0;
        default:
                return -ESTALE;
        }
}

_public_ int agen_co_return(agen_co *co) {
        assert_return(co, -EINVAL);
        agen_gen *g = co->gen;

        switch (co->kind) {
        case CO_STEP:
                co->kind = CO_NONE;
                g->result = AGEN_STOP;
                g->value = NULL;
                gen_schedule(g, ACT_NEXT_DONE);
                return 0;
        case CO_CLOSE:
                co->kind = CO_NONE;
                g->close_status = 0;
                gen_schedule(g, ACT_CLOSE_DONE);
                return 0;
        default:
                return -ESTALE;
        }
}

_public_ int agen_co_fail(agen_co *co, int error, const char *message) {
        assert_return(co, -EINVAL);
        assert_return(error < 0, -EINVAL);
        agen_gen *g = co->gen;

        switch (co->kind) {
        case CO_STEP:
                co->kind = CO_NONE;
                g->result = error;
                g->value = NULL;
                gen_set_message(g, message);
                gen_schedule(g, ACT_NEXT_DONE);
                return 0;
        case CO_CLOSE:
                co->kind = CO_NONE;
                g->close_status = error;
                gen_set_message(g, message);
                gen_schedule(g, ACT_CLOSE_DONE);
                return 0;
        default:
                return -ESTALE;
        }
}

_public_ int agen_gen_anext(agen_gen *gen, agen_next_cb cb, void *userdata) {
        assert_return(gen, -EINVAL);
        loop_state_note_thread(gen->st);

        switch (gen->state) {
        case AGEN_GEN_RUNNING:
        case AGEN_GEN_CLOSING:
                return -EBUSY;
        case AGEN_GEN_CLOSED:
                return -ESTALE;
        case AGEN_GEN_SUSPENDED:
                if (gen->close_requested)
                        return -ESTALE;
                break;
        case AGEN_GEN_CREATED:
                /* firstiter: from now on the loop answers for its cleanup. */
                gen_link_live(gen);
                break;
        default:
                assert_not_reached();
        }

        gen->state = AGEN_GEN_RUNNING;
        gen->next_cb = cb;
        gen->next_userdata = userdata;
        agen_gen_ref(gen);
        gen_schedule(gen, ACT_STEP);
        return 0;
}

_public_ int agen_gen_aclose(agen_gen *gen, agen_close_cb cb, void *userdata) {
        assert_return(gen, -EINVAL);
        loop_state_note_thread(gen->st);

        int added = gen_add_waiter(gen, cb, userdata, false);
        if (added < 0)
                return added;

        switch (gen->state) {
        case AGEN_GEN_CREATED:
                /* Never started: nothing to clean up, and nothing was registered. */
                gen->close_requested = true;
                gen->state = AGEN_GEN_CLOSED;
                if (added)
                        gen_schedule(gen, ACT_CLOSE_DONE);
                return 0;
        case AGEN_GEN_SUSPENDED:
                if (!gen->close_requested)
                        gen_start_close(gen);
                return 0;
        case AGEN_GEN_RUNNING:
                /* anchors §3 item 4: refused while running; we queue it for the step's end. */
                gen->close_requested = true;
                gen->close_deferred = true;
                return AGEN_DEFERRED;
        case AGEN_GEN_CLOSING:
                return 0;
        case AGEN_GEN_CLOSED:
                if (added)
                        gen_schedule(gen, ACT_CLOSE_DONE);
                return 0;
        default:
                assert_not_reached();
        }
}

_public_ int agen_loop_set_exception_handler(struct ev_loop *loop, agen_exception_handler handler,
                                             void *userdata) {
        assert_return(loop, -EINVAL);

        pthread_mutex_lock(&registry_lock);
        LoopState *st = loop_state_acquire_locked(loop);
        if (!st) {
                pthread_mutex_unlock(&registry_lock);
                return -ENOMEM;
        }
        st->handler = handler;
        st->handler_userdata = handler ? userdata : NULL;
        if (handler && !st->handler_pinned) {
                st->handler_pinned = true;
                st->n_ref++;
        } else if (!handler && st->handler_pinned) {
                st->handler_pinned = false;
                loop_state_unref_locked(st);
        }
        loop_state_unref_locked(st);
        pthread_mutex_unlock(&registry_lock);
        return 0;
}

_public_ unsigned agen_loop_live(struct ev_loop *loop) {
        unsigned n = 0;

        if (!loop)
                return 0;
        pthread_mutex_lock(&registry_lock);
        LoopState *st = loop_state_find_locked(loop);
        if (st)
                n = st->n_live;
        pthread_mutex_unlock(&registry_lock);
        return n;
}

static void shutdown_close_all(LoopState *st) {
        /* Strong references first (anchors §3 item 10): closing one generator may start
         * or free others, so the live set must not change under the walk. */
        unsigned n = 0;
        for (agen_gen *g = st->live; g; g = g->live_next)
                n++;
        if (n == 0)
                return;
        agen_gen **v = calloc(n, sizeof(agen_gen *));
        unsigned k = 0;
        if (!v)
                return;
        for (agen_gen *g = st->live; g; g = g->live_next)
                if (!g->shutdown_closing && gen_try_ref(g))
                        v[k++] = g;
        for (unsigned i = 0; i < k; i++) {
                v[i]->shutdown_closing = true;
                gen_close_internal(v[i]); /* takes over our reference */
        }
        free(v);
}

/* Last resort for a generator whose step or close did not finish in time. */
static void gen_abandon(agen_gen *g) {
        if (g->ops->abandon)
                g->ops->abandon(g, g->userdata);
        g->co.kind = CO_NONE;
        g->pending &= ~(unsigned) (ACT_STEP | ACT_CLOSE);

        switch (g->state) {
        case AGEN_GEN_RUNNING:
                if (!(g->pending & ACT_NEXT_DONE)) {
                        g->result = -ECANCELED;
                        g->value = NULL;
                        gen_set_message(g, "generator step abandoned at loop shutdown");
                        gen_schedule(g, ACT_NEXT_DONE);
                }
                if (g->close_deferred)
                        g->close_status = -ETIMEDOUT;
                break;
        case AGEN_GEN_SUSPENDED:
                gen_start_close(g);
                g->pending &= ~(unsigned) ACT_CLOSE;
                _fallthrough_;
        case AGEN_GEN_CLOSING:
                if (!(g->pending & ACT_CLOSE_DONE)) {
                        g->close_status = -ETIMEDOUT;
                        gen_set_message(g, "generator cleanup did not finish before loop shutdown");
                        gen_schedule(g, ACT_CLOSE_DONE);
                }
                break;
        default:
                break;
        }
}

static void shutdown_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        *(bool *) w->data = true;
}

_public_ int agen_loop_shutdown(struct ev_loop *loop, double timeout) {
        assert_return(loop, -EINVAL);

        pthread_mutex_lock(&registry_lock);
        LoopState *st = loop_state_find_locked(loop);
        if (st)
                st->n_ref++;
        pthread_mutex_unlock(&registry_lock);
        if (!st)
                return 0;

        bool timed_out = false;
        ev_timer timer;
        if (timeout >= 0) {
                ev_timer_init(&timer, shutdown_timer_cb, timeout, 0.);
                timer.data = &timed_out;
                ev_timer_start(loop, &timer);
        }

        st->shutdown_depth++;
        /* timeout 0: no time to run the loop at all; everything live is abandoned. */
        for (; timeout != 0;) {
                /* Repeat: a cleanup may start new generators (trio does the same). */
                shutdown_close_all(st);
                if (!st->live && !st->queue_head)
                        break;
                if (timed_out)
                        break;
                if (ev_run(loop, EVRUN_ONCE) == 0 && timeout < 0)
                        break; /* nothing left that could make progress */
        }
        if (timeout >= 0)
                ev_timer_stop(loop, &timer);

        int remaining = 0;
        if (st->live) {
                /* Drops that arrived meanwhile are closed (and abandoned) with the rest. */
                loop_state_process_drops(st);

                unsigned n = st->n_live, k = 0;
                agen_gen **v = calloc(n, sizeof(agen_gen *));
                for (agen_gen *g = st->live; v && g; g = g->live_next)
                        if (gen_try_ref(g))
                                v[k++] = g;
                remaining = (int) n;
                for (unsigned i = 0; i < k; i++) {
                        gen_abandon(v[i]);
                        agen_gen_unref(v[i]);
                }
                free(v);
                /* Deliver the callbacks of what was abandoned, without blocking. */
                for (unsigned i = 0; st->queue_head && i < 64; i++)
                        ev_run(loop, EVRUN_NOWAIT);
        }
        st->shutdown_depth--;

        pthread_mutex_lock(&registry_lock);
        if (!st->live && st->handler_pinned) {
                st->handler_pinned = false;
                st->handler = NULL;
                st->handler_userdata = NULL;
                loop_state_unref_locked(st);
        }
        loop_state_unref_locked(st);
        pthread_mutex_unlock(&registry_lock);
        return remaining;
}

/* ---- blocking convenience ---- */

typedef struct SyncWait {
        unsigned n_ref; /* the caller and the callback */
        bool done;
        int status;
        const void *value;
} SyncWait;

static void sync_wait_unref(SyncWait *w) {
        if (--w->n_ref == 0)
                free(w);
}

static void sync_next_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        SyncWait *w = userdata;
        w->done = true;
        w->status = status;
        w->value = value;
        sync_wait_unref(w);
}

static void sync_close_cb(agen_gen *gen, int status, void *userdata) {
        sync_next_cb(gen, status, NULL, userdata);
}

static int sync_run(struct ev_loop *loop, SyncWait *w) {
        while (!w->done)
                if (ev_run(loop, EVRUN_ONCE) == 0 && !w->done)
                        return -EDEADLK;
        return 0;
}

_public_ int agen_gen_next_sync(agen_gen *gen, const void **ret_value) {
        assert_return(gen, -EINVAL);

        SyncWait *w = malloc(sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (SyncWait) { .n_ref = 2 };
        int r = agen_gen_anext(gen, sync_next_cb, w);
        if (r < 0) {
                free(w);
                return r;
        }
        r = sync_run(gen->st->loop, w);
        if (r >= 0) {
                r = w->status;
                if (r == 0 && ret_value)
                        *ret_value = w->value;
        }
        sync_wait_unref(w);
        return r;
}

_public_ int agen_gen_close_sync(agen_gen *gen) {
        assert_return(gen, -EINVAL);

        SyncWait *w = malloc(sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (SyncWait) { .n_ref = 2 };
        int r = agen_gen_aclose(gen, sync_close_cb, w);
        if (r < 0) {
                free(w);
                return r;
        }
        r = sync_run(gen->st->loop, w);
        if (r >= 0)
                r = w->status;
        sync_wait_unref(w);
        return r;
}

/* SPDX-License-Identifier: MIT */
/* The async-generator runtime: states, deferred delivery, the per-loop live set, the
 * finalizer hand-off and loop shutdown.
 *
 * Threads. Everything here runs on the thread of the generator's loop, except
 * agen_gen_ref()/agen_gen_unref() (any thread) and the parts of the per-loop state they
 * touch, which sit under registry_lock: the registry, LoopState.n_ref, the drop list, the
 * live count and starting/stopping the ev_async. "On the loop's thread" is known only
 * inside the loop's own run: a thread-local names the loop whose callbacks of ours (or
 * agen_loop_shutdown(), or a _sync call) run on this thread now. Anywhere else, even on
 * the thread that ran the loop last, a last unref goes through the ev_async, which wakes
 * the loop wherever it runs now (the loop may have moved to another thread).
 *
 * References. n_ref counts all references: the users' (n_user, agen_gen_ref/unref) and
 * the runtime's, which it holds while an operation is in flight (from agen_gen_anext()
 * until its callback has returned; from the start of a close until its callbacks have
 * returned) and while the generator sits in the loop's delivery queue. When n_user drops
 * to zero the unit of n_ref that the last user held passes to the finalizer: a started,
 * unfinished generator (suspended, or with a step in progress, which is cancelled) is
 * closed on its loop, then freed when the runtime's references are gone. The cleanup
 * never runs on the dropping thread (anchors §3 item 6).
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
#include "fork.h"
#include "gen-internal.h"
#include "list.h"
#include "macro.h"

enum {
        ACT_STEP = 1 << 0,       /* call ops->step */
        ACT_NEXT_DONE = 1 << 1,  /* deliver the step's result to the agen_next_cb */
        ACT_CLOSE = 1 << 2,      /* call ops->close */
        ACT_CLOSE_DONE = 1 << 3, /* deliver the close status to the close waiters */
        ACT_CANCEL = 1 << 4,     /* call ops->cancel on the step in progress */
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

        agen_gen *batch;     /* the delivery batch being processed (idle_cb); nested runs go on with it */

        ev_async async;      /* active while the live set or the drop list is non-empty; unref'd on the loop */
        bool async_active;   /* under registry_lock */
        agen_gen *drops;     /* under registry_lock; each holds a reference for the finalizer */
        unsigned fork_generation; /* ro */

        agen_gen *live;      /* the live set: started, not closed */
        unsigned n_live;     /* written under registry_lock */
        unsigned shutdown_depth;

        agen_exception_handler handler;
        void *handler_userdata;
        bool handler_pinned; /* holds a reference */

        agen_finalizer_warning warning;
        void *warning_userdata;
        bool warning_pinned; /* holds a reference */
};

struct agen_gen {
        atomic_uint n_ref;       /* all references */
        atomic_uint n_user;      /* the users': agen_gen_ref()/agen_gen_unref() */
        unsigned fork_generation; /* ro */
        LoopState *st;           /* ro, holds a reference */
        const agen_gen_ops *ops; /* ro */
        void *userdata;          /* ro */
        agen_gen_state state;
        agen_co co;

        bool close_requested; /* an aclose came: no more steps */
        bool close_deferred;  /* it came while a step ran; the close starts when it ends */
        bool report_always;   /* the close error is a bug of the generator: always report */
        bool shutdown_closing;
        bool cancel_requested; /* ops->cancel was asked for this step: -ECANCELED then closes */
        bool warn_unclosed;   /* the finalizer closes it: tell the loop's warning hook */

        const void *sent;     /* agen_gen_asend()'s value, for the step about to run */
        int thrown;           /* agen_gen_athrow()'s error, for the step about to run */
        char *thrown_message;
        bool throw_closing;   /* the close runs as the unwinding of a thrown error */

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
        LIST_FIELDS(agen_gen, live); /* LoopState.live, under registry_lock */
        agen_gen *drop_next;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static LoopState *registry = NULL;
static pthread_once_t fork_hooks_once = PTHREAD_ONCE_INIT;

/* The loop whose run is on this thread, in one of our callbacks (see the top). */
static _Thread_local struct ev_loop *current_loop;

#define LOOP_ENTER(loop)                                                                \
        struct ev_loop *_saved_loop = current_loop;                                     \
        current_loop = (loop)
#define LOOP_LEAVE() current_loop = _saved_loop

static void registry_fork_lock(void) {
        pthread_mutex_lock(&registry_lock);
}
static void registry_fork_unlock(void) {
        pthread_mutex_unlock(&registry_lock);
}
static void register_fork_hooks(void) {
        fork_add_lock_hooks(registry_fork_lock, registry_fork_unlock);
}

static bool gen_forked(agen_gen *g) {
        return fork_is_stale(g->fork_generation);
}

static void gen_unref_internal(agen_gen *g);

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents);
static void async_cb(struct ev_loop *loop, ev_async *w, int revents);

/* The state of loop made in this process; an inherited one (fork) is dead here. */
static LoopState *loop_state_find_locked(struct ev_loop *loop) {
        for (LoopState *st = registry; st; st = st->next)
                if (st->loop == loop && !fork_is_stale(st->fork_generation))
                        return st;
        return NULL;
}

static bool loop_state_inherited_locked(struct ev_loop *loop) {
        for (LoopState *st = registry; st; st = st->next)
                if (st->loop == loop && fork_is_stale(st->fork_generation))
                        return true;
        return false;
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
                        .fork_generation = fork_generation(),
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
        assert(!st->idle_active && !st->async_active && !st->live && !st->drops && !st->queue_head &&
               !st->batch);
        for (LoopState **p = &registry; *p; p = &(*p)->next)
                if (*p == st) {
                        *p = st->next;
                        break;
                }
        free(st);
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
        free(g->thrown_message);
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
        atomic_fetch_add(&g->n_ref, 1);
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
        LIST_PREPEND(live, st->live, g);
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
        LIST_REMOVE(live, st->live, g);
        g->live = false;
        if (--st->n_live == 0 && !st->drops) {
                /* A drop still pending (pushed while its generator was live) keeps the
                 * ev_async until async_cb has taken it. */
                assert(st->async_active);
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
        atomic_fetch_add(&g->n_ref, 1);
        gen_schedule(g, ACT_CLOSE);
}

/* Asks the step in progress to end now (ops->cancel), for a close that must not wait
 * for it: aclose, the finalizer, shutdown, a _sync timeout. Python cancels the task that
 * awaits inside the generator; here the step ends with -ECANCELED and the generator's
 * cleanup runs after it. Without a cancel op the close waits for the step. */
static void gen_request_cancel(agen_gen *g) {
        if (g->state != AGEN_GEN_RUNNING || g->cancel_requested || !g->ops->cancel)
                return;
        if (g->pending & ACT_NEXT_DONE)
                return; /* it has ended; the result is on its way */
        g->cancel_requested = true;
        gen_schedule(g, ACT_CANCEL);
}

static void gen_warn_unclosed(agen_gen *g) {
        LoopState *st = g->st;
        if (!g->warn_unclosed)
                return;
        g->warn_unclosed = false;
        if (st->warning)
                st->warning(st->loop, g, st->warning_userdata);
}

static void gen_run_close(agen_gen *g) {
        if (g->state != AGEN_GEN_CLOSING)
                return;
        gen_warn_unclosed(g);
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

        /* Cancelled: the generator was interrupted where it waited, and still holds what it
         * held there; its cleanup runs next (as a CancelledError unwinds Python's finally
         * blocks). */
        bool cancelled = g->cancel_requested && r == -ECANCELED;

        assert(g->state == AGEN_GEN_RUNNING);
        g->next_cb = NULL;
        g->next_userdata = NULL;
        g->sent = NULL;
        g->cancel_requested = false;
        if (cancelled) {
                g->state = AGEN_GEN_SUSPENDED;
                g->value = NULL;
                g->close_requested = g->close_deferred = true;
        } else if (r == 0)
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
        else if (r < 0 && !cancelled)
                gen_report(g, r, msg ?: "generator step failed");

        if (g->close_deferred) {
                g->close_deferred = false;
                if (g->state == AGEN_GEN_SUSPENDED)
                        gen_start_close(g);
                else if (g->waiters)
                        gen_schedule(g, ACT_CLOSE_DONE);
        }
        gen_unref_internal(g); /* the reference agen_gen_anext() took */
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
                gen_unref_internal(g); /* the reference gen_start_close() took */
}

/* A step with an error thrown in (agen_gen_athrow()). The generator's athrow op decides;
 * without one the error is not handled: it unwinds the generator, which runs its cleanup
 * (close), and the step then fails with it. */
static void gen_run_throw(agen_gen *g) {
        int error = g->thrown;
        g->thrown = 0;
        _cleanup_free_ char *msg = TAKE_PTR(g->thrown_message);

        if (g->ops->athrow) {
                g->co.kind = CO_STEP;
                g->ops->athrow(g, &g->co, error, msg, g->userdata);
                return;
        }
        if (g->ops->close) {
                g->thrown = error;
                g->thrown_message = TAKE_PTR(msg);
                g->throw_closing = true;
                g->co.kind = CO_CLOSE;
                g->ops->close(g, &g->co, g->userdata);
                return;
        }
        g->result = error;
        g->value = NULL;
        gen_set_message(g, msg);
        gen_schedule(g, ACT_NEXT_DONE);
}

/* The close that ran as the unwinding of a thrown error has ended: the step fails with
 * the error (or with the cleanup's own). */
static void gen_end_throw_close(agen_gen *g, int status, const char *message) {
        g->throw_closing = false;
        g->result = status < 0 ? status : g->thrown;
        g->value = NULL;
        gen_set_message(g, status < 0 ? message : g->thrown_message);
        g->thrown = 0;
        free(g->thrown_message);
        g->thrown_message = NULL;
        gen_schedule(g, ACT_NEXT_DONE);
}

static void gen_process(agen_gen *g, unsigned acts) {
        if (acts & ACT_STEP) {
                if (g->thrown)
                        gen_run_throw(g);
                else {
                        g->co.kind = CO_STEP;
                        g->ops->step(g, &g->co, g->userdata);
                }
        }
        if ((acts & ACT_CANCEL) && g->co.kind == CO_STEP && g->cancel_requested)
                g->ops->cancel(g, &g->co, g->userdata);
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
        LOOP_ENTER(loop);

        loop_state_ref(st);
        /* The batch lives in st, not here: a callback that runs the loop again (a nested
         * agen_loop_shutdown()) must deliver the rest of the batch it was called from. */
        if (!st->batch) {
                st->batch = st->queue_head;
                st->queue_head = st->queue_tail = NULL;
        }
        while (st->batch) {
                agen_gen *g = st->batch;
                st->batch = g->queue_next;
                g->queue_next = NULL;
                g->queued = false;
                unsigned acts = g->pending;
                g->pending = 0;
                gen_process(g, acts);
                gen_unref_internal(g);
        }
        if (!st->queue_head && st->idle_active) {
                ev_idle_stop(loop, &st->idle);
                st->idle_active = false;
                loop_state_unref(st);
        }
        loop_state_unref(st);
        LOOP_LEAVE();
}

static void gen_internal_close_done(agen_gen *g, int status, void *userdata) {
        gen_unref_internal(g);
}

/* Closes g on behalf of the finalizer or shutdown. The caller holds a reference that
 * passes to the close; it is dropped when the close has been delivered. */
static void gen_close_internal(agen_gen *g) {
        CloseWaiter *w = malloc(sizeof(*w));
        if (!w) {
                /* Out of memory: run the close anyway; the reference goes at once. */
                if (g->state == AGEN_GEN_SUSPENDED && !g->close_requested)
                        gen_start_close(g);
                gen_request_cancel(g);
                gen_unref_internal(g);
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
                gen_request_cancel(g);
                break;
        case AGEN_GEN_CLOSING:
                break;
        default:
                gen_schedule(g, ACT_CLOSE_DONE);
        }
}

/* The last user reference is gone (on the loop's thread); the caller's unit of n_ref
 * passes to the close. */
static void gen_finalizer(agen_gen *g) {
        switch (g->state) {
        case AGEN_GEN_SUSPENDED:
        case AGEN_GEN_RUNNING:
                if (!g->close_requested)
                        g->warn_unclosed = true;
                gen_close_internal(g);
                break;
        default:
                /* Never started, closing, or over: nothing to do but let go. */
                gen_unref_internal(g);
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
                gen_finalizer(g); /* takes the reference the drop list held */
        }

        /* The ev_async stayed active for the drops; without live generators it goes. */
        pthread_mutex_lock(&registry_lock);
        if (st->n_live == 0 && !st->drops && st->async_active) {
                ev_ref(st->loop);
                ev_async_stop(st->loop, &st->async);
                st->async_active = false;
                loop_state_unref_locked(st); /* the caller holds one: never the last */
        }
        pthread_mutex_unlock(&registry_lock);
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents) {
        LoopState *st = container_of(w, LoopState, async);
        LOOP_ENTER(loop);

        loop_state_ref(st);
        loop_state_process_drops(st);
        loop_state_unref(st);
        LOOP_LEAVE();
}

/* Drops one of the runtime's references. At zero nothing is in flight and no user holds
 * it: it is created, or closed (the finalizer closed it before). */
static void gen_unref_internal(agen_gen *g) {
        unsigned prev = atomic_fetch_sub_explicit(&g->n_ref, 1, memory_order_acq_rel);
        assert(prev > 0);
        if (prev > 1)
                return;
        assert(IN_SET(g->state, AGEN_GEN_CREATED, AGEN_GEN_CLOSED));
        gen_free(g);
}

/* The last user reference is gone; the caller passes on its unit of n_ref. */
static void gen_last_user_unref(agen_gen *g) {
        LoopState *st = g->st;

        if (current_loop == st->loop) {
                /* Inside the loop's own run, on its thread: queue the close on the ev_idle.
                 * Nothing of the generator runs inside this unref. */
                gen_finalizer(g);
                return;
        }
        pthread_mutex_lock(&registry_lock);
        if (g->live) {
                /* Started and not closed: the ev_async hands it to the loop, on whatever
                 * thread runs it (it is active while the generator is live, and stays
                 * active while the drop list is not empty). */
                assert(st->async_active);
                g->drop_next = st->drops;
                st->drops = g;
                ev_async_send(st->loop, &st->async);
                pthread_mutex_unlock(&registry_lock);
                return;
        }
        pthread_mutex_unlock(&registry_lock);
        /* Created, or closed: no cleanup; freed here if nothing of the runtime holds it. */
        gen_unref_internal(g);
}

_public_ int agen_gen_new(struct ev_loop *loop, const agen_gen_ops *ops, void *userdata, agen_gen **ret) {
        assert_return(loop, -EINVAL);
        assert_return(ops && ops->step, -EINVAL);
        assert_return(ret, -EINVAL);

        agen_gen *g = malloc(sizeof(*g));
        if (!g)
                return -ENOMEM;

        pthread_once(&fork_hooks_once, register_fork_hooks);
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
                .fork_generation = fork_generation(),
        };
        atomic_init(&g->n_ref, 1);
        atomic_init(&g->n_user, 1);
        g->co.gen = g;
        g->waiters_tail = &g->waiters;
        *ret = g;
        return 0;
}

_public_ agen_gen *agen_gen_ref(agen_gen *gen) {
        if (!gen || gen_forked(gen))
                return gen;
        unsigned prev = atomic_fetch_add_explicit(&gen->n_ref, 1, memory_order_relaxed);
        assert(prev > 0);
        (void) prev;
        atomic_fetch_add_explicit(&gen->n_user, 1, memory_order_relaxed);
        return gen;
}

_public_ agen_gen *agen_gen_unref(agen_gen *gen) {
        if (!gen)
                return NULL;
        if (gen_forked(gen))
                return NULL; /* the parent's: nothing runs, nothing is freed here (fork.h) */
        unsigned prev = atomic_fetch_sub_explicit(&gen->n_user, 1, memory_order_acq_rel);
        assert(prev > 0);
        if (prev == 1)
                gen_last_user_unref(gen);
        else
                gen_unref_internal(gen);
        return NULL;
}

_public_ agen_gen *agen_gen_aclose_unref(agen_gen *gen) {
        if (!gen)
                return NULL;
        (void) agen_gen_aclose(gen, NULL, NULL);
        return agen_gen_unref(gen);
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

static const char *const agen_gen_state_table[_AGEN_GEN_STATE_MAX] = {
        [AGEN_GEN_CREATED] = "created",
        [AGEN_GEN_SUSPENDED] = "suspended",
        [AGEN_GEN_RUNNING] = "running",
        [AGEN_GEN_CLOSING] = "closing",
        [AGEN_GEN_CLOSED] = "closed",
};

DEFINE_STRING_TABLE_LOOKUP_TO_STRING(agen_gen_state, agen_gen_state, _public_)

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
                if (g->throw_closing) {
                        gen_report(g, -EPROTO, "generator yielded during close");
                        gen_end_throw_close(g, -EPROTO, "generator yielded during close");
                        return 0;
                }
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
                if (g->throw_closing) {
                        gen_end_throw_close(g, 0, NULL);
                        return 0;
                }
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
                if (g->throw_closing) {
                        gen_end_throw_close(g, error, message);
                        return 0;
                }
                g->close_status = error;
                gen_set_message(g, message);
                gen_schedule(g, ACT_CLOSE_DONE);
                return 0;
        default:
                return -ESTALE;
        }
}

_public_ const void *agen_co_get_sent(agen_co *co) {
        assert_return(co, NULL);
        return co->kind == CO_STEP ? co->gen->sent : NULL;
}

/* anext, asend and athrow: start a step. */
static int gen_start_step(agen_gen *gen, const void *sent, int thrown, const char *thrown_message,
                          agen_next_cb cb, void *userdata) {
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
                /* PEP 525: a just-started generator has no yield to receive a value. */
                if (sent)
                        return -EINVAL;
                break;
        default:
                assert_not_reached();
        }

        char *msg = NULL;
        if (thrown_message && !(msg = strdup(thrown_message)))
                return -ENOMEM;

        atomic_fetch_add(&gen->n_ref, 1);
        gen->next_cb = cb;
        gen->next_userdata = userdata;
        if (thrown && gen->state == AGEN_GEN_CREATED) {
                /* Thrown into a generator that never ran: it ends at once, with the error,
                 * without running anything (as Python's athrow on an unstarted one). */
                gen->state = AGEN_GEN_RUNNING;
                gen->close_requested = true;
                gen->result = thrown;
                gen->value = NULL;
                free(gen->message);
                gen->message = msg;
                gen_schedule(gen, ACT_NEXT_DONE);
                return 0;
        }
        if (gen->state == AGEN_GEN_CREATED)
                /* firstiter: from now on the loop answers for its cleanup. */
                gen_link_live(gen);
        gen->state = AGEN_GEN_RUNNING;
        gen->sent = sent;
        gen->thrown = thrown;
        free(gen->thrown_message);
        gen->thrown_message = msg;
        gen_schedule(gen, ACT_STEP);
        return 0;
}

_public_ int agen_gen_anext(agen_gen *gen, agen_next_cb cb, void *userdata) {
        assert_return(gen, -EINVAL);
        if (gen_forked(gen))
                return -ECHILD;
        return gen_start_step(gen, NULL, 0, NULL, cb, userdata);
}

_public_ int agen_gen_asend(agen_gen *gen, const void *value, agen_next_cb cb, void *userdata) {
        assert_return(gen, -EINVAL);
        if (gen_forked(gen))
                return -ECHILD;
        return gen_start_step(gen, value, 0, NULL, cb, userdata);
}

_public_ int agen_gen_athrow(agen_gen *gen, int error, const char *message, agen_next_cb cb, void *userdata) {
        assert_return(gen, -EINVAL);
        assert_return(error < 0, -EINVAL);
        if (gen_forked(gen))
                return -ECHILD;
        return gen_start_step(gen, NULL, error, message, cb, userdata);
}

_public_ int agen_gen_aclose(agen_gen *gen, agen_close_cb cb, void *userdata) {
        assert_return(gen, -EINVAL);
        if (gen_forked(gen))
                return -ECHILD;

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
                /* The step in progress is cancelled (if the generator can be); its callback
                 * fires first, then the close runs. Returns 0 as every other case: a close
                 * that waits for a step is no failure (see AGEN_DEFERRED in agen.h). */
                gen->close_requested = true;
                gen->close_deferred = true;
                gen_request_cancel(gen);
                return 0;
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

/* Setting a hook: takes the registry lock and the loop's state (NULL and *ret_error if
 * the loop was inherited across fork or memory ran out; the lock is then not held). */
static LoopState *loop_hook_begin(struct ev_loop *loop, int *ret_error) {
        pthread_once(&fork_hooks_once, register_fork_hooks);
        pthread_mutex_lock(&registry_lock);
        if (loop_state_inherited_locked(loop) && !loop_state_find_locked(loop)) {
                pthread_mutex_unlock(&registry_lock);
                *ret_error = -ECHILD;
                return NULL;
        }
        LoopState *st = loop_state_acquire_locked(loop);
        if (!st) {
                pthread_mutex_unlock(&registry_lock);
                *ret_error = -ENOMEM;
        }
        return st;
}

/* A loop state with a hook set keeps one reference, so the hook outlives the loop's last
 * generator; clearing the hook drops it. Ends what loop_hook_begin() began. */
static void loop_hook_end(LoopState *st, bool set, bool *pinned) {
        if (set && !*pinned) {
                *pinned = true;
                st->n_ref++;
        } else if (!set && *pinned) {
                *pinned = false;
                loop_state_unref_locked(st);
        }
        loop_state_unref_locked(st);
        pthread_mutex_unlock(&registry_lock);
}

_public_ int agen_loop_set_exception_handler(struct ev_loop *loop, agen_exception_handler handler,
                                             void *userdata) {
        assert_return(loop, -EINVAL);
        int r;
        LoopState *st = loop_hook_begin(loop, &r);
        if (!st)
                return r;
        st->handler = handler;
        st->handler_userdata = handler ? userdata : NULL;
        loop_hook_end(st, handler, &st->handler_pinned);
        return 0;
}

_public_ int agen_loop_set_finalizer_warning(struct ev_loop *loop, agen_finalizer_warning warning,
                                             void *userdata) {
        assert_return(loop, -EINVAL);
        int r;
        LoopState *st = loop_hook_begin(loop, &r);
        if (!st)
                return r;
        st->warning = warning;
        st->warning_userdata = warning ? userdata : NULL;
        loop_hook_end(st, warning, &st->warning_pinned);
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
        g->pending &= ~(unsigned) (ACT_STEP | ACT_CLOSE | ACT_CANCEL);
        g->cancel_requested = false;
        g->throw_closing = false;

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
        bool inherited = !st && loop_state_inherited_locked(loop);
        pthread_mutex_unlock(&registry_lock);
        if (inherited)
                return -ECHILD;
        if (!st)
                return 0;
        LOOP_ENTER(loop);

        bool timed_out = false;
        ev_timer timer;
        if (timeout >= 0) {
                /* The loop's clock is as old as its last iteration, which may be long ago:
                 * the timeout counts from now. */
                ev_now_update(loop);
                ev_timer_init(&timer, shutdown_timer_cb, timeout, 0.);
                timer.data = &timed_out;
                ev_timer_start(loop, &timer);
        }

        st->shutdown_depth++;
        /* timeout 0: no time to run the loop at all; everything live is abandoned. */
        for (; timeout != 0;) {
                /* Repeat: a cleanup may start new generators (trio does the same). */
                loop_state_process_drops(st);
                shutdown_close_all(st);
                if (!st->live && !st->queue_head && !st->batch)
                        break;
                if (timed_out)
                        break;
                if (ev_run(loop, EVRUN_ONCE) == 0 && timeout < 0)
                        break; /* nothing left that could make progress */
        }
        if (timeout >= 0)
                ev_timer_stop(loop, &timer);

        int remaining = 0;
        loop_state_process_drops(st);
        if (st->live) {
                unsigned n = st->n_live, k = 0;
                agen_gen **v = calloc(n, sizeof(agen_gen *));
                for (agen_gen *g = st->live; v && g; g = g->live_next)
                        if (gen_try_ref(g))
                                v[k++] = g;
                remaining = (int) n;
                for (unsigned i = 0; i < k; i++) {
                        gen_abandon(v[i]);
                        gen_unref_internal(v[i]);
                }
                free(v);
                /* Deliver the callbacks of what was abandoned, without blocking. */
                for (unsigned i = 0; (st->queue_head || st->batch) && i < 64; i++)
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
        if (!st->live && st->warning_pinned) {
                st->warning_pinned = false;
                st->warning = NULL;
                st->warning_userdata = NULL;
                loop_state_unref_locked(st);
        }
        loop_state_unref_locked(st);
        pthread_mutex_unlock(&registry_lock);
        LOOP_LEAVE();
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

static int sync_run(struct ev_loop *loop, SyncWait *w, double timeout) {
        LOOP_ENTER(loop);
        bool timed_out = false;
        ev_timer timer;
        int r = 0;

        if (timeout >= 0) {
                ev_now_update(loop);
                ev_timer_init(&timer, shutdown_timer_cb, timeout, 0.);
                timer.data = &timed_out;
                ev_timer_start(loop, &timer);
        }
        while (!w->done) {
                if (timed_out) {
                        r = -ETIMEDOUT;
                        break;
                }
                if (ev_run(loop, EVRUN_ONCE) == 0 && !w->done && !timed_out) {
                        r = -EDEADLK;
                        break;
                }
        }
        if (timeout >= 0)
                ev_timer_stop(loop, &timer);
        LOOP_LEAVE();
        return r;
}

_public_ int agen_gen_next_sync_timeout(agen_gen *gen, double timeout, const void **ret_value) {
        assert_return(gen, -EINVAL);
        if (gen_forked(gen))
                return -ECHILD;

        SyncWait *w = malloc(sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (SyncWait) { .n_ref = 2 };
        int r = agen_gen_anext(gen, sync_next_cb, w);
        if (r < 0) {
                free(w);
                return r;
        }
        r = sync_run(gen->st->loop, w, timeout);
        if (r == -ETIMEDOUT && gen->state == AGEN_GEN_RUNNING) {
                /* As asyncio.wait_for() on __anext__(): the step is cancelled and the
                 * generator closed. A generator that can be cancelled ends its step at once,
                 * so its callback is waited for. */
                gen->close_requested = gen->close_deferred = true;
                gen_request_cancel(gen);
                if (gen->cancel_requested)
                        (void) sync_run(gen->st->loop, w, -1);
        }
        if (r >= 0) {
                r = w->status;
                if (r == 0 && ret_value)
                        *ret_value = w->value;
        }
        sync_wait_unref(w);
        return r;
}

_public_ int agen_gen_next_sync(agen_gen *gen, const void **ret_value) {
        return agen_gen_next_sync_timeout(gen, -1, ret_value);
}

_public_ int agen_gen_close_sync_timeout(agen_gen *gen, double timeout) {
        assert_return(gen, -EINVAL);
        if (gen_forked(gen))
                return -ECHILD;

        SyncWait *w = malloc(sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (SyncWait) { .n_ref = 2 };
        int r = agen_gen_aclose(gen, sync_close_cb, w);
        if (r < 0) {
                free(w);
                return r;
        }
        /* On a timeout the close goes on in the loop. */
        r = sync_run(gen->st->loop, w, timeout);
        if (r >= 0)
                r = w->status;
        sync_wait_unref(w);
        return r;
}

_public_ int agen_gen_close_sync(agen_gen *gen) {
        return agen_gen_close_sync_timeout(gen, -1);
}

const agen_gen_ops *gen_get_ops(agen_gen *gen) {
        return gen->ops;
}

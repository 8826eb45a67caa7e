/* SPDX-License-Identifier: MIT */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "macro.h"
#include "store-pipe.h"

/* A batch: one byte buffer, per write an op byte and its fields (integers as 8 bytes,
 * strings as a 4-byte length, UINT32_MAX for NULL, then the bytes and a NUL). No
 * allocation per write once the buffer has grown to a batch's size. */
typedef struct Batch {
        uint8_t *buf;
        size_t len, size;
        int error;              /* -ENOMEM while recording: the commit fails with it */
} Batch;

typedef enum Op {
        OP_LEASE_SAVE,
        OP_LEASE_DELETE,
        OP_EVENT_APPEND,
        OP_TOKEN_SAVE,
        OP_WAITER_SAVE,
        OP_WAITER_DELETE,
        OP_META_SET,
} Op;

/* A batch larger than this leaves its buffer to be freed, rather than kept for the next. */
#define BATCH_KEEP (1U << 20)

struct StorePipe {
        Store store;
        Store *inner;
        struct ev_loop *loop;
        ev_async async;
        StorePipeDone done;
        void *userdata;

        Batch pending;          /* the loop's: recorded since the last submit */
        Batch flight;           /* the thread's while in_flight */
        bool dirty;             /* pending, or applied to inner by a read, since the last submit */
        bool in_flight;         /* loop side: submitted, done() not yet called */
        int owed_error;         /* a batch applied by a read was not recorded whole: the next commit fails */

        pthread_t thread;
        bool thread_started;
        pthread_mutex_t lock;
        pthread_cond_t work_cond, idle_cond;
        bool work;              /* under lock: the thread owns inner and flight */
        bool finished;          /* under lock: the thread is done with them; result is set */
        bool stop;
        int result;
        usec_t took;            /* under lock: how long the thread's last commit took */
        usec_t delay;           /* test builds: AGEND_TEST_COMMIT_DELAY µs before each commit */
        usec_t estimate;        /* loop side: how long a commit takes (store_pipe_may_commit_inline) */
};

/* ---- batch encoding ---- */

static bool batch_reserve(Batch *b, size_t n) {
        if (b->error < 0)
                return false;
        if (b->size - b->len >= n)
                return true;
        size_t size = MAX(MAX(b->size * 2, b->len + n), (size_t) 4096);
        uint8_t *p = realloc(b->buf, size);
        if (!p) {
                b->error = -ENOMEM;
                return false;
        }
        b->buf = p;
        b->size = size;
        return true;
}

static void put_u64(Batch *b, uint64_t v) {
        if (!batch_reserve(b, 8))
                return;
        memcpy(b->buf + b->len, &v, 8);
        b->len += 8;
}

static void put_op(Batch *b, Op op) {
        if (!batch_reserve(b, 1))
                return;
        b->buf[b->len++] = (uint8_t) op;
}

static void put_str(Batch *b, const char *s) {
        uint32_t n = s ? (uint32_t) strlen(s) : UINT32_MAX;
        if (!batch_reserve(b, 4 + (s ? (size_t) n + 1 : 0)))
                return;
        memcpy(b->buf + b->len, &n, 4);
        b->len += 4;
        if (s) {
                memcpy(b->buf + b->len, s, (size_t) n + 1);
                b->len += (size_t) n + 1;
        }
}

static void put_owner(Batch *b, const OwnerRecord *o) {
        put_u64(b, o->uid);
        put_u64(b, o->gid);
        put_u64(b, (uint64_t) (int64_t) o->pid);
        put_str(b, o->comm);
        put_str(b, o->unit);
}

typedef struct Cursor {
        const uint8_t *p, *end;
} Cursor;

static uint64_t get_u64(Cursor *c) {
        uint64_t v;
        assert(c->end - c->p >= 8);
        memcpy(&v, c->p, 8);
        c->p += 8;
        return v;
}

static const char *get_str(Cursor *c) {
        uint32_t n;
        assert(c->end - c->p >= 4);
        memcpy(&n, c->p, 4);
        c->p += 4;
        if (n == UINT32_MAX)
                return NULL;
        const char *s = (const char *) c->p;
        c->p += (size_t) n + 1;
        return s;
}

static void get_owner(Cursor *c, OwnerRecord *o) {
        o->uid = (uint32_t) get_u64(c);
        o->gid = (uint32_t) get_u64(c);
        o->pid = (int32_t) (int64_t) get_u64(c);
        o->comm = get_str(c);
        o->unit = get_str(c);
}

/* Replays a batch into the real store (on whichever thread owns it). */
static int batch_apply(Store *inner, const Batch *b) {
        Cursor c = { b->buf, b->buf + b->len };
        const StoreOps *o = inner->ops;
        while (c.p < c.end) {
                Op op = (Op) *c.p++;
                switch (op) {
                case OP_LEASE_SAVE: {
                        LeaseRecord l = {};
                        l.id = get_str(&c);
                        l.secret = get_str(&c);
                        l.resource = get_str(&c);
                        l.description = get_str(&c);
                        l.units = (unsigned) get_u64(&c);
                        l.exclusive = get_u64(&c);
                        l.detached = get_u64(&c);
                        l.token = get_u64(&c);
                        get_owner(&c, &l.owner);
                        l.created = get_u64(&c);
                        l.ttl = get_u64(&c);
                        l.deadline = get_u64(&c);
                        (void) o->lease_save(inner, &l);
                        break;
                }
                case OP_LEASE_DELETE:
                        (void) o->lease_delete(inner, get_str(&c));
                        break;
                case OP_EVENT_APPEND: {
                        EventRecord e = {};
                        OwnerRecord owner, by;
                        e.type = get_str(&c);
                        e.time = get_u64(&c);
                        e.resource = get_str(&c);
                        e.lease = get_str(&c);
                        e.token = get_u64(&c);
                        if (get_u64(&c)) {
                                get_owner(&c, &owner);
                                e.owner = &owner;
                        }
                        e.units = (unsigned) get_u64(&c);
                        e.reason = get_str(&c);
                        if (get_u64(&c)) {
                                get_owner(&c, &by);
                                e.revoked_by = &by;
                        }
                        (void) o->event_append(inner, &e);
                        break;
                }
                case OP_TOKEN_SAVE:
                        (void) o->token_save(inner, get_u64(&c));
                        break;
                case OP_WAITER_SAVE: {
                        WaiterRecord w = {};
                        w.ticket = get_str(&c);
                        w.seq = get_u64(&c);
                        w.resource = get_str(&c);
                        w.description = get_str(&c);
                        w.units = (unsigned) get_u64(&c);
                        w.exclusive = get_u64(&c);
                        get_owner(&c, &w.owner);
                        w.since = get_u64(&c);
                        w.unclaimed_since = get_u64(&c);
                        (void) o->waiter_save(inner, &w);
                        break;
                }
                case OP_WAITER_DELETE:
                        (void) o->waiter_delete(inner, get_u64(&c));
                        break;
                case OP_META_SET: {
                        const char *k = get_str(&c), *v = get_str(&c);
                        (void) o->meta_set(inner, k, v);
                        break;
                }
                default:
                        abort();      /* only this file writes batches */
                }
        }
        return b->error;
}

static void batch_clear(Batch *b) {
        b->len = 0;
        b->error = 0;
        if (b->size > BATCH_KEEP) {
                free(b->buf);
                b->buf = NULL;
                b->size = 0;
        }
}

/* ---- committing a batch (on the commit thread, or inline on the loop) ---- */

/* Replays b into the real store and commits it; how long that took goes to *took. */
static int commit_batch(StorePipe *p, const Batch *b, usec_t *took) {
        usec_t t0 = usec_now(CLOCK_MONOTONIC);
        if (p->delay > 0) {
                struct timespec ts = { .tv_sec = (time_t) (p->delay / USEC_PER_SEC),
                                       .tv_nsec = (long) (p->delay % USEC_PER_SEC) * 1000 };
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
        }
        /* A batch that could not be recorded whole is not committed at all. */
        int k = batch_apply(p->inner, b);
        int c = p->inner->ops->commit(p->inner);
        *took = usec_now(CLOCK_MONOTONIC) - t0;
        return k == 0 ? c : k;
}

/* A slow commit counts at once, fast ones bring the estimate down gradually: one slow
 * commit (a checkpoint, a busy disk) sends the next few to the thread. */
static void estimate_add(StorePipe *p, usec_t took) {
        if (took >= p->estimate)
                p->estimate = took;
        else
                p->estimate -= (p->estimate - took) / 8;
}

/* ---- the commit thread ---- */

static void *thread_main(void *userdata) {
        StorePipe *p = userdata;
        pthread_mutex_lock(&p->lock);
        for (;;) {
                while (!p->work && !p->stop)
                        pthread_cond_wait(&p->work_cond, &p->lock);
                if (p->stop)
                        break;
                pthread_mutex_unlock(&p->lock);

                usec_t took;
                int k = commit_batch(p, &p->flight, &took);

                pthread_mutex_lock(&p->lock);
                p->work = false;
                p->finished = true;
                p->result = k;
                p->took = took;
                pthread_cond_broadcast(&p->idle_cond);
                ev_async_send(p->loop, &p->async);
        }
        pthread_mutex_unlock(&p->lock);
        return NULL;
}

/* Until the thread has let go of the real store. */
static void wait_idle(StorePipe *p) {
        if (!p->in_flight)
                return;
        pthread_mutex_lock(&p->lock);
        while (p->work)
                pthread_cond_wait(&p->idle_cond, &p->lock);
        pthread_mutex_unlock(&p->lock);
}

static void async_cb(struct ev_loop *loop, ev_async *w, int revents) {
        StorePipe *p = w->data;
        pthread_mutex_lock(&p->lock);
        bool finished = p->finished;
        int k = p->result;
        usec_t took = p->took;
        p->finished = false;
        pthread_mutex_unlock(&p->lock);
        if (!finished || !p->in_flight)
                return;
        estimate_add(p, took);
        p->in_flight = false;
        batch_clear(&p->flight);
        p->done(p, k, p->userdata);
}

int store_pipe_submit(StorePipe *p) {
        if (p->in_flight)
                return -EBUSY;
        Batch t = p->flight;
        p->flight = p->pending;
        p->pending = t;
        if (p->flight.error == 0)
                p->flight.error = p->owed_error;
        p->owed_error = 0;
        p->dirty = false;
        p->in_flight = true;
        pthread_mutex_lock(&p->lock);
        p->work = true;
        p->finished = false;
        pthread_cond_signal(&p->work_cond);
        pthread_mutex_unlock(&p->lock);
        return 0;
}

void store_pipe_wait(StorePipe *p) {
        wait_idle(p);
}

bool store_pipe_may_commit_inline(const StorePipe *p) {
        if (p->in_flight || p->estimate >= STORE_PIPE_INLINE_MAX_USEC || p->pending.len > STORE_PIPE_INLINE_MAX_BYTES)
                return false;
        /* Idle: the real store is the loop's to ask. */
        const StoreOps *o = p->inner->ops;
        return !o->maintenance_due || !o->maintenance_due(p->inner);
}

int store_pipe_commit_inline(StorePipe *p) {
        if (p->in_flight)
                return -EBUSY;
        /* The thread is idle and holds nothing: the real store is the loop's. What reads
         * applied to its open transaction (owed_error) is committed with the rest. */
        if (p->pending.error == 0)
                p->pending.error = p->owed_error;
        p->owed_error = 0;
        usec_t took;
        const StoreOps *o = p->inner->ops;
        if (o->defer_maintenance)
                o->defer_maintenance(p->inner, true);
        int k = commit_batch(p, &p->pending, &took);
        if (o->defer_maintenance)
                o->defer_maintenance(p->inner, false);
        batch_clear(&p->pending);
        p->dirty = false;
        estimate_add(p, took);
        return k;
}

bool store_pipe_dirty(const StorePipe *p) {
        return p->dirty;
}

bool store_pipe_in_flight(const StorePipe *p) {
        return p->in_flight;
}

/* ---- the Store face: writes are recorded ---- */

static StorePipe *pipe_of(Store *s) {
        return container_of(s, StorePipe, store);
}

static int p_lease_save(Store *s, const LeaseRecord *l) {
        StorePipe *p = pipe_of(s);
        Batch *b = &p->pending;
        put_op(b, OP_LEASE_SAVE);
        put_str(b, l->id);
        put_str(b, l->secret);
        put_str(b, l->resource);
        put_str(b, l->description);
        put_u64(b, l->units);
        put_u64(b, l->exclusive);
        put_u64(b, l->detached);
        put_u64(b, l->token);
        put_owner(b, &l->owner);
        put_u64(b, l->created);
        put_u64(b, l->ttl);
        put_u64(b, l->deadline);
        p->dirty = true;
        return b->error;
}

static int p_lease_delete(Store *s, const char *id) {
        StorePipe *p = pipe_of(s);
        put_op(&p->pending, OP_LEASE_DELETE);
        put_str(&p->pending, id);
        p->dirty = true;
        return p->pending.error;
}

static int p_event_append(Store *s, const EventRecord *e) {
        StorePipe *p = pipe_of(s);
        Batch *b = &p->pending;
        put_op(b, OP_EVENT_APPEND);
        put_str(b, e->type);
        put_u64(b, e->time);
        put_str(b, e->resource);
        put_str(b, e->lease);
        put_u64(b, e->token);
        put_u64(b, !!e->owner);
        if (e->owner)
                put_owner(b, e->owner);
        put_u64(b, e->units);
        put_str(b, e->reason);
        put_u64(b, !!e->revoked_by);
        if (e->revoked_by)
                put_owner(b, e->revoked_by);
        p->dirty = true;
        return b->error;
}

static int p_token_save(Store *s, uint64_t last_token) {
        StorePipe *p = pipe_of(s);
        put_op(&p->pending, OP_TOKEN_SAVE);
        put_u64(&p->pending, last_token);
        p->dirty = true;
        return p->pending.error;
}

static int p_waiter_save(Store *s, const WaiterRecord *w) {
        StorePipe *p = pipe_of(s);
        Batch *b = &p->pending;
        put_op(b, OP_WAITER_SAVE);
        put_str(b, w->ticket);
        put_u64(b, w->seq);
        put_str(b, w->resource);
        put_str(b, w->description);
        put_u64(b, w->units);
        put_u64(b, w->exclusive);
        put_owner(b, &w->owner);
        put_u64(b, w->since);
        put_u64(b, w->unclaimed_since);
        p->dirty = true;
        return b->error;
}

static int p_waiter_delete(Store *s, uint64_t seq) {
        StorePipe *p = pipe_of(s);
        put_op(&p->pending, OP_WAITER_DELETE);
        put_u64(&p->pending, seq);
        p->dirty = true;
        return p->pending.error;
}

static int p_meta_set(Store *s, const char *key, const char *value) {
        StorePipe *p = pipe_of(s);
        put_op(&p->pending, OP_META_SET);
        put_str(&p->pending, key);
        put_str(&p->pending, value);
        p->dirty = true;
        return p->pending.error;
}

/* ---- reads: the loop takes the real store back, with every decided change in it ---- */

/* After this the loop may use inner: the thread is idle and what is recorded is in
 * inner's open transaction (committed by the next submit, which stays owed: dirty). */
static int take_inner(StorePipe *p) {
        wait_idle(p);
        if (p->pending.len == 0 && p->pending.error == 0)
                return 0;
        int k = batch_apply(p->inner, &p->pending);
        batch_clear(&p->pending);
        p->dirty = true;
        if (k < 0 && p->owed_error == 0)
                p->owed_error = k;      /* reported by the commit that takes this batch */
        return k;
}

static int p_commit(Store *s) {
        StorePipe *p = pipe_of(s);
        wait_idle(p);
        if (p->in_flight) {
                /* Its result is the caller's now (start-up, shutdown): done() is not called. */
                pthread_mutex_lock(&p->lock);
                int k = p->result;
                p->finished = false;
                pthread_mutex_unlock(&p->lock);
                p->in_flight = false;
                batch_clear(&p->flight);
                if (k < 0 && k != -ENOSPC)
                        return k;
        }
        (void) take_inner(p);
        int k = p->owed_error;
        p->owed_error = 0;
        usec_t t0 = usec_now(CLOCK_MONOTONIC);
        int c = p->inner->ops->commit(p->inner);
        estimate_add(p, usec_now(CLOCK_MONOTONIC) - t0);
        p->dirty = false;
        return k < 0 ? k : c;
}

static int p_load(Store *s, int (*cb)(const LeaseRecord *r, void *userdata), void *userdata) {
        StorePipe *p = pipe_of(s);
        int k = take_inner(p);
        return k < 0 ? k : p->inner->ops->load(p->inner, cb, userdata);
}

static int p_load_waiters(Store *s, int (*cb)(const WaiterRecord *r, void *userdata), void *userdata) {
        StorePipe *p = pipe_of(s);
        int k = take_inner(p);
        return k < 0 ? k : p->inner->ops->load_waiters(p->inner, cb, userdata);
}

static int p_meta_get(Store *s, const char *key, char **ret) {
        StorePipe *p = pipe_of(s);
        int k = take_inner(p);
        return k < 0 ? k : p->inner->ops->meta_get(p->inner, key, ret);
}

static int p_history(Store *s, const char *resource, uint64_t before, unsigned limit,
                     int (*cb)(const EventRecord *e, void *userdata), void *userdata) {
        StorePipe *p = pipe_of(s);
        int k = take_inner(p);
        return k < 0 ? k : p->inner->ops->history(p->inner, resource, before, limit, cb, userdata);
}

static int64_t p_size(Store *s) {
        StorePipe *p = pipe_of(s);
        if (!p->inner->ops->sizes_any_thread)
                wait_idle(p);
        return p->inner->ops->size(p->inner);
}

static int64_t p_log_bytes(Store *s) {
        StorePipe *p = pipe_of(s);
        if (!p->inner->ops->sizes_any_thread)
                wait_idle(p);
        return p->inner->ops->log_bytes ? p->inner->ops->log_bytes(p->inner) : -EOPNOTSUPP;
}

static void p_free(Store *s) {
        (void) store_pipe_free(pipe_of(s));
}

static const StoreOps pipe_ops = {
        .lease_save = p_lease_save,
        .lease_delete = p_lease_delete,
        .event_append = p_event_append,
        .token_save = p_token_save,
        .waiter_save = p_waiter_save,
        .waiter_delete = p_waiter_delete,
        .commit = p_commit,
        .load = p_load,
        .load_waiters = p_load_waiters,
        .meta_get = p_meta_get,
        .meta_set = p_meta_set,
        .history = p_history,
        .size = p_size,
        .log_bytes = p_log_bytes,
        .free = p_free,
};

Store *store_pipe_store(StorePipe *p) {
        return &p->store;
}

int store_pipe_new(struct ev_loop *loop, Store *inner, StorePipeDone done, void *userdata, StorePipe **ret) {
        StorePipe *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->store.ops = &pipe_ops;
        p->inner = inner;
        p->loop = loop;
        p->done = done;
        p->userdata = userdata;
        pthread_mutex_init(&p->lock, NULL);
        pthread_cond_init(&p->work_cond, NULL);
        pthread_cond_init(&p->idle_cond, NULL);
#ifdef AGEND_TEST_HOOKS
        /* The kill -9 tests widen the window in which a commit is in flight, replies held
         * and the next batch decided (tests/meson.build, history-*-pipelined). */
        const char *d = getenv("AGEND_TEST_COMMIT_DELAY");
        if (d && *d)
                p->delay = strtoull(d, NULL, 10);
#endif
        ev_async_init(&p->async, async_cb);
        p->async.data = p;
        ev_async_start(loop, &p->async);
        int k = pthread_create(&p->thread, NULL, thread_main, p);
        if (k != 0) {
                p->inner = NULL;        /* the caller keeps it on failure */
                store_pipe_free(p);
                return -k;
        }
        p->thread_started = true;
        *ret = p;
        return 0;
}

StorePipe *store_pipe_free(StorePipe *p) {
        if (!p)
                return NULL;
        if (p->thread_started) {
                wait_idle(p);
                pthread_mutex_lock(&p->lock);
                p->stop = true;
                pthread_cond_signal(&p->work_cond);
                pthread_mutex_unlock(&p->lock);
                pthread_join(p->thread, NULL);
        }
        ev_async_stop(p->loop, &p->async);
        pthread_cond_destroy(&p->idle_cond);
        pthread_cond_destroy(&p->work_cond);
        pthread_mutex_destroy(&p->lock);
        store_free(p->inner);
        free(p->pending.buf);
        free(p->flight.buf);
        free(p);
        return NULL;
}

/* SPDX-License-Identifier: MIT */
/* The in-memory store: the StoreOps contract with nothing durable behind it, for tests.
 * A batch is applied to the committed state only at commit, so a failed commit (injected)
 * leaves nothing of it, as sqlite's rollback does. Faults: fail the Nth commit, delay
 * every commit. Not thread-safe, like the daemon's loop. Nothing outlives the process: a
 * restarted agend on this store starts empty (waiters and leases come back only to an
 * engine restored from the same Store object, as the unit tests do). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "macro.h"
#include "store.h"

typedef struct MemLease {
        char *id, *secret, *resource, *description, *comm, *unit;
        LeaseRecord rec;
} MemLease;

typedef struct MemWaiter {
        char *ticket, *resource, *description, *comm, *unit;
        WaiterRecord rec;
} MemWaiter;

typedef struct MemEvent {
        char *type, *resource, *lease, *reason, *comm, *unit, *by_comm, *by_unit;
        OwnerRecord owner, by;
        EventRecord rec;
} MemEvent;

/* One pending write of the open batch. */
typedef enum OpKind { OP_SAVE, OP_DELETE, OP_WAITER_SAVE, OP_WAITER_DELETE, OP_EVENT, OP_META } OpKind;
typedef struct Op {
        OpKind kind;
        MemLease *lease;        /* OP_SAVE */
        char *id;               /* OP_DELETE */
        MemWaiter *waiter;      /* OP_WAITER_SAVE */
        uint64_t seq;           /* OP_WAITER_DELETE */
        MemEvent *event;        /* OP_EVENT */
        char *key, *value;      /* OP_META */
} Op;

typedef struct StoreMemory {
        Store store;
        StoreMemoryOptions opts;
        MemLease **leases;
        size_t n_leases, size_leases;
        MemWaiter **waiters;    /* by seq */
        size_t n_waiters;
        MemEvent **events;      /* ring of history_size */
        size_t n_events, events_head;
        uint64_t last_event_seq;        /* numbers the events as they commit, like sqlite's seq */
        char **meta;            /* key, value, key, value, ... */
        size_t n_meta;
        Op *ops;
        size_t n_ops, size_ops;
        unsigned n_commits, n_attempts;
} StoreMemory;

static char *dup_or_null(const char *s) {
        return s ? strdup(s) : NULL;
}

static void mem_lease_free(MemLease *l) {
        if (!l)
                return;
        free(l->id);
        free(l->secret);
        free(l->resource);
        free(l->description);
        free(l->comm);
        free(l->unit);
        free(l);
}

static void mem_waiter_free(MemWaiter *w) {
        if (!w)
                return;
        free(w->ticket);
        free(w->resource);
        free(w->description);
        free(w->comm);
        free(w->unit);
        free(w);
}

static void mem_event_free(MemEvent *e) {
        if (!e)
                return;
        free(e->type);
        free(e->resource);
        free(e->lease);
        free(e->reason);
        free(e->comm);
        free(e->unit);
        free(e->by_comm);
        free(e->by_unit);
        free(e);
}

static void op_done(Op *o) {
        mem_lease_free(o->lease);
        mem_waiter_free(o->waiter);
        mem_event_free(o->event);
        free(o->id);
        free(o->key);
        free(o->value);
}

static int op_push(StoreMemory *s, Op o) {
        if (s->n_ops == s->size_ops) {
                size_t n = MAX(s->size_ops * 2, (size_t) 16);
                Op *p = realloc(s->ops, n * sizeof(*p));
                if (!p) {
                        op_done(&o);
                        return -ENOMEM;
                }
                s->ops = p;
                s->size_ops = n;
        }
        s->ops[s->n_ops++] = o;
        return 0;
}

static int m_lease_save(Store *store, const LeaseRecord *r) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        MemLease *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->rec = *r;
        l->id = dup_or_null(r->id);
        l->secret = dup_or_null(r->secret);
        l->resource = dup_or_null(r->resource);
        l->description = strdup(strempty(r->description));
        l->comm = dup_or_null(r->owner.comm);
        l->unit = dup_or_null(r->owner.unit);
        if (!l->id || !l->secret || !l->resource || !l->description || (r->owner.comm && !l->comm) ||
            (r->owner.unit && !l->unit)) {
                mem_lease_free(l);
                return -ENOMEM;
        }
        l->rec.id = l->id;
        l->rec.secret = l->secret;
        l->rec.resource = l->resource;
        l->rec.description = l->description;
        l->rec.owner.comm = l->comm;
        l->rec.owner.unit = l->unit;
        return op_push(s, (Op) { .kind = OP_SAVE, .lease = l });
}

static int m_lease_delete(Store *store, const char *id) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        char *d = strdup(id);
        if (!d)
                return -ENOMEM;
        return op_push(s, (Op) { .kind = OP_DELETE, .id = d });
}

static int m_waiter_save(Store *store, const WaiterRecord *r) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        MemWaiter *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->rec = *r;
        w->ticket = dup_or_null(r->ticket);
        w->resource = dup_or_null(r->resource);
        w->description = strdup(strempty(r->description));
        w->comm = dup_or_null(r->owner.comm);
        w->unit = dup_or_null(r->owner.unit);
        if (!w->ticket || !w->resource || !w->description || (r->owner.comm && !w->comm) ||
            (r->owner.unit && !w->unit)) {
                mem_waiter_free(w);
                return -ENOMEM;
        }
        w->rec.ticket = w->ticket;
        w->rec.resource = w->resource;
        w->rec.description = w->description;
        w->rec.owner.comm = w->comm;
        w->rec.owner.unit = w->unit;
        return op_push(s, (Op) { .kind = OP_WAITER_SAVE, .waiter = w });
}

static int m_waiter_delete(Store *store, uint64_t seq) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        return op_push(s, (Op) { .kind = OP_WAITER_DELETE, .seq = seq });
}

static int m_event_append(Store *store, const EventRecord *r) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        if (s->opts.history_size == 0)
                return 0;
        MemEvent *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->rec = *r;
        e->type = dup_or_null(r->type);
        e->resource = dup_or_null(r->resource);
        e->lease = dup_or_null(r->lease);
        e->reason = dup_or_null(r->reason);
        if (r->owner) {
                e->owner = *r->owner;
                e->comm = dup_or_null(r->owner->comm);
                e->unit = dup_or_null(r->owner->unit);
                e->owner.comm = e->comm;
                e->owner.unit = e->unit;
                e->rec.owner = &e->owner;
        }
        if (r->revoked_by) {
                e->by = *r->revoked_by;
                e->by_comm = dup_or_null(r->revoked_by->comm);
                e->by_unit = dup_or_null(r->revoked_by->unit);
                e->by.comm = e->by_comm;
                e->by.unit = e->by_unit;
                e->rec.revoked_by = &e->by;
        }
        e->rec.type = e->type;
        e->rec.resource = e->resource;
        e->rec.lease = e->lease;
        e->rec.reason = e->reason;
        if (!e->type || !e->resource) {
                mem_event_free(e);
                return -ENOMEM;
        }
        return op_push(s, (Op) { .kind = OP_EVENT, .event = e });
}

static int m_token_save(Store *store, uint64_t last_token) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%llu", (unsigned long long) last_token);
        return store->ops->meta_set(store, "last_token", buf);
}

static ssize_t lease_find(StoreMemory *s, const char *id) {
        for (size_t i = 0; i < s->n_leases; i++)
                if ((strcmp(s->leases[i]->id, id) == 0))
                        return (ssize_t) i;
        return -1;
}

/* Where a waiter of seq is, or would go: the waiters stay sorted by seq. */
static size_t waiter_find(StoreMemory *s, uint64_t seq) {
        size_t lo = 0, hi = s->n_waiters;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (s->waiters[mid]->rec.seq < seq)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return lo;
}

static ssize_t meta_find(StoreMemory *s, const char *key) {
        for (size_t i = 0; i < s->n_meta; i += 2)
                if ((strcmp(s->meta[i], key) == 0))
                        return (ssize_t) i;
        return -1;
}

/* Applies one op to the committed state; takes what it keeps out of o. */
static int op_apply(StoreMemory *s, Op *o) {
        switch (o->kind) {
        case OP_SAVE: {
                ssize_t i = lease_find(s, o->lease->id);
                if (i >= 0) {
                        mem_lease_free(s->leases[i]);
                        s->leases[i] = TAKE_PTR(o->lease);
                        return 0;
                }
                if (s->n_leases == s->size_leases) {
                        size_t n = MAX(s->size_leases * 2, (size_t) 16);
                        MemLease **p = realloc(s->leases, n * sizeof(*p));
                        if (!p)
                                return -ENOMEM;
                        s->leases = p;
                        s->size_leases = n;
                }
                s->leases[s->n_leases++] = TAKE_PTR(o->lease);
                return 0;
        }
        case OP_DELETE: {
                ssize_t i = lease_find(s, o->id);
                if (i >= 0) {
                        mem_lease_free(s->leases[i]);
                        s->leases[i] = s->leases[--s->n_leases];
                }
                return 0;
        }
        case OP_WAITER_SAVE: {
                size_t i = waiter_find(s, o->waiter->rec.seq);
                if (i < s->n_waiters && s->waiters[i]->rec.seq == o->waiter->rec.seq) {
                        mem_waiter_free(s->waiters[i]);
                        s->waiters[i] = TAKE_PTR(o->waiter);
                        return 0;
                }
                MemWaiter **p = realloc(s->waiters, (s->n_waiters + 1) * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                s->waiters = p;
                memmove(s->waiters + i + 1, s->waiters + i, (s->n_waiters - i) * sizeof(*p));
                s->waiters[i] = TAKE_PTR(o->waiter);
                s->n_waiters++;
                return 0;
        }
        case OP_WAITER_DELETE: {
                size_t i = waiter_find(s, o->seq);
                if (i < s->n_waiters && s->waiters[i]->rec.seq == o->seq) {
                        mem_waiter_free(s->waiters[i]);
                        memmove(s->waiters + i, s->waiters + i + 1, (s->n_waiters - i - 1) * sizeof(*s->waiters));
                        s->n_waiters--;
                }
                return 0;
        }
        case OP_EVENT: {
                size_t cap = s->opts.history_size;
                size_t slot = (s->events_head + s->n_events) % cap;
                if (s->n_events == cap) {
                        mem_event_free(s->events[s->events_head]);
                        slot = s->events_head;
                        s->events_head = (s->events_head + 1) % cap;
                } else
                        s->n_events++;
                o->event->rec.seq = ++s->last_event_seq;
                s->events[slot] = TAKE_PTR(o->event);
                return 0;
        }
        case OP_META: {
                ssize_t i = meta_find(s, o->key);
                if (i >= 0) {
                        free(s->meta[i + 1]);
                        s->meta[i + 1] = TAKE_PTR(o->value);
                        return 0;
                }
                char **p = realloc(s->meta, (s->n_meta + 2) * sizeof(*p));
                if (!p)
                        return -ENOMEM;
                s->meta = p;
                s->meta[s->n_meta++] = TAKE_PTR(o->key);
                s->meta[s->n_meta++] = TAKE_PTR(o->value);
                return 0;
        }
        }
        return -EINVAL;
}

static void ops_drop(StoreMemory *s) {
        for (size_t i = 0; i < s->n_ops; i++)
                op_done(&s->ops[i]);
        s->n_ops = 0;
}

static int m_commit(Store *store) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        if (s->n_ops == 0)
                return 0;
        if (s->opts.commit_delay > 0) {
                struct timespec ts = {
                        .tv_sec = (time_t) (s->opts.commit_delay / USEC_PER_SEC),
                        .tv_nsec = (long) (s->opts.commit_delay % USEC_PER_SEC) * 1000,
                };
                while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                        ;
        }
        if (s->opts.fail_commit > 0 && ++s->n_attempts == s->opts.fail_commit) {
                ops_drop(s);
                return s->opts.fail_errno < 0 ? s->opts.fail_errno : -EIO;
        }
        int k = 0;
        for (size_t i = 0; i < s->n_ops; i++) {
                int r = op_apply(s, &s->ops[i]);
                if (r < 0 && k == 0)
                        k = r;
        }
        ops_drop(s);
        if (k < 0)
                return k;
        s->n_commits++;
        if (s->opts.on_commit)
                s->opts.on_commit(s->n_commits, s->opts.userdata);
        return 1;
}

static int cmp_token(const void *a, const void *b) {
        const MemLease *x = *(MemLease *const *) a, *y = *(MemLease *const *) b;
        return x->rec.token < y->rec.token ? -1 : x->rec.token > y->rec.token;
}

static int m_load(Store *store, int (*cb)(const LeaseRecord *r, void *userdata), void *userdata) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        if (s->n_leases > 0)    /* qsort(NULL, 0) is undefined behaviour */
                qsort(s->leases, s->n_leases, sizeof(*s->leases), cmp_token);
        for (size_t i = 0; i < s->n_leases; i++) {
                int k = cb(&s->leases[i]->rec, userdata);
                if (k < 0)
                        return k;
        }
        return 0;
}

static int m_load_waiters(Store *store, int (*cb)(const WaiterRecord *r, void *userdata), void *userdata) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        for (size_t i = 0; i < s->n_waiters; i++) {
                int k = cb(&s->waiters[i]->rec, userdata);
                if (k < 0)
                        return k;
        }
        return 0;
}

static int m_meta_get(Store *store, const char *key, char **ret) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        ssize_t i = meta_find(s, key);
        char *v = NULL;
        if (i >= 0 && !(v = strdup(s->meta[i + 1])))
                return -ENOMEM;
        *ret = v;
        return 0;
}

static int m_meta_set(Store *store, const char *key, const char *value) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        char *k = strdup(key), *v = strdup(value);
        if (!k || !v) {
                free(k);
                free(v);
                return -ENOMEM;
        }
        return op_push(s, (Op) { .kind = OP_META, .key = k, .value = v });
}

static int m_history(Store *store, const char *resource, uint64_t before, unsigned limit,
                     int (*cb)(const EventRecord *e, void *userdata), void *userdata) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        size_t cap = s->opts.history_size, n = 0, end = s->n_events;
        /* Skip back past the events numbered before or later (the cursor of a paged History). */
        while (before != 0 && end > 0 && s->events[(s->events_head + end - 1) % cap]->rec.seq >= before)
                end--;
        size_t start = end;
        /* Walk back to find where the last limit matching events start. */
        while (start > 0 && n < limit) {
                start--;
                const MemEvent *e = s->events[(s->events_head + start) % cap];
                if (!resource || (strcmp(e->resource, resource) == 0))
                        n++;
        }
        for (size_t i = start; i < end; i++) {
                const MemEvent *e = s->events[(s->events_head + i) % cap];
                if (resource && !(strcmp(e->resource, resource) == 0))
                        continue;
                int k = cb(&e->rec, userdata);
                if (k < 0)
                        return k;
        }
        return 0;
}

static int64_t m_size(Store *store) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        return (int64_t) (s->n_leases * sizeof(MemLease) + s->n_waiters * sizeof(MemWaiter) +
                          s->n_events * sizeof(MemEvent));
}

static void m_free(Store *store) {
        StoreMemory *s = container_of(store, StoreMemory, store);
        ops_drop(s);
        free(s->ops);
        for (size_t i = 0; i < s->n_leases; i++)
                mem_lease_free(s->leases[i]);
        free(s->leases);
        for (size_t i = 0; i < s->n_waiters; i++)
                mem_waiter_free(s->waiters[i]);
        free(s->waiters);
        for (size_t i = 0; i < s->n_events; i++)
                mem_event_free(s->events[(s->events_head + i) % s->opts.history_size]);
        free(s->events);
        for (size_t i = 0; i < s->n_meta; i++)
                free(s->meta[i]);
        free(s->meta);
        free(s);
}

static const StoreOps memory_ops = {
        .lease_save = m_lease_save,
        .lease_delete = m_lease_delete,
        .event_append = m_event_append,
        .token_save = m_token_save,
        .waiter_save = m_waiter_save,
        .waiter_delete = m_waiter_delete,
        .commit = m_commit,
        .load = m_load,
        .load_waiters = m_load_waiters,
        .meta_get = m_meta_get,
        .meta_set = m_meta_set,
        .history = m_history,
        .size = m_size,
        .free = m_free,
};

int store_memory_new(const StoreMemoryOptions *opts, Store **ret) {
        StoreMemory *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->store.ops = &memory_ops;
        if (opts)
                s->opts = *opts;
        if (s->opts.history_size > 0 && !(s->events = calloc(s->opts.history_size, sizeof(*s->events)))) {
                free(s);
                return -ENOMEM;
        }
        *ret = &s->store;
        return 0;
}

int store_memory_from_spec(const char *spec, Store **ret) {
        StoreMemoryOptions o = { .history_size = 1000 };
        if (!spec || strncmp(spec, "memory", 6) != 0 || (spec[6] != 0 && spec[6] != ','))
                return -EINVAL;
        const char *p = spec + 6;
        while (*p == ',') {
                p++;
                char *end;
                unsigned long long v;
                if (strncmp(p, "fail-commit=", 12) == 0) {
                        v = strtoull(p + 12, &end, 10);
                        o.fail_commit = (unsigned) v;
                } else if (strncmp(p, "fail-errno=", 11) == 0) {
                        v = strtoull(p + 11, &end, 10);
                        o.fail_errno = -(int) v;
                } else if (strncmp(p, "delay-commit=", 13) == 0) {
                        v = strtoull(p + 13, &end, 10);
                        o.commit_delay = v;
                } else if (strncmp(p, "history=", 8) == 0) {
                        v = strtoull(p + 8, &end, 10);
                        o.history_size = (unsigned) v;
                } else
                        return -EINVAL;
                p = end;
        }
        if (*p != 0)
                return -EINVAL;
        return store_memory_new(&o, ret);
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "macro.h"
#include "random-pool.h"
#include "store.h"
#include "string-table.h"

struct Engine {
        EngineClock clock;
        Store *store;
        EngineCallbacks cb;
        void *userdata;

        ObjMap resources;       /* Resource by name */
        ObjMap leases;          /* Lease by id */
        Hashmap strings;        /* the leases' owner names and descriptions, shared: text → Interned */
        ObjMap owners;          /* the leases' owners, shared: SharedOwner by value */
        Hashmap unclaimed;      /* ticket's seq part → restored Waiter whose ticket is due */
        Prioq timers;           /* lease expiries, waiter timeouts, the grace period */
        EngineTimer grace;      /* at the next end of a grace: the leases' or a place's */
        usec_t grace_usec;      /* the grace of this start */
        usec_t leases_grace_end;        /* CLOCK_MONOTONIC: restored leases not reclaimed by then end */

        unsigned n_leases;
        unsigned n_waiters;
        unsigned n_reclaimable;
        uint64_t last_token;
        uint64_t last_waiter_seq;
        bool allow_undeclared;
        RandomPool random;      /* ids, secrets, tickets: one getrandom() per 4 KiB, not per grant */
};

static const char *const event_type_table[_EVENT_TYPE_MAX] = {
        [EVENT_QUEUED] = "queued",       [EVENT_GRANTED] = "granted",     [EVENT_RENEWED] = "renewed",
        [EVENT_RELEASED] = "released",   [EVENT_EXPIRED] = "expired",     [EVENT_REVOKED] = "revoked",
        [EVENT_RECLAIMED] = "reclaimed", [EVENT_VOIDED] = "voided",     [EVENT_DISCONNECTED] = "disconnected",
};

DEFINE_STRING_TABLE_LOOKUP(event_type, EventType)

int owner_copy(Owner *dst, const Owner *src) {
        Owner o = *src;
        o.comm = src->comm ? strdup(src->comm) : NULL;
        o.unit = src->unit ? strdup(src->unit) : NULL;
        if ((src->comm && !o.comm) || (src->unit && !o.unit)) {
                owner_done(&o);
                return -ENOMEM;
        }
        *dst = o;
        return 0;
}

void owner_done(Owner *o) {
        free(o->comm);
        free(o->unit);
        o->comm = o->unit = NULL;
}

/* A million leases from a few programs carry a few distinct command names, units and
 * descriptions: each lease points at one shared, counted copy instead of its own. */
typedef struct Interned {
        unsigned refs;
        char s[];
} Interned;

static char *intern(Engine *e, const char *s) {
        if (!s)
                return NULL;
        Interned *i = hashmap_get(&e->strings, s);
        if (i) {
                i->refs++;
                return i->s;
        }
        size_t n = strlen(s);
        i = malloc(offsetof(Interned, s) + n + 1);
        if (!i)
                return NULL;
        i->refs = 1;
        memcpy(i->s, s, n + 1);
        if (hashmap_put(&e->strings, i->s, i) < 0) {
                free(i);
                return NULL;
        }
        return i->s;
}

static void unintern(Engine *e, char *s) {
        if (!s)
                return;
        Interned *i = container_of(s, Interned, s[0]);
        if (--i->refs > 0)
                return;
        hashmap_remove(&e->strings, i->s);
        free(i);
}

/* Leases of one connection, or of one program, have one owner: they point at one shared,
 * counted record instead of a copy each (24 bytes a lease). */
typedef struct SharedOwner {
        Owner owner;            /* comm and unit interned */
        unsigned refs;
} SharedOwner;

static uint32_t owner_hash(const Owner *o) {
        uint32_t h = objmap_hash_string(strempty(o->comm)) ^ (objmap_hash_string(strempty(o->unit)) * 31u);
        return h ^ (o->uid * 0x9e3779b1u) ^ (o->gid * 0x85ebca6bu) ^ ((uint32_t) o->pid * 0xc2b2ae35u);
}

static bool owner_eq(const void *obj, const void *key) {
        const Owner *a = &((const SharedOwner *) obj)->owner, *b = key;
        return a->uid == b->uid && a->gid == b->gid && a->pid == b->pid && streq_ptr(a->comm, b->comm) &&
                streq_ptr(a->unit, b->unit);
}

static const Owner *owner_intern(Engine *e, const Owner *o) {
        uint32_t h = owner_hash(o);
        SharedOwner *so = objmap_get(&e->owners, h, o);
        if (so) {
                so->refs++;
                return &so->owner;
        }
        so = malloc(sizeof(*so));
        if (!so)
                return NULL;
        *so = (SharedOwner) {
                .owner = { .uid = o->uid, .gid = o->gid, .pid = o->pid, .comm = intern(e, o->comm),
                           .unit = intern(e, o->unit) },
                .refs = 1,
        };
        if ((o->comm && !so->owner.comm) || (o->unit && !so->owner.unit) ||
            objmap_put(&e->owners, h, &so->owner, so) < 0) {
                unintern(e, so->owner.comm);
                unintern(e, so->owner.unit);
                free(so);
                return NULL;
        }
        return &so->owner;
}

static void owner_unintern(Engine *e, const Owner *o) {
        if (!o)
                return;
        SharedOwner *so = container_of(o, SharedOwner, owner);
        if (--so->refs > 0)
                return;
        objmap_remove(&e->owners, owner_hash(o), o);
        unintern(e, so->owner.comm);
        unintern(e, so->owner.unit);
        free(so);
}

static void lease_strings_done(Engine *e, Lease *l) {
        owner_unintern(e, l->owner);
        unintern(e, l->description);
        l->owner = NULL;
        l->description = NULL;
}

/* The owner and description of a lease, shared. */
static int lease_strings_set(Engine *e, Lease *l, const Owner *o, const char *description) {
        l->owner = owner_intern(e, o);
        l->description = intern(e, strempty(description));
        if (!l->owner || !l->description) {
                lease_strings_done(e, l);
                return -ENOMEM;
        }
        return 0;
}

static usec_t sys_monotonic(void *u) {
        return usec_now(CLOCK_MONOTONIC);
}
static usec_t sys_realtime(void *u) {
        return usec_now(CLOCK_REALTIME);
}

static usec_t now_mono(Engine *e) {
        return e->clock.monotonic(e->clock.userdata);
}
static usec_t now_real(Engine *e) {
        return e->clock.realtime(e->clock.userdata);
}

static usec_t usec_add(usec_t a, usec_t b) {
        return a > USEC_INFINITY - b ? USEC_INFINITY : a + b;
}

static void hex(const uint8_t *bytes, size_t n, char *out) {
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[bytes[i] >> 4];
                out[2 * i + 1] = digits[bytes[i] & 15];
        }
        out[2 * n] = 0;
}

static int unhex(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        return -1;      /* upper case too: the text must come back as it was written */
}

/* n bytes from exactly 2n lowercase hex digits. */
static int unhex_bytes(const char *s, uint8_t *out, size_t n) {
        if (!s || strlen(s) != 2 * n)
                return -EINVAL;
        for (size_t i = 0; i < n; i++) {
                int hi = unhex(s[2 * i]), lo = unhex(s[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                out[i] = (uint8_t) (hi << 4 | lo);
        }
        return 0;
}

char *lease_id_to_string(uint64_t id, char buf[static LEASE_ID_LEN + 1]) {
        uint8_t b[LEASE_ID_LEN / 2];
        for (size_t i = 0; i < sizeof(b); i++)
                b[i] = (uint8_t) (id >> (8 * (sizeof(b) - 1 - i)));
        hex(b, sizeof(b), buf);
        return buf;
}

int lease_id_from_string(const char *s, uint64_t *ret) {
        uint8_t b[LEASE_ID_LEN / 2];
        if (unhex_bytes(s, b, sizeof(b)) < 0)
                return -EINVAL;
        uint64_t id = 0;
        for (size_t i = 0; i < sizeof(b); i++)
                id = id << 8 | b[i];
        *ret = id;
        return 0;
}

char *lease_secret_to_string(const Lease *l, char buf[static LEASE_SECRET_LEN + 1]) {
        hex(l->secret, LEASE_SECRET_SIZE, buf);
        return buf;
}

int lease_secret_from_string(const char *s, uint8_t ret[static LEASE_SECRET_SIZE]) {
        return unhex_bytes(s, ret, LEASE_SECRET_SIZE);
}

/* The client's text is decoded (its time depends on that text only), then the bytes are
 * compared in constant time. */
bool lease_secret_eq(const Lease *l, const char *secret) {
        uint8_t b[LEASE_SECRET_SIZE];
        if (lease_secret_from_string(secret, b) < 0)
                return false;
        unsigned char d = 0;
        for (size_t i = 0; i < LEASE_SECRET_SIZE; i++)
                d |= b[i] ^ l->secret[i];
        return d == 0;
}

/* A lease id and its secret from the engine's random pool: it is on the grant path. */
static int random_id_secret(Engine *e, uint64_t *id, uint8_t secret[static LEASE_SECRET_SIZE]) {
        uint8_t bytes[sizeof(uint64_t) + LEASE_SECRET_SIZE];
        int k = random_pool_get(&e->random, bytes, sizeof(bytes));
        if (k < 0)
                return k;
        memcpy(id, bytes, sizeof(*id));
        memcpy(secret, bytes + sizeof(*id), LEASE_SECRET_SIZE);
        explicit_bzero(bytes, sizeof(bytes));
        return 0;
}

/* A waiter's ticket: its sequence number and 128 random bits. */
static int waiter_make_ticket(Engine *e, Waiter *w) {
        uint8_t bytes[LEASE_SECRET_LEN / 2];
        int k = random_pool_get(&e->random, bytes, sizeof(bytes));
        if (k < 0)
                return k;
        snprintf(w->seq_key, sizeof(w->seq_key), "%016" PRIx64, w->seq);
        memcpy(w->ticket, w->seq_key, WAITER_SEQ_LEN);
        hex(bytes, sizeof(bytes), w->ticket + WAITER_SEQ_LEN);
        return 0;
}

/* Constant time, so that a ticket cannot be guessed byte by byte from reply timing. */
static bool ticket_eq(const char *a, const char *b) {
        if (strlen(a) != WAITER_TICKET_LEN || strlen(b) != WAITER_TICKET_LEN)
                return false;
        unsigned char d = 0;
        for (size_t i = 0; i < WAITER_TICKET_LEN; i++)
                d |= (unsigned char) a[i] ^ (unsigned char) b[i];
        return d == 0;
}

static bool resource_eq(const void *obj, const void *key) {
        return strcmp(((const Resource *) obj)->name, key) == 0;
}

static bool lease_eq(const void *obj, const void *key) {
        return ((const Lease *) obj)->id == *(const uint64_t *) key;
}

/* Ids are random bits (or restored ones the engine made): their own hash. */
static uint32_t lease_hash(uint64_t id) {
        return (uint32_t) (id ^ (id >> 32));
}

static Resource *resource_lookup(Engine *e, const char *name) {
        return objmap_get(&e->resources, objmap_hash_string(name), name);
}

static Lease *lease_lookup(Engine *e, uint64_t id) {
        return objmap_get(&e->leases, lease_hash(id), &id);
}

int engine_new(const EngineClock *clock, Store *store, const EngineCallbacks *cb, void *userdata,
               Engine **ret) {
        Engine *e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->clock = clock ? *clock : (EngineClock) { .monotonic = sys_monotonic, .realtime = sys_realtime };
        e->store = store;
        e->cb = *cb;
        e->userdata = userdata;
        e->allow_undeclared = true;
        random_pool_init(&e->random, NULL);
        objmap_init(&e->resources, resource_eq);
        objmap_init(&e->leases, lease_eq);
        objmap_init(&e->owners, owner_eq);
        hashmap_init(&e->strings);
        hashmap_init(&e->unclaimed);
        prioq_item_init(&e->grace.pq);
        e->grace.pq.tag = TIMER_GRACE;
        *ret = e;
        return 0;
}

static OwnerRecord owner_record(const Owner *o) {
        return (OwnerRecord) { .uid = o->uid, .gid = o->gid, .pid = o->pid, .comm = o->comm, .unit = o->unit };
}

void engine_event_append_to(Store *st, const Event *ev) {
        OwnerRecord o, by;
        if (ev->owner)
                o = owner_record(ev->owner);
        if (ev->revoked_by)
                by = owner_record(ev->revoked_by);
        EventRecord r = {
                .type = event_type_to_string(ev->type),
                .time = ev->time,
                .resource = ev->resource,
                .lease = ev->lease,
                .token = ev->token,
                .owner = ev->owner ? &o : NULL,
                .units = ev->units,
                .reason = ev->reason,
                .revoked_by = ev->revoked_by ? &by : NULL,
        };
        if (st && st->ops->event_append)
                (void) st->ops->event_append(st, &r);
}

static void store_event_append(Engine *e, const Event *ev) {
        engine_event_append_to(e->store, ev);
}

static void store_lease_save(Engine *e, const Lease *l) {
        char secret[LEASE_SECRET_LEN + 1];
        LeaseRecord r = {
                .id = LEASE_ID_STR(l),
                .secret = lease_secret_to_string(l, secret),
                .resource = l->resource->name,
                .description = l->description,
                .units = l->units,
                .exclusive = l->exclusive,
                .detached = l->detached,
                .token = l->token,
                .owner = owner_record(l->owner),
                .created = l->created,
                .ttl = l->ttl,
                .deadline = lease_deadline(l),
        };
        (void) e->store->ops->lease_save(e->store, &r);
        explicit_bzero(secret, sizeof(secret));
}

static void store_waiter_save(Engine *e, const Waiter *w) {
        WaiterRecord r = {
                .ticket = w->ticket,
                .seq = w->seq,
                .resource = w->resource->name,
                .description = w->description,
                .units = w->units,
                .exclusive = w->exclusive,
                .owner = owner_record(&w->owner),
                .since = w->since,
                .unclaimed_since = w->unclaimed ? w->unclaimed_since : 0,
        };
        (void) e->store->ops->waiter_save(e->store, &r);
}

static void emit_by(Engine *e, EventType type, Resource *r, Lease *l, const Owner *owner, unsigned units,
                    const char *reason, const Owner *by) {
        char id[LEASE_ID_LEN + 1];
        Event ev = {
                .type = type,
                .time = now_real(e),
                .resource = r->name,
                .lease = l ? lease_id_to_string(l->id, id) : NULL,
                .token = l ? l->token : 0,
                .owner = owner,
                .units = units,
                .reason = reason,
                .revoked_by = by,
        };
        if (e->store)
                store_event_append(e, &ev);
        if (e->cb.event)
                e->cb.event(e, &ev, l, e->userdata);
}

static void emit(Engine *e, EventType type, Resource *r, Lease *l, const Owner *owner, unsigned units,
                 const char *reason) {
        emit_by(e, type, r, l, owner, units, reason, NULL);
}

static void resource_access_free(ResourceAccess *a) {
        if (!a)
                return;
        free(a->allow_uids);
        free(a->allow_gids);
        free(a);
}

static void resource_free(Resource *r) {
        if (!r)
                return;
        resource_access_free(r->access);
        free(r);
}

/* Undeclared resources exist only while used, so a client cannot grow the daemon's
 * memory with names alone. */
static void resource_maybe_drop(Engine *e, Resource *r) {
        if (r->declared || r->n_leases > 0 || r->n_waiters > 0)
                return;
        objmap_remove(&e->resources, objmap_hash_string(r->name), r->name);
        resource_free(r);
}

static int resource_get(Engine *e, const char *name, bool create, Resource **ret) {
        Resource *r = resource_lookup(e, name);
        if (r) {
                *ret = r;
                return 0;
        }
        if (!create)
                return -ENXIO;
        /* The name lives in the same allocation: one malloc less per resource. */
        size_t n = strlen(name);
        r = calloc(1, sizeof(*r) + n + 1);
        if (!r)
                return -ENOMEM;
        r->name = memcpy((char *) (r + 1), name, n + 1);
        r->capacity = 1;
        if (objmap_put(&e->resources, objmap_hash_string(r->name), r->name, r) < 0) {
                resource_free(r);
                return -ENOMEM;
        }
        *ret = r;
        return 0;
}

static void timer_set(Engine *e, EngineTimer *t, usec_t when) {
        if (when == USEC_INFINITY) {
                prioq_remove(&e->timers, &t->pq);
                t->pq.when = USEC_INFINITY;
                return;
        }
        t->pq.when = when;
        if (prioq_item_queued(&t->pq))
                prioq_reshuffle(&e->timers, &t->pq);
        else
                /* Out of memory: the deadline stays in t->pq.when (a lease's deadline) and
                 * is queued again by the next renew; rather than fail the grant, the lease
                 * lives longer. */
                (void) prioq_put(&e->timers, &t->pq);
}

static void holder_link(Lease *l, Holder *h) {
        l->holder = h;
        if (!h)
                return;
        LIST_PREPEND(holder, h->leases, l);
        h->n_leases++;
}

static void holder_unlink(Lease *l) {
        Holder *h = l->holder;
        if (!h)
                return;
        LIST_REMOVE(holder, h->leases, l);
        l->holder = NULL;
        h->n_leases--;
}

static void lease_free(Engine *e, Lease *l) {
        Resource *r = l->resource;
        holder_unlink(l);
        LIST_REMOVE(res, r->leases, l);
        r->n_leases--;
        r->used -= l->units;
        if (l->state == LEASE_RECLAIMABLE)
                e->n_reclaimable--;
        prioq_remove(&e->timers, &l->expiry.pq);
        objmap_remove(&e->leases, lease_hash(l->id), &l->id);
        e->n_leases--;
        lease_strings_done(e, l);
        free(l);
}

/* Links a lease built by the caller into its resource and the maps. */
static int lease_attach(Engine *e, Lease *l, Resource *r, usec_t deadline) {
        l->resource = r;
        prioq_item_init(&l->expiry.pq);
        l->expiry.pq.tag = TIMER_LEASE_EXPIRY;
        if (objmap_put(&e->leases, lease_hash(l->id), &l->id, l) < 0)
                return -ENOMEM;
        LIST_PREPEND(res, r->leases, l);
        r->n_leases++;
        r->used += l->units;
        e->n_leases++;
        if (deadline != USEC_INFINITY)
                timer_set(e, &l->expiry, deadline);
        return 0;
}

static int lease_create(Engine *e, Resource *r, unsigned units, bool exclusive, bool detached, usec_t ttl,
                        const Owner *owner, const char *description, Holder *holder, Lease **ret) {
        Lease *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        int k = random_id_secret(e, &l->id, l->secret);
        if (k < 0) {
                free(l);
                return k;
        }
        if (lease_lookup(e, l->id)) {   /* 64 random bits: practically never */
                free(l);
                return -EAGAIN;
        }
        if (lease_strings_set(e, l, owner, description) < 0) {
                free(l);
                return -ENOMEM;
        }
        l->units = units;
        l->exclusive = exclusive;
        l->detached = detached;
        l->state = LEASE_HELD;
        l->token = ++e->last_token;
        l->created = now_real(e);
        l->ttl = ttl;
        if (lease_attach(e, l, r, ttl > 0 ? usec_add(now_mono(e), ttl) : USEC_INFINITY) < 0) {
                lease_strings_done(e, l);
                free(l);
                return -ENOMEM;
        }
        holder_link(l, holder);
        if (e->store) {
                (void) e->store->ops->token_save(e->store, e->last_token);
                store_lease_save(e, l);
        }
        emit(e, EVENT_GRANTED, r, l, l->owner, l->units, NULL);
        *ret = l;
        return 0;
}

static unsigned waiter_need(const Waiter *w) {
        return w->exclusive ? w->resource->capacity : w->units;
}

static bool fits(const Resource *r, unsigned need) {
        return need <= r->capacity && r->used + need <= r->capacity;
}

static void waiter_unlink(Engine *e, Waiter *w) {
        Resource *r = w->resource;
        if (w->prev)
                w->prev->next = w->next;
        else
                r->wait_head = w->next;
        if (w->next)
                w->next->prev = w->prev;
        else
                r->wait_tail = w->prev;
        w->prev = w->next = NULL;
        r->n_waiters--;
        e->n_waiters--;
        prioq_remove(&e->timers, &w->timeout.pq);
        if (w->unclaimed) {
                hashmap_remove(&e->unclaimed, w->seq_key);
                w->unclaimed = false;
        }
        if (e->store)
                (void) e->store->ops->waiter_delete(e->store, w->seq);
}

static void waiter_append(Engine *e, Resource *r, Waiter *w) {
        w->prev = r->wait_tail;
        if (r->wait_tail)
                r->wait_tail->next = w;
        else
                r->wait_head = w;
        r->wait_tail = w;
        r->n_waiters++;
        e->n_waiters++;
        w->position = r->n_waiters;
}

/* The grace timer runs while a restored lease or a restored waiter is unclaimed. */
static void grace_maybe_stop(Engine *e) {
        if (e->n_reclaimable == 0 && e->unclaimed.size == 0)
                timer_set(e, &e->grace, USEC_INFINITY);
}

static void waiter_free(Waiter *w) {
        owner_done(&w->owner);
        free(w->description);
        free(w);
}

static void renumber(Engine *e, Resource *r) {
        unsigned pos = 1;
        for (Waiter *w = r->wait_head; w; w = w->next, pos++)
                if (w->position != pos) {
                        w->position = pos;
                        /* An unclaimed place (restored, its waiter not back) has nobody to tell. */
                        if (e->cb.moved && !w->unclaimed)
                                e->cb.moved(e, w, e->userdata);
                }
}

/* Grants from the head of the queue while the head fits. The head is never overtaken:
 * a large request waits at the front until enough units are free, and smaller later
 * ones wait behind it (no starvation). */
static void dispatch(Engine *e, Resource *r) {
        bool moved = false;
        /* An unclaimed head (restored after a restart, its waiter not back yet) keeps its
         * place until the grace period ends: nobody behind it goes first. */
        while (r->wait_head && !r->wait_head->unclaimed && fits(r, waiter_need(r->wait_head))) {
                Waiter *w = r->wait_head;
                Lease *l;
                if (lease_create(e, r, waiter_need(w), w->exclusive, w->detached, w->ttl, &w->owner,
                                 w->description, w->holder, &l) < 0)
                        break;  /* retried at the next release */
                waiter_unlink(e, w);
                moved = true;
                if (e->cb.granted)
                        e->cb.granted(e, w, l, e->userdata);
                waiter_free(w);
        }
        if (moved)
                renumber(e, r);
}

int engine_configure(Engine *e, const ResourceDecl *decls, size_t n_decls, bool allow_undeclared) {
        e->allow_undeclared = allow_undeclared;

        /* Forget old declarations first, then apply the new ones. */
        ObjMapIter i = {};
        Resource *r;
        while (objmap_iterate(&e->resources, &i, (void **) &r)) {
                r->declared = false;
                r->restricted = false;
                resource_access_free(TAKE_PTR(r->access));
        }
        for (size_t k = 0; k < n_decls; k++) {
                const ResourceDecl *d = &decls[k];
                int q = resource_get(e, d->name, true, &r);
                if (q < 0)
                        return q;
                r->declared = true;
                r->capacity = MAX(d->capacity, 1u);
                r->restricted = d->restricted;
                if (d->n_allow_uids == 0 && d->n_allow_gids == 0)
                        continue;
                ResourceAccess *a = r->access = calloc(1, sizeof(*a));
                if (!a)
                        return -ENOMEM;
                if (d->n_allow_uids > 0) {
                        a->allow_uids = malloc(d->n_allow_uids * sizeof(uid_t));
                        if (!a->allow_uids)
                                return -ENOMEM;
                        memcpy(a->allow_uids, d->allow_uids, d->n_allow_uids * sizeof(uid_t));
                        a->n_allow_uids = d->n_allow_uids;
                }
                if (d->n_allow_gids > 0) {
                        a->allow_gids = malloc(d->n_allow_gids * sizeof(gid_t));
                        if (!a->allow_gids)
                                return -ENOMEM;
                        memcpy(a->allow_gids, d->allow_gids, d->n_allow_gids * sizeof(gid_t));
                        a->n_allow_gids = d->n_allow_gids;
                }
        }
        /* Capacities may have grown; names no longer declared and unused go away. */
        i = (ObjMapIter) {};
        while (objmap_iterate(&e->resources, &i, (void **) &r)) {
                if (!r->declared)
                        r->capacity = MAX(r->capacity, 1u);
                dispatch(e, r);
                resource_maybe_drop(e, r);
        }
        return 0;
}

/* A restored waiter's ticket was presented: the request takes its place (and its since). */
static int waiter_claim(Engine *e, Waiter *w, const AcquireParams *p, unsigned units, Holder *holder,
                        void *userdata, Lease **ret_lease, Waiter **ret_waiter) {
        Resource *r = w->resource;
        Owner owner;
        char *description = strdup(strempty(p->description));
        if (!description || owner_copy(&owner, p->owner) < 0) {
                free(description);
                return -ENOMEM;
        }
        owner_done(&w->owner);
        free(w->description);
        w->owner = owner;
        w->description = description;
        w->units = units;
        w->exclusive = p->exclusive;
        w->detached = p->detached;
        w->ttl = p->ttl;
        w->holder = holder;
        w->userdata = userdata;
        hashmap_remove(&e->unclaimed, w->seq_key);
        w->unclaimed = false;
        w->unclaimed_since = 0;
        grace_maybe_stop(e);
        if (e->store)
                store_waiter_save(e, w);

        if (r->wait_head == w && fits(r, waiter_need(w))) {
                Lease *l;
                int k = lease_create(e, r, waiter_need(w), w->exclusive, w->detached, w->ttl, &w->owner,
                                     w->description, holder, &l);
                if (k >= 0) {
                        waiter_unlink(e, w);
                        waiter_free(w);
                        dispatch(e, r);
                        renumber(e, r);
                        *ret_lease = l;
                        return 0;
                }
                /* Could not grant now: it waits at the head and is retried at the next release. */
        }
        if (p->timeout != USEC_INFINITY)
                timer_set(e, &w->timeout, usec_add(now_mono(e), p->timeout));
        *ret_waiter = w;
        return 1;
}

int engine_acquire(Engine *e, const AcquireParams *p, Holder *holder, void *userdata, Lease **ret_lease,
                   Waiter **ret_waiter) {
        Resource *r;
        int k = resource_get(e, p->resource, e->allow_undeclared, &r);
        if (k < 0)
                return k;

        unsigned units = p->exclusive ? r->capacity : MAX(p->units, 1u);
        if (units > r->capacity) {
                resource_maybe_drop(e, r);
                return -EINVAL;
        }

        if (!r->wait_head && fits(r, units)) {
                Lease *l;
                k = lease_create(e, r, units, p->exclusive, p->detached, p->ttl, p->owner, p->description,
                                 holder, &l);
                if (k < 0) {
                        resource_maybe_drop(e, r);
                        return k;
                }
                *ret_lease = l;
                return 0;
        }
        if (p->try_once) {
                resource_maybe_drop(e, r);
                return -ETIMEDOUT;
        }

        if (p->ticket && strlen(p->ticket) == WAITER_TICKET_LEN) {
                char key[WAITER_SEQ_LEN + 1];
                snprintf(key, sizeof(key), "%.*s", WAITER_SEQ_LEN, p->ticket);
                Waiter *w = hashmap_get(&e->unclaimed, key);
                if (w && w->resource == r && ticket_eq(w->ticket, p->ticket))
                        return waiter_claim(e, w, p, units, holder, userdata, ret_lease, ret_waiter);
        }

        Waiter *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        w->description = strdup(strempty(p->description));
        if (!w->description || owner_copy(&w->owner, p->owner) < 0) {
                free(w->description);
                free(w);
                resource_maybe_drop(e, r);
                return -ENOMEM;
        }
        w->resource = r;
        w->units = units;
        w->exclusive = p->exclusive;
        w->detached = p->detached;
        w->ttl = p->ttl;
        w->since = now_real(e);
        w->holder = holder;
        w->userdata = userdata;
        w->seq = e->last_waiter_seq + 1;
        k = waiter_make_ticket(e, w);
        if (k < 0) {
                waiter_free(w);
                resource_maybe_drop(e, r);
                return k;
        }
        e->last_waiter_seq = w->seq;
        prioq_item_init(&w->timeout.pq);
        w->timeout.pq.tag = TIMER_WAITER_TIMEOUT;
        waiter_append(e, r, w);
        if (e->store)
                store_waiter_save(e, w);
        if (p->timeout != USEC_INFINITY)
                timer_set(e, &w->timeout, usec_add(now_mono(e), p->timeout));
        emit(e, EVENT_QUEUED, r, NULL, &w->owner, units, NULL);
        *ret_waiter = w;
        return 1;
}

void engine_waiter_cancel(Engine *e, Waiter *w) {
        Resource *r = w->resource;
        waiter_unlink(e, w);
        waiter_free(w);
        /* The head may have been a large request that held smaller ones back. */
        dispatch(e, r);
        renumber(e, r);
        resource_maybe_drop(e, r);
}

static int lease_end(Engine *e, Lease *l, EventType type, const char *reason, const Owner *by) {
        Resource *r = l->resource;
        emit_by(e, type, r, l, l->owner, l->units, reason, by);
        if (e->store)
                (void) e->store->ops->lease_delete(e->store, LEASE_ID_STR(l));
        lease_free(e, l);
        grace_maybe_stop(e);
        dispatch(e, r);
        resource_maybe_drop(e, r);
        return 0;
}

int engine_lease_end(Engine *e, Lease *l, EventType type, const char *reason) {
        return lease_end(e, l, type, reason, NULL);
}

int engine_lease_revoke(Engine *e, Lease *l, const char *reason, const Owner *by) {
        return lease_end(e, l, EVENT_REVOKED, reason, by);
}

int engine_lease_renew(Engine *e, Lease *l, usec_t ttl) {
        if (ttl == 0 && l->ttl == 0)
                return -EINVAL;
        if (ttl > 0)
                l->ttl = ttl;
        timer_set(e, &l->expiry, usec_add(now_mono(e), l->ttl));
        if (e->store)
                store_lease_save(e, l);
        emit(e, EVENT_RENEWED, l->resource, l, l->owner, l->units, NULL);
        return 0;
}

int engine_lease_reclaim(Engine *e, Lease *l, Holder *holder) {
        if (l->state == LEASE_HELD) {
                if (l->holder == holder)
                        return 0;
                if (!l->detached || l->holder)
                        return -EPERM;  /* bound to another live connection */
                holder_link(l, holder);
                return 0;
        }
        l->state = LEASE_HELD;
        e->n_reclaimable--;
        holder_link(l, holder);
        grace_maybe_stop(e);
        emit(e, EVENT_RECLAIMED, l->resource, l, l->owner, l->units, NULL);
        return 0;
}

void engine_holder_gone(Engine *e, Holder *h) {
        while (h->leases) {
                Lease *l = h->leases;
                if (l->detached)
                        holder_unlink(l);
                else
                        engine_lease_end(e, l, EVENT_RELEASED, "connection closed");
        }
}

Lease *engine_lease_get(Engine *e, const char *id) {
        uint64_t k;
        if (lease_id_from_string(id, &k) < 0)
                return NULL;
        return lease_lookup(e, k);
}

Resource *engine_resource_get(Engine *e, const char *name) {
        return resource_lookup(e, name);
}

bool engine_token_current(Engine *e, const char *resource, uint64_t token) {
        Resource *r = resource ? resource_lookup(e, resource) : NULL;
        if (!r || token == 0)
                return false;
        LIST_FOREACH(res, l, r->leases)
                if (l->token == token)
                        return true;
        return false;
}

const ObjMap *engine_resources(Engine *e) {
        return &e->resources;
}

unsigned engine_n_leases(Engine *e) {
        return e->n_leases;
}

unsigned engine_n_waiters(Engine *e) {
        return e->n_waiters;
}

unsigned engine_n_unclaimed(Engine *e) {
        return (unsigned) e->unclaimed.size;
}

uint64_t engine_last_token(Engine *e) {
        return e->last_token;
}

bool engine_in_grace(Engine *e) {
        return e->n_reclaimable > 0 || e->unclaimed.size > 0;
}

usec_t engine_next_deadline(Engine *e) {
        PrioqItem *i = prioq_peek(&e->timers);
        return i ? i->when : USEC_INFINITY;
}

usec_t engine_now(Engine *e) {
        return now_mono(e);
}

/* Ends every lease matching state (all of them if all), collected first because ending
 * one changes the map. */
static void end_leases(Engine *e, bool all, EventType type, const char *reason) {
        size_t n = 0, k = 0;
        Lease **v = malloc(MAX(e->n_leases, 1u) * sizeof(Lease *));
        if (!v)
                return;
        ObjMapIter i = {};
        Lease *l;
        while (objmap_iterate(&e->leases, &i, (void **) &l))
                if (all || l->state == LEASE_RECLAIMABLE)
                        v[n++] = l;
        for (k = 0; k < n; k++)
                engine_lease_end(e, v[k], type, reason);
        free(v);
}

/* Restored waiters whose ticket was not presented in time (whose grace ended by now;
 * USEC_INFINITY: all) leave the queue; those behind them move up, and what now fits is
 * granted. */
static void drop_unclaimed(Engine *e, usec_t now) {
        ObjMapIter i = {};
        Resource *r;
        while (e->unclaimed.size > 0 && objmap_iterate(&e->resources, &i, (void **) &r)) {
                bool dropped = false;
                for (Waiter *w = r->wait_head, *n; w; w = n) {
                        n = w->next;
                        if (!w->unclaimed ||
                            (now != USEC_INFINITY && usec_add(w->unclaimed_since, e->grace_usec) > now))
                                continue;
                        waiter_unlink(e, w);
                        waiter_free(w);
                        dropped = true;
                }
                if (dropped) {
                        dispatch(e, r);
                        renumber(e, r);
                        resource_maybe_drop(e, r);
                }
        }
}

static void end_unreclaimed(Engine *e) {
        drop_unclaimed(e, USEC_INFINITY);
        end_leases(e, false, EVENT_RELEASED, "not reclaimed within the grace period");
        grace_maybe_stop(e);
}

/* The grace timer at the earliest end still ahead: the restored leases' (one for all, from
 * this start) or a restored place's (from the restart that first restored it). */
static void grace_arm(Engine *e) {
        usec_t next = e->n_reclaimable > 0 ? e->leases_grace_end : USEC_INFINITY;
        HashmapIter i = {};
        Waiter *w;
        while (hashmap_iterate(&e->unclaimed, &i, (void **) &w))
                next = MIN(next, usec_add(w->unclaimed_since, e->grace_usec));
        timer_set(e, &e->grace, next);
}

/* Ends what is due of the grace, then waits for the rest. */
static void grace_expire(Engine *e) {
        usec_t now = now_mono(e);
        drop_unclaimed(e, now);
        if (e->n_reclaimable > 0 && e->leases_grace_end <= now)
                end_leases(e, false, EVENT_RELEASED, "not reclaimed within the grace period");
        grace_arm(e);
}

void engine_run_timers(Engine *e) {
        (void) engine_run_timers_max(e, 0);
}

unsigned engine_run_timers_max(Engine *e, unsigned max) {
        usec_t now = now_mono(e);
        PrioqItem *top;
        unsigned n = 0;
        while ((max == 0 || n < max) && (top = prioq_peek(&e->timers)) && top->when <= now) {
                n++;
                EngineTimer *t = container_of(top, EngineTimer, pq);
                prioq_remove(&e->timers, top);
                switch ((TimerKind) t->pq.tag) {
                case TIMER_LEASE_EXPIRY: {
                        Lease *l = container_of(t, Lease, expiry);
                        engine_lease_end(e, l, EVENT_EXPIRED, "TTL passed without renewal");
                        break;
                }
                case TIMER_WAITER_TIMEOUT: {
                        Waiter *w = container_of(t, Waiter, timeout);
                        Resource *r = w->resource;
                        waiter_unlink(e, w);
                        if (e->cb.timed_out)
                                e->cb.timed_out(e, w, e->userdata);
                        waiter_free(w);
                        dispatch(e, r);
                        renumber(e, r);
                        resource_maybe_drop(e, r);
                        break;
                }
                case TIMER_GRACE:
                        grace_expire(e);
                        break;
                }
        }
        return n;
}

typedef struct RestoreState {
        Engine *engine;
        bool same_boot;
        int error;
        unsigned n;
} RestoreState;

static Owner owner_from_record(const OwnerRecord *r) {
        return (Owner) { .uid = r->uid, .gid = r->gid, .pid = r->pid, .comm = (char *) r->comm, .unit = (char *) r->unit };
}

/* A stored waiter comes back as an unclaimed place at the tail (they load in seq order). */
static int restore_waiter(const WaiterRecord *rec, void *userdata) {
        RestoreState *s = userdata;
        Engine *e = s->engine;
        if (!rec->ticket || !rec->resource || rec->units == 0 || strlen(rec->ticket) != WAITER_TICKET_LEN)
                return -EBADMSG;
        Resource *r;
        int k = resource_get(e, rec->resource, true, &r);
        if (k < 0)
                return k;
        Waiter *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        const Owner o = owner_from_record(&rec->owner);
        w->description = strdup(strempty(rec->description));
        if (!w->description || owner_copy(&w->owner, &o) < 0) {
                free(w->description);
                free(w);
                return -ENOMEM;
        }
        w->resource = r;
        w->units = rec->units;
        w->exclusive = rec->exclusive;
        w->since = rec->since;
        w->unclaimed_since = rec->unclaimed_since;
        w->seq = rec->seq;
        snprintf(w->ticket, sizeof(w->ticket), "%s", rec->ticket);
        snprintf(w->seq_key, sizeof(w->seq_key), "%.*s", WAITER_SEQ_LEN, rec->ticket);
        w->unclaimed = true;
        prioq_item_init(&w->timeout.pq);
        w->timeout.pq.tag = TIMER_WAITER_TIMEOUT;
        if (hashmap_put(&e->unclaimed, w->seq_key, w) < 0) {
                waiter_free(w);
                return -ENOMEM;
        }
        waiter_append(e, r, w);
        e->last_waiter_seq = MAX(e->last_waiter_seq, w->seq);
        return 0;
}

static int restore_one(const LeaseRecord *rec, void *userdata) {
        RestoreState *s = userdata;
        Engine *e = s->engine;
        uint64_t id;
        uint8_t secret[LEASE_SECRET_SIZE];
        if (!rec->resource || rec->units == 0 || lease_id_from_string(rec->id, &id) < 0 ||
            lease_secret_from_string(rec->secret, secret) < 0)
                return -EBADMSG;
        Resource *r;
        int k = resource_get(e, rec->resource, true, &r);
        if (k < 0)
                return k;
        Lease *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->id = id;
        memcpy(l->secret, secret, sizeof(secret));
        explicit_bzero(secret, sizeof(secret));
        const Owner o = owner_from_record(&rec->owner);
        if (lease_strings_set(e, l, &o, rec->description) < 0) {
                free(l);
                return -ENOMEM;
        }
        l->units = rec->units;
        l->exclusive = rec->exclusive;
        l->detached = rec->detached;
        l->token = rec->token;
        l->created = rec->created;
        l->ttl = rec->ttl;
        l->state = rec->detached ? LEASE_HELD : LEASE_RECLAIMABLE;
        if (l->state == LEASE_RECLAIMABLE)
                e->n_reclaimable++;
        e->last_token = MAX(e->last_token, l->token);
        /* A monotonic deadline means nothing on another boot; those leases are voided. */
        k = lease_attach(e, l, r, s->same_boot ? rec->deadline : USEC_INFINITY);
        if (k < 0) {
                if (l->state == LEASE_RECLAIMABLE)
                        e->n_reclaimable--;
                lease_strings_done(e, l);
                free(l);
                return k;
        }
        s->n++;
        return 0;
}

int engine_restore(Engine *e, const char *boot_id, usec_t grace) {
        if (!e->store)
                return 0;

        _cleanup_free_ char *old_boot = NULL, *token = NULL;
        int k = e->store->ops->meta_get(e->store, "boot_id", &old_boot);
        if (k < 0)
                return k;
        k = e->store->ops->meta_get(e->store, "last_token", &token);
        if (k < 0)
                return k;
        if (token)
                e->last_token = MAX(e->last_token, strtoull(token, NULL, 10));

        RestoreState s = {
                .engine = e,
                .same_boot = !old_boot || !boot_id || strcmp(old_boot, boot_id) == 0,
        };
        k = e->store->ops->load(e->store, restore_one, &s);
        if (k < 0)
                return k;
        k = e->store->ops->load_waiters(e->store, restore_waiter, &s);
        if (k < 0)
                return k;

        if (!s.same_boot) {
                /* Their processes are gone with the old boot. */
                drop_unclaimed(e, USEC_INFINITY);
                end_leases(e, true, EVENT_VOIDED, "the system rebooted since the lease was granted");
        } else if (e->n_reclaimable > 0 || e->unclaimed.size > 0) {
                if (grace == 0)
                        end_unreclaimed(e);
                else {
                        usec_t now = now_mono(e);
                        e->grace_usec = grace;
                        e->leases_grace_end = usec_add(now, grace);
                        /* A place restored for the first time starts its grace now, and
                         * keeps that start across the restarts that follow: restarts
                         * quicker than the grace must not hold a queue forever. Written
                         * after the load, not while its rows are being read. */
                        HashmapIter i = {};
                        Waiter *w;
                        while (hashmap_iterate(&e->unclaimed, &i, (void **) &w))
                                if (w->unclaimed_since == 0 || w->unclaimed_since > now) {
                                        w->unclaimed_since = now;
                                        store_waiter_save(e, w);
                                }
                        grace_expire(e);
                }
        }
        /* Written only when it changed: a restart that changes nothing writes nothing,
         * which lets it restore and serve even on a disk that is full to the last block. */
        if (boot_id && (!old_boot || strcmp(old_boot, boot_id) != 0))
                (void) e->store->ops->meta_set(e->store, "boot_id", boot_id);
        return (int) s.n;
}

typedef struct HistoryState {
        int (*cb)(const Event *e, void *userdata);
        void *userdata;
} HistoryState;

static int history_one(const EventRecord *r, void *userdata) {
        HistoryState *s = userdata;
        Owner o, by;
        if (r->owner)
                o = owner_from_record(r->owner);
        if (r->revoked_by)
                by = owner_from_record(r->revoked_by);
        Event ev = {
                .type = event_type_from_string(r->type),
                .time = r->time,
                .resource = r->resource,
                .lease = r->lease,
                .token = r->token,
                .owner = r->owner ? &o : NULL,
                .units = r->units,
                .reason = r->reason,
                .revoked_by = r->revoked_by ? &by : NULL,
                .seq = r->seq,
        };
        if (ev.type < 0 || !ev.resource)
                return 0;
        return s->cb(&ev, s->userdata);
}

int engine_history(Engine *e, const char *resource, uint64_t before, unsigned limit,
                   int (*cb)(const Event *ev, void *userdata), void *userdata) {
        if (!e->store)
                return 0;
        HistoryState s = { .cb = cb, .userdata = userdata };
        return e->store->ops->history(e->store, resource, before, limit, history_one, &s);
}

Engine *engine_free(Engine *e) {
        if (!e)
                return NULL;
        Lease *l;
        Resource *r;
        ObjMapIter oi = {};
        /* The heap points into leases and waiters: empty it before they go. */
        prioq_done(&e->timers);
        while (objmap_iterate(&e->leases, &oi, (void **) &l))
                free(l);
        Interned *str;
        HashmapIter i = {};
        while (hashmap_iterate(&e->strings, &i, (void **) &str))
                free(str);
        hashmap_done(&e->strings);
        oi = (ObjMapIter) {};
        while (objmap_iterate(&e->resources, &oi, (void **) &r)) {
                for (Waiter *w = r->wait_head, *n; w; w = n) {
                        n = w->next;
                        waiter_free(w);
                }
                resource_free(r);
        }
        objmap_done(&e->leases);
        SharedOwner *so;
        oi = (ObjMapIter) {};
        while (objmap_iterate(&e->owners, &oi, (void **) &so))
                free(so);
        objmap_done(&e->owners);
        hashmap_done(&e->unclaimed);
        objmap_done(&e->resources);
        random_pool_done(&e->random);
        free(e);
        return NULL;
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* The lease engine: resources, leases, waiters and their deadlines, and every grant
 * decision. It knows nothing of sockets or JSON: the server asks it for leases on behalf
 * of a Holder (a connection) and learns of grants, timeouts, queue moves and events
 * through EngineCallbacks. Every state change is handed to the Store in the same call;
 * the manager commits the store once per loop iteration before any reply is written.
 *
 * The engine and the Store vtable are the seam for a second backend (brief §7): a
 * cluster-wide engine would keep this API and decide grants through etcd instead. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "hashmap.h"
#include "list.h"
#include "objmap.h"
#include "prioq.h"
#include "usec.h"

typedef struct Engine Engine;
typedef struct Resource Resource;
typedef struct Lease Lease;
typedef struct Waiter Waiter;
typedef struct Store Store;

#define LEASE_ID_LEN 16         /* hex digits of 64 random bits */
#define LEASE_SECRET_LEN 32     /* hex digits of 128 random bits */
#define LEASE_SECRET_SIZE (LEASE_SECRET_LEN / 2)
/* A waiter's ticket: its queue sequence (16 hex digits, the key it is found by) and 128
 * random bits (32 hex digits, compared in constant time): unguessable, like a secret. */
#define WAITER_SEQ_LEN 16
#define WAITER_TICKET_LEN (WAITER_SEQ_LEN + LEASE_SECRET_LEN)

/* Who holds or waits: from SO_PEERCRED and /proc, never from the client. */
typedef struct Owner {
        uint32_t uid;
        uint32_t gid;
        int32_t pid;
        char *comm;     /* owned; may be NULL */
        char *unit;     /* owned; NULL if not in a systemd unit */
} Owner;

int owner_copy(Owner *dst, const Owner *src);
void owner_done(Owner *o);

typedef enum EventType {
        EVENT_QUEUED,
        EVENT_GRANTED,
        EVENT_RENEWED,
        EVENT_RELEASED,
        EVENT_EXPIRED,
        EVENT_REVOKED,
        EVENT_RECLAIMED,
        EVENT_VOIDED,
        /* A Scope=cluster lease whose etcd lease agend cannot renew (cluster-service.c):
         * the holder must assume it may be lost until "reclaimed" or an ending event. */
        EVENT_DISCONNECTED,
        _EVENT_TYPE_MAX,
        _EVENT_TYPE_INVALID = -EINVAL,
} EventType;

const char *event_type_to_string(EventType t);
EventType event_type_from_string(const char *s);

/* An event as watchers and History see it. Borrowed pointers. */
typedef struct Event {
        EventType type;
        usec_t time;            /* CLOCK_REALTIME */
        const char *resource;
        const char *lease;      /* NULL for none */
        uint64_t token;         /* 0 for none */
        const Owner *owner;     /* NULL for none */
        unsigned units;
        const char *reason;     /* NULL for none */
        const Owner *revoked_by; /* revoked: who revoked it (from SO_PEERCRED); else NULL */
        const char *node;       /* Scope=cluster: the holder's node; else NULL */
        bool remote;            /* a lease of another host (cluster-service.c): for Watch only */
        uint64_t seq;           /* its number in the history; set only by engine_history() */
} Event;

/* The leases and pending waiter of one connection. Embedded in the connection. */
typedef struct Holder {
        Lease *leases;          /* ro: list through Lease.holder_next */
        unsigned n_leases;      /* ro */
} Holder;

typedef enum LeaseState {
        LEASE_HELD,
        LEASE_RECLAIMABLE,      /* restored after a daemon restart, waiting for its holder */
} LeaseState;

typedef enum TimerKind {
        TIMER_LEASE_EXPIRY,
        TIMER_WAITER_TIMEOUT,
        TIMER_GRACE,
} TimerKind;

/* A deadline in the engine's heap; its TimerKind rides in pq.tag (16 bytes, not 24). */
typedef struct EngineTimer {
        PrioqItem pq;
} EngineTimer;

struct Lease {
        /* 136 bytes, malloc's 144-byte chunk: it is most of the memory of an idle lease.
         * The id and secret are kept as the bits they are (the wire and the store have them
         * as hex text: lease_id_to_string(), lease_secret_to_string()), the owner is one
         * record shared by its leases, the deadline is the expiry timer's. */
        uint64_t id;                            /* ro: 64 random bits */
        uint8_t secret[LEASE_SECRET_SIZE];      /* ro: 128 random bits; compare with lease_secret_eq() */
        Resource *resource;                     /* ro */
        uint64_t token;                         /* ro */
        const Owner *owner;                     /* ro, never NULL; shared (interned by the engine) */
        char *description;                      /* ro, never NULL; shared by the engine (interned) */
        usec_t created;                         /* ro: CLOCK_REALTIME */
        usec_t ttl;                             /* ro: 0 = none */
        Holder *holder;                         /* ro: the connection that holds it, or NULL */
        LIST_FIELDS(Lease, holder);             /* private: Holder.leases */
        LIST_FIELDS(Lease, res);                /* private: Resource.leases */
        EngineTimer expiry;                     /* private; expiry.pq.when is the deadline
                                                 * (CLOCK_MONOTONIC, USEC_INFINITY = none):
                                                 * lease_deadline() */
        unsigned units;                         /* ro */
        bool exclusive;                         /* ro */
        bool detached;                          /* ro */
        uint8_t state;                          /* ro: LeaseState */
};

/* The deadline (CLOCK_MONOTONIC) or USEC_INFINITY. */
static inline usec_t lease_deadline(const Lease *l) {
        return l->expiry.pq.when;
}

/* A lease id as the wire and the store write it: 16 lowercase hex digits. Returns buf. */
char *lease_id_to_string(uint64_t id, char buf[static LEASE_ID_LEN + 1]);
#define LEASE_ID_STR(l) lease_id_to_string((l)->id, (char[LEASE_ID_LEN + 1]) {})
/* 0, or -EINVAL for anything but exactly 16 lowercase hex digits (what
 * lease_id_to_string() writes, so that an id read back is written the same). */
int lease_id_from_string(const char *s, uint64_t *ret);
/* The secret as 32 lowercase hex digits. Returns buf. */
char *lease_secret_to_string(const Lease *l, char buf[static LEASE_SECRET_LEN + 1]);
/* 0, or -EINVAL: 32 lowercase hex digits into LEASE_SECRET_SIZE bytes. */
int lease_secret_from_string(const char *s, uint8_t ret[static LEASE_SECRET_SIZE]);
/* Whether secret (text from a client) is l's secret. Its time depends on the text given,
 * never on how much of the secret it matches. */
bool lease_secret_eq(const Lease *l, const char *secret);

struct Waiter {
        Resource *resource;                     /* ro */
        unsigned units;                         /* ro: what it needs (capacity if exclusive) */
        bool exclusive;                         /* ro */
        bool detached;                          /* ro */
        usec_t ttl;                             /* ro */
        Owner owner;                            /* ro */
        char *description;                      /* ro, never NULL */
        usec_t since;                           /* ro: CLOCK_REALTIME, kept across restarts */
        unsigned position;                      /* ro: 1-based */
        uint64_t seq;                           /* ro: queue order, kept across restarts */
        char ticket[WAITER_TICKET_LEN + 1];     /* ro: sent to the waiter; a re-sent Acquire
                                                 * presents it to keep its place */
        char seq_key[WAITER_SEQ_LEN + 1];       /* private: the ticket's sequence part */
        bool unclaimed;                         /* ro: restored after a restart; holds its
                                                 * place until its waiter presents the ticket
                                                 * or the grace period ends (holder NULL) */
        usec_t unclaimed_since;                 /* ro: CLOCK_MONOTONIC, when a restart first
                                                 * restored it unclaimed: its grace counts from
                                                 * then, across restarts (0 = claimed) */
        Holder *holder;                         /* ro */
        void *userdata;                         /* rw: the server's */
        Waiter *prev, *next;                    /* private: the resource's FIFO */
        EngineTimer timeout;                    /* private */
};

/* Who may use a declared resource with an allow list; most resources have none. */
typedef struct ResourceAccess {
        uid_t *allow_uids;                      /* NULL = none (with allow_gids) */
        size_t n_allow_uids;
        gid_t *allow_gids;
        size_t n_allow_gids;
} ResourceAccess;

struct Resource {
        /* 64 bytes and the name after them: an 80-byte malloc chunk for a short name, one
         * per lease at 1 M leases on 1 M names (bench/scale.c). The allow lists, which only
         * declared resources have, are in their own allocation. */
        char *name;                             /* ro: stored after the struct */
        ResourceAccess *access;                 /* ro: NULL = no allow list */
        Lease *leases;                          /* ro: list through Lease.res_next */
        Waiter *wait_head, *wait_tail;          /* ro: FIFO */
        unsigned capacity;                      /* ro */
        unsigned used;                          /* ro: units held, reclaimable ones too */
        unsigned n_leases;                      /* ro */
        unsigned n_waiters;                     /* ro */
        bool declared;                          /* ro: from the configuration */
        bool restricted;                        /* ro: an allow list is set (access may still be
                                                 * NULL: an empty list lets only root in) */
        bool cluster;                           /* ro: the stand-in of a Scope=cluster lease
                                                 * (cluster_lease_node()); in the padding */
};

typedef struct EngineCallbacks {
        /* w was granted l; l is in w->holder. w is freed after the call returns. */
        void (*granted)(Engine *e, Waiter *w, Lease *l, void *userdata);
        /* w's timeout passed; it is freed after the call returns. */
        void (*timed_out)(Engine *e, Waiter *w, void *userdata);
        /* w->position changed. */
        void (*moved)(Engine *e, Waiter *w, void *userdata);
        /* Something happened. l is the lease concerned, if any; for the types that end a
         * lease it is still valid during the call and freed after it. */
        void (*event)(Engine *e, const Event *ev, Lease *l, void *userdata);
} EngineCallbacks;

typedef struct EngineClock {
        usec_t (*monotonic)(void *userdata);
        usec_t (*realtime)(void *userdata);
        void *userdata;
} EngineClock;

typedef struct ResourceDecl {
        const char *name;
        unsigned capacity;
        const uid_t *allow_uids;
        size_t n_allow_uids;
        const gid_t *allow_gids;
        size_t n_allow_gids;
        bool restricted;
} ResourceDecl;

typedef struct AcquireParams {
        const char *resource;
        unsigned units;         /* 0 = 1 */
        bool exclusive;
        bool try_once;
        usec_t timeout;         /* USEC_INFINITY = wait forever */
        usec_t ttl;             /* 0 = none */
        bool detached;
        const char *description;
        const Owner *owner;
        const char *ticket;     /* NULL = none: a waiter's ticket from before a restart */
} AcquireParams;

/* clock NULL = the system clocks. store may be NULL (nothing is persisted). */
int engine_new(const EngineClock *clock, Store *store, const EngineCallbacks *cb, void *userdata,
               Engine **ret);
Engine *engine_free(Engine *e);

/* Applies the declared resources (and whether undeclared names may be created). A
 * capacity that shrinks below what is held takes nothing away: new grants wait. */
int engine_configure(Engine *e, const ResourceDecl *decls, size_t n_decls, bool allow_undeclared);

/* Loads the leases of the store. Same boot: connection-bound leases become reclaimable
 * for grace (0 = released at once), detached ones keep their deadlines; another boot:
 * every lease is voided. The waiters of the store come back in their order as unclaimed
 * places, for the same grace (on another boot, or with grace 0, they are dropped). Call
 * once, before anything else is granted. Returns the number of restored leases. */
int engine_restore(Engine *e, const char *boot_id, usec_t grace);

/* Writes an event to a store's history, as the engine does for its own: also for leases
 * that another part (the cluster service) decides. */
void engine_event_append_to(Store *st, const Event *ev);

/* Returns 0 and *ret_lease when granted at once, 1 and *ret_waiter when queued (the
 * waiter's userdata is set to userdata), -ETIMEDOUT when try_once finds it busy, -EINVAL
 * for more units than the capacity, -ENXIO for an undeclared name where only declared
 * ones are allowed, -ENOMEM.
 *
 * A ticket that names a waiter restored after a restart (same resource, not yet claimed,
 * within the grace period) claims it: the request takes that waiter's place in the queue
 * and keeps its "since"; its other parameters are the new request's. Any other ticket is
 * ignored: the request queues at the tail like one without. */
int engine_acquire(Engine *e, const AcquireParams *p, Holder *holder, void *userdata,
                   Lease **ret_lease, Waiter **ret_waiter);
/* Removes a waiter that gives up (its connection closed). Frees it. */
void engine_waiter_cancel(Engine *e, Waiter *w);

/* Ends a lease (RELEASED, EXPIRED, REVOKED or VOIDED) with a reason; frees it after the
 * event, then grants what now fits. */
int engine_lease_end(Engine *e, Lease *l, EventType type, const char *reason);
/* Ends a lease as REVOKED, recording who revoked it (by, from the revoker's SO_PEERCRED)
 * in the event, so History and the journal say who did it. */
int engine_lease_revoke(Engine *e, Lease *l, const char *reason, const Owner *by);
/* New deadline now + ttl (the lease's own TTL if ttl is 0). -EINVAL for a lease without
 * TTL and no ttl given. */
int engine_lease_renew(Engine *e, Lease *l, usec_t ttl);
/* Binds a restored lease to holder again. */
int engine_lease_reclaim(Engine *e, Lease *l, Holder *holder);
/* A connection closed: its bound leases end (RELEASED, "connection closed"), its detached
 * leases lose their holder. */
void engine_holder_gone(Engine *e, Holder *h);

Lease *engine_lease_get(Engine *e, const char *id);
Resource *engine_resource_get(Engine *e, const char *name);
/* Whether token is the fencing token of a lease that holds resource now (any of them, for a
 * counted resource), the way a guarded service checks a writer (Chubby's CheckSequencer).
 * A restored lease still waiting for its holder counts: nothing newer can hold its units
 * until it is reclaimed or released. An unknown resource holds nothing: false. */
bool engine_token_current(Engine *e, const char *resource, uint64_t token);
const ObjMap *engine_resources(Engine *e);
unsigned engine_n_leases(Engine *e);
unsigned engine_n_waiters(Engine *e);
/* Waiters restored after a restart whose ticket has not been presented yet. */
unsigned engine_n_unclaimed(Engine *e);
uint64_t engine_last_token(Engine *e);
bool engine_in_grace(Engine *e);

/* The last limit events (of resource, if not NULL) from the store older than the event
 * numbered before (0 = the newest), oldest first; Event.seq is set (the History cursor). */
int engine_history(Engine *e, const char *resource, uint64_t before, unsigned limit,
                   int (*cb)(const Event *ev, void *userdata), void *userdata);

/* The next deadline (CLOCK_MONOTONIC) or USEC_INFINITY; and running what is due. */
usec_t engine_next_deadline(Engine *e);
/* Now on the engine's monotonic clock (CLOCK_MONOTONIC unless engine_new() got another),
 * the clock of engine_next_deadline(). */
usec_t engine_now(Engine *e);
void engine_run_timers(Engine *e);
/* At most max of what is due (0 = all); returns how many ran. The daemon runs a bounded
 * number per loop iteration, so that a mass expiry does not stall the other clients: the
 * rest is due at once, in the next iteration, after the I/O that arrived meanwhile. */
unsigned engine_run_timers_max(Engine *e, unsigned max);

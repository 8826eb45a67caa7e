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
#include "prioq.h"
#include "usec.h"

typedef struct Engine Engine;
typedef struct Resource Resource;
typedef struct Lease Lease;
typedef struct Waiter Waiter;
typedef struct Store Store;

#define LEASE_ID_LEN 16         /* hex digits of 64 random bits */
#define LEASE_SECRET_LEN 32     /* hex digits of 128 random bits */

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
        uint64_t seq;           /* its number in the history; set only by Store.history */
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

typedef struct EngineTimer {
        PrioqItem pq;
        TimerKind kind;
} EngineTimer;

struct Lease {
        char id[LEASE_ID_LEN + 1];              /* ro */
        char secret[LEASE_SECRET_LEN + 1];      /* ro */
        Resource *resource;                     /* ro */
        unsigned units;                         /* ro */
        bool exclusive;                         /* ro */
        bool detached;                          /* ro */
        LeaseState state;                       /* ro */
        uint64_t token;                         /* ro */
        Owner owner;                            /* ro */
        char *description;                      /* ro, never NULL */
        usec_t created;                         /* ro: CLOCK_REALTIME */
        usec_t ttl;                             /* ro: 0 = none */
        usec_t deadline;                        /* ro: CLOCK_MONOTONIC, USEC_INFINITY = none */
        Holder *holder;                         /* ro: the connection that holds it, or NULL */
        Lease *holder_prev, *holder_next;       /* private */
        Lease *res_prev, *res_next;             /* private */
        EngineTimer expiry;                     /* private */
};

struct Waiter {
        Resource *resource;                     /* ro */
        unsigned units;                         /* ro: what it needs (capacity if exclusive) */
        bool exclusive;                         /* ro */
        bool detached;                          /* ro */
        usec_t ttl;                             /* ro */
        Owner owner;                            /* ro */
        char *description;                      /* ro, never NULL */
        usec_t since;                           /* ro: CLOCK_REALTIME */
        unsigned position;                      /* ro: 1-based */
        Holder *holder;                         /* ro */
        void *userdata;                         /* rw: the server's */
        Waiter *prev, *next;                    /* private: the resource's FIFO */
        EngineTimer timeout;                    /* private */
};

struct Resource {
        char *name;                             /* ro */
        unsigned capacity;                      /* ro */
        unsigned used;                          /* ro: units held, reclaimable ones too */
        bool declared;                          /* ro: from the configuration */
        uid_t *allow_uids;                      /* ro: NULL = everyone (with allow_gids) */
        size_t n_allow_uids;
        gid_t *allow_gids;
        size_t n_allow_gids;
        bool restricted;                        /* ro: an allow list is set */
        Lease *leases;                          /* ro: list through Lease.res_next */
        unsigned n_leases;                      /* ro */
        Waiter *wait_head, *wait_tail;          /* ro: FIFO */
        unsigned n_waiters;                     /* ro */
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
 * every lease is voided. Call once, before anything else is granted. Returns the number
 * of restored leases. */
int engine_restore(Engine *e, const char *boot_id, usec_t grace);

/* Returns 0 and *ret_lease when granted at once, 1 and *ret_waiter when queued (the
 * waiter's userdata is set to userdata), -ETIMEDOUT when try_once finds it busy, -EINVAL
 * for more units than the capacity, -ENXIO for an undeclared name where only declared
 * ones are allowed, -ENOMEM. */
int engine_acquire(Engine *e, const AcquireParams *p, Holder *holder, void *userdata,
                   Lease **ret_lease, Waiter **ret_waiter);
/* Removes a waiter that gives up (its connection closed). Frees it. */
void engine_waiter_cancel(Engine *e, Waiter *w);

/* Ends a lease (RELEASED, EXPIRED, REVOKED or VOIDED) with a reason; frees it after the
 * event, then grants what now fits. */
int engine_lease_end(Engine *e, Lease *l, EventType type, const char *reason);
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
const Hashmap *engine_resources(Engine *e);
unsigned engine_n_leases(Engine *e);
unsigned engine_n_waiters(Engine *e);
uint64_t engine_last_token(Engine *e);
bool engine_in_grace(Engine *e);

/* The next deadline (CLOCK_MONOTONIC) or USEC_INFINITY; and running what is due. */
usec_t engine_next_deadline(Engine *e);
void engine_run_timers(Engine *e);

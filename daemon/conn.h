/* SPDX-License-Identifier: MIT */
#pragma once

/* The lease service's side of one client connection: who the peer is, the leases bound to
 * it, its waiting Acquire, its Watch. The bytes, the call order, the limits and the
 * timeouts are the transport's (varlink-server.h); this object is the userdata of one
 * VarlinkConn, created by its connect callback and freed by its disconnect callback.
 *
 * Invariants owned here, once: a connection's waiter and bound leases end when it goes
 * (except at daemon shutdown, when they stay in the store for the next start); a Watch is
 * on the manager's watcher list exactly while it is in progress; the per-uid waiter count
 * follows the waiter. */

#include <stdbool.h>

#include "engine.h"
#include "list.h"
#include "varlink-server.h"

typedef struct Manager Manager;
typedef struct UserStat UserStat;

typedef enum ConnBusy {
        CONN_IDLE,
        CONN_ACQUIRE,           /* waiting for a grant */
        CONN_WATCH,             /* streaming events */
} ConnBusy;

typedef struct Conn Conn;

struct Conn {
        Manager *manager;
        VarlinkConn *link;      /* the transport connection; it owns us */
        Owner peer;
        gid_t *groups;          /* supplementary groups of the peer, for allow lists */
        size_t n_groups;
        UserStat *user;
        Holder holder;

        ConnBusy busy;
        Waiter *waiter;         /* a local resource's; a cluster one's is in cluster-service.c */
        char *watch_resource;   /* Watch(resource) filter, NULL = all */
        char *watch_lease;      /* Watch(lease): only this lease, ends with it */

        bool is_watcher;
        LIST_FIELDS(Conn, watch);
};

/* The connect callback's work: identifies the peer (SO_PEERCRED, /proc). */
int conn_new(Manager *m, VarlinkConn *link, Conn **ret);
/* The disconnect callback's work. If release is true, its waiter is cancelled and its
 * bound leases end (a hang-up); at daemon shutdown it is false: leases stay for the next
 * start. */
void conn_free(Conn *c, bool release);

static inline bool conn_more(const Conn *c) {
        return varlink_conn_more(c->link);
}

/* An error reply to the call in progress, with a reason (and one named member). */
void conn_error_reason(Conn *c, const char *error, const char *reason, const char *key, const char *value);
/* The call in progress (a wait, a watch) has ended; its final reply was sent. */
void conn_call_done(Conn *c);
/* A Watch begins (its filters are set) or ends (its final reply was sent). */
void conn_watch_start(Conn *c);
void conn_watch_end(Conn *c);

/* Methods (methods.c). */
int methods_bind(VarlinkServer *s);
/* Replies written by methods.c's writer, for the cluster service too: a grant (a grant
 * that cannot be written closes the connection, so the lease it never heard of ends with
 * it), a queued notice, and a one-member reply such as Check's {current}. */
void conn_reply_granted(Conn *c, const Lease *l, bool continues);
void conn_reply_queued(Conn *c, int64_t position, const char *ticket);
void conn_reply_bool(Conn *c, const char *key, bool value);
/* Reclaim's reply: {lease}. */
void conn_reply_lease(Conn *c, const Lease *l);
/* A Watch whose arguments were checked begins: its filters, and its first reply. */
void conn_watch_begin(Conn *c, const char *resource, const char *lease);
/* Engine callbacks. */
extern const EngineCallbacks methods_engine_callbacks;

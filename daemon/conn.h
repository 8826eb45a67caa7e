/* SPDX-License-Identifier: MIT */
#pragma once

/* One client connection. Calls are handled in order: a call still in progress (a waiting
 * Acquire, a Watch) holds the later calls of the connection, whose bytes wait in the
 * reader, until it ends; meanwhile the connection keeps reading so that a hang-up is seen
 * at once (and cancels the wait), and the unanswered-input limit bounds what it buffers. */

#include <ev.h>
#include <stdbool.h>

#include "engine.h"
#include "vl.h"

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
        int fd;
        ev_io io;
        VlReader in;
        VlWriter out;
        Owner peer;
        gid_t *groups;          /* supplementary groups of the peer, for allow lists */
        size_t n_groups;
        UserStat *user;
        Holder holder;

        ConnBusy busy;
        bool oneway;            /* the call being handled wants no reply */
        bool more;              /* the call in progress streams */
        Waiter *waiter;
        char *watch_resource;   /* Watch(resource) filter, NULL = all */
        char *watch_lease;      /* Watch(lease): only this lease, ends with it */

        bool closing;           /* close once the output is flushed */
        bool dead;              /* closed on the next chance; no more processing */
        bool is_dirty, is_pending, is_watcher;
        Conn *prev, *next;
        Conn *dirty_next;
        Conn *pending_next;
        Conn *watch_prev, *watch_next;
};

int conn_new(Manager *m, int fd, Conn **ret);
/* Frees the connection. If release is true, its waiter is cancelled and its bound leases
 * end (a hang-up); at daemon shutdown it is false: leases stay for the next start. */
void conn_free(Conn *c, bool release);

/* Reads what is there and handles whole calls. */
void conn_process(Conn *c);
/* Writes out pending output; returns < 0 if the connection is gone. */
int conn_flush(Conn *c);

/* Queue a reply to the call being handled (or in progress). parameters is taken. */
void conn_reply(Conn *c, struct json_object *parameters, bool continues);
void conn_error(Conn *c, const char *error, struct json_object *parameters);
void conn_error_reason(Conn *c, const char *error, const char *reason, const char *key, const char *value);
/* A protocol violation: reply ProtocolError with the reason, then close. */
void conn_protocol_error(Conn *c, const char *reason);
/* The call in progress has ended: handle the calls queued behind it. */
void conn_call_done(Conn *c);
/* A Watch begins (its filters are set) or ends (the call is done). */
void conn_watch_start(Conn *c);
void conn_watch_end(Conn *c);

/* Methods (methods.c). */
void methods_dispatch(Conn *c, const VlCall *call);
struct json_object *lease_to_json(const Lease *l);
struct json_object *event_to_json(const Event *e);
/* Engine callbacks. */
extern const EngineCallbacks methods_engine_callbacks;

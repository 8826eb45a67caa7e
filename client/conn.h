/* SPDX-License-Identifier: MIT */
#pragma once

/* One varlink connection of the client, on a libev loop: calls answered in order (a FIFO
 * of pending calls), pipelined writes. Framing and message shapes are common/vl.h's, error
 * names common/errmap.h's, the same code the daemon runs. Internal to libagenclient. */

#include <ev.h>
#include <json-c/json.h>
#include <stdbool.h>

#include "vl.h"

typedef struct Conn Conn;
typedef struct ConnCall ConnCall;

/* The client reads replies up to this size, larger than the daemon's limit on what it
 * reads (VL_MESSAGE_SIZE_DEFAULT): a List of a busy daemon is a big reply, not an attack. */
#define CONN_MAX_MESSAGE ((size_t) 16 * 1024 * 1024)

/* A reply (status 0, or errmap_from_name(error_name) for an error reply), or the end of
 * the connection (status < 0, error_name NULL, parameters NULL). parameters is borrowed
 * for the call. The call is over once a reply comes with continues false, or on error. */
typedef void (*conn_reply_fn)(Conn *c, int status, const char *error_name, json_object *parameters,
                              bool continues, void *userdata);
/* The connection ended (EOF, error, or a protocol violation), after the pending calls
 * were failed. */
typedef void (*conn_end_fn)(Conn *c, int error, void *userdata);

/* How long a connection waits for a listener whose backlog is full before it ends with
 * -ETIMEDOUT. */
#define CONN_CONNECT_TIMEOUT 5.0

/* Connects without blocking. address: a path, "unix:PATH", or "@NAME" for an abstract
 * socket. An error known at once (-ENOENT, -ECONNREFUSED) is returned; a listener that
 * cannot take the connection yet (backlog full) is retried from the loop, calls queue
 * meanwhile, and a failure ends the connection (end handler, pending calls). */
int conn_connect(struct ev_loop *loop, const char *address, Conn **ret);
Conn *conn_ref(Conn *c);
Conn *conn_unref(Conn *c);
void conn_set_end_handler(Conn *c, conn_end_fn fn, void *userdata);
bool conn_is_open(Conn *c);
/* Inherited across fork(): dead in this process (fork.h). */
bool conn_is_forked(Conn *c);
int conn_get_fd(Conn *c);

/* Queues a call. flags: VL_CALL_MORE or VL_CALL_ONEWAY. parameters (may be NULL = {}) is
 * consumed, also on failure. With ONEWAY no reply comes and cb is not used. ret_call (may
 * be NULL) lets the caller cancel it. -ENOTCONN once the connection has ended. */
int conn_call(Conn *c, const char *method, json_object *parameters, unsigned flags, conn_reply_fn cb,
              void *userdata, ConnCall **ret_call);
/* The reply callback of call will not be called any more (the reply is read and dropped). */
void conn_call_cancel(ConnCall *call);

/* Writes what is queued, blocking, up to timeout seconds. For the last-resort paths that
 * cannot wait for the loop. */
int conn_flush_blocking(Conn *c, double timeout);

/* Ends the connection now: stops its watchers, closes the fd; pending calls are dropped
 * without callbacks, and the end handler is not called. */
void conn_close(Conn *c);

/* SPDX-License-Identifier: MIT */
#pragma once

/* A varlink server on a libev loop that knows nothing of leases (the shape of systemd's
 * sd_varlink_server): listening sockets, connections with a VlReader and a VlWriter,
 * methods bound by name with userdata, connect/disconnect callbacks, and the protections
 * a daemon shared by untrusted local users needs:
 *
 * - per-uid connection limits (root exempt), checked at accept;
 * - input bounds: message size and unanswered input (common/vl.c), read buffers that grow
 *   as data arrives and are freed when empty;
 * - output bounds: a connection whose queued output is above a small high-water mark is
 *   neither read nor dispatched until it drains (it can only hurt itself); a call handler
 *   runs at most VARLINK_CALLS_PER_TURN calls of one connection before the others get
 *   their turn; queued output is capped per connection, per uid and in total, and when a
 *   cap is hit the connection with the most queued output of that scope is dropped with
 *   a LimitExceeded error (a subscriber that stopped reading, in practice);
 * - timeouts: a partial message held longer than the client timeout is a protocol error;
 *   a connection that sends no call at all within it is closed;
 * - accept at EMFILE: the listener stops until a connection closes (or a retry timer),
 *   logged once per episode.
 *
 * Calls on one connection are handled in order: a call that has not sent its final reply
 * (a waiting call, a stream) holds the later calls, whose bytes wait in the reader.
 *
 * Replies are only queued by the methods; nothing is written until the owner calls
 * varlink_server_flush(), and with output held (varlink_server_hold_output()) only what was
 * released. agend releases a batch's output once its commit is durable, so no reply leaves
 * before the change it reports is committed. */

#include <ev.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "json-writer.h"
#include "vl-params.h"
#include "usec.h"
#include "vl.h"

#define VARLINK_CALLS_PER_TURN 16

typedef struct VarlinkServer VarlinkServer;
typedef struct VarlinkConn VarlinkConn;

/* A method. Its parameters come as a flat list (common/vl-params.h), read by the call
 * scanner from the message without a json-c tree, or listed from json-c's parse of a
 * message the scanner leaves to json-c; borrowed for the call. The handler replies now or
 * later with varlink_conn_reply*()/_error*(); until its final reply (continues = false)
 * the call is in progress and holds the connection's later calls. */
typedef void (*VarlinkParamsFn)(VarlinkConn *c, const VlParams *parameters, void *userdata);

typedef struct VarlinkServerCallbacks {
        /* A connection was accepted (or added). Return < 0 to refuse it (it is closed
         * without a word). Typically sets the connection's userdata. */
        int (*connect)(VarlinkServer *s, VarlinkConn *c, void *userdata);
        /* The connection is going away (hang-up, error, limit, timeout or server free);
         * called once for every connection connect() accepted, before its fd closes. */
        void (*disconnect)(VarlinkServer *s, VarlinkConn *c, void *userdata);
        /* The connection has been silent with no call in progress for the client timeout
         * and never sent a call: return true to close it. NULL = always close. */
        bool (*may_time_out)(VarlinkConn *c, void *userdata);
} VarlinkServerCallbacks;

typedef struct VarlinkServerLimits {
        size_t max_message_size;        /* one message, NUL excluded; 0 = VL default */
        size_t max_unanswered_input;    /* bytes held behind a call in progress */
        unsigned max_connections_per_uid; /* 0 = unlimited; root is never limited */
        size_t output_high_water;       /* stop reading a connection above this */
        size_t max_output_per_conn;     /* queued bytes; over it the connection is dropped */
        size_t max_output_per_uid;
        size_t max_output_total;
        usec_t client_timeout;          /* partial message / no first call; 0 = none */
} VarlinkServerLimits;

/* The defaults agend uses when the configuration says nothing. */
#define VARLINK_OUTPUT_HIGH_WATER ((size_t) 256 * 1024)
#define VARLINK_MAX_OUTPUT_PER_CONN ((size_t) 4 * 1024 * 1024)
#define VARLINK_MAX_OUTPUT_PER_UID ((size_t) 32 * 1024 * 1024)
#define VARLINK_MAX_OUTPUT_TOTAL ((size_t) 128 * 1024 * 1024)

typedef struct VarlinkServerOptions {
        const char *error_protocol;     /* e.g. "io.agend.Lease.ProtocolError" */
        const char *error_limit;        /* e.g. "io.agend.Lease.LimitExceeded" */
} VarlinkServerOptions;

int varlink_server_new(struct ev_loop *loop, const VarlinkServerOptions *opts, const VarlinkServerCallbacks *cb,
                       void *userdata, VarlinkServer **ret);
/* Closes every connection (disconnect callback for each) and the listening sockets. */
VarlinkServer *varlink_server_free(VarlinkServer *s);
void varlink_server_set_limits(VarlinkServer *s, const VarlinkServerLimits *l);

/* Binds name ("interface.Method") to fn. Calls to other methods get MethodNotFound if the
 * interface has any bound method, InterfaceNotFound otherwise. */
int varlink_server_bind_method_params(VarlinkServer *s, const char *name, VarlinkParamsFn fn, void *userdata);

/* Takes a listening socket (non-blocking); accepting starts with varlink_server_start(). */
int varlink_server_listen_fd(VarlinkServer *s, int fd);
void varlink_server_start(VarlinkServer *s);
void varlink_server_stop(VarlinkServer *s);

/* Adds an already connected socket as if accepted (systemd's fd store; tests). The fd is
 * taken, also on failure. */
int varlink_server_add_connection(VarlinkServer *s, int fd, VarlinkConn **ret);

/* Handles calls that wait in connections whose call in progress just ended or whose
 * output drained. Call before the commit. */
void varlink_server_dispatch(VarlinkServer *s);
/* Writes queued replies and closes the connections that are done, broken or dropped.
 * Returns the number closed (their disconnect callbacks may have queued more replies:
 * the caller commits and flushes again). */
unsigned varlink_server_flush(VarlinkServer *s);

/* The pipelined commit (agend's manager.c): with hold on, queued output is written only
 * once released. seal() ends a batch: what is queued so far goes out with the next
 * release(false), which releases the last sealed batch; release(true) releases everything
 * queued. Turning hold off releases everything. */
void varlink_server_hold_output(VarlinkServer *s, bool hold);
void varlink_server_seal(VarlinkServer *s);
void varlink_server_release(VarlinkServer *s, bool all);
/* Whether the loop has input to handle right now: calls waiting for their turn, or a
 * connection or listener that is readable (a non-blocking peek, one system call). */
bool varlink_server_input_waiting(VarlinkServer *s);

unsigned varlink_server_n_connections(const VarlinkServer *s);
/* Total queued output bytes (for tests and status). */
size_t varlink_server_output_bytes(const VarlinkServer *s);
/* Iteration over connections: first/next. */
VarlinkConn *varlink_server_first(VarlinkServer *s);
VarlinkConn *varlink_conn_next(VarlinkConn *c);

/* ---- connections ---- */

void *varlink_conn_get_userdata(const VarlinkConn *c);
void varlink_conn_set_userdata(VarlinkConn *c, void *userdata);
int varlink_conn_fd(const VarlinkConn *c);
uid_t varlink_conn_uid(const VarlinkConn *c);
/* The call in progress asked for "more" / is "oneway". */
bool varlink_conn_more(const VarlinkConn *c);
bool varlink_conn_in_call(const VarlinkConn *c);

/* Replies to the call in progress. parameters (may be NULL) is consumed. A reply without
 * continues ends the call. Replies to a oneway call are dropped (the call still ends). */
int varlink_conn_reply(VarlinkConn *c, json_object *parameters, bool continues);
int varlink_conn_error(VarlinkConn *c, const char *error, json_object *parameters);
int varlink_conn_error_reason(VarlinkConn *c, const char *error, const char *reason, const char *key,
                              const char *value);
/* Replies written with a JsonWriter, straight to text (no json-c tree): begin() writes the
 * start of the message ({"parameters":{), the caller the members of the parameters object,
 * varlink_reply_end() the rest (and "continues"). */
void varlink_reply_begin(JsonWriter *w);
int varlink_reply_end(JsonWriter *w, bool continues);
/* Ends the message in w and queues it as the reply to the call in progress. If the writer
 * failed (out of memory), the call gets error_limit (limit "memory") instead, never a
 * reply with a member missing or null; a stream (continues) is closed after that error,
 * and a connection whose error cannot be queued either is closed. Returns w's error. */
int varlink_conn_reply_end(VarlinkConn *c, JsonWriter *w, bool continues);
/* What varlink_conn_reply_end() does when the reply could not be built (error < 0). */
int varlink_conn_reply_failed(VarlinkConn *c, int error, bool continues);
/* A reply already serialized as a whole varlink message (no NUL), for one event sent to
 * many subscribers: the JSON is built once. */
int varlink_conn_reply_serialized(VarlinkConn *c, const char *msg, size_t len, bool continues);
/* One message serialized once and queued, by reference, to many connections (a Watch
 * event to every subscriber): refcounted, immutable. len excludes the NUL. */
typedef struct VarlinkBuf VarlinkBuf;
int varlink_buf_new(const char *msg, size_t len, VarlinkBuf **ret);
VarlinkBuf *varlink_buf_ref(VarlinkBuf *b);
VarlinkBuf *varlink_buf_unref(VarlinkBuf *b);
/* Like varlink_conn_reply_serialized(), without a copy: the connection takes a reference. */
int varlink_conn_reply_shared(VarlinkConn *c, VarlinkBuf *msg, bool continues);
/* Sends error_protocol with the reason, then closes. */
void varlink_conn_protocol_error(VarlinkConn *c, const char *reason);
/* Closes the connection at the next flush (after what is queued, at most one attempt). */
void varlink_conn_close(VarlinkConn *c);

/* For handing a connection over (systemd's fd store): no input held, no output left after
 * one non-blocking write. */
bool varlink_conn_quiet(VarlinkConn *c);
/* Marks a call in progress on a connection that was adopted mid-call (a Watch that goes
 * on across a restart). */
void varlink_conn_resume_call(VarlinkConn *c, bool more);

/* SPDX-License-Identifier: MIT */
#ifndef AGEN_AGEN_H
#define AGEN_AGEN_H

/* libagenclient: async generators on libev, and machine-local resource leases from agend
 * held as async generators.
 *
 * Plain C99. All types are opaque. Conventions, for every call below:
 *   - Calls return int: >= 0 on success, -errno on failure. Out-parameters (ret_*) come
 *     last and are left untouched on failure.
 *   - A call that takes a callback and fails (returns < 0) never calls that callback. A call
 *     that succeeds calls it exactly once, later, from the loop: never from inside the call
 *     itself (no re-entrancy).
 *   - Objects are reference counted. *_ref() returns its argument, *_unref() returns NULL;
 *     both accept NULL. The runtime holds its own reference while one of your callbacks
 *     runs, so dropping your last reference inside a callback is safe.
 *   - Unless a call says "any thread", call it on the thread that runs the generator's
 *     loop. agen_gen_ref() and agen_gen_unref() may be called from any thread. A loop may
 *     move to another thread between runs; a last unref from any thread outside the loop's
 *     own run wakes the loop through an ev_async, wherever it runs.
 *   - fork() without exec: in the child, every client, generator and per-loop state
 *     inherited from the parent is dead (as sd-bus does). Calls on them return -ECHILD
 *     and send nothing; ref/unref do nothing (nothing is closed, released or freed in the
 *     child); the sockets of inherited connections are closed in the child at fork time,
 *     so a child neither reads the parent's events nor keeps a dead parent's bound lease
 *     alive. A child makes its own loop and client (ev_loop_fork() does not revive ours).
 *
 * The semantics mirror Python's async generators (PEP 525) and asyncio's hooks: the first
 * agen_gen_anext() registers the generator in its loop's live set (firstiter); dropping the
 * last reference of a started, unfinished generator schedules its close on its loop
 * (finalizer); agen_loop_shutdown() closes every live generator (shutdown_asyncgens).
 * See docs/libagenclient.md. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct ev_loop;

typedef struct agen_gen agen_gen;
typedef struct agen_co agen_co;

/* Status passed to an agen_next_cb: the generator finished (like StopAsyncIteration). */
#define AGEN_STOP 1
/* Was returned by agen_gen_aclose() while a step ran, a positive success code that
 * `if (r != 0)` misread as a failure. agen_gen_aclose() now returns 0 then too (the step
 * is cancelled if the generator can be, its agen_next_cb fires first, the close after);
 * agen_gen_get_state() still says AGEN_GEN_RUNNING right after such a close. Kept so
 * that code naming it still compiles; never returned. */
#define AGEN_DEFERRED 2

typedef enum agen_gen_state {
        AGEN_GEN_CREATED,   /* made, never stepped */
        AGEN_GEN_SUSPENDED, /* stopped at a yield; agen_gen_anext() resumes it */
        AGEN_GEN_RUNNING,   /* a step is in progress */
        AGEN_GEN_CLOSING,   /* its cleanup is in progress */
        AGEN_GEN_CLOSED,    /* finished, failed, or closed; it will not run again */
        _AGEN_GEN_STATE_MAX,
        _AGEN_GEN_STATE_FORCE_INT32 = INT32_MAX
} agen_gen_state;

/* Result of one step. status: 0 = a value was yielded (value stays valid, owned by the
 * generator, until the next step or close starts); AGEN_STOP = the generator finished;
 * -errno = the step failed (the generator is closed). */
typedef void (*agen_next_cb)(agen_gen *gen, int status, const void *value, void *userdata);

/* Result of a close. status: 0, or the -errno the cleanup failed with (the generator is
 * closed either way). */
typedef void (*agen_close_cb)(agen_gen *gen, int status, void *userdata);

/* ---- Writing a generator ---------------------------------------------------------------
 *
 * A generator is a step function and an asynchronous cleanup function. Each receives an
 * agen_co completion handle; the function completes it exactly once, either before
 * returning or later from the loop (from an I/O callback, a timer, ...):
 *   step:  agen_co_yield(co, value)  the next value;  agen_co_return(co)  finished
 *          (like `return` in a Python async generator: the step must have freed what it
 *          holds, no cleanup runs after it);  agen_co_fail(co, -errno, msg)  failed (also
 *          finished: no cleanup runs after it).
 *   close: agen_co_return(co) cleanup done;  agen_co_fail(co, -errno, msg) cleanup failed
 *          (the generator is closed anyway, the error goes to whoever awaits the close, or
 *          to the loop's exception handler);  agen_co_yield() is an error ("yielded
 *          during close", -EPROTO, always reported to the exception handler).
 * close runs only for a generator that was started and has not finished: a created (never
 * stepped) or finished generator is closed without running anything. */
typedef struct agen_gen_ops {
        /* Required. */
        void (*step)(agen_gen *gen, agen_co *co, void *userdata);
        /* Optional; NULL = nothing to clean up. */
        void (*close)(agen_gen *gen, agen_co *co, void *userdata);
        /* Optional, last resort: called on the loop's thread by agen_loop_shutdown() for a
         * generator whose step or close did not finish in time. It must release what it
         * holds synchronously, without the loop (stop its watchers, close its fds); any
         * later completion of its agen_co is ignored. */
        void (*abandon)(agen_gen *gen, void *userdata);
        /* Optional: frees userdata when the generator is freed. For a generator that was
         * never started or has finished, this may run on the thread that dropped the last
         * reference. */
        void (*destroy)(void *userdata);
        /* Optional: cancels the step in progress (co is its completion handle), as Python
         * raises CancelledError at the await where a generator waits. Called on the loop,
         * never inside a call of yours, when a close must not wait for the step:
         * agen_gen_aclose(), the finalizer, agen_loop_shutdown(), a _sync timeout. It
         * should complete co at once: agen_co_fail(co, -ECANCELED, ...) = interrupted, the
         * generator still holds what it held, and its close runs next (the step's callback
         * gets -ECANCELED first); or a yield/return if the step had its result anyway.
         * Without it, a close waits for the step to end. */
        void (*cancel)(agen_gen *gen, agen_co *co, void *userdata);
        /* Optional: agen_gen_athrow() raises error at the generator's suspension point.
         * Complete co as a step: handled (agen_co_yield(), agen_co_return()), or raised
         * (agen_co_fail(), the generator is finished and must have freed what it held).
         * NULL = not handled: the error unwinds the generator, its close runs, and the
         * step fails with error (or with the close's own error). */
        void (*athrow)(agen_gen *gen, agen_co *co, int error, const char *message, void *userdata);
} agen_gen_ops;

/* Makes a generator on loop, in state CREATED, with one reference owned by the caller.
 * ops must stay valid while the generator lives (a static const table). Nothing runs and
 * nothing is registered until the first agen_gen_anext(). Returns 0, -EINVAL or -ENOMEM. */
int agen_gen_new(struct ev_loop *loop, const agen_gen_ops *ops, void *userdata, agen_gen **ret);

/* Completes the pending step or close of co's generator (see agen_gen_ops). value is
 * owned by the generator and must stay valid until the next step or close starts; message
 * (may be NULL) is copied. Return 0, or -ESTALE if co has nothing pending (completed twice,
 * or abandoned). */
int agen_co_yield(agen_co *co, const void *value);
int agen_co_return(agen_co *co);
int agen_co_fail(agen_co *co, int error, const char *message);
/* The generator co belongs to (not a new reference). */
agen_gen *agen_co_get_gen(agen_co *co);
/* In a step: the value agen_gen_asend() sent into it (the value of Python's `yield`
 * expression); NULL for agen_gen_anext(). Owned by the sender; valid until the step
 * completes (also from a later callback of a step that completes asynchronously). */
const void *agen_co_get_sent(agen_co *co);

/* Resumes the generator to its next yield. cb fires once, from the loop, with the result
 * (see agen_next_cb); cb may be NULL, then a failure goes to the exception handler.
 * The first call registers the generator in its loop's live set.
 * Returns 0; -EBUSY while a step or close runs (or its result is not yet delivered);
 * -ESTALE once the generator is closed, finished, or a close was requested. */
int agen_gen_anext(agen_gen *gen, agen_next_cb cb, void *userdata);

/* PEP 525 asend(): resumes the generator with value, which its step reads with
 * agen_co_get_sent() (value must stay valid until cb fires). Otherwise as
 * agen_gen_anext(); -EINVAL for a non-NULL value into a created (never stepped)
 * generator, which has no yield to receive it. */
int agen_gen_asend(agen_gen *gen, const void *value, agen_next_cb cb, void *userdata);

/* PEP 525 athrow(): raises error (< 0; message may be NULL, copied) at the generator's
 * suspension point; its athrow op handles it (see agen_gen_ops), or, without one, its
 * cleanup runs and cb gets error. A created generator ends at once with error and runs
 * nothing. Results and errors as agen_gen_anext(). */
int agen_gen_athrow(agen_gen *gen, int error, const char *message, agen_next_cb cb, void *userdata);

/* Closes the generator: runs its cleanup on the loop if it was started and has not
 * finished, otherwise runs nothing. cb (may be NULL) fires once, from the loop, when the
 * generator is closed. If a step is running it is cancelled (agen_gen_ops.cancel; without
 * that op the close waits for the step): the step's agen_next_cb fires first (with
 * -ECANCELED when cancelled), then the cleanup runs, then cb. Returns 0 (also when a step
 * was running: see AGEN_DEFERRED), -EINVAL, -ENOMEM, -ECHILD. Closing a closing or closed
 * generator succeeds: cb fires when the close in progress ends (with its status), or at
 * once with 0. */
int agen_gen_aclose(agen_gen *gen, agen_close_cb cb, void *userdata);

/* A scoped close, like Python's contextlib.aclosing(): agen_gen_aclose() without a
 * callback (a cleanup error goes to the exception handler), then agen_gen_unref().
 * Returns NULL. With AGEN_CLEANUP_ACLOSE on a variable, leaving its scope does this:
 *     AGEN_CLEANUP_ACLOSE agen_gen *lease = agen_lease(client, "gpu", NULL);
 * The close runs on the loop after the scope is left; nothing warns about it (it was
 * not forgotten). On the loop's thread. */
agen_gen *agen_gen_aclose_unref(agen_gen *gen);
static inline void agen_gen_aclose_unrefp(agen_gen **gen) {
        if (gen && *gen)
                *gen = agen_gen_aclose_unref(*gen);
}
#if defined(__GNUC__) || defined(__clang__)
#define AGEN_CLEANUP_ACLOSE __attribute__((__cleanup__(agen_gen_aclose_unrefp)))
#endif

/* Any thread. agen_gen_unref() of the last reference of a started, unfinished generator
 * does not free it (the finalizer): inside the loop's own run (a callback) it queues the
 * close on the loop (the pending close keeps ev_run() running until it is done);
 * anywhere else it hands the generator over through an ev_async, which wakes the loop
 * on whatever thread runs it (if none does, the close runs when it runs again, or in
 * agen_loop_shutdown()). A step in progress is cancelled (agen_gen_ops.cancel): the
 * program gave the generator up, so a waiting lease leaves its queue and is never
 * granted. The loop closes it, reports a cleanup error to the exception handler, then
 * frees it. Nothing of the generator runs inside agen_gen_unref(), and its cleanup never
 * runs on another thread. The runtime's own references (while a step or close is in
 * flight) keep the memory alive but do not count as the program's. */
agen_gen *agen_gen_ref(agen_gen *gen);
agen_gen *agen_gen_unref(agen_gen *gen);

agen_gen_state agen_gen_get_state(agen_gen *gen);
struct ev_loop *agen_gen_get_loop(agen_gen *gen);
void *agen_gen_get_userdata(agen_gen *gen);
/* "created", "suspended", ...; NULL for an invalid value. Static string. */
const char *agen_gen_state_to_string(agen_gen_state state);

/* ---- Per-loop state --------------------------------------------------------------------- */

/* Called, on the loop, for errors nobody awaits: a cleanup that failed while closed by the
 * finalizer or agen_loop_shutdown() (or by an aclose without callback), a step that failed
 * with no callback, a generator that yielded during close. gen may be NULL; message is
 * valid during the call. The default handler writes one line to stderr. */
typedef void (*agen_exception_handler)(struct ev_loop *loop, agen_gen *gen, int error,
                                       const char *message, void *userdata);

/* Sets the loop's exception handler; NULL restores the default. The setting lasts until
 * agen_loop_shutdown() has closed every generator of the loop. Returns 0, -EINVAL, -ENOMEM. */
int agen_loop_set_exception_handler(struct ev_loop *loop, agen_exception_handler handler,
                                    void *userdata);

/* Python's ResourceWarning for an async generator nobody closed: called on the loop when
 * the finalizer has to close a started, unfinished generator that was dropped without
 * agen_gen_aclose() (just before its cleanup runs), so a program can find where it forgot
 * to close. Off by default. gen is valid during the call. */
typedef void (*agen_finalizer_warning)(struct ev_loop *loop, agen_gen *gen, void *userdata);

/* Sets (NULL: clears) the loop's finalizer warning; it lasts as the exception handler
 * does. Returns 0, -EINVAL, -ENOMEM. */
int agen_loop_set_finalizer_warning(struct ev_loop *loop, agen_finalizer_warning warning, void *userdata);

/* Number of live generators of loop: started, not yet closed. Any thread. */
unsigned agen_loop_live(struct ev_loop *loop);

/* Closes every live generator of loop, all at once, and runs the loop until their cleanups
 * have finished (repeating while cleanups start new generators) or timeout seconds have
 * passed (timeout < 0: no limit; 0: the loop is not run at all). Generators still not
 * closed by then are abandoned (their abandon op runs, their close callbacks get
 * -ETIMEDOUT; a lease generator closes its connection, which releases a bound lease). Cleanup errors go to the
 * exception handler. Call it on the loop's thread, before ev_loop_destroy(); then nothing
 * of this library stays registered on the loop. Returns the number of generators that did
 * not finish in time (>= 0), or -EINVAL. */
int agen_loop_shutdown(struct ev_loop *loop, double timeout);
/* Also for agen_loop_shutdown(): a step in progress is cancelled (agen_gen_ops.cancel),
 * so waiting leases leave their queues at once; the timeout counts from the call (not
 * from the loop's cached clock); it may be called from inside one of the loop's
 * callbacks (the results already on their way are delivered). -ECHILD for a loop
 * inherited across fork(). */

/* ---- Blocking convenience ----------------------------------------------------------------
 * For programs that do not run the loop themselves: these run the generator's loop
 * (ev_run(EVRUN_ONCE) repeatedly) until the result is in. Do not call them from a thread
 * other than the loop's. */

/* Next value: returns 0 and sets *ret_value (owned by the generator, valid until the next
 * step), AGEN_STOP, or -errno (-EBUSY/-ESTALE as agen_gen_anext(), -EDEADLK if the loop ran
 * out of watchers before the step finished). ret_value may be NULL. */
int agen_gen_next_sync(agen_gen *gen, const void **ret_value);
/* Close: returns the close status (0 or -errno), or -EDEADLK as above. A step in
 * progress is cancelled as by agen_gen_aclose(). */
int agen_gen_close_sync(agen_gen *gen);
/* The same with a limit of timeout seconds (< 0: none). On -ETIMEDOUT next cancels the
 * step and closes the generator (as asyncio.wait_for() on __anext__()); close returns
 * while the close goes on in the loop. */
int agen_gen_next_sync_timeout(agen_gen *gen, double timeout, const void **ret_value);
int agen_gen_close_sync_timeout(agen_gen *gen, double timeout);

/* ---- The agend client ------------------------------------------------------------------ */

typedef struct agen_client agen_client;

/* Opens a client of agend on loop. address: a socket path ("unix:PATH" and "@ABSTRACT"
 * work too); NULL = $AGEND_SOCKET if set, else the default (see agen_default_address()).
 * The control connection is opened here, so a daemon that is not there fails this call
 * (-ENOENT, -ECONNREFUSED, ...); later it is reopened on demand. No connect blocks: a
 * daemon that does not accept (listen backlog full) is retried from the loop for up to
 * 5 s, then the calls waiting on it fail with -ETIMEDOUT. loop NULL: the client
 * makes and owns a loop, for programs without one (use the *_sync calls); the last
 * agen_client_unref() then shuts that loop down (closing its leases) and destroys it.
 * The caller owns the one reference of *ret. */
int agen_client_new(struct ev_loop *loop, const char *address, agen_client **ret);

/* The client is freed when its last reference is dropped and its last lease generator is
 * freed; leases hold it. Call both on the loop's thread. */
agen_client *agen_client_ref(agen_client *client);
agen_client *agen_client_unref(agen_client *client);

/* Borrowed; valid while the client lives. */
struct ev_loop *agen_client_get_loop(agen_client *client);
const char *agen_client_get_address(agen_client *client);

/* The address a client uses without one: $AGEND_SOCKET if set; for root
 * /run/agend/io.agend.Lease; for others $XDG_RUNTIME_DIR/agend/io.agend.Lease if that
 * exists, else /run/agend/io.agend.Lease. *ret is the caller's, free() it. */
int agen_default_address(char **ret);

/* Flags of agen_client_call() and agen_call_sync(). */
#define AGEN_CALL_MORE (1u << 0)   /* the reply may come in several parts ("more") */
#define AGEN_CALL_ONEWAY (1u << 1) /* no reply ("oneway"); the callback is not called */

/* A reply to agen_client_call(). status: 0 for a reply, the -errno of error_name for an
 * error reply (io.agend.Lease.NoSuchLease → -ENOENT, NoSuchResource → -ENXIO, Timeout →
 * -ETIMEDOUT, PermissionDenied → -EPERM, LimitExceeded → -EUSERS, ProtocolError and
 * unknown errors → -EPROTO), or a local -errno with error_name NULL (-ECONNRESET: the
 * connection ended). parameters_json: the reply's parameters (or the error's), a JSON
 * object as a string, NULL only for local errors; borrowed for the call. continues:
 * more replies to this call follow. */
typedef void (*agen_reply_cb)(agen_client *client, int status, const char *error_name,
                              const char *parameters_json, bool continues, void *userdata);

/* Calls method ("io.agend.Lease.List", ...) on the client's control connection.
 * parameters_json: a JSON object as a string, or NULL for {}. Calls are pipelined: this
 * returns at once and does not wait for earlier replies; replies come in call order. A
 * call that does not end at once (a streaming Watch, a waiting Acquire) holds the replies
 * of the later calls on the connection, so give those their own client. cb fires from the
 * loop, once per reply (until continues is false), never with ONEWAY. Returns 0, -EINVAL
 * (bad JSON), -ENOMEM, or the error reconnecting. */
int agen_client_call(agen_client *client, const char *method, const char *parameters_json,
                     unsigned flags, agen_reply_cb cb, void *userdata);

/* Blocking, without a loop: connects to address (NULL = default), calls method, waits for
 * the reply (up to timeout seconds; < 0 = no limit), disconnects. flags: 0 or
 * AGEN_CALL_ONEWAY. Returns 0 and sets *ret_parameters_json; or, for an error reply, its
 * -errno (as agen_reply_cb) and sets both *ret_error_name and *ret_parameters_json; or a
 * local -errno and sets nothing. Results are the caller's, free() them; either pointer
 * may be NULL. */
int agen_call_sync(const char *address, const char *method, const char *parameters_json,
                   unsigned flags, double timeout, char **ret_parameters_json, char **ret_error_name);

/* Blocking, without a loop: asks agend (address NULL = the default) whether token is the
 * fencing token of a current holder of resource (one of them, for a counted resource),
 * waiting up to timeout seconds (< 0 = no limit). A guarded service calls it with the
 * token a writer presents and refuses the write when it is stale. Returns 1 current, 0
 * stale (ended, revoked, expired, or never granted on resource; also an unknown resource),
 * or a local -errno (-ENOENT, -ECONNREFUSED: agend not there; -ETIMEDOUT) or an error
 * reply's -errno. Anyone may ask. */
int agen_check_sync(const char *address, const char *resource, uint64_t token, double timeout);

/* ---- Leases ------------------------------------------------------------------------------ */

/* Zeroed: 1 unit, wait forever, no TTL, bound to the connection. */
typedef struct agen_lease_opts {
        unsigned units;          /* 0 = 1 */
        bool exclusive;          /* all units of the resource */
        bool try_once;           /* do not wait: the step fails with -ETIMEDOUT if busy */
        double timeout;          /* seconds to wait; 0 = no limit */
        double ttl;              /* seconds; 0 = none. Renewed by the generator at ~1/3 */
        bool detached;           /* outlives the connection; ends by TTL or release */
        const char *description; /* why; copied */
} agen_lease_opts;

typedef enum agen_lease_event_type {
        AGEN_LEASE_QUEUED,    /* waiting; position is the 1-based place in the queue */
        AGEN_LEASE_GRANTED,   /* held; id and token are set */
        AGEN_LEASE_RENEWED,   /* the generator renewed the TTL */
        AGEN_LEASE_RECLAIMED, /* the daemon restarted and the lease was taken back */
        AGEN_LEASE_LOST,      /* ended otherwise (not reclaimed, released by another, ...) */
        AGEN_LEASE_REVOKED,   /* an administrator took it back */
        AGEN_LEASE_EXPIRED,   /* its TTL ran out */
        AGEN_LEASE_DISCONNECTED, /* the connection to agend was lost: assume the lease may
                                  * be lost (check with the fencing token) until RECLAIMED
                                  * or LOST, which follows within about 15 s */
        _AGEN_LEASE_EVENT_TYPE_MAX,
        _AGEN_LEASE_EVENT_TYPE_FORCE_INT32 = INT32_MAX
} agen_lease_event_type;

/* The value a lease generator yields (agen_next_cb's value). The struct is owned by the
 * generator and valid until its next step; the strings it points to (id, reason) stay
 * valid until the generator is freed. LOST, REVOKED and EXPIRED are the last event: the
 * step after returns AGEN_STOP. */
typedef struct agen_lease_event {
        agen_lease_event_type type;
        const char *id;     /* NULL before the grant */
        uint64_t token;     /* fencing token, 0 before the grant */
        unsigned position;  /* QUEUED only */
        const char *reason; /* LOST, REVOKED, EXPIRED: why; else NULL */
} agen_lease_event;

/* A lease as a generator on the client's loop. Nothing is sent before the first
 * agen_gen_anext(); it then opens the lease's own connection and asks for the lease:
 * steps yield QUEUED while it waits, then GRANTED, then (one per step, as they happen)
 * RENEWED, DISCONNECTED, RECLAIMED, and finally LOST, REVOKED or EXPIRED; a step fails
 * with the Acquire error (-ETIMEDOUT, -ENXIO, -EPERM, -EUSERS, ...) if it is not granted.
 * opts.timeout (and try_once) is also enforced here: a daemon that does not answer in
 * time (stopped) fails the step with -ETIMEDOUT about 0.5 s after it.
 * A waiting step is cancellable: closing or dropping the generator while it waits leaves
 * the queue at once (the step gets -ECANCELED) and nothing is ever granted to it. Its
 * cleanup (agen_gen_aclose(), the finalizer, agen_loop_shutdown()) is the release round
 * trip: Release on the client's control connection, then the lease connection is closed;
 * if agend is unreachable then, the Release is retried as it comes back (for about 15 s).
 * If even that cannot run (abandoned at shutdown), closing the lease connection releases
 * a bound lease. When the connection to agend is lost it yields DISCONNECTED at once,
 * reconnects with back-off and reclaims the lease (RECLAIMED), or ends with LOST (not
 * reclaimed, or agend unreachable for about 15 s). The caller owns the reference of *ret; the
 * generator holds the client. resource and opts are copied; opts may be NULL.
 * Threads: freeing a lease generator may free its client, so drop the last reference of a
 * lease generator that is closed or was never started on the loop's thread (a started,
 * unfinished one may be dropped anywhere: the finalizer moves it to the loop).
 * Returns 0, -EINVAL, -ENOMEM. */
int agen_lease_new(agen_client *client, const char *resource, const agen_lease_opts *opts,
                   agen_gen **ret);
/* The same, returning the generator, or NULL on error (errno is set). */
agen_gen *agen_lease(agen_client *client, const char *resource, const agen_lease_opts *opts);

/* "queued", "granted", ...; NULL for an invalid value. Static string. */
const char *agen_lease_event_type_to_string(agen_lease_event_type type);

/* The lease a lease generator holds now: 0 and its id (valid until the generator is
 * freed) and fencing token; -ENODATA when it holds none (not yet granted, or ended or
 * closed; a DISCONNECTED lease still counts as held until LOST); -EINVAL if lease is not
 * a lease generator. Either pointer may be NULL. */
int agen_lease_get_current(agen_gen *lease, const char **ret_id, uint64_t *ret_token);

/* Why agend refused the lease, after a step failed with the Acquire's error: 0, the
 * varlink error name in *ret_name ("io.agend.Lease.Timeout", ...) and agend's reason in
 * words for a person in *ret_reason (may be NULL if agend gave none), both valid until the
 * generator is freed; -ENODATA if agend refused nothing (not failed, or failed for a local
 * reason such as -ECANCELED or an unreachable agend); -EINVAL if lease is not a lease
 * generator. Either pointer may be NULL. */
int agen_lease_get_error(agen_gen *lease, const char **ret_name, const char **ret_reason);

/* Hands a granted detached lease (opts.detached) over to the caller, who will release or
 * renew it with its secret from elsewhere (another process, a script): 0, the secret in
 * *ret_secret and, if ret_lease_json is not NULL, the lease as agend described it at the
 * grant (a JSON object, the Lease type of the interface) in *ret_lease_json, both the
 * caller's to free(). Afterwards the generator holds nothing: it stops watching and
 * renewing, its next step returns AGEN_STOP and its close releases nothing. -ENODATA if it
 * holds no lease (not granted yet, ended); -EOPNOTSUPP for a lease bound to the
 * connection (it cannot outlive the generator's connection); -EINVAL if lease is not a
 * lease generator; -ENOMEM (the generator still holds the lease). */
int agen_lease_hand_off(agen_gen *lease, char **ret_secret, char **ret_lease_json);

/* ---- Error names ----------------------------------------------------------------------- */

/* The varlink error name agend answers for a negative errno ("io.agend.Lease.Timeout" for
 * -ETIMEDOUT), or NULL if none; a static string. agen_error_from_name() is the reverse:
 * the negative errno the library reports for an error name (-EPROTO for NULL or a name it
 * does not know). One table, shared with agend. */
const char *agen_error_to_name(int error);
int agen_error_from_name(const char *name);

#ifdef __cplusplus
}
#endif

#endif

/* SPDX-License-Identifier: MIT */
#pragma once

/* A small library for tests that talk to the real agend in raw varlink bytes.
 *
 * - Agend: one daemon on a fresh temporary directory (mkdtemp) holding its socket, its
 *   state directory, its config file and its log (stderr). Start waits until the daemon
 *   answers org.varlink.service.GetInfo; stop is SIGTERM, kill is SIGKILL; a restart reuses
 *   the same directory. The daemon gets PR_SET_PDEATHSIG=SIGKILL, so a crashed test leaves
 *   no daemon behind.
 * - VConn: a raw Unix stream connection with a receive buffer; send a call (or any bytes),
 *   read one NUL-terminated reply. Every wait takes a timeout, so a hung daemon fails the
 *   test instead of hanging it.
 * - Holder: a forked child that takes a lease on its own connection and keeps it until it
 *   is killed (SIGKILL) or told to exit.
 * - helper_run_as(): runs a function in a forked child under another uid.
 *
 * Nothing here uses cmocka, so children may use all of it; the CALL_* macros at the end
 * are for test bodies. Replies are owned by a pool freed by helper_cleanup(); tests never
 * free them. Every VConn, Holder and Agend is tracked too, so helper_cleanup() (called from
 * a teardown, which cmocka runs also after a failed test) closes, kills and removes
 * everything. Functions return 0 or a negative errno. */

#include <json-c/json.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "macro.h"
#include "usec.h"

/* The longest any single reply may take before a test calls the daemon hung. */
#define HELPER_REPLY_TIMEOUT 5.0
/* The longest a start (until the daemon answers) or a stop may take. */
#define HELPER_START_TIMEOUT 15.0

typedef struct Agend {
        char dir[64];           /* the temporary directory, mode 0755 */
        char socket[128];       /* dir/io.agend.Lease */
        char state_dir[128];    /* dir/state: agend.db lives here */
        char db[160];           /* state_dir/agend.db */
        char config[128];       /* dir/agend.conf, always passed with --config */
        char log[128];          /* dir/agend.log: the daemon's stdout and stderr */
        char grace[32];         /* --grace argument; "" = the daemon's default */
        char sync[16];          /* --sync argument; "" = the daemon's default */
        pid_t pid;              /* the running daemon, or 0 */
        usec_t ready;           /* CLOCK_MONOTONIC when the last start first answered */
        int exit_status;        /* wait status of the last daemon that ended, or -1 */
} Agend;

/* Creates the temporary directory (and an empty config file); does not start. */
int agend_new(Agend **ret);
/* Declares a resource in the config file read at the next start. The only place that knows
 * the config syntax. */
int agend_declare_resource(Agend *a, const char *name, unsigned capacity);
/* Forks and execs $AGEND_BINARY; does not wait. */
int agend_spawn(Agend *a);
/* Waits until the daemon answers GetInfo on its socket; -ECHILD if it exited first
 * (a->exit_status says how), -ETIMEDOUT. Sets a->ready. */
int agend_wait_ready(Agend *a, double timeout);
/* agend_spawn() + agend_wait_ready(HELPER_START_TIMEOUT). Also used to restart on the same
 * state directory after agend_stop() or agend_kill(). */
int agend_start(Agend *a);
/* Waits for the daemon to exit by itself; 0 and the wait status in *ret_status. */
int agend_wait_exit(Agend *a, double timeout, int *ret_status);
/* SIGTERM and wait; -ETIMEDOUT (after a SIGKILL) if it did not exit in time. */
int agend_stop(Agend *a, int *ret_status);
/* SIGKILL and reap, like `kill -9`. */
int agend_kill(Agend *a);
/* The daemon's log so far (malloc'ed, NUL-terminated) or NULL. */
char *agend_read_log(const Agend *a);
/* Kills it if still running, prints the tail of its log to stderr, removes the directory. */
Agend *agend_free(Agend *a);

typedef struct VConn {
        int fd;
        char *buf;              /* received bytes not yet returned as a message */
        size_t len, size;
        bool eof;               /* the daemon closed (or reset) the connection */
} VConn;

enum {
        VL_MORE = 1 << 0,
        VL_ONEWAY = 1 << 1,
};

/* Connects (bounded by HELPER_REPLY_TIMEOUT even when the listen backlog is full). */
int vconn_open(const char *socket_path, VConn **ret);
int vconn_open_agend(const Agend *a, VConn **ret);
VConn *vconn_close(VConn *c);
/* Sends the bytes as they are (nothing appended), all of them or an error; bounded. */
int vconn_send_raw(VConn *c, const void *p, size_t n);
/* Sends {"method": method, "parameters": <params_fmt formatted>, "more"/"oneway"} + NUL.
 * params_fmt NULL: no parameters. */
int vconn_send(VConn *c, unsigned flags, const char *method, const char *params_fmt, ...) _printf_(4, 5);
int vconn_sendv(VConn *c, unsigned flags, const char *method, const char *params_fmt, va_list ap)
        _printf_(4, 0);
/* Reads one message: 0 and the parsed object (owned by the pool); -ETIMEDOUT;
 * -ECONNRESET when the daemon closed the connection; -EBADMSG if it is not JSON. */
int vconn_recv(VConn *c, double timeout, json_object **ret);
/* A call without "more", and its one reply (owned by the pool). */
int vconn_call(VConn *c, json_object **ret, const char *method, const char *params_fmt, ...) _printf_(4, 5);
/* Reads and drops messages until the daemon closes: 0, or -ETIMEDOUT. */
int vconn_wait_closed(VConn *c, double timeout);

/* Reply accessors; all NULL-safe. */
const char *reply_error(json_object *reply);            /* the error name, or NULL */
json_object *reply_params(json_object *reply);          /* "parameters", or NULL */
bool reply_continues(json_object *reply);
/* "state" of an Acquire reply ("queued", "granted"), or "" for anything else. */
const char *reply_state(json_object *reply);
/* Walks a dotted path ("lease.owner.pid"); NULL for a missing key and for a JSON null;
 * jhas() tells those two apart (a present null is true). */
json_object *jget(json_object *o, const char *path);
bool jhas(json_object *o, const char *path);
const char *jstr(json_object *o, const char *path);    /* NULL unless a string */
bool jis(json_object *o, const char *path, json_type type);
int64_t jint(json_object *o, const char *path);        /* INT64_MIN unless an integer */
double jdouble(json_object *o, const char *path);      /* NAN unless a number */
const char *jtext(json_object *o);                      /* for messages; owned by o */
/* Gives an object to the pool (for objects a test builds). */
json_object *helper_pool_add(json_object *o);
/* Takes a reply back from the pool and frees it now, for loops that read many replies
 * (the pool otherwise keeps each until helper_cleanup()). NULL is a no-op. */
void helper_pool_put(json_object *o);

typedef struct Holder {
        pid_t pid;
        int ctl;                /* parent end of the pipe: the child exits when it closes */
        json_object *reply;     /* the child's Acquire reply (owned by the pool) */
} Holder;

/* Forks a child that connects to a, sends Acquire with params_json (no "more") and
 * reports its reply; waits for that report up to timeout. The child then holds the lease
 * until holder_kill() or holder_free(). The reply may be an error; check it. */
int holder_start(const Agend *a, const char *params_json, double timeout, Holder **ret);
/* SIGKILL and reap. */
int holder_kill(Holder *h);
/* Tells the child to exit (closing its connection), reaps it. */
Holder *holder_free(Holder *h);

/* Forks; the child drops to uid/gid when running as root (setresgid/setresuid, no
 * supplementary groups), closes inherited connections and _exits with fn's return value.
 * Returns 0 and fn's exit code in *ret_code (or 128+signal), -ETIMEDOUT after killing it. */
int helper_run_as(uid_t uid, gid_t gid, int (*fn)(void *userdata), void *userdata, double timeout,
                  int *ret_code);

/* Raises the soft RLIMIT_NOFILE to at least n (and to the hard limit), for this process
 * and every daemon started after. */
int helper_raise_nofile(unsigned n);
double helper_now(void);                                /* CLOCK_MONOTONIC, seconds */
uint64_t helper_realtime_usec(void);                    /* CLOCK_REALTIME, µs */
void helper_sleep(double sec);
/* Closes every tracked VConn, frees every Holder and Agend, empties the pool. */
void helper_cleanup(void);

/* For test bodies (cmocka). */
#define LEASE_IF "io.agend.Lease."
#define CALL(c, method, ...)                                                            \
        ({                                                                              \
                json_object *_reply = NULL;                                             \
                int _r = vconn_call((c), &_reply, (method), __VA_ARGS__);               \
                if (_r < 0)                                                             \
                        fail_msg("%s: no reply: %s", (method), strerror(-_r));          \
                _reply;                                                                 \
        })
/* A call that must succeed; evaluates to its parameters (never NULL). */
#define CALL_OK(c, method, ...)                                                         \
        ({                                                                              \
                json_object *_rep = CALL(c, method, __VA_ARGS__);                       \
                if (reply_error(_rep))                                                  \
                        fail_msg("%s: unexpected error: %s", (method), jtext(_rep));    \
                json_object *_p = reply_params(_rep);                                   \
                if (!_p)                                                                \
                        _p = helper_pool_add(json_object_new_object());                 \
                _p;                                                                     \
        })
/* A call that must fail with the error name; evaluates to the error's parameters. */
#define CALL_ERR(c, error, method, ...)                                                 \
        ({                                                                              \
                json_object *_rep = CALL(c, method, __VA_ARGS__);                       \
                const char *_e = reply_error(_rep);                                     \
                if (!_e || strcmp(_e, (error)) != 0)                                    \
                        fail_msg("%s: expected %s, got %s", (method), (error), jtext(_rep)); \
                reply_params(_rep);                                                     \
        })
/* An Acquire (no "more") that must be granted: the grant's parameters, or its lease. */
#define GRANT(c, ...) assert_granted(CALL((c), LEASE_IF "Acquire", __VA_ARGS__))
#define GRANT_LEASE(c, ...) jget(GRANT(c, __VA_ARGS__), "lease")
/* Reads one message that must arrive within timeout. */
#define RECV(c, timeout)                                                                \
        ({                                                                              \
                json_object *_m = NULL;                                                 \
                int _r = vconn_recv((c), (timeout), &_m);                               \
                if (_r < 0)                                                             \
                        fail_msg("no message within %.1fs: %s", (double) (timeout), strerror(-_r)); \
                _m;                                                                     \
        })
#define OPEN(a)                                                                         \
        ({                                                                              \
                VConn *_c = NULL;                                                       \
                int _r = vconn_open_agend((a), &_c);                                    \
                if (_r < 0)                                                             \
                        fail_msg("connect %s: %s", (a)->socket, strerror(-_r));         \
                _c;                                                                     \
        })

/* Fixtures and checks for cmocka test files (include <cmocka.h> first). */
#ifdef cmocka_unit_test
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>


/* setup: a fresh agend, started, in *state. */
static inline int helper_setup(void **state) {
        Agend *a = NULL;
        int r = agend_new(&a);
        if (r >= 0)
                r = agend_start(a);
        if (r < 0) {
                fprintf(stderr, "setup: agend did not start: %s (wait status %d)\n", strerror(-r),
                        a ? a->exit_status : -1);
                helper_cleanup();
                return -1;
        }
        *state = a;
        return 0;
}

/* teardown: SIGTERM must make agend exit 0 (with clients still connected), then everything
 * the test made is closed, killed and removed, also after a failed test. */
static inline int helper_teardown(void **state) {
        Agend *a = *state;
        int st = 0, r = 0;
        if (a && a->pid > 0)
                r = agend_stop(a, &st);
        helper_cleanup();
        *state = NULL;
        if (r < 0) {
                fprintf(stderr, "teardown: agend did not exit on SIGTERM: %s\n", strerror(-r));
                return -1;
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                fprintf(stderr, "teardown: agend ended with wait status 0x%x on SIGTERM, not exit 0\n",
                        st);
                return -1;
        }
        return 0;
}

/* The shape of a Lease object, as the interface declares it. */
static inline void assert_lease_shape(json_object *l) {
        if (!json_object_is_type(l, json_type_object))
                fail_msg("not a lease object: %s", jtext(l));
        const char *id = jstr(l, "id");
        if (!id || !*id)
                fail_msg("lease.id is not a non-empty string: %s", jtext(l));
        if (!jstr(l, "resource") || !jis(l, "units", json_type_int) || jint(l, "units") < 1 ||
            !jis(l, "exclusive", json_type_boolean) || !jis(l, "token", json_type_int) ||
            jint(l, "token") < 1 || !jis(l, "owner", json_type_object) ||
            !jis(l, "owner.uid", json_type_int) || !jis(l, "owner.gid", json_type_int) ||
            !jis(l, "owner.pid", json_type_int) || !jstr(l, "owner.comm") || !jstr(l, "description") ||
            !jis(l, "created", json_type_int) || !jis(l, "detached", json_type_boolean) || !jstr(l, "state"))
                fail_msg("lease object lacks a field or has a wrong type: %s", jtext(l));
        if (jget(l, "ttl") && isnan(jdouble(l, "ttl")))
                fail_msg("lease.ttl is not a number: %s", jtext(l));
        if (jget(l, "deadline") && !jis(l, "deadline", json_type_int))
                fail_msg("lease.deadline is not an integer: %s", jtext(l));
}

/* A successful grant reply's parameters: state granted, a lease, a secret. */
static inline json_object *assert_granted(json_object *reply) {
        if (reply_error(reply))
                fail_msg("expected a grant, got %s", jtext(reply));
        json_object *p = reply_params(reply);
        if (!jstr(p, "state") || strcmp(jstr(p, "state"), "granted") != 0)
                fail_msg("expected state granted, got %s", jtext(reply));
        assert_lease_shape(jget(p, "lease"));
        if (!jstr(p, "secret") || !*jstr(p, "secret"))
                fail_msg("grant without a secret: %s", jtext(reply));
        return p;
}

/* A queued reply (with "more"): state queued, the expected position, continues. */
static inline void assert_queued(json_object *reply, int64_t position) {
        json_object *p = reply_params(reply);
        if (reply_error(reply) || !jstr(p, "state") || strcmp(jstr(p, "state"), "queued") != 0 ||
            jint(p, "position") != position || !reply_continues(reply))
                fail_msg("expected queued at position %lld with continues, got %s", (long long) position,
                         jtext(reply));
}

static inline void assert_error(json_object *reply, const char *error) {
        const char *e = reply_error(reply);
        if (!e || strcmp(e, error) != 0)
                fail_msg("expected error %s, got %s", error, jtext(reply));
}

/* Nothing arrives on c within sec (a waiter stays waiting, a call stays pending). */
static inline void assert_silent(VConn *c, double sec) {
        json_object *m = NULL;
        int r = vconn_recv(c, sec, &m);
        if (r != -ETIMEDOUT)
                fail_msg("expected nothing within %.2fs, got %s", sec, r < 0 ? strerror(-r) : jtext(m));
}
#endif

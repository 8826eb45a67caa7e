/* SPDX-License-Identifier: MIT */
/* agenctl against the real agend: every verb, human and --json output (parsed and
 * checked), exit codes, run's signal handling on a revoked lease, and the table as a
 * terminal of 80 columns shows it (a pseudo-terminal of that size).
 *
 * agenctl is run as a program ($AGENCTL_BINARY), with AGEND_SOCKET pointing at a daemon on
 * a temporary directory (tests/helper-agend.h). Every wait is bounded. */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <grp.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper-agend.h"

/* Exit codes of agenctl (docs/agenctl.md). */
#define X_USAGE 64
#define X_NOT_FOUND 66
#define X_UNREACHABLE 69
#define X_BUSY 75
#define X_PERMISSION 77
#define X_LOST 79

#define CTL_TIMEOUT 10.0

typedef struct Ctl {
        pid_t pid;
        int out, err;           /* pipes (or the pty master in out), -1 at EOF */
        char *obuf, *ebuf;
        size_t olen, elen;
        int status;             /* wait status once reaped, else -1 */
} Ctl;

static Ctl *ctls[32];
static uid_t spawn_uid; /* ctl_spawn_as(): the child runs under this uid; 0 = ours */
static size_t n_ctls;

static const char *ctl_binary(void) {
        const char *b = getenv("AGENCTL_BINARY");
        return b && *b ? b : "agenctl";
}

static void ctl_child_exec(const char *socket_path, const char *const *env, char *const *argv) {
        if (socket_path)
                setenv("AGEND_SOCKET", socket_path, 1);
        unsetenv("COLUMNS");
        unsetenv("LINES");
        unsetenv("AGEN_LEASE_SECRET");
        /* No pager on the test's pseudo-terminals, unless a test asks for one in env. */
        setenv("AGENCTL_PAGER", "cat", 1);
        for (size_t i = 0; env && env[i]; i++)
                putenv((char *) env[i]);
        const char *bin = ctl_binary();
        char *args[64];
        size_t n = 0;
        args[n++] = (char *) bin;
        for (size_t i = 0; argv[i] && n < 63; i++)
                args[n++] = argv[i];
        args[n] = NULL;
        execv(bin, args);
        _exit(120);
}

static Ctl *ctl_spawn_v(const char *socket_path, const char *const *env, char *const *argv) {
        int o[2], e[2];
        assert_return(pipe2(o, O_CLOEXEC) == 0 && pipe2(e, O_CLOEXEC) == 0, NULL);
        pid_t pid = fork();
        assert_return(pid >= 0, NULL);
        if (pid == 0) {
                int devnull = open("/dev/null", O_RDONLY);
                dup2(devnull, 0);
                dup2(o[1], 1);
                dup2(e[1], 2);
                if (spawn_uid != 0 && (setgroups(0, NULL) < 0 || setresgid(spawn_uid, spawn_uid, spawn_uid) < 0 ||
                                       setresuid(spawn_uid, spawn_uid, spawn_uid) < 0))
                        _exit(121);
                ctl_child_exec(socket_path, env, argv);
        }
        close(o[1]);
        close(e[1]);
        Ctl *c = calloc(1, sizeof(*c));
        *c = (Ctl) { .pid = pid, .out = o[0], .err = e[0], .status = -1 };
        c->obuf = calloc(1, 1);
        c->ebuf = calloc(1, 1);
        if (n_ctls < ELEMENTSOF(ctls))
                ctls[n_ctls++] = c;
        return c;
}

/* The arguments end with NULL. */
static Ctl *ctl_spawn(const Agend *a, const char *const *env, ...) {
        char *argv[64];
        size_t n = 0;
        va_list ap;
        va_start(ap, env);
        for (char *s; n < 63 && (s = va_arg(ap, char *));)
                argv[n++] = s;
        va_end(ap);
        argv[n] = NULL;
        return ctl_spawn_v(a ? a->socket : NULL, env, argv);
}

/* As ctl_spawn(), under another uid (the child drops to it before exec; root only). */
static Ctl *ctl_spawn_as(const Agend *a, uid_t uid, ...) {
        char *argv[64];
        size_t n = 0;
        va_list ap;
        va_start(ap, uid);
        for (char *s; n < 63 && (s = va_arg(ap, char *));)
                argv[n++] = s;
        va_end(ap);
        argv[n] = NULL;
        spawn_uid = uid;
        Ctl *c = ctl_spawn_v(a->socket, NULL, argv);
        spawn_uid = 0;
        return c;
}

static void append(char **buf, size_t *len, const char *p, size_t n) {
        *buf = realloc(*buf, *len + n + 1);
        memcpy(*buf + *len, p, n);
        *len += n;
        (*buf)[*len] = 0;
}

/* Reads what is there, waiting up to timeout for something. */
static void ctl_pump(Ctl *c, double timeout) {
        struct pollfd p[2] = { { .fd = c->out, .events = POLLIN }, { .fd = c->err, .events = POLLIN } };
        if (c->out < 0 && c->err < 0)
                return;
        if (poll(p, 2, (int) (timeout * 1000)) <= 0)
                return;
        char buf[4096];
        for (int i = 0; i < 2; i++) {
                if (p[i].fd < 0 || !(p[i].revents & (POLLIN | POLLHUP | POLLERR)))
                        continue;
                ssize_t k = read(p[i].fd, buf, sizeof(buf));
                if (k > 0) {
                        if (i == 0)
                                append(&c->obuf, &c->olen, buf, (size_t) k);
                        else
                                append(&c->ebuf, &c->elen, buf, (size_t) k);
                } else if (k == 0 || (k < 0 && errno != EINTR && errno != EAGAIN)) {
                        close(p[i].fd);
                        if (i == 0)
                                c->out = -1;
                        else
                                c->err = -1;
                }
        }
}

/* Waits until stdout contains needle; false on timeout or exit without it. */
static bool ctl_wait_output(Ctl *c, const char *needle, double timeout) {
        double end = helper_now() + timeout;
        while (!strstr(c->obuf, needle)) {
                if (helper_now() > end || (c->out < 0 && c->err < 0))
                        return false;
                ctl_pump(c, 0.05);
        }
        return true;
}

/* Waits until stderr contains needle; false on timeout or exit without it. */
static bool ctl_wait_stderr(Ctl *c, const char *needle, double timeout) {
        double end = helper_now() + timeout;
        while (!strstr(c->ebuf, needle)) {
                if (helper_now() > end || (c->out < 0 && c->err < 0))
                        return false;
                ctl_pump(c, 0.05);
        }
        return true;
}

/* Waits for the exit; returns the exit code (128+N for a signal), or -1 on timeout (the
 * process is then killed). */
static int ctl_wait(Ctl *c, double timeout) {
        double end = helper_now() + timeout;
        while (c->status < 0) {
                ctl_pump(c, 0.02);
                int st;
                pid_t k = waitpid(c->pid, &st, WNOHANG);
                if (k == c->pid) {
                        c->status = st;
                        break;
                }
                if (helper_now() > end) {
                        kill(c->pid, SIGKILL);
                        waitpid(c->pid, &st, 0);
                        c->status = st;
                        return -1;
                }
        }
        /* The rest of the output. */
        for (int i = 0; i < 100 && (c->out >= 0 || c->err >= 0); i++)
                ctl_pump(c, 0.05);
        return WIFEXITED(c->status) ? WEXITSTATUS(c->status) : 128 + WTERMSIG(c->status);
}

static void ctl_free(Ctl *c) {
        if (!c)
                return;
        if (c->status < 0) {
                kill(c->pid, SIGKILL);
                waitpid(c->pid, NULL, 0);
        }
        if (c->out >= 0)
                close(c->out);
        if (c->err >= 0)
                close(c->err);
        free(c->obuf);
        free(c->ebuf);
        for (size_t i = 0; i < n_ctls; i++)
                if (ctls[i] == c)
                        ctls[i] = ctls[--n_ctls];
        free(c);
}

/* Runs agenctl to its end. The output stays valid until the next test's teardown. */
typedef struct Result {
        int code;
        const char *out, *err;
        Ctl *ctl;
} Result;

#define CTL(a, ...)                                                                     \
        ({                                                                              \
                Ctl *_c = ctl_spawn((a), NULL, __VA_ARGS__, NULL);                      \
                assert_non_null(_c);                                                    \
                int _code = ctl_wait(_c, CTL_TIMEOUT);                                  \
                if (_code < 0)                                                          \
                        fail_msg("agenctl did not exit within %.0fs; stderr: %s", CTL_TIMEOUT, _c->ebuf); \
                (Result) { .code = _code, .out = _c->obuf, .err = _c->ebuf, .ctl = _c }; \
        })

#define assert_code(res, expected)                                                      \
        do {                                                                            \
                if ((res).code != (expected))                                           \
                        fail_msg("exit code %d, expected %d\nstdout: %s\nstderr: %s", (res).code, (expected), \
                                 (res).out, (res).err);                                 \
        } while (0)

#define assert_contains(hay, needle)                                                    \
        do {                                                                            \
                if (!strstr((hay), (needle)))                                           \
                        fail_msg("expected '%s' in:\n%s", (needle), (hay));             \
        } while (0)

static json_object *parse_json(const char *text) {
        json_object *o = json_tokener_parse(text);
        if (!o)
                fail_msg("not JSON: %s", text);
        return helper_pool_add(o);
}

/* The current leases and waiters, through agenctl --json list. */
static json_object *list_json(const Agend *a) {
        Result r = CTL(a, "--json=short", "list");
        assert_code(r, 0);
        return parse_json(r.out);
}

static size_t n_leases(const Agend *a) {
        return json_object_array_length(jget(list_json(a), "leases"));
}

static size_t n_waiters(const Agend *a) {
        return json_object_array_length(jget(list_json(a), "waiters"));
}

/* Polls until the number of leases (or waiters) is n. */
static bool wait_count(const Agend *a, bool waiters, size_t n, double timeout) {
        double end = helper_now() + timeout;
        do {
                if ((waiters ? n_waiters(a) : n_leases(a)) == n)
                        return true;
                helper_sleep(0.02);
        } while (helper_now() < end);
        return false;
}

/* The id of the first lease with this description. */
static const char *lease_id_by_description(const Agend *a, const char *description) {
        json_object *leases = jget(list_json(a), "leases");
        for (size_t i = 0; i < json_object_array_length(leases); i++) {
                json_object *l = json_object_array_get_idx(leases, i);
                if (jstr(l, "description") && strcmp(jstr(l, "description"), description) == 0)
                        return jstr(l, "id");
        }
        return NULL;
}

static int setup(void **state) {
        Agend *a = NULL;
        if (agend_new(&a) < 0 || agend_declare_resource(a, "gpu", 1) < 0 ||
            agend_declare_resource(a, "pool", 3) < 0 || agend_start(a) < 0) {
                fprintf(stderr, "setup: agend did not start\n");
                helper_cleanup();
                return -1;
        }
        *state = a;
        return 0;
}

static int teardown(void **state) {
        while (n_ctls > 0)
                ctl_free(ctls[n_ctls - 1]);
        return helper_teardown(state);
}

/* ---- command line ---- */

static void test_usage(void **state) {
        Agend *a = *state;
        Result r;

        r = CTL(a, "--help");
        assert_code(r, 0);
        assert_contains(r.out, "Verbs:");
        assert_contains(r.out, "run RESOURCE -- COMMAND");

        r = CTL(a, "run", "--help");
        assert_code(r, 0);
        assert_contains(r.out, "--kill-delay");
        assert_contains(r.out, "AGEN_LEASE_ID");

        r = CTL(a, "help", "history");
        assert_code(r, 0);
        assert_contains(r.out, "--lines");

        r = CTL(a, "--version");
        assert_code(r, 0);
        assert_contains(r.out, "agenctl ");

        r = CTL(a, "frobnicate");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "unknown verb 'frobnicate'");
        assert_contains(r.err, "--help");

        r = CTL(a, "list", "--units", "2");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "--units does not apply to 'list'");

        r = CTL(a, "--bogus");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "unknown option");

        r = CTL(a, "run", "gpu");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "COMMAND");

        r = CTL(a, "revoke", "abc");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "--reason");

        r = CTL(a, "run", "gpu", "--units", "zero", "--", "true");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "--units");

        r = CTL(a, "run", "gpu", "--nowait", "--timeout", "3", "--", "true");
        assert_code(r, X_USAGE);

        r = CTL(a, "show");
        assert_code(r, X_USAGE);

        r = CTL(a, "acquire", "gpu", "--detach");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "--ttl");
}

static void test_unreachable(void **state) {
        Ctl *c = ctl_spawn_v("/nonexistent/agend.sock", NULL, (char *[]) { "status", NULL });
        int code = ctl_wait(c, CTL_TIMEOUT);
        assert_int_equal(code, X_UNREACHABLE);
        assert_contains(c->ebuf, "agend is not running at /nonexistent/agend.sock");
        assert_contains(c->ebuf, "systemctl start agend");

        c = ctl_spawn_v("/nonexistent/agend.sock", NULL, (char *[]) { "run", "gpu", "--", "true", NULL });
        assert_int_equal(ctl_wait(c, CTL_TIMEOUT), X_UNREACHABLE);
        assert_contains(c->ebuf, "agend is not running");
}

/* ---- queries ---- */

static void test_status(void **state) {
        Agend *a = *state;
        Result r = CTL(a, "status");
        assert_code(r, 0);
        assert_contains(r.out, "agend ");
        assert_contains(r.out, "Uptime:");
        assert_contains(r.out, "Sync: normal");

        r = CTL(a, "status", "--json");
        assert_code(r, 0);
        json_object *o = parse_json(r.out);
        assert_non_null(jstr(o, "version"));
        assert_true(jis(o, "uptime", json_type_double) || jis(o, "uptime", json_type_int));
        assert_true(jis(o, "leases", json_type_int));
        assert_true(jis(o, "connections", json_type_int));
        assert_string_equal(jstr(o, "sync"), "normal");

        r = CTL(a, "status", "--json=pretty");
        assert_code(r, 0);
        assert_non_null(strchr(r.out, '\n'));
        assert_true(strchr(r.out, '\n') < r.out + strlen(r.out) - 1); /* several lines */
        parse_json(r.out);
}

static void test_resources(void **state) {
        Agend *a = *state;
        Result r = CTL(a, "resources");
        assert_code(r, 0);
        assert_contains(r.out, "NAME");
        assert_contains(r.out, "CAPACITY");
        assert_contains(r.out, "gpu");
        assert_contains(r.out, "2 resources.");

        r = CTL(a, "--json", "resources");
        assert_code(r, 0);
        json_object *res = jget(parse_json(r.out), "resources");
        assert_non_null(res);
        bool gpu = false, pool = false;
        for (size_t i = 0; i < json_object_array_length(res); i++) {
                json_object *o = json_object_array_get_idx(res, i);
                if (strcmp(jstr(o, "name"), "gpu") == 0) {
                        gpu = true;
                        assert_int_equal(jint(o, "capacity"), 1);
                        assert_true(jis(o, "declared", json_type_boolean));
                }
                if (strcmp(jstr(o, "name"), "pool") == 0) {
                        pool = true;
                        assert_int_equal(jint(o, "capacity"), 3);
                }
        }
        assert_true(gpu && pool);

        r = CTL(a, "resources", "--no-legend");
        assert_code(r, 0);
        assert_null(strstr(r.out, "NAME"));
        assert_null(strstr(r.out, "resources."));
}

/* Leases and waiters, in every query verb. */
static void test_list_show_history(void **state) {
        Agend *a = *state;

        Result r = CTL(a, "list");
        assert_code(r, 0);
        assert_contains(r.out, "0 leases, 0 waiters.");

        Ctl *holder = ctl_spawn(a, NULL, "acquire", "gpu", "--description", "holder of gpu", NULL);
        assert_true(ctl_wait_output(holder, "Holding lease", CTL_TIMEOUT));
        Ctl *waiter = ctl_spawn(a, NULL, "run", "gpu", "-d", "waiter", "--", "true", NULL);
        assert_true(wait_count(a, true, 1, CTL_TIMEOUT));

        json_object *l = list_json(a);
        json_object *lease = json_object_array_get_idx(jget(l, "leases"), 0);
        assert_lease_shape(lease);
        assert_string_equal(jstr(lease, "resource"), "gpu");
        assert_string_equal(jstr(lease, "description"), "holder of gpu");
        assert_int_equal(jint(lease, "owner.pid"), holder->pid);
        assert_string_equal(jstr(lease, "state"), "held");
        json_object *w = json_object_array_get_idx(jget(l, "waiters"), 0);
        assert_int_equal(jint(w, "position"), 1);
        assert_int_equal(jint(w, "owner.pid"), waiter->pid);
        assert_string_equal(jstr(w, "description"), "waiter");
        const char *id = jstr(lease, "id");
        assert_contains(holder->obuf, id);

        r = CTL(a, "list");
        assert_code(r, 0);
        assert_contains(r.out, "ID");
        assert_contains(r.out, "DESCRIPTION");
        assert_contains(r.out, id);
        assert_contains(r.out, "holder of gpu");
        assert_contains(r.out, "POS");
        assert_contains(r.out, "waiter");
        assert_contains(r.out, "1 lease, 1 waiter.");

        r = CTL(a, "list", "pool");
        assert_code(r, 0);
        assert_contains(r.out, "0 leases, 0 waiters on pool.");
        r = CTL(a, "--json", "list", "pool");
        assert_code(r, 0);
        assert_int_equal(json_object_array_length(jget(parse_json(r.out), "leases")), 0);

        r = CTL(a, "show", id);
        assert_code(r, 0);
        assert_contains(r.out, "Resource: gpu");
        assert_contains(r.out, "holder of gpu");
        assert_contains(r.out, "Events:");
        assert_contains(r.out, "granted");

        r = CTL(a, "show", id, "--json");
        assert_code(r, 0);
        json_object *s = parse_json(r.out);
        assert_lease_shape(s);
        assert_string_equal(jstr(s, "id"), id);

        r = CTL(a, "show", "0000000000000000");
        assert_code(r, X_NOT_FOUND);
        assert_contains(r.err, "no lease 0000000000000000");

        r = CTL(a, "history", "gpu");
        assert_code(r, 0);
        assert_contains(r.out, "EVENT");
        assert_contains(r.out, "granted");
        assert_contains(r.out, "queued");

        r = CTL(a, "--json", "history", "-n", "50");
        assert_code(r, 0);
        json_object *events = jget(parse_json(r.out), "events");
        assert_non_null(events);
        bool granted = false;
        for (size_t i = 0; i < json_object_array_length(events); i++) {
                json_object *ev = json_object_array_get_idx(events, i);
                assert_non_null(jstr(ev, "type"));
                assert_true(jis(ev, "time", json_type_int));
                if (strcmp(jstr(ev, "type"), "granted") == 0 && jstr(ev, "lease") && strcmp(jstr(ev, "lease"), id) == 0)
                        granted = true;
        }
        assert_true(granted);
        r = CTL(a, "--json", "history", "-n", "1");
        assert_code(r, 0);
        assert_int_equal(json_object_array_length(jget(parse_json(r.out), "events")), 1);

        /* The holder lets go on SIGINT; the waiter then runs and ends. */
        kill(holder->pid, SIGINT);
        assert_int_equal(ctl_wait(holder, CTL_TIMEOUT), 0);
        assert_int_equal(ctl_wait(waiter, CTL_TIMEOUT), 0);
        assert_int_equal(n_leases(a), 0);
}

/* agend answers List and History in pages of at most 1000 (with a cursor): agenctl follows
 * the cursor, so list shows every lease and history as many events as asked for. */
static void test_list_history_pages(void **state) {
        Agend *a = *state;
        enum { N = 1200, BATCH = 200 };
        VConn *c = NULL;
        assert_int_equal(vconn_open_agend(a, &c), 0);
        char *buf = malloc(128 * BATCH);
        assert_non_null(buf);
        for (unsigned i = 0; i < N; i += BATCH) {
                size_t len = 0;
                for (unsigned j = 0; j < BATCH; j++)
                        len += (size_t) snprintf(buf + len, 128,
                                                 "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":"
                                                 "{\"resource\":\"page%u\"}}",
                                                 i + j) +
                               1;
                assert_int_equal(vconn_send_raw(c, buf, len), 0);
                for (unsigned j = 0; j < BATCH; j++) {
                        json_object *m = NULL;
                        assert_int_equal(vconn_recv(c, CTL_TIMEOUT, &m), 0);
                        assert_granted(m);
                }
        }
        free(buf);

        /* Every lease, each once, in token order. */
        json_object *leases = jget(list_json(a), "leases");
        assert_int_equal(json_object_array_length(leases), N);
        for (size_t i = 1; i < N; i++)
                assert_true(jint(json_object_array_get_idx(leases, i), "token") >
                            jint(json_object_array_get_idx(leases, i - 1), "token"));
        Result r = CTL(a, "list");
        assert_code(r, 0);
        assert_contains(r.out, "1200 leases, 0 waiters.");

        /* 1100 of the 1200 grants: two pages, the newest last, oldest first. */
        r = CTL(a, "--json=short", "history", "-n", "1100");
        assert_code(r, 0);
        json_object *events = jget(parse_json(r.out), "events");
        assert_int_equal(json_object_array_length(events), 1100);
        for (size_t i = 1; i < 1100; i++)
                assert_true(jint(json_object_array_get_idx(events, i), "token") >
                            jint(json_object_array_get_idx(events, i - 1), "token"));
        assert_int_equal(jint(json_object_array_get_idx(events, 1099), "token"),
                         jint(json_object_array_get_idx(leases, N - 1), "token"));
        vconn_close(c);
}

/* ---- run ---- */

static void test_run_status_and_env(void **state) {
        Agend *a = *state;
        Result r = CTL(a, "run", "gpu", "--", "sh", "-c", "exit 7");
        assert_code(r, 7);

        r = CTL(a, "run", "gpu", "sh", "-c", "echo \"$AGEN_LEASE_ID $AGEN_LEASE_TOKEN $AGEN_LEASE_RESOURCE\"");
        assert_code(r, 0);
        char id[64] = "";
        unsigned long long token = 0;
        char res[32] = "";
        assert_int_equal(sscanf(r.out, "%63s %llu %31s", id, &token, res), 3);
        assert_true(strlen(id) > 0);
        assert_true(token > 0);
        assert_string_equal(res, "gpu");
        /* The release is confirmed before run exits: nothing is left. */
        assert_int_equal(n_leases(a), 0);
        /* ... and it was the Release round trip (a pending step cancelled, then the close),
         * not the end of agenctl's connection. */
        VConn *hc = OPEN(a);
        json_object *evs = jget(CALL_OK(hc, LEASE_IF "History", "{\"resource\":\"gpu\"}"), "events");
        const char *how = NULL;
        for (size_t i = 0; i < json_object_array_length(evs); i++) {
                json_object *ev = json_object_array_get_idx(evs, i);
                if (jstr(ev, "lease") && strcmp(jstr(ev, "lease"), id) == 0 && jstr(ev, "type") &&
                    strcmp(jstr(ev, "type"), "released") == 0)
                        how = jstr(ev, "reason");
        }
        assert_non_null(how);
        assert_string_not_equal(how, "connection closed");

        /* The command's own options are its own. */
        r = CTL(a, "run", "pool", "--units", "2", "--", "sh", "-c", "echo -n x; exit 3", "--units");
        assert_code(r, 3);
        assert_string_equal(r.out, "x");

        r = CTL(a, "run", "gpu", "--", "sh", "-c", "kill -TERM $$");
        assert_code(r, 128 + SIGTERM);

        r = CTL(a, "run", "gpu", "--", "/nonexistent/command");
        assert_code(r, 127);
        assert_contains(r.err, "cannot run /nonexistent/command");
        assert_int_equal(n_leases(a), 0);
}

static void test_run_busy(void **state) {
        Agend *a = *state;
        Ctl *holder = ctl_spawn(a, NULL, "acquire", "gpu", "-d", "busy holder", NULL);
        assert_true(ctl_wait_output(holder, "Holding lease", CTL_TIMEOUT));

        double t0 = helper_now();
        Result r = CTL(a, "run", "gpu", "--nowait", "--", "true");
        assert_code(r, X_BUSY);
        assert_contains(r.err, "gpu is busy");
        assert_contains(r.err, "held by");
        assert_true(helper_now() - t0 < 2.0);

        r = CTL(a, "run", "gpu", "--nowait", "-E", "3", "--", "true");
        assert_code(r, 3);

        t0 = helper_now();
        r = CTL(a, "run", "gpu", "--timeout", "300ms", "--", "true");
        assert_code(r, X_BUSY);
        assert_contains(r.err, "timed out after 300ms waiting for gpu");
        assert_true(helper_now() - t0 >= 0.25);

        r = CTL(a, "acquire", "gpu", "--nowait");
        assert_code(r, X_BUSY);

        r = CTL(a, "acquire", "gpu", "--nowait", "--detach", "--ttl", "10");
        assert_code(r, X_BUSY);
        assert_contains(r.err, "gpu is busy");

        kill(holder->pid, SIGTERM);
        assert_int_equal(ctl_wait(holder, CTL_TIMEOUT), 0);
}

/* The brief: a revoked lease stops the command quickly, and run says why with its own code. */
static void test_run_revoked(void **state) {
        Agend *a = *state;
        Ctl *run = ctl_spawn(a, NULL, "run", "gpu", "-d", "victim", "--kill-delay", "5s", "--", "sleep", "60", NULL);
        assert_true(wait_count(a, false, 1, CTL_TIMEOUT));
        const char *id = lease_id_by_description(a, "victim");
        assert_non_null(id);

        /* From the revoke to run's exit: agend pushes the end to agenctl's Watch, SIGTERM
         * goes out at once and sleep dies of it. The SIGKILL would come only after 5 s, so
         * an exit before that is SIGTERM's (a bound from the semantics, not a speed
         * target: it holds on a busy machine). */
        double t0 = helper_now();
        Result r = CTL(a, "revoke", id, "--reason", "maintenance window");
        assert_code(r, 0);
        int code = ctl_wait(run, CTL_TIMEOUT);
        double took = helper_now() - t0;
        assert_int_equal(code, X_LOST);
        assert_contains(run->ebuf, "was revoked: maintenance window");
        if (took >= 5.0)
                fail_msg("run took %.3fs after the revoke: its command did not stop on SIGTERM", took);

        /* A command that ignores SIGTERM (and its children, which inherit that) gets
         * SIGKILL after the delay. */
        run = ctl_spawn(a, NULL, "run", "gpu", "-d", "stubborn", "--kill-delay", "300ms", "--", "sh", "-c",
                        "trap '' TERM; sleep 60; exit 0", NULL);
        assert_true(wait_count(a, false, 1, CTL_TIMEOUT));
        id = lease_id_by_description(a, "stubborn");
        assert_non_null(id);
        /* Timed from before the revoke, so that the 300 ms delay, which starts after it,
         * is a lower bound however busy the machine; the sleep 60 ends within
         * CTL_TIMEOUT only by the SIGKILL. */
        t0 = helper_now();
        r = CTL(a, "revoke", id, "--reason", "stop");
        assert_code(r, 0);
        code = ctl_wait(run, CTL_TIMEOUT);
        took = helper_now() - t0;
        assert_int_equal(code, X_LOST);
        if (took < 0.3)
                fail_msg("the stubborn command was killed %.3fs after the revoke, before the 300 ms delay", took);
        assert_int_equal(n_leases(a), 0);

        r = CTL(a, "revoke", "0000000000000000", "--reason", "x");
        assert_code(r, X_NOT_FOUND);
        assert_contains(r.err, "no lease");
}

/* A TTL that is not renewed (the lease renews itself; a stopped agenctl does not). */
static void test_run_expired(void **state) {
        Agend *a = *state;
        Ctl *run = ctl_spawn(a, NULL, "run", "gpu", "-d", "ttl", "--ttl", "1s", "--kill-delay", "1s", "--", "sleep",
                             "60", NULL);
        assert_true(wait_count(a, false, 1, CTL_TIMEOUT));
        /* Renewed by agenctl while it runs: still there after two TTLs. */
        helper_sleep(2.0);
        assert_int_equal(n_leases(a), 1);
        /* Stopped, agenctl cannot renew: the lease expires; continued, it stops the command. */
        kill(run->pid, SIGSTOP);
        helper_sleep(2.0);
        kill(run->pid, SIGCONT);
        int code = ctl_wait(run, CTL_TIMEOUT);
        assert_int_equal(code, X_LOST);
        assert_contains(run->ebuf, "expired");
}

/* The brief: a waiting run leaves the queue and exits on SIGTERM/SIGINT. */
static void test_run_waiting_interrupted(void **state) {
        Agend *a = *state;
        Ctl *holder = ctl_spawn(a, NULL, "acquire", "gpu", NULL);
        assert_true(ctl_wait_output(holder, "Holding lease", CTL_TIMEOUT));

        Ctl *waiter = ctl_spawn(a, NULL, "run", "gpu", "--", "touch", "/nonexistent/should-not-run", NULL);
        assert_true(wait_count(a, true, 1, CTL_TIMEOUT));
        double t0 = helper_now();
        kill(waiter->pid, SIGTERM);
        assert_int_equal(ctl_wait(waiter, CTL_TIMEOUT), 128 + SIGTERM);
        assert_true(helper_now() - t0 < 1.0);
        assert_true(wait_count(a, true, 0, 2.0));

        waiter = ctl_spawn(a, NULL, "run", "gpu", "--", "true", NULL);
        assert_true(wait_count(a, true, 1, CTL_TIMEOUT));
        kill(waiter->pid, SIGINT);
        assert_int_equal(ctl_wait(waiter, CTL_TIMEOUT), 128 + SIGINT);
        assert_true(wait_count(a, true, 0, 2.0));

        kill(holder->pid, SIGTERM);
        assert_int_equal(ctl_wait(holder, CTL_TIMEOUT), 0);
        assert_int_equal(n_leases(a), 0);
}

/* Signals to run go to the command; its status is run's. */
static void test_run_forwards_signals(void **state) {
        Agend *a = *state;
        Ctl *run = ctl_spawn(a, NULL, "run", "gpu", "--", "sh", "-c",
                             "trap 'echo got-usr1; exit 42' USR1; echo ready; while :; do sleep 0.05; done", NULL);
        assert_true(ctl_wait_output(run, "ready", CTL_TIMEOUT));
        kill(run->pid, SIGUSR1);
        assert_int_equal(ctl_wait(run, CTL_TIMEOUT), 42);
        assert_contains(run->obuf, "got-usr1");
        assert_int_equal(n_leases(a), 0);
}

/* ---- acquire, release, renew ---- */

static int release_as_nobody(void *userdata) {
        const char **args = userdata;
        Ctl *c = ctl_spawn_v(args[0], NULL, (char *[]) { "release", (char *) args[1], NULL });
        int code = ctl_wait(c, CTL_TIMEOUT);
        return code == X_PERMISSION && strstr(c->ebuf, "permission denied") ? 0 : 100 + (code & 0x3f);
}

static void test_acquire_detach(void **state) {
        Agend *a = *state;
        Result r = CTL(a, "acquire", "pool", "--detach", "--ttl", "30s", "-d", "detached one");
        assert_code(r, 0);
        char id[64] = "", secret[256] = "";
        const char *p = strstr(r.out, "AGEN_LEASE_ID=");
        assert_non_null(p);
        sscanf(p, "AGEN_LEASE_ID=%63s", id);
        p = strstr(r.out, "AGEN_LEASE_SECRET=");
        assert_non_null(p);
        sscanf(p, "AGEN_LEASE_SECRET=%255s", secret);
        assert_non_null(strstr(r.out, "AGEN_LEASE_TOKEN="));

        /* It outlived agenctl. */
        json_object *leases = jget(list_json(a), "leases");
        assert_int_equal(json_object_array_length(leases), 1);
        json_object *l = json_object_array_get_idx(leases, 0);
        assert_string_equal(jstr(l, "id"), id);
        assert_true(jis(l, "detached", json_type_boolean) && json_object_get_boolean(jget(l, "detached")));

        r = CTL(a, "renew", id, "--ttl", "60", "--secret", secret);
        assert_code(r, 0);
        assert_contains(r.out, "Renewed lease");
        r = CTL(a, "renew", id, "--secret", secret, "--json");
        assert_code(r, 0);
        json_object *renewed = parse_json(r.out);
        assert_lease_shape(renewed);
        assert_true(jdouble(renewed, "ttl") > 59.0);

        /* Not the holder, not root: PermissionDenied, exit 77. */
        if (geteuid() == 0) {
                int code = -1;
                const char *args[] = { a->socket, id };
                assert_int_equal(helper_run_as(65534, 65534, release_as_nobody, args, CTL_TIMEOUT, &code), 0);
                assert_int_equal(code, 0);
        } else {
                r = CTL(a, "release", id);
                assert_code(r, X_PERMISSION);
        }

        /* The secret from the environment. */
        char env[300];
        snprintf(env, sizeof(env), "AGEN_LEASE_SECRET=%s", secret);
        Ctl *c = ctl_spawn(a, (const char *[]) { env, NULL }, "release", id, NULL);
        assert_int_equal(ctl_wait(c, CTL_TIMEOUT), 0);
        assert_int_equal(n_leases(a), 0);

        r = CTL(a, "release", id);
        assert_code(r, X_NOT_FOUND);
        assert_contains(r.err, "no lease");

        r = CTL(a, "--json", "acquire", "pool", "--detach", "--ttl", "5", "--units", "2");
        assert_code(r, 0);
        json_object *o = parse_json(r.out);
        assert_lease_shape(jget(o, "lease"));
        assert_int_equal(jint(o, "lease.units"), 2);
        assert_non_null(jstr(o, "secret"));
        r = CTL(a, "release", jstr(o, "lease.id"), "--secret", jstr(o, "secret"));
        assert_code(r, 0);
}

static void test_acquire_hold(void **state) {
        Agend *a = *state;
        Ctl *c = ctl_spawn(a, NULL, "--json", "acquire", "pool", "--exclusive", NULL);
        assert_true(ctl_wait_output(c, "\n", CTL_TIMEOUT));
        json_object *o = parse_json(c->obuf);
        assert_string_equal(jstr(o, "type"), "granted");
        assert_string_equal(jstr(o, "resource"), "pool");
        assert_true(jint(o, "token") > 0);
        const char *id = jstr(o, "id");
        json_object *l = json_object_array_get_idx(jget(list_json(a), "leases"), 0);
        assert_string_equal(jstr(l, "id"), id);
        assert_true(json_object_get_boolean(jget(l, "exclusive")));

        kill(c->pid, SIGTERM);
        assert_int_equal(ctl_wait(c, CTL_TIMEOUT), 0);
        assert_int_equal(n_leases(a), 0);

        /* acquire, then revoked: exit 79. */
        c = ctl_spawn(a, NULL, "acquire", "gpu", NULL);
        assert_true(ctl_wait_output(c, "Holding lease", CTL_TIMEOUT));
        json_object *l2 = json_object_array_get_idx(jget(list_json(a), "leases"), 0);
        Result r = CTL(a, "revoke", jstr(l2, "id"), "--reason", "test");
        assert_code(r, 0);
        assert_int_equal(ctl_wait(c, CTL_TIMEOUT), X_LOST);
        assert_contains(c->ebuf, "was revoked: test");
}

/* ---- watch ---- */

/* The JSON lines of a watch so far: each line one Event; true if both the grant and the
 * release of lease id are among them. A line still being written is left for later. */
static bool json_lines_saw_run(Ctl *w, const char *id) {
        bool granted = false, released = false;
        /* Until the released line is complete. */
        double end = helper_now() + 1.0;
        while (helper_now() < end && (w->olen == 0 || w->obuf[w->olen - 1] != '\n'))
                ctl_pump(w, 0.05);
        char *save = NULL, *copy = strdup(w->obuf);
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                json_object *ev = parse_json(line);
                assert_non_null(jstr(ev, "type"));
                assert_true(jis(ev, "time", json_type_int));
                assert_string_equal(jstr(ev, "resource"), "gpu");
                if (jstr(ev, "lease") && strcmp(jstr(ev, "lease"), id) == 0) {
                        granted |= strcmp(jstr(ev, "type"), "granted") == 0;
                        released |= strcmp(jstr(ev, "type"), "released") == 0;
                }
        }
        free(copy);
        return granted && released;
}

static void test_watch(void **state) {
        Agend *a = *state;
        Ctl *wj = ctl_spawn(a, NULL, "watch", "gpu", "--json", NULL);
        Ctl *wh = ctl_spawn(a, NULL, "watch", NULL);

        /* A watch is in effect once agend has read its call, which nothing here can see;
         * so run until both watchers have seen a whole run (granted and released). */
        char id[64] = "";
        bool seen = false;
        for (int attempt = 0; attempt < 20 && !seen; attempt++) {
                Result r = CTL(a, "run", "gpu", "-d", "watched", "--", "sh", "-c", "echo $AGEN_LEASE_ID");
                assert_code(r, 0);
                assert_int_equal(sscanf(r.out, "%63s", id), 1);
                char lease_j[128], granted_h[128], released_h[128];
                snprintf(lease_j, sizeof(lease_j), "\"lease\":\"%s\"", id);
                snprintf(granted_h, sizeof(granted_h), "granted   gpu lease=%s", id);
                snprintf(released_h, sizeof(released_h), "released  gpu lease=%s", id);
                /* Both watchers saw this run whole. */
                seen = ctl_wait_output(wh, released_h, 1.0) && strstr(wh->obuf, granted_h) &&
                       ctl_wait_output(wj, lease_j, 1.0) && json_lines_saw_run(wj, id);
        }
        assert_true(seen);


        kill(wj->pid, SIGTERM);
        kill(wh->pid, SIGINT);
        assert_int_equal(ctl_wait(wj, CTL_TIMEOUT), 0);
        assert_int_equal(ctl_wait(wh, CTL_TIMEOUT), 0);
}

/* ---- the table on a terminal ---- */

/* Runs agenctl on a pseudo-terminal of cols × 24 and returns what it printed, with the
 * terminal's \r removed, and its exit code in *ret_code. color: leave NO_COLOR unset.
 * When the output shows wait_for, send is typed on the terminal (once); if stop_cont,
 * the test then waits until agenctl has stopped itself (job control) and continues it. */
static const char *const *pty_env; /* extra environment for run_on_pty*() */

static char *run_on_pty_ex(const Agend *a, unsigned cols, bool color, char *const *argv, const char *wait_for,
                           const char *send, bool stop_cont, int *ret_code) {
        struct winsize ws = { .ws_row = 24, .ws_col = (unsigned short) cols };
        int master;
        pid_t pid = forkpty(&master, NULL, NULL, &ws);
        assert_true(pid >= 0);
        if (pid == 0) {
                setenv("LC_ALL", "C.UTF-8", 1);
                setenv("TERM", "xterm", 1);
                if (color)
                        unsetenv("NO_COLOR");
                else
                        setenv("NO_COLOR", "1", 1);
                ctl_child_exec(a->socket, pty_env, argv);
        }
        char *out = calloc(1, 1);
        size_t len = 0;
        bool sent = false;
        int st = 0;
        double end = helper_now() + CTL_TIMEOUT;
        for (;;) {
                struct pollfd p = { .fd = master, .events = POLLIN };
                if (helper_now() > end) {
                        kill(pid, SIGKILL);
                        fail_msg("agenctl on the pty did not finish; output: %s", out);
                }
                if (wait_for && !sent && strstr(out, wait_for)) {
                        assert_true(write(master, send, strlen(send)) == (ssize_t) strlen(send));
                        sent = true;
                        if (stop_cont) {
                                /* agenctl follows its command into the stop. */
                                pid_t k = 0;
                                while (k == 0 && helper_now() < end) {
                                        k = waitpid(pid, &st, WNOHANG | WUNTRACED);
                                        if (k == 0)
                                                helper_sleep(0.01);
                                }
                                if (k != pid) {
                                        char cmd[128];
                                        snprintf(cmd, sizeof(cmd), "ps -o pid,ppid,pgid,tpgid,stat,args -g %d -s %d >&2", (int) pid, (int) pid);
                                        (void) !system(cmd);
                                        fail_msg("agenctl did not stop with its command; output: %s", out);
                                }
                                assert_true(WIFSTOPPED(st));
                                kill(pid, SIGCONT);
                        }
                }
                if (poll(&p, 1, 100) <= 0)
                        continue;
                char buf[4096];
                ssize_t k = read(master, buf, sizeof(buf));
                if (k <= 0)
                        break; /* EIO once the child has exited */
                append(&out, &len, buf, (size_t) k);
        }
        close(master);
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        *ret_code = WEXITSTATUS(st);

        char *w = out;
        for (char *r = out; *r; r++)
                if (*r != '\r')
                        *w++ = *r;
        *w = 0;
        return out;
}

static char *run_on_pty(const Agend *a, unsigned cols, bool color, char *const *argv) {
        int code = -1;
        char *out = run_on_pty_ex(a, cols, color, argv, NULL, NULL, false, &code);
        if (code != 0)
                fail_msg("agenctl exited %d on the pty: %s", code, out);
        return out;
}

static char *strip_ansi(const char *s) {
        char *out = malloc(strlen(s) + 1), *o = out;
        while (*s) {
                if (s[0] == '\033' && s[1] == '[') {
                        s += 2;
                        while (*s && !(*s >= '@' && *s <= '~'))
                                s++;
                        if (*s)
                                s++;
                        continue;
                }
                *o++ = *s++;
        }
        *o = 0;
        return out;
}

/* Columns (terminal cells) of a UTF-8 string: every character here is one cell wide. */
static size_t cells(const char *s, size_t n) {
        size_t c = 0;
        for (size_t i = 0; i < n; i++)
                if (((unsigned char) s[i] & 0xc0) != 0x80)
                        c++;
        return c;
}

/* The cell where each header word starts, and ends. */
static size_t header_columns(const char *header, size_t *start, size_t *end, size_t max) {
        size_t n = 0, len = strlen(header);
        for (size_t i = 0; i < len && n < max;) {
                while (i < len && header[i] == ' ')
                        i++;
                if (i >= len)
                        break;
                size_t j = i;
                while (j < len && header[j] != ' ')
                        j++;
                start[n] = cells(header, i);
                end[n] = cells(header, j);
                n++;
                i = j;
        }
        return n;
}

/* Every line of the lease table fits, and every cell sits under its header: a left-aligned
 * column's cell starts where its header starts, a right-aligned one ends where it ends. */
static void check_table(const char *text, unsigned cols, size_t *ret_rows) {
        char *copy = strdup(text), *save = NULL;
        size_t start[16], end[16], n = 0, rows = 0;
        /* Left-aligned: ID RESOURCE STATE USER COMM UNIT DESCRIPTION; right: UNITS PID AGE TTL TOKEN. */
        static const bool right[] = { false, false, true, false, false, true, false, false, true, true, true, false };
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                size_t w = cells(line, strlen(line));
                if (w > cols)
                        fail_msg("line of %zu cells on a %u-column terminal: '%s'", w, cols, line);
                if (strncmp(line, "ID ", 3) == 0) {
                        n = header_columns(line, start, end, 16);
                        assert_int_equal(n, 12);
                        continue;
                }
                if (n == 0 || line[0] == ' ' || strstr(line, "lease") == line || !strchr(line, ' '))
                        continue;
                if (strstr(line, " lease") && strstr(line, "waiter"))
                        continue; /* the legend */
                rows++;
                /* Map cell positions to byte offsets. */
                size_t len = strlen(line), byte_at[512] = {}, c = 0;
                for (size_t i = 0; i < len && c < 511; i++)
                        if (((unsigned char) line[i] & 0xc0) != 0x80)
                                byte_at[c++] = i;
                byte_at[c] = len;
                for (size_t k = 0; k < n; k++) {
                        if (right[k]) {
                                /* The cell ends at the header's end: a non-blank there,
                                 * a blank (or the end) after it. */
                                assert_true(end[k] <= c);
                                assert_true(line[byte_at[end[k] - 1]] != ' ');
                                assert_true(end[k] == c || line[byte_at[end[k]]] == ' ');
                        } else {
                                assert_true(start[k] < c);
                                assert_true(line[byte_at[start[k]]] != ' ');
                                assert_true(start[k] == 0 || line[byte_at[start[k] - 1]] == ' ');
                        }
                }
        }
        free(copy);
        *ret_rows = rows;
}

static void test_list_on_terminal(void **state) {
        Agend *a = *state;
        const char *longdesc = "a description far longer than any terminal line: it goes on and on, "
                               "naming the experiment, the dataset, the person and the reason";
        Ctl *h1 = ctl_spawn(a, NULL, "acquire", "pool", "-d", longdesc, NULL);
        Ctl *h2 = ctl_spawn(a, NULL, "acquire", "pool", "--units", "2", "-d", "short", NULL);
        assert_true(ctl_wait_output(h1, "Holding lease", CTL_TIMEOUT));
        assert_true(ctl_wait_output(h2, "Holding lease", CTL_TIMEOUT));
        json_object *leases = jget(list_json(a), "leases");
        assert_int_equal(json_object_array_length(leases), 2);

        /* 80 columns, colour on. */
        char *out = run_on_pty(a, 80, true, (char *[]) { "list", NULL });
        assert_non_null(strstr(out, "\033[")); /* the header is bold */
        char *plain = strip_ansi(out);
        size_t rows = 0;
        check_table(plain, 80, &rows);
        assert_int_equal(rows, 2);
        /* The long description is cut with an ellipsis; the ids are whole. */
        assert_non_null(strstr(plain, "…"));
        assert_null(strstr(plain, "the person and the reason"));
        for (size_t i = 0; i < 2; i++)
                assert_contains(plain, jstr(json_object_array_get_idx(leases, i), "id"));
        assert_contains(plain, "2 leases, 0 waiters.");
        free(plain);
        free(out);

        /* NO_COLOR: not one escape sequence. */
        out = run_on_pty(a, 80, false, (char *[]) { "list", NULL });
        assert_null(strchr(out, '\033'));
        check_table(out, 80, &rows);
        assert_int_equal(rows, 2);
        free(out);

        /* 60 columns: everything but the id gives way; the ids stay whole (issue 14 #1). */
        out = run_on_pty(a, 60, false, (char *[]) { "list", NULL });
        for (size_t i = 0; i < 2; i++)
                assert_contains(out, jstr(json_object_array_get_idx(leases, i), "id"));
        free(out);

        /* --full on a terminal, and any pipe: nothing is cut. */
        out = run_on_pty(a, 80, false, (char *[]) { "list", "--full", NULL });
        assert_contains(out, longdesc);
        free(out);
        Result r = CTL(a, "list");
        assert_code(r, 0);
        assert_contains(r.out, longdesc);
        assert_null(strchr(r.out, '\033'));

        kill(h1->pid, SIGTERM);
        kill(h2->pid, SIGTERM);
        assert_int_equal(ctl_wait(h1, CTL_TIMEOUT), 0);
        assert_int_equal(ctl_wait(h2, CTL_TIMEOUT), 0);
}

/* Issue 14 #1: the id is never cut, at 80 columns with long names nor narrower, and any
 * unique prefix of it works where an id is asked for. */
static void test_list_ids_whole_and_prefixes(void **state) {
        Agend *a = *state;
        const char *res = "a-resource-with-a-rather-long-name-for-a-table";
        Ctl *h1 = ctl_spawn(a, NULL, "acquire", res, "-d", "first holder with a long description", NULL);
        Ctl *h2 = ctl_spawn(a, NULL, "acquire", "pool", "-d", "second", NULL);
        assert_true(ctl_wait_output(h1, "Holding lease", CTL_TIMEOUT));
        assert_true(ctl_wait_output(h2, "Holding lease", CTL_TIMEOUT));
        const char *id1 = lease_id_by_description(a, "first holder with a long description");
        const char *id2 = lease_id_by_description(a, "second");
        assert_non_null(id1);
        assert_non_null(id2);

        static const unsigned widths[] = { 80, 64, 40 };
        for (size_t i = 0; i < ELEMENTSOF(widths); i++) {
                char *out = run_on_pty(a, widths[i], false, (char *[]) { "list", NULL });
                if (!strstr(out, id1) || !strstr(out, id2))
                        fail_msg("a lease id is cut at %u columns:\n%s", widths[i], out);
                free(out);
                out = run_on_pty(a, widths[i], false, (char *[]) { "history", NULL });
                if (!strstr(out, id1))
                        fail_msg("a lease id is cut in history at %u columns:\n%s", widths[i], out);
                free(out);
        }

        /* A unique prefix: the shortest that tells the two apart, and longer ones. */
        size_t k = 0;
        while (id1[k] == id2[k])
                k++;
        char prefix[20];
        snprintf(prefix, sizeof(prefix), "%.*s", (int) k + 1, id1);
        Result r = CTL(a, "show", prefix);
        assert_code(r, 0);
        assert_contains(r.out, id1);
        r = CTL(a, "--json", "show", prefix);
        assert_code(r, 0);
        assert_string_equal(jstr(parse_json(r.out), "id"), id1);
        /* A prefix of both is ambiguous (when they share one), and says so. */
        if (k > 0) {
                snprintf(prefix, sizeof(prefix), "%.*s", (int) k, id1);
                r = CTL(a, "show", prefix);
                assert_code(r, X_USAGE);
                assert_contains(r.err, "is the start of 2 lease ids");
                r = CTL(a, "revoke", prefix, "--reason", "x");
                assert_code(r, X_USAGE);
        }
        /* The empty string is no prefix of anything. */
        r = CTL(a, "show", "");
        assert_code(r, X_NOT_FOUND);

        snprintf(prefix, sizeof(prefix), "%.*s", (int) k + 1, id2);
        r = CTL(a, "revoke", prefix, "--reason", "by prefix");
        assert_code(r, 0);
        assert_int_equal(ctl_wait(h2, CTL_TIMEOUT), X_LOST);
        assert_contains(h2->ebuf, "was revoked: by prefix");
        snprintf(prefix, sizeof(prefix), "%.*s", (int) k + 1, id1);
        r = CTL(a, "renew", prefix);
        assert_code(r, 1); /* the lease has no TTL: the daemon's reason, for the whole id */
        assert_contains(r.err, id1);
        assert_contains(r.err, "ttl");

        kill(h1->pid, SIGTERM);
        assert_int_equal(ctl_wait(h1, CTL_TIMEOUT), 0);
}

/* Issue 14 #12: agenctl keeps its place in the queue across a kill -9 of agend, with no
 * option: the library presents the ticket of its place when it asks again. A newcomer that
 * queued after the restart, before agenctl was back, still goes after it. */
static void test_run_keeps_place_across_restart(void **state) {
        Agend *a = *state;
        Ctl *holder = ctl_spawn(a, NULL, "acquire", "gpu", "-d", "holder", NULL);
        assert_true(ctl_wait_output(holder, "Holding lease", CTL_TIMEOUT));
        Ctl *w = ctl_spawn(a, NULL, "run", "gpu", "--", "sh", "-c", "echo ran; sleep 0.5", NULL);
        assert_true(wait_count(a, true, 1, CTL_TIMEOUT));

        /* Stopped, agenctl cannot come back before the newcomer has queued. */
        assert_int_equal(kill(w->pid, SIGSTOP), 0);
        assert_int_equal(agend_kill(a), 0);
        snprintf(a->grace, sizeof(a->grace), "60");
        assert_int_equal(agend_start(a), 0);
        VConn *late = OPEN(a);
        assert_int_equal(vconn_send(late, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"gpu\"}"), 0);
        json_object *m = RECV(late, CTL_TIMEOUT);
        assert_int_equal(jint(reply_params(m), "position"), 2); /* behind agenctl's place */

        /* list shows the restored place before its waiter is back, marked like a restored
         * lease; the newcomer behind it is waiting. */
        json_object *ws = jget(list_json(a), "waiters");
        assert_int_equal(json_object_array_length(ws), 2);
        assert_int_equal(jint(json_object_array_get_idx(ws, 0), "position"), 1);
        assert_string_equal(jstr(json_object_array_get_idx(ws, 0), "state"), "reclaimable");
        assert_string_equal(jstr(json_object_array_get_idx(ws, 1), "state"), "waiting");
        Result r = CTL(a, "list", "gpu");
        assert_code(r, 0);
        assert_contains(r.out, "1 waiter reclaimable (a place restored after a restart, kept for its waiter)");
        const char *row1 = strstr(r.out, "\n#1 "), *row2 = strstr(r.out, "\n#2 ");
        const char *mark1 = row1 ? strstr(row1, " reclaimable ") : NULL;
        if (!row1 || !row2 || !mark1 || mark1 > row2 || !strstr(row2, " waiting "))
                fail_msg("expected #1 reclaimable, then #2 waiting, in:\n%s", r.out);
        assert_int_equal(kill(w->pid, SIGCONT), 0);

        /* The holder reclaims its lease by itself; let it go. */
        assert_true(ctl_wait_stderr(holder, "agend is back", CTL_TIMEOUT));
        kill(holder->pid, SIGTERM);
        assert_int_equal(ctl_wait(holder, CTL_TIMEOUT), 0);

        /* agenctl runs first; the newcomer is granted only after it. */
        assert_true(ctl_wait_output(w, "ran", CTL_TIMEOUT));
        while (vconn_recv(late, 0.05, &m) == 0)
                if (!jstr(reply_params(m), "state") || strcmp(jstr(reply_params(m), "state"), "queued") != 0)
                        fail_msg("the newcomer got %s while agenctl held the lease", jtext(m));
        assert_int_equal(ctl_wait(w, CTL_TIMEOUT), 0);
        for (;;) {
                m = RECV(late, CTL_TIMEOUT);
                if (strcmp(jstr(reply_params(m), "state") ?: "", "queued") != 0)
                        break;
        }
        assert_string_equal(jstr(reply_params(m), "state"), "granted");
}

/* The queue position on a terminal. */
static void test_run_queue_position_on_terminal(void **state) {
        Agend *a = *state;
        Ctl *holder = ctl_spawn(a, NULL, "acquire", "gpu", NULL);
        assert_true(ctl_wait_output(holder, "Holding lease", CTL_TIMEOUT));
        /* Let the holder go in a moment, while run waits on the terminal. */
        pid_t releaser = fork();
        if (releaser == 0) {
                /* Once run waits in the queue (no cmocka in this child). */
                double end = helper_now() + CTL_TIMEOUT;
                while (helper_now() < end) {
                        Ctl *c = ctl_spawn_v(a->socket, NULL, (char *[]) { "--json=short", "list", NULL });
                        bool queued = c && ctl_wait(c, CTL_TIMEOUT) == 0 && strstr(c->obuf, "\"position\":1");
                        if (queued)
                                break;
                        helper_sleep(0.05);
                }
                helper_sleep(0.2);
                kill(holder->pid, SIGTERM);
                _exit(0);
        }
        char *out = run_on_pty(a, 80, false, (char *[]) { "run", "gpu", "--", "echo", "ran", NULL });
        waitpid(releaser, NULL, 0);
        assert_contains(out, "Waiting for gpu: position 1 in the queue");
        assert_contains(out, "ran");
        free(out);
        assert_int_equal(ctl_wait(holder, CTL_TIMEOUT), 0);
}

/* On a terminal the command is in the foreground: Ctrl-C reaches it, and Ctrl-Z stops
 * it and agenctl with it, until both are continued. */
static void test_run_job_control(void **state) {
        Agend *a = *state;
        int code = -1;
        char *out = run_on_pty_ex(a, 80, false,
                                  (char *[]) { "run", "gpu", "--", "sh", "-c",
                                               "trap 'echo caught; exit 5' INT; echo ready; while :; do sleep 0.05; done",
                                               NULL },
                                  "ready", "\003", false, &code);
        assert_int_equal(code, 5);
        assert_contains(out, "caught");
        free(out);
        assert_int_equal(n_leases(a), 0);

        /* exec, not a child of sh: dash forks with vfork(), and a stop that lands
         * between its vfork() and exec() leaves sh itself running (in D state), so no
         * parent, shell or agenctl, sees the job stop. */
        double t0 = helper_now();
        out = run_on_pty_ex(a, 80, false,
                            (char *[]) { "run", "gpu", "--", "sh", "-c", "echo ready; exec sleep 0.3", NULL }, "ready",
                            "\032", true, &code);
        assert_int_equal(code, 0);
        assert_true(helper_now() - t0 >= 0.3);
        free(out);
        assert_int_equal(n_leases(a), 0);
}


/* ---- issue 14 ---- */

/* #2: by default run holds the lease until what the command started in the background has
 * exited too; --hold-until=command releases when the command exits. */
static void test_run_hold_until(void **state) {
        Agend *a = *state;
        Ctl *run = ctl_spawn(a, NULL, "run", "gpu", "--", "sh", "-c", "sleep 1 >/dev/null 2>&1 & echo started", NULL);
        assert_true(ctl_wait_output(run, "started", CTL_TIMEOUT));
        assert_true(ctl_wait_stderr(run, "until the processes it started have exited", CTL_TIMEOUT));
        /* sh has exited; its sleep holds the lease. */
        assert_int_equal(n_leases(a), 1);
        assert_int_equal(ctl_wait(run, CTL_TIMEOUT), 0);
        assert_int_equal(n_leases(a), 0);

        /* The exit status is the command's, not the leftovers'. */
        Result r = CTL(a, "run", "gpu", "--", "sh", "-c", "(sleep 0.3; exit 9) >/dev/null 2>&1 & exit 4");
        assert_code(r, 4);

        double t0 = helper_now();
        r = CTL(a, "run", "gpu", "--hold-until=command", "--", "sh", "-c", "sleep 3 >/dev/null 2>&1 & echo started");
        assert_code(r, 0);
        assert_true(helper_now() - t0 < 2.5);
        assert_int_equal(n_leases(a), 0);

        r = CTL(a, "run", "gpu", "--hold-until=never", "--", "true");
        assert_code(r, X_USAGE);

        /* A lease lost while only leftovers run stops them too. */
        run = ctl_spawn(a, NULL, "run", "gpu", "-d", "leftovers", "--kill-delay", "5s", "--", "sh", "-c",
                        "sleep 60 >/dev/null 2>&1 & echo $!", NULL);
        assert_true(ctl_wait_stderr(run, "until the processes it started have exited", CTL_TIMEOUT));
        long sleeper = strtol(run->obuf, NULL, 10);
        assert_true(sleeper > 0);
        const char *id = lease_id_by_description(a, "leftovers");
        assert_non_null(id);
        r = CTL(a, "revoke", id, "--reason", "stop them");
        assert_code(r, 0);
        assert_int_equal(ctl_wait(run, CTL_TIMEOUT), X_LOST);
        assert_int_equal(kill((pid_t) sleeper, 0), -1);
        assert_int_equal(errno, ESRCH);
}

/* #3: agend gone for good: run says so at once, and the bound is --reconnect-timeout. */
static void test_run_daemon_gone(void **state) {
        Agend *a = *state;
        /* Killed once the command runs: agenctl has the grant then (the daemon's list
         * shows the lease a moment before agenctl has read its grant). */
        Ctl *run = ctl_spawn(a, NULL, "run", "gpu", "--reconnect-timeout", "1s", "--", "sh", "-c",
                             "echo ready; exec sleep 60", NULL);
        assert_true(ctl_wait_output(run, "ready", CTL_TIMEOUT));
        double t0 = helper_now();
        assert_int_equal(agend_kill(a), 0);
        if (!ctl_wait_stderr(run, "lost the connection to agend", 5.0))
                fail_msg("no message on stderr within 5s of agend's death: %s", run->ebuf);
        assert_contains(run->ebuf, "may be lost");
        assert_contains(run->ebuf, "for 1s (--reconnect-timeout)");
        double said = helper_now() - t0;
        assert_int_equal(ctl_wait(run, CTL_TIMEOUT), X_LOST);
        assert_contains(run->ebuf, "did not come back within 1s");
        /* Told well before the bound ran out; stopped after it, not at the library's 60 s. */
        assert_true(said < 1.0 + 5.0);
        assert_true(helper_now() - t0 >= 0.9);

        /* 0: the command is stopped at once. (Grace 0: the lease of the killed daemon,
         * restored at the start, must not hold gpu.) */
        snprintf(a->grace, sizeof(a->grace), "0");
        assert_int_equal(agend_start(a), 0);
        run = ctl_spawn(a, NULL, "run", "gpu", "--reconnect-timeout", "0", "--", "sh", "-c", "echo ready; exec sleep 60",
                        NULL);
        assert_true(ctl_wait_output(run, "ready", CTL_TIMEOUT));
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(ctl_wait(run, CTL_TIMEOUT), X_LOST);
        assert_contains(run->ebuf, "may be lost");

        /* agend back within the bound: reclaimed, the command goes on. */
        assert_int_equal(agend_start(a), 0);
        run = ctl_spawn(a, NULL, "run", "gpu", "--reconnect-timeout", "30s", "--", "sh", "-c",
                        "echo ready; sleep 3", NULL);
        assert_true(ctl_wait_output(run, "ready", CTL_TIMEOUT));
        assert_int_equal(agend_kill(a), 0);
        assert_true(ctl_wait_stderr(run, "lost the connection to agend", 5.0));
        snprintf(a->grace, sizeof(a->grace), "30");
        assert_int_equal(agend_start(a), 0);
        assert_true(ctl_wait_stderr(run, "agend is back", CTL_TIMEOUT));
        assert_int_equal(ctl_wait(run, CTL_TIMEOUT), 0);
}

/* #4: watch follows agend across restarts, and says so; --no-reconnect exits instead. */
static void test_watch_follows_restart(void **state) {
        Agend *a = *state;
        Ctl *w = ctl_spawn(a, NULL, "watch", "gpu", "--json", NULL);
        Ctl *once = ctl_spawn(a, NULL, "watch", "gpu", "--no-reconnect", NULL);
        /* Both in effect: each has seen a run. */
        bool seen = false;
        for (int i = 0; i < 20 && !seen; i++) {
                Result r = CTL(a, "run", "gpu", "--", "true");
                assert_code(r, 0);
                seen = ctl_wait_output(w, "\"released\"", 1.0) && ctl_wait_output(once, "released", 1.0);
        }
        assert_true(seen);

        int st = 0;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_int_equal(ctl_wait(once, CTL_TIMEOUT), X_UNREACHABLE);
        assert_true(ctl_wait_stderr(w, "waiting for it to come back", CTL_TIMEOUT));
        assert_int_equal(w->status, -1); /* still running */

        assert_int_equal(agend_start(a), 0);
        assert_true(ctl_wait_stderr(w, "agend is back", CTL_TIMEOUT));
        Result r = CTL(a, "run", "gpu", "--", "sh", "-c", "echo $AGEN_LEASE_ID");
        assert_code(r, 0);
        char id[64] = "", needle[96];
        assert_int_equal(sscanf(r.out, "%63s", id), 1);
        snprintf(needle, sizeof(needle), "\"lease\":\"%s\"", id);
        assert_true(ctl_wait_output(w, needle, CTL_TIMEOUT));

        kill(w->pid, SIGTERM);
        assert_int_equal(ctl_wait(w, CTL_TIMEOUT), 0);
}

/* #5: run's description is its command line; list marks reclaimable leases; the busy
 * message does not present a dead process as the holder. */
static void test_run_description_and_holders(void **state) {
        Agend *a = *state;
        Ctl *run = ctl_spawn(a, NULL, "run", "gpu", "--", "sleep", "30", NULL);
        assert_true(wait_count(a, false, 1, CTL_TIMEOUT));
        assert_non_null(lease_id_by_description(a, "sleep 30"));
        kill(run->pid, SIGTERM);
        assert_int_equal(ctl_wait(run, CTL_TIMEOUT), 128 + SIGTERM);

        /* A detached lease whose taker has exited. */
        Result r = CTL(a, "acquire", "gpu", "--detach", "--ttl", "60");
        assert_code(r, 0);
        pid_t taker = r.ctl->pid;
        r = CTL(a, "run", "gpu", "--nowait", "--", "true");
        assert_code(r, X_BUSY);
        assert_contains(r.err, "which has exited");
        char dead[64];
        snprintf(dead, sizeof(dead), "(pid %d, agenctl)", (int) taker);
        assert_null(strstr(r.err, dead));

        /* Restored after a restart and not yet reclaimed: "reclaimable" in list. */
        Holder *h = NULL;
        assert_int_equal(holder_start(a, "{\"resource\":\"pool\",\"description\":\"restored\"}", CTL_TIMEOUT, &h), 0);
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(holder_kill(h), 0);
        snprintf(a->grace, sizeof(a->grace), "60");
        assert_int_equal(agend_start(a), 0);
        r = CTL(a, "list", "pool");
        assert_code(r, 0);
        assert_contains(r.out, "STATE");
        assert_contains(r.out, "reclaimable");
        assert_contains(r.out, "1 reclaimable");
        r = CTL(a, "run", "pool", "--exclusive", "--nowait", "--", "true");
        assert_code(r, X_BUSY);
        assert_contains(r.err, "restored after an agend restart");
}

static int pipe_lines(const char *s) {
        int n = 0;
        for (; *s; s++)
                n += *s == '\n';
        return n;
}

/* #8: the messages and the --no-legend layout. */
static void test_messages(void **state) {
        Agend *a = *state;
        Result r = CTL(a, "status", "extra");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "'status' takes no arguments (got 'extra')");
        r = CTL(a, "show", "a", "b");
        assert_code(r, X_USAGE);
        assert_contains(r.err, "too many arguments for 'show' (from 'b' on): agenctl show ID");

        r = CTL(a, "run", "gpu", "--", "/nonexistent/command");
        assert_code(r, 127);
        assert_null(strstr(r.err, "$PATH"));
        r = CTL(a, "run", "gpu", "--", "no-such-command-anywhere");
        assert_code(r, 127);
        assert_contains(r.err, "(not found in $PATH)");

        /* More units than the capacity: the daemon's reason and the numbers, not a guess. */
        r = CTL(a, "run", "gpu", "--units", "2", "--", "true");
        assert_code(r, 1);
        assert_contains(r.err, "agend refused the request for gpu: more units than the resource's capacity");
        assert_contains(r.err, "it has 1 unit and 2 were asked for");
        assert_null(strstr(r.err, "?"));
        /* The same through --detach, which holds nothing itself once granted. */
        r = CTL(a, "acquire", "gpu", "--detach", "--ttl", "10", "--units", "2");
        assert_code(r, 1);
        assert_contains(r.err, "more units than the resource's capacity");

        Ctl *holder = ctl_spawn(a, NULL, "acquire", "gpu", "-d", "holder", NULL);
        assert_true(ctl_wait_output(holder, "Holding lease", CTL_TIMEOUT));
        r = CTL(a, "run", "gpu", "--timeout", "1.5", "--", "true");
        assert_code(r, X_BUSY);
        assert_contains(r.err, "timed out after 1.5s waiting for gpu");

        /* --no-legend: rows only, a waiter's starting with #. */
        Ctl *waiter = ctl_spawn(a, NULL, "run", "gpu", "-d", "waiter", "--", "true", NULL);
        assert_true(wait_count(a, true, 1, CTL_TIMEOUT));
        r = CTL(a, "list", "--no-legend");
        assert_code(r, 0);
        assert_int_equal(pipe_lines(r.out), 2);
        assert_null(strstr(r.out, "\n\n"));
        assert_non_null(strstr(r.out, "\n#1 "));

        /* Permission denied: one line, with the daemon's reason. */
        if (geteuid() == 0) {
                const char *id = lease_id_by_description(a, "holder");
                Ctl *c = ctl_spawn_as(a, 65534, "release", id, NULL);
                assert_int_equal(ctl_wait(c, CTL_TIMEOUT), X_PERMISSION);
                assert_int_equal(pipe_lines(c->ebuf), 1);
                assert_contains(c->ebuf, "permission denied for lease");
                assert_contains(c->ebuf, "not the holder");
                c = ctl_spawn_as(a, 65534, "revoke", id, "--reason", "x", NULL);
                assert_int_equal(ctl_wait(c, CTL_TIMEOUT), X_PERMISSION);
                assert_int_equal(pipe_lines(c->ebuf), 1);
                assert_contains(c->ebuf, "RevokeUsers=");
        }

        kill(waiter->pid, SIGTERM);
        kill(holder->pid, SIGTERM);
        ctl_wait(waiter, CTL_TIMEOUT);
        ctl_wait(holder, CTL_TIMEOUT);
}

/* #6: a pager on a terminal only, as systemd's tools: $AGENCTL_PAGER, $PAGER, LESS set,
 * --no-pager; history shows a screenful without -n. */
static void test_pager(void **state) {
        Agend *a = *state;
        static const char *const paged[] = { "AGENCTL_PAGER=echo \"LESS=$LESS\"; sed s/^/paged:/", NULL };
        pty_env = paged;
        char *out = run_on_pty(a, 80, false, (char *[]) { "list", NULL });
        assert_contains(out, "LESS=FRSXMK");
        assert_contains(out, "paged:0 leases, 0 waiters.");
        free(out);
        out = run_on_pty(a, 80, false, (char *[]) { "list", "--no-pager", NULL });
        assert_null(strstr(out, "paged:"));
        free(out);

        static const char *const pager_env[] = { "AGENCTL_PAGER", "PAGER=sed s/^/viaPAGER:/", NULL };
        pty_env = pager_env;
        out = run_on_pty(a, 80, false, (char *[]) { "status", NULL });
        assert_contains(out, "viaPAGER:");
        free(out);
        pty_env = NULL;

        /* Into a pipe: never paged. */
        Ctl *c = ctl_spawn(a, (const char *const[]) { "AGENCTL_PAGER=sed s/^/paged:/", NULL }, "list", NULL);
        assert_int_equal(ctl_wait(c, CTL_TIMEOUT), 0);
        assert_null(strstr(c->obuf, "paged:"));

        /* 40 events; a 24-line terminal shows 21 of them. */
        for (int i = 0; i < 20; i++) {
                Result r = CTL(a, "run", "gpu", "--", "true");
                assert_code(r, 0);
        }
        out = run_on_pty(a, 120, false, (char *[]) { "history", NULL });
        assert_contains(out, "21 events.");
        free(out);
        out = run_on_pty(a, 120, false, (char *[]) { "history", "-n", "30", NULL });
        assert_contains(out, "30 events.");
        free(out);
        Result r = CTL(a, "history");
        assert_code(r, 0);
        assert_contains(r.out, "40 events.");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_usage, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_keeps_place_across_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unreachable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_status, setup, teardown),
                cmocka_unit_test_setup_teardown(test_resources, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_show_history, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_history_pages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_status_and_env, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_busy, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_revoked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_expired, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_waiting_interrupted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_forwards_signals, setup, teardown),
                cmocka_unit_test_setup_teardown(test_acquire_detach, setup, teardown),
                cmocka_unit_test_setup_teardown(test_acquire_hold, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_on_terminal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_list_ids_whole_and_prefixes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_queue_position_on_terminal, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_job_control, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_hold_until, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_daemon_gone, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_follows_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_run_description_and_holders, setup, teardown),
                cmocka_unit_test_setup_teardown(test_messages, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pager, setup, teardown),
        };
        signal(SIGPIPE, SIG_IGN);
        /* TEST_FILTER=test_run_* runs some tests only (cmocka's wildcards). */
        if (getenv("TEST_FILTER"))
                cmocka_set_test_filter(getenv("TEST_FILTER"));
        return cmocka_run_group_tests(tests, NULL, NULL);
}

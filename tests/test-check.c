/* SPDX-License-Identifier: MIT */
/* The fencing-token check, at each layer: the Check method in raw varlink bytes,
 * agen_check_sync() of libagenclient, `agenctl check` and its exit codes, and the example
 * guarded service (examples/guarded-store.c) refusing a stale writer. Each test starts its
 * own agend (helper-agend). */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>

#include "agen/agen.h"
#include "helper-agend.h"

#define X_USAGE 64
#define X_STALE 80

static int setup(void **state) {
        Agend *a = NULL;
        if (agend_new(&a) < 0 || agend_declare_resource(a, "gpu", 1) < 0 ||
            agend_declare_resource(a, "pool", 3) < 0 || agend_start(a) < 0) {
                fprintf(stderr, "setup: agend did not start\n");
                helper_cleanup();
                return -1;
        }
        setenv("AGEND_SOCKET", a->socket, 1);
        *state = a;
        return 0;
}

static int teardown(void **state) {
        return helper_teardown(state);
}

static bool check_raw(VConn *c, const char *resource, int64_t token) {
        json_object *p = CALL_OK(c, LEASE_IF "Check", "{\"resource\":\"%s\",\"token\":%lld}", resource,
                                 (long long) token);
        if (!jis(p, "current", json_type_boolean))
                fail_msg("Check reply without a boolean current: %s", jtext(p));
        return json_object_get_boolean(jget(p, "current"));
}

static void test_check_method(void **state) {
        Agend *a = *state;
        VConn *h1 = OPEN(a), *h2 = OPEN(a), *asker = OPEN(a);

        int64_t t1 = jint(GRANT_LEASE(h1, "{\"resource\":\"gpu\"}"), "token");
        assert_true(check_raw(asker, "gpu", t1));
        /* Not on another resource, not another number, not an unknown resource. */
        assert_false(check_raw(asker, "pool", t1));
        assert_false(check_raw(asker, "gpu", t1 + 1));
        assert_false(check_raw(asker, "gpu", 0));
        assert_false(check_raw(asker, "no-such-resource", t1));

        /* The holder lets go (its connection closes): the token is stale. */
        vconn_close(h1);
        double end = helper_now() + HELPER_REPLY_TIMEOUT;
        while (check_raw(asker, "gpu", t1) && helper_now() < end)
                helper_sleep(0.01);
        assert_false(check_raw(asker, "gpu", t1));
        int64_t t2 = jint(GRANT_LEASE(h2, "{\"resource\":\"gpu\"}"), "token");
        assert_true(t2 > t1);
        assert_true(check_raw(asker, "gpu", t2));
        assert_false(check_raw(asker, "gpu", t1));

        /* A counted resource: every current holder's token is current. */
        VConn *p1 = OPEN(a), *p2 = OPEN(a);
        int64_t u1 = jint(GRANT_LEASE(p1, "{\"resource\":\"pool\"}"), "token");
        int64_t u2 = jint(GRANT_LEASE(p2, "{\"resource\":\"pool\",\"units\":2}"), "token");
        assert_true(check_raw(asker, "pool", u1));
        assert_true(check_raw(asker, "pool", u2));

        /* Bad input: a varlink error naming the parameter, the connection stays usable. */
        json_object *e = CALL_ERR(asker, "org.varlink.service.InvalidParameter", LEASE_IF "Check",
                                  "{\"resource\":\"gpu\"}");
        assert_string_equal(jstr(e, "parameter"), "token");
        e = CALL_ERR(asker, "org.varlink.service.InvalidParameter", LEASE_IF "Check",
                     "{\"resource\":\"gpu\",\"token\":-1}");
        assert_string_equal(jstr(e, "parameter"), "token");
        e = CALL_ERR(asker, "org.varlink.service.InvalidParameter", LEASE_IF "Check", "{\"token\":1}");
        assert_string_equal(jstr(e, "parameter"), "resource");
        e = CALL_ERR(asker, "org.varlink.service.InvalidParameter", LEASE_IF "Check",
                     "{\"resource\":\"gpu\",\"token\":1,\"extra\":1}");
        assert_true(check_raw(asker, "gpu", t2));
}

static int check_as_nobody(void *userdata) {
        const int64_t *t = userdata;
        int r = agen_check_sync(NULL, "gpu", (uint64_t) *t, HELPER_REPLY_TIMEOUT);
        return r == 1 ? 0 : 10 + (r < 0 ? -r : r);
}

static void test_check_sync(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a);
        int64_t t = jint(GRANT_LEASE(h, "{\"resource\":\"gpu\"}"), "token");

        assert_int_equal(agen_check_sync(a->socket, "gpu", (uint64_t) t, HELPER_REPLY_TIMEOUT), 1);
        assert_int_equal(agen_check_sync(NULL, "gpu", (uint64_t) t, HELPER_REPLY_TIMEOUT), 1); /* $AGEND_SOCKET */
        assert_int_equal(agen_check_sync(a->socket, "gpu", (uint64_t) t + 1, HELPER_REPLY_TIMEOUT), 0);
        assert_int_equal(agen_check_sync(a->socket, "gpu", UINT64_MAX, HELPER_REPLY_TIMEOUT), 0);
        assert_int_equal(agen_check_sync(a->socket, "other", (uint64_t) t, HELPER_REPLY_TIMEOUT), 0);
        assert_int_equal(agen_check_sync(a->socket, NULL, 1, 1.0), -EINVAL);
        assert_int_equal(agen_check_sync(a->socket, "", 1, 1.0), -EINVAL);
        assert_int_equal(agen_check_sync("/nonexistent/agend.sock", "gpu", 1, 1.0), -ENOENT);

        /* Anyone may ask: another user sees the same answer. */
        if (geteuid() == 0) {
                int code = -1;
                assert_int_equal(helper_run_as(65534, 65534, check_as_nobody, &t, 10.0, &code), 0);
                assert_int_equal(code, 0);
        }

        vconn_close(h);
        double end = helper_now() + HELPER_REPLY_TIMEOUT;
        while (agen_check_sync(a->socket, "gpu", (uint64_t) t, HELPER_REPLY_TIMEOUT) == 1 && helper_now() < end)
                helper_sleep(0.01);
        assert_int_equal(agen_check_sync(a->socket, "gpu", (uint64_t) t, HELPER_REPLY_TIMEOUT), 0);
}

/* Runs a program with stdin and stdout on pipes. */
typedef struct Proc {
        pid_t pid;
        int in, out;
        char buf[4096];
        size_t len;
} Proc;

static void proc_start(Proc *p, char *const *argv) {
        int i[2], o[2];
        assert_int_equal(pipe2(i, O_CLOEXEC), 0);
        assert_int_equal(pipe2(o, O_CLOEXEC), 0);
        p->pid = fork();
        assert_true(p->pid >= 0);
        if (p->pid == 0) {
                dup2(i[0], 0);
                dup2(o[1], 1);
                execv(argv[0], argv);
                _exit(120);
        }
        close(i[0]);
        close(o[1]);
        p->in = i[1];
        p->out = o[0];
        p->len = 0;
}

/* Sends one line, returns the one-line answer (valid until the next call). */
static const char *proc_ask(Proc *p, const char *fmt, ...) {
        char line[256];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        strcat(line, "\n");
        assert_int_equal(write(p->in, line, strlen(line)), (ssize_t) strlen(line));
        double end = helper_now() + 2 * HELPER_REPLY_TIMEOUT;
        for (;;) {
                char *nl = memchr(p->buf, '\n', p->len);
                if (nl) {
                        static char answer[4096];
                        size_t n = (size_t) (nl - p->buf);
                        memcpy(answer, p->buf, n);
                        answer[n] = 0;
                        memmove(p->buf, nl + 1, p->len - n - 1);
                        p->len -= n + 1;
                        return answer;
                }
                struct pollfd pf = { .fd = p->out, .events = POLLIN };
                if (helper_now() > end || poll(&pf, 1, 100) < 0)
                        fail_msg("no answer to '%s'", line);
                if (!(pf.revents & (POLLIN | POLLHUP)))
                        continue;
                ssize_t k = read(p->out, p->buf + p->len, sizeof(p->buf) - 1 - p->len);
                if (k <= 0)
                        fail_msg("the program ended without answering '%s'", line);
                p->len += (size_t) k;
        }
}

static int proc_finish(Proc *p) {
        close(p->in);
        close(p->out);
        int st = 0;
        assert_int_equal(waitpid(p->pid, &st, 0), p->pid);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static char *read_all(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f)
                return strdup("");
        char *buf = NULL;
        size_t size = 0;
        if (getdelim(&buf, &size, '\0', f) < 0) {
                free(buf);
                buf = strdup("");
        }
        fclose(f);
        return buf;
}

/* The scenario of fencing: writer A holds the lease, is paused past its end (here: its
 * connection closes, as when agend releases a dead or expired holder), B takes the lease;
 * A wakes and writes with its old token. The store must refuse A and take B. */
static void test_guarded_store(void **state) {
        Agend *a = *state;
        const char *bin = getenv("GUARDED_STORE_BINARY");
        if (!bin || !*bin)
                fail_msg("GUARDED_STORE_BINARY is not set");
        char file[192];
        snprintf(file, sizeof(file), "%s/store.txt", a->dir);

        Proc p;
        proc_start(&p, (char *[]) { (char *) bin, (char *) "gpu", file, NULL });

        VConn *writer_a = OPEN(a);
        int64_t ta = jint(GRANT_LEASE(writer_a, "{\"resource\":\"gpu\"}"), "token");
        char expect[128];
        snprintf(expect, sizeof(expect), "ok %lld", (long long) ta);
        assert_string_equal(proc_ask(&p, "%lld first write of A", (long long) ta), expect);

        vconn_close(writer_a);
        VConn *writer_b = OPEN(a);
        int64_t tb = jint(GRANT_LEASE(writer_b, "{\"resource\":\"gpu\"}"), "token");
        assert_true(tb > ta);

        const char *ans = proc_ask(&p, "%lld late write of A", (long long) ta);
        if (strncmp(ans, "refused", 7) != 0 || !strstr(ans, "stale"))
                fail_msg("the stale write of A was not refused: %s", ans);
        snprintf(expect, sizeof(expect), "ok %lld", (long long) tb);
        assert_string_equal(proc_ask(&p, "%lld write of B", (long long) tb), expect);
        /* A token that was never granted is refused too. */
        ans = proc_ask(&p, "%lld forged", (long long) tb + 100);
        assert_true(strncmp(ans, "refused", 7) == 0);
        assert_int_equal(proc_finish(&p), 0);

        _cleanup_free_ char *text = read_all(file);
        assert_string_equal(text, "first write of A\nwrite of B\n");
}

static int run_agenctl(const Agend *a, char *const *args, char *out, size_t size) {
        const char *bin = getenv("AGENCTL_BINARY");
        if (!bin || !*bin)
                fail_msg("AGENCTL_BINARY is not set");
        char *argv[16] = { (char *) bin };
        size_t n = 1;
        for (; args[n - 1] && n < 15; n++)
                argv[n] = args[n - 1];
        argv[n] = NULL;
        Proc p;
        proc_start(&p, argv);
        close(p.in);
        p.in = open("/dev/null", O_WRONLY | O_CLOEXEC);
        size_t len = 0;
        ssize_t k;
        while (len + 1 < size && (k = read(p.out, out + len, size - 1 - len)) > 0)
                len += (size_t) k;
        out[len] = 0;
        return proc_finish(&p);
}

static void test_agenctl_check(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a);
        int64_t t = jint(GRANT_LEASE(h, "{\"resource\":\"gpu\"}"), "token");
        char tok[32], stale[32], out[1024];
        snprintf(tok, sizeof(tok), "%lld", (long long) t);
        snprintf(stale, sizeof(stale), "%lld", (long long) t - 1 > 0 ? (long long) t - 1 : 12345LL);

        assert_int_equal(run_agenctl(a, (char *[]) { "check", "gpu", tok, NULL }, out, sizeof(out)), 0);
        assert_non_null(strstr(out, "current"));
        assert_int_equal(run_agenctl(a, (char *[]) { "check", "gpu", stale, NULL }, out, sizeof(out)), X_STALE);
        assert_non_null(strstr(out, "stale"));
        assert_int_equal(run_agenctl(a, (char *[]) { "check", "--quiet", "gpu", stale, NULL }, out, sizeof(out)),
                         X_STALE);
        assert_string_equal(out, "");
        assert_int_equal(run_agenctl(a, (char *[]) { "--json=short", "check", "gpu", tok, NULL }, out, sizeof(out)),
                         0);
        assert_string_equal(out, "{\"current\":true}\n");
        assert_int_equal(run_agenctl(a, (char *[]) { "check", "gpu", "abc", NULL }, out, sizeof(out)), X_USAGE);
        assert_int_equal(run_agenctl(a, (char *[]) { "check", "gpu", "-5", NULL }, out, sizeof(out)), X_USAGE);
        assert_int_equal(run_agenctl(a, (char *[]) { "check", "gpu", NULL }, out, sizeof(out)), X_USAGE);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_check_method, setup, teardown),
                cmocka_unit_test_setup_teardown(test_check_sync, setup, teardown),
                cmocka_unit_test_setup_teardown(test_guarded_store, setup, teardown),
                cmocka_unit_test_setup_teardown(test_agenctl_check, setup, teardown),
        };
        signal(SIGPIPE, SIG_IGN);
        return cmocka_run_group_tests(tests, NULL, NULL);
}

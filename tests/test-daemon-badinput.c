/* SPDX-License-Identifier: MIT */
/* Bad input to the real agend: invalid JSON, unknown methods, wrong parameter types, a NUL
 * inside a string, a 100 MB message, and 1000 connections sending garbage. Each gets an
 * error or a disconnect, and a well-behaved client is served throughout. */

#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-agend.h"

/* A well-behaved client still gets a lease and gives it back. */
static void assert_serves(const Agend *a) {
        VConn *c = OPEN(a);
        json_object *l = GRANT_LEASE(c, "{\"resource\":\"well-behaved\"}");
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(l, "id"));
        vconn_close(c);
}

/* Sends raw bytes (the caller includes the NUL) and expects ProtocolError with a reason,
 * then the daemon closing the connection. */
static void assert_protocol_error(const Agend *a, const char *bytes, size_t n) {
        VConn *c = OPEN(a);
        assert_int_equal(vconn_send_raw(c, bytes, n), 0);
        json_object *m = NULL;
        int r = vconn_recv(c, HELPER_REPLY_TIMEOUT, &m);
        if (r < 0)
                fail_msg("no ProtocolError for %.*s: %s", (int) MIN(n, (size_t) 60), bytes, strerror(-r));
        assert_error(m, LEASE_IF "ProtocolError");
        assert_non_null(jstr(reply_params(m), "reason"));
        if (vconn_wait_closed(c, HELPER_REPLY_TIMEOUT) < 0)
                fail_msg("connection not closed after ProtocolError for %.*s", (int) MIN(n, (size_t) 60),
                         bytes);
        vconn_close(c);
}

static void test_invalid_json(void **state) {
        Agend *a = *state;
        static const char *const cases[] = {
                "{\"method\":",                         /* truncated */
                "this is not json",
                "{\"method\":\"io.agend.Lease.Status\",}", /* trailing comma */
                "{'method':'io.agend.Lease.Status'}",   /* single quotes */
                "\xff\xfe\x01\x02",                      /* not even UTF-8 */
                "{\"method\":\"io.agend.Lease.Status\"} {}", /* two values in one message */
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                assert_protocol_error(a, cases[i], strlen(cases[i]) + 1);
        /* A call split by a stray NUL: the first half is invalid JSON. */
        static const char split[] = "{\"method\":\"io.agend.Le\0ase.Status\"}";
        assert_protocol_error(a, split, sizeof(split));
        assert_serves(a);
}

/* JSON that is valid but not a varlink call: an error, whichever, or a disconnect. */
static void test_not_a_call(void **state) {
        Agend *a = *state;
        static const char *const cases[] = {
                "[1,2,3]", "42", "\"io.agend.Lease.Status\"", "null", "{}",
                "{\"method\":42}", "{\"method\":\"io.agend.Lease.Status\",\"parameters\":[]}",
                "{\"method\":\"io.agend.Lease.Status\",\"more\":\"yes\"}",
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                VConn *c = OPEN(a);
                assert_int_equal(vconn_send_raw(c, cases[i], strlen(cases[i]) + 1), 0);
                json_object *m = NULL;
                int r = vconn_recv(c, HELPER_REPLY_TIMEOUT, &m);
                if (r == -ETIMEDOUT)
                        fail_msg("no answer and no disconnect for %s", cases[i]);
                if (r == 0 && !reply_error(m))
                        fail_msg("%s was answered as if it were a call: %s", cases[i], jtext(m));
                vconn_close(c);
        }
        assert_serves(a);
}

static void test_unknown_method(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        json_object *e = CALL_ERR(c, "org.varlink.service.MethodNotFound", LEASE_IF "Frobnicate", "{}");
        assert_non_null(jstr(e, "method"));
        assert_non_null(strstr(jstr(e, "method"), "Frobnicate"));
        CALL_ERR(c, "org.varlink.service.MethodNotFound", LEASE_IF "acquire", "{\"resource\":\"x\"}");
        CALL_ERR(c, "org.varlink.service.MethodNotFound", "org.varlink.service.Frobnicate", "{}");
        /* An unknown interface: varlink says InterfaceNotFound; MethodNotFound is tolerable. */
        json_object *m = CALL(c, "com.example.Nope.Method", "{}");
        if (!reply_error(m) || (strcmp(reply_error(m), "org.varlink.service.InterfaceNotFound") &&
                                strcmp(reply_error(m), "org.varlink.service.MethodNotFound")))
                fail_msg("unknown interface: %s", jtext(m));
        /* The connection is still served. */
        CALL_OK(c, LEASE_IF "Status", "{}");
}

/* Each call must fail with InvalidParameter naming the parameter, and leave the connection
 * (and the resource) usable. */
static void test_invalid_parameters(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        static const struct {
                const char *method, *params, *parameter;
        } cases[] = {
                { "Acquire", "{}", "resource" },
                { "Acquire", "{\"resource\":42}", "resource" },
                { "Acquire", "{\"resource\":null}", "resource" },
                { "Acquire", "{\"resource\":[\"a\"]}", "resource" },
                { "Acquire", "{\"resource\":\"\"}", "resource" },
                { "Acquire", "{\"resource\":\"r\",\"units\":\"two\"}", "units" },
                { "Acquire", "{\"resource\":\"r\",\"units\":1.5}", "units" },
                { "Acquire", "{\"resource\":\"r\",\"units\":0}", "units" },
                { "Acquire", "{\"resource\":\"r\",\"units\":-1}", "units" },
                { "Acquire", "{\"resource\":\"r\",\"exclusive\":\"yes\"}", "exclusive" },
                { "Acquire", "{\"resource\":\"r\",\"timeout\":\"soon\"}", "timeout" },
                { "Acquire", "{\"resource\":\"r\",\"timeout\":-1}", "timeout" },
                { "Acquire", "{\"resource\":\"r\",\"ttl\":\"long\"}", "ttl" },
                { "Acquire", "{\"resource\":\"r\",\"ttl\":-0.5}", "ttl" },
                { "Acquire", "{\"resource\":\"r\",\"detached\":1}", "detached" },
                { "Acquire", "{\"resource\":\"r\",\"description\":7}", "description" },
                { "Release", "{}", "id" },
                { "Release", "{\"id\":5}", "id" },
                { "Release", "{\"id\":\"x\",\"secret\":5}", "secret" },
                { "Renew", "{\"id\":\"x\",\"ttl\":\"1\"}", "ttl" },
                { "Reclaim", "{\"id\":\"x\",\"token\":\"1\",\"secret\":\"s\"}", "token" },
                { "Reclaim", "{\"id\":\"x\",\"secret\":\"s\"}", "token" },
                { "List", "{\"resource\":1}", "resource" },
                { "History", "{\"limit\":\"ten\"}", "limit" },
                { "Watch", "{\"resource\":false}", "resource" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char method[64];
                snprintf(method, sizeof(method), LEASE_IF "%s", cases[i].method);
                json_object *m = CALL(c, method, "%s", cases[i].params);
                const char *e = reply_error(m);
                if (!e || strcmp(e, "org.varlink.service.InvalidParameter") != 0)
                        fail_msg("%s %s: expected InvalidParameter, got %s", cases[i].method, cases[i].params,
                                 jtext(m));
                const char *p = jstr(reply_params(m), "parameter");
                if (!p || strcmp(p, cases[i].parameter) != 0)
                        fail_msg("%s %s: InvalidParameter names \"%s\", expected \"%s\"", cases[i].method,
                                 cases[i].params, p ? p : "(nothing)", cases[i].parameter);
        }
        /* Nothing was granted or queued by the bad calls; the connection works. */
        json_object *s = CALL_OK(c, LEASE_IF "Status", "{}");
        assert_int_equal(jint(s, "leases"), 0);
        assert_int_equal(jint(s, "waiters"), 0);
        GRANT(c, "{\"resource\":\"r\",\"timeout\":0}");
}

/* A NUL escaped inside a JSON string: valid JSON, but no C string can carry it. */
static void test_nul_in_string(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        json_object *e = CALL_ERR(c, "org.varlink.service.InvalidParameter", LEASE_IF "Acquire",
                                  "{\"resource\":\"gp\\u0000u\"}");
        assert_string_equal(jstr(e, "parameter"), "resource");
        e = CALL_ERR(c, "org.varlink.service.InvalidParameter", LEASE_IF "Acquire",
                     "{\"resource\":\"ok\",\"description\":\"a\\u0000b\"}");
        assert_string_equal(jstr(e, "parameter"), "description");
        e = CALL_ERR(c, "org.varlink.service.InvalidParameter", LEASE_IF "Release", "{\"id\":\"\\u0000\"}");
        assert_string_equal(jstr(e, "parameter"), "id");
        /* Neither resource came to exist. */
        json_object *rs = jget(CALL_OK(c, LEASE_IF "Resources", "{}"), "resources");
        for (size_t i = 0; i < json_object_array_length(rs); i++) {
                const char *n = jstr(json_object_array_get_idx(rs, i), "name");
                assert_true(!n || strncmp(n, "gp", 2) != 0);
        }
        /* And the escapes that are fine still work. */
        json_object *l = GRANT_LEASE(c, "{\"resource\":\"caf\\u00e9\",\"description\":\"tab\\there\"}");
        assert_string_equal(jstr(l, "resource"), "caf\xc3\xa9");
        assert_string_equal(jstr(l, "description"), "tab\there");
}

/* The forms of a parameter the daemon reads as json-c did: a repeated key keeps its last
 * value, integers past int64 saturate, 1.0 is an integer, NaN and Infinity are numbers no
 * getter takes, escaped keys are the same keys, nested unknown members are named. Some of
 * these messages are read by the call scanner, the others by json-c. */
static void test_parameter_forms(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        json_object *l = GRANT_LEASE(c, "{\"resource\":\"forms\",\"units\":\"x\",\"units\":1}");
        assert_int_equal(jint(l, "units"), 1);
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(l, "id"));
        l = GRANT_LEASE(c, "{\"\\u0072esource\":\"forms\",\"units\":1.0,\"ttl\":1e2}");
        assert_int_equal(jint(l, "units"), 1);
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\",\"id\":\"%s\"}", "nope", jstr(l, "id"));

        static const struct {
                const char *method, *params, *parameter;
        } cases[] = {
                { "Acquire", "{\"resource\":\"forms\",\"units\":1,\"units\":\"x\"}", "units" },
                { "Acquire", "{\"resource\":\"forms\",\"units\":99999999999999999999}", "units" },
                { "Acquire", "{\"resource\":\"forms\",\"units\":-99999999999999999999}", "units" },
                { "Acquire", "{\"resource\":\"forms\",\"units\":-01}", "units" },
                { "Acquire", "{\"resource\":\"forms\",\"timeout\":NaN}", "timeout" },
                { "Acquire", "{\"resource\":\"forms\",\"timeout\":-Infinity}", "timeout" },
                { "Acquire", "{\"resource\":\"forms\",\"ttl\":1e400}", "ttl" },
                { "Acquire", "{\"resource\":\"forms\",\"extra\":{\"a\":[1,{\"b\":null}]}}", "extra" },
                { "Acquire", "{\"resource\":\"forms\",\"units\\u0000x\":\"y\"}", "units" },
                { "History", "{\"before\":-1}", "before" },
                { "Renew", "{\"id\":\"x\",\"ttl\":\"1\",\"ttl\":null,\"ttl\":true}", "ttl" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char method[64];
                snprintf(method, sizeof(method), LEASE_IF "%s", cases[i].method);
                json_object *m = CALL(c, method, "%s", cases[i].params);
                const char *e = reply_error(m), *p = jstr(reply_params(m), "parameter");
                if (!e || strcmp(e, "org.varlink.service.InvalidParameter") != 0 || !p ||
                    strcmp(p, cases[i].parameter) != 0)
                        fail_msg("%s %s: expected InvalidParameter \"%s\", got %s", cases[i].method,
                                 cases[i].params, cases[i].parameter, jtext(m));
        }
        /* Past int64 saturates to INT64_MAX, a valid "before". */
        CALL_OK(c, LEASE_IF "History", "{\"before\":99999999999999999999}");
        json_object *s = CALL_OK(c, LEASE_IF "Status", "{}");
        assert_int_equal(jint(s, "leases"), 0);
        vconn_close(c);
        assert_serves(a);
}

/* 100 MB in one message that never ends: the daemon must give up while the bytes arrive
 * (1 MiB limit by default), not after reading them all. */
static void test_huge_message(void **state) {
        Agend *a = *state;
        const size_t total = 100u << 20, chunk = 1u << 16;
        VConn *c = OPEN(a);
        char *buf = malloc(chunk);
        assert_non_null(buf);
        memset(buf, 'a', chunk);
        static const char head[] = "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"";
        assert_int_equal(vconn_send_raw(c, head, strlen(head)), 0);

        size_t sent = strlen(head);
        int err = 0;
        double deadline = helper_now() + 30.0;
        while (sent < total && !err) {
                ssize_t k = send(c->fd, buf, MIN(chunk, total - sent), MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k > 0) {
                        sent += (size_t) k;
                        continue;
                }
                if (k < 0 && errno != EAGAIN && errno != EINTR) {
                        err = errno;
                        break;
                }
                struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
                int left = (int) ((deadline - helper_now()) * 1000);
                if (left <= 0 || poll(&pfd, 1, left) == 0)
                        break;
                /* POLLHUP/POLLERR: the next send reports it. */
        }
        free(buf);
        fprintf(stderr, "sent %zu bytes before %s\n", sent, err ? strerror(err) : "stopping");
        if (!err)
                fail_msg("the daemon took %zu bytes of one message without closing the connection", sent);
        assert_true(err == EPIPE || err == ECONNRESET);
        /* 1 MiB limit, plus what the socket buffers hold. */
        if (sent > (16u << 20))
                fail_msg("the daemon read %zu bytes of an oversized message before closing", sent);

        /* If it could still say why, it said ProtocolError. */
        json_object *m = NULL;
        int r = vconn_recv(c, 1.0, &m);
        if (r == 0)
                assert_error(m, LEASE_IF "ProtocolError");
        else
                assert_true(r == -ECONNRESET);
        vconn_close(c);
        assert_serves(a);
}

/* Just over the limit, terminated: the same, and just under it is fine. */
static void test_size_limit_edges(void **state) {
        Agend *a = *state;
        const size_t limit = 1u << 20;
        char *msg = malloc(limit + 128);
        assert_non_null(msg);
        /* A valid call of ~1.5 MiB (a long description). */
        int n = snprintf(msg, 128, "{\"method\":\"io.agend.Lease.Acquire\","
                                   "\"parameters\":{\"resource\":\"big\",\"description\":\"");
        size_t len = (size_t) n;
        memset(msg + len, 'd', limit - len - 16);
        len = limit - 16;
        memcpy(msg + len, "\"}}", 4);
        len += 4; /* includes the NUL: a message of limit - 12 bytes */
        VConn *c = OPEN(a);
        assert_int_equal(vconn_send_raw(c, msg, len), 0);
        json_object *m = RECV(c, HELPER_REPLY_TIMEOUT);
        /* Under the limit: answered (a grant, or a refusal of so long a description). */
        if (reply_error(m))
                assert_string_not_equal(reply_error(m), LEASE_IF "ProtocolError");
        vconn_close(c);
        free(msg);
        assert_serves(a);
}

/* 1000 connections sending garbage; a well-behaved client is served all along. */
static void test_thousand_garbage_connections(void **state) {
        Agend *a = *state;
        enum { N = 1000 };
        assert_int_equal(helper_raise_nofile(N + 256), 0);
        static const char *const garbage[] = {
                "garbage\n", "{\"method\":", "\x01\x02\x03\xff", "{\"method\":\"io.agend.Lease.Status\",,}",
        };
        VConn *good = OPEN(a);
        VConn **conns = calloc(N, sizeof(VConn *));
        assert_non_null(conns);
        double worst = 0;
        for (int i = 0; i < N; i++) {
                int r = vconn_open_agend(a, &conns[i]);
                if (r < 0)
                        fail_msg("connection %d: %s", i, strerror(-r));
                const char *g = garbage[i % ELEMENTSOF(garbage)];
                /* Some send it in one piece with the NUL, some byte by byte. */
                if (i % 10 == 0) {
                        for (size_t k = 0; k <= strlen(g) && r == 0; k++)
                                r = vconn_send_raw(conns[i], g + k, 1);
                } else
                        r = vconn_send_raw(conns[i], g, strlen(g) + 1);
                /* The daemon may close as soon as it sees garbage, before the NUL. */
                if (r < 0 && r != -EPIPE && r != -ECONNRESET)
                        fail_msg("connection %d: send: %s", i, strerror(-r));
                if (i % 100 == 99) {
                        double t0 = helper_now();
                        CALL_OK(good, LEASE_IF "Status", "{}");
                        worst = MAX(worst, helper_now() - t0);
                }
        }
        fprintf(stderr, "slowest Status among the garbage: %.1f ms\n", worst * 1e3);
        assert_true(worst < 2.0);

        /* Every garbage connection got an error or was closed, promptly. */
        double deadline = helper_now() + 20.0;
        int errors = 0, closed = 0;
        for (int i = 0; i < N; i++) {
                json_object *m = NULL;
                int r = vconn_recv(conns[i], MAX(deadline - helper_now(), 0.01), &m);
                if (r == 0) {
                        if (!reply_error(m))
                                fail_msg("garbage on connection %d was answered: %s", i, jtext(m));
                        errors++;
                } else if (r == -ECONNRESET)
                        closed++;
                else
                        fail_msg("connection %d: neither an error nor a close: %s", i, strerror(-r));
                /* And, after the error, a close. */
                if (r == 0 && vconn_wait_closed(conns[i], MAX(deadline - helper_now(), 0.01)) < 0)
                        fail_msg("connection %d: not closed after its error", i);
                vconn_close(conns[i]);
        }
        free(conns);
        fprintf(stderr, "%d errors (then closed), %d closed without a word\n", errors, closed);

        assert_serves(a);
        CALL_OK(good, LEASE_IF "Status", "{}");
        /* The daemon forgot them: connections back to the few we hold. */
        deadline = helper_now() + 5.0;
        while (jint(CALL_OK(good, LEASE_IF "Status", "{}"), "connections") > 10) {
                assert_true(helper_now() < deadline);
                helper_sleep(0.02);
        }
}

/* A message split at every byte (each piece sent alone) is still one message. */
static void test_split_at_every_byte(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        static const char call[] =
                "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"slow\"}}";
        for (size_t i = 0; i < sizeof(call); i++) {
                assert_int_equal(vconn_send_raw(c, call + i, 1), 0);
                if (i % 16 == 0)
                        helper_sleep(0.001);
        }
        assert_granted(RECV(c, HELPER_REPLY_TIMEOUT));
        /* And three calls in one write: three replies, in order. */
        static const char three[] = "{\"method\":\"io.agend.Lease.Status\"}\0"
                                    "{\"method\":\"io.agend.Lease.List\",\"parameters\":{}}\0"
                                    "{\"method\":\"org.varlink.service.GetInfo\"}";
        assert_int_equal(vconn_send_raw(c, three, sizeof(three)), 0);
        assert_non_null(jstr(reply_params(RECV(c, HELPER_REPLY_TIMEOUT)), "boot_id"));
        assert_non_null(jget(reply_params(RECV(c, HELPER_REPLY_TIMEOUT)), "leases"));
        assert_non_null(jget(reply_params(RECV(c, HELPER_REPLY_TIMEOUT)), "interfaces"));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_invalid_json, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_not_a_call, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_unknown_method, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_invalid_parameters, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_nul_in_string, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_parameter_forms, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_huge_message, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_size_limit_edges, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_thousand_garbage_connections, helper_setup,
                                                helper_teardown),
                cmocka_unit_test_setup_teardown(test_split_at_every_byte, helper_setup, helper_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

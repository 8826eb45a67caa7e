/* SPDX-License-Identifier: MIT */
/* Waiting on the real agend: FIFO order with streamed positions, try-once, waiter
 * timeouts, capacities (units, exclusive, no overtaking of a large head request), and a
 * holder killed with SIGKILL losing its lease within 100 ms. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-agend.h"

/* A daemon with one declared resource of capacity 4. */
static int setup_pool(void **state) {
        Agend *a = NULL;
        if (agend_new(&a) < 0 || agend_declare_resource(a, "pool", 4) < 0 || agend_start(a) < 0) {
                fprintf(stderr, "setup: agend with a declared resource did not start\n");
                helper_cleanup();
                return -1;
        }
        *state = a;
        return 0;
}

/* Sends a waiting Acquire with "more" and checks its first reply: queued at position. */
static void enqueue(VConn *w, const char *params, int64_t position) {
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire", "%s", params), 0);
        assert_queued(RECV(w, HELPER_REPLY_TIMEOUT), position);
}

/* The grant that ends a streaming Acquire: no continues after it. */
static json_object *expect_grant(VConn *w) {
        json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
        json_object *p = assert_granted(m);
        assert_false(reply_continues(m));
        return p;
}

static void test_fifo_three_waiters(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w[3];
        json_object *hold = GRANT_LEASE(h, "{\"resource\":\"m\"}");

        for (int i = 0; i < 3; i++) {
                w[i] = OPEN(a);
                char params[128];
                snprintf(params, sizeof(params), "{\"resource\":\"m\",\"description\":\"waiter %d\"}", i);
                enqueue(w[i], params, i + 1);
        }

        /* List shows the queue in order, 1-based. */
        json_object *list = CALL_OK(h, LEASE_IF "List", "{\"resource\":\"m\"}");
        json_object *ws = jget(list, "waiters");
        assert_int_equal(json_object_array_length(ws), 3);
        for (int i = 0; i < 3; i++) {
                json_object *x = json_object_array_get_idx(ws, (size_t) i);
                char d[32];
                snprintf(d, sizeof(d), "waiter %d", i);
                /* Either listed in queue order or each with its position; both must agree. */
                int64_t pos = jint(x, "position");
                assert_true(pos >= 1 && pos <= 3);
                snprintf(d, sizeof(d), "waiter %d", (int) pos - 1);
                assert_string_equal(jstr(x, "description"), d);
                assert_string_equal(jstr(x, "resource"), "m");
                assert_int_equal(jint(x, "owner.pid"), getpid());
        }

        /* Each release grants the head; the others move up by one, and are told. */
        CALL_OK(h, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(hold, "id"));
        json_object *g0 = jget(expect_grant(w[0]), "lease");
        assert_string_equal(jstr(g0, "description"), "waiter 0");
        assert_queued(RECV(w[1], HELPER_REPLY_TIMEOUT), 1);
        assert_queued(RECV(w[2], HELPER_REPLY_TIMEOUT), 2);

        CALL_OK(w[0], LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(g0, "id"));
        json_object *g1 = jget(expect_grant(w[1]), "lease");
        assert_string_equal(jstr(g1, "description"), "waiter 1");
        assert_queued(RECV(w[2], HELPER_REPLY_TIMEOUT), 1);

        CALL_OK(w[1], LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(g1, "id"));
        json_object *g2 = jget(expect_grant(w[2]), "lease");
        assert_string_equal(jstr(g2, "description"), "waiter 2");

        assert_true(jint(hold, "token") < jint(g0, "token"));
        assert_true(jint(g0, "token") < jint(g1, "token"));
        assert_true(jint(g1, "token") < jint(g2, "token"));
        assert_int_equal(json_object_array_length(jget(CALL_OK(h, LEASE_IF "List", "{}"), "waiters")), 0);
}

/* Without "more", a waiter hears nothing until its one reply, the grant. */
static void test_wait_without_more(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w = OPEN(a);
        json_object *hold = GRANT_LEASE(h, "{\"resource\":\"q\"}");
        assert_int_equal(vconn_send(w, 0, LEASE_IF "Acquire", "{\"resource\":\"q\"}"), 0);
        assert_silent(w, 0.3);
        assert_int_equal(jint(CALL_OK(h, LEASE_IF "Status", "{}"), "waiters"), 1);
        CALL_OK(h, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(hold, "id"));
        json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
        assert_granted(m);
        assert_false(reply_continues(m));
}

static void test_try_once(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *c = OPEN(a);

        /* Free: timeout 0 grants at once. */
        json_object *hold =
                GRANT_LEASE(h, "{\"resource\":\"busy\",\"timeout\":0}");

        /* Busy: Timeout naming the resource, without queueing. */
        double t0 = helper_now();
        static const char busy[] = "{\"resource\":\"busy\",\"timeout\":0}";
        json_object *e = CALL_ERR(c, LEASE_IF "Timeout", LEASE_IF "Acquire", busy);
        assert_true(helper_now() - t0 < 1.0);
        assert_string_equal(jstr(e, "resource"), "busy");
        /* Also with "more": no queued reply, just the error. */
        assert_int_equal(vconn_send(c, VL_MORE, LEASE_IF "Acquire", busy), 0);
        assert_error(RECV(c, HELPER_REPLY_TIMEOUT), LEASE_IF "Timeout");
        json_object *list = CALL_OK(c, LEASE_IF "List", "{\"resource\":\"busy\"}");
        assert_int_equal(json_object_array_length(jget(list, "waiters")), 0);
        assert_int_equal(json_object_array_length(jget(list, "leases")), 1);
        assert_string_equal(jstr(list, "leases.0.id"), jstr(hold, "id"));
}

static void test_waiter_timeout(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w1 = OPEN(a), *w2 = OPEN(a);
        json_object *hold = GRANT_LEASE(h, "{\"resource\":\"t\"}");

        double t0 = helper_now();
        enqueue(w1, "{\"resource\":\"t\",\"timeout\":0.5}", 1);
        enqueue(w2, "{\"resource\":\"t\"}", 2);

        /* w1 gives up after its timeout; w2 moves up. */
        json_object *m = RECV(w1, HELPER_REPLY_TIMEOUT);
        double waited = helper_now() - t0;
        assert_error(m, LEASE_IF "Timeout");
        assert_string_equal(jstr(reply_params(m), "resource"), "t");
        if (waited < 0.45 || waited > 2.5)
                fail_msg("a waiter with timeout 0.5 gave up after %.3fs", waited);
        assert_queued(RECV(w2, HELPER_REPLY_TIMEOUT), 1);
        assert_int_equal(json_object_array_length(jget(CALL_OK(h, LEASE_IF "List", "{}"), "waiters")), 1);

        /* The release goes to w2; w1 gets nothing more, and its connection still serves. */
        CALL_OK(h, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(hold, "id"));
        expect_grant(w2);
        assert_silent(w1, 0.1);
        CALL_OK(w1, LEASE_IF "Status", "{}");
}

/* A waiter that disconnects is removed from the queue. */
static void test_waiter_disconnect(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w1 = OPEN(a), *w2 = OPEN(a);
        json_object *hold = GRANT_LEASE(h, "{\"resource\":\"d\"}");
        enqueue(w1, "{\"resource\":\"d\"}", 1);
        enqueue(w2, "{\"resource\":\"d\"}", 2);
        vconn_close(w1);
        assert_queued(RECV(w2, HELPER_REPLY_TIMEOUT), 1);
        CALL_OK(h, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(hold, "id"));
        expect_grant(w2);
        assert_int_equal(jint(CALL_OK(h, LEASE_IF "Status", "{}"), "waiters"), 0);
}

static json_object *find_resource(VConn *c, const char *name) {
        json_object *rs = jget(CALL_OK(c, LEASE_IF "Resources", "{}"), "resources");
        for (size_t i = 0; i < json_object_array_length(rs); i++) {
                json_object *r = json_object_array_get_idx(rs, i);
                if (jstr(r, "name") && strcmp(jstr(r, "name"), name) == 0)
                        return r;
        }
        fail_msg("resource %s not listed", name);
        return NULL;
}

/* A grant to a waiter that may first be told it moved to position 1. */
static json_object *expect_grant_maybe_moved(VConn *w) {
        json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
        if (strcmp(reply_state(m), "queued") == 0) {
                assert_queued(m, 1);
                m = RECV(w, HELPER_REPLY_TIMEOUT);
        }
        json_object *p = assert_granted(m);
        assert_false(reply_continues(m));
        return p;
}

static void test_capacity_units(void **state) {
        Agend *a = *state;
        VConn *ca = OPEN(a), *cb = OPEN(a), *cc = OPEN(a), *cd = OPEN(a);

        json_object *r = find_resource(ca, "pool");
        assert_int_equal(jint(r, "capacity"), 4);
        assert_true(json_object_get_boolean(jget(r, "declared")));
        assert_int_equal(jint(r, "used"), 0);

        json_object *la = GRANT_LEASE(ca, "{\"resource\":\"pool\",\"units\":3}");
        assert_int_equal(jint(la, "units"), 3);
        json_object *lb = GRANT_LEASE(cb, "{\"resource\":\"pool\",\"units\":1}");
        assert_int_equal(jint(lb, "units"), 1);
        assert_int_equal(jint(find_resource(ca, "pool"), "used"), 4);

        /* C (2 units) waits at the head; D (1 unit) behind it. */
        enqueue(cc, "{\"resource\":\"pool\",\"units\":2}", 1);
        enqueue(cd, "{\"resource\":\"pool\",\"units\":1}", 2);

        /* One unit frees up: it would fit D, but D must not overtake C. */
        CALL_OK(cb, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(lb, "id"));
        assert_silent(cc, 0.2);
        assert_silent(cd, 0.01);
        assert_int_equal(jint(find_resource(ca, "pool"), "used"), 3);
        assert_int_equal(jint(find_resource(ca, "pool"), "waiters"), 2);

        /* Three more free: C then D, in that order. */
        CALL_OK(ca, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(la, "id"));
        json_object *lc = jget(expect_grant(cc), "lease");
        json_object *ld = jget(expect_grant_maybe_moved(cd), "lease");
        assert_int_equal(jint(lc, "units"), 2);
        assert_int_equal(jint(ld, "units"), 1);
        assert_true(jint(lc, "token") < jint(ld, "token"));
        assert_int_equal(jint(find_resource(ca, "pool"), "used"), 3);

        /* A request larger than the capacity can never be granted: an error, at once. */
        json_object *big = CALL(ca, LEASE_IF "Acquire", "{\"resource\":\"pool\",\"units\":5}");
        assert_non_null(reply_error(big));
        /* And units on an undeclared resource (capacity 1). */
        assert_non_null(reply_error(CALL(ca, LEASE_IF "Acquire", "{\"resource\":\"small\",\"units\":2}")));
}

static void test_capacity_exclusive(void **state) {
        Agend *a = *state;
        VConn *ca = OPEN(a), *cb = OPEN(a), *ce = OPEN(a), *cf = OPEN(a);

        json_object *la = GRANT_LEASE(ca, "{\"resource\":\"pool\",\"units\":2}");
        json_object *lb = GRANT_LEASE(cb, "{\"resource\":\"pool\",\"units\":1}");

        /* E wants everything; F (1 unit, which is free) must not overtake it. */
        enqueue(ce, "{\"resource\":\"pool\",\"exclusive\":true}", 1);
        enqueue(cf, "{\"resource\":\"pool\",\"units\":1}", 2);
        assert_silent(cf, 0.2);

        CALL_OK(ca, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(la, "id"));
        assert_silent(ce, 0.2);
        CALL_OK(cb, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(lb, "id"));
        json_object *le = jget(expect_grant(ce), "lease");
        assert_true(json_object_get_boolean(jget(le, "exclusive")));
        assert_int_equal(jint(le, "units"), 4);
        assert_int_equal(jint(find_resource(ca, "pool"), "used"), 4);

        /* F moves to the head but still waits: E holds everything. */
        assert_queued(RECV(cf, HELPER_REPLY_TIMEOUT), 1);
        assert_silent(cf, 0.2);
        /* A try-once while E holds it all fails even for one unit. */
        CALL_ERR(ca, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"pool\",\"timeout\":0}");

        CALL_OK(ce, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(le, "id"));
        json_object *lf = jget(expect_grant(cf), "lease");
        assert_int_equal(jint(lf, "units"), 1);
        assert_false(json_object_get_boolean(jget(lf, "exclusive")));
}

/* kill -9 of a holder: the kernel closes its connection, and the next waiter (another
 * connection) holds the lease within 100 ms of the kill. Up to three attempts, so one
 * scheduling hiccup of a loaded CI machine does not fail it; a daemon that notices late
 * (on a timer, on the next call) fails every attempt. */
static void test_sigkill_holder(void **state) {
        Agend *a = *state;
        VConn *obs = OPEN(a);
        double best = 1e9;
        for (int attempt = 0; attempt < 3 && best >= 0.1; attempt++) {
                Holder *h = NULL;
                assert_int_equal(holder_start(a, "{\"resource\":\"k\"}", HELPER_REPLY_TIMEOUT, &h), 0);
                json_object *hl = jget(assert_granted(h->reply), "lease");
                VConn *w = OPEN(a);
                enqueue(w, "{\"resource\":\"k\"}", 1);

                double t0 = helper_now();
                assert_int_equal(holder_kill(h), 0);
                json_object *m = RECV(w, 2.0);
                double dt = helper_now() - t0;
                json_object *g = assert_granted(m);
                best = MIN(best, dt);
                fprintf(stderr, "attempt %d: granted %.1f ms after SIGKILL of the holder\n", attempt, dt * 1e3);
                assert_true(jint(g, "lease.token") > jint(hl, "token"));

                /* The killed holder's lease ended, with a reason in the history. */
                json_object *list = CALL_OK(obs, LEASE_IF "List", "{\"resource\":\"k\"}");
                assert_int_equal(json_object_array_length(jget(list, "leases")), 1);
                assert_string_equal(jstr(list, "leases.0.id"), jstr(g, "lease.id"));
                json_object *evs = jget(CALL_OK(obs, LEASE_IF "History", "{\"resource\":\"k\"}"), "events");
                bool ended = false;
                for (size_t i = 0; i < json_object_array_length(evs); i++) {
                        json_object *ev = json_object_array_get_idx(evs, i);
                        if (jstr(ev, "lease") && strcmp(jstr(ev, "lease"), jstr(hl, "id")) == 0 &&
                            strcmp(jstr(ev, "type"), "released") == 0) {
                                assert_non_null(jstr(ev, "reason"));
                                ended = true;
                        }
                }
                assert_true(ended);
                holder_free(h);
                vconn_close(w);
                /* w's close released its lease too; wait until k is free for the next round. */
                double deadline = helper_now() + HELPER_REPLY_TIMEOUT;
                for (;;) {
                        json_object *l = CALL_OK(obs, LEASE_IF "List", "{\"resource\":\"k\"}");
                        if (json_object_array_length(jget(l, "leases")) == 0)
                                break;
                        assert_true(helper_now() < deadline);
                        helper_sleep(0.005);
                }
        }
        if (best >= 0.1)
                fail_msg("the waiter was granted %.1f ms after the holder's SIGKILL at best; want < 100 ms",
                         best * 1e3);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_fifo_three_waiters, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_wait_without_more, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_try_once, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_waiter_timeout, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_waiter_disconnect, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_capacity_units, setup_pool, helper_teardown),
                cmocka_unit_test_setup_teardown(test_capacity_exclusive, setup_pool, helper_teardown),
                cmocka_unit_test_setup_teardown(test_sigkill_holder, helper_setup, helper_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* Lease lifetimes on the real agend: TTL expiry and Renew, detached leases that outlive
 * their connection, release by secret from another connection, and PermissionDenied for
 * callers that are neither the holder nor root (tested from a child running as uid 65534
 * when the test runs as root). */

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

static bool history_has(VConn *c, const char *resource, const char *type, const char *lease,
                        json_object **ret) {
        json_object *evs = jget(CALL_OK(c, LEASE_IF "History", "{\"resource\":\"%s\"}", resource), "events");
        assert_true(json_object_is_type(evs, json_type_array));
        for (size_t i = 0; i < json_object_array_length(evs); i++) {
                json_object *ev = json_object_array_get_idx(evs, i);
                if (jstr(ev, "type") && strcmp(jstr(ev, "type"), type) == 0 && jstr(ev, "lease") &&
                    strcmp(jstr(ev, "lease"), lease) == 0) {
                        if (ret)
                                *ret = ev;
                        return true;
                }
        }
        return false;
}

static size_t count_leases(VConn *c, const char *resource) {
        json_object *l = CALL_OK(c, LEASE_IF "List", "{\"resource\":\"%s\"}", resource);
        return json_object_array_length(jget(l, "leases"));
}

/* Waits (bounded) until the resource has no lease; the seconds it took. */
static double wait_no_lease(VConn *c, const char *resource, double timeout) {
        double t0 = helper_now();
        while (count_leases(c, resource) > 0) {
                if (helper_now() - t0 > timeout)
                        fail_msg("a lease on %s is still listed after %.1fs", resource, timeout);
                helper_sleep(0.01);
        }
        return helper_now() - t0;
}

/* A streaming Acquire that waits for a lease to expire: queued at 1, then granted. (On a
 * machine so loaded that the lease expired before the call got there, the grant comes
 * first; the callers check the time.) */
static json_object *wait_grant(VConn *w, const char *params) {
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire", "%s", params), 0);
        json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
        if (strcmp(reply_state(m), "granted") != 0) {
                assert_queued(m, 1);
                m = RECV(w, HELPER_REPLY_TIMEOUT);
        }
        return assert_granted(m);
}

static void test_ttl_expiry(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a), *w = OPEN(a);

        double t0 = helper_now();
        json_object *l = GRANT_LEASE(c, "{\"resource\":\"ttl\",\"ttl\":0.3}");
        assert_true(jdouble(l, "ttl") > 0.29 && jdouble(l, "ttl") < 0.31);
        assert_true(jis(l, "deadline", json_type_int));
        int64_t span = jint(l, "deadline") - jint(l, "created");
        if (span < 250000 || span > 400000)
                fail_msg("deadline - created = %lld µs for a TTL of 0.3 s", (long long) span);

        /* Not renewed: it expires, and the waiter gets the resource. */
        json_object *g = wait_grant(w, "{\"resource\":\"ttl\"}");
        double dt = helper_now() - t0;
        if (dt < 0.25 || dt > 2.0)
                fail_msg("waiter granted %.3fs after a 0.3 s TTL lease was taken", dt);
        assert_true(jint(g, "lease.token") > jint(l, "token"));

        json_object *ev = NULL;
        assert_true(history_has(c, "ttl", "expired", jstr(l, "id"), &ev));
        assert_int_equal(jint(ev, "token"), jint(l, "token"));
        CALL_ERR(c, LEASE_IF "NoSuchLease", LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(l, "id"));
        CALL_ERR(c, LEASE_IF "NoSuchLease", LEASE_IF "Renew", "{\"id\":\"%s\"}", jstr(l, "id"));
}

static void test_renew(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a), *other = OPEN(a);

        json_object *p = GRANT(c, "{\"resource\":\"rn\",\"ttl\":1}");
        json_object *l = jget(p, "lease");
        const char *id = jstr(l, "id"), *secret = jstr(p, "secret");
        int64_t deadline0 = jint(l, "deadline");

        /* Renew without ttl re-applies the lease's own 1 s, from now. */
        helper_sleep(0.6);
        json_object *r = jget(CALL_OK(c, LEASE_IF "Renew", "{\"id\":\"%s\"}", id), "lease");
        assert_lease_shape(r);
        assert_string_equal(jstr(r, "id"), id);
        assert_int_equal(jint(r, "token"), jint(l, "token"));
        assert_true(jdouble(r, "ttl") > 0.99 && jdouble(r, "ttl") < 1.01);
        if (jint(r, "deadline") < deadline0 + 500000)
                fail_msg("Renew after 0.6 s moved the deadline by %lld µs only",
                         (long long) (jint(r, "deadline") - deadline0));

        /* Past the first deadline (0.4 s of margin either side), it is still held. */
        helper_sleep(0.6);
        assert_int_equal(count_leases(other, "rn"), 1);

        /* Renew with a ttl: deadline = now + ttl. */
        uint64_t now = helper_realtime_usec();
        r = jget(CALL_OK(c, LEASE_IF "Renew", "{\"id\":\"%s\",\"ttl\":3}", id), "lease");
        int64_t ahead = jint(r, "deadline") - (int64_t) now;
        if (ahead < 2500000 || ahead > 3500000)
                fail_msg("Renew with ttl 3 set the deadline %lld µs ahead", (long long) ahead);

        /* Another connection renews with the secret. */
        r = jget(CALL_OK(other, LEASE_IF "Renew", "{\"id\":\"%s\",\"ttl\":0.2,\"secret\":\"%s\"}", id, secret),
                 "lease");
        assert_string_equal(jstr(r, "id"), id);

        /* Left alone, it expires after the last renewal's 0.2 s. */
        double took = wait_no_lease(other, "rn", 3.0);
        assert_true(took < 2.0);
        assert_true(history_has(other, "rn", "renewed", id, NULL));
        assert_true(history_has(other, "rn", "expired", id, NULL));
}

/* Shared with the unprivileged child (fork copies them). */
static struct {
        const char *socket;
        char id[128], secret[256], ttl_id[128], ttl_secret[256];
} peer;

#define EXPECT_ERR(c, error, method, ...)                                                       \
        do {                                                                                    \
                json_object *_m = NULL;                                                         \
                step++;                                                                         \
                if (vconn_call((c), &_m, (method), __VA_ARGS__) < 0) {                          \
                        fprintf(stderr, "step %d: %s: no reply\n", step, (method));             \
                        return step;                                                            \
                }                                                                               \
                if (!reply_error(_m) || strcmp(reply_error(_m), (error)) != 0) {                \
                        fprintf(stderr, "step %d: %s: expected %s, got %s\n", step, (method), (error), \
                                jtext(_m));                                                     \
                        return step;                                                            \
                }                                                                               \
                if ((error) == perm && !jstr(reply_params(_m), "reason")) {                     \
                        fprintf(stderr, "step %d: PermissionDenied without a reason\n", step);  \
                        return step;                                                            \
                }                                                                               \
        } while (0)
#define EXPECT_OK(c, method, ...)                                                               \
        do {                                                                                    \
                json_object *_m = NULL;                                                         \
                step++;                                                                         \
                if (vconn_call((c), &_m, (method), __VA_ARGS__) < 0 || reply_error(_m)) {       \
                        fprintf(stderr, "step %d: %s: %s\n", step, (method), jtext(_m));        \
                        return step;                                                            \
                }                                                                               \
        } while (0)

/* Runs as another uid (or, when not root, as the same uid on another connection): not the
 * holder, so only the secret lets it release or renew. */
static int stranger(void *userdata) {
        static const char *perm = LEASE_IF "PermissionDenied";
        int step = 0;
        VConn *c = NULL;
        if (vconn_open(peer.socket, &c) < 0)
                return 100;

        EXPECT_ERR(c, perm, LEASE_IF "Release", "{\"id\":\"%s\"}", peer.id);
        EXPECT_ERR(c, perm, LEASE_IF "Release", "{\"id\":\"%s\",\"secret\":\"wrong\"}", peer.id);
        EXPECT_ERR(c, perm, LEASE_IF "Renew", "{\"id\":\"%s\"}", peer.ttl_id);
        EXPECT_ERR(c, perm, LEASE_IF "Renew", "{\"id\":\"%s\",\"ttl\":60,\"secret\":\"%s\"}", peer.ttl_id,
                   peer.secret); /* the secret of another lease */
        EXPECT_ERR(c, perm, LEASE_IF "Revoke", "{\"id\":\"%s\"}", peer.id);

        /* Leases are visible to every local user; secrets are not. */
        json_object *m = NULL;
        step++;
        if (vconn_call(c, &m, LEASE_IF "List", "{}") < 0 || reply_error(m) ||
            json_object_array_length(jget(reply_params(m), "leases")) != 2 || strstr(jtext(m), peer.secret) ||
            strstr(jtext(m), peer.ttl_secret)) {
                fprintf(stderr, "step %d: List as a stranger: %s\n", step, jtext(m));
                return step;
        }

        /* With the right secret, a stranger may. */
        EXPECT_OK(c, LEASE_IF "Renew", "{\"id\":\"%s\",\"secret\":\"%s\"}", peer.ttl_id, peer.ttl_secret);
        EXPECT_OK(c, LEASE_IF "Release", "{\"id\":\"%s\",\"secret\":\"%s\"}", peer.id, peer.secret);
        return 0;
}

static void test_permission_denied(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a), *w = OPEN(a);
        json_object *p = GRANT(c, "{\"resource\":\"perm\"}");
        json_object *p2 = GRANT(c, "{\"resource\":\"perm2\",\"ttl\":60}");
        peer.socket = a->socket;
        snprintf(peer.id, sizeof(peer.id), "%s", jstr(p, "lease.id"));
        snprintf(peer.secret, sizeof(peer.secret), "%s", jstr(p, "secret"));
        snprintf(peer.ttl_id, sizeof(peer.ttl_id), "%s", jstr(p2, "lease.id"));
        snprintf(peer.ttl_secret, sizeof(peer.ttl_secret), "%s", jstr(p2, "secret"));
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"perm\"}"), 0);
        assert_queued(RECV(w, HELPER_REPLY_TIMEOUT), 1);

        int code = -1;
        assert_int_equal(helper_run_as(65534, 65534, stranger, NULL, 20., &code), 0);
        if (code != 0)
                fail_msg("the stranger's check failed at step %d (see its stderr)", code);

        /* The stranger's release (by secret) went through: the waiter holds it now. */
        assert_granted(RECV(w, HELPER_REPLY_TIMEOUT));
        CALL_ERR(c, LEASE_IF "NoSuchLease", LEASE_IF "Release", "{\"id\":\"%s\"}", peer.id);

        /* root may release what it does not hold, without the secret. */
        if (geteuid() == 0) {
                VConn *root = OPEN(a);
                CALL_OK(root, LEASE_IF "Release", "{\"id\":\"%s\"}", peer.ttl_id);
                assert_int_equal(count_leases(c, "perm2"), 0);
        }
}

static void test_detached(void **state) {
        Agend *a = *state;
        VConn *c1 = OPEN(a), *c3 = OPEN(a);
        json_object *p = assert_granted(
                CALL(c1, LEASE_IF "Acquire",
                     "{\"resource\":\"det\",\"detached\":true,\"description\":\"backup\"}"));
        json_object *l = jget(p, "lease");
        assert_true(json_object_get_boolean(jget(l, "detached")));
        char id[128], secret[256];
        snprintf(id, sizeof(id), "%s", jstr(l, "id"));
        snprintf(secret, sizeof(secret), "%s", jstr(p, "secret"));

        /* Contrast: a lease bound to its connection ends when it closes. */
        GRANT(c3, "{\"resource\":\"bound\"}");
        vconn_close(c3);
        vconn_close(c1);
        VConn *c2 = OPEN(a);
        wait_no_lease(c2, "bound", 2.0);

        /* The detached one is still there, held, after its connection closed. */
        helper_sleep(0.2);
        json_object *list = CALL_OK(c2, LEASE_IF "List", "{\"resource\":\"det\"}");
        assert_int_equal(json_object_array_length(jget(list, "leases")), 1);
        assert_string_equal(jstr(list, "leases.0.id"), id);
        assert_string_equal(jstr(list, "leases.0.state"), "held");
        assert_true(json_object_get_boolean(jget(list, "leases.0.detached")));
        CALL_ERR(c2, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"det\",\"timeout\":0}");

        /* Released by its secret from another connection (a wrong secret is refused, except
         * to root, who may release anything). */
        if (geteuid() != 0)
                CALL_ERR(c2, LEASE_IF "PermissionDenied", LEASE_IF "Release",
                         "{\"id\":\"%s\",\"secret\":\"x%s\"}", id, secret);
        CALL_OK(c2, LEASE_IF "Release", "{\"id\":\"%s\",\"secret\":\"%s\"}", id, secret);
        assert_int_equal(count_leases(c2, "det"), 0);
        GRANT(c2, "{\"resource\":\"det\",\"timeout\":0}");
}

/* A detached lease with a TTL ends by the TTL, with no connection left to close. */
static void test_detached_ttl(void **state) {
        Agend *a = *state;
        VConn *c1 = OPEN(a), *w = OPEN(a);
        double t0 = helper_now();
        json_object *l = GRANT_LEASE(c1, "{\"resource\":\"dt\",\"detached\":true,\"ttl\":0.3}");
        char id[128];
        snprintf(id, sizeof(id), "%s", jstr(l, "id"));
        vconn_close(c1);
        wait_grant(w, "{\"resource\":\"dt\"}");
        double dt = helper_now() - t0;
        if (dt < 0.25 || dt > 2.0)
                fail_msg("detached 0.3 s TTL lease ended after %.3fs", dt);
        VConn *c = OPEN(a);
        assert_true(history_has(c, "dt", "expired", id, NULL));
}

/* A duration under the clock's resolution is not "none": ttl 1e-7 on Acquire or Renew is
 * a TTL of 1 µs, so the lease expires; a timeout of 1e-7 on a busy resource times out. */
static void test_tiny_durations(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);

        json_object *l = GRANT_LEASE(c, "{\"resource\":\"tiny\",\"ttl\":1e-7}");
        if (!jget(l, "ttl") || !(jdouble(l, "ttl") > 0) || !jget(l, "deadline"))
                fail_msg("ttl 1e-7 gave a lease without a TTL: %s", jtext(l));
        wait_no_lease(c, "tiny", HELPER_REPLY_TIMEOUT);
        assert_true(history_has(c, "tiny", "expired", jstr(l, "id"), NULL));

        l = GRANT_LEASE(c, "{\"resource\":\"tiny-renew\",\"ttl\":1000}");
        json_object *r = CALL_OK(c, LEASE_IF "Renew", "{\"id\":\"%s\",\"ttl\":1e-7}", jstr(l, "id"));
        double ttl = jdouble(r, "lease.ttl");
        if (!(ttl > 0 && ttl < 1.0))
                fail_msg("Renew with ttl 1e-7 did not set a tiny TTL: %s", jtext(r));
        wait_no_lease(c, "tiny-renew", HELPER_REPLY_TIMEOUT);

        VConn *other = OPEN(a);
        GRANT(c, "{\"resource\":\"tiny-busy\"}");
        CALL_ERR(other, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"tiny-busy\",\"timeout\":1e-7}");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_ttl_expiry, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_renew, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_permission_denied, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_detached, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_detached_ttl, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_tiny_durations, helper_setup, helper_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* libagenclient's lease generator on a Scope=cluster resource of a real agend with a real
 * 3-member etcd (tests/helper-etcd.c): the same calls as for a local resource are granted,
 * and when agend loses etcd's quorum the holder steps DISCONNECTED and then LOST (the
 * daemon's "disconnected" and "voided" events); a waiter keeps its place in the cluster
 * queue across a restart of its agend (the generator re-sends its ticket), and a holder its
 * lease (the generator reclaims it). Skips (77) without an etcd binary. */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "helper-etcd.h"
#include "helper-lease.h"

#define TTL 3

static EtcdCluster *etcd;
/* LeaseTTLSec= of the agends a test starts: TTL, or longer where a restart must come back
 * well within it (setup_ttl10). */
static int ttl = TTL;

/* Writes a's config: host node on the test's etcd, with resources. */
static void write_cluster_config(Agend *a, const char *node, const char *resources) {
        FILE *cf = fopen(a->config, "we");
        assert_non_null(cf);
        fprintf(cf, "[Cluster]\nEndpoints=%s\nNode=%s\nPrefix=/agend-lease/\nLeaseTTLSec=%d\n\n%s",
                etcd_cluster_endpoints_string(etcd), node, ttl, resources);
        fclose(cf);
}

/* Waits until a grants cluster resources (its etcd lease granted, the prefix read): a
 * try-once Acquire of probe succeeds. */
static void wait_cluster_ready(Agend *a, const char *probe) {
        VConn *c = OPEN(a);
        double until = helper_now() + 30.0;
        for (;;) {
                json_object *r = CALL(c, LEASE_IF "Acquire", "{\"resource\": \"%s\", \"timeout\": 0}", probe);
                if (!reply_error(r))
                        break;
                if (helper_now() > until)
                        fail_msg("agend not ready: %s", jtext(r));
                helper_sleep(0.05);
        }
        vconn_close(c);
}

/* helper-lease.h's setup, with a [Cluster] config, waiting until agend grants cluster
 * resources (a try-once Acquire of "probe" succeeds). */
static int cluster_setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->fds = count_fds();
        assert_int_equal(agend_new(&f->a), 0);
        write_cluster_config(f->a, "n1", "[Resource]\nName=gpu\nScope=cluster\n\n[Resource]\nName=probe\nScope=cluster\n");
        assert_int_equal(agend_start(f->a), 0);
        wait_cluster_ready(f->a, "probe");
        f->loop = ev_loop_new(EVFLAG_AUTO);
        assert_non_null(f->loop);
        assert_int_equal(agen_client_new(f->loop, f->a->socket, &f->client), 0);
        ev_timer_init(&f->guard, guard_cb, GUARD_SEC, 0.);
        ev_timer_start(f->loop, &f->guard);
        ev_unref(f->loop);
        *state = f;
        return 0;
}

static void test_granted_and_released(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .description = "cluster" });
        assert_non_null(g);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        assert_true(s.ev.token > 0);
        assert_int_equal(n_leases(f, "gpu"), 1);
        Closed c = {};
        assert_int_equal(agen_gen_aclose(g, closed_cb, &c), 0);
        run_until(f, &c.done);
        assert_int_equal(c.status, 0);
        agen_gen_unref(g);
        wait_no_leases(f, "gpu");
}

static int setup_ttl10(void **state) {
        ttl = 10;
        int r = cluster_setup(state);
        ttl = TTL;
        return r;
}

/* A second host, "n2", on the same etcd, with gpu, once it grants cluster resources. */
static Agend *other_host(void) {
        Agend *b;
        assert_int_equal(agend_new(&b), 0);
        ttl = 10;
        write_cluster_config(b, "n2", "[Resource]\nName=gpu\nScope=cluster\n\n[Resource]\nName=probe-b\nScope=cluster\n");
        ttl = TTL;
        assert_int_equal(agend_start(b), 0);
        wait_cluster_ready(b, "probe-b");
        return b;
}

/* Ends g; then w, a waiter on the other host, is granted a token above after. Its lease is
 * released before that host stops: a stop keeps a holder's key until its etcd lease ends. */
static void end_then_granted(Fixture *f, agen_gen *g, VConn *w, uint64_t after) {
        Closed c = {};
        assert_int_equal(agen_gen_aclose(g, closed_cb, &c), 0);
        run_until(f, &c.done);
        assert_int_equal(c.status, 0);
        agen_gen_unref(g);
        json_object *m;
        for (;;) {
                m = RECV(w, 10.0);
                if (!streq_ptr(reply_state(m), "queued"))
                        break;
        }
        json_object *l = jget(assert_granted(m), "lease");
        assert_true((uint64_t) jint(l, "token") > after);
        CALL_OK(w, LEASE_IF "Release", "{\"id\": \"%s\"}", jstr(l, "id"));
}

static void stop_host(Agend *b) {
        int st;
        assert_int_equal(agend_stop(b, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A waiter queued behind a holder on another host keeps its place when its agend stops
 * (SIGTERM) and starts again on the same state directory: the generator reconnects, sends
 * its ticket, is queued first again and granted before a waiter on the other host that
 * queued after it. */
static void test_waiter_keeps_place_across_restart(void **state) {
        Fixture *f = *state;
        Agend *b = other_host();

        VConn *b1 = OPEN(b), *b2 = OPEN(b);
        json_object *held = GRANT_LEASE(b1, "{\"resource\": \"gpu\"}");
        char id1[80];
        snprintf(id1, sizeof(id1), "%s", jstr(held, "id"));
        uint64_t t1 = (uint64_t) jint(held, "token");

        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .description = "first waiter" });
        assert_non_null(g);
        assert_int_equal(next_event(f, g, AGEN_LEASE_QUEUED).ev.position, 1);
        /* The later waiter on the other host, once b's mirror has our key. */
        assert_int_equal(vconn_send(b2, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        json_object *q = RECV(b2, HELPER_REPLY_TIMEOUT);
        assert_string_equal(reply_state(q), "queued");
        assert_int_equal(jint(reply_params(q), "position"), 2);

        int st;
        assert_int_equal(agend_stop(f->a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        snprintf(f->a->grace, sizeof(f->a->grace), "%s", GRACE);
        assert_int_equal(agend_start(f->a), 0);

        /* The generator asks again with its ticket: first in line again. */
        assert_int_equal(next_event(f, g, AGEN_LEASE_QUEUED).ev.position, 1);
        /* b sees the same line: our key ahead of b2's (two waiters, not three). */
        json_object *ws = jget(CALL_OK(b1, LEASE_IF "List", "{\"resource\": \"gpu\"}"), "waiters");
        assert_int_equal(json_object_array_length(ws), 2);
        assert_string_equal(jstr(json_object_array_get_idx(ws, 0), "node"), "n1");
        assert_string_equal(jstr(json_object_array_get_idx(ws, 0), "description"), "first waiter");

        CALL_OK(b1, LEASE_IF "Release", "{\"id\": \"%s\"}", id1);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        assert_true(s.ev.token > t1);
        /* b2 still waits behind us. */
        json_object *m = NULL;
        assert_true(vconn_recv(b2, 0.2, &m) < 0 || streq_ptr(reply_state(m), "queued"));
        end_then_granted(f, g, b2, s.ev.token);
        vconn_close(b1);
        vconn_close(b2);
        stop_host(b);
}

/* A holder keeps its cluster lease across a restart of its agend (SIGTERM, start): the key
 * stays in etcd, the generator says DISCONNECTED at once and RECLAIMED with the same id and
 * token once the restarted agend has it back (a bound lease by Reclaim, a detached one by
 * watching it again, both sent before the restarted agend has read etcd); a waiter on
 * another host is not granted meanwhile, and is granted when the generator ends. */
static void holder_across_restart(void **state, bool detached) {
        Fixture *f = *state;
        Agend *b = other_host();

        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .description = "held across",
                                                                         .detached = detached });
        assert_non_null(g);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        VConn *b1 = OPEN(b);
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(b1, HELPER_REPLY_TIMEOUT)), "queued");

        int st;
        assert_int_equal(agend_stop(f->a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        Step d = next_event(f, g, AGEN_LEASE_DISCONNECTED);
        assert_string_equal(d.id, s.id);
        snprintf(f->a->grace, sizeof(f->a->grace), "%s", GRACE);
        /* etcd paused while agend starts: the generator's Reclaim (or Watch) reaches agend
         * before agend could read etcd, and must wait for the read rather than fail. */
        for (size_t i = 0; i < etcd->n; i++)
                assert_int_equal(etcd_cluster_signal(etcd, i, SIGSTOP), 0);
        assert_int_equal(agend_start(f->a), 0);
        run_for(f, 0.5);
        for (size_t i = 0; i < etcd->n; i++)
                assert_int_equal(etcd_cluster_signal(etcd, i, SIGCONT), 0);
        Step r = next_event(f, g, AGEN_LEASE_RECLAIMED);
        assert_string_equal(r.id, s.id);
        assert_int_equal(r.ev.token, s.ev.token);
        /* b's waiter waited all along. */
        json_object *m = NULL;
        assert_true(vconn_recv(b1, 0.2, &m) < 0 || streq_ptr(reply_state(m), "queued"));

        end_then_granted(f, g, b1, s.ev.token);
        vconn_close(b1);
        stop_host(b);
}

static void test_holder_reclaims_across_restart(void **state) {
        holder_across_restart(state, false);
}

static void test_detached_back_across_restart(void **state) {
        holder_across_restart(state, true);
}

/* Last: it breaks the etcd cluster. */
static void test_quorum_lost(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        assert_non_null(g);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.1);        /* the lease's Watch is in place */
        assert_int_equal(etcd_cluster_signal(etcd, 1, SIGKILL), 0);
        assert_int_equal(etcd_cluster_signal(etcd, 2, SIGKILL), 0);
        Step d = next_event(f, g, AGEN_LEASE_DISCONNECTED);
        assert_string_equal(d.id, s.id);
        Step l = next_event(f, g, AGEN_LEASE_LOST);
        assert_non_null(strstr(l.reason, "voided"));
        assert_int_equal(next(f, g).status, AGEN_STOP);
        agen_gen_unref(g);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_granted_and_released, cluster_setup, teardown),
                cmocka_unit_test_setup_teardown(test_waiter_keeps_place_across_restart, setup_ttl10, teardown),
                cmocka_unit_test_setup_teardown(test_holder_reclaims_across_restart, setup_ttl10, teardown),
                cmocka_unit_test_setup_teardown(test_detached_back_across_restart, setup_ttl10, teardown),
                cmocka_unit_test_setup_teardown(test_quorum_lost, cluster_setup, teardown),
        };
        int k = etcd_cluster_for_tests(&etcd);
        if (k != 0)
                return k;
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        etcd_cluster_free(etcd);
        return r;
}

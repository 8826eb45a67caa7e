/* SPDX-License-Identifier: MIT */
/* libagenclient's lease generator on a Scope=cluster resource of a real agend with a real
 * 3-member etcd (tests/helper-etcd.c): the same calls as for a local resource are granted,
 * and when agend loses etcd's quorum the holder steps DISCONNECTED and then LOST (the
 * daemon's "disconnected" and "voided" events). Skips (77) without an etcd binary. */
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

/* helper-lease.h's setup, with a [Cluster] config, waiting until agend grants cluster
 * resources (a try-once Acquire of "probe" succeeds). */
static int cluster_setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->fds = count_fds();
        assert_int_equal(agend_new(&f->a), 0);
        FILE *cf = fopen(f->a->config, "we");
        assert_non_null(cf);
        fprintf(cf, "[Cluster]\nEndpoints=%s\nNode=n1\nPrefix=/agend-lease/\nLeaseTTLSec=%d\n\n"
                    "[Resource]\nName=gpu\nScope=cluster\n\n[Resource]\nName=probe\nScope=cluster\n",
                etcd_cluster_endpoints_string(etcd), TTL);
        fclose(cf);
        assert_int_equal(agend_start(f->a), 0);
        VConn *c = OPEN(f->a);
        double until = helper_now() + 30.0;
        for (;;) {
                json_object *r = CALL(c, LEASE_IF "Acquire", "{\"resource\": \"probe\", \"timeout\": 0}");
                if (!reply_error(r))
                        break;
                if (helper_now() > until)
                        fail_msg("agend not ready: %s", jtext(r));
                helper_sleep(0.05);
        }
        vconn_close(c);
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
                cmocka_unit_test_setup_teardown(test_quorum_lost, cluster_setup, teardown),
        };
        int k = etcd_cluster_new(3, 60 * USEC_PER_SEC, 10 * 60 * USEC_PER_SEC, &etcd);
        if (k == -ENOENT) {
                fprintf(stderr, "no etcd binary: skipped\n");
                return 77;
        }
        if (k < 0) {
                fprintf(stderr, "etcd cluster: %s\n", strerror(-k));
                return 1;
        }
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        etcd_cluster_free(etcd);
        return r;
}

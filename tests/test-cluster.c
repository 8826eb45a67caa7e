/* SPDX-License-Identifier: MIT */
/* The cluster lease queue (daemon/cluster.c) against a real 3-member etcd on loopback: two
 * or three Cluster objects with distinct node names act as hosts sharing resources. Grants
 * follow create revision across hosts, counted resources block at the head like locally,
 * tokens strictly increase, Check answers from etcd, a host that dies without revoking is
 * waited for until its etcd lease's TTL and not less. Skips (77) without an etcd binary.
 *
 * Waits are on events with a generous guard; the only time bound checked is the one etcd
 * promises (a dead host's keys live at least until its lease's TTL has passed). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cluster.h"
#include "helper-etcd.h"
#include "macro.h"

#define GUARD (30 * USEC_PER_SEC)
#define TTL 3

static EtcdCluster *etcd;
static struct ev_loop *loop;
static unsigned test_no;

typedef struct Rec {
        ClusterWaiter *w;
        bool queued, granted, ended, disconnected;
        unsigned position;
        uint64_t token;
        int error;
        usec_t granted_at;
        unsigned order;         /* grant order across every Rec of a test */
} Rec;

static unsigned grants;

static void cb_queued(Cluster *c, ClusterWaiter *w, unsigned position, void *userdata) {
        Rec *r = cluster_waiter_get_userdata(w);
        r->queued = true;
        r->position = position;
}

static void cb_granted(Cluster *c, ClusterWaiter *w, uint64_t token, void *userdata) {
        Rec *r = cluster_waiter_get_userdata(w);
        r->granted = true;
        r->token = token;
        r->granted_at = usec_now(CLOCK_MONOTONIC);
        r->order = ++grants;
}

static void cb_disconnected(Cluster *c, ClusterWaiter *w, bool recovered, void *userdata) {
        Rec *r = cluster_waiter_get_userdata(w);
        r->disconnected = !recovered;
}

static void cb_ended(Cluster *c, ClusterWaiter *w, int error, const char *reason, void *userdata) {
        Rec *r = cluster_waiter_get_userdata(w);
        r->ended = true;
        r->error = error;
}

static const ClusterCallbacks callbacks = {
        .queued = cb_queued,
        .granted = cb_granted,
        .disconnected = cb_disconnected,
        .ended = cb_ended,
};

static void guard_cb(struct ev_loop *l, ev_timer *w, int revents) {
        ev_break(l, EVBREAK_ALL);
}

typedef bool (*Cond)(void *userdata);

typedef struct Wait {
        Cond cond;
        void *userdata;
} Wait;

static void prepare_cb(struct ev_loop *l, ev_prepare *p, int revents) {
        Wait *w = p->data;
        if (w->cond(w->userdata))
                ev_break(l, EVBREAK_ONE);
}

static bool run_until(Cond cond, void *userdata, usec_t guard) {
        Wait wt = { cond, userdata };
        ev_timer t;
        ev_prepare p;
        ev_timer_init(&t, guard_cb, (double) guard / USEC_PER_SEC, 0.);
        ev_prepare_init(&p, prepare_cb);
        p.data = &wt;
        ev_timer_start(loop, &t);
        ev_prepare_start(loop, &p);
        if (!cond(userdata))
                ev_run(loop, 0);
        ev_timer_stop(loop, &t);
        ev_prepare_stop(loop, &p);
        return cond(userdata);
}

static bool is_ready(void *userdata) {
        return cluster_ready(userdata);
}
static bool is_granted(void *userdata) {
        return ((Rec *) userdata)->granted;
}
static bool is_queued(void *userdata) {
        return ((Rec *) userdata)->queued || ((Rec *) userdata)->granted;
}
static bool never(void *userdata) {
        return false;
}

static Cluster *host(const char *node) {
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "/agend-t%u/", test_no);
        ClusterOptions o = {
                .endpoints = etcd->endpoints,
                .n_endpoints = etcd->n,
                .prefix = prefix,
                .node = node,
                .ttl_sec = TTL,
        };
        Cluster *c = NULL;
        assert_int_equal(cluster_new(loop, &o, &callbacks, NULL, &c), 0);
        if (!run_until(is_ready, c, GUARD))
                fail_msg("host %s not ready", node);
        return c;
}

static void stop_cb(Cluster *c, int error, void *userdata) {
        *(int *) userdata = error < 0 ? error : 1;
}
static bool stop_done(void *userdata) {
        return *(int *) userdata != 0;
}

/* A clean stop: the lease revoked, every key gone at once. */
static void stop(Cluster *c) {
        int done = 0;
        if (cluster_stop(c, stop_cb, &done) == 0) {
                assert_true(run_until(stop_done, &done, GUARD));
                assert_int_equal(done, 1);
        }
        cluster_free(c);
}

static void acquire(Cluster *c, const char *resource, unsigned units, bool exclusive, Rec *r) {
        ClusterAcquire a = {
                .resource = resource,
                .units = units,
                .exclusive = exclusive,
                .uid = 1000,
                .pid = 42,
                .comm = "test",
                .description = "a test",
                .userdata = r,
        };
        assert_int_equal(cluster_acquire(c, &a, &r->w), 0);
        if (!run_until(is_queued, r, GUARD))
                fail_msg("no answer to acquire on %s", cluster_node(c));
}

static int setup(void **state) {
        test_no++;
        grants = 0;
        if (!etcd) {
                int k = etcd_cluster_new(3, 60 * USEC_PER_SEC, 10 * 60 * USEC_PER_SEC, &etcd);
                if (k < 0) {
                        fprintf(stderr, "etcd cluster: %s\n", strerror(-k));
                        return -1;
                }
        }
        loop = ev_loop_new(EVFLAG_AUTO);
        return 0;
}

static int teardown(void **state) {
        ev_loop_destroy(loop);
        loop = NULL;
        return 0;
}

/* An exclusive resource shared by two hosts: FIFO by create revision across them, tokens
 * strictly increasing, the mirror on each host shows the other's holder. */
static void test_fifo_across_hosts(void **state) {
        Cluster *a = host("a"), *b = host("b");
        assert_int_equal(cluster_declare(a, "gpu", 1), 0);
        assert_int_equal(cluster_declare(b, "gpu", 1), 0);

        Rec a1 = {}, b1 = {}, a2 = {}, b2 = {};
        acquire(a, "gpu", 1, false, &a1);
        assert_true(run_until(is_granted, &a1, GUARD));
        acquire(b, "gpu", 1, false, &b1);
        acquire(a, "gpu", 1, false, &a2);
        acquire(b, "gpu", 1, false, &b2);
        assert_false(b1.granted);
        assert_int_equal(b1.position, 1);
        assert_int_equal(a2.position, 2);
        assert_int_equal(b2.position, 3);

        cluster_waiter_release(a, a1.w);
        assert_true(run_until(is_granted, &b1, GUARD));
        assert_false(a2.granted);
        cluster_waiter_release(b, b1.w);
        assert_true(run_until(is_granted, &a2, GUARD));
        cluster_waiter_release(a, a2.w);
        assert_true(run_until(is_granted, &b2, GUARD));

        assert_true(a1.token < b1.token && b1.token < a2.token && a2.token < b2.token);
        assert_true(a1.order == 1 && b1.order == 2 && a2.order == 3 && b2.order == 4);
        cluster_waiter_release(b, b2.w);
        stop(a);
        stop(b);
}

/* Capacity 3, requests of 2, 2, 1 units: the second blocks at the head, so the third, which
 * would fit, waits behind it (the local rule). */
static void test_counted_head_blocking(void **state) {
        Cluster *a = host("a"), *b = host("b");
        assert_int_equal(cluster_declare(a, "slots", 3), 0);
        assert_int_equal(cluster_declare(b, "slots", 3), 0);
        Rec r1 = {}, r2 = {}, r3 = {};
        acquire(a, "slots", 2, false, &r1);
        assert_true(run_until(is_granted, &r1, GUARD));
        acquire(b, "slots", 2, false, &r2);
        acquire(a, "slots", 1, false, &r3);
        /* Give every event time to arrive on both hosts. */
        run_until(never, NULL, 500 * USEC_PER_MSEC);
        assert_false(r2.granted);
        assert_false(r3.granted);
        assert_int_equal(r3.position, 2);
        cluster_waiter_release(a, r1.w);
        assert_true(run_until(is_granted, &r2, GUARD));
        assert_true(run_until(is_granted, &r3, GUARD));
        assert_true(r1.token < r2.token && r2.token < r3.token);
        cluster_waiter_release(b, r2.w);
        cluster_waiter_release(a, r3.w);
        stop(a);
        stop(b);
}

/* A reload that raises the capacity grants the waiters that fit now, without waiting for
 * another event of the watch. */
static void test_capacity_raised(void **state) {
        Cluster *a = host("a");
        assert_int_equal(cluster_declare(a, "gpu", 1), 0);
        Rec r1 = {}, r2 = {};
        acquire(a, "gpu", 1, false, &r1);
        assert_true(run_until(is_granted, &r1, GUARD));
        acquire(a, "gpu", 1, false, &r2);
        assert_false(r2.granted);
        assert_int_equal(cluster_declare(a, "gpu", 2), 0);
        assert_false(r2.granted);       /* from the loop, not from inside the call */
        assert_true(run_until(is_granted, &r2, 10 * USEC_PER_SEC));
        assert_true(r1.token < r2.token);
        cluster_waiter_release(a, r1.w);
        cluster_waiter_release(a, r2.w);
        stop(a);
}

typedef struct CheckRes {
        bool done;
        int result;
} CheckRes;

static void check_cb(Cluster *c, int result, void *userdata) {
        CheckRes *r = userdata;
        r->done = true;
        r->result = result;
}

static bool check_done(void *userdata) {
        return ((CheckRes *) userdata)->done;
}

static int check(Cluster *c, const char *resource, unsigned capacity, uint64_t token) {
        CheckRes r = {};
        assert_int_equal(cluster_check(c, resource, capacity, token, check_cb, &r), 0);
        assert_true(run_until(check_done, &r, GUARD));
        return r.result;
}

typedef struct ListState {
        unsigned holders, waiters;
        char node[16];
} ListState;

static int list_one(const ClusterEntry *e, void *userdata) {
        ListState *s = userdata;
        if (e->holds) {
                s->holders++;
                snprintf(s->node, sizeof(s->node), "%s", e->node);
                assert_int_equal(e->uid, 1000);
                assert_int_equal(e->pid, 42);
                assert_string_equal(e->description, "a test");
        } else
                s->waiters++;
        return 0;
}

/* Check answers by etcd on any host; the other host's mirror shows the holder. */
static void test_check_and_list(void **state) {
        Cluster *a = host("a"), *b = host("b");
        assert_int_equal(cluster_declare(a, "lic/x", 1), 0);
        assert_int_equal(cluster_declare(b, "lic/x", 1), 0);
        Rec r1 = {}, r2 = {};
        acquire(a, "lic/x", 1, false, &r1);
        assert_true(run_until(is_granted, &r1, GUARD));
        acquire(b, "lic/x", 1, false, &r2);
        assert_int_equal(check(b, "lic/x", 1, r1.token), 1);
        assert_int_equal(check(a, "lic/x", 1, r1.token + 1), 0);
        assert_int_equal(check(a, "lic/y", 1, r1.token), 0);
        ListState s = {};
        assert_int_equal(cluster_foreach(b, "lic/x", list_one, &s), 0);
        assert_int_equal(s.holders, 1);
        assert_int_equal(s.waiters, 1);
        assert_string_equal(s.node, "a");
        cluster_waiter_release(a, r1.w);
        assert_true(run_until(is_granted, &r2, GUARD));
        assert_int_equal(check(a, "lic/x", 1, r1.token), 0);
        assert_int_equal(check(a, "lic/x", 1, r2.token), 1);
        cluster_waiter_release(b, r2.w);
        stop(a);
        stop(b);
}

/* A host that dies holding the resource (no revoke, no delete): the waiter on another host
 * is granted once etcd expires the dead host's lease, which is not before its TTL. */
static void test_dead_host_waits_for_ttl(void **state) {
        Cluster *a = host("a"), *b = host("b");
        assert_int_equal(cluster_declare(a, "gpu", 1), 0);
        assert_int_equal(cluster_declare(b, "gpu", 1), 0);
        Rec r1 = {}, r2 = {};
        acquire(a, "gpu", 1, false, &r1);
        assert_true(run_until(is_granted, &r1, GUARD));
        acquire(b, "gpu", 1, false, &r2);
        usec_t died = usec_now(CLOCK_MONOTONIC);
        cluster_free(a);         /* its last keepalive was at most now */
        assert_true(run_until(is_granted, &r2, GUARD));
        assert_true(r2.granted_at - died >= (usec_t) TTL * USEC_PER_SEC - USEC_PER_SEC);
        assert_true(r2.token > r1.token);
        cluster_waiter_release(b, r2.w);
        stop(b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_fifo_across_hosts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_counted_head_blocking, setup, teardown),
                cmocka_unit_test_setup_teardown(test_capacity_raised, setup, teardown),
                cmocka_unit_test_setup_teardown(test_check_and_list, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dead_host_waits_for_ttl, setup, teardown),
        };
        EtcdCluster *probe = NULL;
        int k = etcd_cluster_for_tests(&probe);
        if (k != 0)
                return k;
        etcd = probe;
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        etcd_cluster_free(etcd);
        return r;
}

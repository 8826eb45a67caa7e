/* SPDX-License-Identifier: MIT */
/* Several agends with distinct Node= (own sockets and state directories) sharing
 * Scope=cluster resources through a real 3-member etcd on loopback (tests/helper-etcd.c),
 * in raw varlink bytes:
 * - a grant on one host queues the others, in request order across hosts; List on another
 *   host shows the holder; List, Watch, Resources and History show other hosts' holders and
 *   waiters (node, owner, description) and this host's cluster leases; `agenctl list`
 *   shows the node of every row in a NODE column;
 * - ttl (renewed) and detached leases on a cluster resource; a reload that raises the
 *   capacity grants the waiter that fits; a waiter keeps its place across a restart of
 *   its agend (ticket), a holder its lease (Reclaim; a detached one by itself); a stop
 *   keeps the keys until the etcd lease's TTL; Check answers from etcd; Release and a
 *   closed connection hand on;
 * - clients on three hosts cycling through a counted resource: the history checker
 *   (tests/checker.h) finds no overlap beyond capacity, FIFO by request order, tokens
 *   strictly increasing;
 * - kill -9 of an agend holding the unit: the waiter on another host is granted once its
 *   etcd lease expired (after the TTL less one keepalive interval), not before.
 * Skips (77) without an etcd binary. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checker.h"
#include "helper-agend.h"
#include "helper-etcd.h"

#define TTL 3
#define READY_GUARD 30.0

static EtcdCluster *etcd;
static unsigned test_no;
/* LeaseTTLSec= of the hosts a test starts: TTL, or longer where an etcd election must not
 * cost the etcd lease (an election on a loaded machine can take longer than 2 s). */
static int ttl = TTL;
/* The agends a test started, stopped by the teardown: each must exit 0 on SIGTERM (under
 * ASan that includes no leak). */
static Agend *hosts[4];
static size_t n_hosts;

static void write_config(const Agend *a, const char *node, const char *resources) {
        FILE *f = fopen(a->config, "we");
        assert_non_null(f);
        fprintf(f, "[Cluster]\nEndpoints=%s\nNode=%s\nPrefix=/agend-t%u/\nLeaseTTLSec=%d\n\n%s",
                etcd_cluster_endpoints_string(etcd), node, test_no, ttl, resources);
        fclose(f);
}

/* Waits until a grants cluster resources (its etcd lease granted, the prefix read): a
 * try-once Acquire of "probe-NODE" succeeds. */
static void wait_cluster_ready(Agend *a, const char *node) {
        VConn *c = OPEN(a);
        double until = helper_now() + READY_GUARD;
        for (;;) {
                json_object *r = CALL(c, LEASE_IF "Acquire", "{\"resource\": \"probe-%s\", \"timeout\": 0}", node);
                if (!reply_error(r))
                        break;
                if (helper_now() > until)
                        fail_msg("host %s not ready: %s", node, jtext(r));
                helper_sleep(0.05);
        }
        vconn_close(c);
}

/* Starts an agend as host node and waits until it grants cluster resources (its etcd
 * lease granted, the prefix read): a try-once Acquire of "probe" succeeds. */
static Agend *host(const char *node, const char *resources) {
        Agend *a;
        assert_int_equal(agend_new(&a), 0);
        char text[1024];
        snprintf(text, sizeof(text), "%s[Resource]\nName=probe-%s\nScope=cluster\n", resources, node);
        write_config(a, node, text);
        assert_int_equal(agend_start(a), 0);
        if (n_hosts < ELEMENTSOF(hosts))
                hosts[n_hosts++] = a;
        wait_cluster_ready(a, node);
        return a;
}

static uint64_t token_of(json_object *lease) {
        return (uint64_t) jint(lease, "token");
}

/* The next message on c that is not a "queued" update, within the guard. */
static json_object *next_final(VConn *c, double guard) {
        for (;;) {
                json_object *m = RECV(c, guard);
                if (reply_error(m) || !reply_state(m) || strcmp(reply_state(m), "queued") != 0)
                        return m;
        }
}

static bool check(VConn *c, uint64_t token) {
        json_object *p = CALL_OK(c, LEASE_IF "Check", "{\"resource\": \"gpu\", \"token\": %" PRIu64 "}", token);
        return json_object_get_boolean(jget(p, "current"));
}

static void test_two_hosts_fifo(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *b1 = OPEN(b), *a2 = OPEN(a), *bq = OPEN(b);

        json_object *l1 = GRANT_LEASE(a1, "{\"resource\": \"gpu\", \"description\": \"first\"}");
        uint64_t t1 = token_of(l1);
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        json_object *q = RECV(b1, HELPER_REPLY_TIMEOUT);
        assert_string_equal(reply_state(q), "queued");
        assert_int_equal(jint(reply_params(q), "position"), 1);
        assert_int_equal(vconn_send(a2, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        q = RECV(a2, HELPER_REPLY_TIMEOUT);
        assert_string_equal(reply_state(q), "queued");
        assert_int_equal(jint(reply_params(q), "position"), 2);

        /* Host b sees a's holder (its node is a) and both waiters, once its watch has
         * brought a2's key (each host's view follows etcd's events). */
        json_object *list;
        double until = helper_now() + 10.0;
        do
                list = CALL_OK(bq, LEASE_IF "List", "{\"resource\": \"gpu\"}");
        while (json_object_array_length(jget(list, "waiters")) < 2 && helper_now() < until && (helper_sleep(0.02), 1));
        json_object *leases = jget(list, "leases");
        assert_int_equal(json_object_array_length(leases), 1);
        json_object *held = json_object_array_get_idx(leases, 0);
        assert_string_equal(jstr(held, "node"), "a");
        assert_string_equal(jstr(held, "description"), "first");
        assert_int_equal(token_of(held), t1);
        assert_int_equal(jint(held, "owner.pid"), getpid());
        assert_int_equal(json_object_array_length(jget(list, "waiters")), 2);
        assert_true(check(bq, t1));

        CALL_OK(a1, LEASE_IF "Release", "{\"id\": \"%s\"}", jstr(l1, "id"));
        json_object *g = next_final(b1, 10.0);
        json_object *l2 = jget(assert_granted(g), "lease");
        uint64_t t2 = token_of(l2);
        assert_true(t2 > t1);
        assert_false(check(bq, t1));
        assert_true(check(bq, t2));

        /* The holder's connection closes: the lease ends, the next host's waiter gets it. */
        vconn_close(b1);
        g = next_final(a2, 10.0);
        uint64_t t3 = token_of(jget(assert_granted(g), "lease"));
        assert_true(t3 > t2);
        assert_false(check(bq, t2));
        assert_true(check(bq, t3));
        vconn_close(a2);
}

/* Clients on three hosts cycle through a resource of capacity 2; the checker judges what
 * they saw, on the one monotonic clock of this machine. */
typedef struct Client {
        VConn *c;
        unsigned host;
        enum { IDLE, WAITING, HOLDING } state;
        usec_t sent, queued, granted, hold_until;
        uint64_t token;
        char id[64];
} Client;

static void test_history_three_hosts(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=2\nScope=cluster\n\n";
        Agend *h[3] = { host("a", res), host("b", res), host("c", res) };
        Checker *ck;
        assert_int_equal(checker_new(&ck), 0);
        int r = checker_add_resource(ck, "gpu", 2);
        assert_true(r >= 0);
        Client cl[6] = {};
        for (unsigned i = 0; i < ELEMENTSOF(cl); i++) {
                cl[i].host = i % 3;
                cl[i].c = OPEN(h[cl[i].host]);
        }
        unsigned grants = 0, target = 60;
        double until = helper_now() + 120.0;
        while (grants < target && helper_now() < until) {
                for (unsigned i = 0; i < ELEMENTSOF(cl); i++) {
                        Client *x = &cl[i];
                        usec_t now = usec_now(CLOCK_MONOTONIC);
                        if (x->state == IDLE) {
                                x->sent = now;
                                x->queued = 0;
                                assert_int_equal(vconn_send(x->c, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
                                x->state = WAITING;
                        } else if (x->state == WAITING) {
                                json_object *m = NULL;
                                if (vconn_recv(x->c, 0, &m) < 0)
                                        continue;
                                now = usec_now(CLOCK_MONOTONIC);
                                if (reply_error(m))
                                        fail_msg("client %u: %s", i, jtext(m));
                                if (strcmp(reply_state(m), "queued") == 0) {
                                        if (!x->queued)
                                                x->queued = now;
                                        continue;
                                }
                                json_object *l = jget(assert_granted(m), "lease");
                                x->granted = now;
                                x->token = token_of(l);
                                snprintf(x->id, sizeof(x->id), "%s", jstr(l, "id"));
                                x->hold_until = now + (usec_t) (i % 3) * 5 * USEC_PER_MSEC;
                                x->state = HOLDING;
                        } else if (now >= x->hold_until) {
                                CheckGrant g = {
                                        .client = i,
                                        .resource = (unsigned) r,
                                        .units = 1,
                                        .token = x->token,
                                        .id = x->id,
                                        .sent = x->sent,
                                        .queued = x->queued,
                                        .granted = x->granted,
                                        .end = now,
                                };
                                assert_int_equal(checker_add_grant(ck, &g), 0);
                                grants++;
                                CALL_OK(x->c, LEASE_IF "Release", "{\"id\": \"%s\"}", x->id);
                                x->state = IDLE;
                        }
                }
                helper_sleep(0.001);
        }
        assert_true(grants >= target);     /* the last round may add a few */
        unsigned v = checker_run(ck);
        CheckStats st;
        checker_get_stats(ck, &st);
        fprintf(stderr, "cluster history: %lu grants, %lu queued first, %u violations\n", st.grants, st.queued, v);
        checker_print_violations(ck, stderr, 20);
        assert_int_equal(v, 0);
        assert_true(st.queued > 0);     /* the run did contend */
        checker_free(ck);
}

/* kill -9 of the host holding the unit: no one else is granted before its etcd lease can
 * have expired; then the waiter on the other host is. */
static void test_killed_host(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *b1 = OPEN(b);
        uint64_t t1 = token_of(GRANT_LEASE(a1, "{\"resource\": \"gpu\"}"));
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(b1, HELPER_REPLY_TIMEOUT)), "queued");
        double killed = helper_now();
        assert_int_equal(agend_kill(a), 0);
        json_object *g = next_final(b1, 30.0);
        double after = helper_now() - killed;
        uint64_t t2 = token_of(jget(assert_granted(g), "lease"));
        fprintf(stderr, "granted %.2f s after the kill (TTL %d s)\n", after, TTL);
        /* The last keepalive was sent at most TTL/3 before the kill. */
        assert_true(after >= TTL - TTL / 3.0 - 0.1);
        assert_true(t2 > t1);
        vconn_close(a1);
}

/* The next event on a Watch(lease) stream. */
static const char *next_event(VConn *c, double guard, json_object **ret) {
        json_object *m = RECV(c, guard);
        if (reply_error(m))
                fail_msg("Watch: %s", jtext(m));
        json_object *ev = jget(reply_params(m), "event");
        if (ret)
                *ret = ev;
        return ev ? jstr(ev, "type") : NULL;
}

/* The next event of type on a Watch stream (other types skipped), within the guard. */
static json_object *event_of_type(VConn *c, const char *type, double guard) {
        double until = helper_now() + guard;
        for (;;) {
                json_object *ev;
                const char *t = next_event(c, MAX(until - helper_now(), 0.1), &ev);
                if (t && strcmp(t, type) == 0)
                        return ev;
        }
}

/* The resource's row of Resources. */
static json_object *resource_row(VConn *c, const char *name) {
        json_object *a = jget(CALL_OK(c, LEASE_IF "Resources", "{}"), "resources");
        for (size_t i = 0; i < json_object_array_length(a); i++) {
                json_object *r = json_object_array_get_idx(a, i);
                if (jstr(r, "name") && strcmp(jstr(r, "name"), name) == 0)
                        return r;
        }
        fail_msg("no %s in Resources", name);
        return NULL;
}

/* Whether History of c has an event of type for lease id. */
static bool in_history(VConn *c, const char *type, const char *id) {
        json_object *evs = jget(CALL_OK(c, LEASE_IF "History", "{\"resource\": \"gpu\"}"), "events");
        for (size_t i = 0; i < json_object_array_length(evs); i++) {
                json_object *e = json_object_array_get_idx(evs, i);
                if (strcmp(jstr(e, "type"), type) == 0 && jstr(e, "lease") && strcmp(jstr(e, "lease"), id) == 0)
                        return true;
        }
        return false;
}

/* The same surface as local resources: List and Watch on one host show the holders and
 * waiters of the other (node, owner, description; their ids opaque and refused), Resources
 * counts every host's units, History has this host's cluster leases. */
static void test_same_surface(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=2\nScope=cluster\n\n";
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *aw = OPEN(a), *b1 = OPEN(b), *b2 = OPEN(b), *bw = OPEN(b);
        assert_int_equal(vconn_send(bw, VL_MORE, LEASE_IF "Watch", "{\"resource\": \"gpu\"}"), 0);
        assert_null(next_event(bw, HELPER_REPLY_TIMEOUT, NULL));
        assert_int_equal(vconn_send(aw, VL_MORE, LEASE_IF "Watch", "{\"resource\": \"gpu\"}"), 0);
        assert_null(next_event(aw, HELPER_REPLY_TIMEOUT, NULL));

        json_object *l1 = GRANT_LEASE(a1, "{\"resource\": \"gpu\", \"description\": \"first\"}");
        const char *id1 = jstr(l1, "id");
        assert_string_equal(jstr(l1, "node"), "a");

        /* b's Watch hears of a's grant, with a's node and owner. */
        json_object *ev = event_of_type(bw, "granted", 10.0);
        assert_string_equal(jstr(ev, "node"), "a");
        assert_int_equal(jint(ev, "owner.pid"), getpid());
        assert_int_equal(jint(ev, "token"), jint(l1, "token"));
        /* The same id on every host: the random part of the lease's key. */
        const char *remote_id = jstr(ev, "lease");
        assert_non_null(remote_id);
        assert_string_equal(remote_id, id1);
        /* a's own Watch has it as a local event, with its own node. */
        ev = event_of_type(aw, "granted", 10.0);
        assert_string_equal(jstr(ev, "lease"), id1);
        assert_string_equal(jstr(ev, "node"), "a");

        /* b's List: a's holder with node, owner and description; its id is opaque and no
         * method of b accepts it. */
        json_object *list = CALL_OK(b1, LEASE_IF "List", "{\"resource\": \"gpu\"}");
        json_object *held = json_object_array_get_idx(jget(list, "leases"), 0);
        assert_non_null(held);
        assert_string_equal(jstr(held, "node"), "a");
        assert_string_equal(jstr(held, "description"), "first");
        assert_int_equal(jint(held, "owner.pid"), getpid());
        assert_string_equal(jstr(held, "id"), remote_id);
        CALL_ERR(b1, LEASE_IF "NoSuchLease", LEASE_IF "Release", "{\"id\": \"%s\"}", remote_id);

        /* Resources on both hosts count a's unit. */
        assert_int_equal(jint(resource_row(b1, "gpu"), "used"), 1);
        assert_int_equal(jint(resource_row(b1, "gpu"), "leases"), 1);
        assert_int_equal(jint(resource_row(a1, "gpu"), "used"), 1);

        /* A waiter on b for 2 units: a's Watch hears it queued, a's List shows it with
         * node b, and both hosts count it. */
        assert_int_equal(vconn_send(b2, VL_MORE, LEASE_IF "Acquire",
                                    "{\"resource\": \"gpu\", \"units\": 2, \"description\": \"second\"}"),
                         0);
        assert_string_equal(reply_state(RECV(b2, HELPER_REPLY_TIMEOUT)), "queued");
        ev = event_of_type(aw, "queued", 10.0);
        assert_string_equal(jstr(ev, "node"), "b");
        json_object *w = json_object_array_get_idx(jget(CALL_OK(a1, LEASE_IF "List", "{\"resource\": \"gpu\"}"),
                                                        "waiters"), 0);
        assert_non_null(w);
        assert_string_equal(jstr(w, "node"), "b");
        assert_string_equal(jstr(w, "description"), "second");
        assert_int_equal(jint(resource_row(a1, "gpu"), "waiters"), 1);

        /* a releases: b's Watch hears it, b's waiter is granted; Resources follows. */
        CALL_OK(a1, LEASE_IF "Release", "{\"id\": \"%s\"}", id1);
        ev = event_of_type(bw, "released", 10.0);
        assert_string_equal(jstr(ev, "node"), "a");
        assert_string_equal(jstr(ev, "lease"), remote_id);
        json_object *l2 = jget(assert_granted(next_final(b2, 10.0)), "lease");
        assert_string_equal(jstr(l2, "node"), "b");
        double until = helper_now() + 10.0;
        while (jint(resource_row(a1, "gpu"), "used") != 2 && helper_now() < until)
                helper_sleep(0.02);
        assert_int_equal(jint(resource_row(a1, "gpu"), "used"), 2);

        /* History: each host has its own cluster leases. */
        assert_true(in_history(a1, "granted", id1));
        assert_true(in_history(a1, "released", id1));
        assert_true(in_history(b1, "granted", jstr(l2, "id")));
        assert_false(in_history(b1, "granted", id1));
        vconn_close(b2);
}

/* ttl and detached on a cluster resource: the TTL (renewed) runs out on the holder's agend,
 * which deletes the key ("expired"), and the other host is granted, not before; a detached
 * lease outlives its connection and is released with its secret from another one. */
/* A cluster grant that cannot be written (AGEND_TEST_WRITER_FAIL, builds with test hooks:
 * the reply writer cannot grow past its 1 KiB inline buffer) is LimitExceeded and a close,
 * never a reply with a member silently null; the key goes with the connection, so the next
 * Acquire on the resource is granted. */
static void test_grant_that_cannot_be_written(void **state) {
#ifndef AGEND_TEST_HOOKS
        skip();
#else
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        assert_int_equal(setenv("AGEND_TEST_WRITER_FAIL", "1", 1), 0);
        Agend *a = host("a", res);
        unsetenv("AGEND_TEST_WRITER_FAIL");
        /* Small enough for the key's value (under 1 KiB), too large for the grant reply,
         * which carries it with the lease, the owner and the secret. */
        char description[801];
        memset(description, 'd', sizeof(description) - 1);
        description[sizeof(description) - 1] = 0;
        VConn *c1 = OPEN(a);
        json_object *m = CALL(c1, LEASE_IF "Acquire", "{\"resource\": \"gpu\", \"description\": \"%s\"}", description);
        assert_string_equal(reply_error(m), LEASE_IF "LimitExceeded");
        assert_string_equal(jstr(m, "parameters.limit"), "memory");
        assert_int_equal(vconn_wait_closed(c1, HELPER_REPLY_TIMEOUT), 0);
        VConn *c2 = OPEN(a);
        json_object *l = GRANT_LEASE(c2, "{\"resource\": \"gpu\", \"timeout\": 30, \"description\": \"small\"}");
        assert_string_equal(jstr(l, "description"), "small");
        assert_string_equal(jstr(l, "node"), "a");
        vconn_close(c2);
#endif
}

static void test_ttl_and_detached(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *aw = OPEN(a), *b1 = OPEN(b);

        json_object *l1 = GRANT_LEASE(a1, "{\"resource\": \"gpu\", \"ttl\": 1}");
        char id1[80];
        snprintf(id1, sizeof(id1), "%s", jstr(l1, "id"));
        uint64_t t1 = token_of(l1);
        assert_true(jis(l1, "deadline", json_type_int));
        assert_int_equal(vconn_send(aw, VL_MORE, LEASE_IF "Watch", "{\"lease\": \"%s\"}", id1), 0);
        assert_null(next_event(aw, HELPER_REPLY_TIMEOUT, NULL));
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(b1, HELPER_REPLY_TIMEOUT)), "queued");
        /* Taken before the call: agend renews after it, so the TTL cannot pass earlier than
         * 2 s after this on the same monotonic clock. */
        double renewed = helper_now();
        json_object *r = CALL_OK(a1, LEASE_IF "Renew", "{\"id\": \"%s\", \"ttl\": 2}", id1);
        assert_true(json_object_get_double(jget(r, "lease.ttl")) == 2.0);
        assert_string_equal(next_event(aw, HELPER_REPLY_TIMEOUT, NULL), "renewed");
        json_object *g = next_final(b1, 30.0);
        double after = helper_now() - renewed;
        assert_true(token_of(jget(assert_granted(g), "lease")) > t1);
        fprintf(stderr, "granted on b %.2f s after a renewed its TTL to 2 s\n", after);
        assert_true(after >= 1.99);
        assert_string_equal(next_event(aw, 10.0, NULL), "expired");
        vconn_close(b1);

        /* Detached, no TTL: Renew refuses; the connection goes, the lease stays (b sees it
         * and waits); a Release with the secret from another connection hands on. */
        VConn *a2 = OPEN(a);
        json_object *p2 = GRANT(a2, "{\"resource\": \"gpu\", \"detached\": true}");
        char id2[80], secret2[80];
        snprintf(id2, sizeof(id2), "%s", jstr(p2, "lease.id"));
        snprintf(secret2, sizeof(secret2), "%s", jstr(p2, "secret"));
        assert_true(json_object_get_boolean(jget(p2, "lease.detached")));
        CALL_ERR(a2, "org.varlink.service.InvalidParameter", LEASE_IF "Renew", "{\"id\": \"%s\"}", id2);
        vconn_close(a2);
        VConn *b2 = OPEN(b), *bl = OPEN(b), *a3 = OPEN(a);
        assert_int_equal(vconn_send(b2, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(b2, HELPER_REPLY_TIMEOUT)), "queued");
        json_object *list = CALL_OK(a3, LEASE_IF "List", "{\"resource\": \"gpu\"}");
        assert_int_equal(json_object_array_length(jget(list, "leases")), 1);
        assert_string_equal(jstr(json_object_array_get_idx(jget(list, "leases"), 0), "id"), id2);
        CALL_OK(a3, LEASE_IF "Release", "{\"id\": \"%s\", \"secret\": \"%s\"}", id2, secret2);
        assert_granted(next_final(b2, 10.0));
        list = CALL_OK(bl, LEASE_IF "List", "{\"resource\": \"gpu\"}");
        assert_string_equal(jstr(json_object_array_get_idx(jget(list, "leases"), 0), "node"), "b");
        vconn_close(b2);
}

/* A reload (SIGHUP) that raises a cluster resource's capacity grants the waiter that fits
 * now; Resources shows the new capacity; a changed [Cluster] section is logged as waiting
 * for the next start. */
static void test_reload_capacity(void **state) {
        Agend *a = host("a", "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n");
        VConn *a1 = OPEN(a), *a2 = OPEN(a);
        GRANT_LEASE(a1, "{\"resource\": \"gpu\"}");
        assert_int_equal(vconn_send(a2, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(a2, HELPER_REPLY_TIMEOUT)), "queued");
        ttl = TTL + 1;  /* a changed [Cluster] section: said, applied at the next start */
        write_config(a, "a", "[Resource]\nName=gpu\nCapacity=2\nScope=cluster\n\n[Resource]\nName=probe-a\nScope=cluster\n");
        assert_int_equal(kill(a->pid, SIGHUP), 0);
        assert_granted(next_final(a2, 10.0));
        assert_int_equal(jint(resource_row(a1, "gpu"), "capacity"), 2);
        assert_int_equal(jint(resource_row(a1, "gpu"), "used"), 2);
        char *log = agend_read_log(a);
        assert_non_null(log);
        assert_non_null(strstr(log, "[Cluster] changed in the configuration; it takes effect at the next start"));
        free(log);
}

/* An agend restarted (SIGTERM, start) while its clients wait on a cluster resource: its etcd
 * lease and the queued keys stay, the restarted agend adopts them, and a waiter that
 * presents its ticket again keeps its place ahead of a later waiter on another host; a key
 * whose ticket does not come back goes after the grace period. */
static void test_waiter_keeps_place_across_restart(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        ttl = 10;
        Agend *a = host("a", res), *b = host("b", res);
        VConn *b1 = OPEN(b), *a1 = OPEN(a), *a1b = OPEN(a), *b2 = OPEN(b), *bl = OPEN(b);
        char id1[80], ticket[80];
        snprintf(id1, sizeof(id1), "%s", jstr(GRANT_LEASE(b1, "{\"resource\": \"gpu\"}"), "id"));
        assert_int_equal(vconn_send(a1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        json_object *q = RECV(a1, HELPER_REPLY_TIMEOUT);
        assert_string_equal(reply_state(q), "queued");
        snprintf(ticket, sizeof(ticket), "%s", jstr(reply_params(q), "ticket"));
        assert_int_equal(vconn_send(a1b, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(a1b, HELPER_REPLY_TIMEOUT)), "queued");
        assert_int_equal(vconn_send(b2, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        q = RECV(b2, HELPER_REPLY_TIMEOUT);
        assert_string_equal(reply_state(q), "queued");
        assert_int_equal(jint(reply_params(q), "position"), 3);

        int st;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        snprintf(a->grace, sizeof(a->grace), "1");
        assert_int_equal(agend_start(a), 0);
        wait_cluster_ready(a, "a");

        /* The ticket claims the first place again. */
        VConn *a2 = OPEN(a);
        assert_int_equal(vconn_send(a2, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\", \"ticket\": \"%s\"}",
                                    ticket),
                         0);
        q = RECV(a2, HELPER_REPLY_TIMEOUT);
        assert_string_equal(reply_state(q), "queued");
        assert_int_equal(jint(reply_params(q), "position"), 1);
        /* The unclaimed key goes after the grace period: two waiters left. */
        double until = helper_now() + 15.0;
        while (json_object_array_length(jget(CALL_OK(bl, LEASE_IF "List", "{\"resource\": \"gpu\"}"), "waiters")) != 2 &&
               helper_now() < until)
                helper_sleep(0.05);
        assert_int_equal(json_object_array_length(jget(CALL_OK(bl, LEASE_IF "List", "{\"resource\": \"gpu\"}"), "waiters")),
                         2);

        CALL_OK(b1, LEASE_IF "Release", "{\"id\": \"%s\"}", id1);
        json_object *l2 = jget(assert_granted(next_final(a2, 10.0)), "lease");
        CALL_OK(a2, LEASE_IF "Release", "{\"id\": \"%s\"}", jstr(l2, "id"));
        json_object *l3 = jget(assert_granted(next_final(b2, 10.0)), "lease");
        assert_true(token_of(l2) < token_of(l3));
        vconn_close(b2);
}

/* An agend stopped with SIGTERM keeps its holders' keys for its next start: a waiter on
 * another host is not granted at once, but once etcd dropped the stopped agend's etcd lease
 * (its TTL, here 6 s, less at most one keepalive interval); an agend stopped with no key at
 * all revokes its etcd lease (nothing waits on it). */
static void test_stop_keeps_holder_until_ttl(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        ttl = 6;
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *b1 = OPEN(b);
        uint64_t t1 = token_of(GRANT_LEASE(a1, "{\"resource\": \"gpu\"}"));
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(b1, HELPER_REPLY_TIMEOUT)), "queued");
        double stopped = helper_now();
        int st;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        json_object *g = next_final(b1, 30.0);
        double after = helper_now() - stopped;
        assert_true(token_of(jget(assert_granted(g), "lease")) > t1);
        fprintf(stderr, "granted %.2f s after the stop (TTL 6 s)\n", after);
        assert_true(after >= 6.0 * 2 / 3 - 0.5);
        vconn_close(a1);
        char *log = agend_read_log(a);
        assert_non_null(log);
        assert_non_null(strstr(log, "kept for the next start"));
        free(log);
}

/* A restart of the agend (SIGTERM, start) that holds cluster leases: a bound lease comes
 * back to the Reclaim of its id, token and secret (sent at once, before the restarted
 * agend has read etcd), with its token, and the waiter on another host waited all along;
 * a wrong secret is refused; a detached lease is back by itself and its secret releases
 * it; a bound lease nobody reclaims goes after the grace period. */
static void test_holders_across_restart(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n"
                          "[Resource]\nName=lic\nCapacity=1\nScope=cluster\n\n"
                          "[Resource]\nName=fpga\nCapacity=1\nScope=cluster\n\n";
        ttl = 10;
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *a2 = OPEN(a), *a3 = OPEN(a), *bg = OPEN(b), *bl = OPEN(b), *bf = OPEN(b);
        json_object *p1 = GRANT(a1, "{\"resource\": \"gpu\", \"description\": \"job\"}");
        char id1[80], secret1[80], id2[80], secret2[80];
        snprintf(id1, sizeof(id1), "%s", jstr(p1, "lease.id"));
        snprintf(secret1, sizeof(secret1), "%s", jstr(p1, "secret"));
        uint64_t t1 = (uint64_t) jint(p1, "lease.token");
        json_object *p2 = GRANT(a2, "{\"resource\": \"lic\", \"detached\": true}");
        snprintf(id2, sizeof(id2), "%s", jstr(p2, "lease.id"));
        snprintf(secret2, sizeof(secret2), "%s", jstr(p2, "secret"));
        GRANT_LEASE(a3, "{\"resource\": \"fpga\"}");
        const char *names[] = { "gpu", "lic", "fpga" };
        VConn *waiters[] = { bg, bl, bf };
        for (size_t i = 0; i < 3; i++) {
                assert_int_equal(vconn_send(waiters[i], VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"%s\"}", names[i]),
                                 0);
                assert_string_equal(reply_state(RECV(waiters[i], HELPER_REPLY_TIMEOUT)), "queued");
        }

        int st;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        snprintf(a->grace, sizeof(a->grace), "3");
        double started = helper_now();
        assert_int_equal(agend_start(a), 0);
        VConn *r = OPEN(a);
        json_object *l = jget(CALL_OK(r, LEASE_IF "Reclaim", "{\"id\": \"%s\", \"token\": %" PRIu64 ", \"secret\": \"%s\"}",
                                      id1, t1, secret1),
                              "lease");
        assert_string_equal(jstr(l, "id"), id1);
        assert_int_equal(token_of(l), t1);
        assert_string_equal(jstr(l, "description"), "job");
        VConn *x = OPEN(a);
        CALL_ERR(x, "io.agend.Lease.PermissionDenied", LEASE_IF "Reclaim",
                 "{\"id\": \"%s\", \"token\": %" PRIu64 ", \"secret\": \"%032x\"}", id1, t1, 7);
        VConn *bc = OPEN(b);
        assert_true(check(bc, t1));
        assert_true(in_history(r, "reclaimed", id1));

        /* The detached lease is back by itself: listed with its id, released by its secret. */
        json_object *list = CALL_OK(x, LEASE_IF "List", "{\"resource\": \"lic\"}");
        assert_int_equal(json_object_array_length(jget(list, "leases")), 1);
        assert_string_equal(jstr(json_object_array_get_idx(jget(list, "leases"), 0), "id"), id2);
        CALL_OK(x, LEASE_IF "Release", "{\"id\": \"%s\", \"secret\": \"%s\"}", id2, secret2);
        assert_granted(next_final(bl, 10.0));

        /* The fpga lease nobody reclaimed goes after the grace period (3 s), not before. */
        assert_granted(next_final(bf, 20.0));
        double after = helper_now() - started;
        fprintf(stderr, "unclaimed holder's key went %.2f s after the start (grace 3 s)\n", after);
        assert_true(after >= 3.0);

        /* The reclaimed lease is held until released; then b's waiter gets it. */
        json_object *m = NULL;
        assert_true(vconn_recv(bg, 0.2, &m) < 0 || (reply_state(m) && strcmp(reply_state(m), "queued") == 0));
        CALL_OK(r, LEASE_IF "Release", "{\"id\": \"%s\"}", id1);
        assert_true(token_of(jget(assert_granted(next_final(bg, 10.0)), "lease")) > t1);
        vconn_close(bg);
        vconn_close(bl);
        vconn_close(bf);
}

/* SIGSTOP of the agend holding the unit, past its TTL: the other host is granted meanwhile
 * (etcd expired the lease); after SIGCONT the holder's Watch says "voided" and a request
 * that waited in the socket is not granted on the stale state. */
static void test_stopped_host(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *watch = OPEN(a), *late = OPEN(a), *b1 = OPEN(b);
        json_object *l = GRANT_LEASE(a1, "{\"resource\": \"gpu\"}");
        uint64_t t1 = token_of(l);
        assert_int_equal(vconn_send(watch, VL_MORE, LEASE_IF "Watch", "{\"lease\": \"%s\"}", jstr(l, "id")), 0);
        assert_null(next_event(watch, HELPER_REPLY_TIMEOUT, NULL));
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(b1, HELPER_REPLY_TIMEOUT)), "queued");

        assert_int_equal(kill(a->pid, SIGSTOP), 0);
        json_object *g = next_final(b1, 30.0);
        uint64_t t2 = token_of(jget(assert_granted(g), "lease"));
        assert_true(t2 > t1);
        assert_int_equal(vconn_send(late, 0, LEASE_IF "Acquire", "{\"resource\": \"gpu\", \"timeout\": 0}"), 0);
        assert_int_equal(kill(a->pid, SIGCONT), 0);

        json_object *ev;
        assert_string_equal(next_event(watch, 10.0, &ev), "voided");
        json_object *r = RECV(late, 10.0);
        if (!reply_error(r))
                fail_msg("a stopped agend granted on stale state: %s", jtext(r));
        CALL_OK(b1, LEASE_IF "Check", "{\"resource\": \"gpu\", \"token\": %" PRIu64 "}", t2);
}

/* One etcd member killed: the agends go on granting through the other two. */
static void test_member_killed(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n";
        ttl = 15;
        Agend *a = host("a", res), *b = host("b", res);
        VConn *a1 = OPEN(a), *b1 = OPEN(b);
        assert_int_equal(etcd_cluster_signal(etcd, 0, SIGKILL), 0);
        uint64_t last = 0;
        for (unsigned i = 0; i < 5; i++) {
                VConn *c = i % 2 ? b1 : a1;
                /* While etcd elects a leader and agend's watch moves to another member, a
                 * grant may take seconds: waited for with a generous guard. */
                assert_int_equal(vconn_send(c, 0, LEASE_IF "Acquire", "{\"resource\": \"gpu\", \"timeout\": 30}"), 0);
                json_object *l = jget(assert_granted(next_final(c, 40.0)), "lease");
                assert_true(token_of(l) > last);
                last = token_of(l);
                CALL_OK(c, LEASE_IF "Release", "{\"id\": \"%s\"}", jstr(l, "id"));
        }
        assert_int_equal(etcd_cluster_restart(etcd, 0), 0);
        assert_int_equal(etcd_cluster_wait_healthy(etcd, 0, 60 * USEC_PER_SEC), 0);
}

/* Quorum lost (two of three members killed): the holder hears "disconnected" at once and
 * "voided" (its LOST) no later than etcd could expire agend's lease; Acquire on the cluster
 * resource gives a clear error; local resources are granted as ever. Last: it breaks the
 * cluster. */
static void test_quorum_lost(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n[Resource]\nName=disk\n\n";
        Agend *a = host("a", res);
        VConn *holder = OPEN(a), *watch = OPEN(a), *other = OPEN(a);
        json_object *l = GRANT_LEASE(holder, "{\"resource\": \"gpu\"}");
        assert_int_equal(vconn_send(watch, VL_MORE, LEASE_IF "Watch", "{\"lease\": \"%s\"}", jstr(l, "id")), 0);
        assert_null(next_event(watch, HELPER_REPLY_TIMEOUT, NULL));
        double killed = helper_now();
        assert_int_equal(etcd_cluster_signal(etcd, 1, SIGKILL), 0);
        assert_int_equal(etcd_cluster_signal(etcd, 2, SIGKILL), 0);
        json_object *ev;
        const char *type = next_event(watch, 10.0, &ev);
        double t_disc = helper_now() - killed;
        assert_string_equal(type, "disconnected");
        type = next_event(watch, 10.0, &ev);
        double t_lost = helper_now() - killed;
        assert_string_equal(type, "voided");
        fprintf(stderr, "quorum lost: disconnected after %.2f s, voided after %.2f s (TTL %d s): %s\n", t_disc,
                t_lost, TTL, strna(jstr(ev, "reason")));
        /* agend's deadline is the send time of the last answered keepalive (before the
         * kill) + TTL - margin (min(TTL/5, 1 s)), margin before etcd can expire the lease: so
         * voided comes no later than the kill + TTL - margin (0.3 s slack for delivery). */
        assert_true(t_disc < t_lost);
        assert_true(t_lost <= TTL - MIN(TTL / 5.0, 1.0) + 0.3);
        json_object *e = CALL_ERR(other, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\": \"gpu\", \"timeout\": 1}");
        assert_non_null(strstr(jstr(e, "reason"), "etcd"));
        json_object *d = GRANT_LEASE(other, "{\"resource\": \"disk\"}");
        assert_string_equal(jstr(d, "resource"), "disk");
}

/* What `agenctl ARGS...` (AGENCTL_BINARY) prints on a pipe to host a, with COLUMNS=cols
 * (0: none); the caller frees it. The arguments end with NULL. */
static char *agenctl_output(const Agend *a, unsigned cols, ...) {
        const char *bin = getenv("AGENCTL_BINARY");
        if (!bin || !*bin)
                fail_msg("AGENCTL_BINARY is not set");
        char *argv[16] = { (char *) bin };
        size_t n = 1;
        va_list ap;
        va_start(ap, cols);
        for (char *s; n < ELEMENTSOF(argv) - 1 && (s = va_arg(ap, char *));)
                argv[n++] = s;
        va_end(ap);
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(p[1], STDOUT_FILENO);
                setenv("AGEND_SOCKET", a->socket, 1);
                setenv("AGENCTL_PAGER", "cat", 1);
                char c[16];
                snprintf(c, sizeof(c), "%u", cols);
                if (cols)
                        setenv("COLUMNS", c, 1);
                else
                        unsetenv("COLUMNS");
                execv(bin, argv);
                _exit(120);
        }
        close(p[1]);
        char *out = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&out, &len);
        assert_non_null(f);
        char buf[4096];
        for (ssize_t k; (k = read(p[0], buf, sizeof(buf))) != 0;) {
                if (k < 0 && errno == EINTR)
                        continue;
                assert_true(k > 0);
                fwrite(buf, 1, (size_t) k, f);
        }
        fclose(f);
        close(p[0]);
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                fail_msg("agenctl exited with wait status %d:\n%s", st, out);
        return out;
}

/* The line of out that contains s, copied to line (or fails). */
static void line_with(const char *out, const char *s, char *line, size_t size) {
        const char *p = strstr(out, s);
        if (!p)
                fail_msg("no \"%s\" in:\n%s", s, out);
        const char *b = p, *e = strchrnul(p, '\n');
        while (b > out && b[-1] != '\n')
                b--;
        snprintf(line, size, "%.*s", (int) (e - b), b);
}

/* agenctl list on one host shows the node of every host's holders and waiters in a NODE
 * column, never cut (like the id); a list with no cluster-scope row has none. */
static void test_agenctl_list_node(void **state) {
        const char *res = "[Resource]\nName=gpu\nCapacity=1\nScope=cluster\n\n[Resource]\nName=disk\n\n";
        Agend *a = host("node-alpha", res), *b = host("node-bravo", res);
        VConn *a1 = OPEN(a), *b1 = OPEN(b), *bq = OPEN(b), *ad = OPEN(a);
        json_object *l1 = GRANT_LEASE(a1, "{\"resource\": \"gpu\", \"description\": \"the holder on alpha\"}");
        char id1[80];
        snprintf(id1, sizeof(id1), "%s", jstr(l1, "id"));
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire", "{\"resource\": \"gpu\"}"), 0);
        assert_string_equal(reply_state(RECV(b1, HELPER_REPLY_TIMEOUT)), "queued");
        GRANT_LEASE(ad, "{\"resource\": \"disk\"}");
        /* b's mirror has a's holder once its watch brought the key. */
        double until = helper_now() + 10.0;
        while (json_object_array_length(jget(CALL_OK(bq, LEASE_IF "List", "{\"resource\": \"gpu\"}"), "leases")) < 1 &&
               helper_now() < until)
                helper_sleep(0.02);

        /* On b, wide and narrow: the holder's row names alpha, the waiter's bravo, whole. */
        static const unsigned widths[] = { 0, 60 };
        for (size_t i = 0; i < ELEMENTSOF(widths); i++) {
                char *out = agenctl_output(b, widths[i], "list", "gpu", NULL);
                char line[512];
                line_with(out, "ID ", line, sizeof(line));
                if (!strstr(line, " NODE "))
                        fail_msg("no NODE column at %u columns:\n%s", widths[i], out);
                line_with(out, "#1", line, sizeof(line));
                if (!strstr(line, " node-bravo "))
                        fail_msg("the waiter's node is not shown whole at %u columns:\n%s", widths[i], out);
                /* The lease table's one row follows its header. */
                line_with(strchr(strstr(out, "ID "), '\n') + 1, " ", line, sizeof(line));
                if (!strstr(line, " node-alpha "))
                        fail_msg("the holder's node is not shown whole at %u columns:\n%s", widths[i], out);
                free(out);
        }
        /* On a, its own holder's row says its own node; --json carries it too. */
        char *out = agenctl_output(a, 0, "list", "gpu", NULL);
        char line[512];
        line_with(out, id1, line, sizeof(line));
        assert_non_null(strstr(line, " node-alpha "));
        free(out);
        out = agenctl_output(a, 0, "--json=short", "list", "gpu", NULL);
        json_object *j = json_tokener_parse(out);
        assert_non_null(j);
        assert_string_equal(jstr(json_object_array_get_idx(jget(j, "leases"), 0), "node"), "node-alpha");
        json_object_put(j);
        free(out);
        /* Only local rows (no node): no NODE column, the output as before. */
        out = agenctl_output(a, 0, "list", "disk", NULL);
        assert_null(strstr(out, "NODE"));
        assert_non_null(strstr(out, "USER"));
        free(out);
        vconn_close(b1);
}

static int setup(void **state) {
        test_no++;
        ttl = TTL;
        return 0;
}

static int teardown(void **state) {
        int r = 0;
        for (size_t i = 0; i < n_hosts; i++) {
                if (hosts[i]->pid <= 0)
                        continue;       /* killed by the test */
                int st = 0;
                if (agend_stop(hosts[i], &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
                        fprintf(stderr, "agend %zu did not stop cleanly (wait status %d)\n", i, st);
                        r = -1;
                }
        }
        n_hosts = 0;
        helper_cleanup();
        return r;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_two_hosts_fifo, setup, teardown),
                cmocka_unit_test_setup_teardown(test_history_three_hosts, setup, teardown),
                cmocka_unit_test_setup_teardown(test_same_surface, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_and_detached, setup, teardown),
                cmocka_unit_test_setup_teardown(test_grant_that_cannot_be_written, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reload_capacity, setup, teardown),
                cmocka_unit_test_setup_teardown(test_agenctl_list_node, setup, teardown),
                cmocka_unit_test_setup_teardown(test_waiter_keeps_place_across_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_killed_host, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stop_keeps_holder_until_ttl, setup, teardown),
                cmocka_unit_test_setup_teardown(test_holders_across_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stopped_host, setup, teardown),
                cmocka_unit_test_setup_teardown(test_member_killed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_quorum_lost, setup, teardown),
        };
        int k = etcd_cluster_for_tests(&etcd);
        if (k != 0)
                return k;
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        helper_cleanup();
        etcd_cluster_free(etcd);
        return r;
}

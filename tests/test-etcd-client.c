/* SPDX-License-Identifier: MIT */
/* The etcd client (daemon/etcd-*.c) against a real 3-member etcd cluster on loopback
 * (tests/helper-etcd.c): the lease keeper keeps keys past their TTL, revoke and expiry
 * delete them, a txn on create revision gives grant order, a watch delivers puts and
 * deletes from a revision, a killed member changes nothing visible, and a lost quorum gives
 * clear errors within a bound instead of a hang. Skips (77) without an etcd binary.
 *
 * Waits are on events with generous guards; the only bounds on time are the ones the
 * client promises (the request timeout, the lease deadline), checked with slack. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <unistd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd-client.h"
#include "etcd-lease.h"
#include "etcd-watch.h"
#include "helper-etcd.h"
#include "macro.h"

#define GUARD (30 * USEC_PER_SEC)       /* no single wait here should come near this */

static EtcdCluster *cluster;
static struct ev_loop *loop;
static EtcdClient *client;
static unsigned test_no;
/* What a test leaves running when it fails, for the teardown: their callbacks point into
 * the test's stack. */
static EtcdWatch *the_watch;
static EtcdLeaseKeeper *the_keeper;

/* One finished call. */
typedef struct Reply {
        bool done;
        int error;
        EtcdResult r;           /* a deep copy is not needed: we keep what we check */
        int64_t revision, lease_id, ttl;
        bool succeeded;
        size_t n_kvs;
        char keys[16][128];
        int64_t create_rev[16];
        int64_t deleted;
        uint64_t leader;
        char message[256];
        char endpoint[64];
        usec_t at;
} Reply;

static void reply_cb(EtcdClient *c, int error, const EtcdResult *r, void *userdata) {
        Reply *p = userdata;
        p->done = true;
        p->error = error;
        p->at = usec_now(CLOCK_MONOTONIC);
        p->revision = r->header.revision;
        p->lease_id = r->lease_id;
        p->ttl = r->ttl;
        p->succeeded = r->succeeded;
        p->leader = r->leader;
        snprintf(p->message, sizeof(p->message), "%s", strempty(r->message));
        snprintf(p->endpoint, sizeof(p->endpoint), "%s", strempty(r->endpoint));
        for (size_t i = 0; i < r->n_ops; i++) {
                if (r->ops[i].type == ETCD_OP_DELETE)
                        p->deleted += r->ops[i].deleted;
                for (size_t j = 0; j < r->ops[i].n_kvs && p->n_kvs < 16; j++) {
                        snprintf(p->keys[p->n_kvs], 128, "%s", r->ops[i].kvs[j].key);
                        p->create_rev[p->n_kvs++] = r->ops[i].kvs[j].create_revision;
                }
        }
}

static void guard_cb(struct ev_loop *l, ev_timer *w, int revents) {
        ev_break(l, EVBREAK_ALL);
}

static void idle_cb(struct ev_loop *l, ev_prepare *w, int revents) {
        bool *flag = w->data;
        if (*flag)
                ev_break(l, EVBREAK_ONE);
}

/* Runs the loop until *flag or the guard passes. */
static bool run_until(bool *flag, usec_t guard) {
        ev_timer t;
        ev_prepare p;
        ev_timer_init(&t, guard_cb, (double) guard / USEC_PER_SEC, 0.);
        ev_prepare_init(&p, idle_cb);
        p.data = flag;
        ev_timer_start(loop, &t);
        ev_prepare_start(loop, &p);
        if (!*flag)
                ev_run(loop, 0);
        ev_timer_stop(loop, &t);
        ev_prepare_stop(loop, &p);
        return *flag;
}

static void run_for(usec_t d) {
        bool never = false;
        run_until(&never, d);
}

static void wait_reply(Reply *p) {
        if (!run_until(&p->done, GUARD))
                fail_msg("no reply within the guard");
}

/* A fresh key prefix per test, so tests share the cluster but not keys. */
static const char *prefix(void) {
        static char buf[64];
        snprintf(buf, sizeof(buf), "/t%u/", test_no);
        return buf;
}

static char *key(const char *name) {
        static char buf[8][128];
        static unsigned i;
        char *b = buf[i++ % 8];
        snprintf(b, 128, "%s%s", prefix(), name);
        return b;
}

static int new_client(EtcdClient **ret, usec_t request_timeout) {
        EtcdClientOptions o = {
                .endpoints = cluster->endpoints,
                .n_endpoints = cluster->n,
                .request_timeout = request_timeout,
                .connect_timeout = USEC_PER_SEC,
        };
        return etcd_client_new(loop, &o, ret);
}

static int setup(void **state) {
        test_no++;
        if (!cluster) {
                int k = etcd_cluster_new(3, 60 * USEC_PER_SEC, 10 * 60 * USEC_PER_SEC, &cluster);
                if (k < 0) {
                        fprintf(stderr, "etcd cluster: %s\n", strerror(-k));
                        return -1;
                }
        }
        loop = ev_loop_new(EVFLAG_AUTO);
        return new_client(&client, 3 * USEC_PER_SEC) < 0 ? -1 : 0;
}

static int setup_loop(void **state) {
        test_no++;
        loop = ev_loop_new(EVFLAG_AUTO);
        return 0;
}

/* Tests that break the cluster take a cluster of their own. */
static int teardown(void **state) {
        the_watch = etcd_watch_free(the_watch);
        the_keeper = etcd_lease_keeper_free(the_keeper, false);
        client = etcd_client_free(client);
        ev_loop_destroy(loop);
        loop = NULL;
        return 0;
}

static int teardown_cluster(void **state) {
        teardown(state);
        etcd_cluster_free(cluster);
        cluster = NULL;
        return 0;
}

static void put(const char *k, const char *v, int64_t lease, Reply *p) {
        EtcdOp op = { .type = ETCD_OP_PUT, .key = k, .value = v, .lease = lease };
        EtcdTxn t = { .success = &op, .n_success = 1 };
        *p = (Reply) {};
        assert_int_equal(etcd_txn(client, &t, reply_cb, p, NULL), 0);
        wait_reply(p);
        if (p->error < 0)
                fail_msg("put %s: %s (%s)", k, strerror(-p->error), p->message);
}

static size_t count_prefix(void) {
        EtcdOp op = { .type = ETCD_OP_RANGE, .key = prefix(), .prefix = true };
        Reply p = {};
        assert_int_equal(etcd_range(client, &op, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_int_equal(p.error, 0);
        return p.n_kvs;
}

static void test_status_and_range(void **state) {
        Reply p = {};
        assert_int_equal(etcd_status(client, -1, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_int_equal(p.error, 0);
        assert_true(p.leader != 0);
        for (size_t i = 0; i < cluster->n; i++) {
                p = (Reply) {};
                assert_int_equal(etcd_status(client, (int) i, reply_cb, &p, NULL), 0);
                wait_reply(&p);
                assert_int_equal(p.error, 0);
                assert_string_equal(p.endpoint, cluster->endpoints[i]);
        }
        /* Nothing under a new prefix; then what we put, with values intact (binary-safe
         * base64 both ways). */
        assert_int_equal(count_prefix(), 0);
        put(key("a"), "value with \"quotes\" and \n", 0, &p);
        put(key("b"), "", 0, &p);
        assert_int_equal(count_prefix(), 2);
        /* The range ends before the neighbour: "/tN/" + 1 = "/tN0", which is not in it. */
        char neighbour[64];
        snprintf(neighbour, sizeof(neighbour), "/t%u0", test_no);
        put(neighbour, "x", 0, &p);
        assert_int_equal(count_prefix(), 2);
}

/* Lease state changes, recorded. */
typedef struct Keeper {
        EtcdLeaseState states[64];
        usec_t at[64];
        size_t n;
        int64_t id;
        bool alive, lost;
        usec_t last_alive_deadline;
} Keeper;

static void keeper_cb(EtcdLeaseKeeper *k, EtcdLeaseState s, int64_t id, int error, void *userdata) {
        Keeper *kp = userdata;
        if (kp->n < 64) {
                kp->states[kp->n] = s;
                kp->at[kp->n++] = usec_now(CLOCK_MONOTONIC);
        }
        if (s == ETCD_LEASE_ALIVE) {
                kp->id = id;
                kp->alive = true;
        }
        if (s == ETCD_LEASE_LOST)
                kp->lost = true;
}

static void test_keepalive_keeps_keys(void **state) {
        /* TTL 2 s; the keeper keeps the lease (and the key on it) for 3 TTLs. */
        Keeper kp = {};
        EtcdLeaseKeeper *k;
        EtcdLeaseOptions o = { .ttl_sec = 2 };
        assert_int_equal(etcd_lease_keeper_new(client, &o, keeper_cb, &kp, &k), 0);
        the_keeper = k;
        assert_true(run_until(&kp.alive, GUARD));
        assert_true(kp.id != 0);
        assert_true(etcd_lease_keeper_get_deadline(k) > usec_now(CLOCK_MONOTONIC));
        Reply p;
        put(key("held"), "x", kp.id, &p);
        usec_t granted_ttl = (usec_t) etcd_lease_keeper_get_ttl(k) * USEC_PER_SEC;
        run_for(3 * granted_ttl);
        assert_false(kp.lost);
        assert_int_equal(etcd_lease_keeper_get_state(k), ETCD_LEASE_ALIVE);
        assert_int_equal(count_prefix(), 1);

        /* Revoke: the key goes at once. */
        int64_t id = kp.id;
        the_keeper = etcd_lease_keeper_free(k, false);
        p = (Reply) {};
        assert_int_equal(etcd_lease_revoke(client, id, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_int_equal(p.error, 0);
        assert_int_equal(count_prefix(), 0);
        /* A second revoke: etcd says the lease is not there. */
        p = (Reply) {};
        assert_int_equal(etcd_lease_revoke(client, id, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_int_equal(p.error, -ENOENT);
        assert_true(strlen(p.message) > 0);
}

static void test_expiry_deletes_keys(void **state) {
        /* Keepalives stop (keeper freed without revoke): the key is gone after the TTL. */
        Keeper kp = {};
        EtcdLeaseKeeper *k;
        EtcdLeaseOptions o = { .ttl_sec = 2 };
        assert_int_equal(etcd_lease_keeper_new(client, &o, keeper_cb, &kp, &k), 0);
        the_keeper = k;
        assert_true(run_until(&kp.alive, GUARD));
        Reply p;
        put(key("orphan"), "x", kp.id, &p);
        int64_t ttl = etcd_lease_keeper_get_ttl(k);
        the_keeper = etcd_lease_keeper_free(k, false);
        assert_int_equal(count_prefix(), 1);
        /* etcd expires within TTL (+ its own checking granularity); poll, guarded. */
        usec_t end = usec_now(CLOCK_MONOTONIC) + (usec_t) ttl * USEC_PER_SEC + GUARD;
        while (count_prefix() > 0 && usec_now(CLOCK_MONOTONIC) < end)
                run_for(200 * USEC_PER_MSEC);
        assert_int_equal(count_prefix(), 0);
        /* A keepalive for it now: TTL 0, the lease is gone. */
        p = (Reply) {};
        assert_int_equal(etcd_lease_keepalive(client, kp.id, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_int_equal(p.error, 0);
        assert_int_equal(p.ttl, 0);
}

/* The lock recipe's first step: a key per waiter, created only if absent, its create
 * revision the place in line. */
static void enqueue(const char *k, int64_t lease, Reply *p) {
        EtcdCompare cmp = { .key = k, .target = ETCD_TARGET_CREATE, .result = ETCD_EQUAL, .number = 0 };
        EtcdOp put_op = { .type = ETCD_OP_PUT, .key = k, .value = "w", .lease = lease };
        EtcdOp get_op = { .type = ETCD_OP_RANGE, .key = k };
        EtcdTxn t = { .compare = &cmp, .n_compare = 1, .success = &put_op, .n_success = 1,
                      .failure = &get_op, .n_failure = 1 };
        *p = (Reply) {};
        assert_int_equal(etcd_txn(client, &t, reply_cb, p, NULL), 0);
        wait_reply(p);
        assert_int_equal(p->error, 0);
}

static void test_txn_grant_order(void **state) {
        const char *names[] = { "w-c", "w-a", "w-e", "w-b", "w-d" };
        int64_t revs[5];
        Reply p;
        for (size_t i = 0; i < 5; i++) {
                enqueue(key(names[i]), 0, &p);
                assert_true(p.succeeded);
                revs[i] = p.revision;   /* the put's revision: the key's create revision */
                if (i > 0)
                        assert_true(revs[i] > revs[i - 1]);
        }
        /* Enqueueing again does not move a waiter: the compare fails, the key is returned
         * with its original create revision. */
        enqueue(key("w-c"), 0, &p);
        assert_false(p.succeeded);
        assert_int_equal(p.n_kvs, 1);
        assert_int_equal(p.create_rev[0], revs[0]);

        /* Sorted by create revision, the line is the request order, not the key order. */
        for (size_t round = 0; round < 5; round++) {
                EtcdOp op = { .type = ETCD_OP_RANGE, .key = prefix(), .prefix = true, .sort_by_create = true };
                p = (Reply) {};
                assert_int_equal(etcd_range(client, &op, reply_cb, &p, NULL), 0);
                wait_reply(&p);
                assert_int_equal(p.error, 0);
                assert_int_equal(p.n_kvs, 5 - round);
                for (size_t i = 0; i < p.n_kvs; i++) {
                        assert_string_equal(p.keys[i], key(names[round + i]));
                        assert_int_equal(p.create_rev[i], revs[round + i]);
                }
                /* The head (holder) releases, guarded by its create revision: a stale
                 * release (wrong revision) deletes nothing. */
                EtcdCompare stale = { .key = key(names[round]), .target = ETCD_TARGET_CREATE, .result = ETCD_EQUAL,
                                      .number = revs[round] + 1000 };
                EtcdCompare cur = stale;
                cur.number = revs[round];
                EtcdOp del = { .type = ETCD_OP_DELETE, .key = key(names[round]) };
                EtcdTxn t = { .compare = &stale, .n_compare = 1, .success = &del, .n_success = 1 };
                Reply q = {};
                assert_int_equal(etcd_txn(client, &t, reply_cb, &q, NULL), 0);
                wait_reply(&q);
                assert_false(q.succeeded);
                t.compare = &cur;
                q = (Reply) {};
                assert_int_equal(etcd_txn(client, &t, reply_cb, &q, NULL), 0);
                wait_reply(&q);
                assert_true(q.succeeded);
                assert_int_equal(q.deleted, 1);
        }
        assert_int_equal(count_prefix(), 0);
}

/* Watch events, recorded. */
typedef struct Watched {
        char keys[64][128];
        EtcdEventType types[64];
        int64_t revs[64];
        size_t n;
        unsigned created, broken;
        int last_error;
        bool compacted;
        size_t want;
        bool enough;
} Watched;

static void watch_cb(EtcdWatch *w, EtcdWatchStatus s, const EtcdEvent *ev, size_t n, int64_t rev, int error,
                     void *userdata) {
        Watched *x = userdata;
        switch (s) {
        case ETCD_WATCH_CREATED:
                x->created++;
                break;
        case ETCD_WATCH_EVENTS:
                for (size_t i = 0; i < n && x->n < 64; i++, x->n++) {
                        snprintf(x->keys[x->n], 128, "%s", ev[i].kv.key);
                        x->types[x->n] = ev[i].type;
                        x->revs[x->n] = ev[i].kv.mod_revision;
                }
                break;
        case ETCD_WATCH_BROKEN:
                x->broken++;
                x->last_error = error;
                break;
        case ETCD_WATCH_COMPACTED:
                x->compacted = true;
                break;
        case ETCD_WATCH_PROGRESS:
                break;
        }
        if (x->want && x->n >= x->want)
                x->enough = true;
}

static void test_watch_from_revision(void **state) {
        Reply p;
        put(key("x"), "1", 0, &p);
        int64_t first = p.revision;
        put(key("y"), "2", 0, &p);
        EtcdOp del = { .type = ETCD_OP_DELETE, .key = key("x") };
        EtcdTxn t = { .success = &del, .n_success = 1 };
        p = (Reply) {};
        assert_int_equal(etcd_txn(client, &t, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_int_equal(p.deleted, 1);

        /* From the first put: the history, then what happens next. */
        Watched x = { .want = 3 };
        EtcdWatch *w;
        assert_int_equal(etcd_watch_new(client, prefix(), first, watch_cb, &x, &w), 0);
        the_watch = w;
        assert_true(run_until(&x.enough, GUARD));
        assert_int_equal(x.n, 3);
        assert_string_equal(x.keys[0], key("x"));
        assert_int_equal(x.types[0], ETCD_EVENT_PUT);
        assert_int_equal(x.revs[0], first);
        assert_string_equal(x.keys[1], key("y"));
        assert_int_equal(x.types[1], ETCD_EVENT_PUT);
        assert_string_equal(x.keys[2], key("x"));
        assert_int_equal(x.types[2], ETCD_EVENT_DELETE);
        x.want = 4;
        x.enough = false;
        put(key("z"), "3", 0, &p);
        assert_true(run_until(&x.enough, GUARD));
        assert_string_equal(x.keys[3], key("z"));
        assert_int_equal(x.revs[3], p.revision);
        assert_int_equal(etcd_watch_get_next_revision(w), p.revision + 1);
        assert_int_equal(x.broken, 0);
        the_watch = etcd_watch_free(w);
}

/* A call posted from a watch callback: the recipe's "key ahead gone → range again". The
 * callback runs while curl delivers the stream, where curl refuses new transfers; the
 * client must start the call once curl has returned. */
typedef struct Chain {
        Reply reply;
        int post_error;
        bool posted;
} Chain;

static void chain_watch_cb(EtcdWatch *w, EtcdWatchStatus s, const EtcdEvent *ev, size_t n, int64_t rev, int error,
                           void *userdata) {
        Chain *ch = userdata;
        if (s != ETCD_WATCH_EVENTS || ch->posted)
                return;
        ch->posted = true;
        EtcdOp op = { .type = ETCD_OP_RANGE, .key = prefix(), .prefix = true };
        ch->post_error = etcd_range(client, &op, reply_cb, &ch->reply, NULL);
        /* And the watch may end itself from its own callback. */
        the_watch = etcd_watch_free(w);
}

static void test_call_from_watch_callback(void **state) {
        Chain ch = {};
        EtcdWatch *w;
        assert_int_equal(etcd_watch_new(client, prefix(), 0, chain_watch_cb, &ch, &w), 0);
        the_watch = w;
        Reply p;
        run_for(200 * USEC_PER_MSEC);
        put(key("k"), "v", 0, &p);
        assert_true(run_until(&ch.posted, GUARD));
        assert_int_equal(ch.post_error, 0);
        wait_reply(&ch.reply);
        assert_int_equal(ch.reply.error, 0);
        assert_int_equal(ch.reply.n_kvs, 1);
        assert_null(the_watch);
}

static void test_member_killed(void **state) {
        /* Everything runs through endpoint 0 first; kill it (-9) and carry on. The TTL leaves
         * room for an election (1 s timeout here, longer on a loaded machine) plus a
         * keepalive that was in flight to the killed member: with 3 s the keeper rightly
         * reported LOST on a busy CI machine. */
        Keeper kp = {};
        EtcdLeaseKeeper *k;
        EtcdLeaseOptions o = { .ttl_sec = 6 };
        assert_int_equal(etcd_lease_keeper_new(client, &o, keeper_cb, &kp, &k), 0);
        the_keeper = k;
        assert_true(run_until(&kp.alive, GUARD));
        Watched x = { .want = 1 };
        EtcdWatch *w;
        assert_int_equal(etcd_watch_new(client, prefix(), 0, watch_cb, &x, &w), 0);
        the_watch = w;
        Reply p;
        put(key("before"), "x", kp.id, &p);
        assert_true(run_until(&x.enough, GUARD));
        assert_int_equal(x.created, 1);

        assert_int_equal(etcd_cluster_signal(cluster, 0, SIGKILL), 0);
        /* If it was the leader, a write in flight at the kill can time out (raft drops
         * proposals to a dead leader; the caller re-reads and retries); once the two left
         * have elected a leader, everything goes on through them. */
        assert_int_equal(etcd_cluster_wait_healthy(cluster, 1, GUARD), 0);

        /* Writes, reads and the watch go on through the other two members. */
        put(key("after"), "y", kp.id, &p);
        assert_string_not_equal(p.endpoint, cluster->m[0].client_url);
        assert_int_equal(count_prefix(), 2);
        x.want = 2;
        x.enough = false;
        assert_true(run_until(&x.enough, GUARD));
        assert_string_equal(x.keys[1], key("after"));
        assert_true(x.broken >= 1);
        assert_true(x.created >= 2);
        /* The lease outlives 2 TTLs: keepalives moved to a live member. */
        run_for(2 * (usec_t) etcd_lease_keeper_get_ttl(k) * USEC_PER_SEC);
        assert_false(kp.lost);
        assert_int_equal(count_prefix(), 2);

        /* The member comes back and catches up. */
        assert_int_equal(etcd_cluster_restart(cluster, 0), 0);
        assert_int_equal(etcd_cluster_wait_healthy(cluster, 0, GUARD), 0);
        the_watch = etcd_watch_free(w);
        the_keeper = etcd_lease_keeper_free(k, true);
}

static void test_quorum_lost(void **state) {
        /* Two of three members gone: no leader. Calls fail with a clear error within the
         * request timeout (plus slack for a slow machine), the lease keeper reports TROUBLE
         * and then LOST no later than its deadline, and a watch breaks rather than hangs. */
        Keeper kp = {};
        EtcdLeaseKeeper *k;
        EtcdLeaseOptions o = { .ttl_sec = 4 };
        assert_int_equal(etcd_lease_keeper_new(client, &o, keeper_cb, &kp, &k), 0);
        the_keeper = k;
        assert_true(run_until(&kp.alive, GUARD));
        Watched x = {};
        EtcdWatch *w;
        assert_int_equal(etcd_watch_new(client, prefix(), 0, watch_cb, &x, &w), 0);
        the_watch = w;
        while (x.created == 0)
                run_for(50 * USEC_PER_MSEC);

        assert_int_equal(etcd_cluster_signal(cluster, 1, SIGKILL), 0);
        assert_int_equal(etcd_cluster_signal(cluster, 2, SIGKILL), 0);
        usec_t deadline = etcd_lease_keeper_get_deadline(k);
        usec_t killed = usec_now(CLOCK_MONOTONIC);

        usec_t timeout = etcd_client_get_request_timeout(client);
        Reply p = {};
        EtcdOp op = { .type = ETCD_OP_RANGE, .key = prefix(), .prefix = true };
        usec_t t0 = usec_now(CLOCK_MONOTONIC);
        assert_int_equal(etcd_range(client, &op, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_true(p.error < 0);
        assert_true(strlen(p.message) > 0);
        fprintf(stderr, "# range without quorum: %s (%s) after %.2f s\n", strerror(-p.error), p.message,
                (double) (p.at - t0) / USEC_PER_SEC);
        assert_true(p.at - t0 <= 3 * timeout);

        EtcdCompare cmp = { .key = key("q"), .target = ETCD_TARGET_CREATE, .result = ETCD_EQUAL };
        EtcdOp put_op = { .type = ETCD_OP_PUT, .key = key("q"), .value = "x" };
        EtcdTxn t = { .compare = &cmp, .n_compare = 1, .success = &put_op, .n_success = 1 };
        p = (Reply) {};
        t0 = usec_now(CLOCK_MONOTONIC);
        assert_int_equal(etcd_txn(client, &t, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_true(p.error < 0);
        fprintf(stderr, "# txn without quorum: %s (%s) after %.2f s\n", strerror(-p.error), p.message,
                (double) (p.at - t0) / USEC_PER_SEC);
        assert_true(p.at - t0 <= 3 * timeout);

        /* The keeper: LOST, at its deadline (never later than the lease could expire in
         * etcd; slack for the loop only), after TROUBLE. */
        assert_true(run_until(&kp.lost, GUARD));
        usec_t lost_at = 0;
        bool trouble = false;
        for (size_t i = 0; i < kp.n; i++) {
                if (kp.states[i] == ETCD_LEASE_TROUBLE)
                        trouble = true;
                if (kp.states[i] == ETCD_LEASE_LOST && !lost_at)
                        lost_at = kp.at[i];
        }
        assert_true(trouble);
        assert_true(lost_at >= deadline);
        fprintf(stderr, "# lease LOST %.2f s after quorum loss, %.3f s after its deadline (TTL %" PRIi64 " s)\n",
                (double) (lost_at - killed) / USEC_PER_SEC, (double) (lost_at - deadline) / USEC_PER_SEC,
                etcd_lease_keeper_get_ttl(k));
        assert_true(lost_at - deadline < 2 * USEC_PER_SEC);
        /* The watch noticed (the member left has no leader). */
        usec_t end = usec_now(CLOCK_MONOTONIC) + GUARD;
        while (x.broken == 0 && usec_now(CLOCK_MONOTONIC) < end)
                run_for(100 * USEC_PER_MSEC);
        assert_true(x.broken >= 1);
        fprintf(stderr, "# watch broke: %s\n", strerror(-x.last_error));
        the_watch = etcd_watch_free(w);
        the_keeper = etcd_lease_keeper_free(k, false);
}

static void test_unreachable(void **state) {
        /* No member listens: -ECONNREFUSED quickly, from every endpoint in turn. */
        char *eps[] = { "http://127.0.0.1:1", "http://127.0.0.1:9", NULL };
        EtcdClientOptions o = { .endpoints = eps, .n_endpoints = 2, .request_timeout = 2 * USEC_PER_SEC };
        EtcdClient *c;
        assert_int_equal(etcd_client_new(loop, &o, &c), 0);
        Reply p = {};
        assert_int_equal(etcd_status(c, -1, reply_cb, &p, NULL), 0);
        wait_reply(&p);
        assert_int_equal(p.error, -ECONNREFUSED);
        assert_true(strlen(p.message) > 0);
        /* Freeing the client ends calls still in flight with -ECANCELED. */
        p = (Reply) {};
        assert_int_equal(etcd_status(c, -1, reply_cb, &p, NULL), 0);
        etcd_client_free(c);
        assert_true(p.done);
        assert_int_equal(p.error, -ECANCELED);
}

static void tls_status(EtcdCluster *tc, const char *ca, const char *cert, const char *key, Reply *p) {
        EtcdClientOptions o = {
                .endpoints = tc->endpoints,
                .n_endpoints = tc->n,
                .ca_file = ca,
                .cert_file = cert,
                .key_file = key,
                .request_timeout = 3 * USEC_PER_SEC,
        };
        EtcdClient *c;
        assert_int_equal(etcd_client_new(loop, &o, &c), 0);
        *p = (Reply) {};
        assert_int_equal(etcd_status(c, -1, reply_cb, p, NULL), 0);
        wait_reply(p);
        etcd_client_free(c);
}

static void test_tls(void **state) {
        /* CAFile=, CertFile=, KeyFile= reach libcurl: with all three a member that requires
         * client certificates answers; without the client certificate, or without the CA
         * that signed the server's, the call fails with an error, not a hang. */
        EtcdCluster *tc;
        int k = etcd_cluster_new_tls(1, 60 * USEC_PER_SEC, 5 * 60 * USEC_PER_SEC, &tc);
        if (k == -ENOENT)
                skip();
        assert_int_equal(k, 0);
        char ca[192], cert[192], key[192];
        snprintf(ca, sizeof(ca), "%s/ca.pem", tc->tls_dir);
        snprintf(cert, sizeof(cert), "%s/client.pem", tc->tls_dir);
        snprintf(key, sizeof(key), "%s/client-key.pem", tc->tls_dir);
        assert_int_equal(strncmp(tc->endpoints[0], "https://", 8), 0);
        Reply p;
        tls_status(tc, ca, cert, key, &p);
        if (p.error != 0)
                fail_msg("TLS status: %s (%s)", strerror(-p.error), p.message);
        assert_true(p.leader != 0);
        tls_status(tc, ca, NULL, NULL, &p);
        fprintf(stderr, "# without a client certificate: %s (%s)\n", strerror(-p.error), p.message);
        assert_true(p.error < 0);
        tls_status(tc, NULL, cert, key, &p);
        fprintf(stderr, "# without the CA: %s (%s)\n", strerror(-p.error), p.message);
        assert_int_equal(p.error, -EPROTO);
        etcd_cluster_free(tc);
}

int main(void) {
        if (access("/usr/bin/etcd", X_OK) < 0 && !getenv("ETCD_BINARY")) {
                printf("SKIP: no etcd binary (apt-get install etcd-server)\n");
                return 77;
        }
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_unreachable, setup, teardown),
                cmocka_unit_test_setup_teardown(test_status_and_range, setup, teardown),
                cmocka_unit_test_setup_teardown(test_keepalive_keeps_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_expiry_deletes_keys, setup, teardown),
                cmocka_unit_test_setup_teardown(test_txn_grant_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_watch_from_revision, setup, teardown),
                cmocka_unit_test_setup_teardown(test_call_from_watch_callback, setup, teardown),
                cmocka_unit_test_setup_teardown(test_member_killed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_quorum_lost, setup, teardown_cluster),
                cmocka_unit_test_setup_teardown(test_tls, setup_loop, teardown),
        };
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        etcd_cluster_free(cluster);
        return r;
}

/* SPDX-License-Identifier: MIT */
/* The lease generator and the client against the real agend ($AGEND_BINARY, set by meson),
 * started by tests/helper-agend on a temporary socket and state directory, one daemon per
 * test. The daemon's own view (List, History) is read on raw connections of the helper, so
 * each test checks what agend did, not what the client believes it did: e.g. that a close
 * was the Release round trip ("released with the secret") and not the EOF of last resort
 * ("connection closed").
 *
 * Every wait is bounded: the loop by a guard timer, the helper's calls by their timeouts.
 * Each test ends with no live generator, no watcher of ours on the loop, no per-loop state,
 * the file descriptors it started with, and agend exiting 0 on SIGTERM. */

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <ev.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-lease.h"

/* ---- tests ---- */

static void test_granted_then_aclose_releases(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .description = "aclose test" });
        assert_non_null(g);
        /* Nothing is sent before the first step. */
        ev_run(f->loop, EVRUN_NOWAIT);
        assert_int_equal(n_leases(f, "gpu") + n_waiters(f, "gpu"), 0);

        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        assert_true(s.id[0] != 0);
        assert_true(s.ev.token >= 1);
        json_object *l = json_object_array_get_idx(jget(list(f, "gpu"), "leases"), 0);
        assert_string_equal(jstr(l, "id"), s.id);
        assert_int_equal(jint(l, "token"), (int64_t) s.ev.token);
        assert_string_equal(jstr(l, "description"), "aclose test");
        assert_int_equal(jint(l, "owner.pid"), getpid());

        Closed c = {};
        assert_int_equal(agen_gen_aclose(g, closed_cb, &c), 0);
        run_until(f, &c.done);
        assert_int_equal(c.status, 0);
        /* The close was the release round trip: done, and committed, when the callback fires. */
        assert_int_equal(n_leases(f, "gpu"), 0);
        assert_ended_by(f, "gpu", s.id, REASON_RELEASE_CALL);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        agen_gen_unref(g);
}

static void test_queued_positions_then_granted(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        agen_gen *b = agen_lease(f->client, "gpu", &(agen_lease_opts) { .description = "second" });
        agen_gen *c = agen_lease(f->client, "gpu", NULL);

        Step sa = next_event(f, a, AGEN_LEASE_GRANTED);
        Step s = next_event(f, b, AGEN_LEASE_QUEUED);
        assert_int_equal(s.ev.position, 1);
        assert_string_equal(s.id, "");
        assert_int_equal(s.ev.token, 0);
        s = next_event(f, c, AGEN_LEASE_QUEUED);
        assert_int_equal(s.ev.position, 2);
        assert_int_equal(n_waiters(f, "gpu"), 2);

        /* a goes: b is granted, c moves up. */
        assert_int_equal(agen_gen_close_sync(a), 0);
        s = next_event(f, b, AGEN_LEASE_GRANTED);
        assert_true(s.ev.token > sa.ev.token);
        s = next_event(f, c, AGEN_LEASE_QUEUED);
        assert_int_equal(s.ev.position, 1);

        /* Closing a waiter cancels its wait (its connection closes). */
        assert_int_equal(agen_gen_close_sync(c), 0);
        double deadline = helper_now() + HELPER_REPLY_TIMEOUT;
        while (n_waiters(f, "gpu") > 0 && helper_now() < deadline)
                helper_sleep(0.01);
        assert_int_equal(n_waiters(f, "gpu"), 0);
        assert_int_equal(agen_gen_close_sync(b), 0);
        assert_int_equal(n_leases(f, "gpu"), 0);
        agen_gen_unref(a);
        agen_gen_unref(b);
        agen_gen_unref(c);
}

static void test_try_once_and_timeout(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        agen_gen *b = agen_lease(f->client, "gpu", &(agen_lease_opts) { .try_once = true });
        agen_gen *c = agen_lease(f->client, "gpu", &(agen_lease_opts) { .timeout = 0.3 });

        next_event(f, a, AGEN_LEASE_GRANTED);
        Step s = next(f, b);
        assert_int_equal(s.status, -ETIMEDOUT);
        assert_int_equal(agen_gen_get_state(b), AGEN_GEN_CLOSED);
        assert_int_equal(agen_gen_anext(b, step_cb, &s), -ESTALE);

        /* A bounded wait: queued, then the daemon's Timeout. */
        assert_int_equal(next_event(f, c, AGEN_LEASE_QUEUED).ev.position, 1);
        double t0 = helper_now();
        assert_int_equal(next(f, c).status, -ETIMEDOUT);
        assert_true(helper_now() - t0 < 5.0);
        assert_int_equal(n_waiters(f, "gpu"), 0);

        agen_gen_unref(b);
        agen_gen_unref(c);
        agen_gen_unref(a); /* the finalizer releases it */
        wait_no_leases(f, "gpu");
}

static void test_finalizer_releases(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        agen_gen *w = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        next_event(f, w, AGEN_LEASE_QUEUED);

        /* An early break: the program drops the generator without closing it. */
        agen_gen_unref(g);
        /* The next waiter holds the lease: the proof that the first one was released. */
        next_event(f, w, AGEN_LEASE_GRANTED);
        while (agen_loop_live(f->loop) > 1 && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_int_equal(agen_loop_live(f->loop), 1);
        assert_ended_by(f, "gpu", s.id, REASON_RELEASE_CALL);
        agen_gen_unref(w);
        while (agen_loop_live(f->loop) > 0 && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_int_equal(n_leases(f, "gpu"), 0);
}

static void test_shutdown_releases_all(void **state) {
        Fixture *f = *state;
        agen_gen *g[3];
        char ids[3][64], res[3][8];
        for (unsigned i = 0; i < 3; i++) {
                snprintf(res[i], sizeof(res[i]), "gpu%u", i);
                g[i] = agen_lease(f->client, res[i], NULL);
                snprintf(ids[i], sizeof(ids[i]), "%s", next_event(f, g[i], AGEN_LEASE_GRANTED).id);
        }
        agen_gen_unref(g[2]);

        assert_int_equal(agen_loop_shutdown(f->loop, 5.0), 0);
        /* Every release was answered, so committed, before shutdown returned. */
        for (unsigned i = 0; i < 3; i++) {
                assert_int_equal(n_leases(f, res[i]), 0);
                assert_ended_by(f, res[i], ids[i], REASON_RELEASE_CALL);
        }
        assert_int_equal(agen_loop_live(f->loop), 0);
        assert_int_equal(agen_gen_get_state(g[0]), AGEN_GEN_CLOSED);
        agen_gen_unref(g[0]);
        agen_gen_unref(g[1]);
}

static void count_exception(struct ev_loop *loop, agen_gen *gen, int error, const char *message, void *userdata) {
        unsigned *n = userdata;
        assert_int_equal(error, -ETIMEDOUT);
        (*n)++;
}

static void test_abandon_closes_the_connection(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        agen_gen *d = agen_lease(f->client, "disk", &(agen_lease_opts) { .detached = true });
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        Step sd = next_event(f, d, AGEN_LEASE_GRANTED);

        /* No time at all: the release round trip cannot finish. Closing the connection is
         * the release of last resort (EOF) for a bound lease; a detached one gets a one-way
         * Release on a connection of its own. Nobody awaits these closes: the loop's
         * exception handler hears that they did not finish. */
        unsigned exceptions = 0;
        assert_int_equal(agen_loop_set_exception_handler(f->loop, count_exception, &exceptions), 0);
        assert_int_equal(agen_loop_shutdown(f->loop, 0), 2);
        assert_int_equal(exceptions, 2);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_int_equal(agen_gen_get_state(d), AGEN_GEN_CLOSED);
        wait_no_leases(f, "gpu");
        wait_no_leases(f, "disk");
        assert_ended_by(f, "gpu", s.id, REASON_EOF);
        assert_ended_by(f, "disk", sd.id, REASON_RELEASE_CALL);
        agen_gen_unref(g);
        agen_gen_unref(d);
}

/* The daemon stops answering (SIGSTOP) while a close waits for its Release: the shutdown
 * timeout abandons the generator, and the lease still ends once agend runs again. */
static void test_shutdown_timeout_while_daemon_stalls(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.05); /* the Watch is in */

        assert_int_equal(kill(f->a->pid, SIGSTOP), 0);
        Closed c = {};
        assert_int_equal(agen_gen_aclose(g, closed_cb, &c), 0);
        run_for(f, 0.1);
        assert_false(c.done);
        assert_int_equal(agen_loop_shutdown(f->loop, 0.2), 1);
        assert_true(c.done);
        assert_int_equal(c.status, -ETIMEDOUT);
        assert_int_equal(kill(f->a->pid, SIGCONT), 0);

        wait_no_leases(f, "gpu");
        /* Which of the two comes first (the Release already written, or the EOF) is the
         * daemon's to pick; either way it is released. */
        const char *why = history_reason(f, "gpu", s.id, "released");
        assert_non_null(why);
        assert_true(streq(why, REASON_RELEASE_CALL) || streq(why, REASON_EOF));
        agen_gen_unref(g);
}

static void test_revoked(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.05); /* the Watch is in */

        revoke_lease(f, s.id, "maintenance");
        Step r = next_event(f, g, AGEN_LEASE_REVOKED);
        assert_string_equal(r.reason, "maintenance");
        assert_string_equal(r.id, s.id);
        assert_int_equal(r.ev.token, s.ev.token);
        assert_int_equal(next(f, g).status, AGEN_STOP);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        /* Nothing left to release. */
        assert_int_equal(agen_gen_close_sync(g), 0);
        assert_null(history_reason(f, "gpu", s.id, "released"));
        assert_string_equal(history_reason(f, "gpu", s.id, "revoked"), "maintenance");
        agen_gen_unref(g);
}

static void test_ttl_renewed(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .ttl = 0.6 });
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        double t0 = helper_now();
        /* Renewed at ~1/3 of the TTL, again and again: it outlives its TTL. */
        for (unsigned i = 0; i < 5; i++)
                next_event(f, g, AGEN_LEASE_RENEWED);
        assert_true(helper_now() - t0 > 0.6);
        assert_int_equal(n_leases(f, "gpu"), 1);
        assert_non_null(history_reason(f, "gpu", s.id, "renewed"));
        assert_int_equal(agen_gen_close_sync(g), 0);
        assert_ended_by(f, "gpu", s.id, REASON_RELEASE_CALL);
        agen_gen_unref(g);
}

typedef struct Replies {
        unsigned n;
        int status[8];
        char json[8][512];
        char error[8][64];
        bool continues[8];
} Replies;

static void reply_cb(agen_client *client, int status, const char *error_name, const char *parameters_json,
                     bool continues, void *userdata) {
        Replies *r = userdata;
        if (r->n < ELEMENTSOF(r->status)) {
                r->status[r->n] = status;
                snprintf(r->json[r->n], sizeof(r->json[0]), "%s", strempty(parameters_json));
                snprintf(r->error[r->n], sizeof(r->error[0]), "%s", strempty(error_name));
                r->continues[r->n] = continues;
        }
        r->n++;
}

static void run_until_replies(Fixture *f, Replies *r, unsigned n) {
        while (r->n < n && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_false(f->guard_fired);
}

/* A TTL lease whose renewals cannot get through expires: here the client's control
 * connection is held by a streaming call (a Watch of the lease itself), so the Renew
 * calls queue behind it, unanswered, and agend ends the lease when its TTL passes. */
static void test_ttl_expired_when_renewals_stall(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .ttl = 0.5 });
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);

        Replies w = {};
        char params[128];
        snprintf(params, sizeof(params), "{\"lease\":\"%s\"}", s.id);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Watch", params, AGEN_CALL_MORE, reply_cb, &w), 0);

        double t0 = helper_now();
        Step e = next_event(f, g, AGEN_LEASE_EXPIRED);
        assert_true(helper_now() - t0 >= 0.3);
        assert_true(e.reason[0] != 0);
        assert_string_equal(e.id, s.id);
        assert_int_equal(next(f, g).status, AGEN_STOP);
        assert_int_equal(n_leases(f, "gpu"), 0);
        assert_non_null(history_reason(f, "gpu", s.id, "expired"));
        assert_null(history_reason(f, "gpu", s.id, "renewed"));

        /* The control connection's Watch saw it too, and ended with it. */
        run_until_replies(f, &w, 2);
        assert_int_equal(w.n, 2);
        assert_true(w.continues[0]);
        assert_non_null(strstr(w.json[0], "\"event\":null"));
        assert_false(w.continues[1]);
        assert_non_null(strstr(w.json[1], "\"type\":\"expired\""));
        agen_gen_unref(g);
}

static void restart(Fixture *f, const char *grace) {
        assert_int_equal(agend_kill(f->a), 0);
        snprintf(f->a->grace, sizeof(f->a->grace), "%s", grace);
        assert_int_equal(agend_start(f->a), 0);
}

static void test_restart_reclaimed(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);

        restart(f, GRACE);
        /* The connection's end is said at once, before the reclaim. */
        Step d = next_event(f, g, AGEN_LEASE_DISCONNECTED);
        assert_string_equal(d.id, s.id);
        assert_int_equal(d.ev.token, s.ev.token);
        Step r = next_event(f, g, AGEN_LEASE_RECLAIMED);
        assert_string_equal(r.id, s.id);
        assert_int_equal(r.ev.token, s.ev.token);
        assert_non_null(history_reason(f, "gpu", s.id, "reclaimed"));
        json_object *l = json_object_array_get_idx(jget(list(f, "gpu"), "leases"), 0);
        assert_string_equal(jstr(l, "state"), "held");

        /* Watched again: a revoke still reaches it. */
        run_for(f, 0.05);
        revoke_lease(f, s.id, "after restart");
        assert_string_equal(next_event(f, g, AGEN_LEASE_REVOKED).reason, "after restart");
        assert_int_equal(next(f, g).status, AGEN_STOP);
        agen_gen_unref(g);
}

static void test_restart_lost(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        next_event(f, g, AGEN_LEASE_GRANTED);

        /* Grace 0: the restarted daemon releases what was not reclaimed at once. */
        restart(f, "0");
        next_event(f, g, AGEN_LEASE_DISCONNECTED);
        Step s = next_event(f, g, AGEN_LEASE_LOST);
        assert_string_equal(s.reason, "not reclaimed after a daemon restart: io.agend.Lease.NoSuchLease");
        assert_int_equal(next(f, g).status, AGEN_STOP);
        assert_int_equal(n_leases(f, "gpu"), 0);
        agen_gen_unref(g);
}

static void test_waiter_and_detached_survive_restart(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", &(agen_lease_opts) { .detached = true });
        agen_gen *b = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, a, AGEN_LEASE_GRANTED);
        next_event(f, b, AGEN_LEASE_QUEUED);

        restart(f, GRACE);
        /* The detached lease is watched again (DISCONNECTED, then RECLAIMED once agend
         * says it is still there), the waiter asks again. */
        next_event(f, a, AGEN_LEASE_DISCONNECTED);
        assert_int_equal(next_event(f, a, AGEN_LEASE_RECLAIMED).ev.token, s.ev.token);
        assert_int_equal(next_event(f, b, AGEN_LEASE_QUEUED).ev.position, 1);
        assert_int_equal(n_leases(f, "gpu"), 1);
        assert_int_equal(agen_gen_close_sync(a), 0);
        assert_ended_by(f, "gpu", s.id, REASON_RELEASE_CALL);
        next_event(f, b, AGEN_LEASE_GRANTED);
        assert_int_equal(agen_gen_close_sync(b), 0);
        agen_gen_unref(a);
        agen_gen_unref(b);
        assert_int_equal(n_leases(f, "gpu"), 0);
}

static void test_no_daemon(void **state) {
        Fixture *f = *state;
        agen_client *c = NULL;
        char path[200];
        snprintf(path, sizeof(path), "%s/nonexistent", f->a->dir);
        assert_int_equal(agen_client_new(f->loop, path, &c), -ENOENT);
        assert_null(c);

        /* The daemon is gone before the first step: the step fails, nothing hangs. */
        int st;
        assert_int_equal(agend_stop(f->a, &st), 0);
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next(f, g);
        assert_true(s.status < 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        agen_gen_unref(g);
        run_for(f, 0.05); /* the control connection's EOF is seen */
        Replies r = {};
        assert_true(agen_client_call(f->client, "io.agend.Lease.Status", NULL, 0, reply_cb, &r) < 0);

        assert_int_equal(agend_start(f->a), 0);
        /* The control connection is reopened on demand. */
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Status", NULL, 0, reply_cb, &r), 0);
        run_until_replies(f, &r, 1);
        assert_int_equal(r.status[0], 0);
        assert_non_null(strstr(r.json[0], "\"boot_id\""));
}

static void test_client_call_pipelined(void **state) {
        Fixture *f = *state;
        Replies r = {};

        /* Calls at once on the control connection; replies in call order. */
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Acquire", "{\"resource\": \"x\"}", 0, reply_cb, &r),
                         0);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Release", "{\"id\": \"nope\"}", 0, reply_cb, &r),
                         0);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Nope", NULL, 0, reply_cb, &r), 0);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Acquire", "{\"resource\": 5}", 0, reply_cb, &r),
                         0);
        assert_int_equal(agen_client_call(f->client, "org.varlink.service.GetInfo", "{}", 0, reply_cb, &r), 0);
        assert_int_equal(r.n, 0); /* never from inside the call */
        run_until_replies(f, &r, 5);
        assert_int_equal(r.status[0], 0);
        assert_non_null(strstr(r.json[0], "\"state\":\"granted\""));
        assert_string_equal(r.error[0], "");
        assert_int_equal(r.status[1], -ENOENT);
        assert_string_equal(r.error[1], "io.agend.Lease.NoSuchLease");
        assert_int_equal(r.status[2], -EOPNOTSUPP);
        assert_int_equal(r.status[3], -EINVAL);
        assert_string_equal(r.error[3], "org.varlink.service.InvalidParameter");
        assert_non_null(strstr(r.json[3], "\"parameter\":\"resource\""));
        assert_int_equal(r.status[4], 0);
        assert_non_null(strstr(r.json[4], "io.agend.Lease"));
        for (unsigned i = 0; i < 5; i++)
                assert_false(r.continues[i]);

        assert_int_equal(agen_client_call(f->client, "x", "[1]", 0, reply_cb, &r), -EINVAL);
        assert_int_equal(agen_client_call(f->client, "x", "{", 0, reply_cb, &r), -EINVAL);
        assert_int_equal(agen_client_call(f->client, "x", "{\"a\":1,}", 0, reply_cb, &r), -EINVAL);
        assert_int_equal(agen_client_call(f->client, "x", NULL, AGEN_CALL_MORE | AGEN_CALL_ONEWAY, reply_cb, &r),
                         -EINVAL);

        /* Oneway: no reply. The lease held by the control connection goes with it. */
        json_object *grant = NULL;
        assert_int_equal(json_parse_buffer(r.json[0], strlen(r.json[0]), &grant), 0);
        char params[128];
        snprintf(params, sizeof(params), "{\"id\": \"%s\"}", jstr(grant, "lease.id"));
        assert_int_equal(n_leases(f, "x"), 1);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Release", params, AGEN_CALL_ONEWAY, reply_cb, &r),
                         0);
        wait_no_leases(f, "x");
        assert_ended_by(f, "x", jstr(grant, "lease.id"), "released by the holder");
        json_object_put(grant);
        run_for(f, 0.05);
        assert_int_equal(r.n, 5);
}

static void test_call_sync(void **state) {
        Fixture *f = *state;
        char *params = NULL, *error = NULL;

        assert_int_equal(agen_call_sync(f->a->socket, "io.agend.Lease.Status", NULL, 0, 5.0, &params, &error), 0);
        assert_non_null(strstr(params, "\"version\""));
        assert_null(error);
        free(params);
        params = NULL;

        assert_int_equal(agen_call_sync(f->a->socket, "io.agend.Lease.Release", "{\"id\":\"nope\"}", 0, 5.0, &params,
                                        &error),
                         -ENOENT);
        assert_string_equal(error, "io.agend.Lease.NoSuchLease");
        assert_non_null(strstr(params, "nope"));
        free(params);
        free(error);

        /* A oneway call returns once written; its effect shows on the daemon. */
        VConn *c = OPEN(f->a);
        json_object *g = GRANT(c, "{\"resource\":\"y\"}");
        char p[160];
        snprintf(p, sizeof(p), "{\"id\":\"%s\",\"secret\":\"%s\"}", jstr(g, "lease.id"), jstr(g, "secret"));
        assert_int_equal(agen_call_sync(f->a->socket, "io.agend.Lease.Release", p, AGEN_CALL_ONEWAY, 5.0, NULL, NULL),
                         0);
        wait_no_leases(f, "y");
        vconn_close(c);

        char path[200];
        snprintf(path, sizeof(path), "%s/nonexistent", f->a->dir);
        assert_int_equal(agen_call_sync(path, "io.agend.Lease.Status", NULL, 0, 1.0, NULL, NULL), -ENOENT);
        assert_int_equal(agen_call_sync(f->a->socket, "x", "[", 0, 1.0, NULL, NULL), -EINVAL);
}

static void test_blocking_api(void **state) {
        Fixture *f = *state;
        agen_client *c = NULL;
        /* No loop of the program's own: the client makes one. */
        assert_int_equal(agen_client_new(NULL, f->a->socket, &c), 0);
        agen_gen *g = agen_lease(c, "gpu", NULL);
        const agen_lease_event *ev = NULL;
        assert_int_equal(agen_gen_next_sync(g, (const void **) &ev), 0);
        assert_int_equal(ev->type, AGEN_LEASE_GRANTED);
        char id[64];
        snprintf(id, sizeof(id), "%s", ev->id);
        assert_int_equal(n_leases(f, "gpu"), 1);
        assert_int_equal(agen_gen_close_sync(g), 0);
        assert_int_equal(n_leases(f, "gpu"), 0);
        assert_ended_by(f, "gpu", id, REASON_RELEASE_CALL);
        agen_gen_unref(g);

        /* The last unref of such a client shuts its loop down, releasing what it holds. */
        g = agen_lease(c, "gpu", NULL);
        assert_int_equal(agen_gen_next_sync(g, (const void **) &ev), 0);
        snprintf(id, sizeof(id), "%s", ev->id);
        agen_client_unref(c);
        assert_int_equal(n_leases(f, "gpu"), 0);
        assert_ended_by(f, "gpu", id, REASON_RELEASE_CALL);
        agen_gen_unref(g);
}

static void test_default_address(void **state) {
        Fixture *f = *state;
        char *a = NULL;

        setenv("AGEND_SOCKET", f->a->socket, 1);
        assert_int_equal(agen_default_address(&a), 0);
        assert_string_equal(a, f->a->socket);
        free(a);
        agen_client *c = NULL;
        assert_int_equal(agen_client_new(f->loop, NULL, &c), 0);
        assert_string_equal(agen_client_get_address(c), f->a->socket);
        assert_ptr_equal(agen_client_get_loop(c), f->loop);
        agen_client_unref(c);

        char path[200];
        snprintf(path, sizeof(path), "%s/nonexistent", f->a->dir);
        setenv("AGEND_SOCKET", path, 1);
        assert_int_equal(agen_client_new(f->loop, NULL, &c), -ENOENT);
        unsetenv("AGEND_SOCKET");
        assert_int_equal(agen_default_address(&a), 0);
        if (geteuid() == 0)
                assert_string_equal(a, "/run/agend/io.agend.Lease");
        free(a);
}

/* The daemon's own words for a failed Acquire, and the one table of error names. */
static void test_acquire_error_reason(void **state) {
        Fixture *f = *state;
        const char *name = NULL, *reason = NULL;

        /* More units than an undeclared resource has (1). */
        agen_gen *big = agen_lease(f->client, "gpu", &(agen_lease_opts) { .units = 2 });
        assert_int_equal(agen_lease_get_error(big, &name, &reason), -ENODATA);
        assert_int_equal(next(f, big).status, -EINVAL);
        assert_int_equal(agen_lease_get_error(big, &name, &reason), 0);
        assert_string_equal(name, "org.varlink.service.InvalidParameter");
        assert_string_equal(reason, "more units than the resource's capacity");

        /* Busy, try once. */
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        next_event(f, a, AGEN_LEASE_GRANTED);
        agen_gen *b = agen_lease(f->client, "gpu", &(agen_lease_opts) { .try_once = true });
        assert_int_equal(next(f, b).status, -ETIMEDOUT);
        assert_int_equal(agen_lease_get_error(b, &name, NULL), 0);
        assert_string_equal(name, "io.agend.Lease.Timeout");
        assert_int_equal(agen_error_from_name(name), -ETIMEDOUT);
        /* Granted: nothing was refused. */
        assert_int_equal(agen_lease_get_error(a, &name, &reason), -ENODATA);
        assert_int_equal(agen_lease_get_error((agen_gen *) NULL, NULL, NULL), -EINVAL);

        assert_string_equal(agen_error_to_name(-ENOENT), "io.agend.Lease.NoSuchLease");
        assert_string_equal(agen_error_to_name(-EINVAL), "org.varlink.service.InvalidParameter");
        assert_null(agen_error_to_name(-EBADF));
        assert_int_equal(agen_error_from_name("io.agend.Lease.NoSuchResource"), -ENXIO);
        assert_int_equal(agen_error_from_name("no.such.Error"), -EPROTO);
        assert_int_equal(agen_error_from_name(NULL), -EPROTO);

        assert_int_equal(agen_gen_close_sync(a), 0);
        agen_gen_unref(a);
        agen_gen_unref(b);
        agen_gen_unref(big);
}

/* A detached lease handed over: the generator lets go of it without releasing it, and
 * whoever has the secret can. A bound lease cannot be handed over. */
static void test_hand_off_detached(void **state) {
        Fixture *f = *state;
        agen_gen *bound = agen_lease(f->client, "bound", NULL);
        next_event(f, bound, AGEN_LEASE_GRANTED);
        char *secret = NULL, *json = NULL;
        assert_int_equal(agen_lease_hand_off(bound, &secret, &json), -EOPNOTSUPP);
        assert_null(secret);

        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .detached = true, .ttl = 60 });
        assert_int_equal(agen_lease_hand_off(g, &secret, NULL), -ENODATA); /* not granted yet */
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        assert_int_equal(agen_lease_hand_off(g, &secret, &json), 0);
        assert_non_null(secret);
        json_object *l = json_tokener_parse(json);
        assert_non_null(l);
        assert_string_equal(jstr(l, "id"), s.id);
        assert_int_equal(jint(l, "token"), (int64_t) s.ev.token);
        assert_true(json_object_get_boolean(jget(l, "detached")));
        json_object_put(l);
        assert_int_equal(agen_lease_get_current(g, NULL, NULL), -ENODATA);
        assert_int_equal(agen_lease_hand_off(g, &secret, NULL), -ENODATA);

        /* Its next step ends it, its close and its end release nothing. */
        assert_int_equal(next(f, g).status, AGEN_STOP);
        assert_int_equal(agen_gen_close_sync(g), 0);
        agen_gen_unref(g);
        run_for(f, 0.1);
        assert_int_equal(n_leases(f, "gpu"), 1);

        /* The secret is the lease's. */
        VConn *c = OPEN(f->a);
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\",\"secret\":\"%s\"}", s.id, secret);
        assert_int_equal(n_leases(f, "gpu"), 0);
        free(secret);
        free(json);
        assert_int_equal(agen_gen_close_sync(bound), 0);
        agen_gen_unref(bound);
}

/* ---- the queue's order across kill -9 (issue 14, item 12) ---- */

#define FIFO_WAITERS 4

/* A waiter process: its own loop, client and lease generator on "fifo"; reports its queue
 * positions on fd ("queued N"), and its grant on the pipe all waiters share ("granted I"),
 * written before it releases: the shared pipe's order is the order of the grants. */
static _noreturn_ void fifo_waiter(const char *socket, int fd, int grants, int i) {
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        agen_client *c = NULL;
        char desc[32];
        snprintf(desc, sizeof(desc), "waiter %d", i);
        if (!loop || agen_client_new(loop, socket, &c) < 0)
                _exit(2);
        agen_gen *g = agen_lease(c, "fifo", &(agen_lease_opts) { .description = desc });
        if (!g)
                _exit(2);
        for (;;) {
                const void *v = NULL;
                int r = agen_gen_next_sync(g, &v);
                const agen_lease_event *ev = v;
                if (r < 0 || r == AGEN_STOP) {
                        dprintf(fd, "error %d\n", r);
                        _exit(1);
                }
                if (ev->type == AGEN_LEASE_QUEUED)
                        dprintf(fd, "queued %u\n", ev->position);
                else if (ev->type == AGEN_LEASE_GRANTED) {
                        dprintf(grants, "granted %d\n", i);
                        r = agen_gen_close_sync(g);
                        _exit(r < 0 ? 3 : 0);
                }
        }
}

/* One line from fd, bounded; fails the test on a timeout or EOF. */
static void read_line(int fd, char *buf, size_t size) {
        size_t n = 0;
        double deadline = helper_now() + GUARD_SEC;
        while (n + 1 < size) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                int ms = (int) ((deadline - helper_now()) * 1000);
                if (ms <= 0 || poll(&p, 1, ms) <= 0)
                        fail_msg("no report from a waiter process within %gs", GUARD_SEC);
                if (read(fd, buf + n, 1) != 1)
                        fail_msg("a waiter process ended without a report");
                if (buf[n] == '\n')
                        break;
                n++;
        }
        buf[n] = 0;
}

static void test_fifo_kept_across_kill9(void **state) {
        Fixture *f = *state;
        pid_t pid[FIFO_WAITERS];
        int fd[FIFO_WAITERS], grants[2];
        char line[64], want[64];

        VConn *h = OPEN(f->a);
        json_object *g = GRANT(h, "{\"resource\":\"fifo\"}");
        char id[64], secret[128];
        snprintf(id, sizeof(id), "%s", jstr(g, "lease.id"));
        snprintf(secret, sizeof(secret), "%s", jstr(g, "secret"));
        int64_t token = jint(g, "lease.token");

        assert_int_equal(pipe2(grants, O_CLOEXEC), 0);
        /* One at a time, so that the queue's order is 0, 1, 2, 3. */
        for (int i = 0; i < FIFO_WAITERS; i++) {
                int p[2];
                assert_int_equal(pipe2(p, O_CLOEXEC), 0);
                pid[i] = fork();
                assert_true(pid[i] >= 0);
                if (pid[i] == 0) {
                        /* Stopped or not, it goes with a test that failed. */
                        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                        close(p[0]);
                        close(grants[0]);
                        fifo_waiter(f->a->socket, p[1], grants[1], i);
                }
                close(p[1]);
                fd[i] = p[0];
                read_line(fd[i], line, sizeof(line));
                snprintf(want, sizeof(want), "queued %d", i + 1);
                assert_string_equal(line, want);
        }

        /* Stopped, they cannot notice agend going away until each is let go: that fixes
         * the order in which they come back. */
        for (int i = 0; i < FIFO_WAITERS; i++)
                assert_int_equal(kill(pid[i], SIGSTOP), 0);
        assert_int_equal(agend_kill(f->a), 0);
        assert_int_equal(agend_start(f->a), 0);

        static const int order[FIFO_WAITERS] = { 3, 1, 0, 2 };
        for (int k = 0; k < FIFO_WAITERS; k++) {
                int i = order[k];
                assert_int_equal(kill(pid[i], SIGCONT), 0);
                /* Back in its own place, whoever came back before it. */
                read_line(fd[i], line, sizeof(line));
                snprintf(want, sizeof(want), "queued %d", i + 1);
                assert_string_equal(line, want);
        }

        VConn *h2 = OPEN(f->a);
        CALL_OK(h2, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", id, (long long) token,
                secret);
        CALL_OK(h2, LEASE_IF "Release", "{\"id\":\"%s\"}", id);

        /* Granted in the original order: each one releases before the next is granted. */
        close(grants[1]);
        for (int i = 0; i < FIFO_WAITERS; i++) {
                read_line(grants[0], line, sizeof(line));
                snprintf(want, sizeof(want), "granted %d", i);
                assert_string_equal(line, want);
        }
        for (int i = 0; i < FIFO_WAITERS; i++) {
                int st;
                assert_int_equal(waitpid(pid[i], &st, 0), pid[i]);
                assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
                close(fd[i]);
        }
        close(grants[0]);
}

int main(void) {
        if (!getenv("AGEND_BINARY")) {
                fprintf(stderr, "AGEND_BINARY not set\n");
                return 77;
        }
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_granted_then_aclose_releases, setup, teardown),
                cmocka_unit_test_setup_teardown(test_queued_positions_then_granted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_try_once_and_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_finalizer_releases, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_releases_all, setup, teardown),
                cmocka_unit_test_setup_teardown(test_abandon_closes_the_connection, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_timeout_while_daemon_stalls, setup, teardown),
                cmocka_unit_test_setup_teardown(test_revoked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_renewed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_expired_when_renewals_stall, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restart_reclaimed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restart_lost, setup, teardown),
                cmocka_unit_test_setup_teardown(test_waiter_and_detached_survive_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fifo_kept_across_kill9, setup, teardown),
                cmocka_unit_test_setup_teardown(test_acquire_error_reason, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hand_off_detached, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_daemon, setup, teardown),
                cmocka_unit_test_setup_teardown(test_client_call_pipelined, setup, teardown),
                cmocka_unit_test_setup_teardown(test_call_sync, setup, teardown),
                cmocka_unit_test_setup_teardown(test_blocking_api, setup, teardown),
                cmocka_unit_test_setup_teardown(test_default_address, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

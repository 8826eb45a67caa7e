/* SPDX-License-Identifier: MIT */
#pragma once

/* The fixture of the tests of the lease generator against the real agend: a daemon
 * (tests/helper-agend.h) on a temporary socket, one per test, a loop with a guard timer and
 * a client; the daemon's own view (List, History) read on raw connections, so a test
 * checks what agend did, not what the client believes it did. Include after <cmocka.h>.
 *
 * Every wait is bounded: the loop by the guard timer, the helper's calls by their
 * timeouts. teardown checks that no live generator, watcher of ours, per-loop state or fd
 * is left, and that agend exits 0 on SIGTERM. */

#include <ev.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "test-fds.h"

#include "agen/agen.h"
#include "gen-internal.h"
#include "helper-agend.h"
#include "json-util.h"

#define GUARD_SEC 20.0
/* Grace of the daemon in the tests that restart it within it. */
#define GRACE "10"

/* The History reasons agend records, which tell how a lease ended. */
/* Release on the control connection, with the secret (root's word counts first). */
#define REASON_RELEASE_CALL (geteuid() == 0 ? "released by root" : "released with the secret")
/* The lease connection closed. */
#define REASON_EOF "connection closed"

typedef struct Fixture {
        Agend *a;
        struct ev_loop *loop;
        agen_client *client;
        unsigned fds;
        ev_timer guard;
        bool guard_fired;
} Fixture;


static inline void guard_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fixture *f = container_of(w, Fixture, guard);
        f->guard_fired = true;
        ev_break(loop, EVBREAK_ALL);
}

static inline int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->fds = count_fds();
        assert_int_equal(agend_new(&f->a), 0);
        snprintf(f->a->grace, sizeof(f->a->grace), "%s", GRACE);
        if (geteuid() != 0) {
                /* Revoke needs root or the configuration's word; give it to us. */
                char text[64];
                snprintf(text, sizeof(text), "[Daemon]\nRevokeUsers=%u\n\n", (unsigned) geteuid());
                FILE *cf = fopen(f->a->config, "ae");
                assert_non_null(cf);
                fputs(text, cf);
                fclose(cf);
        }
        int r = agend_start(f->a);
        if (r < 0) {
                fprintf(stderr, "agend did not start: %s\n", strerror(-r));
                helper_cleanup();
                free(f);
                return -1;
        }
        f->loop = ev_loop_new(EVFLAG_AUTO);
        assert_non_null(f->loop);
        assert_int_equal(agen_client_new(f->loop, f->a->socket, &f->client), 0);
        ev_timer_init(&f->guard, guard_cb, GUARD_SEC, 0.);
        ev_timer_start(f->loop, &f->guard);
        ev_unref(f->loop); /* the guard alone does not keep ev_run() going */
        *state = f;
        return 0;
}

static inline int teardown(void **state) {
        Fixture *f = *state;
        assert_int_equal(agen_loop_shutdown(f->loop, 5.0), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        agen_client_unref(f->client);
        assert_int_equal(gen_loop_state_count(), 0);
        ev_ref(f->loop);
        ev_timer_stop(f->loop, &f->guard);
        assert_false(f->guard_fired);
        /* Nothing of the library is left on the loop. */
        assert_int_equal(ev_run(f->loop, EVRUN_NOWAIT), 0);
        ev_loop_destroy(f->loop);

        int st = 0;
        if (f->a->pid > 0) {
                assert_int_equal(agend_stop(f->a, &st), 0);
                assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        }
        helper_cleanup();
        assert_int_equal(count_fds(), f->fds);
        free(f);
        return 0;
}

/* Runs the loop until *flag, bounded by the guard timer. */
static inline void run_until(Fixture *f, const bool *flag) {
        while (!*flag && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_false(f->guard_fired);
}

static inline void settle_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        *(bool *) w->data = true;
}

/* Runs the loop for sec seconds. */
static inline void run_for(Fixture *f, double sec) {
        bool done = false;
        ev_timer t;
        ev_timer_init(&t, settle_cb, sec, 0.);
        t.data = &done;
        ev_timer_start(f->loop, &t);
        run_until(f, &done);
        ev_timer_stop(f->loop, &t);
}

typedef struct Step {
        bool done;
        int status;
        agen_lease_event ev;
        char id[64], reason[256];
} Step;

static inline void step_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        Step *s = userdata;
        s->done = true;
        s->status = status;
        if (status == 0) {
                s->ev = *(const agen_lease_event *) value;
                snprintf(s->id, sizeof(s->id), "%s", strempty(s->ev.id));
                snprintf(s->reason, sizeof(s->reason), "%s", strempty(s->ev.reason));
                s->ev.id = s->ev.reason = NULL; /* owned by the generator; use the copies */
        }
}

static inline Step next(Fixture *f, agen_gen *g) {
        Step s = {};
        assert_int_equal(agen_gen_anext(g, step_cb, &s), 0);
        run_until(f, &s.done);
        return s;
}

static inline Step next_event(Fixture *f, agen_gen *g, agen_lease_event_type type) {
        Step s = next(f, g);
        if (s.status != 0 || s.ev.type != type)
                fail_msg("expected %s, got status %d event %s (%s)", agen_lease_event_type_to_string(type), s.status,
                         s.status == 0 ? agen_lease_event_type_to_string(s.ev.type) : "-", s.reason);
        return s;
}

typedef struct Closed {
        bool done;
        int status;
} Closed;

static inline void closed_cb(agen_gen *gen, int status, void *userdata) {
        Closed *c = userdata;
        c->done = true;
        c->status = status;
}

/* ---- the daemon's view, on raw connections ---- */

static inline json_object *list(Fixture *f, const char *resource) {
        VConn *c = OPEN(f->a);
        json_object *p = CALL_OK(c, LEASE_IF "List", "{\"resource\":\"%s\"}", resource);
        vconn_close(c);
        return p;
}

static inline size_t n_leases(Fixture *f, const char *resource) {
        return json_object_array_length(jget(list(f, resource), "leases"));
}

static inline size_t n_waiters(Fixture *f, const char *resource) {
        return json_object_array_length(jget(list(f, resource), "waiters"));
}

/* Waits (bounded) until agend holds no lease on resource, running the client's loop too. */
static inline void wait_no_leases(Fixture *f, const char *resource) {
        double deadline = helper_now() + HELPER_REPLY_TIMEOUT;
        while (n_leases(f, resource) > 0) {
                if (helper_now() > deadline)
                        fail_msg("agend still holds a lease on %s: %s", resource, jtext(list(f, resource)));
                ev_run(f->loop, EVRUN_NOWAIT);
                helper_sleep(0.01);
        }
}

/* The reason agend recorded for the event of this type of lease id; NULL if none. */
static inline const char *history_reason(Fixture *f, const char *resource, const char *id, const char *type) {
        VConn *c = OPEN(f->a);
        json_object *events = jget(CALL_OK(c, LEASE_IF "History", "{\"resource\":\"%s\"}", resource), "events");
        vconn_close(c);
        const char *reason = NULL;
        for (size_t i = 0; i < json_object_array_length(events); i++) {
                json_object *e = json_object_array_get_idx(events, i);
                if (streq_ptr(jstr(e, "lease"), id) && streq_ptr(jstr(e, "type"), type))
                        reason = jstr(e, "reason") ?: "";
        }
        return reason;
}

static inline void assert_ended_by(Fixture *f, const char *resource, const char *id, const char *reason) {
        const char *got = history_reason(f, resource, id, "released");
        if (!got || !streq(got, reason))
                fail_msg("lease %s: expected released (\"%s\"), history says %s", id, reason, got ?: "nothing");
}

static inline void revoke_lease(Fixture *f, const char *id, const char *reason) {
        VConn *c = OPEN(f->a);
        CALL_OK(c, LEASE_IF "Revoke", "{\"id\":\"%s\",\"reason\":\"%s\"}", id, reason);
        vconn_close(c);
}


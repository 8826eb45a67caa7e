/* SPDX-License-Identifier: MIT */
/* The lease generator against the real agend, started by the test on a temporary socket
 * and state directory ($AGEND_BINARY, set by meson). Each wait is bounded. */

#include <dirent.h>
#include <ev.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "agen/agen.h"
#include "gen-internal.h"

typedef struct Daemon {
        char dir[64], socket[128];
        pid_t pid;
} Daemon;

static void daemon_start(Daemon *d, const char *grace) {
        const char *bin = getenv("AGEND_BINARY");
        assert_non_null(bin);
        d->pid = fork();
        assert_true(d->pid >= 0);
        if (d->pid == 0) {
                execl(bin, bin, "--socket", d->socket, "--state-dir", d->dir, "--grace", grace, (char *) NULL);
                _exit(127);
        }
        /* Ready once it answers (bounded: 10 s). */
        for (unsigned i = 0; i < 1000; i++) {
                char *reply = NULL;
                if (agen_call_sync(d->socket, "io.agend.Lease.Status", NULL, 0, 1.0, &reply, NULL) == 0) {
                        free(reply);
                        return;
                }
                int st;
                assert_int_equal(waitpid(d->pid, &st, WNOHANG), 0);
                usleep(10000);
        }
        fail_msg("agend did not answer on %s", d->socket);
}

static void daemon_stop(Daemon *d, int sig) {
        if (d->pid <= 0)
                return;
        kill(d->pid, sig);
        int st;
        for (unsigned i = 0; i < 1000; i++) {
                if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
                        d->pid = 0;
                        return;
                }
                usleep(10000);
        }
        kill(d->pid, SIGKILL);
        waitpid(d->pid, &st, 0);
        d->pid = 0;
}

typedef struct Fixture {
        struct ev_loop *loop;
        Daemon d;
        agen_client *client;
        ev_timer guard;
        bool guard_fired;
} Fixture;

static void guard_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fixture *f = container_of(w, Fixture, guard);
        f->guard_fired = true;
        ev_break(loop, EVBREAK_ALL);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        snprintf(f->d.dir, sizeof(f->d.dir), "/tmp/agen-agend-XXXXXX");
        assert_non_null(mkdtemp(f->d.dir));
        snprintf(f->d.socket, sizeof(f->d.socket), "%s/io.agend.Lease", f->d.dir);
        daemon_start(&f->d, "5");
        f->loop = ev_loop_new(EVFLAG_AUTO);
        assert_int_equal(agen_client_new(f->loop, f->d.socket, &f->client), 0);
        ev_timer_init(&f->guard, guard_cb, 20., 0.);
        ev_timer_start(f->loop, &f->guard);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        assert_int_equal(agen_loop_shutdown(f->loop, 5.0), 0);
        agen_client_unref(f->client);
        ev_timer_stop(f->loop, &f->guard);
        assert_false(f->guard_fired);
        assert_int_equal(gen_loop_state_count(), 0);
        ev_loop_destroy(f->loop);
        daemon_stop(&f->d, SIGTERM);
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->d.dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

typedef struct Step {
        bool done;
        int status;
        agen_lease_event ev;
        char id[64], reason[128];
} Step;

static void step_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        Step *s = userdata;
        s->done = true;
        s->status = status;
        if (status == 0) {
                s->ev = *(const agen_lease_event *) value;
                snprintf(s->id, sizeof(s->id), "%s", strempty(s->ev.id));
                snprintf(s->reason, sizeof(s->reason), "%s", strempty(s->ev.reason));
        }
}

static Step next(Fixture *f, agen_gen *g) {
        Step s = {};
        assert_int_equal(agen_gen_anext(g, step_cb, &s), 0);
        while (!s.done && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_false(f->guard_fired);
        return s;
}

/* The next waiter holds the lease: the proof that the first one was released. */
static void assert_next_waiter_granted(Fixture *f, agen_gen *waiter) {
        Step s;
        do
                s = next(f, waiter);
        while (s.status == 0 && s.ev.type == AGEN_LEASE_QUEUED);
        assert_int_equal(s.status, 0);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
}

static void test_acquire_queue_release(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        agen_gen *b = agen_lease(f->client, "gpu", NULL);
        Step s = next(f, a);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        uint64_t token = s.ev.token;
        s = next(f, b);
        assert_int_equal(s.ev.type, AGEN_LEASE_QUEUED);
        assert_int_equal(s.ev.position, 1);

        assert_int_equal(agen_gen_close_sync(a), 0);
        assert_next_waiter_granted(f, b);
        assert_int_equal(agen_gen_close_sync(b), 0);
        agen_gen_unref(a);
        agen_gen_unref(b);
        (void) token;
}

static void test_finalizer_and_shutdown_release(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        agen_gen *b = agen_lease(f->client, "gpu", NULL);
        assert_int_equal(next(f, a).ev.type, AGEN_LEASE_GRANTED);
        assert_int_equal(next(f, b).ev.type, AGEN_LEASE_QUEUED);
        agen_gen_unref(a); /* the finalizer */
        assert_next_waiter_granted(f, b);

        assert_int_equal(agen_loop_shutdown(f->loop, 5.0), 0);
        char *reply = NULL;
        assert_int_equal(agen_call_sync(f->d.socket, "io.agend.Lease.List", "{\"resource\": \"gpu\"}", 0, 5.0,
                                        &reply, NULL), 0);
        assert_non_null(strstr(reply, "\"leases\":[]"));
        free(reply);
        agen_gen_unref(b);
}

static void test_try_once_and_revoke(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        agen_gen *b = agen_lease(f->client, "gpu", &(agen_lease_opts) { .try_once = true });
        Step s = next(f, a);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        assert_int_equal(next(f, b).status, -ETIMEDOUT);

        if (getuid() == 0) {
                char params[128], *reply = NULL;
                snprintf(params, sizeof(params), "{\"id\": \"%s\", \"reason\": \"test\"}", s.id);
                assert_int_equal(agen_call_sync(f->d.socket, "io.agend.Lease.Revoke", params, 0, 5.0, &reply, NULL),
                                 0);
                free(reply);
                s = next(f, a);
                assert_int_equal(s.ev.type, AGEN_LEASE_REVOKED);
                assert_int_equal(next(f, a).status, AGEN_STOP);
        }
        agen_gen_unref(a);
        agen_gen_unref(b);
}

static void test_ttl_renewed(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", &(agen_lease_opts) { .ttl = 0.6 });
        assert_int_equal(next(f, a).ev.type, AGEN_LEASE_GRANTED);
        for (unsigned i = 0; i < 3; i++)
                assert_int_equal(next(f, a).ev.type, AGEN_LEASE_RENEWED);
        assert_int_equal(agen_gen_close_sync(a), 0);
        agen_gen_unref(a);
}

static void test_restart_reclaim(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        Step s = next(f, a);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        uint64_t token = s.ev.token;

        daemon_stop(&f->d, SIGKILL);
        daemon_start(&f->d, "5");
        s = next(f, a);
        assert_int_equal(s.status, 0);
        assert_int_equal(s.ev.type, AGEN_LEASE_RECLAIMED);
        assert_int_equal(s.ev.token, token);
        assert_int_equal(agen_gen_close_sync(a), 0);
        agen_gen_unref(a);
}

int main(void) {
        if (!getenv("AGEND_BINARY")) {
                fprintf(stderr, "AGEND_BINARY not set\n");
                return 77;
        }
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_acquire_queue_release, setup, teardown),
                cmocka_unit_test_setup_teardown(test_finalizer_and_shutdown_release, setup, teardown),
                cmocka_unit_test_setup_teardown(test_try_once_and_revoke, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_renewed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restart_reclaim, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

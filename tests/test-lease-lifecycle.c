/* SPDX-License-Identifier: MIT */
/* How a lease generator ends, against the real agend (issue 13): a waiting step is
 * cancelled by aclose, the finalizer and shutdown and is never granted; a forked child
 * neither releases the parent's lease nor reads its events nor keeps a dead parent's
 * lease alive; a last unref on one thread reaches the loop running on another; no connect
 * blocks the loop; timeouts hold against a stopped daemon; DISCONNECTED comes at once and
 * LOST in bounded time; a release that could not reach agend is retried when it is back.
 *
 * What agend did is read from agend itself (List, History) on raw connections. Waits are
 * bounded by the loop's guard timer or by HELPER_REPLY_TIMEOUT, and a hang (the old
 * behaviour of several of these) by the alarm set in main(). */

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "client-internal.h"
#include "helper-lease.h"

/* A test that hangs fails (SIGALRM) instead of waiting for meson's timeout. */
#define HANG_ALARM_SEC 60

static unsigned history_count(Fixture *f, const char *resource, const char *type) {
        VConn *c = OPEN(f->a);
        json_object *events = jget(CALL_OK(c, LEASE_IF "History", "{\"resource\":\"%s\"}", resource), "events");
        vconn_close(c);
        unsigned n = 0;
        for (size_t i = 0; i < json_object_array_length(events); i++)
                if (streq_ptr(jstr(json_object_array_get_idx(events, i), "type"), type))
                        n++;
        return n;
}

static void wait_no_waiters(Fixture *f, const char *resource) {
        double deadline = helper_now() + HELPER_REPLY_TIMEOUT;
        while (n_waiters(f, resource) > 0) {
                if (helper_now() > deadline)
                        fail_msg("agend still has waiters on %s: %s", resource, jtext(list(f, resource)));
                ev_run(f->loop, EVRUN_NOWAIT);
                helper_sleep(0.01);
        }
}

/* Waits until agend holds no lease on resource, without running the loop (another thread
 * may run it). */
static bool wait_no_leases_quietly(Fixture *f, const char *resource, double timeout) {
        double deadline = helper_now() + timeout;
        while (n_leases(f, resource) > 0) {
                if (helper_now() > deadline)
                        return false;
                helper_sleep(0.01);
        }
        return true;
}

/* A lease generator that waits in the queue: QUEUED seen, a step in progress. */
static agen_gen *waiting_lease(Fixture *f, const char *resource, Step *pending) {
        agen_gen *g = agen_lease(f->client, resource, NULL);
        assert_non_null(g);
        next_event(f, g, AGEN_LEASE_QUEUED);
        *pending = (Step) {};
        assert_int_equal(agen_gen_anext(g, step_cb, pending), 0);
        run_for(f, 0.02);
        assert_false(pending->done);
        return g;
}

static void count_warning(struct ev_loop *loop, agen_gen *gen, void *userdata) {
        (*(unsigned *) userdata)++;
}

/* ---- 1. cancelling a waiting step ---- */

static void test_shutdown_cancels_waiting_steps(void **state) {
        Fixture *f = *state;
        Holder *h = NULL;
        assert_int_equal(holder_start(f->a, "{\"resource\":\"gpu\"}", HELPER_REPLY_TIMEOUT, &h), 0);
        assert_granted(h->reply);

        agen_gen *g[5];
        Step s[5];
        for (unsigned i = 0; i < 5; i++)
                g[i] = waiting_lease(f, "gpu", &s[i]);
        assert_int_equal(n_waiters(f, "gpu"), 5);

        /* Every waiting step is cancelled: no failure, and well before the timeout (the old
         * runtime took the whole second and reported 5). */
        double t0 = helper_now();
        assert_int_equal(agen_loop_shutdown(f->loop, 1.0), 0);
        double took = helper_now() - t0;
        print_message("shutdown with 5 waiting leases: %.2f ms\n", took * 1e3);
        for (unsigned i = 0; i < 5; i++) {
                assert_true(s[i].done);
                assert_int_equal(s[i].status, -ECANCELED);
                assert_int_equal(agen_gen_get_state(g[i]), AGEN_GEN_CLOSED);
                agen_gen_unref(g[i]);
        }
        wait_no_waiters(f, "gpu");

        /* No limit: a waiter behind a holder that never leaves does not hang it. */
        Step one;
        agen_gen *w = waiting_lease(f, "gpu", &one);
        assert_int_equal(agen_loop_shutdown(f->loop, -1), 0);
        assert_int_equal(one.status, -ECANCELED);
        agen_gen_unref(w);
        wait_no_waiters(f, "gpu");
        holder_free(h);
        /* Only the holder was ever granted. */
        assert_int_equal(history_count(f, "gpu", "granted"), 1);
}

static void test_aclose_waiting_is_never_granted(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        next_event(f, a, AGEN_LEASE_GRANTED);
        Step s;
        agen_gen *b = waiting_lease(f, "gpu", &s);

        Closed c = {};
        assert_int_equal(agen_gen_aclose(b, closed_cb, &c), 0);
        run_until(f, &c.done);
        assert_true(s.done);
        assert_int_equal(s.status, -ECANCELED);
        assert_int_equal(c.status, 0);
        wait_no_waiters(f, "gpu");

        /* The holder leaves; nobody is granted after it. */
        assert_int_equal(agen_gen_close_sync(a), 0);
        run_for(f, 0.1);
        assert_int_equal(n_leases(f, "gpu"), 0);
        assert_int_equal(history_count(f, "gpu", "granted"), 1);
        agen_gen_unref(a);
        agen_gen_unref(b);
}

static void test_dropped_waiting_is_never_granted(void **state) {
        Fixture *f = *state;
        unsigned warnings = 0;
        assert_int_equal(agen_loop_set_finalizer_warning(f->loop, count_warning, &warnings), 0);
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        next_event(f, a, AGEN_LEASE_GRANTED);
        Step s;
        agen_gen *b = waiting_lease(f, "gpu", &s);

        /* The program drops it while its step waits: the step is cancelled, the queue left. */
        agen_gen_unref(b);
        run_until(f, &s.done);
        assert_int_equal(s.status, -ECANCELED);
        wait_no_waiters(f, "gpu");
        while (agen_loop_live(f->loop) > 1 && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_int_equal(warnings, 1); /* dropped unclosed: the finalizer closed it */

        assert_int_equal(agen_gen_close_sync(a), 0);
        run_for(f, 0.1);
        assert_int_equal(history_count(f, "gpu", "granted"), 1);
        assert_int_equal(warnings, 1); /* a close asked for is no warning */
        agen_gen_unref(a);
}

static void test_close_sync_on_waiting_step(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        next_event(f, a, AGEN_LEASE_GRANTED);
        Step s;
        agen_gen *b = waiting_lease(f, "gpu", &s);
        assert_int_equal(agen_gen_close_sync(b), 0);
        assert_int_equal(s.status, -ECANCELED);
        wait_no_waiters(f, "gpu");

        /* A bounded wait for the next event of a held lease: cancelled, then released. */
        const void *v = NULL;
        assert_int_equal(agen_gen_next_sync_timeout(a, 0.1, &v), -ETIMEDOUT);
        assert_int_equal(agen_gen_get_state(a), AGEN_GEN_CLOSING);
        while (agen_gen_get_state(a) != AGEN_GEN_CLOSED && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_int_equal(n_leases(f, "gpu"), 0);
        assert_int_equal(history_count(f, "gpu", "granted"), 1);
        agen_gen_unref(a);
        agen_gen_unref(b);
}

/* ---- 3. last unref on another thread than the loop's ---- */

typedef struct Worker {
        struct ev_loop *loop;
        ev_async stop;
        pthread_t thread;
} Worker;

static void worker_stop_cb(struct ev_loop *loop, ev_async *w, int revents) {
        ev_break(loop, EVBREAK_ALL);
}

static void *worker_main(void *userdata) {
        Worker *w = userdata;
        ev_run(w->loop, 0);
        return NULL;
}

static void test_unref_after_loop_moved_to_worker(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.05); /* the Watch is in: the loop now blocks in poll */

        /* The loop moves to a worker thread, which blocks in it. */
        Worker w = { .loop = f->loop };
        ev_async_init(&w.stop, worker_stop_cb);
        ev_async_start(f->loop, &w.stop);
        assert_int_equal(pthread_create(&w.thread, NULL, worker_main, &w), 0);
        helper_sleep(0.05);

        /* The main thread drops the lease: the worker must wake and release it. */
        agen_gen_unref(g);
        bool released = wait_no_leases_quietly(f, "gpu", HELPER_REPLY_TIMEOUT);

        ev_async_send(f->loop, &w.stop);
        assert_int_equal(pthread_join(w.thread, NULL), 0);
        ev_async_stop(f->loop, &w.stop);
        assert_true(released);
        assert_ended_by(f, "gpu", s.id, REASON_RELEASE_CALL);
}

/* ---- 2. fork ---- */

/* The child's checks, without cmocka: 0 = all as expected, else the failed check. */
static int child_checks(Fixture *f, agen_gen *g) {
        const void *v;
        Step s = {};
        if (agen_gen_anext(g, step_cb, &s) != -ECHILD)
                return 10;
        if (agen_gen_aclose(g, NULL, NULL) != -ECHILD)
                return 11;
        if (agen_gen_next_sync(g, &v) != -ECHILD)
                return 12;
        if (agen_gen_close_sync(g) != -ECHILD)
                return 13;
        if (agen_loop_shutdown(f->loop, 1.0) != -ECHILD)
                return 14;
        if (agen_client_call(f->client, "io.agend.Lease.Status", NULL, 0, NULL, NULL) != -ECHILD)
                return 15;
        agen_gen *n = NULL;
        if (agen_lease_new(f->client, "gpu", NULL, &n) != -ECHILD)
                return 16;
        if (agen_loop_set_exception_handler(f->loop, NULL, NULL) != -ECHILD)
                return 17;
        /* Dropping the copies releases nothing. */
        agen_gen_unref(g);
        agen_client_unref(f->client);

        /* The parent's lease is still there, as agend sees it. */
        VConn *c = NULL;
        json_object *reply = NULL;
        if (vconn_open(f->a->socket, &c) < 0 ||
            vconn_call(c, &reply, LEASE_IF "List", "{\"resource\":\"gpu\"}") < 0 || reply_error(reply))
                return 20;
        if (json_object_array_length(jget(reply_params(reply), "leases")) != 1)
                return 21;
        vconn_close(c);
        return 0;
}

static void test_fork_child_is_dead(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.05);

        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(child_checks(f, g));
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                fail_msg("child check failed: wait status 0x%x", st);

        /* Still held, by us; and we still hear its events (the child read none). */
        assert_int_equal(n_leases(f, "gpu"), 1);
        assert_null(history_reason(f, "gpu", s.id, "released"));
        revoke_lease(f, s.id, "after fork");
        assert_string_equal(next_event(f, g, AGEN_LEASE_REVOKED).reason, "after fork");
        assert_int_equal(next(f, g).status, AGEN_STOP);
        agen_gen_unref(g);
}

/* A holder process: takes a lease, forks a child that only sleeps, reports, then waits to
 * be killed. */
static void holder_with_child(const char *socket, int report_fd) {
        agen_client *c = NULL;
        if (agen_client_new(NULL, socket, &c) < 0)
                _exit(1);
        agen_gen *g = agen_lease(c, "gpu", NULL);
        const agen_lease_event *ev = NULL;
        if (agen_gen_next_sync(g, (const void **) &ev) < 0 || ev->type != AGEN_LEASE_GRANTED)
                _exit(2);
        pid_t child = fork();
        if (child < 0)
                _exit(3);
        if (child == 0) {
                /* The forked child: never execs, outlives its parent. */
                for (;;)
                        pause();
        }
        char msg[32];
        int n = snprintf(msg, sizeof(msg), "%d\n", (int) child);
        if (write(report_fd, msg, (size_t) n) != n)
                _exit(4);
        for (;;)
                pause();
}

static void test_fork_child_does_not_keep_dead_parents_lease(void **state) {
        Fixture *f = *state;
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid_t holder = fork();
        assert_true(holder >= 0);
        if (holder == 0) {
                close(p[0]);
                holder_with_child(f->a->socket, p[1]);
        }
        close(p[1]);
        char buf[32] = {};
        ssize_t n = read(p[0], buf, sizeof(buf) - 1);
        close(p[0]);
        assert_true(n > 0);
        pid_t child = atoi(buf);
        assert_true(child > 0);
        assert_int_equal(n_leases(f, "gpu"), 1);

        /* The holder dies; its forked child lives on, and must not keep the lease. */
        assert_int_equal(kill(holder, SIGKILL), 0);
        assert_int_equal(waitpid(holder, NULL, 0), holder);
        bool released = wait_no_leases_quietly(f, "gpu", HELPER_REPLY_TIMEOUT);
        bool child_alive = kill(child, 0) == 0;
        (void) kill(child, SIGKILL);
        assert_true(child_alive);
        assert_true(released);
}

/* ---- 4. no blocking connect; timeouts on the client ---- */

/* A listener that never accepts, its backlog full: connect() would block. */
typedef struct FullListener {
        char path[100]; /* fits sun_path */
        int fd;
        int clients[64];
        unsigned n;
} FullListener;

static void full_listener_open(Fixture *f, FullListener *l) {
        *l = (FullListener) { .fd = -1 };
        snprintf(l->path, sizeof(l->path), "%s/full.sock", f->a->dir);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", l->path);
        l->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(l->fd >= 0);
        assert_int_equal(bind(l->fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(l->fd, 0), 0);
        for (;;) {
                assert_true(l->n < ELEMENTSOF(l->clients));
                int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                assert_true(c >= 0);
                if (connect(c, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                        assert_int_equal(errno, EAGAIN);
                        close(c);
                        break;
                }
                l->clients[l->n++] = c;
        }
}

static void full_listener_close(FullListener *l) {
        for (unsigned i = 0; i < l->n; i++)
                close(l->clients[i]);
        close(l->fd);
        unlink(l->path);
}

static void test_no_blocking_connect(void **state) {
        Fixture *f = *state;
        FullListener l;
        full_listener_open(f, &l);

        /* Each of these blocked for ever in connect(). */
        agen_client *c = NULL;
        assert_int_equal(agen_client_new(f->loop, l.path, &c), 0);
        double t0 = helper_now();
        assert_int_equal(agen_call_sync(l.path, "io.agend.Lease.Status", NULL, 0, 0.3, NULL, NULL), -ETIMEDOUT);
        print_message("agen_call_sync(timeout 0.3) against a full backlog: %.2f s\n", helper_now() - t0);

        /* A lease's first step does not block the loop either: a timer still fires. */
        agen_gen *g = agen_lease(c, "gpu", NULL);
        Step s = {};
        assert_int_equal(agen_gen_anext(g, step_cb, &s), 0);
        run_for(f, 0.1);
        assert_false(s.done);
        assert_int_equal(agen_gen_close_sync(g), 0);
        assert_int_equal(s.status, -ECANCELED);
        agen_gen_unref(g);
        agen_client_unref(c);
        full_listener_close(&l);
}

static void test_timeout_enforced_against_stopped_daemon(void **state) {
        Fixture *f = *state;
        assert_int_equal(kill(f->a->pid, SIGSTOP), 0);
        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .timeout = 0.5 });
        agen_gen *t = agen_lease(f->client, "gpu", &(agen_lease_opts) { .try_once = true });
        Step s = next(f, g);
        Step st = next(f, t);
        assert_int_equal(kill(f->a->pid, SIGCONT), 0);
        assert_int_equal(s.status, -ETIMEDOUT);
        assert_int_equal(st.status, -ETIMEDOUT);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        agen_gen_unref(g);
        agen_gen_unref(t);
        /* Whatever agend granted meanwhile went with the connection. */
        wait_no_leases(f, "gpu");
        wait_no_waiters(f, "gpu");
}

/* ---- 5. the loop's clock ---- */

static void test_shutdown_after_idle_loop(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.05);
        /* The loop sits idle (not run) for a second; its clock is that old. */
        helper_sleep(1.0);
        assert_int_equal(agen_loop_shutdown(f->loop, 0.5), 0);
        assert_ended_by(f, "gpu", s.id, REASON_RELEASE_CALL);
        agen_gen_unref(g);
}

/* ---- 6. losing the daemon ---- */

static void test_disconnected_at_once_lost_bounded(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.05);

        lease_reconnect_window = 1.0;
        assert_int_equal(agend_kill(f->a), 0);
        /* Gone for good. Said at once, with what the holder needs to fence. */
        Step d = next_event(f, g, AGEN_LEASE_DISCONNECTED);
        assert_string_equal(d.id, s.id);
        assert_int_equal(d.ev.token, s.ev.token);
        const char *id = NULL;
        uint64_t token = 0;
        assert_int_equal(agen_lease_get_current(g, &id, &token), 0);
        assert_string_equal(id, s.id);
        /* Then LOST once the reconnect window has passed (here 1 s; 15 s by default). */
        Step l = next_event(f, g, AGEN_LEASE_LOST);
        assert_string_equal(l.reason, "agend unreachable");
        assert_int_equal(next(f, g).status, AGEN_STOP);
        assert_int_equal(agen_lease_get_current(g, NULL, NULL), -ENODATA);
        lease_reconnect_window = 15.0;
        agen_gen_unref(g);
}

static void test_release_retried_after_reconnect(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next_event(f, g, AGEN_LEASE_GRANTED);
        run_for(f, 0.05);

        assert_int_equal(agend_kill(f->a), 0);
        next_event(f, g, AGEN_LEASE_DISCONNECTED);
        /* The close cannot reach agend: it waits and retries... */
        Closed c = {};
        assert_int_equal(agen_gen_aclose(g, closed_cb, &c), 0);
        run_for(f, 0.3);
        assert_false(c.done);
        /* ...and releases as soon as agend is back, not after its grace period. */
        assert_int_equal(agend_start(f->a), 0);
        run_until(f, &c.done);
        assert_int_equal(c.status, 0);
        assert_int_equal(n_leases(f, "gpu"), 0);
        assert_ended_by(f, "gpu", s.id, REASON_RELEASE_CALL);
        agen_gen_unref(g);
}

/* ---- 7. event fields and the getter ---- */

static void test_current_lease_and_event_lifetime(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        assert_int_equal(agen_lease_get_current(g, NULL, NULL), -ENODATA);

        const agen_lease_event *ev = NULL;
        assert_int_equal(agen_gen_next_sync(g, (const void **) &ev), 0);
        assert_int_equal(ev->type, AGEN_LEASE_GRANTED);
        const char *granted_id = ev->id;
        const char *id = NULL;
        uint64_t token = 0;
        assert_int_equal(agen_lease_get_current(g, &id, &token), 0);
        assert_ptr_equal(id, granted_id);
        assert_int_equal(token, ev->token);

        run_for(f, 0.05);
        revoke_lease(f, id, "maintenance");
        assert_int_equal(agen_gen_next_sync(g, (const void **) &ev), 0);
        assert_int_equal(ev->type, AGEN_LEASE_REVOKED);
        const char *reason = ev->reason;
        assert_int_equal(agen_gen_next_sync(g, NULL), AGEN_STOP);
        /* The strings outlive the steps (valgrind/ASan would catch a use after free). */
        assert_string_equal(reason, "maintenance");
        assert_string_equal(granted_id, id);
        assert_int_equal(agen_lease_get_current(g, NULL, NULL), -ENODATA);
        agen_gen_unref(g);
}

int main(void) {
        if (!getenv("AGEND_BINARY")) {
                fprintf(stderr, "AGEND_BINARY not set\n");
                return 77;
        }
        alarm(HANG_ALARM_SEC * 2);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_shutdown_cancels_waiting_steps, setup, teardown),
                cmocka_unit_test_setup_teardown(test_aclose_waiting_is_never_granted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dropped_waiting_is_never_granted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_close_sync_on_waiting_step, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unref_after_loop_moved_to_worker, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fork_child_is_dead, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fork_child_does_not_keep_dead_parents_lease, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_blocking_connect, setup, teardown),
                cmocka_unit_test_setup_teardown(test_timeout_enforced_against_stopped_daemon, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_after_idle_loop, setup, teardown),
                cmocka_unit_test_setup_teardown(test_disconnected_at_once_lost_bounded, setup, teardown),
                cmocka_unit_test_setup_teardown(test_release_retried_after_reconnect, setup, teardown),
                cmocka_unit_test_setup_teardown(test_current_lease_and_event_lifetime, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* Nothing leaves before the commit that makes it true (brief §4, issue 12 item 3): agend
 * runs on the in-memory store (AGEND_TEST_STORE, a build with test hooks) whose Nth commit
 * fails. The batch of that commit is a Release: neither its reply nor the Watch event of it
 * may reach a client, and agend stops. The commit before it (the grant) must deliver both,
 * so the test cannot pass by delivering nothing. A build that writes replies before it
 * commits fails here.
 *
 * Which path a commit takes: the first test's commits are fast and the loop is idle, so
 * they are committed inline on the loop (store_pipe_commit_inline()); the tests with
 * delay-commit make every commit slow (the start-up commit already is), so theirs go
 * through the commit thread, with the loop deciding the next batch meanwhile; the fourth
 * test's failing commit is made on the loop while calls wait (sync=normal). The last test
 * runs on sqlite with every commit held (AGEND_TEST_COMMIT_DELAY): a Status beside a
 * commit in flight must not hold up the loop. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-agend.h"

/* Commits of one run: 1 = the start (the boot id), 2 = the grant, 3 = the release. */
#define STORE_SPEC "memory,fail-commit=3"

/* Starts agend with the test hook name set to value in its environment only. */
static Agend *start_with_hook(const char *name, const char *value) {
        Agend *a = NULL;
        assert_int_equal(setenv(name, value, 1), 0);
        assert_int_equal(agend_new(&a), 0);
        int r = agend_start(a);
        unsetenv(name);
        assert_int_equal(r, 0);
        return a;
}

/* Starts agend on the in-memory store with the faults of spec (AGEND_TEST_STORE). */
static Agend *start_with_store(const char *spec) {
        return start_with_hook("AGEND_TEST_STORE", spec);
}

/* A watcher of resource r (its Watch in effect) and a holder granted a lease on r: the
 * lease's id. */
static const char *watch_and_grant(Agend *a, VConn **ret_watcher, VConn **ret_holder) {
        VConn *watcher = OPEN(a), *holder = OPEN(a);
        assert_int_equal(vconn_send(watcher, VL_MORE, LEASE_IF "Watch", "{\"resource\":\"r\"}"), 0);
        assert_null(reply_error(RECV(watcher, HELPER_REPLY_TIMEOUT)));
        const char *id = jstr(GRANT_LEASE(holder, "{\"resource\":\"r\"}"), "id");
        assert_non_null(id);
        *ret_watcher = watcher;
        *ret_holder = holder;
        return id;
}

/* Reads the watcher until agend closes it; fails on a "released" event: the release's
 * commit failed. */
static void expect_no_release(VConn *watcher) {
        for (;;) {
                json_object *m;
                int r = vconn_recv(watcher, HELPER_START_TIMEOUT, &m);
                if (r == -ECONNRESET)
                        return;
                if (r < 0)
                        fail_msg("agend neither sent nor closed: %s", strerror(-r));
                const char *t = jstr(m, "parameters.event.type");
                if (t && strcmp(t, "released") == 0)
                        fail_msg("a watcher saw the release before its commit (which failed): %s", jtext(m));
        }
}

/* Reads conn until agend closes it; fails on anything but an error (a reply, an event):
 * what the failed commit, or a batch after it, decided. */
static void expect_silence(VConn *c, const char *what) {
        for (;;) {
                json_object *m;
                int r = vconn_recv(c, HELPER_START_TIMEOUT, &m);
                if (r == -ECONNRESET)
                        return;
                if (r < 0)
                        fail_msg("agend neither answered %s nor closed: %s", what, strerror(-r));
                if (!reply_error(m))
                        fail_msg("%s was answered although its commit, or one before it, failed: %s", what,
                                 jtext(m));
        }
}

/* agend exits, and not with 0: it stopped for the failed commit. */
static void expect_failed_exit(Agend *a) {
        int st = 0;
        assert_int_equal(agend_wait_exit(a, HELPER_START_TIMEOUT, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
}

static void test_nothing_before_commit(void **state) {
        Agend *a = start_with_store(STORE_SPEC);
        VConn *watcher, *holder;
        json_object *m;

        /* Commit 2 succeeds: the grant and its event arrive. */
        const char *id = watch_and_grant(a, &watcher, &holder);
        bool granted = false;
        while (!granted) {
                m = RECV(watcher, HELPER_REPLY_TIMEOUT);
                const char *t = jstr(m, "parameters.event.type");
                granted = t && strcmp(t, "granted") == 0;
        }

        /* Commit 3 fails: no reply to the Release, no released event, agend stops. */
        assert_int_equal(vconn_send(holder, 0, LEASE_IF "Release", "{\"id\":\"%s\"}", id), 0);
        expect_silence(holder, "the Release");
        expect_no_release(watcher);
        expect_failed_exit(a);
        _cleanup_free_ char *log = agend_read_log(a);
        if (!log || !strstr(log, "cannot commit"))
                fail_msg("agend did not stop for the failed commit:\n%s", log ? log : "(no log)");
}

/* The pipelined commit (issue 12 item 1): every commit takes 1 s; the third (a Release)
 * fails after its delay. While it is in flight the loop goes on: it reads and decides the
 * calls that arrive meanwhile (an Acquire of another resource; an Acquire of the resource
 * being released, queued behind it), in a later batch. None of them may be
 * answered: they come after a commit that failed. Commit 2 (the grant), delayed too, must
 * answer, so the test cannot pass by answering nothing. */
static void test_delayed_and_failed_commit_holds_later_batches(void **state) {
        Agend *a = start_with_store("memory,fail-commit=3,delay-commit=1000000");

        VConn *holder = OPEN(a), *other = OPEN(a), *next = OPEN(a);
        const char *id = jstr(GRANT_LEASE(holder, "{\"resource\":\"r\"}"), "id");
        assert_non_null(id);

        /* Commit 3: the release, in flight for 1 s, then failing. */
        assert_int_equal(vconn_send(holder, 0, LEASE_IF "Release", "{\"id\":\"%s\"}", id), 0);
        /* Decided while it is in flight, in the next batch (the pause only makes that likely;
         * a slow machine can make the test weaker, never make it fail wrongly). */
        helper_sleep(0.2);
        assert_int_equal(vconn_send(other, 0, LEASE_IF "Acquire", "{\"resource\":\"r2\"}"), 0);
        assert_int_equal(vconn_send(next, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"r\"}"),
                         0);

        expect_silence(holder, "the Release");
        expect_silence(other, "an Acquire decided after the failed batch");
        for (;;) {
                json_object *m;
                int r = vconn_recv(next, HELPER_START_TIMEOUT, &m);
                if (r == -ECONNRESET)
                        break;
                if (r < 0)
                        fail_msg("agend neither answered nor closed: %s", strerror(-r));
                if (!reply_error(m) && jget(m, "parameters.lease"))
                        fail_msg("a grant made possible by the failed release was sent: %s", jtext(m));
        }
        expect_failed_exit(a);
}

/* The classic pipelining mistake: output decided while commit N is in flight must wait
 * for commit N + 1, not go out with N. Every commit takes 1 s; commit 2 (a grant) succeeds,
 * commit 3 fails. An Acquire sent while commit 2 is in flight is decided into batch 3:
 * the grant must arrive, that Acquire's reply never. */
static void test_batch_decided_in_flight_waits_for_its_own_commit(void **state) {
        Agend *a = start_with_store("memory,fail-commit=3,delay-commit=1000000");

        VConn *holder = OPEN(a), *other = OPEN(a);
        assert_int_equal(vconn_send(holder, 0, LEASE_IF "Acquire", "{\"resource\":\"r\"}"), 0);
        /* Commit 2 is in flight for 1 s (the pause only makes that likely, see above). */
        helper_sleep(0.2);
        assert_int_equal(vconn_send(other, 0, LEASE_IF "Acquire", "{\"resource\":\"r2\"}"), 0);

        json_object *m = RECV(holder, HELPER_START_TIMEOUT);
        if (reply_error(m) || !jget(m, "parameters.lease"))
                fail_msg("the grant of commit 2 did not arrive: %s", jtext(m));
        expect_silence(other, "an Acquire decided while commit 2 was in flight (its own commit failed)");
        expect_failed_exit(a);
}

/* With sync=normal the loop also commits a batch itself while calls wait (manager.c,
 * commit_inline()): the same rule must hold there. The holder sends its Release and, in
 * the same write, 64 Status calls, more than one connection may run per loop iteration
 * (VARLINK_CALLS_PER_TURN, 16 in daemon/varlink-server.h): the rest wait for the next
 * turn while the Release's batch is committed on the loop, and that commit (3) fails.
 * Nothing the holder sent may be answered, and the watcher must not see the release. */
static void test_failed_commit_with_calls_waiting(void **state) {
        Agend *a = start_with_store(STORE_SPEC);
        VConn *watcher, *holder;
        const char *id = watch_and_grant(a, &watcher, &holder);

        char buf[4096];
        int n = snprintf(buf, sizeof(buf), "{\"method\":\"" LEASE_IF "Release\",\"parameters\":{\"id\":\"%s\"}}", id);
        assert_true(n > 0);
        size_t len = (size_t) n + 1;    /* each message ends with a NUL */
        for (int i = 0; i < 64; i++) {
                n = snprintf(buf + len, sizeof(buf) - len, "{\"method\":\"" LEASE_IF "Status\",\"parameters\":{}}");
                assert_true(n > 0 && len + (size_t) n + 1 < sizeof(buf));
                len += (size_t) n + 1;
        }
        assert_int_equal(vconn_send_raw(holder, buf, len), 0);

        expect_silence(holder, "the Release or a Status sent behind it");
        expect_no_release(watcher);
        expect_failed_exit(a);
}

/* A Status while a commit is in flight does not hold up agend's loop: its figures (the
 * database's size, the WAL bytes) are read beside the commit, not after it. On the sqlite
 * store with every commit held 800 ms (AGEND_TEST_COMMIT_DELAY; after one slow commit
 * the next go to the commit thread): a lease with a TTL of 0.3 s is decided and its
 * commit goes in flight, then a Status arrives; the lease's
 * expiry must still be decided on time (the event's time within 250 ms of the deadline
 * the grant reported), where a Status waiting for the commit would have kept the loop
 * from it for the rest of the 800 ms. */
static void test_status_beside_commit_in_flight(void **state) {
        Agend *a = start_with_hook("AGEND_TEST_COMMIT_DELAY", "800000");
        VConn *holder = OPEN(a), *status = OPEN(a);
        /* A first commit, slow: the next ones go to the commit thread, not the loop. */
        GRANT(status, "{\"resource\":\"warm-up\"}");
        assert_int_equal(vconn_send(holder, 0, LEASE_IF "Acquire",
                                    "{\"resource\":\"short\",\"detached\":true,\"ttl\":0.3}"),
                         0);
        helper_sleep(0.1);      /* decided, its commit in flight */
        assert_int_equal(vconn_send(status, 0, LEASE_IF "Status", "{}"), 0);

        json_object *grant = RECV(holder, HELPER_REPLY_TIMEOUT);
        assert_null(reply_error(grant));
        int64_t deadline = jint(grant, "parameters.lease.deadline");
        assert_true(deadline > 0);
        assert_null(reply_error(RECV(status, HELPER_REPLY_TIMEOUT)));

        int64_t expired = 0;
        for (double until = helper_now() + 5; !expired && helper_now() < until; helper_sleep(0.05)) {
                json_object *evs = jget(CALL_OK(status, LEASE_IF "History", "{\"resource\":\"short\"}"), "events");
                for (size_t i = 0; i < json_object_array_length(evs); i++) {
                        json_object *ev = json_object_array_get_idx(evs, i);
                        const char *type = jstr(ev, "type");
                        if (type && strcmp(type, "expired") == 0)
                                expired = jint(ev, "time");
                }
        }
        assert_true(expired > 0);
        if (expired - deadline > 250 * 1000)
                fail_msg("the expiry was decided %.0f ms after its deadline: the loop waited for the commit",
                         (double) (expired - deadline) / 1000.0);
}

static int teardown(void **state) {
        helper_cleanup();
        return 0;
}

int main(void) {
#ifndef AGEND_TEST_HOOKS
        fprintf(stderr, "agend built without test hooks (-Dtest_hooks): skipped\n");
        return 77;
#endif
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_nothing_before_commit, teardown),
                cmocka_unit_test_teardown(test_delayed_and_failed_commit_holds_later_batches, teardown),
                cmocka_unit_test_teardown(test_batch_decided_in_flight_waits_for_its_own_commit, teardown),
                cmocka_unit_test_teardown(test_failed_commit_with_calls_waiting, teardown),
                cmocka_unit_test_teardown(test_status_beside_commit_in_flight, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

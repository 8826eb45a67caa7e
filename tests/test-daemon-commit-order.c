/* SPDX-License-Identifier: MIT */
/* Nothing leaves before the commit that makes it true (brief §4, issue 12 item 3): agend
 * runs on the in-memory store (AGEND_TEST_STORE, a build with test hooks) whose Nth commit
 * fails. The batch of that commit is a Release: neither its reply nor the Watch event of it
 * may reach a client, and agend stops. The commit before it (the grant) must deliver both,
 * so the test cannot pass by delivering nothing. A build that writes replies before it
 * commits fails here. */

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

static void test_nothing_before_commit(void **state) {
        Agend *a = NULL;
        assert_int_equal(setenv("AGEND_TEST_STORE", STORE_SPEC, 1), 0);
        assert_int_equal(agend_new(&a), 0);
        int r = agend_start(a);
        unsetenv("AGEND_TEST_STORE");
        assert_int_equal(r, 0);

        VConn *watcher = OPEN(a), *holder = OPEN(a);
        assert_int_equal(vconn_send(watcher, VL_MORE, LEASE_IF "Watch", "{\"resource\":\"r\"}"), 0);
        json_object *m = RECV(watcher, HELPER_REPLY_TIMEOUT); /* in effect */
        assert_null(reply_error(m));

        /* Commit 2 succeeds: the grant and its event arrive. */
        const char *id = jstr(GRANT_LEASE(holder, "{\"resource\":\"r\"}"), "id");
        assert_non_null(id);
        bool granted = false;
        while (!granted) {
                m = RECV(watcher, HELPER_REPLY_TIMEOUT);
                const char *t = jstr(m, "parameters.event.type");
                granted = t && strcmp(t, "granted") == 0;
        }

        /* Commit 3 fails: no reply to the Release, no released event, agend stops. */
        assert_int_equal(vconn_send(holder, 0, LEASE_IF "Release", "{\"id\":\"%s\"}", id), 0);
        for (;;) {
                r = vconn_recv(holder, HELPER_START_TIMEOUT, &m);
                if (r == -ECONNRESET)
                        break;
                if (r < 0)
                        fail_msg("agend neither answered nor closed: %s", strerror(-r));
                if (!reply_error(m))
                        fail_msg("the Release was answered before its commit (which failed): %s", jtext(m));
        }
        for (;;) {
                r = vconn_recv(watcher, HELPER_START_TIMEOUT, &m);
                if (r == -ECONNRESET)
                        break;
                if (r < 0)
                        fail_msg("agend neither sent nor closed: %s", strerror(-r));
                const char *t = jstr(m, "parameters.event.type");
                if (t && strcmp(t, "released") == 0)
                        fail_msg("a watcher saw the release before its commit (which failed): %s", jtext(m));
        }
        int st = 0;
        assert_int_equal(agend_wait_exit(a, HELPER_START_TIMEOUT, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
        _cleanup_free_ char *log = agend_read_log(a);
        if (!log || !strstr(log, "cannot commit"))
                fail_msg("agend did not stop for the failed commit:\n%s", log ? log : "(no log)");
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
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* A reply that cannot be written for lack of memory is an error, never a reply with a
 * member silently missing or null (issue 14, "three JSON-builder styles"). agend runs with
 * AGEND_TEST_WRITER_FAIL (a build with test hooks): its reply writer cannot grow past the
 * inline buffer, so every reply over about 1 KiB fails as if malloc had failed, while small
 * replies still go out (so the test cannot pass by agend answering nothing).
 *
 * - A grant that cannot be written: the caller gets LimitExceeded (limit "memory") and the
 *   connection is closed, so the lease it never heard of is not kept in its name.
 * - A large List or History: LimitExceeded, and the connection goes on. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "helper-agend.h"

static char description[1001];

static void assert_memory_error(json_object *reply) {
        const char *e = reply_error(reply);
        if (!e || strcmp(e, LEASE_IF "LimitExceeded") != 0)
                fail_msg("expected LimitExceeded (out of memory), got %s", jtext(reply));
        assert_string_equal(jstr(reply, "parameters.limit"), "memory");
        assert_non_null(jstr(reply, "parameters.reason"));
}

static void test_reply_that_cannot_be_written(void **state) {
        Agend *a = NULL;
        memset(description, 'd', sizeof(description) - 1);
        assert_int_equal(setenv("AGEND_TEST_WRITER_FAIL", "1", 1), 0);
        assert_int_equal(agend_new(&a), 0);
        int r = agend_start(a);
        unsetenv("AGEND_TEST_WRITER_FAIL");
        assert_int_equal(r, 0);

        /* Small replies are written as usual. */
        VConn *c1 = OPEN(a);
        json_object *p = CALL_OK(c1, LEASE_IF "Status", NULL);
        assert_int_equal(jint(p, "leases"), 0);

        /* The grant (with its 1000-byte description) does not fit: an error, then the
         * connection closes, and with it the lease. */
        json_object *m = CALL(c1, LEASE_IF "Acquire", "{\"resource\":\"r\",\"description\":\"%s\"}", description);
        assert_memory_error(m);
        assert_int_equal(vconn_wait_closed(c1, HELPER_REPLY_TIMEOUT), 0);

        VConn *c2 = OPEN(a);
        json_object *lease = GRANT_LEASE(c2, "{\"resource\":\"r\",\"timeout\":0,\"description\":\"small\"}");
        assert_string_equal(jstr(lease, "description"), "small");
        assert_non_null(jstr(lease, "id"));

        /* A History of a few events is over the inline buffer: an error, and the
         * connection is still there for the next call. */
        for (int i = 0; i < 6; i++) {
                VConn *c = OPEN(a);
                (void) GRANT(c, "{\"resource\":\"h%d\",\"timeout\":0}", i);
                vconn_close(c);
        }
        m = CALL(c2, LEASE_IF "History", "{\"limit\":100}");
        assert_memory_error(m);
        m = CALL(c2, LEASE_IF "History", "{\"resource\":\"r\",\"limit\":1}");
        assert_null(reply_error(m));
        assert_true(jis(m, "parameters.events", json_type_array));
        p = CALL_OK(c2, LEASE_IF "Status", NULL);
        assert_true(jis(p, "leases", json_type_int));
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
                cmocka_unit_test_teardown(test_reply_that_cannot_be_written, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

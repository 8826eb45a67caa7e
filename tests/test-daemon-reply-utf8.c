/* SPDX-License-Identifier: MIT */
/* Replies are valid UTF-8 whatever bytes the daemon's own sources hold. A process name
 * (/proc/PID/comm, which the kernel takes as any bytes) is the one string agend sends that
 * no client gave it: stray bytes in it come out as U+FFFD, so that strict peers (python's
 * json, Go's varlink) can read every Acquire and List reply that names that process. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>

#include <cmocka.h>

#include "helper-agend.h"

/* "bad", two stray bytes, "x": each stray byte becomes U+FFFD (EF BF BD). */
#define COMM_RAW "bad\xff\xfex"
#define COMM_SENT "bad\xef\xbf\xbd\xef\xbf\xbdx"

static void test_process_name_with_stray_bytes(void **state) {
        Agend *a = NULL;
        assert_int_equal(agend_new(&a), 0);
        assert_int_equal(agend_start(a), 0);

        char saved[16] = {};
        assert_int_equal(prctl(PR_GET_NAME, saved), 0);
        assert_int_equal(prctl(PR_SET_NAME, COMM_RAW), 0);
        /* The daemon reads the name when it accepts the connection, which is done by the
         * time the first reply arrives. */
        VConn *c = OPEN(a);
        json_object *lease = GRANT_LEASE(c, "{\"resource\":\"u\"}");
        assert_int_equal(prctl(PR_SET_NAME, saved), 0);
        assert_string_equal(jstr(lease, "owner.comm"), COMM_SENT);

        VConn *other = OPEN(a);
        json_object *p = CALL_OK(other, LEASE_IF "List", "{\"resource\":\"u\"}");
        json_object *leases = jget(p, "leases");
        assert_non_null(leases);
        assert_int_equal(json_object_array_length(leases), 1);
        assert_string_equal(jstr(json_object_array_get_idx(leases, 0), "owner.comm"), COMM_SENT);
}

static int teardown(void **state) {
        helper_cleanup();
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_teardown(test_process_name_with_stray_bytes, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

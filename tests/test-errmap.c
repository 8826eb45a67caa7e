/* SPDX-License-Identifier: MIT */
/* Every row of the error table maps both ways, and every error the interface declares
 * has a row. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errmap.h"
#include "helper-skip.h"

static void test_every_row(void **state) {
        unsigned n = 0;
        int e;
        for (const char *name; (name = errmap_row(n, &e)); n++) {
                assert_true(e < 0);
                /* name -> errno is exact */
                assert_int_equal(errmap_from_name(name), e);
                /* errno -> a name of the same errno (the canonical one) */
                const char *canon = errmap_to_name(e);
                assert_non_null(canon);
                assert_int_equal(errmap_from_name(canon), e);
                /* names are unique */
                for (unsigned j = 0; j < n; j++)
                        assert_string_not_equal(errmap_row(j, NULL), name);
        }
        assert_true(n >= 10);
}

static void test_contract(void **state) {
        /* The names the client library and the tests rely on. */
        assert_int_equal(errmap_from_name("io.agend.Lease.NoSuchLease"), -ENOENT);
        assert_int_equal(errmap_from_name("io.agend.Lease.Timeout"), -ETIMEDOUT);
        assert_int_equal(errmap_from_name("io.agend.Lease.PermissionDenied"), -EPERM);
        assert_int_equal(errmap_from_name("io.agend.Lease.LimitExceeded"), -EUSERS);
        assert_int_equal(errmap_from_name("io.agend.Lease.NoSuchResource"), -ENXIO);
        assert_int_equal(errmap_from_name("io.agend.Lease.ProtocolError"), -EPROTO);
        assert_int_equal(errmap_from_name("org.varlink.service.InvalidParameter"), -EINVAL);
        assert_string_equal(errmap_to_name(-EPERM), "io.agend.Lease.PermissionDenied");
        assert_string_equal(errmap_to_name(-EOPNOTSUPP), "org.varlink.service.MethodNotFound");
        assert_null(errmap_to_name(-EXDEV));
        assert_null(errmap_to_name(0));
        assert_int_equal(errmap_from_name("com.example.Unknown"), -EPROTO);
        assert_int_equal(errmap_from_name(NULL), -EPROTO);
}

static void test_interface_errors(void **state) {
        /* Every "error X" of docs/io.agend.Lease.varlink has a row. */
        const char *path = getenv("AGEND_INTERFACE_FILE");
        if (!path)
                TEST_SKIP("AGEND_INTERFACE_FILE is not set");
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        char line[512];
        unsigned n = 0;
        while (fgets(line, sizeof(line), f)) {
                char name[128];
                if (sscanf(line, "error %127[A-Za-z]", name) != 1)
                        continue;
                char full[160];
                snprintf(full, sizeof(full), "io.agend.Lease.%s", name);
                if (errmap_from_name(full) == -EPROTO && strcmp(name, "ProtocolError") != 0)
                        fail_msg("interface error %s has no errmap row", full);
                n++;
        }
        fclose(f);
        assert_true(n >= 6);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_every_row),
                cmocka_unit_test(test_contract),
                cmocka_unit_test(test_interface_errors),
        };
        return test_exit_code(cmocka_run_group_tests(tests, NULL, NULL));
}

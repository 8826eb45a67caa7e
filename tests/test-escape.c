/* SPDX-License-Identifier: MIT */
/* Quoting client strings for logs and terminals: control bytes escaped, UTF-8 kept,
 * truncation visible and never past the buffer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "escape.h"

static void test_escape(void **state) {
        char buf[64];
        assert_string_equal(cescape_buf("gpu", buf, sizeof(buf)), "gpu");
        assert_string_equal(cescape_buf("", buf, sizeof(buf)), "");
        assert_string_equal(cescape_buf(NULL, buf, sizeof(buf)), "(null)");
        assert_string_equal(cescape_buf("a\nb\tc\\d\"e", buf, sizeof(buf)), "a\\nb\\tc\\\\d\\\"e");
        assert_string_equal(cescape_buf("\x1b[2J\x7f\x01", buf, sizeof(buf)), "\\x1b[2J\\x7f\\x01");
        assert_string_equal(cescape_buf("caf\xc3\xa9", buf, sizeof(buf)), "caf\xc3\xa9");

        char *m = cescape("x\ny");
        assert_string_equal(m, "x\\ny");
        free(m);
        m = cescape("");
        assert_string_equal(m, "");
        free(m);
}

static void test_truncation(void **state) {
        /* Exactly fitting output is not truncated; one byte less is, visibly. */
        char buf[8];
        assert_string_equal(cescape_buf("1234567", buf, 8), "1234567");
        assert_string_equal(cescape_buf("12345678", buf, 8), "1234...");
        /* An escape is never cut in half. */
        assert_string_equal(cescape_buf("1234\n678", buf, 8), "1234...");
        assert_string_equal(cescape_buf("12\n45678", buf, 8), "12\\n...");
        char small[4];
        assert_string_equal(cescape_buf("abcdef", small, 4), "...");
        assert_string_equal(cescape_buf("abc", small, 4), "abc");

        /* Every size from 4 up: NUL-terminated within the buffer, a prefix of the full
         * escape or that prefix followed by "...". */
        const char *in = "a\nb\x01\"c\xc3\xa9 end";
        char *full = cescape(in);
        for (size_t size = 4; size < 40; size++) {
                char *b = malloc(size);
                assert_non_null(b);
                cescape_buf(in, b, size);
                size_t n = strlen(b);
                assert_true(n < size);
                if (strcmp(b, full) != 0) {
                        assert_true(n >= 3);
                        assert_string_equal(b + n - 3, "...");
                        assert_memory_equal(b, full, n - 3);
                }
                free(b);
        }
        assert_true(strlen(full) + 1 < 40);
        free(full);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_escape),
                cmocka_unit_test(test_truncation),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

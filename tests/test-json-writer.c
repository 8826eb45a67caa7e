/* SPDX-License-Identifier: MIT */
/* The daemon's JSON writer (common/json-writer.c): well-formed text, strings escaped and
 * always valid UTF-8, and every failure kept and reported (never a message with a member
 * missing or null), including an allocator that fails. */

#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "json-util.h"
#include "json-writer.h"

/* The text of w, NUL-terminated, for comparisons. */
static const char *text(JsonWriter *w) {
        static char buf[8192];
        assert_true(w->len < sizeof(buf));
        memcpy(buf, w->buf, w->len);
        buf[w->len] = 0;
        return buf;
}

static void test_members(void **state) {
        JsonWriter w;
        jw_init(&w);
        jw_object_begin(&w, NULL);
        jw_string(&w, "s", "x");
        jw_int(&w, "i", -42);
        jw_int(&w, "min", INT64_MIN);
        jw_int(&w, "max", INT64_MAX);
        jw_bool(&w, "t", true);
        jw_bool(&w, "f", false);
        jw_null(&w, "n");
        jw_double(&w, "d1", 0.5);
        jw_double(&w, "d2", 30.0);
        jw_double(&w, "d3", 0.574347);
        jw_object_begin(&w, "o");
        jw_object_end(&w);
        jw_array_begin(&w, "a");
        jw_int(&w, NULL, 1);
        jw_object_begin(&w, NULL);
        jw_string(&w, "k", "v");
        jw_object_end(&w);
        jw_array_begin(&w, NULL);
        jw_array_end(&w);
        jw_array_end(&w);
        jw_raw(&w, "r", "{\"x\":[1]}", 9);
        jw_object_end(&w);
        assert_int_equal(jw_finish(&w), 0);
        assert_string_equal(text(&w), "{\"s\":\"x\",\"i\":-42,\"min\":-9223372036854775808,"
                                      "\"max\":9223372036854775807,\"t\":true,\"f\":false,\"n\":null,"
                                      "\"d1\":0.5,\"d2\":30.0,\"d3\":0.574347,\"o\":{},\"a\":[1,{\"k\":\"v\"},[]],"
                                      "\"r\":{\"x\":[1]}}");
        /* The strict parser the daemon reads with agrees. */
        json_object *o = NULL;
        assert_int_equal(json_parse_buffer(w.buf, w.len, &o), 0);
        json_object_put(o);

        jw_reset(&w);
        jw_array_begin(&w, NULL);
        jw_array_end(&w);
        assert_int_equal(jw_finish(&w), 0);
        assert_string_equal(text(&w), "[]");
        jw_done(&w);
}

static void check_string(const char *in, size_t n, const char *out) {
        JsonWriter w;
        jw_init(&w);
        jw_string_len(&w, NULL, in, n);
        assert_int_equal(jw_finish(&w), 0);
        assert_string_equal(text(&w), out);
        jw_done(&w);
}

static void test_escaping(void **state) {
        check_string("", 0, "\"\"");
        check_string("a\"b\\c/d", 7, "\"a\\\"b\\\\c/d\"");
        check_string("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"");
        check_string("\x01\x1f\x7f", 3, "\"\\u0001\\u001f\x7f\"");
        check_string("a\0b", 3, "\"a\\u0000b\"");
        /* Valid UTF-8 stays as it is: 2, 3 and 4 bytes. */
        check_string("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
        /* Anything else becomes U+FFFD, one per stray byte, and the text stays valid. */
        check_string("a\xff" "b", 3, "\"a\\ufffdb\"");
        check_string("\xc3", 1, "\"\\ufffd\"");                       /* cut short */
        check_string("\xc0\xaf", 2, "\"\\ufffd\\ufffd\"");             /* overlong '/' */
        check_string("\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\"");  /* a surrogate */
        check_string("\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""); /* > U+10FFFF */
        check_string("\xe2\x82" "x", 3, "\"\\ufffd\\ufffdx\"");

        /* Every byte string comes out as JSON that the strict, UTF-8-validating parser
         * takes, and valid strings come back unchanged. */
        unsigned seed = 1;
        for (int round = 0; round < 2000; round++) {
                char in[64];
                size_t n = (size_t) (rand_r(&seed) % sizeof(in));
                for (size_t i = 0; i < n; i++)
                        in[i] = (char) (rand_r(&seed) & 0xff);
                JsonWriter w;
                jw_init(&w);
                jw_array_begin(&w, NULL);
                jw_string_len(&w, NULL, in, n);
                jw_string(&w, NULL, "h\xc3\xa9llo");
                jw_array_end(&w);
                assert_int_equal(jw_finish(&w), 0);
                json_object *o = NULL;
                assert_int_equal(json_parse_buffer(w.buf, w.len, &o), 0);
                assert_string_equal(json_object_get_string(json_object_array_get_idx(o, 1)), "h\xc3\xa9llo");
                json_object_put(o);
                jw_done(&w);
        }
}

static void test_large(void **state) {
        /* Past the inline buffer onto the heap, and the text is all there. */
        char big[5000];
        memset(big, 'x', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        JsonWriter w;
        jw_init(&w);
        jw_array_begin(&w, NULL);
        for (int i = 0; i < 10; i++)
                jw_string(&w, NULL, big);
        jw_array_end(&w);
        assert_int_equal(jw_finish(&w), 0);
        assert_int_equal(w.len, 2 + 10 * (sizeof(big) - 1 + 2) + 9);
        json_object *o = NULL;
        assert_int_equal(json_parse_buffer(w.buf, w.len, &o), 0);
        assert_int_equal(json_object_array_length(o), 10);
        json_object_put(o);
        jw_done(&w);
}

static unsigned allocs_left;
static void *realloc_limited(void *p, size_t n) {
        if (allocs_left == 0)
                return NULL;
        allocs_left--;
        return realloc(p, n);
}

static void test_allocation_failure(void **state) {
        char big[3000];
        memset(big, 'y', sizeof(big) - 1);
        big[sizeof(big) - 1] = 0;
        void *(*saved)(void *, size_t) = jw_realloc;
        jw_realloc = realloc_limited;

        /* No allocation at all: small messages still work (the inline buffer). */
        allocs_left = 0;
        JsonWriter w;
        jw_init(&w);
        jw_object_begin(&w, NULL);
        jw_string(&w, "reason", "out of memory");
        jw_object_end(&w);
        assert_int_equal(jw_finish(&w), 0);

        /* A message that must grow fails, stays failed, and says so at the end: the
         * members after the failure are not written half, nor as null. */
        jw_reset(&w);
        jw_object_begin(&w, NULL);
        jw_string(&w, "a", "before");
        jw_string(&w, "big", big);
        assert_int_equal(w.error, -ENOMEM);
        size_t len = w.len;
        jw_int(&w, "after", 1);
        jw_null(&w, "n");
        jw_object_end(&w);
        assert_int_equal(w.len, len);
        assert_int_equal(jw_finish(&w), -ENOMEM);

        /* A failure on the second growth, in the middle of an array. */
        allocs_left = 1;
        jw_reset(&w);
        jw_array_begin(&w, NULL);
        for (int i = 0; i < 10; i++)
                jw_string(&w, NULL, big);
        jw_array_end(&w);
        assert_int_equal(jw_finish(&w), -ENOMEM);
        jw_done(&w);

        jw_realloc = saved;
}

static void test_misuse(void **state) {
        JsonWriter w;
        jw_init(&w);
        jw_object_begin(&w, NULL);
        jw_string(&w, "s", NULL);
        jw_object_end(&w);
        assert_int_equal(jw_finish(&w), -EINVAL);

        jw_reset(&w);
        jw_object_begin(&w, NULL);
        jw_double(&w, "d", NAN);
        jw_object_end(&w);
        assert_int_equal(jw_finish(&w), -EINVAL);

        jw_reset(&w);
        jw_object_begin(&w, NULL);
        assert_int_equal(jw_finish(&w), -EINVAL);       /* not closed */

        jw_reset(&w);
        jw_object_end(&w);
        assert_int_equal(jw_finish(&w), -EINVAL);       /* closed too often */

        jw_reset(&w);
        for (int i = 0; i < JW_MAX_DEPTH + 1; i++)
                jw_array_begin(&w, NULL);
        assert_int_equal(jw_finish(&w), -E2BIG);
        jw_done(&w);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_members),
                cmocka_unit_test(test_escaping),
                cmocka_unit_test(test_large),
                cmocka_unit_test(test_allocation_failure),
                cmocka_unit_test(test_misuse),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* The JSON helpers: the parser corpus in tests/data (y_*.json must parse, n_*.json must be
 * refused; y_call_* / n_call_* are also checked as varlink calls), and the typed getters
 * that turn bad parameters into InvalidParameter. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "json-util.h"
#include "vl.h"

static const char *data_dir;

static char *read_all(const char *path, size_t *ret_len) {
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        char *buf = NULL;
        size_t size = 0, len = 0;
        for (;;) {
                if (len == size) {
                        size = size ? size * 2 : 4096;
                        buf = realloc(buf, size);
                        assert_non_null(buf);
                }
                size_t n = fread(buf + len, 1, size - len, f);
                if (n == 0)
                        break;
                len += n;
        }
        fclose(f);
        *ret_len = len;
        return buf;
}

static void test_corpus(void **state) {
        DIR *d = opendir(data_dir);
        assert_non_null(d);
        unsigned y = 0, n = 0, calls = 0, failed = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                const char *name = de->d_name;
                size_t l = strlen(name);
                if (l < 6 || strcmp(name + l - 5, ".json") != 0)
                        continue;
                bool must_parse = strncmp(name, "y_", 2) == 0;
                if (!must_parse && strncmp(name, "n_", 2) != 0)
                        continue;
                char path[4096];
                snprintf(path, sizeof(path), "%s/%s", data_dir, name);
                size_t len;
                char *text = read_all(path, &len);
                bool is_call = strncmp(name + 2, "call_", 5) == 0;
                int r;
                if (is_call) {
                        /* Calls are one message each: framing adds the NUL, so the file holds
                         * only the JSON text. */
                        VlCall c;
                        r = vl_call_parse(text, len, &c);
                        if (r >= 0)
                                vl_call_done(&c);
                        calls++;
                } else {
                        json_object *o = NULL;
                        r = json_parse_buffer(text, len, &o);
                        if (r >= 0)
                                json_object_put(o);
                }
                if (must_parse && r < 0) {
                        print_error("%s: must parse, got %s\n", name, strerror(-r));
                        failed++;
                }
                if (!must_parse && r >= 0) {
                        print_error("%s: must be refused, was accepted\n", name);
                        failed++;
                }
                if (must_parse)
                        y++;
                else
                        n++;
                free(text);
        }
        closedir(d);
        assert_int_equal(failed, 0);
        /* The corpus was found and is not trivially small. */
        assert_true(y >= 10);
        assert_true(n >= 10);
        assert_true(calls >= 6);
}

static json_object *parse(const char *s) {
        json_object *o = NULL;
        assert_int_equal(json_parse_buffer(s, strlen(s), &o), 0);
        return o;
}

static void test_getters(void **state) {
        json_object *o = parse("{\"s\":\"gpu\",\"nul\":\"a\\u0000b\",\"e\":\"\",\"i\":5,\"neg\":-1,\"big\":99999999999999999999,"
                               "\"f\":2.5,\"fi\":3.0,\"b\":true,\"n\":null,\"t\":0.000001,\"huge\":1e300}");
        const char *s = "default";
        assert_int_equal(json_get_string(o, "s", 0, &s), 1);
        assert_string_equal(s, "gpu");
        assert_int_equal(json_get_string(o, "nul", 0, &s), -EINVAL);
        assert_int_equal(json_get_string(o, "i", 0, &s), -EINVAL);
        assert_int_equal(json_get_string(o, "e", JSON_NONEMPTY, &s), -EINVAL);
        assert_int_equal(json_get_string(o, "e", 0, &s), 1);
        assert_string_equal(s, "");
        s = "default";
        assert_int_equal(json_get_string(o, "missing", 0, &s), 0);
        assert_string_equal(s, "default");
        assert_int_equal(json_get_string(o, "n", 0, &s), 0);
        assert_int_equal(json_get_string(o, "missing", JSON_REQUIRED, &s), -EINVAL);
        assert_int_equal(json_get_string(o, "n", JSON_REQUIRED, &s), -EINVAL);

        int64_t i = 42;
        assert_int_equal(json_get_int64(o, "i", 0, 1, 10, &i), 1);
        assert_int_equal(i, 5);
        assert_int_equal(json_get_int64(o, "i", 0, 6, 10, &i), -EINVAL);
        assert_int_equal(json_get_int64(o, "neg", 0, 0, 10, &i), -EINVAL);
        assert_int_equal(json_get_int64(o, "big", 0, 0, INT64_MAX - 1, &i), -EINVAL);
        assert_int_equal(json_get_int64(o, "f", 0, 0, 10, &i), -EINVAL);
        assert_int_equal(json_get_int64(o, "fi", 0, 0, 10, &i), 1);
        assert_int_equal(i, 3);
        assert_int_equal(json_get_int64(o, "s", 0, 0, 10, &i), -EINVAL);
        assert_int_equal(json_get_int64(o, "b", 0, 0, 10, &i), -EINVAL);
        unsigned u = 7;
        assert_int_equal(json_get_uint(o, "missing", 0, 1, 10, &u), 0);
        assert_int_equal(u, 7);
        assert_int_equal(json_get_uint(o, "i", 0, 1, 10, &u), 1);
        assert_int_equal(u, 5);

        bool b = false;
        assert_int_equal(json_get_bool(o, "b", 0, &b), 1);
        assert_true(b);
        assert_int_equal(json_get_bool(o, "i", 0, &b), -EINVAL);

        usec_t t = 0;
        assert_int_equal(json_get_seconds(o, "f", 0, &t), 1);
        assert_int_equal(t, 2500000);
        assert_int_equal(json_get_seconds(o, "i", 0, &t), 1);
        assert_int_equal(t, 5000000);
        assert_int_equal(json_get_seconds(o, "t", 0, &t), 1);
        assert_int_equal(t, 1);
        /* Under the resolution: 1 µs, never 0 ("none"); 0 stays 0. */
        json_object *tiny = json_tokener_parse("{\"tiny\":1e-7,\"zero\":0,\"half\":4.9e-7}");
        assert_int_equal(json_get_seconds(tiny, "tiny", 0, &t), 1);
        assert_int_equal(t, 1);
        assert_int_equal(json_get_seconds(tiny, "half", 0, &t), 1);
        assert_int_equal(t, 1);
        assert_int_equal(json_get_seconds(tiny, "zero", 0, &t), 1);
        assert_int_equal(t, 0);
        json_object_put(tiny);
        assert_int_equal(json_get_seconds(o, "neg", 0, &t), -EINVAL);
        assert_int_equal(json_get_seconds(o, "huge", 0, &t), -EINVAL);
        assert_int_equal(json_get_seconds(o, "s", 0, &t), -EINVAL);

        static const char *const allowed[] = { "s", "nul", "e", "i", "neg", "big", "f", "fi", "b", "n", "t", NULL };
        const char *bad = NULL;
        assert_int_equal(json_check_keys(o, allowed, &bad), -EINVAL);
        assert_string_equal(bad, "huge");
        static const char *const all[] = { "s", "nul", "e", "i", "neg", "big", "f", "fi", "b", "n", "t", "huge", NULL };
        assert_int_equal(json_check_keys(o, all, &bad), 0);
        json_object_put(o);

        /* Not an object at all. */
        assert_int_equal(json_get_string(NULL, "s", 0, &s), -EINVAL);
}

static void test_parse_edges(void **state) {
        json_object *o = NULL;
        /* Exactly len bytes: what follows in memory is not looked at. */
        assert_int_equal(json_parse_buffer("{}garbage", 2, &o), 0);
        json_object_put(o);
        assert_int_equal(json_parse_buffer("12", 2, &o), 0);
        assert_int_equal(json_object_get_int(o), 12);
        json_object_put(o);
        assert_int_equal(json_parse_buffer("1 2", 3, &o), -EBADMSG);
        assert_int_equal(json_parse_buffer("", 0, &o), -EBADMSG);
        assert_int_equal(json_parse_buffer("   ", 3, &o), -EBADMSG);
        assert_int_equal(json_parse_buffer("{} \n", 4, &o), 0);
        json_object_put(o);

        /* Nesting deeper than the limit is refused, not a stack overflow. */
        char deep[2001];
        memset(deep, '[', 1000);
        memset(deep + 1000, ']', 1000);
        deep[2000] = 0;
        assert_int_equal(json_parse_buffer(deep, 2000, &o), -EBADMSG);
}

/* A reused parser state carries nothing from one message to the next: a message that
 * fails in the escape after a high surrogate must not change the strings of the next one (json-c's
 * reset keeps the pending surrogate; the daemon reuses one state for every client). */
static void test_reuse_no_carry(void **state) {
        json_tokener *tok = json_parser_new();
        json_object *o = NULL;
        assert_non_null(tok);
        static const char cut[] = "{\"a\":\"\\ud800\\uZ\"}";
        static const char next[] = "{\"a\":\"\\u00e9\\udc00x\"}";
        assert_int_equal(json_parse_buffer_with(tok, cut, strlen(cut), &o), -EBADMSG);
        assert_int_equal(json_parse_buffer_with(tok, next, strlen(next), &o), 0);
        /* é, then the lone low surrogate as U+FFFD, as a fresh state reads it */
        assert_string_equal(json_object_get_string(json_object_object_get(o, "a")), "\xc3\xa9\xef\xbf\xbdx");
        json_object_put(o);
        json_tokener_free(tok);
}

/* The UTF-8 check reads ASCII eight bytes at a time: a bad or multi-byte sequence at any
 * offset, and one cut at the end, is judged as at offset 0. */
static void test_utf8_every_offset(void **state) {
        static const struct {
                const char *seq;
                bool valid;
        } cases[] = {
                { "\xc3\xa9", true },         { "\xe2\x82\xac", true },   { "\xf0\x9f\x98\x80", true },
                { "\xc0\xaf", false },        { "\xed\xa0\x80", false },  { "\xf4\x90\x80\x80", false },
                { "\x80", false },             { "\xff", false },            { "\xc3", false },
                { "\xe2\x82", false },
        };
        char buf[64];
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
                size_t len = strlen(cases[k].seq);
                for (size_t at = 0; at + len <= 40; at++) {
                        memset(buf, 'a', at);
                        memcpy(buf + at, cases[k].seq, len);
                        /* cut at its end, then followed by ASCII */
                        assert_int_equal(json_utf8_valid(buf, at + len), cases[k].valid);
                        memset(buf + at + len, 'b', 20);
                        assert_int_equal(json_utf8_valid(buf, at + len + 20), cases[k].valid);
                }
        }
        memset(buf, 'a', sizeof(buf));
        for (size_t n = 0; n <= sizeof(buf); n++)
                assert_true(json_utf8_valid(buf, n));
}

int main(int argc, char *argv[]) {
        data_dir = argc > 1 ? argv[1] : getenv("AGEND_TEST_DATA");
        if (!data_dir)
                data_dir = "tests/data";
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_corpus),
                cmocka_unit_test(test_getters),
                cmocka_unit_test(test_parse_edges),
                cmocka_unit_test(test_reuse_no_carry),
                cmocka_unit_test(test_utf8_every_offset),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* agenctl's terminal helpers without a daemon or a terminal: durations both ways, display
 * width, ellipsizing, escaping of what users typed, and tables fitted to a width. */

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <locale.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "macro.h"
#include "table.h"

static void test_parse_duration(void **state) {
        static const struct {
                const char *in;
                usec_t out;
        } ok[] = {
                { "0", 0 },
                { "1", USEC_PER_SEC },
                { "1.5", 1500 * USEC_PER_MSEC },
                { "300ms", 300 * USEC_PER_MSEC },
                { "30s", 30 * USEC_PER_SEC },
                { "2min", 120 * USEC_PER_SEC },
                { "2m", 120 * USEC_PER_SEC },
                { "1h", 3600 * USEC_PER_SEC },
                { "1d", 86400 * USEC_PER_SEC },
                { "1min 30s", 90 * USEC_PER_SEC },
                { "1min30s", 90 * USEC_PER_SEC },
                { " 5s", 5 * USEC_PER_SEC },
                { "infinity", USEC_INFINITY },
        };
        static const char *const bad[] = { "", "s", "-1", "1x", "1min 30", "abc", "1e3", "nan", "1 2" };
        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                usec_t u = 1;
                if (parse_duration(ok[i].in, &u) < 0 || u != ok[i].out)
                        fail_msg("parse_duration(\"%s\") = %llu, expected %llu", ok[i].in, (unsigned long long) u,
                                 (unsigned long long) ok[i].out);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                usec_t u = 12345;
                if (parse_duration(bad[i], &u) >= 0)
                        fail_msg("parse_duration(\"%s\") accepted", bad[i]);
                assert_int_equal(u, 12345); /* untouched */
        }
        unsigned v = 0;
        assert_int_equal(parse_unsigned("3", 10, &v), 0);
        assert_int_equal(v, 3);
        assert_true(parse_unsigned("0", 10, &v) < 0);
        assert_true(parse_unsigned("11", 10, &v) < 0);
        assert_true(parse_unsigned("-1", 10, &v) < 0);
        assert_true(parse_unsigned("1a", 10, &v) < 0);
}

static void test_format_timespan(void **state) {
        char buf[FORMAT_TIMESPAN_MAX];
        assert_string_equal(format_timespan(buf, sizeof(buf), 0), "0");
        assert_string_equal(format_timespan(buf, sizeof(buf), 350 * USEC_PER_MSEC), "350ms");
        assert_string_equal(format_timespan(buf, sizeof(buf), 12 * USEC_PER_SEC + 400 * USEC_PER_MSEC), "12s");
        assert_string_equal(format_timespan(buf, sizeof(buf), 303 * USEC_PER_SEC), "5min 3s");
        assert_string_equal(format_timespan(buf, sizeof(buf), 3600 * USEC_PER_SEC + 5 * USEC_PER_SEC), "1h 5s");
        assert_string_equal(format_timespan(buf, sizeof(buf), (2 * 3600 + 10 * 60 + 7) * USEC_PER_SEC), "2h 10min");
        assert_string_equal(format_timespan(buf, sizeof(buf), (3 * 86400 + 4 * 3600) * USEC_PER_SEC), "3d 4h");
        assert_string_equal(format_timespan(buf, sizeof(buf), USEC_INFINITY), "infinity");

        char b[FORMAT_BYTES_MAX];
        assert_string_equal(format_bytes(b, sizeof(b), 512), "512B");
        assert_string_equal(format_bytes(b, sizeof(b), 45363), "44.3K");
        assert_string_equal(format_bytes(b, sizeof(b), 3 * 1024 * 1024), "3.0M");
}

static void test_escape_and_width(void **state) {
        char *e = escape_display("ok\033[31mred\n\ttab\x7f");
        assert_string_equal(e, "ok\\x1b[31mred\\n\\ttab\\x7f");
        free(e);
        e = escape_display("grüße");
        assert_string_equal(e, "grüße");
        assert_int_equal(display_width(e), 5);
        free(e);
        e = escape_display("bad\xff byte");
        assert_string_equal(e, "bad\\xff byte");
        free(e);
        assert_int_equal(display_width("日本"), 4); /* wide characters: two cells each */
        assert_null(escape_display(NULL));
}

static void test_ellipsize(void **state) {
        char *s = ellipsize("short", 10);
        assert_string_equal(s, "short");
        free(s);
        s = ellipsize("a longer text", 8);
        assert_string_equal(s, "a longe…");
        assert_int_equal(display_width(s), 8);
        free(s);
        s = ellipsize("grüße aus", 4);
        assert_string_equal(s, "grü…");
        free(s);
        s = ellipsize("日本語のテキスト", 5); /* a wide character never straddles the cut */
        assert_string_equal(s, "日本…");
        assert_true(display_width(s) <= 5);
        free(s);
        s = ellipsize("abc", 1);
        assert_int_equal(display_width(s), 1);
        free(s);
        s = ellipsize("abc", 0);
        assert_string_equal(s, "");
        free(s);
}

/* Prints t to a string. */
static char *print_table(Table *t, size_t width, bool header) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        assert_non_null(f);
        assert_int_equal(table_print(t, f, width, header), 0);
        fclose(f);
        return buf;
}

static void test_table(void **state) {
        static const char *const headers[] = { "ID", "N", "DESCRIPTION" };
        Table *t = table_new(3, headers);
        assert_non_null(t);
        table_set_align_right(t, 1);
        table_set_shrink(t, 2, 0, 5);
        assert_int_equal(table_add_cell(t, "abcdef", NULL), 0);
        assert_int_equal(table_add_cellf(t, NULL, "%d", 7), 0);
        assert_int_equal(table_add_cell(t, "a long description that will not fit", NULL), 0);
        assert_int_equal(table_add_cell(t, "x", NULL), 0);
        assert_int_equal(table_add_cellf(t, NULL, "%d", 12345), 0);
        assert_int_equal(table_add_cell(t, NULL, NULL), 0);
        assert_int_equal(table_rows(t), 2);

        /* Unlimited: natural widths, right alignment, no trailing blanks, NULL is "-". */
        char *s = print_table(t, 0, true);
        assert_string_equal(s, "ID         N DESCRIPTION\n"
                               "abcdef     7 a long description that will not fit\n"
                               "x      12345 -\n");
        free(s);

        /* 25 cells: the description gives way, the rest keeps its width. */
        s = print_table(t, 25, true);
        assert_string_equal(s, "ID         N DESCRIPTION\n"
                               "abcdef     7 a long desc…\n"
                               "x      12345 -\n");
        free(s);

        /* Narrower than the minimum: below it to the floor of 3 cells; what does not
         * shrink stays, and the line stays too long. */
        s = print_table(t, 10, false);
        assert_string_equal(s, "abcdef     7 a…\n"
                               "x      12345 -\n");
        free(s);
        table_free(t);

        /* Control characters in cells are shown escaped, never sent to the terminal. */
        static const char *const h2[] = { "A" };
        t = table_new(1, h2);
        table_add_cell(t, "evil\033]0;title\007", NULL);
        s = print_table(t, 0, false);
        assert_string_equal(s, "evil\\x1b]0;title\\x07\n");
        assert_null(strchr(s, '\033'));
        free(s);
        table_free(t);
}

static void test_columns(void **state) {
        setenv("COLUMNS", "93", 1);
        assert_int_equal(columns(), 93);
        setenv("COLUMNS", "junk", 1);
        unsetenv("COLUMNS");
        /* Standard output of a test is not a terminal: unlimited. */
        if (!isatty(STDOUT_FILENO))
                assert_int_equal(columns(), 0);

        setenv("NO_COLOR", "1", 1);
        colors_reset_cache();
        assert_false(colors_enabled());
        assert_string_equal(ansi(ANSI_BOLD), "");
        unsetenv("NO_COLOR");
        colors_reset_cache();
        assert_int_equal(colors_enabled(), isatty(STDOUT_FILENO) > 0);
}

int main(void) {
        /* The tests assume UTF-8; C.UTF-8 is built into glibc. */
        if (!setlocale(LC_ALL, "C.UTF-8")) {
                fprintf(stderr, "no C.UTF-8 locale\n");
                return 77;
        }
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_duration),
                cmocka_unit_test(test_format_timespan),
                cmocka_unit_test(test_escape_and_width),
                cmocka_unit_test(test_ellipsize),
                cmocka_unit_test(test_table),
                cmocka_unit_test(test_columns),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* The one duration grammar (base/duration.h): what parses, to what, and what is refused.
 * agend.conf, agend --grace and agenctl all read durations with it. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "duration.h"
#include "macro.h"

#define S USEC_PER_SEC
#define MS USEC_PER_MSEC

static void test_valid(void **state) {
        static const struct {
                const char *text;
                usec_t usec;
        } cases[] = {
                { "0", 0 },
                { "30", 30 * S },                       /* a bare number is seconds */
                { "1.5", 1500 * MS },
                { ".5", 500 * MS },
                { "30s", 30 * S },
                { "30 s", 30 * S },
                { "  30sec", 30 * S },
                { "2second", 2 * S },
                { "2seconds", 2 * S },
                { "500ms", 500 * MS },
                { "500msec", 500 * MS },
                { "7us", 7 },
                { "7usec", 7 },
                { "2m", 120 * S },
                { "2min", 120 * S },
                { "1minute", 60 * S },
                { "3minutes", 180 * S },
                { "1h", 3600 * S },
                { "2hours", 7200 * S },
                { "1hour", 3600 * S },
                { "1d", 86400 * S },
                { "2days", 2 * 86400 * S },
                { "1day", 86400 * S },
                { "1min 30s", 90 * S },
                { "1min30s", 90 * S },
                { "1h 1m 1s 1ms 1us", 3661 * S + MS + 1 },
                { "1.5h", 5400 * S },
                { "infinity", USEC_INFINITY },
                { "  infinity", USEC_INFINITY },
                { "0.0000001", 1 },                     /* positive never becomes 0 */
                { "0s", 0 },
                { "0.0000004s", 1 },
                { "0.0000006s", 1 },
                { "0.0000016s", 2 },                    /* nearest µs */
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                usec_t u = 12345;
                int r = parse_duration(cases[i].text, &u);
                if (r < 0 || u != cases[i].usec)
                        fail_msg("\"%s\": got %d, %llu; expected %llu", cases[i].text, r, (unsigned long long) u,
                                 (unsigned long long) cases[i].usec);
        }
}

static void test_invalid(void **state) {
        static const char *const cases[] = {
                "",        " ",      "s",        "-1",       "+1",    "1e3",   "0x10",  "nan",
                "inf",     "1..5",   "1.5.2",    "30 1min",  "1min 30", "30x", "1 fortnight", "1ss",
                "1 s s",   "infinity s", "1mins", "30s,",  "1,5s",  "- 1",   "1\t s",
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                usec_t u = 12345;
                int r = parse_duration(cases[i], &u);
                if (r >= 0)
                        fail_msg("\"%s\" parsed as %llu", cases[i], (unsigned long long) u);
                assert_int_equal(u, 12345); /* untouched on error */
        }
        usec_t u = 0;
        assert_int_equal(parse_duration(NULL, &u), -EINVAL);
}

static void test_range(void **state) {
        usec_t u = 0;
        /* About 292 000 years fit; a million years does not. */
        assert_int_equal(parse_duration("100000000d", &u), 0);
        assert_int_equal(u, 100000000ULL * 86400 * S);
        assert_int_equal(parse_duration("365000000d", &u), -ERANGE);
        assert_int_equal(parse_duration("123456789012345678901234567890", &u), -ERANGE);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_valid),
                cmocka_unit_test(test_invalid),
                cmocka_unit_test(test_range),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* The call scanner (common/vl-scan.c) and the parameter list (common/vl-params.c).
 *
 * The contract: a message the scanner reads gives the call and parameter list json-c's
 * path gives; anything else it leaves to json-c (0). Each case below says which of the
 * two it expects, and every case (and the whole JSON corpus in tests/data) is checked
 * against json-c member by member. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"
#include "vl-scan.h"
#include "vl.h"

static VlScanner scanner;
static json_tokener *tok;

static void assert_same_list(const VlParams *a, const VlParams *b) {
        assert_int_equal(a->n, b->n);
        for (size_t i = 0; i < a->n; i++) {
                const VlParam *x = &a->items[i], *y = &b->items[i];
                assert_string_equal(x->key, y->key);
                assert_int_equal(x->kind, y->kind);
                switch (x->kind) {
                case VL_PARAM_BOOL:
                        assert_int_equal(x->b, y->b);
                        break;
                case VL_PARAM_INT:
                        assert_true(x->i == y->i);
                        assert_memory_equal(&x->d, &y->d, sizeof(double));
                        break;
                case VL_PARAM_DOUBLE:
                        assert_memory_equal(&x->d, &y->d, sizeof(double));
                        break;
                case VL_PARAM_STRING:
                        assert_int_equal(x->len, y->len);
                        assert_memory_equal(x->s, y->s, x->len);
                        assert_int_equal(x->s[x->len], 0);
                        break;
                default:
                        break;
                }
        }
}

/* Reads msg as the daemon does (the scanner, else json-c); returns 1 if the scanner read
 * it, 0 if json-c did, json-c's error otherwise. When the scanner read it, json-c must
 * read it too, as the same call. *ret stays valid until the next read. */
static VlCall fallback;
static int read_call(const char *msg, size_t len, VlScannedCall *ret) {
        VlScannedCall a;
        int r = vl_scan_call(&scanner, msg, len, &a);
        assert_true(r == 0 || r == 1);

        vl_call_done(&fallback);
        int k = vl_call_parse_with(tok, msg, len, &fallback);
        if (r == 1) {
                if (k != 0)
                        fail_msg("scanned, but json-c says %d: %.*s", k, (int) len, msg);
                VlParams tree = {};
                assert_int_equal(vl_params_from_json(&tree, fallback.parameters), 0);
                assert_string_equal(a.method, fallback.method);
                assert_int_equal(a.more, fallback.more);
                assert_int_equal(a.oneway, fallback.oneway);
                assert_same_list(a.parameters, &tree);
                vl_params_done(&tree);
                *ret = a;
                return 1;
        }
        if (k < 0)
                return k;
        assert_int_equal(vl_scan_call_from_json(&scanner, &fallback, ret), 0);
        return 0;
}

static int read_str(const char *msg, VlScannedCall *ret) {
        return read_call(msg, strlen(msg), ret);
}

#define CALL_PREFIX "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":"

/* Reads CALL_PREFIX params "}"; asserts who read it; returns the list. */
static const VlParams *params_of(const char *params, int expect) {
        char msg[4096];
        VlScannedCall c;
        snprintf(msg, sizeof(msg), CALL_PREFIX "%s}", params);
        int r = read_str(msg, &c);
        if (r != expect)
                fail_msg("%s: read by %d, expected %d", msg, r, expect);
        return c.parameters;
}

static void test_plain_call(void **state) {
        VlScannedCall c;
        assert_int_equal(read_str(" {\"method\" : \"io.agend.Lease.Acquire\",\r\n\t\"parameters\":{\"resource\":\"gpu\","
                                  "\"units\":2,\"exclusive\":true,\"timeout\":1.5,\"ttl\":30,\"description\":null},"
                                  "\"more\":true} \n",
                                  &c),
                         1);
        assert_string_equal(c.method, "io.agend.Lease.Acquire");
        assert_true(c.more);
        assert_false(c.oneway);
        const char *s = NULL;
        int64_t i = 0;
        bool b = false;
        usec_t u = 0;
        assert_int_equal(vl_param_string(c.parameters, "resource", JSON_REQUIRED, &s), 1);
        assert_string_equal(s, "gpu");
        assert_int_equal(vl_param_int64(c.parameters, "units", 0, 1, 10, &i), 1);
        assert_int_equal(i, 2);
        assert_int_equal(vl_param_bool(c.parameters, "exclusive", 0, &b), 1);
        assert_true(b);
        assert_int_equal(vl_param_seconds(c.parameters, "timeout", 0, &u), 1);
        assert_int_equal(u, 1500000);
        assert_int_equal(vl_param_seconds(c.parameters, "ttl", 0, &u), 1);
        assert_int_equal(u, 30000000);
        /* null is absent: the default stays */
        s = "default";
        assert_int_equal(vl_param_string(c.parameters, "description", 0, &s), 0);
        assert_string_equal(s, "default");
        assert_int_equal(vl_param_string(c.parameters, "description", JSON_REQUIRED, &s), -EINVAL);
        assert_int_equal(vl_param_string(c.parameters, "nothing", 0, &s), 0);

        static const char *const allowed[] = { "resource", "units", "exclusive", "timeout", "ttl", NULL };
        const char *unknown = NULL;
        assert_int_equal(vl_params_check_keys(c.parameters, allowed, &unknown), -EINVAL);
        assert_string_equal(unknown, "description");

        /* No parameters, null parameters, flags null or false. */
        assert_int_equal(read_str("{\"method\":\"a.B\"}", &c), 1);
        assert_int_equal(c.parameters->n, 0);
        assert_int_equal(read_str("{\"parameters\":null,\"method\":\"a.B\",\"more\":null,\"oneway\":true,"
                                  "\"upgrade\":false,\"other\":{\"x\":[1,2,{}]}}",
                                  &c),
                         1);
        assert_int_equal(c.parameters->n, 0);
        assert_false(c.more);
        assert_true(c.oneway);
}

static void test_strings(void **state) {
        const VlParams *p = params_of("{\"resource\":\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\u20ac\\u0041\\u0001\"}", 1);
        const char *s = NULL;
        assert_int_equal(vl_param_string(p, "resource", 0, &s), 1);
        assert_string_equal(s, "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xe2\x82\xac" "A\x01");
        /* An escaped key is the same key. */
        p = params_of("{\"\\u0072esource\":\"x\"}", 1);
        assert_int_equal(vl_param_string(p, "resource", 0, &s), 1);

        /* \u0000: json-c keeps it, and the getter refuses the value. */
        p = params_of("{\"resource\":\"gp\\u0000u\"}", 0);
        assert_int_equal(vl_param_string(p, "resource", 0, &s), -EINVAL);
        /* In a key json-c cuts the key at it. */
        p = params_of("{\"units\\u0000zz\":3}", 0);
        int64_t i = 0;
        assert_int_equal(vl_param_int64(p, "units", 0, 1, 10, &i), 1);
        assert_int_equal(i, 3);
        /* Surrogates: a pair is one character, a lone one U+FFFD (json-c's way). */
        p = params_of("{\"resource\":\"\\ud83d\\ude00\"}", 0);
        assert_int_equal(vl_param_string(p, "resource", 0, &s), 1);
        assert_string_equal(s, "\xf0\x9f\x98\x80");
        p = params_of("{\"resource\":\"\\udc00\"}", 0);
        assert_int_equal(vl_param_string(p, "resource", 0, &s), 1);
        assert_string_equal(s, "\xef\xbf\xbd");
        /* A raw control character: json-c takes it. */
        p = params_of("{\"resource\":\"a\tb\"}", 0);
        assert_int_equal(vl_param_string(p, "resource", 0, &s), 1);
        assert_string_equal(s, "a\tb");
        /* UTF-8 as it should be is read; stray or overlong bytes are json-c's error. */
        p = params_of("{\"resource\":\"caf\xc3\xa9 \xf0\x9f\x98\x80\"}", 1);
        VlScannedCall c;
        assert_int_equal(read_str(CALL_PREFIX "{\"resource\":\"\xc0\xaf\"}}", &c), -EBADMSG);
        assert_int_equal(read_str(CALL_PREFIX "{\"resource\":\"\xff\"}}", &c), -EBADMSG);
        assert_int_equal(read_str(CALL_PREFIX "{\"resource\":\"\\x\"}}", &c), -EBADMSG);
        assert_int_equal(read_str(CALL_PREFIX "{\"resource\":\"\\u12\"}}", &c), -EBADMSG);
        assert_int_equal(read_str(CALL_PREFIX "{\"resource\":\"abc}}", &c), -EBADMSG);
        /* The method with \u0000 is not a method. */
        assert_int_equal(read_str("{\"method\":\"a.B\\u0000\"}", &c), -EPROTO);
}

static void test_numbers(void **state) {
        static const struct {
                const char *text;
                int by;                 /* 1 scanner, 0 json-c */
                VlParamKind kind;
                int64_t i;              /* INT */
                double d;
        } cases[] = {
                { "0", 1, VL_PARAM_INT, 0, 0 },
                { "-0", 1, VL_PARAM_INT, 0, 0 },
                { "42", 1, VL_PARAM_INT, 42, 42 },
                { "-7", 1, VL_PARAM_INT, -7, -7 },
                { "9223372036854775807", 1, VL_PARAM_INT, INT64_MAX, 9223372036854775807.0 },
                /* Past int64: json-c's uint64, then saturated; past uint64, saturated too. */
                { "9223372036854775808", 1, VL_PARAM_INT, INT64_MAX, 9223372036854775808.0 },
                { "99999999999999999999", 1, VL_PARAM_INT, INT64_MAX, 18446744073709551615.0 },
                { "-99999999999999999999", 1, VL_PARAM_INT, INT64_MIN, -9223372036854775808.0 },
                { "1.5", 1, VL_PARAM_DOUBLE, 0, 1.5 },
                { "2.0", 1, VL_PARAM_DOUBLE, 0, 2.0 },
                { "-1E+2", 1, VL_PARAM_DOUBLE, 0, -100 },
                { "1e-3", 1, VL_PARAM_DOUBLE, 0, 0.001 },
                { "1e400", 1, VL_PARAM_DOUBLE, 0, INFINITY },
                /* Outside the RFC grammar: whatever json-c makes of it. */
                { "-01", 0, VL_PARAM_INT, -1, -1 },
                { "00", 0, VL_PARAM_INT, 0, 0 },
                { "1.", 0, VL_PARAM_DOUBLE, 0, 1.0 },
                { "-.5", 0, VL_PARAM_DOUBLE, 0, -0.5 },
                { "1.e5", 0, VL_PARAM_DOUBLE, 0, 1e5 },
                { "NaN", 0, VL_PARAM_DOUBLE, 0, NAN },
                { "Infinity", 0, VL_PARAM_DOUBLE, 0, INFINITY },
                { "-Infinity", 0, VL_PARAM_DOUBLE, 0, -INFINITY },
                /* Longer than the scanner copies: json-c's. */
                { "1.000000000000000000000000000000000000000000000000000000000000000000001", 0, VL_PARAM_DOUBLE, 0,
                  1.0 },
        };
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
                char params[256];
                snprintf(params, sizeof(params), "{\"units\":%s}", cases[k].text);
                const VlParams *p = params_of(params, cases[k].by);
                assert_int_equal(p->n, 1);
                assert_int_equal(p->items[0].kind, cases[k].kind);
                if (cases[k].kind == VL_PARAM_INT)
                        assert_true(p->items[0].i == cases[k].i);
                if (isnan(cases[k].d))
                        assert_true(isnan(p->items[0].d));
                else
                        assert_true(p->items[0].d == cases[k].d);
        }
        /* What the getters make of them. */
        int64_t i = 0;
        usec_t u = 0;
        assert_int_equal(vl_param_int64(params_of("{\"units\":2.0}", 1), "units", 0, 1, 10, &i), 1);
        assert_int_equal(i, 2);
        assert_int_equal(vl_param_int64(params_of("{\"units\":1.5}", 1), "units", 0, 1, 10, &i), -EINVAL);
        assert_int_equal(vl_param_int64(params_of("{\"units\":-1}", 1), "units", 0, 1, 10, &i), -EINVAL);
        assert_int_equal(vl_param_int64(params_of("{\"units\":1e400}", 1), "units", 0, 1, 10, &i), -EINVAL);
        assert_int_equal(vl_param_int64(params_of("{\"units\":99999999999999999999}", 1), "units", 0, 1, INT64_MAX, &i),
                         1);
        assert_true(i == INT64_MAX);
        assert_int_equal(vl_param_int64(params_of("{\"units\":-01}", 0), "units", 0, 1, 10, &i), -EINVAL);
        assert_int_equal(vl_param_seconds(params_of("{\"units\":NaN}", 0), "units", 0, &u), -EINVAL);
        assert_int_equal(vl_param_seconds(params_of("{\"units\":1e400}", 1), "units", 0, &u), -EINVAL);
        assert_int_equal(vl_param_seconds(params_of("{\"units\":-0.5}", 1), "units", 0, &u), -EINVAL);
        assert_int_equal(vl_param_seconds(params_of("{\"units\":0}", 1), "units", 0, &u), 1);
        assert_int_equal(u, 0);
        assert_int_equal(vl_param_seconds(params_of("{\"units\":1000000001}", 1), "units", 0, &u), -EINVAL);

        /* Not numbers at all, or cut: json-c's error. */
        VlScannedCall c;
        static const char *const bad[] = { "01", ".5", "1e", "1e+", "+1", "-", "0x10", "1.5.5", "--1", "1 2", "2.e" };
        for (size_t k = 0; k < sizeof(bad) / sizeof(bad[0]); k++) {
                char msg[256];
                snprintf(msg, sizeof(msg), CALL_PREFIX "{\"units\":%s}}", bad[k]);
                if (read_str(msg, &c) != -EBADMSG)
                        fail_msg("%s: not refused as JSON", bad[k]);
        }
}

static void test_repeated_keys(void **state) {
        /* json-c: the last value, at the place of the first. */
        const VlParams *p = params_of("{\"units\":\"x\",\"resource\":\"r\",\"units\":2}", 0);
        int64_t i = 0;
        assert_int_equal(vl_param_int64(p, "units", 0, 1, 10, &i), 1);
        assert_int_equal(i, 2);
        assert_string_equal(p->items[0].key, "units");
        p = params_of("{\"units\":2,\"units\":\"x\"}", 0);
        assert_int_equal(vl_param_int64(p, "units", 0, 1, 10, &i), -EINVAL);
        p = params_of("{\"ttl\":5,\"ttl\":null}", 0);
        usec_t u = 7;
        assert_int_equal(vl_param_seconds(p, "ttl", 0, &u), 0);
        assert_int_equal(u, 7);

        /* Repeated members of the call itself. */
        VlScannedCall c;
        assert_int_equal(read_str("{\"method\":\"a.B\",\"method\":\"c.D\"}", &c), 0);
        assert_string_equal(c.method, "c.D");
        assert_int_equal(read_str("{\"method\":\"a.B\",\"parameters\":{\"x\":1},\"parameters\":null}", &c), 0);
        assert_int_equal(c.parameters->n, 0);
        assert_int_equal(read_str("{\"method\":\"a.B\",\"more\":true,\"more\":false}", &c), 0);
        assert_false(c.more);
        assert_int_equal(read_str("{\"method\":\"a.B\",\"more\":false,\"more\":7}", &c), -EPROTO);
}

static void test_not_calls(void **state) {
        VlScannedCall c;
        static const struct {
                const char *msg;
                int r;
        } cases[] = {
                { "", -EBADMSG },
                { "[]", -EBADMSG },
                { "null", -EBADMSG },
                { "{}", -EPROTO },
                { "{\"method\":5}", -EPROTO },
                { "{\"method\":null}", -EPROTO },
                { "{\"method\":\"nodot\"}", -EPROTO },
                { "{\"method\":\".B\"}", -EPROTO },
                { "{\"method\":\"a.\"}", -EPROTO },
                { "{\"method\":\"a.B\",\"parameters\":[]}", -EPROTO },
                { "{\"method\":\"a.B\",\"parameters\":\"x\"}", -EPROTO },
                { "{\"method\":\"a.B\",\"more\":1}", -EPROTO },
                { "{\"method\":\"a.B\",\"oneway\":\"yes\"}", -EPROTO },
                { "{\"method\":\"a.B\",\"more\":true,\"oneway\":true}", -EPROTO },
                { "{\"method\":\"a.B\",\"upgrade\":true}", -EPROTO },
                { "{\"method\":\"a.B\",}", -EBADMSG },
                { "{\"method\":\"a.B\"} x", -EBADMSG },
                { "{\"method\":\"a.B\"}{}", -EBADMSG },
                { "{\"method\":\"a.B\",\"parameters\":{\"a\":1,}}", -EBADMSG },
                { "{\"method\":\"a.B\",\"parameters\":{\"a\":[1,]}}", -EBADMSG },
                { "{\"method\":\"a.B\",\"parameters\":{\"a\":tru}}", -EBADMSG },
                { "{\"method\":\"a.B\",\"parameters\":{\"a\":True}}", -EBADMSG },
                { "{'method':'a.B'}", -EBADMSG },
                { "{\"method\":\"a.B\" /* c */}", -EBADMSG },
                { "{\"method\":\"a.B\",\"parameters\":{\"a\" 1}}", -EBADMSG },
                { "{\"method\":\"a.B\",\"parameters\":{1:1}}", -EBADMSG },
        };
        for (size_t k = 0; k < sizeof(cases) / sizeof(cases[0]); k++) {
                int r = read_str(cases[k].msg, &c);
                if (r != cases[k].r)
                        fail_msg("%s: %d, expected %d", cases[k].msg, r, cases[k].r);
        }
}

static void test_bounds(void **state) {
        char msg[8192];
        VlScannedCall c;

        /* Nesting inside a parameter: read up to the scanner's depth, json-c's beyond, and
         * json-c's error past its own limit. */
        for (int depth = 1; depth <= 70; depth++) {
                size_t n = 0;
                n += (size_t) snprintf(msg + n, sizeof(msg) - n, CALL_PREFIX "{\"x\":");
                for (int k = 0; k < depth; k++)
                        msg[n++] = '[';
                for (int k = 0; k < depth; k++)
                        msg[n++] = ']';
                n += (size_t) snprintf(msg + n, sizeof(msg) - n, "}}");
                int r = read_call(msg, n, &c);
                /* the call's object and the parameters' are two levels */
                int expect = depth + 2 <= VL_SCAN_DEPTH_MAX ? 1 : depth + 2 <= 64 ? 0 : -EBADMSG;
                if (r != expect)
                        fail_msg("depth %d: %d, expected %d", depth, r, expect);
        }

        /* Up to VL_SCAN_PARAMS_MAX parameters are read; more are json-c's. */
        for (int count = 1; count <= VL_SCAN_PARAMS_MAX + 1; count++) {
                size_t n = (size_t) snprintf(msg, sizeof(msg), CALL_PREFIX "{");
                for (int k = 0; k < count; k++)
                        n += (size_t) snprintf(msg + n, sizeof(msg) - n, "%s\"p%d\":%d", k ? "," : "", k, k);
                n += (size_t) snprintf(msg + n, sizeof(msg) - n, "}}");
                VlScannedCall x;
                int r = read_call(msg, n, &x);
                assert_int_equal(r, count <= VL_SCAN_PARAMS_MAX ? 1 : 0);
                assert_int_equal(x.parameters->n, (size_t) count);
                const char *unknown = NULL;
                static const char *const none[] = { NULL };
                assert_int_equal(vl_params_check_keys(x.parameters, none, &unknown), -EINVAL);
                assert_string_equal(unknown, "p0");
        }

        /* A message json-c read with many members: its long list is not kept. */
        size_t m = (size_t) snprintf(msg, sizeof(msg), CALL_PREFIX "{");
        for (int k = 0; k < 600; k++)
                m += (size_t) snprintf(msg + m, sizeof(msg) - m, "%s\"q%d\":0", k ? "," : "", k);
        m += (size_t) snprintf(msg + m, sizeof(msg) - m, "}}");
        assert_true(m < sizeof(msg) - 1);
        assert_int_equal(read_call(msg, m, &c), 0);
        assert_int_equal(c.parameters->n, 600);
        assert_int_equal(read_str(CALL_PREFIX "{\"resource\":\"small\"}}", &c), 1);
        assert_int_equal(scanner.params.size, VL_SCAN_PARAMS_MAX);

        /* The state is reused: a large message, then small ones, each read right. */
        char *big = malloc(200000);
        assert_non_null(big);
        size_t n = (size_t) snprintf(big, 200000, CALL_PREFIX "{\"description\":\"");
        memset(big + n, 'd', 150000);
        n += 150000;
        n += (size_t) snprintf(big + n, 200000 - n, "\",\"resource\":\"r\"}}");
        assert_int_equal(read_call(big, n, &c), 1);
        const char *s = NULL;
        assert_int_equal(vl_param_string(c.parameters, "description", 0, &s), 1);
        assert_int_equal(strlen(s), 150000);
        free(big);
        assert_int_equal(read_str(CALL_PREFIX "{\"resource\":\"small\"}}", &c), 1);
        assert_int_equal(vl_param_string(c.parameters, "resource", 0, &s), 1);
        assert_string_equal(s, "small");
        /* Exactly len bytes: what follows in memory is not read. */
        static const char cut[] = "{\"method\":\"a.B\"}garbage";
        assert_int_equal(read_call(cut, 16, &c), 1);
}

/* Every file of the JSON corpus, as a message: the scanner and json-c agree. */
static void test_corpus(void **state) {
        const char *dir = getenv("AGEND_TEST_DATA");
        if (!dir)
                dir = "tests/data";
        DIR *d = opendir(dir);
        assert_non_null(d);
        unsigned files = 0, scanned = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                char path[4096];
                snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
                FILE *f = fopen(path, "re");
                if (!f)
                        continue;
                static char buf[1 << 20];
                size_t n = fread(buf, 1, sizeof(buf), f);
                fclose(f);
                VlScannedCall c;
                if (read_call(buf, n, &c) == 1)
                        scanned++;
                files++;
        }
        closedir(d);
        assert_true(files > 40);
        assert_true(scanned > 0);
}

static int setup(void **state) {
        tok = json_parser_new();
        return tok ? 0 : -1;
}

static int teardown(void **state) {
        vl_call_done(&fallback);
        vl_scanner_done(&scanner);
        json_tokener_free(tok);
        return 0;
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_plain_call), cmocka_unit_test(test_strings),
                cmocka_unit_test(test_numbers),    cmocka_unit_test(test_repeated_keys),
                cmocka_unit_test(test_not_calls),  cmocka_unit_test(test_bounds),
                cmocka_unit_test(test_corpus),
        };
        return cmocka_run_group_tests(tests, setup, teardown);
}

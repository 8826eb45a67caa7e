/* SPDX-License-Identifier: MIT */
/* libFuzzer: strict JSON parsing and the typed getters (common/json-util.c).
 *
 * The input is one JSON text. json_parse_buffer() must refuse or accept it without a
 * sanitizer report; what it accepts must serialize and parse again (strict) to the same
 * text, and the getters must give a value or -EINVAL for every member, never anything
 * else: they are the only way the daemon reads a parameter. */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "json-util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_members(json_object *o) {
        json_object_object_foreach(o, key, val) {
                (void) val;
                const char *s;
                int64_t i;
                unsigned u;
                bool b;
                usec_t t;
                int r;
                r = json_get_string(o, key, 0, &s);
                assert(r >= -EINVAL && r <= 1);
                if (r == 1)
                        assert(strlen(s) == (size_t) json_object_get_string_len(json_object_object_get(o, key)));
                r = json_get_int64(o, key, 0, INT64_MIN, INT64_MAX, &i);
                assert(r >= -EINVAL && r <= 1);
                r = json_get_uint(o, key, JSON_REQUIRED, 0, UINT32_MAX, &u);
                assert(r >= -EINVAL && r <= 1);
                r = json_get_bool(o, key, 0, &b);
                assert(r >= -EINVAL && r <= 1);
                r = json_get_seconds(o, key, 0, &t);
                assert(r >= -EINVAL && r <= 1);
                if (r == 1)
                        assert(t != USEC_INFINITY);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        json_object *o = NULL;
        int r = json_parse_buffer((const char *) data, size, &o);
        assert(r == 0 || r == -EBADMSG || r == -ENOMEM);
        if (r < 0)
                return 0;
        if (json_object_is_type(o, json_type_object))
                check_members(o);

        /* What was accepted survives a round trip through its own text. */
        size_t n;
        const char *text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, &n);
        json_object *again = NULL;
        r = json_parse_buffer(text, n, &again);
        assert(r == 0);
        /* Compared as text: json-c lets NaN through (the getters refuse it), and NaN != NaN. */
        size_t n2;
        const char *text2 = json_object_to_json_string_length(again, JSON_C_TO_STRING_PLAIN, &n2);
        assert(n == n2 && memcmp(text, text2, n) == 0);
        json_object_put(again);
        json_object_put(o);
        return 0;
}

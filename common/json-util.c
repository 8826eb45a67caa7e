/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "json-util.h"
#include "macro.h"
#include "string-table.h"

#define JSON_MAX_DEPTH 64

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, nothing above U+10FFFF.
 * json-c's own check (JSON_TOKENER_VALIDATE_UTF8) only looks at the byte pattern and lets
 * overlong forms such as C0 AF through. */
static bool utf8_valid(const unsigned char *p, size_t n) {
        size_t i = 0;
        while (i < n) {
                /* Calls are almost all ASCII: eight bytes at a time while they are. */
                uint64_t w;
                while (n - i >= 8 && (memcpy(&w, p + i, 8), (w & UINT64_C(0x8080808080808080)) == 0))
                        i += 8;
                if (i == n)
                        break;
                unsigned char c = p[i];
                if (c < 0x80) {
                        i++;
                        continue;
                }
                size_t len;
                uint32_t cp, min;
                if (c >= 0xc2 && c <= 0xdf) {
                        len = 2, cp = c & 0x1f, min = 0x80;
                } else if (c >= 0xe0 && c <= 0xef) {
                        len = 3, cp = c & 0x0f, min = 0x800;
                } else if (c >= 0xf0 && c <= 0xf4) {
                        len = 4, cp = c & 0x07, min = 0x10000;
                } else
                        return false;
                if (n - i < len)
                        return false;
                for (size_t k = 1; k < len; k++) {
                        if ((p[i + k] & 0xc0) != 0x80)
                                return false;
                        cp = (cp << 6) | (p[i + k] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return false;
                i += len;
        }
        return true;
}

bool json_utf8_valid(const void *p, size_t n) {
        return utf8_valid(p, n);
}

int json_parse_buffer_with(json_tokener *tok, const char *text, size_t len, json_object **ret) {
        assert(tok);
        assert(text || len == 0);
        assert(ret);

        if (len > INT_MAX)
                return -EBADMSG;
        if (!utf8_valid((const unsigned char *) text, len))
                return -EBADMSG;
        json_tokener_reset(tok);
        /* json_tokener_reset() leaves a pending high surrogate of the last message (one cut
         * off after "\ud800"), and the next message's first \u escape would be paired with
         * it or get a U+FFFD put before it: one client's bytes would change the strings of
         * the next message parsed, another client's. */
        tok->high_surrogate = 0;
        tok->ucs_char = 0;
        /* Strings must be UTF-8 (RFC 8259 8.1): a name with stray bytes, stored and sent back
         * in List replies, would make strict peers (python's json, browsers) fail on every
         * later reply that carries it. */
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        json_object *o = json_tokener_parse_ex(tok, text, (int) len);
        enum json_tokener_error e = json_tokener_get_error(tok);
        /* In strict mode json-c stops right after a complete value; anything left (other
         * than whitespace) is trailing garbage. A number at the very end is only known to
         * be complete once the input ends, which json_tokener_continue reports. */
        size_t used = json_tokener_get_parse_end(tok);
        if (e == json_tokener_continue && !o) {
                /* A top-level number is complete only when input ends: say so with a NUL. */
                o = json_tokener_parse_ex(tok, "", 1);
                e = json_tokener_get_error(tok);
                if (!o || e != json_tokener_success) {
                        json_object_put(o);
                        return -EBADMSG;
                }
                used = len;
        }
        if (e != json_tokener_success && e != json_tokener_continue) {
                json_object_put(o);
                return -EBADMSG;
        }
        for (size_t i = used; i < len; i++)
                if (!strchr(" \t\r\n", text[i])) {
                        json_object_put(o);
                        return -EBADMSG;
                }
        if (!o) {
                /* A bare JSON null is valid but carries nothing we ever want. */
                return -EBADMSG;
        }
        *ret = o;
        return 0;
}

json_tokener *json_parser_new(void) {
        return json_tokener_new_ex(JSON_MAX_DEPTH);
}

int json_parse_buffer(const char *text, size_t len, json_object **ret) {
        json_tokener *tok = json_parser_new();
        if (!tok)
                return -ENOMEM;
        int r = json_parse_buffer_with(tok, text, len, ret);
        json_tokener_free(tok);
        return r;
}

/* 0 absent/null (and not required), 1 present, -EINVAL required but absent. */
static int lookup(json_object *o, const char *key, unsigned flags, json_object **ret) {
        json_object *v = NULL;
        if (!o || !json_object_is_type(o, json_type_object))
                return -EINVAL;
        if (!json_object_object_get_ex(o, key, &v) || !v)
                return (flags & JSON_REQUIRED) ? -EINVAL : 0;
        *ret = v;
        return 1;
}

int json_get_string(json_object *o, const char *key, unsigned flags, const char **ret) {
        json_object *v;
        int r = lookup(o, key, flags, &v);
        if (r <= 0)
                return r;
        if (!json_object_is_type(v, json_type_string))
                return -EINVAL;
        const char *s = json_object_get_string(v);
        size_t n = (size_t) json_object_get_string_len(v);
        if (strlen(s) != n)
                return -EINVAL;
        if ((flags & JSON_NONEMPTY) && n == 0)
                return -EINVAL;
        *ret = s;
        return 1;
}

int json_get_int64(json_object *o, const char *key, unsigned flags, int64_t min, int64_t max, int64_t *ret) {
        json_object *v;
        int64_t i;
        int r = lookup(o, key, flags, &v);
        if (r <= 0)
                return r;
        if (json_object_is_type(v, json_type_int)) {
                /* json-c saturates at INT64_MIN/MAX; values that large are out of any range
                 * we accept, so the clamp cannot turn a bad value into a good one. */
                errno = 0;
                i = json_object_get_int64(v);
        } else if (json_object_is_type(v, json_type_double)) {
                /* 3.0 is an integer to most JSON producers (JavaScript, python's float). */
                double d = json_object_get_double(v);
                if (!isfinite(d) || d != floor(d) || d < -9.2e18 || d > 9.2e18)
                        return -EINVAL;
                i = (int64_t) d;
        } else
                return -EINVAL;
        if (i < min || i > max)
                return -EINVAL;
        *ret = i;
        return 1;
}

int json_get_uint(json_object *o, const char *key, unsigned flags, unsigned min, unsigned max, unsigned *ret) {
        int64_t i;
        int r = json_get_int64(o, key, flags, min, max, &i);
        if (r <= 0)
                return r;
        *ret = (unsigned) i;
        return 1;
}

int json_get_bool(json_object *o, const char *key, unsigned flags, bool *ret) {
        json_object *v;
        int r = lookup(o, key, flags, &v);
        if (r <= 0)
                return r;
        if (!json_object_is_type(v, json_type_boolean))
                return -EINVAL;
        *ret = json_object_get_boolean(v);
        return 1;
}

int json_get_seconds(json_object *o, const char *key, unsigned flags, usec_t *ret) {
        json_object *v;
        usec_t u;
        int r = lookup(o, key, flags, &v);
        if (r <= 0)
                return r;
        if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int))
                return -EINVAL;
        double d = json_object_get_double(v);
        /* More than ~31 years is a mistake, not a timeout; refusing it keeps deadlines far
         * away from overflow. */
        if (!isfinite(d) || d < 0 || d > 1e9)
                return -EINVAL;
        if (usec_from_sec(d, &u) < 0)
                return -EINVAL;
        *ret = u;
        return 1;
}

int json_check_keys(json_object *o, const char *const *allowed, const char **ret_key) {
        assert(allowed);
        if (!o || !json_object_is_type(o, json_type_object))
                return -EINVAL;
        json_object_object_foreach(o, k, v) {
                (void) v;
                if (!strv_contains(allowed, k)) {
                        if (ret_key)
                                *ret_key = k;
                        return -EINVAL;
                }
        }
        return 0;
}

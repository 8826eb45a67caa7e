/* SPDX-License-Identifier: MIT */
#pragma once

/* Typed access to json-c objects, for the parameters of varlink calls and replies.
 *
 * Getters look up key in an object and return 1 with *ret set when the member is present
 * and valid, 0 when it is absent or JSON null and not JSON_REQUIRED (*ret untouched, so it
 * keeps the caller's default), and -EINVAL when it has the wrong type, is out of range,
 * is a string with an embedded NUL, or is required and absent. The caller turns -EINVAL
 * into org.varlink.service.InvalidParameter naming the key. */

#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

#include "usec.h"

typedef enum JsonFlags {
        JSON_REQUIRED = 1 << 0,
        JSON_NONEMPTY = 1 << 1, /* strings: "" is invalid */
} JsonFlags;

/* Parses exactly len bytes as one strict JSON value (RFC 8259: no trailing commas, no
 * single quotes, no comments, nothing after the value, nesting at most 64 deep).
 * -EBADMSG if invalid, -ENOMEM. *ret owns a reference. */
int json_parse_buffer(const char *text, size_t len, json_object **ret);
/* The same with a parser state the caller keeps (json_parser_new(), json_tokener_free()):
 * reset and reused for each message, so parsing allocates only the tree it returns. */
json_tokener *json_parser_new(void);
/* The UTF-8 check json_parse_buffer() makes first (strict RFC 3629: no overlong forms, no
 * surrogates), for parsers that must refuse exactly what it refuses. */
bool json_utf8_valid(const void *p, size_t n);
int json_parse_buffer_with(json_tokener *tok, const char *text, size_t len, json_object **ret);

/* The string is borrowed from o. Strings with an embedded NUL (\u0000) are refused: json-c
 * keeps their full length, and C code would silently see a shorter name. */
int json_get_string(json_object *o, const char *key, unsigned flags, const char **ret);
int json_get_int64(json_object *o, const char *key, unsigned flags, int64_t min, int64_t max, int64_t *ret);
int json_get_uint(json_object *o, const char *key, unsigned flags, unsigned min, unsigned max, unsigned *ret);
int json_get_bool(json_object *o, const char *key, unsigned flags, bool *ret);
/* A duration in seconds (integer or fraction, >= 0, finite, not absurdly large). */
int json_get_seconds(json_object *o, const char *key, unsigned flags, usec_t *ret);

/* Checks that o has no member other than those listed (NULL-terminated); on failure
 * returns -EINVAL and the first unknown key in *ret_key (borrowed from o). */
int json_check_keys(json_object *o, const char *const *allowed, const char **ret_key);

/* Building: json_add() and friends, in base/json-build.h. */
#include "json-build.h"

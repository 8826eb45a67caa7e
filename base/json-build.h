/* SPDX-License-Identifier: MIT */
#pragma once

/* Building JSON with json-c, one way for every part that sends messages (libagenclient,
 * agenctl; the daemon's replies join when its transport split lands): json_add() takes
 * the value, also when it fails, and a NULL value (an allocation that failed) is -ENOMEM,
 * so a builder checks each member once and never puts a null it did not mean into a
 * message. Header-only, like the rest of base/, but for parts that link json-c. */

#include <errno.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdint.h>

static inline void json_object_putp(json_object **o) {
        if (*o)
                json_object_put(*o);
}
#define _cleanup_json_ __attribute__((__cleanup__(json_object_putp)))

/* Adds key: value to o, consuming value also on failure (value NULL = OOM, -ENOMEM). */
static inline int json_add(json_object *o, const char *key, json_object *value) {
        if (!o || !value) {
                json_object_put(value);
                return -ENOMEM;
        }
        if (json_object_object_add(o, key, value) < 0) {
                json_object_put(value);
                return -ENOMEM;
        }
        return 0;
}

/* s NULL is -EINVAL (and nothing is added): a missing string is the caller's to decide. */
static inline int json_add_string(json_object *o, const char *key, const char *s) {
        if (!s)
                return -EINVAL;
        return json_add(o, key, json_object_new_string(s));
}

static inline int json_add_int(json_object *o, const char *key, int64_t i) {
        return json_add(o, key, json_object_new_int64(i));
}

static inline int json_add_double(json_object *o, const char *key, double d) {
        return json_add(o, key, json_object_new_double(d));
}

static inline int json_add_bool(json_object *o, const char *key, bool b) {
        return json_add(o, key, json_object_new_boolean(b));
}

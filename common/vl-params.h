/* SPDX-License-Identifier: MIT */
#pragma once

/* The parameters of one varlink call as a flat list of members, read with typed getters.
 *
 * The list is filled either by the call scanner (vl-scan.h: straight from the message
 * bytes, no json-c tree) or from a json-c object (vl_params_from_json(), for the messages
 * the scanner leaves to json-c). Both give the same list for the same message: members in
 * the order of their first appearance, a repeated key holding its last value, as json-c's
 * object has them. The getters have the exact meaning of json_get_*() in json-util.h on
 * that json-c object, so a method reads its parameters the same way whichever parser ran.
 *
 * Strings and keys are borrowed (from the scanner's buffer or from the json-c object) and
 * are valid for the call only. */

#include <json-c/json.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "json-util.h"
#include "usec.h"

typedef enum VlParamKind {
        VL_PARAM_NULL,          /* JSON null: counts as absent */
        VL_PARAM_BOOL,
        VL_PARAM_INT,           /* a JSON integer (no '.', no exponent) */
        VL_PARAM_DOUBLE,
        VL_PARAM_STRING,
        VL_PARAM_OTHER,         /* an object or an array: valid for no getter */
} VlParamKind;

typedef struct VlParam {
        const char *key;        /* NUL-terminated (json-c cuts a key at an embedded NUL) */
        VlParamKind kind;
        bool b;                 /* BOOL */
        int64_t i;              /* INT: json_object_get_int64() of it (saturated) */
        double d;               /* INT, DOUBLE: json_object_get_double() of it */
        const char *s;          /* STRING: NUL-terminated; may hold a NUL inside (len tells) */
        size_t len;
} VlParam;

typedef struct VlParams {
        VlParam *items;         /* ro */
        size_t n;               /* ro */
        size_t size;            /* private: allocated items */
} VlParams;

/* Frees the storage; the list may be used again (empty). */
void vl_params_done(VlParams *p);
/* Empties the list, keeping its storage for the next call. */
void vl_params_reset(VlParams *p);
/* Appends a member (no duplicate check) and returns it, or NULL on OOM. */
VlParam *vl_params_add(VlParams *p, const char *key);
/* The member named key, or NULL. */
const VlParam *vl_params_get(const VlParams *p, const char *key);

/* Replaces the list by the members of o (a json-c object, borrowed: it must outlive the
 * use of the list). -EINVAL if o is not an object, -ENOMEM. */
int vl_params_from_json(VlParams *p, json_object *o);

/* Getters: 1 and *ret set when present and valid, 0 when absent or null and not
 * JSON_REQUIRED (*ret untouched), -EINVAL otherwise; see json_get_*() for each. */
int vl_param_string(const VlParams *p, const char *key, unsigned flags, const char **ret);
int vl_param_int64(const VlParams *p, const char *key, unsigned flags, int64_t min, int64_t max, int64_t *ret);
int vl_param_bool(const VlParams *p, const char *key, unsigned flags, bool *ret);
int vl_param_seconds(const VlParams *p, const char *key, unsigned flags, usec_t *ret);
/* -EINVAL and the first member (in order) not in allowed (NULL-terminated) in *ret_key. */
int vl_params_check_keys(const VlParams *p, const char *const *allowed, const char **ret_key);

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "macro.h"
#include "string-table.h"
#include "vl-params.h"

void vl_params_done(VlParams *p) {
        if (!p)
                return;
        free(p->items);
        *p = (VlParams) {};
}

void vl_params_reset(VlParams *p) {
        assert(p);
        p->n = 0;
}

VlParam *vl_params_add(VlParams *p, const char *key) {
        assert(p);
        assert(key);
        if (p->n == p->size) {
                size_t sz = MAX(p->size * 2, (size_t) 16);
                if (sz > SIZE_MAX / sizeof(VlParam))
                        return NULL;
                VlParam *a = realloc(p->items, sz * sizeof(VlParam));
                if (!a)
                        return NULL;
                p->items = a;
                p->size = sz;
        }
        VlParam *x = &p->items[p->n++];
        *x = (VlParam) { .key = key };
        return x;
}

const VlParam *vl_params_get(const VlParams *p, const char *key) {
        assert(p);
        assert(key);
        for (size_t i = 0; i < p->n; i++)
                if (strcmp(p->items[i].key, key) == 0)
                        return &p->items[i];
        return NULL;
}

int vl_params_from_json(VlParams *p, json_object *o) {
        assert(p);
        vl_params_reset(p);
        if (!json_object_is_type(o, json_type_object))
                return -EINVAL;
        /* json-c's object already keeps one member per key, in the order of first
         * appearance, with the last value: the list the scanner builds. */
        json_object_object_foreach(o, k, v) {
                VlParam *x = vl_params_add(p, k);
                if (!x)
                        return -ENOMEM;
                switch (v ? json_object_get_type(v) : json_type_null) {
                case json_type_null:
                        x->kind = VL_PARAM_NULL;
                        break;
                case json_type_boolean:
                        x->kind = VL_PARAM_BOOL;
                        x->b = json_object_get_boolean(v);
                        break;
                case json_type_int:
                        x->kind = VL_PARAM_INT;
                        x->i = json_object_get_int64(v);
                        x->d = json_object_get_double(v);
                        break;
                case json_type_double:
                        x->kind = VL_PARAM_DOUBLE;
                        x->d = json_object_get_double(v);
                        break;
                case json_type_string:
                        x->kind = VL_PARAM_STRING;
                        x->s = json_object_get_string(v);
                        x->len = (size_t) json_object_get_string_len(v);
                        break;
                default:
                        x->kind = VL_PARAM_OTHER;
                        break;
                }
        }
        return 0;
}

/* 0 absent/null (and not required), 1 present, -EINVAL required but absent. */
static int lookup(const VlParams *p, const char *key, unsigned flags, const VlParam **ret) {
        const VlParam *x = vl_params_get(p, key);
        if (!x || x->kind == VL_PARAM_NULL)
                return (flags & JSON_REQUIRED) ? -EINVAL : 0;
        *ret = x;
        return 1;
}

int vl_param_string(const VlParams *p, const char *key, unsigned flags, const char **ret) {
        const VlParam *x;
        int r = lookup(p, key, flags, &x);
        if (r <= 0)
                return r;
        if (x->kind != VL_PARAM_STRING || strlen(x->s) != x->len)
                return -EINVAL;
        if ((flags & JSON_NONEMPTY) && x->len == 0)
                return -EINVAL;
        *ret = x->s;
        return 1;
}

int vl_param_int64(const VlParams *p, const char *key, unsigned flags, int64_t min, int64_t max, int64_t *ret) {
        const VlParam *x;
        int64_t i;
        int r = lookup(p, key, flags, &x);
        if (r <= 0)
                return r;
        if (x->kind == VL_PARAM_INT)
                i = x->i;       /* saturated like json-c: beyond any range we accept */
        else if (x->kind == VL_PARAM_DOUBLE) {
                /* 3.0 is an integer to most JSON producers (JavaScript, python's float). */
                if (!isfinite(x->d) || x->d != floor(x->d) || x->d < -9.2e18 || x->d > 9.2e18)
                        return -EINVAL;
                i = (int64_t) x->d;
        } else
                return -EINVAL;
        if (i < min || i > max)
                return -EINVAL;
        *ret = i;
        return 1;
}

int vl_param_bool(const VlParams *p, const char *key, unsigned flags, bool *ret) {
        const VlParam *x;
        int r = lookup(p, key, flags, &x);
        if (r <= 0)
                return r;
        if (x->kind != VL_PARAM_BOOL)
                return -EINVAL;
        *ret = x->b;
        return 1;
}

int vl_param_seconds(const VlParams *p, const char *key, unsigned flags, usec_t *ret) {
        const VlParam *x;
        usec_t u;
        int r = lookup(p, key, flags, &x);
        if (r <= 0)
                return r;
        if (x->kind != VL_PARAM_INT && x->kind != VL_PARAM_DOUBLE)
                return -EINVAL;
        /* As json_get_seconds(): more than ~31 years is a mistake, not a timeout. */
        if (!isfinite(x->d) || x->d < 0 || x->d > 1e9)
                return -EINVAL;
        if (usec_from_sec(x->d, &u) < 0)
                return -EINVAL;
        *ret = u;
        return 1;
}

int vl_params_check_keys(const VlParams *p, const char *const *allowed, const char **ret_key) {
        assert(p);
        assert(allowed);
        for (size_t i = 0; i < p->n; i++)
                if (!strv_contains(allowed, p->items[i].key)) {
                        if (ret_key)
                                *ret_key = p->items[i].key;
                        return -EINVAL;
                }
        return 0;
}

/* SPDX-License-Identifier: MIT */
/* libFuzzer: the call scanner (common/vl-scan.c) against json-c, on arbitrary bytes.
 *
 * The input is one message. The scanner either leaves it to json-c (0) or reads it; when
 * it reads it, json-c's path (vl_call_parse_with) must accept the message too and give
 * the same call: method, flags, and a parameter list equal member by member (keys in
 * order, kinds, values bit for bit). Whenever json-c accepts the message, the typed
 * getters on its list (vl_param_*) must answer as json_get_*() on its tree, for every
 * member and for the names the daemon reads. So the daemon, which reads a call with the
 * scanner when it can and with json-c otherwise, answers every message as json-c did. */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"
#include "vl-scan.h"
#include "vl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same_list(const VlParams *a, const VlParams *b) {
        assert(a->n == b->n);
        for (size_t i = 0; i < a->n; i++) {
                const VlParam *x = &a->items[i], *y = &b->items[i];
                assert(strcmp(x->key, y->key) == 0);
                assert(x->kind == y->kind);
                switch (x->kind) {
                case VL_PARAM_BOOL:
                        assert(x->b == y->b);
                        break;
                case VL_PARAM_INT:
                        assert(x->i == y->i);
                        assert(memcmp(&x->d, &y->d, sizeof(double)) == 0);
                        break;
                case VL_PARAM_DOUBLE:
                        assert(memcmp(&x->d, &y->d, sizeof(double)) == 0);
                        break;
                case VL_PARAM_STRING:
                        if (x->len != y->len || memcmp(x->s, y->s, x->len) != 0)
                                fprintf(stderr, "key %s: %zu [%.*s] vs %zu [%.*s]\n", x->key, x->len, (int) x->len, x->s, y->len, (int) y->len, y->s);
                        assert(x->len == y->len);
                        assert(memcmp(x->s, y->s, x->len) == 0);
                        assert(x->s[x->len] == 0);
                        break;
                default:
                        break;
                }
        }
}

static void same_getters(const VlParams *l, json_object *o, const char *key) {
        static const struct {
                int64_t min, max;
        } ranges[] = { { 1, 1000000 }, { 1, INT64_MAX }, { 0, INT64_MAX }, { 1, 100000 }, { INT64_MIN, INT64_MAX } };
        for (unsigned flags = 0; flags < 4; flags++) {
                const char *s1 = NULL, *s2 = NULL;
                int r1 = json_get_string(o, key, flags, &s1), r2 = vl_param_string(l, key, flags, &s2);
                assert(r1 == r2);
                assert(r1 <= 0 || strcmp(s1, s2) == 0);
                for (size_t k = 0; k < sizeof(ranges) / sizeof(ranges[0]); k++) {
                        int64_t i1 = 7, i2 = 7;
                        r1 = json_get_int64(o, key, flags, ranges[k].min, ranges[k].max, &i1);
                        r2 = vl_param_int64(l, key, flags, ranges[k].min, ranges[k].max, &i2);
                        assert(r1 == r2 && i1 == i2);
                }
                bool b1 = false, b2 = false;
                r1 = json_get_bool(o, key, flags, &b1);
                r2 = vl_param_bool(l, key, flags, &b2);
                assert(r1 == r2 && b1 == b2);
                usec_t u1 = 3, u2 = 3;
                r1 = json_get_seconds(o, key, flags, &u1);
                r2 = vl_param_seconds(l, key, flags, &u2);
                assert(r1 == r2 && u1 == u2);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static VlScanner scanner;       /* reused, as the daemon reuses it */
        static json_tokener *tok;
        static const char *const names[] = { "resource", "units", "exclusive", "timeout", "ttl", "detached",
                                             "description", "ticket", "id", "secret", "token", "limit",
                                             "before", "after", "lease", "reason", "interface", NULL };
        const char *msg = (const char *) data;

        if (!tok)
                tok = json_parser_new();
        assert(tok);

        VlScannedCall a;
        int r = vl_scan_call(&scanner, msg, size, &a);
        assert(r == 0 || r == 1);

        VlCall call;
        int k = vl_call_parse_with(tok, msg, size, &call);
        if (r == 1)
                assert(k == 0);
        if (k < 0)
                return 0;

        VlParams tree = {};
        VlScanner fb = {};
        VlScannedCall b;
        assert(vl_params_from_json(&tree, call.parameters) == 0);
        assert(vl_scan_call_from_json(&fb, &call, &b) == 0);
        same_list(b.parameters, &tree);
        if (r == 1) {
                assert(strcmp(a.method, call.method) == 0);
                assert(a.more == call.more && a.oneway == call.oneway);
                same_list(a.parameters, &tree);
        }

        for (const char *const *n = names; *n; n++)
                same_getters(&tree, call.parameters, *n);
        for (size_t i = 0; i < tree.n; i++)
                same_getters(&tree, call.parameters, tree.items[i].key);
        const char *u1 = NULL, *u2 = NULL;
        int c1 = json_check_keys(call.parameters, names, &u1), c2 = vl_params_check_keys(&tree, names, &u2);
        assert(c1 == c2);
        assert(c1 == 0 || strcmp(u1, u2) == 0);

        vl_params_done(&tree);
        vl_scanner_done(&fb);
        vl_call_done(&call);
        return 0;
}

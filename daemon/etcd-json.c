/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "etcd-json.h"
#include "json-util.h"
#include "macro.h"

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *etcd_base64_encode(const void *p, size_t len) {
        const unsigned char *s = p;
        char *out = malloc((len + 2) / 3 * 4 + 1), *o = out;
        if (!out)
                return NULL;
        for (size_t i = 0; i < len; i += 3) {
                unsigned v = s[i] << 16 | (i + 1 < len ? s[i + 1] << 8 : 0) | (i + 2 < len ? s[i + 2] : 0);
                *o++ = b64[v >> 18 & 63];
                *o++ = b64[v >> 12 & 63];
                *o++ = i + 1 < len ? b64[v >> 6 & 63] : '=';
                *o++ = i + 2 < len ? b64[v & 63] : '=';
        }
        *o = 0;
        return out;
}

int etcd_base64_decode(const char *s, char **ret, size_t *ret_len) {
        size_t n = strlen(s);
        if (n % 4)
                return -EINVAL;
        char *out = malloc(n / 4 * 3 + 1);
        if (!out)
                return -ENOMEM;
        size_t o = 0;
        for (size_t i = 0; i < n; i += 4) {
                unsigned v = 0;
                int pad = 0;
                for (size_t j = 0; j < 4; j++) {
                        const char *c = s[i + j] ? strchr(b64, s[i + j]) : NULL;
                        if (s[i + j] == '=' && i + 4 == n && j >= 2) {
                                pad++;
                                v <<= 6;
                                continue;
                        }
                        if (!c || pad) {
                                free(out);
                                return -EINVAL;
                        }
                        v = v << 6 | (unsigned) (c - b64);
                }
                out[o++] = (char) (v >> 16);
                if (pad < 2)
                        out[o++] = (char) (v >> 8);
                if (pad < 1)
                        out[o++] = (char) v;
        }
        out[o] = 0;
        *ret = out;
        *ret_len = o;
        return 0;
}

char *etcd_prefix_end(const char *prefix) {
        size_t n = strlen(prefix);
        char *e = strdup(prefix);
        if (!e)
                return NULL;
        while (n > 0) {
                if ((unsigned char) e[n - 1] < 0xff) {
                        e[n - 1]++;
                        e[n] = 0;
                        return e;
                }
                n--;
        }
        e[0] = 0;       /* all 0xff: "\0" in etcd's terms, to the end of the keyspace */
        return e;
}

static int add_b64(json_object *o, const char *field, const char *s, size_t len) {
        _cleanup_free_ char *e = etcd_base64_encode(s, len);
        json_object *v = e ? json_object_new_string(e) : NULL;
        if (!v)
                return -ENOMEM;
        json_object_object_add(o, field, v);
        return 0;
}

static int add_int(json_object *o, const char *field, int64_t v) {
        char buf[32];
        snprintf(buf, sizeof(buf), "%" PRIi64, v);
        json_object *s = json_object_new_string(buf);
        if (!s)
                return -ENOMEM;
        json_object_object_add(o, field, s);
        return 0;
}

static int add_str(json_object *o, const char *field, const char *v) {
        json_object *s = json_object_new_string(v);
        if (!s)
                return -ENOMEM;
        json_object_object_add(o, field, s);
        return 0;
}

static int add_key_range(json_object *o, const char *key, bool prefix) {
        if (add_b64(o, "key", key, strlen(key)) < 0)
                return -ENOMEM;
        if (!prefix)
                return 0;
        _cleanup_free_ char *end = etcd_prefix_end(key);
        if (!end)
                return -ENOMEM;
        /* An empty end means "to the end", spelt as the single byte "\0". */
        return add_b64(o, "range_end", end, *end ? strlen(end) : 1);
}

static char *finish(json_object *o, int k) {
        char *s = NULL;
        if (k >= 0) {
                const char *t = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
                s = t ? strdup(t) : NULL;
        }
        json_object_put(o);
        return s;
}

char *etcd_json_lease_grant(int64_t ttl) {
        json_object *o = json_object_new_object();
        if (!o)
                return NULL;
        return finish(o, add_int(o, "TTL", ttl));
}

char *etcd_json_lease_id(int64_t id) {
        json_object *o = json_object_new_object();
        if (!o)
                return NULL;
        return finish(o, add_int(o, "ID", id));
}

static int range_fields(json_object *o, const EtcdOp *op) {
        int k = add_key_range(o, op->key, op->prefix);
        if (k >= 0 && op->sort_by_create) {
                if ((k = add_str(o, "sort_order", "ASCEND")) >= 0)
                        k = add_str(o, "sort_target", "CREATE");
        }
        if (k >= 0 && op->limit > 0)
                k = add_int(o, "limit", op->limit);
        if (k >= 0 && op->count_only)
                json_object_object_add(o, "count_only", json_object_new_boolean(true));
        return k;
}

char *etcd_json_range(const EtcdOp *op) {
        json_object *o = json_object_new_object();
        if (!o)
                return NULL;
        return finish(o, range_fields(o, op));
}

static json_object *op_json(const EtcdOp *op) {
        json_object *o = json_object_new_object(), *inner = json_object_new_object();
        int k = o && inner ? 0 : -ENOMEM;
        const char *name = NULL;
        if (k >= 0)
                switch (op->type) {
                case ETCD_OP_RANGE:
                        name = "request_range";
                        k = range_fields(inner, op);
                        break;
                case ETCD_OP_PUT:
                        name = "request_put";
                        k = add_b64(inner, "key", op->key, strlen(op->key));
                        if (k >= 0)
                                k = add_b64(inner, "value", strempty(op->value), strlen(strempty(op->value)));
                        if (k >= 0 && op->lease)
                                k = add_int(inner, "lease", op->lease);
                        break;
                case ETCD_OP_DELETE:
                        name = "request_delete_range";
                        k = add_key_range(inner, op->key, op->prefix);
                        break;
                }
        if (k < 0 || !name) {
                json_object_put(o);
                json_object_put(inner);
                return NULL;
        }
        json_object_object_add(o, name, inner);
        return o;
}

static int add_ops(json_object *o, const char *field, const EtcdOp *ops, size_t n) {
        json_object *a = json_object_new_array();
        if (!a)
                return -ENOMEM;
        json_object_object_add(o, field, a);
        for (size_t i = 0; i < n; i++) {
                json_object *x = op_json(&ops[i]);
                if (!x)
                        return -ENOMEM;
                json_object_array_add(a, x);
        }
        return 0;
}

char *etcd_json_txn(const EtcdTxn *t) {
        static const char *const targets[] = { "VERSION", "CREATE", "MOD", "VALUE", "LEASE" };
        static const char *const results[] = { "EQUAL", "GREATER", "LESS", "NOT_EQUAL" };
        static const char *const fields[] = { "version", "create_revision", "mod_revision", "value", "lease" };
        json_object *o = json_object_new_object(), *cmp = json_object_new_array();
        int k = o && cmp ? 0 : -ENOMEM;
        if (o && cmp)
                json_object_object_add(o, "compare", cmp);
        else
                json_object_put(cmp);
        for (size_t i = 0; k >= 0 && i < t->n_compare; i++) {
                const EtcdCompare *c = &t->compare[i];
                json_object *x = json_object_new_object();
                if (!x) {
                        k = -ENOMEM;
                        break;
                }
                json_object_array_add(cmp, x);
                k = add_b64(x, "key", c->key, strlen(c->key));
                if (k >= 0)
                        k = add_str(x, "target", targets[c->target]);
                if (k >= 0)
                        k = add_str(x, "result", results[c->result]);
                if (k >= 0)
                        k = c->target == ETCD_TARGET_VALUE
                                    ? add_b64(x, "value", strempty(c->value), strlen(strempty(c->value)))
                                    : add_int(x, fields[c->target], c->number);
        }
        if (k >= 0)
                k = add_ops(o, "success", t->success, t->n_success);
        if (k >= 0)
                k = add_ops(o, "failure", t->failure, t->n_failure);
        return o ? finish(o, k) : NULL;
}

char *etcd_json_watch_create(const char *key, bool prefix, int64_t start_revision) {
        json_object *o = json_object_new_object(), *c = json_object_new_object();
        if (!o || !c) {
                json_object_put(o);
                json_object_put(c);
                return NULL;
        }
        json_object_object_add(o, "create_request", c);
        int k = add_key_range(c, key, prefix);
        if (k >= 0 && start_revision > 0)
                k = add_int(c, "start_revision", start_revision);
        if (k >= 0)
                json_object_object_add(c, "progress_notify", json_object_new_boolean(true));
        return finish(o, k);
}

/* Reading. The gateway writes 64-bit integers as strings; accept numbers too. */
static int64_t get_int(json_object *o, const char *field) {
        json_object *v;
        if (!json_object_object_get_ex(o, field, &v) || !v)
                return 0;
        if (json_object_is_type(v, json_type_string))
                return (int64_t) strtoll(json_object_get_string(v), NULL, 10);
        return json_object_get_int64(v);
}

static uint64_t get_uint(json_object *o, const char *field) {
        json_object *v;
        if (!json_object_object_get_ex(o, field, &v) || !v)
                return 0;
        if (json_object_is_type(v, json_type_string))
                return (uint64_t) strtoull(json_object_get_string(v), NULL, 10);
        return json_object_get_uint64(v);
}

static bool get_bool(json_object *o, const char *field) {
        json_object *v;
        return json_object_object_get_ex(o, field, &v) && v && json_object_get_boolean(v);
}

static const char *get_str(json_object *o, const char *field) {
        json_object *v;
        if (!json_object_object_get_ex(o, field, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

static void parse_header(json_object *o, EtcdHeader *h) {
        json_object *x;
        if (!json_object_object_get_ex(o, "header", &x) || !x)
                return;
        h->cluster_id = get_uint(x, "cluster_id");
        h->member_id = get_uint(x, "member_id");
        h->revision = get_int(x, "revision");
        h->raft_term = get_uint(x, "raft_term");
}

static int get_b64(json_object *o, const char *field, char **ret, size_t *ret_len) {
        const char *s = get_str(o, field);
        return etcd_base64_decode(s ?: "", ret, ret_len);
}

static int parse_kv(json_object *o, EtcdKv *kv) {
        int k = get_b64(o, "key", &kv->key, &kv->key_len);
        if (k >= 0)
                k = get_b64(o, "value", &kv->value, &kv->value_len);
        kv->create_revision = get_int(o, "create_revision");
        kv->mod_revision = get_int(o, "mod_revision");
        kv->version = get_int(o, "version");
        kv->lease = get_int(o, "lease");
        return k;
}

static void kv_done(EtcdKv *kv) {
        free(kv->key);
        free(kv->value);
}

static int parse_range(json_object *o, EtcdOpResult *op) {
        json_object *a;
        op->type = ETCD_OP_RANGE;
        op->more = get_bool(o, "more");
        op->count = get_int(o, "count");
        EtcdHeader h = {};
        parse_header(o, &h);
        op->revision = h.revision;
        if (!json_object_object_get_ex(o, "kvs", &a) || !json_object_is_type(a, json_type_array))
                return 0;
        size_t n = json_object_array_length(a);
        op->kvs = calloc(MAX(n, 1u), sizeof(EtcdKv));
        if (!op->kvs)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                op->n_kvs++;
                int k = parse_kv(json_object_array_get_idx(a, i), &op->kvs[i]);
                if (k < 0)
                        return k;
        }
        return 0;
}

static int parse_txn(json_object *o, EtcdResult *r) {
        json_object *a;
        r->succeeded = get_bool(o, "succeeded");
        if (!json_object_object_get_ex(o, "responses", &a) || !json_object_is_type(a, json_type_array))
                return 0;
        size_t n = json_object_array_length(a);
        r->ops = calloc(MAX(n, 1u), sizeof(EtcdOpResult));
        if (!r->ops)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *x = json_object_array_get_idx(a, i), *y;
                EtcdOpResult *op = &r->ops[r->n_ops++];
                EtcdHeader h = {};
                if (json_object_object_get_ex(x, "response_range", &y)) {
                        int k = parse_range(y, op);
                        if (k < 0)
                                return k;
                } else if (json_object_object_get_ex(x, "response_put", &y)) {
                        op->type = ETCD_OP_PUT;
                        parse_header(y, &h);
                        op->revision = h.revision;
                } else if (json_object_object_get_ex(x, "response_delete_range", &y)) {
                        op->type = ETCD_OP_DELETE;
                        op->deleted = get_int(y, "deleted");
                        parse_header(y, &h);
                        op->revision = h.revision;
                }
        }
        return 0;
}

static int parse_events(json_object *o, EtcdResult *r) {
        json_object *a;
        if (!json_object_object_get_ex(o, "events", &a) || !json_object_is_type(a, json_type_array))
                return 0;
        size_t n = json_object_array_length(a);
        r->events = calloc(MAX(n, 1u), sizeof(EtcdEvent));
        if (!r->events)
                return -ENOMEM;
        for (size_t i = 0; i < n; i++) {
                json_object *x = json_object_array_get_idx(a, i), *kv;
                EtcdEvent *e = &r->events[r->n_events++];
                const char *t = get_str(x, "type");
                e->type = t && strcmp(t, "DELETE") == 0 ? ETCD_EVENT_DELETE : ETCD_EVENT_PUT;
                if (json_object_object_get_ex(x, "kv", &kv)) {
                        int k = parse_kv(kv, &e->kv);
                        if (k < 0)
                                return k;
                } else if (!(e->kv.key = strdup("")) || !(e->kv.value = strdup("")))
                        return -ENOMEM;
        }
        return 0;
}

int etcd_grpc_code_to_errno(int code) {
        switch (code) {
        case 0:
                return 0;
        case 1:         /* CANCELLED */
                return -ECANCELED;
        case 3:         /* INVALID_ARGUMENT */
                return -EINVAL;
        case 4:         /* DEADLINE_EXCEEDED: "request timed out" */
                return -ETIMEDOUT;
        case 5:         /* NOT_FOUND: "requested lease not found" */
                return -ENOENT;
        case 6:         /* ALREADY_EXISTS */
                return -EEXIST;
        case 7:         /* PERMISSION_DENIED */
        case 16:        /* UNAUTHENTICATED */
                return -EACCES;
        case 8:         /* RESOURCE_EXHAUSTED: quota */
                return -ENOSPC;
        case 9:         /* FAILED_PRECONDITION */
                return -EBUSY;
        case 11:        /* OUT_OF_RANGE: compacted revision */
                return -ESTALE;
        case 14:        /* UNAVAILABLE: "no leader", "leader changed", stopping */
                return -EAGAIN;
        default:
                return -EIO;
        }
}

static int parse_error(json_object *e, EtcdResult *r) {
        /* Unary: {"error": "...", "code": N, "message": "..."}; streamed: {"error": {...}}. */
        json_object *inner = json_object_is_type(e, json_type_object) ? e : NULL;
        int code = inner ? (int) get_int(inner, "grpc_code") : 0;
        if (inner && !code)
                code = (int) get_int(inner, "code");
        const char *m = inner ? (get_str(inner, "message") ?: get_str(inner, "error")) : json_object_get_string(e);
        if (m && !(r->message = strdup(m)))
                return -ENOMEM;
        int k = etcd_grpc_code_to_errno(code);
        return k < 0 ? k : -EIO;
}

int etcd_json_parse(const char *body, size_t len, EtcdResult *r) {
        *r = (EtcdResult) {};
        json_object *root = NULL, *x;
        int k = json_parse_buffer(body, len, &root);
        if (k < 0)
                return -EBADMSG;
        if (!json_object_is_type(root, json_type_object)) {
                json_object_put(root);
                return -EBADMSG;
        }
        json_object *o = root;
        if (json_object_object_get_ex(root, "result", &x) && json_object_is_type(x, json_type_object))
                o = x;
        if (json_object_object_get_ex(root, "error", &x) && x) {
                if (json_object_is_type(x, json_type_object)) {
                        k = parse_error(x, r);
                } else {
                        /* unary error: code and message sit next to "error" */
                        k = parse_error(root, r);
                }
                json_object_put(root);
                return k;
        }
        parse_header(o, &r->header);
        r->lease_id = get_int(o, "ID");
        r->ttl = get_int(o, "TTL");
        r->leader = get_uint(o, "leader");
        r->raft_index = get_int(o, "raftIndex");
        r->created = get_bool(o, "created");
        r->canceled = get_bool(o, "canceled");
        r->compact_revision = get_int(o, "compact_revision");
        r->watch_id = get_int(o, "watch_id");
        const char *v = get_str(o, "version");
        if (v && !(r->version = strdup(v)))
                k = -ENOMEM;
        if (k >= 0 && json_object_object_get_ex(o, "kvs", &x)) {
                r->ops = calloc(1, sizeof(EtcdOpResult));
                if (!r->ops)
                        k = -ENOMEM;
                else {
                        r->n_ops = 1;
                        k = parse_range(o, &r->ops[0]);
                }
        } else if (k >= 0 && json_object_object_get_ex(o, "count", &x)) {
                /* a range that found nothing still answers its count */
                r->ops = calloc(1, sizeof(EtcdOpResult));
                if (!r->ops)
                        k = -ENOMEM;
                else {
                        r->n_ops = 1;
                        k = parse_range(o, &r->ops[0]);
                }
        }
        if (k >= 0 && json_object_object_get_ex(o, "responses", &x))
                k = parse_txn(o, r);
        else if (k >= 0)
                r->succeeded = get_bool(o, "succeeded");
        if (k >= 0)
                k = parse_events(o, r);
        if (k >= 0 && (r->canceled) && !r->message) {
                const char *reason = get_str(o, "cancel_reason");
                if (reason && !(r->message = strdup(reason)))
                        k = -ENOMEM;
        }
        json_object_put(root);
        if (k < 0)
                etcd_result_done(r);
        return k;
}

void etcd_result_done(EtcdResult *r) {
        for (size_t i = 0; i < r->n_ops; i++) {
                for (size_t j = 0; j < r->ops[i].n_kvs; j++)
                        kv_done(&r->ops[i].kvs[j]);
                free(r->ops[i].kvs);
        }
        free(r->ops);
        for (size_t i = 0; i < r->n_events; i++)
                kv_done(&r->events[i].kv);
        free(r->events);
        free((char *) r->message);
        free(r->version);
        *r = (EtcdResult) {};
}

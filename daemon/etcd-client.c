/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "etcd-client.h"
#include "etcd-http.h"
#include "macro.h"

struct EtcdClient {
        struct ev_loop *loop;
        EtcdHttp *http;
        usec_t request_timeout;
};

typedef enum CallKind {
        CALL_PLAIN,
        CALL_RANGE,             /* n_ops is at least 1 */
} CallKind;

struct EtcdCall {
        EtcdClient *client;
        EtcdHttpRequest *req;
        CallKind kind;
        EtcdCallback cb;
        EtcdStreamFn on_message;
        void *userdata;
};

int etcd_client_new(struct ev_loop *loop, const EtcdClientOptions *o, EtcdClient **ret) {
        EtcdClient *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->loop = loop;
        c->request_timeout = o->request_timeout ?: 5 * USEC_PER_SEC;
        EtcdHttpOptions h = {
                .endpoints = o->endpoints,
                .n_endpoints = o->n_endpoints,
                .ca_file = o->ca_file,
                .cert_file = o->cert_file,
                .key_file = o->key_file,
                .connect_timeout = o->connect_timeout,
        };
        int k = etcd_http_new(loop, &h, &c->http);
        if (k < 0) {
                free(c);
                return k;
        }
        *ret = c;
        return 0;
}

EtcdClient *etcd_client_free(EtcdClient *c) {
        if (!c)
                return NULL;
        etcd_http_free(c->http);        /* outstanding calls end with -ECANCELED */
        free(c);
        return NULL;
}

struct ev_loop *etcd_client_get_loop(EtcdClient *c) {
        return c->loop;
}

usec_t etcd_client_get_request_timeout(EtcdClient *c) {
        return c->request_timeout;
}

void etcd_call_cancel(EtcdCall *call) {
        if (!call)
                return;
        etcd_http_cancel(call->req);
        free(call);
}

static int result_from_body(int error, long status, const char *body, size_t len, const char *endpoint,
                            CallKind kind, EtcdResult *r) {
        *r = (EtcdResult) {};
        if (error < 0) {
                const char *m = error == -ECONNREFUSED ? "no etcd endpoint could be reached"
                                : error == -ETIMEDOUT  ? "etcd did not answer in time"
                                : error == -EPROTO     ? "TLS handshake with etcd failed"
                                : error == -ECANCELED  ? "cancelled"
                                                       : "transport error talking to etcd";
                r->message = strdup(m);
                r->endpoint = endpoint;
                return error;
        }
        int k = etcd_json_parse(body, len, r);
        r->endpoint = endpoint;
        if (k >= 0 && status != 200) {
                k = -EIO;       /* a non-200 without an error body */
                if (!r->message && asprintf((char **) &r->message, "HTTP status %ld from etcd", status) < 0)
                        r->message = NULL;
        }
        if (k == -EBADMSG && !r->message)
                r->message = strdup("etcd sent a reply that is not JSON");
        if (k >= 0 && kind == CALL_RANGE && r->n_ops == 0) {
                r->ops = calloc(1, sizeof(EtcdOpResult));
                if (!r->ops)
                        return -ENOMEM;
                r->n_ops = 1;
                r->ops[0].revision = r->header.revision;
        }
        return k;
}

static void call_done(int error, long status, const char *body, size_t len, const char *endpoint, void *userdata) {
        EtcdCall *call = userdata;
        EtcdResult r;
        int k = result_from_body(error, status, body, len, endpoint, call->kind, &r);
        EtcdCallback cb = call->cb;
        EtcdClient *c = call->client;
        void *ud = call->userdata;
        free(call);
        if (cb)
                cb(c, k, &r, ud);
        etcd_result_done(&r);
}

/* Sends a call's request; the call is freed if it cannot be sent, else handed to ret. */
static int call_start(EtcdClient *c, EtcdCall *call, const EtcdHttpPost *p, EtcdCall **ret) {
        int k = etcd_http_post(c->http, p, &call->req);
        if (k < 0) {
                free(call);
                return k;
        }
        if (ret)
                *ret = call;
        return 0;
}

static int post(EtcdClient *c, const char *path, char *body, bool idempotent, CallKind kind, EtcdCallback cb,
                void *userdata, EtcdCall **ret) {
        _cleanup_free_ char *b = body;
        if (!b)
                return -ENOMEM;
        EtcdCall *call = calloc(1, sizeof(*call));
        if (!call)
                return -ENOMEM;
        *call = (EtcdCall) { .client = c, .kind = kind, .cb = cb, .userdata = userdata };
        EtcdHttpPost p = {
                .path = path,
                .body = b,
                .timeout = c->request_timeout,
                .idempotent = idempotent,
                .on_done = call_done,
                .userdata = call,
        };
        return call_start(c, call, &p, ret);
}

int etcd_lease_grant(EtcdClient *c, int64_t ttl_sec, EtcdCallback cb, void *userdata, EtcdCall **ret) {
        /* Not idempotent in effect (a second grant is a second lease), but a lost one only
         * expires unused: retried like a read. */
        return post(c, "/v3/lease/grant", etcd_json_lease_grant(ttl_sec), true, CALL_PLAIN, cb, userdata, ret);
}

int etcd_lease_keepalive(EtcdClient *c, int64_t id, EtcdCallback cb, void *userdata, EtcdCall **ret) {
        return post(c, "/v3/lease/keepalive", etcd_json_lease_id(id), true, CALL_PLAIN, cb, userdata, ret);
}

int etcd_lease_revoke(EtcdClient *c, int64_t id, EtcdCallback cb, void *userdata, EtcdCall **ret) {
        return post(c, "/v3/lease/revoke", etcd_json_lease_id(id), true, CALL_PLAIN, cb, userdata, ret);
}

int etcd_range(EtcdClient *c, const EtcdOp *op, EtcdCallback cb, void *userdata, EtcdCall **ret) {
        return post(c, "/v3/kv/range", etcd_json_range(op), true, CALL_RANGE, cb, userdata, ret);
}

int etcd_txn(EtcdClient *c, const EtcdTxn *t, EtcdCallback cb, void *userdata, EtcdCall **ret) {
        return post(c, "/v3/kv/txn", etcd_json_txn(t), false, CALL_PLAIN, cb, userdata, ret);
}

int etcd_status(EtcdClient *c, int endpoint, EtcdCallback cb, void *userdata, EtcdCall **ret) {
        if (endpoint < 0)
                return post(c, "/v3/maintenance/status", strdup("{}"), true, CALL_PLAIN, cb, userdata, ret);
        EtcdCall *call = calloc(1, sizeof(*call));
        if (!call)
                return -ENOMEM;
        *call = (EtcdCall) { .client = c, .cb = cb, .userdata = userdata };
        EtcdHttpPost p = {
                .path = "/v3/maintenance/status",
                .body = "{}",
                .timeout = c->request_timeout,
                .pin_endpoint = true,
                .endpoint = (size_t) endpoint,
                .on_done = call_done,
                .userdata = call,
        };
        return call_start(c, call, &p, ret);
}

static void stream_line(EtcdHttpRequest *req, const char *line, size_t len, void *userdata) {
        EtcdCall *call = userdata;
        EtcdResult r;
        int k = etcd_json_parse(line, len, &r);
        r.endpoint = etcd_http_request_endpoint(req);
        call->on_message(call->client, k, &r, call->userdata);
        etcd_result_done(&r);
}

int etcd_client_stream(EtcdClient *c, const char *path, const char *body, bool require_leader,
                       EtcdStreamFn on_message, EtcdCallback on_end, void *userdata, EtcdCall **ret) {
        EtcdCall *call = calloc(1, sizeof(*call));
        if (!call)
                return -ENOMEM;
        *call = (EtcdCall) { .client = c, .cb = on_end, .on_message = on_message, .userdata = userdata };
        EtcdHttpPost p = {
                .path = path,
                .body = body,
                /* Not sent again by the transport once it reached etcd: the body says where
                 * the stream starts, and only the caller (etcd-watch.c) knows where to
                 * resume. */
                .idempotent = false,
                .require_leader = require_leader,
                .on_line = stream_line,
                .on_done = call_done,
                .userdata = call,
        };
        return call_start(c, call, &p, ret);
}

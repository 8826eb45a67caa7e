/* SPDX-License-Identifier: MIT */
#pragma once

/* HTTP/1.1 POSTs to etcd's JSON gateway through libcurl's multi interface, driven by a libev
 * loop (CURLMOPT_SOCKETFUNCTION/TIMERFUNCTION): nothing here blocks the loop.
 *
 * Endpoints are tried in order from the current one. A request that cannot connect moves
 * the current endpoint on and is tried on the next, every endpoint at most once; a request
 * that failed after it may have been sent is retried that way only if the caller marked it
 * idempotent. A request's done callback fires exactly once, from the loop, unless the
 * request was cancelled with etcd_http_cancel(); etcd_http_free() fires it with
 * -ECANCELED for every request still in flight. */

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>

#include "usec.h"

typedef struct EtcdHttp EtcdHttp;
typedef struct EtcdHttpRequest EtcdHttpRequest;

typedef struct EtcdHttpOptions {
        char *const *endpoints;         /* base URLs, e.g. "http://127.0.0.1:2379" */
        size_t n_endpoints;
        const char *ca_file;            /* TLS, passed to libcurl as they are; NULL = default */
        const char *cert_file;
        const char *key_file;
        usec_t connect_timeout;         /* 0 = 2 s */
} EtcdHttpOptions;

/* A streamed response body, one line (one JSON message of the gateway's stream) at a time,
 * without its '\n'. It may cancel its own request. */
typedef void (*EtcdHttpLineFn)(EtcdHttpRequest *r, const char *line, size_t len, void *userdata);

/* error: 0, or a negative errno for a transport failure (-ECONNREFUSED when no endpoint could
 * be reached, -ETIMEDOUT, -EPROTO for TLS, -EIO). status: the HTTP status (0 if none). body:
 * the whole body (NUL-terminated; for a streamed request, what followed the last line). */
typedef void (*EtcdHttpDoneFn)(int error, long status, const char *body, size_t len, const char *endpoint,
                               void *userdata);

int etcd_http_new(struct ev_loop *loop, const EtcdHttpOptions *o, EtcdHttp **ret);
/* Not from a callback of its own requests. NULL-safe, returns NULL. */
EtcdHttp *etcd_http_free(EtcdHttp *h);

typedef struct EtcdHttpPost {
        const char *path;               /* "/v3/kv/range" */
        const char *body;               /* JSON; copied */
        usec_t timeout;                 /* whole request; 0 = none (streams) */
        bool idempotent;                /* safe to send again to another endpoint */
        bool require_leader;            /* fail (and end streams) when the member has no leader */
        bool pin_endpoint;              /* only endpoints[endpoint], no failover */
        size_t endpoint;
        EtcdHttpLineFn on_line;         /* NULL: the body is delivered whole to on_done */
        EtcdHttpDoneFn on_done;
        void *userdata;
} EtcdHttpPost;

/* ret may be NULL when the caller never cancels. */
int etcd_http_post(EtcdHttp *h, const EtcdHttpPost *p, EtcdHttpRequest **ret);

/* Drops the request without calling its done callback. Also from its own line callback. */
void etcd_http_cancel(EtcdHttpRequest *r);

/* The endpoint the request went to (last tried). */
const char *etcd_http_request_endpoint(const EtcdHttpRequest *r);

/* The endpoint new requests go to first. */
const char *etcd_http_current_endpoint(const EtcdHttp *h);

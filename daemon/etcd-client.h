/* SPDX-License-Identifier: MIT */
#pragma once

/* The etcd v3 operations agend needs, asynchronous on a libev loop, over the JSON gateway
 * (etcd-http.h carries them, etcd-json.h spells them). Each call takes a callback that fires
 * exactly once from the loop — never from inside the call — unless the call is cancelled
 * with etcd_call_cancel(); etcd_client_free() fires the outstanding ones with -ECANCELED.
 *
 * Errors are negative errno: the transport's (-ECONNREFUSED: no endpoint reachable,
 * -ETIMEDOUT: no answer within the request timeout, -EPROTO: TLS) or etcd's by gRPC code
 * (-EAGAIN: no leader / unavailable, -ETIMEDOUT: etcd's own request timeout, -ENOENT: lease
 * not found, -ESTALE: compacted, -EACCES, -EINVAL); r->message then has the words. The
 * result is borrowed for the callback's duration. */

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "etcd-json.h"
#include "usec.h"

typedef struct EtcdClient EtcdClient;
typedef struct EtcdCall EtcdCall;

typedef struct EtcdClientOptions {
        char *const *endpoints;
        size_t n_endpoints;
        const char *ca_file;
        const char *cert_file;
        const char *key_file;
        usec_t request_timeout;         /* each unary call, all retries included; 0 = 5 s */
        usec_t connect_timeout;         /* 0 = 2 s */
} EtcdClientOptions;

typedef void (*EtcdCallback)(EtcdClient *c, int error, const EtcdResult *r, void *userdata);

int etcd_client_new(struct ev_loop *loop, const EtcdClientOptions *o, EtcdClient **ret);
/* Not from one of its callbacks. NULL-safe, returns NULL. */
EtcdClient *etcd_client_free(EtcdClient *c);
struct ev_loop *etcd_client_get_loop(EtcdClient *c);
usec_t etcd_client_get_request_timeout(EtcdClient *c);

/* Drops a call: its callback will not fire. NULL-safe. */
void etcd_call_cancel(EtcdCall *call);

/* r->lease_id, r->ttl (etcd may grant more than asked). */
int etcd_lease_grant(EtcdClient *c, int64_t ttl_sec, EtcdCallback cb, void *userdata, EtcdCall **ret);
/* One keepalive round: r->ttl is the TTL the lease was refreshed to, 0 if it no longer
 * exists. */
int etcd_lease_keepalive(EtcdClient *c, int64_t id, EtcdCallback cb, void *userdata, EtcdCall **ret);
/* Deletes the lease and every key attached to it. cb may be NULL (fire and forget). */
int etcd_lease_revoke(EtcdClient *c, int64_t id, EtcdCallback cb, void *userdata, EtcdCall **ret);

/* One range: r->ops[0] holds kvs, count, more (n_ops is 1 even when nothing matched). */
int etcd_range(EtcdClient *c, const EtcdOp *op, EtcdCallback cb, void *userdata, EtcdCall **ret);
/* r->succeeded, r->header.revision, one r->ops[i] per op of the branch taken. Not retried
 * on another endpoint once it may have reached etcd: the caller decides after -ETIMEDOUT
 * (re-read, e.g. by create revision, rather than put twice). */
int etcd_txn(EtcdClient *c, const EtcdTxn *t, EtcdCallback cb, void *userdata, EtcdCall **ret);
/* The member's status: r->version, r->leader (0 = none), r->header, r->raft_index,
 * r->endpoint. endpoint: index into the endpoints, or -1 for the current one. */
int etcd_status(EtcdClient *c, int endpoint, EtcdCallback cb, void *userdata, EtcdCall **ret);

/* For etcd-watch.c: a streamed POST whose every message is parsed into an EtcdResult. */
typedef void (*EtcdStreamFn)(EtcdClient *c, int error, const EtcdResult *r, void *userdata);
int etcd_client_stream(EtcdClient *c, const char *path, const char *body, bool require_leader,
                       EtcdStreamFn on_message, EtcdCallback on_end, void *userdata, EtcdCall **ret);

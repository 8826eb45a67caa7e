/* SPDX-License-Identifier: MIT */
#pragma once

/* etcd v3 requests and replies as the JSON gateway spells them: keys and values base64,
 * 64-bit integers as strings, enums by name, fields at their default value left out. Plain
 * data in, plain data out; no I/O. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct EtcdHeader {
        uint64_t cluster_id;
        uint64_t member_id;
        int64_t revision;
        uint64_t raft_term;
} EtcdHeader;

typedef struct EtcdKv {
        char *key;                      /* NUL-terminated; key_len excludes the NUL */
        size_t key_len;
        char *value;
        size_t value_len;
        int64_t create_revision;
        int64_t mod_revision;
        int64_t version;
        int64_t lease;
} EtcdKv;

typedef enum EtcdCompareTarget {
        ETCD_TARGET_VERSION,
        ETCD_TARGET_CREATE,
        ETCD_TARGET_MOD,
        ETCD_TARGET_VALUE,
        ETCD_TARGET_LEASE,
} EtcdCompareTarget;

typedef enum EtcdCompareResult {
        ETCD_EQUAL,
        ETCD_GREATER,
        ETCD_LESS,
        ETCD_NOT_EQUAL,
} EtcdCompareResult;

typedef struct EtcdCompare {
        const char *key;
        EtcdCompareTarget target;
        EtcdCompareResult result;
        int64_t number;                 /* version, create/mod revision, lease */
        const char *value;              /* ETCD_TARGET_VALUE */
} EtcdCompare;

typedef enum EtcdOpType {
        ETCD_OP_RANGE,
        ETCD_OP_PUT,
        ETCD_OP_DELETE,
} EtcdOpType;

typedef struct EtcdOp {
        EtcdOpType type;
        const char *key;
        bool prefix;                    /* range/delete every key starting with key */
        const char *value;              /* put */
        int64_t lease;                  /* put; 0 = none */
        bool sort_by_create;            /* range: ascending create revision */
        int64_t limit;                  /* range; 0 = all */
        bool count_only;                /* range */
} EtcdOp;

typedef struct EtcdTxn {
        const EtcdCompare *compare;
        size_t n_compare;
        const EtcdOp *success;
        size_t n_success;
        const EtcdOp *failure;
        size_t n_failure;
} EtcdTxn;

/* What one operation answered; a txn answers one of these per op of the branch taken. */
typedef struct EtcdOpResult {
        EtcdOpType type;
        EtcdKv *kvs;                    /* range */
        size_t n_kvs;
        bool more;
        int64_t count;
        int64_t deleted;                /* delete */
        int64_t revision;               /* the header revision of this op: for a put, the
                                         * key's new mod revision (its create revision when
                                         * it did not exist before) */
} EtcdOpResult;

typedef enum EtcdEventType {
        ETCD_EVENT_PUT,
        ETCD_EVENT_DELETE,
} EtcdEventType;

typedef struct EtcdEvent {
        EtcdEventType type;
        EtcdKv kv;                      /* for a delete: key and mod_revision only */
} EtcdEvent;

typedef struct EtcdResult {
        EtcdHeader header;
        const char *endpoint;           /* which member answered (or was tried last) */
        const char *message;            /* etcd's or the transport's words on an error */
        /* range, and the ops of a txn */
        bool succeeded;                 /* txn: the compare held */
        EtcdOpResult *ops;
        size_t n_ops;
        /* lease grant / keepalive */
        int64_t lease_id;
        int64_t ttl;                    /* s; keepalive: 0 = the lease is gone */
        /* status */
        char *version;
        uint64_t leader;
        int64_t raft_index;
        /* watch */
        EtcdEvent *events;
        size_t n_events;
        bool created;
        bool canceled;
        int64_t compact_revision;
        int64_t watch_id;
} EtcdResult;

void etcd_result_done(EtcdResult *r);

/* Base64 (RFC 4648, padded). */
char *etcd_base64_encode(const void *p, size_t len);
int etcd_base64_decode(const char *s, char **ret, size_t *ret_len);

/* The smallest key after every key starting with prefix ("" if none: to the end). */
char *etcd_prefix_end(const char *prefix);

/* Request bodies, malloc'ed; NULL on OOM. */
char *etcd_json_lease_grant(int64_t ttl);
char *etcd_json_lease_id(int64_t id);
char *etcd_json_range(const EtcdOp *op);
char *etcd_json_txn(const EtcdTxn *t);
char *etcd_json_watch_create(const char *key, bool prefix, int64_t start_revision);

/* Parses a reply body into r (zeroed first). A gateway error body ({"error", "code",
 * "message"}) returns the errno for its gRPC code, with r->message set. Streamed replies are
 * {"result": {...}} or {"error": {...}}: both are accepted. */
int etcd_json_parse(const char *body, size_t len, EtcdResult *r);

/* The gRPC status code of an error (as etcd's gateway reports it) as a negative errno. */
int etcd_grpc_code_to_errno(int code);

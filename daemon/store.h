/* SPDX-License-Identifier: MIT */
#pragma once

/* Durable state behind a vtable, like redis's ae backends: store-sqlite.c is the one
 * backend today. Writes join the current transaction, which the manager commits once per
 * loop iteration (group commit) before it writes any reply; so no reply reports a state
 * change that is not durable at the configured sync level. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "engine.h"

/* A lease as stored. Borrowed strings, valid during the load callback. */
typedef struct LeaseRecord {
        const char *id;
        const char *secret;
        const char *resource;
        const char *description;
        unsigned units;
        bool exclusive;
        bool detached;
        uint64_t token;
        Owner owner;
        usec_t created;
        usec_t ttl;
        usec_t deadline;        /* CLOCK_MONOTONIC of the boot that stored it */
} LeaseRecord;

/* A queued waiter as stored: its place, so that the order survives a restart. Borrowed
 * strings, valid during the load callback. */
typedef struct WaiterRecord {
        const char *ticket;
        uint64_t seq;
        const char *resource;
        const char *description;
        unsigned units;
        bool exclusive;
        Owner owner;
        usec_t since;
} WaiterRecord;

typedef struct StoreOps {
        int (*lease_save)(Store *s, const Lease *l);
        int (*lease_delete)(Store *s, const Lease *l);
        int (*event_append)(Store *s, const Event *e);
        int (*token_save)(Store *s, uint64_t last_token);
        /* Queued waiters, written in the same transaction as the leases (group commit). */
        int (*waiter_save)(Store *s, const Waiter *w);
        int (*waiter_delete)(Store *s, const Waiter *w);
        /* 1 if a transaction was committed, 0 if there was nothing to commit, -errno. */
        int (*commit)(Store *s);
        int (*load)(Store *s, int (*cb)(const LeaseRecord *r, void *userdata), void *userdata);
        /* The stored waiters, in queue order (by seq). */
        int (*load_waiters)(Store *s, int (*cb)(const WaiterRecord *r, void *userdata), void *userdata);
        /* *ret is malloc'ed, NULL if unset. */
        int (*meta_get)(Store *s, const char *key, char **ret);
        int (*meta_set)(Store *s, const char *key, const char *value);
        /* The last limit events (of resource, if not NULL), oldest first. */
        int (*history)(Store *s, const char *resource, unsigned limit,
                       int (*cb)(const Event *e, void *userdata), void *userdata);
        int64_t (*size)(Store *s);
        void (*free)(Store *s);
} StoreOps;

struct Store {
        const StoreOps *ops;
};

typedef enum StoreSync {
        STORE_SYNC_NORMAL,
        STORE_SYNC_FULL,
        _STORE_SYNC_MAX,
        _STORE_SYNC_INVALID = -EINVAL,
} StoreSync;

/* "normal", "full": the words of Sync= and --sync. */
const char *store_sync_to_string(StoreSync s);
StoreSync store_sync_from_string(const char *s);

/* Opens (creating if needed) dir/agend.db. A database it cannot read, or of a newer
 * schema, fails with a message in *ret_error (malloc'ed) and is left as it is. */
int store_sqlite_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret,
                      char **ret_error);

static inline Store *store_free(Store *s) {
        if (s)
                s->ops->free(s);
        return NULL;
}

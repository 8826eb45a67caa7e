/* SPDX-License-Identifier: MIT */
#pragma once

/* Durable state behind a vtable, like redis's ae backends: store-sqlite.c is the one
 * backend today. Writes join the current transaction, which the manager commits once per
 * loop iteration (group commit) before it writes any reply; so no reply reports a state
 * change that is not durable at the configured sync level. */

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

typedef struct StoreOps {
        int (*lease_save)(Store *s, const Lease *l);
        int (*lease_delete)(Store *s, const Lease *l);
        int (*event_append)(Store *s, const Event *e);
        int (*token_save)(Store *s, uint64_t last_token);
        /* 1 if a transaction was committed, 0 if there was nothing to commit, -errno. */
        int (*commit)(Store *s);
        int (*load)(Store *s, int (*cb)(const LeaseRecord *r, void *userdata), void *userdata);
        /* *ret is malloc'ed, NULL if unset. */
        int (*meta_get)(Store *s, const char *key, char **ret);
        int (*meta_set)(Store *s, const char *key, const char *value);
        /* The last limit events (of resource, if not NULL) older than the event numbered
         * before (0 = the newest), oldest first. Event.seq is set. */
        int (*history)(Store *s, const char *resource, uint64_t before, unsigned limit,
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
} StoreSync;

/* Opens (creating if needed) dir/agend.db. A database it cannot read, or of a newer
 * schema, fails with a message in *ret_error (malloc'ed) and is left as it is. */
int store_sqlite_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret,
                      char **ret_error);

static inline Store *store_free(Store *s) {
        if (s)
                s->ops->free(s);
        return NULL;
}

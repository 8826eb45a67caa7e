/* SPDX-License-Identifier: MIT */
#pragma once

/* Durable state behind a vtable, like redis's ae backends. The contract is plain data:
 * records of strings and integers, no engine structure, so a second backend (etcd is
 * planned, brief §7) needs nothing of the engine's internals. Backends:
 * - store-sqlite.c, the daemon's store (a ring of rows, each an event and the lease change
 *   it reports, folded into a leases snapshot in a file of its own by a thread of its own,
 *   store-fold.h; docs/architecture.md "The database");
 * - store-memory.c, for tests: everything in memory, with fault injection.
 *
 * Writes join the current transaction, which commit() commits. The daemon calls the real
 * store from its commit thread (store-pipe.h: the loop records a batch, the thread replays
 * and commits it, the batch's replies wait for that), so no reply reports a state change
 * that is not durable at the configured sync level. A backend is used by one thread at a
 * time, not always the same one. */

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "usec.h"

typedef struct Store Store;

/* Who held or acted, as stored. */
typedef struct OwnerRecord {
        uint32_t uid;
        uint32_t gid;
        int32_t pid;
        const char *comm;       /* NULL for none */
        const char *unit;       /* NULL for none */
} OwnerRecord;

/* A lease as stored. Borrowed strings, valid during the call (or the load callback). */
typedef struct LeaseRecord {
        const char *id;
        const char *secret;
        const char *resource;
        const char *description;
        unsigned units;
        bool exclusive;
        bool detached;
        uint64_t token;
        OwnerRecord owner;
        usec_t created;         /* CLOCK_REALTIME */
        usec_t ttl;             /* 0 = none */
        usec_t deadline;        /* CLOCK_MONOTONIC of the boot that stored it; USEC_INFINITY = none */
} LeaseRecord;

/* An event as stored and as History reads it back. Borrowed strings. */
typedef struct EventRecord {
        const char *type;       /* "granted", "released", ... (the wire's names) */
        usec_t time;            /* CLOCK_REALTIME */
        const char *resource;
        const char *lease;      /* NULL for none */
        uint64_t token;         /* 0 for none */
        const OwnerRecord *owner;       /* NULL for none */
        unsigned units;
        const char *reason;     /* NULL for none */
        const OwnerRecord *revoked_by;  /* NULL for none */
        uint64_t seq;           /* its number in the history; set only by Store.history */
} EventRecord;

/* A queued waiter as stored: its place, so that the order survives a restart. Borrowed
 * strings, valid during the call (or the load callback). */
typedef struct WaiterRecord {
        const char *ticket;
        uint64_t seq;
        const char *resource;
        const char *description;
        unsigned units;
        bool exclusive;
        OwnerRecord owner;
        usec_t since;
        /* CLOCK_MONOTONIC of the boot that stored it: when a restart first restored the
         * place without its waiter (its reclaim grace counts from then, however many
         * restarts follow); 0 while its waiter holds it. */
        usec_t unclaimed_since;
} WaiterRecord;

typedef struct StoreOps {
        int (*lease_save)(Store *s, const LeaseRecord *l);
        int (*lease_delete)(Store *s, const char *id);
        int (*event_append)(Store *s, const EventRecord *e);
        /* Every token up to last_token may have been handed out: a restart must start
         * above it (the backend may reserve ahead). */
        int (*token_save)(Store *s, uint64_t last_token);
        /* Queued waiters, written in the same transaction as the leases (group commit). */
        int (*waiter_save)(Store *s, const WaiterRecord *w);
        int (*waiter_delete)(Store *s, uint64_t seq);
        /* 1 if a transaction was committed, 0 if there was nothing to commit, -errno. */
        int (*commit)(Store *s);
        /* Every stored lease, in no particular order (sorting a million rows would cost a
         * restart about a third of its time). */
        int (*load)(Store *s, int (*cb)(const LeaseRecord *r, void *userdata), void *userdata);
        /* The stored waiters, in queue order (by seq). */
        int (*load_waiters)(Store *s, int (*cb)(const WaiterRecord *r, void *userdata), void *userdata);
        /* *ret is malloc'ed, NULL if unset. */
        int (*meta_get)(Store *s, const char *key, char **ret);
        int (*meta_set)(Store *s, const char *key, const char *value);
        /* The last limit events (of resource, if not NULL) older than the event numbered
         * before (0 = the newest), oldest first. EventRecord.seq is set. */
        int (*history)(Store *s, const char *resource, uint64_t before, unsigned limit,
                       int (*cb)(const EventRecord *e, void *userdata), void *userdata);
        int64_t (*size)(Store *s);
        /* Bytes appended to the durable log since the store opened (sqlite: WAL frames,
         * headers included), for Status and the benchmark; NULL if the backend cannot say. */
        int64_t (*log_bytes)(Store *s);
        /* size() and log_bytes() may be called from another thread while a commit runs, so
         * that a Status need not wait for the commit in flight (which can take a checkpoint's
         * time) and hold up agend's loop meanwhile. */
        bool sizes_any_thread;
        /* Optional, for the pipelined commit, which commits on the loop thread when it
         * may (store-pipe.c, manager.c): maintenance_due() says whether a commit now would
         * also do work that can take long (sqlite: checkpoint the WAL, or wait for a fold
         * thread fallen behind); while defer_maintenance(true) is in force, commits leave
         * the checkpoint to a later commit. */
        bool (*maintenance_due)(Store *s);
        void (*defer_maintenance)(Store *s, bool defer);
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

/* Opens (creating if needed) dir/agend.db and its leases snapshot dir/agend-leases.db. A
 * database it cannot read, or of a newer schema, fails with a message in *ret_error
 * (malloc'ed) and is left as it is. */
int store_sqlite_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret,
                      char **ret_error);
/* The store's own sqlite connection (a struct sqlite3 *), for tests that read the tables:
 * the database is held exclusively while the store is open, so a second connection cannot.
 * The snapshot is attached to it as snap, and what was handed to the fold thread is in it
 * (or the thread's last attempt failed) when this returns. */
void *store_sqlite_handle(Store *s);
/* The SQL that makes, on a connection to agend.db with agend-leases.db attached as snap,
 * the temporary view current_leases: what a restart restores. */
const char *store_sqlite_inspect_sql(void);
/* Frees the store as if the process had died at this point (for tests): nothing more is
 * committed, and changes handed to the fold thread but not written stay unwritten. */
void store_sqlite_crash(Store *s);

/* The in-memory store, for tests. Faults: fail_commit (if > 0) makes the fail_commit-th
 * commit that has something to commit fail with fail_errno (default -EIO), the batch rolled
 * back; commit_delay (µs) makes every commit sleep that long first; on_commit, if set, is
 * called after each successful commit with the number of commits so far. */
typedef struct StoreMemoryOptions {
        unsigned history_size;
        unsigned fail_commit;
        int fail_errno;
        usec_t commit_delay;
        void (*on_commit)(unsigned n_commits, void *userdata);
        void *userdata;
} StoreMemoryOptions;

int store_memory_new(const StoreMemoryOptions *opts, Store **ret);
/* Parses "memory[,fail-commit=N][,fail-errno=E][,delay-commit=USEC][,history=N]". */
int store_memory_from_spec(const char *spec, Store **ret);

/* The daemon's choice: sqlite, unless this is a build with test hooks and
 * AGEND_TEST_STORE names the in-memory store (tests of what leaves before a commit). */
int store_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret, char **ret_error);

static inline Store *store_free(Store *s) {
        if (s)
                s->ops->free(s);
        return NULL;
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* The fold thread of the sqlite store (store-sqlite.c): it writes the lease changes that
 * the commits put into agend.db's events ring into the leases snapshot, a database file
 * of its own (agend-leases.db), with its own sqlite connection.
 *
 * Why a thread and a file of its own: when many leases end at once (1 M expiring within
 * a minute), each folded change rewrites a random page of leases, and writing those pages
 * back from the WAL (the checkpoint, two syncs) took tens of milliseconds. In agend.db that
 * work held up every commit behind it, and with it every client's reply; here it holds up
 * only the next fold. The commits wait for the fold only when the ring is about to
 * overwrite a change that is not folded yet (store-sqlite.c, ring_guard()).
 *
 * The store hands over, after a commit made them durable, its oldest noted changes (one
 * FoldEntry per lease id: the last change) with the seq up to which every change is then
 * handed over; the thread writes them and that seq ('folded_seq' in the snapshot's meta)
 * in one transaction, at the store's sync level. A restart restores the snapshot plus the
 * changes in events after its folded_seq. */

#include <stdbool.h>
#include <stdint.h>

#include "store.h"

/* A value bound to a statement parameter. */
typedef enum ValueType {
        VALUE_NULL,
        VALUE_INT,
        VALUE_TEXT,
} ValueType;

typedef struct Value {
        ValueType type;
        int64_t i;
        const char *s;
} Value;

#define V_INT(x) ((Value) { .type = VALUE_INT, .i = (int64_t) (x) })
#define V_TEXT(x) ((Value) { .type = (x) ? VALUE_TEXT : VALUE_NULL, .s = (x) })
#define V_NULL ((Value) { .type = VALUE_NULL })

/* The columns of a leases row, in the order of the snapshot's table. */
enum {
        LEASE_COL_ID,
        LEASE_COL_SECRET,
        LEASE_COL_RESOURCE,
        LEASE_COL_UNITS,
        LEASE_COL_EXCLUSIVE,
        LEASE_COL_DETACHED,
        LEASE_COL_TOKEN,
        LEASE_COL_OWNER,        /* five: uid, gid, pid, comm, unit */
        LEASE_COL_DESCRIPTION = LEASE_COL_OWNER + 5,
        LEASE_COL_CREATED,
        LEASE_COL_TTL,
        LEASE_COL_DEADLINE,
        LEASE_COLS,
};

/* A lease id's last change after the fold point: a save keeps the leases row it makes
 * (its strings copied after the struct, the id first), a delete only the id. */
typedef struct FoldEntry FoldEntry;
struct FoldEntry {
        FoldEntry *prev, *next; /* in seq order */
        int64_t seq;            /* of the change's row in events */
        bool save;
        bool in_table;          /* the leases table may hold the id: a delete must be written */
        Value v[LEASE_COLS];    /* the leases row (a delete: v[0], the id) */
        char id[];
};

typedef struct FoldThread FoldThread;
typedef struct sqlite3 sqlite3;

/* A failed sqlite call as -errno (store-sqlite.c): -ENOSPC only for a lack of space that
 * a write reported, which is safe to retry once there is space. */
int sqlite_db_errno(sqlite3 *db, int rc);

/* Opens the snapshot (which must exist, with its tables) on a connection of its own and
 * starts the thread; folded: the snapshot's folded_seq as read at open. */
int fold_thread_start(const char *path, StoreSync sync, int64_t folded, FoldThread **ret, char **ret_error);
/* Writes what was handed over (if it can), stops the thread and closes the snapshot. */
FoldThread *fold_thread_stop(FoldThread *t);
/* Stops the thread and closes the snapshot without writing what is still handed over, as
 * if the process had died (for tests). */
FoldThread *fold_thread_abandon(FoldThread *t);

/* Takes the list head..tail (entries in seq order, all <= upto, malloc'ed; the thread
 * frees them) and, with it, every change up to upto. */
void fold_thread_hand_over(FoldThread *t, FoldEntry *head, FoldEntry *tail, int64_t upto);
/* The seq up to which every change is in the snapshot, committed. */
int64_t fold_thread_folded(FoldThread *t);
/* Until every change up to upto is in the snapshot: 0; or the error of an attempt begun
 * after this call, if it failed (the thread tries again). */
int fold_thread_wait(FoldThread *t, int64_t upto);
/* Until the thread has written all it was handed, or an attempt begun after this call
 * failed. */
void fold_thread_wait_idle(FoldThread *t);

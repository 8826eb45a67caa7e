/* SPDX-License-Identifier: MIT */
#pragma once

/* What agend does when the disk holding its database fills up (issue 11, defect 5).
 *
 * The engine applies a loop iteration's changes in memory, then the group commit writes
 * them; replies wait for that commit. A commit that fails for lack of space cannot be
 * undone in memory, so the store keeps the batch and can write it again (store-sqlite.c).
 * This guard makes sure there is room to do so:
 *
 * - a reserve file, agend.reserve (STORE_GUARD_RESERVE bytes, allocated), sits in the
 *   state directory while all is well;
 * - when a commit fails with -ENOSPC, the reserve is deleted and the same batch is
 *   committed again at once, so its replies go out as if nothing happened;
 * - from then on (and as soon as a periodic statvfs() finds less than STORE_GUARD_LOW
 *   bytes free) agend is *degraded*: Acquire is refused with io.agend.Lease.StorageError
 *   before it reaches the engine, while calls that do not add state (Release, Renew,
 *   Reclaim, Revoke, hang-ups, expiries) and every read go on;
 * - once the reserve is made again and 2 × STORE_GUARD_LOW bytes are still free after it,
 *   agend leaves the degraded mode by itself (checked every second). Each change is logged once and sent to
 *   systemd as STATUS=.
 * - If even the freed reserve is not enough, replies are *held* (not sent, since they
 *   would report changes that are not durable) and the commit is retried every second
 *   until space returns.
 *
 * Any other commit error (EIO, a failed fsync, EROFS) is returned as it is: the manager
 * stops without answering, as PostgreSQL does on a failed fsync (docs/reliability.md). */

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "store.h"

#define STORE_GUARD_RESERVE (16ULL << 20)
#define STORE_GUARD_LOW (8ULL << 20)

typedef struct StoreGuard StoreGuard;

/* Before the store opens: if the file system of dir is already short of space, deletes
 * the reserve left by the last run, so that opening and restoring have room, and starts
 * degraded. */
int store_guard_new(const char *dir, StoreGuard **ret);
/* Once the loop and the store exist: makes the reserve if there is room, and starts
 * checking free space. */
void store_guard_start(StoreGuard *g, struct ev_loop *loop, Store *store);
StoreGuard *store_guard_free(StoreGuard *g);

/* The pipelined commit (manager.c, store-pipe.c): whether a batch may be handed to the
 * commit thread now (not while a batch held for lack of space waits for its retry time);
 * and what a commit's result k means: >= 0 durable; -EINPROGRESS: the reserve was freed,
 * commit the same batch again now; -EAGAIN: held, committed again once may_commit says
 * so, no reply goes out meanwhile; any other negative errno: the store failed. */
bool store_guard_may_commit(const StoreGuard *g);
int store_guard_finish(StoreGuard *g, int k);

/* A synchronous commit (start-up). 1 committed, 0 nothing to commit, -EAGAIN: not committed for lack
 * of space, retried later: send no reply; any other negative errno: the store failed. */
int store_guard_commit(StoreGuard *g);

/* NULL while calls that add state may go on; else why not (for StorageError's reason). */
const char *store_guard_refusal(const StoreGuard *g);
/* "" or a note for STATUS=. */
const char *store_guard_status(const StoreGuard *g);

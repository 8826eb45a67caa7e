/* SPDX-License-Identifier: MIT */
#pragma once

/* The pipelined group commit (issue 12 item 1): the loop never waits on the disk.
 *
 * A StorePipe wraps the real store (sqlite, or the in-memory one of the tests). Its Store
 * face, which the engine writes to, only records each write as plain data in a batch
 * buffer on the loop thread. store_pipe_submit() hands the batch to the commit thread,
 * which replays it into the real store and commits it; an ev_async then calls done() on
 * the loop with the commit's result. Meanwhile the loop reads and decides the next batch,
 * which collects in a second buffer: at most one commit is in flight, and the next one
 * takes everything that arrived meanwhile (group commit).
 *
 * The real store belongs to the commit thread while a commit is in flight: the loop
 * touches it only through the wrapper's reads (History, the boot id, Status figures),
 * which first wait for the thread to be done, then apply the recorded batch so far to the
 * real store's open transaction, so that they see every decided change, as before.
 *
 * When the loop has nothing else to do (one client waiting for its reply), the hand-off
 * is pure cost, two cross-thread wake-ups per commit: store_pipe_commit_inline() commits
 * the batch on the loop thread instead, as long as no commit is in flight (so commit
 * order holds) and commits have been fast lately (so a slow disk still never stalls the
 * loop for long).
 *
 * Replies are the caller's business (manager.c holds them per batch in the varlink server
 * and releases them in commit order when done() reports the commit durable). */

#include <ev.h>
#include <stdbool.h>

#include "store.h"

typedef struct StorePipe StorePipe;

/* done(k) runs on the loop thread once per submitted batch, in order: k is the real
 * store's commit result (1 or 0 committed, -errno failed). */
typedef void (*StorePipeDone)(StorePipe *p, int k, void *userdata);

/* Takes inner (freed with the pipe). */
int store_pipe_new(struct ev_loop *loop, Store *inner, StorePipeDone done, void *userdata, StorePipe **ret);
/* Waits for a commit in flight; the real store is freed (which commits what it still
 * holds, as a store does when freed). */
StorePipe *store_pipe_free(StorePipe *p);

/* The face the engine writes to. Its commit() is synchronous: it waits for the commit in
 * flight, then commits what is recorded, on the loop thread (start-up and shutdown). */
Store *store_pipe_store(StorePipe *p);

/* Commits estimated slower than this go to the thread even when the loop is idle: a
 * call arriving meanwhile would wait that long to be read. */
#define STORE_PIPE_INLINE_MAX_USEC 1000

/* Nor is a batch larger than this committed inline: a commit's time grows with its batch
 * (a step of mass expiry is ~50 KiB and, on sqlite, tens of milliseconds), and the
 * estimate, brought down by the small commits around it, would not see it coming. One
 * client's batch is a few hundred bytes. */
#define STORE_PIPE_INLINE_MAX_BYTES (16U << 10)

/* No commit is in flight, recent commits took less than STORE_PIPE_INLINE_MAX_USEC, the
 * recorded batch is at most STORE_PIPE_INLINE_MAX_BYTES and the real store has no
 * maintenance due (StoreOps.maintenance_due: sqlite's WAL checkpoint, which an inline
 * commit defers to the next commit on the thread, or a fold thread fallen so far behind
 * that a commit may have to wait for it). */
bool store_pipe_may_commit_inline(const StorePipe *p);
/* Commits the recorded batch now, on the loop thread, and returns the real store's result
 * (as done() would get it; done() is not called). -EBUSY while a commit is in flight: a
 * later batch never overtakes one in flight. */
int store_pipe_commit_inline(StorePipe *p);

/* Writes recorded (or applied by a read) since the last submit. */
bool store_pipe_dirty(const StorePipe *p);
/* A batch was submitted and its done() has not run yet. */
bool store_pipe_in_flight(const StorePipe *p);
/* Hands the recorded batch to the commit thread (also with nothing recorded: the real store
 * may hold a batch whose commit failed for lack of space, to be committed again).
 * -EBUSY while a commit is in flight. */
int store_pipe_submit(StorePipe *p);
/* Until the commit thread is done with the batch in flight, if any. Its done() still runs
 * on the loop, from the ev_async now pending: for a harness that turns the loop one
 * iteration at a time (tests/fuzz/fuzz-dispatch.c) and counts iterations, not time. */
void store_pipe_wait(StorePipe *p);

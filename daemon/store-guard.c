/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build-config.h"
#include "fs-util.h"
#include "log.h"
#include "macro.h"
#include "store-guard.h"
#include "usec.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

#define RESERVE_FILE "agend.reserve"
#define CHECK_INTERVAL 1.0      /* seconds between free-space checks */

struct StoreGuard {
        struct ev_loop *loop;
        Store *store;
        char *dir;
        char *reserve_path;
        ev_timer timer;
        bool degraded;          /* Acquire refused */
        bool held;              /* a batch is waiting for space: no reply may go out */
        bool reserve_warned;    /* a failure to make the reserve is logged once */
        bool released;          /* the reserve was just released for the batch being retried */
        usec_t retry_at;        /* CLOCK_MONOTONIC: the next commit attempt while held */
        char reason[256];
};

static bool reserve_present(const StoreGuard *g) {
        struct stat st;
        return lstat(g->reserve_path, &st) == 0 && S_ISREG(st.st_mode) &&
               (uint64_t) st.st_blocks * 512 >= STORE_GUARD_RESERVE;
}

/* Allocates the reserve; on a file system without fallocate(), writes it. */
static int reserve_make(StoreGuard *g) {
        _cleanup_close_ int fd = open(g->reserve_path, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0)
                return -errno;
        int k = 0;
        if (fallocate(fd, 0, 0, (off_t) STORE_GUARD_RESERVE) < 0) {
                k = -errno;
                if (k == -EOPNOTSUPP) {
                        static const char zeros[65536];
                        k = 0;
                        for (uint64_t off = 0; off < STORE_GUARD_RESERVE && k == 0; off += sizeof(zeros)) {
                                ssize_t n = pwrite(fd, zeros, sizeof(zeros), (off_t) off);
                                if (n < 0)
                                        k = -errno;
                                else if (n != (ssize_t) sizeof(zeros))
                                        k = -ENOSPC;    /* a short write: the disk is full */
                        }
                        if (k == 0 && fdatasync(fd) < 0)
                                k = -errno;
                }
        }
        if (k < 0)
                (void) unlink(g->reserve_path);
        return k;
}

/* 1 if a reserve was there and is gone. */
static int reserve_release(StoreGuard *g) {
        if (unlink(g->reserve_path) < 0)
                return errno == ENOENT ? 0 : -errno;
        return 1;
}

static void notify_status(StoreGuard *g) {
#if HAVE_LIBSYSTEMD
        if (g->degraded)
                (void) sd_notifyf(false, "STATUS=%s", g->reason);
        else
                (void) sd_notify(false, "STATUS=disk space available again: serving normally");
#endif
}

static void enter_degraded(StoreGuard *g, const char *why) {
        if (g->degraded)
                return;
        g->degraded = true;
        snprintf(g->reason, sizeof(g->reason),
                 "the file system of the database is full (%s): new leases are refused until space returns; "
                 "releases, renewals and reads go on",
                 why);
        log_warning("%s (state directory \"%s\")", g->reason, g->dir);
        notify_status(g);
}

static void leave_degraded(StoreGuard *g, int64_t avail) {
        g->degraded = false;
        g->reason[0] = 0;
        log_notice("disk space available again on the state directory \"%s\" (%lld MiB free): serving normally",
                   g->dir, (long long) (avail >> 20));
        notify_status(g);
}

/* The periodic check: enter early when space runs low, leave when it is back. */
static void check(StoreGuard *g) {
        int64_t avail = fs_free_bytes(g->dir);
        if (avail < 0)
                return;
        if ((uint64_t) avail < STORE_GUARD_LOW) {
                char why[64];
                snprintf(why, sizeof(why), "%lld KiB free", (long long) (avail >> 10));
                enter_degraded(g, why);
                return;
        }
        /* Leave only with the reserve back and twice the low mark free, so that a disk
         * hovering at the mark does not flip agend in and out. */
        bool have = reserve_present(g);
        if (!have) {
                if ((uint64_t) avail < 2 * STORE_GUARD_LOW + STORE_GUARD_RESERVE)
                        return;
                int k = reserve_make(g);
                if (k < 0) {
                        if (!g->reserve_warned)
                                log_warning_errno(k, "cannot make the disk space reserve %s: %m", g->reserve_path);
                        g->reserve_warned = true;
                        return;
                }
                g->reserve_warned = false;
                avail = fs_free_bytes(g->dir);
        }
        if (g->degraded && !g->held && (uint64_t) avail >= 2 * STORE_GUARD_LOW)
                leave_degraded(g, avail);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        /* Also wakes the loop, whose prepare watcher then retries a held commit. */
        check(w->data);
}

int store_guard_new(const char *dir, StoreGuard **ret) {
        StoreGuard *g = calloc(1, sizeof(*g));
        if (!g)
                return -ENOMEM;
        g->dir = strdup(dir);
        if (!g->dir || asprintf(&g->reserve_path, "%s/%s", dir, RESERVE_FILE) < 0) {
                free(g->dir);
                free(g);
                return -ENOMEM;
        }
        int64_t avail = fs_free_bytes(g->dir);
        if (avail >= 0 && (uint64_t) avail < STORE_GUARD_LOW) {
                /* Opening may need a block (a new -shm) and the restore writes: use the
                 * reserve for them, and start refusing new leases. */
                int k = reserve_release(g);
                char why[96];
                snprintf(why, sizeof(why), "%lld KiB free at start%s", (long long) (avail >> 10),
                         k > 0 ? ", reserve released" : "");
                enter_degraded(g, why);
        }
        *ret = g;
        return 0;
}

void store_guard_start(StoreGuard *g, struct ev_loop *loop, Store *store) {
        g->loop = loop;
        g->store = store;
        check(g);
        ev_timer_init(&g->timer, timer_cb, CHECK_INTERVAL, CHECK_INTERVAL);
        g->timer.data = g;
        ev_timer_start(loop, &g->timer);
}

StoreGuard *store_guard_free(StoreGuard *g) {
        if (!g)
                return NULL;
        if (g->loop)
                ev_timer_stop(g->loop, &g->timer);
        free(g->reserve_path);
        free(g->dir);
        free(g);
        return NULL;
}

bool store_guard_may_commit(const StoreGuard *g) {
        return !g->held || usec_now(CLOCK_MONOTONIC) >= g->retry_at;
}

int store_guard_finish(StoreGuard *g, int k) {
        if (k == -ENOSPC) {
                int r = reserve_release(g);
                enter_degraded(g, r > 0 || g->released ? "a commit failed; the reserve was released to complete it"
                                                       : "a commit failed");
                if (r > 0) {
                        g->released = true;
                        return -EINPROGRESS;    /* the same batch again, now */
                }
                if (!g->held)
                        log_error("cannot commit to the database in \"%s\": no space left%s; holding the replies "
                                  "of the calls not yet committed and retrying every %.0f s",
                                  g->dir, g->released ? " even after releasing the reserve" : " and no reserve to release",
                                  CHECK_INTERVAL);
                g->released = false;
                g->held = true;
                g->retry_at = usec_now(CLOCK_MONOTONIC) + (usec_t) (CHECK_INTERVAL * USEC_PER_SEC);
                return -EAGAIN;
        }
        g->released = false;
        if (k >= 0 && g->held) {
                g->held = false;
                log_notice("the database in \"%s\" accepts writes again: the held replies go out", g->dir);
        }
        return k;
}

int store_guard_commit(StoreGuard *g) {
        if (!store_guard_may_commit(g))
                return -EAGAIN;
        int k;
        do
                k = store_guard_finish(g, g->store->ops->commit(g->store));
        while (k == -EINPROGRESS);
        return k;
}

const char *store_guard_refusal(const StoreGuard *g) {
        return g && g->degraded ? g->reason : NULL;
}

const char *store_guard_status(const StoreGuard *g) {
        return g && g->degraded ? " (disk full: new leases refused)" : "";
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* File systems for fault tests: a small tmpfs to fill, a read-only one, all inside a
 * private mount namespace of the test process, so nothing is seen by (or left on) the
 * host; the mounts go away with the process. Needs CAP_SYS_ADMIN: callers skip the test
 * (exit 77 / cmocka skip) when helper_private_mounts() fails, they never pass without it.
 * Every function returns 0 or a negative errno. */

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Moves this process into its own mount namespace (once), with every mount private. */
static inline int helper_private_mounts(void) {
        static int done = 1;
        if (done <= 0)
                return done;
        done = 0;
        if (unshare(CLONE_NEWNS) < 0 || mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) < 0)
                done = -errno;
        return done;
}

/* A tmpfs of size bytes (mode 0700) on path, read-write or read-only. */
static inline int helper_mount_tmpfs(const char *path, unsigned long size, bool read_only) {
        char opts[64];
        snprintf(opts, sizeof(opts), "size=%lu,mode=0700", size);
        if (mount("tmpfs", path, "tmpfs", read_only ? MS_RDONLY : 0, opts) < 0)
                return -errno;
        return 0;
}

/* Remounts what is mounted on path read-only (its files stay as they are). */
static inline int helper_remount_ro(const char *path) {
        if (mount("none", path, "none", MS_REMOUNT | MS_RDONLY, NULL) < 0)
                return -errno;
        return 0;
}

static inline int helper_umount(const char *path) {
        if (umount2(path, MNT_DETACH) < 0)
                return -errno;
        return 0;
}

/* Free bytes on the file system of path, as an unprivileged writer sees them. */
static inline long long helper_free_bytes(const char *path) {
        struct statvfs sv;
        if (statvfs(path, &sv) < 0)
                return -errno;
        return (long long) sv.f_bavail * (long long) sv.f_frsize;
}

/* Writes file until the file system is full (ENOSPC), in ever smaller pieces down to one
 * byte, so that nothing is left to allocate. 0 on a full disk. */
static inline int helper_fill(const char *file) {
        int fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return -errno;
        static char zeros[65536];
        for (size_t n = sizeof(zeros); n > 0; n /= 2)
                for (;;) {
                        ssize_t k = write(fd, zeros, n);
                        if (k < 0) {
                                if (errno == ENOSPC)
                                        break;
                                int r = -errno;
                                close(fd);
                                return r;
                        }
                        if ((size_t) k < n)
                                break;
                }
        (void) fsync(fd);
        close(fd);
        return 0;
}

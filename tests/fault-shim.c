/* SPDX-License-Identifier: MIT */
/* An LD_PRELOAD library for fault tests (never linked into agend): once the file named by
 * $AGEND_FAULT_TRIGGER exists, writes (AGEND_FAULT_OPS=write) or syncs (=sync) of any file
 * whose name ends in "agend.db" or "agend.db-wal" fail with EIO, as a dying disk would.
 * Until then every call goes to libc unchanged. */
/* Both pwrite and pwrite64 are defined here, so neither may be renamed to the other. */
#undef _FILE_OFFSET_BITS
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static bool is_db(int fd) {
        char link[64], path[4096];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, path, sizeof(path) - 1);
        if (n <= 0)
                return false;
        path[n] = 0;
        size_t len = (size_t) n;
        static const char *const suffixes[] = { "/agend.db", "/agend.db-wal" };
        for (size_t i = 0; i < 2; i++) {
                size_t sl = strlen(suffixes[i]);
                if (len >= sl && strcmp(path + len - sl, suffixes[i]) == 0)
                        return true;
        }
        return false;
}

static bool fault(int fd, const char *op) {
        const char *trigger = getenv("AGEND_FAULT_TRIGGER"), *ops = getenv("AGEND_FAULT_OPS");
        if (!trigger || !ops || strcmp(ops, op) != 0)
                return false;
        int saved = errno;
        bool on = access(trigger, F_OK) == 0 && is_db(fd);
        errno = saved;
        return on;
}

#define NEXT(name) ((__typeof__(&name)) dlsym(RTLD_NEXT, #name))

ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
        if (fault(fd, "write")) {
                errno = EIO;
                return -1;
        }
        return NEXT(pwrite64)(fd, buf, n, off);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
        if (fault(fd, "write")) {
                errno = EIO;
                return -1;
        }
        return NEXT(pwrite)(fd, buf, n, off);
}

ssize_t write(int fd, const void *buf, size_t n) {
        if (fault(fd, "write")) {
                errno = EIO;
                return -1;
        }
        return NEXT(write)(fd, buf, n);
}

int fdatasync(int fd) {
        if (fault(fd, "sync")) {
                errno = EIO;
                return -1;
        }
        return NEXT(fdatasync)(fd);
}

int fsync(int fd) {
        if (fault(fd, "sync")) {
                errno = EIO;
                return -1;
        }
        return NEXT(fsync)(fd);
}

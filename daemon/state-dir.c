/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "macro.h"
#include "state-dir.h"

#define LOCK_FILE "agend.lock"

static int check_mode(const char *dir, int dfd) {
        struct stat st;
        if (fstat(dfd, &st) < 0)
                return log_error_errno(-errno, "cannot stat the state directory \"%s\": %m", dir);
        if (st.st_uid != geteuid()) {
                log_error("the state directory \"%s\" belongs to uid %u, not to uid %u that agend runs as: refusing "
                          "it, since its owner could replace the database",
                          dir, (unsigned) st.st_uid, (unsigned) geteuid());
                return -EPERM;
        }
        if (st.st_mode & S_ISVTX) {
                log_error("the state directory \"%s\" has the sticky bit, like a directory shared by many users: "
                          "refusing it; give agend a directory of its own",
                          dir);
                return -EPERM;
        }
        if ((st.st_mode & 0077) == 0)
                return 0;
        /* The database holds every lease's secret and is 0600; the directory's own mode is
         * the second line, and one we can fix without asking anyone. */
        if (fchmod(dfd, st.st_mode & 0700) < 0)
                return log_error_errno(-errno, "the state directory \"%s\" is open to others (mode %04o) and "
                                               "cannot be changed: %m",
                                       dir, (unsigned) (st.st_mode & 07777));
        log_warning("the state directory \"%s\" was open to others (mode %04o): changed to %04o", dir,
                    (unsigned) (st.st_mode & 07777), (unsigned) (st.st_mode & 0700));
        return 0;
}

static bool read_only(int dfd) {
        struct statvfs sv;
        return fstatvfs(dfd, &sv) == 0 && (sv.f_flag & ST_RDONLY);
}

/* The pid the holder wrote, or 0 if it has not written it yet. */
static pid_t read_pid(int fd) {
        char buf[32] = {};
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
                return 0;
        long pid = strtol(buf, NULL, 10);
        return pid > 0 ? (pid_t) pid : 0;
}

int state_dir_take(const char *dir) {
        _cleanup_close_ int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0)
                return log_error_errno(-errno, "cannot open the state directory \"%s\": %m", dir);
        if (read_only(dfd)) {
                log_error("the state directory \"%s\" is on a read-only file system: agend must write its lock and "
                          "its database there; remount it read-write",
                          dir);
                return -EROFS;
        }
        int k = check_mode(dir, dfd);
        if (k < 0)
                return k;

        int fd = openat(dfd, LOCK_FILE, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0) {
                k = -errno;
                if (k == -EROFS || read_only(dfd)) {
                        log_error("the state directory \"%s\" is on a read-only file system: agend must write its "
                                  "lock and its database there; remount it read-write",
                                  dir);
                        return -EROFS;
                }
                return log_error_errno(k, "cannot open %s/%s: %m", dir, LOCK_FILE);
        }
        struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
        if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
                k = -errno;
                if (k != -EAGAIN && k != -EACCES) {
                        safe_close(fd);
                        return log_error_errno(k, "cannot lock %s/%s: %m", dir, LOCK_FILE);
                }
                /* The holder writes its pid right after it takes the lock: give it a moment. */
                pid_t pid = 0;
                for (int i = 0; i < 50 && (pid = read_pid(fd)) == 0; i++)
                        nanosleep(&(struct timespec) { .tv_nsec = 10 * 1000 * 1000 }, NULL);
                safe_close(fd);
                if (pid > 0)
                        log_error("another agend (pid %d) is using the state directory \"%s\": refusing to start "
                                  "(two daemons on one database would grant the same lease twice)",
                                  (int) pid, dir);
                else
                        log_error("another agend is using the state directory \"%s\": refusing to start", dir);
                return -EBUSY;
        }
        /* Overwritten in place at a fixed width and then cut, so that a restart on a full
         * disk needs no new block; the pid is only for the message above, so failing to
         * write it is not worth refusing to start. */
        char buf[16];
        int n = snprintf(buf, sizeof(buf), "%-11d\n", (int) getpid());
        if (pwrite(fd, buf, (size_t) n, 0) != n || ftruncate(fd, n) < 0)
                log_warning_errno(-errno, "cannot write the pid into %s/%s: %m", dir, LOCK_FILE);
        (void) fchmod(fd, 0600);
        return fd;
}

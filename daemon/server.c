/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "fs-util.h"
#include "log.h"
#include "macro.h"
#include "server.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

static int sockaddr_for(const char *path, struct sockaddr_un *sa, socklen_t *len) {
        size_t n = strlen(path);
        if (n >= sizeof(sa->sun_path))
                return -ENAMETOOLONG;
        *sa = (struct sockaddr_un) { .sun_family = AF_UNIX };
        memcpy(sa->sun_path, path, n);
        *len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 0;
}

int server_listen(const char *path, int *ret_fd, bool *ret_activated) {
#if HAVE_LIBSYSTEMD
        int n = sd_listen_fds(true);
        if (n < 0)
                return log_error_errno(n, "cannot take the sockets systemd passed: %m");
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) > 0) {
                        (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
                        *ret_fd = fd;
                        *ret_activated = true;
                        return 0;
                }
        }
        if (n > 0)
                log_warning("systemd passed %d sockets but none is a listening Unix stream socket; binding %s", n,
                            path);
#endif
        struct sockaddr_un sa;
        socklen_t len;
        int k = sockaddr_for(path, &sa, &len);
        if (k < 0)
                return log_error_errno(k, "socket path \"%s\" is too long", path);
        k = mkdir_p(path, 0755, true);
        if (k < 0)
                return log_error_errno(k, "cannot create the directory of \"%s\": %m", path);

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return log_error_errno(-errno, "cannot create a socket: %m");

        if (bind(fd, (struct sockaddr *) &sa, len) < 0) {
                if (errno != EADDRINUSE)
                        return log_error_errno(-errno, "cannot bind \"%s\": %m", path);
                /* Someone left a socket file. If an agend answers on it, it is not ours to
                 * take; if nothing does, it is a leftover of a crash. */
                _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (probe < 0)
                        return log_error_errno(-errno, "cannot create a socket: %m");
                if (connect(probe, (struct sockaddr *) &sa, len) == 0)
                        return log_error_errno(-EADDRINUSE,
                                               "another agend is already serving \"%s\": stop it first "
                                               "(systemctl stop agend) or pick another --socket",
                                               path);
                if (errno != ECONNREFUSED && errno != ENOENT)
                        return log_error_errno(-errno, "cannot check the existing socket \"%s\": %m", path);
                struct stat st;
                if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode))
                        return log_error_errno(-EEXIST, "\"%s\" exists and is not a socket; not replacing it", path);
                log_notice("replacing the stale socket \"%s\" left by an earlier agend", sa.sun_path);
                if (unlink(path) < 0 && errno != ENOENT)
                        return log_error_errno(-errno, "cannot remove the stale socket \"%s\": %m", path);
                if (bind(fd, (struct sockaddr *) &sa, len) < 0)
                        return log_error_errno(-errno, "cannot bind \"%s\": %m", path);
        }
        if (chmod(path, 0666) < 0)
                return log_error_errno(-errno, "cannot make \"%s\" accessible to all local users: %m", path);
        if (listen(fd, SOMAXCONN) < 0)
                return log_error_errno(-errno, "cannot listen on \"%s\": %m", path);
        *ret_fd = TAKE_FD(fd);
        *ret_activated = false;
        return 0;
}

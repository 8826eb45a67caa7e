/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "macro.h"
#include "peer.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-login.h>
#endif

static char *read_comm(pid_t pid) {
        char path[64], buf[64];
        snprintf(path, sizeof(path), "/proc/%d/comm", (int) pid);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        safe_close(fd);
        if (n <= 0)
                return NULL;
        buf[n] = 0;
        buf[strcspn(buf, "\n")] = 0;
        return strdup(buf);
}

int peer_get(int fd, Owner *ret) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
                return -errno;
        Owner o = {
                .uid = cred.uid,
                .gid = cred.gid,
                .pid = cred.pid,
        };
        if (cred.pid > 0) {
                o.comm = read_comm(cred.pid);
#if HAVE_LIBSYSTEMD
                char *unit = NULL;
                if (sd_pid_get_unit(cred.pid, &unit) >= 0)
                        o.unit = unit;
#endif
        }
        *ret = o;
        return 0;
}

int peer_groups(pid_t pid, gid_t **ret, size_t *ret_n) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        *ret = NULL;
        *ret_n = 0;
        if (!f)
                return 0;
        char *line = NULL;
        size_t n = 0;
        gid_t *v = NULL;
        size_t k = 0;
        while (getline(&line, &n, f) >= 0) {
                if (strncmp(line, "Groups:", 7) != 0)
                        continue;
                char *p = line + 7, *end;
                for (;;) {
                        unsigned long g = strtoul(p, &end, 10);
                        if (end == p)
                                break;
                        gid_t *t = realloc(v, (k + 1) * sizeof(*t));
                        if (!t) {
                                free(v);
                                free(line);
                                return -ENOMEM;
                        }
                        v = t;
                        v[k++] = (gid_t) g;
                        p = end;
                }
                break;
        }
        free(line);
        *ret = v;
        *ret_n = k;
        return 0;
}

bool peer_in_group(gid_t primary, const gid_t *groups, size_t n, gid_t gid) {
        if (gid == primary)
                return true;
        for (size_t i = 0; i < n; i++)
                if (groups[i] == gid)
                        return true;
        return false;
}

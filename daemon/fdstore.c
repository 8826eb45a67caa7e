/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "build-config.h"
#include "conn.h"
#include "fdstore.h"
#include "log.h"
#include "macro.h"
#include "manager.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* systemd's limit on FDNAME=. */
#define FDNAME_MAX 255

int fdstore_collect(Manager *m) {
#if HAVE_LIBSYSTEMD
        char **names = NULL;
        int n = sd_listen_fds_with_names(false, &names);
        if (n <= 0)
                return 0;
        for (int i = 0; i < n; i++) {
                const char *name = names[i];
                if (name && (strncmp(name, "b-", 2) == 0 || strncmp(name, "w-", 2) == 0)) {
                        StoredConn *t = realloc(m->stored, (m->n_stored + 1) * sizeof(*t));
                        char *copy = strdup(name);
                        if (!t || !copy) {
                                free(copy);
                                if (t)
                                        m->stored = t;
                                break;
                        }
                        m->stored = t;
                        m->stored[m->n_stored++] = (StoredConn) { .fd = SD_LISTEN_FDS_START + i, .name = copy };
                }
        }
        for (int i = 0; names && names[i]; i++)
                free(names[i]);
        free(names);
#endif
        return (int) m->n_stored;
}

static void store_remove(const char *name) {
#if HAVE_LIBSYSTEMD
        /* We own the connection now: systemd's copy must go, or a close by us would not
         * reach the client. */
        (void) sd_notifyf(false, "FDSTOREREMOVE=1\nFDNAME=%s", name);
#endif
}

static int adopt_one(Manager *m, int fd, const char *name) {
        bool watch = name[0] == 'w';
        _cleanup_free_ char *ids = strdup(name + 2);
        if (!ids) {
                safe_close(fd);
                return -ENOMEM;
        }
        VarlinkConn *link;
        int k = varlink_server_add_connection(m->server, fd, &link);
        if (k < 0)
                return k;
        Conn *c = varlink_conn_get_userdata(link);

        const char *watched = NULL;
        unsigned n = 0;
        char *save = NULL;
        for (char *id = strtok_r(ids, "-", &save); id; id = strtok_r(NULL, "-", &save)) {
                Lease *l = engine_lease_get(m->engine, id);
                if (watch && !watched)
                        watched = id;
                /* The kernel's word on the peer must match the lease's holder. */
                if (!l || l->owner->pid != c->peer.pid || l->owner->uid != c->peer.uid)
                        continue;
                if (engine_lease_reclaim(m->engine, l, &c->holder) >= 0)
                        n++;
        }
        if (watch) {
                Lease *l = watched ? engine_lease_get(m->engine, watched) : NULL;
                if (!l || l->holder != &c->holder) {
                        /* The watched lease is gone: the client's Watch would never end.
                         * Closing makes it reconnect and find out. */
                        varlink_conn_close(link);
                        return 0;
                }
                c->watch_lease = strdup(watched);
                if (!c->watch_lease) {
                        varlink_conn_close(link);
                        return -ENOMEM;
                }
                varlink_conn_resume_call(link, true);
                conn_watch_start(c);
        }
        log_info("kept the connection of pid %d across the restart (%u leases)", c->peer.pid, n);
        return 1;
}

int fdstore_adopt(Manager *m) {
        int adopted = 0;
        for (size_t i = 0; i < m->n_stored; i++) {
                store_remove(m->stored[i].name);
                int k = adopt_one(m, m->stored[i].fd, m->stored[i].name);
                if (k < 0)
                        log_warning_errno(k, "cannot take back a kept connection: %m");
                else
                        adopted += k;
                free(m->stored[i].name);
        }
        free(m->stored);
        m->stored = NULL;
        m->n_stored = 0;
        return adopted;
}

static bool quiet(Conn *c) {
        if (c->holder.n_leases == 0)
                return false;
        if (c->busy == CONN_ACQUIRE || (c->busy == CONN_WATCH && !c->watch_lease))
                return false;
        return varlink_conn_quiet(c->link);
}

int fdstore_save(Manager *m) {
#if HAVE_LIBSYSTEMD
        if (!getenv("NOTIFY_SOCKET"))
                return 0;
        int saved = 0;
        for (VarlinkConn *link = varlink_server_first(m->server); link; link = varlink_conn_next(link)) {
                Conn *c = varlink_conn_get_userdata(link);
                if (!quiet(c))
                        continue;
                char name[FDNAME_MAX + 1];
                size_t len = 0;
                bool fits = true;
                if (c->busy == CONN_WATCH)
                        len = (size_t) snprintf(name, sizeof(name), "w-%s", c->watch_lease);
                else
                        len = (size_t) snprintf(name, sizeof(name), "b");
                for (Lease *l = c->holder.leases; l && fits; l = l->holder_next) {
                        /* A cluster lease is not in the database to be rebound from: its
                         * holder sees the disconnect and reclaims it from etcd. */
                        if (l->resource->cluster || len + 1 + LEASE_ID_LEN > FDNAME_MAX)
                                fits = false;
                        else
                                len += (size_t) snprintf(name + len, sizeof(name) - len, "-%s", LEASE_ID_STR(l));
                }
                if (!fits)
                        continue;       /* too many leases to name, or a cluster one: the holder reclaims */
                char msg[FDNAME_MAX + 32];
                snprintf(msg, sizeof(msg), "FDSTORE=1\nFDNAME=%s", name);
                if (sd_pid_notify_with_fds(0, false, msg, &(int) { varlink_conn_fd(link) }, 1) > 0)
                        saved++;
        }
        if (saved > 0)
                log_info("handed %d connections to systemd to keep across the restart", saved);
        return saved;
#else
        return 0;
#endif
}

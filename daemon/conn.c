/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>

#include "cluster-service.h"
#include "conn.h"
#include "log.h"
#include "list.h"
#include "macro.h"
#include "manager.h"
#include "peer.h"

int conn_new(Manager *m, VarlinkConn *link, Conn **ret) {
        Conn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->manager = m;
        c->link = link;
        int k = peer_get(varlink_conn_fd(link), &c->peer);
        if (k >= 0 && c->peer.pid > 0)
                k = peer_groups(c->peer.pid, &c->groups, &c->n_groups);
        if (k >= 0) {
                c->user = manager_user(m, c->peer.uid, true);
                if (!c->user)
                        k = -ENOMEM;
        }
        if (k < 0) {
                owner_done(&c->peer);
                free(c->groups);
                free(c);
                return k;
        }
        c->user->connections++;
        *ret = c;
        return 0;
}

void conn_watch_start(Conn *c) {
        Manager *m = c->manager;
        LIST_PREPEND(watch, m->watchers, c);
        c->is_watcher = true;
        c->busy = CONN_WATCH;
}

static void watcher_unlink(Conn *c) {
        Manager *m = c->manager;
        if (!c->is_watcher)
                return;
        LIST_REMOVE(watch, m->watchers, c);
        c->is_watcher = false;
}

void conn_watch_end(Conn *c) {
        watcher_unlink(c);
        free(c->watch_lease);
        free(c->watch_resource);
        c->watch_lease = c->watch_resource = NULL;
        conn_call_done(c);
}

void conn_free(Conn *c, bool release) {
        Manager *m = c->manager;
        /* Off the watcher list first: the events of its own leases ending must not be
         * queued to a connection that is going away. */
        watcher_unlink(c);
        cluster_service_conn_gone(m->cluster, c, release);
        if (release) {
                if (c->waiter) {
                        if (c->user && c->user->waiters > 0)
                                c->user->waiters--;
                        engine_waiter_cancel(m->engine, c->waiter);
                        c->waiter = NULL;
                }
                engine_holder_gone(m->engine, &c->holder);
        } else {
                /* Shutdown: the leases stay in the store for the next start. */
                while (c->holder.leases) {
                        Lease *l = c->holder.leases;
                        c->holder.leases = l->holder_next;
                        l->holder = NULL;
                        l->holder_prev = l->holder_next = NULL;
                }
                c->holder.n_leases = 0;
        }
        if (c->user) {
                c->user->connections--;
                manager_user_maybe_free(m, c->user);
        }
        owner_done(&c->peer);
        free(c->groups);
        free(c->watch_resource);
        free(c->watch_lease);
        free(c);
}

void conn_error_reason(Conn *c, const char *error, const char *reason, const char *key, const char *value) {
        (void) varlink_conn_error_reason(c->link, error, reason, key, value);
}

void conn_call_done(Conn *c) {
        c->busy = CONN_IDLE;
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "cluster-service.h"
#include "cluster.h"
#include "hashmap.h"
#include "json-build.h"
#include "list.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "string-table.h"

/* The Resource a cluster lease points to: its name, and the holder's node for the wire's
 * Lease.node (cluster_lease_node()). */
typedef struct StandIn {
        Resource res;                   /* name and .cluster only */
        char *node;
} StandIn;

struct ClusterLease {
        Lease lease;                    /* what the replies and the events read */
        Owner owner;                    /* lease.owner points here */
        char id[LEASE_ID_LEN + 1];      /* lease.id as text: the key of ClusterService.granted */
        StandIn res;
        ClusterService *service;
        ClusterWaiter *waiter;          /* the etcd key; NULL once ended */
        Conn *conn;                     /* the holder's connection, NULL once it went */
        bool granted;
        bool pending;                   /* the Acquire (or Reclaim) call waits for it */
        bool reclaim;                   /* that call is a Reclaim: its reply is the lease */
        bool restored;                  /* claimed at start for no client (a detached lease) */
        bool try_once;
        ev_timer timeout;
        ev_timer expiry;                /* the TTL, from the grant or the last Renew */
        LIST_FIELDS(ClusterLease, all);
};

typedef struct PendingCheck PendingCheck;
struct PendingCheck {
        ClusterService *service;
        Conn *conn;                     /* NULL once the connection went */
        LIST_FIELDS(PendingCheck, checks);
};

/* A Reclaim, or a Watch of one lease, that came before the prefix was read after a restart:
 * the lease may be one the restart kept. */
typedef struct ParkedReclaim ParkedReclaim;
struct ParkedReclaim {
        Conn *conn;                     /* NULL once the connection went */
        bool watch;                     /* Watch(lease: id); else Reclaim(id, token, secret) */
        uint64_t token;
        char id[LEASE_ID_LEN + 1];
        char secret[LEASE_SECRET_LEN + 1];
        LIST_FIELDS(ParkedReclaim, parked);
};

struct ClusterService {
        Manager *manager;
        Cluster *cluster;
        ClusterLease *leases;
        Hashmap scoped;                 /* names of the Scope=cluster resources (borrowed from
                                         * the manager's config): every Acquire asks */
        Hashmap granted;                /* lease id → granted ClusterLease: Release, Renew,
                                         * Watch and Revoke look every id up here first */
        PendingCheck *checks;
        ParkedReclaim *parked;
        ev_timer parked_timeout;        /* the reclaim grace: then NoSuchLease */
        bool adopting;                  /* an earlier process left its etcd lease; not read yet */
        EtcdLeaseState keeper_state;
        char *settings;                 /* the [Cluster] section it started with, as text */
};

/* The [Cluster] section as one string, to tell a reload that changed it. */
static char *settings_text(const ClusterConfig *cc) {
        if (!cc)
                return strdup("");
        char *eps = NULL, *r = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&eps, &n);
        if (!f)
                return NULL;
        for (size_t i = 0; i < cc->n_endpoints; i++)
                fprintf(f, "%s ", cc->endpoints[i]);
        if (fclose(f) != 0) {
                free(eps);
                return NULL;
        }
        if (asprintf(&r, "%s|%s|%s|%" PRIu64 "|%s|%s|%s", eps, strempty(cc->prefix), strempty(cc->node),
                     (uint64_t) cc->lease_ttl, strempty(cc->ca_file), strempty(cc->cert_file),
                     strempty(cc->key_file)) < 0)
                r = NULL;
        free(eps);
        return r;
}

const char *cluster_lease_node(const Lease *l) {
        if (!l || !l->resource || !l->resource->cluster)
                return NULL;
        return container_of(l->resource, StandIn, res)->node;
}

/* This host's cluster leases go in the history like local ones (the same journal, written
 * with the loop's batch); other hosts' leases are in their own agend's history. */
static void journal(ClusterService *s, const Event *ev) {
        engine_event_append_to(s->manager->store, ev);
}

static void emit(ClusterService *s, EventType t, ClusterLease *cl, const char *reason, const Owner *by) {
        Event ev = {
                .type = t,
                .time = usec_now(CLOCK_REALTIME),
                .resource = cl->res.res.name,
                .lease = cl->id,
                .token = cl->lease.token,
                .owner = &cl->owner,
                .units = cl->lease.units,
                .reason = reason,
                .revoked_by = by,
                .node = cl->res.node,
        };
        journal(s, &ev);
        methods_engine_callbacks.event(NULL, &ev, &cl->lease, s->manager);
}

/* The id another host's lease has here: the random part of its key. Opaque, and no
 * method of this agend accepts it (it is not a lease of this agend). */
static void remote_id(const char *key, char *buf, size_t size) {
        const char *colon = strrchr(key, ':');
        snprintf(buf, size, "%s", colon ? colon + 1 : key);
}

/* The id of another host's lease in a List, as remote_id() writes it on Watch: its key's
 * 16 hex digits. A key that has no such tail (not written by an agend) gets a hash of it:
 * an opaque id, as remote ids are. */
static void remote_lease_id(const char *key, uint64_t *ret) {
        char id[LEASE_ID_LEN + 1];
        remote_id(key, id, sizeof(id));
        if (lease_id_from_string(id, ret) < 0)
                *ret = ((uint64_t) objmap_hash_string(key) << 32) | objmap_hash_string(id);
}

/* Another host's key queued, holds or went: said on Watch(resource) and Watch(), not
 * journalled (that host's agend journals its own leases). */
static void on_remote(Cluster *cluster, const ClusterEntry *e, ClusterRemoteEvent what, void *userdata) {
        ClusterService *s = userdata;
        if (what == CLUSTER_REMOTE_ENDED && !e->holds)
                return;         /* a waiter that went: the local engine says nothing of those either */
        char id[LEASE_ID_LEN + 1];
        remote_id(e->key, id, sizeof(id));
        Owner o = { .uid = e->uid, .gid = e->gid, .pid = e->pid, .comm = (char *) e->comm };
        Event ev = {
                .type = what == CLUSTER_REMOTE_QUEUED    ? EVENT_QUEUED
                        : what == CLUSTER_REMOTE_GRANTED ? EVENT_GRANTED
                                                         : EVENT_RELEASED,
                .time = usec_now(CLOCK_REALTIME),
                .resource = e->resource,
                .lease = what == CLUSTER_REMOTE_QUEUED ? NULL : id,
                .token = e->holds ? (uint64_t) e->create_revision : 0,
                .owner = &o,
                .units = e->units,
                .reason = what == CLUSTER_REMOTE_ENDED ? "its key was deleted in etcd" : NULL,
                .node = e->node,
                .remote = true,
        };
        methods_engine_callbacks.event(NULL, &ev, NULL, s->manager);
}

static void acquire_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void expiry_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void holder_link(ClusterLease *cl, Conn *c);

static void lease_free(ClusterLease *cl) {
        if (!cl)
                return;
        ClusterService *s = cl->service;
        ev_timer_stop(s->manager->loop, &cl->timeout);
        ev_timer_stop(s->manager->loop, &cl->expiry);
        if (cl->granted)
                (void) hashmap_remove(&s->granted, cl->id);
        LIST_REMOVE(all, s->leases, cl);
        owner_done(&cl->owner);
        free(cl->lease.description);
        free(cl->res.res.name);
        free(cl->res.node);
        free(cl);
}

/* A cluster lease's id and secret are its key's ticket (the key's random part and the
 * secret its value keeps), so that the next process of this agend knows the lease by them. */
static void lease_name_from_ticket(ClusterLease *cl, const char *ticket) {
        char id[LEASE_ID_LEN + 1];
        snprintf(id, sizeof(id), "%.*s", LEASE_ID_LEN, ticket);
        /* cluster.c makes and checks tickets: 48 hex digits, which both parse. */
        (void) lease_id_from_string(id, &cl->lease.id);
        (void) lease_secret_from_string(ticket + LEASE_ID_LEN, cl->lease.secret);
        lease_id_to_string(cl->lease.id, cl->id);
}

/* A lease record for resource, not granted yet, on the list (c may be NULL). */
static ClusterLease *lease_new(ClusterService *s, Conn *c, const char *resource, const char *description,
                               const Owner *owner) {
        ClusterLease *cl = calloc(1, sizeof(*cl));
        if (!cl)
                return NULL;
        cl->service = s;
        cl->conn = c;
        ev_timer_init(&cl->timeout, acquire_timeout_cb, 0., 0.);
        ev_timer_init(&cl->expiry, expiry_cb, 0., 0.);
        LIST_PREPEND(all, s->leases, cl);
        cl->lease.owner = &cl->owner;
        cl->res.res.name = strdup(resource);
        cl->res.res.cluster = true;
        cl->res.node = strdup(cluster_node(s->cluster));
        cl->lease.description = strdup(strempty(description));
        cl->lease.resource = &cl->res.res;
        cl->lease.expiry.pq.when = USEC_INFINITY;
        cl->lease.state = LEASE_HELD;
        if (!cl->res.res.name || !cl->res.node || !cl->lease.description || owner_copy(&cl->owner, owner) < 0) {
                lease_free(cl);
                return NULL;
        }
        return cl;
}

/* The Acquire call of cl ends (granted, timed out, failed): the connection may call again. */
static void acquire_done(ClusterLease *cl) {
        Conn *c = cl->conn;
        cl->pending = false;
        if (!c)
                return;
        c->busy = CONN_IDLE;
        if (c->user && c->user->waiters > 0)
                c->user->waiters--;
}

static void on_queued(Cluster *cluster, ClusterWaiter *w, unsigned position, void *userdata) {
        ClusterLease *cl = cluster_waiter_get_userdata(w);
        if (!cl->pending || !cl->conn)
                return;
        if (cl->try_once) {
                /* Busy: a try-once gives up at once, its key goes. */
                Conn *c = cl->conn;
                cluster_waiter_release(cluster, TAKE_PTR(cl->waiter));
                acquire_done(cl);
                conn_error_reason(c, "io.agend.Lease.Timeout", "the resource is busy", "resource", cl->res.res.name);
                lease_free(cl);
                return;
        }
        if (!conn_more(cl->conn))
                return;
        /* The ticket, presented again after a restart of this agend, claims the same key,
         * with its place in line (cluster_adopt()). */
        conn_reply_queued(cl->conn, position, cluster_waiter_ticket(w));
}

static void lease_end(ClusterService *s, ClusterLease *cl, EventType t, const char *reason, const Owner *by);

/* The TTL runs on this agend's monotonic clock, from the grant or the last Renew; when it
 * passes, the key is deleted like at a Release and the lease ends "expired". The etcd
 * lease is what guards against this agend dying; the TTL is the holder's own bound. */
static void expiry_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        ClusterLease *cl = container_of(t, ClusterLease, expiry);
        lease_end(cl->service, cl, EVENT_EXPIRED, "the TTL passed", NULL);
}

static void expiry_start(ClusterLease *cl) {
        struct ev_loop *loop = cl->service->manager->loop;
        cl->lease.expiry.pq.when = usec_now(CLOCK_MONOTONIC) + cl->lease.ttl;     /* lease_deadline() */
        ev_timer_stop(loop, &cl->expiry);
        ev_timer_set(&cl->expiry, (double) cl->lease.ttl / USEC_PER_SEC, 0.);
        ev_timer_start(loop, &cl->expiry);
}

static void on_granted(Cluster *cluster, ClusterWaiter *w, uint64_t token, void *userdata) {
        ClusterLease *cl = cluster_waiter_get_userdata(w);
        if (cl->restored)
                return;         /* live since on_orphan() */
        cl->granted = hashmap_put(&cl->service->granted, cl->id, cl) == 0;
        if (!cl->granted) {
                /* Out of memory (ids are random: -EEXIST does not happen): not held. */
                cluster_waiter_release(cluster, TAKE_PTR(cl->waiter));
                if (cl->pending && cl->conn) {
                        Conn *c = cl->conn;
                        acquire_done(cl);
                        conn_error_reason(c, "io.agend.Lease.ProtocolError", "out of memory", NULL, NULL);
                }
                lease_free(cl);
                return;
        }
        cl->lease.token = token;
        cl->lease.created = usec_now(CLOCK_REALTIME);
        if (!cl->conn) {
                /* Its connection went while the key was on its way. */
                cluster_waiter_release(cluster, TAKE_PTR(cl->waiter));
                lease_free(cl);
                return;
        }
        Conn *c = cl->conn;
        holder_link(cl, c);
        if (cl->lease.ttl > 0)
                expiry_start(cl);
        emit(cl->service, cl->reclaim ? EVENT_RECLAIMED : EVENT_GRANTED, cl, NULL, NULL);
        if (cl->pending && cl->reclaim) {
                cl->pending = false;
                conn_reply_lease(c, &cl->lease);
        } else if (cl->pending) {
                acquire_done(cl);
                conn_reply_granted(c, &cl->lease, false);
        }
}

static void holder_link(ClusterLease *cl, Conn *c) {
        cl->conn = c;
        LIST_PREPEND(holder, c->holder.leases, &cl->lease);
        c->holder.n_leases++;
        cl->lease.holder = &c->holder;
}

static void holder_unlink(ClusterLease *cl) {
        if (!cl->lease.holder)
                return;
        Holder *h = cl->lease.holder;
        LIST_REMOVE(holder, h->leases, &cl->lease);
        if (h->n_leases > 0)
                h->n_leases--;
        cl->lease.holder = NULL;
}

static void on_ended(Cluster *cluster, ClusterWaiter *w, int error, const char *reason, void *userdata) {
        ClusterLease *cl = cluster_waiter_get_userdata(w);
        ClusterService *s = cl->service;
        cluster_waiter_release(cluster, TAKE_PTR(cl->waiter));
        if (cl->pending && cl->reclaim && cl->conn)
                conn_error_reason(cl->conn, "io.agend.Lease.NoSuchLease", "the lease's key is gone from etcd",
                                  "id", cl->id);
        else if (cl->pending && cl->conn) {
                Conn *c = cl->conn;
                acquire_done(cl);
                char buf[256];
                snprintf(buf, sizeof(buf), "cluster resource: %s", strna(reason));
                conn_error_reason(c, "io.agend.Lease.Timeout", buf, "resource", cl->res.res.name);
        } else if (cl->granted) {
                /* The lease as the holder's Watch sees it: "voided" (the client's LOST)
                 * when the etcd lease is lost, "revoked" when someone deleted the key. */
                holder_unlink(cl);
                emit(s, error == -EIDRM ? EVENT_REVOKED : EVENT_VOIDED, cl, reason, NULL);
        }
        lease_free(cl);
}

/* The etcd lease cannot be renewed (the keeper's TROUBLE): said at once on the lease's
 * Watch, so the holder stops relying on it; "reclaimed" when a keepalive is answered again
 * before the deadline. The end (LOST at the deadline) comes through on_ended. */
static void on_disconnected(Cluster *cluster, ClusterWaiter *w, bool recovered, void *userdata) {
        ClusterLease *cl = cluster_waiter_get_userdata(w);
        if (!cl->granted)
                return;
        emit(cl->service, recovered ? EVENT_RECLAIMED : EVENT_DISCONNECTED, cl,
             recovered ? "agend renewed its etcd lease in time" : "agend cannot renew its etcd lease", NULL);
}

static void on_keeper(Cluster *cluster, EtcdLeaseState st, int error, void *userdata) {
        ClusterService *s = userdata;
        if (st == s->keeper_state)
                return;
        s->keeper_state = st;
        if (st == ETCD_LEASE_ALIVE)
                log_info("cluster: etcd lease alive (node %s)", cluster_node(cluster));
        else
                log_warning("cluster: etcd lease %s%s%s", etcd_lease_state_to_string(st), error < 0 ? ": " : "",
                            error < 0 ? strerror(-error) : "");
}

/* The lease of a key the process before this one left (e, from cluster.c's mirror), claimed
 * by its ticket for c (NULL: for nobody); granted from the loop like after an Acquire. NULL
 * when it cannot be claimed (out of memory, etcd not ready). */
static ClusterLease *lease_adopt(ClusterService *s, Conn *c, const ClusterEntry *e, const char *ticket) {
        Owner o = { .uid = e->uid, .gid = e->gid, .pid = e->pid, .comm = (char *) e->comm };
        ClusterLease *cl = lease_new(s, c, e->resource, e->description, &o);
        if (!cl)
                return NULL;
        cl->lease.exclusive = e->exclusive;
        cl->lease.units = e->units;
        cl->lease.ttl = e->ttl;
        cl->lease.detached = e->detached;
        ClusterAcquire a = { .resource = e->resource, .units = e->units, .exclusive = e->exclusive,
                             .uid = e->uid, .gid = e->gid, .pid = e->pid, .comm = e->comm,
                             .description = e->description, .ttl = e->ttl, .detached = e->detached,
                             .userdata = cl };
        if (cluster_adopt(s->cluster, &a, ticket, &cl->waiter) < 0) {
                lease_free(cl);
                return NULL;
        }
        lease_name_from_ticket(cl, ticket);
        return cl;
}

/* A key the process before this one left: a detached lease is claimed now, as the engine
 * restores local ones; a bound one waits for its holder's Reclaim, a waiter's for its
 * ticket (cluster.c deletes what nobody claims within the grace period). */
static void on_orphan(Cluster *cluster, const ClusterEntry *e, const char *ticket, void *userdata) {
        ClusterService *s = userdata;
        if (!e->holds || !e->detached || !cluster_service_serves(s, e->resource))
                return;
        ClusterLease *cl = lease_adopt(s, NULL, e, ticket);
        if (!cl)
                return (void) log_error("cluster: cannot keep detached lease on %s across the restart", e->resource);
        cl->restored = true;
        /* Its key holds (a key that holds keeps holding): the lease is live now, before the
         * grant decision comes from the loop, for the Reclaims and Watches that waited. */
        cl->granted = hashmap_put(&s->granted, cl->id, cl) == 0;
        if (!cl->granted) {
                cluster_waiter_release(cluster, TAKE_PTR(cl->waiter));
                lease_free(cl);
                return;
        }
        cl->lease.token = (uint64_t) e->create_revision;
        cl->lease.created = usec_now(CLOCK_REALTIME);
        if (cl->lease.ttl > 0)
                expiry_start(cl);
        log_info("cluster: detached lease %s on %s kept across the restart", cl->id, e->resource);
}

static void reclaim_parked(ClusterService *s, bool give_up);
static void parked_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents);

static void on_synced(Cluster *cluster, void *userdata) {
        ClusterService *s = userdata;
        s->adopting = false;
        reclaim_parked(s, false);
}

static const ClusterCallbacks callbacks = {
        .queued = on_queued,
        .granted = on_granted,
        .ended = on_ended,
        .disconnected = on_disconnected,
        .remote = on_remote,
        .keeper = on_keeper,
        .orphan = on_orphan,
        .synced = on_synced,
};

/* The etcd lease a stopped agend left for its next start (cluster_stop_keep()). */
#define KEPT_LEASE_FILE "cluster-lease"

static int kept_lease_path(ClusterService *s, char **ret) {
        const char *dir = s->manager->opts.state_dir;
        if (!dir)
                return -ENOENT;
        return asprintf(ret, "%s/" KEPT_LEASE_FILE, dir) < 0 ? -ENOMEM : 0;
}

/* Read once and removed: a lease is adopted by the next start only. */
static int64_t kept_lease_take(ClusterService *s) {
        _cleanup_free_ char *path = NULL;
        if (kept_lease_path(s, &path) < 0)
                return 0;
        FILE *f = fopen(path, "re");
        if (!f)
                return 0;
        long long id = 0;
        if (fscanf(f, "%lld", &id) != 1 || id <= 0)
                id = 0;
        fclose(f);
        (void) unlink(path);
        return (int64_t) id;
}

static void kept_lease_save(ClusterService *s, int64_t id) {
        _cleanup_free_ char *path = NULL, *tmp = NULL;
        if (kept_lease_path(s, &path) < 0 || asprintf(&tmp, "%s.tmp", path) < 0)
                return;
        FILE *f = fopen(tmp, "we");
        if (!f)
                return (void) log_warning("cluster: cannot save the etcd lease for the next start: %m");
        fprintf(f, "%lld\n", (long long) id);
        if (fclose(f) != 0 || rename(tmp, path) < 0) {
                log_warning("cluster: cannot save the etcd lease for the next start: %m");
                (void) unlink(tmp);
        }
}

int cluster_service_new(Manager *m, ClusterService **ret) {
        const ClusterConfig *cc = m->config.cluster;
        *ret = NULL;
        if (!cc)
                return 0;
        _cleanup_free_ char *node = NULL;
        int k = config_cluster_node(&m->config, NULL, &node);
        if (k < 0)
                return log_error_errno(k, "cluster: no Node= and no machine id: %m");
        ClusterService *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->manager = m;
        hashmap_init(&s->granted);
        hashmap_init(&s->scoped);
        s->keeper_state = ETCD_LEASE_GRANTING;
        ClusterOptions o = {
                .endpoints = cc->endpoints,
                .n_endpoints = cc->n_endpoints,
                .prefix = cc->prefix,
                .node = node,
                .ttl_sec = (int64_t) (cc->lease_ttl / USEC_PER_SEC),
                .ca_file = cc->ca_file,
                .cert_file = cc->cert_file,
                .key_file = cc->key_file,
                .adopt_lease = kept_lease_take(s),
                /* Keys a stopped agend kept for its waiters wait for their tickets as long
                 * as local leases wait for Reclaim. */
                .orphan_grace = m->config.reclaim_grace,
        };
        s->adopting = o.adopt_lease != 0;
        ev_timer_init(&s->parked_timeout, parked_timeout_cb, (double) m->config.reclaim_grace / USEC_PER_SEC, 0.);
        k = cluster_new(m->loop, &o, &callbacks, s, &s->cluster);
        if (k < 0) {
                free(s);
                return log_error_errno(k, "cluster: cannot start the etcd client: %m");
        }
        s->settings = settings_text(cc);
        k = cluster_service_configure(s, &m->config);
        if (k < 0) {
                cluster_service_free(s);
                return k;
        }
        log_info("cluster: node %s, etcd prefix %s", node, cc->prefix);
        *ret = s;
        return 0;
}

static void stopped(Cluster *c, int error, void *userdata) {
        *(int *) userdata = error < 0 ? error : 1;
}

static void stop_guard(struct ev_loop *loop, ev_timer *t, int revents) {
        ev_break(loop, EVBREAK_ONE);
}

static void stop_check(struct ev_loop *loop, ev_prepare *p, int revents) {
        if (*(int *) p->data)
                ev_break(loop, EVBREAK_ONE);
}

ClusterService *cluster_service_free(ClusterService *s) {
        if (!s)
                return NULL;
        /* Holders and queued waiters keep their keys for a restart: they stay in etcd with
         * this agend's etcd lease, which the next start adopts; a holder's client reclaims
         * its lease, a waiter's presents its ticket again (as for a local resource), a
         * detached lease is claimed at the start. With no such key the etcd lease is
         * revoked, so nothing is left waiting for the TTL. */
        bool keep = false;
        LIST_FOREACH(all, cl, s->leases)
                if (cl->waiter && (cluster_waiter_state(cl->waiter) == CLUSTER_WAITER_QUEUED ||
                                   cluster_waiter_state(cl->waiter) == CLUSTER_WAITER_HOLDS))
                        keep = true;
        ev_timer_stop(s->manager->loop, &s->parked_timeout);
        while (s->parked) {
                ParkedReclaim *pr = s->parked;
                LIST_REMOVE(parked, s->parked, pr);
                free(pr);
        }
        while (s->leases) {
                ClusterLease *cl = s->leases;
                if (cl->conn)
                        holder_unlink(cl);
                cl->waiter = NULL;      /* freed with the cluster */
                lease_free(cl);
        }
        while (s->checks) {
                PendingCheck *pc = s->checks;
                LIST_REMOVE(checks, s->checks, pc);
                pc->service = NULL;     /* its answer is dropped (cluster_free cancels it) */
        }
        /* The loop no longer serves anything here, so waiting on it for etcd's answer is
         * all it does. */
        int done = 0;
        struct ev_loop *loop = s->manager->loop;
        int k;
        if (keep) {
                int64_t id = 0;
                k = cluster_stop_keep(s->cluster, stopped, &done, &id);
                if (k >= 0) {
                        kept_lease_save(s, id);
                        log_info("cluster: etcd lease %llx kept for the next start (holders and queued "
                                 "waiters keep their keys)", (long long) id);
                }
        } else
                k = cluster_stop(s->cluster, stopped, &done);
        if (k == 0) {
                ev_timer t;
                ev_prepare p;
                ev_timer_init(&t, stop_guard, 5., 0.);
                ev_prepare_init(&p, stop_check);
                p.data = &done;
                ev_timer_start(loop, &t);
                ev_prepare_start(loop, &p);
                ev_run(loop, 0);
                ev_timer_stop(loop, &t);
                ev_prepare_stop(loop, &p);
        }
        cluster_free(s->cluster);
        hashmap_done(&s->granted);
        hashmap_done(&s->scoped);
        free(s->settings);
        free(s);
        return NULL;
}

int cluster_service_configure(ClusterService *s, const Config *c) {
        if (!s)
                return 0;
        /* The etcd client, node and lease are made once: a reload changes the resources
         * only (their capacity at once), the [Cluster] section at the next start. */
        _cleanup_free_ char *now = settings_text(c->cluster);
        if (s->settings && now && !streq(s->settings, now))
                log_warning("[Cluster] changed in the configuration; it takes effect at the next start");
        hashmap_done(&s->scoped);
        hashmap_init(&s->scoped);
        for (size_t i = 0; i < c->n_resources; i++) {
                if (c->resource_scopes[i] != RESOURCE_SCOPE_CLUSTER)
                        continue;
                int k = hashmap_put(&s->scoped, c->resources[i].name, &c->resources[i]);
                if (k < 0 && k != -EEXIST)
                        return k;
                k = cluster_declare(s->cluster, c->resources[i].name, c->resources[i].capacity);
                if (k < 0)
                        return k;
        }
        return 0;
}

bool cluster_service_serves(ClusterService *s, const char *resource) {
        return s && hashmap_get(&s->scoped, resource);
}

static unsigned capacity_of(ClusterService *s, const char *resource) {
        const ResourceDecl *d = hashmap_get(&s->scoped, resource);
        return d ? d->capacity : 0;
}

static void acquire_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        ClusterLease *cl = container_of(t, ClusterLease, timeout);
        if (!cl->pending || cl->granted)
                return;
        Conn *c = cl->conn;
        cluster_waiter_release(cl->service->cluster, TAKE_PTR(cl->waiter));
        acquire_done(cl);
        if (c)
                conn_error_reason(c, "io.agend.Lease.Timeout", "the timeout passed before the resource was free",
                                  "resource", cl->res.res.name);
        lease_free(cl);
}

void cluster_service_acquire(ClusterService *s, Conn *c, const AcquireParams *ap) {
        if (!cluster_ready(s->cluster))
                return conn_error_reason(c, "io.agend.Lease.Timeout",
                                         "cluster resource: etcd is not reachable (no etcd lease for this agend)",
                                         "resource", ap->resource);
        ClusterLease *cl = lease_new(s, c, ap->resource, ap->description, ap->owner);
        if (!cl)
                return conn_error_reason(c, "io.agend.Lease.ProtocolError", "out of memory", NULL, NULL);
        cl->lease.exclusive = ap->exclusive;
        cl->lease.ttl = ap->ttl;
        cl->lease.detached = ap->detached;
        cl->try_once = ap->try_once;
        ClusterAcquire a = {
                .resource = ap->resource,
                .units = ap->units,
                .exclusive = ap->exclusive,
                .uid = ap->owner->uid,
                .gid = ap->owner->gid,
                .pid = ap->owner->pid,
                .comm = ap->owner->comm,
                .description = ap->description,
                .ttl = ap->ttl,
                .detached = ap->detached,
                .userdata = cl,
        };
        int k = -ENOENT;
        if (ap->ticket)
                k = cluster_adopt(s->cluster, &a, ap->ticket, &cl->waiter);
        if (k == -ENOENT)
                k = cluster_acquire(s->cluster, &a, &cl->waiter);
        if (k < 0) {
                lease_free(cl);
                if (k == -EINVAL)
                        return conn_error_reason(c, "org.varlink.service.InvalidParameter",
                                                 "more units than the resource's capacity", "parameter", "units");
                return conn_error_reason(c, "io.agend.Lease.Timeout",
                                         k == -EAGAIN ? "cluster resource: etcd is not reachable"
                                                      : "cluster resource: cannot ask etcd",
                                         "resource", ap->resource);
        }
        lease_name_from_ticket(cl, cluster_waiter_ticket(cl->waiter));
        cl->lease.units = ap->exclusive ? 0 : (ap->units ? ap->units : 1);
        if (ap->exclusive)
                cl->lease.units = capacity_of(s, ap->resource);
        cl->pending = true;
        c->busy = CONN_ACQUIRE;
        if (c->user)
                c->user->waiters++;
        if (!ap->try_once && ap->timeout != USEC_INFINITY) {
                ev_timer_set(&cl->timeout, (double) ap->timeout / USEC_PER_SEC, 0.);
                ev_timer_start(s->manager->loop, &cl->timeout);
        }
}

/* Reclaim of a lease this process holds: a detached one without a connection binds to the
 * caller's; the caller's own is answered as it is. */
static int reclaim_live(ClusterService *s, Conn *c, ClusterLease *cl, uint64_t token, const char *secret) {
        if (token != cl->lease.token || !lease_secret_eq(&cl->lease, secret))
                conn_error_reason(c, "io.agend.Lease.PermissionDenied", "token or secret does not match", "id",
                                  cl->id);
        else if (cl->conn != c && (!cl->lease.detached || cl->lease.holder))
                conn_error_reason(c, "io.agend.Lease.PermissionDenied", "the lease is held by another live connection",
                                  "id", cl->id);
        else {
                if (cl->conn != c) {
                        holder_link(cl, c);
                        emit(s, EVENT_RECLAIMED, cl, NULL, NULL);
                }
                conn_reply_lease(c, &cl->lease);
        }
        return 0;
}

/* After a restart, before the prefix was read: the call waits for the read. */
static int park(ClusterService *s, Conn *c, bool watch, const char *id, uint64_t token, const char *secret) {
        ParkedReclaim *pr = calloc(1, sizeof(*pr));
        if (!pr) {
                conn_error_reason(c, "io.agend.Lease.ProtocolError", "out of memory", NULL, NULL);
                return 0;
        }
        pr->conn = c;
        pr->watch = watch;
        pr->token = token;
        snprintf(pr->id, sizeof(pr->id), "%s", id);
        snprintf(pr->secret, sizeof(pr->secret), "%s", strempty(secret));
        LIST_PREPEND(parked, s->parked, pr);
        if (!ev_is_active(&s->parked_timeout))
                ev_timer_start(s->manager->loop, &s->parked_timeout);
        return 0;
}

int cluster_service_park_watch(ClusterService *s, Conn *c, const char *id) {
        if (!s || !s->adopting || strlen(id) != LEASE_ID_LEN)
                return -ENOENT;
        return park(s, c, true, id, 0, NULL);
}

int cluster_service_reclaim(ClusterService *s, Conn *c, const char *id, uint64_t token, const char *secret) {
        if (!s)
                return -ENOENT;
        ClusterLease *live = hashmap_get(&s->granted, id);
        if (live)
                return reclaim_live(s, c, live, token, secret);
        if (strlen(id) != LEASE_ID_LEN || strlen(secret) != LEASE_SECRET_LEN)
                return -ENOENT;
        if (s->adopting)
                return park(s, c, false, id, token, secret);
        char ticket[CLUSTER_TICKET_LEN + 1];
        snprintf(ticket, sizeof(ticket), "%s%s", id, secret);
        ClusterEntry e;
        ClusterLease *cl = NULL;
        int k = cluster_orphan_get(s->cluster, ticket, &e);
        bool mismatch = k == -EPERM || (k == 0 && (!e.holds || (uint64_t) e.create_revision != token));
        bool ours = k == 0 && !mismatch && cluster_service_serves(s, e.resource);
        if (ours)
                cl = lease_adopt(s, c, &e, ticket);
        explicit_bzero(ticket, sizeof(ticket));
        if (mismatch) {
                conn_error_reason(c, "io.agend.Lease.PermissionDenied", "token or secret does not match", "id", id);
                return 0;
        }
        if (!ours)
                return -ENOENT;
        if (!cl) {
                conn_error_reason(c, "io.agend.Lease.Timeout", "cluster resource: cannot ask etcd", "id", id);
                return 0;
        }
        /* Granted from the loop (its key holds): on_granted() answers with the lease. */
        cl->pending = true;
        cl->reclaim = true;
        return 0;
}

/* The Reclaims that waited for the prefix to be read: answered now (give_up: the grace
 * period passed without it, NoSuchLease). */
static void reclaim_parked(ClusterService *s, bool give_up) {
        ev_timer_stop(s->manager->loop, &s->parked_timeout);
        while (s->parked) {
                ParkedReclaim *pr = s->parked;
                LIST_REMOVE(parked, s->parked, pr);
                if (pr->conn && pr->watch) {
                        if (!give_up && cluster_service_lease(s, pr->id))
                                conn_watch_begin(pr->conn, NULL, pr->id);
                        else
                                conn_error_reason(pr->conn, "io.agend.Lease.NoSuchLease", "no lease with this id",
                                                  "id", pr->id);
                } else if (pr->conn &&
                           (give_up || cluster_service_reclaim(s, pr->conn, pr->id, pr->token, pr->secret) < 0))
                        conn_error_reason(pr->conn, "io.agend.Lease.NoSuchLease",
                                          "no lease with this id (not restored, or not reclaimed in time)", "id",
                                          pr->id);
                explicit_bzero(pr->secret, sizeof(pr->secret));
                free(pr);
        }
}

static void parked_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        ClusterService *s = container_of(t, ClusterService, parked_timeout);
        s->adopting = false;
        reclaim_parked(s, true);
}

ClusterLease *cluster_service_lease(ClusterService *s, const char *id) {
        return s ? hashmap_get(&s->granted, id) : NULL;
}

const Lease *cluster_lease_get_lease(const ClusterLease *l) {
        return &l->lease;
}

Holder *cluster_lease_get_holder(const ClusterLease *l) {
        return l->lease.holder;
}

static void lease_end(ClusterService *s, ClusterLease *cl, EventType t, const char *reason, const Owner *by) {
        cluster_waiter_release(s->cluster, TAKE_PTR(cl->waiter));
        holder_unlink(cl);
        emit(s, t, cl, reason, by);
        lease_free(cl);
}

void cluster_service_release(ClusterService *s, ClusterLease *cl, const char *reason) {
        lease_end(s, cl, EVENT_RELEASED, reason, NULL);
}

int cluster_service_renew(ClusterService *s, ClusterLease *cl, usec_t ttl) {
        if (ttl == 0 && cl->lease.ttl == 0)
                return -EINVAL;
        if (ttl > 0)
                cl->lease.ttl = ttl;
        expiry_start(cl);
        emit(s, EVENT_RENEWED, cl, NULL, NULL);
        return 0;
}

void cluster_service_revoke(ClusterService *s, ClusterLease *cl, const char *reason, const Owner *by) {
        lease_end(s, cl, EVENT_REVOKED, reason, by);
}

static void on_check(Cluster *cluster, int result, void *userdata) {
        PendingCheck *pc = userdata;
        if (pc->service) {
                LIST_REMOVE(checks, pc->service->checks, pc);
                if (pc->conn) {
                        if (result < 0)
                                conn_error_reason(pc->conn, "io.agend.Lease.Timeout",
                                                  "cluster resource: etcd did not answer", NULL, NULL);
                        else {
                                conn_reply_bool(pc->conn, "current", result > 0);
                        }
                }
        }
        free(pc);
}

void cluster_service_check(ClusterService *s, Conn *c, const char *resource, uint64_t token) {
        unsigned capacity = capacity_of(s, resource);
        PendingCheck *pc = calloc(1, sizeof(*pc));
        if (!pc)
                return conn_error_reason(c, "io.agend.Lease.ProtocolError", "out of memory", NULL, NULL);
        pc->service = s;
        pc->conn = c;
        int k = cluster_check(s->cluster, resource, capacity, token, on_check, pc);
        if (k < 0) {
                free(pc);
                return conn_error_reason(c, "io.agend.Lease.Timeout", "cluster resource: cannot ask etcd", NULL, NULL);
        }
        LIST_PREPEND(checks, s->checks, pc);
}

bool cluster_service_usage(ClusterService *s, const char *resource, unsigned *ret_used, unsigned *ret_leases,
                           unsigned *ret_waiters) {
        return s && cluster_service_serves(s, resource) &&
               cluster_usage(s->cluster, resource, ret_used, ret_leases, ret_waiters) >= 0;
}

/* ---- List ---------------------------------------------------------------------------- */

typedef struct ListingLease {
        Lease lease;
        Owner owner;                    /* lease.owner points here */
        StandIn res;
} ListingLease;

typedef struct ListCtx {
        ClusterListing *l;
        uint64_t after;
        size_t size;
} ListCtx;

static int list_one(const ClusterEntry *e, void *userdata) {
        ListCtx *x = userdata;
        if (!e->holds) {
                if (!x->l->waiters)
                        return 0;
                /* Each member checked: a waiter is listed whole or the List fails. */
                _cleanup_json_ json_object *j = json_object_new_object();
                json_object *o = json_object_new_object();
                if (json_add(j, "owner", o) < 0 || json_add_int(o, "uid", e->uid) < 0 ||
                    json_add_int(o, "gid", e->gid) < 0 || json_add_int(o, "pid", e->pid) < 0 ||
                    json_add_string(o, "comm", strempty(e->comm)) < 0 ||
                    json_add_string(j, "resource", e->resource) < 0 ||
                    json_add_string(j, "node", strempty(e->node)) < 0 || json_add_int(j, "units", e->units) < 0 ||
                    json_add_bool(j, "exclusive", e->exclusive) < 0 ||
                    json_add_int(j, "position", e->position) < 0 ||
                    json_add_string(j, "description", strempty(e->description)) < 0 ||
                    json_add_int(j, "since", 0) < 0)
                        return -ENOMEM;
                if (json_object_array_add(x->l->waiters, j) < 0)
                        return -ENOMEM;
                j = NULL;
                return 0;
        }
        if ((uint64_t) e->create_revision <= x->after)
                return 0;
        if (x->l->n_leases == x->size) {
                size_t n = MAX(x->size * 2, (size_t) 16);
                Lease **a = realloc(x->l->leases, n * sizeof(*a));
                if (!a)
                        return -ENOMEM;
                x->l->leases = a;
                x->size = n;
        }
        ListingLease *ll = calloc(1, sizeof(*ll));
        if (!ll)
                return -ENOMEM;
        x->l->leases[x->l->n_leases++] = &ll->lease;
        ll->res.res.name = strdup(e->resource);
        ll->res.res.cluster = true;
        ll->res.node = strdup(strempty(e->node));
        ll->lease.description = strdup(strempty(e->description));
        ll->lease.owner = &ll->owner;
        ll->owner.comm = strdup(strempty(e->comm));
        if (!ll->res.res.name || !ll->res.node || !ll->lease.description || !ll->owner.comm)
                return -ENOMEM;
        ll->lease.resource = &ll->res.res;
        ll->lease.units = e->units;
        ll->lease.exclusive = e->exclusive;
        ll->lease.token = (uint64_t) e->create_revision;
        ll->owner.uid = e->uid;
        ll->owner.gid = e->gid;
        ll->owner.pid = e->pid;
        ll->lease.expiry.pq.when = USEC_INFINITY;     /* lease_deadline(): none */
        ll->lease.state = LEASE_HELD;
        if (e->local) {
                ClusterLease *cl = cluster_waiter_get_userdata(e->local);
                ll->lease.id = cl->lease.id;
                ll->lease.created = cl->lease.created;
        } else
                /* Another host's lease: where it is held is in node; its id is opaque. */
                remote_lease_id(e->key, &ll->lease.id);
        return 0;
}

int cluster_service_list(ClusterService *s, const char *resource, uint64_t after, ClusterListing *ret) {
        *ret = (ClusterListing) {};
        if (!s)
                return 0;
        if (after == 0 && !(ret->waiters = json_object_new_array()))
                return -ENOMEM;
        ListCtx x = { .l = ret, .after = after };
        int k = cluster_foreach(s->cluster, resource, list_one, &x);
        if (k < 0)
                cluster_listing_done(ret);
        return k;
}

void cluster_listing_done(ClusterListing *l) {
        for (size_t i = 0; i < l->n_leases; i++) {
                ListingLease *ll = container_of(l->leases[i], ListingLease, lease);
                free(ll->res.res.name);
                free(ll->res.node);
                free(ll->lease.description);
                free(ll->owner.comm);
                free(ll);
        }
        free(l->leases);
        json_object_put(l->waiters);
        *l = (ClusterListing) {};
}

void cluster_service_conn_gone(ClusterService *s, Conn *c, bool release) {
        if (!s)
                return;
        LIST_FOREACH(checks, pc, s->checks)
                if (pc->conn == c)
                        pc->conn = NULL;
        LIST_FOREACH(parked, pr, s->parked)
                if (pr->conn == c)
                        pr->conn = NULL;
        for (ClusterLease *cl = s->leases, *next; cl; cl = next) {
                next = cl->all_next;
                if (cl->conn != c)
                        continue;
                if (cl->pending && !cl->reclaim)
                        acquire_done(cl);
                cl->pending = false;
                cl->conn = NULL;
                if (!release) {
                        /* Shutdown: cluster_service_free() decides what goes (a restart
                         * keeps the keys of holders and queued waiters, deletes the rest). */
                        holder_unlink(cl);
                        continue;
                }
                if (cl->granted && cl->lease.detached) {
                        /* It outlives its connection: it ends by its TTL, a Release with
                         * the secret, or the end of this agend's etcd lease. */
                        holder_unlink(cl);
                        continue;
                }
                if (cl->granted)
                        lease_end(s, cl, EVENT_RELEASED, "connection closed", NULL);
                else {
                        cluster_waiter_release(s->cluster, TAKE_PTR(cl->waiter));
                        lease_free(cl);
                }
        }
}

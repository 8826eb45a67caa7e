/* SPDX-License-Identifier: MIT */
#pragma once

/* The lease service for Scope=cluster resources: the methods of methods.c hand a call on
 * such a resource (or on one of its leases) to this file, which serves it through the
 * cluster lease queue (cluster.h) with the same wire types. Local resources never come
 * here. One ClusterService per Manager, present only with a [Cluster] section.
 *
 * A cluster lease has an id and a secret like a local one (for Release/Watch by id), its
 * token is its etcd key's create revision, and it is bound to its connection unless
 * detached. A TTL runs on this agend's monotonic clock (from the grant or the last Renew)
 * and deletes the key when it passes ("expired"). Its id and secret are its key's ticket
 * (the key's random part and the secret in the key's value), so that a restart of agend
 * keeps it, as it keeps a local lease: a stop keeps the keys of holders and waiters on the
 * etcd lease, the next start adopts that lease, a bound lease comes back with Reclaim and a
 * detached one by itself; what is not claimed within the reclaim grace period goes, and if
 * agend does not come back, etcd drops every key at the etcd lease's TTL. Its events go
 * through the same event callback as the engine's (Watch, per-uid counts) and into the
 * journal (History). */

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "conn.h"
#include "engine.h"

typedef struct Manager Manager;
typedef struct ClusterService ClusterService;
typedef struct ClusterLease ClusterLease;

/* Starts the etcd client, keeper and watch for m->config.cluster (NULL section: nothing,
 * *ret = NULL). Does not wait for etcd: until the lease is granted and the prefix read,
 * Acquire on a cluster resource fails with a clear error. */
int cluster_service_new(Manager *m, ClusterService **ret);
/* Stops: with keys of holders or queued waiters, keeps them and the etcd lease for the next
 * start; otherwise revokes the etcd lease (waits for etcd on m->loop, at most the request
 * timeout). Then frees. NULL-safe. */
ClusterService *cluster_service_free(ClusterService *s);
/* The declared Scope=cluster resources and their capacity (start and reload). */
int cluster_service_configure(ClusterService *s, const Config *c);

bool cluster_service_serves(ClusterService *s, const char *resource);
void cluster_service_acquire(ClusterService *s, Conn *c, const AcquireParams *ap);

/* Reclaim(id, token, secret) of a cluster lease: of a key an earlier process of this agend
 * left (answered once the key is claimed, or once the prefix was read after a restart), or
 * of a detached lease of this one. Replies on c (0), or -ENOENT when the id is not such a
 * lease (the caller says NoSuchLease). */
int cluster_service_reclaim(ClusterService *s, Conn *c, const char *id, uint64_t token, const char *secret);

/* Watch(lease: id) of an id no lease has yet, after a restart that kept cluster leases and
 * before etcd was read: the stream begins (conn_watch_begin()) once the lease is back, or
 * ends with NoSuchLease (0). -ENOENT when there is nothing to wait for. */
int cluster_service_park_watch(ClusterService *s, Conn *c, const char *id);

/* By lease id: NULL if no cluster lease of this agend has it. */
ClusterLease *cluster_service_lease(ClusterService *s, const char *id);
const Lease *cluster_lease_get_lease(const ClusterLease *l);
Holder *cluster_lease_get_holder(const ClusterLease *l);
void cluster_service_release(ClusterService *s, ClusterLease *l, const char *reason);
/* Renew: a new TTL (ttl > 0) or the same again (0); -EINVAL if the lease has none. */
int cluster_service_renew(ClusterService *s, ClusterLease *l, usec_t ttl);
void cluster_service_revoke(ClusterService *s, ClusterLease *l, const char *reason, const Owner *by);

/* The node of a Scope=cluster lease (this host's or another's, as List and the replies
 * show it: the wire's Lease.node), NULL for a local lease. */
const char *cluster_lease_node(const Lease *l);
/* Resources: units held, holders and waiters of a cluster resource on every host, as this
 * host's mirror of etcd has them. false if resource is not served here as one. */
bool cluster_service_usage(ClusterService *s, const char *resource, unsigned *ret_used, unsigned *ret_leases,
                           unsigned *ret_waiters);

/* Check(resource, token) answered by etcd: replies on c later. */
void cluster_service_check(ClusterService *s, Conn *c, const char *resource, uint64_t token);

/* What List shows of cluster resources (all hosts): holders as Lease objects (tokens >
 * after) and waiters as JSON, appended to the caller's arrays. */
typedef struct ClusterListing {
        Lease **leases;                 /* owned by the listing */
        size_t n_leases;
        struct json_object *waiters;    /* owned by the listing */
} ClusterListing;
int cluster_service_list(ClusterService *s, const char *resource, uint64_t after, ClusterListing *ret);
void cluster_listing_done(ClusterListing *l);

/* The connection is going: its cluster waiter and leases end (release) or are just dropped
 * (shutdown: the lease revoke deletes their keys). */
void cluster_service_conn_gone(ClusterService *s, Conn *c, bool release);

/* SPDX-License-Identifier: MIT */
#pragma once

/* The cluster lease queue (issue 16): grants for Scope=cluster resources decided through
 * etcd, on the libev loop. One Cluster per agend holds one etcd lease (the keeper,
 * etcd-lease.h) and one long-lived watch on the whole prefix (a watch started once and
 * synced from then on; a watch per waiter would start at a past revision and be caught up
 * only every 100 ms, docs/architecture.md "Cluster backend").
 *
 * A waiter is a key Prefix + escaped(resource) + "/" + node + ":" + 64 random bits in hex,
 * put with this agend's etcd lease; its value is JSON {node, uid, gid, pid, comm,
 * description, units, exclusive}. Every host mirrors the prefix from the watch and decides
 * the same way: a resource's keys in create-revision order, the first ones whose units fit
 * the capacity hold it, the first that does not fit blocks every key behind it (the local
 * head-blocking rule). Keys ahead of a key never gain members (a new key has a higher create
 * revision), so once a key holds it holds until it is deleted. Its fencing token is its
 * create revision: strictly increasing cluster-wide.
 *
 * Capacity comes from the local configuration: every host must declare the resource with
 * the same capacity (as they must agree on its name).
 *
 * Callbacks fire from the loop, never from inside a call. */

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "etcd-lease.h"
#include "usec.h"

typedef struct Cluster Cluster;
typedef struct ClusterWaiter ClusterWaiter;

typedef struct ClusterOptions {
        char *const *endpoints;
        size_t n_endpoints;
        const char *prefix;             /* ends with '/' */
        const char *node;
        int64_t ttl_sec;                /* the etcd lease's TTL */
        const char *ca_file, *cert_file, *key_file;
        usec_t request_timeout;         /* 0 = the client's default */
        int64_t adopt_lease;            /* an etcd lease an earlier process of this agend left
                                         * (cluster_stop_keep()): kept alive if etcd still has
                                         * it, with its queued keys; 0 = a new lease */
        usec_t orphan_grace;            /* how long such keys wait for their ticket; 0 = 10 s */
} ClusterOptions;

/* A waiter's ticket: 16 hex digits of its key's random part and 32 of a secret kept in the
 * key's value. */
#define CLUSTER_TICKET_LEN 48

/* A key's holder or waiter as its value says (any host). Borrowed for the call. */
typedef struct ClusterEntry {
        const char *key;
        const char *resource;
        const char *node;
        uint32_t uid, gid;
        int32_t pid;
        const char *comm;
        const char *description;
        unsigned units;
        bool exclusive;
        int64_t create_revision;        /* the token, when it holds */
        usec_t ttl;                     /* the lease's TTL as acquired (0: none) */
        bool detached;                  /* acquired detached */
        bool holds;
        unsigned position;              /* 1-based among the waiters; 0 when it holds */
        ClusterWaiter *local;           /* this agend's waiter for the key, or NULL */
} ClusterEntry;

typedef enum ClusterWaiterState {
        CLUSTER_WAITER_PUTTING,         /* the key's txn is on its way */
        CLUSTER_WAITER_QUEUED,          /* the key exists, others are ahead */
        CLUSTER_WAITER_HOLDS,
        CLUSTER_WAITER_ENDED,           /* released, lost or failed: only freeing remains */
} ClusterWaiterState;

/* What another host's key did, as this host's mirror saw it (remote callback). */
typedef enum ClusterRemoteEvent {
        CLUSTER_REMOTE_QUEUED,          /* a new key that does not hold yet */
        CLUSTER_REMOTE_GRANTED,         /* the key holds now */
        CLUSTER_REMOTE_ENDED,           /* the key was deleted (e->holds: whether it held) */
} ClusterRemoteEvent;

typedef struct ClusterCallbacks {
        /* The key exists (state QUEUED) and position says where (also when it moves). */
        void (*queued)(Cluster *c, ClusterWaiter *w, unsigned position, void *userdata);
        /* The key holds the resource; token = its create revision. */
        void (*granted)(Cluster *c, ClusterWaiter *w, uint64_t token, void *userdata);
        /* The keeper cannot renew the etcd lease (TROUBLE): every local key may be lost; the
         * holder must stop relying on it until granted/lost says more. Once per waiter per
         * episode; recovered says the lease was renewed again in time. */
        void (*disconnected)(Cluster *c, ClusterWaiter *w, bool recovered, void *userdata);
        /* The key is gone or never came to be (state ENDED): error -ENOLINK when the etcd
         * lease is lost (the keeper's deadline), -EIDRM when someone deleted the key
         * (revoke), or the txn's error. */
        void (*ended)(Cluster *c, ClusterWaiter *w, int error, const char *reason, void *userdata);
        /* A key of another node changed (for Watch). Not called for what a re-read of the
         * prefix finds (start, after compaction): only for changes the watch delivers. */
        void (*remote)(Cluster *c, const ClusterEntry *e, ClusterRemoteEvent ev, void *userdata);
        /* The keeper changed state (for logs and status). */
        void (*keeper)(Cluster *c, EtcdLeaseState s, int error, void *userdata);
        /* After the prefix was read with an adopted etcd lease: each key an earlier process
         * of this agend left on it (cluster_stop_keep()), with its ticket, so that the
         * caller may claim it at once (cluster_adopt()), e.g. a detached lease that no
         * client will claim. Keys not claimed go after the grace period. Optional. */
        void (*orphan)(Cluster *c, const ClusterEntry *e, const char *ticket, void *userdata);
        /* The prefix was read (start, and again after a compaction or a new etcd lease):
         * cluster_orphan_get() can answer now. Optional. */
        void (*synced)(Cluster *c, void *userdata);
} ClusterCallbacks;

int cluster_new(struct ev_loop *loop, const ClusterOptions *o, const ClusterCallbacks *cb, void *userdata,
                Cluster **ret);
/* A clean stop (shutdown): the waiters still alive are dropped without callbacks, the
 * keeper and the watch stop, and etcd is asked to revoke the lease, so every key of this
 * agend goes at once rather than at the TTL. done fires once etcd answered (or the request
 * timed out); then free. -EALREADY if there is no lease to revoke (done does not fire). */
typedef void (*ClusterStopFn)(Cluster *c, int error, void *userdata);
int cluster_stop(Cluster *c, ClusterStopFn done, void *userdata);
/* A stop for a restart: the keys of queued waiters and of holders stay in etcd with the
 * etcd lease, which is not revoked (the next process adopts it with
 * ClusterOptions.adopt_lease, and each key is claimed by its ticket with cluster_adopt());
 * every other key of this agend (puts still on their way) is deleted. *ret_lease: the etcd lease id to hand on. Returns 1 when nothing is to be
 * waited for, 0 when done fires once the deletes were answered, -EALREADY without a
 * lease. Then free. */
int cluster_stop_keep(Cluster *c, ClusterStopFn done, void *userdata, int64_t *ret_lease);
/* Stops at once; nothing is revoked (what a crash looks like to other hosts, or after
 * cluster_stop's done). Waiters still alive are freed without callbacks. NULL-safe,
 * returns NULL. */
Cluster *cluster_free(Cluster *c);

/* Ready: the lease is ALIVE and the mirror is synced. */
bool cluster_ready(const Cluster *c);
EtcdLeaseState cluster_keeper_state(const Cluster *c);
const char *cluster_node(const Cluster *c);

/* The capacity this host decides with for resource (grants are re-decided at once). */
int cluster_declare(Cluster *c, const char *resource, unsigned capacity);

typedef struct ClusterAcquire {
        const char *resource;           /* declared (cluster_declare) */
        unsigned units;                 /* 0 = 1; capacity when exclusive */
        bool exclusive;
        uint32_t uid, gid;
        int32_t pid;
        const char *comm;
        const char *description;
        usec_t ttl;                     /* kept in the key's value for a restart */
        bool detached;                  /* likewise */
        void *userdata;                 /* the caller's, for the callbacks */
} ClusterAcquire;

/* Puts the key. -EAGAIN when not ready (no etcd lease or not synced), -EINVAL for more
 * units than the capacity, -ENXIO for a resource not declared. */
int cluster_acquire(Cluster *c, const ClusterAcquire *a, ClusterWaiter **ret);
/* Claims the key a waiter of an earlier process of this agend left (its ticket, from the
 * queued reply), with its place in line: queued or granted follows from the loop like
 * after cluster_acquire(). -ENOENT if no such key of this agend's etcd lease waits
 * unclaimed (the caller acquires anew), -EAGAIN when not ready. */
int cluster_adopt(Cluster *c, const ClusterAcquire *a, const char *ticket, ClusterWaiter **ret);
/* The key an earlier process of this agend left, by ticket, whatever its resource: *ret
 * (borrowed until the loop runs again). -ENOENT if no unclaimed key of this agend's etcd
 * lease has the ticket's random part, -EPERM if one has but the secret differs. */
int cluster_orphan_get(Cluster *c, const char *ticket, ClusterEntry *ret);
const char *cluster_waiter_ticket(const ClusterWaiter *w);
/* Deletes the key (release, give up, disconnect) and frees the waiter; no callback fires
 * for it any more. NULL-safe. */
void cluster_waiter_release(Cluster *c, ClusterWaiter *w);
ClusterWaiterState cluster_waiter_state(const ClusterWaiter *w);
void *cluster_waiter_get_userdata(const ClusterWaiter *w);
const char *cluster_waiter_key(const ClusterWaiter *w);
uint64_t cluster_waiter_token(const ClusterWaiter *w);

/* Each key of resource (all resources if NULL) as this host's mirror has it, holders first
 * in token order, then waiters in order. Stops at a negative return. */
int cluster_foreach(Cluster *c, const char *resource, int (*fn)(const ClusterEntry *e, void *userdata),
                    void *userdata);

/* What this host's mirror says of resource: units held, holders and waiters (all hosts).
 * -ENXIO for a resource that is not declared. */
int cluster_usage(Cluster *c, const char *resource, unsigned *ret_used, unsigned *ret_holders,
                  unsigned *ret_waiters);

/* Whether token holds resource, answered by a fresh (linearizable) read of etcd. cb gets
 * 1 current, 0 not, or a negative errno. */
typedef void (*ClusterCheckFn)(Cluster *c, int result, void *userdata);
int cluster_check(Cluster *c, const char *resource, unsigned capacity, uint64_t token, ClusterCheckFn cb,
                  void *userdata);

/* For tests and the daemon: the escaped key prefix of a resource (malloc'ed). */
char *cluster_resource_prefix(const char *prefix, const char *resource);

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "cluster.h"
#include "etcd-watch.h"
#include "hashmap.h"
#include "json-writer.h"
#include "list.h"
#include "macro.h"
#include "string-table.h"

/* One key of the mirror. */
typedef struct CKey CKey;
typedef struct CResource CResource;

struct CKey {
        char *key;
        char *node, *comm, *description;
        uint32_t uid, gid;
        int32_t pid;
        unsigned units;
        bool exclusive;
        bool detached;
        usec_t ttl;
        bool holds;
        int64_t lease;                  /* the etcd lease the key is attached to */
        char *ticket;                   /* the ticket's secret half, from the value ("" if none) */
        uint8_t announced;              /* 1: queued, 2: granted was reported (remote keys) */
        unsigned position;
        int64_t create_rev;
        CResource *resource;
        ClusterWaiter *local;
        LIST_FIELDS(CKey, keys);
};

struct CResource {
        char *name;
        unsigned capacity;              /* 0 = not declared here: no decisions */
        CKey *keys, *keys_tail;         /* ascending create revision */
        LIST_FIELDS(CResource, res);
};

struct ClusterWaiter {
        Cluster *cluster;
        char *key;
        char *resource;
        ClusterWaiterState state;
        unsigned position;
        uint64_t token;
        bool disconnected;
        void *userdata;
        EtcdCall *call;
        char *value;                    /* the key's value, kept for a re-sent put */
        int64_t lease;
        unsigned attempts;
        ev_timer retry;
        char ticket[CLUSTER_TICKET_LEN + 1];    /* key's random part + the secret, in hex */
        CKey *entry;
        LIST_FIELDS(ClusterWaiter, waiters);
};

struct Cluster {
        struct ev_loop *loop;
        EtcdClient *client;
        EtcdLeaseKeeper *keeper;
        EtcdWatch *watch;
        EtcdCall *sync_call;
        char *prefix, *node;
        ClusterCallbacks cb;
        void *userdata;
        bool synced;
        bool trouble;
        bool quiet;                     /* re-reading the prefix: no remote callbacks */
        ev_timer redecide;              /* a capacity changed (reload): decide from the loop */
        ev_timer orphans;               /* keys of an adopted etcd lease nobody claimed */
        usec_t orphan_grace;
        unsigned stop_pending;          /* cluster_stop_keep(): deletes not answered yet */
        CResource *resources;
        ClusterWaiter *waiters;
        /* The lookups of every watch event and Acquire, O(1) for thousands of keys: resources
         * by name, the mirror's keys by key (a key names its resource), waiters by key (the
         * newest, as the list's order had it). Keys are borrowed from the objects. */
        Hashmap resources_by_name, keys_by_key, waiters_by_key;
        EtcdCall *stop_call;
        ClusterStopFn stop_done;
        void *stop_userdata;
};

/* ---- keys ------------------------------------------------------------------------------ */

static char *escape_resource(const char *s) {
        char *r = malloc(strlen(s) * 3 + 1), *p = r;
        if (!r)
                return NULL;
        for (; *s; s++) {
                if (*s == '/' || *s == '%') {
                        p += sprintf(p, "%%%02X", (unsigned char) *s);
                } else
                        *p++ = *s;
        }
        *p = 0;
        return r;
}

static char *unescape_resource(const char *s, size_t n) {
        char *r = malloc(n + 1), *p = r;
        if (!r)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                unsigned v;
                if (s[i] == '%' && i + 2 < n + 1 && sscanf(s + i + 1, "%2X", &v) == 1) {
                        *p++ = (char) v;
                        i += 2;
                } else
                        *p++ = s[i];
        }
        *p = 0;
        return r;
}

char *cluster_resource_prefix(const char *prefix, const char *resource) {
        _cleanup_free_ char *e = escape_resource(resource);
        char *r = NULL;
        if (!e || asprintf(&r, "%s%s/", prefix, e) < 0)
                return NULL;
        return r;
}

/* The resource a key belongs to, or NULL if the key is not a waiter's. */
static char *key_resource(const Cluster *c, const char *key) {
        size_t pl = strlen(c->prefix);
        if (strncmp(key, c->prefix, pl) != 0)
                return NULL;
        const char *s = key + pl, *slash = strchr(s, '/');
        if (!slash || slash == s || !slash[1])
                return NULL;
        return unescape_resource(s, (size_t) (slash - s));
}

static CResource *resource_get(Cluster *c, const char *name, bool create) {
        CResource *r = hashmap_get(&c->resources_by_name, name);
        if (r || !create)
                return r;
        r = calloc(1, sizeof(*r));
        if (!r || !(r->name = strdup(name)) || hashmap_put(&c->resources_by_name, r->name, r) < 0) {
                if (r)
                        free(r->name);
                free(r);
                return NULL;
        }
        LIST_PREPEND(res, c->resources, r);
        return r;
}

static void ckey_free(CKey *k) {
        if (!k)
                return;
        if (k->local)
                k->local->entry = NULL;
        free(k->key);
        free(k->ticket);
        free(k->node);
        free(k->comm);
        free(k->description);
        free(k);
}

static CKey *ckey_find(Cluster *c, const char *key) {
        return hashmap_get(&c->keys_by_key, key);
}

/* Takes k out of the mirror and frees it. */
static void ckey_drop(Cluster *c, CKey *k) {
        CResource *r = k->resource;
        hashmap_remove(&c->keys_by_key, k->key);
        LIST_REMOVE_TAIL(keys, r->keys, r->keys_tail, k);
        ckey_free(k);
}

static char *json_str(struct json_object *o, const char *key) {
        struct json_object *v;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return strdup("");
        return strdup(json_object_get_string(v));
}

static int64_t json_int(struct json_object *o, const char *key, int64_t def) {
        struct json_object *v;
        if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int))
                return def;
        return json_object_get_int64(v);
}

/* Fills k from the key's JSON value; a value we cannot read counts as one unit, so a
 * foreign or broken key still takes its place in the order (safer than ignoring it). */
static int ckey_parse_value(CKey *k, const char *value, size_t len) {
        struct json_tokener *t = json_tokener_new();
        if (!t)
                return -ENOMEM;
        struct json_object *o = json_tokener_parse_ex(t, value, (int) len);
        json_tokener_free(t);
        if (!o || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                k->units = 1;
                k->ticket = strdup("");
                k->node = strdup("");
                k->comm = strdup("");
                k->description = strdup("");
                return k->node && k->comm && k->description && k->ticket ? 0 : -ENOMEM;
        }
        k->node = json_str(o, "node");
        k->ticket = json_str(o, "ticket");
        k->comm = json_str(o, "comm");
        k->description = json_str(o, "description");
        k->uid = (uint32_t) json_int(o, "uid", 0);
        k->gid = (uint32_t) json_int(o, "gid", 0);
        k->pid = (int32_t) json_int(o, "pid", 0);
        int64_t u = json_int(o, "units", 1);
        k->units = u >= 1 && u <= 1000000 ? (unsigned) u : 1;
        struct json_object *v;
        k->exclusive = json_object_object_get_ex(o, "exclusive", &v) && json_object_get_boolean(v);
        k->detached = json_object_object_get_ex(o, "detached", &v) && json_object_get_boolean(v);
        int64_t ttl = json_int(o, "ttl", 0);
        k->ttl = ttl > 0 ? (usec_t) ttl : 0;
        json_object_put(o);
        return k->node && k->comm && k->description && k->ticket ? 0 : -ENOMEM;
}

static ClusterWaiter *waiter_by_key(Cluster *c, const char *key) {
        return hashmap_get(&c->waiters_by_key, key);
}

/* w becomes the waiter of its key (a newer one with the same key replaces an older). */
static int waiter_link(Cluster *c, ClusterWaiter *w) {
        hashmap_remove(&c->waiters_by_key, w->key);
        int r = hashmap_put(&c->waiters_by_key, w->key, w);
        if (r < 0)
                return r;
        LIST_PREPEND(waiters, c->waiters, w);
        return 0;
}

/* A put of key (create or update) at create revision rev. */
static CResource *mirror_put(Cluster *c, const EtcdKv *kv) {
        _cleanup_free_ char *name = key_resource(c, kv->key);
        if (!name)
                return NULL;
        CResource *r = resource_get(c, name, true);
        if (!r)
                return NULL;
        if (ckey_find(c, kv->key))
                return r;       /* an update: the order and the value we keep stand */
        CKey *k = calloc(1, sizeof(*k));
        if (!k || !(k->key = strdup(kv->key)) || ckey_parse_value(k, kv->value, kv->value_len) < 0 ||
            hashmap_put(&c->keys_by_key, k->key, k) < 0) {
                ckey_free(k);
                return NULL;
        }
        k->create_rev = kv->create_revision;
        k->lease = kv->lease;
        k->resource = r;
        /* Events come in revision order, so a new key goes last; a re-read is sorted. */
        CKey *after = r->keys_tail;
        while (after && after->create_rev > k->create_rev)
                after = after->keys_prev;
        if (after == r->keys_tail)
                LIST_APPEND_TAIL(keys, r->keys, r->keys_tail, k);
        else if (!after)
                LIST_PREPEND(keys, r->keys, k);
        else {
                k->keys_prev = after;
                k->keys_next = after->keys_next;
                after->keys_next->keys_prev = k;
                after->keys_next = k;
        }
        ClusterWaiter *w = waiter_by_key(c, kv->key);
        if (w && w->state != CLUSTER_WAITER_ENDED) {
                k->local = w;
                w->entry = k;
        }
        return r;
}

static void waiter_end(Cluster *c, ClusterWaiter *w, int error, const char *reason) {
        if (w->entry)
                w->entry->local = NULL;
        w->entry = NULL;
        etcd_call_cancel(TAKE_PTR(w->call));
        ev_timer_stop(c->loop, &w->retry);
        w->state = CLUSTER_WAITER_ENDED;
        if (c->cb.ended)
                c->cb.ended(c, w, error, reason, w->userdata);
}

static ClusterEntry entry_of(CKey *k) {
        return (ClusterEntry) {
                .key = k->key,
                .resource = k->resource->name,
                .node = k->node,
                .uid = k->uid,
                .gid = k->gid,
                .pid = k->pid,
                .comm = k->comm,
                .description = k->description,
                .units = k->units,
                .exclusive = k->exclusive,
                .ttl = k->ttl,
                .detached = k->detached,
                .create_revision = k->create_rev,
                .holds = k->holds,
                .position = k->position,
                .local = k->local,
        };
}

/* Another host's key (a key of this node without a local waiter is on its way out). */
static bool key_remote(const Cluster *c, const CKey *k) {
        return !k->local && !streq(k->node, c->node);
}

static void remote_event(Cluster *c, CKey *k, ClusterRemoteEvent ev) {
        if (c->quiet || !c->cb.remote || !key_remote(c, k))
                return;
        ClusterEntry e = entry_of(k);
        c->cb.remote(c, &e, ev, c->userdata);
}

static CResource *mirror_delete(Cluster *c, const char *key) {
        CKey *k = ckey_find(c, key);
        if (!k)
                return NULL;
        CResource *r = k->resource;
        ClusterWaiter *w = k->local;
        if (k->announced)
                remote_event(c, k, CLUSTER_REMOTE_ENDED);
        ckey_drop(c, k);
        if (w)
                waiter_end(c, w, -EIDRM, "the key was deleted in etcd (revoked)");
        return r;
}

/* The grant rule, the same on every host: in create order, a key holds if it held before or
 * its units fit and nothing ahead of it is blocked. */
static void decide(Cluster *c, CResource *r) {
        if (r->capacity == 0)
                return;
        unsigned used = 0, pos = 0;
        bool blocked = false;
        LIST_FOREACH(keys, k, r->keys) {
                unsigned need = k->exclusive ? r->capacity : k->units;
                if (!k->holds && !blocked && used + need <= r->capacity)
                        k->holds = true;
                if (k->holds) {
                        used += need;
                        k->position = 0;
                } else {
                        blocked = true;
                        k->position = ++pos;
                }
        }
        /* Watch hears of other hosts' keys: queued once, granted once. */
        LIST_FOREACH(keys, k, r->keys) {
                uint8_t want = k->holds ? 2 : 1;
                if (k->announced < want) {
                        k->announced = want;
                        remote_event(c, k, want == 2 ? CLUSTER_REMOTE_GRANTED : CLUSTER_REMOTE_QUEUED);
                }
        }
        for (CKey *k = r->keys, *next; k; k = next) {
                next = k->keys_next;
                ClusterWaiter *w = k->local;
                if (!w || w->state == CLUSTER_WAITER_ENDED)
                        continue;
                if (k->holds && w->state != CLUSTER_WAITER_HOLDS) {
                        w->state = CLUSTER_WAITER_HOLDS;
                        w->token = (uint64_t) k->create_rev;
                        w->position = 0;
                        if (c->cb.granted)
                                c->cb.granted(c, w, w->token, w->userdata);
                } else if (!k->holds && (w->state == CLUSTER_WAITER_PUTTING || w->position != k->position)) {
                        w->state = CLUSTER_WAITER_QUEUED;
                        w->position = k->position;
                        if (c->cb.queued)
                                c->cb.queued(c, w, w->position, w->userdata);
                }
        }
}

static void decide_all(Cluster *c) {
        LIST_FOREACH(res, r, c->resources)
                decide(c, r);
}

static void redecide_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        Cluster *c = container_of(t, Cluster, redecide);
        if (c->synced)
                decide_all(c);
}

/* Whether the etcd lease may be gone by now: past the keeper's deadline (or none). The
 * keeper says LOST from its timer; this is for paths that must not wait for it (a request
 * served in the loop iteration that follows a pause). */
static bool past_deadline(const Cluster *c) {
        if (!c->keeper)
                return true;
        usec_t d = etcd_lease_keeper_get_deadline(c->keeper);
        return d == 0 || usec_now(CLOCK_MONOTONIC) >= d;
}

static void end_all(Cluster *c, int error, const char *reason) {
        for (ClusterWaiter *w = c->waiters, *next; w; w = next) {
                next = w->waiters_next;
                if (w->state != CLUSTER_WAITER_ENDED)
                        waiter_end(c, w, error, reason);
        }
}

/* ---- the watch and the initial read ---------------------------------------------------- */

static void start_sync(Cluster *c);

static void on_watch(EtcdWatch *wt, EtcdWatchStatus s, const EtcdEvent *ev, size_t n, int64_t rev, int error,
                     void *userdata) {
        Cluster *c = userdata;
        if (s == ETCD_WATCH_COMPACTED) {
                /* Events were lost: read the prefix again. */
                c->watch = etcd_watch_free(c->watch);
                c->synced = false;
                start_sync(c);
                return;
        }
        if (s != ETCD_WATCH_EVENTS)
                return;
        if (past_deadline(c))
                end_all(c, -ENOLINK, "the etcd lease was lost");
        /* Apply the batch, then decide once per resource touched. */
        CResource *touched[16];
        size_t n_touched = 0;
        bool many = false;
        for (size_t i = 0; i < n; i++) {
                CResource *r = ev[i].type == ETCD_EVENT_PUT ? mirror_put(c, &ev[i].kv) : mirror_delete(c, ev[i].kv.key);
                if (!r)
                        continue;
                bool seen = false;
                for (size_t j = 0; j < n_touched; j++)
                        seen = seen || touched[j] == r;
                if (!seen) {
                        if (n_touched < ELEMENTSOF(touched))
                                touched[n_touched++] = r;
                        else
                                many = true;
                }
        }
        if (many)
                decide_all(c);
        else
                for (size_t j = 0; j < n_touched; j++)
                        decide(c, touched[j]);
}

static void mirror_clear(Cluster *c) {
        LIST_FOREACH(res, r, c->resources)
                while (r->keys)
                        ckey_drop(c, r->keys);
}

/* A key on this agend's etcd lease that no waiter here has. Whatever its node (Node= may
 * have changed across the restart): the lease keeps it alive, so it must be claimed or go. */
static bool is_orphan(const Cluster *c, const CKey *k) {
        int64_t id = c->keeper ? etcd_lease_keeper_get_id(c->keeper) : 0;
        return !k->local && id != 0 && k->lease == id;
}

static bool any_orphan(const Cluster *c) {
        LIST_FOREACH(res, r, c->resources)
                LIST_FOREACH(keys, k, r->keys)
                        if (is_orphan(c, k))
                                return true;
        return false;
}

static void orphans_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        Cluster *c = container_of(t, Cluster, orphans);
        LIST_FOREACH(res, r, c->resources)
                LIST_FOREACH(keys, k, r->keys)
                        if (is_orphan(c, k)) {
                                EtcdOp op = { .type = ETCD_OP_DELETE, .key = k->key };
                                EtcdTxn tx = { .success = &op, .n_success = 1 };
                                (void) etcd_txn(c->client, &tx, NULL, NULL, NULL);
                        }
}

static void on_sync(EtcdClient *ec, int error, const EtcdResult *res, void *userdata) {
        Cluster *c = userdata;
        c->sync_call = NULL;
        if (error < 0 || res->n_ops < 1) {
                /* Retried on the next keeper state change or acquire; the keeper retries
                 * etcd on its own, so try again with it. */
                return;
        }
        mirror_clear(c);
        const EtcdOpResult *op = &res->ops[0];
        for (size_t i = 0; i < op->n_kvs; i++)
                (void) mirror_put(c, &op->kvs[i]);
        if (etcd_watch_new(c->client, c->prefix, res->header.revision + 1, on_watch, c, &c->watch) < 0)
                return;
        c->synced = true;
        /* Local waiters whose key vanished while we were not watching. */
        for (ClusterWaiter *w = c->waiters, *next; w; w = next) {
                next = w->waiters_next;
                if ((w->state == CLUSTER_WAITER_QUEUED || w->state == CLUSTER_WAITER_HOLDS) && !w->entry)
                        waiter_end(c, w, -EIDRM, "the key was deleted in etcd");
        }
        c->quiet = true;
        decide_all(c);
        c->quiet = false;
        /* Keys on this etcd lease that no waiter here has: an earlier process of this agend
         * left them for a restart (cluster_stop_keep()). The caller may claim some now; the
         * others' tickets may claim them for a grace period; then they go. */
        if (c->cb.orphan)
                LIST_FOREACH(res, r, c->resources)
                        LIST_FOREACH(keys, k, r->keys)
                                if (is_orphan(c, k)) {
                                        char ticket[CLUSTER_TICKET_LEN + 1];
                                        const char *rnd = strrchr(k->key, ':');
                                        if (!rnd || strlen(rnd + 1) != 16 || strlen(k->ticket) != 32)
                                                continue;
                                        snprintf(ticket, sizeof(ticket), "%s%s", rnd + 1, k->ticket);
                                        ClusterEntry e = entry_of(k);
                                        c->cb.orphan(c, &e, ticket, c->userdata);
                                        explicit_bzero(ticket, sizeof(ticket));
                                }
        if (!ev_is_active(&c->orphans) && any_orphan(c)) {
                ev_timer_set(&c->orphans, (double) c->orphan_grace / USEC_PER_SEC, 0.);
                ev_timer_start(c->loop, &c->orphans);
        }
        if (c->cb.synced)
                c->cb.synced(c, c->userdata);
}

static void start_sync(Cluster *c) {
        if (c->synced || c->sync_call)
                return;
        EtcdOp op = { .type = ETCD_OP_RANGE, .key = c->prefix, .prefix = true, .sort_by_create = true };
        (void) etcd_range(c->client, &op, on_sync, c, &c->sync_call);
}

/* ---- the keeper ------------------------------------------------------------------------ */

static void on_keeper(EtcdLeaseKeeper *k, EtcdLeaseState s, int64_t id, int error, void *userdata) {
        Cluster *c = userdata;
        switch (s) {
        case ETCD_LEASE_ALIVE:
                start_sync(c);
                if (c->trouble) {
                        c->trouble = false;
                        for (ClusterWaiter *w = c->waiters, *next; w; w = next) {
                                next = w->waiters_next;
                                if (w->disconnected && w->state != CLUSTER_WAITER_ENDED) {
                                        w->disconnected = false;
                                        if (c->cb.disconnected)
                                                c->cb.disconnected(c, w, true, w->userdata);
                                }
                        }
                }
                break;
        case ETCD_LEASE_TROUBLE:
                if (!c->trouble) {
                        c->trouble = true;
                        for (ClusterWaiter *w = c->waiters, *next; w; w = next) {
                                next = w->waiters_next;
                                if (w->state == CLUSTER_WAITER_HOLDS && !w->disconnected) {
                                        w->disconnected = true;
                                        if (c->cb.disconnected)
                                                c->cb.disconnected(c, w, false, w->userdata);
                                }
                        }
                }
                break;
        case ETCD_LEASE_LOST:
                /* Every key of this agend is gone or about to be: nothing local holds. */
                c->trouble = false;
                end_all(c, -ENOLINK, "the etcd lease was lost");
                break;
        default:
                break;
        }
        if (c->cb.keeper)
                c->cb.keeper(c, s, error, c->userdata);
}

/* ---- the API --------------------------------------------------------------------------- */

int cluster_new(struct ev_loop *loop, const ClusterOptions *o, const ClusterCallbacks *cb, void *userdata,
                Cluster **ret) {
        assert_return(loop && o && o->prefix && o->node && cb && ret, -EINVAL);
        Cluster *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->loop = loop;
        hashmap_init(&c->resources_by_name);
        hashmap_init(&c->keys_by_key);
        hashmap_init(&c->waiters_by_key);
        ev_timer_init(&c->redecide, redecide_cb, 0., 0.);
        ev_timer_init(&c->orphans, orphans_cb, 0., 0.);
        c->orphan_grace = o->orphan_grace ?: 10 * USEC_PER_SEC;
        c->cb = *cb;
        c->userdata = userdata;
        c->prefix = strdup(o->prefix);
        c->node = strdup(o->node);
        if (!c->prefix || !c->node) {
                cluster_free(c);
                return -ENOMEM;
        }
        EtcdClientOptions eo = {
                .endpoints = o->endpoints,
                .n_endpoints = o->n_endpoints,
                .ca_file = o->ca_file,
                .cert_file = o->cert_file,
                .key_file = o->key_file,
                .request_timeout = o->request_timeout,
        };
        int k = etcd_client_new(loop, &eo, &c->client);
        if (k < 0) {
                cluster_free(c);
                return k;
        }
        EtcdLeaseOptions lo = { .ttl_sec = o->ttl_sec > 0 ? o->ttl_sec : 10, .adopt_id = o->adopt_lease };
        k = etcd_lease_keeper_new(c->client, &lo, on_keeper, c, &c->keeper);
        if (k < 0) {
                cluster_free(c);
                return k;
        }
        *ret = c;
        return 0;
}

static void waiter_free(ClusterWaiter *w) {
        if (!w)
                return;
        if (w->entry)
                w->entry->local = NULL;
        etcd_call_cancel(w->call);
        ev_timer_stop(w->cluster->loop, &w->retry);
        LIST_REMOVE(waiters, w->cluster->waiters, w);
        if (hashmap_get(&w->cluster->waiters_by_key, w->key) == w)
                hashmap_remove(&w->cluster->waiters_by_key, w->key);
        free(w->value);
        free(w->key);
        free(w->resource);
        free(w);
}

Cluster *cluster_free(Cluster *c) {
        if (!c)
                return NULL;
        ev_timer_stop(c->loop, &c->redecide);
        ev_timer_stop(c->loop, &c->orphans);
        c->stop_done = NULL;            /* a cluster_stop_keep() delete cancelled below */
        while (c->waiters)
                waiter_free(c->waiters);
        mirror_clear(c);
        while (c->resources) {
                CResource *r = c->resources;
                LIST_REMOVE(res, c->resources, r);
                free(r->name);
                free(r);
        }
        hashmap_done(&c->resources_by_name);
        hashmap_done(&c->keys_by_key);
        hashmap_done(&c->waiters_by_key);
        etcd_call_cancel(c->sync_call);
        etcd_watch_free(c->watch);
        etcd_call_cancel(c->stop_call);
        etcd_lease_keeper_free(c->keeper, false);
        etcd_client_free(c->client);
        free(c->prefix);
        free(c->node);
        free(c);
        return NULL;
}

static void on_revoked(EtcdClient *ec, int error, const EtcdResult *res, void *userdata) {
        Cluster *c = userdata;
        c->stop_call = NULL;
        c->stop_done(c, error, c->stop_userdata);
}

int cluster_stop(Cluster *c, ClusterStopFn done, void *userdata) {
        assert_return(c && done, -EINVAL);
        int64_t id = etcd_lease_keeper_get_id(c->keeper);
        ev_timer_stop(c->loop, &c->redecide);
        ev_timer_stop(c->loop, &c->orphans);
        while (c->waiters)
                waiter_free(c->waiters);
        c->watch = etcd_watch_free(c->watch);
        etcd_call_cancel(TAKE_PTR(c->sync_call));
        c->synced = false;
        c->keeper = etcd_lease_keeper_free(c->keeper, false);
        if (id == 0)
                return -EALREADY;
        c->stop_done = done;
        c->stop_userdata = userdata;
        return etcd_lease_revoke(c->client, id, on_revoked, c, &c->stop_call);
}

bool cluster_ready(const Cluster *c) {
        return c && c->keeper && c->synced && etcd_lease_keeper_get_state(c->keeper) == ETCD_LEASE_ALIVE &&
               !past_deadline(c);
}

EtcdLeaseState cluster_keeper_state(const Cluster *c) {
        return c->keeper ? etcd_lease_keeper_get_state(c->keeper) : ETCD_LEASE_LOST;
}

const char *cluster_node(const Cluster *c) {
        return c->node;
}

int cluster_declare(Cluster *c, const char *resource, unsigned capacity) {
        assert_return(c && resource && capacity > 0, -EINVAL);
        CResource *r = resource_get(c, resource, true);
        if (!r)
                return -ENOMEM;
        if (r->capacity != capacity && r->capacity != 0)
                /* A reload changed it: a larger capacity may grant waiters now, without
                 * waiting for the next event of the watch. From the loop, not from here. */
                ev_timer_start(c->loop, &c->redecide);
        r->capacity = capacity;
        return 0;
}

static int send_put(ClusterWaiter *w);

static void on_put(EtcdClient *ec, int error, const EtcdResult *res, void *userdata) {
        ClusterWaiter *w = userdata;
        Cluster *c = w->cluster;
        w->call = NULL;
        if (w->entry || w->state == CLUSTER_WAITER_ENDED)
                return;         /* the watch saw the key already */
        if (error == 0)
                return;         /* put, or (compare failed) put by an earlier attempt: the
                                 * watch brings the key and decides */
        /* No answer (a member killed, an election): the put may or may not have happened.
         * Sending it again is safe, as it creates the key only if it does not exist
         * (version 0); after too many tries, give up and delete whatever may be there. */
        bool transient = error == -ETIMEDOUT || error == -ECONNREFUSED || error == -EAGAIN ||
                         error == -ECONNRESET || error == -EIO;
        if (transient && ++w->attempts < 10) {
                ev_timer_set(&w->retry, 0.1 * w->attempts, 0.);
                ev_timer_start(c->loop, &w->retry);
                return;
        }
        EtcdOp op = { .type = ETCD_OP_DELETE, .key = w->key };
        EtcdTxn t = { .success = &op, .n_success = 1 };
        (void) etcd_txn(c->client, &t, NULL, NULL, NULL);
        waiter_end(c, w, error, res && res->message ? res->message : "cannot put the key in etcd");
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        ClusterWaiter *w = container_of(t, ClusterWaiter, retry);
        if (w->entry || w->state == CLUSTER_WAITER_ENDED)
                return;
        int k = send_put(w);
        if (k < 0)
                waiter_end(w->cluster, w, k, "cannot put the key in etcd");
}

static int send_put(ClusterWaiter *w) {
        /* Create only: the key is new (version 0), so a repeated put cannot move it. */
        EtcdCompare cmp = { .key = w->key, .target = ETCD_TARGET_VERSION, .result = ETCD_EQUAL, .number = 0 };
        EtcdOp op = { .type = ETCD_OP_PUT, .key = w->key, .value = w->value, .lease = w->lease };
        EtcdTxn t = { .compare = &cmp, .n_compare = 1, .success = &op, .n_success = 1 };
        return etcd_txn(w->cluster->client, &t, on_put, w, &w->call);
}

int cluster_acquire(Cluster *c, const ClusterAcquire *a, ClusterWaiter **ret) {
        assert_return(c && a && a->resource && ret, -EINVAL);
        CResource *r = resource_get(c, a->resource, false);
        if (!r || r->capacity == 0)
                return -ENXIO;
        unsigned units = a->exclusive ? r->capacity : (a->units ? a->units : 1);
        if (units > r->capacity)
                return -EINVAL;
        if (!cluster_ready(c))
                return -EAGAIN;
        int64_t lease = etcd_lease_keeper_get_id(c->keeper);
        if (lease == 0)
                return -EAGAIN;

        uint64_t rnd, secret[2];
        if (getrandom(&rnd, sizeof(rnd), 0) != sizeof(rnd) || getrandom(secret, sizeof(secret), 0) != sizeof(secret))
                return -EIO;
        /* The ticket a queued reply carries: the key's random part and a secret that only the
         * key's value holds (List never shows it), so that only the waiter can claim the key
         * again after a restart of this agend (cluster_adopt()). */
        char ticket[CLUSTER_TICKET_LEN + 1];
        snprintf(ticket, sizeof(ticket), "%016" PRIx64 "%016" PRIx64 "%016" PRIx64, rnd, secret[0], secret[1]);
        _cleanup_free_ char *rp = cluster_resource_prefix(c->prefix, a->resource), *value = NULL;
        JsonWriter jw;
        jw_init(&jw);
        jw_object_begin(&jw, NULL);
        jw_string(&jw, "node", c->node);
        jw_int(&jw, "uid", a->uid);
        jw_int(&jw, "gid", a->gid);
        jw_int(&jw, "pid", a->pid);
        jw_string(&jw, "comm", strempty(a->comm));
        jw_string(&jw, "description", strempty(a->description));
        jw_int(&jw, "units", units);
        jw_bool(&jw, "exclusive", a->exclusive);
        /* For the next process of this agend, if a restart keeps the key (cluster_stop_keep()). */
        if (a->ttl > 0)
                jw_int(&jw, "ttl", (int64_t) a->ttl);
        if (a->detached)
                jw_bool(&jw, "detached", true);
        jw_string(&jw, "ticket", ticket + 16);
        jw_object_end(&jw);
        if (rp && jw_finish(&jw) >= 0)
                value = strndup(jw.buf, jw.len);
        jw_done(&jw);

        ClusterWaiter *w = calloc(1, sizeof(*w));
        if (!w || !value || !(w->resource = strdup(a->resource)) ||
            asprintf(&w->key, "%s%s:%016" PRIx64, rp, c->node, rnd) < 0) {
                if (w)
                        free(w->resource);
                free(w);
                return -ENOMEM;
        }
        w->cluster = c;
        w->userdata = a->userdata;
        w->state = CLUSTER_WAITER_PUTTING;
        w->value = TAKE_PTR(value);
        memcpy(w->ticket, ticket, sizeof(w->ticket));
        w->lease = lease;
        ev_timer_init(&w->retry, retry_cb, 0., 0.);
        if (waiter_link(c, w) < 0) {
                free(w->value);
                free(w->key);
                free(w->resource);
                free(w);
                return -ENOMEM;
        }

        int k = send_put(w);
        if (k < 0) {
                waiter_free(w);
                return k;
        }
        *ret = w;
        return 0;
}

void cluster_waiter_release(Cluster *c, ClusterWaiter *w) {
        if (!w)
                return;
        if (w->state != CLUSTER_WAITER_ENDED || w->call) {
                /* Also while the put is on its way: the delete goes after it on the same
                 * client, and if it arrives first, the put's key is deleted by the lease at
                 * the latest. */
                EtcdOp op = { .type = ETCD_OP_DELETE, .key = w->key };
                EtcdTxn t = { .success = &op, .n_success = 1 };
                (void) etcd_txn(c->client, &t, NULL, NULL, NULL);
        }
        waiter_free(w);
}

ClusterWaiterState cluster_waiter_state(const ClusterWaiter *w) {
        return w->state;
}

void *cluster_waiter_get_userdata(const ClusterWaiter *w) {
        return w->userdata;
}

const char *cluster_waiter_ticket(const ClusterWaiter *w) {
        return w->ticket;
}

static bool ticket_valid(const char *ticket) {
        return strlen(ticket) == CLUSTER_TICKET_LEN && strspn(ticket, "0123456789abcdef") == CLUSTER_TICKET_LEN;
}

/* The unclaimed key of this agend's etcd lease in r with the ticket's random part: -ENOENT
 * if none, -EPERM if its secret is not the ticket's. */
static int orphan_find(Cluster *c, CResource *r, const char *ticket, CKey **ret) {
        _cleanup_free_ char *rp = cluster_resource_prefix(c->prefix, r->name), *key = NULL;
        if (!rp || asprintf(&key, "%s%s:%.16s", rp, c->node, ticket) < 0)
                return -ENOMEM;
        CKey *k = ckey_find(c, key);
        if (!k || k->resource != r || !is_orphan(c, k))
                return -ENOENT;
        /* The secret, compared in constant time. */
        const char *want = k->ticket, *got = ticket + 16;
        if (strlen(want) != strlen(got))
                return -EPERM;
        unsigned char d = 0;
        for (size_t i = 0; want[i]; i++)
                d |= (unsigned char) want[i] ^ (unsigned char) got[i];
        if (d != 0)
                return -EPERM;
        *ret = k;
        return 0;
}

int cluster_orphan_get(Cluster *c, const char *ticket, ClusterEntry *ret) {
        assert_return(c && ticket && ret, -EINVAL);
        if (!ticket_valid(ticket) || !c->synced)
                return -ENOENT;
        LIST_FOREACH(res, r, c->resources) {
                CKey *k;
                int q = orphan_find(c, r, ticket, &k);
                if (q == -ENOENT)
                        continue;
                if (q < 0)
                        return q;
                *ret = entry_of(k);
                return 0;
        }
        return -ENOENT;
}

int cluster_adopt(Cluster *c, const ClusterAcquire *a, const char *ticket, ClusterWaiter **ret) {
        assert_return(c && a && a->resource && ticket && ret, -EINVAL);
        if (!ticket_valid(ticket))
                return -ENOENT;
        if (!cluster_ready(c))
                return -EAGAIN;
        CResource *r = resource_get(c, a->resource, false);
        if (!r || r->capacity == 0)
                return -ENXIO;
        CKey *k;
        int q = orphan_find(c, r, ticket, &k);
        if (q < 0)
                return q == -EPERM ? -ENOENT : q;
        _cleanup_free_ char *key = strdup(k->key);
        if (!key)
                return -ENOMEM;
        ClusterWaiter *w = calloc(1, sizeof(*w));
        if (!w || !(w->resource = strdup(a->resource))) {
                free(w);
                return -ENOMEM;
        }
        w->key = TAKE_PTR(key);
        w->cluster = c;
        w->userdata = a->userdata;
        w->state = CLUSTER_WAITER_PUTTING;      /* the next decide() says queued or granted */
        w->lease = k->lease;
        memcpy(w->ticket, ticket, sizeof(w->ticket));
        ev_timer_init(&w->retry, retry_cb, 0., 0.);
        if (waiter_link(c, w) < 0) {
                free(w->key);
                free(w->resource);
                free(w);
                return -ENOMEM;
        }
        w->entry = k;
        k->local = w;
        ev_timer_start(c->loop, &c->redecide);  /* from the loop, not from inside this call */
        *ret = w;
        return 0;
}

static void on_kept_delete(EtcdClient *ec, int error, const EtcdResult *res, void *userdata) {
        Cluster *c = userdata;
        if (c->stop_pending > 0 && --c->stop_pending == 0 && c->stop_done)
                c->stop_done(c, error < 0 ? error : 0, c->stop_userdata);
}

int cluster_stop_keep(Cluster *c, ClusterStopFn done, void *userdata, int64_t *ret_lease) {
        assert_return(c && done && ret_lease, -EINVAL);
        int64_t id = etcd_lease_keeper_get_id(c->keeper);
        *ret_lease = id;
        ev_timer_stop(c->loop, &c->redecide);
        ev_timer_stop(c->loop, &c->orphans);
        c->stop_done = done;
        c->stop_userdata = userdata;
        c->stop_pending = 0;
        while (c->waiters) {
                ClusterWaiter *w = c->waiters;
                /* Queued and holding keys stay, with their place; every other key of this
                 * agend (a put still on its way) goes now. */
                if (id != 0 &&
                    !((w->state == CLUSTER_WAITER_QUEUED || w->state == CLUSTER_WAITER_HOLDS) && w->entry)) {
                        EtcdOp op = { .type = ETCD_OP_DELETE, .key = w->key };
                        EtcdTxn t = { .success = &op, .n_success = 1 };
                        if (etcd_txn(c->client, &t, on_kept_delete, c, NULL) >= 0)
                                c->stop_pending++;
                }
                waiter_free(w);
        }
        c->watch = etcd_watch_free(c->watch);
        etcd_call_cancel(TAKE_PTR(c->sync_call));
        c->synced = false;
        c->keeper = etcd_lease_keeper_free(c->keeper, false);
        if (id == 0)
                return -EALREADY;
        return c->stop_pending > 0 ? 0 : 1;
}

const char *cluster_waiter_key(const ClusterWaiter *w) {
        return w->key;
}

uint64_t cluster_waiter_token(const ClusterWaiter *w) {
        return w->token;
}

static int entry_emit(CKey *k, int (*fn)(const ClusterEntry *e, void *userdata), void *userdata) {
        ClusterEntry e = entry_of(k);
        return fn(&e, userdata);
}

int cluster_foreach(Cluster *c, const char *resource, int (*fn)(const ClusterEntry *e, void *userdata),
                    void *userdata) {
        LIST_FOREACH(res, r, c->resources) {
                if (resource && !streq(resource, r->name))
                        continue;
                for (int pass = 0; pass < 2; pass++)
                        LIST_FOREACH(keys, k, r->keys)
                                if (k->holds == (pass == 0)) {
                                        int q = entry_emit(k, fn, userdata);
                                        if (q < 0)
                                                return q;
                                }
        }
        return 0;
}

int cluster_usage(Cluster *c, const char *resource, unsigned *ret_used, unsigned *ret_holders,
                  unsigned *ret_waiters) {
        CResource *r = resource_get(c, resource, false);
        if (!r || r->capacity == 0)
                return -ENXIO;
        unsigned used = 0, holders = 0, waiters = 0;
        LIST_FOREACH(keys, k, r->keys) {
                if (k->holds) {
                        used += k->exclusive ? r->capacity : k->units;
                        holders++;
                } else
                        waiters++;
        }
        *ret_used = used;
        *ret_holders = holders;
        *ret_waiters = waiters;
        return 0;
}

typedef struct CheckCall {
        Cluster *cluster;
        unsigned capacity;
        uint64_t token;
        ClusterCheckFn cb;
        void *userdata;
} CheckCall;

static void on_check(EtcdClient *ec, int error, const EtcdResult *res, void *userdata) {
        CheckCall *cc = userdata;
        int result = error;
        if (error >= 0) {
                /* The same rule as decide(), on what etcd has now. A key that held keeps
                 * holding while it exists and the capacity did not shrink; that is all a
                 * fresh read can tell. */
                unsigned used = 0;
                result = 0;
                const EtcdOpResult *op = res->n_ops > 0 ? &res->ops[0] : NULL;
                for (size_t i = 0; op && i < op->n_kvs; i++) {
                        CKey k = {};
                        if (ckey_parse_value(&k, op->kvs[i].value, op->kvs[i].value_len) < 0) {
                                result = -ENOMEM;
                        }
                        unsigned need = k.exclusive ? cc->capacity : k.units;
                        free(k.node);
                        free(k.ticket);
                        free(k.comm);
                        free(k.description);
                        if (result < 0 || used + need > cc->capacity)
                                break;
                        used += need;
                        if ((uint64_t) op->kvs[i].create_revision == cc->token) {
                                result = 1;
                                break;
                        }
                }
        }
        cc->cb(cc->cluster, result, cc->userdata);
        free(cc);
}

int cluster_check(Cluster *c, const char *resource, unsigned capacity, uint64_t token, ClusterCheckFn cb,
                  void *userdata) {
        assert_return(c && resource && cb && capacity > 0, -EINVAL);
        _cleanup_free_ char *rp = cluster_resource_prefix(c->prefix, resource);
        CheckCall *cc = calloc(1, sizeof(*cc));
        if (!rp || !cc) {
                free(cc);
                return -ENOMEM;
        }
        *cc = (CheckCall) { .cluster = c, .capacity = capacity, .token = token, .cb = cb, .userdata = userdata };
        EtcdOp op = { .type = ETCD_OP_RANGE, .key = rp, .prefix = true, .sort_by_create = true };
        int k = etcd_range(c->client, &op, on_check, cc, NULL);
        if (k < 0)
                free(cc);
        return k;
}

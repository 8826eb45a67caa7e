/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "build-config.h"
#include "cluster-service.h"
#include "config.h"
#include "conn.h"
#include "errmap.h"
#include "escape.h"
#include "interface.h"
#include "json-util.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "peer.h"
#include "store-guard.h"

#define RESOURCE_NAME_MAX 255
#define DESCRIPTION_MAX 1024
#define HISTORY_LIMIT_DEFAULT 100
#define HISTORY_LIMIT_MAX 100000
/* The most events or leases one History or List reply carries (about 200 kB): a larger
 * request is answered in pages, with a cursor for the rest (see the interface). One reply
 * of 100 000 events would be 20 MB built in one go while every other client waits. */
#define HISTORY_PAGE_MAX 1000
#define LIST_PAGE_MAX 1000

#define ERR_INVALID "org.varlink.service.InvalidParameter"

static void add_string(struct json_object *o, const char *key, const char *value) {
        json_object_object_add(o, key, value ? json_object_new_string(value) : NULL);
}

static void add_int(struct json_object *o, const char *key, int64_t value) {
        json_object_object_add(o, key, json_object_new_int64(value));
}

static void add_bool(struct json_object *o, const char *key, bool value) {
        json_object_object_add(o, key, json_object_new_boolean(value));
}

/* Seconds with microsecond precision, printed as such: json-c's default shows 17
 * significant digits (0.57434700000000005). */
static void add_double(struct json_object *o, const char *key, double value) {
        char buf[64];
        snprintf(buf, sizeof(buf), "%.6f", value);
        char *e = buf + strlen(buf);
        while (e > buf && e[-1] == '0')
                *--e = 0;
        if (e > buf && e[-1] == '.')
                *e++ = '0', *e = 0;
        json_object_object_add(o, key, json_object_new_double_s(value, buf));
}

/* A string member of at most max bytes (get_string() already refuses embedded NULs). */
static int get_string(struct json_object *p, const char *key, bool required, size_t max, const char **ret) {
        const char *s = NULL;
        int k = json_get_string(p, key, required ? JSON_REQUIRED : 0, &s);
        if (k <= 0)
                return k;
        if (strlen(s) > max)
                return -EINVAL;
        *ret = s;
        return k;
}

static void invalid(Conn *c, const char *parameter, const char *reason) {
        conn_error_reason(c, ERR_INVALID, reason, "parameter", parameter);
}

static void error_errno(Conn *c, int error, const char *reason, const char *key, const char *value) {
        const char *name = errmap_to_name(error);
        conn_error_reason(c, name ? name : "io.agend.Lease.ProtocolError", reason, key, value);
}

static struct json_object *owner_to_json(const Owner *o) {
        struct json_object *j = json_object_new_object();
        if (!j)
                return NULL;
        add_int(j, "uid", o->uid);
        add_int(j, "gid", o->gid);
        add_int(j, "pid", o->pid);
        add_string(j, "comm", strempty(o->comm));
        if (o->unit)
                add_string(j, "unit", o->unit);
        return j;
}

/* Monotonic deadlines are shown as wall-clock times: now_real + (deadline - now_mono). */
static int64_t deadline_to_real(usec_t deadline) {
        usec_t mono = usec_now(CLOCK_MONOTONIC), real = usec_now(CLOCK_REALTIME);
        if (deadline >= mono)
                return (int64_t) (real + (deadline - mono));
        return (int64_t) (real - MIN(real, mono - deadline));
}

struct json_object *lease_to_json(const Lease *l) {
        struct json_object *j = json_object_new_object();
        if (!j)
                return NULL;
        add_string(j, "id", l->id);
        add_string(j, "resource", l->resource->name);
        add_int(j, "units", l->units);
        add_bool(j, "exclusive", l->exclusive);
        add_int(j, "token", (int64_t) l->token);
        json_object_object_add(j, "owner", owner_to_json(&l->owner));
        add_string(j, "description", l->description);
        add_int(j, "created", (int64_t) l->created);
        if (l->ttl > 0)
                add_double(j, "ttl", usec_to_sec(l->ttl));
        if (l->deadline != USEC_INFINITY)
                add_int(j, "deadline", deadline_to_real(l->deadline));
        add_bool(j, "detached", l->detached);
        add_string(j, "state", l->state == LEASE_RECLAIMABLE ? "reclaimable" : "held");
        const char *node = cluster_lease_node(l);
        if (node)
                add_string(j, "node", node);
        return j;
}

static struct json_object *waiter_to_json(const Waiter *w) {
        struct json_object *j = json_object_new_object();
        if (!j)
                return NULL;
        add_string(j, "resource", w->resource->name);
        add_int(j, "units", w->units);
        add_bool(j, "exclusive", w->exclusive);
        add_int(j, "position", w->position);
        json_object_object_add(j, "owner", owner_to_json(&w->owner));
        add_string(j, "description", w->description);
        add_int(j, "since", (int64_t) w->since);
        return j;
}

struct json_object *event_to_json(const Event *e) {
        struct json_object *j = json_object_new_object();
        if (!j)
                return NULL;
        add_string(j, "type", event_type_to_string(e->type));
        add_int(j, "time", (int64_t) e->time);
        add_string(j, "resource", e->resource);
        if (e->lease)
                add_string(j, "lease", e->lease);
        if (e->token)
                add_int(j, "token", (int64_t) e->token);
        if (e->owner)
                json_object_object_add(j, "owner", owner_to_json(e->owner));
        add_int(j, "units", e->units);
        if (e->reason)
                add_string(j, "reason", e->reason);
        if (e->revoked_by)
                json_object_object_add(j, "revoked_by", owner_to_json(e->revoked_by));
        if (e->node)
                add_string(j, "node", e->node);
        return j;
}

static bool name_ok(const char *s) {
        if (!*s)
                return false;
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

/* Constant time, so the secret cannot be guessed byte by byte from reply timing. */
static bool secret_eq(const char *a, const char *b) {
        size_t n = strlen(a);
        if (strlen(b) != n)
                return false;
        unsigned char d = 0;
        for (size_t i = 0; i < n; i++)
                d |= (unsigned char) a[i] ^ (unsigned char) b[i];
        return d == 0;
}

static bool may_use(const Resource *r, const Conn *c) {
        if (!r || !r->restricted || c->peer.uid == 0)
                return true;
        for (size_t i = 0; i < r->n_allow_uids; i++)
                if (r->allow_uids[i] == c->peer.uid)
                        return true;
        for (size_t i = 0; i < r->n_allow_gids; i++)
                if (peer_in_group(c->peer.gid, c->groups, c->n_groups, r->allow_gids[i]))
                        return true;
        return false;
}

static bool check_members(Conn *c, struct json_object *p, const char *const *allowed) {
        const char *unknown;
        if (json_check_keys(p, allowed, &unknown) < 0) {
                invalid(c, unknown, "unknown parameter");
                return false;
        }
        return true;
}

static void reply_granted(Conn *c, const Lease *l, bool continues) {
        struct json_object *p = json_object_new_object();
        if (p) {
                add_string(p, "state", "granted");
                json_object_object_add(p, "lease", lease_to_json(l));
                add_string(p, "secret", l->secret);
        }
        conn_reply(c, p, continues);
}

static void reply_queued(Conn *c, const Waiter *w) {
        struct json_object *p = json_object_new_object();
        if (p) {
                add_string(p, "state", "queued");
                add_int(p, "position", w->position);
                add_string(p, "ticket", w->ticket);
        }
        conn_reply(c, p, true);
}

static void method_acquire(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "resource", "units",    "exclusive",   "timeout",
                                               "ttl",      "detached", "description", "ticket",
                                               NULL };
        Manager *m = c->manager;
        const char *resource = NULL, *description = NULL, *ticket = NULL;
        int64_t units = 1;
        bool exclusive = false, detached = false;
        usec_t timeout_u = USEC_INFINITY, ttl_u = 0;

        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", true, RESOURCE_NAME_MAX, &resource) < 0 || !name_ok(resource))
                return invalid(c, "resource", "a resource name: 1..255 bytes, no control characters");
        if (json_get_int64(p, "units", 0, 1, 1000000, &units) < 0)
                return invalid(c, "units", "an integer in 1..1000000");
        if (json_get_bool(p, "exclusive", 0, &exclusive) < 0)
                return invalid(c, "exclusive", "a boolean");
        if (json_get_seconds(p, "timeout", 0, &timeout_u) < 0)
                return invalid(c, "timeout", "seconds, a number >= 0 (0 = try once)");
        if (json_get_seconds(p, "ttl", 0, &ttl_u) < 0)
                return invalid(c, "ttl", "seconds, a number >= 0 (0 = no TTL)");
        if (json_get_bool(p, "detached", 0, &detached) < 0)
                return invalid(c, "detached", "a boolean");
        if (get_string(p, "description", false, DESCRIPTION_MAX, &description) < 0)
                return invalid(c, "description", "a string of at most 1024 bytes without NUL");
        if (get_string(p, "ticket", false, 64, &ticket) < 0)
                return invalid(c, "ticket", "a string: the ticket of an earlier queued reply");

        /* The disk is full: nothing new may be added until space returns. */
        const char *full = store_guard_refusal(m->guard);
        if (full)
                return conn_error_reason(c, "io.agend.Lease.StorageError", full, NULL, NULL);
        if (!may_use(engine_resource_get(m->engine, resource), c))
                return conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                                         "the configuration does not allow this user to use the resource",
                                         "resource", resource);


        UserStat *u = c->user;
        if (c->peer.uid != 0 && u && u->leases >= m->config.max_leases_per_user)
                return conn_error_reason(c, "io.agend.Lease.LimitExceeded", "too many leases for this user",
                                         "limit", "leases");

        AcquireParams ap = {
                .resource = resource,
                .units = (unsigned) units,
                .exclusive = exclusive,
                .try_once = timeout_u == 0,
                .timeout = timeout_u,
                .ttl = ttl_u,
                .detached = detached,
                .description = description,
                .owner = &c->peer,
                .ticket = ticket,
        };
        /* The waiter limit is checked only when the request would wait. */
        if (c->peer.uid != 0 && u && u->waiters >= m->config.max_waiters_per_user)
                ap.try_once = true;

        if (cluster_service_serves(m->cluster, resource))
                return cluster_service_acquire(m->cluster, c, &ap);

        Lease *l = NULL;
        Waiter *w = NULL;
        int k = engine_acquire(m->engine, &ap, &c->holder, c, &l, &w);
        if (k == 0)
                return reply_granted(c, l, false);
        if (k == 1) {
                c->busy = CONN_ACQUIRE;
                c->waiter = w;
                if (u)
                        u->waiters++;
                if (conn_more(c))
                        reply_queued(c, w);
                return;
        }
        if (k == -ETIMEDOUT && ap.try_once && timeout_u != 0)
                return conn_error_reason(c, "io.agend.Lease.LimitExceeded", "too many waiters for this user",
                                         "limit", "waiters");
        if (k == -ETIMEDOUT)
                return conn_error_reason(c, "io.agend.Lease.Timeout", "the resource is busy", "resource",
                                         resource);
        if (k == -EINVAL)
                return invalid(c, "units", "more units than the resource's capacity");
        if (k == -ENXIO)
                return conn_error_reason(c, "io.agend.Lease.NoSuchResource",
                                         "the resource is not declared and the configuration allows only declared ones",
                                         "resource", resource);
        error_errno(c, k, "cannot acquire", "resource", resource);
}

/* Finds the lease named by "id" and checks that the caller may act on it: its own
 * connection, the secret, or root. */
static Lease *lease_for_caller(Conn *c, struct json_object *p, bool allow_secret) {
        const char *id = NULL, *secret = NULL;
        if (get_string(p, "id", true, 64, &id) < 0) {
                invalid(c, "id", "a lease id string");
                return NULL;
        }
        if (get_string(p, "secret", false, 64, &secret) < 0) {
                invalid(c, "secret", "a string");
                return NULL;
        }
        Lease *l = engine_lease_get(c->manager->engine, id);
        if (!l) {
                conn_error_reason(c, "io.agend.Lease.NoSuchLease", "no lease with this id", "id", id);
                return NULL;
        }
        if (l->holder == &c->holder || c->peer.uid == 0 || (allow_secret && secret && secret_eq(secret, l->secret)))
                return l;
        conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                          secret ? "the secret does not match" : "not the holder: give the lease's secret", "id", id);
        return NULL;
}

/* lease_for_caller() for the leases of cluster resources: NULL if the id is not one (the
 * local lookup follows), CLUSTER_LEASE_REFUSED after an error reply. */
#define CLUSTER_LEASE_REFUSED ((ClusterLease *) 1)
static ClusterLease *cluster_lease_for_caller(Conn *c, struct json_object *p) {
        const char *id = NULL, *secret = NULL;
        if (!c->manager->cluster || get_string(p, "id", true, 64, &id) < 0 ||
            get_string(p, "secret", false, 64, &secret) < 0)
                return NULL;
        ClusterLease *cl = cluster_service_lease(c->manager->cluster, id);
        if (!cl)
                return NULL;
        const Lease *l = cluster_lease_get_lease(cl);
        if (l->holder == &c->holder || c->peer.uid == 0 || (secret && secret_eq(secret, l->secret)))
                return cl;
        conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                          secret ? "the secret does not match" : "not the holder: give the lease's secret", "id", id);
        return CLUSTER_LEASE_REFUSED;
}

static void method_release(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "id", "secret", NULL };
        if (!check_members(c, p, allowed))
                return;
        ClusterLease *cl = cluster_lease_for_caller(c, p);
        if (cl) {
                if (cl != CLUSTER_LEASE_REFUSED) {
                        const Lease *x = cluster_lease_get_lease(cl);
                        cluster_service_release(c->manager->cluster, cl,
                                                x->holder == &c->holder ? "released by the holder"
                                                : c->peer.uid == 0      ? "released by root"
                                                                        : "released with the secret");
                        conn_reply(c, NULL, false);
                }
                return;
        }
        Lease *l = lease_for_caller(c, p, true);
        if (!l)
                return;
        const char *reason = l->holder == &c->holder ? "released by the holder"
                             : c->peer.uid == 0        ? "released by root"
                                                       : "released with the secret";
        engine_lease_end(c->manager->engine, l, EVENT_RELEASED, reason);
        conn_reply(c, NULL, false);
}

static void method_renew(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "id", "ttl", "secret", NULL };
        usec_t t = 0;
        if (!check_members(c, p, allowed))
                return;
        if (json_get_seconds(p, "ttl", 0, &t) < 0)
                return invalid(c, "ttl", "seconds, a number > 0");
        ClusterLease *cl = cluster_lease_for_caller(c, p);
        if (cl) {
                if (cl == CLUSTER_LEASE_REFUSED)
                        return;
                if (cluster_service_renew(c->manager->cluster, cl, t) < 0)
                        return invalid(c, "ttl", "the lease has no TTL: give one");
                struct json_object *r = json_object_new_object();
                if (r)
                        json_object_object_add(r, "lease", lease_to_json(cluster_lease_get_lease(cl)));
                return conn_reply(c, r, false);
        }
        Lease *l = lease_for_caller(c, p, true);
        if (!l)
                return;
        if (engine_lease_renew(c->manager->engine, l, t) < 0)
                return invalid(c, "ttl", "the lease has no TTL: give one");
        struct json_object *r = json_object_new_object();
        if (r)
                json_object_object_add(r, "lease", lease_to_json(l));
        conn_reply(c, r, false);
}

static void method_reclaim(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "id", "token", "secret", NULL };
        const char *id = NULL, *secret = NULL;
        int64_t token = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "id", true, 64, &id) < 0)
                return invalid(c, "id", "a lease id string");
        if (json_get_int64(p, "token", JSON_REQUIRED, 1, INT64_MAX, &token) < 0)
                return invalid(c, "token", "the lease's fencing token");
        if (get_string(p, "secret", true, 64, &secret) < 0)
                return invalid(c, "secret", "the lease's secret");
        Lease *l = engine_lease_get(c->manager->engine, id);
        if (!l)
                return conn_error_reason(c, "io.agend.Lease.NoSuchLease",
                                         "no lease with this id (not restored, or not reclaimed in time)", "id", id);
        if ((uint64_t) token != l->token || !secret_eq(secret, l->secret))
                return conn_error_reason(c, "io.agend.Lease.PermissionDenied", "token or secret does not match",
                                         "id", id);
        int k = engine_lease_reclaim(c->manager->engine, l, &c->holder);
        if (k < 0)
                return conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                                         "the lease is held by another live connection", "id", id);
        struct json_object *r = json_object_new_object();
        if (r)
                json_object_object_add(r, "lease", lease_to_json(l));
        conn_reply(c, r, false);
}

static void method_revoke(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "id", "reason", NULL };
        const char *id = NULL, *reason = NULL;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "id", true, 64, &id) < 0)
                return invalid(c, "id", "a lease id string");
        if (get_string(p, "reason", false, DESCRIPTION_MAX, &reason) < 0)
                return invalid(c, "reason", "a string of at most 1024 bytes without NUL");
        if (!config_may_revoke(&c->manager->config, c->peer.uid, c->peer.gid, c->groups, c->n_groups))
                return conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                                         "revoking needs root or RevokeUsers=/RevokeGroups= in agend.conf", "id", id);
        char buf[64];
        if (!reason) {
                snprintf(buf, sizeof(buf), "revoked by uid %u", c->peer.uid);
                reason = buf;
        }
        ClusterLease *cl = cluster_service_lease(c->manager->cluster, id);
        if (cl) {
                cluster_service_revoke(c->manager->cluster, cl, reason, &c->peer);
                return conn_reply(c, NULL, false);
        }
        Lease *l = engine_lease_get(c->manager->engine, id);
        if (!l)
                return conn_error_reason(c, "io.agend.Lease.NoSuchLease", "no lease with this id", "id", id);
        /* The revoke's own log entry (log_lease_event()) names the revoker, with its
         * journal fields; History keeps it in the event's revoked_by. */
        engine_lease_revoke(c->manager->engine, l, reason, &c->peer);
        conn_reply(c, NULL, false);
}

/* Anyone may ask (leases are visible to every local user), so a guarded service can check
 * the token a writer presents before it accepts the write. */
static void method_check(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "resource", "token", NULL };
        const char *resource = NULL;
        int64_t token = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", true, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (json_get_int64(p, "token", JSON_REQUIRED, 0, INT64_MAX, &token) < 0)
                return invalid(c, "token", "a fencing token: an integer >= 0");
        if (cluster_service_serves(c->manager->cluster, resource))
                return cluster_service_check(c->manager->cluster, c, resource, (uint64_t) token);
        struct json_object *r = json_object_new_object();
        if (!r)
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        add_bool(r, "current", engine_token_current(c->manager->engine, resource, (uint64_t) token));
        conn_reply(c, r, false);
}

typedef struct ListState {
        Lease **leases;
        size_t n_leases, size;
        uint64_t after;
        struct json_object *waiters;
        bool waiters_cut;
} ListState;

static int list_resource(Resource *r, ListState *s) {
        for (Lease *l = r->leases; l; l = l->res_next) {
                if (l->token <= s->after)
                        continue;
                if (s->n_leases == s->size) {
                        size_t n = MAX(s->size * 2, (size_t) 64);
                        Lease **a = realloc(s->leases, n * sizeof(*a));
                        if (!a)
                                return -ENOMEM;
                        s->leases = a;
                        s->size = n;
                }
                s->leases[s->n_leases++] = l;
        }
        if (!s->waiters)
                return 0;
        for (Waiter *w = r->wait_head; w; w = w->next) {
                if (json_object_array_length(s->waiters) >= LIST_PAGE_MAX) {
                        s->waiters_cut = true;
                        break;
                }
                if (json_object_array_add(s->waiters, waiter_to_json(w)) < 0)
                        return -ENOMEM;
        }
        return 0;
}

static int list_cluster(Conn *c, const char *resource, ListState *s, ClusterListing *cl) {
        int k = cluster_service_list(c->manager->cluster, resource, s->after, cl);
        if (k < 0)
                return k;
        if (cl->n_leases > 0) {
                Lease **a = realloc(s->leases, (s->n_leases + cl->n_leases) * sizeof(*a));
                if (!a)
                        return -ENOMEM;
                s->leases = a;
                s->size = s->n_leases + cl->n_leases;
                memcpy(a + s->n_leases, cl->leases, cl->n_leases * sizeof(*a));
                s->n_leases += cl->n_leases;
        }
        for (size_t i = 0; s->waiters && cl->waiters && i < json_object_array_length(cl->waiters); i++)
                if (json_object_array_add(s->waiters, json_object_get(json_object_array_get_idx(cl->waiters, i))) < 0)
                        return -ENOMEM;
        return 0;
}

static int lease_token_cmp(const void *a, const void *b) {
        const Lease *x = *(Lease *const *) a, *y = *(Lease *const *) b;
        return x->token < y->token ? -1 : x->token > y->token;
}

/* Leases in token order (tokens are unique and only grow), so "after" is a stable cursor
 * while leases come and go; waiters on the first page only. */
static void method_list(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "resource", "limit", "after", NULL };
        const char *resource = NULL;
        int64_t limit = LIST_PAGE_MAX, after = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", false, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (json_get_int64(p, "limit", 0, 1, INT64_MAX, &limit) < 0)
                return invalid(c, "limit", "an integer >= 1");
        if (json_get_int64(p, "after", 0, 0, INT64_MAX, &after) < 0)
                return invalid(c, "after", "a continue_after value of an earlier reply");
        size_t page = (size_t) MIN(limit, (int64_t) LIST_PAGE_MAX);
        _cleanup_free_ Lease **leases_buf = NULL;
        ListState s = { .after = (uint64_t) after };
        struct json_object *r = json_object_new_object(), *leases = json_object_new_array();
        if (after == 0)
                s.waiters = json_object_new_array();
        if (!r || !leases || (after == 0 && !s.waiters)) {
                json_object_put(r);
                json_object_put(leases);
                json_object_put(s.waiters);
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        }
        int k = 0;
        if (resource) {
                Resource *res = engine_resource_get(c->manager->engine, resource);
                if (res)
                        k = list_resource(res, &s);
        } else {
                HashmapIter i = {};
                Resource *res;
                while (k >= 0 && hashmap_iterate(engine_resources(c->manager->engine), &i, (void **) &res))
                        k = list_resource(res, &s);
        }
        /* Cluster resources: their holders and waiters on every host, as this host's mirror
         * of etcd has them. */
        _cleanup_(cluster_listing_done) ClusterListing cl = {};
        if (k >= 0)
                k = list_cluster(c, resource, &s, &cl);
        leases_buf = s.leases;
        if (k < 0) {
                json_object_put(r);
                json_object_put(leases);
                json_object_put(s.waiters);
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        }
        if (s.n_leases > 0)
                qsort(s.leases, s.n_leases, sizeof(*s.leases), lease_token_cmp);
        size_t n = MIN(page, s.n_leases);
        for (size_t i = 0; i < n; i++)
                json_object_array_add(leases, lease_to_json(s.leases[i]));
        json_object_object_add(r, "leases", leases);
        json_object_object_add(r, "waiters", s.waiters ? s.waiters : json_object_new_array());
        if (n < s.n_leases)
                add_int(r, "continue_after", (int64_t) s.leases[n - 1]->token);
        if (s.waiters_cut)
                add_bool(r, "waiters_truncated", true);
        conn_reply(c, r, false);
}

static void method_resources(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { NULL };
        if (!check_members(c, p, allowed))
                return;
        struct json_object *r = json_object_new_object(), *a = json_object_new_array();
        if (!r || !a) {
                json_object_put(r);
                json_object_put(a);
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        }
        HashmapIter i = {};
        Resource *res;
        while (hashmap_iterate(engine_resources(c->manager->engine), &i, (void **) &res)) {
                struct json_object *j = json_object_new_object();
                if (!j)
                        continue;
                add_string(j, "name", res->name);
                add_int(j, "capacity", res->capacity);
                unsigned used = res->used, n_leases = res->n_leases, n_waiters = res->n_waiters;
                /* A cluster resource: what every host holds, from the mirror of etcd. */
                (void) cluster_service_usage(c->manager->cluster, res->name, &used, &n_leases, &n_waiters);
                add_int(j, "used", used);
                add_int(j, "leases", n_leases);
                add_int(j, "waiters", n_waiters);
                add_bool(j, "declared", res->declared);
                json_object_array_add(a, j);
        }
        json_object_object_add(r, "resources", a);
        conn_reply(c, r, false);
}

static void method_status(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { NULL };
        Manager *m = c->manager;
        if (!check_members(c, p, allowed))
                return;
        struct json_object *r = json_object_new_object();
        if (!r)
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        add_string(r, "version", AGEND_VERSION);
        add_double(r, "uptime", usec_to_sec(usec_now(CLOCK_MONOTONIC) - m->started));
        add_string(r, "boot_id", m->boot_id);
        add_int(r, "leases", engine_n_leases(m->engine));
        add_int(r, "waiters", engine_n_waiters(m->engine));
        add_int(r, "connections", varlink_server_n_connections(m->server));
        add_int(r, "commits", (int64_t) m->commits);
        add_int(r, "database_size", m->store->ops->size(m->store));
        if (m->store->ops->log_bytes)
                add_int(r, "wal_bytes", m->store->ops->log_bytes(m->store));
        add_string(r, "sync", m->config.sync == STORE_SYNC_FULL ? "full" : "normal");
        conn_reply(c, r, false);
}

static void method_watch(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "resource", "lease", NULL };
        const char *resource = NULL, *lease = NULL;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", false, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (get_string(p, "lease", false, 64, &lease) < 0)
                return invalid(c, "lease", "a lease id");
        if (lease && !engine_lease_get(c->manager->engine, lease) && !cluster_service_lease(c->manager->cluster, lease))
                return conn_error_reason(c, "io.agend.Lease.NoSuchLease", "no lease with this id", "id", lease);
        if (!conn_more(c))
                return conn_error_reason(c, "org.varlink.service.ExpectedMore", "Watch streams: call it with \"more\"",
                                         NULL, NULL);
        c->watch_resource = resource ? strdup(resource) : NULL;
        c->watch_lease = lease ? strdup(lease) : NULL;
        if ((resource && !c->watch_resource) || (lease && !c->watch_lease))
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        conn_watch_start(c);
        struct json_object *r = json_object_new_object();
        if (r)
                json_object_object_add(r, "event", NULL);
        conn_reply(c, r, true);
}

typedef struct HistoryState {
        struct json_object *events;
        uint64_t oldest;        /* seq of the first (oldest) event */
} HistoryState;

static int history_one(const Event *e, void *userdata) {
        HistoryState *s = userdata;
        if (s->oldest == 0)
                s->oldest = e->seq;
        return json_object_array_add(s->events, event_to_json(e)) < 0 ? -ENOMEM : 0;
}

static void method_history(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "resource", "limit", "before", NULL };
        const char *resource = NULL;
        int64_t limit = HISTORY_LIMIT_DEFAULT, before = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", false, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (json_get_int64(p, "limit", 0, 1, HISTORY_LIMIT_MAX, &limit) < 0)
                return invalid(c, "limit", "an integer in 1..100000");
        if (json_get_int64(p, "before", 0, 1, INT64_MAX, &before) < 0)
                return invalid(c, "before", "a continue_before value of an earlier reply");
        unsigned page = (unsigned) MIN(limit, (int64_t) HISTORY_PAGE_MAX);
        HistoryState s = { .events = json_object_new_array() };
        if (!s.events)
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        int k = engine_history(c->manager->engine, resource, (uint64_t) before, page, history_one, &s);
        if (k < 0) {
                json_object_put(s.events);
                return error_errno(c, k, "cannot read the history", NULL, NULL);
        }
        struct json_object *r = json_object_new_object();
        if (!r) {
                json_object_put(s.events);
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        }
        if (s.oldest > 0 && json_object_array_length(s.events) == page)
                add_int(r, "continue_before", (int64_t) s.oldest);
        json_object_object_add(r, "events", s.events);
        conn_reply(c, r, false);
}

static void method_get_info(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { NULL };
        if (!check_members(c, p, allowed))
                return;
        struct json_object *r = json_object_new_object(), *ifaces = json_object_new_array();
        if (!r || !ifaces) {
                json_object_put(r);
                json_object_put(ifaces);
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        }
        add_string(r, "vendor", "agend");
        add_string(r, "product", "agend");
        add_string(r, "version", AGEND_VERSION);
        add_string(r, "url", "man:agend(8)");
        json_object_array_add(ifaces, json_object_new_string("org.varlink.service"));
        json_object_array_add(ifaces, json_object_new_string("io.agend.Lease"));
        json_object_object_add(r, "interfaces", ifaces);
        conn_reply(c, r, false);
}

static const char org_varlink_service_description[] =
        "# The Varlink Service Interface is provided by every varlink service.\n"
        "interface org.varlink.service\n\n"
        "method GetInfo() -> (\n  vendor: string,\n  product: string,\n  version: string,\n"
        "  url: string,\n  interfaces: []string\n)\n\n"
        "method GetInterfaceDescription(interface: string) -> (description: string)\n\n"
        "# agend adds reason to each error: why, in words for a person.\n"
        "error InterfaceNotFound (interface: string, reason: ?string)\n"
        "error MethodNotFound (method: string, reason: ?string)\n"
        "error MethodNotImplemented (method: string, reason: ?string)\n"
        "error InvalidParameter (parameter: string, reason: ?string)\n"
        "error PermissionDenied (reason: ?string)\n"
        "error ExpectedMore (reason: ?string)\n";

static void method_get_interface_description(Conn *c, struct json_object *p) {
        static const char *const allowed[] = { "interface", NULL };
        const char *iface = NULL;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "interface", true, 256, &iface) < 0)
                return invalid(c, "interface", "an interface name");
        const char *text = NULL;
        if (strcmp(iface, "io.agend.Lease") == 0)
                text = interface_io_agend_lease;
        else if (strcmp(iface, "org.varlink.service") == 0)
                text = org_varlink_service_description;
        else
                return conn_error_reason(c, "org.varlink.service.InterfaceNotFound", "no such interface",
                                         "interface", iface);
        struct json_object *r = json_object_new_object();
        if (r)
                add_string(r, "description", text);
        conn_reply(c, r, false);
}

typedef struct MethodEntry {
        const char *name;
        void (*func)(Conn *c, struct json_object *p);
} MethodEntry;

static const MethodEntry methods[] = {
        { "io.agend.Lease.Acquire", method_acquire },
        { "io.agend.Lease.Release", method_release },
        { "io.agend.Lease.Renew", method_renew },
        { "io.agend.Lease.Reclaim", method_reclaim },
        { "io.agend.Lease.Revoke", method_revoke },
        { "io.agend.Lease.List", method_list },
        { "io.agend.Lease.Resources", method_resources },
        { "io.agend.Lease.Status", method_status },
        { "io.agend.Lease.Watch", method_watch },
        { "io.agend.Lease.History", method_history },
        { "io.agend.Lease.Check", method_check },
        { "org.varlink.service.GetInfo", method_get_info },
        { "org.varlink.service.GetInterfaceDescription", method_get_interface_description },
};

static void method_call(VarlinkConn *link, struct json_object *p, void *userdata) {
        const MethodEntry *e = userdata;
        e->func(varlink_conn_get_userdata(link), p);
}

int methods_bind(VarlinkServer *s) {
        for (size_t i = 0; i < ELEMENTSOF(methods); i++) {
                int k = varlink_server_bind_method(s, methods[i].name, method_call, (void *) &methods[i]);
                if (k < 0)
                        return k;
        }
        return 0;
}

/* ---- Engine callbacks ---------------------------------------------------------------- */

static void cb_granted(Engine *e, Waiter *w, Lease *l, void *userdata) {
        Conn *c = w->userdata;
        c->waiter = NULL;
        if (c->user && c->user->waiters > 0)
                c->user->waiters--;
        reply_granted(c, l, false);
        conn_call_done(c);
}

static void cb_timed_out(Engine *e, Waiter *w, void *userdata) {
        Conn *c = w->userdata;
        c->waiter = NULL;
        if (c->user && c->user->waiters > 0)
                c->user->waiters--;
        conn_error_reason(c, "io.agend.Lease.Timeout", "the timeout passed before the resource was free",
                          "resource", w->resource->name);
        conn_call_done(c);
}

static void cb_moved(Engine *e, Waiter *w, void *userdata) {
        Conn *c = w->userdata;
        if (conn_more(c))
                reply_queued(c, w);
}

static bool event_ends_lease(EventType t) {
        return t == EVENT_RELEASED || t == EVENT_EXPIRED || t == EVENT_REVOKED || t == EVENT_VOIDED;
}

static void cb_event(Engine *e, const Event *ev, Lease *l, void *userdata) {
        Manager *m = userdata;

        log_lease_event(ev);

        if (ev->owner && !ev->remote && ev->type != EVENT_QUEUED && ev->type != EVENT_RENEWED &&
            ev->type != EVENT_RECLAIMED) {
                UserStat *u = manager_user(m, ev->owner->uid, ev->type == EVENT_GRANTED);
                if (u) {
                        if (ev->type == EVENT_GRANTED)
                                u->leases++;
                        else if (event_ends_lease(ev->type) && u->leases > 0)
                                u->leases--;
                        manager_user_maybe_free(m, u);
                }
        }

        if (!m->watchers)
                return;
        /* Serialized once and queued by reference to every subscriber (and once more,
         * lazily, as the final reply of the Watch(lease) calls this event ends). */
        _cleanup_(json_object_putp) struct json_object *params = json_object_new_object();
        if (!params)
                return;
        json_object_object_add(params, "event", event_to_json(ev));
        VarlinkBuf *buf[2] = {};        /* [0]: final reply, [1]: continues */
        for (Conn *c = m->watchers, *next; c; c = next) {
                next = c->watch_next;
                if (c->watch_lease) {
                        if (!ev->lease || strcmp(c->watch_lease, ev->lease) != 0)
                                continue;
                } else if (c->watch_resource && strcmp(c->watch_resource, ev->resource) != 0)
                        continue;
                bool ends = c->watch_lease && event_ends_lease(ev->type);
                int i = ends ? 0 : 1;
                if (!buf[i]) {
                        _cleanup_(json_object_putp) struct json_object *msg = vl_reply_new(json_object_get(params),
                                                                                           !ends);
                        size_t len = 0;
                        const char *text = msg ? json_object_to_json_string_length(
                                                         msg, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                         &len)
                                               : NULL;
                        if (text)
                                (void) varlink_buf_new(text, len, &buf[i]);
                }
                if (buf[i])
                        (void) varlink_conn_reply_shared(c->link, buf[i], !ends);
                else
                        varlink_conn_close(c->link);    /* out of memory: better closed than silent */
                if (ends)
                        conn_watch_end(c);
        }
        varlink_buf_unref(buf[0]);
        varlink_buf_unref(buf[1]);
}

const EngineCallbacks methods_engine_callbacks = {
        .granted = cb_granted,
        .timed_out = cb_timed_out,
        .moved = cb_moved,
        .event = cb_event,
};

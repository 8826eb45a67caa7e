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
#include "json-writer.h"
#include "json-util.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "peer.h"
#include "store-guard.h"
#include "vl-params.h"

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

/* A string member of at most max bytes (get_string() already refuses embedded NULs). */
static int get_string(const VlParams *p, const char *key, bool required, size_t max, const char **ret) {
        const char *s = NULL;
        int k = vl_param_string(p, key, required ? JSON_REQUIRED : 0, &s);
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

/* Replies and events are written member by member into a JsonWriter (common/json-writer.h),
 * no json-c tree: on any failure the writer keeps the error and the reply is not sent as
 * it is (varlink_conn_reply_end() sends an error instead). */

static void owner_write(JsonWriter *w, const char *key, const Owner *o) {
        jw_object_begin(w, key);
        jw_int(w, "uid", o->uid);
        jw_int(w, "gid", o->gid);
        jw_int(w, "pid", o->pid);
        jw_string(w, "comm", strempty(o->comm));
        if (o->unit)
                jw_string(w, "unit", o->unit);
        jw_object_end(w);
}

/* Monotonic deadlines are shown as wall-clock times: now_real + (deadline - now_mono). */
static int64_t deadline_to_real(usec_t deadline) {
        usec_t mono = usec_now(CLOCK_MONOTONIC), real = usec_now(CLOCK_REALTIME);
        if (deadline >= mono)
                return (int64_t) (real + (deadline - mono));
        return (int64_t) (real - MIN(real, mono - deadline));
}

static void lease_write(JsonWriter *w, const char *key, const Lease *l) {
        jw_object_begin(w, key);
        jw_string(w, "id", LEASE_ID_STR(l));
        jw_string(w, "resource", l->resource->name);
        jw_int(w, "units", l->units);
        jw_bool(w, "exclusive", l->exclusive);
        jw_int(w, "token", (int64_t) l->token);
        owner_write(w, "owner", l->owner);
        jw_string(w, "description", strempty(l->description));
        jw_int(w, "created", (int64_t) l->created);
        if (l->ttl > 0)
                jw_double(w, "ttl", usec_to_sec(l->ttl));
        if (lease_deadline(l) != USEC_INFINITY)
                jw_int(w, "deadline", deadline_to_real(lease_deadline(l)));
        jw_bool(w, "detached", l->detached);
        jw_string(w, "state", l->state == LEASE_RECLAIMABLE ? "reclaimable" : "held");
        const char *node = cluster_lease_node(l);
        if (node)
                jw_string(w, "node", node);
        jw_object_end(w);
}

static void waiter_write(JsonWriter *w, const char *key, const Waiter *x) {
        jw_object_begin(w, key);
        jw_string(w, "resource", x->resource->name);
        jw_int(w, "units", x->units);
        jw_bool(w, "exclusive", x->exclusive);
        jw_int(w, "position", x->position);
        owner_write(w, "owner", &x->owner);
        jw_string(w, "description", strempty(x->description));
        jw_int(w, "since", (int64_t) x->since);
        jw_string(w, "state", x->unclaimed ? "reclaimable" : "waiting");
        jw_object_end(w);
}

static void event_write(JsonWriter *w, const char *key, const Event *e) {
        jw_object_begin(w, key);
        jw_string(w, "type", event_type_to_string(e->type));
        jw_int(w, "time", (int64_t) e->time);
        jw_string(w, "resource", e->resource);
        if (e->lease)
                jw_string(w, "lease", e->lease);
        if (e->token)
                jw_int(w, "token", (int64_t) e->token);
        if (e->owner)
                owner_write(w, "owner", e->owner);
        jw_int(w, "units", e->units);
        if (e->reason)
                jw_string(w, "reason", e->reason);
        if (e->revoked_by)
                owner_write(w, "revoked_by", e->revoked_by);
        if (e->node)
                jw_string(w, "node", e->node);
        jw_object_end(w);
}

/* The reply writer of the call being answered, on the stack: replies are written and
 * queued one at a time (nothing nests), and the usual one fits the inline buffer. */
#define REPLY_WRITER(w)                                                                 \
        _cleanup_(jw_done) JsonWriter w;                                                \
        jw_init(&w);                                                                    \
        varlink_reply_begin(&w)

static void reply_end(Conn *c, JsonWriter *w, bool continues) {
        (void) varlink_conn_reply_end(c->link, w, continues);
}

static bool name_ok(const char *s) {
        if (!*s)
                return false;
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

static bool may_use(const Resource *r, const Conn *c) {
        if (!r || !r->restricted || c->peer.uid == 0)
                return true;
        const ResourceAccess *a = r->access;
        for (size_t i = 0; a && i < a->n_allow_uids; i++)
                if (a->allow_uids[i] == c->peer.uid)
                        return true;
        for (size_t i = 0; a && i < a->n_allow_gids; i++)
                if (peer_in_group(c->peer.gid, c->groups, c->n_groups, a->allow_gids[i]))
                        return true;
        return false;
}

static bool check_members(Conn *c, const VlParams *p, const char *const *allowed) {
        const char *unknown;
        if (vl_params_check_keys(p, allowed, &unknown) < 0) {
                invalid(c, unknown, "unknown parameter");
                return false;
        }
        return true;
}

void conn_reply_granted(Conn *c, const Lease *l, bool continues) {
        REPLY_WRITER(w);
        jw_string(&w, "state", "granted");
        lease_write(&w, "lease", l);
        char secret[LEASE_SECRET_LEN + 1];
        jw_string(&w, "secret", lease_secret_to_string(l, secret));
        explicit_bzero(secret, sizeof(secret));
        /* A grant the holder never hears of must not stay held in its name: the error
         * is followed by a close, which ends the connection's leases. */
        if (varlink_conn_reply_end(c->link, &w, continues) < 0)
                varlink_conn_close(c->link);
}

void conn_reply_queued(Conn *c, int64_t position, const char *ticket) {
        REPLY_WRITER(w);
        jw_string(&w, "state", "queued");
        jw_int(&w, "position", position);
        jw_string(&w, "ticket", ticket);
        reply_end(c, &w, true);
}

static void reply_queued(Conn *c, const Waiter *x) {
        conn_reply_queued(c, x->position, x->ticket);
}

void conn_reply_bool(Conn *c, const char *key, bool value) {
        REPLY_WRITER(w);
        jw_bool(&w, key, value);
        reply_end(c, &w, false);
}

/* The empty reply of Release and Revoke. */
static void reply_empty(Conn *c) {
        REPLY_WRITER(w);
        reply_end(c, &w, false);
}

static void method_acquire(Conn *c, const VlParams *p) {
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
        if (vl_param_int64(p, "units", 0, 1, 1000000, &units) < 0)
                return invalid(c, "units", "an integer in 1..1000000");
        if (vl_param_bool(p, "exclusive", 0, &exclusive) < 0)
                return invalid(c, "exclusive", "a boolean");
        if (vl_param_seconds(p, "timeout", 0, &timeout_u) < 0)
                return invalid(c, "timeout", "seconds, a number >= 0 (0 = try once)");
        if (vl_param_seconds(p, "ttl", 0, &ttl_u) < 0)
                return invalid(c, "ttl", "seconds, a number >= 0 (0 = no TTL)");
        if (vl_param_bool(p, "detached", 0, &detached) < 0)
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
                return conn_reply_granted(c, l, false);
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
static Lease *lease_for_caller(Conn *c, const VlParams *p, bool allow_secret) {
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
        if (l->holder == &c->holder || c->peer.uid == 0 || (allow_secret && secret && lease_secret_eq(l, secret)))
                return l;
        conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                          secret ? "the secret does not match" : "not the holder: give the lease's secret", "id", id);
        return NULL;
}

/* lease_for_caller() for the leases of cluster resources: NULL if the id is not one (the
 * local lookup follows), CLUSTER_LEASE_REFUSED after an error reply. */
#define CLUSTER_LEASE_REFUSED ((ClusterLease *) 1)
static ClusterLease *cluster_lease_for_caller(Conn *c, const VlParams *p) {
        const char *id = NULL, *secret = NULL;
        if (!c->manager->cluster || get_string(p, "id", true, 64, &id) < 0 ||
            get_string(p, "secret", false, 64, &secret) < 0)
                return NULL;
        ClusterLease *cl = cluster_service_lease(c->manager->cluster, id);
        if (!cl)
                return NULL;
        const Lease *l = cluster_lease_get_lease(cl);
        if (l->holder == &c->holder || c->peer.uid == 0 || (secret && lease_secret_eq(l, secret)))
                return cl;
        conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                          secret ? "the secret does not match" : "not the holder: give the lease's secret", "id", id);
        return CLUSTER_LEASE_REFUSED;
}

static void method_release(Conn *c, const VlParams *p) {
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
                        reply_empty(c);
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
        reply_empty(c);
}

static void method_renew(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { "id", "ttl", "secret", NULL };
        usec_t t = 0;
        if (!check_members(c, p, allowed))
                return;
        if (vl_param_seconds(p, "ttl", 0, &t) < 0)
                return invalid(c, "ttl", "seconds, a number > 0");
        ClusterLease *cl = cluster_lease_for_caller(c, p);
        if (cl) {
                if (cl == CLUSTER_LEASE_REFUSED)
                        return;
                if (cluster_service_renew(c->manager->cluster, cl, t) < 0)
                        return invalid(c, "ttl", "the lease has no TTL: give one");
                REPLY_WRITER(w);
                lease_write(&w, "lease", cluster_lease_get_lease(cl));
                return reply_end(c, &w, false);
        }
        Lease *l = lease_for_caller(c, p, true);
        if (!l)
                return;
        if (engine_lease_renew(c->manager->engine, l, t) < 0)
                return invalid(c, "ttl", "the lease has no TTL: give one");
        REPLY_WRITER(w);
        lease_write(&w, "lease", l);
        reply_end(c, &w, false);
}

static void method_reclaim(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { "id", "token", "secret", NULL };
        const char *id = NULL, *secret = NULL;
        int64_t token = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "id", true, 64, &id) < 0)
                return invalid(c, "id", "a lease id string");
        if (vl_param_int64(p, "token", JSON_REQUIRED, 1, INT64_MAX, &token) < 0)
                return invalid(c, "token", "the lease's fencing token");
        if (get_string(p, "secret", true, 64, &secret) < 0)
                return invalid(c, "secret", "the lease's secret");
        Lease *l = engine_lease_get(c->manager->engine, id);
        if (!l && cluster_service_reclaim(c->manager->cluster, c, id, (uint64_t) token, secret) == 0)
                return;         /* a lease of a cluster resource: answered there */
        if (!l)
                return conn_error_reason(c, "io.agend.Lease.NoSuchLease",
                                         "no lease with this id (not restored, or not reclaimed in time)", "id", id);
        if ((uint64_t) token != l->token || !lease_secret_eq(l, secret))
                return conn_error_reason(c, "io.agend.Lease.PermissionDenied", "token or secret does not match",
                                         "id", id);
        int k = engine_lease_reclaim(c->manager->engine, l, &c->holder);
        if (k < 0)
                return conn_error_reason(c, "io.agend.Lease.PermissionDenied",
                                         "the lease is held by another live connection", "id", id);
        conn_reply_lease(c, l);
}

void conn_reply_lease(Conn *c, const Lease *l) {
        REPLY_WRITER(w);
        lease_write(&w, "lease", l);
        reply_end(c, &w, false);
}

static void method_revoke(Conn *c, const VlParams *p) {
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
                return reply_empty(c);
        }
        Lease *l = engine_lease_get(c->manager->engine, id);
        if (!l)
                return conn_error_reason(c, "io.agend.Lease.NoSuchLease", "no lease with this id", "id", id);
        /* The revoke's own log entry (log_lease_event()) names the revoker, with its
         * journal fields; History keeps it in the event's revoked_by. */
        engine_lease_revoke(c->manager->engine, l, reason, &c->peer);
        reply_empty(c);
}

/* Anyone may ask (leases are visible to every local user), so a guarded service can check
 * the token a writer presents before it accepts the write. */
static void method_check(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { "resource", "token", NULL };
        const char *resource = NULL;
        int64_t token = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", true, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (vl_param_int64(p, "token", JSON_REQUIRED, 0, INT64_MAX, &token) < 0)
                return invalid(c, "token", "a fencing token: an integer >= 0");
        if (cluster_service_serves(c->manager->cluster, resource))
                return cluster_service_check(c->manager->cluster, c, resource, (uint64_t) token);
        REPLY_WRITER(w);
        jw_bool(&w, "current", engine_token_current(c->manager->engine, resource, (uint64_t) token));
        reply_end(c, &w, false);
}

typedef struct ListState {
        Lease **leases;
        size_t n_leases, size;
        uint64_t after;
        JsonWriter *waiters;    /* the waiters array's text; NULL after the first page */
        size_t n_waiters;
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
                if (s->n_waiters >= LIST_PAGE_MAX) {
                        s->waiters_cut = true;
                        break;
                }
                waiter_write(s->waiters, NULL, w);
                s->n_waiters++;
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
        for (size_t i = 0; s->waiters && cl->waiters && i < json_object_array_length(cl->waiters); i++) {
                size_t n = 0;
                const char *t = json_object_to_json_string_length(json_object_array_get_idx(cl->waiters, i),
                                                                  JSON_C_TO_STRING_PLAIN |
                                                                          JSON_C_TO_STRING_NOSLASHESCAPE,
                                                                  &n);
                if (!t)
                        return -ENOMEM;
                jw_raw(s->waiters, NULL, t, n);
                s->n_waiters++;
        }
        return 0;
}

static int lease_token_cmp(const void *a, const void *b) {
        const Lease *x = *(Lease *const *) a, *y = *(Lease *const *) b;
        return x->token < y->token ? -1 : x->token > y->token;
}

/* Leases in token order (tokens are unique and only grow), so "after" is a stable cursor
 * while leases come and go; waiters on the first page only. */
static void method_list(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { "resource", "limit", "after", NULL };
        const char *resource = NULL;
        int64_t limit = LIST_PAGE_MAX, after = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", false, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (vl_param_int64(p, "limit", 0, 1, INT64_MAX, &limit) < 0)
                return invalid(c, "limit", "an integer >= 1");
        if (vl_param_int64(p, "after", 0, 0, INT64_MAX, &after) < 0)
                return invalid(c, "after", "a continue_after value of an earlier reply");
        size_t page = (size_t) MIN(limit, (int64_t) LIST_PAGE_MAX);
        _cleanup_free_ Lease **leases_buf = NULL;
        _cleanup_(jw_done) JsonWriter waiters;
        jw_init(&waiters);
        jw_array_begin(&waiters, NULL);
        ListState s = { .after = (uint64_t) after, .waiters = after == 0 ? &waiters : NULL };
        int k = 0;
        if (resource) {
                Resource *res = engine_resource_get(c->manager->engine, resource);
                if (res)
                        k = list_resource(res, &s);
        } else {
                ObjMapIter i = {};
                Resource *res;
                while (k >= 0 && objmap_iterate(engine_resources(c->manager->engine), &i, (void **) &res))
                        k = list_resource(res, &s);
        }
        /* Cluster resources: their holders and waiters on every host, as this host's mirror
         * of etcd has them. */
        _cleanup_(cluster_listing_done) ClusterListing cl = {};
        if (k >= 0)
                k = list_cluster(c, resource, &s, &cl);
        leases_buf = s.leases;
        jw_array_end(&waiters);
        if (k < 0 || jw_finish(&waiters) < 0)
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        if (s.n_leases > 0)
                qsort(s.leases, s.n_leases, sizeof(*s.leases), lease_token_cmp);
        size_t n = MIN(page, s.n_leases);
        REPLY_WRITER(w);
        jw_array_begin(&w, "leases");
        for (size_t i = 0; i < n; i++)
                lease_write(&w, NULL, s.leases[i]);
        jw_array_end(&w);
        jw_raw(&w, "waiters", waiters.buf, waiters.len);
        if (n < s.n_leases)
                jw_int(&w, "continue_after", (int64_t) s.leases[n - 1]->token);
        if (s.waiters_cut)
                jw_bool(&w, "waiters_truncated", true);
        reply_end(c, &w, false);
}

static void method_resources(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { NULL };
        if (!check_members(c, p, allowed))
                return;
        REPLY_WRITER(w);
        jw_array_begin(&w, "resources");
        ObjMapIter i = {};
        Resource *res;
        while (objmap_iterate(engine_resources(c->manager->engine), &i, (void **) &res)) {
                jw_object_begin(&w, NULL);
                jw_string(&w, "name", res->name);
                jw_int(&w, "capacity", res->capacity);
                unsigned used = res->used, n_leases = res->n_leases, n_waiters = res->n_waiters;
                /* A cluster resource: what every host holds, from the mirror of etcd. */
                (void) cluster_service_usage(c->manager->cluster, res->name, &used, &n_leases, &n_waiters);
                jw_int(&w, "used", used);
                jw_int(&w, "leases", n_leases);
                jw_int(&w, "waiters", n_waiters);
                jw_bool(&w, "declared", res->declared);
                jw_object_end(&w);
        }
        jw_array_end(&w);
        reply_end(c, &w, false);
}

static void method_status(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { NULL };
        Manager *m = c->manager;
        if (!check_members(c, p, allowed))
                return;
        REPLY_WRITER(w);
        jw_string(&w, "version", AGEND_VERSION);
        jw_double(&w, "uptime", usec_to_sec(usec_now(CLOCK_MONOTONIC) - m->started));
        jw_string(&w, "boot_id", m->boot_id);
        jw_int(&w, "leases", engine_n_leases(m->engine));
        jw_int(&w, "waiters", engine_n_waiters(m->engine));
        jw_int(&w, "connections", varlink_server_n_connections(m->server));
        jw_int(&w, "commits", (int64_t) m->commits);
        jw_int(&w, "database_size", m->store->ops->size(m->store));
        if (m->store->ops->log_bytes)
                jw_int(&w, "wal_bytes", m->store->ops->log_bytes(m->store));
        jw_string(&w, "sync", m->config.sync == STORE_SYNC_FULL ? "full" : "normal");
        reply_end(c, &w, false);
}

static void method_watch(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { "resource", "lease", NULL };
        const char *resource = NULL, *lease = NULL;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", false, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (get_string(p, "lease", false, 64, &lease) < 0)
                return invalid(c, "lease", "a lease id");
        if (lease && !engine_lease_get(c->manager->engine, lease) && !cluster_service_lease(c->manager->cluster, lease)) {
                /* Right after a restart it may be a cluster lease coming back from etcd. */
                if (conn_more(c) && !resource && cluster_service_park_watch(c->manager->cluster, c, lease) == 0)
                        return;
                return conn_error_reason(c, "io.agend.Lease.NoSuchLease", "no lease with this id", "id", lease);
        }
        if (!conn_more(c))
                return conn_error_reason(c, "org.varlink.service.ExpectedMore", "Watch streams: call it with \"more\"",
                                         NULL, NULL);
        conn_watch_begin(c, resource, lease);
}

void conn_watch_begin(Conn *c, const char *resource, const char *lease) {
        c->watch_resource = resource ? strdup(resource) : NULL;
        c->watch_lease = lease ? strdup(lease) : NULL;
        if ((resource && !c->watch_resource) || (lease && !c->watch_lease))
                return error_errno(c, -ENOMEM, "out of memory", NULL, NULL);
        conn_watch_start(c);
        REPLY_WRITER(w);
        jw_null(&w, "event");
        reply_end(c, &w, true);
}

typedef struct HistoryState {
        JsonWriter *events;     /* the events array's text */
        size_t n_events;
        uint64_t oldest;        /* seq of the first (oldest) event */
} HistoryState;

static int history_one(const Event *e, void *userdata) {
        HistoryState *s = userdata;
        if (s->oldest == 0)
                s->oldest = e->seq;
        event_write(s->events, NULL, e);
        s->n_events++;
        return s->events->error;
}

static void method_history(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { "resource", "limit", "before", NULL };
        const char *resource = NULL;
        int64_t limit = HISTORY_LIMIT_DEFAULT, before = 0;
        if (!check_members(c, p, allowed))
                return;
        if (get_string(p, "resource", false, RESOURCE_NAME_MAX, &resource) < 0)
                return invalid(c, "resource", "a resource name");
        if (vl_param_int64(p, "limit", 0, 1, HISTORY_LIMIT_MAX, &limit) < 0)
                return invalid(c, "limit", "an integer in 1..100000");
        if (vl_param_int64(p, "before", 0, 1, INT64_MAX, &before) < 0)
                return invalid(c, "before", "a continue_before value of an earlier reply");
        unsigned page = (unsigned) MIN(limit, (int64_t) HISTORY_PAGE_MAX);
        _cleanup_(jw_done) JsonWriter events;
        jw_init(&events);
        jw_array_begin(&events, NULL);
        HistoryState s = { .events = &events };
        int k = engine_history(c->manager->engine, resource, (uint64_t) before, page, history_one, &s);
        if (k < 0 && !events.error)
                return error_errno(c, k, "cannot read the history", NULL, NULL);
        jw_array_end(&events);
        REPLY_WRITER(w);
        if (s.oldest > 0 && s.n_events == page)
                jw_int(&w, "continue_before", (int64_t) s.oldest);
        /* A failed events writer fails the reply (an error is sent instead). */
        if (jw_finish(&events) < 0)
                w.error = w.error ?: events.error;
        else
                jw_raw(&w, "events", events.buf, events.len);
        reply_end(c, &w, false);
}

static void method_get_info(Conn *c, const VlParams *p) {
        static const char *const allowed[] = { NULL };
        if (!check_members(c, p, allowed))
                return;
        REPLY_WRITER(w);
        jw_string(&w, "vendor", "agend");
        jw_string(&w, "product", "agend");
        jw_string(&w, "version", AGEND_VERSION);
        jw_string(&w, "url", "man:agend(8)");
        jw_array_begin(&w, "interfaces");
        jw_string(&w, NULL, "org.varlink.service");
        jw_string(&w, NULL, "io.agend.Lease");
        jw_array_end(&w);
        reply_end(c, &w, false);
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

static void method_get_interface_description(Conn *c, const VlParams *p) {
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
        REPLY_WRITER(w);
        jw_string(&w, "description", text);
        reply_end(c, &w, false);
}

typedef struct MethodEntry {
        const char *name;
        void (*func)(Conn *c, const VlParams *p);
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

static void method_call(VarlinkConn *link, const VlParams *p, void *userdata) {
        const MethodEntry *e = userdata;
        e->func(varlink_conn_get_userdata(link), p);
}

#ifdef AGEND_TEST_HOOKS
/* AGEND_TEST_WRITER_FAIL (test builds only): the reply writer cannot grow past its inline
 * buffer, as when memory runs out, so every reply over about 1 KiB fails to be written
 * (tests/test-daemon-reply-oom.c). */
static void *realloc_fail(void *p, size_t n) {
        return NULL;
}
#endif

int methods_bind(VarlinkServer *s) {
#ifdef AGEND_TEST_HOOKS
        if (getenv("AGEND_TEST_WRITER_FAIL"))
                jw_realloc = realloc_fail;
#endif
        for (size_t i = 0; i < ELEMENTSOF(methods); i++) {
                int k = varlink_server_bind_method_params(s, methods[i].name, method_call, (void *) &methods[i]);
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
        conn_reply_granted(c, l, false);
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
                        _cleanup_(jw_done) JsonWriter w;
                        jw_init(&w);
                        varlink_reply_begin(&w);
                        event_write(&w, "event", ev);
                        if (varlink_reply_end(&w, !ends) >= 0)
                                (void) varlink_buf_new(w.buf, w.len, &buf[i]);
                }
                if (buf[i])
                        (void) varlink_conn_reply_shared(c->link, buf[i], !ends);
                else {
                        /* Out of memory: a subscriber that misses an event is told so and
                         * closed, never left to believe it saw every one. */
                        (void) varlink_conn_error_reason(c->link, "io.agend.Lease.LimitExceeded",
                                                         "out of memory: an event could not be written", "limit",
                                                         "memory");
                        varlink_conn_close(c->link);
                }
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

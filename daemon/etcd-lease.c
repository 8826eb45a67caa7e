/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>

#include "etcd-lease.h"
#include "macro.h"

struct EtcdLeaseKeeper {
        EtcdClient *client;
        struct ev_loop *loop;
        EtcdLeaseOptions opts;
        EtcdLeaseFn cb;
        void *userdata;
        EtcdLeaseState state;
        int64_t id;
        int64_t ttl;
        usec_t deadline;
        usec_t sent;                    /* when the call in flight was sent */
        usec_t backoff;
        EtcdCall *call;
        ev_timer tick;                  /* next keepalive or grant */
        ev_timer expire;                /* the deadline */
        bool *freed;                    /* set when freed from a callback */
};

static const char *const state_table[_ETCD_LEASE_STATE_MAX] = {
        [ETCD_LEASE_GRANTING] = "granting",
        [ETCD_LEASE_ALIVE] = "alive",
        [ETCD_LEASE_TROUBLE] = "trouble",
        [ETCD_LEASE_LOST] = "lost",
};

const char *etcd_lease_state_to_string(EtcdLeaseState s) {
        return s < _ETCD_LEASE_STATE_MAX ? state_table[s] : NULL;
}

static double sec(usec_t u) {
        return (double) u / USEC_PER_SEC;
}

static void arm_tick(EtcdLeaseKeeper *k, usec_t after) {
        ev_timer_stop(k->loop, &k->tick);
        ev_timer_set(&k->tick, sec(after), 0.);
        ev_timer_start(k->loop, &k->tick);
}

static usec_t ttl_usec(const EtcdLeaseKeeper *k) {
        return (usec_t) (k->ttl > 0 ? k->ttl : k->opts.ttl_sec) * USEC_PER_SEC;
}

static usec_t margin(const EtcdLeaseKeeper *k) {
        return k->opts.margin ?: MIN(ttl_usec(k) / 5, USEC_PER_SEC);
}

static usec_t retry_interval(const EtcdLeaseKeeper *k) {
        return k->opts.retry_interval ?: MIN(ttl_usec(k) / 10, 500 * USEC_PER_MSEC);
}

/* Reports a state; returns false if the callback freed the keeper. */
static bool set_state(EtcdLeaseKeeper *k, EtcdLeaseState s, int error) {
        k->state = s;
        bool freed = false;
        k->freed = &freed;
        k->cb(k, s, s == ETCD_LEASE_ALIVE || s == ETCD_LEASE_TROUBLE ? k->id : 0, error, k->userdata);
        if (freed)
                return false;
        k->freed = NULL;
        return true;
}

static void start_grant(EtcdLeaseKeeper *k);

static void lost(EtcdLeaseKeeper *k, int error) {
        etcd_call_cancel(TAKE_PTR(k->call));
        ev_timer_stop(k->loop, &k->expire);
        k->id = 0;
        k->deadline = 0;
        if (!set_state(k, ETCD_LEASE_LOST, error))
                return;
        /* A fresh lease after a pause: a tight loop against a failing cluster helps nobody. */
        k->backoff = MIN(MAX(k->backoff * 2, retry_interval(k)), 5 * USEC_PER_SEC);
        k->state = ETCD_LEASE_GRANTING;
        arm_tick(k, k->backoff);
}

static void expire_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        EtcdLeaseKeeper *k = container_of(w, EtcdLeaseKeeper, expire);
        /* The timer may fire a little early by libev's reckoning: check the clock itself. */
        usec_t now = usec_now(CLOCK_MONOTONIC);
        if (now < k->deadline) {
                ev_timer_set(&k->expire, sec(k->deadline - now), 0.);
                ev_timer_start(loop, &k->expire);
                return;
        }
        lost(k, -ETIMEDOUT);
}

static void set_deadline(EtcdLeaseKeeper *k, usec_t sent, int64_t ttl) {
        k->ttl = ttl;
        usec_t t = (usec_t) ttl * USEC_PER_SEC, m = margin(k);
        usec_t d = sent + (t > m ? t - m : 0);
        if (d <= k->deadline)
                return;
        k->deadline = d;
        ev_timer_stop(k->loop, &k->expire);
        usec_t now = usec_now(CLOCK_MONOTONIC);
        ev_timer_set(&k->expire, sec(d > now ? d - now : 0), 0.);
        ev_timer_start(k->loop, &k->expire);
}

static usec_t keepalive_interval(const EtcdLeaseKeeper *k) {
        return k->opts.keepalive_interval ?: ttl_usec(k) / 3;
}

static void keepalive_cb(EtcdClient *c, int error, const EtcdResult *r, void *userdata) {
        EtcdLeaseKeeper *k = userdata;
        k->call = NULL;
        if (error == -ECANCELED)
                return;         /* the client is being freed: nothing more to send */
        if (error >= 0 && r->ttl <= 0) {
                /* etcd says the lease is gone: nothing to wait for. */
                lost(k, -ENOENT);
                return;
        }
        if (error < 0) {
                if (k->state != ETCD_LEASE_TROUBLE && !set_state(k, ETCD_LEASE_TROUBLE, error))
                        return;
                arm_tick(k, retry_interval(k));
                return;
        }
        set_deadline(k, k->sent, r->ttl);
        k->backoff = 0;
        if (k->state != ETCD_LEASE_ALIVE && !set_state(k, ETCD_LEASE_ALIVE, 0))
                return;
        arm_tick(k, keepalive_interval(k));
}

static void grant_cb(EtcdClient *c, int error, const EtcdResult *r, void *userdata) {
        EtcdLeaseKeeper *k = userdata;
        k->call = NULL;
        if (error == -ECANCELED)
                return;
        if (error < 0 || r->lease_id == 0 || r->ttl <= 0) {
                k->backoff = MIN(MAX(k->backoff * 2, retry_interval(k)), 5 * USEC_PER_SEC);
                arm_tick(k, k->backoff);
                return;
        }
        k->id = r->lease_id;
        k->deadline = 0;
        set_deadline(k, k->sent, r->ttl);
        k->backoff = 0;
        if (!set_state(k, ETCD_LEASE_ALIVE, 0))
                return;
        arm_tick(k, keepalive_interval(k));
}

static void adopt_cb(EtcdClient *c, int error, const EtcdResult *r, void *userdata) {
        EtcdLeaseKeeper *k = userdata;
        k->call = NULL;
        if (error == -ECANCELED)
                return;
        int64_t id = k->opts.adopt_id;
        k->opts.adopt_id = 0;           /* tried once: from now on, grant */
        if (error < 0 || r->ttl <= 0) {
                arm_tick(k, 0);
                return;
        }
        k->id = id;
        k->deadline = 0;
        set_deadline(k, k->sent, r->ttl);
        k->backoff = 0;
        if (!set_state(k, ETCD_LEASE_ALIVE, 0))
                return;
        arm_tick(k, keepalive_interval(k));
}

static void start_grant(EtcdLeaseKeeper *k) {
        k->sent = usec_now(CLOCK_MONOTONIC);
        /* An earlier process's lease, if it is still alive: its keys (and their places in
         * line) stay. A keepalive answered with TTL > 0 says it is. */
        if (k->opts.adopt_id != 0) {
                if (etcd_lease_keepalive(k->client, k->opts.adopt_id, adopt_cb, k, &k->call) < 0) {
                        k->opts.adopt_id = 0;
                        arm_tick(k, 0);
                }
                return;
        }
        if (etcd_lease_grant(k->client, k->opts.ttl_sec, grant_cb, k, &k->call) < 0)
                arm_tick(k, retry_interval(k));
}

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        EtcdLeaseKeeper *k = container_of(w, EtcdLeaseKeeper, tick);
        if (k->call) {
                /* The keepalive sent one interval ago is still unanswered: say so now rather
                 * than after the request timeout, which may be longer than the lease has
                 * left. The call in flight re-arms the tick when it ends. */
                if (k->state == ETCD_LEASE_ALIVE)
                        (void) set_state(k, ETCD_LEASE_TROUBLE, -ETIMEDOUT);
                return;
        }
        if (k->state == ETCD_LEASE_GRANTING) {
                start_grant(k);
                return;
        }
        k->sent = usec_now(CLOCK_MONOTONIC);
        if (etcd_lease_keepalive(k->client, k->id, keepalive_cb, k, &k->call) < 0)
                arm_tick(k, retry_interval(k));
        else
                arm_tick(k, keepalive_interval(k));    /* the "late" check above */
}

int etcd_lease_keeper_new(EtcdClient *c, const EtcdLeaseOptions *o, EtcdLeaseFn cb, void *userdata,
                          EtcdLeaseKeeper **ret) {
        if (o->ttl_sec < 2 || !cb)
                return -EINVAL;
        EtcdLeaseKeeper *k = calloc(1, sizeof(*k));
        if (!k)
                return -ENOMEM;
        *k = (EtcdLeaseKeeper) {
                .client = c,
                .loop = etcd_client_get_loop(c),
                .opts = *o,
                .cb = cb,
                .userdata = userdata,
                .state = ETCD_LEASE_GRANTING,
        };
        ev_timer_init(&k->tick, tick_cb, 0., 0.);
        ev_timer_init(&k->expire, expire_cb, 0., 0.);
        /* Before any I/O of the same loop iteration: after a pause (SIGSTOP, a frozen VM) the
         * loss must be said before a request that arrived meanwhile is served. */
        ev_set_priority(&k->expire, EV_MAXPRI);
        arm_tick(k, 0);         /* from the loop, never from inside this call */
        *ret = k;
        return 0;
}

EtcdLeaseKeeper *etcd_lease_keeper_free(EtcdLeaseKeeper *k, bool revoke) {
        if (!k)
                return NULL;
        if (k->freed)
                *k->freed = true;
        etcd_call_cancel(k->call);
        ev_timer_stop(k->loop, &k->tick);
        ev_timer_stop(k->loop, &k->expire);
        if (revoke && k->id != 0)
                (void) etcd_lease_revoke(k->client, k->id, NULL, NULL, NULL);
        free(k);
        return NULL;
}

EtcdLeaseState etcd_lease_keeper_get_state(const EtcdLeaseKeeper *k) {
        return k->state;
}

int64_t etcd_lease_keeper_get_id(const EtcdLeaseKeeper *k) {
        return k->state == ETCD_LEASE_ALIVE || k->state == ETCD_LEASE_TROUBLE ? k->id : 0;
}

int64_t etcd_lease_keeper_get_ttl(const EtcdLeaseKeeper *k) {
        return k->ttl;
}

usec_t etcd_lease_keeper_get_deadline(const EtcdLeaseKeeper *k) {
        return k->state == ETCD_LEASE_ALIVE || k->state == ETCD_LEASE_TROUBLE ? k->deadline : 0;
}

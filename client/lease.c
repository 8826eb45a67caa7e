/* SPDX-License-Identifier: MIT */
/* The lease generator. Each one has its own connection (BRIEF §3a): Acquire with "more"
 * waits on it (QUEUED replies, then the grant), then Watch(lease) runs on it until the
 * lease ends. Calls that do not wait, Renew and Release, go on the client's control
 * connection, because the lease connection is held by its Watch.
 *
 * The daemon's messages arrive whether or not a step is waiting, so they become events on
 * a small queue; a step takes the oldest (QUEUED ones collapse into the latest position).
 * An ending event (LOST, REVOKED, EXPIRED) is the last; the step after it returns.
 *
 * Cleanup is the release round trip: Release(id, secret) on the control connection, its
 * reply, then the lease connection is closed. Abandoned (no loop to wait on), closing the
 * lease connection is the release of a bound lease: the daemon treats EOF as release. */

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "client-internal.h"
#include "json-util.h"

#define RECONNECT_FIRST 0.05   /* s, doubled on each failure */
#define RECONNECT_MAX 1.0      /* s between attempts */
#define ABANDON_RELEASE_TIMEOUT 0.2
/* s past opts.timeout (or try_once) after which the client ends a wait the daemon has not
 * answered (a stopped daemon): the daemon's own Timeout normally comes first. */
#define ACQUIRE_TIMEOUT_SLACK 0.5
#define DISCONNECTED_REASON "connection to agend lost"

/* s: give up (LOST, or a failed release) after this long without the daemon. Bounded so a
 * holder hears LOST in bounded time; 15 s covers a restart within agend's default grace
 * (10 s). A variable so that tests can shorten it. */
double lease_reconnect_window = 15.0;

typedef struct LeaseEvent LeaseEvent;
struct LeaseEvent {
        agen_lease_event_type type;
        unsigned position;
        char *reason;
        LeaseEvent *next;
};

typedef enum LeasePhase {
        LEASE_INIT,         /* nothing sent */
        LEASE_WAITING,      /* Acquire in flight */
        LEASE_HELD,         /* granted; Watch (or Reclaim) in flight */
        LEASE_RECONNECTING, /* the lease connection was lost; retrying */
        LEASE_ENDED,        /* ended, or could not be had */
        LEASE_RELEASING,    /* cleanup: Release in flight */
        LEASE_CLOSED,
} LeasePhase;

typedef struct Lease {
        agen_client *client; /* held via client_lease_attach() */
        struct ev_loop *loop;
        char *resource;
        char *description;
        agen_lease_opts opts;

        LeasePhase phase;
        bool granted;       /* was granted once: reconnecting means reclaiming */
        bool rewatching;    /* a detached lease watched again after DISCONNECTED: its first
                             * Watch reply says it is still there (RECLAIMED) */
        bool daemon_disconnected; /* the Watch said "disconnected" (a cluster lease whose etcd
                                   * lease agend cannot renew) and not yet "reclaimed" */
        bool finished;      /* no more events will come */
        int end_error;      /* the step after the events fails with it (0: returns) */
        char *end_message;

        Conn *conn;         /* the lease connection */
        ConnCall *call;     /* Acquire, Reclaim or Watch in flight on it */
        Conn *control;      /* referenced while control_call is in flight */
        ConnCall *control_call; /* Renew or Release */

        char *id;
        char *secret;
        uint64_t token;
        double ttl;
        char *lease_json;   /* detached: the grant's lease object, for agen_lease_hand_off() */
        char *error_name;   /* the Acquire's error reply: agen_lease_get_error() */
        char *error_reason;
        char *ticket;       /* our place in the queue (queued replies): a re-sent Acquire
                             * presents it, so a daemon restart does not cost the place */
        ev_tstamp acquire_started; /* the first Acquire: a re-sent one waits only the rest */

        LeaseEvent *events, **events_tail;
        agen_co *step;      /* a step waiting for an event */
        agen_co *closing;   /* the close in progress */
        agen_lease_event current;

        LeaseEvent *kept;   /* delivered events with a reason: event.reason outlives the step */

        ev_timer renew_timer;
        ev_timer retry_timer;  /* reconnecting, or retrying the Release */
        ev_timer acquire_timer; /* the client's own bound on opts.timeout */
        double backoff;
        ev_tstamp reconnect_deadline;
        ev_tstamp release_deadline;
} Lease;

static void lease_send_acquire(Lease *l);
static void lease_send_watch(Lease *l);
static void lease_conn_end(Conn *c, int error, void *userdata);

static const char *const event_type_table[_AGEN_LEASE_EVENT_TYPE_MAX] = {
        [AGEN_LEASE_QUEUED] = "queued",
        [AGEN_LEASE_GRANTED] = "granted",
        [AGEN_LEASE_RENEWED] = "renewed",
        [AGEN_LEASE_RECLAIMED] = "reclaimed",
        [AGEN_LEASE_LOST] = "lost",
        [AGEN_LEASE_REVOKED] = "revoked",
        [AGEN_LEASE_EXPIRED] = "expired",
        [AGEN_LEASE_DISCONNECTED] = "disconnected",
};

DEFINE_STRING_TABLE_LOOKUP_TO_STRING(event_type, agen_lease_event_type, static)

_public_ const char *agen_lease_event_type_to_string(agen_lease_event_type type) {
        return event_type_to_string(type);
}

static void lease_stop_timers(Lease *l) {
        if (ev_is_active(&l->renew_timer) || ev_is_pending(&l->renew_timer))
                ev_timer_stop(l->loop, &l->renew_timer);
        if (ev_is_active(&l->retry_timer) || ev_is_pending(&l->retry_timer))
                ev_timer_stop(l->loop, &l->retry_timer);
        if (ev_is_active(&l->acquire_timer) || ev_is_pending(&l->acquire_timer))
                ev_timer_stop(l->loop, &l->acquire_timer);
}

static void lease_cancel_control(Lease *l) {
        if (l->control_call && conn_is_open(l->control))
                conn_call_cancel(l->control_call);
        l->control_call = NULL;
        l->control = conn_unref(l->control);
}

/* Closes the lease connection: for a bound lease that is held, a release. */
static void lease_drop_conn(Lease *l) {
        l->call = NULL; /* dropped with the connection */
        conn_close(l->conn);
        l->conn = conn_unref(l->conn);
}

/* Hands the oldest event, or the end, to a waiting step. */
static void lease_deliver(Lease *l) {
        if (!l->step)
                return;
        agen_co *co = TAKE_PTR(l->step);

        LeaseEvent *e = l->events;
        if (e) {
                l->events = e->next;
                if (!l->events)
                        l->events_tail = &l->events;
                l->current = (agen_lease_event) {
                        .type = e->type,
                        .id = l->id,
                        .token = l->token,
                        .position = e->position,
                        .reason = e->type == AGEN_LEASE_DISCONNECTED ? DISCONNECTED_REASON : e->reason,
                };
                if (e->reason) {
                        /* Kept until the generator is freed: few events have a reason
                         * (the last one, a failed reclaim), so this does not grow. */
                        e->next = l->kept;
                        l->kept = e;
                } else
                        free(e);
                (void) agen_co_yield(co, &l->current);
        } else if (l->finished) {
                if (l->end_error < 0)
                        (void) agen_co_fail(co, l->end_error, l->end_message);
                else
                        (void) agen_co_return(co);
        } else
                l->step = co; /* keep waiting */
}

static void lease_emit(Lease *l, agen_lease_event_type type, unsigned position, const char *reason) {
        if (IN_SET(type, AGEN_LEASE_QUEUED, AGEN_LEASE_RENEWED) || type == AGEN_LEASE_DISCONNECTED) {
                /* Only the latest position matters, and renewals nobody has read yet are
                 * one renewal: a lease nobody steps does not pile up events. */
                for (LeaseEvent *e = l->events; e; e = e->next)
                        if (!e->next && e->type == type) {
                                e->position = position;
                                return;
                        }
        }
        LeaseEvent *e = calloc(1, sizeof(*e));
        if (!e)
                return; /* out of memory: the event is lost, the state is not */
        *e = (LeaseEvent) { .type = type, .position = position, .reason = reason ? strdup(reason) : NULL };
        *l->events_tail = e;
        l->events_tail = &e->next;
        lease_deliver(l);
}

/* No more events: close the connection, and let the step after the queued events end
 * (with error, or with AGEN_STOP). */
static void lease_finish(Lease *l, int error, const char *message) {
        if (l->finished)
                return;
        l->finished = true;
        l->phase = LEASE_ENDED;
        l->end_error = error;
        free(l->end_message);
        l->end_message = message ? strdup(message) : NULL;
        lease_stop_timers(l);
        lease_cancel_control(l);
        lease_drop_conn(l);
        lease_deliver(l);
}

static void lease_end_with(Lease *l, agen_lease_event_type type, const char *reason) {
        lease_emit(l, type, 0, reason);
        lease_finish(l, 0, NULL);
}

static int lease_connect(Lease *l) {
        Conn *c;
        int r = conn_connect(l->loop, agen_client_get_address(l->client), &c);
        if (r < 0)
                return r;
        conn_set_end_handler(c, lease_conn_end, l);
        l->conn = c;
        return 0;
}

/* {"id", "secret"} (and "token" for Reclaim): how the lease is named from a connection
 * that does not hold it. NULL on OOM. */
static json_object *lease_id_params(Lease *l, bool with_token) {
        _cleanup_json_ json_object *p = json_object_new_object();
        if (!p || json_add_string(p, "id", l->id) < 0 ||
            json_add_string(p, "secret", l->secret) < 0 ||
            (with_token && json_add_int(p, "token", (int64_t) l->token) < 0))
                return NULL;
        return TAKE_PTR(p);
}

/* Sends a call whose parameters were built by the caller; p NULL means building them ran
 * out of memory. */
static int lease_call(Conn *c, const char *method, json_object *p, unsigned flags, conn_reply_fn cb, Lease *l,
                      ConnCall **ret_call) {
        if (!p)
                return -ENOMEM;
        return conn_call(c, method, p, flags, cb, l, ret_call);
}

/* ---- reconnecting after the daemon went away ---- */

static void lease_retry_later(Lease *l) {
        ev_timer_set(&l->retry_timer, l->backoff, 0.);
        ev_timer_start(l->loop, &l->retry_timer);
        l->backoff = MIN(l->backoff * 2, RECONNECT_MAX);
}

static void lease_start_reconnect(Lease *l) {
        if (l->phase != LEASE_RECONNECTING) {
                if (l->granted)
                        /* Said at once: until RECLAIMED the holder must assume the lease
                         * may be gone (with --grace 0 another holder may have it now). */
                        lease_emit(l, AGEN_LEASE_DISCONNECTED, 0, NULL);
                l->phase = LEASE_RECONNECTING;
                l->backoff = RECONNECT_FIRST;
                ev_now_update(l->loop);
                l->reconnect_deadline = ev_now(l->loop) + lease_reconnect_window;
        }
        lease_drop_conn(l);
        lease_retry_later(l);
}

static void reclaim_reply(Conn *c, int status, const char *error_name, json_object *params, bool continues,
                          void *userdata) {
        Lease *l = userdata;
        l->call = NULL;
        if (status < 0 && !error_name)
                return; /* the connection ended: lease_conn_end() retries */
        if (l->phase != LEASE_RECONNECTING)
                return; /* closing meanwhile */
        if (status < 0) {
                char reason[256];
                snprintf(reason, sizeof(reason), "not reclaimed after a daemon restart: %s", error_name);
                return lease_end_with(l, AGEN_LEASE_LOST, reason);
        }
        l->phase = LEASE_HELD;
        lease_emit(l, AGEN_LEASE_RECLAIMED, 0, NULL);
        lease_send_watch(l);
}

static void lease_send_release(Lease *l);

static void lease_retry_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Lease *l = container_of(w, Lease, retry_timer);

        if (l->phase == LEASE_RELEASING)
                return lease_send_release(l);
        if (l->phase != LEASE_RECONNECTING)
                return;
        /* Checked before each attempt: a connect that is accepted late (backlog full)
         * and then fails must not extend the window either. */
        int r = ev_now(loop) < l->reconnect_deadline ? lease_connect(l) : -EHOSTUNREACH;
        if (r < 0) {
                if (ev_now(loop) < l->reconnect_deadline)
                        return lease_retry_later(l);
                if (l->granted)
                        return lease_end_with(l, AGEN_LEASE_LOST, "agend unreachable");
                return lease_finish(l, r, "agend unreachable");
        }

        if (!l->granted) {
                lease_send_acquire(l);
                return;
        }
        if (l->opts.detached) {
                /* A detached lease is not bound to a connection: watching it again is all. */
                l->phase = LEASE_HELD;
                l->rewatching = true;
                lease_send_watch(l);
                return;
        }
        r = lease_call(l->conn, "io.agend.Lease.Reclaim", lease_id_params(l, true), 0, reclaim_reply, l, &l->call);
        if (r < 0)
                lease_start_reconnect(l);
}

static void lease_conn_end(Conn *c, int error, void *userdata) {
        Lease *l = userdata;

        switch (l->phase) {
        case LEASE_WAITING:
        case LEASE_HELD:
        case LEASE_RECONNECTING:
                lease_start_reconnect(l);
                break;
        default:
                break;
        }
}

/* ---- renewing ---- */

static void renew_reply(Conn *c, int status, const char *error_name, json_object *params, bool continues,
                        void *userdata) {
        Lease *l = userdata;
        l->control_call = NULL;
        l->control = conn_unref(l->control);
        /* Failures are left to the Watch (expired, released) or to the next tick. */
        if (status >= 0 && l->phase == LEASE_HELD)
                lease_emit(l, AGEN_LEASE_RENEWED, 0, NULL);
}

static void lease_renew_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Lease *l = container_of(w, Lease, renew_timer);

        if (l->phase != LEASE_HELD || l->control_call)
                return;
        Conn *c;
        if (client_control(l->client, &c) < 0)
                return;
        if (lease_call(c, "io.agend.Lease.Renew", lease_id_params(l, false), 0, renew_reply, l, &l->control_call) >= 0)
                l->control = conn_ref(c);
}

/* ---- watching the held lease ---- */

static void watch_reply(Conn *c, int status, const char *error_name, json_object *params, bool continues,
                        void *userdata) {
        Lease *l = userdata;
        if (!continues)
                l->call = NULL;
        if (status < 0 && !error_name)
                return; /* the connection ended: lease_conn_end() */
        if (l->phase != LEASE_HELD)
                return; /* releasing: its own "released" is no news */
        if (status < 0)
                return lease_end_with(l, AGEN_LEASE_LOST, error_name);

        json_object *ev;
        const char *type = NULL, *reason = NULL;
        if (json_object_object_get_ex(params, "event", &ev) && json_object_is_type(ev, json_type_object) &&
            json_get_string(ev, "type", JSON_REQUIRED, &type) > 0) {
                (void) json_get_string(ev, "reason", 0, &reason);

                if (streq(type, "expired"))
                        return lease_end_with(l, AGEN_LEASE_EXPIRED, reason ?: "ttl");
                if (streq(type, "revoked"))
                        return lease_end_with(l, AGEN_LEASE_REVOKED, reason ?: "revoked");
                /* A Scope=cluster lease: agend cannot renew its etcd lease (DISCONNECTED
                 * until "reclaimed" or an ending event, "voided" when it is lost). */
                if (streq(type, "disconnected")) {
                        l->daemon_disconnected = true;
                        lease_emit(l, AGEN_LEASE_DISCONNECTED, 0, NULL);
                } else if (streq(type, "reclaimed") && l->daemon_disconnected) {
                        l->daemon_disconnected = false;
                        lease_emit(l, AGEN_LEASE_RECLAIMED, 0, NULL);
                }
                if (streq(type, "released") || streq(type, "voided")) {
                        char buf[256];
                        snprintf(buf, sizeof(buf), "%s%s%s", type, reason ? ": " : "", strempty(reason));
                        return lease_end_with(l, AGEN_LEASE_LOST, buf);
                }
        }
        if (!continues)
                /* The Watch of a lease ends with the lease; an end without its event is
                 * still an end. */
                return lease_end_with(l, AGEN_LEASE_LOST, "watch ended");
        if (l->rewatching) {
                /* Watched again and not ended: the holder may stop assuming it lost it. */
                l->rewatching = false;
                lease_emit(l, AGEN_LEASE_RECLAIMED, 0, NULL);
        }
}

static void lease_send_watch(Lease *l) {
        _cleanup_json_ json_object *p = json_object_new_object();
        int r = p ? json_add_string(p, "lease", l->id) : -ENOMEM;
        if (r >= 0)
                r = conn_call(l->conn, "io.agend.Lease.Watch", TAKE_PTR(p), VL_CALL_MORE, watch_reply, l, &l->call);
        if (r < 0)
                lease_start_reconnect(l);
}

/* ---- acquiring ---- */

static void lease_forget_ticket(Lease *l) {
        if (l->ticket)
                explicit_bzero(l->ticket, strlen(l->ticket));
        free(l->ticket);
        l->ticket = NULL;
}

static int lease_parse_grant(Lease *l, json_object *params) {
        json_object *lease;
        const char *id = NULL, *secret = NULL;
        int64_t token = 0;
        usec_t ttl = 0;

        if (!json_object_object_get_ex(params, "lease", &lease) || !json_object_is_type(lease, json_type_object) ||
            json_get_string(lease, "id", JSON_REQUIRED | JSON_NONEMPTY, &id) < 0 ||
            json_get_string(params, "secret", JSON_REQUIRED | JSON_NONEMPTY, &secret) < 0 ||
            json_get_int64(lease, "token", JSON_REQUIRED, 1, INT64_MAX, &token) < 0 ||
            json_get_seconds(lease, "ttl", 0, &ttl) < 0)
                return -EBADMSG;
        _cleanup_free_ char *id_copy = strdup(id), *secret_copy = strdup(secret);
        if (!id_copy || !secret_copy)
                return -ENOMEM;
        free(l->id);
        if (l->secret)
                explicit_bzero(l->secret, strlen(l->secret));
        free(l->secret);
        l->id = TAKE_PTR(id_copy);
        l->secret = TAKE_PTR(secret_copy);
        l->token = (uint64_t) token;
        l->ttl = usec_to_sec(ttl);
        if (l->opts.detached) {
                /* Kept for a hand-off: the lease as agend described it. */
                const char *text = json_object_to_json_string_ext(lease, JSON_C_TO_STRING_PLAIN |
                                                                                 JSON_C_TO_STRING_NOSLASHESCAPE);
                free(l->lease_json);
                l->lease_json = text ? strdup(text) : NULL;
        }
        return 0;
}

static void acquire_reply(Conn *c, int status, const char *error_name, json_object *params, bool continues,
                          void *userdata) {
        Lease *l = userdata;
        if (!continues)
                l->call = NULL;
        if (status < 0 && !error_name)
                return; /* the connection ended: lease_conn_end() */
        if (l->phase != LEASE_WAITING)
                return;
        if (status < 0) {
                /* agend's words, for agen_lease_get_error() and the step's message. */
                const char *reason = NULL;
                (void) json_get_string(params, "reason", JSON_NONEMPTY, &reason);
                free(l->error_name);
                free(l->error_reason);
                l->error_name = strdup(error_name);
                l->error_reason = reason ? strdup(reason) : NULL;
                char msg[512];
                snprintf(msg, sizeof(msg), "acquiring \"%s\": %s%s%s", l->resource, error_name, reason ? ": " : "",
                         strempty(reason));
                return lease_finish(l, status, msg);
        }

        const char *state = NULL;
        (void) json_get_string(params, "state", 0, &state);
        if (streq_ptr(state, "queued")) {
                unsigned position = 0;
                const char *ticket = NULL;
                (void) json_get_uint(params, "position", 0, 0, UINT_MAX, &position);
                if (json_get_string(params, "ticket", JSON_NONEMPTY, &ticket) > 0 && !streq_ptr(ticket, l->ticket)) {
                        char *t = strdup(ticket);
                        if (t) {
                                lease_forget_ticket(l);
                                l->ticket = t;
                        }
                }
                lease_emit(l, AGEN_LEASE_QUEUED, position, NULL);
                return;
        }
        if (!streq_ptr(state, "granted") || lease_parse_grant(l, params) < 0)
                return lease_finish(l, -EBADMSG, "unexpected Acquire reply");

        l->granted = true;
        l->phase = LEASE_HELD;
        lease_forget_ticket(l);
        if (ev_is_active(&l->acquire_timer))
                ev_timer_stop(l->loop, &l->acquire_timer);
        lease_emit(l, AGEN_LEASE_GRANTED, 0, NULL);
        if (l->ttl > 0) {
                double every = l->ttl / 3;
                ev_timer_set(&l->renew_timer, every, every);
                ev_timer_start(l->loop, &l->renew_timer);
        }
        /* "more" replies end with the grant; a Watch can follow on the same connection. */
        lease_send_watch(l);
}

static void lease_send_acquire(Lease *l) {
        _cleanup_json_ json_object *p = json_object_new_object();
        int r = p ? 0 : -ENOMEM;

        if (r >= 0)
                r = json_add_string(p, "resource", l->resource);
        if (r >= 0 && l->opts.units > 1)
                r = json_add_int(p, "units", l->opts.units);
        if (r >= 0 && l->opts.exclusive)
                r = json_add_bool(p, "exclusive", true);
        if (r >= 0 && (l->opts.try_once || l->opts.timeout > 0)) {
                double timeout = l->opts.try_once ? 0 : l->opts.timeout;
                if (l->ticket && timeout > 0) {
                        /* Asked again after a daemon restart: only what is left of the wait
                         * (at least 1 ms: 0 would mean "try once"). */
                        ev_now_update(l->loop);
                        timeout = MAX(timeout - (ev_now(l->loop) - l->acquire_started), 0.001);
                }
                r = json_add_double(p, "timeout", timeout);
        }
        if (r >= 0 && l->opts.ttl > 0)
                r = json_add_double(p, "ttl", l->opts.ttl);
        if (r >= 0 && l->opts.detached)
                r = json_add_bool(p, "detached", true);
        if (r >= 0 && l->description)
                r = json_add_string(p, "description", l->description);
        /* After a daemon restart: our place in the queue, which agend keeps for us during
         * its grace period (ahead of everyone who queued after us). */
        if (r >= 0 && l->ticket)
                r = json_add_string(p, "ticket", l->ticket);
        l->phase = LEASE_WAITING;
        if (r >= 0)
                r = conn_call(l->conn, "io.agend.Lease.Acquire", TAKE_PTR(p), VL_CALL_MORE, acquire_reply, l,
                              &l->call);
        if (r < 0)
                lease_start_reconnect(l);
}

/* ---- generator ops ---- */

static void lease_step(agen_gen *gen, agen_co *co, void *userdata) {
        Lease *l = userdata;

        assert(!l->step);
        l->step = co;
        if (l->phase == LEASE_INIT) {
                int r = lease_connect(l);
                if (r < 0)
                        return lease_finish(l, r, "cannot connect to agend");
                ev_now_update(l->loop);
                l->acquire_started = ev_now(l->loop);
                if (l->opts.try_once || l->opts.timeout > 0) {
                        ev_timer_set(&l->acquire_timer, (l->opts.try_once ? 0 : l->opts.timeout) + ACQUIRE_TIMEOUT_SLACK,
                                     0.);
                        ev_timer_start(l->loop, &l->acquire_timer);
                }
                lease_send_acquire(l);
                return;
        }
        lease_deliver(l);
}

static void lease_acquire_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Lease *l = container_of(w, Lease, acquire_timer);
        if (l->granted || l->finished)
                return;
        /* Closing the connection leaves the queue (or releases a grant we did not read). */
        lease_finish(l, -ETIMEDOUT, "agend did not answer the Acquire within its timeout");
}

/* Interrupts a waiting step (agen_gen_ops.cancel). Waiting for the grant, the wait is
 * over: closing the lease connection is leaving the queue, so nothing is granted to it.
 * Held, the step stops waiting for the next event; the close that follows releases. */
static void lease_cancel(agen_gen *gen, agen_co *co, void *userdata) {
        Lease *l = userdata;

        if (l->step != co)
                return;
        l->step = NULL;
        if (!l->granted && !l->finished) {
                lease_stop_timers(l);
                lease_cancel_control(l);
                lease_drop_conn(l);
                l->finished = true;
                l->phase = LEASE_ENDED;
        }
        (void) agen_co_fail(co, -ECANCELED, "lease step cancelled");
}

static void lease_release_done(Lease *l, int status, const char *why) {
        agen_co *co = TAKE_PTR(l->closing);

        if (ev_is_active(&l->retry_timer))
                ev_timer_stop(l->loop, &l->retry_timer);
        lease_drop_conn(l);
        l->phase = LEASE_CLOSED;
        if (status >= 0) {
                (void) agen_co_return(co);
                return;
        }
        char msg[256];
        snprintf(msg, sizeof(msg), "releasing lease %s: %s", l->id, why);
        (void) agen_co_fail(co, status, msg);
}

/* The Release could not reach agend (down, restarting): try again as it comes back, so a
 * lease restored by a restarted agend (or a detached one) does not outlive its close. */
static void lease_release_retry(Lease *l, int error) {
        if (ev_now(l->loop) >= l->release_deadline)
                return lease_release_done(l, error,
                                          "agend unreachable; a bound lease is released after its grace period");
        ev_timer_set(&l->retry_timer, l->backoff, 0.);
        ev_timer_start(l->loop, &l->retry_timer);
        l->backoff = MIN(l->backoff * 2, RECONNECT_MAX);
}

static void release_reply(Conn *c, int status, const char *error_name, json_object *params, bool continues,
                          void *userdata) {
        Lease *l = userdata;

        l->control_call = NULL;
        l->control = conn_unref(l->control);
        if (status < 0 && !error_name)
                return lease_release_retry(l, status); /* the connection ended */
        /* NoSuchLease: it ended meanwhile, which is what we asked for. */
        lease_release_done(l, status == -ENOENT ? 0 : status, strempty(error_name));
}

static void lease_send_release(Lease *l) {
        Conn *c;
        int r = client_control(l->client, &c);
        if (r >= 0) {
                r = lease_call(c, "io.agend.Lease.Release", lease_id_params(l, false), 0, release_reply, l,
                               &l->control_call);
                if (r >= 0) {
                        l->control = conn_ref(c);
                        return;
                }
        }
        if (r == -ENOMEM)
                return lease_release_done(l, r, strerror(-r));
        lease_release_retry(l, r);
}

static void lease_close(agen_gen *gen, agen_co *co, void *userdata) {
        Lease *l = userdata;

        lease_stop_timers(l);
        if (!l->granted || l->finished) {
                /* Not held (waiting, or over): closing the connection cancels a wait. */
                lease_cancel_control(l);
                lease_drop_conn(l);
                l->phase = LEASE_CLOSED;
                (void) agen_co_return(co);
                return;
        }

        /* A Renew in flight is answered before the Release (one connection, in order). A
         * Watch or Reclaim in flight on the lease connection is answered to nobody. */
        lease_cancel_control(l);
        if (l->call && conn_is_open(l->conn))
                conn_call_cancel(l->call);
        l->call = NULL;
        l->closing = co;
        l->phase = LEASE_RELEASING;
        l->backoff = RECONNECT_FIRST;
        ev_now_update(l->loop);
        l->release_deadline = ev_now(l->loop) + lease_reconnect_window;
        lease_send_release(l);
}

static void lease_abandon(agen_gen *gen, void *userdata) {
        Lease *l = userdata;
        bool held = l->granted && !l->finished && l->phase != LEASE_CLOSED;

        lease_stop_timers(l);
        lease_cancel_control(l);
        if (held && l->opts.detached) {
                /* Not bound to our connection, so EOF would not end it: a one-way Release on
                 * a connection of its own, written without waiting for the loop. */
                Conn *c;
                if (conn_connect(l->loop, agen_client_get_address(l->client), &c) >= 0) {
                        if (lease_call(c, "io.agend.Lease.Release", lease_id_params(l, false), VL_CALL_ONEWAY,
                                       NULL, NULL, NULL) >= 0)
                                (void) conn_flush_blocking(c, ABANDON_RELEASE_TIMEOUT);
                        conn_close(c);
                        conn_unref(c);
                }
        }
        /* EOF on the lease connection: the daemon releases a bound lease. */
        lease_drop_conn(l);
        l->closing = NULL;
        l->step = NULL;
        l->phase = LEASE_CLOSED;
}

static void lease_events_free(LeaseEvent *e) {
        while (e) {
                LeaseEvent *next = e->next;
                free(e->reason);
                free(e);
                e = next;
        }
}

static void lease_destroy(void *userdata) {
        Lease *l = userdata;

        lease_stop_timers(l);
        lease_cancel_control(l);
        lease_drop_conn(l);
        lease_events_free(l->events);
        lease_events_free(l->kept);
        if (l->secret)
                explicit_bzero(l->secret, strlen(l->secret));
        free(l->secret);
        lease_forget_ticket(l);
        free(l->lease_json);
        free(l->error_name);
        free(l->error_reason);
        free(l->id);
        free(l->end_message);
        free(l->resource);
        free(l->description);
        client_lease_detach(l->client);
        free(l);
}

static const agen_gen_ops lease_ops = {
        .step = lease_step,
        .close = lease_close,
        .abandon = lease_abandon,
        .destroy = lease_destroy,
        .cancel = lease_cancel,
};

_public_ int agen_lease_new(agen_client *client, const char *resource, const agen_lease_opts *opts,
                            agen_gen **ret) {
        assert_return(client, -EINVAL);
        assert_return(resource && *resource, -EINVAL);
        assert_return(ret, -EINVAL);
        if (client_is_forked(client))
                return -ECHILD;
        if (opts) {
                assert_return(isfinite(opts->timeout) && opts->timeout >= 0, -EINVAL);
                assert_return(isfinite(opts->ttl) && opts->ttl >= 0, -EINVAL);
        }

        Lease *l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        *l = (Lease) {
                .client = client,
                .loop = agen_client_get_loop(client),
                .resource = strdup(resource),
                .opts = opts ? *opts : (agen_lease_opts) {},
        };
        l->events_tail = &l->events;
        l->opts.description = NULL;
        if (opts && opts->description)
                l->description = strdup(opts->description);
        if (!l->resource || (opts && opts->description && !l->description)) {
                free(l->resource);
                free(l->description);
                free(l);
                return -ENOMEM;
        }
        ev_timer_init(&l->renew_timer, lease_renew_cb, 0., 0.);
        ev_timer_init(&l->retry_timer, lease_retry_cb, 0., 0.);
        ev_timer_init(&l->acquire_timer, lease_acquire_timer_cb, 0., 0.);

        agen_gen *g;
        int r = agen_gen_new(l->loop, &lease_ops, l, &g);
        if (r < 0) {
                free(l->resource);
                free(l->description);
                free(l);
                return r;
        }
        /* From here on lease_destroy() frees l, and detaches from the client. */
        client_lease_attach(client);
        *ret = g;
        return 0;
}

_public_ agen_gen *agen_lease(agen_client *client, const char *resource, const agen_lease_opts *opts) {
        agen_gen *g = NULL;
        int r = agen_lease_new(client, resource, opts, &g);
        if (r < 0) {
                errno = -r;
                return NULL;
        }
        return g;
}

_public_ int agen_lease_get_current(agen_gen *lease, const char **ret_id, uint64_t *ret_token) {
        assert_return(lease, -EINVAL);
        assert_return(gen_get_ops(lease) == &lease_ops, -EINVAL);
        Lease *l = agen_gen_get_userdata(lease);

        if (!l->granted || l->finished || l->phase == LEASE_CLOSED)
                return -ENODATA;
        if (ret_id)
                *ret_id = l->id;
        if (ret_token)
                *ret_token = l->token;
        return 0;
}

_public_ int agen_lease_get_error(agen_gen *lease, const char **ret_name, const char **ret_reason) {
        assert_return(lease, -EINVAL);
        assert_return(gen_get_ops(lease) == &lease_ops, -EINVAL);
        Lease *l = agen_gen_get_userdata(lease);

        if (!l->error_name)
                return -ENODATA;
        if (ret_name)
                *ret_name = l->error_name;
        if (ret_reason)
                *ret_reason = l->error_reason;
        return 0;
}

_public_ int agen_lease_hand_off(agen_gen *lease, char **ret_secret, char **ret_lease_json) {
        assert_return(lease, -EINVAL);
        assert_return(ret_secret, -EINVAL);
        assert_return(gen_get_ops(lease) == &lease_ops, -EINVAL);
        Lease *l = agen_gen_get_userdata(lease);

        if (!l->granted || l->finished || l->phase == LEASE_CLOSED || l->phase == LEASE_RELEASING)
                return -ENODATA;
        if (!l->opts.detached)
                return -EOPNOTSUPP;
        _cleanup_free_ char *secret = strdup(l->secret), *json = NULL;
        if (!secret)
                return -ENOMEM;
        if (ret_lease_json) {
                json = l->lease_json ? strdup(l->lease_json) : NULL;
                if (!json)
                        return -ENOMEM;
        }
        /* The lease is not ours any more: nothing renews, watches or releases it here.
         * Closing our connection does not end a detached lease. A step waiting for the next
         * event gets AGEN_STOP. */
        l->granted = false;
        lease_finish(l, 0, NULL);
        *ret_secret = TAKE_PTR(secret);
        if (ret_lease_json)
                *ret_lease_json = TAKE_PTR(json);
        return 0;
}

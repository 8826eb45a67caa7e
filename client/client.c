/* SPDX-License-Identifier: MIT */
/* The client: an address, a loop and the control connection. The control connection
 * carries the calls that do not wait (Release, Renew, List, ...), pipelined; every lease
 * generator opens its own connection for the Acquire and Watch that do (BRIEF §3a). */

#include <ev.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agen/agen.h"
#include "client-internal.h"
#include "conn.h"
#include "fork.h"
#include "json-util.h"

#define DEFAULT_SYSTEM_ADDRESS "/run/agend/io.agend.Lease"
#define OWN_LOOP_SHUTDOWN_TIMEOUT 5.0

struct agen_client {
        unsigned n_ref;    /* the users' references */
        unsigned n_leases; /* lease generators not yet freed: they hold the client too */
        struct ev_loop *loop;
        bool own_loop;
        char *address;
        Conn *control;
        unsigned fork_generation; /* ro */
};

bool client_is_forked(agen_client *c) {
        return fork_is_stale(c->fork_generation);
}

_public_ int agen_default_address(char **ret) {
        assert_return(ret, -EINVAL);

        const char *e = getenv("AGEND_SOCKET");
        char *a = NULL;
        if (e && *e)
                a = strdup(e);
        else {
                const char *xdg = getuid() != 0 ? getenv("XDG_RUNTIME_DIR") : NULL;
                if (xdg && *xdg) {
                        if (asprintf(&a, "%s/agend/io.agend.Lease", xdg) < 0)
                                return -ENOMEM;
                        /* A user's own agend, if it runs; else the system's. */
                        if (access(a, F_OK) < 0) {
                                free(a);
                                a = strdup(DEFAULT_SYSTEM_ADDRESS);
                        }
                } else
                        a = strdup(DEFAULT_SYSTEM_ADDRESS);
        }
        if (!a)
                return -ENOMEM;
        *ret = a;
        return 0;
}

static void client_free(agen_client *c) {
        conn_close(c->control);
        c->control = conn_unref(c->control);
        if (c->own_loop)
                ev_loop_destroy(c->loop);
        free(c->address);
        free(c);
}

_public_ int agen_client_new(struct ev_loop *loop, const char *address, agen_client **ret) {
        assert_return(ret, -EINVAL);

        agen_client *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (agen_client) { .n_ref = 1, .loop = loop, .fork_generation = fork_generation() };
        int r = address ? ((c->address = strdup(address)) ? 0 : -ENOMEM) : agen_default_address(&c->address);
        if (r < 0) {
                free(c);
                return r;
        }
        if (!loop) {
                c->loop = ev_loop_new(EVFLAG_AUTO);
                if (!c->loop) {
                        free(c->address);
                        free(c);
                        return -ENOMEM;
                }
                c->own_loop = true;
        }
        r = conn_connect(c->loop, c->address, &c->control);
        if (r < 0) {
                client_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

_public_ agen_client *agen_client_ref(agen_client *client) {
        if (client && !client_is_forked(client))
                client->n_ref++;
        return client;
}

_public_ agen_client *agen_client_unref(agen_client *client) {
        if (!client)
                return NULL;
        if (client_is_forked(client))
                return NULL; /* the parent's: left alone (fork.h) */
        assert(client->n_ref > 0);
        if (--client->n_ref > 0)
                return NULL;
        if (client->own_loop) {
                /* Nobody else runs this loop: close its leases now, release and all. */
                client->n_ref++;
                (void) agen_loop_shutdown(client->loop, OWN_LOOP_SHUTDOWN_TIMEOUT);
                client->n_ref--;
        }
        if (client->n_leases == 0)
                client_free(client);
        else if (client->own_loop) {
                /* The leases that remain are closed: drop the loop now, since nobody will
                 * run it; they only wait for their last unref. */
                conn_close(client->control);
                client->control = conn_unref(client->control);
        }
        return NULL;
}

void client_lease_attach(agen_client *c) {
        c->n_leases++;
}

void client_lease_detach(agen_client *c) {
        assert(c->n_leases > 0);
        if (--c->n_leases == 0 && c->n_ref == 0)
                client_free(c);
}

_public_ struct ev_loop *agen_client_get_loop(agen_client *client) {
        assert_return(client, NULL);
        return client->loop;
}

_public_ const char *agen_client_get_address(agen_client *client) {
        assert_return(client, NULL);
        return client->address;
}

int client_control(agen_client *c, Conn **ret) {
        if (client_is_forked(c))
                return -ECHILD;
        if (!conn_is_open(c->control)) {
                /* Lost (daemon restart): reconnect on demand. */
                Conn *n;
                int r = conn_connect(c->loop, c->address, &n);
                if (r < 0)
                        return r;
                conn_close(c->control);
                conn_unref(c->control);
                c->control = n;
        }
        *ret = c->control;
        return 0;
}

typedef struct CallCtx {
        agen_client *client;
        agen_reply_cb cb;
        void *userdata;
} CallCtx;

static void call_reply(Conn *conn, int status, const char *error_name, json_object *parameters, bool continues,
                       void *userdata) {
        CallCtx *ctx = userdata;
        const char *json = parameters ? json_object_to_json_string_ext(parameters, JSON_C_TO_STRING_PLAIN |
                                                                               JSON_C_TO_STRING_NOSLASHESCAPE)
                                      : NULL;
        if (ctx->cb)
                ctx->cb(ctx->client, status, error_name, json, continues, ctx->userdata);
        if (!continues) {
                agen_client_unref(ctx->client);
                free(ctx);
        }
}

/* The caller's parameters: one JSON object, strictly parsed (common/json-util.h), so that
 * what agend would refuse as a ProtocolError is refused here as -EINVAL first. */
static int parse_params(const char *parameters_json, json_object **ret) {
        json_object *o = NULL;

        if (!parameters_json) {
                *ret = NULL;
                return 0;
        }
        int r = json_parse_buffer(parameters_json, strlen(parameters_json), &o);
        if (r == -ENOMEM)
                return r;
        if (r < 0 || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                return -EINVAL;
        }
        *ret = o;
        return 0;
}

_public_ int agen_client_call(agen_client *client, const char *method, const char *parameters_json,
                              unsigned flags, agen_reply_cb cb, void *userdata) {
        assert_return(client, -EINVAL);
        assert_return(method && *method, -EINVAL);
        assert_return(!(flags & ~(AGEN_CALL_MORE | AGEN_CALL_ONEWAY)), -EINVAL);
        assert_return(!((flags & AGEN_CALL_MORE) && (flags & AGEN_CALL_ONEWAY)), -EINVAL);
        if (client_is_forked(client))
                return -ECHILD;

        json_object *params;
        int r = parse_params(parameters_json, &params);
        if (r < 0)
                return r;
        Conn *conn;
        r = client_control(client, &conn);
        if (r < 0) {
                json_object_put(params);
                return r;
        }
        unsigned cflags = (flags & AGEN_CALL_MORE ? VL_CALL_MORE : 0) | (flags & AGEN_CALL_ONEWAY ? VL_CALL_ONEWAY : 0);
        CallCtx *ctx = NULL;
        if (!(flags & AGEN_CALL_ONEWAY)) {
                ctx = malloc(sizeof(*ctx));
                if (!ctx) {
                        json_object_put(params);
                        return -ENOMEM;
                }
                *ctx = (CallCtx) { .client = agen_client_ref(client), .cb = cb, .userdata = userdata };
        }
        r = conn_call(conn, method, TAKE_PTR(params), cflags, call_reply, ctx, NULL);
        if (r < 0 && ctx) {
                agen_client_unref(ctx->client);
                free(ctx);
        }
        return r;
}

typedef struct SyncReply {
        bool done;
        int status;
        char *error;
        char *params;
} SyncReply;

static void sync_reply(Conn *conn, int status, const char *error_name, json_object *parameters, bool continues,
                       void *userdata) {
        SyncReply *s = userdata;
        if (continues)
                return;
        s->done = true;
        s->status = status;
        if (error_name)
                s->error = strdup(error_name);
        if (parameters)
                s->params = strdup(json_object_to_json_string_ext(
                        parameters, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
        if ((error_name && !s->error) || (parameters && !s->params))
                s->status = -ENOMEM;
}

static void sync_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        *(bool *) w->data = true;
}

_public_ int agen_call_sync(const char *address, const char *method, const char *parameters_json,
                            unsigned flags, double timeout, char **ret_parameters_json, char **ret_error_name) {
        assert_return(method && *method, -EINVAL);
        assert_return(!(flags & ~AGEN_CALL_ONEWAY), -EINVAL);

        _cleanup_free_ char *def = NULL;
        if (!address) {
                int r = agen_default_address(&def);
                if (r < 0)
                        return r;
                address = def;
        }
        json_object *params;
        int r = parse_params(parameters_json, &params);
        if (r < 0)
                return r;

        /* A private loop keeps this independent of any loop the caller may have. */
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        if (!loop) {
                json_object_put(params);
                return -ENOMEM;
        }
        Conn *conn = NULL;
        SyncReply s = {};
        r = conn_connect(loop, address, &conn);
        if (r >= 0)
                r = conn_call(conn, method, TAKE_PTR(params), flags & AGEN_CALL_ONEWAY ? VL_CALL_ONEWAY : 0,
                              sync_reply, &s, NULL);
        json_object_put(params);
        if (r >= 0 && (flags & AGEN_CALL_ONEWAY))
                r = conn_flush_blocking(conn, timeout < 0 ? 3600. : timeout);
        else if (r >= 0) {
                /* The private loop runs the connection (also a connect still waiting for a
                 * full listen backlog) until the reply, the end, or the timeout. */
                bool timed_out = false;
                ev_timer t;
                ev_timer_init(&t, sync_timeout_cb, timeout < 0 ? 0. : timeout, 0.);
                t.data = &timed_out;
                if (timeout >= 0) {
                        ev_now_update(loop);
                        ev_timer_start(loop, &t);
                }
                while (!s.done && !timed_out && conn_is_open(conn))
                        if (ev_run(loop, EVRUN_ONCE) == 0)
                                break;
                if (timeout >= 0)
                        ev_timer_stop(loop, &t);
                if (!s.done)
                        r = timed_out ? -ETIMEDOUT : -ECONNRESET;
                if (r >= 0) {
                        r = s.status;
                        if (s.params || s.error) {
                                if (ret_parameters_json)
                                        *ret_parameters_json = TAKE_PTR(s.params);
                                if (ret_error_name)
                                        *ret_error_name = TAKE_PTR(s.error);
                        }
                }
        }
        free(s.error);
        free(s.params);
        conn_close(conn);
        conn_unref(conn);
        ev_loop_destroy(loop);
        return r;
}

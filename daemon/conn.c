/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "config.h"
#include "conn.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "peer.h"

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);

int conn_new(Manager *m, int fd, Conn **ret) {
        Conn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->manager = m;
        c->fd = fd;
        vl_reader_init(&c->in, m->config.max_message_size);
        vl_writer_init(&c->out);
        int k = peer_get(fd, &c->peer);
        if (k >= 0 && c->peer.pid > 0)
                k = peer_groups(c->peer.pid, &c->groups, &c->n_groups);
        if (k < 0) {
                owner_done(&c->peer);
                vl_reader_done(&c->in);
                free(c);
                return k;
        }
        ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
        c->io.data = c;
        ev_io_start(m->loop, &c->io);
        c->next = m->conns;
        if (m->conns)
                m->conns->prev = c;
        m->conns = c;
        m->n_conns++;
        *ret = c;
        return 0;
}

void conn_watch_start(Conn *c) {
        Manager *m = c->manager;
        c->watch_prev = NULL;
        c->watch_next = m->watchers;
        if (m->watchers)
                m->watchers->watch_prev = c;
        m->watchers = c;
        c->is_watcher = true;
        c->busy = CONN_WATCH;
}

static void watcher_unlink(Conn *c) {
        Manager *m = c->manager;
        if (!c->is_watcher)
                return;
        if (c->watch_prev)
                c->watch_prev->watch_next = c->watch_next;
        else
                m->watchers = c->watch_next;
        if (c->watch_next)
                c->watch_next->watch_prev = c->watch_prev;
        c->watch_prev = c->watch_next = NULL;
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
        watcher_unlink(c);
        /* Unlink from the dirty and pending lists (singly linked: rare, short walks). */
        for (Conn **p = &m->dirty; *p; p = &(*p)->dirty_next)
                if (*p == c) {
                        *p = c->dirty_next;
                        break;
                }
        for (Conn **p = &m->pending; *p; p = &(*p)->pending_next)
                if (*p == c) {
                        *p = c->pending_next;
                        break;
                }
        if (c->prev)
                c->prev->next = c->next;
        else
                m->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        m->n_conns--;
        if (c->user) {
                c->user->connections--;
                manager_user_maybe_free(m, c->user);
        }
        ev_io_stop(m->loop, &c->io);
        safe_close(c->fd);
        vl_reader_done(&c->in);
        vl_writer_done(&c->out);
        owner_done(&c->peer);
        free(c->groups);
        free(c->watch_resource);
        free(c->watch_lease);
        free(c);
}

static void append(Conn *c, struct json_object *msg) {
        if (!msg) {
                /* Out of memory: the client would wait forever for this reply. */
                c->dead = true;
                manager_mark_dirty(c->manager, c);
                return;
        }
        if (vl_writer_append_json(&c->out, msg) < 0)
                c->dead = true;
        json_object_put(msg);
        manager_mark_dirty(c->manager, c);
}

void conn_reply(Conn *c, struct json_object *parameters, bool continues) {
        if (c->oneway) {
                json_object_put(parameters);
                return;
        }
        append(c, vl_reply_new(parameters, continues));
}

void conn_error(Conn *c, const char *error, struct json_object *parameters) {
        if (c->oneway) {
                json_object_put(parameters);
                return;
        }
        append(c, vl_error_new(error, parameters));
}

void conn_error_reason(Conn *c, const char *error, const char *reason, const char *key, const char *value) {
        if (c->oneway)
                return;
        append(c, vl_error_newf(error, key, value, "%s", reason));
}

void conn_protocol_error(Conn *c, const char *reason) {
        log_debug("closing connection of pid %d: %s", c->peer.pid, reason);
        c->oneway = false;
        append(c, vl_error_newf("io.agend.Lease.ProtocolError", NULL, NULL, "%s", reason));
        c->closing = true;
        ev_io_stop(c->manager->loop, &c->io);
}

void conn_call_done(Conn *c) {
        c->busy = CONN_IDLE;
        c->more = false;
        c->oneway = false;
        manager_mark_pending(c->manager, c);
}

/* Handles whole calls while the connection is idle. */
static void handle_input(Conn *c) {
        char reason[160];
        while (c->busy == CONN_IDLE && !c->closing && !c->dead) {
                char *msg;
                size_t len;
                int k = vl_reader_next(&c->in, &msg, &len);
                if (k == 0)
                        break;
                if (k == -EMSGSIZE) {
                        snprintf(reason, sizeof(reason), "message exceeds the limit of %zu bytes",
                                 c->in.max_message);
                        conn_protocol_error(c, reason);
                        return;
                }
                VlCall call;
                k = vl_call_parse(msg, len, &call);
                if (k == -EBADMSG) {
                        conn_protocol_error(c, "the message is not a valid JSON object");
                        return;
                }
                if (k < 0) {
                        conn_protocol_error(c, k == -ENOMEM ? "out of memory"
                                                            : "not a varlink call (needs a \"method\" string "
                                                              "\"interface.Method\", object \"parameters\", boolean "
                                                              "\"more\"/\"oneway\"; \"upgrade\" is not supported)");
                        return;
                }
                c->oneway = call.oneway;
                c->more = call.more;
                methods_dispatch(c, &call);
                vl_call_done(&call);
                if (c->busy == CONN_IDLE) {
                        c->oneway = false;
                        c->more = false;
                }
        }
}

void conn_process(Conn *c) {
        if (c->dead || c->closing)
                return;
        handle_input(c);
        if (!c->dead && !c->closing && vl_reader_pending(&c->in) > c->manager->config.max_unanswered_input) {
                char reason[160];
                snprintf(reason, sizeof(reason), "more than %zu bytes of unanswered input",
                         c->manager->config.max_unanswered_input);
                conn_protocol_error(c, reason);
        }
}

int conn_flush(Conn *c) {
        if (c->dead)
                return -ECONNRESET;
        if (vl_writer_pending(&c->out) == 0)
                return c->closing ? -ECONNRESET : 0;
        int k = vl_writer_flush(&c->out, c->fd);
        if (k < 0 && k != -EAGAIN)
                return k;
        k = k == 0 ? 1 : 0;
        if (k == 1 && c->closing)
                return -ECONNRESET;     /* said what we had to say; now close */
        /* Wait for POLLOUT only while bytes remain; a client that stops reading stops
         * being read from too, which bounds what it can make us buffer. */
        int events = k == 0 ? EV_WRITE : (c->closing ? 0 : EV_READ);
        if (k == 0 && vl_writer_pending(&c->out) > 4 * c->manager->config.max_unanswered_input)
                return -ENOBUFS;        /* a watcher that never reads */
        if ((c->io.events & (EV_READ | EV_WRITE)) != events) {
                ev_io_stop(c->manager->loop, &c->io);
                ev_io_set(&c->io, c->fd, events);
                if (events)
                        ev_io_start(c->manager->loop, &c->io);
        }
        return 0;
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        Conn *c = w->data;
        Manager *m = c->manager;

        if (revents & EV_WRITE) {
                manager_mark_dirty(m, c);
                if (!(revents & EV_READ))
                        return;
        }
        /* A few reads per wake-up, so one flooding client does not starve the others. */
        for (int i = 0; i < 4; i++) {
                ssize_t n = vl_reader_read(&c->in, c->fd);
                if (n == -EAGAIN)
                        break;
                if (n <= 0) {
                        /* End of input. A peer that only half-closed after its calls
                         * (printf ... | socat) still gets the replies to the calls it sent:
                         * handle what is whole, let the group commit flush, then close, which
                         * ends its bound leases. A hang-up with a call in progress (a wait,
                         * a watch), or an error, closes at once. */
                        if (n == 0 && c->busy == CONN_IDLE && !c->dead && !c->closing) {
                                conn_process(c);
                                c->closing = true;
                                ev_io_stop(m->loop, &c->io);
                                manager_mark_dirty(m, c);
                                return;
                        }
                        conn_free(c, true);
                        return;
                }
                conn_process(c);
                if (c->closing || c->dead)
                        break;
        }
}

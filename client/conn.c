/* SPDX-License-Identifier: MIT */
/* A varlink connection on a libev loop. Replies come in call order, so the pending calls
 * are a FIFO: each reply goes to the head, which stays there while replies say
 * "continues". Writes are queued in a VlWriter and flushed as soon as the socket takes
 * them; a call never waits for the reply of the one before it (pipelining). */

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include "conn.h"
#include "errmap.h"
#include "fork.h"
#include "gen-internal.h"

/* Reads per I/O callback before the loop gets a turn: a daemon streaming replies faster
 * than we take them does not starve the program's other watchers. */
#define CONN_READS_PER_CALLBACK 8
/* A listener whose backlog is full (a stopped daemon) answers a non-blocking connect()
 * with EAGAIN: we try again, from a timer, this often, for up to CONN_CONNECT_TIMEOUT. */
#define CONN_CONNECT_RETRY_FIRST 0.002
#define CONN_CONNECT_RETRY_MAX 0.1

struct ConnCall {
        conn_reply_fn cb; /* NULL once cancelled */
        void *userdata;
        ConnCall *next;
};

struct Conn {
        unsigned n_ref;
        struct ev_loop *loop;
        int fd;
        ev_io io;
        bool io_active;
        bool io_weak; /* ev_unref()'d while idle */
        unsigned io_events;

        VlReader in;
        VlWriter out;

        ConnCall *calls_head, *calls_tail;
        conn_end_fn end_fn;
        void *end_userdata;
        bool ended;

        unsigned fork_generation; /* ro: made in this process, or inherited (fork.h) */
        bool connecting;          /* connect() said EAGAIN: retried from connect_timer */
        struct sockaddr_un sa;
        socklen_t salen;
        ev_timer connect_timer;
        double connect_retry;
        ev_tstamp connect_deadline;
};

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_end(Conn *c, int error);
static int conn_flush(Conn *c);

static bool conn_forked(Conn *c) {
        return fork_is_stale(c->fork_generation);
}

static void conn_stop_io(Conn *c) {
        if (!c->io_active)
                return;
        if (c->io_weak)
                ev_ref(c->loop);
        ev_io_stop(c->loop, &c->io);
        c->io_active = c->io_weak = false;
        c->io_events = 0;
}

/* Reads always, writes while output is queued. An idle connection (no call waiting for a
 * reply, nothing to write) does not keep ev_run() from returning: the control connection
 * of a client is not a reason for a program's loop to run on. */
static void conn_update_io(Conn *c) {
        unsigned events = 0;
        bool weak = false;
        if (c->fd >= 0 && !c->connecting) {
                events = EV_READ;
                if (vl_writer_pending(&c->out) > 0)
                        events |= EV_WRITE;
                weak = !c->calls_head && !(events & EV_WRITE);
        }
        if (c->io_active && events == c->io_events && weak == c->io_weak)
                return;
        conn_stop_io(c);
        if (events) {
                ev_io_set(&c->io, c->fd, (int) events);
                ev_io_start(c->loop, &c->io);
                c->io_active = true;
                c->io_events = events;
                if (weak) {
                        ev_unref(c->loop);
                        c->io_weak = true;
                }
        }
}

static int socket_address(const char *address, struct sockaddr_un *sa, socklen_t *ret_len) {
        if (strncmp(address, "unix:", 5) == 0)
                address += 5;
        size_t n = strlen(address);
        if (n == 0 || n >= sizeof(sa->sun_path))
                return -EINVAL;
        *sa = (struct sockaddr_un) { .sun_family = AF_UNIX };
        memcpy(sa->sun_path, address, n);
        if (address[0] == '@')
                sa->sun_path[0] = 0;
        else
                n++;
        *ret_len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n);
        return 0;
}

static void conn_connect_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);

/* 0 connected, -EAGAIN not yet (listen backlog full), else the error. */
static int conn_try_connect(Conn *c) {
        if (connect(c->fd, (struct sockaddr *) &c->sa, c->salen) >= 0 || errno == EISCONN)
                return 0;
        if (errno == EAGAIN || errno == EINPROGRESS || errno == EALREADY)
                return -EAGAIN;
        return -errno;
}

static void conn_connected(Conn *c) {
        c->connecting = false;
        if (ev_is_active(&c->connect_timer))
                ev_timer_stop(c->loop, &c->connect_timer);
        (void) conn_flush(c);
        conn_update_io(c);
}

static void conn_connect_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Conn *c = container_of(w, Conn, connect_timer);
        int r = conn_try_connect(c);
        if (r >= 0)
                return conn_connected(c);
        if (r == -EAGAIN && ev_now(loop) < c->connect_deadline) {
                c->connect_retry = MIN(c->connect_retry * 2, CONN_CONNECT_RETRY_MAX);
                ev_timer_set(w, c->connect_retry, 0.);
                ev_timer_start(loop, w);
                return;
        }
        conn_ref(c);
        conn_end(c, r == -EAGAIN ? -ETIMEDOUT : r);
        conn_unref(c);
}

int conn_connect(struct ev_loop *loop, const char *address, Conn **ret) {
        struct sockaddr_un sa;
        socklen_t salen;
        int r;

        assert(loop && address && ret);
        r = socket_address(address, &sa, &salen);
        if (r < 0)
                return r;

        /* Never blocking: a daemon that does not accept (stopped, backlog full) must not
         * freeze the program's loop. An AF_UNIX connect() either completes at once, fails
         * at once, or says EAGAIN (backlog full); the last is retried from a timer. */
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
                return -errno;

        Conn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (Conn) {
                .n_ref = 1,
                .loop = loop,
                .fd = TAKE_FD(fd),
                .fork_generation = fork_generation(),
                .sa = sa,
                .salen = salen,
        };
        vl_reader_init(&c->in, CONN_MAX_MESSAGE);
        vl_writer_init(&c->out);
        ev_io_init(&c->io, conn_io_cb, c->fd, EV_READ);
        ev_timer_init(&c->connect_timer, conn_connect_timer_cb, 0., 0.);

        r = conn_try_connect(c);
        if (r == -EAGAIN) {
                c->connecting = true;
                c->connect_retry = CONN_CONNECT_RETRY_FIRST;
                ev_now_update(loop);
                c->connect_deadline = ev_now(loop) + CONN_CONNECT_TIMEOUT;
                ev_timer_set(&c->connect_timer, c->connect_retry, 0.);
                ev_timer_start(loop, &c->connect_timer);
        } else if (r < 0) {
                c->fd = safe_close(c->fd);
                vl_reader_done(&c->in);
                vl_writer_done(&c->out);
                free(c);
                return r;
        }
        fork_track_fd(c->fd);
        conn_update_io(c);
        *ret = c;
        return 0;
}

static void conn_drop_calls(Conn *c) {
        while (c->calls_head) {
                ConnCall *k = c->calls_head;
                c->calls_head = k->next;
                free(k);
        }
        c->calls_tail = NULL;
}

/* Closes the socket. In a forked child the inherited one was closed at fork time and its
 * number may be reused: it is forgotten, and nothing of the loop is touched. */
static void conn_close_fd(Conn *c) {
        if (conn_forked(c)) {
                c->fd = -EBADF;
                c->io_active = false;
                return;
        }
        conn_stop_io(c);
        if (ev_is_active(&c->connect_timer))
                ev_timer_stop(c->loop, &c->connect_timer);
        c->connecting = false;
        if (c->fd >= 0)
                fork_untrack_fd(c->fd);
        c->fd = safe_close(c->fd);
}

void conn_close(Conn *c) {
        if (!c)
                return;
        conn_close_fd(c);
        c->ended = true;
        conn_drop_calls(c);
}

/* The buffers are freed only here, not in conn_close(): a reply callback may close the
 * connection whose reader holds the message being dispatched. */
static void conn_free(Conn *c) {
        conn_close(c);
        vl_reader_done(&c->in);
        vl_writer_done(&c->out);
        free(c);
}

DEFINE_TRIVIAL_REF_UNREF_FUNC(Conn, conn, conn_free, )

void conn_set_end_handler(Conn *c, conn_end_fn fn, void *userdata) {
        c->end_fn = fn;
        c->end_userdata = userdata;
}

bool conn_is_open(Conn *c) {
        return c && !c->ended && !conn_forked(c);
}

bool conn_is_forked(Conn *c) {
        return c && conn_forked(c);
}

int conn_get_fd(Conn *c) {
        return c ? c->fd : -EBADF;
}

/* The connection is over: fail what is pending, then tell the owner. */
static void conn_end(Conn *c, int error) {
        if (c->ended)
                return;
        conn_ref(c);
        conn_close_fd(c);
        c->ended = true;
        while (c->calls_head) {
                ConnCall *k = c->calls_head;
                c->calls_head = k->next;
                if (!c->calls_head)
                        c->calls_tail = NULL;
                if (k->cb)
                        k->cb(c, error, NULL, NULL, false, k->userdata);
                free(k);
        }
        if (c->end_fn)
                c->end_fn(c, error, c->end_userdata);
        conn_unref(c);
}

/* 0 when all is written or the socket is full; < 0 when the connection is broken. */
static int conn_flush(Conn *c) {
        if (c->connecting)
                return 0;
        int r = vl_writer_flush(&c->out, c->fd);
        return r == -EAGAIN ? 0 : r;
}

int conn_call(Conn *c, const char *method, json_object *parameters, unsigned flags, conn_reply_fn cb,
              void *userdata, ConnCall **ret_call) {
        assert(c && method);
        assert(!(flags & ~(unsigned) (VL_CALL_MORE | VL_CALL_ONEWAY)));
        if (conn_forked(c)) {
                json_object_put(parameters);
                return -ECHILD;
        }
        if (c->ended) {
                json_object_put(parameters);
                return -ENOTCONN;
        }
        if (!parameters)
                parameters = json_object_new_object();
        if (!parameters)
                return -ENOMEM;

        _cleanup_(json_object_putp) json_object *m = vl_call_new(method, parameters, flags);
        if (!m)
                return -ENOMEM;
        _cleanup_free_ ConnCall *k = NULL;
        if (!(flags & VL_CALL_ONEWAY)) {
                k = malloc(sizeof(*k));
                if (!k)
                        return -ENOMEM;
                *k = (ConnCall) { .cb = cb, .userdata = userdata };
        }
        int r = vl_writer_append_json(&c->out, m);
        if (r < 0)
                return r;

        if (k) {
                if (c->calls_tail)
                        c->calls_tail->next = k;
                else
                        c->calls_head = k;
                c->calls_tail = k;
        }
        if (ret_call)
                *ret_call = k;
        TAKE_PTR(k);

        /* Write now if the socket takes it; a broken socket shows up as EOF on the next
         * read, or as an error on the write watcher. */
        (void) conn_flush(c);
        conn_update_io(c);
        return 0;
}

void conn_call_cancel(ConnCall *call) {
        if (call)
                call->cb = NULL;
}

static double now_sec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

int conn_flush_blocking(Conn *c, double timeout) {
        double deadline = now_sec() + timeout;
        if (conn_forked(c))
                return -ECHILD;
        for (;;) {
                if (c->ended)
                        return -ENOTCONN;
                if (c->connecting) {
                        int r = conn_try_connect(c);
                        if (r == -EAGAIN) {
                                double left = deadline - now_sec();
                                if (left <= 0)
                                        return -ETIMEDOUT;
                                (void) poll(NULL, 0, (int) (MIN(left, CONN_CONNECT_RETRY_MAX) * 1000) + 1);
                                continue;
                        }
                        if (r < 0)
                                return r;
                        conn_connected(c);
                }
                int r = vl_writer_flush(&c->out, c->fd);
                if (r != -EAGAIN)
                        return r;
                double left = deadline - now_sec();
                if (left <= 0)
                        return -ETIMEDOUT;
                struct pollfd p = { .fd = c->fd, .events = POLLOUT };
                if (poll(&p, 1, (int) (left * 1000) + 1) < 0 && errno != EINTR)
                        return -errno;
        }
}

/* One message from the daemon. Returns < 0 when the connection must end: not a varlink
 * reply (-EBADMSG, -EPROTO), or a reply nobody asked for (-EBADMSG). */
static int conn_dispatch(Conn *c, const char *msg, size_t len) {
        VlReply reply;
        int r = vl_reply_parse(msg, len, &reply);
        if (r < 0)
                return r;

        ConnCall *k = c->calls_head;
        if (!k) {
                vl_reply_done(&reply);
                return -EBADMSG;
        }
        /* An error ends the call, whatever else it says. */
        bool continues = reply.continues && !reply.error;
        if (!continues) {
                c->calls_head = k->next;
                if (!c->calls_head)
                        c->calls_tail = NULL;
        }
        if (k->cb)
                k->cb(c, reply.error ? errmap_from_name(reply.error) : 0, reply.error, reply.parameters, continues,
                      k->userdata);
        if (!continues)
                free(k);
        vl_reply_done(&reply);
        return 0;
}

static void conn_read(Conn *c) {
        for (unsigned i = 0; i < CONN_READS_PER_CALLBACK; i++) {
                ssize_t n = vl_reader_read(&c->in, c->fd);
                if (n == -EAGAIN)
                        return;
                if (n < 0)
                        return conn_end(c, (int) n);
                if (n == 0)
                        return conn_end(c, -ECONNRESET);

                char *msg;
                size_t len;
                int r;
                while ((r = vl_reader_next(&c->in, &msg, &len)) > 0) {
                        r = conn_dispatch(c, msg, len);
                        if (r < 0)
                                return conn_end(c, r);
                        if (c->ended)
                                return;
                }
                if (r < 0) /* -EMSGSIZE */
                        return conn_end(c, r);
        }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        Conn *c = container_of(w, Conn, io);

        if (conn_forked(c))
                return;
        conn_ref(c);
        if (revents & EV_WRITE) {
                int r = conn_flush(c);
                if (r < 0) {
                        conn_end(c, r);
                        goto finish;
                }
        }
        if (revents & EV_READ)
                conn_read(c);
        if (!c->ended)
                conn_update_io(c);
finish:
        conn_unref(c);
}

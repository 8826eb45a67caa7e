/* SPDX-License-Identifier: MIT */
/* A varlink connection on a libev loop. Replies come in call order, so the pending calls
 * are a FIFO: each reply goes to the head, which stays there while replies say
 * "continues". Writes are buffered and flushed as soon as the socket takes them; a call
 * never waits for the reply of the one before it (pipelining). */

#include <fcntl.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>

#include "conn.h"
#include "gen-internal.h"

#define CONN_MAX_MESSAGE (16u * 1024u * 1024u)
#define CONN_READ_CHUNK 65536u

struct ConnCall {
        Conn *conn;
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

        char *in;
        size_t in_size, in_alloc;
        char *out;
        size_t out_size, out_alloc, out_done;

        ConnCall *calls_head, *calls_tail;
        conn_end_fn end_fn;
        void *end_userdata;
        bool ended;
};

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);

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
        if (c->fd >= 0) {
                events = EV_READ;
                if (c->out_size > c->out_done)
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

int conn_connect(struct ev_loop *loop, const char *address, Conn **ret) {
        struct sockaddr_un sa;
        socklen_t salen;
        int r;

        assert(loop && address && ret);
        r = socket_address(address, &sa, &salen);
        if (r < 0)
                return r;

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* A local socket: connect() answers at once (or fails), so it may block. */
        if (connect(fd, (struct sockaddr *) &sa, salen) < 0)
                return -errno;
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
                return -errno;

        Conn *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *c = (Conn) {
                .n_ref = 1,
                .loop = loop,
                .fd = TAKE_FD(fd),
        };
        ev_io_init(&c->io, conn_io_cb, c->fd, EV_READ);
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

void conn_close(Conn *c) {
        if (!c)
                return;
        conn_stop_io(c);
        c->fd = safe_close(c->fd);
        c->ended = true;
        conn_drop_calls(c);
}

static void conn_free(Conn *c) {
        conn_close(c);
        free(c->in);
        free(c->out);
        free(c);
}

Conn *conn_ref(Conn *c) {
        if (c)
                c->n_ref++;
        return c;
}

Conn *conn_unref(Conn *c) {
        if (c && --c->n_ref == 0)
                conn_free(c);
        return NULL;
}

void conn_set_end_handler(Conn *c, conn_end_fn fn, void *userdata) {
        c->end_fn = fn;
        c->end_userdata = userdata;
}

bool conn_is_open(Conn *c) {
        return c && !c->ended;
}

int conn_get_fd(Conn *c) {
        return c ? c->fd : -EBADF;
}

/* The connection is over: fail what is pending, then tell the owner. */
static void conn_end(Conn *c, int error) {
        if (c->ended)
                return;
        conn_ref(c);
        conn_stop_io(c);
        c->fd = safe_close(c->fd);
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

static int buf_reserve(char **buf, size_t *alloc, size_t need) {
        if (need <= *alloc)
                return 0;
        size_t n = MAX(*alloc * 2, MAX(need, (size_t) 4096));
        char *p = realloc(*buf, n);
        if (!p)
                return -ENOMEM;
        *buf = p;
        *alloc = n;
        return 0;
}

static int conn_flush(Conn *c) {
        while (c->out_done < c->out_size) {
                ssize_t n = send(c->fd, c->out + c->out_done, c->out_size - c->out_done,
                                 MSG_NOSIGNAL | MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return -errno;
                }
                c->out_done += (size_t) n;
        }
        if (c->out_done == c->out_size)
                c->out_done = c->out_size = 0;
        return 0;
}

int conn_call(Conn *c, const char *method, json_object *parameters, unsigned flags, conn_reply_fn cb,
              void *userdata, ConnCall **ret_call) {
        assert(c && method);
        if (c->ended)
                return -ENOTCONN;

        json_object *m = json_object_new_object();
        if (!m)
                return -ENOMEM;
        json_object_object_add(m, "method", json_object_new_string(method));
        json_object_object_add(m, "parameters",
                               parameters ? json_object_get(parameters) : json_object_new_object());
        if (flags & CONN_CALL_ONEWAY)
                json_object_object_add(m, "oneway", json_object_new_boolean(1));
        else if (flags & CONN_CALL_MORE)
                json_object_object_add(m, "more", json_object_new_boolean(1));

        size_t len;
        const char *s = json_object_to_json_string_length(m, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
        ConnCall *k = NULL;
        int r = 0;
        if (!(flags & CONN_CALL_ONEWAY)) {
                k = calloc(1, sizeof(*k));
                if (!k)
                        r = -ENOMEM;
        }
        if (r >= 0)
                r = buf_reserve(&c->out, &c->out_alloc, c->out_size + len + 1);
        if (r < 0) {
                free(k);
                json_object_put(m);
                return r;
        }
        memcpy(c->out + c->out_size, s, len);
        c->out[c->out_size + len] = 0;
        c->out_size += len + 1;
        json_object_put(m);

        if (k) {
                *k = (ConnCall) { .conn = c, .cb = cb, .userdata = userdata };
                if (c->calls_tail)
                        c->calls_tail->next = k;
                else
                        c->calls_head = k;
                c->calls_tail = k;
        }
        if (ret_call)
                *ret_call = k;

        /* Write now if the socket takes it; a failure shows up as EOF on the next read. */
        (void) conn_flush(c);
        conn_update_io(c);
        return 0;
}

void conn_call_cancel(ConnCall *call) {
        if (call)
                call->cb = NULL;
}

int conn_flush_blocking(Conn *c, double timeout) {
        struct timespec start;
        clock_gettime(CLOCK_MONOTONIC, &start);
        while (!c->ended && c->out_done < c->out_size) {
                int r = conn_flush(c);
                if (r < 0)
                        return r;
                if (c->out_done == c->out_size)
                        break;
                struct timespec now;
                clock_gettime(CLOCK_MONOTONIC, &now);
                double left = timeout - ((double) (now.tv_sec - start.tv_sec) +
                                         (double) (now.tv_nsec - start.tv_nsec) / 1e9);
                if (left <= 0)
                        return -ETIMEDOUT;
                struct pollfd p = { .fd = c->fd, .events = POLLOUT };
                if (poll(&p, 1, (int) (left * 1000) + 1) < 0 && errno != EINTR)
                        return -errno;
        }
        return 0;
}

typedef struct ErrorName {
        const char *name;
        int error;
} ErrorName;

/* Kept in step with common/errmap (the daemon's table); unknown names are -EPROTO. */
static const ErrorName error_names[] = {
        { "io.agend.Lease.NoSuchLease", -ENOENT },
        { "io.agend.Lease.NoSuchResource", -ENXIO },
        { "io.agend.Lease.Timeout", -ETIMEDOUT },
        { "io.agend.Lease.PermissionDenied", -EPERM },
        { "io.agend.Lease.LimitExceeded", -EUSERS },
        { "io.agend.Lease.ProtocolError", -EPROTO },
        { "org.varlink.service.InterfaceNotFound", -EOPNOTSUPP },
        { "org.varlink.service.MethodNotFound", -EOPNOTSUPP },
        { "org.varlink.service.MethodNotImplemented", -EOPNOTSUPP },
        { "org.varlink.service.InvalidParameter", -EINVAL },
        { "org.varlink.service.PermissionDenied", -EPERM },
        { "org.varlink.service.ExpectedMore", -EBADMSG },
};

int conn_error_to_errno(const char *error_name) {
        if (!error_name)
                return 0;
        for (size_t i = 0; i < ELEMENTSOF(error_names); i++)
                if (strcmp(error_names[i].name, error_name) == 0)
                        return error_names[i].error;
        return -EPROTO;
}

/* Returns < 0 when the connection must end. */
static int conn_dispatch(Conn *c, const char *msg, size_t len) {
        json_tokener *tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_object *m = json_tokener_parse_ex(tok, msg, (int) len);
        bool ok = m && json_tokener_get_error(tok) == json_tokener_success &&
                  json_object_is_type(m, json_type_object);
        json_tokener_free(tok);
        if (!ok) {
                json_object_put(m);
                return -EBADMSG;
        }

        ConnCall *k = c->calls_head;
        if (!k) {
                /* A reply nobody asked for. */
                json_object_put(m);
                return -EBADMSG;
        }

        json_object *v;
        const char *error = NULL;
        if (json_object_object_get_ex(m, "error", &v) && json_object_is_type(v, json_type_string))
                error = json_object_get_string(v);
        bool continues = json_object_object_get_ex(m, "continues", &v) && json_object_get_boolean(v);
        if (error)
                continues = false;
        json_object *params = NULL;
        if (!json_object_object_get_ex(m, "parameters", &params) || !json_object_is_type(params, json_type_object))
                params = NULL;

        if (!continues) {
                c->calls_head = k->next;
                if (!c->calls_head)
                        c->calls_tail = NULL;
        }
        if (k->cb) {
                int status = error ? conn_error_to_errno(error) : 0;
                json_object *empty = NULL;
                if (!params)
                        params = empty = json_object_new_object();
                k->cb(c, status, error, params, continues, k->userdata);
                json_object_put(empty);
        }
        if (!continues)
                free(k);
        json_object_put(m);
        return 0;
}

static void conn_read(Conn *c) {
        for (;;) {
                int r = buf_reserve(&c->in, &c->in_alloc, c->in_size + CONN_READ_CHUNK);
                if (r < 0)
                        return conn_end(c, r);
                ssize_t n = recv(c->fd, c->in + c->in_size, c->in_alloc - c->in_size, MSG_DONTWAIT);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                return;
                        return conn_end(c, -errno);
                }
                if (n == 0)
                        return conn_end(c, -ECONNRESET);

                size_t scanned = c->in_size;
                c->in_size += (size_t) n;
                size_t start = 0;
                for (;;) {
                        char *z = memchr(c->in + scanned, 0, c->in_size - scanned);
                        if (!z)
                                break;
                        size_t end = (size_t) (z - c->in);
                        r = conn_dispatch(c, c->in + start, end - start);
                        if (r < 0)
                                return conn_end(c, r);
                        if (c->ended)
                                return;
                        start = scanned = end + 1;
                }
                if (start > 0) {
                        memmove(c->in, c->in + start, c->in_size - start);
                        c->in_size -= start;
                }
                if (c->in_size > CONN_MAX_MESSAGE)
                        return conn_end(c, -EMSGSIZE);
                if ((size_t) n < CONN_READ_CHUNK)
                        return;
        }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        Conn *c = container_of(w, Conn, io);

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

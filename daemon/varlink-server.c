/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "hashmap.h"
#include "json-util.h"
#include "vl-scan.h"
#include "log.h"
#include "list.h"
#include "macro.h"
#include "varlink-server.h"

#define LISTEN_MAX 4
/* How long the listener stays stopped at EMFILE when no connection closes meanwhile
 * (another part of the daemon may free descriptors). */
#define ACCEPT_RETRY_SEC 1.0
/* How long a connection to be closed may wait for its last words (an error saying why) to
 * be written, at least: the client timeout if longer. A peer that does not read does not
 * keep its descriptor longer; its queued output was dropped, so it costs little. */
#define CLOSE_LINGER_USEC (5 * USEC_PER_SEC)

typedef struct UidStat {
        char key[HASHMAP_UID_KEY_SIZE]; /* first: the uid in decimal, the key (hashmap_uid_entry()) */
        unsigned connections;
        size_t output;          /* queued output bytes of its connections */
} UidStat;

/* Queued output that is not in the connection's VlWriter: a shared message (one event for
 * many subscribers, serialized once) or, once such a message is queued, the private ones
 * behind it, so that order is kept. */
/* Chunks handed to one sendmsg() at most. */
#define OUT_IOV_MAX 64

typedef struct OutChunk {
        VarlinkBuf *buf;
        size_t off;             /* bytes of buf already written */
        struct OutChunk *next;
} OutChunk;

struct VarlinkBuf {
        unsigned n_ref;
        size_t len;             /* with the NUL */
        char data[];
};

typedef struct Method {
        char *name;
        VarlinkParamsFn fn;
        void *userdata;
} Method;

struct VarlinkConn {
        VarlinkServer *server;
        int fd;
        ev_io io;
        ev_timer timer;
        VlReader in;
        VlWriter out;           /* written first */
        OutChunk *chunks, *chunks_tail; /* then these */
        size_t chunks_bytes;    /* unwritten bytes in chunks */
        uid_t uid;
        UidStat *stat;
        void *userdata;
        usec_t created;
        usec_t partial_since;   /* CLOCK_MONOTONIC when the message in progress began; 0 = none */
        usec_t close_deadline;  /* with close_now: closed by then even if output remains */
        size_t out_accounted;   /* output bytes counted in stat and the server's total */
        /* The pipelined commit holds output (varlink_server_hold_output()): offsets in the
         * stream of bytes ever queued, of which `consumed` are written or discarded (so the
         * stream's end is consumed + out_pending()). Bytes before release_upto may be
         * written; seal_upto ends the batch whose commit is in flight. */
        uint64_t consumed, release_upto, seal_upto;
        unsigned turn_iteration; /* ev_iteration() of its last turn, and the calls handled in it */
        unsigned turn_calls;

        bool accepted;          /* connect() said yes: disconnect() is owed */
        bool in_call, more, oneway;
        bool dispatching;       /* inside conn_dispatch(): a call that ends does not re-queue */
        bool sent_call;         /* a whole call arrived once */
        bool eof;               /* the peer shut down its side: close when all is answered */
        bool close_now;         /* close after one more write attempt (error queued, dropped) */
        bool dead;              /* writing failed */
        bool freeing;           /* in conn_free(): replies go nowhere */

        bool is_dirty, is_pending, is_deferred, is_gone, is_held;
        VarlinkConn *prev, *next;
        /* On the server's held list: output queued while holding that may not all be
         * released yet. Doubly linked: a connection leaves it in O(1) when freed. */
        LIST_FIELDS(VarlinkConn, held);
        VarlinkConn *dirty_next, *pending_next, *deferred_next;
        /* Its own link for the list of connections to close: closing one can end a call of
         * another (a grant), which puts that one on the dirty list; a shared link would cut
         * this list and leak every connection after it. */
        VarlinkConn *gone_next;
};

struct VarlinkServer {
        struct ev_loop *loop;
        VarlinkServerOptions opts;
        VarlinkServerCallbacks cb;
        void *userdata;
        VarlinkServerLimits limits;

        int listen_fd[LISTEN_MAX];
        ev_io listen_io[LISTEN_MAX];
        size_t n_listen;
        bool started;
        bool accept_paused;     /* stopped at EMFILE until a descriptor is freed */
        bool accept_logged;     /* the current EMFILE episode was logged */
        ev_timer accept_retry;

        ev_check check;         /* deferred → pending, once per loop iteration */
        ev_idle idle;           /* keeps the loop from blocking while calls are deferred */

        Method *methods;
        size_t n_methods;

        VarlinkConn *conns;
        unsigned n_conns;
        bool hold;              /* output waits for varlink_server_release() */
        VarlinkConn *held;      /* connections whose output may not all be released */
        int peek_fd;            /* epoll set of every connection and listener (input_waiting) */
        size_t output_total;
        Hashmap uids;           /* uid → UidStat */
        VarlinkConn *dirty;     /* output to flush, or to close */
        VarlinkConn *pending;   /* whole calls may be waiting and the connection is free for them */
        VarlinkConn *deferred;  /* had its turn this iteration; continues in the next */
        json_tokener *parser;   /* reused for every call (calls are parsed one at a time) */
        VlScanner scanner;      /* the same, without a tree (common/vl-scan.h) */
        bool scanner_busy;      /* a call read with it is being handled */
};

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents);
static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents);
static void conn_dispatch(VarlinkConn *c);
static void conn_update_io(VarlinkConn *c);

static void conn_arm_timer(VarlinkConn *c);

static void set_close_now(VarlinkConn *c) {
        if (c->close_now)
                return;
        c->close_now = true;
        c->close_deadline = usec_now(CLOCK_MONOTONIC) + MAX(c->server->limits.client_timeout, CLOSE_LINGER_USEC);
        conn_arm_timer(c);
}

/* ---- shared output ---- */

int varlink_buf_new(const char *msg, size_t len, VarlinkBuf **ret) {
        assert_return(msg || len == 0, -EINVAL);
        assert_return(ret, -EINVAL);
        if (len > SIZE_MAX - sizeof(VarlinkBuf) - 1)
                return -ENOMEM;
        VarlinkBuf *b = malloc(sizeof(*b) + len + 1);
        if (!b)
                return -ENOMEM;
        b->n_ref = 1;
        b->len = len + 1;
        memcpy(b->data, msg, len);
        b->data[len] = 0;
        *ret = b;
        return 0;
}

VarlinkBuf *varlink_buf_ref(VarlinkBuf *b) {
        if (b)
                b->n_ref++;
        return b;
}

VarlinkBuf *varlink_buf_unref(VarlinkBuf *b) {
        if (b && --b->n_ref == 0)
                free(b);
        return NULL;
}

static size_t out_pending(const VarlinkConn *c) {
        return vl_writer_pending(&c->out) + c->chunks_bytes;
}

static int chunk_append(VarlinkConn *c, VarlinkBuf *b) {
        OutChunk *k = malloc(sizeof(*k));
        if (!k)
                return -ENOMEM;
        *k = (OutChunk) { .buf = varlink_buf_ref(b) };
        if (c->chunks_tail)
                c->chunks_tail->next = k;
        else
                c->chunks = k;
        c->chunks_tail = k;
        c->chunks_bytes += b->len;
        return 0;
}

static void chunk_pop(VarlinkConn *c) {
        OutChunk *k = c->chunks;
        c->chunks = k->next;
        if (!c->chunks)
                c->chunks_tail = NULL;
        c->chunks_bytes -= k->buf->len - k->off;
        varlink_buf_unref(k->buf);
        free(k);
}

/* Queued bytes that may be written now. */
static size_t out_releasable(const VarlinkConn *c) {
        size_t n = out_pending(c);
        if (!c->server->hold)
                return n;
        uint64_t r = c->release_upto > c->consumed ? c->release_upto - c->consumed : 0;
        return (size_t) MIN((uint64_t) n, r);
}

/* Writes the VlWriter, then the chunks, until all that may go is out or the socket is full. */
static int out_write(VarlinkConn *c) {
        size_t limit = out_releasable(c);
        size_t before = vl_writer_pending(&c->out);
        if (before > 0 && limit > 0) {
                int k = vl_writer_flush_some(&c->out, c->fd, limit);
                size_t n = before - vl_writer_pending(&c->out);
                c->consumed += n;
                limit -= n;
                if (k < 0)
                        return k;
        }
        /* Shared chunks (Watch events) go out many per sendmsg(): a subscriber that has
         * fallen behind has many small events queued, and one system call per event was
         * what kept 64 subscribers from keeping up (docs/performance.md, Watch fan-out). */
        while (c->chunks && limit > 0 && vl_writer_pending(&c->out) == 0) {
                struct iovec iov[OUT_IOV_MAX];
                size_t n_iov = 0, want = 0;
                for (OutChunk *k = c->chunks; k && n_iov < OUT_IOV_MAX && want < limit; k = k->next) {
                        size_t l = MIN(k->buf->len - k->off, limit - want);
                        iov[n_iov++] = (struct iovec) { .iov_base = k->buf->data + k->off, .iov_len = l };
                        want += l;
                }
                struct msghdr mh = { .msg_iov = iov, .msg_iovlen = n_iov };
                ssize_t l = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (l < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
                }
                c->chunks_bytes -= (size_t) l;
                c->consumed += (size_t) l;
                limit -= (size_t) l;
                for (size_t sent = (size_t) l; sent > 0 || (c->chunks && c->chunks->off == c->chunks->buf->len);) {
                        OutChunk *k = c->chunks;
                        size_t step = MIN(k->buf->len - k->off, sent);
                        k->off += step;
                        sent -= step;
                        if (k->off < k->buf->len)
                                break;
                        c->chunks = k->next;
                        if (!c->chunks)
                                c->chunks_tail = NULL;
                        varlink_buf_unref(k->buf);
                        free(k);
                }
                if ((size_t) l < want)
                        break;  /* the socket is full */
        }
        return 0;
}

/* Drops queued messages not written yet, except the rest of one partly written. */
static void out_discard(VarlinkConn *c) {
        size_t before = out_pending(c);
        vl_writer_discard(&c->out);
        bool keep_head = vl_writer_pending(&c->out) == 0 && c->chunks && c->chunks->off > 0;
        OutChunk *head = keep_head ? c->chunks : NULL;
        if (head) {
                c->chunks = head->next;
                c->chunks_bytes -= head->buf->len - head->off;
        }
        while (c->chunks)
                chunk_pop(c);
        if (head) {
                head->next = NULL;
                c->chunks = c->chunks_tail = head;
                c->chunks_bytes = head->buf->len - head->off;
        }
        c->consumed += before - out_pending(c);
}

/* Queues one message (without its NUL), behind everything queued before. */
static int out_append(VarlinkConn *c, const char *p, size_t n) {
        if (!c->chunks)
                return vl_writer_append_raw(&c->out, p, n);
        VarlinkBuf *b;
        int k = varlink_buf_new(p, n, &b);
        if (k < 0)
                return k;
        k = chunk_append(c, b);
        varlink_buf_unref(b);
        return k;
}

static int out_append_json(VarlinkConn *c, json_object *o) {
        size_t n;
        const char *p = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE,
                                                          &n);
        if (!p)
                return -ENOMEM;
        return out_append(c, p, n);
}

static void out_done(VarlinkConn *c) {
        while (c->chunks)
                chunk_pop(c);
        vl_writer_done(&c->out);
}

/* ---- per-uid accounting ---- */

static UidStat *uid_stat(VarlinkServer *s, uid_t uid) {
        return hashmap_uid_entry(&s->uids, uid, sizeof(UidStat), true);
}

static void uid_stat_maybe_free(VarlinkServer *s, UidStat *u) {
        if (!u || u->connections > 0 || u->output > 0)
                return;
        hashmap_remove(&s->uids, u->key);
        free(u);
}

static void account(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        size_t now = out_pending(c);
        s->output_total = s->output_total - c->out_accounted + now;
        if (c->stat)
                c->stat->output = c->stat->output - c->out_accounted + now;
        c->out_accounted = now;
}

/* ---- lists ---- */

static void held_add(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        if (c->is_held)
                return;
        c->is_held = true;
        LIST_PREPEND(held, s->held, c);
}

static void held_remove(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        if (!c->is_held)
                return;
        LIST_REMOVE(held, s->held, c);
        c->is_held = false;
}

/* Every path that queues output marks the connection dirty: while output is held, that is
 * also where it joins the held list, so that seal() and release() visit only connections
 * with output, not every connection. */
static void mark_dirty(VarlinkConn *c) {
        if (c->freeing)
                return;
        if (c->server->hold)
                held_add(c);
        if (c->is_dirty)
                return;
        c->is_dirty = true;
        c->dirty_next = c->server->dirty;
        c->server->dirty = c;
}

static void mark_pending(VarlinkConn *c) {
        if (c->is_pending || c->freeing)
                return;
        c->is_pending = true;
        c->pending_next = c->server->pending;
        c->server->pending = c;
}

static void defer(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        if (c->is_deferred)
                return;
        c->is_deferred = true;
        c->deferred_next = s->deferred;
        s->deferred = c;
        ev_check_start(s->loop, &s->check);
        ev_idle_start(s->loop, &s->idle);
}

#define UNLINK(head, c, flag, link)                                                     \
        do {                                                                            \
                if ((c)->flag) {                                                        \
                        for (VarlinkConn **_p = &(head); *_p; _p = &(*_p)->link)        \
                                if (*_p == (c)) {                                       \
                                        *_p = (c)->link;                                \
                                        break;                                          \
                                }                                                       \
                        (c)->flag = false;                                              \
                        (c)->link = NULL;                                               \
                }                                                                       \
        } while (0)

static void check_cb(struct ev_loop *loop, ev_check *w, int revents) {
        VarlinkServer *s = container_of(w, VarlinkServer, check);
        while (s->deferred) {
                VarlinkConn *c = s->deferred;
                s->deferred = c->deferred_next;
                c->deferred_next = NULL;
                c->is_deferred = false;
                mark_pending(c);
                conn_update_io(c);
        }
        ev_check_stop(loop, &s->check);
        ev_idle_stop(loop, &s->idle);
}

static void idle_cb(struct ev_loop *loop, ev_idle *w, int revents) {
        /* Nothing: while it is active the loop polls without blocking, so deferred calls
         * get their turn in the next iteration even when no descriptor is ready. */
}

/* ---- connections ---- */

static void accept_resume(VarlinkServer *s) {
        if (!s->accept_paused)
                return;
        s->accept_paused = false;
        ev_timer_stop(s->loop, &s->accept_retry);
        if (s->started)
                for (size_t i = 0; i < s->n_listen; i++)
                        ev_io_start(s->loop, &s->listen_io[i]);
}

static void conn_free(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        c->freeing = true;
        if (c->accepted && s->cb.disconnect)
                s->cb.disconnect(s, c, s->userdata);
        UNLINK(s->dirty, c, is_dirty, dirty_next);
        held_remove(c);
        UNLINK(s->pending, c, is_pending, pending_next);
        UNLINK(s->deferred, c, is_deferred, deferred_next);
        if (c->prev)
                c->prev->next = c->next;
        else if (s->conns == c)
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        if (c->accepted)
                s->n_conns--;
        out_done(c);
        account(c);
        if (c->stat) {
                if (c->accepted)
                        c->stat->connections--;
                uid_stat_maybe_free(s, c->stat);
        }
        ev_io_stop(s->loop, &c->io);
        ev_timer_stop(s->loop, &c->timer);
        if (s->peek_fd >= 0 && c->fd >= 0)
                (void) epoll_ctl(s->peek_fd, EPOLL_CTL_DEL, c->fd, NULL);
        safe_close(c->fd);
        vl_reader_done(&c->in);
        free(c);
        /* A descriptor is free again: a listener stopped at EMFILE may accept. */
        accept_resume(s);
}

static void conn_update_io(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        size_t out = out_pending(c);
        int events = 0;
        /* Not read while its output is above the high-water mark (it would only make more)
         * or while its calls wait for their turn; read otherwise, also during a call in
         * progress, so that a hang-up is seen at once. */
        if (!c->eof && !c->close_now && !c->dead && !c->is_deferred && out <= s->limits.output_high_water)
                events |= EV_READ;
        if (out_releasable(c) > 0 && !c->dead && !c->is_dirty)
                events |= EV_WRITE;
        if ((c->io.events & (EV_READ | EV_WRITE)) == events && ev_is_active(&c->io) == (events != 0))
                return;
        ev_io_stop(s->loop, &c->io);
        ev_io_set(&c->io, c->fd, events);
        if (events)
                ev_io_start(s->loop, &c->io);
}

static void conn_arm_timer(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        usec_t t = s->limits.client_timeout, deadline = USEC_INFINITY;
        if (c->close_now && !c->dead) {
                usec_t now = usec_now(CLOCK_MONOTONIC);
                ev_timer_stop(s->loop, &c->timer);
                ev_timer_set(&c->timer, c->close_deadline > now ? usec_to_sec(c->close_deadline - now) : 0.0, 0.0);
                ev_timer_start(s->loop, &c->timer);
                return;
        }
        if (t == 0 || c->dead) {
                ev_timer_stop(s->loop, &c->timer);
                return;
        }
        if (c->partial_since > 0)
                deadline = c->partial_since + t;
        if (!c->sent_call && !c->in_call)
                deadline = MIN(deadline, c->created + t);
        if (deadline == USEC_INFINITY) {
                ev_timer_stop(s->loop, &c->timer);
                return;
        }
        usec_t now = usec_now(CLOCK_MONOTONIC);
        ev_timer_stop(s->loop, &c->timer);
        ev_timer_set(&c->timer, deadline > now ? usec_to_sec(deadline - now) : 0.0, 0.0);
        ev_timer_start(s->loop, &c->timer);
}

/* A descriptor the peek set does not watch would make input_waiting() wrong: without the
 * set, the server always says input may be waiting. */
static void peek_add(VarlinkServer *s, int fd) {
        if (s->peek_fd < 0)
                return;
        struct epoll_event e = { .events = EPOLLIN };
        if (epoll_ctl(s->peek_fd, EPOLL_CTL_ADD, fd, &e) < 0)
                s->peek_fd = safe_close(s->peek_fd);
}

static int conn_new(VarlinkServer *s, int fd, VarlinkConn **ret) {
        VarlinkConn *c = calloc(1, sizeof(*c));
        if (!c) {
                safe_close(fd);
                return -ENOMEM;
        }
        c->server = s;
        c->fd = fd;
        c->created = usec_now(CLOCK_MONOTONIC);
        vl_reader_init(&c->in, s->limits.max_message_size);
        vl_writer_init(&c->out);
        ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
        ev_init(&c->timer, conn_timer_cb);
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                int k = -errno;
                safe_close(fd);
                free(c);
                return k;
        }
        c->uid = cred.uid;
        c->stat = uid_stat(s, c->uid);
        if (!c->stat) {
                safe_close(fd);
                free(c);
                return -ENOMEM;
        }
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        peek_add(s, fd);
        *ret = c;
        return 0;
}

static int add_connection(VarlinkServer *s, int fd, bool check_limit, VarlinkConn **ret) {
        VarlinkConn *c = NULL;
        int k = conn_new(s, fd, &c);
        if (k < 0)
                return k;
        unsigned max = s->limits.max_connections_per_uid;
        if (check_limit && c->uid != 0 && max > 0 && c->stat->connections >= max) {
                /* Answered and closed at the next flush; never counted, never seen by the
                 * owner. */
                c->in_call = true;
                c->dispatching = true;  /* no turn for its calls: it is closed after this */
                varlink_conn_error_reason(c, s->opts.error_limit, "too many connections for this user", "limit",
                                          "connections");
                set_close_now(c);
                mark_dirty(c);
                return -EUSERS;
        }
        c->accepted = true;
        c->stat->connections++;
        s->n_conns++;
        if (s->cb.connect) {
                k = s->cb.connect(s, c, s->userdata);
                if (k < 0) {
                        c->accepted = false;
                        c->stat->connections--;
                        s->n_conns--;
                        conn_free(c);
                        return k;
                }
        }
        conn_update_io(c);
        conn_arm_timer(c);
        if (ret)
                *ret = c;
        return 0;
}

int varlink_server_add_connection(VarlinkServer *s, int fd, VarlinkConn **ret) {
        assert_return(s, -EINVAL);
        assert_return(fd >= 0, -EBADF);
        return add_connection(s, fd, false, ret);
}

/* ---- output ---- */

static VarlinkConn *biggest_output(VarlinkServer *s, const UidStat *only) {
        VarlinkConn *best = NULL;
        for (VarlinkConn *c = s->conns; c; c = c->next) {
                if (c->close_now || c->dead || c->freeing || (only && c->stat != only))
                        continue;
                if (!best || out_pending(c) > out_pending(best))
                        best = c;
        }
        return best;
}

/* The connection does not read what it asked for: what it has not received is dropped,
 * it gets an error saying why (if its buffer has room for it) and is closed. */
/* Writes {"error": error, "parameters": {"reason": reason, key: value}} into w (a writer on
 * the caller's stack: an error reply fits its inline buffer, so it can be written when
 * memory is short). key NULL: reason alone. */
static int error_write(JsonWriter *w, const char *error, const char *reason, const char *key, const char *value) {
        jw_init(w);
        jw_object_begin(w, NULL);
        jw_string(w, "error", error);
        jw_object_begin(w, "parameters");
        jw_string(w, "reason", strempty(reason));
        if (key)
                jw_string(w, key, strempty(value));
        jw_object_end(w);
        jw_object_end(w);
        return jw_finish(w);
}

static void drop(VarlinkConn *c, const char *scope, size_t limit) {
        VarlinkServer *s = c->server;
        char reason[200];
        snprintf(reason, sizeof(reason),
                 "the client does not read its replies: more than %zu bytes queued %s; disconnected", limit,
                 scope);
        log_info("dropping a connection of uid %u: %s", (unsigned) c->uid, reason);
        out_discard(c);
        _cleanup_(jw_done) JsonWriter w;
        if (error_write(&w, s->opts.error_limit, reason, "limit", "output") >= 0)
                (void) out_append(c, w.buf, w.len);
        set_close_now(c);
        account(c);
        mark_dirty(c);
}

static void enforce_output(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        const VarlinkServerLimits *l = &s->limits;
        if (l->max_output_per_conn > 0 && out_pending(c) > l->max_output_per_conn && !c->close_now)
                drop(c, "on this connection", l->max_output_per_conn);
        while (l->max_output_per_uid > 0 && c->stat && c->stat->output > l->max_output_per_uid) {
                VarlinkConn *v = biggest_output(s, c->stat);
                if (!v)
                        break;
                drop(v, "for this user", l->max_output_per_uid);
        }
        while (l->max_output_total > 0 && s->output_total > l->max_output_total) {
                VarlinkConn *v = biggest_output(s, NULL);
                if (!v)
                        break;
                drop(v, "in total", l->max_output_total);
        }
}

static void end_call(VarlinkConn *c) {
        c->in_call = c->more = c->oneway = false;
        if (!c->dispatching)
                mark_pending(c);
}

static int queue(VarlinkConn *c, json_object *msg, const char *raw, size_t raw_len, VarlinkBuf *shared,
                 bool continues) {
        bool silent = c->oneway;
        if (c->in_call && !continues)
                end_call(c);
        if (silent || c->freeing || c->close_now || c->dead) {
                json_object_put(msg);
                return 0;
        }
        int k;
        if (shared)
                k = chunk_append(c, shared);
        else if (raw)
                k = out_append(c, raw, raw_len);
        else if (msg)
                k = out_append_json(c, msg);
        else
                k = -ENOMEM;
        json_object_put(msg);
        if (k < 0) {
                /* The client would wait for ever for this reply. */
                c->dead = true;
                mark_dirty(c);
                return k;
        }
        account(c);
        mark_dirty(c);
        enforce_output(c);
        return 0;
}

int varlink_conn_reply(VarlinkConn *c, json_object *parameters, bool continues) {
        assert(c);
        if (c->oneway) {
                json_object_put(parameters);
                return queue(c, NULL, NULL, 0, NULL, continues);
        }
        return queue(c, vl_reply_new(parameters, continues), NULL, 0, NULL, continues);
}

int varlink_conn_error(VarlinkConn *c, const char *error, json_object *parameters) {
        assert(c);
        if (c->oneway) {
                json_object_put(parameters);
                return queue(c, NULL, NULL, 0, NULL, false);
        }
        return queue(c, vl_error_new(error, parameters), NULL, 0, NULL, false);
}

int varlink_conn_error_reason(VarlinkConn *c, const char *error, const char *reason, const char *key,
                              const char *value) {
        assert(c);
        if (c->oneway)
                return queue(c, NULL, NULL, 0, NULL, false);
        _cleanup_(jw_done) JsonWriter w;
        if (error_write(&w, error, reason, key, value) < 0)
                return queue(c, NULL, NULL, 0, NULL, false);    /* -ENOMEM: closes */
        return queue(c, NULL, w.buf, w.len, NULL, false);
}

void varlink_reply_begin(JsonWriter *w) {
        jw_reset(w);
        jw_object_begin(w, NULL);
        jw_object_begin(w, "parameters");
}

int varlink_reply_end(JsonWriter *w, bool continues) {
        jw_object_end(w);
        if (continues)
                jw_bool(w, "continues", true);
        jw_object_end(w);
        return jw_finish(w);
}

int varlink_conn_reply_end(VarlinkConn *c, JsonWriter *w, bool continues) {
        assert(c);
        assert(w);
        int k = varlink_reply_end(w, continues);
        if (k >= 0)
                return queue(c, NULL, w->buf, w->len, NULL, continues);
        return varlink_conn_reply_failed(c, k, continues);
}

int varlink_conn_reply_failed(VarlinkConn *c, int error, bool continues) {
        assert(c);
        log_warning("cannot write a reply to a connection of uid %u: %s", (unsigned) c->uid, strerror(-error));
        if (c->oneway)
                return queue(c, NULL, NULL, 0, NULL, false);
        (void) varlink_conn_error_reason(c, c->server->opts.error_limit,
                                         "out of memory: the reply could not be written", "limit", "memory");
        if (continues)
                varlink_conn_close(c);
        return error;
}

int varlink_conn_reply_serialized(VarlinkConn *c, const char *msg, size_t len, bool continues) {
        assert(c);
        assert(msg);
        return queue(c, NULL, msg, len, NULL, continues);
}

int varlink_conn_reply_shared(VarlinkConn *c, VarlinkBuf *msg, bool continues) {
        assert(c);
        assert(msg);
        return queue(c, NULL, NULL, 0, msg, continues);
}

void varlink_conn_protocol_error(VarlinkConn *c, const char *reason) {
        VarlinkServer *s = c->server;
        log_debug("closing a connection of uid %u: %s", (unsigned) c->uid, reason);
        if (!c->close_now && !c->dead && !c->freeing) {
                _cleanup_(jw_done) JsonWriter w;
                if (error_write(&w, s->opts.error_protocol, reason, NULL, NULL) >= 0 &&
                    out_append(c, w.buf, w.len) >= 0)
                        account(c);
        }
        set_close_now(c);
        mark_dirty(c);
        conn_update_io(c);
}

void varlink_conn_close(VarlinkConn *c) {
        set_close_now(c);
        mark_dirty(c);
        conn_update_io(c);
}

/* ---- input ---- */

static const Method *method_find(VarlinkServer *s, const char *name) {
        for (size_t i = 0; i < s->n_methods; i++)
                if (strcmp(s->methods[i].name, name) == 0)
                        return &s->methods[i];
        return NULL;
}

static bool interface_known(VarlinkServer *s, const char *method, size_t n) {
        for (size_t i = 0; i < s->n_methods; i++) {
                const char *dot = strrchr(s->methods[i].name, '.');
                if ((size_t) (dot - s->methods[i].name) == n && strncmp(s->methods[i].name, method, n) == 0)
                        return true;
        }
        return false;
}

static void call_dispatch(VarlinkConn *c, const VlScannedCall *sc) {
        VarlinkServer *s = c->server;
        const Method *m = method_find(s, sc->method);
        if (m)
                return m->fn(c, sc->parameters, m->userdata);
        const char *dot = strrchr(sc->method, '.');
        size_t n = (size_t) (dot - sc->method);
        if (interface_known(s, sc->method, n))
                varlink_conn_error_reason(c, "org.varlink.service.MethodNotFound", "no such method", "method",
                                          sc->method);
        else {
                char iface[256];
                snprintf(iface, sizeof(iface), "%.*s", (int) MIN(n, sizeof(iface) - 1), sc->method);
                varlink_conn_error_reason(c, "org.varlink.service.InterfaceNotFound", "no such interface",
                                          "interface", iface);
        }
}

static void conn_track_partial(VarlinkConn *c) {
        if (vl_reader_partial(&c->in) == 0)
                c->partial_since = 0;
        else if (c->partial_since == 0)
                c->partial_since = usec_now(CLOCK_MONOTONIC);
}

/* Handles the whole calls held, one at a time, while the connection is free for them, its
 * output is below the high-water mark and it has calls left in this turn. */
static void conn_dispatch(VarlinkConn *c) {
        VarlinkServer *s = c->server;
        char reason[160];
        unsigned iteration = ev_iteration(s->loop);
        if (c->turn_iteration != iteration) {
                c->turn_iteration = iteration;
                c->turn_calls = 0;
        }

        c->dispatching = true;
        while (!c->in_call && !c->close_now && !c->dead && !c->freeing) {
                if (out_pending(c) > s->limits.output_high_water)
                        break;          /* resumed by the flush that drains it */
                if (c->turn_calls >= VARLINK_CALLS_PER_TURN) {
                        /* The others' turn; this one goes on in the next iteration. */
                        if (vl_reader_has_message(&c->in))
                                defer(c);
                        break;
                }
                char *msg;
                size_t len;
                int k = vl_reader_next(&c->in, &msg, &len);
                if (k == 0)
                        break;
                if (k == -EMSGSIZE) {
                        snprintf(reason, sizeof(reason), "message exceeds the limit of %zu bytes",
                                 c->in.max_message);
                        varlink_conn_protocol_error(c, reason);
                        break;
                }
                /* The usual call is read by the scanner into a reused list; what it does
                 * not judge (and every bad message) is parsed by json-c, as before. A call
                 * handled inside another's handler (none does today) gets its own list. */
                VlScanner nested = {}, *scanner = s->scanner_busy ? &nested : &s->scanner;
                VlScannedCall sc;
                VlCall call = {};
                k = vl_scan_call(scanner, msg, len, &sc);
                if (k == 0) {
                        k = vl_call_parse_with(s->parser, msg, len, &call);
                        if (k >= 0)
                                k = vl_scan_call_from_json(scanner, &call, &sc);
                }
                if (k == -EBADMSG) {
                        vl_scanner_done(&nested);
                        varlink_conn_protocol_error(c, "the message is not a valid JSON object");
                        break;
                }
                if (k < 0) {
                        vl_call_done(&call);
                        vl_scanner_done(&nested);
                        varlink_conn_protocol_error(c, k == -ENOMEM
                                                               ? "out of memory"
                                                               : "not a varlink call (needs a \"method\" string "
                                                                 "\"interface.Method\", object \"parameters\", "
                                                                 "boolean \"more\"/\"oneway\"; \"upgrade\" is not "
                                                                 "supported)");
                        break;
                }
                c->turn_calls++;
                c->sent_call = true;
                c->in_call = true;
                c->more = sc.more;
                c->oneway = sc.oneway;
                bool busy = s->scanner_busy;
                s->scanner_busy = true;
                call_dispatch(c, &sc);
                s->scanner_busy = busy;
                vl_call_done(&call);
                vl_scanner_done(&nested);
        }
        c->dispatching = false;

        /* A message over the limit is an error whenever it comes: behind a call in progress
         * (a Watch, a wait) it would otherwise be read a byte at a time (the reader's
         * bound) until the unanswered-input bound, a busy loop. */
        if (c->in_call && !c->close_now && !c->dead && vl_reader_partial(&c->in) > c->in.max_message) {
                snprintf(reason, sizeof(reason), "message exceeds the limit of %zu bytes", c->in.max_message);
                varlink_conn_protocol_error(c, reason);
        }
        if (!c->close_now && !c->dead && vl_reader_pending(&c->in) > s->limits.max_unanswered_input &&
            s->limits.max_unanswered_input > 0) {
                snprintf(reason, sizeof(reason), "more than %zu bytes of unanswered input",
                         s->limits.max_unanswered_input);
                varlink_conn_protocol_error(c, reason);
        }
        conn_track_partial(c);
        vl_reader_shrink(&c->in);
        if (c->eof)
                mark_dirty(c);  /* the flush closes it once everything is answered */
        conn_update_io(c);
        conn_arm_timer(c);
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        VarlinkConn *c = container_of(w, VarlinkConn, io);

        if (revents & EV_WRITE) {
                /* Written by the flush after the commit, never from here. */
                mark_dirty(c);
                conn_update_io(c);
        }
        if (!(revents & EV_READ))
                return;
        /* A few reads per wake-up, so one flooding client does not starve the others. */
        for (int i = 0; i < 4 && (c->io.events & EV_READ); i++) {
                ssize_t n = vl_reader_read(&c->in, c->fd);
                if (n == -EAGAIN)
                        break;
                if (n <= 0) {
                        /* End of input. A peer that only half-closed after its calls
                         * (printf ... | socat) still gets the replies to the calls it sent;
                         * the flush closes once they are out. A hang-up with a call in
                         * progress (a wait, a stream), or an error, closes at once. */
                        if (n == 0 && !c->in_call && !c->close_now && !c->dead) {
                                c->eof = true;
                                conn_dispatch(c);
                                return;
                        }
                        conn_free(c);
                        return;
                }
                conn_dispatch(c);
                /* A short read emptied the socket: the next read would only say EAGAIN
                 * (half of all reads under load). Level-triggered, so anything that
                 * arrives meanwhile wakes us again. */
                if (c->in.drained)
                        break;
        }
}

static void conn_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        VarlinkConn *c = container_of(w, VarlinkConn, timer);
        VarlinkServer *s = c->server;
        usec_t now = usec_now(CLOCK_MONOTONIC), t = s->limits.client_timeout;
        if (c->close_now) {
                mark_dirty(c);  /* the flush closes it: its time to linger is up */
                return;
        }
        if (t > 0 && c->partial_since > 0 && now >= c->partial_since + t) {
                char reason[160];
                snprintf(reason, sizeof(reason), "an incomplete message was held for more than %.1f s",
                         usec_to_sec(t));
                varlink_conn_protocol_error(c, reason);
                return;
        }
        if (t > 0 && !c->sent_call && !c->in_call && vl_reader_pending(&c->in) == 0 && now >= c->created + t &&
            (!s->cb.may_time_out || s->cb.may_time_out(c, s->userdata))) {
                log_debug("closing a connection of uid %u that sent no call in %.1f s", (unsigned) c->uid,
                          usec_to_sec(t));
                varlink_conn_close(c);
                return;
        }
        if (!c->sent_call && now >= c->created + t)
                c->sent_call = true;    /* kept by the owner: no more checks */
        conn_arm_timer(c);
}

/* ---- the server ---- */

static void accept_pause(VarlinkServer *s, int error) {
        for (size_t i = 0; i < s->n_listen; i++)
                ev_io_stop(s->loop, &s->listen_io[i]);
        s->accept_paused = true;
        if (!s->accept_logged) {
                log_warning_errno(error,
                                  "cannot accept connections: %m; waiting until a connection closes "
                                  "(%u open; raise LimitNOFILE= if this is normal load)",
                                  s->n_conns);
                s->accept_logged = true;
        }
        ev_timer_stop(s->loop, &s->accept_retry);
        ev_timer_set(&s->accept_retry, ACCEPT_RETRY_SEC, 0.0);
        ev_timer_start(s->loop, &s->accept_retry);
}

static void accept_retry_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        accept_resume(container_of(w, VarlinkServer, accept_retry));
}

static void accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
        VarlinkServer *s = w->data;
        for (int i = 0; i < 64; i++) {
                int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (fd < 0) {
                        int e = errno;
                        if (e == EAGAIN || e == EINTR || e == ECONNABORTED)
                                return;
                        if (e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM) {
                                /* The connection stays in the backlog. Polling the listener
                                 * now would wake us at once, again and again. */
                                accept_pause(s, -e);
                                return;
                        }
                        log_warning_errno(-e, "cannot accept a connection: %m");
                        return;
                }
                int k = add_connection(s, fd, true, NULL);
                if (k == -EMFILE || k == -ENFILE) {
                        /* Accepted, but identifying the peer needed one more descriptor:
                         * the same episode as above, and the same cure. */
                        accept_pause(s, k);
                        return;
                }
                if (s->accept_logged) {
                        log_info("accepting connections again");
                        s->accept_logged = false;
                }
                if (k < 0 && k != -EUSERS)
                        log_warning_errno(k, "cannot set up a connection: %m");
        }
}

int varlink_server_new(struct ev_loop *loop, const VarlinkServerOptions *opts, const VarlinkServerCallbacks *cb,
                       void *userdata, VarlinkServer **ret) {
        assert_return(loop, -EINVAL);
        assert_return(opts && opts->error_protocol && opts->error_limit, -EINVAL);
        assert_return(ret, -EINVAL);
        VarlinkServer *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->parser = json_parser_new();
        if (!s->parser) {
                free(s);
                return -ENOMEM;
        }
        s->loop = loop;
        s->opts = *opts;
        if (cb)
                s->cb = *cb;
        s->userdata = userdata;
        s->limits = (VarlinkServerLimits) {
                .max_message_size = VL_MESSAGE_SIZE_DEFAULT,
                .max_unanswered_input = 4 * VL_MESSAGE_SIZE_DEFAULT,
                .output_high_water = VARLINK_OUTPUT_HIGH_WATER,
                .max_output_per_conn = VARLINK_MAX_OUTPUT_PER_CONN,
                .max_output_per_uid = VARLINK_MAX_OUTPUT_PER_UID,
                .max_output_total = VARLINK_MAX_OUTPUT_TOTAL,
        };
        for (size_t i = 0; i < LISTEN_MAX; i++)
                s->listen_fd[i] = -EBADF;
        s->peek_fd = epoll_create1(EPOLL_CLOEXEC);
        if (s->peek_fd < 0)
                s->peek_fd = -EBADF;
        hashmap_init(&s->uids);
        ev_check_init(&s->check, check_cb);
        ev_idle_init(&s->idle, idle_cb);
        ev_init(&s->accept_retry, accept_retry_cb);
        *ret = s;
        return 0;
}

VarlinkServer *varlink_server_free(VarlinkServer *s) {
        if (!s)
                return NULL;
        varlink_server_stop(s);
        while (s->conns)
                conn_free(s->conns);
        for (size_t i = 0; i < s->n_listen; i++)
                safe_close(s->listen_fd[i]);
        safe_close(s->peek_fd);
        ev_check_stop(s->loop, &s->check);
        ev_idle_stop(s->loop, &s->idle);
        ev_timer_stop(s->loop, &s->accept_retry);
        for (size_t i = 0; i < s->n_methods; i++)
                free(s->methods[i].name);
        free(s->methods);
        HashmapIter i = {};
        UidStat *u;
        while (hashmap_iterate(&s->uids, &i, (void **) &u))
                free(u);
        hashmap_done(&s->uids);
        json_tokener_free(s->parser);
        vl_scanner_done(&s->scanner);
        free(s);
        return NULL;
}

void varlink_server_set_limits(VarlinkServer *s, const VarlinkServerLimits *l) {
        assert(s);
        assert(l);
        s->limits = *l;
        if (s->limits.output_high_water == 0)
                s->limits.output_high_water = VARLINK_OUTPUT_HIGH_WATER;
        for (VarlinkConn *c = s->conns; c; c = c->next) {
                c->in.max_message = l->max_message_size > 0 ? l->max_message_size : VL_MESSAGE_SIZE_DEFAULT;
                conn_arm_timer(c);
        }
}

int varlink_server_bind_method_params(VarlinkServer *s, const char *name, VarlinkParamsFn fn, void *userdata) {
        assert_return(s && name && fn, -EINVAL);
        assert_return(strchr(name, '.'), -EINVAL);
        if (method_find(s, name))
                return -EEXIST;
        Method *m = realloc(s->methods, (s->n_methods + 1) * sizeof(*m));
        if (!m)
                return -ENOMEM;
        s->methods = m;
        char *copy = strdup(name);
        if (!copy)
                return -ENOMEM;
        s->methods[s->n_methods++] = (Method) { .name = copy, .fn = fn, .userdata = userdata };
        return 0;
}

int varlink_server_listen_fd(VarlinkServer *s, int fd) {
        assert_return(s, -EINVAL);
        assert_return(fd >= 0, -EBADF);
        if (s->n_listen >= LISTEN_MAX)
                return -E2BIG;
        size_t i = s->n_listen++;
        s->listen_fd[i] = fd;
        peek_add(s, fd);
        ev_io_init(&s->listen_io[i], accept_cb, fd, EV_READ);
        s->listen_io[i].data = s;
        return 0;
}

void varlink_server_start(VarlinkServer *s) {
        s->started = true;
        if (s->accept_paused)
                return;
        for (size_t i = 0; i < s->n_listen; i++)
                ev_io_start(s->loop, &s->listen_io[i]);
}

void varlink_server_stop(VarlinkServer *s) {
        s->started = false;
        for (size_t i = 0; i < s->n_listen; i++)
                ev_io_stop(s->loop, &s->listen_io[i]);
}

void varlink_server_dispatch(VarlinkServer *s) {
        while (s->pending) {
                VarlinkConn *c = s->pending;
                s->pending = c->pending_next;
                c->pending_next = NULL;
                c->is_pending = false;
                conn_dispatch(c);
        }
}

unsigned varlink_server_flush(VarlinkServer *s) {
        VarlinkConn *gone = NULL;
        while (s->dirty) {
                VarlinkConn *c = s->dirty;
                s->dirty = c->dirty_next;
                c->dirty_next = NULL;
                c->is_dirty = false;
                if (!c->dead && out_pending(c) > 0) {
                        int k = out_write(c);
                        if (k < 0 && k != -EAGAIN)
                                c->dead = true;
                        account(c);
                }
                bool out_empty = out_pending(c) == 0;
                if (c->dead || (c->close_now && (out_empty || usec_now(CLOCK_MONOTONIC) >= c->close_deadline)) ||
                    (c->eof && !c->in_call && out_empty && !vl_reader_has_message(&c->in))) {
                        if (!c->is_gone) {
                                c->is_gone = true;
                                c->gone_next = gone;
                                gone = c;
                        }
                        continue;
                }
                if (c->close_now) {
                        conn_update_io(c);      /* lingers for POLLOUT until the deadline */
                        continue;
                }
                if (out_empty)
                        vl_writer_shrink(&c->out);
                /* Drained below the mark: the calls it sent meanwhile get their turn in the
                 * next iteration (the flush is the last step of this one). */
                if (!c->in_call && out_pending(c) <= s->limits.output_high_water &&
                    vl_reader_has_message(&c->in))
                        defer(c);
                conn_update_io(c);
        }
        unsigned n = 0;
        while (gone) {
                VarlinkConn *c = gone;
                gone = c->gone_next;
                conn_free(c);
                n++;
        }
        return n;
}

void varlink_server_hold_output(VarlinkServer *s, bool hold) {
        if (s->hold && !hold)
                varlink_server_release(s, true);
        if (!s->hold && hold)
                /* Output queued before: held like any other, until the next release. */
                for (VarlinkConn *c = s->conns; c; c = c->next)
                        if (out_pending(c) > 0)
                                held_add(c);
        s->hold = hold;
}

/* Both visit the held list only: a connection off it has all its output released (or
 * none queued since), so its offsets need no update. */
void varlink_server_seal(VarlinkServer *s) {
        for (VarlinkConn *c = s->held; c; c = c->held_next)
                c->seal_upto = c->consumed + out_pending(c);
}

void varlink_server_release(VarlinkServer *s, bool all) {
        VarlinkConn *next;
        for (VarlinkConn *c = s->held; c; c = next) {
                next = c->held_next;
                uint64_t end = c->consumed + out_pending(c);
                if (all)
                        c->seal_upto = end;
                if (c->release_upto != c->seal_upto) {
                        c->release_upto = c->seal_upto;
                        if (out_releasable(c) > 0)
                                mark_dirty(c);
                }
                if (c->release_upto >= end)
                        held_remove(c);
        }
}

bool varlink_server_input_waiting(VarlinkServer *s) {
        if (s->pending || s->deferred || s->peek_fd < 0)
                return true;
        struct epoll_event e;
        int n;
        do
                n = epoll_wait(s->peek_fd, &e, 1, 0);
        while (n < 0 && errno == EINTR);
        return n != 0;
}

unsigned varlink_server_n_connections(const VarlinkServer *s) {
        return s->n_conns;
}

size_t varlink_server_output_bytes(const VarlinkServer *s) {
        return s->output_total;
}

VarlinkConn *varlink_server_first(VarlinkServer *s) {
        VarlinkConn *c = s->conns;
        while (c && !c->accepted)
                c = c->next;
        return c;
}

VarlinkConn *varlink_conn_next(VarlinkConn *c) {
        c = c->next;
        while (c && !c->accepted)
                c = c->next;
        return c;
}

void *varlink_conn_get_userdata(const VarlinkConn *c) {
        return c->userdata;
}

void varlink_conn_set_userdata(VarlinkConn *c, void *userdata) {
        c->userdata = userdata;
}

int varlink_conn_fd(const VarlinkConn *c) {
        return c->fd;
}

uid_t varlink_conn_uid(const VarlinkConn *c) {
        return c->uid;
}

bool varlink_conn_more(const VarlinkConn *c) {
        return c->more;
}

bool varlink_conn_in_call(const VarlinkConn *c) {
        return c->in_call;
}

bool varlink_conn_quiet(VarlinkConn *c) {
        if (c->dead || c->close_now || c->eof || vl_reader_pending(&c->in) > 0)
                return false;
        (void) out_write(c);
        account(c);
        return out_pending(c) == 0;
}

void varlink_conn_resume_call(VarlinkConn *c, bool more) {
        c->in_call = true;
        c->more = more;
        c->sent_call = true;
        conn_arm_timer(c);
}

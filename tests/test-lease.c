/* SPDX-License-Identifier: MIT */
/* The client against replies the real agend never sends, or not on demand: broken
 * framing (a reply cut into single bytes, two replies in one write), malformed replies
 * (not JSON, not an object, fields of the wrong type, a reply nobody asked for, one over
 * the size limit), an Acquire reply of an unknown shape, and a daemon that stops in the
 * middle of a reply. Everything agend does produce — queueing, grants, releases by each
 * path, renewals, expiry, revocation, restarts — is tested against the real daemon in
 * test-lease-agend.c, not here.
 *
 * The peer is a scripted socket server on threads of its own (blocking I/O, every wait
 * bounded): for each connection, in the order the client opens them, it reads one call
 * per step and writes that step's bytes, then reads until the client closes. */

#include <ev.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "agen/agen.h"
#include "conn.h"
#include "gen-internal.h"
#include "helper-timeout.h"

/* The longest the peer waits for the client (scaled like every guard). */
#define PEER_WAIT_MS ((int) test_guard(10000.))
#define MAX_CONNS 8
#define MAX_STEPS 4

/* What the peer writes in one step. Messages in text end with '\n', which is sent as the
 * NUL that ends a varlink message; a text not ending in '\n' stops mid-message. */
typedef struct PeerStep {
        const char *text;
        bool byte_by_byte;
        size_t flood; /* then this many bytes of JSON string content, without a NUL */
} PeerStep;

typedef struct PeerConn {
        struct Peer *peer;
        unsigned index;
        int fd;
        pthread_t thread;
        char calls[4096]; /* the calls read, NULs as '\n' */
        size_t calls_len;
        atomic_bool eof;  /* the client closed the connection */
} PeerConn;

typedef struct Peer {
        char dir[64], path[108];
        int listen_fd;
        pthread_t acceptor;
        atomic_bool stop;
        PeerStep script[MAX_CONNS][MAX_STEPS]; /* per connection; text NULL ends it */
        PeerConn conns[MAX_CONNS];
        atomic_uint n_conns;
} Peer;

static int peer_read_call(PeerConn *c) {
        for (;;) {
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                if (poll(&p, 1, PEER_WAIT_MS) <= 0)
                        return -ETIMEDOUT;
                char ch;
                ssize_t n = read(c->fd, &ch, 1);
                if (n <= 0)
                        return -ECONNRESET;
                if (c->calls_len < sizeof(c->calls) - 1)
                        c->calls[c->calls_len++] = ch ? ch : '\n';
                if (ch == 0)
                        return 0;
        }
}

static void peer_write(PeerConn *c, const char *p, size_t n, bool byte_by_byte) {
        while (n > 0) {
                size_t k = byte_by_byte ? 1 : n;
                ssize_t w = send(c->fd, p, k, MSG_NOSIGNAL);
                if (w <= 0)
                        return; /* the client hung up: that may be the point of the test */
                p += w;
                n -= (size_t) w;
                if (byte_by_byte)
                        usleep(500);
        }
}

static void *peer_conn_thread(void *userdata) {
        PeerConn *c = userdata;
        for (unsigned i = 0; i < MAX_STEPS; i++) {
                const PeerStep *s = &c->peer->script[c->index][i];
                if (!s->text || peer_read_call(c) < 0)
                        break;
                char *b = strdup(s->text);
                size_t n = strlen(b);
                for (size_t j = 0; j < n; j++)
                        if (b[j] == '\n')
                                b[j] = 0;
                peer_write(c, b, n, s->byte_by_byte);
                free(b);
                if (s->flood > 0) {
                        char *x = malloc(s->flood);
                        memset(x, 'x', s->flood);
                        peer_write(c, "{\"parameters\":{\"x\":\"", 20, false);
                        peer_write(c, x, s->flood, false);
                        free(x);
                }
        }
        /* Until the client closes; its remaining calls are read and dropped. */
        for (;;) {
                struct pollfd p = { .fd = c->fd, .events = POLLIN };
                if (poll(&p, 1, PEER_WAIT_MS) <= 0)
                        break;
                char buf[4096];
                if (read(c->fd, buf, sizeof(buf)) <= 0) {
                        atomic_store(&c->eof, true);
                        break;
                }
        }
        return NULL;
}

static void *peer_accept_thread(void *userdata) {
        Peer *p = userdata;
        while (!atomic_load(&p->stop)) {
                struct pollfd pf = { .fd = p->listen_fd, .events = POLLIN };
                if (poll(&pf, 1, 20) <= 0)
                        continue;
                int fd = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                        continue;
                unsigned i = atomic_load(&p->n_conns);
                if (i >= MAX_CONNS) {
                        close(fd);
                        continue;
                }
                p->conns[i] = (PeerConn) { .peer = p, .index = i, .fd = fd };
                assert_int_equal(pthread_create(&p->conns[i].thread, NULL, peer_conn_thread, &p->conns[i]), 0);
                atomic_store(&p->n_conns, i + 1);
        }
        return NULL;
}

static Peer *peer_new(void) {
        Peer *p = calloc(1, sizeof(*p));
        assert_non_null(p);
        snprintf(p->dir, sizeof(p->dir), "/tmp/agen-peer-XXXXXX");
        assert_non_null(mkdtemp(p->dir));
        snprintf(p->path, sizeof(p->path), "%s/io.agend.Lease", p->dir);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", p->path);
        p->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(p->listen_fd >= 0);
        assert_int_equal(bind(p->listen_fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(p->listen_fd, 16), 0);
        return p;
}

/* The script is set; serve it. */
static void peer_start(Peer *p) {
        assert_int_equal(pthread_create(&p->acceptor, NULL, peer_accept_thread, p), 0);
}

/* Waits (bounded) until the client has closed connection i. */
static bool peer_wait_eof(Peer *p, unsigned i) {
        for (int k = 0; k < PEER_WAIT_MS / 5; k++) {
                if (atomic_load(&p->n_conns) > i && atomic_load(&p->conns[i].eof))
                        return true;
                usleep(5000);
        }
        return false;
}

/* Call after the client is gone: its connections are closed, so the threads end. */
static void peer_free(Peer *p) {
        atomic_store(&p->stop, true);
        pthread_join(p->acceptor, NULL);
        for (unsigned i = 0; i < atomic_load(&p->n_conns); i++) {
                pthread_join(p->conns[i].thread, NULL);
                close(p->conns[i].fd);
        }
        close(p->listen_fd);
        unlink(p->path);
        rmdir(p->dir);
        free(p);
}

/* ---- the client's side ---- */

typedef struct Fixture {
        struct ev_loop *loop;
        Peer *peer;
        agen_client *client;
        ev_timer guard;
        bool guard_fired;
} Fixture;

static void guard_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fixture *f = container_of(w, Fixture, guard);
        f->guard_fired = true;
        ev_break(loop, EVBREAK_ALL);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        assert_non_null(f);
        f->loop = ev_loop_new(EVFLAG_AUTO);
        f->peer = peer_new();
        ev_timer_init(&f->guard, guard_cb, test_guard(10.), 0.);
        ev_timer_start(f->loop, &f->guard);
        ev_unref(f->loop);
        *state = f;
        return 0;
}

/* The script is set: serve it and connect the client (connection 0 is its control
 * connection). */
static void start(Fixture *f) {
        peer_start(f->peer);
        assert_int_equal(agen_client_new(f->loop, f->peer->path, &f->client), 0);
}

static int teardown(void **state) {
        Fixture *f = *state;
        assert_int_equal(agen_loop_shutdown(f->loop, test_guard(2.0)), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        agen_client_unref(f->client);
        assert_int_equal(gen_loop_state_count(), 0);
        peer_free(f->peer);
        ev_ref(f->loop);
        ev_timer_stop(f->loop, &f->guard);
        assert_false(f->guard_fired);
        assert_int_equal(ev_run(f->loop, EVRUN_NOWAIT), 0);
        ev_loop_destroy(f->loop);
        free(f);
        return 0;
}

static void run_until(Fixture *f, const bool *flag) {
        while (!*flag && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_false(f->guard_fired);
}

typedef struct Replies {
        unsigned n;
        int status[4];
        char json[4][128];
        bool had_error_name[4];
        bool done;
        unsigned want;
} Replies;

static void reply_cb(agen_client *client, int status, const char *error_name, const char *parameters_json,
                     bool continues, void *userdata) {
        Replies *r = userdata;
        if (r->n < ELEMENTSOF(r->status)) {
                r->status[r->n] = status;
                snprintf(r->json[r->n], sizeof(r->json[0]), "%s", strempty(parameters_json));
                r->had_error_name[r->n] = error_name;
        }
        r->n++;
        r->done = r->n >= r->want;
}

/* ---- tests ---- */

/* A reply cut into single bytes, and two replies in one write: the framing is in the
 * stream, not in how the writes fall. */
static void test_framing(void **state) {
        Fixture *f = *state;
        f->peer->script[0][0] = (PeerStep) {
                .text = "{\"parameters\":{\"n\":1}}\n{\"parameters\":{\"n\":2},\"continues\":false}\n",
                .byte_by_byte = true,
        };
        start(f);
        Replies r = { .want = 2 };
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Status", NULL, 0, reply_cb, &r), 0);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Status", "{}", 0, reply_cb, &r), 0);
        run_until(f, &r.done);
        assert_int_equal(r.status[0], 0);
        assert_string_equal(r.json[0], "{\"n\":1}");
        assert_int_equal(r.status[1], 0);
        assert_string_equal(r.json[1], "{\"n\":2}");
        /* What the client sent: NUL-framed calls, parameters always present. */
        assert_non_null(strstr(f->peer->conns[0].calls, "{\"method\":\"io.agend.Lease.Status\",\"parameters\":{}}\n"));
}

/* Each of these ends the connection: every pending call fails with the local error (no
 * error name), and the client closes its end. */
static void test_malformed_replies(void **state) {
        Fixture *f = *state;
        static const struct {
                const char *text;
                int error;
        } cases[] = {
                { "{\"parameters\":\n", -EBADMSG },               /* not JSON */
                { "[1,2]\n", -EBADMSG },                          /* not an object */
                { "{\"parameters\":{}} x\n", -EBADMSG },          /* trailing garbage */
                { "{\"error\":5}\n", -EPROTO },                   /* error not a string */
                { "{\"error\":\"\"}\n", -EPROTO },                /* empty error name */
                { "{\"parameters\":[]}\n", -EPROTO },             /* parameters not an object */
                { "{\"parameters\":{},\"continues\":\"yes\"}\n", -EPROTO },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                if (i > 0) {
                        /* A fresh peer and client per case. */
                        agen_client_unref(f->client);
                        f->client = NULL;
                        peer_free(f->peer);
                        f->peer = peer_new();
                }
                f->peer->script[0][0] = (PeerStep) { .text = cases[i].text };
                start(f);
                Replies r = { .want = 2 };
                assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Status", NULL, 0, reply_cb, &r), 0);
                assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Status", NULL, 0, reply_cb, &r), 0);
                run_until(f, &r.done);
                if (r.status[0] != cases[i].error)
                        fail_msg("case %zu (%s): status %d, expected %d", i, cases[i].text, r.status[0],
                                 cases[i].error);
                assert_int_equal(r.status[1], cases[i].error);
                assert_false(r.had_error_name[0] || r.had_error_name[1]);
                assert_string_equal(r.json[0], "");
                assert_true(peer_wait_eof(f->peer, 0));
        }
}

/* A reply nobody asked for ends the connection, after the answered call got its reply. */
static void test_unsolicited_reply(void **state) {
        Fixture *f = *state;
        f->peer->script[0][0] = (PeerStep) { .text = "{\"parameters\":{\"n\":1}}\n{\"parameters\":{\"n\":2}}\n" };
        start(f);
        Replies r = { .want = 1 };
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Status", NULL, 0, reply_cb, &r), 0);
        run_until(f, &r.done);
        assert_int_equal(r.status[0], 0);
        assert_string_equal(r.json[0], "{\"n\":1}");
        /* The client's loop must run for it to read the second one. */
        bool eof = false;
        for (int i = 0; i < (int) test_guard(200.) && !eof; i++) {
                ev_run(f->loop, EVRUN_NOWAIT);
                eof = atomic_load(&f->peer->conns[0].eof);
                usleep(5000);
        }
        assert_true(eof);
        assert_int_equal(r.n, 1);
}

/* A message over the client's limit ends the connection as soon as the limit is passed,
 * not when (if ever) its NUL comes. */
static void test_oversized_reply(void **state) {
        Fixture *f = *state;
        f->peer->script[0][0] = (PeerStep) { .text = "", .flood = CONN_MAX_MESSAGE + 65536 };
        start(f);
        Replies r = { .want = 1 };
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.List", NULL, 0, reply_cb, &r), 0);
        run_until(f, &r.done);
        assert_int_equal(r.status[0], -EMSGSIZE);
        assert_true(peer_wait_eof(f->peer, 0));
}

typedef struct Step {
        bool done;
        int status;
} Step;

static void step_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        Step *s = userdata;
        s->done = true;
        s->status = status;
}

/* Acquire replies of a shape agend does not send: the step fails with -EBADMSG and the
 * lease connection is closed (no retry: it is not the daemon that went away). */
static void test_lease_bad_acquire_reply(void **state) {
        Fixture *f = *state;
        static const char *const replies[] = {
                "{\"parameters\":{\"state\":\"weird\"}}\n",
                "{\"parameters\":{}}\n",
                "{\"parameters\":{\"state\":\"granted\",\"lease\":{\"id\":\"L1\",\"token\":1}}}\n", /* no secret */
                "{\"parameters\":{\"state\":\"granted\",\"lease\":{\"id\":\"L1\",\"token\":0},\"secret\":\"s\"}}\n",
                "{\"parameters\":{\"state\":\"granted\",\"lease\":{\"token\":1},\"secret\":\"s\"}}\n",
        };
        for (size_t i = 0; i < ELEMENTSOF(replies); i++)
                f->peer->script[1 + i][0] = (PeerStep) { .text = replies[i] };
        start(f);
        for (size_t i = 0; i < ELEMENTSOF(replies); i++) {
                agen_gen *g = agen_lease(f->client, "gpu", NULL);
                Step s = {};
                assert_int_equal(agen_gen_anext(g, step_cb, &s), 0);
                run_until(f, &s.done);
                if (s.status != -EBADMSG)
                        fail_msg("reply %zu (%s): status %d", i, replies[i], s.status);
                assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
                assert_true(peer_wait_eof(f->peer, 1 + i));
                assert_non_null(strstr(f->peer->conns[1 + i].calls, "\"method\":\"io.agend.Lease.Acquire\""));
                agen_gen_unref(g);
        }
}

/* The daemon stops in the middle of the grant: the step waits (there is no reply timeout
 * in the protocol), and agen_loop_shutdown() cancels it (issue 13: a waiting step is
 * cancellable), closing the lease connection: nothing is left to abandon. */
static void count_exception(struct ev_loop *loop, agen_gen *gen, int error, const char *message, void *userdata) {
        unsigned *n = userdata;
        (*n)++;
}

static void test_daemon_stalls_mid_reply(void **state) {
        Fixture *f = *state;
        unsigned exceptions = 0;
        assert_int_equal(agen_loop_set_exception_handler(f->loop, count_exception, &exceptions), 0);
        f->peer->script[1][0] = (PeerStep) { .text = "{\"parameters\":{\"state\":\"gra" };
        start(f);
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = {};
        assert_int_equal(agen_gen_anext(g, step_cb, &s), 0);
        for (unsigned i = 0; i < 20; i++) {
                ev_run(f->loop, EVRUN_NOWAIT);
                usleep(5000);
        }
        assert_false(s.done);
        assert_int_equal(agen_loop_shutdown(f->loop, 0.1), 0);
        assert_true(s.done);
        assert_int_equal(s.status, -ECANCELED);
        /* Cancelled, not failed: nothing for the exception handler. */
        assert_int_equal(exceptions, 0);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        assert_true(peer_wait_eof(f->peer, 1));
        agen_gen_unref(g);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_framing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_malformed_replies, setup, teardown),
                cmocka_unit_test_setup_teardown(test_unsolicited_reply, setup, teardown),
                cmocka_unit_test_setup_teardown(test_oversized_reply, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lease_bad_acquire_reply, setup, teardown),
                cmocka_unit_test_setup_teardown(test_daemon_stalls_mid_reply, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

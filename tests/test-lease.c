/* SPDX-License-Identifier: MIT */
/* The client and the lease generator against a small in-process stand-in for agend: a
 * varlink server on the test's own loop with capacity-1 resources, FIFO waiters, bound
 * and detached leases, TTLs, Watch(lease), Release/Renew/Reclaim/Revoke, EOF = release,
 * and a simulated restart (connections dropped, leases kept reclaimable for a grace
 * period). Tests against the real agend are in test-lease-agend.c. */

#include <dirent.h>
#include <ev.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "agen/agen.h"
#include "gen-internal.h"

/* ---- the stand-in daemon ---- */

typedef struct Mock Mock;
typedef struct MConn MConn;
typedef struct MLease MLease;
typedef struct MWaiter MWaiter;

struct MConn {
        Mock *m;
        int fd;
        ev_io io;
        char *in;
        size_t in_size;
        MConn *next;
};

struct MLease {
        unsigned n;
        char id[32], secret[32], resource[64];
        MConn *owner;     /* NULL: detached, or reclaimable after a restart */
        bool detached, reclaimable;
        double ttl;
        ev_timer expiry;
        MConn *watcher;   /* a Watch(lease) in progress */
        Mock *m;
        MLease *next;
};

struct MWaiter {
        MConn *conn;
        char resource[64];
        bool more;
        unsigned last_pos; /* positions are sent when they change */
        MWaiter *next;
};

struct Mock {
        struct ev_loop *loop;
        char dir[32], path[64];
        int listen_fd;
        ev_io accept_io;
        MConn *conns;
        MLease *leases;
        MWaiter *waiters;
        unsigned next_n;
        ev_timer grace, relisten;
        double grace_sec;
        /* counters */
        unsigned n_acquire, n_release, n_renew, n_reclaim, n_watch, n_eof_release, n_conns_total;
        char last_end_reason[64];
};

static void mock_send(MConn *c, json_object *msg) {
        size_t len;
        const char *s = json_object_to_json_string_length(msg, JSON_C_TO_STRING_PLAIN, &len);
        /* Small messages on a local socket: a blocking write is fine for a test. */
        int fl = fcntl(c->fd, F_GETFL);
        fcntl(c->fd, F_SETFL, fl & ~O_NONBLOCK);
        (void) !write(c->fd, s, len + 1);
        fcntl(c->fd, F_SETFL, fl);
        json_object_put(msg);
}

static void mock_reply(MConn *c, json_object *params, bool continues) {
        json_object *m = json_object_new_object();
        json_object_object_add(m, "parameters", params ?: json_object_new_object());
        if (continues)
                json_object_object_add(m, "continues", json_object_new_boolean(1));
        mock_send(c, m);
}

static void mock_error(MConn *c, const char *error) {
        json_object *m = json_object_new_object();
        json_object_object_add(m, "error", json_object_new_string(error));
        json_object_object_add(m, "parameters", json_object_new_object());
        mock_send(c, m);
}

static json_object *mock_lease_json(MLease *l) {
        json_object *o = json_object_new_object();
        json_object_object_add(o, "id", json_object_new_string(l->id));
        json_object_object_add(o, "resource", json_object_new_string(l->resource));
        json_object_object_add(o, "token", json_object_new_int64(l->n));
        if (l->ttl > 0)
                json_object_object_add(o, "ttl", json_object_new_double(l->ttl));
        json_object_object_add(o, "detached", json_object_new_boolean(l->detached));
        return o;
}

static MLease *mock_find(Mock *m, const char *id) {
        for (MLease *l = m->leases; l; l = l->next)
                if (streq(l->id, id))
                        return l;
        return NULL;
}

static MLease *mock_holder(Mock *m, const char *resource) {
        for (MLease *l = m->leases; l; l = l->next)
                if (streq(l->resource, resource))
                        return l;
        return NULL;
}

static void mock_expiry_cb(struct ev_loop *loop, ev_timer *w, int revents);

static void mock_grant(Mock *m, MConn *c, const char *resource, double ttl, bool detached) {
        MLease *l = calloc(1, sizeof(*l));
        l->m = m;
        l->n = ++m->next_n;
        snprintf(l->id, sizeof(l->id), "L%u", l->n);
        snprintf(l->secret, sizeof(l->secret), "S%u", l->n);
        snprintf(l->resource, sizeof(l->resource), "%s", resource);
        l->owner = detached ? NULL : c;
        l->detached = detached;
        l->ttl = ttl;
        ev_timer_init(&l->expiry, mock_expiry_cb, ttl, 0.);
        if (ttl > 0)
                ev_timer_start(m->loop, &l->expiry);
        l->next = m->leases;
        m->leases = l;

        json_object *p = json_object_new_object();
        json_object_object_add(p, "state", json_object_new_string("granted"));
        json_object_object_add(p, "lease", mock_lease_json(l));
        json_object_object_add(p, "secret", json_object_new_string(l->secret));
        mock_reply(c, p, false);
}

static void mock_send_positions(Mock *m, const char *resource) {
        unsigned pos = 0;
        for (MWaiter *w = m->waiters; w; w = w->next)
                if (streq(w->resource, resource)) {
                        pos++;
                        if (w->more && w->last_pos != pos) {
                                w->last_pos = pos;
                                json_object *p = json_object_new_object();
                                json_object_object_add(p, "state", json_object_new_string("queued"));
                                json_object_object_add(p, "position", json_object_new_int(pos));
                                mock_reply(w->conn, p, true);
                        }
                }
}

/* Ends a lease: tells its watcher, grants the next waiter. */
static void mock_end(Mock *m, MLease *l, const char *type, const char *reason) {
        for (MLease **p = &m->leases; *p; p = &(*p)->next)
                if (*p == l) {
                        *p = l->next;
                        break;
                }
        ev_timer_stop(m->loop, &l->expiry);
        snprintf(m->last_end_reason, sizeof(m->last_end_reason), "%s", reason);
        if (l->watcher) {
                json_object *ev = json_object_new_object();
                json_object_object_add(ev, "type", json_object_new_string(type));
                json_object_object_add(ev, "lease", json_object_new_string(l->id));
                json_object_object_add(ev, "reason", json_object_new_string(reason));
                json_object *p = json_object_new_object();
                json_object_object_add(p, "event", ev);
                mock_reply(l->watcher, p, false);
        }
        char resource[64];
        snprintf(resource, sizeof(resource), "%s", l->resource);
        free(l);
        for (MWaiter **p = &m->waiters; *p; p = &(*p)->next)
                if (streq((*p)->resource, resource)) {
                        MWaiter *w = *p;
                        *p = w->next;
                        mock_grant(m, w->conn, resource, 0, false);
                        free(w);
                        break;
                }
        mock_send_positions(m, resource);
}

static void mock_expiry_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        MLease *l = container_of(w, MLease, expiry);
        mock_end(l->m, l, "expired", "ttl");
}

static void mock_conn_free(MConn *c, bool release) {
        Mock *m = c->m;
        for (MConn **p = &m->conns; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        break;
                }
        ev_io_stop(m->loop, &c->io);
        close(c->fd);
        for (MWaiter **p = &m->waiters; *p;)
                if ((*p)->conn == c) {
                        MWaiter *w = *p;
                        *p = w->next;
                        free(w);
                } else
                        p = &(*p)->next;
        for (MLease *l = m->leases, *next; l; l = next) {
                next = l->next;
                if (l->watcher == c)
                        l->watcher = NULL;
                if (l->owner == c) {
                        l->owner = NULL;
                        if (release) {
                                m->n_eof_release++;
                                mock_end(m, l, "released", "disconnected");
                        } else
                                l->reclaimable = true;
                }
        }
        free(c->in);
        free(c);
}

static const char *jstr(json_object *p, const char *k) {
        json_object *v;
        return json_object_object_get_ex(p, k, &v) && json_object_is_type(v, json_type_string)
                       ? json_object_get_string(v)
                       : NULL;
}

static double jnum(json_object *p, const char *k, double def) {
        json_object *v;
        return json_object_object_get_ex(p, k, &v) && !json_object_is_type(v, json_type_null)
                       ? json_object_get_double(v)
                       : def;
}

static void mock_handle(MConn *c, json_object *msg) {
        Mock *m = c->m;
        json_object *p, *v;
        const char *method = jstr(msg, "method");
        if (!json_object_object_get_ex(msg, "parameters", &p))
                p = NULL;
        bool more = json_object_object_get_ex(msg, "more", &v) && json_object_get_boolean(v);
        bool oneway = json_object_object_get_ex(msg, "oneway", &v) && json_object_get_boolean(v);
        assert_non_null(method);

        if (streq(method, "io.agend.Lease.Acquire")) {
                m->n_acquire++;
                const char *resource = jstr(p, "resource");
                double timeout = jnum(p, "timeout", -1);
                json_object_object_get_ex(p, "detached", &v);
                bool detached = v && json_object_get_boolean(v);
                if (!mock_holder(m, resource)) {
                        mock_grant(m, c, resource, jnum(p, "ttl", 0), detached);
                        return;
                }
                if (timeout == 0)
                        return mock_error(c, "io.agend.Lease.Timeout");
                MWaiter *w = calloc(1, sizeof(*w));
                *w = (MWaiter) { .conn = c, .more = more };
                snprintf(w->resource, sizeof(w->resource), "%s", resource);
                MWaiter **t = &m->waiters;
                while (*t)
                        t = &(*t)->next;
                *t = w;
                mock_send_positions(m, resource);
                return;
        }
        if (streq(method, "io.agend.Lease.Release")) {
                m->n_release++;
                MLease *l = mock_find(m, strempty(jstr(p, "id")));
                if (!l || l->reclaimable || !(l->owner == c || streq_ptr(jstr(p, "secret"), l->secret))) {
                        if (!oneway)
                                mock_error(c, "io.agend.Lease.NoSuchLease");
                        return;
                }
                mock_end(m, l, "released", "released");
                if (!oneway)
                        mock_reply(c, NULL, false);
                return;
        }
        if (streq(method, "io.agend.Lease.Renew")) {
                m->n_renew++;
                MLease *l = mock_find(m, strempty(jstr(p, "id")));
                if (!l || !streq_ptr(jstr(p, "secret"), l->secret))
                        return mock_error(c, "io.agend.Lease.NoSuchLease");
                ev_timer_stop(m->loop, &l->expiry);
                ev_timer_set(&l->expiry, l->ttl, 0.);
                ev_timer_start(m->loop, &l->expiry);
                json_object *r = json_object_new_object();
                json_object_object_add(r, "lease", mock_lease_json(l));
                return mock_reply(c, r, false);
        }
        if (streq(method, "io.agend.Lease.Reclaim")) {
                m->n_reclaim++;
                MLease *l = mock_find(m, strempty(jstr(p, "id")));
                if (!l || !l->reclaimable || !streq_ptr(jstr(p, "secret"), l->secret) ||
                    (uint64_t) jnum(p, "token", 0) != l->n)
                        return mock_error(c, "io.agend.Lease.NoSuchLease");
                l->reclaimable = false;
                l->owner = c;
                json_object *r = json_object_new_object();
                json_object_object_add(r, "lease", mock_lease_json(l));
                return mock_reply(c, r, false);
        }
        if (streq(method, "io.agend.Lease.Watch")) {
                m->n_watch++;
                MLease *l = mock_find(m, strempty(jstr(p, "lease")));
                if (!l)
                        return mock_error(c, "io.agend.Lease.NoSuchLease");
                l->watcher = c;
                json_object *r = json_object_new_object();
                json_object_object_add(r, "event", NULL);
                return mock_reply(c, r, true);
        }
        mock_error(c, "org.varlink.service.MethodNotFound");
}

static void mock_conn_cb(struct ev_loop *loop, ev_io *w, int revents) {
        MConn *c = container_of(w, MConn, io);
        char buf[4096];
        ssize_t n = read(c->fd, buf, sizeof(buf));
        if (n <= 0)
                return mock_conn_free(c, true);
        c->in = realloc(c->in, c->in_size + (size_t) n);
        memcpy(c->in + c->in_size, buf, (size_t) n);
        c->in_size += (size_t) n;
        for (;;) {
                char *z = memchr(c->in, 0, c->in_size);
                if (!z)
                        break;
                json_object *msg = json_tokener_parse(c->in);
                size_t used = (size_t) (z - c->in) + 1;
                memmove(c->in, c->in + used, c->in_size - used);
                c->in_size -= used;
                assert_non_null(msg);
                mock_handle(c, msg);
                json_object_put(msg);
        }
}

static void mock_accept_cb(struct ev_loop *loop, ev_io *w, int revents) {
        Mock *m = container_of(w, Mock, accept_io);
        int fd = accept4(m->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
                return;
        MConn *c = calloc(1, sizeof(*c));
        *c = (MConn) { .m = m, .fd = fd, .next = m->conns };
        m->conns = c;
        m->n_conns_total++;
        ev_io_init(&c->io, mock_conn_cb, fd, EV_READ);
        ev_io_start(loop, &c->io);
}

static void mock_listen(Mock *m) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", m->path);
        unlink(m->path);
        m->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        assert_true(m->listen_fd >= 0);
        assert_int_equal(bind(m->listen_fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        assert_int_equal(listen(m->listen_fd, 64), 0);
        ev_io_init(&m->accept_io, mock_accept_cb, m->listen_fd, EV_READ);
        ev_io_start(m->loop, &m->accept_io);
}

static void mock_unlisten(Mock *m) {
        if (m->listen_fd < 0)
                return;
        ev_io_stop(m->loop, &m->accept_io);
        close(m->listen_fd);
        m->listen_fd = -1;
        unlink(m->path);
}

static void mock_grace_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Mock *m = container_of(w, Mock, grace);
        for (MLease *l = m->leases, *next; l; l = next) {
                next = l->next;
                if (l->reclaimable)
                        mock_end(m, l, "released", "not reclaimed");
        }
}

static void mock_relisten_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Mock *m = container_of(w, Mock, relisten);
        mock_listen(m);
        /* Grace counts from the moment the restored daemon answers. */
        ev_timer_set(&m->grace, m->grace_sec, 0.);
        ev_timer_start(loop, &m->grace);
}

/* A crash and restart: every connection drops without releasing; the daemon is away for
 * `down` seconds, then holds unreclaimed leases for its grace period. */
static void mock_restart(Mock *m, double down, double grace) {
        mock_unlisten(m);
        while (m->conns)
                mock_conn_free(m->conns, false);
        m->grace_sec = grace;
        ev_timer_set(&m->relisten, down, 0.);
        ev_timer_start(m->loop, &m->relisten);
}

static void mock_revoke(Mock *m, const char *id, const char *reason) {
        MLease *l = mock_find(m, id);
        assert_non_null(l);
        mock_end(m, l, "revoked", reason);
}

static unsigned mock_n_leases(Mock *m) {
        unsigned n = 0;
        for (MLease *l = m->leases; l; l = l->next)
                n++;
        return n;
}

static Mock *mock_new(struct ev_loop *loop) {
        Mock *m = calloc(1, sizeof(*m));
        m->loop = loop;
        snprintf(m->dir, sizeof(m->dir), "/tmp/agen-test-XXXXXX");
        assert_non_null(mkdtemp(m->dir));
        snprintf(m->path, sizeof(m->path), "%s/io.agend.Lease", m->dir);
        ev_timer_init(&m->grace, mock_grace_cb, 0., 0.);
        ev_timer_init(&m->relisten, mock_relisten_cb, 0., 0.);
        mock_listen(m);
        return m;
}

static void mock_free(Mock *m) {
        mock_unlisten(m);
        while (m->conns)
                mock_conn_free(m->conns, true);
        while (m->leases)
                mock_end(m, m->leases, "released", "shutdown");
        while (m->waiters) {
                MWaiter *w = m->waiters;
                m->waiters = w->next;
                free(w);
        }
        ev_timer_stop(m->loop, &m->grace);
        ev_timer_stop(m->loop, &m->relisten);
        rmdir(m->dir);
        free(m);
}

/* ---- fixture ---- */

static unsigned count_fds(void) {
        unsigned n = 0;
        DIR *d = opendir("/proc/self/fd");
        assert_non_null(d);
        for (struct dirent *de; (de = readdir(d));)
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n;
}

typedef struct Fixture {
        struct ev_loop *loop;
        Mock *m;
        agen_client *client;
        unsigned fds;
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
        f->fds = count_fds();
        f->loop = ev_loop_new(EVFLAG_AUTO);
        f->m = mock_new(f->loop);
        assert_int_equal(agen_client_new(f->loop, f->m->path, &f->client), 0);
        ev_timer_init(&f->guard, guard_cb, 10., 0.);
        ev_timer_start(f->loop, &f->guard);
        ev_unref(f->loop); /* the guard alone does not keep ev_run() going */
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        assert_int_equal(agen_loop_shutdown(f->loop, 2.0), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        agen_client_unref(f->client);
        assert_int_equal(gen_loop_state_count(), 0);
        mock_free(f->m);
        ev_ref(f->loop);
        ev_timer_stop(f->loop, &f->guard);
        assert_false(f->guard_fired);
        assert_int_equal(ev_run(f->loop, EVRUN_NOWAIT), 0);
        ev_loop_destroy(f->loop);
        assert_int_equal(count_fds(), f->fds);
        free(f);
        return 0;
}

/* Runs the loop until *flag, bounded by the guard timer. */
static void run_until(Fixture *f, const bool *flag) {
        while (!*flag && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_false(f->guard_fired);
}

typedef struct Step {
        bool done;
        int status;
        agen_lease_event ev;
        char id[32], reason[128];
} Step;

static void step_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        Step *s = userdata;
        s->done = true;
        s->status = status;
        if (status == 0) {
                s->ev = *(const agen_lease_event *) value;
                snprintf(s->id, sizeof(s->id), "%s", strempty(s->ev.id));
                snprintf(s->reason, sizeof(s->reason), "%s", strempty(s->ev.reason));
        }
}

static Step next(Fixture *f, agen_gen *g) {
        Step s = {};
        assert_int_equal(agen_gen_anext(g, step_cb, &s), 0);
        run_until(f, &s.done);
        return s;
}

typedef struct Closed {
        bool done;
        int status;
} Closed;

static void closed_cb(agen_gen *gen, int status, void *userdata) {
        Closed *c = userdata;
        c->done = true;
        c->status = status;
}

/* Runs the loop until the lease count of the mock is n. */
static void run_until_leases(Fixture *f, unsigned n) {
        while (mock_n_leases(f->m) != n && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_false(f->guard_fired);
}

/* Runs the loop until the stand-in has seen n Watch calls. */
static void run_until_watches(Fixture *f, unsigned n) {
        while (f->m->n_watch < n && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_false(f->guard_fired);
}

/* ---- tests ---- */

static void test_granted_then_aclose_releases(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        assert_non_null(g);
        /* Nothing is sent before the first step. */
        ev_run(f->loop, EVRUN_NOWAIT);
        assert_int_equal(f->m->n_acquire, 0);

        Step s = next(f, g);
        assert_int_equal(s.status, 0);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        assert_string_equal(s.id, "L1");
        assert_int_equal(s.ev.token, 1);
        assert_int_equal(mock_n_leases(f->m), 1);

        Closed c = {};
        assert_int_equal(agen_gen_aclose(g, closed_cb, &c), 0);
        run_until(f, &c.done);
        assert_int_equal(c.status, 0);
        /* The close was the release round trip: done when the callback fires. */
        assert_int_equal(f->m->n_release, 1);
        assert_int_equal(f->m->n_eof_release, 0);
        assert_int_equal(mock_n_leases(f->m), 0);
        agen_gen_unref(g);
}

static void test_queued_positions_then_granted(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        agen_gen *b = agen_lease(f->client, "gpu", &(agen_lease_opts) { .description = "second" });
        agen_gen *c = agen_lease(f->client, "gpu", NULL);

        assert_int_equal(next(f, a).ev.type, AGEN_LEASE_GRANTED);
        Step s = next(f, b);
        assert_int_equal(s.ev.type, AGEN_LEASE_QUEUED);
        assert_int_equal(s.ev.position, 1);
        assert_null(s.ev.id);
        s = next(f, c);
        assert_int_equal(s.ev.type, AGEN_LEASE_QUEUED);
        assert_int_equal(s.ev.position, 2);

        /* a goes: b is granted, c moves up. */
        assert_int_equal(agen_gen_close_sync(a), 0);
        s = next(f, b);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        s = next(f, c);
        assert_int_equal(s.ev.type, AGEN_LEASE_QUEUED);
        assert_int_equal(s.ev.position, 1);

        /* Closing a waiter cancels its wait (its connection closes). */
        assert_int_equal(agen_gen_close_sync(c), 0);
        assert_int_equal(agen_gen_close_sync(b), 0);
        assert_int_equal(mock_n_leases(f->m), 0);
        agen_gen_unref(a);
        agen_gen_unref(b);
        agen_gen_unref(c);
}

static void test_try_once_busy_fails(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", NULL);
        agen_gen *b = agen_lease(f->client, "gpu", &(agen_lease_opts) { .try_once = true });

        assert_int_equal(next(f, a).ev.type, AGEN_LEASE_GRANTED);
        Step s = next(f, b);
        assert_int_equal(s.status, -ETIMEDOUT);
        assert_int_equal(agen_gen_get_state(b), AGEN_GEN_CLOSED);
        agen_gen_unref(b);
        agen_gen_unref(a); /* the finalizer releases it */
        run_until_leases(f, 0);
}

static void test_revoked(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next(f, g);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);

        run_until_watches(f, 1);
        mock_revoke(f->m, s.id, "maintenance");
        s = next(f, g);
        assert_int_equal(s.ev.type, AGEN_LEASE_REVOKED);
        assert_string_equal(s.reason, "maintenance");
        assert_string_equal(s.id, "L1");
        s = next(f, g);
        assert_int_equal(s.status, AGEN_STOP);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        /* Nothing left to release. */
        assert_int_equal(agen_gen_close_sync(g), 0);
        assert_int_equal(f->m->n_release, 0);
        agen_gen_unref(g);
}

static void test_ttl_renewed_then_expired(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .ttl = 0.15 });
        assert_int_equal(next(f, g).ev.type, AGEN_LEASE_GRANTED);
        /* Renewed at ~1/3 of the TTL, again and again: it outlives its TTL. */
        for (unsigned i = 0; i < 4; i++) {
                Step s = next(f, g);
                assert_int_equal(s.status, 0);
                assert_int_equal(s.ev.type, AGEN_LEASE_RENEWED);
        }
        assert_true(f->m->n_renew >= 4);
        assert_int_equal(mock_n_leases(f->m), 1);
        assert_int_equal(agen_gen_close_sync(g), 0);
        agen_gen_unref(g);

        /* A detached TTL lease whose holder hangs (the renewals fail): it expires. */
        g = agen_lease(f->client, "gpu", &(agen_lease_opts) { .ttl = 0.1, .detached = true });
        Step s = next(f, g);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        /* Take the secret away from the stand-in, so Renew fails. */
        f->m->leases->secret[0] = 'X';
        do
                s = next(f, g);
        while (s.status == 0 && s.ev.type == AGEN_LEASE_RENEWED);
        assert_int_equal(s.ev.type, AGEN_LEASE_EXPIRED);
        assert_string_equal(s.reason, "ttl");
        assert_int_equal(next(f, g).status, AGEN_STOP);
        agen_gen_unref(g);
}

static void test_finalizer_releases(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        assert_int_equal(next(f, g).ev.type, AGEN_LEASE_GRANTED);

        /* An early break: the program drops the generator without closing it. */
        agen_gen_unref(g);
        while (agen_loop_live(f->loop) > 0 && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_int_equal(f->m->n_release, 1);
        assert_int_equal(f->m->n_eof_release, 0);
        assert_int_equal(mock_n_leases(f->m), 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
}

static void test_shutdown_releases_all(void **state) {
        Fixture *f = *state;
        agen_gen *g[3];
        const char *names[3] = { "gpu0", "gpu1", "gpu2" };
        for (unsigned i = 0; i < 3; i++) {
                g[i] = agen_lease(f->client, names[i], NULL);
                assert_int_equal(next(f, g[i]).ev.type, AGEN_LEASE_GRANTED);
        }
        agen_gen_unref(g[2]);
        assert_int_equal(mock_n_leases(f->m), 3);

        assert_int_equal(agen_loop_shutdown(f->loop, 2.0), 0);
        assert_int_equal(mock_n_leases(f->m), 0);
        assert_int_equal(f->m->n_release, 3);
        assert_int_equal(f->m->n_eof_release, 0);
        assert_int_equal(agen_loop_live(f->loop), 0);
        agen_gen_unref(g[0]);
        agen_gen_unref(g[1]);
}

static void test_abandon_closes_the_connection(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        assert_int_equal(next(f, g).ev.type, AGEN_LEASE_GRANTED);
        /* No time at all: the release round trip cannot finish; closing the connection
         * is the release of last resort (EOF). */
        assert_int_equal(agen_loop_shutdown(f->loop, 0), 1);
        assert_int_equal(agen_gen_get_state(g), AGEN_GEN_CLOSED);
        run_until_leases(f, 0);
        assert_int_equal(f->m->n_eof_release, 1);
        agen_gen_unref(g);
}

static void test_restart_reclaimed(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next(f, g);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        uint64_t token = s.ev.token;

        mock_restart(f->m, 0.2, 5.0);
        s = next(f, g);
        assert_int_equal(s.status, 0);
        assert_int_equal(s.ev.type, AGEN_LEASE_RECLAIMED);
        assert_string_equal(s.id, "L1");
        assert_int_equal(s.ev.token, token);
        assert_int_equal(f->m->n_reclaim, 1);
        /* Watched again: a revoke still reaches it. */
        run_until_watches(f, 2);
        mock_revoke(f->m, "L1", "after restart");
        s = next(f, g);
        assert_int_equal(s.ev.type, AGEN_LEASE_REVOKED);
        agen_gen_unref(g);
}

static void test_restart_lost(void **state) {
        Fixture *f = *state;
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        assert_int_equal(next(f, g).ev.type, AGEN_LEASE_GRANTED);

        /* Grace 0: the restarted daemon releases what was not reclaimed at once. */
        mock_restart(f->m, 0.1, 0.);
        ev_run(f->loop, EVRUN_NOWAIT);
        Step s = next(f, g);
        assert_int_equal(s.ev.type, AGEN_LEASE_LOST);
        assert_string_equal(s.reason, "not reclaimed after a daemon restart: io.agend.Lease.NoSuchLease");
        assert_int_equal(next(f, g).status, AGEN_STOP);
        agen_gen_unref(g);
}

static void test_waiter_survives_restart(void **state) {
        Fixture *f = *state;
        agen_gen *a = agen_lease(f->client, "gpu", &(agen_lease_opts) { .detached = true });
        agen_gen *b = agen_lease(f->client, "gpu", NULL);
        Step s = next(f, a);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        assert_int_equal(next(f, b).ev.type, AGEN_LEASE_QUEUED);

        mock_restart(f->m, 0.1, 5.0);
        /* The detached one is watched again, the waiter asks again. */
        assert_int_equal(next(f, b).ev.type, AGEN_LEASE_QUEUED);
        assert_int_equal(agen_gen_close_sync(a), 0);
        s = next(f, b);
        assert_int_equal(s.ev.type, AGEN_LEASE_GRANTED);
        assert_int_equal(agen_gen_close_sync(b), 0);
        agen_gen_unref(a);
        agen_gen_unref(b);
        assert_int_equal(mock_n_leases(f->m), 0);
}

static void test_no_daemon(void **state) {
        Fixture *f = *state;
        agen_client *c = NULL;
        assert_int_equal(agen_client_new(f->loop, "/nonexistent/agend.sock", &c), -ENOENT);
        assert_null(c);
        /* The generator sees the daemon go away before its first step. */
        mock_unlisten(f->m);
        agen_gen *g = agen_lease(f->client, "gpu", NULL);
        Step s = next(f, g);
        assert_true(s.status < 0);
        agen_gen_unref(g);
        mock_listen(f->m);
}

typedef struct Replies {
        unsigned n;
        int status[4];
        char json[4][256];
        char error[4][64];
        bool continues[4];
} Replies;

static void reply_cb(agen_client *client, int status, const char *error_name, const char *parameters_json,
                     bool continues, void *userdata) {
        Replies *r = userdata;
        if (r->n < 4) {
                r->status[r->n] = status;
                snprintf(r->json[r->n], sizeof(r->json[0]), "%s", strempty(parameters_json));
                snprintf(r->error[r->n], sizeof(r->error[0]), "%s", strempty(error_name));
                r->continues[r->n] = continues;
        }
        r->n++;
}

static void test_client_call_pipelined(void **state) {
        Fixture *f = *state;
        Replies r = {};

        /* Two calls at once on the control connection; replies in order. */
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Acquire",
                                          "{\"resource\": \"x\"}", 0, reply_cb, &r), 0);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Release",
                                          "{\"id\": \"nope\"}", 0, reply_cb, &r), 0);
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Nope", NULL, 0, reply_cb, &r), 0);
        assert_int_equal(r.n, 0);
        while (r.n < 3 && !f->guard_fired)
                ev_run(f->loop, EVRUN_ONCE);
        assert_int_equal(r.status[0], 0);
        assert_non_null(strstr(r.json[0], "\"state\":\"granted\""));
        assert_int_equal(r.status[1], -ENOENT);
        assert_string_equal(r.error[1], "io.agend.Lease.NoSuchLease");
        assert_int_equal(r.status[2], -EOPNOTSUPP);
        assert_int_equal(agen_client_call(f->client, "x", "[1]", 0, reply_cb, &r), -EINVAL);
        assert_int_equal(agen_client_call(f->client, "x", "{", 0, reply_cb, &r), -EINVAL);
        assert_int_equal(agen_client_call(f->client, "x", NULL, AGEN_CALL_MORE | AGEN_CALL_ONEWAY, reply_cb, &r),
                         -EINVAL);
        /* Oneway: no reply. The lease held by the control connection goes with it. */
        assert_int_equal(agen_client_call(f->client, "io.agend.Lease.Release", "{\"id\": \"L1\"}", AGEN_CALL_ONEWAY,
                                          reply_cb, &r), 0);
        run_until_leases(f, 0);
        assert_int_equal(r.n, 3);
}

static void test_default_address(void **state) {
        char *a = NULL;
        setenv("AGEND_SOCKET", "/x/y", 1);
        assert_int_equal(agen_default_address(&a), 0);
        assert_string_equal(a, "/x/y");
        free(a);
        unsetenv("AGEND_SOCKET");
        assert_int_equal(agen_default_address(&a), 0);
        if (getuid() == 0)
                assert_string_equal(a, "/run/agend/io.agend.Lease");
        free(a);
        setenv("AGEND_SOCKET", "/x/y", 1);
        agen_client *c = NULL;
        assert_int_equal(agen_client_new(((Fixture *) *state)->loop, NULL, &c), -ENOENT);
        unsetenv("AGEND_SOCKET");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_granted_then_aclose_releases, setup, teardown),
                cmocka_unit_test_setup_teardown(test_queued_positions_then_granted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_try_once_busy_fails, setup, teardown),
                cmocka_unit_test_setup_teardown(test_revoked, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ttl_renewed_then_expired, setup, teardown),
                cmocka_unit_test_setup_teardown(test_finalizer_releases, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shutdown_releases_all, setup, teardown),
                cmocka_unit_test_setup_teardown(test_abandon_closes_the_connection, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restart_reclaimed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_restart_lost, setup, teardown),
                cmocka_unit_test_setup_teardown(test_waiter_survives_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_no_daemon, setup, teardown),
                cmocka_unit_test_setup_teardown(test_client_call_pipelined, setup, teardown),
                cmocka_unit_test_setup_teardown(test_default_address, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

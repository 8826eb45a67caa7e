/* SPDX-License-Identifier: MIT */
/* agen-etcd-lock: the plain etcd lock recipe, the peer that agend's cluster-scope cycles
 * are measured against (docs/performance.md, "Cluster scope: the etcd lock recipe").
 *
 * The recipe is etcd's own (client/v3/concurrency/mutex.go), on the same client agend uses
 * (daemon/etcd-client.c, so the transport is not what differs):
 *   1. once per contender: a lease, kept alive by the lease keeper;
 *   2. acquire: txn (create_revision(my key) == 0 ? put my key with the lease : get it);
 *      my place in line is the key's create revision;
 *   3. range the lock's prefix sorted by create revision: first = mine → held; else watch
 *      the key just ahead of mine from the range's revision + 1 until it is deleted, and
 *      range again;
 *   4. release: delete my key.
 * N contenders run on one loop, each cycling acquire → release → acquire on one lock.
 * Prints one JSON line: cycles/s, acquire and cycle latency percentiles.
 *
 * With --agend SOCKET --resource NAME the same N contenders cycle through agend instead
 * (mode "agend-cluster"): each is one varlink connection, Acquire{resource} → granted,
 * Release{id} → reply, on a Scope=cluster resource of that agend. Same loop, same clocks,
 * same output, so the two lines of one run compare the recipe with agend on it.
 *
 * --gap S pauses each contender S seconds between a release and its next acquire, so that
 * the acquire is measured alone (nothing of the previous cycle still on its way). */

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <json-c/json.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "etcd-client.h"
#include "etcd-lease.h"
#include "etcd-watch.h"
#include "macro.h"

typedef struct Samples {
        double *v;
        size_t n, cap;
} Samples;

static void sample_add(Samples *s, double x) {
        if (s->n == s->cap) {
                s->cap = s->cap ? s->cap * 2 : 1024;
                s->v = realloc(s->v, s->cap * sizeof(double));
                if (!s->v)
                        abort();
        }
        s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return x < y ? -1 : x > y;
}

static double pct(Samples *s, double p) {
        if (s->n == 0)
                return NAN;
        qsort(s->v, s->n, sizeof(double), cmp_double);
        size_t i = (size_t) ceil(p / 100.0 * (double) s->n);
        return s->v[i ? i - 1 : 0];
}

typedef struct Run Run;

typedef struct Contender {
        Run *run;
        unsigned idx;
        char key[128];
        EtcdLeaseKeeper *keeper;
        int64_t lease;
        int64_t my_rev;
        EtcdWatch *watch;
        char waiting_for[128];
        usec_t t0, t_acq;
        bool holding;
        /* --agend: one varlink connection */
        int fd;
        ev_io io;
        char *rbuf;
        size_t rlen, rcap;
        char lease_id[80];
        bool releasing;
        ev_timer gap;                   /* --gap: the pause before the next acquire */
} Contender;

struct Run {
        struct ev_loop *loop;
        EtcdClient *client;
        char prefix[96];
        Contender *c;
        unsigned n;
        unsigned ready;
        bool measuring, stopping;
        uint64_t cycles, errors, waits;
        char first_error[256];
        Samples acquire, cycle;
};

static void fail(Contender *c, const char *what, int error, const EtcdResult *r) {
        Run *run = c->run;
        run->errors++;
        if (!run->first_error[0])
                snprintf(run->first_error, sizeof(run->first_error), "%s: %s (%s)", what, strerror(-error),
                         r ? strempty(r->message) : "");
}

static void acquire(Contender *c);
static void check_line(Contender *c);
static void agend_acquire(Contender *c);

/* --gap S: each contender waits S after a release before it acquires again, so that
 * nothing of its previous cycle is still on its way (acquire latency alone). */
static double arg_gap;
static bool via_agend;

static void gap_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        Contender *c = container_of(t, Contender, gap);
        if (c->run->stopping)
                return;
        if (via_agend)
                agend_acquire(c);
        else
                acquire(c);
}

static void next_cycle(Contender *c) {
        if (c->run->stopping)
                return;
        if (arg_gap <= 0)
                return via_agend ? agend_acquire(c) : acquire(c);
        ev_timer_init(&c->gap, gap_cb, arg_gap, 0.);
        ev_timer_start(c->run->loop, &c->gap);
}

static void released_cb(EtcdClient *cl, int error, const EtcdResult *r, void *userdata) {
        Contender *c = userdata;
        Run *run = c->run;
        if (error < 0) {
                fail(c, "release", error, r);
                return;
        }
        if (run->measuring) {
                run->cycles++;
                sample_add(&run->cycle, (double) (usec_now(CLOCK_MONOTONIC) - c->t0));
        }
        next_cycle(c);
}

static void held(Contender *c) {
        Run *run = c->run;
        c->t_acq = usec_now(CLOCK_MONOTONIC);
        if (run->measuring)
                sample_add(&run->acquire, (double) (c->t_acq - c->t0));
        /* Release at once: the cycle is what is measured. */
        EtcdOp del = { .type = ETCD_OP_DELETE, .key = c->key };
        EtcdTxn t = { .success = &del, .n_success = 1 };
        if (etcd_txn(run->client, &t, released_cb, c, NULL) < 0)
                fail(c, "release", -ENOMEM, NULL);
}

static void watch_cb(EtcdWatch *w, EtcdWatchStatus s, const EtcdEvent *ev, size_t n, int64_t rev, int error,
                     void *userdata) {
        Contender *c = userdata;
        bool gone = false;
        if (s == ETCD_WATCH_EVENTS)
                for (size_t i = 0; i < n; i++)
                        if (ev[i].type == ETCD_EVENT_DELETE && strcmp(ev[i].kv.key, c->waiting_for) == 0)
                                gone = true;
        if (s == ETCD_WATCH_COMPACTED)
                gone = true;    /* re-read the line */
        if (!gone)
                return;
        c->watch = etcd_watch_free(c->watch);
        check_line(c);
}

static void line_cb(EtcdClient *cl, int error, const EtcdResult *r, void *userdata) {
        Contender *c = userdata;
        Run *run = c->run;
        if (error < 0) {
                fail(c, "range", error, r);
                if (!run->stopping)
                        check_line(c);
                return;
        }
        const EtcdOpResult *op = &r->ops[0];
        if (op->n_kvs > 0 && op->kvs[0].create_revision == c->my_rev) {
                held(c);
                return;
        }
        /* The key just ahead of mine. */
        const EtcdKv *ahead = NULL;
        for (size_t i = 0; i < op->n_kvs; i++)
                if (op->kvs[i].create_revision < c->my_rev)
                        ahead = &op->kvs[i];
        if (!ahead) {
                fail(c, "line", -ENOENT, NULL);       /* my key is gone: the lease expired */
                return;
        }
        run->waits++;
        snprintf(c->waiting_for, sizeof(c->waiting_for), "%s", ahead->key);
        int k = etcd_watch_new(run->client, c->waiting_for, r->header.revision + 1, watch_cb, c, &c->watch);
        if (k < 0)
                fail(c, "watch", k, NULL);
}

static void check_line(Contender *c) {
        EtcdOp op = { .type = ETCD_OP_RANGE, .key = c->run->prefix, .prefix = true, .sort_by_create = true };
        int k = etcd_range(c->run->client, &op, line_cb, c, NULL);
        if (k < 0)
                fail(c, "range", k, NULL);
}

static void enqueued_cb(EtcdClient *cl, int error, const EtcdResult *r, void *userdata) {
        Contender *c = userdata;
        if (error < 0) {
                fail(c, "enqueue", error, r);
                if (!c->run->stopping)
                        acquire(c);
                return;
        }
        if (r->succeeded)
                c->my_rev = r->header.revision;
        else if (r->n_ops > 0 && r->ops[0].n_kvs > 0)
                c->my_rev = r->ops[0].kvs[0].create_revision;
        check_line(c);
}

static void acquire(Contender *c) {
        c->t0 = usec_now(CLOCK_MONOTONIC);
        EtcdCompare cmp = { .key = c->key, .target = ETCD_TARGET_CREATE, .result = ETCD_EQUAL, .number = 0 };
        EtcdOp put = { .type = ETCD_OP_PUT, .key = c->key, .value = "bench", .lease = c->lease };
        EtcdOp get = { .type = ETCD_OP_RANGE, .key = c->key };
        EtcdTxn t = { .compare = &cmp, .n_compare = 1, .success = &put, .n_success = 1, .failure = &get,
                      .n_failure = 1 };
        if (etcd_txn(c->run->client, &t, enqueued_cb, c, NULL) < 0)
                fail(c, "enqueue", -ENOMEM, NULL);
}

static void keeper_cb(EtcdLeaseKeeper *k, EtcdLeaseState s, int64_t id, int error, void *userdata) {
        Contender *c = userdata;
        Run *run = c->run;
        if (s == ETCD_LEASE_ALIVE && c->lease == 0) {
                c->lease = id;
                if (++run->ready == run->n)
                        for (unsigned i = 0; i < run->n; i++)
                                acquire(&run->c[i]);
        } else if (s == ETCD_LEASE_LOST)
                fail(c, "lease lost", error, NULL);
}

static void phase_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Run *run = w->data;
        if (!run->measuring && !run->stopping) {
                run->measuring = true;
                run->cycles = 0;
                return;
        }
        run->measuring = false;
        run->stopping = true;
        ev_break(loop, EVBREAK_ALL);
}


/* ---- the same contenders through agend (--agend) ---- */

__attribute__((format(printf, 2, 3))) static void agend_send(Contender *c, const char *fmt, ...) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        if (n < 0 || (size_t) n >= sizeof(buf) || write(c->fd, buf, (size_t) n + 1) != n + 1) {
                /* A short write on a fresh unix socket with one call in flight: not expected. */
                fail(c, "write", -errno ?: -EIO, NULL);
                c->run->stopping = true;
        }
}

static const char *agend_resource;

static void agend_acquire(Contender *c) {
        c->t0 = usec_now(CLOCK_MONOTONIC);
        c->releasing = false;
        agend_send(c, "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"%s\"}}",
                   agend_resource);
}

static void agend_reply(Contender *c, const char *msg) {
        Run *run = c->run;
        struct json_object *j = json_tokener_parse(msg), *p = NULL, *e = NULL, *l = NULL, *id = NULL;
        if (!j || json_object_object_get_ex(j, "error", &e)) {
                EtcdResult r = { .message = (char *) (e ? json_object_get_string(e) : "bad reply") };
                fail(c, c->releasing ? "release" : "acquire", -EPROTO, &r);
                json_object_put(j);
                if (!run->stopping)
                        agend_acquire(c);
                return;
        }
        if (!c->releasing) {
                if (!json_object_object_get_ex(j, "parameters", &p) || !json_object_object_get_ex(p, "lease", &l) ||
                    !json_object_object_get_ex(l, "id", &id)) {
                        fail(c, "acquire", -EPROTO, NULL);
                        json_object_put(j);
                        return;
                }
                snprintf(c->lease_id, sizeof(c->lease_id), "%s", json_object_get_string(id));
                json_object_put(j);
                c->t_acq = usec_now(CLOCK_MONOTONIC);
                if (run->measuring)
                        sample_add(&run->acquire, (double) (c->t_acq - c->t0));
                c->releasing = true;
                agend_send(c, "{\"method\":\"io.agend.Lease.Release\",\"parameters\":{\"id\":\"%s\"}}",
                           c->lease_id);
                return;
        }
        json_object_put(j);
        if (run->measuring) {
                run->cycles++;
                sample_add(&run->cycle, (double) (usec_now(CLOCK_MONOTONIC) - c->t0));
        }
        next_cycle(c);
}

static void agend_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        Contender *c = container_of(w, Contender, io);
        if (c->rcap - c->rlen < 4096) {
                c->rcap = c->rcap * 2 + 8192;
                c->rbuf = realloc(c->rbuf, c->rcap);
                if (!c->rbuf)
                        abort();
        }
        ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        if (n <= 0) {
                if (n < 0 && errno == EAGAIN)
                        return;
                fail(c, "connection", n < 0 ? -errno : -EPIPE, NULL);
                ev_io_stop(loop, w);
                return;
        }
        c->rlen += (size_t) n;
        char *start = c->rbuf, *nul;
        while ((nul = memchr(start, 0, c->rlen - (size_t) (start - c->rbuf)))) {
                agend_reply(c, start);
                start = nul + 1;
        }
        c->rlen -= (size_t) (start - c->rbuf);
        memmove(c->rbuf, start, c->rlen);
}

static int agend_connect(Contender *c, const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (c->fd < 0 || connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        ev_io_init(&c->io, agend_io_cb, c->fd, EV_READ);
        ev_io_start(c->run->loop, &c->io);
        return 0;
}

static void usage(void) {
        printf("agen-etcd-lock --endpoints 'URL...' [--clients N] [--duration S] [--warmup S] [--label L]\n"
               "agen-etcd-lock --agend SOCKET --resource NAME [--clients N] [--duration S] [--warmup S] [--label L]\n"
               "  [--gap S]: pause S seconds after each release (acquire latency alone)\n"
               "  The etcd lock recipe (lease + txn on create revision + wait for the key ahead),\n"
               "  N contenders on one lock; or the same contenders on a Scope=cluster resource of\n"
               "  agend. Prints one JSON line.\n");
}

/* Warm-up, then the measured phase (phase_cb stops the loop); the measured seconds. */
static double run_measured(Run *run, double duration, double warmup) {
        ev_timer phase;
        ev_timer_init(&phase, phase_cb, warmup, duration);
        phase.data = run;
        ev_timer_start(run->loop, &phase);
        usec_t t0 = usec_now(CLOCK_MONOTONIC);
        ev_run(run->loop, 0);
        double secs = (double) (usec_now(CLOCK_MONOTONIC) - t0) / USEC_PER_SEC - warmup;
        ev_timer_stop(run->loop, &phase);      /* it repeats, and lives on this stack */
        return secs;
}

static int run_agend(const char *socket_path, unsigned clients, double duration, double warmup, const char *label) {
        if (!agend_resource || clients < 1 || clients > 1024 || duration <= 0) {
                usage();
                return 2;
        }
        Run run = { .loop = ev_default_loop(0), .n = clients };
        run.c = calloc(clients, sizeof(Contender));
        if (!run.c)
                return 1;
        for (unsigned i = 0; i < clients; i++) {
                Contender *c = &run.c[i];
                c->run = &run;
                c->idx = i;
                int k = agend_connect(c, socket_path);
                if (k < 0) {
                        fprintf(stderr, "agen-etcd-lock: cannot connect to %s: %s\n", socket_path, strerror(-k));
                        return 1;
                }
        }
        for (unsigned i = 0; i < clients; i++)
                agend_acquire(&run.c[i]);
        double secs = run_measured(&run, duration, warmup);
        printf("{\"mode\":\"agend-cluster\",\"label\":\"%s\",\"clients\":%u,\"gap\":%g,\"secs\":%.3f,"
               "\"cycles\":%" PRIu64 ",\"rate\":%.1f,\"acquire_p50_us\":%.0f,\"acquire_p99_us\":%.0f,"
               "\"cycle_p50_us\":%.0f,\"cycle_p99_us\":%.0f,\"errors\":%" PRIu64 ",\"first_error\":\"%s\"}\n",
               label, clients, arg_gap, secs, run.cycles, (double) run.cycles / secs, pct(&run.acquire, 50),
               pct(&run.acquire, 99), pct(&run.cycle, 50), pct(&run.cycle, 99), run.errors, run.first_error);
        /* Closing the connections releases what they hold (agend deletes the keys). */
        for (unsigned i = 0; i < clients; i++) {
                ev_io_stop(run.loop, &run.c[i].io);
                close(run.c[i].fd);
                free(run.c[i].rbuf);
        }
        free(run.c);
        free(run.acquire.v);
        free(run.cycle.v);
        return run.errors > 0 ? 1 : 0;
}

int main(int argc, char **argv) {
        const char *endpoints = NULL, *label = NULL, *agend = NULL;
        unsigned clients = 1;
        double duration = 5, warmup = 1;
        static const struct option opts[] = {
                { "endpoints", required_argument, NULL, 'e' }, { "clients", required_argument, NULL, 'c' },
                { "duration", required_argument, NULL, 'd' },  { "warmup", required_argument, NULL, 'w' },
                { "label", required_argument, NULL, 'l' },     { "help", no_argument, NULL, 'h' },
                { "agend", required_argument, NULL, 'a' },     { "resource", required_argument, NULL, 'r' },
                { "gap", required_argument, NULL, 'g' },
                {},
        };
        int ch;
        while ((ch = getopt_long(argc, argv, "", opts, NULL)) >= 0)
                switch (ch) {
                case 'e': endpoints = optarg; break;
                case 'c': clients = (unsigned) atoi(optarg); break;
                case 'd': duration = atof(optarg); break;
                case 'w': warmup = atof(optarg); break;
                case 'l': label = optarg; break;
                case 'a': agend = optarg; via_agend = true; break;
                case 'g': arg_gap = atof(optarg); break;
                case 'r': agend_resource = optarg; break;
                case 'h': usage(); return 0;
                default: usage(); return 2;
                }
        if (agend)
                return run_agend(agend, clients, duration, warmup, label ?: "agend-cluster");
        if (!label)
                label = "etcd-lock";
        if (!endpoints || clients < 1 || clients > 1024 || duration <= 0) {
                usage();
                return 2;
        }
        char *eps[16], *copy = strdup(endpoints), *save = NULL;
        size_t n_eps = 0;
        for (char *w = strtok_r(copy, " ", &save); w && n_eps < 16; w = strtok_r(NULL, " ", &save))
                eps[n_eps++] = w;
        eps[n_eps] = NULL;

        Run run = { .loop = ev_default_loop(0), .n = clients };
        snprintf(run.prefix, sizeof(run.prefix), "/bench-lock/%s-%d/", label, (int) getpid());
        EtcdClientOptions co = { .endpoints = eps, .n_endpoints = n_eps };
        if (etcd_client_new(run.loop, &co, &run.client) < 0) {
                fprintf(stderr, "agen-etcd-lock: cannot set up the client\n");
                return 1;
        }
        run.c = calloc(clients, sizeof(Contender));
        for (unsigned i = 0; i < clients; i++) {
                Contender *c = &run.c[i];
                c->run = &run;
                c->idx = i;
                snprintf(c->key, sizeof(c->key), "%sc%05u", run.prefix, i);
                EtcdLeaseOptions lo = { .ttl_sec = 10 };
                if (etcd_lease_keeper_new(run.client, &lo, keeper_cb, c, &c->keeper) < 0)
                        return 1;
        }
        double secs = run_measured(&run, duration, warmup);

        printf("{\"mode\":\"etcd-lock\",\"label\":\"%s\",\"endpoints\":%zu,\"clients\":%u,\"gap\":%g,\"secs\":%.3f,"
               "\"cycles\":%" PRIu64 ",\"rate\":%.1f,\"acquire_p50_us\":%.0f,\"acquire_p99_us\":%.0f,"
               "\"cycle_p50_us\":%.0f,\"cycle_p99_us\":%.0f,\"waits\":%" PRIu64 ",\"errors\":%" PRIu64
               ",\"first_error\":\"%s\"}\n",
               label, n_eps, clients, arg_gap, secs, run.cycles, (double) run.cycles / secs, pct(&run.acquire, 50),
               pct(&run.acquire, 99), pct(&run.cycle, 50), pct(&run.cycle, 99), run.waits, run.errors,
               run.first_error);
        /* Calls still in flight end during the teardown (cancelled): not errors of the run. */
        uint64_t errors = run.errors;
        for (unsigned i = 0; i < clients; i++) {
                etcd_watch_free(run.c[i].watch);
                etcd_lease_keeper_free(run.c[i].keeper, true);
        }
        /* Let the revokes go out (they delete the keys), bounded. */
        ev_timer done;
        ev_timer_init(&done, phase_cb, 1.0, 0.);
        done.data = &run;
        ev_timer_start(run.loop, &done);
        ev_run(run.loop, 0);
        etcd_client_free(run.client);
        free(run.c);
        free(run.acquire.v);
        free(run.cycle.v);
        free(copy);
        return errors > 0 ? 1 : 0;
}

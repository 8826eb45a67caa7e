/* SPDX-License-Identifier: MIT */
/* Contention: N clients on one resource (a mutex, or a counted resource), each acquires
 * (waiting), releases at once, and acquires again. Measures grants/s and fairness (max
 * wait / mean wait), and checks that the queue order held:
 *
 * A monitor connection calls List(resource) every 20 ms. Each snapshot lists the waiters
 * with their 1-based positions; every Acquire carries a description "c<client>-<seq>" so
 * a waiter in a snapshot is known. Tokens are strictly increasing in grant order, so FIFO
 * holds iff, in every snapshot, a waiter at a smaller position got a smaller token than
 * every waiter behind it. Comparing neighbours suffices. */

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

typedef struct Cont Cont;

typedef struct CClient {
        Conn conn;
        Cont *ct;
        unsigned idx;
        unsigned step; /* 0 = Acquire sent, 1 = Release sent */
        uint64_t seq;
        usec_t t_send;
        char id[80];
        long long *tokens; /* by seq; 0 = not granted */
        size_t ntok;
        bool busy;
} CClient;

typedef struct Pair {
        uint32_t client;
        uint32_t seq;
} Pair;

struct Cont {
        const Opts *o;
        struct ev_loop *loop;
        CClient *cl;
        Conn mon;
        bool mon_busy;
        ev_timer t_mon, t_warm, t_end, t_drain;
        bool measuring, stopping;
        unsigned busy;
        usec_t t_measure;
        uint64_t grants, errors;
        double secs;
        Samples wait;
        Pair *snap;         /* all snapshots, each ended by client = UINT32_MAX */
        size_t nsnap, capsnap;
        unsigned snapshots;
        unsigned max_waiters;
        char first_error[256];
};

static void ct_error(Cont *ct, const char *what, const char *msg) {
        if (ct->errors++ == 0)
                snprintf(ct->first_error, sizeof(ct->first_error), "%s: %.200s", what, msg);
        if (arg_verbose)
                logf_("agen-bench: %s: %.300s\n", what, msg);
}

static void snap_add(Cont *ct, uint32_t client, uint32_t seq) {
        if (ct->nsnap == ct->capsnap) {
                ct->capsnap = ct->capsnap ? ct->capsnap * 2 : 4096;
                ct->snap = xrealloc(ct->snap, ct->capsnap * sizeof(Pair));
        }
        ct->snap[ct->nsnap++] = (Pair) { client, seq };
}

static void cc_acquire(CClient *c) {
        Cont *ct = c->ct;

        if (ct->stopping)
                return;
        c->busy = true;
        ct->busy++;
        c->step = 0;
        c->t_send = now_usec();
        conn_vl(&c->conn,
                "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"%s\",\"description\":\"c%u-%llu\"}}",
                ct->o->resource, c->idx, (unsigned long long) c->seq);
}

static void cc_msg(Conn *conn, char *msg, size_t len) {
        CClient *c = conn->userdata;
        Cont *ct = c->ct;

        if (json_scan_has(msg, "error")) {
                ct_error(ct, c->step == 0 ? "acquire" : "release", msg);
                c->busy = false;
                ct->busy--;
                return; /* this client stops */
        }
        if (c->step == 0) {
                long long token;
                if (json_scan_str(msg, "id", c->id, sizeof(c->id)) < 0 || !json_scan_int(msg, "token", &token)) {
                        ct_error(ct, "acquire: no grant", msg);
                        c->busy = false;
                        ct->busy--;
                        return;
                }
                if (c->seq >= c->ntok) {
                        size_t n = c->ntok ? c->ntok * 2 : 1024;
                        c->tokens = xrealloc(c->tokens, n * sizeof(long long));
                        memset(c->tokens + c->ntok, 0, (n - c->ntok) * sizeof(long long));
                        c->ntok = n;
                }
                c->tokens[c->seq] = token;
                if (ct->measuring) {
                        ct->grants++;
                        samples_add(&ct->wait, (double) (now_usec() - c->t_send));
                }
                c->step = 1;
                conn_vl(&c->conn, "{\"method\":\"io.agend.Lease.Release\",\"parameters\":{\"id\":\"%s\"}}", c->id);
                return;
        }
        c->busy = false;
        ct->busy--;
        c->seq++;
        if (ct->stopping) {
                if (ct->busy == 0)
                        ev_break(ct->loop, EVBREAK_ONE);
                return;
        }
        cc_acquire(c);
}

static void mon_msg(Conn *conn, char *msg, size_t len) {
        Cont *ct = conn->userdata;
        json_object *root = json_tokener_parse(msg), *params, *waiters;
        unsigned n = 0;

        ct->mon_busy = false;
        if (!root || !json_object_object_get_ex(root, "parameters", &params) ||
            !json_object_object_get_ex(params, "waiters", &waiters) ||
            !json_object_is_type(waiters, json_type_array)) {
                ct_error(ct, "List", msg);
                json_object_put(root);
                return;
        }
        size_t nw = json_object_array_length(waiters);
        Pair *tmp = xcalloc(nw, sizeof(Pair));
        for (size_t i = 0; i < nw; i++) {
                json_object *w = json_object_array_get_idx(waiters, i), *pos, *desc;
                unsigned cli;
                unsigned long long seq;
                if (!json_object_object_get_ex(w, "position", &pos) ||
                    !json_object_object_get_ex(w, "description", &desc) ||
                    sscanf(json_object_get_string(desc), "c%u-%llu", &cli, &seq) != 2)
                        continue;
                int p = json_object_get_int(pos);
                if (p < 1 || (size_t) p > nw) {
                        ct_error(ct, "List: position out of range", msg);
                        continue;
                }
                tmp[p - 1] = (Pair) { cli, (uint32_t) seq + 1 }; /* +1: 0 marks a hole */
                n++;
        }
        for (size_t i = 0; i < nw; i++)
                if (tmp[i].seq > 0)
                        snap_add(ct, tmp[i].client, tmp[i].seq - 1);
        snap_add(ct, UINT32_MAX, 0);
        free(tmp);
        ct->snapshots++;
        if (n > ct->max_waiters)
                ct->max_waiters = n;
        json_object_put(root);
}

static void mon_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Cont *ct = container_of(w, Cont, t_mon);

        if (ct->mon_busy || ct->mon.dead)
                return;
        ct->mon_busy = true;
        conn_vl(&ct->mon, "{\"method\":\"io.agend.Lease.List\",\"parameters\":{\"resource\":\"%s\"}}",
                ct->o->resource);
        conn_flush(&ct->mon);
}

static void ct_warm_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Cont *ct = container_of(w, Cont, t_warm);

        ct->measuring = true;
        ct->t_measure = now_usec();
}

static void ct_end_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Cont *ct = container_of(w, Cont, t_end);

        ct->secs = (double) (now_usec() - ct->t_measure) / 1e6;
        ct->measuring = false;
        ct->stopping = true;
        ev_timer_stop(loop, &ct->t_mon);
        if (ct->busy == 0)
                ev_break(loop, EVBREAK_ONE);
        ev_timer_start(loop, &ct->t_drain);
}

static void ct_drain_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        ev_break(loop, EVBREAK_ONE);
}

static long long token_of(Cont *ct, Pair p) {
        if (p.client >= ct->o->clients)
                return -1;
        CClient *c = &ct->cl[p.client];
        if (p.seq >= c->ntok)
                return 0;
        return c->tokens[p.seq];
}

int mode_contention(const Opts *o) {
        Cont ct = { .o = o };
        unsigned long checked = 0, violations = 0;
        int ret = 0;

        ct.loop = ev_loop_new(EVFLAG_AUTO);
        ct.cl = xcalloc(o->clients, sizeof(CClient));
        raise_fd_limit(o->clients + 64);

        int fd = connect_unix(o->socket, true);
        if (fd < 0) {
                logf_("agen-bench: connect: %s\n", strerror(-fd));
                ret = fd;
                goto finish;
        }
        conn_init(&ct.mon, ct.loop, fd, PROTO_VARLINK, mon_msg, &ct);
        for (unsigned i = 0; i < o->clients; i++) {
                fd = connect_unix(o->socket, true);
                if (fd < 0) {
                        logf_("agen-bench: connect: %s\n", strerror(-fd));
                        ret = fd;
                        goto finish;
                }
                ct.cl[i].ct = &ct;
                ct.cl[i].idx = i;
                conn_init(&ct.cl[i].conn, ct.loop, fd, PROTO_VARLINK, cc_msg, &ct.cl[i]);
        }

        ev_timer_init(&ct.t_mon, mon_cb, 0.02, 0.02);
        ev_timer_init(&ct.t_warm, ct_warm_cb, o->warmup, 0);
        ev_timer_init(&ct.t_end, ct_end_cb, o->warmup + o->duration, 0);
        ev_timer_init(&ct.t_drain, ct_drain_cb, 10, 0);
        ev_timer_start(ct.loop, &ct.t_mon);
        ev_timer_start(ct.loop, &ct.t_warm);
        ev_timer_start(ct.loop, &ct.t_end);
        for (unsigned i = 0; i < o->clients; i++) {
                cc_acquire(&ct.cl[i]);
                conn_flush(&ct.cl[i].conn);
        }
        ev_run(ct.loop, 0);

        for (unsigned i = 0; i < o->clients; i++)
                if (ct.cl[i].conn.dead && ct.cl[i].conn.error)
                        ct_error(&ct, "connection lost", strerror(-ct.cl[i].conn.error));

        /* Queue order: neighbours in every snapshot, both granted, tokens increasing. */
        Pair prev = { UINT32_MAX, 0 };
        for (size_t i = 0; i < ct.nsnap; i++) {
                Pair p = ct.snap[i];
                if (p.client == UINT32_MAX) {
                        prev = p;
                        continue;
                }
                if (prev.client != UINT32_MAX) {
                        long long a = token_of(&ct, prev), b = token_of(&ct, p);
                        if (a > 0 && b > 0) {
                                checked++;
                                if (a >= b) {
                                        if (violations++ < 5)
                                                logf_("agen-bench: queue order broken: c%u-%u (token %lld) was ahead "
                                                      "of c%u-%u (token %lld)\n",
                                                      prev.client, prev.seq, a, p.client, p.seq, b);
                                }
                        }
                }
                prev = p;
        }

        double mean = samples_mean(&ct.wait), mx = samples_max(&ct.wait);
        Out out;
        out_begin(&out, "contention", o->label);
        out_str(&out, "resource", o->resource);
        out_int(&out, "capacity", o->capacity);
        out_int(&out, "clients", o->clients);
        out_num(&out, "secs", ct.secs);
        out_int(&out, "grants", (long long) ct.grants);
        out_num(&out, "grants_per_s", ct.secs > 0 ? (double) ct.grants / ct.secs : 0);
        out_num(&out, "wait_mean_us", mean);
        out_num(&out, "wait_p50_us", samples_pct(&ct.wait, 50));
        out_num(&out, "wait_p99_us", samples_pct(&ct.wait, 99));
        out_num(&out, "wait_max_us", mx);
        out_num(&out, "fairness_max_over_mean", mx / mean);
        out_int(&out, "snapshots", ct.snapshots);
        out_int(&out, "max_waiters_seen", ct.max_waiters);
        out_int(&out, "order_checked", (long long) checked);
        out_int(&out, "order_violations", (long long) violations);
        out_int(&out, "errors", (long long) ct.errors);
        if (ct.errors)
                out_str(&out, "first_error", ct.first_error);
        out_end(&out);
        if (!o->quiet)
                logf_("contention %s (capacity %u), %u clients: %.0f grants/s, wait mean %.0f us max %.0f us "
                      "(max/mean %.1f), order: %lu pairs checked in %u snapshots, %lu violations, errors %llu\n",
                      o->resource, o->capacity, o->clients, ct.secs > 0 ? (double) ct.grants / ct.secs : 0, mean,
                      mx, mx / mean, checked, ct.snapshots, violations, (unsigned long long) ct.errors);
        if (ct.errors || violations || ct.grants == 0)
                ret = -EPROTO;
        /* Order must have been checked at all, or the check proves nothing. */
        if (o->clients > o->capacity && checked == 0) {
                logf_("agen-bench: queue order could not be checked (no waiters seen by List)\n");
                ret = -EPROTO;
        }

finish:
        ev_timer_stop(ct.loop, &ct.t_mon);
        ev_timer_stop(ct.loop, &ct.t_warm);
        ev_timer_stop(ct.loop, &ct.t_end);
        ev_timer_stop(ct.loop, &ct.t_drain);
        if (ct.mon.loop)
                conn_done(&ct.mon);
        for (unsigned i = 0; i < o->clients; i++) {
                if (ct.cl[i].conn.loop)
                        conn_done(&ct.cl[i].conn);
                free(ct.cl[i].tokens);
        }
        free(ct.cl);
        free(ct.snap);
        samples_free(&ct.wait);
        ev_loop_destroy(ct.loop);
        return ret;
}

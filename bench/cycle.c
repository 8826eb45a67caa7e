/* SPDX-License-Identifier: MIT */
/* Lease cycles: acquire, then release, then the next acquire only after the release
 * reply. N clients, each one connection with K cycles in flight on K distinct
 * resources/keys (pipelined: replies come in call order, so a FIFO of slot numbers per
 * connection tells which slot a reply belongs to).
 *
 * agend:  Acquire{resource} -> granted {lease.id}; Release{id} -> {}
 * Redis:  SET key token NX PX 30000 -> +OK; EVALSHA <compare-and-delete> 1 key token -> :1
 * etcd:   JSON gateway over loopback HTTP/1.1: POST /v3/lease/grant {TTL:30} -> ID;
 *         POST /v3/kv/txn (create_revision(key) == 0 ? put key lease=ID) -> succeeded;
 *         POST /v3/lease/revoke {ID} (deletes the key with it) */

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"

#define REDIS_UNLOCK_SCRIPT                                                                        \
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"

typedef struct Run Run;
typedef struct Client Client;

typedef struct Slot {
        Client *cl;
        unsigned idx;
        unsigned step;
        bool busy;
        bool failed;
        usec_t t0, t_acq;
        uint64_t n;
        char key[64];   /* resource name, Redis key, or etcd key (base64) */
        char id[80];    /* agend lease id, etcd lease ID */
        char token[32]; /* Redis value */
        ev_timer pace;
} Slot;

struct Client {
        Conn conn;
        Run *run;
        unsigned idx;
        Slot *slots;
        unsigned *fifo; /* slots awaiting a reply, in call order */
        unsigned fhead, flen, fcap;
};

struct Run {
        const Opts *o;
        struct ev_loop *loop;
        Client *clients;
        CycleResult *r;
        bool measuring, stopping;
        unsigned busy;
        usec_t t_measure;
        usec_t cpu0, ccpu0;
        char sha[64];
        ev_timer t_warm, t_end, t_drain;
};

static void run_error(Run *run, const char *what, const char *msg) {
        if (run->r->errors++ == 0)
                snprintf(run->r->first_error, sizeof(run->r->first_error), "%s: %.200s", what, msg);
        if (arg_verbose)
                logf_("agen-bench: %s: %.300s\n", what, msg);
}

static void fifo_push(Client *cl, unsigned slot) {
        if (cl->flen == cl->fcap)
                abort(); /* cannot happen: one outstanding call per slot */
        cl->fifo[(cl->fhead + cl->flen++) % cl->fcap] = slot;
}

static int fifo_pop(Client *cl) {
        if (cl->flen == 0)
                return -1;
        unsigned s = cl->fifo[cl->fhead];
        cl->fhead = (cl->fhead + 1) % cl->fcap;
        cl->flen--;
        return (int) s;
}

static void slot_send(Slot *s) {
        Client *cl = s->cl;
        Conn *c = &cl->conn;
        char body[512];

        switch (cl->run->o->target) {
        case TARGET_AGEND:
                if (s->step == 0)
                        conn_vl(c, "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"%s\"}}",
                                s->key);
                else
                        conn_vl(c, "{\"method\":\"io.agend.Lease.Release\",\"parameters\":{\"id\":\"%s\"}}", s->id);
                break;
        case TARGET_REDIS:
                if (s->step == 0) {
                        snprintf(s->token, sizeof(s->token), "%u.%u.%llu", cl->idx, s->idx,
                                 (unsigned long long) s->n);
                        const char *argv[] = { "SET", s->key, s->token, "NX", "PX", "30000" };
                        conn_resp(c, 6, argv);
                } else {
                        const char *argv[] = { "EVALSHA", cl->run->sha, "1", s->key, s->token };
                        conn_resp(c, 5, argv);
                }
                break;
        case TARGET_ETCD:
                if (s->step == 0)
                        conn_http_post(c, "/v3/lease/grant", "{\"TTL\":30}");
                else if (s->step == 1) {
                        char val[16];
                        base64_encode("held", 4, val);
                        snprintf(body, sizeof(body),
                                 "{\"compare\":[{\"key\":\"%s\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                                 "\"create_revision\":\"0\"}],\"success\":[{\"request_put\":{\"key\":\"%s\","
                                 "\"value\":\"%s\",\"lease\":\"%s\"}}]}",
                                 s->key, s->key, val, s->id);
                        conn_http_post(c, "/v3/kv/txn", body);
                } else {
                        snprintf(body, sizeof(body), "{\"ID\":\"%s\"}", s->id);
                        conn_http_post(c, "/v3/lease/revoke", body);
                }
                break;
        }
        fifo_push(cl, s->idx);
}

static void slot_start(Slot *s) {
        Run *run = s->cl->run;

        if (run->stopping)
                return;
        s->busy = true;
        run->busy++;
        s->step = 0;
        s->failed = false;
        s->t0 = now_usec();
        slot_send(s);
}

static void pace_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Slot *s = container_of(w, Slot, pace);

        slot_start(s);
        conn_flush(&s->cl->conn);
}

static void slot_finish(Slot *s, bool ok) {
        Run *run = s->cl->run;
        usec_t now = now_usec();

        s->busy = false;
        run->busy--;
        s->n++;
        if (ok && run->measuring) {
                run->r->cycles++;
                samples_add(&run->r->cycle, (double) (now - s->t0));
                samples_add(&run->r->acquire, (double) (s->t_acq - s->t0));
        }
        if (run->stopping) {
                if (run->busy == 0)
                        ev_break(run->loop, EVBREAK_ONE);
                return;
        }
        if (run->o->rate > 0) {
                /* Open loop per client: the next cycle starts one period after this one
                 * started, or at once if it is already late. */
                double period = 1.0 / run->o->rate;
                double wait = period - (double) (now - s->t0) / 1e6;
                ev_timer_set(&s->pace, wait > 0 ? wait : 0, 0);
                ev_timer_start(run->loop, &s->pace);
        } else
                slot_start(s);
}

static void client_msg(Conn *c, char *msg, size_t len) {
        Client *cl = c->userdata;
        Run *run = cl->run;
        int si = fifo_pop(cl);

        if (si < 0) {
                run_error(run, "reply without a call", msg);
                return;
        }
        Slot *s = &cl->slots[si];
        bool ok = true;

        switch (run->o->target) {
        case TARGET_AGEND:
                if (json_scan_has(msg, "error")) {
                        run_error(run, s->step == 0 ? "acquire" : "release", msg);
                        ok = false;
                } else if (s->step == 0) {
                        char state[32];
                        if (json_scan_str(msg, "state", state, sizeof(state)) < 0 || strcmp(state, "granted") != 0 ||
                            json_scan_str(msg, "id", s->id, sizeof(s->id)) < 0) {
                                run_error(run, "acquire: no grant", msg);
                                ok = false;
                        }
                }
                break;
        case TARGET_REDIS:
                if (s->step == 0 && strncmp(msg, "+OK", 3) != 0) {
                        run_error(run, "SET NX", msg);
                        ok = false;
                } else if (s->step == 1 && strncmp(msg, ":1", 2) != 0) {
                        run_error(run, "EVALSHA unlock", msg);
                        ok = false;
                }
                break;
        case TARGET_ETCD:
                if (c->http_status != 200) {
                        run_error(run, s->step == 0 ? "lease grant" : s->step == 1 ? "txn" : "lease revoke", msg);
                        ok = false;
                } else if (s->step == 0) {
                        long long id;
                        if (!json_scan_int(msg, "ID", &id)) {
                                run_error(run, "lease grant: no ID", msg);
                                ok = false;
                        } else
                                snprintf(s->id, sizeof(s->id), "%lld", id);
                } else if (s->step == 1 && !strstr(msg, "\"succeeded\":true")) {
                        run_error(run, "txn: key exists", msg);
                        ok = false;
                }
                break;
        }

        unsigned last = run->o->target == TARGET_ETCD ? 2 : 1;
        if (!ok) {
                /* A failed step ends the cycle. For a failed etcd txn the lease is still
                 * revoked, so the key cannot stay behind. */
                if (run->o->target == TARGET_ETCD && s->step == 1) {
                        s->failed = true;
                        s->step = 2;
                        slot_send(s);
                        return;
                }
                slot_finish(s, false);
                return;
        }
        if (s->step == last - 1)
                s->t_acq = now_usec();
        if (s->step == last) {
                slot_finish(s, !s->failed);
                return;
        }
        s->step++;
        slot_send(s);
        (void) len;
}

/* agend's wal_bytes and commits now, from Status (-1 if not known). */
static void agend_counters(const Opts *o, long long *wal, long long *commits) {
        *wal = *commits = -1;
        if (o->target != TARGET_AGEND || !o->socket)
                return;
        char *reply = vl_call_once(o->socket, "{\"method\":\"io.agend.Lease.Status\"}", 2 * USEC_PER_SEC);
        if (!reply)
                return;
        if (!json_scan_int(reply, "wal_bytes", wal))
                *wal = -1;
        if (!json_scan_int(reply, "commits", commits))
                *commits = -1;
        free(reply);
}

static void warm_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Run *run = container_of(w, Run, t_warm);

        agend_counters(run->o, &run->r->wal0, &run->r->commits0);
        run->measuring = true;
        run->t_measure = now_usec();
        if (run->o->server_pid > 0)
                (void) proc_cpu_usec(run->o->server_pid, &run->cpu0);
        run->ccpu0 = self_cpu_usec();
}

static void end_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Run *run = container_of(w, Run, t_end);
        usec_t cpu1 = 0;

        run->r->secs = (double) (now_usec() - run->t_measure) / 1e6;
        if (run->o->server_pid > 0 && proc_cpu_usec(run->o->server_pid, &cpu1) == 0)
                run->r->server_cpu = cpu1 - run->cpu0;
        run->r->client_cpu = self_cpu_usec() - run->ccpu0;
        agend_counters(run->o, &run->r->wal1, &run->r->commits1);
        run->measuring = false;
        run->stopping = true;
        for (unsigned i = 0; i < run->o->clients; i++)
                for (unsigned j = 0; j < run->o->inflight; j++)
                        if (ev_is_active(&run->clients[i].slots[j].pace))
                                ev_timer_stop(loop, &run->clients[i].slots[j].pace);
        if (run->busy == 0)
                ev_break(loop, EVBREAK_ONE);
        ev_timer_start(loop, &run->t_drain);
}

static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        ev_break(loop, EVBREAK_ONE);
}

static int redis_load_script(Run *run, int fd) {
        Conn c;
        char *p;

        /* One blocking call before the loop starts; the sha is the same on every connection. */
        conn_init(&c, run->loop, fd, PROTO_RESP, NULL, NULL);
        ev_io_stop(run->loop, &c.io);
        const char *argv[] = { "SCRIPT", "LOAD", REDIS_UNLOCK_SCRIPT };
        conn_resp(&c, 3, argv);
        ssize_t n = write(fd, c.wbuf, c.wlen);
        free(c.wbuf);
        if (n != (ssize_t) c.wlen)
                return -EIO;
        char buf[256];
        size_t len = 0;
        usec_t deadline = now_usec() + 5 * USEC_PER_SEC;
        while (len < sizeof(buf) - 1 && now_usec() < deadline) {
                ssize_t k = read(fd, buf + len, sizeof(buf) - 1 - len);
                if (k <= 0) {
                        if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
                                usleep(1000);
                                continue;
                        }
                        return -EIO;
                }
                len += (size_t) k;
                buf[len] = 0;
                if (buf[0] == '$' && (p = strstr(buf, "\r\n")) && strstr(p + 2, "\r\n")) {
                        char *e = strstr(p + 2, "\r\n");
                        *e = 0;
                        snprintf(run->sha, sizeof(run->sha), "%s", p + 2);
                        return 0;
                }
                if (buf[0] == '-') {
                        logf_("agen-bench: SCRIPT LOAD: %s\n", buf);
                        return -EIO;
                }
        }
        return -ETIMEDOUT;
}

int run_cycles(struct ev_loop *loop, const Opts *o, CycleResult *r) {
        Run run = { .o = o, .loop = loop, .r = r };
        int ret = 0;

        *r = (CycleResult) {};
        run.clients = xcalloc(o->clients, sizeof(Client));
        raise_fd_limit(o->clients + 64);

        for (unsigned i = 0; i < o->clients; i++) {
                Client *cl = &run.clients[i];
                int fd;

                cl->run = &run;
                cl->idx = i;
                if (o->target == TARGET_ETCD)
                        fd = connect_tcp(o->host, o->port, true);
                else
                        fd = connect_unix(o->socket, true);
                if (fd < 0) {
                        logf_("agen-bench: connect %u: %s\n", i, strerror(-fd));
                        ret = fd;
                        goto finish;
                }
                if (o->target == TARGET_REDIS && i == 0 && redis_load_script(&run, fd) < 0) {
                        close(fd);
                        ret = -EIO;
                        goto finish;
                }
                conn_init(&cl->conn, loop, fd, o->target == TARGET_AGEND ? PROTO_VARLINK :
                                               o->target == TARGET_REDIS ? PROTO_RESP : PROTO_HTTP,
                          client_msg, cl);
                cl->slots = xcalloc(o->inflight, sizeof(Slot));
                cl->fcap = o->inflight + 1;
                cl->fifo = xcalloc(cl->fcap, sizeof(unsigned));
                for (unsigned j = 0; j < o->inflight; j++) {
                        Slot *s = &cl->slots[j];
                        s->cl = cl;
                        s->idx = j;
                        ev_timer_init(&s->pace, pace_cb, 0, 0);
                        if (o->target == TARGET_ETCD) {
                                char k[64];
                                snprintf(k, sizeof(k), "%s/%u/%u", o->prefix, i, j);
                                base64_encode(k, strlen(k), s->key);
                        } else
                                snprintf(s->key, sizeof(s->key), "%s%s%u%s%u", o->prefix,
                                         o->target == TARGET_REDIS ? ":" : "-", i,
                                         o->target == TARGET_REDIS ? ":" : "-", j);
                }
        }

        ev_timer_init(&run.t_warm, warm_cb, o->warmup, 0);
        ev_timer_init(&run.t_end, end_cb, o->warmup + o->duration, 0);
        ev_timer_init(&run.t_drain, drain_cb, 10, 0);
        ev_timer_start(loop, &run.t_warm);
        ev_timer_start(loop, &run.t_end);
        if (o->warmup <= 0) {
                ev_timer_stop(loop, &run.t_warm);
                warm_cb(loop, &run.t_warm, 0);
        }
        ev_now_update(loop);

        for (unsigned i = 0; i < o->clients; i++) {
                for (unsigned j = 0; j < o->inflight; j++)
                        slot_start(&run.clients[i].slots[j]);
                conn_flush(&run.clients[i].conn);
        }

        /* Bounded: the end timer fires after warmup + duration, then the drain timer
         * after at most 10 s more. A dead connection stops its slots; count them. */
        ev_run(loop, 0);

        for (unsigned i = 0; i < o->clients; i++)
                if (run.clients[i].conn.dead && run.clients[i].conn.error != 0) {
                        char m[96];
                        snprintf(m, sizeof(m), "client %u: %s", i, strerror(-run.clients[i].conn.error));
                        run_error(&run, "connection lost", m);
                }
        r->unfinished = run.busy;

finish:
        ev_timer_stop(loop, &run.t_warm);
        ev_timer_stop(loop, &run.t_end);
        ev_timer_stop(loop, &run.t_drain);
        for (unsigned i = 0; i < o->clients; i++) {
                Client *cl = &run.clients[i];
                if (cl->slots)
                        for (unsigned j = 0; j < o->inflight; j++)
                                ev_timer_stop(loop, &cl->slots[j].pace);
                if (cl->conn.loop)
                        conn_done(&cl->conn);
                free(cl->slots);
                free(cl->fifo);
        }
        free(run.clients);
        return ret;
}

static const char *target_name(Target t) {
        return t == TARGET_AGEND ? "agend" : t == TARGET_REDIS ? "redis" : "etcd";
}

void cycle_result_print(const Opts *o, CycleResult *r, const char *kind) {
        Out out;
        double rate = r->secs > 0 ? (double) r->cycles / r->secs : 0;

        out_begin(&out, kind, o->label);
        out_str(&out, "target", target_name(o->target));
        out_int(&out, "clients", o->clients);
        out_int(&out, "inflight", o->inflight);
        out_num(&out, "rate_limit", o->rate * o->clients * o->inflight);
        out_num(&out, "secs", r->secs);
        out_int(&out, "cycles", (long long) r->cycles);
        out_int(&out, "errors", (long long) r->errors);
        out_int(&out, "unfinished", (long long) r->unfinished);
        out_num(&out, "cycles_per_s", rate);
        out_num(&out, "cycle_p50_us", samples_pct(&r->cycle, 50));
        out_num(&out, "cycle_p99_us", samples_pct(&r->cycle, 99));
        out_num(&out, "cycle_max_us", samples_max(&r->cycle));
        out_num(&out, "acquire_p50_us", samples_pct(&r->acquire, 50));
        out_num(&out, "acquire_p99_us", samples_pct(&r->acquire, 99));
        out_num(&out, "server_cpu_us_per_cycle",
                o->server_pid > 0 && r->cycles ? (double) r->server_cpu / (double) r->cycles : NAN);
        out_num(&out, "client_cpu_us_per_cycle", r->cycles ? (double) r->client_cpu / (double) r->cycles : NAN);
        bool have_wal = r->wal0 >= 0 && r->wal1 >= r->wal0 && r->commits1 > r->commits0 && r->cycles > 0;
        /* What the commits cost the disk: WAL bytes per cycle, and pages (4 KiB frames) per commit. */
        double wal_per_cycle = have_wal ? (double) (r->wal1 - r->wal0) / (double) r->cycles : NAN;
        double pages_per_commit = have_wal ? (double) (r->wal1 - r->wal0) / (4096.0 + 24.0) /
                                                     (double) (r->commits1 - r->commits0)
                                           : NAN;
        double cycles_per_commit = have_wal ? (double) r->cycles / (double) (r->commits1 - r->commits0) : NAN;
        out_num(&out, "wal_bytes_per_cycle", wal_per_cycle);
        out_num(&out, "wal_pages_per_commit", pages_per_commit);
        out_num(&out, "cycles_per_commit", cycles_per_commit);
        if (r->errors)
                out_str(&out, "first_error", r->first_error);
        out_end(&out);

        if (!o->quiet)
                logf_("%-8s %-22s c=%-3u k=%-2u %9.0f cycles/s  p50 %7.0f us  p99 %7.0f us  srv %6.1f us/cycle  "
                      "wal %6.0f B/cycle %5.2f pages/commit  errors %llu\n",
                      target_name(o->target), o->label ? o->label : "", o->clients, o->inflight, rate,
                      samples_pct(&r->cycle, 50), samples_pct(&r->cycle, 99),
                      o->server_pid > 0 && r->cycles ? (double) r->server_cpu / (double) r->cycles : NAN,
                      wal_per_cycle, pages_per_commit, (unsigned long long) r->errors);
}

void cycle_result_free(CycleResult *r) {
        samples_free(&r->cycle);
        samples_free(&r->acquire);
}

int mode_cycle(const Opts *o) {
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        CycleResult r;
        int ret;

        ret = run_cycles(loop, o, &r);
        if (ret >= 0)
                cycle_result_print(o, &r, "cycle");
        cycle_result_free(&r);
        ev_loop_destroy(loop);
        if (ret < 0)
                return ret;
        return r.errors || r.cycles == 0 ? -EPROTO : 0;
}

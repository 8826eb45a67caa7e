/* SPDX-License-Identifier: MIT */
/* Scale, against an agend this process starts (it restarts it too):
 *
 * scale-leases: N detached leases with a long TTL (load rate, RSS per lease, database
 * size), a restart (stop time, start-to-ready time, leases restored), then every lease
 * renewed with a TTL spread over 60 s and a Watch on everything: expiry lateness is the
 * expired event's time minus the deadline the Renew reply gave (both the daemon's
 * clock), and its arrival here minus the deadline; meanwhile paced probe clients measure
 * acquire latency while the expiries run.
 *
 * scale-conns: N connections, each holding a connection-bound lease (RSS per
 * connection), acquire latency of paced probe clients meanwhile, then all closed at once
 * and the time until Status shows no leases. */

#include <errno.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bench.h"

/* ---- pipelined bulk calls: total calls over nconn connections, window in flight each ---- */

typedef struct Bulk Bulk;
typedef void (*bulk_call_fn)(Bulk *b, Conn *c, size_t i);
typedef bool (*bulk_reply_fn)(Bulk *b, size_t i, char *msg);

typedef struct BulkConn {
        Conn conn;
        Bulk *b;
        size_t *fifo;
        unsigned head, len, cap;
} BulkConn;

struct Bulk {
        struct ev_loop *loop;
        BulkConn *bc;
        unsigned nconn, window;
        size_t total, next, done, errors;
        bulk_call_fn call;
        bulk_reply_fn reply;
        double deadline;
        char first_error[256];
};

static void bulk_issue(BulkConn *bc) {
        Bulk *b = bc->b;

        while (bc->len < b->window && b->next < b->total) {
                size_t i = b->next++;
                b->call(b, &bc->conn, i);
                bc->fifo[(bc->head + bc->len++) % bc->cap] = i;
        }
}

static void bulk_msg(Conn *c, char *msg, size_t len) {
        BulkConn *bc = c->userdata;
        Bulk *b = bc->b;

        if (bc->len == 0)
                return;
        size_t i = bc->fifo[bc->head];
        bc->head = (bc->head + 1) % bc->cap;
        bc->len--;
        if (!b->reply(b, i, msg)) {
                if (b->errors++ == 0)
                        snprintf(b->first_error, sizeof(b->first_error), "%.250s", msg);
        }
        b->done++;
        if (b->done == b->total)
                ev_break(b->loop, EVBREAK_ONE);
        else
                bulk_issue(bc);
}

/* Every 100 ms: stop at the deadline, or when no connection is left to answer. */
static void bulk_timeout_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Bulk *b = w->data;
        bool alive = false;

        for (unsigned i = 0; i < b->nconn && !alive; i++)
                alive = !b->bc[i].conn.dead;
        if (!alive || ev_now(loop) >= b->deadline)
                ev_break(loop, EVBREAK_ONE);
}

static int bulk_open(Bulk *b, struct ev_loop *loop, const char *socket, unsigned nconn, unsigned window) {
        *b = (Bulk) { .loop = loop, .nconn = nconn, .window = window };
        b->bc = xcalloc(nconn, sizeof(BulkConn));
        for (unsigned i = 0; i < nconn; i++) {
                int fd = connect_unix(socket, true);
                if (fd < 0)
                        return fd;
                b->bc[i].b = b;
                b->bc[i].cap = window + 1;
                b->bc[i].fifo = xcalloc(window + 1, sizeof(size_t));
                conn_init(&b->bc[i].conn, loop, fd, PROTO_VARLINK, bulk_msg, &b->bc[i]);
        }
        return 0;
}

/* Runs total calls; returns the number answered (done). Bounded by timeout. */
static size_t bulk_run(Bulk *b, size_t total, bulk_call_fn call, bulk_reply_fn reply, double timeout) {
        ev_timer t;

        b->total = total;
        b->next = b->done = b->errors = 0;
        b->call = call;
        b->reply = reply;
        for (unsigned i = 0; i < b->nconn; i++) {
                bulk_issue(&b->bc[i]);
                conn_flush(&b->bc[i].conn);
        }
        b->deadline = ev_now(b->loop) + timeout;
        ev_timer_init(&t, bulk_timeout_cb, 0.1, 0.1);
        t.data = b;
        ev_timer_start(b->loop, &t);
        if (total > 0)
                ev_run(b->loop, 0);
        ev_timer_stop(b->loop, &t);
        /* Calls never answered (connection lost, timeout) are errors too. */
        if (b->done < total) {
                if (b->errors == 0) {
                        int err = 0;
                        for (unsigned i = 0; i < b->nconn; i++)
                                if (b->bc[i].conn.error)
                                        err = b->bc[i].conn.error;
                        snprintf(b->first_error, sizeof(b->first_error), "%zu calls unanswered (%s)",
                                 total - b->done, err ? strerror(-err) : "timeout");
                }
                b->errors += total - b->done;
        }
        return b->done;
}

static void bulk_close(Bulk *b) {
        for (unsigned i = 0; i < b->nconn; i++) {
                if (b->bc[i].conn.loop)
                        conn_done(&b->bc[i].conn);
                free(b->bc[i].fifo);
        }
        free(b->bc);
        b->bc = NULL;
}

/* ---- Status ---- */

typedef struct Status {
        long long leases, connections, database_size, commits;
} Status;

static int get_status(const char *socket, Status *st) {
        char *reply = vl_call_once(socket, "{\"method\":\"io.agend.Lease.Status\",\"parameters\":{}}",
                                   30 * USEC_PER_SEC);
        *st = (Status) { -1, -1, -1, -1 };
        if (!reply)
                return -EIO;
        (void) json_scan_int(reply, "leases", &st->leases);
        (void) json_scan_int(reply, "connections", &st->connections);
        (void) json_scan_int(reply, "database_size", &st->database_size);
        (void) json_scan_int(reply, "commits", &st->commits);
        free(reply);
        return 0;
}

static long long file_size(const char *dir, const char *name) {
        char p[4200];
        struct stat st;

        snprintf(p, sizeof(p), "%s/%s", dir, name);
        return stat(p, &st) == 0 ? (long long) st.st_size : 0;
}

/* ---- scale-leases ---- */

typedef struct Leases {
        char **id;
        char **secret;
        long long *deadline; /* µs since the epoch, from the Renew reply */
        double *ttl;
        unsigned char *expired;
        size_t n;
        Samples late_event, late_recv;
        size_t expired_n, other_events;
        bool watch_ready;
        Conn watch;
        char first_error[256];
        size_t errors;
} Leases;

static Leases L;

static void load_call(Bulk *b, Conn *c, size_t i) {
        conn_vl(c,
                "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"s%zu\",\"detached\":true,"
                "\"ttl\":3600,\"timeout\":0}}",
                i);
}

static bool load_reply(Bulk *b, size_t i, char *msg) {
        char id[128], secret[256];

        if (json_scan_has(msg, "error") || json_scan_str(msg, "id", id, sizeof(id)) < 0)
                return false;
        L.id[i] = xstrdup(id);
        if (json_scan_str(msg, "secret", secret, sizeof(secret)) >= 0)
                L.secret[i] = xstrdup(secret);
        return true;
}

static void renew_call(Bulk *b, Conn *c, size_t i) {
        if (!L.id[i]) {
                /* Never granted: keep the call count in step with a harmless Status call. */
                conn_vl(c, "{\"method\":\"io.agend.Lease.Status\",\"parameters\":{}}");
                return;
        }
        if (L.secret[i])
                conn_vl(c, "{\"method\":\"io.agend.Lease.Renew\",\"parameters\":{\"id\":\"%s\",\"ttl\":%.3f,\"secret\":\"%s\"}}",
                        L.id[i], L.ttl[i], L.secret[i]);
        else
                conn_vl(c, "{\"method\":\"io.agend.Lease.Renew\",\"parameters\":{\"id\":\"%s\",\"ttl\":%.3f}}", L.id[i],
                        L.ttl[i]);
}

static bool renew_reply(Bulk *b, size_t i, char *msg) {
        long long dl;

        if (!L.id[i])
                return true;
        if (json_scan_has(msg, "error") || !json_scan_int(msg, "deadline", &dl))
                return false;
        L.deadline[i] = dl;
        return true;
}

static void watch_msg(Conn *c, char *msg, size_t len) {
        char type[32], res[64];
        long long t;

        if (json_scan_has(msg, "error")) {
                if (L.errors++ == 0)
                        snprintf(L.first_error, sizeof(L.first_error), "Watch: %.200s", msg);
                return;
        }
        if (!L.watch_ready) {
                L.watch_ready = true;
                return;
        }
        if (json_scan_str(msg, "type", type, sizeof(type)) < 0 || strcmp(type, "expired") != 0 ||
            json_scan_str(msg, "resource", res, sizeof(res)) < 0 || res[0] != 's') {
                L.other_events++;
                return;
        }
        size_t i = strtoull(res + 1, NULL, 10);
        if (i >= L.n || L.expired[i] || !json_scan_int(msg, "time", &t))
                return;
        L.expired[i] = 1;
        L.expired_n++;
        if (L.deadline[i] > 0) {
                samples_add(&L.late_event, (double) (t - L.deadline[i]) / 1000.0);
                samples_add(&L.late_recv, (double) ((long long) now_realtime_usec() - L.deadline[i]) / 1000.0);
        }
}

static void run_until_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        if (L.expired_n >= L.n || ev_now(loop) >= *(double *) w->data)
                ev_break(loop, EVBREAK_ONE);
}

static void leases_free(void) {
        for (size_t i = 0; i < L.n; i++) {
                free(L.id[i]);
                free(L.secret[i]);
        }
        free(L.id);
        free(L.secret);
        free(L.deadline);
        free(L.ttl);
        free(L.expired);
        samples_free(&L.late_event);
        samples_free(&L.late_recv);
        if (L.watch.loop)
                conn_done(&L.watch);
        L = (Leases) {};
}

int mode_scale_leases(Opts *o) {
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        Daemon *d = &o->daemon;
        Bulk b = {};
        Status st0, st1, st2, st3;
        usec_t ready0 = 0, stop_t = 0, ready_t = 0;
        CycleResult pr = {};
        bool have_probe = false;
        double renew_secs = 0;
        size_t renew_errors = 0;
        int ret = 0;
        size_t n = o->count;

        L = (Leases) { .n = n };
        L.id = xcalloc(n, sizeof(char *));
        L.secret = xcalloc(n, sizeof(char *));
        L.deadline = xcalloc(n, sizeof(long long));
        L.ttl = xcalloc(n, sizeof(double));
        L.expired = xcalloc(n, 1);

        if (!d->binary) {
                logf_("agen-bench: scale-leases restarts agend: give --agend BINARY\n");
                ret = -EINVAL;
                goto finish;
        }
        ret = daemon_start(d, &ready0);
        if (ret < 0)
                goto finish;
        (void) get_status(d->socket, &st0);
        long rss0 = proc_rss_kib(d->pid);

        /* Load. */
        logf_("scale-leases: loading %zu detached leases...\n", n);
        ret = bulk_open(&b, loop, d->socket, 4, 256);
        if (ret < 0)
                goto finish;
        usec_t t0 = now_usec();
        size_t done = bulk_run(&b, n, load_call, load_reply, 1800);
        double load_secs = (double) (now_usec() - t0) / 1e6;
        size_t load_errors = b.errors;
        if (load_errors)
                logf_("scale-leases: %zu acquire errors, first: %s\n", load_errors, b.first_error);
        bulk_close(&b);
        usleep(n >= 100000 ? 1000000 : 100000); /* let the daemon settle before reading RSS */
        long rss1 = proc_rss_kib(d->pid);
        (void) get_status(d->socket, &st1);
        logf_("scale-leases: %zu acquired in %.1f s (%.0f/s), RSS %ld -> %ld KiB, Status leases %lld, "
              "database_size %lld\n",
              done - load_errors, load_secs, (double) done / load_secs, rss0, rss1, st1.leases, st1.database_size);
        /* agend.db and the leases snapshot agend-leases.db, each with its WAL. */
        long long db_file = file_size(d->state_dir, "agend.db") + file_size(d->state_dir, "agend-leases.db"),
                  wal_file = file_size(d->state_dir, "agend.db-wal") + file_size(d->state_dir, "agend-leases.db-wal");

        /* Restart. */
        (void) daemon_stop(d, &stop_t);
        ret = daemon_start(d, &ready_t);
        if (ret < 0)
                goto finish;
        long rss2 = proc_rss_kib(d->pid);
        (void) get_status(d->socket, &st2);
        logf_("scale-leases: restart: stop %.2f s, start to ready %.2f s, leases restored %lld, RSS %ld KiB\n",
              (double) stop_t / 1e6, (double) ready_t / 1e6, st2.leases, rss2);

        /* Watch everything. */
        int fd = connect_unix(d->socket, true);
        if (fd < 0) {
                ret = fd;
                goto finish;
        }
        conn_init(&L.watch, loop, fd, PROTO_VARLINK, watch_msg, NULL);
        conn_vl(&L.watch, "{\"method\":\"io.agend.Lease.Watch\",\"parameters\":{},\"more\":true}");
        conn_flush(&L.watch);
        for (int i = 0; i < 5000 && !L.watch_ready && !L.watch.dead; i++)
                ev_run(loop, EVRUN_ONCE);
        if (!L.watch_ready)
                logf_("scale-leases: Watch did not start: %s\n", L.first_error);

        /* Renew with TTLs spread over 60 s, starting once all renews are done. */
        double est = (double) n / ((double) done / load_secs) * 1.5 + 1;
        srand48(1);
        for (size_t i = 0; i < n; i++)
                L.ttl[i] = est + o->spread * drand48();
        logf_("scale-leases: renewing with TTLs in [%.1f, %.1f] s...\n", est, est + o->spread);
        ret = bulk_open(&b, loop, d->socket, 4, 256);
        if (ret < 0)
                goto finish;
        t0 = now_usec();
        (void) bulk_run(&b, n, renew_call, renew_reply, est + o->spread);
        renew_secs = (double) (now_usec() - t0) / 1e6;
        renew_errors = b.errors;
        if (renew_errors)
                logf_("scale-leases: %zu renew errors, first: %s\n", renew_errors, b.first_error);
        bulk_close(&b);
        if (renew_errors || !L.watch_ready) {
                ret = -EPROTO;
                goto report;
        }

        /* Probe while the expiries run: from the first deadline to the last. */
        long long first_dl = 0, last_dl = 0;
        for (size_t i = 0; i < n; i++)
                if (L.deadline[i] > 0) {
                        if (!first_dl || L.deadline[i] < first_dl)
                                first_dl = L.deadline[i];
                        if (L.deadline[i] > last_dl)
                                last_dl = L.deadline[i];
                }
        long long nowrt = (long long) now_realtime_usec();
        Opts po = *o;
        po.target = TARGET_AGEND;
        po.socket = d->socket;
        po.clients = 8;
        po.inflight = 1;
        po.rate = 100;
        po.prefix = "probe";
        po.server_pid = d->pid;
        po.quiet = true;
        po.warmup = first_dl > nowrt ? (double) (first_dl - nowrt) / 1e6 : 0;
        po.duration = last_dl > first_dl ? (double) (last_dl - first_dl) / 1e6 : 1;
        logf_("scale-leases: expiries from +%.1f s for %.1f s; probing 8 clients x 100 cycles/s...\n", po.warmup,
              po.duration);
        ret = run_cycles(loop, &po, &pr);
        if (ret < 0)
                goto finish;
        have_probe = true;

        /* The rest of the events, at most 30 s more. */
        ev_timer t;
        double until = ev_now(loop) + 30;
        ev_timer_init(&t, run_until_cb, 0.1, 0.1);
        t.data = &until;
        ev_timer_start(loop, &t);
        if (L.expired_n < n && !L.watch.dead)
                ev_run(loop, 0);
        ev_timer_stop(loop, &t);

report:
        (void) get_status(d->socket, &st3);
        long rss3 = proc_rss_kib(d->pid);

        Out out;
        out_begin(&out, "scale_leases", o->label);
        out_int(&out, "leases", (long long) n);
        out_int(&out, "load_errors", (long long) load_errors);
        out_num(&out, "load_secs", load_secs);
        out_num(&out, "load_per_s", (double) done / load_secs);
        out_int(&out, "rss_before_kib", rss0);
        out_int(&out, "rss_loaded_kib", rss1);
        out_num(&out, "rss_bytes_per_lease", (double) (rss1 - rss0) * 1024.0 / (double) n);
        out_int(&out, "status_leases_loaded", st1.leases);
        out_int(&out, "database_size", st1.database_size);
        out_int(&out, "db_file_bytes", db_file);
        out_int(&out, "wal_file_bytes", wal_file);
        out_num(&out, "first_start_ready_s", (double) ready0 / 1e6);
        out_num(&out, "stop_s", (double) stop_t / 1e6);
        out_num(&out, "restart_ready_s", (double) ready_t / 1e6);
        out_int(&out, "status_leases_restored", st2.leases);
        out_int(&out, "rss_restarted_kib", rss2);
        out_num(&out, "rss_bytes_per_lease_restarted", (double) (rss2 - rss0) * 1024.0 / (double) n);
        out_num(&out, "renew_secs", renew_secs);
        out_int(&out, "renew_errors", (long long) renew_errors);
        out_int(&out, "expired_events", (long long) L.expired_n);
        out_num(&out, "lateness_event_p50_ms", samples_pct(&L.late_event, 50));
        out_num(&out, "lateness_event_p99_ms", samples_pct(&L.late_event, 99));
        out_num(&out, "lateness_event_max_ms", samples_max(&L.late_event));
        out_num(&out, "lateness_event_min_ms", samples_pct(&L.late_event, 0));
        out_num(&out, "lateness_recv_p50_ms", samples_pct(&L.late_recv, 50));
        out_num(&out, "lateness_recv_p99_ms", samples_pct(&L.late_recv, 99));
        out_num(&out, "lateness_recv_max_ms", samples_max(&L.late_recv));
        out_int(&out, "probe_cycles", (long long) pr.cycles);
        out_int(&out, "probe_errors", (long long) pr.errors);
        out_num(&out, "probe_acquire_p50_us", samples_pct(&pr.acquire, 50));
        out_num(&out, "probe_acquire_p99_us", samples_pct(&pr.acquire, 99));
        out_num(&out, "probe_acquire_max_us", samples_max(&pr.acquire));
        out_int(&out, "status_leases_after", st3.leases);
        out_int(&out, "rss_after_kib", rss3);
        if (L.errors)
                out_str(&out, "first_error", L.first_error);
        out_end(&out);
        logf_("scale-leases: %zu/%zu expired events; lateness (event time - deadline) p50 %.2f ms p99 %.2f ms max "
              "%.2f ms; (arrival - deadline) p99 %.2f ms; probe acquire p50 %.0f us p99 %.0f us (%llu cycles, %llu "
              "errors); leases left %lld\n",
              L.expired_n, n, samples_pct(&L.late_event, 50), samples_pct(&L.late_event, 99),
              samples_max(&L.late_event), samples_pct(&L.late_recv, 99), samples_pct(&pr.acquire, 50),
              samples_pct(&pr.acquire, 99), (unsigned long long) pr.cycles, (unsigned long long) pr.errors,
              st3.leases);
        if (load_errors || renew_errors || pr.errors || L.errors || L.expired_n < n || !have_probe)
                ret = -EPROTO;

finish:
        cycle_result_free(&pr);
        if (b.bc)
                bulk_close(&b);
        leases_free();
        daemon_cleanup(d);
        ev_loop_destroy(loop);
        return ret;
}

/* ---- scale-conns ---- */

static void hold_call(Bulk *b, Conn *c, size_t i) {
        conn_vl(c, "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"k%zu\",\"timeout\":0}}", i);
}

static bool hold_reply(Bulk *b, size_t i, char *msg) {
        return !json_scan_has(msg, "error") && json_scan_has(msg, "lease");
}

int mode_scale_conns(Opts *o) {
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        Daemon *d = &o->daemon;
        const char *socket = o->socket;
        pid_t pid = o->server_pid;
        Bulk b = {};
        Status st1, st2;
        int ret = 0;
        size_t n = o->count;

        raise_fd_limit((unsigned) n + 256);
        if (d->binary) {
                ret = daemon_start(d, NULL);
                if (ret < 0)
                        goto finish;
                socket = d->socket;
                pid = d->pid;
        }
        if (!socket || pid <= 0) {
                logf_("agen-bench: scale-conns needs --agend BINARY, or --socket and --server-pid\n");
                ret = -EINVAL;
                goto finish;
        }
        long rss0 = proc_rss_kib(pid);

        /* One connection per lease: a bulk of n connections with one call each. */
        logf_("scale-conns: opening %zu connections, each acquiring a lease...\n", n);
        usec_t t0 = now_usec();
        ret = bulk_open(&b, loop, socket, (unsigned) n, 1);
        if (ret < 0) {
                logf_("scale-conns: connect: %s\n", strerror(-ret));
                goto finish;
        }
        /* bulk_run spreads calls over connections in order: with window 1 and n calls on n
         * connections, each connection gets exactly one. */
        size_t done = bulk_run(&b, n, hold_call, hold_reply, 300);
        double open_secs = (double) (now_usec() - t0) / 1e6;
        size_t hold_errors = b.errors + (n - done);
        if (b.errors)
                logf_("scale-conns: %zu acquire errors, first: %s\n", b.errors, b.first_error);
        sleep(1);
        long rss1 = proc_rss_kib(pid);
        (void) get_status(socket, &st1);

        Opts po = *o;
        po.target = TARGET_AGEND;
        po.socket = socket;
        po.clients = 16;
        po.inflight = 1;
        po.rate = 100;
        po.prefix = "cprobe";
        po.server_pid = pid;
        po.quiet = true;
        po.warmup = 1;
        po.duration = o->duration > 0 ? o->duration : 5;
        CycleResult pr;
        ret = run_cycles(loop, &po, &pr);
        if (ret < 0)
                goto finish;

        /* Close them all at once; time until the daemon has released every lease. */
        t0 = now_usec();
        bulk_close(&b);
        long long left = -1;
        while (now_usec() - t0 < 60 * USEC_PER_SEC) {
                (void) get_status(socket, &st2);
                left = st2.leases;
                if (left == 0)
                        break;
                usleep(2000);
        }
        double release_secs = (double) (now_usec() - t0) / 1e6;

        Out out;
        out_begin(&out, "scale_conns", o->label);
        out_int(&out, "connections", (long long) n);
        out_int(&out, "hold_errors", (long long) hold_errors);
        out_num(&out, "open_secs", open_secs);
        out_int(&out, "rss_before_kib", rss0);
        out_int(&out, "rss_held_kib", rss1);
        out_num(&out, "rss_bytes_per_connection", (double) (rss1 - rss0) * 1024.0 / (double) n);
        out_int(&out, "status_connections", st1.connections);
        out_int(&out, "status_leases", st1.leases);
        out_num(&out, "probe_rate", 16 * 100);
        out_int(&out, "probe_cycles", (long long) pr.cycles);
        out_int(&out, "probe_errors", (long long) pr.errors);
        out_num(&out, "probe_acquire_p50_us", samples_pct(&pr.acquire, 50));
        out_num(&out, "probe_acquire_p99_us", samples_pct(&pr.acquire, 99));
        out_num(&out, "probe_acquire_max_us", samples_max(&pr.acquire));
        out_num(&out, "probe_cycle_p99_us", samples_pct(&pr.cycle, 99));
        out_num(&out, "mass_release_secs", release_secs);
        out_int(&out, "leases_left", left);
        out_end(&out);
        logf_("scale-conns: %zu connections held (%zu errors) in %.1f s; RSS %ld -> %ld KiB (%.0f B/connection); "
              "Status connections %lld leases %lld; probe acquire p50 %.0f us p99 %.0f us (%llu cycles, %llu "
              "errors); all closed -> 0 leases in %.2f s\n",
              done, hold_errors, open_secs, rss0, rss1, (double) (rss1 - rss0) * 1024.0 / (double) n,
              st1.connections, st1.leases, samples_pct(&pr.acquire, 50), samples_pct(&pr.acquire, 99),
              (unsigned long long) pr.cycles, (unsigned long long) pr.errors, release_secs);
        if (hold_errors || pr.errors || left != 0)
                ret = -EPROTO;
        cycle_result_free(&pr);

finish:
        if (b.bc)
                bulk_close(&b);
        if (d->binary)
                daemon_cleanup(d);
        ev_loop_destroy(loop);
        return ret;
}

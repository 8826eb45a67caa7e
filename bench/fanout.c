/* SPDX-License-Identifier: MIT */
/* Watch fan-out: S subscribers, each a raw varlink connection with Watch on every
 * resource ("more": true), while D driver connections run acquire → release cycles on
 * their own resources, paced to a target event rate (each cycle is two events: granted
 * and released). For every event each subscriber receives, its lag is the receipt time
 * minus the event's "time" (CLOCK_REALTIME µs, taken by agend on this machine).
 *
 * The drivers run in a thread of their own, so the subscribers' reading (S × the event
 * rate messages per second) does not disturb the pacing. Every subscriber must receive
 * every event: expected = 2 × the cycles the drivers completed (warm-up included; the
 * subscribers were all in effect before the first cycle). A subscriber the daemon drops
 * for not reading fast enough gets LimitExceeded; that is reported as dropped.
 *
 * Lags go into one histogram of 10 µs buckets (64 × 20 k events/s × 10 s would be 13 M
 * samples); each subscriber keeps its exact maximum. Only events whose time lies in the
 * measured window count for the lag figures and the achieved rate. */

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

#define LAG_BUCKET_US 10
#define LAG_BUCKETS (1000000u) /* 10 s; later ones land in the last bucket */
#define LAG_TARGET_US (100 * USEC_PER_MSEC)

typedef struct Fan Fan;

typedef struct Sub {
        Conn conn;
        Fan *f;
        bool ready, dropped;
        long long drop_at;      /* realtime µs the LimitExceeded came */
        uint64_t received;      /* every event */
        uint64_t bytes;         /* their messages, NUL included */
        uint64_t in_window;     /* events whose time lies in the measured window */
        long long max_lag;      /* µs, over the window */
} Sub;

typedef struct Drv {
        Conn conn;
        Fan *f;
        unsigned idx;
        unsigned step; /* 0 = Acquire sent, 1 = Release sent */
        bool busy, failed;
        char res[64];
        char id[80];
} Drv;

struct Fan {
        const Opts *o;
        unsigned n_subs, n_drv;
        double event_rate;
        Sub *subs;
        Drv *drv;

        /* the driver thread */
        struct ev_loop *dloop;
        ev_timer d_pace, d_end;
        usec_t d_t0;            /* monotonic: pacing starts */
        uint64_t started;       /* cycles started */
        unsigned d_busy;
        bool d_stopping;
        atomic_ullong cycles;   /* cycles completed (both replies) */
        atomic_ullong d_errors;
        atomic_bool d_done;
        char d_first_error[256];

        /* the subscriber loop (main thread) */
        struct ev_loop *loop;
        ev_timer t_warm, t_end, t_check;
        bool ended;             /* end_cb ran: the CPU readings are complete */
        long long rt0;          /* realtime µs the drivers were started */
        long long w0, w1;       /* realtime µs: the measured window */
        usec_t cpu0, cpu1, ccpu0, ccpu1;
        double secs;
        usec_t t_drain_deadline;
        uint32_t *hist;
        uint64_t hist_n;
        uint64_t errors;
        char first_error[256];
};

static void fan_error(Fan *f, const char *what, const char *msg) {
        if (f->errors++ == 0)
                snprintf(f->first_error, sizeof(f->first_error), "%s: %.200s", what, msg);
        if (arg_verbose)
                logf_("agen-bench: %s: %.300s\n", what, msg);
}

/* ---- drivers (own thread, own loop) ---- */

static void drv_error(Drv *d, const char *what, const char *msg) {
        Fan *f = d->f;
        if (atomic_fetch_add(&f->d_errors, 1) == 0)
                snprintf(f->d_first_error, sizeof(f->d_first_error), "%s: %.200s", what, msg);
        if (arg_verbose)
                logf_("agen-bench: %s: %.300s\n", what, msg);
}

/* Cycles the pace allows by now: event_rate / 2 per second since the start. */
static uint64_t drv_allowed(Fan *f) {
        return (uint64_t) ((double) (now_usec() - f->d_t0) * f->event_rate / 2.0 / 1e6);
}

static void drv_start(Drv *d) {
        Fan *f = d->f;

        d->busy = true;
        d->step = 0;
        f->d_busy++;
        f->started++;
        conn_vl(&d->conn, "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"%s\"}}", d->res);
}

static void drv_msg(Conn *conn, char *msg, size_t len) {
        Drv *d = conn->userdata;
        Fan *f = d->f;

        if (json_scan_has(msg, "error") || (d->step == 0 && json_scan_str(msg, "id", d->id, sizeof(d->id)) < 0)) {
                drv_error(d, d->step == 0 ? "acquire" : "release", msg);
                d->failed = true; /* this driver stops */
        } else if (d->step == 0) {
                d->step = 1;
                conn_vl(&d->conn, "{\"method\":\"io.agend.Lease.Release\",\"parameters\":{\"id\":\"%s\"}}", d->id);
                return;
        } else
                atomic_fetch_add(&f->cycles, 1);
        d->busy = false;
        f->d_busy--;
        if (f->d_stopping) {
                if (f->d_busy == 0)
                        ev_break(f->dloop, EVBREAK_ONE);
                return;
        }
        if (!d->failed && f->started < drv_allowed(f))
                drv_start(d);
        (void) len;
}

static void drv_pace_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fan *f = container_of(w, Fan, d_pace);
        uint64_t allowed = drv_allowed(f);

        for (unsigned i = 0; i < f->n_drv && f->started < allowed; i++) {
                Drv *d = &f->drv[i];
                if (d->busy || d->failed || d->conn.dead)
                        continue;
                drv_start(d);
                conn_flush(&d->conn);
        }
}

static void drv_end_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fan *f = container_of(w, Fan, d_end);

        if (f->d_stopping) {
                /* 10 s after the end: a driver whose connection died never answers. */
                ev_break(loop, EVBREAK_ONE);
                return;
        }
        f->d_stopping = true;
        ev_timer_stop(loop, &f->d_pace);
        if (f->d_busy == 0) {
                ev_break(loop, EVBREAK_ONE);
                return;
        }
        ev_timer_set(&f->d_end, 10, 0);
        ev_timer_start(loop, &f->d_end);
}

static void *drv_thread(void *userdata) {
        Fan *f = userdata;

        f->d_t0 = now_usec();
        ev_run(f->dloop, 0);
        for (unsigned i = 0; i < f->n_drv; i++)
                if (f->drv[i].conn.dead && f->drv[i].conn.error)
                        drv_error(&f->drv[i], "driver connection lost", strerror(-f->drv[i].conn.error));
        atomic_store(&f->d_done, true);
        return NULL;
}

/* ---- subscribers ---- */

static void sub_msg(Conn *conn, char *msg, size_t len) {
        Sub *s = conn->userdata;
        Fan *f = s->f;

        if (memmem(msg, len, "\"error\":", 8)) {
                if (strstr(msg, "LimitExceeded") && !s->dropped) {
                        s->dropped = true;
                        s->drop_at = (long long) now_realtime_usec();
                }
                fan_error(f, s->ready ? "Watch" : "Watch did not start", msg);
                return;
        }
        if (!s->ready) {
                s->ready = true; /* {event: null}: the watch is in effect */
                return;
        }
        long long t = now_realtime_usec();
        const char *p = memmem(msg, len, "\"time\":", 7);
        if (!p) {
                fan_error(f, "Watch: an event without time", msg);
                return;
        }
        long long et = strtoll(p + 7, NULL, 10);
        s->received++;
        s->bytes += len + 1;
        if (et < f->w0 || et >= f->w1)
                return;
        s->in_window++;
        long long lag = t - et;
        if (lag < 0)
                lag = 0;
        if (lag > s->max_lag)
                s->max_lag = lag;
        uint64_t b = (uint64_t) lag / LAG_BUCKET_US;
        f->hist[b < LAG_BUCKETS ? b : LAG_BUCKETS - 1]++;
        f->hist_n++;
}

/* The lag (µs, bucket middle) below which p percent of the window's events lie. */
static double hist_pct(const Fan *f, double p) {
        if (f->hist_n == 0)
                return NAN;
        uint64_t want = (uint64_t) ceil((double) f->hist_n * p / 100.0), seen = 0;
        if (want == 0)
                want = 1;
        for (uint64_t i = 0; i < LAG_BUCKETS; i++) {
                seen += f->hist[i];
                if (seen >= want)
                        return (double) i * LAG_BUCKET_US + LAG_BUCKET_US / 2.0;
        }
        return NAN;
}

static void warm_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fan *f = container_of(w, Fan, t_warm);

        if (f->o->server_pid > 0)
                (void) proc_cpu_usec(f->o->server_pid, &f->cpu0);
        f->ccpu0 = self_cpu_usec();
}

static void end_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fan *f = container_of(w, Fan, t_end);

        if (f->o->server_pid > 0)
                (void) proc_cpu_usec(f->o->server_pid, &f->cpu1);
        f->ccpu1 = self_cpu_usec();
        f->ended = true;
}

/* Ends the loop once the drivers are done and every live subscriber has every event, or
 * 10 s after the drivers are done. */
static void check_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Fan *f = container_of(w, Fan, t_check);

        if (!atomic_load(&f->d_done) || !f->ended)
                return;
        uint64_t expected = 2 * atomic_load(&f->cycles);
        if (f->t_drain_deadline == 0)
                f->t_drain_deadline = now_usec() + 10 * USEC_PER_SEC;
        bool all = true;
        for (unsigned i = 0; i < f->n_subs && all; i++)
                if (!f->subs[i].conn.dead && !f->subs[i].dropped && f->subs[i].received < expected)
                        all = false;
        if (all || now_usec() > f->t_drain_deadline)
                ev_break(loop, EVBREAK_ONE);
}

static int cmp_ll(const void *a, const void *b) {
        long long x = *(const long long *) a, y = *(const long long *) b;
        return (x > y) - (x < y);
}

int mode_watch_fanout(const Opts *o) {
        Fan f = {
                .o = o,
                .n_subs = o->subscribers ? o->subscribers : 64,
                .n_drv = o->drivers ? o->drivers : 32,
                .event_rate = o->event_rate > 0 ? o->event_rate : 20000,
        };
        pthread_t thread;
        int ret = 0, r;

        raise_fd_limit(f.n_subs + f.n_drv + 64);
        f.loop = ev_loop_new(EVFLAG_AUTO);
        f.dloop = ev_loop_new(EVFLAG_AUTO);
        f.subs = xcalloc(f.n_subs, sizeof(Sub));
        f.drv = xcalloc(f.n_drv, sizeof(Drv));
        f.hist = xcalloc(LAG_BUCKETS, sizeof(uint32_t));
        f.w0 = f.w1 = -1;

        /* Subscribers first; the drivers start only once every watch is in effect. */
        for (unsigned i = 0; i < f.n_subs; i++) {
                int fd = connect_unix(o->socket, true);
                if (fd < 0) {
                        logf_("agen-bench: connect: %s\n", strerror(-fd));
                        ret = fd;
                        goto finish;
                }
                f.subs[i].f = &f;
                conn_init(&f.subs[i].conn, f.loop, fd, PROTO_VARLINK, sub_msg, &f.subs[i]);
                conn_vl(&f.subs[i].conn, "{\"method\":\"io.agend.Lease.Watch\",\"parameters\":{},\"more\":true}");
                conn_flush(&f.subs[i].conn);
        }
        usec_t deadline = now_usec() + 30 * USEC_PER_SEC;
        for (;;) {
                unsigned ready = 0, dead = 0;
                for (unsigned i = 0; i < f.n_subs; i++) {
                        ready += f.subs[i].ready;
                        dead += f.subs[i].conn.dead || f.errors;
                }
                if (ready == f.n_subs)
                        break;
                if (dead || now_usec() > deadline) {
                        logf_("agen-bench: watch-fanout: %u of %u watches in effect: %s\n", ready, f.n_subs,
                              f.errors ? f.first_error : "no answer");
                        ret = -EPROTO;
                        goto finish;
                }
                ev_run(f.loop, EVRUN_ONCE);
        }

        for (unsigned i = 0; i < f.n_drv; i++) {
                int fd = connect_unix(o->socket, true);
                if (fd < 0) {
                        logf_("agen-bench: connect: %s\n", strerror(-fd));
                        ret = fd;
                        goto finish;
                }
                f.drv[i].f = &f;
                f.drv[i].idx = i;
                snprintf(f.drv[i].res, sizeof(f.drv[i].res), "%s-fan%u", o->prefix, i);
                conn_init(&f.drv[i].conn, f.dloop, fd, PROTO_VARLINK, drv_msg, &f.drv[i]);
        }

        /* The timers count from the loop's cached time: make it now, like the window. */
        ev_now_update(f.loop);
        ev_now_update(f.dloop);
        f.rt0 = (long long) now_realtime_usec();
        f.w0 = f.rt0 + (long long) (o->warmup * 1e6);
        f.w1 = f.w0 + (long long) (o->duration * 1e6);
        f.secs = o->duration;
        ev_timer_init(&f.d_pace, drv_pace_cb, 0, 0.001);
        ev_timer_init(&f.d_end, drv_end_cb, o->warmup + o->duration, 0);
        ev_timer_start(f.dloop, &f.d_pace);
        ev_timer_start(f.dloop, &f.d_end);
        ev_timer_init(&f.t_warm, warm_cb, o->warmup, 0);
        ev_timer_init(&f.t_end, end_cb, o->warmup + o->duration, 0);
        ev_timer_init(&f.t_check, check_cb, 0.01, 0.01);
        ev_timer_start(f.loop, &f.t_warm);
        ev_timer_start(f.loop, &f.t_end);
        ev_timer_start(f.loop, &f.t_check);
        r = pthread_create(&thread, NULL, drv_thread, &f);
        if (r != 0) {
                logf_("agen-bench: cannot start the driver thread: %s\n", strerror(r));
                ret = -r;
                goto finish;
        }
        ev_run(f.loop, 0);
        pthread_join(thread, NULL);

        /* ---- results ---- */
        uint64_t cycles = atomic_load(&f.cycles), d_errors = atomic_load(&f.d_errors);
        uint64_t expected = 2 * cycles, rmin = UINT64_MAX, rmax = 0, wmax = 0, bytes = 0, nrecv = 0;
        unsigned dropped = 0, lost = 0, complete = 0;
        long long first_drop = -1;
        unsigned nmax = 0;
        long long *maxes = xcalloc(f.n_subs, sizeof(long long));
        for (unsigned i = 0; i < f.n_subs; i++) {
                Sub *s = &f.subs[i];
                if (s->dropped) {
                        dropped++;
                        if (first_drop < 0 || s->drop_at < first_drop)
                                first_drop = s->drop_at;
                }
                else if (s->conn.dead)
                        lost++;
                if (s->received == expected)
                        complete++;
                if (s->received < rmin)
                        rmin = s->received;
                if (s->received > rmax)
                        rmax = s->received;
                if (s->in_window > wmax)
                        wmax = s->in_window;
                if (s->in_window > 0)
                        maxes[nmax++] = s->max_lag;
                bytes += s->bytes;
                nrecv += s->received;
        }
        /* Over the subscribers that saw the window (one dropped before it has no lag in it). */
        qsort(maxes, nmax, sizeof(long long), cmp_ll);
        double worst = nmax ? (double) maxes[nmax - 1] : NAN, median_max = nmax ? (double) maxes[nmax / 2] : NAN;
        free(maxes);
        /* The rate agend produced events at: the window's events, as the most complete
         * subscriber saw them, by their own time stamps. */
        double rate = f.secs > 0 ? (double) wmax / f.secs : 0;
        double srv = o->server_pid > 0 && f.cpu1 > f.cpu0 ? (double) (f.cpu1 - f.cpu0) : NAN;
        double cli = (double) (f.ccpu1 - f.ccpu0);
        double p50 = hist_pct(&f, 50), p99 = hist_pct(&f, 99);
        bool keeps_up = complete == f.n_subs && dropped == 0 && lost == 0 && rate >= 0.95 * f.event_rate;
        bool met = keeps_up && worst <= (double) LAG_TARGET_US;

        Out out;
        out_begin(&out, "watch_fanout", o->label);
        out_int(&out, "subscribers", f.n_subs);
        out_int(&out, "drivers", f.n_drv);
        out_num(&out, "target_events_per_s", f.event_rate);
        out_num(&out, "secs", f.secs);
        out_int(&out, "cycles", (long long) cycles);
        out_num(&out, "events_per_s", rate);
        out_int(&out, "events_expected_per_sub", (long long) expected);
        out_int(&out, "events_received_min", (long long) (f.n_subs ? rmin : 0));
        out_int(&out, "events_received_max", (long long) rmax);
        out_int(&out, "subs_complete", complete);
        out_int(&out, "subs_dropped", dropped);
        out_int(&out, "subs_lost", lost);
        /* Seconds from the first cycle to the first drop (warm-up included). */
        out_num(&out, "first_drop_s", first_drop >= 0 ? (double) (first_drop - f.rt0) / 1e6 : NAN);
        out_num(&out, "event_bytes", nrecv ? (double) bytes / (double) nrecv : NAN);
        out_num(&out, "lag_p50_us", p50);
        out_num(&out, "lag_p99_us", p99);
        out_num(&out, "lag_max_us", worst);
        out_num(&out, "sub_max_lag_median_us", median_max);
        out_num(&out, "sub_max_lag_worst_us", worst);
        out_num(&out, "server_cpu_cores", srv / 1e6 / f.secs);
        out_num(&out, "server_cpu_us_per_event", rate > 0 ? srv / (rate * f.secs) : NAN);
        out_num(&out, "client_cpu_cores", cli / 1e6 / f.secs);
        out_int(&out, "keeps_up", keeps_up);
        out_int(&out, "target_met", met);
        out_int(&out, "errors", (long long) (f.errors + d_errors));
        if (d_errors)
                out_str(&out, "first_error", f.d_first_error);
        else if (f.errors)
                out_str(&out, "first_error", f.first_error);
        out_end(&out);
        char drop_note[48] = "";
        if (first_drop >= 0)
                snprintf(drop_note, sizeof(drop_note), " (first at %.1f s)", (double) (first_drop - f.rt0) / 1e6);
        if (!o->quiet)
                logf_("agend    %-22s watch fan-out %u subs, target %.0f ev/s: %7.0f events/s  lag p50 %6.1f ms  "
                      "p99 %6.1f ms  max %6.1f ms (median sub max %.1f ms)  received %llu..%llu of %llu  "
                      "dropped %u%s lost %u  srv %.2f cores %.1f us/event  client %.2f cores  errors %llu  %s\n",
                      o->label ? o->label : "", f.n_subs, f.event_rate, rate, p50 / 1e3, p99 / 1e3, worst / 1e3,
                      median_max / 1e3, (unsigned long long) (f.n_subs ? rmin : 0), (unsigned long long) rmax,
                      (unsigned long long) expected, dropped,
                      drop_note, lost, srv / 1e6 / f.secs,
                      rate > 0 ? srv / (rate * f.secs) : NAN, cli / 1e6 / f.secs,
                      (unsigned long long) (f.errors + d_errors),
                      met ? "target met" : keeps_up ? "keeps up, lag over 100 ms" : "does not keep up");
        if (f.errors || d_errors || dropped || lost || complete != f.n_subs || cycles == 0)
                ret = -EPROTO;

finish:
        for (unsigned i = 0; i < f.n_subs; i++)
                if (f.subs[i].conn.loop)
                        conn_done(&f.subs[i].conn);
        for (unsigned i = 0; i < f.n_drv; i++)
                if (f.drv[i].conn.loop)
                        conn_done(&f.drv[i].conn);
        free(f.subs);
        free(f.drv);
        free(f.hist);
        ev_loop_destroy(f.dloop);
        ev_loop_destroy(f.loop);
        return ret;
}

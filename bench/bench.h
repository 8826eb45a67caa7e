/* SPDX-License-Identifier: MIT */
#pragma once

/* agen-bench: one process, one libev loop, many connections. Nothing here links
 * libagenclient (except bench-cleanup.c, which measures it): the cycle loops speak the
 * wire protocols themselves, so the cost they measure is the server's alone. */

#include <ev.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef uint64_t usec_t;

#define USEC_PER_SEC ((usec_t) 1000000ULL)
#define USEC_PER_MSEC ((usec_t) 1000ULL)

#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#define _printf_(a, b) __attribute__((__format__(printf, a, b)))
#define _unused_ __attribute__((__unused__))
#ifndef container_of
#define container_of(ptr, type, member) ((type *) ((char *) (ptr) - offsetof(type, member)))
#endif

/* ---- time, samples, /proc ---- */

usec_t now_usec(void);          /* CLOCK_MONOTONIC */
usec_t now_realtime_usec(void); /* CLOCK_REALTIME, to compare with the daemon's event times */

/* Latency samples in microseconds (double: sub-µs for the floor probes, negative values for
 * lateness). Sorted once, then read by percentile. */
typedef struct Samples {
        double *v;
        size_t n, cap;
        bool sorted;
} Samples;

void samples_add(Samples *s, double x);
double samples_pct(Samples *s, double p); /* p in [0,100]; NaN when empty */
double samples_mean(const Samples *s);
double samples_max(Samples *s);
void samples_free(Samples *s);

int proc_cpu_usec(pid_t pid, usec_t *ret);      /* utime + stime of the whole process */
long proc_rss_kib(pid_t pid);                   /* VmRSS, or -1 */
usec_t self_cpu_usec(void);

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);
void raise_fd_limit(unsigned want);

/* ---- results: one JSON object per line on stdout ---- */

typedef struct Out {
        char *buf;
        size_t len, cap;
        bool first;
} Out;

void out_begin(Out *o, const char *kind, const char *label);
void out_str(Out *o, const char *key, const char *val);
void out_num(Out *o, const char *key, double val);
void out_int(Out *o, const char *key, long long val);
void out_end(Out *o); /* prints the line and frees */

/* ---- JSON scanning for the hot path: finds "key": value without building a tree ---- */

/* Copies the string value of the first "key" found after the start of msg into buf.
 * Returns its length or -1. Values we read this way (ids, secrets, states) carry no escapes. */
int json_scan_str(const char *msg, const char *key, char *buf, size_t size);
bool json_scan_int(const char *msg, const char *key, long long *ret);
bool json_scan_has(const char *msg, const char *key);

/* ---- connections ---- */

typedef enum Proto {
        PROTO_VARLINK, /* NUL-terminated JSON */
        PROTO_RESP,    /* Redis replies */
        PROTO_HTTP,    /* HTTP/1.1 responses, keep-alive */
} Proto;

typedef struct Conn Conn;
/* A whole message: for varlink the JSON text, for RESP the raw reply, for HTTP the body
 * (status in c->http_status). msg is NUL-terminated in place. */
typedef void (*conn_msg_fn)(Conn *c, char *msg, size_t len);

struct Conn {
        ev_io io;
        struct ev_loop *loop;
        int fd;
        Proto proto;
        char *rbuf;
        size_t rlen, rcap;
        char *wbuf;
        size_t wlen, woff, wcap;
        conn_msg_fn on_msg;
        void *userdata;
        int http_status;
        bool dead;      /* EOF or error seen; no more callbacks */
        int error;      /* -errno or -EPIPE for EOF */
};

int connect_unix(const char *path, bool nonblock); /* fd or -errno */
int connect_tcp(const char *host, int port, bool nonblock);
void conn_init(Conn *c, struct ev_loop *loop, int fd, Proto proto, conn_msg_fn on_msg, void *userdata);
void conn_write(Conn *c, const void *p, size_t n);
void conn_printf(Conn *c, const char *fmt, ...) _printf_(2, 3);
/* Queues a varlink call: the JSON text and its terminating NUL. */
void conn_vl(Conn *c, const char *fmt, ...) _printf_(2, 3);
void conn_resp(Conn *c, int argc, const char *const *argv);
void conn_http_post(Conn *c, const char *path, const char *body);
void conn_flush(Conn *c);
void conn_done(Conn *c); /* stops the watcher, closes, frees buffers */

/* Blocking varlink call on a fresh connection; returns the reply (malloc'ed) or NULL. */
char *vl_call_once(const char *socket, const char *call_json, usec_t timeout);
int vl_call_fd(int fd, const char *call_json, char **ret_reply, usec_t timeout);

void base64_encode(const char *in, size_t n, char *out); /* out: 4*((n+2)/3)+1 bytes */

/* ---- a daemon this process starts and stops ---- */

typedef struct Daemon {
        const char *binary;
        const char *want_state_dir;     /* NULL: a fresh temp dir, removed afterwards */
        char *socket;                   /* owned; set by daemon_start() */
        char *state_dir;                /* owned */
        char *tmpdir;           /* removed by daemon_cleanup() if we made it */
        const char *args[16];
        unsigned n_args;
        pid_t pid;
        char log_path[4096];
} Daemon;

/* Starts agend with --socket/--state-dir (a fresh temp dir unless state_dir is set) and
 * returns once it answers Status. ret_ready: fork to first answered Status. */
int daemon_start(Daemon *d, usec_t *ret_ready);
/* SIGTERM, then SIGKILL after 30 s; ret_stop: signal to exit. Returns the exit status. */
int daemon_stop(Daemon *d, usec_t *ret_stop);
void daemon_cleanup(Daemon *d);
int wait_ready(const char *socket, pid_t pid, usec_t timeout);
void daemon_log_tail(const Daemon *d);

/* ---- modes ---- */

typedef enum Target {
        TARGET_AGEND,
        TARGET_REDIS,
        TARGET_ETCD,
} Target;

typedef struct Opts {
        Target target;
        const char *socket;
        const char *host;
        int port;
        unsigned clients;
        unsigned inflight;
        double warmup;
        double duration;
        double rate;            /* cycles/s per client, 0 = as fast as replies come */
        pid_t server_pid;
        const char *label;
        const char *prefix;     /* resource/key prefix */
        const char *resource;
        unsigned capacity;
        unsigned count;
        double spread;          /* scale-leases: TTLs spread over this many seconds */
        const char *dir;
        Daemon daemon;          /* used when binary is set */
        bool quiet;
        unsigned subscribers;   /* watch-fanout: Watch connections (64) */
        unsigned drivers;       /* watch-fanout: cycling connections (32) */
        double event_rate;      /* watch-fanout: target events/s, all drivers together (20000) */
} Opts;

typedef struct CycleResult {
        uint64_t cycles;
        uint64_t errors;
        uint64_t unfinished;
        double secs;
        Samples cycle, acquire;
        usec_t server_cpu, client_cpu;
        /* agend's Status at the start and end of the measured window (-1: unknown) */
        long long wal0, wal1, commits0, commits1;
        char first_error[256];
} CycleResult;

int run_cycles(struct ev_loop *loop, const Opts *o, CycleResult *r);
void cycle_result_print(const Opts *o, CycleResult *r, const char *kind);
void cycle_result_free(CycleResult *r);

int mode_cycle(const Opts *o);
int mode_floor(const Opts *o);
int mode_contention(const Opts *o);
int mode_scale_leases(Opts *o);
int mode_scale_conns(Opts *o);
int mode_cleanup(Opts *o);
int mode_watch_fanout(const Opts *o);
int mode_smoke(Opts *o);

extern bool arg_verbose;
void logf_(const char *fmt, ...) _printf_(1, 2);

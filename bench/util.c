/* SPDX-License-Identifier: MIT */
/* Time, samples, /proc readings and result lines for agen-bench. */

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

bool arg_verbose = false;

void logf_(const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
}

static usec_t clock_usec(clockid_t id) {
        struct timespec ts;

        clock_gettime(id, &ts);
        return (usec_t) ts.tv_sec * USEC_PER_SEC + (usec_t) ts.tv_nsec / 1000;
}

usec_t now_usec(void) {
        return clock_usec(CLOCK_MONOTONIC);
}

usec_t now_realtime_usec(void) {
        return clock_usec(CLOCK_REALTIME);
}

void *xmalloc(size_t n) {
        void *p = malloc(n ? n : 1);
        if (!p) {
                fputs("agen-bench: out of memory\n", stderr);
                abort();
        }
        return p;
}

void *xcalloc(size_t n, size_t m) {
        void *p = calloc(n ? n : 1, m ? m : 1);
        if (!p) {
                fputs("agen-bench: out of memory\n", stderr);
                abort();
        }
        return p;
}

void *xrealloc(void *p, size_t n) {
        p = realloc(p, n ? n : 1);
        if (!p) {
                fputs("agen-bench: out of memory\n", stderr);
                abort();
        }
        return p;
}

char *xstrdup(const char *s) {
        size_t n = strlen(s) + 1;
        return memcpy(xmalloc(n), s, n);
}

void raise_fd_limit(unsigned want) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return;
        if (rl.rlim_cur >= want)
                return;
        if (rl.rlim_max < want) {
                rl.rlim_max = want; /* works as root */
                rl.rlim_cur = want;
                if (setrlimit(RLIMIT_NOFILE, &rl) == 0)
                        return;
                (void) getrlimit(RLIMIT_NOFILE, &rl);
                rl.rlim_cur = rl.rlim_max;
        } else
                rl.rlim_cur = want;
        (void) setrlimit(RLIMIT_NOFILE, &rl);
}

/* ---- samples ---- */

void samples_add(Samples *s, double x) {
        if (s->n == s->cap) {
                s->cap = s->cap ? s->cap * 2 : 4096;
                s->v = xrealloc(s->v, s->cap * sizeof(double));
        }
        s->v[s->n++] = x;
        s->sorted = false;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static void samples_sort(Samples *s) {
        if (!s->sorted && s->n > 1)
                qsort(s->v, s->n, sizeof(double), cmp_double);
        s->sorted = true;
}

double samples_pct(Samples *s, double p) {
        if (s->n == 0)
                return NAN;
        samples_sort(s);
        /* nearest rank */
        size_t k = (size_t) ceil(p / 100.0 * (double) s->n);
        if (k < 1)
                k = 1;
        if (k > s->n)
                k = s->n;
        return s->v[k - 1];
}

double samples_mean(const Samples *s) {
        double sum = 0;

        if (s->n == 0)
                return NAN;
        for (size_t i = 0; i < s->n; i++)
                sum += s->v[i];
        return sum / (double) s->n;
}

double samples_max(Samples *s) {
        return samples_pct(s, 100);
}

void samples_free(Samples *s) {
        free(s->v);
        *s = (Samples) {};
}

/* ---- /proc ---- */

int proc_cpu_usec(pid_t pid, usec_t *ret) {
        char path[64], buf[2048];
        FILE *f;
        size_t n;

        snprintf(path, sizeof(path), "/proc/%d/stat", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        n = fread(buf, 1, sizeof(buf) - 1, f);
        fclose(f);
        buf[n] = 0;

        /* comm may contain spaces and parentheses: fields start after the last ')'. */
        char *p = strrchr(buf, ')');
        if (!p)
                return -EINVAL;
        p += 2;
        /* p is at field 3 (state); utime and stime are fields 14 and 15. */
        unsigned long long utime = 0, stime = 0;
        for (int field = 3; field < 14 && p; field++) {
                p = strchr(p, ' ');
                if (p)
                        p++;
        }
        if (!p || sscanf(p, "%llu %llu", &utime, &stime) != 2)
                return -EINVAL;
        long hz = sysconf(_SC_CLK_TCK);
        *ret = (utime + stime) * USEC_PER_SEC / (usec_t) (hz > 0 ? hz : 100);
        return 0;
}

long proc_rss_kib(pid_t pid) {
        char path[64], line[256];
        long kib = -1;
        FILE *f;

        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        f = fopen(path, "re");
        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, "VmRSS:", 6) == 0) {
                        kib = strtol(line + 6, NULL, 10);
                        break;
                }
        fclose(f);
        return kib;
}

usec_t self_cpu_usec(void) {
        struct rusage ru;

        getrusage(RUSAGE_SELF, &ru);
        return (usec_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * USEC_PER_SEC +
               (usec_t) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* ---- result lines ---- */

static void out_raw(Out *o, const char *s, size_t n) {
        if (o->len + n + 1 > o->cap) {
                o->cap = (o->len + n + 1) * 2;
                o->buf = xrealloc(o->buf, o->cap);
        }
        memcpy(o->buf + o->len, s, n);
        o->len += n;
        o->buf[o->len] = 0;
}

static void out_key(Out *o, const char *key) {
        if (!o->first)
                out_raw(o, ",", 1);
        o->first = false;
        out_raw(o, "\"", 1);
        out_raw(o, key, strlen(key));
        out_raw(o, "\":", 2);
}

void out_begin(Out *o, const char *kind, const char *label) {
        *o = (Out) { .first = true };
        out_raw(o, "{", 1);
        out_str(o, "kind", kind);
        if (label)
                out_str(o, "label", label);
}

void out_str(Out *o, const char *key, const char *val) {
        out_key(o, key);
        out_raw(o, "\"", 1);
        for (const char *p = val; *p; p++) {
                if (*p == '"' || *p == '\\')
                        out_raw(o, "\\", 1);
                if ((unsigned char) *p < 0x20)
                        out_raw(o, " ", 1);
                else
                        out_raw(o, p, 1);
        }
        out_raw(o, "\"", 1);
}

void out_num(Out *o, const char *key, double val) {
        char b[64];

        out_key(o, key);
        if (isnan(val) || isinf(val))
                snprintf(b, sizeof(b), "null");
        else
                snprintf(b, sizeof(b), "%.3f", val);
        out_raw(o, b, strlen(b));
}

void out_int(Out *o, const char *key, long long val) {
        char b[32];

        out_key(o, key);
        snprintf(b, sizeof(b), "%lld", val);
        out_raw(o, b, strlen(b));
}

void out_end(Out *o) {
        out_raw(o, "}", 1);
        puts(o->buf);
        fflush(stdout);
        free(o->buf);
        *o = (Out) {};
}

/* ---- JSON scanning ---- */

static const char *json_scan_value(const char *msg, const char *key) {
        size_t kl = strlen(key);
        const char *p = msg;

        while ((p = strchr(p, '"'))) {
                if (strncmp(p + 1, key, kl) == 0 && p[1 + kl] == '"') {
                        const char *q = p + 2 + kl;
                        while (isspace((unsigned char) *q))
                                q++;
                        if (*q == ':') {
                                q++;
                                while (isspace((unsigned char) *q))
                                        q++;
                                return q;
                        }
                }
                p++;
        }
        return NULL;
}

int json_scan_str(const char *msg, const char *key, char *buf, size_t size) {
        const char *v = json_scan_value(msg, key);
        size_t n = 0;

        if (!v || *v != '"')
                return -1;
        v++;
        while (v[n] && v[n] != '"')
                n++;
        if (n + 1 > size)
                return -1;
        memcpy(buf, v, n);
        buf[n] = 0;
        return (int) n;
}

bool json_scan_int(const char *msg, const char *key, long long *ret) {
        const char *v = json_scan_value(msg, key);
        char *end;

        if (!v)
                return false;
        if (*v == '"') /* int64 as a string (grpc-gateway) */
                v++;
        errno = 0;
        long long x = strtoll(v, &end, 10);
        if (end == v || errno != 0)
                return false;
        *ret = x;
        return true;
}

bool json_scan_has(const char *msg, const char *key) {
        return json_scan_value(msg, key) != NULL;
}

void base64_encode(const char *in, size_t n, char *out) {
        static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t i, o = 0;

        for (i = 0; i + 2 < n; i += 3) {
                unsigned v = (unsigned char) in[i] << 16 | (unsigned char) in[i + 1] << 8 |
                             (unsigned char) in[i + 2];
                out[o++] = tab[v >> 18 & 63];
                out[o++] = tab[v >> 12 & 63];
                out[o++] = tab[v >> 6 & 63];
                out[o++] = tab[v & 63];
        }
        if (i < n) {
                unsigned v = (unsigned char) in[i] << 16;
                if (i + 1 < n)
                        v |= (unsigned char) in[i + 1] << 8;
                out[o++] = tab[v >> 18 & 63];
                out[o++] = tab[v >> 12 & 63];
                out[o++] = i + 1 < n ? tab[v >> 6 & 63] : '=';
                out[o++] = '=';
        }
        out[o] = 0;
}

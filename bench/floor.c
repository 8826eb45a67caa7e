/* SPDX-License-Identifier: MIT */
/* The floor under every cycle: a Unix-socket round trip between two processes, and the
 * fdatasync of a 4 KiB write on the file system that holds the state directory. A
 * durable lease cycle needs at least two of each (acquire and release are two
 * commits); nothing in agend can beat 2 × (fdatasync + round trip) at one client. The
 * fdatasync probe also runs with two writers at once: whether the disk overlaps syncs. */

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"

#define RTT_MSG 128 /* about the size of an Acquire call */

static int probe_rtt(double secs, unsigned max, Samples *s) {
        int sv[2];
        char buf[RTT_MSG];

        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* Echo server: one read, one write, until EOF. */
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(sv[0]);
                for (;;) {
                        ssize_t n = read(sv[1], buf, sizeof(buf));
                        if (n <= 0)
                                _exit(0);
                        if (write(sv[1], buf, (size_t) n) != n)
                                _exit(1);
                }
        }
        close(sv[1]);
        memset(buf, 'x', sizeof(buf));
        usec_t end = now_usec() + (usec_t) (secs * 1e6);
        int ret = 0;
        for (unsigned i = 0; i < max && now_usec() < end; i++) {
                struct timespec a, b;
                size_t got = 0;

                clock_gettime(CLOCK_MONOTONIC, &a);
                if (write(sv[0], buf, sizeof(buf)) != (ssize_t) sizeof(buf)) {
                        ret = -EIO;
                        break;
                }
                while (got < sizeof(buf)) {
                        ssize_t n = read(sv[0], buf + got, sizeof(buf) - got);
                        if (n <= 0) {
                                ret = -EIO;
                                break;
                        }
                        got += (size_t) n;
                }
                if (ret < 0)
                        break;
                clock_gettime(CLOCK_MONOTONIC, &b);
                samples_add(s, (double) (b.tv_sec - a.tv_sec) * 1e6 + (double) (b.tv_nsec - a.tv_nsec) / 1e3);
        }
        close(sv[0]);
        (void) waitpid(pid, NULL, 0);
        return ret;
}

/* One writer of the fdatasync probe: 4 KiB overwrites of its own 128 blocks, each followed
 * by fdatasync, until the deadline. */
typedef struct SyncWriter {
        pthread_t thread;
        int fd;
        unsigned first_block, max, n;
        usec_t end;
        Samples samples;
        int ret;
} SyncWriter;

static void *sync_writer(void *userdata) {
        SyncWriter *w = userdata;
        char block[4096];

        memset(block, 'a', sizeof(block));
        for (; w->n < w->max && now_usec() < w->end; w->n++) {
                struct timespec a, b;

                block[0] = (char) w->n;
                clock_gettime(CLOCK_MONOTONIC, &a);
                if (pwrite(w->fd, block, sizeof(block), (off_t) (w->first_block + w->n % 128) * 4096) !=
                            (ssize_t) sizeof(block) ||
                    fdatasync(w->fd) < 0) {
                        w->ret = -EIO;
                        break;
                }
                clock_gettime(CLOCK_MONOTONIC, &b);
                samples_add(&w->samples,
                            (double) (b.tv_sec - a.tv_sec) * 1e6 + (double) (b.tv_nsec - a.tv_nsec) / 1e3);
        }
        return NULL;
}

/* `writers` threads write and sync the same file at once, as two commits in flight would
 * (one writer: the commit pipeline as it is). s gets every sync's time, *ret_rate the
 * syncs per second of all writers together: whether the disk overlaps them. */
static int probe_fdatasync(const char *dir, double secs, unsigned max, unsigned writers, Samples *s,
                           double *ret_rate) {
        char path[4200];
        char block[4096];
        SyncWriter w[2] = {};
        int fd, ret = 0;

        assert(writers >= 1 && writers <= ELEMENTSOF(w));
        snprintf(path, sizeof(path), "%s/fsync-probe.XXXXXX", dir);
        fd = mkostemp(path, O_CLOEXEC);
        if (fd < 0)
                return -errno;
        (void) unlink(path);
        memset(block, 'a', sizeof(block));
        /* Allocate 1 MiB first, so the timed writes overwrite blocks like a WAL that has
         * reached its size, and the timing is of data, not of file growth. */
        for (unsigned i = 0; i < 256; i++)
                if (write(fd, block, sizeof(block)) != (ssize_t) sizeof(block)) {
                        close(fd);
                        return -EIO;
                }
        if (fsync(fd) < 0) {
                close(fd);
                return -errno;
        }
        usec_t t0 = now_usec();
        unsigned started = 0, n = 0;
        for (; started < writers; started++) {
                w[started] = (SyncWriter) { .fd = fd, .first_block = started * 128, .max = max,
                                            .end = t0 + (usec_t) (secs * 1e6) };
                int k = pthread_create(&w[started].thread, NULL, sync_writer, &w[started]);
                if (k != 0) {
                        ret = -k;
                        break;
                }
        }
        for (unsigned i = 0; i < started; i++) {
                (void) pthread_join(w[i].thread, NULL);
                if (w[i].ret < 0)
                        ret = w[i].ret;
                n += w[i].n;
                for (size_t j = 0; j < w[i].samples.n; j++)
                        samples_add(s, w[i].samples.v[j]);
                samples_free(&w[i].samples);
        }
        *ret_rate = (double) n / ((double) (now_usec() - t0) / 1e6);
        close(fd);
        return ret;
}

int mode_floor(const Opts *o) {
        Samples rtt = {}, sync = {}, pair = {};
        double rate = 0, pair_rate = 0;
        double secs = o->duration > 0 ? o->duration : 2;
        const char *dir = o->dir ? o->dir : ".";
        Out out;
        int r;

        r = probe_rtt(secs, 200000, &rtt);
        if (r < 0) {
                logf_("agen-bench: socket round trip probe: %s\n", strerror(-r));
                return r;
        }
        r = probe_fdatasync(dir, secs, 100000, 1, &sync, &rate);
        if (r >= 0)
                r = probe_fdatasync(dir, secs, 100000, 2, &pair, &pair_rate);
        if (r < 0) {
                logf_("agen-bench: fdatasync probe: %s\n", strerror(-r));
                samples_free(&rtt);
                samples_free(&sync);
                samples_free(&pair);
                return r;
        }
        out_begin(&out, "floor", o->label);
        out_int(&out, "rtt_n", (long long) rtt.n);
        out_num(&out, "rtt_p50_us", samples_pct(&rtt, 50));
        out_num(&out, "rtt_p99_us", samples_pct(&rtt, 99));
        out_int(&out, "fdatasync_n", (long long) sync.n);
        out_num(&out, "fdatasync_p50_us", samples_pct(&sync, 50));
        out_num(&out, "fdatasync_p99_us", samples_pct(&sync, 99));
        out_num(&out, "fdatasync_per_s", rate);
        /* Two writers syncing the same file at once: what a second commit in flight could
         * gain on this disk (docs/performance.md, "What bounds the 64 × 1 ratios"). */
        out_num(&out, "fdatasync_pair_p50_us", samples_pct(&pair, 50));
        out_num(&out, "fdatasync_pair_per_s", pair_rate);
        out_end(&out);
        if (!o->quiet)
                logf_("floor: socket round trip p50 %.1f us p99 %.1f us; fdatasync 4 KiB p50 %.0f us p99 %.0f us, "
                      "%.0f/s; two writers at once p50 %.0f us, %.0f/s together\n",
                      samples_pct(&rtt, 50), samples_pct(&rtt, 99), samples_pct(&sync, 50), samples_pct(&sync, 99),
                      rate, samples_pct(&pair, 50), pair_rate);
        samples_free(&rtt);
        samples_free(&sync);
        samples_free(&pair);
        return 0;
}

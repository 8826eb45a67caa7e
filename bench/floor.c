/* SPDX-License-Identifier: MIT */
/* The floor under every cycle: a Unix-socket round trip between two processes, and the
 * fdatasync of a 4 KiB write on the file system that holds the state directory. A
 * durable lease cycle needs at least two of each (acquire and release are two
 * commits); nothing in agend can beat 2 × (fdatasync + round trip) at one client. */

#include <errno.h>
#include <fcntl.h>
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

static int probe_fdatasync(const char *dir, double secs, unsigned max, Samples *s, double *ret_rate) {
        char path[4200];
        char block[4096];
        int fd, ret = 0;

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
        usec_t t0 = now_usec(), end = t0 + (usec_t) (secs * 1e6);
        unsigned n = 0;
        for (; n < max && now_usec() < end; n++) {
                struct timespec a, b;

                block[0] = (char) n;
                clock_gettime(CLOCK_MONOTONIC, &a);
                if (pwrite(fd, block, sizeof(block), (off_t) (n % 256) * 4096) != (ssize_t) sizeof(block) ||
                    fdatasync(fd) < 0) {
                        ret = -EIO;
                        break;
                }
                clock_gettime(CLOCK_MONOTONIC, &b);
                samples_add(s, (double) (b.tv_sec - a.tv_sec) * 1e6 + (double) (b.tv_nsec - a.tv_nsec) / 1e3);
        }
        *ret_rate = (double) n / ((double) (now_usec() - t0) / 1e6);
        close(fd);
        return ret;
}

int mode_floor(const Opts *o) {
        Samples rtt = {}, sync = {};
        double rate = 0;
        double secs = o->duration > 0 ? o->duration : 2;
        Out out;
        int r;

        r = probe_rtt(secs, 200000, &rtt);
        if (r < 0) {
                logf_("agen-bench: socket round trip probe: %s\n", strerror(-r));
                return r;
        }
        r = probe_fdatasync(o->dir ? o->dir : ".", secs, 100000, &sync, &rate);
        if (r < 0) {
                logf_("agen-bench: fdatasync probe: %s\n", strerror(-r));
                samples_free(&rtt);
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
        out_end(&out);
        if (!o->quiet)
                logf_("floor: socket round trip p50 %.1f us p99 %.1f us; fdatasync 4 KiB p50 %.0f us p99 %.0f us, "
                      "%.0f/s\n",
                      samples_pct(&rtt, 50), samples_pct(&rtt, 99), samples_pct(&sync, 50), samples_pct(&sync, 99),
                      rate);
        samples_free(&rtt);
        samples_free(&sync);
        return 0;
}

/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <time.h>

/* Time in microseconds. The daemon times leases on CLOCK_MONOTONIC, which keeps running
 * across daemon restarts on one boot, so a stored monotonic deadline stays valid until
 * the next reboot; CLOCK_REALTIME is only for display. Convert to libev's double only at
 * the watcher. */
typedef uint64_t usec_t;

#define USEC_INFINITY ((usec_t) UINT64_MAX)
#define USEC_PER_SEC ((usec_t) 1000000ULL)
#define USEC_PER_MSEC ((usec_t) 1000ULL)
#define NSEC_PER_USEC ((uint64_t) 1000ULL)

static inline usec_t usec_from_timespec(const struct timespec *ts) {
        return (usec_t) ts->tv_sec * USEC_PER_SEC + (usec_t) ts->tv_nsec / NSEC_PER_USEC;
}

static inline usec_t usec_now(clockid_t clock) {
        struct timespec ts;
        clock_gettime(clock, &ts);
        return usec_from_timespec(&ts);
}

static inline double usec_to_sec(usec_t u) {
        return (double) u / (double) USEC_PER_SEC;
}

/* Seconds (a JSON number) to usec_t, to the nearest µs but never 0 for a positive number
 * (1e-7 is 1 µs, not "no TTL"); negative, NaN or overflowing input is -ERANGE. */
static inline int usec_from_sec(double sec, usec_t *ret) {
        if (!isfinite(sec) || sec < 0)
                return -ERANGE;
        double u = sec * (double) USEC_PER_SEC;
        if (u >= (double) (USEC_INFINITY - 1))
                return -ERANGE;
        /* A positive duration never becomes 0, which means "none" (no TTL) or "at once" to
         * every caller: it rounds up to the clock's resolution, 1 µs. */
        usec_t r = (usec_t) llround(u);
        *ret = r == 0 && sec > 0 ? 1 : r;
        return 0;
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* The one duration grammar, for every place a person types a duration: agend.conf
 * (ReclaimGraceSec=30s), agend's --grace, agenctl's --timeout/--ttl/--kill-delay/
 * --reconnect-timeout, the benchmark's --duration. systemd's time spans, reduced:
 *
 *   duration := "infinity" | part ( " "* part )*
 *   part     := number " "* unit | number          (a bare number is seconds, and only alone)
 *   number   := digits and at most one point ("1", "1.5", ".5"); no sign, no exponent
 *   unit     := us usec | ms msec | s sec second seconds | m min minute minutes
 *               | h hour hours | d day days
 *
 * "30s", "1min 30s", "1.5h", "500ms", "30" (= 30 s), "0". A positive duration never
 * becomes 0 (which means "none" or "at once" to the callers): under 1 µs it is 1 µs, as
 * usec_from_sec() rounds durations on the wire. The wire itself carries seconds as JSON
 * numbers (json_get_seconds()), not this grammar. */

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "usec.h"

/* 0 and *ret (USEC_INFINITY for "infinity"); -EINVAL for text outside the grammar,
 * -ERANGE for one that does not fit (over about 292 000 years). *ret untouched on error. */
static inline int parse_duration(const char *s, usec_t *ret) {
        static const struct {
                const char *suffix;
                double usec;
        } units[] = {
                /* Longest first among those sharing a start: "min" before "m", "ms" before "m". */
                { "msec", 1e3 },     { "ms", 1e3 },       { "usec", 1 },       { "us", 1 },
                { "seconds", 1e6 },  { "second", 1e6 },   { "sec", 1e6 },      { "s", 1e6 },
                { "minutes", 60e6 }, { "minute", 60e6 },  { "min", 60e6 },     { "m", 60e6 },
                { "hours", 3600e6 }, { "hour", 3600e6 },  { "h", 3600e6 },     { "days", 86400e6 },
                { "day", 86400e6 },  { "d", 86400e6 },
        };

        if (!s)
                return -EINVAL;
        while (isspace((unsigned char) *s))
                s++;
        if (strcmp(s, "infinity") == 0) {
                *ret = USEC_INFINITY;
                return 0;
        }
        if (!*s)
                return -EINVAL;

        double total = 0;
        unsigned parts = 0;
        bool unitless = false;
        while (*s) {
                /* Digits and one point only: strtod() alone would take a sign, an exponent,
                 * hex, "nan" and "inf". */
                size_t l = strspn(s, "0123456789.");
                char num[32], *end;
                if (l == 0)
                        return -EINVAL;
                if (l >= sizeof(num))
                        return -ERANGE;
                memcpy(num, s, l);
                num[l] = 0;
                errno = 0;
                double v = strtod(num, &end);
                if (errno || *end || !isfinite(v))
                        return -EINVAL;
                s += l;
                while (*s == ' ')
                        s++;
                double mult = 1e6;
                if (isalpha((unsigned char) *s)) {
                        size_t i, sl = 0;
                        for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
                                sl = strlen(units[i].suffix);
                                if (strncmp(s, units[i].suffix, sl) == 0 && !isalpha((unsigned char) s[sl]))
                                        break;
                        }
                        if (i == sizeof(units) / sizeof(units[0]))
                                return -EINVAL;
                        mult = units[i].usec;
                        s += sl;
                } else
                        unitless = true;
                /* "1min 30": a number without a unit only alone. */
                if (++parts > 1 && unitless)
                        return -EINVAL;
                total += v * mult;
                while (*s == ' ')
                        s++;
        }
        /* llround() returns a long: stay under INT64_MAX (about 292 000 years). */
        if (total >= (double) INT64_MAX)
                return -ERANGE;
        usec_t r = (usec_t) llround(total);
        *ret = r == 0 && total > 0 ? 1 : r;
        return 0;
}

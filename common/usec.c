/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <math.h>

#include "usec.h"

int usec_from_sec(double sec, usec_t *ret) {
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

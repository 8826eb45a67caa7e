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
        *ret = (usec_t) llround(u);
        return 0;
}

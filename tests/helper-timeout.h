/* SPDX-License-Identifier: MIT */
#pragma once

/* Guards in tests (the longest a test waits for something that should come at once) are
 * scaled by one factor, so that a run under valgrind or on a loaded machine does not fail
 * on wall time alone. scripts/test.sh sets AGEND_TEST_TIMEOUT_MULTIPLIER to the
 * --timeout-multiplier it gives meson (10 for the valgrind pass); unset, it is 1. Only
 * guards scale: a test that asserts something does *not* happen within a time keeps its
 * short window. */

#include <stdlib.h>

static inline double test_timeout_multiplier(void) {
        const char *e = getenv("AGEND_TEST_TIMEOUT_MULTIPLIER");
        char *end = NULL;
        double m = e ? strtod(e, &end) : 1.0;
        if (!e || end == e || *end || !(m >= 1.0) || m > 1000.0)
                return 1.0;
        return m;
}

/* A guard of sec seconds, scaled. */
static inline double test_guard(double sec) {
        return sec * test_timeout_multiplier();
}

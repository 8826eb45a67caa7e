/* SPDX-License-Identifier: MIT */
#pragma once

/* Internal to libagenclient (and its tests, which link the static archive). */

#include <stdbool.h>

#include "macro.h"

#ifndef assert_not_reached
#define assert_not_reached()                                                            \
        do {                                                                            \
                assert(!"unreachable");                                                 \
                abort();                                                                \
        } while (0)
#endif
#ifndef _fallthrough_
#define _fallthrough_ __attribute__((__fallthrough__))
#endif
#ifndef IN_SET
#define IN_SET(x, a, b) ((x) == (a) || (x) == (b))
#endif

/* Number of loops that still have per-loop state: 0 once every loop was shut down and
 * every generator freed. For tests. */
unsigned gen_loop_state_count(void);

typedef struct agen_gen agen_gen;
typedef struct agen_gen_ops agen_gen_ops;
/* The ops a generator was made with (to tell a lease generator from others). */
const agen_gen_ops *gen_get_ops(agen_gen *gen);

#include "string-table.h" /* streq(), streq_ptr() */

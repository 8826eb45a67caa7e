/* SPDX-License-Identifier: MIT */
/* Built when libagenclient is not part of the build: the cleanup mode needs it. */

#include <errno.h>

#include "bench.h"

int mode_cleanup(Opts *o) {
        logf_("agen-bench: cleanup: built without libagenclient\n");
        return -EOPNOTSUPP;
}

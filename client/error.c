/* SPDX-License-Identifier: MIT */
/* The varlink error names of agend and the negative errno libagenclient reports for them,
 * from the one table the daemon answers with (common/errmap.c), so that a program (agenctl
 * among them) needs no table of its own. */

#include "agen/agen.h"
#include "errmap.h"
#include "macro.h"

_public_ const char *agen_error_to_name(int error) {
        return errmap_to_name(error);
}

_public_ int agen_error_from_name(const char *name) {
        return errmap_from_name(name);
}

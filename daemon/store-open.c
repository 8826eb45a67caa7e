/* SPDX-License-Identifier: MIT */
/* Which store the daemon opens. Builds with test hooks (debug builds, meson option
 * test_hooks) let AGEND_TEST_STORE pick the in-memory store with injected faults, so an
 * integration test can prove that nothing leaves before its commit; other builds ignore
 * it, since a daemon that forgets every lease at exit must never be one typo away. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "log.h"
#include "store.h"

int store_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret, char **ret_error) {
#ifdef AGEND_TEST_HOOKS
        const char *spec = getenv("AGEND_TEST_STORE");
        if (spec && *spec) {
                int k = store_memory_from_spec(spec, ret);
                if (k < 0) {
                        if (asprintf(ret_error, "AGEND_TEST_STORE=%s: not a store this build knows", spec) < 0)
                                *ret_error = NULL;
                        return k;
                }
                log_warning("AGEND_TEST_STORE=%s: leases are kept in memory only (a test build)", spec);
                return 0;
        }
#endif
        return store_sqlite_open(dir, sync, history_size, ret, ret_error);
}

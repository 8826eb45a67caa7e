/* SPDX-License-Identifier: MIT */
/* The names of the sync levels, for Sync= and --sync: apart from any backend, so that the
 * config parser (and its fuzz harness) links without sqlite. */
#include "store.h"
#include "string-table.h"

static const char *const store_sync_table[_STORE_SYNC_MAX] = {
        [STORE_SYNC_NORMAL] = "normal",
        [STORE_SYNC_FULL] = "full",
};

DEFINE_STRING_TABLE_LOOKUP(store_sync, StoreSync)

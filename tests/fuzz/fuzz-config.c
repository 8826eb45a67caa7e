/* SPDX-License-Identifier: MIT */
/* libFuzzer: the daemon's configuration parser (daemon/config.c), which reads
 * /etc/agend/agend.conf and resources.d/ *.conf at start and at every SIGHUP.
 *
 * The input is the file's text, written to a memfd and loaded by path, as agend does. A
 * load either succeeds or fails with an error message naming the file and a line, and a
 * failed load leaves the old configuration untouched (SIGHUP keeps the old one). */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int fd = -1;
static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (fd < 0) {
                fd = memfd_create("agend.conf", MFD_CLOEXEC);
                assert(fd >= 0);
                snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        }
        assert(ftruncate(fd, 0) == 0);
        assert(pwrite(fd, data, size, 0) == (ssize_t) size);

        Config c;
        config_init_defaults(&c);
        char *error = NULL;
        int r = config_load(&c, path, NULL, &error);
        if (r < 0) {
                assert(error && strstr(error, path));
                assert(c.n_resources == 0 && !c.resources && c.n_revoke_uids == 0 && !c.revoke_uids);
                assert(c.reclaim_grace == 10 * USEC_PER_SEC && c.history_size == 10000);
        } else {
                assert(!error);
                for (size_t i = 0; i < c.n_resources; i++) {
                        assert(c.resources[i].name && *c.resources[i].name);
                        assert(c.resources[i].capacity >= 1);
                }
                gid_t groups[2] = { 1, 2 };
                (void) config_may_revoke(&c, 1000, 1000, groups, 2);
        }
        free(error);
        config_done(&c);
        return 0;
}

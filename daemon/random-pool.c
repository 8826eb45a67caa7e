/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <string.h>
#include <sys/random.h>

#include "random-pool.h"

void random_pool_init(RandomPool *p, RandomFill fill) {
        p->fill = fill ?: getrandom;
        p->pos = RANDOM_POOL_SIZE;
}

/* getrandom() returns at most 32 MiB - 1 per call and may be interrupted by a signal
 * (before the pool is initialised at boot, or for more than 256 bytes): loop. */
static int fill_all(RandomPool *p, uint8_t *buf, size_t n) {
        while (n > 0) {
                ssize_t r = p->fill(buf, n, 0);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return errno > 0 ? -errno : -EIO;
                }
                if (r == 0)
                        return -EIO;
                buf += r;
                n -= (size_t) r;
        }
        return 0;
}

int random_pool_get(RandomPool *p, void *out, size_t n) {
        /* Larger than a pool: straight from the source, the pool untouched. */
        if (n > RANDOM_POOL_SIZE)
                return fill_all(p, out, n);
        if (RANDOM_POOL_SIZE - p->pos < n) {
                int k = fill_all(p, p->buf, RANDOM_POOL_SIZE);
                if (k < 0) {
                        explicit_bzero(p->buf, RANDOM_POOL_SIZE);
                        p->pos = RANDOM_POOL_SIZE;
                        return k;
                }
                p->pos = 0;
        }
        memcpy(out, p->buf + p->pos, n);
        /* Handed out once: a later read of the pool (a core dump) does not show it. */
        explicit_bzero(p->buf + p->pos, n);
        p->pos += n;
        return 0;
}

void random_pool_done(RandomPool *p) {
        explicit_bzero(p->buf, RANDOM_POOL_SIZE);
        p->pos = RANDOM_POOL_SIZE;
}

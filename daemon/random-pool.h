/* SPDX-License-Identifier: MIT */
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Random bytes for ids, secrets and tickets, drawn from getrandom() a pool at a time
 * instead of one system call per grant. Same source, same unpredictability; bytes handed
 * out are wiped from the pool. One pool per thread of use (the engine's loop): no lock. */
#define RANDOM_POOL_SIZE 4096

typedef ssize_t (*RandomFill)(void *buf, size_t n, unsigned flags);

typedef struct RandomPool {
        RandomFill fill;        /* getrandom, or a test's counter around it */
        size_t pos;             /* bytes before pos are used (and wiped) */
        uint8_t buf[RANDOM_POOL_SIZE];
} RandomPool;

/* fill NULL: getrandom. The pool starts empty; the first draw fills it. */
void random_pool_init(RandomPool *p, RandomFill fill);
/* n random bytes into out, or a negative errno (the pool is left empty then). */
int random_pool_get(RandomPool *p, void *out, size_t n);
/* Wipes what is left. */
void random_pool_done(RandomPool *p);

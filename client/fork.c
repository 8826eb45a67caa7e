/* SPDX-License-Identifier: MIT */
/* fork() handling (see fork.h). The child handler runs in the single thread of the new
 * process before fork() returns there: it closes every tracked socket (close() is
 * async-signal-safe), bumps the generation, and releases the locks that the prepare
 * handler took, so no lock is left held by a thread that does not exist in the child. */

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#include "fork.h"

static pthread_mutex_t fds_lock = PTHREAD_MUTEX_INITIALIZER;
static int *fds;
static size_t n_fds, size_fds;
static atomic_uint generation;

static pthread_once_t once = PTHREAD_ONCE_INIT;
static struct {
        void (*lock)(void);
        void (*unlock)(void);
} hooks[FORK_HOOKS_MAX];
static atomic_uint n_hooks;

static void prepare(void) {
        unsigned n = atomic_load(&n_hooks);
        for (unsigned i = 0; i < n; i++)
                hooks[i].lock();
        pthread_mutex_lock(&fds_lock);
}

static void parent(void) {
        pthread_mutex_unlock(&fds_lock);
        unsigned n = atomic_load(&n_hooks);
        for (unsigned i = n; i > 0; i--)
                hooks[i - 1].unlock();
}

static void child(void) {
        for (size_t i = 0; i < n_fds; i++)
                (void) close(fds[i]);
        n_fds = 0;
        atomic_fetch_add(&generation, 1);
        parent();
}

static void register_handlers(void) {
        (void) pthread_atfork(prepare, parent, child);
}

unsigned fork_generation(void) {
        return atomic_load_explicit(&generation, memory_order_relaxed);
}

void fork_track_fd(int fd) {
        pthread_once(&once, register_handlers);
        pthread_mutex_lock(&fds_lock);
        if (n_fds == size_fds) {
                size_t n = size_fds ? size_fds * 2 : 16;
                int *p = realloc(fds, n * sizeof(int));
                if (!p) {
                        pthread_mutex_unlock(&fds_lock);
                        return;
                }
                fds = p;
                size_fds = n;
        }
        fds[n_fds++] = fd;
        pthread_mutex_unlock(&fds_lock);
}

void fork_untrack_fd(int fd) {
        pthread_mutex_lock(&fds_lock);
        for (size_t i = 0; i < n_fds; i++)
                if (fds[i] == fd) {
                        fds[i] = fds[--n_fds];
                        break;
                }
        pthread_mutex_unlock(&fds_lock);
}

void fork_add_lock_hooks(void (*lock)(void), void (*unlock)(void)) {
        pthread_once(&once, register_handlers);
        unsigned i = atomic_load(&n_hooks);
        if (i >= FORK_HOOKS_MAX)
                return;
        hooks[i].lock = lock;
        hooks[i].unlock = unlock;
        atomic_store(&n_hooks, i + 1);
}

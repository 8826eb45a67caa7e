/* SPDX-License-Identifier: MIT */
#pragma once

/* fork() without exec, as sd-bus treats it: in the child every object inherited from the
 * parent (client, connection, generator, per-loop state) is dead. Calls on it return
 * -ECHILD and send nothing; the sockets of inherited connections are closed in the child
 * at fork time (pthread_atfork), so the child neither reads the parent's replies nor keeps
 * a dead parent's bound leases alive. Objects record the generation they were made in;
 * the child handler bumps it. Internal to libagenclient. */

#include <stdbool.h>

/* The current fork generation of this process: 0 in the process that loaded the library,
 * +1 in each child. */
unsigned fork_generation(void);
static inline bool fork_is_stale(unsigned generation) {
        return generation != fork_generation();
}

/* Registers fd (an open socket of a connection) to be closed in a forked child; untrack it
 * before closing it in this process. Out of memory: the fd is not closed in children. */
void fork_track_fd(int fd);
void fork_untrack_fd(int fd);

/* Runs prepare before fork() and parent/child after it, once per process; for the locks
 * of other modules. Registered at most FORK_HOOKS_MAX times. */
#define FORK_HOOKS_MAX 4
void fork_add_lock_hooks(void (*lock)(void), void (*unlock)(void));

/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <sys/types.h>

#include "engine.h"

/* Who is at the other end of fd, from the kernel (SO_PEERCRED), /proc/PID/comm and the
 * systemd unit of the pid: never from anything the client says. */
int peer_get(int fd, Owner *ret);

/* The supplementary groups of pid, from /proc/PID/status, for group allow lists. The
 * primary gid (from SO_PEERCRED) is not repeated unless the kernel lists it. *ret is
 * malloc'ed; an unreadable file gives 0 groups, not an error: lists then match the primary
 * group only. */
int peer_groups(pid_t pid, gid_t **ret, size_t *ret_n);

/* Whether gid is the primary group or one of the supplementary ones. */
bool peer_in_group(gid_t primary, const gid_t *groups, size_t n, gid_t gid);

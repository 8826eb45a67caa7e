/* SPDX-License-Identifier: MIT */
#pragma once

#include "engine.h"

/* Who is at the other end of fd, from the kernel (SO_PEERCRED), /proc/PID/comm and the
 * systemd unit of the pid: never from anything the client says. */
int peer_get(int fd, Owner *ret);

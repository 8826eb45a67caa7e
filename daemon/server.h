/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

/* The listening socket. From systemd (agend.socket) if it passed one; otherwise bound
 * here with mode 0666 (authorization is per peer, by SO_PEERCRED). A socket file left by
 * a crashed agend is replaced; if an agend answers on it, this refuses (-EADDRINUSE). */
int server_listen(const char *path, int *ret_fd, bool *ret_activated);

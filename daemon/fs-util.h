/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Creates path and its missing parents with mode (existing ones are left as they are).
 * If parents_only, the last component is not created (for a socket's directory). */
int mkdir_p(const char *path, mode_t mode, bool parents_only);

/* Bytes an unprivileged writer may still use on the file system holding path, or a
 * negative errno. */
int64_t fs_free_bytes(const char *path);

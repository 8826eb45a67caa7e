/* SPDX-License-Identifier: MIT */
#pragma once

/* The state directory belongs to one agend at a time. Two daemons on one database would
 * each grant the same mutex and release each other's leases (issue 11, defect 0), so the
 * first one holds an exclusive lock on dir/agend.lock for its whole life. The lock is an
 * open file description lock: the kernel drops it when the process dies however it dies,
 * so a kill -9 never leaves a stale lock behind, and the pid written in the file is only
 * there to name the holder in the refusal. */

/* Checks dir's owner and mode, then takes the lock. The directory must belong to the
 * user agend runs as and must not have the sticky bit (a shared directory such as /tmp);
 * group or other permissions are removed with a warning. Returns the lock's fd (keep it
 * open for the daemon's life) or a negative errno after logging why: -EBUSY when another
 * agend holds the lock, -EROFS on a read-only file system, -EPERM for a directory
 * refused as unsafe. */
int state_dir_take(const char *dir);

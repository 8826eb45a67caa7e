/* SPDX-License-Identifier: MIT */
#pragma once

/* Keeping client connections across `systemctl restart agend`, through systemd's file
 * descriptor store (FileDescriptorStoreMax= in agend.service).
 *
 * At a clean stop, every connection that holds leases and is in a known, quiet state (no
 * call in progress other than a Watch of one of its own leases, no unread input, all
 * replies written) is handed to systemd with FDSTORE=1; its name lists the leases it
 * holds ("b-ID-ID..." or, with a Watch in progress, "w-WATCHED-ID-ID..."). At the next
 * start those connections are adopted before any call is answered: their leases are
 * reclaimed for them and their Watch goes on, so the client notices nothing. Anything
 * else (a waiting Acquire, a half-read call, a crash, which stores nothing) falls back to
 * the reclaim grace period: the client reconnects and calls Reclaim. */

typedef struct Manager Manager;

/* Before the socket is set up: remembers the connections systemd passed back. */
int fdstore_collect(Manager *m);
/* After the restore: adopts them. Returns the number adopted. */
int fdstore_adopt(Manager *m);
/* At a clean stop, before the connections are closed. Returns the number handed over. */
int fdstore_save(Manager *m);

/* SPDX-License-Identifier: MIT */
#pragma once

/* A watch on a key prefix from a revision, as one streamed POST /v3/watch. The stream asks
 * for a member with a leader ("hasleader" metadata): a member that loses its leader ends it,
 * rather than leaving us watching a minority that will never change.
 *
 * When the stream breaks (member killed, leader lost, transport error), the watch reports
 * BROKEN and re-creates itself, with back-off, on the next endpoint, from the revision after
 * the last one it delivered: no event is lost or repeated across the break. If that
 * revision has been compacted away, it reports COMPACTED and stops: the caller must re-read
 * the prefix (etcd_range) and start a new watch from that read's revision + 1. */

#include <stdint.h>

#include "etcd-client.h"

typedef enum EtcdWatchStatus {
        ETCD_WATCH_CREATED,             /* in effect (again); revision = etcd's current one */
        ETCD_WATCH_EVENTS,              /* events, in revision order */
        ETCD_WATCH_PROGRESS,            /* no events up to revision */
        ETCD_WATCH_BROKEN,              /* stream ended, error says why; re-creating */
        ETCD_WATCH_COMPACTED,           /* final: revision = etcd's compact revision */
} EtcdWatchStatus;

typedef struct EtcdWatch EtcdWatch;

/* May free the watch. */
typedef void (*EtcdWatchFn)(EtcdWatch *w, EtcdWatchStatus status, const EtcdEvent *events, size_t n_events,
                            int64_t revision, int error, void *userdata);

/* start_revision 0: from now. Free the watch before its client. */
int etcd_watch_new(EtcdClient *c, const char *prefix, int64_t start_revision, EtcdWatchFn cb, void *userdata,
                   EtcdWatch **ret);
/* NULL-safe, returns NULL. Also from the callback. */
EtcdWatch *etcd_watch_free(EtcdWatch *w);
/* The revision the watch resumes from after a break. */
int64_t etcd_watch_get_next_revision(const EtcdWatch *w);

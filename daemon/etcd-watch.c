/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "etcd-watch.h"
#include "macro.h"

struct EtcdWatch {
        EtcdClient *client;
        struct ev_loop *loop;
        char *prefix;
        int64_t next_rev;               /* 0 until the first created reply when started "now" */
        EtcdWatchFn cb;
        void *userdata;
        EtcdCall *call;
        ev_timer retry;
        usec_t backoff;
        bool *freed;
};

static bool report(EtcdWatch *w, EtcdWatchStatus s, const EtcdEvent *ev, size_t n, int64_t rev, int error) {
        bool freed = false;
        w->freed = &freed;
        w->cb(w, s, ev, n, rev, error, w->userdata);
        if (freed)
                return false;
        w->freed = NULL;
        return true;
}

static void schedule_retry(EtcdWatch *w) {
        w->backoff = MIN(MAX(w->backoff * 2, 100 * USEC_PER_MSEC), 2 * USEC_PER_SEC);
        ev_timer_set(&w->retry, (double) w->backoff / USEC_PER_SEC, 0.);
        ev_timer_start(w->loop, &w->retry);
}

static void on_message(EtcdClient *c, int error, const EtcdResult *r, void *userdata) {
        EtcdWatch *w = userdata;
        if (!w->call)
                return;         /* already ended by an earlier message of this stream */
        if (error < 0 || r->canceled) {
                /* An error message or a cancelled watch ends this stream; the end callback
                 * will not be needed. */
                int64_t compact = r->compact_revision;
                etcd_call_cancel(TAKE_PTR(w->call));
                if (compact > 0) {
                        report(w, ETCD_WATCH_COMPACTED, NULL, 0, compact, -ESTALE);
                        return;
                }
                if (!report(w, ETCD_WATCH_BROKEN, NULL, 0, w->next_rev, error < 0 ? error : -ECONNRESET))
                        return;
                schedule_retry(w);
                return;
        }
        if (r->created) {
                w->backoff = 0;
                if (w->next_rev == 0)
                        w->next_rev = r->header.revision + 1;
                report(w, ETCD_WATCH_CREATED, NULL, 0, r->header.revision, 0);
                return;
        }
        if (r->n_events == 0) {
                if (r->header.revision + 1 > w->next_rev)
                        w->next_rev = r->header.revision + 1;
                report(w, ETCD_WATCH_PROGRESS, NULL, 0, r->header.revision, 0);
                return;
        }
        int64_t last = r->events[r->n_events - 1].kv.mod_revision;
        if (last + 1 > w->next_rev)
                w->next_rev = last + 1;
        report(w, ETCD_WATCH_EVENTS, r->events, r->n_events, last, 0);
}

static void on_end(EtcdClient *c, int error, const EtcdResult *r, void *userdata) {
        EtcdWatch *w = userdata;
        w->call = NULL;
        if (!report(w, ETCD_WATCH_BROKEN, NULL, 0, w->next_rev, error < 0 ? error : -ECONNRESET))
                return;
        if (error == -ECANCELED)
                return;         /* the client is going away */
        schedule_retry(w);
}

static int start(EtcdWatch *w) {
        _cleanup_free_ char *body = etcd_json_watch_create(w->prefix, true, w->next_rev);
        if (!body)
                return -ENOMEM;
        return etcd_client_stream(w->client, "/v3/watch", body, true, on_message, on_end, w, &w->call);
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        EtcdWatch *w = container_of(t, EtcdWatch, retry);
        if (start(w) < 0)
                schedule_retry(w);
}

int etcd_watch_new(EtcdClient *c, const char *prefix, int64_t start_revision, EtcdWatchFn cb, void *userdata,
                   EtcdWatch **ret) {
        EtcdWatch *w = calloc(1, sizeof(*w));
        if (!w)
                return -ENOMEM;
        *w = (EtcdWatch) {
                .client = c,
                .loop = etcd_client_get_loop(c),
                .prefix = strdup(prefix),
                .next_rev = start_revision,
                .cb = cb,
                .userdata = userdata,
        };
        ev_timer_init(&w->retry, retry_cb, 0., 0.);
        int k = w->prefix ? start(w) : -ENOMEM;
        if (k < 0) {
                free(w->prefix);
                free(w);
                return k;
        }
        *ret = w;
        return 0;
}

EtcdWatch *etcd_watch_free(EtcdWatch *w) {
        if (!w)
                return NULL;
        if (w->freed)
                *w->freed = true;
        etcd_call_cancel(w->call);
        ev_timer_stop(w->loop, &w->retry);
        free(w->prefix);
        free(w);
        return NULL;
}

int64_t etcd_watch_get_next_revision(const EtcdWatch *w) {
        return w->next_rev;
}

/* SPDX-License-Identifier: MIT */
/* Cleanup latency per libagenclient layer: how long from the holder letting go of a lease
 * until a second client that waits for it holds it. The waiter is a raw varlink
 * connection of this process (Acquire with "more": its first reply says it is queued,
 * which is when the clock starts); the holder is a lease generator:
 *
 *   aclose        agen_gen_aclose() on a granted, suspended lease, in this process
 *   cancel        agen_gen_aclose() while a step waits for the lease's next event: the
 *                 step is cancelled (-ECANCELED), then the release round trip
 *   unref         agen_gen_unref() of the last reference on the loop's thread, between
 *                 runs (the finalizer closes it; handed over through the ev_async)
 *   unref_thread  agen_gen_unref() of the last reference on another thread while this
 *                 one runs the loop (the ev_async wakes it)
 *   shutdown      agen_loop_shutdown() in a child process that holds it (the clock starts
 *                 when the parent tells the child to go: one pipe wake-up more)
 *   kill9         SIGKILL of a child process that holds it: the daemon sees the connection
 *                 end and releases
 *   fork_kill9    the same, while a child it forked (no exec) lives on: the library
 *                 closed the inherited sockets in that child, so they do not hold the lease
 *
 * Built only when client/ provides agen_lease() (bench/meson.build checks the header). */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <agen/agen.h>

#include "bench.h"

typedef enum Layer {
        LAYER_ACLOSE,
        LAYER_UNREF,
        LAYER_SHUTDOWN,
        LAYER_KILL9,
        LAYER_CANCEL,
        LAYER_UNREF_THREAD,
        LAYER_FORK_KILL9,
        _LAYER_MAX,
} Layer;

static const char *const layer_name[_LAYER_MAX] = { "aclose", "unref", "shutdown", "kill9", "cancel",
                                                    "unref_thread", "fork_kill9" };

static bool layer_inproc(Layer l) {
        return l == LAYER_ACLOSE || l == LAYER_UNREF || l == LAYER_CANCEL || l == LAYER_UNREF_THREAD;
}

/* unref_thread: the other thread takes the time and drops the reference. */
typedef struct Dropper {
        agen_gen *gen;
        usec_t t0;
} Dropper;

static void *dropper_main(void *userdata) {
        Dropper *d = userdata;
        d->t0 = now_usec();
        agen_gen_unref(d->gen);
        return NULL;
}

typedef struct Waiter {
        Conn conn;
        bool queued, granted, failed;
        usec_t t_granted;
        char error[200];
} Waiter;

typedef struct Holder {
        int status;     /* 1 = pending */
        bool granted;
        int close_status; /* 1 = pending */
        usec_t t_closed;
} Holder;

static void waiter_msg(Conn *c, char *msg, size_t len) {
        Waiter *w = c->userdata;
        char state[32];

        if (json_scan_has(msg, "error") || json_scan_str(msg, "state", state, sizeof(state)) < 0) {
                w->failed = true;
                snprintf(w->error, sizeof(w->error), "%.190s", msg);
                return;
        }
        if (strcmp(state, "queued") == 0)
                w->queued = true;
        else if (strcmp(state, "granted") == 0) {
                w->granted = true;
                w->t_granted = now_usec();
        }
}

static void timeout_cb(struct ev_loop *loop, ev_timer *t, int revents) {
        ev_break(loop, EVBREAK_ALL);
}

/* Runs the loop until *flag or 5 s. */
static bool run_until(struct ev_loop *loop, const bool *flag, const bool *fail) {
        ev_timer t;
        usec_t end = now_usec() + 5 * USEC_PER_SEC;

        ev_timer_init(&t, timeout_cb, 5, 0);
        ev_timer_start(loop, &t);
        while (!*flag && !(fail && *fail) && now_usec() < end)
                ev_run(loop, EVRUN_ONCE);
        ev_timer_stop(loop, &t);
        return *flag;
}

static int waiter_open(Waiter *w, struct ev_loop *loop, const char *socket, const char *resource) {
        int fd = connect_unix(socket, true);

        *w = (Waiter) {};
        if (fd < 0)
                return fd;
        conn_init(&w->conn, loop, fd, PROTO_VARLINK, waiter_msg, w);
        conn_vl(&w->conn,
                "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"%s\","
                "\"description\":\"cleanup waiter\"},\"more\":true}",
                resource);
        conn_flush(&w->conn);
        if (!run_until(loop, &w->queued, &w->failed)) {
                logf_("agen-bench cleanup: waiter not queued: %s\n", w->failed ? w->error : "timeout");
                conn_done(&w->conn);
                return -EPROTO;
        }
        return 0;
}

static void holder_next_cb(agen_gen *gen, int status, const void *value, void *userdata) {
        Holder *h = userdata;
        const agen_lease_event *ev = value;

        h->status = status;
        h->granted = status == 0 && ev && ev->type == AGEN_LEASE_GRANTED;
}

static void holder_close_cb(agen_gen *gen, int status, void *userdata) {
        Holder *h = userdata;

        h->close_status = status;
        h->t_closed = now_usec();
}

/* In-process layers: one run. Returns the latency in µs, or -errno. */
static long long run_inproc(struct ev_loop *loop, agen_client *client, const char *socket, Layer layer,
                            const char *resource, Samples *closecb) {
        agen_lease_opts opts = { .description = "cleanup holder" };
        Holder h = { .status = 1, .close_status = 1 };
        Waiter w;
        long long ret;

        agen_gen *gen = agen_lease(client, resource, &opts);
        if (!gen)
                return -errno;
        /* The grant: step until GRANTED (QUEUED first if the last waiter still holds it). */
        for (int i = 0; i < 100 && !h.granted; i++) {
                h.status = 1;
                if (agen_gen_anext(gen, holder_next_cb, &h) < 0)
                        break;
                usec_t end = now_usec() + 5 * USEC_PER_SEC;
                while (h.status == 1 && now_usec() < end)
                        ev_run(loop, EVRUN_ONCE);
                if (h.status != 0)
                        break;
        }
        if (!h.granted) {
                agen_gen_unref(gen);
                return -ENOLCK;
        }
        ret = waiter_open(&w, loop, socket, resource);
        if (ret < 0) {
                agen_gen_unref(gen);
                return ret;
        }

        if (layer == LAYER_CANCEL) {
                /* A step that waits for the next event of the held lease. */
                h.status = 1;
                if (agen_gen_anext(gen, holder_next_cb, &h) < 0) {
                        conn_done(&w.conn);
                        agen_gen_unref(gen);
                        return -EBUSY;
                }
                for (int i = 0; i < 4; i++)
                        ev_run(loop, EVRUN_NOWAIT);
        }
        Dropper d = { .gen = gen };
        pthread_t thread;
        bool joined = true;
        usec_t t0 = now_usec();
        if (layer == LAYER_ACLOSE || layer == LAYER_CANCEL) {
                int r = agen_gen_aclose(gen, holder_close_cb, &h);
                if (r < 0) {
                        conn_done(&w.conn);
                        agen_gen_unref(gen);
                        return r;
                }
        } else if (layer == LAYER_UNREF_THREAD) {
                if (pthread_create(&thread, NULL, dropper_main, &d) != 0) {
                        conn_done(&w.conn);
                        agen_gen_unref(gen);
                        return -EAGAIN;
                }
                joined = false;
                gen = NULL;
        } else
                gen = agen_gen_unref(gen);

        if (!run_until(loop, &w.granted, &w.failed))
                ret = -ETIMEDOUT;
        else {
                if (!joined) {
                        (void) pthread_join(thread, NULL);
                        joined = true;
                        t0 = d.t0;
                }
                ret = (long long) (w.t_granted - t0);
        }
        if (!joined)
                (void) pthread_join(thread, NULL);
        if (layer == LAYER_CANCEL && h.status != -ECANCELED && ret >= 0)
                ret = -EPROTO; /* the waiting step must have been cancelled */
        if (layer == LAYER_ACLOSE || layer == LAYER_CANCEL) {
                usec_t end = now_usec() + 5 * USEC_PER_SEC;
                while (h.close_status == 1 && now_usec() < end)
                        ev_run(loop, EVRUN_ONCE);
                if (h.close_status == 0)
                        samples_add(closecb, (double) (h.t_closed - t0));
                agen_gen_unref(gen);
        }
        /* Let the finalizer's close go on before the next run. */
        for (int i = 0; i < 10; i++)
                ev_run(loop, EVRUN_NOWAIT);
        conn_done(&w.conn); /* the waiter's own lease ends with its connection */
        return ret;
}

/* Child process layers: one run. */
static long long run_child(struct ev_loop *loop, const char *socket, Layer layer, const char *resource) {
        int up[2], down[2];
        char b;
        Waiter w;
        long long ret;

        if (pipe2(up, O_CLOEXEC) < 0)
                return -errno;
        if (pipe2(down, O_CLOEXEC) < 0) {
                close(up[0]);
                close(up[1]);
                return -errno;
        }
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                struct ev_loop *l = ev_loop_new(EVFLAG_AUTO);
                agen_client *c = NULL;
                agen_lease_opts opts = { .description = "cleanup holder (child)" };
                const void *v = NULL;

                close(up[0]);
                close(down[1]);
                if (!l || agen_client_new(l, socket, &c) < 0)
                        _exit(2);
                agen_gen *g = agen_lease(c, resource, &opts);
                if (!g)
                        _exit(3);
                for (int i = 0; i < 100; i++) {
                        if (agen_gen_next_sync(g, &v) != 0)
                                _exit(4);
                        if (((const agen_lease_event *) v)->type == AGEN_LEASE_GRANTED)
                                break;
                }
                if (layer == LAYER_FORK_KILL9) {
                        /* A child of the holder that never execs and outlives it: it ends
                         * when the bench closes the pipe. */
                        pid_t gc = fork();
                        if (gc < 0)
                                _exit(7);
                        if (gc == 0) {
                                close(up[1]);
                                (void) read(down[0], &b, 1);
                                _exit(0);
                        }
                }
                if (write(up[1], "g", 1) != 1)
                        _exit(5);
                /* Wait for go (or be killed). */
                if (read(down[0], &b, 1) != 1)
                        _exit(6);
                (void) agen_loop_shutdown(l, 5);
                _exit(0);
        }
        close(up[1]);
        close(down[0]);
        struct pollfd p = { .fd = up[0], .events = POLLIN };
        if (poll(&p, 1, 5000) != 1 || read(up[0], &b, 1) != 1) {
                ret = -ENOLCK;
                goto out;
        }
        ret = waiter_open(&w, loop, socket, resource);
        if (ret < 0)
                goto out;
        usec_t t0 = now_usec();
        if (layer == LAYER_KILL9 || layer == LAYER_FORK_KILL9)
                (void) kill(pid, SIGKILL);
        else if (write(down[1], "x", 1) != 1) {
                conn_done(&w.conn);
                ret = -EIO;
                goto out;
        }
        if (!run_until(loop, &w.granted, &w.failed))
                ret = -ETIMEDOUT;
        else
                ret = (long long) (w.t_granted - t0);
        conn_done(&w.conn);
out:
        close(up[0]);
        close(down[1]);
        (void) kill(pid, SIGKILL); /* no-op once it has exited */
        (void) waitpid(pid, NULL, 0);
        return ret;
}

int mode_cleanup(Opts *o) {
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        Daemon *d = &o->daemon;
        const char *socket = o->socket;
        Samples lat[_LAYER_MAX] = {}, closecb = {};
        unsigned errors[_LAYER_MAX] = {};
        unsigned runs = o->count ? o->count : 1000;
        agen_client *client = NULL;
        int ret = 0;

        if (d->binary) {
                ret = daemon_start(d, NULL);
                if (ret < 0)
                        goto finish;
                socket = d->socket;
        }
        if (!socket) {
                ret = -EINVAL;
                goto finish;
        }

        /* Child layers first, while this process holds no library state to fork. */
        static const Layer order[] = { LAYER_KILL9, LAYER_FORK_KILL9, LAYER_SHUTDOWN, LAYER_ACLOSE, LAYER_CANCEL,
                                       LAYER_UNREF, LAYER_UNREF_THREAD };
        for (size_t li = 0; li < ELEMENTSOF(order); li++) {
                Layer layer = order[li];
                char resource[64];

                snprintf(resource, sizeof(resource), "cleanup-%s", layer_name[layer]);
                if (layer_inproc(layer) && !client) {
                        ret = agen_client_new(loop, socket, &client);
                        if (ret < 0) {
                                logf_("agen-bench cleanup: agen_client_new: %s\n", strerror(-ret));
                                goto finish;
                        }
                }
                for (unsigned i = 0; i < runs && errors[layer] < 10; i++) {
                        long long r = layer_inproc(layer) ?
                                run_inproc(loop, client, socket, layer, resource, &closecb) :
                                run_child(loop, socket, layer, resource);
                        if (r < 0) {
                                if (errors[layer]++ == 0)
                                        logf_("agen-bench cleanup: %s: %s\n", layer_name[layer], strerror((int) -r));
                                continue;
                        }
                        samples_add(&lat[layer], (double) r);
                }
                logf_("cleanup %-12s n=%-5zu p50 %7.0f us  p99 %7.0f us  max %7.0f us  errors %u\n", layer_name[layer],
                      lat[layer].n, samples_pct(&lat[layer], 50), samples_pct(&lat[layer], 99),
                      samples_max(&lat[layer]), errors[layer]);
        }

        Out out;
        out_begin(&out, "cleanup", o->label);
        for (Layer l = 0; l < _LAYER_MAX; l++) {
                char k[64];
                snprintf(k, sizeof(k), "%s_n", layer_name[l]);
                out_int(&out, k, (long long) lat[l].n);
                snprintf(k, sizeof(k), "%s_p50_us", layer_name[l]);
                out_num(&out, k, samples_pct(&lat[l], 50));
                snprintf(k, sizeof(k), "%s_p99_us", layer_name[l]);
                out_num(&out, k, samples_pct(&lat[l], 99));
                snprintf(k, sizeof(k), "%s_max_us", layer_name[l]);
                out_num(&out, k, samples_max(&lat[l]));
                snprintf(k, sizeof(k), "%s_errors", layer_name[l]);
                out_int(&out, k, errors[l]);
                if (errors[l])
                        ret = -EPROTO;
        }
        out_num(&out, "aclose_callback_p50_us", samples_pct(&closecb, 50));
        out_num(&out, "aclose_callback_p99_us", samples_pct(&closecb, 99));
        out_end(&out);

finish:
        if (client) {
                (void) agen_loop_shutdown(loop, 5);
                agen_client_unref(client);
        }
        for (Layer l = 0; l < _LAYER_MAX; l++)
                samples_free(&lat[l]);
        samples_free(&closecb);
        if (d->binary)
                daemon_cleanup(d);
        ev_loop_destroy(loop);
        return ret;
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "conn.h"
#include "fdstore.h"
#include "log.h"
#include "macro.h"
#include "cluster-service.h"
#include "manager.h"
#include "server.h"
#include "store-guard.h"
#include "store-pipe.h"

#if HAVE_LIBSYSTEMD
#include <systemd/sd-daemon.h>
#endif

/* At most this many rounds of process → commit → flush → close per prepare; each round
 * only follows from closes in the round before, so the loop ends quickly. */
#define PREPARE_ROUNDS 8

static void notify(Manager *m, const char *state) {
#if HAVE_LIBSYSTEMD
        (void) sd_notify(false, state);
#endif
}

UserStat *manager_user(Manager *m, uint32_t uid, bool create) {
        return hashmap_uid_entry(&m->users, uid, sizeof(UserStat), create);
}

void manager_user_maybe_free(Manager *m, UserStat *u) {
        if (!u || u->connections || u->leases || u->waiters)
                return;
        hashmap_remove(&m->users, u->key);
        free(u);
}


static void arm_timer(Manager *m) {
        usec_t next = engine_next_deadline(m->engine);
        ev_timer_stop(m->loop, &m->timer);
        if (next == USEC_INFINITY)
                return;
        /* On the engine's clock, the deadline's: on another one (a harness's) the timer
         * would be due at every turn while timer_cb, at the engine's clock, finds nothing
         * due, and the loop would spin instead of sleeping until the commit is done. */
        usec_t now = engine_now(m->engine);
        double after = next > now ? usec_to_sec(next - now) : 0.0;
        ev_timer_set(&m->timer, after, 0.0);
        ev_timer_start(m->loop, &m->timer);
}

/* glibc keeps small freed chunks in its fastbins unmerged, and merges all of them at
 * once when something frees 64 KiB or asks for a larger chunk. After a million leases
 * had ended with neither (mass expiry), that one merge took ~170 ms of the loop, the whole
 * of the expiry lateness's maximum (docs/performance.md, "The lateness maximum"). So the
 * heap is merged whenever this many leases have ended since the last merge: mallopt()
 * merges the main arena (the loop's) before it sets anything, and setting the default
 * keeps everything else as it is. Turning the fastbins off instead cost ~0.2 µs per
 * acquire → release cycle at 64 clients. */
#define HEAP_MERGE_LEASES 4096
#define GLIBC_DEFAULT_MXFAST (64 * sizeof(size_t) / 4)

static void heap_merge_step(Manager *m) {
        unsigned n = engine_n_leases(m->engine);
        if (n >= m->leases_high) {
                m->leases_high = n;
                return;
        }
        if (m->leases_high - n < HEAP_MERGE_LEASES)
                return;
        (void) mallopt(M_MXFAST, (int) GLIBC_DEFAULT_MXFAST);
        m->leases_high = n;
}

static void send_status(Manager *m) {
#if HAVE_LIBSYSTEMD
        unsigned n_conns = varlink_server_n_connections(m->server);
        uint64_t sig = ((uint64_t) engine_n_leases(m->engine) << 40) ^ ((uint64_t) engine_n_waiters(m->engine) << 20) ^
                       n_conns;
        usec_t now = usec_now(CLOCK_MONOTONIC);
        if (sig == m->status_sent || now - m->status_time < USEC_PER_SEC)
                return;
        m->status_sent = sig;
        m->status_time = now;
        (void) sd_notifyf(false, "STATUS=%u leases, %u waiters, %u connections%s%s", engine_n_leases(m->engine),
                          engine_n_waiters(m->engine), n_conns,
                          engine_in_grace(m->engine) ? " (waiting for holders to reclaim)" : "",
                          store_guard_status(m->guard));
#endif
}

static void store_failed(Manager *m, int k) {
        /* Answering now would report changes that are not durable. Stop; the next start
         * restores from what was committed. */
        log_error_errno(k, "cannot commit to the database: %m; stopping without answering");
        m->store_failed = true;
        m->exit_code = EXIT_FAILURE;
        ev_break(m->loop, EVBREAK_ALL);
}

/* The pipelined group commit (store-pipe.c). The loop decides a batch (every call and
 * timer of an iteration), hands its writes to the commit thread and goes on with the next
 * batch while the disk works; the batch's replies and events are held in the varlink
 * server, sealed with the batch, and released when its commit is durable (commit_done),
 * in commit order: one commit is in flight at a time, and the next takes all that was
 * decided meanwhile. Output of an iteration that changed nothing may still report a state
 * that is not durable yet (a Status, a Watch snapshot): it is released with the commit in
 * flight, or at once if there is none. */
static void commit_done(StorePipe *p, int k, void *userdata);

/* A commit on the loop usually takes a fraction of a millisecond, but now and then far
 * longer (a write waiting behind the disk's writeback): a timer due this soon is work
 * waiting, since an expiry decided late is late for good. Mass expiry keeps a timer due
 * all the time, so its commits all go through the thread. */
#define INLINE_TIMER_HORIZON (10 * USEC_PER_MSEC)

static bool timer_due_soon(Manager *m) {
        usec_t next = engine_next_deadline(m->engine);
        return next != USEC_INFINITY && next <= engine_now(m->engine) + INLINE_TIMER_HORIZON;
}

/* Nothing for the loop to do while the disk works: no call waiting for its turn, no
 * connection with input or a connection to accept, no timer due soon. */
static bool loop_idle(Manager *m) {
        return !varlink_server_input_waiting(m->server) && !timer_due_soon(m);
}

/* When the hand-off to the commit thread buys nothing, the batch is committed right here
 * and its output released at once, in the same order as through the thread, since no
 * commit is in flight:
 * - when the loop is idle (the one-client case), in either sync mode;
 * - with sync=normal, also while calls wait, as long as no timer is due soon: such a
 *   commit writes to the page cache and never syncs (the checkpoint, which does, and a
 *   commit that may wait for a fold thread fallen behind are kept for the thread by
 *   store_pipe_may_commit_inline()), and on two
 *   cores the hand-off's wake-ups cost more than the overlap gains (docs/performance.md,
 *   "Round 2: commits on the loop under load"). With sync=full the loop never waits for
 *   an fdatasync while work waits.
 * A batch the guard wants committed again at once (-EINPROGRESS) is, a few times at most,
 * then handed to the thread. */
static bool commit_inline(Manager *m) {
        if (!store_pipe_may_commit_inline(m->pipe))
                return false;
        if (m->config.sync == STORE_SYNC_FULL ? !loop_idle(m) : timer_due_soon(m))
                return false;
        for (int i = 0; i < 3; i++) {
                m->commit_owed = false;
                varlink_server_seal(m->server);
                int k = store_pipe_commit_inline(m->pipe);
                commit_done(m->pipe, k, m);
                if (!m->commit_owed || m->store_failed || !store_guard_may_commit(m->guard))
                        return true;
        }
        return false;   /* still owed: the thread takes it now */
}

static void commit_step(Manager *m) {
        bool in_flight = store_pipe_in_flight(m->pipe);
        if (!store_pipe_dirty(m->pipe) && !m->commit_owed) {
                if (in_flight || m->commit_held)
                        varlink_server_seal(m->server);
                else
                        varlink_server_release(m->server, true);
                return;
        }
        if (in_flight || !store_guard_may_commit(m->guard))
                return;         /* this batch waits and grows: the next commit takes it */
        if (commit_inline(m))
                return;
        if (store_pipe_submit(m->pipe) < 0)
                return;
        m->commit_owed = false;
        varlink_server_seal(m->server);
}

static void commit_done(StorePipe *p, int k, void *userdata) {
        Manager *m = userdata;
        k = store_guard_finish(m->guard, k);
        if (k == -EINPROGRESS || k == -EAGAIN) {
                /* Not durable: its replies stay held; the same batch (with what came
                 * since) is committed again, now or when the guard allows. */
                m->commit_owed = true;
                m->commit_held = true;
                return;
        }
        if (k < 0) {
                store_failed(m, k);
                return;
        }
        m->commit_held = false;
        if (k > 0)
                m->commits++;
        varlink_server_release(m->server, false);
}

/* Once per loop iteration, before it sleeps (like redis's beforeSleep()): handle the
 * calls that became free, hand the batch to the commit, write what may be written. */
static void prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents) {
        Manager *m = w->data;

        for (int round = 0; round < PREPARE_ROUNDS && !m->store_failed; round++) {
                /* Calls queued behind a call that just ended. */
                varlink_server_dispatch(m->server);
                commit_step(m);
                /* Closing connections releases leases and may grant others: another
                 * round hands that on and writes what may go. */
                if (varlink_server_flush(m->server) == 0)
                        break;
        }
        arm_timer(m);
        heap_merge_step(m);
        send_status(m);
}

/* Expiries, timeouts and the end of the grace period: at most this many per loop
 * iteration (issue 12 item 5). Their changes join the iteration's batch; the rest wait one
 * iteration (arm_timer() sets the timer due at once), behind the I/O that is ready. */
#define TIMERS_PER_ITERATION 256

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Manager *m = w->data;
        (void) engine_run_timers_max(m->engine, TIMERS_PER_ITERATION);
}

static void watchdog_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        /* Sent from the loop itself: a loop that hangs stops the pings and systemd
         * restarts it. */
        notify(w->data, "WATCHDOG=1");
}

static int on_connect(VarlinkServer *s, VarlinkConn *link, void *userdata) {
        Conn *c;
        int k = conn_new(userdata, link, &c);
        if (k == -EMFILE || k == -ENFILE)
                return k;       /* the server pauses accepting and logs it once */
        if (k < 0)
                return log_warning_errno(k, "cannot identify the peer of a new connection: %m");
        varlink_conn_set_userdata(link, c);
        return 0;
}

static void on_disconnect(VarlinkServer *s, VarlinkConn *link, void *userdata) {
        Manager *m = userdata;
        Conn *c = varlink_conn_get_userdata(link);
        if (c)
                conn_free(c, !m->shutting_down);
}

/* A silent connection is closed unless it holds leases (fd-store adoptions do). */
static bool may_time_out(VarlinkConn *link, void *userdata) {
        Conn *c = varlink_conn_get_userdata(link);
        return !c || (c->holder.n_leases == 0 && c->busy == CONN_IDLE);
}

const VarlinkServerCallbacks manager_server_callbacks = {
        .connect = on_connect,
        .disconnect = on_disconnect,
        .may_time_out = may_time_out,
};

static void stop_cb(struct ev_loop *loop, ev_signal *w, int revents) {
        Manager *m = w->data;
        log_info("received %s, stopping", strsignal(w->signum));
        m->exit_code = EXIT_SUCCESS;
        ev_break(loop, EVBREAK_ALL);
}

static void hup_cb(struct ev_loop *loop, ev_signal *w, int revents) {
        (void) manager_reload(w->data);
}

void manager_apply_limits(Manager *m) {
        varlink_server_set_limits(m->server, &(VarlinkServerLimits) {
                .max_message_size = m->config.max_message_size,
                .max_unanswered_input = m->config.max_unanswered_input,
                .max_connections_per_uid = m->config.max_connections_per_user,
                .output_high_water = VARLINK_OUTPUT_HIGH_WATER,
                .max_output_per_conn = m->config.max_output_per_connection,
                .max_output_per_uid = m->config.max_output_per_user,
                .max_output_total = m->config.max_output_total,
                .client_timeout = m->config.client_timeout,
        });
}

int manager_reload(Manager *m) {
        _cleanup_free_ char *error = NULL;
        Config n;
        config_init_defaults(&n);
        /* Cluster scope is served only if the cluster service started with the daemon. */
        int k = config_load_flags(&n, m->opts.config_path, m->opts.config_dir, m->cluster ? CONFIG_CLUSTER_SERVED : 0,
                                  &error);
        if (k < 0) {
                config_done(&n);
                return log_warning_errno(k, "configuration not reloaded, keeping the old one: %s", strna(error));
        }
        /* Command-line settings stay in force across reloads. */
        if (m->opts.sync >= 0)
                n.sync = (StoreSync) m->opts.sync;
        if (m->opts.grace >= 0)
                n.reclaim_grace = (usec_t) m->opts.grace;
        if (n.sync != m->config.sync)
                log_warning("Sync= changed in the configuration; it takes effect at the next start");
        n.sync = m->config.sync;
        k = engine_configure(m->engine, n.resources, n.n_resources, n.allow_undeclared);
        if (k < 0) {
                config_done(&n);
                return log_warning_errno(k, "cannot apply the configuration: %m");
        }
        config_done(&m->config);
        m->config = n;
        (void) cluster_service_configure(m->cluster, &m->config);
        manager_apply_limits(m);
        log_info("configuration reloaded: %zu declared resources", m->config.n_resources);
        return 0;
}

static int read_boot_id(char *buf, size_t n) {
        FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
        if (!f)
                return -errno;
        if (!fgets(buf, (int) n, f)) {
                fclose(f);
                return -EIO;
        }
        fclose(f);
        buf[strcspn(buf, "\n")] = 0;
        return 0;
}

int manager_new(const ManagerOptions *opts, Manager **ret) {
        Manager *m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->opts = *opts;
        m->exit_code = EXIT_SUCCESS;
        hashmap_init(&m->users);
        config_init_defaults(&m->config);
        *ret = m;
        return 0;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        /* Connections close without releasing: their leases stay for the next start. */
        m->shutting_down = true;
        m->server = varlink_server_free(m->server);
        engine_free(m->engine);
        store_free(m->store);
        store_guard_free(m->guard);
        if (m->loop) {
                ev_prepare_stop(m->loop, &m->prepare);
                ev_timer_stop(m->loop, &m->timer);
                ev_timer_stop(m->loop, &m->watchdog);
                ev_signal_stop(m->loop, &m->sigterm);
                ev_signal_stop(m->loop, &m->sigint);
                ev_signal_stop(m->loop, &m->sighup);
        }
        /* Last of the loop's users: it runs the loop until etcd answers the revoke, so
         * nothing else may be left on it. */
        m->cluster = cluster_service_free(m->cluster);
        for (size_t j = 0; j < m->n_stored; j++) {
                safe_close(m->stored[j].fd);
                free(m->stored[j].name);
        }
        free(m->stored);
        HashmapIter i = {};
        UserStat *u;
        while (hashmap_iterate(&m->users, &i, (void **) &u))
                free(u);
        hashmap_done(&m->users);
        config_done(&m->config);
        if (m->loop)
                ev_loop_destroy(m->loop);
        free(m);
        return NULL;
}

/* The commit path as manager_run() sets it up; exported so that a harness running the
 * daemon's loop over a store of its own (tests/fuzz/fuzz-dispatch.c) drives the same
 * pipeline, prepare step and held replies as agend, not a copy of them. */
int manager_pipeline_new(Manager *m, Store *inner) {
        int k = store_pipe_new(m->loop, inner, commit_done, m, &m->pipe);
        if (k < 0)
                return k;
        m->store = store_pipe_store(m->pipe);
        return 0;
}

void manager_loop_start(Manager *m) {
        varlink_server_hold_output(m->server, true);
        ev_prepare_init(&m->prepare, prepare_cb);
        m->prepare.data = m;
        ev_prepare_start(m->loop, &m->prepare);
        ev_init(&m->timer, timer_cb);
        m->timer.data = m;
}

int manager_run(Manager *m) {
        _cleanup_free_ char *error = NULL;
        int k = config_load_flags(&m->config, m->opts.config_path, m->opts.config_dir, CONFIG_CLUSTER_SERVED, &error);
        if (k < 0) {
                log_error("%s", error ? error : "cannot load the configuration");
                return EXIT_FAILURE;
        }
        if (m->opts.sync >= 0)
                m->config.sync = (StoreSync) m->opts.sync;
        if (m->opts.grace >= 0)
                m->config.reclaim_grace = (usec_t) m->opts.grace;

        if (read_boot_id(m->boot_id, sizeof(m->boot_id)) < 0)
                log_warning("cannot read the boot id; leases restored after a restart cannot be told from "
                            "leases of an earlier boot");

        free(error);
        error = NULL;
        k = store_guard_new(m->opts.state_dir, &m->guard);
        if (k < 0)
                return log_error_errno(k, "cannot set up the disk space guard: %m"), EXIT_FAILURE;
        k = store_open(m->opts.state_dir, m->config.sync, m->config.history_size, &m->store, &error);
        if (k < 0) {
                log_error("%s", error ? error : "cannot open the database");
                return EXIT_FAILURE;
        }

        m->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
        if (!m->loop) {
                log_error("cannot create the event loop");
                return EXIT_FAILURE;
        }
        Store *inner = m->store;
        k = manager_pipeline_new(m, inner);
        if (k < 0) {
                m->store = NULL;
                store_free(inner);
                return log_error_errno(k, "cannot start the commit thread: %m"), EXIT_FAILURE;
        }
        store_guard_start(m->guard, m->loop, m->store);
        k = engine_new(NULL, m->store, &methods_engine_callbacks, m, &m->engine);
        if (k < 0)
                return log_error_errno(k, "cannot create the lease engine: %m"), EXIT_FAILURE;
        k = engine_configure(m->engine, m->config.resources, m->config.n_resources, m->config.allow_undeclared);
        if (k < 0)
                return log_error_errno(k, "cannot apply the configuration: %m"), EXIT_FAILURE;
        if (cluster_service_new(m, &m->cluster) < 0)
                return EXIT_FAILURE;
        k = varlink_server_new(m->loop,
                               &(VarlinkServerOptions) { .error_protocol = "io.agend.Lease.ProtocolError",
                                                         .error_limit = "io.agend.Lease.LimitExceeded" },
                               &manager_server_callbacks, m, &m->server);
        if (k >= 0)
                k = methods_bind(m->server);
        if (k < 0)
                return log_error_errno(k, "cannot set up the varlink server: %m"), EXIT_FAILURE;
        manager_apply_limits(m);

        /* Listen before restoring, so clients can connect meanwhile; nothing is read from
         * them (the listening watcher starts below) until the leases are back. */
        (void) fdstore_collect(m);
        int listen_fd;
        k = server_listen(m->opts.socket_path, &listen_fd, &m->socket_activated);
        if (k < 0)
                return EXIT_FAILURE;
        k = varlink_server_listen_fd(m->server, listen_fd);
        if (k < 0) {
                safe_close(listen_fd);
                return log_error_errno(k, "cannot listen: %m"), EXIT_FAILURE;
        }

        usec_t t0 = usec_now(CLOCK_MONOTONIC);
        k = engine_restore(m->engine, m->boot_id[0] ? m->boot_id : NULL, m->config.reclaim_grace);
        if (k < 0) {
                log_error_errno(k, "cannot restore leases from %s/agend.db: %m; refusing to start", m->opts.state_dir);
                return EXIT_FAILURE;
        }
        int c = store_guard_commit(m->guard);
        if (c < 0 && c != -EAGAIN) {
                log_error_errno(c, "cannot write to %s/agend.db: %m", m->opts.state_dir);
                return EXIT_FAILURE;
        }
        /* Per-uid lease counts of the restored leases. */
        ObjMapIter hi = {};
        Resource *r;
        while (objmap_iterate(engine_resources(m->engine), &hi, (void **) &r))
                for (Lease *l = r->leases; l; l = l->res_next) {
                        UserStat *u = manager_user(m, l->owner->uid, true);
                        if (u)
                                u->leases++;
                }

        /* Restored waiters are the unclaimed places (none is claimed before the loop runs). */
        log_info("agend %s serving %s (state in %s, sync=%s): %d leases and %u waiters restored in %.1f ms%s",
                 AGEND_VERSION, m->socket_activated ? "the socket from systemd" : m->opts.socket_path,
                 m->opts.state_dir, m->config.sync == STORE_SYNC_FULL ? "full" : "normal", k,
                 engine_n_unclaimed(m->engine), usec_to_sec(usec_now(CLOCK_MONOTONIC) - t0) * 1000,
                 engine_in_grace(m->engine) ? ", waiting for their holders to reclaim them" : "");

        /* Connections systemd kept across a restart get their leases back before anyone
         * else is served. */
        int adopted = fdstore_adopt(m);
        if (adopted > 0)
                log_info("took back %d connections kept by systemd", adopted);

        m->started = usec_now(CLOCK_MONOTONIC);

        manager_loop_start(m);
        varlink_server_start(m->server);
        ev_signal_init(&m->sigterm, stop_cb, SIGTERM);
        ev_signal_init(&m->sigint, stop_cb, SIGINT);
        ev_signal_init(&m->sighup, hup_cb, SIGHUP);
        m->sigterm.data = m->sigint.data = m->sighup.data = m;
        ev_signal_start(m->loop, &m->sigterm);
        ev_signal_start(m->loop, &m->sigint);
        ev_signal_start(m->loop, &m->sighup);

#if HAVE_LIBSYSTEMD
        uint64_t wd;
        if (sd_watchdog_enabled(false, &wd) > 0 && wd > 0) {
                ev_timer_init(&m->watchdog, watchdog_cb, usec_to_sec(wd) / 2, usec_to_sec(wd) / 2);
                m->watchdog.data = m;
                ev_timer_start(m->loop, &m->watchdog);
        }
#endif
        notify(m, "READY=1");
        m->status_time = 0;
        send_status(m);

        ev_run(m->loop, 0);

        notify(m, "STOPPING=1");
        /* Stop accepting; commit what the last iteration changed; close. Bound leases stay
         * in the store for the next start (which gives their holders the grace period). */
        varlink_server_stop(m->server);
        if (!m->store_failed) {
                k = m->store->ops->commit(m->store);
                if (k < 0) {
                        log_error_errno(k, "cannot commit at shutdown: %m");
                        m->exit_code = EXIT_FAILURE;
                } else
                        varlink_server_release(m->server, true);   /* all durable now */
        }
        if (!m->store_failed && m->exit_code == EXIT_SUCCESS)
                (void) fdstore_save(m);
        if (!m->socket_activated)
                (void) unlink(m->opts.socket_path);
        return m->exit_code;
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* The daemon's top object: the libev loop, the engine and store, the listening socket,
 * the connections, and the group commit. One iteration of the loop reads and decides
 * (connections, timers); then, in one ev_prepare watcher, the store commits everything
 * the iteration changed and only after that are the replies written. */

#include <ev.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "engine.h"
#include "hashmap.h"
#include "store.h"
#include "store-pipe.h"
#include "usec.h"
#include "varlink-server.h"

typedef struct Conn Conn;
typedef struct ClusterService ClusterService;
typedef struct StoreGuard StoreGuard;

/* Per-uid usage of the lease service, for its limits (connections per uid are the
 * transport's). */
typedef struct UserStat {
        char key[HASHMAP_UID_KEY_SIZE]; /* first: the uid in decimal, the key (hashmap_uid_entry()) */
        unsigned connections;   /* Conns pointing here (keeps the entry alive) */
        unsigned leases;
        unsigned waiters;
} UserStat;

/* A connection systemd kept for us across a restart (fdstore.c). */
typedef struct StoredConn {
        int fd;
        char *name;
} StoredConn;

typedef struct ManagerOptions {
        const char *config_path;        /* NULL: the config directory */
        const char *config_dir;
        const char *socket_path;
        const char *state_dir;
        int sync;                       /* -1 = from the config */
        int64_t grace;                  /* usec; -1 = from the config */
} ManagerOptions;

typedef struct Manager {
        struct ev_loop *loop;
        ManagerOptions opts;
        Config config;
        Store *store;                   /* the commit pipeline's face (store-pipe.h) */
        StorePipe *pipe;
        bool commit_owed;               /* a batch failed for lack of space: commit it again */
        bool commit_held;               /* ... and until then nothing is released */
        StoreGuard *guard;              /* disk space: the reserve, StorageError (store-guard.c) */
        Engine *engine;
        ClusterService *cluster;        /* Scope=cluster resources; NULL without [Cluster] */

        VarlinkServer *server;
        bool socket_activated;
        bool shutting_down;             /* connections close without releasing their leases */
        ev_prepare prepare;
        ev_timer timer;                 /* the engine's next deadline */
        ev_timer watchdog;
        ev_signal sigterm, sigint, sighup;

        Conn *watchers;                 /* connections with a Watch in progress */
        Hashmap users;                  /* uid → UserStat */
        StoredConn *stored;             /* connections to adopt after the restore */
        size_t n_stored;

        char boot_id[64];
        usec_t started;                 /* CLOCK_MONOTONIC */
        uint64_t commits;
        uint64_t status_sent;           /* last counts sent with STATUS= */
        usec_t status_time;
        unsigned leases_high;           /* the most leases since the last heap merge */
        bool store_failed;
        int exit_code;
} Manager;

/* The sessions' side of the varlink server: a Conn per connection (userdata: the Manager).
 * Exported so that tests/fuzz drives the same callbacks. */
extern const VarlinkServerCallbacks manager_server_callbacks;

int manager_new(const ManagerOptions *opts, Manager **ret);
Manager *manager_free(Manager *m);
/* Restores leases, opens the socket, serves until SIGTERM/SIGINT. Returns the exit code. */
int manager_run(Manager *m);
/* Re-reads the configuration (SIGHUP); keeps the old one on error. */
int manager_reload(Manager *m);

/* The steps of manager_run() that set up the commit path, also for tests/fuzz (which runs
 * the loop without the socket, signals, sqlite and disk checks). manager_pipeline_new():
 * inner behind the commit pipeline (store_pipe_new()), m->store its face for engine_new();
 * m->loop set before. manager_loop_start(): once the engine and the server exist, holds
 * replies until their commit and starts the loop's prepare step (dispatch → commit →
 * release → flush) and the engine timer; m->guard set before. */
int manager_pipeline_new(Manager *m, Store *inner);
void manager_loop_start(Manager *m);
/* Hands the configured input, output and connection limits to the server. */
void manager_apply_limits(Manager *m);

UserStat *manager_user(Manager *m, uint32_t uid, bool create);
void manager_user_maybe_free(Manager *m, UserStat *u);

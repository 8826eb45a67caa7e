/* SPDX-License-Identifier: MIT */
#pragma once

/* A real etcd cluster for tests and benchmarks: N members (Debian's etcd-server, the `etcd`
 * binary, or $ETCD_BINARY) on 127.0.0.1, client and peer ports picked free at run time, data
 * in a fresh temporary directory.
 *
 * Nothing outlives the caller: every member is started with PR_SET_PDEATHSIG=SIGKILL, and
 * a watchdog process kills them all (by pid) after a lifetime limit even if the caller
 * hangs. etcd_cluster_free() kills members and watchdog by pid, waits for them and removes
 * the directory. scripts: tests/etcd-cluster.sh is the same for shell users (bench/run.sh).
 *
 * Functions return 0 or a negative errno; -ENOENT from etcd_cluster_new() means no etcd
 * binary (a test should skip, exit 77). */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "usec.h"

#define ETCD_CLUSTER_MAX 5

typedef struct EtcdMember {
        char name[16];
        int client_port;
        int peer_port;
        char client_url[64];    /* http://127.0.0.1:PORT */
        char data_dir[128];
        char log[128];
        pid_t pid;              /* 0 when not running */
} EtcdMember;

typedef struct EtcdCluster {
        char dir[64];
        size_t n;
        EtcdMember m[ETCD_CLUSTER_MAX];
        char *endpoints[ETCD_CLUSTER_MAX + 1];  /* the client URLs, NULL-terminated */
        pid_t watchdog;
        char tls_dir[128];      /* "" = plain http; else ca.pem, server.pem, server-key.pem,
                                 * client.pem, client-key.pem in it, client certs required */
} EtcdCluster;

/* Starts n members and waits until every one reports healthy (a leader, a quorum read),
 * at most timeout. lifetime: the watchdog's limit (0 = 15 minutes). */
int etcd_cluster_new(size_t n, usec_t timeout, usec_t lifetime, EtcdCluster **ret);
/* For a test program's main(): the usual 3-member cluster (60 s to get healthy, a
 * 10-minute lifetime). 0 with *ret set; else the program's exit status, said on stderr:
 * 77 (skipped) without an etcd binary, 1 on any other failure. */
int etcd_cluster_for_tests(EtcdCluster **ret);
/* The same with TLS on the client URLs (https://), server and client certificates made
 * with the openssl command in c->tls_dir; members require a client certificate signed by
 * the CA. -ENOENT without etcd or openssl. */
int etcd_cluster_new_tls(size_t n, usec_t timeout, usec_t lifetime, EtcdCluster **ret);
/* NULL-safe. */
void etcd_cluster_free(EtcdCluster *c);

/* Sends sig to member i; SIGKILL also reaps it (pid becomes 0). */
int etcd_cluster_signal(EtcdCluster *c, size_t i, int sig);
/* Starts member i again on its data directory and ports (after a kill). Does not wait. */
int etcd_cluster_restart(EtcdCluster *c, size_t i);
/* Waits until member i answers /health with "true" (it has a leader and a quorum). */
int etcd_cluster_wait_healthy(EtcdCluster *c, size_t i, usec_t timeout);
/* "http://...:A http://...:B ...", as [Cluster] Endpoints= wants it (static buffer). */
const char *etcd_cluster_endpoints_string(const EtcdCluster *c);

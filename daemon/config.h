/* SPDX-License-Identifier: MIT */
#pragma once

/* The daemon's configuration: /etc/agend/agend.conf and /etc/agend/resources.d/ *.conf files,
 * or one file given with --config. systemd-style INI:
 *
 *   [Daemon]
 *   ReclaimGraceSec=10          Sync=normal|full       HistorySize=10000
 *   MaxMessageSize=1048576      MaxUnansweredInput=4194304
 *   MaxConnectionsPerUser=1024  MaxLeasesPerUser=100000  MaxWaitersPerUser=10000
 *   ClientTimeoutSec=30         MaxOutputPerConnection=4194304
 *   MaxOutputPerUser=33554432   MaxOutputTotal=134217728
 *   AllowUndeclared=yes         RevokeUsers=alice 1001   RevokeGroups=wheel
 *
 *   [Resource]                  (one section per resource)
 *   Name=gpu  Capacity=2  AllowUsers=...  AllowGroups=...  Scope=local|cluster
 *
 *   [Cluster]                   (etcd, for Scope=cluster resources)
 *   Endpoints=http://127.0.0.1:2379 ...  Prefix=/agend/  Node=<machine id>  LeaseTTLSec=10
 *   CAFile=  CertFile=  KeyFile=
 *
 * Errors name the file and line. With no file at all, the built-in defaults apply. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "engine.h"
#include "store.h"
#include "usec.h"

typedef enum ResourceScope {
        RESOURCE_SCOPE_LOCAL,           /* sqlite on this machine (the default) */
        RESOURCE_SCOPE_CLUSTER,         /* granted through etcd, [Cluster] */
        _RESOURCE_SCOPE_MAX,
        _RESOURCE_SCOPE_INVALID = -EINVAL,
} ResourceScope;

/* The [Cluster] section. Strings are owned by the Config; NULL when not given. */
typedef struct ClusterConfig {
        char **endpoints;               /* NULL-terminated, at least one */
        size_t n_endpoints;
        char *prefix;                   /* default "/agend/" */
        char *node;                     /* NULL = the machine id, see config_cluster_node() */
        usec_t lease_ttl;               /* default 10 s; whole seconds, as etcd leases are */
        char *ca_file;
        char *cert_file;
        char *key_file;
} ClusterConfig;

typedef struct Config {
        usec_t reclaim_grace;
        StoreSync sync;
        unsigned history_size;
        size_t max_message_size;
        size_t max_unanswered_input;
        unsigned max_connections_per_user;
        unsigned max_leases_per_user;
        unsigned max_waiters_per_user;
        usec_t client_timeout;          /* partial message / no call at all; 0 = none */
        size_t max_output_per_connection;
        size_t max_output_per_user;
        size_t max_output_total;
        bool allow_undeclared;
        uid_t *revoke_uids;
        size_t n_revoke_uids;
        gid_t *revoke_gids;
        size_t n_revoke_gids;

        ResourceDecl *resources;        /* names and allow lists owned by the Config */
        size_t n_resources;
        ResourceScope *resource_scopes; /* parallel to resources */

        ClusterConfig *cluster;         /* NULL: no [Cluster] section, agend is machine-local */
} Config;

#define CONFIG_DIR_DEFAULT "/etc/agend"

void config_init_defaults(Config *c);
void config_done(Config *c);

/* Loads path (a file) if not NULL, else dir/agend.conf and dir/resources.d/ *.conf (missing
 * files are fine). On a syntax error returns -EINVAL with "FILE:LINE: what" in
 * *ret_error (malloc'ed); c is then unchanged. */
int config_load(Config *c, const char *path, const char *dir, char **ret_error);

typedef enum ConfigFlags {
        /* Accept Scope=cluster resources. Without it a config naming one is refused with
         * -EOPNOTSUPP and a message saying cluster scope is not served yet: until the engine
         * grants through etcd, such a resource must not silently become a local one. */
        CONFIG_CLUSTER_SERVED = 1 << 0,
} ConfigFlags;

/* config_load() is config_load_flags(..., 0, ...). */
int config_load_flags(Config *c, const char *path, const char *dir, ConfigFlags flags, char **ret_error);

ResourceScope config_resource_scope(const Config *c, const char *name);
const char *resource_scope_to_string(ResourceScope s);
ResourceScope resource_scope_from_string(const char *s);

/* Node= if set, else the machine id from machine_id_path (NULL = /etc/machine-id). */
int config_cluster_node(const Config *c, const char *machine_id_path, char **ret);

/* Root, a listed user, or a member (primary or supplementary) of a listed group. */
bool config_may_revoke(const Config *c, uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups);

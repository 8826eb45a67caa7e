/* SPDX-License-Identifier: MIT */
#include <ctype.h>
#include <errno.h>
#include <glob.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "duration.h"
#include "macro.h"
#include "peer.h"

void config_init_defaults(Config *c) {
        *c = (Config) {
                .reclaim_grace = 10 * USEC_PER_SEC,
                .sync = STORE_SYNC_NORMAL,
                .history_size = 10000,
                .max_message_size = 1024 * 1024,
                .max_unanswered_input = 4 * 1024 * 1024,
                .max_connections_per_user = 1024,
                .max_leases_per_user = 100000,
                .max_waiters_per_user = 10000,
                .client_timeout = 30 * USEC_PER_SEC,
                .max_output_per_connection = 4 * 1024 * 1024,
                .max_output_per_user = 32 * 1024 * 1024,
                .max_output_total = 128 * 1024 * 1024,
                .allow_undeclared = true,
        };
}

static void cluster_config_free(ClusterConfig *cl) {
        if (!cl)
                return;
        for (size_t i = 0; i < cl->n_endpoints; i++)
                free(cl->endpoints[i]);
        free(cl->endpoints);
        free(cl->prefix);
        free(cl->node);
        free(cl->ca_file);
        free(cl->cert_file);
        free(cl->key_file);
        free(cl);
}

static const char *const resource_scope_table[_RESOURCE_SCOPE_MAX] = {
        [RESOURCE_SCOPE_LOCAL] = "local",
        [RESOURCE_SCOPE_CLUSTER] = "cluster",
};

const char *resource_scope_to_string(ResourceScope s) {
        return s >= 0 && s < _RESOURCE_SCOPE_MAX ? resource_scope_table[s] : NULL;
}

ResourceScope resource_scope_from_string(const char *s) {
        for (int i = 0; i < _RESOURCE_SCOPE_MAX; i++)
                if (s && strcmp(s, resource_scope_table[i]) == 0)
                        return (ResourceScope) i;
        return _RESOURCE_SCOPE_INVALID;
}

void config_done(Config *c) {
        for (size_t i = 0; i < c->n_resources; i++) {
                free((char *) c->resources[i].name);
                free((uid_t *) c->resources[i].allow_uids);
                free((gid_t *) c->resources[i].allow_gids);
        }
        free(c->resources);
        free(c->resource_scopes);
        c->resource_scopes = NULL;
        cluster_config_free(c->cluster);
        c->cluster = NULL;
        free(c->revoke_uids);
        free(c->revoke_gids);
        c->resources = NULL;
        c->n_resources = 0;
        c->revoke_uids = NULL;
        c->revoke_gids = NULL;
        c->n_revoke_uids = c->n_revoke_gids = 0;
}

typedef struct Parser {
        const char *file;
        unsigned line;
        char *error;
        /* Where the first Scope=cluster was read ("FILE:LINE", malloc'ed), kept across the
         * files of one load: [Cluster] may come in agend.conf or after the resource. */
        char **cluster_scope_where;
        char **cluster_scope_name;
} Parser;

static int perr(Parser *p, const char *fmt, ...) _printf_(2, 3);
static int perr(Parser *p, const char *fmt, ...) {
        _cleanup_free_ char *m = NULL;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                m = NULL;
        va_end(ap);
        if (!p->error && asprintf(&p->error, "%s:%u: %s", p->file, p->line, strna(m)) < 0)
                p->error = NULL;
        return -EINVAL;
}

static char *strip(char *s) {
        while (isspace((unsigned char) *s))
                s++;
        char *e = s + strlen(s);
        while (e > s && isspace((unsigned char) e[-1]))
                *--e = 0;
        return s;
}

static int parse_bool(const char *v) {
        if (!strcasecmp(v, "yes") || !strcasecmp(v, "true") || !strcasecmp(v, "on") || !strcmp(v, "1"))
                return 1;
        if (!strcasecmp(v, "no") || !strcasecmp(v, "false") || !strcasecmp(v, "off") || !strcmp(v, "0"))
                return 0;
        return -EINVAL;
}

static int parse_uint(const char *v, unsigned long long max, unsigned long long *ret) {
        char *end;
        if (!*v || *v == '-')
                return -EINVAL;
        errno = 0;
        unsigned long long x = strtoull(v, &end, 10);
        if (errno || *end || x > max)
                return -EINVAL;
        *ret = x;
        return 0;
}

/* The duration grammar of agenctl and --grace (base/duration.h): "30", "30s", "1min 30s".
 * Not "infinity": a grace period that never ends would keep a dead holder's lease. */
static int parse_sec(const char *v, usec_t *ret) {
        usec_t u;
        int k = parse_duration(v, &u);
        if (k < 0)
                return k;
        if (u == USEC_INFINITY)
                return -ERANGE;
        *ret = u;
        return 0;
}

/* A space-separated list of user names or numeric uids (or groups). */
static int parse_ids(Parser *p, const char *v, bool groups, unsigned **ret, size_t *ret_n) {
        _cleanup_free_ char *copy = strdup(v);
        if (!copy)
                return -ENOMEM;
        unsigned *ids = NULL;
        size_t n = 0;
        char *save = NULL;
        for (char *w = strtok_r(copy, " \t,", &save); w; w = strtok_r(NULL, " \t,", &save)) {
                unsigned long long id;
                if (parse_uint(w, UINT_MAX - 1, &id) < 0) {
                        if (groups) {
                                struct group *g = getgrnam(w);
                                if (!g) {
                                        free(ids);
                                        return perr(p, "unknown group \"%s\"", w);
                                }
                                id = g->gr_gid;
                        } else {
                                struct passwd *pw = getpwnam(w);
                                if (!pw) {
                                        free(ids);
                                        return perr(p, "unknown user \"%s\"", w);
                                }
                                id = pw->pw_uid;
                        }
                }
                unsigned *t = realloc(ids, (n + 1) * sizeof(*t));
                if (!t) {
                        free(ids);
                        return -ENOMEM;
                }
                ids = t;
                ids[n++] = (unsigned) id;
        }
        *ret = ids;
        *ret_n = n;
        return 0;
}

static bool name_valid(const char *s) {
        size_t n = strlen(s);
        if (n == 0 || n > 255)
                return false;
        for (; *s; s++)
                if ((unsigned char) *s < 0x20 || *s == 0x7f)
                        return false;
        return true;
}

static int daemon_key(Parser *p, Config *c, const char *key, const char *v) {
        unsigned long long u;
        int b;
        if (!strcmp(key, "ReclaimGraceSec")) {
                if (parse_sec(v, &c->reclaim_grace) < 0)
                        return perr(p, "ReclaimGraceSec= wants a duration (\"10\", \"30s\", \"1min 30s\"), got \"%s\"", v);
        } else if (!strcmp(key, "ClientTimeoutSec")) {
                if (parse_sec(v, &c->client_timeout) < 0)
                        return perr(p, "ClientTimeoutSec= wants a duration (\"10\", \"30s\", 0 = none), got \"%s\"", v);
        } else if (!strcmp(key, "Sync")) {
                StoreSync sync = store_sync_from_string(v);
                if (sync < 0)
                        return perr(p, "Sync= wants normal or full, got \"%s\"", v);
                c->sync = sync;
        } else if (!strcmp(key, "AllowUndeclared")) {
                if ((b = parse_bool(v)) < 0)
                        return perr(p, "AllowUndeclared= wants yes or no, got \"%s\"", v);
                c->allow_undeclared = b;
        } else if (!strcmp(key, "RevokeUsers")) {
                free(c->revoke_uids);
                c->revoke_uids = NULL;
                return parse_ids(p, v, false, &c->revoke_uids, &c->n_revoke_uids);
        } else if (!strcmp(key, "RevokeGroups")) {
                free(c->revoke_gids);
                c->revoke_gids = NULL;
                return parse_ids(p, v, true, &c->revoke_gids, &c->n_revoke_gids);
        } else {
                static const struct {
                        const char *key;
                        size_t off;
                        bool size;
                        unsigned long long min, max;
                } nums[] = {
                        { "HistorySize", offsetof(Config, history_size), false, 0, 100000000 },
                        { "MaxMessageSize", offsetof(Config, max_message_size), true, 1024, 1ULL << 30 },
                        { "MaxUnansweredInput", offsetof(Config, max_unanswered_input), true, 1024, 1ULL << 32 },
                        { "MaxConnectionsPerUser", offsetof(Config, max_connections_per_user), false, 1, UINT_MAX },
                        { "MaxLeasesPerUser", offsetof(Config, max_leases_per_user), false, 1, UINT_MAX },
                        { "MaxWaitersPerUser", offsetof(Config, max_waiters_per_user), false, 1, UINT_MAX },
                        { "MaxOutputPerConnection", offsetof(Config, max_output_per_connection), true, 65536,
                          1ULL << 32 },
                        { "MaxOutputPerUser", offsetof(Config, max_output_per_user), true, 65536, 1ULL << 40 },
                        { "MaxOutputTotal", offsetof(Config, max_output_total), true, 65536, 1ULL << 40 },
                };
                for (size_t i = 0; i < ELEMENTSOF(nums); i++) {
                        if (strcmp(key, nums[i].key) != 0)
                                continue;
                        if (parse_uint(v, nums[i].max, &u) < 0 || u < nums[i].min)
                                return perr(p, "%s= wants a number in %llu..%llu, got \"%s\"", key, nums[i].min,
                                            nums[i].max, v);
                        if (nums[i].size)
                                *(size_t *) ((char *) c + nums[i].off) = (size_t) u;
                        else
                                *(unsigned *) ((char *) c + nums[i].off) = (unsigned) u;
                        return 0;
                }
                return perr(p, "unknown key %s= in [Daemon]", key);
        }
        return 0;
}

static int resource_key(Parser *p, ResourceDecl *d, ResourceScope *scope, const char *key, const char *v) {
        unsigned long long u;
        if (!strcmp(key, "Scope")) {
                ResourceScope s = resource_scope_from_string(v);
                if (s < 0)
                        return perr(p, "Scope= wants local or cluster, got \"%s\"", v);
                *scope = s;
                if (s == RESOURCE_SCOPE_CLUSTER && !*p->cluster_scope_where &&
                    asprintf(p->cluster_scope_where, "%s:%u", p->file, p->line) < 0) {
                        *p->cluster_scope_where = NULL;
                        return -ENOMEM;
                }
                return 0;
        }
        if (!strcmp(key, "Name")) {
                if (!name_valid(v))
                        return perr(p, "Name= wants 1..255 printable bytes, got \"%s\"", v);
                free((char *) d->name);
                d->name = strdup(v);
                return d->name ? 0 : -ENOMEM;
        }
        if (!strcmp(key, "Capacity")) {
                if (parse_uint(v, 1000000, &u) < 0 || u < 1)
                        return perr(p, "Capacity= wants a number in 1..1000000, got \"%s\"", v);
                d->capacity = (unsigned) u;
                return 0;
        }
        if (!strcmp(key, "AllowUsers")) {
                free((uid_t *) d->allow_uids);
                d->allow_uids = NULL;
                d->restricted = true;
                return parse_ids(p, v, false, (unsigned **) &d->allow_uids, &d->n_allow_uids);
        }
        if (!strcmp(key, "AllowGroups")) {
                free((gid_t *) d->allow_gids);
                d->allow_gids = NULL;
                d->restricted = true;
                return parse_ids(p, v, true, (unsigned **) &d->allow_gids, &d->n_allow_gids);
        }
        return perr(p, "unknown key %s= in [Resource]", key);
}

/* Endpoints= replaces the list; each word must be an http:// or https:// URL. */
static int parse_endpoints(Parser *p, ClusterConfig *cl, const char *v) {
        _cleanup_free_ char *copy = strdup(v);
        if (!copy)
                return -ENOMEM;
        for (size_t i = 0; i < cl->n_endpoints; i++)
                free(cl->endpoints[i]);
        free(cl->endpoints);
        cl->endpoints = NULL;
        cl->n_endpoints = 0;
        char *save = NULL;
        for (char *w = strtok_r(copy, " \t", &save); w; w = strtok_r(NULL, " \t", &save)) {
                if ((strncmp(w, "http://", 7) != 0 || !w[7]) && (strncmp(w, "https://", 8) != 0 || !w[8]))
                        return perr(p, "Endpoints= wants http:// or https:// URLs, got \"%s\"", w);
                char **t = realloc(cl->endpoints, (cl->n_endpoints + 2) * sizeof(*t));
                if (!t)
                        return -ENOMEM;
                cl->endpoints = t;
                if (!(cl->endpoints[cl->n_endpoints] = strdup(w)))
                        return -ENOMEM;
                cl->endpoints[++cl->n_endpoints] = NULL;
        }
        if (cl->n_endpoints == 0)
                return perr(p, "Endpoints= wants at least one URL");
        return 0;
}

static int set_string(char **field, const char *v) {
        char *t = strdup(v);
        if (!t)
                return -ENOMEM;
        free(*field);
        *field = t;
        return 0;
}

static int cluster_key(Parser *p, ClusterConfig *cl, const char *key, const char *v) {
        unsigned long long u;
        if (!strcmp(key, "Endpoints"))
                return parse_endpoints(p, cl, v);
        if (!strcmp(key, "Prefix")) {
                /* Keys are PREFIX<resource>/...: a prefix not ending in '/' would let
                 * "/agend" and "/agend2" share keys. */
                if (!name_valid(v) || v[0] != '/' || v[strlen(v) - 1] != '/')
                        return perr(p, "Prefix= wants a key prefix starting and ending with '/', got \"%s\"", v);
                return set_string(&cl->prefix, v);
        }
        if (!strcmp(key, "Node")) {
                if (!name_valid(v) || strchr(v, '/') || strchr(v, ' '))
                        return perr(p, "Node= wants 1..255 printable bytes without '/' or spaces, got \"%s\"", v);
                return set_string(&cl->node, v);
        }
        if (!strcmp(key, "LeaseTTLSec")) {
                /* etcd leases have whole seconds; its minimum TTL is larger than 1 anyway. */
                if (parse_uint(v, 3600, &u) < 0 || u < 2)
                        return perr(p, "LeaseTTLSec= wants whole seconds in 2..3600, got \"%s\"", v);
                cl->lease_ttl = u * USEC_PER_SEC;
                return 0;
        }
        char **files[] = { &cl->ca_file, &cl->cert_file, &cl->key_file };
        const char *names[] = { "CAFile", "CertFile", "KeyFile" };
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (!strcmp(key, names[i])) {
                        if (v[0] != '/')
                                return perr(p, "%s= wants an absolute path, got \"%s\"", key, v);
                        return set_string(files[i], v);
                }
        return perr(p, "unknown key %s= in [Cluster]", key);
}

static int finish_cluster(Parser *p, ClusterConfig *cl) {
        if (cl->n_endpoints == 0)
                return perr(p, "[Cluster] section without Endpoints=");
        if (!!cl->cert_file != !!cl->key_file)
                return perr(p, "[Cluster] wants CertFile= and KeyFile= together");
        return 0;
}

static int finish_resource(Parser *p, Config *c) {
        if (c->n_resources == 0)
                return 0;
        ResourceDecl *d = &c->resources[c->n_resources - 1];
        if (!d->name)
                return perr(p, "[Resource] section without Name=");
        if (c->resource_scopes[c->n_resources - 1] == RESOURCE_SCOPE_CLUSTER && *p->cluster_scope_where &&
            !*p->cluster_scope_name && !(*p->cluster_scope_name = strdup(d->name)))
                return -ENOMEM;
        for (size_t i = 0; i + 1 < c->n_resources; i++)
                if (strcmp(c->resources[i].name, d->name) == 0)
                        return perr(p, "resource \"%s\" declared twice", d->name);
        return 0;
}

static int load_file(Config *c, const char *path, bool must_exist, char **cluster_scope_where,
                     char **cluster_scope_name, char **ret_error) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && !must_exist)
                        return 0;
                int k = -errno;
                if (asprintf(ret_error, "%s: %s", path, strerror(-k)) < 0)
                        *ret_error = NULL;
                return k;
        }
        Parser p = { .file = path, .cluster_scope_where = cluster_scope_where,
                     .cluster_scope_name = cluster_scope_name };
        enum { NONE, DAEMON, RESOURCE, CLUSTER } section = NONE;
        char *line = NULL;
        size_t n = 0;
        int k = 0;
        while (getline(&line, &n, f) >= 0) {
                p.line++;
                char *s = strip(line);
                if (!*s || *s == '#' || *s == ';')
                        continue;
                if (*s == '[') {
                        if (section == RESOURCE && (k = finish_resource(&p, c)) < 0)
                                break;
                        if (section == CLUSTER && (k = finish_cluster(&p, c->cluster)) < 0)
                                break;
                        if (!strcmp(s, "[Daemon]"))
                                section = DAEMON;
                        else if (!strcmp(s, "[Cluster]")) {
                                if (c->cluster) {
                                        k = perr(&p, "[Cluster] section given twice");
                                        break;
                                }
                                c->cluster = calloc(1, sizeof(ClusterConfig));
                                if (!c->cluster || !(c->cluster->prefix = strdup("/agend/"))) {
                                        k = -ENOMEM;
                                        break;
                                }
                                c->cluster->lease_ttl = 10 * USEC_PER_SEC;
                                section = CLUSTER;
                        }
                        else if (!strcmp(s, "[Resource]")) {
                                ResourceDecl *t = realloc(c->resources, (c->n_resources + 1) * sizeof(*t));
                                if (!t) {
                                        k = -ENOMEM;
                                        break;
                                }
                                c->resources = t;
                                ResourceScope *ts = realloc(c->resource_scopes, (c->n_resources + 1) * sizeof(*ts));
                                if (!ts) {
                                        k = -ENOMEM;
                                        break;
                                }
                                c->resource_scopes = ts;
                                c->resource_scopes[c->n_resources] = RESOURCE_SCOPE_LOCAL;
                                c->resources[c->n_resources++] = (ResourceDecl) { .capacity = 1 };
                                section = RESOURCE;
                        } else {
                                k = perr(&p, "unknown section %s (expected [Daemon], [Resource] or [Cluster])", s);
                                break;
                        }
                        continue;
                }
                char *eq = strchr(s, '=');
                if (!eq) {
                        k = perr(&p, "expected KEY=VALUE, got \"%s\"", s);
                        break;
                }
                *eq = 0;
                char *key = strip(s), *val = strip(eq + 1);
                if (section == DAEMON)
                        k = daemon_key(&p, c, key, val);
                else if (section == RESOURCE)
                        k = resource_key(&p, &c->resources[c->n_resources - 1],
                                         &c->resource_scopes[c->n_resources - 1], key, val);
                else if (section == CLUSTER)
                        k = cluster_key(&p, c->cluster, key, val);
                else
                        k = perr(&p, "%s= outside a section", key);
                if (k < 0)
                        break;
        }
        free(line);
        if (k >= 0 && section == RESOURCE)
                k = finish_resource(&p, c);
        if (k >= 0 && section == CLUSTER)
                k = finish_cluster(&p, c->cluster);
        if (k < 0) {
                *ret_error = TAKE_PTR(p.error);
                if (!*ret_error && asprintf(ret_error, "%s: %s", path, strerror(-k)) < 0)
                        *ret_error = NULL;
        }
        free(p.error);
        return k;
}

int config_load(Config *c, const char *path, const char *dir, char **ret_error) {
        return config_load_flags(c, path, dir, 0, ret_error);
}

int config_load_flags(Config *c, const char *path, const char *dir, ConfigFlags flags, char **ret_error) {
        _cleanup_free_ char *cluster_where = NULL, *cluster_name = NULL;
        Config n;
        config_init_defaults(&n);
        int k;
        *ret_error = NULL;
        if (path)
                k = load_file(&n, path, true, &cluster_where, &cluster_name, ret_error);
        else {
                _cleanup_free_ char *main_conf = NULL, *pattern = NULL;
                if (asprintf(&main_conf, "%s/agend.conf", dir) < 0 ||
                    asprintf(&pattern, "%s/resources.d/*.conf", dir) < 0)
                        return -ENOMEM;
                k = load_file(&n, main_conf, false, &cluster_where, &cluster_name, ret_error);
                if (k >= 0) {
                        glob_t g = {};
                        if (glob(pattern, 0, NULL, &g) == 0)     /* sorted: later files are read last */
                                for (size_t i = 0; i < g.gl_pathc && k >= 0; i++)
                                        k = load_file(&n, g.gl_pathv[i], false, &cluster_where,
                                                      &cluster_name, ret_error);
                        globfree(&g);
                }
        }
        /* Checked once every file is read: [Cluster] may come after the resource. */
        if (k >= 0 && cluster_where && !n.cluster) {
                k = -EINVAL;
                if (asprintf(ret_error, "%s: resource \"%s\" has Scope=cluster, but no [Cluster] section "
                             "names the etcd endpoints", cluster_where, strna(cluster_name)) < 0)
                        *ret_error = NULL;
        } else if (k >= 0 && cluster_where && !(flags & CONFIG_CLUSTER_SERVED)) {
                k = -EOPNOTSUPP;
                if (asprintf(ret_error, "%s: resource \"%s\" has Scope=cluster, but this agend does not "
                             "serve cluster scope yet (it would not be granted through etcd); "
                             "use Scope=local or remove the resource", cluster_where, strna(cluster_name)) < 0)
                        *ret_error = NULL;
        }
        if (k < 0) {
                config_done(&n);
                return k;
        }
        config_done(c);
        *c = n;
        return 0;
}

ResourceScope config_resource_scope(const Config *c, const char *name) {
        for (size_t i = 0; i < c->n_resources; i++)
                if (strcmp(c->resources[i].name, name) == 0)
                        return c->resource_scopes[i];
        return RESOURCE_SCOPE_LOCAL;    /* undeclared names are always local */
}

int config_cluster_node(const Config *c, const char *machine_id_path, char **ret) {
        if (!c->cluster)
                return -ENOENT;
        if (c->cluster->node) {
                char *t = strdup(c->cluster->node);
                if (!t)
                        return -ENOMEM;
                *ret = t;
                return 0;
        }
        _cleanup_fclose_ FILE *f = fopen(machine_id_path ?: "/etc/machine-id", "re");
        if (!f)
                return -errno;
        char buf[64] = {};
        if (!fgets(buf, sizeof(buf), f))
                return -ENODATA;
        char *s = strip(buf);
        size_t len = strlen(s);
        if (len != 32 || strspn(s, "0123456789abcdef") != 32)
                return -EBADMSG;
        char *t = strdup(s);
        if (!t)
                return -ENOMEM;
        *ret = t;
        return 0;
}

bool config_may_revoke(const Config *c, uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups) {
        if (uid == 0)
                return true;
        for (size_t i = 0; i < c->n_revoke_uids; i++)
                if (c->revoke_uids[i] == uid)
                        return true;
        for (size_t i = 0; i < c->n_revoke_gids; i++)
                if (peer_in_group(gid, groups, n_groups, c->revoke_gids[i]))
                        return true;
        return false;
}

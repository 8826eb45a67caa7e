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

void config_done(Config *c) {
        for (size_t i = 0; i < c->n_resources; i++) {
                free((char *) c->resources[i].name);
                free((uid_t *) c->resources[i].allow_uids);
                free((gid_t *) c->resources[i].allow_gids);
        }
        free(c->resources);
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

static int parse_sec(const char *v, usec_t *ret) {
        char *end;
        errno = 0;
        double d = strtod(v, &end);
        if (errno || end == v || *end)
                return -EINVAL;
        return usec_from_sec(d, ret);
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
                        return perr(p, "ReclaimGraceSec= wants seconds, got \"%s\"", v);
        } else if (!strcmp(key, "ClientTimeoutSec")) {
                if (parse_sec(v, &c->client_timeout) < 0)
                        return perr(p, "ClientTimeoutSec= wants seconds (0 = none), got \"%s\"", v);
        } else if (!strcmp(key, "Sync")) {
                if (!strcmp(v, "normal"))
                        c->sync = STORE_SYNC_NORMAL;
                else if (!strcmp(v, "full"))
                        c->sync = STORE_SYNC_FULL;
                else
                        return perr(p, "Sync= wants normal or full, got \"%s\"", v);
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

static int resource_key(Parser *p, ResourceDecl *d, const char *key, const char *v) {
        unsigned long long u;
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

static int finish_resource(Parser *p, Config *c) {
        if (c->n_resources == 0)
                return 0;
        ResourceDecl *d = &c->resources[c->n_resources - 1];
        if (!d->name)
                return perr(p, "[Resource] section without Name=");
        for (size_t i = 0; i + 1 < c->n_resources; i++)
                if (strcmp(c->resources[i].name, d->name) == 0)
                        return perr(p, "resource \"%s\" declared twice", d->name);
        return 0;
}

static int load_file(Config *c, const char *path, bool must_exist, char **ret_error) {
        _cleanup_fclose_ FILE *f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && !must_exist)
                        return 0;
                int k = -errno;
                if (asprintf(ret_error, "%s: %s", path, strerror(-k)) < 0)
                        *ret_error = NULL;
                return k;
        }
        Parser p = { .file = path };
        enum { NONE, DAEMON, RESOURCE } section = NONE;
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
                        if (!strcmp(s, "[Daemon]"))
                                section = DAEMON;
                        else if (!strcmp(s, "[Resource]")) {
                                ResourceDecl *t = realloc(c->resources, (c->n_resources + 1) * sizeof(*t));
                                if (!t) {
                                        k = -ENOMEM;
                                        break;
                                }
                                c->resources = t;
                                c->resources[c->n_resources++] = (ResourceDecl) { .capacity = 1 };
                                section = RESOURCE;
                        } else {
                                k = perr(&p, "unknown section %s (expected [Daemon] or [Resource])", s);
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
                        k = resource_key(&p, &c->resources[c->n_resources - 1], key, val);
                else
                        k = perr(&p, "%s= outside a section", key);
                if (k < 0)
                        break;
        }
        free(line);
        if (k >= 0 && section == RESOURCE)
                k = finish_resource(&p, c);
        if (k < 0) {
                *ret_error = TAKE_PTR(p.error);
                if (!*ret_error && asprintf(ret_error, "%s: %s", path, strerror(-k)) < 0)
                        *ret_error = NULL;
        }
        free(p.error);
        return k;
}

int config_load(Config *c, const char *path, const char *dir, char **ret_error) {
        Config n;
        config_init_defaults(&n);
        int k;
        *ret_error = NULL;
        if (path)
                k = load_file(&n, path, true, ret_error);
        else {
                _cleanup_free_ char *main_conf = NULL, *pattern = NULL;
                if (asprintf(&main_conf, "%s/agend.conf", dir) < 0 ||
                    asprintf(&pattern, "%s/resources.d/*.conf", dir) < 0)
                        return -ENOMEM;
                k = load_file(&n, main_conf, false, ret_error);
                if (k >= 0) {
                        glob_t g = {};
                        if (glob(pattern, 0, NULL, &g) == 0)     /* sorted: later files are read last */
                                for (size_t i = 0; i < g.gl_pathc && k >= 0; i++)
                                        k = load_file(&n, g.gl_pathv[i], false, ret_error);
                        globfree(&g);
                }
        }
        if (k < 0) {
                config_done(&n);
                return k;
        }
        config_done(c);
        *c = n;
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

/* SPDX-License-Identifier: MIT */
/* The daemon's configuration: built-in defaults with no file, [Daemon] keys, several
 * [Resource] sections, the /etc/agend layout (agend.conf + resources.d/ *.conf in order),
 * errors that name file and line, and a failed load that leaves the old config intact. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "macro.h"

static char dir[256];

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *f) {
        return remove(path);
}

static int setup(void **state) {
        const char *t = getenv("TMPDIR");
        snprintf(dir, sizeof(dir), "%s/agend-test-config-XXXXXX", t && *t ? t : "/tmp");
        return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state) {
        return nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
}

/* Writes dir/name and returns its path (static buffer). */
static const char *write_file(const char *name, const char *text) {
        static char path[512];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "we");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
        return path;
}

static const ResourceDecl *find(const Config *c, const char *name) {
        for (size_t i = 0; i < c->n_resources; i++)
                if (strcmp(c->resources[i].name, name) == 0)
                        return &c->resources[i];
        return NULL;
}

static void test_defaults(void **state) {
        /* No files at all: the built-in defaults of the brief. */
        Config c;
        char *error = NULL;
        char missing[300];
        snprintf(missing, sizeof(missing), "%s/nothing-here", dir);
        config_init_defaults(&c);
        assert_int_equal(config_load(&c, NULL, missing, &error), 0);
        assert_null(error);
        assert_int_equal(c.reclaim_grace, 10 * USEC_PER_SEC);
        assert_int_equal(c.sync, STORE_SYNC_NORMAL);
        assert_int_equal(c.max_message_size, 1024 * 1024);
        assert_int_equal(c.max_connections_per_user, 1024);
        assert_int_equal(c.max_leases_per_user, 100000);
        assert_int_equal(c.max_waiters_per_user, 10000);
        assert_true(c.allow_undeclared);
        assert_int_equal(c.n_resources, 0);
        assert_true(config_may_revoke(&c, 0, 0, NULL, 0));
        assert_false(config_may_revoke(&c, 1000, 1000, NULL, 0));
        config_done(&c);
}

static void test_one_file(void **state) {
        const char *path = write_file("agend.conf",
                                      "# comment\n"
                                      "; another\n"
                                      "[Daemon]\n"
                                      "ReclaimGraceSec = 2.5\n"
                                      "Sync=full\n"
                                      "HistorySize=50\n"
                                      "MaxMessageSize=65536\n"
                                      "MaxConnectionsPerUser=7\n"
                                      "MaxLeasesPerUser=8\n"
                                      "MaxWaitersPerUser=9\n"
                                      "AllowUndeclared=no\n"
                                      "RevokeUsers=1001 root\n"
                                      "RevokeGroups=2000\n"
                                      "\n"
                                      "[Resource]\n"
                                      "Name=gpu\n"
                                      "Capacity=2\n"
                                      "AllowUsers=1000\n"
                                      "\n"
                                      "[Resource]\n"
                                      "Name=license server\n");
        Config c;
        char *error = NULL;
        config_init_defaults(&c);
        assert_int_equal(config_load(&c, path, NULL, &error), 0);
        assert_int_equal(c.reclaim_grace, 2500 * USEC_PER_MSEC);
        assert_int_equal(c.sync, STORE_SYNC_FULL);
        assert_int_equal(c.history_size, 50);
        assert_int_equal(c.max_message_size, 65536);
        assert_int_equal(c.max_connections_per_user, 7);
        assert_int_equal(c.max_leases_per_user, 8);
        assert_int_equal(c.max_waiters_per_user, 9);
        assert_false(c.allow_undeclared);
        assert_true(config_may_revoke(&c, 1001, 5, NULL, 0));
        assert_true(config_may_revoke(&c, 5, 2000, NULL, 0));
        assert_false(config_may_revoke(&c, 5, 5, NULL, 0));
        /* RevokeGroups= also matches a supplementary group of the caller. */
        assert_true(config_may_revoke(&c, 5, 5, (const gid_t[]) { 7, 2000 }, 2));
        assert_false(config_may_revoke(&c, 5, 5, (const gid_t[]) { 7, 8 }, 2));

        assert_int_equal(c.n_resources, 2);
        const ResourceDecl *gpu = find(&c, "gpu");
        assert_non_null(gpu);
        assert_int_equal(gpu->capacity, 2);
        assert_true(gpu->restricted);
        assert_int_equal(gpu->n_allow_uids, 1);
        assert_int_equal(gpu->allow_uids[0], 1000);
        const ResourceDecl *lic = find(&c, "license server");
        assert_non_null(lic);
        assert_int_equal(lic->capacity, 1);     /* default: a mutex */
        assert_false(lic->restricted);
        config_done(&c);
}

static void test_directory_layout(void **state) {
        /* dir/agend.conf, then dir/resources.d/ *.conf in name order; other files ignored. */
        char sub[300];
        snprintf(sub, sizeof(sub), "%s/resources.d", dir);
        assert_int_equal(mkdir(sub, 0755), 0);
        write_file("agend.conf", "[Daemon]\nHistorySize=3\n");
        write_file("resources.d/10-gpu.conf", "[Resource]\nName=gpu\nCapacity=4\n");
        write_file("resources.d/20-tape.conf", "[Resource]\nName=tape\n");
        write_file("resources.d/README", "this is not a config file = at all\n");
        Config c;
        char *error = NULL;
        config_init_defaults(&c);
        assert_int_equal(config_load(&c, NULL, dir, &error), 0);
        assert_int_equal(c.history_size, 3);
        assert_int_equal(c.n_resources, 2);
        assert_string_equal(c.resources[0].name, "gpu");
        assert_int_equal(c.resources[0].capacity, 4);
        assert_string_equal(c.resources[1].name, "tape");

        /* The same resource in two files is an error naming the second file and line. */
        write_file("resources.d/30-gpu-again.conf", "\n[Resource]\nName=gpu\n");
        assert_int_equal(config_load(&c, NULL, dir, &error), -EINVAL);
        assert_non_null(error);
        assert_non_null(strstr(error, "30-gpu-again.conf:"));
        assert_non_null(strstr(error, "gpu"));
        free(error);
        /* ... and the config in force is the one loaded before. */
        assert_int_equal(c.n_resources, 2);
        assert_int_equal(c.history_size, 3);
        config_done(&c);
}

/* Loads text from a file and expects an error mentioning file:line and needle. */
static void expect_error(const char *text, unsigned line, const char *needle) {
        const char *path = write_file("bad.conf", text);
        char want[600];
        snprintf(want, sizeof(want), "%s:%u:", path, line);
        Config c;
        char *error = NULL;
        config_init_defaults(&c);
        c.history_size = 4242;  /* a marker: must survive the failed load */
        int r = config_load(&c, path, NULL, &error);
        if (r != -EINVAL)
                fail_msg("expected -EINVAL for %s, got %d", text, r);
        assert_non_null(error);
        if (!strstr(error, want) || !strstr(error, needle))
                fail_msg("error \"%s\" does not name %s or mention \"%s\"", error, want, needle);
        assert_int_equal(c.history_size, 4242);
        free(error);
        config_done(&c);
}

/* ReclaimGraceSec= takes the duration grammar agenctl and --grace take (base/duration.h). */
static void test_grace_durations(void **state) {
        static const struct {
                const char *text;
                usec_t usec;
        } ok[] = {
                { "30s", 30 * USEC_PER_SEC },           { "30", 30 * USEC_PER_SEC },
                { "1min 30s", 90 * USEC_PER_SEC },      { "500ms", 500 * USEC_PER_MSEC },
                { "0", 0 },                             { "1.5 s", 1500 * USEC_PER_MSEC },
        };
        for (size_t i = 0; i < ELEMENTSOF(ok); i++) {
                char text[128];
                snprintf(text, sizeof(text), "[Daemon]\nReclaimGraceSec=%s\n", ok[i].text);
                const char *path = write_file("agend.conf", text);
                Config c;
                char *error = NULL;
                config_init_defaults(&c);
                if (config_load(&c, path, NULL, &error) < 0)
                        fail_msg("ReclaimGraceSec=%s refused: %s", ok[i].text, error);
                assert_int_equal(c.reclaim_grace, ok[i].usec);
                config_done(&c);
        }
        expect_error("[Daemon]\nReclaimGraceSec=infinity\n", 2, "ReclaimGraceSec");
        expect_error("[Daemon]\nReclaimGraceSec=1e3\n", 2, "ReclaimGraceSec");
        expect_error("[Daemon]\nReclaimGraceSec=30 s 5\n", 2, "ReclaimGraceSec");
}

static void test_errors_name_file_and_line(void **state) {
        expect_error("[Daemon]\nNoSuchKey=1\n", 2, "NoSuchKey");
        expect_error("[Daemon]\n\nSync=sometimes\n", 3, "Sync");
        expect_error("[Daemon]\nReclaimGraceSec=-1\n", 2, "ReclaimGraceSec");
        expect_error("[Daemon]\nReclaimGraceSec=soon\n", 2, "ReclaimGraceSec");
        expect_error("[Daemon]\nMaxLeasesPerUser=0\n", 2, "MaxLeasesPerUser");
        expect_error("[Daemon]\nMaxLeasesPerUser=99999999999999999999\n", 2, "MaxLeasesPerUser");
        expect_error("[Daemon]\nAllowUndeclared=perhaps\n", 2, "AllowUndeclared");
        expect_error("[Daemon]\nRevokeUsers=no-such-user-agend-test\n", 2, "no-such-user-agend-test");
        expect_error("Capacity=3\n", 1, "outside");
        expect_error("[Nope]\n", 1, "[Nope]");
        expect_error("[Resource]\nName=x\ngarbage line\n", 3, "garbage");
        expect_error("[Resource]\nName=x\nCapacity=0\n", 3, "Capacity");
        expect_error("[Resource]\nName=x\nCapacity=two\n", 3, "Capacity");
        expect_error("[Resource]\nName=\n", 2, "Name");
        expect_error("[Resource]\nCapacity=2\n[Resource]\nName=y\n", 3, "without Name");
        expect_error("[Resource]\nName=a\n[Resource]\nName=a\n", 4, "twice");
}

static void test_cluster_section(void **state) {
        /* [Cluster] with every key, defaults for what is left out, Scope= per resource. */
        const char *path = write_file("cluster.conf",
                                      "[Resource]\nName=gpu\nScope=cluster\n"
                                      "[Resource]\nName=disk\n"
                                      "[Resource]\nName=tape\nScope=local\n"
                                      "[Cluster]\n"
                                      "Endpoints=http://127.0.0.1:2379  https://10.0.0.2:2379\n"
                                      "CAFile=/etc/agend/ca.pem\nCertFile=/etc/agend/c.pem\nKeyFile=/etc/agend/k.pem\n");
        Config c;
        char *error = NULL;
        config_init_defaults(&c);
        assert_int_equal(config_load_flags(&c, path, NULL, CONFIG_CLUSTER_SERVED, &error), 0);
        assert_null(error);
        assert_non_null(c.cluster);
        assert_int_equal(c.cluster->n_endpoints, 2);
        assert_string_equal(c.cluster->endpoints[0], "http://127.0.0.1:2379");
        assert_string_equal(c.cluster->endpoints[1], "https://10.0.0.2:2379");
        assert_null(c.cluster->endpoints[2]);
        assert_string_equal(c.cluster->prefix, "/agend/");
        assert_null(c.cluster->node);
        assert_int_equal(c.cluster->lease_ttl, 10 * USEC_PER_SEC);
        assert_string_equal(c.cluster->ca_file, "/etc/agend/ca.pem");
        assert_string_equal(c.cluster->cert_file, "/etc/agend/c.pem");
        assert_string_equal(c.cluster->key_file, "/etc/agend/k.pem");
        assert_int_equal(config_resource_scope(&c, "gpu"), RESOURCE_SCOPE_CLUSTER);
        assert_int_equal(config_resource_scope(&c, "disk"), RESOURCE_SCOPE_LOCAL);
        assert_int_equal(config_resource_scope(&c, "tape"), RESOURCE_SCOPE_LOCAL);
        assert_int_equal(config_resource_scope(&c, "undeclared"), RESOURCE_SCOPE_LOCAL);

        /* Node= default: the machine id; Node= given: that. */
        char *node = NULL;
        const char *mid = write_file("machine-id", "0123456789abcdef0123456789abcdef\n");
        assert_int_equal(config_cluster_node(&c, mid, &node), 0);
        assert_string_equal(node, "0123456789abcdef0123456789abcdef");
        free(node);
        mid = write_file("machine-id", "not an id\n");
        assert_int_equal(config_cluster_node(&c, mid, &node), -EBADMSG);
        config_done(&c);

        path = write_file("cluster.conf", "[Cluster]\nEndpoints=http://e:2379\nPrefix=/x/y/\nNode=host-a\n"
                                          "LeaseTTLSec=5\n");
        config_init_defaults(&c);
        assert_int_equal(config_load(&c, path, NULL, &error), 0);
        assert_string_equal(c.cluster->prefix, "/x/y/");
        assert_string_equal(c.cluster->node, "host-a");
        assert_int_equal(c.cluster->lease_ttl, 5 * USEC_PER_SEC);
        assert_int_equal(config_cluster_node(&c, "/nonexistent", &node), 0);
        assert_string_equal(node, "host-a");
        free(node);
        config_done(&c);

        /* No [Cluster]: machine-local, as before. */
        path = write_file("cluster.conf", "[Resource]\nName=gpu\n");
        config_init_defaults(&c);
        assert_int_equal(config_load(&c, path, NULL, &error), 0);
        assert_null(c.cluster);
        assert_int_equal(config_cluster_node(&c, NULL, &node), -ENOENT);
        config_done(&c);
}

static void test_cluster_errors(void **state) {
        expect_error("[Resource]\nName=x\nScope=global\n", 3, "Scope=");
        expect_error("[Cluster]\nPrefix=/agend/\n", 2, "without Endpoints");
        expect_error("[Cluster]\nEndpoints=127.0.0.1:2379\n", 2, "Endpoints=");
        expect_error("[Cluster]\nEndpoints=\n", 2, "Endpoints=");
        expect_error("[Cluster]\nEndpoints=http://e\nPrefix=agend\n", 3, "Prefix=");
        expect_error("[Cluster]\nEndpoints=http://e\nNode=a/b\n", 3, "Node=");
        expect_error("[Cluster]\nEndpoints=http://e\nLeaseTTLSec=1\n", 3, "LeaseTTLSec=");
        expect_error("[Cluster]\nEndpoints=http://e\nLeaseTTLSec=2.5\n", 3, "LeaseTTLSec=");
        expect_error("[Cluster]\nEndpoints=http://e\nCAFile=ca.pem\n", 3, "CAFile=");
        expect_error("[Cluster]\nEndpoints=http://e\nCertFile=/c.pem\n", 3, "KeyFile=");
        expect_error("[Cluster]\nEndpoints=http://e\nColour=blue\n", 3, "Colour");
        expect_error("[Cluster]\nEndpoints=http://e\n[Cluster]\nEndpoints=http://f\n", 3, "twice");
        /* The error names the file and line of the Scope= that needs a [Cluster]. */
        expect_error("[Resource]\nName=a\n[Resource]\nName=gpu\n\nScope=cluster\n", 6, "no [Cluster] section");
        expect_error("[Resource]\nName=a\n[Resource]\nName=gpu\n\nScope=cluster\n", 6, "\"gpu\"");
}

static void test_cluster_not_served(void **state) {
        /* Until the engine grants through etcd, Scope=cluster is refused, never served locally;
         * across files: [Cluster] in agend.conf, the resource in resources.d/. */
        char sub[300];
        snprintf(sub, sizeof(sub), "%s/resources.d", dir);
        assert_int_equal(mkdir(sub, 0755), 0);
        write_file("agend.conf", "[Cluster]\nEndpoints=http://127.0.0.1:2379\n");
        const char *res = write_file("resources.d/gpu.conf", "[Resource]\nName=gpu\nScope=cluster\n");
        char want[600];
        snprintf(want, sizeof(want), "%s:3:", res);
        Config c;
        char *error = NULL;
        config_init_defaults(&c);
        c.history_size = 4242;
        assert_int_equal(config_load(&c, NULL, dir, &error), -EOPNOTSUPP);
        assert_non_null(error);
        assert_non_null(strstr(error, want));
        assert_non_null(strstr(error, "not serve cluster scope yet"));
        assert_int_equal(c.history_size, 4242);
        free(error);
        error = NULL;
        assert_int_equal(config_load_flags(&c, NULL, dir, CONFIG_CLUSTER_SERVED, &error), 0);
        assert_int_equal(config_resource_scope(&c, "gpu"), RESOURCE_SCOPE_CLUSTER);
        config_done(&c);
}

static void test_missing_file(void **state) {
        /* --config names a file: it must exist. */
        char path[300];
        snprintf(path, sizeof(path), "%s/absent.conf", dir);
        Config c;
        char *error = NULL;
        config_init_defaults(&c);
        assert_int_equal(config_load(&c, path, NULL, &error), -ENOENT);
        assert_non_null(error);
        assert_non_null(strstr(error, path));
        free(error);
        config_done(&c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_defaults, setup, teardown),
                cmocka_unit_test_setup_teardown(test_one_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_directory_layout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_errors_name_file_and_line, setup, teardown),
                cmocka_unit_test_setup_teardown(test_grace_durations, setup, teardown),
                cmocka_unit_test_setup_teardown(test_missing_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cluster_section, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cluster_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cluster_not_served, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

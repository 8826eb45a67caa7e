/* SPDX-License-Identifier: MIT */
/* agend and the [Cluster] section (issue 16), without etcd: a Scope=cluster resource whose
 * etcd cannot be reached gets a clear error and is never served as a local one, while local
 * resources work; a [Cluster] section without such resources changes nothing; a
 * Scope=cluster resource without [Cluster] is a configuration error naming file and line.
 * With a real etcd: test-daemon-cluster-etcd.c. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "helper-agend.h"

static void write_config(const Agend *a, const char *text) {
        FILE *f = fopen(a->config, "we");
        assert_non_null(f);
        fputs(text, f);
        fclose(f);
}

/* Starts with the config and expects it to refuse: exit non-zero, log naming needle. */
static void expect_refused(const char *text, const char *line_no, const char *needle) {
        Agend *a;
        assert_int_equal(agend_new(&a), 0);
        write_config(a, text);
        assert_int_equal(agend_spawn(a), 0);
        int status;
        assert_int_equal(agend_wait_exit(a, HELPER_START_TIMEOUT, &status), 0);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
        char *log = agend_read_log(a);
        assert_non_null(log);
        char where[200];
        snprintf(where, sizeof(where), "%s:%s:", a->config, line_no);
        if (!strstr(log, where) || !strstr(log, needle))
                fail_msg("log \"%s\" does not name %s or say \"%s\"", log, where, needle);
        free(log);
        agend_free(a);
}

/* etcd unreachable: Acquire on the cluster resource fails at once with a reason naming
 * etcd (it is not granted locally), Check cannot answer either, the local resource is
 * granted as ever. */
static void test_cluster_scope_etcd_unreachable(void **state) {
        Agend *a;
        assert_int_equal(agend_new(&a), 0);
        write_config(a, "[Cluster]\nEndpoints=http://127.0.0.1:1\nNode=n1\n\n"
                        "[Resource]\nName=gpu\nScope=cluster\n\n[Resource]\nName=disk\n");
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        json_object *e = CALL_ERR(c, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\": \"gpu\"}");
        assert_non_null(strstr(jstr(e, "reason"), "etcd"));
        assert_string_equal(jstr(e, "resource"), "gpu");
        json_object *l = GRANT_LEASE(c, "{\"resource\": \"disk\"}");
        assert_string_equal(jstr(l, "resource"), "disk");
        json_object *list = CALL_OK(c, LEASE_IF "List", "{\"resource\": \"gpu\"}");
        assert_int_equal(json_object_array_length(jget(list, "leases")), 0);
        vconn_close(c);
        int status;
        assert_int_equal(agend_stop(a, &status), 0);
        agend_free(a);
}

static void test_cluster_scope_without_section(void **state) {
        expect_refused("[Resource]\nName=gpu\nScope=cluster\n", "3", "no [Cluster] section");
}

static void test_cluster_section_alone(void **state) {
        /* Endpoints nobody listens on: agend keeps asking etcd for a lease in the
         * background, and local resources work as before. */
        Agend *a;
        assert_int_equal(agend_new(&a), 0);
        write_config(a, "[Cluster]\nEndpoints=http://127.0.0.1:1\n\n[Resource]\nName=disk\nScope=local\n");
        assert_int_equal(agend_start(a), 0);
        VConn *c;
        json_object *r;
        assert_int_equal(vconn_open_agend(a, &c), 0);
        assert_int_equal(vconn_call(c, &r, "io.agend.Lease.Acquire", "{\"resource\": \"disk\"}"), 0);
        assert_string_equal(reply_state(r), "granted");
        vconn_close(c);
        int status;
        assert_int_equal(agend_stop(a, &status), 0);
        agend_free(a);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_cluster_scope_etcd_unreachable),
                cmocka_unit_test(test_cluster_scope_without_section),
                cmocka_unit_test(test_cluster_section_alone),
        };
        int r = cmocka_run_group_tests(tests, NULL, NULL);
        helper_cleanup();
        return r;
}

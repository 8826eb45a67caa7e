/* SPDX-License-Identifier: MIT */
/* Group allow lists match supplementary groups, as the kernel reports them for the peer:
 * a [Resource] with AllowGroups= grants to a member, refuses a non-member of the same uid,
 * and RevokeGroups= lets a member revoke. Needs root to give children their groups; without
 * it every test skips and the program exits 77, so meson counts them as skipped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <grp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helper-agend.h"
#include "helper-skip.h"

#define NOBODY 65534
#define GROUP_ALLOWED 4242
#define GROUP_REVOKE 4243

typedef struct Child {
        const char *socket;
        gid_t group;            /* supplementary group, 0 = none */
        const char *method;
        const char *params;
} Child;

/* In a forked child: take the groups and uid, make one call, exit 0 if it succeeded, 2 if
 * it was PermissionDenied, 1 otherwise. */
static int child_call(const Child *ch) {
        gid_t groups[1] = { ch->group };
        if (setgroups(ch->group ? 1 : 0, groups) < 0 || setresgid(NOBODY, NOBODY, NOBODY) < 0 ||
            setresuid(NOBODY, NOBODY, NOBODY) < 0)
                return 1;
        VConn *c;
        if (vconn_open(ch->socket, &c) < 0)
                return 1;
        json_object *r = NULL;
        if (vconn_call(c, &r, ch->method, "%s", ch->params) < 0)
                return 1;
        const char *e = reply_error(r);
        if (!e)
                return 0;
        return strcmp(e, "io.agend.Lease.PermissionDenied") == 0 ? 2 : 1;
}

static int run_child(const Child *ch) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
                _exit(child_call(ch));
        int st;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        return WEXITSTATUS(st);
}

static bool can_switch;

static int setup(void **state) {
        if (!can_switch)
                return 0;
        Agend *a = NULL;
        if (agend_new(&a) < 0)
                return -1;
        FILE *f = fopen(a->config, "a");
        if (!f)
                return -1;
        fprintf(f, "[Daemon]\nRevokeGroups=%d\n\n[Resource]\nName=grp\nCapacity=2\nAllowGroups=%d\n",
                GROUP_REVOKE, GROUP_ALLOWED);
        fclose(f);
        if (agend_start(a) < 0)
                return -1;
        *state = a;
        return 0;
}

static void test_allow_groups(void **state) {
        if (!can_switch)
                TEST_SKIP("cannot run children as another uid with chosen groups (needs root)");
        Agend *a = *state;
        Child member = { a->socket, GROUP_ALLOWED, LEASE_IF "Acquire", "{\"resource\":\"grp\",\"timeout\":0}" };
        Child stranger = { a->socket, 0, LEASE_IF "Acquire", "{\"resource\":\"grp\",\"timeout\":0}" };
        assert_int_equal(run_child(&member), 0);
        assert_int_equal(run_child(&stranger), 2);
}

static void test_revoke_groups(void **state) {
        if (!can_switch)
                TEST_SKIP("cannot run children as another uid with chosen groups (needs root)");
        Agend *a = *state;
        VConn *c = OPEN(a);
        json_object *p = CALL_OK(c, LEASE_IF "Acquire", "{\"resource\":\"held\"}");
        char params[128];
        snprintf(params, sizeof(params), "{\"id\":\"%s\",\"reason\":\"test\"}", jstr(p, "lease.id"));
        Child stranger = { a->socket, 0, LEASE_IF "Revoke", params };
        Child member = { a->socket, GROUP_REVOKE, LEASE_IF "Revoke", params };
        assert_int_equal(run_child(&stranger), 2);
        assert_int_equal(run_child(&member), 0);
        json_object *l = CALL_OK(c, LEASE_IF "List", "{\"resource\":\"held\"}");
        assert_int_equal(json_object_array_length(jget(l, "leases")), 0);
}

int main(void) {
        can_switch = test_can_switch_users(NOBODY, GROUP_ALLOWED);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_allow_groups, setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_revoke_groups, setup, helper_teardown),
        };
        return test_exit_code(cmocka_run_group_tests(tests, NULL, NULL));
}

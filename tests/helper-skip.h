/* SPDX-License-Identifier: MIT */
#pragma once

/* Skips that meson sees. cmocka's skip() marks one test skipped but the program still
 * exits 0, so meson (and CI, which fails on a skip) would count a test that checked
 * nothing as passed. Call TEST_SKIP() instead, and end main() with
 * `return test_exit_code(cmocka_run_group_tests(...))`: 77 (meson's "skipped") when a test
 * skipped and none failed. Include after <cmocka.h>. */

#include <grp.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

static unsigned test_skipped_count;

#define TEST_SKIP(why)                                                                  \
        do {                                                                            \
                test_skipped_count++;                                                   \
                print_message("[  SKIP    ] %s\n", (why));                              \
                skip();                                                                 \
        } while (0)

static inline int test_exit_code(int failed) {
        if (failed)
                return failed;
        return test_skipped_count > 0 ? 77 : 0;
}

/* Whether this process can run children under another uid and gid with chosen
 * supplementary groups (root with CAP_SETUID/CAP_SETGID, as a container may lack): tried
 * in a forked child, so nothing changes here. */
static inline bool test_can_switch_users(uid_t uid, gid_t gid) {
        if (geteuid() != 0)
                return false;
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
                return false;
        if (pid == 0) {
                gid_t groups[1] = { gid };
                _exit(setgroups(1, groups) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0 ? 1 : 0);
        }
        int st;
        return waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

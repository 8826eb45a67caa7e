/* SPDX-License-Identifier: MIT */
/* Crash recovery of the real agend: kill -9 while leases are held, restart on the same
 * state directory, List shows them reclaimable, the holder reclaims (same id and token),
 * what is not reclaimed is released after the grace with the reason in the history, no
 * grant collides with an unreclaimed lease during the grace, tokens keep growing across
 * restarts. A database it cannot read (garbage, a newer schema) makes it refuse to start,
 * leaving the file as it was; a second agend on a socket in use refuses too. */

#include <fcntl.h>
#include <setjmp.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-agend.h"

#define GRACE 1.0

static int setup_grace(void **state) {
        Agend *a = NULL;
        if (agend_new(&a) < 0) {
                helper_cleanup();
                return -1;
        }
        snprintf(a->grace, sizeof(a->grace), "%g", GRACE);
        if (agend_start(a) < 0) {
                fprintf(stderr, "setup: agend --grace %s did not start\n", a->grace);
                helper_cleanup();
                return -1;
        }
        *state = a;
        return 0;
}

static json_object *find_lease(json_object *list, const char *id) {
        json_object *ls = jget(list, "leases");
        for (size_t i = 0; i < json_object_array_length(ls); i++) {
                json_object *l = json_object_array_get_idx(ls, i);
                if (jstr(l, "id") && strcmp(jstr(l, "id"), id) == 0)
                        return l;
        }
        return NULL;
}

static json_object *find_event(VConn *c, const char *resource, const char *type, const char *id) {
        json_object *evs = jget(CALL_OK(c, LEASE_IF "History", "{\"resource\":\"%s\"}", resource), "events");
        for (size_t i = 0; i < json_object_array_length(evs); i++) {
                json_object *ev = json_object_array_get_idx(evs, i);
                if (jstr(ev, "type") && strcmp(jstr(ev, "type"), type) == 0 && jstr(ev, "lease") &&
                    strcmp(jstr(ev, "lease"), id) == 0)
                        return ev;
        }
        return NULL;
}

typedef struct Held {
        char id[128], secret[256], resource[64];
        int64_t token;
} Held;

static void hold(VConn *c, const char *params, Held *ret) {
        json_object *p = GRANT(c, "%s", params);
        snprintf(ret->id, sizeof(ret->id), "%s", jstr(p, "lease.id"));
        snprintf(ret->secret, sizeof(ret->secret), "%s", jstr(p, "secret"));
        snprintf(ret->resource, sizeof(ret->resource), "%s", jstr(p, "lease.resource"));
        ret->token = jint(p, "lease.token");
}

/* Reclaim(held's id, token, secret): the whole reply, error or not. */
static json_object *reclaim(VConn *c, const Held *held, int64_t token, const char *secret) {
        return CALL(c, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", held->id,
                    (long long) token, secret);
}

static void test_kill9_restart_reclaim(void **state) {
        Agend *a = *state;
        VConn *x = OPEN(a), *y = OPEN(a), *z = OPEN(a);

        /* Some tokens handed out and released before, so the high-water mark is not just
         * the held leases'. */
        int64_t max_before = 0;
        for (int i = 0; i < 5; i++) {
                Held t;
                hold(x, "{\"resource\":\"churn\"}", &t);
                max_before = MAX(max_before, t.token);
                CALL_OK(x, LEASE_IF "Release", "{\"id\":\"%s\"}", t.id);
        }
        Held A, B, C;
        hold(x, "{\"resource\":\"ra\",\"description\":\"to reclaim\"}", &A);
        hold(y, "{\"resource\":\"rb\",\"description\":\"abandoned\"}", &B);
        hold(z, "{\"resource\":\"rc\",\"detached\":true}", &C);
        max_before = MAX(max_before, MAX(A.token, MAX(B.token, C.token)));

        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(vconn_wait_closed(x, 2.0), 0);

        /* Same state dir; the socket file the dead daemon left is replaced. */
        assert_int_equal(agend_start(a), 0);
        VConn *obs = OPEN(a);

        /* Restored: the bound ones wait for their holders, the detached one is just held. */
        json_object *list = CALL_OK(obs, LEASE_IF "List", "{}");
        json_object *la = find_lease(list, A.id), *lb = find_lease(list, B.id), *lc = find_lease(list, C.id);
        if (!la || !lb || !lc)
                fail_msg("leases held at kill -9 not listed after restart: %s", jtext(list));
        assert_lease_shape(la);
        assert_string_equal(jstr(la, "state"), "reclaimable");
        assert_string_equal(jstr(lb, "state"), "reclaimable");
        assert_string_equal(jstr(lc, "state"), "held");
        assert_int_equal(jint(la, "token"), A.token);
        assert_int_equal(jint(lb, "token"), B.token);
        assert_string_equal(jstr(la, "resource"), "ra");
        assert_string_equal(jstr(la, "description"), "to reclaim");
        assert_int_equal(jint(la, "owner.pid"), getpid());
        assert_null(strstr(jtext(list), A.secret));

        /* During the grace no grant collides with them. */
        CALL_ERR(obs, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"ra\",\"timeout\":0}");
        CALL_ERR(obs, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"rb\",\"timeout\":0}");

        /* A Reclaim needs the secret and the token. */
        VConn *x2 = OPEN(a);
        assert_non_null(reply_error(reclaim(x2, &B, B.token, "wrong")));
        assert_non_null(reply_error(reclaim(x2, &A, A.token + 1, A.secret)));

        /* The holder, on a new connection, reclaims: same id, same token, held again. */
        json_object *rep = reclaim(x2, &A, A.token, A.secret);
        if (reply_error(rep))
                fail_msg("Reclaim by the holder failed: %s", jtext(rep));
        json_object *r = jget(reply_params(rep), "lease");
        assert_lease_shape(r);
        assert_string_equal(jstr(r, "id"), A.id);
        assert_int_equal(jint(r, "token"), A.token);
        assert_string_equal(jstr(r, "state"), "held");
        /* Reclaimed once only. */
        assert_non_null(reply_error(reclaim(obs, &A, A.token, A.secret)));

        /* A waiter on B's resource is granted only when the grace has passed. */
        VConn *w = OPEN(a);
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"rb\"}"), 0);
        json_object *m = RECV(w, GRACE + HELPER_REPLY_TIMEOUT);
        if (strcmp(reply_state(m), "queued") == 0) {
                assert_queued(m, 1);
                m = RECV(w, GRACE + HELPER_REPLY_TIMEOUT);
        }
        double since_ready = helper_now() - usec_to_sec(a->ready);
        json_object *g = assert_granted(m);
        if (since_ready < GRACE * 0.5 || since_ready > GRACE + 3.0)
                fail_msg("unreclaimed lease released %.3fs after the restarted agend answered; grace is %gs",
                         since_ready, GRACE);
        assert_true(jint(g, "lease.token") > max_before);

        /* B was released with a reason; A was reclaimed and is still held; C untouched. */
        json_object *ev = find_event(obs, "rb", "released", B.id);
        if (!ev) {
                json_object *h = CALL_OK(obs, LEASE_IF "History", "{\"resource\":\"rb\"}");
                fail_msg("no released event for the unreclaimed lease: %s", jtext(h));
        }
        assert_non_null(jstr(ev, "reason"));
        assert_true(strlen(jstr(ev, "reason")) > 0);
        assert_non_null(find_event(obs, "ra", "reclaimed", A.id));
        list = CALL_OK(obs, LEASE_IF "List", "{}");
        assert_null(find_lease(list, B.id));
        assert_non_null(find_lease(list, A.id));
        assert_string_equal(jstr(find_lease(list, A.id), "state"), "held");
        assert_non_null(find_lease(list, C.id));
        assert_string_equal(jstr(find_lease(list, C.id), "state"), "held");

        /* Every new grant after the restart: greater than every token before it. */
        for (int i = 0; i < 5; i++) {
                Held n;
                char params[64];
                snprintf(params, sizeof(params), "{\"resource\":\"after%d\"}", i);
                hold(obs, params, &n);
                assert_true(n.token > max_before);
        }

        /* The reclaimed lease is bound to its new connection: closing it releases. */
        vconn_close(x2);
        double deadline = helper_now() + 2.0;
        while (find_lease(CALL_OK(obs, LEASE_IF "List", "{\"resource\":\"ra\"}"), A.id)) {
                assert_true(helper_now() < deadline);
                helper_sleep(0.01);
        }
        /* After the grace, Reclaim of a lease that was not reclaimed is refused. */
        assert_non_null(reply_error(reclaim(obs, &B, B.token, B.secret)));
}

/* Several kill -9/restart rounds with --grace 0: unreclaimed leases go at once, and tokens
 * only grow. */
static void test_tokens_across_restarts(void **state) {
        Agend *a = *state;
        int st = -1;
        assert_int_equal(agend_stop(a, &st), 0);
        snprintf(a->grace, sizeof(a->grace), "0");
        assert_int_equal(agend_start(a), 0);

        int64_t max_before = 0;
        for (int round = 0; round < 3; round++) {
                VConn *c = OPEN(a);
                for (int i = 0; i < 3; i++) {
                        Held h;
                        char params[64];
                        snprintf(params, sizeof(params), "{\"resource\":\"tok%d\"}", i);
                        hold(c, params, &h);
                        if (h.token <= max_before)
                                fail_msg("round %d: token %lld after a restart, but %lld was granted before",
                                         round, (long long) h.token, (long long) max_before);
                        max_before = MAX(max_before, h.token);
                }
                assert_int_equal(agend_kill(a), 0);
                vconn_close(c);
                assert_int_equal(agend_start(a), 0);

                /* Grace 0: the bound leases of the dead connections are released at once. */
                VConn *o = OPEN(a);
                double deadline = helper_now() + 1.0;
                for (;;) {
                        json_object *l = CALL_OK(o, LEASE_IF "List", "{}");
                        if (json_object_array_length(jget(l, "leases")) == 0)
                                break;
                        if (helper_now() > deadline)
                                fail_msg("with --grace 0, restored leases still listed 1 s after restart: %s",
                                         jtext(l));
                        helper_sleep(0.01);
                }
                GRANT(o, "{\"resource\":\"tok0\",\"timeout\":0}");
                vconn_close(o);
        }
}

/* A clean stop keeps detached leases: SIGTERM commits, restart restores. */
static void test_sigterm_keeps_detached(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        Held d;
        hold(c, "{\"resource\":\"keep\",\"detached\":true,\"ttl\":60}", &d);
        int st = -1;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        assert_int_equal(agend_start(a), 0);
        VConn *o = OPEN(a);
        json_object *l = find_lease(CALL_OK(o, LEASE_IF "List", "{}"), d.id);
        assert_non_null(l);
        assert_int_equal(jint(l, "token"), d.token);
        assert_true(json_object_get_boolean(jget(l, "detached")));
        CALL_OK(o, LEASE_IF "Release", "{\"id\":\"%s\",\"secret\":\"%s\"}", d.id, d.secret);
        Held n;
        hold(o, "{\"resource\":\"keep\"}", &n);
        assert_true(n.token > d.token);
}

/* Sends one call per lease in turn, 100 at a time, and hands each reply to check (i: the
 * lease's index). Pipelined: 3 000 round trips one by one would take seconds. */
static void per_lease(VConn *c, int n, const char *method, const char *(*params)(int i, char *buf, size_t size),
                      void (*check)(int i, json_object *reply)) {
        char buf[512];
        for (int i = 0; i < n; i += 100) {
                int end = MIN(i + 100, n);
                for (int j = i; j < end; j++)
                        assert_int_equal(vconn_send(c, 0, method, "%s", params(j, buf, sizeof(buf))), 0);
                for (int j = i; j < end; j++) {
                        json_object *r;
                        assert_int_equal(vconn_recv(c, HELPER_REPLY_TIMEOUT, &r), 0);
                        if (reply_error(r))
                                fail_msg("%s for lease %d: %s", method, j, jtext(r));
                        check(j, r);
                        helper_pool_put(r);
                }
        }
}

enum { FOLD_LEASES = 3000, FOLD_RELEASED = 1000 };
static Held *fold_held;

static const char *fold_acquire_params(int i, char *buf, size_t size) {
        snprintf(buf, size, "{\"resource\":\"fold%d\",\"detached\":true}", i);
        return buf;
}

static void fold_acquired(int i, json_object *r) {
        snprintf(fold_held[i].id, sizeof(fold_held[i].id), "%s", jstr(r, "parameters.lease.id"));
        snprintf(fold_held[i].secret, sizeof(fold_held[i].secret), "%s", jstr(r, "parameters.secret"));
        fold_held[i].token = jint(r, "parameters.lease.token");
}

static const char *fold_renew_params(int i, char *buf, size_t size) {
        snprintf(buf, size, "{\"id\":\"%s\",\"secret\":\"%s\",\"ttl\":3600}", fold_held[i].id,
                 fold_held[i].secret);
        return buf;
}

static const char *fold_release_params(int i, char *buf, size_t size) {
        snprintf(buf, size, "{\"id\":\"%s\",\"secret\":\"%s\"}", fold_held[i].id, fold_held[i].secret);
        return buf;
}

static void fold_ignore(int i, json_object *r) {
}

/* Detached leases survive a kill -9 while the leases snapshot's fold thread writes them
 * (agend-leases.db, docs/architecture.md "The database"): 3 000 granted, then renewed with
 * a TTL (6 000 rows, past the fold mark: the oldest changes are handed to the fold
 * thread), 1 000 of them released, and kill -9 right after the last reply. The restart
 * restores the other 2 000, each with its token and its renewed TTL, and none of the
 * released ones. */
static void test_kill9_during_fold(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        fold_held = calloc(FOLD_LEASES, sizeof(Held));
        assert_non_null(fold_held);
        per_lease(c, FOLD_LEASES, LEASE_IF "Acquire", fold_acquire_params, fold_acquired);
        per_lease(c, FOLD_LEASES, LEASE_IF "Renew", fold_renew_params, fold_ignore);
        per_lease(c, FOLD_RELEASED, LEASE_IF "Release", fold_release_params, fold_ignore);
        assert_int_equal(agend_kill(a), 0);
        vconn_close(c);
        assert_int_equal(agend_start(a), 0);

        VConn *o = OPEN(a);
        int found = 0;
        int64_t after = 0;
        for (int page = 0; page < 10; page++) {
                json_object *p = CALL_OK(o, LEASE_IF "List", "{\"after\":%lld}", (long long) after);
                json_object *leases = jget(p, "leases");
                for (size_t k = 0; k < json_object_array_length(leases); k++) {
                        json_object *l = json_object_array_get_idx(leases, k);
                        int i = -1;
                        if (sscanf(jstr(l, "resource"), "fold%d", &i) != 1 || i < 0 || i >= FOLD_LEASES)
                                fail_msg("an unexpected lease was restored: %s", jtext(l));
                        if (i < FOLD_RELEASED)
                                fail_msg("released lease %d came back: %s", i, jtext(l));
                        assert_string_equal(jstr(l, "id"), fold_held[i].id);
                        assert_int_equal(jint(l, "token"), fold_held[i].token);
                        assert_true(jdouble(l, "ttl") == 3600.0);
                        found++;
                }
                if (!jget(p, "continue_after"))
                        break;
                after = jint(p, "continue_after");
        }
        assert_int_equal(found, FOLD_LEASES - FOLD_RELEASED);
        free(fold_held);
        fold_held = NULL;
}

static char *read_file_all(const char *path, size_t *ret_len) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        struct stat st;
        if (fstat(fd, &st) < 0) {
                close(fd);
                return NULL;
        }
        char *buf = malloc((size_t) st.st_size + 1);
        size_t len = 0;
        while (buf && len < (size_t) st.st_size) {
                ssize_t k = read(fd, buf + len, (size_t) st.st_size - len);
                if (k <= 0)
                        break;
                len += (size_t) k;
        }
        close(fd);
        *ret_len = len;
        return buf;
}

/* Starts agend on a state it must refuse: it exits non-zero (not by a signal) within the
 * start timeout, and says why on stderr, naming the database. */
static void assert_refuses_to_start(Agend *a) {
        assert_int_equal(agend_spawn(a), 0);
        int st = -1;
        int r = agend_wait_exit(a, HELPER_START_TIMEOUT, &st);
        if (r == -ETIMEDOUT) {
                agend_kill(a);
                fail_msg("agend kept running on a database it cannot read");
        }
        assert_int_equal(r, 0);
        if (!WIFEXITED(st))
                fail_msg("agend died by signal %d instead of refusing to start", WTERMSIG(st));
        assert_int_not_equal(WEXITSTATUS(st), 0);

        _cleanup_free_ char *log = agend_read_log(a);
        assert_non_null(log);
        /* Only what the last start wrote. */
        char *last = log, *p;
        while ((p = strstr(last + 1, "---- test: starting agend")))
                last = p;
        last = strchr(last, '\n');
        assert_non_null(last);
        last++;
        if (!*last)
                fail_msg("agend refused to start without a word on stderr");
        if (!strcasestr(last, "agend.db") && !strcasestr(last, "database"))
                fail_msg("agend's refusal does not say it is the database: %s", last);
        fprintf(stderr, "refusal message: %s", last);
}

static void test_corrupt_database(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        GRANT(c, "{\"resource\":\"x\",\"detached\":true}");
        int st = -1;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

        /* Garbage over the whole file. */
        struct stat before;
        assert_int_equal(stat(a->db, &before), 0);
        size_t size = MAX((size_t) before.st_size, (size_t) 65536);
        _cleanup_free_ char *garbage = malloc(size);
        assert_non_null(garbage);
        for (size_t i = 0; i < size; i++)
                garbage[i] = "agend test garbage, not a sqlite database\n"[i % 42];
        int fd = open(a->db, O_WRONLY | O_TRUNC | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, garbage, size), (ssize_t) size);
        close(fd);
        assert_int_equal(stat(a->db, &before), 0);

        assert_refuses_to_start(a);

        /* The file is as we left it: same inode, same bytes. */
        struct stat after;
        assert_int_equal(stat(a->db, &after), 0);
        assert_int_equal(after.st_ino, before.st_ino);
        size_t len = 0;
        _cleanup_free_ char *now = read_file_all(a->db, &len);
        assert_non_null(now);
        assert_int_equal(len, size);
        assert_memory_equal(now, garbage, size);

        /* Twice: a failed start changed nothing that makes the second one succeed. */
        assert_refuses_to_start(a);
}

static void test_newer_schema(void **state) {
        Agend *a = *state;
        int st = -1;
        assert_int_equal(agend_stop(a, &st), 0);

        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open_v2(a->db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        sqlite3_stmt *s = NULL;
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        int version = sqlite3_column_int(s, 0);
        sqlite3_finalize(s);
        assert_true(version > 0); /* the schema is versioned */
        char sql[64];
        snprintf(sql, sizeof(sql), "PRAGMA user_version = %d", version + 1000);
        assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_close(db), SQLITE_OK);

        assert_refuses_to_start(a);

        db = NULL;
        assert_int_equal(sqlite3_open_v2(a->db, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &s, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(s), SQLITE_ROW);
        assert_int_equal(sqlite3_column_int(s, 0), version + 1000);
        sqlite3_finalize(s);
        sqlite3_close(db);
}

/* A second agend on a socket another agend answers on refuses to start; the first goes on. */
static void test_second_instance_refuses(void **state) {
        Agend *a = *state;
        Agend *b = NULL;
        assert_int_equal(agend_new(&b), 0);
        snprintf(b->socket, sizeof(b->socket), "%s", a->socket);
        assert_int_equal(agend_spawn(b), 0);
        int st = -1;
        int r = agend_wait_exit(b, HELPER_START_TIMEOUT, &st);
        if (r == -ETIMEDOUT)
                fail_msg("a second agend started on a socket in use");
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
        VConn *c = OPEN(a);
        GRANT(c, "{\"resource\":\"still\"}");
        agend_free(b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_kill9_restart_reclaim, setup_grace, helper_teardown),
                cmocka_unit_test_setup_teardown(test_tokens_across_restarts, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_sigterm_keeps_detached, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_kill9_during_fold, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_corrupt_database, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_newer_schema, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_second_instance_refuses, helper_setup, helper_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* The sqlite store: schema migration, group commit (nothing visible before commit),
 * refusal of files it cannot read, history capping. Real files in a temp directory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "engine.h"
#include "macro.h"
#include "store.h"

typedef struct Fixture {
        char dir[64];
        char db[96];
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        snprintf(f->dir, sizeof(f->dir), "/tmp/agend-test-store-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->db, sizeof(f->db), "%s/agend.db", f->dir);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

static int64_t count(const char *db, const char *sql) {
        sqlite3 *h;
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        int64_t n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(h);
        return n;
}

static void exec(const char *db, const char *sql) {
        sqlite3 *h;
        assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
        assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(h);
}

static void noop_event(Engine *e, const Event *ev, Lease *l, void *u) {
}
static const EngineCallbacks callbacks = { .event = noop_event };
static const Owner owner = { .uid = 1, .gid = 1, .pid = 1, .comm = (char *) "t" };

static void test_group_commit(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        Engine *e;
        Holder h = {};
        Lease *l;
        Waiter *w;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_FULL, 100, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 0);
        assert_int_equal(s->ops->commit(s), 1);
        for (int i = 0; i < 10; i++) {
                char name[8];
                snprintf(name, sizeof(name), "r%d", i);
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = name, .owner = &owner }, &h, NULL,
                                                &l, &w),
                                 0);
        }
        /* Another reader sees none of the ten before the commit ... */
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 0);
        assert_int_equal(s->ops->commit(s), 1);
        /* ... and all of them after it, in one transaction. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 10);
        /* The token high-water mark is reserved ahead of the tokens granted. */
        assert_true(count(f->db, "SELECT value FROM meta WHERE key = 'last_token'") >= 10);
        /* Nothing changed: nothing to commit. */
        assert_int_equal(s->ops->commit(s), 0);
        h = (Holder) {};
        engine_free(e);
        store_free(s);
}

static void test_migration_from_v1(void **state) {
        Fixture *f = *state;
        /* A database as schema version 1 wrote it, with a lease in it. */
        exec(f->db,
             "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
             "CREATE TABLE leases (id TEXT PRIMARY KEY, secret TEXT NOT NULL, resource TEXT NOT NULL,"
             " units INTEGER NOT NULL, exclusive INTEGER NOT NULL, detached INTEGER NOT NULL,"
             " token INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, pid INTEGER NOT NULL,"
             " comm TEXT, unit TEXT, description TEXT NOT NULL, created INTEGER NOT NULL,"
             " ttl INTEGER NOT NULL, deadline INTEGER);"
             "CREATE TABLE events (seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, type TEXT NOT NULL,"
             " resource TEXT NOT NULL, lease TEXT, token INTEGER, uid INTEGER, gid INTEGER, pid INTEGER,"
             " comm TEXT, unit TEXT, units INTEGER, reason TEXT);"
             "INSERT INTO leases VALUES ('0123456789abcdef', '0123456789abcdef0123456789abcdef', 'old', 1, 0, 1,"
             " 7, 0, 0, 1, 'x', NULL, 'kept', 1, 0, NULL);"
             "INSERT INTO meta VALUES ('last_token', '7');"
             "INSERT INTO meta VALUES ('boot_id', 'b');"
             "PRAGMA user_version = 1;");
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(count(f->db, "PRAGMA user_version"), 2);
        assert_int_equal(count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'events_resource'"), 1);
        Engine *e;
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 1);
        Lease *l = engine_lease_get(e, "0123456789abcdef");
        assert_non_null(l);
        assert_string_equal(l->description, "kept");
        assert_int_equal(engine_last_token(e), 7);
        engine_free(e);
        store_free(s);
}

static void test_refuses_corrupt(void **state) {
        Fixture *f = *state;
        static const char garbage[] = "this is not an sqlite database, and agend must not replace it\n";
        FILE *fp = fopen(f->db, "w");
        assert_non_null(fp);
        for (int i = 0; i < 200; i++)
                fputs(garbage, fp);
        fclose(fp);
        struct stat before, after;
        assert_int_equal(stat(f->db, &before), 0);

        Store *s = NULL;
        char *err = NULL;
        assert_true(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err) < 0);
        assert_null(s);
        assert_non_null(err);
        assert_non_null(strstr(err, "agend.db"));
        free(err);
        assert_int_equal(stat(f->db, &after), 0);
        assert_int_equal(before.st_size, after.st_size);
        assert_int_equal(before.st_mtim.tv_sec, after.st_mtim.tv_sec);
        assert_int_equal(before.st_mtim.tv_nsec, after.st_mtim.tv_nsec);
}

static void test_refuses_newer_schema(void **state) {
        Fixture *f = *state;
        exec(f->db, "CREATE TABLE future (x); PRAGMA user_version = 99;");
        Store *s = NULL;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), -EPROTONOSUPPORT);
        assert_non_null(err);
        assert_non_null(strstr(err, "newer"));
        free(err);
        assert_int_equal(count(f->db, "PRAGMA user_version"), 99);
}

typedef struct Hist {
        unsigned n;
        uint64_t first_token, last_token;
} Hist;

static int hist_cb(const Event *e, void *u) {
        Hist *h = u;
        if (h->n++ == 0)
                h->first_token = e->token;
        h->last_token = e->token;
        return 0;
}

static void test_history_capped(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        Engine *e;
        Holder h = {};
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 20, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 0);
        for (int i = 0; i < 30; i++) {
                Lease *l;
                Waiter *w;
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "h", .owner = &owner }, &h, NULL, &l,
                                                &w),
                                 0);
                engine_lease_end(e, l, EVENT_RELEASED, "test");
                assert_int_equal(s->ops->commit(s), 1);
        }
        assert_int_equal(count(f->db, "SELECT count(*) FROM events"), 20);
        Hist hist = {};
        assert_int_equal(s->ops->history(s, "h", 0, 6, hist_cb, &hist), 0);
        assert_int_equal(hist.n, 6);
        /* oldest first: the last three leases, granted then released */
        assert_int_equal(hist.first_token, 28);
        assert_int_equal(hist.last_token, 30);
        engine_free(e);
        store_free(s);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_from_v1, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refuses_corrupt, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refuses_newer_schema, setup, teardown),
                cmocka_unit_test_setup_teardown(test_history_capped, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

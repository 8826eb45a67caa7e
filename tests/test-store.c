/* SPDX-License-Identifier: MIT */
/* The sqlite store: schema migration, group commit (nothing visible before commit),
 * refusal of files it cannot read, history capping, file modes, a batch that fails for
 * lack of space and is written again when there is space. Real files in a temp directory
 * (a small tmpfs in a private mount namespace for the full disk). */
#include <inttypes.h>
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
#include "helper-mount.h"
#include "macro.h"
#include "store.h"

typedef struct Fixture {
        char dir[64];
        char db[96];
        char snap[96];          /* the leases snapshot beside db */
} Fixture;

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(*f));
        snprintf(f->dir, sizeof(f->dir), "/tmp/agend-test-store-XXXXXX");
        assert_non_null(mkdtemp(f->dir));
        snprintf(f->db, sizeof(f->db), "%s/agend.db", f->dir);
        snprintf(f->snap, sizeof(f->snap), "%s/agend-leases.db", f->dir);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        char cmd[128];
        (void) umount2(f->dir, MNT_DETACH);     /* a failed test may leave its tmpfs */
        snprintf(cmd, sizeof(cmd), "rm -rf %s", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

/* The sqlite store open in this test, if any: it holds the database exclusively, so the
 * tables are read through its own connection while it is open, through a connection of
 * their own once it is closed. */
static Store *open_store;

static int track_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret, char **ret_error) {
        int k = store_sqlite_open(dir, sync, history_size, ret, ret_error);
        if (k >= 0)
                open_store = *ret;
        return k;
}

static Store *track_free(Store *s) {
        if (s && s == open_store)
                open_store = NULL;
        return store_free(s);
}

static void track_crash(Store *s) {
        if (s == open_store)
                open_store = NULL;
        store_sqlite_crash(s);
}

#define store_sqlite_open track_open
#define store_free track_free

/* With the leases snapshot attached as snap, if there is one, and the view current_leases
 * over both files, as the store's own connection has them. */
static sqlite3 *reader(const char *db) {
        if (open_store)
                return store_sqlite_handle(open_store);
        sqlite3 *h;
        assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        char snap[128];
        snprintf(snap, sizeof(snap), "%.*s/agend-leases.db", (int) (strrchr(db, '/') - db), db);
        if (access(snap, F_OK) == 0) {
                char *sql = sqlite3_mprintf("ATTACH %Q AS snap", snap);
                assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
                sqlite3_free(sql);
                /* A snapshot a migration has not filled yet has no tables to view. */
                (void) sqlite3_exec(h, store_sqlite_inspect_sql(), NULL, NULL, NULL);
        }
        return h;
}

static void reader_done(sqlite3 *h) {
        if (!open_store)
                sqlite3_close(h);
}

static int64_t count(const char *db, const char *sql) {
        sqlite3 *h = reader(db);
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        int64_t n = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        reader_done(h);
        return n;
}

/* The first column of the first row, malloc'ed. */
static char *text(const char *db, const char *sql) {
        sqlite3 *h = reader(db);
        sqlite3_stmt *st;
        assert_int_equal(sqlite3_prepare_v2(h, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        char *v = strdup((const char *) sqlite3_column_text(st, 0));
        assert_non_null(v);
        sqlite3_finalize(st);
        reader_done(h);
        return v;
}

/* While the store is open, nobody else can read the database: it is held exclusively
 * (no -shm file, no lock calls per transaction); once closed, sqlite3 reads it. */
static void test_exclusive_while_open(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(s->ops->meta_set(s, "k", "v"), 0);
        assert_int_equal(s->ops->commit(s), 1);
        sqlite3 *h;
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_open_v2(f->db, &h, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        int rc = sqlite3_prepare_v2(h, "SELECT value FROM meta WHERE key = 'k'", -1, &st, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        assert_int_equal(rc, SQLITE_BUSY);
        sqlite3_finalize(st);
        sqlite3_close(h);
        char shm[sizeof(f->db) + 8];
        snprintf(shm, sizeof(shm), "%s-shm", f->db);
        assert_int_equal(access(shm, F_OK), -1);
        store_free(s);
        _cleanup_free_ char *v = text(f->db, "SELECT value FROM meta WHERE key = 'k'");
        assert_string_equal(v, "v");
}

static void exec(const char *db, const char *sql) {
        sqlite3 *h;
        assert_int_equal(sqlite3_open(db, &h), SQLITE_OK);
        assert_int_equal(sqlite3_exec(h, sql, NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(h);
}

/* Tests skipped for want of a mount namespace: the binary then exits 77, so meson counts
 * it as skipped (and CI as failed) rather than passed. */
static unsigned n_skipped;

static void noop_event(Engine *e, const Event *ev, Lease *l, void *u) {
}
static const EngineCallbacks callbacks = { .event = noop_event };
static const Owner owner = { .uid = 1, .gid = 1, .pid = 1, .comm = (char *) "t" };

/* Queued waiters are stored with the leases: after a restart on the same boot they come
 * back in their order as unclaimed places, and a ticket claims its place; on another boot,
 * or when a place is granted, their rows go. */
static void test_waiters_across_restart(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        Engine *e;
        Holder h = {}, hw[3] = {};
        Lease *l = NULL;
        Waiter *w[3];
        char tickets[3][WAITER_TICKET_LEN + 1];

        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 10 * USEC_PER_SEC), 0);
        AcquireParams p = { .resource = "m", .owner = &owner, .timeout = USEC_INFINITY };
        assert_int_equal(engine_acquire(e, &p, &h, NULL, &l, &w[0]), 0);
        for (int i = 0; i < 3; i++) {
                assert_int_equal(engine_acquire(e, &p, &hw[i], NULL, &l, &w[i]), 1);
                snprintf(tickets[i], sizeof(tickets[i]), "%s", w[i]->ticket);
                assert_int_equal(strlen(tickets[i]), WAITER_TICKET_LEN);
        }
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 3);
        /* A crash: nothing of the engine is written at its end. */
        engine_free(e);
        store_free(s);

        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 10 * USEC_PER_SEC), 1);
        assert_int_equal(engine_n_waiters(e), 3);
        assert_int_equal(engine_n_unclaimed(e), 3);
        assert_true(engine_in_grace(e));
        Resource *r = engine_resource_get(e, "m");
        int i = 0;
        for (Waiter *x = r->wait_head; x; x = x->next, i++) {
                assert_string_equal(x->ticket, tickets[i]);
                assert_int_equal(x->position, i + 1);
                assert_true(x->unclaimed);
        }
        /* The last one claims its place: still third, ahead of a newcomer. */
        Holder nh = {}, back = {};
        Waiter *nw, *bw;
        assert_int_equal(engine_acquire(e, &p, &nh, NULL, &l, &nw), 1);
        assert_int_equal(nw->position, 4);
        AcquireParams pt = p;
        pt.ticket = tickets[2];
        assert_int_equal(engine_acquire(e, &pt, &back, NULL, &l, &bw), 1);
        assert_int_equal(bw->position, 3);
        assert_false(bw->unclaimed);
        assert_int_equal(engine_n_unclaimed(e), 2);
        /* A ticket is good once. */
        Holder again = {};
        Waiter *aw;
        assert_int_equal(engine_acquire(e, &pt, &again, NULL, &l, &aw), 1);
        assert_int_equal(aw->position, 5);
        engine_waiter_cancel(e, aw);
        assert_int_equal(s->ops->commit(s), 1);
        engine_free(e);
        store_free(s);

        /* Another boot: the places are gone, from memory and from the file. */
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "another boot", 10 * USEC_PER_SEC), 1);
        assert_int_equal(engine_n_waiters(e), 0);
        assert_false(engine_in_grace(e));
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 0);
        engine_free(e);
        store_free(s);
}

/* A store in the fixture's directory (HistorySize 100) and an engine restored from it. */
static void open_with_engine(Fixture *f, StoreSync sync, Store **ret_store, Engine **ret_engine) {
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, sync, 100, ret_store, &err), 0);
        assert_int_equal(engine_new(NULL, *ret_store, &callbacks, NULL, ret_engine), 0);
        assert_int_equal(engine_restore(*ret_engine, "b", 0), 0);
}

static void test_group_commit(void **state) {
        Fixture *f = *state;
        Store *s;
        Engine *e;
        Holder h = {};
        Lease *l;
        Waiter *w;
        open_with_engine(f, STORE_SYNC_FULL, &s, &e);
        assert_int_equal(s->ops->commit(s), 1);
        for (int i = 0; i < 10; i++) {
                char name[8];
                snprintf(name, sizeof(name), "r%d", i);
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = name, .owner = &owner }, &h, NULL,
                                                &l, &w),
                                 0);
        }
        /* None of the ten is committed before the commit (no other process can read the
         * database while the store holds it: the transaction is simply still open) ... */
        assert_int_equal(sqlite3_get_autocommit(store_sqlite_handle(s)), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(sqlite3_get_autocommit(store_sqlite_handle(s)), 1);
        /* ... and all of them after it, in one transaction. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 10);
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
        assert_int_equal(count(f->db, "PRAGMA user_version"), 8);
        assert_int_equal(count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'waiters'"), 1);
        /* 4 → 5 drops the index again: History scans events backwards. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'events_resource'"), 0);
        /* 5 → 6 folds lease_log away: changes ride in the event rows. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'lease_log'"), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM pragma_table_info('events') WHERE name = 'change'"), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM pragma_table_info('events') WHERE name LIKE 'by_%'"), 5);
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
        /* Left as it was: not even the snapshot file is made beside it. */
        assert_int_equal(access(f->snap, F_OK), -1);
}

typedef struct Hist {
        unsigned n;
        uint64_t first_token, last_token;
        uint64_t last_seq;
} Hist;

static int store_hist_cb(const EventRecord *e, void *u) {
        Hist *h = u;
        if (h->n++ == 0)
                h->first_token = e->token;
        else
                assert_true(e->seq > h->last_seq);      /* oldest first */
        h->last_seq = e->seq;
        h->last_token = e->token;
        return 0;
}

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
        /* The ring (at least 16 384 rows) keeps all 60 rows, and History never reaches past
         * the last 20. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM events"), 60);
        Hist hist = {};
        assert_int_equal(engine_history(e, "h", 0, 6, hist_cb, &hist), 0);
        assert_int_equal(hist.n, 6);
        /* oldest first: the last three leases, granted then released */
        assert_int_equal(hist.first_token, 28);
        assert_int_equal(hist.last_token, 30);
        /* Never more than HistorySize, whatever else the ring holds. */
        hist = (Hist) {};
        assert_int_equal(engine_history(e, NULL, 0, 1000, hist_cb, &hist), 0);
        assert_int_equal(hist.n, 20);
        engine_free(e);
        store_free(s);
}

/* The database holds every secret: 0600 whatever the umask, -wal and -shm too; files left
 * wider by an older agend are narrowed. */
static void test_file_modes(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        Engine *e;
        Holder h = {};
        Lease *l;
        Waiter *w;
        mode_t old = umask(022);
        open_with_engine(f, STORE_SYNC_NORMAL, &s, &e);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "m", .owner = &owner }, &h, NULL, &l, &w),
                         0);
        assert_int_equal(s->ops->commit(s), 1);
        static const char *const suffixes[] = { "", "-wal" };   /* no -shm: held exclusively */
        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                char p[128];
                struct stat st;
                snprintf(p, sizeof(p), "%s%s", f->db, suffixes[i]);
                assert_int_equal(stat(p, &st), 0);
                if ((st.st_mode & 0777) != 0600)
                        fail_msg("%s has mode %04o, not 0600", p, (unsigned) (st.st_mode & 0777));
        }
        h = (Holder) {};
        engine_free(e);
        store_free(s);

        /* An older agend's 0644 file. */
        assert_int_equal(chmod(f->db, 0644), 0);
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        struct stat st;
        assert_int_equal(stat(f->db, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0600);
        store_free(s);
        umask(old);
}

static void acquire_n(Engine *e, Holder *h, const char *prefix, int n) {
        static char description[1001];
        memset(description, 'd', sizeof(description) - 1);
        for (int i = 0; i < n; i++) {
                char name[32];
                Lease *l;
                Waiter *w;
                snprintf(name, sizeof(name), "%s%d", prefix, i);
                assert_int_equal(engine_acquire(e,
                                                &(AcquireParams) { .resource = name,
                                                                   .owner = &owner,
                                                                   .description = description },
                                                h, NULL, &l, &w),
                                 0);
        }
}

/* A commit that fails for lack of space leaves the batch to be written again: the engine
 * has applied it and cannot undo it. Once there is space, the next commit writes all of
 * it (and what came after); nothing is lost, nothing written twice. */
static void test_full_disk_batch_replayed(void **state) {
        Fixture *f = *state;
        int r = helper_private_mounts();
        if (r < 0) {
                n_skipped++;
                fprintf(stderr, "cannot make a private mount namespace (%s): skipped\n", strerror(-r));
                skip();
        }
        assert_int_equal(helper_mount_tmpfs(f->dir, 2UL << 20, false), 0);

        Store *s;
        char *err = NULL;
        Engine *e;
        Holder h = {};
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_FULL, 1000, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 0);
        acquire_n(e, &h, "before", 5);
        assert_int_equal(s->ops->commit(s), 1);

        char fill[128];
        snprintf(fill, sizeof(fill), "%s/fill", f->dir);
        assert_int_equal(helper_fill(fill), 0);

        /* 40 leases with 1 kB descriptions: the WAL must grow, and cannot. */
        acquire_n(e, &h, "full", 40);
        assert_int_equal(s->ops->commit(s), -ENOSPC);
        /* Still full: the same batch fails again, plus what came since. */
        acquire_n(e, &h, "more", 2);
        assert_int_equal(s->ops->commit(s), -ENOSPC);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 5);

        assert_int_equal(unlink(fill), 0);
        /* The write that begins the next transaction (and so triggers the replay) is
         * written once, not replayed and then written again. */
        EventRecord ev = { .type = "revoked", .time = 1, .resource = "marker", .reason = "once" };
        assert_int_equal(s->ops->event_append(s, &ev), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE resource = 'marker'"), 1);
        assert_int_equal(s->ops->commit(s), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 47);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE type = 'granted'"), 47);
        assert_int_equal(count(f->db, "SELECT count(DISTINCT token) FROM current_leases"), 47);
        h = (Holder) {};
        engine_free(e);
        store_free(s);
        assert_int_equal(helper_umount(f->dir), 0);
}

/* On a read-only file system the message says so and does not advise moving the file. */
static void test_read_only(void **state) {
        Fixture *f = *state;
        int r = helper_private_mounts();
        if (r < 0) {
                n_skipped++;
                fprintf(stderr, "cannot make a private mount namespace (%s): skipped\n", strerror(-r));
                skip();
        }
        assert_int_equal(helper_mount_tmpfs(f->dir, 1UL << 20, false), 0);
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        store_free(s);
        assert_int_equal(helper_remount_ro(f->dir), 0);
        s = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), -EROFS);
        assert_null(s);
        assert_non_null(err);
        assert_non_null(strstr(err, "read-only"));
        assert_null(strstr(err, "move"));
        free(err);
        assert_int_equal(helper_umount(f->dir), 0);
}

static int count_restored(const LeaseRecord *r, void *u) {
        (*(unsigned *) u)++;
        return 0;
}

/* Opens the store in dir again: load() restores want leases. */
static void assert_restart_restores(const char *dir, unsigned history_size, unsigned want) {
        Store *s;
        char *err = NULL;
        unsigned n = 0;
        assert_int_equal(store_sqlite_open(dir, STORE_SYNC_NORMAL, history_size, &s, &err), 0);
        assert_int_equal(s->ops->load(s, count_restored, &n), 0);
        assert_int_equal(n, want);
        store_free(s);
}

/* The fold point: every change up to it is in the leases table (the snapshot's). */
#define FOLDED "(SELECT CAST(value AS INTEGER) FROM snap.meta WHERE key = 'folded_seq')"
/* The same, in a file of schema 7 or before, where leases was in agend.db. */
#define FOLDED_IN_MAIN "(SELECT CAST(value AS INTEGER) FROM main.meta WHERE key = 'folded_seq')"

/* The lease log: appends only on the hot path, folded into leases once it is long, and a
 * restart sees the snapshot plus the log, before and after a fold. */
static void test_log_folds(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        Engine *e;
        Holder h = {};
        Lease *l;
        Waiter *w;
        open_with_engine(f, STORE_SYNC_NORMAL, &s, &e);
        /* Three leases that stay, then 6000 that come and go, 20 per commit. */
        for (int i = 0; i < 3; i++) {
                char name[8];
                snprintf(name, sizeof(name), "keep%d", i);
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = name, .owner = &owner, .detached = true },
                                                &h, NULL, &l, &w),
                                 0);
        }
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 0);
        for (int i = 0; i < 6000; i++) {
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "cycle", .owner = &owner }, &h, NULL,
                                                &l, &w),
                                 0);
                assert_int_equal(engine_lease_end(e, l, EVENT_RELEASED, "test"), 0);
                if (i % 20 == 19)
                        assert_int_equal(s->ops->commit(s), 1);
        }
        /* Folded: the log stays short, and of the 6003 leases only the three that stayed
         * reached the leases table. */
        assert_true(count(f->db, "SELECT count(*) FROM events WHERE change IS NOT NULL AND seq > " FOLDED) <=
                    4096 + 40);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 3);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        /* One more that stays, in the log only: a restart restores all four. */
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "late", .owner = &owner, .detached = true },
                                        &h, NULL, &l, &w),
                         0);
        assert_int_equal(s->ops->commit(s), 1);
        h = (Holder) {};
        engine_free(e);
        store_free(s);

        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        unsigned n = 0;
        assert_int_equal(s->ops->load(s, count_restored, &n), 0);
        assert_int_equal(n, 4);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 4);
        assert_non_null(engine_resource_get(e, "late"));
        engine_free(e);
        store_free(s);
}

static LeaseRecord fold_record(const char *id, usec_t ttl) {
        return (LeaseRecord) { .id = id, .secret = "s", .resource = id, .description = "", .units = 1,
                               .detached = true, .token = 1, .owner = { .uid = 1, .gid = 1, .pid = 1 },
                               .created = 1, .ttl = ttl, .deadline = USEC_INFINITY };
}

/* Writes n rows of leases that come and go (n / 2 ids), enough to make the log fold. */
static void fold_filler(Store *s, const char *prefix, int n) {
        for (int i = 0; i < n / 2; i++) {
                char id[32];
                snprintf(id, sizeof(id), "%s%d", prefix, i);
                LeaseRecord r = fold_record(id, 0);
                assert_int_equal(s->ops->lease_save(s, &r), 0);
                assert_int_equal(s->ops->lease_delete(s, id), 0);
                if (i % 50 == 49)
                        assert_int_equal(s->ops->commit(s), 1);
        }
        assert_true(s->ops->commit(s) >= 0);
}

/* A fold keeps, per id, only the last row of the log: a lease folded into the leases table
 * and deleted in a later window leaves it; one saved several times keeps its last save. */
static void test_log_fold_last_row_wins(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        LeaseRecord a = fold_record("a", 5), b = fold_record("b", 5), c = fold_record("c", 5);
        assert_int_equal(s->ops->lease_save(s, &a), 0);
        assert_int_equal(s->ops->lease_save(s, &b), 0);
        assert_int_equal(s->ops->lease_save(s, &c), 0);
        assert_int_equal(s->ops->commit(s), 1);
        fold_filler(s, "x", 4200);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 3);
        /* a: renewed twice; b: deleted; c: deleted, then saved again. */
        a.ttl = 6;
        assert_int_equal(s->ops->lease_save(s, &a), 0);
        a.ttl = 7;
        assert_int_equal(s->ops->lease_save(s, &a), 0);
        assert_int_equal(s->ops->lease_delete(s, "b"), 0);
        assert_int_equal(s->ops->lease_delete(s, "c"), 0);
        c.ttl = 9;
        assert_int_equal(s->ops->lease_save(s, &c), 0);
        assert_int_equal(s->ops->commit(s), 1);
        fold_filler(s, "y", 4200);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE lease IN ('a', 'b', 'c') AND seq > " FOLDED),
                         0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 2);
        assert_int_equal(count(f->db, "SELECT ttl FROM leases WHERE id = 'a'"), 7);
        assert_int_equal(count(f->db, "SELECT ttl FROM leases WHERE id = 'c'"), 9);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 2);
        store_free(s);
}

/* agend.db of schema 8 keeps its leases in agend-leases.db: without that file the store
 * refuses to open, says which file is missing, and makes no empty one in its place; with
 * it back, the leases are there. */
static void test_refuses_missing_snapshot(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        LeaseRecord a = fold_record("a", 5);
        a.token = 1;
        assert_int_equal(s->ops->token_save(s, 1), 0);
        assert_int_equal(s->ops->lease_save(s, &a), 0);
        assert_int_equal(s->ops->commit(s), 1);
        store_free(s);

        char moved[112];
        snprintf(moved, sizeof(moved), "%s.moved", f->snap);
        assert_int_equal(rename(f->snap, moved), 0);
        s = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), -ENOENT);
        assert_null(s);
        assert_non_null(err);
        assert_non_null(strstr(err, "agend-leases.db is missing"));
        free(err);
        assert_int_equal(access(f->snap, F_OK), -1);

        assert_int_equal(rename(moved, f->snap), 0);
        assert_restart_restores(f->dir, 100, 1);
}

/* A fold after a restart folds the changes the last run logged and did not fold (it
 * crashed): the fold works from changes noted in memory as rows are written, and open
 * notes the rows after the fold point again. A lease saved before the restart and one of the last run's
 * that is deleted after it both reach the table as they should. */
static void test_fold_after_restart(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        LeaseRecord a = fold_record("a", 5), b = fold_record("b", 5);
        a.token = 7;
        b.token = 8;
        assert_int_equal(s->ops->token_save(s, 8), 0);
        assert_int_equal(s->ops->lease_save(s, &a), 0);
        assert_int_equal(s->ops->lease_save(s, &b), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 0);
        /* A crash: a clean stop would fold both. */
        track_crash(s);

        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 0);
        assert_int_equal(s->ops->lease_delete(s, "b"), 0);
        assert_int_equal(s->ops->commit(s), 1);
        fold_filler(s, "x", 4200);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE lease IN ('a', 'b') AND seq > " FOLDED), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 1);
        assert_int_equal(count(f->db, "SELECT token FROM leases WHERE id = 'a'"), 7);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 1);
        store_free(s);
}

/* Appends n events (no lease, so one row each) of tokens from, from + 1, ..., on resources
 * "a" and "b" by turns (even tokens "a"), a commit every 500. */
static void append_events(Store *s, uint64_t from, int n) {
        for (int i = 0; i < n; i++) {
                uint64_t token = from + (uint64_t) i;
                EventRecord ev = { .type = "revoked", .time = 1, .resource = token % 2 ? "b" : "a", .token = token };
                assert_int_equal(s->ops->event_append(s, &ev), 0);
                if (i % 500 == 499)
                        assert_int_equal(s->ops->commit(s), 1);
        }
        assert_true(s->ops->commit(s) >= 0);
}

/* History straight from the store: how many, the first and last token. */
static Hist store_history(Store *s, const char *resource, unsigned limit) {
        Hist hist = {};
        assert_int_equal(s->ops->history(s, resource, 0, limit, store_hist_cb, &hist), 0);
        return hist;
}

#define RING_MIN 16384

/* events is a ring: past its size a row replaces the one that many rows older instead of
 * being appended while old ones are deleted, so the file neither grows nor keeps a free
 * list (whose trunk page and page 1 a commit would write each time it takes a page back).
 * History reads across the point where the ring wraps, oldest first. */
static void test_events_ring(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(count(f->db, "SELECT value FROM meta WHERE key = 'ring_size'"), RING_MIN);
        append_events(s, 1, RING_MIN + 10);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events"), RING_MIN);
        assert_int_equal(count(f->db, "SELECT min(seq) FROM events"), 11);
        assert_int_equal(count(f->db, "SELECT max(seq) FROM events"), RING_MIN + 10);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE slot != seq % 16384"), 0);
        /* The newest 100 straddle slot 0: 90 before it, 10 after. */
        Hist h = store_history(s, NULL, 1000);
        assert_int_equal(h.n, 100);
        assert_int_equal(h.first_token, RING_MIN + 10 - 99);
        assert_int_equal(h.last_token, RING_MIN + 10);
        h = store_history(s, NULL, 15);
        assert_int_equal(h.n, 15);
        assert_int_equal(h.first_token, RING_MIN + 10 - 14);
        h = store_history(s, "a", 30);
        assert_int_equal(h.n, 30);
        assert_int_equal(h.first_token, RING_MIN + 10 - 58);
        assert_int_equal(h.last_token, RING_MIN + 10);
        int64_t pages = count(f->db, "PRAGMA page_count");
        /* Round the ring once more: the same pages, rewritten. */
        append_events(s, RING_MIN + 11, RING_MIN);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events"), RING_MIN);
        assert_int_equal(count(f->db, "PRAGMA freelist_count"), 0);
        assert_true(count(f->db, "PRAGMA page_count") <= pages + 2);
        h = store_history(s, "b", 1000);
        assert_int_equal(h.n, 50);
        assert_int_equal(h.last_token, 2 * RING_MIN + 9);
        store_free(s);
}

/* Saves n leases keep0, keep1, ... that stay, without a commit. */
static void save_kept(Store *s, int n) {
        for (int i = 0; i < n; i++) {
                char id[16];
                snprintf(id, sizeof(id), "keep%d", i);
                LeaseRecord r = fold_record(id, 5);
                assert_int_equal(s->ops->lease_save(s, &r), 0);
        }
}

/* Appends n events without a lease (one row each), without a commit. */
static void append_bare_events(Store *s, int n) {
        for (int i = 0; i < n; i++) {
                EventRecord ev = { .type = "revoked", .time = 1, .resource = "r", .token = 1 };
                assert_int_equal(s->ops->event_append(s, &ev), 0);
        }
}

/* A batch of more rows than the ring holds goes round it onto changes not folded yet:
 * their rows are replaced, and the fold made in the same commit is what keeps them, even
 * a heavy one in a commit on the loop (which otherwise leaves it to the thread). */
static void test_batch_past_ring(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        s->ops->defer_maintenance(s, true);
        save_kept(s, 300);
        append_bare_events(s, RING_MIN + 100);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE lease LIKE 'keep%'"), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 300);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 300);
        store_free(s);
        assert_restart_restores(f->dir, 100, 300);
}

/* A new HistorySize= lays the ring out again at open: the newest rows are kept in their new
 * slots, every change is folded first (a smaller ring may not hold them), and History
 * and restore go on as before. */
static void test_ring_resized(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        LeaseRecord a = fold_record("a", 5);
        append_events(s, 1, RING_MIN + 500);
        assert_int_equal(s->ops->lease_save(s, &a), 0);  /* not folded */
        assert_int_equal(s->ops->commit(s), 1);
        int64_t last = count(f->db, "SELECT max(seq) FROM events");
        store_free(s);

        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 20000, &s, &err), 0);
        assert_int_equal(count(f->db, "SELECT value FROM meta WHERE key = 'ring_size'"), 20000);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events"), RING_MIN);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE slot != seq % 20000"), 0);
        assert_int_equal(count(f->db, "SELECT " FOLDED), last);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases WHERE id = 'a'"), 1);
        append_events(s, RING_MIN + 501, 10);
        Hist h = store_history(s, NULL, 100000);
        assert_int_equal(h.n, RING_MIN - 1 + 10);       /* a's save is not an event */
        assert_int_equal(h.last_token, RING_MIN + 510);
        store_free(s);

        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 10, &s, &err), 0);
        assert_int_equal(count(f->db, "SELECT value FROM meta WHERE key = 'ring_size'"), RING_MIN);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE slot != seq % 16384"), 0);
        h = store_history(s, NULL, 1000);
        assert_int_equal(h.n, 10);
        assert_int_equal(h.last_token, RING_MIN + 510);
        unsigned n = 0;
        assert_int_equal(s->ops->load(s, count_restored, &n), 0);
        assert_int_equal(n, 1);
        store_free(s);
}

/* What a restart must restore, kept beside the store by test_random_against_model(): per
 * id (MODEL_IDS of them) whether a lease is held, and its token and ttl. */
#define MODEL_IDS 300

typedef struct Model {
        bool held[MODEL_IDS];
        uint64_t token[MODEL_IDS];
        usec_t ttl[MODEL_IDS];
        unsigned n_seen;
        bool mismatch;
} Model;

static int model_check_cb(const LeaseRecord *r, void *u) {
        Model *m = u;
        unsigned i;
        if (sscanf(r->id, "m%u", &i) != 1 || i >= MODEL_IDS || !m->held[i] || m->token[i] != r->token ||
            m->ttl[i] != r->ttl) {
                fprintf(stderr, "restored %s (token %" PRIu64 ", ttl %" PRIu64 ") is not in the model\n", r->id,
                        r->token, (uint64_t) r->ttl);
                m->mismatch = true;
        }
        m->n_seen++;
        return 0;
}

/* load() restores exactly the model's leases. */
static void model_check(Store *s, Model *m) {
        unsigned held = 0;
        for (unsigned i = 0; i < MODEL_IDS; i++)
                held += m->held[i];
        m->n_seen = 0;
        m->mismatch = false;
        assert_int_equal(s->ops->load(s, model_check_cb, m), 0);
        assert_false(m->mismatch);
        assert_int_equal(m->n_seen, held);
}

/* xorshift64: the same sequence on every run. */
static uint64_t next_random(uint64_t *x) {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        return *x;
}

/* Random saves, renewals, deletes and bare events, in commits of random size, on the loop
 * (deferred) or not, with restarts, clean or as after a crash (what the fold thread was
 * handed and had not written is lost), that sometimes change HistorySize= (so the ring is
 * laid out again): after a commit now and then and after every restart, what a restart
 * restores is exactly what the model holds, and History's newest bare event is the newest
 * one appended. Enough rows to fold many times and to go round the ring twice. */
static void test_random_against_model(void **state) {
        Fixture *f = *state;
        static const unsigned history_sizes[] = { 100, 20000 };
        Store *s;
        char *err = NULL;
        Model m = {};
        uint64_t x = 0x9e3779b97f4a7c15ULL, token = 0, last_event = 0;
        unsigned history = history_sizes[0];
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, history, &s, &err), 0);
        for (int op = 0; op < 50000; op++) {
                uint64_t r = next_random(&x);
                /* Nine in ten changes go to 30 hot ids; the other ids stay unchanged across
                 * many folds and restarts, so what a fold wrote (or failed to write) for
                 * them is what a restart finds. */
                unsigned i = (unsigned) (r >> 8) % ((r >> 20) % 10 ? 30 : MODEL_IDS), what = (unsigned) r % 100;
                char id[16];
                snprintf(id, sizeof(id), "m%u", i);
                if (what < 35) {                /* grant, or renew with another ttl */
                        LeaseRecord l = fold_record(id, (usec_t) (r >> 32) % 1000 + 1);
                        l.token = m.held[i] ? m.token[i] : ++token;
                        assert_int_equal(s->ops->token_save(s, token), 0);
                        assert_int_equal(s->ops->lease_save(s, &l), 0);
                        m.held[i] = true;
                        m.token[i] = l.token;
                        m.ttl[i] = l.ttl;
                } else if (what < 65) {
                        if (m.held[i])
                                assert_int_equal(s->ops->lease_delete(s, id), 0);
                        m.held[i] = false;
                } else if (what < 97) {
                        EventRecord ev = { .type = "revoked", .time = 1, .resource = "r", .token = ++last_event };
                        assert_int_equal(s->ops->event_append(s, &ev), 0);
                } else if (what < 99 || (r >> 44) % 64 != 0) {
                        assert_true(s->ops->commit(s) >= 0);
                        s->ops->defer_maintenance(s, (r >> 40) & 1);
                        /* Not after every commit: load() reads the view, a scan of the ring. */
                        if ((r >> 48) % 16 != 0)
                                continue;
                        model_check(s, &m);
                        if (last_event > 0) {
                                Hist h = store_history(s, NULL, 10);
                                assert_int_equal(h.last_token, last_event);
                        }
                } else {
                        assert_true(s->ops->commit(s) >= 0);
                        /* A clean stop folds everything; a crash leaves the changes after
                         * the snapshot's folded_seq to be read back from the ring. */
                        if ((r >> 42) & 1)
                                track_crash(s);
                        else
                                store_free(s);
                        history = history_sizes[(r >> 40) % 2];
                        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, history, &s, &err), 0);
                        model_check(s, &m);
                }
        }
        assert_true(s->ops->commit(s) >= 0);
        model_check(s, &m);
        assert_true(count(f->db, "SELECT max(seq) FROM events") > 2 * RING_MIN);
        store_free(s);
}

/* A row's NULLs are NULL whatever the row before it held: the row statement keeps its
 * bindings from row to row and binds NULL only where the last row had a value. */
static void test_row_nulls_not_carried(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 0, &s, &err), 0);
        LeaseRecord a = fold_record("a", 5), b = fold_record("b", 5), c = fold_record("c", 5);
        a.deadline = 5 * USEC_PER_SEC;
        a.owner.comm = "comm";
        a.owner.unit = "a.service";
        assert_int_equal(s->ops->lease_save(s, &a), 0);
        assert_int_equal(s->ops->lease_save(s, &b), 0);
        assert_int_equal(s->ops->commit(s), 1);
        c.deadline = 6 * USEC_PER_SEC;
        c.owner.unit = "c.service";
        assert_int_equal(s->ops->lease_save(s, &c), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(s->ops->lease_save(s, &b), 0);      /* again, in its own transaction */
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE lease = 'b' AND deadline IS NULL"
                                      " AND comm IS NULL AND unit IS NULL"),
                         2);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE lease = 'a' AND deadline = 5000000"
                                      " AND comm = 'comm' AND unit = 'a.service'"),
                         1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE lease = 'c' AND deadline = 6000000"
                                      " AND comm IS NULL AND unit = 'c.service'"),
                         1);
        store_free(s);
}

/* Copies tests/data/NAME to the fixture's agend.db (skipped without AGEND_TEST_DATA). */
static void use_fixture(Fixture *f, const char *name) {
        const char *data = getenv("AGEND_TEST_DATA");
        if (!data) {
                n_skipped++;
                skip();
        }
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "cp %s/%s %s/agend.db", data, name, f->dir);
        assert_int_equal(system(cmd), 0);
}

/* A database file written by the agend of schema 3 (tests/data/agend-v3.db: two detached
 * leases, one bound lease, events), opened by this one. */
static void test_migration_from_v3_file(void **state) {
        Fixture *f = *state;
        use_fixture(f, "agend-v3.db");
        assert_int_equal(count(f->db, "PRAGMA user_version"), 3);
        int64_t token = count(f->db, "SELECT max(token) FROM leases");
        int64_t n_events = count(f->db, "SELECT count(*) FROM events");
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(count(f->db, "PRAGMA user_version"), 8);
        /* 3 → 4 → 5: the waiters table, then the lease log. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        Engine *e;
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        /* Another boot than the one that wrote it: every lease is voided and recorded. */
        assert_int_equal(engine_restore(e, "another-boot", 0), 3);
        assert_true(engine_last_token(e) >= (uint64_t) token);
        assert_int_equal(engine_n_leases(e), 0);
        assert_int_equal(s->ops->commit(s), 1);
        Hist hist = {};
        assert_int_equal(engine_history(e, NULL, 0, 1000, hist_cb, &hist), 0);
        assert_int_equal(hist.n, n_events + 3);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 0);
        engine_free(e);
        store_free(s);
}

/* A database file written by the agend of schema 4 (tests/data/agend-v4.db, killed -9
 * with a detached lease on "db-migrate", a bound lease on "gpu" and two waiters queued
 * behind it), opened by this one on the boot that wrote it: the leases come back, the
 * waiters come back in their order with their tickets, and the lease log works. */
static void test_migration_from_v4_file(void **state) {
        Fixture *f = *state;
        use_fixture(f, "agend-v4.db");
        assert_int_equal(count(f->db, "PRAGMA user_version"), 4);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 2);
        int64_t token = count(f->db, "SELECT max(token) FROM leases");
        char *boot = text(f->db, "SELECT value FROM meta WHERE key = 'boot_id'");
        char *tickets[2] = {
                text(f->db, "SELECT ticket FROM waiters ORDER BY seq LIMIT 1"),
                text(f->db, "SELECT ticket FROM waiters ORDER BY seq LIMIT 1 OFFSET 1"),
        };
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_int_equal(count(f->db, "PRAGMA user_version"), 8);
        assert_int_equal(count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'events_resource'"), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 2);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 2);
        Engine *e;
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, boot, 10 * USEC_PER_SEC), 2);
        assert_true(engine_last_token(e) >= (uint64_t) token);
        assert_int_equal(engine_n_leases(e), 2);
        assert_int_equal(engine_n_waiters(e), 2);
        assert_int_equal(engine_n_unclaimed(e), 2);
        Resource *r = engine_resource_get(e, "gpu");
        assert_non_null(r);
        assert_int_equal(r->n_leases, 1);
        assert_string_equal(r->leases->description, "holder");
        assert_string_equal(r->wait_head->ticket, tickets[0]);
        assert_string_equal(r->wait_head->description, "first waiter");
        assert_string_equal(r->wait_tail->ticket, tickets[1]);
        assert_int_equal(r->wait_tail->position, 2);
        /* The second waiter claims its place: still second. */
        Holder h = {};
        Lease *l = NULL;
        Waiter *w;
        AcquireParams p = { .resource = "gpu", .owner = &owner, .timeout = USEC_INFINITY, .ticket = tickets[1] };
        assert_int_equal(engine_acquire(e, &p, &h, NULL, &l, &w), 1);
        assert_int_equal(w->position, 2);
        assert_false(w->unclaimed);
        /* A new lease goes through the log. */
        Holder h2 = {};
        AcquireParams pn = { .resource = "new", .owner = &owner };
        assert_int_equal(engine_acquire(e, &pn, &h2, NULL, &l, &w), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE resource = 'new' AND change = 'save'"), 1);
        engine_free(e);
        store_free(s);
        free(boot);
        free(tickets[0]);
        free(tickets[1]);
}

/* One row per change: a grant and its event are one row of events, so are an end and its
 * delete; with HistorySize=0 the changes alone. Restore reads them, History sees only
 * the events. */
static void one_row_per_change(const char *dir, const char *db, unsigned history_size) {
        Store *s;
        char *err = NULL;
        Engine *e;
        Holder h = {}, hk = {};
        Lease *l, *kept;
        Waiter *w;
        assert_int_equal(store_sqlite_open(dir, STORE_SYNC_NORMAL, history_size, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 0);
        int64_t rows = count(db, "SELECT count(*) FROM events");
        for (int i = 0; i < 10; i++) {
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "c", .owner = &owner }, &h, NULL, &l, &w),
                                 0);
                assert_int_equal(engine_lease_end(e, l, EVENT_RELEASED, "test"), 0);
        }
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(db, "SELECT count(*) FROM events") - rows, 20);
        assert_int_equal(count(db, "SELECT count(*) FROM events WHERE change = 'save'"), 10);
        assert_int_equal(count(db, "SELECT count(*) FROM events WHERE change = 'delete'"), 10);
        if (history_size > 0) {
                assert_int_equal(count(db, "SELECT count(*) FROM events WHERE change = 'save' AND type = 'granted'"
                                           " AND secret IS NOT NULL AND token IS NOT NULL AND uid = 1"),
                                 10);
                assert_int_equal(count(db, "SELECT count(*) FROM events WHERE change = 'delete' AND type = 'released'"
                                           " AND reason = 'test'"),
                                 10);
        } else
                assert_int_equal(count(db, "SELECT count(*) FROM events WHERE type IS NOT NULL"), 0);
        /* A renewed TTL lease and a queue: the waiter rows between the change rows. */
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "k", .owner = &owner, .ttl = USEC_PER_SEC,
                                                              .detached = true },
                                        &hk, NULL, &kept, &w),
                         0);
        Holder hw = {};
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "k", .owner = &owner,
                                                              .timeout = USEC_INFINITY },
                                        &hw, NULL, &l, &w),
                         1);
        assert_int_equal(engine_lease_renew(e, kept, 7 * USEC_PER_SEC), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(db, "SELECT count(*) FROM current_leases"), 1);
        assert_int_equal(count(db, "SELECT ttl FROM current_leases"), 7 * USEC_PER_SEC);
        Hist hist = {};
        assert_int_equal(engine_history(e, "c", 0, 100, hist_cb, &hist), 0);
        assert_int_equal(hist.n, history_size > 0 ? 20 : 0);
        char id[64];
        snprintf(id, sizeof(id), "%s", LEASE_ID_STR(kept));
        engine_free(e);
        store_free(s);
        assert_int_equal(store_sqlite_open(dir, STORE_SYNC_NORMAL, history_size, &s, &err), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 10 * USEC_PER_SEC), 1);
        assert_int_equal(engine_n_waiters(e), 1);
        assert_non_null(engine_lease_get(e, id));
        assert_int_equal(engine_lease_get(e, id)->ttl, 7 * USEC_PER_SEC);
        engine_free(e);
        store_free(s);
}

static void test_one_row_per_change(void **state) {
        Fixture *f = *state;
        one_row_per_change(f->dir, f->db, 100);
}

static void test_one_row_per_change_no_history(void **state) {
        Fixture *f = *state;
        one_row_per_change(f->dir, f->db, 0);
}

/* A database file written by the agend of schema 5 (tests/data/agend-v5.db; HistorySize=40;
 * killed -9 holding a detached lease on "db-migrate" and a renewed TTL lease on "ttl-res",
 * both already folded into leases, a bound lease on "gpu" still in lease_log behind a few
 * thousand cycles, and two waiters queued behind it), opened by this one: the leases, the
 * waiters and the history come back, lease_log is folded away, and a new lease is one row. */
static void test_migration_from_v5_file(void **state) {
        Fixture *f = *state;
        use_fixture(f, "agend-v5.db");
        assert_int_equal(count(f->db, "PRAGMA user_version"), 5);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        /* Some of each: leases folded, leases only in the log, and stale snapshot rows. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases WHERE id IN (SELECT id FROM current_leases)"), 2);
        assert_true(count(f->db, "SELECT count(*) FROM leases") > 2);
        assert_int_equal(count(f->db, "SELECT count(*) FROM lease_log WHERE resource = 'gpu' AND op = 'save'"), 1);
        int64_t token = count(f->db, "SELECT max(token) FROM current_leases");
        int64_t events = count(f->db, "SELECT count(*) FROM events");
        int64_t last_seq = count(f->db, "SELECT max(seq) FROM events");
        int64_t released = count(f->db, "SELECT count(*) FROM events WHERE type = 'released'");
        int64_t oldest_token = count(f->db, "SELECT token FROM events ORDER BY seq DESC LIMIT 1 OFFSET 39");
        char *boot = text(f->db, "SELECT value FROM meta WHERE key = 'boot_id'");
        char *gpu = text(f->db, "SELECT id FROM current_leases WHERE resource = 'gpu'");
        char *tickets[2] = {
                text(f->db, "SELECT ticket FROM waiters ORDER BY seq LIMIT 1"),
                text(f->db, "SELECT ticket FROM waiters ORDER BY seq LIMIT 1 OFFSET 1"),
        };
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 40, &s, &err), 0);
        assert_int_equal(count(f->db, "PRAGMA user_version"), 8);
        assert_int_equal(count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'lease_log'"), 0);
        /* The log folded into the snapshot: leases is exactly what a restart restores. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 3);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        assert_int_equal(count(f->db, "SELECT ttl FROM current_leases WHERE resource = 'ttl-res'"),
                         7200 * USEC_PER_SEC);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events"), events);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE type = 'released'"), released);
        assert_int_equal(count(f->db, "SELECT " FOLDED), last_seq);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 2);
        Engine *e;
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, boot, 10 * USEC_PER_SEC), 3);
        assert_true(engine_last_token(e) >= (uint64_t) token);
        assert_int_equal(engine_n_leases(e), 3);
        assert_int_equal(engine_n_waiters(e), 2);
        Lease *l = engine_lease_get(e, gpu);
        assert_non_null(l);
        assert_string_equal(l->description, "holder");
        Resource *r = engine_resource_get(e, "gpu");
        assert_non_null(r);
        assert_string_equal(r->wait_head->ticket, tickets[0]);
        assert_string_equal(r->wait_head->description, "first waiter");
        assert_string_equal(r->wait_tail->ticket, tickets[1]);
        assert_int_equal(r->wait_tail->position, 2);
        assert_non_null(engine_resource_get(e, "db-migrate"));
        /* The places' grace starts at this, their first restore, and is stored. */
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters WHERE unclaimed_since > 0"), 2);
        /* History as the old agend wrote it: the newest 40 events, with their tokens. */
        Hist hist = {};
        assert_int_equal(engine_history(e, NULL, 0, 1000, hist_cb, &hist), 0);
        assert_int_equal(hist.n, 40);
        assert_true(oldest_token > 0);
        assert_int_equal(hist.first_token, oldest_token);
        /* A new lease: one row, both the grant event and the change. */
        Holder h = {};
        Waiter *w;
        AcquireParams pn = { .resource = "new", .owner = &owner };
        assert_int_equal(engine_acquire(e, &pn, &h, NULL, &l, &w), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE resource = 'new'"), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE resource = 'new' AND change = 'save'"
                                      " AND type = 'granted' AND seq > " FOLDED),
                         1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 4);
        engine_free(e);
        store_free(s);

        /* And after a restart, from the new rows. */
        assert_restart_restores(f->dir, 40, 4);
        free(boot);
        free(gpu);
        free(tickets[0]);
        free(tickets[1]);
}

/* What the fixtures written by the agend of schemas 6 and 7 (the same scenario) hold, read
 * before they are opened: the newest seq, the token of the oldest of the newest 40
 * events, the boot id, gpu's lease id and its first waiter's ticket. */
typedef struct FixtureFacts {
        int64_t last_seq, oldest_token;
        char *boot, *gpu, *first;
} FixtureFacts;

static FixtureFacts fixture_facts(Fixture *f) {
        return (FixtureFacts) {
                .last_seq = count(f->db, "SELECT max(seq) FROM events"),
                .oldest_token = count(
                        f->db, "SELECT token FROM events WHERE type IS NOT NULL ORDER BY seq DESC LIMIT 1 OFFSET 39"),
                .boot = text(f->db, "SELECT value FROM meta WHERE key = 'boot_id'"),
                .gpu = text(f->db, "SELECT id FROM main.current_leases WHERE resource = 'gpu'"),
                .first = text(f->db, "SELECT ticket FROM waiters ORDER BY seq LIMIT 1"),
        };
}

static void fixture_facts_free(FixtureFacts *x) {
        free(x->boot);
        free(x->gpu);
        free(x->first);
}

/* What an engine restores from those fixtures: three leases, gpu's "holder" with its two
 * waiters in their order, and History as the old agend wrote it, the newest 40 events
 * with their tokens; then a new lease on "new", committed. */
static void assert_fixture_restored(Store *s, const FixtureFacts *x) {
        const char *gpu = x->gpu, *first = x->first;
        int64_t oldest_token = x->oldest_token;
        Engine *e;
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, x->boot, 10 * USEC_PER_SEC), 3);
        assert_int_equal(engine_n_leases(e), 3);
        assert_int_equal(engine_n_waiters(e), 2);
        Lease *l = engine_lease_get(e, gpu);
        assert_non_null(l);
        assert_string_equal(l->description, "holder");
        Resource *r = engine_resource_get(e, "gpu");
        assert_non_null(r);
        assert_string_equal(r->wait_head->ticket, first);
        assert_string_equal(r->wait_head->description, "first waiter");
        assert_non_null(engine_resource_get(e, "db-migrate"));
        Hist hist = {};
        assert_int_equal(engine_history(e, NULL, 0, 1000, hist_cb, &hist), 0);
        assert_int_equal(hist.n, 40);
        assert_true(oldest_token > 0);
        assert_int_equal(hist.first_token, oldest_token);
        Holder h = {};
        Waiter *w;
        AcquireParams pn = { .resource = "new", .owner = &owner };
        assert_int_equal(engine_acquire(e, &pn, &h, NULL, &l, &w), 0);
        assert_int_equal(s->ops->commit(s), 1);
        engine_free(e);
}

/* A database file written by the agend of schema 6 (tests/data/agend-v6.db: HistorySize=40;
 * gpu and ttl-res folded into leases, db-migrate only in events after folded_seq, two
 * waiters on gpu, 2 060 cycles on churn), opened by this one: events becomes a ring, every
 * change is folded on the way, and leases, waiters and History are as the old agend left
 * them. */
static void test_migration_from_v6_file(void **state) {
        Fixture *f = *state;
        use_fixture(f, "agend-v6.db");
        assert_int_equal(count(f->db, "PRAGMA user_version"), 6);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 2);
        assert_int_equal(
                count(f->db, "SELECT count(*) FROM events WHERE resource = 'db-migrate' AND seq > " FOLDED_IN_MAIN), 1);
        int64_t events = count(f->db, "SELECT count(*) FROM events");
        int64_t released = count(f->db, "SELECT count(*) FROM events WHERE type = 'released'");
        FixtureFacts x = fixture_facts(f);
        int64_t last_seq = x.last_seq;

        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 40, &s, &err), 0);
        assert_int_equal(count(f->db, "PRAGMA user_version"), 8);
        assert_int_equal(count(f->db, "SELECT count(*) FROM sqlite_master WHERE name = 'events_v6'"), 0);
        assert_int_equal(count(f->db, "SELECT value FROM meta WHERE key = 'ring_size'"), RING_MIN);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events"), events);
        assert_int_equal(count(f->db, "SELECT max(seq) FROM events"), last_seq);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE slot != seq % 16384"), 0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE type = 'released'"), released);
        /* Folded on the way: leases is exactly what a restart restores. */
        assert_int_equal(count(f->db, "SELECT " FOLDED), last_seq);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 3);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        assert_int_equal(count(f->db, "SELECT ttl FROM leases WHERE resource = 'ttl-res'"), 7200 * USEC_PER_SEC);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 2);

        assert_fixture_restored(s, &x);
        /* The new lease: one row, in its slot. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM events WHERE resource = 'new' AND change = 'save'"
                                      " AND type = 'granted' AND slot = seq % 16384 AND seq > " FOLDED),
                         1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 4);
        store_free(s);

        /* And after a restart. */
        assert_restart_restores(f->dir, 40, 4);
        fixture_facts_free(&x);
}

/* A database file written by the agend of schema 7 (tests/data/agend-v7.db: HistorySize=40,
 * stopped cleanly; gpu and ttl-res folded into leases, db-migrate only in events after
 * folded_seq, two waiters on gpu, 2 060 cycles on churn), opened by this one: leases and
 * folded_seq move to agend-leases.db, and leases, waiters and History are as the old
 * agend left them; a clean stop then leaves every change in the snapshot. */
static void test_migration_from_v7_file(void **state) {
        Fixture *f = *state;
        use_fixture(f, "agend-v7.db");
        assert_int_equal(count(f->db, "PRAGMA user_version"), 7);
        assert_int_equal(count(f->db, "SELECT count(*) FROM main.current_leases"), 3);
        assert_int_equal(count(f->db, "SELECT count(*) FROM main.leases"), 2);
        assert_int_equal(
                count(f->db, "SELECT count(*) FROM events WHERE resource = 'db-migrate' AND seq > " FOLDED_IN_MAIN), 1);
        int64_t folded = count(f->db, "SELECT " FOLDED_IN_MAIN);
        FixtureFacts x = fixture_facts(f);
        int64_t last_seq = x.last_seq;

        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 40, &s, &err), 0);
        assert_int_equal(count(f->db, "PRAGMA user_version"), 8);
        assert_int_equal(count(f->db, "SELECT count(*) FROM main.sqlite_master WHERE name IN ('leases', 'current_leases')"),
                         0);
        assert_int_equal(count(f->db, "SELECT count(*) FROM main.meta WHERE key = 'folded_seq'"), 0);
        assert_int_equal(count(f->db, "SELECT " FOLDED), folded);
        assert_int_equal(count(f->db, "SELECT count(*) FROM snap.leases"), 2);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 3);
        assert_int_equal(count(f->db, "SELECT ttl FROM snap.leases WHERE resource = 'ttl-res'"), 7200 * USEC_PER_SEC);
        assert_int_equal(count(f->db, "SELECT max(seq) FROM events"), last_seq);
        assert_int_equal(count(f->db, "SELECT count(*) FROM waiters"), 2);

        assert_fixture_restored(s, &x);
        assert_int_equal(count(f->db, "SELECT count(*) FROM current_leases"), 4);
        store_free(s);

        /* Stopped cleanly: all in the snapshot, nothing to read back from events. */
        assert_int_equal(count(f->db, "SELECT count(*) FROM snap.leases"), 4);
        assert_int_equal(count(f->db, "SELECT " FOLDED), count(f->db, "SELECT max(seq) FROM events"));
        assert_restart_restores(f->dir, 40, 4);
        fixture_facts_free(&x);
}

/* The in-memory store keeps waiters as sqlite does, for the life of the Store object: an
 * engine restored from it finds them in their order, as unclaimed places. */
static void test_memory_store_waiters(void **state) {
        Store *s;
        Engine *e;
        Holder h = {}, hw[2] = {};
        Lease *l;
        Waiter *w[2];
        char tickets[2][WAITER_TICKET_LEN + 1];
        StoreMemoryOptions o = { .history_size = 10 };
        assert_int_equal(store_memory_new(&o, &s), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 0);
        AcquireParams p = { .resource = "m", .owner = &owner, .timeout = USEC_INFINITY };
        assert_int_equal(engine_acquire(e, &p, &h, NULL, &l, &w[0]), 0);
        for (int i = 0; i < 2; i++) {
                assert_int_equal(engine_acquire(e, &p, &hw[i], NULL, &l, &w[i]), 1);
                snprintf(tickets[i], sizeof(tickets[i]), "%s", w[i]->ticket);
        }
        /* The first waiter gives up: its row goes in the same batch. */
        engine_waiter_cancel(e, w[0]);
        assert_int_equal(s->ops->commit(s), 1);
        engine_free(e);

        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 10 * USEC_PER_SEC), 1);
        assert_int_equal(engine_n_waiters(e), 1);
        assert_int_equal(engine_n_unclaimed(e), 1);
        Resource *r = engine_resource_get(e, "m");
        assert_string_equal(r->wait_head->ticket, tickets[1]);
        assert_true(r->wait_head->unclaimed);
        engine_free(e);
        store_free(s);
}

/* The in-memory store's faults: the Nth commit fails and leaves nothing of its batch. */
static unsigned memory_commits;
static void on_memory_commit(unsigned n, void *u) {
        memory_commits = n;
}

static void test_memory_store_faults(void **state) {
        Store *s;
        Engine *e;
        Holder h = {};
        Lease *l;
        Waiter *w;
        StoreMemoryOptions o = { .history_size = 10, .fail_commit = 2, .on_commit = on_memory_commit };
        assert_int_equal(store_memory_new(&o, &s), 0);
        assert_int_equal(engine_new(NULL, s, &callbacks, NULL, &e), 0);
        assert_int_equal(engine_restore(e, "b", 0), 0);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "a", .owner = &owner }, &h, NULL, &l, &w), 0);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(memory_commits, 1);
        assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "b", .owner = &owner }, &h, NULL, &l, &w), 0);
        assert_int_equal(s->ops->commit(s), -EIO);
        assert_int_equal(memory_commits, 1);
        assert_int_equal(s->ops->commit(s), 0);
        unsigned n = 0;
        assert_int_equal(s->ops->load(s, count_restored, &n), 0);
        assert_int_equal(n, 1);
        Hist hist = {};
        assert_int_equal(engine_history(e, NULL, 0, 100, hist_cb, &hist), 0);
        assert_int_equal(hist.n, 1);
        h = (Holder) {};
        engine_free(e);
        store_free(s);
        /* The spec the daemon reads from AGEND_TEST_STORE. */
        assert_int_equal(store_memory_from_spec("memory,fail-commit=3,delay-commit=10", &s), 0);
        store_free(s);
        assert_int_equal(store_memory_from_spec("memory,bogus", &s), -EINVAL);
        assert_int_equal(store_memory_from_spec("sqlite", &s), -EINVAL);
}

/* Commits 2 KiB meta values, one per commit, until the store says maintenance is due
 * (with the checkpoint deferred: the WAL grows past its threshold). */
static void fill_until_maintenance_due(Store *s) {
        char value[2048];
        for (int i = 0; i < 20000 && !s->ops->maintenance_due(s); i++) {
                memset(value, 'a' + i % 26, sizeof(value) - 1);
                value[sizeof(value) - 1] = 0;
                assert_int_equal(s->ops->meta_set(s, "filler", value), 0);
                assert_int_equal(s->ops->commit(s), 1);
        }
        assert_true(s->ops->maintenance_due(s));
}

/* The pipelined commit commits on agend's loop thread when that is idle, and a WAL
 * checkpoint must not run there (tens of milliseconds): with defer_maintenance(true) the
 * store lets the WAL grow past its checkpoint threshold and says so (maintenance_due()),
 * and the first commit without it checkpoints, after which the WAL starts over. */
static void test_checkpoint_deferred(void **state) {
        Fixture *f = *state;
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(f->dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        assert_non_null(s->ops->maintenance_due);
        assert_non_null(s->ops->defer_maintenance);
        assert_false(s->ops->maintenance_due(s));
        s->ops->defer_maintenance(s, true);
        fill_until_maintenance_due(s);
        /* Still deferred: more commits leave it due (a checkpoint would let the WAL start
         * over at the next commit). */
        for (int j = 0; j < 3; j++) {
                assert_int_equal(s->ops->meta_set(s, "filler", j % 2 ? "x" : "y"), 0);
                assert_int_equal(s->ops->commit(s), 1);
                assert_true(s->ops->maintenance_due(s));
        }
        s->ops->defer_maintenance(s, false);
        assert_int_equal(s->ops->meta_set(s, "filler", "z"), 0);
        assert_int_equal(s->ops->commit(s), 1);        /* checkpoints */
        assert_int_equal(s->ops->meta_set(s, "filler", "w"), 0);
        assert_int_equal(s->ops->commit(s), 1);        /* the WAL starts over */
        assert_false(s->ops->maintenance_due(s));
        store_free(s);
}

/* Acquires n detached leases that stay, on resources prefix0, prefix1, ... */
static void acquire_detached(Engine *e, Holder *h, const char *prefix, int n) {
        for (int i = 0; i < n; i++) {
                char name[32];
                Lease *l;
                Waiter *w;
                snprintf(name, sizeof(name), "%s%d", prefix, i);
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = name, .owner = &owner, .detached = true },
                                                h, NULL, &l, &w),
                                 0);
        }
}

/* n acquire-release cycles on one resource, a commit every 20 (returned: whether
 * maintenance_due() said yes after any of them). */
static bool cycles(Engine *e, Store *s, Holder *h, int n) {
        bool due = false;
        for (int i = 0; i < n; i++) {
                Lease *l;
                Waiter *w;
                assert_int_equal(engine_acquire(e, &(AcquireParams) { .resource = "cycle", .owner = &owner }, h, NULL,
                                                &l, &w),
                                 0);
                assert_int_equal(engine_lease_end(e, l, EVENT_RELEASED, "test"), 0);
                if (i % 20 == 19) {
                        assert_int_equal(s->ops->commit(s), 1);
                        due = due || s->ops->maintenance_due(s);
                }
        }
        return due;
}

/* The fold runs on a thread of its own, into a file of its own: a commit does not wait
 * for it, only for a change about to leave the ring unfolded. With the snapshot locked by
 * another connection (the fold thread's writes fail and are tried again): 2 000 leases
 * that stay, then cycles far past the fold mark, every commit made; the fold falling
 * behind half the ring keeps commits off the loop (maintenance_due()); a batch that would
 * overwrite a change not folded fails (nothing of it committed) instead of losing it;
 * unlocked, the same batch commits, the snapshot catches up, and a restart restores all. */
static void test_commit_does_not_wait_for_fold(void **state) {
        Fixture *f = *state;
        Store *s;
        Engine *e;
        Holder h = {};
        open_with_engine(f, STORE_SYNC_NORMAL, &s, &e);
        sqlite3 *lock;
        assert_int_equal(sqlite3_open_v2(f->snap, &lock, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_exec(lock, "BEGIN EXCLUSIVE", NULL, NULL, NULL), SQLITE_OK);

        acquire_detached(e, &h, "stay", 2000);
        assert_int_equal(s->ops->commit(s), 1);
        /* 3 000 cycles, 6 000 rows: the changes of the 2 000 are handed over, and cannot be
         * written; 8 000 rows behind the snapshot. */
        assert_false(cycles(e, s, &h, 3000));
        assert_false(s->ops->maintenance_due(s));
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 0);
        /* Half the ring (8 192 rows) behind the snapshot: commits go to the thread. */
        assert_true(cycles(e, s, &h, 200));
        assert_true(s->ops->maintenance_due(s));
        /* Round the ring onto the 2 000 not folded: the commit fails rather than lose them. */
        append_bare_events(s, 16384);
        assert_int_equal(s->ops->commit(s), -EBUSY);

        assert_int_equal(sqlite3_exec(lock, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(lock);
        assert_int_equal(s->ops->commit(s), 1);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 2000);
        assert_false(s->ops->maintenance_due(s));
        h = (Holder) {};
        engine_free(e);
        store_free(s);
        assert_restart_restores(f->dir, 100, 2000);
}

/* The fold is handed over by commits on the loop too (deferring maintenance): it is the
 * fold thread's work, not the commit's. Leases that came and went since the fold point
 * never reach the snapshot (the fold works from memory). */
static void test_light_fold_inline(void **state) {
        Fixture *f = *state;
        Store *s;
        Engine *e;
        Holder h = {};
        open_with_engine(f, STORE_SYNC_NORMAL, &s, &e);
        s->ops->defer_maintenance(s, true);
        acquire_detached(e, &h, "stay", 10);
        assert_int_equal(s->ops->commit(s), 1);
        assert_false(cycles(e, s, &h, 3000));
        /* Folded under the deferral, and only the ten that stayed reached the table. */
        assert_true(count(f->db, "SELECT count(*) FROM events WHERE change IS NOT NULL AND seq > " FOLDED) <= 4096);
        assert_int_equal(count(f->db, "SELECT count(*) FROM leases"), 10);
        h = (Holder) {};
        engine_free(e);
        store_free(s);
}

/* Commits 2 KiB rows with the checkpoint deferred until maintenance_due(): the WAL frames
 * it had grown to by then (log_bytes() counts each frame with its header). */
static int64_t frames_until_checkpoint_due(const char *dir) {
        Store *s;
        char *err = NULL;
        assert_int_equal(store_sqlite_open(dir, STORE_SYNC_NORMAL, 100, &s, &err), 0);
        s->ops->defer_maintenance(s, true);
        fill_until_maintenance_due(s);
        int64_t frames = s->ops->log_bytes(s) / (4096 + 24);
        store_free(s);
        return frames;
}

/* The WAL is checkpointed at 4000 frames where its file system has room for that many
 * times over, and at sqlite's 1000 where it has not: on a nearly full disk a WAL growing
 * to 16 MB would eat the reserve the disk-full guard frees (store-guard.h). */
static void test_checkpoint_threshold_needs_room(void **state) {
        Fixture *f = *state;
        int r = helper_private_mounts();
        if (r < 0) {
                n_skipped++;
                fprintf(stderr, "cannot make a private mount namespace (%s): skipped\n", strerror(-r));
                skip();
        }
        char roomy[128], small[128];
        snprintf(roomy, sizeof(roomy), "%s/roomy", f->dir);
        snprintf(small, sizeof(small), "%s/small", f->dir);
        assert_int_equal(mkdir(roomy, 0700), 0);
        assert_int_equal(mkdir(small, 0700), 0);
        assert_int_equal(helper_mount_tmpfs(roomy, 256UL << 20, false), 0);
        assert_int_equal(helper_mount_tmpfs(small, 48UL << 20, false), 0);

        int64_t n = frames_until_checkpoint_due(roomy);
        assert_in_range(n, 4000, 4100);
        n = frames_until_checkpoint_due(small);
        assert_in_range(n, 1000, 1100);
        (void) umount2(roomy, MNT_DETACH);
        (void) umount2(small, MNT_DETACH);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_waiters_across_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_from_v1, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refuses_corrupt, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refuses_newer_schema, setup, teardown),
                cmocka_unit_test_setup_teardown(test_refuses_missing_snapshot, setup, teardown),
                cmocka_unit_test_setup_teardown(test_history_capped, setup, teardown),
                cmocka_unit_test_setup_teardown(test_file_modes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_full_disk_batch_replayed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_read_only, setup, teardown),
                cmocka_unit_test_setup_teardown(test_log_folds, setup, teardown),
                cmocka_unit_test_setup_teardown(test_log_fold_last_row_wins, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fold_after_restart, setup, teardown),
                cmocka_unit_test_setup_teardown(test_events_ring, setup, teardown),
                cmocka_unit_test_setup_teardown(test_batch_past_ring, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ring_resized, setup, teardown),
                cmocka_unit_test_setup_teardown(test_random_against_model, setup, teardown),
                cmocka_unit_test_setup_teardown(test_row_nulls_not_carried, setup, teardown),
                cmocka_unit_test_setup_teardown(test_exclusive_while_open, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_from_v3_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_from_v4_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_from_v5_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_from_v6_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_one_row_per_change, setup, teardown),
                cmocka_unit_test_setup_teardown(test_one_row_per_change_no_history, setup, teardown),
                cmocka_unit_test(test_memory_store_waiters),
                cmocka_unit_test(test_memory_store_faults),
                cmocka_unit_test_setup_teardown(test_checkpoint_deferred, setup, teardown),
                cmocka_unit_test_setup_teardown(test_commit_does_not_wait_for_fold, setup, teardown),
                cmocka_unit_test_setup_teardown(test_migration_from_v7_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_light_fold_inline, setup, teardown),
                cmocka_unit_test_setup_teardown(test_checkpoint_threshold_needs_room, setup, teardown),
        };
        int failed = cmocka_run_group_tests(tests, NULL, NULL);
        return failed ? failed : n_skipped ? 77 : 0;
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "macro.h"
#include "store.h"

#define STORE_SCHEMA_VERSION 2

/* Each entry brings a database from version i to i + 1, inside one transaction. Never
 * edit a released entry: add one. */
static const char *const migrations[STORE_SCHEMA_VERSION] = {
        /* 0 → 1 */
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE leases ("
        "  id TEXT PRIMARY KEY, secret TEXT NOT NULL, resource TEXT NOT NULL,"
        "  units INTEGER NOT NULL, exclusive INTEGER NOT NULL, detached INTEGER NOT NULL,"
        "  token INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, pid INTEGER NOT NULL,"
        "  comm TEXT, unit TEXT, description TEXT NOT NULL, created INTEGER NOT NULL,"
        "  ttl INTEGER NOT NULL, deadline INTEGER);"
        "CREATE TABLE events ("
        "  seq INTEGER PRIMARY KEY, time INTEGER NOT NULL, type TEXT NOT NULL, resource TEXT NOT NULL,"
        "  lease TEXT, token INTEGER, uid INTEGER, gid INTEGER, pid INTEGER, comm TEXT, unit TEXT,"
        "  units INTEGER, reason TEXT);",
        /* 1 → 2: History(resource) without a scan of every event. */
        "CREATE INDEX events_resource ON events (resource, seq);",
};

typedef enum Stmt {
        STMT_LEASE_SAVE,
        STMT_LEASE_DELETE,
        STMT_EVENT_APPEND,
        STMT_META_SET,
        STMT_META_GET,
        STMT_HISTORY_ALL,
        STMT_HISTORY_RESOURCE,
        STMT_EVENTS_TRIM,
        STMT_LOAD,
        _STMT_MAX,
} Stmt;

static const char *const stmt_sql[_STMT_MAX] = {
        [STMT_LEASE_SAVE] = "INSERT OR REPLACE INTO leases (id, secret, resource, units, exclusive, detached, token,"
                            " uid, gid, pid, comm, unit, description, created, ttl, deadline)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [STMT_LEASE_DELETE] = "DELETE FROM leases WHERE id = ?",
        [STMT_EVENT_APPEND] = "INSERT INTO events (time, type, resource, lease, token, uid, gid, pid, comm, unit,"
                              " units, reason) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
        [STMT_META_SET] = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [STMT_META_GET] = "SELECT value FROM meta WHERE key = ?",
        [STMT_HISTORY_ALL] = "SELECT * FROM (SELECT seq, time, type, resource, lease, token, uid, gid, pid, comm,"
                             " unit, units, reason FROM events WHERE seq < ? ORDER BY seq DESC LIMIT ?) ORDER BY seq",
        [STMT_HISTORY_RESOURCE] = "SELECT * FROM (SELECT seq, time, type, resource, lease, token, uid, gid, pid,"
                                  " comm, unit, units, reason FROM events WHERE resource = ? AND seq < ?"
                                  " ORDER BY seq DESC LIMIT ?) ORDER BY seq",
        [STMT_EVENTS_TRIM] = "DELETE FROM events WHERE seq <= ?",
        [STMT_LOAD] = "SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
                      " description, created, ttl, deadline FROM leases ORDER BY token",
};

typedef struct StoreSqlite {
        Store store;
        sqlite3 *db;
        sqlite3_stmt *stmt[_STMT_MAX];
        char *path;
        unsigned history_size;
        bool in_transaction;
        bool token_dirty;
        uint64_t last_token;    /* the reserved high-water mark, as stored */
        int64_t last_event_seq;
        int error;              /* the first write error of the transaction */
} StoreSqlite;

static int sqlite_to_errno(int rc) {
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_DONE:
        case SQLITE_ROW:
                return 0;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_READONLY:
        case SQLITE_PERM:
                return -EROFS;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
                return -EBADMSG;
        case SQLITE_CANTOPEN:
                return -ENOENT;
        default:
                return -EIO;
        }
}

static sqlite3_stmt *stmt(StoreSqlite *s, Stmt k) {
        sqlite3_reset(s->stmt[k]);
        sqlite3_clear_bindings(s->stmt[k]);
        return s->stmt[k];
}

static int begin(StoreSqlite *s) {
        if (s->in_transaction)
                return 0;
        int rc = sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL);
        if (rc != SQLITE_OK)
                return sqlite_to_errno(rc);
        s->in_transaction = true;
        return 0;
}

/* Writes never fail the caller's state change half-way: the first error is kept and
 * returned by commit, which rolls back, and the manager then stops (a store that cannot
 * write must not keep answering as if it could). */
static int step_write(StoreSqlite *s, sqlite3_stmt *st) {
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE) {
                int k = sqlite_to_errno(rc);
                if (s->error == 0)
                        s->error = k ?: -EIO;
                return k ?: -EIO;
        }
        return 0;
}

static void bind_text(sqlite3_stmt *st, int i, const char *v) {
        if (v)
                sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC);
        else
                sqlite3_bind_null(st, i);
}

static int s_lease_save(Store *store, const Lease *l) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        int k = begin(s);
        if (k < 0)
                return s->error = k;
        sqlite3_stmt *st = stmt(s, STMT_LEASE_SAVE);
        bind_text(st, 1, l->id);
        bind_text(st, 2, l->secret);
        bind_text(st, 3, l->resource->name);
        sqlite3_bind_int64(st, 4, l->units);
        sqlite3_bind_int(st, 5, l->exclusive);
        sqlite3_bind_int(st, 6, l->detached);
        sqlite3_bind_int64(st, 7, (int64_t) l->token);
        sqlite3_bind_int64(st, 8, l->owner.uid);
        sqlite3_bind_int64(st, 9, l->owner.gid);
        sqlite3_bind_int64(st, 10, l->owner.pid);
        bind_text(st, 11, l->owner.comm);
        bind_text(st, 12, l->owner.unit);
        bind_text(st, 13, l->description);
        sqlite3_bind_int64(st, 14, (int64_t) l->created);
        sqlite3_bind_int64(st, 15, (int64_t) l->ttl);
        if (l->deadline == USEC_INFINITY)
                sqlite3_bind_null(st, 16);
        else
                sqlite3_bind_int64(st, 16, (int64_t) l->deadline);
        return step_write(s, st);
}

static int s_lease_delete(Store *store, const Lease *l) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        int k = begin(s);
        if (k < 0)
                return s->error = k;
        sqlite3_stmt *st = stmt(s, STMT_LEASE_DELETE);
        bind_text(st, 1, l->id);
        return step_write(s, st);
}

static int s_event_append(Store *store, const Event *e) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (s->history_size == 0)
                return 0;
        int k = begin(s);
        if (k < 0)
                return s->error = k;
        sqlite3_stmt *st = stmt(s, STMT_EVENT_APPEND);
        sqlite3_bind_int64(st, 1, (int64_t) e->time);
        bind_text(st, 2, event_type_to_string(e->type));
        bind_text(st, 3, e->resource);
        bind_text(st, 4, e->lease);
        if (e->token)
                sqlite3_bind_int64(st, 5, (int64_t) e->token);
        if (e->owner) {
                sqlite3_bind_int64(st, 6, e->owner->uid);
                sqlite3_bind_int64(st, 7, e->owner->gid);
                sqlite3_bind_int64(st, 8, e->owner->pid);
                bind_text(st, 9, e->owner->comm);
                bind_text(st, 10, e->owner->unit);
        }
        sqlite3_bind_int64(st, 11, e->units);
        bind_text(st, 12, e->reason);
        k = step_write(s, st);
        if (k >= 0)
                s->last_event_seq = sqlite3_last_insert_rowid(s->db);
        return k;
}

/* The high-water mark is reserved ahead, TOKEN_RESERVE tokens at a time: the meta row is
 * written once per TOKEN_RESERVE grants instead of in every commit. After a crash the next
 * daemon starts above the reservation, so tokens stay strictly increasing (with a gap). */
#define TOKEN_RESERVE 4096

static int s_token_save(Store *store, uint64_t last_token) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (last_token <= s->last_token)
                return 0;
        int k = begin(s);
        if (k < 0)
                return s->error = k;
        s->last_token = last_token + TOKEN_RESERVE;
        s->token_dirty = true;
        return 0;
}

static int meta_set(StoreSqlite *s, const char *key, const char *value) {
        sqlite3_stmt *st = stmt(s, STMT_META_SET);
        bind_text(st, 1, key);
        bind_text(st, 2, value);
        return step_write(s, st);
}

static int s_commit(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (!s->in_transaction)
                return 0;
        if (s->token_dirty) {
                char buf[32];
                snprintf(buf, sizeof(buf), "%" PRIu64, s->last_token);
                (void) meta_set(s, "last_token", buf);
                s->token_dirty = false;
        }
        if (s->last_event_seq > (int64_t) s->history_size) {
                sqlite3_stmt *st = stmt(s, STMT_EVENTS_TRIM);
                sqlite3_bind_int64(st, 1, s->last_event_seq - (int64_t) s->history_size);
                (void) step_write(s, st);
        }
        int k = s->error;
        if (k == 0) {
                int rc = sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL);
                k = sqlite_to_errno(rc);
        }
        if (k < 0)
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        s->in_transaction = false;
        s->error = 0;
        return k < 0 ? k : 1;
}

static int s_load(Store *store, int (*cb)(const LeaseRecord *r, void *userdata), void *userdata) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        sqlite3_stmt *st = stmt(s, STMT_LOAD);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                LeaseRecord r = {
                        .id = (const char *) sqlite3_column_text(st, 0),
                        .secret = (const char *) sqlite3_column_text(st, 1),
                        .resource = (const char *) sqlite3_column_text(st, 2),
                        .units = (unsigned) sqlite3_column_int64(st, 3),
                        .exclusive = sqlite3_column_int(st, 4),
                        .detached = sqlite3_column_int(st, 5),
                        .token = (uint64_t) sqlite3_column_int64(st, 6),
                        .owner = {
                                .uid = (uint32_t) sqlite3_column_int64(st, 7),
                                .gid = (uint32_t) sqlite3_column_int64(st, 8),
                                .pid = (int32_t) sqlite3_column_int64(st, 9),
                                .comm = (char *) sqlite3_column_text(st, 10),
                                .unit = (char *) sqlite3_column_text(st, 11),
                        },
                        .description = (const char *) sqlite3_column_text(st, 12),
                        .created = (usec_t) sqlite3_column_int64(st, 13),
                        .ttl = (usec_t) sqlite3_column_int64(st, 14),
                        .deadline = sqlite3_column_type(st, 15) == SQLITE_NULL
                                            ? USEC_INFINITY
                                            : (usec_t) sqlite3_column_int64(st, 15),
                };
                if (!r.id || !r.secret || !r.resource || r.units == 0 ||
                    strlen(r.id) != LEASE_ID_LEN || strlen(r.secret) != LEASE_SECRET_LEN) {
                        sqlite3_reset(st);
                        return -EBADMSG;
                }
                int k = cb(&r, userdata);
                if (k < 0) {
                        sqlite3_reset(st);
                        return k;
                }
        }
        sqlite3_reset(st);
        return sqlite_to_errno(rc);
}

static int s_meta_get(Store *store, const char *key, char **ret) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        sqlite3_stmt *st = stmt(s, STMT_META_GET);
        bind_text(st, 1, key);
        int rc = sqlite3_step(st);
        char *v = NULL;
        if (rc == SQLITE_ROW) {
                v = strdup((const char *) sqlite3_column_text(st, 0));
                if (!v) {
                        sqlite3_reset(st);
                        return -ENOMEM;
                }
        } else if (rc != SQLITE_DONE) {
                sqlite3_reset(st);
                return sqlite_to_errno(rc);
        }
        sqlite3_reset(st);
        *ret = v;
        return 0;
}

static int s_meta_set(Store *store, const char *key, const char *value) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        int k = begin(s);
        if (k < 0)
                return s->error = k;
        return meta_set(s, key, value);
}

static int s_history(Store *store, const char *resource, uint64_t before, unsigned limit,
                     int (*cb)(const Event *e, void *userdata), void *userdata) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        sqlite3_stmt *st;
        int64_t below = before == 0 || before > INT64_MAX ? INT64_MAX : (int64_t) before;
        if (resource) {
                st = stmt(s, STMT_HISTORY_RESOURCE);
                bind_text(st, 1, resource);
                sqlite3_bind_int64(st, 2, below);
                sqlite3_bind_int64(st, 3, limit);
        } else {
                st = stmt(s, STMT_HISTORY_ALL);
                sqlite3_bind_int64(st, 1, below);
                sqlite3_bind_int64(st, 2, limit);
        }
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                Owner o = {
                        .uid = (uint32_t) sqlite3_column_int64(st, 6),
                        .gid = (uint32_t) sqlite3_column_int64(st, 7),
                        .pid = (int32_t) sqlite3_column_int64(st, 8),
                        .comm = (char *) sqlite3_column_text(st, 9),
                        .unit = (char *) sqlite3_column_text(st, 10),
                };
                Event e = {
                        .seq = (uint64_t) sqlite3_column_int64(st, 0),
                        .time = (usec_t) sqlite3_column_int64(st, 1),
                        .type = event_type_from_string((const char *) sqlite3_column_text(st, 2)),
                        .resource = (const char *) sqlite3_column_text(st, 3),
                        .lease = (const char *) sqlite3_column_text(st, 4),
                        .token = (uint64_t) sqlite3_column_int64(st, 5),
                        .owner = sqlite3_column_type(st, 6) == SQLITE_NULL ? NULL : &o,
                        .units = (unsigned) sqlite3_column_int64(st, 11),
                        .reason = (const char *) sqlite3_column_text(st, 12),
                };
                if (e.type < 0 || !e.resource)
                        continue;
                int k = cb(&e, userdata);
                if (k < 0) {
                        sqlite3_reset(st);
                        return k;
                }
        }
        sqlite3_reset(st);
        return sqlite_to_errno(rc);
}

static int64_t s_size(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        struct stat st;
        int64_t total = 0;
        if (stat(s->path, &st) == 0)
                total += st.st_size;
        _cleanup_free_ char *wal = NULL;
        if (asprintf(&wal, "%s-wal", s->path) >= 0 && stat(wal, &st) == 0)
                total += st.st_size;
        return total;
}

static void s_free(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (s->in_transaction)
                (void) s_commit(store);
        for (int i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(s->stmt[i]);
        sqlite3_close(s->db);
        free(s->path);
        free(s);
}

static const StoreOps sqlite_ops = {
        .lease_save = s_lease_save,
        .lease_delete = s_lease_delete,
        .event_append = s_event_append,
        .token_save = s_token_save,
        .commit = s_commit,
        .load = s_load,
        .meta_get = s_meta_get,
        .meta_set = s_meta_set,
        .history = s_history,
        .size = s_size,
        .free = s_free,
};

static int fail(char **ret_error, int k, const char *fmt, ...) _printf_(3, 4);
static int fail(char **ret_error, int k, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        if (ret_error && vasprintf(ret_error, fmt, ap) < 0)
                *ret_error = NULL;
        va_end(ap);
        return k;
}

static int migrate(StoreSqlite *s, char **ret_error) {
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL);
        if (rc == SQLITE_OK)
                rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
                sqlite3_finalize(st);
                return fail(ret_error, sqlite_to_errno(rc) ?: -EIO, "cannot read %s: %s", s->path,
                            sqlite3_errmsg(s->db));
        }
        int version = sqlite3_column_int(st, 0);
        sqlite3_finalize(st);

        if (version > STORE_SCHEMA_VERSION)
                return fail(ret_error, -EPROTONOSUPPORT,
                            "%s has schema version %d, newer than the %d this agend knows: "
                            "run the agend that wrote it, or move the file away",
                            s->path, version, STORE_SCHEMA_VERSION);
        for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
                _cleanup_free_ char *sql = NULL;
                if (asprintf(&sql, "BEGIN; %s PRAGMA user_version = %d; COMMIT;", migrations[v], v + 1) < 0)
                        return -ENOMEM;
                char *msg = NULL;
                rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
                if (rc != SQLITE_OK) {
                        (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
                        int k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO,
                                     "cannot migrate %s from schema %d to %d: %s", s->path, v, v + 1,
                                     strna(msg));
                        sqlite3_free(msg);
                        return k;
                }
        }
        return 0;
}

int store_sqlite_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret,
                      char **ret_error) {
        StoreSqlite *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->store.ops = &sqlite_ops;
        s->history_size = history_size;
        if (asprintf(&s->path, "%s/agend.db", dir) < 0) {
                free(s);
                return -ENOMEM;
        }

        int k;
        int rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 NULL);
        if (rc != SQLITE_OK) {
                k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO, "cannot open %s: %s", s->path,
                         s->db ? sqlite3_errmsg(s->db) : "out of memory");
                goto fail;
        }
        sqlite3_extended_result_codes(s->db, 0);

        /* journal_mode=WAL reads the header: a file that is not a database fails here,
         * before anything could be written to it. */
        char *msg = NULL;
        rc = sqlite3_exec(s->db, "PRAGMA journal_mode=WAL", NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
                k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO,
                         "cannot read %s: %s; refusing to start rather than replace it "
                         "(move it away to start with an empty database)",
                         s->path, strna(msg));
                sqlite3_free(msg);
                goto fail;
        }
        rc = sqlite3_exec(s->db,
                          sync == STORE_SYNC_FULL ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL",
                          NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
                k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO, "cannot configure %s: %s", s->path,
                         sqlite3_errmsg(s->db));
                goto fail;
        }
        k = migrate(s, ret_error);
        if (k < 0)
                goto fail;

        /* A quick check that the schema is what we expect and readable. */
        rc = sqlite3_exec(s->db, "SELECT count(*) FROM leases; SELECT count(*) FROM events;", NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
                k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO, "cannot read %s: %s", s->path, strna(msg));
                sqlite3_free(msg);
                goto fail;
        }

        for (int i = 0; i < _STMT_MAX; i++) {
                rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL);
                if (rc != SQLITE_OK) {
                        k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO, "cannot prepare statements on %s: %s",
                                 s->path, sqlite3_errmsg(s->db));
                        goto fail;
                }
        }
        {
                _cleanup_free_ char *t = NULL;
                if (s_meta_get(&s->store, "last_token", &t) >= 0 && t)
                        s->last_token = strtoull(t, NULL, 10);
        }
        s->last_event_seq = 0;
        {
                sqlite3_stmt *st = NULL;
                if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(seq), 0) FROM events", -1, &st, NULL) ==
                            SQLITE_OK &&
                    sqlite3_step(st) == SQLITE_ROW)
                        s->last_event_seq = sqlite3_column_int64(st, 0);
                sqlite3_finalize(st);
        }
        *ret = &s->store;
        return 0;

fail:
        for (int i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(s->stmt[i]);
        sqlite3_close(s->db);
        free(s->path);
        free(s);
        return k;
}

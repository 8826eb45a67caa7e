/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "fs-util.h"
#include "hashmap.h"
#include "log.h"
#include "macro.h"
#include "store-fold.h"
#include "store.h"
#include "string-table.h"

#define STORE_SCHEMA_VERSION 8

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
        /* 2 → 3: who revoked a lease (revoked events only). */
        "ALTER TABLE events ADD COLUMN by_uid INTEGER; ALTER TABLE events ADD COLUMN by_gid INTEGER;"
        "ALTER TABLE events ADD COLUMN by_pid INTEGER; ALTER TABLE events ADD COLUMN by_comm TEXT;"
        "ALTER TABLE events ADD COLUMN by_unit TEXT;",
        /* 3 → 4: queued waiters, so that the queue's order survives a restart. Keyed by
         * seq (the rowid): no second index to write on every queued Acquire. */
        "CREATE TABLE waiters ("
        "  seq INTEGER PRIMARY KEY, ticket TEXT NOT NULL, resource TEXT NOT NULL,"
        "  units INTEGER NOT NULL, exclusive INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,"
        "  pid INTEGER NOT NULL, comm TEXT, unit TEXT, description TEXT NOT NULL, since INTEGER NOT NULL);",
        /* 4 → 5: the lean store. Lease changes are appended to lease_log (rowid order only:
         * one b-tree, written at its right edge) and folded into leases in steps; History
         * per resource is a bounded backward scan of events, which has no index to update. */
        "CREATE TABLE lease_log ("
        "  seq INTEGER PRIMARY KEY, op TEXT NOT NULL, id TEXT NOT NULL, secret TEXT, resource TEXT,"
        "  units INTEGER, exclusive INTEGER, detached INTEGER, token INTEGER, uid INTEGER, gid INTEGER,"
        "  pid INTEGER, comm TEXT, unit TEXT, description TEXT, created INTEGER, ttl INTEGER, deadline INTEGER);"
        "DROP INDEX events_resource;"
        /* What a restart restores: the folded snapshot, less what the log changed since,
         * plus the log's last word per id. For sqlite3 users: SELECT * FROM current_leases. */
        "CREATE VIEW current_leases AS"
        "  SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline FROM leases WHERE id NOT IN (SELECT id FROM lease_log)"
        "  UNION ALL"
        "  SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline FROM lease_log"
        "  WHERE seq IN (SELECT max(seq) FROM lease_log GROUP BY id) AND op = 'save';",
        /* 5 → 6: one row per change. The event row carries the lease change it reports
         * (change = 'save': the whole lease, at grant and renew; 'delete': at its end), so a
         * cycle inserts two rows instead of four, into one b-tree. lease_log is folded into
         * leases here, and events gets the lease columns (rebuilt: a change without an event
         * has no type or time, which version 1 declared NOT NULL). meta 'folded_seq': every
         * change up to it is in leases; restore = leases + the changes after it. */
        "DELETE FROM leases WHERE id IN (SELECT id FROM lease_log);"
        "INSERT INTO leases (id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline)"
        "  SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline FROM lease_log"
        "  WHERE seq IN (SELECT max(seq) FROM lease_log GROUP BY id) AND op = 'save';"
        "DROP VIEW current_leases;"
        "DROP TABLE lease_log;"
        "ALTER TABLE events RENAME TO events_v5;"
        "CREATE TABLE events ("
        "  seq INTEGER PRIMARY KEY, time INTEGER, type TEXT, resource TEXT, lease TEXT, token INTEGER,"
        "  uid INTEGER, gid INTEGER, pid INTEGER, comm TEXT, unit TEXT, units INTEGER, reason TEXT,"
        "  by_uid INTEGER, by_gid INTEGER, by_pid INTEGER, by_comm TEXT, by_unit TEXT,"
        "  change TEXT, secret TEXT, exclusive INTEGER, detached INTEGER, description TEXT,"
        "  created INTEGER, ttl INTEGER, deadline INTEGER);"
        "INSERT INTO events (seq, time, type, resource, lease, token, uid, gid, pid, comm, unit, units, reason,"
        "  by_uid, by_gid, by_pid, by_comm, by_unit)"
        "  SELECT seq, time, type, resource, lease, token, uid, gid, pid, comm, unit, units, reason,"
        "  by_uid, by_gid, by_pid, by_comm, by_unit FROM events_v5;"
        "DROP TABLE events_v5;"
        "INSERT OR REPLACE INTO meta (key, value) SELECT 'folded_seq', coalesce(max(seq), 0) FROM events;"
        /* And a restored place's grace counts from its first restore, not from each. */
        "ALTER TABLE waiters ADD COLUMN unclaimed_since INTEGER;"
        /* For sqlite3 users, as before: SELECT * FROM current_leases. */
        "CREATE VIEW current_leases AS"
        "  SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline FROM leases WHERE id NOT IN"
        "  (SELECT lease FROM events WHERE seq > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'folded_seq')"
        "   AND change IS NOT NULL)"
        "  UNION ALL"
        "  SELECT lease, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline FROM events WHERE seq IN"
        "  (SELECT max(seq) FROM events WHERE seq > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'folded_seq')"
        "   AND change IS NOT NULL GROUP BY lease) AND change = 'save';",
        /* 6 → 7: events becomes a ring. A row goes to slot seq % ring_size, replacing the
         * row ring_size older, instead of being appended at the right edge while a trim
         * deletes at the left: the pages the trim freed were taken back one by one from
         * sqlite's free list, which wrote the list's trunk page and page 1 in nearly every
         * commit. seq stays a column (with no index: scans go by slot ranges). meta
         * 'ring_size' 0: the slots are still the seqs; open lays the ring out
         * (ring_fit()). The view is made again: the rename would have pointed it at
         * events_v6. */
        "DROP VIEW current_leases;"
        "ALTER TABLE events RENAME TO events_v6;"
        "CREATE TABLE events ("
        "  slot INTEGER PRIMARY KEY, seq INTEGER NOT NULL, time INTEGER, type TEXT, resource TEXT, lease TEXT,"
        "  token INTEGER, uid INTEGER, gid INTEGER, pid INTEGER, comm TEXT, unit TEXT, units INTEGER, reason TEXT,"
        "  by_uid INTEGER, by_gid INTEGER, by_pid INTEGER, by_comm TEXT, by_unit TEXT,"
        "  change TEXT, secret TEXT, exclusive INTEGER, detached INTEGER, description TEXT,"
        "  created INTEGER, ttl INTEGER, deadline INTEGER);"
        "INSERT INTO events SELECT seq, * FROM events_v6;"
        "DROP TABLE events_v6;"
        "INSERT OR REPLACE INTO meta (key, value) VALUES ('ring_size', '0');"
        "CREATE VIEW current_leases AS"
        "  SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline FROM leases WHERE id NOT IN"
        "  (SELECT lease FROM events WHERE seq > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'folded_seq')"
        "   AND change IS NOT NULL)"
        "  UNION ALL"
        "  SELECT lease, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
        "  description, created, ttl, deadline FROM events WHERE seq IN"
        "  (SELECT max(seq) FROM events WHERE seq > (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'folded_seq')"
        "   AND change IS NOT NULL GROUP BY lease) AND change = 'save';",
        /* 7 → 8: the leases snapshot moves to a file of its own, agend-leases.db, written by
         * a thread of its own (store-fold.h). SNAPSHOT_FILL has copied leases and
         * folded_seq there (committed first: if this step fails, the next open copies them
         * again). The view goes with the table; open makes it again as a temporary view
         * over both files. */
        "DROP VIEW current_leases;"
        "DROP TABLE leases;"
        "DELETE FROM meta WHERE key = 'folded_seq';",
};

/* The snapshot's schema (agend-leases.db, attached as snap): the leases table as it was
 * in agend.db, and its folded_seq. */
#define SNAPSHOT_SCHEMA                                                                         \
        "CREATE TABLE IF NOT EXISTS snap.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"         \
        "CREATE TABLE IF NOT EXISTS snap.leases ("                                               \
        "  id TEXT PRIMARY KEY, secret TEXT NOT NULL, resource TEXT NOT NULL,"                  \
        "  units INTEGER NOT NULL, exclusive INTEGER NOT NULL, detached INTEGER NOT NULL,"      \
        "  token INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL, pid INTEGER NOT NULL," \
        "  comm TEXT, unit TEXT, description TEXT NOT NULL, created INTEGER NOT NULL,"          \
        "  ttl INTEGER NOT NULL, deadline INTEGER);"

/* What a restart restores, for sqlite3 users too (docs/architecture.md): the snapshot,
 * less the leases changed after its folded_seq, plus their last change if a save. A
 * temporary view: a view of agend.db cannot name a table of an attached file. */
#define CURRENT_LEASES_VIEW                                                                     \
        "CREATE TEMP VIEW IF NOT EXISTS current_leases AS"                                       \
        "  SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit," \
        "  description, created, ttl, deadline FROM snap.leases WHERE id NOT IN"                 \
        "  (SELECT lease FROM main.events WHERE seq > (SELECT CAST(value AS INTEGER) FROM snap.meta"   \
        "   WHERE key = 'folded_seq') AND change IS NOT NULL)"                                   \
        "  UNION ALL"                                                                            \
        "  SELECT lease, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit," \
        "  description, created, ttl, deadline FROM main.events WHERE seq IN"                    \
        "  (SELECT max(seq) FROM main.events WHERE seq > (SELECT CAST(value AS INTEGER) FROM snap.meta" \
        "   WHERE key = 'folded_seq') AND change IS NOT NULL GROUP BY lease) AND change = 'save';"

const char *store_sqlite_inspect_sql(void) {
        return CURRENT_LEASES_VIEW;
}

/* The columns of events after slot, in table order. */
#define EVENT_COLUMNS                                                                              \
        "seq, time, type, resource, lease, token, uid, gid, pid, comm, unit, units, reason, by_uid, by_gid," \
        " by_pid, by_comm, by_unit, change, secret, exclusive, detached, description, created, ttl, deadline"
#define HISTORY_COLUMNS                                                                         \
        "seq, time, type, resource, lease, token, uid, gid, pid, comm, unit, units, reason, by_uid, by_gid," \
        " by_pid, by_comm, by_unit"
/* The rows of events in slots ?1..?2 with ?3 < seq <= ?4: the slot range bounds the scan,
 * the seq bounds keep out a row that a rolled-back batch left behind. */
#define RING_RANGE "slot BETWEEN ?1 AND ?2 AND seq > ?3 AND seq <= ?4"

typedef enum Stmt {
        STMT_ROW_APPEND,
        STMT_META_SET,
        STMT_META_GET,
        STMT_HISTORY,
        STMT_HISTORY_COUNT,
        STMT_LOAD,
        STMT_WAITER_SAVE,
        STMT_WAITER_DELETE,
        STMT_LOAD_WAITERS,
        STMT_FOLD_SCAN,
        STMT_BEGIN,
        STMT_COMMIT,
        STMT_ROLLBACK,
        _STMT_MAX,
} Stmt;

/* The columns of an events row, in the order STMT_ROW_APPEND binds them. */
enum {
        COL_SEQ,
        COL_TIME,
        COL_TYPE,
        COL_RESOURCE,
        COL_LEASE,
        COL_TOKEN,
        COL_OWNER,      /* five: uid, gid, pid, comm, unit */
        COL_UNITS = COL_OWNER + 5,
        COL_REASON,
        COL_BY,         /* five */
        COL_CHANGE = COL_BY + 5,
        COL_SECRET,
        COL_EXCLUSIVE,
        COL_DETACHED,
        COL_DESCRIPTION,
        COL_CREATED,
        COL_TTL,
        COL_DEADLINE,
        COL_SLOT,       /* last: the rest is in the table's order */
        _COL_MAX,
};

/* The columns of a leases row (LEASE_COL_*), as columns of an events row. */
static const uint8_t lease_cols[] = {
        COL_LEASE, COL_SECRET, COL_RESOURCE, COL_UNITS, COL_EXCLUSIVE, COL_DETACHED, COL_TOKEN,
        COL_OWNER, COL_OWNER + 1, COL_OWNER + 2, COL_OWNER + 3, COL_OWNER + 4,
        COL_DESCRIPTION, COL_CREATED, COL_TTL, COL_DEADLINE,
};
_Static_assert(ELEMENTSOF(lease_cols) == LEASE_COLS, "a leases row has LEASE_COLS columns");

static const char *const stmt_sql[_STMT_MAX] = {
        [STMT_ROW_APPEND] = "INSERT OR REPLACE INTO events (" EVENT_COLUMNS ", slot)"
                            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [STMT_META_SET] = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
        [STMT_META_GET] = "SELECT value FROM meta WHERE key = ?",
        /* The newest ?6 events of a range of slots (?5: of that resource, or NULL: of any),
         * oldest first. type IS NULL: a lease change that no event reported (not history). */
        [STMT_HISTORY] = "SELECT * FROM (SELECT " HISTORY_COLUMNS " FROM events WHERE " RING_RANGE
                         " AND type IS NOT NULL AND (?5 IS NULL OR resource = ?5) ORDER BY slot DESC LIMIT ?6)"
                         " ORDER BY seq",
        [STMT_HISTORY_COUNT] = "SELECT count(*) FROM (SELECT 1 FROM events WHERE " RING_RANGE
                               " AND type IS NOT NULL AND (?5 IS NULL OR resource = ?5) LIMIT ?6)",
        [STMT_LOAD] = "SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid, comm, unit,"
                      " description, created, ttl, deadline FROM current_leases",
        [STMT_WAITER_SAVE] = "INSERT OR REPLACE INTO waiters (seq, ticket, resource, units, exclusive, uid, gid, pid,"
                             " comm, unit, description, since, unclaimed_since) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [STMT_WAITER_DELETE] = "DELETE FROM waiters WHERE seq = ?",
        [STMT_LOAD_WAITERS] = "SELECT seq, ticket, resource, units, exclusive, uid, gid, pid, comm, unit, description,"
                              " since, unclaimed_since FROM waiters ORDER BY seq",
        /* The changes not folded yet, as open finds them (fold_map_load()); lease_cols order. */
        [STMT_FOLD_SCAN] = "SELECT seq, change = 'save', lease, secret, resource, units, exclusive, detached, token,"
                           " uid, gid, pid, comm, unit, description, created, ttl, deadline FROM events"
                           " WHERE " RING_RANGE " AND change IS NOT NULL ORDER BY slot",
        /* Prepared once like the rest: sqlite3_exec() would parse them again in every commit
         * (two commits per cycle at one client). */
        [STMT_BEGIN] = "BEGIN",
        [STMT_COMMIT] = "COMMIT",
        [STMT_ROLLBACK] = "ROLLBACK",
};

/* An owner's five columns, in the order every table has them: uid, gid, pid, comm, unit.
 * V_OWNER_OR_NULL: all NULL for none (an event without an owner, or not a revoke). */
#define V_OWNER(o) V_INT((o).uid), V_INT((o).gid), V_INT((o).pid), V_TEXT((o).comm), V_TEXT((o).unit)
#define V_OWNER_OR_NULL(p)                                                                      \
        (p) ? V_INT((p)->uid) : V_NULL, (p) ? V_INT((p)->gid) : V_NULL, (p) ? V_INT((p)->pid) : V_NULL, \
                (p) ? V_TEXT((p)->comm) : V_NULL, (p) ? V_TEXT((p)->unit) : V_NULL

typedef enum PendingKind {
        PENDING_NONE,
        PENDING_SAVE,   /* row holds a lease change (save); the event may follow */
        PENDING_EVENT,  /* row holds an event about a lease; its delete may follow */
} PendingKind;

typedef struct StoreSqlite {
        Store store;
        sqlite3 *db;
        sqlite3_stmt *stmt[_STMT_MAX];
        /* Per statement, the parameters exec_op_len() may have left bound to something other
         * than NULL (a set bit: maybe; a clear one: NULL for sure), so that a NULL is bound
         * only where the last row had a value. */
        uint64_t maybe_bound[_STMT_MAX];
        char *path;
        unsigned history_size;
        bool in_transaction;
        bool token_dirty;
        uint64_t last_token;    /* the reserved high-water mark, as stored */
        int64_t last_event_seq; /* of the newest row of events (a change or an event) */
        int64_t ring_size;      /* events' slots (0: the slots are the seqs, before ring_fit()) */
        /* Every change up to this seq is handed over to the fold thread (at open: is in the
         * snapshot, its 'folded_seq'). */
        int64_t folded;
        char *snap_path;        /* agend-leases.db */
        FoldThread *fold;
        /* Per lease id, its last change after the fold point, kept as its row is written,
         * so that the fold thread writes from memory and need not read the rows again
         * (FoldEntry). */
        Hashmap fold_map;
        FoldEntry *fold_head, *fold_tail;       /* the same entries, oldest change first */
        /* No lease with a greater token is in the leases table: every one there was handed
         * to the fold thread (which raises this) or was there at open (the reserved token
         * mark then, and load() raises it to any token it reads). A lease above it that
         * ends before it is handed over needs no write at all. */
        uint64_t table_token_max;
        int error;              /* the first write error of the transaction */
        /* Every write since the last successful commit, as (statement, values), so that a
         * batch whose commit failed for lack of space can be written again once there is
         * some: the engine has already applied it in memory and cannot take it back. */
        uint8_t *redo;
        size_t redo_len, redo_size;
        bool replay;            /* the redo log was rolled back: write it again at the next BEGIN */
        /* A lease change or an event waiting for its other half, so that the two go into one
         * row (pending_write()): grant and renew save the lease, then report it; an end
         * reports it, then deletes it. Its strings are copied into buf. */
        PendingKind pending;
        Value row[_COL_MAX];
        char *pending_buf;
        size_t pending_size;
        int wal_frames;         /* frames in the WAL after the last commit */
        int wal_room_checked_at; /* wal_frames at the last look at free space (-1: none) */
        bool wal_room;          /* then: room for the WAL to grow to WAL_CHECKPOINT_FRAMES */
        int64_t wal_bytes;      /* appended since open (atomic: log_bytes() reads it from any thread) */
        bool defer_maintenance; /* a commit on agend's loop thread: checkpoint later */
        int page_size;
} StoreSqlite;

/* The owner in the five columns from i on (the order of V_OWNER). */
static OwnerRecord column_owner(sqlite3_stmt *st, int i) {
        return (OwnerRecord) {
                .uid = (uint32_t) sqlite3_column_int64(st, i),
                .gid = (uint32_t) sqlite3_column_int64(st, i + 1),
                .pid = (int32_t) sqlite3_column_int64(st, i + 2),
                .comm = (const char *) sqlite3_column_text(st, i + 3),
                .unit = (const char *) sqlite3_column_text(st, i + 4),
        };
}

/* A batch larger than this leaves its buffer to be freed, rather than kept for the next. */
#define REDO_KEEP (1U << 20)

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

/* What a failed call means to the daemon: -ENOSPC only for a lack of space reported by a
 * write (SQLITE_FULL, or an I/O error whose system errno is ENOSPC/EDQUOT on anything but
 * a sync), which is safe to retry once there is space; a failed fsync is -EIO whatever its
 * errno, because after it the kernel may have dropped the pages it could not write. */
int sqlite_db_errno(sqlite3 *db, int rc) {
        if ((rc & 0xff) == SQLITE_IOERR && db) {
                int ext = sqlite3_extended_errcode(db), sys = sqlite3_system_errno(db);
                if (ext != SQLITE_IOERR_FSYNC && ext != SQLITE_IOERR_DIR_FSYNC && (sys == ENOSPC || sys == EDQUOT))
                        return -ENOSPC;
        }
        return sqlite_to_errno(rc);
}

static int db_errno(StoreSqlite *s, int rc) {
        return sqlite_db_errno(s->db, rc);
}

static sqlite3_stmt *stmt(StoreSqlite *s, Stmt k) {
        sqlite3_reset(s->stmt[k]);
        sqlite3_clear_bindings(s->stmt[k]);
        return s->stmt[k];
}

/* Runs a statement without parameters or rows (BEGIN, COMMIT, ROLLBACK): 0 or -errno. */
static int exec_simple(StoreSqlite *s, Stmt k) {
        int rc = sqlite3_step(s->stmt[k]);
        int r = rc == SQLITE_DONE ? 0 : db_errno(s, rc) ?: -EIO;
        sqlite3_reset(s->stmt[k]);
        return r;
}

/* Keeps the first error of the transaction: commit returns it, after a rollback. */
static int tx_fail(StoreSqlite *s, int k) {
        if (s->error == 0)
                s->error = k;
        return k;
}

/* Binds values 1..n to statement k and runs it; len, if not NULL, has the length of each
 * text value (so that sqlite need not count it again). */
static int exec_op_len(StoreSqlite *s, Stmt k, const Value *v, size_t n, const uint32_t *len) {
        /* exec_op resets its statement after each step, and when it binds every parameter
         * no binding of the last row can be left: both calls of stmt() are then work for
         * nothing (two rows per cycle, 26 parameters each). */
        sqlite3_stmt *st = s->stmt[k];
        uint64_t *maybe = &s->maybe_bound[k];
        if (sqlite3_stmt_busy(st))
                sqlite3_reset(st);
        if ((int) n < sqlite3_bind_parameter_count(st) || n > 64) {
                sqlite3_clear_bindings(st);
                *maybe = 0;
        }
        for (size_t i = 0; i < n; i++) {
                uint64_t bit = i < 64 ? UINT64_C(1) << i : 0;
                if (v[i].type == VALUE_INT) {
                        sqlite3_bind_int64(st, (int) i + 1, v[i].i);
                        *maybe |= bit;
                } else if (v[i].type == VALUE_TEXT) {
                        sqlite3_bind_text(st, (int) i + 1, v[i].s, len ? (int) len[i] : -1, SQLITE_STATIC);
                        *maybe |= bit;
                } else if (*maybe & bit) {
                        sqlite3_bind_null(st, (int) i + 1);
                        *maybe &= ~bit;
                }
        }
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        if (rc != SQLITE_DONE)
                return tx_fail(s, db_errno(s, rc) ?: -EIO);
        return 0;
}

/* The redo log is one byte buffer: per write, the statement, the number of values, and
 * each value (type byte; int64; or length + bytes + NUL). One append per write, no
 * allocation once the buffer has grown to a batch's size. */
static int redo_reserve(StoreSqlite *s, size_t n) {
        if (s->redo_size - s->redo_len >= n)
                return 0;
        size_t size = MAX(s->redo_size * 2, s->redo_len + n);
        size = MAX(size, (size_t) 4096);
        uint8_t *b = realloc(s->redo, size);
        if (!b)
                return -ENOMEM;
        s->redo = b;
        s->redo_size = size;
        return 0;
}

/* Fills len[] with the length of each text value, for exec_op_len(). */
static int redo_record(StoreSqlite *s, Stmt k, const Value *v, size_t n, uint32_t *len) {
        size_t need = 2;
        for (size_t i = 0; i < n; i++) {
                need += 1;
                /* Every len[] is set, so that no reader sees one that was never written. */
                len[i] = v[i].type == VALUE_TEXT ? (uint32_t) strlen(v[i].s) : 0;
                if (v[i].type == VALUE_INT)
                        need += 8;
                else if (v[i].type == VALUE_TEXT)
                        need += 4 + (size_t) len[i] + 1;
        }
        if (redo_reserve(s, need) < 0)
                return -ENOMEM;
        uint8_t *p = s->redo + s->redo_len;
        *p++ = (uint8_t) k;
        *p++ = (uint8_t) n;
        for (size_t i = 0; i < n; i++) {
                *p++ = (uint8_t) v[i].type;
                if (v[i].type == VALUE_INT) {
                        memcpy(p, &v[i].i, 8);
                        p += 8;
                } else if (v[i].type == VALUE_TEXT) {
                        memcpy(p, &len[i], 4);
                        memcpy(p + 4, v[i].s, (size_t) len[i] + 1);
                        p += 4 + (size_t) len[i] + 1;
                }
        }
        s->redo_len = (size_t) (p - s->redo);
        return 0;
}

#define REDO_VALUES_MAX _COL_MAX

/* Writes the rolled-back batch again, in the transaction just begun. */
static void redo_replay(StoreSqlite *s) {
        const uint8_t *p = s->redo, *end = s->redo + s->redo_len;
        while (p < end) {
                Stmt k = (Stmt) *p++;
                size_t n = *p++;
                Value v[REDO_VALUES_MAX];
                uint32_t len[REDO_VALUES_MAX];
                assert(n <= REDO_VALUES_MAX);
                for (size_t i = 0; i < n; i++) {
                        v[i] = (Value) { .type = (ValueType) *p++ };
                        if (v[i].type == VALUE_INT) {
                                memcpy(&v[i].i, p, 8);
                                p += 8;
                        } else if (v[i].type == VALUE_TEXT) {
                                memcpy(&len[i], p, 4);
                                v[i].s = (const char *) p + 4;
                                p += 4 + (size_t) len[i] + 1;
                        }
                }
                (void) exec_op_len(s, k, v, n, len);
        }
}

static int begin(StoreSqlite *s) {
        if (s->in_transaction)
                return 0;
        int r = exec_simple(s, STMT_BEGIN);
        if (r < 0)
                return tx_fail(s, r);
        s->in_transaction = true;
        if (s->replay) {
                s->replay = false;
                redo_replay(s);
        }
        return 0;
}

/* Writes never fail the caller's state change half-way: the write is logged, the first
 * error is kept and returned by commit, which rolls back. What the manager does then
 * depends on the error (store-guard.c): a lack of space is retried with the same batch,
 * anything else stops the daemon. */
static int write_op(StoreSqlite *s, Stmt k, const Value *v, size_t n) {
        assert(n <= REDO_VALUES_MAX);
        /* BEGIN first: it replays the log as it was, without this write. */
        int b = begin(s);
        uint32_t len[REDO_VALUES_MAX];
        int r = redo_record(s, k, v, n, len);
        if (r < 0)
                return tx_fail(s, r);
        if (b < 0)
                return b;       /* logged: the commit fails, and the next BEGIN replays it */
        return exec_op_len(s, k, v, n, len);
}

/* The slots of the rows with lo < seq <= hi, as at most two ranges in seq order (oldest
 * first): the ring holds the newest ring_size rows, row seq in slot seq % ring_size. */
typedef struct SlotRange {
        int64_t first, last;
} SlotRange;

static size_t ring_ranges(const StoreSqlite *s, int64_t lo, int64_t hi, SlotRange r[static 2]) {
        hi = MIN(hi, s->last_event_seq);
        if (s->ring_size == 0) {        /* not laid out yet: slot = seq */
                r[0] = (SlotRange) { lo + 1, hi };
                return hi > lo;
        }
        lo = MAX(MAX(lo, hi - s->ring_size), (int64_t) 0);        /* seq counts from 1 */
        if (hi <= lo)
                return 0;
        int64_t a = (lo + 1) % s->ring_size, b = hi % s->ring_size;
        if (a <= b) {
                r[0] = (SlotRange) { a, b };
                return 1;
        }
        r[0] = (SlotRange) { a, s->ring_size - 1 };
        r[1] = (SlotRange) { 0, b };
        return 2;
}

/* Binds RING_RANGE's four parameters. */
static void bind_range(sqlite3_stmt *st, const SlotRange *r, int64_t lo, int64_t hi) {
        sqlite3_bind_int64(st, 1, r->first);
        sqlite3_bind_int64(st, 2, r->last);
        sqlite3_bind_int64(st, 3, lo);
        sqlite3_bind_int64(st, 4, hi);
}

static FoldEntry *fold_entry_new(const Value *v, bool save) {
        size_t n = save ? LEASE_COLS : 1, need = 0, len[LEASE_COLS];
        for (size_t i = 0; i < n; i++)
                if (v[i].type == VALUE_TEXT)
                        need += (len[i] = strlen(v[i].s) + 1);
        FoldEntry *e = malloc(sizeof(*e) + need);
        if (!e)
                return NULL;
        e->save = save;
        char *p = e->id;
        for (size_t i = 0; i < LEASE_COLS; i++) {
                e->v[i] = i < n ? v[i] : V_NULL;
                if (i < n && v[i].type == VALUE_TEXT) {
                        memcpy(p, v[i].s, len[i]);
                        e->v[i].s = p;
                        p += len[i];
                }
        }
        return e;
}

static void fold_list_unlink(StoreSqlite *s, FoldEntry *e) {
        *(e->prev ? &e->prev->next : &s->fold_head) = e->next;
        *(e->next ? &e->next->prev : &s->fold_tail) = e->prev;
        e->prev = e->next = NULL;
}

/* A change is always the newest: the list stays in seq order by appending. */
static void fold_list_append(StoreSqlite *s, FoldEntry *e) {
        e->prev = s->fold_tail;
        e->next = NULL;
        *(s->fold_tail ? &s->fold_tail->next : &s->fold_head) = e;
        s->fold_tail = e;
}

static void fold_entry_drop(StoreSqlite *s, FoldEntry *e) {
        fold_list_unlink(s, e);
        hashmap_remove(&s->fold_map, e->id);
        free(e);
}

/* Notes a change row (v: its leases columns) for the next fold. */
static int fold_note(StoreSqlite *s, int64_t seq, bool save, const Value *v) {
        if (v[0].type != VALUE_TEXT)
                return 0;       /* no id: nothing to fold (the store never writes one) */
        FoldEntry *old = hashmap_get(&s->fold_map, v[0].s);
        if (!save && old) {
                if (!old->in_table) {
                        /* Granted and ended since the fold point: the table never had it. */
                        fold_entry_drop(s, old);
                        return 0;
                }
                old->seq = seq;
                old->save = false;
                fold_list_unlink(s, old);
                fold_list_append(s, old);
                return 0;
        }
        const Value *token = &v[LEASE_COL_TOKEN];
        bool in_table = old ? old->in_table
                            : !save || token->type != VALUE_INT || (uint64_t) token->i <= s->table_token_max;
        FoldEntry *e = fold_entry_new(v, save);
        if (!e)
                return -ENOMEM;
        e->seq = seq;
        e->in_table = in_table;
        if (old)
                fold_entry_drop(s, old);
        if (hashmap_put(&s->fold_map, e->id, e) < 0) {
                free(e);
                return -ENOMEM;
        }
        fold_list_append(s, e);
        return 0;
}

static void fold_map_free(StoreSqlite *s) {
        while (s->fold_head)
                fold_entry_drop(s, s->fold_head);
        hashmap_done(&s->fold_map);
}

/* Rows get their seq here (the newest at open, or the fold point if later, plus one per
 * row) and with it their slot in the ring. */
static int row_write(StoreSqlite *s, Value *row) {
        row[COL_SEQ] = V_INT(++s->last_event_seq);
        row[COL_SLOT] = V_INT(s->last_event_seq % s->ring_size);
        int k = write_op(s, STMT_ROW_APPEND, row, _COL_MAX);
        if (row[COL_CHANGE].type == VALUE_TEXT) {
                /* Noted even when the write failed: the redo log writes the row again. A
                 * failed note fails the commit (as a full redo log does): a fold without it
                 * would lose the change. */
                Value v[LEASE_COLS];
                for (size_t i = 0; i < LEASE_COLS; i++)
                        v[i] = row[lease_cols[i]];
                int r = fold_note(s, row[COL_SEQ].i, streq(row[COL_CHANGE].s, "save"), v);
                if (r < 0)
                        return tx_fail(s, r);
        }
        return k;
}

static void row_clear(Value *row) {
        for (size_t i = 0; i < _COL_MAX; i++)
                row[i] = V_NULL;
}

static void row_set_owner(Value *row, size_t at, const OwnerRecord *o) {
        const Value v[] = { V_OWNER_OR_NULL(o) };
        memcpy(row + at, v, sizeof(v));
}

static void row_set_lease(Value *row, const LeaseRecord *l) {
        row[COL_RESOURCE] = V_TEXT(l->resource);
        row[COL_LEASE] = V_TEXT(l->id);
        row[COL_TOKEN] = V_INT(l->token);
        row_set_owner(row, COL_OWNER, &l->owner);
        row[COL_UNITS] = V_INT(l->units);
        row[COL_CHANGE] = V_TEXT("save");
        row[COL_SECRET] = V_TEXT(l->secret);
        row[COL_EXCLUSIVE] = V_INT(l->exclusive);
        row[COL_DETACHED] = V_INT(l->detached);
        row[COL_DESCRIPTION] = V_TEXT(strempty(l->description));
        row[COL_CREATED] = V_INT(l->created);
        row[COL_TTL] = V_INT(l->ttl);
        row[COL_DEADLINE] = l->deadline == USEC_INFINITY ? V_NULL : V_INT(l->deadline);
}

/* What only the event says (the rest it shares with the lease). */
static void row_set_event_own(Value *row, const EventRecord *e) {
        row[COL_TIME] = V_INT(e->time);
        row[COL_TYPE] = V_TEXT(e->type);
        row[COL_REASON] = V_TEXT(e->reason);
        row_set_owner(row, COL_BY, e->revoked_by);
}

static void row_set_event(Value *row, const EventRecord *e) {
        row_set_event_own(row, e);
        row[COL_RESOURCE] = V_TEXT(e->resource);
        row[COL_LEASE] = V_TEXT(e->lease);
        row[COL_TOKEN] = e->token ? V_INT(e->token) : V_NULL;
        row_set_owner(row, COL_OWNER, e->owner);
        row[COL_UNITS] = V_INT(e->units);
}

static bool value_is(const Value *v, const char *str) {
        return v->type == VALUE_TEXT ? str && streq(v->s, str) : !str;
}

/* Whether the event reports the lease change pending in row: then the row can carry both. */
static bool row_event_matches(const Value *row, const EventRecord *e) {
        const Value *o = row + COL_OWNER;
        return e->lease && value_is(&row[COL_LEASE], e->lease) && value_is(&row[COL_RESOURCE], e->resource) &&
               e->token != 0 && row[COL_TOKEN].i == (int64_t) e->token && row[COL_UNITS].i == (int64_t) e->units &&
               e->owner && o[0].i == e->owner->uid && o[1].i == e->owner->gid && o[2].i == e->owner->pid &&
               value_is(&o[3], e->owner->comm) && value_is(&o[4], e->owner->unit);
}

/* Keeps the row as pending, its strings copied (the caller's are borrowed). */
static int pending_keep(StoreSqlite *s, PendingKind kind) {
        size_t need = 0, len[_COL_MAX];
        for (size_t i = 0; i < _COL_MAX; i++)
                if (s->row[i].type == VALUE_TEXT)
                        need += (len[i] = strlen(s->row[i].s) + 1);
        if (need > s->pending_size) {
                size_t size = MAX(need, (size_t) 512);
                char *b = realloc(s->pending_buf, size);
                if (!b)
                        return -ENOMEM;
                s->pending_buf = b;
                s->pending_size = size;
        }
        char *p = s->pending_buf;
        for (size_t i = 0; i < _COL_MAX; i++)
                if (s->row[i].type == VALUE_TEXT) {
                        memcpy(p, s->row[i].s, len[i]);
                        s->row[i].s = p;
                        p += len[i];
                }
        s->pending = kind;
        return 0;
}

/* Writes the pending row as it is (a change no event reported, or an event about a lease
 * that no change follows). Every write, read and commit calls it first, so rows keep the
 * order of the calls. */
static int pending_flush(StoreSqlite *s) {
        if (s->pending == PENDING_NONE)
                return 0;
        s->pending = PENDING_NONE;
        return row_write(s, s->row);
}

static int s_lease_save(Store *store, const LeaseRecord *l) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        int k = pending_flush(s);
        row_clear(s->row);
        row_set_lease(s->row, l);
        /* Without history there is no event to wait for. */
        if (s->history_size == 0)
                return row_write(s, s->row);
        int r = pending_keep(s, PENDING_SAVE);
        if (r < 0)
                return row_write(s, s->row);
        return k;
}

static int s_lease_delete(Store *store, const char *id) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (s->pending == PENDING_EVENT && value_is(&s->row[COL_LEASE], id)) {
                s->row[COL_CHANGE] = V_TEXT("delete");
                s->pending = PENDING_NONE;
                return row_write(s, s->row);
        }
        int k = pending_flush(s);
        Value row[_COL_MAX];
        row_clear(row);
        row[COL_LEASE] = V_TEXT(id);
        row[COL_CHANGE] = V_TEXT("delete");
        int r = row_write(s, row);
        return k < 0 ? k : r;
}

static int s_waiter_save(Store *store, const WaiterRecord *w) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        const Value v[] = {
                V_INT(w->seq),
                V_TEXT(w->ticket),
                V_TEXT(w->resource),
                V_INT(w->units),
                V_INT(w->exclusive),
                V_OWNER(w->owner),
                V_TEXT(w->description),
                V_INT(w->since),
                w->unclaimed_since ? V_INT(w->unclaimed_since) : V_NULL,
        };
        int k = pending_flush(s);
        int r = write_op(s, STMT_WAITER_SAVE, v, ELEMENTSOF(v));
        return k < 0 ? k : r;
}

static int s_waiter_delete(Store *store, uint64_t seq) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        const Value v[] = { V_INT(seq) };
        int k = pending_flush(s);
        int r = write_op(s, STMT_WAITER_DELETE, v, ELEMENTSOF(v));
        return k < 0 ? k : r;
}

static int s_event_append(Store *store, const EventRecord *e) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (s->history_size == 0)
                return 0;
        if (s->pending == PENDING_SAVE && row_event_matches(s->row, e)) {
                row_set_event_own(s->row, e);
                s->pending = PENDING_NONE;
                return row_write(s, s->row);
        }
        int k = pending_flush(s);
        row_clear(s->row);
        row_set_event(s->row, e);
        /* An end is reported before the lease is deleted: wait for the delete. */
        if (e->lease && pending_keep(s, PENDING_EVENT) == 0)
                return k;
        int r = row_write(s, s->row);
        return k < 0 ? k : r;
}

/* The high-water mark is reserved ahead, TOKEN_RESERVE tokens at a time: the meta row is
 * written once per TOKEN_RESERVE grants instead of in every commit. After a crash the next
 * daemon starts above the reservation, so tokens stay strictly increasing (with a gap). */
#define TOKEN_RESERVE 4096

static int s_token_save(Store *store, uint64_t last_token) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (last_token <= s->last_token)
                return 0;
        s->last_token = last_token + TOKEN_RESERVE;
        s->token_dirty = true;
        return 0;
}

static int meta_set(StoreSqlite *s, const char *key, const char *value) {
        const Value v[] = { V_TEXT(key), V_TEXT(value) };
        int k = pending_flush(s);
        int r = write_op(s, STMT_META_SET, v, ELEMENTSOF(v));
        return k < 0 ? k : r;
}

/* The changes in events are handed to the fold thread once more than LOG_FOLD_AT rows were
 * appended after the fold point, up to LOG_FOLD_AT / 2 rows before the newest. Leases
 * that came and went within those rows cost the snapshot nothing. */
#define LOG_FOLD_AT 4096
/* The ring holds HistorySize rows, and at least this many: every change after the
 * snapshot's folded_seq must stay in it until folded (ring_guard()). */
#define RING_MIN (4 * LOG_FOLD_AT)

/* Hands the noted changes up to upto over to the fold thread, oldest first (per id only
 * its last: a save replaces the row, a delete removes it): a lease granted and ended since
 * the fold point never reaches the snapshot. */
static void fold_hand_over(StoreSqlite *s, int64_t upto) {
        if (upto <= s->folded)
                return;
        FoldEntry *head = s->fold_head, *tail = NULL;
        for (FoldEntry *e = head; e && e->seq <= upto; e = e->next) {
                hashmap_remove(&s->fold_map, e->id);
                /* Raised before the snapshot has it: a lease taken for one the table may
                 * hold costs only a DELETE that finds nothing. */
                if (e->save && e->v[LEASE_COL_TOKEN].type == VALUE_INT)
                        s->table_token_max = MAX(s->table_token_max, (uint64_t) e->v[LEASE_COL_TOKEN].i);
                tail = e;
        }
        if (tail) {
                s->fold_head = tail->next;
                *(s->fold_head ? &s->fold_head->prev : &s->fold_tail) = NULL;
                tail->next = NULL;
        } else
                head = NULL;
        s->folded = upto;
        fold_thread_hand_over(s->fold, head, tail, upto);
}

/* At open: the changes after the fold point, as row_write() would have noted them. */
static int fold_map_load(StoreSqlite *s) {
        SlotRange r[2];
        size_t n = ring_ranges(s, s->folded, s->last_event_seq, r);
        int k = 0;
        for (size_t j = 0; k == 0 && j < n; j++) {
                sqlite3_stmt *st = stmt(s, STMT_FOLD_SCAN);
                bind_range(st, &r[j], s->folded, s->last_event_seq);
                int rc;
                while (k == 0 && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                        Value v[LEASE_COLS];
                        for (size_t i = 0; i < LEASE_COLS; i++) {
                                int col = (int) i + 2;
                                switch (sqlite3_column_type(st, col)) {
                                case SQLITE_NULL:
                                        v[i] = V_NULL;
                                        break;
                                case SQLITE_INTEGER:
                                        v[i] = V_INT(sqlite3_column_int64(st, col));
                                        break;
                                default:
                                        v[i] = V_TEXT((const char *) sqlite3_column_text(st, col));
                                }
                        }
                        k = fold_note(s, sqlite3_column_int64(st, 0), sqlite3_column_int(st, 1), v);
                }
                sqlite3_reset(st);
                if (k == 0 && rc != SQLITE_DONE)
                        k = sqlite_to_errno(rc) ?: -EIO;
        }
        return k;
}

static int64_t fold_backlog(const StoreSqlite *s) {
        return s->last_event_seq - s->folded;
}

static bool fold_due(const StoreSqlite *s) {
        return fold_backlog(s) > LOG_FOLD_AT;
}

/* Rows up to this seq have been overwritten in the ring (by the batch being committed,
 * or before). */
static int64_t ring_overwritten(const StoreSqlite *s) {
        return s->ring_size > 0 ? s->last_event_seq - s->ring_size : 0;
}

/* Half the ring is not in the snapshot yet: the next commit may have to wait for the
 * fold (ring_guard()), which agend's loop must not. */
static bool fold_behind(const StoreSqlite *s) {
        return s->ring_size > 0 && s->last_event_seq - fold_thread_folded(s->fold) > s->ring_size / 2;
}

/* The batch being committed has overwritten ring rows up to ring_overwritten(): any
 * change among them must be in the snapshot before this commit makes its row's loss
 * durable. Rarely so: the fold thread is handed changes LOG_FOLD_AT / 2 rows old, and
 * the ring holds at least RING_MIN. So this waits only when the fold falls far behind
 * (a disk too slow for the snapshot's random writes), or for a batch larger than the
 * ring: then changes of this very batch are handed over before their commit. The
 * snapshot holding a change that a failed commit then leaves out of agend.db is no
 * harm: the engine has applied it in memory, and the batch is written again
 * (redo log) or agend stops; tokens and seqs restart above both files. */
static int ring_guard(StoreSqlite *s) {
        int64_t need = ring_overwritten(s);
        if (need <= fold_thread_folded(s->fold))
                return 0;
        fold_hand_over(s, need);
        return fold_thread_wait(s->fold, need);
}

static int s_commit(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        (void) pending_flush(s);        /* an error is kept in s->error */
        if (!s->in_transaction && !s->token_dirty && s->redo_len == 0 && s->error == 0)
                return 0;
        if (s->token_dirty) {
                char buf[32];
                snprintf(buf, sizeof(buf), "%" PRIu64, s->last_token);
                (void) meta_set(s, "last_token", buf);
                s->token_dirty = false;
        }
        /* A batch rolled back before, with nothing new since: write it again now. */
        (void) begin(s);
        if (s->error == 0 && s->in_transaction) {
                int g = ring_guard(s);
                if (g < 0)
                        (void) tx_fail(s, g);
        }
        int k = s->error;
        if (k == 0 && s->in_transaction)
                k = exec_simple(s, STMT_COMMIT);
        if (k < 0) {
                /* sqlite rolls back by itself after most failed COMMITs; make sure. */
                if (!sqlite3_get_autocommit(s->db))
                        (void) exec_simple(s, STMT_ROLLBACK);
                s->replay = s->redo_len > 0;
        } else {
                /* Durable now: the fold thread may have them. */
                if (fold_due(s))
                        fold_hand_over(s, s->last_event_seq - LOG_FOLD_AT / 2);
                s->redo_len = 0;
                if (s->redo_size > REDO_KEEP) {
                        free(s->redo);
                        s->redo = NULL;
                        s->redo_size = 0;
                }
        }
        s->in_transaction = false;
        s->error = 0;
        return k < 0 ? k : 1;
}

static int s_load(Store *store, int (*cb)(const LeaseRecord *r, void *userdata), void *userdata) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        (void) pending_flush(s);
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
                        .owner = column_owner(st, 7),
                        .description = (const char *) sqlite3_column_text(st, 12),
                        .created = (usec_t) sqlite3_column_int64(st, 13),
                        .ttl = (usec_t) sqlite3_column_int64(st, 14),
                        .deadline = sqlite3_column_type(st, 15) == SQLITE_NULL
                                            ? USEC_INFINITY
                                            : (usec_t) sqlite3_column_int64(st, 15),
                };
                /* The reserved mark already covers it, unless the database lost its mark. */
                s->table_token_max = MAX(s->table_token_max, r.token);
                int k = cb(&r, userdata);
                if (k < 0) {
                        sqlite3_reset(st);
                        return k;
                }
        }
        sqlite3_reset(st);
        return sqlite_to_errno(rc);
}

static int s_load_waiters(Store *store, int (*cb)(const WaiterRecord *r, void *userdata), void *userdata) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        sqlite3_stmt *st = stmt(s, STMT_LOAD_WAITERS);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                WaiterRecord r = {
                        .seq = (uint64_t) sqlite3_column_int64(st, 0),
                        .ticket = (const char *) sqlite3_column_text(st, 1),
                        .resource = (const char *) sqlite3_column_text(st, 2),
                        .units = (unsigned) sqlite3_column_int64(st, 3),
                        .exclusive = sqlite3_column_int(st, 4),
                        .owner = column_owner(st, 5),
                        .description = (const char *) sqlite3_column_text(st, 10),
                        .since = (usec_t) sqlite3_column_int64(st, 11),
                        .unclaimed_since = (usec_t) sqlite3_column_int64(st, 12),
                };
                if (!r.ticket || !r.resource || r.units == 0) {
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
        sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
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
        return meta_set(s, key, value);
}

/* History(resource) looks back through at most this many of the newest events. */
#define HISTORY_SCAN_MAX 200000

/* Binds STMT_HISTORY's or STMT_HISTORY_COUNT's parameters. */
static sqlite3_stmt *history_stmt(StoreSqlite *s, Stmt k, const SlotRange *r, int64_t lo, int64_t hi,
                                  const char *resource, int64_t limit) {
        sqlite3_stmt *st = stmt(s, k);
        bind_range(st, r, lo, hi);
        if (resource)
                sqlite3_bind_text(st, 5, resource, -1, SQLITE_STATIC);
        sqlite3_bind_int64(st, 6, limit);
        return st;
}

/* Calls cb for the newest limit events in one range of slots, oldest first. */
static int history_range(StoreSqlite *s, const SlotRange *r, int64_t lo, int64_t hi, const char *resource,
                         int64_t limit, int (*cb)(const EventRecord *e, void *userdata), void *userdata) {
        sqlite3_stmt *st = history_stmt(s, STMT_HISTORY, r, lo, hi, resource, limit);
        int rc;
        while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
                OwnerRecord o = column_owner(st, 6), by = column_owner(st, 13);
                EventRecord e = {
                        .seq = (uint64_t) sqlite3_column_int64(st, 0),
                        .time = (usec_t) sqlite3_column_int64(st, 1),
                        .type = (const char *) sqlite3_column_text(st, 2),
                        .resource = (const char *) sqlite3_column_text(st, 3),
                        .lease = (const char *) sqlite3_column_text(st, 4),
                        .token = (uint64_t) sqlite3_column_int64(st, 5),
                        .owner = sqlite3_column_type(st, 6) == SQLITE_NULL ? NULL : &o,
                        .units = (unsigned) sqlite3_column_int64(st, 11),
                        .reason = (const char *) sqlite3_column_text(st, 12),
                        .revoked_by = sqlite3_column_type(st, 13) == SQLITE_NULL ? NULL : &by,
                };
                if (!e.type || !e.resource)
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

static int s_history(Store *store, const char *resource, uint64_t before, unsigned limit,
                     int (*cb)(const EventRecord *e, void *userdata), void *userdata) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        (void) pending_flush(s);
        /* The ring may hold more than HistorySize rows (RING_MIN); they are not history.
         * Without an index on resource, this is a backward scan of at most HistorySize
         * rows. */
        int64_t lo = s->last_event_seq - (int64_t) s->history_size;
        int64_t hi = before == 0 || before > INT64_MAX ? s->last_event_seq : (int64_t) before - 1;
        if (resource)
                /* Bounded: with a HistorySize= of millions, a rare resource must not make one
                 * call scan them all on the loop. */
                lo = MAX(lo, s->last_event_seq - (int64_t) HISTORY_SCAN_MAX);
        SlotRange r[2];
        size_t n = ring_ranges(s, lo, hi, r);
        if (n == 0)
                return 0;
        if (n == 1)
                return history_range(s, &r[0], lo, hi, resource, limit, cb, userdata);
        /* Wrapped: the newest events are in r[1]. How many of the limit they take decides how
         * many come from r[0], which are older and so reported first. */
        sqlite3_stmt *st = history_stmt(s, STMT_HISTORY_COUNT, &r[1], lo, hi, resource, limit);
        int rc = sqlite3_step(st);
        int64_t newer = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
        sqlite3_reset(st);
        if (rc != SQLITE_ROW)
                return sqlite_to_errno(rc) ?: -EIO;
        if ((int64_t) limit > newer) {
                int k = history_range(s, &r[0], lo, hi, resource, (int64_t) limit - newer, cb, userdata);
                if (k < 0)
                        return k;
        }
        return newer > 0 ? history_range(s, &r[1], lo, hi, resource, newer, cb, userdata) : 0;
}

/* Replaces sqlite's own auto-checkpoint hook (a passive checkpoint) so that it can also
 * count what each commit appended. At 4000 frames instead of sqlite's 1000: each
 * checkpoint holds up the batches behind it (two syncs), and under load most frames are
 * the same few pages written again (the right edge of events); a quarter as many
 * checkpoints halved the 64-client p99 at the same or better throughput, for a WAL of up
 * to ~25 MB (docs/performance.md, "Round 2: commits on the loop under load").
 * But the WAL grows past sqlite's 1000 frames only while its file system has room for
 * that many times over: on a nearly full disk, a WAL growing into the space the disk-full
 * guard's reserve freed would eat it (store-guard.h). */
#define WAL_CHECKPOINT_FRAMES 4000
#define WAL_CHECKPOINT_FRAMES_LOW_SPACE 1000
#define WAL_ROOM_FACTOR 4
/* Free space is looked at again after this many more frames. */
#define WAL_ROOM_RECHECK 250

static bool wal_has_room(StoreSqlite *s, int frames) {
        if (s->wal_room_checked_at >= 0 && frames >= s->wal_room_checked_at &&
            frames < s->wal_room_checked_at + WAL_ROOM_RECHECK)
                return s->wal_room;
        int64_t need = (int64_t) WAL_ROOM_FACTOR * WAL_CHECKPOINT_FRAMES * (s->page_size + 24);
        s->wal_room = fs_free_bytes(s->path) >= need;
        s->wal_room_checked_at = frames;
        return s->wal_room;
}

static bool checkpoint_due(StoreSqlite *s, int frames) {
        if (frames >= WAL_CHECKPOINT_FRAMES)
                return true;
        return frames >= WAL_CHECKPOINT_FRAMES_LOW_SPACE && !wal_has_room(s, frames);
}

static int wal_hook(void *userdata, sqlite3 *db, const char *name, int frames) {
        StoreSqlite *s = userdata;
        /* Fewer frames than after the last commit: the WAL was restarted after a checkpoint. */
        int added = frames >= s->wal_frames ? frames - s->wal_frames : frames;
        __atomic_store_n(&s->wal_bytes, s->wal_bytes + (int64_t) added * (s->page_size + 24), __ATOMIC_RELAXED);
        s->wal_frames = frames;
        if (checkpoint_due(s, frames) && !s->defer_maintenance)
                (void) sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
        return SQLITE_OK;
}

/* A checkpoint writes up to WAL_CHECKPOINT_FRAMES pages back and syncs the database: tens
 * of milliseconds, which the loop must not spend; nor may it wait for a fold that fell
 * behind. */
static bool s_maintenance_due(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        return checkpoint_due(s, s->wal_frames) || fold_behind(s);
}

static void s_defer_maintenance(Store *store, bool defer) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        s->defer_maintenance = defer;
}

void *store_sqlite_handle(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        fold_thread_wait_idle(s->fold);
        return s->db;
}

static int64_t s_log_bytes(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        return __atomic_load_n(&s->wal_bytes, __ATOMIC_RELAXED);
}

static int64_t file_and_wal_size(const char *path) {
        struct stat st;
        int64_t total = 0;
        if (stat(path, &st) == 0)
                total += st.st_size;
        _cleanup_free_ char *wal = NULL;
        if (asprintf(&wal, "%s-wal", path) >= 0 && stat(wal, &st) == 0)
                total += st.st_size;
        return total;
}

static int64_t s_size(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        return file_and_wal_size(s->path) + file_and_wal_size(s->snap_path);
}

static void store_sqlite_free(StoreSqlite *s, bool abandon) {
        s->fold = abandon ? fold_thread_abandon(s->fold) : fold_thread_stop(s->fold);
        for (int i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(s->stmt[i]);
        sqlite3_close(s->db);
        fold_map_free(s);
        free(s->redo);
        free(s->pending_buf);
        free(s->path);
        free(s->snap_path);
        free(s);
}

static void s_free(Store *store) {
        StoreSqlite *s = container_of(store, StoreSqlite, store);
        if (s->in_transaction)
                (void) s_commit(store);
        /* Everything into the snapshot, so that the next start has nothing to read back
         * from events; unless a batch is still to be written again (then what it changed
         * is not in agend.db, and the next start reads back what is). */
        if (s->redo_len == 0 && !s->replay && s->error == 0)
                fold_hand_over(s, s->last_event_seq);
        store_sqlite_free(s, false);
}

void store_sqlite_crash(Store *store) {
        /* sqlite3_close() rolls back what was not committed, as the next open would. */
        store_sqlite_free(container_of(store, StoreSqlite, store), true);
}

static const StoreOps sqlite_ops = {
        .lease_save = s_lease_save,
        .lease_delete = s_lease_delete,
        .event_append = s_event_append,
        .token_save = s_token_save,
        .waiter_save = s_waiter_save,
        .waiter_delete = s_waiter_delete,
        .commit = s_commit,
        .load = s_load,
        .load_waiters = s_load_waiters,
        .meta_get = s_meta_get,
        .meta_set = s_meta_set,
        .history = s_history,
        .size = s_size,
        .log_bytes = s_log_bytes,
        .maintenance_due = s_maintenance_due,
        .defer_maintenance = s_defer_maintenance,
        /* size() stats the files, log_bytes() reads an atomic counter. */
        .sizes_any_thread = true,
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

/* Before the step 7 → 8, in a transaction of the snapshot's own: the snapshot gets
 * agend.db's leases table and folded_seq (again, if an earlier attempt stopped between
 * the two steps). */
#define SNAPSHOT_FILL                                                                           \
        "BEGIN;" SNAPSHOT_SCHEMA                                                                 \
        "DELETE FROM snap.leases;"                                                               \
        "INSERT INTO snap.leases SELECT id, secret, resource, units, exclusive, detached, token, uid, gid, pid," \
        "  comm, unit, description, created, ttl, deadline FROM main.leases;"                  \
        "INSERT OR REPLACE INTO snap.meta (key, value) VALUES ('folded_seq',"                   \
        "  coalesce((SELECT value FROM main.meta WHERE key = 'folded_seq'), '0'));"             \
        "COMMIT;"

/* agend.db's schema version, refused if newer than this agend's: before the snapshot is
 * attached (and so created), so that a refused database is left quite as it was. */
static int schema_version(StoreSqlite *s, int *ret, char **ret_error) {
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
        *ret = version;
        return 0;
}

static int migrate(StoreSqlite *s, int version, char **ret_error) {
        for (int v = version; v < STORE_SCHEMA_VERSION; v++) {
                _cleanup_free_ char *sql = NULL;
                if (asprintf(&sql, "%sBEGIN; %s PRAGMA user_version = %d; COMMIT;", v == 7 ? SNAPSHOT_FILL : "",
                             migrations[v], v + 1) < 0)
                        return -ENOMEM;
                char *msg = NULL;
                int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
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

static bool dir_read_only(const char *dir) {
        struct statvfs sv;
        return statvfs(dir, &sv) == 0 && (sv.f_flag & ST_RDONLY);
}

/* Not "cannot read ... move it away": the file may be fine, and moving it would lose
 * every lease. */
static int fail_read_only(char **ret_error, const char *path) {
        return fail(ret_error, -EROFS,
                    "%s is on a read-only file system, and agend must write to its database: "
                    "remount the file system read-write (the database was not changed)",
                    path);
}

/* The database holds every lease's secret: its files are 0600 whatever the umask. sqlite
 * creates -wal and -shm with the mode of the database file, so creating that one 0600
 * before sqlite opens it is enough for new files; files an older agend left readable by
 * others are narrowed, with a warning. */
static int prepare_files(const char *path, const char *dir, char **ret_error) {
        _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY, 0600);
        if (fd < 0) {
                int k = -errno;
                if (k == -EROFS || dir_read_only(dir))
                        return fail_read_only(ret_error, path);
                errno = -k;
                return fail(ret_error, k, "cannot open %s: %m", path);
        }
        static const char *const suffixes[] = { "", "-wal", "-shm" };
        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                _cleanup_free_ char *p = NULL;
                struct stat st;
                if (asprintf(&p, "%s%s", path, suffixes[i]) < 0)
                        return -ENOMEM;
                if (lstat(p, &st) < 0 || !S_ISREG(st.st_mode) || (st.st_mode & 0077) == 0)
                        continue;
                if (chmod(p, st.st_mode & 0700) < 0)
                        return fail(ret_error, -errno, "%s is readable by others (mode %04o) and cannot be changed: %m",
                                    p, (unsigned) (st.st_mode & 07777));
                log_warning("%s was readable by others (mode %04o): changed to %04o; it holds the leases' secrets",
                            p, (unsigned) (st.st_mode & 07777), (unsigned) (st.st_mode & 0700));
        }
        return 0;
}

/* Lays events out as a ring of size slots unless it is one already: after the migration
 * to schema 7, or when HistorySize= changed. Every change is folded first (rows that no
 * longer fit go), then, in one transaction, the newest rows move to their slots. */
static int ring_fit(StoreSqlite *s, int64_t size, char **ret_error) {
        if (s->ring_size == size)
                return 0;
        _cleanup_free_ char *sql = NULL;
        if (asprintf(&sql,
                     "CREATE TABLE events_resize AS SELECT " EVENT_COLUMNS " FROM events WHERE seq > %" PRIi64 ";"
                     "DELETE FROM events;"
                     "INSERT INTO events (slot, " EVENT_COLUMNS ") SELECT seq %% %" PRIi64 ", " EVENT_COLUMNS
                     " FROM events_resize;"
                     "DROP TABLE events_resize;"
                     "INSERT OR REPLACE INTO meta (key, value) VALUES ('ring_size', '%" PRIi64 "');",
                     s->last_event_seq - size, size, size) < 0)
                return -ENOMEM;
        char *msg = NULL;
        fold_hand_over(s, s->last_event_seq);
        int k = fold_thread_wait(s->fold, s->last_event_seq);
        if (k < 0)
                return fail(ret_error, k, "cannot fold the lease changes into %s: %s", s->snap_path,
                            strerror(-k));
        k = exec_simple(s, STMT_BEGIN);
        if (k == 0) {
                int rc = sqlite3_exec(s->db, sql, NULL, NULL, &msg);
                k = rc == SQLITE_OK ? 0 : db_errno(s, rc) ?: -EIO;
        }
        if (k == 0)
                k = exec_simple(s, STMT_COMMIT);
        s->error = 0;
        if (k < 0) {
                if (!sqlite3_get_autocommit(s->db))
                        (void) exec_simple(s, STMT_ROLLBACK);
                k = fail(ret_error, k, "cannot lay out the events of %s as a ring of %" PRIi64 " rows: %s", s->path,
                         size, msg ? msg : sqlite3_errmsg(s->db));
                sqlite3_free(msg);
                return k;
        }
        s->ring_size = size;
        return 0;
}

int store_sqlite_open(const char *dir, StoreSync sync, unsigned history_size, Store **ret,
                      char **ret_error) {
        StoreSqlite *s = calloc(1, sizeof(*s));
        if (!s)
                return -ENOMEM;
        s->store.ops = &sqlite_ops;
        hashmap_init(&s->fold_map);
        s->history_size = history_size;
        s->wal_room_checked_at = -1;
        if (asprintf(&s->path, "%s/agend.db", dir) < 0 || asprintf(&s->snap_path, "%s/agend-leases.db", dir) < 0) {
                free(s->path);
                free(s);
                return -ENOMEM;
        }

        int k = prepare_files(s->path, dir, ret_error);
        if (k < 0)
                goto fail;
        int rc = sqlite3_open_v2(s->path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                                 NULL);
        if (rc != SQLITE_OK) {
                k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO, "cannot open %s: %s", s->path,
                         s->db ? sqlite3_errmsg(s->db) : "out of memory");
                goto fail;
        }
        sqlite3_extended_result_codes(s->db, 0);

        /* journal_mode=WAL reads the header: a file that is not a database fails here,
         * before anything could be written to it.
         *
         * locking_mode=EXCLUSIVE first: the WAL index is then kept in this process's memory
         * instead of a shared -shm file, and the locks are taken once instead of four to six
         * fcntl() calls per transaction (at one client, two transactions per cycle: ~30 µs
         * of CPU per cycle, docs/performance.md). Durability is the same (synchronous= and
         * the WAL are unchanged; after a crash the next open rebuilds the index from the
         * WAL). The price: while agend runs, no other process can open the database; the
         * sqlite3 CLI reads it once agend has stopped (agend.lock already keeps a second
         * agend out). main. only: unqualified, the mode would also hold the snapshot
         * attached later, which the fold thread's own connection must write. */
        char *msg = NULL;
        rc = sqlite3_exec(s->db, "PRAGMA main.locking_mode=EXCLUSIVE; PRAGMA journal_mode=WAL", NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
                k = db_errno(s, rc) ?: -EIO;
                if (dir_read_only(dir))
                        k = fail_read_only(ret_error, s->path);
                else if (k == -ENOSPC)
                        k = fail(ret_error, k,
                                 "cannot open %s: its file system is full (%s), and opening needs a little "
                                 "space; free some and start again",
                                 s->path, strna(msg));
                else if (k == -EBADMSG)
                        k = fail(ret_error, k,
                                 "cannot read %s: %s; refusing to start rather than replace it "
                                 "(move it away to start with an empty database)",
                                 s->path, strna(msg));
                else
                        k = fail(ret_error, k, "cannot open %s: %s", s->path, strna(msg));
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
        int version = 0;
        k = schema_version(s, &version, ret_error);
        if (k < 0)
                goto fail;
        /* From schema 8 on the leases are in the snapshot: without it, refuse (and do not
         * make an empty one) rather than come up without them. */
        if (version >= 8 && access(s->snap_path, F_OK) < 0 && errno == ENOENT) {
                k = fail(ret_error, -ENOENT,
                         "%s is missing, and %s needs it: it holds the leases; refusing to start without "
                         "them (restore the file, or move %s away too to start with an empty database)",
                         s->snap_path, s->path, s->path);
                goto fail;
        }
        k = prepare_files(s->snap_path, dir, ret_error);
        if (k < 0)
                goto fail;
        /* The snapshot, attached for reading it at open (and for its migration): not held
         * exclusively, since the fold thread writes it on a connection of its own. */
        {
                char *q = sqlite3_mprintf("ATTACH %Q AS snap; PRAGMA snap.journal_mode=WAL;",
                                          s->snap_path);
                rc = q ? sqlite3_exec(s->db, q, NULL, NULL, &msg) : SQLITE_NOMEM;
                sqlite3_free(q);
                if (rc != SQLITE_OK) {
                        k = fail(ret_error, db_errno(s, rc) ?: -EIO, "cannot open %s: %s", s->snap_path, strna(msg));
                        sqlite3_free(msg);
                        goto fail;
                }
        }
        k = migrate(s, version, ret_error);
        if (k < 0)
                goto fail;

        /* A quick check that the schema is what we expect and readable. */
        rc = sqlite3_exec(s->db, "SELECT slot, seq, change FROM events LIMIT 1;", NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
                k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO, "cannot read %s: %s", s->path, strna(msg));
                sqlite3_free(msg);
                goto fail;
        }
        rc = sqlite3_exec(s->db, "SELECT count(*) FROM snap.leases; " CURRENT_LEASES_VIEW, NULL, NULL, &msg);
        if (rc == SQLITE_OK) {
                sqlite3_stmt *st = NULL;
                if (sqlite3_prepare_v2(s->db, "SELECT value FROM snap.meta WHERE key = 'folded_seq'", -1, &st, NULL) ==
                    SQLITE_OK) {
                        rc = sqlite3_step(st);
                        if (rc == SQLITE_ROW)
                                s->folded = sqlite3_column_int64(st, 0);
                        rc = rc == SQLITE_ROW ? SQLITE_OK : rc == SQLITE_DONE ? SQLITE_CORRUPT : rc;
                } else
                        rc = sqlite3_errcode(s->db);
                sqlite3_finalize(st);
        }
        if (rc != SQLITE_OK) {
                k = fail(ret_error, sqlite_to_errno(rc) ?: -EIO,
                         "cannot read the leases snapshot %s that %s needs: %s; refusing to start without "
                         "the leases (restore the file, or move both away to start with an empty database)",
                         s->snap_path, s->path, msg ? msg : sqlite3_errmsg(s->db));
                sqlite3_free(msg);
                goto fail;
        }

        for (int i = 0; i < _STMT_MAX; i++) {
                rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL);
                s->maybe_bound[i] = 0;  /* a new statement has every parameter NULL */
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
        {
                _cleanup_free_ char *r = NULL;
                if (s_meta_get(&s->store, "ring_size", &r) >= 0 && r)
                        s->ring_size = MAX(strtoll(r, NULL, 10), 0);
        }
        {
                /* A scan of the ring (seq has no index), once. */
                sqlite3_stmt *st = NULL;
                if (sqlite3_prepare_v2(s->db, "SELECT coalesce(max(seq), 0) FROM events;", -1, &st, NULL) ==
                            SQLITE_OK &&
                    sqlite3_step(st) == SQLITE_ROW)
                        s->last_event_seq = sqlite3_column_int64(st, 0);
                sqlite3_finalize(st);
                /* An empty table (schema 6 trimmed it), or a snapshot ahead of a batch that
                 * never made it (ring_guard()): new rows still go after the fold. */
                s->last_event_seq = MAX(s->last_event_seq, s->folded);
        }
        /* Every change in the log may be about a lease in the table: none is dropped. */
        s->table_token_max = UINT64_MAX;
        k = fold_map_load(s);
        s->table_token_max = s->last_token;
        if (k < 0) {
                k = fail(ret_error, k, "cannot read %s: %s", s->path, sqlite3_errmsg(s->db));
                goto fail;
        }
        k = fold_thread_start(s->snap_path, sync, s->folded, &s->fold, ret_error);
        if (k < 0)
                goto fail;
        k = ring_fit(s, MAX((int64_t) history_size, (int64_t) RING_MIN), ret_error);
        if (k < 0)
                goto fail;
        s->page_size = 4096;
        {
                sqlite3_stmt *st = NULL;
                if (sqlite3_prepare_v2(s->db, "PRAGMA page_size", -1, &st, NULL) == SQLITE_OK &&
                    sqlite3_step(st) == SQLITE_ROW)
                        s->page_size = sqlite3_column_int(st, 0);
                sqlite3_finalize(st);
        }
        sqlite3_wal_hook(s->db, wal_hook, s);
        *ret = &s->store;
        return 0;

fail:
        store_sqlite_free(s, false);
        return k;
}

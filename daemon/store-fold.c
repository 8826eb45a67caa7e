/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "macro.h"
#include "store-fold.h"

/* After a failed fold, the next try waits this long, unless more is handed over or a
 * commit waits for the fold. */
#define FOLD_RETRY_NSEC (100 * 1000 * 1000)
#define FOLD_BUSY_MSEC 100

typedef enum FoldStmt {
        FOLD_SAVE,
        FOLD_DELETE,
        FOLD_POINT,
        FOLD_BEGIN,
        FOLD_COMMIT,
        FOLD_ROLLBACK,
        _FOLD_STMT_MAX,
} FoldStmt;

static const char *const fold_sql[_FOLD_STMT_MAX] = {
        [FOLD_SAVE] = "INSERT OR REPLACE INTO leases (id, secret, resource, units, exclusive, detached, token,"
                      " uid, gid, pid, comm, unit, description, created, ttl, deadline)"
                      " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        [FOLD_DELETE] = "DELETE FROM leases WHERE id = ?1",
        [FOLD_POINT] = "INSERT OR REPLACE INTO meta (key, value) VALUES ('folded_seq', CAST(?1 AS TEXT))",
        [FOLD_BEGIN] = "BEGIN",
        [FOLD_COMMIT] = "COMMIT",
        [FOLD_ROLLBACK] = "ROLLBACK",
};

struct FoldThread {
        pthread_t thread;
        pthread_mutex_t lock;
        pthread_cond_t work;    /* handed over, or stop */
        pthread_cond_t done;    /* folded moved, or an attempt failed */
        /* Under lock: */
        FoldEntry *head, *tail; /* handed over, not written yet */
        int64_t upto;           /* every change up to it is handed over */
        int64_t folded;         /* every change up to it is in the snapshot (read without the lock too) */
        int error;              /* of the last attempt: 0, or it failed */
        unsigned attempts;      /* made so far */
        bool busy;              /* writing a batch taken off the list */
        bool stop;
        bool abandon;           /* stop without writing what is left */
        /* The thread's own: */
        sqlite3 *db;
        sqlite3_stmt *stmt[_FOLD_STMT_MAX];
        char *path;
};

static void entries_free(FoldEntry *e) {
        while (e) {
                FoldEntry *next = e->next;
                free(e);
                e = next;
        }
}

static int step(FoldThread *t, sqlite3_stmt *st) {
        int rc = sqlite3_step(st);
        sqlite3_reset(st);
        sqlite3_clear_bindings(st);
        return rc == SQLITE_DONE ? 0 : sqlite_db_errno(t->db, rc) ?: -EIO;
}

static int write_entry(FoldThread *t, const FoldEntry *e) {
        sqlite3_stmt *st = t->stmt[e->save ? FOLD_SAVE : FOLD_DELETE];
        size_t n = e->save ? LEASE_COLS : 1;
        for (size_t i = 0; i < n; i++) {
                const Value *v = &e->v[i];
                if (v->type == VALUE_INT)
                        sqlite3_bind_int64(st, (int) i + 1, v->i);
                else if (v->type == VALUE_TEXT)
                        sqlite3_bind_text(st, (int) i + 1, v->s, -1, SQLITE_STATIC);
        }
        return step(t, st);
}

/* One transaction: the entries, in seq order (a later change of an id after an earlier
 * one), and the new fold point. */
static int write_batch(FoldThread *t, const FoldEntry *head, int64_t upto) {
        int k = step(t, t->stmt[FOLD_BEGIN]);
        for (const FoldEntry *e = head; k == 0 && e; e = e->next)
                k = write_entry(t, e);
        if (k == 0) {
                sqlite3_bind_int64(t->stmt[FOLD_POINT], 1, upto);
                k = step(t, t->stmt[FOLD_POINT]);
        }
        if (k == 0)
                k = step(t, t->stmt[FOLD_COMMIT]);
        if (k < 0 && !sqlite3_get_autocommit(t->db))
                (void) step(t, t->stmt[FOLD_ROLLBACK]);
        return k;
}

static void retry_wait(FoldThread *t) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += FOLD_RETRY_NSEC;
        if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
        }
        (void) pthread_cond_timedwait(&t->work, &t->lock, &ts);
}

static void *thread_main(void *userdata) {
        FoldThread *t = userdata;
        pthread_mutex_lock(&t->lock);
        for (;;) {
                while (!t->stop && t->upto <= t->folded)
                        pthread_cond_wait(&t->work, &t->lock);
                if (t->upto <= t->folded || t->abandon)
                        break;  /* stopped, with nothing left (or to be left) */
                FoldEntry *head = t->head;
                int64_t upto = t->upto;
                t->head = t->tail = NULL;
                t->busy = true;
                pthread_mutex_unlock(&t->lock);

                int k = write_batch(t, head, upto);

                pthread_mutex_lock(&t->lock);
                t->busy = false;
                t->attempts++;
                if (k == 0) {
                        entries_free(head);
                        __atomic_store_n(&t->folded, upto, __ATOMIC_RELEASE);
                        if (t->error != 0)
                                log_notice("folding lease changes into %s works again", t->path);
                        t->error = 0;
                } else {
                        /* Back in front of what came meanwhile; tried again, the whole of it. */
                        if (head) {
                                FoldEntry *last = head;
                                while (last->next)
                                        last = last->next;
                                last->next = t->head;
                                if (t->head)
                                        t->head->prev = last;
                                else
                                        t->tail = last;
                                t->head = head;
                        }
                        if (t->error == 0)
                                log_warning_errno(k, "cannot fold lease changes into %s: %m; trying again", t->path);
                        t->error = k;
                }
                pthread_cond_broadcast(&t->done);
                if (k < 0) {
                        if (t->stop)
                                break;  /* the changes are still in events: the next start folds them */
                        retry_wait(t);
                }
        }
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

void fold_thread_hand_over(FoldThread *t, FoldEntry *head, FoldEntry *tail, int64_t upto) {
        pthread_mutex_lock(&t->lock);
        if (head) {
                head->prev = t->tail;
                *(t->tail ? &t->tail->next : &t->head) = head;
                t->tail = tail;
                tail->next = NULL;
        }
        t->upto = MAX(t->upto, upto);
        pthread_cond_signal(&t->work);
        pthread_mutex_unlock(&t->lock);
}

int64_t fold_thread_folded(FoldThread *t) {
        return __atomic_load_n(&t->folded, __ATOMIC_ACQUIRE);
}

/* Until folded reaches upto, or an attempt begun after the call failed (a failure before
 * it may be over: the thread is asked to try again at once). */
static int wait_folded(FoldThread *t, int64_t upto) {
        int k = 0;
        pthread_mutex_lock(&t->lock);
        unsigned want = t->attempts + 1 + t->busy;
        pthread_cond_signal(&t->work);
        while (t->folded < upto) {
                if (t->error < 0 && t->attempts >= want) {
                        k = t->error;
                        break;
                }
                pthread_cond_wait(&t->done, &t->lock);
        }
        pthread_mutex_unlock(&t->lock);
        return k;
}

int fold_thread_wait(FoldThread *t, int64_t upto) {
        return wait_folded(t, upto);
}

void fold_thread_wait_idle(FoldThread *t) {
        pthread_mutex_lock(&t->lock);
        int64_t upto = t->upto;
        pthread_mutex_unlock(&t->lock);
        (void) wait_folded(t, upto);
}

static void fold_thread_free(FoldThread *t) {
        for (int i = 0; i < _FOLD_STMT_MAX; i++)
                sqlite3_finalize(t->stmt[i]);
        sqlite3_close(t->db);
        entries_free(t->head);
        pthread_cond_destroy(&t->work);
        pthread_cond_destroy(&t->done);
        pthread_mutex_destroy(&t->lock);
        free(t->path);
        free(t);
}

static FoldThread *stop_thread(FoldThread *t, bool abandon) {
        if (!t)
                return NULL;
        pthread_mutex_lock(&t->lock);
        t->stop = true;
        t->abandon = abandon;
        pthread_cond_signal(&t->work);
        pthread_mutex_unlock(&t->lock);
        pthread_join(t->thread, NULL);
        fold_thread_free(t);
        return NULL;
}

FoldThread *fold_thread_stop(FoldThread *t) {
        return stop_thread(t, false);
}

FoldThread *fold_thread_abandon(FoldThread *t) {
        return stop_thread(t, true);
}

int fold_thread_start(const char *path, StoreSync sync, int64_t folded, FoldThread **ret, char **ret_error) {
        FoldThread *t = calloc(1, sizeof(*t));
        if (!t)
                return -ENOMEM;
        pthread_mutex_init(&t->lock, NULL);
        pthread_cond_init(&t->work, NULL);
        pthread_cond_init(&t->done, NULL);
        t->folded = t->upto = folded;
        t->path = strdup(path);
        int k = 0;
        if (!t->path) {
                k = -ENOMEM;
                goto fail;
        }
        int rc = sqlite3_open_v2(path, &t->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
        /* agend's other connection reads the snapshot at start-up (and the sqlite3 CLI may):
         * a lock held for a moment is waited for, not logged as a failed fold. */
        if (rc == SQLITE_OK)
                rc = sqlite3_busy_timeout(t->db, FOLD_BUSY_MSEC);
        if (rc == SQLITE_OK)
                rc = sqlite3_exec(t->db,
                                  sync == STORE_SYNC_FULL ? "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL"
                                                          : "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
                                  NULL, NULL, NULL);
        for (int i = 0; rc == SQLITE_OK && i < _FOLD_STMT_MAX; i++)
                rc = sqlite3_prepare_v3(t->db, fold_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &t->stmt[i], NULL);
        if (rc != SQLITE_OK) {
                k = sqlite_db_errno(t->db, rc) ?: -EIO;
                if (ret_error && asprintf(ret_error, "cannot open %s: %s", path,
                                          t->db ? sqlite3_errmsg(t->db) : "out of memory") < 0)
                        *ret_error = NULL;
                goto fail;
        }
        k = -pthread_create(&t->thread, NULL, thread_main, t);
        if (k < 0)
                goto fail;
        *ret = t;
        return 0;

fail:
        fold_thread_free(t);
        return k;
}

/* SPDX-License-Identifier: MIT */
/* The commit pipeline (daemon/store-pipe.c) over the in-memory store: every record field
 * survives the hand-off to the commit thread, reads during a commit in flight see every
 * recorded change, results come back in submit order, and a failed commit reports its
 * error. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "macro.h"
#include "store-pipe.h"

typedef struct Fixture {
        struct ev_loop *loop;
        StorePipe *pipe;
        Store *s;
        int results[8];
        unsigned n_results;
} Fixture;

static void on_done(StorePipe *p, int k, void *userdata) {
        Fixture *f = userdata;
        assert_true(f->n_results < ELEMENTSOF(f->results));
        f->results[f->n_results++] = k;
        ev_break(f->loop, EVBREAK_ONE);
}

static Fixture *fixture_new(const StoreMemoryOptions *o) {
        Fixture *f = calloc(1, sizeof(*f));
        Store *inner;
        assert_int_equal(store_memory_new(o, &inner), 0);
        f->loop = ev_loop_new(EVFLAG_AUTO);
        assert_non_null(f->loop);
        assert_int_equal(store_pipe_new(f->loop, inner, on_done, f, &f->pipe), 0);
        f->s = store_pipe_store(f->pipe);
        return f;
}

static void fixture_free(Fixture *f) {
        store_pipe_free(f->pipe);
        ev_loop_destroy(f->loop);
        free(f);
}

/* Runs the loop until the commit in flight has reported. */
static void wait_done(Fixture *f) {
        unsigned n = f->n_results;
        while (f->n_results == n)
                ev_run(f->loop, EVRUN_ONCE);
}

static const LeaseRecord lease = {
        .id = "0123456789abcdef0123456789abcdef",
        .secret = "secret",
        .resource = "res",
        .description = "a \"lease\"",
        .units = 3,
        .exclusive = true,
        .detached = true,
        .token = 42,
        .owner = { .uid = 1000, .gid = 100, .pid = -7, .comm = "comm", .unit = NULL },
        .created = 1700000000000000,
        .ttl = 5000000,
        .deadline = UINT64_MAX,
};

static int load_one(const LeaseRecord *r, void *userdata) {
        LeaseRecord *out = userdata;
        assert_string_equal(r->id, lease.id);
        assert_string_equal(r->secret, lease.secret);
        assert_string_equal(r->resource, lease.resource);
        assert_string_equal(r->description, lease.description);
        assert_int_equal(r->units, lease.units);
        assert_true(r->exclusive && r->detached);
        assert_int_equal(r->token, lease.token);
        assert_int_equal(r->owner.uid, 1000);
        assert_int_equal(r->owner.gid, 100);
        assert_int_equal(r->owner.pid, -7);
        assert_string_equal(r->owner.comm, "comm");
        assert_null(r->owner.unit);
        assert_int_equal(r->created, lease.created);
        assert_int_equal(r->ttl, lease.ttl);
        assert_int_equal(r->deadline, lease.deadline);
        out->units++;
        return 0;
}

typedef struct Seen {
        unsigned n;
        char types[4][16];
        bool revoked_by_ok;
} Seen;

static int history_one(const EventRecord *e, void *userdata) {
        Seen *s = userdata;
        if (s->n < 4)
                snprintf(s->types[s->n], sizeof(s->types[0]), "%s", e->type);
        if (strcmp(e->type, "revoked") == 0)
                s->revoked_by_ok = e->revoked_by && e->revoked_by->uid == 0 && e->revoked_by->unit &&
                                   strcmp(e->revoked_by->unit, "x.service") == 0 && e->owner &&
                                   e->owner->uid == 1000 && e->reason && strcmp(e->reason, "why") == 0;
        s->n++;
        return 0;
}

static int waiter_grace_start(const WaiterRecord *r, void *userdata) {
        if (r->seq == 10)
                *(usec_t *) userdata = r->unclaimed_since;
        return 0;
}

static void test_round_trip_and_reads_in_flight(void **state) {
        /* Every commit sleeps 50 ms on the commit thread: the reads below happen while the
         * first one is in flight (or after; either way they must see everything). */
        Fixture *f = fixture_new(&(StoreMemoryOptions) { .history_size = 100, .commit_delay = 50000 });
        const OwnerRecord by = { .uid = 0, .gid = 0, .pid = 1, .comm = NULL, .unit = "x.service" };

        assert_int_equal(f->s->ops->lease_save(f->s, &lease), 0);
        assert_int_equal(f->s->ops->event_append(f->s, &(EventRecord) { .type = "granted", .resource = "res",
                                                                       .lease = lease.id, .token = 42,
                                                                       .owner = &lease.owner, .units = 3 }), 0);
        assert_int_equal(f->s->ops->meta_set(f->s, "k", "v1"), 0);
        assert_true(store_pipe_dirty(f->pipe));
        assert_int_equal(store_pipe_submit(f->pipe), 0);
        assert_true(store_pipe_in_flight(f->pipe));
        assert_false(store_pipe_dirty(f->pipe));
        assert_int_equal(store_pipe_submit(f->pipe), -EBUSY);

        /* Decided while the first batch is in flight. */
        assert_int_equal(f->s->ops->event_append(f->s, &(EventRecord) { .type = "revoked", .resource = "res",
                                                                       .lease = lease.id, .owner = &lease.owner,
                                                                       .reason = "why", .revoked_by = &by }),
                         0);
        assert_int_equal(f->s->ops->meta_set(f->s, "k", "v2"), 0);

        /* Reads wait for the commit in flight, then see it (and, on a store whose reads see
         * its open transaction, as sqlite's do, what was recorded since: the in-memory store
         * reads only what is committed). */
        _cleanup_free_ char *v = NULL;
        assert_int_equal(f->s->ops->meta_get(f->s, "k", &v), 0);
        assert_string_equal(v, "v1");
        Seen seen = {};
        assert_int_equal(f->s->ops->history(f->s, "res", 0, 10, history_one, &seen), 0);
        assert_int_equal(seen.n, 1);
        assert_string_equal(seen.types[0], "granted");
        LeaseRecord count = {};
        assert_int_equal(f->s->ops->load(f->s, load_one, &count), 0);
        assert_int_equal(count.units, 1);
        /* What the reads applied to the store's transaction is still owed a commit. */
        assert_true(store_pipe_dirty(f->pipe));

        wait_done(f);
        assert_int_equal(f->results[0], 1);
        assert_int_equal(store_pipe_submit(f->pipe), 0);
        wait_done(f);
        assert_int_equal(f->n_results, 2);
        assert_int_equal(f->results[1], 1);
        free(v);
        v = NULL;
        assert_int_equal(f->s->ops->meta_get(f->s, "k", &v), 0);
        assert_string_equal(v, "v2");
        seen = (Seen) {};
        assert_int_equal(f->s->ops->history(f->s, "res", 0, 10, history_one, &seen), 0);
        assert_int_equal(seen.n, 2);
        assert_string_equal(seen.types[1], "revoked");
        assert_true(seen.revoked_by_ok);
        assert_int_equal(f->s->ops->lease_delete(f->s, lease.id), 0);
        assert_int_equal(f->s->ops->waiter_save(f->s, &(WaiterRecord) { .ticket = "t", .seq = 9, .resource = "res",
                                                                       .description = "", .units = 1,
                                                                       .owner = lease.owner }), 0);
        assert_int_equal(f->s->ops->waiter_delete(f->s, 9), 0);
        /* Every field of a waiter goes through the pipe, its grace start too. */
        assert_int_equal(f->s->ops->waiter_save(f->s, &(WaiterRecord) { .ticket = "u", .seq = 10, .resource = "res",
                                                                       .description = "", .units = 1,
                                                                       .owner = lease.owner, .since = 7,
                                                                       .unclaimed_since = 12345 }), 0);
        usec_t unclaimed_since = 0;
        assert_int_equal(f->s->ops->commit(f->s), 1);
        assert_int_equal(f->s->ops->load_waiters(f->s, waiter_grace_start, &unclaimed_since), 0);
        assert_int_equal(unclaimed_since, 12345);
        assert_int_equal(f->s->ops->waiter_delete(f->s, 10), 0);
        assert_int_equal(f->s->ops->token_save(f->s, 1000), 0);
        /* The synchronous commit (start-up, shutdown). */
        assert_int_equal(f->s->ops->commit(f->s), 1);
        count.units = 0;
        assert_int_equal(f->s->ops->load(f->s, load_one, &count), 0);
        assert_int_equal(count.units, 0);
        fixture_free(f);
}

static void test_failed_commit_reported(void **state) {
        Fixture *f = fixture_new(&(StoreMemoryOptions) { .history_size = 10, .fail_commit = 2 });
        for (int i = 0; i < 2; i++) {
                assert_int_equal(f->s->ops->meta_set(f->s, "k", i ? "b" : "a"), 0);
                assert_int_equal(store_pipe_submit(f->pipe), 0);
                wait_done(f);
        }
        assert_int_equal(f->n_results, 2);
        assert_int_equal(f->results[0], 1);
        assert_int_equal(f->results[1], -EIO);
        fixture_free(f);
}

/* The inline commit (the loop idle): it commits what is recorded and returns the result;
 * it never overtakes a commit in flight (-EBUSY, and the batch stays recorded for the
 * commit after that one); a slow commit, or a large batch, goes to the thread. */
static void test_inline_commit(void **state) {
        /* Fast commits: inline is allowed; the 2nd commit fails and says so. */
        Fixture *f = fixture_new(&(StoreMemoryOptions) { .history_size = 10, .fail_commit = 2 });
        assert_true(store_pipe_may_commit_inline(f->pipe));
        assert_int_equal(f->s->ops->meta_set(f->s, "k", "a"), 0);
        assert_int_equal(store_pipe_commit_inline(f->pipe), 1);
        assert_false(store_pipe_dirty(f->pipe));
        _cleanup_free_ char *v = NULL;
        assert_int_equal(f->s->ops->meta_get(f->s, "k", &v), 0);
        assert_string_equal(v, "a");
        assert_int_equal(f->s->ops->meta_set(f->s, "k", "b"), 0);
        assert_int_equal(store_pipe_commit_inline(f->pipe), -EIO);
        assert_int_equal(f->n_results, 0);      /* done() is for the thread's commits */
        fixture_free(f);

        /* A large batch (a step of mass expiry) goes to the thread, however fast the
         * commits were so far. */
        f = fixture_new(&(StoreMemoryOptions) { .history_size = 10 });
        assert_int_equal(f->s->ops->meta_set(f->s, "k", "a"), 0);
        assert_true(store_pipe_may_commit_inline(f->pipe));
        for (unsigned i = 0; i * sizeof(lease) <= STORE_PIPE_INLINE_MAX_BYTES; i++)
                assert_int_equal(f->s->ops->lease_save(f->s, &lease), 0);
        assert_false(store_pipe_may_commit_inline(f->pipe));
        assert_int_equal(store_pipe_submit(f->pipe), 0);
        wait_done(f);
        assert_int_equal(f->results[0], 1);
        /* (Whether the next small batch may go inline again depends on how long that
         * commit took, which a slow run such as valgrind's makes long: not asserted.) */
        fixture_free(f);

        /* Every commit takes 50 ms. */
        f = fixture_new(&(StoreMemoryOptions) { .history_size = 10, .commit_delay = 50000 });
        assert_int_equal(f->s->ops->meta_set(f->s, "k", "1"), 0);
        assert_int_equal(store_pipe_submit(f->pipe), 0);
        /* Batch 2, decided while batch 1 is in flight. */
        assert_int_equal(f->s->ops->meta_set(f->s, "k", "2"), 0);
        assert_false(store_pipe_may_commit_inline(f->pipe));
        assert_int_equal(store_pipe_commit_inline(f->pipe), -EBUSY);
        assert_true(store_pipe_dirty(f->pipe));
        wait_done(f);
        assert_int_equal(f->results[0], 1);
        free(v);
        v = NULL;
        assert_int_equal(f->s->ops->meta_get(f->s, "k", &v), 0);
        assert_string_equal(v, "1");
        /* Idle now, but commits take 50 ms: the loop must not block for that long. */
        assert_false(store_pipe_may_commit_inline(f->pipe));
        assert_int_equal(store_pipe_submit(f->pipe), 0);
        wait_done(f);
        assert_int_equal(f->results[1], 1);
        free(v);
        v = NULL;
        assert_int_equal(f->s->ops->meta_get(f->s, "k", &v), 0);
        assert_string_equal(v, "2");
        fixture_free(f);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_round_trip_and_reads_in_flight),
                cmocka_unit_test(test_failed_commit_reported),
                cmocka_unit_test(test_inline_commit),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

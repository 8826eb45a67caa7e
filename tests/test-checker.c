/* SPDX-License-Identifier: MIT */
/* The history checker (checker.c) on crafted histories: one that keeps every rule passes
 * clean, and each kind of violation (overlap on a mutex, a counted resource over its
 * capacity, a token not above an earlier grant's, a token handed out twice, a waiter
 * overtaken, a lease gone after a restart with no end in History, a Reclaim with another
 * token, a place taken back by ticket overtaken by one queued after it) is caught and
 * named. Times are in ms here, µs in the checker. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "checker.h"

#define MS(x) ((usec_t) (x) * USEC_PER_MSEC)

typedef struct Fixture {
        Checker *c;
        int mutex, pool;
} Fixture;

static int setup(void **state) {
        static Fixture f;
        f = (Fixture) {};
        assert_int_equal(checker_new(&f.c), 0);
        f.mutex = checker_add_resource(f.c, "m", 1);
        f.pool = checker_add_resource(f.c, "pool", 3);
        assert_true(f.mutex >= 0 && f.pool >= 0);
        *state = &f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        checker_free(f->c);
        return 0;
}

/* A grant: client, resource, units, token, sent, queued (0 = none), granted, end (ms;
 * -1 = still held), epoch. */
static void grant(Fixture *f, unsigned client, int res, unsigned units, uint64_t token, int sent, int queued,
                  int granted, int end, unsigned epoch) {
        char id[32];
        snprintf(id, sizeof(id), "L%llu", (unsigned long long) token);
        CheckGrant g = {
                .client = client,
                .resource = (unsigned) res,
                .units = units,
                .token = token,
                .id = id,
                .epoch = epoch,
                .sent = MS(sent),
                .queued = queued ? MS(queued) : 0,
                .granted = MS(granted),
                .end = end < 0 ? USEC_INFINITY : MS(end),
        };
        assert_int_equal(checker_add_grant(f->c, &g), 0);
}

/* A grant after a restart by a re-sent Acquire that presented a ticket: kind says what
 * came of it; its place was created by a call sent at place_sent, first told "queued" at
 * place_queued, in place_epoch (ms). */
static void grant_ticket(Fixture *f, unsigned client, int res, unsigned units, uint64_t token, int sent, int queued,
                         int granted, int end, unsigned epoch, CheckTicket kind, int place_sent, int place_queued,
                         unsigned place_epoch) {
        char id[32];
        snprintf(id, sizeof(id), "L%llu", (unsigned long long) token);
        CheckGrant g = {
                .client = client,
                .resource = (unsigned) res,
                .units = units,
                .token = token,
                .id = id,
                .epoch = epoch,
                .sent = MS(sent),
                .queued = queued ? MS(queued) : 0,
                .granted = MS(granted),
                .end = end < 0 ? USEC_INFINITY : MS(end),
                .ticket = kind,
                .place_sent = MS(place_sent),
                .place_queued = MS(place_queued),
                .place_epoch = place_epoch,
        };
        assert_int_equal(checker_add_grant(f->c, &g), 0);
}

/* A lease held from 2 ms in epoch 0 across a kill at 50, reclaimed, released at end. */
static void held_across_kill(Fixture *f, int res, unsigned units, int end) {
        CheckGrant held = { .client = 9, .resource = (unsigned) res, .units = units, .token = 1, .id = "L1",
                            .epoch = 0, .sent = MS(1), .granted = MS(2), .end = MS(end), .reclaims = 1 };
        assert_int_equal(checker_add_grant(f->c, &held), 0);
}

/* Exactly one violation, and it is of this kind. */
static void assert_one_violation(Fixture *f, const char *kind) {
        unsigned n = checker_run(f->c);
        if (n != 1) {
                checker_print_violations(f->c, stderr, 10);
                fail_msg("expected one %s violation, got %u", kind, n);
        }
        const char *v = checker_violation(f->c, 0);
        assert_non_null(v);
        if (strncmp(v, kind, strlen(kind)) != 0)
                fail_msg("expected a %s violation, got: %s", kind, v);
}

/* A hand-over to a waiter, a counted resource used to its capacity, a restart with a
 * reclaim and a lease whose release committed just before a kill: all as agend should. */
static void test_clean(void **state) {
        Fixture *f = *state;
        /* Mutex: client 0 holds 2..20; client 1 asked at 5, queued at 6, granted at 21. */
        grant(f, 0, f->mutex, 1, 1, 1, 0, 2, 20, 0);
        grant(f, 1, f->mutex, 1, 2, 5, 6, 21, 30, 0);
        /* Pool (3 units): 2 + 1 at once, then a third taking the freed unit exactly when
         * the first sends its release (half-open intervals). */
        grant(f, 2, f->pool, 2, 3, 1, 0, 2, 40, 0);
        grant(f, 3, f->pool, 1, 4, 3, 0, 4, 25, 0);
        grant(f, 4, f->pool, 1, 5, 24, 0, 25, 50, 0);
        /* Kill at 60; a restart; client 0's lease held across it (reclaimed, same token). */
        CheckGrant held = { .client = 0, .resource = (unsigned) f->mutex, .units = 1, .token = 6, .id = "L6",
                            .epoch = 0, .sent = MS(31), .granted = MS(32), .end = MS(80), .reclaims = 1 };
        assert_int_equal(checker_add_grant(f->c, &held), 0);
        /* Client 2 sent its release at 55; the kill came before the reply; the Reclaim is
         * refused and History shows the release. */
        CheckGrant gone = { .client = 2, .resource = (unsigned) f->pool, .units = 1, .token = 7, .id = "L7",
                            .epoch = 0, .sent = MS(51), .granted = MS(52), .end = MS(55),
                            .reclaim_refused = true, .history_end = "released: released by the holder" };
        assert_int_equal(checker_add_grant(f->c, &gone), 0);
        /* After the restart: tokens above every earlier one; a waiter queued in epoch 0 is
         * not compared with grants of epoch 1 (its call died with the daemon). */
        grant(f, 1, f->mutex, 1, 100, 81, 0, 82, 90, 1);
        grant(f, 3, f->pool, 3, 101, 61, 62, 70, -1, 1);

        unsigned n = checker_run(f->c);
        if (n != 0)
                checker_print_violations(f->c, stderr, 10);
        assert_int_equal(n, 0);
        CheckStats s;
        checker_get_stats(f->c, &s);
        assert_int_equal(s.grants, 9);
        assert_int_equal(s.queued, 2);
        assert_int_equal(s.reclaims, 1);
        assert_int_equal(s.reclaims_refused, 1);
}

static void test_mutex_overlap(void **state) {
        Fixture *f = *state;
        grant(f, 0, f->mutex, 1, 1, 0, 0, 10, 20, 0);
        grant(f, 1, f->mutex, 1, 2, 12, 0, 15, 30, 0);
        assert_one_violation(f, "capacity:");
}

/* Held until the end of the run still counts. */
static void test_overlap_with_unreleased(void **state) {
        Fixture *f = *state;
        grant(f, 0, f->mutex, 1, 1, 0, 0, 10, -1, 0);
        grant(f, 1, f->mutex, 1, 2, 500, 0, 501, 600, 3);
        assert_true(checker_run(f->c) >= 1);
        assert_non_null(strstr(checker_violation(f->c, 0), "capacity: m "));
}

static void test_pool_over_capacity(void **state) {
        Fixture *f = *state;
        grant(f, 0, f->pool, 2, 1, 0, 0, 1, 50, 0);
        grant(f, 1, f->pool, 1, 2, 0, 0, 2, 50, 0);
        /* 4 units from 10 to 20. */
        grant(f, 2, f->pool, 1, 3, 9, 0, 10, 20, 0);
        assert_one_violation(f, "capacity:");
        assert_non_null(strstr(checker_violation(f->c, 0), "held 4 units"));
}

static void test_token_not_increasing(void **state) {
        Fixture *f = *state;
        /* Across a restart: acknowledged at 10, the next grant asked at 100 gets a lower token. */
        grant(f, 0, f->mutex, 1, 50, 0, 0, 10, 20, 0);
        grant(f, 1, f->mutex, 1, 40, 100, 0, 101, 110, 1);
        assert_one_violation(f, "token:");
}

static void test_token_twice(void **state) {
        Fixture *f = *state;
        grant(f, 0, f->mutex, 1, 7, 0, 0, 10, 20, 0);
        grant(f, 1, f->pool, 1, 7, 0, 0, 10, 20, 0);
        assert_one_violation(f, "token:");
        assert_non_null(strstr(checker_violation(f->c, 0), "twice"));
}

/* Concurrent grants (neither acknowledged before the other was asked for) may come in
 * either token order. */
static void test_concurrent_any_order(void **state) {
        Fixture *f = *state;
        grant(f, 0, f->pool, 1, 9, 0, 0, 10, 20, 0);
        grant(f, 1, f->pool, 1, 8, 5, 0, 11, 20, 0);
        assert_int_equal(checker_run(f->c), 0);
}

static void test_fifo_overtaken(void **state) {
        Fixture *f = *state;
        grant(f, 0, f->mutex, 1, 1, 0, 0, 1, 10, 0);
        /* Client 1 queued at 3; client 2 asked at 4 and was served first. */
        grant(f, 1, f->mutex, 1, 3, 2, 3, 21, 30, 0);
        grant(f, 2, f->mutex, 1, 2, 4, 5, 11, 20, 0);
        assert_one_violation(f, "fifo:");
}

/* FIFO holds on a counted resource too: a large request at the head is not overtaken. */
static void test_fifo_counted(void **state) {
        Fixture *f = *state;
        grant(f, 0, f->pool, 2, 1, 0, 0, 1, 30, 0);
        grant(f, 1, f->pool, 2, 3, 2, 3, 31, 40, 0);    /* waits for 2 units */
        grant(f, 2, f->pool, 1, 2, 4, 0, 5, 20, 0);     /* 1 unit free: taken past the waiter */
        assert_one_violation(f, "fifo:");
}

static void test_lost_grant(void **state) {
        Fixture *f = *state;
        CheckGrant g = { .client = 0, .resource = (unsigned) f->mutex, .units = 1, .token = 5, .id = "L5",
                         .sent = MS(1), .granted = MS(2), .end = MS(10), .reclaim_refused = true };
        assert_int_equal(checker_add_grant(f->c, &g), 0);
        assert_one_violation(f, "lost:");
        assert_non_null(strstr(checker_violation(f->c, 0), "L5"));
}

static void test_reclaim_bad_token(void **state) {
        Fixture *f = *state;
        CheckGrant g = { .client = 0, .resource = (unsigned) f->mutex, .units = 1, .token = 5, .id = "L5",
                         .sent = MS(1), .granted = MS(2), .end = MS(10), .reclaims = 1, .reclaim_bad_token = true };
        assert_int_equal(checker_add_grant(f->c, &g), 0);
        assert_one_violation(f, "reclaim:");
}

/* Orders the ticket rule must accept. Mutex held across a kill at 50 until 70. */
static void test_tickets_clean(void **state) {
        Fixture *f = *state;
        held_across_kill(f, f->mutex, 1, 70);
        /* Client 0's place (queued at 11 in epoch 0) taken back at 63: granted ahead of
         * client 1, who queued at 61 in epoch 1 before client 0 was back (the FIFO rule
         * must not judge client 0 as a newcomer). */
        grant_ticket(f, 0, f->mutex, 1, 100, 62, 63, 71, 75, 1, CHECK_TICKET_KEPT, 10, 11, 0);
        /* Client 2's place is older (queued at 6): granted first is right; client 3's was
         * asked at 11, with client 0's first reply (concurrent): either order. */
        grant_ticket(f, 2, f->mutex, 1, 98, 64, 65, 70, 70, 1, CHECK_TICKET_KEPT, 5, 6, 0);
        grant_ticket(f, 3, f->mutex, 1, 99, 66, 67, 70, 71, 1, CHECK_TICKET_KEPT, 11, 12, 0);
        grant(f, 1, f->mutex, 1, 101, 60, 61, 76, 80, 1);
        /* Pool: client 4's grace ran out (its ticket refused, a new place at the tail):
         * client 5, queued in epoch 1 before it, goes first. Client 6 presented its ticket
         * and was granted with no "queued" reply, ahead of client 5 who queued before it
         * was sent. */
        grant(f, 5, f->pool, 3, 200, 60, 61, 100, 110, 1);
        grant_ticket(f, 4, f->pool, 3, 201, 400, 401, 410, 420, 1, CHECK_TICKET_REFUSED, 400, 401, 1);
        grant_ticket(f, 6, f->pool, 3, 199, 90, 0, 91, 95, 1, CHECK_TICKET_UNCONFIRMED, 30, 31, 0);
        unsigned n = checker_run(f->c);
        if (n != 0)
                checker_print_violations(f->c, stderr, 10);
        assert_int_equal(n, 0);
        CheckStats s;
        checker_get_stats(f->c, &s);
        assert_int_equal(s.tickets_kept, 3);
        assert_int_equal(s.tickets_refused, 1);
}

/* Client 0 took its place back by ticket; client 1, queued only after the restart, is
 * granted first. (The FIFO rule cannot see it: client 1 queued before client 0 re-sent.) */
static void test_ticket_overtaken_by_newcomer(void **state) {
        Fixture *f = *state;
        held_across_kill(f, f->mutex, 1, 70);
        grant_ticket(f, 0, f->mutex, 1, 101, 62, 63, 90, 95, 1, CHECK_TICKET_KEPT, 10, 11, 0);
        grant(f, 1, f->mutex, 1, 100, 60, 61, 71, 85, 1);
        assert_one_violation(f, "ticket:");
}

/* Two places from epoch 0 taken back in the wrong order; and a later place claimed with
 * no "queued" reply (granted at once) while an earlier one was back and waiting. */
static void test_ticket_places_swapped(void **state) {
        Fixture *f = *state;
        held_across_kill(f, f->mutex, 1, 70);
        grant_ticket(f, 0, f->mutex, 1, 101, 62, 63, 81, 85, 1, CHECK_TICKET_KEPT, 10, 11, 0);
        grant_ticket(f, 2, f->mutex, 1, 100, 64, 65, 71, 80, 1, CHECK_TICKET_KEPT, 20, 21, 0);
        assert_one_violation(f, "ticket:");
}

static void test_ticket_overtaken_unconfirmed(void **state) {
        Fixture *f = *state;
        held_across_kill(f, f->mutex, 1, 70);
        grant_ticket(f, 0, f->mutex, 1, 101, 62, 63, 81, 85, 1, CHECK_TICKET_KEPT, 10, 11, 0);
        grant_ticket(f, 2, f->mutex, 1, 100, 72, 0, 72, 80, 1, CHECK_TICKET_UNCONFIRMED, 20, 21, 0);
        assert_one_violation(f, "ticket:");
}

/* Counted: client 0 took back its place for 2 units with 1 free; client 1 (1 unit, asked
 * after the restart, before client 0 re-sent) was granted past it. */
static void test_ticket_counted_head(void **state) {
        Fixture *f = *state;
        held_across_kill(f, f->pool, 2, 100);
        grant_ticket(f, 0, f->pool, 2, 101, 62, 63, 101, 110, 1, CHECK_TICKET_KEPT, 10, 11, 0);
        grant(f, 1, f->pool, 1, 100, 61, 0, 62, 80, 1);
        assert_one_violation(f, "ticket:");
}

/* What clients report is kept across runs and counted with what the checks find. */
static void test_reported(void **state) {
        Fixture *f = *state;
        assert_int_equal(checker_add_violation(f->c, "protocol: client %d got %s", 3, "garbage"), 0);
        grant(f, 0, f->mutex, 1, 1, 0, 0, 10, 20, 0);
        grant(f, 1, f->mutex, 1, 2, 12, 0, 15, 30, 0);
        assert_int_equal(checker_run(f->c), 2);
        assert_int_equal(checker_run(f->c), 2);
        assert_string_equal(checker_violation(f->c, 0), "protocol: client 3 got garbage");
        assert_null(checker_violation(f->c, 2));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_clean, setup, teardown),
                cmocka_unit_test_setup_teardown(test_mutex_overlap, setup, teardown),
                cmocka_unit_test_setup_teardown(test_overlap_with_unreleased, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pool_over_capacity, setup, teardown),
                cmocka_unit_test_setup_teardown(test_token_not_increasing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_token_twice, setup, teardown),
                cmocka_unit_test_setup_teardown(test_concurrent_any_order, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fifo_overtaken, setup, teardown),
                cmocka_unit_test_setup_teardown(test_fifo_counted, setup, teardown),
                cmocka_unit_test_setup_teardown(test_lost_grant, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reclaim_bad_token, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reported, setup, teardown),
                cmocka_unit_test_setup_teardown(test_tickets_clean, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ticket_overtaken_by_newcomer, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ticket_places_swapped, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ticket_overtaken_unconfirmed, setup, teardown),
                cmocka_unit_test_setup_teardown(test_ticket_counted_head, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* The queue's order across a restart of the real agend (issue 14, item 12): every queued
 * Acquire gets a ticket; after kill -9 and a restart, waiters that come back in any order
 * and present their tickets during the grace are granted in their original order, ahead
 * of new waiters, with their waiting time ("since") kept; until then List shows their
 * places as "reclaimable" and the start-up line counts them. A wrong ticket is no place; a
 * place whose ticket is not presented within the grace is dropped. Raw varlink bytes. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-agend.h"

static bool streq(const char *a, const char *b) {
        return a && b && strcmp(a, b) == 0;
}

#define N_WAITERS 4

static int setup_grace(void **state, const char *grace) {
        Agend *a = NULL;
        if (agend_new(&a) < 0) {
                helper_cleanup();
                return -1;
        }
        snprintf(a->grace, sizeof(a->grace), "%s", grace);
        if (agend_start(a) < 0) {
                fprintf(stderr, "setup: agend --grace %s did not start\n", a->grace);
                helper_cleanup();
                return -1;
        }
        *state = a;
        return 0;
}

/* Long enough that nothing here waits for it to pass, also under valgrind. */
static int setup_long_grace(void **state) {
        return setup_grace(state, "60");
}

static int setup_short_grace(void **state) {
        return setup_grace(state, "1");
}

typedef struct Held {
        char id[64], secret[128];
        int64_t token;
} Held;

static void hold(VConn *c, const char *resource, Held *ret) {
        json_object *p = GRANT(c, "{\"resource\":\"%s\"}", resource);
        snprintf(ret->id, sizeof(ret->id), "%s", jstr(p, "lease.id"));
        snprintf(ret->secret, sizeof(ret->secret), "%s", jstr(p, "secret"));
        ret->token = jint(p, "lease.token");
}

/* Queues an Acquire with "more" (and the ticket, if any); checks the position; returns the
 * ticket of the queued reply (static storage of the caller: out). */
static void enqueue(VConn *w, const char *resource, const char *description, const char *ticket,
                    int64_t position, char out[static 128]) {
        if (ticket)
                assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire",
                                            "{\"resource\":\"%s\",\"description\":\"%s\",\"ticket\":\"%s\"}", resource,
                                            description, ticket),
                                 0);
        else
                assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire",
                                            "{\"resource\":\"%s\",\"description\":\"%s\"}", resource, description),
                                 0);
        json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
        assert_queued(m, position);
        const char *t = jstr(reply_params(m), "ticket");
        if (!t || strlen(t) < 32)
                fail_msg("a queued reply without a ticket: %s", jtext(m));
        snprintf(out, 128, "%s", t);
}

static json_object *expect_grant(VConn *w) {
        json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
        json_object *p = assert_granted(m);
        assert_false(reply_continues(m));
        return p;
}

/* Reads queued updates until the grant; fails on anything else. */
static json_object *expect_grant_after_moves(VConn *w) {
        for (;;) {
                json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
                if (streq(reply_state(m), "queued"))
                        continue;
                json_object *p = assert_granted(m);
                assert_false(reply_continues(m));
                return p;
        }
}

/* The "since" of the waiter with this description in List, or -1. */
static int64_t waiter_since(VConn *c, const char *resource, const char *description, int64_t *ret_position) {
        json_object *ws = jget(CALL_OK(c, LEASE_IF "List", "{\"resource\":\"%s\"}", resource), "waiters");
        for (size_t i = 0; i < json_object_array_length(ws); i++) {
                json_object *x = json_object_array_get_idx(ws, i);
                if (jstr(x, "description") && streq(jstr(x, "description"), description)) {
                        if (ret_position)
                                *ret_position = jint(x, "position");
                        return jint(x, "since");
                }
        }
        return -1;
}

static void test_order_survives_kill9(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w[N_WAITERS];
        char tickets[N_WAITERS][128], desc[N_WAITERS][32], ignored[128];
        int64_t since[N_WAITERS];
        Held held;

        hold(h, "m", &held);
        for (int i = 0; i < N_WAITERS; i++) {
                w[i] = OPEN(a);
                snprintf(desc[i], sizeof(desc[i]), "waiter %d", i);
                enqueue(w[i], "m", desc[i], NULL, i + 1, tickets[i]);
                /* Distinct times, so that a reset "since" could not match by chance. */
                helper_sleep(0.01);
        }
        for (int i = 0; i < N_WAITERS; i++) {
                since[i] = waiter_since(h, "m", desc[i], NULL);
                assert_true(since[i] > 0);
        }

        assert_int_equal(agend_kill(a), 0);
        for (int i = 0; i < N_WAITERS; i++)
                vconn_close(w[i]);
        vconn_close(h);
        assert_int_equal(agend_start(a), 0);

        /* Restored: the places are listed in their order, with their times. */
        VConn *obs = OPEN(a);
        for (int i = 0; i < N_WAITERS; i++) {
                int64_t pos = 0;
                assert_int_equal(waiter_since(obs, "m", desc[i], &pos), since[i]);
                assert_int_equal(pos, i + 1);
        }

        /* A newcomer queues behind every restored place. */
        VConn *late = OPEN(a);
        enqueue(late, "m", "late", NULL, N_WAITERS + 1, ignored);

        /* The waiters come back in a shuffled order; each takes its own place. */
        static const int order[N_WAITERS] = { 2, 0, 3, 1 };
        for (int k = 0; k < N_WAITERS; k++) {
                int i = order[k];
                w[i] = OPEN(a);
                char again[128];
                enqueue(w[i], "m", desc[i], tickets[i], i + 1, again);
                /* The same place keeps the same ticket: a second restart finds it too. */
                assert_string_equal(again, tickets[i]);
        }
        for (int i = 0; i < N_WAITERS; i++) {
                int64_t pos = 0;
                assert_int_equal(waiter_since(obs, "m", desc[i], &pos), since[i]);
                assert_int_equal(pos, i + 1);
        }

        /* The holder reclaims and lets go: grants follow the original order, then the
         * newcomer. */
        VConn *h2 = OPEN(a);
        CALL_OK(h2, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", held.id,
                (long long) held.token, held.secret);
        CALL_OK(h2, LEASE_IF "Release", "{\"id\":\"%s\"}", held.id);
        for (int i = 0; i < N_WAITERS; i++) {
                json_object *g = expect_grant_after_moves(w[i]);
                assert_string_equal(jstr(g, "lease.description"), desc[i]);
                /* Nobody behind it was granted meanwhile. */
                for (int j = i + 1; j < N_WAITERS; j++) {
                        json_object *m = NULL;
                        while (vconn_recv(w[j], 0.05, &m) == 0)
                                if (!streq(reply_state(m), "queued"))
                                        fail_msg("waiter %d got %s while waiter %d held the lease", j, jtext(m), i);
                }
                vconn_close(w[i]); /* ends the bound lease: the next one is granted */
        }
        json_object *g = expect_grant_after_moves(late);
        assert_string_equal(jstr(g, "lease.description"), "late");
}

/* The "state" of the waiter with this description in List, or NULL (copied to out). */
static const char *waiter_state(VConn *c, const char *resource, const char *description, char out[static 32]) {
        json_object *ws = jget(CALL_OK(c, LEASE_IF "List", "{\"resource\":\"%s\"}", resource), "waiters");
        for (size_t i = 0; i < json_object_array_length(ws); i++) {
                json_object *x = json_object_array_get_idx(ws, i);
                if (streq(jstr(x, "description"), description)) {
                        snprintf(out, 32, "%s", jstr(x, "state") ?: "(none)");
                        return out;
                }
        }
        return NULL;
}

/* The last start-up line of the log ("... N leases and M waiters restored ..."), or "". */
static void last_startup_line(const Agend *a, char *out, size_t size) {
        char *log = agend_read_log(a), *last = NULL;
        out[0] = 0;
        for (char *p = log; p && (p = strstr(p, " serving ")); p++)
                last = p;
        if (last) {
                size_t n = strcspn(last, "\n");
                snprintf(out, size, "%.*s", (int) n, last);
        }
        free(log);
}

/* Restored places show in List before their waiters are back, marked "reclaimable" like
 * restored leases, in their order; a place becomes "waiting" when its ticket is presented,
 * and a newcomer is "waiting". The start-up line counts the restored waiters. */
static void test_restored_places_listed_and_counted(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w[3];
        char tickets[3][128], desc[3][32], st[32], line[512], ignored[128];
        Held held;

        hold(h, "r", &held);
        for (int i = 0; i < 3; i++) {
                w[i] = OPEN(a);
                snprintf(desc[i], sizeof(desc[i]), "place %d", i);
                enqueue(w[i], "r", desc[i], NULL, i + 1, tickets[i]);
                assert_string_equal(waiter_state(h, "r", desc[i], st), "waiting");
        }
        last_startup_line(a, line, sizeof(line));
        if (!strstr(line, " 0 leases and 0 waiters restored"))
                fail_msg("first start: %s", line);

        assert_int_equal(agend_kill(a), 0);
        for (int i = 0; i < 3; i++)
                vconn_close(w[i]);
        vconn_close(h);
        assert_int_equal(agend_start(a), 0);
        last_startup_line(a, line, sizeof(line));
        if (!strstr(line, " 1 leases and 3 waiters restored"))
                fail_msg("after kill -9 with 1 lease and 3 waiters: %s", line);

        /* Nobody is back yet: every place is listed, in order, marked. */
        VConn *obs = OPEN(a);
        json_object *ws = jget(CALL_OK(obs, LEASE_IF "List", "{\"resource\":\"r\"}"), "waiters");
        assert_int_equal(json_object_array_length(ws), 3);
        for (int i = 0; i < 3; i++) {
                json_object *x = json_object_array_get_idx(ws, (size_t) i);
                assert_string_equal(jstr(x, "description"), desc[i]);
                assert_int_equal(jint(x, "position"), i + 1);
                assert_string_equal(jstr(x, "state"), "reclaimable");
        }
        json_object *ls = jget(CALL_OK(obs, LEASE_IF "List", "{\"resource\":\"r\"}"), "leases");
        assert_int_equal(json_object_array_length(ls), 1);
        assert_string_equal(jstr(json_object_array_get_idx(ls, 0), "state"), "reclaimable");

        /* The second comes back: its place is waiting again, the others still kept. */
        VConn *b1 = OPEN(a);
        enqueue(b1, "r", desc[1], tickets[1], 2, ignored);
        assert_string_equal(waiter_state(obs, "r", desc[0], st), "reclaimable");
        assert_string_equal(waiter_state(obs, "r", desc[1], st), "waiting");
        assert_string_equal(waiter_state(obs, "r", desc[2], st), "reclaimable");
        VConn *late = OPEN(a);
        enqueue(late, "r", "late", NULL, 4, ignored);
        assert_string_equal(waiter_state(obs, "r", "late", st), "waiting");
}

/* A ticket whose secret part is wrong takes no place: the call queues at the tail. The
 * place it aimed at stays for its owner. */
static void test_wrong_ticket_is_no_place(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w0 = OPEN(a), *w1 = OPEN(a);
        char t0[128], t1[128], t;
        Held held;

        hold(h, "q", &held);
        enqueue(w0, "q", "first", NULL, 1, t0);
        enqueue(w1, "q", "second", NULL, 2, t1);
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(agend_start(a), 0);

        /* Same sequence part, another secret. */
        char forged[128];
        snprintf(forged, sizeof(forged), "%s", t0);
        t = forged[strlen(forged) - 1];
        forged[strlen(forged) - 1] = t == '0' ? '1' : '0';
        VConn *thief = OPEN(a);
        char ignored[128];
        enqueue(thief, "q", "thief", forged, 3, ignored);

        /* A real ticket for another resource is no place there either. */
        VConn *other = OPEN(a);
        hold(other, "q2", &held);
        VConn *x = OPEN(a);
        enqueue(x, "q2", "elsewhere", t1, 1, ignored);

        /* The owner still finds its place. */
        VConn *back = OPEN(a);
        enqueue(back, "q", "first", t0, 1, ignored);
}

/* A place not claimed within the grace goes; the waiters behind it move up and, once the
 * unreclaimed lease is released too, the next claimed one is granted. */
static void test_unclaimed_place_dropped_after_grace(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w0 = OPEN(a), *w1 = OPEN(a);
        char t0[128], t1[128];
        Held held;

        hold(h, "d", &held);
        enqueue(w0, "d", "gone", NULL, 1, t0);
        enqueue(w1, "d", "back", NULL, 2, t1);
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(agend_start(a), 0);
        double ready = helper_now();

        VConn *back = OPEN(a);
        char ignored[128];
        enqueue(back, "d", "back", t1, 2, ignored);
        /* Within the grace nobody behind the unclaimed place is granted. */
        if (helper_now() - ready < 0.5)
                assert_silent(back, 0.2);

        /* After it: the holder did not reclaim, the first waiter did not come back. Generous
         * bound, for valgrind: the grace is 1 s. */
        json_object *m;
        for (;;) {
                int r = vconn_recv(back, 30.0, &m);
                if (r < 0)
                        fail_msg("no grant after the grace: %s", strerror(-r));
                if (!streq(reply_state(m), "queued"))
                        break;
                assert_int_equal(jint(reply_params(m), "position"), 1);
        }
        json_object *p = assert_granted(m);
        assert_string_equal(jstr(p, "lease.description"), "back");
        VConn *obs = OPEN(a);
        assert_int_equal(waiter_since(obs, "d", "gone", NULL), -1);
}

/* The resource is free again before the first waiter is back: its place waits for it (a
 * newcomer is not granted past it), and its ticket is granted at once. */
static void test_free_head_waits_for_its_waiter(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w0 = OPEN(a), *w1 = OPEN(a);
        char t0[128], t1[128], ignored[128];
        Held held;

        hold(h, "f", &held);
        enqueue(w0, "f", "first", NULL, 1, t0);
        enqueue(w1, "f", "second", NULL, 2, t1);
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(agend_start(a), 0);

        VConn *h2 = OPEN(a);
        CALL_OK(h2, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", held.id,
                (long long) held.token, held.secret);
        CALL_OK(h2, LEASE_IF "Release", "{\"id\":\"%s\"}", held.id);

        /* Free, but the head's place is not claimed: a newcomer waits behind both places,
         * and a try-once finds the resource busy. */
        VConn *late = OPEN(a);
        enqueue(late, "f", "late", NULL, 3, ignored);
        VConn *once = OPEN(a);
        CALL_ERR(once, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"f\",\"timeout\":0}");

        /* The second comes back first: it waits behind the first's place. */
        VConn *b1 = OPEN(a);
        enqueue(b1, "f", "second", t1, 2, ignored);
        assert_silent(late, 0.1);

        /* The first comes back: granted in the reply to its Acquire. */
        VConn *b0 = OPEN(a);
        assert_int_equal(vconn_send(b0, VL_MORE, LEASE_IF "Acquire",
                                    "{\"resource\":\"f\",\"description\":\"first\",\"ticket\":\"%s\"}", t0),
                         0);
        json_object *g = expect_grant(b0);
        assert_string_equal(jstr(g, "lease.description"), "first");
        vconn_close(b0);
        assert_string_equal(jstr(expect_grant_after_moves(b1), "lease.description"), "second");
}

/* The head's waiter comes back and is granted while the place behind it is still
 * unclaimed: that place moves up with nobody to tell, agend carries on (it crashed here,
 * found by test-history once its clients presented tickets), and its waiter is granted
 * when it comes back. */
static void test_unclaimed_place_moves_up(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w0 = OPEN(a), *w1 = OPEN(a);
        char t0[128], t1[128];
        Held held;
        int64_t pos = 0;

        hold(h, "u", &held);
        enqueue(w0, "u", "first", NULL, 1, t0);
        enqueue(w1, "u", "second", NULL, 2, t1);
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(agend_start(a), 0);

        VConn *h2 = OPEN(a);
        CALL_OK(h2, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", held.id,
                (long long) held.token, held.secret);
        CALL_OK(h2, LEASE_IF "Release", "{\"id\":\"%s\"}", held.id);

        VConn *b0 = OPEN(a);
        assert_int_equal(vconn_send(b0, VL_MORE, LEASE_IF "Acquire",
                                    "{\"resource\":\"u\",\"description\":\"first\",\"ticket\":\"%s\"}", t0),
                         0);
        assert_string_equal(jstr(expect_grant(b0), "lease.description"), "first");
        /* Alive, and the unclaimed place is now the head. */
        VConn *obs = OPEN(a);
        assert_true(waiter_since(obs, "u", "second", &pos) > 0);
        assert_int_equal(pos, 1);
        vconn_close(b0);

        VConn *b1 = OPEN(a);
        assert_int_equal(vconn_send(b1, VL_MORE, LEASE_IF "Acquire",
                                    "{\"resource\":\"u\",\"description\":\"second\",\"ticket\":\"%s\"}", t1),
                         0);
        assert_string_equal(jstr(expect_grant_after_moves(b1), "lease.description"), "second");
}

/* A clean stop (SIGTERM) keeps the places as well. */
static void test_order_survives_sigterm(void **state) {
        Agend *a = *state;
        VConn *h = OPEN(a), *w0 = OPEN(a), *w1 = OPEN(a);
        char t0[128], t1[128], ignored[128];
        Held held;
        int st;

        hold(h, "s", &held);
        enqueue(w0, "s", "w0", NULL, 1, t0);
        enqueue(w1, "s", "w1", NULL, 2, t1);
        assert_int_equal(agend_stop(a, &st), 0);
        assert_int_equal(agend_start(a), 0);

        VConn *b1 = OPEN(a), *b0 = OPEN(a);
        enqueue(b1, "s", "w1", t1, 2, ignored);
        enqueue(b0, "s", "w0", t0, 1, ignored);
        VConn *h2 = OPEN(a);
        CALL_OK(h2, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", held.id,
                (long long) held.token, held.secret);
        CALL_OK(h2, LEASE_IF "Release", "{\"id\":\"%s\"}", held.id);
        assert_string_equal(jstr(expect_grant(b0), "lease.description"), "w0");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_order_survives_kill9, setup_long_grace, helper_teardown),
                cmocka_unit_test_setup_teardown(test_wrong_ticket_is_no_place, setup_long_grace, helper_teardown),
                cmocka_unit_test_setup_teardown(test_restored_places_listed_and_counted, setup_long_grace,
                                                helper_teardown),
                cmocka_unit_test_setup_teardown(test_unclaimed_place_dropped_after_grace, setup_short_grace,
                                                helper_teardown),
                cmocka_unit_test_setup_teardown(test_order_survives_sigterm, setup_long_grace, helper_teardown),
                cmocka_unit_test_setup_teardown(test_unclaimed_place_moves_up, setup_long_grace, helper_teardown),
                cmocka_unit_test_setup_teardown(test_free_head_waits_for_its_waiter, setup_long_grace,
                                                helper_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* A checker for a history of leases recorded by clients of agend across kill -9 restarts
 * (tests/test-history.c records one; tests/test-checker.c feeds crafted ones).
 *
 * The clients record, per acknowledged grant, only what they saw on their own clock
 * (CLOCK_MONOTONIC, µs): when the Acquire was sent, when the first "queued" reply came,
 * when the grant came, when the holder stopped relying on the lease. The daemon's own
 * instants are unknown but lie between those, so each check uses what is certain:
 *
 * - Capacity: a lease is certainly held from its grant reply to the moment its holder sent
 *   Release (or, for a lease a restarted daemon no longer knew, the kill that cut it).
 *   Units of certainly-held leases of one resource never sum above its capacity. (The
 *   wider interval, from the Acquire sent to the Release answered, would flag every
 *   waiter handed the unit a release frees.)
 * - Tokens: a grant acknowledged before another grant of the same resource was asked for
 *   has the smaller token, across restarts too; no token is handed out twice.
 * - FIFO: a waiter told "queued" before another Acquire of the same resource was sent is
 *   granted first (smaller token), if both are granted by the same daemon process (a kill
 *   ends every waiting call; re-sent calls queue anew).
 * - Nothing lost: a grant whose holder, after a restart, was refused its Reclaim must have
 *   ended with a reason recorded in History; a Reclaim that succeeds returns the same
 *   token.
 * - Tickets: a waiter that presented its ticket after a restart and got its place back is
 *   not overtaken by a request queued after that place (the exact rule is at
 *   check_tickets() in checker.c). The FIFO rule above does not judge a request that
 *   presented a ticket: it may rightly go ahead of those queued before it was re-sent.
 *
 * Violations are kept as lines of text; checker_run() returns how many there were. */

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "macro.h"
#include "usec.h"

typedef struct Checker Checker;

/* What became of the ticket a re-sent Acquire presented (after a restart, in the epoch
 * that granted it). */
typedef enum CheckTicket {
        CHECK_TICKET_NONE,      /* no ticket presented: the request queued at the tail */
        CHECK_TICKET_KEPT,      /* its first "queued" reply carried the ticket presented */
        CHECK_TICKET_REFUSED,   /* its first "queued" reply carried another ticket: the tail */
        CHECK_TICKET_UNCONFIRMED, /* presented, then granted with no "queued" reply */
} CheckTicket;

typedef struct CheckGrant {
        unsigned client;
        unsigned resource;      /* index from checker_add_resource() */
        unsigned units;
        uint64_t token;
        const char *id;         /* the lease id; copied */
        unsigned epoch;         /* which daemon process granted it (0, 1, ... after each kill) */
        usec_t sent;            /* Acquire sent */
        usec_t queued;          /* first "queued" reply received; 0 = granted without waiting */
        usec_t granted;         /* grant reply received */
        /* Release sent, or the kill that cut a lease the restarted daemon did not know;
         * USEC_INFINITY = still held when the run ended. */
        usec_t end;
        unsigned reclaims;      /* successful Reclaims after restarts */
        bool reclaim_bad_token; /* a Reclaim answered with another token */
        /* A Reclaim was refused (NoSuchLease): the restarted daemon no longer had it. */
        bool reclaim_refused;
        /* For a refused Reclaim: the History event that ended it ("released: reason"),
         * copied; NULL = History has no ending event with a reason for this lease. */
        const char *history_end;
        CheckTicket ticket;
        /* The place in the queue the grant came from: when the Acquire that created it
         * was sent, when its first "queued" reply came (0 = never queued), in which
         * epoch. For a ticket kept, a place from an earlier epoch. */
        usec_t place_sent, place_queued;
        unsigned place_epoch;
} CheckGrant;

typedef struct CheckStats {
        unsigned long grants;
        unsigned long queued;           /* grants that waited in a queue first */
        unsigned long reclaims;
        unsigned long reclaims_refused; /* of which History recorded the end */
        unsigned long tickets_kept;     /* grants whose Acquire got its place back by ticket */
        unsigned long tickets_refused;  /* ... presented a ticket and queued at the tail */
        unsigned long violations;
} CheckStats;

int checker_new(Checker **ret);
Checker *checker_free(Checker *c);

/* Returns the resource's index (>= 0). */
int checker_add_resource(Checker *c, const char *name, unsigned capacity);
/* Records one acknowledged grant (copied). */
int checker_add_grant(Checker *c, const CheckGrant *g);
/* A protocol-level surprise seen by a client (an unexpected error reply, a malformed
 * reply): recorded as a violation as it is. */
int checker_add_violation(Checker *c, const char *fmt, ...) _printf_(2, 3);

/* Runs every check over the grants recorded so far; returns the number of violations
 * (those of checker_add_violation() included). */
unsigned checker_run(Checker *c);
void checker_get_stats(const Checker *c, CheckStats *ret);
/* Prints up to max violations, one per line. */
void checker_print_violations(const Checker *c, FILE *f, unsigned max);
/* The i-th violation's text, or NULL; for tests that check which rule fired. */
const char *checker_violation(const Checker *c, unsigned i);

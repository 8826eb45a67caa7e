/* SPDX-License-Identifier: MIT */
/* See checker.h. Each check sorts the grants of a resource once and sweeps them, so a run
 * of a few hundred thousand grants is checked in well under a second. */

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "checker.h"
#include "macro.h"

typedef struct CheckResource {
        char *name;
        unsigned capacity;
} CheckResource;

struct Checker {
        CheckResource *resources;
        size_t n_resources;
        CheckGrant *grants;
        size_t n_grants, size_grants;
        char **violations;
        size_t n_violations, size_violations;
        /* Violations added by checker_add_violation(): kept across checker_run() calls. */
        size_t n_reported;
};

int checker_new(Checker **ret) {
        Checker *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        *ret = c;
        return 0;
}

static void clear_violations(Checker *c, size_t keep) {
        for (size_t i = keep; i < c->n_violations; i++)
                free(c->violations[i]);
        c->n_violations = keep;
}

Checker *checker_free(Checker *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_resources; i++)
                free(c->resources[i].name);
        free(c->resources);
        for (size_t i = 0; i < c->n_grants; i++) {
                free((char *) c->grants[i].id);
                free((char *) c->grants[i].history_end);
        }
        free(c->grants);
        clear_violations(c, 0);
        free(c->violations);
        free(c);
        return NULL;
}

int checker_add_resource(Checker *c, const char *name, unsigned capacity) {
        CheckResource *r = realloc(c->resources, (c->n_resources + 1) * sizeof(*r));
        if (!r)
                return -ENOMEM;
        c->resources = r;
        char *n = strdup(name);
        if (!n)
                return -ENOMEM;
        c->resources[c->n_resources] = (CheckResource) { .name = n, .capacity = capacity };
        return (int) c->n_resources++;
}

int checker_add_grant(Checker *c, const CheckGrant *g) {
        if (g->resource >= c->n_resources)
                return -EINVAL;
        if (c->n_grants == c->size_grants) {
                size_t size = c->size_grants ? c->size_grants * 2 : 256;
                CheckGrant *v = realloc(c->grants, size * sizeof(*v));
                if (!v)
                        return -ENOMEM;
                c->grants = v;
                c->size_grants = size;
        }
        CheckGrant copy = *g;
        copy.id = strdup(g->id ? g->id : "");
        copy.history_end = g->history_end ? strdup(g->history_end) : NULL;
        if (!copy.id || (g->history_end && !copy.history_end)) {
                free((char *) copy.id);
                free((char *) copy.history_end);
                return -ENOMEM;
        }
        c->grants[c->n_grants++] = copy;
        return 0;
}

static void vviolation(Checker *c, const char *fmt, va_list ap) {
        char *s = NULL;
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        if (c->n_violations == c->size_violations) {
                size_t size = c->size_violations ? c->size_violations * 2 : 16;
                char **v = realloc(c->violations, size * sizeof(*v));
                if (!v) {
                        free(s);
                        return;
                }
                c->violations = v;
                c->size_violations = size;
        }
        /* Out of memory for the text: still counted. */
        c->violations[c->n_violations++] = s;
}

static void violation(Checker *c, const char *fmt, ...) _printf_(2, 3);
static void violation(Checker *c, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vviolation(c, fmt, ap);
        va_end(ap);
}

int checker_add_violation(Checker *c, const char *fmt, ...) {
        /* Reported ones stay before the ones checker_run() finds, which it recomputes. */
        clear_violations(c, c->n_reported);
        va_list ap;
        va_start(ap, fmt);
        vviolation(c, fmt, ap);
        va_end(ap);
        c->n_reported = c->n_violations;
        return 0;
}

static double ms(usec_t t) {
        return t == USEC_INFINITY ? -1.0 : (double) t / 1000.0;
}

/* ---- capacity ---- */

typedef struct Edge {
        usec_t t;
        int delta;              /* +units at a start, -units at an end */
        const CheckGrant *g;
} Edge;

static int edge_cmp(const void *a, const void *b) {
        const Edge *x = a, *y = b;
        if (x->t != y->t)
                return x->t < y->t ? -1 : 1;
        /* Half-open intervals: at one instant, ends come before starts. */
        return (x->delta > 0) - (y->delta > 0);
}

static void check_capacity(Checker *c, unsigned res, const CheckGrant **v, size_t n) {
        Edge *e = calloc(2 * n + 1, sizeof(*e));
        if (!e) {
                violation(c, "checker: out of memory");
                return;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
                const CheckGrant *g = v[i];
                if (g->end != USEC_INFINITY && g->end <= g->granted)
                        continue;       /* never certainly held */
                e[k++] = (Edge) { .t = g->granted, .delta = (int) g->units, .g = g };
                if (g->end != USEC_INFINITY)
                        e[k++] = (Edge) { .t = g->end, .delta = -(int) g->units, .g = g };
        }
        qsort(e, k, sizeof(*e), edge_cmp);
        const CheckResource *r = &c->resources[res];
        long held = 0;
        bool over = false;
        for (size_t i = 0; i < k; i++) {
                held += e[i].delta;
                if (held > (long) r->capacity && !over) {
                        /* Name the grant that went over and who held the rest then. */
                        char others[512] = "";
                        size_t len = 0;
                        for (size_t j = 0; j < n && len < sizeof(others) - 80; j++) {
                                const CheckGrant *o = v[j];
                                if (o == e[i].g || o->granted > e[i].t ||
                                    (o->end != USEC_INFINITY && o->end <= e[i].t))
                                        continue;
                                len += (size_t) snprintf(others + len, sizeof(others) - len,
                                                         " [client %u token %" PRIu64 " %ux %.3f..%.3f]", o->client,
                                                         o->token, o->units, ms(o->granted), ms(o->end));
                        }
                        violation(c,
                                  "capacity: %s (capacity %u) held %ld units at %.3f ms: client %u token %" PRIu64
                                  " granted %u while%s",
                                  r->name, r->capacity, held, ms(e[i].t), e[i].g->client, e[i].g->token,
                                  e[i].g->units, others);
                        over = true;    /* one report per episode */
                } else if (held <= (long) r->capacity)
                        over = false;
        }
        free(e);
}

/* ---- tokens and FIFO ---- */

static int by_sent(const void *a, const void *b) {
        const CheckGrant *x = *(const CheckGrant *const *) a, *y = *(const CheckGrant *const *) b;
        return x->sent < y->sent ? -1 : x->sent > y->sent;
}

static int by_granted(const void *a, const void *b) {
        const CheckGrant *x = *(const CheckGrant *const *) a, *y = *(const CheckGrant *const *) b;
        return x->granted < y->granted ? -1 : x->granted > y->granted;
}

static int by_queued(const void *a, const void *b) {
        const CheckGrant *x = *(const CheckGrant *const *) a, *y = *(const CheckGrant *const *) b;
        return x->queued < y->queued ? -1 : x->queued > y->queued;
}

/* Every grant acknowledged before b was asked for has a smaller token. */
static void check_tokens(Checker *c, unsigned res, const CheckGrant **sent, const CheckGrant **granted, size_t n) {
        const CheckGrant *max = NULL;
        size_t j = 0;
        for (size_t i = 0; i < n; i++) {
                const CheckGrant *b = sent[i];
                for (; j < n && granted[j]->granted < b->sent; j++)
                        if (!max || granted[j]->token > max->token)
                                max = granted[j];
                if (max && b->token <= max->token)
                        violation(c,
                                  "token: %s: client %u asked at %.3f ms and got token %" PRIu64
                                  ", not above token %" PRIu64 " granted to client %u at %.3f ms (epochs %u, %u)",
                                  c->resources[res].name, b->client, ms(b->sent), b->token, max->token, max->client,
                                  ms(max->granted), b->epoch, max->epoch);
        }
}

/* A request that presented a ticket may have taken back a place ahead of waiters queued
 * before it was sent (check_tickets() judges it instead). */
static bool ticket_ahead(const CheckGrant *b) {
        return b->ticket == CHECK_TICKET_KEPT || b->ticket == CHECK_TICKET_UNCONFIRMED;
}

/* A waiter told "queued" before b was sent, granted by the same daemon process, was
 * granted before b: grants come in token order within one process. */
static void check_fifo(Checker *c, unsigned res, const CheckGrant **sent, size_t n) {
        const CheckGrant **q = calloc(n + 1, sizeof(*q));
        if (!q) {
                violation(c, "checker: out of memory");
                return;
        }
        size_t nq = 0;
        for (size_t i = 0; i < n; i++)
                if (sent[i]->queued)
                        q[nq++] = sent[i];
        qsort(q, nq, sizeof(*q), by_queued);

        /* The largest token among waiters queued so far in the current epoch. Epochs only
         * grow with time, and a waiter queued before b was sent has an epoch <= b's. */
        const CheckGrant *max = NULL;
        size_t j = 0;
        for (size_t i = 0; i < n; i++) {
                const CheckGrant *b = sent[i];
                for (; j < nq && q[j]->queued < b->sent; j++) {
                        if (max && q[j]->epoch != max->epoch)
                                max = NULL;
                        if (!max || q[j]->token > max->token)
                                max = q[j];
                }
                if (max && max->epoch == b->epoch && b->token < max->token && !ticket_ahead(b))
                        violation(c,
                                  "fifo: %s: client %u, queued at %.3f ms, got token %" PRIu64
                                  " after client %u, who asked later (%.3f ms) and got token %" PRIu64 " (epoch %u)",
                                  c->resources[res].name, max->client, ms(max->queued), max->token, b->client,
                                  ms(b->sent), b->token, b->epoch);
        }
        free(q);
}

/* ---- tickets ---- */

/* The rule, for two grants A and B of one resource granted by the same daemon process
 * (epoch E):
 *
 *   if A's Acquire in E presented a ticket and its first "queued" reply in E carried that
 *   same ticket (CHECK_TICKET_KEPT: A took back a place restored from an earlier epoch),
 *   and B's place was created after A's — that is, either B's place was created in E (B
 *   presented no ticket, or its ticket was refused: CHECK_TICKET_NONE or _REFUSED), or
 *   B's place too is from an earlier epoch (B presented a ticket: _KEPT or _UNCONFIRMED)
 *   and the Acquire that created it was sent after the first "queued" reply of the one
 *   that created A's place —
 *
 *   then A's token is smaller than B's (A was granted first).
 *
 * Why it holds and flags nothing legitimate: a restored place stays in the queue from
 * the restore until it is claimed and granted, or dropped when the grace ends (then no
 * ticket is accepted for it, so A would be _REFUSED, not _KEPT); while unclaimed at the
 * head it blocks everyone behind it. Queue order is the order places were created
 * (restored places keep theirs; a new one goes to the tail), grants follow queue order
 * strictly (a large request at the head holds back smaller ones: nobody overtakes), and
 * within one process tokens follow grant order. A request with no ticket granted without
 * queueing in E must have found the queue empty, so after A's grant. A ticket granted
 * with no "queued" reply (_UNCONFIRMED) is not trusted as A: it may have been refused
 * and granted on an empty queue. Waiters whose grace ran out are _REFUSED and judged by
 * the FIFO rule as new arrivals. */
static int by_epoch_token(const void *a, const void *b) {
        const CheckGrant *x = *(const CheckGrant *const *) a, *y = *(const CheckGrant *const *) b;
        if (x->epoch != y->epoch)
                return x->epoch < y->epoch ? -1 : 1;
        return x->token < y->token ? -1 : x->token > y->token;
}

static bool place_after(const CheckGrant *a, const CheckGrant *b) {
        if (b->ticket == CHECK_TICKET_NONE || b->ticket == CHECK_TICKET_REFUSED)
                return true;
        return b->place_sent > a->place_queued;
}

static void check_tickets(Checker *c, unsigned res, const CheckGrant **v, size_t n) {
        qsort(v, n, sizeof(*v), by_epoch_token);
        for (size_t start = 0, end; start < n; start = end) {
                for (end = start; end < n && v[end]->epoch == v[start]->epoch; end++)
                        ;
                for (size_t i = start; i < end; i++) {
                        const CheckGrant *a = v[i];
                        if (a->ticket != CHECK_TICKET_KEPT)
                                continue;
                        /* Everyone of this epoch granted before A (smaller token). */
                        for (size_t j = start; j < i; j++) {
                                const CheckGrant *b = v[j];
                                if (!place_after(a, b))
                                        continue;
                                violation(c,
                                          "ticket: %s: client %u got its place back by ticket (place queued at "
                                          "%.3f ms, epoch %u) and token %" PRIu64 ", after client %u, whose place "
                                          "came later (asked at %.3f ms, epoch %u), got token %" PRIu64 " (epoch %u)",
                                          c->resources[res].name, a->client, ms(a->place_queued), a->place_epoch,
                                          a->token, b->client, ms(b->place_sent), b->place_epoch, b->token, a->epoch);
                                break;  /* one report per waiter */
                        }
                }
        }
}

static int by_token(const void *a, const void *b) {
        const CheckGrant *x = a, *y = b;
        return x->token < y->token ? -1 : x->token > y->token;
}

unsigned checker_run(Checker *c) {
        clear_violations(c, c->n_reported);

        /* Tokens are unique across all resources and restarts. */
        CheckGrant *copy = malloc((c->n_grants + 1) * sizeof(*copy));
        const CheckGrant **sent = malloc((c->n_grants + 1) * sizeof(*sent));
        const CheckGrant **granted = malloc((c->n_grants + 1) * sizeof(*granted));
        if (!copy || !sent || !granted) {
                violation(c, "checker: out of memory");
                goto out;
        }
        memcpy(copy, c->grants, c->n_grants * sizeof(*copy));
        qsort(copy, c->n_grants, sizeof(*copy), by_token);
        for (size_t i = 1; i < c->n_grants; i++)
                if (copy[i].token == copy[i - 1].token)
                        violation(c, "token: %" PRIu64 " granted twice (clients %u and %u, leases %s and %s)",
                                  copy[i].token, copy[i - 1].client, copy[i].client, copy[i - 1].id, copy[i].id);

        for (unsigned res = 0; res < c->n_resources; res++) {
                size_t n = 0;
                for (size_t i = 0; i < c->n_grants; i++)
                        if (c->grants[i].resource == res) {
                                sent[n] = granted[n] = &c->grants[i];
                                n++;
                        }
                qsort(sent, n, sizeof(*sent), by_sent);
                qsort(granted, n, sizeof(*granted), by_granted);
                check_capacity(c, res, sent, n);
                check_tokens(c, res, sent, granted, n);
                check_fifo(c, res, sent, n);
                check_tickets(c, res, granted, n);
        }

        for (size_t i = 0; i < c->n_grants; i++) {
                const CheckGrant *g = &c->grants[i];
                if (g->reclaim_bad_token)
                        violation(c, "reclaim: lease %s (client %u, token %" PRIu64 ") reclaimed with another token",
                                  g->id, g->client, g->token);
                if (g->reclaim_refused && (!g->history_end || !*g->history_end))
                        violation(c,
                                  "lost: lease %s (%s, client %u, token %" PRIu64
                                  ", granted at %.3f ms) was gone after a restart and History records no end",
                                  g->id, c->resources[g->resource].name, g->client, g->token, ms(g->granted));
        }
out:
        free(copy);
        free(sent);
        free(granted);
        return (unsigned) c->n_violations;
}

void checker_get_stats(const Checker *c, CheckStats *ret) {
        CheckStats s = { .grants = c->n_grants, .violations = c->n_violations };
        for (size_t i = 0; i < c->n_grants; i++) {
                s.queued += c->grants[i].queued != 0;
                s.reclaims += c->grants[i].reclaims;
                s.reclaims_refused += c->grants[i].reclaim_refused;
                s.tickets_kept += c->grants[i].ticket == CHECK_TICKET_KEPT;
                s.tickets_refused += c->grants[i].ticket == CHECK_TICKET_REFUSED;
        }
        *ret = s;
}

void checker_print_violations(const Checker *c, FILE *f, unsigned max) {
        for (size_t i = 0; i < c->n_violations && i < max; i++)
                fprintf(f, "VIOLATION %s\n", c->violations[i] ? c->violations[i] : "(out of memory)");
        if (c->n_violations > max)
                fprintf(f, "... and %zu more violations\n", c->n_violations - max);
}

const char *checker_violation(const Checker *c, unsigned i) {
        return i < c->n_violations ? c->violations[i] : NULL;
}

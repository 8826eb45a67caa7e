/* SPDX-License-Identifier: MIT */
/* The verbs that only look: list, show, resources, status, history, watch. With --json
 * each prints the daemon's reply as it is (see docs/agenctl.md), so scripts get the wire
 * shapes of docs/io.agend.Lease.varlink; the human output is built from the same fields. */

#include <errno.h>
#include <ev.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "agen/agen.h"
#include "agenctl.h"
#include "format.h"
#include "macro.h"
#include "table.h"

static size_t table_width(void) {
        return arg_full ? 0 : columns();
}

static usec_t now_realtime(void) {
        return usec_now(CLOCK_REALTIME);
}

/* "5min 3s" since a point in time (µs since the epoch), "-" if unknown. */
static const char *format_age(char *buf, size_t size, int64_t since) {
        usec_t now = now_realtime();
        if (since <= 0) {
                snprintf(buf, size, "-");
                return buf;
        }
        return format_timespan(buf, size, (usec_t) since < now ? now - (usec_t) since : 0);
}

/* Time left until a deadline, "-" without one, "0" once passed. */
static const char *format_left(char *buf, size_t size, json_object *lease) {
        int64_t deadline = jint(lease, "deadline", 0);
        if (!jobj(lease, "deadline") || deadline <= 0) {
                snprintf(buf, size, "-");
                return buf;
        }
        usec_t now = now_realtime();
        return format_timespan(buf, size, (usec_t) deadline > now ? (usec_t) deadline - now : 0);
}

static const char *format_units(char *buf, size_t size, json_object *o) {
        if (jbool(o, "exclusive"))
                snprintf(buf, size, "all");
        else
                snprintf(buf, size, "%lld", (long long) jint(o, "units", 1));
        return buf;
}

/* ---- list ---- */

static int add_owner_cells(Table *t, json_object *owner) {
        int r = 0;
        int64_t uid = jint(owner, "uid", -1);
        r |= table_add_cell(t, uid >= 0 ? uid_to_name((uid_t) uid) : NULL, NULL);
        r |= table_add_cellf(t, NULL, "%lld", (long long) jint(owner, "pid", 0));
        r |= table_add_cell(t, jstr(owner, "comm"), NULL);
        r |= table_add_cell(t, jstr(owner, "unit"), NULL);
        return r < 0 ? -ENOMEM : 0;
}

/* Whether a row of leases or waiters has a node: a Scope=cluster resource's. */
static bool has_node(json_object *rows) {
        size_t n = rows ? json_object_array_length(rows) : 0;
        for (size_t i = 0; i < n; i++)
                if (jstr(json_object_array_get_idx(rows, i), "node"))
                        return true;
        return false;
}

/* The headers, with "NODE" after the first four only when node is set (so output without
 * cluster-scope rows stays as it was). buf holds n + 1 entries. */
static const char *const *node_headers(const char *const *headers, size_t n, bool node, const char **buf) {
        for (size_t i = 0, j = 0; i < n; i++) {
                if (node && i == 4)
                        buf[j++] = "NODE";
                buf[j++] = headers[i];
        }
        return buf;
}

static int print_leases(json_object *leases, bool node, unsigned *ret_reclaimable) {
        static const char *const headers[] = { "ID",   "RESOURCE", "UNITS", "STATE", "USER",  "PID",
                                               "COMM", "UNIT",     "AGE",   "TTL",   "TOKEN", "DESCRIPTION" };
        const char *buf[ELEMENTSOF(headers) + 1];
        /* o: the shift of the columns after STATE when there is a NODE column. */
        size_t o = node;
        _cleanup_(table_freep) Table *t = table_new(ELEMENTSOF(headers) + o,
                                                    node_headers(headers, ELEMENTSOF(headers), node, buf));
        if (!t)
                return -ENOMEM;
        table_set_align_right(t, 2);
        table_set_align_right(t, 5 + o);
        table_set_align_right(t, 8 + o);
        table_set_align_right(t, 9 + o);
        table_set_align_right(t, 10 + o);
        /* What gives way first on a narrow terminal: the free text, then the names. The id
         * is never cut: it is what one copies to type it back (systemctl never cuts the
         * unit name either), and any unique prefix of it is accepted. Nor is the node: it
         * tells another host's lease, whose id no command here accepts, from this one's. */
        table_set_shrink(t, 11 + o, 0, 8);
        table_set_shrink(t, 7 + o, 1, 4);
        table_set_shrink(t, 6 + o, 2, 6);
        table_set_shrink(t, 1, 3, 8);
        table_set_shrink(t, 4 + o, 4, 6);
        table_set_shrink(t, 3, 5, 4);

        unsigned reclaimable = 0;
        size_t n = leases ? json_object_array_length(leases) : 0;
        for (size_t i = 0; i < n; i++) {
                json_object *l = json_object_array_get_idx(leases, i);
                char age[FORMAT_TIMESPAN_MAX], left[FORMAT_TIMESPAN_MAX], units[32];
                const char *state = jstr(l, "state");
                bool reclaim = state && strcmp(state, "held") != 0;
                reclaimable += reclaim;
                if (table_add_cell(t, jstr(l, "id"), reclaim ? ANSI_YELLOW : NULL) < 0 ||
                    table_add_cell(t, jstr(l, "resource"), NULL) < 0 ||
                    table_add_cell(t, format_units(units, sizeof(units), l), NULL) < 0 ||
                    table_add_cell(t, state, reclaim ? ANSI_YELLOW : NULL) < 0 ||
                    (node && table_add_cell(t, jstr(l, "node"), NULL) < 0) ||
                    add_owner_cells(t, jobj(l, "owner")) < 0 ||
                    table_add_cell(t, format_age(age, sizeof(age), jint(l, "created", 0)), NULL) < 0 ||
                    table_add_cell(t, format_left(left, sizeof(left), l), NULL) < 0 ||
                    table_add_cellf(t, NULL, "%lld", (long long) jint(l, "token", 0)) < 0 ||
                    table_add_cell(t, jstr(l, "description"), NULL) < 0)
                        return -ENOMEM;
        }
        if (n > 0)
                table_print(t, stdout, table_width(), arg_legend);
        *ret_reclaimable = reclaimable;
        return (int) n;
}

/* A waiter's STATE: "waiting", or "reclaimable" for a place restored after a restart whose
 * waiter has not come back yet (an older agend or another host's waiter sends none). */
static int print_waiters(json_object *waiters, bool node, unsigned *ret_reclaimable) {
        static const char *const headers[] = { "POS", "RESOURCE", "UNITS", "STATE",   "USER",
                                               "PID", "COMM",     "UNIT",  "WAITING", "DESCRIPTION" };
        const char *buf[ELEMENTSOF(headers) + 1];
        size_t o = node;
        _cleanup_(table_freep) Table *t = table_new(ELEMENTSOF(headers) + o,
                                                    node_headers(headers, ELEMENTSOF(headers), node, buf));
        if (!t)
                return -ENOMEM;
        table_set_align_right(t, 2);
        table_set_align_right(t, 5 + o);
        table_set_align_right(t, 8 + o);
        table_set_shrink(t, 9 + o, 0, 8);
        table_set_shrink(t, 7 + o, 1, 4);
        table_set_shrink(t, 6 + o, 2, 6);
        table_set_shrink(t, 1, 3, 8);
        table_set_shrink(t, 4 + o, 4, 6);
        table_set_shrink(t, 3, 5, 4);

        unsigned reclaimable = 0;
        size_t n = waiters ? json_object_array_length(waiters) : 0;
        for (size_t i = 0; i < n; i++) {
                json_object *w = json_object_array_get_idx(waiters, i);
                char age[FORMAT_TIMESPAN_MAX], units[32];
                const char *state = jstr(w, "state") ?: "waiting";
                bool reclaim = strcmp(state, "waiting") != 0;
                reclaimable += reclaim;
                /* "#1": a waiter's row never looks like a lease's, also without headers. */
                if (table_add_cellf(t, reclaim ? ANSI_YELLOW : NULL, "#%lld", (long long) jint(w, "position", 0)) < 0 ||
                    table_add_cell(t, jstr(w, "resource"), NULL) < 0 ||
                    table_add_cell(t, format_units(units, sizeof(units), w), NULL) < 0 ||
                    table_add_cell(t, state, reclaim ? ANSI_YELLOW : NULL) < 0 ||
                    (node && table_add_cell(t, jstr(w, "node"), NULL) < 0) ||
                    add_owner_cells(t, jobj(w, "owner")) < 0 ||
                    table_add_cell(t, format_age(age, sizeof(age), jint(w, "since", 0)), NULL) < 0 ||
                    table_add_cell(t, jstr(w, "description"), NULL) < 0)
                        return -ENOMEM;
        }
        if (n > 0)
                table_print(t, stdout, table_width(), arg_legend);
        *ret_reclaimable = reclaimable;
        return (int) n;
}

int verb_list(int argc, char **argv) {
        const char *resource = argc > 1 ? argv[1] : NULL;
        _cleanup_json_ json_object *params = json_object_new_object(), *reply = NULL;
        if (!params || (resource && json_add_string(params, "resource", resource) < 0))
                return log_oom();

        int r = agenctl_call("io.agend.Lease.List", params, resource, &reply);
        if (r > 0)
                return r;
        pager_open();
        if (arg_json) {
                agenctl_print_json(reply);
                return EXIT_OK;
        }

        /* One NODE column for both tables, or none: only cluster-scope rows have a node. */
        json_object *waiters = jobj(reply, "waiters");
        bool node = has_node(jobj(reply, "leases")) || has_node(waiters);
        unsigned reclaimable = 0;
        int nl = print_leases(jobj(reply, "leases"), node, &reclaimable);
        if (nl < 0)
                return EXIT_FAILURE_OTHER;
        size_t nw = waiters ? json_object_array_length(waiters) : 0;
        /* The blank line belongs to the legend: without it, rows follow rows. */
        if (nl > 0 && nw > 0 && arg_legend)
                putchar('\n');
        unsigned places = 0;
        if (print_waiters(waiters, node, &places) < 0)
                return EXIT_FAILURE_OTHER;

        if (arg_legend) {
                _cleanup_free_ char *on = NULL;
                if (resource) {
                        _cleanup_free_ char *e = escape_display(resource);
                        if (asprintf(&on, " on %s", strna(e)) < 0)
                                on = NULL;
                }
                if (nl > 0 || nw > 0)
                        putchar('\n');
                printf("%d lease%s, %zu waiter%s%s.", nl, nl == 1 ? "" : "s", nw, nw == 1 ? "" : "s", strempty(on));
                if (reclaimable)
                        printf(" %u reclaimable (restored after a restart, waiting for %s holder%s).", reclaimable,
                               reclaimable == 1 ? "its" : "their", reclaimable == 1 ? "" : "s");
                if (places)
                        printf(" %u waiter%s reclaimable (%s restored after a restart, kept for %s waiter%s).",
                               places, places == 1 ? "" : "s", places == 1 ? "a place" : "places",
                               places == 1 ? "its" : "their", places == 1 ? "" : "s");
                putchar('\n');
        }
        return EXIT_OK;
}

/* ---- show ---- */

static void show_field(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void show_field(const char *key, const char *fmt, ...) {
        _cleanup_free_ char *v = NULL, *e = NULL;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&v, fmt, ap) < 0)
                v = NULL;
        va_end(ap);
        e = escape_display(v);
        printf("%13s: %s\n", key, strna(e));
}

static void show_event_line(json_object *ev) {
        char ts[FORMAT_TIMESTAMP_MAX];
        const char *reason = jstr(ev, "reason");
        _cleanup_free_ char *er = escape_display(reason);
        printf("%15s%s %s%s%s\n", "", format_timestamp(ts, sizeof(ts), (usec_t) jint(ev, "time", 0), false),
               strna(jstr(ev, "type")), er ? ": " : "", strempty(er));
}

int verb_show(int argc, char **argv) {
        const char *id = argv[1];
        _cleanup_json_ json_object *reply = NULL;

        int r = agenctl_call("io.agend.Lease.List", NULL, NULL, &reply);
        if (r > 0)
                return r;
        json_object *leases = jobj(reply, "leases"), *lease = NULL;
        size_t n = leases ? json_object_array_length(leases) : 0, matches = 0;
        for (size_t i = 0; i < n; i++) {
                json_object *l = json_object_array_get_idx(leases, i);
                const char *lid = jstr(l, "id");
                if (lid && strcmp(lid, id) == 0) {
                        lease = l;
                        matches = 1;
                        break;
                }
                if (lid && *id && strncmp(lid, id, strlen(id)) == 0) {
                        lease = l;
                        matches++;
                }
        }
        if (matches > 1) {
                _cleanup_free_ char *e = escape_display(id);
                log_error("'%s' is the start of %zu lease ids: type more of it; see 'agenctl list'", strna(e), matches);
                return EXIT_USAGE;
        }
        if (!lease) {
                _cleanup_free_ char *e = escape_display(id);
                log_error("no lease %s: it has ended or never existed; see 'agenctl list'", strna(e));
                return EXIT_NOT_FOUND;
        }
        id = jstr(lease, "id");
        pager_open();
        if (arg_json) {
                agenctl_print_json(lease);
                return EXIT_OK;
        }

        char a[FORMAT_TIMESPAN_MAX], ts[FORMAT_TIMESTAMP_MAX];
        json_object *owner = jobj(lease, "owner");
        int64_t uid = jint(owner, "uid", -1);
        const char *unit = jstr(owner, "unit");
        const char *resource = jstr(lease, "resource");

        show_field("Id", "%s", strna(jstr(lease, "id")));
        show_field("Resource", "%s", strna(resource));
        show_field("Units", "%lld%s", (long long) jint(lease, "units", 1),
                   jbool(lease, "exclusive") ? " (exclusive: all units)" : "");
        show_field("State", "%s", strna(jstr(lease, "state")));
        show_field("Token", "%lld", (long long) jint(lease, "token", 0));
        show_field("Holder", "uid %lld (%s), gid %lld, pid %lld (%s)%s%s", (long long) uid,
                   uid >= 0 ? uid_to_name((uid_t) uid) : "?", (long long) jint(owner, "gid", -1),
                   (long long) jint(owner, "pid", 0), strna(jstr(owner, "comm")), unit ? ", unit " : "",
                   strempty(unit));
        show_field("Description", "%s", strempty(jstr(lease, "description")));
        show_field("Since", "%s (%s ago)", format_timestamp(ts, sizeof(ts), (usec_t) jint(lease, "created", 0), false),
                   format_age(a, sizeof(a), jint(lease, "created", 0)));
        if (jobj(lease, "ttl")) {
                char t[FORMAT_TIMESPAN_MAX], left[FORMAT_TIMESPAN_MAX];
                double ttl = json_object_get_double(jobj(lease, "ttl"));
                show_field("TTL", "%s, deadline %s (in %s)",
                           format_timespan(t, sizeof(t), (usec_t) (ttl * (double) USEC_PER_SEC)),
                           format_timestamp(ts, sizeof(ts), (usec_t) jint(lease, "deadline", 0), false),
                           format_left(left, sizeof(left), lease));
        } else
                show_field("TTL", "none");
        show_field("Bound to", "%s", jbool(lease, "detached") ? "nothing (detached: ends by TTL or release)"
                                                                  : "the holder's connection");

        /* The recent events of this lease, from the history of its resource. */
        _cleanup_json_ json_object *params = json_object_new_object(), *hist = NULL;
        _cleanup_free_ char *error_name = NULL, *hj = NULL;
        /* Best effort: without the history (or memory for it), show prints the lease alone. */
        if (params && (!resource || json_add_string(params, "resource", resource) >= 0) &&
            json_add_int(params, "limit", 1000) >= 0 &&
            agen_call_sync(agenctl_address(), "io.agend.Lease.History",
                           json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN), 0, 5.0, &hj,
                           &error_name) >= 0 &&
            hj && (hist = json_tokener_parse(hj))) {
                json_object *events = jobj(hist, "events");
                size_t ne = events ? json_object_array_length(events) : 0;
                bool first = true;
                for (size_t i = 0; i < ne; i++) {
                        json_object *ev = json_object_array_get_idx(events, i);
                        const char *lid = jstr(ev, "lease");
                        if (!lid || strcmp(lid, id) != 0)
                                continue;
                        if (first)
                                printf("%13s:\n", "Events");
                        first = false;
                        show_event_line(ev);
                }
        }
        return EXIT_OK;
}

/* ---- resources ---- */

int verb_resources(int argc, char **argv) {
        _cleanup_json_ json_object *reply = NULL;
        int r = agenctl_call("io.agend.Lease.Resources", NULL, NULL, &reply);
        if (r > 0)
                return r;
        pager_open();
        if (arg_json) {
                agenctl_print_json(reply);
                return EXIT_OK;
        }

        static const char *const headers[] = { "NAME", "CAPACITY", "USED", "LEASES", "WAITERS", "DECLARED" };
        _cleanup_(table_freep) Table *t = table_new(ELEMENTSOF(headers), headers);
        if (!t)
                return EXIT_FAILURE_OTHER;
        for (size_t c = 1; c <= 4; c++)
                table_set_align_right(t, c);
        table_set_shrink(t, 0, 0, 8);

        json_object *res = jobj(reply, "resources");
        size_t n = res ? json_object_array_length(res) : 0;
        for (size_t i = 0; i < n; i++) {
                json_object *o = json_object_array_get_idx(res, i);
                int64_t cap = jint(o, "capacity", 0), used = jint(o, "used", 0);
                const char *color = used >= cap && cap > 0 ? ANSI_YELLOW : NULL;
                if (table_add_cell(t, jstr(o, "name"), NULL) < 0 ||
                    table_add_cellf(t, NULL, "%lld", (long long) cap) < 0 ||
                    table_add_cellf(t, color, "%lld", (long long) used) < 0 ||
                    table_add_cellf(t, NULL, "%lld", (long long) jint(o, "leases", 0)) < 0 ||
                    table_add_cellf(t, NULL, "%lld", (long long) jint(o, "waiters", 0)) < 0 ||
                    table_add_cell(t, jbool(o, "declared") ? "yes" : "no", NULL) < 0)
                        return EXIT_FAILURE_OTHER;
        }
        if (n > 0)
                table_print(t, stdout, table_width(), arg_legend);
        if (arg_legend)
                printf("%s%zu resource%s.\n", n > 0 ? "\n" : "", n, n == 1 ? "" : "s");
        return EXIT_OK;
}

/* ---- status ---- */

int verb_status(int argc, char **argv) {
        _cleanup_json_ json_object *reply = NULL;
        int r = agenctl_call("io.agend.Lease.Status", NULL, NULL, &reply);
        if (r > 0)
                return r;
        pager_open();
        if (arg_json) {
                agenctl_print_json(reply);
                return EXIT_OK;
        }

        char up[FORMAT_TIMESPAN_MAX], bytes[FORMAT_BYTES_MAX];
        json_object *u = jobj(reply, "uptime");
        double uptime = u ? json_object_get_double(u) : 0;
        printf("%sagend %s%s at %s\n", ansi(ANSI_BOLD), strna(jstr(reply, "version")), ansi(ANSI_NORMAL),
               agenctl_address());
        show_field("Uptime", "%s", format_timespan(up, sizeof(up), (usec_t) (uptime * (double) USEC_PER_SEC)));
        show_field("Boot ID", "%s", strna(jstr(reply, "boot_id")));
        show_field("Leases", "%lld", (long long) jint(reply, "leases", 0));
        show_field("Waiters", "%lld", (long long) jint(reply, "waiters", 0));
        show_field("Connections", "%lld", (long long) jint(reply, "connections", 0));
        show_field("Commits", "%lld", (long long) jint(reply, "commits", 0));
        show_field("Database", "%s", format_bytes(bytes, sizeof(bytes), (uint64_t) jint(reply, "database_size", 0)));
        show_field("Sync", "%s", strna(jstr(reply, "sync")));
        return EXIT_OK;
}

/* ---- history ---- */

/* Without --lines on a terminal: as many events as fit on one screen with the header and
 * the legend (journalctl shows a screenful by default too). 0 = the daemon's default. */
static unsigned screenful(void) {
        struct winsize ws = {};
        if (isatty(STDOUT_FILENO) <= 0)
                return 0;
        unsigned lines = 0;
        const char *e = getenv("LINES");
        if (!e || parse_unsigned(e, 100000, &lines) < 0)
                lines = ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) >= 0 ? ws.ws_row : 24;
        return lines > 13 ? lines - 3 : 10;
}

int verb_history(int argc, char **argv) {
        const char *resource = argc > 1 ? argv[1] : NULL;
        _cleanup_json_ json_object *params = json_object_new_object(), *reply = NULL;
        unsigned limit = arg_lines > 0 ? arg_lines : screenful();
        if (!params || (resource && json_add_string(params, "resource", resource) < 0) ||
            (limit > 0 && json_add_int(params, "limit", limit) < 0))
                return log_oom();

        int r = agenctl_call("io.agend.Lease.History", params, resource, &reply);
        if (r > 0)
                return r;
        pager_open();
        if (arg_json) {
                agenctl_print_json(reply);
                return EXIT_OK;
        }

        static const char *const headers[] = { "TIME", "EVENT", "RESOURCE", "LEASE", "TOKEN",
                                               "USER", "PID",   "COMM",     "REASON" };
        _cleanup_(table_freep) Table *t = table_new(ELEMENTSOF(headers), headers);
        if (!t)
                return EXIT_FAILURE_OTHER;
        table_set_align_right(t, 4);
        table_set_align_right(t, 6);
        table_set_shrink(t, 8, 0, 8);
        table_set_shrink(t, 7, 1, 6);
        table_set_shrink(t, 2, 2, 8);
        table_set_shrink(t, 5, 3, 6);

        json_object *events = jobj(reply, "events");
        size_t n = events ? json_object_array_length(events) : 0;
        for (size_t i = 0; i < n; i++) {
                json_object *ev = json_object_array_get_idx(events, i), *owner = jobj(ev, "owner");
                char ts[FORMAT_TIMESTAMP_MAX];
                const char *type = jstr(ev, "type");
                const char *color = type && (strcmp(type, "revoked") == 0 || strcmp(type, "expired") == 0 ||
                                             strcmp(type, "voided") == 0)
                                            ? ANSI_RED
                                            : NULL;
                int64_t uid = jint(owner, "uid", -1);
                if (table_add_cell(t, format_timestamp(ts, sizeof(ts), (usec_t) jint(ev, "time", 0), false), NULL) < 0 ||
                    table_add_cell(t, type, color) < 0 || table_add_cell(t, jstr(ev, "resource"), NULL) < 0 ||
                    table_add_cell(t, jstr(ev, "lease"), NULL) < 0 ||
                    (jobj(ev, "token") ? table_add_cellf(t, NULL, "%lld", (long long) jint(ev, "token", 0))
                                           : table_add_cell(t, NULL, NULL)) < 0 ||
                    table_add_cell(t, owner && uid >= 0 ? uid_to_name((uid_t) uid) : NULL, NULL) < 0 ||
                    (owner ? table_add_cellf(t, NULL, "%lld", (long long) jint(owner, "pid", 0))
                           : table_add_cell(t, NULL, NULL)) < 0 ||
                    table_add_cell(t, jstr(owner, "comm"), NULL) < 0 ||
                    table_add_cell(t, jstr(ev, "reason"), NULL) < 0)
                        return EXIT_FAILURE_OTHER;
        }
        if (n > 0)
                table_print(t, stdout, table_width(), arg_legend);
        if (arg_legend)
                printf("%s%zu event%s.\n", n > 0 ? "\n" : "", n, n == 1 ? "" : "s");
        return EXIT_OK;
}

/* ---- watch ---- */

typedef struct WatchState {
        struct ev_loop *loop;
        const char *resource;
        int exit_code;
        bool started;
        bool done;
        bool lost;              /* the connection ended; retrying */
        double backoff;
        ev_timer retry;
} WatchState;

/* The clients and their Watch calls stay referenced from here until exit: the library has
 * no way to cancel a call in flight, and its reply context holds the client. Reachable, so
 * leak checkers stay quiet. A restart of agend leaves one ended client behind per restart. */
static agen_client *watch_clients[64];
static size_t n_watch_clients;

static void print_event_line(json_object *ev) {
        char ts[FORMAT_TIMESTAMP_MAX];
        json_object *owner = jobj(ev, "owner"), *by = jobj(ev, "revoked_by");
        _cleanup_free_ char *res = escape_display(jstr(ev, "resource"));
        const char *type = jstr(ev, "type");
        const char *color = !type                                                         ? NULL
                            : strcmp(type, "granted") == 0                                ? ANSI_GREEN
                            : strcmp(type, "revoked") == 0 || strcmp(type, "expired") == 0 ? ANSI_RED
                                                                                          : NULL;
        printf("%s %s%-9s%s %s", format_timestamp(ts, sizeof(ts), (usec_t) jint(ev, "time", 0), true),
               color ? ansi(color) : "", strna(type), color ? ansi(ANSI_NORMAL) : "", strna(res));
        if (jstr(ev, "lease"))
                printf(" lease=%s", jstr(ev, "lease"));
        if (jobj(ev, "token"))
                printf(" token=%lld", (long long) jint(ev, "token", 0));
        if (jobj(ev, "units"))
                printf(" units=%lld", (long long) jint(ev, "units", 0));
        if (owner) {
                int64_t uid = jint(owner, "uid", -1);
                _cleanup_free_ char *comm = escape_display(jstr(owner, "comm"));
                printf(" user=%s pid=%lld comm=%s", uid >= 0 ? uid_to_name((uid_t) uid) : "?",
                       (long long) jint(owner, "pid", 0), strna(comm));
        }
        if (by) {
                int64_t uid = jint(by, "uid", -1);
                printf(" by=%s/%lld", uid >= 0 ? uid_to_name((uid_t) uid) : "?", (long long) jint(by, "pid", 0));
        }
        if (jstr(ev, "reason")) {
                _cleanup_free_ char *reason = escape_display(jstr(ev, "reason"));
                printf(" reason=\"%s\"", strna(reason));
        }
        putchar('\n');
        fflush(stdout);
}

static void watch_end(WatchState *w, int code) {
        w->exit_code = code;
        w->done = true;
        ev_break(w->loop, EVBREAK_ALL);
}

static int watch_start(WatchState *w);

/* agend went away (stopped, restarted, crashed): like journalctl -f, wait for it. */
static void watch_lost(WatchState *w, const char *why) {
        if (!arg_reconnect) {
                log_error("agend %s; exiting (without --no-reconnect, watch waits for agend to come back)", why);
                return watch_end(w, EXIT_UNREACHABLE);
        }
        if (!w->lost)
                log_error("agend %s; waiting for it to come back (events meanwhile: 'agenctl history')", why);
        w->lost = true;
        w->started = false;
        ev_timer_set(&w->retry, w->backoff, 0.);
        ev_timer_start(w->loop, &w->retry);
        w->backoff = MIN(w->backoff * 2, 2.0);
}

static void watch_reply(agen_client *client, int status, const char *error_name, const char *params_json,
                        bool continues, void *userdata) {
        WatchState *w = userdata;
        if (w->done)
                return;
        if (status < 0 && !error_name)
                return watch_lost(w, w->lost ? "is still not back" : "closed the connection");
        if (status < 0)
                return watch_end(w, agenctl_report_error(status, error_name, params_json, NULL));
        _cleanup_json_ json_object *p = params_json ? json_tokener_parse(params_json) : NULL;
        json_object *ev = jobj(p, "event");
        if (!w->started) {
                w->started = true;
                w->backoff = 0.1;
                if (w->lost)
                        log_error("agend is back; watching again");
                else if (isatty(STDERR_FILENO) > 0 && !arg_json)
                        fprintf(stderr, "Watching; Ctrl-C stops.\n");
                w->lost = false;
        }
        if (ev) {
                if (arg_json) {
                        /* JSON lines: one Event object per line, whatever the mode. */
                        fputs(json_object_to_json_string_ext(ev, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE),
                              stdout);
                        fputc('\n', stdout);
                        fflush(stdout);
                } else
                        print_event_line(ev);
        }
        if (!continues)
                watch_lost(w, "ended the watch");
}

static void watch_retry(struct ev_loop *loop, ev_timer *t, int revents) {
        WatchState *w = container_of(t, WatchState, retry);
        int r = watch_start(w);
        if (r < 0)
                watch_lost(w, "is still not back");
}

static int watch_start(WatchState *w) {
        agen_client *c = NULL;
        if (n_watch_clients >= ELEMENTSOF(watch_clients)) {
                /* Recycle the oldest ended client: its call is over. */
                agen_client_unref(watch_clients[0]);
                memmove(watch_clients, watch_clients + 1, sizeof(watch_clients[0]) * (ELEMENTSOF(watch_clients) - 1));
                n_watch_clients--;
        }
        int r = agen_client_new(w->loop, agenctl_address(), &c);
        if (r < 0)
                return r;
        watch_clients[n_watch_clients++] = c;

        _cleanup_json_ json_object *params = json_object_new_object();
        if (!params || (w->resource && json_add_string(params, "resource", w->resource) < 0))
                return -ENOMEM;
        return agen_client_call(c, "io.agend.Lease.Watch", json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN),
                                AGEN_CALL_MORE, watch_reply, w);
}

static void watch_signal(struct ev_loop *loop, ev_signal *s, int revents) {
        watch_end(s->data, EXIT_OK);
}

int verb_watch(int argc, char **argv) {
        struct ev_loop *loop = ev_default_loop(0);
        if (!loop) {
                log_error("cannot make an event loop");
                return EXIT_FAILURE_OTHER;
        }
        WatchState w = { .loop = loop, .resource = argc > 1 ? argv[1] : NULL, .backoff = 0.1 };
        ev_timer_init(&w.retry, watch_retry, 0., 0.);

        /* At start agend must be there: a typo in --socket should not wait forever. */
        int r = watch_start(&w);
        if (r < 0)
                return agenctl_report_error(r, NULL, NULL, NULL);

        ev_signal sigint, sigterm;
        ev_signal_init(&sigint, watch_signal, SIGINT);
        ev_signal_init(&sigterm, watch_signal, SIGTERM);
        sigint.data = sigterm.data = &w;
        ev_signal_start(loop, &sigint);
        ev_signal_start(loop, &sigterm);

        while (!w.done)
                if (!ev_run(loop, 0))
                        break;
        if (!w.done) {
                log_error("watch ended unexpectedly");
                w.exit_code = EXIT_UNREACHABLE;
        }
        ev_signal_stop(loop, &sigint);
        ev_signal_stop(loop, &sigterm);
        ev_timer_stop(loop, &w.retry);
        return w.exit_code;
}

/* ---- check ---- */

int verb_check(int argc, char **argv) {
        const char *resource = argv[1], *t = argv[2];
        char *end = NULL;
        errno = 0;
        unsigned long long token = strtoull(t, &end, 10);
        if (!*t || *t == '-' || *t == '+' || !end || *end || errno != 0 || token > INT64_MAX) {
                _cleanup_free_ char *e = escape_display(t);
                log_error("check takes a fencing token (a number, as in $AGEN_LEASE_TOKEN), not '%s'", strna(e));
                return EXIT_USAGE;
        }
        _cleanup_json_ json_object *params = json_object_new_object(), *reply = NULL;
        if (json_add_string(params, "resource", resource) < 0 || json_add_int(params, "token", (int64_t) token) < 0)
                return log_oom();
        int r = agenctl_call("io.agend.Lease.Check", params, resource, &reply);
        if (r > 0)
                return r;
        bool current = jbool(reply, "current");
        if (arg_json)
                agenctl_print_json(reply);
        else if (!arg_quiet) {
                _cleanup_free_ char *e = escape_display(resource);
                if (current)
                        printf("Token %llu is current: it holds %s.\n", token, strna(e));
                else
                        printf("Token %llu is stale: no current lease on %s has it.\n", token, strna(e));
        }
        return current ? EXIT_OK : EXIT_STALE;
}

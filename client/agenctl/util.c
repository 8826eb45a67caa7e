/* SPDX-License-Identifier: MIT */
/* Calls to agend for the query verbs, and the one place that turns an error into a
 * message that says what to do, and into an exit code. */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agen/agen.h"
#include "agenctl.h"
#include "format.h"
#include "macro.h"
#include "string-table.h"

const char *agenctl_permission_hint = NULL;

int log_oom(void) {
        log_error("out of memory");
        return EXIT_FAILURE_OTHER;
}

/* A reply should come in milliseconds; this only catches a hung daemon. */
#define CALL_TIMEOUT 25.0

static char *address;

static void address_free(void) {
        free(address);
        address = NULL;
}

const char *agenctl_address(void) {
        if (address)
                return address;
        if (arg_socket)
                address = strdup(arg_socket);
        else if (agen_default_address(&address) < 0)
                address = NULL;
        if (address)
                atexit(address_free);
        return address ?: "/run/agend/io.agend.Lease";
}

const char *jstr(json_object *o, const char *key) {
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string))
                return NULL;
        return json_object_get_string(v);
}

int64_t jint(json_object *o, const char *key, int64_t def) {
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v))
                return def;
        if (json_object_is_type(v, json_type_int))
                return json_object_get_int64(v);
        if (json_object_is_type(v, json_type_double))
                return (int64_t) json_object_get_double(v);
        return def;
}

bool jbool(json_object *o, const char *key) {
        json_object *v;
        return o && json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_boolean) &&
               json_object_get_boolean(v);
}

json_object *jobj(json_object *o, const char *key) {
        json_object *v;
        if (!o || !json_object_object_get_ex(o, key, &v) || json_object_is_type(v, json_type_null))
                return NULL;
        return v;
}

void agenctl_print_json(json_object *o) {
        int flags = JSON_C_TO_STRING_NOSLASHESCAPE |
                    (arg_json == JSON_PRETTY ? JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED
                                             : JSON_C_TO_STRING_PLAIN);
        const char *s = o ? json_object_to_json_string_ext(o, flags) : "null";
        fputs(s, stdout);
        fputc('\n', stdout);
        fflush(stdout);
}

int agenctl_exit_code_for_errno(int error) {
        switch (error) {
        case -ENOENT:
        case -ENXIO:
                return EXIT_NOT_FOUND;
        case -ETIMEDOUT:
                return arg_conflict_exit_code;
        case -EPERM:
        case -EACCES:
                return EXIT_PERMISSION;
        default:
                return EXIT_FAILURE_OTHER;
        }
}

/* Local errors of connecting and talking: the daemon is not there or not answering. */
static int report_local(int error, const char *what) {
        const char *a = agenctl_address();
        switch (error) {
        case -ENOENT:
        case -ECONNREFUSED:
        case -ENOTDIR:
                log_error("agend is not running at %s: start it with 'systemctl start agend' "
                          "(or point --socket or $AGEND_SOCKET at a running agend)",
                          a);
                return EXIT_UNREACHABLE;
        case -EACCES:
        case -EPERM:
                log_error("cannot connect to agend at %s: permission denied; check the permissions of the "
                          "socket and of its directory",
                          a);
                return EXIT_UNREACHABLE;
        case -ETIMEDOUT:
                log_error("agend at %s did not answer within %.0fs: is it hung? See 'journalctl -u agend'", a,
                          CALL_TIMEOUT);
                return EXIT_UNREACHABLE;
        case -ECONNRESET:
        case -EPIPE:
        case -ENOTCONN:
                log_error("agend at %s closed the connection%s%s: did it stop or restart? "
                          "See 'systemctl status agend'",
                          a, what ? " while asked about " : "", strempty(what));
                return EXIT_UNREACHABLE;
        case -EINVAL:
                log_error("invalid socket address '%s'", a);
                return EXIT_USAGE;
        default:
                log_error("talking to agend at %s: %s", a, strerror(-error));
                return EXIT_UNREACHABLE;
        }
}

int agenctl_report_error(int error, const char *error_name, const char *params_json, const char *what) {
        if (!error_name)
                return report_local(error, what);

        json_object *p = params_json ? json_tokener_parse(params_json) : NULL;
        const char *name = strrchr(error_name, '.') ? strrchr(error_name, '.') + 1 : error_name;
        const char *reason = jstr(p, "reason");
        int code;

        /* The library's table of error names (the daemon's own), not one of ours. An
         * unknown name is -EPROTO, like ProtocolError: tell them apart by name. */
        int e = agen_error_from_name(error_name);
        if (e == -EPROTO && !streq_ptr(agen_error_to_name(-EPROTO), error_name))
                e = 0;
        switch (e) {
        case -ENOENT: {
                const char *id = jstr(p, "id") ?: what;
                log_error("no lease %s: it has ended or never existed; see 'agenctl list'", strna(id));
                code = EXIT_NOT_FOUND;
                break;
        }
        case -ENXIO: {
                const char *res = jstr(p, "resource") ?: what;
                log_error("no resource %s%s%s; see 'agenctl resources' for the declared ones", strna(res),
                          reason ? ": " : "", strempty(reason));
                code = EXIT_NOT_FOUND;
                break;
        }
        case -ETIMEDOUT: {
                const char *res = jstr(p, "resource") ?: what;
                log_error("%s is busy; see 'agenctl list %s'", strna(res), strna(res));
                code = arg_conflict_exit_code;
                break;
        }
        case -EPERM: {
                const char *id = jstr(p, "id"), *res = jstr(p, "resource");
                _cleanup_free_ char *esc = escape_display(id ? id : res ? res : what);
                log_error("permission denied%s%s%s%s%s%s", esc ? " for " : "", id ? "lease " : "", strempty(esc),
                          reason ? ": " : "", strempty(reason), strempty(agenctl_permission_hint));
                code = EXIT_PERMISSION;
                break;
        }
        case -EUSERS:
                log_error("limit exceeded (%s)%s%s; see 'agenctl list' for what you hold, or raise the limit in "
                          "agend.conf(5)",
                          strna(jstr(p, "limit")), reason ? ": " : "", strempty(reason));
                code = EXIT_FAILURE_OTHER;
                break;
        case -EPROTO:
                log_error("agend refused the request as malformed%s%s (is agenctl older or newer than agend?)",
                          reason ? ": " : "", strempty(reason));
                code = EXIT_FAILURE_OTHER;
                break;
        case -ENOSPC:
                log_error("agend cannot store new leases now%s%s; see 'journalctl -u agend'", reason ? ": " : "",
                          strempty(reason));
                code = EXIT_FAILURE_OTHER;
                break;
        case -EINVAL:
                if (reason) {
                        /* The daemon says why: print that, guess nothing. */
                        _cleanup_free_ char *ew = escape_display(what), *er = escape_display(reason);
                        log_error("agend refused the request%s%s: %s: %s", ew ? " for " : "", strempty(ew),
                                  strna(jstr(p, "parameter")), strna(er));
                        code = EXIT_FAILURE_OTHER;
                        break;
                }
                _fallthrough_;
        case -EOPNOTSUPP:
        case -EBADMSG: {
                const char *param = jstr(p, "parameter");
                log_error("agend does not understand this request (%s%s%s): is agenctl newer than agend?", name,
                          param ? ": " : "", strempty(param));
                code = EXIT_FAILURE_OTHER;
                break;
        }
        default:
                log_error("agend failed: %s%s%s", error_name, params_json ? " " : "", strempty(params_json));
                code = EXIT_FAILURE_OTHER;
        }
        json_object_put(p);
        return code;
}

static int call_once(const char *method, json_object *params, const char *what, json_object **ret) {
        _cleanup_free_ char *reply = NULL, *error_name = NULL;
        const char *pj = params ? json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN) : NULL;

        int r = agen_call_sync(agenctl_address(), method, pj, 0, CALL_TIMEOUT, &reply, &error_name);
        if (r < 0)
                return agenctl_report_error(r, error_name, reply, what);

        json_object *o = reply ? json_tokener_parse(reply) : json_object_new_object();
        if (!o || !json_object_is_type(o, json_type_object)) {
                json_object_put(o);
                log_error("agend sent a reply to %s that is not a JSON object", method);
                return EXIT_FAILURE_OTHER;
        }
        *ret = o;
        return 0;
}

/* Appends (or, at_front, prepends) the elements of page's array key to whole's. */
static int join_array(json_object *whole, json_object *page, const char *key, bool at_front) {
        json_object *a = jobj(whole, key), *b = jobj(page, key);
        size_t na = a ? json_object_array_length(a) : 0, nb = b ? json_object_array_length(b) : 0;
        json_object *n = json_object_new_array_ext((int) (na + nb));
        if (!n)
                return -ENOMEM;
        for (int pass = 0; pass < 2; pass++) {
                json_object *from = (pass == 0) == at_front ? b : a;
                size_t len = (pass == 0) == at_front ? nb : na;
                for (size_t i = 0; i < len; i++)
                        if (json_object_array_add(n, json_object_get(json_object_array_get_idx(from, i))) < 0) {
                                json_object_put(n);
                                return -ENOMEM;
                        }
        }
        json_object_object_add(whole, key, n);
        return 0;
}

/* List and History answer at most 1000 items per reply, with a cursor for the rest
 * (docs/io.agend.Lease.varlink): follow it, so a command sees every lease, and as many
 * events as it asked for. */
int agenctl_call(const char *method, json_object *params, const char *what, json_object **ret) {
        bool list = strcmp(method, "io.agend.Lease.List") == 0,
             history = strcmp(method, "io.agend.Lease.History") == 0;
        json_object *o = NULL;
        int r = call_once(method, params, what, &o);
        if (r > 0 || (!list && !history)) {
                *ret = o;
                return r;
        }
        /* The next pages' parameters: the same resource, and the cursor. */
        _cleanup_json_ json_object *whole = o, *p = json_object_new_object();
        json_object *resource = jobj(params, "resource");
        if (!p || (resource && json_object_object_add(p, "resource", json_object_get(resource)) < 0))
                return log_oom();
        /* History's limit: what was asked for, or the daemon's default of 100. */
        int64_t want = history ? jint(params, "limit", 100) : INT64_MAX;
        for (;;) {
                const char *cursor = list ? "continue_after" : "continue_before";
                json_object *c = jobj(whole, cursor);
                json_object *items = jobj(whole, list ? "leases" : "events");
                size_t have = items ? json_object_array_length(items) : 0;
                if (!c || (int64_t) have >= want)
                        break;
                json_object_object_add(p, list ? "after" : "before", json_object_get(c));
                if (history)
                        json_object_object_add(p, "limit", json_object_new_int64(want - (int64_t) have));
                _cleanup_json_ json_object *page = NULL;
                r = call_once(method, p, what, &page);
                if (r > 0)
                        return r;
                if (join_array(whole, page, list ? "leases" : "events", history) < 0)
                        return log_oom();
                json_object *next = jobj(page, cursor);
                if (next)
                        json_object_object_add(whole, cursor, json_object_get(next));
                else
                        json_object_object_del(whole, cursor);
        }
        json_object_object_del(whole, list ? "continue_after" : "continue_before");
        *ret = TAKE_PTR(whole);
        return 0;
}

int agenctl_resolve_id(const char *typed, char **ret) {
        /* A whole id needs no lookup. */
        size_t len = strlen(typed);
        if (len == 16 && strspn(typed, "0123456789abcdef") == 16) {
                *ret = strdup(typed);
                return *ret ? 0 : EXIT_FAILURE_OTHER;
        }
        _cleanup_json_ json_object *reply = NULL;
        int r = agenctl_call("io.agend.Lease.List", NULL, NULL, &reply);
        if (r > 0)
                return r;
        json_object *leases = jobj(reply, "leases");
        size_t n = leases ? json_object_array_length(leases) : 0, matches = 0;
        const char *found = NULL;
        for (size_t i = 0; i < n; i++) {
                const char *id = jstr(json_object_array_get_idx(leases, i), "id");
                if (!id || !*typed || strncmp(id, typed, len) != 0)
                        continue;
                if (strcmp(id, typed) == 0) {
                        found = id;
                        matches = 1;
                        break;
                }
                found = id;
                matches++;
        }
        if (matches > 1) {
                _cleanup_free_ char *e = escape_display(typed);
                log_error("'%s' is the start of %zu lease ids: type more of it; see 'agenctl list'", strna(e), matches);
                return EXIT_USAGE;
        }
        *ret = strdup(matches == 1 ? found : typed);
        return *ret ? 0 : EXIT_FAILURE_OTHER;
}

/* SPDX-License-Identifier: MIT */
#pragma once

/* agenctl: shared state of the verbs (the arg_ globals set by the command line) and the
 * helpers they share to call agend and to report errors. */

#include <json-c/json.h>
#include <stdbool.h>
#include <sys/types.h>

#include "json-build.h"
#include "usec.h"

/* Exit codes, documented in docs/agenctl.md and agenctl(1). Above the small numbers
 * commands use themselves (1, 2), in the range of <sysexits.h>, so that a script can
 * tell agenctl's own failures from those of the command `agenctl run` ran. */
enum {
        EXIT_OK = 0,
        EXIT_FAILURE_OTHER = 1,    /* an error not listed below */
        EXIT_USAGE = 64,           /* bad command line (EX_USAGE) */
        EXIT_NOT_FOUND = 66,       /* no such lease or resource (EX_NOINPUT) */
        EXIT_UNREACHABLE = 69,     /* agend not running, not answering (EX_UNAVAILABLE) */
        EXIT_BUSY = 75,            /* busy with --nowait, or --timeout passed (EX_TEMPFAIL) */
        EXIT_PERMISSION = 77,      /* PermissionDenied (EX_NOPERM) */
        EXIT_LOST = 79,            /* the lease ended while run/acquire held it */
        EXIT_STALE = 80,           /* check: the token is not a current holder's */
        EXIT_CANNOT_EXEC = 126,    /* run: the command exists but could not be started */
        EXIT_NO_COMMAND = 127,     /* run: the command was not found */
};

typedef enum JsonMode {
        JSON_OFF,
        JSON_SHORT,
        JSON_PRETTY,
} JsonMode;

extern char *arg_socket;           /* NULL: $AGEND_SOCKET or the default */
extern JsonMode arg_json;
extern bool arg_legend;
extern bool arg_full;
extern bool arg_quiet;
extern unsigned arg_units;         /* 0: not given */
extern bool arg_exclusive;
extern usec_t arg_timeout;         /* USEC_INFINITY: wait forever */
extern bool arg_timeout_set;
extern bool arg_nowait;
extern usec_t arg_ttl;             /* 0: none */
extern bool arg_ttl_set;
extern char *arg_description;
extern int arg_conflict_exit_code; /* exit code for busy/timeout */
extern usec_t arg_kill_delay;
extern bool arg_detach;
extern char *arg_secret;
extern char *arg_reason;
extern unsigned arg_lines;         /* history: 0 = a screenful on a terminal, else the daemon's default */
extern bool arg_pager;             /* false: --no-pager */
typedef enum HoldUntil {
        HOLD_UNTIL_ALL,            /* run: until the command and every process it started have exited */
        HOLD_UNTIL_COMMAND,        /* run: until the command itself exits */
} HoldUntil;
extern HoldUntil arg_hold_until;
extern usec_t arg_reconnect_timeout; /* run/acquire: how long to try to reclaim after agend went away */
extern bool arg_reconnect;         /* watch: follow agend across restarts */

/* The default of --reconnect-timeout; the library gives up reconnecting after 60 s too. */
#define RECONNECT_TIMEOUT_DEFAULT (60 * USEC_PER_SEC)

/* Resolves a lease id the user typed, which may be any unique prefix of an id (as docker
 * takes container ids): 0 and the full id in *ret (the caller's), or an exit code after a
 * message (ambiguous: EXIT_USAGE). A prefix that matches nothing is returned as typed, so
 * the daemon's NoSuchLease reports it. */
int agenctl_resolve_id(const char *typed, char **ret);

/* Pages standard output the way systemd's tools do (see pager.c); pager_close() waits for
 * the pager. Both are no-ops when stdout is not a terminal or --no-pager was given. */
void pager_open(void);
void pager_close(void);

/* The address agenctl talks to (arg_socket or the default); valid until exit. */
const char *agenctl_address(void);

/* Calls method with params (a JSON object, may be NULL; borrowed) and waits for the reply,
 * bounded. On success returns 0 and the reply's parameters in *ret (the caller's). On
 * failure prints a message that says what to do and returns the exit code for it (> 0).
 * what: a short phrase for the message ("lease 42"), may be NULL. */
int agenctl_call(const char *method, json_object *params, const char *what, json_object **ret);

/* For an error reply (error_name set) or a local error (error_name NULL, error a -errno):
 * prints one message to stderr, returns the exit code. params: the error's parameters as
 * JSON text, may be NULL. */
int agenctl_report_error(int error, const char *error_name, const char *params_json, const char *what);
/* Appended to a PermissionDenied message (one line), e.g. "; only its holder and root may
 * release it", or NULL. */
extern const char *agenctl_permission_hint;
/* The exit code for a -errno of the library (lease generator or call). */
int agenctl_exit_code_for_errno(int error);

/* Prints o as the JSON document of the verb (one line with --json=short). */
void agenctl_print_json(json_object *o);

/* Error and warning lines on stderr, prefixed "agenctl: ". */
void log_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "out of memory", and the exit code for it. */
int log_oom(void);

/* JSON accessors tolerant of missing keys (a newer or older daemon). */
const char *jstr(json_object *o, const char *key);
int64_t jint(json_object *o, const char *key, int64_t def);
bool jbool(json_object *o, const char *key);
json_object *jobj(json_object *o, const char *key);

/* Verbs. Each returns the process exit code. */
int verb_list(int argc, char **argv);
int verb_show(int argc, char **argv);
int verb_resources(int argc, char **argv);
int verb_status(int argc, char **argv);
int verb_history(int argc, char **argv);
int verb_watch(int argc, char **argv);
int verb_run(int argc, char **argv);
int verb_acquire(int argc, char **argv);
int verb_release(int argc, char **argv);
int verb_renew(int argc, char **argv);
int verb_revoke(int argc, char **argv);
int verb_check(int argc, char **argv);

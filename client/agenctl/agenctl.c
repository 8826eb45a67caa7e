/* SPDX-License-Identifier: MIT */
/* agenctl: the command line of agend. One getopt_long table for every verb, as systemd's
 * *ctl tools do; each option says which verbs take it, so `agenctl list --units 2` is a
 * usage error instead of being ignored. Options may come before or after the verb; for
 * `run`, parsing stops at the first argument after RESOURCE (or at "--"): the rest is the
 * command and its own options. */

#include <errno.h>
#include <getopt.h>
#include <locale.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agen/agen.h"
#include "agenctl.h"
#include "build-config.h"
#include "format.h"
#include "macro.h"

char *arg_socket = NULL;
JsonMode arg_json = JSON_OFF;
bool arg_legend = true;
bool arg_full = false;
bool arg_quiet = false;
unsigned arg_units = 0;
bool arg_exclusive = false;
usec_t arg_timeout = USEC_INFINITY;
bool arg_timeout_set = false;
bool arg_nowait = false;
usec_t arg_ttl = 0;
bool arg_ttl_set = false;
char *arg_description = NULL;
int arg_conflict_exit_code = EXIT_BUSY;
usec_t arg_kill_delay = 5 * USEC_PER_SEC;
bool arg_detach = false;
char *arg_secret = NULL;
char *arg_reason = NULL;
unsigned arg_lines = 0;
bool arg_pager = true;
HoldUntil arg_hold_until = HOLD_UNTIL_ALL;
usec_t arg_reconnect_timeout = RECONNECT_TIMEOUT_DEFAULT;
bool arg_reconnect = true;

/* Verb bits, for the options each verb accepts. */
enum {
        V_LIST = 1 << 0,
        V_SHOW = 1 << 1,
        V_RESOURCES = 1 << 2,
        V_STATUS = 1 << 3,
        V_RUN = 1 << 4,
        V_ACQUIRE = 1 << 5,
        V_RELEASE = 1 << 6,
        V_RENEW = 1 << 7,
        V_REVOKE = 1 << 8,
        V_WATCH = 1 << 9,
        V_HISTORY = 1 << 10,
        V_HELP = 1 << 11,
        V_CHECK = 1 << 12,
        V_ALL = (1 << 13) - 1,
        V_TABLES = V_LIST | V_RESOURCES | V_HISTORY,
        V_HOLD = V_RUN | V_ACQUIRE,
};

typedef struct Verb {
        const char *name;
        unsigned bit;
        int min_args, max_args; /* positional arguments after the verb; -1: any */
        int (*func)(int argc, char **argv);
        const char *synopsis;
        const char *summary;
        const char *help; /* verb-specific text for `agenctl VERB --help` */
} Verb;

static int verb_help(int argc, char **argv);

static const Verb verbs[] = {
        { "list", V_LIST, 0, 1, verb_list, "[RESOURCE]", "Show leases and waiters (the default verb)",
          "Shows the leases held (id, resource, units, holder, age, TTL left, fencing token,\n"
          "description) and the waiters with their queue positions, of one resource or all.\n" },
        { "show", V_SHOW, 1, 1, verb_show, "ID", "Show one lease in detail, with its recent events",
          "Shows every field of lease ID and the recent events of its resource that concern it.\n" },
        { "resources", V_RESOURCES, 0, 0, verb_resources, "", "Show resources: capacity, use, waiters",
          "Shows every resource the daemon knows: declared ones and those created on first use.\n" },
        { "status", V_STATUS, 0, 0, verb_status, "", "Show the daemon's version, uptime and counters",
          "Shows the daemon's version, uptime, boot id, lease/waiter/connection counts,\n"
          "commits, database size and sync mode.\n" },
        { "run", V_RUN, 2, -1, verb_run, "RESOURCE [OPTIONS] [--] COMMAND [ARG...]",
          "Run a command while holding a lease",
          "Waits for the lease (showing the queue position on a terminal), then runs COMMAND\n"
          "in its own process group with AGEN_LEASE_ID, AGEN_LEASE_TOKEN and AGEN_LEASE_RESOURCE\n"
          "in its environment, forwards SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 to\n"
          "it, and exits with its status (128+N if signal N killed it). The lease is released\n"
          "once the command and every process it started have exited (--hold-until=all), or\n"
          "as soon as the command itself exits (--hold-until=command). If the lease is lost,\n"
          "revoked or expires meanwhile, the command's processes get SIGTERM, then SIGKILL\n"
          "after --kill-delay, and agenctl says why and exits 79. If agend goes away, agenctl\n"
          "says so at once and tries to reclaim the lease for --reconnect-timeout (60s).\n"
          "SIGINT or SIGTERM while waiting leaves the queue and exits 128+N.\n" },
        { "acquire", V_ACQUIRE, 1, 1, verb_acquire, "RESOURCE", "Take a lease and hold it until interrupted",
          "Takes a lease and holds it until SIGINT or SIGTERM, then releases it and exits 0;\n"
          "exits 79 if the lease is lost meanwhile. With --detach the lease outlives agenctl:\n"
          "it prints the lease id and its secret (for release --secret) and exits; the lease\n"
          "ends by its TTL or by release.\n" },
        { "release", V_RELEASE, 1, 1, verb_release, "ID", "Release a lease",
          "Releases lease ID. Allowed to its holder: a process that gives the lease's secret\n"
          "(--secret, or $AGEN_LEASE_SECRET), and root.\n" },
        { "renew", V_RENEW, 1, 1, verb_renew, "ID", "Push the deadline of a TTL lease",
          "Pushes the deadline of lease ID to now + TTL (--ttl, else the lease's own TTL).\n"
          "Needs the secret, as release does.\n" },
        { "revoke", V_REVOKE, 1, 1, verb_revoke, "ID --reason TEXT", "End someone else's lease (admin)",
          "Ends lease ID on behalf of an administrator (root, or the users the configuration\n"
          "names in RevokeUsers=/RevokeGroups=). The holder is told the reason.\n" },
        { "watch", V_WATCH, 0, 1, verb_watch, "[RESOURCE]", "Print lease events as they happen",
          "Prints one line per event (queued, granted, renewed, released, expired, revoked,\n"
          "reclaimed, voided) until interrupted; JSON lines with --json. When agend stops or\n"
          "restarts, says so on stderr and waits for it to come back (--no-reconnect: exit 69).\n" },
        { "history", V_HISTORY, 0, 1, verb_history, "[RESOURCE]", "Show recent events",
          "Shows the last events the daemon kept, oldest first: a screenful on a terminal,\n"
          "else the daemon's default (100), unless --lines says how many.\n" },
        { "check", V_CHECK, 2, 2, verb_check, "RESOURCE TOKEN", "Tell whether a fencing token is current",
          "Asks agend whether TOKEN is the fencing token of a current holder of RESOURCE (one of\n"
          "them, for a counted resource). Exits 0 if it is, 80 if it is stale (the lease ended,\n"
          "was revoked or expired, or never held RESOURCE): a guarded service refuses the\n"
          "writes of a stale holder. Anyone may ask.\n" },
        { "help", V_HELP, 0, 1, verb_help, "[VERB]", "Show this help, or a verb's", NULL },
};

static const Verb *find_verb(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++)
                if (strcmp(verbs[i].name, name) == 0)
                        return &verbs[i];
        return NULL;
}

enum {
        ARG_VERSION = 0x100,
        ARG_JSON,
        ARG_NO_LEGEND,
        ARG_NO_PAGER,
        ARG_NOWAIT,
        ARG_KILL_DELAY,
        ARG_DETACH,
        ARG_SECRET,
        ARG_HOLD_UNTIL,
        ARG_RECONNECT_TIMEOUT,
        ARG_NO_RECONNECT,
};

static const struct option options[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, ARG_VERSION },
        { "socket", required_argument, NULL, 's' },
        { "json", optional_argument, NULL, ARG_JSON },
        { "no-legend", no_argument, NULL, ARG_NO_LEGEND },
        { "full", no_argument, NULL, 'l' },
        { "no-pager", no_argument, NULL, ARG_NO_PAGER },
        { "quiet", no_argument, NULL, 'q' },
        { "units", required_argument, NULL, 'u' },
        { "exclusive", no_argument, NULL, 'x' },
        { "timeout", required_argument, NULL, 'w' },
        { "nowait", no_argument, NULL, ARG_NOWAIT },
        { "ttl", required_argument, NULL, 't' },
        { "description", required_argument, NULL, 'd' },
        { "conflict-exit-code", required_argument, NULL, 'E' },
        { "kill-delay", required_argument, NULL, ARG_KILL_DELAY },
        { "detach", no_argument, NULL, ARG_DETACH },
        { "secret", required_argument, NULL, ARG_SECRET },
        { "reason", required_argument, NULL, 'r' },
        { "lines", required_argument, NULL, 'n' },
        { "hold-until", required_argument, NULL, ARG_HOLD_UNTIL },
        { "reconnect-timeout", required_argument, NULL, ARG_RECONNECT_TIMEOUT },
        { "no-reconnect", no_argument, NULL, ARG_NO_RECONNECT },
        {}
};

/* Which verbs take each option (by getopt value), and how it shows in messages. */
static const struct {
        int val;
        unsigned verbs;
        const char *name;
} option_verbs[] = {
        { 'l', V_TABLES, "--full" },
        { ARG_NO_LEGEND, V_TABLES, "--no-legend" },
        { 'q', V_HOLD | V_CHECK, "--quiet" },
        { 'u', V_HOLD, "--units" },
        { 'x', V_HOLD, "--exclusive" },
        { 'w', V_HOLD, "--timeout" },
        { ARG_NOWAIT, V_HOLD, "--nowait" },
        { 't', V_HOLD | V_RENEW, "--ttl" },
        { 'd', V_HOLD, "--description" },
        { 'E', V_HOLD, "--conflict-exit-code" },
        { ARG_KILL_DELAY, V_RUN, "--kill-delay" },
        { ARG_DETACH, V_ACQUIRE, "--detach" },
        { ARG_SECRET, V_RELEASE | V_RENEW, "--secret" },
        { 'r', V_REVOKE, "--reason" },
        { 'n', V_HISTORY, "--lines" },
        { ARG_JSON, V_ALL & ~V_RUN, "--json" },
        { ARG_HOLD_UNTIL, V_RUN, "--hold-until" },
        { ARG_RECONNECT_TIMEOUT, V_HOLD, "--reconnect-timeout" },
        { ARG_NO_RECONNECT, V_WATCH, "--no-reconnect" },
};

static const char *program_name = "agenctl";

void log_error(const char *fmt, ...) {
        va_list ap;
        fprintf(stderr, "%s: ", program_name);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputc('\n', stderr);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...) {
        va_list ap;
        fprintf(stderr, "%s: ", program_name);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\nTry '%s --help' for more information.\n", program_name);
        return EXIT_USAGE;
}

static void print_options(unsigned bit) {
        static const struct {
                unsigned verbs;
                const char *option;
                const char *text; /* "\n" continues under the text column */
        } lines[] = {
                { V_ALL, "-h --help", "Show this help" },
                { V_ALL, "   --version", "Show the version" },
                { V_ALL, "-s --socket=PATH", "agend's socket (default: $AGEND_SOCKET, else\n"
                                            "$XDG_RUNTIME_DIR/agend/io.agend.Lease if it exists,\n"
                                            "else /run/agend/io.agend.Lease)" },
                { V_ALL & ~V_RUN, "   --json[=MODE]", "JSON output: short (one line) or pretty" },
                { V_TABLES, "   --no-legend", "No header and footer lines" },
                { V_TABLES, "-l --full", "Do not cut columns to the terminal's width" },
                { V_TABLES | V_SHOW | V_STATUS | V_HELP, "   --no-pager",
                  "Do not pipe output into a pager ($AGENCTL_PAGER,\n"
                  "$PAGER, else less) on a terminal" },
                { V_HOLD, "-u --units=N", "Units of the resource to take (default 1)" },
                { V_HOLD, "-x --exclusive", "Take all units of the resource" },
                { V_HOLD, "-w --timeout=DURATION", "Wait at most this long (\"30s\", \"2min\", \"infinity\")" },
                { V_HOLD, "   --nowait", "Do not wait: fail at once if busy (like --timeout=0)" },
                { V_HOLD | V_RENEW, "-t --ttl=DURATION", "Time to live; renewed while run/acquire hold the\n"
                                                         "lease; for renew, the new TTL" },
                { V_HOLD, "-d --description=TEXT", "Why the lease is taken, shown to others (run:\n"
                                                   "default the command line)" },
                { V_HOLD, "-E --conflict-exit-code=N", "Exit code when busy or timed out (default 75)" },
                { V_HOLD, "-q --quiet", "No queue position on the terminal" },
                { V_CHECK, "-q --quiet", "Print nothing; the exit code says it" },
                { V_RUN, "   --kill-delay=DURATION", "SIGTERM to SIGKILL after a lost lease (default 5s)" },
                { V_RUN, "   --hold-until=WHEN", "all (default): release once the command and every\n"
                                                 "process it started have exited; command: once\n"
                                                 "the command itself has exited" },
                { V_HOLD, "   --reconnect-timeout=DURATION", "How long to try to reclaim the lease after\n"
                                                             "agend went away, before it counts as lost\n"
                                                             "(default 60s, also the most)" },
                { V_WATCH, "   --no-reconnect", "Exit (69) when agend stops, instead of waiting\n"
                                                "for it to come back" },
                { V_ACQUIRE, "   --detach", "Let the lease outlive agenctl; print id and secret" },
                { V_RELEASE | V_RENEW, "   --secret=SECRET", "The lease's secret (\"-\": read it from standard\n"
                                                              "input; default: $AGEN_LEASE_SECRET)" },
                { V_REVOKE, "-r --reason=TEXT", "Why (required; the holder is told)" },
                { V_HISTORY, "-n --lines=N", "Show the last N events (default: a screenful on a\n"
                                            "terminal, else 100)" },
        };
        printf("\nOptions:\n");
        for (size_t i = 0; i < ELEMENTSOF(lines); i++) {
                if (!(lines[i].verbs & bit))
                        continue;
                printf("  %-31s ", lines[i].option);
                for (const char *t = lines[i].text; *t; t++) {
                        putchar(*t);
                        if (*t == '\n')
                                printf("%34s", "");
                }
                putchar('\n');
        }
}

static void help_verb(const Verb *v) {
        pager_open();
        printf("%s %s %s\n\n%s.\n\n%s", program_name, v->name, v->synopsis, v->summary, v->help ? v->help : "");
        print_options(v->bit);
        printf("\nSee agenctl(1) for the output formats and exit codes.\n");
}

static void help(void) {
        pager_open();
        printf("%s [OPTIONS...] [VERB] [ARGS...]\n\n"
               "Query and hold machine-local resource leases from agend.\n\nVerbs:\n",
               program_name);
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                char left[64];
                snprintf(left, sizeof(left), "%s %s", verbs[i].name,
                         verbs[i].bit == V_RUN ? "RESOURCE -- COMMAND..." : verbs[i].synopsis);
                printf("  %-28s %s\n", left, verbs[i].summary);
        }
        print_options(V_ALL);
        printf("\nExit codes: 0 ok, 1 other failure, 64 usage, 66 no such lease or resource,\n"
               "69 agend unreachable, 75 busy or timed out, 77 permission denied, 79 lease lost,\n"
               "80 stale token (check); run: the command's status (126 cannot execute,\n"
               "127 not found, 128+N signal N).\n"
               "`%s VERB --help` shows a verb's options; see agenctl(1).\n",
               program_name);
}

static int verb_help(int argc, char **argv) {
        if (argc > 1) {
                const Verb *v = find_verb(argv[1]);
                if (!v)
                        return usage_error("unknown verb '%s'", argv[1]);
                help_verb(v);
        } else
                help();
        return EXIT_OK;
}

static int parse_secret(const char *s) {
        free(arg_secret);
        arg_secret = NULL;
        if (strcmp(s, "-") != 0) {
                arg_secret = strdup(s);
                return arg_secret ? 0 : -ENOMEM;
        }
        char *line = NULL;
        size_t n = 0;
        ssize_t k = getline(&line, &n, stdin);
        if (k <= 0) {
                free(line);
                return -ENODATA;
        }
        while (k > 0 && (line[k - 1] == '\n' || line[k - 1] == '\r'))
                line[--k] = 0;
        arg_secret = line;
        return 0;
}

/* Parses argv into the arg_ globals and the positional arguments (verb first) in
 * *ret_pos; for run the command follows RESOURCE. Returns 0, 1 to exit 0 at once
 * (--help, --version), or an exit code > 1. */
static int parse_argv(int argc, char **argv, char ***ret_pos, int *ret_npos, const Verb **ret_verb) {
        _cleanup_free_ char **pos = calloc((size_t) argc + 1, sizeof(char *));
        int npos = 0;
        bool seen[0x200] = {};
        bool want_help = false, rest_positional = false;
        const Verb *verb = NULL;
        int r;

        if (!pos)
                return EXIT_FAILURE_OTHER;

        /* "+": stop at the first non-option, record it and go on; that is how options
         * after the verb work while the command of `run` is left alone. */
        opterr = 0;
        optind = 1;
        for (;;) {
                if (rest_positional) {
                        while (optind < argc)
                                pos[npos++] = argv[optind++];
                        break;
                }
                int c = getopt_long(argc, argv, "+hs:lqu:xw:t:d:E:r:n:", options, NULL);
                if (c == -1) {
                        if (optind >= argc)
                                break;
                        if (optind > 1 && strcmp(argv[optind - 1], "--") == 0) {
                                rest_positional = true;
                                continue;
                        }
                        if (verb && verb->bit == V_RUN && npos >= 2) {
                                /* run: RESOURCE is in; the first argument that is not an
                                 * option starts the command, whose options are its own. */
                                rest_positional = true;
                                continue;
                        }
                        pos[npos++] = argv[optind++];
                        if (npos == 1) {
                                verb = find_verb(pos[0]);
                                if (!verb)
                                        return usage_error("unknown verb '%s'", pos[0]);
                        }
                        continue;
                }
                if (c >= 0 && c < (int) ELEMENTSOF(seen))
                        seen[c] = true;
                switch (c) {
                case 'h':
                        want_help = true;
                        break;
                case ARG_VERSION:
                        printf("agenctl %s\n", AGEND_VERSION);
                        return 1;
                case 's':
                        free(arg_socket);
                        arg_socket = strdup(optarg);
                        break;
                case ARG_JSON:
                        if (!optarg)
                                arg_json = isatty(STDOUT_FILENO) > 0 ? JSON_PRETTY : JSON_SHORT;
                        else if (strcmp(optarg, "short") == 0)
                                arg_json = JSON_SHORT;
                        else if (strcmp(optarg, "pretty") == 0)
                                arg_json = JSON_PRETTY;
                        else if (strcmp(optarg, "off") == 0)
                                arg_json = JSON_OFF;
                        else
                                return usage_error("--json= takes short, pretty or off, not '%s'", optarg);
                        break;
                case ARG_NO_LEGEND:
                        arg_legend = false;
                        break;
                case 'l':
                        arg_full = true;
                        break;
                case ARG_NO_PAGER:
                        arg_pager = false;
                        break;
                case ARG_HOLD_UNTIL:
                        if (strcmp(optarg, "all") == 0)
                                arg_hold_until = HOLD_UNTIL_ALL;
                        else if (strcmp(optarg, "command") == 0)
                                arg_hold_until = HOLD_UNTIL_COMMAND;
                        else
                                return usage_error("--hold-until takes all or command, not '%s'", optarg);
                        break;
                case ARG_RECONNECT_TIMEOUT:
                        if (parse_duration(optarg, &arg_reconnect_timeout) < 0)
                                return usage_error("--reconnect-timeout takes a duration (\"10s\", \"0\"), not '%s'",
                                                   optarg);
                        break;
                case ARG_NO_RECONNECT:
                        arg_reconnect = false;
                        break;
                case 'q':
                        arg_quiet = true;
                        break;
                case 'u':
                        if (parse_unsigned(optarg, 1000000, &arg_units) < 0)
                                return usage_error("--units takes a number in 1..1000000, not '%s'", optarg);
                        break;
                case 'x':
                        arg_exclusive = true;
                        break;
                case 'w':
                        if (parse_duration(optarg, &arg_timeout) < 0)
                                return usage_error("--timeout takes a duration (\"30s\", \"2min\", \"infinity\"), not '%s'",
                                                   optarg);
                        arg_timeout_set = true;
                        break;
                case ARG_NOWAIT:
                        arg_nowait = true;
                        break;
                case 't':
                        if (parse_duration(optarg, &arg_ttl) < 0 || arg_ttl == 0 || arg_ttl == USEC_INFINITY)
                                return usage_error("--ttl takes a positive duration (\"30s\", \"5min\"), not '%s'",
                                                   optarg);
                        arg_ttl_set = true;
                        break;
                case 'd':
                        free(arg_description);
                        arg_description = strdup(optarg);
                        break;
                case 'E': {
                        unsigned v;
                        if (parse_unsigned(optarg, 255, &v) < 0)
                                return usage_error("--conflict-exit-code takes a number in 1..255, not '%s'", optarg);
                        arg_conflict_exit_code = (int) v;
                        break;
                }
                case ARG_KILL_DELAY:
                        if (parse_duration(optarg, &arg_kill_delay) < 0 || arg_kill_delay == USEC_INFINITY)
                                return usage_error("--kill-delay takes a duration (\"5s\", \"500ms\"), not '%s'", optarg);
                        break;
                case ARG_DETACH:
                        arg_detach = true;
                        break;
                case ARG_SECRET:
                        r = parse_secret(optarg);
                        if (r < 0)
                                return usage_error("--secret=-: no secret on standard input");
                        break;
                case 'r':
                        free(arg_reason);
                        arg_reason = strdup(optarg);
                        break;
                case 'n':
                        if (parse_unsigned(optarg, 1000000, &arg_lines) < 0)
                                return usage_error("--lines takes a number in 1..1000000, not '%s'", optarg);
                        break;
                case '?':
                        if (optopt && optopt < 256 && strchr("sluwtdErn", optopt))
                                return usage_error("option '-%c' requires an argument", optopt);
                        if (optopt)
                                return usage_error("unknown option '-%c'", optopt);
                        return usage_error("unknown option '%s'", argv[optind - 1]);
                case ':':
                        return usage_error("option '%s' requires an argument", argv[optind - 1]);
                default:
                        return usage_error("unexpected option");
                }
        }

        if (!verb)
                verb = find_verb("list");
        if (want_help) {
                if (npos >= 1)
                        help_verb(verb);
                else
                        help();
                return 1;
        }

        /* Options that this verb does not take. */
        for (size_t i = 0; i < ELEMENTSOF(option_verbs); i++)
                if (seen[option_verbs[i].val] && !(option_verbs[i].verbs & verb->bit))
                        return usage_error("%s does not apply to '%s'", option_verbs[i].name, verb->name);

        int nargs = npos > 0 ? npos - 1 : 0;
        if (nargs < verb->min_args) {
                if (verb->bit == V_RUN)
                        return usage_error(nargs == 0 ? "run needs a RESOURCE and a COMMAND: agenctl run RESOURCE -- COMMAND..."
                                                      : "run needs a COMMAND after the resource: agenctl run %s -- COMMAND...",
                                           nargs > 0 ? pos[1] : "");
                return usage_error("'%s' needs %s", verb->name, verb->synopsis);
        }
        if (verb->max_args >= 0 && nargs > verb->max_args) {
                _cleanup_free_ char *extra = escape_display(pos[1 + verb->max_args]);
                if (verb->max_args == 0)
                        return usage_error("'%s' takes no arguments (got '%s')", verb->name, strna(extra));
                return usage_error("too many arguments for '%s' (from '%s' on): agenctl %s %s", verb->name,
                                   strna(extra), verb->name, verb->synopsis);
        }

        /* Combinations. */
        if (arg_nowait && arg_timeout_set)
                return usage_error("--nowait and --timeout exclude each other");
        if (arg_exclusive && arg_units)
                return usage_error("--units and --exclusive exclude each other");
        if (verb->bit == V_REVOKE && (!arg_reason || !*arg_reason))
                return usage_error("revoke needs --reason TEXT: the holder is told why");
        if (!arg_secret && (verb->bit & (V_RELEASE | V_RENEW))) {
                const char *e = getenv("AGEN_LEASE_SECRET");
                if (e && *e)
                        arg_secret = strdup(e);
        }

        *ret_pos = TAKE_PTR(pos);
        *ret_npos = npos;
        *ret_verb = verb;
        return 0;
}

static void free_args(void) {
        free(arg_socket);
        free(arg_description);
        if (arg_secret)
                explicit_bzero(arg_secret, strlen(arg_secret));
        free(arg_secret);
        free(arg_reason);
}

int main(int argc, char **argv) {
        _cleanup_free_ char **pos = NULL;
        const Verb *verb = NULL;
        int npos = 0;

        setlocale(LC_ALL, "");
        atexit(free_args);
        /* A closed pipe ends agenctl quietly, as for any filter. */
        signal(SIGPIPE, SIG_DFL);

        int r = parse_argv(argc, argv, &pos, &npos, &verb);
        if (r == 1)
                return EXIT_OK;
        if (r > 1)
                return r;

        if (npos == 0) {
                /* No verb: list. */
                char *list_argv[] = { (char *) "list", NULL };
                return verb->func(1, list_argv);
        }
        return verb->func(npos, pos);
}

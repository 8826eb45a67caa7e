/* SPDX-License-Identifier: MIT */
/* The verbs that change leases: run and acquire hold one through the lease generator of
 * libagenclient; acquire --detach, release, renew and revoke are single calls.
 *
 * Holding (run, acquire):
 *
 *   waiting ──granted──▶ held ──command exits / SIGINT──▶ releasing ──▶ done
 *      │                  │
 *      │ SIGINT/SIGTERM   └──revoked/expired/lost──▶ stopping (SIGTERM, later SIGKILL to the
 *      ▼                                             command's group) ──command exits──▶ done
 *    done (the queue is left by closing the lease connection)
 *
 * A step of the generator is always pending until the lease is given back: while waiting
 * it yields QUEUED, then GRANTED; while held, the generator's own Watch(lease) makes it
 * yield REVOKED, EXPIRED or LOST at once when the lease ends (and DISCONNECTED, RECLAIMED
 * across an agend restart). When the command exits, agen_gen_aclose() cancels the pending
 * step (-ECANCELED) and runs the Release round trip, and agenctl exits only after agend
 * has confirmed it, so a script's next command finds the resource free. */

#include <errno.h>
#include <ev.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "agen/agen.h"
#include "agenctl.h"
#include "format.h"
#include "macro.h"

/* How long the release round trip after the command may take before agenctl exits anyway
 * (closing its connections, which releases a bound lease). */
#define RELEASE_TIMEOUT 5.0

static const int forwarded_signals[] = { SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2 };

typedef enum HoldPhase {
        PHASE_WAITING,
        PHASE_HELD,
        PHASE_STOPPING,
        PHASE_RELEASING,
        PHASE_DONE,
} HoldPhase;

typedef struct Hold {
        struct ev_loop *loop;
        const char *resource;
        char **command;            /* run: the command; NULL for acquire */
        agen_client *client;
        agen_gen *lease;
        bool stepping;             /* an agen_gen_anext() is pending */
        char *id;
        uint64_t token;
        HoldPhase phase;
        int exit_code;
        bool queue_line;           /* a "waiting" line is on the terminal, to be cleared */
        bool released;

        pid_t child;               /* run: the command, leader of its own process group */
        pid_t group;               /* run: that process group, also after the command exited */
        bool leftovers;            /* run: the command exited, processes it started still run */
        ev_child rest_watcher;     /* run: any child of ours (we are their subreaper) ended */
        ev_timer reconnect_timer;  /* agend went away: how long we try to reclaim */
        bool disconnected;         /* ... and it has not come back yet */
        int tty;                   /* the terminal handed to the command, or -1 */
        ev_child child_watcher;
        ev_signal signals[ELEMENTSOF(forwarded_signals)];
        ev_timer kill_timer;
        ev_timer release_timer;
} Hold;


static void hold_finish(Hold *h) {
        h->phase = PHASE_DONE;
        ev_break(h->loop, EVBREAK_ALL);
}

static void clear_queue_line(Hold *h) {
        if (h->queue_line) {
                fputs("\r\033[K", stderr);
                h->queue_line = false;
        }
}

static void show_queue_position(Hold *h, unsigned position) {
        if (arg_quiet || isatty(STDERR_FILENO) <= 0)
                return;
        _cleanup_free_ char *res = escape_display(h->resource);
        fprintf(stderr, "\r\033[KWaiting for %s: position %u in the queue%s", strna(res), position, ellipsis());
        h->queue_line = true;
}

/* "held by alice (pid 1234, sleep) for 5s" for the busy message, or NULL. */
static char *describe_holders(const char *resource) {
        _cleanup_free_ char *reply = NULL, *error_name = NULL;
        _cleanup_json_ json_object *params = json_object_new_object(), *o = NULL;
        if (json_add_string(params, "resource", resource) < 0 ||
            agen_call_sync(agenctl_address(), "io.agend.Lease.List",
                           json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN), 0, 2.0, &reply,
                           &error_name) < 0 ||
            !reply || !(o = json_tokener_parse(reply)))
                return NULL;
        json_object *leases = jobj(o, "leases");
        size_t n = leases ? json_object_array_length(leases) : 0;
        if (n == 0)
                return NULL;
        json_object *l = json_object_array_get_idx(leases, 0), *owner = jobj(l, "owner");
        char age[FORMAT_TIMESPAN_MAX];
        usec_t now = usec_now(CLOCK_REALTIME), created = (usec_t) jint(l, "created", 0);
        int64_t uid = jint(owner, "uid", -1), pid = jint(owner, "pid", 0);
        const char *state = jstr(l, "state");
        _cleanup_free_ char *comm = escape_display(jstr(owner, "comm"));
        char who[128];
        /* Name a pid only while it runs: a detached lease or one restored after a restart
         * outlives the process that took it. */
        if (state && strcmp(state, "held") != 0)
                snprintf(who, sizeof(who), "a lease restored after an agend restart, waiting for its holder "
                         "to reclaim it");
        else if (pid > 0 && kill((pid_t) pid, 0) < 0 && errno == ESRCH)
                snprintf(who, sizeof(who), "%s (taken by %s, pid %lld, which has exited)",
                         jbool(l, "detached") ? "a detached lease" : "a lease", strna(comm), (long long) pid);
        else
                snprintf(who, sizeof(who), "pid %lld, %s", (long long) pid, strna(comm));
        char *s = NULL;
        bool paren = strncmp(who, "pid ", 4) == 0;
        if (asprintf(&s, "held by %s %s%s%s for %s%s", uid >= 0 ? uid_to_name((uid_t) uid) : "?", paren ? "(" : "",
                     who, paren ? ")" : "", format_timespan(age, sizeof(age), created && created < now ? now - created : 0),
                     n > 1 ? " and others" : "") < 0)
                return NULL;
        return s;
}

/* A duration as typed: "1.5s", not format_timespan()'s "1s". */
static const char *format_duration_exact(char *buf, size_t size, usec_t t) {
        if (t != USEC_INFINITY && t < 60 * USEC_PER_SEC && t % USEC_PER_MSEC == 0 && t % USEC_PER_SEC != 0 &&
            t >= USEC_PER_SEC) {
                snprintf(buf, size, "%.3g", (double) t / (double) USEC_PER_SEC);
                strncat(buf, "s", size - strlen(buf) - 1);
                return buf;
        }
        return format_timespan(buf, size, t);
}

/* "it has 1 unit and 2 were asked for", from the daemon's Resources, or NULL when the
 * request fits. */
static char *describe_capacity(const char *resource) {
        _cleanup_free_ char *reply = NULL, *error_name = NULL;
        _cleanup_json_ json_object *o = NULL;
        if (agen_call_sync(agenctl_address(), "io.agend.Lease.Resources", NULL, 0, 2.0, &reply, &error_name) < 0 ||
            !reply || !(o = json_tokener_parse(reply)))
                return NULL;
        json_object *res = jobj(o, "resources");
        for (size_t i = 0; res && i < json_object_array_length(res); i++) {
                json_object *r = json_object_array_get_idx(res, i);
                if (!jstr(r, "name") || strcmp(jstr(r, "name"), resource) != 0)
                        continue;
                long long cap = (long long) jint(r, "capacity", 0);
                if ((long long) (arg_units ? arg_units : 1u) <= cap)
                        return NULL;
                char *s = NULL;
                if (asprintf(&s, "it has %lld unit%s and %u %s asked for; see 'agenctl resources'", cap,
                             cap == 1 ? "" : "s", arg_units ? arg_units : 1u, arg_units > 1 ? "were" : "was") < 0)
                        return NULL;
                return s;
        }
        return NULL;
}

static int report_busy(const char *resource) {
        _cleanup_free_ char *res = escape_display(resource), *who = describe_holders(resource);
        char t[FORMAT_TIMESPAN_MAX];
        if (arg_nowait || arg_timeout == 0)
                log_error("%s is busy%s%s; wait for it with --timeout, or see 'agenctl list %s'", strna(res),
                          who ? ", " : "", strempty(who), strna(res));
        else
                log_error("timed out after %s waiting for %s%s%s; see 'agenctl list %s'",
                          format_duration_exact(t, sizeof(t), arg_timeout), strna(res), who ? ", " : "", strempty(who),
                          strna(res));
        return arg_conflict_exit_code;
}

/* A lease generator's step failed before the grant: agend's own reason when it refused
 * (agen_lease_get_error()), the library's errno otherwise. */
static int report_acquire_error(Hold *h, int error) {
        _cleanup_free_ char *res = escape_display(h->resource);
        const char *reason = NULL;
        (void) agen_lease_get_error(h->lease, NULL, &reason);
        _cleanup_free_ char *why = escape_display(reason);
        switch (error) {
        case -ETIMEDOUT:
                return report_busy(h->resource);
        case -ENXIO:
                log_error("no resource %s here%s%s; see 'agenctl resources'", strna(res), why ? ": " : "",
                          strempty(why));
                return EXIT_NOT_FOUND;
        case -EPERM:
        case -EACCES:
                log_error("permission denied: you may not use %s%s%s (see AllowUsers= and AllowGroups= in "
                          "agend.conf(5))",
                          strna(res), why ? ": " : "", strempty(why));
                return EXIT_PERMISSION;
        case -EUSERS:
                log_error("agend refused the request for %s: %s; see 'agenctl list', or raise the limit in "
                          "agend.conf(5)",
                          strna(res), why ?: "a per-user limit is reached");
                return EXIT_FAILURE_OTHER;
        case -EINVAL: {
                /* The daemon's reason, and the numbers behind it when it is about units. */
                _cleanup_free_ char *numbers = describe_capacity(h->resource);
                log_error("agend refused the request for %s: %s%s%s%s", strna(res), why ?: "invalid",
                          numbers ? " (" : "", strempty(numbers), numbers ? ")" : "");
                return EXIT_FAILURE_OTHER;
        }
        case -ENOENT:
        case -ECONNREFUSED:
        case -ECONNRESET:
        case -ENOTCONN:
        case -EPIPE:
                return agenctl_report_error(error, NULL, NULL, h->resource);
        default:
                log_error("acquiring %s: %s", strna(res), why ?: strerror(-error));
                return agenctl_exit_code_for_errno(error);
        }
}

static void on_lease_event(agen_gen *gen, int status, const void *value, void *userdata);
static void hold_release(Hold *h);

static void hold_step(Hold *h) {
        if (h->stepping || h->phase == PHASE_DONE)
                return;
        int r = agen_gen_anext(h->lease, on_lease_event, h);
        if (r >= 0)
                h->stepping = true;
}

/* With --hold-until=all agenctl is the child subreaper of the command: what the command
 * leaves running is re-parented to agenctl when its parent exits, so "every process the
 * command started has exited" is "agenctl has no children left" (processes that went to
 * another subreaper, a nested session manager, leave our watch). */
static bool has_children(void) {
        siginfo_t si = {};
        return waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) == 0;
}

/* Sends sig to the command's process group and to every child of ours: the processes the
 * command left behind, also those that made a session or group of their own. */
static void signal_descendants(Hold *h, int sig) {
        if (h->group > 0)
                (void) kill(-h->group, sig);
        if (arg_hold_until != HOLD_UNTIL_ALL)
                return;
        _cleanup_free_ char *line = NULL;
        size_t size = 0;
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/task/%d/children", (int) getpid());
        FILE *f = fopen(path, "re");
        if (!f)
                return;
        if (getline(&line, &size, f) > 0)
                for (char *tok = strtok(line, " \n"); tok; tok = strtok(NULL, " \n")) {
                        long pid = strtol(tok, NULL, 10);
                        if (pid > 0)
                                (void) kill((pid_t) pid, sig);
                }
        fclose(f);
}

/* The lease ended while held: stop the command (run) or end (acquire). */
static void hold_lost(Hold *h, const char *what, const char *reason) {
        if (h->phase != PHASE_HELD)
                return;
        h->phase = PHASE_STOPPING;
        h->exit_code = EXIT_LOST;
        ev_timer_stop(h->loop, &h->reconnect_timer);

        _cleanup_free_ char *res = escape_display(h->resource), *why = escape_display(reason);
        char d[FORMAT_TIMESPAN_MAX];
        if (h->child > 0 || h->leftovers) {
                /* The promise of run: nothing keeps running under a lease that is gone. */
                signal_descendants(h, SIGTERM);
                ev_timer_set(&h->kill_timer, usec_to_sec(arg_kill_delay), 0.);
                ev_timer_start(h->loop, &h->kill_timer);
                log_error("lease %s on %s %s%s%s; stopping the command (SIGTERM now, SIGKILL in %s)",
                          strna(h->id), strna(res), what, why ? ": " : "", strempty(why),
                          format_timespan(d, sizeof(d), arg_kill_delay));
        } else {
                log_error("lease %s on %s %s%s%s", strna(h->id), strna(res), what, why ? ": " : "",
                          strempty(why));
                hold_release(h);
        }
}

/* agend went away while we hold the lease: say so at once (the command goes on running
 * while the lease may already be gone), and give the reconnect a bound. */
static void hold_disconnected(Hold *h, const char *why) {
        if (h->disconnected || h->phase != PHASE_HELD)
                return;
        h->disconnected = true;
        char d[FORMAT_TIMESPAN_MAX];
        if (arg_reconnect_timeout == 0) {
                hold_lost(h, "may be lost", "the connection to agend ended and --reconnect-timeout is 0");
                return;
        }
        log_error("lost the connection to agend at %s (%s): lease %s may be lost; trying to reclaim it for %s "
                  "(--reconnect-timeout)%s",
                  agenctl_address(), why ?: "disconnected", strna(h->id),
                  format_timespan(d, sizeof(d), arg_reconnect_timeout), h->command ? ", the command keeps running" : "");
        if (arg_reconnect_timeout != USEC_INFINITY) {
                ev_timer_set(&h->reconnect_timer, usec_to_sec(arg_reconnect_timeout), 0.);
                ev_timer_start(h->loop, &h->reconnect_timer);
        }
}

static void reconnect_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Hold *h = container_of(w, Hold, reconnect_timer);
        char d[FORMAT_TIMESPAN_MAX], why[128];
        snprintf(why, sizeof(why), "agend did not come back within %s (--reconnect-timeout)",
                 format_timespan(d, sizeof(d), arg_reconnect_timeout));
        hold_lost(h, "was lost", why);
}

static void hold_maybe_done(Hold *h) {
        if (h->phase == PHASE_RELEASING && h->released)
                hold_finish(h);
}

static int spawn_command(Hold *h);

static void print_assignment(const char *key, const char *value) {
        /* Shell-safe: ids and secrets are plain tokens; anything else is quoted. */
        bool plain = *value != 0;
        for (const char *p = value; *p; p++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.+/=:", *p))
                        plain = false;
        if (plain) {
                printf("%s=%s\n", key, value);
                return;
        }
        printf("%s='", key);
        for (const char *p = value; *p; p++)
                if (*p == '\'')
                        fputs("'\\''", stdout);
                else
                        putchar(*p);
        fputs("'\n", stdout);
}

/* acquire --detach: the lease outlives agenctl. Print what the caller needs to release or
 * renew it (the secret) and let the generator go without releasing it. */
static void hand_off(Hold *h) {
        _cleanup_free_ char *secret = NULL, *lease_json = NULL;
        int r = agen_lease_hand_off(h->lease, &secret, &lease_json);
        _cleanup_json_ json_object *lease = r >= 0 ? json_tokener_parse(lease_json) : NULL;
        if (r < 0 || !lease || !jstr(lease, "id")) {
                log_error("cannot hand over the detached lease on %s: %s", h->resource,
                          r < 0 ? strerror(-r) : "agend described it in a way agenctl does not understand");
                /* Still ours (or in an unknown state): give it back rather than leak it. */
                h->exit_code = EXIT_FAILURE_OTHER;
                h->phase = PHASE_HELD;
                return hold_release(h);
        }
        if (arg_json != JSON_OFF) {
                _cleanup_json_ json_object *o = json_object_new_object();
                if (json_add(o, "lease", json_object_get(lease)) < 0 || json_add_string(o, "secret", secret) < 0) {
                        h->exit_code = log_oom();
                        return hold_finish(h);
                }
                agenctl_print_json(o);
        } else {
                char tok[32];
                snprintf(tok, sizeof(tok), "%lld", (long long) jint(lease, "token", 0));
                print_assignment("AGEN_LEASE_ID", jstr(lease, "id"));
                print_assignment("AGEN_LEASE_TOKEN", tok);
                print_assignment("AGEN_LEASE_SECRET", secret);
                fflush(stdout);
        }
        explicit_bzero(secret, strlen(secret));
        h->exit_code = EXIT_OK;
        hold_finish(h);
}

static void on_granted(Hold *h, const agen_lease_event *ev) {
        clear_queue_line(h);
        if (arg_detach)
                return hand_off(h);
        free(h->id);
        h->id = strdup(ev->id ? ev->id : "");
        h->token = ev->token;
        h->phase = PHASE_HELD;
        hold_step(h); /* the next event: the lease's end, or agend going away */

        if (arg_json != JSON_OFF && !h->command) {
                _cleanup_json_ json_object *o = json_object_new_object();
                if (json_add_string(o, "type", "granted") < 0 || json_add_string(o, "id", h->id) < 0 ||
                    json_add_int(o, "token", (int64_t) h->token) < 0 || json_add_string(o, "resource", h->resource) < 0)
                        (void) log_oom(); /* the lease is held all the same */
                else
                        agenctl_print_json(o);
        } else if (!h->command) {
                _cleanup_free_ char *res = escape_display(h->resource);
                printf("Holding lease %s on %s (token %llu) until interrupted.\n", h->id, strna(res),
                       (unsigned long long) h->token);
                fflush(stdout);
        }
        if (h->command && spawn_command(h) < 0) {
                h->exit_code = EXIT_CANNOT_EXEC;
                hold_release(h);
        }
}

static void on_lease_event(agen_gen *gen, int status, const void *value, void *userdata) {
        Hold *h = userdata;
        const agen_lease_event *ev = value;

        h->stepping = false;
        if (h->phase == PHASE_DONE || status == -ECANCELED)
                return;
        if (status < 0 || status == AGEN_STOP) {
                if (h->phase == PHASE_WAITING) {
                        clear_queue_line(h);
                        h->exit_code = status < 0 ? report_acquire_error(h, status) : EXIT_FAILURE_OTHER;
                        return hold_finish(h);
                }
                if (h->phase == PHASE_HELD)
                        return hold_lost(h, "was lost", status < 0 ? strerror(-status) : "the lease ended");
                return;
        }

        switch (ev->type) {
        case AGEN_LEASE_QUEUED:
                show_queue_position(h, ev->position);
                hold_step(h);
                break;
        case AGEN_LEASE_GRANTED:
                on_granted(h, ev);
                break;
        case AGEN_LEASE_DISCONNECTED:
                hold_disconnected(h, ev->reason);
                hold_step(h);
                break;
        case AGEN_LEASE_RECLAIMED:
                /* agend restarted and the lease is ours again. */
                ev_timer_stop(h->loop, &h->reconnect_timer);
                if (h->disconnected && h->phase == PHASE_HELD)
                        log_error("agend is back: lease %s reclaimed, same id and token", strna(h->id));
                h->disconnected = false;
                hold_step(h);
                break;
        case AGEN_LEASE_LOST: {
                /* The generator says how agend ended it: "released: why", "voided: why". */
                const char *why = ev->reason;
                if (why && strncmp(why, "released", 8) == 0)
                        hold_lost(h, "was released by someone else", why[8] == ':' ? why + 10 : NULL);
                else if (why && strncmp(why, "voided", 6) == 0)
                        hold_lost(h, "was voided", why[6] == ':' ? why + 8 : NULL);
                else
                        hold_lost(h, "was lost", why);
                break;
        }
        case AGEN_LEASE_REVOKED:
                hold_lost(h, "was revoked", ev->reason);
                break;
        case AGEN_LEASE_EXPIRED:
                hold_lost(h, "expired", ev->reason ?: "its TTL ran out without a renewal");
                break;
        default:
                /* RENEWED, and anything newer: keep going. */
                if (h->phase == PHASE_HELD)
                        hold_step(h);
                break;
        }
}

static void on_closed(agen_gen *gen, int status, void *userdata) {
        Hold *h = userdata;
        h->released = true;
        if (status < 0 && status != -ENOENT && h->phase != PHASE_DONE)
                log_error("releasing lease %s: %s; agend releases it when this process exits", strna(h->id),
                          strerror(-status));
        hold_maybe_done(h);
}

static void release_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Hold *h = container_of(w, Hold, release_timer);
        log_error("agend did not confirm the release of lease %s in time; exiting, which releases it",
                  strna(h->id));
        hold_finish(h);
}

/* The command ended, or acquire was interrupted: give the lease back, confirmed. */
static void hold_release(Hold *h) {
        if (h->phase == PHASE_RELEASING || h->phase == PHASE_DONE)
                return;
        h->phase = PHASE_RELEASING;
        /* A pending step is cancelled (it gets -ECANCELED), then the Release runs. */
        int r = agen_gen_aclose(h->lease, on_closed, h);
        if (r < 0) {
                hold_finish(h);
                return;
        }
        ev_timer_set(&h->release_timer, RELEASE_TIMEOUT, 0.);
        ev_timer_start(h->loop, &h->release_timer);
}

static void kill_timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        Hold *h = container_of(w, Hold, kill_timer);
        signal_descendants(h, SIGKILL);
}

static void tty_take_back(Hold *h) {
        if (h->tty < 0)
                return;
        /* We are in the background now: changing the foreground would stop us with SIGTTOU. */
        sigset_t ttou, old;
        sigemptyset(&ttou);
        sigaddset(&ttou, SIGTTOU);
        sigprocmask(SIG_BLOCK, &ttou, &old);
        (void) tcsetpgrp(h->tty, getpgrp());
        sigprocmask(SIG_SETMASK, &old, NULL);
}

static void tty_give(Hold *h) {
        if (h->tty < 0 || h->child <= 0)
                return;
        sigset_t ttou, old;
        sigemptyset(&ttou);
        sigaddset(&ttou, SIGTTOU);
        sigprocmask(SIG_BLOCK, &ttou, &old);
        (void) tcsetpgrp(h->tty, h->child);
        sigprocmask(SIG_SETMASK, &old, NULL);
}

static void rest_cb(struct ev_loop *loop, ev_child *w, int revents);

/* The command exited: with --hold-until=all, wait for what it left running. Returns
 * whether there is something to wait for. */
static bool hold_wait_leftovers(Hold *h) {
        if (arg_hold_until != HOLD_UNTIL_ALL || !has_children())
                return false;
        if (!h->leftovers) {
                h->leftovers = true;
                /* pid 0: any child; libev reaps each, and rest_cb looks whether any is left. */
                ev_child_init(&h->rest_watcher, rest_cb, 0, 0);
                ev_child_start(h->loop, &h->rest_watcher);
        }
        return true;
}

static void child_cb(struct ev_loop *loop, ev_child *w, int revents) {
        Hold *h = container_of(w, Hold, child_watcher);
        int st = w->rstatus;

        if (WIFSTOPPED(st)) {
                /* Ctrl-Z stopped the command: stop with it, so the shell gets the terminal
                 * back; when continued (fg), hand the terminal over again and wake it. */
                if (h->tty >= 0) {
                        tty_take_back(h);
                        (void) kill(getpid(), SIGSTOP);
                        tty_give(h);
                        (void) kill(-h->child, SIGCONT);
                }
                return;
        }
        if (WIFCONTINUED(st))
                return;

        ev_child_stop(loop, w);
        tty_take_back(h);
        h->child = 0;

        if (h->phase == PHASE_STOPPING) {
                /* The lease is gone: what the command left goes with it. */
                ev_timer_stop(loop, &h->kill_timer);
                signal_descendants(h, SIGKILL);
                if (!hold_wait_leftovers(h))
                        hold_release(h);
                return;
        }
        if (WIFEXITED(st))
                h->exit_code = WEXITSTATUS(st);
        else if (WIFSIGNALED(st))
                h->exit_code = 128 + WTERMSIG(st);
        if (h->phase == PHASE_HELD && hold_wait_leftovers(h)) {
                log_error("the command exited (status %d); holding lease %s until the processes it started have "
                          "exited too (--hold-until=command releases at once)",
                          h->exit_code, strna(h->id));
                return;
        }
        ev_timer_stop(loop, &h->kill_timer);
        hold_release(h);
}

static void rest_cb(struct ev_loop *loop, ev_child *w, int revents) {
        Hold *h = container_of(w, Hold, rest_watcher);
        if (has_children())
                return;
        ev_child_stop(loop, w);
        h->leftovers = false;
        ev_timer_stop(loop, &h->kill_timer);
        hold_release(h);
}

static int spawn_command(Hold *h) {
        int pfd[2];
        if (pipe2(pfd, O_CLOEXEC) < 0) {
                log_error("pipe: %s", strerror(errno));
                return -errno;
        }
        h->tty = -1;
        if (isatty(STDIN_FILENO) > 0 && tcgetpgrp(STDIN_FILENO) == getpgrp())
                h->tty = STDIN_FILENO;

        char token[32];
        snprintf(token, sizeof(token), "%llu", (unsigned long long) h->token);
        if (arg_hold_until == HOLD_UNTIL_ALL)
                (void) prctl(PR_SET_CHILD_SUBREAPER, 1);
        pid_t parent = getpid();
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0) {
                int e = errno;
                close(pfd[0]);
                close(pfd[1]);
                log_error("fork: %s", strerror(e));
                return -e;
        }
        if (pid == 0) {
                close(pfd[0]);
                (void) setpgid(0, 0);
                if (h->tty >= 0) {
                        signal(SIGTTOU, SIG_IGN);
                        (void) tcsetpgrp(h->tty, getpid());
                }
                /* A clean slate: default dispositions, nothing blocked (libev may block). */
                for (size_t i = 0; i < ELEMENTSOF(forwarded_signals); i++)
                        signal(forwarded_signals[i], SIG_DFL);
                signal(SIGPIPE, SIG_DFL);
                signal(SIGCHLD, SIG_DFL);
                signal(SIGTTOU, SIG_DFL);
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                /* If agenctl dies, its connection closes and the lease is released: the
                 * command must not go on without it. */
                (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != parent)
                        _exit(EXIT_LOST);
                if (setenv("AGEN_LEASE_ID", h->id, 1) < 0 || setenv("AGEN_LEASE_TOKEN", token, 1) < 0 ||
                    setenv("AGEN_LEASE_RESOURCE", h->resource, 1) < 0)
                        _exit(EXIT_CANNOT_EXEC);
                execvp(h->command[0], h->command);
                int e = errno;
                (void) !write(pfd[1], &e, sizeof(e));
                _exit(e == ENOENT ? EXIT_NO_COMMAND : EXIT_CANNOT_EXEC);
        }

        close(pfd[1]);
        (void) setpgid(pid, pid); /* also here: whichever runs first, the group exists */
        h->child = pid;
        h->group = pid;
        if (h->tty >= 0)
                tty_give(h);
        ev_child_init(&h->child_watcher, child_cb, pid, 1);
        ev_child_start(h->loop, &h->child_watcher);

        /* The exec result: EOF when it worked (the pipe is close-on-exec), errno if not. */
        int e = 0;
        ssize_t n;
        do
                n = read(pfd[0], &e, sizeof(e));
        while (n < 0 && errno == EINTR);
        close(pfd[0]);
        if (n == (ssize_t) sizeof(e)) {
                _cleanup_free_ char *cmd = escape_display(h->command[0]);
                log_error("cannot run %s: %s%s", strna(cmd), strerror(e),
                          e == ENOENT && !strchr(h->command[0], '/') ? " (not found in $PATH)" : "");
                /* The child exits with 127 or 126; child_cb takes that as the exit code. */
        }
        return 0;
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents) {
        Hold *h = w->data;
        int sig = w->signum;
        bool ending = sig == SIGINT || sig == SIGTERM || sig == SIGHUP || sig == SIGQUIT;

        switch (h->phase) {
        case PHASE_WAITING:
                if (!ending)
                        return;
                /* Leave the queue (closing the lease connection dequeues) and exit as the
                 * signal would have ended us. */
                clear_queue_line(h);
                h->exit_code = 128 + sig;
                hold_finish(h);
                return;
        case PHASE_HELD:
        case PHASE_STOPPING:
                if (h->child > 0) {
                        (void) kill(-h->child, sig);
                        return;
                }
                if (h->leftovers) {
                        /* The command is gone; its leftovers get what it would have got. */
                        signal_descendants(h, sig);
                        return;
                }
                if (ending) {
                        /* acquire: interrupted is how it is meant to end. */
                        if (h->phase == PHASE_HELD)
                                h->exit_code = EXIT_OK;
                        hold_release(h);
                }
                return;
        case PHASE_RELEASING:
                if (ending) {
                        /* Asked twice: exit now; closing the connection releases it. */
                        hold_finish(h);
                }
                return;
        default:
                return;
        }
}

static void quiet_exception_handler(struct ev_loop *loop, agen_gen *gen, int error, const char *message,
                                    void *userdata) {
        /* Cleanup errors are reported by on_closed(); the rest is the abandonment at exit. */
}

/* The words joined by spaces, cut to at most max bytes (on a UTF-8 boundary, ending in
 * "..."). NULL on OOM. */
static char *join_command(char **argv, size_t max) {
        size_t len = 0;
        for (char **a = argv; *a; a++)
                len += strlen(*a) + 1;
        char *s = malloc(len + 1), *p = s;
        if (!s)
                return NULL;
        for (char **a = argv; *a; a++)
                p = stpcpy(stpcpy(p, a == argv ? "" : " "), *a);
        if ((size_t) (p - s) > max) {
                size_t cut = max - 3;
                while (cut > 0 && ((unsigned char) s[cut] & 0xc0) == 0x80)
                        cut--;
                strcpy(s + cut, "...");
        }
        return s;
}

static int hold(const char *resource, char **command) {
        struct ev_loop *loop = ev_default_loop(EVFLAG_AUTO);
        if (!loop) {
                log_error("cannot make an event loop");
                return EXIT_FAILURE_OTHER;
        }

        static Hold h;
        h = (Hold) {
                .loop = loop,
                .resource = resource,
                .command = command,
                .phase = PHASE_WAITING,
                .tty = -1,
        };

        int r = agen_client_new(loop, agenctl_address(), &h.client);
        if (r < 0)
                return agenctl_report_error(r, NULL, NULL, resource);
        (void) agen_loop_set_exception_handler(loop, quiet_exception_handler, NULL);

        agen_lease_opts opts = {
                .units = arg_exclusive ? 0 : arg_units,
                .exclusive = arg_exclusive,
                .try_once = arg_nowait || (arg_timeout_set && arg_timeout == 0),
                .timeout = arg_timeout_set && arg_timeout != USEC_INFINITY ? usec_to_sec(arg_timeout) : 0,
                .ttl = arg_ttl_set ? usec_to_sec(arg_ttl) : 0,
                .detached = arg_detach,
                .description = arg_description,
        };
        /* run: the command line says why, as systemd-inhibit's --who defaults to it; the
         * daemon keeps at most 1024 bytes. */
        _cleanup_free_ char *cmdline = NULL;
        if (command && !arg_description) {
                cmdline = join_command(command, 1024);
                opts.description = cmdline;
        }
        r = agen_lease_new(h.client, resource, &opts, &h.lease);
        if (r < 0) {
                log_error("cannot make the lease: %s", strerror(-r));
                h.client = agen_client_unref(h.client);
                return EXIT_FAILURE_OTHER;
        }

        for (size_t i = 0; i < ELEMENTSOF(forwarded_signals); i++) {
                ev_signal_init(&h.signals[i], signal_cb, forwarded_signals[i]);
                h.signals[i].data = &h;
                ev_signal_start(loop, &h.signals[i]);
        }
        ev_timer_init(&h.kill_timer, kill_timer_cb, 0., 0.);
        ev_timer_init(&h.release_timer, release_timer_cb, 0., 0.);
        ev_timer_init(&h.reconnect_timer, reconnect_timer_cb, 0., 0.);

        hold_step(&h);
        if (!h.stepping) {
                log_error("cannot start the lease");
                h.exit_code = EXIT_FAILURE_OTHER;
                h.phase = PHASE_DONE;
        }
        while (h.phase != PHASE_DONE)
                if (!ev_run(loop, 0) && h.phase != PHASE_DONE) {
                        log_error("internal error: nothing left to wait for");
                        h.exit_code = EXIT_FAILURE_OTHER;
                        break;
                }
        clear_queue_line(&h);

        for (size_t i = 0; i < ELEMENTSOF(forwarded_signals); i++)
                ev_signal_stop(loop, &h.signals[i]);
        ev_timer_stop(loop, &h.kill_timer);
        ev_timer_stop(loop, &h.release_timer);
        ev_timer_stop(loop, &h.reconnect_timer);
        if (h.leftovers) {
                ev_child_stop(loop, &h.rest_watcher);
                signal_descendants(&h, SIGKILL);
        }
        if (h.child > 0) {
                /* Leaving with the command still running (asked twice to exit while it was
                 * being stopped): it must not outlive the lease. */
                ev_child_stop(loop, &h.child_watcher);
                tty_take_back(&h);
                (void) kill(-h.child, SIGKILL);
                (void) waitpid(h.child, NULL, 0);
        }

        /* A step still pending (waiting, or a daemon restart) is abandoned at once: that
         * closes the lease connection, which leaves the queue or releases the lease. */
        (void) agen_loop_shutdown(loop, h.stepping ? 0 : 2.0);
        h.lease = agen_gen_unref(h.lease);
        h.client = agen_client_unref(h.client);
        free(h.id);
        h.id = NULL;
        return h.exit_code;
}

int verb_run(int argc, char **argv) {
        /* argv: "run" RESOURCE COMMAND... */
        return hold(argv[1], argv + 2);
}

int verb_acquire(int argc, char **argv) {
        if (arg_detach) {
                if (!arg_ttl_set) {
                        log_error("--detach needs --ttl: a detached lease ends only by its TTL or by release, so "
                                  "one whose secret is lost would otherwise stay forever");
                        return EXIT_USAGE;
                }
        }
        return hold(argv[1], NULL);
}

/* ---- release, renew, revoke ---- */

int verb_release(int argc, char **argv) {
        _cleanup_free_ char *id = NULL;
        int k = agenctl_resolve_id(argv[1], &id);
        if (k > 0)
                return k;
        _cleanup_json_ json_object *p = json_object_new_object(), *reply = NULL;
        if (json_add_string(p, "id", id) < 0 || (arg_secret && json_add_string(p, "secret", arg_secret) < 0))
                return log_oom();
        agenctl_permission_hint = "; only its holder (its connection, or whoever gives its secret with --secret) "
                                  "and root may release it";
        int r = agenctl_call("io.agend.Lease.Release", p, id, &reply);
        if (r > 0)
                return r;
        if (arg_json != JSON_OFF)
                agenctl_print_json(reply);
        return EXIT_OK;
}

int verb_renew(int argc, char **argv) {
        _cleanup_free_ char *id = NULL;
        int k = agenctl_resolve_id(argv[1], &id);
        if (k > 0)
                return k;
        _cleanup_json_ json_object *p = json_object_new_object(), *reply = NULL;
        if (json_add_string(p, "id", id) < 0 ||
            (arg_ttl_set && json_add_double(p, "ttl", usec_to_sec(arg_ttl)) < 0) ||
            (arg_secret && json_add_string(p, "secret", arg_secret) < 0))
                return log_oom();
        agenctl_permission_hint = "; only its holder (its connection, or whoever gives its secret with --secret) "
                                  "and root may renew it";
        int r = agenctl_call("io.agend.Lease.Renew", p, id, &reply);
        if (r > 0)
                return r;
        json_object *lease = jobj(reply, "lease");
        if (arg_json != JSON_OFF) {
                agenctl_print_json(lease ?: reply);
                return EXIT_OK;
        }
        if (lease && jobj(lease, "deadline")) {
                char ts[FORMAT_TIMESTAMP_MAX], left[FORMAT_TIMESPAN_MAX];
                usec_t deadline = (usec_t) jint(lease, "deadline", 0), now = usec_now(CLOCK_REALTIME);
                printf("Renewed lease %s: deadline %s (in %s).\n", id, format_timestamp(ts, sizeof(ts), deadline, false),
                       format_timespan(left, sizeof(left), deadline > now ? deadline - now : 0));
        } else
                printf("Renewed lease %s (it has no TTL).\n", id);
        return EXIT_OK;
}

int verb_revoke(int argc, char **argv) {
        _cleanup_free_ char *id = NULL;
        int k = agenctl_resolve_id(argv[1], &id);
        if (k > 0)
                return k;
        _cleanup_json_ json_object *p = json_object_new_object(), *reply = NULL;
        if (json_add_string(p, "id", id) < 0 || json_add_string(p, "reason", arg_reason) < 0)
                return log_oom();
        agenctl_permission_hint = "; revoking needs root, or a user or group in RevokeUsers= or RevokeGroups= of "
                                  "agend.conf(5)";
        int r = agenctl_call("io.agend.Lease.Revoke", p, id, &reply);
        if (r > 0)
                return r;
        if (arg_json != JSON_OFF)
                agenctl_print_json(reply);
        return EXIT_OK;
}

/* SPDX-License-Identifier: MIT */
/* The history checker under kill -9 (docs/reliability.md).
 *
 * N clients, each on its own raw varlink connection, acquire (with "more", waiting as
 * long as it takes), hold for a few ms and release, on two mutexes and a counted resource,
 * against the real agend. Every reply is taken with a CLOCK_MONOTONIC timestamp (and
 * written to --log FILE if asked). Between rounds of random length the daemon is killed
 * with SIGKILL — sometimes again while it restores its database — and restarted on the
 * same state directory; each holder then reconnects and reclaims its lease (same id and
 * token), and for every Reclaim refused the History must show how that lease ended; each
 * waiter re-sends its Acquire presenting the ticket of its last "queued" reply, as
 * libagenclient does, to take its place back.
 * checker.c then checks what the clients saw: units held <= capacity at every instant,
 * tokens increasing per resource across restarts, no acknowledged grant lost, FIFO, and a
 * place taken back by ticket not overtaken by one queued after it.
 *
 *   test-history [--sync normal|full] [--kills N] [--clients N] [--round-ms MIN:MAX]
 *                [--grace SEC] [--seed N] [--log FILE]
 *
 * Exit 0 when the checker found nothing, 1 on a violation or when agend misbehaved (did not
 * restart, closed a connection while alive, answered with an unexpected error). */

#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checker.h"
#include "helper-agend.h"

#define MAX_CLIENTS 64

typedef struct ResourceDef {
        const char *name;
        unsigned capacity;
        unsigned max_units;
        unsigned weight;        /* how often clients pick it, out of the sum */
} ResourceDef;

/* Two mutexes (created on first use) and a counted resource (declared). */
static const ResourceDef resources[] = {
        { "hist-m0", 1, 1, 4 },
        { "hist-m1", 1, 1, 3 },
        { "hist-pool", 3, 2, 3 },
};

typedef enum ClientState {
        CLIENT_THINK,           /* idle until wake, then sends Acquire */
        CLIENT_WAITING,         /* Acquire sent, no grant yet */
        CLIENT_HOLDING,         /* holds until wake, then sends Release */
        CLIENT_RELEASING,       /* Release sent, no reply yet */
} ClientState;

typedef struct Client {
        unsigned idx;
        VConn *conn;
        ClientState state;
        usec_t wake;
        CheckGrant g;           /* the attempt in progress; id/secret below */
        size_t res;             /* index into resources[] of the attempt in progress */
        char id[128];
        char secret[256];
        char ticket[128];       /* of the last "queued" reply of the attempt; "" = none */
} Client;

static struct {
        const char *sync;
        unsigned kills;
        unsigned n_clients;
        unsigned round_min_ms, round_max_ms;
        const char *grace;
        uint64_t seed;
        const char *log_path;
} arg = {
        .sync = "normal",
        .kills = 5,
        .n_clients = 8,
        .round_min_ms = 20,
        .round_max_ms = 500,
        .grace = "0.3",
};

static Agend *daemon_;
static Checker *checker;
static Client clients[MAX_CLIENTS];
static int res_index[ELEMENTSOF(resources)];
static unsigned epoch;
static usec_t t0;
static FILE *logf_;
static uint64_t rng;

static struct {
        unsigned long kills, kills_in_startup, replies, reclaims_refused_released;
        unsigned long resent, tickets_presented;
        unsigned long restart_usec_max;
} stats;

static uint64_t rand64(void) {
        /* xorshift64*: reproducible from --seed. */
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        return rng * 0x2545F4914F6CDD1DULL;
}

static unsigned rand_range(unsigned lo, unsigned hi) {
        return lo + (unsigned) (rand64() % (uint64_t) (hi - lo + 1));
}

static usec_t now(void) {
        return usec_now(CLOCK_MONOTONIC);
}

static void log_reply(const Client *c, const char *what, json_object *m) {
        if (!logf_)
                return;
        fprintf(logf_, "%.6f c%u e%u %s %s\n", usec_to_sec(now() - t0), c ? c->idx : 0, epoch, what,
                m ? jtext(m) : "");
}

static _noreturn_ void die(const char *fmt, ...) _printf_(1, 2);
static _noreturn_ void die(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "test-history: ");
        vfprintf(stderr, fmt, ap);
        fprintf(stderr, "\n");
        va_end(ap);
        if (logf_)
                fflush(logf_);
        helper_cleanup();       /* prints the tail of agend's log */
        exit(1);
}

static void client_connect(Client *c) {
        int r = vconn_open_agend(daemon_, &c->conn);
        if (r < 0)
                die("client %u: cannot connect to agend: %s", c->idx, strerror(-r));
}

static void client_think(Client *c) {
        c->state = CLIENT_THINK;
        c->wake = now() + rand_range(0, 5000);
}

static void client_acquire(Client *c) {
        unsigned total = 0, pick;
        for (size_t i = 0; i < ELEMENTSOF(resources); i++)
                total += resources[i].weight;
        pick = rand_range(0, total - 1);
        size_t res = 0;
        while (pick >= resources[res].weight)
                pick -= resources[res++].weight;

        c->res = res;
        c->g = (CheckGrant) {
                .client = c->idx,
                .resource = (unsigned) res_index[res],
                .units = rand_range(1, resources[res].max_units),
                .epoch = epoch,
        };
        c->id[0] = c->secret[0] = c->ticket[0] = 0;
        c->g.sent = c->g.place_sent = now();
        c->g.place_epoch = epoch;
        int r = vconn_send(c->conn, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"%s\",\"units\":%u}",
                           resources[res].name, c->g.units);
        if (r < 0)
                die("client %u: cannot send Acquire: %s", c->idx, strerror(-r));
        c->state = CLIENT_WAITING;
}

/* After a restart, a waiter asks again for the same, presenting the ticket of its place
 * if it was told one (as libagenclient does); the new call is of this epoch. */
static void client_resend(Client *c) {
        stats.resent++;
        c->g.epoch = epoch;
        c->g.sent = now();
        c->g.queued = 0;
        if (c->ticket[0]) {
                stats.tickets_presented++;
                c->g.ticket = CHECK_TICKET_UNCONFIRMED;
        } else {
                /* No place to take back: this call makes a new one. */
                c->g.ticket = CHECK_TICKET_NONE;
                c->g.place_sent = c->g.sent;
                c->g.place_queued = 0;
                c->g.place_epoch = epoch;
        }
        if (logf_)
                fprintf(logf_, "%.6f c%u e%u resend ticket=%s\n", usec_to_sec(c->g.sent - t0), c->idx, epoch,
                        c->ticket[0] ? c->ticket : "-");
        int r = c->ticket[0] ? vconn_send(c->conn, VL_MORE, LEASE_IF "Acquire",
                                          "{\"resource\":\"%s\",\"units\":%u,\"ticket\":\"%s\"}",
                                          resources[c->res].name, c->g.units, c->ticket)
                             : vconn_send(c->conn, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"%s\",\"units\":%u}",
                                          resources[c->res].name, c->g.units);
        if (r < 0)
                die("client %u: cannot re-send Acquire: %s", c->idx, strerror(-r));
}

static void client_release(Client *c) {
        c->g.end = now();
        int r = vconn_send(c->conn, 0, LEASE_IF "Release", "{\"id\":\"%s\"}", c->id);
        if (r < 0)
                die("client %u: cannot send Release: %s", c->idx, strerror(-r));
        c->state = CLIENT_RELEASING;
}

/* The attempt in progress is a grant the checker must see. */
static void client_record(Client *c) {
        c->g.id = c->id;
        if (checker_add_grant(checker, &c->g) < 0)
                die("out of memory");
}

static void client_reply(Client *c, json_object *m, usec_t t) {
        stats.replies++;
        log_reply(c, "reply", m);
        const char *err = reply_error(m);
        switch (c->state) {
        case CLIENT_WAITING: {
                const char *st = reply_state(m);
                if (err || !*st) {
                        checker_add_violation(checker, "protocol: client %u: Acquire answered %s", c->idx, jtext(m));
                        client_think(c);
                        return;
                }
                if (strcmp(st, "queued") == 0) {
                        const char *ticket = jstr(reply_params(m), "ticket");
                        if (!ticket || !*ticket || strlen(ticket) >= sizeof(c->ticket)) {
                                checker_add_violation(checker, "protocol: client %u: queued reply without a ticket %s",
                                                      c->idx, jtext(m));
                                ticket = "";
                        }
                        bool same = c->ticket[0] && strcmp(ticket, c->ticket) == 0;
                        if (!c->g.queued) {
                                c->g.queued = t;
                                if (c->g.ticket == CHECK_TICKET_UNCONFIRMED)
                                        c->g.ticket = same ? CHECK_TICKET_KEPT : CHECK_TICKET_REFUSED;
                        }
                        if (*ticket && !same) {
                                /* A new place, at the tail, made by this call. */
                                snprintf(c->ticket, sizeof(c->ticket), "%s", ticket);
                                c->g.place_sent = c->g.sent;
                                c->g.place_queued = t;
                                c->g.place_epoch = epoch;
                        }
                        return;
                }
                json_object *p = reply_params(m);
                const char *id = jstr(p, "lease.id"), *secret = jstr(p, "secret");
                int64_t token = jint(p, "lease.token");
                if (strcmp(st, "granted") != 0 || !id || !secret || token <= 0 ||
                    jint(p, "lease.units") != (int64_t) c->g.units || reply_continues(m)) {
                        checker_add_violation(checker, "protocol: client %u: bad grant %s", c->idx, jtext(m));
                        client_think(c);
                        return;
                }
                snprintf(c->id, sizeof(c->id), "%s", id);
                snprintf(c->secret, sizeof(c->secret), "%s", secret);
                c->g.token = (uint64_t) token;
                c->g.granted = t;
                c->state = CLIENT_HOLDING;
                c->wake = t + rand_range(0, 10000);
                return;
        }
        case CLIENT_RELEASING:
                if (err)
                        checker_add_violation(checker, "protocol: client %u: Release of %s answered %s", c->idx,
                                              c->id, jtext(m));
                client_record(c);
                client_think(c);
                return;
        default:
                checker_add_violation(checker, "protocol: client %u: unsolicited %s", c->idx, jtext(m));
                return;
        }
}

/* Reads every message already there. Returns -ECONNRESET when the daemon closed. */
static int client_drain(Client *c) {
        for (;;) {
                json_object *m = NULL;
                int r = vconn_recv(c->conn, 0, &m);
                if (r == -ETIMEDOUT)
                        return 0;
                if (r < 0)
                        return r;
                client_reply(c, m, now());
                helper_pool_put(m);
        }
}

static void run_round(usec_t duration) {
        usec_t end = now() + duration;
        struct pollfd pfd[MAX_CLIENTS];
        for (;;) {
                usec_t t = now(), next = end;
                if (t >= end)
                        return;
                for (unsigned i = 0; i < arg.n_clients; i++) {
                        Client *c = &clients[i];
                        if (c->state == CLIENT_THINK && c->wake <= t)
                                client_acquire(c);
                        else if (c->state == CLIENT_HOLDING && c->wake <= t)
                                client_release(c);
                        if ((c->state == CLIENT_THINK || c->state == CLIENT_HOLDING) && c->wake < next)
                                next = c->wake;
                        pfd[i] = (struct pollfd) { .fd = c->conn->fd, .events = POLLIN };
                }
                t = now();
                int timeout = next > t ? (int) ((next - t + 999) / 1000) : 0;
                int n = poll(pfd, arg.n_clients, timeout);
                if (n < 0 && errno != EINTR)
                        die("poll: %m");
                for (unsigned i = 0; n > 0 && i < arg.n_clients; i++)
                        if (pfd[i].revents) {
                                int r = client_drain(&clients[i]);
                                if (r == -ECONNRESET)
                                        die("client %u: agend (alive) closed the connection", i);
                                if (r < 0)
                                        die("client %u: %s", i, strerror(-r));
                        }
        }
}

static void kill_daemon(usec_t *ret_kill) {
        *ret_kill = now();
        if (agend_kill(daemon_) < 0)
                die("cannot kill agend");
        stats.kills++;
        if (logf_)
                fprintf(logf_, "%.6f kill e%u\n", usec_to_sec(*ret_kill - t0), epoch);
}

/* What agend sent before it died is still in the sockets: take it, as of this epoch. */
static void drain_after_kill(void) {
        for (unsigned i = 0; i < arg.n_clients; i++) {
                Client *c = &clients[i];
                int r = client_drain(c);
                if (r < 0 && r != -ECONNRESET)
                        die("client %u: %s", i, strerror(-r));
                c->conn = vconn_close(c->conn);
        }
}

static void restart(void) {
        usec_t t = now();
        /* Sometimes another kill while it opens and restores the database. */
        if (rand_range(0, 4) == 0) {
                if (agend_spawn(daemon_) < 0)
                        die("cannot start agend");
                helper_sleep(rand_range(0, 30000) / 1e6);
                if (daemon_->pid > 0) {
                        (void) agend_kill(daemon_);
                        stats.kills++;
                        stats.kills_in_startup++;
                }
        }
        int r = agend_start(daemon_);
        if (r < 0)
                die("agend did not restart after kill -9: %s (wait status %d)", strerror(-r), daemon_->exit_status);
        stats.restart_usec_max = MAX(stats.restart_usec_max, now() - t);
}

/* The end of a lease as History tells it ("released: reason"), or NULL. */
static char *history_end(VConn *obs, const char *resource, const char *id) {
        json_object *rep = NULL;
        int r = vconn_call(obs, &rep, LEASE_IF "History", "{\"resource\":\"%s\",\"limit\":1000}", resource);
        if (r < 0)
                die("History: %s", strerror(-r));
        json_object *evs = jget(reply_params(rep), "events");
        char *found = NULL;
        for (size_t i = 0; !found && i < json_object_array_length(evs); i++) {
                json_object *ev = json_object_array_get_idx(evs, i);
                const char *type = jstr(ev, "type"), *lease = jstr(ev, "lease"), *reason = jstr(ev, "reason");
                if (!type || !lease || strcmp(lease, id) != 0 || !reason || !*reason)
                        continue;
                if (strcmp(type, "released") == 0 || strcmp(type, "expired") == 0 || strcmp(type, "revoked") == 0 ||
                    strcmp(type, "voided") == 0)
                        if (asprintf(&found, "%s: %s", type, reason) < 0)
                                found = NULL;
        }
        helper_pool_put(rep);
        return found;
}

/* After a restart: every client gets a new connection; holders reclaim on it. */
static void reclaim_all(usec_t t_kill) {
        VConn *obs = NULL;
        if (vconn_open_agend(daemon_, &obs) < 0)
                die("cannot connect to the restarted agend");
        for (unsigned i = 0; i < arg.n_clients; i++) {
                Client *c = &clients[i];
                client_connect(c);
                if (c->state == CLIENT_WAITING) {
                        /* A waiting Acquire died with the daemon: ask again now, with the ticket. */
                        client_resend(c);
                        continue;
                }
                if (c->state != CLIENT_HOLDING && c->state != CLIENT_RELEASING)
                        continue;

                json_object *m = NULL;
                int r = vconn_call(c->conn, &m, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%" PRIu64 ",\"secret\":\"%s\"}",
                                   c->id, c->g.token, c->secret);
                if (r < 0)
                        die("client %u: Reclaim: %s", i, strerror(-r));
                log_reply(c, "reclaim", m);
                const char *err = reply_error(m);
                if (!err) {
                        if (jint(reply_params(m), "lease.token") != (int64_t) c->g.token)
                                c->g.reclaim_bad_token = true;
                        c->g.reclaims++;
                        /* Held all along; a Release sent before the kill did not commit. */
                        if (c->state == CLIENT_RELEASING) {
                                c->state = CLIENT_HOLDING;
                                c->wake = now();
                        }
                } else if (strcmp(err, LEASE_IF "NoSuchLease") == 0) {
                        c->g.reclaim_refused = true;
                        if (c->state == CLIENT_HOLDING)
                                c->g.end = t_kill;
                        else
                                stats.reclaims_refused_released++;
                        const char *name = resources[0].name;
                        for (size_t k = 0; k < ELEMENTSOF(resources); k++)
                                if (res_index[k] == (int) c->g.resource)
                                        name = resources[k].name;
                        char *h = history_end(obs, name, c->id);
                        c->g.history_end = h;
                        client_record(c);
                        free(h);
                        c->g.history_end = NULL;
                        client_think(c);
                } else {
                        checker_add_violation(checker, "protocol: client %u: Reclaim of %s answered %s", i, c->id,
                                              jtext(m));
                        client_think(c);
                }
                helper_pool_put(m);
        }
        vconn_close(obs);
}

static void parse_args(int argc, char **argv) {
        static const struct option opts[] = {
                { "sync", required_argument, NULL, 's' },     { "kills", required_argument, NULL, 'k' },
                { "clients", required_argument, NULL, 'c' },  { "round-ms", required_argument, NULL, 'r' },
                { "grace", required_argument, NULL, 'g' },    { "seed", required_argument, NULL, 'S' },
                { "log", required_argument, NULL, 'l' },      {},
        };
        int o;
        arg.seed = (uint64_t) now() ^ ((uint64_t) getpid() << 32);
        while ((o = getopt_long(argc, argv, "", opts, NULL)) >= 0)
                switch (o) {
                case 's':
                        arg.sync = optarg;
                        break;
                case 'k':
                        arg.kills = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 'c':
                        arg.n_clients = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case 'r':
                        if (sscanf(optarg, "%u:%u", &arg.round_min_ms, &arg.round_max_ms) != 2 ||
                            arg.round_min_ms > arg.round_max_ms)
                                die("--round-ms MIN:MAX");
                        break;
                case 'g':
                        arg.grace = optarg;
                        break;
                case 'S':
                        arg.seed = strtoull(optarg, NULL, 0);
                        break;
                case 'l':
                        arg.log_path = optarg;
                        break;
                default:
                        exit(2);
                }
        if (arg.n_clients < 1 || arg.n_clients > MAX_CLIENTS)
                die("--clients 1..%d", MAX_CLIENTS);
        if (strcmp(arg.sync, "normal") != 0 && strcmp(arg.sync, "full") != 0)
                die("--sync normal|full");
        rng = arg.seed ? arg.seed : 1;
}

int main(int argc, char **argv) {
        parse_args(argc, argv);
        t0 = now();
        if (arg.log_path && !(logf_ = fopen(arg.log_path, "we")))
                die("cannot open %s: %m", arg.log_path);

        if (agend_new(&daemon_) < 0)
                die("cannot create the test directory");
        snprintf(daemon_->sync, sizeof(daemon_->sync), "%s", arg.sync);
        snprintf(daemon_->grace, sizeof(daemon_->grace), "%s", arg.grace);
        if (checker_new(&checker) < 0)
                die("out of memory");
        for (size_t i = 0; i < ELEMENTSOF(resources); i++) {
                if (resources[i].capacity > 1 && agend_declare_resource(daemon_, resources[i].name, resources[i].capacity) < 0)
                        die("cannot write the config");
                res_index[i] = checker_add_resource(checker, resources[i].name, resources[i].capacity);
        }
        int r = agend_start(daemon_);
        if (r < 0)
                die("agend did not start: %s", strerror(-r));

        printf("test-history: --sync=%s --kills %u --clients %u --round-ms %u:%u --grace %s --seed %" PRIu64 "\n",
               arg.sync, arg.kills, arg.n_clients, arg.round_min_ms, arg.round_max_ms, arg.grace, arg.seed);
        fflush(stdout);

        for (unsigned i = 0; i < arg.n_clients; i++) {
                clients[i].idx = i;
                client_connect(&clients[i]);
                client_think(&clients[i]);
        }

        while (stats.kills < arg.kills) {
                run_round((usec_t) rand_range(arg.round_min_ms, arg.round_max_ms) * USEC_PER_MSEC);
                usec_t t_kill;
                kill_daemon(&t_kill);
                drain_after_kill();
                epoch++;
                restart();
                reclaim_all(t_kill);
        }
        run_round((usec_t) arg.round_max_ms * USEC_PER_MSEC);

        /* What is still held counts as held to the end; a Release in flight ends there. */
        for (unsigned i = 0; i < arg.n_clients; i++) {
                Client *c = &clients[i];
                if (c->state == CLIENT_HOLDING)
                        c->g.end = USEC_INFINITY;
                if (c->state == CLIENT_HOLDING || c->state == CLIENT_RELEASING)
                        client_record(c);
                c->conn = vconn_close(c->conn);
        }
        int st = 0;
        if (agend_stop(daemon_, &st) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
                checker_add_violation(checker, "agend: did not exit 0 on SIGTERM at the end (wait status 0x%x)", st);

        usec_t t_check = now();
        unsigned v = checker_run(checker);
        usec_t check_usec = now() - t_check;
        CheckStats s;
        checker_get_stats(checker, &s);
        struct utsname u = {};
        (void) uname(&u);
        printf("test-history: sync=%s kills=%lu (in start-up %lu) grants=%lu (queued first %lu) replies=%lu "
               "reclaims=%lu refused=%lu (release had committed: %lu) resent=%lu (with a ticket %lu; "
               "granted with the place kept %lu, refused %lu) violations=%u duration=%.1fs "
               "slowest-restart=%.3fs check=%.3fs machine=%s %s, %ld cpus\n",
               arg.sync, stats.kills, stats.kills_in_startup, s.grants, s.queued, stats.replies, s.reclaims,
               s.reclaims_refused, stats.reclaims_refused_released, stats.resent, stats.tickets_presented,
               s.tickets_kept, s.tickets_refused, v, usec_to_sec(now() - t0),
               usec_to_sec(stats.restart_usec_max), usec_to_sec(check_usec), u.machine, u.release,
               sysconf(_SC_NPROCESSORS_ONLN));
        checker_print_violations(checker, stdout, 50);
        if (s.grants == 0 || stats.kills < arg.kills)
                v++, printf("test-history: nothing was checked\n");
        checker_free(checker);
        if (logf_)
                fclose(logf_);
        helper_cleanup();
        return v ? 1 : 0;
}

/* SPDX-License-Identifier: MIT */
/* libFuzzer: method dispatch, as a connected client reaches it. The real varlink server
 * (daemon/varlink-server.c) with agend's method table (methods.c), connections (conn.c),
 * engine, and an in-memory store behind the daemon's own commit path: the pipeline
 * (store-pipe.c, its commit thread) and manager.c's prepare step, which dispatches, hands
 * each batch to the commit thread, holds the batch's replies until its commit is done and
 * then writes them. The harness runs the daemon's loop between any two writes of the
 * clients; by default each turn waits for its commit (deterministic); with byte 1's bit 3
 * the clients go on writing while a commit is in flight, as they do against agend, so that
 * batches grow behind it (group commit), at the cost of timing-dependent runs.
 *
 * Input: byte 0 seeds a generator that decides everything the stream does not: how the
 * stream is cut into writes (1..64 bytes, sometimes up to 4 KiB), which client each
 * message goes to, when the clock moves (so TTLs and Acquire timeouts fire), and when a
 * client hangs up early. Byte 1: bits 0-1 the number of clients (1..3, so that a waiter
 * can be granted by another client's release or hang-up), bit 2 "a client may hang up
 * midway", bit 3 "do not wait for the commit after every turn", bits 4-7 the message
 * size limit (0: agend's default, else 256 bytes × n, so that the limit is hit). The
 * rest is the byte stream: NUL-separated varlink messages, the i-th going whole to one
 * client; an unterminated tail goes to the last one. In a message, @ID@, @SECRET@ and
 * @TOKEN@ stand for what the last grant a client saw said (lease ids and secrets are
 * random), so that Release, Renew, Reclaim, Revoke, Check and Watch(lease) reach real
 * leases.
 *
 * Each input gets a fresh service (one ev loop, one store), so inputs do not depend on
 * each other and ASan's leak check covers what one input leaves. Replies are read and
 * dropped. The checks are the daemon's own promises: no crash, no sanitizer report, no
 * leak, no hang (every loop is bounded, and a connection whose replies are read is read
 * from), and once every client has hung up and the service has settled, no connection,
 * waiter, watcher or queued output is left, and no lease but detached ones, within their
 * resource's capacity. */

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "engine.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "store-guard.h"
#include "store-pipe.h"
#include "store.h"
#include "varlink-server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define MAX_CLIENTS 3
#define MAX_REPLY_KEPT ((size_t) 256 * 1024)

typedef struct Span {
        size_t at, len;         /* in the input, NUL included (absent for the tail) */
} Span;

typedef struct Client {
        int fd;                 /* -1 once hung up */
        Span *msgs;             /* its messages, in order */
        size_t n_msgs, next_msg;
        char *out;              /* the message being sent, placeholders filled in */
        size_t n_out, sent;
        char *in;               /* reply bytes up to the next NUL */
        size_t n_in;
        bool in_skip;           /* a reply too long to keep: dropped up to its NUL */
} Client;

/* What the replies told the clients, for the placeholders of later calls: lease ids and
 * secrets are random, so a fuzzer could never guess them. */
typedef struct Seen {
        char id[65], secret[65];
        char token[24];
} Seen;

typedef struct Fuzz {
        Manager *m;
        usec_t mono, real;      /* the engine's clock, moved by the input */
        const char *input;
        Client clients[MAX_CLIENTS];
        unsigned n_clients;
        uint32_t rng;
        bool pipelined;         /* byte 1, bit 3 */
        Seen seen;
} Fuzz;

/* AGEND_FUZZ_VERBOSE=1: every call and reply on stderr, to read what a reproducer does. */
static bool verbose;
/* The disk space guard's directory: the temporary one. The guard only looks at its free
 * space here (the memory store never fails for lack of it); no reserve file is made,
 * because the harness does not start the guard's checks. */
static const char *guard_dir;

static uint32_t next(Fuzz *f) {
        f->rng = f->rng * 1103515245u + 12345u;
        return f->rng >> 16;
}

static usec_t clock_mono(void *userdata) {
        return ((Fuzz *) userdata)->mono;
}

static usec_t clock_real(void *userdata) {
        return ((Fuzz *) userdata)->real;
}

/* What manager_run() sets up, minus the listening socket, the signals, sqlite and the
 * guard's free-space checks: the commit pipeline around an in-memory store, and the
 * loop's prepare step (manager_pipeline_new(), manager_loop_start()). */
static void service_new(Fuzz *f, size_t max_message_size) {
        int k = manager_new(&(ManagerOptions) { .sync = -1, .grace = -1 }, &f->m);
        assert(k == 0);
        Manager *m = f->m;
        if (max_message_size > 0)
                m->config.max_message_size = max_message_size;
        snprintf(m->boot_id, sizeof(m->boot_id), "fuzz");
        m->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
        assert(m->loop);
        k = store_guard_new(guard_dir, &m->guard);
        assert(k == 0);
        Store *inner;
        k = store_memory_new(&(StoreMemoryOptions) { .history_size = 64 }, &inner);
        assert(k == 0);
        k = manager_pipeline_new(m, inner);
        assert(k == 0);
        k = engine_new(&(EngineClock) { clock_mono, clock_real, f }, m->store, &methods_engine_callbacks, m,
                       &m->engine);
        assert(k == 0);
        k = engine_configure(m->engine, m->config.resources, m->config.n_resources, m->config.allow_undeclared);
        assert(k == 0);
        k = varlink_server_new(m->loop,
                               &(VarlinkServerOptions) { .error_protocol = "io.agend.Lease.ProtocolError",
                                                         .error_limit = "io.agend.Lease.LimitExceeded" },
                               &manager_server_callbacks, m, &m->server);
        assert(k == 0);
        k = methods_bind(m->server);
        assert(k == 0);
        manager_apply_limits(m);
        k = engine_restore(m->engine, m->boot_id, 0);
        assert(k == 0);
        k = m->store->ops->commit(m->store);    /* synchronous, as at start-up */
        assert(k >= 0);
        manager_loop_start(m);
        m->started = f->mono;
}

static void copy_string(json_object *o, const char *key, char *buf, size_t size) {
        json_object *v;
        if (json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string))
                snprintf(buf, size, "%s", json_object_get_string(v));
}

/* A grant (Acquire, Renew, Reclaim, a Watch event, a List entry): remembers its lease. */
static void learn(Fuzz *f, const char *msg) {
        json_object *o = json_tokener_parse(msg), *p, *l, *v;
        if (!o)
                return;
        if (json_object_object_get_ex(o, "parameters", &p)) {
                copy_string(p, "secret", f->seen.secret, sizeof(f->seen.secret));
                if ((json_object_object_get_ex(p, "lease", &l) && json_object_is_type(l, json_type_object)) ||
                    (json_object_object_get_ex(p, "event", &l) && json_object_is_type(l, json_type_object))) {
                        copy_string(l, "id", f->seen.id, sizeof(f->seen.id));
                        copy_string(l, "lease", f->seen.id, sizeof(f->seen.id));
                        if (json_object_object_get_ex(l, "token", &v) && json_object_is_type(v, json_type_int))
                                snprintf(f->seen.token, sizeof(f->seen.token), "%" PRId64,
                                         json_object_get_int64(v));
                }
        }
        json_object_put(o);
}

/* Reads what the server sent, learns from the replies, drops them; notices a hang-up by
 * the server. */
static void drain(Fuzz *f, Client *cl) {
        static char buf[65536];
        while (cl->fd >= 0) {
                ssize_t n = recv(cl->fd, buf, sizeof(buf), MSG_DONTWAIT);
                if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        return;
                if (n <= 0) {
                        /* The server closed it (protocol error, limit): the client is done. */
                        cl->fd = safe_close(cl->fd);
                        return;
                }
                for (const char *p = buf, *e = buf + n; p < e;) {
                        const char *nul = memchr(p, 0, (size_t) (e - p));
                        size_t len = nul ? (size_t) (nul - p) : (size_t) (e - p);
                        if (!cl->in_skip && cl->n_in + len <= MAX_REPLY_KEPT) {
                                char *q = realloc(cl->in, cl->n_in + len + 1);
                                assert(q);
                                memcpy(q + cl->n_in, p, len);
                                cl->in = q;
                                cl->n_in += len;
                                q[cl->n_in] = 0;
                        } else
                                cl->in_skip = true;
                        if (!nul)
                                break;
                        if (verbose)
                                fprintf(stderr, "<%u %s\n", (unsigned) (cl - f->clients),
                                        cl->in_skip ? "(long reply)" : cl->n_in > 0 ? cl->in : "");
                        if (!cl->in_skip && cl->n_in > 0)
                                learn(f, cl->in);
                        cl->n_in = 0;
                        cl->in_skip = false;
                        p = nul + 1;
                }
        }
}

static void fill(Client *cl, const char *text, size_t len) {
        char *o = realloc(cl->out, cl->n_out + len);
        assert(o || cl->n_out + len == 0);
        if (len > 0)
                memcpy(o + cl->n_out, text, len);
        cl->out = o;
        cl->n_out += len;
}

/* The client's next message, with @ID@, @SECRET@ and @TOKEN@ replaced by what the last
 * grant said (empty before any). */
static void next_message(Fuzz *f, Client *cl) {
        static const struct {
                const char *name;
                size_t offset;
        } holes[] = {
                { "@ID@", offsetof(Seen, id) },
                { "@SECRET@", offsetof(Seen, secret) },
                { "@TOKEN@", offsetof(Seen, token) },
        };
        const Span *m = &cl->msgs[cl->next_msg++];
        const char *p = f->input + m->at, *e = p + m->len;
        cl->n_out = cl->sent = 0;
        while (p < e) {
                const char *at = memchr(p, '@', (size_t) (e - p));
                if (!at) {
                        fill(cl, p, (size_t) (e - p));
                        break;
                }
                fill(cl, p, (size_t) (at - p));
                p = at;
                size_t i;
                for (i = 0; i < ELEMENTSOF(holes); i++) {
                        size_t l = strlen(holes[i].name);
                        if ((size_t) (e - p) >= l && memcmp(p, holes[i].name, l) == 0) {
                                const char *v = (const char *) &f->seen + holes[i].offset;
                                fill(cl, v, strlen(v));
                                p += l;
                                break;
                        }
                }
                if (i == ELEMENTSOF(holes)) {
                        fill(cl, p, 1);
                        p++;
                }
        }
        if (verbose)
                fprintf(stderr, ">%u %.*s\n", (unsigned) (cl - f->clients), (int) MIN(cl->n_out, 300), cl->out);
}

static bool has_more(const Client *cl) {
        return cl->fd >= 0 && (cl->sent < cl->n_out || cl->next_msg < cl->n_msgs);
}

/* Turns of agend's own loop (the store cannot fail here: the memory store injects no
 * fault). The engine's timers first, at the input's clock (what manager.c's timer does at
 * the real one); then a turn: I/O (the clients' bytes, a finished commit's ev_async), then
 * manager.c's prepare step: dispatch, hand the batch to the commit thread, write what a
 * finished commit released. Settled: more turns until no commit is in flight and nothing
 * is left to commit, so that every reply whose commit is done is written. Unsettled (the
 * pipelined inputs): one turn, and the clients write on while the commit runs. */
static void iterate(Fuzz *f, bool settle) {
        Manager *m = f->m;
        engine_run_timers(m->engine);
        ev_run(m->loop, EVRUN_NOWAIT);
        for (unsigned i = 0; settle && (store_pipe_in_flight(m->pipe) || store_pipe_dirty(m->pipe)); i++) {
                /* Each turn hands a batch on or ends one, so this many mean the pipeline
                 * stopped moving (a lost done(), a batch never handed on). The count must
                 * not depend on time: a loop turn ends on any event, and with the input's
                 * clock standing still the engine timer of a deadline just after it is due
                 * again at every turn, so turns spent waiting in the loop for the commit
                 * thread would count how long that thread took to get a core. */
                assert(i < 100000);
                /* The commit thread first; its ev_async is then pending, and this turn
                 * runs its done(). */
                store_pipe_wait(m->pipe);
                ev_run(m->loop, EVRUN_NOWAIT);
        }
        for (unsigned i = 0; i < f->n_clients; i++)
                drain(f, &f->clients[i]);
}

static void turn(Fuzz *f) {
        iterate(f, !f->pipelined || next(f) % 4 == 0);
}

/* What is left once every client has hung up: detached leases only, within capacity. */
static void check_leases(Fuzz *f) {
        ObjMapIter i = {};
        Resource *r;
        while (objmap_iterate(engine_resources(f->m->engine), &i, (void **) &r)) {
                unsigned units = 0, n = 0;
                for (Lease *l = r->leases; l; l = l->res_next) {
                        assert(l->detached && !l->holder);
                        units += l->units;
                        n++;
                }
                assert(n == r->n_leases && units == r->used && units <= r->capacity);
                assert(r->n_waiters == 0 && !r->wait_head);
        }
}

static void hang_up(Fuzz *f, Client *cl) {
        cl->fd = safe_close(cl->fd);
        turn(f);
}

/* Writes the next piece of cl's stream. A full socket buffer gets loop turns. The server
 * may stop reading a connection while its output is above the high-water mark or its
 * calls wait for their turn, but the client reads every reply and the input is far below
 * the unanswered-input bound: a connection that is never read again is a hang. */
static void send_chunk(Fuzz *f, Client *cl) {
        if (cl->sent == cl->n_out)
                next_message(f, cl);
        if (cl->n_out == 0)
                return;
        size_t want = next(f) % 16 == 0 ? 1 + next(f) % 4096 : 1 + next(f) % 64;
        want = MIN(want, cl->n_out - cl->sent);
        for (int tries = 0; tries < 256; tries++) {
                ssize_t n = send(cl->fd, cl->out + cl->sent, want, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (n > 0) {
                        cl->sent += (size_t) n;
                        return;
                }
                if (n < 0 && errno != EAGAIN && errno != EINTR) {
                        hang_up(f, cl);         /* EPIPE, ECONNRESET: the server closed it */
                        return;
                }
                iterate(f, true);
                if (cl->fd < 0)
                        return;
        }
        assert(!"the server stopped reading a connection whose replies are read");
}

static int client_add(Fuzz *f, Client *cl) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
                return -errno;
        VarlinkConn *c;
        int k = varlink_server_add_connection(f->m->server, sv[0], &c);
        if (k < 0) {
                safe_close(sv[1]);
                return k;
        }
        cl->fd = sv[1];
        return 0;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
        /* Refusals and protocol errors are logged at warning level: thousands a second. */
        verbose = getenv("AGEND_FUZZ_VERBOSE");
        log_set_max_level(verbose ? LOG_DEBUG : LOG_ERR);
        const char *tmp = getenv("TMPDIR");
        guard_dir = tmp && *tmp ? tmp : "/tmp";
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 2)
                return 0;
        Fuzz f = {
                .mono = 1000 * USEC_PER_SEC,
                .real = (usec_t) 1700000000 * USEC_PER_SEC,
                .rng = data[0] * 2654435761u + 1,
                .n_clients = 1 + (data[1] & 3) % MAX_CLIENTS,
        };
        bool early_hang_up = data[1] & 4;
        f.pipelined = data[1] & 8;
        size_t max_message_size = (size_t) (data[1] >> 4) * 256;
        const char *in = (const char *) data + 2;
        size_t n = size - 2;
        for (unsigned i = 0; i < MAX_CLIENTS; i++)
                f.clients[i].fd = -1;

        /* Each message goes whole to one client. */
        f.input = in;
        for (size_t at = 0; at < n;) {
                const char *nul = memchr(in + at, 0, n - at);
                size_t len = nul ? (size_t) (nul - (in + at)) + 1 : n - at;
                Client *cl = &f.clients[nul ? next(&f) % f.n_clients : f.n_clients - 1];
                Span *q = realloc(cl->msgs, (cl->n_msgs + 1) * sizeof(Span));
                assert(q);
                cl->msgs = q;
                cl->msgs[cl->n_msgs++] = (Span) { at, len };
                at += len;
        }

        service_new(&f, max_message_size);
        for (unsigned i = 0; i < f.n_clients; i++)
                if (client_add(&f, &f.clients[i]) < 0)
                        goto out;
        iterate(&f, true);

        for (;;) {
                /* A client with something left to send, from a random start. */
                unsigned start = next(&f) % f.n_clients, i;
                Client *cl = NULL;
                for (i = 0; i < f.n_clients; i++) {
                        Client *c = &f.clients[(start + i) % f.n_clients];
                        if (has_more(c)) {
                                cl = c;
                                break;
                        }
                }
                if (!cl)
                        break;
                uint32_t r = next(&f) % 64;
                if (r < 4)
                        f.mono += (usec_t) (1 + next(&f) % 2000) * USEC_PER_MSEC;  /* up to 2 s */
                else if (r == 4)
                        f.mono += (usec_t) (1 + next(&f) % 120) * USEC_PER_SEC;    /* TTLs, timeouts */
                if (early_hang_up && r == 5) {
                        hang_up(&f, cl);
                        continue;
                }
                send_chunk(&f, cl);
                turn(&f);
        }

        /* Let what the calls started run on (grants, expiries), then every client hangs up:
         * their leases end, the waiters behind them are granted, and then end too. */
        for (int i = 0; i < 4; i++) {
                f.mono += 30 * USEC_PER_SEC;
                iterate(&f, true);
        }
        for (unsigned i = 0; i < f.n_clients; i++)
                if (f.clients[i].fd >= 0)
                        hang_up(&f, &f.clients[i]);
        /* The server sees a hang-up after the bytes before it; it reads at least one byte
         * per loop turn, so that many turns and a few more suffice. At least one turn that
         * settles: a pipelined input's last hang-up may have been seen in a turn that did
         * not wait for the commit of what it ended. */
        for (size_t i = 0; i == 0 || (i < 64 + n && varlink_server_n_connections(f.m->server) > 0); i++)
                iterate(&f, true);
        /* A hang-up ends a client's waiter and its connection-bound leases; only detached
         * leases may stay, and they are the store's, not a connection's. */
        assert(varlink_server_n_connections(f.m->server) == 0);
        assert(!store_pipe_in_flight(f.m->pipe) && !store_pipe_dirty(f.m->pipe));
        assert(engine_n_waiters(f.m->engine) == 0);
        assert(varlink_server_output_bytes(f.m->server) == 0);
        assert(f.m->watchers == NULL);
        check_leases(&f);

out:
        for (unsigned i = 0; i < f.n_clients; i++) {
                safe_close(f.clients[i].fd);
                free(f.clients[i].msgs);
                free(f.clients[i].out);
                free(f.clients[i].in);
        }
        manager_free(f.m);
        return 0;
}

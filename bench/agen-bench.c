/* SPDX-License-Identifier: MIT */
/* agen-bench: lease cycles against agend, Redis and etcd; floor probes; contention;
 * scale; cleanup latency. One JSON object per result on stdout, a summary on stderr.
 * bench/run.sh runs the whole comparison; docs/performance.md has the figures. */

#include <errno.h>
#include <arpa/inet.h>
#include <getopt.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bench.h"
#include "duration.h"

/* A duration in the grammar of agend.conf and agenctl (base/duration.h), in seconds. */
static int bench_seconds(const char *text, double *ret) {
        usec_t u;
        int r = parse_duration(text, &u);
        if (r < 0)
                return r;
        if (u == USEC_INFINITY)
                return -ERANGE;
        *ret = usec_to_sec(u);
        return 0;
}

static void help(void) {
        printf("agen-bench MODE [OPTIONS]\n\n"
               "Modes:\n"
               "  cycle          acquire+release cycles (--target agend|redis|etcd)\n"
               "  floor          Unix-socket round trip and 4 KiB write+fdatasync in --dir\n"
               "  contention     --clients on one --resource (agend)\n"
               "  scale-leases   --count detached leases, restart, TTL expiry (needs --agend)\n"
               "  scale-conns    --count connections each holding a lease\n"
               "  cleanup        release latency per libagenclient layer (needs --agend)\n"
               "  watch-fanout   --subscribers Watch connections while --drivers cycle at --event-rate\n"
               "  smoke          a few seconds of each against a fresh agend (--agend or $AGEND_BINARY)\n"
               "  ready          wait until agend on --socket answers Status (--duration S, --server-pid)\n"
               "  free-port      print a free TCP port on 127.0.0.1\n\n"
               "Options:\n"
               "  --target T         agend (default), redis, etcd\n"
               "  --socket PATH      agend or Redis Unix socket\n"
               "  --addr HOST:PORT   etcd client URL host and port (127.0.0.1 only)\n"
               "  --clients N        concurrent clients (1)\n"
               "  --inflight K       cycles in flight per client, pipelined (1)\n"
               "  --duration S       measured seconds (5)\n"
               "  --warmup S         unmeasured seconds first (1)\n"
               "  --rate R           cycles/s per client slot, 0 = closed loop (0)\n"
               "  --server-pid PID   read the server's CPU time from /proc/PID/stat\n"
               "  --label L          label in the result lines\n"
               "  --prefix P         resource/key prefix (b)\n"
               "  --resource NAME    contention resource (mutex)\n"
               "  --capacity N       its capacity, for the report (1)\n"
               "  --count N          scale: leases or connections (1000000 / 10000)\n"
               "  --spread S         scale-leases: TTLs spread over S seconds (60)\n"
               "  --dir DIR          floor: where to fdatasync (.)\n"
               "  --agend BINARY     start this agend in a temp dir (or --state-dir) and stop it after\n"
               "  --agend-arg ARG    one more argument for it (repeatable)\n"
               "  --state-dir DIR    state dir for the started agend\n"
               "  --subscribers N    watch-fanout: Watch connections (64)\n"
               "  --drivers N        watch-fanout: connections running the cycles (32)\n"
               "  --event-rate R     watch-fanout: target events/s, 2 per cycle (20000)\n"
               "  --verbose          log every error\n");
}

static int parse_target(const char *s, Target *ret) {
        if (strcmp(s, "agend") == 0)
                *ret = TARGET_AGEND;
        else if (strcmp(s, "redis") == 0)
                *ret = TARGET_REDIS;
        else if (strcmp(s, "etcd") == 0)
                *ret = TARGET_ETCD;
        else
                return -EINVAL;
        return 0;
}

/* Prints a TCP port on 127.0.0.1 that was free a moment ago, for the driver. */
static int print_free_port(void) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t l = sizeof(sa);
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

        if (fd < 0)
                return -errno;
        if (bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || getsockname(fd, (struct sockaddr *) &sa, &l) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        printf("%u\n", ntohs(sa.sin_port));
        close(fd);
        return 0;
}

/* A few seconds of every mode against one fresh agend; fails on any error. */
int mode_smoke(Opts *o) {
        Daemon *d = &o->daemon;
        int ret, failed = 0;

        if (!d->binary)
                d->binary = getenv("AGEND_BINARY");
        if (!d->binary) {
                logf_("agen-bench smoke: no agend: give --agend or set AGEND_BINARY\n");
                return -EINVAL;
        }
        ret = daemon_start(d, NULL);
        if (ret < 0)
                return ret;

        Opts c = *o;
        c.daemon = (Daemon) {}; /* the parts below use d through socket and pid only */
        c.target = TARGET_AGEND;
        c.socket = d->socket;
        c.server_pid = d->pid;
        c.warmup = 0.2;
        c.duration = 0.6;
        c.label = "smoke";

        c.clients = 1;
        c.inflight = 1;
        if (mode_cycle(&c) < 0)
                failed++;
        c.clients = 8;
        c.inflight = 4;
        if (mode_cycle(&c) < 0)
                failed++;

        c.clients = 8;
        c.resource = "smoke-mutex";
        c.capacity = 1;
        if (mode_contention(&c) < 0)
                failed++;

        c.dir = d->state_dir;
        c.duration = 0.3;
        if (mode_floor(&c) < 0)
                failed++;

        c.duration = 0.6;
        c.count = 200;
        if (mode_scale_conns(&c) < 0)
                failed++;

        c.count = 20;
        ret = mode_cleanup(&c);
        if (ret < 0 && ret != -EOPNOTSUPP)
                failed++;

        /* A light fan-out: every subscriber must get every event, none dropped. */
        c.subscribers = 8;
        c.drivers = 4;
        c.event_rate = 1000;
        c.duration = 0.6;
        if (mode_watch_fanout(&c) < 0)
                failed++;

        if (failed)
                daemon_log_tail(d);
        daemon_cleanup(d);

        /* Scale with a restart, on a fresh daemon of its own: 2000 leases, TTLs over 2 s. */
        Opts s = *o;
        s.daemon = (Daemon) { .binary = d->binary };
        s.label = "smoke";
        s.count = 2000;
        s.spread = 2;
        if (mode_scale_leases(&s) < 0)
                failed++;

        if (failed) {
                logf_("agen-bench smoke: %d part(s) failed\n", failed);
                return -EPROTO;
        }
        logf_("agen-bench smoke: all parts passed\n");
        return 0;
}

int main(int argc, char **argv) {
        enum {
                ARG_TARGET = 0x100,
                ARG_SOCKET,
                ARG_ADDR,
                ARG_CLIENTS,
                ARG_INFLIGHT,
                ARG_DURATION,
                ARG_WARMUP,
                ARG_RATE,
                ARG_SERVER_PID,
                ARG_LABEL,
                ARG_PREFIX,
                ARG_RESOURCE,
                ARG_CAPACITY,
                ARG_COUNT,
                ARG_SPREAD,
                ARG_DIR,
                ARG_AGEND,
                ARG_AGEND_ARG,
                ARG_STATE_DIR,
                ARG_VERBOSE,
                ARG_SUBSCRIBERS,
                ARG_DRIVERS,
                ARG_EVENT_RATE,
        };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "target", required_argument, NULL, ARG_TARGET },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "addr", required_argument, NULL, ARG_ADDR },
                { "clients", required_argument, NULL, ARG_CLIENTS },
                { "inflight", required_argument, NULL, ARG_INFLIGHT },
                { "duration", required_argument, NULL, ARG_DURATION },
                { "warmup", required_argument, NULL, ARG_WARMUP },
                { "rate", required_argument, NULL, ARG_RATE },
                { "server-pid", required_argument, NULL, ARG_SERVER_PID },
                { "label", required_argument, NULL, ARG_LABEL },
                { "prefix", required_argument, NULL, ARG_PREFIX },
                { "resource", required_argument, NULL, ARG_RESOURCE },
                { "capacity", required_argument, NULL, ARG_CAPACITY },
                { "count", required_argument, NULL, ARG_COUNT },
                { "spread", required_argument, NULL, ARG_SPREAD },
                { "dir", required_argument, NULL, ARG_DIR },
                { "agend", required_argument, NULL, ARG_AGEND },
                { "agend-arg", required_argument, NULL, ARG_AGEND_ARG },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "verbose", no_argument, NULL, ARG_VERBOSE },
                { "subscribers", required_argument, NULL, ARG_SUBSCRIBERS },
                { "drivers", required_argument, NULL, ARG_DRIVERS },
                { "event-rate", required_argument, NULL, ARG_EVENT_RATE },
                {}
        };
        Opts o = {
                .target = TARGET_AGEND,
                .host = "127.0.0.1",
                .port = 2379,
                .clients = 1,
                .inflight = 1,
                .warmup = 1,
                .duration = 5,
                .prefix = "b",
                .resource = "mutex",
                .capacity = 1,
                .spread = 60,
        };
        static char host[64];
        int c, r;

        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0)
                switch (c) {
                case 'h':
                        help();
                        return 0;
                case ARG_TARGET:
                        if (parse_target(optarg, &o.target) < 0) {
                                logf_("agen-bench: unknown target '%s'\n", optarg);
                                return 2;
                        }
                        break;
                case ARG_SOCKET:
                        o.socket = optarg;
                        break;
                case ARG_ADDR: {
                        const char *colon = strrchr(optarg, ':');
                        if (!colon || (size_t) (colon - optarg) >= sizeof(host)) {
                                logf_("agen-bench: --addr wants HOST:PORT\n");
                                return 2;
                        }
                        memcpy(host, optarg, (size_t) (colon - optarg));
                        host[colon - optarg] = 0;
                        o.host = host;
                        o.port = atoi(colon + 1);
                        break;
                }
                case ARG_CLIENTS:
                        o.clients = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_INFLIGHT:
                        o.inflight = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_DURATION:
                        if (bench_seconds(optarg, &o.duration) < 0) {
                                logf_("agen-bench: --duration wants a duration (\"5\", \"500ms\", \"1min\"), not \"%s\"\n", optarg);
                                return 2;
                        }
                        break;
                case ARG_WARMUP:
                        if (bench_seconds(optarg, &o.warmup) < 0) {
                                logf_("agen-bench: --warmup wants a duration (\"5\", \"500ms\", \"1min\"), not \"%s\"\n", optarg);
                                return 2;
                        }
                        break;
                case ARG_RATE:
                        o.rate = strtod(optarg, NULL);
                        break;
                case ARG_SERVER_PID:
                        o.server_pid = (pid_t) strtol(optarg, NULL, 10);
                        break;
                case ARG_LABEL:
                        o.label = optarg;
                        break;
                case ARG_PREFIX:
                        o.prefix = optarg;
                        break;
                case ARG_RESOURCE:
                        o.resource = optarg;
                        break;
                case ARG_CAPACITY:
                        o.capacity = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_COUNT:
                        o.count = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_SPREAD:
                        if (bench_seconds(optarg, &o.spread) < 0) {
                                logf_("agen-bench: --spread wants a duration (\"5\", \"500ms\", \"1min\"), not \"%s\"\n", optarg);
                                return 2;
                        }
                        break;
                case ARG_DIR:
                        o.dir = optarg;
                        break;
                case ARG_AGEND:
                        o.daemon.binary = optarg;
                        break;
                case ARG_AGEND_ARG:
                        if (o.daemon.n_args >= ELEMENTSOF(o.daemon.args)) {
                                logf_("agen-bench: too many --agend-arg\n");
                                return 2;
                        }
                        o.daemon.args[o.daemon.n_args++] = optarg;
                        break;
                case ARG_STATE_DIR:
                        o.daemon.want_state_dir = optarg;
                        break;
                case ARG_VERBOSE:
                        arg_verbose = true;
                        break;
                case ARG_SUBSCRIBERS:
                        o.subscribers = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_DRIVERS:
                        o.drivers = (unsigned) strtoul(optarg, NULL, 10);
                        break;
                case ARG_EVENT_RATE:
                        o.event_rate = strtod(optarg, NULL);
                        break;
                default:
                        return 2;
                }
        if (optind != argc - 1) {
                help();
                return 2;
        }
        if (o.clients == 0 || o.inflight == 0 || o.duration < 0 || o.warmup < 0) {
                logf_("agen-bench: --clients and --inflight must be > 0\n");
                return 2;
        }
        /* A peer that closes on us must not kill the benchmark. */
        signal(SIGPIPE, SIG_IGN);

        const char *mode = argv[optind];
        bool started = false;
        if (o.daemon.binary && (strcmp(mode, "cycle") == 0 || strcmp(mode, "contention") == 0 ||
                                strcmp(mode, "watch-fanout") == 0)) {
                r = daemon_start(&o.daemon, NULL);
                if (r < 0)
                        return 1;
                o.socket = o.daemon.socket;
                o.server_pid = o.daemon.pid;
                started = true;
        }
        if (!o.socket && !o.daemon.binary && strcmp(mode, "floor") != 0 && strcmp(mode, "smoke") != 0 &&
            strcmp(mode, "free-port") != 0 && o.target != TARGET_ETCD) {
                logf_("agen-bench: give --socket or --agend\n");
                return 2;
        }

        if (strcmp(mode, "cycle") == 0)
                r = mode_cycle(&o);
        else if (strcmp(mode, "floor") == 0)
                r = mode_floor(&o);
        else if (strcmp(mode, "contention") == 0)
                r = mode_contention(&o);
        else if (strcmp(mode, "scale-leases") == 0) {
                if (o.count == 0)
                        o.count = 1000000;
                r = mode_scale_leases(&o);
        } else if (strcmp(mode, "scale-conns") == 0) {
                if (o.count == 0)
                        o.count = 10000;
                r = mode_scale_conns(&o);
        } else if (strcmp(mode, "cleanup") == 0)
                r = mode_cleanup(&o);
        else if (strcmp(mode, "watch-fanout") == 0)
                r = mode_watch_fanout(&o);
        else if (strcmp(mode, "smoke") == 0)
                r = mode_smoke(&o);
        else if (strcmp(mode, "ready") == 0) {
                r = wait_ready(o.socket, o.server_pid, (usec_t) (o.duration * 1e6));
                if (r < 0)
                        logf_("agen-bench: no answer on %s: %s\n", o.socket, strerror(-r));
        } else if (strcmp(mode, "free-port") == 0)
                r = print_free_port();
        else {
                logf_("agen-bench: unknown mode '%s'\n", mode);
                r = -EINVAL;
        }
        if (started)
                daemon_cleanup(&o.daemon);
        return r < 0 ? 1 : 0;
}

/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "build-config.h"
#include "config.h"
#include "duration.h"
#include "fs-util.h"
#include "log.h"
#include "macro.h"
#include "manager.h"
#include "state-dir.h"

static void help(void) {
        printf("agend — machine-local resource-lease daemon\n\n"
               "Usage: agend [OPTIONS]\n\n"
               "  -h --help              show this help\n"
               "     --version           show the version\n"
               "     --config FILE       read only FILE (default: %s/agend.conf and\n"
               "                         %s/resources.d/*.conf)\n"
               "     --socket PATH       listen on PATH (default: /run/agend/io.agend.Lease as root,\n"
               "                         $XDG_RUNTIME_DIR/agend/io.agend.Lease otherwise)\n"
               "     --state-dir DIR     keep agend.db in DIR (default: $STATE_DIRECTORY, /var/lib/agend\n"
               "                         as root, $XDG_STATE_HOME/agend otherwise)\n"
               "     --sync=normal|full  sqlite synchronous mode (default normal; full survives power loss)\n"
               "     --grace DURATION    how long restored leases wait for their holders (default 10s)\n"
               "     --log-level LEVEL   err, warning, notice, info (default) or debug\n",
               CONFIG_DIR_DEFAULT, CONFIG_DIR_DEFAULT);
}

/* The first path of a colon-separated list like $STATE_DIRECTORY. */
static char *first_path(const char *list) {
        size_t n = strcspn(list, ":");
        return strndup(list, n);
}

static int default_paths(char **socket_path, char **state_dir) {
        const char *rt = getenv("RUNTIME_DIRECTORY");   /* set by systemd's RuntimeDirectory= */
        const char *st = getenv("STATE_DIRECTORY");     /* set by systemd's StateDirectory= */
        bool root = geteuid() == 0;

        if (!*socket_path) {
                if (rt && *rt) {
                        _cleanup_free_ char *d = first_path(rt);
                        if (!d || asprintf(socket_path, "%s/io.agend.Lease", d) < 0)
                                return -ENOMEM;
                } else if (root) {
                        *socket_path = strdup("/run/agend/io.agend.Lease");
                } else {
                        const char *x = getenv("XDG_RUNTIME_DIR");
                        if (!x || !*x) {
                                fprintf(stderr, "agend: $XDG_RUNTIME_DIR is not set: give --socket PATH\n");
                                return -EINVAL;
                        }
                        if (asprintf(socket_path, "%s/agend/io.agend.Lease", x) < 0)
                                return -ENOMEM;
                }
                if (!*socket_path)
                        return -ENOMEM;
        }
        if (!*state_dir) {
                if (st && *st)
                        *state_dir = first_path(st);
                else if (root)
                        *state_dir = strdup("/var/lib/agend");
                else {
                        const char *x = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
                        if (x && *x) {
                                if (asprintf(state_dir, "%s/agend", x) < 0)
                                        return -ENOMEM;
                        } else if (home && *home) {
                                if (asprintf(state_dir, "%s/.local/state/agend", home) < 0)
                                        return -ENOMEM;
                        } else {
                                fprintf(stderr, "agend: neither $XDG_STATE_HOME nor $HOME is set: give --state-dir DIR\n");
                                return -EINVAL;
                        }
                }
                if (!*state_dir)
                        return -ENOMEM;
        }
        return 0;
}

int main(int argc, char *argv[]) {
        enum { ARG_VERSION = 0x100, ARG_CONFIG, ARG_SOCKET, ARG_STATE_DIR, ARG_SYNC, ARG_GRACE, ARG_LOG_LEVEL };
        static const struct option options[] = {
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, ARG_VERSION },
                { "config", required_argument, NULL, ARG_CONFIG },
                { "socket", required_argument, NULL, ARG_SOCKET },
                { "state-dir", required_argument, NULL, ARG_STATE_DIR },
                { "sync", required_argument, NULL, ARG_SYNC },
                { "grace", required_argument, NULL, ARG_GRACE },
                { "log-level", required_argument, NULL, ARG_LOG_LEVEL },
                {},
        };
        _cleanup_free_ char *socket_path = NULL, *state_dir = NULL;
        ManagerOptions o = {
                .config_dir = CONFIG_DIR_DEFAULT,
                .sync = -1,
                .grace = -1,
        };
        int c;

        log_setup();
        while ((c = getopt_long(argc, argv, "h", options, NULL)) >= 0) {
                switch (c) {
                case 'h':
                        help();
                        return EXIT_SUCCESS;
                case ARG_VERSION:
                        printf("agend %s\n", AGEND_VERSION);
                        return EXIT_SUCCESS;
                case ARG_CONFIG:
                        o.config_path = optarg;
                        break;
                case ARG_SOCKET:
                        free(socket_path);
                        socket_path = strdup(optarg);
                        break;
                case ARG_STATE_DIR:
                        free(state_dir);
                        state_dir = strdup(optarg);
                        break;
                case ARG_SYNC:
                        o.sync = store_sync_from_string(optarg);
                        if (o.sync < 0) {
                                fprintf(stderr, "agend: --sync wants normal or full, not \"%s\"\n", optarg);
                                return 2;
                        }
                        break;
                case ARG_GRACE: {
                        usec_t u;
                        /* The grammar of ReclaimGraceSec= (base/duration.h), never endless. */
                        if (parse_duration(optarg, &u) < 0 || u == USEC_INFINITY) {
                                fprintf(stderr, "agend: --grace wants a duration (\"10\", \"30s\", \"500ms\"), not \"%s\"\n",
                                        optarg);
                                return 2;
                        }
                        o.grace = (int64_t) u;
                        break;
                }
                case ARG_LOG_LEVEL: {
                        int l = log_parse_level(optarg);
                        if (l < 0) {
                                fprintf(stderr, "agend: unknown log level \"%s\"\n", optarg);
                                return 2;
                        }
                        log_set_max_level(l);
                        break;
                }
                default:
                        fprintf(stderr, "Try 'agend --help'.\n");
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "agend: unexpected argument \"%s\"; try 'agend --help'\n", argv[optind]);
                return 2;
        }
        if (default_paths(&socket_path, &state_dir) < 0)
                return EXIT_FAILURE;
        o.socket_path = socket_path;
        o.state_dir = state_dir;

        int k = mkdir_p(state_dir, 0700, false);
        if (k < 0) {
                log_error_errno(k, "cannot create the state directory \"%s\": %m", state_dir);
                return EXIT_FAILURE;
        }
        /* Held until exit; the kernel releases it however the process ends. */
        _cleanup_close_ int lock_fd = state_dir_take(state_dir);
        if (lock_fd < 0)
                return EXIT_FAILURE;
        signal(SIGPIPE, SIG_IGN);

        Manager *m;
        if (manager_new(&o, &m) < 0) {
                log_error("out of memory");
                return EXIT_FAILURE;
        }
        int r = manager_run(m);
        manager_free(m);
        return r;
}

/* SPDX-License-Identifier: MIT */
/* See helper-agend.h. No cmocka here: forked children use these functions too. */

#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper-agend.h"

/* What helper_cleanup() must undo: every object handed out, and every reply. */
typedef struct PtrSet {
        void **items;
        size_t n, size;
} PtrSet;

static PtrSet pool, conns, holders, daemons;

static int ptrset_add(PtrSet *s, void *p) {
        if (s->n == s->size) {
                size_t size = s->size ? s->size * 2 : 16;
                void **items = realloc(s->items, size * sizeof(void *));
                if (!items)
                        return -ENOMEM;
                s->items = items;
                s->size = size;
        }
        s->items[s->n++] = p;
        return 0;
}

static void ptrset_remove(PtrSet *s, void *p) {
        for (size_t i = s->n; i > 0; i--)
                if (s->items[i - 1] == p) {
                        s->items[i - 1] = s->items[--s->n];
                        return;
                }
}

static void ptrset_done(PtrSet *s) {
        free(s->items);
        *s = (PtrSet) {};
}

json_object *helper_pool_add(json_object *o) {
        if (o && ptrset_add(&pool, o) < 0) {
                /* Out of memory in a test: leaking one reply is the lesser evil. */
                return o;
        }
        return o;
}

void helper_pool_put(json_object *o) {
        if (!o)
                return;
        /* The most recent replies are at the end, where ptrset_remove() starts. */
        ptrset_remove(&pool, o);
        json_object_put(o);
}

double helper_now(void) {
        return usec_to_sec(usec_now(CLOCK_MONOTONIC));
}

uint64_t helper_realtime_usec(void) {
        return usec_now(CLOCK_REALTIME);
}

void helper_sleep(double sec) {
        if (sec <= 0)
                return;
        struct timespec ts = {
                .tv_sec = (time_t) sec,
                .tv_nsec = (long) ((sec - (double) (time_t) sec) * 1e9),
        };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* Milliseconds left until the deadline, for poll(): never negative. */
static int ms_left(double deadline) {
        double left = deadline - helper_now();
        if (left <= 0)
                return 0;
        return (int) ceil(left * 1000.);
}

static void helper_init(void) {
        static bool done;
        if (done)
                return;
        done = true;
        /* A write to a connection the daemon closed must be an EPIPE we can assert on. */
        signal(SIGPIPE, SIG_IGN);
}

int helper_raise_nofile(unsigned n) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < n && geteuid() == 0)
                rl.rlim_max = n;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                return -errno;
        return rl.rlim_cur >= n ? 0 : -EMFILE;
}

/* In a forked child that does not exec a test binary: dies with the test process, and
 * drops every inherited descriptor above keep_max (a copy of a test connection would keep
 * it open for the daemon after the test closed it). */
static void child_detach(pid_t parent, int keep_max) {
        (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
                _exit(1);
        (void) close_range((unsigned) keep_max + 1, ~0U, 0);
}

/* ---- the daemon ---- */

static int write_file(const char *path, const char *text, bool append) {
        int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0644);
        if (fd < 0)
                return -errno;
        size_t n = strlen(text);
        ssize_t k = write(fd, text, n);
        int r = k < 0 ? -errno : (size_t) k == n ? 0 : -EIO;
        close(fd);
        return r;
}

int agend_new(Agend **ret) {
        helper_init();

        Agend *a = calloc(1, sizeof(*a));
        if (!a)
                return -ENOMEM;
        a->exit_status = -1;

        /* A Unix socket path is at most 107 bytes: use $TMPDIR only when it is short. */
        const char *tmp = getenv("TMPDIR");
        if (!tmp || !*tmp || strlen(tmp) > 40)
                tmp = "/tmp";
        snprintf(a->dir, sizeof(a->dir), "%s/agend-test-XXXXXX", tmp);
        if (!mkdtemp(a->dir)) {
                int r = -errno;
                free(a);
                return r;
        }
        /* Searchable by all: a test drops to an unprivileged uid to talk to the socket. */
        (void) chmod(a->dir, 0755);
        snprintf(a->socket, sizeof(a->socket), "%s/io.agend.Lease", a->dir);
        snprintf(a->state_dir, sizeof(a->state_dir), "%s/state", a->dir);
        snprintf(a->db, sizeof(a->db), "%s/agend.db", a->state_dir);
        snprintf(a->config, sizeof(a->config), "%s/agend.conf", a->dir);
        snprintf(a->log, sizeof(a->log), "%s/agend.log", a->dir);

        int r = ptrset_add(&daemons, a);
        if (r < 0 || mkdir(a->state_dir, 0700) < 0 || write_file(a->config, "", false) < 0) {
                agend_free(a);
                return r < 0 ? r : -EIO;
        }
        *ret = a;
        return 0;
}

int agend_declare_resource(Agend *a, const char *name, unsigned capacity) {
        /* The config syntax, in one place: systemd-style INI, one section per resource. */
        char text[512];
        snprintf(text, sizeof(text), "[Resource]\nName=%s\nCapacity=%u\n\n", name, capacity);
        return write_file(a->config, text, true);
}

int agend_spawn(Agend *a) {
        const char *bin = getenv("AGEND_BINARY");
        if (!bin || !*bin)
                return -ENOENT;
        if (a->pid > 0)
                return -EBUSY;

        const char *argv[16];
        size_t n = 0;
        char sync[32];
        argv[n++] = bin;
        argv[n++] = "--socket";
        argv[n++] = a->socket;
        argv[n++] = "--state-dir";
        argv[n++] = a->state_dir;
        argv[n++] = "--config";
        argv[n++] = a->config;
        if (a->grace[0]) {
                argv[n++] = "--grace";
                argv[n++] = a->grace;
        }
        if (a->sync[0]) {
                snprintf(sync, sizeof(sync), "--sync=%s", a->sync);
                argv[n++] = sync;
        }
        argv[n] = NULL;

        char mark[256];
        snprintf(mark, sizeof(mark), "---- test: starting agend%s%s%s%s ----\n",
                 a->grace[0] ? " --grace " : "", a->grace, a->sync[0] ? " --sync=" : "", a->sync);
        (void) write_file(a->log, mark, true);

        int logfd = open(a->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (logfd < 0)
                return -errno;
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(logfd);
                return r;
        }
        if (pid == 0) {
                int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
                        _exit(127);
                child_detach(parent, 2);
                /* Nothing of the test's environment that would change how agend runs. */
                const char *drop[] = { "JOURNAL_STREAM", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID",
                                       "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", "AGEND_SOCKET",
                                       "STATE_DIRECTORY", "RUNTIME_DIRECTORY" };
                for (size_t i = 0; i < ELEMENTSOF(drop); i++)
                        unsetenv(drop[i]);
                /* As from a shell: the daemon must cope with SIGPIPE itself. */
                signal(SIGPIPE, SIG_DFL);
                sigset_t all;
                sigemptyset(&all);
                sigprocmask(SIG_SETMASK, &all, NULL);
                execv(bin, (char **) argv);
                _exit(127);
        }
        close(logfd);
        a->pid = pid;
        a->exit_status = -1;
        return 0;
}

/* One GetInfo round trip on a fresh connection: 0 if agend answered without error. */
static int probe(const char *socket_path, double timeout) {
        VConn *c = NULL;
        int r = vconn_open(socket_path, &c);
        if (r < 0)
                return r;
        r = vconn_send(c, 0, "org.varlink.service.GetInfo", NULL);
        json_object *reply = NULL;
        if (r >= 0)
                r = vconn_recv(c, timeout, &reply);
        if (r >= 0 && reply_error(reply))
                r = -EPROTO;
        vconn_close(c);
        return r;
}

static int reap(Agend *a, bool block) {
        int st;
        pid_t p = waitpid(a->pid, &st, block ? 0 : WNOHANG);
        if (p < 0)
                return -errno;
        if (p == 0)
                return 0;
        a->exit_status = st;
        a->pid = 0;
        return 1;
}

int agend_wait_ready(Agend *a, double timeout) {
        double deadline = helper_now() + timeout;
        for (;;) {
                if (a->pid <= 0)
                        return -ECHILD;
                int r = reap(a, false);
                if (r < 0)
                        return r;
                if (r > 0)
                        return -ECHILD;
                double left = deadline - helper_now();
                if (probe(a->socket, MIN(MAX(left, 0.01), 2.0)) == 0) {
                        a->ready = usec_now(CLOCK_MONOTONIC);
                        return 0;
                }
                if (helper_now() >= deadline)
                        return -ETIMEDOUT;
                helper_sleep(0.005);
        }
}

int agend_start(Agend *a) {
        int r = agend_spawn(a);
        if (r < 0)
                return r;
        r = agend_wait_ready(a, HELPER_START_TIMEOUT);
        if (r == -ETIMEDOUT)
                (void) agend_kill(a);
        return r;
}

int agend_wait_exit(Agend *a, double timeout, int *ret_status) {
        double deadline = helper_now() + timeout;
        for (;;) {
                if (a->pid <= 0) {
                        if (ret_status)
                                *ret_status = a->exit_status;
                        return a->exit_status >= 0 ? 0 : -ECHILD;
                }
                int r = reap(a, false);
                if (r < 0)
                        return r;
                if (r == 0) {
                        if (helper_now() >= deadline)
                                return -ETIMEDOUT;
                        helper_sleep(0.002);
                }
        }
}

int agend_stop(Agend *a, int *ret_status) {
        if (a->pid <= 0)
                return -ECHILD;
        if (kill(a->pid, SIGTERM) < 0)
                return -errno;
        int r = agend_wait_exit(a, HELPER_START_TIMEOUT, ret_status);
        if (r == -ETIMEDOUT) {
                (void) agend_kill(a);
                return -ETIMEDOUT;
        }
        return r;
}

int agend_kill(Agend *a) {
        if (a->pid <= 0)
                return -ECHILD;
        if (kill(a->pid, SIGKILL) < 0)
                return -errno;
        int r = reap(a, true);
        return r < 0 ? r : 0;
}

char *agend_read_log(const Agend *a) {
        int fd = open(a->log, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return NULL;
        size_t len = 0, size = 4096;
        char *buf = malloc(size);
        for (;;) {
                if (!buf)
                        break;
                if (len + 1 >= size) {
                        char *b = realloc(buf, size * 2);
                        if (!b) {
                                free(buf);
                                buf = NULL;
                                break;
                        }
                        buf = b;
                        size *= 2;
                }
                ssize_t k = read(fd, buf + len, size - len - 1);
                if (k <= 0)
                        break;
                len += (size_t) k;
        }
        close(fd);
        if (buf)
                buf[len] = 0;
        return buf;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        (void) remove(path);
        return 0;
}

Agend *agend_free(Agend *a) {
        if (!a)
                return NULL;
        if (a->pid > 0)
                (void) agend_kill(a);
        char *log = agend_read_log(a);
        if (log && *log) {
                /* The tail only: meson keeps it with the test's output, shown on failure. */
                size_t len = strlen(log);
                const size_t tail = 8192;
                fprintf(stderr, "---- agend log (%s) ----\n%s%s---- end of agend log ----\n",
                        len > tail ? "last 8 KiB" : "whole", len > tail ? log + len - tail : log,
                        len && log[len - 1] == '\n' ? "" : "\n");
        }
        free(log);
        if (a->dir[0])
                (void) nftw(a->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
        ptrset_remove(&daemons, a);
        free(a);
        return NULL;
}

/* ---- connections ---- */

int vconn_open(const char *socket_path, VConn **ret) {
        helper_init();

        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        if (strlen(socket_path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, socket_path);

        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* A blocking connect waits while the daemon's listen backlog is full; this bounds
         * that wait (SO_SNDTIMEO applies to AF_UNIX connect). */
        struct timeval tv = { .tv_sec = (time_t) HELPER_REPLY_TIMEOUT };
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                int r = errno == EINPROGRESS ? -ETIMEDOUT : -errno;
                close(fd);
                return r;
        }
        if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }

        VConn *c = calloc(1, sizeof(*c));
        if (!c || ptrset_add(&conns, c) < 0) {
                free(c);
                close(fd);
                return -ENOMEM;
        }
        c->fd = fd;
        *ret = c;
        return 0;
}

int vconn_open_agend(const Agend *a, VConn **ret) {
        return vconn_open(a->socket, ret);
}

VConn *vconn_close(VConn *c) {
        if (!c)
                return NULL;
        safe_close(c->fd);
        free(c->buf);
        ptrset_remove(&conns, c);
        free(c);
        return NULL;
}

int vconn_send_raw(VConn *c, const void *p, size_t n) {
        const char *b = p;
        double deadline = helper_now() + HELPER_REPLY_TIMEOUT;
        while (n > 0) {
                ssize_t k = send(c->fd, b, n, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k > 0) {
                        b += k;
                        n -= (size_t) k;
                        continue;
                }
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno != EAGAIN)
                        return -errno;
                struct pollfd pfd = { .fd = c->fd, .events = POLLOUT };
                int r = poll(&pfd, 1, ms_left(deadline));
                if (r < 0 && errno != EINTR)
                        return -errno;
                if (r == 0)
                        return -ETIMEDOUT;
        }
        return 0;
}

int vconn_sendv(VConn *c, unsigned flags, const char *method, const char *params_fmt, va_list ap) {
        char *params = NULL, *msg = NULL;
        if (params_fmt && vasprintf(&params, params_fmt, ap) < 0)
                return -ENOMEM;
        int len = asprintf(&msg, "{\"method\":\"%s\"%s%s%s%s}", method, params ? ",\"parameters\":" : "",
                           params ? params : "", (flags & VL_MORE) ? ",\"more\":true" : "",
                           (flags & VL_ONEWAY) ? ",\"oneway\":true" : "");
        free(params);
        if (len < 0)
                return -ENOMEM;
        /* The terminating NUL is the framing. */
        int r = vconn_send_raw(c, msg, (size_t) len + 1);
        free(msg);
        return r;
}

int vconn_send(VConn *c, unsigned flags, const char *method, const char *params_fmt, ...) {
        va_list ap;
        va_start(ap, params_fmt);
        int r = vconn_sendv(c, flags, method, params_fmt, ap);
        va_end(ap);
        return r;
}

/* Parses the first complete message in the buffer, if there is one: 1 and *ret. */
static int take_message(VConn *c, json_object **ret) {
        char *nul = memchr(c->buf, 0, c->len);
        if (!nul)
                return 0;
        size_t n = (size_t) (nul - c->buf);
        json_tokener *tok = json_tokener_new();
        if (!tok)
                return -ENOMEM;
        json_object *o = json_tokener_parse_ex(tok, c->buf, (int) n);
        bool ok = o && json_tokener_get_error(tok) == json_tokener_success;
        if (ok)
                for (size_t i = json_tokener_get_parse_end(tok); i < n; i++)
                        if (!strchr(" \t\r\n", c->buf[i]))
                                ok = false;
        json_tokener_free(tok);
        memmove(c->buf, nul + 1, c->len - n - 1);
        c->len -= n + 1;
        if (!ok) {
                json_object_put(o);
                return -EBADMSG;
        }
        *ret = helper_pool_add(o);
        return 1;
}

int vconn_recv(VConn *c, double timeout, json_object **ret) {
        double deadline = helper_now() + timeout;
        for (;;) {
                if (c->len > 0) {
                        int r = take_message(c, ret);
                        if (r != 0)
                                return r < 0 ? r : 0;
                }
                if (c->eof)
                        return -ECONNRESET;
                if (c->size - c->len < 65536) {
                        size_t size = MAX(c->size * 2, (size_t) 131072);
                        char *b = realloc(c->buf, size);
                        if (!b)
                                return -ENOMEM;
                        c->buf = b;
                        c->size = size;
                }
                ssize_t k = recv(c->fd, c->buf + c->len, c->size - c->len, MSG_DONTWAIT);
                if (k > 0) {
                        c->len += (size_t) k;
                        continue;
                }
                if (k == 0 || (k < 0 && (errno == ECONNRESET || errno == EPIPE))) {
                        c->eof = true;
                        continue;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN)
                        return -errno;
                struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
                int r = poll(&pfd, 1, ms_left(deadline));
                if (r < 0 && errno != EINTR)
                        return -errno;
                if (r == 0)
                        return -ETIMEDOUT;
        }
}

int vconn_call(VConn *c, json_object **ret, const char *method, const char *params_fmt, ...) {
        va_list ap;
        va_start(ap, params_fmt);
        int r = vconn_sendv(c, 0, method, params_fmt, ap);
        va_end(ap);
        if (r < 0)
                return r;
        return vconn_recv(c, HELPER_REPLY_TIMEOUT, ret);
}

int vconn_wait_closed(VConn *c, double timeout) {
        double deadline = helper_now() + timeout;
        for (;;) {
                json_object *m;
                int r = vconn_recv(c, MAX(deadline - helper_now(), 0.0), &m);
                if (r == -ECONNRESET)
                        return 0;
                if (r == -ETIMEDOUT)
                        return r;
                if (r < 0 && r != -EBADMSG)
                        return r;
        }
}

/* ---- replies ---- */

json_object *jget(json_object *o, const char *path) {
        char seg[128];
        const char *p = path;
        while (o && *p) {
                size_t n = strcspn(p, ".");
                if (n >= sizeof(seg))
                        return NULL;
                memcpy(seg, p, n);
                seg[n] = 0;
                p += n + (p[n] == '.');
                if (json_object_is_type(o, json_type_array) && seg[0] >= '0' && seg[0] <= '9') {
                        size_t i = strtoul(seg, NULL, 10);
                        o = i < json_object_array_length(o) ? json_object_array_get_idx(o, i) : NULL;
                } else if (json_object_is_type(o, json_type_object)) {
                        json_object *v = NULL;
                        o = json_object_object_get_ex(o, seg, &v) ? v : NULL;
                } else
                        return NULL;
        }
        return o;
}

bool jhas(json_object *o, const char *path) {
        const char *dot = strrchr(path, '.');
        json_object *parent = o;
        const char *key = path;
        if (dot) {
                char head[256];
                size_t n = (size_t) (dot - path);
                if (n >= sizeof(head))
                        return false;
                memcpy(head, path, n);
                head[n] = 0;
                parent = jget(o, head);
                key = dot + 1;
        }
        return parent && json_object_is_type(parent, json_type_object) &&
               json_object_object_get_ex(parent, key, NULL);
}

const char *jstr(json_object *o, const char *path) {
        json_object *v = jget(o, path);
        return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

bool jis(json_object *o, const char *path, json_type type) {
        json_object *v = jget(o, path);
        if (type == json_type_null)
                return jhas(o, path) && !v;
        return v && json_object_is_type(v, type);
}

int64_t jint(json_object *o, const char *path) {
        json_object *v = jget(o, path);
        return json_object_is_type(v, json_type_int) ? json_object_get_int64(v) : INT64_MIN;
}

double jdouble(json_object *o, const char *path) {
        json_object *v = jget(o, path);
        if (json_object_is_type(v, json_type_int) || json_object_is_type(v, json_type_double))
                return json_object_get_double(v);
        return NAN;
}

const char *jtext(json_object *o) {
        if (!o)
                return "(none)";
        return json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
}

const char *reply_error(json_object *reply) {
        return jstr(reply, "error");
}

json_object *reply_params(json_object *reply) {
        json_object *p = jget(reply, "parameters");
        return json_object_is_type(p, json_type_object) ? p : NULL;
}

const char *reply_state(json_object *reply) {
        const char *s = reply_error(reply) ? NULL : jstr(reply_params(reply), "state");
        return s ? s : "";
}

bool reply_continues(json_object *reply) {
        json_object *v = jget(reply, "continues");
        return json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
}

/* ---- children ---- */

/* Writes all of it to a blocking fd. */
static int write_all(int fd, const char *p, size_t n) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return -errno;
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

static _noreturn_ void holder_child(const Agend *a, const char *params_json, double timeout, int ctl) {
        char err[256];
        const char *out = NULL;
        VConn *c = NULL;
        json_object *reply = NULL;
        int r = vconn_open_agend(a, &c);
        if (r >= 0)
                r = vconn_send(c, 0, "io.agend.Lease.Acquire", "%s", params_json);
        if (r >= 0)
                r = vconn_recv(c, timeout, &reply);
        if (r >= 0)
                out = jtext(reply);
        else {
                snprintf(err, sizeof(err), "{\"helper_error\":\"%s\"}", strerror(-r));
                out = err;
        }
        if (write_all(ctl, out, strlen(out) + 1) < 0)
                _exit(1);
        /* Hold until the parent closes its end (or kills us). */
        char b;
        while (read(ctl, &b, 1) != 0 && errno == EINTR)
                ;
        _exit(0);
}

int holder_start(const Agend *a, const char *params_json, double timeout, Holder **ret) {
        helper_init();
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                return -errno;
        Holder *h = calloc(1, sizeof(*h));
        if (!h || ptrset_add(&holders, h) < 0) {
                free(h);
                close(sv[0]);
                close(sv[1]);
                return -ENOMEM;
        }
        h->ctl = sv[0];
        pid_t parent = getpid();
        h->pid = fork();
        if (h->pid < 0) {
                int r = -errno;
                close(sv[1]);
                holder_free(h);
                return r;
        }
        if (h->pid == 0) {
                if (dup2(sv[1], 3) < 0)
                        _exit(1);
                child_detach(parent, 3);
                holder_child(a, params_json, timeout, 3);
        }
        close(sv[1]);

        /* The child's report: one NUL-terminated JSON text. */
        char buf[65536];
        size_t len = 0;
        double deadline = helper_now() + timeout + 1.0;
        while (!memchr(buf, 0, len)) {
                struct pollfd pfd = { .fd = h->ctl, .events = POLLIN };
                int r = poll(&pfd, 1, ms_left(deadline));
                if (r == 0 || len == sizeof(buf)) {
                        holder_free(h);
                        return -ETIMEDOUT;
                }
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        r = -errno;
                        holder_free(h);
                        return r;
                }
                ssize_t k = read(h->ctl, buf + len, sizeof(buf) - len);
                if (k <= 0) {
                        holder_free(h);
                        return -ECHILD;
                }
                len += (size_t) k;
        }
        h->reply = helper_pool_add(json_tokener_parse(buf));
        if (!h->reply || jget(h->reply, "helper_error")) {
                holder_free(h);
                return -EPROTO;
        }
        *ret = h;
        return 0;
}

int holder_kill(Holder *h) {
        if (h->pid <= 0)
                return -ECHILD;
        if (kill(h->pid, SIGKILL) < 0)
                return -errno;
        (void) waitpid(h->pid, NULL, 0);
        h->pid = 0;
        return 0;
}

/* Waits for a child up to timeout, then kills it: its wait status, or -ETIMEDOUT. */
static int wait_child(pid_t pid, double timeout, int *ret_status) {
        double deadline = helper_now() + timeout;
        for (;;) {
                int st;
                pid_t p = waitpid(pid, &st, WNOHANG);
                if (p == pid) {
                        *ret_status = st;
                        return 0;
                }
                if (p < 0)
                        return -errno;
                if (helper_now() >= deadline) {
                        kill(pid, SIGKILL);
                        (void) waitpid(pid, NULL, 0);
                        return -ETIMEDOUT;
                }
                helper_sleep(0.002);
        }
}

Holder *holder_free(Holder *h) {
        if (!h)
                return NULL;
        h->ctl = safe_close(h->ctl);
        if (h->pid > 0) {
                int st;
                (void) wait_child(h->pid, HELPER_REPLY_TIMEOUT, &st);
        }
        ptrset_remove(&holders, h);
        free(h);
        return NULL;
}

int helper_run_as(uid_t uid, gid_t gid, int (*fn)(void *userdata), void *userdata, double timeout,
                  int *ret_code) {
        helper_init();
        fflush(NULL);
        pid_t parent = getpid();
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                child_detach(parent, 2);
                if (geteuid() == 0) {
                        if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 ||
                            setresuid(uid, uid, uid) < 0) {
                                fprintf(stderr, "helper_run_as: cannot drop to %u:%u: %m\n", uid, gid);
                                _exit(126);
                        }
                }
                int r = fn(userdata);
                fflush(NULL);
                _exit(r & 0xff);
        }
        int st;
        int r = wait_child(pid, timeout, &st);
        if (r < 0)
                return r;
        *ret_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return 0;
}

void helper_cleanup(void) {
        while (conns.n > 0)
                vconn_close(conns.items[conns.n - 1]);
        while (holders.n > 0)
                holder_free(holders.items[holders.n - 1]);
        while (daemons.n > 0)
                agend_free(daemons.items[daemons.n - 1]);
        for (size_t i = 0; i < pool.n; i++)
                json_object_put(pool.items[i]);
        ptrset_done(&pool);
        ptrset_done(&conns);
        ptrset_done(&holders);
        ptrset_done(&daemons);
}

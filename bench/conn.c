/* SPDX-License-Identifier: MIT */
/* Non-blocking connections with the three framings agen-bench speaks, and the agend
 * process it starts for the modes that restart the daemon. */

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"

/* Connects fd (closed on failure) and makes it non-blocking if asked. Returns fd. */
static int connect_fd(int fd, const struct sockaddr *sa, socklen_t len, bool nonblock) {
        if (connect(fd, sa, len) < 0) {
                int r = -errno;
                close(fd);
                return r;
        }
        if (nonblock)
                (void) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        return fd;
}

int connect_unix(const char *path, bool nonblock) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd;

        if (strlen(path) >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        strcpy(sa.sun_path, path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* Blocking connect: on AF_UNIX it waits for room in the listen backlog instead of
         * failing with EAGAIN, which matters when 10 k connections arrive at once. */
        return connect_fd(fd, (struct sockaddr *) &sa, sizeof(sa), nonblock);
}

int connect_tcp(const char *host, int port, bool nonblock) {
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) port) };
        int fd, one = 1;

        if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
                return -EINVAL;
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        (void) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        return connect_fd(fd, (struct sockaddr *) &sa, sizeof(sa), nonblock);
}

/* ---- framing ---- */

/* Length of one complete RESP reply at p, 0 if incomplete, -1 if malformed. */
static long resp_frame(const char *p, size_t n) {
        const char *nl;
        long long len;

        if (n < 3)
                return 0;
        nl = memchr(p, '\n', n);
        if (!nl)
                return 0;
        size_t hdr = (size_t) (nl - p) + 1;
        switch (p[0]) {
        case '+':
        case '-':
        case ':':
                return (long) hdr;
        case '$':
                len = strtoll(p + 1, NULL, 10);
                if (len < 0)
                        return (long) hdr;
                if (n < hdr + (size_t) len + 2)
                        return 0;
                return (long) (hdr + (size_t) len + 2);
        case '*': {
                len = strtoll(p + 1, NULL, 10);
                size_t off = hdr;
                for (long long i = 0; i < len; i++) {
                        long e = resp_frame(p + off, n - off);
                        if (e <= 0)
                                return e;
                        off += (size_t) e;
                }
                return (long) off;
        }
        default:
                return -1;
        }
}

/* One HTTP response: sets body, body_len and the status; returns total length, 0 if
 * incomplete, -1 if malformed. Only Content-Length bodies (what etcd's gateway sends for
 * unary calls). */
static long http_frame(char *p, size_t n, char **body, size_t *body_len, int *status) {
        char *end = memmem(p, n, "\r\n\r\n", 4);
        long long clen = -1;

        if (!end)
                return 0;
        size_t hdr = (size_t) (end - p) + 4;
        if (n < 12 || strncmp(p, "HTTP/1.", 7) != 0)
                return -1;
        *status = atoi(p + 9);
        for (char *l = memchr(p, '\n', hdr); l && l < end; l = memchr(l + 1, '\n', (size_t) (end - l))) {
                if (strncasecmp(l + 1, "Content-Length:", 15) == 0)
                        clen = strtoll(l + 16, NULL, 10);
                else if (strncasecmp(l + 1, "Transfer-Encoding:", 18) == 0)
                        return -1;
        }
        if (clen < 0)
                return -1;
        if (n < hdr + (size_t) clen)
                return 0;
        *body = p + hdr;
        *body_len = (size_t) clen;
        return (long) (hdr + (size_t) clen);
}

static void conn_fail(Conn *c, int err) {
        if (c->dead)
                return;
        c->dead = true;
        c->error = err;
        ev_io_stop(c->loop, &c->io);
}

static void conn_process(Conn *c) {
        size_t off = 0;

        while (!c->dead && off < c->rlen) {
                char *p = c->rbuf + off, *msg = p;
                size_t avail = c->rlen - off, mlen = 0;
                long used;

                switch (c->proto) {
                case PROTO_VARLINK: {
                        char *z = memchr(p, 0, avail);
                        if (!z)
                                goto out;
                        mlen = (size_t) (z - p);
                        used = (long) mlen + 1;
                        break;
                }
                case PROTO_RESP:
                        used = resp_frame(p, avail);
                        mlen = (size_t) (used > 0 ? used : 0);
                        break;
                case PROTO_HTTP:
                        used = http_frame(p, avail, &msg, &mlen, &c->http_status);
                        break;
                default:
                        used = -1;
                }
                if (used == 0)
                        break;
                if (used < 0) {
                        conn_fail(c, -EBADMSG);
                        break;
                }
                off += (size_t) used;
                /* The byte after the message is ours to overwrite: either the framing NUL,
                 * or spare room (rcap > rlen always). Save and restore it for the next. */
                char saved = msg[mlen];
                msg[mlen] = 0;
                c->on_msg(c, msg, mlen);
                msg[mlen] = saved;
        }
out:
        if (off > 0 && c->rbuf) {
                memmove(c->rbuf, c->rbuf + off, c->rlen - off);
                c->rlen -= off;
        }
}

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        Conn *c = container_of(w, Conn, io);

        if (revents & EV_READ) {
                for (int i = 0; i < 8 && !c->dead; i++) {
                        if (c->rcap - c->rlen < 65536 + 1) {
                                c->rcap = c->rcap ? c->rcap * 2 : 131072;
                                c->rbuf = xrealloc(c->rbuf, c->rcap);
                        }
                        ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen - 1);
                        if (n < 0) {
                                if (errno == EAGAIN || errno == EINTR)
                                        break;
                                conn_fail(c, -errno);
                                break;
                        }
                        if (n == 0) {
                                conn_process(c);
                                conn_fail(c, -EPIPE);
                                break;
                        }
                        c->rlen += (size_t) n;
                        conn_process(c);
                        if ((size_t) n < 65536)
                                break;
                }
        }
        if (!c->dead)
                conn_flush(c);
}

void conn_init(Conn *c, struct ev_loop *loop, int fd, Proto proto, conn_msg_fn on_msg, void *userdata) {
        *c = (Conn) {
                .loop = loop,
                .fd = fd,
                .proto = proto,
                .on_msg = on_msg,
                .userdata = userdata,
        };
        ev_io_init(&c->io, conn_io_cb, fd, EV_READ);
        ev_io_start(loop, &c->io);
}

void conn_write(Conn *c, const void *p, size_t n) {
        if (c->wlen + n > c->wcap) {
                c->wcap = (c->wlen + n) * 2 + 4096;
                c->wbuf = xrealloc(c->wbuf, c->wcap);
        }
        memcpy(c->wbuf + c->wlen, p, n);
        c->wlen += n;
}

static void conn_vprintf(Conn *c, bool nul, const char *fmt, va_list ap) {
        va_list aq;
        int n;

        va_copy(aq, ap);
        n = vsnprintf(NULL, 0, fmt, aq);
        va_end(aq);
        if (n < 0)
                return;
        size_t need = (size_t) n + 1;
        if (c->wlen + need > c->wcap) {
                c->wcap = (c->wlen + need) * 2 + 4096;
                c->wbuf = xrealloc(c->wbuf, c->wcap);
        }
        vsnprintf(c->wbuf + c->wlen, need, fmt, ap);
        c->wlen += (size_t) n + (nul ? 1 : 0); /* vsnprintf wrote the NUL */
}

void conn_printf(Conn *c, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        conn_vprintf(c, false, fmt, ap);
        va_end(ap);
}

void conn_vl(Conn *c, const char *fmt, ...) {
        va_list ap;

        va_start(ap, fmt);
        conn_vprintf(c, true, fmt, ap);
        va_end(ap);
}

void conn_resp(Conn *c, int argc, const char *const *argv) {
        conn_printf(c, "*%d\r\n", argc);
        for (int i = 0; i < argc; i++)
                conn_printf(c, "$%zu\r\n%s\r\n", strlen(argv[i]), argv[i]);
}

void conn_http_post(Conn *c, const char *path, const char *body) {
        conn_printf(c,
                    "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    "Content-Length: %zu\r\n\r\n%s",
                    path, strlen(body), body);
}

void conn_flush(Conn *c) {
        while (!c->dead && c->woff < c->wlen) {
                ssize_t n = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN) {
                                /* Wait for room: watch for both directions. */
                                ev_io_stop(c->loop, &c->io);
                                ev_io_set(&c->io, c->fd, EV_READ | EV_WRITE);
                                ev_io_start(c->loop, &c->io);
                                return;
                        }
                        conn_fail(c, -errno);
                        return;
                }
                c->woff += (size_t) n;
        }
        if (c->woff == c->wlen) {
                c->woff = c->wlen = 0;
                if (!c->dead && (c->io.events & EV_WRITE)) {
                        ev_io_stop(c->loop, &c->io);
                        ev_io_set(&c->io, c->fd, EV_READ);
                        ev_io_start(c->loop, &c->io);
                }
        }
}

void conn_done(Conn *c) {
        if (c->loop)
                ev_io_stop(c->loop, &c->io);
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        free(c->rbuf);
        free(c->wbuf);
        c->rbuf = c->wbuf = NULL;
        c->rlen = c->rcap = c->wlen = c->wcap = c->woff = 0;
        c->dead = true;
}

/* ---- blocking calls ---- */

int vl_call_fd(int fd, const char *call_json, char **ret_reply, usec_t timeout) {
        usec_t deadline = now_usec() + timeout;
        size_t n = strlen(call_json) + 1, off = 0;
        char *buf = NULL;
        size_t len = 0, cap = 0;

        while (off < n) {
                ssize_t k = write(fd, call_json + off, n - off);
                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN) {
                                struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                                (void) poll(&pfd, 1, 10);
                                if (now_usec() > deadline)
                                        return -ETIMEDOUT;
                                continue;
                        }
                        return -errno;
                }
                off += (size_t) k;
        }
        for (;;) {
                usec_t now = now_usec();
                if (now >= deadline) {
                        free(buf);
                        return -ETIMEDOUT;
                }
                struct pollfd pfd = { .fd = fd, .events = POLLIN };
                int r = poll(&pfd, 1, (int) ((deadline - now) / 1000 + 1));
                if (r < 0 && errno != EINTR) {
                        free(buf);
                        return -errno;
                }
                if (r <= 0)
                        continue;
                if (cap - len < 4096) {
                        cap = cap ? cap * 2 : 8192;
                        buf = xrealloc(buf, cap);
                }
                ssize_t k = read(fd, buf + len, cap - len - 1);
                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        free(buf);
                        return -errno;
                }
                if (k == 0) {
                        free(buf);
                        return -EPIPE;
                }
                len += (size_t) k;
                buf[len] = 0;
                if (memchr(buf, 0, len) != buf + len) {
                        *ret_reply = buf;
                        return 0;
                }
        }
}

char *vl_call_once(const char *socket, const char *call_json, usec_t timeout) {
        char *reply = NULL;
        int fd = connect_unix(socket, false);

        if (fd < 0)
                return NULL;
        if (vl_call_fd(fd, call_json, &reply, timeout) < 0)
                reply = NULL;
        close(fd);
        return reply;
}

/* ---- the daemon ---- */

int wait_ready(const char *socket, pid_t pid, usec_t timeout) {
        usec_t deadline = now_usec() + timeout;

        while (now_usec() < deadline) {
                if (pid > 0) {
                        int st;
                        if (waitpid(pid, &st, WNOHANG) == pid)
                                return -ECHILD;
                }
                int fd = connect_unix(socket, false);
                if (fd >= 0) {
                        char *reply = NULL;
                        int r = vl_call_fd(fd, "{\"method\":\"io.agend.Lease.Status\",\"parameters\":{}}",
                                           &reply, deadline - now_usec());
                        close(fd);
                        if (r == 0) {
                                bool ok = strstr(reply, "\"error\"") == NULL;
                                free(reply);
                                if (ok)
                                        return 0;
                        }
                }
                usleep(1000);
        }
        return -ETIMEDOUT;
}

int daemon_start(Daemon *d, usec_t *ret_ready) {
        const char *argv[40];
        unsigned n = 0;

        if (!d->state_dir) {
                if (d->want_state_dir)
                        d->state_dir = xstrdup(d->want_state_dir);
                else {
                        const char *t = getenv("TMPDIR");
                        char tmpl[4096];
                        snprintf(tmpl, sizeof(tmpl), "%s/agen-bench.XXXXXX", t && *t ? t : "/tmp");
                        if (!mkdtemp(tmpl))
                                return -errno;
                        d->tmpdir = xstrdup(tmpl);
                        d->state_dir = xstrdup(tmpl);
                }
        }
        if (!d->socket) {
                size_t l = strlen(d->state_dir) + 32;
                d->socket = xmalloc(l);
                snprintf(d->socket, l, "%s/io.agend.Lease", d->state_dir);
        }
        snprintf(d->log_path, sizeof(d->log_path), "%s/agend.log", d->state_dir);

        argv[n++] = d->binary;
        argv[n++] = "--socket";
        argv[n++] = d->socket;
        argv[n++] = "--state-dir";
        argv[n++] = d->state_dir;
        for (unsigned i = 0; i < d->n_args && n < ELEMENTSOF(argv) - 1; i++)
                argv[n++] = d->args[i];
        argv[n] = NULL;

        usec_t t0 = now_usec();
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* The daemon must not outlive us, whatever happens to this process. */
                (void) prctl(PR_SET_PDEATHSIG, SIGTERM);
                int lfd = open(d->log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                if (lfd >= 0) {
                        dup2(lfd, STDOUT_FILENO);
                        dup2(lfd, STDERR_FILENO);
                }
                struct rlimit rl = { 65536, 65536 };
                (void) setrlimit(RLIMIT_NOFILE, &rl);
                execv(d->binary, (char *const *) argv);
                _exit(127);
        }
        d->pid = pid;
        int r = wait_ready(d->socket, pid, 120 * USEC_PER_SEC);
        if (r < 0) {
                logf_("agen-bench: agend did not become ready: %s\n", strerror(-r));
                daemon_log_tail(d);
                if (r != -ECHILD)
                        (void) daemon_stop(d, NULL);
                d->pid = 0;
                return r;
        }
        if (ret_ready)
                *ret_ready = now_usec() - t0;
        return 0;
}

int daemon_stop(Daemon *d, usec_t *ret_stop) {
        int st = 0;

        if (d->pid <= 0)
                return 0;
        usec_t t0 = now_usec();
        (void) kill(d->pid, SIGTERM);
        for (;;) {
                pid_t r = waitpid(d->pid, &st, WNOHANG);
                if (r == d->pid || (r < 0 && errno == ECHILD))
                        break;
                if (now_usec() - t0 > 30 * USEC_PER_SEC) {
                        logf_("agen-bench: agend did not exit 30 s after SIGTERM, killing it\n");
                        (void) kill(d->pid, SIGKILL);
                        (void) waitpid(d->pid, &st, 0);
                        break;
                }
                usleep(500);
        }
        if (ret_stop)
                *ret_stop = now_usec() - t0;
        d->pid = 0;
        return st;
}

void daemon_log_tail(const Daemon *d) {
        char buf[4096];
        FILE *f = fopen(d->log_path, "re");

        if (!f)
                return;
        if (fseek(f, -(long) (sizeof(buf) - 1), SEEK_END) < 0)
                rewind(f);
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = 0;
        fclose(f);
        logf_("--- agend log (tail) ---\n%s\n---\n", buf);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        if (remove(path) < 0)
                logf_("agen-bench: could not remove %s: %s\n", path, strerror(errno));
        return 0;
}

/* Removes the temp dir we made (never one we were given), depth first, no symlink
 * following. */
static void rm_rf(const char *dir) {
        (void) nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

void daemon_cleanup(Daemon *d) {
        (void) daemon_stop(d, NULL);
        if (d->tmpdir) {
                rm_rf(d->tmpdir);
                free(d->tmpdir);
                d->tmpdir = NULL;
        }
        free(d->state_dir);
        d->state_dir = NULL;
        free(d->socket);
        d->socket = NULL;
}

/* SPDX-License-Identifier: MIT */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helper-etcd.h"
#include "macro.h"

static const char *etcd_binary(void) {
        const char *b = getenv("ETCD_BINARY");
        if (b && *b)
                return access(b, X_OK) == 0 ? b : NULL;
        static const char *const candidates[] = { "/usr/bin/etcd", "/usr/local/bin/etcd" };
        for (size_t i = 0; i < ELEMENTSOF(candidates); i++)
                if (access(candidates[i], X_OK) == 0)
                        return candidates[i];
        return NULL;
}

/* A port nobody listens on now. Two members asking at once cannot get the same one: all
 * sockets are held until every port is chosen. */
static int pick_ports(int *ports, size_t n) {
        int fds[2 * ETCD_CLUSTER_MAX];
        int k = 0;
        size_t i;
        for (i = 0; i < n; i++) {
                struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
                socklen_t l = sizeof(a);
                fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
                if (fds[i] < 0 || bind(fds[i], (struct sockaddr *) &a, sizeof(a)) < 0 ||
                    getsockname(fds[i], (struct sockaddr *) &a, &l) < 0) {
                        k = -errno;
                        if (fds[i] >= 0)
                                close(fds[i]);
                        break;
                }
                ports[i] = ntohs(a.sin_port);
        }
        while (i > 0)
                close(fds[--i]);
        return k;
}

static pid_t spawn_member(EtcdCluster *c, size_t i, bool fresh) {
        const char *bin = etcd_binary();
        EtcdMember *m = &c->m[i];
        char cluster[1024] = "", peer[64];
        for (size_t j = 0; j < c->n; j++) {
                char one[128];
                snprintf(one, sizeof(one), "%s%s=http://127.0.0.1:%d", j ? "," : "", c->m[j].name,
                         c->m[j].peer_port);
                strncat(cluster, one, sizeof(cluster) - strlen(cluster) - 1);
        }
        snprintf(peer, sizeof(peer), "http://127.0.0.1:%d", m->peer_port);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                int fd = open(m->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                if (fd >= 0) {
                        dup2(fd, 1);
                        dup2(fd, 2);
                }
                int null = open("/dev/null", O_RDONLY);
                if (null >= 0)
                        dup2(null, 0);
                /* Short heartbeats keep elections and lease expiry quick on loopback. */
                char cert[192], key[192], ca[192];
                snprintf(cert, sizeof(cert), "%s/server.pem", c->tls_dir);
                snprintf(key, sizeof(key), "%s/server-key.pem", c->tls_dir);
                snprintf(ca, sizeof(ca), "%s/ca.pem", c->tls_dir);
                const char *argv[40] = {
                        bin, "--name", m->name, "--data-dir", m->data_dir,
                        "--listen-client-urls", m->client_url, "--advertise-client-urls", m->client_url,
                        "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                        "--initial-cluster", cluster, "--initial-cluster-state", fresh ? "new" : "existing",
                        "--initial-cluster-token", c->dir, "--heartbeat-interval", "100",
                        "--election-timeout", "1000", "--logger", "zap", "--log-level", "warn",
                };
                size_t n = 0;
                while (argv[n])
                        n++;
                if (c->tls_dir[0]) {
                        const char *more[] = { "--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
                                               "--client-cert-auth" };
                        for (size_t j = 0; j < ELEMENTSOF(more); j++)
                                argv[n++] = more[j];
                }
                argv[n] = NULL;
                execv(bin, (char **) argv);
                _exit(127);
        }
        return pid;
}

/* The watchdog: a child that outlives a hung caller by at most lifetime, then kills the
 * members by pid. It dies with the caller (PDEATHSIG), which the members do too. */
static pid_t spawn_watchdog(EtcdCluster *c, usec_t lifetime) {
        pid_t pid = fork();
        if (pid != 0)
                return pid < 0 ? -errno : pid;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        struct timespec ts = { .tv_sec = (time_t) (lifetime / USEC_PER_SEC) };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
        for (size_t i = 0; i < c->n; i++)
                if (c->m[i].pid > 0)
                        kill(c->m[i].pid, SIGKILL);
        _exit(0);
}

static size_t discard(char *p, size_t s, size_t n, void *u) {
        char *buf = u;
        size_t have = strlen(buf), take = MIN(s * n, 255 - have);
        memcpy(buf + have, p, take);
        buf[have + take] = 0;
        return s * n;
}

static bool healthy(const EtcdCluster *c, const EtcdMember *m) {
        char url[96], body[256] = "";
        snprintf(url, sizeof(url), "%s/health", m->client_url);
        CURL *e = curl_easy_init();
        if (!e)
                return false;
        curl_easy_setopt(e, CURLOPT_URL, url);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 2000L);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, discard);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, body);
        char ca[192], cert[192], key[192];
        if (c->tls_dir[0]) {
                snprintf(ca, sizeof(ca), "%s/ca.pem", c->tls_dir);
                snprintf(cert, sizeof(cert), "%s/client.pem", c->tls_dir);
                snprintf(key, sizeof(key), "%s/client-key.pem", c->tls_dir);
                curl_easy_setopt(e, CURLOPT_CAINFO, ca);
                curl_easy_setopt(e, CURLOPT_SSLCERT, cert);
                curl_easy_setopt(e, CURLOPT_SSLKEY, key);
        }
        CURLcode r = curl_easy_perform(e);
        curl_easy_cleanup(e);
        return r == CURLE_OK && strstr(body, "\"true\"");
}

int etcd_cluster_wait_healthy(EtcdCluster *c, size_t i, usec_t timeout) {
        usec_t end = usec_now(CLOCK_MONOTONIC) + timeout;
        for (;;) {
                if (c->m[i].pid <= 0)
                        return -ESRCH;
                int st;
                if (waitpid(c->m[i].pid, &st, WNOHANG) == c->m[i].pid) {
                        c->m[i].pid = 0;
                        return -ECHILD;
                }
                if (healthy(c, &c->m[i]))
                        return 0;
                if (usec_now(CLOCK_MONOTONIC) > end)
                        return -ETIMEDOUT;
                usleep(50 * 1000);
        }
}

/* A CA, a server certificate for 127.0.0.1 and a client certificate, by the openssl
 * command (no key material in the tree). */
static int make_certs(const char *dir) {
        char cmd[2048];
        snprintf(cmd, sizeof(cmd),
                 "set -e; cd '%s'; exec >certs.log 2>&1; "
                 "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=agend-test-ca "
                 "  -keyout ca-key.pem -out ca.pem; "
                 "printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' >ext.cnf; "
                 "for w in server client; do "
                 "  openssl req -newkey rsa:2048 -nodes -subj /CN=$w -keyout $w-key.pem -out $w.csr; "
                 "  openssl x509 -req -in $w.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 2 "
                 "    -extfile ext.cnf -out $w.pem; "
                 "done",
                 dir);
        return system(cmd) == 0 ? 0 : -EIO;
}

static int cluster_new(size_t n, bool tls, usec_t timeout, usec_t lifetime, EtcdCluster **ret);

int etcd_cluster_new(size_t n, usec_t timeout, usec_t lifetime, EtcdCluster **ret) {
        return cluster_new(n, false, timeout, lifetime, ret);
}

int etcd_cluster_for_tests(EtcdCluster **ret) {
        int k = etcd_cluster_new(3, 60 * USEC_PER_SEC, 10 * 60 * USEC_PER_SEC, ret);
        if (k == -ENOENT) {
                fprintf(stderr, "no etcd binary: skipped\n");
                return 77;
        }
        if (k < 0) {
                fprintf(stderr, "etcd cluster: %s\n", strerror(-k));
                return 1;
        }
        return 0;
}

int etcd_cluster_new_tls(size_t n, usec_t timeout, usec_t lifetime, EtcdCluster **ret) {
        if (access("/usr/bin/openssl", X_OK) < 0)
                return -ENOENT;
        return cluster_new(n, true, timeout, lifetime, ret);
}

static int cluster_new(size_t n, bool tls, usec_t timeout, usec_t lifetime, EtcdCluster **ret) {
        if (n == 0 || n > ETCD_CLUSTER_MAX)
                return -EINVAL;
        if (!etcd_binary())
                return -ENOENT;
        EtcdCluster *c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        const char *t = getenv("TMPDIR");
        snprintf(c->dir, sizeof(c->dir), "%s/agend-etcd-XXXXXX", t && *t && strlen(t) < 32 ? t : "/tmp");
        if (!mkdtemp(c->dir)) {
                free(c);
                return -errno;
        }
        c->n = n;
        int ports[2 * ETCD_CLUSTER_MAX];
        int k = pick_ports(ports, 2 * n);
        if (k < 0)
                goto fail;
        if (tls) {
                snprintf(c->tls_dir, sizeof(c->tls_dir), "%s/tls", c->dir);
                if (mkdir(c->tls_dir, 0700) < 0) {
                        k = -errno;
                        goto fail;
                }
                if ((k = make_certs(c->tls_dir)) < 0)
                        goto fail;
        }
        for (size_t i = 0; i < n; i++) {
                EtcdMember *m = &c->m[i];
                char name[16];
                snprintf(name, sizeof(name), "m%zu", i);
                memcpy(m->name, name, sizeof(name));
                m->client_port = ports[2 * i];
                m->peer_port = ports[2 * i + 1];
                snprintf(m->client_url, sizeof(m->client_url), "%s://127.0.0.1:%d", tls ? "https" : "http",
                         m->client_port);
                snprintf(m->data_dir, sizeof(m->data_dir), "%s/%s.etcd", c->dir, name);
                snprintf(m->log, sizeof(m->log), "%s/%s.log", c->dir, name);
                c->endpoints[i] = m->client_url;
        }
        for (size_t i = 0; i < n; i++) {
                pid_t p = spawn_member(c, i, true);
                if (p < 0) {
                        k = p;
                        goto fail;
                }
                c->m[i].pid = p;
        }
        pid_t w = spawn_watchdog(c, lifetime ?: 15 * 60 * USEC_PER_SEC);
        if (w < 0) {
                k = w;
                goto fail;
        }
        c->watchdog = w;
        for (size_t i = 0; i < n; i++)
                if ((k = etcd_cluster_wait_healthy(c, i, timeout)) < 0)
                        goto fail;
        *ret = c;
        return 0;
fail:
        etcd_cluster_free(c);
        return k;
}

int etcd_cluster_signal(EtcdCluster *c, size_t i, int sig) {
        if (i >= c->n || c->m[i].pid <= 0)
                return -ESRCH;
        if (kill(c->m[i].pid, sig) < 0)
                return -errno;
        if (sig == SIGKILL) {
                waitpid(c->m[i].pid, NULL, 0);
                c->m[i].pid = 0;
        }
        return 0;
}

int etcd_cluster_restart(EtcdCluster *c, size_t i) {
        if (i >= c->n || c->m[i].pid > 0)
                return -EBUSY;
        pid_t p = spawn_member(c, i, false);
        if (p < 0)
                return p;
        c->m[i].pid = p;
        /* The watchdog knows the old pids only: a restarted member relies on PDEATHSIG and
         * etcd_cluster_free(). */
        return 0;
}

static int rm_cb(const char *path, const struct stat *st, int flag, struct FTW *f) {
        return remove(path);
}

void etcd_cluster_free(EtcdCluster *c) {
        if (!c)
                return;
        for (size_t i = 0; i < c->n; i++)
                if (c->m[i].pid > 0) {
                        kill(c->m[i].pid, SIGKILL);
                        waitpid(c->m[i].pid, NULL, 0);
                        c->m[i].pid = 0;
                }
        if (c->watchdog > 0) {
                kill(c->watchdog, SIGKILL);
                waitpid(c->watchdog, NULL, 0);
        }
        if (!getenv("AGEND_TEST_KEEP"))
                nftw(c->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
        free(c);
}

const char *etcd_cluster_endpoints_string(const EtcdCluster *c) {
        static char buf[ETCD_CLUSTER_MAX * 64];
        buf[0] = 0;
        for (size_t i = 0; i < c->n; i++) {
                if (i)
                        strcat(buf, " ");
                strcat(buf, c->m[i].client_url);
        }
        return buf;
}

/* SPDX-License-Identifier: MIT */
/* The state directory and the disk under it, on the real agend (issue 11, defects 0, 5, 6
 * and 9):
 * - one agend per state directory: a second one, on another socket, is refused and names
 *   the first one's pid; after kill -9 of the first a new one starts;
 * - modes: with umask 022 and a 0755 state directory, the directory ends 0700 and the
 *   database files 0600;
 * - a full disk (a small tmpfs): Acquire gets StorageError with a reason, reads and
 *   releases go on, holders keep their leases, Acquire works again once space returns,
 *   without a restart, and nothing granted is lost across a kill -9; a start on a full
 *   disk restores and serves the leases; with no reserve left, the call that cannot be
 *   committed is answered only once space returns;
 * - a read-only state file system is reported as such, without advice to move the
 *   database;
 * - EIO on commit (an LD_PRELOAD library failing writes or syncs of the database): agend
 *   stops without answering the calls it could not commit, and a restart restores what
 *   was committed.
 * The tmpfs tests run in a private mount namespace of this process and are skipped when
 * it cannot make one (not root). */

#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-agend.h"
#include "helper-mount.h"

/* The tmpfs for the full-disk tests: room for the 16 MiB reserve and the free-space marks
 * (store-guard.h), small enough to fill in a moment. */
#define TMPFS_SIZE (64UL << 20)
/* How long agend may take to notice a full disk, or space coming back (it checks every
 * second); generous for valgrind and a loaded machine. */
#define NOTICE_TIMEOUT 30.0

static int setup_new(void **state) {
        Agend *a = NULL;
        if (agend_new(&a) < 0) {
                helper_cleanup();
                return -1;
        }
        *state = a;
        return 0;
}

static int teardown_any(void **state) {
        Agend *a = *state;
        if (a) {
                if (a->pid > 0)
                        (void) agend_kill(a);
                (void) umount2(a->state_dir, MNT_DETACH);
        }
        helper_cleanup();
        *state = NULL;
        return 0;
}

/* Tests skipped for want of a mount namespace: the binary then exits 77, so meson counts
 * it as skipped (and CI as failed) rather than passed. */
static unsigned n_skipped;

static void need_mounts(void) {
        int r = helper_private_mounts();
        if (r < 0) {
                n_skipped++;
                fprintf(stderr, "cannot make a private mount namespace (%s): skipped\n", strerror(-r));
                skip();
        }
}

static size_t count_substr(const char *s, const char *needle) {
        size_t n = 0;
        for (const char *p = s; p && (p = strstr(p, needle)); p += strlen(needle))
                n++;
        return n;
}

static bool log_has(const Agend *a, const char *needle) {
        char *log = agend_read_log(a);
        bool r = log && strstr(log, needle);
        free(log);
        return r;
}

static json_object *find_lease(VConn *c, const char *id) {
        json_object *ls = jget(CALL_OK(c, LEASE_IF "List", "{}"), "leases");
        for (size_t i = 0; i < json_object_array_length(ls); i++) {
                json_object *l = json_object_array_get_idx(ls, i);
                if (jstr(l, "id") && strcmp(jstr(l, "id"), id) == 0)
                        return l;
        }
        return NULL;
}

static void assert_mode(const char *path, mode_t want) {
        struct stat st;
        if (stat(path, &st) < 0)
                fail_msg("stat %s: %s", path, strerror(errno));
        if ((st.st_mode & 07777) != want)
                fail_msg("%s has mode %04o, not %04o", path, (unsigned) (st.st_mode & 07777), (unsigned) want);
}

/* ---- defect 0: one agend per state directory ---- */

static void test_second_daemon_refused(void **state) {
        Agend *a = *state;
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        json_object *held = GRANT_LEASE(c, "{\"resource\":\"only-one\"}");

        /* Another socket, the same state directory. */
        Agend *b = NULL;
        assert_int_equal(agend_new(&b), 0);
        snprintf(b->state_dir, sizeof(b->state_dir), "%s", a->state_dir);
        assert_int_equal(agend_spawn(b), 0);
        int st = 0;
        if (agend_wait_exit(b, HELPER_START_TIMEOUT, &st) < 0)
                fail_msg("a second agend on the same state directory did not exit");
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
        char pid[32];
        snprintf(pid, sizeof(pid), "pid %d", (int) a->pid);
        if (!log_has(b, pid))
                fail_msg("the refusal does not name the running agend (%s)", pid);

        /* The first one is untouched: its lease is held, and the resource busy. */
        json_object *l = find_lease(c, jstr(held, "id"));
        assert_non_null(l);
        assert_string_equal(jstr(l, "state"), "held");
        CALL_ERR(c, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"only-one\",\"timeout\":0}");

        /* Once it is dead (kill -9: no chance to clean up), the next one starts. */
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(agend_start(b), 0);
        VConn *cb = OPEN(b);
        l = find_lease(cb, jstr(held, "id"));
        assert_non_null(l);
        int r = 0;
        assert_int_equal(agend_stop(b, &r), 0);
        assert_true(WIFEXITED(r) && WEXITSTATUS(r) == 0);
}

/* ---- defect 6: modes ---- */

static void test_modes(void **state) {
        Agend *a = *state;
        mode_t old = umask(022);
        assert_int_equal(chmod(a->state_dir, 0755), 0);
        int r = agend_start(a);
        umask(old);
        assert_int_equal(r, 0);
        VConn *c = OPEN(a);
        GRANT(c, "{\"resource\":\"secret-holder\"}");
        CALL_OK(c, LEASE_IF "List", "{}");

        assert_mode(a->state_dir, 0700);
        assert_true(log_has(a, "was open to others"));
        char p[256];
        /* No agend.db-shm: agend holds the database exclusively, its WAL index in memory.
         * The leases snapshot has one: its fold thread writes it on a connection of its own. */
        static const char *const files[] = { "agend.db", "agend.db-wal", "agend.lock", "agend-leases.db",
                                             "agend-leases.db-wal", "agend-leases.db-shm" };
        for (size_t i = 0; i < ELEMENTSOF(files); i++) {
                snprintf(p, sizeof(p), "%s/%s", a->state_dir, files[i]);
                assert_mode(p, 0600);
        }
        int st = 0;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- defect 5: a full disk ---- */

/* agend_start() with NOTIFY_SOCKET set to a datagram socket of ours (the helper removes
 * it from the daemon's environment), so the test sees what agend tells systemd. */
static int start_with_notify(Agend *a, int *ret_fd) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/notify", a->dir);
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0 || bind(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0)
                return -errno;
        const char *bin = getenv("AGEND_BINARY");
        int logfd = open(a->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (!bin || logfd < 0)
                return -ENOENT;
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
                        _exit(127);
                setenv("NOTIFY_SOCKET", sa.sun_path, 1);
                execl(bin, bin, "--socket", a->socket, "--state-dir", a->state_dir, "--config", a->config,
                      (char *) NULL);
                _exit(127);
        }
        close(logfd);
        a->pid = pid;
        int r = agend_wait_ready(a, HELPER_START_TIMEOUT);
        if (r < 0)
                return r;
        *ret_fd = fd;
        return 0;
}

/* Reads what agend has sent so far and reports whether a STATUS= line contains needle. */
static bool notified(int fd, const char *needle) {
        char buf[4096];
        bool found = false;
        ssize_t n;
        while ((n = recv(fd, buf, sizeof(buf) - 1, 0)) > 0) {
                buf[n] = 0;
                const char *st = strstr(buf, "STATUS=");
                if (st && strstr(st, needle))
                        found = true;
        }
        return found;
}

static void fill(const Agend *a) {
        char p[256];
        snprintf(p, sizeof(p), "%s/filler", a->state_dir);
        assert_int_equal(helper_fill(p), 0);
}

static void unfill(const Agend *a) {
        char p[256];
        snprintf(p, sizeof(p), "%s/filler", a->state_dir);
        assert_int_equal(unlink(p), 0);
}

typedef struct Granted {
        char id[64];
        int n;
} Granted;

static void test_disk_full(void **state) {
        Agend *a = *state;
        need_mounts();
        assert_int_equal(helper_mount_tmpfs(a->state_dir, TMPFS_SIZE, false), 0);
        int notify_fd = -1;
        assert_int_equal(start_with_notify(a, &notify_fd), 0);
        bool systemd = notified(notify_fd, "");     /* READY=1 comes with a STATUS= line */

        /* A holder in another process, and a lease of our own to release later. */
        Holder *h = NULL;
        assert_int_equal(holder_start(a, "{\"resource\":\"held-across\"}", HELPER_REPLY_TIMEOUT, &h), 0);
        assert_granted(h->reply);
        char held_id[64];
        snprintf(held_id, sizeof(held_id), "%s", jstr(reply_params(h->reply), "lease.id"));
        VConn *c = OPEN(a);
        json_object *mine = GRANT_LEASE(c, "{\"resource\":\"mine\"}");
        char mine_id[64];
        snprintf(mine_id, sizeof(mine_id), "%s", jstr(mine, "id"));

        fill(a);

        /* Acquire until refused: at once if agend saw the disk fill first, else after a
         * commit that took the reserve. Every grant on the way is a durable one. */
        Granted granted[64];
        size_t n_granted = 0;
        json_object *refused = NULL;
        double deadline = helper_now() + NOTICE_TIMEOUT;
        for (int i = 0; !refused; i++) {
                if (helper_now() > deadline || n_granted == ELEMENTSOF(granted))
                        fail_msg("no StorageError on a full disk after %zu grants", n_granted);
                json_object *rep = CALL(c, LEASE_IF "Acquire",
                                        "{\"resource\":\"full-%d\",\"detached\":true,\"description\":\"%0500d\"}",
                                        i, 0);
                if (reply_error(rep)) {
                        assert_error(rep, LEASE_IF "StorageError");
                        refused = reply_params(rep);
                        break;
                }
                json_object *p = assert_granted(rep);
                snprintf(granted[n_granted].id, sizeof(granted[n_granted].id), "%s", jstr(p, "lease.id"));
                granted[n_granted++].n = i;
                helper_sleep(0.05);
        }
        const char *reason = jstr(refused, "reason");
        if (!reason || !strstr(reason, "full"))
                fail_msg("StorageError without a reason that says the disk is full: %s", jtext(refused));
        /* systemd is told (when agend was built with libsystemd). */
        if (systemd && !notified(notify_fd, "new leases are refused"))
                fail_msg("no STATUS= about the full disk");

        /* Reads go on. */
        assert_non_null(find_lease(c, held_id));
        CALL_OK(c, LEASE_IF "Status", "{}");
        CALL_OK(c, LEASE_IF "History", "{}");
        CALL_OK(c, "org.varlink.service.GetInfo", "{}");
        CALL_OK(c, LEASE_IF "Resources", "{}");
        VConn *w = OPEN(a);
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Watch", "{\"resource\":\"mine\"}"), 0);
        json_object *m = RECV(w, HELPER_REPLY_TIMEOUT);
        assert_null(reply_error(m));
        /* A release goes on too (and the watcher sees it). */
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", mine_id);
        m = RECV(w, HELPER_REPLY_TIMEOUT);
        assert_string_equal(jstr(reply_params(m), "event.type"), "released");
        /* Still refused, and the holder still holds. */
        CALL_ERR(c, LEASE_IF "StorageError", LEASE_IF "Acquire", "{\"resource\":\"still-full\"}");
        json_object *l = find_lease(c, held_id);
        assert_non_null(l);
        assert_string_equal(jstr(l, "state"), "held");

        /* Space returns: Acquire works again, without a restart. */
        unfill(a);
        deadline = helper_now() + NOTICE_TIMEOUT;
        for (;;) {
                json_object *rep = CALL(c, LEASE_IF "Acquire", "{\"resource\":\"space-back\",\"detached\":true}");
                if (!reply_error(rep)) {
                        assert_granted(rep);
                        break;
                }
                assert_error(rep, LEASE_IF "StorageError");
                if (helper_now() > deadline)
                        fail_msg("Acquire still refused %.0fs after space returned", NOTICE_TIMEOUT);
                helper_sleep(0.1);
        }
        if (systemd && !notified(notify_fd, "disk space available again"))
                fail_msg("no STATUS= about the space coming back");
        if (!systemd)
                fprintf(stderr, "agend sent nothing to NOTIFY_SOCKET (built without libsystemd?): STATUS= not checked\n");
        close(notify_fd);
        char *log = agend_read_log(a);
        assert_non_null(log);
        /* Logged once for the episode, and its end once. */
        assert_int_equal(count_substr(log, "new leases are refused until space returns"), 1);
        assert_int_equal(count_substr(log, "disk space available again"), 1);
        free(log);

        /* Nothing granted was lost: after kill -9 every grant is restored. */
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c2 = OPEN(a);
        for (size_t i = 0; i < n_granted; i++)
                if (!find_lease(c2, granted[i].id))
                        fail_msg("lease %s (full-%d), granted on a full disk, is gone after kill -9", granted[i].id,
                                 granted[i].n);
        assert_non_null(find_lease(c2, held_id));
        holder_free(h);
}

/* Full, and no reserve left to release: the call whose commit fails gets no reply until
 * space returns, then it does, and its change is durable. */
static void test_disk_full_no_reserve(void **state) {
        Agend *a = *state;
        need_mounts();
        assert_int_equal(helper_mount_tmpfs(a->state_dir, TMPFS_SIZE, false), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        json_object *d = GRANT_LEASE(c, "{\"resource\":\"to-release\",\"detached\":true}");
        char d_id[64];
        snprintf(d_id, sizeof(d_id), "%s", jstr(d, "id"));

        /* Degraded first (so the Release below is what fails), then the reserve gone and
         * its space taken too. */
        fill(a);
        double deadline = helper_now() + NOTICE_TIMEOUT;
        while (!reply_error(CALL(c, LEASE_IF "Acquire", "{\"resource\":\"probe\",\"detached\":true}"))) {
                if (helper_now() > deadline)
                        fail_msg("no StorageError on a full disk");
                helper_sleep(0.05);
        }
        char p[256];
        snprintf(p, sizeof(p), "%s/agend.reserve", a->state_dir);
        (void) unlink(p);
        snprintf(p, sizeof(p), "%s/filler2", a->state_dir);
        assert_int_equal(helper_fill(p), 0);

        assert_int_equal(vconn_send(c, 0, LEASE_IF "Release", "{\"id\":\"%s\"}", d_id), 0);
        assert_silent(c, 1.5);

        assert_int_equal(unlink(p), 0);
        unfill(a);
        json_object *m = RECV(c, NOTICE_TIMEOUT);
        if (reply_error(m))
                fail_msg("the held Release failed: %s", jtext(m));
        assert_null(find_lease(c, d_id));
        assert_true(log_has(a, "holding the replies"));

        /* It was committed before it was answered. */
        assert_int_equal(agend_kill(a), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c2 = OPEN(a);
        assert_null(find_lease(c2, d_id));
}

static void test_start_on_full_disk(void **state) {
        Agend *a = *state;
        need_mounts();
        assert_int_equal(helper_mount_tmpfs(a->state_dir, TMPFS_SIZE, false), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        json_object *d = GRANT(c, "{\"resource\":\"detached\",\"detached\":true}");
        json_object *b = GRANT(c, "{\"resource\":\"bound\"}");
        char d_id[64], b_id[64], b_secret[128];
        snprintf(d_id, sizeof(d_id), "%s", jstr(d, "lease.id"));
        snprintf(b_id, sizeof(b_id), "%s", jstr(b, "lease.id"));
        snprintf(b_secret, sizeof(b_secret), "%s", jstr(b, "secret"));
        int64_t b_token = jint(b, "lease.token");
        int st = 0;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);

        fill(a);
        assert_true(helper_free_bytes(a->state_dir) < 4096);

        assert_int_equal(agend_start(a), 0);
        VConn *c2 = OPEN(a);
        json_object *l = find_lease(c2, d_id);
        assert_non_null(l);
        assert_string_equal(jstr(l, "state"), "held");
        l = find_lease(c2, b_id);
        assert_non_null(l);
        assert_string_equal(jstr(l, "state"), "reclaimable");
        /* The holder gets its lease back; nothing new is granted. */
        json_object *r = CALL_OK(c2, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", b_id,
                                 (long long) b_token, b_secret);
        assert_string_equal(jstr(r, "lease.state"), "held");
        CALL_ERR(c2, LEASE_IF "StorageError", LEASE_IF "Acquire", "{\"resource\":\"new\"}");
        CALL_OK(c2, LEASE_IF "Release", "{\"id\":\"%s\"}", d_id);
        assert_true(log_has(a, "at start"));

        unfill(a);
        double deadline = helper_now() + NOTICE_TIMEOUT;
        while (reply_error(CALL(c2, LEASE_IF "Acquire", "{\"resource\":\"new\",\"timeout\":0}"))) {
                if (helper_now() > deadline)
                        fail_msg("Acquire still refused %.0fs after space returned", NOTICE_TIMEOUT);
                helper_sleep(0.1);
        }
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* The hardest start: killed (-wal and -shm stay), then the disk filled to the last block
 * with no reserve left. A restart that needs no write must still restore and serve. */
static void test_start_on_full_disk_no_reserve(void **state) {
        Agend *a = *state;
        need_mounts();
        snprintf(a->grace, sizeof(a->grace), "600");
        assert_int_equal(helper_mount_tmpfs(a->state_dir, TMPFS_SIZE, false), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        json_object *d = GRANT(c, "{\"resource\":\"detached\",\"detached\":true}");
        json_object *b = GRANT(c, "{\"resource\":\"bound\"}");
        char d_id[64], b_id[64], b_secret[128];
        snprintf(d_id, sizeof(d_id), "%s", jstr(d, "lease.id"));
        snprintf(b_id, sizeof(b_id), "%s", jstr(b, "lease.id"));
        snprintf(b_secret, sizeof(b_secret), "%s", jstr(b, "secret"));
        int64_t b_token = jint(b, "lease.token");
        assert_int_equal(agend_kill(a), 0);

        char p[256];
        snprintf(p, sizeof(p), "%s/agend.reserve", a->state_dir);
        assert_int_equal(unlink(p), 0);
        fill(a);

        assert_int_equal(agend_start(a), 0);
        VConn *c2 = OPEN(a);
        json_object *l = find_lease(c2, d_id);
        assert_non_null(l);
        assert_string_equal(jstr(l, "state"), "held");
        l = find_lease(c2, b_id);
        assert_non_null(l);
        assert_string_equal(jstr(l, "state"), "reclaimable");
        CALL_OK(c2, LEASE_IF "Status", "{}");
        CALL_ERR(c2, LEASE_IF "StorageError", LEASE_IF "Acquire", "{\"resource\":\"new\"}");

        /* With space back, the holder reclaims and new leases are granted. */
        unfill(a);
        json_object *r = CALL_OK(c2, LEASE_IF "Reclaim", "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"%s\"}", b_id,
                                 (long long) b_token, b_secret);
        assert_string_equal(jstr(r, "lease.state"), "held");
        double deadline = helper_now() + NOTICE_TIMEOUT;
        while (reply_error(CALL(c2, LEASE_IF "Acquire", "{\"resource\":\"new\",\"timeout\":0}"))) {
                if (helper_now() > deadline)
                        fail_msg("Acquire still refused %.0fs after space returned", NOTICE_TIMEOUT);
                helper_sleep(0.1);
        }
        int st = 0;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* ---- defect 9: a read-only state file system ---- */

static void test_read_only(void **state) {
        Agend *a = *state;
        need_mounts();
        assert_int_equal(helper_mount_tmpfs(a->state_dir, TMPFS_SIZE, false), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        GRANT(c, "{\"resource\":\"ro\",\"detached\":true}");
        int st = 0;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_int_equal(helper_remount_ro(a->state_dir), 0);

        assert_int_equal(agend_spawn(a), 0);
        if (agend_wait_exit(a, HELPER_START_TIMEOUT, &st) < 0)
                fail_msg("agend started on a read-only state directory");
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
        char *log = agend_read_log(a);
        assert_non_null(log);
        const char *last = strstr(log, "---- test: starting agend");
        for (const char *p = last; p && (p = strstr(p + 1, "---- test: starting agend"));)
                last = p;
        if (!strstr(last, "read-only"))
                fail_msg("the refusal does not say the file system is read-only:\n%s", last);
        if (strstr(last, "move"))
                fail_msg("the refusal advises moving the database:\n%s", last);
        free(log);
}

/* ---- EIO on commit ---- */

static void eio(Agend *a, const char *ops, bool may_survive) {
        const char *shim = getenv("AGEND_FAULT_SHIM");
        if (!shim || !*shim)
                fail_msg("AGEND_FAULT_SHIM is not set");
        char trigger[256];
        snprintf(trigger, sizeof(trigger), "%s/fault", a->dir);
        /* For the daemon only (children inherit the environment): a sanitized agend must
         * accept a library before its runtime. */
        const char *asan = getenv("ASAN_OPTIONS");
        char *asan_saved = asan ? strdup(asan) : NULL;
        char asan_new[512];
        snprintf(asan_new, sizeof(asan_new), "%s%sverify_asan_link_order=0", asan ? asan : "", asan ? ":" : "");
        setenv("ASAN_OPTIONS", asan_new, 1);
        setenv("LD_PRELOAD", shim, 1);
        setenv("AGEND_FAULT_TRIGGER", trigger, 1);
        setenv("AGEND_FAULT_OPS", ops, 1);
        int r = agend_start(a);
        unsetenv("LD_PRELOAD");
        unsetenv("AGEND_FAULT_TRIGGER");
        unsetenv("AGEND_FAULT_OPS");
        if (asan_saved)
                setenv("ASAN_OPTIONS", asan_saved, 1);
        else
                unsetenv("ASAN_OPTIONS");
        free(asan_saved);
        assert_int_equal(r, 0);

        VConn *c = OPEN(a);
        json_object *kept = GRANT_LEASE(c, "{\"resource\":\"committed\",\"detached\":true}");
        char kept_id[64];
        snprintf(kept_id, sizeof(kept_id), "%s", jstr(kept, "id"));

        int fd = open(trigger, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        close(fd);

        /* The disk fails under this call's commit: no reply, the daemon stops. */
        VConn *x = OPEN(a);
        assert_int_equal(vconn_send(x, 0, LEASE_IF "Acquire", "{\"resource\":\"lost\",\"detached\":true}"), 0);
        json_object *m = NULL;
        r = vconn_recv(x, HELPER_START_TIMEOUT, &m);
        if (r != -ECONNRESET)
                fail_msg("expected the connection closed without a reply, got %s",
                         r < 0 ? strerror(-r) : jtext(m));
        int st = 0;
        assert_int_equal(agend_wait_exit(a, HELPER_START_TIMEOUT, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) != 0);
        assert_true(log_has(a, "cannot commit"));

        /* The next start (a good disk again) restores what was committed. */
        assert_int_equal(unlink(trigger), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c2 = OPEN(a);
        assert_non_null(find_lease(c2, kept_id));
        json_object *list = CALL_OK(c2, LEASE_IF "List", "{\"resource\":\"lost\"}");
        if (!may_survive) {
                /* The commit never reached the WAL. */
                assert_int_equal(json_object_array_length(jget(list, "leases")), 0);
                GRANT(c2, "{\"resource\":\"lost\",\"timeout\":0}");
        }
        /* Else the commit's frames are in the WAL and only their fsync failed: the
         * restart's WAL recovery may find them whole and keep the lease. That is the outcome
         * of a crash during a commit, which a caller without a reply must expect either way
         * (as with kill -9); what matters is that no reply claimed it. */
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* A write of the WAL fails (sync=normal: commits write, checkpoints sync). */
static void test_eio_write(void **state) {
        eio(*state, "write", false);
}

/* The fsync of a commit fails (sync=full): after a failed fsync the kernel may have
 * dropped the pages, so agend must not retry it. */
static void test_eio_sync(void **state) {
        Agend *a = *state;
        snprintf(a->sync, sizeof(a->sync), "full");
        eio(a, "sync", true);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_second_daemon_refused, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_modes, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_disk_full, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_disk_full_no_reserve, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_start_on_full_disk, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_start_on_full_disk_no_reserve, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_read_only, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_eio_write, setup_new, teardown_any),
                cmocka_unit_test_setup_teardown(test_eio_sync, setup_new, teardown_any),
        };
        int failed = cmocka_run_group_tests(tests, NULL, NULL);
        return failed ? failed : n_skipped ? 77 : 0;
}

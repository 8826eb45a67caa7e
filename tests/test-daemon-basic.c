/* SPDX-License-Identifier: MIT */
/* The real agend in raw varlink bytes: acquire/release, the lease object, the owner from
 * SO_PEERCRED, org.varlink.service, Status, Watch, History, Revoke. Each test starts its own
 * agend on a temporary socket and state directory (helper-agend). */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "helper-agend.h"

static char *read_text(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f)
                return NULL;
        char *buf = NULL;
        size_t size = 0;
        ssize_t n = getdelim(&buf, &size, '\0', f);
        fclose(f);
        if (n < 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

/* /proc/PID/comm without the newline. */
static void read_comm(pid_t pid, char *buf, size_t size) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/comm", (int) pid);
        _cleanup_free_ char *t = read_text(path);
        assert_non_null(t);
        t[strcspn(t, "\n")] = 0;
        snprintf(buf, size, "%s", t);
}

static void test_acquire_release(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);

        uint64_t before = helper_realtime_usec();
        json_object *p = assert_granted(
                CALL(c, LEASE_IF "Acquire", "{\"resource\":\"gpu\",\"description\":\"training run\"}"));
        uint64_t after = helper_realtime_usec();
        json_object *l = jget(p, "lease");
        const char *id = jstr(l, "id"), *secret = jstr(p, "secret");
        assert_string_equal(jstr(l, "resource"), "gpu");
        assert_int_equal(jint(l, "units"), 1);
        assert_false(json_object_get_boolean(jget(l, "exclusive")));
        assert_string_equal(jstr(l, "description"), "training run");
        assert_false(json_object_get_boolean(jget(l, "detached")));
        assert_string_equal(jstr(l, "state"), "held");
        /* created: µs since the epoch, taken while the call ran (1 s of slack for clocks). */
        assert_true((uint64_t) jint(l, "created") + 1000000 >= before);
        assert_true((uint64_t) jint(l, "created") <= after + 1000000);
        /* No TTL asked: no ttl and no deadline (absent or null). */
        assert_null(jget(l, "ttl"));
        assert_null(jget(l, "deadline"));
        int64_t token1 = jint(l, "token");

        /* List shows it, with the same fields, and never the secret. */
        json_object *list = CALL_OK(c, LEASE_IF "List", "{}");
        assert_int_equal(json_object_array_length(jget(list, "leases")), 1);
        assert_int_equal(json_object_array_length(jget(list, "waiters")), 0);
        json_object *ll = jget(list, "leases.0");
        assert_lease_shape(ll);
        assert_string_equal(jstr(ll, "id"), id);
        assert_int_equal(jint(ll, "token"), token1);
        assert_string_equal(jstr(ll, "state"), "held");
        assert_null(strstr(jtext(list), secret));
        assert_null(strstr(jtext(list), "\"secret\""));

        /* List(resource) filters. */
        json_object *other = CALL_OK(c, LEASE_IF "List", "{\"resource\":\"cpu\"}");
        assert_int_equal(json_object_array_length(jget(other, "leases")), 0);

        /* Resources: created on first use with capacity 1, one unit used. */
        json_object *res = CALL_OK(c, LEASE_IF "Resources", "{}");
        json_object *gpu = NULL;
        for (size_t i = 0; i < json_object_array_length(jget(res, "resources")); i++) {
                json_object *r = json_object_array_get_idx(jget(res, "resources"), i);
                if (jstr(r, "name") && strcmp(jstr(r, "name"), "gpu") == 0)
                        gpu = r;
        }
        assert_non_null(gpu);
        assert_int_equal(jint(gpu, "capacity"), 1);
        assert_int_equal(jint(gpu, "used"), 1);
        assert_int_equal(jint(gpu, "leases"), 1);
        assert_int_equal(jint(gpu, "waiters"), 0);
        assert_false(json_object_get_boolean(jget(gpu, "declared")));

        /* Release: an empty reply, then the lease is gone. */
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", id);
        list = CALL_OK(c, LEASE_IF "List", "{}");
        assert_int_equal(json_object_array_length(jget(list, "leases")), 0);
        json_object *e = CALL_ERR(c, LEASE_IF "NoSuchLease", LEASE_IF "Release", "{\"id\":\"%s\"}", id);
        assert_string_equal(jstr(e, "id"), id);

        /* The resource is free again, and the next grant has a greater token. */
        json_object *p2 = GRANT(c, "{\"resource\":\"gpu\"}");
        assert_true(jint(p2, "lease.token") > token1);
        assert_string_not_equal(jstr(p2, "lease.id"), id);
        /* description defaults to a string (possibly empty), never absent. */
        assert_non_null(jstr(p2, "lease.description"));
}

/* The owner comes from SO_PEERCRED, whatever the client says. */
static void test_owner_from_kernel(void **state) {
        Agend *a = *state;
        char comm[32];
        read_comm(getpid(), comm, sizeof(comm));

        /* A client that claims to be someone else: refused as an unknown parameter, or
         * ignored; never believed. */
        VConn *c = OPEN(a);
        json_object *reply = CALL(c, LEASE_IF "Acquire",
                                  "{\"resource\":\"liar\",\"owner\":{\"uid\":4242,\"gid\":4242,\"pid\":1,"
                                  "\"comm\":\"systemd\"},\"uid\":4242,\"pid\":1}");
        if (reply_error(reply))
                assert_error(reply, "org.varlink.service.InvalidParameter");
        else {
                json_object *l = jget(assert_granted(reply), "lease");
                assert_int_equal(jint(l, "owner.pid"), getpid());
                assert_int_equal(jint(l, "owner.uid"), getuid());
                assert_int_equal(jint(l, "owner.gid"), getgid());
                assert_string_equal(jstr(l, "owner.comm"), comm);
        }

        json_object *l = GRANT_LEASE(c, "{\"resource\":\"mine\"}");
        assert_int_equal(jint(l, "owner.pid"), getpid());
        assert_int_equal(jint(l, "owner.uid"), getuid());
        assert_int_equal(jint(l, "owner.gid"), getgid());
        assert_string_equal(jstr(l, "owner.comm"), comm);

        /* Another process: its own pid, seen in its grant and in everyone's List. */
        Holder *h = NULL;
        assert_int_equal(holder_start(a, "{\"resource\":\"child\"}", HELPER_REPLY_TIMEOUT, &h), 0);
        json_object *hl = jget(assert_granted(h->reply), "lease");
        assert_int_equal(jint(hl, "owner.pid"), h->pid);
        assert_int_equal(jint(hl, "owner.uid"), getuid());
        json_object *list = CALL_OK(c, LEASE_IF "List", "{\"resource\":\"child\"}");
        assert_int_equal(json_object_array_length(jget(list, "leases")), 1);
        assert_int_equal(jint(list, "leases.0.owner.pid"), h->pid);
}

/* Runs as uid/gid 65534 (when the test runs as root): its lease names it. */
static const char *peer_socket;
static int acquire_as_nobody(void *userdata) {
        VConn *c = NULL;
        json_object *reply = NULL;
        if (vconn_open(peer_socket, &c) < 0 ||
            vconn_call(c, &reply, LEASE_IF "Acquire", "{\"resource\":\"nobody\"}") < 0)
                return 10;
        if (reply_error(reply)) {
                fprintf(stderr, "acquire as %u: %s\n", getuid(), jtext(reply));
                return 11;
        }
        json_object *l = jget(reply_params(reply), "lease");
        if (jint(l, "owner.uid") != getuid() || jint(l, "owner.gid") != getgid() ||
            jint(l, "owner.pid") != getpid()) {
                fprintf(stderr, "owner is not uid %u gid %u pid %d: %s\n", getuid(), getgid(), getpid(),
                        jtext(reply));
                return 12;
        }
        return 0;
}

static void test_owner_other_uid(void **state) {
        Agend *a = *state;
        peer_socket = a->socket;
        int code = -1;
        assert_int_equal(helper_run_as(65534, 65534, acquire_as_nobody, NULL, 10., &code), 0);
        assert_int_equal(code, 0);
}

static void test_varlink_service(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);

        json_object *info = CALL_OK(c, "org.varlink.service.GetInfo", NULL);
        assert_non_null(jstr(info, "vendor"));
        assert_non_null(jstr(info, "product"));
        assert_non_null(jstr(info, "url"));
        const char *version = getenv("AGEND_VERSION");
        assert_non_null(jstr(info, "version"));
        if (version)
                assert_string_equal(jstr(info, "version"), version);
        json_object *ifs = jget(info, "interfaces");
        assert_true(json_object_is_type(ifs, json_type_array));
        bool lease = false, service = false;
        for (size_t i = 0; i < json_object_array_length(ifs); i++) {
                const char *n = json_object_get_string(json_object_array_get_idx(ifs, i));
                lease |= n && strcmp(n, "io.agend.Lease") == 0;
                service |= n && strcmp(n, "org.varlink.service") == 0;
        }
        assert_true(lease);
        assert_true(service);

        /* The description is the one in docs/: every type, method and error it declares. */
        json_object *d = CALL_OK(c, "org.varlink.service.GetInterfaceDescription",
                                 "{\"interface\":\"io.agend.Lease\"}");
        const char *desc = jstr(d, "description");
        assert_non_null(desc);
        assert_non_null(strstr(desc, "interface io.agend.Lease"));
        const char *path = getenv("AGEND_INTERFACE_FILE");
        if (path) {
                _cleanup_free_ char *file = read_text(path);
                assert_non_null(file);
                unsigned n = 0;
                for (char *line = strtok(file, "\n"); line; line = strtok(NULL, "\n")) {
                        line += strspn(line, " \t");
                        if (strncmp(line, "method ", 7) && strncmp(line, "error ", 6) &&
                            strncmp(line, "type ", 5))
                                continue;
                        char decl[128];
                        size_t k = strcspn(line, "( ");
                        k += strcspn(line + k + 1, "( ") + 1;
                        snprintf(decl, sizeof(decl), "%.*s", (int) k, line);
                        if (!strstr(desc, decl))
                                fail_msg("interface description lacks \"%s\"", decl);
                        n++;
                }
                assert_true(n >= 20);
        }

        json_object *e = CALL_ERR(c, "org.varlink.service.InterfaceNotFound",
                                  "org.varlink.service.GetInterfaceDescription",
                                  "{\"interface\":\"com.example.Nope\"}");
        assert_string_equal(jstr(e, "interface"), "com.example.Nope");

        /* The connection still serves calls after an error. */
        CALL_OK(c, "org.varlink.service.GetInfo", "{}");
}

static void test_status(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a), *w = OPEN(a), *idle = OPEN(a);
        (void) idle;

        json_object *s = CALL_OK(c, LEASE_IF "Status", "{}");
        const char *version = getenv("AGEND_VERSION");
        assert_non_null(jstr(s, "version"));
        if (version)
                assert_string_equal(jstr(s, "version"), version);
        double uptime = jdouble(s, "uptime");
        assert_false(isnan(uptime));
        assert_true(uptime >= 0 && uptime < 120);

        /* boot_id: the kernel's, with or without dashes. */
        _cleanup_free_ char *boot = read_text("/proc/sys/kernel/random/boot_id");
        assert_non_null(boot);
        char want[64] = "", got[64] = "";
        for (size_t i = 0, k = 0; boot[i] && k < sizeof(want) - 1; i++)
                if (boot[i] != '-' && boot[i] != '\n')
                        want[k++] = boot[i];
        assert_non_null(jstr(s, "boot_id"));
        for (size_t i = 0, k = 0; jstr(s, "boot_id")[i] && k < sizeof(got) - 1; i++)
                if (jstr(s, "boot_id")[i] != '-')
                        got[k++] = jstr(s, "boot_id")[i];
        assert_string_equal(got, want);

        assert_int_equal(jint(s, "leases"), 0);
        assert_int_equal(jint(s, "waiters"), 0);
        assert_true(jis(s, "connections", json_type_int));
        assert_true(jint(s, "commits") >= 0);
        assert_true(jint(s, "database_size") > 0);
        assert_string_equal(jstr(s, "sync"), "normal");
        int64_t commits = jint(s, "commits");

        /* Two leases and a waiter, counted; each grant was committed. */
        GRANT(c, "{\"resource\":\"s1\"}");
        GRANT(c, "{\"resource\":\"s2\"}");
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"s1\"}"), 0);
        assert_queued(RECV(w, HELPER_REPLY_TIMEOUT), 1);
        helper_sleep(0.05);
        json_object *s2 = CALL_OK(c, LEASE_IF "Status", "{}");
        assert_int_equal(jint(s2, "leases"), 2);
        assert_int_equal(jint(s2, "waiters"), 1);
        assert_true(jint(s2, "commits") > commits);
        assert_true(jdouble(s2, "uptime") >= uptime + 0.04);
        /* Our three connections (a connect completes before the daemon accepts it, so give
         * it a moment to get to the last one). */
        double deadline = helper_now() + 2.0;
        while (jint(s2, "connections") < 3) {
                if (helper_now() > deadline)
                        fail_msg("Status counts %lld connections; 3 are open",
                                 (long long) jint(s2, "connections"));
                helper_sleep(0.01);
                s2 = CALL_OK(c, LEASE_IF "Status", "{}");
        }
}

static void test_status_sync_full(void **state) {
        Agend *a = *state;
        int st = -1;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        snprintf(a->sync, sizeof(a->sync), "full");
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        assert_string_equal(jstr(CALL_OK(c, LEASE_IF "Status", "{}"), "sync"), "full");
        /* And it grants as usual. */
        GRANT(c, "{\"resource\":\"durable\"}");
}

/* Reads Watch events until one of the type for the lease arrives (skipping others the
 * daemon may send, like queued); fails on events of other resources when filtered. */
static json_object *watch_until(VConn *w, const char *type, const char *lease, const char *only_resource) {
        double deadline = helper_now() + HELPER_REPLY_TIMEOUT;
        for (;;) {
                json_object *m = RECV(w, MAX(deadline - helper_now(), 0.01));
                if (reply_error(m))
                        fail_msg("Watch ended with %s", jtext(m));
                assert_true(reply_continues(m));
                json_object *ev = jget(reply_params(m), "event");
                if (!ev)
                        fail_msg("Watch sent a null event after its first reply: %s", jtext(m));
                assert_non_null(jstr(ev, "type"));
                assert_true(jis(ev, "time", json_type_int));
                if (only_resource && (!jstr(ev, "resource") || strcmp(jstr(ev, "resource"), only_resource)))
                        fail_msg("Watch(%s) sent an event of another resource: %s", only_resource, jtext(m));
                if (strcmp(jstr(ev, "type"), type) == 0 && jstr(ev, "lease") &&
                    strcmp(jstr(ev, "lease"), lease) == 0)
                        return ev;
        }
}

static void test_watch(void **state) {
        Agend *a = *state;
        VConn *w = OPEN(a), *wr = OPEN(a), *c = OPEN(a);

        /* In effect once the first reply, {"event": null}, is sent. */
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Watch", "{}"), 0);
        json_object *first = RECV(w, HELPER_REPLY_TIMEOUT);
        assert_null(reply_error(first));
        assert_true(reply_continues(first));
        assert_true(jis(reply_params(first), "event", json_type_null));
        assert_int_equal(vconn_send(wr, VL_MORE, LEASE_IF "Watch", "{\"resource\":\"watched\"}"), 0);
        first = RECV(wr, HELPER_REPLY_TIMEOUT);
        assert_true(reply_continues(first));
        assert_true(jis(reply_params(first), "event", json_type_null));

        /* A grant and a release elsewhere: both watchers see them, in order. */
        json_object *other = GRANT_LEASE(c, "{\"resource\":\"unwatched\"}");
        json_object *l = GRANT_LEASE(c, "{\"resource\":\"watched\"}");
        const char *id = jstr(l, "id");
        json_object *ev = watch_until(w, "granted", id, NULL);
        assert_string_equal(jstr(ev, "resource"), "watched");
        assert_int_equal(jint(ev, "token"), jint(l, "token"));
        assert_int_equal(jint(ev, "owner.pid"), getpid());
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", id);
        ev = watch_until(w, "released", id, NULL);
        assert_string_equal(jstr(ev, "resource"), "watched");
        assert_int_equal(jint(ev, "token"), jint(l, "token"));

        /* The filtered watcher saw only its resource (watch_until fails otherwise). */
        watch_until(wr, "granted", id, "watched");
        watch_until(wr, "released", id, "watched");
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", jstr(other, "id"));
        assert_silent(wr, 0.2);
}

static void test_watch_lease(void **state) {
        Agend *a = *state;
        VConn *w = OPEN(a), *c = OPEN(a);
        json_object *l = GRANT_LEASE(c, "{\"resource\":\"one\"}");
        const char *id = jstr(l, "id");

        /* First reply: null, or the lease's current state. */
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Watch", "{\"lease\":\"%s\"}", id), 0);
        json_object *first = RECV(w, HELPER_REPLY_TIMEOUT);
        assert_null(reply_error(first));
        assert_true(reply_continues(first));
        json_object *ev = jget(reply_params(first), "event");
        if (ev)
                assert_string_equal(jstr(ev, "lease"), id);

        /* The release ends the call: its last reply is the released event, without continues. */
        CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", id);
        json_object *last = NULL;
        double deadline = helper_now() + HELPER_REPLY_TIMEOUT;
        do {
                last = RECV(w, MAX(deadline - helper_now(), 0.01));
                assert_null(reply_error(last));
                assert_string_equal(jstr(reply_params(last), "event.lease"), id);
        } while (reply_continues(last));
        assert_string_equal(jstr(reply_params(last), "event.type"), "released");

        /* The call has ended: the connection answers the next call. */
        CALL_OK(w, LEASE_IF "Status", "{}");
        /* An ended lease: NoSuchLease. */
        CALL_ERR(w, LEASE_IF "NoSuchLease", LEASE_IF "Watch", "{\"lease\":\"%s\"}", id);
}

static void test_history(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        char ids[3][128];
        int64_t tokens[3];
        for (int i = 0; i < 3; i++) {
                json_object *l = GRANT_LEASE(c, "{\"resource\":\"h\"}");
                snprintf(ids[i], sizeof(ids[i]), "%s", jstr(l, "id"));
                tokens[i] = jint(l, "token");
                CALL_OK(c, LEASE_IF "Acquire", "{\"resource\":\"noise%d\"}", i);
                CALL_OK(c, LEASE_IF "Release", "{\"id\":\"%s\"}", ids[i]);
        }

        /* Oldest first: granted/released of lease 0, then 1, then 2, times not going back. */
        json_object *h = CALL_OK(c, LEASE_IF "History", "{\"resource\":\"h\"}");
        json_object *evs = jget(h, "events");
        assert_true(json_object_is_type(evs, json_type_array));
        assert_int_equal(json_object_array_length(evs), 6);
        int64_t t = 0;
        for (int i = 0; i < 6; i++) {
                json_object *ev = json_object_array_get_idx(evs, (size_t) i);
                assert_string_equal(jstr(ev, "type"), i % 2 ? "released" : "granted");
                assert_string_equal(jstr(ev, "lease"), ids[i / 2]);
                assert_string_equal(jstr(ev, "resource"), "h");
                assert_int_equal(jint(ev, "token"), tokens[i / 2]);
                assert_true(jint(ev, "time") >= t);
                t = jint(ev, "time");
        }

        /* limit: the newest events, still oldest first. */
        h = CALL_OK(c, LEASE_IF "History", "{\"resource\":\"h\",\"limit\":2}");
        evs = jget(h, "events");
        assert_int_equal(json_object_array_length(evs), 2);
        assert_string_equal(jstr(evs, "0.type"), "granted");
        assert_string_equal(jstr(evs, "0.lease"), ids[2]);
        assert_string_equal(jstr(evs, "1.type"), "released");
        assert_string_equal(jstr(evs, "1.lease"), ids[2]);

        /* Without a resource: every resource, still in time order. */
        h = CALL_OK(c, LEASE_IF "History", "{}");
        evs = jget(h, "events");
        assert_true(json_object_array_length(evs) >= 9);
        t = 0;
        for (size_t i = 0; i < json_object_array_length(evs); i++) {
                assert_true(jint(json_object_array_get_idx(evs, i), "time") >= t);
                t = jint(json_object_array_get_idx(evs, i), "time");
        }
        h = CALL_OK(c, LEASE_IF "History", "{\"limit\":1}");
        assert_int_equal(json_object_array_length(jget(h, "events")), 1);
}

/* Root revokes a lease it does not hold; the holder loses it, the history says why. */
static void test_revoke(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a), *admin = OPEN(a), *w = OPEN(a);
        json_object *l = GRANT_LEASE(c, "{\"resource\":\"rv\"}");
        const char *id = jstr(l, "id");
        if (geteuid() != 0) {
                /* Not root and no config allows it: not for us to revoke. */
                CALL_ERR(admin, LEASE_IF "PermissionDenied", LEASE_IF "Revoke", "{\"id\":\"%s\"}", id);
                return;
        }
        assert_int_equal(vconn_send(w, VL_MORE, LEASE_IF "Acquire", "{\"resource\":\"rv\"}"), 0);
        assert_queued(RECV(w, HELPER_REPLY_TIMEOUT), 1);

        CALL_OK(admin, LEASE_IF "Revoke", "{\"id\":\"%s\",\"reason\":\"maintenance\"}", id);
        json_object *g = assert_granted(RECV(w, HELPER_REPLY_TIMEOUT));
        assert_true(jint(g, "lease.token") > jint(l, "token"));
        CALL_ERR(c, LEASE_IF "NoSuchLease", LEASE_IF "Release", "{\"id\":\"%s\"}", id);

        json_object *evs = jget(CALL_OK(admin, LEASE_IF "History", "{\"resource\":\"rv\"}"), "events");
        bool seen = false;
        for (size_t i = 0; i < json_object_array_length(evs); i++) {
                json_object *ev = json_object_array_get_idx(evs, i);
                if (strcmp(jstr(ev, "type"), "revoked") == 0 && strcmp(jstr(ev, "lease"), id) == 0) {
                        assert_non_null(jstr(ev, "reason"));
                        assert_non_null(strstr(jstr(ev, "reason"), "maintenance"));
                        seen = true;
                }
        }
        assert_true(seen);
        CALL_ERR(admin, LEASE_IF "NoSuchLease", LEASE_IF "Revoke", "{\"id\":\"%s\"}", id);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_acquire_release, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_owner_from_kernel, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_owner_other_uid, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_varlink_service, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_status, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_status_sync_full, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_watch, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_watch_lease, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_history, helper_setup, helper_teardown),
                cmocka_unit_test_setup_teardown(test_revoke, helper_setup, helper_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* Every error reply of agend against the interface that declares it: the daemon is driven
 * into each error it can send, and each reply's parameters are checked against the
 * `error` lines of docs/io.agend.Lease.varlink (for io.agend.Lease.*) or of the
 * org.varlink.service description agend serves (for org.varlink.service.*): no field that
 * is not declared, every field that is not optional present, strings where strings are
 * declared. A field added to a reply without declaring it fails here. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "helper-agend.h"

/* One declared field of an error. */
typedef struct Field {
        char name[64];
        char type[64];
        bool optional;
} Field;

typedef struct ErrorDecl {
        char name[300];         /* full: interface.Name */
        Field fields[8];
        size_t n_fields;
} ErrorDecl;

static ErrorDecl decls[64];
static size_t n_decls;
static bool seen[64];

/* Parses the `error Name (a: string, b: ?int)` lines of an interface description. */
static void parse_errors(const char *text) {
        char iface[128] = "";
        const char *p = text;
        while (*p) {
                const char *eol = strchr(p, '\n');
                size_t n = eol ? (size_t) (eol - p) : strlen(p);
                char line[1024];
                snprintf(line, sizeof(line), "%.*s", (int) MIN(n, sizeof(line) - 1), p);
                char *l = line;
                while (isspace((unsigned char) *l))
                        l++;
                if (strncmp(l, "interface ", 10) == 0)
                        snprintf(iface, sizeof(iface), "%s", l + 10);
                else if (strncmp(l, "error ", 6) == 0) {
                        assert_true(n_decls < ELEMENTSOF(decls));
                        ErrorDecl *d = &decls[n_decls++];
                        *d = (ErrorDecl) {};
                        char *open = strchr(l, '('), *close = strrchr(l, ')');
                        if (!open || !close)
                                fail_msg("an error line that is not on one line: %s", l);
                        *open = 0;
                        char *name = l + 6;
                        while (*name == ' ')
                                name++;
                        char *e = name + strlen(name);
                        while (e > name && e[-1] == ' ')
                                *--e = 0;
                        snprintf(d->name, sizeof(d->name), "%s.%s", iface, name);
                        *close = 0;
                        char *save = NULL;
                        for (char *f = strtok_r(open + 1, ",", &save); f; f = strtok_r(NULL, ",", &save)) {
                                char fname[64], ftype[64];
                                if (sscanf(f, " %63[A-Za-z0-9_] : %63s", fname, ftype) != 2)
                                        continue;
                                Field *fd = &d->fields[d->n_fields++];
                                snprintf(fd->name, sizeof(fd->name), "%s", fname);
                                fd->optional = ftype[0] == '?';
                                snprintf(fd->type, sizeof(fd->type), "%s", ftype + fd->optional);
                        }
                }
                p += n + (eol ? 1 : 0);
        }
}

static char *read_text(const char *path) {
        FILE *f = fopen(path, "re");
        if (!f)
                return NULL;
        char *buf = NULL;
        size_t size = 0;
        if (getdelim(&buf, &size, '\0', f) < 0) {
                free(buf);
                buf = NULL;
        }
        fclose(f);
        return buf;
}

/* Checks one error reply against its declaration; counts it as seen. */
static void check_reply(json_object *reply, const char *expected) {
        const char *name = reply_error(reply);
        if (!name || strcmp(name, expected) != 0)
                fail_msg("expected error %s, got %s", expected, jtext(reply));
        ErrorDecl *d = NULL;
        for (size_t i = 0; i < n_decls; i++)
                if (strcmp(decls[i].name, name) == 0) {
                        d = &decls[i];
                        seen[i] = true;
                }
        if (!d)
                fail_msg("error %s is sent but not declared: %s", name, jtext(reply));
        json_object *p = reply_params(reply);
        if (p && !json_object_is_type(p, json_type_object))
                fail_msg("parameters of %s are not an object: %s", name, jtext(reply));
        if (p) {
                json_object_object_foreach(p, key, value) {
                        Field *f = NULL;
                        for (size_t i = 0; i < d->n_fields; i++)
                                if (strcmp(d->fields[i].name, key) == 0)
                                        f = &d->fields[i];
                        if (!f)
                                fail_msg("%s sends field '%s', which the interface does not declare: %s", name, key,
                                         jtext(reply));
                        if (strcmp(f->type, "string") == 0 && !json_object_is_type(value, json_type_string))
                                fail_msg("%s.%s is declared a string: %s", name, key, jtext(reply));
                }
        }
        for (size_t i = 0; i < d->n_fields; i++)
                if (!d->fields[i].optional && !jhas(p, d->fields[i].name))
                        fail_msg("%s lacks its required field '%s': %s", name, d->fields[i].name, jtext(reply));
}

#define EXPECT(c, error, method, ...) check_reply(CALL(c, method, __VA_ARGS__), error)

static int setup(void **state) {
        Agend *a = NULL;
        if (agend_new(&a) < 0) {
                helper_cleanup();
                return -1;
        }
        /* Only declared resources; one of them for root only; one lease per user. */
        FILE *f = fopen(a->config, "we");
        if (!f)
                return -1;
        fprintf(f, "[Daemon]\nAllowUndeclared=no\nMaxLeasesPerUser=1\nMaxWaitersPerUser=1\n\n"
                   "[Resource]\nName=gpu\nCapacity=1\n\n"
                   "[Resource]\nName=pool\nCapacity=4\n\n"
                   "[Resource]\nName=rootonly\nCapacity=1\nAllowUsers=root\n\n");
        fclose(f);
        if (agend_start(a) < 0) {
                fprintf(stderr, "setup: agend did not start\n");
                helper_cleanup();
                return -1;
        }
        *state = a;

        n_decls = 0;
        memset(seen, 0, sizeof(seen));
        const char *idl = getenv("AGEND_INTERFACE_FILE");
        if (!idl || !*idl)
                return -1;
        _cleanup_free_ char *text = read_text(idl);
        if (!text)
                return -1;
        parse_errors(text);
        return 0;
}

static int teardown(void **state) {
        return helper_teardown(state);
}

/* The interface agend serves is the file: a reply checked against one is checked against
 * both. */
static void test_served_interface_is_the_file(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        json_object *p = CALL_OK(c, "org.varlink.service.GetInterfaceDescription", "{\"interface\":\"io.agend.Lease\"}");
        _cleanup_free_ char *text = read_text(getenv("AGEND_INTERFACE_FILE"));
        assert_non_null(text);
        assert_string_equal(jstr(p, "description"), text);
        /* Declared io.agend.Lease errors, all parsed. */
        size_t n = 0;
        for (size_t i = 0; i < n_decls; i++)
                n += strncmp(decls[i].name, "io.agend.Lease.", 15) == 0;
        assert_int_equal(n, 7);
}

/* A child under another uid makes calls and writes the replies, NUL-separated, to a pipe. */
typedef struct AsUser {
        const Agend *a;
        const char *id;         /* root's lease */
        char path[200];         /* mode 0666: helper_run_as() closes inherited fds */
        int fd;
} AsUser;

static void send_reply(int fd, json_object *reply) {
        const char *t = reply ? json_object_to_json_string_ext(reply, JSON_C_TO_STRING_PLAIN) : "null";
        (void) !write(fd, t, strlen(t) + 1);
}

static int errors_as_nobody(void *userdata) {
        AsUser *u = userdata;
        VConn *c = NULL, *c2 = NULL;
        json_object *r = NULL;
        u->fd = open(u->path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (u->fd < 0)
                return 9;
        if (vconn_open_agend(u->a, &c) < 0 || vconn_open_agend(u->a, &c2) < 0)
                return 1;
        /* PermissionDenied with resource: a resource for root only. */
        if (vconn_call(c, &r, LEASE_IF "Acquire", "{\"resource\":\"rootonly\",\"timeout\":0}") < 0)
                return 2;
        send_reply(u->fd, r);
        /* PermissionDenied with id: revoking needs root. */
        if (vconn_call(c, &r, LEASE_IF "Revoke", "{\"id\":\"0000000000000000\",\"reason\":\"x\"}") < 0)
                return 3;
        send_reply(u->fd, r);
        /* PermissionDenied with id: another user's lease, without or with a wrong secret. */
        if (vconn_call(c, &r, LEASE_IF "Release", "{\"id\":\"%s\"}", u->id) < 0)
                return 6;
        send_reply(u->fd, r);
        if (vconn_call(c, &r, LEASE_IF "Renew", "{\"id\":\"%s\",\"secret\":\"wrong\"}", u->id) < 0)
                return 7;
        send_reply(u->fd, r);
        /* LimitExceeded: one lease per user. */
        if (vconn_call(c, &r, LEASE_IF "Acquire", "{\"resource\":\"pool\"}") < 0)
                return 4;
        if (vconn_call(c2, &r, LEASE_IF "Acquire", "{\"resource\":\"pool\"}") < 0)
                return 5;
        send_reply(u->fd, r);
        return 0;
}

static void test_error_replies(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a), *holder = OPEN(a), *other = OPEN(a);

        json_object *g = GRANT(holder, "{\"resource\":\"gpu\"}");
        const char *id = jstr(g, "lease.id");
        int64_t token = jint(g, "lease.token");

        /* io.agend.Lease */
        EXPECT(c, LEASE_IF "NoSuchLease", LEASE_IF "Release", "{\"id\":\"0000000000000000\"}");
        EXPECT(c, LEASE_IF "NoSuchLease", LEASE_IF "Renew", "{\"id\":\"0000000000000000\"}");
        EXPECT(c, LEASE_IF "NoSuchLease", LEASE_IF "Revoke", "{\"id\":\"0000000000000000\",\"reason\":\"x\"}");
        EXPECT(c, LEASE_IF "NoSuchLease", LEASE_IF "Reclaim",
               "{\"id\":\"0000000000000000\",\"token\":1,\"secret\":\"x\"}");
        EXPECT(c, LEASE_IF "NoSuchResource", LEASE_IF "Acquire", "{\"resource\":\"undeclared\"}");
        EXPECT(c, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"gpu\",\"timeout\":0}");
        EXPECT(c, LEASE_IF "Timeout", LEASE_IF "Acquire", "{\"resource\":\"gpu\",\"timeout\":0.05}");
        EXPECT(other, LEASE_IF "PermissionDenied", LEASE_IF "Reclaim",
               "{\"id\":\"%s\",\"token\":%lld,\"secret\":\"wrong\"}", id, (long long) token);
        EXPECT(c, "io.agend.Lease.NoSuchLease", LEASE_IF "Watch", "{\"lease\":\"0000000000000000\"}");

        /* org.varlink.service */
        EXPECT(c, "org.varlink.service.InvalidParameter", LEASE_IF "Acquire", "{\"resource\":5}");
        EXPECT(c, "org.varlink.service.InvalidParameter", LEASE_IF "Acquire", "{\"resource\":\"gpu\",\"bogus\":1}");
        EXPECT(c, "org.varlink.service.InvalidParameter", LEASE_IF "Check", "{\"resource\":\"gpu\"}");
        EXPECT(c, "org.varlink.service.MethodNotFound", LEASE_IF "Frobnicate", NULL);
        EXPECT(c, "org.varlink.service.InterfaceNotFound", "com.example.Nothing.Do", NULL);
        EXPECT(c, "org.varlink.service.InterfaceNotFound", "org.varlink.service.GetInterfaceDescription",
               "{\"interface\":\"com.example.Nothing\"}");
        EXPECT(c, "org.varlink.service.ExpectedMore", LEASE_IF "Watch", NULL);

        /* Under another uid: PermissionDenied for a resource, and LimitExceeded. */
        if (geteuid() == 0) {
                AsUser u = { .a = a, .id = id, .fd = -1 };
                snprintf(u.path, sizeof(u.path), "%s/replies", a->dir);
                int fd = open(u.path, O_RDONLY | O_CREAT | O_CLOEXEC, 0666);
                assert_true(fd >= 0);
                assert_int_equal(fchmod(fd, 0666), 0);
                int code = -1;
                assert_int_equal(helper_run_as(65534, 65534, errors_as_nobody, &u, 10.0, &code), 0);
                assert_int_equal(code, 0);
                char buf[8192];
                size_t len = 0;
                ssize_t k;
                while ((k = read(fd, buf + len, sizeof(buf) - 1 - len)) > 0)
                        len += (size_t) k;
                close(fd);
                buf[len] = 0;
                const char *expected[] = { LEASE_IF "PermissionDenied", LEASE_IF "PermissionDenied",
                                           LEASE_IF "PermissionDenied", LEASE_IF "PermissionDenied",
                                           LEASE_IF "LimitExceeded" };
                const char *p = buf;
                for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                        assert_true(p < buf + len);
                        check_reply(helper_pool_add(json_tokener_parse(p)), expected[i]);
                        p += strlen(p) + 1;
                }
        }

        /* ProtocolError last: it closes the connection. */
        VConn *bad = OPEN(a);
        assert_int_equal(vconn_send_raw(bad, "{not json", 10), 0);
        check_reply(RECV(bad, HELPER_REPLY_TIMEOUT), LEASE_IF "ProtocolError");

        /* Every declared io.agend.Lease error was driven (root only: LimitExceeded). A full
         * disk needs a mount of its own: test-daemon-storage drives StorageError and checks
         * its reason. */
        for (size_t i = 0; i < n_decls; i++)
                if (strncmp(decls[i].name, "io.agend.Lease.", 15) == 0 && !seen[i] &&
                    strcmp(decls[i].name, LEASE_IF "StorageError") != 0 &&
                    (geteuid() == 0 || strcmp(decls[i].name, LEASE_IF "LimitExceeded") != 0))
                        fail_msg("error %s is declared but the test never drove agend into it", decls[i].name);
}

/* The org.varlink.service errors as agend describes them, parsed like the file. */
static void test_service_errors_declared(void **state) {
        Agend *a = *state;
        VConn *c = OPEN(a);
        json_object *p = CALL_OK(c, "org.varlink.service.GetInterfaceDescription",
                                 "{\"interface\":\"org.varlink.service\"}");
        parse_errors(jstr(p, "description"));
        test_error_replies(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_served_interface_is_the_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_service_errors_declared, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

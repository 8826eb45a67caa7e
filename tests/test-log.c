/* SPDX-License-Identifier: MIT */
/* The journal entries of lease events (daemon/log.c), built without a journal: the fields
 * each event carries (REASON=, who revoked), and the MESSAGE_IDs against the catalog in
 * systemd/agend.catalog: every id the daemon sends is explained there and vice versa, and
 * each is a random (version 4) 128-bit id as `systemd-id128 new` makes. */

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <ctype.h>

#include "log.h"

static bool has_field(const LogFields *f, const char *field) {
        for (size_t i = 0; i < f->n; i++)
                if (strcmp(f->field[i], field) == 0)
                        return true;
        return false;
}

static bool has_key(const LogFields *f, const char *key) {
        for (size_t i = 0; i < f->n; i++)
                if (strncmp(f->field[i], key, strlen(key)) == 0 && f->field[i][strlen(key)] == '=')
                        return true;
        return false;
}

static void dump(const LogFields *f) {
        for (size_t i = 0; i < f->n; i++)
                fprintf(stderr, "  %s\n", f->field[i]);
}

#define assert_field(f, s)                                                              \
        do {                                                                            \
                if (!has_field((f), (s))) {                                             \
                        dump(f);                                                        \
                        fail_msg("no field %s", (s));                                   \
                }                                                                       \
        } while (0)

static void test_revoke_fields(void **state) {
        Owner holder = { .uid = 1000, .gid = 1000, .pid = 4242, .comm = (char *) "train" };
        Owner by = { .uid = 0, .gid = 0, .pid = 777, .comm = (char *) "agenctl", .unit = (char *) "ops.service" };
        Event e = {
                .type = EVENT_REVOKED,
                .time = 1,
                .resource = "gpu",
                .lease = "0123456789abcdef",
                .token = 42,
                .owner = &holder,
                .units = 1,
                .reason = "maintenance \"window\"\n",
                .revoked_by = &by,
        };
        LogFields f;
        assert_int_equal(log_lease_event_fields(&e, &f), LOG_INFO);
        assert_field(&f, "AGEND_LEASE_ID=0123456789abcdef");
        assert_field(&f, "AGEND_RESOURCE=gpu");
        assert_field(&f, "AGEND_TOKEN=42");
        assert_field(&f, "AGEND_PEER_UID=1000");
        assert_field(&f, "AGEND_PEER_PID=4242");
        assert_field(&f, "AGEND_EVENT=revoked");
        assert_field(&f, "MESSAGE_ID=" LOG_MESSAGE_ID_REVOKED);
        /* The reason as given; the MESSAGE escapes it. */
        assert_field(&f, "REASON=maintenance \"window\"\n");
        assert_field(&f, "AGEND_REVOKED_BY_UID=0");
        assert_field(&f, "AGEND_REVOKED_BY_PID=777");
        assert_field(&f, "AGEND_REVOKED_BY_UNIT=ops.service");
        assert_non_null(strstr(f.message, "revoked by uid 0, pid 777, unit ops.service"));
        assert_null(strchr(f.message, '\n'));
        assert_non_null(strstr(f.message, "maintenance \\\"window\\\"\\n"));

        /* Without a unit, no unit field; without a reason, no REASON. */
        by.unit = NULL;
        e.reason = NULL;
        assert_int_equal(log_lease_event_fields(&e, &f), LOG_INFO);
        assert_false(has_key(&f, "AGEND_REVOKED_BY_UNIT"));
        assert_false(has_key(&f, "REASON"));
        assert_field(&f, "AGEND_REVOKED_BY_PID=777");
}

static void test_other_events(void **state) {
        Owner holder = { .uid = 1000, .gid = 1000, .pid = 4242 };
        Event e = { .type = EVENT_EXPIRED, .resource = "gpu", .lease = "x", .token = 7, .owner = &holder,
                    .reason = "its TTL ran out" };
        LogFields f;
        assert_int_equal(log_lease_event_fields(&e, &f), LOG_INFO);
        assert_field(&f, "MESSAGE_ID=" LOG_MESSAGE_ID_EXPIRED);
        assert_field(&f, "REASON=its TTL ran out");
        assert_false(has_key(&f, "AGEND_REVOKED_BY_UID"));

        e = (Event) { .type = EVENT_RELEASED, .resource = "gpu", .lease = "x", .owner = &holder,
                      .reason = "connection closed" };
        assert_int_equal(log_lease_event_fields(&e, &f), LOG_DEBUG);
        assert_field(&f, "REASON=connection closed");
        assert_false(has_key(&f, "MESSAGE_ID"));

        e = (Event) { .type = EVENT_GRANTED, .resource = "gpu", .lease = "x", .token = 8, .owner = &holder };
        assert_int_equal(log_lease_event_fields(&e, &f), LOG_DEBUG);
        assert_field(&f, "MESSAGE_ID=" LOG_MESSAGE_ID_GRANTED);
        e.type = EVENT_RECLAIMED;
        assert_int_equal(log_lease_event_fields(&e, &f), LOG_INFO);
        assert_field(&f, "MESSAGE_ID=" LOG_MESSAGE_ID_RECLAIMED);
}

static bool id128_v4(const char *s) {
        if (strlen(s) != 32)
                return false;
        for (size_t i = 0; i < 32; i++)
                if (!isxdigit((unsigned char) s[i]) || isupper((unsigned char) s[i]))
                        return false;
        /* RFC 4122 version 4, variant 1: what systemd-id128 new makes. */
        return s[12] == '4' && strchr("89ab", s[16]);
}

static void test_catalog(void **state) {
        const char *path = getenv("AGEND_CATALOG_FILE");
        if (!path || !*path)
                fail_msg("AGEND_CATALOG_FILE is not set");
        FILE *f = fopen(path, "re");
        assert_non_null(f);
        char line[512], ids[16][64];
        size_t n = 0;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, "-- ", 3) == 0 && n < 16) {
                        line[strcspn(line + 3, " \n") + 3] = 0;
                        snprintf(ids[n++], sizeof(ids[0]), "%.63s", line + 3);  /* an id is 32 */
                }
        fclose(f);

        static const char *const sent[] = { LOG_MESSAGE_ID_GRANTED, LOG_MESSAGE_ID_EXPIRED, LOG_MESSAGE_ID_REVOKED,
                                            LOG_MESSAGE_ID_RECLAIMED };
        assert_int_equal(n, ELEMENTSOF(sent));
        for (size_t i = 0; i < ELEMENTSOF(sent); i++) {
                if (!id128_v4(sent[i]))
                        fail_msg("MESSAGE_ID %s is not a random 128-bit id (systemd-id128 new)", sent[i]);
                bool found = false;
                for (size_t j = 0; j < n; j++)
                        found |= strcmp(ids[j], sent[i]) == 0;
                if (!found)
                        fail_msg("MESSAGE_ID %s is not in the catalog %s", sent[i], path);
                for (size_t j = 0; j < i; j++)
                        assert_string_not_equal(sent[i], sent[j]);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_revoke_fields),
                cmocka_unit_test(test_other_events),
                cmocka_unit_test(test_catalog),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

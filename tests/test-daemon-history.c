/* SPDX-License-Identifier: MIT */
/* Who revoked a lease: the revoker's identity (from SO_PEERCRED) in the revoked event, as
 * Watch sends it and as History keeps it across a restart, and in agend's log line. */

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

static json_object *find_event(json_object *events, const char *type, const char *lease) {
        for (size_t i = 0; i < json_object_array_length(events); i++) {
                json_object *ev = json_object_array_get_idx(events, i);
                if (strcmp(jstr(ev, "type"), type) == 0 && jstr(ev, "lease") && strcmp(jstr(ev, "lease"), lease) == 0)
                        return ev;
        }
        return NULL;
}

static void assert_revoker(json_object *ev) {
        if (!jis(ev, "revoked_by", json_type_object))
                fail_msg("revoked event without revoked_by: %s", jtext(ev));
        assert_int_equal(jint(ev, "revoked_by.uid"), (int64_t) geteuid());
        assert_int_equal(jint(ev, "revoked_by.gid"), (int64_t) getegid());
        assert_int_equal(jint(ev, "revoked_by.pid"), (int64_t) getpid());
        assert_non_null(jstr(ev, "revoked_by.comm"));
        assert_string_equal(jstr(ev, "reason"), "disk maintenance");
}

static void test_revoker_recorded(void **state) {
        Agend *a = *state;
        VConn *holder = OPEN(a), *admin = OPEN(a), *watcher = OPEN(a);

        assert_int_equal(vconn_send(watcher, VL_MORE, LEASE_IF "Watch", "{\"resource\":\"gpu\"}"), 0);
        RECV(watcher, HELPER_REPLY_TIMEOUT); /* {event: null}: in effect */

        const char *id = jstr(GRANT_LEASE(holder, "{\"resource\":\"gpu\"}"), "id");
        CALL_OK(admin, LEASE_IF "Revoke", "{\"id\":\"%s\",\"reason\":\"disk maintenance\"}", id);

        /* Watch: granted, then revoked with the revoker. */
        json_object *ev = NULL;
        for (int i = 0; i < 5; i++) {
                json_object *m = RECV(watcher, HELPER_REPLY_TIMEOUT);
                ev = jget(m, "parameters.event");
                if (ev && strcmp(jstr(ev, "type"), "revoked") == 0)
                        break;
                assert_false(ev && jhas(ev, "revoked_by")); /* only revoked events name one */
        }
        assert_non_null(ev);
        assert_revoker(ev);

        /* History, now and after a restart (it is in the database). */
        json_object *h = CALL_OK(admin, LEASE_IF "History", "{\"resource\":\"gpu\"}");
        assert_revoker(find_event(jget(h, "events"), "revoked", id));
        assert_false(jhas(find_event(jget(h, "events"), "granted", id), "revoked_by"));

        int st = 0;
        assert_int_equal(agend_stop(a, &st), 0);
        assert_int_equal(agend_start(a), 0);
        VConn *c = OPEN(a);
        h = CALL_OK(c, LEASE_IF "History", "{\"resource\":\"gpu\"}");
        assert_revoker(find_event(jget(h, "events"), "revoked", id));

        /* The log line (stderr outside the journal) names the revoker. */
        _cleanup_free_ char *log = agend_read_log(a);
        char expect[128];
        snprintf(expect, sizeof(expect), "revoked by uid %u, pid %d", (unsigned) geteuid(), (int) getpid());
        if (!log || !strstr(log, expect))
                fail_msg("agend's log does not say '%s':\n%s", expect, log ? log : "(none)");
}

static int setup(void **state) {
        return helper_setup(state);
}

static int teardown(void **state) {
        return helper_teardown(state);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_revoker_recorded, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

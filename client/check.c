/* SPDX-License-Identifier: MIT */
/* agen_check_sync(): is a fencing token still a current holder's? One blocking Check call,
 * for a guarded service that must refuse the writes of a holder whose lease has ended (a
 * process paused past its TTL, a holder that was revoked) before it accepts them. */

#include <errno.h>
#include <json-c/json.h>
#include <stdlib.h>
#include <string.h>

#include "agen/agen.h"
#include "json-util.h"
#include "macro.h"

_public_ int agen_check_sync(const char *address, const char *resource, uint64_t token, double timeout) {
        assert_return(resource && *resource, -EINVAL);

        /* The daemon never grants a token above INT64_MAX (the wire's int), so such a
         * token cannot be current. */
        if (token > (uint64_t) INT64_MAX)
                return 0;

        json_object *params = json_object_new_object();
        if (!params)
                return -ENOMEM;
        if (json_add_string(params, "resource", resource) < 0 ||
            json_add_int(params, "token", (int64_t) token) < 0) {
                json_object_put(params);
                return -ENOMEM;
        }
        _cleanup_free_ char *text = strdup(json_object_to_json_string_ext(params, JSON_C_TO_STRING_PLAIN));
        json_object_put(params);
        if (!text)
                return -ENOMEM;

        _cleanup_free_ char *reply = NULL, *error_name = NULL;
        int r = agen_call_sync(address, "io.agend.Lease.Check", text, 0, timeout, &reply, &error_name);
        if (r < 0)
                return r;

        json_object *o = NULL;
        bool current = false;
        if (!reply || json_parse_buffer(reply, strlen(reply), &o) < 0)
                return -EBADMSG;
        r = json_get_bool(o, "current", JSON_REQUIRED, &current);
        json_object_put(o);
        if (r < 0)
                return -EBADMSG;
        return current ? 1 : 0;
}

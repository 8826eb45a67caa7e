/* SPDX-License-Identifier: MIT */
/* libFuzzer: varlink framing and call/reply parsing (common/vl.c, common/json-util.c), the
 * code every byte a client sends goes through first.
 *
 * Input: byte 0 seeds how the stream is cut into writes (1..64 bytes each, as a peer's
 * writes may arrive), byte 1 picks the message size limit (16..4096 bytes, so the limit is
 * hit often), the rest is the stream. Besides "no crash, no sanitizer report" it checks
 * what the reader promises: however the stream is cut, the messages handed out are exactly
 * the NUL-separated pieces of the input, in order; -EMSGSIZE comes only for a piece over
 * the limit (and from then on); what is left pending is the unterminated tail. Each
 * message then goes through vl_call_parse() and vl_reply_parse(), the typed getters the
 * daemon applies to parameters, and a rebuild of the call (vl_call_new) that must parse
 * again as the same call. */

#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "json-util.h"
#include "vl.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_parameters(json_object *p) {
        const char *s;
        int64_t i;
        unsigned u;
        bool b;
        usec_t t;
        const char *key;
        static const char *const allowed[] = { "resource", "units", "exclusive", "timeout", "ttl",
                                               "detached", "description", NULL };
        (void) json_get_string(p, "resource", JSON_REQUIRED | JSON_NONEMPTY, &s);
        (void) json_get_string(p, "description", 0, &s);
        (void) json_get_uint(p, "units", 0, 1, 1000000, &u);
        (void) json_get_int64(p, "token", JSON_REQUIRED, 1, INT64_MAX, &i);
        (void) json_get_int64(p, "limit", 0, 1, 100000, &i);
        (void) json_get_bool(p, "exclusive", 0, &b);
        (void) json_get_seconds(p, "timeout", 0, &t);
        (void) json_get_seconds(p, "ttl", 0, &t);
        int r = json_check_keys(p, allowed, &key);
        assert(r == 0 || (r == -EINVAL && key));
}

static void check_message(const char *msg, size_t len) {
        VlCall call;
        if (vl_call_parse(msg, len, &call) == 0) {
                assert(call.method && strchr(call.method, '.'));
                assert(json_object_is_type(call.parameters, json_type_object));
                assert(!(call.more && call.oneway));
                check_parameters(call.parameters);

                /* Rebuilt as agend's peers would send it, it is the same call. */
                json_object *o = vl_call_new(call.method, json_object_get(call.parameters),
                                             (call.more ? VL_CALL_MORE : 0) | (call.oneway ? VL_CALL_ONEWAY : 0));
                assert(o);
                size_t n;
                const char *text = json_object_to_json_string_length(o, JSON_C_TO_STRING_PLAIN, &n);
                VlCall again;
                int r = vl_call_parse(text, n, &again);
                assert(r == 0);
                assert(strcmp(again.method, call.method) == 0);
                assert(again.more == call.more && again.oneway == call.oneway);
                vl_call_done(&again);
                json_object_put(o);
                vl_call_done(&call);
        }
        VlReply reply;
        if (vl_reply_parse(msg, len, &reply) == 0) {
                assert(json_object_is_type(reply.parameters, json_type_object));
                check_parameters(reply.parameters);
                vl_reply_done(&reply);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 2)
                return 0;
        uint32_t rng = data[0] * 2654435761u + 1;
        size_t max = 16 + (size_t) data[1] * 16;
        const char *in = (const char *) data + 2;
        size_t n = size - 2;

        VlReader r;
        vl_reader_init(&r, max);
        size_t fed = 0, expect = 0;    /* expect: offset in `in` of the next message */
        bool overflow = false;
        while (fed < n && !overflow) {
                rng = rng * 1103515245u + 12345u;
                size_t chunk = MIN(n - fed, (size_t) 1 + (rng >> 16) % 64);
                void *p;
                size_t space;
                int k = vl_reader_get_space(&r, chunk, &p, &space);
                assert(k == 0 && space >= chunk);
                memcpy(p, in + fed, chunk);
                vl_reader_advance(&r, chunk);
                fed += chunk;

                for (;;) {
                        char *msg;
                        size_t len;
                        k = vl_reader_next(&r, &msg, &len);
                        if (k == 0)
                                break;
                        const char *nul = memchr(in + expect, 0, fed - expect);
                        if (k == -EMSGSIZE) {
                                /* Only for the piece in progress, and only if it is over the limit. */
                                size_t piece = nul ? (size_t) (nul - (in + expect)) : fed - expect;
                                assert(piece > max);
                                assert(vl_reader_next(&r, &msg, &len) == -EMSGSIZE);
                                overflow = true;
                                break;
                        }
                        assert(k == 1);
                        assert(nul);
                        assert(len == (size_t) (nul - (in + expect)) && len <= max);
                        assert(memcmp(msg, in + expect, len) == 0 && msg[len] == 0);
                        expect += len + 1;
                        check_message(msg, len);
                }
        }
        if (!overflow) {
                /* Every whole message was handed out; the rest is one unterminated piece. */
                assert(!memchr(in + expect, 0, n - expect));
                assert(vl_reader_pending(&r) == n - expect);
        }
        vl_reader_done(&r);
        return 0;
}

/* SPDX-License-Identifier: MIT */
/* Varlink framing: the reader cut at every byte, many messages per read, the size limit
 * enforced before the NUL arrives, the writer's seal, and call/reply parsing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "vl.h"

/* Feeds bytes into the reader as if read from a fd. */
static void feed(VlReader *r, const char *p, size_t n) {
        void *space;
        size_t avail;
        while (n > 0) {
                assert_int_equal(vl_reader_get_space(r, 0, &space, &avail), 0);
                size_t k = MIN(n, avail);
                memcpy(space, p, k);
                vl_reader_advance(r, k);
                p += k;
                n -= k;
        }
}

static const char stream[] = "{\"method\":\"a.B\"}\0{\"x\":1}\0\0{\"y\":\"\xc3\xa9\"}\0";
static const char *const expected[] = { "{\"method\":\"a.B\"}", "{\"x\":1}", "", "{\"y\":\"\xc3\xa9\"}" };

static void test_split_at_every_byte(void **state) {
        size_t total = sizeof(stream) - 1; /* the array's own terminator is not a message end */
        for (size_t cut = 0; cut <= total; cut++) {
                VlReader r;
                vl_reader_init(&r, 0);
                size_t got = 0;
                char *m;
                size_t len;

                feed(&r, stream, cut);
                while (vl_reader_next(&r, &m, &len) > 0) {
                        assert_true(got < ELEMENTSOF(expected));
                        assert_int_equal(len, strlen(expected[got]));
                        assert_memory_equal(m, expected[got], len);
                        assert_int_equal(m[len], 0);
                        got++;
                }
                feed(&r, stream + cut, total - cut);
                int k;
                while ((k = vl_reader_next(&r, &m, &len)) > 0) {
                        assert_true(got < ELEMENTSOF(expected));
                        assert_string_equal(m, expected[got]);
                        got++;
                }
                assert_int_equal(k, 0);
                assert_int_equal(got, ELEMENTSOF(expected));
                assert_int_equal(vl_reader_pending(&r), 0);
                vl_reader_done(&r);
        }
}

static void test_byte_by_byte(void **state) {
        VlReader r;
        vl_reader_init(&r, 0);
        size_t total = sizeof(stream) - 1, got = 0;
        for (size_t i = 0; i < total; i++) {
                char *m;
                size_t len;
                feed(&r, stream + i, 1);
                int k = vl_reader_next(&r, &m, &len);
                assert_true(k >= 0);
                if (k > 0) {
                        assert_string_equal(m, expected[got]);
                        got++;
                        assert_int_equal(vl_reader_next(&r, &m, &len), 0);
                }
        }
        assert_int_equal(got, ELEMENTSOF(expected));
        vl_reader_done(&r);
}

static void test_many_per_read(void **state) {
        /* 10000 messages in one buffer, read through a socketpair in big chunks; also checks
         * that compaction keeps every message intact. */
        enum { N = 10000 };
        char *all = NULL;
        size_t all_len = 0;
        FILE *f = open_memstream(&all, &all_len);
        assert_non_null(f);
        for (int i = 0; i < N; i++) {
                fprintf(f, "{\"i\":%d}", i);
                fputc(0, f);
        }
        fclose(f);

        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        VlReader r;
        vl_reader_init(&r, 64);
        size_t off = 0;
        int next = 0;
        while (next < N) {
                if (off < all_len) {
                        ssize_t w = write(sv[0], all + off, MIN(all_len - off, (size_t) 50000));
                        if (w > 0)
                                off += (size_t) w;
                }
                ssize_t l = vl_reader_read(&r, sv[1]);
                assert_true(l > 0 || l == -EAGAIN);
                char *m;
                size_t len;
                int k;
                while ((k = vl_reader_next(&r, &m, &len)) > 0) {
                        char want[32];
                        snprintf(want, sizeof(want), "{\"i\":%d}", next);
                        assert_string_equal(m, want);
                        next++;
                }
                assert_int_equal(k, 0);
        }
        assert_int_equal(vl_reader_read(&r, sv[1]), -EAGAIN);
        close(sv[0]);
        assert_int_equal(vl_reader_read(&r, sv[1]), 0); /* EOF */
        close(sv[1]);
        vl_reader_done(&r);
        free(all);
}

static void test_oversize_detected_early(void **state) {
        VlReader r;
        char *m;
        size_t len;
        char big[100];
        memset(big, 'x', sizeof(big));

        /* Exactly the limit is fine. */
        vl_reader_init(&r, 10);
        feed(&r, big, 10);
        assert_int_equal(vl_reader_next(&r, &m, &len), 0);
        feed(&r, "", 1);
        assert_int_equal(vl_reader_next(&r, &m, &len), 1);
        assert_int_equal(len, 10);
        vl_reader_done(&r);

        /* One byte more is refused as soon as it arrives, with no NUL in sight. */
        vl_reader_init(&r, 10);
        feed(&r, big, 10);
        assert_int_equal(vl_reader_next(&r, &m, &len), 0);
        feed(&r, big, 1);
        assert_int_equal(vl_reader_next(&r, &m, &len), -EMSGSIZE);
        assert_true(r.overflow);
        /* Sticky: a later NUL does not make the stream usable again. */
        feed(&r, "", 1);
        assert_int_equal(vl_reader_next(&r, &m, &len), -EMSGSIZE);
        vl_reader_done(&r);

        /* A too long message after good ones: the good ones come out first. */
        vl_reader_init(&r, 10);
        feed(&r, "{}\0{}\0", 6);
        feed(&r, big, 50);
        assert_int_equal(vl_reader_next(&r, &m, &len), 1);
        assert_int_equal(vl_reader_next(&r, &m, &len), 1);
        assert_int_equal(vl_reader_next(&r, &m, &len), -EMSGSIZE);
        vl_reader_done(&r);

        /* Whole oversize message including its NUL in one chunk. */
        vl_reader_init(&r, 10);
        feed(&r, big, 11);
        feed(&r, "", 1);
        assert_int_equal(vl_reader_next(&r, &m, &len), -EMSGSIZE);
        vl_reader_done(&r);
}

static void test_read_bounded(void **state) {
        /* vl_reader_read() does not swallow megabytes of an oversize message before the
         * limit check gets a chance. */
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        static char junk[200000];
        memset(junk, 'a', sizeof(junk));
        ssize_t w = write(sv[0], junk, sizeof(junk));
        assert_true(w > 1000);
        VlReader r;
        vl_reader_init(&r, 100);
        ssize_t l = vl_reader_read(&r, sv[1]);
        assert_true(l > 0 && l <= 101);
        char *m;
        size_t len;
        assert_int_equal(vl_reader_next(&r, &m, &len), l > 100 ? -EMSGSIZE : 0);
        vl_reader_done(&r);
        close(sv[0]);
        close(sv[1]);
}

static void test_writer(void **state) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        VlWriter w;
        vl_writer_init(&w);

        json_object *o = vl_reply_new(NULL, true);
        assert_non_null(o);
        assert_int_equal(vl_writer_append_json(&w, o), 0);
        json_object_put(o);
        assert_int_equal(vl_writer_pending(&w), strlen("{\"parameters\":{},\"continues\":true}") + 1);

        /* Nothing sealed: flush_sealed writes nothing. */
        assert_int_equal(vl_writer_pending_sealed(&w), 0);
        assert_int_equal(vl_writer_flush_sealed(&w, sv[0]), 0);
        char buf[256];
        assert_int_equal(read(sv[1], buf, sizeof(buf)), -1);
        assert_int_equal(errno, EAGAIN);

        vl_writer_seal(&w);
        assert_int_equal(vl_writer_append_raw(&w, "{}", 2), 0);
        assert_int_equal(vl_writer_flush_sealed(&w, sv[0]), 0);
        ssize_t n = read(sv[1], buf, sizeof(buf));
        assert_int_equal(n, strlen("{\"parameters\":{},\"continues\":true}") + 1);
        assert_string_equal(buf, "{\"parameters\":{},\"continues\":true}");
        assert_int_equal(vl_writer_pending(&w), 3);

        assert_int_equal(vl_writer_flush(&w, sv[0]), 0);
        assert_int_equal(read(sv[1], buf, sizeof(buf)), 3);
        assert_memory_equal(buf, "{}\0", 3);
        assert_int_equal(vl_writer_pending(&w), 0);

        /* Fill the socket: -EAGAIN, bytes stay queued, and come out in order later. */
        static char big[1 << 16];
        memset(big, 'b', sizeof(big));
        size_t queued = 0;
        for (int i = 0; i < 64; i++) {
                assert_int_equal(vl_writer_append_raw(&w, big, sizeof(big) - 1), 0);
                queued += sizeof(big);
        }
        assert_int_equal(vl_writer_flush(&w, sv[0]), -EAGAIN);
        assert_true(vl_writer_pending(&w) > 0);
        size_t got = 0;
        for (;;) {
                ssize_t l = read(sv[1], buf, sizeof(buf));
                if (l > 0) {
                        for (ssize_t i = 0; i < l; i++)
                                assert_int_equal(buf[i], ((got + (size_t) i) % sizeof(big)) == sizeof(big) - 1 ? 0 : 'b');
                        got += (size_t) l;
                        continue;
                }
                if (vl_writer_pending(&w) == 0)
                        break;
                int k = vl_writer_flush(&w, sv[0]);
                assert_true(k == 0 || k == -EAGAIN);
        }
        assert_int_equal(got, queued);

        /* Peer gone: EPIPE, no SIGPIPE. */
        close(sv[1]);
        assert_int_equal(vl_writer_append_raw(&w, "{}", 2), 0);
        assert_int_equal(vl_writer_flush(&w, sv[0]), -EPIPE);
        close(sv[0]);
        vl_writer_done(&w);
}

static int parse_call(const char *s, VlCall *c) {
        return vl_call_parse(s, strlen(s), c);
}

static void test_call_parse(void **state) {
        VlCall c;
        assert_int_equal(parse_call("{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"gpu\"},\"more\":true}", &c), 0);
        assert_string_equal(c.method, "io.agend.Lease.Acquire");
        assert_true(c.more);
        assert_false(c.oneway);
        assert_string_equal(json_object_get_string(json_object_object_get(c.parameters, "resource")), "gpu");
        vl_call_done(&c);

        /* No parameters: an empty object, never NULL. */
        assert_int_equal(parse_call("{\"method\":\"a.b\"}", &c), 0);
        assert_non_null(c.parameters);
        assert_int_equal(json_object_object_length(c.parameters), 0);
        vl_call_done(&c);
        assert_int_equal(parse_call("{\"method\":\"a.b\",\"parameters\":null,\"oneway\":true}", &c), 0);
        assert_non_null(c.parameters);
        assert_true(c.oneway);
        vl_call_done(&c);

        assert_int_equal(parse_call("", &c), -EBADMSG);
        assert_int_equal(parse_call("{", &c), -EBADMSG);
        assert_int_equal(parse_call("[]", &c), -EBADMSG);
        assert_int_equal(parse_call("{\"method\":\"a.b\"} x", &c), -EBADMSG);
        assert_int_equal(parse_call("{\"method\":\"a.b\",}", &c), -EBADMSG);
        assert_int_equal(parse_call("{}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":1}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"nodot\"}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"a.\"}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"a\\u0000.b\"}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"a.b\",\"parameters\":[]}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"a.b\",\"more\":\"yes\"}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"a.b\",\"more\":true,\"oneway\":true}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"a.b\",\"upgrade\":true}", &c), -EPROTO);
        assert_int_equal(parse_call("{\"method\":\"a.b\",\"upgrade\":false}", &c), 0);
        vl_call_done(&c);
}

static void test_reply_parse_and_build(void **state) {
        VlReply r;
        const char *s = "{\"error\":\"io.agend.Lease.Timeout\",\"parameters\":{\"resource\":\"x\"}}";
        assert_int_equal(vl_reply_parse(s, strlen(s), &r), 0);
        assert_string_equal(r.error, "io.agend.Lease.Timeout");
        assert_false(r.continues);
        vl_reply_done(&r);

        s = "{\"parameters\":{\"state\":\"queued\"},\"continues\":true}";
        assert_int_equal(vl_reply_parse(s, strlen(s), &r), 0);
        assert_null(r.error);
        assert_true(r.continues);
        vl_reply_done(&r);

        s = "{\"error\":7}";
        assert_int_equal(vl_reply_parse(s, strlen(s), &r), -EPROTO);
        s = "{\"continues\":1}";
        assert_int_equal(vl_reply_parse(s, strlen(s), &r), -EPROTO);

        json_object *e = vl_error_newf("io.agend.Lease.ProtocolError", NULL, NULL, "bad %s", "thing");
        assert_non_null(e);
        assert_string_equal(json_object_to_json_string_ext(e, JSON_C_TO_STRING_PLAIN),
                            "{\"error\":\"io.agend.Lease.ProtocolError\",\"parameters\":{\"reason\":\"bad thing\"}}");
        json_object_put(e);
        e = vl_error_newf("org.varlink.service.InvalidParameter", "parameter", "units", "out of range");
        assert_string_equal(json_object_get_string(json_object_object_get(json_object_object_get(e, "parameters"), "parameter")),
                            "units");
        json_object_put(e);

        json_object *c = vl_call_new("a.b", NULL, VL_CALL_MORE);
        assert_string_equal(json_object_to_json_string_ext(c, JSON_C_TO_STRING_PLAIN), "{\"method\":\"a.b\",\"more\":true}");
        json_object_put(c);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_split_at_every_byte),
                cmocka_unit_test(test_byte_by_byte),
                cmocka_unit_test(test_many_per_read),
                cmocka_unit_test(test_oversize_detected_early),
                cmocka_unit_test(test_read_bounded),
                cmocka_unit_test(test_writer),
                cmocka_unit_test(test_call_parse),
                cmocka_unit_test(test_reply_parse_and_build),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

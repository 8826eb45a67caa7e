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
#include <stdbool.h>
#include <stdlib.h>
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

        /* Whole messages the caller has not taken yet (a busy connection holding later
         * calls) do not count against the message in progress: reads stay large. */
        char drain[4096];
        while (read(sv[1], drain, sizeof(drain)) > 0)
                ;
        vl_reader_init(&r, 100);
        static char msgs[3 * 61];
        memset(msgs, 'm', sizeof(msgs));
        msgs[60] = msgs[121] = msgs[182] = 0;
        feed(&r, msgs, sizeof(msgs));
        assert_int_equal(write(sv[0], junk, 80), 80);
        l = vl_reader_read(&r, sv[1]);
        assert_int_equal(l, 80);
        assert_int_equal(vl_reader_pending(&r), sizeof(msgs) + 80);
        for (int i = 0; i < 3; i++) {
                assert_int_equal(vl_reader_next(&r, &m, &len), 1);
                assert_int_equal(len, 60);
        }
        assert_int_equal(vl_reader_next(&r, &m, &len), 0);
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

static void test_writer_seal_compaction(void **state) {
        /* Sealed bytes survive compaction of the buffer: after a partial write, more
         * appends (which move the unwritten tail to the front) and flush_sealed writes
         * exactly the sealed messages, in order, and nothing after them. */
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        int small = 4096;
        assert_int_equal(setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)), 0);
        VlWriter w;
        vl_writer_init(&w);
        static char msg[1000];
        size_t sealed_bytes = 0;
        for (int i = 0; i < 100; i++) {
                memset(msg, 'a' + i % 26, sizeof(msg));
                assert_int_equal(vl_writer_append_raw(&w, msg, sizeof(msg) - 1), 0);
                sealed_bytes += sizeof(msg);
        }
        vl_writer_seal(&w);
        assert_int_equal(vl_writer_flush_sealed(&w, sv[0]), -EAGAIN);
        size_t got = 0;
        unsigned compactions = 0;
        char buf[8192];
        for (int round = 0; got < sealed_bytes; round++) {
                /* Unsealed appends in between, enough to force compaction. */
                size_t start_before = w.start;
                static char filler[3000];
                memset(filler, 'u', sizeof(filler));
                assert_int_equal(vl_writer_append_raw(&w, filler, sizeof(filler)), 0);
                if (w.start < start_before)
                        compactions++;
                ssize_t l;
                while ((l = read(sv[1], buf, sizeof(buf))) > 0) {
                        for (ssize_t i = 0; i < l; i++) {
                                size_t at = got + (size_t) i;
                                char want = at % sizeof(msg) == sizeof(msg) - 1 ? 0 : (char) ('a' + (at / sizeof(msg)) % 26);
                                assert_int_equal(buf[i], want);
                        }
                        got += (size_t) l;
                }
                int k = vl_writer_flush_sealed(&w, sv[0]);
                assert_true(k == 0 || k == -EAGAIN);
                assert_true(round < 10000);
        }
        assert_int_equal(got, sealed_bytes);
        assert_true(compactions > 0);
        assert_int_equal(vl_writer_pending_sealed(&w), 0);
        assert_true(vl_writer_pending(&w) > 0);
        assert_int_equal(read(sv[1], buf, sizeof(buf)), -1);       /* nothing unsealed left */
        close(sv[0]);
        close(sv[1]);
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

/* xorshift64*: deterministic, so a failure reproduces. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rng(void) {
        rng_state ^= rng_state >> 12;
        rng_state ^= rng_state << 25;
        rng_state ^= rng_state >> 27;
        return rng_state * 0x2545f4914f6cdd1dULL;
}

static void test_framing_property(void **state) {
        /* Random byte streams with random NULs, fed in random chunk sizes: the messages
         * that come out are exactly the NUL-separated pieces of the input, and the first
         * piece over the limit (counted as it arrives) stops the stream with -EMSGSIZE. */
        enum { LIMIT = 40 };
        for (int round = 0; round < 300; round++) {
                size_t n = rng() % 2000;
                char *in = malloc(n + 1);
                assert_non_null(in);
                unsigned nul_every = 1 + (unsigned) (rng() % 60);
                for (size_t i = 0; i < n; i++)
                        in[i] = rng() % nul_every == 0 ? 0 : (char) (1 + rng() % 255);

                VlReader r;
                vl_reader_init(&r, LIMIT);
                size_t fed = 0, expect_start = 0;
                bool over = false;
                while (fed < n && !over) {
                        size_t want_chunk = 1 + (size_t) (rng() % 97); /* MIN() evaluates twice */
                        size_t chunk = MIN(n - fed, want_chunk);
                        feed(&r, in + fed, chunk);
                        fed += chunk;
                        char *m;
                        size_t len;
                        int k;
                        while ((k = vl_reader_next(&r, &m, &len)) > 0) {
                                char *nul = memchr(in + expect_start, 0, fed - expect_start);
                                assert_non_null(nul);
                                size_t want = (size_t) (nul - (in + expect_start));
                                assert_int_equal(len, want);
                                assert_memory_equal(m, in + expect_start, len);
                                assert_int_equal(m[len], 0);
                                expect_start += want + 1;
                        }
                        if (k == -EMSGSIZE) {
                                /* Only when the piece in progress is really too long. */
                                char *nul = memchr(in + expect_start, 0, fed - expect_start);
                                size_t piece = nul ? (size_t) (nul - (in + expect_start)) : fed - expect_start;
                                assert_true(piece > LIMIT);
                                over = true;
                        } else {
                                assert_int_equal(k, 0);
                                /* Not over: what is held without a NUL is within the limit. */
                                assert_true(fed - expect_start <= LIMIT || memchr(in + expect_start, 0, fed - expect_start));
                        }
                }
                vl_reader_done(&r);
                free(in);
        }
}

static const char *const seeds[] = {
        "{\"method\":\"io.agend.Lease.Acquire\",\"parameters\":{\"resource\":\"gpu\",\"units\":2,\"timeout\":1.5},\"more\":true}",
        "{\"method\":\"org.varlink.service.GetInfo\"}",
        "{\"parameters\":{\"state\":\"granted\",\"lease\":{\"id\":\"ab\",\"token\":7}},\"continues\":false}",
        "{\"error\":\"io.agend.Lease.Timeout\",\"parameters\":{\"resource\":\"x\"}}",
        "{\"method\":\"io.agend.Lease.Release\",\"parameters\":{\"id\":\"a\\u0000b\"},\"oneway\":true}",
};

static void test_parse_fuzz(void **state) {
        /* Mutated calls and replies: every outcome is success or a clean -EBADMSG/-EPROTO,
         * and a success satisfies what the header promises. Run under ASan and valgrind. */
        char buf[512];
        for (int round = 0; round < 20000; round++) {
                const char *seed = seeds[rng() % ELEMENTSOF(seeds)];
                size_t n = strlen(seed);
                memcpy(buf, seed, n);
                unsigned mutations = 1 + (unsigned) (rng() % 4);
                for (unsigned j = 0; j < mutations; j++) {
                        size_t at = n ? rng() % n : 0;
                        switch (rng() % 5) {
                        case 0: /* replace a byte */
                                if (n)
                                        buf[at] = (char) rng();
                                break;
                        case 1: /* delete a byte */
                                if (n) {
                                        memmove(buf + at, buf + at + 1, n - at - 1);
                                        n--;
                                }
                                break;
                        case 2: /* duplicate a byte */
                                if (n && n < sizeof(buf) - 1) {
                                        memmove(buf + at + 1, buf + at, n - at);
                                        n++;
                                }
                                break;
                        case 3: /* truncate */
                                n = at;
                                break;
                        case 4: /* a structural character */
                                if (n)
                                        buf[at] = "{}[]\":,\\0tfn-."[rng() % 15];
                                break;
                        }
                }
                VlCall c;
                int k = vl_call_parse(buf, n, &c);
                assert_true(k == 0 || k == -EBADMSG || k == -EPROTO);
                if (k == 0) {
                        assert_non_null(c.method);
                        assert_non_null(strchr(c.method, '.'));
                        assert_true(json_object_is_type(c.parameters, json_type_object));
                        assert_false(c.more && c.oneway);
                        vl_call_done(&c);
                }
                VlReply rp;
                k = vl_reply_parse(buf, n, &rp);
                assert_true(k == 0 || k == -EBADMSG || k == -EPROTO);
                if (k == 0) {
                        assert_true(json_object_is_type(rp.parameters, json_type_object));
                        assert_true(!rp.error || *rp.error);
                        vl_reply_done(&rp);
                }
        }
}

/* A peer that sends one byte costs a small buffer, not a read chunk; the buffer grows with
 * the data held and is given back once empty (issue 11, defect 8). */
static void test_buffer_grows_with_data(void **state) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        VlReader r;
        vl_reader_init(&r, 0);
        assert_int_equal(send(sv[1], "{", 1, 0), 1);
        assert_int_equal(vl_reader_read(&r, sv[0]), 1);
        assert_true(r.size <= 1024);
        /* 200 kB without a NUL, then its end: read whole, buffer grown as needed. */
        static char big[200 * 1024];
        memset(big, ' ', sizeof(big));
        big[sizeof(big) - 2] = '}';
        big[sizeof(big) - 1] = 0;
        size_t sent = 0, got = 1;
        char *msg;
        size_t len;
        int k = 0;
        while (k == 0) {
                if (sent < sizeof(big)) {
                        ssize_t l = send(sv[1], big + sent, sizeof(big) - sent, 0);
                        if (l > 0)
                                sent += (size_t) l;
                }
                ssize_t n = vl_reader_read(&r, sv[0]);
                if (n > 0)
                        got += (size_t) n;
                k = vl_reader_next(&r, &msg, &len);
        }
        assert_int_equal(k, 1);
        assert_int_equal(len, sizeof(big));
        assert_int_equal(got, sizeof(big) + 1);
        assert_true(r.size >= sizeof(big));
        assert_int_equal(vl_reader_pending(&r), 0);
        vl_reader_shrink(&r);
        assert_null(r.buf);
        vl_reader_done(&r);
        close(sv[0]);
        close(sv[1]);
}

/* vl_writer_discard() keeps the rest of a message already partly written, drops the others. */
static void test_writer_discard(void **state) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv), 0);
        VlWriter w;
        vl_writer_init(&w);
        assert_int_equal(vl_writer_append_raw(&w, "aaaa", 4), 0);
        assert_int_equal(vl_writer_append_raw(&w, "bbbb", 4), 0);
        vl_writer_discard(&w);
        assert_int_equal(vl_writer_pending(&w), 0);   /* nothing written yet: all dropped */

        static char big[300 * 1024];
        memset(big, 'x', sizeof(big));
        assert_int_equal(vl_writer_append_raw(&w, big, sizeof(big)), 0);
        assert_int_equal(vl_writer_append_raw(&w, "next", 4), 0);
        assert_int_equal(vl_writer_flush(&w, sv[0]), -EAGAIN);      /* partly written */
        size_t left = vl_writer_pending(&w);
        assert_true(left > 5 && left < sizeof(big) + 1 + 5);
        vl_writer_discard(&w);
        assert_int_equal(vl_writer_pending(&w), left - 5);          /* the rest of big and its NUL */
        assert_int_equal(vl_writer_append_raw(&w, "err", 3), 0);
        /* The reader sees big whole, then err: the stream stays framed. */
        VlReader r;
        vl_reader_init(&r, 0);
        char *msg;
        size_t len;
        int seen = 0;
        for (int i = 0; i < 100000 && seen < 2; i++) {
                (void) vl_writer_flush(&w, sv[0]);
                (void) vl_reader_read(&r, sv[1]);
                while (vl_reader_next(&r, &msg, &len) == 1) {
                        if (seen == 0)
                                assert_int_equal(len, sizeof(big));
                        else
                                assert_string_equal(msg, "err");
                        seen++;
                }
        }
        assert_int_equal(seen, 2);
        vl_reader_done(&r);
        vl_writer_done(&w);
        close(sv[0]);
        close(sv[1]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_split_at_every_byte),
                cmocka_unit_test(test_byte_by_byte),
                cmocka_unit_test(test_many_per_read),
                cmocka_unit_test(test_oversize_detected_early),
                cmocka_unit_test(test_read_bounded),
                cmocka_unit_test(test_writer),
                cmocka_unit_test(test_writer_seal_compaction),
                cmocka_unit_test(test_buffer_grows_with_data),
                cmocka_unit_test(test_writer_discard),
                cmocka_unit_test(test_call_parse),
                cmocka_unit_test(test_reply_parse_and_build),
                cmocka_unit_test(test_framing_property),
                cmocka_unit_test(test_parse_fuzz),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

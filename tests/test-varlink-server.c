/* SPDX-License-Identifier: MIT */
/* The varlink server alone, over socketpairs, without agend: method dispatch and errors,
 * replies held until the flush (the group commit's gate), call order, connections freed
 * from each other's disconnect callbacks, output high-water mark, per-turn bound, output
 * caps with drops, partial-message timeout, read buffers that grow with the data. */

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "json-writer.h"
#include "macro.h"
#include "test-fds.h"
#include "varlink-server.h"

typedef struct T {
        struct ev_loop *loop;
        VarlinkServer *server;
        unsigned connects, disconnects, calls, echo_calls;
        VarlinkConn *waiting[8];        /* calls of t.Wait, answered by the test */
        size_t n_waiting;
        VarlinkConn *subs[16];          /* t.Subscribe streams */
        size_t n_subs;
        bool reply_on_disconnect;       /* a disconnect ends another connection's t.Wait */
        size_t big;                     /* bytes of a t.Big reply */
} T;

static int on_connect(VarlinkServer *s, VarlinkConn *c, void *userdata) {
        T *t = userdata;
        t->connects++;
        return 0;
}

static void forget(T *t, VarlinkConn *c) {
        for (size_t i = 0; i < t->n_waiting; i++)
                if (t->waiting[i] == c)
                        t->waiting[i] = t->waiting[--t->n_waiting];
        for (size_t i = 0; i < t->n_subs; i++)
                if (t->subs[i] == c)
                        t->subs[i] = t->subs[--t->n_subs];
}

static void on_disconnect(VarlinkServer *s, VarlinkConn *c, void *userdata) {
        T *t = userdata;
        t->disconnects++;
        forget(t, c);
        /* Like a lease handed to the next waiter: another connection's call ends now, while
         * it may be on the list of connections being closed too. */
        if (t->reply_on_disconnect && t->n_waiting > 0) {
                VarlinkConn *n = t->waiting[--t->n_waiting];
                varlink_conn_reply(n, NULL, false);
                varlink_conn_close(n);  /* and marks it for the flush again */
        }
}

/* Replies with the parameters as the method read them from the list: the members in
 * order, each with its kind and value, so a reply equal to the call's parameters shows that
 * they arrived unchanged (whether the scanner or json-c read the message). The tests send
 * no object or array parameters, which the list does not carry. */
static void m_echo(VarlinkConn *c, const VlParams *p, void *userdata) {
        T *t = userdata;
        t->calls++;
        t->echo_calls++;
        _cleanup_(jw_done) JsonWriter w;
        jw_init(&w);
        varlink_reply_begin(&w);
        for (size_t i = 0; i < p->n; i++) {
                const VlParam *x = &p->items[i];
                switch (x->kind) {
                case VL_PARAM_NULL:
                        jw_null(&w, x->key);
                        break;
                case VL_PARAM_BOOL:
                        jw_bool(&w, x->key, x->b);
                        break;
                case VL_PARAM_INT:
                        jw_int(&w, x->key, x->i);
                        break;
                case VL_PARAM_DOUBLE:
                        jw_double(&w, x->key, x->d);
                        break;
                case VL_PARAM_STRING:
                        jw_string_len(&w, x->key, x->s, x->len);
                        break;
                case VL_PARAM_OTHER:
                        fail_msg("t.Echo got an object or array parameter: %s", x->key);
                }
        }
        assert_int_equal(varlink_conn_reply_end(c, &w, false), 0);
}

static void m_wait(VarlinkConn *c, const VlParams *p, void *userdata) {
        T *t = userdata;
        t->calls++;
        assert_true(t->n_waiting < ELEMENTSOF(t->waiting));
        t->waiting[t->n_waiting++] = c;
}

static void m_big(VarlinkConn *c, const VlParams *p, void *userdata) {
        T *t = userdata;
        t->calls++;
        char *s = malloc(t->big + 1);
        assert_non_null(s);
        memset(s, 'b', t->big);
        s[t->big] = 0;
        json_object *r = json_object_new_object();
        json_object_object_add(r, "data", json_object_new_string(s));
        free(s);
        varlink_conn_reply(c, r, false);
}

static void m_subscribe(VarlinkConn *c, const VlParams *p, void *userdata) {
        T *t = userdata;
        t->calls++;
        assert_true(t->n_subs < ELEMENTSOF(t->subs));
        assert_true(varlink_conn_more(c));      /* every test subscribes with "more" */
        t->subs[t->n_subs++] = c;
        varlink_conn_reply(c, NULL, true);
}

static const VarlinkServerCallbacks callbacks = {
        .connect = on_connect,
        .disconnect = on_disconnect,
};

static T *t_new(const VarlinkServerLimits *limits) {
        T *t = calloc(1, sizeof(*t));
        assert_non_null(t);
        t->loop = ev_loop_new(EVFLAG_AUTO);
        assert_non_null(t->loop);
        assert_int_equal(varlink_server_new(t->loop,
                                            &(VarlinkServerOptions) { .error_protocol = "t.ProtocolError",
                                                                      .error_limit = "t.LimitExceeded" },
                                            &callbacks, t, &t->server),
                         0);
        if (limits)
                varlink_server_set_limits(t->server, limits);
        assert_int_equal(varlink_server_bind_method_params(t->server, "t.Echo", m_echo, t), 0);
        assert_int_equal(varlink_server_bind_method_params(t->server, "t.Wait", m_wait, t), 0);
        assert_int_equal(varlink_server_bind_method_params(t->server, "t.Big", m_big, t), 0);
        assert_int_equal(varlink_server_bind_method_params(t->server, "t.Subscribe", m_subscribe, t), 0);
        assert_int_equal(varlink_server_bind_method_params(t->server, "t.Echo", m_echo, t), -EEXIST);
        return t;
}

static void t_free(T *t) {
        varlink_server_free(t->server);
        assert_int_equal(t->disconnects, t->connects);
        ev_loop_destroy(t->loop);
        free(t);
}

/* A connection: the server gets one end, the test keeps the other (blocking reads with
 * poll guards). */
static int t_connect(T *t, VarlinkConn **ret) {
        int sv[2];
        assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv), 0);
        VarlinkConn *c = NULL;
        assert_int_equal(varlink_server_add_connection(t->server, sv[0], &c), 0);
        if (ret)
                *ret = c;
        return sv[1];
}

/* One loop iteration as agend runs it: events, then dispatch, (commit), flush, and more
 * rounds while connections close. */
static void t_iterate(T *t) {
        ev_run(t->loop, EVRUN_NOWAIT);
        for (int round = 0; round < 8; round++) {
                varlink_server_dispatch(t->server);
                if (varlink_server_flush(t->server) == 0)
                        break;
        }
}

static void send_str(int fd, const char *s) {
        size_t n = strlen(s) + 1;
        assert_int_equal(send(fd, s, n, MSG_NOSIGNAL), (ssize_t) n);
}

static bool readable(int fd) {
        struct pollfd p = { .fd = fd, .events = POLLIN };
        return poll(&p, 1, 0) > 0;
}

/* Iterates until one whole message can be read from fd (guarded by an iteration count),
 * returns it parsed. */
static json_object *recv_msg(T *t, int fd) {
        static char buf[1 << 20];
        size_t n = 0;
        for (int i = 0; i < 100000; i++) {
                t_iterate(t);
                while (readable(fd)) {
                        ssize_t l = recv(fd, buf + n, 1, 0);
                        if (l <= 0)
                                return NULL;
                        n++;
                        if (buf[n - 1] == 0) {
                                json_object *o = json_tokener_parse(buf);
                                assert_non_null(o);
                                return o;
                        }
                        assert_true(n < sizeof(buf));
                }
                if (i > 100)
                        usleep(1000);
        }
        fail_msg("no message");
        return NULL;
}

static const char *error_of(json_object *o) {
        json_object *e;
        return json_object_object_get_ex(o, "error", &e) ? json_object_get_string(e) : NULL;
}

static void test_dispatch(void **state) {
        unsigned fds0 = count_fds();
        T *t = t_new(NULL);
        int fd = t_connect(t, NULL);
        assert_int_equal(t->connects, 1);
        assert_int_equal(varlink_server_n_connections(t->server), 1);

        send_str(fd, "{\"method\":\"t.Echo\",\"parameters\":{\"x\":1}}");
        json_object *r = recv_msg(t, fd);
        assert_null(error_of(r));
        assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { \"x\": 1 } }");
        json_object_put(r);
        /* Every kind of scalar arrives unchanged, in order. */
        send_str(fd, "{\"method\":\"t.Echo\",\"parameters\":{\"s\":\"a\\\"b\\n\",\"b\":false,\"n\":null,"
                     "\"d\":1.5,\"i\":-7}}");
        r = recv_msg(t, fd);
        assert_string_equal(json_object_to_json_string(r),
                            "{ \"parameters\": { \"s\": \"a\\\"b\\n\", \"b\": false, \"n\": null, \"d\": 1.5, "
                            "\"i\": -7 } }");
        json_object_put(r);
        /* A call the scanner leaves to json-c (a repeated key) reaches the same method,
         * with the parameters as json-c reads them: the last value of the key. */
        send_str(fd, "{\"method\":\"t.Echo\",\"parameters\":{\"x\":1,\"x\":2}}");
        r = recv_msg(t, fd);
        assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { \"x\": 2 } }");
        json_object_put(r);

        send_str(fd, "{\"method\":\"t.Nope\"}");
        r = recv_msg(t, fd);
        assert_string_equal(error_of(r), "org.varlink.service.MethodNotFound");
        json_object_put(r);
        send_str(fd, "{\"method\":\"x.Nope\"}");
        r = recv_msg(t, fd);
        assert_string_equal(error_of(r), "org.varlink.service.InterfaceNotFound");
        json_object_put(r);

        /* oneway: handled, no reply; the next call is answered. */
        send_str(fd, "{\"method\":\"t.Echo\",\"oneway\":true}");
        send_str(fd, "{\"method\":\"t.Echo\",\"parameters\":{\"y\":2}}");
        r = recv_msg(t, fd);
        assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { \"y\": 2 } }");
        json_object_put(r);
        assert_int_equal(t->echo_calls, 5);

        /* Not JSON: ProtocolError, then closed. */
        send_str(fd, "nope");
        r = recv_msg(t, fd);
        assert_string_equal(error_of(r), "t.ProtocolError");
        json_object_put(r);
        for (int i = 0; i < 100 && t->disconnects == 0; i++)
                t_iterate(t);
        assert_int_equal(t->disconnects, 1);
        assert_int_equal(varlink_server_n_connections(t->server), 0);
        close(fd);
        t_free(t);
        assert_int_equal(count_fds(), fds0);
}

/* Replies leave only in the flush: what agend calls after its commit. */
static void test_reply_waits_for_flush(void **state) {
        T *t = t_new(NULL);
        int fd = t_connect(t, NULL);
        send_str(fd, "{\"method\":\"t.Echo\"}");
        for (int i = 0; i < 100 && t->echo_calls == 0; i++) {
                ev_run(t->loop, EVRUN_NOWAIT);
                varlink_server_dispatch(t->server);
        }
        assert_int_equal(t->echo_calls, 1);
        assert_false(readable(fd));
        assert_true(varlink_server_output_bytes(t->server) > 0);
        varlink_server_flush(t->server);
        assert_true(readable(fd));
        assert_int_equal(varlink_server_output_bytes(t->server), 0);
        close(fd);
        t_free(t);
}

/* A call in progress holds the later calls of its connection. */
static void test_call_order(void **state) {
        T *t = t_new(NULL);
        int fd = t_connect(t, NULL);
        send_str(fd, "{\"method\":\"t.Wait\"}");
        send_str(fd, "{\"method\":\"t.Echo\",\"parameters\":{\"after\":true}}");
        for (int i = 0; i < 20; i++)
                t_iterate(t);
        assert_int_equal(t->n_waiting, 1);
        assert_int_equal(t->echo_calls, 0);
        assert_true(varlink_conn_in_call(t->waiting[0]));
        varlink_conn_reply(t->waiting[0], NULL, false);
        t->n_waiting = 0;
        json_object *r = recv_msg(t, fd);
        assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { } }");
        json_object_put(r);
        r = recv_msg(t, fd);
        assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { \"after\": true } }");
        json_object_put(r);
        close(fd);
        t_free(t);
}

/* Issue 11, defect 1, at the transport: connections closed in one flush whose disconnect
 * callbacks end calls of the others (which marks those for output) are all freed. */
static void test_close_chain(void **state) {
        unsigned fds0 = count_fds();
        T *t = t_new(NULL);
        enum { N = 6 };
        int fd[N];
        VarlinkConn *c[N];
        for (int i = 0; i < N; i++) {
                fd[i] = t_connect(t, &c[i]);
                send_str(fd[i], "{\"method\":\"t.Wait\"}");
        }
        for (int i = 0; i < 20; i++)
                t_iterate(t);
        assert_int_equal(t->n_waiting, N);
        /* In the order the waits came in: each close ends the next one's call. */
        t->reply_on_disconnect = true;
        for (int i = 0; i < N; i++)
                varlink_conn_close(c[i]);
        for (int i = 0; i < 20; i++)
                t_iterate(t);
        assert_int_equal(t->disconnects, N);
        assert_int_equal(varlink_server_n_connections(t->server), 0);
        for (int i = 0; i < N; i++)
                close(fd[i]);
        t_free(t);
        assert_int_equal(count_fds(), fds0);
}

/* A client that pipelines calls with large replies and never reads: the server stops
 * handling its calls above the high-water mark, and another client is served. */
static void test_high_water(void **state) {
        T *t = t_new(NULL);
        t->big = 100 * 1024;
        int flood = t_connect(t, NULL);
        int sz = 4096;
        (void) setsockopt(flood, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
        char calls[100 * 20];
        size_t n = 0;
        for (int i = 0; i < 100; i++) {
                memcpy(calls + n, "{\"method\":\"t.Big\"}", 19);       /* with its NUL */
                n += 19;
        }
        assert_int_equal(send(flood, calls, n, MSG_NOSIGNAL), (ssize_t) n);
        for (int i = 0; i < 200; i++)
                t_iterate(t);
        /* At most the mark plus one reply queued, however many calls wait. */
        assert_true(varlink_server_output_bytes(t->server) <= VARLINK_OUTPUT_HIGH_WATER + t->big + 1024);
        assert_true(t->calls < 10);
        int other = t_connect(t, NULL);
        send_str(other, "{\"method\":\"t.Echo\"}");
        json_object *r = recv_msg(t, other);
        assert_null(error_of(r));
        json_object_put(r);
        close(flood);
        close(other);
        t_free(t);
}

/* At most VARLINK_CALLS_PER_TURN calls of one connection per loop iteration; all are
 * answered in the end. */
static void test_calls_per_turn(void **state) {
        T *t = t_new(NULL);
        int fd = t_connect(t, NULL);
        char calls[200 * 20];
        size_t n = 0;
        for (int i = 0; i < 200; i++) {
                memcpy(calls + n, "{\"method\":\"t.Echo\"}", 20);      /* with its NUL */
                n += 20;
        }
        assert_int_equal(send(fd, calls, n, MSG_NOSIGNAL), (ssize_t) n);
        unsigned most = 0;
        for (int i = 0; i < 400 && t->echo_calls < 200; i++) {
                unsigned before = t->echo_calls;
                t_iterate(t);
                most = MAX(most, t->echo_calls - before);
                char buf[65536];
                while (readable(fd) && recv(fd, buf, sizeof(buf), 0) > 0)
                        ;
        }
        fprintf(stderr, "at most %u calls in one iteration, %u in all\n", most, t->echo_calls);
        assert_true(most > 0 && most <= VARLINK_CALLS_PER_TURN);
        assert_int_equal(t->echo_calls, 200);
        close(fd);
        t_free(t);
}

/* Streams to subscribers that do not read: output stays under the per-uid cap, the
 * biggest queues are dropped with LimitExceeded, a reading subscriber keeps everything. */
static void test_output_caps(void **state) {
        VarlinkServerLimits l = {
                .max_unanswered_input = 1 << 20,
                .output_high_water = 64 * 1024,
                .max_output_per_conn = 256 * 1024,
                .max_output_per_uid = 512 * 1024,
                .max_output_total = 1 << 20,
        };
        T *t = t_new(&l);
        enum { N = 6 };
        int fd[N];
        for (int i = 0; i < N; i++) {
                fd[i] = t_connect(t, NULL);
                int sz = 4096;
                (void) setsockopt(fd[i], SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
                send_str(fd[i], "{\"method\":\"t.Subscribe\",\"more\":true}");
        }
        int reader = t_connect(t, NULL);
        send_str(reader, "{\"method\":\"t.Subscribe\",\"more\":true}");
        for (int i = 0; i < 20; i++)
                t_iterate(t);
        assert_int_equal(t->n_subs, N + 1);
        char event[1100];
        int len = snprintf(event, sizeof(event), "{\"parameters\":{\"e\":\"%01000d\"},\"continues\":true}", 0);
        size_t max_seen = 0, got = 0;
        char buf[65536];
        for (int k = 0; k < 2000; k++) {
                for (size_t i = 0; i < t->n_subs; i++)
                        varlink_conn_reply_serialized(t->subs[i], event, (size_t) len, true);
                max_seen = MAX(max_seen, varlink_server_output_bytes(t->server));
                t_iterate(t);
                ssize_t r;
                while (readable(reader) && (r = recv(reader, buf, sizeof(buf), 0)) > 0)
                        for (ssize_t j = 0; j < r; j++)
                                got += buf[j] == 0;
        }
        assert_true(max_seen <= l.max_output_per_uid + (size_t) len + 1);
        /* The reading subscriber is still there and got every event (and the first reply). */
        for (int i = 0; i < 100; i++) {
                t_iterate(t);
                ssize_t r;
                while (readable(reader) && (r = recv(reader, buf, sizeof(buf), 0)) > 0)
                        for (ssize_t j = 0; j < r; j++)
                                got += buf[j] == 0;
        }
        assert_int_equal(got, 2001);
        /* A dropped one finds LimitExceeded at the end of what it had received. */
        char *all = malloc(4 << 20);
        size_t n = 0;
        for (int i = 0; i < 2000; i++) {
                t_iterate(t);
                ssize_t r = recv(fd[0], all + n, (4 << 20) - n, MSG_DONTWAIT);
                if (r == 0)
                        break;
                if (r > 0)
                        n += (size_t) r;
                else
                        usleep(1000);
        }
        assert_true(n > 1 && all[n - 1] == 0);
        char *last = memrchr(all, 0, n - 1);
        assert_non_null(strstr(last ? last + 1 : all, "t.LimitExceeded"));
        free(all);
        assert_true(t->disconnects > 0);
        for (int i = 0; i < N; i++)
                close(fd[i]);
        close(reader);
        t_free(t);
}

/* A partial message is a protocol error after the client timeout; a connection in a call
 * is kept. */
static void test_partial_timeout(void **state) {
        VarlinkServerLimits l = {
                .max_unanswered_input = 1 << 20,
                .client_timeout = 200 * USEC_PER_MSEC,
        };
        T *t = t_new(&l);
        int waiting = t_connect(t, NULL);
        send_str(waiting, "{\"method\":\"t.Wait\"}");
        int fd = t_connect(t, NULL);
        assert_int_equal(send(fd, "{\"meth", 6, MSG_NOSIGNAL), 6);
        json_object *r = NULL;
        for (int i = 0; i < 5000 && !r; i++) {
                ev_run(t->loop, EVRUN_ONCE);
                varlink_server_dispatch(t->server);
                varlink_server_flush(t->server);
                if (readable(fd))
                        r = recv_msg(t, fd);
        }
        assert_non_null(r);
        assert_string_equal(error_of(r), "t.ProtocolError");
        json_object_put(r);
        assert_int_equal(t->n_waiting, 1);
        assert_true(varlink_conn_in_call(t->waiting[0]));
        close(fd);
        close(waiting);
        t_free(t);
}

/* A message over the size limit sent while a call is in progress (a Watch, a wait) is a
 * protocol error at once. It used to wait for the call to end: meanwhile the reader, held
 * at the limit, took one byte per read (4 per loop iteration) until the unanswered-input
 * bound, a spinning loop of millions of one-byte reads, and a client that hung up after
 * such a message was only seen gone once all of it had been read that way. */
static void test_oversized_behind_call(void **state) {
        VarlinkServerLimits l = {
                .max_message_size = 1024,
                .max_unanswered_input = 1 << 20,
        };
        T *t = t_new(&l);
        int fd = t_connect(t, NULL);
        send_str(fd, "{\"method\":\"t.Subscribe\",\"more\":true}");
        json_object *r = recv_msg(t, fd);
        assert_null(error_of(r));
        json_object_put(r);
        assert_int_equal(t->n_subs, 1);
        static char big[64 * 1024];
        memset(big, 'x', sizeof(big));
        assert_int_equal(send(fd, big, sizeof(big), MSG_NOSIGNAL), (ssize_t) sizeof(big));
        for (int i = 0; i < 50 && t->disconnects == 0; i++) {
                t_iterate(t);
                while (readable(fd)) {
                        char b[4096];
                        if (recv(fd, b, sizeof(b), 0) <= 0)
                                break;
                }
        }
        assert_int_equal(t->disconnects, 1);
        assert_int_equal(t->n_subs, 0);
        close(fd);
        t_free(t);
}

/* One message queued by reference to several connections, between private replies: each
 * gets them in order; the buffer lives as long as a connection still has it queued. */
static void test_shared_output(void **state) {
        T *t = t_new(NULL);
        enum { N = 3 };
        int fd[N];
        for (int i = 0; i < N; i++) {
                fd[i] = t_connect(t, NULL);
                send_str(fd[i], "{\"method\":\"t.Subscribe\",\"more\":true}");
        }
        for (int i = 0; i < 100 && t->n_subs < N; i++) {
                ev_run(t->loop, EVRUN_NOWAIT);
                varlink_server_dispatch(t->server);
        }
        assert_int_equal(t->n_subs, N);
        /* The Subscribe replies are still queued (no flush yet). */
        static const char shared[] = "{\"parameters\":{\"n\":1},\"continues\":true}";
        static const char after[] = "{\"parameters\":{\"n\":2},\"continues\":true}";
        VarlinkBuf *b;
        assert_int_equal(varlink_buf_new(shared, strlen(shared), &b), 0);
        for (size_t i = 0; i < t->n_subs; i++) {
                assert_int_equal(varlink_conn_reply_shared(t->subs[i], b, true), 0);
                assert_int_equal(varlink_conn_reply_serialized(t->subs[i], after, strlen(after), true), 0);
        }
        varlink_buf_unref(b);   /* the connections keep their references */
        for (int i = 0; i < N; i++) {
                json_object *r = recv_msg(t, fd[i]);
                assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { }, \"continues\": true }");
                json_object_put(r);
                r = recv_msg(t, fd[i]);
                assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { \"n\": 1 }, \"continues\": true }");
                json_object_put(r);
                r = recv_msg(t, fd[i]);
                assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { \"n\": 2 }, \"continues\": true }");
                json_object_put(r);
        }
        for (int i = 0; i < N; i++)
                close(fd[i]);
        t_free(t);
}

/* A subscriber far behind: many shared events queued, with private replies between them,
 * leave in batches of several per sendmsg(), more than the socket buffer holds, so that
 * writes end inside a batch and inside a message; every message arrives once, in order. */
static void test_shared_output_backlog(void **state) {
        T *t = t_new(NULL);
        int fd = t_connect(t, NULL);
        send_str(fd, "{\"method\":\"t.Subscribe\",\"more\":true}");
        json_object *r = recv_msg(t, fd);
        assert_null(error_of(r));
        json_object_put(r);
        assert_int_equal(t->n_subs, 1);
        enum { N = 1500 };
        for (int n = 0; n < N; n++) {
                char m[1200];
                snprintf(m, sizeof(m), "{\"parameters\":{\"n\":%d,\"pad\":\"%0*d\"},\"continues\":true}", n,
                         n % 1000, 0);
                if (n % 100 == 99) {
                        assert_int_equal(varlink_conn_reply_serialized(t->subs[0], m, strlen(m), true), 0);
                        continue;
                }
                VarlinkBuf *b;
                assert_int_equal(varlink_buf_new(m, strlen(m), &b), 0);
                assert_int_equal(varlink_conn_reply_shared(t->subs[0], b, true), 0);
                varlink_buf_unref(b);
        }
        for (int n = 0; n < N; n++) {
                r = recv_msg(t, fd);
                json_object *p, *v;
                assert_true(json_object_object_get_ex(r, "parameters", &p) && json_object_object_get_ex(p, "n", &v));
                assert_int_equal(json_object_get_int(v), n);
                json_object_put(r);
        }
        assert_false(readable(fd));
        close(fd);
        t_free(t);
}

static void queue_n(VarlinkConn *c, int n) {
        char m[64];
        snprintf(m, sizeof(m), "{\"parameters\":{\"n\":%d},\"continues\":true}", n);
        assert_int_equal(varlink_conn_reply_serialized(c, m, strlen(m), true), 0);
}

static void expect_n(T *t, int fd, int n) {
        json_object *r = recv_msg(t, fd);
        json_object *p, *v;
        assert_true(json_object_object_get_ex(r, "parameters", &p) && json_object_object_get_ex(p, "n", &v));
        assert_int_equal(json_object_get_int(v), n);
        json_object_put(r);
}

/* Held output, as agend's pipelined commit uses it (issue 12): seal() ends a batch,
 * release(false) lets exactly the sealed batches out, on whichever connections have them;
 * output queued after the seal waits for the next one; a connection all of whose output
 * went out is held again when it gets more; output queued before holding began is held
 * too. seal() and release() visit only the connections with held output (a list kept
 * when output is queued): a connection missing from that list would keep its output for
 * ever, and this test would not receive it. */
static void test_held_output_batches(void **state) {
        T *t = t_new(NULL);
        enum { N = 3 };
        int fd_of[N];
        VarlinkConn *sub[N];
        for (int i = 0; i < N; i++) {
                fd_of[i] = t_connect(t, &sub[i]);
                send_str(fd_of[i], "{\"method\":\"t.Subscribe\",\"more\":true}");
        }
        for (int i = 0; i < 100 && t->n_subs < N; i++) {
                ev_run(t->loop, EVRUN_NOWAIT);
                varlink_server_dispatch(t->server);
        }
        assert_int_equal(t->n_subs, N);
        /* Queued before holding: the Subscribe replies, and n = 0 on the first. */
        queue_n(sub[0], 0);
        varlink_server_hold_output(t->server, true);
        t_iterate(t);
        for (int i = 0; i < N; i++)
                assert_false(readable(fd_of[i]));
        varlink_server_seal(t->server);
        varlink_server_release(t->server, false);
        for (int i = 0; i < N; i++) {
                json_object *r = recv_msg(t, fd_of[i]);
                assert_string_equal(json_object_to_json_string(r), "{ \"parameters\": { }, \"continues\": true }");
                json_object_put(r);
        }
        expect_n(t, fd_of[0], 0);

        /* Batch 1 on sub 0, sealed; batch 2 on sub 1, queued after the seal. */
        queue_n(sub[0], 1);
        varlink_server_seal(t->server);
        queue_n(sub[1], 2);
        t_iterate(t);
        for (int i = 0; i < N; i++)
                assert_false(readable(fd_of[i]));
        /* Batch 1's commit is durable. */
        varlink_server_release(t->server, false);
        expect_n(t, fd_of[0], 1);
        t_iterate(t);
        assert_false(readable(fd_of[1]));
        assert_false(readable(fd_of[2]));
        /* Batch 2 sealed and released; sub 0, all of whose output went out, gets more. */
        varlink_server_seal(t->server);
        queue_n(sub[0], 3);
        varlink_server_release(t->server, false);
        expect_n(t, fd_of[1], 2);
        t_iterate(t);
        assert_false(readable(fd_of[0]));
        varlink_server_seal(t->server);
        varlink_server_release(t->server, false);
        expect_n(t, fd_of[0], 3);
        /* release(true): everything queued, sealed or not. */
        queue_n(sub[2], 4);
        queue_n(sub[0], 5);
        varlink_server_release(t->server, true);
        expect_n(t, fd_of[2], 4);
        expect_n(t, fd_of[0], 5);
        t_iterate(t);
        for (int i = 0; i < N; i++)
                assert_false(readable(fd_of[i]));
        for (int i = 0; i < N; i++)
                close(fd_of[i]);
        t_free(t);
}

/* The pipelined commit commits on the loop only when no input waits (manager.c): the
 * peek sees a connection with unread bytes and a listener with a connection to accept,
 * and nothing once they are handled. */
static void test_input_waiting(void **state) {
        T *t = t_new(NULL);
        int fd = t_connect(t, NULL);
        t_iterate(t);
        assert_false(varlink_server_input_waiting(t->server));
        send_str(fd, "{\"method\":\"t.Echo\",\"parameters\":{\"x\":1}}");
        assert_true(varlink_server_input_waiting(t->server));
        json_object *r = recv_msg(t, fd);
        json_object_put(r);
        assert_false(varlink_server_input_waiting(t->server));
        close(fd);
        t_iterate(t);
        t_iterate(t);
        assert_false(varlink_server_input_waiting(t->server));
        t_free(t);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_dispatch),
                cmocka_unit_test(test_reply_waits_for_flush),
                cmocka_unit_test(test_call_order),
                cmocka_unit_test(test_close_chain),
                cmocka_unit_test(test_high_water),
                cmocka_unit_test(test_calls_per_turn),
                cmocka_unit_test(test_output_caps),
                cmocka_unit_test(test_shared_output),
                cmocka_unit_test(test_shared_output_backlog),
                cmocka_unit_test(test_partial_timeout),
                cmocka_unit_test(test_oversized_behind_call),
                cmocka_unit_test(test_held_output_batches),
                cmocka_unit_test(test_input_waiting),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

/* SPDX-License-Identifier: MIT */
/* etcd requests as the JSON gateway wants them and its replies as etcd 3.4 sends them
 * (replies copied from a real etcd-server): base64 both ways, the prefix end, 64-bit
 * integers as strings, fields left out at their default, errors by gRPC code. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "etcd-json.h"

static void test_base64(void **state) {
        const char *plain[] = { "", "f", "fo", "foo", "foob", "fooba", "foobar" };
        const char *enc[] = { "", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy" };
        for (size_t i = 0; i < 7; i++) {
                char *e = etcd_base64_encode(plain[i], strlen(plain[i]));
                assert_string_equal(e, enc[i]);
                free(e);
                char *d;
                size_t n;
                assert_int_equal(etcd_base64_decode(enc[i], &d, &n), 0);
                assert_int_equal(n, strlen(plain[i]));
                assert_memory_equal(d, plain[i], n);
                free(d);
        }
        /* Binary bytes survive. */
        const char bin[] = { 0, (char) 0xff, '\n', '"' };
        char *e = etcd_base64_encode(bin, 4), *d;
        size_t n;
        assert_int_equal(etcd_base64_decode(e, &d, &n), 0);
        assert_int_equal(n, 4);
        assert_memory_equal(d, bin, 4);
        free(e);
        free(d);
        const char *bad[] = { "Zg=", "Z===", "Zm9v!A==", "=Zg=", "Zg==Zg==" };
        for (size_t i = 0; i < 5; i++)
                assert_int_equal(etcd_base64_decode(bad[i], &d, &n), -EINVAL);
}

static void test_prefix_end(void **state) {
        char *e = etcd_prefix_end("/agend/gpu/");
        assert_string_equal(e, "/agend/gpu0");
        free(e);
        e = etcd_prefix_end("a\xff");
        assert_string_equal(e, "b");
        free(e);
        e = etcd_prefix_end("\xff\xff");
        assert_string_equal(e, "");
        free(e);
}

static void test_requests(void **state) {
        EtcdCompare cmp = { .key = "/a/k", .target = ETCD_TARGET_CREATE, .result = ETCD_EQUAL, .number = 0 };
        EtcdOp put = { .type = ETCD_OP_PUT, .key = "/a/k", .value = "v", .lease = 7587883248373170181 };
        EtcdOp get = { .type = ETCD_OP_RANGE, .key = "/a/", .prefix = true, .sort_by_create = true, .limit = 2 };
        EtcdTxn t = { .compare = &cmp, .n_compare = 1, .success = &put, .n_success = 1, .failure = &get,
                      .n_failure = 1 };
        char *s = etcd_json_txn(&t);
        assert_non_null(s);
        assert_string_equal(s, "{\"compare\":[{\"key\":\"L2Evaw==\",\"target\":\"CREATE\",\"result\":\"EQUAL\","
                               "\"create_revision\":\"0\"}],"
                               "\"success\":[{\"request_put\":{\"key\":\"L2Evaw==\",\"value\":\"dg==\","
                               "\"lease\":\"7587883248373170181\"}}],"
                               "\"failure\":[{\"request_range\":{\"key\":\"L2Ev\",\"range_end\":\"L2Ew\","
                               "\"sort_order\":\"ASCEND\",\"sort_target\":\"CREATE\",\"limit\":\"2\"}}]}");
        free(s);
        s = etcd_json_watch_create("/a/", true, 42);
        assert_string_equal(s, "{\"create_request\":{\"key\":\"L2Ev\",\"range_end\":\"L2Ew\","
                               "\"start_revision\":\"42\",\"progress_notify\":true}}");
        free(s);
        s = etcd_json_lease_grant(10);
        assert_string_equal(s, "{\"TTL\":\"10\"}");
        free(s);
}

static void test_replies(void **state) {
        EtcdResult r;
        const char *grant = "{\"header\":{\"cluster_id\":\"324952591200643719\",\"member_id\":\"3319814642761637952\","
                            "\"revision\":\"1\",\"raft_term\":\"2\"},\"ID\":\"2324035693370153989\",\"TTL\":\"5\"}";
        assert_int_equal(etcd_json_parse(grant, strlen(grant), &r), 0);
        assert_int_equal(r.lease_id, 2324035693370153989);
        assert_int_equal(r.ttl, 5);
        assert_int_equal(r.header.revision, 1);
        assert_int_equal(r.header.member_id, 3319814642761637952u);
        etcd_result_done(&r);

        const char *txn = "{\"header\":{\"revision\":\"9\"},\"succeeded\":true,\"responses\":[{\"response_put\":"
                          "{\"header\":{\"revision\":\"9\"}}},{\"response_range\":{\"header\":{\"revision\":\"9\"},"
                          "\"kvs\":[{\"key\":\"Zm9v\",\"create_revision\":\"2\",\"mod_revision\":\"3\","
                          "\"version\":\"2\",\"value\":\"YmFy\",\"lease\":\"77\"}],\"count\":\"1\"}},"
                          "{\"response_delete_range\":{\"header\":{\"revision\":\"9\"},\"deleted\":\"1\"}}]}";
        assert_int_equal(etcd_json_parse(txn, strlen(txn), &r), 0);
        assert_true(r.succeeded);
        assert_int_equal(r.n_ops, 3);
        assert_int_equal(r.ops[0].type, ETCD_OP_PUT);
        assert_int_equal(r.ops[0].revision, 9);
        assert_int_equal(r.ops[1].type, ETCD_OP_RANGE);
        assert_int_equal(r.ops[1].n_kvs, 1);
        assert_string_equal(r.ops[1].kvs[0].key, "foo");
        assert_string_equal(r.ops[1].kvs[0].value, "bar");
        assert_int_equal(r.ops[1].kvs[0].create_revision, 2);
        assert_int_equal(r.ops[1].kvs[0].lease, 77);
        assert_int_equal(r.ops[2].type, ETCD_OP_DELETE);
        assert_int_equal(r.ops[2].deleted, 1);
        etcd_result_done(&r);

        /* A failed compare with nothing in the branch: "succeeded" left out = false. */
        const char *nope = "{\"header\":{\"revision\":\"9\"}}";
        assert_int_equal(etcd_json_parse(nope, strlen(nope), &r), 0);
        assert_false(r.succeeded);
        assert_int_equal(r.n_ops, 0);
        etcd_result_done(&r);

        /* A watch stream message: PUT is the default type and left out. */
        const char *ev = "{\"result\":{\"header\":{\"revision\":\"5\"},\"events\":[{\"kv\":{\"key\":\"Zm9v\","
                         "\"create_revision\":\"2\",\"mod_revision\":\"4\",\"version\":\"1\",\"value\":\"YmFy\"}},"
                         "{\"type\":\"DELETE\",\"kv\":{\"key\":\"Zm9v\",\"mod_revision\":\"5\"}}]}}";
        assert_int_equal(etcd_json_parse(ev, strlen(ev), &r), 0);
        assert_int_equal(r.n_events, 2);
        assert_int_equal(r.events[0].type, ETCD_EVENT_PUT);
        assert_int_equal(r.events[0].kv.mod_revision, 4);
        assert_int_equal(r.events[1].type, ETCD_EVENT_DELETE);
        assert_string_equal(r.events[1].kv.key, "foo");
        assert_string_equal(r.events[1].kv.value, "");
        etcd_result_done(&r);

        const char *created = "{\"result\":{\"header\":{\"revision\":\"2\"},\"created\":true}}";
        assert_int_equal(etcd_json_parse(created, strlen(created), &r), 0);
        assert_true(r.created);
        etcd_result_done(&r);

        const char *compacted = "{\"result\":{\"header\":{\"revision\":\"20\"},\"canceled\":true,"
                                "\"compact_revision\":\"12\",\"cancel_reason\":\"compacted\"}}";
        assert_int_equal(etcd_json_parse(compacted, strlen(compacted), &r), 0);
        assert_true(r.canceled);
        assert_int_equal(r.compact_revision, 12);
        assert_string_equal(r.message, "compacted");
        etcd_result_done(&r);
}

static void test_errors(void **state) {
        EtcdResult r;
        const char *unary = "{\"error\":\"etcdserver: requested lease not found\",\"code\":5,"
                            "\"message\":\"etcdserver: requested lease not found\"}";
        assert_int_equal(etcd_json_parse(unary, strlen(unary), &r), -ENOENT);
        assert_string_equal(r.message, "etcdserver: requested lease not found");
        etcd_result_done(&r);
        const char *stream = "{\"error\":{\"grpc_code\":14,\"http_code\":503,\"message\":\"etcdserver: no leader\","
                             "\"http_status\":\"Service Unavailable\"}}";
        assert_int_equal(etcd_json_parse(stream, strlen(stream), &r), -EAGAIN);
        assert_string_equal(r.message, "etcdserver: no leader");
        etcd_result_done(&r);
        const char *timeout = "{\"error\":\"etcdserver: request timed out\",\"code\":4}";
        assert_int_equal(etcd_json_parse(timeout, strlen(timeout), &r), -ETIMEDOUT);
        etcd_result_done(&r);
        assert_int_equal(etcd_json_parse("not json", 8, &r), -EBADMSG);
        assert_int_equal(etcd_json_parse("[1]", 3, &r), -EBADMSG);
        /* A key that is not base64 is refused, not half-read. */
        const char *badkv = "{\"kvs\":[{\"key\":\"%%%\"}]}";
        assert_int_equal(etcd_json_parse(badkv, strlen(badkv), &r), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_base64),
                cmocka_unit_test(test_prefix_end),
                cmocka_unit_test(test_requests),
                cmocka_unit_test(test_replies),
                cmocka_unit_test(test_errors),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}

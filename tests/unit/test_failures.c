/*
 * test_failures.c: the rings of recent failed requests: what is recorded,
 * field truncation, wrap-around (the newest SC_FAILURES_PER_WORKER kept),
 * merging across workers newest first, the upstream filter, the JSON of
 * GET /failures (escaping, limits), and a reader running against a writer
 * that never sees a torn entry.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "obs/failures.h"

static sc_access_record failed(const char *upstream, uint64_t t_ns, const char *reason)
{
    sc_access_record r;
    memset(&r, 0, sizeof(r));
    r.start_unix_ns = t_ns;
    r.duration_ns = 2500000;
    r.upstream_ns = -1;
    r.upstream = sc_obs_cstr(upstream);
    r.method = sc_obs_cstr("GET");
    r.path = sc_obs_cstr("/orders/42");
    r.status = 503;
    r.grpc_status = -1;
    r.reason = reason;
    r.attempts = 3;
    r.instance = sc_obs_cstr("10.0.0.8:8080");
    r.request_id = sc_obs_cstr("3f2a9c1e-0b7d-4e59-a2c4-9d8e7f6a5b4c");
    r.trace_id = sc_obs_cstr("4bf92f3577b34da6a3ce929d0e0e4736");
    r.direction = SC_OBS_OUTBOUND;
    return r;
}

static void test_records_failures_only(void **state)
{
    (void)state;
    sc_failures *f = sc_failures_new(2);
    assert_non_null(f);
    sc_failure_ring *ring = sc_failures_ring(f, 1);
    assert_non_null(ring);
    assert_null(sc_failures_ring(f, 2));
    sc_access_record ok = failed("pay", 1000, NULL);
    ok.status = 200;
    assert_false(sc_failures_record(ring, &ok));
    ok.status = 404; /* the app's client error */
    assert_false(sc_failures_record(ring, &ok));
    sc_access_record bad = failed("pay", 2000, "connect-failure");
    assert_true(sc_failures_record(ring, &bad));
    assert_false(sc_failures_record(NULL, &bad));
    assert_int_equal(sc_failures_total(f), 1);
    sc_failure v[4];
    assert_int_equal(sc_failures_snapshot(f, NULL, v, 4), 1);
    assert_int_equal(v[0].serial, 1);
    assert_int_equal(v[0].worker, 1);
    assert_int_equal(v[0].time_unix_ns, 2000);
    assert_int_equal(v[0].status, 503);
    assert_int_equal(v[0].grpc_status, -1);
    assert_int_equal(v[0].attempts, 3);
    assert_string_equal(v[0].upstream, "pay");
    assert_string_equal(v[0].instance, "10.0.0.8:8080");
    assert_string_equal(v[0].reason, "connect-failure");
    assert_string_equal(v[0].method, "GET");
    assert_string_equal(v[0].path, "/orders/42");
    assert_string_equal(v[0].request_id, "3f2a9c1e-0b7d-4e59-a2c4-9d8e7f6a5b4c");
    assert_string_equal(v[0].trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    sc_failures_free(f);
    sc_failures_free(NULL);
}

static void test_long_fields_cut(void **state)
{
    (void)state;
    sc_failures *f = sc_failures_new(1);
    char path[1000];
    memset(path, 'x', sizeof(path) - 1);
    path[sizeof(path) - 1] = 0;
    sc_access_record r = failed("pay", 1, "upstream-reset");
    r.path = sc_obs_cstr(path);
    r.upstream = sc_obs_cstr("a-very-long-upstream-name-that-goes-on-and-on-beyond-sixty-four-bytes-yes");
    sc_failures_record(sc_failures_ring(f, 0), &r);
    sc_failure v;
    assert_int_equal(sc_failures_snapshot(f, NULL, &v, 1), 1);
    assert_int_equal(strlen(v.path), sizeof(v.path) - 1);
    assert_string_equal(v.path + sizeof(v.path) - 4, "...");
    assert_int_equal(strlen(v.upstream), sizeof(v.upstream) - 1);
    assert_string_equal(v.upstream + sizeof(v.upstream) - 4, "...");
    sc_failures_free(f);
}

/* 200 failures in one ring: the newest 64 are kept, newest first. */
static void test_wraparound(void **state)
{
    (void)state;
    sc_failures *f = sc_failures_new(1);
    for (uint64_t i = 1; i <= 200; i++) {
        sc_access_record r = failed("pay", i * 1000, "upstream-timeout");
        r.attempts = (uint32_t)i;
        sc_failures_record(sc_failures_ring(f, 0), &r);
    }
    sc_failure v[300];
    size_t n = sc_failures_snapshot(f, NULL, v, 300);
    assert_int_equal(n, SC_FAILURES_PER_WORKER);
    for (size_t k = 0; k < n; k++) {
        assert_int_equal(v[k].serial, 200 - k);
        assert_int_equal(v[k].attempts, 200 - k);
        assert_int_equal(v[k].time_unix_ns, (200 - k) * 1000);
    }
    assert_int_equal(sc_failures_total(f), 200);
    assert_int_equal(sc_failures_snapshot(f, NULL, v, 5), 5); /* bounded by max */
    assert_int_equal(v[0].serial, 200);
    sc_failures_free(f);
}

/* Workers merged by time, newest first; the filter keeps one upstream. */
static void test_merge_and_filter(void **state)
{
    (void)state;
    sc_failures *f = sc_failures_new(3);
    static const struct {
        unsigned worker;
        uint64_t t;
        const char *up;
    } in[] = {{0, 10, "a"}, {1, 30, "b"}, {2, 20, "a"}, {0, 40, "b"}, {2, 50, "a"}, {1, 5, "a"}};
    for (size_t i = 0; i < SC_ARRAY_LEN(in); i++) {
        sc_access_record r = failed(in[i].up, in[i].t, "no-healthy-instance");
        sc_failures_record(sc_failures_ring(f, in[i].worker), &r);
    }
    sc_failure v[10];
    size_t n = sc_failures_snapshot(f, NULL, v, 10);
    assert_int_equal(n, 6);
    static const uint64_t order[] = {50, 40, 30, 20, 10, 5};
    for (size_t k = 0; k < n; k++)
        assert_int_equal(v[k].time_unix_ns, order[k]);
    assert_int_equal(v[0].worker, 2);
    n = sc_failures_snapshot(f, "a", v, 10);
    assert_int_equal(n, 4);
    for (size_t k = 0; k < n; k++)
        assert_string_equal(v[k].upstream, "a");
    assert_int_equal(sc_failures_snapshot(f, "nope", v, 10), 0);
    sc_failures_free(f);
}

static void test_render_json(void **state)
{
    (void)state;
    sc_failures *f = sc_failures_new(2);
    char *s = sc_failures_render_json(f, NULL, 100, 0);
    assert_string_equal(s, "[]\n");
    free(s);
    json_error_t e;
    json_t *j;

    sc_access_record r = failed("pay", 1796621477123000000ull, "circuit-open");
    r.path = sc_obs_cstr("/q?x=\"<script>\"\r\n\xff");
    r.grpc_status = 14;
    r.instance = (sc_obs_str){0};
    r.trace_id = (sc_obs_str){0};
    sc_failures_record(sc_failures_ring(f, 0), &r);
    r.start_unix_ns += 1000000;
    sc_failures_record(sc_failures_ring(f, 1), &r);
    s = sc_failures_render_json(f, NULL, 1, 1796621479123000000ull);
    j = json_loads(s, 0, &e); /* strict UTF-8 */
    if (!j)
        fail_msg("bad JSON (%s): %s", e.text, s);
    assert_true(json_is_array(j));
    assert_int_equal(json_array_size(j), 1); /* limit */
    json_t *x = json_array_get(j, 0);
    assert_string_equal(json_string_value(json_object_get(x, "time")), "2026-12-07T05:31:17.124Z");
    assert_int_equal(json_integer_value(json_object_get(x, "age_ms")), 1999);
    assert_int_equal(json_integer_value(json_object_get(x, "worker")), 1);
    assert_string_equal(json_string_value(json_object_get(x, "direction")), "outbound");
    assert_string_equal(json_string_value(json_object_get(x, "upstream")), "pay");
    assert_true(json_is_null(json_object_get(x, "instance")));
    assert_int_equal(json_integer_value(json_object_get(x, "attempts")), 3);
    assert_int_equal(json_integer_value(json_object_get(x, "status")), 503);
    assert_int_equal(json_integer_value(json_object_get(x, "grpc_status")), 14);
    assert_string_equal(json_string_value(json_object_get(x, "reason")), "circuit-open");
    assert_string_equal(json_string_value(json_object_get(x, "method")), "GET");
    assert_string_equal(json_string_value(json_object_get(x, "path")), "/q?x=\"<script>\"\r\n\xef\xbf\xbd");
    assert_true(json_real_value(json_object_get(x, "duration_ms")) == 2.5);
    assert_string_equal(json_string_value(json_object_get(x, "request_id")),
                        "3f2a9c1e-0b7d-4e59-a2c4-9d8e7f6a5b4c");
    assert_true(json_is_null(json_object_get(x, "trace_id")));
    json_decref(j);
    free(s);
    /* limits are clamped, the filter applies, NULL rings render empty */
    s = sc_failures_render_json(f, "other", 0, 0);
    assert_string_equal(s, "[]\n");
    free(s);
    s = sc_failures_render_json(f, NULL, 5000, 0);
    j = json_loads(s, 0, &e);
    assert_int_equal(json_array_size(j), 2);
    json_decref(j);
    free(s);
    s = sc_failures_render_json(NULL, NULL, 5000, 0);
    assert_string_equal(s, "[]\n");
    free(s);
    sc_failures_free(f);
}

/* Full rings in every worker, every field at its largest and escaped at
 * the worst: the document stays valid JSON within its bounds. */
static void test_render_worst_case(void **state)
{
    (void)state;
    enum { W = 4 };
    sc_failures *f = sc_failures_new(W);
    char junk[400];
    memset(junk, 0x01, sizeof(junk) - 1);
    junk[sizeof(junk) - 1] = 0;
    for (unsigned w = 0; w < W; w++)
        for (int i = 0; i < SC_FAILURES_PER_WORKER + 3; i++) {
            sc_access_record r = failed(junk, (uint64_t)i + 1, junk);
            r.instance = r.method = r.path = r.request_id = r.trace_id = sc_obs_cstr(junk);
            sc_failures_record(sc_failures_ring(f, w), &r);
        }
    char *s = sc_failures_render_json(f, NULL, SC_FAILURES_LIMIT_MAX, 0);
    assert_non_null(s);
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    assert_non_null(j);
    assert_int_equal(json_array_size(j), W * SC_FAILURES_PER_WORKER);
    json_decref(j);
    free(s);
    sc_failures_free(f);
}

/* ---- a reader against a writer ---- */

typedef struct race {
    sc_failures *f;
    _Atomic bool stop;
    unsigned long checked, skipped_none;
} race;

/* Every field of entry i is derived from i, so a torn copy shows. */
static void fill(uint64_t i, sc_access_record *r, char *path, char *rid)
{
    snprintf(path, 64, "/p/%llu/%llu", (unsigned long long)i, (unsigned long long)(i * 7));
    snprintf(rid, 64, "rid-%llu", (unsigned long long)i);
    *r = failed(i % 2 ? "odd" : "even", i, "upstream-reset");
    r->attempts = (uint32_t)i;
    r->duration_ns = i * 3;
    r->status = 500 + (int)(i % 4);
    r->path = sc_obs_cstr(path);
    r->request_id = sc_obs_cstr(rid);
}

static void *writer_main(void *arg)
{
    race *x = arg;
    sc_failure_ring *ring = sc_failures_ring(x->f, 0);
    for (uint64_t i = 1; !atomic_load(&x->stop); i++) {
        sc_access_record r;
        char path[64], rid[64];
        fill(i, &r, path, rid);
        sc_failures_record(ring, &r);
    }
    return NULL;
}

static void test_concurrent_reader(void **state)
{
    (void)state;
    race x = {.f = sc_failures_new(1)};
    pthread_t th;
    pthread_create(&th, NULL, writer_main, &x);
    sc_failure v[SC_FAILURES_PER_WORKER];
    uint64_t until = sc_now_ms() + 300;
    unsigned rounds = 0;
    while (sc_now_ms() < until || rounds < 50) {
        size_t n = sc_failures_snapshot(x.f, NULL, v, SC_FAILURES_PER_WORKER);
        rounds++;
        for (size_t k = 0; k < n; k++) {
            uint64_t i = v[k].attempts;
            sc_access_record r;
            char path[64], rid[64];
            fill(i, &r, path, rid);
            assert_int_equal(v[k].serial, i);
            assert_int_equal(v[k].time_unix_ns, i);
            assert_int_equal(v[k].duration_ns, i * 3);
            assert_int_equal(v[k].status, 500 + (int)(i % 4));
            assert_string_equal(v[k].path, path);
            assert_string_equal(v[k].request_id, rid);
            assert_string_equal(v[k].upstream, i % 2 ? "odd" : "even");
            if (k)
                assert_true(v[k].serial < v[k - 1].serial);
            x.checked++;
        }
    }
    atomic_store(&x.stop, true);
    pthread_join(th, NULL);
    assert_true(x.checked > 0);
    /* once the writer is quiet every slot reads back */
    assert_int_equal(sc_failures_snapshot(x.f, NULL, v, SC_FAILURES_PER_WORKER), SC_FAILURES_PER_WORKER);
    sc_failures_free(x.f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records_failures_only),
        cmocka_unit_test(test_long_fields_cut),
        cmocka_unit_test(test_wraparound),
        cmocka_unit_test(test_merge_and_filter),
        cmocka_unit_test(test_render_json),
        cmocka_unit_test(test_render_worst_case),
        cmocka_unit_test(test_concurrent_reader),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

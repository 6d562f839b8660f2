/* The request path's tables: the failure table (proxy/fail.h) is complete
 * and says what the sidecar answers; the phases have names; each route gets
 * the admission stages and observers its configuration asks for, in the
 * registry's order (proxy/stage.h, admit.c); a request through the
 * in-process data plane leaves every stage and observer settled. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>

#include "driver.h"
#include "http/grpc.h"
#include "proxy/stage.h"
#include "sidecar.h"

static void test_fail_table_complete(void **state)
{
    (void)state;
    for (int f = SC_FAIL_NONE + 1; f < SC_FAIL_KINDS; f++) {
        const sc_fail_info *fi = sc_fail_info_of((sc_fail)f);
        assert_non_null(fi->reason);
        assert_true(strlen(fi->reason) > 0);
        assert_non_null(fi->detail);
        assert_true(strlen(fi->detail) > 0);
        assert_in_range(fi->http_status, 400, 599);
        assert_in_range(fi->grpc_status, 1, SC_GRPC_STATUS_MAX);
        for (int g = SC_FAIL_NONE + 1; g < f; g++)
            assert_string_not_equal(fi->reason, sc_fail_reason((sc_fail)g));
    }
    assert_string_equal(sc_fail_reason(SC_FAIL_KINDS), "unknown");
    assert_string_equal(sc_fail_reason((sc_fail)-1), "unknown");
}

static void test_fail_table_answers(void **state)
{
    (void)state;
    static const struct {
        sc_fail f;
        const char *reason;
        int http, grpc;
        uint32_t cond;
    } want[] = {
        {SC_FAIL_NO_INSTANCE, "no-healthy-instance", 503, SC_GRPC_UNAVAILABLE, 0},
        {SC_FAIL_CONNECT, "connect-failure", 503, SC_GRPC_UNAVAILABLE, SC_COND_CONNECT_FAILURE},
        {SC_FAIL_CONNECT_TIMEOUT, "connect-timeout", 503, SC_GRPC_UNAVAILABLE, SC_COND_CONNECT_FAILURE},
        {SC_FAIL_RESET, "upstream-reset", 502, SC_GRPC_UNAVAILABLE, SC_COND_RESET},
        {SC_FAIL_PROTOCOL, "upstream-protocol-error", 502, SC_GRPC_INTERNAL, SC_COND_RESET},
        {SC_FAIL_TIMEOUT, "upstream-timeout", 504, SC_GRPC_DEADLINE_EXCEEDED, SC_COND_TIMEOUT},
        {SC_FAIL_TRY_TIMEOUT, "upstream-per-try-timeout", 504, SC_GRPC_DEADLINE_EXCEEDED, SC_COND_TIMEOUT},
        {SC_FAIL_REFUSED_STREAM, "upstream-refused-stream", 503, SC_GRPC_UNAVAILABLE, SC_COND_REFUSED_STREAM},
        {SC_FAIL_OVERLOAD, "bulkhead-full", 503, SC_GRPC_RESOURCE_EXHAUSTED, 0},
        {SC_FAIL_QUEUE_TIMEOUT, "bulkhead-queue-timeout", 503, SC_GRPC_RESOURCE_EXHAUSTED, 0},
        {SC_FAIL_CIRCUIT_OPEN, "circuit-open", 503, SC_GRPC_UNAVAILABLE, 0},
        {SC_FAIL_FORBIDDEN, "caller-not-allowed", 403, SC_GRPC_PERMISSION_DENIED, 0},
        {SC_FAIL_AUTHZ_UNAVAILABLE, "authz-unavailable", 503, SC_GRPC_UNAVAILABLE, 0},
        {SC_FAIL_HEADERS_TOO_LARGE, "request-headers-too-large", 431, SC_GRPC_RESOURCE_EXHAUSTED, 0},
        {SC_FAIL_METHOD_UNSUPPORTED, "method-not-supported", 501, SC_GRPC_UNIMPLEMENTED, 0},
        {SC_FAIL_BAD_REQUEST, "bad-request", 400, SC_GRPC_INTERNAL, 0},
        {SC_FAIL_NO_MEMORY, "sidecar-out-of-memory", 503, SC_GRPC_RESOURCE_EXHAUSTED, 0},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(want); i++) {
        const sc_fail_info *fi = sc_fail_info_of(want[i].f);
        assert_string_equal(fi->reason, want[i].reason);
        assert_int_equal(fi->http_status, want[i].http);
        assert_int_equal(fi->grpc_status, want[i].grpc);
        assert_int_equal(sc_fail_cond(want[i].f), want[i].cond);
    }
    /* What outlier detection counts against an instance. */
    assert_true(sc_fail_cond(SC_FAIL_CONNECT) & SC_FAIL_GATEWAY_CONDS);
    assert_true(sc_fail_cond(SC_FAIL_REFUSED_STREAM) & SC_FAIL_GATEWAY_CONDS);
    assert_false(sc_fail_cond(SC_FAIL_TIMEOUT) & SC_FAIL_GATEWAY_CONDS);
    /* The request's own faults name the listener, load shedding is not logged per request. */
    assert_true(sc_fail_info_of(SC_FAIL_BAD_REQUEST)->flags & SC_FAIL_F_REQUEST);
    assert_false(sc_fail_info_of(SC_FAIL_RESET)->flags & SC_FAIL_F_REQUEST);
    assert_true(sc_fail_info_of(SC_FAIL_OVERLOAD)->flags & SC_FAIL_F_QUIET);
}

static void test_phase_names(void **state)
{
    (void)state;
    for (int p = 0; p < SC_PHASE_COUNT; p++) {
        assert_string_not_equal(sc_phase_name((sc_phase)p), "?");
        for (int q = 0; q < p; q++)
            assert_string_not_equal(sc_phase_name((sc_phase)p), sc_phase_name((sc_phase)q));
    }
    assert_string_equal(sc_phase_name(SC_PHASE_PARKED), "parked");
    assert_string_equal(sc_phase_name(SC_PHASE_COUNT), "?");
}

static const char config_yaml[] =
    "service: {name: pipe}\n"
    "admin: {listen: 127.0.0.1:19000}\n"
    "inbound: {listen: 127.0.0.1:15001, app: '@UPSTREAM@', max_concurrent: 10}\n"
    "upstreams:\n"
    "  - upstream: plain\n"
    "    protocol: http1\n"
    "    listen: 127.0.0.1:15002\n"
    "    discovery: {static: ['@UPSTREAM@']}\n"
    "  - upstream: guarded\n"
    "    protocol: grpc\n"
    "    listen: 127.0.0.1:15003\n"
    "    discovery: {static: ['@UPSTREAM@']}\n"
    "    retries: {max_attempts: 2, on: [connect-failure]}\n"
    "    outlier: {consecutive_failures: 3, eject_for: 10s}\n";

/* The names of a route's stages (or observers), comma-separated. */
static void names(const sc_pipeline *p, bool observers, char *out, size_t cap)
{
    out[0] = 0;
    unsigned n = observers ? p->n_observers : p->n_stages;
    for (unsigned i = 0; i < n; i++) {
        const char *nm = observers ? p->observer[i]->name : p->stage[i]->name;
        strncat(out, i ? "," : "", cap - strlen(out) - 1);
        strncat(out, nm, cap - strlen(out) - 1);
    }
}

static void test_pipelines_follow_the_config(void **state)
{
    (void)state;
    char err[256], buf[256];
    sc_drv *d = sc_drv_new(config_yaml, err, sizeof(err));
    if (!d)
        fail_msg("driver: %s", err);
    sidecar *sc = sc_drv_sidecar(d);
    assert_int_equal(sc->n_routes, 3);
    const sc_route *in = &sc->routes[0], *plain = &sc->routes[1], *guarded = &sc->routes[2];
    assert_true(in->inbound);
    /* No tls.allow, no tls.authorize: the inbound route has its bulkhead only. */
    names(in->pipeline, false, buf, sizeof(buf));
    assert_string_equal(buf, "bulkhead");
    /* The access observer is on every route (the failure rings are always on). */
    names(in->pipeline, true, buf, sizeof(buf));
    assert_string_equal(buf, "access-log");
    /* Every outbound route has a breaker and a bulkhead (counted even when disabled). */
    names(plain->pipeline, false, buf, sizeof(buf));
    assert_string_equal(buf, "circuit-breaker,bulkhead");
    names(plain->pipeline, true, buf, sizeof(buf));
    assert_string_equal(buf, "access-log");
    /* the access observer hears attempts and completions, with their timings */
    assert_true(plain->pipeline->hooks & SC_PIPE_TIMINGS);
    names(guarded->pipeline, false, buf, sizeof(buf));
    assert_string_equal(buf, "circuit-breaker,retry-budget,bulkhead");
    names(guarded->pipeline, true, buf, sizeof(buf));
    assert_string_equal(buf, "outlier-detection,access-log");
    assert_true(guarded->pipeline->hooks & SC_PIPE_ATTEMPT_END);
    assert_true(guarded->pipeline->hooks & SC_PIPE_TIMINGS);
    /* settle goes to the breaker, release to the bulkhead, by position */
    assert_int_equal(guarded->pipeline->settle_mask, 1u << 0);
    assert_int_equal(guarded->pipeline->release_mask, 1u << 2);
    /* The upstream codec follows the protocol. */
    assert_ptr_not_equal(plain->uc, guarded->uc);
    sc_drv_free(d);
}

static void test_request_settles_every_stage(void **state)
{
    (void)state;
    char err[256];
    sc_drv *d = sc_drv_new(config_yaml, err, sizeof(err));
    if (!d)
        fail_msg("driver: %s", err);
    sidecar *sc = sc_drv_sidecar(d);
    static const char req[] = "GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_int_equal(sc_drv_send(d, req, sizeof(req) - 1), 0);
    assert_int_equal(sc_drv_connect(d, 1), 0);
    sc_drv_run(d, 2000);
    size_t len;
    const uint8_t *got = sc_drv_received(d, &len, NULL);
    assert_true(len > 12 && memcmp(got, "HTTP/1.1 200", 12) == 0);
    /* The bulkhead slot came back (release), the breaker counted one success (settle). */
    sc_bulkhead_view bv;
    sc_bulkhead_snapshot(&sc->routes[1].bulkhead, &bv);
    assert_int_equal(bv.active, 0);
    assert_int_equal(bv.admitted, 1);
    sc_breaker_view v;
    sc_breaker_snapshot(&sc->routes[1].breaker, sc_now_ms(), &v);
    assert_int_equal(v.calls, 1);
    assert_int_equal(v.failures, 0);
    sc_drv_free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_table_complete),
        cmocka_unit_test(test_fail_table_answers),
        cmocka_unit_test(test_phase_names),
        cmocka_unit_test(test_pipelines_follow_the_config),
        cmocka_unit_test(test_request_settles_every_stage),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

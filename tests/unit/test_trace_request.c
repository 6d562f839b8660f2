/* Unit tests for trace/trace.h (the spans of one request on its worker) and
 * the tracing: section of the configuration. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "trace/trace.h"

#define TP "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

static int wakes;
static void wake(void *arg)
{
    (void)arg;
    wakes++;
}

typedef struct {
    sc_trace_policy pol;
    sc_trace_worker tw;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->pol.formats_in = SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI;
    f->pol.formats_out = SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3;
    f->pol.force_header = "x-force";
    sc_sampler_init(&f->pol.sampler, 1);
    assert_int_equal(sc_trace_worker_init(&f->tw, &f->pol, 8), 0);
    f->tw.wake = wake;
    f->tw.wake_at = 3;
    wakes = 0;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    sc_trace_worker_free(&f->tw);
    free(f);
    return 0;
}

static const char *hdr(const sc_trace_out *o, const char *name)
{
    static char v[1024];
    for (size_t i = 0; i < o->n; i++)
        if (strlen(name) == o->h[i].name_len && memcmp(o->h[i].name, name, o->h[i].name_len) == 0) {
            memcpy(v, o->h[i].value, o->h[i].value_len);
            v[o->h[i].value_len] = 0;
            return v;
        }
    return NULL;
}

static const sc_span_attr *attr(const sc_span *s, sc_span_attr_key k)
{
    for (unsigned i = 0; i < s->n_attrs; i++)
        if (s->attrs[i].key == k)
            return &s->attrs[i];
    return NULL;
}

static void test_request_with_retry(void **state)
{
    fixture *f = *state;
    sc_trace_in in;
    sc_trace_in_init(&in, f->pol.force_header);
    assert_true(sc_trace_in_header(&in, "traceparent", 11, TP, strlen(TP)));
    assert_true(sc_trace_in_header(&in, "tracestate", 10, "congo=t61rcWkgMzE", 17));
    sc_trace_req rq;
    sc_trace_req_start(&f->tw, &rq, &in, SC_SPAN_KIND_SERVER, 1000);
    assert_true(rq.active);
    assert_true(rq.sampled);
    assert_true(rq.ctx.valid);
    char th[33], sh[17];
    assert_true(sc_trace_req_ids(&rq, th, sh));
    assert_string_equal(th, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_int_equal(strlen(sh), 16);
    sc_trace_req_event(&rq, SC_EV_BULKHEAD_QUEUED, 1100, 2);

    sc_trace_out out;
    assert_int_equal(sc_trace_attempt_start(&f->tw, &rq, 1, 1200, &out), 3);
    char want[128];
    char ah[17];
    sc_trace_hex(rq.attempt_span_id, 8, ah);
    ah[16] = 0;
    snprintf(want, sizeof(want), "00-4bf92f3577b34da6a3ce929d0e0e4736-%s-01", ah);
    assert_string_equal(hdr(&out, "traceparent"), want);
    assert_string_equal(hdr(&out, "tracestate"), "congo=t61rcWkgMzE");
    snprintf(want, sizeof(want), "4bf92f3577b34da6a3ce929d0e0e4736-%s-1-%s", ah, sh);
    assert_string_equal(hdr(&out, "b3"), want);
    sc_trace_attempt_event(&rq, SC_EV_PUSHBACK, 1300, 50);
    sc_span *s = sc_trace_attempt_end(&f->tw, &rq, "GET", 3, 1400);
    assert_non_null(s);
    assert_int_equal(s->kind, SC_SPAN_KIND_CLIENT);
    assert_memory_equal(s->parent_id, rq.span_id, 8);
    assert_memory_equal(s->span_id, rq.attempt_span_id, 8);
    assert_int_equal(s->start_ns, 1200);
    assert_int_equal(s->end_ns, 1400);
    assert_int_equal(attr(s, SC_ATTR_ATTEMPT)->i, 1);
    assert_null(attr(s, SC_ATTR_RESEND_COUNT));
    assert_int_equal(s->n_events, 1);
    assert_int_equal(s->events[0].kind, SC_EV_PUSHBACK);
    sc_span_int(s, SC_ATTR_HTTP_STATUS, 503);
    sc_trace_commit(&f->tw, s);
    /* an event after the attempt ended goes nowhere */
    sc_trace_attempt_event(&rq, SC_EV_PUSHBACK, 1450, 1);

    sc_trace_req_event(&rq, SC_EV_BACKOFF, 1450, 25);
    uint8_t first[8];
    memcpy(first, rq.attempt_span_id, 8);
    sc_trace_attempt_start(&f->tw, &rq, 2, 1500, &out);
    assert_memory_not_equal(first, rq.attempt_span_id, 8);
    s = sc_trace_attempt_end(&f->tw, &rq, "GET", 3, 1900);
    assert_int_equal(attr(s, SC_ATTR_ATTEMPT)->i, 2);
    assert_int_equal(attr(s, SC_ATTR_RESEND_COUNT)->i, 1);
    assert_int_equal(s->n_events, 0);
    sc_trace_commit(&f->tw, s);
    assert_int_equal(wakes, 0);

    s = sc_trace_req_end(&f->tw, &rq, "GET", 3, 2000);
    assert_non_null(s);
    assert_int_equal(s->kind, SC_SPAN_KIND_SERVER);
    assert_true(s->parent_remote);
    const uint8_t caller[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
    assert_memory_equal(s->parent_id, caller, 8);
    assert_int_equal(s->start_ns, 1000);
    assert_int_equal(attr(s, SC_ATTR_ATTEMPTS)->i, 2);
    assert_int_equal(s->n_events, 2);
    assert_int_equal(s->events[1].kind, SC_EV_BACKOFF);
    sc_trace_commit(&f->tw, s);
    assert_int_equal(wakes, 1); /* the third span reached wake_at */
    assert_int_equal(sc_span_ring_pending(&f->tw.ring), 3);
}

static void test_new_trace_and_sampling(void **state)
{
    fixture *f = *state;
    sc_trace_req rq;
    /* no headers, ratio 1: a new root trace */
    sc_trace_req_start(&f->tw, &rq, NULL, SC_SPAN_KIND_CLIENT, 10);
    assert_true(rq.active && rq.sampled);
    assert_false(rq.ctx.valid);
    assert_false(sc_trace_id_is_zero(rq.ctx.trace_id, 16));
    sc_span *s = sc_trace_req_end(&f->tw, &rq, "x", 1, 20);
    assert_true(sc_trace_id_is_zero(s->parent_id, 8));
    assert_false(s->parent_remote);
    assert_null(attr(s, SC_ATTR_ATTEMPTS));
    sc_trace_commit(&f->tw, s);

    /* ratio 0: not sampled, but headers still go out (sampled flag clear) */
    sc_sampler_init(&f->pol.sampler, 0);
    sc_trace_req_start(&f->tw, &rq, NULL, SC_SPAN_KIND_CLIENT, 10);
    assert_true(rq.active);
    assert_false(rq.sampled);
    sc_trace_out out;
    assert_int_equal(sc_trace_attempt_start(&f->tw, &rq, 1, 11, &out), 2);
    assert_non_null(strstr(hdr(&out, "traceparent"), "-00"));
    assert_null(sc_trace_attempt_end(&f->tw, &rq, "x", 1, 12));
    assert_null(sc_trace_req_end(&f->tw, &rq, "x", 1, 13));
    sc_trace_commit(&f->tw, NULL);
    assert_int_equal(sc_span_ring_pending(&f->tw.ring), 1);

    /* the force header wins over ratio 0 and a caller's "not sampled" */
    sc_trace_in in;
    sc_trace_in_init(&in, f->pol.force_header);
    sc_trace_in_header(&in, "traceparent", 11, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", 55);
    sc_trace_in_header(&in, "x-force", 7, "1", 1);
    sc_trace_req_start(&f->tw, &rq, &in, SC_SPAN_KIND_SERVER, 10);
    assert_true(rq.sampled);
    assert_int_equal(rq.sampled_by, SC_SAMPLE_BY_FORCE);
    sc_trace_attempt_start(&f->tw, &rq, 1, 11, &out);
    assert_non_null(strstr(hdr(&out, "traceparent"), "-01"));

    /* a caller's sampled flag wins over ratio 0 */
    sc_trace_in_init(&in, NULL);
    sc_trace_in_header(&in, "traceparent", 11, TP, strlen(TP));
    sc_trace_req_start(&f->tw, &rq, &in, SC_SPAN_KIND_SERVER, 10);
    assert_true(rq.sampled);
    assert_int_equal(rq.sampled_by, SC_SAMPLE_BY_PARENT);

    /* tracing off */
    sc_trace_req_start(NULL, &rq, &in, SC_SPAN_KIND_SERVER, 10);
    assert_false(rq.active);
    assert_int_equal(sc_trace_attempt_start(NULL, &rq, 1, 11, &out), 0);
    assert_null(sc_trace_attempt_end(NULL, &rq, "x", 1, 12));
    assert_null(sc_trace_req_end(NULL, &rq, "x", 1, 12));
    char th[33], sh[17];
    assert_false(sc_trace_req_ids(&rq, th, sh));
    assert_string_equal(th, "");
    sc_trace_req_event(&rq, SC_EV_BACKOFF, 1, 1);
    sc_trace_commit(NULL, NULL);
}

static void test_ring_full_and_events(void **state)
{
    fixture *f = *state;
    sc_trace_req rq;
    sc_trace_req_start(&f->tw, &rq, NULL, SC_SPAN_KIND_CLIENT, 10);
    for (int i = 0; i < SC_TRACE_REQ_EVENTS + 2; i++)
        sc_trace_req_event(&rq, SC_EV_BACKOFF, 11 + (uint64_t)i, i);
    sc_trace_out out;
    sc_trace_attempt_start(&f->tw, &rq, 1, 20, &out);
    for (int i = 0; i < SC_TRACE_ATTEMPT_EVENTS + 1; i++)
        sc_trace_attempt_event(&rq, SC_EV_FIRST_BYTE, 21, 200);
    sc_span *s = sc_trace_attempt_end(&f->tw, &rq, "x", 1, 30);
    assert_int_equal(s->n_events, SC_TRACE_ATTEMPT_EVENTS);
    assert_int_equal(s->dropped_events, 1);
    sc_trace_commit(&f->tw, s);
    s = sc_trace_req_end(&f->tw, &rq, "x", 1, 40);
    assert_int_equal(s->n_events, SC_TRACE_REQ_EVENTS);
    assert_int_equal(s->dropped_events, 2);
    sc_trace_commit(&f->tw, s);
    /* fill the ring (8): then spans are dropped and counted */
    for (int i = 0; i < 6; i++) {
        sc_trace_req_start(&f->tw, &rq, NULL, SC_SPAN_KIND_CLIENT, 10);
        sc_trace_commit(&f->tw, sc_trace_req_end(&f->tw, &rq, "x", 1, 11));
    }
    assert_int_equal(sc_span_ring_pending(&f->tw.ring), 8);
    sc_trace_req_start(&f->tw, &rq, NULL, SC_SPAN_KIND_CLIENT, 10);
    assert_null(sc_trace_req_end(&f->tw, &rq, "x", 1, 11));
    assert_int_equal(atomic_load(&f->tw.ring.dropped), 1);
    /* an attempt left open when the request ends is not recorded */
    sc_span_ring_release(&f->tw.ring, 8);
    sc_trace_req_start(&f->tw, &rq, NULL, SC_SPAN_KIND_CLIENT, 10);
    sc_trace_attempt_start(&f->tw, &rq, 1, 20, &out);
    sc_trace_commit(&f->tw, sc_trace_req_end(&f->tw, &rq, "x", 1, 40));
    assert_null(sc_trace_attempt_end(&f->tw, &rq, "x", 1, 41));
    assert_int_equal(sc_span_ring_pending(&f->tw.ring), 1);
}

/* ---- configuration ---- */

static sc_config *load(const char *yaml, sc_diags *d)
{
    sc_addr_set_dns_enabled(false);
    sc_config *cfg = NULL;
    sc_config_load_string(yaml, strlen(yaml), "t.yaml", "/tmp", &cfg, d);
    return cfg;
}

static void expect_error(const char *tracing, const char *field, const char *needle)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml), "service: {name: web}\ntracing:\n%s\n", tracing);
    sc_diags d = {0};
    sc_config *cfg = load(yaml, &d);
    if (cfg || d.n == 0)
        fail_msg("accepted:\n%s", tracing);
    bool found = false;
    for (size_t i = 0; i < d.n; i++)
        if (strcmp(d.v[i].field, field) == 0 && strstr(d.v[i].msg, needle))
            found = true;
    if (!found) {
        sc_diags_print(&d, stderr);
        fail_msg("no '%s' error naming %s", needle, field);
    }
    sc_diags_free(&d);
}

static void test_config(void **state)
{
    (void)state;
    sc_diags d = {0};
    /* absent: off */
    sc_config *cfg = load("service: {name: web}\n", &d);
    assert_non_null(cfg);
    assert_false(cfg->tracing.enabled);
    sc_config_free(cfg);
    /* present and empty: on, defaults */
    cfg = load("service: {name: web}\ntracing: {}\n", &d);
    assert_non_null(cfg);
    assert_true(cfg->tracing.enabled);
    assert_null(cfg->tracing.endpoint);
    assert_true(cfg->tracing.sample_ratio == 1.0);
    assert_int_equal(cfg->tracing.propagation_in, SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI);
    assert_int_equal(cfg->tracing.propagation_out, SC_TRACE_FMT_W3C);
    assert_int_equal(cfg->tracing.batch_size, 512);
    assert_int_equal(cfg->tracing.batch_interval_ms, 5000);
    assert_int_equal(cfg->tracing.queue_size, 2048);
    assert_int_equal(cfg->tracing.timeout_ms, 10000);
    json_t *j = sc_config_to_json(cfg);
    json_t *t = json_object_get(j, "tracing");
    assert_string_equal(json_string_value(json_object_get(t, "endpoint")), "http://127.0.0.1:4318/v1/traces");
    assert_string_equal(json_string_value(json_object_get(t, "batch_interval")), "5s");
    json_decref(j);
    sc_config_free(cfg);
    /* everything */
    cfg = load("service: {name: web}\n"
               "tracing:\n"
               "  enabled: false\n"
               "  endpoint: https://collector.example:4318\n"
               "  sample_ratio: 0.25\n"
               "  propagation: {in: [b3multi, w3c], out: [w3c, b3, b3multi]}\n"
               "  force_header: X-Debug-Trace\n"
               "  batch_size: 100\n"
               "  batch_interval: 200ms\n"
               "  queue_size: 64\n"
               "  timeout: 2s\n",
               &d);
    if (!cfg)
        sc_diags_print(&d, stderr);
    assert_non_null(cfg);
    assert_false(cfg->tracing.enabled);
    assert_string_equal(cfg->tracing.endpoint, "https://collector.example:4318/v1/traces");
    assert_true(cfg->tracing.sample_ratio == 0.25);
    assert_int_equal(cfg->tracing.propagation_in, SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3MULTI);
    assert_int_equal(cfg->tracing.propagation_out, SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI);
    assert_string_equal(cfg->tracing.force_header, "x-debug-trace");
    assert_int_equal(cfg->tracing.batch_size, 100);
    assert_int_equal(cfg->tracing.batch_interval_ms, 200);
    assert_int_equal(cfg->tracing.queue_size, 64);
    assert_int_equal(cfg->tracing.timeout_ms, 2000);
    j = sc_config_to_json(cfg);
    t = json_object_get(j, "tracing");
    assert_int_equal(json_array_size(json_object_get(json_object_get(t, "propagation"), "out")), 3);
    assert_string_equal(json_string_value(json_object_get(t, "force_header")), "x-debug-trace");
    json_decref(j);
    sc_config_free(cfg);
    /* a path is kept; empty lists are allowed */
    cfg = load("service: {name: web}\ntracing: {endpoint: 'http://c:1/otlp/v1/traces?x=1', "
               "propagation: {in: [], out: []}}\n",
               &d);
    assert_non_null(cfg);
    assert_string_equal(cfg->tracing.endpoint, "http://c:1/otlp/v1/traces?x=1");
    assert_int_equal(cfg->tracing.propagation_in, 0);
    assert_int_equal(cfg->tracing.propagation_out, 0);
    sc_config_free(cfg);
    sc_diags_free(&d);

    expect_error("  endpoint: ftp://x/", "tracing.endpoint", "http:// or https://");
    expect_error("  endpoint: http://", "tracing.endpoint", "no host");
    expect_error("  endpoint: 'http://a b/'", "tracing.endpoint", "spaces");
    expect_error("  endpoint: http://u:p@host/v1/traces", "tracing.endpoint", "user information");
    expect_error("  endpoint: http://host?x", "tracing.endpoint", "query");
    expect_error("  sample_ratio: 1.5", "tracing.sample_ratio", "ratio");
    expect_error("  sample_ratio: -1", "tracing.sample_ratio", "ratio");
    expect_error("  propagation: {in: [w3c, zipkin]}", "tracing.propagation.in[1]", "not a trace header format");
    expect_error("  propagation: {out: [b3, b3]}", "tracing.propagation.out[1]", "twice");
    expect_error("  propagation: {out: w3c}", "tracing.propagation.out", "list");
    expect_error("  propagation: {sideways: [w3c]}", "tracing.propagation.sideways", "");
    expect_error("  force_header: 'x debug'", "tracing.force_header", "not a header name");
    expect_error("  force_header: traceparent", "tracing.force_header", "trace header");
    expect_error("  force_header: X-B3-Sampled", "tracing.force_header", "trace header");
    expect_error("  batch_size: 0", "tracing.batch_size", "");
    expect_error("  batch_size: 100000", "tracing.batch_size", "");
    expect_error("  batch_interval: 1ms", "tracing.batch_interval", "");
    expect_error("  batch_interval: 2h", "tracing.batch_interval", "1h");
    expect_error("  queue_size: 1", "tracing.queue_size", "");
    expect_error("  timeout: 5m", "tracing.timeout", "1m");
    expect_error("  enabled: maybe", "tracing.enabled", "");
    expect_error("  colour: blue", "tracing.colour", "");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_request_with_retry, setup, teardown),
        cmocka_unit_test_setup_teardown(test_new_trace_and_sampling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ring_full_and_events, setup, teardown),
        cmocka_unit_test(test_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

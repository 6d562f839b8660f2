/* Unit tests for trace/span.h and trace/otlp.h: span records (limits,
 * cutting, replacing), the SPSC ring (full, wrap-around, two threads), and
 * the OTLP/JSON body read back with jansson field by field. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace/otlp.h"
#include "trace/span.h"

static const uint8_t TID[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
static const uint8_t SID[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
static const uint8_t PID[8] = {0xb9, 0xc7, 0xc9, 0x89, 0xf9, 0x79, 0x18, 0xe1};

static const sc_span_attr *find_attr(const sc_span *s, sc_span_attr_key k)
{
    for (unsigned i = 0; i < s->n_attrs; i++)
        if (s->attrs[i].key == k)
            return &s->attrs[i];
    return NULL;
}

static void test_span_fields(void **state)
{
    (void)state;
    sc_span *s = calloc(1, sizeof(*s));
    sc_span_init(s, TID, SID, PID, SC_SPAN_KIND_CLIENT, "GET", 3, 1000);
    sc_span_cstr(s, SC_ATTR_HTTP_METHOD, "GET");
    sc_span_int(s, SC_ATTR_HTTP_STATUS, 503);
    sc_span_int(s, SC_ATTR_HTTP_STATUS, 200); /* replaced, not added */
    sc_span_cstr(s, SC_ATTR_REASON, "connect-failure");
    sc_span_cstr(s, SC_ATTR_REASON, NULL);    /* nothing */
    assert_int_equal(s->n_attrs, 3);
    assert_int_equal(find_attr(s, SC_ATTR_HTTP_STATUS)->i, 200);
    /* url.path is cut with a mark */
    char path[1000];
    memset(path, 'p', sizeof(path));
    sc_span_str(s, SC_ATTR_URL_PATH, path, sizeof(path));
    const sc_span_attr *a = find_attr(s, SC_ATTR_URL_PATH);
    assert_non_null(a);
    assert_int_equal(a->len, SC_SPAN_PATH_MAX);
    assert_memory_equal(s->pool + a->off + a->len - 3, "...", 3);
    /* the pool runs out: counted as dropped */
    sc_span_str(s, SC_ATTR_CALLER, path, SC_SPAN_POOL);
    assert_null(find_attr(s, SC_ATTR_CALLER));
    assert_int_equal(s->dropped_attrs, 1);
    /* more keys than slots */
    for (int k = 0; k < SC_ATTR__COUNT; k++)
        sc_span_int(s, (sc_span_attr_key)k, k);
    assert_int_equal(s->n_attrs, SC_SPAN_MAX_ATTRS);
    assert_true(s->dropped_attrs > 1);
    sc_span_int(s, (sc_span_attr_key)999, 1); /* unknown key: ignored */
    /* events */
    for (int i = 0; i < SC_SPAN_MAX_EVENTS + 3; i++)
        sc_span_event_add(s, SC_EV_BACKOFF, 1100 + (uint64_t)i, 25);
    assert_int_equal(s->n_events, SC_SPAN_MAX_EVENTS);
    assert_int_equal(s->dropped_events, 3);
    /* status: a message only with an error */
    sc_span_set_status(s, SC_SPAN_STATUS_OK, "ignored");
    assert_int_equal(s->status_len, 0);
    char longmsg[400];
    memset(longmsg, 'm', sizeof(longmsg) - 1);
    longmsg[sizeof(longmsg) - 1] = 0;
    sc_span_set_status(s, SC_SPAN_STATUS_ERROR, longmsg);
    assert_int_equal(s->status_len, SC_SPAN_STATUS_MAX);
    /* end before start is clamped */
    sc_span_end(s, 10);
    assert_int_equal(s->end_ns, 1000);
    /* a long name is cut */
    sc_span_init(s, TID, SID, NULL, SC_SPAN_KIND_SERVER, path, sizeof(path), 5);
    assert_int_equal(s->name_len, SC_SPAN_NAME_MAX);
    assert_true(sc_trace_id_is_zero(s->parent_id, 8));
    assert_int_equal(s->n_attrs, 0);
    /* NULL spans are fine everywhere */
    sc_span_init(NULL, TID, SID, NULL, SC_SPAN_KIND_SERVER, "x", 1, 0);
    sc_span_cstr(NULL, SC_ATTR_URL_PATH, "/");
    sc_span_int(NULL, SC_ATTR_HTTP_STATUS, 1);
    sc_span_bool(NULL, SC_ATTR_HTTP_STATUS, true);
    sc_span_event_add(NULL, SC_EV_BACKOFF, 0, 0);
    sc_span_set_status(NULL, SC_SPAN_STATUS_ERROR, "x");
    sc_span_end(NULL, 1);
    free(s);
}

static void test_ring_basic(void **state)
{
    (void)state;
    sc_span_ring r;
    assert_int_equal(sc_span_ring_init(&r, 3), 0);
    assert_int_equal(sc_span_ring_capacity(&r), 4);
    for (int round = 0; round < 5; round++) { /* wraps around */
        for (int i = 0; i < 4; i++) {
            sc_span *s = sc_span_ring_reserve(&r);
            assert_non_null(s);
            sc_span_init(s, TID, SID, NULL, SC_SPAN_KIND_SERVER, "x", 1, (uint64_t)(round * 10 + i));
            assert_int_equal(sc_span_ring_commit(&r), (uint32_t)i + 1);
        }
        assert_null(sc_span_ring_reserve(&r));
        assert_int_equal(atomic_load(&r.dropped), (uint64_t)round + 1);
        assert_int_equal(sc_span_ring_pending(&r), 4);
        for (uint32_t i = 0; i < 4; i++)
            assert_int_equal(sc_span_ring_peek(&r, i)->start_ns, (uint64_t)(round * 10) + i);
        sc_span_ring_release(&r, 3);
        assert_int_equal(sc_span_ring_pending(&r), 1);
        assert_int_equal(sc_span_ring_peek(&r, 0)->start_ns, (uint64_t)(round * 10 + 3));
        sc_span_ring_release(&r, 1);
    }
    /* reserving twice without commit gives the same slot */
    sc_span *a = sc_span_ring_reserve(&r), *b = sc_span_ring_reserve(&r);
    assert_ptr_equal(a, b);
    assert_int_equal(atomic_load(&r.committed), 20);
    sc_span_ring_free(&r);
}

#define STRESS_N 200000

static void *producer(void *arg)
{
    sc_span_ring *r = arg;
    for (uint64_t i = 0; i < STRESS_N; i++) {
        sc_span *s = sc_span_ring_reserve(r);
        if (!s)
            continue; /* full: dropped and counted */
        s->start_ns = i;
        s->end_ns = i * 3;
        sc_span_ring_commit(r);
    }
    return NULL;
}

static void test_ring_threads(void **state)
{
    (void)state;
    sc_span_ring r;
    assert_int_equal(sc_span_ring_init(&r, 64), 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, producer, &r), 0);
    uint64_t seen = 0, last = 0;
    bool first = true;
    for (;;) {
        uint32_t n = sc_span_ring_pending(&r);
        for (uint32_t i = 0; i < n; i++) {
            const sc_span *s = sc_span_ring_peek(&r, i);
            assert_int_equal(s->end_ns, s->start_ns * 3); /* the slot is complete */
            assert_true(first || s->start_ns > last);     /* in order */
            last = s->start_ns;
            first = false;
        }
        sc_span_ring_release(&r, n);
        seen += n;
        if (seen + atomic_load(&r.dropped) == STRESS_N)
            break;
    }
    pthread_join(t, NULL);
    assert_int_equal(seen, atomic_load(&r.committed));
    sc_span_ring_free(&r);
}

static json_t *attr_value(json_t *attrs, const char *key)
{
    size_t i;
    json_t *a;
    json_array_foreach(attrs, i, a)
    {
        if (strcmp(json_string_value(json_object_get(a, "key")), key) == 0)
            return json_object_get(a, "value");
    }
    return NULL;
}

static void test_otlp_body(void **state)
{
    (void)state;
    sc_span *s = calloc(2, sizeof(*s));
    sc_span_init(&s[0], TID, SID, PID, SC_SPAN_KIND_SERVER, "GET", 3, 1000);
    s[0].parent_remote = true;
    sc_span_cstr(&s[0], SC_ATTR_HTTP_METHOD, "GET");
    sc_span_str(&s[0], SC_ATTR_URL_PATH, "/a\"b\\c\n\x01\xff\xc3\xa9\xed\xa0\x80", 14);
    sc_span_int(&s[0], SC_ATTR_HTTP_STATUS, 503);
    sc_span_int(&s[0], SC_ATTR_ATTEMPT, -2);
    sc_span_bool(&s[0], SC_ATTR_SAMPLED_BY, true);
    sc_span_event_add(&s[0], SC_EV_BACKOFF, 1500, 25);
    sc_span_event_add(&s[0], SC_EV_BREAKER_REJECTED, 1600, 7); /* no value name: left out */
    sc_span_event_add(&s[0], SC_EV_PUSHBACK, 1700, -1);        /* negative: left out */
    sc_span_set_status(&s[0], SC_SPAN_STATUS_ERROR, "upstream-timeout");
    sc_span_end(&s[0], 2000);
    sc_span_init(&s[1], TID, PID, NULL, SC_SPAN_KIND_CLIENT, "x", 1, 10);
    s[1].trace_flags = 0;
    s[1].dropped_attrs = 2;
    s[1].dropped_events = 1;
    sc_span_set_status(&s[1], SC_SPAN_STATUS_OK, NULL);
    sc_span_end(&s[1], 20);

    sc_otlp_buf b = {0};
    sc_otlp_resource res = {.service_name = "web", .service_instance_id = "web-1", .sdk_version = "0.1.0"};
    assert_int_equal(sc_otlp_begin(&b, &res), 0);
    assert_int_equal(sc_otlp_span(&b, &s[0], 1700000000000000000LL, true), 0);
    assert_int_equal(sc_otlp_span(&b, &s[1], 1700000000000000000LL, false), 0);
    assert_int_equal(sc_otlp_end(&b), 0);
    json_error_t jerr;
    json_t *root = json_loadb(b.p, b.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        fail_msg("not JSON: %s in %s", jerr.text, b.p);
    json_t *rs = json_array_get(json_object_get(root, "resourceSpans"), 0);
    json_t *rattrs = json_object_get(json_object_get(rs, "resource"), "attributes");
    assert_string_equal(json_string_value(json_object_get(attr_value(rattrs, "service.name"), "stringValue")), "web");
    assert_string_equal(json_string_value(json_object_get(attr_value(rattrs, "service.instance.id"), "stringValue")),
                        "web-1");
    assert_null(attr_value(rattrs, "service.version"));
    assert_string_equal(json_string_value(json_object_get(attr_value(rattrs, "telemetry.sdk.version"), "stringValue")),
                        "0.1.0");
    json_t *ss = json_array_get(json_object_get(rs, "scopeSpans"), 0);
    assert_string_equal(json_string_value(json_object_get(json_object_get(ss, "scope"), "name")), "sidecar");
    json_t *spans = json_object_get(ss, "spans");
    assert_int_equal(json_array_size(spans), 2);
    json_t *j = json_array_get(spans, 0);
    assert_string_equal(json_string_value(json_object_get(j, "traceId")), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(json_string_value(json_object_get(j, "spanId")), "00f067aa0ba902b7");
    assert_string_equal(json_string_value(json_object_get(j, "parentSpanId")), "b9c7c989f97918e1");
    assert_int_equal(json_integer_value(json_object_get(j, "kind")), 2);
    assert_int_equal(json_integer_value(json_object_get(j, "flags")), 0x301);
    assert_string_equal(json_string_value(json_object_get(j, "startTimeUnixNano")), "1700000000000001000");
    assert_string_equal(json_string_value(json_object_get(j, "endTimeUnixNano")), "1700000000000002000");
    json_t *attrs = json_object_get(j, "attributes");
    assert_string_equal(json_string_value(json_object_get(attr_value(attrs, "url.path"), "stringValue")),
                        "/a\"b\\c\n\x01\xef\xbf\xbd\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    assert_string_equal(json_string_value(json_object_get(attr_value(attrs, "http.response.status_code"), "intValue")),
                        "503");
    assert_string_equal(json_string_value(json_object_get(attr_value(attrs, "sidecar.attempt"), "intValue")), "-2");
    assert_true(json_is_true(json_object_get(attr_value(attrs, "sidecar.sampled_by"), "boolValue")));
    json_t *ev = json_object_get(j, "events");
    assert_int_equal(json_array_size(ev), 3);
    json_t *e0 = json_array_get(ev, 0);
    assert_string_equal(json_string_value(json_object_get(e0, "name")), "sidecar.retry.backoff");
    assert_string_equal(json_string_value(json_object_get(e0, "timeUnixNano")), "1700000000000001500");
    assert_string_equal(
        json_string_value(json_object_get(attr_value(json_object_get(e0, "attributes"), "sidecar.backoff_ms"), "intValue")),
        "25");
    assert_int_equal(json_array_size(json_object_get(json_array_get(ev, 1), "attributes")), 0);
    assert_int_equal(json_array_size(json_object_get(json_array_get(ev, 2), "attributes")), 0);
    json_t *st = json_object_get(j, "status");
    assert_int_equal(json_integer_value(json_object_get(st, "code")), 2);
    assert_string_equal(json_string_value(json_object_get(st, "message")), "upstream-timeout");
    assert_null(json_object_get(j, "droppedAttributesCount"));
    j = json_array_get(spans, 1);
    assert_null(json_object_get(j, "parentSpanId"));
    assert_int_equal(json_integer_value(json_object_get(j, "flags")), 0x100);
    assert_int_equal(json_integer_value(json_object_get(j, "droppedAttributesCount")), 2);
    assert_int_equal(json_integer_value(json_object_get(j, "droppedEventsCount")), 1);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "status"), "code")), 1);
    assert_null(json_object_get(json_object_get(j, "status"), "message"));
    json_decref(root);

    /* reset keeps the memory, and a service.version when given */
    sc_otlp_buf_reset(&b);
    res.service_version = "2.3";
    assert_int_equal(sc_otlp_begin(&b, &res), 0);
    assert_int_equal(sc_otlp_end(&b), 0);
    root = json_loadb(b.p, b.len, 0, &jerr);
    assert_non_null(root);
    rs = json_array_get(json_object_get(root, "resourceSpans"), 0);
    rattrs = json_object_get(json_object_get(rs, "resource"), "attributes");
    assert_string_equal(json_string_value(json_object_get(attr_value(rattrs, "service.version"), "stringValue")), "2.3");
    json_decref(root);
    sc_otlp_buf_free(&b);
    free(s);
}

static void test_otlp_response(void **state)
{
    (void)state;
    uint64_t rej;
    char msg[64];
    assert_int_equal(sc_otlp_parse_response("", 0, &rej, msg, sizeof(msg)), 0);
    assert_int_equal(rej, 0);
    assert_int_equal(sc_otlp_parse_response(" \n", 2, &rej, msg, sizeof(msg)), 0);
    assert_int_equal(sc_otlp_parse_response("{}", 2, &rej, msg, sizeof(msg)), 0);
    const char *p = "{\"partialSuccess\":{\"rejectedSpans\":\"3\",\"errorMessage\":\"bad span\"}}";
    assert_int_equal(sc_otlp_parse_response(p, strlen(p), &rej, msg, sizeof(msg)), 0);
    assert_int_equal(rej, 3);
    assert_string_equal(msg, "bad span");
    p = "{\"partialSuccess\":{\"rejectedSpans\":5}}";
    assert_int_equal(sc_otlp_parse_response(p, strlen(p), &rej, msg, sizeof(msg)), 0);
    assert_int_equal(rej, 5);
    assert_string_equal(msg, "");
    p = "{\"partialSuccess\":{\"rejectedSpans\":\"-1\"}}";
    assert_int_equal(sc_otlp_parse_response(p, strlen(p), &rej, msg, sizeof(msg)), 0);
    assert_int_equal(rej, 0);
    assert_int_equal(sc_otlp_parse_response("[1]", 3, &rej, msg, sizeof(msg)), -EPROTO);
    assert_int_equal(sc_otlp_parse_response("{", 1, &rej, msg, sizeof(msg)), -EPROTO);
    assert_int_equal(sc_otlp_parse_response("\x0a\x02", 2, &rej, msg, sizeof(msg)), -EPROTO); /* protobuf */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_span_fields),
        cmocka_unit_test(test_ring_basic),
        cmocka_unit_test(test_ring_threads),
        cmocka_unit_test(test_otlp_body),
        cmocka_unit_test(test_otlp_response),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

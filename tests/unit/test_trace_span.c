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

/* ---- the encoder against a plain reference, on random spans ----
 * ref_*: the OTLP/JSON body written the obvious way (a byte at a time,
 * snprintf for the numbers), to hold the fast encoder of otlp.c to the
 * same bytes for every input. */

typedef struct ref_buf {
    char *p;
    size_t len, cap;
} ref_buf;

static void ref_put(ref_buf *r, const char *s, size_t n)
{
    if (r->len + n + 1 > r->cap) {
        r->cap = (r->len + n + 1) * 2;
        r->p = realloc(r->p, r->cap);
        assert_non_null(r->p);
    }
    memcpy(r->p + r->len, s, n);
    r->len += n;
    r->p[r->len] = 0;
}

static void ref_lit(ref_buf *r, const char *s) { ref_put(r, s, strlen(s)); }

static void ref_fmt(ref_buf *r, const char *fmt, ...)
{
    char tmp[160];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof(tmp));
    ref_put(r, tmp, (size_t)n);
}

/* Length of the valid UTF-8 sequence at s[0..n), 0 when invalid: decoded
 * to a code point, then held to the shortest form, no surrogates, at most
 * U+10FFFF. */
static size_t ref_utf8(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp, min;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2, cp = s[0] & 0x1fu, min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3, cp = s[0] & 0x0fu, min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4, cp = s[0] & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static void ref_str(ref_buf *r, const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    ref_lit(r, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char c = u[i];
        size_t l;
        if (c == '"') {
            ref_lit(r, "\\\"");
            i++;
        } else if (c == '\\') {
            ref_lit(r, "\\\\");
            i++;
        } else if (c < 0x20) {
            ref_fmt(r, "\\u%04x", c);
            i++;
        } else if ((l = ref_utf8(u + i, n - i)) != 0) {
            ref_put(r, s + i, l);
            i += l;
        } else {
            ref_lit(r, "\\ufffd");
            i++;
        }
    }
    ref_lit(r, "\"");
}

static void ref_hex(ref_buf *r, const uint8_t *id, size_t n)
{
    ref_lit(r, "\"");
    for (size_t i = 0; i < n; i++)
        ref_fmt(r, "%02x", id[i]);
    ref_lit(r, "\"");
}

static void ref_kv_str(ref_buf *r, const char *key, const char *v, size_t n)
{
    ref_fmt(r, "{\"key\":\"%s\",\"value\":{\"stringValue\":", key);
    ref_str(r, v, n);
    ref_lit(r, "}}");
}

static void ref_time(ref_buf *r, const char *field, uint64_t mono, int64_t offset)
{
    int64_t t = (int64_t)mono + offset;
    ref_fmt(r, "%s\"%llu\"", field, (unsigned long long)(t > 0 ? t : 0));
}

static void ref_begin(ref_buf *r, const sc_otlp_resource *res)
{
    ref_lit(r, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[");
    ref_kv_str(r, "service.name", res->service_name, strlen(res->service_name));
    ref_lit(r, ",");
    ref_kv_str(r, "service.instance.id", res->service_instance_id, strlen(res->service_instance_id));
    if (res->service_version) {
        ref_lit(r, ",");
        ref_kv_str(r, "service.version", res->service_version, strlen(res->service_version));
    }
    ref_lit(r, ",");
    ref_kv_str(r, "telemetry.sdk.name", "sidecar", 7);
    ref_lit(r, ",");
    ref_kv_str(r, "telemetry.sdk.language", "c", 1);
    ref_lit(r, ",");
    ref_kv_str(r, "telemetry.sdk.version", res->sdk_version, strlen(res->sdk_version));
    ref_lit(r, "]},\"scopeSpans\":[{\"scope\":{\"name\":\"sidecar\",\"version\":");
    ref_str(r, res->sdk_version, strlen(res->sdk_version));
    ref_lit(r, "},\"spans\":[");
}

static void ref_span(ref_buf *r, const sc_span *s, int64_t offset, bool first)
{
    static const uint8_t zero[SC_SPAN_ID_LEN];
    ref_lit(r, first ? "{\"traceId\":" : ",{\"traceId\":");
    ref_hex(r, s->trace_id, SC_TRACE_ID_LEN);
    ref_lit(r, ",\"spanId\":");
    ref_hex(r, s->span_id, SC_SPAN_ID_LEN);
    if (memcmp(s->parent_id, zero, SC_SPAN_ID_LEN) != 0) {
        ref_lit(r, ",\"parentSpanId\":");
        ref_hex(r, s->parent_id, SC_SPAN_ID_LEN);
    }
    ref_fmt(r, ",\"flags\":%u", s->trace_flags | 0x100u | (s->parent_remote ? 0x200u : 0));
    ref_lit(r, ",\"name\":");
    ref_str(r, s->name, s->name_len);
    ref_fmt(r, ",\"kind\":%u", s->kind);
    ref_time(r, ",\"startTimeUnixNano\":", s->start_ns, offset);
    ref_time(r, ",\"endTimeUnixNano\":", s->end_ns, offset);
    ref_lit(r, ",\"attributes\":[");
    for (unsigned i = 0; i < s->n_attrs; i++) {
        const sc_span_attr *a = &s->attrs[i];
        ref_fmt(r, "%s{\"key\":\"%s\",\"value\":{", i ? "," : "", sc_span_attr_name((sc_span_attr_key)a->key));
        if (a->type == SC_ATTR_T_STR) {
            ref_lit(r, "\"stringValue\":");
            ref_str(r, s->pool + a->off, a->len);
            ref_lit(r, "}}");
        } else if (a->type == SC_ATTR_T_BOOL) {
            ref_fmt(r, "\"boolValue\":%s}}", a->i ? "true" : "false");
        } else {
            ref_fmt(r, "\"intValue\":\"%lld\"}}", (long long)a->i);
        }
    }
    ref_lit(r, "]");
    if (s->dropped_attrs)
        ref_fmt(r, ",\"droppedAttributesCount\":%u", s->dropped_attrs);
    ref_lit(r, ",\"events\":[");
    for (unsigned i = 0; i < s->n_events; i++) {
        const sc_span_event *e = &s->events[i];
        ref_lit(r, i ? ",{" : "{");
        ref_time(r, "\"timeUnixNano\":", e->t_ns, offset);
        ref_fmt(r, ",\"name\":\"%s\",\"attributes\":[", sc_span_event_name((sc_span_event_kind)e->kind));
        const char *vn = sc_span_event_value_name((sc_span_event_kind)e->kind);
        if (vn && e->value >= 0)
            ref_fmt(r, "{\"key\":\"%s\",\"value\":{\"intValue\":\"%lld\"}}", vn, (long long)e->value);
        ref_lit(r, "]}");
    }
    ref_lit(r, "]");
    if (s->dropped_events)
        ref_fmt(r, ",\"droppedEventsCount\":%u", s->dropped_events);
    ref_fmt(r, ",\"status\":{\"code\":%u", s->status);
    if (s->status == SC_SPAN_STATUS_ERROR && s->status_len) {
        ref_lit(r, ",\"message\":");
        ref_str(r, s->status_msg, s->status_len);
    }
    ref_lit(r, "}}");
}

/* xorshift64*: the same spans on every run. */
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return g_rng * 0x2545f4914f6cdd1dull;
}
static uint64_t rnd_below(uint64_t n) { return rnd() % n; }

/* n bytes of a string that tests the escaping: mostly printable ASCII,
 * then quotes, backslashes, control bytes, 0x7f, valid sequences of 2 to 4
 * bytes, and invalid ones (stray continuation bytes, cut sequences,
 * overlong forms, surrogates, past U+10FFFF, 0xf5..0xff). */
static void rnd_string(char *out, size_t n)
{
    static const char *const pieces[] = {
        "\"", "\\", "\x7f", "\x01", "\x1f", "\n", "\t", "\xc3\xa9", "\xdf\xbf", "\xe2\x82\xac", "\xef\xbf\xbd",
        "\xed\x9f\xbf", "\xee\x80\x80", "\xf0\x9f\x98\x80", "\xf4\x8f\xbf\xbf", "\x80", "\xbf", "\xc3", "\xe2\x82",
        "\xf0\x9f\x98", "\xc0\xaf", "\xc1\xbf", "\xe0\x80\xaf", "\xe0\x9f\xbf", "\xed\xa0\x80", "\xed\xbf\xbf",
        "\xf0\x8f\xbf\xbf", "\xf4\x90\x80\x80", "\xf5\x80\x80\x80", "\xff", "\xfe", "\xc2\x80", "\xe0\xa0\x80",
        "\xf0\x90\x80\x80", "\xc3\x28", "\xe2\x28\xa1",
    };
    unsigned plain_pct = (unsigned)rnd_below(101); /* some strings all plain, some dense with the rest */
    size_t i = 0;
    while (i < n) {
        if (rnd_below(100) < plain_pct) {
            out[i++] = (char)(0x20 + rnd_below(0x5f));
            continue;
        }
        if (rnd_below(8) == 0) {
            out[i++] = (char)rnd(); /* any byte */
            continue;
        }
        const char *p = pieces[rnd_below(sizeof(pieces) / sizeof(pieces[0]))];
        size_t l = strlen(p);
        for (size_t k = 0; k < l && i < n; k++)
            out[i++] = p[k];
    }
}

static size_t rnd_len(size_t max)
{
    size_t n = rnd_below(8) == 0 ? rnd_below(max + 1) : rnd_below(41);
    return n < max ? n : max;
}

static int64_t rnd_int(void)
{
    switch (rnd_below(6)) {
    case 0: return (int64_t)rnd(); /* INT64_MIN and the other extremes included */
    case 1: return -(int64_t)rnd_below(1000);
    case 2: return INT64_MIN + (int64_t)rnd_below(3);
    case 3: return INT64_MAX - (int64_t)rnd_below(3);
    default: return (int64_t)(rnd() >> rnd_below(64));
    }
}

/* A time that added to the offset stays within int64 (as the real clocks
 * do); most near g_base, the time of the body's spans, as in a batch. */
static uint64_t g_base;
static uint64_t rnd_time(void)
{
    switch (rnd_below(6)) {
    case 0: return rnd_below(1000);
    case 1: return rnd() >> 2;
    case 2: return 1000000000ull * rnd_below(1000000) + rnd_below(1000000000);
    default: return g_base + rnd_below(rnd_below(2) ? 1000000000ull : 1000);
    }
}

/* A later time: within microseconds, or up to seconds. */
static uint64_t rnd_after(uint64_t t)
{
    return t + (rnd_below(2) ? rnd_below(100000) : rnd_below(10000000000ull));
}

static void rnd_span(sc_span *s)
{
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < SC_TRACE_ID_LEN; i++)
        s->trace_id[i] = (uint8_t)rnd();
    for (size_t i = 0; i < SC_SPAN_ID_LEN; i++)
        s->span_id[i] = (uint8_t)rnd();
    if (rnd_below(3))
        for (size_t i = 0; i < SC_SPAN_ID_LEN; i++)
            s->parent_id[i] = rnd_below(2) ? (uint8_t)rnd() : 0;
    s->kind = (uint8_t)rnd();
    s->status = (uint8_t)(rnd_below(8) == 0 ? rnd() : rnd_below(3));
    s->trace_flags = (uint8_t)rnd();
    s->parent_remote = rnd_below(2);
    s->name_len = (uint16_t)rnd_len(SC_SPAN_NAME_MAX);
    rnd_string(s->name, s->name_len);
    s->status_len = (uint16_t)rnd_len(SC_SPAN_STATUS_MAX);
    rnd_string(s->status_msg, s->status_len);
    s->start_ns = rnd_time();
    s->end_ns = rnd_below(4) ? rnd_after(s->start_ns) : rnd_time();
    s->n_attrs = (uint8_t)rnd_below(SC_SPAN_MAX_ATTRS + 1);
    size_t pool = 0;
    for (unsigned i = 0; i < s->n_attrs; i++) {
        sc_span_attr *a = &s->attrs[i];
        a->key = (uint8_t)(rnd_below(16) == 0 ? rnd() : rnd_below(SC_ATTR__COUNT));
        a->type = (uint8_t)(rnd_below(16) == 0 ? rnd() : rnd_below(3));
        a->i = a->type == SC_ATTR_T_BOOL && rnd_below(2) ? (int64_t)rnd_below(2) : rnd_int();
        if (a->type == SC_ATTR_T_STR) {
            size_t n = rnd_len(SC_SPAN_POOL - pool);
            a->off = (uint16_t)pool;
            a->len = (uint16_t)n;
            rnd_string(s->pool + pool, n);
            pool += n;
        }
    }
    s->pool_used = (uint16_t)pool;
    s->n_events = (uint8_t)rnd_below(SC_SPAN_MAX_EVENTS + 1);
    for (unsigned i = 0; i < s->n_events; i++) {
        sc_span_event *e = &s->events[i];
        e->kind = (uint8_t)(rnd_below(16) == 0 ? rnd() : rnd_below(SC_EV__COUNT));
        e->t_ns = rnd_below(4) ? rnd_after(s->start_ns) : rnd_time();
        e->value = rnd_below(4) ? (int64_t)rnd_below(100000) : rnd_int();
    }
    s->dropped_attrs = (uint8_t)(rnd_below(4) == 0 ? rnd() : 0);
    s->dropped_events = (uint8_t)(rnd_below(4) == 0 ? rnd() : 0);
}

static int64_t rnd_offset(void)
{
    switch (rnd_below(4)) {
    case 0: return 0;
    case 1: return -(int64_t)rnd_below(1ull << 61);
    default: return 1700000000000000000LL + (int64_t)rnd_below(1000000000000000000ull);
    }
}

static void test_otlp_matches_reference(void **state)
{
    (void)state;
    sc_span *s = malloc(sizeof(*s));
    assert_non_null(s);
    char rs[4][48];
    sc_otlp_buf b = {0};
    ref_buf r = {0};
    unsigned spans = 0;
    for (unsigned body = 0; spans < 20000; body++) {
        for (int k = 0; k < 4; k++) { /* a NUL among the bytes cuts the string short, as strlen would */
            size_t l = rnd_len(40);
            rnd_string(rs[k], l);
            rs[k][l] = 0;
        }
        sc_otlp_resource res = {.service_name = rs[0], .service_instance_id = rs[1],
                                .service_version = rnd_below(2) ? rs[2] : NULL, .sdk_version = rs[3]};
        sc_otlp_buf_reset(&b);
        r.len = 0;
        assert_int_equal(sc_otlp_begin(&b, &res), 0);
        ref_begin(&r, &res);
        unsigned n = (unsigned)rnd_below(body % 16 == 0 ? 200 : 6);
        g_base = 1000000000ull * rnd_below(1000000) + rnd_below(1000000000);
        int64_t body_off = rnd_offset(); /* one offset a batch, as the tracer does; some spans another */
        for (unsigned i = 0; i < n; i++, spans++) {
            rnd_span(s);
            int64_t off = rnd_below(8) ? body_off : rnd_offset();
            assert_int_equal(sc_otlp_span(&b, s, off, i == 0), 0);
            ref_span(&r, s, off, i == 0);
        }
        assert_int_equal(sc_otlp_end(&b), 0);
        ref_lit(&r, "]}]}]}");
        if (b.len != r.len || memcmp(b.p, r.p, r.len) != 0) {
            size_t d = 0;
            while (d < b.len && d < r.len && b.p[d] == r.p[d])
                d++;
            size_t from = d > 60 ? d - 60 : 0;
            fail_msg("body %u differs at byte %zu (lengths %zu, %zu):\n  got  %.120s\n  want %.120s", body, d, b.len,
                     r.len, b.p + from, r.p + from);
        }
        /* the body also parses as JSON */
        if (body % 64 == 0) {
            json_error_t jerr;
            json_t *root = json_loadb(b.p, b.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &jerr);
            if (!root)
                fail_msg("not JSON: %s", jerr.text);
            json_decref(root);
        }
    }
    sc_otlp_buf_free(&b);
    free(r.p);
    free(s);
}

/* A buffer that has run out of memory stays so: every call says -ENOMEM
 * and the length does not move past what was written before. */
static void test_otlp_oom_sticks(void **state)
{
    (void)state;
    sc_span *s = malloc(sizeof(*s));
    assert_non_null(s);
    rnd_span(s);
    sc_otlp_buf b = {0};
    sc_otlp_resource res = {.service_name = "web", .service_instance_id = "web-1", .sdk_version = "0.1.0"};
    assert_int_equal(sc_otlp_begin(&b, &res), 0);
    size_t len = b.len;
    b.oom = true;
    assert_int_equal(sc_otlp_span(&b, s, 0, true), -ENOMEM);
    assert_int_equal(sc_otlp_end(&b), -ENOMEM);
    assert_true(b.len == len);
    sc_otlp_buf_reset(&b);
    assert_int_equal(sc_otlp_begin(&b, &res), 0);
    sc_otlp_buf_free(&b);
    free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_span_fields),
        cmocka_unit_test(test_ring_basic),
        cmocka_unit_test(test_ring_threads),
        cmocka_unit_test(test_otlp_body),
        cmocka_unit_test(test_otlp_response),
        cmocka_unit_test(test_otlp_matches_reference),
        cmocka_unit_test(test_otlp_oom_sticks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

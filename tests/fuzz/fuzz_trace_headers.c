/*
 * fuzz_trace_headers.c: trace context headers (trace/propagation.h) and the
 * OTLP JSON writer (trace/otlp.h) on arbitrary bytes.
 *
 * Input: the first byte chooses the formats read; the rest is lines, each
 * "<k><value>" where k (mod 10) picks the header name (traceparent,
 * tracestate, b3, the five x-b3-*, the force header, another header).
 * Invariants (abort() on violation):
 *  - a context is valid only with non-zero IDs, from an enabled format; a
 *    tracestate only with a W3C context, at most SC_TRACESTATE_MAX bytes,
 *    NUL terminated, and it reads back to itself (normalised form is a
 *    fixed point);
 *  - what sc_trace_inject writes reads back to the same trace ID, span ID
 *    and decision in every format, and within the output buffer;
 *  - each parser alone on the whole input: valid implies non-zero IDs, and
 *    a valid version-00 traceparent is exactly the hex of its IDs;
 *  - the OTLP JSON body of a span carrying the input as name, path and
 *    status message is JSON (jansson, strict UTF-8) with those strings
 *    (ASCII ones, control characters included, unchanged).
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "trace/otlp.h"
#include "trace/propagation.h"
#include "trace/sampler.h"

#define CHECK(x)         \
    do {                 \
        if (!(x))        \
            abort();     \
    } while (0)

static const char *const names[] = {"traceparent",  "tracestate",        "b3",           "x-b3-traceid",
                                    "x-b3-spanid",  "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags",
                                    "x-force-trace", "x-other"};

static void check_ts(const sc_trace_ctx *c)
{
    CHECK(c->tracestate_len <= SC_TRACESTATE_MAX);
    CHECK(c->tracestate[c->tracestate_len] == 0 && strlen(c->tracestate) == c->tracestate_len);
    if (c->tracestate_len) {
        sc_trace_ctx again;
        CHECK(sc_trace_parse_tracestate(c->tracestate, c->tracestate_len, &again));
        CHECK(again.tracestate_len == c->tracestate_len);
        CHECK(memcmp(again.tracestate, c->tracestate, c->tracestate_len) == 0);
    }
}

static void check_ctx(const sc_trace_ctx *c, unsigned formats)
{
    if (c->valid) {
        CHECK(!sc_trace_id_is_zero(c->trace_id, 16));
        CHECK(!sc_trace_id_is_zero(c->span_id, 8));
        CHECK(c->format & formats);
        CHECK(c->decision <= SC_TRACE_DECISION_NOT_SAMPLED);
    } else {
        CHECK(c->format == 0);
    }
    if (c->tracestate_len)
        CHECK(c->valid && c->format == SC_TRACE_FMT_W3C);
    check_ts(c);
}

static const sc_trace_hdr *out_get(const sc_trace_out *o, const char *name)
{
    for (size_t i = 0; i < o->n; i++)
        if (strlen(name) == o->h[i].name_len && memcmp(o->h[i].name, name, o->h[i].name_len) == 0)
            return &o->h[i];
    return NULL;
}

static void check_roundtrip(const sc_trace_ctx *c, const uint8_t span[8], bool sampled)
{
    sc_trace_out o;
    unsigned all = SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI;
    sc_trace_inject(c, span, c->span_id, sampled, all, &o);
    CHECK(o.used <= sizeof(o.buf));
    sc_trace_in in;
    sc_trace_in_init(&in, NULL);
    for (size_t i = 0; i < o.n; i++) {
        CHECK(o.h[i].value >= o.buf && o.h[i].value + o.h[i].value_len <= o.buf + sizeof(o.buf));
        CHECK(sc_trace_in_header(&in, o.h[i].name, o.h[i].name_len, o.h[i].value, o.h[i].value_len));
    }
    static const unsigned each[] = {SC_TRACE_FMT_W3C, SC_TRACE_FMT_B3, SC_TRACE_FMT_B3MULTI};
    for (size_t k = 0; k < 3; k++) {
        sc_trace_ctx back;
        sc_trace_extract(&in, each[k], &back);
        CHECK(back.valid && back.format == each[k]);
        CHECK(memcmp(back.trace_id, c->trace_id, 16) == 0);
        CHECK(memcmp(back.span_id, span, 8) == 0);
        CHECK(back.decision == (sampled ? SC_TRACE_DECISION_SAMPLED : SC_TRACE_DECISION_NOT_SAMPLED));
        if (each[k] == SC_TRACE_FMT_W3C) {
            CHECK(back.tracestate_len == c->tracestate_len);
            CHECK(memcmp(back.tracestate, c->tracestate, c->tracestate_len) == 0);
        }
    }
    const sc_trace_hdr *tp = out_get(&o, "traceparent");
    CHECK(tp && tp->value_len == 55);
}

static void check_otlp(const uint8_t *data, size_t size)
{
    static sc_span s;
    static const uint8_t tid[16] = {1}, sid[8] = {2};
    sc_span_init(&s, tid, sid, NULL, SC_SPAN_KIND_SERVER, (const char *)data, size, 1);
    sc_span_str(&s, SC_ATTR_URL_PATH, (const char *)data, size);
    sc_span_str(&s, SC_ATTR_REASON, (const char *)data, SC_MIN(size, (size_t)64));
    char msg[SC_SPAN_STATUS_MAX + 1];
    size_t ml = SC_MIN(size, sizeof(msg) - 1);
    memcpy(msg, data, ml);
    msg[ml] = 0;
    sc_span_set_status(&s, SC_SPAN_STATUS_ERROR, msg);
    sc_span_event_add(&s, SC_EV_BACKOFF, 2, size);
    sc_otlp_buf b = {0};
    sc_otlp_resource res = {.service_name = "fuzz", .service_instance_id = "fuzz-1", .sdk_version = "0"};
    CHECK(sc_otlp_begin(&b, &res) == 0);
    CHECK(sc_otlp_span(&b, &s, 5, true) == 0);
    CHECK(sc_otlp_end(&b) == 0);
    json_error_t err;
    json_t *j = json_loadb(b.p, b.len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &err);
    CHECK(j);
    json_t *sp = json_array_get(
        json_object_get(json_array_get(json_object_get(json_array_get(json_object_get(j, "resourceSpans"), 0),
                                                       "scopeSpans"),
                                       0),
                        "spans"),
        0);
    json_t *jn = json_object_get(sp, "name");
    CHECK(json_is_string(jn));
    /* printable ASCII comes back unchanged; control bytes survive escaped */
    bool ascii = true;
    for (size_t i = 0; i < s.name_len; i++)
        if ((unsigned char)s.name[i] >= 0x7f)
            ascii = false;
    if (ascii)
        CHECK(json_string_length(jn) == s.name_len && memcmp(json_string_value(jn), s.name, s.name_len) == 0);
    json_decref(j);
    sc_otlp_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned formats = data[0] & 7;
    sc_trace_in in;
    sc_trace_in_init(&in, "x-force-trace");
    const char *p = (const char *)data + 1, *end = (const char *)data + size;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (le > p) {
            const char *name = names[(unsigned char)p[0] % 10];
            bool is_trace = sc_trace_in_header(&in, name, strlen(name), p + 1, (size_t)(le - p - 1));
            CHECK(is_trace == ((unsigned char)p[0] % 10 < 8));
        }
        p = le + 1;
    }
    sc_trace_ctx c;
    sc_trace_extract(&in, formats, &c);
    check_ctx(&c, formats);
    sc_sampler smp;
    sc_sampler_init(&smp, (double)(data[0] >> 3) / 31.0);
    sc_trace_rng rng;
    sc_trace_rng_seed(&rng, size);
    if (!c.valid)
        sc_trace_new_trace_id(&rng, c.trace_id);
    bool sampled = sc_sampler_decide(&smp, &c, in.forced, NULL);
    CHECK(!in.forced || sampled);
    uint8_t span[8];
    sc_trace_new_span_id(&rng, span);
    check_roundtrip(&c, span, sampled);

    /* each parser on the whole input */
    const char *all = (const char *)data + 1;
    size_t n = size - 1;
    if (sc_trace_parse_traceparent(all, n, &c)) {
        check_ctx(&c, SC_TRACE_FMT_W3C);
        if (n == 55 && all[0] == '0' && all[1] == '0') {
            char hex[32];
            sc_trace_hex(c.trace_id, 16, hex);
            CHECK(memcmp(hex, all + 3, 32) == 0);
            sc_trace_hex(c.span_id, 8, hex);
            CHECK(memcmp(hex, all + 36, 16) == 0);
        }
    }
    if (sc_trace_parse_b3(all, n, &c))
        check_ctx(&c, SC_TRACE_FMT_B3);
    else
        CHECK(!c.valid && c.decision == SC_TRACE_DECISION_NONE);
    if (sc_trace_parse_tracestate(all, n, &c))
        check_ts(&c);
    else
        CHECK(c.tracestate_len == 0);
    check_otlp(data, size);
    return 0;
}

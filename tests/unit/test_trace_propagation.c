/* Unit tests for trace/propagation.h and trace/sampler.h: the W3C Trace
 * Context examples and its test suite's cases (valid, invalid, limits), B3
 * single and multi-header, hostile inputs, writing, and ratio sampling. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "trace/propagation.h"
#include "trace/sampler.h"

#define TP_SPEC "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
#define TID "12345678901234567890123456789012"
#define SID "1234567890123456"

static bool tp(const char *s, sc_trace_ctx *c) { return sc_trace_parse_traceparent(s, strlen(s), c); }

static void hex_of(const uint8_t *b, size_t n, char *out)
{
    sc_trace_hex(b, n, out);
    out[2 * n] = 0;
}

static void assert_ids(const sc_trace_ctx *c, const char *tid, const char *sid)
{
    char t[33], s[17];
    hex_of(c->trace_id, 16, t);
    hex_of(c->span_id, 8, s);
    assert_string_equal(t, tid);
    assert_string_equal(s, sid);
}

static void test_traceparent_spec_examples(void **state)
{
    (void)state;
    sc_trace_ctx c;
    assert_true(tp(TP_SPEC, &c));
    assert_true(c.valid);
    assert_int_equal(c.format, SC_TRACE_FMT_W3C);
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    assert_ids(&c, "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    assert_true(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &c));
    assert_int_equal(c.decision, SC_TRACE_DECISION_NOT_SAMPLED);
    /* flags are a bit field: 09 is sampled plus an unknown bit */
    assert_true(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", &c));
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    assert_true(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe", &c));
    assert_int_equal(c.decision, SC_TRACE_DECISION_NOT_SAMPLED);
}

static void test_traceparent_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "",
        "00",
        "00-" TID "-" SID "-01.",                           /* version 00: exactly 55 */
        "00-" TID "-" SID "-01-what-the-future-will-be-like",
        "ff-" TID "-" SID "-01",                            /* forbidden version */
        ".0-" TID "-" SID "-01",
        "0.-" TID "-" SID "-01",
        "000-" TID "-" SID "-01",
        "0-" TID "-" SID "-01",
        "00-00000000000000000000000000000000-" SID "-01",   /* zero trace ID */
        "00-.2345678901234567890123456789012-" SID "-01",
        "00-1234567890123456789012345678901.-" SID "-01",
        "00-123456789012345678901234567890123-" SID "-01",
        "00-1234567890123456789012345678901-" SID "-01",
        "00-" TID "-0000000000000000-01",                   /* zero parent ID */
        "00-" TID "-.234567890123456-01",
        "00-" TID "-123456789012345.-01",
        "00-" TID "-12345678901234567-01",
        "00-" TID "-123456789012345-01",
        "00-" TID "-" SID "-.0",
        "00-" TID "-" SID "-0.",
        "00-" TID "-" SID "-001",
        "00-" TID "-" SID "-1",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", /* upper case */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
        "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00_" TID "-" SID "-01",
        "00-" TID "_" SID "-01",
        "00-" TID "-" SID "_01",
        "cc-" TID "-" SID "-01.what-the-future-will-be-like",
        "00-" TID "-" SID "-01,00-" TID "-" SID "-01",        /* two fields joined */
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        sc_trace_ctx c;
        memset(&c, 0xab, sizeof(c));
        if (tp(bad[i], &c))
            fail_msg("accepted '%s'", bad[i]);
        assert_false(c.valid);
        assert_true(sc_trace_id_is_zero(c.trace_id, 16));
        assert_int_equal(c.tracestate_len, 0);
    }
    sc_trace_ctx c;
    assert_false(sc_trace_parse_traceparent(NULL, 0, &c));
}

static void test_traceparent_versions_and_ows(void **state)
{
    (void)state;
    sc_trace_ctx c;
    /* a future version: its four fields, whatever follows a '-' */
    assert_true(tp("cc-" TID "-" SID "-01", &c));
    assert_ids(&c, TID, SID);
    assert_true(tp("cc-" TID "-" SID "-01-what-the-future-will-be-like", &c));
    assert_ids(&c, TID, SID);
    assert_true(tp("01-" TID "-" SID "-03", &c));
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    /* optional whitespace around the value */
    static const char *const ows[] = {" 00-" TID "-" SID "-01", "\t00-" TID "-" SID "-01",
                                      "00-" TID "-" SID "-01 ", "00-" TID "-" SID "-01\t",
                                      "\t 00-" TID "-" SID "-01 \t"};
    for (size_t i = 0; i < SC_ARRAY_LEN(ows); i++) {
        assert_true(tp(ows[i], &c));
        assert_ids(&c, TID, SID);
    }
    /* the value is length-delimited: bytes past len are never read */
    const char *s = "00-" TID "-" SID "-01garbage";
    assert_true(sc_trace_parse_traceparent(s, 55, &c));
}

static bool ts(const char *s, sc_trace_ctx *c) { return sc_trace_parse_tracestate(s, strlen(s), c); }

static void test_tracestate_valid(void **state)
{
    (void)state;
    sc_trace_ctx c;
    assert_true(ts("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", &c));
    assert_string_equal(c.tracestate, "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_int_equal(c.tracestate_len, strlen(c.tracestate));
    /* optional whitespace and empty members go; a value's leading space stays */
    assert_true(ts("foo=1 \t , \t bar=2, \t baz=3", &c));
    assert_string_equal(c.tracestate, "foo=1,bar=2,baz=3");
    assert_true(ts(",, ,foo=1,\t,", &c));
    assert_string_equal(c.tracestate, "foo=1");
    assert_true(ts("foo= 1", &c));
    assert_string_equal(c.tracestate, "foo= 1");
    assert_true(ts("", &c));
    assert_int_equal(c.tracestate_len, 0);
    assert_true(ts("  ", &c));
    assert_int_equal(c.tracestate_len, 0);
    /* every allowed character */
    char key[64], val[128], buf[256];
    snprintf(key, sizeof(key), "abcdefghijklmnopqrstuvwxyz0123456789_-*/");
    size_t n = 0;
    for (int ch = 0x20; ch <= 0x7e; ch++)
        if (ch != ',' && ch != '=')
            val[n++] = (char)ch;
    val[n] = 0;
    snprintf(buf, sizeof(buf), "%s=%s", key, val);
    assert_true(ts(buf, &c));
    assert_string_equal(c.tracestate, buf);
    snprintf(buf, sizeof(buf), "%s@a-z0-9_-*/=%s", key, val);
    assert_true(ts(buf, &c));
    assert_string_equal(c.tracestate, buf);
    /* multi-tenant keys may start with a digit */
    assert_true(ts("0tenant@vendor=x", &c));
}

static void test_tracestate_invalid(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "foo =1", "FOO=1", "foo.bar=1", "foo@=1,bar=2", "@foo=1,bar=2", "foo@@bar=1,bar=2",
        "foo@bar@baz=1,bar=2", "foo=bar=baz", "foo=,bar=3", "foo=1,foo=1", "foo=1,foo=2",
        "foo", "=1", "1foo=1", "foo=a\tb", "foo=a\x7f", "foo=\xc3\xa9", "foo=1,bar",
        "foo@1vendor=1", "foo=1,,bar=2,foo=3",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        sc_trace_ctx c;
        c.tracestate_len = 7;
        if (ts(bad[i], &c))
            fail_msg("accepted tracestate '%s'", bad[i]);
        assert_int_equal(c.tracestate_len, 0);
        assert_string_equal(c.tracestate, "");
    }
}

static void test_tracestate_limits(void **state)
{
    (void)state;
    sc_trace_ctx c;
    char buf[SC_TRACESTATE_MAX_INPUT + 64];
    /* 32 members: kept; 33: the list is invalid */
    size_t n = 0;
    for (int i = 1; i <= 32; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%sbar%02d=%02d", i > 1 ? "," : "", i, i);
    assert_true(ts(buf, &c));
    assert_string_equal(c.tracestate, buf);
    snprintf(buf + n, sizeof(buf) - n, ",bar33=33");
    assert_false(ts(buf, &c));
    /* key lengths: 256 simple, 241@14 tenant and system; one more is invalid */
    memset(buf, 'z', 256);
    strcpy(buf + 256, "=1");
    assert_true(ts(buf, &c));
    memset(buf, 'z', 257);
    strcpy(buf + 257, "=1");
    assert_false(ts(buf, &c));
    memset(buf, 't', 241);
    buf[241] = '@';
    memset(buf + 242, 'v', 14);
    strcpy(buf + 256, "=1");
    assert_true(ts(buf, &c));
    memset(buf, 't', 242);
    strcpy(buf + 242, "@v=1");
    assert_false(ts(buf, &c));
    strcpy(buf, "t@");
    memset(buf + 2, 'v', 15);
    strcpy(buf + 17, "=1");
    assert_false(ts(buf, &c));
    /* values: 256 characters at most, not ending in a space */
    strcpy(buf, "k=");
    memset(buf + 2, 'v', 256);
    buf[258] = 0;
    assert_true(ts(buf, &c));
    memset(buf + 2, 'v', 257);
    buf[259] = 0;
    assert_false(ts(buf, &c));
    /* more than SC_TRACESTATE_MAX after normalising: whole members cut, long
     * ones (over 128) first, then from the end */
    n = (size_t)snprintf(buf, sizeof(buf), "big=");
    memset(buf + n, 'x', 200);
    n += 200;
    for (int i = 0; i < 30; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, ",k%02d=%012d", i, i);
    buf[n] = 0;
    assert_true(ts(buf, &c));
    assert_true(c.tracestate_len <= SC_TRACESTATE_MAX);
    assert_null(strstr(c.tracestate, "big="));
    assert_non_null(strstr(c.tracestate, "k00=000000000000"));
    assert_non_null(strstr(c.tracestate, "k29=000000000029")); /* 30 * 17 - 1 = 509 fits */
    n = 0;
    for (int i = 0; i < 32; i++)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%sk%02d=%020d", i ? "," : "", i, i);
    assert_true(ts(buf, &c));
    assert_true(c.tracestate_len <= SC_TRACESTATE_MAX);
    assert_non_null(strstr(c.tracestate, "k00="));
    assert_null(strstr(c.tracestate, "k31="));
    assert_int_equal(c.tracestate[c.tracestate_len - 1] != ',', 1);
    /* far too long an input is not read */
    memset(buf, ' ', SC_TRACESTATE_MAX_INPUT + 1);
    memcpy(buf, "a=1", 3);
    assert_false(sc_trace_parse_tracestate(buf, SC_TRACESTATE_MAX_INPUT + 1, &c));
}

static void in_add(sc_trace_in *in, const char *name, const char *value)
{
    sc_trace_in_header(in, name, strlen(name), value, strlen(value));
}

static void test_extract_w3c(void **state)
{
    (void)state;
    sc_trace_in in;
    sc_trace_ctx c;
    unsigned all = SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI;
    /* multiple tracestate fields are joined in order */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "tracestate", "foo=1,bar=2");
    in_add(&in, "traceparent", "00-" TID "-" SID "-00");
    in_add(&in, "tracestate", "rojo=1,congo=2");
    in_add(&in, "tracestate", "");
    in_add(&in, "tracestate", "baz=3");
    sc_trace_extract(&in, all, &c);
    assert_true(c.valid);
    assert_ids(&c, TID, SID);
    assert_string_equal(c.tracestate, "foo=1,bar=2,rojo=1,congo=2,baz=3");
    /* a key twice across fields: the tracestate goes, the traceparent stays */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "traceparent", "00-" TID "-" SID "-00");
    in_add(&in, "tracestate", "foo=1");
    in_add(&in, "tracestate", "foo=2");
    sc_trace_extract(&in, all, &c);
    assert_true(c.valid);
    assert_int_equal(c.tracestate_len, 0);
    /* two traceparent headers: invalid, a new trace */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "traceparent", "00-" TID "-" SID "-01");
    in_add(&in, "traceparent", "00-" TID "-" SID "-01");
    in_add(&in, "tracestate", "foo=1");
    sc_trace_extract(&in, all, &c);
    assert_false(c.valid);
    assert_int_equal(c.tracestate_len, 0);
    assert_int_equal(c.decision, SC_TRACE_DECISION_NONE);
    /* tracestate without a traceparent is not read */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "tracestate", "foo=1");
    sc_trace_extract(&in, all, &c);
    assert_false(c.valid);
    assert_int_equal(c.tracestate_len, 0);
    /* W3C off: traceparent ignored */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "traceparent", TP_SPEC);
    sc_trace_extract(&in, SC_TRACE_FMT_B3, &c);
    assert_false(c.valid);
    /* too many tracestate fields: dropped, traceparent kept */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "traceparent", TP_SPEC);
    for (int i = 0; i < SC_TRACESTATE_MAX_FIELDS + 1; i++)
        in_add(&in, "tracestate", "a=1");
    sc_trace_extract(&in, all, &c);
    assert_true(c.valid);
    assert_int_equal(c.tracestate_len, 0);
    /* which headers are trace headers */
    sc_trace_in_init(&in, "x-force-trace");
    assert_true(sc_trace_in_header(&in, "traceparent", 11, "x", 1));
    assert_true(sc_trace_in_header(&in, "b3", 2, "x", 1));
    assert_true(sc_trace_in_header(&in, "x-b3-sampled", 12, "1", 1));
    assert_false(sc_trace_in_header(&in, "x-b3-other", 10, "1", 1));
    assert_false(sc_trace_in_header(&in, "x-b3-", 5, "1", 1));
    assert_false(sc_trace_in_header(&in, "trace-parent", 12, "x", 1));
    assert_false(sc_trace_in_header(&in, "x-force-trace", 13, "1", 1));
    assert_true(in.forced);
}

static void test_force_header(void **state)
{
    (void)state;
    static const struct {
        const char *v;
        bool forced;
    } cases[] = {{"1", true}, {"yes", true}, {"true", true}, {" 1 ", true},
                 {"", false}, {"0", false}, {"false", false}, {"FALSE", false}, {" ", false}};
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_trace_in in;
        sc_trace_in_init(&in, "x-debug");
        in_add(&in, "x-debug", cases[i].v);
        assert_int_equal(in.forced, cases[i].forced);
    }
    sc_trace_in in;
    sc_trace_in_init(&in, NULL);
    in_add(&in, "x-debug", "1");
    assert_false(in.forced);
}

static bool b3(const char *s, sc_trace_ctx *c) { return sc_trace_parse_b3(s, strlen(s), c); }

static void test_b3_single(void **state)
{
    (void)state;
    sc_trace_ctx c;
    assert_true(b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90", &c));
    assert_true(c.valid);
    assert_int_equal(c.format, SC_TRACE_FMT_B3);
    assert_ids(&c, "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1");
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    assert_true(b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1", &c));
    assert_int_equal(c.decision, SC_TRACE_DECISION_NONE); /* deferred */
    assert_true(b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-0", &c));
    assert_int_equal(c.decision, SC_TRACE_DECISION_NOT_SAMPLED);
    assert_true(b3("80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-d", &c));
    assert_true(c.debug);
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    /* 64-bit trace IDs are left-padded */
    assert_true(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-1", &c));
    assert_ids(&c, "000000000000000064fe8b2a57d3eff7", "e457b5a2e4d86bd1");
    /* a lone sampling state: a decision, no context */
    assert_true(b3("0", &c));
    assert_false(c.valid);
    assert_int_equal(c.decision, SC_TRACE_DECISION_NOT_SAMPLED);
    assert_true(b3(" d ", &c));
    assert_true(c.debug);
    static const char *const bad[] = {
        "", "2", "x", "-", "--",
        "80f198ee56343ba864fe8b2a57d3eff7",
        "80f198ee56343ba864fe8b2a57d3eff7-",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-2",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b9",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b900",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90-x",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-11",
        "80F198EE56343BA864FE8B2A57D3EFF7-e457b5a2e4d86bd1-1",
        "80f198ee56343ba864fe8b2a57d3ef-e457b5a2e4d86bd1-1",  /* 30 characters */
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd-1",
        "00000000000000000000000000000000-e457b5a2e4d86bd1-1",
        "0000000000000000-e457b5a2e4d86bd1-1",
        "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1",
        "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-zz e3ac9a4f6e3b9",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        if (b3(bad[i], &c))
            fail_msg("accepted b3 '%s'", bad[i]);
        assert_false(c.valid);
        assert_int_equal(c.decision, SC_TRACE_DECISION_NONE);
    }
}

static void test_b3_multi(void **state)
{
    (void)state;
    sc_trace_in in;
    sc_trace_ctx c;
    sc_trace_in_init(&in, NULL);
    in_add(&in, "x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124");
    in_add(&in, "x-b3-spanid", "a2fb4a1d1a96d312");
    in_add(&in, "x-b3-parentspanid", "0020000000000001");
    in_add(&in, "x-b3-sampled", "1");
    assert_true(sc_trace_parse_b3multi(&in, &c));
    assert_true(c.valid);
    assert_int_equal(c.format, SC_TRACE_FMT_B3MULTI);
    assert_ids(&c, "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312");
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    /* 64-bit, "true", debug flag */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "x-b3-traceid", "48485a3953bb6124");
    in_add(&in, "x-b3-spanid", "a2fb4a1d1a96d312");
    in_add(&in, "x-b3-sampled", "false");
    in_add(&in, "x-b3-flags", "1");
    assert_true(sc_trace_parse_b3multi(&in, &c));
    assert_ids(&c, "000000000000000048485a3953bb6124", "a2fb4a1d1a96d312");
    assert_true(c.debug);
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    /* sampled alone: a decision without context */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "x-b3-sampled", "0");
    assert_true(sc_trace_parse_b3multi(&in, &c));
    assert_false(c.valid);
    assert_int_equal(c.decision, SC_TRACE_DECISION_NOT_SAMPLED);
    /* invalid: one ID without the other, bad values, repeats */
    static const char *const bad[][2] = {
        {"x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"},
        {"x-b3-spanid", "a2fb4a1d1a96d312"},
        {"x-b3-sampled", "yes"},
        {"x-b3-flags", "2"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        sc_trace_in_init(&in, NULL);
        in_add(&in, bad[i][0], bad[i][1]);
        assert_false(sc_trace_parse_b3multi(&in, &c));
        assert_false(c.valid);
        assert_int_equal(c.decision, SC_TRACE_DECISION_NONE);
    }
    sc_trace_in_init(&in, NULL);
    in_add(&in, "x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124");
    in_add(&in, "x-b3-spanid", "a2fb4a1d1a96d312");
    in_add(&in, "x-b3-spanid", "a2fb4a1d1a96d312");
    assert_false(sc_trace_parse_b3multi(&in, &c));
    sc_trace_in_init(&in, NULL);
    in_add(&in, "x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124");
    in_add(&in, "x-b3-spanid", "a2fb4a1d1a96d312");
    in_add(&in, "x-b3-parentspanid", "xyz");
    in_add(&in, "x-b3-sampled", "1");
    assert_false(sc_trace_parse_b3multi(&in, &c));
    assert_int_equal(c.decision, SC_TRACE_DECISION_NONE);
}

static void test_extract_precedence(void **state)
{
    (void)state;
    sc_trace_in in;
    sc_trace_ctx c;
    unsigned all = SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI;
    sc_trace_in_init(&in, NULL);
    in_add(&in, "b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
    in_add(&in, "traceparent", "00-" TID "-" SID "-00");
    sc_trace_extract(&in, all, &c);
    assert_int_equal(c.format, SC_TRACE_FMT_W3C);
    sc_trace_extract(&in, SC_TRACE_FMT_B3, &c);
    assert_int_equal(c.format, SC_TRACE_FMT_B3);
    /* an invalid traceparent falls through to b3 */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "traceparent", "00-" TID "-" SID "-0x");
    in_add(&in, "b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
    sc_trace_extract(&in, all, &c);
    assert_int_equal(c.format, SC_TRACE_FMT_B3);
    /* a lone b3 decision and no IDs anywhere: a decision, new trace */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "b3", "d");
    sc_trace_extract(&in, all, &c);
    assert_false(c.valid);
    assert_true(c.debug);
    assert_int_equal(c.decision, SC_TRACE_DECISION_SAMPLED);
    /* ... but b3 disabled: nothing */
    sc_trace_extract(&in, SC_TRACE_FMT_W3C, &c);
    assert_int_equal(c.decision, SC_TRACE_DECISION_NONE);
    /* b3 single given twice: ignored, multi used */
    sc_trace_in_init(&in, NULL);
    in_add(&in, "b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
    in_add(&in, "b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1");
    in_add(&in, "x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124");
    in_add(&in, "x-b3-spanid", "a2fb4a1d1a96d312");
    sc_trace_extract(&in, all, &c);
    assert_int_equal(c.format, SC_TRACE_FMT_B3MULTI);
}

static const char *out_get(const sc_trace_out *o, const char *name, char *buf)
{
    for (size_t i = 0; i < o->n; i++)
        if (strlen(name) == o->h[i].name_len && memcmp(name, o->h[i].name, o->h[i].name_len) == 0) {
            memcpy(buf, o->h[i].value, o->h[i].value_len);
            buf[o->h[i].value_len] = 0;
            return buf;
        }
    return NULL;
}

static void test_inject(void **state)
{
    (void)state;
    sc_trace_ctx c;
    assert_true(tp("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &c));
    assert_true(ts("rojo=00f067aa0ba902b7, congo=t61rcWkgMzE", &c));
    const uint8_t span[8] = {0xb9, 0xc7, 0xc9, 0x89, 0xf9, 0x79, 0x18, 0xe1};
    const uint8_t parent[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    sc_trace_out o;
    char v[1024];
    unsigned all = SC_TRACE_FMT_W3C | SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI;
    assert_int_equal(sc_trace_inject(&c, span, parent, true, all, &o), 7);
    assert_string_equal(out_get(&o, "traceparent", v), "00-4bf92f3577b34da6a3ce929d0e0e4736-b9c7c989f97918e1-01");
    assert_string_equal(out_get(&o, "tracestate", v), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    assert_string_equal(out_get(&o, "b3", v),
                        "4bf92f3577b34da6a3ce929d0e0e4736-b9c7c989f97918e1-1-0102030405060708");
    assert_string_equal(out_get(&o, "x-b3-traceid", v), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_string_equal(out_get(&o, "x-b3-spanid", v), "b9c7c989f97918e1");
    assert_string_equal(out_get(&o, "x-b3-parentspanid", v), "0102030405060708");
    assert_string_equal(out_get(&o, "x-b3-sampled", v), "1");
    assert_null(out_get(&o, "x-b3-flags", v));
    /* not sampled, no parent, W3C only; what it wrote parses back */
    assert_int_equal(sc_trace_inject(&c, span, NULL, false, SC_TRACE_FMT_W3C, &o), 2);
    sc_trace_ctx back;
    assert_true(tp(out_get(&o, "traceparent", v), &back));
    assert_int_equal(back.decision, SC_TRACE_DECISION_NOT_SAMPLED);
    assert_memory_equal(back.trace_id, c.trace_id, 16);
    assert_memory_equal(back.span_id, span, 8);
    /* a 64-bit B3 trace ID goes out as 16 characters; debug as d / flags */
    assert_true(b3("64fe8b2a57d3eff7-e457b5a2e4d86bd1-d", &c));
    assert_int_equal(sc_trace_inject(&c, span, NULL, true, SC_TRACE_FMT_B3 | SC_TRACE_FMT_B3MULTI, &o), 4);
    assert_string_equal(out_get(&o, "b3", v), "64fe8b2a57d3eff7-b9c7c989f97918e1-d");
    assert_string_equal(out_get(&o, "x-b3-traceid", v), "64fe8b2a57d3eff7");
    assert_string_equal(out_get(&o, "x-b3-flags", v), "1");
    assert_null(out_get(&o, "x-b3-sampled", v));
    assert_true(b3(out_get(&o, "b3", v), &back));
    assert_memory_equal(back.trace_id, c.trace_id, 16);
    /* the longest tracestate fits with everything else */
    char big[SC_TRACESTATE_MAX + 1];
    size_t n = 0;
    for (int i = 0; n + 17 <= SC_TRACESTATE_MAX; i++)
        n += (size_t)snprintf(big + n, sizeof(big) - n, "%sk%02d=%012d", i ? "," : "", i, i);
    assert_true(tp(TP_SPEC, &c));
    assert_true(ts(big, &c));
    assert_int_equal(sc_trace_inject(&c, span, parent, true, all, &o), 7);
    assert_string_equal(out_get(&o, "tracestate", v), big);
}

static void test_sampler(void **state)
{
    (void)state;
    sc_sampler s;
    uint8_t id[16] = {0};
    sc_sampler_init(&s, 0);
    id[15] = 1;
    assert_false(sc_sampler_ratio(&s, id));
    sc_sampler_init(&s, 1);
    memset(id, 0xff, 16);
    assert_true(sc_sampler_ratio(&s, id));
    sc_sampler_init(&s, 0.5);
    /* (last 8 bytes >> 1) < 2^62: 0x7fff... >> 1 is below, 0x8000... >> 1 is not */
    memset(id + 8, 0, 8);
    id[8] = 0x7f;
    assert_true(sc_sampler_ratio(&s, id));
    id[8] = 0x80;
    assert_false(sc_sampler_ratio(&s, id));
    /* the first 8 bytes do not matter */
    memset(id, 0, 8);
    assert_false(sc_sampler_ratio(&s, id));
    /* about the ratio over random IDs, and the same answer twice */
    sc_trace_rng r;
    sc_trace_rng_seed(&r, 42);
    sc_sampler_init(&s, 0.1);
    int yes = 0;
    for (int i = 0; i < 20000; i++) {
        sc_trace_new_trace_id(&r, id);
        bool a = sc_sampler_ratio(&s, id);
        assert_int_equal(a, sc_sampler_ratio(&s, id));
        yes += a;
    }
    assert_in_range(yes, 1700, 2300);
    /* parent-based: the caller decides; the force header wins */
    sc_trace_ctx c = {0};
    sc_sample_reason why;
    sc_sampler_init(&s, 0);
    c.decision = SC_TRACE_DECISION_SAMPLED;
    assert_true(sc_sampler_decide(&s, &c, false, &why));
    assert_int_equal(why, SC_SAMPLE_BY_PARENT);
    sc_sampler_init(&s, 1);
    c.decision = SC_TRACE_DECISION_NOT_SAMPLED;
    assert_false(sc_sampler_decide(&s, &c, false, &why));
    assert_true(sc_sampler_decide(&s, &c, true, &why));
    assert_int_equal(why, SC_SAMPLE_BY_FORCE);
    c.decision = SC_TRACE_DECISION_NONE;
    assert_true(sc_sampler_decide(&s, &c, false, &why));
    assert_int_equal(why, SC_SAMPLE_BY_RATIO);
    sc_sampler_init(&s, -3);
    assert_false(sc_sampler_decide(&s, &c, false, NULL));
    sc_sampler_init(&s, 7);
    assert_true(sc_sampler_decide(&s, &c, false, NULL));
}

static void test_ids(void **state)
{
    (void)state;
    sc_trace_rng r;
    sc_trace_rng_init(&r);
    uint8_t a[16], b[16], sa[8], sb[8];
    sc_trace_new_trace_id(&r, a);
    sc_trace_new_trace_id(&r, b);
    assert_false(sc_trace_id_is_zero(a, 16));
    assert_memory_not_equal(a, b, 16);
    sc_trace_new_span_id(&r, sa);
    sc_trace_new_span_id(&r, sb);
    assert_false(sc_trace_id_is_zero(sa, 8));
    assert_memory_not_equal(sa, sb, 8);
    /* seeded: reproducible */
    sc_trace_rng_seed(&r, 7);
    sc_trace_new_trace_id(&r, a);
    sc_trace_rng_seed(&r, 7);
    sc_trace_new_trace_id(&r, b);
    assert_memory_equal(a, b, 16);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traceparent_spec_examples),
        cmocka_unit_test(test_traceparent_invalid),
        cmocka_unit_test(test_traceparent_versions_and_ows),
        cmocka_unit_test(test_tracestate_valid),
        cmocka_unit_test(test_tracestate_invalid),
        cmocka_unit_test(test_tracestate_limits),
        cmocka_unit_test(test_extract_w3c),
        cmocka_unit_test(test_force_header),
        cmocka_unit_test(test_b3_single),
        cmocka_unit_test(test_b3_multi),
        cmocka_unit_test(test_extract_precedence),
        cmocka_unit_test(test_inject),
        cmocka_unit_test(test_sampler),
        cmocka_unit_test(test_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

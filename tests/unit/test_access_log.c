/*
 * test_access_log.c: the access log without the request path: the JSON
 * line (every field, escaping of any bytes, per-field truncation, the
 * time), selection (all, errors, slow, sample by request ID), the rings
 * and the writer thread (wrap-around, concurrent producers, drops counted
 * while the writer is stalled, shutdown with a stuck destination, reopen),
 * and the access_log: section of sidecar.yaml.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "obs/access_log.h"
#include "obs/jsonw.h"
#include "obs/observe.h"
#include "obs/request_id.h"

#define S(x) ((sc_obs_str){(x), sizeof(x) - 1})

/* A full record as the request path would fill it. */
static sc_access_record sample_record(void)
{
    sc_access_record r;
    memset(&r, 0, sizeof(r));
    r.start_unix_ns = 1796621477123456789ull; /* 2026-12-07T05:31:17.123Z */
    r.duration_ns = 12345678;
    r.upstream_ns = 11000999;
    r.upstream = S("payments");
    r.method = S("POST");
    r.authority = S("payments.internal");
    r.path = S("/shop.Payments/Charge");
    r.status = 200;
    r.grpc_status = 0;
    r.attempts = 2;
    r.instance = S("10.0.0.7:15443");
    r.bytes_in = 21;
    r.bytes_out = 1048576;
    r.caller = S("spiffe://example.org/ns/default/sa/web");
    r.request_id = S("3f2a9c1e-0b7d-4e59-a2c4-9d8e7f6a5b4c");
    r.trace_id = S("4bf92f3577b34da6a3ce929d0e0e4736");
    r.span_id = S("00f067aa0ba902b7");
    r.direction = SC_OBS_OUTBOUND;
    r.down_proto = SC_OBS_PROTO_HTTP2;
    r.up_proto = SC_OBS_PROTO_HTTP2;
    r.up_tls = true;
    r.grpc = true;
    return r;
}

static json_t *format_parse(const sc_access_record *r, char *line, size_t *len_out)
{
    size_t n = sc_access_format(r, line, SC_ACCESS_LINE_MAX);
    assert_true(n > 0 && n <= SC_ACCESS_LINE_MAX);
    assert_int_equal(line[n - 1], '\n');
    assert_null(memchr(line, '\n', n - 1)); /* one line */
    if (len_out)
        *len_out = n;
    json_error_t e;
    json_t *j = json_loadb(line, n, 0, &e); /* strict: rejects invalid UTF-8 */
    if (!j)
        fail_msg("not valid JSON (%s): %.*s", e.text, (int)n, line);
    return j;
}

static const char *jget_str(json_t *j, const char *k)
{
    json_t *v = json_object_get(j, k);
    assert_non_null(v);
    return json_is_null(v) ? NULL : json_string_value(v);
}

static void test_format_all_fields(void **state)
{
    (void)state;
    char line[SC_ACCESS_LINE_MAX];
    sc_access_record r = sample_record();
    json_t *j = format_parse(&r, line, NULL);
    /* the documented order, byte for byte */
    const char *want =
        "{\"time\":\"2026-12-07T05:31:17.123Z\",\"direction\":\"outbound\",\"upstream\":\"payments\","
        "\"method\":\"POST\",\"authority\":\"payments.internal\",\"path\":\"/shop.Payments/Charge\","
        "\"grpc_service\":\"shop.Payments\",\"grpc_method\":\"Charge\",\"status\":200,\"grpc_status\":0,"
        "\"reason\":null,\"duration_ms\":12.345,\"upstream_ms\":11.000,\"attempts\":2,"
        "\"instance\":\"10.0.0.7:15443\",\"bytes_in\":21,\"bytes_out\":1048576,"
        "\"caller\":\"spiffe://example.org/ns/default/sa/web\","
        "\"request_id\":\"3f2a9c1e-0b7d-4e59-a2c4-9d8e7f6a5b4c\","
        "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"span_id\":\"00f067aa0ba902b7\","
        "\"downstream_protocol\":\"HTTP/2\",\"upstream_protocol\":\"HTTP/2\",\"downstream_tls\":false,"
        "\"upstream_tls\":true}\n";
    assert_string_equal(line, want);
    assert_null(json_object_get(j, "truncated"));
    json_decref(j);
}

static void test_format_absent_fields_are_null(void **state)
{
    (void)state;
    char line[SC_ACCESS_LINE_MAX];
    sc_access_record r;
    memset(&r, 0, sizeof(r));
    r.start_unix_ns = 1;
    r.upstream_ns = -1;
    r.grpc_status = -1;
    r.direction = SC_OBS_INBOUND;
    r.reason = "no-healthy-instance";
    r.status = 503;
    r.down_proto = SC_OBS_PROTO_HTTP1;
    json_t *j = format_parse(&r, line, NULL);
    assert_string_equal(jget_str(j, "direction"), "inbound");
    assert_string_equal(jget_str(j, "time"), "1970-01-01T00:00:00.000Z");
    assert_string_equal(jget_str(j, "reason"), "no-healthy-instance");
    assert_string_equal(jget_str(j, "downstream_protocol"), "HTTP/1.1");
    static const char *const nulls[] = {"upstream", "method", "authority", "path", "grpc_service", "grpc_method",
                                        "grpc_status", "upstream_ms", "instance", "caller", "request_id",
                                        "trace_id", "span_id", "upstream_protocol"};
    for (size_t i = 0; i < SC_ARRAY_LEN(nulls); i++)
        assert_true(json_is_null(json_object_get(j, nulls[i])));
    assert_int_equal(json_integer_value(json_object_get(j, "status")), 503);
    assert_int_equal(json_integer_value(json_object_get(j, "attempts")), 0);
    json_decref(j);
}

static void test_format_grpc_split(void **state)
{
    (void)state;
    char line[SC_ACCESS_LINE_MAX];
    static const struct {
        const char *path, *svc, *mth;
        bool grpc;
    } cases[] = {
        {"/pkg.v1.Svc/Get", "pkg.v1.Svc", "Get", true},
        {"/Svc/M", "Svc", "M", true},
        {"/pkg.Svc/Get", NULL, NULL, false},    /* not gRPC: no split */
        {"/pkg.Svc", NULL, NULL, true},         /* no method */
        {"//Get", NULL, NULL, true},            /* no service */
        {"/pkg.Svc/", NULL, NULL, true},        /* empty method */
        {"/a/b/c", NULL, NULL, true},           /* not the gRPC form */
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_access_record r = sample_record();
        r.path = sc_obs_cstr(cases[i].path);
        r.grpc = cases[i].grpc;
        json_t *j = format_parse(&r, line, NULL);
        const char *svc = jget_str(j, "grpc_service"), *mth = jget_str(j, "grpc_method");
        if (cases[i].svc) {
            assert_string_equal(svc, cases[i].svc);
            assert_string_equal(mth, cases[i].mth);
        } else {
            assert_null(svc);
            assert_null(mth);
        }
        json_decref(j);
    }
}

static void test_format_instance_from_sockaddr(void **state)
{
    (void)state;
    char line[SC_ACCESS_LINE_MAX];
    sc_access_record r = sample_record();
    struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(8080)};
    inet_pton(AF_INET, "192.168.100.254", &in.sin_addr);
    r.instance = (sc_obs_str){0};
    r.instance_addr = (struct sockaddr *)&in;
    json_t *j = format_parse(&r, line, NULL);
    assert_string_equal(jget_str(j, "instance"), "192.168.100.254:8080");
    json_decref(j);
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(443)};
    inet_pton(AF_INET6, "2001:db8::1", &in6.sin6_addr);
    r.instance_addr = (struct sockaddr *)&in6;
    j = format_parse(&r, line, NULL);
    assert_string_equal(jget_str(j, "instance"), "[2001:db8::1]:443");
    json_decref(j);
}

/* Any bytes in a string field give valid JSON that decodes to what was
 * meant: escapes for quotes, backslashes and control characters, valid
 * UTF-8 kept, every invalid byte U+FFFD. */
static void test_format_escaping(void **state)
{
    (void)state;
    char line[SC_ACCESS_LINE_MAX];
    static const struct {
        const char *in, *decoded;
    } cases[] = {
        {"/a\"b\\c", "/a\"b\\c"},
        {"/x\r\ny\tz\b\f", "/x\r\ny\tz\b\f"},
        {"/\x01\x1f\x7f", "/\x01\x1f\x7f"},
        {"/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80", "/caf\xc3\xa9/\xe2\x82\xac/\xf0\x9f\x98\x80"},
        {"/\xff\xfe", "/\xef\xbf\xbd\xef\xbf\xbd"},                 /* not UTF-8 at all */
        {"/\xc0\xaf", "/\xef\xbf\xbd\xef\xbf\xbd"},                 /* overlong '/' */
        {"/\xed\xa0\x80", "/\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* a surrogate */
        {"/\xf4\x90\x80\x80", "/\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* above U+10FFFF */
        {"/\xe2\x82", "/\xef\xbf\xbd\xef\xbf\xbd"},                 /* cut short */
        {"/\x80x", "/\xef\xbf\xbdx"},                               /* a lone continuation byte */
        {"</script><script>", "</script><script>"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_access_record r = sample_record();
        r.path = sc_obs_cstr(cases[i].in);
        r.method = sc_obs_cstr(cases[i].in);
        r.caller = sc_obs_cstr(cases[i].in);
        json_t *j = format_parse(&r, line, NULL);
        assert_string_equal(jget_str(j, "path"), cases[i].decoded);
        assert_string_equal(jget_str(j, "method"), cases[i].decoded);
        assert_string_equal(jget_str(j, "caller"), cases[i].decoded);
        json_decref(j);
    }
    /* an embedded NUL is a character like any other */
    sc_access_record r = sample_record();
    r.path = (sc_obs_str){"/a\0b", 4};
    size_t n = sc_access_format(&r, line, sizeof(line));
    assert_non_null(strstr(line, "\"path\":\"/a\\u0000b\""));
    json_t *j = json_loadb(line, n, JSON_ALLOW_NUL, NULL);
    assert_non_null(j);
    json_decref(j);
}

/* Fields over their budget are cut at a character boundary with "...",
 * the line says "truncated":true and stays within SC_ACCESS_LINE_MAX even
 * when every field is at its worst (every byte escaped six-fold). */
static void test_format_truncation(void **state)
{
    (void)state;
    char line[SC_ACCESS_LINE_MAX];
    size_t big = 100000;
    char *junk = malloc(big);
    assert_non_null(junk);
    memset(junk, 'p', big);
    sc_access_record r = sample_record();
    r.path = (sc_obs_str){junk, big};
    size_t n;
    json_t *j = format_parse(&r, line, &n);
    const char *p = jget_str(j, "path");
    assert_int_equal(strlen(p), 2048 - 2);
    assert_memory_equal(p + strlen(p) - 3, "...", 3);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);

    /* worst case: control bytes everywhere */
    memset(junk, 0x01, big);
    sc_obs_str w = {junk, big};
    r.upstream = r.method = r.authority = r.path = r.instance = r.caller = r.request_id = r.trace_id = r.span_id = w;
    j = format_parse(&r, line, &n);
    assert_true(n <= SC_ACCESS_LINE_MAX);
    assert_true(json_is_true(json_object_get(j, "truncated")));
    json_decref(j);

    /* multi-byte characters are never cut in half */
    for (size_t i = 0; i + 1 < big; i += 2) {
        junk[i] = (char)0xc3;
        junk[i + 1] = (char)0xa9;
    }
    for (size_t len = 2000; len < 2100; len++) {
        sc_access_record q = sample_record();
        q.path = (sc_obs_str){junk, len & ~(size_t)1};
        j = format_parse(&q, line, &n); /* strict UTF-8 parse */
        json_decref(j);
    }
    free(junk);
}

/* The string writer at its exact budget boundaries. */
static void test_jw_str_budget(void **state)
{
    (void)state;
    char buf[64];
    sc_jw w;
    /* "abcdefgh" = 10 bytes with quotes: fits a budget of 10 */
    sc_jw_init(&w, buf, sizeof(buf));
    sc_jw_str(&w, "abcdefgh", 8, 10);
    assert_int_equal(w.p - buf, 10);
    assert_memory_equal(buf, "\"abcdefgh\"", 10);
    assert_false(w.truncated);
    /* 9 bytes do not: cut to 5 characters + "..." */
    sc_jw_init(&w, buf, sizeof(buf));
    sc_jw_str(&w, "abcdefghi", 9, 10);
    assert_int_equal(w.p - buf, 10);
    assert_memory_equal(buf, "\"abcde...\"", 10);
    assert_true(w.truncated);
    /* an escape that just fits is kept whole ... */
    sc_jw_init(&w, buf, sizeof(buf));
    sc_jw_str(&w, "ab\x01", 3, 10);
    assert_false(w.truncated);
    assert_memory_equal(buf, "\"ab\\u0001\"", 10);
    /* ... and one that does not is never split */
    sc_jw_init(&w, buf, sizeof(buf));
    sc_jw_str(&w, "ab\x01", 3, 9);
    assert_true(w.truncated);
    assert_int_equal(w.p - buf, 7);
    assert_memory_equal(buf, "\"ab...\"", 7);
    /* no room at all: overflow, nothing half written counts */
    sc_jw_init(&w, buf, 4);
    sc_jw_str(&w, "abc", 3, 10);
    assert_true(w.overflow);
    /* numbers */
    sc_jw_init(&w, buf, sizeof(buf));
    sc_jw_ms(&w, 0);
    SC_JW_LIT(&w, " ");
    sc_jw_ms(&w, 1234567);
    SC_JW_LIT(&w, " ");
    sc_jw_i64(&w, INT64_MIN);
    SC_JW_LIT(&w, " ");
    sc_jw_u64(&w, UINT64_MAX);
    *w.p = 0;
    assert_string_equal(buf, "0.000 1.234 -9223372036854775808 18446744073709551615");
}

static void test_time_matches_gmtime(void **state)
{
    (void)state;
    /* days from 1970 to 2400, leap days and century years included */
    for (int64_t day = 0; day < 157000; day += 1 + day % 97) {
        time_t t = (time_t)(day * 86400 + 3723);
        struct tm tm;
        gmtime_r(&t, &tm);
        int64_t y;
        unsigned m, d;
        sc_jw_civil(day, &y, &m, &d);
        assert_int_equal(y, tm.tm_year + 1900);
        assert_int_equal(m, (unsigned)tm.tm_mon + 1);
        assert_int_equal(d, (unsigned)tm.tm_mday);
    }
    char buf[40];
    sc_jw w;
    sc_jw_init(&w, buf, sizeof(buf));
    sc_jw_time(&w, 951782400999000000ull); /* 2000-02-29T00:00:00.999Z */
    *w.p = 0;
    assert_string_equal(buf, "\"2000-02-29T00:00:00.999Z\"");
    sc_jw_init(&w, buf, sizeof(buf));
    sc_jw_time(&w, 4107542399000000000ull); /* 2100-02-28T23:59:59Z */
    *w.p = 0;
    assert_string_equal(buf, "\"2100-02-28T23:59:59.000Z\"");
}

/* Without start_unix_ns the time is the monotonic start moved to the wall clock. */
static void test_time_from_monotonic(void **state)
{
    (void)state;
    sc_access_record r = sample_record();
    r.start_unix_ns = 0;
    r.start_mono_ns = sc_now_ns() - 2000000000ull; /* two seconds ago */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    uint64_t t = sc_access_wall_ns(&r);
    assert_true(t <= now - 1990000000ull && t >= now - 2100000000ull);
}

static void test_format_small_buffer(void **state)
{
    (void)state;
    char small[100];
    sc_access_record r = sample_record();
    assert_int_equal(sc_access_format(&r, small, sizeof(small)), 0);
}

/* ---- selection ---- */

static sc_access_log_config cfg_with(uint32_t select, uint64_t slow_ms, double ratio)
{
    sc_access_log_config c;
    memset(&c, 0, sizeof(c));
    c.enabled = true;
    c.select = select;
    c.slow_ms = slow_ms;
    c.sample_ratio = ratio;
    c.buffer_bytes = 1u << 16;
    c.flush_interval_ms = 10;
    return c;
}

static void test_is_error(void **state)
{
    (void)state;
    sc_access_record r = sample_record();
    assert_false(sc_access_is_error(&r));
    r.status = 404;
    assert_false(sc_access_is_error(&r)); /* the app's client error */
    r.status = 0;
    assert_true(sc_access_is_error(&r)); /* nothing reached the caller */
    r.status = 500;
    assert_true(sc_access_is_error(&r));
    r.status = 200;
    r.reason = "circuit-open";
    assert_true(sc_access_is_error(&r));
    r.reason = NULL;
    for (int g = 0; g <= SC_GRPC_STATUS_MAX; g++) {
        r.grpc_status = g;
        bool want = g == 2 || g == 4 || g == 8 || g == 12 || g == 13 || g == 14 || g == 15;
        assert_int_equal(sc_access_is_error(&r), want);
    }
    r.grpc_status = 99; /* out of range: not trusted as a failure */
    assert_false(sc_access_is_error(&r));
}

static void test_select_modes(void **state)
{
    (void)state;
    uint64_t rng = 88172645463325252ull;
    sc_access_select s;
    sc_access_record ok = sample_record(), bad = sample_record(), slow = sample_record();
    bad.status = 503;
    bad.reason = "connect-failure";
    slow.duration_ns = 600000000; /* 600ms */
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    sc_access_select_init(&s, &c);
    assert_true(sc_access_select_match(&s, &ok, &rng));
    c = cfg_with(SC_ACCESS_SELECT_ERRORS, 0, 0);
    sc_access_select_init(&s, &c);
    assert_false(sc_access_select_match(&s, &ok, &rng));
    assert_true(sc_access_select_match(&s, &bad, &rng));
    assert_false(sc_access_select_match(&s, &slow, &rng));
    c = cfg_with(SC_ACCESS_SELECT_SLOW, 500, 0);
    sc_access_select_init(&s, &c);
    assert_false(sc_access_select_match(&s, &ok, &rng));
    assert_false(sc_access_select_match(&s, &bad, &rng));
    assert_true(sc_access_select_match(&s, &slow, &rng));
    slow.duration_ns = 500000000; /* exactly the threshold: not slower */
    assert_false(sc_access_select_match(&s, &slow, &rng));
    slow.duration_ns = 500000001;
    assert_true(sc_access_select_match(&s, &slow, &rng));
    c = cfg_with(SC_ACCESS_SELECT_ERRORS | SC_ACCESS_SELECT_SLOW, 500, 0);
    sc_access_select_init(&s, &c);
    assert_false(sc_access_select_match(&s, &ok, &rng));
    assert_true(sc_access_select_match(&s, &bad, &rng));
    assert_true(sc_access_select_match(&s, &slow, &rng));
    c = cfg_with(SC_ACCESS_SELECT_SAMPLE, 0, 1.0);
    sc_access_select_init(&s, &c);
    assert_true(sc_access_select_match(&s, &ok, &rng));
}

/* A ratio selects about that share; by request ID the choice is the same
 * every time and in every sidecar with the same ratio; without an ID the
 * worker's generator decides. */
static void test_select_sample(void **state)
{
    (void)state;
    enum { N = 200000 };
    uint64_t rng = 1;
    sc_request_id_rng idr;
    sc_request_id_rng_seed(&idr, 99);
    static const double ratios[] = {0.01, 0.1, 0.5};
    for (size_t k = 0; k < SC_ARRAY_LEN(ratios); k++) {
        sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_SAMPLE, 0, ratios[k]);
        sc_access_select s, s2;
        sc_access_select_init(&s, &c);
        sc_access_select_init(&s2, &c); /* "another sidecar" */
        unsigned with_id = 0, without = 0;
        for (int i = 0; i < N; i++) {
            char id[SC_REQUEST_ID_LEN + 1];
            sc_request_id_generate(&idr, id);
            sc_access_record r = sample_record();
            r.request_id = (sc_obs_str){id, SC_REQUEST_ID_LEN};
            bool a = sc_access_select_match(&s, &r, &rng);
            assert_int_equal(sc_access_select_match(&s2, &r, &rng), a);
            assert_int_equal(sc_access_select_match(&s, &r, &rng), a);
            with_id += a;
            r.request_id = (sc_obs_str){0};
            without += sc_access_select_match(&s, &r, &rng);
        }
        double want = ratios[k] * N; /* within 10% (far beyond 6 standard deviations) */
        assert_true(with_id > want * 0.9 - 50 && with_id < want * 1.1 + 50);
        assert_true(without > want * 0.9 - 50 && without < want * 1.1 + 50);
    }
}

/* ---- rings and the writer ---- */

typedef struct reader {
    int fd;
    char *buf;
    size_t len, cap;
    pthread_t th;
} reader;

static void *reader_main(void *arg)
{
    reader *r = arg;
    for (;;) {
        if (r->cap - r->len < 65536) {
            r->cap = r->cap * 2 + 65536;
            r->buf = realloc(r->buf, r->cap);
        }
        ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len);
        if (n <= 0)
            break;
        r->len += (size_t)n;
    }
    return NULL;
}

static size_t count_lines(const char *b, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += b[i] == '\n';
    return k;
}

/* A log writing into a pipe read by a thread of the test. */
typedef struct piped {
    int fd[2];
    reader rd;
    sc_access_log *log;
} piped;

static void piped_start(piped *x, const sc_access_log_config *c, unsigned producers)
{
    memset(x, 0, sizeof(*x));
    assert_int_equal(pipe(x->fd), 0);
    x->rd.fd = x->fd[0];
    pthread_create(&x->rd.th, NULL, reader_main, &x->rd);
    assert_int_equal(sc_access_log_new_fd(c, producers, x->fd[1], &x->log), 0);
    assert_int_equal(sc_access_log_start(x->log), 0);
}

/* Stops the log (its end of the pipe closes), waits for the reader;
 * x->rd.buf holds everything written, the caller frees it. */
static void piped_stop(piped *x)
{
    sc_access_log_free(x->log);
    pthread_join(x->rd.th, NULL);
    close(x->fd[0]);
}

/* A small ring written many times over: lines of every length come out
 * whole and in order. */
static void test_ring_wraparound(void **state)
{
    (void)state;
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    c.buffer_bytes = 16384; /* the smallest ring: 2 lines of the largest size */
    piped x;
    piped_start(&x, &c, 1);
    sc_access_log *log = x.log;
    reader rd;
    sc_access_producer *pr = sc_access_log_producer(log, 0);
    assert_null(sc_access_log_producer(log, 1));
    char line[SC_ACCESS_LINE_MAX];
    unsigned sent = 0;
    for (unsigned i = 0; i < 20000; i++) {
        size_t len = 1 + (i * 7919u) % 3000; /* 1..3000 bytes, odd sizes to hit every offset */
        int n = snprintf(line, sizeof(line), "%u ", i);
        memset(line + n, 'a' + (char)(i % 26), len);
        line[n + len] = '\n';
        while (sc_access_producer_put(pr, line, (size_t)n + len + 1) < 0) {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL); /* the test waits; a worker would drop */
        }
        sent++;
    }
    assert_int_equal(sc_access_log_wait_drained(log, 10000), 0);
    sc_access_log_stats st;
    sc_access_log_get_stats(log, &st);
    assert_int_equal(st.lines, sent);
    piped_stop(&x);
    rd = x.rd;
    assert_int_equal(count_lines(rd.buf, rd.len), sent);
    char *s = rd.buf;
    for (unsigned i = 0; i < sent; i++) {
        char *nl = memchr(s, '\n', rd.len - (size_t)(s - rd.buf));
        assert_non_null(nl);
        unsigned got = (unsigned)strtoul(s, NULL, 10);
        assert_int_equal(got, i);
        size_t len = 1 + (i * 7919u) % 3000;
        char *body = strchr(s, ' ') + 1;
        assert_int_equal((size_t)(nl - body), len);
        for (size_t k = 0; k < len; k++)
            assert_int_equal(body[k], 'a' + (char)(i % 26));
        s = nl + 1;
    }
    free(rd.buf);
}

typedef struct prod_arg {
    sc_access_producer *p;
    unsigned id, n;
    unsigned queued, dropped;
} prod_arg;

static void *producer_main(void *arg)
{
    prod_arg *a = arg;
    for (unsigned i = 0; i < a->n; i++) {
        sc_access_record r = sample_record();
        char rid[64];
        int k = snprintf(rid, sizeof(rid), "w%u-%u", a->id, i);
        r.request_id = (sc_obs_str){rid, (size_t)k};
        int rv = sc_access_log_emit(a->p, &r);
        if (rv == 1)
            a->queued++;
        else
            a->dropped++;
    }
    return NULL;
}

/* Four producers at full speed, one writer, a reader: every queued line
 * arrives once, whole, in its producer's order; queued + dropped = sent
 * and the counters agree. */
static void test_concurrent_producers(void **state)
{
    (void)state;
    enum { W = 4, N = 20000 };
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    c.buffer_bytes = 1u << 18;
    piped x;
    piped_start(&x, &c, W);
    sc_access_log *log = x.log;
    prod_arg args[W];
    pthread_t th[W];
    for (unsigned i = 0; i < W; i++) {
        args[i] = (prod_arg){.p = sc_access_log_producer(log, i), .id = i, .n = N};
        pthread_create(&th[i], NULL, producer_main, &args[i]);
    }
    unsigned queued = 0, dropped = 0;
    for (unsigned i = 0; i < W; i++) {
        pthread_join(th[i], NULL);
        queued += args[i].queued;
        dropped += args[i].dropped;
    }
    assert_int_equal(queued + dropped, W * N);
    assert_int_equal(sc_access_log_wait_drained(log, 10000), 0);
    sc_access_log_stats st;
    sc_access_log_get_stats(log, &st);
    assert_int_equal(st.lines, queued);
    assert_int_equal(st.dropped, dropped);
    piped_stop(&x);
    reader rd = x.rd;
    assert_int_equal(count_lines(rd.buf, rd.len), queued);
    int last[W];
    for (unsigned i = 0; i < W; i++)
        last[i] = -1;
    char *s = rd.buf, *end = rd.buf + rd.len;
    while (s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s));
        json_error_t e;
        json_t *j = json_loadb(s, (size_t)(nl - s), 0, &e);
        assert_non_null(j);
        unsigned w, i;
        assert_int_equal(sscanf(json_string_value(json_object_get(j, "request_id")), "w%u-%u", &w, &i), 2);
        assert_true(w < W);
        assert_true((int)i > last[w]); /* in order, never twice */
        last[w] = (int)i;
        json_decref(j);
        s = nl + 1;
    }
    assert_int_equal(st.bytes_written, rd.len);
    free(rd.buf);
}

/* The destination stops reading: emit never blocks, the lines that do not
 * fit are dropped and counted; when the destination reads again, every
 * queued line arrives. */
static void test_stalled_writer_drops(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    fcntl(p[1], F_SETPIPE_SZ, 4096);
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    c.buffer_bytes = 1u << 16;
    sc_access_log *log;
    assert_int_equal(sc_access_log_new_fd(&c, 1, p[1], &log), 0);
    assert_int_equal(sc_access_log_start(log), 0);
    sc_access_producer *pr = sc_access_log_producer(log, 0);
    sc_access_record r = sample_record();
    unsigned queued = 0, dropped = 0;
    uint64_t worst = 0;
    for (int i = 0; i < 5000; i++) {
        uint64_t t0 = sc_now_ns();
        int rv = sc_access_log_emit(pr, &r);
        uint64_t dt = sc_now_ns() - t0;
        worst = dt > worst ? dt : worst;
        if (rv == 1)
            queued++;
        else {
            assert_int_equal(rv, -ENOBUFS);
            dropped++;
        }
    }
    /* 64 KiB of ring and 4 KiB of pipe hold ~150 lines of ~450 bytes */
    assert_true(queued < 400);
    assert_true(dropped > 4000);
    assert_true(worst < 50000000ull); /* never waited for the writer (50ms: slack for sanitizers) */
    sc_access_log_stats st;
    sc_access_log_get_stats(log, &st);
    assert_int_equal(st.dropped, dropped);
    char text[4096];
    FILE *f = fmemopen(text, sizeof(text), "w");
    sc_access_log_render_stats(log, f);
    fclose(f);
    char want[128];
    snprintf(want, sizeof(want), "sidecar_access_log_dropped_total %u\n", dropped);
    assert_non_null(strstr(text, want));
    /* the destination reads again */
    reader rd = {.fd = p[0]};
    pthread_create(&rd.th, NULL, reader_main, &rd);
    assert_int_equal(sc_access_log_wait_drained(log, 10000), 0);
    sc_access_log_free(log);
    pthread_join(rd.th, NULL);
    close(p[0]);
    assert_int_equal(count_lines(rd.buf, rd.len), queued);
    free(rd.buf);
}

/* Once a ring has been half full, later lines in a nearly empty ring do
 * not wake the writer: the worker looks at the writer's real position
 * before kicking. (The defect: a stale cached position made every line
 * look like a half-full ring, one wake-up and two context switches per
 * line, 1.3x the CPU of a request instead of 1.06x.) */
static void test_no_kick_per_line(void **state)
{
    (void)state;
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    c.buffer_bytes = 1u << 20;
    c.flush_interval_ms = 10000; /* no timer wake-ups during the test */
    piped x;
    piped_start(&x, &c, 1);
    sc_access_log *log = x.log;
    sc_access_producer *pr = sc_access_log_producer(log, 0);
    sc_access_record r = sample_record();
    /* past half of the ring back to back (~570 KiB): a kick */
    for (int i = 0; i < 900; i++)
        assert_int_equal(sc_access_log_emit(pr, &r), 1);
    assert_int_equal(sc_access_log_wait_drained(log, 5000), 0);
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL); /* the writer is asleep again */
    sc_access_log_stats before, after;
    sc_access_log_get_stats(log, &before);
    /* then slowly, the ring nearly empty: no more wake-ups */
    for (int i = 0; i < 50; i++) {
        assert_int_equal(sc_access_log_emit(pr, &r), 1);
        struct timespec gap = {0, 1000000};
        nanosleep(&gap, NULL);
    }
    sc_access_log_get_stats(log, &after);
    assert_true(after.wakeups - before.wakeups < 5);
    piped_stop(&x);
    assert_int_equal(count_lines(x.rd.buf, x.rd.len), 950);
    free(x.rd.buf);
}

/* Shutdown with a destination that never reads: bounded by the stop
 * grace, the writer is cancelled in its write. */
static void test_stop_with_stuck_destination(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    fcntl(p[1], F_SETPIPE_SZ, 4096);
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    sc_access_log *log;
    assert_int_equal(sc_access_log_new_fd(&c, 1, p[1], &log), 0);
    sc_access_log_set_stop_grace(log, 200);
    assert_int_equal(sc_access_log_start(log), 0);
    sc_access_record r = sample_record();
    for (int i = 0; i < 100; i++)
        sc_access_log_emit(sc_access_log_producer(log, 0), &r);
    uint64_t t0 = sc_now_ms();
    sc_access_log_free(log);
    uint64_t took = sc_now_ms() - t0;
    assert_true(took >= 150 && took < 3000);
    close(p[0]);
}

/* Shutdown writes everything queued (no flush interval to wait for). */
static void test_stop_flushes(void **state)
{
    (void)state;
    char path[] = "/tmp/test_access_log.XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    c.flush_interval_ms = 10000;
    sc_access_log *log;
    assert_int_equal(sc_access_log_new_fd(&c, 2, fd, &log), 0);
    assert_int_equal(sc_access_log_start(log), 0);
    sc_access_record r = sample_record();
    for (int i = 0; i < 10; i++)
        assert_int_equal(sc_access_log_emit(sc_access_log_producer(log, (unsigned)i % 2), &r), 1);
    sc_access_log_free(log);
    FILE *f = fopen(path, "r");
    char buf[SC_ACCESS_LINE_MAX];
    int lines = 0;
    while (fgets(buf, sizeof(buf), f))
        lines++;
    fclose(f);
    unlink(path);
    assert_int_equal(lines, 10);
}

static int file_lines(const char *path)
{
    char buf[SC_ACCESS_LINE_MAX];
    int n = 0;
    FILE *f = fopen(path, "r");
    while (f && fgets(buf, sizeof(buf), f))
        n++;
    if (f)
        fclose(f);
    return n;
}

static void emit_n(sc_access_producer *pr, int n)
{
    sc_access_record r = sample_record();
    for (int i = 0; i < n; i++)
        assert_int_equal(sc_access_log_emit(pr, &r), 1);
}

/* logrotate: the file is moved away, SIGHUP (reopen) makes a new one; the
 * lines before are in the old file, the lines after in the new. A failed
 * reopen keeps the file in use and loses nothing. */
static void test_reopen(void **state)
{
    (void)state;
    char dir[] = "/tmp/test_access_log_dir.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256], moved[256];
    snprintf(path, sizeof(path), "%s/access.log", dir);
    snprintf(moved, sizeof(moved), "%s/access.log.1", dir);
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    c.destination = SC_ACCESS_LOG_FILE;
    c.path = path;
    sc_access_log *log;
    char err[256];
    assert_int_equal(sc_access_log_new(&c, 1, &log, err, sizeof(err)), 0);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0640 & ~(unsigned)umask(umask(0)));
    assert_int_equal(sc_access_log_start(log), 0);
    sc_access_producer *pr = sc_access_log_producer(log, 0);
    emit_n(pr, 3);
    assert_int_equal(sc_access_log_wait_drained(log, 5000), 0);
    assert_int_equal(rename(path, moved), 0);
    sc_access_log_reopen(log);
    for (int i = 0; i < 200 && stat(path, &st) != 0; i++) {
        struct timespec ts = {0, 5000000};
        nanosleep(&ts, NULL);
    }
    assert_int_equal(stat(path, &st), 0);
    emit_n(pr, 2);
    assert_int_equal(sc_access_log_wait_drained(log, 5000), 0);
    assert_int_equal(file_lines(moved), 3);
    assert_int_equal(file_lines(path), 2);
    /* the directory goes away: the reopen fails, the open file stays in use */
    assert_int_equal(unlink(path), 0);
    assert_int_equal(unlink(moved), 0);
    assert_int_equal(rmdir(dir), 0);
    sc_access_log_reopen(log);
    struct timespec ts = {0, 50000000};
    nanosleep(&ts, NULL);
    emit_n(pr, 1);
    assert_int_equal(sc_access_log_wait_drained(log, 5000), 0);
    sc_access_log_stats s;
    sc_access_log_get_stats(log, &s);
    assert_int_equal(s.reopens, 1); /* the first one only */
    assert_int_equal(s.write_errors, 0);
    assert_int_equal(s.lines, 6);
    sc_access_log_free(log);
}

static void test_new_errors(void **state)
{
    (void)state;
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ALL, 0, 0);
    c.destination = SC_ACCESS_LOG_FILE;
    c.path = "/nonexistent-dir-for-test/access.log";
    sc_access_log *log = (sc_access_log *)1;
    char err[256];
    assert_int_equal(sc_access_log_new(&c, 1, &log, err, sizeof(err)), -ENOENT);
    assert_null(log);
    assert_non_null(strstr(err, "/nonexistent-dir-for-test/access.log"));
    assert_non_null(strstr(err, "No such file"));
    c.destination = SC_ACCESS_LOG_STDOUT;
    assert_int_equal(sc_access_log_new(&c, 0, &log, err, sizeof(err)), -EINVAL);
    /* a log never started is freed cleanly; stats with no log are zeros */
    assert_int_equal(sc_access_log_new(&c, 2, &log, err, sizeof(err)), 0);
    sc_access_log_reopen(log); /* stdout: nothing to reopen */
    sc_access_log_free(log);
    sc_access_log_free(NULL);
    /* the log off: the per-request calls are no-ops */
    sc_access_record r = sample_record();
    assert_null(sc_access_log_producer(NULL, 0));
    assert_int_equal(sc_access_log_emit(NULL, &r), 0);
    sc_access_log_stats st;
    sc_access_log_get_stats(NULL, &st);
    assert_int_equal(st.dropped, 0);
}

/* ---- what the request path calls (observe.h) ---- */

static void test_observe(void **state)
{
    (void)state;
    int p[2];
    assert_int_equal(pipe(p), 0);
    sc_access_log_config c = cfg_with(SC_ACCESS_SELECT_ERRORS, 0, 0);
    sc_access_log *log;
    assert_int_equal(sc_access_log_new_fd(&c, 2, p[1], &log), 0);
    sc_failures *f = sc_failures_new(2);
    sc_obs_worker *o = sc_obs_workers_new(2, log, f);
    assert_non_null(o);
    assert_ptr_equal(o[1].log, sc_access_log_producer(log, 1));
    assert_ptr_equal(o[1].failures, sc_failures_ring(f, 1));
    /* request IDs: one valid kept as it is; absent, invalid or repeated replaced */
    char buf[SC_REQUEST_ID_LEN + 1];
    const char *id;
    size_t len;
    const char *mine = "web-7:abc";
    assert_int_equal(sc_obs_request_id(&o[0], mine, strlen(mine), 1, buf, &id, &len), 0);
    assert_ptr_equal(id, mine);
    assert_int_equal(len, strlen(mine));
    assert_int_equal(sc_obs_request_id(&o[0], NULL, 0, 0, buf, &id, &len), 1);
    assert_ptr_equal(id, buf);
    assert_int_equal(len, SC_REQUEST_ID_LEN);
    assert_true(sc_request_id_valid(id, len));
    assert_int_equal(sc_obs_request_id(&o[0], "a b", 3, 1, buf, &id, &len), 1);
    assert_int_equal(sc_obs_request_id(&o[0], mine, strlen(mine), 2, buf, &id, &len), 1);
    /* the workers' generators differ */
    char other[SC_REQUEST_ID_LEN + 1];
    sc_obs_request_id(&o[1], NULL, 0, 0, other, &id, &len);
    assert_string_not_equal(buf, other);
    /* the end of an exchange: a success is neither logged (select: errors) nor
     * recorded; a failure is both */
    sc_access_record ok = sample_record(), bad = sample_record();
    bad.status = 503;
    bad.reason = "no-healthy-instance";
    sc_obs_done(&o[1], &ok);
    sc_obs_done(&o[1], &bad);
    sc_access_log_stats st;
    sc_access_log_get_stats(log, &st);
    assert_int_equal(st.lines, 1);
    assert_int_equal(sc_failures_total(f), 1);
    /* with the access log off the failure ring still records */
    sc_obs_worker *off = sc_obs_workers_new(1, NULL, f);
    assert_null(off[0].log);
    sc_obs_done(&off[0], &bad);
    assert_int_equal(sc_failures_total(f), 2);
    free(off);
    free(o);
    sc_access_log_free(log);
    sc_failures_free(f);
    close(p[0]);
}

/* ---- access_log: in sidecar.yaml ---- */

static int load(const char *section, sc_config **cfg, sc_diags *d)
{
    char yaml[2048];
    snprintf(yaml, sizeof(yaml), "service: {name: web}\n%s", section);
    memset(d, 0, sizeof(*d));
    return sc_config_load_string(yaml, strlen(yaml), "sidecar.yaml", "/tmp", cfg, d);
}

static void expect_error(const char *section, const char *field, const char *needle)
{
    sc_config *cfg = NULL;
    sc_diags d;
    assert_int_equal(load(section, &cfg, &d), -EINVAL);
    assert_null(cfg);
    bool found = false;
    for (size_t i = 0; i < d.n; i++)
        if (strcmp(d.v[i].field, field) == 0 && strstr(d.v[i].msg, needle))
            found = true;
    if (!found) {
        sc_diags_print(&d, stderr);
        fail_msg("expected %s: ...%s...", field, needle);
    }
    sc_diags_free(&d);
}

static void test_config_defaults_and_forms(void **state)
{
    (void)state;
    sc_config *cfg;
    sc_diags d;
    assert_int_equal(load("", &cfg, &d), 0);
    assert_false(cfg->access_log.enabled);
    sc_config_free(cfg);
    assert_int_equal(load("access_log: {}\n", &cfg, &d), 0);
    assert_true(cfg->access_log.enabled);
    assert_int_equal(cfg->access_log.destination, SC_ACCESS_LOG_STDOUT);
    assert_int_equal(cfg->access_log.select, SC_ACCESS_SELECT_ALL);
    assert_int_equal(cfg->access_log.buffer_bytes, 1u << 20);
    assert_int_equal(cfg->access_log.flush_interval_ms, 100);
    sc_config_free(cfg);
    assert_int_equal(load("access_log:\n  destination: file\n  path: access.log\n  select: [errors, slow, sample]\n"
                          "  slow_threshold: 250ms\n  sample_ratio: 0.05\n  buffer: 4MiB\n  flush_interval: 50ms\n",
                          &cfg, &d),
                     0);
    assert_int_equal(cfg->access_log.destination, SC_ACCESS_LOG_FILE);
    assert_string_equal(cfg->access_log.path, "/tmp/access.log"); /* relative to the config's directory */
    assert_int_equal(cfg->access_log.select,
                     SC_ACCESS_SELECT_ERRORS | SC_ACCESS_SELECT_SLOW | SC_ACCESS_SELECT_SAMPLE);
    assert_int_equal(cfg->access_log.slow_ms, 250);
    assert_true(cfg->access_log.sample_ratio > 0.0499 && cfg->access_log.sample_ratio < 0.0501);
    assert_int_equal(cfg->access_log.buffer_bytes, 4u << 20);
    assert_int_equal(cfg->access_log.flush_interval_ms, 50);
    json_t *j = sc_config_to_json(cfg);
    char *txt = json_dumps(json_object_get(j, "access_log"), JSON_COMPACT | JSON_SORT_KEYS);
    assert_string_equal(txt, "{\"buffer\":4194304,\"destination\":\"file\",\"flush_interval\":\"50ms\","
                             "\"path\":\"/tmp/access.log\",\"sample_ratio\":0.050000000000000003,"
                             "\"select\":[\"errors\",\"slow\",\"sample\"],\"slow_threshold\":\"250ms\"}");
    free(txt);
    json_decref(j);
    sc_config_free(cfg);
    assert_int_equal(load("access_log: {destination: stderr, select: errors}\n", &cfg, &d), 0);
    assert_int_equal(cfg->access_log.destination, SC_ACCESS_LOG_STDERR);
    assert_int_equal(cfg->access_log.select, SC_ACCESS_SELECT_ERRORS);
    sc_config_free(cfg);
}

static void test_config_errors(void **state)
{
    (void)state;
    expect_error("access_log: {destination: syslog}\n", "access_log.destination", "expected stdout, stderr or file");
    expect_error("access_log: {destination: file}\n", "access_log.path", "needs a path");
    expect_error("access_log: {path: /tmp/x.log}\n", "access_log.path", "only with destination: file");
    expect_error("access_log: {destination: file, path: /nonexistent-dir-for-test/a.log}\n", "access_log.path",
                 "does not exist");
    expect_error("access_log: {destination: file, path: /tmp}\n", "access_log.path", "is a directory");
    expect_error("access_log: {select: some}\n", "access_log.select", "not a selection");
    expect_error("access_log: {select: []}\n", "access_log.select", "the list is empty");
    expect_error("access_log: {select: [all, errors]}\n", "access_log.select", "'all' already selects");
    expect_error("access_log: {select: [errors, errors]}\n", "access_log.select[1]", "listed twice");
    expect_error("access_log: {select: slow}\n", "access_log.slow_threshold", "needs a slow_threshold");
    expect_error("access_log: {select: errors, slow_threshold: 1s}\n", "access_log.slow_threshold",
                 "only used with select: slow");
    expect_error("access_log: {select: slow, slow_threshold: 0}\n", "access_log.slow_threshold", "");
    expect_error("access_log: {select: sample}\n", "access_log.sample_ratio", "needs a sample_ratio");
    expect_error("access_log: {select: sample, sample_ratio: 0}\n", "access_log.sample_ratio", "logs nothing");
    expect_error("access_log: {select: sample, sample_ratio: 1.5}\n", "access_log.sample_ratio", "ratio");
    expect_error("access_log: {sample_ratio: 0.5}\n", "access_log.sample_ratio", "only used with select: sample");
    expect_error("access_log: {buffer: 1KiB}\n", "access_log.buffer", "out of range");
    expect_error("access_log: {flush_interval: 1ms}\n", "access_log.flush_interval", "");
    expect_error("access_log: {flush_interval: 1m}\n", "access_log.flush_interval", "longer than 10s");
    expect_error("access_log: {destinaton: stdout}\n", "access_log.destinaton", "");
    expect_error("access_log: stdout\n", "access_log", "expected a mapping");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_format_all_fields),
        cmocka_unit_test(test_format_absent_fields_are_null),
        cmocka_unit_test(test_format_grpc_split),
        cmocka_unit_test(test_format_instance_from_sockaddr),
        cmocka_unit_test(test_format_escaping),
        cmocka_unit_test(test_format_truncation),
        cmocka_unit_test(test_jw_str_budget),
        cmocka_unit_test(test_time_matches_gmtime),
        cmocka_unit_test(test_time_from_monotonic),
        cmocka_unit_test(test_format_small_buffer),
        cmocka_unit_test(test_is_error),
        cmocka_unit_test(test_select_modes),
        cmocka_unit_test(test_select_sample),
        cmocka_unit_test(test_ring_wraparound),
        cmocka_unit_test(test_concurrent_producers),
        cmocka_unit_test(test_stalled_writer_drops),
        cmocka_unit_test(test_no_kick_per_line),
        cmocka_unit_test(test_stop_with_stuck_destination),
        cmocka_unit_test(test_stop_flushes),
        cmocka_unit_test(test_reopen),
        cmocka_unit_test(test_new_errors),
        cmocka_unit_test(test_observe),
        cmocka_unit_test(test_config_defaults_and_forms),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

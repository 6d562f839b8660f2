/*
 * test_alloc_fail.c: every allocation a request makes on its way through
 * the sidecar may fail. For N = 1, 2, ... the N-th allocation after the
 * caller connects returns NULL (once), until a run makes fewer than N
 * allocations; each run drives one request through the data plane
 * in-process (tests/support/driver.h) to the fake upstream and back, and
 * the caller must get either the full, correct response or a clean error
 * (a 5xx or gRPC error status, RST_STREAM, GOAWAY, or the connection
 * closed before the response claimed to be complete), never a response
 * that looks complete and is not, and never silence (a hang). The driver
 * checks that nothing is left accounted for once the connections close;
 * leaks show in the ASan build (tests/run.sh runs every unit test there).
 *
 * The wrappers (-Wl,--wrap=malloc,--wrap=calloc,--wrap=realloc, see
 * tests/CMakeLists.txt) see the sidecar's code and, when it is linked from
 * its static archive (SC_ALLOC_NGHTTP2_WRAPPED), nghttp2's. libev and
 * OpenSSL stay shared libraries the wrappers do not reach (libev aborts by
 * design when an allocation fails). strdup is not wrapped: the request path
 * calls it only for a TLS caller's identity, which these runs do not have.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <execinfo.h>
#include <unistd.h>
#include <nghttp2/nghttp2.h>

#include "core/log.h"
#include "driver.h"
#include "http/h1.h"

/* ---- failing allocator ---- */

void *__real_malloc(size_t n);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *p, size_t n);

static struct {
    bool armed;
    unsigned long count;            /* allocations since armed */
    unsigned long fail_at;          /* the one that fails (1-based) */
    unsigned long failed;           /* failures injected in this run */
} g_inj;

static bool inject(void)
{
    if (!g_inj.armed)
        return false;
    if (++g_inj.count != g_inj.fail_at)
        return false;
    g_inj.failed++;
    if (getenv("SC_ALLOC_TRACE")) {
        /* Where the failing allocation was asked for (addr2line -e the test binary). */
        void *frames[16];
        int n = backtrace(frames, 16);
        backtrace_symbols_fd(frames, n, STDERR_FILENO);
    }
    return true;
}

void *__wrap_malloc(size_t n) { return inject() ? NULL : __real_malloc(n); }
void *__wrap_calloc(size_t n, size_t size) { return inject() ? NULL : __real_calloc(n, size); }
void *__wrap_realloc(void *p, size_t n) { return n && inject() ? NULL : __real_realloc(p, n); }

static void arm(unsigned long fail_at)
{
    g_inj.count = 0;
    g_inj.failed = 0;
    g_inj.fail_at = fail_at;
    g_inj.armed = true;
}

static void disarm(void) { g_inj.armed = false; }

/* ---- configuration ---- */

static const char config_yaml[] =
    "service: {name: alloc}\n"
    "admin: {listen: 127.0.0.1:19000}\n"
    "upstreams:\n"
    "  - upstream: h1\n"
    "    protocol: http1\n"
    "    listen: 127.0.0.1:15002\n"
    "    discovery: {static: ['@UPSTREAM@']}\n"
    "  - upstream: grpc\n"
    "    protocol: grpc\n"
    "    listen: 127.0.0.1:15003\n"
    "    discovery: {static: ['@UPSTREAM@']}\n";
enum { ROUTE_H1 = 0, ROUTE_GRPC = 1 };

#define MAX_ITER 2000
#define MAX_N 5000

typedef enum { OUT_FULL, OUT_CLEAN_ERROR, OUT_BAD } outcome;

typedef struct run_result {
    outcome out;
    char why[256];
} run_result;

static void verdict(run_result *r, outcome o, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void verdict(run_result *r, outcome o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->why, sizeof(r->why), fmt, ap);
    va_end(ap);
    r->out = o;
}

/* ---- HTTP/1.1 caller ---- */

/* A chunked request with a trailer, answered by a chunked response with a
 * trailer: the trailer buffers of both HTTP/1 sides are allocated. */
static const char h1_request[] = "POST /echo HTTP/1.1\r\nhost: svc\r\nte: trailers\r\ntransfer-encoding: chunked\r\n"
                                 "content-type: text/plain\r\n\r\n4\r\nping\r\n0\r\nx-req-trailer: 1\r\n\r\n";
static const char h1_response[] = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n"
                                  "5\r\nhello\r\n6\r\n world\r\n0\r\nx-resp-trailer: 2\r\n\r\n";
typedef struct h1_expect {
    const char *body;
    size_t body_len;
    const char *trailer;            /* "name: value" the response must end with */
} h1_expect;

/* What h1_response becomes at the caller; what the driver's canned h2c
 * gRPC answer becomes for an HTTP/1.1 caller that sent te: trailers. */
static const h1_expect h1_from_h1 = {"hello world", 11, "x-resp-trailer: 2"};
static const h1_expect h1_from_h2 = {SC_DRV_GRPC_MSG, SC_DRV_GRPC_MSG_LEN, "grpc-status: 0"};

static void judge_h1(sc_drv *d, const h1_expect *want, run_result *r)
{
    size_t len;
    const char *in = (const char *)sc_drv_received(d, &len, NULL);
    bool eof = sc_drv_caller_eof(d);
    sc_h1_head h;
    int n = len ? sc_h1_parse_head(in, len, false, false, NULL, &h, NULL) : 0;
    if (n < 0)
        return verdict(r, OUT_BAD, "the caller got an invalid response head");
    if (n == 0)
        return verdict(r, eof ? OUT_CLEAN_ERROR : OUT_BAD, "%s",
                       eof ? "connection closed before a response head" : "no response and the connection is open (hang)");
    char body[256], trailers[512];
    size_t blen = 0;
    sc_h1_body b;
    sc_h1_body_init(&b, h.body, h.content_length, trailers, sizeof(trailers));
    size_t off = (size_t)n;
    int rv;
    for (;;) {
        size_t used = 0, dlen = 0;
        const char *data = NULL;
        rv = sc_h1_body_decode(&b, in + off, len - off, &used, &data, &dlen);
        off += used;
        if (rv == SC_H1_BODY_DATA && blen + dlen <= sizeof(body)) {
            memcpy(body + blen, data, dlen);
            blen += dlen;
            continue;
        }
        break;
    }
    if (rv < 0 || rv == SC_H1_BODY_DATA)
        return verdict(r, OUT_BAD, "the response body is malformed or too long");
    bool complete = rv == SC_H1_BODY_DONE;
    if (h.status >= 500)
        return verdict(r, complete || eof ? OUT_CLEAN_ERROR : OUT_BAD, "%d %s", h.status,
                       complete || eof ? "(clean)" : "without its end while the connection stays open (hang)");
    if (h.status != 200)
        return verdict(r, OUT_BAD, "unexpected status %d", h.status);
    if (!complete)
        return verdict(r, eof ? OUT_CLEAN_ERROR : OUT_BAD, "%s",
                       eof ? "200 cut short by a close" : "200 without its end while the connection stays open (hang)");
    if (blen != want->body_len || memcmp(body, want->body, blen) != 0)
        return verdict(r, OUT_BAD, "200 that looks complete with a wrong body (%zu bytes)", blen);
    if (b.trailer_len == 0 || !memmem(trailers, b.trailer_len, want->trailer, strlen(want->trailer)))
        return verdict(r, OUT_BAD, "200 that looks complete without the upstream's trailer");
    verdict(r, OUT_FULL, "200 with the whole body and trailer");
}

/* ---- HTTP/2 (gRPC) caller: an nghttp2 client session, used only while
 * the injector is disarmed (it makes the request's bytes before the run and
 * reads the answer after it). ---- */

typedef struct h2_call {
    int status;
    char grpc_status[8];
    bool has_grpc_status;
    uint8_t data[256];
    size_t data_len;
    bool data_overflow;
    bool closed;
    uint32_t close_code;
    bool end_stream;
    bool goaway;
} h2_call;

static int c_on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                       const uint8_t *value, size_t vl, uint8_t flags, void *u)
{
    (void)s;
    (void)f;
    (void)flags;
    h2_call *c = u;
    if (nl == 7 && memcmp(name, ":status", 7) == 0)
        c->status = atoi((const char *)value);
    if (nl == 11 && memcmp(name, "grpc-status", 11) == 0 && vl < sizeof(c->grpc_status)) {
        memcpy(c->grpc_status, value, vl);
        c->grpc_status[vl] = 0;
        c->has_grpc_status = true;
    }
    return 0;
}

static int c_on_data(nghttp2_session *s, uint8_t flags, int32_t sid, const uint8_t *data, size_t len, void *u)
{
    (void)s;
    (void)flags;
    (void)sid;
    h2_call *c = u;
    if (c->data_len + len > sizeof(c->data)) {
        c->data_overflow = true;
        return 0;
    }
    memcpy(c->data + c->data_len, data, len);
    c->data_len += len;
    return 0;
}

static int c_on_frame(nghttp2_session *s, const nghttp2_frame *f, void *u)
{
    (void)s;
    h2_call *c = u;
    if (f->hd.type == NGHTTP2_GOAWAY)
        c->goaway = true;
    if (f->hd.stream_id == 1 && (f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
        (f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA))
        c->end_stream = true;
    return 0;
}

static int c_on_close(nghttp2_session *s, int32_t sid, uint32_t code, void *u)
{
    (void)s;
    h2_call *c = u;
    if (sid == 1) {
        c->closed = true;
        c->close_code = code;
    }
    return 0;
}

static ssize_t c_read_body(nghttp2_session *s, int32_t sid, uint8_t *buf, size_t len, uint32_t *flags,
                           nghttp2_data_source *src, void *u)
{
    (void)s;
    (void)sid;
    (void)src;
    (void)u;
    static const char msg[] = "\x00\x00\x00\x00\x04ping";
    assert_true(len >= sizeof(msg) - 1);
    memcpy(buf, msg, sizeof(msg) - 1);
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)(sizeof(msg) - 1);
}

static nghttp2_session *h2_client(h2_call *c, sc_drv *d)
{
    nghttp2_session_callbacks *cb;
    assert_int_equal(nghttp2_session_callbacks_new(&cb), 0);
    nghttp2_session_callbacks_set_on_header_callback(cb, c_on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, c_on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, c_on_frame);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, c_on_close);
    nghttp2_session *s;
    assert_int_equal(nghttp2_session_client_new(&s, cb, c), 0);
    nghttp2_session_callbacks_del(cb);
    assert_int_equal(nghttp2_submit_settings(s, NGHTTP2_FLAG_NONE, NULL, 0), 0);
#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, sizeof(v) - 1, NGHTTP2_NV_FLAG_NONE}
    nghttp2_nv nva[] = {NV(":method", "POST"), NV(":scheme", "http"), NV(":authority", "svc"),
                        NV(":path", "/pkg.Svc/Call"), NV("content-type", "application/grpc"), NV("te", "trailers"),
                        NV("grpc-timeout", "10S")};
#undef NV
    nghttp2_data_provider prd = {.read_callback = c_read_body};
    assert_int_equal(nghttp2_submit_request(s, NULL, nva, sizeof(nva) / sizeof(nva[0]), &prd, NULL), 1);
    /* The session writes the preface itself. */
    const uint8_t *out;
    ssize_t n;
    while ((n = nghttp2_session_mem_send(s, &out)) > 0)
        assert_int_equal(sc_drv_send(d, out, (size_t)n), 0);
    assert_true(n == 0);
    return s;
}

static void judge_h2(sc_drv *d, nghttp2_session *s, h2_call *c, run_result *r)
{
    size_t len;
    const uint8_t *in = sc_drv_received(d, &len, NULL);
    ssize_t rv = nghttp2_session_mem_recv(s, in, len);
    if (rv < 0)
        return verdict(r, OUT_BAD, "the caller got invalid HTTP/2: %s", nghttp2_strerror((int)rv));
    bool eof = sc_drv_caller_eof(d);
    if (c->closed && c->close_code != NGHTTP2_NO_ERROR)
        return verdict(r, OUT_CLEAN_ERROR, "RST_STREAM %s", nghttp2_http2_strerror(c->close_code));
    if (!c->end_stream) {
        if (eof || c->goaway)
            return verdict(r, OUT_CLEAN_ERROR, "%s before the response ended", eof ? "connection closed" : "GOAWAY");
        return verdict(r, OUT_BAD, "the call neither ended nor failed and the connection is open (hang)");
    }
    if (c->status >= 500)
        return verdict(r, OUT_CLEAN_ERROR, "HTTP %d", c->status);
    if (c->status != 200)
        return verdict(r, OUT_BAD, "unexpected :status %d", c->status);
    if (!c->has_grpc_status)
        return verdict(r, OUT_BAD, "a gRPC call ended without grpc-status");
    if (strcmp(c->grpc_status, "0") != 0)
        return verdict(r, OUT_CLEAN_ERROR, "grpc-status %s", c->grpc_status);
    if (c->data_overflow || c->data_len != SC_DRV_GRPC_MSG_LEN || memcmp(c->data, SC_DRV_GRPC_MSG, c->data_len) != 0)
        return verdict(r, OUT_BAD, "grpc-status 0 with a wrong message (%zu bytes)", c->data_len);
    verdict(r, OUT_FULL, "grpc-status 0 with the whole message");
}

/* ---- one run ---- */

typedef enum { CALLER_H1, CALLER_H2 } caller_kind;

typedef struct scenario {
    const char *name;
    caller_kind caller;
    unsigned route;
    const char *upstream_answer;    /* HTTP/1.1 answer after the request; NULL: the driver's canned h2c one */
    size_t upstream_answer_len;
    const h1_expect *h1_want;       /* HTTP/1.1 caller: the response it must get */
} scenario;

/* A gRPC answer from an HTTP/1.1 upstream: the message in a chunked body,
 * grpc-status in its trailer. */
static const char h1_grpc_response[] = "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\n"
                                       "transfer-encoding: chunked\r\n\r\na\r\n" SC_DRV_GRPC_MSG "\r\n"
                                       "0\r\ngrpc-status: 0\r\n\r\n";

/* Runs the scenario failing allocation number fail_at (0: none); returns
 * how many allocations were made while armed (for N beyond it, nothing fails). */
static unsigned long run_once(const scenario *sc, unsigned long fail_at, run_result *r)
{
    char err[256];
    sc_drv *d = sc_drv_new(config_yaml, err, sizeof(err));
    if (!d)
        fail_msg("driver: %s", err);
    h2_call call = {0};
    nghttp2_session *client = NULL;
    if (sc->upstream_answer)
        assert_int_equal(sc_drv_upstream(d, SC_DRV_UP_AFTER_REQUEST, sc->upstream_answer, sc->upstream_answer_len,
                                         false), 0);
    if (sc->caller == CALLER_H1)
        assert_int_equal(sc_drv_send(d, h1_request, sizeof(h1_request) - 1), 0);
    else
        client = h2_client(&call, d);
    arm(fail_at);
    int rv = sc_drv_connect(d, sc->route);
    if (rv == 0)
        sc_drv_run(d, MAX_ITER);
    disarm();
    unsigned long made = g_inj.count;
    assert_int_equal(rv, 0);
    if (sc->caller == CALLER_H1)
        judge_h1(d, sc->h1_want, r);
    else
        judge_h2(d, client, &call, r);
    if (client)
        nghttp2_session_del(client);
    sc_drv_free(d);
    return made;
}

static void run_scenario(const scenario *sc)
{
    run_result r;
    unsigned long total = run_once(sc, 0, &r);
    if (r.out != OUT_FULL)
        fail_msg("%s: without injected failures: %s", sc->name, r.why);
    unsigned long clean = 0, full = 0, first = 1;
    if (getenv("SC_ALLOC_ONLY")) /* debugging one case: SC_ALLOC_ONLY=N (with SC_ALLOC_TRACE=1) */
        first = total = strtoul(getenv("SC_ALLOC_ONLY"), NULL, 10);
    for (unsigned long n = first; n <= total && n <= MAX_N; n++) {
        memset(&r, 0, sizeof(r));
        run_once(sc, n, &r);
        if (getenv("SC_TEST_VERBOSE"))
            fprintf(stderr, "%s: allocation %lu of %lu fails: %s\n", sc->name, n, total, r.why);
        if (r.out == OUT_BAD)
            fail_msg("%s: allocation %lu of %lu failed: %s", sc->name, n, total, r.why);
        if (r.out == OUT_FULL)
            full++;
        else
            clean++;
    }
    fprintf(stderr, "%s: %lu allocations; with each one failing: %lu clean errors, %lu full responses\n", sc->name,
            total, clean, full);
}

static void test_h1_to_h1(void **state)
{
    (void)state;
    scenario sc = {"HTTP/1.1 caller -> HTTP/1.1 upstream", CALLER_H1, ROUTE_H1, h1_response, sizeof(h1_response) - 1,
                   &h1_from_h1};
    run_scenario(&sc);
}

static void test_h1_to_h2(void **state)
{
    (void)state;
    scenario sc = {"HTTP/1.1 caller -> h2c upstream", CALLER_H1, ROUTE_GRPC, NULL, 0, &h1_from_h2};
    run_scenario(&sc);
}

static void test_grpc_to_h2(void **state)
{
    (void)state;
    scenario sc = {"gRPC caller -> h2c upstream", CALLER_H2, ROUTE_GRPC, NULL, 0, NULL};
    run_scenario(&sc);
}

static void test_grpc_to_h1(void **state)
{
    (void)state;
    scenario sc = {"gRPC caller -> HTTP/1.1 upstream", CALLER_H2, ROUTE_H1, h1_grpc_response, sizeof(h1_grpc_response) - 1,
                   NULL};
    run_scenario(&sc);
}

int main(void)
{
    if (!getenv("SC_TEST_VERBOSE"))
        sc_log_set_level(SC_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_h1_to_h1),
        cmocka_unit_test(test_h1_to_h2),
        cmocka_unit_test(test_grpc_to_h2),
        cmocka_unit_test(test_grpc_to_h1),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

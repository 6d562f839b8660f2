/*
 * test_h1.c: the HTTP/1.1 codec. Most tests are tables of whole byte
 * streams (one or more pipelined messages with bodies) and the exact
 * transcript a connection reader would produce from them. Every stream is
 * delivered whole, split in two at every offset, and one byte at a time;
 * the transcript must not change.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "http/h1.h"

/* ------------------------------------------------------------ transcript -- */

typedef struct {
    char s[16384];
    size_t n;
} sbuf;

/* Appends bytes, escaping unprintable ones; with `crlf`, CRLF reads as ';'
 * (only for whole trailer blocks: data may be split between CR and LF). */
static void sb_putx(sbuf *b, const char *p, size_t n, bool crlf)
{
    for (size_t i = 0; i < n && b->n + 8 < sizeof(b->s); i++) {
        unsigned char c = (unsigned char)p[i];
        if (crlf && c == '\r' && i + 1 < n && p[i + 1] == '\n') {
            b->s[b->n++] = ';'; /* CRLF inside trailers reads as ';' */
            i++;
        } else if (c < 0x20 || c >= 0x7f) {
            b->n += (size_t)snprintf(b->s + b->n, sizeof(b->s) - b->n, "\\x%02x", c);
        } else {
            b->s[b->n++] = (char)c;
        }
    }
    b->s[b->n] = '\0';
}

static void sb_put(sbuf *b, const char *p, size_t n) { sb_putx(b, p, n, false); }

static void sb_printf(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(b->s + b->n, sizeof(b->s) - b->n, fmt, ap);
    va_end(ap);
    if (k > 0)
        b->n = SC_MIN(b->n + (size_t)k, sizeof(b->s) - 1);
}

static const char *errname(int rc)
{
    switch (rc) {
    case SC_H1_ERR_SYNTAX: return "SYNTAX";
    case SC_H1_ERR_TOO_LARGE: return "TOO_LARGE";
    case SC_H1_ERR_LINE_TOO_LONG: return "LINE_TOO_LONG";
    case SC_H1_ERR_UNSUPPORTED: return "UNSUPPORTED";
    default: return "?";
    }
}

static const char *kindname(sc_h1_body_kind k)
{
    switch (k) {
    case SC_H1_BODY_NONE: return "NONE";
    case SC_H1_BODY_LENGTH: return "LEN";
    case SC_H1_BODY_CHUNKED: return "CHUNKED";
    case SC_H1_BODY_UNTIL_CLOSE: return "CLOSE";
    }
    return "?";
}

static void summarize(sbuf *o, const sc_h1_head *h, bool req)
{
    if (req) {
        sb_put(o, h->method.p, h->method.len);
        sb_printf(o, " ");
        sb_put(o, h->target.p, h->target.len);
        if (h->scheme.len) { /* absolute-form, taken apart */
            sb_printf(o, " <");
            sb_put(o, h->scheme.p, h->scheme.len);
            sb_printf(o, "|");
            sb_put(o, h->authority.p, h->authority.len);
            sb_printf(o, "|");
            sb_put(o, h->path.p, h->path.len);
            sb_printf(o, ">");
        }
    } else {
        sb_printf(o, "%d ", h->status);
        sb_put(o, h->reason.p, h->reason.len);
    }
    sb_printf(o, " 1.%d %s", h->minor_version, kindname(h->body));
    if (h->body == SC_H1_BODY_LENGTH)
        sb_printf(o, ":%llu", (unsigned long long)h->content_length);
    sb_printf(o, " ka=%d", h->keep_alive);
    if (h->expect_continue)
        sb_printf(o, " ec");
    if (h->upgrade)
        sb_printf(o, " up");
    if (h->te_trailers)
        sb_printf(o, " tt");
}

typedef struct {
    const sc_h1_limits *limits;
    size_t trailer_cap;          /* 0: 512 */
    size_t max_trailer_bytes;    /* 0: default */
    bool head_response;
} drive_opts;

/*
 * A connection reader: bytes arrive in pieces of the sizes `cut` yields;
 * heads are parsed from everything buffered, bodies are decoded from what
 * follows, pipelined messages are handled in turn, EOF ends the stream.
 * With `lazy`, heads are re-parsed only when sc_h1_head_worth_parsing() says so.
 */
static void drive_x(const char *in, size_t len, bool req, const drive_opts *opt,
                    size_t (*cut)(size_t at, size_t left, void *), void *cut_arg, bool lazy, sbuf *o)
{
    size_t head_prev = 0;
    static char acc[300000];
    size_t alen = 0, apos = 0, fed = 0;
    bool in_body = false;
    static sc_h1_head h;
    sc_h1_body b;
    char tbuf[4096];
    size_t tcap = opt && opt->trailer_cap ? opt->trailer_cap : 512;
    assert_true(len <= sizeof(acc) && tcap <= sizeof(tbuf));
    o->n = 0;
    o->s[0] = '\0';

    while (fed < len) {
        size_t k = cut(fed, len - fed, cut_arg);
        assert_true(k > 0 && k <= len - fed);
        memcpy(acc + alen, in + fed, k);
        alen += k;
        fed += k;
        for (;;) {
            if (!in_body) {
                if (apos == alen)
                    break;
                if (lazy && !sc_h1_head_worth_parsing(acc + apos, head_prev, alen - apos, opt ? opt->limits : NULL))
                    break;
                head_prev = alen - apos;
                const char *why = "unset";
                int rc = sc_h1_parse_head(acc + apos, alen - apos, req, opt && opt->head_response,
                                          opt ? opt->limits : NULL, &h, &why);
                if (rc < 0) {
                    assert_non_null(why);
                    assert_true(why[0] != '\0');
                    sb_printf(o, "!%s", errname(rc));
                    return;
                }
                assert_null(why);
                if (rc == 0)
                    break;
                assert_true((size_t)rc <= alen - apos);
                summarize(o, &h, req);
                sb_printf(o, " {");
                apos += (size_t)rc;
                head_prev = 0;
                sc_h1_body_init(&b, h.body, h.content_length, tbuf, tcap);
                if (opt && opt->max_trailer_bytes)
                    b.max_trailer_bytes = opt->max_trailer_bytes;
                in_body = true;
            }
            size_t used = 12345;
            const char *d = (const char *)&used;
            size_t dl = 999;
            int r = sc_h1_body_decode(&b, acc + apos, alen - apos, &used, &d, &dl);
            assert_true(used <= alen - apos);
            if (r < 0) {
                assert_non_null(b.why);
                sb_printf(o, "} !%s", errname(r));
                /* sticky */
                size_t u2;
                assert_int_equal(sc_h1_body_decode(&b, acc + apos, alen - apos, &u2, &d, &dl), r);
                return;
            }
            if (r == SC_H1_BODY_DATA) {
                assert_true(dl > 0);
                assert_true(d >= acc + apos && d + dl <= acc + apos + used);
                sb_put(o, d, dl);
                apos += used;
                continue;
            }
            assert_null(d);
            assert_int_equal(dl, 0);
            apos += used;
            if (r == SC_H1_BODY_DONE) {
                sb_printf(o, "}");
                if (b.trailer_len) {
                    sb_printf(o, " [");
                    sb_putx(o, b.trailer_buf, b.trailer_len, true);
                    sb_printf(o, "]");
                }
                sb_printf(o, "\n");
                in_body = false;
                continue;
            }
            assert_int_equal(r, SC_H1_BODY_NEED_MORE);
            assert_int_equal(apos, alen);
            break;
        }
    }
    if (in_body)
        sb_printf(o, b.kind == SC_H1_BODY_UNTIL_CLOSE ? "} EOF" : "...truncated");
    else if (apos < alen)
        sb_printf(o, "...incomplete");
}

static void drive(const char *in, size_t len, bool req, const drive_opts *opt,
                  size_t (*cut)(size_t at, size_t left, void *), void *cut_arg, sbuf *o)
{
    drive_x(in, len, req, opt, cut, cut_arg, false, o);
}

static size_t cut_all(size_t at, size_t left, void *arg)
{
    (void)at;
    (void)arg;
    return left;
}

static size_t cut_one(size_t at, size_t left, void *arg)
{
    (void)at;
    (void)left;
    (void)arg;
    return 1;
}

static size_t cut_at(size_t at, size_t left, void *arg)
{
    size_t c = *(size_t *)arg;
    return at < c ? c - at : left;
}

/* Delivers in every way and checks that each transcript equals `want`. */
static void check_stream(const char *in, size_t len, bool req, const drive_opts *opt, const char *want)
{
    static sbuf o;
    drive(in, len, req, opt, cut_all, NULL, &o);
    if (strcmp(o.s, want) != 0)
        fail_msg("input \"%.*s\"\n  got  \"%s\"\n  want \"%s\"", (int)SC_MIN(len, 300), in, o.s, want);
    drive(in, len, req, opt, cut_one, NULL, &o);
    if (strcmp(o.s, want) != 0)
        fail_msg("byte at a time: input \"%.*s\"\n  got  \"%s\"\n  want \"%s\"", (int)SC_MIN(len, 300), in, o.s, want);
    drive_x(in, len, req, opt, cut_one, NULL, true, &o);
    if (strcmp(o.s, want) != 0)
        fail_msg("lazy byte at a time: input \"%.*s\"\n  got  \"%s\"\n  want \"%s\"", (int)SC_MIN(len, 300), in, o.s, want);
    for (size_t c = 1; c < len; c++) {
        drive(in, len, req, opt, cut_at, &c, &o);
        if (strcmp(o.s, want) != 0)
            fail_msg("split at %zu: input \"%.*s\"\n  got  \"%s\"\n  want \"%s\"", c, (int)SC_MIN(len, 300), in, o.s, want);
    }
}

typedef struct {
    const char *in;
    size_t len;
    const char *want;
} stream_case;

#define S(lit, want) {lit, sizeof(lit) - 1, want}

static void run_table(const stream_case *t, size_t n, bool req, const drive_opts *opt)
{
    for (size_t i = 0; i < n; i++)
        check_stream(t[i].in, t[i].len, req, opt, t[i].want);
}

#define H11 "Host: a\r\n"

/* ------------------------------------------------------------- requests -- */

static const stream_case good_requests[] = {
    S("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("GET /a?b=c&d HTTP/1.1\r\n" H11 "\r\n", "GET /a?b=c&d 1.1 NONE ka=1 {}\n"),
    S("POST /x HTTP/1.1\r\n" H11 "Content-Length: 5\r\n\r\nhello", "POST /x 1.1 LEN:5 ka=1 {hello}\n"),
    S("POST /x HTTP/1.1\r\n" H11 "Content-Length: 0\r\n\r\n", "POST /x 1.1 LEN:0 ka=1 {}\n"),
    S("POST /x HTTP/1.1\r\n" H11 "content-length:\t00005 \r\n\r\nhello", "POST /x 1.1 LEN:5 ka=1 {hello}\n"),
    /* identical Content-Length values fold */
    S("POST /x HTTP/1.1\r\n" H11 "Content-Length: 5, 5\r\n\r\nhello", "POST /x 1.1 LEN:5 ka=1 {hello}\n"),
    S("POST /x HTTP/1.1\r\n" H11 "Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", "POST /x 1.1 LEN:3 ka=1 {abc}\n"),
    S("POST /x HTTP/1.1\r\n" H11 "Content-Length: 9223372036854775807\r\n\r\nab",
      "POST /x 1.1 LEN:9223372036854775807 ka=1 {ab...truncated"),
    /* chunked with extensions and trailers */
    S("POST /u HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\nTE: trailers\r\n\r\n"
      "5\r\nhello\r\n6;ext=1\r\n world\r\nA ; a=\"q;\\\"x\" ;b\r\n0123456789\r\n0\r\n"
      "grpc-status: 0\r\nX-T:  v \r\n\r\n",
      "POST /u 1.1 CHUNKED ka=1 tt {hello world0123456789} [grpc-status: 0;X-T:  v ;]\n"),
    S("POST /u HTTP/1.1\r\n" H11 "Transfer-Encoding: Chunked\r\n\r\n000a\r\n0123456789\r\n00\r\n\r\n",
      "POST /u 1.1 CHUNKED ka=1 {0123456789}\n"),
    S("POST /u HTTP/1.1\r\n" H11 "Transfer-Encoding:chunked\r\n\r\nf\r\n0123456789abcde\r\n0\r\n\r\n",
      "POST /u 1.1 CHUNKED ka=1 {0123456789abcde}\n"),
    /* pipelined: head lengths must be exact */
    S("GET /1 HTTP/1.1\r\n" H11 "\r\n"
      "POST /2 HTTP/1.1\r\n" H11 "Content-Length: 3\r\n\r\nabc"
      "POST /3 HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\n\r\n2\r\nxy\r\n0\r\nT: 1\r\n\r\n"
      "GET /4 HTTP/1.1\r\n" H11 "Connection: close\r\n\r\n",
      "GET /1 1.1 NONE ka=1 {}\nPOST /2 1.1 LEN:3 ka=1 {abc}\nPOST /3 1.1 CHUNKED ka=1 {xy} [T: 1;]\n"
      "GET /4 1.1 NONE ka=0 {}\n"),
    /* a partial second request stays buffered */
    S("GET /1 HTTP/1.1\r\n" H11 "\r\nGET /2 HTTP/1.1\r\nHo", "GET /1 1.1 NONE ka=1 {}\n...incomplete"),
    /* HTTP/1.0: Host optional, keep-alive opt-in */
    S("GET / HTTP/1.0\r\n\r\n", "GET / 1.0 NONE ka=0 {}\n"),
    S("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", "GET / 1.0 NONE ka=1 {}\n"),
    S("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", "GET / 1.0 NONE ka=0 {}\n"),
    S("GET / HTTP/1.0\r\nExpect: 100-continue\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
      "GET / 1.0 NONE ka=0 {}\n"),
    /* Connection lists */
    S("GET / HTTP/1.1\r\n" H11 "Connection: foo, CLOSE\r\n\r\n", "GET / 1.1 NONE ka=0 {}\n"),
    S("GET / HTTP/1.1\r\n" H11 "Connection: x\r\nConnection: close\r\n\r\n", "GET / 1.1 NONE ka=0 {}\n"),
    S("GET / HTTP/1.1\r\n" H11 "Connection: closed\r\n\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("GET /ws HTTP/1.1\r\n" H11 "Connection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
      "GET /ws 1.1 NONE ka=1 up {}\n"),
    S("GET /ws HTTP/1.1\r\n" H11 "Connection: Upgrade\r\n\r\n", "GET /ws 1.1 NONE ka=1 {}\n"),
    S("GET /ws HTTP/1.1\r\n" H11 "Upgrade: websocket\r\n\r\n", "GET /ws 1.1 NONE ka=1 {}\n"),
    S("PUT /e HTTP/1.1\r\n" H11 "Expect: 100-Continue\r\nContent-Length: 1\r\n\r\nz",
      "PUT /e 1.1 LEN:1 ka=1 ec {z}\n"),
    S("PUT /e HTTP/1.1\r\n" H11 "Expect: 200-ok\r\nContent-Length: 1\r\n\r\nz", "PUT /e 1.1 LEN:1 ka=1 {z}\n"),
    S("GET / HTTP/1.1\r\n" H11 "TE: deflate;q=0.5, Trailers\r\n\r\n", "GET / 1.1 NONE ka=1 tt {}\n"),
    /* leading empty lines are skipped */
    S("\r\n\r\nGET / HTTP/1.1\r\n" H11 "\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H11 "\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("GET / HTTP/1.1\r\n" H11 "\r\n\r\nGET /b HTTP/1.1\r\n" H11 "\r\n", "GET / 1.1 NONE ka=1 {}\nGET /b 1.1 NONE ka=1 {}\n"),
    /* target forms */
    S("GET http://a.example/b?c HTTP/1.1\r\nHost: a.example\r\n\r\n",
      "GET http://a.example/b?c <http|a.example|/b?c> 1.1 NONE ka=1 {}\n"),
    /* absolute-form: the authority ends at '/', '?' or the end; the rest may be empty */
    S("GET HTTP://A.example:8080 HTTP/1.1\r\n" H11 "\r\n",
      "GET HTTP://A.example:8080 <HTTP|A.example:8080|> 1.1 NONE ka=1 {}\n"),
    S("GET http://a?q=1/2 HTTP/1.1\r\n" H11 "\r\n", "GET http://a?q=1/2 <http|a|?q=1/2> 1.1 NONE ka=1 {}\n"),
    S("GET https://[::1]:443/x HTTP/1.1\r\n" H11 "\r\n",
      "GET https://[::1]:443/x <https|[::1]:443|/x> 1.1 NONE ka=1 {}\n"),
    S("OPTIONS http://a:8001 HTTP/1.1\r\n" H11 "\r\n", "OPTIONS http://a:8001 <http|a:8001|> 1.1 NONE ka=1 {}\n"),
    /* other schemes are taken apart too (the proxy decides what to do with them) */
    S("GET urn:x:y HTTP/1.1\r\n" H11 "\r\n", "GET urn:x:y <urn||x:y> 1.1 NONE ka=1 {}\n"),
    S("GET file:///etc HTTP/1.1\r\n" H11 "\r\n", "GET file:///etc <file||/etc> 1.1 NONE ka=1 {}\n"),
    /* Host: IP literals, an empty port, a 5-digit port */
    S("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("GET / HTTP/1.1\r\nHost: [v1.x]\r\n\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("GET / HTTP/1.1\r\nHost: a:\r\n\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("GET / HTTP/1.1\r\nHost: a.b-c_d~e%41:65535\r\n\r\n", "GET / 1.1 NONE ka=1 {}\n"),
    S("CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", "CONNECT a.example:443 1.1 NONE ka=1 {}\n"),
    S("CONNECT [::1]:8443 HTTP/1.1\r\nHost: [::1]:8443\r\n\r\n", "CONNECT [::1]:8443 1.1 NONE ka=1 {}\n"),
    S("OPTIONS * HTTP/1.1\r\n" H11 "\r\n", "OPTIONS * 1.1 NONE ka=1 {}\n"),
    S("OPTIONS /x HTTP/1.1\r\n" H11 "\r\n", "OPTIONS /x 1.1 NONE ka=1 {}\n"),
    S("M-SEARCH //x HTTP/1.1\r\n" H11 "\r\n", "M-SEARCH //x 1.1 NONE ka=1 {}\n"),
    S("get / HTTP/1.1\r\n" H11 "\r\n", "get / 1.1 NONE ka=1 {}\n"),
    /* header values: OWS trimmed, obs-text, HTAB, empty values */
    S("GET / HTTP/1.1\r\n" H11 "X-A:\r\nX-B: \t \r\nX-C: \xc3\xa9t\xe9\r\nX-D: a\tb  c\r\n\r\n",
      "GET / 1.1 NONE ka=1 {}\n"),
    /* an empty Host is valid when the target has no authority (RFC 9112 3.2) */
    S("GET / HTTP/1.1\r\nHost:\r\n\r\n", "GET / 1.1 NONE ka=1 {}\n"),
};

static void test_good_requests(void **state)
{
    (void)state;
    run_table(good_requests, SC_ARRAY_LEN(good_requests), true, NULL);
}

static const stream_case bad_requests[] = {
    /* smuggling: CL + TE in either order, duplicate differing CL */
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5, 6\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5,\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5,,5\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: \r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: +5\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: -5\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5a\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 0x5\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 5 5\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 9223372036854775808\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 18446744073709551621\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length: 99999999999999999999999999\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Content-Length : 5\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding : chunked\r\n\r\n", "!SYNTAX"),
    /* transfer codings in requests: only exactly "chunked" */
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked, identity\r\n\r\n", "!UNSUPPORTED"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip, chunked\r\n\r\n", "!UNSUPPORTED"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", "!UNSUPPORTED"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: identity\r\n\r\n", "!UNSUPPORTED"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: xchunked\r\n\r\n", "!UNSUPPORTED"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked, chunked\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked;q=1\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: ,chunked\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked,\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: \r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: \"chunked\"\r\n\r\n", "!SYNTAX"),
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked x\r\n\r\n", "!SYNTAX"),
    /* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing */
    S("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "!SYNTAX"),
    /* Host */
    S("GET / HTTP/1.1\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: \xe9\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a:b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: []\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a]\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a?b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a#b\r\n\r\n", "!SYNTAX"),
    /* line endings */
    S("GET / HTTP/1.1\n" H11 "\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "\r\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\rHost: a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost: a\r\nX: b\rc\r\n\r\n", "!SYNTAX"),
    S("\nGET / HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("\r\rGET / HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    /* obs-fold and whitespace */
    S("GET / HTTP/1.1\r\n" H11 "X: a\r\n b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X: a\r\n\tb\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n Host: a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost : a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", "!SYNTAX"),
    /* header bytes */
    S("GET / HTTP/1.1\r\n" H11 "X: a\0b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X: a\x01\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X: a\x1f\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X: a\x7f\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X: \x0b\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X\0: a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X(y): a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "X\xe9: a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 ": a\r\n\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1\r\n" H11 "NoColon\r\n\r\n", "!SYNTAX"),
    /* request line */
    S("GET  / HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET /  HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET / HTTP/1.1 \r\n" H11 "\r\n", "!SYNTAX"),
    S(" GET / HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET\t/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET /\t HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET /a\x7f HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET /a\x80 HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET /a\0 HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("G(T / HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET / http/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET / HTTP/1.10\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET / HTTP/11\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET / HTTP/1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET /\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET / HTTP/1.2\r\n" H11 "\r\n", "!UNSUPPORTED"),
    S("GET / HTTP/2.0\r\n" H11 "\r\n", "!UNSUPPORTED"),
    S("GET / HTTP/0.9\r\n" H11 "\r\n", "!UNSUPPORTED"),
    S("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "!UNSUPPORTED"),
    /* target forms */
    S("GET * HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("OPTIONS ** HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET x HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET 1http://a/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http: HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT / HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT a.example HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT a.example: HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT :443 HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT a:44x HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT http://a:443 HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT a:123456 HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("CONNECT u@a:443 HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    /* absolute-form authority: validated like Host (no userinfo, no '?' or '#', digits-only port) */
    S("GET http://user@evil.example?q HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://user:pw@a/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://evil.example#frag HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://a/b#frag HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http:///x HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://:80/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://a:8x/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://a:123456/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://a:b:c/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http:/a HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET https:a HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://[::1/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://[]/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    S("GET http://a\\b/ HTTP/1.1\r\n" H11 "\r\n", "!SYNTAX"),
    /* body framing errors after a valid head */
    S("POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\n\r\n5x\r\n", "POST / 1.1 CHUNKED ka=1 {} !SYNTAX"),
};

static void test_bad_requests(void **state)
{
    (void)state;
    run_table(bad_requests, SC_ARRAY_LEN(bad_requests), true, NULL);
}

/* ------------------------------------------------------------ responses -- */

static const stream_case good_responses[] = {
    S("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", "200 OK 1.1 LEN:3 ka=1 {abc}\n"),
    S("HTTP/1.1 204 No Content\r\n\r\n", "204 No Content 1.1 NONE ka=1 {}\n"),
    S("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", "304 Not Modified 1.1 NONE ka=1 {}\n"),
    S("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n", "204 No Content 1.1 NONE ka=1 {}\n"),
    S("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
      "100 Continue 1.1 NONE ka=1 {}\n200 OK 1.1 LEN:2 ka=1 {hi}\n"),
    S("HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 204 \r\n\r\n",
      "103 Early Hints 1.1 NONE ka=1 {}\n204  1.1 NONE ka=1 {}\n"),
    S("HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
      "101 Switching Protocols 1.1 NONE ka=1 up {}\n"),
    /* no framing: read until close */
    S("HTTP/1.1 200 OK\r\n\r\nuntil the end", "200 OK 1.1 CLOSE ka=0 {until the end} EOF"),
    S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz", "200 OK 1.1 CLOSE ka=0 {zz} EOF"),
    S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzz", "200 OK 1.1 CLOSE ka=0 {zz} EOF"),
    S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nzz\r\n0\r\n\r\n",
      "200 OK 1.1 CHUNKED ka=1 {zz}\n"),
    /* status line variations */
    S("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", "200  1.1 LEN:0 ka=1 {}\n"),
    S("HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", "200  1.1 LEN:0 ka=1 {}\n"),
    S("HTTP/1.1 599 We\tird \xff reason  \r\nContent-Length: 0\r\n\r\n",
      "599 We\\x09ird \\xff reason   1.1 LEN:0 ka=1 {}\n"),
    S("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", "200 OK 1.0 LEN:1 ka=0 {x}\n"),
    S("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx", "200 OK 1.0 LEN:1 ka=1 {x}\n"),
    S("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n\r\nx", "200 OK 1.0 CLOSE ka=0 {x} EOF"),
    S("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", "200 OK 1.1 LEN:1 ka=0 {x}\n"),
    /* gRPC over HTTP/1-style chunked response with trailers */
    S("HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\nTransfer-Encoding: chunked\r\n"
      "Trailer: grpc-status\r\n\r\n"
      "5\r\n\0\0\0\0\0\r\n0\r\ngrpc-status: 14\r\ngrpc-message: no%20way\r\n\r\n",
      "200 OK 1.1 CHUNKED ka=1 {\\x00\\x00\\x00\\x00\\x00} [grpc-status: 14;grpc-message: no%20way;]\n"),
    /* expect/te flags are request-only */
    S("HTTP/1.1 200 OK\r\nExpect: 100-continue\r\nTE: trailers\r\nContent-Length: 0\r\n\r\n",
      "200 OK 1.1 LEN:0 ka=1 {}\n"),
};

static void test_good_responses(void **state)
{
    (void)state;
    run_table(good_responses, SC_ARRAY_LEN(good_responses), false, NULL);
}

static const stream_case bad_responses[] = {
    S("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nContent-Length: 3\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 20 OK\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 2000 OK\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 099 Low\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 600 High\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 2x0 OK\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1  200 OK\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\x01\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1 200 OK\r\nX: \0\r\n\r\n", "!SYNTAX"),
    S("HTTP/2 200\r\n\r\n", "!SYNTAX"),
    S("http/1.1 200 OK\r\n\r\n", "!SYNTAX"),
    S("\r\nHTTP/1.1 200 OK\r\n\r\n", "!SYNTAX"),
    S("HTTP/1.1\r\n\r\n", "!SYNTAX"),
    S("HTTP/2.0 200 OK\r\n\r\n", "!UNSUPPORTED"),
    S("HTTP/1.2 200 OK\r\n\r\n", "!UNSUPPORTED"),
    S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
      "200 OK 1.1 CHUNKED ka=1 {abc} !SYNTAX"),
};

static void test_bad_responses(void **state)
{
    (void)state;
    run_table(bad_responses, SC_ARRAY_LEN(bad_responses), false, NULL);
}

static void test_head_response(void **state)
{
    (void)state;
    drive_opts o = {.head_response = true};
    static const stream_case t[] = {
        S("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", "200 OK 1.1 NONE ka=1 {}\n"),
        S("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
          "200 OK 1.1 NONE ka=1 {}\n200 OK 1.1 NONE ka=1 {}\n"),
        S("HTTP/1.1 200 OK\r\n\r\n", "200 OK 1.1 NONE ka=1 {}\n"),
    };
    run_table(t, SC_ARRAY_LEN(t), false, &o);

    sc_h1_head h;
    const char *r = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), false, true, NULL, &h, NULL), (int)strlen(r));
    assert_int_equal(h.body, SC_H1_BODY_NONE);
    assert_int_equal(h.content_length, 10);
}

/* ----------------------------------------------------------- chunk bodies -- */

#define CH "POST / HTTP/1.1\r\n" H11 "Transfer-Encoding: chunked\r\n\r\n"
#define CHW "POST / 1.1 CHUNKED ka=1 {"

static const stream_case chunk_cases[] = {
    S(CH "0\r\n\r\n", CHW "}\n"),
    S(CH "1\r\na\r\n0\r\n\r\n", CHW "a}\n"),
    S(CH "1;\r\na\r\n0\r\n\r\n", CHW "a}\n"),
    S(CH "1 \t; x = y\r\na\r\n0;last\r\n\r\n", CHW "a}\n"),
    S(CH "7fffffffffffffff\r\nab", CHW "ab...truncated"),
    S(CH "0000000000000001\r\na\r\n0\r\n\r\n", CHW "a}\n"),
    S(CH "8000000000000000\r\n", CHW "} !SYNTAX"),
    S(CH "ffffffffffffffff\r\n", CHW "} !SYNTAX"),
    S(CH "00000000000000001\r\na\r\n", CHW "} !SYNTAX"),
    S(CH "\r\n", CHW "} !SYNTAX"),
    S(CH ";x\r\n", CHW "} !SYNTAX"),
    S(CH " 1\r\na\r\n", CHW "} !SYNTAX"),
    S(CH "1 \r\na\r\n", CHW "} !SYNTAX"),
    S(CH "1 x\r\na\r\n", CHW "} !SYNTAX"),
    S(CH "0x1\r\na\r\n", CHW "} !SYNTAX"),
    S(CH "-1\r\na\r\n", CHW "} !SYNTAX"),
    S(CH "+1\r\na\r\n", CHW "} !SYNTAX"),
    S(CH "g\r\n", CHW "} !SYNTAX"),
    S(CH "1\na\r\n0\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "1\rxa\r\n", CHW "} !SYNTAX"),
    S(CH "1;a\nb\r\n", CHW "} !SYNTAX"),
    S(CH "1;a\0\r\n", CHW "} !SYNTAX"),
    S(CH "1\r\nab\r\n", CHW "a} !SYNTAX"),
    S(CH "1\r\na\n0\r\n\r\n", CHW "a} !SYNTAX"),
    S(CH "1\r\na\r0\r\n\r\n", CHW "a} !SYNTAX"),
    S(CH "1\r\na0\r\n\r\n", CHW "a} !SYNTAX"),
    S(CH "0\r\n\n", CHW "} !SYNTAX"),
    S(CH "0\r\n\r", CHW "...truncated"),
    S(CH "0\r\n\rx", CHW "} !SYNTAX"),
    /* trailers validated like headers */
    S(CH "0\r\nA: 1\r\nB:2\r\n\r\n", CHW "} [A: 1;B:2;]\n"),
    S(CH "0\r\nA: \r\n\r\n", CHW "} [A: ;]\n"),
    S(CH "0\r\nA: 1\r\n folded\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\n A: 1\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\nA : 1\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\nA 1\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\n: 1\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\nA: 1\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\nA: 1\rB: 2\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\nA: \x01\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\nA: \x7f\r\n\r\n", CHW "} !SYNTAX"),
    S(CH "0\r\nA: x\r\n\n", CHW "} !SYNTAX"),
    /* bytes after DONE belong to the next message */
    S(CH "0\r\n\r\nGET /next HTTP/1.1\r\n" H11 "\r\n", CHW "}\nGET /next 1.1 NONE ka=1 {}\n"),
    /* smuggling shapes: a request hidden in a chunk extension or in data */
    S(CH "3;\r\nGET\r\n0\r\n\r\n", CHW "GET}\n"),
    S(CH "5\r\n0\r\n\r\n\r\n0\r\n\r\n", CHW "0\\x0d\\x0a\\x0d\\x0a}\n"),
};

static void test_chunked(void **state)
{
    (void)state;
    run_table(chunk_cases, SC_ARRAY_LEN(chunk_cases), true, NULL);
}

static void test_chunk_ext_bound(void **state)
{
    (void)state;
    /* 4096 bytes after the size digits are fine, 4097 are not. */
    static char msg[8192];
    for (int extra = 0; extra <= 1; extra++) {
        size_t n = (size_t)snprintf(msg, sizeof(msg), "%s1;", CH);
        size_t ext = 4096 - 1 + (size_t)extra; /* ';' counts */
        memset(msg + n, 'e', ext);
        n += ext;
        n += (size_t)snprintf(msg + n, sizeof(msg) - n, "\r\nx\r\n0\r\n\r\n");
        sbuf o;
        drive(msg, n, true, NULL, cut_all, NULL, &o);
        assert_string_equal(o.s, extra ? CHW "} !TOO_LARGE" : CHW "x}\n");
        drive(msg, n, true, NULL, cut_one, NULL, &o);
        assert_string_equal(o.s, extra ? CHW "} !TOO_LARGE" : CHW "x}\n");
    }
    /* the bound is per line: many chunks with long extensions are fine */
    size_t n = (size_t)snprintf(msg, sizeof(msg), "%s", CH);
    for (int i = 0; i < 3; i++) {
        n += (size_t)snprintf(msg + n, sizeof(msg) - n, "1;");
        memset(msg + n, 's', 2000);
        n += 2000;
        n += (size_t)snprintf(msg + n, sizeof(msg) - n, "\r\n%c\r\n", 'a' + i);
    }
    n += (size_t)snprintf(msg + n, sizeof(msg) - n, "0\r\n\r\n");
    sbuf o;
    drive(msg, n, true, NULL, cut_all, NULL, &o);
    assert_string_equal(o.s, CHW "abc}\n");
}

static void test_trailer_limits(void **state)
{
    (void)state;
    static const char msg[] = CH "0\r\nAb: 12\r\nC: 3\r\n\r\n"; /* fields: 6+2 + 4+2 = 14 bytes */
    const char *ok = CHW "} [Ab: 12;C: 3;]\n";

    drive_opts o = {.max_trailer_bytes = 14};
    check_stream(msg, sizeof(msg) - 1, true, &o, ok);
    o.max_trailer_bytes = 13;
    check_stream(msg, sizeof(msg) - 1, true, &o, CHW "} !TOO_LARGE");

    /* storage: the raw lines need exactly 14 bytes */
    drive_opts c = {.trailer_cap = 14};
    check_stream(msg, sizeof(msg) - 1, true, &c, ok);
    c.trailer_cap = 13;
    check_stream(msg, sizeof(msg) - 1, true, &c, CHW "} !TOO_LARGE");

    /* no buffer at all: no trailers allowed, an empty trailer section is fine */
    sc_h1_body b;
    sc_h1_body_init(&b, SC_H1_BODY_CHUNKED, 0, NULL, 100);
    size_t used;
    const char *d;
    size_t dl;
    assert_int_equal(sc_h1_body_decode(&b, "0\r\n\r\n", 5, &used, &d, &dl), SC_H1_BODY_DONE);
    assert_int_equal(used, 5);
    assert_int_equal(sc_h1_body_trailers(&b, NULL, 0), 0);
    sc_h1_body_init(&b, SC_H1_BODY_CHUNKED, 0, NULL, 100);
    assert_int_equal(sc_h1_body_decode(&b, "0\r\nA: b\r\n\r\n", 11, &used, &d, &dl), SC_H1_ERR_TOO_LARGE);
    assert_non_null(b.why);
    /* max_trailer_bytes = 0 refuses any field but not the empty section */
    char tb[64];
    sc_h1_body_init(&b, SC_H1_BODY_CHUNKED, 0, tb, sizeof(tb));
    b.max_trailer_bytes = 0;
    assert_int_equal(sc_h1_body_decode(&b, "0\r\n\r\n", 5, &used, &d, &dl), SC_H1_BODY_DONE);
    sc_h1_body_init(&b, SC_H1_BODY_CHUNKED, 0, tb, sizeof(tb));
    b.max_trailer_bytes = 0;
    assert_int_equal(sc_h1_body_decode(&b, "0\r\nA: b\r\n\r\n", 11, &used, &d, &dl), SC_H1_ERR_TOO_LARGE);
    /* default */
    sc_h1_body_init(&b, SC_H1_BODY_CHUNKED, 0, tb, sizeof(tb));
    assert_int_equal(b.max_trailer_bytes, 16384);
}

static void test_body_trailers_parse(void **state)
{
    (void)state;
    char tb[256];
    sc_h1_body b;
    sc_h1_body_init(&b, SC_H1_BODY_CHUNKED, 0, tb, sizeof(tb));
    static const char in[] = "3\r\nabc\r\n0\r\ngrpc-status:  0 \r\ngrpc-message:\r\nX-Y: a b\r\n\r\nrest";
    size_t off = 0, used, dl;
    const char *d;
    int r;
    while ((r = sc_h1_body_decode(&b, in + off, sizeof(in) - 1 - off, &used, &d, &dl)) == SC_H1_BODY_DATA)
        off += used;
    assert_int_equal(r, SC_H1_BODY_DONE);
    off += used;
    assert_string_equal(in + off, "rest");

    sc_h1_header t[4];
    assert_int_equal(sc_h1_body_trailers(&b, t, 4), 3);
    assert_int_equal(t[0].name.len, 11);
    assert_memory_equal(t[0].name.p, "grpc-status", 11);
    assert_int_equal(t[0].value.len, 1);
    assert_memory_equal(t[0].value.p, "0", 1);
    assert_int_equal(t[1].value.len, 0);
    assert_int_equal(t[2].value.len, 3);
    assert_memory_equal(t[2].value.p, "a b", 3);
    assert_true(t[0].name.p >= tb && t[2].value.p + 3 <= tb + b.trailer_len);
    assert_int_equal(sc_h1_body_trailers(&b, t, 2), SC_H1_ERR_TOO_LARGE);

    /* a corrupt block is refused */
    memcpy(tb, "bad\r\n", 5);
    b.trailer_len = 5;
    assert_int_equal(sc_h1_body_trailers(&b, t, 4), SC_H1_ERR_SYNTAX);
    memcpy(tb, "a: b", 4);
    b.trailer_len = 4;
    assert_int_equal(sc_h1_body_trailers(&b, t, 4), SC_H1_ERR_SYNTAX);
    b.trailer_len = 0;
    assert_int_equal(sc_h1_body_trailers(&b, t, 4), 0);
}

static void test_body_kinds(void **state)
{
    (void)state;
    sc_h1_body b;
    size_t used;
    const char *d;
    size_t dl;

    sc_h1_body_init(&b, SC_H1_BODY_NONE, 0, NULL, 0);
    assert_int_equal(sc_h1_body_decode(&b, "xyz", 3, &used, &d, &dl), SC_H1_BODY_DONE);
    assert_int_equal(used, 0);

    sc_h1_body_init(&b, SC_H1_BODY_LENGTH, 0, NULL, 0);
    assert_int_equal(sc_h1_body_decode(&b, "xyz", 3, &used, &d, &dl), SC_H1_BODY_DONE);
    assert_int_equal(used, 0);

    sc_h1_body_init(&b, SC_H1_BODY_LENGTH, 5, NULL, 0);
    assert_int_equal(sc_h1_body_decode(&b, "", 0, &used, &d, &dl), SC_H1_BODY_NEED_MORE);
    assert_int_equal(sc_h1_body_decode(&b, "abc", 3, &used, &d, &dl), SC_H1_BODY_DATA);
    assert_int_equal(used, 3);
    assert_int_equal(b.remaining, 2);
    assert_int_equal(sc_h1_body_decode(&b, "defgh", 5, &used, &d, &dl), SC_H1_BODY_DATA);
    assert_int_equal(used, 2);
    assert_int_equal(dl, 2);
    assert_memory_equal(d, "de", 2);
    assert_int_equal(sc_h1_body_decode(&b, "fgh", 3, &used, &d, &dl), SC_H1_BODY_DONE);
    assert_int_equal(used, 0);

    sc_h1_body_init(&b, SC_H1_BODY_UNTIL_CLOSE, 0, NULL, 0);
    assert_int_equal(sc_h1_body_decode(&b, "", 0, &used, &d, &dl), SC_H1_BODY_NEED_MORE);
    assert_int_equal(sc_h1_body_decode(&b, "abc", 3, &used, &d, &dl), SC_H1_BODY_DATA);
    assert_int_equal(used, 3);
    assert_int_equal(dl, 3);

    /* chunked: data is returned as soon as it arrives, framing is consumed */
    char tb[16];
    sc_h1_body_init(&b, SC_H1_BODY_CHUNKED, 0, tb, sizeof(tb));
    assert_int_equal(sc_h1_body_decode(&b, "a\r\n", 3, &used, &d, &dl), SC_H1_BODY_NEED_MORE);
    assert_int_equal(used, 3);
    assert_int_equal(b.remaining, 10);
    assert_int_equal(sc_h1_body_decode(&b, "0123", 4, &used, &d, &dl), SC_H1_BODY_DATA);
    assert_int_equal(b.remaining, 6);
    /* errors are sticky */
    assert_int_equal(sc_h1_body_decode(&b, "456789\n", 7, &used, &d, &dl), SC_H1_BODY_DATA);
    assert_int_equal(sc_h1_body_decode(&b, "\n", 1, &used, &d, &dl), SC_H1_ERR_SYNTAX);
    assert_int_equal(sc_h1_body_decode(&b, "\r\n0\r\n\r\n", 7, &used, &d, &dl), SC_H1_ERR_SYNTAX);
    assert_int_equal(used, 0);
}

/* --------------------------------------------------------------- limits -- */

static size_t make_request(char *buf, size_t line_len, size_t head_len)
{
    /* "GET /aaa HTTP/1.1" of line_len bytes, then Host and padding so that
     * the whole head is head_len bytes (when head_len > 0). */
    assert_true(line_len >= 16);
    size_t n = 0;
    memcpy(buf, "GET /", 5);
    n = 5;
    memset(buf + n, 'a', line_len - 14);
    n += line_len - 14;
    memcpy(buf + n, " HTTP/1.1\r\nHost: a\r\n", 20);
    n += 20;
    if (head_len) {
        size_t pad = head_len - n - 2; /* "X:" + value + CRLF, then CRLF */
        assert_true(pad >= 4);
        memcpy(buf + n, "X:", 2);
        memset(buf + n + 2, 'v', pad - 4);
        memcpy(buf + n + pad - 2, "\r\n", 2);
        n += pad;
    }
    memcpy(buf + n, "\r\n", 2);
    return n + 2;
}

static void test_limits_request_line(void **state)
{
    (void)state;
    static char buf[70000];
    static sc_h1_head h;
    const char *why;
    sc_h1_limits lim = {.max_request_line = 100, .max_head = 1000};

    size_t n = make_request(buf, 100, 0);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, &lim, &h, &why), (int)n);
    /* every prefix is incomplete, including the one ending in the line's CR */
    for (size_t k = 0; k < n; k++)
        assert_int_equal(sc_h1_parse_head(buf, k, true, false, &lim, &h, &why), 0);

    n = make_request(buf, 101, 0);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, &lim, &h, &why), SC_H1_ERR_LINE_TOO_LONG);
    assert_string_equal(why, "request line too long");
    /* known as soon as 101 bytes without CR are in */
    assert_int_equal(sc_h1_parse_head(buf, 100, true, false, &lim, &h, &why), 0);
    assert_int_equal(sc_h1_parse_head(buf, 101, true, false, &lim, &h, &why), SC_H1_ERR_LINE_TOO_LONG);
    /* a line that is all method, or that has a bad byte after the limit */
    memset(buf, 'G', 150);
    assert_int_equal(sc_h1_parse_head(buf, 101, true, false, &lim, &h, &why), SC_H1_ERR_LINE_TOO_LONG);
    buf[120] = '\0';
    assert_int_equal(sc_h1_parse_head(buf, 150, true, false, &lim, &h, &why), SC_H1_ERR_LINE_TOO_LONG);
    buf[50] = '\0';
    assert_int_equal(sc_h1_parse_head(buf, 150, true, false, &lim, &h, &why), SC_H1_ERR_SYNTAX);

    /* leading empty lines do not count toward the line */
    memcpy(buf, "\r\n\r\n", 4);
    n = 4 + make_request(buf + 4, 100, 0);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, &lim, &h, &why), (int)n);

    /* defaults: NULL limits and zero fields */
    sc_h1_limits zero = {0};
    n = make_request(buf, 8192, 0);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, NULL, &h, &why), (int)n);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, &zero, &h, &why), (int)n);
    n = make_request(buf, 8193, 0);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, NULL, &h, &why), SC_H1_ERR_LINE_TOO_LONG);
    assert_int_equal(sc_h1_parse_head(buf, 8193, true, false, &zero, &h, &why), SC_H1_ERR_LINE_TOO_LONG);
    assert_int_equal(sc_h1_parse_head(buf, 8192, true, false, &zero, &h, &why), 0);
}

static void test_limits_status_line(void **state)
{
    (void)state;
    static char buf[300];
    sc_h1_head h;
    const char *why;
    sc_h1_limits lim = {.max_request_line = 40, .max_head = 1000};
    /* "HTTP/1.1 200 " is 13 bytes; the reason fills the rest of the line */
    for (size_t line = 39; line <= 41; line++) {
        memcpy(buf, "HTTP/1.1 200 ", 13);
        memset(buf + 13, 'r', line - 13);
        memcpy(buf + line, "\r\n\r\n", 4);
        int rc = sc_h1_parse_head(buf, line + 4, false, false, &lim, &h, &why);
        if (line <= 40) {
            assert_int_equal(rc, (int)line + 4);
            assert_int_equal(h.reason.len, line - 13);
            for (size_t k = 0; k < line + 4; k++)
                assert_int_equal(sc_h1_parse_head(buf, k, false, false, &lim, &h, &why), 0);
        } else {
            assert_int_equal(rc, SC_H1_ERR_LINE_TOO_LONG);
            assert_int_equal(sc_h1_parse_head(buf, 41, false, false, &lim, &h, &why), SC_H1_ERR_LINE_TOO_LONG);
            assert_int_equal(sc_h1_parse_head(buf, 40, false, false, &lim, &h, &why), 0);
        }
    }
}

static void test_limits_head(void **state)
{
    (void)state;
    static char buf[70000];
    static sc_h1_head h;
    const char *why;
    sc_h1_limits lim = {.max_request_line = 100, .max_head = 300};

    size_t n = make_request(buf, 50, 300);
    assert_int_equal(n, 300);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, &lim, &h, &why), 300);
    for (size_t k = 0; k < n; k++)
        assert_int_equal(sc_h1_parse_head(buf, k, true, false, &lim, &h, &why), 0);
    /* with more bytes after it (a body, the next request) */
    memcpy(buf + n, "GET", 3);
    assert_int_equal(sc_h1_parse_head(buf, n + 3, true, false, &lim, &h, &why), 300);

    n = make_request(buf, 50, 301);
    assert_int_equal(n, 301);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, &lim, &h, &why), SC_H1_ERR_TOO_LARGE);
    assert_string_equal(why, "header section too large");
    /* known when 300 bytes are in and the head has not ended */
    assert_int_equal(sc_h1_parse_head(buf, 299, true, false, &lim, &h, &why), 0);
    assert_int_equal(sc_h1_parse_head(buf, 300, true, false, &lim, &h, &why), SC_H1_ERR_TOO_LARGE);

    /* defaults */
    n = make_request(buf, 50, 65536);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, NULL, &h, &why), 65536);
    n = make_request(buf, 50, 65537);
    assert_int_equal(sc_h1_parse_head(buf, n, true, false, NULL, &h, &why), SC_H1_ERR_TOO_LARGE);
    assert_int_equal(sc_h1_parse_head(buf, 65536, true, false, NULL, &h, &why), SC_H1_ERR_TOO_LARGE);
    assert_int_equal(sc_h1_parse_head(buf, 65535, true, false, NULL, &h, &why), 0);

    /* endless empty lines before a request are refused early */
    for (size_t i = 0; i < 400; i += 2)
        memcpy(buf + i, "\r\n", 2);
    assert_int_equal(sc_h1_parse_head(buf, 400, true, false, &lim, &h, &why), SC_H1_ERR_SYNTAX);
}

/* Lines longer than the limit (request and status) and heads longer than
 * the limit are refused at the same byte when the reader is lazy. */
static void test_limits_lazy(void **state)
{
    (void)state;
    static char buf[2000];
    static sc_h1_head h;
    sc_h1_limits lim = {.max_request_line = 100, .max_head = 1000};
    for (size_t lead = 0; lead <= 8; lead++) {
        for (size_t line = 99; line <= 102; line++) {
            for (int req = 0; req <= 1; req++) {
                size_t n = 0;
                if (req) {
                    for (size_t i = 0; i < lead; i++, n += 2)
                        memcpy(buf + n, "\r\n", 2);
                    n += make_request(buf + n, line, 0);
                } else if (lead == 0) {
                    memcpy(buf, "HTTP/1.1 200 ", 13);
                    memset(buf + 13, 'r', line - 13);
                    memcpy(buf + line, "\r\n\r\n", 4);
                    n = line + 4;
                } else {
                    continue;
                }
                size_t prev = 0;
                int rc = 0;
                size_t at = 0;
                for (size_t k = 1; k <= n && rc == 0; k++) {
                    if (!sc_h1_head_worth_parsing(buf, prev, k, &lim))
                        continue;
                    prev = k;
                    rc = sc_h1_parse_head(buf, k, req, false, &lim, &h, NULL);
                    at = k;
                }
                if (line <= 100) {
                    assert_int_equal(rc, (int)n);
                } else {
                    assert_int_equal(rc, SC_H1_ERR_LINE_TOO_LONG);
                    assert_int_equal(at, 2 * lead + 101); /* as soon as known */
                }
            }
        }
    }
    /* a head without line ends: refused at max_head */
    memcpy(buf, "GET / HTTP/1.1\r\nX: ", 19);
    memset(buf + 19, 'v', sizeof(buf) - 19);
    size_t prev = 0, at = 0;
    int rc = 0;
    for (size_t k = 1; k <= sizeof(buf) && rc == 0; k++) {
        if (!sc_h1_head_worth_parsing(buf, prev, k, &lim))
            continue;
        prev = k;
        rc = sc_h1_parse_head(buf, k, true, false, &lim, &h, NULL);
        at = k;
    }
    assert_int_equal(rc, SC_H1_ERR_TOO_LARGE);
    assert_int_equal(at, 1000);

    /* garbage (a TLS ClientHello) is worth parsing at once */
    assert_true(sc_h1_head_worth_parsing("\x16\x03\x01", 0, 3, NULL));
    assert_int_equal(sc_h1_parse_head("\x16\x03\x01", 3, true, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    assert_false(sc_h1_head_worth_parsing("GET / HT", 0, 8, NULL));
    assert_true(sc_h1_head_worth_parsing("GET / HTTP/1.1\r\n", 15, 16, NULL));
    assert_false(sc_h1_head_worth_parsing("GET / HTTP/1.1\r\n", 16, 16, NULL));
    assert_true(sc_h1_head_worth_parsing("GET /\x7f", 5, 6, NULL));
}

static void test_limits_header_count(void **state)
{
    (void)state;
    static char buf[8192];
    static sc_h1_head h;
    const char *why;
    for (int count = SC_H1_MAX_HEADERS; count <= SC_H1_MAX_HEADERS + 1; count++) {
        size_t n = (size_t)snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n");
        for (int i = 1; i < count; i++)
            n += (size_t)snprintf(buf + n, sizeof(buf) - n, "X-%d: %d\r\n", i, i);
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "\r\n");
        int rc = sc_h1_parse_head(buf, n, true, false, NULL, &h, &why);
        if (count == SC_H1_MAX_HEADERS) {
            assert_int_equal(rc, (int)n);
            assert_int_equal(h.n_headers, SC_H1_MAX_HEADERS);
        } else {
            assert_int_equal(rc, SC_H1_ERR_TOO_LARGE);
            assert_string_equal(why, "too many header fields");
        }
    }
}

/* ----------------------------------------------------------- head fields -- */

static void test_head_fields(void **state)
{
    (void)state;
    static sc_h1_head h;
    const char *why = "x";
    const char *r = "PUT /p?q HTTP/1.1\r\nHost:  svc.local:8080 \r\nX-Multi: a\r\nx-multi: b\r\n"
                    "Content-Length: 7\r\n\r\nbody...";
    int rc = sc_h1_parse_head(r, strlen(r), true, false, NULL, &h, &why);
    assert_int_equal(rc, (int)strlen(r) - 7);
    assert_null(why);
    assert_int_equal(h.method.len, 3);
    assert_memory_equal(h.method.p, "PUT", 3);
    assert_true(h.target.p == r + 4);
    assert_int_equal(h.target.len, 4);
    assert_int_equal(h.minor_version, 1);
    assert_int_equal(h.n_headers, 4);
    assert_int_equal(h.host.len, 14);
    assert_memory_equal(h.host.p, "svc.local:8080", 14);
    assert_int_equal(h.body, SC_H1_BODY_LENGTH);
    assert_int_equal(h.content_length, 7);

    const sc_h1_header *f = sc_h1_find(&h, "X-MULTI");
    assert_non_null(f);
    assert_memory_equal(f->value.p, "a", 1);
    assert_null(sc_h1_find(&h, "X-Mult"));
    assert_null(sc_h1_find(&h, "X-Multis"));
    assert_non_null(sc_h1_find(&h, "host"));

    /* reused output struct is reset */
    r = "HTTP/1.1 404 Not Found\r\n\r\n";
    rc = sc_h1_parse_head(r, strlen(r), false, false, NULL, &h, &why);
    assert_int_equal(rc, (int)strlen(r));
    assert_int_equal(h.status, 404);
    assert_int_equal(h.n_headers, 0);
    assert_null(h.host.p);
    assert_null(h.method.p);
    assert_int_equal(h.reason.len, 9);

    /* why on every error; NULL why is allowed */
    assert_int_equal(sc_h1_parse_head("GET / HTTP/1.1\r\n\r\n", 18, true, false, NULL, &h, &why), SC_H1_ERR_SYNTAX);
    assert_string_equal(why, "missing Host");
    assert_int_equal(sc_h1_parse_head("GET / HTTP/1.1\r\n\r\n", 18, true, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    r = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), true, false, NULL, &h, &why), SC_H1_ERR_SYNTAX);
    assert_string_equal(why, "Transfer-Encoding with Content-Length");
    r = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), true, false, NULL, &h, &why), SC_H1_ERR_SYNTAX);
    assert_string_equal(why, "duplicate Content-Length");
    assert_int_equal(sc_h1_parse_head(NULL, 0, true, false, NULL, &h, &why), 0);
    assert_null(why);
}

static void test_errors_early(void **state)
{
    (void)state;
    static sc_h1_head h;
    /* invalid bytes are refused before the line (or head) is complete */
    assert_int_equal(sc_h1_parse_head("GE\x01", 3, true, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    assert_int_equal(sc_h1_parse_head("GET /\x01", 6, true, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    assert_int_equal(sc_h1_parse_head("GET / HTTP/2.0", 14, true, false, NULL, &h, NULL), SC_H1_ERR_UNSUPPORTED);
    assert_int_equal(sc_h1_parse_head("GET / HTTP/2", 12, true, false, NULL, &h, NULL), 0);
    assert_int_equal(sc_h1_parse_head("GET / HTTX", 10, true, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    assert_int_equal(sc_h1_parse_head("GET / HTTP/1.1\r\nHost: a\0", 24, true, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    assert_int_equal(sc_h1_parse_head("GET / HTTP/1.1\r\n ", 17, true, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    assert_int_equal(sc_h1_parse_head("HTTP/1.1 2x", 11, false, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    assert_int_equal(sc_h1_parse_head("HTTP/1.1 200 OK\r\nA b", 20, false, false, NULL, &h, NULL), SC_H1_ERR_SYNTAX);
    /* but semantic problems need the whole head */
    assert_int_equal(sc_h1_parse_head("GET / HTTP/1.1\r\nX: y\r\n", 22, true, false, NULL, &h, NULL), 0);
}

/* ---------------------------------------------------------- misc helpers -- */

static void test_hop_by_hop(void **state)
{
    (void)state;
    sc_h1_str none = {NULL, 0};
    const char *hop[] = {"Connection", "keep-alive", "PROXY-CONNECTION", "te", "Trailer",
                         "transfer-encoding", "Upgrade"};
    for (size_t i = 0; i < SC_ARRAY_LEN(hop); i++)
        assert_true(sc_h1_is_hop_by_hop(hop[i], strlen(hop[i]), none));
    const char *end2end[] = {"Host", "Content-Length", "content-type", "Trailers", "T", "tes", "x-foo"};
    for (size_t i = 0; i < SC_ARRAY_LEN(end2end); i++)
        assert_false(sc_h1_is_hop_by_hop(end2end[i], strlen(end2end[i]), none));

    const char *conn = "close, X-Foo ,x-bar,, ";
    sc_h1_str c = {conn, strlen(conn)};
    assert_true(sc_h1_is_hop_by_hop("x-foo", 5, c));
    assert_true(sc_h1_is_hop_by_hop("X-BAR", 5, c));
    assert_true(sc_h1_is_hop_by_hop("close", 5, c));
    assert_false(sc_h1_is_hop_by_hop("x-fo", 4, c));
    assert_false(sc_h1_is_hop_by_hop("x-foox", 6, c));
    assert_false(sc_h1_is_hop_by_hop("", 0, c));
    sc_h1_str empty = {"", 0};
    assert_false(sc_h1_is_hop_by_hop("x-foo", 5, empty));
}

/* Every Connection field of a message lists hop-by-hop names, not only the first. */
static void test_hop_by_hop_head(void **state)
{
    (void)state;
    static sc_h1_head h;
    const char *r = "GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-one\r\nX-One: 1\r\n"
                    "X-Two: 2\r\nconnection: X-Two ,, x-three\r\nX-Three: 3\r\nX-Four: 4\r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), true, false, NULL, &h, NULL), (int)strlen(r));
    assert_int_equal(h.n_connection, 2);
    assert_true(sc_h1_is_hop_by_hop_head(&h, "x-one", 5));
    assert_true(sc_h1_is_hop_by_hop_head(&h, "X-TWO", 5));
    assert_true(sc_h1_is_hop_by_hop_head(&h, "x-three", 7));
    assert_true(sc_h1_is_hop_by_hop_head(&h, "keep-alive", 10));
    assert_true(sc_h1_is_hop_by_hop_head(&h, "Transfer-Encoding", 17));
    assert_true(sc_h1_is_hop_by_hop_head(&h, "connection", 10));
    assert_false(sc_h1_is_hop_by_hop_head(&h, "x-four", 6));
    assert_false(sc_h1_is_hop_by_hop_head(&h, "host", 4));
    assert_false(sc_h1_is_hop_by_hop_head(&h, "", 0));
    /* the first field alone (what a single lookup sees) misses the second's names */
    assert_false(sc_h1_is_hop_by_hop("x-two", 5, sc_h1_find(&h, "connection")->value));
    /* a response, and a message without Connection */
    r = "HTTP/1.1 200 OK\r\nConnection: a\r\nConnection: b\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), false, false, NULL, &h, NULL), (int)strlen(r));
    assert_true(sc_h1_is_hop_by_hop_head(&h, "b", 1));
    assert_false(sc_h1_is_hop_by_hop_head(&h, "c", 1));
    r = "HTTP/1.1 200 OK\r\nX-A: a\r\nContent-Length: 0\r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), false, false, NULL, &h, NULL), (int)strlen(r));
    assert_int_equal(h.n_connection, 0);
    assert_false(sc_h1_is_hop_by_hop_head(&h, "x-a", 3));
    assert_true(sc_h1_is_hop_by_hop_head(&h, "upgrade", 7));
}

static void test_trailer_forbidden(void **state)
{
    (void)state;
    const char *no[] = {"Content-Length", "transfer-encoding", "HOST", "connection", "te", "trailer",
                        "keep-alive", "upgrade", "expect", "content-type", "authorization", "set-cookie",
                        "Cookie", "range", "max-forwards", "content-encoding", "content-range",
                        "proxy-authorization", "proxy-connection"};
    for (size_t i = 0; i < SC_ARRAY_LEN(no); i++)
        if (!sc_h1_trailer_forbidden(no[i], strlen(no[i])))
            fail_msg("%s allowed in trailers", no[i]);
    const char *yes[] = {"grpc-status", "grpc-message", "x-checksum", "server-timing", "hosts", "content-lengt"};
    for (size_t i = 0; i < SC_ARRAY_LEN(yes); i++)
        if (sc_h1_trailer_forbidden(yes[i], strlen(yes[i])))
            fail_msg("%s refused in trailers", yes[i]);
}

static void test_content_length_line(void **st)
{
    (void)st;
    char line[40];
    static const struct {
        uint64_t n;
        const char *want;
    } cases[] = {
        {0, "content-length: 0\r\n"},
        {64, "content-length: 64\r\n"},
        {1073741824u, "content-length: 1073741824\r\n"},
        {UINT64_MAX, "content-length: 18446744073709551615\r\n"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        size_t n = sc_h1_content_length_line(line, cases[i].n);
        assert_int_equal(n, strlen(cases[i].want));
        assert_memory_equal(line, cases[i].want, n);
    }
}

static void test_reason(void **state)
{
    (void)state;
    assert_string_equal(sc_h1_reason(200), "OK");
    assert_string_equal(sc_h1_reason(404), "Not Found");
    assert_string_equal(sc_h1_reason(429), "Too Many Requests");
    assert_string_equal(sc_h1_reason(431), "Request Header Fields Too Large");
    assert_string_equal(sc_h1_reason(502), "Bad Gateway");
    assert_string_equal(sc_h1_reason(503), "Service Unavailable");
    assert_string_equal(sc_h1_reason(504), "Gateway Timeout");
    assert_string_equal(sc_h1_reason(505), "HTTP Version Not Supported");
    assert_string_equal(sc_h1_reason(299), "Unknown");
    assert_string_equal(sc_h1_reason(-1), "Unknown");
}

/* Every byte value at one spot of a header value, name and target. */
static void test_all_bytes(void **state)
{
    (void)state;
    static sc_h1_head h;
    char buf[64];
    for (int c = 0; c < 256; c++) {
        int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX: a%cb\r\n\r\n", 'Z');
        *strchr(buf, 'Z') = (char)c;
        int rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
        bool ok = c == '\t' || c >= 0x20 ? c != 0x7f : false;
        assert_int_equal(rc, ok ? n : SC_H1_ERR_SYNTAX);

        n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX%cY: b\r\n\r\n", 'Z');
        *strchr(buf, 'Z') = (char)c;
        rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
        ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
             (c && strchr("!#$%&'*+-.^_`|~:", c));
        assert_int_equal(rc, ok ? n : SC_H1_ERR_SYNTAX);

        n = snprintf(buf, sizeof(buf), "GET /%c HTTP/1.1\r\nHost: a\r\n\r\n", 'Z');
        *strchr(buf, 'Z') = (char)c;
        rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
        ok = c > 0x20 && c < 0x7f;
        assert_int_equal(rc, ok ? n : SC_H1_ERR_SYNTAX);
    }
}

/* Names, values, the Host, the method and the request-target are scanned
 * several bytes a step: every byte at every position of a run longer than
 * a step, at both ends too. */
static void test_all_bytes_every_position(void **state)
{
    (void)state;
    static sc_h1_head h;
    char buf[96];
    for (int c = 0; c < 256; c++) {
        bool value_ok = c == '\t' || c >= 0x20 ? c != 0x7f : false;
        bool name_ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c && strchr("!#$%&'*+-.^_`|~", c));
        bool host_ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       (c && strchr("-._~!$&'()*+,;=%", c));
        for (int pos = 0; pos < 11; pos++) {
            char run[12] = "abcdefghijk";
            run[pos] = (char)c;
            int n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\nX: a%.11sb\r\n\r\n", "ZZZZZZZZZZZ");
            memcpy(strstr(buf, "ZZZZZZZZZZZ"), run, 11);
            int rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
            assert_int_equal(rc, value_ok ? n : SC_H1_ERR_SYNTAX);

            n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: a\r\n%.11s: b\r\n\r\n", "ZZZZZZZZZZZ");
            memcpy(strstr(buf, "ZZZZZZZZZZZ"), run, 11);
            rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
            /* a ':' ends the name early: the rest is the value */
            assert_int_equal(rc, name_ok || (c == ':' && pos > 0) ? n : SC_H1_ERR_SYNTAX);

            n = snprintf(buf, sizeof(buf), "GET / HTTP/1.1\r\nHost: %.11s\r\n\r\n", "ZZZZZZZZZZZ");
            memcpy(strstr(buf, "ZZZZZZZZZZZ"), run, 11);
            rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
            /* whitespace at either end is not part of the value; a ':' at the
             * end starts an empty port */
            bool edge = pos == 0 || pos == 10;
            bool ok = host_ok || (edge && (c == ' ' || c == '\t')) || (pos == 10 && c == ':');
            assert_int_equal(rc, ok ? n : SC_H1_ERR_SYNTAX);

            n = snprintf(buf, sizeof(buf), "GET /%.11s HTTP/1.1\r\nHost: a\r\n\r\n", "ZZZZZZZZZZZ");
            memcpy(strstr(buf, "ZZZZZZZZZZZ"), run, 11);
            rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
            assert_int_equal(rc, c > 0x20 && c < 0x7f ? n : SC_H1_ERR_SYNTAX);

            n = snprintf(buf, sizeof(buf), "%.11s / HTTP/1.1\r\nHost: a\r\n\r\n", "ZZZZZZZZZZZ");
            memcpy(strstr(buf, "ZZZZZZZZZZZ"), run, 11);
            rc = sc_h1_parse_head(buf, (size_t)n, true, false, NULL, &h, NULL);
            assert_int_equal(rc, name_ok ? n : SC_H1_ERR_SYNTAX);
        }
    }
    /* trailing whitespace is not part of the value, inner whitespace is */
    const char *r = "GET / HTTP/1.1\r\nHost: a\r\nX: \t a \t b \t \r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), true, false, NULL, &h, NULL), (int)strlen(r));
    const sc_h1_header *f = sc_h1_find(&h, "x");
    assert_non_null(f);
    assert_int_equal(f->value.len, 5);
    assert_memory_equal(f->value.p, "a \t b", 5);
    r = "GET / HTTP/1.1\r\nHost: a\r\nX:  \t  \r\n\r\n";
    assert_int_equal(sc_h1_parse_head(r, strlen(r), true, false, NULL, &h, NULL), (int)strlen(r));
    assert_int_equal(sc_h1_find(&h, "x")->value.len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_requests),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_good_responses),
        cmocka_unit_test(test_bad_responses),
        cmocka_unit_test(test_head_response),
        cmocka_unit_test(test_chunked),
        cmocka_unit_test(test_chunk_ext_bound),
        cmocka_unit_test(test_trailer_limits),
        cmocka_unit_test(test_body_trailers_parse),
        cmocka_unit_test(test_body_kinds),
        cmocka_unit_test(test_limits_request_line),
        cmocka_unit_test(test_limits_status_line),
        cmocka_unit_test(test_limits_head),
        cmocka_unit_test(test_limits_lazy),
        cmocka_unit_test(test_limits_header_count),
        cmocka_unit_test(test_head_fields),
        cmocka_unit_test(test_errors_early),
        cmocka_unit_test(test_hop_by_hop),
        cmocka_unit_test(test_hop_by_hop_head),
        cmocka_unit_test(test_trailer_forbidden),
        cmocka_unit_test(test_reason),
        cmocka_unit_test(test_all_bytes_every_position),
        cmocka_unit_test(test_content_length_line),
        cmocka_unit_test(test_all_bytes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

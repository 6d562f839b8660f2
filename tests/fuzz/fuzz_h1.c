/*
 * fuzz_h1.c: the HTTP/1 codec on arbitrary bytes. The input is parsed as a
 * request and as a response (with and without tight limits); each complete
 * head is followed by its body, decoded twice: all at once and in
 * pseudo-random pieces derived from the input. Invariants (abort() on
 * violation):
 *  - a head's length is within the input, every parsed string lies inside
 *    the head, and parsed fields obey the grammar (status, version, counts);
 *  - every prefix of the input parses to "incomplete" or to the same verdict
 *    as the whole input, so the result never depends on how bytes arrive;
 *  - the body decoder consumes at most what it is given, returns data
 *    pointers inside its input, and produces the same payload, trailers and
 *    end (or error) however the input is split.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "http/h1.h"

#define CHECK(x)         \
    do {                 \
        if (!(x))        \
            abort();     \
    } while (0)

static uint64_t mix(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *s = x;
}

static bool inside(const char *p, size_t n, const char *lo, size_t len)
{
    if (n == 0)
        return true; /* empty strings may point anywhere (or be NULL) */
    return p >= lo && p + n <= lo + len;
}

typedef struct {
    int rc;                /* final result: DONE, NEED_MORE (ran out), or an error */
    size_t used;           /* bytes consumed up to the end of the message or the error */
    size_t data_len;
    char trailers[512];
    size_t trailer_len;
} body_out;

/* Decodes in[0..len) in pieces (seed 0: all at once), collecting payload into data. */
static void run_body(const sc_h1_head *h, const char *in, size_t len, uint64_t seed, size_t tcap,
                     char *data, body_out *o)
{
    sc_h1_body b;
    sc_h1_body_init(&b, h->body, h->content_length, o->trailers, SC_MIN(tcap, sizeof(o->trailers)));
    size_t off = 0;
    o->data_len = 0;
    o->rc = SC_H1_BODY_NEED_MORE;
    uint64_t s = seed;
    for (int guard = 0; guard < 1000000; guard++) {
        size_t avail = len - off;
        size_t piece = avail;
        if (seed && avail) {
            uint64_t r = mix(&s);
            piece = (r & 3) == 0 ? 1 : 1 + (size_t)((r >> 8) % 24);
            piece = SC_MIN(piece, avail);
        }
        size_t used = (size_t)-1, dl = (size_t)-1;
        const char *d = (const char *)&used;
        int rc = sc_h1_body_decode(&b, in + off, piece, &used, &d, &dl);
        CHECK(used <= piece);
        if (rc == SC_H1_BODY_DATA) {
            CHECK(dl > 0 && dl <= used);
            CHECK(d >= in + off && d + dl <= in + off + used);
            memcpy(data + o->data_len, d, dl);
            o->data_len += dl;
            off += used;
            continue;
        }
        CHECK(d == NULL && dl == 0);
        off += used;
        if (rc == SC_H1_BODY_NEED_MORE) {
            CHECK(used == piece);
            if (off == len)
                break;
            continue;
        }
        CHECK(rc == SC_H1_BODY_DONE || rc == SC_H1_ERR_SYNTAX || rc == SC_H1_ERR_TOO_LARGE);
        o->rc = rc;
        if (rc < 0) {
            CHECK(b.why != NULL);
            /* sticky */
            size_t u2, dl2;
            const char *d2;
            CHECK(sc_h1_body_decode(&b, in, len, &u2, &d2, &dl2) == rc && u2 == 0);
        } else {
            CHECK(h->body != SC_H1_BODY_UNTIL_CLOSE);
            sc_h1_header t[128];
            int n = sc_h1_body_trailers(&b, t, SC_ARRAY_LEN(t));
            CHECK(n >= 0);
            for (int i = 0; i < n; i++) {
                CHECK(t[i].name.len > 0 && inside(t[i].name.p, t[i].name.len, b.trailer_buf, b.trailer_len));
                CHECK(inside(t[i].value.p, t[i].value.len, b.trailer_buf, b.trailer_len));
                (void)sc_h1_trailer_forbidden(t[i].name.p, t[i].name.len);
            }
        }
        break;
    }
    o->used = off;
    o->trailer_len = b.trailer_len;
    CHECK(b.trailer_len <= b.trailer_cap);
}

static void check_head(const sc_h1_head *h, const char *buf, size_t rc, bool req)
{
    CHECK(h->n_headers <= SC_H1_MAX_HEADERS);
    CHECK(h->minor_version == 0 || h->minor_version == 1);
    for (size_t i = 0; i < h->n_headers; i++) {
        CHECK(h->headers[i].name.len > 0 && inside(h->headers[i].name.p, h->headers[i].name.len, buf, rc));
        CHECK(inside(h->headers[i].value.p, h->headers[i].value.len, buf, rc));
        CHECK(sc_h1_find(h, "x-nonexistent-header-name") == NULL);
    }
    if (req) {
        CHECK(h->method.len > 0 && inside(h->method.p, h->method.len, buf, rc));
        CHECK(h->target.len > 0 && inside(h->target.p, h->target.len, buf, rc));
        CHECK(inside(h->host.p, h->host.len, buf, rc));
        CHECK(h->body != SC_H1_BODY_UNTIL_CLOSE);
        CHECK(h->minor_version == 1 ? h->host.p != NULL : true);
        /* the target's parts lie inside it; absolute-form has a scheme */
        CHECK(inside(h->scheme.p, h->scheme.len, h->target.p, h->target.len));
        CHECK(inside(h->authority.p, h->authority.len, h->target.p, h->target.len));
        CHECK(inside(h->path.p, h->path.len, h->target.p, h->target.len));
        CHECK(h->scheme.len || h->authority.len == 0);
        if (h->scheme.len)
            CHECK(memchr(h->target.p, '#', h->target.len) == NULL);
        for (size_t i = 0; i < h->authority.len; i++)
            CHECK(h->authority.p[i] != '@' && h->authority.p[i] != '/' && h->authority.p[i] != '?');
        for (size_t i = 0; i < h->host.len; i++)
            CHECK(h->host.p[i] != '@' && h->host.p[i] != '/' && h->host.p[i] != '?' && h->host.p[i] != '#');
    } else {
        CHECK(h->status >= 100 && h->status <= 599);
        CHECK(inside(h->reason.p, h->reason.len, buf, rc));
    }
    CHECK(h->body <= SC_H1_BODY_UNTIL_CLOSE);
    if (h->body == SC_H1_BODY_LENGTH)
        CHECK(h->content_length <= (uint64_t)INT64_MAX);
    if (h->body == SC_H1_BODY_UNTIL_CLOSE)
        CHECK(!h->keep_alive);
    const sc_h1_header *c = sc_h1_find(h, "connection");
    sc_h1_str conn = c ? c->value : (sc_h1_str){NULL, 0};
    CHECK(c ? h->n_connection > 0 : h->n_connection == 0);
    for (size_t i = 0; i < h->n_headers; i++) {
        bool first = sc_h1_is_hop_by_hop(h->headers[i].name.p, h->headers[i].name.len, conn);
        /* all Connection fields list at least what the first one does */
        CHECK(!first || sc_h1_is_hop_by_hop_head(h, h->headers[i].name.p, h->headers[i].name.len));
    }
}

static sc_h1_head g_head, g_head2;

/* One stream: heads and bodies of up to 4 pipelined messages. */
static void run_stream(const char *buf, size_t len, bool req, bool head_resp, const sc_h1_limits *lim,
                       uint64_t seed, char *d1, char *d2)
{
    size_t off = 0;
    for (int msg = 0; msg < 4 && off < len; msg++) {
        const char *p = buf + off;
        size_t n = len - off;
        const char *why = "unset";
        int rc = sc_h1_parse_head(p, n, req, head_resp, lim, &g_head, &why);
        CHECK(rc <= (int)n);
        CHECK(rc < 0 ? why != NULL && why[0] != '\0' : why == NULL);
        CHECK(rc == 0 || rc > 0 || rc == SC_H1_ERR_SYNTAX || rc == SC_H1_ERR_TOO_LARGE ||
              rc == SC_H1_ERR_LINE_TOO_LONG || rc == SC_H1_ERR_UNSUPPORTED);

        /* prefixes: incomplete or the same verdict */
        uint64_t s = seed ^ (uint64_t)msg;
        for (int k = 0; k < 4 && n > 1; k++) {
            size_t cut = (size_t)(mix(&s) % n);
            if (k == 0)
                cut = n - 1;
            int r2 = sc_h1_parse_head(p, cut, req, head_resp, lim, &g_head2, NULL);
            if (rc > 0)
                CHECK(cut < (size_t)rc ? r2 == 0 : r2 == rc);
            else
                CHECK(r2 == 0 || r2 == rc);
        }
        /* a lazy reader (one byte per read, parsing only when worth it)
         * reaches the same verdict, or has not yet seen the offending line end */
        if (n <= 600) {
            size_t prev = 0;
            int lazy = 0;
            for (size_t k = 1; k <= n && lazy == 0; k++) {
                if (!sc_h1_head_worth_parsing(p, prev, k, lim))
                    continue;
                prev = k;
                lazy = sc_h1_parse_head(p, k, req, head_resp, lim, &g_head2, NULL);
            }
            CHECK(rc > 0 ? lazy == rc : (lazy == 0 || lazy == rc));
        }
        if (rc <= 0)
            return;
        check_head(&g_head, p, (size_t)rc, req);
        off += (size_t)rc;

        static body_out whole, split;
        size_t tcap = 8 + (size_t)(seed % 300);
        run_body(&g_head, buf + off, len - off, 0, tcap, d1, &whole);
        run_body(&g_head, buf + off, len - off, seed | 1, tcap, d2, &split);
        CHECK(whole.rc == split.rc);
        CHECK(whole.data_len == split.data_len && memcmp(d1, d2, whole.data_len) == 0);
        CHECK(whole.used == split.used || whole.rc < 0); /* consumed is 0 on error */
        CHECK(whole.trailer_len == split.trailer_len && memcmp(whole.trailers, split.trailers, whole.trailer_len) == 0);
        if (whole.rc != SC_H1_BODY_DONE)
            return;
        off += whole.used;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *buf = (const char *)data;
    uint64_t seed = 1469598103934665603ull;
    for (size_t i = 0; i < size; i++)
        seed = (seed ^ data[i]) * 1099511628211ull;
    seed |= 1;

    char *d1 = malloc(size + 1), *d2 = malloc(size + 1);
    if (!d1 || !d2)
        abort();
    static const sc_h1_limits tight = {.max_request_line = 48, .max_head = 200};
    for (int v = 0; v < 4; v++) {
        bool head_resp = (seed >> 7) & 1;
        run_stream(buf, size, true, false, (v & 2) ? &tight : NULL, seed + (uint64_t)v, d1, d2);
        run_stream(buf, size, false, v == 1 ? true : head_resp && v == 3, (v & 2) ? &tight : NULL,
                   seed + (uint64_t)v, d1, d2);
    }
    free(d1);
    free(d2);
    return 0;
}

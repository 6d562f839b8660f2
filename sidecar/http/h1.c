/*
 * h1.c: the strict HTTP/1.1 codec of h1.h (RFC 9112 framing, RFC 9110
 * semantics). Two halves:
 *
 *  - sc_h1_parse_head() is stateless: the caller hands it everything received
 *    so far and it either finds a complete, valid head or says why not. It
 *    scans left to right and validates every byte as it goes, so garbage is
 *    refused as soon as it arrives, and limits are reported as soon as the
 *    bytes at hand prove them exceeded, not when a CRLF finally shows up.
 *
 *  - sc_h1_body_decode() is a byte-driven state machine over the framing of
 *    one body, so input may be split anywhere (down to one byte per call).
 *
 * Nothing allocates; parsed strings point into the caller's buffers.
 */
#include "http/h1.h"
#include "http/hdr.h"

#include <string.h>

#define DEFAULT_MAX_REQUEST_LINE 8192
#define DEFAULT_MAX_HEAD 65536
#define DEFAULT_MAX_TRAILER_BYTES 16384
/* RFC 9112 2.2 asks to ignore "at least one" empty line before a request;
 * a few cover old clients that add CRLF after a body. More is refused, so
 * that the number of lines in a head stays bounded (see worth_parsing). */
#define MAX_LEADING_EMPTY_LINES 8
/* Chunk extensions are skipped, never interpreted; this bounds the bytes of
 * one chunk-size line after the size (BWS and extensions). It is per line,
 * not per body, because real clients (AWS SigV4 streaming uploads) put ~80
 * bytes of extension on every chunk of a large body. */
#define MAX_CHUNK_EXT 4096
/* Content-Length and chunk sizes must fit an off_t. */
#define MAX_BODY_LENGTH ((uint64_t)INT64_MAX)

/* ---------------------------------------------------------------- bytes -- */

enum { C_TCHAR = 1, C_VALUE = 2, C_HOST = 4, C_HEX = 8, C_REGNAME = 16, C_VCHAR = 32 };

/* Byte classes: tchar (RFC 9110 5.6.2); field-vchar / obs-text / SP / HTAB
 * (5.5); the bytes of uri-host [":" port] (RFC 3986 reg-name, IP literal,
 * pct-encoded); HEXDIG; those of a reg-name or IPv4 address (uri-host's
 * bytes but ':', '[' and ']'); VCHAR (RFC 5234, the bytes of a
 * request-target). A constant table: no start-up step, no races. */
static const unsigned char cls[256] = {
     0,  0,  0,  0,  0,  0,  0,  0,  0,  2,  0,  0,  0,  0,  0,  0,  /* 0x00 */
     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  /* 0x10 */
     2, 55, 34, 35, 55, 55, 55, 55, 54, 54, 55, 55, 54, 55, 55, 34,  /* 0x20 */
    63, 63, 63, 63, 63, 63, 63, 63, 63, 63, 38, 54, 34, 54, 34, 34,  /* 0x30 */
    34, 63, 63, 63, 63, 63, 63, 55, 55, 55, 55, 55, 55, 55, 55, 55,  /* 0x40 */
    55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 38, 34, 38, 35, 55,  /* 0x50 */
    35, 63, 63, 63, 63, 63, 63, 55, 55, 55, 55, 55, 55, 55, 55, 55,  /* 0x60 */
    55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 55, 34, 35, 34, 55,  0,  /* 0x70 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0x80 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0x90 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0xa0 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0xb0 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0xc0 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0xd0 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0xe0 */
     2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  2,  /* 0xf0 */
};

static inline bool is_tchar(char c) { return cls[(unsigned char)c] & C_TCHAR; }
static inline bool is_value(char c) { return cls[(unsigned char)c] & C_VALUE; }
static inline bool is_hostc(char c) { return cls[(unsigned char)c] & C_HOST; }
static inline bool is_hex(char c) { return cls[(unsigned char)c] & C_HEX; }
/* The end of the run of bytes of class k that starts at p (end at most).
 * Four bytes a step while four remain, their classes and-ed without a
 * branch: header names and values are most of a head's bytes. */
static inline const char *span(const char *p, const char *end, unsigned char k)
{
    const unsigned char *u = (const unsigned char *)p;
    while (end - (const char *)u >= 4 && (cls[u[0]] & cls[u[1]] & cls[u[2]] & cls[u[3]] & k))
        u += 4;
    while ((const char *)u < end && (cls[*u] & k))
        u++;
    return (const char *)u;
}

static inline bool is_ows(char c) { return c == ' ' || c == '\t'; }
static inline bool is_digit(char c) { return c >= '0' && c <= '9'; }

/* a[0..alen) equals the NUL-terminated b, ignoring ASCII case. The lengths
 * are compared first (b is mostly a literal, whose strlen the compiler
 * knows): most names in a head differ from the one looked for in length. */
static inline __attribute__((always_inline)) bool ieq(const char *a, size_t alen, const char *b)
{
    size_t blen = strlen(b);
    return alen == blen && sc_ascii_ieq_n(a, b, alen);
}

static inline __attribute__((always_inline)) bool str_ieq(sc_h1_str s, const char *lit)
{
    return ieq(s.p, s.len, lit);
}

/*
 * Comma-separated list (RFC 9110 5.6.1): yields the next element with OWS
 * trimmed; an element may be empty ("a,,b", and "" is one empty element).
 * Returns false at the end; *pp becomes NULL after the last element.
 */
static bool list_next(const char **pp, const char *end, sc_h1_str *elem)
{
    const char *p = *pp;
    if (!p)
        return false;
    const char *e = p;
    while (e < end && *e != ',')
        e++;
    const char *a = p, *b = e;
    while (a < b && is_ows(*a))
        a++;
    while (b > a && is_ows(b[-1]))
        b--;
    elem->p = a;
    elem->len = (size_t)(b - a);
    *pp = e < end ? e + 1 : NULL;
    return true;
}

/* True when the comma list `v` has an element equal (case-insensitively)
 * to `tok`, ignoring ";params" after an element's name. */
static bool list_has(sc_h1_str v, const char *tok)
{
    const char *p = v.p, *end = v.p + v.len;
    sc_h1_str e;
    while (list_next(&p, end, &e)) {
        size_t n = 0;
        while (n < e.len && e.p[n] != ';' && !is_ows(e.p[n]))
            n++;
        if (ieq(e.p, n, tok))
            return true;
    }
    return false;
}

/* ----------------------------------------------------------------- head -- */

#define INCOMPLETE 0

typedef struct {
    const char *why;
} perr;

static int fail(perr *e, int rc, const char *why)
{
    e->why = why;
    return rc;
}

/*
 * The request and status lines are scanned only within their first
 * max_line + 1 bytes (`cend`), where the CR must be; the LF after it may lie
 * beyond. Running into cend without a CR proves the line too long, so the
 * verdict is the same however the input is split: a byte after the limit is
 * never looked at, and an invalid byte before it is always found first.
 */
static const char *content_end(const char *line, const char *end, size_t max_line)
{
    return (size_t)(end - line) > max_line + 1 ? line + max_line + 1 : end;
}

static int line_incomplete(const char *line, const char *cend, size_t max_line, perr *e,
                           const char *why)
{
    if ((size_t)(cend - line) > max_line)
        return fail(e, SC_H1_ERR_LINE_TOO_LONG, why);
    return INCOMPLETE;
}

/* Expects CRLF at *pp; `what` names a byte other than CR found there. */
static int expect_crlf(const char **pp, const char *end, perr *e, const char *what)
{
    const char *p = *pp;
    if (p == end)
        return INCOMPLETE;
    if (*p != '\r')
        return fail(e, SC_H1_ERR_SYNTAX, *p == '\n' ? "bare LF line ending" : what);
    if (p + 1 == end)
        return INCOMPLETE;
    if (p[1] != '\n')
        return fail(e, SC_H1_ERR_SYNTAX, "bare CR in line");
    *pp = p + 2;
    return 1;
}

/* "HTTP/" DIGIT "." DIGIT; 1.0 and 1.1 are supported. */
static int parse_version(const char **pp, const char *end, int *minor, perr *e)
{
    static const char pat[] = "HTTP/1.1";
    const char *p = *pp;
    if (end - p >= 8 && memcmp(p, pat, 8) == 0) { /* nearly every message: one word compare */
        *minor = 1;
        *pp = p + 8;
        return 1;
    }
    for (int i = 0; i < 8; i++) {
        if (p + i == end)
            return INCOMPLETE;
        char c = p[i];
        bool ok = (i == 5 || i == 7) ? is_digit(c) : c == pat[i];
        if (!ok)
            return fail(e, SC_H1_ERR_SYNTAX, "invalid HTTP version");
    }
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return fail(e, SC_H1_ERR_UNSUPPORTED, "unsupported HTTP version");
    *minor = p[7] - '0';
    *pp = p + 8;
    return 1;
}

/*
 * uri-host [ ":" port ] (RFC 3986 3.2.2-3.2.3, RFC 9110 7.2): an IP literal
 * in brackets, or a reg-name / IPv4 address, then an optional port of at
 * most 5 digits. No userinfo ('@' is not a host byte), no path, query or
 * fragment. Used for Host, the authority of an absolute-form target and the
 * authority-form target of CONNECT, so all three read alike.
 * need_host: the host may not be empty (an "http" URI must have one);
 * need_port: a port of at least one digit is required (CONNECT).
 */
static bool authority_valid(sc_h1_str a, bool need_host, bool need_port)
{
    size_t i = 0;
    if (a.len && a.p[0] == '[') {
        for (i = 1; i < a.len && a.p[i] != ']'; i++)
            if (!is_hostc(a.p[i]) || a.p[i] == '[')
                return false;
        if (i == a.len || i == 1)
            return false; /* no closing bracket, or nothing inside */
        i++;
    } else {
        i = (size_t)(span(a.p, a.p + a.len, C_REGNAME) - a.p);
        if (i < a.len && a.p[i] != ':')
            return false;
        if (need_host && i == 0)
            return false;
    }
    if (i == a.len)
        return !need_port;
    if (a.p[i] != ':')
        return false;
    size_t digits = a.len - i - 1;
    if (digits > 5 || (need_port && digits == 0))
        return false;
    for (i++; i < a.len; i++)
        if (!is_digit(a.p[i]))
            return false;
    return true;
}

/* absolute-form: scheme ":" ... (RFC 3986 scheme = ALPHA *( ALPHA / DIGIT / + - . )). */
static bool absolute_form(sc_h1_str t)
{
    size_t i = 0;
    char c0 = sc_ascii_lower(t.p[0]);
    if (c0 < 'a' || c0 > 'z')
        return false;
    for (i = 1; i < t.len && t.p[i] != ':'; i++) {
        char c = sc_ascii_lower(t.p[i]);
        if (!((c >= 'a' && c <= 'z') || is_digit(c) || c == '+' || c == '-' || c == '.'))
            return false;
    }
    return i < t.len && i + 1 < t.len; /* ':' seen, followed by something */
}

/*
 * Splits an absolute-form target into scheme, authority and the rest (path
 * and query). absolute-URI has no fragment, so '#' is refused. An
 * "//authority" is validated like Host; "http" and "https" URIs must have
 * one with a non-empty host (RFC 9110 4.2.1-4.2.2).
 */
static int split_absolute(sc_h1_head *out, perr *e)
{
    sc_h1_str t = out->target;
    const char *end = t.p + t.len;
    const char *p = memchr(t.p, ':', t.len);
    out->scheme = (sc_h1_str){t.p, (size_t)(p - t.p)};
    p++;
    if (memchr(t.p, '#', t.len))
        return fail(e, SC_H1_ERR_SYNTAX, "fragment in request-target");
    bool http = str_ieq(out->scheme, "http") || str_ieq(out->scheme, "https");
    if (end - p >= 2 && p[0] == '/' && p[1] == '/') {
        const char *a = p + 2, *ae = a;
        while (ae < end && *ae != '/' && *ae != '?')
            ae++;
        out->authority = (sc_h1_str){a, (size_t)(ae - a)};
        if (!authority_valid(out->authority, http, false))
            return fail(e, SC_H1_ERR_SYNTAX, "invalid authority in request-target");
        p = ae;
    } else if (http) {
        return fail(e, SC_H1_ERR_SYNTAX, "http request-target without authority");
    }
    out->path = (sc_h1_str){p, (size_t)(end - p)};
    return 1;
}

static int check_target(sc_h1_head *out, perr *e)
{
    sc_h1_str method = out->method, target = out->target;
    bool connect = method.len == 7 && memcmp(method.p, "CONNECT", 7) == 0;
    bool options = method.len == 7 && memcmp(method.p, "OPTIONS", 7) == 0;
    if (connect)
        return authority_valid(target, true, true) ? 1
                                                   : fail(e, SC_H1_ERR_SYNTAX, "CONNECT needs authority-form target");
    out->path = target;
    if (target.p[0] == '/')
        return 1;
    if (target.len == 1 && target.p[0] == '*')
        return options ? 1 : fail(e, SC_H1_ERR_SYNTAX, "asterisk target only for OPTIONS");
    if (absolute_form(target))
        return split_absolute(out, e);
    return fail(e, SC_H1_ERR_SYNTAX, "invalid request-target");
}

static int parse_request_line(const char **pp, const char *end, size_t max_line, sc_h1_head *out,
                              perr *e)
{
    static const char too_long[] = "request line too long";
    const char *line = *pp;
    const char *cend = content_end(line, end, max_line);
    const char *p = line;
    int rc;

    const char *m = p;
    p = span(p, cend, C_TCHAR);
    if (p == cend)
        return line_incomplete(line, cend, max_line, e, too_long);
    if (p == m || *p != ' ')
        return fail(e, SC_H1_ERR_SYNTAX, p == m ? "invalid request line" : "invalid method");
    out->method = (sc_h1_str){m, (size_t)(p - m)};
    p++;

    const char *t = p;
    p = span(p, cend, C_VCHAR);
    if (p == cend)
        return line_incomplete(line, cend, max_line, e, too_long);
    if (p == t || *p != ' ')
        return fail(e, SC_H1_ERR_SYNTAX, "invalid request-target");
    out->target = (sc_h1_str){t, (size_t)(p - t)};
    p++;

    if ((rc = parse_version(&p, cend, &out->minor_version, e)) < 0)
        return rc;
    if (rc == INCOMPLETE || p == cend)
        return line_incomplete(line, cend, max_line, e, too_long);
    if ((rc = expect_crlf(&p, end, e, "junk after HTTP version")) <= 0)
        return rc;
    if ((rc = check_target(out, e)) < 0)
        return rc;
    *pp = p;
    return 1;
}

static int parse_status_line(const char **pp, const char *end, size_t max_line, sc_h1_head *out,
                             perr *e)
{
    static const char too_long[] = "status line too long";
    const char *line = *pp;
    const char *cend = content_end(line, end, max_line);
    const char *p = line;
    int rc;

    if ((rc = parse_version(&p, cend, &out->minor_version, e)) < 0)
        return rc;
    if (rc == INCOMPLETE || p == cend)
        return line_incomplete(line, cend, max_line, e, too_long);
    if (*p != ' ')
        return fail(e, SC_H1_ERR_SYNTAX, "invalid status line");
    p++;
    int status = 0;
    for (int i = 0; i < 3; i++, p++) {
        if (p == cend)
            return line_incomplete(line, cend, max_line, e, too_long);
        if (!is_digit(*p))
            return fail(e, SC_H1_ERR_SYNTAX, "invalid status code");
        status = status * 10 + (*p - '0');
    }
    if (status < 100 || status > 599)
        return fail(e, SC_H1_ERR_SYNTAX, "status code out of range");
    out->status = status;
    out->reason = (sc_h1_str){p, 0};
    if (p == cend)
        return line_incomplete(line, cend, max_line, e, too_long);
    /* "HTTP/1.1 200\r\n" (no SP before an empty reason) is accepted: the
     * line still ends at the first CRLF, so nothing can be misframed. */
    if (*p == ' ') {
        p++;
        const char *r = p;
        while (p < cend && *p != '\r' && is_value(*p))
            p++;
        if (p == cend)
            return line_incomplete(line, cend, max_line, e, too_long);
        out->reason = (sc_h1_str){r, (size_t)(p - r)};
        if (*p != '\r')
            return fail(e, SC_H1_ERR_SYNTAX, *p == '\n' ? "bare LF line ending" : "invalid byte in reason phrase");
    }
    if ((rc = expect_crlf(&p, end, e, "invalid status line")) <= 0)
        return rc;
    *pp = p;
    return 1;
}

/* Header lines up to and including the empty line. */
static int parse_fields(const char **pp, const char *end, sc_h1_header *hdrs, size_t max,
                        size_t *n_out, perr *e)
{
    const char *p = *pp;
    size_t n = 0;
    for (;;) {
        if (p == end)
            return INCOMPLETE;
        if (*p == '\r') {
            int rc = expect_crlf(&p, end, e, "");
            if (rc <= 0)
                return rc;
            break;
        }
        if (*p == '\n')
            return fail(e, SC_H1_ERR_SYNTAX, "bare LF line ending");
        if (is_ows(*p))
            return fail(e, SC_H1_ERR_SYNTAX, "obs-fold or whitespace before header name");
        if (n == max)
            return fail(e, SC_H1_ERR_TOO_LARGE, "too many header fields");

        const char *name = p;
        p = span(p, end, C_TCHAR);
        if (p == end)
            return INCOMPLETE;
        if (p == name)
            return fail(e, SC_H1_ERR_SYNTAX, *p == ':' ? "empty header name" : "invalid header name");
        if (*p != ':')
            return fail(e, SC_H1_ERR_SYNTAX, is_ows(*p) ? "whitespace before colon" : "invalid header name");
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && is_ows(*p))
            p++;
        const char *v = p;
        p = span(p, end, C_VALUE);
        if (p < end && *p != '\r')
            return fail(e, SC_H1_ERR_SYNTAX, *p == '\n' ? "bare LF line ending" : "invalid byte in header value");
        const char *vend = p;
        while (vend > v && is_ows(vend[-1]))
            vend--;
        int rc = expect_crlf(&p, end, e, "");
        if (rc <= 0)
            return rc;
        hdrs[n].name = (sc_h1_str){name, name_len};
        hdrs[n].value = (sc_h1_str){v, (size_t)(vend - v)};
        n++;
    }
    *n_out = n;
    *pp = p;
    return 1;
}

/* Content-Length: 1*DIGIT, or a list of identical values ("5, 5"). */
static int parse_content_length(sc_h1_str v, uint64_t *out, perr *e)
{
    const char *p = v.p, *end = v.p + v.len;
    sc_h1_str el;
    bool have = false;
    uint64_t val = 0;
    while (list_next(&p, end, &el)) {
        if (el.len == 0)
            return fail(e, SC_H1_ERR_SYNTAX, "invalid Content-Length");
        uint64_t x = 0;
        for (size_t i = 0; i < el.len; i++) {
            if (!is_digit(el.p[i]))
                return fail(e, SC_H1_ERR_SYNTAX, "invalid Content-Length");
            unsigned d = (unsigned)(el.p[i] - '0');
            if (x > (MAX_BODY_LENGTH - d) / 10)
                return fail(e, SC_H1_ERR_SYNTAX, "Content-Length overflow");
            x = x * 10 + d;
        }
        if (have && x != val)
            return fail(e, SC_H1_ERR_SYNTAX, "conflicting Content-Length values");
        val = x;
        have = true;
    }
    *out = val;
    return 1;
}

typedef struct {
    bool seen;
    bool chunked;         /* chunked is among the codings */
    bool chunked_last;    /* ... and it is the last one so far */
    bool other;           /* some coding other than chunked */
} te_state;

/* Transfer-Encoding: 1#transfer-coding; several fields concatenate. */
static int scan_transfer_encoding(sc_h1_str v, te_state *te, perr *e)
{
    const char *p = v.p, *end = v.p + v.len;
    sc_h1_str el;
    te->seen = true;
    while (list_next(&p, end, &el)) {
        size_t n = 0;
        while (n < el.len && is_tchar(el.p[n]))
            n++;
        if (n == 0)
            return fail(e, SC_H1_ERR_SYNTAX, "invalid Transfer-Encoding");
        size_t q = n;
        while (q < el.len && is_ows(el.p[q]))
            q++;
        if (q < el.len && el.p[q] != ';')
            return fail(e, SC_H1_ERR_SYNTAX, "invalid Transfer-Encoding");
        bool params = q < el.len;
        if (ieq(el.p, n, "chunked")) {
            if (te->chunked)
                return fail(e, SC_H1_ERR_SYNTAX, "chunked applied twice");
            if (params)
                return fail(e, SC_H1_ERR_SYNTAX, "parameters on chunked");
            te->chunked = true;
            te->chunked_last = true;
        } else {
            te->other = true;
            te->chunked_last = false;
        }
    }
    return 1;
}

static int derive(sc_h1_head *h, bool is_request, bool head_response, perr *e)
{
    bool have_cl = false, conn_close = false, conn_keep = false, conn_upgrade = false;
    bool have_upgrade = false;
    int hosts = 0;
    uint64_t cl = 0;
    te_state te = {0};
    int rc;

    for (size_t i = 0; i < h->n_headers; i++) {
        sc_h1_str n = h->headers[i].name, v = h->headers[i].value;
        switch (sc_ascii_lower(n.p[0])) {
        case 'c':
            if (str_ieq(n, "content-length")) {
                uint64_t x;
                if ((rc = parse_content_length(v, &x, e)) < 0)
                    return rc;
                if (have_cl && x != cl)
                    return fail(e, SC_H1_ERR_SYNTAX, "duplicate Content-Length");
                have_cl = true;
                cl = x;
            } else if (str_ieq(n, "connection")) {
                h->n_connection++;
                conn_close |= list_has(v, "close");
                conn_keep |= list_has(v, "keep-alive");
                conn_upgrade |= list_has(v, "upgrade");
            }
            break;
        case 't':
            if (str_ieq(n, "transfer-encoding")) {
                if ((rc = scan_transfer_encoding(v, &te, e)) < 0)
                    return rc;
            } else if (is_request && str_ieq(n, "te")) {
                h->te_trailers |= list_has(v, "trailers");
            }
            break;
        case 'h':
            if (is_request && str_ieq(n, "host")) {
                if (++hosts > 1)
                    return fail(e, SC_H1_ERR_SYNTAX, "duplicate Host");
                if (!authority_valid(v, false, false))
                    return fail(e, SC_H1_ERR_SYNTAX, "invalid Host");
                h->host = v;
            }
            break;
        case 'e':
            if (is_request && str_ieq(n, "expect") && str_ieq(v, "100-continue"))
                h->expect_continue = true;
            break;
        case 'u':
            if (str_ieq(n, "upgrade"))
                have_upgrade = true;
            break;
        default:
            break;
        }
    }

    if (is_request && hosts == 0 && h->minor_version == 1)
        return fail(e, SC_H1_ERR_SYNTAX, "missing Host");
    if (te.seen && have_cl)
        return fail(e, SC_H1_ERR_SYNTAX, "Transfer-Encoding with Content-Length");
    /* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means faulty framing. */
    if (te.seen && h->minor_version == 0)
        return fail(e, SC_H1_ERR_SYNTAX, "Transfer-Encoding in HTTP/1.0");
    if (is_request && te.seen && (te.other || !te.chunked_last))
        return fail(e, SC_H1_ERR_UNSUPPORTED, "unsupported transfer coding");

    h->content_length = cl;
    if (!is_request && (head_response || h->status < 200 || h->status == 204 || h->status == 304))
        h->body = SC_H1_BODY_NONE;
    else if (te.seen)
        h->body = te.chunked_last ? SC_H1_BODY_CHUNKED : SC_H1_BODY_UNTIL_CLOSE;
    else if (have_cl)
        h->body = SC_H1_BODY_LENGTH;
    else
        h->body = is_request ? SC_H1_BODY_NONE : SC_H1_BODY_UNTIL_CLOSE;

    if (h->minor_version == 1) {
        h->keep_alive = !conn_close;
        h->upgrade = conn_upgrade && have_upgrade;
    } else {
        h->keep_alive = conn_keep && !conn_close;
        h->expect_continue = false; /* RFC 9110 10.1.1: ignored in HTTP/1.0 */
    }
    if (h->body == SC_H1_BODY_UNTIL_CLOSE)
        h->keep_alive = false;
    return 1;
}

static int parse_head(const char *buf, size_t len, bool is_request, bool head_response,
                      size_t max_line, sc_h1_head *out, perr *e)
{
    const char *p = buf, *end = buf + len;
    int rc;

    if (is_request) {
        /* RFC 9112 2.2: empty lines before the request line are ignored. */
        for (int n = 0; p < end && *p == '\r'; n++) {
            if (n == MAX_LEADING_EMPTY_LINES)
                return fail(e, SC_H1_ERR_SYNTAX, "too many empty lines before request");
            if (p + 1 == end)
                return INCOMPLETE;
            if (p[1] != '\n')
                return fail(e, SC_H1_ERR_SYNTAX, "bare CR in line");
            p += 2;
        }
        rc = parse_request_line(&p, end, max_line, out, e);
    } else {
        rc = parse_status_line(&p, end, max_line, out, e);
    }
    if (rc <= 0)
        return rc;
    if ((rc = parse_fields(&p, end, out->headers, SC_H1_MAX_HEADERS, &out->n_headers, e)) <= 0)
        return rc;
    if ((rc = derive(out, is_request, head_response, e)) < 0)
        return rc;
    return (int)(p - buf);
}

static void resolve_limits(const sc_h1_limits *limits, size_t *max_line, size_t *max_head)
{
    *max_line = limits && limits->max_request_line ? limits->max_request_line : DEFAULT_MAX_REQUEST_LINE;
    *max_head = limits && limits->max_head ? limits->max_head : DEFAULT_MAX_HEAD;
    if (*max_head > INT32_MAX)
        *max_head = INT32_MAX; /* the return value is an int */
    if (*max_line > *max_head)
        *max_line = *max_head; /* a longer line would fail the head limit first */
}

int sc_h1_parse_head(const char *buf, size_t len, bool is_request, bool request_method_head,
                     const sc_h1_limits *limits, sc_h1_head *out, const char **why)
{
    size_t max_line, max_head;
    resolve_limits(limits, &max_line, &max_head);

    out->method = out->target = out->reason = out->host = (sc_h1_str){NULL, 0};
    out->scheme = out->authority = out->path = (sc_h1_str){NULL, 0};
    out->n_connection = 0;
    out->status = 0;
    out->minor_version = 0;
    out->n_headers = 0;
    out->body = SC_H1_BODY_NONE;
    out->content_length = 0;
    out->keep_alive = out->expect_continue = out->upgrade = out->te_trailers = false;

    if (why)
        *why = NULL;
    if (len == 0)
        return INCOMPLETE;
    perr e = {NULL};
    /* A head still incomplete within max_head bytes is too large: parsing
     * only that prefix bounds the work and reports it as soon as known. */
    size_t n = len > max_head ? max_head : len;
    int rc = parse_head(buf, n, is_request, request_method_head, max_line, out, &e);
    if (rc == INCOMPLETE && len >= max_head)
        rc = fail(&e, SC_H1_ERR_TOO_LARGE, "header section too large");
    if (why)
        *why = rc < 0 ? e.why : NULL;
    return rc;
}

bool sc_h1_head_worth_parsing(const char *buf, size_t prev_len, size_t len, const sc_h1_limits *limits)
{
    size_t max_line, max_head;
    resolve_limits(limits, &max_line, &max_head);
    if (prev_len >= len)
        return false;
    if (len >= max_head)
        return true;
    /* The first line may just have become too long (it starts after at most
     * MAX_LEADING_EMPTY_LINES CRLFs). */
    if (len > max_line && prev_len <= max_line + 2 * MAX_LEADING_EMPTY_LINES + 1)
        return true;
    /* A new line ended, or a byte that no head may contain arrived (a TLS
     * ClientHello on a plaintext port should fail now, not at the limit). */
    for (size_t i = prev_len; i < len; i++) {
        unsigned char c = (unsigned char)buf[i];
        if (c == '\n' || (c < 0x20 && c != '\r' && c != '\t') || c == 0x7f)
            return true;
    }
    return false;
}

const sc_h1_header *sc_h1_find(const sc_h1_head *h, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < h->n_headers; i++)
        if (h->headers[i].name.len == len && sc_ascii_ieq_n(h->headers[i].name.p, name, len))
            return &h->headers[i];
    return NULL;
}

SC_LIT_SET(hop_by_hop, SC_HDR_HOP_BY_HOP);

bool sc_h1_is_hop_by_hop(const char *name, size_t len, sc_h1_str connection)
{
    /* any letter case: the length mask first, so most names cost one test */
    if (sc_lit_set_len_in(&hop_by_hop, len))
        for (size_t i = 0; i < hop_by_hop.n; i++)
            if (hop_by_hop.tab[i].len == len && sc_ascii_ieq_n(name, hop_by_hop.tab[i].p, len))
                return true;
    if (!connection.p)
        return false;
    const char *p = connection.p, *end = connection.p + connection.len;
    sc_h1_str el;
    while (list_next(&p, end, &el))
        if (el.len == len && len > 0 && sc_ascii_ieq_n(el.p, name, len))
            return true;
    return false;
}

bool sc_h1_is_hop_by_hop_head(const sc_h1_head *h, const char *name, size_t len)
{
    static const sc_h1_str none = {NULL, 0};
    if (sc_h1_is_hop_by_hop(name, len, none))
        return true;
    if (!h->n_connection || len == 0)
        return false;
    for (size_t i = 0; i < h->n_headers; i++)
        if (str_ieq(h->headers[i].name, "connection") && sc_h1_is_hop_by_hop(name, len, h->headers[i].value))
            return true;
    return false;
}

bool sc_h1_trailer_forbidden(const char *name, size_t len)
{
    static const sc_lit deny[] = {
        SC_LIT("content-length"), SC_LIT("content-encoding"), SC_LIT("content-range"),
        SC_LIT("content-type"),   SC_LIT("host"),             SC_LIT("expect"),
        SC_LIT("max-forwards"),   SC_LIT("range"),            SC_LIT("authorization"),
        SC_LIT("proxy-authorization"), SC_LIT("cookie"),      SC_LIT("set-cookie"),
    };
    static const sc_h1_str none = {NULL, 0};
    if (sc_h1_is_hop_by_hop(name, len, none))
        return true;
    for (size_t i = 0; i < SC_ARRAY_LEN(deny); i++)
        if (deny[i].len == len && sc_ascii_ieq_n(name, deny[i].p, len))
            return true;
    return false;
}

/* ----------------------------------------------------------------- body -- */

enum {
    ST_LENGTH = 1,
    ST_UNTIL_CLOSE,
    ST_SIZE,        /* hex digits of a chunk size; aux = digits so far */
    ST_SIZE_BWS,    /* BWS after the size, before ';'; aux = bytes after the digits */
    ST_EXT,         /* chunk extension, skipped; aux = bytes after the digits */
    ST_SIZE_LF,     /* CR of the chunk-size line seen */
    ST_DATA,
    ST_DATA_CR,
    ST_DATA_LF,
    ST_TRAILER,     /* a trailer line; aux = its bytes so far (stored in trailer_buf) */
    ST_TRAILER_LF,
    ST_DONE,
    ST_ERROR,       /* aux = -error code */
};

void sc_h1_body_init(sc_h1_body *b, sc_h1_body_kind kind, uint64_t content_length,
                     char *trailer_buf, size_t trailer_cap)
{
    memset(b, 0, sizeof(*b));
    b->kind = kind;
    b->max_trailer_bytes = DEFAULT_MAX_TRAILER_BYTES;
    b->trailer_buf = trailer_buf;
    b->trailer_cap = trailer_buf ? trailer_cap : 0;
    switch (kind) {
    case SC_H1_BODY_LENGTH:
        b->remaining = content_length;
        b->state = ST_LENGTH;
        break;
    case SC_H1_BODY_CHUNKED:
        b->state = ST_SIZE;
        break;
    case SC_H1_BODY_UNTIL_CLOSE:
        b->state = ST_UNTIL_CLOSE;
        break;
    default:
        b->state = ST_DONE;
        break;
    }
}

static int body_fail(sc_h1_body *b, int rc, const char *why)
{
    b->state = ST_ERROR;
    b->aux = (size_t)-rc;
    b->why = why;
    return rc;
}

/* The trailer line just completed (trailer_buf[trailer_len - aux ..)) must
 * be `token ":" value`; value bytes were checked as they arrived. */
static bool trailer_line_ok(const char *l, size_t n)
{
    size_t i = 0;
    while (i < n && is_tchar(l[i]))
        i++;
    return i > 0 && i < n && l[i] == ':';
}

static int trailer_put(sc_h1_body *b, char c)
{
    if (b->trailer_len >= b->trailer_cap)
        return body_fail(b, SC_H1_ERR_TOO_LARGE, "trailers exceed the trailer buffer");
    b->trailer_buf[b->trailer_len++] = c;
    return 0;
}

int sc_h1_body_decode(sc_h1_body *b, const char *in, size_t len, size_t *consumed,
                      const char **data, size_t *data_len)
{
    size_t i = 0;
    *data = NULL;
    *data_len = 0;
    *consumed = 0;

    switch (b->state) {
    case ST_DONE:
        return SC_H1_BODY_DONE;
    case ST_ERROR:
        return -(int)b->aux;
    case ST_LENGTH:
        if (b->remaining == 0) {
            b->state = ST_DONE;
            return SC_H1_BODY_DONE;
        }
        if (len == 0)
            return SC_H1_BODY_NEED_MORE;
        *data = in;
        *data_len = (size_t)SC_MIN((uint64_t)len, b->remaining);
        b->remaining -= *data_len;
        *consumed = *data_len;
        if (b->remaining == 0)
            b->state = ST_DONE;
        return SC_H1_BODY_DATA;
    case ST_UNTIL_CLOSE:
        if (len == 0)
            return SC_H1_BODY_NEED_MORE;
        *data = in;
        *data_len = len;
        *consumed = len;
        return SC_H1_BODY_DATA;
    default:
        break;
    }

    int rc;
    while (i < len) {
        char c = in[i];
        switch (b->state) {
        case ST_SIZE:
            if (is_hex(c)) {
                if (b->aux == 16)
                    return body_fail(b, SC_H1_ERR_SYNTAX, "chunk size too long");
                unsigned d = (unsigned)sc_hexval(c); /* is_hex: 0..15 */
                if (b->remaining > (MAX_BODY_LENGTH - d) / 16)
                    return body_fail(b, SC_H1_ERR_SYNTAX, "chunk size overflow");
                b->remaining = b->remaining * 16 + d;
                b->aux++;
                break;
            }
            if (b->aux == 0)
                return body_fail(b, SC_H1_ERR_SYNTAX, "invalid chunk size");
            if (c == '\r') {
                b->state = ST_SIZE_LF;
            } else if (c == ';') {
                b->state = ST_EXT;
                b->aux = 1;
            } else if (is_ows(c)) {
                b->state = ST_SIZE_BWS;
                b->aux = 1;
            } else {
                return body_fail(b, SC_H1_ERR_SYNTAX, c == '\n' ? "bare LF after chunk size" : "invalid chunk size");
            }
            break;
        case ST_SIZE_BWS:
        case ST_EXT:
            if (c == '\r') {
                if (b->state == ST_SIZE_BWS)
                    return body_fail(b, SC_H1_ERR_SYNTAX, "whitespace after chunk size");
                b->state = ST_SIZE_LF;
                break;
            }
            if (++b->aux > MAX_CHUNK_EXT)
                return body_fail(b, SC_H1_ERR_TOO_LARGE, "chunk extension too long");
            if (b->state == ST_SIZE_BWS) {
                if (c == ';')
                    b->state = ST_EXT;
                else if (!is_ows(c))
                    return body_fail(b, SC_H1_ERR_SYNTAX, "invalid chunk size");
            } else if (!is_value(c)) {
                return body_fail(b, SC_H1_ERR_SYNTAX, c == '\n' ? "bare LF in chunk extension" : "invalid byte in chunk extension");
            }
            break;
        case ST_SIZE_LF:
            if (c != '\n')
                return body_fail(b, SC_H1_ERR_SYNTAX, "bare CR after chunk size");
            b->aux = 0;
            b->state = b->remaining ? ST_DATA : ST_TRAILER;
            break;
        case ST_DATA: {
            size_t take = (size_t)SC_MIN((uint64_t)(len - i), b->remaining);
            *data = in + i;
            *data_len = take;
            b->remaining -= take;
            if (b->remaining == 0)
                b->state = ST_DATA_CR;
            *consumed = i + take;
            return SC_H1_BODY_DATA;
        }
        case ST_DATA_CR:
            if (c != '\r')
                return body_fail(b, SC_H1_ERR_SYNTAX, "missing CRLF after chunk data");
            b->state = ST_DATA_LF;
            break;
        case ST_DATA_LF:
            if (c != '\n')
                return body_fail(b, SC_H1_ERR_SYNTAX, "missing CRLF after chunk data");
            b->state = ST_SIZE;
            b->aux = 0;
            b->remaining = 0;
            break;
        case ST_TRAILER:
            /* Counted: the bytes of trailer fields, not the final CRLF. */
            if (!(b->aux == 0 && c == '\r') && ++b->trailer_bytes > b->max_trailer_bytes)
                return body_fail(b, SC_H1_ERR_TOO_LARGE, "trailer section too large");
            if (c == '\r') {
                b->state = ST_TRAILER_LF;
                break;
            }
            if (c == '\n')
                return body_fail(b, SC_H1_ERR_SYNTAX, "bare LF in trailer section");
            if (b->aux == 0 && is_ows(c))
                return body_fail(b, SC_H1_ERR_SYNTAX, "obs-fold in trailer section");
            if (!is_value(c))
                return body_fail(b, SC_H1_ERR_SYNTAX, "invalid byte in trailer field");
            if ((rc = trailer_put(b, c)) < 0)
                return rc;
            b->aux++;
            break;
        case ST_TRAILER_LF:
            if (b->aux > 0 && ++b->trailer_bytes > b->max_trailer_bytes)
                return body_fail(b, SC_H1_ERR_TOO_LARGE, "trailer section too large");
            if (c != '\n')
                return body_fail(b, SC_H1_ERR_SYNTAX, "bare CR in trailer section");
            if (b->aux == 0) {
                b->state = ST_DONE;
                *consumed = i + 1;
                return SC_H1_BODY_DONE;
            }
            if (!trailer_line_ok(b->trailer_buf + b->trailer_len - b->aux, b->aux))
                return body_fail(b, SC_H1_ERR_SYNTAX, "invalid trailer field");
            if ((rc = trailer_put(b, '\r')) < 0 || (rc = trailer_put(b, '\n')) < 0)
                return rc;
            b->aux = 0;
            b->state = ST_TRAILER;
            break;
        default:
            return body_fail(b, SC_H1_ERR_SYNTAX, "corrupt body decoder state");
        }
        i++;
    }
    *consumed = i;
    return SC_H1_BODY_NEED_MORE;
}

int sc_h1_body_trailers(const sc_h1_body *b, sc_h1_header *out, size_t max)
{
    if (!b->trailer_buf)
        return 0;
    const char *p = b->trailer_buf, *end = b->trailer_buf + b->trailer_len;
    size_t n = 0;
    while (p < end) {
        const char *name = p;
        while (p < end && is_tchar(*p))
            p++;
        if (p == name || p == end || *p != ':')
            return SC_H1_ERR_SYNTAX;
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && is_ows(*p))
            p++;
        const char *v = p, *vend = p;
        while (p < end && *p != '\r') {
            if (!is_value(*p))
                return SC_H1_ERR_SYNTAX;
            if (!is_ows(*p))
                vend = p + 1;
            p++;
        }
        if (end - p < 2 || p[1] != '\n')
            return SC_H1_ERR_SYNTAX;
        p += 2;
        if (n == max)
            return SC_H1_ERR_TOO_LARGE;
        out[n].name = (sc_h1_str){name, name_len};
        out[n].value = (sc_h1_str){v, (size_t)(vend - v)};
        n++;
    }
    return (int)n;
}

/* --------------------------------------------------------------- reason -- */

size_t sc_h1_content_length_line(char *out, uint64_t n)
{
    memcpy(out, "content-length: ", 16);
    size_t len = 16 + sc_fmt_u64(out + 16, n);
    out[len++] = '\r';
    out[len++] = '\n';
    return len;
}

const char *sc_h1_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    case 511: return "Network Authentication Required";
    default: return "Unknown";
    }
}

/*
 * down_h1.c: a caller's HTTP/1.1 connection. Parses requests with the strict
 * codec (http/h1.h), turns each into a protocol-neutral stream, and writes
 * the response back with the framing this client understands. One request at
 * a time: a pipelined request waits in c->in until the previous response is
 * out. A connection that begins with the HTTP/2 preface is handed to
 * down_h2.c.
 */
#include "core/log.h"
#include "http/grpc.h"
#include "http/hdr.h"
#include "jwt/jwt_config.h"
#include "proxy/codec.h"
#include "proxy/conns.h"
#include "sidecar.h"
#include "tls/tls.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

static const sc_conn_ops down_h1_ops;

static const char h2_preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define H2_PREFACE_LEN 24
#define TRAILER_CAP 8192
/* Drain: how long a connection that has not carried a request yet may take
 * to send its first one (at most timeouts.header_read). */
#define DRAIN_GRACE_MS 1000

static uint32_t in_cap(const sc_conn *c)
{
    const sc_config *cfg = c->w->sc->cfg;
    uint32_t cap = cfg->limits.stream_buffer;
    return cfg->limits.max_header_bytes + 1 > cap ? cfg->limits.max_header_bytes + 1 : cap;
}

/* The connection's one timeout (idle, header read, a refusal's or a
 * drain's grace) is a lazy deadline: see sc_conn_deadline. */
static void arm_timer(sc_conn *c, uint64_t ms)
{
    sc_conn_deadline(c, ms);
}

/*
 * The pending refusal (reject()) goes out after whatever c->out already
 * holds: earlier responses, complete, or a 1xx of the refused request. One
 * write, so it is either whole or not there; when c->out has no room yet it
 * stays pending and produce() tries again as the socket drains. Then the
 * connection closes once everything is flushed. Returns 0 or -ENOMEM.
 */
static int write_refusal(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    char msg[1024];
    int bl = (int)strlen(d->refusal_why) + 1;
    int n = snprintf(msg, sizeof(msg),
                     "HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     "x-sidecar-reason: %s\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s\n",
                     d->refusal_status, sc_h1_reason(d->refusal_status), d->refusal_reason, bl, d->refusal_why);
    if (n < 0 || (size_t)n >= sizeof(msg))
        n = snprintf(msg, sizeof(msg), "HTTP/1.1 %d %s\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
                     d->refusal_status, sc_h1_reason(d->refusal_status));
    int rv = sc_conn_write(c, msg, (size_t)n);
    if (rv == -ENOBUFS)
        return 0; /* earlier responses fill the buffer: after they drain */
    if (rv < 0)
        return rv;
    d->refusing = false;
    sc_conn_close_after_flush(c);
    return 0;
}

/*
 * Answers a request the sidecar refuses to forward, then closes. Bytes
 * already queued are never discarded: a pipelined caller gets the complete
 * responses to its earlier requests first, then this one. When part of the
 * current request's own response is out already, a status line after it
 * would read as body: the connection is closed after the flush instead,
 * the only way HTTP/1.1 can say the response is incomplete.
 * status >= 500 is the sidecar's own trouble and is not counted as a bad request.
 */
static void reject(sc_conn *c, int status, sc_bad_req_kind kind, const char *reason, const char *why)
{
    sc_down_conn *d = SC_DOWN(c);
    if (d->refusing || (c->flags & (SC_CONN_F_CLOSING | SC_CONN_F_CLOSED)))
        return;
    if (status < 500)
        SC_STAT_INC(c->w->stats->bad_requests[kind]);
    SC_DEBUG("%s listener: refused request from %s: %d %s", c->route->name, c->peer_text, status, why);
    d->continue_due = false;
    sc_stream *s = d->cur;
    if (s) {
        bool head_out = (s->flags & SC_ST_F_DOWN_HEAD_SENT) != 0;
        d->cur = NULL;
        sc_stream_downstream_done(s, true);
        if (head_out) {
            sc_conn_close_after_flush(c);
            return;
        }
    }
    d->refusing = true;
    d->refusal_status = (uint16_t)status;
    d->refusal_reason = reason;
    d->refusal_why = why;
    sc_conn_pause_read(c);
    /* A caller that never reads must not hold the connection while the answer waits. */
    arm_timer(c, c->route->timeouts->idle_ms);
    if (write_refusal(c) < 0)
        sc_conn_close(c, -ENOMEM);
    else
        sc_conn_mark_dirty(c);
}

#define BAD_REQUEST "bad-request"

static void timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_conn *c = SC_CONTAINER_OF(t, sc_conn, timer);
    sc_down_conn *d = SC_DOWN(c);
    if (!sc_conn_deadline_due(c))
        return; /* moved later, or cleared, since the timer was started */
    if (d->refusing || (c->flags & SC_CONN_F_CLOSING)) {
        sc_conn_close(c, 0); /* a refusal not written, or not read, in time */
        return;
    }
    if (d->cur)
        return; /* a request is in flight: its own deadline governs */
    if (d->awaiting_head && sc_buf_len(&c->in)) {
        reject(c, 408, SC_BAD_REQ_HEADER_TIMEOUT, BAD_REQUEST, "request head not received in time (timeouts.header_read)");
        return;
    }
    sc_conn_close(c, 0);
}

static bool name_is(const sc_h1_str *n, const char *lit, size_t len)
{
    return n->len == len && strncasecmp(n->p, lit, len) == 0;
}

typedef struct refusal {
    int status;
    sc_bad_req_kind kind;
    const char *reason, *why;
} refusal;

static bool refuse(refusal *r, int status, sc_bad_req_kind kind, const char *reason, const char *why)
{
    *r = (refusal){status, kind, reason, why};
    return false;
}

/*
 * What the parser accepts but this proxy does not forward; true when the
 * request may go on.
 *  - CONNECT asks for a tunnel; the sidecar forwards HTTP requests to the
 *    upstream its listener stands for and opens no tunnels: 501.
 *  - absolute-form: http:// is what a client sends to a forward proxy and
 *    is taken as origin-form plus its authority (RFC 9112 3.2.2). https://
 *    asks the proxy to reach the origin over TLS; the sidecar reaches its
 *    upstream the way the policy says (tls.mode) and a request-target cannot
 *    switch that, so pretending to honour it would be a silent downgrade:
 *    400. Other schemes are not HTTP: 400.
 *  - limits.header_underscores: reject refuses any field name with '_'.
 */
static bool screen_request(const sc_conn *c, const sc_h1_head *h, refusal *r)
{
    if (h->method.len == 7 && memcmp(h->method.p, "CONNECT", 7) == 0)
        return refuse(r, 501, SC_BAD_REQ_UNSUPPORTED, "connect-not-supported",
                      "CONNECT is not proxied: the sidecar forwards HTTP requests and opens no tunnels");
    if (h->scheme.len && name_is(&h->scheme, "https", 5))
        return refuse(r, 400, SC_BAD_REQ_SYNTAX, BAD_REQUEST,
                      "https:// request-target refused: the sidecar reaches the upstream as its policy says "
                      "(tls.mode), a request-target cannot ask for TLS; send origin-form or http://");
    if (h->scheme.len && !name_is(&h->scheme, "http", 4))
        return refuse(r, 400, SC_BAD_REQ_SYNTAX, BAD_REQUEST,
                      "request-target scheme not supported: only origin-form or http:// absolute-form");
    if (c->w->sc->cfg->limits.header_underscores == SC_HDR_US_REJECT)
        for (size_t i = 0; i < h->n_headers; i++)
            if (sc_hdr_has_underscore(h->headers[i].name.p, h->headers[i].name.len))
                return refuse(r, 400, SC_BAD_REQ_SYNTAX, BAD_REQUEST,
                              "header field name with '_' refused (limits.header_underscores: reject)");
    return true;
}

/*
 * The path to forward (origin-form, RFC 9112 3.2.1): an absolute-form
 * target with an empty path is sent as "/", or as "*" for OPTIONS without a
 * query (3.2.4); a query without a path gets "/" in front.
 */
static int set_path(sc_stream *s, const sc_h1_head *h)
{
    sc_msg *m = &s->req;
    const char *p = h->path.p;
    size_t n = h->path.len;
    if (h->scheme.len && n == 0 && name_is(&h->method, "OPTIONS", 7)) {
        p = "*";
        n = 1;
    } else if (h->scheme.len && (n == 0 || p[0] == '?')) {
        char *x = sc_arena_alloc(&s->arena, n + 2);
        if (!x)
            return -ENOMEM;
        x[0] = '/';
        memcpy(x + 1, p, n);
        x[n + 1] = '\0';
        m->path = x;
        m->path_len = n + 1;
        return 0;
    }
    m->path = sc_arena_dup(&s->arena, p, n);
    m->path_len = n;
    return m->path ? 0 : -ENOMEM;
}

/* A complete request head that passed screen_request(): build the stream and start it. */
static int begin_request(sc_conn *c, const sc_h1_head *h)
{
    sc_down_conn *d = SC_DOWN(c);
    sc_stream *s = sc_stream_new(c->w, c->route, c, 0);
    if (!s)
        return -ENOMEM;
    d->cur = s;
    sc_msg *m = &s->req;
    const sc_config *cfg = c->w->sc->cfg;
    const char *idh = cfg->tls.identity_header;
    size_t idh_len = strlen(idh);
    bool drop_us = cfg->limits.header_underscores == SC_HDR_US_DROP;
    m->method = sc_arena_dup(&s->arena, h->method.p, h->method.len);
    m->method_len = h->method.len;
    m->scheme = "http";
    /* absolute-form: its authority replaces Host (RFC 9112 3.2.2) */
    sc_h1_str auth = h->scheme.len ? h->authority : h->host;
    m->authority = sc_arena_dup(&s->arena, auth.p ? auth.p : "", auth.len);
    m->authority_len = auth.len;
    if (!m->method || !m->authority || set_path(s, h) < 0)
        return -ENOMEM;
    for (size_t i = 0; i < h->n_headers; i++) {
        const sc_h1_header *hd = &h->headers[i];
        if (sc_h1_is_hop_by_hop_head(h, hd->name.p, hd->name.len) || name_is(&hd->name, "host", 4) ||
            name_is(&hd->name, "content-length", 14) || name_is(&hd->name, "expect", 6))
            continue;
        if (sc_hdr_aliases(hd->name.p, hd->name.len, idh) ||
            (c->route->inbound && sc_jwt_header_reserved(cfg->inbound.jwt, hd->name.p, hd->name.len))) {
            /* only ever set by the sidecar (identity, JWT claims), and apps read every spelling of it */
            SC_DEBUG("%s listener: removed %.*s sent by %s", c->route->name, (int)hd->name.len, hd->name.p,
                     c->peer_text);
            continue;
        }
        if (drop_us && sc_hdr_has_underscore(hd->name.p, hd->name.len))
            continue; /* limits.header_underscores: drop */
        if (name_is(&hd->name, "content-type", 12) && sc_grpc_is_content_type(hd->value.p, hd->value.len))
            m->is_grpc = true;
        if (sc_msg_add(s, m, hd->name.p, hd->name.len, hd->value.p, hd->value.len) < 0)
            return -ENOMEM;
    }
    const char *id = d->caller.identity;
    if (id && c->route->inbound && sc_msg_add(s, m, idh, idh_len, id, strlen(id)) < 0)
        return -ENOMEM;
    if (h->te_trailers) {
        s->down_te_trailers = true;
        if (sc_msg_add(s, m, "te", 2, "trailers", 8) < 0)
            return -ENOMEM;
    }
    if (h->method.len == 4 && memcmp(h->method.p, "HEAD", 4) == 0)
        s->flags |= SC_ST_F_HEAD_REQ;
    s->down_keepalive = h->keep_alive && !c->w->draining;
    d->close_after = !s->down_keepalive;
    s->req.content_length = h->body == SC_H1_BODY_LENGTH ? (int64_t)h->content_length : -1;
    if (h->body == SC_H1_BODY_NONE || (h->body == SC_H1_BODY_LENGTH && h->content_length == 0)) {
        s->reqp.eof = true;
        s->req.content_length = h->body == SC_H1_BODY_LENGTH ? 0 : -1;
        sc_h1_body_init(&s->h1_body, SC_H1_BODY_NONE, 0, NULL, 0);
    } else {
        if (h->body == SC_H1_BODY_CHUNKED) {
            s->h1_trailer_buf = malloc(TRAILER_CAP);
            if (!s->h1_trailer_buf)
                return -ENOMEM;
        }
        sc_h1_body_init(&s->h1_body, h->body, h->content_length, s->h1_trailer_buf,
                        s->h1_trailer_buf ? TRAILER_CAP : 0);
        /* Written by produce(), after any earlier response still in c->out. */
        d->continue_due = h->expect_continue && h->minor_version >= 1;
        if (d->continue_due)
            sc_conn_mark_dirty(c);
    }
    m->head_done = true;
    d->awaiting_head = false;
    d->head_timed = false;
    d->served = true;
    sc_conn_deadline_clear(c);
    sc_stream_start(s);
    return 0;
}

/* Moves request body bytes from c->in into the stream's pipe. */
static int pump_body(sc_conn *c, sc_stream *s)
{
    int rv = sc_h1_pump_body(s, &c->in, &s->h1_body, &s->reqp);
    if (rv > 0)
        sc_stream_req_progress(s);
    return rv < 0 ? rv : 0;
}

static void process(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    for (;;) {
        if ((c->flags & (SC_CONN_F_CLOSED | SC_CONN_F_CLOSING)) || d->refusing)
            return;
        sc_stream *s = d->cur;
        if (s) {
            if (!s->reqp.eof && !(s->flags & SC_ST_F_DOWN_DONE)) {
                int rv = pump_body(c, s);
                if (rv < 0) { /* -ENOMEM: no buffer for the body: the request was fine, the sidecar is not */
                    if (rv == -ENOMEM)
                        reject(c, 503, SC_BAD_REQ_BODY, "sidecar-out-of-memory", "out of memory");
                    else
                        reject(c, 400, SC_BAD_REQ_BODY, BAD_REQUEST,
                               s->h1_body.why ? s->h1_body.why : "malformed request body");
                    return;
                }
                if (!s->reqp.eof && sc_buf_len(&c->in) && sc_buf_space(&s->reqp.buf) == 0)
                    sc_conn_pause_read(c); /* backpressure: the upstream is slower */
            }
            if (sc_buf_len(&c->in) >= in_cap(c) && s->reqp.eof)
                sc_conn_pause_read(c); /* pipelined bytes wait for the response */
            return;
        }
        size_t len = sc_buf_len(&c->in);
        if (len == 0)
            return;
        if (c->ops == &down_h1_ops && !d->h2 && c->in.start == 0 && d->n_streams == 0 &&
            memcmp(sc_buf_head(&c->in), h2_preface, SC_MIN(len, (size_t)H2_PREFACE_LEN)) == 0) {
            if (len < H2_PREFACE_LEN)
                return;
            if (sc_down_h2_upgrade(c) < 0)
                sc_conn_close(c, -EPROTO);
            return;
        }
        /* A head that arrives whole (nearly every one) is parsed before
         * the header-read deadline would matter: it is set only when the
         * head is still incomplete after the first parse (below). Until
         * then the idle deadline stays. */
        d->awaiting_head = true;
        sc_h1_head h;
        const char *why = NULL;
        sc_h1_limits lim = {c->w->sc->cfg->limits.max_request_line, c->w->sc->cfg->limits.max_header_bytes};
        /* Re-parse only when new bytes can change the verdict: a slow sender
         * would otherwise cost O(head^2). */
        if (d->head_scanned && len < in_cap(c) && !sc_h1_head_worth_parsing(sc_buf_head(&c->in), d->head_scanned, len, &lim)) {
            d->head_scanned = (uint32_t)len;
            return;
        }
        d->head_scanned = (uint32_t)len;
        int n = sc_h1_parse_head(sc_buf_head(&c->in), len, true, false, &lim, &h, &why);
        if (n == 0) {
            if (len >= in_cap(c))
                reject(c, 431, SC_BAD_REQ_TOO_LARGE, BAD_REQUEST,
                       "request header block too large (limits.max_header_bytes)");
            else if (!d->head_timed) {
                d->head_timed = true;
                arm_timer(c, c->route->timeouts->header_read_ms);
            }
            return;
        }
        if (n < 0) {
            switch (n) {
            case SC_H1_ERR_TOO_LARGE:
                reject(c, 431, SC_BAD_REQ_TOO_LARGE, BAD_REQUEST, why ? why : "request header block too large");
                break;
            case SC_H1_ERR_LINE_TOO_LONG:
                reject(c, 414, SC_BAD_REQ_LINE_TOO_LONG, BAD_REQUEST, why ? why : "request line too long");
                break;
            case SC_H1_ERR_UNSUPPORTED:
                reject(c, why && strstr(why, "version") ? 505 : 501, SC_BAD_REQ_UNSUPPORTED, BAD_REQUEST,
                       why ? why : "unsupported request");
                break;
            default:
                reject(c, 400, SC_BAD_REQ_SYNTAX, BAD_REQUEST, why ? why : "malformed request");
            }
            return;
        }
        d->head_scanned = 0;
        refusal no;
        if (!screen_request(c, &h, &no)) {
            reject(c, no.status, no.kind, no.reason, no.why);
            return;
        }
        /* The head stays in c->in while its fields are copied into the stream. */
        int rv = begin_request(c, &h);
        sc_buf_consume(&c->in, (size_t)n);
        if (rv < 0) {
            reject(c, 503, SC_BAD_REQ_SYNTAX, "sidecar-out-of-memory", "out of memory");
            return;
        }
    }
}

static void on_readable(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    for (int i = 0; i < 16; i++) {
        if (c->flags & (SC_CONN_F_CLOSED | SC_CONN_F_READ_PAUSED | SC_CONN_F_EOF))
            break;
        if (sc_buf_reserve(c->w, &c->in, in_cap(c)) < 0) {
            sc_conn_close(c, -ENOMEM);
            return;
        }
        size_t space = sc_buf_space(&c->in);
        if (space == 0) {
            process(c);
            if (sc_buf_space(&c->in) == 0) {
                sc_conn_pause_read(c);
                break;
            }
            continue;
        }
        ssize_t n = sc_conn_recv(c, sc_buf_tail(&c->in), space);
        if (n > 0) {
            c->in.end += (uint32_t)n;
            process(c);
            if (c->ops != &down_h1_ops)
                return; /* switched to HTTP/2 */
            if ((size_t)n < space && !sc_conn_pending(c))
                break;
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            break;
        /* EOF or error. A client that closes while its request is in flight
         * has given up on it (clients do not half-close HTTP/1.1): cancel the
         * upstream exchange instead of finishing a response nobody reads. */
        if (d->cur && !(d->cur->flags & SC_ST_F_DOWN_DONE))
            SC_DEBUG("%s listener: caller closed the connection with a request in flight", c->route->name);
        sc_conn_close(c, n < 0 ? -errno : 0);
        return;
    }
    if (sc_buf_len(&c->in) && !(c->flags & SC_CONN_F_CLOSED) && c->ops == &down_h1_ops)
        process(c);
    if (sc_buf_len(&c->in) == 0 && !(c->flags & SC_CONN_F_CLOSED))
        sc_buf_release(c->w, &c->in);
    if (!(c->flags & SC_CONN_F_CLOSED) && sc_conn_pending(c))
        sc_conn_mark_dirty(c); /* decrypted bytes left after the bounded loop */
}

#define RESPONSE_HOP(X) SC_HDR_HOP_BY_HOP(X) X("content-length")
SC_LIT_SET(response_hop_set, RESPONSE_HOP);

static bool is_response_hop(const nghttp2_nv *nv)
{
    return sc_lit_set_has(&response_hop_set, nv->name, nv->namelen);
}

/* Header or trailer fields (trailers: also without the fields a trailer
 * section may not carry, sc_h1_trailer_forbidden). */
static int write_fields(sc_conn *c, const nghttp2_nv *nv, size_t n, bool trailers)
{
    for (size_t i = 0; i < n; i++) {
        if (nv[i].namelen && nv[i].name[0] == ':')
            continue;
        if (is_response_hop(&nv[i]) ||
            (trailers && sc_h1_trailer_forbidden((const char *)nv[i].name, nv[i].namelen)))
            continue;
        if (sc_conn_write(c, nv[i].name, nv[i].namelen) < 0 || sc_conn_write(c, ": ", 2) < 0 ||
            sc_conn_write(c, nv[i].value, nv[i].valuelen) < 0 || sc_conn_write(c, "\r\n", 2) < 0)
            return -ENOBUFS;
    }
    return 0;
}

static void finish_response(sc_conn *c, sc_stream *s)
{
    sc_down_conn *d = SC_DOWN(c);
    if (!s->reqp.eof)
        d->close_after = true; /* the rest of the request body is unread: cannot reuse */
    d->cur = NULL;
    d->continue_due = false;
    sc_stream_downstream_done(s, false);
    if (d->close_after || c->w->draining) {
        sc_conn_close_after_flush(c);
        return;
    }
    d->awaiting_head = false;
    d->head_timed = false;
    arm_timer(c, c->route->timeouts->idle_ms);
    sc_conn_resume_read(c);
    if (sc_buf_len(&c->in))
        sc_conn_mark_dirty(c);
}

static int write_head(sc_conn *c, sc_stream *s)
{
    sc_down_conn *d = SC_DOWN(c);
    char line[128];
    int st = s->resp.status;
    bool no_body = (s->flags & SC_ST_F_HEAD_REQ) || st == 204 || st == 304 || st < 200;
    /* "HTTP/1.1 ddd reason\r\n": status is 100..599 (the codecs check it). */
    const char *reason = sc_h1_reason(st);
    size_t rlen = strlen(reason), n = 0;
    memcpy(line, "HTTP/1.1 ", 9);
    n = 9 + sc_fmt_u64(line + 9, (uint64_t)st);
    line[n++] = ' ';
    if (rlen > sizeof(line) - n - 2)
        rlen = sizeof(line) - n - 2;
    memcpy(line + n, reason, rlen);
    n += rlen;
    line[n++] = '\r';
    line[n++] = '\n';
    if (sc_buf_reserve(c->w, &c->out, 64 * 1024) < 0)
        return -ENOMEM; /* not a full buffer that drains: nothing would call again */
    size_t before = sc_buf_mark(&c->out);
    if (sc_conn_write(c, line, n) < 0 || write_fields(c, s->resp.hdrs, s->resp.n_hdrs, false) < 0)
        goto full;
    if (s->resp.content_length >= 0 && st != 204 && st >= 200) {
        n = sc_h1_content_length_line(line, (uint64_t)s->resp.content_length);
        if (sc_conn_write(c, line, n) < 0)
            goto full;
    } else if (!no_body) {
        /* Unknown length: chunked keeps the connection reusable. */
        s->down_chunked = true;
        if (sc_conn_write(c, "transfer-encoding: chunked\r\n", 28) < 0)
            goto full;
    }
    if (d->close_after || c->w->draining) {
        d->close_after = true;
        if (sc_conn_write(c, "connection: close\r\n", 19) < 0)
            goto full;
    }
    if (sc_conn_write(c, "\r\n", 2) < 0)
        goto full;
    s->flags |= SC_ST_F_DOWN_HEAD_SENT;
    if (no_body) {
        sc_buf_release(c->w, &s->respp.buf);
        s->down_chunked = false;
    }
    return 0;
full:
    sc_buf_rewind(&c->out, before);
    return -ENOBUFS;
}

static int produce(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    if (d->refusing)
        return write_refusal(c);
    sc_stream *s = d->cur;
    if (s && d->continue_due) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        int rv = 0;
        /* A final response makes the 100 moot; else it waits for room in c->out. */
        if (s->resp.head_done || (rv = sc_conn_write(c, cont, sizeof(cont) - 1)) != -ENOBUFS)
            d->continue_due = false;
        if (rv == -ENOMEM)
            return rv;
    }
    if (!s || !s->resp.head_done)
        return 0;
    if ((s->flags & SC_ST_F_DOWN_HEAD_SENT) && s->fail && !s->respp.eof) {
        /* The upstream failed mid-response: cutting the connection is the
         * only way HTTP/1.1 can tell the client the body is incomplete. */
        d->cur = NULL;
        sc_stream_downstream_done(s, true);
        return -ECONNABORTED;
    }
    /* write_head takes "no room" for "wait for the socket"; no buffer at all
     * would wait for ever: closing is the only answer left. */
    if (sc_buf_reserve(c->w, &c->out, 64 * 1024) < 0)
        return -ENOMEM;
    if (!(s->flags & SC_ST_F_DOWN_HEAD_SENT)) {
        int rv = write_head(c, s);
        if (rv == -ENOMEM)
            return rv;
        if (rv < 0)
            return 0; /* wait for the output to drain */
    }
    bool no_body = (s->flags & SC_ST_F_HEAD_REQ) || s->resp.status == 204 || s->resp.status == 304;
    size_t drained = 0;
    while (!no_body && sc_buf_len(&s->respp.buf)) {
        if (sc_buf_reserve(c->w, &c->out, 64 * 1024) < 0)
            return -ENOMEM;
        size_t space = sc_buf_space(&c->out);
        size_t len = sc_buf_len(&s->respp.buf);
        size_t overhead = s->down_chunked ? 20 : 0;
        if (space <= overhead)
            break;
        size_t n = SC_MIN(len, space - overhead);
        if (s->down_chunked) {
            char hdr[20];
            int hl = snprintf(hdr, sizeof(hdr), "%zx\r\n", n);
            sc_conn_write(c, hdr, (size_t)hl);
        }
        sc_conn_write(c, sc_buf_head(&s->respp.buf), n);
        if (s->down_chunked)
            sc_conn_write(c, "\r\n", 2);
        sc_buf_consume(&s->respp.buf, n);
        drained += n;
    }
    if (drained)
        sc_stream_resp_drained(s, drained);
    if (d->cur != s)
        return 0;
    if (s->respp.eof && (no_body || sc_buf_len(&s->respp.buf) == 0)) {
        if (s->down_chunked) {
            size_t before = sc_buf_mark(&c->out);
            if (sc_conn_write(c, "0\r\n", 3) < 0 ||
                (s->down_te_trailers && write_fields(c, s->respp.trailers, s->respp.n_trailers, true) < 0) ||
                sc_conn_write(c, "\r\n", 2) < 0) {
                sc_buf_rewind(&c->out, before);
                return 0;
            }
        }
        finish_response(c, s);
    }
    return 0;
}

static void stream_event(sc_stream *s)
{
    sc_conn_mark_dirty(s->down);
}

static void informational(sc_stream *s, int status, const nghttp2_nv *nv, size_t n)
{
    if (status == 100 || status == 101)
        return; /* 100 was answered by the sidecar itself; upgrades are not proxied */
    sc_conn *c = s->down;
    char line[64];
    int l = snprintf(line, sizeof(line), "HTTP/1.1 %d %s\r\n", status, sc_h1_reason(status));
    size_t before = sc_buf_mark(&c->out);
    if (sc_conn_write(c, line, (size_t)l) < 0 || write_fields(c, nv, n, false) < 0 || sc_conn_write(c, "\r\n", 2) < 0)
        sc_buf_rewind(&c->out, before); /* no room: an informational response may be dropped */
    sc_conn_mark_dirty(c);
}

static void on_close(sc_conn *c, int err)
{
    sc_down_conn *d = SC_DOWN(c);
    (void)err;
    free(d->caller.identity);
    d->caller.identity = NULL;
    if (d->cur) {
        sc_stream *s = d->cur;
        d->cur = NULL;
        sc_stream_downstream_done(s, true);
    }
    c->w->n_down_conns--;
    SC_STAT_DEC(c->w->stats->down_conns);
}

/* The caller's certificate was verified: who is it, may it call, which protocol. */
static void on_handshake(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    const sc_config *cfg = c->w->sc->cfg;
    char id[SC_TLS_ID_MAX];
    if (sc_tls_peer_identity(c->ssl, id, sizeof(id)) > 0)
        d->caller.identity = strdup(id);
    if (cfg->tls.n_allow) {
        d->caller.denied = !sc_tls_allowed((const char *const *)cfg->tls.allow, cfg->tls.n_allow, d->caller.identity);
        if (d->caller.denied)
            SC_INFO("inbound listener: caller %s is not in tls.allow; its requests get 403 / PERMISSION_DENIED",
                    d->caller.identity ? d->caller.identity : "(certificate without a SPIFFE identity)");
    }
    const char *alpn = sc_tls_alpn_selected(c->ssl);
    if (alpn && strcmp(alpn, "h2") == 0 && sc_down_h2_upgrade(c) < 0)
        sc_conn_close(c, -EPROTO);
}

static void consumed(sc_stream *s, size_t n)
{
    (void)n;
    sc_conn_resume_read(s->down);
}

static void drain(sc_conn *c);

const sc_down_codec sc_down_h1_codec = {
    .name = "http1",
    .stream_event = stream_event,
    .informational = informational,
    .consumed = consumed,
    .drain = drain,
};

static const sc_conn_ops down_h1_ops = {
    .flags = SC_CONN_OPS_BUFFERS_INPUT,
    .down = &sc_down_h1_codec,
    .on_readable = on_readable,
    .produce = produce,
    .on_close = on_close,
    .on_drained = NULL,
    .on_handshake = on_handshake,
};

void sc_down_accept(sc_worker *w, sc_route *route, int fd, const struct sockaddr *sa, socklen_t len)
{
    sc_down_conn *d = calloc(1, sizeof(*d));
    if (!d) {
        close(fd);
        return;
    }
    sc_conn *c = &d->super;
    sc_conn_init(c, w, fd, &down_h1_ops, route);
    c->caller = &d->caller;
    memcpy(&c->peer, sa, len);
    c->peer_len = len;
    sc_sockaddr_text(sa, c->peer_text, sizeof(c->peer_text));
    ev_init(&c->timer, timer_cb);
    if (route->inbound && w->sc->tls_server) {
        char err[256];
        sc_tls_ctx *ctx = sc_tls_watch_get(w->sc->tls_server);
        SSL *ssl = ctx ? sc_tls_ssl_server(ctx, fd, err, sizeof(err)) : NULL;
        if (ctx)
            sc_tls_ctx_unref(ctx);
        if (!ssl) {
            /* per connection, before any authentication (no Connect leaf yet): rate-limited */
            SC_WARN_LIMITED(&route->log_limit, "inbound listener: cannot start TLS for a new connection: %s",
                            ctx ? err : "no context");
            close(fd);
            free(d);
            return;
        }
        d->caller.tls = true;
        c->ssl = ssl;
        c->flags |= SC_CONN_F_TLS_HS; /* the handshake waits for the ClientHello: EV_READ, as sc_conn_init set it */
    }
    sc_list_push(&w->down_conns, &c->link);
    w->n_down_conns++;
    SC_STAT_INC(w->stats->down_conns);
    SC_STAT_INC(w->stats->down_conns_total);
    ev_io_start(w->loop, &c->io);
    d->awaiting_head = true;
    d->head_timed = true;
    arm_timer(c, route->timeouts->header_read_ms);
}

static void drain(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    d->close_after = true;
    if (d->cur)
        return; /* its response goes out with connection: close */
    /* Nothing in progress. A request may be on its way as the drain begins:
     * bytes in the socket or inside TLS are read first, and a request found
     * there is served (with connection: close) like one in progress. A
     * connection that has not carried a request yet (just accepted, or still
     * in its TLS handshake) was opened to send one: it gets a short grace
     * to do so instead of a close its caller would take for a failure. An
     * idle keep-alive connection is closed at once: clients retry a request
     * on a keep-alive connection closed before it was answered. */
    if (!(c->flags & SC_CONN_F_TLS_HS))
        on_readable(c);
    if (c->flags & (SC_CONN_F_CLOSED | SC_CONN_F_CLOSING) || d->cur)
        return;
    if (sc_buf_len(&c->in) || !d->served) {
        uint64_t grace = c->route->timeouts->header_read_ms;
        arm_timer(c, grace && grace < DRAIN_GRACE_MS ? grace : DRAIN_GRACE_MS);
        return;
    }
    sc_conn_close(c, 0);
}

/*
 * up_h1.c: HTTP/1.1 connections to upstream instances, kept alive and reused
 * per worker (one exchange at a time per connection, no pipelining).
 */
#include "core/log.h"
#include "http/grpc.h"
#include "http/hdr.h"
#include "jwt/jwt_config.h"
#include "proxy/codec.h"
#include "proxy/conns.h"
#include "sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define OUT_BLOCK (64 * 1024)
#define TRAILER_CAP 8192
/* 1xx responses accepted before the final one of an exchange (their bytes
 * together are bounded by limits.max_header_bytes): a peer sending endless
 * 103s must not keep a request, and the caller's output, busy forever. */
#define MAX_INTERIM 16

/*
 * The trailer section of a chunked body into p->trailers, filtered as the
 * head it follows: never the fields a trailer may not carry
 * (sc_h1_trailer_forbidden: hop-by-hop, framing, routing). A caller's
 * trailers (p == &s->reqp) also lose every spelling of the identity header
 * and follow limits.header_underscores, as its head did. Returns 0,
 * -ENOMEM, or SC_H1_ERR_* with b->why set.
 */
static int take_trailers(sc_stream *s, sc_h1_body *b, sc_pipe *p)
{
    sc_h1_header tr[SC_H1_MAX_HEADERS];
    int nt = sc_h1_body_trailers(b, tr, SC_ARRAY_LEN(tr));
    if (nt < 0) {
        b->why = nt == SC_H1_ERR_TOO_LARGE ? "too many trailer fields" : "malformed trailer section";
        return nt;
    }
    const sc_config *cfg = s->w->sc->cfg;
    bool from_caller = p == &s->reqp;
    for (int i = 0; i < nt; i++) {
        const char *n = tr[i].name.p;
        size_t nl = tr[i].name.len;
        if (sc_h1_trailer_forbidden(n, nl))
            continue;
        if (from_caller && (sc_hdr_aliases(n, nl, cfg->tls.identity_header) ||
                            (s->route->inbound && sc_jwt_header_reserved(cfg->inbound.jwt, n, nl))))
            continue; /* only ever set by the sidecar (identity, JWT claims), in the head */
        if (from_caller && sc_hdr_has_underscore(n, nl)) {
            if (cfg->limits.header_underscores == SC_HDR_US_REJECT) {
                b->why = "trailer field name with '_' refused (limits.header_underscores: reject)";
                return SC_H1_ERR_SYNTAX;
            }
            if (cfg->limits.header_underscores == SC_HDR_US_DROP)
                continue;
        }
        if (sc_pipe_add_trailer(s, p, n, nl, tr[i].value.p, tr[i].value.len) < 0)
            return -ENOMEM;
    }
    return 0;
}

int sc_h1_pump_body(sc_stream *s, sc_buf *in, sc_h1_body *b, sc_pipe *p)
{
    sc_worker *w = s->w;
    int moved = 0;
    while (!p->eof) {
        if (sc_buf_reserve(w, &p->buf, w->sc->cfg->limits.stream_buffer) < 0)
            return -ENOMEM;
        size_t space = sc_buf_space(&p->buf);
        size_t avail = sc_buf_len(in);
        /* With no input, or no room, only a finished length-delimited body
         * can still progress (to DONE, which needs neither). Stopping there
         * when the pipe is exactly full would leave the end unseen: nothing
         * is left to read that would bring the decoder back. */
        bool can_end = b->kind == SC_H1_BODY_NONE || (b->kind == SC_H1_BODY_LENGTH && b->remaining == 0);
        if ((space == 0 || avail == 0) && !can_end)
            break;
        /* Payload never exceeds the input handed over, so this bounds it by the room. */
        if (avail > space)
            avail = space;
        size_t consumed = 0, dlen = 0;
        const char *data = NULL;
        int rv = sc_h1_body_decode(b, avail ? sc_buf_head(in) : "", avail, &consumed, &data, &dlen);
        if (rv < 0)
            return rv;
        if (rv == SC_H1_BODY_DATA) {
            memcpy(sc_buf_tail(&p->buf), data, dlen);
            p->buf.end += (uint32_t)dlen;
            p->total += dlen;
            moved += (int)dlen;
        }
        if (consumed)
            sc_buf_consume(in, consumed);
        if (rv == SC_H1_BODY_DONE) {
            if (b->trailer_buf && b->trailer_len && (rv = take_trailers(s, b, p)) < 0)
                return rv;
            p->eof = true;
            return moved + 1;
        }
        /* NEED_MORE means "the input given is used up"; input beyond the part
         * handed over (bounded by the room) is still waiting in `in`. */
        if (rv == SC_H1_BODY_NEED_MORE && (sc_buf_len(in) == 0 || consumed == 0))
            break;
    }
    return moved;
}

static void bind_stream(sc_up_conn *u, sc_stream *s)
{
    u->cur = s;
    u->head_parsed = false;
    u->head_scanned = 0;
    u->n_interim = u->interim_bytes = 0;
    s->up = &u->super;
    s->up_keepalive = true;
    sc_stream_bound(s);
    sc_conn_mark_dirty(&u->super);
}

static const sc_conn_ops up_h1_ops;

static void attach(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route_state *rs = sc_rstate(w, s->route);
    for (sc_link *l = rs->h1_idle.next; l != &rs->h1_idle; l = l->next) {
        sc_conn *c = SC_CONTAINER_OF(l, sc_conn, link);
        if (c->peer_len == s->up_addr_len && memcmp(&c->peer, &s->up_addr, c->peer_len) == 0) {
            sc_list_remove(&c->link);
            sc_conn_deadline_clear(c);
            bind_stream(SC_UP(c), s);
            return;
        }
    }
    int err = 0;
    sc_up_conn *u = sc_up_conn_new(w, s->route, (struct sockaddr *)&s->up_addr, s->up_addr_len, &up_h1_ops, &err);
    if (!u) {
        if (err == -EUSERS) { /* bulkhead.max_connections */
            sc_stream_upstream_failed(s, SC_FAIL_OVERLOAD);
            return;
        }
        SC_WARN_LIMITED(&s->route->log_limit, "upstream %s: cannot connect: %s", s->route->name, strerror(-err));
        sc_stream_upstream_failed(s, SC_FAIL_CONNECT);
        return;
    }
    bind_stream(u, s);
}

#define SKIPPED(X)                                                                                              \
    SC_HDR_HOP_BY_HOP(X) X("host") X("content-length") X("grpc-previous-rpc-attempts") X("x-sidecar-attempt")
SC_LIT_SET(skipped_set, SKIPPED);

static bool skip_req_header(const nghttp2_nv *nv)
{
    return sc_lit_set_has(&skipped_set, nv->name, nv->namelen);
}

static int put(sc_conn *c, const void *p, size_t n) { return sc_conn_write(c, p, n); }

/* Trailers from any caller: never the fields a trailer section may not carry. */
static bool skip_trailer(const nghttp2_nv *nv)
{
    return sc_h1_trailer_forbidden((const char *)nv->name, nv->namelen);
}

static int put_nv(sc_conn *c, const nghttp2_nv *nv, size_t n, bool (*skip)(const nghttp2_nv *))
{
    for (size_t i = 0; i < n; i++) {
        if (skip && skip(&nv[i]))
            continue;
        /* One bounds check per header line, then the pieces straight into
         * the buffer (the caller has written before us, so it exists). */
        size_t len = nv[i].namelen + 2 + nv[i].valuelen + 2;
        if (!c->out.data || sc_buf_space(&c->out) < len)
            return -ENOBUFS;
        char *t = sc_buf_tail(&c->out);
        memcpy(t, nv[i].name, nv[i].namelen);
        t += nv[i].namelen;
        t[0] = ':';
        t[1] = ' ';
        memcpy(t + 2, nv[i].value, nv[i].valuelen);
        t += 2 + nv[i].valuelen;
        t[0] = '\r';
        t[1] = '\n';
        c->out.end += (uint32_t)len;
    }
    return 0;
}

static int write_request_head(sc_conn *c, sc_stream *s)
{
    size_t before = sc_buf_mark(&c->out);
    const sc_msg *m = &s->req;
    char line[64];
    if (put(c, m->method, m->method_len) < 0 || put(c, " ", 1) < 0 || put(c, m->path, m->path_len) < 0 ||
        put(c, " HTTP/1.1\r\nhost: ", 17) < 0 || put(c, m->authority, m->authority_len) < 0 || put(c, "\r\n", 2) < 0 ||
        put_nv(c, m->hdrs, m->n_hdrs, skip_req_header) < 0)
        goto full;
    if (m->is_grpc && s->deadline_ns) {
        char t[16];
        sc_grpc_timeout_format(sc_stream_remaining_ns(s), t, sizeof(t));
        int n = snprintf(line, sizeof(line), "grpc-timeout: %s\r\n", t);
        if (put(c, line, (size_t)n) < 0)
            goto full;
    }
    if (s->attempt > 1) {
        int n = m->is_grpc ? snprintf(line, sizeof(line), "grpc-previous-rpc-attempts: %u\r\n", s->attempt - 1)
                           : snprintf(line, sizeof(line), "x-sidecar-attempt: %u\r\n", s->attempt);
        if (put(c, line, (size_t)n) < 0)
            goto full;
    }
    if (m->content_length >= 0) {
        size_t n = sc_h1_content_length_line(line, (uint64_t)m->content_length);
        if (put(c, line, n) < 0)
            goto full;
    } else if (!(s->reqp.eof && sc_buf_len(&s->reqp.buf) == 0 && s->reqp.n_trailers == 0)) {
        s->up_chunked = true;
        if (put(c, "transfer-encoding: chunked\r\n", 28) < 0)
            goto full;
    }
    if (put(c, "\r\n", 2) < 0)
        goto full;
    s->up_head_sent = true;
    return 0;
full:
    sc_buf_rewind(&c->out, before);
    s->up_chunked = false;
    return -ENOBUFS;
}

static int produce(sc_conn *c)
{
    sc_up_conn *u = SC_UP(c);
    sc_stream *s = u->cur;
    if (!s || (s->flags & SC_ST_F_REQ_SENT))
        return 0;
    if (sc_buf_reserve(c->w, &c->out, OUT_BLOCK) < 0)
        return -ENOMEM;
    if (!s->up_head_sent && write_request_head(c, s) < 0)
        return 0;
    while (sc_buf_len(&s->reqp.buf)) {
        size_t space = sc_buf_space(&c->out);
        size_t overhead = s->up_chunked ? 20 : 0;
        if (space <= overhead)
            break;
        size_t n = SC_MIN(sc_buf_len(&s->reqp.buf), space - overhead);
        if (s->up_chunked) {
            char hdr[20];
            int hl = snprintf(hdr, sizeof(hdr), "%zx\r\n", n);
            put(c, hdr, (size_t)hl);
        }
        put(c, sc_buf_head(&s->reqp.buf), n);
        if (s->up_chunked)
            put(c, "\r\n", 2);
        sc_stream_req_consume(s, n);
    }
    if (s->reqp.eof && sc_buf_len(&s->reqp.buf) == 0) {
        if (s->up_chunked) {
            size_t before = sc_buf_mark(&c->out);
            if (put(c, "0\r\n", 3) < 0 || put_nv(c, s->reqp.trailers, s->reqp.n_trailers, skip_trailer) < 0 ||
                put(c, "\r\n", 2) < 0) {
                sc_buf_rewind(&c->out, before);
                return 0;
            }
        }
        s->flags |= SC_ST_F_REQ_SENT;
        sc_buf_release(c->w, &s->reqp.buf);
    }
    return 0;
}

static void stream_event(sc_stream *s)
{
    sc_conn_mark_dirty(s->up);
}

static void consumed(sc_stream *s, size_t n)
{
    (void)n;
    sc_conn_resume_read(s->up);
}

static void cancel(sc_stream *s)
{
    sc_up_conn *u = SC_UP(s->up);
    u->cur = NULL;
    s->up = NULL;
    sc_conn_close(&u->super, -ECANCELED); /* mid-exchange: the connection cannot be reused */
}

/* The response ended: reuse the connection when both directions are clean. */
static void finish(sc_up_conn *u, sc_stream *s)
{
    sc_conn *c = &u->super;
    bool reuse = s->up_keepalive && (s->flags & SC_ST_F_REQ_SENT) && sc_buf_len(&c->in) == 0 &&
                 !c->w->stopping && !(c->flags & SC_CONN_F_EOF);
    u->cur = NULL;
    sc_stream_upstream_done(s);
    if (!reuse) {
        sc_conn_close(c, 0);
        return;
    }
    sc_buf_release(c->w, &c->in);
    sc_list_push(&sc_rstate(c->w, c->route)->h1_idle, &c->link);
    sc_up_conn_idle(u);
}

static bool skip_resp_header(const sc_h1_head *h, const sc_h1_header *f)
{
    return sc_h1_is_hop_by_hop_head(h, f->name.p, f->name.len) ||
           (f->name.len == 14 && strncasecmp(f->name.p, "content-length", 14) == 0);
}

/* The connection's input buffer: a whole response head must fit (as for callers, down_h1.c). */
static uint32_t in_cap(const sc_conn *c)
{
    const sc_config *cfg = c->w->sc->cfg;
    return SC_MAX(cfg->limits.stream_buffer, cfg->limits.max_header_bytes + 1);
}

/* A 1xx response: bounded in number and bytes, forwarded to the caller. */
static int interim(sc_up_conn *u, sc_stream *s, const sc_h1_head *h, size_t n)
{
    sc_conn *c = &u->super;
    if (h->status == 101) {
        SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: %s answered 101 Switching Protocols; upgrades are not proxied",
                        c->route->name, c->peer_text);
        return -EPROTO;
    }
    uint32_t max_bytes = c->w->sc->cfg->limits.max_header_bytes;
    u->interim_bytes = (uint32_t)SC_MIN((uint64_t)u->interim_bytes + n, UINT32_MAX);
    if (++u->n_interim > MAX_INTERIM || u->interim_bytes > max_bytes) {
        SC_WARN_LIMITED(&c->route->log_limit,
                        "upstream %s: %s sent %u informational (1xx) responses (%u bytes) without a final one; "
                        "at most %d and limits.max_header_bytes (%u) are accepted per request",
                        c->route->name, c->peer_text, u->n_interim, u->interim_bytes, MAX_INTERIM, max_bytes);
        return -EPROTO;
    }
    nghttp2_nv nv[SC_H1_MAX_HEADERS];
    size_t k = 0;
    for (size_t i = 0; i < h->n_headers; i++) {
        if (skip_resp_header(h, &h->headers[i]))
            continue;
        /* lower-case names for HTTP/2 callers: copy into the arena */
        const sc_h1_header *f = &h->headers[i];
        char *lc = sc_arena_dup(&s->arena, f->name.p, f->name.len);
        if (!lc)
            return -ENOMEM;
        for (size_t j = 0; j < f->name.len; j++)
            if (lc[j] >= 'A' && lc[j] <= 'Z')
                lc[j] = (char)(lc[j] + 32);
        nv[k++] = (nghttp2_nv){(uint8_t *)lc, (uint8_t *)f->value.p, f->name.len, f->value.len, NGHTTP2_NV_FLAG_NONE};
    }
    sc_stream_resp_informational(s, h->status, nv, k);
    return 0;
}

static int parse_head(sc_up_conn *u, sc_stream *s)
{
    sc_conn *c = &u->super;
    const sc_config *cfg = c->w->sc->cfg;
    sc_h1_limits lim = {cfg->limits.max_request_line, cfg->limits.max_header_bytes};
    for (;;) {
        sc_h1_head h;
        const char *why = NULL;
        size_t len = sc_buf_len(&c->in);
        if (u->head_scanned && sc_buf_space(&c->in) && !sc_h1_head_worth_parsing(sc_buf_head(&c->in), u->head_scanned, len, &lim)) {
            u->head_scanned = (uint32_t)len;
            return 0;
        }
        u->head_scanned = (uint32_t)len;
        int n = sc_h1_parse_head(sc_buf_head(&c->in), len, false, (s->flags & SC_ST_F_HEAD_REQ) != 0, &lim, &h, &why);
        if (n == 0 && sc_buf_space(&c->in) == 0) {
            n = SC_H1_ERR_TOO_LARGE;
            why = "response head larger than the input buffer";
        }
        if (n == 0)
            return 0;
        u->head_scanned = 0;
        if (n < 0) {
            SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: invalid response from %s: %s%s", c->route->name,
                            c->peer_text, why ? why : "syntax",
                            n == SC_H1_ERR_TOO_LARGE || n == SC_H1_ERR_LINE_TOO_LONG
                                ? " (limits.max_header_bytes / limits.max_request_line)" : "");
            return -EPROTO;
        }
        if (h.status < 200) {
            int rv = interim(u, s, &h, (size_t)n);
            if (rv < 0)
                return rv;
            sc_buf_consume(&c->in, (size_t)n);
            if (u->cur != s)
                return -ECANCELED;
            continue;
        }
        sc_msg *m = &s->resp;
        m->status = h.status;
        for (size_t i = 0; i < h.n_headers; i++)
            if (!skip_resp_header(&h, &h.headers[i]) &&
                sc_msg_add(s, m, h.headers[i].name.p, h.headers[i].name.len, h.headers[i].value.p,
                           h.headers[i].value.len) < 0)
                return -ENOMEM;
        m->content_length = h.body == SC_H1_BODY_LENGTH ? (int64_t)h.content_length : -1;
        if (s->flags & SC_ST_F_HEAD_REQ) {
            const sc_h1_header *cl = sc_h1_find(&h, "content-length");
            m->content_length = -1;
            if (cl)
                m->content_length = strtoll(cl->value.p, NULL, 10);
        }
        s->up_keepalive = h.keep_alive;
        if (h.body == SC_H1_BODY_CHUNKED && !s->h1_up_trailer_buf &&
            !(s->h1_up_trailer_buf = malloc(TRAILER_CAP)))
            return -ENOMEM;
        sc_h1_body_init(&s->h1_up_body, h.body, h.content_length, s->h1_up_trailer_buf,
                        s->h1_up_trailer_buf ? TRAILER_CAP : 0);
        if (h.body == SC_H1_BODY_UNTIL_CLOSE)
            s->up_keepalive = false;
        sc_buf_consume(&c->in, (size_t)n);
        u->head_parsed = true;
        m->head_done = true;
        const sc_h1_header *gs = NULL;
        if (s->req.is_grpc && (gs = sc_h1_find(&h, "grpc-status"))) {
            s->grpc_status = sc_grpc_status_wire(gs->value.p, gs->value.len);
            int g;
            if (sc_grpc_status_parse(gs->value.p, gs->value.len, &g) < 0)
                SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: invalid grpc-status '%.*s' from %s, taken as UNKNOWN",
                                c->route->name, (int)SC_MIN(gs->value.len, 32), gs->value.p, c->peer_text);
        }
        return 1;
    }
}

/* The exchange fails on the upstream's side (or ours: no memory); the connection cannot be reused. */
static void fail_exchange(sc_up_conn *u, sc_stream *s, int err)
{
    sc_conn *c = &u->super;
    if (err == -ENOMEM)
        SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: out of memory for a response from %s", c->route->name,
                        c->peer_text);
    u->cur = NULL;
    s->up = NULL;
    sc_stream_upstream_failed(s, err == -ENOMEM ? SC_FAIL_NO_MEMORY : SC_FAIL_PROTOCOL);
    sc_conn_close(c, err);
}

static void on_readable(sc_conn *c)
{
    sc_up_conn *u = SC_UP(c);
    for (int round = 0; round < 16; round++) {
        sc_stream *s = u->cur;
        if (!s) {
            /* An idle connection that becomes readable was closed (or is talking nonsense). */
            sc_conn_close(c, 0);
            return;
        }
        if (sc_buf_reserve(c->w, &c->in, in_cap(c)) < 0) {
            sc_conn_close(c, -ENOMEM);
            return;
        }
        size_t space = sc_buf_space(&c->in);
        ssize_t n = 0;
        if (space) {
            n = sc_conn_recv(c, sc_buf_tail(&c->in), space);
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                n = -2;
        }
        if (n == 0 && space) {
            c->flags |= SC_CONN_F_EOF;
            if (u->head_parsed && s->h1_up_body.kind == SC_H1_BODY_UNTIL_CLOSE) {
                /* fallthrough: decode what is left, then end the body */
            } else if (!u->head_parsed || !s->respp.eof) {
                if (!(u->head_parsed && sc_buf_len(&c->in))) {
                    sc_conn_close(c, -ECONNRESET);
                    return;
                }
            }
        } else if (n == -1) {
            sc_conn_close(c, -errno);
            return;
        } else if (n > 0) {
            c->in.end += (uint32_t)n;
        }
        if (!u->head_parsed) {
            int rv = parse_head(u, s);
            if (rv == -ECANCELED)
                return;
            if (rv < 0) {
                fail_exchange(u, s, rv);
                return;
            }
            if (rv == 0) {
                if (c->flags & SC_CONN_F_EOF) {
                    sc_conn_close(c, -ECONNRESET);
                    return;
                }
                break;
            }
            sc_stream_resp_progress(s);
            if (u->cur != s)
                return;
        }
        int rv = sc_h1_pump_body(s, &c->in, &s->h1_up_body, &s->respp);
        if (rv < 0) {
            if (rv != -ENOMEM)
                SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: malformed response body from %s: %s", c->route->name,
                                c->peer_text, s->h1_up_body.why ? s->h1_up_body.why : "framing");
            fail_exchange(u, s, rv == -ENOMEM ? rv : -EPROTO);
            return;
        }
        if ((c->flags & SC_CONN_F_EOF) && !s->respp.eof && sc_buf_len(&c->in) == 0) {
            if (s->h1_up_body.kind == SC_H1_BODY_UNTIL_CLOSE) {
                s->respp.eof = true;
                rv = 1;
            } else {
                sc_conn_close(c, -ECONNRESET);
                return;
            }
        }
        if (rv > 0)
            sc_stream_resp_progress(s);
        if (u->cur != s)
            return;
        if (s->respp.eof) {
            finish(u, s);
            return;
        }
        if (sc_buf_space(&s->respp.buf) == 0) {
            sc_conn_pause_read(c); /* the caller reads slower than the upstream writes */
            return;
        }
        if (n == -2 || (n > 0 && (size_t)n < space && !sc_conn_pending(c)))
            break;
    }
    if (!(c->flags & SC_CONN_F_CLOSED) && sc_conn_pending(c))
        sc_conn_mark_dirty(c); /* decrypted bytes left after the bounded loop */
}

static void on_close(sc_conn *c, int err)
{
    sc_up_conn *u = SC_UP(c);
    sc_route_stats *rs = &c->w->stats->routes[c->route->index];
    SC_STAT_DEC(rs->upstream_conns);
    sc_rstate(c->w, c->route)->n_conns--;
    sc_bulkhead_conn_release(&c->route->bulkhead);
    sc_stream *s = u->cur;
    if (!s)
        return;
    u->cur = NULL;
    s->up = NULL;
    sc_fail why = SC_FAIL_RESET;
    if (c->flags & SC_CONN_F_CONNECTING) {
        why = err == -ETIMEDOUT ? SC_FAIL_CONNECT_TIMEOUT : SC_FAIL_CONNECT;
        if (why == SC_FAIL_CONNECT)
            SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: connect to %s failed: %s", c->route->name, c->peer_text, strerror(-err));
    }
    sc_stream_upstream_failed(s, why);
}

static void on_connected(sc_conn *c)
{
    if (SC_UP(c)->cur)
        sc_stream_connected(SC_UP(c)->cur);
}

static const sc_conn_ops up_h1_ops = {
    .flags = SC_CONN_OPS_UPSTREAM | SC_CONN_OPS_BUFFERS_INPUT,
    .on_connected = on_connected,
    .on_readable = on_readable,
    .produce = produce,
    .on_close = on_close,
    .on_drained = NULL,
};

const sc_up_codec sc_up_h1_codec = {
    .name = "http1",
    .attach = attach,
    .stream_event = stream_event,
    .consumed = consumed,
    .cancel = cancel,
};

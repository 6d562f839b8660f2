/*
 * up_h1.c: HTTP/1.1 connections to upstream instances, kept alive and reused
 * per worker (one exchange at a time per connection, no pipelining).
 */
#include "core/log.h"
#include "http/grpc.h"
#include "proxy/conns.h"
#include "sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define OUT_BLOCK (64 * 1024)
#define TRAILER_CAP 8192

int sc_h1_pump_body(sc_stream *s, sc_buf *in, sc_h1_body *b, sc_pipe *p)
{
    sc_worker *w = s->w;
    int moved = 0;
    while (!p->eof) {
        if (sc_buf_reserve(w, &p->buf, w->sc->cfg->limits.stream_buffer) < 0)
            return -ENOMEM;
        size_t space = sc_buf_space(&p->buf);
        size_t avail = sc_buf_len(in);
        /* With no input only a finished length-delimited body can still progress (to DONE). */
        bool can_end = b->kind == SC_H1_BODY_NONE || (b->kind == SC_H1_BODY_LENGTH && b->remaining == 0);
        if (space == 0 || (avail == 0 && !can_end))
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
            if (b->trailer_buf && b->trailer_len) {
                sc_h1_header tr[32];
                int nt = sc_h1_body_trailers(b, tr, 32);
                for (int i = 0; i < nt; i++)
                    if (sc_pipe_add_trailer(s, p, tr[i].name.p, tr[i].name.len, tr[i].value.p, tr[i].value.len) < 0)
                        return -ENOMEM; /* a message without its trailers (grpc-status) must not look complete */
            }
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
    s->up = &u->super;
    s->up_keepalive = true;
    sc_conn_mark_dirty(&u->super);
}

void sc_up_h1_attach(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route_state *rs = sc_rstate(w, s->route);
    for (sc_link *l = rs->h1_idle.next; l != &rs->h1_idle; l = l->next) {
        sc_conn *c = SC_CONTAINER_OF(l, sc_conn, link);
        if (c->peer_len == s->up_addr_len && memcmp(&c->peer, &s->up_addr, c->peer_len) == 0) {
            sc_list_remove(&c->link);
            ev_timer_stop(w->loop, &c->timer);
            bind_stream(SC_UP(c), s);
            return;
        }
    }
    int err = 0;
    sc_up_conn *u = sc_up_conn_new(w, s->route, (struct sockaddr *)&s->up_addr, s->up_addr_len, &sc_up_h1_ops, &err);
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

static bool skip_req_header(const nghttp2_nv *nv)
{
    static const sc_lit hop[] = {SC_LIT("connection"), SC_LIT("keep-alive"), SC_LIT("proxy-connection"),
                                 SC_LIT("transfer-encoding"), SC_LIT("upgrade"), SC_LIT("te"),
                                 SC_LIT("trailer"), SC_LIT("host"), SC_LIT("content-length"),
                                 SC_LIT("grpc-previous-rpc-attempts"), SC_LIT("x-sidecar-attempt")};
    return sc_lit_in(nv->name, nv->namelen, hop, SC_ARRAY_LEN(hop));
}

static int put(sc_conn *c, const void *p, size_t n) { return sc_conn_write(c, p, n); }

static int put_nv(sc_conn *c, const nghttp2_nv *nv, size_t n, bool (*skip)(const nghttp2_nv *))
{
    for (size_t i = 0; i < n; i++) {
        if (skip && skip(&nv[i]))
            continue;
        if (put(c, nv[i].name, nv[i].namelen) < 0 || put(c, ": ", 2) < 0 || put(c, nv[i].value, nv[i].valuelen) < 0 ||
            put(c, "\r\n", 2) < 0)
            return -ENOBUFS;
    }
    return 0;
}

static int write_request_head(sc_conn *c, sc_stream *s)
{
    size_t before = c->out.end;
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
    c->out.end = (uint32_t)before;
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
            size_t before = c->out.end;
            if (put(c, "0\r\n", 3) < 0 || put_nv(c, s->reqp.trailers, s->reqp.n_trailers, NULL) < 0 ||
                put(c, "\r\n", 2) < 0) {
                c->out.end = (uint32_t)before;
                return 0;
            }
        }
        s->flags |= SC_ST_F_REQ_SENT;
        sc_buf_release(c->w, &s->reqp.buf);
    }
    return 0;
}

void sc_up_h1_stream_event(sc_stream *s)
{
    sc_conn_mark_dirty(s->up);
}

void sc_up_h1_cancel(sc_stream *s)
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

static bool skip_resp_header(const sc_h1_header *h, sc_h1_str connection)
{
    return sc_h1_is_hop_by_hop(h->name.p, h->name.len, connection) ||
           (h->name.len == 14 && strncasecmp(h->name.p, "content-length", 14) == 0);
}

static int parse_head(sc_up_conn *u, sc_stream *s)
{
    sc_conn *c = &u->super;
    for (;;) {
        sc_h1_head h;
        const char *why = NULL;
        size_t len = sc_buf_len(&c->in);
        if (u->head_scanned && sc_buf_space(&c->in) && !sc_h1_head_worth_parsing(sc_buf_head(&c->in), u->head_scanned, len, NULL)) {
            u->head_scanned = (uint32_t)len;
            return 0;
        }
        u->head_scanned = (uint32_t)len;
        int n = sc_h1_parse_head(sc_buf_head(&c->in), len, false, (s->flags & SC_ST_F_HEAD_REQ) != 0, NULL, &h, &why);
        if (n == 0)
            return sc_buf_space(&c->in) == 0 ? -EMSGSIZE : 0;
        u->head_scanned = 0;
        if (n < 0) {
            SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: invalid response from %s: %s", c->route->name, c->peer_text, why ? why : "syntax");
            return -EPROTO;
        }
        sc_h1_str conn_hdr = {0};
        const sc_h1_header *ch = sc_h1_find(&h, "connection");
        if (ch)
            conn_hdr = ch->value;
        if (h.status < 200) {
            if (h.status == 101)
                return -EPROTO;
            nghttp2_nv nv[SC_H1_MAX_HEADERS];
            size_t k = 0;
            for (size_t i = 0; i < h.n_headers; i++)
                if (!skip_resp_header(&h.headers[i], conn_hdr))
                    nv[k++] = (nghttp2_nv){(uint8_t *)h.headers[i].name.p, (uint8_t *)h.headers[i].value.p,
                                           h.headers[i].name.len, h.headers[i].value.len, NGHTTP2_NV_FLAG_NONE};
            /* lower-case names for HTTP/2 callers: copy into the arena */
            for (size_t i = 0; i < k; i++) {
                char *lc = sc_arena_dup(&s->arena, (const char *)nv[i].name, nv[i].namelen);
                if (!lc)
                    return -ENOMEM;
                for (size_t j = 0; j < nv[i].namelen; j++)
                    if (lc[j] >= 'A' && lc[j] <= 'Z')
                        lc[j] = (char)(lc[j] + 32);
                nv[i].name = (uint8_t *)lc;
            }
            sc_stream_resp_informational(s, h.status, nv, k);
            sc_buf_consume(&c->in, (size_t)n);
            if (u->cur != s)
                return -ECANCELED;
            continue;
        }
        sc_msg *m = &s->resp;
        m->status = h.status;
        for (size_t i = 0; i < h.n_headers; i++)
            if (!skip_resp_header(&h.headers[i], conn_hdr) &&
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
        if (h.body == SC_H1_BODY_CHUNKED && !s->h1_up_trailer_buf && !(s->h1_up_trailer_buf = malloc(TRAILER_CAP)))
            return -ENOMEM;
        sc_h1_body_init(&s->h1_up_body, h.body, h.content_length, s->h1_up_trailer_buf,
                        s->h1_up_trailer_buf ? TRAILER_CAP : 0);
        if (h.body == SC_H1_BODY_UNTIL_CLOSE)
            s->up_keepalive = false;
        sc_buf_consume(&c->in, (size_t)n);
        u->head_parsed = true;
        m->head_done = true;
        const sc_h1_header *gs = NULL;
        if (s->req.is_grpc && (gs = sc_h1_find(&h, "grpc-status")))
            s->grpc_status = atoi(gs->value.p);
        return 1;
    }
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
        if (sc_buf_reserve(c->w, &c->in, c->w->sc->cfg->limits.stream_buffer) < 0) {
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
                u->cur = NULL;
                s->up = NULL;
                sc_stream_upstream_failed(s, SC_FAIL_PROTOCOL);
                sc_conn_close(c, rv);
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
            SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: %s from %s", c->route->name,
                            rv == -ENOMEM ? "out of memory for the response body" : "malformed response body",
                            c->peer_text);
            u->cur = NULL;
            s->up = NULL;
            sc_stream_upstream_failed(s, SC_FAIL_PROTOCOL);
            sc_conn_close(c, -EPROTO);
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

const sc_conn_ops sc_up_h1_ops = {
    .kind = SC_CONN_UP_H1,
    .on_readable = on_readable,
    .produce = produce,
    .on_close = on_close,
    .on_drained = NULL,
};

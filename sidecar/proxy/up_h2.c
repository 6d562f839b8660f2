/*
 * up_h2.c: HTTP/2 (h2c, gRPC) connections to upstream instances, one nghttp2
 * client session each, multiplexed up to the peer's
 * SETTINGS_MAX_CONCURRENT_STREAMS; a new connection opens when all are full.
 * Response DATA is acknowledged (WINDOW_UPDATE) only when the caller has
 * taken it from the stream's pipe.
 *
 * A hostile upstream is held to limits.max_header_bytes per header list
 * (1xx heads and the final head together, trailers apart) and to
 * MAX_INFORMATIONAL 1xx heads: beyond, the request fails as a protocol
 * error (502). A stream it refuses is re-sent at most MAX_REFUSED_RESENDS
 * times; a request head nghttp2 cannot send, or one larger than the upstream's
 * SETTINGS_MAX_HEADER_LIST_SIZE, fails once (431 when it is too large).
 */
#include "core/log.h"
#include "http/grpc.h"
#include "http/hdr.h"
#include "proxy/codec.h"
#include "proxy/conns.h"
#include "sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CONN_WINDOW (16 * 1024 * 1024)
#define DEFAULT_MAX_STREAMS 100
/* A stream the upstream refused (REFUSED_STREAM, or GOAWAY before it was
 * processed) is sent again on another connection at most this many times
 * per attempt; then the attempt fails (and retries.on: refused-stream may
 * take over, with its backoff and budget). */
#define MAX_REFUSED_RESENDS 2
/* Informational (1xx) responses accepted before the final one; their
 * header fields count against limits.max_header_bytes together with the
 * final head's. More is a hostile upstream: the stream fails. */
#define MAX_INFORMATIONAL 8
/* How often a connection sends its per-request fields with a table entry
 * (submit()). */
#define RENEW_UNIQUE_EVERY 1024

static sc_stream *get_stream(sc_up_conn *u, int32_t sid)
{
    return sc_h2_get_stream(&u->last, u->h2, sid);
}

static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *data_flags,
                         nghttp2_data_source *source, void *user_data)
{
    sc_stream *s = source->ptr;
    if (!s || get_stream(user_data, sid) != s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = SC_MIN(length, sc_buf_len(&s->reqp.buf));
    if (n) {
        memcpy(buf, sc_buf_head(&s->reqp.buf), n);
        sc_stream_req_consume(s, n);
    }
    if (sc_buf_len(&s->reqp.buf) == 0 && s->reqp.eof) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->reqp.n_trailers) {
            /* Not queued (out of memory): reset rather than leave the stream open for ever. */
            if (nghttp2_submit_trailer(session, sid, s->reqp.trailers, s->reqp.n_trailers) != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        s->flags |= SC_ST_F_REQ_SENT;
        return (ssize_t)n;
    }
    if (n == 0) {
        s->flags |= SC_ST_F_DEFERRED_UP;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* te apart: "te: trailers" goes on (skip_req_header) */
#define SKIPPED(X)                                                                                              \
    SC_HDR_HOP_BY_HOP_BUT_TE(X) X("host") X("content-length") X("grpc-previous-rpc-attempts") X("x-sidecar-attempt")
SC_LIT_SET(skipped_set, SKIPPED);

static bool skip_req_header(const nghttp2_nv *nv)
{
    if (sc_lit_set_has(&skipped_set, nv->name, nv->namelen))
        return true;
    if (sc_lit_eq(nv->name, nv->namelen, "te") && !sc_lit_eq(nv->value, nv->valuelen, "trailers"))
        return true;
    return false;
}

/* Sends the request head on `u`. Returns 0, -E2BIG when the head is larger
 * than the upstream accepts (its SETTINGS_MAX_HEADER_LIST_SIZE), -EAGAIN
 * when the connection has no stream id left, or another negative error. */
static int submit(sc_up_conn *u, sc_stream *s)
{
    const sc_msg *m = &s->req;
    /* What this attempt's response may cost starts from zero (up_h2.c's counters). */
    s->up_hdr_bytes = 0;
    s->n_informational = 0;
    s->up_send_error = 0;
    if (!m->method || !m->path || !m->authority)
        return -EINVAL; /* the downstream codecs never start such a request; never send one */
    size_t n = m->n_hdrs + 8;
    nghttp2_nv stack[80];
    nghttp2_nv *nva = n <= SC_ARRAY_LEN(stack) ? stack : sc_arena_alloc(&s->arena, n * sizeof(*nva));
    if (!nva)
        return -ENOMEM;
    size_t k = 0;
#define NV(nm, v, vl) (nghttp2_nv){(uint8_t *)(nm), (uint8_t *)(v), sizeof(nm) - 1, (vl), NGHTTP2_NV_FLAG_NO_COPY_NAME}
    nva[k++] = NV(":method", m->method, m->method_len);
    nva[k++] = NV(":scheme", "http", 4);
    nva[k++] = NV(":authority", m->authority, m->authority_len);
    nva[k++] = NV(":path", m->path, m->path_len);
    /* Fields new on every request (SC_NV_F_UNIQUE, grpc-timeout) go without
     * a table entry, but a literal's name is sent as a string too (Huffman
     * coded, about 330 instructions each) unless the table holds an entry
     * of that name. So the connection's first request, and every
     * RENEW_UNIQUE_EVERY-th after it (the entry may have been pushed out),
     * sends them with one: later requests name them by index. */
    bool renew = u->n_submitted++ % RENEW_UNIQUE_EVERY == 0;
    uint8_t unique_flags = renew ? 0 : NGHTTP2_NV_FLAG_NO_INDEX;
    for (size_t i = 0; i < m->n_hdrs; i++)
        if (!skip_req_header(&m->hdrs[i])) {
            nva[k] = m->hdrs[i];
            if (nva[k].flags & SC_NV_F_UNIQUE)
                nva[k].flags = (uint8_t)((nva[k].flags & ~SC_NV_F_UNIQUE) | unique_flags);
            k++;
        }
    char tbuf[16], clbuf[24], abuf[24];   /* numbers by hand (sc_fmt_u64), not snprintf */
    if (s->attempt > 1) {
        /* Tell the upstream which attempt this is. */
        if (m->is_grpc)
            nva[k++] = NV("grpc-previous-rpc-attempts", abuf, sc_fmt_u64(abuf, s->attempt - 1));
        else
            nva[k++] = NV("x-sidecar-attempt", abuf, sc_fmt_u64(abuf, s->attempt));
    }
    if (m->is_grpc && s->deadline_ns) {
        uint64_t left = sc_stream_remaining_ns(s);
        size_t tl = sc_grpc_timeout_format(left, tbuf, sizeof(tbuf));
        nva[k] = NV("grpc-timeout", tbuf, tl);
        /* Often a new value on every call (a caller's own deadline, a
         * retry, a call that waited): as an HPACK table entry on every call
         * it would push out the fields that repeat, and every later
         * grpc-timeout would be compared with each such entry (nghttp2
         * files them by name). But a call that goes up in the callback
         * that read its head, without a shorter deadline of its caller's,
         * sends the policy's whole timeout (the worker's clock is read
         * once per callback): the same value every time, so it gets an
         * entry and goes as one index after the first. */
        if (left != sc_stream_policy_timeout_ns(s))
            nva[k].flags |= unique_flags;
        k++;
    }
    if (m->content_length >= 0) {
        nva[k++] = NV("content-length", clbuf, sc_fmt_u64(clbuf, (uint64_t)m->content_length));
    }
#undef NV
    uint32_t list = 0;
    for (size_t i = 0; i < k; i++)
        sc_hdr_list_add(&list, nva[i].namelen, nva[i].valuelen);
    uint32_t peer_max = nghttp2_session_get_remote_settings(u->h2, NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE);
    if (list > peer_max) {
        SC_WARN_LIMITED(&s->route->log_limit, "upstream %s: request head for %.*s is %u bytes, more than %s accepts "
                        "(SETTINGS_MAX_HEADER_LIST_SIZE %u): not sent", s->route->name, (int)SC_MIN(m->path_len, 200),
                        m->path, list, u->super.peer_text, peer_max);
        s->up_send_error = NGHTTP2_ERR_FRAME_SIZE_ERROR;
        return -E2BIG;
    }
    nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
    bool no_body = s->reqp.eof && sc_buf_len(&s->reqp.buf) == 0 && s->reqp.n_trailers == 0;
    int32_t sid = nghttp2_submit_request(u->h2, NULL, nva, k, no_body ? NULL : &prd, s);
    if (sid == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
        return -EAGAIN;
    if (sid < 0)
        return -EPROTO;
    if (no_body)
        s->flags |= SC_ST_F_REQ_SENT;
    s->up_sid = sid;
    s->up = &u->super;
    s->up_head_sent = true;
    sc_list_push(&u->pending, &s->up_link);
    sc_stream_bound(s);
    u->n_streams++;
    if (!(u->super.flags & SC_CONN_F_CONNECTING))
        sc_conn_deadline_clear(&u->super);
    sc_conn_mark_dirty(&u->super);
    return 0;
}

static sc_up_conn *new_conn(sc_stream *s, int *err);
static void conn_maybe_idle(sc_up_conn *u);
static const sc_conn_ops up_h2_ops;

/* The request head cannot be sent, on any connection: `why` says whose fault. */
static void head_unsendable(sc_stream *s, sc_fail why)
{
    if (why == SC_FAIL_HEADERS_TOO_LARGE)
        sc_stream_fail_msg(s, "upstream %s: the request head is larger than the instance accepts "
                           "(its SETTINGS_MAX_HEADER_LIST_SIZE) or than HTTP/2 can send", s->route->name);
    sc_stream_upstream_failed(s, why);
}

static void attach(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route_state *rs = sc_rstate(w, s->route);
    sc_up_conn *u;
again:
    u = NULL;
    for (sc_link *l = rs->h2_conns.next; l != &rs->h2_conns; l = l->next) {
        sc_up_conn *x = SC_CONTAINER_OF(l, sc_up_conn, super.link);
        if (x->goaway || x->n_streams >= x->max_streams || x->super.peer_len != s->up_addr_len ||
            memcmp(&x->super.peer, &s->up_addr, s->up_addr_len) != 0)
            continue;
        u = x;
        break;
    }
    if (!u) {
        int err = 0;
        u = new_conn(s, &err);
        if (!u) {
            if (err == -EUSERS) { /* bulkhead.max_connections */
                sc_stream_upstream_failed(s, SC_FAIL_OVERLOAD);
                return;
            }
            SC_WARN_LIMITED(&s->route->log_limit, "upstream %s: cannot connect: %s", s->route->name, strerror(-err));
            sc_stream_upstream_failed(s, SC_FAIL_CONNECT);
            return;
        }
    }
    int rv = submit(u, s);
    if (rv == -EAGAIN && !u->goaway) {
        u->goaway = true; /* stream ids used up: no new streams here, the next attempt opens a connection */
        conn_maybe_idle(u);
        goto again;
    }
    if (rv == -E2BIG)
        head_unsendable(s, SC_FAIL_HEADERS_TOO_LARGE);
    else if (rv < 0)
        sc_stream_upstream_failed(s, SC_FAIL_PROTOCOL);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    sc_stream *s = get_stream(user_data, frame->hd.stream_id);
    if (s && s->resp.head_done)
        s->up_hdr_bytes = 0; /* trailers: a field section of their own, with a budget of their own */
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    (void)session;
    sc_up_conn *u = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    sc_stream *s = get_stream(u, frame->hd.stream_id);
    if (!s)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    uint32_t limit = s->w->sc->cfg->limits.max_header_bytes;
    uint32_t total = sc_hdr_list_add(&s->up_hdr_bytes, namelen, valuelen);
    if (total > limit) {
        SC_WARN_LIMITED(&s->route->log_limit, "upstream %s: %s sent response %s over %u bytes (limits.max_header_bytes "
                        "%u, counted as HPACK does, informational responses included): stream reset, request failed",
                        s->route->name, u->super.peer_text, s->resp.head_done ? "trailers" : "header fields", total,
                        limit);
        sc_stream_upstream_failed(s, SC_FAIL_PROTOCOL); /* resets the upstream stream (cancel) */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    if (sc_lit_eq(name, namelen, "grpc-status"))
        s->grpc_status = sc_grpc_status_wire(value, valuelen);
    if (s->resp.head_done) {
        return sc_pipe_add_trailer_lower(s, &s->respp, n, namelen, v, valuelen, flags) < 0
                   ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
                   : 0;
    }
    if (sc_lit_eq(name, namelen, ":status")) {
        int st = 0;
        for (size_t i = 0; i < valuelen; i++)
            st = st * 10 + (v[i] - '0');
        s->resp.status = st;
        return 0;
    }
    if (sc_lit_eq(name, namelen, "content-length")) {
        int64_t cl = 0;
        for (size_t i = 0; i < valuelen; i++)
            cl = cl * 10 + (v[i] - '0');
        s->resp.content_length = cl;
        return 0;
    }
    return sc_msg_add_lower(s, &s->resp, n, namelen, v, valuelen, flags) < 0 ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    sc_up_conn *u = user_data;
    sc_stream *s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = get_stream(u, frame->hd.stream_id);
        if (!s)
            return 0;
        if (!s->resp.head_done) {
            if (s->resp.status < 200) {
                if (++s->n_informational > MAX_INFORMATIONAL) {
                    SC_WARN_LIMITED(&s->route->log_limit, "upstream %s: %s sent more than %d informational (1xx) "
                                    "responses on one stream: stream reset, request failed", s->route->name,
                                    u->super.peer_text, MAX_INFORMATIONAL);
                    sc_stream_upstream_failed(s, SC_FAIL_PROTOCOL);
                    return 0;
                }
                sc_stream_resp_informational(s, s->resp.status, s->resp.hdrs, s->resp.n_hdrs);
                s->resp.n_hdrs = 0;
                s->resp.status = 0;
                return 0;
            }
            s->resp.head_done = true;
        }
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            s->respp.eof = true;
        sc_stream_resp_progress(s);
        break;
    case NGHTTP2_DATA:
        s = get_stream(u, frame->hd.stream_id);
        if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            s->respp.eof = true;
            sc_stream_resp_progress(s);
        }
        break;
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) {
            u->max_streams = nghttp2_session_get_remote_settings(session, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
            u->settings_seen = true;
        }
        break;
    case NGHTTP2_GOAWAY:
        u->goaway = true;
        SC_DEBUG("upstream %s: %s sent GOAWAY (last stream %d); new requests go to another connection",
                 u->super.route->name, u->super.peer_text, frame->goaway.last_stream_id);
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *user_data)
{
    (void)flags;
    sc_stream *s = get_stream(user_data, sid);
    if (!s) {
        nghttp2_session_consume(session, sid, len);
        return 0;
    }
    if (sc_pipe_put(s, &s->respp, data, len) < 0) /* more than the window we granted */
        return nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_FLOW_CONTROL_ERROR) == 0
                   ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    s->up_unconsumed += (uint32_t)len;
    sc_stream_resp_progress(s);
    return 0;
}

static void conn_maybe_idle(sc_up_conn *u)
{
    if (u->n_streams)
        return;
    if (u->goaway) {
        sc_conn_close_after_flush(&u->super);
        return;
    }
    sc_up_conn_idle(u);
}

/* nghttp2's reasons for not sending a request head that another connection
 * may well send: this one is going away. */
static bool resend_allowed(int lib_error)
{
    return lib_error == NGHTTP2_ERR_START_STREAM_NOT_ALLOWED || lib_error == NGHTTP2_ERR_SESSION_CLOSING ||
           lib_error == NGHTTP2_ERR_STREAM_CLOSING || lib_error == NGHTTP2_ERR_STREAM_CLOSED;
}

/* Why nghttp2 could not send a request head: its block was longer than
 * nghttp2 sends (FRAME_SIZE_ERROR: 431), or the HPACK encoder failed
 * (HEADER_COMP). The block cap is set above limits.max_header_bytes (see
 * sc_h2_session_option) and heads over the limit never get this far, so an
 * encoder failure is the sidecar's (no memory), not the request's. */
static sc_fail unsendable_head_fail(int lib_error)
{
    if (lib_error == NGHTTP2_ERR_FRAME_SIZE_ERROR)
        return SC_FAIL_HEADERS_TOO_LARGE;
    if (lib_error == NGHTTP2_ERR_HEADER_COMP || lib_error == NGHTTP2_ERR_NOMEM)
        return SC_FAIL_NO_MEMORY;
    return SC_FAIL_REFUSED_STREAM;
}

/* A frame nghttp2 dropped instead of sending: for a request head, remembered
 * so that the stream's close (REFUSED_STREAM, see on_stream_close) is not
 * taken for the upstream's refusal and re-sent forever. */
static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame, int lib_error_code, void *user_data)
{
    (void)session;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    sc_stream *s = get_stream(user_data, frame->hd.stream_id);
    if (s)
        s->up_send_error = lib_error_code;
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error_code, void *user_data)
{
    sc_up_conn *u = user_data;
    sc_stream *s = get_stream(u, sid);
    if (!s)
        return 0;
    sc_h2_set_stream(&u->last, session, sid, NULL);
    if (s->up_unconsumed) {
        nghttp2_session_consume_connection(session, s->up_unconsumed);
        s->up_unconsumed = 0;
    }
    sc_list_remove(&s->up_link);
    u->n_streams--;
    s->up = NULL;
    if (s->respp.eof && error_code == NGHTTP2_NO_ERROR) {
        sc_stream_upstream_done(s);
    } else if (s->up_send_error && !resend_allowed(s->up_send_error)) {
        /* nghttp2 could not send the request head: it never will, on any connection. */
        SC_WARN_LIMITED(&s->route->log_limit, "upstream %s: request head for %.*s could not be sent to %s: %s",
                        s->route->name, (int)SC_MIN(s->req.path_len, 200), s->req.path, u->super.peer_text,
                        nghttp2_strerror(s->up_send_error));
        head_unsendable(s, unsendable_head_fail(s->up_send_error));
    } else if (error_code == NGHTTP2_REFUSED_STREAM && !s->resp.head_done && s->req_sent == 0) {
        /* Never processed (GOAWAY or refused): safe to send on another
         * connection, a bounded number of times. */
        if (s->refused_attempt != s->attempt) {
            s->refused_attempt = s->attempt;
            s->refused_resends = 0;
        }
        if (s->refused_resends >= MAX_REFUSED_RESENDS) {
            SC_WARN_LIMITED(&s->route->log_limit, "upstream %s: stream refused by %s again after %d re-sends "
                            "(REFUSED_STREAM or GOAWAY): request failed", s->route->name, u->super.peer_text,
                            MAX_REFUSED_RESENDS);
            sc_stream_upstream_failed(s, SC_FAIL_REFUSED_STREAM);
        } else {
            s->refused_resends++;
            s->flags &= ~(SC_ST_F_DEFERRED_UP | SC_ST_F_REQ_SENT);
            s->up_head_sent = false;
            attach(s);
        }
    } else if (s->respp.eof) {
        sc_stream_upstream_done(s);
    } else {
        SC_DEBUG("upstream %s: stream reset by %s (%s)", u->super.route->name, u->super.peer_text,
                 nghttp2_http2_strerror(error_code));
        sc_stream_upstream_failed(s, SC_FAIL_RESET);
    }
    conn_maybe_idle(u);
    return 0;
}

static void stream_event(sc_stream *s)
{
    sc_up_conn *u = SC_UP(s->up);
    if (s->flags & SC_ST_F_DEFERRED_UP) {
        s->flags &= ~SC_ST_F_DEFERRED_UP;
        nghttp2_session_resume_data(u->h2, s->up_sid);
    }
    sc_conn_mark_dirty(&u->super);
}

static void consumed(sc_stream *s, size_t n)
{
    n = SC_MIN(n, s->up_unconsumed);
    s->up_unconsumed -= (uint32_t)n;
    nghttp2_session_consume(SC_UP(s->up)->h2, s->up_sid, n);
    sc_conn_mark_dirty(s->up);
}

static void cancel(sc_stream *s)
{
    sc_up_conn *u = SC_UP(s->up);
    sc_h2_set_stream(&u->last, u->h2, s->up_sid, NULL);
    if (s->up_unconsumed) {
        nghttp2_session_consume_connection(u->h2, s->up_unconsumed);
        s->up_unconsumed = 0;
    }
    if (nghttp2_submit_rst_stream(u->h2, NGHTTP2_FLAG_NONE, s->up_sid, NGHTTP2_CANCEL) != 0)
        u->goaway = true; /* the stream stays open upstream: retire the connection once the others end */
    sc_list_remove(&s->up_link);
    u->n_streams--;
    s->up = NULL;
    sc_conn_mark_dirty(&u->super);
    conn_maybe_idle(u);
}

static void on_readable(sc_conn *c)
{
    int rv = sc_h2_feed(c, SC_UP(c)->h2, -ECONNRESET);
    if (rv < 0) {
        SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: HTTP/2 protocol error from %s: %s", c->route->name, c->peer_text, nghttp2_strerror(rv));
        sc_conn_close(c, -EPROTO);
    }
}

static int produce(sc_conn *c)
{
    sc_up_conn *u = SC_UP(c);
    int rv = sc_h2_produce(c, u->h2);
    if (rv < 0)
        return rv;
    /* nghttp2 ended the session itself (e.g. a header block it could not
     * compress: GOAWAY, streams left open): once that is out, close, so the
     * streams fail now instead of at their deadline. */
    if (!nghttp2_session_want_read(u->h2) && !nghttp2_session_want_write(u->h2) && sc_buf_len(&c->out) == 0 &&
        !c->pend_len)
        return -ECONNRESET;
    return 0;
}

static void on_close(sc_conn *c, int err)
{
    sc_up_conn *u = SC_UP(c);
    sc_route_stats *rs = &c->w->stats->routes[c->route->index];
    SC_STAT_DEC(rs->upstream_conns);
    sc_rstate(c->w, c->route)->n_conns--;
    sc_bulkhead_conn_release(&c->route->bulkhead);
    sc_fail why = SC_FAIL_RESET;
    if (c->flags & SC_CONN_F_CONNECTING) {
        why = err == -ETIMEDOUT ? SC_FAIL_CONNECT_TIMEOUT : SC_FAIL_CONNECT;
        if (why == SC_FAIL_CONNECT)
            SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: connect to %s failed: %s", c->route->name, c->peer_text, strerror(-err));
    } else if (err && err != -ECANCELED && u->n_streams) {
        SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: connection to %s lost with %u streams in flight: %s", c->route->name, c->peer_text,
                u->n_streams, strerror(-err));
    }
    while (!sc_list_empty(&u->pending)) {
        sc_stream *s = SC_CONTAINER_OF(u->pending.next, sc_stream, up_link);
        sc_list_remove(&s->up_link);
        s->up = NULL;
        if (s->respp.eof)
            sc_stream_upstream_done(s);
        else
            sc_stream_upstream_failed(s, why);
    }
    nghttp2_session_del(u->h2);
    u->h2 = NULL;
}

static void on_connected(sc_conn *c)
{
    sc_up_conn *u = SC_UP(c);
    for (sc_link *l = u->pending.next; l != &u->pending; l = l->next)
        sc_stream_connected(SC_CONTAINER_OF(l, sc_stream, up_link));
    conn_maybe_idle(u); /* up with no stream left (they went while it connected) */
}

static const sc_conn_ops up_h2_ops = {
    .flags = SC_CONN_OPS_UPSTREAM,
    .on_connected = on_connected,
    .on_readable = on_readable,
    .produce = produce,
    .on_close = on_close,
    .on_drained = NULL,
};

const sc_up_codec sc_up_h2_codec = {
    .name = "http2",
    .attach = attach,
    .stream_event = stream_event,
    .consumed = consumed,
    .cancel = cancel,
};

const sc_up_codec *sc_up_codec_for(sc_proto p)
{
    return p == SC_PROTO_HTTP1 ? &sc_up_h1_codec : &sc_up_h2_codec;
}

static nghttp2_session_callbacks *g_callbacks;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_callbacks(void)
{
    nghttp2_session_callbacks_new(&g_callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(g_callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(g_callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(g_callbacks, on_frame_not_send);
    nghttp2_session_callbacks_set_on_frame_recv_callback(g_callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(g_callbacks, on_stream_close);
}

static sc_up_conn *new_conn(sc_stream *s, int *err)
{
    pthread_once(&g_once, init_callbacks);
    sc_up_conn *u = sc_up_conn_new(s->w, s->route, (struct sockaddr *)&s->up_addr, s->up_addr_len, &up_h2_ops, err);
    if (!u)
        return NULL;
    const sc_config *cfg = s->w->sc->cfg;
    nghttp2_option *opt = sc_h2_session_option(cfg);
    if (opt)
        nghttp2_option_set_peer_max_concurrent_streams(opt, DEFAULT_MAX_STREAMS);
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->limits.stream_buffer},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->limits.max_header_bytes},
    };
    if (!opt || nghttp2_session_client_new3(&u->h2, g_callbacks, u, opt, &s->w->h2mem) != 0 ||
        nghttp2_submit_settings(u->h2, NGHTTP2_FLAG_NONE, iv, SC_ARRAY_LEN(iv)) != 0 ||
        nghttp2_session_set_local_window_size(u->h2, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0) {
        nghttp2_option_del(opt);
        *err = -ENOMEM;
        sc_conn_close(&u->super, -ENOMEM);
        return NULL;
    }
    nghttp2_option_del(opt);
    u->max_streams = DEFAULT_MAX_STREAMS;
    sc_list_push(&sc_rstate(s->w, s->route)->h2_conns, &u->super.link);
    return u;
}

/*
 * down_h2.c: a caller's HTTP/2 (h2c prior knowledge, gRPC) connection, on an
 * nghttp2 server session fed from memory. Flow control is manual
 * (no_auto_window_update): request DATA is acknowledged with WINDOW_UPDATE
 * only when the upstream has taken it from the stream's pipe, so a slow
 * upstream slows the caller and each stream buffers at most its window.
 */
#include "core/log.h"
#include "http/grpc.h"
#include "proxy/conns.h"
#include "sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define CONN_WINDOW (16 * 1024 * 1024)

static sc_stream *get_stream(nghttp2_session *session, int32_t sid)
{
    return nghttp2_session_get_stream_user_data(session, sid);
}

static void arm_idle(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    ev_timer_stop(c->w->loop, &c->timer);
    if (d->n_streams == 0 && c->route->timeouts->idle_ms) {
        ev_timer_set(&c->timer, (double)c->route->timeouts->idle_ms / 1000.0, 0);
        ev_timer_start(c->w->loop, &c->timer);
    }
}

/* Detaches the stream from the session and tells the stream the caller's side ended. */
static void detach(sc_down_conn *d, sc_stream *s, bool aborted)
{
    nghttp2_session_set_stream_user_data(d->h2, s->down_sid, NULL);
    if (s->down_unconsumed) {
        nghttp2_session_consume_connection(d->h2, s->down_unconsumed);
        s->down_unconsumed = 0;
    }
    d->n_streams--;
    sc_stream_downstream_done(s, aborted);
    arm_idle(&d->super);
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    sc_down_conn *d = user_data;
    sc_conn *c = &d->super;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (c->w->draining) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    sc_stream *s = sc_stream_new(c->w, c->route, c, frame->hd.stream_id);
    if (!s) {
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_INTERNAL_ERROR);
        return 0;
    }
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s);
    d->n_streams++;
    ev_timer_stop(c->w->loop, &c->timer);
    return 0;
}

static bool eq(const uint8_t *a, size_t alen, const char *lit)
{
    size_t l = strlen(lit);
    return alen == l && memcmp(a, lit, l) == 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    (void)flags;
    (void)user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    sc_stream *s = get_stream(session, frame->hd.stream_id);
    if (!s)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* Request trailers (client-streaming gRPC rarely sends them). */
        return sc_pipe_add_trailer(s, &s->reqp, n, namelen, v, valuelen) < 0 ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
    }
    sc_msg *m = &s->req;
    if (namelen && n[0] == ':') {
        char *dup = sc_arena_dup(&s->arena, v, valuelen);
        if (!dup)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (eq(name, namelen, ":method")) {
            m->method = dup;
            m->method_len = valuelen;
            if (eq(value, valuelen, "HEAD"))
                s->flags |= SC_ST_F_HEAD_REQ;
        } else if (eq(name, namelen, ":path")) {
            m->path = dup;
            m->path_len = valuelen;
        } else if (eq(name, namelen, ":authority")) {
            m->authority = dup;
            m->authority_len = valuelen;
        } else if (eq(name, namelen, ":scheme")) {
            m->scheme = dup;
        }
        return 0;
    }
    if (eq(name, namelen, "content-length")) {
        int64_t cl = 0;
        for (size_t i = 0; i < valuelen; i++)
            cl = cl * 10 + (v[i] - '0'); /* nghttp2 validated the digits */
        m->content_length = cl;
        return 0;
    }
    if (eq(name, namelen, "host")) {
        if (!m->authority) {
            m->authority = sc_arena_dup(&s->arena, v, valuelen);
            m->authority_len = valuelen;
        }
        return 0;
    }
    if (eq(name, namelen, "content-type") && sc_grpc_is_content_type(v, valuelen))
        m->is_grpc = true;
    if (eq(name, namelen, "te"))
        s->down_te_trailers = true;
    if (eq(name, namelen, s->w->sc->cfg->tls.identity_header))
        return 0; /* only ever set by the sidecar, from a verified certificate */
    return sc_msg_add(s, m, n, namelen, v, valuelen) < 0 ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    sc_stream *s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = get_stream(session, frame->hd.stream_id);
        if (!s)
            return 0;
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            s->reqp.eof = true;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            sc_down_conn *d = user_data;
            if (d->identity && s->route->inbound) {
                const char *idh = s->w->sc->cfg->tls.identity_header;
                if (sc_msg_add(s, &s->req, idh, strlen(idh), d->identity, strlen(d->identity)) < 0) {
                    /* Out of memory: without the header the app would take the call as anonymous. */
                    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                              NGHTTP2_INTERNAL_ERROR);
                    return 0;
                }
            }
            s->req.head_done = true;
            if (!s->req.authority) {
                s->req.authority = "";
            }
            if (s->reqp.eof && s->req.content_length < 0 && s->req.method &&
                !(eq((const uint8_t *)s->req.method, s->req.method_len, "GET") ||
                  eq((const uint8_t *)s->req.method, s->req.method_len, "HEAD")))
                s->req.content_length = 0;
            sc_stream_start(s);
        } else {
            sc_stream_req_progress(s);
        }
        break;
    case NGHTTP2_DATA:
        s = get_stream(session, frame->hd.stream_id);
        if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            s->reqp.eof = true;
            sc_stream_req_progress(s);
        }
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
    (void)user_data;
    sc_stream *s = get_stream(session, sid);
    if (!s || (s->flags & SC_ST_F_UP_DONE)) {
        /* Nobody will read it: give the window back at once. */
        nghttp2_session_consume(session, sid, len);
        return 0;
    }
    if (sc_pipe_put(s, &s->reqp, data, len) < 0) {
        /* More than the window we granted: the peer broke flow control. */
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_FLOW_CONTROL_ERROR);
        return 0;
    }
    s->down_unconsumed += (uint32_t)len;
    sc_stream_req_progress(s);
    return 0;
}

#define H2_RESET_BURST 1000
#define H2_RESET_RATE 33

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    sc_down_conn *d = user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY && !d->goaway_sent &&
        (frame->goaway.error_code == NGHTTP2_INTERNAL_ERROR || frame->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM)) {
        /* Not ours (drain sends NO_ERROR): nghttp2 ended the session itself,
         * which it does when the caller resets streams faster than the
         * stream reset rate limit ("rapid reset", CVE-2023-44487). */
        d->goaway_sent = true;
        sc_conn *c = &d->super;
        SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_H2_FLOOD]);
        SC_WARN_LIMITED(&c->route->log_limit,
                        "%s listener: HTTP/2 caller %s reset streams faster than %d/s (burst %d): GOAWAY, "
                        "no new streams on this connection", c->route->name, c->peer_text, H2_RESET_RATE,
                        H2_RESET_BURST);
    }
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        sc_stream *s = get_stream(session, frame->hd.stream_id);
        if (s) {
            s->flags |= SC_ST_F_DOWN_RESP_END;
            /* Response complete while the caller still sends: tell it to stop. */
            if (!s->reqp.eof)
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR);
        }
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error_code, void *user_data)
{
    (void)error_code;
    sc_down_conn *d = user_data;
    sc_stream *s = get_stream(session, sid);
    if (s)
        detach(d, s, !(s->flags & SC_ST_F_DOWN_RESP_END));
    return 0;
}

static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *data_flags,
                         nghttp2_data_source *source, void *user_data)
{
    (void)user_data;
    sc_stream *s = source->ptr;
    if (!s || get_stream(session, sid) != s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = SC_MIN(length, sc_buf_len(&s->respp.buf));
    if (n) {
        memcpy(buf, sc_buf_head(&s->respp.buf), n);
        sc_buf_consume(&s->respp.buf, n);
        sc_stream_resp_drained(s, n);
    }
    if (sc_buf_len(&s->respp.buf) == 0 && s->respp.eof) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->respp.n_trailers) {
            /* Not queued (out of memory): reset rather than leave the stream open for ever. */
            if (nghttp2_submit_trailer(session, sid, s->respp.trailers, s->respp.n_trailers) != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)n;
    }
    if (n == 0) {
        if (s->fail && !s->respp.eof)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* upstream died mid-body: RST */
        s->flags |= SC_ST_F_DEFERRED_DOWN;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static bool resp_hop(const nghttp2_nv *nv)
{
    static const char *const hop[] = {"connection", "keep-alive", "proxy-connection", "transfer-encoding",
                                      "upgrade", "te", "trailer", "content-length", "host"};
    for (size_t i = 0; i < SC_ARRAY_LEN(hop); i++)
        if (eq(nv->name, nv->namelen, hop[i]))
            return true;
    return false;
}

static int submit_head(sc_down_conn *d, sc_stream *s)
{
    nghttp2_nv stack[64];
    size_t n = s->resp.n_hdrs + 2;
    nghttp2_nv *nva = n <= SC_ARRAY_LEN(stack) ? stack : sc_arena_alloc(&s->arena, n * sizeof(*nva));
    if (!nva)
        return -ENOMEM;
    char status[8], cl[24];
    snprintf(status, sizeof(status), "%d", s->resp.status);
    size_t k = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, strlen(status), NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < s->resp.n_hdrs; i++)
        if (!resp_hop(&s->resp.hdrs[i]))
            nva[k++] = s->resp.hdrs[i];
    bool no_body = (s->flags & SC_ST_F_HEAD_REQ) || s->resp.status == 204 || s->resp.status == 304;
    if (s->resp.content_length >= 0 && s->resp.status != 204) {
        snprintf(cl, sizeof(cl), "%lld", (long long)s->resp.content_length);
        nva[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)cl, 14, strlen(cl), NGHTTP2_NV_FLAG_NONE};
    }
    int rv;
    if (no_body || (s->respp.eof && sc_buf_len(&s->respp.buf) == 0 && s->respp.n_trailers == 0)) {
        rv = nghttp2_submit_response(d->h2, s->down_sid, nva, k, NULL);
        sc_buf_release(s->w, &s->respp.buf);
    } else {
        nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
        rv = nghttp2_submit_response(d->h2, s->down_sid, nva, k, &prd);
    }
    if (rv < 0)
        return -EPROTO;
    s->flags |= SC_ST_F_DOWN_HEAD_SENT;
    return 0;
}

void sc_down_h2_stream_event(sc_stream *s)
{
    sc_down_conn *d = SC_DOWN(s->down);
    if (!s->resp.head_done)
        return;
    if (!(s->flags & SC_ST_F_DOWN_HEAD_SENT)) {
        if (submit_head(d, s) < 0) {
            nghttp2_submit_rst_stream(d->h2, NGHTTP2_FLAG_NONE, s->down_sid, NGHTTP2_INTERNAL_ERROR);
        }
    } else if (s->fail && !s->respp.eof) {
        nghttp2_submit_rst_stream(d->h2, NGHTTP2_FLAG_NONE, s->down_sid, NGHTTP2_INTERNAL_ERROR);
    } else if (s->flags & SC_ST_F_DEFERRED_DOWN) {
        s->flags &= ~SC_ST_F_DEFERRED_DOWN;
        nghttp2_session_resume_data(d->h2, s->down_sid);
    }
    sc_conn_mark_dirty(&d->super);
}

void sc_down_h2_informational(sc_stream *s, int status, const nghttp2_nv *nv, size_t n)
{
    if (status == 100 || status == 101 || n > 60)
        return;
    sc_down_conn *d = SC_DOWN(s->down);
    nghttp2_nv nva[64];
    char st[8];
    snprintf(st, sizeof(st), "%d", status);
    size_t k = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)st, 7, strlen(st), NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < n; i++)
        if (!resp_hop(&nv[i]))
            nva[k++] = nv[i];
    nghttp2_submit_headers(d->h2, NGHTTP2_FLAG_NONE, s->down_sid, NULL, nva, k, NULL);
    sc_conn_mark_dirty(&d->super);
}

/* nghttp2 refused the caller's bytes (rv < 0): counted and logged; the caller closes. */
static void recv_failed(sc_conn *c, int rv)
{
    if (rv == NGHTTP2_ERR_FLOODED) {
        /* It sent PING/SETTINGS (or frames we must answer) faster than it
         * read our answers: nghttp2 stops queueing answers past its limit. */
        SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_H2_FLOOD]);
        SC_WARN_LIMITED(&c->route->log_limit,
                        "%s listener: HTTP/2 flood from %s: control frames that need an answer come faster "
                        "than it reads the answers; connection closed", c->route->name, c->peer_text);
    } else {
        SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_H2_PROTOCOL]);
        SC_DEBUG("%s listener: HTTP/2 protocol error from %s: %s", c->route->name, c->peer_text, nghttp2_strerror(rv));
    }
}

static void on_readable(sc_conn *c)
{
    int rv = sc_h2_feed(c, SC_DOWN(c)->h2, 0);
    if (rv < 0) {
        recv_failed(c, rv);
        sc_conn_close(c, -EPROTO);
    }
}

static int produce(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    int rv = sc_h2_produce(c, d->h2);
    if (rv < 0)
        return rv;
    if (!nghttp2_session_want_read(d->h2) && !nghttp2_session_want_write(d->h2) && sc_buf_len(&c->out) == 0 &&
        !c->pend_len)
        return -ECONNRESET; /* both sides said goodbye */
    return 0;
}

static void on_drained(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    if (d->goaway_sent && d->n_streams == 0)
        sc_conn_close(c, 0);
}

static void on_close(sc_conn *c, int err)
{
    (void)err;
    sc_down_conn *d = SC_DOWN(c);
    free(d->identity);
    d->identity = NULL;
    if (d->h2) {
        /* Each live stream is told its caller is gone. */
        sc_link *l = c->w->streams.next;
        while (l != &c->w->streams) {
            sc_stream *s = SC_CONTAINER_OF(l, sc_stream, wlink);
            l = l->next;
            if (s->down == c && !(s->flags & SC_ST_F_DOWN_DONE)) {
                d->n_streams--;
                sc_stream_downstream_done(s, true);
            }
        }
        nghttp2_session_del(d->h2);
        d->h2 = NULL;
    }
    c->w->n_down_conns--;
    SC_STAT_DEC(c->w->stats->down_conns);
}

static void idle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_conn *c = SC_CONTAINER_OF(t, sc_conn, timer);
    sc_down_conn *d = SC_DOWN(c);
    if (d->n_streams)
        return;
    nghttp2_submit_goaway(d->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(d->h2),
                          NGHTTP2_NO_ERROR, NULL, 0);
    d->goaway_sent = true;
    sc_conn_close_after_flush(c);
}

const sc_conn_ops sc_down_h2_ops = {
    .kind = SC_CONN_DOWN_H2,
    .on_readable = on_readable,
    .produce = produce,
    .on_close = on_close,
    .on_drained = on_drained,
};

static nghttp2_session_callbacks *g_callbacks;
static nghttp2_option *g_option;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_callbacks(void)
{
    nghttp2_session_callbacks_new(&g_callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(g_callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(g_callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(g_callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(g_callbacks, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(g_callbacks, on_stream_close);
    nghttp2_option_new(&g_option);
    nghttp2_option_set_no_auto_window_update(g_option, 1);
    /* Callers' floods (nghttp2's defaults, spelled out): at most 1000 queued
     * answers to PING/SETTINGS (else NGHTTP2_ERR_FLOODED), and stream resets
     * by the caller limited to a burst of H2_RESET_BURST refilled at
     * H2_RESET_RATE per second (else GOAWAY; see on_frame_send). */
    nghttp2_option_set_max_outbound_ack(g_option, 1000);
    nghttp2_option_set_stream_reset_rate_limit(g_option, H2_RESET_BURST, H2_RESET_RATE);
}

int sc_down_h2_upgrade(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    pthread_once(&g_once, init_callbacks);
    if (nghttp2_session_server_new2(&d->h2, g_callbacks, d, g_option) != 0)
        return -ENOMEM;
    const sc_config *cfg = c->w->sc->cfg;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->limits.h2_max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->limits.stream_buffer},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->limits.max_header_bytes},
    };
    if (nghttp2_submit_settings(d->h2, NGHTTP2_FLAG_NONE, iv, SC_ARRAY_LEN(iv)) != 0 ||
        nghttp2_session_set_local_window_size(d->h2, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0) {
        /* Out of memory: without our SETTINGS the caller would wait for ever. */
        nghttp2_session_del(d->h2);
        d->h2 = NULL;
        return -ENOMEM;
    }
    c->ops = &sc_down_h2_ops;
    ev_timer_stop(c->w->loop, &c->timer);
    ev_set_cb(&c->timer, idle_cb);
    arm_idle(c);
    if (sc_buf_len(&c->in)) {
        ssize_t rv = nghttp2_session_mem_recv(d->h2, (const uint8_t *)sc_buf_head(&c->in), sc_buf_len(&c->in));
        sc_buf_release(c->w, &c->in);
        if (rv < 0) {
            recv_failed(c, (int)rv);   /* the bytes read before the switch to HTTP/2 */
            return -EPROTO;
        }
    }
    sc_conn_mark_dirty(c);
    return 0;
}

void sc_down_h2_drain(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    if (d->goaway_sent)
        return;
    nghttp2_submit_goaway(d->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(d->h2),
                          NGHTTP2_NO_ERROR, NULL, 0);
    d->goaway_sent = true;
    sc_conn_mark_dirty(c);
    if (d->n_streams == 0)
        sc_conn_close_after_flush(c);
}

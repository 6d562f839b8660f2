/*
 * fail.c: the failure table (fail.h) and the sidecar's own answers built
 * from it.
 */
#include "proxy/fail.h"
#include "proxy/stage.h"

#include "http/grpc.h"
#include "proxy/codec.h"
#include "sidecar.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define ST(field) ((uint16_t)offsetof(sc_route_stats, field))

const sc_fail_info sc_fail_table[SC_FAIL_KINDS] = {
    [SC_FAIL_NONE] = {"none", "failed", 503, SC_GRPC_UNAVAILABLE, 0, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_NO_INSTANCE] = {"no-healthy-instance", "no healthy instance to send the request to", 503,
                             SC_GRPC_UNAVAILABLE, SC_FAIL_F_QUIET, ST(no_instance), 0},
    [SC_FAIL_CONNECT] = {"connect-failure", "connection to the instance failed", 503, SC_GRPC_UNAVAILABLE, 0,
                         ST(connect_failures), SC_COND_CONNECT_FAILURE},
    [SC_FAIL_CONNECT_TIMEOUT] = {"connect-timeout", "connection to the instance timed out (timeouts.connect)", 503,
                                 SC_GRPC_UNAVAILABLE, 0, ST(connect_timeouts), SC_COND_CONNECT_FAILURE},
    [SC_FAIL_RESET] = {"upstream-reset", "the instance reset or closed the connection before the response ended", 502,
                       SC_GRPC_UNAVAILABLE, 0, ST(resets), SC_COND_RESET},
    [SC_FAIL_PROTOCOL] = {"upstream-protocol-error", "the instance sent an invalid response", 502, SC_GRPC_INTERNAL, 0,
                          ST(resets), SC_COND_RESET},
    [SC_FAIL_TIMEOUT] = {"upstream-timeout", "request timed out (deadline from timeouts.request or grpc-timeout)", 504,
                         SC_GRPC_DEADLINE_EXCEEDED, 0, ST(timeouts), SC_COND_TIMEOUT},
    [SC_FAIL_DRAINING] = {"draining", "the sidecar is shutting down", 503, SC_GRPC_UNAVAILABLE, 0, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_OVERLOAD] = {"bulkhead-full", "bulkhead full: max_concurrent requests in flight and the queue is full",
                          503, SC_GRPC_RESOURCE_EXHAUSTED, SC_FAIL_F_QUIET, ST(bulkhead_rejections), 0},
    [SC_FAIL_QUEUE_TIMEOUT] = {"bulkhead-queue-timeout",
                               "waited in the bulkhead queue longer than bulkhead.queue_timeout", 503,
                               SC_GRPC_RESOURCE_EXHAUSTED, 0, ST(bulkhead_rejections), 0},
    [SC_FAIL_CIRCUIT_OPEN] = {"circuit-open", "circuit breaker open: calls fail fast until it half-opens", 503,
                              SC_GRPC_UNAVAILABLE, SC_FAIL_F_QUIET, ST(breaker_rejections), 0},
    [SC_FAIL_TRY_TIMEOUT] = {"upstream-per-try-timeout",
                             "the attempt timed out (timeouts.per_try) and no retry was possible", 504,
                             SC_GRPC_DEADLINE_EXCEEDED, 0, ST(timeouts), SC_COND_TIMEOUT},
    [SC_FAIL_REFUSED_STREAM] = {"upstream-refused-stream", "the instance refused the stream", 503,
                                SC_GRPC_UNAVAILABLE, 0, ST(resets), SC_COND_REFUSED_STREAM},
    [SC_FAIL_FORBIDDEN] = {"caller-not-allowed", "the caller's identity is not in tls.allow", 403,
                           SC_GRPC_PERMISSION_DENIED, 0, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_AUTHZ_UNAVAILABLE] = {"authz-unavailable", "Consul could not say whether the caller may call", 503,
                                   SC_GRPC_UNAVAILABLE, 0, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_JWT_UNAUTHENTICATED] = {"jwt-invalid", "no valid JWT (inbound.jwt)", 401, SC_GRPC_UNAUTHENTICATED, 0,
                                     SC_FAIL_NO_STAT, 0},
    [SC_FAIL_JWT_FORBIDDEN] = {"jwt-claims", "the JWT lacks a claim or scope this path requires (inbound.jwt)", 403,
                               SC_GRPC_PERMISSION_DENIED, 0, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_RATE_LIMITED] = {"rate-limited", "rate limit reached (rate_limits)", 429, SC_GRPC_RESOURCE_EXHAUSTED,
                              SC_FAIL_F_QUIET, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_RATE_LIMIT_UNAVAILABLE] = {"rate-limit-unavailable",
                                        "Redis could not decide a global rate limit (on_error: deny)", 503,
                                        SC_GRPC_UNAVAILABLE, SC_FAIL_F_QUIET, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_HEADERS_TOO_LARGE] = {"request-headers-too-large",
                                   "request header fields larger than limits.max_header_bytes", 431,
                                   SC_GRPC_RESOURCE_EXHAUSTED, SC_FAIL_F_REQUEST, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_METHOD_UNSUPPORTED] = {"method-not-supported", "CONNECT is not proxied (plain or extended CONNECT)", 501,
                                    SC_GRPC_UNIMPLEMENTED, SC_FAIL_F_REQUEST, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_BAD_REQUEST] = {"bad-request", "request refused as malformed (the sidecar's log says why)", 400,
                             SC_GRPC_INTERNAL, SC_FAIL_F_REQUEST, SC_FAIL_NO_STAT, 0},
    [SC_FAIL_NO_MEMORY] = {"sidecar-out-of-memory", "the sidecar could not allocate memory for this request", 503,
                           SC_GRPC_RESOURCE_EXHAUSTED, 0, SC_FAIL_NO_STAT, 0},
};

const char *sc_fail_reason(sc_fail f)
{
    return (unsigned)f < SC_FAIL_KINDS ? sc_fail_table[f].reason : "unknown";
}

#define MSG_MAX 768

void sc_stream_fail_msg(sc_stream *s, const char *fmt, ...)
{
    char msg[MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    s->fail_msg = sc_arena_dup(&s->arena, msg, SC_MIN((size_t)n, sizeof(msg) - 1));
}

int sc_stream_fail_header(sc_stream *s, const char *name, const char *value)
{
    if (!s->fail_hdrs && !(s->fail_hdrs = sc_arena_alloc(&s->arena, SC_FAIL_MAX_HEADERS * sizeof(nghttp2_nv))))
        return -ENOMEM;
    if (s->n_fail_hdrs >= SC_FAIL_MAX_HEADERS)
        return -ENOSPC;
    size_t nl = strlen(name), vl = strlen(value);
    char *n = sc_arena_dup(&s->arena, name, nl), *v = sc_arena_dup(&s->arena, value, vl);
    if (!n || !v)
        return -ENOMEM;
    for (size_t i = 0; i < nl; i++)
        n[i] = (char)(n[i] >= 'A' && n[i] <= 'Z' ? n[i] + 32 : n[i]);
    s->fail_hdrs[s->n_fail_hdrs++] = (nghttp2_nv){(uint8_t *)n, (uint8_t *)v, nl, vl, NGHTTP2_NV_FLAG_NONE};
    return 0;
}

/* The stage's own header fields (sc_stream_fail_header), then x-sidecar-reason
 * unless one of them replaced it. */
static void add_fail_headers(sc_stream *s, sc_msg *m, const sc_fail_info *fi)
{
    bool reason = false;
    for (size_t i = 0; i < s->n_fail_hdrs; i++) {
        const nghttp2_nv *nv = &s->fail_hdrs[i];
        reason |= nv->namelen == 16 && memcmp(nv->name, "x-sidecar-reason", 16) == 0;
        sc_msg_add(s, m, (const char *)nv->name, nv->namelen, (const char *)nv->value, nv->valuelen);
    }
    if (!reason)
        sc_msg_add(s, m, "x-sidecar-reason", 16, fi->reason, strlen(fi->reason));
}

/* The answer's text: the one given for this stream, or the table's. */
static void fail_text(const sc_stream *s, sc_fail why, char *out, size_t cap)
{
    const sc_fail_info *fi = sc_fail_info_of(why);
    if (s->fail_msg)
        snprintf(out, cap, "%s", s->fail_msg);
    else if (fi->flags & SC_FAIL_F_REQUEST)
        snprintf(out, cap, "%s listener: %s", s->route->name, fi->detail);
    else
        snprintf(out, cap, "upstream %s: %s", s->route->name, fi->detail);
}

/* A fallback's configured headers (validated at load: tokens, no CR/LF). */
static void add_headers(sc_stream *s, sc_msg *m, const sc_kv *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        sc_msg_add(s, m, v[i].key, strlen(v[i].key), v[i].value, strlen(v[i].value));
}

/* Builds the sidecar's own answer into s->resp / s->respp. Returns -ENOMEM
 * when a gRPC answer cannot carry its grpc-status (the caller would take
 * the call for a success). */
static int local_reply(sc_stream *s, sc_fail why)
{
    sc_route_stats *rs = &s->w->stats->routes[s->route->index];
    SC_STAT_INC(rs->local_replies);
    const sc_fail_info *fi = sc_fail_info_of(why);
    char msg[MSG_MAX];
    fail_text(s, why, msg, sizeof(msg) - 1); /* room for the body's newline */
    const sc_policy *pol = sc_stream_policy(s);
    const sc_breaker_policy *bp = pol ? &pol->breaker : NULL;
    bool fallback = why == SC_FAIL_CIRCUIT_OPEN && bp && bp->has_fallback;
    sc_msg *m = &s->resp;
    m->n_hdrs = 0;
    m->head_done = true;
    sc_buf_release(s->w, &s->respp.buf);
    s->respp.n_trailers = s->respp.cap_trailers = 0;
    s->respp.eof = true;
    if (s->req.is_grpc) {
        char code[8], enc[2048];
        int g = fallback ? (int)bp->fallback_grpc_status : fi->grpc_status;
        s->grpc_status = g;
        snprintf(code, sizeof(code), "%d", g);
        size_t elen = sc_grpc_message_encode(fallback && bp->fallback_grpc_message ? bp->fallback_grpc_message : msg,
                                             enc, sizeof(enc));
        m->status = 200;
        m->content_length = -1;
        if (sc_msg_add(s, m, "content-type", 12, "application/grpc", 16) < 0 ||
            sc_msg_add(s, m, "grpc-status", 11, code, strlen(code)) < 0)
            return -ENOMEM;
        sc_msg_add(s, m, "grpc-message", 12, enc, elen); /* these two may be missing, the status may not */
        if (s->request_id_len)
            sc_msg_add(s, m, "x-request-id", 12, s->request_id, s->request_id_len);
        if (fallback) {
            sc_msg_add(s, m, "x-sidecar-reason", 16, fi->reason, strlen(fi->reason));
            add_headers(s, m, bp->fallback_grpc_metadata, bp->n_fallback_grpc_metadata);
        } else {
            add_fail_headers(s, m, fi);
        }
        return 0;
    }
    const char *body = msg;
    size_t n = strlen(msg);
    m->status = fi->http_status;
    if (fallback) {
        m->status = (int)bp->fallback_http_status;
        body = bp->fallback_http_body ? bp->fallback_http_body : "";
        n = strlen(body);
    } else {
        msg[n++] = '\n';
    }
    m->content_length = (int64_t)n;
    if (fallback)
        add_headers(s, m, bp->fallback_http_headers, bp->n_fallback_http_headers);
    if (!sc_msg_find(m, "content-type")) /* a fallback may bring its own */
        sc_msg_add(s, m, "content-type", 12, "text/plain; charset=utf-8", 25);
    if (s->request_id_len)
        sc_msg_add(s, m, "x-request-id", 12, s->request_id, s->request_id_len);
    if (fallback)
        sc_msg_add(s, m, "x-sidecar-reason", 16, fi->reason, strlen(fi->reason));
    else
        add_fail_headers(s, m, fi);
    if (!(s->flags & SC_ST_F_HEAD_REQ) && n) {
        if (sc_buf_reserve(s->w, &s->respp.buf, SC_MAX(s->w->sc->cfg->limits.stream_buffer, (uint32_t)n)) == 0 &&
            sc_buf_space(&s->respp.buf) >= n) {
            memcpy(sc_buf_tail(&s->respp.buf), body, n);
            s->respp.buf.end += (uint32_t)n;
            s->respp.total += n;
        } else {
            m->content_length = 0; /* out of memory: the status alone, not a length nothing follows */
        }
    }
    return 0;
}

void sc_fail_answer(sc_stream *s, sc_fail why)
{
    if (!(s->flags & SC_ST_F_DOWN_HEAD_SENT)) {
        if (local_reply(s, why) < 0) {
            /* Out of memory for the answer: cut the stream as if mid-response
             * (the codecs reset or close when the head is out and the body
             * failed); status 0 keeps it out of the response counters. */
            s->resp.status = 0;
            s->flags |= SC_ST_F_DOWN_HEAD_SENT;
            s->respp.eof = false;
        }
    } else if (s->req.is_grpc && (s->dc->flags & SC_DOWN_CODEC_TRAILERS) && !s->respp.eof) {
        /* Headers went out already: end the call with a status in trailers. */
        char code[8], enc[512], msg[384];
        int g = sc_fail_info_of(why)->grpc_status;
        s->grpc_status = g;
        snprintf(code, sizeof(code), "%d", g);
        snprintf(msg, sizeof(msg), "upstream %s: %s", s->route->name, sc_fail_info_of(why)->detail);
        size_t elen = sc_grpc_message_encode(msg, enc, sizeof(enc));
        s->respp.n_trailers = s->respp.cap_trailers = 0;
        /* Out of memory for the status: the stream is reset (RST_STREAM) instead. */
        s->respp.eof = sc_pipe_add_trailer(s, &s->respp, "grpc-status", 11, code, strlen(code)) == 0;
        if (s->respp.eof)
            sc_pipe_add_trailer(s, &s->respp, "grpc-message", 12, enc, elen);
    } else {
        s->respp.eof = false;
        s->fail = why; /* the downstream codec aborts (RST_STREAM / close) */
    }
}

/*
 * obs_access.c: request IDs, trace context and spans, the access log line
 * and the failure ring entry of every stream (obs_access.h), as the
 * observer sc_observer_access that every route has (the failure rings are
 * always on; the access log and tracing only when configured).
 *
 * Where each field of the access record comes from:
 *   time, duration        s->start_ns to the outcome's end
 *   upstream_ms           the first attempt's start (s->up_start_ns) to the
 *                         last attempt's end (s->up_end_ns, on_attempt_end)
 *   attempts              attempts given an instance (s->attempts_sent)
 *   instance              the last attempt's address (outcome)
 *   status                the head the caller's codec got (0: none)
 *   reason                the failure kind when the sidecar answered or cut
 *   caller, request_id    captured at the head (sc_obs_stream_head)
 *   trace_id, span_id     the request span (s->trace)
 */
#include "proxy/obs_access.h"

#include "obs/observe.h"
#include "proxy/codec.h"
#include "proxy/stage.h"
#include "sidecar.h"
#include "trace/trace.h"
#include "trace/tracer.h"

#include <string.h>

static inline sc_trace_worker *trace_worker(const sc_stream *s)
{
    return sc_tracer_worker(s->w->sc->tracer, s->w->id);
}

static bool name_is(const nghttp2_nv *nv, const char *name, size_t len)
{
    return nv->namelen == len && memcmp(nv->name, name, len) == 0;
}

void sc_obs_stream_head(sc_stream *s)
{
    if (s->request_id)
        return;
    sc_obs_worker *ow = s->w->sc->obs ? &s->w->sc->obs[s->w->id] : NULL;
    sc_trace_worker *tw = s->w->sc->tracer ? trace_worker(s) : NULL;
    sc_trace_in in;
    if (tw)
        sc_trace_in_init(&in, tw->pol->force_header);
    /* One pass: x-request-id fields counted, trace headers offered to the
     * tracer and taken out (this hop writes its own per attempt). The
     * fields after a removed one move up, so the first x-request-id is
     * remembered by its new place, not its old one. */
    size_t rid = 0;
    unsigned n_rid = 0;
    size_t kept = 0;
    for (size_t i = 0; i < s->req.n_hdrs; i++) {
        nghttp2_nv *nv = &s->req.hdrs[i];
        if (name_is(nv, "x-request-id", 12)) {
            if (!n_rid++)
                rid = kept;
        } else if (tw && sc_trace_in_header(&in, (const char *)nv->name, nv->namelen, (const char *)nv->value,
                                            nv->valuelen)) {
            continue; /* the values stay in the arena for the extraction below */
        }
        s->req.hdrs[kept++] = *nv;
    }
    s->req.n_hdrs = kept;
    const char *id = NULL;
    size_t id_len = 0;
    nghttp2_nv *caller_id = n_rid == 1 ? &s->req.hdrs[rid] : NULL;
    if (ow && caller_id && sc_request_id_valid((const char *)caller_id->value, caller_id->valuelen)) {
        id = (const char *)caller_id->value; /* the caller's, kept */
        id_len = caller_id->valuelen;
        caller_id->flags |= SC_NV_F_UNIQUE;
    } else if (ow) {
        /* None, invalid or several: the fields go and a new ID, generated
         * straight into the arena, takes their place. */
        if (n_rid) {
            size_t k = 0;
            for (size_t i = 0; i < s->req.n_hdrs; i++)
                if (!name_is(&s->req.hdrs[i], "x-request-id", 12))
                    s->req.hdrs[k++] = s->req.hdrs[i];
            s->req.n_hdrs = k;
        }
        char *v = sc_msg_add_in_place(s, &s->req, "x-request-id", 12, SC_REQUEST_ID_LEN);
        if (v) {
            id_len = sc_request_id_generate(&ow->rid, v);
            id = v;
            s->req.hdrs[s->req.n_hdrs - 1].flags |= SC_NV_F_UNIQUE;
        } /* else out of memory: the request goes on without one */
    }
    s->request_id = id ? id : "";
    s->request_id_len = (uint8_t)(id ? id_len : 0);
    sc_caller *c = sc_stream_caller(s);
    if (c) {
        s->down_tls = c->tls;
        if (c->identity)
            s->caller_id = sc_arena_dup(&s->arena, c->identity, strlen(c->identity));
    }
    if (tw && (s->trace = sc_arena_alloc(&s->arena, sc_trace_req_size(&in))))
        sc_trace_req_start(tw, s->trace, &in, s->route->inbound ? SC_SPAN_KIND_SERVER : SC_SPAN_KIND_CLIENT,
                           s->start_ns);
}

void sc_obs_attempt_start(sc_stream *s)
{
    if (!s->trace || !s->trace->active)
        return;
    sc_trace_out out;
    if (!s->trace_hdr_base)
        s->trace_hdr_base = (uint16_t)(s->req.n_hdrs + 1); /* +1: 0 means "not yet" */
    s->req.n_hdrs = s->trace_hdr_base - 1u; /* the previous attempt's headers go */
    /* the clock only for an attempt span that is recorded */
    sc_trace_attempt_start(trace_worker(s), s->trace, s->attempt, s->trace->sampled ? sc_worker_now_ns(s->w) : 0, &out);
    for (size_t i = 0; i < out.n; i++) {
        /* The names are literals of the propagation module: not copied. */
        char *v = sc_msg_add_in_place(s, &s->req, out.h[i].name, out.h[i].name_len, out.h[i].value_len);
        if (v) {
            memcpy(v, out.h[i].value, out.h[i].value_len);
            s->req.hdrs[s->req.n_hdrs - 1].flags |= SC_NV_F_UNIQUE; /* new per attempt */
        }
    }
}

void sc_obs_trace_event(sc_stream *s, sc_span_event_kind e, int64_t value, bool attempt)
{
    if (!s->trace || !s->trace->sampled)
        return;
    if (attempt)
        sc_trace_attempt_event(s->trace, e, sc_worker_now_ns(s->w), value);
    else
        sc_trace_req_event(s->trace, e, sc_worker_now_ns(s->w), value);
}

/* ---- the observer ---- */

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    (void)r;
    (void)sc;
    *conf = NULL;
    return true; /* the failure rings are always on */
}

/* Span name: the method, or "package.Service/Method" for gRPC. */
static void span_name(const sc_stream *s, const char **p, size_t *len)
{
    if (s->req.is_grpc && s->req.path && s->req.path_len > 1) {
        *p = s->req.path + 1;
        *len = s->req.path_len - 1;
    } else {
        *p = s->req.method ? s->req.method : "";
        *len = s->req.method ? s->req.method_len : 0;
    }
}

static void span_address(sc_span *sp, const struct sockaddr *sa)
{
    char text[80];
    size_t n = sc_obs_sockaddr_text(sa, text);
    if (!n)
        return;
    size_t colon = n;
    while (colon > 0 && text[colon - 1] != ':')
        colon--;
    if (!colon)
        return;
    size_t host = 0, host_end = colon - 1;
    if (text[0] == '[') {
        host = 1;
        host_end = colon - 2;
    }
    sc_span_str(sp, SC_ATTR_SERVER_ADDRESS, text + host, host_end - host);
    int64_t port = 0;
    for (size_t i = colon; i < n; i++)
        port = port * 10 + (text[i] - '0');
    sc_span_int(sp, SC_ATTR_SERVER_PORT, port);
}

static void on_attempt_end(sc_stream *s, const sc_attempt_outcome *a, const void *conf)
{
    (void)conf;
    s->attempts_sent++;
    s->up_end_ns = a->end_ns;
    sc_trace_req *rq = s->trace;
    if (!rq || !rq->attempt_open)
        return;
    sc_trace_worker *tw = trace_worker(s);
    const char *name;
    size_t name_len;
    span_name(s, &name, &name_len);
    sc_span *sp = sc_trace_attempt_end(tw, rq, name, name_len, a->end_ns);
    if (!sp)
        return;
    span_address(sp, (const struct sockaddr *)&a->instance->ss);
    if (a->status)
        sc_span_int(sp, SC_ATTR_HTTP_STATUS, a->status);
    if (a->grpc_status >= 0)
        sc_span_int(sp, SC_ATTR_GRPC_STATUS, a->grpc_status);
    bool failed = a->fail || a->cancelled || a->status >= 500 || a->status == 0 ||
                  (s->req.is_grpc && a->grpc_status > 0);
    sc_span_cstr(sp, SC_ATTR_OUTCOME, a->retried ? "retried" : failed ? "failed" : "ok");
    if (failed) {
        char code[16];
        const char *why = a->fail ? sc_fail_reason(a->fail) : a->cancelled ? "caller-gone" : NULL;
        if (!why) {
            snprintf(code, sizeof(code), "%d", a->status >= 500 || a->status == 0 ? a->status : a->grpc_status);
            why = code;
        }
        sc_span_cstr(sp, SC_ATTR_ERROR_TYPE, why);
        sc_span_set_status(sp, SC_SPAN_STATUS_ERROR, why);
    }
    sc_trace_commit(tw, sp);
}

static uint8_t up_proto(const sc_route *r)
{
    return r->protocol == SC_PROTO_HTTP1 ? SC_OBS_PROTO_HTTP1 : SC_OBS_PROTO_HTTP2;
}

static void trace_end(sc_stream *s, const sc_outcome *o, const sc_access_record *r)
{
    sc_trace_req *rq = s->trace;
    if (!rq->sampled)
        return;
    sc_trace_worker *tw = trace_worker(s);
    if (o->fail == SC_FAIL_CIRCUIT_OPEN)
        sc_trace_req_event(rq, SC_EV_BREAKER_REJECTED, s->start_ns, -1);
    const char *name;
    size_t name_len;
    span_name(s, &name, &name_len);
    sc_span *sp = sc_trace_req_end(tw, rq, name, name_len, o->end_ns);
    if (!sp)
        return;
    sc_span_str(sp, SC_ATTR_HTTP_METHOD, r->method.p, r->method.len);
    sc_span_str(sp, SC_ATTR_URL_PATH, r->path.p, r->path.len);
    if (r->status)
        sc_span_int(sp, SC_ATTR_HTTP_STATUS, r->status);
    if (r->grpc) {
        sc_span_cstr(sp, SC_ATTR_RPC_SYSTEM, "grpc");
        const char *slash = r->path.len > 1 ? memchr(r->path.p + 1, '/', r->path.len - 1) : NULL;
        if (slash) {
            sc_span_str(sp, SC_ATTR_RPC_SERVICE, r->path.p + 1, (size_t)(slash - r->path.p - 1));
            sc_span_str(sp, SC_ATTR_RPC_METHOD, slash + 1, (size_t)(r->path.p + r->path.len - slash - 1));
        }
    }
    if (r->grpc_status >= 0)
        sc_span_int(sp, SC_ATTR_GRPC_STATUS, r->grpc_status);
    sc_span_cstr(sp, SC_ATTR_PROTOCOL_VERSION, r->down_proto == SC_OBS_PROTO_HTTP2 ? "2" : "1.1");
    sc_span_int(sp, SC_ATTR_REQUEST_BODY_SIZE, (int64_t)r->bytes_in);
    sc_span_int(sp, SC_ATTR_RESPONSE_BODY_SIZE, (int64_t)r->bytes_out);
    sc_span_str(sp, SC_ATTR_UPSTREAM, r->upstream.p, r->upstream.len);
    sc_span_cstr(sp, SC_ATTR_DIRECTION, s->route->inbound ? "inbound" : "outbound");
    if (r->reason)
        sc_span_cstr(sp, SC_ATTR_REASON, r->reason);
    if (r->caller.p)
        sc_span_str(sp, SC_ATTR_CALLER, r->caller.p, r->caller.len);
    if (r->request_id.len)
        sc_span_str(sp, SC_ATTR_REQUEST_ID, r->request_id.p, r->request_id.len);
    if (s->down && s->route->inbound)
        sc_span_cstr(sp, SC_ATTR_CLIENT_ADDRESS, s->down->peer_text);
    if (sc_access_is_error(r)) {
        char code[16];
        const char *why = r->reason;
        if (!why) {
            snprintf(code, sizeof(code), "%d", r->status >= 500 || r->status == 0 ? r->status : r->grpc_status);
            why = code;
        }
        sc_span_cstr(sp, SC_ATTR_ERROR_TYPE, why);
        sc_span_set_status(sp, SC_SPAN_STATUS_ERROR, why);
    }
    sc_trace_commit(tw, sp);
}

static void on_complete(sc_stream *s, const sc_outcome *o, const void *conf)
{
    (void)conf;
    sc_obs_worker *ow = s->w->sc->obs ? &s->w->sc->obs[s->w->id] : NULL;
    if (!ow && !s->trace)
        return;
    if (!s->request_id)
        sc_obs_stream_head(s); /* a stream that ended before its head was complete */
    char trace_hex[33], span_hex[17];
    bool reached = o->instance != NULL;
    sc_access_record r = {
        .start_mono_ns = s->start_ns,
        .duration_ns = o->end_ns - s->start_ns,
        .upstream_ns = s->up_start_ns ? (int64_t)((s->up_end_ns > s->up_start_ns ? s->up_end_ns : o->end_ns) -
                                                  s->up_start_ns)
                                      : -1,
        .upstream = sc_obs_cstr(s->route->name),
        .method = {s->req.method, s->req.method ? s->req.method_len : 0},
        .path = {s->req.path, s->req.path ? s->req.path_len : 0},
        .authority = {s->req.authority, s->req.authority ? s->req.authority_len : 0},
        .status = o->head_sent ? o->status : 0,
        .grpc_status = o->grpc ? o->grpc_status : -1,
        .reason = o->fail ? sc_fail_reason(o->fail) : NULL,
        .attempts = s->attempts_sent,
        .instance_addr = o->instance,
        .bytes_in = o->bytes_in,
        .bytes_out = o->bytes_out,
        .caller = sc_obs_cstr(s->caller_id),
        .request_id = {s->request_id_len ? s->request_id : NULL, s->request_id_len},
        .direction = s->route->inbound ? SC_OBS_INBOUND : SC_OBS_OUTBOUND,
        .down_proto = s->dc == &sc_down_h2_codec ? SC_OBS_PROTO_HTTP2 : SC_OBS_PROTO_HTTP1,
        .up_proto = reached ? up_proto(s->route) : SC_OBS_PROTO_NONE,
        .down_tls = s->down_tls,
        .up_tls = reached && s->route->policy && s->route->policy->tls.mode != SC_TLS_OFF,
        .grpc = o->grpc,
    };
    /* The IDs in hex only for a line or a failure entry that shows them. */
    if (ow && (ow->log || (ow->failures && sc_access_is_error(&r)))) {
        if (s->trace && sc_trace_req_ids(s->trace, trace_hex, span_hex)) {
            r.trace_id = (sc_obs_str){trace_hex, 32};
            r.span_id = (sc_obs_str){span_hex, 16};
        }
        sc_obs_done(ow, &r);
    }
    if (s->trace)
        trace_end(s, o, &r);
}

const sc_observer sc_observer_access = {
    .name = "access-log",
    .configure = configure,
    .on_attempt_end = on_attempt_end,
    .on_complete = on_complete,
};

/*
 * stream.c: one request/response exchange between a downstream codec and an
 * upstream codec: start (deadline, instance choice, attach to a pooled
 * connection), the notifications that move body bytes through the two
 * bounded pipes, local error replies in the caller's protocol, and the end
 * (stats, free once both sides are done).
 */
#include "authz/authz.h"
#include "core/log.h"
#include "http/grpc.h"
#include "proxy/codec.h"
#include "proxy/conns.h"
#include "sidecar.h"
#include "tls/tls.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- arena ---- */

void *sc_arena_alloc(sc_arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    if (a->inl_cap - a->inl_used >= n) {
        void *p = a->inl + a->inl_used;
        a->inl_used += n;
        return p;
    }
    if (a->head && a->head->cap - a->head->used >= n) {
        void *p = a->head->data + a->head->used;
        a->head->used += n;
        return p;
    }
    size_t cap = n > 4096 ? n : 4096;
    sc_arena_chunk *c = malloc(sizeof(*c) + cap);
    if (!c)
        return NULL;
    c->cap = cap;
    c->used = n;
    c->next = a->head;
    a->head = c;
    return c->data;
}

char *sc_arena_dup(sc_arena *a, const char *s, size_t n)
{
    char *p = sc_arena_alloc(a, n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

void sc_arena_reset(sc_arena *a)
{
    while (a->head) {
        sc_arena_chunk *c = a->head;
        a->head = c->next;
        free(c);
    }
    a->inl_used = 0;
}

/* ---- headers ---- */

static int nv_append(sc_stream *s, nghttp2_nv **arr, size_t *n, size_t *cap, const char *name, size_t nlen,
                     const char *value, size_t vlen)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        nghttp2_nv *na = sc_arena_alloc(&s->arena, ncap * sizeof(*na));
        if (!na)
            return -ENOMEM;
        if (*n)
            memcpy(na, *arr, *n * sizeof(*na));
        *arr = na;
        *cap = ncap;
    }
    char *nm = sc_arena_dup(&s->arena, name, nlen);
    char *vl = sc_arena_dup(&s->arena, value, vlen);
    if (!nm || !vl)
        return -ENOMEM;
    for (size_t i = 0; i < nlen; i++)
        if (nm[i] >= 'A' && nm[i] <= 'Z')
            nm[i] = (char)(nm[i] + 32);
    nghttp2_nv *nv = &(*arr)[(*n)++];
    nv->name = (uint8_t *)nm;
    nv->namelen = nlen;
    nv->value = (uint8_t *)vl;
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    return 0;
}

int sc_msg_add(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    return nv_append(s, &m->hdrs, &m->n_hdrs, &m->cap_hdrs, name, nlen, value, vlen);
}

int sc_pipe_add_trailer(sc_stream *s, sc_pipe *p, const char *name, size_t nlen, const char *value, size_t vlen)
{
    return nv_append(s, &p->trailers, &p->n_trailers, &p->cap_trailers, name, nlen, value, vlen);
}

const nghttp2_nv *sc_msg_find(const sc_msg *m, const char *name)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < m->n_hdrs; i++)
        if (m->hdrs[i].namelen == len && memcmp(m->hdrs[i].name, name, len) == 0)
            return &m->hdrs[i];
    return NULL;
}

/* ---- lifecycle ---- */

static void stream_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void try_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void wait_timer_cb(struct ev_loop *loop, ev_timer *t, int revents);
static void authz_unavailable(sc_stream *s, const char *why);

/* ---- phases ---- */

static const char *const phase_names[SC_PHASE_COUNT] = {
    [SC_PHASE_NEW] = "new",
    [SC_PHASE_ADMISSION] = "admission",
    [SC_PHASE_ADMISSION_WAIT] = "admission-wait",
    [SC_PHASE_QUEUED] = "queued",
    [SC_PHASE_BACKOFF] = "backoff",
    [SC_PHASE_CONNECTING] = "connecting",
    [SC_PHASE_IN_FLIGHT] = "in-flight",
    [SC_PHASE_RESPONDING] = "responding",
    [SC_PHASE_DONE] = "done",
};

const char *sc_phase_name(sc_phase p)
{
    return (unsigned)p < SC_PHASE_COUNT ? phase_names[p] : "?";
}

#ifndef NDEBUG
#define PH(p) (1u << SC_PHASE_##p)
/* Where each phase may go next (besides staying); see sc_phase. */
static const uint16_t phase_next[SC_PHASE_COUNT] = {
    [SC_PHASE_NEW] = PH(ADMISSION) | PH(DONE),
    [SC_PHASE_ADMISSION] = PH(ADMISSION_WAIT) | PH(QUEUED) | PH(CONNECTING) | PH(IN_FLIGHT) | PH(BACKOFF) | PH(DONE),
    [SC_PHASE_ADMISSION_WAIT] = PH(ADMISSION) | PH(DONE),
    [SC_PHASE_QUEUED] = PH(ADMISSION) | PH(DONE),
    [SC_PHASE_BACKOFF] = PH(CONNECTING) | PH(IN_FLIGHT) | PH(DONE),
    [SC_PHASE_CONNECTING] = PH(IN_FLIGHT) | PH(RESPONDING) | PH(BACKOFF) | PH(DONE),
    [SC_PHASE_IN_FLIGHT] = PH(CONNECTING) | PH(RESPONDING) | PH(BACKOFF) | PH(DONE),
    [SC_PHASE_RESPONDING] = PH(BACKOFF) | PH(DONE),
    [SC_PHASE_DONE] = 0,
};
#undef PH

void sc_stream_set_phase(sc_stream *s, sc_phase p)
{
    sc_phase from = (sc_phase)s->phase;
    if (from == p)
        return;
    SC_DEBUG("%s: stream %p %.*s: %s -> %s", s->route->name, (void *)s, (int)SC_MIN(s->req.path_len, 100),
             s->req.path ? s->req.path : "", sc_phase_name(from), sc_phase_name(p));
    if (!(phase_next[from] & (1u << p))) {
        SC_ERROR("%s: stream %p: illegal phase change %s -> %s", s->route->name, (void *)s, sc_phase_name(from),
                 sc_phase_name(p));
        abort();
    }
    s->phase = (uint8_t)p;
}
#endif

void sc_stream_bound(sc_stream *s)
{
    sc_stream_set_phase(s, s->up->flags & SC_CONN_F_CONNECTING ? SC_PHASE_CONNECTING : SC_PHASE_IN_FLIGHT);
}

void sc_stream_connected(sc_stream *s)
{
    if (s->phase == SC_PHASE_CONNECTING)
        sc_stream_set_phase(s, SC_PHASE_IN_FLIGHT);
}

sc_stream *sc_stream_new(sc_worker *w, sc_route *route, sc_conn *down, int32_t down_sid)
{
    sc_stream *s = w->free_streams;
    if (s)
        w->free_streams = *(void **)s;
    else if (!(s = malloc(sizeof(*s))))
        return NULL;
    memset(s, 0, offsetof(sc_stream, inline_arena));
    s->w = w;
    s->route = route;
    s->down = down;
    s->dc = down->ops->down;
    s->down_sid = down_sid;
    s->arena.inl = s->inline_arena;
    s->arena.inl_cap = sizeof(s->inline_arena);
    s->req.content_length = -1;
    s->resp.content_length = -1;
    s->grpc_status = -1;
    s->start_ns = sc_now_ns();
    ev_init(&s->timer, stream_timeout_cb);
    ev_init(&s->try_timer, try_timeout_cb);
    ev_init(&s->wait_timer, wait_timer_cb);
    sc_list_push(&w->streams, &s->wlink);
    SC_STAT_INC(w->stats->streams);
    return s;
}

static void log_breaker(const sc_route *r, const sc_breaker_transition *tr)
{
    if (!tr->seq)
        return;
    SC_WARN("upstream %s: circuit breaker %s -> %s: %s", r->name, sc_breaker_state_name(tr->from),
            sc_breaker_state_name(tr->to), tr->reason);
}

/* The request's final outcome for the breaker, once per admission. */
static void breaker_settle(sc_stream *s, bool abandon)
{
    if (!s->breaker_pending)
        return;
    s->breaker_pending = false;
    sc_route *r = s->route;
    if (abandon) {
        sc_breaker_abandon(&r->breaker, s->probe_id);
        return;
    }
    int http = s->resp.status;
    int grpc = s->grpc_status;
    if (s->req.is_grpc && grpc < 0 && http && http != 200)
        grpc = sc_grpc_status_from_http(http);
    uint32_t cond = s->fail ? sc_fail_cond(s->fail) : 0;
    if (s->fail && !cond)
        http = 0; /* a local refusal says nothing about the upstream */
    bool failure = sc_breaker_counts_as_failure(&r->policy->breaker, http, grpc, cond);
    uint64_t dur_ms = (sc_now_ns() - s->start_ns) / 1000000u;
    bool slow = sc_breaker_is_slow(&r->breaker, dur_ms);
    sc_breaker_transition tr = {0};
    sc_breaker_record_ex(&r->breaker, sc_now_ms(), failure, slow, s->probe_id, &tr);
    log_breaker(r, &tr);
}

/* Outcome of one attempt for the instance it went to (outlier detection). */
static void attempt_settle(sc_stream *s, bool gateway_or_connect_failure)
{
    sc_instance_state *st = s->inst;
    if (!st)
        return;
    s->inst = NULL;
    atomic_fetch_sub_explicit(&st->ol.active_requests, 1, memory_order_relaxed);
    if (!s->route->policy || !s->route->policy->outlier.enabled)
        return;
    sc_endpoints *e = sc_endpoints_current(&s->route->endpoints);
    if (sc_outlier_record(&s->route->outlier, &st->ol, e ? e->n : 1, gateway_or_connect_failure, sc_now_ms()) == 1) {
        sc_outlier_instance_view v;
        sc_outlier_instance_snapshot(&st->ol, sc_now_ms(), &v);
        char addr[64];
        sc_sockaddr_text((const struct sockaddr *)&st->ss, addr, sizeof(addr));
        SC_WARN("upstream %s: instance %s ejected for %llums after %u consecutive gateway errors or connect "
                "failures (ejection #%llu)", s->route->name, addr, (unsigned long long)v.ms_left,
                s->route->policy->outlier.consecutive_failures, (unsigned long long)v.total_ejections);
    }
}

static bool is_gateway_failure(const sc_stream *s)
{
    if (s->fail)
        return sc_fail_cond(s->fail) & SC_FAIL_GATEWAY_CONDS;
    int st = s->resp.status;
    if (st == 502 || st == 503 || st == 504)
        return true;
    return s->req.is_grpc && s->grpc_status == SC_GRPC_UNAVAILABLE;
}

static void bulkhead_release(sc_stream *s);

static void stream_free(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route_stats *rs = &w->stats->routes[s->route->index];
    ev_timer_stop(w->loop, &s->timer);
    ev_timer_stop(w->loop, &s->try_timer);
    ev_timer_stop(w->loop, &s->wait_timer);
    sc_list_remove(&s->wlink);
    sc_list_remove(&s->up_link);
    sc_list_remove(&s->qlink);
    sc_list_remove(&s->alink);
    if (s->inst)
        attempt_settle(s, is_gateway_failure(s));
    breaker_settle(s, true); /* still owed only when nothing was learnt */
    bulkhead_release(s);
    if (s->flags & SC_ST_F_UP_STARTED || s->fail) {
        SC_STAT_DEC(rs->active_requests);
        int st = s->resp.status;
        if (s->flags & SC_ST_F_DOWN_HEAD_SENT && st >= 100 && st < 600)
            SC_STAT_INC(rs->responses[st / 100]);
        else
            SC_STAT_INC(rs->responses[0]);
        if (s->req.is_grpc && s->grpc_status >= 0 && s->grpc_status <= SC_GRPC_STATUS_MAX)
            SC_STAT_INC(rs->grpc[s->grpc_status]);
        sc_stats_observe_latency(rs, (sc_now_ns() - s->start_ns) / 1000);
        SC_STAT_ADD(rs->bytes_in, s->reqp.total);
        SC_STAT_ADD(rs->bytes_out, s->respp.total);
    }
    SC_STAT_DEC(w->stats->streams);
    sc_buf_release(w, &s->reqp.buf);
    sc_buf_release(w, &s->respp.buf);
    free(s->h1_trailer_buf);
    free(s->h1_up_trailer_buf);
    free(s->replay.data);
    sc_arena_reset(&s->arena);
    *(void **)s = w->free_streams;
    w->free_streams = s;
}

static void maybe_free(sc_stream *s)
{
    if ((s->flags & SC_ST_F_DOWN_DONE) && sc_stream_up_done(s))
        stream_free(s);
}

uint64_t sc_stream_remaining_ns(const sc_stream *s)
{
    if (!s->deadline_ns)
        return 0;
    uint64_t now = sc_now_ns();
    return s->deadline_ns > now ? s->deadline_ns - now : 1;
}

static void down_event(sc_stream *s)
{
    if (s->flags & SC_ST_F_DOWN_DONE)
        return;
    s->dc->stream_event(s);
}

static void up_event(sc_stream *s)
{
    if (!s->up || sc_stream_up_done(s))
        return;
    s->route->uc->stream_event(s);
}

/* Detaches the current attempt from its connection, if any. */
static void up_detach(sc_stream *s)
{
    sc_list_remove(&s->up_link);
    if (s->up)
        s->route->uc->cancel(s);
    s->up = NULL;
    ev_timer_stop(s->w->loop, &s->try_timer);
}

static void up_cancel(sc_stream *s)
{
    if (sc_stream_up_done(s))
        return;
    up_detach(s);
    ev_timer_stop(s->w->loop, &s->wait_timer);
    sc_list_remove(&s->qlink);
    sc_list_remove(&s->alink);
    sc_stream_set_phase(s, SC_PHASE_DONE);
}

/* ---- retries ---- */

static void begin_attempt(sc_stream *s);

/* Puts the body sent so far back in front of what is still waiting. */
static int rewind_request(sc_stream *s)
{
    size_t rl = s->replay.end, ql = sc_buf_len(&s->reqp.buf);
    if (rl) {
        uint32_t cap = SC_MAX(s->w->sc->cfg->limits.stream_buffer, (uint32_t)(rl + ql));
        char *nb = malloc(cap);
        if (!nb)
            return -ENOMEM;
        memcpy(nb, s->replay.data, rl);
        if (ql)
            memcpy(nb + rl, sc_buf_head(&s->reqp.buf), ql);
        sc_buf_release(s->w, &s->reqp.buf);
        /* cap differs from the block size unless equal: sc_buf_release frees or pools it correctly */
        s->reqp.buf.data = nb;
        s->reqp.buf.cap = cap;
        s->reqp.buf.start = 0;
        s->reqp.buf.end = (uint32_t)(rl + ql);
        s->replay.end = 0;
    }
    s->req_sent = 0;
    return 0;
}

/* Forgets the failed attempt's response. */
static void reset_response(sc_stream *s)
{
    s->resp.status = 0;
    s->resp.n_hdrs = s->resp.cap_hdrs = 0;
    s->resp.hdrs = NULL;
    s->resp.head_done = false;
    s->resp.content_length = -1;
    sc_buf_release(s->w, &s->respp.buf);
    s->respp.total = 0;
    s->respp.eof = false;
    s->respp.n_trailers = s->respp.cap_trailers = 0;
    s->respp.trailers = NULL;
    s->grpc_status = -1;
    s->fail = SC_FAIL_NONE;
    s->fail_msg = NULL;
    s->flags &= ~(SC_ST_F_FAILED | SC_ST_F_REQ_SENT | SC_ST_F_DEFERRED_UP);
    s->up_head_sent = false;
    s->up_chunked = false;
    s->head_checked = false;
}

/* The upstream's pushback, if it sent one: -1 = do not retry (asked so, or
 * for longer than SC_RETRY_MAX_PUSHBACK_MS), 0 = none, else ms. */
static int64_t pushback_ms(const sc_stream *s)
{
    const nghttp2_nv *nv = sc_msg_find(&s->resp, "grpc-retry-pushback-ms");
    int64_t ms = 0;
    if (!nv) {
        for (size_t i = 0; i < s->respp.n_trailers && !nv; i++)
            if (s->respp.trailers[i].namelen == 22 && memcmp(s->respp.trailers[i].name, "grpc-retry-pushback-ms", 22) == 0)
                nv = &s->respp.trailers[i];
    }
    if (nv) {
        if (sc_retry_parse_pushback_ms((const char *)nv->value, nv->valuelen, &ms) < 0 ||
            !sc_retry_pushback_acceptable(ms))
            return -1;
        return ms ? ms : 1;
    }
    if ((nv = sc_msg_find(&s->resp, "retry-after")) &&
        sc_retry_parse_retry_after((const char *)nv->value, nv->valuelen, time(NULL), &ms) == 0)
        return !sc_retry_pushback_acceptable(ms) ? -1 : ms > 0 ? ms : 1;
    return 0;
}

/*
 * The attempt ended badly before any byte reached the caller: schedule the
 * next attempt when the policy, the body, the deadline and the budget allow.
 * Returns true when a retry was scheduled (the stream waits in backoff).
 */
static bool try_retry(sc_stream *s, uint32_t cond, int http, int grpc)
{
    const sc_policy *p = s->route->policy;
    if (!p || !p->retries.enabled || (s->flags & (SC_ST_F_DOWN_HEAD_SENT | SC_ST_F_DOWN_DONE)))
        return false;
    if (s->req.is_grpc && grpc < 0 && http && http != 200)
        grpc = sc_grpc_status_from_http(http);
    if (!sc_retry_should(&p->retries, s->attempt, http, grpc, cond))
        return false;
    if (!s->replayable && s->req_sent > 0)
        return false; /* the body that went out was not kept (beyond retries.buffer_limit) */
    int64_t push = pushback_ms(s);
    if (push < 0)
        return false; /* the upstream asked not to be retried */
    sc_worker *w = s->w;
    uint64_t delay = push ? (uint64_t)push
                          : sc_retry_backoff_ms(&p->retries, s->attempt, sc_lb_rand(&sc_rstate(w, s->route)->lb));
    if (s->deadline_ns) {
        /* No attempt that could not get a useful share of the time left. */
        uint64_t left_ms = sc_stream_remaining_ns(s) / 1000000u;
        uint64_t need = p->timeouts.per_try_ms ? SC_MAX(p->timeouts.per_try_ms / 10, 5) : 5;
        if (left_ms <= delay || left_ms - delay < need)
            return false;
    }
    sc_route_stats *rs = &w->stats->routes[s->route->index];
    if (!sc_retry_budget_try_acquire(&s->route->budget, sc_now_ms())) {
        SC_STAT_INC(rs->retry_budget_exhausted);
        return false;
    }
    SC_STAT_INC(rs->retries);
    attempt_settle(s, is_gateway_failure(s));
    up_detach(s);
    /* Remember where this attempt went so the next one prefers another instance. */
    SC_DEBUG("upstream %s: attempt %u failed (http %d, grpc %d, %s); retrying in %llums", s->route->name, s->attempt,
             http, grpc, s->fail ? sc_fail_reason(s->fail) : "response", (unsigned long long)delay);
    reset_response(s);
    if (rewind_request(s) < 0)
        return false;
    sc_stream_set_phase(s, SC_PHASE_BACKOFF);
    ev_timer_set(&s->wait_timer, (double)delay / 1000.0, 0);
    ev_timer_start(w->loop, &s->wait_timer);
    return true;
}

/* The stream's one wait timer: what it ends depends on the phase. */
static void wait_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_stream *s = SC_CONTAINER_OF(t, sc_stream, wait_timer);
    switch ((sc_phase)s->phase) {
    case SC_PHASE_ADMISSION_WAIT:
        /* Consul's answer (tls.authorize) did not come in time. */
        sc_list_remove(&s->alink);
        authz_unavailable(s, "Consul did not answer in time");
        return;
    case SC_PHASE_QUEUED:
        /* The bulkhead queue wait is over. */
        sc_list_remove(&s->qlink);
        sc_bulkhead_queue_timeout(&s->route->bulkhead);
        sc_stream_upstream_failed(s, SC_FAIL_QUEUE_TIMEOUT);
        return;
    case SC_PHASE_BACKOFF:
        begin_attempt(s);
        return;
    default:
        SC_ERROR("%s: stream wait timer expired in phase %s", s->route->name, sc_phase_name((sc_phase)s->phase));
        return;
    }
}

static void try_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_stream *s = SC_CONTAINER_OF(t, sc_stream, try_timer);
    sc_stream_upstream_failed(s, SC_FAIL_TRY_TIMEOUT);
}

void sc_stream_upstream_failed(sc_stream *s, sc_fail why)
{
    sc_route_stats *rs = &s->w->stats->routes[s->route->index];
    if (sc_stream_up_done(s))
        return;
    s->fail = why;
    s->flags |= SC_ST_F_FAILED;
    const sc_fail_info *fi = sc_fail_info_of(why);
    if (fi->stat != SC_FAIL_NO_STAT)
        SC_STAT_INC(*(sc_counter *)((char *)rs + fi->stat));
    if (why != SC_FAIL_TIMEOUT && fi->cond && try_retry(s, fi->cond, 0, -1))
        return;
    if (!(fi->flags & SC_FAIL_F_QUIET))
        SC_DEBUG("upstream %s: request %.*s failed: %s", s->route->name, (int)s->req.path_len,
                 s->req.path ? s->req.path : "", sc_fail_reason(why));
    if (s->inst)
        attempt_settle(s, is_gateway_failure(s));
    up_cancel(s);
    ev_timer_stop(s->w->loop, &s->timer);
    breaker_settle(s, false);
    if (s->flags & SC_ST_F_DOWN_DONE) {
        maybe_free(s);
        return;
    }
    sc_fail_answer(s, why);
    down_event(s);
}

void sc_stream_upstream_done(sc_stream *s)
{
    sc_stream_set_phase(s, SC_PHASE_DONE);
    s->up = NULL;
    ev_timer_stop(s->w->loop, &s->timer);
    ev_timer_stop(s->w->loop, &s->try_timer);
    if (s->inst)
        attempt_settle(s, is_gateway_failure(s));
    breaker_settle(s, false);
    maybe_free(s);
}

void sc_stream_downstream_done(sc_stream *s, bool aborted)
{
    if (s->flags & SC_ST_F_DOWN_DONE)
        return;
    s->flags |= SC_ST_F_DOWN_DONE;
    s->down = NULL;
    if (aborted || !sc_stream_up_done(s)) {
        if (!sc_stream_up_done(s) && !(s->flags & SC_ST_F_FAILED))
            SC_DEBUG("upstream %s: caller went away; cancelling the upstream request", s->route->name);
        if (!sc_stream_up_done(s)) {
            if (s->phase == SC_PHASE_QUEUED)
                sc_bulkhead_abandon(&s->route->bulkhead);
            if (s->inst)
                attempt_settle(s, false);
            breaker_settle(s, true);
        }
        up_cancel(s);
    }
    maybe_free(s);
}

static void stream_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_stream *s = SC_CONTAINER_OF(t, sc_stream, timer);
    if (s->phase == SC_PHASE_QUEUED) {
        sc_list_remove(&s->qlink);
        sc_bulkhead_abandon(&s->route->bulkhead);
    }
    sc_stream_upstream_failed(s, SC_FAIL_TIMEOUT);
}

void sc_stream_req_progress(sc_stream *s) { up_event(s); }

/* Response head of this attempt: forwarded, or (retriable failure) swallowed and retried. */
void sc_stream_resp_progress(sc_stream *s)
{
    if (s->resp.head_done && !s->head_checked && !(s->flags & SC_ST_F_DOWN_HEAD_SENT)) {
        s->head_checked = true;
        int http = s->resp.status;
        int grpc = -1;
        if (s->req.is_grpc) {
            const nghttp2_nv *gs = sc_msg_find(&s->resp, "grpc-status");
            if (gs) { /* trailers-only: the whole outcome is in the head; garbage is UNKNOWN */
                grpc = sc_grpc_status_wire(gs->value, gs->valuelen);
                s->grpc_status = grpc;
            }
        }
        bool bad = http >= 500 || (grpc > 0) || (http >= 400 && http < 500);
        if (bad && try_retry(s, 0, http, grpc))
            return;
        if (!sc_stream_up_done(s))
            sc_stream_set_phase(s, SC_PHASE_RESPONDING);
    }
    down_event(s);
}

void sc_stream_resp_informational(sc_stream *s, int status, const nghttp2_nv *nv, size_t n)
{
    if (s->flags & (SC_ST_F_DOWN_DONE | SC_ST_F_DOWN_HEAD_SENT))
        return;
    s->dc->informational(s, status, nv, n);
}

void sc_stream_resp_drained(sc_stream *s, size_t n)
{
    if (!s->up || sc_stream_up_done(s))
        return;
    s->route->uc->consumed(s, n);
}

void sc_stream_req_drained(sc_stream *s, size_t n)
{
    if (!s->down || (s->flags & SC_ST_F_DOWN_DONE))
        return;
    s->dc->consumed(s, n);
}

int sc_pipe_put(sc_stream *s, sc_pipe *p, const void *data, size_t len)
{
    sc_worker *w = s->w;
    if (sc_buf_reserve(w, &p->buf, w->sc->cfg->limits.stream_buffer) < 0 || sc_buf_space(&p->buf) < len)
        return -ENOBUFS;
    memcpy(sc_buf_tail(&p->buf), data, len);
    p->buf.end += (uint32_t)len;
    p->total += len;
    return 0;
}

void sc_stream_req_consume(sc_stream *s, size_t n)
{
    if (s->replayable) {
        const sc_retry_policy *rp = &s->route->policy->retries;
        if (s->replay.end + n > rp->buffer_limit ||
            (!s->replay.data && !(s->replay.data = malloc(rp->buffer_limit ? rp->buffer_limit : 1)))) {
            s->replayable = false; /* too big to keep: this request will not be retried */
            free(s->replay.data);
            s->replay.data = NULL;
            s->replay.end = 0;
        } else {
            s->replay.cap = (uint32_t)rp->buffer_limit;
            memcpy(s->replay.data + s->replay.end, sc_buf_head(&s->reqp.buf), n);
            s->replay.end += (uint32_t)n;
        }
    }
    sc_buf_consume(&s->reqp.buf, n);
    s->req_sent += n;
    sc_stream_req_drained(s, n);
}

/* ---- instance choice and attempts ---- */

/* Chooses from the current snapshot, skipping ejected instances and, for a
 * retry, the instance that just failed when there is another. The address is
 * copied: the snapshot may be retired once this loop iteration ends. */
static bool pick_instance(sc_stream *s)
{
    sc_endpoints *e = sc_endpoints_current(&s->route->endpoints);
    if (!e || e->n == 0)
        return false;
    sc_route_state *rs = sc_rstate(s->w, s->route);
    const sc_policy *p = s->route->policy;
    sc_lb_kind kind = p ? p->lb : SC_LB_ROUND_ROBIN;
    bool outlier = p && p->outlier.enabled;
    bool avoid_prev = s->attempt > 1 && e->n > 1;
    uint8_t *skip = NULL;
    uint32_t *load = NULL;
    if (outlier || avoid_prev || kind == SC_LB_LEAST_REQUEST) {
        if (rs->scratch_n < e->n) {
            uint8_t *ns = realloc(rs->skip, e->n);
            uint32_t *nl = realloc(rs->load, e->n * sizeof(uint32_t));
            if (ns)
                rs->skip = ns;
            if (nl)
                rs->load = nl;
            if (!ns || !nl)
                return false;
            rs->scratch_n = e->n;
        }
        skip = rs->skip;
        load = rs->load;
        uint64_t now = sc_now_ms();
        for (size_t i = 0; i < e->n; i++) {
            sc_instance_state *st = e->inst[i].state;
            skip[i] = 0;
            load[i] = st ? atomic_load_explicit(&st->ol.active_requests, memory_order_relaxed) : 0;
            if (outlier && st) {
                bool returned = false;
                skip[i] = sc_outlier_check(&s->route->outlier, &st->ol, now, &returned);
                if (returned)
                    SC_INFO("upstream %s: instance %s returned to service after its ejection", s->route->name,
                            e->inst[i].addr.text);
            }
            if (avoid_prev && e->inst[i].addr.len == s->up_addr_len &&
                memcmp(&e->inst[i].addr.ss, &s->up_addr, s->up_addr_len) == 0)
                skip[i] = 1;
        }
    }
    int k = sc_lb_pick(kind, e->inst, e->n, kind == SC_LB_LEAST_REQUEST ? load : NULL, skip, &rs->lb);
    if (k < 0)
        return false;
    const sc_instance *in = &e->inst[k];
    memcpy(&s->up_addr, &in->addr.ss, in->addr.len);
    s->up_addr_len = in->addr.len;
    s->inst = in->state;
    if (s->inst)
        atomic_fetch_add_explicit(&s->inst->ol.active_requests, 1, memory_order_relaxed);
    return true;
}

static void begin_attempt(sc_stream *s)
{
    s->attempt++;
    if (!pick_instance(s)) {
        sc_stream_upstream_failed(s, SC_FAIL_NO_INSTANCE);
        return;
    }
    uint64_t per_try = s->route->timeouts->per_try_ms;
    if (per_try && (!s->deadline_ns || per_try * 1000000u < sc_stream_remaining_ns(s))) {
        ev_timer_set(&s->try_timer, (double)per_try / 1000.0, 0);
        ev_timer_start(s->w->loop, &s->try_timer);
    }
    s->route->uc->attach(s);
}

/* Admitted by the bulkhead: go. */
static void admitted(sc_stream *s)
{
    s->bulkhead_held = true;
    begin_attempt(s);
}

static void bulkhead_release(sc_stream *s)
{
    if (!s->bulkhead_held)
        return;
    s->bulkhead_held = false;
    sc_route *r = s->route;
    if (!sc_bulkhead_leave(&r->bulkhead))
        return;
    /* Someone waits: this worker's own queue first (others poll, see worker.c). */
    sc_route_state *rs = sc_rstate(s->w, r);
    while (!sc_list_empty(&rs->waiters) && sc_bulkhead_try_promote(&r->bulkhead)) {
        sc_stream *q = SC_CONTAINER_OF(rs->waiters.next, sc_stream, qlink);
        sc_list_remove(&q->qlink);
        ev_timer_stop(s->w->loop, &q->wait_timer);
        sc_stream_set_phase(q, SC_PHASE_ADMISSION);
        admitted(q);
    }
}

void sc_route_promote_waiters(sc_worker *w, sc_route *r)
{
    sc_route_state *rs = sc_rstate(w, r);
    while (!sc_list_empty(&rs->waiters) && sc_bulkhead_try_promote(&r->bulkhead)) {
        sc_stream *q = SC_CONTAINER_OF(rs->waiters.next, sc_stream, qlink);
        sc_list_remove(&q->qlink);
        ev_timer_stop(w->loop, &q->wait_timer);
        sc_stream_set_phase(q, SC_PHASE_ADMISSION);
        admitted(q);
    }
}

/* Past the caller checks: circuit breaker (outbound), bulkhead, first attempt. */
static void admit(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route *r = s->route;
    const sc_policy *p = r->policy;
    uint64_t now = sc_now_ms();
    if (p) {
        sc_breaker_transition tr = {0};
        if (!sc_breaker_allow_ex(&r->breaker, now, &s->probe_id, &tr)) {
            log_breaker(r, &tr);
            sc_stream_upstream_failed(s, SC_FAIL_CIRCUIT_OPEN);
            return;
        }
        log_breaker(r, &tr);
        s->breaker_pending = true;
        if (p->retries.enabled) {
            sc_retry_budget_on_request(&r->budget, now);
            s->replayable = p->retries.max_attempts > 1;
        }
    }
    switch (sc_bulkhead_try_enter(&r->bulkhead)) {
    case SC_BULKHEAD_ADMITTED:
        admitted(s);
        return;
    case SC_BULKHEAD_QUEUE: {
        sc_route_state *st = sc_rstate(w, r);
        sc_list_push(&st->waiters, &s->qlink);
        if (!ev_is_active(&w->promote))
            ev_timer_again(w->loop, &w->promote);
        uint64_t qt = p ? p->bulkhead.queue_timeout_ms : 0;
        sc_stream_set_phase(s, SC_PHASE_QUEUED);
        ev_timer_set(&s->wait_timer, qt ? (double)qt / 1000.0 : 3600.0, 0);
        ev_timer_start(w->loop, &s->wait_timer);
        return;
    }
    case SC_BULKHEAD_REJECT:
    default:
        sc_stream_upstream_failed(s, SC_FAIL_OVERLOAD);
        return;
    }
}

/* ---- tls.authorize: consul (authz/authz.h) ----
 *
 * The decision for a connection's caller is remembered on the connection
 * (sc_down_conn.authz_*) until it expires: while it holds, a request costs
 * two compares and a counter, no lock. After that the shared cache is asked
 * (one mutex); when Consul must be asked, the request waits on
 * worker->authz_waiters (bounded by its deadline and SC_AUTHZ_WAIT_MS on
 * wait_timer) until the control thread wakes this worker. A request that
 * ends while waiting (caller reset, deadline) leaves the list in up_cancel /
 * stream_free, so nothing points at it afterwards. */

static const char *caller_name(const sc_stream *s)
{
    const char *id = s->down ? SC_DOWN(s->down)->identity : NULL;
    return id ? id : "(no SPIFFE identity)";
}

/* Consul (or the lack of an identity to ask it about) refuses the caller. */
static void authz_denied(sc_stream *s, const char *note)
{
    SC_STAT_INC(s->w->stats->authz_consul_denied);
    sc_stream_fail_msg(s, "inbound: Consul denied caller %.300s: %.300s", caller_name(s), note);
    sc_stream_upstream_failed(s, SC_FAIL_FORBIDDEN);
}

/* No answer from Consul, and no earlier one: nothing is allowed by default. */
static void authz_unavailable(sc_stream *s, const char *why)
{
    SC_STAT_INC(s->w->stats->authz_unavailable);
    sc_stream_fail_msg(s, "inbound: cannot check with Consul whether caller %.300s may call: %.300s", caller_name(s),
                       why && *why ? why : "no answer");
    sc_stream_upstream_failed(s, SC_FAIL_AUTHZ_UNAVAILABLE);
}

static void authz_remember(sc_down_conn *d, const sc_authz_decision *dec)
{
    d->authz_until_ms = dec->until_ms;
    d->authz_allowed = dec->verdict == SC_AUTHZ_ALLOW;
    d->authz_reason = dec->reason;
    d->authz_stale = dec->stale;
}

/* An answer (fresh or stale) for this request: true = go on. */
static bool authz_apply(sc_stream *s, bool allowed, const char *reason, bool stale)
{
    sc_worker_stats *st = s->w->stats;
    if (stale)
        SC_STAT_INC(st->authz_stale);
    if (allowed)
        return true;
    const char *note = reason && *reason ? reason : "(no reason given)";
    SC_WARN_LIMITED(sc_authz_log_limit(s->w->sc->authz), "inbound: Consul denied caller %s: %s%s",
                    caller_name(s), note, stale ? " (its last answer; Consul cannot answer now)" : "");
    authz_denied(s, note);
    return false;
}

/* true: the caller may call, go on now; false: refused, or waiting for Consul. */
static bool authz_admit(sc_stream *s)
{
    sc_down_conn *d = SC_DOWN(s->down);
    uint64_t now = s->start_ns / 1000000u;
    if (SC_LIKELY(now < d->authz_until_ms)) {
        SC_STAT_INC(s->w->stats->authz_cache_hits);
        if (SC_LIKELY(d->authz_allowed && !d->authz_stale))
            return true;
        return authz_apply(s, d->authz_allowed, d->authz_reason, d->authz_stale);
    }
    if (!d->identity) {
        authz_denied(s, "the caller's certificate has no SPIFFE identity (URI SAN) to ask Consul about");
        return false;
    }
    char serial[SC_AUTHZ_SERIAL_MAX];
    if (!s->down->ssl || sc_tls_peer_serial(s->down->ssl, serial, sizeof(serial)) < 0)
        serial[0] = 0;
    sc_authz_decision dec;
    sc_authz_check(s->w->sc->authz, s->w->id, d->identity, serial, sc_now_ms(), &dec);
    switch (dec.verdict) {
    case SC_AUTHZ_ALLOW:
    case SC_AUTHZ_DENY:
        SC_STAT_INC(s->w->stats->authz_cache_hits);
        authz_remember(d, &dec);
        return authz_apply(s, dec.verdict == SC_AUTHZ_ALLOW, dec.reason, dec.stale);
    case SC_AUTHZ_WAIT:
        SC_STAT_INC(s->w->stats->authz_cache_misses);
        s->authz_seq = dec.seq;
        sc_list_push(&s->w->authz_waiters, &s->alink);
        sc_stream_set_phase(s, SC_PHASE_ADMISSION_WAIT);
        ev_timer_set(&s->wait_timer, (double)SC_AUTHZ_WAIT_MS / 1000.0, 0);
        ev_timer_start(s->w->loop, &s->wait_timer);
        return false;
    case SC_AUTHZ_UNAVAILABLE:
    default:
        authz_unavailable(s, dec.error);
        return false;
    }
}

/* The control thread: a lookup this worker waits for ended. Decisions are
 * taken for every waiting request first and acted on afterwards, so that a
 * request ending while another is handled (it leaves `ready` in
 * stream_free) is never touched. */
static void authz_wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)revents;
    sc_worker *w = SC_CONTAINER_OF(a, sc_worker, authz_wake);
    sc_authz *az = w->sc->authz;
    if (!az)
        return;
    uint64_t now = sc_now_ms();
    sc_link ready;
    sc_list_init(&ready);
    sc_link *l = w->authz_waiters.next;
    while (l != &w->authz_waiters) {
        sc_stream *s = SC_CONTAINER_OF(l, sc_stream, alink);
        l = l->next;
        sc_down_conn *d = SC_DOWN(s->down);
        sc_authz_decision dec;
        sc_authz_result(az, w->id, d->identity, s->authz_seq, now, &dec);
        if (dec.verdict == SC_AUTHZ_WAIT)
            continue;
        sc_list_remove(&s->alink);
        ev_timer_stop(loop, &s->wait_timer);
        s->authz_verdict = (uint8_t)dec.verdict;
        s->authz_stale = dec.stale;
        if (dec.verdict == SC_AUTHZ_UNAVAILABLE) {
            s->authz_note = sc_arena_dup(&s->arena, dec.error, strlen(dec.error));
        } else {
            authz_remember(d, &dec);
            s->authz_note = dec.reason;
        }
        sc_list_push(&ready, &s->alink);
    }
    while (!sc_list_empty(&ready)) {
        sc_stream *s = SC_CONTAINER_OF(ready.next, sc_stream, alink);
        sc_list_remove(&s->alink);
        if (s->authz_verdict == SC_AUTHZ_UNAVAILABLE) {
            authz_unavailable(s, s->authz_note);
        } else if (authz_apply(s, s->authz_verdict == SC_AUTHZ_ALLOW, s->authz_note, s->authz_stale)) {
            sc_stream_set_phase(s, SC_PHASE_ADMISSION);
            admit(s);
        }
    }
}

void sc_stream_authz_init(sc_worker *w)
{
    sc_list_init(&w->authz_waiters);
    ev_async_init(&w->authz_wake, authz_wake_cb);
    ev_async_start(w->loop, &w->authz_wake);
}

void sc_stream_start(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route *r = s->route;
    sc_route_stats *rs = &w->stats->routes[r->index];
    SC_STAT_INC(rs->requests);
    SC_STAT_INC(rs->active_requests);
    s->flags |= SC_ST_F_UP_STARTED;
    sc_stream_set_phase(s, SC_PHASE_ADMISSION);

    /* Deadline: the smaller of the policy's and the caller's grpc-timeout. */
    uint64_t limit_ns = r->timeouts->request_ms * 1000000u;
    for (size_t i = 0; i < s->req.n_hdrs; i++) {
        nghttp2_nv *nv = &s->req.hdrs[i];
        if (nv->namelen == 12 && memcmp(nv->name, "grpc-timeout", 12) == 0) {
            uint64_t ns;
            if (sc_grpc_timeout_parse((const char *)nv->value, nv->valuelen, &ns) == 0 && (!limit_ns || ns < limit_ns))
                limit_ns = ns;
            /* Dropped here; the upstream side sends what remains when it sends. */
            s->req.hdrs[i] = s->req.hdrs[--s->req.n_hdrs];
            break;
        }
    }
    if (limit_ns) {
        s->deadline_ns = s->start_ns + limit_ns;
        ev_timer_set(&s->timer, (double)limit_ns / 1e9, 0);
        ev_timer_start(w->loop, &s->timer);
    }
    if (r->inbound && s->down && SC_DOWN(s->down)->denied) {
        SC_STAT_INC(w->stats->authz_denied);
        if (SC_DOWN(s->down)->identity)
            sc_stream_fail_msg(s, "inbound: caller %.300s is not in tls.allow", SC_DOWN(s->down)->identity);
        else
            s->fail_msg = "inbound: the caller's certificate has no SPIFFE identity; tls.allow needs one";
        sc_stream_upstream_failed(s, SC_FAIL_FORBIDDEN);
        return;
    }
    /* tls.allow passed (or is not configured): with tls.authorize: consul, Consul decides. */
    if (r->inbound && s->down && w->sc->authz && !authz_admit(s))
        return;
    admit(s);
}

void sc_stream_refuse(sc_stream *s, sc_fail why)
{
    sc_route_stats *rs = &s->w->stats->routes[s->route->index];
    SC_STAT_INC(rs->requests);
    SC_STAT_INC(rs->active_requests);
    s->flags |= SC_ST_F_UP_STARTED;
    sc_stream_upstream_failed(s, why);
}


/* ---- upstream connections shared by up_h1.c and up_h2.c ---- */

void sc_sockaddr_text(const struct sockaddr *sa, char *out, size_t cap)
{
    char host[64] = "?";
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const void *)sa;
        inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
        snprintf(out, cap, "%s:%u", host, ntohs(in->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const void *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        snprintf(out, cap, "[%s]:%u", host, ntohs(in6->sin6_port));
    } else {
        snprintf(out, cap, "?");
    }
}

static void up_conn_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_conn *c = SC_CONTAINER_OF(t, sc_conn, timer);
    if (c->flags & SC_CONN_F_CONNECTING) {
        SC_WARN_LIMITED(&c->route->log_limit, "upstream %s: connect to %s timed out after %llums", c->route->name, c->peer_text,
                (unsigned long long)c->route->timeouts->connect_ms);
        sc_up_conn_fail_pending(SC_UP(c), SC_FAIL_CONNECT_TIMEOUT);
        sc_conn_close(c, -ETIMEDOUT);
    } else {
        SC_DEBUG("upstream %s: closing idle connection to %s", c->route->name, c->peer_text);
        sc_conn_close(c, 0);
    }
}

sc_up_conn *sc_up_conn_new(sc_worker *w, sc_route *route, const struct sockaddr *sa, socklen_t len,
                           const sc_conn_ops *ops, int *err)
{
    int fd;
    if (!sc_bulkhead_conn_acquire(&route->bulkhead)) {
        *err = -EUSERS; /* bulkhead.max_connections reached */
        return NULL;
    }
    int rv = sc_socket_connect(sa, len, &fd);
    if (rv < 0) {
        sc_bulkhead_conn_release(&route->bulkhead);
        *err = rv;
        return NULL;
    }
    sc_up_conn *u = calloc(1, sizeof(*u));
    if (!u) {
        sc_bulkhead_conn_release(&route->bulkhead);
        close(fd);
        *err = -ENOMEM;
        return NULL;
    }
    sc_conn_init(&u->super, w, fd, ops, route);
    sc_list_init(&u->pending);
    memcpy(&u->super.peer, sa, len);
    u->super.peer_len = len;
    sc_sockaddr_text(sa, u->super.peer_text, sizeof(u->super.peer_text));
    const sc_policy *p = route->policy;
    if (p && p->tls.mode != SC_TLS_OFF) {
        sc_tls_watch *tw = p->tls.mode == SC_TLS_MUTUAL ? w->sc->tls_client : w->sc->tls_client_anon;
        sc_tls_ctx *ctx = tw ? sc_tls_watch_get(tw) : NULL;
        char key[160], terr[256] = "no TLS context", expect[SC_TLS_ID_MAX];
        snprintf(key, sizeof(key), "%s/%s", route->name, u->super.peer_text);
        const char *server_identity = p->tls.server_identity;
        const sc_tls_cert_info *ours = ctx ? sc_tls_ctx_cert(ctx) : NULL;
        if (!server_identity && p->discovery == SC_DISCOVERY_CONSUL && ours &&
            sc_tls_identity_for_service(ours->identity, p->consul.dc, p->consul.service ? p->consul.service : p->name,
                                        expect, sizeof(expect)) > 0)
            server_identity = expect; /* the identity Consul's service has in our mesh */
        sc_tls_client_opts o = {
            .sni = p->tls.sni,
            .server_identity = server_identity,
            .alpn = p->protocol == SC_PROTO_HTTP1 ? SC_TLS_ALPN_HTTP1 : SC_TLS_ALPN_H2,
            .cache = w->tls_sessions,
            .session_key = key,
        };
        SSL *ssl = ctx ? sc_tls_ssl_client(ctx, fd, &o, terr, sizeof(terr)) : NULL;
        if (ctx)
            sc_tls_ctx_unref(ctx);
        if (!ssl) {
            SC_WARN("upstream %s: cannot start TLS to %s: %s", route->name, u->super.peer_text, terr);
            sc_bulkhead_conn_release(&route->bulkhead);
            close(fd);
            free(u);
            *err = -EPROTO;
            return NULL;
        }
        u->super.ssl = ssl; /* the handshake starts once TCP is connected */
    }
    u->super.flags |= SC_CONN_F_CONNECTING;
    ev_io_set(&u->super.io, fd, EV_READ | EV_WRITE);
    ev_io_start(w->loop, &u->super.io);
    ev_timer_init(&u->super.timer, up_conn_timer_cb, (double)route->timeouts->connect_ms / 1000.0, 0);
    ev_timer_start(w->loop, &u->super.timer);
    sc_route_stats *rs = &w->stats->routes[route->index];
    SC_STAT_INC(rs->upstream_conns);
    SC_STAT_INC(rs->upstream_conns_total);
    sc_rstate(w, route)->n_conns++;
    return u;
}

void sc_up_conn_idle(sc_up_conn *u)
{
    sc_conn *c = &u->super;
    uint64_t idle = c->route->timeouts->idle_ms;
    ev_timer_stop(c->w->loop, &c->timer);
    if (idle) {
        ev_timer_set(&c->timer, (double)idle / 1000.0, 0);
        ev_timer_start(c->w->loop, &c->timer);
    }
}

void sc_up_conn_fail_pending(sc_up_conn *u, sc_fail why)
{
    while (!sc_list_empty(&u->pending)) {
        sc_stream *s = SC_CONTAINER_OF(u->pending.next, sc_stream, up_link);
        sc_list_remove(&s->up_link);
        s->up = NULL;
        sc_stream_upstream_failed(s, why);
    }
}

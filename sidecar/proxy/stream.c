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
#include "proxy/stage.h"
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

/* ---- phases ---- */

static const char *const phase_names[SC_PHASE_COUNT] = {
    [SC_PHASE_NEW] = "new",
    [SC_PHASE_ADMISSION] = "admission",
    [SC_PHASE_PARKED] = "parked",
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
    [SC_PHASE_ADMISSION] = PH(PARKED) | PH(CONNECTING) | PH(IN_FLIGHT) | PH(BACKOFF) | PH(DONE),
    [SC_PHASE_PARKED] = PH(ADMISSION) | PH(DONE),
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

static bool is_gateway_failure(const sc_stream *s)
{
    if (s->fail)
        return sc_fail_cond(s->fail) & SC_FAIL_GATEWAY_CONDS;
    int st = s->resp.status;
    if (st == 502 || st == 503 || st == 504)
        return true;
    return s->req.is_grpc && s->grpc_status == SC_GRPC_UNAVAILABLE;
}

/* The current attempt is over: its instance's in-flight count, then the
 * observers (cancelled: the caller went away, which says nothing of the
 * instance). */
static void attempt_end(sc_stream *s, bool cancelled)
{
    sc_instance_state *st = s->inst;
    if (!st)
        return;
    s->inst = NULL;
    atomic_fetch_sub_explicit(&st->ol.active_requests, 1, memory_order_relaxed);
    if (SC_LIKELY(!(s->pipe->hooks & SC_PIPE_ATTEMPT_END)))
        return;
    sc_attempt_outcome a = {
        .attempt = s->attempt,
        .instance = st,
        .status = s->resp.status,
        .grpc_status = s->grpc_status,
        .fail = s->fail,
        .gateway_failure = !cancelled && is_gateway_failure(s),
        .cancelled = cancelled,
        .start_ns = s->try_start_ns,
        .end_ns = sc_now_ns(),
    };
    sc_observe_attempt_end(s, &a);
}

static void stream_free(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route_stats *rs = &w->stats->routes[s->route->index];
    ev_timer_stop(w->loop, &s->timer);
    ev_timer_stop(w->loop, &s->try_timer);
    ev_timer_stop(w->loop, &s->wait_timer);
    sc_list_remove(&s->wlink);
    sc_list_remove(&s->up_link);
    attempt_end(s, false);
    sc_admit_end(s);
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
    sc_admit_unpark(s);
    ev_timer_stop(s->w->loop, &s->wait_timer);
    sc_stream_set_phase(s, SC_PHASE_DONE);
}

/* ---- retries ---- */

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
    s->first_byte_ns = 0;
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
    if (!p || !p->retries.enabled || !s->attempt || (s->flags & (SC_ST_F_DOWN_HEAD_SENT | SC_ST_F_DOWN_DONE)))
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
    attempt_end(s, false);
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
    case SC_PHASE_PARKED:
        sc_admit_timeout(s); /* the parking stage says what its wait running out means */
        return;
    case SC_PHASE_BACKOFF:
        sc_attempt_begin(s);
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
    attempt_end(s, false);
    up_cancel(s);
    ev_timer_stop(s->w->loop, &s->timer);
    sc_admit_settle(s, false);
    if (s->flags & SC_ST_F_DOWN_DONE) {
        maybe_free(s);
        return;
    }
    sc_fail_answer(s, why);
    if (s->resp.head_done && !(s->flags & SC_ST_F_DOWN_HEAD_SENT))
        sc_observe_head(s); /* the sidecar's own answer */
    down_event(s);
}

void sc_stream_upstream_done(sc_stream *s)
{
    sc_stream_set_phase(s, SC_PHASE_DONE);
    s->up = NULL;
    ev_timer_stop(s->w->loop, &s->timer);
    ev_timer_stop(s->w->loop, &s->try_timer);
    attempt_end(s, false);
    sc_admit_settle(s, false);
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
            attempt_end(s, true);
            sc_admit_settle(s, true);
        }
        up_cancel(s); /* a stream parked by a stage leaves it (stage cancel) */
    }
    maybe_free(s);
}

static void stream_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_stream *s = SC_CONTAINER_OF(t, sc_stream, timer);
    sc_stream_upstream_failed(s, SC_FAIL_TIMEOUT); /* a parked stream leaves its stage (up_cancel) */
}

void sc_stream_req_progress(sc_stream *s) { up_event(s); }

/* Response head of this attempt: forwarded, or (retriable failure) swallowed and retried. */
void sc_stream_resp_progress(sc_stream *s)
{
    if (s->resp.head_done && !s->head_checked && !(s->flags & SC_ST_F_DOWN_HEAD_SENT)) {
        s->head_checked = true;
        s->first_byte_ns = sc_now_ns();
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
        sc_observe_head(s);
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

void sc_attempt_begin(sc_stream *s)
{
    s->attempt++;
    s->try_start_ns = sc_now_ns();
    if (!s->up_start_ns)
        s->up_start_ns = s->try_start_ns;
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

/* tls.authorize: consul: a lookup this worker waits for ended (stage_authz.c). */
static void authz_wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
    (void)loop;
    (void)revents;
    sc_stage_authz_wake(SC_CONTAINER_OF(a, sc_worker, authz_wake));
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
    sc_admit_start(s);
}

void sc_stream_refuse(sc_stream *s, sc_fail why)
{
    sc_route_stats *rs = &s->w->stats->routes[s->route->index];
    SC_STAT_INC(rs->requests);
    SC_STAT_INC(rs->active_requests);
    s->flags |= SC_ST_F_UP_STARTED;
    s->pipe = s->route->pipeline; /* its observers hear of it; no stage ran */
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

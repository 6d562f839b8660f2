/*
 * stream.c: one request/response exchange (stream.h): its lifecycle
 * (start, failure, the two sides finishing, free), its phase, the
 * notifications that move body bytes through the two bounded pipes between
 * the codecs, the stream's timers, and the arena and header helpers.
 * Admission is admit.c's, attempts attempt.c's, answers fail.c's.
 */
#include "core/log.h"
#include "http/grpc.h"
#include "proxy/codec.h"
#include "proxy/obs_access.h"
#include "proxy/stage.h"
#include "sidecar.h"

#include <stdlib.h>
#include <string.h>

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

/* Room for one more entry in a header array; false when out of memory. */
static bool nv_room(sc_stream *s, nghttp2_nv **arr, size_t n, size_t *cap)
{
    if (n == *cap) {
        /* 8 to start: a gRPC call's request head, response head and
         * trailers then fit the stream's inline arena with their strings
         * (16 each made every call take a 4 KiB chunk from malloc). */
        size_t ncap = *cap ? *cap * 2 : 8;
        nghttp2_nv *na = sc_arena_alloc(&s->arena, ncap * sizeof(*na));
        if (!na)
            return false;
        if (n)
            memcpy(na, *arr, n * sizeof(*na));
        *arr = na;
        *cap = ncap;
    }
    return true;
}

/* name and value copied into one arena block, both NUL-terminated; the
 * name lower-cased unless already_lower (HTTP/2 field names: nghttp2
 * refuses a received name with an upper-case letter); of rx_flags (what
 * nghttp2 said of a received field), never-indexed is kept. */
static int nv_append(sc_stream *s, nghttp2_nv **arr, size_t *n, size_t *cap, const char *name, size_t nlen,
                     const char *value, size_t vlen, bool already_lower, uint8_t rx_flags)
{
    if (!nv_room(s, arr, *n, cap))
        return -ENOMEM;
    char *nm = sc_arena_alloc(&s->arena, nlen + vlen + 2);
    if (!nm)
        return -ENOMEM;
    char *vl = nm + nlen + 1;
    memcpy(nm, name, nlen);
    nm[nlen] = 0;
    memcpy(vl, value, vlen);
    vl[vlen] = 0;
    if (!already_lower)
        for (size_t i = 0; i < nlen; i++)
            if (nm[i] >= 'A' && nm[i] <= 'Z')
                nm[i] = (char)(nm[i] + 32);
    nghttp2_nv *nv = &(*arr)[(*n)++];
    nv->name = (uint8_t *)nm;
    nv->namelen = nlen;
    nv->value = (uint8_t *)vl;
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE | (rx_flags & NGHTTP2_NV_FLAG_NO_INDEX);
    return 0;
}

int sc_msg_add(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    return nv_append(s, &m->hdrs, &m->n_hdrs, &m->cap_hdrs, name, nlen, value, vlen, false, 0);
}

int sc_msg_add_lower(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen,
                     uint8_t rx_flags)
{
    return nv_append(s, &m->hdrs, &m->n_hdrs, &m->cap_hdrs, name, nlen, value, vlen, true, rx_flags);
}

int sc_msg_add_ref(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (!nv_room(s, &m->hdrs, m->n_hdrs, &m->cap_hdrs))
        return -ENOMEM;
    m->hdrs[m->n_hdrs++] = (nghttp2_nv){.name = (uint8_t *)name, .namelen = nlen, .value = (uint8_t *)value,
                                        .valuelen = vlen,
                                        .flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
    return 0;
}

char *sc_msg_add_in_place(sc_stream *s, sc_msg *m, const char *static_name, size_t nlen, size_t vlen)
{
    char *v;
    if (!nv_room(s, &m->hdrs, m->n_hdrs, &m->cap_hdrs) || !(v = sc_arena_alloc(&s->arena, vlen + 1)))
        return NULL;
    m->hdrs[m->n_hdrs++] = (nghttp2_nv){.name = (uint8_t *)static_name, .namelen = nlen, .value = (uint8_t *)v,
                                        .valuelen = vlen,
                                        .flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
    return v;
}

int sc_pipe_add_trailer(sc_stream *s, sc_pipe *p, const char *name, size_t nlen, const char *value, size_t vlen)
{
    return nv_append(s, &p->trailers, &p->n_trailers, &p->cap_trailers, name, nlen, value, vlen, false, 0);
}

int sc_pipe_add_trailer_lower(sc_stream *s, sc_pipe *p, const char *name, size_t nlen, const char *value, size_t vlen,
                              uint8_t rx_flags)
{
    return nv_append(s, &p->trailers, &p->n_trailers, &p->cap_trailers, name, nlen, value, vlen, true, rx_flags);
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
    s->start_ns = sc_worker_now_ns(w);
    ev_init(&s->timer, stream_timeout_cb);
    ev_init(&s->try_timer, try_timeout_cb);
    ev_init(&s->wait_timer, wait_timer_cb);
    sc_list_push(&w->streams, &s->wlink);
    SC_STAT_INC(w->stats->streams);
    return s;
}

/* A deadline of the stream, at `at` (after_ns from now): in the route's
 * queue q when it comes after every deadline queued there (the same
 * timeout, started later: nearly always), else on the stream's timer t. */
static void deadline_start(sc_stream *s, sc_dq *q, sc_dq_entry *e, ev_timer *t, uint64_t at, uint64_t after_ns)
{
    sc_dq_remove(e); /* never in a queue twice */
    if (!sc_dq_add(q, e, at)) {
        ev_timer_set(t, (double)after_ns / 1e9, 0);
        ev_timer_start(s->w->loop, t);
    }
}

static void deadline_stop_on(sc_stream *s, sc_dq_entry *e, ev_timer *t)
{
    if (sc_dq_queued(e))
        sc_dq_remove(e);
    else
        ev_timer_stop(s->w->loop, t);
}

/* The request deadline is over (answered, failed or freed). */
static void deadline_stop(sc_stream *s)
{
    deadline_stop_on(s, &s->dl, &s->timer);
}

void sc_stream_try_deadline_start(sc_stream *s, uint64_t per_try_ms)
{
    uint64_t after = per_try_ms * 1000000u, at = sc_worker_now_ns(s->w) + after;
    deadline_start(s, &sc_rstate(s->w, s->route)->try_deadlines, &s->try_dl, &s->try_timer, at, after);
}

void sc_stream_try_deadline_stop(sc_stream *s)
{
    deadline_stop_on(s, &s->try_dl, &s->try_timer);
}

static void stream_free(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route_stats *rs = &w->stats->routes[s->route->index];
    deadline_stop(s);
    sc_stream_try_deadline_stop(s);
    ev_timer_stop(w->loop, &s->wait_timer);
    sc_list_remove(&s->wlink);
    sc_list_remove(&s->up_link);
    sc_attempt_end(s, false);
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
        sc_stats_observe_latency(rs, (sc_worker_now_ns(w) - s->start_ns) / 1000);
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

uint64_t sc_stream_policy_timeout_ns(const sc_stream *s)
{
    return s->pipe->timeouts->request_ms * 1000000u;
}

uint64_t sc_stream_remaining_ns(const sc_stream *s)
{
    if (!s->deadline_ns)
        return 0;
    uint64_t now = sc_worker_now_ns(s->w);
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

static void up_cancel(sc_stream *s)
{
    if (sc_stream_up_done(s))
        return;
    sc_attempt_detach(s);
    sc_admit_unpark(s);
    ev_timer_stop(s->w->loop, &s->wait_timer);
    sc_stream_set_phase(s, SC_PHASE_DONE);
}

/* ---- timers ---- */

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
    if (why != SC_FAIL_TIMEOUT && fi->cond && sc_attempt_retry(s, fi->cond, 0, -1))
        return;
    if (!(fi->flags & SC_FAIL_F_QUIET))
        SC_DEBUG("upstream %s: request %.*s failed: %s", s->route->name, (int)s->req.path_len,
                 s->req.path ? s->req.path : "", sc_fail_reason(why));
    sc_attempt_end(s, false);
    up_cancel(s);
    deadline_stop(s);
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
    deadline_stop(s);
    sc_stream_try_deadline_stop(s);
    sc_attempt_end(s, false);
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
            sc_attempt_end(s, true);
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

static void deadline_expired(sc_dq_entry *e)
{
    sc_stream *s = SC_CONTAINER_OF(e, sc_stream, dl);
    sc_stream_upstream_failed(s, SC_FAIL_TIMEOUT);
}

static void try_deadline_expired(sc_dq_entry *e)
{
    sc_stream *s = SC_CONTAINER_OF(e, sc_stream, try_dl);
    sc_stream_upstream_failed(s, SC_FAIL_TRY_TIMEOUT);
}

void sc_stream_deadlines_init(sc_route_state *rs, struct ev_loop *loop)
{
    sc_dq_init(&rs->deadlines, loop, deadline_expired);
    sc_dq_init(&rs->try_deadlines, loop, try_deadline_expired);
}

void sc_stream_req_progress(sc_stream *s) { up_event(s); }

/* Response head of this attempt: forwarded, or (retriable failure) swallowed and retried. */
void sc_stream_resp_progress(sc_stream *s)
{
    if (s->resp.head_done && !s->head_checked && !(s->flags & SC_ST_F_DOWN_HEAD_SENT)) {
        if (sc_attempt_judge_head(s))
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
    /* The codecs copied what they took: a stream waiting for more of its
     * response (a server-streaming call between messages) holds no block. */
    if (sc_buf_len(&s->respp.buf) == 0)
        sc_buf_release(s->w, &s->respp.buf);
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

/* ---- start ---- */

void sc_stream_start(sc_stream *s)
{
    sc_worker *w = s->w;
    sc_route *r = s->route;
    sc_route_stats *rs = &w->stats->routes[r->index];
    SC_STAT_INC(rs->requests);
    SC_STAT_INC(rs->active_requests);
    s->flags |= SC_ST_F_UP_STARTED;
    sc_pipeline_acquire(s); /* the route's version this request runs under */

    /* Deadline: the smaller of the policy's and the caller's grpc-timeout. */
    uint64_t limit_ns = sc_stream_policy_timeout_ns(s);
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
        deadline_start(s, &sc_rstate(w, r)->deadlines, &s->dl, &s->timer, s->deadline_ns, limit_ns);
    }
    sc_obs_stream_head(s); /* x-request-id, trace context */
    sc_admit_start(s);
}

void sc_stream_refuse(sc_stream *s, sc_fail why)
{
    sc_route_stats *rs = &s->w->stats->routes[s->route->index];
    SC_STAT_INC(rs->requests);
    SC_STAT_INC(rs->active_requests);
    s->flags |= SC_ST_F_UP_STARTED;
    sc_pipeline_acquire(s); /* its observers hear of it; no stage ran */
    sc_obs_stream_head(s);  /* its answer carries the request ID */
    sc_stream_upstream_failed(s, why);
}

/*
 * attempt.c: attempts and retries. An attempt picks an instance from the
 * route's current endpoint snapshot (load balancer, outlier ejections, a
 * retry prefers another instance), arms the per-try timer and hands the
 * stream to the route's upstream codec. When it fails before any response
 * byte reached the caller, the retry policy, the replay buffer, the
 * deadline and the retry budget decide whether another one follows after a
 * backoff (phase BACKOFF, the stream's wait timer); the upstream's pushback
 * (grpc-retry-pushback-ms, Retry-After) overrides the backoff.
 */
#include "core/log.h"
#include "http/grpc.h"
#include "proxy/codec.h"
#include "proxy/obs_access.h"
#include "proxy/stage.h"
#include "sidecar.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

static bool is_gateway_failure(const sc_stream *s)
{
    if (s->fail)
        return sc_fail_cond(s->fail) & SC_FAIL_GATEWAY_CONDS;
    int st = s->resp.status;
    if (st == 502 || st == 503 || st == 504)
        return true;
    return s->req.is_grpc && s->grpc_status == SC_GRPC_UNAVAILABLE;
}

static void attempt_end(sc_stream *s, bool cancelled, bool retried)
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
        .retried = retried,
        .start_ns = s->try_start_ns,
        .end_ns = sc_worker_now_ns(s->w),
    };
    sc_observe_attempt_end(s, &a);
}

void sc_attempt_end(sc_stream *s, bool cancelled) { attempt_end(s, cancelled, false); }

void sc_attempt_detach(sc_stream *s)
{
    sc_list_remove(&s->up_link);
    if (s->up)
        s->route->uc->cancel(s);
    s->up = NULL;
    sc_stream_try_deadline_stop(s);
}

/* Puts the body sent so far back in front of what is still waiting. */
static int rewind_request(sc_stream *s)
{
    size_t rl = s->replay.end, ql = sc_buf_len(&s->reqp.buf);
    if (rl) {
        sc_buf nb = {0}; /* from the block pool, like every buffer (release returns it there) */
        if (sc_buf_reserve(s->w, &nb, SC_MAX(s->w->sc->cfg->limits.stream_buffer, (uint32_t)(rl + ql))) < 0)
            return -ENOMEM;
        memcpy(nb.data, s->replay.data, rl);
        if (ql)
            memcpy(nb.data + rl, sc_buf_head(&s->reqp.buf), ql);
        nb.end = (uint32_t)(rl + ql);
        sc_buf_release(s->w, &s->reqp.buf);
        s->reqp.buf = nb;
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

/* The attempt ended badly before any byte reached the caller: the next
 * attempt when the policy, the body, the deadline and the budget allow. */
bool sc_attempt_retry(sc_stream *s, uint32_t cond, int http, int grpc)
{
    const sc_policy *p = sc_stream_policy(s);
    if (!p || !p->retries.enabled || !s->attempt || (s->flags & (SC_ST_F_DOWN_HEAD_SENT | SC_ST_F_DOWN_DONE)))
        return false;
    if (s->req.is_grpc && grpc < 0 && http && http != 200)
        grpc = sc_grpc_status_from_http(http);
    if (!sc_retry_should(&p->retries, s->attempt, http, grpc, cond))
        return false;
    if (!s->replayable && s->req_sent > 0)
        return false; /* the body that went out was not kept (beyond retries.buffer_limit) */
    int64_t push = pushback_ms(s);
    if (push) /* on the attempt that got it: its span is still open */
        sc_obs_trace_event(s, SC_EV_PUSHBACK, push, true);
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
    if (!sc_retry_budget_try_acquire(&s->route->budget, sc_worker_now_ms(s->w))) {
        SC_STAT_INC(rs->retry_budget_exhausted);
        sc_obs_trace_event(s, SC_EV_BUDGET_EXHAUSTED, -1, false);
        return false;
    }
    SC_STAT_INC(rs->retries);
    attempt_end(s, false, true);
    sc_attempt_detach(s);
    sc_obs_trace_event(s, SC_EV_BACKOFF, (int64_t)delay, false);
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

bool sc_attempt_judge_head(sc_stream *s)
{
    s->head_checked = true;
    if (s->pipe->hooks & SC_PIPE_TIMINGS)
        s->first_byte_ns = sc_worker_now_ns(s->w);
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
    return bad && sc_attempt_retry(s, 0, http, grpc);
}

void sc_stream_req_consume(sc_stream *s, size_t n)
{
    if (s->replayable) {
        /* The copy grows with what was sent (up to retries.buffer_limit). */
        if (sc_buf_append_heap(&s->replay, sc_buf_head(&s->reqp.buf), n,
                               sc_stream_policy(s)->retries.buffer_limit) < 0) {
            s->replayable = false; /* too big to keep: this request will not be retried */
            free(s->replay.data);
            s->replay = (sc_buf){0};
        }
    }
    sc_buf_consume(&s->reqp.buf, n);
    if (sc_buf_len(&s->reqp.buf) == 0)
        sc_buf_release(s->w, &s->reqp.buf); /* a stream waiting for more of its body holds no block */
    s->req_sent += n;
    sc_stream_req_drained(s, n);
}

/* Chooses from the current snapshot, skipping ejected instances and, for a
 * retry, the instance that just failed when there is another. The address is
 * copied: the snapshot may be retired once this loop iteration ends. */
static bool pick_instance(sc_stream *s)
{
    sc_endpoints *e = sc_endpoints_current(&s->route->endpoints);
    if (!e || e->n == 0)
        return false;
    sc_route_state *rs = sc_rstate(s->w, s->route);
    const sc_policy *p = sc_stream_policy(s);
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
        uint64_t now = sc_worker_now_ms(s->w);
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
    if (s->pipe->hooks & SC_PIPE_TIMINGS) {
        s->try_start_ns = sc_worker_now_ns(s->w);
        if (!s->up_start_ns)
            s->up_start_ns = s->try_start_ns;
    }
    if (!pick_instance(s)) {
        sc_stream_upstream_failed(s, SC_FAIL_NO_INSTANCE);
        return;
    }
    sc_obs_attempt_start(s); /* its span, its trace headers */
    uint64_t per_try = s->pipe->timeouts->per_try_ms;
    if (per_try && (!s->deadline_ns || per_try * 1000000u < sc_stream_remaining_ns(s)))
        sc_stream_try_deadline_start(s, per_try);
    s->route->uc->attach(s);
}

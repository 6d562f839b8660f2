/*
 * admit.c: the admission engine and the registry of stages and observers
 * (stage.h): building a route's pipeline, running its stages in order,
 * parking and resuming, and telling stages and observers how things ended.
 */
#include "proxy/stage.h"

#include "core/log.h"
#include "proxy/codec.h"
#include "sidecar.h"

#include <assert.h>
#include <stdlib.h>

/*
 * The registry: every stage and observer a route may have, in the order they
 * run. Each one's configure() decides whether a route takes it; a new one is
 * a line here (and its file).
 */
static const sc_stage *const registry_stages[] = {
    &sc_stage_allow,        /* inbound, tls.allow: the caller's identity is in the list */
    &sc_stage_authz,        /* inbound, tls.authorize: consul: Consul intentions */
    &sc_stage_jwt,          /* inbound, inbound.jwt: the bearer token (PARK: an unknown kid's keys) */
    &sc_stage_ratelimit,    /* rate_limits, after jwt (claim keys) (PARK: Redis decides a global limit) */
    &sc_stage_breaker,      /* outbound: circuit_breaker (counts even when disabled, for the admin view) */
    &sc_stage_retry_budget, /* outbound, retries: the request counts for the retry budget */
    &sc_stage_bulkhead,     /* every route: bulkhead / inbound.max_concurrent (queue: PARK) */
};

static const sc_observer *const registry_observers[] = {
    &sc_observer_outlier,   /* outbound, outlier: consecutive gateway failures eject an instance */
    &sc_observer_access,    /* every route: access log line, failure ring, trace spans (obs_access.c) */
};

_Static_assert(SC_ARRAY_LEN(registry_stages) <= SC_PIPELINE_MAX, "more stages than a pipeline holds");
_Static_assert(SC_PIPELINE_MAX <= 8, "settle_mask and release_mask hold a bit per stage");
_Static_assert(SC_ARRAY_LEN(registry_observers) <= SC_PIPELINE_MAX, "more observers than a pipeline holds");
_Static_assert(SC_PIPELINE_MAX == SC_ARRAY_LEN(((sc_stream *)0)->stage_word), "one word per stage");

sc_pipeline *sc_pipeline_build(const sc_route *r, const struct sidecar *sc)
{
    sc_pipeline *p = sc_xcalloc(1, sizeof(*p));
    p->policy = r->policy;
    p->timeouts = r->timeouts;
    p->breaker = sc_route_breaker(r);
    p->owns_breaker = p->breaker != &r->breaker;
    if (p->owns_breaker)
        ((sc_breaker_box *)p->breaker)->refs++;
    for (size_t i = 0; i < SC_ARRAY_LEN(registry_stages); i++) {
        const sc_stage *st = registry_stages[i];
        const void *conf = NULL;
        if (!st->configure(r, sc, &conf))
            continue;
        p->settle_mask |= (uint8_t)(st->settle ? 1u << p->n_stages : 0);
        p->release_mask |= (uint8_t)(st->release ? 1u << p->n_stages : 0);
        p->stage[p->n_stages] = st;
        p->stage_conf[p->n_stages++] = conf;
    }
    for (size_t i = 0; i < SC_ARRAY_LEN(registry_observers); i++) {
        const sc_observer *ob = registry_observers[i];
        const void *conf = NULL;
        if (!ob->configure(r, sc, &conf))
            continue;
        p->observer[p->n_observers] = ob;
        p->observer_conf[p->n_observers++] = conf;
        p->hooks |= (ob->on_response_head ? SC_PIPE_HEAD : 0) | (ob->on_attempt_end ? SC_PIPE_ATTEMPT_END : 0) |
                    (ob->on_complete ? SC_PIPE_COMPLETE : 0);
    }
    if (p->hooks & (SC_PIPE_ATTEMPT_END | SC_PIPE_COMPLETE))
        p->hooks |= SC_PIPE_TIMINGS; /* nobody else reads them: not a clock read per request for nothing */
    return p;
}

void sc_pipeline_free(sc_pipeline *p)
{
    if (!p)
        return;
    if (p->owns_breaker && --((sc_breaker_box *)p->breaker)->refs == 0)
        free(p->breaker);
    sc_cfg_hold_put(p->hold);
    free(p);
}

int64_t sc_pipeline_live(const sc_pipeline *p)
{
    int64_t n = 0;
    for (unsigned i = 0; i < SC_PIPE_LIVE_SLOTS; i++)
        n += atomic_load_explicit(&((sc_pipeline *)p)->live[i].n, memory_order_acquire);
    return n;
}

void sc_route_build_pipeline(sc_route *r, const struct sidecar *sc)
{
    atomic_store(&r->breaker_cur, &r->breaker);
    r->pipeline = sc_pipeline_build(r, sc);
    r->uc = sc_up_codec_for(r->protocol);
}

void sc_route_free_pipeline(sc_route *r)
{
    sc_pipeline_free((sc_pipeline *)r->pipeline);
    r->pipeline = NULL;
}

void sc_pipeline_acquire(sc_stream *s)
{
    if (s->pipe)
        return;
    sc_pipeline *p = (sc_pipeline *)atomic_load_explicit(&s->route->pipeline, memory_order_acquire);
    atomic_fetch_add_explicit(&p->live[s->w->id % SC_PIPE_LIVE_SLOTS].n, 1, memory_order_relaxed);
    s->pipe = p;
}

/* ---- running the stages ---- */

/* From the stage at s->stage_pos on; then the first attempt. */
static void run(sc_stream *s)
{
    const sc_pipeline *p = s->pipe;
    while (s->stage_pos < p->n_stages) {
        unsigned i = s->stage_pos;
        sc_fail fail = SC_FAIL_NONE;
        switch (p->stage[i]->admit(s, p->stage_conf[i], &s->stage_word[i], &fail)) {
        case SC_STAGE_GO:
            s->stage_pos++;
            continue;
        case SC_STAGE_PARK:
            assert(s->phase == SC_PHASE_PARKED);
            return;
        case SC_STAGE_DENY:
        default:
            assert(fail != SC_FAIL_NONE);
            sc_stream_upstream_failed(s, fail);
            return;
        }
    }
    sc_attempt_begin(s);
}

void sc_admit_start(sc_stream *s)
{
    sc_pipeline_acquire(s);
    sc_stream_set_phase(s, SC_PHASE_ADMISSION);
    run(s);
}

void sc_stage_park(sc_stream *s, sc_link *list, uint64_t timeout_ms)
{
    sc_list_push(list, &s->park_link);
    sc_stream_set_phase(s, SC_PHASE_PARKED);
    ev_timer_set(&s->wait_timer, (double)timeout_ms / 1000.0, 0);
    ev_timer_start(s->w->loop, &s->wait_timer);
}

/* Off the stage's list, the wait over: back to ADMISSION. */
static void unpark(sc_stream *s)
{
    sc_list_remove(&s->park_link);
    ev_timer_stop(s->w->loop, &s->wait_timer);
    sc_stream_set_phase(s, SC_PHASE_ADMISSION);
}

void sc_admit_resume(sc_stream *s, sc_stage_verdict v, sc_fail fail)
{
    assert(s->phase == SC_PHASE_PARKED && v != SC_STAGE_PARK);
    unpark(s);
    if (v == SC_STAGE_GO) {
        s->stage_pos++;
        run(s);
    } else {
        sc_stream_upstream_failed(s, fail);
    }
}

void sc_admit_timeout(sc_stream *s)
{
    const sc_pipeline *p = s->pipe;
    unsigned i = s->stage_pos;
    unpark(s);
    sc_stream_upstream_failed(s, p->stage[i]->timeout(s, p->stage_conf[i], &s->stage_word[i]));
}

void sc_admit_unpark(sc_stream *s)
{
    if (s->phase != SC_PHASE_PARKED)
        return;
    const sc_pipeline *p = s->pipe;
    unsigned i = s->stage_pos;
    unpark(s);
    if (p->stage[i]->cancel)
        p->stage[i]->cancel(s, p->stage_conf[i], &s->stage_word[i]);
}

/* ---- how it ended ---- */

void sc_stream_outcome(const sc_stream *s, sc_outcome *o)
{
    *o = (sc_outcome){
        .status = s->resp.status,
        .grpc_status = s->grpc_status,
        .fail = s->fail,
        .grpc = s->req.is_grpc,
        .abandoned = (s->flags & SC_ST_F_ABANDONED) != 0,
        .head_sent = (s->flags & SC_ST_F_DOWN_HEAD_SENT) != 0,
        .attempts = s->attempt,
        .start_ns = s->start_ns,
        .upstream_start_ns = s->up_start_ns,
        .first_byte_ns = s->first_byte_ns,
        .end_ns = sc_worker_now_ns(s->w),
        .instance = s->up_addr_len ? (const struct sockaddr *)&s->up_addr : NULL,
        .instance_len = s->up_addr_len,
        .bytes_in = s->reqp.total,
        .bytes_out = s->respp.total,
    };
}

void sc_admit_settle(sc_stream *s, bool abandoned)
{
    const sc_pipeline *p = s->pipe;
    if (!p || (s->flags & SC_ST_F_SETTLED))
        return;
    s->flags |= SC_ST_F_SETTLED | (abandoned ? SC_ST_F_ABANDONED : 0);
    unsigned todo = p->settle_mask & ((1u << s->stage_pos) - 1); /* the stages that passed */
    if (SC_LIKELY(!todo))
        return;
    sc_outcome o;
    sc_stream_outcome(s, &o);
    for (; todo; todo &= todo - 1) {
        unsigned i = (unsigned)__builtin_ctz(todo);
        p->stage[i]->settle(s, p->stage_conf[i], &s->stage_word[i], &o);
    }
}

void sc_admit_end(sc_stream *s)
{
    const sc_pipeline *p = s->pipe;
    if (!p)
        return;
    if (SC_UNLIKELY(s->phase == SC_PHASE_PARKED))
        sc_admit_unpark(s);
    if (!(s->flags & SC_ST_F_SETTLED))
        sc_admit_settle(s, true); /* still owed only when nothing was learnt */
    for (unsigned todo = p->release_mask & ((1u << s->stage_pos) - 1); todo;) {
        unsigned i = 31u - (unsigned)__builtin_clz(todo); /* the last stage passed first */
        todo &= ~(1u << i);
        p->stage[i]->release(s, p->stage_conf[i], &s->stage_word[i]);
    }
    if (p->hooks & SC_PIPE_COMPLETE) {
        sc_outcome o;
        sc_stream_outcome(s, &o);
        for (unsigned i = 0; i < p->n_observers; i++)
            if (p->observer[i]->on_complete)
                p->observer[i]->on_complete(s, &o, p->observer_conf[i]);
    }
    /* the last use of the version: a retired one may go now */
    atomic_fetch_sub_explicit(&((sc_pipeline *)p)->live[s->w->id % SC_PIPE_LIVE_SLOTS].n, 1, memory_order_release);
    s->pipe = NULL;
}

void sc_observe_head(sc_stream *s)
{
    const sc_pipeline *p = s->pipe;
    if (SC_LIKELY(!p || !(p->hooks & SC_PIPE_HEAD)) || (s->flags & SC_ST_F_HEAD_OBSERVED))
        return;
    s->flags |= SC_ST_F_HEAD_OBSERVED;
    for (unsigned i = 0; i < p->n_observers; i++)
        if (p->observer[i]->on_response_head)
            p->observer[i]->on_response_head(s, p->observer_conf[i]);
}

void sc_observe_attempt_end(sc_stream *s, const sc_attempt_outcome *a)
{
    const sc_pipeline *p = s->pipe;
    for (unsigned i = 0; i < p->n_observers; i++)
        if (p->observer[i]->on_attempt_end)
            p->observer[i]->on_attempt_end(s, a, p->observer_conf[i]);
}

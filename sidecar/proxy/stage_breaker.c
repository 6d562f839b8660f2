/*
 * stage_breaker.c: the circuit breaker of an outbound route
 * (resilience/breaker.h, policy circuit_breaker). admit asks the breaker
 * (an open one refuses: circuit-open, or the policy's fallback, fail.c);
 * settle records the outcome once the upstream side is settled, before the
 * caller can see the response, so the next call already meets the new
 * state; a call whose caller left first is abandoned (a half-open probe
 * gives its slot back). The stage's word holds the probe id allow gave.
 *
 * Every outbound route has it, enabled or not: a disabled breaker always
 * allows and still counts outcomes for /clusters.
 */
#include "proxy/stage.h"

#include "core/log.h"
#include "http/grpc.h"

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    (void)sc;
    *conf = sc_route_breaker(r); /* the version's: a stream settles on the breaker it was admitted by */
    return !r->inbound && r->policy;
}

static void log_transition(const sc_route *r, const sc_breaker_transition *tr)
{
    if (!tr->seq)
        return;
    SC_WARN("upstream %s: circuit breaker %s -> %s: %s", r->name, sc_breaker_state_name(tr->from),
            sc_breaker_state_name(tr->to), tr->reason);
}

static sc_stage_verdict admit(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail)
{
    sc_route *r = s->route;
    sc_breaker *b = (sc_breaker *)conf;
    sc_breaker_transition tr = {0};
    bool allowed = sc_breaker_allow_ex(b, sc_worker_now_ms(s->w), word, &tr);
    log_transition(r, &tr);
    if (allowed)
        return SC_STAGE_GO;
    *fail = SC_FAIL_CIRCUIT_OPEN;
    return SC_STAGE_DENY;
}

static void settle(sc_stream *s, const void *conf, uint64_t *word, const sc_outcome *o)
{
    sc_route *r = s->route;
    sc_breaker *b = (sc_breaker *)conf;
    if (o->abandoned) {
        sc_breaker_abandon(b, *word);
        return;
    }
    int http = o->status;
    int grpc = o->grpc_status;
    if (o->grpc && grpc < 0 && http && http != 200)
        grpc = sc_grpc_status_from_http(http);
    uint32_t cond = o->fail ? sc_fail_cond(o->fail) : 0;
    if (o->fail && !cond)
        http = 0; /* a local refusal says nothing about the upstream */
    bool failure = sc_breaker_counts_as_failure(&sc_stream_policy(s)->breaker, http, grpc, cond);
    bool slow = sc_breaker_is_slow(b, (o->end_ns - o->start_ns) / 1000000u);
    sc_breaker_transition tr = {0};
    sc_breaker_record_ex(b, o->end_ns / 1000000u, failure, slow, *word, &tr);
    log_transition(r, &tr);
}

const sc_stage sc_stage_breaker = {
    .name = "circuit-breaker",
    .configure = configure,
    .admit = admit,
    .settle = settle,
};

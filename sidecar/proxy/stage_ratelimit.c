/*
 * stage_ratelimit.c: rate_limits of a route (ratelimit/ratelimit.h): on the
 * inbound route they protect the app, on an upstream the callee. After the
 * JWT stage (a key may be a verified claim), before the circuit breaker and
 * the bulkhead (a refused request costs them nothing).
 *
 * Local limits decide at once. Global ones ask Redis on the worker's
 * connection (sc_worker.rl): the request parks on the worker's rl_waiters
 * (the stage's word holds the sc_rl_admission) until
 * the module's resume, which comes within the limits' timeout (their
 * on_error then decides); the wait timer, one second beyond that, is only a
 * backstop.
 *
 * Refusals: 429 / RESOURCE_EXHAUSTED (rate-limited) with Retry-After,
 * RateLimit-Policy, RateLimit and x-sidecar-rate-limit naming the limit
 * (gRPC: the same as metadata, and grpc-retry-pushback-ms); Redis unable to
 * decide with on_error: deny: 503 / UNAVAILABLE (rate-limit-unavailable).
 */
#include "core/log.h"
#include "proxy/stage.h"

#include "ratelimit/ratelimit.h"
#include "sidecar.h"

#include <stdio.h>
#include <string.h>

/* The backstop beyond the largest per-decision budget of a route's limits. */
#define PARK_SLACK_MS 1000u

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    if (!sc->ratelimit)
        return false;
    sc_rl_set *set = NULL;
    const sc_policy *p = r->policy;
    if (r->inbound) {
        set = sc_rl_runtime_inbound(sc->ratelimit);
    } else if (p) {
        /* The limits (and their Redis keys and shared buckets) are built once,
         * from the configuration the process started with; a route rebuilt
         * by a policy reload finds its upstream's set there by name. A reload
         * that changes rate_limits waits for a restart (reload.c). */
        for (size_t i = 0; i < sc->cfg->n_policies && !set; i++)
            if (strcmp(sc->cfg->policies[i].name, p->name) == 0)
                set = sc_rl_runtime_upstream(sc->ratelimit, i);
        if (!set && p->n_rate_limits)
            SC_WARN("upstream %s: added by a reload with rate_limits: they apply after a restart", p->name);
    }
    *conf = set;
    return set && set->n > 0;
}

/* ---- what the limits see of the request ---- */

static const char *req_header(void *ctx, const char *name, size_t name_len, size_t *value_len)
{
    const sc_msg *m = &((const sc_stream *)ctx)->req;
    if (name_len == 4 && memcmp(name, "host", 4) == 0) {
        *value_len = m->authority_len;
        return m->authority;
    }
    for (size_t i = 0; i < m->n_hdrs; i++)
        if (m->hdrs[i].namelen == name_len && memcmp(m->hdrs[i].name, name, name_len) == 0) {
            *value_len = m->hdrs[i].valuelen;
            return (const char *)m->hdrs[i].value;
        }
    return NULL;
}

static const char *req_claim(void *ctx, const char *name, size_t *value_len)
{
    return sc_stage_jwt_claim(ctx, name, value_len);
}

/* ---- refusals ---- */

static sc_fail refuse(sc_stream *s, const sc_rl_decision *d)
{
    sc_rl_reply rep;
    sc_rl_reply_build(d, &rep);
    sc_stream_fail_msg(s, "%s", rep.message);
    sc_stream_fail_header(s, "x-sidecar-reason", rep.reason);
    sc_stream_fail_header(s, "x-sidecar-rate-limit", rep.limit);
    sc_stream_fail_header(s, "retry-after", rep.retry_after);
    sc_stream_fail_header(s, "ratelimit-policy", rep.policy);
    if (rep.ratelimit[0])
        sc_stream_fail_header(s, "ratelimit", rep.ratelimit);
    if (s->req.is_grpc && d->result == SC_RL_REFUSED) {
        char ms[24];
        snprintf(ms, sizeof(ms), "%llu", (unsigned long long)rep.retry_after_ms);
        sc_stream_fail_header(s, "grpc-retry-pushback-ms", ms);
    }
    return d->result == SC_RL_REFUSED ? SC_FAIL_RATE_LIMITED : SC_FAIL_RATE_LIMIT_UNAVAILABLE;
}

/* ---- the stage ---- */

static void resumed(void *arg, const sc_rl_decision *d)
{
    sc_stream *s = arg;
    *sc_parked_word(s) = 0; /* the admission is gone */
    if (sc_rl_result_admits(d->result))
        sc_admit_resume(s, SC_STAGE_GO, SC_FAIL_NONE);
    else
        sc_admit_resume(s, SC_STAGE_DENY, refuse(s, d));
}

static sc_stage_verdict admit(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail)
{
    sc_rl_set *set = (sc_rl_set *)conf;
    const sc_caller *c = sc_stream_caller(s);
    char *norm = sc_arena_alloc(&s->arena, s->req.path_len + 1);
    sc_rl_request req = {
        .method = s->req.method,
        .method_len = s->req.method_len,
        .path = s->req.path,
        .path_len = s->req.path_len,
        .caller = c ? c->identity : NULL,
        .caller_len = c && c->identity ? strlen(c->identity) : 0,
        .header = req_header,
        .claim = req_claim,
        .ctx = s,
        .norm = norm,
        .norm_cap = norm ? s->req.path_len + 1 : 0,
    };
    sc_rl_decision d;
    sc_rl_admission *adm = NULL;
    switch (sc_rl_admit(s->w->rl, set, &req, s->start_ns, &d, &adm, resumed, s)) {
    case SC_RL_GO:
        return SC_STAGE_GO;
    case SC_RL_PARK: {
        uint64_t budget = 0;
        for (size_t i = 0; i < set->n; i++)
            if (set->v[i].cfg->global)
                budget = SC_MAX(budget, set->v[i].cfg->timeout_ms);
        *word = (uint64_t)(uintptr_t)adm;
        sc_stage_park(s, &s->w->rl_waiters, budget + PARK_SLACK_MS);
        return SC_STAGE_PARK;
    }
    case SC_RL_DENY:
    default:
        *fail = refuse(s, &d);
        return SC_STAGE_DENY;
    }
}

/* The module did not resume in time (it always should): its answer is dropped. */
static sc_fail timeout(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)conf;
    sc_rl_admission_cancel((sc_rl_admission *)(uintptr_t)*word);
    *word = 0;
    sc_stream_fail_msg(s, "%s: Redis did not decide a global rate limit in time", s->route->name);
    return SC_FAIL_RATE_LIMIT_UNAVAILABLE;
}

static void cancel(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)s;
    (void)conf;
    sc_rl_admission_cancel((sc_rl_admission *)(uintptr_t)*word);
    *word = 0;
}

const sc_stage sc_stage_ratelimit = {
    .name = "rate-limit",
    .configure = configure,
    .admit = admit,
    .timeout = timeout,
    .cancel = cancel,
};

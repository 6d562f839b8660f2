/*
 * stage_budget.c: retries of an outbound route (policy retries): every
 * admitted request counts towards the retry budget (a ratio of the request
 * rate, resilience/retry.h), and its body is kept for a replay when more
 * than one attempt is allowed (sc_stream.replayable, attempt.c). Always GO.
 */
#include "proxy/stage.h"

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    (void)sc;
    *conf = NULL;
    return !r->inbound && r->policy && r->policy->retries.enabled;
}

static sc_stage_verdict admit(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail)
{
    (void)conf;
    (void)word;
    (void)fail;
    sc_route *r = s->route;
    sc_retry_budget_on_request(&r->budget, s->start_ns / 1000000u);
    s->replayable = sc_stream_policy(s)->retries.max_attempts > 1;
    return SC_STAGE_GO;
}

const sc_stage sc_stage_retry_budget = {
    .name = "retry-budget",
    .configure = configure,
    .admit = admit,
};

/*
 * reply.c: refusal values of a rate-limited request (reply.h).
 */
#include "ratelimit/reply.h"

#include <stdio.h>

/* Whole seconds, rounded up, at least 1. */
static uint64_t ceil_s(uint64_t ns)
{
    uint64_t s = ns / 1000000000ull + (ns % 1000000000ull != 0);
    return s ? s : 1;
}

/* The configured rate over a whole-second window: w = the period rounded up
 * to seconds, q = the requests the rate allows in w. */
static void quota(const sc_rl_gcra *g, uint64_t *q, uint64_t *w)
{
    uint64_t ws = (g->period_ms + 999) / 1000;
    if (ws == 0)
        ws = 1;
    *w = ws;
    *q = (uint64_t)((long double)g->count * (long double)(ws * 1000) / (long double)g->period_ms);
}

void sc_rl_reply_headers(const sc_rl_decision *d, char *policy, size_t policy_cap,
                         char *ratelimit, size_t ratelimit_cap)
{
    const sc_rl_limit *l = d->limit;
    const char *name = l && l->cfg && l->cfg->name ? l->cfg->name : "";
    if (policy && policy_cap) {
        uint64_t q = 0, w = 1;
        if (l)
            quota(&l->gcra, &q, &w);
        /* Names are [A-Za-z0-9_.-]: nothing to escape in an sf-string. */
        int n = snprintf(policy, policy_cap, "\"%s\";q=%llu;w=%llu", name, (unsigned long long)q,
                         (unsigned long long)w);
        if (l && l->gcra.burst != q && n > 0 && (size_t)n < policy_cap)
            snprintf(policy + n, policy_cap - (size_t)n, ";sidecar-burst=%llu",
                     (unsigned long long)l->gcra.burst);
    }
    if (ratelimit && ratelimit_cap) {
        if (d->result == SC_RL_ALLOWED || d->result == SC_RL_REFUSED)
            snprintf(ratelimit, ratelimit_cap, "\"%s\";r=%llu;t=%llu", name,
                     (unsigned long long)(d->result == SC_RL_ALLOWED ? d->out.remaining : 0),
                     (unsigned long long)ceil_s(d->out.next_ns));
        else
            ratelimit[0] = 0;
    }
}

void sc_rl_reply_build(const sc_rl_decision *d, sc_rl_reply *out)
{
    memset(out, 0, sizeof(*out));
    const sc_rl_limit *l = d->limit;
    const char *name = l && l->cfg && l->cfg->name ? l->cfg->name : "";
    const char *route = l && l->route ? l->route : "";
    out->limit = name;
    sc_rl_reply_headers(d, out->policy, sizeof(out->policy), out->ratelimit,
                        sizeof(out->ratelimit));
    char rate[64] = "";
    if (l && l->cfg) {
        char per[48];
        sc_duration_format(l->cfg->period_ms, per, sizeof(per));
        snprintf(rate, sizeof(rate), "%llu/%s", (unsigned long long)l->cfg->count, per);
    }
    uint64_t wait_s;
    if (d->result == SC_RL_ERROR_REFUSED) {
        out->http_status = 503;
        out->grpc_status = 14;
        out->reason = "rate-limit-unavailable";
        wait_s = 1;
        snprintf(out->message, sizeof(out->message),
                 "%s: rate limit '%s' could not be checked (Redis did not answer) and its "
                 "on_error is deny; retry in 1s",
                 route, name);
    } else {
        out->http_status = 429;
        out->grpc_status = 8;
        out->reason = "rate-limited";
        wait_s = ceil_s(d->out.next_ns);
        snprintf(out->message, sizeof(out->message),
                 "%s: rate limit '%s' (%s, burst %llu) exceeded; retry in %llus", route, name,
                 rate, (unsigned long long)(l ? l->gcra.burst : 0), (unsigned long long)wait_s);
    }
    out->retry_after_ms = d->result == SC_RL_ERROR_REFUSED ? 1000 : (d->out.next_ns + 999999) / 1000000;
    snprintf(out->retry_after, sizeof(out->retry_after), "%llu", (unsigned long long)wait_s);
}

/*
 * route.c: a route's process-wide state: per-instance health kept across
 * endpoint snapshots, and the resilience objects shared by every worker.
 * Everything here that mutates runs on the control thread.
 */
#include "core/log.h"
#include "config/config_diff.h"
#include "proxy/proxy.h"
#include "proxy/stage.h"

#include <stdlib.h>
#include <string.h>

static sc_instance_state *state_for(sc_route *r, const sc_addr *a)
{
    for (sc_instance_state *st = r->states; st; st = st->next)
        if (st->len == a->len && memcmp(&st->ss, &a->ss, a->len) == 0)
            return st;
    sc_instance_state *st = sc_xcalloc(1, sizeof(*st));
    memcpy(&st->ss, &a->ss, a->len);
    st->len = a->len;
    sc_outlier_instance_init(&st->ol);
    st->next = r->states;
    r->states = st;
    return st;
}

void sc_route_publish(sc_route *r, sc_endpoints *snap)
{
    for (size_t i = 0; i < snap->n; i++)
        snap->inst[i].state = state_for(r, &snap->inst[i].addr);
    sc_endpoints *old = sc_endpoints_current(&r->endpoints);
    /* An instance that left discovery gives its slot of the ejection cap back. */
    for (size_t i = 0; old && i < old->n; i++) {
        sc_instance_state *st = old->inst[i].state;
        bool kept = false;
        for (size_t j = 0; st && j < snap->n && !kept; j++)
            kept = snap->inst[j].state == st;
        if (st && !kept && sc_outlier_remove(&r->outlier, &st->ol))
            SC_INFO("upstream %s: ejected instance left discovery", r->name);
    }
    sc_endpoints_publish(&r->endpoints, snap);
}

void sc_route_init_resilience(sc_route *r, const sc_policy *p, uint32_t inbound_max_concurrent)
{
    uint64_t now = sc_now_ms();
    if (p) {
        sc_breaker_init(&r->breaker, &p->breaker, now);
        sc_bulkhead_init(&r->bulkhead, &p->bulkhead);
        sc_retry_budget_init(&r->budget, p->retries.budget_ratio, p->retries.budget_min_per_second);
        sc_outlier_init(&r->outlier, &p->outlier);
        return;
    }
    sc_breaker_policy off = {0};
    sc_breaker_init(&r->breaker, &off, now);
    sc_bulkhead_policy bh = {.enabled = inbound_max_concurrent > 0, .max_concurrent = inbound_max_concurrent};
    sc_bulkhead_init(&r->bulkhead, &bh);
    sc_retry_budget_init(&r->budget, 0, 0);
    sc_outlier_policy ol = {0};
    sc_outlier_init(&r->outlier, &ol);
}

void sc_route_free_states(sc_route *r)
{
    while (r->states) {
        sc_instance_state *st = r->states;
        r->states = st->next;
        free(st);
    }
}

/* ---- versions (policy reload) ---- */

static sc_pipeline *g_retired; /* control thread only */

sc_cfg_hold *sc_cfg_hold_new(sc_config *cfg)
{
    sc_cfg_hold *h = sc_xcalloc(1, sizeof(*h));
    h->cfg = cfg;
    h->refs = 1;
    return h;
}

void sc_cfg_hold_put(sc_cfg_hold *h)
{
    if (h && --h->refs == 0) {
        sc_config_free(h->cfg);
        free(h);
    }
}

void sc_route_update(sc_route *r, const sc_policy *p, uint32_t parts, sc_cfg_hold *hold, const struct sidecar *sc)
{
    if (parts & SC_PART_BREAKER) {
        /* new thresholds or window: counts under the old ones say nothing; a
         * new breaker starts closed (streams admitted by the old one settle
         * on it) */
        sc_breaker_box *box = sc_xcalloc(1, sizeof(*box));
        sc_breaker_init(&box->b, &p->breaker, sc_now_ms());
        atomic_store(&r->breaker_cur, &box->b);
    }
    if (parts & SC_PART_BULKHEAD)
        sc_bulkhead_set_limits(&r->bulkhead, &p->bulkhead);
    if (parts & SC_PART_RETRY_BUDGET)
        sc_retry_budget_set(&r->budget, p->retries.budget_ratio, p->retries.budget_min_per_second);
    if (parts & SC_PART_OUTLIER)
        sc_outlier_set_policy(&r->outlier, &p->outlier);
    r->timeouts = &p->timeouts;
    r->policy = p;
    sc_pipeline *np = sc_pipeline_build(r, sc);
    np->hold = hold;
    if (hold)
        hold->refs++;
    sc_pipeline *old = (sc_pipeline *)atomic_exchange(&r->pipeline, np);
    old->retire_epoch = sc_epoch_retire();
    old->retired_next = g_retired;
    g_retired = old;
}

void sc_route_hold_config(sc_route *r, sc_cfg_hold *hold)
{
    sc_pipeline *p = (sc_pipeline *)r->pipeline;
    p->hold = hold;
    if (hold)
        hold->refs++;
}

static size_t reclaim(bool all)
{
    size_t waiting = 0;
    for (sc_pipeline **pp = &g_retired; *pp;) {
        sc_pipeline *p = *pp;
        if (all || (sc_epoch_passed(p->retire_epoch) && sc_pipeline_live(p) == 0)) {
            *pp = p->retired_next;
            sc_pipeline_free(p);
        } else {
            pp = &p->retired_next;
            waiting++;
        }
    }
    return waiting;
}

size_t sc_route_reclaim(void)
{
    return reclaim(false);
}

void sc_route_reclaim_all(void)
{
    reclaim(true);
}

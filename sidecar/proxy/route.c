/*
 * route.c: a route's process-wide state: per-instance health kept across
 * endpoint snapshots, and the resilience objects shared by every worker.
 * Everything here that mutates runs on the control thread.
 */
#include "core/log.h"
#include "proxy/proxy.h"

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

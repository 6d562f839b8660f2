/*
 * obs_outlier.c: outlier detection of an outbound route (policy outlier,
 * resilience/outlier.h): each attempt's end counts for the instance it went
 * to; consecutive gateway failures (connect failures, resets, refused
 * streams, 502/503/504, gRPC UNAVAILABLE) eject it for a while (the load
 * balancer skips it, attempt.c), anything else resets the count.
 */
#include "proxy/stage.h"

#include "core/log.h"

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    (void)sc;
    *conf = NULL;
    return !r->inbound && r->policy && r->policy->outlier.enabled;
}

static void on_attempt_end(sc_stream *s, const sc_attempt_outcome *a, const void *conf)
{
    (void)conf;
    sc_route *r = s->route;
    sc_instance_state *st = (sc_instance_state *)a->instance;
    sc_endpoints *e = sc_endpoints_current(&r->endpoints);
    uint64_t now = a->end_ns / 1000000u;
    if (sc_outlier_record(&r->outlier, &st->ol, e ? e->n : 1, a->gateway_failure, now) != 1)
        return;
    sc_outlier_instance_view v;
    sc_outlier_instance_snapshot(&st->ol, now, &v);
    char addr[64];
    sc_sockaddr_text((const struct sockaddr *)&st->ss, addr, sizeof(addr));
    SC_WARN("upstream %s: instance %s ejected for %llums after %u consecutive gateway errors or connect "
            "failures (ejection #%llu)", r->name, addr, (unsigned long long)v.ms_left,
            r->policy->outlier.consecutive_failures, (unsigned long long)v.total_ejections);
}

const sc_observer sc_observer_outlier = {
    .name = "outlier-detection",
    .configure = configure,
    .on_attempt_end = on_attempt_end,
};

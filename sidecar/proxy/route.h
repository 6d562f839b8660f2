/*
 * route.h: a route is where one listener's traffic goes: the local app
 * (the inbound route) or one upstream's instances (a policy). The control
 * plane (sidecar.c, admin, the Consul watches, authorization, app health)
 * reads routes and publishes endpoint snapshots through this header; how
 * the data plane carries a request is private to sidecar/proxy/ (the
 * route's pipeline of admission stages and observers, its upstream codec).
 *
 * Threads: a route is set up on the control thread before the workers run
 * and lives until they are joined. Workers read it without locks: the
 * config is read-only, endpoint snapshots are published with
 * sc_route_publish (discovery/endpoints.h has the reclamation rules), the
 * resilience objects are atomics.
 */
#ifndef SC_ROUTE_H
#define SC_ROUTE_H

#include "config/config.h"
#include "core/log.h"
#include "discovery/endpoints.h"
#include "resilience/breaker.h"
#include "resilience/bulkhead.h"
#include "resilience/outlier.h"
#include "resilience/retry.h"

struct sidecar;
struct sc_pipeline;
struct sc_up_codec;

/* Per instance (by address), for the life of the route: shared by workers. */
typedef struct sc_instance_state {
    struct sc_instance_state *next;
    struct sockaddr_storage ss;
    socklen_t len;
    sc_outlier_instance ol;         /* ejection state and requests in flight */
} sc_instance_state;

typedef struct sc_route {
    const char *name;               /* upstream name, or "inbound" */
    unsigned index;                 /* into sidecar->routes, each worker's per-route state and stats */
    sc_proto protocol;              /* towards the instances */
    const sc_timeouts *timeouts;
    const sc_policy *policy;        /* NULL for inbound */
    bool inbound;
    sc_endpoints_ref endpoints;     /* published snapshot (discovery/endpoints.h) */
    /* The data plane's, set by sc_route_build_pipeline (proxy/stage.h, proxy/codec.h). */
    const struct sc_pipeline *pipeline; /* admission stages and observers, in order */
    const struct sc_up_codec *uc;   /* the codec towards the instances, from protocol */
    /* Resilience state shared by all workers (resilience/). */
    sc_breaker breaker;
    sc_bulkhead bulkhead;
    sc_retry_budget budget;
    sc_outlier outlier;
    sc_instance_state *states;      /* control thread adds, nobody frees before the route */
    sc_ratelimit log_limit;         /* per-request warnings about this upstream */
} sc_route;

/* Control thread: attaches per-instance state to `snap` and publishes it;
 * instances that left are taken out of the outlier cap. Takes the snapshot. */
void sc_route_publish(sc_route *r, sc_endpoints *snap);
/* Start-up: resilience state from the policy (NULL policy: inbound). */
void sc_route_init_resilience(sc_route *r, const sc_policy *p, uint32_t inbound_max_concurrent);
void sc_route_free_states(sc_route *r);
/* Start-up, once every route's config is set: the route's admission stages
 * and observers (the registry in proxy/admit.c decides which apply) and its
 * upstream codec. Freed with sc_route_free_pipeline after the workers ended. */
void sc_route_build_pipeline(sc_route *r, const struct sidecar *sc);
void sc_route_free_pipeline(sc_route *r);

#endif

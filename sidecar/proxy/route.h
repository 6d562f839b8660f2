/*
 * route.h: a route is where one listener's traffic goes: the local app
 * (the inbound route) or one upstream's instances (a policy). The control
 * plane (sidecar.c, admin, the Consul watches, authorization, app health)
 * reads routes and publishes endpoint snapshots through this header; how
 * the data plane carries a request is private to sidecar/proxy/ (the
 * route's pipeline of admission stages and observers, its upstream codec).
 *
 * Threads: a route is set up on the control thread, before the workers run
 * or (an upstream a reload adds) before sidecar.n_routes counts it, and
 * lives until the workers are joined; a removed one keeps its slot. Workers read it without locks: the
 * config is read-only, endpoint snapshots are published with
 * sc_route_publish (discovery/endpoints.h has the reclamation rules), the
 * resilience objects are atomics.
 *
 * Versions (policy reload): policy, timeouts, the pipeline and the current
 * breaker form the route's version, replaced together by sc_route_update
 * (atomic pointers; the pipeline is stored last). A stream takes the
 * version's pipeline once, when it starts (sc_pipeline_acquire), and reads
 * its policy and timeouts there (s->pipe) to its end, so a request keeps the
 * policy it started with. A replaced version is retired: freed by
 * sc_route_reclaim once no worker can still load it (epoch) and no stream
 * holds it (per-worker counts of the pipeline). Everything else of the route
 * stays: endpoints, per-instance state, bulkhead, retry budget, outlier
 * state (their limits change in place), per-worker pools and counters.
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
    /* The current version (see above); a stream reads its own in s->pipe. */
    _Atomic(const sc_timeouts *) timeouts;
    _Atomic(const sc_policy *) policy; /* NULL for inbound */
    bool inbound;
    sc_endpoints_ref endpoints;     /* published snapshot (discovery/endpoints.h) */
    /* The data plane's, set by sc_route_build_pipeline (proxy/stage.h, proxy/codec.h). */
    _Atomic(const struct sc_pipeline *) pipeline; /* admission stages and observers, in order */
    const struct sc_up_codec *uc;   /* the codec towards the instances, from protocol */
    /* Resilience state shared by all workers (resilience/). */
    sc_breaker breaker;             /* the first breaker; read the current one with sc_route_breaker */
    _Atomic(sc_breaker *) breaker_cur; /* &breaker, or the one a reload made (owned by its version) */
    sc_bulkhead bulkhead;
    sc_retry_budget budget;
    sc_outlier outlier;
    sc_instance_state *states;      /* control thread adds, nobody frees before the route */
    sc_ratelimit log_limit;         /* per-request warnings about this upstream */
    /* Live add/remove (reload): a removed route keeps its slot, its state and
     * its counters; its listeners close, its connections drain. An upstream
     * of the same name and protocol added later takes the slot again. */
    _Atomic bool removed;
    char *owned_name;               /* `name` when a reload added the route (freed with sc) */
} sc_route;

static inline bool sc_route_active(const sc_route *r)
{
    return !atomic_load_explicit(&((sc_route *)r)->removed, memory_order_acquire);
}

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

static inline sc_breaker *sc_route_breaker(const sc_route *r)
{
    return atomic_load_explicit(&((sc_route *)r)->breaker_cur, memory_order_acquire);
}

/* A breaker a reload made, shared by the versions that use it (control
 * thread counts): freed with the last of them. */
typedef struct sc_breaker_box {
    sc_breaker b;                   /* first: a box is its breaker */
    unsigned refs;
} sc_breaker_box;

/* A loaded configuration shared by the route versions whose policies point
 * into it (control thread only): freed when the last reference goes. */
typedef struct sc_cfg_hold {
    sc_config *cfg;
    unsigned refs;
} sc_cfg_hold;
sc_cfg_hold *sc_cfg_hold_new(sc_config *cfg);  /* one reference, the caller's */
void sc_cfg_hold_put(sc_cfg_hold *h);           /* NULL is fine */

/* Control thread, workers running: route r takes policy p (a policy of
 * hold's configuration, which the new version references) for requests
 * that start from now on. parts (config_diff.h SC_PART_*) says what changed:
 * a changed breaker (thresholds, window) gets a new, closed breaker; bulkhead
 * limits, retry budget and outlier parameters change in place (counts,
 * window, ejections stay); the rest is read from the policy. The old
 * version is retired. */
void sc_route_update(sc_route *r, const sc_policy *p, uint32_t parts, sc_cfg_hold *hold,
                     const struct sidecar *sc);
/* Control thread, at set-up of a route a reload adds: its pipeline
 * references hold (the configuration its policy points into). */
void sc_route_hold_config(sc_route *r, sc_cfg_hold *hold);
/* Control thread: frees retired versions nobody uses any more. Returns how
 * many are still waiting. */
size_t sc_route_reclaim(void);
/* After the workers ended: frees every retired version. */
void sc_route_reclaim_all(void);

#endif

/*
 * sidecar.h: the process: configuration, routes, worker threads, the
 * control thread (admin endpoint, discovery, signals) and how they start,
 * drain and stop.
 *
 * Ownership: sc_sidecar_new() takes the config; sc_sidecar_free() releases
 * everything once sc_sidecar_run() has returned.
 */
#ifndef SC_SIDECAR_H
#define SC_SIDECAR_H

#include "config/config.h"
#include "proxy/route.h"
#include "proxy/worker.h"

#include <ev.h>
#include <stdatomic.h>

typedef struct sidecar {
    sc_config *cfg;
    sc_route *routes;               /* [routes_cap]: [0] inbound (when configured), then one per policy;
                                     * a route never moves (workers and connections point at it) */
    _Atomic size_t n_routes;        /* in use; grows on the control thread when a reload adds an upstream
                                     * (the route is set up before the count publishes it) */
    size_t routes_cap;              /* the start-up routes plus SC_ROUTES_SPARE (0: n_routes, tests) */
    struct sc_worker **workers;     /* [n_workers] (proxy/worker.h) */
    unsigned n_workers;
    struct ev_loop *loop;           /* control thread loop (the main thread) */
    _Atomic bool draining;
    _Atomic bool ready;
    _Atomic unsigned workers_running;
    uint64_t started_ms;
    struct sc_admin *admin;
    /* Consul and health checks: NULL when not configured */
    struct sc_consul *consul;
    struct sc_app_health *app_health;
    struct sc_grpc_health *grpc_health;
    struct sc_tls_watch *tls_server;      /* inbound listener material, NULL = cleartext */
    struct sc_tls_watch *tls_client;      /* outbound origination material (mode: mutual) */
    struct sc_tls_watch *tls_client_anon; /* outbound, no client certificate (mode: simple) */
    struct sc_authz *authz;               /* tls.authorize: consul, NULL otherwise */
    /* rate limits (ratelimit/ratelimit.h): built with the routes, NULL only
     * when building failed (sc_sidecar_run then refuses to start, saying why
     * in ratelimit_err); JWT (jwt/jwt_runtime.h): inbound.jwt, NULL when off */
    struct sc_rl_runtime *ratelimit;
    char *ratelimit_err;
    struct sc_jwt *jwt;
    struct sc_tracer *tracer;             /* tracing: (trace/tracer.h), NULL when off */
    /* observability (obs/): the access log (NULL when access_log: is absent)
     * and the rings of recent failures (one per worker, GET /failures) */
    struct sc_access_log *access_log;
    struct sc_failures *failures;
    struct sc_obs_worker *obs;            /* per worker: what the request path calls (obs/observe.h) */
    /* reload (reload.h): the file named by --config (NULL: the built-in
     * example, nothing to reload) and the reload state of the control thread */
    const char *config_path;
    struct sc_reload *reload;
} sidecar;

/* Room for upstreams a reload adds beyond those of the start: a removed
 * upstream's slot is used again when an upstream of the same name and
 * protocol comes back, so add/remove cycles do not use it up. */
#define SC_ROUTES_SPARE 64

/* The routes the process runs (a removed one is left out of the views). */
#define SC_FOR_ACTIVE_ROUTES(sc, r)                                                                             \
    for (size_t r = 0; r < (sc)->n_routes; r++)                                                                 \
        if (sc_route_active(&(sc)->routes[r]))

sidecar *sc_sidecar_new(sc_config *cfg);
/* Control thread: a route for policy p (static discovery) in the next free
 * slot, ready for requests but not yet counted in n_routes (the caller
 * publishes it once its listeners are bound). hold (NULL: sc->cfg) is the
 * configuration p belongs to; the route's pipeline references it. NULL when
 * every slot is in use. */
sc_route *sc_sidecar_route_prepare(sidecar *sc, const sc_policy *p, sc_cfg_hold *hold);
/* The instances of p (static discovery) published to rt. */
void sc_sidecar_route_publish_static(sc_route *rt, const sc_policy *p);
/* Binds every listener (so errors show before anything runs), starts the
 * workers and runs the control loop until SIGTERM/SIGINT and the drain end.
 * Returns 0 after a clean drain, or a negative error when start-up failed. */
int sc_sidecar_run(sidecar *sc);
void sc_sidecar_free(sidecar *sc);

/* Control thread: begin the drain (signal, admin POST /drain). */
void sc_sidecar_drain(sidecar *sc);

#endif

/*
 * app_health.h: is the local app up? A periodic probe on the control
 * thread (health.app_probe: a TCP connect to inbound.app, or an HTTP GET of
 * health.app_path answered 2xx) that drives the sidecar's readiness: the
 * admin /ready answer, the Consul TTL check and the grpc.health.v1 status.
 *
 * The first probe runs at start and decides at once; after that the app is
 * marked down after 2 failed probes in a row (one slow answer does not flap
 * the registration) and up again after 1 good one. Probes never block: the
 * connect and the HTTP exchange are non-blocking with health.timeout.
 *
 * Threads: start, stop, subscribe and the reason text are control-thread
 * only; sc_app_health_is_up() and sc_health_ready(sc, NULL, 0) may be
 * called from any thread (the gRPC health thread does).
 */
#ifndef SC_APP_HEALTH_H
#define SC_APP_HEALTH_H

#include "sidecar.h"

typedef struct sc_app_health sc_app_health;

/* Called on the control thread when the app goes up or down. */
typedef void (*sc_app_health_cb)(void *arg, bool up);

/* Starts probing cfg->inbound.app on `loop`. Returns 0 and *out, or
 * -ENOENT when there is nothing to probe (no inbound app, or app_probe
 * none: *out is then NULL and the app counts as up), -ENOMEM. */
int sc_app_health_start(struct ev_loop *loop, const sc_config *cfg, sc_app_health **out);
/* Stops probing and frees; NULL is fine. */
void sc_app_health_stop(sc_app_health *h);

/* Up to 4 subscribers. */
void sc_app_health_subscribe(sc_app_health *h, sc_app_health_cb cb, void *arg);

/* Any thread. NULL counts as up. False also before the first probe ended. */
bool sc_app_health_is_up(const sc_app_health *h);
/* Control thread: a sentence on the last probe ("app 127.0.0.1:8080: connect:
 * Connection refused", "app 127.0.0.1:8080 answered GET /healthz with 200"). */
const char *sc_app_health_reason(const sc_app_health *h);
/* Control thread: Prometheus lines (sidecar_app_healthy, probe counters). */
void sc_app_health_render_stats(const sc_app_health *h, FILE *f);

/*
 * The sidecar's readiness, shared by /ready, the TTL check and gRPC health:
 * not ready while starting or draining or while the app is down. Any thread
 * when why is NULL; with why (control thread) it gets "starting",
 * "draining" or "app down: <reason>".
 */
bool sc_health_ready(const sidecar *sc, char *why, size_t cap);

#endif

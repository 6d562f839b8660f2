/*
 * admin.h: the admin endpoint on the control thread (loopback by default):
 *   GET  /          the admin page: HTML for a person (admin_page.h, docs/admin.md)
 *   GET  /help      the list of endpoints, as text
 *   GET  /ready     200 when serving, 503 with the reason otherwise
 *   GET  /stats     Prometheus text format, counters summed over workers
 *   GET  /clusters  JSON: every upstream, its instances and live figures
 *   GET  /config    JSON: the effective configuration (no secrets)
 *   GET  /failures  JSON: the last failed requests, newest first (obs/failures.h)
 *   GET  /log, POST /log?level=debug|info|warn|error
 *   POST /drain     begin a graceful drain (as SIGTERM does)
 *   POST /reload    reload the configuration now (as SIGHUP does; reload.h)
 * One request per connection (Connection: close); answers are built whole
 * (they are small) and written without blocking the control loop.
 *
 * Every request but GET /ready must name this endpoint in its Host (a
 * loopback name or address with the admin port, the listener's own
 * address, or admin.allowed_hosts: DNS rebinding) and, with
 * admin.token_file, carry "Authorization: Bearer <token>" (401). Anything
 * but GET/HEAD must also carry X-Sidecar-Admin (or Content-Type:
 * application/json) and no foreign Origin (403): a web page cannot send
 * that cross-site. GET /ready is exempt so orchestrator probes and Consul
 * HTTP checks, which use the pod or host address, keep working; it changes
 * nothing. GET / needs no token (the page is the same static text for
 * everyone; it asks for the token and sends it when fetching the figures).
 * The checks themselves are in admin_http.h.
 */
#ifndef SC_ADMIN_H
#define SC_ADMIN_H

#include "sidecar.h"

typedef struct sc_admin sc_admin;

/* Binds the admin listener on the sidecar's control loop. */
int sc_admin_start(sidecar *sc, sc_admin **out, char *err, size_t errlen);
void sc_admin_stop(sc_admin *a);

/* Builders, exposed for tests. Caller frees the returned string. */
char *sc_admin_render_stats(const sidecar *sc);
char *sc_admin_render_clusters(const sidecar *sc);

#endif

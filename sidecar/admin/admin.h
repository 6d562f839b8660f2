/*
 * admin.h: the admin endpoint on the control thread (loopback by default):
 *   GET  /ready     200 when serving, 503 with the reason otherwise
 *   GET  /stats     Prometheus text format, counters summed over workers
 *   GET  /clusters  JSON: every upstream, its instances and live figures
 *   GET  /config    JSON: the effective configuration (no secrets)
 *   GET  /log, POST /log?level=debug|info|warn|error
 *   POST /drain     begin a graceful drain (as SIGTERM does)
 * One request per connection (Connection: close); answers are built whole
 * (they are small) and written without blocking the control loop.
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

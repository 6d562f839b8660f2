/*
 * grpc_health.h: the standard grpc.health.v1.Health service (Check and
 * Watch) on health.grpc_listen, served with gRPC C core on a thread of its
 * own (one completion queue), so that a Consul GRPC check or an
 * orchestrator's gRPC probe can ask the sidecar whether it is ready.
 *
 * Status: SERVING when sc_health_ready() (started, not draining, local app
 * up), NOT_SERVING otherwise, for the service "" and for the sidecar's own
 * service name; any other name is NOT_FOUND (Check) or SERVICE_UNKNOWN
 * (Watch), as the health protocol says. Watch streams get a new message when
 * the status changes (polled every 250 ms while a Watch is open; the thread
 * sleeps otherwise). Other methods answer UNIMPLEMENTED.
 *
 * The messages are tiny and decoded by hand (no protoc):
 *   HealthCheckRequest  { string service = 1; }
 *   HealthCheckResponse { ServingStatus status = 1; }  UNKNOWN 0, SERVING 1,
 *                                                      NOT_SERVING 2, SERVICE_UNKNOWN 3
 */
#ifndef SC_GRPC_HEALTH_H
#define SC_GRPC_HEALTH_H

#include "sidecar.h"

typedef struct sc_grpc_health sc_grpc_health;

enum {
    SC_HEALTH_UNKNOWN = 0,
    SC_HEALTH_SERVING = 1,
    SC_HEALTH_NOT_SERVING = 2,
    SC_HEALTH_SERVICE_UNKNOWN = 3,
};

/* Binds cfg->health.grpc_listen and starts the thread (control thread, once
 * sc->app_health is set). Returns 0 and *out, -ENOENT when not configured,
 * -EADDRINUSE (err says more) when the port cannot be bound, -ENOMEM. */
int sc_grpc_health_start(sidecar *sc, sc_grpc_health **out, char *err, size_t errlen);
/* Shuts the server down (open Watch streams are cancelled), joins the
 * thread, frees. NULL is fine. */
void sc_grpc_health_stop(sc_grpc_health *g);

/* HealthCheckRequest: the service name into `service` (NUL terminated).
 * Unknown fields are skipped. Returns 0, -EPROTO for a malformed message,
 * -ENOSPC when the name does not fit. */
int sc_grpc_health_decode_request(const uint8_t *p, size_t n, char *service, size_t cap);
/* HealthCheckResponse for `status` into out (at least 11 bytes); returns the
 * length (0 for UNKNOWN, the proto3 default). */
size_t sc_grpc_health_encode_response(unsigned status, uint8_t *out);

#endif

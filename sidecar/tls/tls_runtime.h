/*
 * tls_runtime.h: the process's TLS material at run time: the inbound
 * server context, the outbound client contexts (with our certificate for
 * mode: mutual, without for mode: simple), their reload when the files change
 * (checked every second) or on SIGHUP, and the local certificate's expiry
 * for readiness and the admin endpoint. Control thread only, except
 * sc_tls_runtime_cert_ok() which any thread may call.
 */
#ifndef SC_TLS_RUNTIME_H
#define SC_TLS_RUNTIME_H

#include "sidecar.h"

/* Builds the contexts the configuration asks for; errors are fatal at start. */
int sc_tls_runtime_start(sidecar *sc, char *err, size_t errlen);
/* Starts the reload timer and the SIGHUP watcher on the control loop. */
void sc_tls_runtime_watch(sidecar *sc);
void sc_tls_runtime_stop(sidecar *sc);
/* false when our certificate is expired or not yet valid (readiness fails). */
bool sc_tls_runtime_cert_ok(const sidecar *sc, char *why, size_t whylen);
/* JSON for GET /certs (caller frees). */
char *sc_tls_runtime_render(const sidecar *sc);

#endif

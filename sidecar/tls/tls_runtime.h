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
/*
 * tls.source: consul. The Consul client hands over the Connect leaf (cert and
 * key PEM) and every root (ca PEM); the inbound and outbound contexts are
 * rebuilt from memory and swapped (sc_tls_watch_set_pem) when valid. Until
 * the first call succeeds, readiness fails ("waiting for the Connect
 * certificate") and inbound TLS accepts fail (no context). Control thread.
 * Returns 1 new material in use, 0 unchanged, <0 refused (err; old stays).
 */
int sc_tls_runtime_connect_set(sidecar *sc, const char *cert_pem, const char *key_pem,
                               const char *ca_pem, char *err, size_t errlen);
/* What the Connect client saw last, for GET /certs (control thread). While no
 * leaf is in use, last_error (NULL or "" = none) is also the reason /ready
 * gives: "waiting for the Connect certificate (<last_error>)". */
void sc_tls_runtime_connect_note(const char *leaf_serial, size_t n_roots, uint64_t leaf_index,
                                 uint64_t roots_index, const char *last_error);
/* JSON for GET /certs (caller frees). */
char *sc_tls_runtime_render(const sidecar *sc);

#endif

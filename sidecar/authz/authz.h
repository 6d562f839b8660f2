/*
 * authz.h: `tls.authorize: consul` at run time: whether an inbound caller
 * may call is asked of the local Consul agent (POST
 * /v1/agent/connect/authorize, the intentions) and the answers are cached
 * per caller identity for tls.authorize_cache (see docs/tls.md).
 *
 * Threads and hand-offs:
 *   - Workers ask with sc_authz_check() (and, for a request that waits,
 *     sc_authz_result()) only when the decision remembered on the caller's
 *     connection has expired; both take the one mutex around the shared
 *     cache (authz_cache.h) for a few hash-table operations. A lookup the
 *     cache queues is handed to the control thread with an ev_async.
 *   - The control thread sends each lookup through the Consul client
 *     (libcurl multi, sc_consul_authorize, with the client's ACL token and
 *     a SC_AUTHZ_LOOKUP_TIMEOUT_MS timeout), records the answer in the cache
 *     and wakes (sc_worker_wake with SC_WAKE_AUTHZ, proxy/worker.h) each
 *     worker that has a request waiting; that worker then calls
 *     sc_authz_result() for its waiting requests (the Consul-intentions
 *     admission stage, proxy/stage_authz.c).
 *   - Nothing is ever allowed by default: no answer and no earlier answer
 *     means SC_AUTHZ_UNAVAILABLE (the request gets 503 / UNAVAILABLE).
 *
 * Ownership: the sidecar owns the object (sc->authz). Create it on the
 * control thread after the workers are initialised and before they start;
 * free it after the workers were joined and the Consul client stopped.
 * Reason pointers in decisions stay valid until sc_authz_free.
 */
#ifndef SC_AUTHZ_H
#define SC_AUTHZ_H

#include "authz/authz_cache.h"
#include "core/log.h"
#include "sidecar.h"

#include <stdio.h>

/* A lookup that has not ended after this long counts as failed. */
#define SC_AUTHZ_LOOKUP_TIMEOUT_MS 5000u
/* A request waits at most this long for a lookup (its own deadline may be shorter). */
#define SC_AUTHZ_WAIT_MS (SC_AUTHZ_LOOKUP_TIMEOUT_MS + 1000u)

typedef struct sc_authz sc_authz;
struct json_t;

/* Control thread: creates sc->authz when tls.authorize is consul; call
 * before the workers run. Returns 0, -ENOENT when not configured (*out NULL), -ENOMEM. */
int sc_authz_start(sidecar *sc, sc_authz **out);
/* Control thread, after the workers were joined and sc_consul_stop. NULL is fine. */
void sc_authz_free(sc_authz *a);

/* Worker `worker` (its index): a request from identity, whose certificate
 * has serial (Consul's "0a:1b" form, may be ""). See authz_cache.h for the
 * verdicts; on SC_AUTHZ_WAIT the worker is woken when the lookup ends. */
void sc_authz_check(sc_authz *a, unsigned worker, const char *identity, const char *serial,
                    uint64_t now_ms, sc_authz_decision *d);
/* Worker: a waiting request (seq from its WAIT decision). */
void sc_authz_result(sc_authz *a, unsigned worker, const char *identity, uint64_t seq,
                     uint64_t now_ms, sc_authz_decision *d);

/* The limiter for per-request denial log lines (any thread). */
sc_ratelimit *sc_authz_log_limit(sc_authz *a);

/* Admin (control thread): /clusters "authorize" object (new reference) and
 * sidecar_inbound_authz_* metrics. NULL is fine (nothing / null). */
struct json_t *sc_authz_json(sc_authz *a);
void sc_authz_render_stats(sc_authz *a, FILE *f);

#endif

/*
 * consul.h: the Consul agent client on the control thread: registration of
 * the local service (with an HTTP, TTL or gRPC check), watches of every
 * upstream whose policy says `discovery: consul`, and deregistration at
 * drain. Everything is non-blocking: libcurl's multi interface driven by the
 * control loop (ev_io per socket, one ev_timer), every request with a
 * timeout. The pure parts (parsing, index rules, pacing, bodies) live in
 * consul_json.h.
 *
 * Watches: one blocking query loop per upstream on
 * /v1/health/service/<service>?passing[&tag][&dc]&index&wait, paced by a
 * token bucket; an answer is compared with the instances in use and
 * published (sc_endpoints_publish) only when it differs. On errors the last
 * known instances stay in use, marked stale, and the loop backs off
 * (consul_json.h); the error is kept for the admin endpoint and metrics.
 * The first query after an error carries no index (it answers at once), so
 * the stale mark goes as soon as the agent answers again.
 * With consul.cache_file the last known instances are saved, and used when
 * the first query of a watch fails (a restart during a Consul outage).
 *
 * Registration: PUT /v1/agent/service/register at start, retried with
 * backoff. A TTL check is kept passing (every ttl/2, and at once when the
 * readiness changes) or failed with a note saying why. The agent losing the
 * registration (404 / "does not have associated TTL" on a TTL update, 404 on
 * the agent-local blocking GET /v1/agent/service/<id> the client keeps open)
 * leads to a new registration.
 *
 * ACL token: consul.token, or consul.token_file read again on SIGHUP (an
 * ev_signal of this client on the control loop, beside the TLS reload's): a
 * changed token goes into every request started afterwards and failing
 * loops retry at once; an unreadable or empty file keeps the old token.
 *
 * Agent address: consul.tls_server_name puts that name in the request URLs
 * (SNI and certificate verification) and maps it to consul.address with
 * CURLOPT_CONNECT_TO; consul.namespace / partition go on the requests Consul
 * scopes (see sc_consul_req_start in consul_http.c).
 *
 * Ownership: the client belongs to the sidecar; start and stop on the
 * control thread. The JSON and stats functions are for the admin endpoint
 * (control thread).
 */
#ifndef SC_CONSUL_H
#define SC_CONSUL_H

#include "sidecar.h"

#include <stdio.h>

typedef struct sc_consul sc_consul;
struct json_t;

/* Bound on the deregistration at drain: the drain goes on after this even
 * when the agent did not answer. */
#define SC_CONSUL_DEREGISTER_TIMEOUT_MS 2000

/* Starts the client when cfg->consul.enabled (registration when
 * register_service, and the watches). Returns 0 and *out, -ENOENT when
 * Consul is not configured (*out NULL), -ENOMEM, -EIO when libcurl fails,
 * -EINVAL when the agent address cannot be used (logged; the configuration
 * loader refuses such values first). */
int sc_consul_start(sidecar *sc, sc_consul **out);

/*
 * Writes the cache document to `path` atomically: into path.tmp, created new
 * (O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600) so that nothing planted there (a
 * symbolic link to another file) can redirect the write, then fsync and
 * rename over path. A regular path.tmp left by an interrupted write is
 * removed first; a symbolic link or anything else there is refused. Returns 0,
 * or -errno with err saying what and why.
 */
int sc_consul_cache_save(const char *path, const char *doc, size_t len, char *err, size_t errlen);

/* Stops every request and timer, saves the cache file, frees. NULL is fine. */
void sc_consul_stop(sc_consul *c);

/*
 * Begins deregistration (drain): stops the TTL updates and the
 * re-registration, sends PUT /v1/agent/service/deregister/<id> (404 counts
 * as done) and calls done(arg) on the control thread when it ended or after
 * SC_CONSUL_DEREGISTER_TIMEOUT_MS, whichever is first. Returns 0 when done
 * will be called, -EALREADY when there is nothing to deregister (done is
 * not called; the caller goes on at once).
 */
int sc_consul_deregister(sc_consul *c, void (*done)(void *arg), void *arg);

/*
 * Connect authorization (tls.authorize: consul): POST
 * /v1/agent/connect/authorize with `body` (JSON, copied) and the client's ACL
 * token. done(arg, status, answer, len, err) runs once on the control thread
 * when the request ended: status is the HTTP status (0 when there was no
 * answer: refused, timed out after timeout_ms, ...), err "" for a 2xx answer
 * and otherwise a line for the log ("HTTP 403: ACL not found (the ACL token
 * ...)"). done is not called when the client stops first (sc_consul_stop).
 * Returns 0, -EINVAL, or -EIO when the request could not even start (done
 * is then not called).
 */
typedef void (*sc_consul_authorize_cb)(void *arg, long status, const char *answer, size_t len,
                                       const char *err);
int sc_consul_authorize(sc_consul *c, const char *body, uint64_t timeout_ms,
                        sc_consul_authorize_cb done, void *arg);

/* Control thread, reload: starts the watch of route `route_index` (just
 * added, Consul discovery); its service, tag and dc are copied. 0, or
 * -ENOSPC when every watch slot is in use. */
int sc_consul_watch_route(sc_consul *c, size_t route_index);

/* Admin /clusters: the state of the client (address, registration) and of
 * the watch of one route (NULL when the route is not watched). New
 * references, caller decrefs. */
struct json_t *sc_consul_json(const sc_consul *c);
struct json_t *sc_consul_route_json(const sc_consul *c, size_t route_index);

/* Admin /stats: sidecar_consul_* metrics in Prometheus text, and the
 * sidecar_connect_* ones with tls.source: consul (docs/tls.md). */
void sc_consul_render_stats(const sc_consul *c, FILE *f);

#endif

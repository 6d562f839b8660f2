/*
 * jwt_runtime.h: JWT authentication at the inbound listener at run time:
 * each issuer's current keys, the verified-token cache, counters, and the
 * one call the request path makes per request (sc_jwt_check).
 *
 * Keys:
 *   - jwks_file: read at start (a broken file is a start-up error), then
 *     looked at every SC_JWT_WATCH_MS on the control thread (core/file_id.h,
 *     as TLS material is) and on sc_jwt_reload (SIGHUP); a changed file that
 *     parses replaces the keys, a broken one is logged and the keys in use
 *     stay.
 *   - jwks_url: fetched on the control thread (libcurl multi on the control
 *     loop, loaded at run time like the Consul client's, discovery/curl_api.h)
 *     at start, then every `refresh`; a failed fetch keeps the keys in use
 *     and is retried with backoff (1s doubling, at most 60s or refresh). At
 *     most SC_JWKS_MAX_BYTES are read, no redirects, http/https only.
 *   - An unknown kid (a key rotated in at the issuer) asks for a refetch;
 *     the request that asks, and every request meeting an unknown kid of
 *     the issuer while that fetch runs, gets SC_JWT_PENDING. At most one
 *     such refetch per issuer per `refetch_min_interval`; otherwise the
 *     token is refused as unknown_key at once.
 *   - Each new key set of an issuer has a new generation; cached tokens
 *     verified with an older one are verified again.
 *
 * Threads and hand-offs:
 *   - sc_jwt_new / start / reload / stop / free / render / json: control thread.
 *   - sc_jwt_check, sc_jwt_wait_over, the result helpers: any worker, at once
 *     (atomics, the cache's shard locks, one short mutex per issuer to take
 *     a reference to its keys on a cache miss). A refetch request reaches the
 *     control thread through an ev_async.
 *   - notify(arg), given to sc_jwt_start, runs on the control thread after
 *     every fetch of a JWKS URL ended (new keys or not, success or not):
 *     the request path wakes its parked requests there (ev_async to each
 *     worker), and they call sc_jwt_check again with SC_JWT_NO_WAIT.
 *
 * Ownership: the caller owns the sc_jwt; it keeps a pointer to the config
 * section, which must outlive it. Results hold a reference to their claims
 * until sc_jwt_result_clear.
 *
 * What the request path does with it (inbound route, cfg->inbound.jwt set):
 *   1. While a caller's request head and trailers are read, every header
 *      with sc_jwt_header_reserved() is dropped (as the identity header is).
 *   2. The admission stage calls sc_jwt_check() (SC_JWT_NO_WAIT when the
 *      request was resumed) into a result kept with the request:
 *      - passes (sc_jwt_outcome_passes): go on; drop the headers with
 *        sc_jwt_header_stripped(result.rule, ...) and add those of
 *        sc_jwt_forward_headers();
 *      - SC_JWT_PENDING: park; check again with SC_JWT_NO_WAIT once
 *        sc_jwt_wait_over() (after notify), or after the issuer's
 *        fetch_timeout + SC_JWT_PARK_SLACK_MS at the latest;
 *      - refused: answer with sc_jwt_refusal_of(): its status (HTTP or
 *        gRPC), `www-authenticate`, `x-sidecar-reason` and message; log
 *        with sc_jwt_log_limit().
 *   3. sc_jwt_claim(&result, "sub") serves later stages (a rate-limit key);
 *      sc_jwt_result_clear() when the request ends.
 */
#ifndef SC_JWT_RUNTIME_H
#define SC_JWT_RUNTIME_H

#include "jwt/jwt.h"
#include "core/log.h"
#include "jwt/jwt_cache.h"

#include <nghttp2/nghttp2.h>
#include <stdio.h>

#define SC_JWT_WATCH_MS 1000u        /* jwks_file change check */
#define SC_JWT_RETRY_MAX_MS 60000u   /* longest wait between failed fetches */
/* A request parked for keys waits at most this long beyond the fetch timeout
 * (the request path's park limit). */
#define SC_JWT_PARK_SLACK_MS 1000u

typedef struct sc_jwt sc_jwt;
struct ev_loop;

/* Control thread, before the workers run: loads every jwks_file. Returns 0,
 * -EINVAL with err (a key file is broken) or -ENOMEM. */
int sc_jwt_new(const sc_jwt_config *cfg, unsigned n_workers, sc_jwt **out, char *err, size_t errlen);

/* Control thread: starts the file watch, the first fetch of every jwks_url
 * (loads libcurl if there is one; -ENOENT with err when it cannot) and the
 * refetch hand-off. notify may be NULL. */
int sc_jwt_start(sc_jwt *j, struct ev_loop *loop, void (*notify)(void *arg), void *arg, char *err, size_t errlen);

/* Control thread: every jwks_file read again now, every jwks_url fetched
 * now (SIGHUP). */
void sc_jwt_reload(sc_jwt *j);

/* Control thread: stops watchers and fetches (after the workers were
 * joined, or before sc_jwt_free). */
void sc_jwt_stop(sc_jwt *j);
void sc_jwt_free(sc_jwt *j);     /* NULL is a no-op */

/* The outcome of one request's check (see jwt.h for the outcomes). */
typedef struct sc_jwt_result {
    sc_jwt_outcome outcome;
    const sc_jwt_rule *rule;        /* the rule that applied; NULL = none (SKIPPED) */
    sc_jwt_claims *claims;          /* OK: one reference */
    const char *issuer;             /* OK: the issuer's name (config) */
    bool cache_hit;                 /* OK: from the cache */
    uint32_t wait_issuer;           /* PENDING: whose keys are awaited */
    uint64_t wait_seq;              /* PENDING: the fetch count when it parked */
    uint32_t n_named;               /* sc_jwt_check: header lines named as the rule's header */
    uint32_t named_at;              /* ... the index of the first one among hdrs */
    char why[256];                  /* refused: why (for the log and the refusal); only why[0] is set when empty */
} sc_jwt_result;

/* Flags of sc_jwt_check. */
enum {
    SC_JWT_NO_WAIT = 1u << 0,       /* never PENDING: refuse as unknown_key instead (a resumed request) */
};

/*
 * Worker `worker` (index < n_workers): the check for one request: the rule
 * for `path` (jwt_config.h), the token from the rule's header among `hdrs`
 * (names compared without case; two values of that header are refused as
 * malformed), then the cache or a full verification, the issuer's
 * registered claims at now_unix, and the rule's claims and scopes.
 * Always fills *r (sc_jwt_result_clear it afterwards) and counts the
 * outcome.
 */
void sc_jwt_check(sc_jwt *j, unsigned worker, const char *path, size_t path_len, const nghttp2_nv *hdrs,
                  size_t n_hdrs, int64_t now_unix, unsigned flags, sc_jwt_result *r);

/* The same for a token already taken from its header (tests, benchmarks,
 * and a request path that extracts the token itself); rule must not be
 * NULL. An empty token (tok NULL or len 0) is a missing one. */
void sc_jwt_check_token(sc_jwt *j, unsigned worker, const sc_jwt_rule *rule, const char *tok, size_t len,
                        int64_t now_unix, unsigned flags, sc_jwt_result *r);

/* Worker: a PENDING request may check again (the fetch it waited for ended). */
bool sc_jwt_wait_over(sc_jwt *j, const sc_jwt_result *r);

void sc_jwt_result_clear(sc_jwt_result *r);

/* A verified claim's string form (jwt.h sc_jwt_claim_entry), or NULL when the
 * result has no claims or no such claim: e.g. a rate-limit key from "sub".
 * Valid until sc_jwt_result_clear. */
const char *sc_jwt_claim(const sc_jwt_result *r, const char *name);

/* The headers the rule fills from claims for this result: at most
 * SC_JWT_MAX_FORWARD, pointing into the rule and the claims (valid until
 * sc_jwt_result_clear). A claim that is absent, has control characters or
 * is longer than SC_JWT_CLAIM_VALUE_MAX is not sent. Returns the count. */
typedef struct sc_jwt_header {
    const char *name, *value;
    size_t name_len, value_len;
} sc_jwt_header;
size_t sc_jwt_forward_headers(const sc_jwt_result *r, sc_jwt_header *out, size_t cap);

/* The refusal for a refused result (jwt.h sc_jwt_refusal_for with the
 * configured realm). */
void sc_jwt_refusal_of(const sc_jwt *j, const sc_jwt_result *r, sc_jwt_refusal *out);

/* Log limiter for per-request refusal lines (any thread). */
sc_ratelimit *sc_jwt_log_limit(sc_jwt *j);

/* false while an issuer with a jwks_url has never had keys (why says which). */
bool sc_jwt_ready(sc_jwt *j, char *why, size_t whylen);

/* Admin (control thread): sidecar_jwt_* metrics; the state per issuer as
 * JSON (new reference: keys, source, last fetch, last error). */
void sc_jwt_render_stats(sc_jwt *j, FILE *f);
struct json_t *sc_jwt_json(sc_jwt *j);

/* Counters, summed over workers (tests, admin). */
typedef struct sc_jwt_stats {
    uint64_t outcomes[SC_JWT_OUTCOMES];
    uint64_t cache_hits, cache_misses;
    uint64_t fetches, fetch_errors, reloads, refetches;   /* all issuers */
} sc_jwt_stats;
void sc_jwt_stats_get(sc_jwt *j, sc_jwt_stats *s);

#endif

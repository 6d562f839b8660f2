/*
 * limit.h: the rate limits of one route (the inbound listener or one
 * upstream) at run time: their buckets, their counters, the local
 * decisions, and what the admin endpoint shows of them. Pure: no I/O.
 *
 * A route's limits are checked in configuration order and the first that
 * refuses wins; a limit that admitted a request before a later one refused
 * it keeps the request counted (like every token bucket chain: the tokens
 * are not given back). Local limits decide at once (bucket.h); global
 * ones are asked of Redis (redis.h) after every local limit has admitted
 * the request, so a request refused locally costs Redis nothing.
 *
 * Threads: a set is built before the workers start and is then shared by
 * all of them; decisions and counters are thread-safe (atomics, and the
 * key tables' shard locks); the render functions run on the admin thread.
 *
 * Memory: a set borrows its limits' configuration (sc_rate_limit) and the
 * route name; both must outlive it (they belong to the loaded sc_config).
 */
#ifndef SC_RL_LIMIT_H
#define SC_RL_LIMIT_H

#include "ratelimit/bucket.h"
#include "ratelimit/descriptor.h"

#include <stdio.h>

typedef enum {
    SC_RL_ALLOWED = 0,              /* the bucket admitted it */
    SC_RL_REFUSED,                  /* the bucket is empty: 429 / RESOURCE_EXHAUSTED */
    SC_RL_ERROR_ALLOWED,            /* global, Redis could not decide, on_error: allow */
    SC_RL_ERROR_REFUSED,            /* global, Redis could not decide, on_error: deny: 503 / UNAVAILABLE */
} sc_rl_result;
#define SC_RL_N_RESULTS 4

/* "allowed", "refused", "error_allowed", "error_refused". */
const char *sc_rl_result_name(sc_rl_result r);
/* True when the request may go on. */
static inline bool sc_rl_result_admits(sc_rl_result r)
{
    return r == SC_RL_ALLOWED || r == SC_RL_ERROR_ALLOWED;
}

typedef struct sc_rl_limit {
    const sc_rate_limit *cfg;       /* borrowed */
    const char *route;              /* "inbound" or the upstream's name, borrowed */
    sc_rl_gcra gcra;
    bool single;                    /* key: route: one bucket, no table */
    sc_rl_cell cell;                /* local and single */
    sc_rl_table *table;             /* local and keyed */
    char *redis_prefix;             /* global: "<redis.key_prefix><route>:<name>:" (owned) */
    size_t redis_prefix_len;
    _Atomic uint64_t decisions[SC_RL_N_RESULTS];
    _Atomic uint64_t skipped;       /* requests the limit did not apply to (match, missing: skip) */
    _Atomic uint64_t untracked;     /* local: new keys that could not be stored (admitted) */
} sc_rl_limit;

typedef struct sc_rl_set {
    sc_rl_limit *v;                 /* configuration order */
    size_t n;
    size_t n_global;
    const char *route;
} sc_rl_set;

/* Builds the runtime of n configured limits for `route`; redis_prefix is
 * the configuration's redis.key_prefix (NULL without a redis: section;
 * then there must be no global limit). Returns 0 or -ENOMEM (nothing left
 * to free). A set with n == 0 is valid and admits everything. */
int sc_rl_set_init(sc_rl_set *s, const sc_rate_limit *cfg, size_t n, const char *route,
                   const char *redis_prefix);
void sc_rl_set_clear(sc_rl_set *s);     /* safe on a zeroed set */

/* One decision and what the reply headers need of it. */
typedef struct sc_rl_decision {
    sc_rl_result result;
    const sc_rl_limit *limit;       /* the limit that decided (NULL: none applied) */
    sc_rl_outcome out;
} sc_rl_decision;

/* A local limit's decision for a key (from sc_rl_descriptor); counts it. */
void sc_rl_limit_take_local(sc_rl_limit *l, const char *key, size_t klen, uint64_t now_ns,
                            sc_rl_decision *d);

/* Counts a decision made elsewhere (a global limit's, by Redis or on_error). */
void sc_rl_limit_count(sc_rl_limit *l, sc_rl_result r);

/*
 * The local half of one request's check: walks the set in order, deciding
 * each local limit that applies; stops at the first refusal (*d then says
 * which and why, returns SC_RL_REFUSED). Global limits that apply are
 * collected, in order, into todo[0..*n_todo) (limit index and key, keys
 * copied into `keys`, SC_RL_KEY_MAX bytes each, at most SC_RL_MAX_LIMITS
 * entries) for the caller to ask Redis; returns SC_RL_ALLOWED when every
 * local limit admitted (then *d describes the last local decision, or has
 * limit NULL when none applied).
 */
typedef struct sc_rl_todo {
    size_t limit;                   /* index in the set */
    size_t klen;
    char *key;                      /* into the caller's keys */
} sc_rl_todo;

sc_rl_result sc_rl_set_check_local(sc_rl_set *s, sc_rl_request *r, uint64_t now_ns,
                                   sc_rl_decision *d, sc_rl_todo *todo, size_t *n_todo,
                                   char (*keys)[SC_RL_KEY_MAX]);

/*
 * Prometheus families for every set (the inbound one and one per upstream,
 * any may be empty): sidecar_rate_limit_decisions_total{route, limit,
 * scope, outcome}, sidecar_rate_limit_skipped_total, sidecar_rate_limit_keys,
 * sidecar_rate_limit_evictions_total (and _active_), sidecar_rate_limit_
 * untracked_total. Families are written once, with every set's samples.
 */
void sc_rl_render_prom(FILE *f, const sc_rl_set *const *sets, size_t n_sets, uint64_t now_ns);

/* /clusters: one JSON array of the set's limits, each with its
 * configuration, counters, table and up to top_n busiest keys. */
struct json_t;
struct json_t *sc_rl_set_json(const sc_rl_set *s, uint64_t now_ns, size_t top_n);

#endif

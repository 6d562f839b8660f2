/*
 * ratelimit.h: rate limits as an admission step of the request path: what
 * the proxy calls. Pieces: bucket.h (GCRA, exact across workers),
 * descriptor.h (which limits apply, keys), limit.h (a route's limits,
 * counters), reply.h (the refusal), redis.h (global limits).
 *
 * Process:  rt = sc_rl_runtime_new(cfg)           before the workers start
 *           sc_rl_runtime_free(rt)                after they stopped
 * Worker:   w = sc_rl_worker_new(rt, loop)        on the worker thread
 *           sc_rl_worker_free(w)                  on the worker thread, at exit
 * Request:  switch (sc_rl_admit(w, set, &req, now, &d, &adm, resume, arg)) {
 *           case SC_RL_GO:   go on;
 *           case SC_RL_DENY: sc_rl_reply_build(&d, &reply); answer with it;
 *           case SC_RL_PARK: wait; resume(arg, &d) comes once from the loop
 *                            (sc_rl_result_admits(d->result) says go or deny),
 *                            unless sc_rl_admission_cancel(adm) first (the
 *                            request went away).
 *           }
 * The set of a route: sc_rl_runtime_inbound(rt), sc_rl_runtime_upstream(rt, i)
 * (i: the index of the policy in cfg->policies).
 *
 * Order: local limits first, in configuration order, stopping at the first
 * refusal; then every global limit that applies is asked of Redis at once
 * (pipelined: one round trip for all), and the first refusal among them in
 * configuration order wins. Each limit asked counts the request.
 * A global limit Redis cannot decide for (down, budget spent, error) follows
 * its on_error: allow (counted error_allowed) or deny (error_refused, 503).
 */
#ifndef SC_RL_RATELIMIT_H
#define SC_RL_RATELIMIT_H

#include "ratelimit/limit.h"
#include "ratelimit/redis.h"
#include "ratelimit/reply.h"

typedef struct sc_rl_runtime sc_rl_runtime;
typedef struct sc_rl_worker sc_rl_worker;
typedef struct sc_rl_admission sc_rl_admission;

/* Builds every route's limits and, with a redis: section, the TLS context
 * for Redis. The runtime borrows cfg, which must outlive it. Returns NULL
 * with the reason in err (a TLS file that cannot be used, no memory). */
sc_rl_runtime *sc_rl_runtime_new(const sc_config *cfg, char *err, size_t errlen);
void sc_rl_runtime_free(sc_rl_runtime *rt);     /* NULL is a no-op */

/* A route's limits (an empty set when it has none). */
sc_rl_set *sc_rl_runtime_inbound(sc_rl_runtime *rt);
sc_rl_set *sc_rl_runtime_upstream(sc_rl_runtime *rt, size_t policy_index);
/* True when some route has a global limit (workers then connect to Redis). */
bool sc_rl_runtime_has_global(const sc_rl_runtime *rt);

/* A worker's part: its Redis connection (when some limit is global). NULL on
 * -ENOMEM. */
sc_rl_worker *sc_rl_worker_new(sc_rl_runtime *rt, struct ev_loop *loop);
/* Every parked admission of the worker gets its resume (on_error) first. */
void sc_rl_worker_free(sc_rl_worker *w);        /* NULL is a no-op */

typedef enum { SC_RL_GO = 0, SC_RL_PARK, SC_RL_DENY } sc_rl_verdict;

typedef void (*sc_rl_resume_cb)(void *arg, const sc_rl_decision *d);

/*
 * The rate-limit step for one request on worker w (which may be NULL when
 * the set has no global limit). GO and DENY fill *d; PARK sets *adm and
 * later calls resume(arg, d) exactly once from w's loop, within the largest
 * timeout of the global limits involved, unless cancelled. *d of a DENY
 * names the refusing limit (d->limit) for sc_rl_reply_build and logs.
 * Never allocates unless it parks (one block per parked request; without
 * memory the global limits follow their on_error at once).
 */
sc_rl_verdict sc_rl_admit(sc_rl_worker *w, sc_rl_set *s, sc_rl_request *r, uint64_t now_ns,
                          sc_rl_decision *d, sc_rl_admission **adm, sc_rl_resume_cb resume,
                          void *arg);

/* The parked request went away: no resume will come; frees the admission. */
void sc_rl_admission_cancel(sc_rl_admission *a);

/* /stats: every route's families (limit.h) and Redis' (redis.h). */
void sc_rl_runtime_render_prom(sc_rl_runtime *rt, FILE *f, uint64_t now_ns);
/* /clusters: a route's limits with their busiest keys (limit.h). */
struct json_t *sc_rl_runtime_route_json(sc_rl_set *s, uint64_t now_ns);
/* Process-wide Redis counters (tests, admin). */
sc_rl_redis_stats *sc_rl_runtime_redis_stats(sc_rl_runtime *rt);

#endif

/*
 * redis.h: global rate-limit decisions in Redis, one asynchronous client per
 * worker loop (libev), so the request path takes no lock.
 *
 * A decision is one EVALSHA of a GCRA script (the same math as bucket.h,
 * on Redis' clock, so every sidecar shares one bucket per key): atomic in
 * Redis, one round trip, the bucket stored as one key
 * "<prefix><key>" that expires on its own once the bucket is full again.
 * The script is loaded once per connection (SCRIPT LOAD, pipelined with
 * AUTH and SELECT right after connecting); a NOSCRIPT answer (the script
 * cache was flushed, or a failover) loads it again and re-sends the
 * decision on the same connection.
 *
 * Failures never hold a request: each decision has a time budget (its
 * limit's timeout, 5 ms by default). When it runs out, or the connection is
 * down, or Redis answers with an error, the caller gets an error and
 * applies on_error; errors are counted by kind and logged at most once per
 * second per process. A connection that is lost, or whose oldest command
 * has waited longer than the stall bound, is closed and opened again with
 * exponential backoff (100 ms doubling to 5 s, jittered).
 *
 * Why this shape: hiredis (Debian 12 has 0.14.1) parses RESP well, and its
 * reader is used here for every reply. Its asynchronous context with the
 * libev adapter cannot carry TLS before hiredis 1.0, and Redis over TLS is
 * required; the project already drives non-blocking OpenSSL connections
 * (tls/tls.h). So the connection (socket, TLS, libev watchers, timers,
 * pipelining) is this file's, on the project's TLS layer, one code path for
 * plain and TLS, and commands are written straight into the output buffer
 * (RESP requests are a few length-prefixed strings; formatting them here
 * avoids an allocation per decision).
 *
 * Threads: a client belongs to the worker whose loop it was made on; every
 * call below is made on that thread. The stats are shared by every worker's
 * client (atomics) and read by the admin thread.
 */
#ifndef SC_RL_REDIS_H
#define SC_RL_REDIS_H

#include "config/config.h"
#include "core/log.h"
#include "ratelimit/bucket.h"

#include <ev.h>
#include <stdio.h>

struct sc_tls_ctx;

typedef enum {
    SC_RL_REDIS_TIMEOUT = 0,        /* the budget ran out */
    SC_RL_REDIS_DOWN,               /* no connection (or it was lost with the command in flight) */
    SC_RL_REDIS_OVERLOADED,         /* too many commands in flight on this worker's connection */
    SC_RL_REDIS_ERROR,              /* Redis answered with an error */
    SC_RL_REDIS_BAD_REPLY,          /* an answer that is not the script's */
} sc_rl_redis_err;
#define SC_RL_REDIS_N_ERR 5

/* "timeout", "down", "overloaded", "error", "bad_reply". */
const char *sc_rl_redis_err_name(sc_rl_redis_err e);

typedef struct sc_rl_redis_opts {
    const sc_addr *address;
    const char *user;               /* ACL user; NULL = AUTH <password> */
    const char *password;           /* NULL = no AUTH */
    uint32_t db;                    /* SELECT when not 0 */
    struct sc_tls_ctx *tls;         /* client context (borrowed, referenced per SSL); NULL = plain */
    const char *tls_server_name;    /* verified in Redis' certificate (required with tls) */
    uint64_t connect_timeout_ms;    /* 0 = 1000 */
    uint32_t max_in_flight;         /* 0 = 10000 */
    uint64_t backoff_min_ms;        /* 0 = 100 */
    uint64_t backoff_max_ms;        /* 0 = 5000 */
    uint64_t stall_ms;              /* oldest command older than this: reconnect; 0 = 2000 */
} sc_rl_redis_opts;

/* Shared by every worker's client; zero-initialise. */
typedef struct sc_rl_redis_stats {
    _Atomic uint64_t decisions;             /* answered by Redis */
    _Atomic uint64_t errors[SC_RL_REDIS_N_ERR];
    _Atomic uint64_t connects;              /* connections that became ready */
    _Atomic uint64_t connect_failures;      /* attempts that failed before ready (TCP, TLS, AUTH) */
    _Atomic uint64_t disconnects;           /* ready connections lost */
    _Atomic uint64_t script_loads;          /* SCRIPT LOAD sent after NOSCRIPT */
    _Atomic uint64_t rtt_us_sum, rtt_count; /* round trips of answered decisions */
    _Atomic int64_t connected;              /* clients ready now */
    sc_ratelimit log_limit;                 /* failed decisions: one line per second */
} sc_rl_redis_stats;

typedef struct sc_rl_redis sc_rl_redis;

/* What the caller learns of a decision. */
typedef struct sc_rl_redis_answer {
    bool ok;                        /* Redis decided: out holds the decision */
    sc_rl_outcome out;
    sc_rl_redis_err err;            /* !ok */
    const char *detail;             /* !ok: Redis' error text or what went wrong (valid during the callback) */
} sc_rl_redis_answer;

/* One decision in flight: caller-owned memory (e.g. in the request), kept
 * untouched from sc_rl_redis_decide until its callback or
 * sc_rl_redis_cancel. The fields are the client's. */
typedef struct sc_rl_redis_call sc_rl_redis_call;
typedef void (*sc_rl_redis_cb)(sc_rl_redis_call *call, const sc_rl_redis_answer *a, void *arg);

struct sc_rl_redis_call {
    ev_timer timer;                 /* the budget */
    sc_rl_redis *r;
    sc_rl_redis_cb cb;
    void *arg;
    const char *prefix, *key;       /* borrowed until the callback */
    size_t prefix_len, klen;
    uint64_t interval_ns, tolerance_ns;
    uint64_t sent_ns, budget_ms;
    size_t slot;                    /* in the client's in-flight ring */
    uint64_t seq;
    bool active;
};

/* A client on `loop`; it starts connecting at once. o's strings and the
 * address are copied; the TLS context is referenced. NULL on -ENOMEM. */
sc_rl_redis *sc_rl_redis_new(struct ev_loop *loop, const sc_rl_redis_opts *o,
                             sc_rl_redis_stats *stats);
/* Closes the connection; every decision still in flight gets its callback
 * (SC_RL_REDIS_DOWN) first. NULL is a no-op. Not from inside a callback. */
void sc_rl_redis_free(sc_rl_redis *r);

/* True once the connection is up and ready (AUTH, SELECT and the script
 * sent; decisions are also accepted while connecting). */
bool sc_rl_redis_connected(const sc_rl_redis *r);

/*
 * Asks Redis for one GCRA decision on key prefix + key with g's interval
 * and tolerance. Returns 0: `cb` will be called once, within budget_ms
 * (from the worker loop, never from inside this call), unless the call is
 * cancelled. Returns -ENOTCONN (no connection and none being made),
 * -EBUSY (too many in flight) or -EMSGSIZE (key too long): nothing will be
 * called and the caller applies on_error at once (already counted as
 * SC_RL_REDIS_DOWN / SC_RL_REDIS_OVERLOADED errors). prefix and key must
 * stay valid until the callback.
 */
int sc_rl_redis_decide(sc_rl_redis *r, sc_rl_redis_call *call, const sc_rl_gcra *g,
                       const char *prefix, size_t prefix_len, const char *key, size_t klen,
                       uint64_t budget_ms, sc_rl_redis_cb cb, void *arg);

/* The request went away: no callback will come. A no-op when the call is
 * not in flight. */
void sc_rl_redis_cancel(sc_rl_redis_call *call);

/* The GCRA script as sent to Redis (tests, docs) and its SHA-1 in hex. */
extern const char sc_rl_redis_script[];
const char *sc_rl_redis_script_sha(void);

/* Prometheus: sidecar_rate_limit_redis_decisions_total,
 * sidecar_rate_limit_redis_errors_total{kind}, _connects_total,
 * _connect_failures_total, _disconnects_total, _script_loads_total,
 * _connected (workers), _round_trip_seconds_{sum,count}. */
void sc_rl_redis_render_prom(FILE *f, const sc_rl_redis_stats *s);

#endif

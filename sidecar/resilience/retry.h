/*
 * retry.h: retry decisions for one upstream. Pure logic, no I/O, no
 * allocation; the clock and the random source are arguments.
 *
 *   sc_retry_should          is this outcome retriable by name, and is an attempt left?
 *   sc_retry_backoff_ms      exponential backoff with full jitter
 *   sc_retry_parse_*         the upstream's pushback (grpc-retry-pushback-ms, Retry-After)
 *   sc_retry_budget          retries may add at most `ratio` of the request rate,
 *                            with a floor of `min_per_second`; shared by all workers
 *
 * How the caller combines them (gRPC retry design A6): on a failed attempt,
 * retry only if sc_retry_should() says so, the response had no byte sent to
 * the client, the body was buffered whole, and the budget grants it. A
 * pushback from the upstream replaces the computed backoff; a negative or
 * malformed grpc-retry-pushback-ms means "do not retry". No attempt is made
 * when the remaining deadline is shorter than the delay.
 */
#ifndef SC_RES_RETRY_H
#define SC_RES_RETRY_H

#include "config/config.h"
#include "resilience/window.h"

#include <time.h>

/*
 * Should the attempt that just failed be retried? attempt: 1-based number of
 * that attempt; false once attempt >= max_attempts or the policy is
 * disabled. http_status: response status or 0 when none; grpc_status: 0..16
 * or -1 when none (for a gRPC response without grpc-status the caller
 * passes sc_grpc_status_from_http()); cond: SC_COND_* bits of local failures
 * (connect-failure, reset, refused-stream, timeout) or 0.
 * Retriable when cond intersects `on`, or the gRPC code's bit is in
 * `on_grpc` (OK never), or the status is 5xx with `5xx` named, 502/503/504
 * with `gateway-error` named, 4xx with `4xx` named. Client errors are
 * therefore retried only when named.
 */
bool sc_retry_should(const sc_retry_policy *p, uint32_t attempt, int http_status, int grpc_status,
                     uint32_t cond);

/*
 * Delay before the retry that follows failed attempt `attempt` (1-based; 0
 * counts as 1): uniform in [0, min(backoff_max_ms, backoff_base_ms *
 * 2^(attempt-1))], computed without overflow for any attempt. rand: 64
 * random bits (sc_lb_rand()); 0 gives 0, UINT64_MAX gives the upper bound.
 */
uint64_t sc_retry_backoff_ms(const sc_retry_policy *p, uint32_t attempt, uint64_t rand);

/*
 * grpc-retry-pushback-ms value v[0..len) (not NUL terminated; spaces and tabs
 * around it are ignored). Returns 0 with *ms >= 0 for a delay, 0 with
 * *ms = -1 for a negative value (do not retry), -EINVAL when malformed
 * (empty, sign without digits, other characters, or above INT64_MAX):
 * the caller does not retry either.
 */
int sc_retry_parse_pushback_ms(const char *v, size_t len, int64_t *ms);

/*
 * Retry-After value v[0..len): delta-seconds ("120") or an IMF-fixdate HTTP
 * date ("Sun, 06 Nov 1994 08:49:37 GMT", compared with now_unix, the
 * current Unix time in seconds). Returns 0 with *ms >= 0 (a date in the past
 * gives 0; delta-seconds too large saturate at INT64_MAX), or -EINVAL for
 * anything else (the obsolete RFC 850 and asctime date forms included).
 */
int sc_retry_parse_retry_after(const char *v, size_t len, time_t now_unix, int64_t *ms);

/*
 * The longest wait an upstream's pushback may ask for. A request waiting in
 * backoff holds its caller, its buffered body and a budget grant; a server
 * that asks for more than this (Retry-After: 3600, a date next week, or a
 * huge grpc-retry-pushback-ms) is saying "not now", so the attempt is not
 * retried and its response goes to the caller at once, who may come back
 * later. Shortening the wait instead would retry earlier than the upstream
 * asked. The remaining deadline, when there is one, bounds it further.
 */
#define SC_RETRY_MAX_PUSHBACK_MS 60000

/* Whether a pushback of ms (>= 0, from the parsers above) may be waited for. */
bool sc_retry_pushback_acceptable(int64_t ms);

/*
 * Retry budget of one upstream, shared by all workers (C11 atomics, no
 * lock). Over a sliding window of SC_RETRY_BUDGET_WINDOW_MS (10 buckets of
 * 1 s) it counts original requests and granted retries; a retry is granted
 * while retries < max(min_per_second * 10, ratio * requests) in the window.
 * So with a fully failing upstream, N offered requests cause at most about
 * N * (1 + ratio) attempts plus the floor (min_per_second per second),
 * whatever max_attempts says.
 *
 * A grant is counted when the retry is scheduled (while it waits in backoff)
 * and is not given back if the retry is later abandoned. Grants are exact
 * against concurrent grants (CAS on the current bucket); the request count
 * they are compared with may lag concurrent sc_retry_budget_on_request calls
 * by a few, and bucket hand-over follows window.h.
 *
 * Memory: caller owns the struct; nothing to free.
 */
#define SC_RETRY_BUDGET_WINDOW_MS 10000u

typedef struct sc_retry_budget {
    /* the parameters: set by init and sc_retry_budget_set (a policy reload) */
    _Atomic double ratio;
    _Atomic uint32_t min_per_second;
    _Atomic uint64_t ratio_ppm;
    _Atomic uint64_t floor;       /* min_per_second * window seconds */
    /* shared */
    sc_window window;             /* word 0 low: requests; word 1 low: retries */
    _Atomic uint64_t granted, refused; /* since init */
} sc_retry_budget;

typedef struct sc_retry_budget_view {
    uint64_t requests;            /* original requests in the window */
    uint64_t retries;             /* retries granted in the window */
    uint64_t allowance;           /* retries the window allows: max(floor, ceil(ratio * requests)) */
    uint64_t remaining;           /* allowance - retries, 0 when exhausted */
    uint64_t granted, refused;    /* since init */
    double ratio;
    uint32_t min_per_second;
} sc_retry_budget_view;

/* Not thread safe: before the budget is shared. ratio is clamped to [0, 100]. */
void sc_retry_budget_init(sc_retry_budget *b, double ratio, uint32_t min_per_second);
/* While shared (a policy reload, one thread at a time): new parameters for
 * every later grant; the window's requests and retries stay, so the new
 * ratio applies to the traffic of the last window at once. */
void sc_retry_budget_set(sc_retry_budget *b, double ratio, uint32_t min_per_second);
/* Counts one original request (never a retry). */
void sc_retry_budget_on_request(sc_retry_budget *b, uint64_t now_ms);
/* A retry is about to be scheduled: true (and counted) when the budget allows it. */
bool sc_retry_budget_try_acquire(sc_retry_budget *b, uint64_t now_ms);
void sc_retry_budget_snapshot(const sc_retry_budget *b, uint64_t now_ms, sc_retry_budget_view *out);

#endif

/*
 * breaker.h: the circuit breaker of one upstream, one instance per process
 * shared by every worker thread (embed it in the upstream's shared state).
 *
 * States:
 *   CLOSED     every call is allowed; outcomes go into a sliding time window
 *              (policy window_ms, 10 buckets, see window.h). The breaker
 *              opens when a failure or slow record finds, over the window,
 *                calls >= min_calls and failures/calls >= failure_rate %, or
 *                calls >= min_calls and slow/calls >= slow_call_rate %
 *                  (only when slow_call_ms > 0), or
 *                consecutive failures >= consecutive_failures (when > 0).
 *              Rates are compared exactly (thresholds are kept in parts per
 *              million, the comparison is in integers). A success never
 *              opens the breaker, even when it is the min_calls-th call.
 *   OPEN       every call is refused until open_for_ms has passed since the
 *              breaker opened; the first sc_breaker_allow() after that moves
 *              it to HALF_OPEN and is the first probe.
 *   HALF_OPEN  at most half_open_calls probes are admitted per half-open
 *              period (not per unit of time: the (half_open_calls+1)-th
 *              allow is refused until the period ends). One failed (or, when
 *              slow calls are tracked, slow) probe re-opens the breaker and
 *              restarts open_for; half_open_calls successful probes close it
 *              and clear the window and the consecutive-failure count.
 *   An operator may force the breaker open or closed; while forced it makes
 *   no transition of its own (outcomes are still counted in the window).
 *   Releasing a forced-open breaker puts it in HALF_OPEN (it probes its way
 *   back); releasing a forced-closed one leaves it CLOSED with its window.
 *
 * Concurrency: lock-free, C11 atomics. The state, the forced mode, the
 * probe counts and a transition number live in one 64-bit word changed only
 * by CAS, so each transition happens exactly once and is reported to
 * exactly one caller (the `tr` out parameter of the _ex functions), and the
 * half-open probe limit holds exactly under any interleaving. The window
 * figures are approximate under races as window.h describes. The last
 * transition (for the admin view) is published through a small seqlock
 * whose writers never block: under extreme contention a reader may find the
 * record momentarily unavailable (seq 0) or one transition behind.
 *
 * Contract with the caller: every sc_breaker_allow() that returned true is
 * followed by exactly one sc_breaker_record() (the call produced an outcome)
 * or sc_breaker_abandon() (it produced none, e.g. the client cancelled before
 * the upstream answered), passing back the probe flag / id allow gave. A
 * probe that is never recorded nor abandoned holds its half-open slot until
 * the half-open period ends some other way (operator force).
 *
 * A disabled policy (enabled == false) gives a breaker that always allows
 * and never transitions; outcomes are still counted for the admin view.
 *
 * Memory: the caller owns the struct; init copies what it needs from the
 * policy (the policy may be freed afterwards; a changed policy needs a new
 * breaker). No allocation, no I/O; the clock is an argument (ms, monotonic).
 */
#ifndef SC_RES_BREAKER_H
#define SC_RES_BREAKER_H

#include "config/config.h"
#include "resilience/window.h"

typedef enum { SC_BREAKER_CLOSED = 0, SC_BREAKER_OPEN, SC_BREAKER_HALF_OPEN } sc_breaker_state;

/* "closed", "open", "half-open"; "?" for anything else. */
const char *sc_breaker_state_name(sc_breaker_state s);

/* Forced modes (sc_breaker_force). */
enum { SC_BREAKER_RELEASE = 0, SC_BREAKER_FORCE_OPEN = 1, SC_BREAKER_FORCE_CLOSED = 2 };

/* Largest half_open_calls honoured (larger policy values are clamped). */
#define SC_BREAKER_MAX_PROBES 1023u

/* Passed as probe id by sc_breaker_record(): "a probe of the current half-open period". */
#define SC_BREAKER_PROBE_CURRENT UINT64_MAX

/* One transition, as reported to the call that made it and kept for the admin view. */
typedef struct sc_breaker_transition {
    uint64_t seq;                 /* 1-based number of the transition; 0 = none */
    uint64_t at_ms;
    sc_breaker_state from, to;
    char reason[128];             /* "failure rate 62.5% >= 50% over 40 calls", NUL terminated */
} sc_breaker_transition;

typedef struct sc_breaker {
    /* immutable after init */
    bool enabled;
    uint64_t open_for_ms;
    uint64_t slow_call_ms;        /* 0 = slow calls not tracked */
    uint32_t min_calls;
    uint32_t half_open_calls;     /* 1..SC_BREAKER_MAX_PROBES */
    uint32_t consecutive_failures; /* 0 = off */
    uint64_t failure_ppm;         /* thresholds in parts per million */
    uint64_t slow_ppm;
    double failure_rate, slow_call_rate; /* percent, as configured (for reasons) */

    /* shared, atomic */
    _Atomic uint64_t word;        /* private: state | forced | probes | episode */
    _Atomic uint64_t opened_at_ms; /* time of the last move to OPEN */
    _Atomic uint32_t consecutive; /* failures in a row */
    _Atomic uint64_t to_open, to_half_open, to_closed; /* transitions by destination */
    sc_window window;             /* word 0: calls (high) | failures (low); word 1: slow (low) */

    /* last transition, seqlock (private) */
    _Atomic uint64_t last_lock;
    _Atomic uint64_t last_seq, last_at_ms, last_fromto;
    _Atomic uint64_t last_reason[16];
} sc_breaker;

/* What the admin endpoint shows. */
typedef struct sc_breaker_view {
    sc_breaker_state state;
    int forced;                   /* SC_BREAKER_RELEASE (none), _FORCE_OPEN, _FORCE_CLOSED */
    uint64_t calls, failures, slow; /* over the window ending now */
    double failure_rate;          /* percent of calls, 0 without calls */
    double slow_rate;
    uint32_t consecutive_failures;
    uint64_t ms_until_half_open;  /* OPEN and not forced: time left; else 0 */
    uint32_t probes_issued;       /* HALF_OPEN: probes admitted / succeeded so far */
    uint32_t probes_succeeded;
    uint64_t transitions;         /* total since init (operator actions included) */
    uint64_t to_open, to_half_open, to_closed; /* changes of state only: an operator
                                   * action that keeps the state (release of a
                                   * forced-closed breaker) is not among them */
    uint64_t last_transition_ms;  /* 0 when last.seq == 0 */
    sc_breaker_transition last;   /* seq 0: no transition yet (or unavailable, see above);
                                   * last.seq <= transitions, equal unless one happened
                                   * during the snapshot or a record write was skipped */
} sc_breaker_view;

/* Not thread safe: before the breaker is shared. Starts CLOSED, window empty. */
void sc_breaker_init(sc_breaker *b, const sc_breaker_policy *p, uint64_t now_ms);

/*
 * May a call go to the upstream now? CLOSED: true. OPEN: false until
 * open_for_ms has passed, then the breaker turns HALF_OPEN and this call is
 * its first probe. HALF_OPEN: true for the first half_open_calls calls of
 * the period, with *probe = true. probe may be NULL.
 */
bool sc_breaker_allow(sc_breaker *b, uint64_t now_ms, bool *probe);

/*
 * Same; *probe_id gets 0 for an ordinary call or the id of the half-open
 * period for a probe (pass it back to record/abandon: a probe that outlived
 * its period is then never counted in a later one). tr (may be NULL) gets
 * the transition this call caused (tr->seq != 0) so the caller logs it once.
 */
bool sc_breaker_allow_ex(sc_breaker *b, uint64_t now_ms, uint64_t *probe_id,
                         sc_breaker_transition *tr);

/*
 * Records the outcome of an allowed call (failure per
 * sc_breaker_counts_as_failure, slow per sc_breaker_is_slow) and returns the
 * state after it. probe: the flag allow gave (a probe of the current
 * half-open period).
 */
sc_breaker_state sc_breaker_record(sc_breaker *b, uint64_t now_ms, bool failure, bool slow,
                                   bool probe);

/* Same with the probe id from sc_breaker_allow_ex (0 = not a probe,
 * SC_BREAKER_PROBE_CURRENT = a probe of whatever period is current). */
sc_breaker_state sc_breaker_record_ex(sc_breaker *b, uint64_t now_ms, bool failure, bool slow,
                                      uint64_t probe_id, sc_breaker_transition *tr);

/* An allowed call ended without an outcome: gives its probe slot back when it
 * was a probe of the current half-open period (probe_id as from allow_ex; 0
 * is a no-op; SC_BREAKER_PROBE_CURRENT = the current period). */
void sc_breaker_abandon(sc_breaker *b, uint64_t probe_id);

/* Operator: mode SC_BREAKER_FORCE_OPEN, SC_BREAKER_FORCE_CLOSED or
 * SC_BREAKER_RELEASE (see the top of this file). Other modes are ignored. */
void sc_breaker_force(sc_breaker *b, int mode, uint64_t now_ms);
/* Same; returns 0, or -EINVAL for an unknown mode. tr as for allow_ex
 * (releasing a breaker that is not forced is not a transition). */
int sc_breaker_force_ex(sc_breaker *b, int mode, uint64_t now_ms, sc_breaker_transition *tr);

/* Current state (one atomic load). */
sc_breaker_state sc_breaker_state_now(const sc_breaker *b);

/* Fills *out; safe from any thread at any time. */
void sc_breaker_snapshot(const sc_breaker *b, uint64_t now_ms, sc_breaker_view *out);

/*
 * Does this outcome count as a failure for the breaker? http_status: the
 * response status or 0 when none arrived; grpc_status: 0..16, or -1 when
 * none (for a gRPC response without grpc-status pass
 * sc_grpc_status_from_http()); cond: SC_COND_* bits of local failures
 * (SC_COND_CONNECT_FAILURE, _RESET, _TIMEOUT, _REFUSED_STREAM) or 0.
 * True when cond intersects failure_on, or the gRPC code's bit is in
 * failure_on_grpc, or the HTTP status matches 5xx / gateway-error (502, 503,
 * 504) / 4xx named in failure_on. gRPC OK is never a failure; client errors
 * (4xx, INVALID_ARGUMENT, NOT_FOUND, ...) count only when named, which the
 * default policy does not.
 */
bool sc_breaker_counts_as_failure(const sc_breaker_policy *p, int http_status, int grpc_status,
                                  uint32_t cond);

/* A call that took duration_ms is slow when slow calls are tracked and
 * duration_ms >= slow_call_ms. */
static inline bool sc_breaker_is_slow(const sc_breaker *b, uint64_t duration_ms)
{
    return b->slow_call_ms && duration_ms >= b->slow_call_ms;
}

#endif

/*
 * authz_cache.h: the pure half of `tls.authorize: consul` (see authz.h and
 * docs/tls.md): Consul's answers per caller identity and the rules that say
 * when an answer may be used, when Consul must be asked, when the last
 * answer is used stale, and which lookups are in flight or queued.
 *
 * No locks, no I/O, no clock: every call takes the time, and the caller
 * serialises the calls (authz.c holds one mutex around the cache). That
 * makes every rule unit-testable (tests/unit/test_authz.c).
 *
 * Rules:
 *   - An answer (allow or deny) is fresh for ttl after it arrived; a fresh
 *     answer is used without asking.
 *   - No answer, or an expired one: one lookup is queued for the identity
 *     (never two at once) and the request waits for it (SC_AUTHZ_WAIT).
 *   - A lookup that fails (Consul unreachable, error status, bad answer):
 *     with an earlier answer for the identity, that answer is used "stale"
 *     and asked again after SC_AUTHZ_RETRY_MS (at most ttl); requests are
 *     then not held up by the retries. Without one: the waiting requests
 *     are refused (SC_AUTHZ_UNAVAILABLE). Nothing is ever allowed by default.
 *   - At most max_entries identities are kept; a new one replaces the one
 *     used least recently that has no lookup in flight.
 *
 * Memory: the cache owns its entries and the text of Consul's reasons. A
 * reason is interned: the pointer handed out stays valid until
 * sc_authz_cache_free, so a worker may keep it without a lock (at most
 * SC_AUTHZ_MAX_REASONS distinct texts are kept; later ones share a fixed
 * text).
 */
#ifndef SC_AUTHZ_CACHE_H
#define SC_AUTHZ_CACHE_H

#include "core/common.h"

#define SC_AUTHZ_MAX_ENTRIES 4096      /* identities kept */
#define SC_AUTHZ_MAX_REASONS 1024      /* distinct reason texts kept */
#define SC_AUTHZ_SERIAL_MAX 192        /* "0a:1b:..." of a serial up to 64 octets */
#define SC_AUTHZ_ERROR_MAX 320
#define SC_AUTHZ_RETRY_MS 1000         /* a stale answer is used this long before asking again */

typedef enum {
    SC_AUTHZ_ALLOW = 0,
    SC_AUTHZ_DENY,
    SC_AUTHZ_WAIT,                     /* a lookup is in flight: wait for it */
    SC_AUTHZ_UNAVAILABLE,              /* Consul could not answer and there is no earlier answer */
} sc_authz_verdict;

const char *sc_authz_verdict_name(sc_authz_verdict v); /* "allow", "deny", "wait", "unavailable" */

typedef struct sc_authz_decision {
    sc_authz_verdict verdict;
    uint64_t until_ms;      /* ALLOW/DENY: the same decision holds until then (may be in the past) */
    const char *reason;     /* ALLOW/DENY: Consul's Reason (interned, never NULL) */
    bool stale;             /* ALLOW/DENY from the last answer while Consul cannot answer */
    uint64_t seq;           /* WAIT: hand back to sc_authz_cache_result */
    bool queued;            /* a new lookup was queued: wake whoever runs them */
    char error[SC_AUTHZ_ERROR_MAX]; /* UNAVAILABLE: why */
} sc_authz_decision;

typedef struct sc_authz_cache sc_authz_cache;

/* ttl_ms >= 1; max_entries 0 = SC_AUTHZ_MAX_ENTRIES. NULL on -ENOMEM. */
sc_authz_cache *sc_authz_cache_new(uint64_t ttl_ms, size_t max_entries);
void sc_authz_cache_free(sc_authz_cache *c);   /* NULL is a no-op */

/*
 * A request from `identity` (non-empty) whose certificate has `serial`
 * (Consul's form, may be ""): ALLOW / DENY from a usable answer, WAIT with
 * d->seq (a lookup is in flight, d->queued when this call queued it), or
 * UNAVAILABLE (the cache is full of lookups in flight, or out of memory).
 */
void sc_authz_cache_check(sc_authz_cache *c, const char *identity, const char *serial,
                          uint64_t now_ms, sc_authz_decision *d);

/*
 * A request that got WAIT with `seq`: WAIT while that lookup has not ended,
 * else ALLOW / DENY (fresh or stale) or UNAVAILABLE with the lookup's error.
 */
void sc_authz_cache_result(sc_authz_cache *c, const char *identity, uint64_t seq,
                           uint64_t now_ms, sc_authz_decision *d);

/* Takes the oldest queued lookup: copies its identity and serial (cut to
 * the caps) and returns true, or false when none is queued. The lookup is
 * in flight until sc_authz_cache_answer. */
bool sc_authz_cache_next(sc_authz_cache *c, char *identity, size_t id_cap, char *serial,
                         size_t serial_cap);

/* The end of a lookup: an answer (ok, authorized, reason) or a failure (!ok, error). */
typedef struct sc_authz_answer {
    bool ok;
    bool authorized;
    const char *reason;     /* ok: Consul's Reason ("" when none) */
    const char *error;      /* !ok: why, for logs and the callers' error text */
} sc_authz_answer;

/* What the end of a lookup changed, for the log. */
typedef struct sc_authz_event {
    bool known;             /* the identity was found (it always is while in flight) */
    bool first_answer;      /* ok, and the identity had no answer before */
    bool changed;           /* ok, and the decision differs from the previous answer */
    bool became_stale;      /* !ok, an earlier answer is used from now on */
    bool recovered;         /* ok after the stale period */
    bool refused;           /* !ok and no earlier answer: the waiting requests are refused */
    bool allowed;           /* the decision in use now (with has_answer) */
    bool has_answer;
    uint64_t answer_age_ms; /* became_stale: how old the answer in use is */
} sc_authz_event;

void sc_authz_cache_answer(sc_authz_cache *c, const char *identity, uint64_t now_ms,
                           const sc_authz_answer *a, sc_authz_event *ev);

/* For the admin endpoint. */
typedef struct sc_authz_cache_view {
    size_t entries, max_entries, answered, stale, in_flight, queued, reasons;
    uint64_t ttl_ms;
    uint64_t lookups_total, answers_total, errors_total, evictions_total;
} sc_authz_cache_view;

void sc_authz_cache_snapshot(const sc_authz_cache *c, sc_authz_cache_view *v);

#endif

/*
 * bucket.h: token buckets shared by every worker thread, as GCRA (the
 * generic cell rate algorithm: a token bucket kept as one timestamp).
 *
 * The math: a limit of `count` requests per `period` with room for `burst`
 * at once has an emission interval I = period / count and a tolerance
 * B x I. Each bucket keeps one number, its theoretical arrival time (TAT).
 * A request at `now` computes new = max(TAT, now) + I; it is admitted when
 * new - now <= B x I (then TAT = new) and refused otherwise (TAT stays, so
 * refusals cost the caller nothing). An idle bucket admits B requests at
 * once, then one per I: exactly a token bucket of B tokens refilled at
 * count/period, with no refill timer and no floating point.
 *
 * Exact across workers. Two shapes:
 *   - sc_rl_cell, one bucket (a limit keyed by the whole route): the TAT is
 *     one atomic word updated with compare-and-swap, lock-free, so the
 *     admitted count over any interval is what one thread would admit.
 *   - sc_rl_table, one bucket per key (caller, header, ...), at most
 *     max_keys of them. The table is split into shards (up to 64, chosen
 *     from max_keys), each a hash table with its own LRU list under a
 *     short mutex held for one lookup, one GCRA step and two list links
 *     (no allocation, no I/O inside; an allocation for a new key happens
 *     outside it). Why a mutex and not a lock-free table: a key table that
 *     is bounded must evict, and a lock-free table with eviction needs
 *     deferred reclamation (another worker may still be reading an evicted
 *     entry) and a lock-free LRU; an uncontended mutex costs ~20 ns, and
 *     keys hash over the shards, so two workers meet on one lock only when
 *     their keys share a shard at the same moment. Every decision for a
 *     key is made under its shard's lock: exact.
 *
 * Eviction: a new key in a full shard replaces the shard's least recently
 * used key. Evictions are counted, and so are those of keys whose bucket
 * was not yet full again ("active" evictions: that key, when it comes back,
 * gets a fresh burst): a steady count of those says max_keys is too small.
 * Key hashing is seeded per table (SipHash-1-3 with a random key), so
 * callers choosing keys cannot aim them at one chain.
 *
 * Time: callers pass CLOCK_MONOTONIC nanoseconds (sc_now_ns) and every
 * worker must use the same clock. Memory: the table owns its entries; keys
 * are copied (at most SC_RL_KEY_MAX bytes, descriptor.h).
 */
#ifndef SC_RL_BUCKET_H
#define SC_RL_BUCKET_H

#include "core/common.h"

#include <stdatomic.h>

/* A limit's GCRA parameters, from its configuration. */
typedef struct sc_rl_gcra {
    uint64_t interval_ns;           /* I = period / count (>= 1000) */
    uint64_t tolerance_ns;          /* B x I */
    uint64_t burst;                 /* B */
    uint64_t count, period_ms;      /* as configured (for replies) */
} sc_rl_gcra;

/* count >= 1, period_ms >= 1, burst >= 1, count <= period_ms * 1000 and
 * burst x I below 2^63 ns (the configuration checks all of these). */
void sc_rl_gcra_init(sc_rl_gcra *g, uint64_t count, uint64_t period_ms, uint64_t burst);

/* What one decision says, for the reply headers (reply.h). */
typedef struct sc_rl_outcome {
    bool allowed;
    uint64_t remaining;             /* requests that would be admitted right after this one */
    uint64_t next_ns;               /* until one more request is admitted (refused: Retry-After) */
    uint64_t full_ns;               /* until the bucket is full again (0 = it is) */
} sc_rl_outcome;

/* One GCRA step on a TAT (pure): returns the TAT after the decision (the
 * same when refused) and fills *o. */
uint64_t sc_rl_gcra_step(const sc_rl_gcra *g, uint64_t tat, uint64_t now_ns, sc_rl_outcome *o);

/* ---- one bucket, lock-free ---- */

typedef struct sc_rl_cell {
    _Atomic uint64_t tat;           /* 0: never used (full) */
} sc_rl_cell;

void sc_rl_cell_take(sc_rl_cell *c, const sc_rl_gcra *g, uint64_t now_ns, sc_rl_outcome *o);

/* ---- one bucket per key, bounded ---- */

typedef struct sc_rl_table sc_rl_table;

/* max_keys >= 1. NULL on -ENOMEM. */
sc_rl_table *sc_rl_table_new(size_t max_keys);
void sc_rl_table_free(sc_rl_table *t);      /* NULL is a no-op */

/* A decision for key[0..klen) (klen <= SC_RL_KEY_MAX; longer keys are cut).
 * Returns 0, or -ENOMEM when a new key cannot be stored (nothing decided:
 * the caller admits, and counts it). Any thread. */
int sc_rl_table_take(sc_rl_table *t, const sc_rl_gcra *g, const char *key, size_t klen,
                     uint64_t now_ns, sc_rl_outcome *o);

typedef struct sc_rl_table_view {
    size_t keys, max_keys, shards;
    uint64_t evictions;             /* keys dropped to make room */
    uint64_t evictions_active;      /* ... whose bucket was not full again */
    uint64_t alloc_failures;        /* new keys that could not be stored */
} sc_rl_table_view;

void sc_rl_table_snapshot(sc_rl_table *t, sc_rl_table_view *v);

/* The busiest keys: most requests in the last 10-20 s. */
#define SC_RL_BUSY_WINDOW_NS (10ull * 1000000000ull)
typedef struct sc_rl_busy_key {
    char key[256];                  /* SC_RL_KEY_MAX bytes, not NUL terminated */
    size_t klen;
    uint64_t recent;                /* requests in the current and the previous 10 s */
    uint64_t admitted, refused;     /* since the key entered the table */
    uint64_t full_ns;               /* until its bucket is full again */
} sc_rl_busy_key;

/* Fills out[0..n) with the n busiest keys, busiest first; returns how many.
 * Walks every shard under its lock (admin thread, on demand). */
size_t sc_rl_table_busiest(sc_rl_table *t, uint64_t now_ns, const sc_rl_gcra *g,
                           sc_rl_busy_key *out, size_t n);

#endif

/*
 * window.h: a sliding time window of counters shared by every worker thread,
 * the building block of the circuit breaker's failure window and the retry
 * budget. Pure logic: the caller passes the clock; no I/O, no allocation.
 *
 * The window is SC_WINDOW_BUCKETS buckets of width window_ms / SC_WINDOW_BUCKETS
 * (at least 1 ms). A bucket holds two 64-bit words, each packing two 32-bit
 * counters (high and low half), and the index (now_ms / width) of the time
 * slice it currently counts. A count made at time t is part of the window
 * while now_ms / width < t / width + SC_WINDOW_BUCKETS: between
 * window_ms - width and window_ms after it was made.
 *
 * Concurrency: lock-free. Adding is one atomic load of the bucket's index
 * plus one fetch_add per word. The first writer of a new time slice claims
 * the slot with a CAS on its index and then subtracts what the slot held;
 * a count that races with that hand-over (made by a thread still in the old
 * slice, within nanoseconds of the boundary) may survive into the new slice.
 * Reading sums the buckets with relaxed loads: a consistent view of each
 * word, not of the whole window. These are the documented approximations;
 * no count is ever lost by a concurrent reset except by sc_window_clear(),
 * which by design drops everything counted before it.
 *
 * Limits: each 32-bit counter of a bucket must stay below 2^32 (over 4e9
 * events per window_ms / 10); the sum of a counter over the window is 64 bits.
 *
 * Memory: the caller owns the struct (usually embedded in a breaker or a
 * budget); nothing to free.
 */
#ifndef SC_RES_WINDOW_H
#define SC_RES_WINDOW_H

#include "core/common.h"

#include <stdatomic.h>

#define SC_WINDOW_BUCKETS 10u

typedef struct sc_window_bucket {
    _Atomic uint64_t epoch;       /* time slice (now_ms / width) counted here */
    _Atomic uint64_t w[2];        /* two words of two 32-bit counters */
} sc_window_bucket;

typedef struct sc_window {
    uint64_t width_ms;            /* immutable after init */
    sc_window_bucket b[SC_WINDOW_BUCKETS];
} sc_window;

/* Packs a value for the high / low 32-bit counter of a word. */
#define SC_WINDOW_HI(x) ((uint64_t)(x) << 32)
#define SC_WINDOW_LO(x) ((uint64_t)(x))

/* Not thread safe: before the window is shared. window_ms 0 counts as 1. */
void sc_window_init(sc_window *w, uint64_t window_ms);

/*
 * The bucket counting now_ms, rolled over to this time slice when it still
 * held an older one. Returns NULL when the slot already counts a later slice
 * (the caller's clock is a whole window behind another thread's): the
 * caller then drops its count.
 */
sc_window_bucket *sc_window_bucket_at(sc_window *w, uint64_t now_ms);

/* Adds packed values to word 0 and word 1 of the bucket of now_ms (a zero
 * value skips its word). Returns false when the count was dropped (see above). */
bool sc_window_add(sc_window *w, uint64_t now_ms, uint64_t add0, uint64_t add1);

/* Sums over the window ending at now_ms: out[0] = high of word 0,
 * out[1] = low of word 0, out[2] = high of word 1, out[3] = low of word 1.
 * When skip is not NULL that bucket is left out. */
void sc_window_sum(const sc_window *w, uint64_t now_ms, const sc_window_bucket *skip,
                   uint64_t out[4]);

/* Drops every count (each word atomically exchanged with 0); counts added
 * concurrently are either dropped or kept whole. */
void sc_window_clear(sc_window *w);

#endif

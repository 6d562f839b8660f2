/*
 * window.c: see window.h. The hand-over of a bucket to a new time slice
 * subtracts a snapshot instead of storing 0 so that counts added by threads
 * already in the new slice (they saw the new index) are never erased.
 */
#include "resilience/window.h"

void sc_window_init(sc_window *w, uint64_t window_ms)
{
    uint64_t width = window_ms / SC_WINDOW_BUCKETS;
    w->width_ms = width ? width : 1;
    for (unsigned i = 0; i < SC_WINDOW_BUCKETS; i++) {
        atomic_init(&w->b[i].epoch, 0);
        atomic_init(&w->b[i].w[0], 0);
        atomic_init(&w->b[i].w[1], 0);
    }
}

/* Subtracts each 32-bit half of `snap` from the word, never below zero (a
 * concurrent sc_window_clear may already have emptied it). */
static void sub_saturating(_Atomic uint64_t *word, uint64_t snap)
{
    if (!snap)
        return;
    uint64_t cur = atomic_load_explicit(word, memory_order_relaxed);
    for (;;) {
        uint64_t hi = cur >> 32, lo = cur & 0xFFFFFFFFu;
        uint64_t shi = snap >> 32, slo = snap & 0xFFFFFFFFu;
        hi = hi > shi ? hi - shi : 0;
        lo = lo > slo ? lo - slo : 0;
        uint64_t next = hi << 32 | lo;
        if (atomic_compare_exchange_weak_explicit(word, &cur, next, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

sc_window_bucket *sc_window_bucket_at(sc_window *w, uint64_t now_ms)
{
    uint64_t idx = now_ms / w->width_ms;
    sc_window_bucket *s = &w->b[idx % SC_WINDOW_BUCKETS];
    uint64_t e = atomic_load_explicit(&s->epoch, memory_order_acquire);
    for (;;) {
        if (SC_LIKELY(e == idx))
            return s;
        if (e > idx)
            return NULL;
        uint64_t snap0 = atomic_load_explicit(&s->w[0], memory_order_relaxed);
        uint64_t snap1 = atomic_load_explicit(&s->w[1], memory_order_relaxed);
        if (atomic_compare_exchange_strong_explicit(&s->epoch, &e, idx, memory_order_acq_rel,
                                                    memory_order_acquire)) {
            sub_saturating(&s->w[0], snap0);
            sub_saturating(&s->w[1], snap1);
            return s;
        }
        /* e now holds the index another thread installed: look again */
    }
}

bool sc_window_add(sc_window *w, uint64_t now_ms, uint64_t add0, uint64_t add1)
{
    sc_window_bucket *s = sc_window_bucket_at(w, now_ms);
    if (!s)
        return false;
    if (add0)
        atomic_fetch_add_explicit(&s->w[0], add0, memory_order_relaxed);
    if (add1)
        atomic_fetch_add_explicit(&s->w[1], add1, memory_order_relaxed);
    return true;
}

void sc_window_sum(const sc_window *w, uint64_t now_ms, const sc_window_bucket *skip,
                   uint64_t out[4])
{
    uint64_t idx = now_ms / w->width_ms;
    out[0] = out[1] = out[2] = out[3] = 0;
    for (unsigned i = 0; i < SC_WINDOW_BUCKETS; i++) {
        const sc_window_bucket *s = &w->b[i];
        if (s == skip)
            continue;
        uint64_t e = atomic_load_explicit(&s->epoch, memory_order_acquire);
        /* older than the window: stale; later than idx: another worker's
         * clock is a little ahead, the counts are recent */
        if (e + SC_WINDOW_BUCKETS <= idx)
            continue;
        uint64_t a = atomic_load_explicit(&s->w[0], memory_order_relaxed);
        uint64_t b = atomic_load_explicit(&s->w[1], memory_order_relaxed);
        out[0] += a >> 32;
        out[1] += a & 0xFFFFFFFFu;
        out[2] += b >> 32;
        out[3] += b & 0xFFFFFFFFu;
    }
}

void sc_window_clear(sc_window *w)
{
    for (unsigned i = 0; i < SC_WINDOW_BUCKETS; i++) {
        atomic_exchange_explicit(&w->b[i].w[0], 0, memory_order_relaxed);
        atomic_exchange_explicit(&w->b[i].w[1], 0, memory_order_relaxed);
    }
}

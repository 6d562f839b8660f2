/*
 * bounded.h: a bounded counter shared by worker threads (lock-free CAS), the
 * primitive under the bulkhead's slots and the outlier detector's ejection
 * cap: never above the maximum, never below zero, exactly.
 */
#ifndef SC_BOUNDED_H
#define SC_BOUNDED_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Increments *a unless it has reached max; true when it did. */
static inline bool sc_bounded_take(_Atomic uint32_t *a, uint32_t max)
{
    uint32_t cur = atomic_load_explicit(a, memory_order_relaxed);
    while (cur < max) {
        if (atomic_compare_exchange_weak_explicit(a, &cur, cur + 1, memory_order_acq_rel, memory_order_relaxed))
            return true;
    }
    return false;
}

/* Decrements *a unless it is 0; returns the new value. */
static inline uint32_t sc_bounded_give(_Atomic uint32_t *a)
{
    uint32_t cur = atomic_load_explicit(a, memory_order_relaxed);
    while (cur > 0) {
        if (atomic_compare_exchange_weak_explicit(a, &cur, cur - 1, memory_order_acq_rel, memory_order_relaxed))
            return cur - 1;
    }
    return 0;
}

#endif

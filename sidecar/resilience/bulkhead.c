/*
 * bulkhead.c: see bulkhead.h. Every take is a CAS loop that re-checks the
 * limit, so no interleaving can exceed it; releases saturate at zero so a
 * caller's double release shows up as a wrong count, never as a wrap to 4e9.
 */
#include "resilience/bulkhead.h"
#include "resilience/bounded.h"

#include <string.h>

static const char *const result_names[] = {"admitted", "queue", "reject"};

const char *sc_bulkhead_result_name(sc_bulkhead_result r)
{
    return (unsigned)r < SC_ARRAY_LEN(result_names) ? result_names[r] : "?";
}

void sc_bulkhead_init(sc_bulkhead *b, const sc_bulkhead_policy *p)
{
    memset(b, 0, sizeof(*b));
    atomic_init(&b->active, 0);
    atomic_init(&b->pending, 0);
    atomic_init(&b->connections, 0);
    atomic_init(&b->admitted, 0);
    atomic_init(&b->queued, 0);
    atomic_init(&b->promoted, 0);
    atomic_init(&b->rejected, 0);
    atomic_init(&b->queue_timeouts, 0);
    atomic_init(&b->abandoned, 0);
    atomic_init(&b->conn_rejected, 0);
    sc_bulkhead_set_limits(b, p);
}

void sc_bulkhead_set_limits(sc_bulkhead *b, const sc_bulkhead_policy *p)
{
    bool on = p && p->enabled;
    /* the config never gives 0; treat it as unlimited rather than as a wall */
    atomic_store_explicit(&b->max_concurrent, on && p->max_concurrent ? p->max_concurrent : UINT32_MAX,
                          memory_order_relaxed);
    atomic_store_explicit(&b->max_pending, on ? p->max_pending : 0, memory_order_relaxed);
    atomic_store_explicit(&b->max_connections, on ? p->max_connections : 0, memory_order_relaxed);
    atomic_store_explicit(&b->queue_timeout_ms, on ? p->queue_timeout_ms : 0, memory_order_relaxed);
}

static uint32_t limit(_Atomic uint32_t *l)
{
    return atomic_load_explicit(l, memory_order_relaxed);
}

static void count(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

sc_bulkhead_result sc_bulkhead_try_enter(sc_bulkhead *b)
{
    if (sc_bounded_take(&b->active, limit(&b->max_concurrent))) {
        count(&b->admitted);
        return SC_BULKHEAD_ADMITTED;
    }
    if (sc_bounded_take(&b->pending, limit(&b->max_pending))) {
        count(&b->queued);
        return SC_BULKHEAD_QUEUE;
    }
    count(&b->rejected);
    return SC_BULKHEAD_REJECT;
}

bool sc_bulkhead_leave(sc_bulkhead *b)
{
    sc_bounded_give(&b->active);
    return atomic_load_explicit(&b->pending, memory_order_acquire) > 0;
}

bool sc_bulkhead_try_promote(sc_bulkhead *b)
{
    /* active first: pending is then briefly one too high, which only refuses */
    if (!sc_bounded_take(&b->active, limit(&b->max_concurrent)))
        return false;
    sc_bounded_give(&b->pending);
    count(&b->promoted);
    return true;
}

void sc_bulkhead_abandon(sc_bulkhead *b)
{
    sc_bounded_give(&b->pending);
    count(&b->abandoned);
}

void sc_bulkhead_queue_timeout(sc_bulkhead *b)
{
    sc_bounded_give(&b->pending);
    count(&b->queue_timeouts);
}

bool sc_bulkhead_conn_acquire(sc_bulkhead *b)
{
    uint32_t max = limit(&b->max_connections);
    if (sc_bounded_take(&b->connections, max ? max : UINT32_MAX))
        return true;
    count(&b->conn_rejected);
    return false;
}

void sc_bulkhead_conn_release(sc_bulkhead *b)
{
    sc_bounded_give(&b->connections);
}

void sc_bulkhead_snapshot(const sc_bulkhead *b, sc_bulkhead_view *out)
{
    out->active = atomic_load_explicit(&b->active, memory_order_relaxed);
    out->pending = atomic_load_explicit(&b->pending, memory_order_relaxed);
    out->connections = atomic_load_explicit(&b->connections, memory_order_relaxed);
    out->max_concurrent = atomic_load_explicit(&b->max_concurrent, memory_order_relaxed);
    out->max_pending = atomic_load_explicit(&b->max_pending, memory_order_relaxed);
    out->max_connections = atomic_load_explicit(&b->max_connections, memory_order_relaxed);
    out->queue_timeout_ms = atomic_load_explicit(&b->queue_timeout_ms, memory_order_relaxed);
    out->admitted = atomic_load_explicit(&b->admitted, memory_order_relaxed);
    out->queued = atomic_load_explicit(&b->queued, memory_order_relaxed);
    out->promoted = atomic_load_explicit(&b->promoted, memory_order_relaxed);
    out->rejected = atomic_load_explicit(&b->rejected, memory_order_relaxed);
    out->queue_timeouts = atomic_load_explicit(&b->queue_timeouts, memory_order_relaxed);
    out->abandoned = atomic_load_explicit(&b->abandoned, memory_order_relaxed);
    out->conn_rejected = atomic_load_explicit(&b->conn_rejected, memory_order_relaxed);
}

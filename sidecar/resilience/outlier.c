/*
 * outlier.c: see outlier.h. ejected_until_ms is the instance's ownership
 * word: 0 -> time (ejection) and time -> 0 (return) are CASes, so exactly
 * one caller makes each change and the cap count follows them one for one.
 */
#include "resilience/outlier.h"
#include "resilience/bounded.h"

#include <math.h>
#include <string.h>

void sc_outlier_init(sc_outlier *o, const sc_outlier_policy *p)
{
    memset(o, 0, sizeof(*o));
    atomic_init(&o->ejected_now, 0);
    atomic_init(&o->ejections_total, 0);
    atomic_init(&o->returns_total, 0);
    atomic_init(&o->ejections_capped, 0);
    sc_outlier_set_policy(o, p);
}

void sc_outlier_set_policy(sc_outlier *o, const sc_outlier_policy *p)
{
    double pct = p->max_ejected_percent;
    atomic_store_explicit(&o->enabled, p->enabled, memory_order_relaxed);
    atomic_store_explicit(&o->consecutive_failures, p->consecutive_failures ? p->consecutive_failures : 1,
                          memory_order_relaxed);
    atomic_store_explicit(&o->eject_for_ms, p->eject_for_ms, memory_order_relaxed);
    atomic_store_explicit(&o->max_eject_ms, SC_MAX(p->max_eject_ms, p->eject_for_ms), memory_order_relaxed);
    atomic_store_explicit(&o->max_ejected_ppm,
                          !(pct > 0) ? 0 : pct >= 100 ? 1000000 : (uint64_t)llround(pct * 10000.0),
                          memory_order_relaxed);
}

void sc_outlier_instance_init(sc_outlier_instance *in)
{
    memset(in, 0, sizeof(*in));
    atomic_init(&in->consecutive, 0);
    atomic_init(&in->ejected_until_ms, 0);
    atomic_init(&in->ejections, 0);
    atomic_init(&in->active_requests, 0);
    atomic_init(&in->ejected_at_ms, 0);
    atomic_init(&in->returned_at_ms, 0);
    atomic_init(&in->total_ejections, 0);
}

uint32_t sc_outlier_max_ejected(const sc_outlier *o, size_t n_instances)
{
    uint64_t n = n_instances > UINT32_MAX ? UINT32_MAX : n_instances;
    return (uint32_t)(n * atomic_load_explicit(&o->max_ejected_ppm, memory_order_relaxed) / 1000000u);
}

/* The multiplier for a new ejection at now_ms (see Decay in outlier.h),
 * with the ejection times read once (a reload may change them). */
static uint32_t next_multiplier(sc_outlier_instance *in, uint64_t now_ms, uint64_t eject_for, uint64_t max_eject)
{
    uint64_t m = atomic_load_explicit(&in->ejections, memory_order_relaxed);
    uint64_t ret = atomic_load_explicit(&in->returned_at_ms, memory_order_relaxed);
    if (ret && now_ms > ret && eject_for) {
        uint64_t decay = (now_ms - ret) / eject_for;
        m = m > decay ? m - decay : 0;
    }
    /* past the cap a larger multiplier changes nothing but the decay time */
    uint64_t top = eject_for ? (max_eject + eject_for - 1) / eject_for : 1;
    if (top < 1)
        top = 1;
    if (top > UINT32_MAX)
        top = UINT32_MAX;
    return (uint32_t)SC_MIN(m + 1, top);
}

int sc_outlier_record(sc_outlier *o, sc_outlier_instance *in, size_t n_instances,
                      bool gateway_or_connect_failure, uint64_t now_ms)
{
    if (!atomic_load_explicit(&o->enabled, memory_order_relaxed))
        return 0;
    if (atomic_load_explicit(&in->ejected_until_ms, memory_order_acquire) != 0)
        return 0; /* ejected: outcomes of requests still in flight do not count */
    if (!gateway_or_connect_failure) {
        if (atomic_load_explicit(&in->consecutive, memory_order_relaxed) != 0)
            atomic_store_explicit(&in->consecutive, 0, memory_order_relaxed);
        return 0;
    }
    uint32_t c = atomic_fetch_add_explicit(&in->consecutive, 1, memory_order_relaxed) + 1;
    if (c < atomic_load_explicit(&o->consecutive_failures, memory_order_relaxed))
        return 0;
    if (!sc_bounded_take(&o->ejected_now, sc_outlier_max_ejected(o, n_instances))) {
        atomic_fetch_add_explicit(&o->ejections_capped, 1, memory_order_relaxed);
        return 0;
    }
    uint64_t eject_for = atomic_load_explicit(&o->eject_for_ms, memory_order_relaxed);
    uint64_t max_eject = atomic_load_explicit(&o->max_eject_ms, memory_order_relaxed);
    uint32_t mult = next_multiplier(in, now_ms, eject_for, max_eject);
    uint64_t dur = eject_for && mult > max_eject / eject_for ? max_eject : eject_for * mult;
    uint64_t until = now_ms > UINT64_MAX - dur ? UINT64_MAX : now_ms + dur;
    if (until == 0)
        until = 1; /* 0 means "in service" */
    uint64_t expect = 0;
    if (!atomic_compare_exchange_strong_explicit(&in->ejected_until_ms, &expect, until,
                                                 memory_order_acq_rel, memory_order_acquire)) {
        sc_bounded_give(&o->ejected_now); /* another thread ejected it first */
        return 0;
    }
    atomic_store_explicit(&in->ejections, mult, memory_order_relaxed);
    atomic_store_explicit(&in->ejected_at_ms, now_ms, memory_order_relaxed);
    atomic_store_explicit(&in->consecutive, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&in->total_ejections, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&o->ejections_total, 1, memory_order_relaxed);
    return 1;
}

bool sc_outlier_check(sc_outlier *o, sc_outlier_instance *in, uint64_t now_ms, bool *returned)
{
    if (returned)
        *returned = false;
    uint64_t until = atomic_load_explicit(&in->ejected_until_ms, memory_order_acquire);
    if (until == 0)
        return false;
    if (now_ms < until)
        return true;
    /* before the CAS: whoever sees the instance in service sees when it returned */
    atomic_store_explicit(&in->returned_at_ms, now_ms, memory_order_relaxed);
    if (atomic_compare_exchange_strong_explicit(&in->ejected_until_ms, &until, 0,
                                                memory_order_acq_rel, memory_order_acquire)) {
        atomic_store_explicit(&in->consecutive, 0, memory_order_relaxed);
        sc_bounded_give(&o->ejected_now);
        atomic_fetch_add_explicit(&o->returns_total, 1, memory_order_relaxed);
        if (returned)
            *returned = true;
    }
    return false;
}

bool sc_outlier_is_ejected(sc_outlier *o, sc_outlier_instance *in, uint64_t now_ms)
{
    return sc_outlier_check(o, in, now_ms, NULL);
}

bool sc_outlier_remove(sc_outlier *o, sc_outlier_instance *in)
{
    uint64_t until = atomic_load_explicit(&in->ejected_until_ms, memory_order_acquire);
    while (until != 0) {
        if (atomic_compare_exchange_weak_explicit(&in->ejected_until_ms, &until, 0,
                                                  memory_order_acq_rel, memory_order_acquire)) {
            sc_bounded_give(&o->ejected_now);
            return true;
        }
    }
    return false;
}

void sc_outlier_snapshot(const sc_outlier *o, size_t n_instances, sc_outlier_view *out)
{
    out->ejected_now = atomic_load_explicit(&o->ejected_now, memory_order_relaxed);
    out->max_ejected = sc_outlier_max_ejected(o, n_instances);
    out->ejections_total = atomic_load_explicit(&o->ejections_total, memory_order_relaxed);
    out->returns_total = atomic_load_explicit(&o->returns_total, memory_order_relaxed);
    out->ejections_capped = atomic_load_explicit(&o->ejections_capped, memory_order_relaxed);
}

void sc_outlier_instance_snapshot(const sc_outlier_instance *in, uint64_t now_ms,
                                  sc_outlier_instance_view *out)
{
    uint64_t until = atomic_load_explicit(&in->ejected_until_ms, memory_order_acquire);
    out->ejected = until != 0 && now_ms < until;
    out->ms_left = out->ejected ? until - now_ms : 0;
    out->consecutive = atomic_load_explicit(&in->consecutive, memory_order_relaxed);
    out->multiplier = atomic_load_explicit(&in->ejections, memory_order_relaxed);
    out->total_ejections = atomic_load_explicit(&in->total_ejections, memory_order_relaxed);
    out->active_requests = atomic_load_explicit(&in->active_requests, memory_order_relaxed);
    out->ejected_at_ms = atomic_load_explicit(&in->ejected_at_ms, memory_order_relaxed);
    out->returned_at_ms = atomic_load_explicit(&in->returned_at_ms, memory_order_relaxed);
}

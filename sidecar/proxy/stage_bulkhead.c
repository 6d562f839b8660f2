/*
 * stage_bulkhead.c: the bulkhead of a route (resilience/bulkhead.h; policy
 * bulkhead, or inbound.max_concurrent). A free slot: GO, held until the
 * stream ends (release). All slots taken and room in the queue: PARK on this
 * worker's queue for the route (sc_route_state.waiters) for at most
 * bulkhead.queue_timeout (bulkhead-queue-timeout). Queue full: DENY
 * (bulkhead-full).
 *
 * Slots are process-wide, queues are per worker: a slot released here goes
 * to this worker's first waiter at once; slots released on other workers are
 * picked up by the worker's promote timer (sc_stage_bulkhead_promote, every
 * few milliseconds while waiters exist).
 *
 * Every route has it, enabled or not: a disabled bulkhead admits everything
 * and still counts the requests in flight for /stats and /clusters.
 */
#include "proxy/obs_access.h"
#include "proxy/stage.h"

#include "sidecar.h"

/* No queue_timeout configured: the request's own deadline is the bound. */
#define NO_QUEUE_TIMEOUT_MS 3600000u

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    (void)r;
    (void)sc;
    *conf = NULL;
    return true;
}

static sc_stage_verdict admit(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail)
{
    (void)conf;
    (void)word;
    sc_route *r = s->route;
    switch (sc_bulkhead_try_enter(&r->bulkhead)) {
    case SC_BULKHEAD_ADMITTED:
        return SC_STAGE_GO;
    case SC_BULKHEAD_QUEUE: {
        sc_worker *w = s->w;
        const sc_policy *pol = sc_stream_policy(s);
        uint64_t qt = pol ? pol->bulkhead.queue_timeout_ms : 0;
        sc_stage_park(s, &sc_rstate(w, r)->waiters, qt ? qt : NO_QUEUE_TIMEOUT_MS);
        sc_obs_trace_event(s, SC_EV_BULKHEAD_QUEUED, (int64_t)atomic_load_explicit(&r->bulkhead.pending, memory_order_relaxed), false);
        if (!ev_is_active(&w->promote))
            ev_timer_again(w->loop, &w->promote);
        return SC_STAGE_PARK;
    }
    case SC_BULKHEAD_REJECT:
    default:
        *fail = SC_FAIL_OVERLOAD;
        return SC_STAGE_DENY;
    }
}

static sc_fail timeout(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)conf;
    (void)word;
    sc_bulkhead_queue_timeout(&s->route->bulkhead);
    return SC_FAIL_QUEUE_TIMEOUT;
}

static void cancel(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)conf;
    (void)word;
    sc_bulkhead_abandon(&s->route->bulkhead);
}

/* This worker's waiters for route r take the slots that are free. */
static void promote(sc_worker *w, sc_route *r)
{
    sc_route_state *rs = sc_rstate(w, r);
    while (!sc_list_empty(&rs->waiters) && sc_bulkhead_try_promote(&r->bulkhead)) {
        sc_stream *s = sc_parked_stream(rs->waiters.next);
        uint64_t waited_ms = (sc_worker_now_ns(w) - s->start_ns) / 1000000u;
        sc_obs_trace_event(s, SC_EV_BULKHEAD_ADMITTED, (int64_t)waited_ms, false);
        sc_admit_resume(s, SC_STAGE_GO, SC_FAIL_NONE);
    }
}

static void release(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)conf;
    (void)word;
    if (sc_bulkhead_leave(&s->route->bulkhead))
        promote(s->w, s->route); /* someone waits: this worker's own queue first (others poll) */
}

bool sc_stage_bulkhead_promote(sc_worker *w)
{
    bool waiting = false;
    for (size_t i = 0; i < w->sc->n_routes; i++) {
        promote(w, &w->sc->routes[i]);
        waiting |= !sc_list_empty(&w->rstate[i].waiters);
    }
    return waiting;
}

const sc_stage sc_stage_bulkhead = {
    .name = "bulkhead",
    .configure = configure,
    .admit = admit,
    .timeout = timeout,
    .cancel = cancel,
    .release = release,
};

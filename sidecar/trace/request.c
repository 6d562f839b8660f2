/*
 * request.c: the spans of one request on its worker (see trace.h).
 */
#include "trace/trace.h"

static const char *const sampled_by_names[] = {"ratio", "parent", "force"};

int sc_trace_worker_init(sc_trace_worker *tw, const sc_trace_policy *pol, uint32_t queue_size)
{
    memset(tw, 0, sizeof(*tw));
    tw->pol = pol;
    sc_trace_rng_init(&tw->rng);
    return sc_span_ring_init(&tw->ring, queue_size);
}

void sc_trace_worker_free(sc_trace_worker *tw)
{
    if (tw)
        sc_span_ring_free(&tw->ring);
}

void sc_trace_req_start(sc_trace_worker *tw, sc_trace_req *rq, const sc_trace_in *in, sc_span_kind kind,
                        uint64_t start_ns)
{
    rq->active = false;
    rq->sampled = false;
    rq->attempt_open = false;
    rq->attempt = 0;
    rq->n_events = rq->n_attempt_events = rq->dropped_events = rq->dropped_attempt_events = 0;
    if (!tw)
        return;
    sc_trace_in none;
    if (!in) {
        sc_trace_in_init(&none, NULL);
        in = &none;
    }
    sc_trace_extract(in, tw->pol->formats_in, &rq->ctx);
    if (!rq->ctx.valid)
        sc_trace_new_trace_id(&tw->rng, rq->ctx.trace_id);
    sc_sample_reason why;
    rq->sampled = sc_sampler_decide(&tw->pol->sampler, &rq->ctx, in->forced, &why);
    rq->sampled_by = (uint8_t)why;
    sc_trace_new_span_id(&tw->rng, rq->span_id);
    rq->kind = (uint8_t)kind;
    rq->start_ns = start_ns;
    rq->active = true;
}

static void ev_push(sc_span_event *v, uint8_t *n, uint8_t *dropped, size_t cap, sc_span_event_kind e,
                    uint64_t t_ns, int64_t value)
{
    if (*n == cap) {
        if (*dropped < 255)
            (*dropped)++;
        return;
    }
    v[(*n)++] = (sc_span_event){.t_ns = t_ns, .value = value, .kind = (uint8_t)e};
}

void sc_trace_req_event(sc_trace_req *rq, sc_span_event_kind e, uint64_t t_ns, int64_t value)
{
    if (rq->active && rq->sampled)
        ev_push(rq->events, &rq->n_events, &rq->dropped_events, SC_TRACE_REQ_EVENTS, e, t_ns, value);
}

void sc_trace_attempt_event(sc_trace_req *rq, sc_span_event_kind e, uint64_t t_ns, int64_t value)
{
    if (rq->active && rq->sampled && rq->attempt_open)
        ev_push(rq->attempt_events, &rq->n_attempt_events, &rq->dropped_attempt_events, SC_TRACE_ATTEMPT_EVENTS, e,
                t_ns, value);
}

size_t sc_trace_attempt_start(sc_trace_worker *tw, sc_trace_req *rq, uint32_t attempt, uint64_t t_ns,
                              sc_trace_out *out)
{
    out->n = 0;
    out->used = 0;
    if (!tw || !rq->active)
        return 0;
    sc_trace_new_span_id(&tw->rng, rq->attempt_span_id);
    rq->attempt = attempt;
    rq->attempt_start_ns = t_ns;
    rq->attempt_open = true;
    rq->n_attempt_events = rq->dropped_attempt_events = 0;
    return sc_trace_inject(&rq->ctx, rq->attempt_span_id, rq->span_id, rq->sampled, tw->pol->formats_out, out);
}

/* The next ring slot, started as a span of this request; NULL when the
 * request is not recorded or the ring is full. */
static sc_span *open_span(sc_trace_worker *tw, const sc_trace_req *rq, const uint8_t *span_id,
                          const uint8_t *parent, sc_span_kind kind, const char *name, size_t name_len,
                          uint64_t start_ns, uint64_t end_ns, const sc_span_event *ev, uint8_t n_ev,
                          uint8_t dropped_ev)
{
    if (!tw || !rq->active || !rq->sampled)
        return NULL;
    sc_span *s = sc_span_ring_reserve(&tw->ring);
    if (!s)
        return NULL;
    sc_span_init(s, rq->ctx.trace_id, span_id, parent, kind, name, name_len, start_ns);
    for (uint8_t i = 0; i < n_ev; i++)
        sc_span_event_add(s, (sc_span_event_kind)ev[i].kind, ev[i].t_ns, ev[i].value);
    s->dropped_events = (uint8_t)SC_MIN(255, s->dropped_events + dropped_ev);
    sc_span_end(s, end_ns);
    return s;
}

sc_span *sc_trace_attempt_end(sc_trace_worker *tw, sc_trace_req *rq, const char *name, size_t name_len,
                              uint64_t end_ns)
{
    if (!rq->attempt_open)
        return NULL;
    rq->attempt_open = false;
    sc_span *s = open_span(tw, rq, rq->attempt_span_id, rq->span_id, SC_SPAN_KIND_CLIENT, name, name_len,
                           rq->attempt_start_ns, end_ns, rq->attempt_events, rq->n_attempt_events,
                           rq->dropped_attempt_events);
    sc_span_int(s, SC_ATTR_ATTEMPT, rq->attempt);
    if (rq->attempt > 1)
        sc_span_int(s, SC_ATTR_RESEND_COUNT, (int64_t)rq->attempt - 1);
    return s;
}

sc_span *sc_trace_req_end(sc_trace_worker *tw, sc_trace_req *rq, const char *name, size_t name_len,
                          uint64_t end_ns)
{
    rq->attempt_open = false;
    sc_span *s = open_span(tw, rq, rq->span_id, rq->ctx.valid ? rq->ctx.span_id : NULL, (sc_span_kind)rq->kind,
                           name, name_len, rq->start_ns, end_ns, rq->events, rq->n_events, rq->dropped_events);
    if (s) {
        s->parent_remote = rq->ctx.valid;
        if (rq->attempt)
            sc_span_int(s, SC_ATTR_ATTEMPTS, rq->attempt);
        if (rq->sampled_by < SC_ARRAY_LEN(sampled_by_names))
            sc_span_cstr(s, SC_ATTR_SAMPLED_BY, sampled_by_names[rq->sampled_by]);
    }
    return s;
}

void sc_trace_commit(sc_trace_worker *tw, sc_span *s)
{
    if (!s || !tw)
        return;
    uint32_t waiting = sc_span_ring_commit(&tw->ring);
    if (waiting == tw->wake_at && tw->wake)
        tw->wake(tw->wake_arg);
}

bool sc_trace_req_ids(const sc_trace_req *rq, char trace_hex[33], char span_hex[17])
{
    if (!rq->active) {
        trace_hex[0] = span_hex[0] = 0;
        return false;
    }
    sc_trace_hex(rq->ctx.trace_id, SC_TRACE_ID_LEN, trace_hex);
    trace_hex[32] = 0;
    sc_trace_hex(rq->span_id, SC_SPAN_ID_LEN, span_hex);
    span_hex[16] = 0;
    return true;
}

/*
 * trace.h: what the request path calls to trace a request. Pure: no I/O,
 * no allocation, no locks; each function runs on the worker that owns the
 * request and its sc_trace_worker.
 *
 * Spans of one request (its hop through this sidecar):
 *
 *   request span  SERVER (inbound) or CLIENT (outbound); its parent is the
 *                 caller's span when the caller sent a valid context (a
 *                 remote parent), else it is the root of a new trace.
 *   attempt spans one per attempt (retries included), CLIENT, children of
 *                 the request span; the attempt's span ID is what the next
 *                 hop receives as its parent (traceparent / b3), so the
 *                 next sidecar's SERVER span hangs under the attempt that
 *                 reached it.
 *
 * Life of a request:
 *
 *   sc_trace_in in; sc_trace_in_init(&in, tw->pol->force_header);
 *   for each request header: if (sc_trace_in_header(&in, ...)) drop it from
 *                            the forwarded request when rq.active (below)
 *   sc_trace_req_start(tw, &rq, &in, SC_SPAN_KIND_SERVER, start_ns);
 *   sc_trace_req_event(&rq, SC_EV_BULKHEAD_QUEUED, t, queue_len);  (any time)
 *   per attempt:
 *     sc_trace_attempt_start(tw, &rq, n, t, &out);  add out's headers
 *     sc_trace_attempt_event(&rq, SC_EV_PUSHBACK, t, ms);
 *     sc_span *s = sc_trace_attempt_end(tw, &rq, name, len, t);
 *     sc_span_int(s, SC_ATTR_HTTP_STATUS, 503); ...; sc_trace_commit(tw, s);
 *   sc_span *s = sc_trace_req_end(tw, &rq, name, len, end_ns);
 *   sc_span_cstr(s, ...); sc_span_set_status(s, ...); sc_trace_commit(tw, s);
 *
 * Between an *_end and its sc_trace_commit nothing else may reserve a span
 * on that worker (the record lives in the ring's next slot). An *_end
 * returns NULL when the request is not sampled or the ring is full (the
 * span is then counted as dropped); every span setter and sc_trace_commit
 * accept NULL. With tracing off, tw is NULL: rq.active stays false, no
 * header is written and the caller's trace headers pass through untouched.
 * A request that is traced but not sampled still gets new span IDs in the
 * headers it sends (with the sampled flag clear), so the next hop sees this
 * hop.
 */
#ifndef SC_TRACE_TRACE_H
#define SC_TRACE_TRACE_H

#include "trace/propagation.h"
#include "trace/sampler.h"
#include "trace/span.h"

/* The running form of tracing: (immutable, shared by all workers). */
typedef struct sc_trace_policy {
    unsigned formats_in;        /* SC_TRACE_FMT_* read */
    unsigned formats_out;       /* SC_TRACE_FMT_* written */
    sc_sampler sampler;
    const char *force_header;   /* lower case, NULL = none */
} sc_trace_policy;

/* One per worker thread (the tracer owns them: tracer.h). */
typedef struct sc_trace_worker {
    const sc_trace_policy *pol;
    sc_span_ring ring;
    sc_trace_rng rng;
    uint32_t wake_at;           /* committing the span that makes this many waiting calls wake */
    void (*wake)(void *arg);    /* thread-safe: tells the exporter a batch is ready */
    void *wake_arg;
} sc_trace_worker;

/* Sets up a worker's state: a ring of `queue_size` spans (rounded up to a
 * power of two), a seeded ID generator. 0 or -ENOMEM. */
int sc_trace_worker_init(sc_trace_worker *tw, const sc_trace_policy *pol, uint32_t queue_size);
void sc_trace_worker_free(sc_trace_worker *tw);

#define SC_TRACE_REQ_EVENTS 6
#define SC_TRACE_ATTEMPT_EVENTS 4

/* Per-request state, embedded in the request (no pointers out of it).
 * ctx comes last and its tracestate text last in it, so that a request
 * without a tracestate header can be given the shorter block of
 * sc_trace_req_size() (the text alone is over half of the struct). */
typedef struct sc_trace_req {
    uint8_t span_id[SC_SPAN_ID_LEN];         /* the request span */
    uint8_t attempt_span_id[SC_SPAN_ID_LEN]; /* the current attempt's span */
    bool active;                /* tracing is on for this request: trace headers are replaced */
    bool sampled;               /* spans are recorded */
    bool attempt_open;          /* started and not yet ended */
    uint8_t kind;               /* sc_span_kind of the request span */
    uint8_t sampled_by;         /* sc_sample_reason */
    uint8_t n_events, n_attempt_events, dropped_events, dropped_attempt_events;
    uint32_t attempt;           /* number of the last attempt started, 0 = none */
    uint64_t start_ns, attempt_start_ns;     /* CLOCK_MONOTONIC */
    sc_span_event events[SC_TRACE_REQ_EVENTS];
    sc_span_event attempt_events[SC_TRACE_ATTEMPT_EVENTS];
    sc_trace_ctx ctx;           /* the caller's context, or a new trace (ctx.valid false); keep last */
} sc_trace_req;

/* Bytes an sc_trace_req started from `in` needs: all of it when `in`
 * carries tracestate fields, else only up to the tracestate text's
 * terminator (tracestate_len stays 0 and only tracestate[0] is written). */
static inline size_t sc_trace_req_size(const sc_trace_in *in)
{
    if (in->n_tracestate || in->tracestate_bad)
        return sizeof(sc_trace_req);
    return offsetof(sc_trace_req, ctx) + offsetof(sc_trace_ctx, tracestate) + 1;
}

/*
 * The request's head is in: reads the caller's context from `in` (NULL = no
 * headers), or starts a new trace; decides sampling; gives the request span
 * its ID. kind: SC_SPAN_KIND_SERVER for inbound, SC_SPAN_KIND_CLIENT for
 * outbound. tw NULL: tracing off (rq->active false).
 */
void sc_trace_req_start(sc_trace_worker *tw, sc_trace_req *rq, const sc_trace_in *in, sc_span_kind kind,
                        uint64_t start_ns);
/* An event on the request span (bulkhead, breaker, backoff, budget). */
void sc_trace_req_event(sc_trace_req *rq, sc_span_event_kind e, uint64_t t_ns, int64_t value);

/*
 * Attempt `attempt` (from 1) starts now: a new span ID; `out` receives the
 * headers for this attempt's request (the formats of tracing.propagation.out;
 * out->n = 0 when the request is not traced). An attempt still open is
 * dropped (end it first to keep it).
 */
size_t sc_trace_attempt_start(sc_trace_worker *tw, sc_trace_req *rq, uint32_t attempt, uint64_t t_ns,
                              sc_trace_out *out);
/* An event on the current attempt's span (pushback, first byte). */
void sc_trace_attempt_event(sc_trace_req *rq, sc_span_event_kind e, uint64_t t_ns, int64_t value);
/*
 * The current attempt ended: its span, filled with IDs, times, events,
 * sidecar.attempt and http.request.resend_count, for the caller to add
 * the rest (server.address/port, status codes, sidecar.outcome, status) and
 * commit. NULL when not sampled, no attempt is open, or the ring is full.
 */
sc_span *sc_trace_attempt_end(sc_trace_worker *tw, sc_trace_req *rq, const char *name, size_t name_len,
                              uint64_t end_ns);
/*
 * The request ended (after its last attempt ended): its span, filled with
 * IDs, kind, times, events, sidecar.attempts and sidecar.sampled_by. NULL
 * as above. An attempt still open is dropped.
 */
sc_span *sc_trace_req_end(sc_trace_worker *tw, sc_trace_req *rq, const char *name, size_t name_len,
                          uint64_t end_ns);
/* Publishes a span returned by an *_end (NULL: nothing). */
void sc_trace_commit(sc_trace_worker *tw, sc_span *s);

/* The request's trace ID and span ID in hex, NUL terminated (access logs,
 * error answers). False, and empty strings, when the request is not traced. */
bool sc_trace_req_ids(const sc_trace_req *rq, char trace_hex[33], char span_hex[17]);

#endif

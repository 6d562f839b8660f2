/*
 * obs_access.h: the request path's glue to observability (obs/, trace/):
 * request IDs and trace context at the request head, trace headers and
 * spans per attempt, and one access log record (and failure ring entry)
 * per stream at its end (the observer sc_observer_access, obs_access.c).
 *
 * Private to sidecar/proxy/. Everything runs on the stream's worker; the
 * only memory taken is the stream's arena (the request ID when generated,
 * the caller's identity, and the trace state when tracing is on).
 */
#ifndef SC_PROXY_OBS_ACCESS_H
#define SC_PROXY_OBS_ACCESS_H

#include "proxy/stream.h"
#include "trace/span.h"

/* The request head is complete (or refused by its codec): the x-request-id
 * it goes on with (kept, or generated and the old fields removed), the
 * caller's identity, and, with tracing on, the caller's trace context (its
 * trace headers are removed: each attempt writes its own). Idempotent. */
void sc_obs_stream_head(sc_stream *s);
/* An attempt was given an instance and is about to be sent: its span
 * starts and its trace headers replace the previous attempt's. */
void sc_obs_attempt_start(sc_stream *s);
/* An event on the request span (attempt false) or the current attempt's. */
void sc_obs_trace_event(sc_stream *s, sc_span_event_kind e, int64_t value, bool attempt);

#endif

/*
 * tracer.h: the tracing runtime of the process: one span ring per worker
 * (trace.h), and on the control thread the exporter that drains them in
 * batches to an OTLP/HTTP JSON collector with libcurl (loaded at run time,
 * discovery/curl_api.h).
 *
 * Batching: a request carries at most tracing.batch_size spans; it goes
 * when that many wait (a worker whose ring reaches the size wakes the
 * control loop) or when tracing.batch_interval has passed. One request is
 * in flight at a time and keeps its connection alive. A collector that
 * answers 429, 502, 503 or 504, or cannot be reached, gets the same batch
 * again after Retry-After (at most 60 s) or a backoff, three tries in all;
 * other failures drop the batch. Meanwhile the rings fill, and a span that
 * finds its ring full is dropped and counted; workers never wait. A
 * partial success counts the spans the collector rejected as dropped.
 *
 * Metrics (admin /stats): sidecar_trace_spans_total,
 * sidecar_trace_spans_exported_total, sidecar_trace_spans_dropped_total
 * {reason="queue_full"|"export_failed"|"rejected"},
 * sidecar_trace_export_requests_total, sidecar_trace_export_errors_total,
 * sidecar_trace_queue_spans.
 *
 * Threads: sc_tracer_new and sc_tracer_start before the workers start;
 * sc_tracer_stop, sc_tracer_flush, the stats and sc_tracer_free on the
 * control thread; each sc_trace_worker on its worker only. Ownership: the
 * tracer owns the worker states; it keeps pointers into nothing of the
 * config after sc_tracer_new (it copies what it needs).
 */
#ifndef SC_TRACE_TRACER_H
#define SC_TRACE_TRACER_H

#include "config/config.h"
#include "trace/trace.h"

#include <stdio.h>

struct ev_loop;
typedef struct sc_tracer sc_tracer;

/*
 * Builds the tracer for cfg->tracing with a ring per worker. Returns 0 with
 * *out NULL when tracing is off, 0 with the tracer, or -ENOMEM (err says
 * so).
 */
int sc_tracer_new(const sc_config *cfg, unsigned n_workers, sc_tracer **out, char *err, size_t errlen);

/* Worker i's state for the request path; NULL when t is NULL (tracing off). */
sc_trace_worker *sc_tracer_worker(sc_tracer *t, unsigned i);

/* Control thread, before the workers start: loads libcurl and starts
 * exporting on `loop`. 0, or -ENOENT / -EIO with the reason in err; then
 * nothing is recorded (trace headers are still read and written). */
int sc_tracer_start(sc_tracer *t, struct ev_loop *loop, char *err, size_t errlen);

/* Control thread: stops the timers and the request in flight (its batch
 * stays for sc_tracer_flush). */
void sc_tracer_stop(sc_tracer *t);

/* Control thread, after the workers stopped (or with none running):
 * exports what waits, blocking, for at most budget_ms. What is left is
 * counted as export_failed. */
void sc_tracer_flush(sc_tracer *t, uint64_t budget_ms);

void sc_tracer_free(sc_tracer *t);

typedef struct sc_tracer_stats {
    uint64_t spans_recorded;        /* committed by the workers */
    uint64_t spans_exported;        /* accepted by the collector */
    uint64_t dropped_queue_full;    /* a worker's ring was full */
    uint64_t dropped_export;        /* their batch failed for good */
    uint64_t dropped_rejected;      /* the collector rejected them (partial success) */
    uint64_t export_requests;       /* requests sent (retries included) */
    uint64_t export_errors;         /* requests that failed */
    uint64_t queued;                /* waiting in the rings now */
    char last_error[256];           /* "" = none yet */
} sc_tracer_stats;

void sc_tracer_stats_get(sc_tracer *t, sc_tracer_stats *out);
/* The metrics above in Prometheus text (nothing when t is NULL). */
void sc_tracer_prom(sc_tracer *t, FILE *f);

#endif

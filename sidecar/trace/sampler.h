/*
 * sampler.h: which traces are recorded, and new trace and span IDs. Pure:
 * no I/O, no allocation; a sampler is immutable after init and may be read
 * from any thread; an ID generator belongs to one thread.
 *
 * The decision is parent-based: a caller's decision (W3C sampled flag, B3
 * sampling state or debug) is followed; without one (a new trace, or a B3
 * caller deferring) the trace ID decides against the ratio, the way
 * OpenTelemetry's TraceIdRatioBased sampler does: the last 8 bytes of the
 * trace ID, read big-endian and shifted right by one, sampled when below
 * ratio * 2^63. Every hop with the same ratio therefore makes the same
 * decision for the same trace. A configured force header (sc_trace_in's
 * `forced`) samples whatever the caller said.
 */
#ifndef SC_TRACE_SAMPLER_H
#define SC_TRACE_SAMPLER_H

#include "trace/propagation.h"

typedef struct sc_sampler {
    uint64_t bound;             /* sampled when (id >> 1) < bound; 2^63 = always */
} sc_sampler;

/* ratio in [0, 1]; values outside are clamped. */
void sc_sampler_init(sc_sampler *s, double ratio);

/* The ratio alone, on a trace ID. */
bool sc_sampler_ratio(const sc_sampler *s, const uint8_t trace_id[SC_TRACE_ID_LEN]);

/* Why a request was (not) sampled: for span attributes and tests. */
typedef enum {
    SC_SAMPLE_BY_RATIO = 0,     /* no decision from the caller: the ratio decided */
    SC_SAMPLE_BY_PARENT,        /* the caller's decision */
    SC_SAMPLE_BY_FORCE,         /* the force header */
} sc_sample_reason;

/* The decision for a request whose context is ctx (its trace_id set: the
 * caller's, or a new one when !ctx->valid). */
bool sc_sampler_decide(const sc_sampler *s, const sc_trace_ctx *ctx, bool forced, sc_sample_reason *why);

/* xoshiro256** seeded from getrandom(2): IDs are random (W3C asks trace
 * IDs to be), fast, and owned by one thread. */
typedef struct sc_trace_rng {
    uint64_t s[4];
} sc_trace_rng;

/* Seeds from the kernel's random source, or from the clock and pid when
 * that fails; never leaves the state all zero. */
void sc_trace_rng_init(sc_trace_rng *r);
/* Seeds from a number (tests: reproducible IDs). */
void sc_trace_rng_seed(sc_trace_rng *r, uint64_t seed);
uint64_t sc_trace_rng_next(sc_trace_rng *r);
/* A random non-zero trace ID / span ID. */
void sc_trace_new_trace_id(sc_trace_rng *r, uint8_t out[SC_TRACE_ID_LEN]);
void sc_trace_new_span_id(sc_trace_rng *r, uint8_t out[SC_SPAN_ID_LEN]);

#endif

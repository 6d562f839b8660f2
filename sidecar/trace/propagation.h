/*
 * propagation.h: reading and writing trace context headers. Pure: no I/O,
 * no allocation, no global state; every function may run on any thread.
 *
 * Formats:
 *  - W3C Trace Context: `traceparent` and `tracestate` (version 00 written;
 *    higher versions read as the specification says: their first four
 *    fields, nothing after them).
 *  - B3 single header: `b3: {TraceId}-{SpanId}[-{Sampled}[-{ParentSpanId}]]`
 *    or a lone sampling state (`b3: 0`, `1`, `d`).
 *  - B3 multi-header: `x-b3-traceid` (64 or 128 bits), `x-b3-spanid`,
 *    `x-b3-parentspanid`, `x-b3-sampled` (`1`/`0`, also `true`/`false`),
 *    `x-b3-flags` (`1`: debug).
 *
 * What is invalid is ignored as a whole: a traceparent that breaks any rule
 * yields no context (a new trace starts) and its tracestate is not read; a
 * tracestate that breaks any rule (key or value grammar, a key twice, more
 * than 32 members) is dropped entirely, the traceparent still counts. What
 * is forwarded is what this module wrote from a parsed context, never the
 * text a caller sent.
 *
 * Use: one sc_trace_in per request, fed every request header with
 * sc_trace_in_header() (it keeps pointers to the values, which must stay
 * valid until sc_trace_extract() returns), then sc_trace_extract() for the
 * caller's context; sc_trace_inject() writes the headers of an outgoing
 * request into an sc_trace_out the caller owns.
 */
#ifndef SC_TRACE_PROPAGATION_H
#define SC_TRACE_PROPAGATION_H

#include "core/common.h"

#define SC_TRACE_ID_LEN 16
#define SC_SPAN_ID_LEN 8
/* Longest tracestate kept and forwarded, in its normalised form (members
 * joined by ',' without optional whitespace): the specification's "at
 * least 512 characters". Longer ones are cut by whole members as it says:
 * members longer than 128 characters first, then from the end. */
#define SC_TRACESTATE_MAX 512
#define SC_TRACESTATE_MAX_MEMBERS 32
/* Longest raw tracestate text read (all its header fields together); more
 * than this is not a tracestate any vendor sends: dropped. */
#define SC_TRACESTATE_MAX_INPUT 8192
/* Most tracestate header fields one request may carry; more: dropped. */
#define SC_TRACESTATE_MAX_FIELDS 32

/* Header formats, as bits (tracing.propagation.in / .out). */
enum {
    SC_TRACE_FMT_W3C = 1u << 0,      /* traceparent + tracestate */
    SC_TRACE_FMT_B3 = 1u << 1,       /* b3 (single header) */
    SC_TRACE_FMT_B3MULTI = 1u << 2,  /* x-b3-* */
};

/* W3C trace-flags bit 0; the only flag this version defines. */
#define SC_TRACE_FLAG_SAMPLED 0x01u

/* Where a caller's sampling decision came from (sc_trace_ctx.decision). */
typedef enum {
    SC_TRACE_DECISION_NONE = 0,     /* none: the receiver decides (B3 "defer") */
    SC_TRACE_DECISION_SAMPLED,      /* the caller recorded: sample */
    SC_TRACE_DECISION_NOT_SAMPLED,  /* the caller did not record */
} sc_trace_decision;

/* A caller's trace context, or the one this hop started. */
typedef struct sc_trace_ctx {
    uint8_t trace_id[SC_TRACE_ID_LEN];
    uint8_t span_id[SC_SPAN_ID_LEN];    /* the caller's span: the parent of ours */
    bool valid;                         /* trace_id and span_id came from a valid header */
    bool debug;                         /* B3 debug (`d`, `x-b3-flags: 1`): sampled, and said so onward */
    uint8_t decision;                   /* sc_trace_decision */
    uint8_t format;                     /* SC_TRACE_FMT_* it was read from, 0 = none */
    uint16_t tracestate_len;            /* 0 = none */
    char tracestate[SC_TRACESTATE_MAX + 1]; /* normalised, NUL terminated */
} sc_trace_ctx;

/* A value as it appeared in a request (not owned). */
typedef struct sc_trace_val {
    const char *p;
    size_t len;
    uint8_t count;                      /* fields seen with this name (saturates at 255) */
} sc_trace_val;

/* The trace headers of one request, collected as they are parsed. */
typedef struct sc_trace_in {
    sc_trace_val traceparent;
    sc_trace_val tracestate[SC_TRACESTATE_MAX_FIELDS]; /* the fields in order */
    uint8_t n_tracestate;
    bool tracestate_bad;                /* more fields or bytes than read: dropped */
    size_t tracestate_total;            /* bytes of all tracestate fields */
    sc_trace_val b3;
    sc_trace_val b3_trace_id, b3_span_id, b3_parent_id, b3_sampled, b3_flags;
    const char *force_header;           /* lower case, NULL = none (tracing.force_header) */
    size_t force_header_len;
    bool forced;                        /* the force header was present with a value that asks */
} sc_trace_in;

/* Prepares `in` for a request. force_header (lower case, NULL = none) names
 * the header that forces sampling; it must outlive `in`. */
void sc_trace_in_init(sc_trace_in *in, const char *force_header);

/*
 * Offers one request header (name in lower case, as the codecs hand them
 * over; value without surrounding whitespace or with it: both are read).
 * Returns true when the name is a trace header of any format (traceparent,
 * tracestate, b3, x-b3-*): a sidecar that propagates replaces those, so the
 * caller drops them from the forwarded request. The force header is
 * recorded but returns false (it is the caller's to forward).
 */
bool sc_trace_in_header(sc_trace_in *in, const char *name, size_t name_len, const char *value,
                        size_t value_len);

/*
 * The caller's context from the headers of the enabled formats (bits of
 * SC_TRACE_FMT_*), tried in the order W3C, b3, x-b3-*: the first valid one
 * wins. out->valid is false when none is; then out->decision may still
 * carry a B3 sampling state sent without IDs, and the caller starts a new
 * trace. A traceparent or b3 header given more than once is invalid.
 */
void sc_trace_extract(const sc_trace_in *in, unsigned formats, sc_trace_ctx *out);

/* Each parser alone (tests, fuzzing); each clears *out first and returns
 * true when the input was valid. */
bool sc_trace_parse_traceparent(const char *s, size_t len, sc_trace_ctx *out);
/* Parses one tracestate list (several header fields joined by ',') into
 * out->tracestate (normalised and cut to SC_TRACESTATE_MAX); on false the
 * tracestate is empty. */
bool sc_trace_parse_tracestate(const char *s, size_t len, sc_trace_ctx *out);
bool sc_trace_parse_b3(const char *s, size_t len, sc_trace_ctx *out);
bool sc_trace_parse_b3multi(const sc_trace_in *in, sc_trace_ctx *out);

/* Headers for an outgoing request, values stored inside. */
#define SC_TRACE_OUT_MAX 8
typedef struct sc_trace_hdr {
    const char *name;                   /* lower case, static */
    size_t name_len;
    const char *value;                  /* into sc_trace_out.buf */
    size_t value_len;
} sc_trace_hdr;

typedef struct sc_trace_out {
    sc_trace_hdr h[SC_TRACE_OUT_MAX];
    size_t n;
    size_t used;
    char buf[SC_TRACESTATE_MAX + 256];
} sc_trace_out;

/*
 * Writes the headers of the formats in `formats` for a request whose span
 * (the parent of the next hop) is span_id, in trace ctx->trace_id, with
 * parent_id as that span's own parent (B3 carries it; NULL = none) and the
 * sampling decision `sampled`. ctx's tracestate goes with traceparent; its
 * debug flag with B3. Returns the number of headers (out->n).
 */
size_t sc_trace_inject(const sc_trace_ctx *ctx, const uint8_t span_id[SC_SPAN_ID_LEN],
                       const uint8_t *parent_id, bool sampled, unsigned formats, sc_trace_out *out);

/* Lower-case hex of n bytes into out (2n characters, no terminator). */
void sc_trace_hex(const uint8_t *b, size_t n, char *out);
/* True when all n bytes are zero (an invalid trace or span ID). */
bool sc_trace_id_is_zero(const uint8_t *b, size_t n);

#endif

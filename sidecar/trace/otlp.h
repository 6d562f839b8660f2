/*
 * otlp.h: span records as an OTLP/HTTP JSON request body (an
 * ExportTraceServiceRequest in the OpenTelemetry protocol's JSON encoding)
 * and the reading of its answer. Pure: no I/O; the body grows in memory the
 * caller owns (control thread).
 *
 * The encoding follows the protocol's rules for JSON: keys in lowerCamelCase,
 * trace and span IDs as lower-case hex (not base64), enum values (kind,
 * status code) as integers, 64-bit integers (times in Unix nanoseconds,
 * intValue) as decimal strings. Strings are valid UTF-8 whatever a caller
 * sent: bytes that are not are written as U+FFFD.
 *
 * Shape: {"resourceSpans":[{"resource":{"attributes":[...]},
 *          "scopeSpans":[{"scope":{"name":"sidecar","version":...},
 *                         "spans":[{...},...]}]}]}
 */
#ifndef SC_TRACE_OTLP_H
#define SC_TRACE_OTLP_H

#include "trace/span.h"

/* A growing byte buffer; `oom` sticks once an allocation failed. The body
 * is p[0..len); p[len] is a NUL after sc_otlp_end only. */
typedef struct sc_otlp_buf {
    char *p;
    size_t len, cap;
    bool oom;
    /* the leading digits (all but the last 8) of the last time written,
     * and their text: the next time has them mostly (otlp.c, dec_time) */
    uint8_t time_len;
    uint64_t time_hi;
    char time_text[16];
} sc_otlp_buf;

void sc_otlp_buf_reset(sc_otlp_buf *b);  /* len = 0, oom = false; keeps the memory */
void sc_otlp_buf_free(sc_otlp_buf *b);

/* The resource every span of this process belongs to (strings not owned). */
typedef struct sc_otlp_resource {
    const char *service_name;           /* service.name (required) */
    const char *service_instance_id;    /* service.instance.id (required) */
    const char *service_version;        /* service.version, NULL = left out */
    const char *sdk_version;            /* telemetry.sdk.version and the scope's version */
} sc_otlp_resource;

/*
 * A body is begin, then span per record, then end. offset_ns turns a
 * record's CLOCK_MONOTONIC times into Unix nanoseconds (realtime minus
 * monotonic, measured once per batch). Each returns 0 or -ENOMEM (the
 * buffer is then unusable until reset).
 */
int sc_otlp_begin(sc_otlp_buf *b, const sc_otlp_resource *res);
int sc_otlp_span(sc_otlp_buf *b, const sc_span *s, int64_t offset_ns, bool first);
int sc_otlp_end(sc_otlp_buf *b);

/* OTLP flags bits on a span: bits 0-7 the W3C trace flags, then whether
 * the parent's remoteness is known and whether it is remote. */
#define SC_OTLP_FLAG_HAS_IS_REMOTE 0x100u
#define SC_OTLP_FLAG_IS_REMOTE 0x200u

/*
 * Reads an ExportTraceServiceResponse (JSON): *rejected gets
 * partialSuccess.rejectedSpans (0 when absent), msg its errorMessage ("" when
 * absent). An empty body is a full success. Returns 0, or -EPROTO when the
 * body is not such a JSON object (then *rejected is 0).
 */
int sc_otlp_parse_response(const char *body, size_t len, uint64_t *rejected, char *msg, size_t msgcap);

#endif

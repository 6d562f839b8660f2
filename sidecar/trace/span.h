/*
 * span.h: one finished span as a fixed-size record, and the per-worker
 * ring that carries records from a worker to the control thread. Pure: no
 * I/O; the record is filled without allocation (strings are copied into
 * the record, cut to fit), so a worker never waits on anything.
 *
 * A record holds what OTLP's Span holds that the sidecar uses: IDs, name,
 * kind, start and end, typed attributes from a fixed set of keys, events
 * with timestamps and one value each, and a status with a message. What
 * does not fit (a 17th attribute, a 9th event, a string past the pool) is
 * dropped and counted in the record, and the export says so
 * (droppedAttributesCount, droppedEventsCount).
 *
 * Times are CLOCK_MONOTONIC nanoseconds (sc_now_ns()); the exporter turns
 * them into Unix time with one offset per batch, so spans of one process
 * keep their order and nesting.
 *
 * Every setter accepts a NULL span and does nothing: the request path
 * writes its fields without checking whether the trace is sampled or the
 * ring had room.
 */
#ifndef SC_TRACE_SPAN_H
#define SC_TRACE_SPAN_H

#include "trace/propagation.h"

#include <stdatomic.h>

/* OTLP's SpanKind and Status.StatusCode values (they go out as integers). */
typedef enum {
    SC_SPAN_KIND_INTERNAL = 1,
    SC_SPAN_KIND_SERVER = 2,
    SC_SPAN_KIND_CLIENT = 3,
} sc_span_kind;

typedef enum {
    SC_SPAN_STATUS_UNSET = 0,
    SC_SPAN_STATUS_OK = 1,
    SC_SPAN_STATUS_ERROR = 2,
} sc_span_status;

/* Attribute keys (OpenTelemetry semantic conventions where one exists,
 * `sidecar.*` for the sidecar's own). sc_span_attr_name() spells them. */
typedef enum {
    SC_ATTR_HTTP_METHOD = 0,      /* http.request.method (str) */
    SC_ATTR_URL_PATH,             /* url.path (str, cut at SC_SPAN_PATH_MAX) */
    SC_ATTR_HTTP_STATUS,          /* http.response.status_code (int) */
    SC_ATTR_RPC_SYSTEM,           /* rpc.system (str: "grpc") */
    SC_ATTR_RPC_SERVICE,          /* rpc.service (str) */
    SC_ATTR_RPC_METHOD,           /* rpc.method (str) */
    SC_ATTR_GRPC_STATUS,          /* rpc.grpc.status_code (int) */
    SC_ATTR_SERVER_ADDRESS,       /* server.address (str): the instance, or the app */
    SC_ATTR_SERVER_PORT,          /* server.port (int) */
    SC_ATTR_CLIENT_ADDRESS,       /* client.address (str): the caller's address */
    SC_ATTR_PROTOCOL_VERSION,     /* network.protocol.version (str: "1.1", "2") */
    SC_ATTR_RESEND_COUNT,         /* http.request.resend_count (int): attempt - 1, when > 0 */
    SC_ATTR_REQUEST_BODY_SIZE,    /* http.request.body.size (int) */
    SC_ATTR_RESPONSE_BODY_SIZE,   /* http.response.body.size (int) */
    SC_ATTR_ERROR_TYPE,           /* error.type (str): the reason, or the status code */
    SC_ATTR_UPSTREAM,             /* sidecar.upstream (str): the policy's name, or "inbound" */
    SC_ATTR_DIRECTION,            /* sidecar.direction (str: "inbound", "outbound") */
    SC_ATTR_ATTEMPT,              /* sidecar.attempt (int, from 1) */
    SC_ATTR_ATTEMPTS,             /* sidecar.attempts (int): attempts a request made */
    SC_ATTR_OUTCOME,              /* sidecar.outcome (str): an attempt's end, "ok", "retried", "failed" */
    SC_ATTR_REASON,               /* sidecar.reason (str): x-sidecar-reason when the sidecar answered */
    SC_ATTR_CALLER,               /* sidecar.caller (str): the caller's verified identity */
    SC_ATTR_REQUEST_ID,           /* sidecar.request_id (str) */
    SC_ATTR_SAMPLED_BY,           /* sidecar.sampled_by (str: "ratio", "parent", "force") */
    SC_ATTR__COUNT
} sc_span_attr_key;

/* Events (each carries its time and at most one integer value, named by
 * sc_span_event_value_name(); a negative value is left out). */
typedef enum {
    SC_EV_BULKHEAD_QUEUED = 0,    /* sidecar.bulkhead.queued: waited for a slot; value: queue length */
    SC_EV_BULKHEAD_ADMITTED,      /* sidecar.bulkhead.admitted: got a slot; value: wait ms */
    SC_EV_BREAKER_REJECTED,       /* sidecar.breaker.rejected: the breaker was open */
    SC_EV_BACKOFF,                /* sidecar.retry.backoff: waiting before the next attempt; value: ms */
    SC_EV_PUSHBACK,               /* sidecar.retry.pushback: the upstream asked to wait; value: ms (-1: no retry) */
    SC_EV_BUDGET_EXHAUSTED,       /* sidecar.retry.budget_exhausted: no retry, the budget was spent */
    SC_EV_FIRST_BYTE,             /* sidecar.response.first_byte: the response head arrived; value: status */
    SC_EV__COUNT
} sc_span_event_kind;

const char *sc_span_attr_name(sc_span_attr_key k);
const char *sc_span_event_name(sc_span_event_kind e);
/* The attribute name of an event's value ("sidecar.queue_length", ...), NULL = none. */
const char *sc_span_event_value_name(sc_span_event_kind e);

#define SC_SPAN_MAX_ATTRS 16
#define SC_SPAN_MAX_EVENTS 8
#define SC_SPAN_NAME_MAX 96       /* span name, cut beyond */
#define SC_SPAN_STATUS_MAX 127    /* status message, cut beyond */
#define SC_SPAN_POOL 416          /* bytes for all string attribute values */
#define SC_SPAN_PATH_MAX 256      /* url.path is cut to this (and marked with a trailing "...") */

enum { SC_ATTR_T_STR = 0, SC_ATTR_T_INT, SC_ATTR_T_BOOL };

typedef struct sc_span_attr {
    uint8_t key;                  /* sc_span_attr_key */
    uint8_t type;                 /* SC_ATTR_T_* */
    uint16_t len;                 /* string: bytes in the pool */
    uint16_t off;                 /* string: offset in the pool */
    int64_t i;                    /* int or bool */
} sc_span_attr;

typedef struct sc_span_event {
    uint64_t t_ns;                /* CLOCK_MONOTONIC */
    int64_t value;                /* < 0: none */
    uint8_t kind;                 /* sc_span_event_kind */
} sc_span_event;

typedef struct sc_span {
    uint8_t trace_id[SC_TRACE_ID_LEN];
    uint8_t span_id[SC_SPAN_ID_LEN];
    uint8_t parent_id[SC_SPAN_ID_LEN]; /* all zero: a root span */
    uint8_t kind;                 /* sc_span_kind */
    uint8_t status;               /* sc_span_status */
    uint8_t trace_flags;          /* W3C trace flags of the context (sampled) */
    bool parent_remote;           /* the parent is the caller's span (another process) */
    uint8_t n_attrs, n_events;
    uint32_t attr_set;          /* bit k: attribute k is among attrs (no search for a new one) */
    uint8_t dropped_attrs, dropped_events;
    uint16_t name_len, status_len, pool_used;
    uint64_t start_ns, end_ns;    /* CLOCK_MONOTONIC */
    sc_span_attr attrs[SC_SPAN_MAX_ATTRS];
    sc_span_event events[SC_SPAN_MAX_EVENTS];
    char name[SC_SPAN_NAME_MAX];
    char status_msg[SC_SPAN_STATUS_MAX + 1];
    char pool[SC_SPAN_POOL];
} sc_span;

/* Starts a record: IDs (parent NULL or zero = root), kind, name (cut to
 * SC_SPAN_NAME_MAX), start time; everything else empty, flags sampled. */
void sc_span_init(sc_span *s, const uint8_t trace_id[SC_TRACE_ID_LEN], const uint8_t span_id[SC_SPAN_ID_LEN],
                  const uint8_t *parent_id, sc_span_kind kind, const char *name, size_t name_len,
                  uint64_t start_ns);
/* Attributes; setting a key again replaces its value (keys are unique in
 * OTLP). */
void sc_span_str(sc_span *s, sc_span_attr_key k, const char *v, size_t len);
void sc_span_cstr(sc_span *s, sc_span_attr_key k, const char *v); /* NUL-terminated, NULL = nothing */
void sc_span_int(sc_span *s, sc_span_attr_key k, int64_t v);
void sc_span_bool(sc_span *s, sc_span_attr_key k, bool v);
void sc_span_event_add(sc_span *s, sc_span_event_kind e, uint64_t t_ns, int64_t value);
/* Status; msg (NULL = none) is kept only with SC_SPAN_STATUS_ERROR, as
 * OpenTelemetry says a description goes with an error only. */
void sc_span_set_status(sc_span *s, sc_span_status st, const char *msg);
void sc_span_end(sc_span *s, uint64_t end_ns);

/*
 * Single-producer single-consumer ring of span records: the producer is
 * one worker thread, the consumer the control thread. The producer
 * reserves the next free slot, fills it in place and commits it; with no
 * free slot the span is dropped and counted, the worker never waits. The
 * consumer reads committed slots in order and releases them.
 */
typedef struct sc_span_ring {
    _Alignas(64) _Atomic uint32_t head;    /* next slot the producer commits */
    _Alignas(64) _Atomic uint32_t tail;    /* next slot the consumer reads */
    _Alignas(64) _Atomic uint64_t dropped; /* reservations refused: the ring was full */
    _Atomic uint64_t committed;            /* spans committed */
    uint32_t mask;                         /* capacity - 1 */
    sc_span *slots;
} sc_span_ring;

/* capacity is rounded up to a power of two (at least 2). Returns 0 or -ENOMEM.
 * The slots are allocated (zeroed pages: memory is used as slots are). */
int sc_span_ring_init(sc_span_ring *r, uint32_t capacity);
void sc_span_ring_free(sc_span_ring *r);
uint32_t sc_span_ring_capacity(const sc_span_ring *r);

/* Producer. reserve: the slot to fill, or NULL when full (counted as
 * dropped). Reserving again before committing returns the same slot. */
sc_span *sc_span_ring_reserve(sc_span_ring *r);
/* Publishes the reserved slot; returns the number of spans now waiting. */
uint32_t sc_span_ring_commit(sc_span_ring *r);

/* Asks the CPU for s's memory ahead of use (write: about to be filled). */
void sc_span_prefetch(const sc_span *s, bool write);

/* Consumer. */
uint32_t sc_span_ring_pending(sc_span_ring *r);
/* The i-th waiting span (i < pending). */
const sc_span *sc_span_ring_peek(sc_span_ring *r, uint32_t i);
/* Frees the first n waiting slots for the producer. */
void sc_span_ring_release(sc_span_ring *r, uint32_t n);

#endif

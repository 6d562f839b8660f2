/*
 * access_log.h: one JSON line per request or gRPC call, written by a
 * thread of its own so that a worker never waits for the log.
 *
 * Shape:
 *   - the request path fills an sc_access_record (pointers to what the
 *     stream already holds, no allocation, no copies) when the exchange
 *     ends, and calls sc_access_log_emit() on its worker's producer;
 *   - emit decides first whether the line is wanted (access_log.select:
 *     all, errors, slow, sample; a few compares and at most a hash of the
 *     request ID), then formats it on the worker's stack (no malloc, no
 *     printf) and copies it into the worker's ring;
 *   - each worker has its own ring (single producer, single consumer, lock
 *     free); a full ring drops the line and counts it
 *     (sidecar_access_log_dropped_total): the worker never blocks;
 *   - one writer thread drains every ring into the destination (stdout,
 *     stderr or a file, whole lines, writev straight from the rings), every
 *     access_log.flush_interval or sooner when a ring is half full (an
 *     eventfd kick), and reopens the file when told (SIGHUP, logrotate).
 *
 * The fields of a line, their order and meaning are in
 * docs/observability.md; sc_access_format() is their one writer.
 *
 * Files: access_line.c holds the pure half (selection, the line, the
 * record's time; in the scpure library), access_log.c the rings and the
 * writer thread.
 *
 * Threads: sc_access_log_new/start/stop/free from the control thread; the
 * producer of worker i only from worker i; sc_access_log_reopen and the
 * stats from any thread.
 *
 * Memory: the log owns its rings, its copy of the path and the file it
 * opened; a record owns nothing (its strings only need to live for the
 * emit call).
 */
#ifndef SC_OBS_ACCESS_LOG_H
#define SC_OBS_ACCESS_LOG_H

#include "config/config.h"
#include "core/common.h"
#include "http/grpc.h"

#include <stdio.h>
#include <sys/socket.h>

/* A borrowed string with its length; {NULL, 0} = absent (JSON null). */
typedef struct sc_obs_str {
    const char *p;
    size_t len;
} sc_obs_str;

static inline sc_obs_str sc_obs_cstr(const char *s)
{
    return (sc_obs_str){s, s ? strlen(s) : 0};
}

typedef enum { SC_OBS_INBOUND = 0, SC_OBS_OUTBOUND = 1 } sc_obs_direction;
/* The protocol on one side, as spoken on the wire. */
typedef enum { SC_OBS_PROTO_NONE = 0, SC_OBS_PROTO_HTTP1, SC_OBS_PROTO_HTTP2 } sc_obs_proto;

/*
 * What happened to one request, as the access log and the failure ring
 * record it. Every string is borrowed for the duration of the call it is
 * passed to; absent ones are {NULL, 0}.
 */
typedef struct sc_access_record {
    uint64_t start_mono_ns;         /* sc_now_ns() when the request head was complete */
    uint64_t start_unix_ns;         /* the same instant on the wall clock; 0: derived from
                                     * start_mono_ns when the line is written */
    uint64_t duration_ns;           /* request head to the end of the exchange */
    int64_t upstream_ns;            /* first request byte to an instance to the end of its
                                     * response (all attempts); -1: never went upstream */
    sc_obs_str upstream;            /* the route: upstream name, or "inbound" */
    sc_obs_str method, path, authority;
    int status;                     /* HTTP status the caller got; 0: none (reset, gone) */
    int grpc_status;                /* grpc-status the caller got; -1: none / not gRPC */
    const char *reason;             /* x-sidecar-reason when the sidecar answered itself, else NULL */
    uint32_t attempts;              /* attempts sent upstream; 0: never sent */
    sc_obs_str instance;            /* "10.0.0.7:15443" of the last attempt ... */
    const struct sockaddr *instance_addr; /* ... or its address, formatted when instance is absent */
    uint64_t bytes_in;              /* request body bytes from the caller */
    uint64_t bytes_out;             /* response body bytes to the caller */
    sc_obs_str caller;              /* the caller's verified identity (TLS URI SAN) */
    sc_obs_str request_id;          /* x-request-id as forwarded */
    sc_obs_str trace_id, span_id;   /* hex, as the tracing module gives them */
    uint8_t direction;              /* sc_obs_direction */
    uint8_t down_proto, up_proto;   /* sc_obs_proto: caller side, upstream side */
    bool down_tls, up_tls;
    bool grpc;                      /* a gRPC call (content-type application/grpc...) */
} sc_access_record;

/*
 * Whether a request failed, for `select: errors` and the failure ring: the
 * sidecar answered itself (reason set), no response reached the caller
 * (status 0), an HTTP status of 500 or above, or a gRPC status that says
 * the server side failed: UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED,
 * UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS. Client errors (4xx,
 * NOT_FOUND, INVALID_ARGUMENT, ...) that the application returned are not
 * failures of the path through the sidecar.
 */
static inline bool sc_access_is_error(const sc_access_record *r)
{
    if (r->reason || r->status == 0 || r->status >= 500)
        return true;
    if (r->grpc_status <= 0 || r->grpc_status > SC_GRPC_STATUS_MAX)
        return false;
    const uint32_t server_side = 1u << SC_GRPC_UNKNOWN | 1u << SC_GRPC_DEADLINE_EXCEEDED |
                                 1u << SC_GRPC_RESOURCE_EXHAUSTED | 1u << SC_GRPC_UNIMPLEMENTED |
                                 1u << SC_GRPC_INTERNAL | 1u << SC_GRPC_UNAVAILABLE | 1u << SC_GRPC_DATA_LOSS;
    return (server_side >> r->grpc_status) & 1u;
}

/* ---- selection (decided before formatting) ---- */

typedef struct sc_access_select {
    uint32_t bits;                  /* SC_ACCESS_SELECT_* */
    uint64_t slow_ns;               /* SLOW: duration above this */
    uint64_t sample_below;          /* SAMPLE: key < sample_below (ratio * 2^64) ... */
    bool sample_all;                /* ... or every request (ratio 1) */
} sc_access_select;

void sc_access_select_init(sc_access_select *s, const sc_access_log_config *c);
/*
 * Whether the record is to be written. SAMPLE is keyed on a hash of the
 * request ID when there is one, so every sidecar a request passes with the
 * same ratio makes the same choice (the whole path of a sampled request is
 * logged, or none of it); otherwise on *rng (xorshift64*, never 0).
 */
bool sc_access_select_match(const sc_access_select *s, const sc_access_record *r, uint64_t *rng);
/* The 64-bit sampling key of a request ID (exposed for tests). */
uint64_t sc_access_sample_key(const char *id, size_t len);

/* ---- formatting ---- */

/* Bound of one line, '\n' included: every field has a budget (path 2 KiB,
 * caller identity 1 KiB, the others 256 bytes or less) whose sum is below
 * this, so a line is never cut as a whole; a field over its budget ends in
 * "..." and the line gets "truncated":true. */
#define SC_ACCESS_LINE_MAX 8192

/* "1.2.3.4:80" / "[::1]:80" into out (at least 80 bytes, no terminator
 * needed by callers: the length is returned); 0 when not an IP address. */
size_t sc_obs_sockaddr_text(const struct sockaddr *sa, char *out);

/* The record's start on the wall clock in ns since the epoch:
 * start_unix_ns, or start_mono_ns moved to the wall clock now. */
uint64_t sc_access_wall_ns(const sc_access_record *r);

/* Writes the JSON line of r (ending in '\n') into buf; returns its length,
 * or 0 when cap < SC_ACCESS_LINE_MAX. No allocation, no printf. */
size_t sc_access_format(const sc_access_record *r, char *buf, size_t cap);

/* ---- the log: rings and the writer thread ---- */

typedef struct sc_access_log sc_access_log;
typedef struct sc_access_producer sc_access_producer;

/* Opens the destination now (a file: created with mode 0640, appended to)
 * and allocates one ring per producer (worker). Returns 0, or a negative
 * errno with a sentence in err. */
int sc_access_log_new(const sc_access_log_config *cfg, unsigned n_producers, sc_access_log **out, char *err,
                      size_t errlen);
/* The same writing to fd, which the log takes and closes (tests, benchmarks;
 * never reopened). */
int sc_access_log_new_fd(const sc_access_log_config *cfg, unsigned n_producers, int fd, sc_access_log **out);
/* Starts the writer thread (all signals blocked in it). 0 or -errno. */
int sc_access_log_start(sc_access_log *log);
/* Asks the writer to reopen a file destination (SIGHUP after logrotate
 * moved it): lines already queued go to the old file, later ones to the
 * new. If the open fails the old file stays in use and a WARN says why.
 * No-op for stdout and stderr. Any thread. */
void sc_access_log_reopen(sc_access_log *log);
/* Writes every queued line and ends the writer. Producers must be quiet
 * (workers joined). A destination that accepts nothing for the stop grace
 * (5 s) is given up: the writer is cancelled and a WARN says how many bytes
 * were lost. */
void sc_access_log_stop(sc_access_log *log);
/* Stops when needed, then frees everything. NULL is a no-op. */
void sc_access_log_free(sc_access_log *log);

/* Producer i (0 <= i < n_producers), for worker i alone; NULL when log is
 * NULL (access log off) or i is out of range. */
sc_access_producer *sc_access_log_producer(sc_access_log *log, unsigned i);
/*
 * The per-request call: selects, formats and enqueues. Returns 1 when
 * queued, 0 when not selected (or p is NULL: the log is off), -ENOBUFS
 * when the ring was full (counted as dropped). Never blocks, never
 * allocates.
 */
int sc_access_log_emit(sc_access_producer *p, const sc_access_record *r);
/* Enqueues one formatted line (whole, '\n' included); 1 or -ENOBUFS. */
int sc_access_producer_put(sc_access_producer *p, const char *line, size_t len);

typedef struct sc_access_log_stats {
    uint64_t lines;                 /* queued for writing */
    uint64_t dropped;               /* selected but lost: ring full (or a line that could not be formatted) */
    uint64_t bytes_written;
    uint64_t write_errors;          /* failed writes (their bytes are lost) */
    uint64_t reopens;               /* successful reopens of the file */
    uint64_t wakeups;               /* times the writer woke (timer or kick) */
} sc_access_log_stats;
void sc_access_log_get_stats(const sc_access_log *log, sc_access_log_stats *st);
/* The sidecar_access_log_* families for /stats; zeros when log is NULL
 * (access log off), so alert rules always find the series. */
void sc_access_log_render_stats(const sc_access_log *log, FILE *f);

/* Tests: wakes the writer and waits until every ring is empty (or
 * timeout_ms passed: -ETIMEDOUT). */
int sc_access_log_wait_drained(sc_access_log *log, unsigned timeout_ms);
/* Tests: how long sc_access_log_stop waits for a stuck destination. */
void sc_access_log_set_stop_grace(sc_access_log *log, unsigned ms);

#endif

/*
 * stream.h: one request/response exchange (sc_stream) and its way through
 * the sidecar. Private to sidecar/proxy/ and the admission stages.
 *
 * A stream owns two pipes: the request body flowing down->up and the
 * response body flowing up->down. Each pipe is bounded
 * (limits.stream_buffer): a producer stops reading its socket (HTTP/1) or
 * withholds WINDOW_UPDATE (HTTP/2) while the pipe is full, so a slow reader
 * slows its writer instead of growing memory.
 *
 * One request, from accept to response (README "Architecture"):
 *   the downstream codec (codec.h) decodes the head into s->req and calls
 *   sc_stream_start -> admission stages of the route (stage.h, admit.c) ->
 *   attempt (attempt.c: instance choice, upstream codec attach, retries) ->
 *   the upstream codec fills s->resp / s->respp and calls
 *   sc_stream_resp_progress -> the downstream codec writes the response ->
 *   both sides done: observers' on_complete, stats, the stream is freed.
 *   Failures anywhere go through sc_stream_upstream_failed and the failure
 *   table (fail.h).
 *
 * Memory: streams come from a per-worker free list; header strings live in
 * the stream's arena and are released with the stream; pipe blocks come
 * from the worker's block pool.
 */
#ifndef SC_STREAM_H
#define SC_STREAM_H

#include "proxy/proxy.h"

/* ---- arena: bump allocator released with its stream ---- */
typedef struct sc_arena_chunk {
    struct sc_arena_chunk *next;
    size_t used, cap;
    char data[];
} sc_arena_chunk;

typedef struct sc_arena {
    sc_arena_chunk *head;    /* extra chunks, malloc'ed, freed at reset */
    char *inl;               /* the stream's inline block */
    size_t inl_used, inl_cap;
} sc_arena;

void *sc_arena_alloc(sc_arena *a, size_t n);
char *sc_arena_dup(sc_arena *a, const char *s, size_t n); /* NUL terminated copy */
void sc_arena_reset(sc_arena *a);

/* ---- pipes and messages ---- */
typedef struct sc_pipe {
    sc_buf buf;                     /* bounded body bytes */
    uint64_t total;                 /* bytes that entered the pipe */
    nghttp2_nv *trailers;           /* in the stream arena */
    size_t n_trailers, cap_trailers;
    bool eof;                       /* producer finished (after buf drains, the end) */
} sc_pipe;

/* A request field whose value is new on every request (x-request-id, the
 * trace headers; up_h2.c adds grpc-timeout itself), marked in nghttp2_nv's
 * flags with a bit nghttp2 does not use. An HTTP/2 upstream connection sends
 * such a field as a literal without a table entry, except on the requests
 * where it renews the name's entry (up_h2.c): an entry would hold a value
 * never seen again and push out the fields that repeat. Not the same as
 * NGHTTP2_NV_FLAG_NO_INDEX, which a caller's never-indexed field carries to
 * the upstream as it came (RFC 7541 7.1.3: never indexed by anyone). */
#define SC_NV_F_UNIQUE 0x80

typedef struct sc_msg {
    /* request: method/scheme/authority/path; response: status */
    const char *method, *scheme, *authority, *path;
    size_t method_len, authority_len, path_len;
    int status;
    nghttp2_nv *hdrs;               /* regular headers (lower-case names), arena */
    size_t n_hdrs, cap_hdrs;
    int64_t content_length;         /* -1 unknown */
    bool is_grpc;
    bool head_done;
} sc_msg;

/*
 * Where a stream is on its way (s->phase). The upstream side's state
 * machine: the downstream side has flags of its own (SC_ST_F_DOWN_*), since
 * the caller's codec may still write a response long after the upstream side
 * is done. Legal moves (checked in debug builds, sc_stream_set_phase):
 *
 *   NEW -> ADMISSION -> [PARKED -> ADMISSION] -> CONNECTING -> IN_FLIGHT
 *       -> RESPONDING -> DONE
 *
 * with BACKOFF between attempts (from any attempt phase, ADMISSION included
 * when the first attempt fails at once, as long as no response byte went
 * out; back to CONNECTING / IN_FLIGHT), an attempt on a pooled connection
 * going straight to IN_FLIGHT, a re-sent HTTP/2 stream going back from
 * IN_FLIGHT to CONNECTING, and DONE reachable from every phase (answered
 * locally, failed for good, caller gone). The table is phase_next in
 * stream.c.
 * The stream's wait_timer runs only in PARKED (the parking stage's timeout,
 * stage.h) and BACKOFF (the next attempt): the phase says what it means.
 */
typedef enum {
    SC_PHASE_NEW = 0,               /* the downstream codec is decoding the request head */
    SC_PHASE_ADMISSION,             /* running the route's admission stages (stage.h) */
    SC_PHASE_PARKED,                /* a stage holds it (Consul's answer, bulkhead queue); wait_timer: its timeout */
    SC_PHASE_BACKOFF,               /* between attempts; wait_timer: start the next one */
    SC_PHASE_CONNECTING,            /* the attempt waits for its upstream connection to open */
    SC_PHASE_IN_FLIGHT,             /* the request is on an open upstream connection, no response head yet */
    SC_PHASE_RESPONDING,            /* the response head went to the downstream codec; the body follows */
    SC_PHASE_DONE,                  /* the upstream side is finished: complete, failed for good, or cancelled */
    SC_PHASE_COUNT
} sc_phase;

const char *sc_phase_name(sc_phase p);

enum {
    SC_ST_F_DOWN_HEAD_SENT = 1u << 0,   /* response head reached the downstream codec */
    SC_ST_F_DOWN_DONE = 1u << 1,        /* downstream side finished (or gone) */
    SC_ST_F_HEAD_REQ = 1u << 3,         /* request method is HEAD */
    SC_ST_F_FAILED = 1u << 4,           /* sc_stream_upstream_failed ran (s->fail says why) */
    SC_ST_F_UP_STARTED = 1u << 5,       /* counted as a request (started, or refused by its codec) */
    SC_ST_F_DEFERRED_DOWN = 1u << 6,    /* down h2 data provider is deferred */
    SC_ST_F_DEFERRED_UP = 1u << 7,      /* up h2 data provider is deferred */
    SC_ST_F_REQ_SENT = 1u << 8,         /* whole request written upstream */
    SC_ST_F_DOWN_RESP_END = 1u << 9,    /* HTTP/2 downstream: END_STREAM of the response sent */
    SC_ST_F_SETTLED = 1u << 10,         /* the admission stages heard how the upstream side ended */
    SC_ST_F_HEAD_OBSERVED = 1u << 11,   /* observers saw the response head */
    SC_ST_F_ABANDONED = 1u << 12,       /* the caller went away before the upstream side finished */
};

struct sc_stream {
    sc_worker *w;
    sc_route *route;
    uint32_t flags;
    uint8_t phase;                  /* sc_phase: set with sc_stream_set_phase */
    uint8_t stage_pos;              /* admission stages passed; while PARKED, the parking stage's index */
    const struct sc_pipeline *pipe; /* the route's stages and observers it was admitted through (stage.h) */
    /* downstream side */
    sc_conn *down;
    const struct sc_down_codec *dc; /* its codec (codec.h) */
    int32_t down_sid;               /* HTTP/2 stream id, 0 for HTTP/1 */
    /* upstream side */
    sc_conn *up;
    int32_t up_sid;
    sc_link up_link;                /* pending on a connecting upstream conn */
    struct sockaddr_storage up_addr; /* the current (or last) attempt's instance */
    socklen_t up_addr_len;
    /* messages */
    sc_msg req, resp;
    sc_pipe reqp, respp;
    sc_arena arena;
    /* deadline and timings (sc_now_ns values) */
    ev_timer timer;                 /* the request deadline, when not in the route's queue */
    sc_dq_entry dl;                 /* the request deadline in the route's queue (deadline.h) */
    uint64_t start_ns;              /* the stream began (its request head arriving) */
    uint64_t deadline_ns;           /* 0 = none */
    /* taken only when the route's observers use them (SC_PIPE_TIMINGS, stage.h): */
    uint64_t up_start_ns;           /* the first attempt began (0: none yet) */
    uint64_t try_start_ns;          /* the current attempt began */
    uint64_t first_byte_ns;         /* this attempt's response head arrived (0: not yet) */
    sc_fail fail;
    const char *fail_msg;           /* the sidecar's answer, when it says more than the failure table (arena) */
    nghttp2_nv *fail_hdrs;          /* header fields the answer adds (sc_stream_fail_header; arena) */
    uint8_t n_fail_hdrs;
    int grpc_status;                /* seen in trailers, -1 none */
    /* per-stream state for HTTP/1 sides */
    sc_h1_body h1_body;             /* body decoder of whichever side is HTTP/1 */
    sc_h1_body h1_up_body;
    char *h1_trailer_buf;           /* chunked request trailers (HTTP/1 caller) */
    char *h1_up_trailer_buf;        /* chunked response trailers (HTTP/1 upstream) */
    uint64_t req_sent;              /* request body bytes handed to the upstream */
    /* HTTP/2 DATA received but not yet acknowledged with WINDOW_UPDATE; given
     * back to the connection when the stream closes, or the connection-level
     * window would shrink with every stream closed before it was drained. */
    uint32_t up_unconsumed, down_unconsumed;
    sc_buf replay;                  /* copy of the request body sent so far, for retries */
    bool replayable;                /* every byte sent is in `replay` (within retries.buffer_limit) */
    /* resilience */
    uint32_t attempt;               /* 1-based attempt in flight (or waiting for) */
    ev_timer try_timer;             /* per_try timeout of the current attempt, when not queued */
    sc_dq_entry try_dl;             /* ... in the route's queue (deadline.h) */
    ev_timer wait_timer;            /* what it bounds depends on the phase (see sc_phase) */
    sc_instance_state *inst;        /* instance of the current attempt (may be NULL) */
    sc_link park_link;              /* on the parking stage's list while PARKED */
    uint64_t stage_word[8];         /* each admission stage's own state (stage.h: SC_PIPELINE_MAX) */
    bool head_checked;              /* this attempt's response head was judged for retry */
    bool down_chunked;              /* HTTP/1 downstream response framing */
    bool up_chunked;                /* HTTP/1 upstream request framing */
    bool down_keepalive;
    bool up_keepalive;
    bool down_te_trailers;
    bool up_head_sent;
    sc_link wlink;                  /* worker->streams (drain, stats) */
    /* HTTP/2 header blocks as they arrive (down_h2.c: the caller's; up_h2.c:
     * the upstream's), counted as HPACK counts a header list (name + value +
     * 32 per field) against limits.max_header_bytes: nghttp2 does not enforce
     * the SETTINGS_MAX_HEADER_LIST_SIZE it advertises, and HPACK lets a few
     * bytes on the wire name a large field many times. */
    uint32_t down_hdr_bytes;        /* the request head, then each trailer block on its own */
    uint32_t up_hdr_bytes;          /* informational and final response heads together, then trailers */
    uint8_t down_hdr_verdict;       /* down_h2.c: what the request head has earned so far */
    uint8_t n_informational;        /* 1xx responses in this attempt (up_h2.c bounds them) */
    uint8_t refused_resends;        /* re-sends of this attempt after REFUSED_STREAM (up_h2.c bounds them) */
    uint32_t refused_attempt;       /* the attempt refused_resends counts for */
    int up_send_error;              /* nghttp2 could not send this attempt's request head (its error), 0 none */
    /* observability (obs_access.c), set at the request head */
    const char *request_id;         /* x-request-id as forwarded (arena), NULL: not set yet */
    uint8_t request_id_len;
    bool down_tls;                  /* the caller's side was TLS */
    uint16_t trace_hdr_base;        /* s->req.hdrs index where the attempt's trace headers begin */
    uint32_t attempts_sent;         /* attempts an instance was picked for */
    const char *caller_id;          /* the caller's verified identity (arena), NULL: none */
    struct sc_trace_req *trace;     /* arena; only when tracing is on (NULL: pays nothing) */
    uint64_t up_end_ns;             /* the last attempt ended */
    _Alignas(8) char inline_arena[2048]; /* sc_arena hands out 8-byte aligned blocks from here */
};

/* ---- lifecycle (stream.c) ---- */

/* Moves the stream to phase p; in debug builds an illegal move aborts, and
 * every move is logged at debug level with both names. */
#ifdef NDEBUG
static inline void sc_stream_set_phase(sc_stream *s, sc_phase p) { s->phase = (uint8_t)p; }
#else
void sc_stream_set_phase(sc_stream *s, sc_phase p);
#endif
/* The upstream side is finished (nothing more is sent or expected). */
static inline bool sc_stream_up_done(const sc_stream *s) { return s->phase == SC_PHASE_DONE; }
/* The caller of a stream (NULL once its connection is gone). */
static inline sc_caller *sc_stream_caller(const sc_stream *s) { return s->down ? s->down->caller : NULL; }

/* A new stream on a caller's connection (HTTP/2: its stream id). NULL: no memory. */
sc_stream *sc_stream_new(sc_worker *w, sc_route *route, sc_conn *down, int32_t down_sid);
/* The downstream codec finished the request head: deadline, admission
 * stages, first attempt. Counts the request. */
void sc_stream_start(sc_stream *s);
/* Sets up a route's queues of request and per-try deadlines on a worker's loop. */
void sc_stream_deadlines_init(sc_route_state *rs, struct ev_loop *loop);
/* The current attempt's per-try deadline, per_try_ms from now; stopped
 * when the attempt ends (sc_stream_try_deadline_stop). */
void sc_stream_try_deadline_start(sc_stream *s, uint64_t per_try_ms);
void sc_stream_try_deadline_stop(sc_stream *s);
/* The downstream codec refuses a request it has decoded (malformed, too
 * large, not supported) before it goes anywhere: counted as a request and
 * answered locally in the caller's protocol (status and x-sidecar-reason from `why`). */
void sc_stream_refuse(sc_stream *s, sc_fail why);

/* From the downstream codec. */
/* Request body bytes arrived (pipe updated) or ended: wake the upstream side. */
void sc_stream_req_progress(sc_stream *s);
/* The downstream consumed n response bytes from the pipe: reopen the upstream
 * flow (the upstream codec's consumed()). */
void sc_stream_resp_drained(sc_stream *s, size_t n);
/* Downstream side is gone (RST, close) or finished sending the response. */
void sc_stream_downstream_done(sc_stream *s, bool aborted);

/* From the upstream codec. */
/* The codec bound the current attempt to s->up: CONNECTING or IN_FLIGHT, by
 * the connection's state. */
void sc_stream_bound(sc_stream *s);
/* s->up finished connecting (TCP and TLS): CONNECTING -> IN_FLIGHT. */
void sc_stream_connected(sc_stream *s);
/* The upstream consumed n request bytes: reopen the downstream flow. */
void sc_stream_req_drained(sc_stream *s, size_t n);
/* Upstream codecs take request body bytes with this after copying the first
 * n bytes of s->reqp.buf: keeps the replay copy, consumes, reopens the flow. */
void sc_stream_req_consume(sc_stream *s, size_t n);
/* Response head / body / end arrived from upstream: judge the head for a
 * retry (once per attempt), then wake the downstream side. */
void sc_stream_resp_progress(sc_stream *s);
/* Informational (1xx) response from upstream, to forward downstream. */
void sc_stream_resp_informational(sc_stream *s, int status, const nghttp2_nv *nv, size_t n);
/* Upstream side failed before or during the response (anything that ends
 * an attempt or the exchange: codecs, timers, admission stages). Retries
 * when the policy allows, else answers the caller (fail.h). */
void sc_stream_upstream_failed(sc_stream *s, sc_fail why);
/* Upstream side finished cleanly (response complete). */
void sc_stream_upstream_done(sc_stream *s);

/* The time a stream's deadline leaves for an upstream grpc-timeout; 0 = none. */
uint64_t sc_stream_remaining_ns(const sc_stream *s);
/* The policy's whole request timeout for this stream (timeouts.request of
 * the route version it runs under); 0 = none. */
uint64_t sc_stream_policy_timeout_ns(const sc_stream *s);

/* Header helpers (arena copies; names lower-cased). */
int sc_msg_add(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen);
/* Appends a header whose name is a lower-case string that outlives the
 * stream (a literal: not copied) and returns room for its vlen-byte value
 * (NUL terminated by the caller's choice) in the arena, for the caller to
 * write in place; NULL when out of memory. */
char *sc_msg_add_in_place(sc_stream *s, sc_msg *m, const char *static_name, size_t nlen, size_t vlen);
/* Appends a header by reference, nothing copied: the caller guarantees a
 * lower-case name and that both bytes outlive the stream (configuration,
 * or data the stream holds a reference on until it ends). -ENOMEM when the
 * header array cannot grow. */
int sc_msg_add_ref(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen);
const nghttp2_nv *sc_msg_find(const sc_msg *m, const char *name);
/* Appends body bytes to a pipe; -ENOBUFS when they do not fit (for HTTP/2
 * that means the peer sent more than the window it was granted). */
int sc_pipe_put(sc_stream *s, sc_pipe *p, const void *data, size_t len);
int sc_pipe_add_trailer(sc_stream *s, sc_pipe *p, const char *name, size_t nlen, const char *value, size_t vlen);
/* The same for a field nghttp2 received: its name is lower-case already
 * (nghttp2 refuses upper-case ones), so not lower-cased again, and rx_flags
 * are the flags nghttp2 gave it: a field the peer sent never-indexed
 * (NGHTTP2_NV_FLAG_NO_INDEX) is sent on never-indexed (RFC 7541 7.1.3). */
int sc_msg_add_lower(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen,
                     uint8_t rx_flags);
int sc_pipe_add_trailer_lower(sc_stream *s, sc_pipe *p, const char *name, size_t nlen, const char *value,
                              size_t vlen, uint8_t rx_flags);

/* ---- attempts (attempt.c) ---- */

/* The first attempt, once admitted (admit.c), and each retry after its
 * backoff: picks an instance, arms the per-try timer, attaches the
 * upstream codec. */
void sc_attempt_begin(sc_stream *s);
/* The attempt failed with condition bits `cond` (SC_COND_*), or its response
 * head says http / grpc: true when a retry is scheduled (phase BACKOFF; the
 * request is rewound and the response forgotten). */
bool sc_attempt_retry(sc_stream *s, uint32_t cond, int http, int grpc);
/* Judges this attempt's response head (once): true when it was swallowed
 * for a retry. */
bool sc_attempt_judge_head(sc_stream *s);
/* The current attempt is over: its instance's in-flight count, observers'
 * on_attempt_end (cancelled: the caller went away). No-op without one. */
void sc_attempt_end(sc_stream *s, bool cancelled);
/* Detaches the current attempt from its connection (the codec's cancel). */
void sc_attempt_detach(sc_stream *s);

#endif

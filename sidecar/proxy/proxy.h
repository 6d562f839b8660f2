/*
 * proxy.h: the data plane's internal types: workers, routes, connections and
 * streams. Not an API for other layers (they use sidecar.h).
 *
 * Shape (see DESIGN.md "Data flow"): a worker thread owns a libev loop, one
 * SO_REUSEPORT socket per listener, its downstream connections, its upstream
 * connection pools and every stream on them. Nothing here is shared between
 * workers except the routes (read-only config, endpoint snapshots published
 * by the control thread, relaxed-atomic counters).
 *
 * A connection (sc_conn) is one socket with a protocol implementation plugged
 * in through a static ops table: downstream HTTP/1 (down_h1.c), downstream
 * HTTP/2 (down_h2.c), upstream HTTP/1 (up_h1.c), upstream HTTP/2 (up_h2.c).
 *
 * A stream (sc_stream) is one request/response exchange. It owns two pipes:
 * the request body flowing down->up and the response body flowing up->down.
 * Each pipe is bounded (limits.stream_buffer): a producer stops reading its
 * socket (HTTP/1) or withholds WINDOW_UPDATE (HTTP/2) while the pipe is full,
 * so a slow reader slows its writer instead of growing memory.
 *
 * Memory: streams and buffer blocks come from per-worker free lists; header
 * strings live in the stream's arena and are released with the stream.
 */
#ifndef SC_PROXY_H
#define SC_PROXY_H

#include "config/config.h"
#include "core/common.h"
#include "discovery/endpoints.h"
#include "http/h1.h"
#include "lb/lb.h"
#include "proxy/buf.h"
#include "proxy/fail.h"
#include "proxy/stats.h"
#include "resilience/breaker.h"
#include "resilience/bulkhead.h"
#include "resilience/outlier.h"
#include "resilience/retry.h"

#include <ev.h>
#include <openssl/ssl.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdatomic.h>

typedef struct sc_worker sc_worker;
typedef struct sc_conn sc_conn;
typedef struct sc_stream sc_stream;
typedef struct sc_route sc_route;

/* ---- intrusive doubly linked list ---- */
typedef struct sc_link {
    struct sc_link *prev, *next;
} sc_link;

static inline void sc_list_init(sc_link *h) { h->prev = h->next = h; }
static inline bool sc_list_empty(const sc_link *h) { return h->next == h; }
static inline bool sc_link_linked(const sc_link *l) { return l->next != NULL && l->next != l; }
static inline void sc_list_push(sc_link *h, sc_link *l)
{
    l->prev = h->prev;
    l->next = h;
    h->prev->next = l;
    h->prev = l;
}
static inline void sc_list_remove(sc_link *l)
{
    if (!l->next)
        return;
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->prev = l->next = NULL;
}

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

/* ---- routes: where a listener's traffic goes ---- */

/* Per instance (by address), for the life of the route: shared by workers. */
typedef struct sc_instance_state {
    struct sc_instance_state *next;
    struct sockaddr_storage ss;
    socklen_t len;
    sc_outlier_instance ol;
} sc_instance_state;

struct sc_route {
    const char *name;               /* upstream name, or "inbound" */
    unsigned index;                 /* into worker->rstate and stats */
    sc_proto protocol;              /* towards the instances */
    const sc_timeouts *timeouts;
    const struct sc_pipeline *pipeline; /* admission stages and observers (stage.h) */
    const sc_policy *policy;        /* NULL for inbound */
    bool inbound;
    sc_endpoints_ref endpoints;     /* published snapshot (discovery/endpoints.h) */
    const struct sc_up_codec *uc;   /* towards the instances (codec.h), from protocol */
    /* Resilience state shared by all workers (resilience/). */
    sc_breaker breaker;
    sc_bulkhead bulkhead;
    sc_retry_budget budget;
    sc_outlier outlier;
    sc_instance_state *states;      /* control thread adds, nobody frees before the route */
    sc_ratelimit log_limit;         /* per-request warnings about this upstream */
};

/* Control thread: attaches per-instance state to `snap` and publishes it;
 * instances that left are taken out of the outlier cap. */
void sc_route_publish(sc_route *r, sc_endpoints *snap);
/* Start-up: resilience state from the policy (NULL policy: inbound). */
void sc_route_init_resilience(sc_route *r, const sc_policy *p, uint32_t inbound_max_concurrent);
void sc_route_free_states(sc_route *r);
/* Start-up, once the route's config is set: its upstream codec, admission
 * stages and observers (stage.h); freed with sc_route_free_pipeline. */
struct sidecar;
void sc_route_build_pipeline(sc_route *r, const struct sidecar *sc);
void sc_route_free_pipeline(sc_route *r);

/* Per worker, per route: connection pool and balancing state. */
typedef struct sc_route_state {
    sc_link h2_conns;               /* upstream HTTP/2 connections */
    sc_link h1_idle;                /* idle upstream HTTP/1 connections */
    sc_lb_ctx lb;                   /* cursor and random state of this worker */
    sc_link waiters;                /* streams parked by the bulkhead (stage_bulkhead.c) */
    uint8_t *skip;                  /* scratch for the load balancer */
    uint32_t *load;
    size_t scratch_n;
    uint32_t n_conns;               /* open upstream connections */
} sc_route_state;

/* ---- connections ---- */
enum {
    /* A connection the sidecar opened towards an instance: its timer is the
     * connect timeout until it is connected (TLS handshake included), and its
     * TLS failures are the upstream's. */
    SC_CONN_OPS_UPSTREAM = 1u << 0,
    /* The codec parses from c->in (HTTP/1): bytes read while it was paused
     * are handed to on_readable again, since the socket will not signal them. */
    SC_CONN_OPS_BUFFERS_INPUT = 1u << 1,
};

struct sc_down_codec;

/* Who is calling, kept on a caller's connection (down_h1.c sets it up at the
 * TLS handshake) for the admission stages (sc_stream_caller). */
typedef struct sc_caller {
    char *identity;                 /* the verified SPIFFE identity (URI SAN); NULL: none, or cleartext */
    bool tls;                       /* the connection is TLS */
    bool denied;                    /* tls.allow refused the identity (stage_allow.c answers 403) */
    /* tls.authorize: consul: the last decision for this caller, reused
     * without a lock until authz_until_ms (stage_authz.c) */
    uint64_t authz_until_ms;        /* 0: none */
    const char *authz_reason;       /* Consul's reason (interned by authz, lives as long as it) */
    bool authz_allowed;
    bool authz_stale;
} sc_caller;

/* A connection's protocol implementation (codec.h has the stream-level side). */
typedef struct sc_conn_ops {
    uint32_t flags;                 /* SC_CONN_OPS_* */
    const struct sc_down_codec *down; /* a caller's connection: its codec (drain; streams take it) */
    void (*on_readable)(sc_conn *c);
    /* Produce output into c->out (called when there is space and the conn is
     * dirty or writable). Returns 0, or a negative error to close. */
    int (*produce)(sc_conn *c);
    /* Tear down protocol state; streams attached must be detached/failed. */
    void (*on_close)(sc_conn *c, int err);
    /* Called after a flush emptied the output buffer. */
    void (*on_drained)(sc_conn *c);
    /* TLS handshake completed (may be NULL). */
    void (*on_handshake)(sc_conn *c);
    /* An outgoing connection is up: TCP connected, TLS handshake done (may be NULL). */
    void (*on_connected)(sc_conn *c);
} sc_conn_ops;

enum {
    SC_CONN_F_DIRTY = 1u << 0,      /* on worker->dirty, produce() pending */
    SC_CONN_F_CLOSING = 1u << 1,    /* close after the output is flushed */
    SC_CONN_F_CLOSED = 1u << 2,
    SC_CONN_F_CONNECTING = 1u << 3,
    SC_CONN_F_READ_PAUSED = 1u << 4,
    SC_CONN_F_WANT_WRITE = 1u << 5, /* EAGAIN on write: waiting for EPOLLOUT */
    SC_CONN_F_EOF = 1u << 6,        /* peer closed its side */
    SC_CONN_F_TLS_HS = 1u << 7,     /* TLS handshake in progress */
    SC_CONN_F_TLS_HS_WRITE = 1u << 8, /* the handshake waits for writability */
};

struct sc_conn {
    ev_io io;
    ev_timer timer;                 /* idle / header-read / connect timeout */
    const sc_conn_ops *ops;
    sc_worker *w;
    sc_route *route;                /* downstream: the listener's route; upstream: its route */
    sc_caller *caller;              /* a caller's connection: who it is; NULL upstream */
    int fd;
    uint32_t flags;
    sc_link dirty_link;             /* worker->dirty */
    sc_link link;                   /* pool / worker list membership */
    sc_buf out;                     /* bytes waiting for the socket */
    sc_buf in;                      /* bytes read but not yet parsed (HTTP/1) */
    struct sockaddr_storage peer;
    socklen_t peer_len;
    char peer_text[64];
    SSL *ssl;                       /* TLS, NULL for cleartext */
    const uint8_t *pend;            /* HTTP/2: serialized bytes not yet in `out` */
    size_t pend_len;
};

/* HTTP/2 output shared by both sides: moves nghttp2_session_mem_send()
 * output into c->out while it has room. Returns 0 or a negative error. */
int sc_h2_produce(sc_conn *c, nghttp2_session *session);
/* HTTP/2 input shared by both sides: reads what the socket has (bounded) into
 * the session. Returns 0, 1 when the connection was closed (EOF or error:
 * closed with eof_err / -errno), or an nghttp2 error (the caller closes). */
int sc_h2_feed(sc_conn *c, nghttp2_session *session, int eof_err);

/* ---- pipes and streams ---- */
typedef struct sc_pipe {
    sc_buf buf;                     /* bounded body bytes */
    uint64_t total;                 /* bytes that entered the pipe */
    nghttp2_nv *trailers;           /* in the stream arena */
    size_t n_trailers, cap_trailers;
    bool eof;                       /* producer finished (after buf drains, the end) */
} sc_pipe;

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
 * with BACKOFF between attempts (from CONNECTING, IN_FLIGHT or RESPONDING
 * before any response byte went out, back to CONNECTING / IN_FLIGHT), the
 * attempt going straight to IN_FLIGHT on a pooled connection, and DONE
 * reachable from every phase (answered locally, failed for good, caller gone).
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
    SC_ST_F_FAILED = 1u << 4,
    SC_ST_F_UP_STARTED = 1u << 5,       /* request head handed to an upstream conn */
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
    struct sockaddr_storage up_addr;
    socklen_t up_addr_len;
    /* messages */
    sc_msg req, resp;
    sc_pipe reqp, respp;
    sc_arena arena;
    /* deadline */
    ev_timer timer;
    uint64_t start_ns;
    uint64_t deadline_ns;           /* 0 = none */
    uint64_t up_start_ns;           /* the first attempt began (0: none yet) */
    uint64_t try_start_ns;          /* the current attempt began */
    uint64_t first_byte_ns;         /* this attempt's response head arrived (0: not yet) */
    sc_fail fail;
    const char *fail_msg;           /* the sidecar's answer, when it says more than the failure table (arena) */
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
    ev_timer try_timer;             /* per_try timeout of the current attempt */
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
    _Alignas(8) char inline_arena[2048]; /* sc_arena hands out 8-byte aligned blocks from here */
};

/* ---- worker ---- */
struct sc_worker {
    unsigned id;
    pthread_t thread;
    struct ev_loop *loop;
    struct sidecar *sc;             /* process-wide state (sidecar.h) */
    ev_io *listeners;               /* one per route */
    ev_async wakeup;                /* drain / stop requests from the control thread */
    ev_prepare flush;               /* flush dirty connections before polling */
    ev_idle more;                   /* active while dirty work is left: no sleeping poll */
    ev_check check;                 /* epoch tracking after polling */
    ev_timer drain_timer;
    ev_timer accept_pause;          /* out of descriptors: listeners rest (worker.c) */
    ev_timer promote;               /* while bulkhead waiters exist: take slots freed elsewhere */
    sc_link dirty;
    sc_link down_conns;
    sc_link streams;
    sc_route_state *rstate;         /* per route */
    sc_worker_stats *stats;         /* counters read by the admin endpoint */
    uint32_t n_down_conns;
    bool draining;
    bool stopping;
    unsigned start_delay_ms;        /* $SIDECAR_TEST_WORKER_START_DELAY_MS: tests only */
    struct sc_tls_session_cache *tls_sessions; /* outbound TLS resumption */
    /* tls.authorize: consul; set up by sc_stream_authz_init before the thread runs */
    ev_async authz_wake;            /* the control thread: a lookup this worker waits for ended */
    sc_link authz_waiters;          /* streams parked by stage_authz.c (sc_stream.park_link) */
    /* free lists */
    void *free_streams;
    void *free_blocks;
    unsigned n_free_blocks;
    _Atomic uint64_t epoch;         /* 0 while idle in poll, else the global epoch at wake-up */
};

/* Block pool: stream_buffer-sized blocks for sc_buf, per worker. */
int sc_buf_reserve(sc_worker *w, sc_buf *b, uint32_t cap);
void sc_buf_release(sc_worker *w, sc_buf *b);

/* ---- conn (worker.c) ---- */
void sc_conn_init(sc_conn *c, sc_worker *w, int fd, const sc_conn_ops *ops, sc_route *route);
void sc_conn_mark_dirty(sc_conn *c);
void sc_conn_pause_read(sc_conn *c);
void sc_conn_resume_read(sc_conn *c);
/* Closes at once (err < 0: abnormal) or, with SC_CONN_F_CLOSING, after flushing. */
void sc_conn_close(sc_conn *c, int err);
void sc_conn_close_after_flush(sc_conn *c);
/* Socket I/O of every protocol goes through these two, so transport security
 * (TLS) sits under all codecs. Same contract as recv(2)/send(2) with errno. */
ssize_t sc_conn_recv(sc_conn *c, void *buf, size_t len);
ssize_t sc_conn_send(sc_conn *c, const void *buf, size_t len);
/* True when bytes were read from the socket but not yet handed out (TLS
 * read-ahead): a short read then does not mean the socket is drained. */
bool sc_conn_pending(const sc_conn *c);
/* Appends bytes to c->out (bounded by the block; returns -ENOBUFS when full). */
int sc_conn_write(sc_conn *c, const void *p, size_t n);
/* "1.2.3.4:80" / "[::1]:80". */
void sc_sockaddr_text(const struct sockaddr *sa, char *out, size_t cap);
/* Puts TLS under a connection: at once for an accepted one, after the TCP
 * connect for an outgoing one (SC_CONN_F_CONNECTING). Takes the SSL. */
void sc_conn_start_tls(sc_conn *c, SSL *ssl);
/* Connected sockets: non-blocking, TCP_NODELAY. */
int sc_socket_connect(const struct sockaddr *sa, socklen_t len, int *fd_out);

/* ---- stream lifecycle (stream.c) ---- */
/* Moves the stream to phase p; in debug builds an illegal move aborts, and
 * every move is logged at debug level with both names. */
#ifdef NDEBUG
static inline void sc_stream_set_phase(sc_stream *s, sc_phase p) { s->phase = (uint8_t)p; }
#else
void sc_stream_set_phase(sc_stream *s, sc_phase p);
#endif
/* attempt.c: the first attempt, once admitted (admit.c). */
void sc_attempt_begin(sc_stream *s);
/* The upstream side is finished (nothing more is sent or expected). */
static inline bool sc_stream_up_done(const sc_stream *s) { return s->phase == SC_PHASE_DONE; }
/* The upstream codec bound the current attempt to s->up: CONNECTING or
 * IN_FLIGHT, by the connection's state. */
void sc_stream_bound(sc_stream *s);
/* s->up finished connecting (TCP and TLS): CONNECTING -> IN_FLIGHT. */
void sc_stream_connected(sc_stream *s);
sc_stream *sc_stream_new(sc_worker *w, sc_route *route, sc_conn *down, int32_t down_sid);
/* The downstream codec finished the request head: route, admit, pick, connect. */
void sc_stream_start(sc_stream *s);
/* Request body bytes arrived (pipe updated) or ended: wake the upstream side. */
void sc_stream_req_progress(sc_stream *s);
/* The downstream consumed n response bytes from the pipe: reopen the upstream
 * flow (HTTP/2 WINDOW_UPDATE or resume reading the HTTP/1 socket). */
void sc_stream_resp_drained(sc_stream *s, size_t n);
/* The upstream consumed n request bytes: reopen the downstream flow. */
void sc_stream_req_drained(sc_stream *s, size_t n);
/* Upstream codecs take request body bytes with this after copying the first
 * n bytes of s->reqp.buf: keeps the replay copy, consumes, reopens the flow. */
void sc_stream_req_consume(sc_stream *s, size_t n);
/* Response head / body / end arrived from upstream: wake the downstream side. */
void sc_stream_resp_progress(sc_stream *s);
/* Informational (1xx) response from upstream, to forward downstream. */
void sc_stream_resp_informational(sc_stream *s, int status, const nghttp2_nv *nv, size_t n);
/* The downstream codec refuses a request it has decoded (malformed, too
 * large, not supported) before it goes anywhere: counted as a request and
 * answered locally in the caller's protocol (status and x-sidecar-reason from `why`). */
void sc_stream_refuse(sc_stream *s, sc_fail why);
/* A grpc-status value as received: 1 or 2 ASCII digits 0..16, else (garbage,
 * out of range) UNKNOWN, as gRPC clients read it; never outside 0..16. */
/* Upstream side failed before or during the response. */
void sc_stream_upstream_failed(sc_stream *s, sc_fail why);
/* Upstream side finished cleanly (response complete). */
void sc_stream_upstream_done(sc_stream *s);
/* Downstream side is gone (RST, close) or finished sending the response. */
void sc_stream_downstream_done(sc_stream *s, bool aborted);
/* tls.authorize: consul: starts w->authz_wake on the worker's loop (before
 * the worker thread runs). */
void sc_stream_authz_init(sc_worker *w);
/* Header helpers (arena copies; names lower-cased). */
int sc_msg_add(sc_stream *s, sc_msg *m, const char *name, size_t nlen, const char *value, size_t vlen);
const nghttp2_nv *sc_msg_find(const sc_msg *m, const char *name);
/* Appends body bytes to a pipe; -ENOBUFS when they do not fit (for HTTP/2
 * that means the peer sent more than the window it was granted). */
int sc_pipe_put(sc_stream *s, sc_pipe *p, const void *data, size_t len);
int sc_pipe_add_trailer(sc_stream *s, sc_pipe *p, const char *name, size_t nlen, const char *value, size_t vlen);

/* The caller of a stream (NULL once its connection is gone). */
static inline sc_caller *sc_stream_caller(const sc_stream *s) { return s->down ? s->down->caller : NULL; }

/* Route state lookup. */
static inline sc_route_state *sc_rstate(sc_worker *w, const sc_route *r) { return &w->rstate[r->index]; }

#endif

/*
 * proxy.h: the data plane's private types: workers, connections and their
 * I/O machinery. Private to sidecar/proxy/ (the control plane uses
 * route.h and worker.h; streams are in stream.h, codecs in codec.h,
 * admission stages in stage.h).
 *
 * Shape: a worker thread owns a libev loop, one SO_REUSEPORT socket per
 * listener, its downstream connections, its upstream connection pools and
 * every stream on them. Nothing here is shared between workers except the
 * routes (read-only config, endpoint snapshots published by the control
 * thread, resilience state with atomics, relaxed-atomic counters).
 *
 * A connection (sc_conn) is one socket with a protocol implementation plugged
 * in through a static ops table: downstream HTTP/1 (down_h1.c), downstream
 * HTTP/2 (down_h2.c), upstream HTTP/1 (up_h1.c), upstream HTTP/2 (up_h2.c).
 *
 * Memory: connections are calloc'ed and freed after the loop iteration that
 * closed them; buffer blocks come from the worker's block pool.
 */
#ifndef SC_PROXY_H
#define SC_PROXY_H

#include "config/config.h"
#include "core/common.h"
#include "core/smallpool.h"
#include "http/h1.h"
#include "lb/lb.h"
#include "proxy/buf.h"
#include "proxy/deadline.h"
#include "proxy/fail.h"
#include "proxy/list.h"
#include "proxy/route.h"
#include "proxy/stats.h"
#include "proxy/worker.h"

#include <ev.h>
#include <openssl/ssl.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdatomic.h>

typedef struct sc_worker sc_worker;
typedef struct sc_conn sc_conn;
typedef struct sc_stream sc_stream;

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
    uint64_t removed_ms;            /* when this worker saw the route removed (drain_timeout from then), 0 = not */
    sc_dq deadlines;                /* request deadlines of this route's streams (stream.c) */
    sc_dq try_deadlines;            /* per-try deadlines of their attempts */
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
    uint64_t deadline_ns;           /* sc_conn_deadline: monotonic, 0 = none */
    uint64_t timer_at_ns;           /* when the timer, if running for a deadline, fires (sc_deadline_timer) */
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

/* ---- worker ---- */
struct sc_worker {
    unsigned id;
    pthread_t thread;
    struct ev_loop *loop;
    struct sidecar *sc;             /* process-wide state (sidecar.h) */
    ev_io *listeners;               /* one per route slot (routes_cap), fd -1 = none */
    _Atomic int *handoff;           /* per route slot: a listening socket the control thread bound
                                     * for this worker (sc_workers_hand), -1 = none */
    size_t route_slots;             /* length of listeners, handoff, rstate, stats->routes */
    ev_async wakeup;                /* sc_worker_wake: the reasons are in `wake` */
    _Atomic unsigned wake;          /* SC_WAKE_* bits not handled yet (worker.h) */
    ev_prepare flush;               /* flush dirty connections before polling */
    ev_idle more;                   /* active while dirty work is left: no sleeping poll */
    ev_check check;                 /* epoch tracking after polling */
    ev_timer drain_timer;
    ev_timer route_drain;           /* removed routes: their connections close at drain_timeout (worker.c) */
    ev_timer accept_pause;          /* out of descriptors: listeners rest (worker.c) */
    ev_timer promote;               /* while bulkhead waiters exist: take slots freed elsewhere */
    sc_link dirty;
    sc_link down_conns;
    sc_link streams;
    sc_route_state *rstate;         /* per route */
    sc_worker_stats *stats;         /* counters read by the admin endpoint */
    uint32_t n_down_conns;
    bool draining;
    bool stopping;                  /* SC_WAKE_STOP seen: the loop ends without draining */
    unsigned start_delay_ms;        /* $SIDECAR_TEST_WORKER_START_DELAY_MS: tests only */
    struct sc_tls_session_cache *tls_sessions; /* outbound TLS resumption */
    sc_link authz_waiters;          /* streams parked by stage_authz.c (SC_WAKE_AUTHZ resumes them) */
    sc_link jwt_waiters;            /* streams parked by stage_jwt.c for keys (SC_WAKE_JWT resumes them) */
    sc_link rl_waiters;             /* streams parked by stage_ratelimit.c while Redis decides (its callback resumes them) */
    struct sc_rl_worker *rl;        /* this worker's Redis client (global rate limits), NULL: none */
    /* free lists */
    void *free_streams;
    void *free_blocks[2];           /* block pool, two sizes (worker.c) */
    unsigned n_free_blocks[2];
    sc_smallpool h2pool;            /* the small blocks of this worker's HTTP/2 sessions, both sides */
    nghttp2_mem h2mem;              /* allocator of its upstream HTTP/2 sessions: h2pool */
    _Atomic uint64_t epoch;         /* 0 while idle in poll, else the global epoch at wake-up */
    uint64_t now_ns;                /* sc_worker_now_ns's reading in this callback, 0 = none yet */
};

/*
 * The worker's clock: sc_now_ns() time, read at most once per event
 * callback. Each loop iteration (after polling) and each connection's I/O
 * callback start without a reading (sc_worker_tick); the first use reads
 * the clock, later uses in the same callback get that reading. A request
 * wants the time about ten times (its start and end, its attempt's, the
 * breaker's windows, its deadlines, the connection's idle deadline), and
 * the clock read is the costly part of each (a vDSO call, slower still in
 * a VM). What one callback does in one go (16 requests read from one
 * socket) shares one time: durations are exact to the length of a
 * callback, microseconds. For the request path's timings and deadlines on
 * the worker's thread; what must time something shorter reads sc_now_ns().
 */
static inline uint64_t sc_worker_now_ns(sc_worker *w)
{
    if (!w->now_ns)
        w->now_ns = sc_now_ns();
    return w->now_ns;
}
static inline uint64_t sc_worker_now_ms(sc_worker *w) { return sc_worker_now_ns(w) / 1000000u; }
static inline void sc_worker_tick(sc_worker *w) { w->now_ns = 0; }

/* What one worker's HTTP/2 sessions may keep of freed small blocks, per
 * size class (7 classes): at most 7 x this per worker. */
#define SC_H2POOL_CLASS_BYTES (64u * 1024u)

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
/*
 * A lazy deadline on c->timer, for the idle and header-read timeouts that
 * move on every request of a keep-alive connection. Setting a deadline
 * later than the running timer's, or clearing it, touches no timer: the
 * timer fires when it was set to, and its callback asks
 * sc_conn_deadline_due(), which restarts it for what is left. Only an
 * earlier deadline restarts it at once. Back-to-back requests then cost no
 * timer operation (it was two starts and two stops on libev's heap, about
 * 300 instructions per HTTP/1.1 request). ms 0 = no deadline.
 */
void sc_conn_deadline(sc_conn *c, uint64_t ms);
static inline void sc_conn_deadline_clear(sc_conn *c)
{
    c->deadline_ns = 0;
}
/* In c->timer's callback: true when the deadline has passed (the caller
 * acts on it); false when there is none or it is still ahead (the timer is
 * then restarted for the rest). */
bool sc_conn_deadline_due(sc_conn *c);
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

/* Route state lookup. */
static inline sc_route_state *sc_rstate(sc_worker *w, const sc_route *r) { return &w->rstate[r->index]; }

#endif

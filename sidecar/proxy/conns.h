/*
 * conns.h: the concrete connection structs shared by the HTTP/1 and HTTP/2
 * implementations of each side. Private to sidecar/proxy/.
 */
#ifndef SC_CONNS_H
#define SC_CONNS_H

#include "proxy/stream.h"

#include <assert.h>

/* The stream an HTTP/2 connection's callbacks looked up last. nghttp2 calls
 * back several times for one stream in a row (each header field, the end of
 * the head, each DATA chunk, the frame sent) and each
 * nghttp2_session_get_stream_user_data is a hash lookup (about 33
 * instructions; 25 per proxied gRPC call). The entry mirrors the session's
 * user data: every change of a stream's user data goes through
 * sc_h2_set_stream (nghttp2_submit_request sets it too, for a stream ID
 * not yet assigned, so never the one held here), and a stream's user data
 * is cleared (through it) before its sc_stream is let go, so the entry
 * never outlives what it points at.
 * Stream IDs are never reused within a session. */
typedef struct sc_h2_last {
    int32_t sid;                    /* 0: empty */
    sc_stream *s;
} sc_h2_last;

static inline sc_stream *sc_h2_get_stream(sc_h2_last *last, nghttp2_session *h2, int32_t sid)
{
    if (sid == last->sid && sid != 0) {
        /* Debug builds (the sanitizer suite runs the integration tests on
         * one) check the invariant above on every hit. */
        assert(last->s == nghttp2_session_get_stream_user_data(h2, sid));
        return last->s;
    }
    sc_stream *s = nghttp2_session_get_stream_user_data(h2, sid);
    last->sid = s ? sid : 0;
    last->s = s;
    return s;
}

static inline void sc_h2_set_stream(sc_h2_last *last, nghttp2_session *h2, int32_t sid, sc_stream *s)
{
    nghttp2_session_set_stream_user_data(h2, sid, s);
    if (s)
        *last = (sc_h2_last){sid, s};
    else if (sid == last->sid)
        last->sid = 0;
}

/* A caller's connection: starts as HTTP/1 and switches to HTTP/2 when the
 * first bytes are the HTTP/2 connection preface (h2c prior knowledge). */
typedef struct sc_down_conn {
    sc_conn super;
    /* HTTP/1 */
    sc_stream *cur;                 /* the request being served */
    bool close_after;               /* close once the current response is out */
    bool awaiting_head;             /* a request head is being read */
    bool head_timed;                /* ... and its header-read deadline is set */
    bool served;                    /* has carried a request (drain: idle keep-alive, close at once) */
    uint32_t head_scanned;          /* bytes of the pending head already seen by the parser */
    bool continue_due;              /* "100 Continue" owed to the current request, not yet in out */
    /* A refused request's answer, waiting behind the responses already in
     * out (reject() in down_h1.c): written when it fits, then the close. */
    bool refusing;
    uint16_t refusal_status;
    const char *refusal_reason;     /* x-sidecar-reason value (static string) */
    const char *refusal_why;        /* body text (static string) */
    /* HTTP/2 */
    nghttp2_session *h2;
    sc_h2_last last;                /* the stream looked up last (sc_h2_get_stream) */
    uint32_t n_streams;
    uint32_t n_oversized;           /* header blocks refused as too large (down_h2.c ends the connection past a bound) */
    bool goaway_sent;
    /* Idle memory (down_h2.c): the session allocates through h2mem, so the
     * pages of its large blocks can be handed back to the kernel once the
     * connection has been idle (or, with streams open, quiet) for a while
     * (trim_checked: this idle spell was looked at; trimmed: pages were
     * handed back, counted in sc_worker_stats.h2_idle_trimmed until the
     * next stream). */
    bool trim_checked;
    bool trimmed;
    bool io_seen;                   /* read since the last look at a connection with streams open */
    struct sc_h2_mem *h2mem;
    sc_caller caller;               /* who is calling (super.caller points here) */
} sc_down_conn;

/* A connection to one upstream instance. */
typedef struct sc_up_conn {
    sc_conn super;
    sc_link pending;                /* streams waiting for the connection */
    /* HTTP/1 */
    sc_stream *cur;
    bool head_parsed;
    uint32_t head_scanned;          /* bytes of the pending head already seen by the parser */
    uint32_t n_interim;             /* 1xx responses received for the current exchange */
    uint32_t interim_bytes;         /* ... and their bytes (bounded by limits.max_header_bytes) */
    /* HTTP/2 */
    nghttp2_session *h2;
    sc_h2_last last;                /* the stream looked up last (sc_h2_get_stream) */
    uint32_t n_streams;
    uint32_t max_streams;           /* peer's SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t n_submitted;           /* request heads submitted (up_h2.c's submit) */
    bool goaway;                    /* no new streams on this connection */
    bool settings_seen;
} sc_up_conn;

#define SC_DOWN(c) ((sc_down_conn *)(c))
#define SC_UP(c) ((sc_up_conn *)(c))

/* upconn.c: shared by up_h1.c and up_h2.c. */
sc_up_conn *sc_up_conn_new(sc_worker *w, sc_route *route, const struct sockaddr *sa, socklen_t len,
                           const sc_conn_ops *ops, int *err);
/* Sets the idle deadline of an upstream connection with nothing to do
 * (sc_conn_deadline_clear when it gets work again). A connection still
 * connecting keeps its connect timeout instead; its codec calls this again
 * from on_connected when it comes up with nothing to do. */
void sc_up_conn_idle(sc_up_conn *u);
/* Fails every stream still waiting on u->pending. */
void sc_up_conn_fail_pending(sc_up_conn *u, sc_fail why);

/* Decodes an HTTP/1 body from `in` into pipe `p` while it has room (the
 * decoder `b` keeps its state between calls). Returns the number of payload
 * bytes moved plus one when the body ended (so 0 means no progress), or a
 * negative SC_H1_ERR_*. Trailers of a chunked body go to p->trailers. */
int sc_h1_pump_body(sc_stream *s, sc_buf *in, sc_h1_body *b, sc_pipe *p);

/* One field added to a header list being received, counted as HPACK counts
 * it (RFC 7541 4.1: name + value + 32), saturating. Returns the new total. */
static inline uint32_t sc_hdr_list_add(uint32_t *total, size_t namelen, size_t valuelen)
{
    uint64_t t = (uint64_t)*total + namelen + valuelen + 32;
    *total = t > UINT32_MAX ? UINT32_MAX : (uint32_t)t;
    return *total;
}

/* nghttp2 options both HTTP/2 sides share (manual flow control, header block
 * sizes from limits.max_header_bytes, CONTINUATION frames bounded); the
 * caller adds its own and frees it after creating the session. NULL: no memory. */
nghttp2_option *sc_h2_session_option(const sc_config *cfg);

#endif

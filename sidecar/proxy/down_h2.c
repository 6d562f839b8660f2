/*
 * down_h2.c: a caller's HTTP/2 (h2c prior knowledge, gRPC) connection, on an
 * nghttp2 server session fed from memory. Flow control is manual
 * (no_auto_window_update): request DATA is acknowledged with WINDOW_UPDATE
 * only when the upstream has taken it from the stream's pipe, so a slow
 * upstream slows the caller and each stream buffers at most its window.
 *
 * What a caller sends is held to the limits it was told: each header list
 * (head, trailers) to limits.max_header_bytes as HPACK counts it (431, or
 * RST_STREAM far beyond it; GOAWAY after OVERSIZED_MAX such heads);
 * CONNECT and heads without a usable :path are answered locally; trailers
 * are filtered as heads are (the identity header in any spelling an app
 * reads, connection-specific names, limits.header_underscores).
 */
#include "core/log.h"
#include "http/grpc.h"
#include "http/hdr.h"
#include "jwt/jwt_config.h"
#include "proxy/codec.h"
#include "proxy/conns.h"
#include "sidecar.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define CONN_WINDOW (16 * 1024 * 1024)

static sc_stream *get_stream(sc_down_conn *d, int32_t sid)
{
    return sc_h2_get_stream(&d->last, d->h2, sid);
}

/* ---- session memory ----
 *
 * An idle HTTP/2 connection keeps its nghttp2 session: the HPACK tables and
 * settings must survive until the next request. Most of a session's memory
 * is in two blocks it allocates when it is created and keeps for its whole
 * life: the outbound frame buffer (16 KiB and a few bytes, written for every
 * frame sent, meaningless between frames) and the stream table (4 KiB, all
 * zeros when no stream is open). The session allocates through this
 * allocator: blocks of a page or more are page-aligned whole pages, and the
 * connection remembers them, so once it has been idle for TRIM_AFTER_MS
 * (trim()) the pages of the frame buffer and the all-zero pages of the other
 * blocks go back to the kernel (MADV_DONTNEED: they read as zeros and are
 * faulted in again when the connection is used). A connection with streams
 * open that has read nothing for one to two periods (a call held open, an
 * answer awaited) gives back its frame buffer the same way. Smaller blocks come from
 * the worker's small-block pool (core/smallpool.h), as for the upstream
 * sessions. */
#define TRIM_AFTER_MS 1000
#define H2MEM_BLOCKS 4
/* A large block allocated while the session is created, this large, is its
 * outbound frame buffer (nghttp2 1.52: 9 + 1 + 16384 bytes). */
#define FRAMEBUF_MIN 16384
#define FRAMEBUF_VERSION 0x0134 /* nghttp2 1.52.x (major, minor) */
static bool g_framebuf_known;

typedef struct sc_h2_mem {
    nghttp2_mem mem;                /* mem_user_data points here */
    sc_smallpool *pool;             /* the worker's: blocks under a page */
    void *blk[H2MEM_BLOCKS];        /* large blocks of the session, page-aligned */
    size_t len[H2MEM_BLOCKS];       /* their lengths, whole pages */
    int framebuf;                   /* index of the frame buffer in blk, -1: not known */
    bool creating;                  /* inside nghttp2_session_server_new3 */
} sc_h2_mem;

/* Blocks are aligned to and rounded to this: the page size of the targets
 * this runs on (a constant keeps the per-allocation test to one compare).
 * Where pages are larger, madvise() refuses the ranges and nothing is
 * trimmed (init_callbacks turns it off). */
#define H2MEM_PAGE ((size_t)4096)
static bool g_trim_ok;

/* A block of a page or more: page-aligned whole pages, remembered for the
 * trim. With every slot taken it is a plain pool block instead (never
 * trimmed), so that every block the session frees is either remembered
 * here or carries the pool's header. */
static void *big_alloc(sc_h2_mem *m, size_t n)
{
    int slot = -1;
    for (int i = 0; i < H2MEM_BLOCKS && slot < 0; i++)
        if (!m->blk[i])
            slot = i;
    size_t len = (n + H2MEM_PAGE - 1) & ~(H2MEM_PAGE - 1);
    if (slot < 0 || len < n)
        return sc_smallpool_alloc(m->pool, n);
    void *p;
    if (posix_memalign(&p, H2MEM_PAGE, len) != 0)
        return NULL;
    m->blk[slot] = p;
    m->len[slot] = len;
    if (m->creating && n >= FRAMEBUF_MIN && m->framebuf < 0)
        m->framebuf = slot;
    return p;
}

/* The slot of a large block, -1 when p is not one. */
static int big_slot(const sc_h2_mem *m, const void *p)
{
    if (((uintptr_t)p & (H2MEM_PAGE - 1)) || !p)
        return -1;
    for (int i = 0; i < H2MEM_BLOCKS; i++)
        if (m->blk[i] == p)
            return i;
    return -1;
}

/* Under a page: the worker's small-block pool (a dozen blocks per stream
 * come and go here without malloc). */
static void *h2mem_malloc(size_t n, void *ud)
{
    sc_h2_mem *m = ud;
    if (n >= H2MEM_PAGE)
        return big_alloc(m, n);
    /* What the session allocates when it is created it keeps for its life
     * (the session struct, the two HPACK tables' 1 KiB rings): exact-size
     * blocks, not the pool's power-of-two classes, which would round each
     * ring (1 KiB and the header) up to 2 KiB on every connection. */
    if (SC_UNLIKELY(m->creating))
        return sc_smallpool_alloc_exact(m->pool, n);
    return sc_smallpool_alloc(m->pool, n);
}

static void h2mem_free(void *p, void *ud)
{
    sc_h2_mem *m = ud;
    int i = big_slot(m, p);
    if (i < 0) {
        sc_smallpool_free(m->pool, p);
        return;
    }
    m->blk[i] = NULL;
    if (m->framebuf == i)
        m->framebuf = -1;
    free(p);
}

static void *h2mem_calloc(size_t k, size_t n, void *ud)
{
    size_t t;
    if (__builtin_mul_overflow(k, n, &t))
        return NULL;
    void *p = h2mem_malloc(t, ud);
    if (p)
        memset(p, 0, t);
    return p;
}

static void *h2mem_realloc(void *p, size_t n, void *ud)
{
    sc_h2_mem *m = ud;
    if (!p)
        return h2mem_malloc(n, m);
    int i = big_slot(m, p);
    if (i < 0 && n < H2MEM_PAGE)
        return sc_smallpool_realloc(m->pool, p, n);
    size_t old = i >= 0 ? m->len[i] : sc_smallpool_usable(p);
    if (i >= 0 && n <= old && n >= H2MEM_PAGE)
        return p;
    void *q = h2mem_malloc(n, m);
    if (!q)
        return NULL;
    memcpy(q, p, SC_MIN(old, n));
    h2mem_free(p, m);
    return q;
}

/* Hands back [p, p + len) (whole pages) to the kernel; it reads as zeros. */
static void pages_release(char *p, size_t len)
{
    if (len)
        (void)madvise(p, len, MADV_DONTNEED); /* on failure the pages just stay */
}

static bool page_is_zero(const char *p)
{
    const uint64_t *q = (const uint64_t *)p;
    uint64_t acc = 0;
    for (size_t i = 0; i < H2MEM_PAGE / sizeof(*q); i++)
        acc |= q[i];
    return acc == 0;
}

/* The connection has been idle (no stream) or quiet (streams open, nothing
 * read) for TRIM_AFTER_MS: what its session holds and does not need until
 * the next frame goes back to the kernel. Only with nothing to write:
 * c->pend may point into the frame buffer, and a frame being sent lives
 * there; between frames nghttp2 keeps nothing in it. Returns true when
 * pages were handed back. */
static bool trim(sc_down_conn *d)
{
    sc_conn *c = &d->super;
    sc_h2_mem *m = d->h2mem;
    if (!g_trim_ok || !m || !d->h2 || c->pend_len || sc_buf_len(&c->out) || nghttp2_session_want_write(d->h2))
        return false;
    sc_buf_release(c->w, &c->out); /* none held once drained; kept as the rule */
    if (!sc_buf_len(&c->in))
        sc_buf_release(c->w, &c->in); /* (reads go through a stack buffer) */
    bool any = false;
    for (int i = 0; i < H2MEM_BLOCKS; i++) {
        char *b = m->blk[i];
        if (!b)
            continue;
        if (i == m->framebuf && g_framebuf_known) {
            pages_release(b, m->len[i]);
            any = true;
            continue;
        }
        size_t run = 0; /* all-zero pages keep their contents when handed back */
        for (size_t off = 0; off <= m->len[i]; off += H2MEM_PAGE) {
            if (off < m->len[i] && page_is_zero(b + off)) {
                run += H2MEM_PAGE;
                continue;
            }
            pages_release(b + off - run, run);
            any |= run != 0;
            run = 0;
        }
    }
    return any;
}

/* The connection has a stream again (or goes): it is not trimmed any more. */
static void untrim(sc_down_conn *d)
{
    d->trim_checked = false;
    if (d->trimmed) {
        d->trimmed = false;
        SC_STAT_DEC(d->super.w->stats->h2_idle_trimmed);
    }
}

/* With no stream open: the idle timer, first for the trim (TRIM_AFTER_MS),
 * then for the idle timeout (timeouts.idle, counted from the same start). */
static void arm_idle(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    if (d->n_streams)
        return; /* its timer looks for quiet (idle_cb) */
    ev_timer_stop(c->w->loop, &c->timer);
    if (d->trimmed && !d->trim_checked)
        untrim(d); /* trimmed while streams were open: the idle spell starts afresh */
    uint64_t idle = c->route->timeouts->idle_ms, after;
    if (idle && idle <= TRIM_AFTER_MS) {
        d->trim_checked = true; /* it closes before a trim would be due */
        after = idle;
    } else if (!d->trim_checked) {
        after = TRIM_AFTER_MS;
    } else {
        after = idle ? idle - TRIM_AFTER_MS : 0;
    }
    if (after) {
        ev_timer_set(&c->timer, (double)after / 1000.0, 0);
        ev_timer_start(c->w->loop, &c->timer);
    }
}

/* Detaches the stream from the session and tells the stream the caller's side ended. */
static void detach(sc_down_conn *d, sc_stream *s, bool aborted)
{
    sc_h2_set_stream(&d->last, d->h2, s->down_sid, NULL);
    if (s->down_unconsumed) {
        nghttp2_session_consume_connection(d->h2, s->down_unconsumed);
        s->down_unconsumed = 0;
    }
    d->n_streams--;
    sc_stream_downstream_done(s, aborted);
    arm_idle(&d->super);
}

/* A caller whose certificate tls.allow refused: its requests are answered
 * 403 by the allow-list admission stage (stage_allow.c) and nothing of them
 * is kept. */
static bool caller_denied(const sc_down_conn *d, const sc_stream *s)
{
    return d->caller.denied && s->route->inbound;
}

/* Resets one of the caller's streams from a callback and lets go of it at
 * once: nothing more of it is decoded or kept. Returns what the callback
 * returns (nghttp2 then skips the rest of the header block). */
static int reset_stream(sc_down_conn *d, sc_stream *s, uint32_t code)
{
    if (nghttp2_submit_rst_stream(d->h2, NGHTTP2_FLAG_NONE, s->down_sid, code) != 0)
        return NGHTTP2_ERR_CALLBACK_FAILURE; /* no memory: the connection goes */
    detach(d, s, true);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
}

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    sc_down_conn *d = user_data;
    sc_conn *c = &d->super;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
        /* Trailers: a field section of their own, with a budget of their own. */
        sc_stream *s = get_stream(d, frame->hd.stream_id);
        if (s)
            s->down_hdr_bytes = 0;
        return 0;
    }
    if (c->w->draining) {
        if (nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_REFUSED_STREAM) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    }
    sc_stream *s = sc_stream_new(c->w, c->route, c, frame->hd.stream_id);
    if (!s) {
        if (nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_INTERNAL_ERROR) != 0)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return 0;
    }
    sc_h2_set_stream(&d->last, session, frame->hd.stream_id, s);
    d->n_streams++;
    /* The timer armed when the last stream ended (arm_idle) is left to run:
     * with streams open it looks for a quiet connection to trim (idle_cb).
     * After an idle spell it may be far off (the idle timeout's remainder),
     * so it is brought back to TRIM_AFTER_MS; after a trim with streams
     * open it is not running. */
    if (d->trim_checked || d->trimmed) {
        untrim(d);
        ev_timer_stop(c->w->loop, &c->timer);
        ev_timer_set(&c->timer, (double)TRIM_AFTER_MS / 1000.0, 0);
        ev_timer_start(c->w->loop, &c->timer);
    }
    return 0;
}

/* What a caller's request head has earned while it was decoded
 * (sc_stream.down_hdr_verdict): the first verdict stands, but too large
 * overrides the others (it is what the caller has to fix first). */
enum { HEAD_OK = 0, HEAD_TOO_LARGE, HEAD_BAD_NAME, HEAD_EXT_CONNECT };

static void set_verdict(sc_stream *s, uint8_t v)
{
    if (s->down_hdr_verdict == HEAD_OK)
        s->down_hdr_verdict = v;
}

/* A header list beyond the limit is still decoded (not kept) up to this many
 * times the limit, to answer 431; beyond that the stream is reset at once:
 * HPACK lets a few bytes on the wire name a large field again and again, and
 * every field decoded costs its length in validation. */
#define HEAD_DECODE_FACTOR 2
/* Header blocks refused as too large on one connection before it is ended
 * (GOAWAY ENHANCE_YOUR_CALM): each costs up to HEAD_DECODE_FACTOR times
 * limits.max_header_bytes of work for a few bytes on the wire. */
#define OVERSIZED_MAX 100
/* Its own log limit: the per-request lines before it must not hide it. */
static sc_ratelimit g_oversized_log;

/* One more header block over the limit from this caller: true when that
 * was one too many and the connection is ending. */
static bool oversized_flood(sc_down_conn *d)
{
    if (++d->n_oversized != OVERSIZED_MAX + 1)
        return d->n_oversized > OVERSIZED_MAX; /* ended already, or not yet */
    sc_conn *c = &d->super;
    d->goaway_sent = true; /* ours: on_frame_send does not take it for nghttp2's rapid-reset GOAWAY */
    SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_H2_FLOOD]);
    SC_WARN_LIMITED(&g_oversized_log,
                    "%s listener: HTTP/2 caller %s sent more than %d header blocks over limits.max_header_bytes: "
                    "GOAWAY, connection closed", c->route->name, c->peer_text, OVERSIZED_MAX);
    if (nghttp2_session_terminate_session(d->h2, NGHTTP2_ENHANCE_YOUR_CALM) != 0)
        sc_conn_close_after_flush(c); /* no memory for the GOAWAY: just close */
    return true;
}

/* Connection-specific fields and the framing and routing ones this hop
 * writes itself: never passed on from a response head or a request trailer. */
#define HOP_FIELDS(X) SC_HDR_HOP_BY_HOP(X) X("host") X("content-length")
SC_LIT_SET(hop_fields, HOP_FIELDS);

/* Names a request trailer may not carry: connection-specific fields and the
 * ones whose meaning belongs to the head (RFC 9110 6.5.1). */
static bool trailer_dropped(const uint8_t *name, size_t len)
{
    if (len && name[0] == ':')
        return true;
    return sc_lit_set_has(&hop_fields, name, len);
}

/* A request trailer: filtered as the head's fields are. */
static int on_trailer(sc_down_conn *d, sc_stream *s, const char *n, size_t namelen, const char *v, size_t valuelen,
                      uint8_t flags)
{
    const sc_config *cfg = s->w->sc->cfg;
    if (caller_denied(d, s) || trailer_dropped((const uint8_t *)n, namelen) ||
        sc_hdr_aliases(n, namelen, cfg->tls.identity_header) ||
        (s->route->inbound && sc_jwt_header_reserved(cfg->inbound.jwt, n, namelen)))
        return 0; /* the identity and JWT claim headers, in any spelling an app reads, are only ever set by the sidecar */
    if (sc_hdr_has_underscore(n, namelen)) {
        if (cfg->limits.header_underscores == SC_HDR_US_DROP)
            return 0;
        if (cfg->limits.header_underscores == SC_HDR_US_REJECT) {
            sc_conn *c = &d->super;
            SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_SYNTAX]);
            SC_WARN_LIMITED(&c->route->log_limit,
                            "%s listener: HTTP/2 caller %s sent request trailer '%.*s' with '_' in its name "
                            "(limits.header_underscores: reject): stream reset", c->route->name, c->peer_text,
                            (int)SC_MIN(namelen, 64), n);
            return reset_stream(d, s, NGHTTP2_PROTOCOL_ERROR);
        }
    }
    return sc_pipe_add_trailer_lower(s, &s->reqp, n, namelen, v, valuelen, flags) < 0 ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
                                                                                 : 0;
}

/* A pseudo-header of the request head (nghttp2 checked their syntax, order
 * and uniqueness; CONNECT comes without :path and :scheme). */
static int on_pseudo(sc_down_conn *d, sc_stream *s, const uint8_t *name, size_t namelen, const uint8_t *value,
                     size_t valuelen)
{
    sc_msg *m = &s->req;
    if (sc_lit_eq(name, namelen, ":method") && sc_lit_eq(value, valuelen, "HEAD"))
        s->flags |= SC_ST_F_HEAD_REQ;
    if (sc_lit_eq(name, namelen, ":protocol")) {
        set_verdict(s, HEAD_EXT_CONNECT); /* extended CONNECT (RFC 8441): not proxied */
        return 0;
    }
    if (caller_denied(d, s))
        return 0;
    const char **dst = NULL;
    size_t *dst_len = NULL;
    if (sc_lit_eq(name, namelen, ":method")) {
        dst = &m->method;
        dst_len = &m->method_len;
    } else if (sc_lit_eq(name, namelen, ":path")) {
        dst = &m->path;
        dst_len = &m->path_len;
    } else if (sc_lit_eq(name, namelen, ":authority")) {
        dst = &m->authority;
        dst_len = &m->authority_len;
    } else if (sc_lit_eq(name, namelen, ":scheme")) {
        dst = &m->scheme;
    } else {
        return 0;
    }
    char *dup = sc_arena_dup(&s->arena, (const char *)value, valuelen);
    if (!dup)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    *dst = dup;
    if (dst_len)
        *dst_len = valuelen;
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name, size_t namelen,
                     const uint8_t *value, size_t valuelen, uint8_t flags, void *user_data)
{
    (void)session;
    sc_down_conn *d = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    sc_stream *s = get_stream(d, frame->hd.stream_id);
    if (!s)
        return 0;
    const sc_config *cfg = s->w->sc->cfg;
    const char *n = (const char *)name, *v = (const char *)value;
    bool trailer = frame->headers.cat != NGHTTP2_HCAT_REQUEST;
    uint64_t limit = cfg->limits.max_header_bytes;
    uint32_t total = sc_hdr_list_add(&s->down_hdr_bytes, namelen, valuelen);
    sc_msg *m = &s->req;
    if (total > limit) {
        if (sc_lit_eq(name, namelen, "content-type") && sc_grpc_is_content_type(v, valuelen))
            m->is_grpc = true; /* the answer speaks the caller's protocol */
        bool first = s->down_hdr_verdict != HEAD_TOO_LARGE;
        if (!trailer && total <= HEAD_DECODE_FACTOR * limit) {
            s->down_hdr_verdict = HEAD_TOO_LARGE; /* answered 431 once the head is complete */
            if (first && oversized_flood(d))
                return reset_stream(d, s, NGHTTP2_ENHANCE_YOUR_CALM);
            return 0;
        }
        if (first)
            oversized_flood(d);
        sc_conn *c = &d->super;
        SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_TOO_LARGE]);
        SC_WARN_LIMITED(&c->route->log_limit,
                        "%s listener: HTTP/2 caller %s sent request %s over %llu bytes (limits.max_header_bytes "
                        "%llu, counted as HPACK does): stream reset", c->route->name, c->peer_text,
                        trailer ? "trailers" : "header fields", (unsigned long long)total, (unsigned long long)limit);
        return reset_stream(d, s, NGHTTP2_PROTOCOL_ERROR);
    }
    if (trailer)
        return on_trailer(d, s, n, namelen, v, valuelen, flags);
    if (namelen && n[0] == ':')
        return on_pseudo(d, s, name, namelen, value, valuelen);
    if (sc_lit_eq(name, namelen, "content-type") && sc_grpc_is_content_type(v, valuelen))
        m->is_grpc = true;
    if (caller_denied(d, s) || s->down_hdr_verdict != HEAD_OK)
        return 0; /* refused anyway: nothing more of it is kept */
    if (sc_lit_eq(name, namelen, "content-length")) {
        int64_t cl = 0;
        for (size_t i = 0; i < valuelen; i++)
            cl = cl * 10 + (v[i] - '0'); /* nghttp2 validated the digits */
        m->content_length = cl;
        return 0;
    }
    if (sc_lit_eq(name, namelen, "host")) {
        if (!m->authority) {
            if (!(m->authority = sc_arena_dup(&s->arena, v, valuelen)))
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            m->authority_len = valuelen;
        }
        return 0;
    }
    if (sc_lit_eq(name, namelen, "te"))
        s->down_te_trailers = true;
    if (sc_hdr_aliases(n, namelen, cfg->tls.identity_header) ||
        (s->route->inbound && sc_jwt_header_reserved(cfg->inbound.jwt, n, namelen)))
        return 0; /* only ever set by the sidecar (verified certificate, JWT claims), in any spelling an app reads */
    if (sc_hdr_has_underscore(n, namelen)) {
        if (cfg->limits.header_underscores == SC_HDR_US_DROP)
            return 0;
        if (cfg->limits.header_underscores == SC_HDR_US_REJECT) {
            set_verdict(s, HEAD_BAD_NAME);
            return 0;
        }
    }
    return sc_msg_add_lower(s, m, n, namelen, v, valuelen, flags) < 0 ? NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE : 0;
}

/* RFC 9113 8.2.3: a caller may split `cookie` into several fields; HTTP/1.1
 * allows one, so they become one, joined with "; " (as fine for HTTP/2
 * upstreams). The joined value takes the first one's place. */
static int join_cookies(sc_stream *s)
{
    sc_msg *m = &s->req;
    size_t n = 0, len = 0;
    for (size_t i = 0; i < m->n_hdrs; i++)
        if (sc_lit_eq(m->hdrs[i].name, m->hdrs[i].namelen, "cookie")) {
            n++;
            len += m->hdrs[i].valuelen;
        }
    if (n < 2)
        return 0;
    char *joined = sc_arena_alloc(&s->arena, len + 2 * (n - 1) + 1);
    if (!joined)
        return -ENOMEM;
    size_t off = 0, k = 0;
    nghttp2_nv *first = NULL;
    for (size_t i = 0; i < m->n_hdrs; i++) {
        nghttp2_nv nv = m->hdrs[i];
        if (sc_lit_eq(nv.name, nv.namelen, "cookie")) {
            if (off) {
                memcpy(joined + off, "; ", 2);
                off += 2;
            }
            memcpy(joined + off, nv.value, nv.valuelen);
            off += nv.valuelen;
            if (first)
                continue;
            first = &m->hdrs[k];
        }
        m->hdrs[k++] = nv;
    }
    joined[off] = 0;
    first->value = (uint8_t *)joined;
    first->valuelen = off;
    m->n_hdrs = k;
    return 0;
}

/* Why a decoded request head is not forwarded: SC_FAIL_NONE when it goes. */
static sc_fail head_refusal(const sc_stream *s, sc_bad_req_kind *kind, const char **what)
{
    const sc_msg *m = &s->req;
    switch (s->down_hdr_verdict) {
    case HEAD_TOO_LARGE:
        *kind = SC_BAD_REQ_TOO_LARGE;
        *what = "request header fields larger than limits.max_header_bytes (counted as HPACK does)";
        return SC_FAIL_HEADERS_TOO_LARGE;
    case HEAD_BAD_NAME:
        *kind = SC_BAD_REQ_SYNTAX;
        *what = "a request header name contains '_' (limits.header_underscores: reject)";
        return SC_FAIL_BAD_REQUEST;
    case HEAD_EXT_CONNECT:
        *kind = SC_BAD_REQ_UNSUPPORTED;
        *what = "extended CONNECT (:protocol) is not proxied";
        return SC_FAIL_METHOD_UNSUPPORTED;
    default:
        break;
    }
    if (m->method && sc_lit_eq(m->method, m->method_len, "CONNECT")) {
        *kind = SC_BAD_REQ_UNSUPPORTED;
        *what = "CONNECT is not proxied";
        return SC_FAIL_METHOD_UNSUPPORTED;
    }
    *kind = SC_BAD_REQ_SYNTAX;
    if (!m->method || !m->path || !m->scheme || !m->path_len) {
        *what = "request without :method, :scheme or :path";
        return SC_FAIL_BAD_REQUEST;
    }
    if (m->path[0] != '/' && !(m->path_len == 1 && m->path[0] == '*' &&
                               sc_lit_eq(m->method, m->method_len, "OPTIONS"))) {
        *what = ":path is neither an absolute path nor '*' (OPTIONS)";
        return SC_FAIL_BAD_REQUEST;
    }
    return SC_FAIL_NONE;
}

/* The caller's request head is complete: refuse it, or start it. */
static int request_head_done(sc_down_conn *d, sc_stream *s)
{
    sc_conn *c = &d->super;
    sc_msg *m = &s->req;
    m->head_done = true;
    if (!m->authority)
        m->authority = "";
    if (caller_denied(d, s)) {
        sc_stream_start(s); /* answered 403 by tls.allow */
        return 0;
    }
    sc_bad_req_kind kind;
    const char *what = NULL;
    sc_fail why = head_refusal(s, &kind, &what);
    if (why != SC_FAIL_NONE) {
        SC_STAT_INC(c->w->stats->bad_requests[kind]);
        SC_WARN_LIMITED(&c->route->log_limit, "%s listener: refused HTTP/2 request from %s: %s", c->route->name,
                        c->peer_text, what);
        sc_stream_refuse(s, why);
        return 0;
    }
    if (join_cookies(s) < 0)
        return reset_stream(d, s, NGHTTP2_INTERNAL_ERROR);
    if (d->caller.identity && s->route->inbound) {
        /* Without it the app would take the request for an unauthenticated one: no request rather than that. */
        const char *idh = s->w->sc->cfg->tls.identity_header;
        if (sc_msg_add(s, m, idh, strlen(idh), d->caller.identity, strlen(d->caller.identity)) < 0)
            return reset_stream(d, s, NGHTTP2_INTERNAL_ERROR);
    }
    if (s->reqp.eof && m->content_length < 0 &&
        !(sc_lit_eq(m->method, m->method_len, "GET") || sc_lit_eq(m->method, m->method_len, "HEAD")))
        m->content_length = 0;
    sc_stream_start(s);
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    (void)session;
    sc_stream *s;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS:
        s = get_stream(user_data, frame->hd.stream_id);
        if (!s)
            return 0;
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            s->reqp.eof = true;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            int rv = request_head_done(user_data, s);
            return rv == NGHTTP2_ERR_CALLBACK_FAILURE ? rv : 0;
        }
        sc_stream_req_progress(s);
        break;
    case NGHTTP2_DATA:
        s = get_stream(user_data, frame->hd.stream_id);
        if (s && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
            s->reqp.eof = true;
            sc_stream_req_progress(s);
        }
        break;
    default:
        break;
    }
    return 0;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t sid, const uint8_t *data, size_t len,
                         void *user_data)
{
    (void)flags;
    sc_stream *s = get_stream(user_data, sid);
    if (!s || sc_stream_up_done(s)) {
        /* Nobody will read it: give the window back at once. */
        nghttp2_session_consume(session, sid, len);
        return 0;
    }
    if (sc_pipe_put(s, &s->reqp, data, len) < 0) {
        /* More than the window we granted: the peer broke flow control. */
        return nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, sid, NGHTTP2_FLOW_CONTROL_ERROR) == 0
                   ? 0 : NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    s->down_unconsumed += (uint32_t)len;
    sc_stream_req_progress(s);
    return 0;
}

#define H2_RESET_BURST 1000
#define H2_RESET_RATE 33

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    sc_down_conn *d = user_data;
    if (frame->hd.type == NGHTTP2_GOAWAY && !d->goaway_sent &&
        (frame->goaway.error_code == NGHTTP2_INTERNAL_ERROR || frame->goaway.error_code == NGHTTP2_ENHANCE_YOUR_CALM)) {
        /* Not ours (drain sends NO_ERROR): nghttp2 ended the session itself,
         * which it does when the caller resets streams faster than the
         * stream reset rate limit ("rapid reset", CVE-2023-44487). */
        d->goaway_sent = true;
        sc_conn *c = &d->super;
        SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_H2_FLOOD]);
        SC_WARN_LIMITED(&c->route->log_limit,
                        "%s listener: HTTP/2 caller %s reset streams faster than %d/s (burst %d): GOAWAY, "
                        "no new streams on this connection", c->route->name, c->peer_text, H2_RESET_RATE,
                        H2_RESET_BURST);
    }
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        sc_stream *s = get_stream(d, frame->hd.stream_id);
        if (s) {
            s->flags |= SC_ST_F_DOWN_RESP_END;
            /* Response complete while the caller still sends: tell it to stop. */
            if (!s->reqp.eof &&
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_NO_ERROR) != 0)
                return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t sid, uint32_t error_code, void *user_data)
{
    (void)session;
    (void)error_code;
    sc_down_conn *d = user_data;
    sc_stream *s = get_stream(d, sid);
    if (s)
        detach(d, s, !(s->flags & SC_ST_F_DOWN_RESP_END));
    return 0;
}

static ssize_t read_body(nghttp2_session *session, int32_t sid, uint8_t *buf, size_t length, uint32_t *data_flags,
                         nghttp2_data_source *source, void *user_data)
{
    sc_stream *s = source->ptr;
    if (!s || get_stream(user_data, sid) != s)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = SC_MIN(length, sc_buf_len(&s->respp.buf));
    if (n) {
        memcpy(buf, sc_buf_head(&s->respp.buf), n);
        sc_buf_consume(&s->respp.buf, n);
        sc_stream_resp_drained(s, n);
    }
    if (sc_buf_len(&s->respp.buf) == 0 && s->respp.eof) {
        *data_flags |= NGHTTP2_DATA_FLAG_EOF;
        if (s->respp.n_trailers) {
            /* Not queued (out of memory): reset rather than leave the stream open for ever. */
            if (nghttp2_submit_trailer(session, sid, s->respp.trailers, s->respp.n_trailers) != 0)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
            *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        }
        return (ssize_t)n;
    }
    if (n == 0) {
        if (s->fail && !s->respp.eof)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* upstream died mid-body: RST */
        s->flags |= SC_ST_F_DEFERRED_DOWN;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

static bool resp_hop(const nghttp2_nv *nv)
{
    return sc_lit_set_has(&hop_fields, nv->name, nv->namelen);
}

static int submit_head(sc_down_conn *d, sc_stream *s)
{
    nghttp2_nv stack[64];
    size_t n = s->resp.n_hdrs + 2;
    nghttp2_nv *nva = n <= SC_ARRAY_LEN(stack) ? stack : sc_arena_alloc(&s->arena, n * sizeof(*nva));
    if (!nva)
        return -ENOMEM;
    /* Numbers by hand: snprintf was 1,350 instructions of a ~37k-instruction gRPC call. */
    char status[24], cl[24];
    size_t status_len = sc_fmt_u64(status, (uint64_t)(s->resp.status > 0 ? s->resp.status : 0));
    size_t k = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, status_len, NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < s->resp.n_hdrs; i++)
        if (!resp_hop(&s->resp.hdrs[i]))
            nva[k++] = s->resp.hdrs[i];
    bool no_body = (s->flags & SC_ST_F_HEAD_REQ) || s->resp.status == 204 || s->resp.status == 304;
    if (s->resp.content_length >= 0 && s->resp.status != 204) {
        size_t cl_len = sc_fmt_u64(cl, (uint64_t)s->resp.content_length);
        nva[k++] = (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)cl, 14, cl_len, NGHTTP2_NV_FLAG_NONE};
    }
    int rv;
    if (no_body || (s->respp.eof && sc_buf_len(&s->respp.buf) == 0 && s->respp.n_trailers == 0)) {
        rv = nghttp2_submit_response(d->h2, s->down_sid, nva, k, NULL);
        sc_buf_release(s->w, &s->respp.buf);
    } else {
        nghttp2_data_provider prd = {.source.ptr = s, .read_callback = read_body};
        rv = nghttp2_submit_response(d->h2, s->down_sid, nva, k, &prd);
    }
    if (rv < 0)
        return -EPROTO;
    s->flags |= SC_ST_F_DOWN_HEAD_SENT;
    return 0;
}

/* Ends a caller's stream abnormally; without memory for the RST_STREAM the
 * connection goes (a stream nobody ends would hold the caller forever). */
static void abort_stream(sc_down_conn *d, sc_stream *s)
{
    if (nghttp2_submit_rst_stream(d->h2, NGHTTP2_FLAG_NONE, s->down_sid, NGHTTP2_INTERNAL_ERROR) != 0)
        sc_conn_close_after_flush(&d->super);
}

static void stream_event(sc_stream *s)
{
    sc_down_conn *d = SC_DOWN(s->down);
    if (!s->resp.head_done)
        return;
    if (!(s->flags & SC_ST_F_DOWN_HEAD_SENT)) {
        if (submit_head(d, s) < 0)
            abort_stream(d, s);
    } else if (s->fail && !s->respp.eof) {
        abort_stream(d, s);
    } else if (s->flags & SC_ST_F_DEFERRED_DOWN) {
        s->flags &= ~SC_ST_F_DEFERRED_DOWN;
        nghttp2_session_resume_data(d->h2, s->down_sid);
    }
    sc_conn_mark_dirty(&d->super);
}

static void informational(sc_stream *s, int status, const nghttp2_nv *nv, size_t n)
{
    if (status == 100 || status == 101 || n > 60)
        return;
    sc_down_conn *d = SC_DOWN(s->down);
    nghttp2_nv nva[64];
    char st[8];
    snprintf(st, sizeof(st), "%d", status);
    size_t k = 0;
    nva[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)st, 7, strlen(st), NGHTTP2_NV_FLAG_NONE};
    for (size_t i = 0; i < n; i++)
        if (!resp_hop(&nv[i]))
            nva[k++] = nv[i];
    if (nghttp2_submit_headers(d->h2, NGHTTP2_FLAG_NONE, s->down_sid, NULL, nva, k, NULL) < 0)
        return; /* informational only: the final response still follows */
    sc_conn_mark_dirty(&d->super);
}

/* nghttp2 refused the caller's bytes (rv < 0): counted and logged; the caller closes. */
static void recv_failed(sc_conn *c, int rv)
{
    if (rv == NGHTTP2_ERR_FLOODED) {
        /* It sent PING/SETTINGS (or frames we must answer) faster than it
         * read our answers: nghttp2 stops queueing answers past its limit. */
        SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_H2_FLOOD]);
        SC_WARN_LIMITED(&c->route->log_limit,
                        "%s listener: HTTP/2 flood from %s: control frames that need an answer come faster "
                        "than it reads the answers; connection closed", c->route->name, c->peer_text);
    } else {
        SC_STAT_INC(c->w->stats->bad_requests[SC_BAD_REQ_H2_PROTOCOL]);
        SC_DEBUG("%s listener: HTTP/2 protocol error from %s: %s", c->route->name, c->peer_text, nghttp2_strerror(rv));
    }
}

static void on_readable(sc_conn *c)
{
    SC_DOWN(c)->io_seen = true;
    int rv = sc_h2_feed(c, SC_DOWN(c)->h2, 0);
    if (rv < 0) {
        recv_failed(c, rv);
        sc_conn_close(c, -EPROTO);
    }
}

static int produce(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    int rv = sc_h2_produce(c, d->h2);
    if (rv < 0)
        return rv;
    if (!nghttp2_session_want_read(d->h2) && !nghttp2_session_want_write(d->h2) && sc_buf_len(&c->out) == 0 &&
        !c->pend_len)
        return -ECONNRESET; /* both sides said goodbye */
    return 0;
}

static void on_drained(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    if (d->goaway_sent && d->n_streams == 0)
        sc_conn_close(c, 0);
}

static void on_close(sc_conn *c, int err)
{
    (void)err;
    sc_down_conn *d = SC_DOWN(c);
    free(d->caller.identity);
    d->caller.identity = NULL;
    if (d->h2) {
        /* Each live stream is told its caller is gone. */
        sc_link *l = c->w->streams.next;
        while (l != &c->w->streams) {
            sc_stream *s = SC_CONTAINER_OF(l, sc_stream, wlink);
            l = l->next;
            if (s->down == c && !(s->flags & SC_ST_F_DOWN_DONE)) {
                d->n_streams--;
                sc_stream_downstream_done(s, true);
            }
        }
        nghttp2_session_del(d->h2);
        d->h2 = NULL;
    }
    untrim(d);
    free(d->h2mem);
    d->h2mem = NULL;
    c->w->n_down_conns--;
    SC_STAT_DEC(c->w->stats->down_conns);
}

static void idle_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_conn *c = SC_CONTAINER_OF(t, sc_conn, timer);
    sc_down_conn *d = SC_DOWN(c);
    if (d->n_streams) {
        /* Streams are open (a call held open, an answer awaited): once the
         * connection has read nothing for a whole period, its frame buffer
         * goes back as on an idle one. Nothing to write is trim()'s rule;
         * a frame written later faults its page in again. Trimmed once per
         * quiet spell (the next stream, or the last one ending, re-arms);
         * while trim() refuses (output pending), looked at again. */
        bool seen = d->io_seen;
        d->io_seen = false;
        if (!seen && !d->trimmed && trim(d)) {
            d->trimmed = true;
            SC_STAT_INC(c->w->stats->h2_idle_trimmed);
            return;
        }
        if (!d->trimmed) {
            ev_timer_set(&c->timer, (double)TRIM_AFTER_MS / 1000.0, 0);
            ev_timer_start(c->w->loop, &c->timer);
        }
        return;
    }
    if (!d->trim_checked) {
        d->trim_checked = true;
        if (trim(d)) {
            d->trimmed = true;
            SC_STAT_INC(c->w->stats->h2_idle_trimmed);
        }
        arm_idle(c); /* the rest of the idle timeout, if any */
        return;
    }
    /* Closed after the flush with or without the GOAWAY (no memory for it). */
    (void)nghttp2_submit_goaway(d->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(d->h2),
                                NGHTTP2_NO_ERROR, NULL, 0);
    d->goaway_sent = true;
    sc_conn_close_after_flush(c);
}

static void consumed(sc_stream *s, size_t n)
{
    n = SC_MIN(n, s->down_unconsumed);
    s->down_unconsumed -= (uint32_t)n;
    nghttp2_session_consume(SC_DOWN(s->down)->h2, s->down_sid, n);
    sc_conn_mark_dirty(s->down);
}

static void drain(sc_conn *c);

const sc_down_codec sc_down_h2_codec = {
    .name = "http2",
    .flags = SC_DOWN_CODEC_TRAILERS,
    .stream_event = stream_event,
    .informational = informational,
    .consumed = consumed,
    .drain = drain,
};

static const sc_conn_ops down_h2_ops = {
    .down = &sc_down_h2_codec,
    .on_readable = on_readable,
    .produce = produce,
    .on_close = on_close,
    .on_drained = on_drained,
};

static nghttp2_session_callbacks *g_callbacks;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void init_callbacks(void)
{
    g_trim_ok = sysconf(_SC_PAGESIZE) == (long)H2MEM_PAGE;
    /* Which block is the frame buffer was read from nghttp2 1.52's session
     * creation: with another minor version only all-zero pages are handed
     * back (those are safe whatever the blocks are). */
    g_framebuf_known = (nghttp2_version(0)->version_num >> 8) == FRAMEBUF_VERSION;
    nghttp2_session_callbacks_new(&g_callbacks);
    nghttp2_session_callbacks_set_on_begin_headers_callback(g_callbacks, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(g_callbacks, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(g_callbacks, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(g_callbacks, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(g_callbacks, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(g_callbacks, on_stream_close);
}

/* A legitimate header block of limits.max_header_bytes needs about that
 * many bytes on the wire: this many CONTINUATION frames of 16 KiB, plus
 * slack. More is a CONTINUATION flood (CVE-2024-28182): connection error. */
#define H2_FRAME_PAYLOAD 16384
#define CONTINUATION_SLACK 8

/* nghttp2 1.61 added it (CVE-2024-28182); Debian 12 backports it to 1.52.
 * Weak, so that a library without it still links (the header-list
 * accounting above then bounds the memory, and the work stays proportional
 * to the bytes received). */
extern void nghttp2_option_set_max_continuations(nghttp2_option *option, size_t val) __attribute__((weak));

nghttp2_option *sc_h2_session_option(const sc_config *cfg)
{
    nghttp2_option *o;
    if (nghttp2_option_new(&o) != 0)
        return NULL;
    nghttp2_option_set_no_auto_window_update(o, 1);
    if (nghttp2_option_set_max_continuations)
        nghttp2_option_set_max_continuations(o, cfg->limits.max_header_bytes / H2_FRAME_PAYLOAD + CONTINUATION_SLACK);
    /* Header blocks we send carry at most limits.max_header_bytes of fields
     * (both sides enforce it on what they receive) plus the few the sidecar
     * adds; nghttp2's own cap (64 KiB) would refuse larger ones. An HPACK
     * block is never larger than the list it encodes (12 + 12 per field of
     * overhead at most, where the list counts 32). */
    nghttp2_option_set_max_send_header_block_length(o, SC_MAX((size_t)65536,
                                                              (size_t)cfg->limits.max_header_bytes + 16384));
    return o;
}

int sc_down_h2_upgrade(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    pthread_once(&g_once, init_callbacks);
    const sc_config *cfg = c->w->sc->cfg;
    nghttp2_option *opt = sc_h2_session_option(cfg);
    if (!opt)
        return -ENOMEM;
    /* Callers' floods (nghttp2's defaults, spelled out): at most 1000 queued
     * answers to PING/SETTINGS (else NGHTTP2_ERR_FLOODED), and stream resets
     * by the caller limited to a burst of H2_RESET_BURST refilled at
     * H2_RESET_RATE per second (else GOAWAY; see on_frame_send). */
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_stream_reset_rate_limit(opt, H2_RESET_BURST, H2_RESET_RATE);
    /* A closed stream is forgotten at once: nghttp2 would otherwise keep it
     * (and its slot in the stream table) for the RFC 7540 priority tree,
     * which the sidecar does not use, so an idle connection would hold the
     * last stream it carried. */
    nghttp2_option_set_no_closed_streams(opt, 1);
    sc_h2_mem *m = calloc(1, sizeof(*m));
    if (!m) {
        nghttp2_option_del(opt);
        return -ENOMEM;
    }
    *m = (sc_h2_mem){.mem = {m, h2mem_malloc, h2mem_free, h2mem_calloc, h2mem_realloc}, .pool = &c->w->h2pool,
                     .framebuf = -1,
                     .creating = true};
    d->h2mem = m;
    int rv0 = nghttp2_session_server_new3(&d->h2, g_callbacks, d, opt, &m->mem);
    m->creating = false;
    nghttp2_option_del(opt);
    if (rv0 != 0) {
        free(m);
        d->h2mem = NULL;
        return -ENOMEM;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg->limits.h2_max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cfg->limits.stream_buffer},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cfg->limits.max_header_bytes},
    };
    if (nghttp2_submit_settings(d->h2, NGHTTP2_FLAG_NONE, iv, SC_ARRAY_LEN(iv)) != 0 ||
        nghttp2_session_set_local_window_size(d->h2, NGHTTP2_FLAG_NONE, 0, CONN_WINDOW) != 0) {
        /* Out of memory: without our SETTINGS the caller would wait for ever. */
        nghttp2_session_del(d->h2);
        d->h2 = NULL;
        free(d->h2mem);
        d->h2mem = NULL;
        return -ENOMEM;
    }
    c->ops = &down_h2_ops;
    ev_timer_stop(c->w->loop, &c->timer);
    sc_conn_deadline_clear(c); /* HTTP/2 runs the timer itself (arm_idle) */
    c->timer_at_ns = 0;
    ev_set_cb(&c->timer, idle_cb);
    arm_idle(c);
    if (sc_buf_len(&c->in)) {
        ssize_t rv = nghttp2_session_mem_recv(d->h2, (const uint8_t *)sc_buf_head(&c->in), sc_buf_len(&c->in));
        sc_buf_release(c->w, &c->in);
        if (rv < 0) {
            recv_failed(c, (int)rv);   /* the bytes read before the switch to HTTP/2 */
            return -EPROTO;
        }
    }
    sc_conn_mark_dirty(c);
    return 0;
}

static void drain(sc_conn *c)
{
    sc_down_conn *d = SC_DOWN(c);
    if (d->goaway_sent)
        return;
    /* Without memory for it, no GOAWAY: new streams are refused anyway while draining (on_begin_headers). */
    (void)nghttp2_submit_goaway(d->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(d->h2),
                                NGHTTP2_NO_ERROR, NULL, 0);
    d->goaway_sent = true;
    sc_conn_mark_dirty(c);
    if (d->n_streams == 0)
        sc_conn_close_after_flush(c);
}

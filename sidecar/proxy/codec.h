/*
 * codec.h: how a stream reaches the protocols. Each side of an exchange is
 * one codec behind a table of operations, so the stream logic (stream.c,
 * attempt.c, fail.c) never names HTTP/1 or HTTP/2:
 *
 *   downstream (the caller's connection): down_h1.c, down_h2.c; a stream
 *   keeps its caller's codec in s->dc (a connection that switches from
 *   HTTP/1 to HTTP/2 does so before it carries a stream);
 *
 *   upstream (towards the instances): up_h1.c, up_h2.c; chosen once per
 *   route from route->protocol (sc_up_codec_for) into route->uc.
 *
 * The codecs tell the stream what happened through the sc_stream_* calls of
 * stream.h (head done, body progress, failed, done); the stream tells the
 * codecs through these tables. Every operation runs on the stream's worker
 * thread and may be called only while that side is attached (s->down set and
 * not SC_ST_F_DOWN_DONE; s->up set and the phase not DONE), except attach.
 *
 * Private to sidecar/proxy/.
 */
#ifndef SC_CODEC_H
#define SC_CODEC_H

#include "proxy/stream.h"

enum {
    /* A response whose head went out can still end with trailers (HTTP/2):
     * a gRPC call that fails mid-body ends with grpc-status instead of a reset. */
    SC_DOWN_CODEC_TRAILERS = 1u << 0,
};

typedef struct sc_down_codec {
    const char *name;
    uint32_t flags;                 /* SC_DOWN_CODEC_* */
    /* Response head, body bytes, end or failure (s->fail with the head out)
     * are ready in s->resp / s->respp: write what the connection can take. */
    void (*stream_event)(sc_stream *s);
    /* An informational (1xx) response to forward before the final head. */
    void (*informational)(sc_stream *s, int status, const nghttp2_nv *nv, size_t n);
    /* The upstream side took n request body bytes from s->reqp: reopen the
     * caller's flow (HTTP/2 WINDOW_UPDATE, HTTP/1 resume reading). */
    void (*consumed)(sc_stream *s, size_t n);
    /* The worker drains: finish what is in progress, take no more requests,
     * close (GOAWAY for HTTP/2, connection: close for HTTP/1). */
    void (*drain)(sc_conn *c);
} sc_down_codec;

typedef struct sc_up_codec {
    const char *name;
    /* Sends the stream's request to the instance in s->up_addr: reuses a
     * pooled connection or opens one (upconn.c). Failures are reported with
     * sc_stream_upstream_failed, possibly before this returns. */
    void (*attach)(sc_stream *s);
    /* More request body (or its end) is in s->reqp, or room freed: send. */
    void (*stream_event)(sc_stream *s);
    /* The caller took n response body bytes from s->respp: reopen the
     * upstream's flow (HTTP/2 WINDOW_UPDATE, HTTP/1 resume reading). */
    void (*consumed)(sc_stream *s, size_t n);
    /* The attempt is abandoned (caller gone, timeout, retry): detach from the
     * connection (RST_STREAM for HTTP/2; HTTP/1 closes it, mid-exchange it
     * cannot be reused). Sets s->up to NULL. */
    void (*cancel)(sc_stream *s);
} sc_up_codec;

extern const sc_down_codec sc_down_h1_codec, sc_down_h2_codec;
extern const sc_up_codec sc_up_h1_codec, sc_up_h2_codec;

/* The upstream codec for a route's protocol towards its instances. */
const sc_up_codec *sc_up_codec_for(sc_proto p);

/* down_h1.c: a caller's new connection (every listener speaks HTTP/1.1 and
 * h2c prior knowledge; TLS when the route is inbound and a server context
 * is configured). Takes the descriptor. */
void sc_down_accept(sc_worker *w, sc_route *route, int fd, const struct sockaddr *sa, socklen_t len);
/* down_h2.c: takes over a caller's connection that began with the HTTP/2
 * preface or chose h2 by ALPN (no stream on it yet). */
int sc_down_h2_upgrade(sc_conn *c);

#endif

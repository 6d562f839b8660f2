/*
 * hdr.h: header-name rules shared by every codec, on both sides of the proxy.
 * Pure functions: no I/O, no allocation.
 *
 * Why names need more than a case-insensitive compare: CGI, WSGI, Rack and PHP
 * turn a header name into an environment key by upper-casing it and mapping
 * '-' to '_', so `X_Sidecar_Caller` and `x-sidecar-caller` both reach the app
 * as HTTP_X_SIDECAR_CALLER. A header the sidecar alone may set (the caller's
 * verified identity, later JWT claims) must therefore be removed in every
 * spelling that normalises to it, not only in its canonical one.
 */
#ifndef SC_HDR_H
#define SC_HDR_H

#include "core/common.h"

/* What to do with a request header whose name contains '_' (limits.header_underscores). */
typedef enum {
    SC_HDR_US_ALLOW = 0,    /* forward it (RFC 9110 allows '_' in a token) */
    SC_HDR_US_DROP,         /* remove it, forward the request */
    SC_HDR_US_REJECT,       /* refuse the request: 400 (HTTP/1) / stream reset (HTTP/2) */
} sc_hdr_underscores;

/* True when `name` (any case, '-' or '_') names `canon` (lower case, '-')
 * the way CGI-style frameworks read it. */
bool sc_hdr_aliases(const char *name, size_t len, const char *canon);

/* True when `name` contains '_'. */
bool sc_hdr_has_underscore(const char *name, size_t len);

/* The hop-by-hop fields (RFC 9110 7.6.1, RFC 9113 8.2.2; proxy-connection
 * too, which old clients send), never passed from one connection to the
 * next, as X-macro lists for SC_LIT_SET (core/common.h): each codec's set
 * is this list and the fields it writes itself. `te` apart, for HTTP/2
 * upstreams, which keep "te: trailers". */
#define SC_HDR_HOP_BY_HOP_BUT_TE(X)                                                                             \
    X("connection") X("keep-alive") X("proxy-connection") X("transfer-encoding") X("upgrade") X("trailer")
#define SC_HDR_HOP_BY_HOP(X) SC_HDR_HOP_BY_HOP_BUT_TE(X) X("te")

#endif

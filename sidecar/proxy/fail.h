/*
 * fail.h: why a request did not get (all of) an upstream's response, and
 * everything that follows from it, in one table indexed by the failure kind:
 * the HTTP status and gRPC status the caller gets, the x-sidecar-reason
 * value, the text of the answer, the per-route counter bumped, and the
 * conditions it counts as for retries, the circuit breaker and outlier
 * detection (resilience/, SC_COND_* in config/config.h).
 *
 * A failure is raised with sc_stream_upstream_failed(s, kind) (stream.h);
 * whoever raises it may give the answer a more precise text first
 * (sc_stream_fail_msg). The sidecar's own answers are built here
 * (sc_fail_answer): in the caller's protocol, with the route's fallback
 * when the circuit breaker refused the call and the policy has one.
 *
 * Private to sidecar/proxy/ and its admission stages. No allocation except
 * into the stream's arena and pipe.
 */
#ifndef SC_FAIL_H
#define SC_FAIL_H

#include "config/config.h"
#include "core/common.h"

#include <stdint.h>

typedef struct sc_stream sc_stream;

typedef enum {
    SC_FAIL_NONE = 0,
    SC_FAIL_NO_INSTANCE,            /* 503 / UNAVAILABLE */
    SC_FAIL_CONNECT,                /* 503 / UNAVAILABLE */
    SC_FAIL_CONNECT_TIMEOUT,        /* 503 / UNAVAILABLE */
    SC_FAIL_RESET,                  /* 502 / UNAVAILABLE: upstream reset or closed */
    SC_FAIL_PROTOCOL,               /* 502 / INTERNAL: upstream sent garbage */
    SC_FAIL_TIMEOUT,                /* 504 / DEADLINE_EXCEEDED */
    SC_FAIL_DRAINING,               /* 503 / UNAVAILABLE */
    SC_FAIL_OVERLOAD,               /* 503 / RESOURCE_EXHAUSTED: bulkhead full */
    SC_FAIL_QUEUE_TIMEOUT,          /* 503 / RESOURCE_EXHAUSTED: waited too long in the bulkhead queue */
    SC_FAIL_CIRCUIT_OPEN,           /* 503 / UNAVAILABLE, or the policy's fallback */
    SC_FAIL_TRY_TIMEOUT,            /* 504 / DEADLINE_EXCEEDED: timeouts.per_try (retriable) */
    SC_FAIL_REFUSED_STREAM,         /* 503 / UNAVAILABLE: the upstream refused the stream */
    SC_FAIL_FORBIDDEN,              /* 403 / PERMISSION_DENIED: caller identity not allowed */
    SC_FAIL_AUTHZ_UNAVAILABLE,      /* 503 / UNAVAILABLE: Consul could not say whether the caller may call */
    SC_FAIL_JWT_UNAUTHENTICATED,    /* 401 / UNAUTHENTICATED: inbound.jwt: no usable token (missing, malformed,
                                     * expired, unverifiable); x-sidecar-reason names why (jwt-*) */
    SC_FAIL_JWT_FORBIDDEN,          /* 403 / PERMISSION_DENIED: a valid token without the rule's claims / scopes */
    SC_FAIL_RATE_LIMITED,           /* 429 / RESOURCE_EXHAUSTED: a rate limit's bucket is empty */
    SC_FAIL_RATE_LIMIT_UNAVAILABLE, /* 503 / UNAVAILABLE: Redis could not decide a global limit (on_error: deny) */
    /* Refused before it went anywhere (the request itself is at fault): */
    SC_FAIL_HEADERS_TOO_LARGE,      /* 431 / RESOURCE_EXHAUSTED: header fields beyond limits.max_header_bytes,
                                     * or beyond what the upstream accepts (its SETTINGS_MAX_HEADER_LIST_SIZE) */
    SC_FAIL_METHOD_UNSUPPORTED,     /* 501 / UNIMPLEMENTED: CONNECT (plain or extended) is not proxied */
    SC_FAIL_BAD_REQUEST,            /* 400 / INTERNAL: refused header name (limits.header_underscores: reject),
                                     * missing or unusable :path / :scheme */
    SC_FAIL_NO_MEMORY,              /* 503 / RESOURCE_EXHAUSTED: an allocation for the exchange failed */
    SC_FAIL_KINDS
} sc_fail;

enum {
    /* The request itself is at fault: the answer names the listener
     * ("<route> listener: ..."), not the upstream. */
    SC_FAIL_F_REQUEST = 1u << 0,
    /* Expected under load (shedding, no instance): not logged per request. */
    SC_FAIL_F_QUIET = 1u << 1,
};

/* No counter of sc_route_stats is bumped for this kind. */
#define SC_FAIL_NO_STAT UINT16_MAX

typedef struct sc_fail_info {
    const char *reason;             /* x-sidecar-reason, and the name in logs */
    const char *detail;             /* the answer's text after "upstream <name>: " / "<name> listener: " */
    uint16_t http_status;
    uint8_t grpc_status;
    uint8_t flags;                  /* SC_FAIL_F_* */
    uint16_t stat;                  /* offsetof(sc_route_stats, <counter>), or SC_FAIL_NO_STAT */
    uint32_t cond;                  /* SC_COND_* bits: what it counts as for retries, breaker, outlier */
} sc_fail_info;

extern const sc_fail_info sc_fail_table[SC_FAIL_KINDS];

static inline const sc_fail_info *sc_fail_info_of(sc_fail f)
{
    return &sc_fail_table[(unsigned)f < SC_FAIL_KINDS ? f : SC_FAIL_NONE];
}

/* x-sidecar-reason of a failure ("unknown" outside the enum). */
const char *sc_fail_reason(sc_fail f);

/* The conditions a failure counts as (0: none, e.g. a local refusal says
 * nothing about the upstream). */
static inline uint32_t sc_fail_cond(sc_fail f) { return sc_fail_info_of(f)->cond; }

/* A connect failure, reset or refused stream: what outlier detection calls a
 * gateway failure of the instance (as it does 502/503/504 responses). */
#define SC_FAIL_GATEWAY_CONDS (SC_COND_CONNECT_FAILURE | SC_COND_RESET | SC_COND_REFUSED_STREAM)

/* Gives the sidecar's answer for `why` a text of its own instead of the
 * table's (printf format; copied into the stream's arena, at most 767
 * bytes; out of memory: the table's text is used). For the admission
 * stages and codecs that know more than the failure kind says. */
void sc_stream_fail_msg(sc_stream *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Adds a header field to the sidecar's own answer for this stream (copied
 * into the arena; at most SC_FAIL_MAX_HEADERS, more are dropped): for a
 * stage whose refusal says more than a status (Retry-After,
 * WWW-Authenticate, ...). In a gRPC answer they are metadata next to
 * grpc-status. An x-sidecar-reason given here replaces the table's (a
 * stage naming its refusal more precisely). Not used for a circuit
 * breaker's fallback. Returns 0 or -ENOMEM / -ENOSPC. */
#define SC_FAIL_MAX_HEADERS 8
int sc_stream_fail_header(sc_stream *s, const char *name, const char *value);

/* The caller's side of a failure that ends the exchange: before the
 * response head went out, the sidecar's own answer in the caller's protocol
 * (into s->resp / s->respp; the circuit breaker's fallback when it applies);
 * after it, gRPC over HTTP/2 ends with grpc-status in trailers, anything
 * else is cut (the downstream codec resets or closes: s->respp.eof stays
 * false and s->fail set). Counts the local reply. The caller then wakes the
 * downstream codec. */
void sc_fail_answer(sc_stream *s, sc_fail why);

#endif

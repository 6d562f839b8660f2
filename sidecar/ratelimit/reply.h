/*
 * reply.h: what a rate-limited request gets back, as values the codecs
 * send. Pure: no I/O, no allocation.
 *
 * Refused by a bucket (SC_RL_REFUSED):
 *   HTTP 429, gRPC RESOURCE_EXHAUSTED (8);
 *   Retry-After: whole seconds until the bucket admits one more request
 *     (rounded up, at least 1);
 *   RateLimit-Policy: "<limit>";q=<quota>;w=<window> and
 *   RateLimit: "<limit>";r=0;t=<seconds> in the shape of the IETF httpapi
 *     draft "RateLimit header fields for HTTP" (structured-field lists):
 *     the quota is the configured rate over a whole-second window
 *     (100/s: q=100;w=1; 10/100ms: q=100;w=1; 5/m: q=5;w=60), the burst
 *     is given as the vendor parameter sidecar-burst when it differs, t is
 *     the Retry-After value;
 *   x-sidecar-reason: rate-limited, x-sidecar-rate-limit: <limit>;
 *   a body / grpc-message naming the limit, its rate, the route and the wait;
 *   retry_after_ms for gRPC's grpc-retry-pushback-ms.
 * Redis could not decide and on_error is deny (SC_RL_ERROR_REFUSED):
 *   HTTP 503, gRPC UNAVAILABLE (14), x-sidecar-reason:
 *   rate-limit-unavailable, Retry-After: 1, RateLimit-Policy as above, no
 *   RateLimit (nothing is known of the bucket).
 * Admitted (SC_RL_ALLOWED): sc_rl_reply_headers gives RateLimit-Policy and
 *   RateLimit ("<limit>";r=<remaining>;t=<seconds until one more>) for a
 *   response that wants to carry them.
 */
#ifndef SC_RL_REPLY_H
#define SC_RL_REPLY_H

#include "ratelimit/limit.h"

typedef struct sc_rl_reply {
    int http_status;                /* 429 or 503 */
    int grpc_status;                /* 8 or 14 */
    const char *reason;             /* x-sidecar-reason: "rate-limited" / "rate-limit-unavailable" */
    const char *limit;              /* x-sidecar-rate-limit: the limit's name */
    char retry_after[24];           /* Retry-After value */
    uint64_t retry_after_ms;        /* the same wait, for grpc-retry-pushback-ms */
    char policy[128];               /* RateLimit-Policy value */
    char ratelimit[96];             /* RateLimit value; "" when not to be sent */
    char message[320];              /* HTTP body (one line) and grpc-message */
} sc_rl_reply;

/* The refusal for decision d (result REFUSED or ERROR_REFUSED, limit set). */
void sc_rl_reply_build(const sc_rl_decision *d, sc_rl_reply *out);

/* RateLimit-Policy and RateLimit values for any decision with a limit
 * (see above); either buffer may be NULL. */
void sc_rl_reply_headers(const sc_rl_decision *d, char *policy, size_t policy_cap,
                         char *ratelimit, size_t ratelimit_cap);

#endif

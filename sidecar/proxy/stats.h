/*
 * stats.h: per-worker counters, written only by their worker with relaxed
 * loads and stores (no locked instructions on the request path) and summed
 * by the admin endpoint, which may read slightly stale values.
 */
#ifndef SC_STATS_H
#define SC_STATS_H

#include "core/common.h"

#include <stdatomic.h>

typedef _Atomic uint64_t sc_counter;

#define SC_STAT_ADD(c, n) \
    atomic_store_explicit(&(c), atomic_load_explicit(&(c), memory_order_relaxed) + (uint64_t)(n), memory_order_relaxed)
#define SC_STAT_INC(c) SC_STAT_ADD(c, 1)
#define SC_STAT_DEC(c) SC_STAT_ADD(c, (uint64_t)-1)
#define SC_STAT_GET(c) atomic_load_explicit(&(c), memory_order_relaxed)

/* Latency histogram bounds in microseconds (Prometheus `le` in seconds). */
#define SC_LAT_BUCKETS 14
extern const uint64_t sc_lat_bounds_us[SC_LAT_BUCKETS];

typedef enum {
    SC_BAD_REQ_SYNTAX = 0,
    SC_BAD_REQ_TOO_LARGE,
    SC_BAD_REQ_LINE_TOO_LONG,
    SC_BAD_REQ_UNSUPPORTED,
    SC_BAD_REQ_BODY,
    SC_BAD_REQ_HEADER_TIMEOUT,
    SC_BAD_REQ_H2_PROTOCOL,
    SC_BAD_REQ_H2_FLOOD,        /* control frames or stream resets faster than allowed (nghttp2's limits) */
    SC_BAD_REQ_KINDS
} sc_bad_req_kind;
extern const char *const sc_bad_req_names[SC_BAD_REQ_KINDS];

typedef struct sc_route_stats {
    sc_counter requests;
    sc_counter responses[6];        /* 1xx..5xx, [0] = no response (reset) */
    sc_counter grpc[17];            /* by grpc-status */
    sc_counter local_replies;       /* errors produced by the sidecar */
    sc_counter connect_failures;
    sc_counter connect_timeouts;
    sc_counter timeouts;
    sc_counter resets;
    sc_counter no_instance;
    sc_counter active_requests;     /* gauge */
    sc_counter upstream_conns;      /* gauge */
    sc_counter upstream_conns_total;
    sc_counter bytes_in;            /* request body bytes from callers */
    sc_counter bytes_out;           /* response body bytes to callers */
    sc_counter retries;
    sc_counter retry_budget_exhausted;
    sc_counter breaker_rejections;
    sc_counter bulkhead_rejections;
    sc_counter lat_buckets[SC_LAT_BUCKETS + 1];
    sc_counter lat_sum_us;
} sc_route_stats;

typedef struct sc_worker_stats {
    sc_counter down_conns;          /* gauge */
    sc_counter down_conns_total;
    sc_counter down_conns_refused;   /* closed at accept: limits.max_connections open on the worker */
    sc_counter streams;             /* gauge */
    sc_counter h2_idle_trimmed;     /* gauge: idle or quiet HTTP/2 callers' connections whose session pages were handed back */
    sc_counter buf_blocks;          /* gauge: buffer blocks held by connections and streams (sc_buf_reserve) */
    sc_counter bad_requests[SC_BAD_REQ_KINDS];
    sc_counter tls_handshakes;       /* completed, inbound and outbound */
    sc_counter tls_resumed;          /* of which resumed sessions */
    sc_counter tls_refused;          /* peer refused: no/untrusted/expired certificate, wrong identity */
    sc_counter tls_failed;           /* other handshake failures */
    sc_counter authz_denied;         /* inbound requests refused by tls.allow */
    /* tls.authorize: consul */
    sc_counter authz_consul_denied;  /* refused because Consul denied the caller */
    sc_counter authz_unavailable;    /* refused because Consul could not answer (and no earlier answer) */
    sc_counter authz_stale;          /* decided with an earlier answer while Consul could not answer */
    sc_counter authz_cache_hits;     /* decided without waiting for Consul */
    sc_counter authz_cache_misses;   /* waited for a lookup */
    size_t n_routes;
    sc_route_stats routes[];
} sc_worker_stats;

void sc_stats_observe_latency(sc_route_stats *rs, uint64_t us);

#endif

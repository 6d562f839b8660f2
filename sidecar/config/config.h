/*
 * config.h: the sidecar's configuration model, loaded from sidecar.yaml and
 * one policies/<upstream>.yaml per upstream (libyaml).
 *
 * Loading is strict: unknown keys, bad durations, bad addresses and
 * impossible values are errors that name the file, line and field; nothing
 * is silently defaulted. All problems in all files are collected (not just
 * the first) so `sidecar --check` can print every one.
 *
 * Ownership: sc_config_load() returns a config the caller owns and releases
 * with sc_config_free(); every string and array inside belongs to it. A
 * loaded config is immutable and may be read from any thread.
 */
#ifndef SC_CONFIG_H
#define SC_CONFIG_H

#include "core/common.h"
#include "core/log.h"

#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>

/* A resolved socket address plus its text form as the user wrote it. */
typedef struct sc_addr {
    struct sockaddr_storage ss;
    socklen_t len;
    char text[80];   /* "127.0.0.1:9191", "[::1]:80", "localhost:8080" */
} sc_addr;

typedef enum { SC_PROTO_HTTP1 = 0, SC_PROTO_HTTP2, SC_PROTO_GRPC } sc_proto;
const char *sc_proto_name(sc_proto p);

typedef enum { SC_LB_ROUND_ROBIN = 0, SC_LB_LEAST_REQUEST, SC_LB_RANDOM } sc_lb_kind;
const char *sc_lb_kind_name(sc_lb_kind k);

typedef struct sc_kv { char *key; char *value; } sc_kv;

/* All durations are milliseconds; 0 means "no limit" only where a comment says so. */
typedef struct sc_timeouts {
    uint64_t connect_ms;      /* default 1000 */
    uint64_t request_ms;      /* overall, 0 = none; default 15000 */
    uint64_t per_try_ms;      /* 0 = same as request; default 0 */
    uint64_t idle_ms;         /* idle connection timeout, default 60000 */
    uint64_t header_read_ms;  /* inbound/downstream only: whole head must arrive; default 10000 */
} sc_timeouts;

/* Retry / failure conditions as bits (policy `retries.on`, breaker `failure_on`). */
enum {
    SC_COND_5XX = 1u << 0,
    SC_COND_GATEWAY_ERROR = 1u << 1,   /* 502, 503, 504 */
    SC_COND_CONNECT_FAILURE = 1u << 2,
    SC_COND_RESET = 1u << 3,
    SC_COND_REFUSED_STREAM = 1u << 4,
    SC_COND_TIMEOUT = 1u << 5,
    SC_COND_4XX = 1u << 6,
};

typedef struct sc_retry_policy {
    bool enabled;
    uint32_t max_attempts;        /* >= 1; 1 = no retry */
    uint32_t on;                  /* SC_COND_* bits */
    uint32_t on_grpc;             /* bit n = gRPC status code n (0..16) */
    uint64_t backoff_base_ms;     /* default 25 */
    uint64_t backoff_max_ms;      /* default 250 */
    double budget_ratio;          /* 0..1, default 0.2 */
    uint32_t budget_min_per_second; /* default 10 */
    uint64_t buffer_limit;        /* bytes of request body kept for replay, default 65536 */
} sc_retry_policy;

typedef struct sc_bulkhead_policy {
    bool enabled;
    uint32_t max_concurrent;      /* >= 1 */
    uint32_t max_pending;         /* 0 = no queue */
    uint64_t queue_timeout_ms;
    uint32_t max_connections;     /* per upstream, across workers; 0 = unlimited */
} sc_bulkhead_policy;

typedef struct sc_breaker_policy {
    bool enabled;
    double failure_rate;          /* percent, 0 < x <= 100 */
    uint64_t slow_call_ms;        /* 0 = slow calls not tracked */
    double slow_call_rate;        /* percent */
    uint64_t window_ms;
    uint32_t min_calls;
    uint64_t open_for_ms;
    uint32_t half_open_calls;
    uint32_t consecutive_failures; /* 0 = off */
    uint32_t failure_on;          /* SC_COND_* bits; default gateway-error|connect-failure|reset|timeout */
    uint32_t failure_on_grpc;     /* gRPC code bits; default unavailable|deadline-exceeded|internal|unknown|data-loss */
    bool has_fallback;
    uint32_t fallback_http_status;
    char *fallback_http_body;
    uint32_t fallback_grpc_status;
    char *fallback_grpc_message;
    /* Extra headers of the fallback answer (fallback.http.headers) and the
     * metadata of a gRPC one (fallback.grpc.metadata): names lower-case
     * tokens, values without control characters, validated at load. A
     * content-type among the HTTP headers replaces the default one. */
    sc_kv *fallback_http_headers;
    size_t n_fallback_http_headers;
    sc_kv *fallback_grpc_metadata;
    size_t n_fallback_grpc_metadata;
} sc_breaker_policy;
/* Most headers (or metadata entries) one fallback answer may carry. */
#define SC_FALLBACK_MAX_HEADERS 16

typedef struct sc_outlier_policy {
    bool enabled;
    uint32_t consecutive_failures;  /* default 5 */
    uint64_t eject_for_ms;          /* base ejection time, default 30000 */
    uint64_t max_eject_ms;          /* cap, default 300000 */
    double max_ejected_percent;     /* default 50 */
} sc_outlier_policy;

typedef enum { SC_TLS_OFF = 0, SC_TLS_SIMPLE, SC_TLS_MUTUAL } sc_tls_mode;
/* Where this sidecar's certificate, key and roots come from (tls.source). */
typedef enum { SC_TLS_SOURCE_FILES = 0, SC_TLS_SOURCE_CONSUL } sc_tls_source;
/* Who decides, after tls.allow, whether an inbound caller may call (tls.authorize). */
typedef enum { SC_AUTHORIZE_NONE = 0, SC_AUTHORIZE_CONSUL } sc_authorize_mode;
/* Bounds of tls.authorize_cache. */
#define SC_AUTHORIZE_CACHE_MIN_MS 1000u
#define SC_AUTHORIZE_CACHE_MAX_MS 3600000u

typedef struct sc_static_instance {
    sc_addr addr;
    uint32_t weight;                /* default 1, >= 1 */
} sc_static_instance;

typedef enum { SC_DISCOVERY_STATIC = 0, SC_DISCOVERY_CONSUL } sc_discovery_kind;

/* ---- rate limits: `rate_limits:` on inbound and in policies (docs/configuration.md) ---- */

/* What one part of a limit's key is made of. */
typedef enum {
    SC_RL_KEY_ROUTE = 0,            /* nothing: one bucket for the whole route (alone) */
    SC_RL_KEY_CALLER,               /* the caller's verified SPIFFE identity (inbound mTLS) */
    SC_RL_KEY_HEADER,               /* a request header's value (`arg`: its lower-case name) */
    SC_RL_KEY_CLAIM,                /* a claim of the caller's verified JWT (`arg`: its name) */
    SC_RL_KEY_METHOD,               /* the request method */
    SC_RL_KEY_PATH,                 /* the request path, normalised, without the query */
} sc_rl_key_kind;

typedef struct sc_rl_key_part {
    sc_rl_key_kind kind;
    char *arg;                      /* header or claim name, else NULL */
} sc_rl_key_part;

#define SC_RL_MAX_KEY_PARTS 4       /* parts of one key */
#define SC_RL_MAX_LIMITS 16         /* limits on one route */
#define SC_RL_MAX_METHODS 16        /* match.methods entries */

/* One limit: a token bucket of `count` requests per `period_ms` holding at
 * most `burst`, one bucket per key. */
typedef struct sc_rate_limit {
    char *name;                     /* unique on its route; names the limit in replies and metrics */
    uint64_t count;                 /* rate: count per period_ms */
    uint64_t period_ms;
    uint64_t burst;                 /* default count */
    sc_rl_key_part key[SC_RL_MAX_KEY_PARTS];
    size_t n_key;                   /* >= 1 (default: route) */
    char *path_prefix;              /* match.path_prefix, normalised; NULL = every path */
    char **methods;                 /* match.methods; none = every method */
    size_t n_methods;
    bool global;                    /* scope: global (Redis) */
    bool on_error_deny;             /* global: refuse when Redis cannot decide (default allow) */
    bool skip_missing;              /* missing: skip (default share: one bucket for the absent value) */
    uint64_t timeout_ms;            /* global: per-decision budget, default redis.timeout */
    uint32_t max_keys;              /* local: keys kept (LRU), default 10000 */
    unsigned line, key_line, scope_line; /* where it was written, for checks across files */
} sc_rate_limit;

/* One upstream: policies/<name>.yaml. */
typedef struct sc_policy {
    char *file;                     /* path it was loaded from */
    char *name;                     /* `upstream:` */
    sc_proto protocol;
    sc_addr listen;                 /* local outbound listener */
    sc_discovery_kind discovery;
    sc_static_instance *instances;  /* static discovery */
    size_t n_instances;
    struct {
        char *service;              /* default: the upstream name */
        char *tag;                  /* NULL = none */
        char *dc;                   /* NULL = agent's */
    } consul;
    sc_timeouts timeouts;
    sc_retry_policy retries;
    sc_bulkhead_policy bulkhead;
    sc_breaker_policy breaker;
    sc_outlier_policy outlier;
    sc_lb_kind lb;
    struct {
        sc_tls_mode mode;
        char *server_identity;      /* expected URI SAN, NULL = any from the CA */
        char *sni;
    } tls;
    sc_rate_limit *rate_limits;     /* protect the callee; checked in order */
    size_t n_rate_limits;
} sc_policy;

/* tracing: distributed tracing (docs/tracing.md); config_tracing.c. */
#define SC_TRACING_DEFAULT_ENDPOINT "http://127.0.0.1:4318/v1/traces"
typedef struct sc_tracing_config {
    bool enabled;                   /* a `tracing:` section without enabled: false */
    char *endpoint;                 /* OTLP/HTTP JSON traces URL; default SC_TRACING_DEFAULT_ENDPOINT */
    double sample_ratio;            /* new traces, 0..1; default 1 */
    unsigned propagation_in;        /* SC_TRACE_FMT_* bits (trace/propagation.h); default w3c, b3, b3multi */
    unsigned propagation_out;       /* default w3c */
    char *force_header;             /* lower case; NULL = none */
    uint32_t batch_size;            /* spans per export request, default 512 */
    uint64_t batch_interval_ms;     /* longest a span waits for a batch, default 5000 */
    uint32_t queue_size;            /* spans waiting per worker, default 2048 */
    uint64_t timeout_ms;            /* one export request, default 10000 */
} sc_tracing_config;
/* access_log: one JSON line per request (obs/access_log.h; the fields are in
 * docs/observability.md). Off unless the section is present. */
typedef enum { SC_ACCESS_LOG_STDOUT = 0, SC_ACCESS_LOG_STDERR, SC_ACCESS_LOG_FILE } sc_access_log_dest;
enum {
    SC_ACCESS_SELECT_ALL = 1u << 0,     /* every request (alone: not combined with the others) */
    SC_ACCESS_SELECT_ERRORS = 1u << 1,  /* sc_access_is_error() */
    SC_ACCESS_SELECT_SLOW = 1u << 2,    /* total duration above slow_ms */
    SC_ACCESS_SELECT_SAMPLE = 1u << 3,  /* a share sample_ratio of requests, by request ID */
};
typedef struct sc_access_log_config {
    bool enabled;                   /* an `access_log:` section exists */
    sc_access_log_dest destination; /* default stdout */
    char *path;                     /* destination file: resolved path, else NULL */
    uint32_t select;                /* SC_ACCESS_SELECT_* bits, any of them matching; default ALL */
    uint64_t slow_ms;               /* select slow: logged when the duration exceeds this */
    double sample_ratio;            /* select sample: 0 < ratio <= 1 */
    uint64_t buffer_bytes;          /* per worker; default 1 MiB, used rounded up to a power of two */
    uint64_t flush_interval_ms;     /* the writer's longest sleep; default 100ms */
} sc_access_log_config;

typedef struct sc_config {
    char *file;                     /* path of sidecar.yaml */
    struct {
        char *name;                 /* required */
        char *id;                   /* default: name */
        char *address;              /* registration address, NULL = detect */
        char **tags; size_t n_tags;
        sc_kv *meta; size_t n_meta;
    } service;
    struct {
        bool enabled;               /* an `inbound:` section exists */
        sc_addr listen;             /* public listener */
        sc_addr app;                /* local app */
        sc_proto app_protocol;      /* how to talk to the app; default http1 */
        sc_timeouts timeouts;
        uint32_t max_concurrent;    /* inbound bulkhead, 0 = unlimited */
        sc_rate_limit *rate_limits; /* protect the app; checked in order */
        size_t n_rate_limits;
        struct sc_jwt_config *jwt;  /* inbound.jwt (jwt/jwt_config.h), NULL = no JWT checks */
    } inbound;
    struct {
        sc_addr listen;             /* default 127.0.0.1:19000; loopback unless allow_remote */
        bool allow_remote;          /* a non-loopback listen is an explicit choice */
        char **allowed_hosts;       /* Host values accepted beyond loopback ones ("name[:port]") */
        size_t n_allowed_hosts;
        char *token_file;           /* NULL = no token */
        char *token;                /* read from token_file at load: a secret, never printed */
    } admin;
    uint32_t workers;               /* 0 = number of cores */
    uint64_t drain_timeout_ms;      /* default 10000 */
    char *policies_dir;             /* resolved against the config's directory; NULL = none */
    struct {
        uint32_t max_header_bytes;  /* request line + headers, default 65536 */
        uint32_t max_request_line;  /* default 8192 */
        uint32_t stream_buffer;     /* per-direction per-stream buffer, default 65536 */
        uint32_t max_connections;   /* downstream connections per worker, default 10000 */
        uint32_t h2_max_concurrent_streams; /* advertised to clients, default 256 */
        int header_underscores;     /* sc_hdr_underscores (http/hdr.h), default allow */
    } limits;
    sc_log_level log_level;         /* default info */
    struct {
        bool enabled;               /* a `consul:` section exists */
        char *address;              /* default: $CONSUL_HTTP_ADDR or 127.0.0.1:8500; http://, https://, unix:// */
        char *token;                /* default: $CONSUL_HTTP_TOKEN(_FILE) */
        char *token_file;
        bool ssl;                   /* $CONSUL_HTTP_SSL */
        bool ssl_verify;            /* default true */
        char *ca_file, *cert_file, *key_file;
        char *ca_path;              /* $CONSUL_CAPATH: a hashed directory of CA certificates */
        char *tls_server_name;      /* $CONSUL_TLS_SERVER_NAME: SNI and verification name of an https agent */
        char *ns, *partition;       /* $CONSUL_NAMESPACE, $CONSUL_PARTITION (Enterprise); NULL = not sent */
        char *datacenter;           /* NULL = agent's */
        bool register_service;      /* default true */
        enum { SC_CHECK_HTTP = 0, SC_CHECK_TTL, SC_CHECK_GRPC, SC_CHECK_NONE } check;
        char *check_http;           /* check: http: the URL the agent polls; NULL = http://<admin>/ready */
        uint64_t check_interval_ms; /* default 10000 */
        uint64_t check_ttl_ms;      /* default 15000 */
        uint64_t deregister_after_ms; /* DeregisterCriticalServiceAfter, 0 = never; min 60000 */
        uint64_t wait_ms;           /* blocking query wait, default 300000 */
        char *cache_file;           /* last known instances, NULL = off */
    } consul;
    struct {                        /* readiness: local app probe, grpc.health.v1 server */
        enum { SC_APP_PROBE_TCP = 0, SC_APP_PROBE_HTTP, SC_APP_PROBE_NONE } app_probe;
                                    /* default tcp; probes run only with an `inbound:` app */
        char *app_path;             /* http probe: GET this path, 2xx = healthy */
        uint64_t interval_ms;       /* default 2000 */
        uint64_t timeout_ms;        /* default 1000, <= interval */
        bool grpc_enabled;          /* grpc_listen given */
        sc_addr grpc_listen;        /* grpc.health.v1 Health service */
    } health;
    struct {
        sc_tls_source source;                /* default files; consul: Connect leaf + roots */
        char *cert_file, *key_file, *ca_file; /* NULL = no TLS (source files) */
        char **allow; size_t n_allow;        /* inbound caller identities, "*"-suffix patterns */
        char *identity_header;               /* default "x-sidecar-caller" */
        sc_authorize_mode authorize;         /* default none; consul: POST /v1/agent/connect/authorize */
        uint64_t authorize_cache_ms;         /* answers kept per caller identity, default 30000 */
    } tls;
    struct {                        /* the Redis server of `scope: global` rate limits */
        bool enabled;               /* a `redis:` section exists */
        sc_addr address;            /* host:port, resolved at load */
        char *user;                 /* ACL user (AUTH user password); NULL = AUTH password only */
        char *password_file;        /* NULL = no AUTH */
        char *password;             /* read from password_file at load: a secret, never printed */
        uint32_t db;                /* SELECT db when not 0 */
        char *key_prefix;           /* default "sidecar:rl:<service.name>:" */
        bool tls;                   /* a `tls:` subsection exists */
        char *tls_ca_file, *tls_cert_file, *tls_key_file; /* ca NULL = system roots; cert+key = client cert */
        char *tls_server_name;      /* name verified in Redis' certificate; default the address' host */
        uint64_t connect_timeout_ms; /* default 1000 */
        uint64_t timeout_ms;        /* default per-decision budget, default 5 */
    } redis;
    sc_tracing_config tracing;
    sc_access_log_config access_log;
    struct {                        /* reload: (docs/configuration.md, "Reloading") */
        bool watch;                 /* reload when sidecar.yaml or a policy file changes (inotify) */
        uint64_t debounce_ms;       /* quiet time after the last change before reloading, default 200 */
    } reload;
    sc_policy *policies;            /* from policies_dir and inline `upstreams:` */
    size_t n_policies;
} sc_config;

/* One problem found while loading: `file:line: field: message`. */
typedef struct sc_diag {
    char *file;
    unsigned line;                  /* 1-based, 0 = whole file */
    char *field;                    /* dotted path, e.g. "timeouts.connect" */
    char *msg;
} sc_diag;

typedef struct sc_diags {
    sc_diag *v;
    size_t n, cap;
} sc_diags;

void sc_diags_add(sc_diags *d, const char *file, unsigned line, const char *field,
                  const char *fmt, ...) __attribute__((format(printf, 5, 6)));
void sc_diags_free(sc_diags *d);
/* Prints one `file:line: field: message` line per problem (line omitted when 0). */
void sc_diags_print(const sc_diags *d, FILE *out);

/*
 * Loads sidecar.yaml at `path` and every *.yaml in its policies directory.
 * Returns 0 and sets *out, or -EINVAL with every problem in `diags` (then
 * *out is NULL), or -errno when a file cannot be read (also in diags).
 */
int sc_config_load(const char *path, sc_config **out, sc_diags *diags);

/* Same, from a YAML string (the embedded example, tests, fuzzing); `name`
 * stands for the file name in diagnostics, `base_dir` resolves relative paths. */
int sc_config_load_string(const char *yaml, size_t len, const char *name,
                          const char *base_dir, sc_config **out, sc_diags *diags);

/* Parses one policy document (tests, fuzzing). Returns 0 (the caller then
 * owns *out and releases it with sc_policy_clear) or -EINVAL with the problems
 * in diags and *out left zeroed (sc_policy_clear on it is a no-op). Static
 * instances given as hostnames are resolved now. */
int sc_policy_load_string(const char *yaml, size_t len, const char *name,
                          sc_policy *out, sc_diags *diags);
/* Frees everything inside *p and zeroes it; safe on a zeroed policy. */
void sc_policy_clear(sc_policy *p);
/* Fills *p with the value every field has when its section is absent (no
 * strings are allocated; sections stay disabled). Handy for tests. */
void sc_config_policy_defaults(sc_policy *p);

void sc_config_free(sc_config *cfg);

/* "250ms", "2s", "1m", "1h", "1m30s", "0"; returns 0 or -EINVAL (also on overflow,
 * negative, fractional or unit-less non-zero values). */
int sc_duration_parse(const char *s, uint64_t *ms);
/* Largest duration accepted: its value in nanoseconds still fits in 64 bits. */
#define SC_DURATION_MAX_MS (UINT64_MAX / 1000000u)
/* Formats ms the way sc_duration_parse reads it back ("1m30s", "250ms", "0");
 * NUL terminated, truncated to cap. Returns the length it wanted to write. */
size_t sc_duration_format(uint64_t ms, char *buf, size_t cap);
/* Sizes: "65536", "64KiB", "1MiB", "1GiB" (also "512B"); 0 or -EINVAL. */
int sc_size_parse(const char *s, uint64_t *bytes);

/* "ip:port", "[v6]:port" and, when allow_hostname, "name:port" (resolved now
 * with getaddrinfo, first answer). Port 1..65535 (0 allowed when allow_zero_port). */
int sc_addr_parse(const char *s, sc_addr *out, bool allow_hostname);
/* Same; on failure *why (when not NULL) names the problem for a human.
 * Returns -EINVAL for bad syntax, -EHOSTUNREACH when a name does not resolve. */
int sc_addr_parse_why(const char *s, sc_addr *out, bool allow_hostname, const char **why);
/* True for 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104. */
bool sc_addr_is_loopback(const sc_addr *a);
/* True for 0.0.0.0 and [::]. */
bool sc_addr_is_wildcard(const sc_addr *a);
/* The port in host order (0 when unset). */
uint16_t sc_addr_port(const sc_addr *a);
/* Test and fuzzing hook: when false, hostnames are never looked up (they fail
 * with -EHOSTUNREACH) so loading a config never waits on DNS. Default true. */
void sc_addr_set_dns_enabled(bool enabled);

/* The effective configuration as a JSON document (admin /config), caller frees
 * with json_decref. Never contains secrets (tokens are shown as "<set>"). */
struct json_t;
struct json_t *sc_config_to_json(const sc_config *cfg);
/* One upstream's effective policy, same shape as an entry of "upstreams". */
struct json_t *sc_policy_to_json(const sc_policy *p);

/* "100/s", "5/m", "1000/h", "10/100ms": a rate limit's `rate` as count per
 * period. -EINVAL for bad syntax, -ERANGE beyond the bounds (1..10^9 per
 * period of 1ms..24h, at most one request per microsecond). */
int sc_config_rl_rate_parse(const char *s, uint64_t *count, uint64_t *period_ms);
/* "route", "caller", "header", "claim", "method", "path". */
const char *sc_config_rl_key_kind_name(sc_rl_key_kind k);

/* The built-in example (`sidecar` without --config): a YAML string. */
extern const char sc_config_example_yaml[];

#endif

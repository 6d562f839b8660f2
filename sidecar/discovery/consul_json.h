/*
 * consul_json.h: the pure half of the Consul client. No I/O, no clock, no
 * randomness of its own: every function takes its inputs (answer bodies,
 * header values, the time, a random number) as arguments, so all of it is
 * unit tested and fuzzed without an agent. consul.c is the I/O shell.
 *
 * What lives here, each following Consul's HTTP API as the agent serves it:
 *   - parsing /v1/health/service/<name> answers into an sc_endpoints snapshot
 *   - the blocking-query index rules and the health query's path
 *   - the error backoff and the watch loop's token bucket
 *   - the registration body (PUT /v1/agent/service/register)
 *   - the cache file of last known instances (consul.cache_file)
 */
#ifndef SC_CONSUL_JSON_H
#define SC_CONSUL_JSON_H

#include "config/config.h"
#include "discovery/endpoints.h"

/* ---- health answers ---- */

/* A snapshot never holds more instances than this; a larger answer is refused
 * with -E2BIG (it would be a misconfiguration, and memory stays bounded). */
#define SC_CONSUL_MAX_INSTANCES 65536

typedef struct sc_consul_parse_opts {
    /* Entries whose worst check is `warning` are skipped unless this is set;
     * then they get Weights.Warning (and are skipped when that is 0). The
     * watch asks with ?passing, so the agent normally sends none. */
    bool include_warning;
} sc_consul_parse_opts;

typedef struct sc_consul_parse_stats {
    size_t entries;             /* entries in the answer */
    size_t skipped;             /* entries that gave no instance */
    char first_skip[192];       /* why the first skipped entry was skipped ("" = none) */
} sc_consul_parse_stats;

/*
 * Parses the JSON array of a health answer into a new snapshot (the caller
 * owns *out; instances sorted by address then ID, so that the order of the
 * answer does not matter when snapshots are compared).
 *
 * For each entry: the address is Service.Address, or Node.Address when that
 * is empty; when the chosen address is not an IP literal (a hostname),
 * Service.TaggedAddresses.lan_ipv4 / lan_ipv6 / lan (keys matched without
 * regard to case, "Address"/"address" alike) supply an IP literal if they
 * have one; otherwise the entry is skipped and the reason counted in *st:
 * hostnames are never resolved here (no DNS on the control thread). The port
 * is Service.Port (1..65535, else skipped). The weight is Weights.Passing
 * (missing or 0 -> 1, capped at 65535); an entry with a critical check is
 * skipped, one with a warning check see opts. The ID is Service.ID (or the
 * address text). Unknown keys are ignored; wrong types skip the entry.
 *
 * Returns 0, -EPROTO when the body is not JSON or not an array (err says
 * why), -E2BIG above SC_CONSUL_MAX_INSTANCES, -ENOMEM.
 */
int sc_consul_parse_health(const char *body, size_t len, const sc_consul_parse_opts *opts,
                           sc_endpoints **out, sc_consul_parse_stats *st, char *err,
                           size_t errlen);

/* True when both hold the same instances (address, weight, ID) in the same
 * order; version and stale are not compared. NULL equals only NULL. */
bool sc_consul_endpoints_same(const sc_endpoints *a, const sc_endpoints *b);

/* A copy (caller owns) with stale set as asked; NULL on -ENOMEM. */
sc_endpoints *sc_consul_endpoints_copy(const sc_endpoints *e, bool stale);

/* ---- blocking queries ---- */

/* X-Consul-Index: decimal digits (surrounding blanks allowed), no sign, no
 * overflow. Returns 0 or -EINVAL (missing header: pass NULL). */
int sc_consul_index_parse(const char *s, size_t len, uint64_t *out);

/* The index to send next after an answer carrying `got` when `prev` was
 * sent: 0 (no index: a non-blocking fetch) when the index went backwards,
 * otherwise got, and never below 1, so a query with an index always blocks. */
uint64_t sc_consul_index_next(uint64_t prev, uint64_t got);

/* Read timeout for a blocking query: the server may add wait/16 of jitter to
 * the wait, so wait * 17/16 plus a margin (SC_CONSUL_READ_MARGIN_MS). */
#define SC_CONSUL_READ_MARGIN_MS 10000u
uint64_t sc_consul_read_timeout_ms(uint64_t wait_ms);

/* Percent-encodes s for a path segment or query value (RFC 3986 unreserved
 * characters stay). Returns the length written (NUL terminated), or -ENOSPC. */
int sc_consul_escape(const char *s, char *out, size_t cap);

/*
 * The path and query of a watch request:
 *   /v1/health/service/<service>?passing[&tag=<tag>][&dc=<dc>][&index=<i>&wait=<w>]
 * index 0 leaves out index and wait (a non-blocking fetch). Returns the
 * length or -ENOSPC.
 */
int sc_consul_health_path(char *buf, size_t cap, const char *service, const char *tag,
                          const char *dc, uint64_t index, uint64_t wait_ms);

/*
 * Appends Consul Enterprise's scope to a request path that may already hold
 * a query: `ns=<ns>` and `partition=<partition>` (escaped), each only when
 * non-NULL and non-empty. The Community Edition answers 400 to any
 * non-empty ns (even "default"), so nothing is added unless configured.
 * Returns the new length, or -ENOSPC (buf then unchanged).
 */
int sc_consul_path_ent(char *buf, size_t cap, const char *ns, const char *partition);

/*
 * Where requests go, from consul.address (http://, https://, unix://, or
 * host:port with `ssl` deciding the scheme) and consul.tls_server_name:
 *   display     scheme://host[:port] as configured (logs, admin)
 *   url_base    the scheme and authority put in request URLs: the display,
 *               or with a TLS server name on an https agent
 *               https://<server_name>[:port], so that libcurl sends that
 *               name in SNI and verifies the certificate against it ...
 *   connect_to  ... while CURLOPT_CONNECT_TO ("<name>::<host>:", IPv6
 *               literals in brackets) still connects to the configured
 *               address; "" when not used
 *   unix_path   the socket of a unix:// address (points into `address`),
 *               else NULL; the server name never applies to it (plain HTTP)
 * The server name is ignored for plain http. Returns 0, -EINVAL (empty
 * authority or a server name that is an IPv6 literal), -ENOSPC.
 */
typedef struct sc_consul_target {
    char display[600];
    char url_base[600];
    char connect_to[600];
    const char *unix_path;
} sc_consul_target;

int sc_consul_target_make(const char *address, bool ssl, const char *server_name, sc_consul_target *t);

/*
 * The ACL token in the bytes of a token file (consul.token_file,
 * $CONSUL_HTTP_TOKEN_FILE): surrounding blanks and newlines trimmed. Sets
 * *tok (pointing into buf) and *len. Returns 0, -ENODATA when nothing is
 * left, -EINVAL when more than one line (or a NUL byte) remains.
 */
int sc_consul_token_trim(const char *buf, size_t len, const char **tok, size_t *tlen);

/* ---- pacing ---- */

/*
 * Error backoff: a capped exponential with "equal jitter". The Go watcher
 * waits 5s * failures^2 capped at 180s; this keeps its cap and its reset
 * after a success but starts lower, so a blip costs about a second:
 *   ceiling = min(cap_ms, base_ms * 2^(failures-1))
 *   delay   = ceiling/2 + rnd % (ceiling/2 + 1)      (between half and all)
 * failures 0 -> 0. With SC_CONSUL_BACKOFF_BASE_MS/CAP_MS: 0.5-1s, 1-2s, 2-4s,
 * ... 90-180s from the ninth failure on.
 */
#define SC_CONSUL_BACKOFF_BASE_MS 1000u
#define SC_CONSUL_BACKOFF_CAP_MS 180000u
uint64_t sc_consul_backoff_ms(unsigned failures, uint64_t base_ms, uint64_t cap_ms,
                              uint64_t rnd);

/* Token bucket for the watch loop: `burst` queries at once, then `per_s`
 * per second, so a service that changes all the time cannot make the loop
 * spin. Times in ms. */
typedef struct sc_consul_bucket {
    double tokens, burst, per_ms;
    uint64_t last_ms;
} sc_consul_bucket;

void sc_consul_bucket_init(sc_consul_bucket *b, double burst, double per_s, uint64_t now_ms);
/* 0: a token was taken, go now. Otherwise the ms to wait before a token is
 * there (nothing taken; call again then). */
uint64_t sc_consul_bucket_take(sc_consul_bucket *b, uint64_t now_ms);

/* ---- registration ---- */

typedef struct sc_consul_reg {
    const char *id, *name;
    const char *address;        /* NULL or "" = left out (the agent uses the node's) */
    unsigned port;              /* 0 = left out */
    char *const *tags;
    size_t n_tags;
    const sc_kv *meta;
    size_t n_meta;
    const char *version;        /* Meta["sidecar-version"] (NULL = left out) */
    int check;                  /* SC_CHECK_HTTP, _TTL, _GRPC, _NONE */
    const char *check_target;   /* HTTP: the URL; GRPC: host:port */
    uint64_t interval_ms, timeout_ms; /* HTTP and GRPC */
    uint64_t ttl_ms;            /* TTL */
    uint64_t deregister_after_ms; /* 0 = left out */
} sc_consul_reg;

/* "service:<id>": the ID the sidecar gives its one check (set explicitly). */
void sc_consul_check_id(const char *service_id, char *buf, size_t cap);

/* The registration body as compact JSON (caller frees), NULL on -ENOMEM.
 * Durations are Go duration strings ("10s", "1m30s"). */
char *sc_consul_registration_body(const sc_consul_reg *r);

/* ---- Connect (tls.source: consul) ---- */

/*
 * /v1/agent/connect/ca/roots: every root of Roots[] (not only the active
 * one, so a CA rotation keeps working), RootCert then its IntermediateCerts,
 * concatenated into *ca_pem (caller frees). *n_roots: roots found; the
 * active root's ID goes to active_id (may be ""). -EPROTO with err when the
 * body is not a roots answer or lists no root with a certificate, -ENOMEM.
 */
int sc_consul_parse_roots(const char *body, size_t len, char **ca_pem, size_t *n_roots,
                          char *active_id, size_t id_cap, char *err, size_t errlen);

/*
 * /v1/agent/connect/ca/leaf/<service>: CertPEM and PrivateKeyPEM (caller
 * frees both), SerialNumber and ServiceURI (may be ""). -EPROTO with err
 * when either PEM is missing, -ENOMEM.
 */
int sc_consul_parse_leaf(const char *body, size_t len, char **cert_pem, char **key_pem,
                         char *serial, size_t serial_cap, char *uri, size_t uri_cap, char *err,
                         size_t errlen);

/* ---- Connect authorization (tls.authorize: consul) ---- */

/* Longest Reason kept from an authorize answer (longer ones are cut). */
#define SC_CONSUL_REASON_MAX 256

/*
 * The body of POST /v1/agent/connect/authorize as compact JSON (caller
 * frees): {"Target":..., "ClientCertURI":..., "ClientCertSerial":...}; the
 * serial is left out when NULL or "". NULL on -ENOMEM or when target or
 * client_uri is NULL.
 */
char *sc_consul_authorize_body(const char *target, const char *client_uri,
                               const char *client_serial);

/*
 * A 200 answer of /v1/agent/connect/authorize: {"Authorized": bool,
 * "Reason": "..."} (keys matched without regard to case, other keys
 * ignored). *authorized and reason (NUL terminated, control characters
 * replaced by blanks, cut to reason_cap - 1) are set on success. Returns 0,
 * or -EPROTO with err when the body is not a JSON object, Authorized is
 * missing or not a boolean, or Reason is neither a string nor null. A
 * denial is an answer, not an error.
 */
int sc_consul_parse_authorize(const char *body, size_t len, bool *authorized, char *reason,
                              size_t reason_cap, char *err, size_t errlen);

/* ---- cache file ---- */

/* One upstream's last known instances, keyed by what was asked. */
typedef struct sc_consul_cache_entry {
    const char *upstream, *service, *tag, *dc; /* tag, dc: NULL = none */
    const sc_endpoints *endpoints;
    int64_t saved_unix;         /* when they were last confirmed (seconds) */
} sc_consul_cache_entry;

/* The cache document (caller frees), NULL on -ENOMEM. */
char *sc_consul_cache_dump(const sc_consul_cache_entry *e, size_t n);

/*
 * Finds the instances saved for (upstream, service, tag, dc) in a cache
 * document. Returns 0 and a new snapshot (caller owns; stale set), -ENOENT
 * when the document has none for that key, -EPROTO when it is not a cache
 * document. Saved addresses must be IP literals; bad entries are skipped.
 */
int sc_consul_cache_find(const char *doc, size_t len, const char *upstream, const char *service,
                         const char *tag, const char *dc, sc_endpoints **out,
                         int64_t *saved_unix);

#endif

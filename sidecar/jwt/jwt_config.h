/*
 * jwt_config.h: the `inbound.jwt:` section of sidecar.yaml as loaded
 * (config/jwt_config.c parses and validates it; docs/configuration.md
 * describes every field). Plain data: no I/O, no locks.
 *
 * Ownership: the section belongs to the sc_config it was loaded into
 * (cfg->inbound.jwt, NULL when absent) and is freed with it
 * (sc_jwt_config_free); every string and array inside belongs to it.
 * Immutable once loaded: any thread may read it.
 */
#ifndef SC_JWT_CONFIG_H
#define SC_JWT_CONFIG_H

#include "core/common.h"

/* Signature algorithms, as bits of an issuer's `algorithms` list. "none" is
 * never one of them: an unsigned token is refused whatever the config says. */
enum {
    SC_JWT_RS256 = 1u << 0,
    SC_JWT_RS384 = 1u << 1,
    SC_JWT_RS512 = 1u << 2,
    SC_JWT_ES256 = 1u << 3,
    SC_JWT_ES384 = 1u << 4,
    SC_JWT_ES512 = 1u << 5,
    SC_JWT_HS256 = 1u << 6,
    SC_JWT_HS384 = 1u << 7,
    SC_JWT_HS512 = 1u << 8,
};
#define SC_JWT_ALGS_RSA (SC_JWT_RS256 | SC_JWT_RS384 | SC_JWT_RS512)
#define SC_JWT_ALGS_EC (SC_JWT_ES256 | SC_JWT_ES384 | SC_JWT_ES512)
#define SC_JWT_ALGS_HMAC (SC_JWT_HS256 | SC_JWT_HS384 | SC_JWT_HS512)

/* The JOSE name of one algorithm bit ("RS256"), NULL for anything else. */
const char *sc_jwt_alg_name(uint32_t alg);
/* The bit of a JOSE name (exact, case-sensitive as RFC 7518 spells them),
 * 0 for an unknown or unsupported one (including "none"). */
uint32_t sc_jwt_alg_from_name(const char *s, size_t len);

/* Bounds and defaults (docs/configuration.md). */
#define SC_JWT_MAX_ISSUERS 32
#define SC_JWT_MAX_RULES 64
#define SC_JWT_MAX_FORWARD 16              /* claims forwarded as headers per rule */
#define SC_JWT_MAX_CLAIM_NAME 128
#define SC_JWT_TOKEN_BYTES_DEFAULT 8192u
#define SC_JWT_TOKEN_BYTES_MIN 256u
#define SC_JWT_TOKEN_BYTES_MAX 65536u
#define SC_JWT_CACHE_DEFAULT 4096u         /* verified tokens kept */
#define SC_JWT_CACHE_MAX 1000000u
#define SC_JWT_LEEWAY_DEFAULT_MS 30000u
#define SC_JWT_LEEWAY_MAX_MS 300000u
#define SC_JWT_REFRESH_DEFAULT_MS 300000u  /* jwks_url refetched this often */
#define SC_JWT_REFRESH_MIN_MS 10000u
#define SC_JWT_REFRESH_MAX_MS 86400000u
#define SC_JWT_REFETCH_DEFAULT_MS 30000u   /* unknown kid: at most one refetch per this */
#define SC_JWT_REFETCH_MIN_MS 1000u
#define SC_JWT_FETCH_TIMEOUT_DEFAULT_MS 5000u
#define SC_JWT_FETCH_TIMEOUT_MAX_MS 60000u

typedef struct sc_jwt_issuer_cfg {
    char *name;                     /* short name: rules, metrics, logs */
    char *issuer;                   /* the token's iss must equal this */
    char **audiences;               /* the token's aud must name one of these; n = 0: aud not checked */
    size_t n_audiences;
    uint32_t algorithms;            /* SC_JWT_* bits, never 0 */
    char *jwks_file;                /* exactly one of jwks_file / jwks_url */
    char *jwks_url;                 /* http:// or https:// */
    char *jwks_ca_file;             /* https jwks_url: CA bundle; NULL = the system's */
    uint64_t refresh_ms;            /* jwks_url: refetch period */
    uint64_t refetch_min_ms;        /* jwks_url: unknown kid refetches at most this often */
    uint64_t fetch_timeout_ms;
    uint64_t leeway_ms;             /* clock skew allowed on exp / nbf */
    bool require_exp;               /* default true: a token without exp is refused */
    unsigned line;                  /* where it was written (diagnostics) */
} sc_jwt_issuer_cfg;

typedef enum {
    SC_JWT_MODE_REQUIRED = 0,       /* no valid token: refused */
    SC_JWT_MODE_OPTIONAL,           /* no token: passes without claims; a bad token is refused */
    SC_JWT_MODE_OFF,                /* the token is not looked at (forwarded as it came) */
} sc_jwt_mode;

const char *sc_jwt_mode_name(sc_jwt_mode m);   /* "required", "optional", "off" */

/* A claim that must be present, and when n_values > 0 equal one of the
 * values (for an array claim: contain one of them). */
typedef struct sc_jwt_claim_req {
    char *name;                     /* top-level name, or a dotted path into objects ("realm.roles") */
    char **values;
    size_t n_values;
} sc_jwt_claim_req;

/* A claim sent to the app as a request header. */
typedef struct sc_jwt_forward {
    char *claim;
    char *header;                   /* lower-case header name */
    size_t header_len;
} sc_jwt_forward;

typedef struct sc_jwt_rule {
    char *prefix;                   /* path prefix, starts with '/' */
    sc_jwt_mode mode;
    char *header;                   /* lower-case; default "authorization" (then "Bearer <token>") */
    size_t header_len;
    uint32_t issuers;               /* bit i = issuers[i] accepted; all by default */
    sc_jwt_claim_req *claims;       /* required claims (403 when missing) */
    size_t n_claims;
    char **scopes;                  /* every one must be in the token's scope / scp */
    size_t n_scopes;
    sc_jwt_forward *forward;
    size_t n_forward;
    bool keep_token;                /* default true; false: the token header is not forwarded */
    unsigned line;
} sc_jwt_rule;

typedef struct sc_jwt_config {
    sc_jwt_issuer_cfg *issuers;
    size_t n_issuers;
    sc_jwt_rule *rules;             /* in file order; a request takes the longest matching prefix */
    size_t n_rules;
    char *realm;                    /* WWW-Authenticate realm; default service.name */
    uint32_t max_token_bytes;
    uint32_t cache_entries;         /* 0 = no cache */
    uint64_t forward_len_mask;      /* bit n: a rule forwards a claim in a header of n bytes (bit 63: >= 63) */
} sc_jwt_config;

void sc_jwt_config_free(sc_jwt_config *c);    /* NULL is a no-op */

/*
 * The rule for a request path (the part before '?'): the longest matching
 * prefix, compared with the path as sent and with its normalised form
 * (percent-encoded unreserved characters decoded, "//" merged, "." and
 * ".." segments removed); when the two pick different rules the stricter
 * mode wins, so an app that normalises paths cannot be reached around a
 * rule with "/a/../admin" or "/%61dmin". NULL when no rule matches (the
 * token is not looked at). Pure, any thread.
 */
const sc_jwt_rule *sc_jwt_rule_for_path(const sc_jwt_config *c, const char *path, size_t len);

/* The normalisation above: writes at most cap bytes to out and returns the
 * length, or -1 when the result does not fit or the path does not start
 * with '/'. Exposed for tests. */
long sc_jwt_path_normalize(const char *path, size_t len, char *out, size_t cap);

/* True when the normalisation would return the path unchanged: it starts
 * with '/' and holds no '%', "//" or "/." (false may still be normal). */
bool sc_jwt_path_is_normal(const char *path, size_t len);

/*
 * True when a request header `name` must be removed from every inbound
 * request before it reaches the app: it is (in any spelling CGI-style
 * frameworks read the same, see http/hdr.h) one of the headers some rule
 * fills from claims. Only the sidecar sets those.
 */
bool sc_jwt_header_reserved(const sc_jwt_config *c, const char *name, size_t len);

/* True when the request header `name` carries this rule's token and the
 * rule says not to forward it (keep_token: false). */
bool sc_jwt_header_stripped(const sc_jwt_rule *r, const char *name, size_t len);

struct json_t;
/* The section as JSON for admin /config (new reference). */
struct json_t *sc_jwt_config_to_json(const sc_jwt_config *c);

#endif

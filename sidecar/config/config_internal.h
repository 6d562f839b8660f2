/*
 * config_internal.h: what the files of the config module share and nobody
 * else should use: a small YAML tree with line numbers (built from libyaml
 * events, so duplicate keys and every node's line survive), the load context
 * and the typed readers that turn a node into a field or a diagnostic.
 */
#ifndef SC_CONFIG_INTERNAL_H
#define SC_CONFIG_INTERNAL_H

#include "config/config.h"

/* Nesting deeper than this is refused: no sane config needs it, and it bounds
 * the recursion of everything that walks the tree. */
#define SC_CFG_MAX_DEPTH 32
/* Largest file the loader reads. */
#define SC_CFG_MAX_FILE (4u << 20)

typedef enum {
    SC_YN_SCALAR = 0,
    SC_YN_SEQ,
    SC_YN_MAP,
    SC_YN_BAD,      /* already reported (alias, NUL byte): readers stay silent */
} sc_yn_kind;

typedef struct sc_ynode {
    sc_yn_kind kind;
    unsigned line;              /* 1-based */
    unsigned key_line;          /* line of the key this is the value of, 0 = none */
    bool plain;                 /* an unquoted scalar */
    char *str;                  /* scalar text, NUL terminated */
    size_t len;
    struct sc_ynode **items;    /* seq: items; map: key, value, key, value... */
    size_t n, cap;
} sc_ynode;

/*
 * Parses one YAML document into a tree. Returns 0 and sets *root (NULL for an
 * empty stream) or -EINVAL after adding the syntax problem to d; *root is
 * then NULL. Non-fatal problems (aliases, non-string keys) are added to d and
 * the tree is still returned.
 */
int sc_config_yaml_parse(const char *buf, size_t len, const char *file, sc_diags *d,
                         sc_ynode **root);
void sc_config_yaml_free(sc_ynode *n);
/* A plain `~`, `null` or empty scalar. */
bool sc_config_yaml_is_null(const sc_ynode *n);

/* Load context: where diagnostics go and how relative paths resolve. */
typedef struct sc_cx {
    sc_diags *d;
    const char *file;           /* diagnostics name this file */
    const char *base_dir;       /* relative paths resolve here; NULL = cwd */
    size_t n_errors;            /* diagnostics added through this context */
} sc_cx;

void sc_config_err(sc_cx *c, const sc_ynode *at, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void sc_config_err_line(sc_cx *c, unsigned line, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* "a.b" from "a" and "b"; "b" when path is empty. */
void sc_config_path(char *buf, size_t cap, const char *path, const char *key);
void sc_config_path_idx(char *buf, size_t cap, const char *path, size_t i);

/*
 * Checks that m is a mapping (a null value counts as an empty one) and looks
 * up the allowed keys: out[i] is the value of keys[i] or NULL. Unknown and
 * duplicate keys are reported. Returns false when m is not a mapping.
 */
bool sc_config_fields(sc_cx *c, const sc_ynode *m, const char *path, const char *const *keys,
                      size_t n_keys, const sc_ynode **out);
void sc_config_require(sc_cx *c, const sc_ynode *m, const char *path, const char *key,
                       const sc_ynode *v);

/* sc_config_fields with the key list's length taken from the array. */
#define FIELDS(c, m, path, keys, out) \
    sc_config_fields((c), (m), (path), (keys), SC_ARRAY_LEN(keys), (out))

/* Typed readers: each does nothing and returns true when v is NULL (key
 * absent); otherwise stores the value or reports why it cannot, naming
 * `field` (the full dotted path), and returns false. */
bool sc_config_rd_str(sc_cx *c, const sc_ynode *v, const char *field, bool allow_empty,
                      char **dst);
bool sc_config_rd_bool(sc_cx *c, const sc_ynode *v, const char *field, bool *dst);
bool sc_config_rd_uint(sc_cx *c, const sc_ynode *v, const char *field, uint64_t min,
                       uint64_t max, uint64_t *dst);
bool sc_config_rd_u32(sc_cx *c, const sc_ynode *v, const char *field, uint32_t min,
                      uint32_t max, uint32_t *dst);
bool sc_config_rd_size(sc_cx *c, const sc_ynode *v, const char *field, uint64_t min,
                       uint64_t max, uint64_t *dst);
bool sc_config_rd_size32(sc_cx *c, const sc_ynode *v, const char *field, uint32_t min,
                         uint32_t max, uint32_t *dst);
bool sc_config_rd_dur(sc_cx *c, const sc_ynode *v, const char *field, uint64_t min_ms,
                      uint64_t *dst);
/* "50%" or 50 (or 12.5); 0 < x <= 100, or 0 <= x when allow_zero. */
bool sc_config_rd_percent(sc_cx *c, const sc_ynode *v, const char *field, bool allow_zero,
                          double *dst);
/* A decimal fraction 0..1 ("0.2"). */
bool sc_config_rd_ratio(sc_cx *c, const sc_ynode *v, const char *field, double *dst);
bool sc_config_rd_enum(sc_cx *c, const sc_ynode *v, const char *field,
                       const char *const *names, size_t n, int *dst);
bool sc_config_rd_addr(sc_cx *c, const sc_ynode *v, const char *field, bool allow_hostname,
                       sc_addr *dst);
/* A file path, resolved against the context's base_dir when relative. */
bool sc_config_rd_path(sc_cx *c, const sc_ynode *v, const char *field, char **dst);
/* A list of non-empty strings (a null value is an empty list). */
bool sc_config_rd_str_list(sc_cx *c, const sc_ynode *v, const char *field, char ***dst,
                           size_t *n);

/* Parses a scalar as a decimal "12.5" (no sign, no exponent); -EINVAL otherwise. */
int sc_config_decimal(const char *s, double *out);
char *sc_config_resolve_path(const char *base_dir, const char *p);
bool sc_config_is_name(const char *s, size_t maxlen);
/* An IPv4 or IPv6 literal (no brackets, no port) or a DNS name. */
bool sc_config_is_host(const char *s);

/* Retry / failure condition names (SC_COND_* bits) for parsing and JSON. */
extern const struct sc_cond_name { const char *name; uint32_t bit; } sc_config_conds[];
extern const size_t sc_config_n_conds;

/* Policy schema (policy.c); `path` prefixes field names ("" for a policy
 * file, "upstreams[0]" for an inline one). Records where the name and the
 * listener were written for the cross-file checks. */
typedef struct sc_policy_where {
    unsigned line;              /* the mapping */
    unsigned name_line;
    unsigned listen_line;
    unsigned tls_line;
    unsigned discovery_line;
} sc_policy_where;

void sc_config_policy_defaults(sc_policy *p);
void sc_config_parse_policy(sc_cx *c, const sc_ynode *root, const char *path, sc_policy *p,
                            sc_policy_where *where);
const char *sc_config_tls_mode_name(sc_tls_mode m);
const char *sc_config_check_name(int check);
const char *sc_config_probe_name(int probe);
char *sc_config_read_file(const char *path, size_t *len, int *err);
/* inbound.jwt (jwt_config.c): sets cfg->inbound.jwt; runs after service:
 * and tls: (the realm's default, the identity header). */
void sc_config_parse_jwt(sc_cx *c, const sc_ynode *m, sc_config *cfg);

/* ---- sidecar.yaml (config.c, config_consul.c) ---- */

/* What the loader remembers while it works. */
typedef struct sc_pmeta {
    sc_policy_where w;
    char prefix[32];            /* "upstreams[3]" or "" */
} sc_pmeta;

typedef struct sc_loader {
    sc_cx c;                    /* context of sidecar.yaml */
    sc_config *cfg;
    sc_pmeta *meta;
    size_t cap;
    int io_err;
    unsigned admin_line, inbound_listen_line, inbound_app_line, policies_line, tls_line;
    unsigned consul_line, token_line, token_file_line, ssl_line, address_line;
    unsigned health_line, check_line, grpc_listen_line;
    unsigned server_name_line;
    const sc_ynode *jwt;        /* inbound.jwt, parsed after tls: */
    bool set_address, set_token, set_token_file, set_ssl, set_ssl_verify, set_ca, set_cert,
        set_key, set_ca_path, set_server_name, set_ns, set_partition;
} sc_loader;

/* Reads a one-line secret (a token) from `path` into *dst (replacing it);
 * surrounding whitespace is dropped; an empty, multi-line or unreadable file
 * is a problem reported at `line` under `field` (from_env, when not NULL,
 * is appended to the path in the message). */
void sc_config_read_secret_file(sc_loader *L, const char *path, unsigned line,
                                const char *field, const char *from_env, char **dst);
/* The consul: section (sets cfg->consul.enabled). */
void sc_config_parse_consul(sc_loader *L, const sc_ynode *m);
/* With Consul enabled, after the whole file: the CONSUL_* environment fills
 * in what the file left unset, then the address, TLS and token are checked
 * (and the token file read). */
void sc_config_apply_consul_env(sc_loader *L);
/* Rate limits and the redis: section (ratelimit.c). `path` names the list
 * ("inbound.rate_limits", "rate_limits", "upstreams[0].rate_limits"). */
void sc_config_parse_rate_limits(sc_cx *c, const sc_ynode *v, const char *path,
                                 sc_rate_limit **out, size_t *n_out);
void sc_config_rate_limits_free(sc_rate_limit *v, size_t n);
void sc_config_parse_redis(sc_cx *c, const sc_ynode *m, sc_config *cfg);
void sc_config_redis_free(sc_config *cfg);
/* The checks that need the whole configuration (Redis, mutual TLS, JWT);
 * fills in the per-decision budget of global limits. `prefix` as in
 * sc_config_parse_policy; inbound: the limits of the inbound listener. */
void sc_config_rl_cross_check(sc_cx *c, sc_config *cfg, const char *file, const char *prefix,
                              sc_rate_limit *v, size_t n, bool inbound);
struct json_t *sc_config_rate_limits_json(const sc_rate_limit *v, size_t n);
struct json_t *sc_config_redis_json(const sc_config *cfg);
/* The tracing: section (config_tracing.c): defaults, parsing, release, JSON. */
void sc_config_tracing_defaults(sc_tracing_config *t);
void sc_config_parse_tracing(sc_cx *c, const sc_ynode *m, sc_tracing_config *t);
void sc_config_tracing_free(sc_tracing_config *t);
struct json_t *sc_config_tracing_to_json(const sc_tracing_config *t);

/* The access_log: section (access_log_config.c): defaults, parsing and
 * checks into *a, its JSON form, and what it owns. */
void sc_config_access_log_defaults(sc_access_log_config *a);
void sc_config_parse_access_log(sc_cx *c, const sc_ynode *m, sc_access_log_config *a);
struct json_t *sc_config_access_log_json(const sc_access_log_config *a);
void sc_config_access_log_free(sc_access_log_config *a);

#endif

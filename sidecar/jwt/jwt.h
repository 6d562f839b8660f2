/*
 * jwt.h: JSON Web Tokens (RFC 7519) signed as JWS compact serialisations
 * (RFC 7515): parsing, signature verification, the registered claims
 * (iss, aud, exp, nbf), a rule's required claims and scopes, the claims
 * handed on, and the shape of a refusal. The pure half of the inbound
 * `jwt:` stage: no I/O, no locks, the time is an argument. jwt_runtime.h
 * adds keys that change (files, URLs), the verified-token cache and metrics.
 *
 * The JOSE library is libcjose (Debian libcjose0 0.6.2, OpenSSL and jansson,
 * both already used here). Against libjwt 1.10 (the other Debian choice):
 *   - libjwt's jwt_decode(token, key) takes the algorithm from the token's
 *     header and the key as bytes (PEM or HMAC secret): an HS256 token is
 *     verified with HMAC keyed by whatever bytes are passed, so a caller
 *     holding the RSA public key can forge tokens (algorithm confusion)
 *     unless every caller decodes twice; it has no JWKS and no JWK import
 *     (keys must be converted to PEM by hand); it reports only errno values;
 *     it refuses any typ other than "JWT" (so RFC 9068 "at+jwt" access
 *     tokens); and with a NULL key it accepts alg "none".
 *   - libcjose verifies with a JWK object whose key type it checks before
 *     using it (an HMAC verification needs an "oct" key), builds keys from
 *     RFC 7518 parameters (n/e, crv/x/y with an on-curve check, k), and
 *     names failures (cjose_err: code, message, file, line).
 * libcjose 0.6.2 still computes an HMAC digest with whatever key it is
 * given before the type check, and its jws import leaks a header without
 * "alg". So this module decides everything before cjose runs: the token's
 * segments are decoded here (strict base64url, bounded sizes), the header
 * is parsed here (alg must be in the issuer's explicit list; "none" and
 * unknown names are refused; "crit" is refused), and a key is only ever
 * paired with an alg it may verify (jwks.h: RSA keys RS*, an EC key the ES
 * algorithm of its curve, oct keys HS*), with the signature length checked
 * for the algorithm. cjose then verifies the signature (constant-time
 * compare for HMAC).
 *
 * Threads: everything here is reentrant. A key set (jwks.h) and claims are
 * reference counted with atomics and immutable, so workers share them.
 */
#ifndef SC_JWT_H
#define SC_JWT_H

#include "jwt/jwks.h"
#include "jwt/jwt_config.h"

#include <stdatomic.h>

/* What one request's token check came to. The first three let the request
 * go on; PENDING parks it until the issuer's keys were fetched again; the
 * rest refuse it (401, or 403 for SC_JWT_CLAIMS). */
typedef enum {
    SC_JWT_OK = 0,          /* a valid token: claims attached */
    SC_JWT_SKIPPED,         /* no rule for the path, or mode off: the token is not looked at */
    SC_JWT_ANONYMOUS,       /* mode optional and no token: goes on without claims */
    SC_JWT_PENDING,         /* unknown kid, the issuer's JWKS is being fetched: wait, then check again */
    SC_JWT_MISSING,         /* mode required and no token */
    SC_JWT_MALFORMED,       /* not a JWS compact JWT, bad base64url / JSON, too large, bad claim types */
    SC_JWT_ALG_REFUSED,     /* alg none, unknown, or not in the issuer's algorithms */
    SC_JWT_UNKNOWN_ISSUER,  /* iss names no issuer this path accepts */
    SC_JWT_UNKNOWN_KEY,     /* no key of the issuer fits the kid and alg (or no keys yet) */
    SC_JWT_BAD_SIGNATURE,
    SC_JWT_EXPIRED,         /* exp (+ leeway) passed, or no exp while the issuer requires one */
    SC_JWT_NOT_YET_VALID,   /* nbf (- leeway) still ahead */
    SC_JWT_WRONG_AUDIENCE,  /* aud names none of the issuer's audiences */
    SC_JWT_CLAIMS,          /* valid, but a required claim / scope is missing: 403 */
    SC_JWT_OUTCOMES
} sc_jwt_outcome;

/* Metric label and the tail of x-sidecar-reason: "ok", "missing", "bad_signature", ... */
const char *sc_jwt_outcome_name(sc_jwt_outcome o);
static inline bool sc_jwt_outcome_passes(sc_jwt_outcome o)
{
    return o == SC_JWT_OK || o == SC_JWT_SKIPPED || o == SC_JWT_ANONYMOUS;
}
static inline bool sc_jwt_outcome_refuses(sc_jwt_outcome o)
{
    return o >= SC_JWT_MISSING && o < SC_JWT_OUTCOMES;
}

/* ---- claims ---- */

/* One claim in string form: a string as it is; a number in decimal (an
 * integer without fraction); true / false; null as ""; an array as its
 * elements' string forms joined with ","; an object as compact JSON. Members
 * of objects are also listed under dotted names ("realm.roles"), at most
 * SC_JWT_CLAIM_DEPTH levels down. items: an array's elements (n_items),
 * otherwise the value itself (n_items = 1). */
typedef struct sc_jwt_claim_entry {
    const char *name;
    const char *value;
    const char *const *items;
    uint32_t n_items;
    bool header_safe;       /* value has no control characters (may be a header value) */
} sc_jwt_claim_entry;

#define SC_JWT_CLAIM_DEPTH 4
#define SC_JWT_MAX_CLAIMS 256       /* more (with nested members) is a malformed token */
#define SC_JWT_CLAIM_VALUE_MAX 4096 /* a longer string form is kept but never forwarded as a header */

typedef struct sc_jwt_claims {
    _Atomic uint32_t refs;
    uint32_t issuer;        /* index in the config's issuers */
    int64_t exp;            /* unix seconds; INT64_MAX when the token has none */
    uint64_t keys_gen;      /* the issuer's key generation that verified it (runtime) */
    size_t n;
    sc_jwt_claim_entry *v;        /* sorted by name */
} sc_jwt_claims;

sc_jwt_claims *sc_jwt_claims_ref(sc_jwt_claims *c);    /* NULL-safe */
void sc_jwt_claims_unref(sc_jwt_claims *c);            /* NULL-safe */
/* The claim `name` (exact, case-sensitive) or NULL. */
const sc_jwt_claim_entry *sc_jwt_claims_find(const sc_jwt_claims *c, const char *name);

/* ---- tokens ---- */

/* A token split and decoded, not yet verified. Points into the token text
 * (which must outlive it) except payload and sig, which it owns. */
typedef struct sc_jwt_token {
    uint32_t alg;               /* SC_JWT_* bit (0 when refused) */
    char alg_name[16];          /* as sent, printable, for messages */
    char kid[SC_JWKS_MAX_KID + 1];
    bool has_kid;
    const char *text;           /* the whole token, as sent (not NUL terminated) */
    size_t text_len;
    const char *signing_input;  /* header "." payload, as sent */
    size_t signing_len;
    uint8_t *sig;
    size_t sig_len;
    struct json_t *payload;     /* the claims object */
    const char *iss;            /* in payload; NULL when absent */
} sc_jwt_token;

/*
 * Splits and decodes `tok` (no "Bearer "), checks the header (alg known and
 * not none, no crit, kid a short string) and that the payload is a JSON
 * object (duplicate names refused) whose registered claims have the types
 * RFC 7519 gives them (iss a string, aud a string or strings, exp / nbf /
 * iat numbers). Returns SC_JWT_OK (then sc_jwt_token_clear the token),
 * SC_JWT_MALFORMED or SC_JWT_ALG_REFUSED with why.
 */
sc_jwt_outcome sc_jwt_token_parse(const char *tok, size_t len, uint32_t max_bytes, sc_jwt_token *t, char *why,
                                  size_t whylen);
void sc_jwt_token_clear(sc_jwt_token *t);

/*
 * The checks that need the issuer: alg in its algorithms, aud, exp and nbf
 * with its leeway at now_unix. SC_JWT_OK or the refusal with why.
 */
sc_jwt_outcome sc_jwt_token_check_claims(const sc_jwt_token *t, const sc_jwt_issuer_cfg *iss, int64_t now_unix,
                                         char *why, size_t whylen);

/*
 * Verifies the signature with the keys that may verify the token's alg and
 * whose kid matches the token's (a key without kid matches any token, a
 * token without kid is tried with every key). SC_JWT_OK, SC_JWT_UNKNOWN_KEY
 * (no such key) or SC_JWT_BAD_SIGNATURE, with why.
 */
sc_jwt_outcome sc_jwt_token_verify(const sc_jwt_token *t, const sc_jwks *keys, char *why, size_t whylen);

/* The claims of a parsed token (one reference), NULL on -ENOMEM or when the
 * payload has more than SC_JWT_MAX_CLAIMS (why says so). */
sc_jwt_claims *sc_jwt_claims_build(const sc_jwt_token *t, uint32_t issuer, char *why, size_t whylen);

/* A rule's requirements on verified claims: SC_JWT_OK or SC_JWT_CLAIMS. */
sc_jwt_outcome sc_jwt_rule_check(const sc_jwt_rule *r, const sc_jwt_claims *c, char *why, size_t whylen);

/*
 * The token in one value of the rule's header. For Authorization the
 * value must be "Bearer <token>" (scheme case-insensitive, RFC 6750 2.1);
 * another header carries the token alone (a "Bearer " prefix is accepted
 * too). Leading and trailing blanks are ignored. Returns 1 with the token
 * in *tok / *toklen (pointing into value), 0 when the value holds no
 * bearer token (another scheme: as if absent), -1 when it is malformed
 * ("Bearer" with nothing or blanks inside).
 */
int sc_jwt_token_from_header(const sc_jwt_rule *r, const char *value, size_t len, const char **tok, size_t *toklen);

/* The same without the look for blanks inside the token, which
 * sc_jwt_token_has_blank does apart: the request path looks only when the
 * token is not in the verified-token cache (a cached token has none). */
int sc_jwt_token_in_value(const sc_jwt_rule *r, const char *value, size_t len, const char **tok, size_t *toklen);
bool sc_jwt_token_has_blank(const char *tok, size_t len);

/* ---- refusals ---- */

/*
 * How a refused request is answered (RFC 6750 3): 401 with
 * `WWW-Authenticate: Bearer realm="<realm>"` when there was no token, and
 * `Bearer realm="<realm>", error="invalid_token", error_description="<why>"`
 * for a token that was malformed, expired or not verifiable; 403 with
 * error="insufficient_scope" when claims or scopes are missing. gRPC
 * callers get UNAUTHENTICATED (16) / PERMISSION_DENIED (7) with the same
 * text as grpc-message, and the same www-authenticate entry. The reason
 * (x-sidecar-reason) is "jwt-" + sc_jwt_outcome_name with '_' as '-'.
 * Quoted texts keep only characters RFC 6750 allows there.
 */
typedef struct sc_jwt_refusal {
    int http_status;                /* 401 / 403 */
    int grpc_status;                /* 16 / 7 */
    char reason[32];                /* "jwt-expired" */
    char www_authenticate[512];
    char message[320];              /* body line / grpc-message: "JWT refused: <why>" */
} sc_jwt_refusal;

void sc_jwt_refusal_for(sc_jwt_outcome o, const char *why, const char *realm, sc_jwt_refusal *out);

#endif

/*
 * jwks.h: a JSON Web Key Set (RFC 7517) turned into verification keys.
 *
 * Parsing is strict and bounded: at most SC_JWKS_MAX_BYTES of JSON
 * (duplicate member names refused), at most SC_JWKS_MAX_KEYS keys, a kid of
 * at most SC_JWKS_MAX_KID bytes. Keys the sidecar cannot or must not use are
 * skipped with a note (not an error): `use` other than "sig", `key_ops`
 * without "verify", a kty or curve it does not verify with (OKP, EC
 * secp256k1), an `alg` it does not support. Keys that claim to be usable
 * but are broken are errors: bad base64url, a missing parameter, an RSA
 * modulus under 2048 bits, an EC point off its curve, private key material
 * (`d`, `p`, ...) in an RSA or EC key, an `oct` key where secrets are not
 * allowed (a JWKS fetched from a URL), an empty HMAC secret. A set with no
 * usable key is an error.
 *
 * Each key records which algorithms it may verify (sc_jwk.algs): RSA keys
 * the RS family, EC keys the ES algorithm of their curve only (P-256:
 * ES256), oct keys the HS family; a JWK `alg` narrows that to one. The
 * verifier only ever pairs a token with a key whose algs contain the
 * token's alg, which is what stops algorithm confusion (an HS256 token
 * "signed" with an RSA public key as the HMAC secret never meets an RSA
 * key) before libcjose sees the pair.
 *
 * Memory and threads: a set is immutable after sc_jwks_parse and reference
 * counted (atomically); any thread may verify with it while it holds a
 * reference. The libcjose keys inside are never retained or released
 * outside parse and the last unref (cjose's own count is not atomic).
 */
#ifndef SC_JWKS_H
#define SC_JWKS_H

#include "core/common.h"

#include <stdatomic.h>

#define SC_JWKS_MAX_BYTES (512u << 10)
#define SC_JWKS_MAX_KEYS 64
#define SC_JWKS_MAX_KID 256
#define SC_JWKS_MIN_RSA_BITS 2048
#define SC_JWKS_MAX_RSA_BITS 16384
#define SC_JWKS_MIN_HMAC_BYTES 16      /* shorter secrets are refused (RFC 7518 3.2 wants >= the hash size) */

typedef enum { SC_JWK_RSA = 1, SC_JWK_EC, SC_JWK_OCT } sc_jwk_type;

typedef struct sc_jwk {
    char *kid;                  /* NULL when the key has none */
    sc_jwk_type type;
    uint32_t algs;              /* SC_JWT_* bits this key may verify */
    unsigned bits;              /* RSA modulus / EC field / HMAC secret size in bits */
    void *cjose;                /* cjose_jwk_t * */
} sc_jwk;

typedef struct sc_jwks {
    _Atomic uint32_t refs;
    size_t n;
    sc_jwk *keys;
    unsigned char digest[32];   /* SHA-256 of the document: "unchanged" means the same bytes */
} sc_jwks;

/*
 * Parses a JWKS document. allow_secrets: whether `oct` keys (HMAC secrets)
 * may appear (a local file: yes; a URL: no). On success returns the number
 * of usable keys (>= 1) and *out holds one reference; notes (may be NULL)
 * receives "; "-separated lines about skipped keys ("" when none). On
 * failure returns -EINVAL (or -ENOMEM) with the reason in err (naming the
 * key by index and kid) and *out NULL.
 */
int sc_jwks_parse(const char *doc, size_t len, bool allow_secrets, sc_jwks **out, char *notes, size_t notes_len,
                  char *err, size_t errlen);

sc_jwks *sc_jwks_ref(sc_jwks *k);      /* NULL-safe */
void sc_jwks_unref(sc_jwks *k);        /* NULL-safe; frees with the last reference */

/* Reads and parses a JWKS file (at most SC_JWKS_MAX_BYTES); same returns,
 * the error names the path. */
int sc_jwks_load_file(const char *path, bool allow_secrets, sc_jwks **out, char *notes, size_t notes_len, char *err,
                      size_t errlen);

#endif

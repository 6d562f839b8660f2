/*
 * jwt_mint.h: a test issuer's tools, shared by tests/unit/test_jwt.c and
 * tests/bench/jwt_bench.c: base64url, public JWKs of OpenSSL keys, and
 * JWS compact tokens signed with RS*, ES* (raw r || s) or HS*. Test code:
 * aborts on any OpenSSL failure; the caller frees every returned string.
 */
#ifndef SC_TEST_JWT_MINT_H
#define SC_TEST_JWT_MINT_H

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static inline char *b64url(const uint8_t *in, size_t len)
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char *out = malloc(len * 4 / 3 + 4);
    size_t k = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[k++] = al[(acc >> bits) & 63];
        }
    }
    if (bits)
        out[k++] = al[(acc << (6 - bits)) & 63];
    out[k] = 0;
    return out;
}

static inline char *b64s(const char *s)
{
    return b64url((const uint8_t *)s, strlen(s));
}

static inline char *bn_b64(EVP_PKEY *k, const char *param, size_t pad)
{
    BIGNUM *bn = NULL;
    if (EVP_PKEY_get_bn_param(k, param, &bn) != 1)
        abort();
    size_t n = pad ? pad : (size_t)BN_num_bytes(bn);
    uint8_t *buf = calloc(1, n);
    BN_bn2binpad(bn, buf, (int)n);
    char *s = b64url(buf, n);
    free(buf);
    BN_free(bn);
    return s;
}

/* A public JWK of k; extra is appended inside the object (", ..." or ""). */
static inline char *jwk_of(EVP_PKEY *k, const char *kid, const char *extra)
{
    char *out = malloc(4096);
    if (EVP_PKEY_get_base_id(k) == EVP_PKEY_RSA) {
        char *n = bn_b64(k, OSSL_PKEY_PARAM_RSA_N, 0), *e = bn_b64(k, OSSL_PKEY_PARAM_RSA_E, 0);
        snprintf(out, 4096, "{\"kty\":\"RSA\",\"kid\":\"%s\",\"n\":\"%s\",\"e\":\"%s\"%s}", kid, n, e, extra);
        free(n);
        free(e);
    } else {
        size_t bytes = (size_t)(EVP_PKEY_get_bits(k) + 7) / 8;
        char *x = bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_X, bytes), *y = bn_b64(k, OSSL_PKEY_PARAM_EC_PUB_Y, bytes);
        snprintf(out, 4096, "{\"kty\":\"EC\",\"kid\":\"%s\",\"crv\":\"%s\",\"x\":\"%s\",\"y\":\"%s\"%s}", kid,
                 bytes == 32 ? "P-256" : "P-384", x, y, extra);
        free(x);
        free(y);
    }
    return out;
}

static inline char *oct_jwk(const uint8_t *k, size_t n, const char *kid)
{
    char *b = b64url(k, n), *out = malloc(512);
    snprintf(out, 512, "{\"kty\":\"oct\",\"kid\":\"%s\",\"k\":\"%s\"}", kid, b);
    free(b);
    return out;
}

static inline const EVP_MD *md_of(const char *alg)
{
    return strstr(alg, "256") ? EVP_sha256() : strstr(alg, "384") ? EVP_sha384() : EVP_sha512();
}

/* Signs input with alg; key is an EVP_PKEY (RS/ES) or g_hs-like bytes (HS, keylen). */
static inline char *sign(const char *alg, const void *key, size_t keylen, const char *input)
{
    uint8_t sig[1024];
    size_t sl = sizeof(sig);
    if (alg[0] == 'H') {
        unsigned int hl = 0;
        HMAC(md_of(alg), key, (int)keylen, (const uint8_t *)input, strlen(input), sig, &hl);
        sl = hl;
    } else {
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (EVP_DigestSignInit(ctx, NULL, md_of(alg), NULL, (EVP_PKEY *)key) != 1 ||
            EVP_DigestSign(ctx, sig, &sl, (const uint8_t *)input, strlen(input)) != 1)
            abort();
        EVP_MD_CTX_free(ctx);
        if (alg[0] == 'E') { /* DER -> r || s */
            const uint8_t *p = sig;
            ECDSA_SIG *es = d2i_ECDSA_SIG(NULL, &p, (long)sl);
            size_t half = strstr(alg, "256") ? 32 : 48;
            BN_bn2binpad(ECDSA_SIG_get0_r(es), sig, (int)half);
            BN_bn2binpad(ECDSA_SIG_get0_s(es), sig + half, (int)half);
            sl = 2 * half;
            ECDSA_SIG_free(es);
        }
    }
    return b64url(sig, sl);
}

/* header and payload are JSON texts. */
static inline char *mint_raw(const char *header, const char *payload, const char *alg, const void *key, size_t keylen)
{
    char *h = b64s(header), *p = b64s(payload);
    char *input = malloc(strlen(h) + strlen(p) + 2);
    sprintf(input, "%s.%s", h, p);
    char *s = alg ? sign(alg, key, keylen, input) : strdup("");
    char *tok = malloc(strlen(input) + strlen(s) + 2);
    sprintf(tok, "%s.%s", input, s);
    free(h);
    free(p);
    free(input);
    free(s);
    return tok;
}

#endif

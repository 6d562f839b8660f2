/* Unit tests for the jwt module: tokens signed here with OpenSSL by a test
 * issuer (RSA 2048, EC P-256 and P-384, HMAC secrets) and, for interop,
 * by PyJWT (tests/data/jwt/issuer.py); every algorithm, "none" and
 * algorithm confusion refused, exp / nbf with leeway, iss and aud, key
 * sets from files (reloaded) and from a URL served by the test (fetch,
 * unknown-kid refetch and its rate limit, failures that keep the keys),
 * the verified-token cache, hostile tokens and JWKS documents, the
 * `inbound.jwt` config (file:line errors), rules and paths, forwarded
 * headers and the refusal shape. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <ev.h>
#include <jansson.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "http/grpc.h"
#include "jwt/jwks.h"
#include "jwt/jwt.h"
#include "jwt/jwt_cache.h"
#include "jwt/jwt_config.h"
#include "jwt/jwt_internal.h"
#include "jwt/jwt_runtime.h"
#include "jwt_mint.h"

#define ISS "https://issuer.test"

static EVP_PKEY *g_rsa, *g_rsa2, *g_ec, *g_ec384;
static uint8_t g_hs[32] = "0123456789abcdef0123456789abcdef";
static char g_dir[64];
static int64_t g_now;

/* ---- helpers: keys, tokens (signing: jwt_mint.h) ---- */

/* The test issuer's usual key set: rsa-1, ec-1, ec384-1, hs-1. */
static char *std_jwks(void)
{
    char *a = jwk_of(g_rsa, "rsa-1", ""), *b = jwk_of(g_ec, "ec-1", ""), *c = jwk_of(g_ec384, "ec384-1", ""),
         *d = oct_jwk(g_hs, sizeof(g_hs), "hs-1");
    char *out = malloc(16384);
    snprintf(out, 16384, "{\"keys\":[%s,%s,%s,%s]}", a, b, c, d);
    free(a);
    free(b);
    free(c);
    free(d);
    return out;
}

static void write_file(const char *name, const char *content)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s.tmp", g_dir, name);
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(content, f);
    fclose(f);
    char q[256];
    snprintf(q, sizeof(q), "%s/%s", g_dir, name);
    assert_int_equal(rename(p, q), 0); /* a new inode: the watch sees it however fast */
}

/* A token from the test issuer: claims is the JSON object body without the
 * braces' iss/aud/exp defaults ("" for none). */
static char *mint(const char *alg, const char *kid, const char *claims)
{
    char header[256], payload[4096];
    snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg, kid);
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"aud\":\"orders\",\"sub\":\"alice\",\"exp\":%lld%s%s}", ISS,
             (long long)g_now + 300, claims[0] ? "," : "", claims);
    const void *key = alg[0] == 'H' ? (const void *)g_hs
                      : alg[0] == 'R' ? (const void *)g_rsa
                      : strstr(alg, "384") ? (const void *)g_ec384
                                           : (const void *)g_ec;
    return mint_raw(header, payload, alg, key, sizeof(g_hs));
}

/* ---- helpers: config ---- */

static char *diag_text(const sc_diags *d)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    sc_diags_print(d, f);
    fclose(f);
    return buf;
}

/* Loads sidecar.yaml with `jwt` as the inbound.jwt section (indented 4). */
static sc_config *load_jwt(const char *jwt, char **errors)
{
    char yaml[16384];
    snprintf(yaml, sizeof(yaml),
             "service: {name: orders}\n"
             "inbound:\n"
             "  listen: 127.0.0.1:15001\n"
             "  app: 127.0.0.1:8080\n"
             "  jwt:\n%s",
             jwt);
    sc_config *cfg = NULL;
    sc_diags d = {0};
    int rc = sc_config_load_string(yaml, strlen(yaml), "sidecar.yaml", g_dir, &cfg, &d);
    if (errors)
        *errors = diag_text(&d);
    else if (rc < 0) {
        char *t = diag_text(&d);
        fprintf(stderr, "config refused:\n%s", t);
        free(t);
        fail();
    }
    sc_diags_free(&d);
    return cfg;
}

#define STD_ISSUER                                                                                                   \
    "    issuers:\n"                                                                                                 \
    "      - name: main\n"                                                                                           \
    "        issuer: " ISS "\n"                                                                                      \
    "        audiences: [orders]\n"                                                                                  \
    "        algorithms: [RS256, ES256, ES384, HS256]\n"                                                             \
    "        jwks_file: jwks.json\n"                                                                                 \
    "        leeway: 30s\n"

typedef struct fixture {
    sc_config *cfg;
    sc_jwt *j;
} fixture;

static void fx_open(fixture *fx, const char *rules)
{
    char jwt[4096];
    snprintf(jwt, sizeof(jwt), "%s%s", STD_ISSUER, rules);
    fx->cfg = load_jwt(jwt, NULL);
    assert_non_null(fx->cfg);
    char err[512];
    assert_int_equal(sc_jwt_new(fx->cfg->inbound.jwt, 2, &fx->j, err, sizeof(err)), 0);
}

static void fx_close(fixture *fx)
{
    sc_jwt_free(fx->j);
    sc_config_free(fx->cfg);
}

#define RULE_ALL "    rules:\n      - prefix: /\n"

/* One issuer "main" of ISS with these fields (lines indented by 8), and
 * one rule for every path. */
static void fx_issuer(fixture *fx, const char *fields)
{
    char jwt[2048];
    snprintf(jwt, sizeof(jwt), "    issuers:\n      - name: main\n        issuer: " ISS "\n%s" RULE_ALL, fields);
    fx->cfg = load_jwt(jwt, NULL);
    assert_non_null(fx->cfg);
    char err[512];
    assert_int_equal(sc_jwt_new(fx->cfg->inbound.jwt, 1, &fx->j, err, sizeof(err)), 0);
}

static sc_jwt_outcome check(fixture *fx, const char *tok, sc_jwt_result *r)
{
    const sc_jwt_rule *rule = sc_jwt_rule_for_path(fx->cfg->inbound.jwt, "/", 1);
    sc_jwt_check_token(fx->j, 0, rule, tok, tok ? strlen(tok) : 0, g_now, 0, r);
    return r->outcome;
}

static sc_jwt_outcome check_once(fixture *fx, const char *tok)
{
    sc_jwt_result r;
    sc_jwt_outcome o = check(fx, tok, &r);
    sc_jwt_result_clear(&r);
    return o;
}

/* ---- group setup ---- */

static int group_setup(void **st)
{
    (void)st;
    g_now = (int64_t)time(NULL);
    g_rsa = EVP_RSA_gen(2048);
    g_rsa2 = EVP_RSA_gen(2048);
    g_ec = EVP_EC_gen("P-256");
    g_ec384 = EVP_EC_gen("P-384");
    snprintf(g_dir, sizeof(g_dir), "/tmp/sc-jwt-XXXXXX");
    if (!mkdtemp(g_dir) || !g_rsa || !g_rsa2 || !g_ec || !g_ec384)
        return -1;
    char *j = std_jwks();
    write_file("jwks.json", j);
    free(j);
    sc_addr_set_dns_enabled(false);
    return 0;
}

static int group_teardown(void **st)
{
    (void)st;
    EVP_PKEY_free(g_rsa);
    EVP_PKEY_free(g_rsa2);
    EVP_PKEY_free(g_ec);
    EVP_PKEY_free(g_ec384);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---- algorithms ---- */

static void test_each_algorithm_verifies(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    static const char *const algs[][2] = {{"RS256", "rsa-1"}, {"ES256", "ec-1"}, {"ES384", "ec384-1"},
                                          {"HS256", "hs-1"}};
    for (size_t i = 0; i < SC_ARRAY_LEN(algs); i++) {
        char *t = mint(algs[i][0], algs[i][1], "\"tenant\":\"acme\"");
        sc_jwt_result r;
        assert_int_equal(check(&fx, t, &r), SC_JWT_OK);
        assert_string_equal(r.issuer, "main");
        assert_string_equal(sc_jwt_claim(&r, "sub"), "alice");
        assert_string_equal(sc_jwt_claim(&r, "tenant"), "acme");
        assert_false(r.cache_hit);
        sc_jwt_result_clear(&r);
        free(t);
    }
    fx_close(&fx);
}

static void test_algorithm_not_in_issuer_list(void **st)
{
    (void)st;
    /* RS384 is a fine algorithm, but the issuer lists only RS256, ES256, ES384, HS256 */
    fixture fx;
    fx_open(&fx, RULE_ALL);
    char *t = mint("RS384", "rsa-1", "");
    sc_jwt_result r;
    assert_int_equal(check(&fx, t, &r), SC_JWT_ALG_REFUSED);
    assert_non_null(strstr(r.why, "RS384 is not one of issuer main's algorithms"));
    sc_jwt_result_clear(&r);
    free(t);
    fx_close(&fx);
}

static void test_none_refused(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    char payload[256];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"aud\":\"orders\",\"exp\":%lld}", ISS, (long long)g_now + 60);
    static const char *const nones[] = {"none", "None", "NONE", "nOnE"};
    for (size_t i = 0; i < SC_ARRAY_LEN(nones); i++) {
        char header[64];
        snprintf(header, sizeof(header), "{\"alg\":\"%s\"}", nones[i]);
        char *t = mint_raw(header, payload, NULL, NULL, 0); /* "h.p." */
        sc_jwt_result r;
        assert_int_equal(check(&fx, t, &r), SC_JWT_ALG_REFUSED);
        assert_non_null(strstr(r.why, "never accepted"));
        sc_jwt_result_clear(&r);
        free(t);
    }
    /* config: none cannot even be listed */
    char *errs = NULL;
    sc_config *cfg = load_jwt("    issuers:\n"
                              "      - name: x\n"
                              "        issuer: " ISS "\n"
                              "        algorithms: [none]\n"
                              "        jwks_file: jwks.json\n" RULE_ALL,
                              &errs);
    assert_null(cfg);
    assert_non_null(strstr(errs, "sidecar.yaml:9: inbound.jwt.issuers[0].algorithms[0]: alg none"));
    free(errs);
    fx_close(&fx);
}

/* The classic forgery: alg HS256 with the RSA public key (its PEM) as the
 * HMAC secret. Refused whether or not the issuer also allows HS256. */
static void test_hs256_with_rsa_public_key_refused(void **st)
{
    (void)st;
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PUBKEY(bio, g_rsa);
    char *pem;
    long pl = BIO_get_mem_data(bio, &pem);
    char payload[256];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"aud\":\"orders\",\"exp\":%lld}", ISS,
             (long long)g_now + 60);
    char *t = mint_raw("{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}", payload, "HS256", pem, (size_t)pl);
    /* also keyed with the raw modulus, in case a verifier used key bytes */
    uint8_t nbuf[512];
    BIGNUM *n = NULL;
    EVP_PKEY_get_bn_param(g_rsa, OSSL_PKEY_PARAM_RSA_N, &n);
    int nl = BN_bn2bin(n, nbuf);
    BN_free(n);
    char *t2 = mint_raw("{\"alg\":\"HS256\",\"kid\":\"rsa-1\"}", payload, "HS256", nbuf, (size_t)nl);

    /* an issuer that allows RS256 and HS256 and has an RSA key under that kid */
    fixture fx;
    fx_open(&fx, RULE_ALL);
    sc_jwt_result r;
    assert_int_equal(check(&fx, t, &r), SC_JWT_UNKNOWN_KEY);
    assert_non_null(strstr(r.why, "key \"rsa-1\" is not a key for HS256"));
    sc_jwt_result_clear(&r);
    assert_int_equal(check_once(&fx, t2), SC_JWT_UNKNOWN_KEY);
    fx_close(&fx);

    /* an RS256-only issuer: refused before any key is looked at */
    char *a = jwk_of(g_rsa, "rsa-1", ""), doc[4096];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", a);
    write_file("rsa_only.json", doc);
    fx_issuer(&fx, "        algorithms: [RS256]\n        jwks_file: rsa_only.json\n");
    assert_int_equal(check_once(&fx, t), SC_JWT_ALG_REFUSED);
    fx_close(&fx);
    char err[256];

    /* the same with the token PyJWT's side of the test made, below the library directly */
    sc_jwt_token tk;
    assert_int_equal(sc_jwt_token_parse(t, strlen(t), 8192, &tk, err, sizeof(err)), SC_JWT_OK);
    sc_jwks *keys;
    assert_int_equal(sc_jwks_parse(doc, strlen(doc), false, &keys, NULL, 0, err, sizeof(err)), 1);
    assert_int_equal(sc_jwt_token_verify(&tk, keys, err, sizeof(err)), SC_JWT_UNKNOWN_KEY);
    sc_jwt_token_clear(&tk);
    sc_jwks_unref(keys);
    free(a);
    free(t);
    free(t2);
    BIO_free(bio);
}

/* A key without kid is tried for any token; a token without kid tries every key. */
static void test_key_without_kid(void **st)
{
    (void)st;
    char *a = jwk_of(g_rsa, "x", ""), doc[4096];
    char *kid = strstr(a, "\"kid\":\"x\",");
    memmove(kid, kid + 10, strlen(kid + 10) + 1);
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", a);
    write_file("nokid.json", doc);
    fixture fx;
    fx_issuer(&fx, "        algorithms: [RS256]\n        jwks_file: nokid.json\n");
    char payload[256];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"exp\":%lld}", ISS, (long long)g_now + 300);
    char *t1 = mint_raw("{\"alg\":\"RS256\",\"kid\":\"any\"}", payload, "RS256", g_rsa, 0);
    char *t2 = mint_raw("{\"alg\":\"RS256\"}", payload, "RS256", g_rsa, 0);
    char *t3 = mint_raw("{\"alg\":\"RS256\"}", payload, "RS256", g_rsa2, 0);
    assert_int_equal(check_once(&fx, t1), SC_JWT_OK);
    assert_int_equal(check_once(&fx, t2), SC_JWT_OK);
    sc_jwt_result r;
    assert_int_equal(check(&fx, t3, &r), SC_JWT_BAD_SIGNATURE);
    assert_non_null(strstr(r.why, "the issuer's key"));
    sc_jwt_result_clear(&r);
    fx_close(&fx);
    free(a);
    free(t1);
    free(t2);
    free(t3);
}

/* An ES256 token cannot be checked with a P-384 key, nor ES384 with P-256. */
static void test_ec_curve_must_fit(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    char payload[256];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"aud\":\"orders\",\"exp\":%lld}", ISS,
             (long long)g_now + 60);
    char *t = mint_raw("{\"alg\":\"ES384\",\"kid\":\"ec-1\"}", payload, "ES384", g_ec, 0);
    assert_int_equal(check_once(&fx, t), SC_JWT_UNKNOWN_KEY);
    free(t);
    fx_close(&fx);
}

static void test_bad_signature(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    static const char *const algs[][2] = {{"RS256", "rsa-1"}, {"ES256", "ec-1"}, {"HS256", "hs-1"}};
    for (size_t i = 0; i < SC_ARRAY_LEN(algs); i++) {
        char *t = mint(algs[i][0], algs[i][1], "");
        char *last = t + strlen(t) - 3;
        *last = *last == 'A' ? 'B' : 'A'; /* a flipped bit in the signature */
        sc_jwt_result r;
        assert_int_equal(check(&fx, t, &r), SC_JWT_BAD_SIGNATURE);
        assert_non_null(strstr(r.why, "does not verify"));
        sc_jwt_result_clear(&r);
        free(t);
    }
    /* signed by another RSA key under the known kid */
    char payload[256];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"aud\":\"orders\",\"exp\":%lld}", ISS,
             (long long)g_now + 60);
    char *t = mint_raw("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", payload, "RS256", g_rsa2, 0);
    assert_int_equal(check_once(&fx, t), SC_JWT_BAD_SIGNATURE);
    free(t);
    /* a payload changed after signing */
    char *good = mint("ES256", "ec-1", "\"role\":\"user\"");
    char *dot1 = strchr(good, '.'), *dot2 = strchr(dot1 + 1, '.');
    char forged_payload[512];
    snprintf(forged_payload, sizeof(forged_payload),
             "{\"iss\":\"%s\",\"aud\":\"orders\",\"sub\":\"alice\",\"exp\":%lld,\"role\":\"admin\"}", ISS,
             (long long)g_now + 300);
    char *fp = b64s(forged_payload);
    char forged[4096];
    snprintf(forged, sizeof(forged), "%.*s.%s%s", (int)(dot1 - good), good, fp, dot2);
    assert_int_equal(check_once(&fx, forged), SC_JWT_BAD_SIGNATURE);
    free(fp);
    free(good);
    fx_close(&fx);
}

/* ---- registered claims ---- */

static char *mint_times(const char *fields)
{
    char header[] = "{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", payload[512];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"aud\":\"orders\"%s%s}", ISS, fields[0] ? "," : "", fields);
    return mint_raw(header, payload, "ES256", g_ec, 0);
}

static void test_exp_nbf_leeway(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL); /* leeway 30s */
    struct {
        long long exp_off, nbf_off;
        bool has_nbf;
        sc_jwt_outcome want;
    } cases[] = {
        {300, 0, false, SC_JWT_OK},
        {-10, 0, false, SC_JWT_OK},               /* expired 10s ago: within the leeway */
        {-29, 0, false, SC_JWT_OK},
        {-30, 0, false, SC_JWT_EXPIRED},          /* exp + leeway == now: no longer valid */
        {-3600, 0, false, SC_JWT_EXPIRED},
        {300, 20, true, SC_JWT_OK},               /* valid in 20s: within the leeway */
        {300, 31, true, SC_JWT_NOT_YET_VALID},
        {300, -100, true, SC_JWT_OK},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char f[128];
        int n = snprintf(f, sizeof(f), "\"exp\":%lld", (long long)g_now + cases[i].exp_off);
        if (cases[i].has_nbf)
            snprintf(f + n, sizeof(f) - (size_t)n, ",\"nbf\":%lld", (long long)g_now + cases[i].nbf_off);
        char *t = mint_times(f);
        sc_jwt_result r;
        if (check(&fx, t, &r) != cases[i].want)
            fail_msg("case %zu: got %s (%s)", i, sc_jwt_outcome_name(r.outcome), r.why);
        sc_jwt_result_clear(&r);
        free(t);
    }
    /* fractional times are numbers too */
    char f[64];
    snprintf(f, sizeof(f), "\"exp\":%lld.5", (long long)g_now + 100);
    char *t = mint_times(f);
    assert_int_equal(check_once(&fx, t), SC_JWT_OK);
    free(t);
    /* no exp: refused while require_exp is on (the default) */
    t = mint_times("");
    sc_jwt_result r;
    assert_int_equal(check(&fx, t, &r), SC_JWT_EXPIRED);
    assert_non_null(strstr(r.why, "no \"exp\""));
    sc_jwt_result_clear(&r);
    fx_close(&fx);
    fx_issuer(&fx, "        algorithms: [ES256]\n        jwks_file: jwks.json\n        require_exp: false\n");
    assert_int_equal(check(&fx, t, &r), SC_JWT_OK);
    assert_int_equal(r.claims->exp, INT64_MAX);
    sc_jwt_result_clear(&r);
    fx_close(&fx);
    free(t);
}

static void test_wrong_issuer_and_audience(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    char exp[64];
    snprintf(exp, sizeof(exp), "%lld", (long long)g_now + 300);
    struct {
        const char *payload_fmt;
        sc_jwt_outcome want;
        const char *why;
    } cases[] = {
        {"{\"iss\":\"https://evil.test\",\"aud\":\"orders\",\"exp\":%s}", SC_JWT_UNKNOWN_ISSUER,
         "iss \"https://evil.test\" is not a configured issuer"},
        {"{\"aud\":\"orders\",\"exp\":%s}", SC_JWT_UNKNOWN_ISSUER, "no \"iss\""},
        {"{\"iss\":\"" ISS "\",\"aud\":\"billing\",\"exp\":%s}", SC_JWT_WRONG_AUDIENCE, "audience"},
        {"{\"iss\":\"" ISS "\",\"exp\":%s}", SC_JWT_WRONG_AUDIENCE, "missing"},
        {"{\"iss\":\"" ISS "\",\"aud\":[\"billing\",\"orders\"],\"exp\":%s}", SC_JWT_OK, ""},
        {"{\"iss\":\"" ISS "\",\"aud\":[],\"exp\":%s}", SC_JWT_WRONG_AUDIENCE, "audience"},
        {"{\"iss\":\"" ISS "\",\"aud\":[\"orders\",7],\"exp\":%s}", SC_JWT_MALFORMED, "\"aud\""},
        {"{\"iss\":7,\"aud\":\"orders\",\"exp\":%s}", SC_JWT_MALFORMED, "\"iss\" is not a string"},
        {"{\"iss\":\"" ISS "\",\"aud\":\"orders\",\"exp\":\"%s\"}", SC_JWT_MALFORMED, "\"exp\" is not a number"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char payload[256];
        snprintf(payload, sizeof(payload), cases[i].payload_fmt, exp);
        char *t = mint_raw("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", payload, "RS256", g_rsa, 0);
        sc_jwt_result r;
        if (check(&fx, t, &r) != cases[i].want || !strstr(r.why, cases[i].why))
            fail_msg("case %zu: got %s (%s)", i, sc_jwt_outcome_name(r.outcome), r.why);
        sc_jwt_result_clear(&r);
        free(t);
    }
    fx_close(&fx);
}

/* ---- claims and scopes ---- */

static void test_required_claims_and_scopes(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, "    rules:\n"
                 "      - prefix: /\n"
                 "        claims:\n"
                 "          tenant: [acme, globex]\n"
                 "          email:\n"
                 "          realm.roles: admin\n"
                 "        scopes: [orders.read, orders.write]\n");
    struct {
        const char *claims;
        sc_jwt_outcome want;
        const char *why;
    } cases[] = {
        {"\"tenant\":\"acme\",\"email\":\"a@x\",\"realm\":{\"roles\":[\"user\",\"admin\"]},"
         "\"scope\":\"orders.write orders.read\"",
         SC_JWT_OK, ""},
        {"\"tenant\":\"acme\",\"email\":\"a@x\",\"realm\":{\"roles\":\"admin\"},\"scp\":[\"orders.read\","
         "\"orders.write\"]",
         SC_JWT_OK, ""},
        {"\"tenant\":[\"initech\",\"globex\"],\"email\":null,\"realm\":{\"roles\":[\"admin\"]},"
         "\"scope\":\"orders.read\",\"scp\":\"orders.write\"",
         SC_JWT_OK, ""},
        {"\"email\":\"a@x\",\"realm\":{\"roles\":[\"admin\"]},\"scope\":\"orders.read orders.write\"", SC_JWT_CLAIMS,
         "no \"tenant\" claim"},
        {"\"tenant\":\"initech\",\"email\":\"a@x\",\"realm\":{\"roles\":[\"admin\"]},\"scope\":\"orders.read "
         "orders.write\"",
         SC_JWT_CLAIMS, "\"tenant\" claim has none of the values"},
        {"\"tenant\":\"acme\",\"realm\":{\"roles\":[\"admin\"]},\"scope\":\"orders.read orders.write\"", SC_JWT_CLAIMS,
         "no \"email\""},
        {"\"tenant\":\"acme\",\"email\":\"e\",\"realm\":{\"roles\":[\"user\"]},\"scope\":\"orders.read orders.write\"",
         SC_JWT_CLAIMS, "\"realm.roles\""},
        {"\"tenant\":\"acme\",\"email\":\"e\",\"realm\":{\"roles\":\"admin\"},\"scope\":\"orders.read "
         "orders.writer\"",
         SC_JWT_CLAIMS, "scope \"orders.write\""},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char *t = mint("ES256", "ec-1", cases[i].claims);
        sc_jwt_result r;
        if (check(&fx, t, &r) != cases[i].want || !strstr(r.why, cases[i].why))
            fail_msg("case %zu: got %s (%s)", i, sc_jwt_outcome_name(r.outcome), r.why);
        sc_jwt_result_clear(&r);
        free(t);
    }
    fx_close(&fx);
}

static void test_claim_string_forms_and_forwarding(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, "    rules:\n"
                 "      - prefix: /\n"
                 "        forward: {sub: x-jwt-sub, n: x-jwt-n, groups: x-jwt-groups, obj: x-jwt-obj,\n"
                 "                  evil: x-jwt-evil, absent: x-jwt-absent, f: x-jwt-f, t: x-jwt-t}\n");
    char *t = mint("RS256", "rsa-1",
                   "\"n\":42,\"f\":1.5,\"t\":true,\"z\":null,\"groups\":[\"a\",\"b\",3],\"obj\":{\"k\":\"v\",\"m\":[1]},"
                   "\"evil\":\"x\\r\\nset-cookie: s=1\"");
    sc_jwt_result r;
    assert_int_equal(check(&fx, t, &r), SC_JWT_OK);
    assert_string_equal(sc_jwt_claim(&r, "n"), "42");
    assert_string_equal(sc_jwt_claim(&r, "f"), "1.5");
    assert_string_equal(sc_jwt_claim(&r, "t"), "true");
    assert_string_equal(sc_jwt_claim(&r, "z"), "");
    assert_string_equal(sc_jwt_claim(&r, "groups"), "a,b,3");
    assert_string_equal(sc_jwt_claim(&r, "obj"), "{\"k\":\"v\",\"m\":[1]}");
    assert_string_equal(sc_jwt_claim(&r, "obj.k"), "v");
    assert_string_equal(sc_jwt_claim(&r, "obj.m"), "1");
    assert_string_equal(sc_jwt_claim(&r, "iss"), ISS);
    assert_null(sc_jwt_claim(&r, "absent"));
    assert_null(sc_jwt_claim(NULL, "sub"));
    sc_jwt_header h[SC_JWT_MAX_FORWARD];
    size_t n = sc_jwt_forward_headers(&r, h, SC_ARRAY_LEN(h));
    /* evil (CR LF) and absent are not sent */
    assert_int_equal(n, 6);
    bool saw_sub = false;
    for (size_t i = 0; i < n; i++) {
        assert_null(strstr(h[i].value, "\n"));
        if (strcmp(h[i].name, "x-jwt-sub") == 0) {
            saw_sub = true;
            assert_int_equal(h[i].value_len, 5);
            assert_memory_equal(h[i].value, "alice", 5);
        }
        assert_string_not_equal(h[i].name, "x-jwt-evil");
    }
    assert_true(saw_sub);
    sc_jwt_result_clear(&r);
    /* a refused request forwards nothing */
    char *bad = mint("RS384", "rsa-1", "");
    check(&fx, bad, &r);
    assert_int_equal(sc_jwt_forward_headers(&r, h, SC_ARRAY_LEN(h)), 0);
    sc_jwt_result_clear(&r);
    free(bad);
    free(t);
    fx_close(&fx);
}

/* ---- the request-level check: headers, modes, rules ---- */

static sc_jwt_outcome check_req(fixture *fx, const char *path, const char *const *hdrs, size_t n, sc_jwt_result *r)
{
    nghttp2_nv nv[8];
    for (size_t i = 0; i < n; i++)
        nv[i] = (nghttp2_nv){.name = (uint8_t *)hdrs[2 * i], .namelen = strlen(hdrs[2 * i]),
                             .value = (uint8_t *)hdrs[2 * i + 1], .valuelen = strlen(hdrs[2 * i + 1])};
    sc_jwt_check(fx->j, 1, path, strlen(path), nv, n, g_now, 0, r);
    return r->outcome;
}

static void test_request_headers_and_modes(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, "    rules:\n"
                 "      - prefix: /\n"
                 "      - prefix: /public/\n"
                 "        mode: off\n"
                 "      - prefix: /maybe/\n"
                 "        mode: optional\n"
                 "      - prefix: /api/\n"
                 "        header: x-token\n"
                 "        keep_token: false\n");
    char *t = mint("ES256", "ec-1", "");
    char bearer[2048], lower[2048];
    snprintf(bearer, sizeof(bearer), "Bearer %s", t);
    snprintf(lower, sizeof(lower), "bearer   %s  ", t);
    sc_jwt_result r;
    const char *ok[] = {"authorization", bearer};
    assert_int_equal(check_req(&fx, "/orders", ok, 1, &r), SC_JWT_OK);
    sc_jwt_result_clear(&r);
    const char *ok2[] = {"Authorization", lower, "accept", "*/*"};
    assert_int_equal(check_req(&fx, "/orders", ok2, 2, &r), SC_JWT_OK);
    sc_jwt_result_clear(&r);
    /* no token / another scheme: missing (401 without an error code) */
    assert_int_equal(check_req(&fx, "/orders", NULL, 0, &r), SC_JWT_MISSING);
    sc_jwt_result_clear(&r);
    const char *basic[] = {"authorization", "Basic YTpi"};
    assert_int_equal(check_req(&fx, "/orders", basic, 1, &r), SC_JWT_MISSING);
    sc_jwt_result_clear(&r);
    /* "Bearer" with nothing, blanks inside, two tokens: malformed */
    const char *empty[] = {"authorization", "Bearer  "};
    assert_int_equal(check_req(&fx, "/orders", empty, 1, &r), SC_JWT_MALFORMED);
    sc_jwt_result_clear(&r);
    const char *two[] = {"authorization", bearer, "authorization", bearer};
    assert_int_equal(check_req(&fx, "/orders", two, 2, &r), SC_JWT_MALFORMED);
    assert_non_null(strstr(r.why, "more than one"));
    assert_int_equal(r.n_named, 2);
    sc_jwt_result_clear(&r);
    /* a blank inside the token, while the token without it is cached: the
     * request path looks for blanks only on a cache miss, which this is */
    char spaced[2048];
    size_t tl = strlen(t);
    snprintf(spaced, sizeof(spaced), "Bearer %.*s %s", (int)(tl / 2), t, t + tl / 2);
    const char *blank[] = {"accept", "*/*", "authorization", spaced};
    assert_int_equal(check_req(&fx, "/orders", blank, 2, &r), SC_JWT_MALFORMED);
    assert_non_null(strstr(r.why, "without a single token"));
    assert_int_equal(r.n_named, 1);
    assert_int_equal(r.named_at, 1);
    sc_jwt_result_clear(&r);
    /* off: not looked at, even a broken token */
    const char *junk[] = {"authorization", "Bearer junk"};
    assert_int_equal(check_req(&fx, "/public/x", junk, 1, &r), SC_JWT_SKIPPED);
    sc_jwt_result_clear(&r);
    /* optional: no token passes, a bad one does not */
    assert_int_equal(check_req(&fx, "/maybe/x", NULL, 0, &r), SC_JWT_ANONYMOUS);
    sc_jwt_result_clear(&r);
    assert_int_equal(check_req(&fx, "/maybe/x", junk, 1, &r), SC_JWT_MALFORMED);
    sc_jwt_result_clear(&r);
    assert_int_equal(check_req(&fx, "/maybe/x", ok, 1, &r), SC_JWT_OK);
    sc_jwt_result_clear(&r);
    /* another header: the token alone or with Bearer; its underscore spelling counts too */
    const char *xt[] = {"x-token", t};
    assert_int_equal(check_req(&fx, "/api/v1", xt, 1, &r), SC_JWT_OK);
    assert_true(sc_jwt_header_stripped(r.rule, "X_Token", 7));
    assert_false(sc_jwt_header_stripped(r.rule, "authorization", 13));
    sc_jwt_result_clear(&r);
    const char *xt2[] = {"x-token", t, "X_TOKEN", "forged"};
    assert_int_equal(check_req(&fx, "/api/v1", xt2, 2, &r), SC_JWT_MALFORMED);
    sc_jwt_result_clear(&r);
    assert_int_equal(check_req(&fx, "/api/v1", ok, 1, &r), SC_JWT_MISSING); /* Authorization is not its header */
    sc_jwt_result_clear(&r);
    /* keep_token true (default): the Authorization header is not stripped */
    const sc_jwt_rule *root = sc_jwt_rule_for_path(fx.cfg->inbound.jwt, "/", 1);
    assert_false(sc_jwt_header_stripped(root, "authorization", 13));
    free(t);
    fx_close(&fx);
}

static void test_rule_for_path(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, "    rules:\n"
                 "      - prefix: /\n"
                 "        mode: off\n"
                 "      - prefix: /admin\n"
                 "      - prefix: /admin/health\n"
                 "        mode: optional\n"
                 "      - prefix: /pkg.Orders/\n");
    const sc_jwt_config *c = fx.cfg->inbound.jwt;
    struct {
        const char *path;
        sc_jwt_mode want;
    } cases[] = {
        {"/", SC_JWT_MODE_OFF},
        {"/index.html", SC_JWT_MODE_OFF},
        {"/admin", SC_JWT_MODE_REQUIRED},
        {"/admin/users?x=1", SC_JWT_MODE_REQUIRED},
        {"/admin/health", SC_JWT_MODE_OPTIONAL},
        {"/admin/healthz", SC_JWT_MODE_OPTIONAL},       /* a plain prefix */
        {"/pkg.Orders/Get", SC_JWT_MODE_REQUIRED},
        {"/x?/admin", SC_JWT_MODE_OFF},                  /* the query is not the path */
        /* spellings an app may normalise to /admin: never less strict */
        {"/%61dmin/users", SC_JWT_MODE_REQUIRED},
        {"//admin", SC_JWT_MODE_REQUIRED},
        {"/x/../admin", SC_JWT_MODE_REQUIRED},
        {"/./admin", SC_JWT_MODE_REQUIRED},
        {"/public/%2e%2e/admin/users", SC_JWT_MODE_REQUIRED},
        {"/admin/health/../../admin/users", SC_JWT_MODE_REQUIRED},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        const sc_jwt_rule *r = sc_jwt_rule_for_path(c, cases[i].path, strlen(cases[i].path));
        assert_non_null(r);
        if (r->mode != cases[i].want)
            fail_msg("%s: mode %s, want %s", cases[i].path, sc_jwt_mode_name(r->mode),
                     sc_jwt_mode_name(cases[i].want));
    }
    char out[64];
    struct {
        const char *in, *out;
    } norm[] = {{"/a/b", "/a/b"}, {"//a///b/", "/a/b/"}, {"/a/./b/../c", "/a/c"}, {"/..", "/"},
                {"/%41%2f%7e", "/A%2f~"}, {"/a/%2E%2e/b", "/b"}};
    for (size_t i = 0; i < SC_ARRAY_LEN(norm); i++) {
        long n = sc_jwt_path_normalize(norm[i].in, strlen(norm[i].in), out, sizeof(out));
        assert_true(n >= 0);
        out[n] = 0;
        assert_string_equal(out, norm[i].out);
    }
    assert_int_equal(sc_jwt_path_normalize("x", 1, out, sizeof(out)), -1);
    assert_int_equal(sc_jwt_path_normalize("/aaaaaaaaaa", 11, out, 4), -1);
    /* the request path skips normalising a path it calls normal: every such
     * path must come back unchanged (random paths over the bytes that matter) */
    static const char alpha[] = "/./a%2e";
    unsigned seed = 7, normal = 0;
    for (int t = 0; t < 20000; t++) {
        char p[16];
        size_t len = 1 + (seed = seed * 1103515245u + 12345u) % sizeof(p);
        for (size_t i = 0; i < len; i++)
            p[i] = alpha[((seed = seed * 1103515245u + 12345u) >> 16) % (sizeof(alpha) - 1)];
        p[0] = (seed >> 8) & 1 ? '/' : p[0];
        if (!sc_jwt_path_is_normal(p, len))
            continue;
        normal++;
        long n = sc_jwt_path_normalize(p, len, out, sizeof(out));
        if (n != (long)len || memcmp(out, p, len) != 0)
            fail_msg("\"%.*s\" is called normal but normalises to \"%.*s\"", (int)len, p, (int)(n < 0 ? 0 : n), out);
    }
    assert_true(normal > 100);
    assert_false(sc_jwt_path_is_normal("/a/.well-known", 14));
    assert_false(sc_jwt_path_is_normal("a", 1));
    assert_true(sc_jwt_path_is_normal("/pkg.Orders/Get", 15));
    fx_close(&fx);
}

static void test_reserved_headers(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, "    rules:\n"
                 "      - prefix: /\n"
                 "        forward: {sub: x-jwt-sub}\n"
                 "      - prefix: /other\n"
                 "        mode: optional\n"
                 "        forward: {tenant: x-tenant-id}\n");
    const sc_jwt_config *c = fx.cfg->inbound.jwt;
    static const char *const yes[] = {"x-jwt-sub", "X-JWT-SUB", "x_jwt_sub", "X_Jwt-Sub", "x-tenant-id",
                                      "X_TENANT_ID"};
    static const char *const no[] = {"x-jwt-subject", "x-jwt", "authorization", "xjwtsub"};
    for (size_t i = 0; i < SC_ARRAY_LEN(yes); i++)
        assert_true(sc_jwt_header_reserved(c, yes[i], strlen(yes[i])));
    for (size_t i = 0; i < SC_ARRAY_LEN(no); i++)
        assert_false(sc_jwt_header_reserved(c, no[i], strlen(no[i])));
    assert_false(sc_jwt_header_reserved(NULL, "x-jwt-sub", 9));
    fx_close(&fx);
}

/* ---- the refusal shape ---- */

static void test_refusal_shape(void **st)
{
    (void)st;
    sc_jwt_refusal f;
    sc_jwt_refusal_for(SC_JWT_MISSING, "no bearer token in authorization", "orders", &f);
    assert_int_equal(f.http_status, 401);
    assert_int_equal(f.grpc_status, SC_GRPC_UNAUTHENTICATED);
    assert_string_equal(f.www_authenticate, "Bearer realm=\"orders\"");
    assert_string_equal(f.reason, "jwt-missing");

    sc_jwt_refusal_for(SC_JWT_EXPIRED, "the token expired 35s ago", "orders", &f);
    assert_int_equal(f.http_status, 401);
    assert_string_equal(f.www_authenticate,
                        "Bearer realm=\"orders\", error=\"invalid_token\", error_description=\"the token expired 35s ago\"");
    assert_string_equal(f.reason, "jwt-expired");
    assert_string_equal(f.message, "JWT refused: the token expired 35s ago");

    sc_jwt_refusal_for(SC_JWT_BAD_SIGNATURE, "x", "o", &f);
    assert_string_equal(f.reason, "jwt-bad-signature");
    sc_jwt_refusal_for(SC_JWT_UNKNOWN_KEY, "x", "o", &f);
    assert_string_equal(f.reason, "jwt-unknown-key");
    sc_jwt_refusal_for(SC_JWT_NOT_YET_VALID, "x", "o", &f);
    assert_string_equal(f.reason, "jwt-not-yet-valid");
    sc_jwt_refusal_for(SC_JWT_ALG_REFUSED, "x", "o", &f);
    assert_int_equal(f.http_status, 401);
    assert_string_equal(f.reason, "jwt-alg-refused");

    /* quotes, backslashes and control characters never break the quoted-string */
    sc_jwt_refusal_for(SC_JWT_UNKNOWN_ISSUER, "iss \"a\\b\"\r\nx: y", "re\"alm", &f);
    assert_string_equal(f.www_authenticate,
                        "Bearer realm=\"re'alm\", error=\"invalid_token\", error_description=\"iss 'a'b'''x: y\"");
    assert_null(strchr(f.message, '\n'));

    sc_jwt_refusal_for(SC_JWT_CLAIMS, "the token lacks scope \"orders.write\"", "orders", &f);
    assert_int_equal(f.http_status, 403);
    assert_int_equal(f.grpc_status, SC_GRPC_PERMISSION_DENIED);
    assert_string_equal(f.reason, "jwt-claims-missing");
    assert_non_null(strstr(f.www_authenticate, "error=\"insufficient_scope\""));

    /* the runtime's refusal uses the realm (service.name by default) */
    fixture fx;
    fx_open(&fx, RULE_ALL);
    sc_jwt_result r;
    check(&fx, NULL, &r);
    sc_jwt_refusal_of(fx.j, &r, &f);
    assert_string_equal(f.www_authenticate, "Bearer realm=\"orders\"");
    sc_jwt_result_clear(&r);
    fx_close(&fx);
}

/* ---- the cache ---- */

static void test_cache_hit_path(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    char *t = mint("RS256", "rsa-1", "");
    sc_jwt_result r;
    assert_int_equal(check(&fx, t, &r), SC_JWT_OK);
    assert_false(r.cache_hit);
    sc_jwt_claims *first = r.claims;
    sc_jwt_result_clear(&r);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(check(&fx, t, &r), SC_JWT_OK);
        assert_true(r.cache_hit);
        assert_ptr_equal(r.claims, first); /* the same claims, shared */
        assert_string_equal(sc_jwt_claim(&r, "sub"), "alice");
        sc_jwt_result_clear(&r);
    }
    sc_jwt_stats s;
    sc_jwt_stats_get(fx.j, &s);
    assert_int_equal(s.cache_misses, 1);
    assert_int_equal(s.cache_hits, 3);
    assert_int_equal(s.outcomes[SC_JWT_OK], 4);

    /* a hit is still held to the path's rule: another rule's claims are checked each time */
    /* and to time: past exp + leeway the cached token is expired, verified again and refused */
    sc_jwt_check_token(fx.j, 0, &fx.cfg->inbound.jwt->rules[0], t, strlen(t), g_now + 300 + 30, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_EXPIRED);
    assert_false(r.cache_hit);
    sc_jwt_result_clear(&r);
    free(t);
    fx_close(&fx);
}

static void test_cache_bounded_lru(void **st)
{
    (void)st;
    sc_jwt_cache *c = sc_jwt_cache_new(32);
    assert_non_null(c);
    sc_jwt_claims *cl = calloc(1, sizeof(*cl));
    atomic_init(&cl->refs, 1);
    char tok[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(tok, sizeof(tok), "token-%d", i);
        sc_jwt_cache_put(c, tok, strlen(tok), sc_jwt_cache_hash(tok, strlen(tok)), cl, 100);
    }
    sc_jwt_cache_view v;
    sc_jwt_cache_snapshot(c, &v);
    assert_true(v.entries <= 32);
    assert_int_equal(v.entries + v.evictions, 1000);
    assert_int_equal(v.max_bytes, 32 * SC_JWT_CACHE_AVG_BYTES);
    /* the last one is there, the first is gone; expiry is exclusive */
    sc_jwt_claims *got = sc_jwt_cache_get(c, "token-999", 9, sc_jwt_cache_hash("token-999", 9), 99);
    assert_ptr_equal(got, cl);
    sc_jwt_claims_unref(got);
    assert_null(sc_jwt_cache_get(c, "token-999", 9, sc_jwt_cache_hash("token-999", 9), 100));
    assert_null(sc_jwt_cache_get(c, "token-0", 7, sc_jwt_cache_hash("token-0", 7), 1));
    /* only the same text hits: a colliding hash with other text is a miss */
    sc_jwt_cache_put(c, "aaaa", 4, 42, cl, 100);
    assert_null(sc_jwt_cache_get(c, "aaab", 4, 42, 1));
    assert_null(sc_jwt_cache_get(c, "aaa", 3, 42, 1));
    got = sc_jwt_cache_get(c, "aaaa", 4, 42, 1);
    assert_ptr_equal(got, cl);
    sc_jwt_claims_unref(got);
    /* the byte budget: a token larger than a shard's share is not kept, big ones evict more */
    char *big = malloc(8 * SC_JWT_CACHE_AVG_BYTES);
    memset(big, 'x', 8 * SC_JWT_CACHE_AVG_BYTES);
    uint64_t h = sc_jwt_cache_hash(big, 8 * SC_JWT_CACHE_AVG_BYTES);
    sc_jwt_cache_put(c, big, 8 * SC_JWT_CACHE_AVG_BYTES, h, cl, 100);
    assert_null(sc_jwt_cache_get(c, big, 8 * SC_JWT_CACHE_AVG_BYTES, h, 1));
    sc_jwt_cache_put(c, big, 2 * SC_JWT_CACHE_AVG_BYTES, h, cl, 100);
    sc_jwt_cache_snapshot(c, &v);
    assert_true(v.bytes <= v.max_bytes);
    free(big);
    sc_jwt_cache_free(c);
    assert_int_equal(atomic_load(&cl->refs), 1); /* every reference the cache took is back */
    sc_jwt_claims_unref(cl);
    assert_null(sc_jwt_cache_new(0));
    assert_null(sc_jwt_cache_get(NULL, "a", 1, 0, 0));
    sc_jwt_cache_put(NULL, "a", 1, 0, NULL, 0);
    assert_int_not_equal(sc_jwt_cache_hash("abc", 3), sc_jwt_cache_hash("abd", 3));
}

/* ---- key files: reload, rotation ---- */

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents);

static void test_jwks_file_reload_and_rotation(void **st)
{
    (void)st;
    char *a = jwk_of(g_rsa, "rsa-1", ""), doc[8192];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", a);
    write_file("rot.json", doc);
    sc_config *cfg = load_jwt("    issuers:\n"
                              "      - name: rot\n"
                              "        issuer: " ISS "\n"
                              "        algorithms: [RS256]\n"
                              "        jwks_file: rot.json\n" RULE_ALL,
                              NULL);
    sc_jwt *j;
    char err[256];
    assert_int_equal(sc_jwt_new(cfg->inbound.jwt, 1, &j, err, sizeof(err)), 0);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    assert_int_equal(sc_jwt_start(j, loop, NULL, NULL, err, sizeof(err)), 0);
    const sc_jwt_rule *rule = &cfg->inbound.jwt->rules[0];
    char payload[256];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"exp\":%lld}", ISS, (long long)g_now + 300);
    char *t1 = mint_raw("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", payload, "RS256", g_rsa, 0);
    char *t2 = mint_raw("{\"alg\":\"RS256\",\"kid\":\"rsa-2\"}", payload, "RS256", g_rsa2, 0);
    sc_jwt_result r;
    sc_jwt_check_token(j, 0, rule, t1, strlen(t1), g_now, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_OK);
    sc_jwt_result_clear(&r);
    sc_jwt_check_token(j, 0, rule, t2, strlen(t2), g_now, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_UNKNOWN_KEY); /* a file issuer never waits */
    assert_non_null(strstr(r.why, "no key with kid \"rsa-2\""));
    sc_jwt_result_clear(&r);

    /* a broken file keeps the keys in use */
    write_file("rot.json", "{\"keys\": [ {\"kty\":\"RSA\"");
    sc_jwt_reload(j);
    sc_jwt_check_token(j, 0, rule, t1, strlen(t1), g_now, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_OK);
    assert_true(r.cache_hit);
    sc_jwt_result_clear(&r);
    json_t *js = sc_jwt_json(j);
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(js, 0), "last_error")), "not JSON"));
    json_decref(js);

    /* rotation: rsa-1 out, rsa-2 in; found by the watch timer */
    char *b = jwk_of(g_rsa2, "rsa-2", "");
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", b);
    write_file("rot.json", doc);
    uint64_t deadline = sc_now_ms() + 5000;
    for (;;) {
        ev_timer tk;
        ev_timer_init(&tk, tick_cb, 0.05, 0);
        ev_timer_start(loop, &tk);
        ev_run(loop, EVRUN_ONCE);
        ev_timer_stop(loop, &tk);
        sc_jwt_check_token(j, 0, rule, t2, strlen(t2), g_now, 0, &r);
        sc_jwt_outcome o = r.outcome;
        sc_jwt_result_clear(&r);
        if (o == SC_JWT_OK)
            break;
        assert_true(sc_now_ms() < deadline);
    }
    /* the cached token of the removed key is verified again, and refused */
    sc_jwt_check_token(j, 0, rule, t1, strlen(t1), g_now, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_UNKNOWN_KEY);
    sc_jwt_result_clear(&r);
    sc_jwt_stats s;
    sc_jwt_stats_get(j, &s);
    assert_int_equal(s.reloads, 2);
    sc_jwt_free(j);
    ev_loop_destroy(loop);
    sc_config_free(cfg);
    free(a);
    free(b);
    free(t1);
    free(t2);
}

/* ---- hostile tokens ---- */

static void test_hostile_tokens(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    char *good = mint("ES256", "ec-1", "");
    char *big = malloc(70000);
    memset(big, 'A', 69999);
    big[69999] = 0;
    char hdr_pad[64];
    snprintf(hdr_pad, sizeof(hdr_pad), "%s", good);
    char exp[64];
    snprintf(exp, sizeof(exp), "\"exp\":%lld", (long long)g_now + 300);
    /* a deeply nested payload */
    char *deep = malloc(20000);
    size_t k = (size_t)sprintf(deep, "{\"iss\":\"" ISS "\",\"x\":");
    for (int i = 0; i < 2500; i++) /* beyond jansson's 2048 levels, within max_token_bytes */
        deep[k++] = '[';
    for (int i = 0; i < 2500; i++)
        deep[k++] = ']';
    deep[k++] = '}';
    deep[k] = 0;
    char *deep_tok = mint_raw("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", deep, "ES256", g_ec, 0);
    char kid300[400];
    memset(kid300, 'k', 300);
    kid300[300] = 0;
    char hdr_kid300[512];
    snprintf(hdr_kid300, sizeof(hdr_kid300), "{\"alg\":\"ES256\",\"kid\":\"%s\"}", kid300);
    char p_ok[256];
    snprintf(p_ok, sizeof(p_ok), "{\"iss\":\"%s\",\"aud\":\"orders\",%s}", ISS, exp);
    char p_dup[256];
    snprintf(p_dup, sizeof(p_dup), "{\"iss\":\"%s\",\"aud\":\"orders\",\"sub\":\"a\",\"sub\":\"admin\",%s}", ISS, exp);
    char *t_kid300 = mint_raw(hdr_kid300, p_ok, "ES256", g_ec, 0);
    char *t_dup = mint_raw("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", p_dup, "ES256", g_ec, 0);
    char *t_crit = mint_raw("{\"alg\":\"ES256\",\"kid\":\"ec-1\",\"crit\":[\"b64\"],\"b64\":false}", p_ok, "ES256",
                            g_ec, 0);
    char *t_kidnum = mint_raw("{\"alg\":\"ES256\",\"kid\":7}", p_ok, "ES256", g_ec, 0);
    char *t_arr = mint_raw("[\"alg\",\"ES256\"]", p_ok, "ES256", g_ec, 0);
    char *t_alg_num = mint_raw("{\"alg\":256}", p_ok, "ES256", g_ec, 0);
    char *t_payload_arr = mint_raw("{\"alg\":\"ES256\",\"kid\":\"ec-1\"}", "[1,2]", "ES256", g_ec, 0);
    char *t_ps = mint_raw("{\"alg\":\"PS256\",\"kid\":\"rsa-1\"}", p_ok, "RS256", g_rsa, 0);
    char *t_jku = mint_raw("{\"alg\":\"RS256\",\"kid\":\"evil\",\"jku\":\"http://evil/keys\"}", p_ok, "RS256", g_rsa2,
                           0);
    char *t_nul = mint_raw("{\"alg\":\"ES256\",\"kid\":\"ec-1\\u0000x\"}", p_ok, "ES256", g_ec, 0);
    /* a padded token ('=') and one with whitespace */
    char padded[2048], spaced[2048], longsig[4096], nonjson[2048];
    snprintf(padded, sizeof(padded), "%s=", good);
    snprintf(spaced, sizeof(spaced), "%.*s %s", 10, good, good + 10);
    snprintf(longsig, sizeof(longsig), "%s%s", good, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
                                                    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    char *nj = b64s("not json");
    snprintf(nonjson, sizeof(nonjson), "%s.%s.AAAA", nj, nj);
    struct {
        const char *tok;
        sc_jwt_outcome want;
        const char *why;
    } cases[] = {
        {big, SC_JWT_MALFORMED, "jwt.max_token_bytes"},
        {"a.b.c.d.e", SC_JWT_MALFORMED, "JWE"},
        {"abc", SC_JWT_MALFORMED, "1 segments"},
        {"a.b", SC_JWT_MALFORMED, "2 segments"},
        {"a.b.c.d.e.f.g.h", SC_JWT_MALFORMED, "more than 5 segments"},
        {"..", SC_JWT_MALFORMED, "JOSE header"},
        {padded, SC_JWT_MALFORMED, "signature is not base64url"},
        {nonjson, SC_JWT_MALFORMED, "not a JSON object"},
        {deep_tok, SC_JWT_MALFORMED, "payload"},
        {t_kid300, SC_JWT_MALFORMED, "\"kid\""},
        {t_dup, SC_JWT_MALFORMED, "payload"},
        {t_crit, SC_JWT_MALFORMED, "crit"},
        {t_kidnum, SC_JWT_MALFORMED, "\"kid\""},
        {t_arr, SC_JWT_MALFORMED, "JOSE header is not a JSON object"},
        {t_alg_num, SC_JWT_MALFORMED, "no \"alg\""},
        {t_payload_arr, SC_JWT_MALFORMED, "payload is not a JSON object"},
        {t_ps, SC_JWT_ALG_REFUSED, "PS256"},
        {t_jku, SC_JWT_UNKNOWN_KEY, "evil"},          /* a jku is never followed */
        {t_nul, SC_JWT_MALFORMED, "JOSE header"},
        {longsig, SC_JWT_BAD_SIGNATURE, "does not verify"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_jwt_result r;
        if (check(&fx, cases[i].tok, &r) != cases[i].want || !strstr(r.why, cases[i].why))
            fail_msg("case %zu: got %s (%s)", i, sc_jwt_outcome_name(r.outcome), r.why);
        sc_jwt_result_clear(&r);
    }
    /* a token with blanks never leaves the header parser */
    const sc_jwt_rule *rule = &fx.cfg->inbound.jwt->rules[0];
    const char *tp;
    size_t tl;
    assert_int_equal(sc_jwt_token_from_header(rule, spaced, strlen(spaced), &tp, &tl), 0);
    char bs[2100];
    snprintf(bs, sizeof(bs), "Bearer %s", spaced);
    assert_int_equal(sc_jwt_token_from_header(rule, bs, strlen(bs), &tp, &tl), -1);
    /* every segment at the edge of the base64url rules */
    uint8_t out[8];
    assert_int_equal(sc_jwt_b64url_decode("QQ", 2, out, sizeof(out)), 1);
    assert_int_equal(sc_jwt_b64url_decode("QR", 2, out, sizeof(out)), -1); /* stray bits */
    assert_int_equal(sc_jwt_b64url_decode("Q", 1, out, sizeof(out)), -1);
    assert_int_equal(sc_jwt_b64url_decode("QQ==", 4, out, sizeof(out)), -1);
    assert_int_equal(sc_jwt_b64url_decode("+/+/", 4, out, sizeof(out)), -1);
    assert_int_equal(sc_jwt_b64url_decode("-_-_", 4, out, sizeof(out)), 3);
    assert_int_equal(sc_jwt_b64url_decode("AAAAAAAAAAAA", 12, out, sizeof(out)), -1); /* does not fit */
    free(nj);
    free(good);
    free(big);
    free(deep);
    free(deep_tok);
    free(t_kid300);
    free(t_dup);
    free(t_crit);
    free(t_kidnum);
    free(t_arr);
    free(t_alg_num);
    free(t_payload_arr);
    free(t_ps);
    free(t_jku);
    free(t_nul);
    fx_close(&fx);
}

static void test_too_many_claims(void **st)
{
    (void)st;
    fixture fx;
    fx_open(&fx, RULE_ALL);
    char *claims = malloc(20000);
    size_t k = 0;
    for (int i = 0; i < 300; i++)
        k += (size_t)sprintf(claims + k, "%s\"c%d\":%d", i ? "," : "", i, i);
    char *t = mint("ES256", "ec-1", claims);
    sc_jwt_result r;
    assert_int_equal(check(&fx, t, &r), SC_JWT_MALFORMED);
    assert_non_null(strstr(r.why, "more than 256 claims"));
    sc_jwt_result_clear(&r);
    free(t);
    free(claims);
    fx_close(&fx);
}

/* ---- hostile key sets ---- */

static void test_hostile_jwks(void **st)
{
    (void)st;
    char *rsa = jwk_of(g_rsa, "r", ""), *ec = jwk_of(g_ec, "e", "");
    EVP_PKEY *small = EVP_RSA_gen(1024);
    char *weak = jwk_of(small, "weak", "");
    EVP_PKEY_free(small);
    char *with_d = jwk_of(g_ec, "d", ",\"d\":\"AAAA\"");
    char *enc = jwk_of(g_rsa, "enc", ",\"use\":\"enc\"");
    char *wrap = jwk_of(g_rsa, "wrap", ",\"key_ops\":[\"wrapKey\"]");
    char *alg_ps = jwk_of(g_rsa, "ps", ",\"alg\":\"PS256\"");
    char *alg_bad = jwk_of(g_rsa, "x", ",\"alg\":\"ES256\"");
    /* a point off the curve: y + 1 */
    char off[1024];
    snprintf(off, sizeof(off), "%s", ec);
    char *y = strstr(off, "\"y\":\"") + 5;
    y[0] = y[0] == 'A' ? 'B' : 'A';
    char many[65 * 800 + 64];
    size_t k = (size_t)sprintf(many, "{\"keys\":[");
    for (int i = 0; i < 65; i++)
        k += (size_t)sprintf(many + k, "%s%s", i ? "," : "", ec);
    sprintf(many + k, "]}");
    char *huge = malloc(SC_JWKS_MAX_BYTES + 100);
    memset(huge, ' ', SC_JWKS_MAX_BYTES + 99);
    huge[SC_JWKS_MAX_BYTES + 99] = 0;
    memcpy(huge, "{\"keys\":[]}", 11);
    char d1[8192], d2[8192], d3[8192], d4[8192], d5[8192], d6[8192], d7[8192], d8[8192], d9[8192], d10[8192];
    snprintf(d1, sizeof(d1), "{\"keys\":[%s]}", weak);
    snprintf(d2, sizeof(d2), "{\"keys\":[%s]}", with_d);
    snprintf(d3, sizeof(d3), "{\"keys\":[%s]}", off);
    snprintf(d4, sizeof(d4), "{\"keys\":[%s,%s]}", rsa, rsa);
    snprintf(d5, sizeof(d5), "{\"keys\":[%s]}", alg_bad);
    snprintf(d6, sizeof(d6), "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"x\",\"n\":\"AQAB=\",\"e\":\"AQAB\"}]}");
    snprintf(d7, sizeof(d7), "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"c2VjcmV0\"}]}");
    snprintf(d8, sizeof(d8), "{\"keys\":[%s,{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"AA\"},%s,%s,%s]}", rsa, enc,
             wrap, alg_ps);
    snprintf(d9, sizeof(d9), "{\"keys\":[%s,%s]}", enc, wrap);
    snprintf(d10, sizeof(d10), "{\"keys\":[{\"kty\":\"oct\",\"kid\":\"h\",\"k\":\"%s\"}]}",
             "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY");
    struct {
        const char *doc;
        bool secrets;
        int want; /* keys, or -1 */
        const char *text;
    } cases[] = {
        {"", true, -1, "not JSON"},
        {"[]", true, -1, "\"keys\" array"},
        {"{\"keys\":{}}", true, -1, "\"keys\" array"},
        {"{\"keys\":[]}", true, -1, "no usable signature key"},
        {"{\"keys\":[1]}", true, -1, "key 0 is not a JSON object"},
        {"{\"keys\":[{}]}", true, -1, "missing \"kty\""},
        {"{\"keys\":[{\"kty\":\"RSA\"}]}", true, -1, "missing \"n\""},
        {"{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"x\":\"AA\",\"y\":\"AA\"}]}", true, -1, "32 octets"},
        {"{\"keys\":[],\"keys\":[]}", true, -1, "not JSON"},
        {d1, true, -1, "an RSA modulus of 1024 bits"},
        {d2, true, -1, "private key material"},
        {d3, true, -1, "not a point on P-256"},
        {d4, true, -1, "kid is already used"},
        {d5, true, -1, "alg \"ES256\" does not fit a RSA key"},
        {d6, true, -1, "not base64url"},
        {d7, true, -1, "an HMAC secret of 6 octets"},
        {d10, false, -1, "only accepted from a jwks_file"},
        {d10, true, 1, ""},
        {d8, true, 1, "kty \"OKP\" is not supported"},
        {d9, true, -1, "no usable signature key"},
        {many, true, -1, "65 keys"},
        {huge, true, -1, "at most 524288"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_jwks *ks = NULL;
        char err[512] = "", notes[512] = "";
        int rc = sc_jwks_parse(cases[i].doc, strlen(cases[i].doc), cases[i].secrets, &ks, notes, sizeof(notes), err,
                               sizeof(err));
        if (cases[i].want < 0 ? (rc >= 0 || !strstr(err, cases[i].text))
                              : (rc != cases[i].want || !strstr(notes, cases[i].text)))
            fail_msg("case %zu: rc %d err '%s' notes '%s'", i, rc, err, notes);
        if (rc < 0)
            assert_null(ks);
        sc_jwks_unref(ks);
    }
    /* the notes of d8 name each skipped key */
    sc_jwks *ks;
    char notes[512];
    assert_int_equal(sc_jwks_parse(d8, strlen(d8), true, &ks, notes, sizeof(notes), NULL, 0), 1);
    assert_non_null(strstr(notes, "kid \"enc\") skipped: use \"enc\""));
    assert_non_null(strstr(notes, "kid \"wrap\") skipped: key_ops without \"verify\""));
    assert_non_null(strstr(notes, "kid \"ps\") skipped: alg \"PS256\""));
    assert_int_equal(ks->keys[0].bits, 2048);
    sc_jwks_unref(ks);
    /* files: missing, a directory, too large */
    char err[512];
    assert_true(sc_jwks_load_file("/nonexistent/jwks.json", true, &ks, NULL, 0, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "No such file"));
    assert_true(sc_jwks_load_file(g_dir, true, &ks, NULL, 0, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "not a regular file"));
    char fifo[256];
    snprintf(fifo, sizeof(fifo), "%s/fifo", g_dir);
    assert_int_equal(mkfifo(fifo, 0600), 0); /* no writer: opening it must not wait for one */
    assert_true(sc_jwks_load_file(fifo, true, &ks, NULL, 0, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "not a regular file"));
    write_file("huge.json", huge);
    char hp[256];
    snprintf(hp, sizeof(hp), "%s/huge.json", g_dir);
    assert_true(sc_jwks_load_file(hp, true, &ks, NULL, 0, err, sizeof(err)) < 0);
    assert_non_null(strstr(err, "a JWKS of at most 524288"));
    free(huge);
    free(rsa);
    free(ec);
    free(weak);
    free(with_d);
    free(enc);
    free(wrap);
    free(alg_ps);
    free(alg_bad);
}

/* ---- config ---- */

static void test_config_full_section(void **st)
{
    (void)st;
    sc_config *cfg = load_jwt("    realm: shop\n"
                              "    max_token_bytes: 16KiB\n"
                              "    cache_entries: 100\n"
                              "    issuers:\n"
                              "      - name: main\n"
                              "        issuer: " ISS "\n"
                              "        audiences: [orders, api://orders]\n"
                              "        algorithms: [RS256, ES256]\n"
                              "        jwks_url: https://issuer.test/.well-known/jwks.json\n"
                              "        jwks_ca: ca.pem\n"
                              "        refresh: 10m\n"
                              "        refetch_min_interval: 10s\n"
                              "        fetch_timeout: 2s\n"
                              "        leeway: 1m\n"
                              "      - name: local\n"
                              "        issuer: local\n"
                              "        algorithms: [HS256]\n"
                              "        jwks_file: jwks.json\n"
                              "        require_exp: false\n"
                              "    rules:\n"
                              "      - prefix: /\n"
                              "        issuers: [main]\n"
                              "        claims: {tenant: acme, email: ~, roles: [a, b]}\n"
                              "        scopes: [orders.read]\n"
                              "        forward: {sub: x-user, tenant: x-tenant}\n"
                              "        keep_token: false\n"
                              "      - prefix: /health\n"
                              "        mode: off\n"
                              "      - prefix: /local/\n"
                              "        mode: optional\n"
                              "        header: x-local-token\n",
                              NULL);
    const sc_jwt_config *c = cfg->inbound.jwt;
    assert_non_null(c);
    assert_string_equal(c->realm, "shop");
    assert_int_equal(c->max_token_bytes, 16384);
    assert_int_equal(c->cache_entries, 100);
    assert_int_equal(c->n_issuers, 2);
    const sc_jwt_issuer_cfg *m = &c->issuers[0];
    assert_int_equal(m->algorithms, SC_JWT_RS256 | SC_JWT_ES256);
    assert_int_equal(m->n_audiences, 2);
    assert_int_equal(m->refresh_ms, 600000);
    assert_int_equal(m->refetch_min_ms, 10000);
    assert_int_equal(m->fetch_timeout_ms, 2000);
    assert_int_equal(m->leeway_ms, 60000);
    assert_true(m->require_exp);
    assert_non_null(strstr(m->jwks_ca_file, "/ca.pem"));
    assert_false(c->issuers[1].require_exp);
    assert_non_null(strstr(c->issuers[1].jwks_file, g_dir)); /* relative to sidecar.yaml's directory */
    assert_int_equal(c->n_rules, 3);
    const sc_jwt_rule *r = &c->rules[0];
    assert_int_equal(r->issuers, 1u);
    assert_int_equal(r->n_claims, 3);
    assert_string_equal(r->claims[0].name, "tenant");
    assert_int_equal(r->claims[0].n_values, 1);
    assert_int_equal(r->claims[1].n_values, 0);
    assert_int_equal(r->claims[2].n_values, 2);
    assert_string_equal(r->header, "authorization");
    assert_false(r->keep_token);
    assert_int_equal(r->n_forward, 2);
    assert_int_equal(c->rules[1].mode, SC_JWT_MODE_OFF);
    assert_int_equal(c->rules[2].issuers, 3u); /* every issuer by default */
    assert_string_equal(c->rules[2].header, "x-local-token");
    /* the effective configuration shows it */
    json_t *js = sc_config_to_json(cfg);
    json_t *jj = json_object_get(json_object_get(js, "inbound"), "jwt");
    assert_non_null(jj);
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(jj, "issuers"), 0),
                                                          "refresh")),
                        "600s");
    assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(jj, "rules"), 1), "mode")),
                        "off");
    json_decref(js);
    sc_config_free(cfg);
    /* realm defaults to service.name; no jwt section: NULL */
    cfg = load_jwt(STD_ISSUER RULE_ALL, NULL);
    assert_string_equal(cfg->inbound.jwt->realm, "orders");
    assert_int_equal(cfg->inbound.jwt->cache_entries, SC_JWT_CACHE_DEFAULT);
    sc_config_free(cfg);
}

static void test_config_errors(void **st)
{
    (void)st;
    write_file("bad.json", "{\"keys\":[{\"kty\":\"RSA\",\"kid\":\"x\",\"n\":\"AQAB\",\"e\":\"AQAB\"}]}");
    char *ec = jwk_of(g_ec, "e", ""), doc[2048];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", ec);
    write_file("ec_only.json", doc);
    free(ec);
    struct {
        const char *section;
        const char *want;
    } cases[] = {
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_file: bad.json\n" RULE_ALL,
         "sidecar.yaml:10: inbound.jwt.issuers[0].jwks_file: "},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_file: bad.json\n" RULE_ALL,
         "an RSA modulus of 17 bits"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_file: ec_only.json\n" RULE_ALL,
         "none of its keys verifies the issuer's algorithms"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_file: missing.json\n" RULE_ALL,
         "No such file or directory"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [PS256, RS256, RS256]\n        jwks_file: jwks.json\n" RULE_ALL,
         "'PS256' is not a supported algorithm"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [PS256, RS256, RS256]\n        jwks_file: jwks.json\n" RULE_ALL,
         "RS256 is listed twice"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: []\n        jwks_file: jwks.json\n" RULE_ALL,
         "list at least one algorithm"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n" RULE_ALL,
         "sidecar.yaml:7: inbound.jwt.issuers[0].jwks_file: an issuer needs its keys"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_file: jwks.json\n"
         "        jwks_url: https://x/\n" RULE_ALL,
         "not both"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_url: http://10.0.0.1/k\n" RULE_ALL,
         "fetched over https://"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [HS256]\n        jwks_url: https://k.test/\n" RULE_ALL,
         "HMAC secrets (HS*) are never fetched from a URL"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_url: ftp://k.test/\n" RULE_ALL,
         "not an http:// or https:// URL"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_file: jwks.json\n"
         "        refresh: 1m\n" RULE_ALL,
         "only with jwks_url"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_url: http://127.0.0.1:1/k\n"
         "        refresh: 1s\n" RULE_ALL,
         "inbound.jwt.issuers[0].refresh"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_url: http://127.0.0.1:1/k\n"
         "        jwks_ca: ca.pem\n" RULE_ALL,
         "only with an https:// jwks_url"},
        {"    issuers:\n      - name: a\n        issuer: x\n        algorithms: [RS256]\n        jwks_file: jwks.json\n"
         "        leeway: 10m\n" RULE_ALL,
         "at most 5m"},
        {STD_ISSUER "      - name: main\n        issuer: " ISS "\n        algorithms: [RS256]\n        jwks_file: jwks.json\n" RULE_ALL,
         "issuer name 'main' is already used"},
        {STD_ISSUER "      - name: other\n        issuer: " ISS "\n        algorithms: [RS256]\n        jwks_file: jwks.json\n" RULE_ALL,
         "one issuer per iss value"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        issuers: [nobody]\n", "no issuer is named 'nobody'"},
        {STD_ISSUER "    rules:\n      - prefix: /\n      - prefix: /\n", "prefix '/' already has a rule"},
        {STD_ISSUER "    rules:\n      - prefix: api\n", "is not a path prefix"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        mode: sometimes\n", "inbound.jwt.rules[0].mode"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        forward: {sub: authorization}\n", "cannot carry a claim"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        forward: {sub: x-sidecar-caller}\n", "cannot carry a claim"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        forward: {sub: X-User}\n", "cannot carry a claim"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        forward: {sub: x-u, email: x-u}\n", "already carries claim"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        mode: off\n        scopes: [a]\n",
         "mode off does not look at the token; scopes does not apply"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        scopes: [\"a b\"]\n", "one scope per item"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        header: Authorization\n", "is not a header name"},
        {STD_ISSUER "    rules: []\n", "list at least one rule"},
        {STD_ISSUER, "sidecar.yaml:5: inbound.jwt.rules: missing required key 'rules'"},
        {"    rules:\n      - prefix: /\n", "rules that look at tokens need at least one issuer"},
        {STD_ISSUER RULE_ALL "    max_token_bytes: 100\n", "inbound.jwt.max_token_bytes"},
        {STD_ISSUER RULE_ALL "    colour: red\n", "unknown key 'colour'"},
        {STD_ISSUER "    rules:\n      - prefix: /\n        issuers: []\n", "an empty list accepts no token"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char *errs = NULL;
        sc_config *cfg = load_jwt(cases[i].section, &errs);
        if (cfg || !strstr(errs, cases[i].want))
            fail_msg("case %zu: want '%s', got:\n%s", i, cases[i].want, errs);
        free(errs);
    }
}

/* ---- PyJWT interop: a standard library's keys, JWKS and tokens ---- */

static bool run(const char *cmd)
{
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

static char *read_token(const char *dir, const char *name)
{
    char p[256], line[8192];
    snprintf(p, sizeof(p), "%s/tokens.txt", dir);
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    char *out = NULL;
    while (fgets(line, sizeof(line), f)) {
        size_t nl = strlen(name);
        if (strncmp(line, name, nl) == 0 && line[nl] == ' ') {
            line[strcspn(line, "\n")] = 0;
            out = strdup(line + nl + 1);
        }
    }
    fclose(f);
    assert_non_null(out);
    return out;
}

static void test_pyjwt_interop(void **st)
{
    (void)st;
    char dir[128], cmd[512];
    snprintf(dir, sizeof(dir), "%s/py", g_dir);
    mkdir(dir, 0700);
    snprintf(cmd, sizeof(cmd), "/usr/bin/python3 %s/jwt/issuer.py mint %s %lld", SC_TEST_DATA, dir, (long long)g_now);
    assert_true(run(cmd));
    char jwt[1024];
    snprintf(jwt, sizeof(jwt),
             "    issuers:\n"
             "      - name: py\n"
             "        issuer: https://py.issuer.test\n"
             "        audiences: [orders]\n"
             "        algorithms: [RS256, ES256, HS256]\n"
             "        jwks_file: py/jwks.json\n"
             "    rules:\n"
             "      - prefix: /\n"
             "        scopes: [orders.read]\n");
    sc_config *cfg = load_jwt(jwt, NULL);
    sc_jwt *j;
    char err[256];
    assert_int_equal(sc_jwt_new(cfg->inbound.jwt, 1, &j, err, sizeof(err)), 0);
    struct {
        const char *name;
        sc_jwt_outcome want;
    } cases[] = {
        {"rs256", SC_JWT_OK},          {"es256", SC_JWT_OK},
        {"hs256", SC_JWT_OK},          {"rs256_expired", SC_JWT_EXPIRED},
        {"es256_other_aud", SC_JWT_WRONG_AUDIENCE}, {"es256_aud_list", SC_JWT_OK},
        {"hs256_confused", SC_JWT_UNKNOWN_KEY},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char *t = read_token(dir, cases[i].name);
        sc_jwt_result r;
        sc_jwt_check_token(j, 0, &cfg->inbound.jwt->rules[0], t, strlen(t), g_now, 0, &r);
        if (r.outcome != cases[i].want)
            fail_msg("%s: got %s (%s)", cases[i].name, sc_jwt_outcome_name(r.outcome), r.why);
        if (r.outcome == SC_JWT_OK)
            assert_string_equal(sc_jwt_claim(&r, "sub"), "alice");
        sc_jwt_result_clear(&r);
        free(t);
    }
    sc_jwt_free(j);
    sc_config_free(cfg);
}

/* ---- JWKS URL: a server run by the test ---- */

typedef struct server {
    pid_t pid;
    int in;          /* its stdin: closing it ends it */
    int port;
    char dir[128];
} server;

static void server_start(server *s, const char *sub)
{
    snprintf(s->dir, sizeof(s->dir), "%s/%s", g_dir, sub);
    mkdir(s->dir, 0700);
    int in[2], out[2];
    assert_int_equal(pipe(in), 0);
    assert_int_equal(pipe(out), 0);
    s->pid = fork();
    assert_true(s->pid >= 0);
    if (s->pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        close(in[1]);
        close(out[0]);
        char script[256];
        snprintf(script, sizeof(script), "%s/jwt/issuer.py", SC_TEST_DATA);
        execl("/usr/bin/python3", "python3", script, "serve", s->dir, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    s->in = in[1];
    char buf[32] = {0};
    size_t n = 0;
    while (n < sizeof(buf) - 1 && !strchr(buf, '\n')) {
        ssize_t r = read(out[0], buf + n, sizeof(buf) - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(out[0]);
    assert_true(n > 0);
    s->port = atoi(buf);
    assert_true(s->port > 0);
}

static void server_stop(server *s)
{
    close(s->in);
    int status;
    waitpid(s->pid, &status, 0);
}

static int server_hits(server *s, const char *path)
{
    char p[256], line[256];
    snprintf(p, sizeof(p), "%s/hits.log", s->dir);
    FILE *f = fopen(p, "r");
    if (!f)
        return 0;
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strncmp(line, path, strlen(path)) == 0 && line[strlen(path)] == '\n';
    fclose(f);
    return n;
}

static void server_jwks(server *s, const char *doc)
{
    char p[256], q[256];
    snprintf(p, sizeof(p), "%s/jwks.json.tmp", s->dir);
    snprintf(q, sizeof(q), "%s/jwks.json", s->dir);
    FILE *f = fopen(p, "w");
    fputs(doc, f);
    fclose(f);
    rename(p, q);
}

typedef struct notified {
    int n;
} notified;

static void on_notify(void *arg)
{
    ((notified *)arg)->n++;
}

static sc_config *url_config(int port, const char *path, const char *extra)
{
    char jwt[1024];
    snprintf(jwt, sizeof(jwt),
             "    issuers:\n"
             "      - name: remote\n"
             "        issuer: " ISS "\n"
             "        algorithms: [RS256, ES256]\n"
             "        jwks_url: http://127.0.0.1:%d%s\n"
             "        fetch_timeout: 2s\n"
             "%s" RULE_ALL,
             port, path, extra);
    return load_jwt(jwt, NULL);
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)t;
    (void)revents;
}

/* Runs the loop until pred holds, at most ms (each turn at most 50ms). */
static bool run_until(struct ev_loop *loop, bool (*pred)(void *), void *arg, uint64_t ms)
{
    uint64_t deadline = sc_now_ms() + ms;
    while (!pred(arg)) {
        if (sc_now_ms() > deadline)
            return false;
        ev_timer t;
        ev_timer_init(&t, tick_cb, 0.05, 0);
        ev_timer_start(loop, &t);
        ev_run(loop, EVRUN_ONCE);
        ev_timer_stop(loop, &t);
    }
    return true;
}

static bool notified_once(void *arg)
{
    return ((notified *)arg)->n >= 1;
}

static bool notified_twice(void *arg)
{
    return ((notified *)arg)->n >= 2;
}

static bool notified_thrice(void *arg)
{
    return ((notified *)arg)->n >= 3;
}

static void test_jwks_url_fetch_and_unknown_kid(void **st)
{
    (void)st;
    server s;
    server_start(&s, "srv1");
    char *a = jwk_of(g_rsa, "rsa-1", ""), doc[8192];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", a);
    server_jwks(&s, doc);
    sc_config *cfg = url_config(s.port, "/jwks.json", "        refetch_min_interval: 30s\n");
    const sc_jwt_rule *rule = &cfg->inbound.jwt->rules[0];
    sc_jwt *j;
    char err[256];
    assert_int_equal(sc_jwt_new(cfg->inbound.jwt, 1, &j, err, sizeof(err)), 0);
    char reason[256];
    assert_true(sc_jwt_ready(j, reason, sizeof(reason)) == false);
    assert_non_null(strstr(reason, "no keys yet for issuer remote"));
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    notified nt = {0};
    assert_int_equal(sc_jwt_start(j, loop, on_notify, &nt, err, sizeof(err)), 0);

    char payload[256];
    snprintf(payload, sizeof(payload), "{\"iss\":\"%s\",\"exp\":%lld}", ISS, (long long)g_now + 300);
    char *t1 = mint_raw("{\"alg\":\"RS256\",\"kid\":\"rsa-1\"}", payload, "RS256", g_rsa, 0);
    char *t2 = mint_raw("{\"alg\":\"RS256\",\"kid\":\"rsa-2\"}", payload, "RS256", g_rsa2, 0);
    char *t3 = mint_raw("{\"alg\":\"ES256\",\"kid\":\"ec-9\"}", payload, "ES256", g_ec, 0);
    /* before the first answer: wait for it */
    sc_jwt_result r;
    sc_jwt_check_token(j, 0, rule, t1, strlen(t1), g_now, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_PENDING);
    assert_false(sc_jwt_wait_over(j, &r));
    assert_true(run_until(loop, notified_once, &nt, 5000));
    assert_true(sc_jwt_wait_over(j, &r));
    sc_jwt_result_clear(&r);
    sc_jwt_check_token(j, 0, rule, t1, strlen(t1), g_now, SC_JWT_NO_WAIT, &r);
    assert_int_equal(r.outcome, SC_JWT_OK);
    sc_jwt_result_clear(&r);
    assert_true(sc_jwt_ready(j, NULL, 0));
    assert_int_equal(server_hits(&s, "/jwks.json"), 1);

    /* the issuer rotates rsa-2 in: the first token naming it triggers one refetch */
    char *b = jwk_of(g_rsa2, "rsa-2", "");
    snprintf(doc, sizeof(doc), "{\"keys\":[%s,%s]}", a, b);
    server_jwks(&s, doc);
    sc_jwt_result waiting[20];
    for (int i = 0; i < 20; i++) {
        sc_jwt_check_token(j, 0, rule, t2, strlen(t2), g_now, 0, &waiting[i]);
        assert_int_equal(waiting[i].outcome, SC_JWT_PENDING);
    }
    assert_true(run_until(loop, notified_twice, &nt, 5000));
    for (int i = 0; i < 20; i++) {
        assert_true(sc_jwt_wait_over(j, &waiting[i]));
        sc_jwt_result_clear(&waiting[i]);
        sc_jwt_check_token(j, 0, rule, t2, strlen(t2), g_now, SC_JWT_NO_WAIT, &r);
        assert_int_equal(r.outcome, SC_JWT_OK);
        sc_jwt_result_clear(&r);
    }
    assert_int_equal(server_hits(&s, "/jwks.json"), 2); /* twenty requests, one fetch */

    /* another unknown kid within refetch_min_interval: refused at once, no fetch */
    sc_jwt_check_token(j, 0, rule, t3, strlen(t3), g_now, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_UNKNOWN_KEY);
    assert_non_null(strstr(r.why, "at most every 30000ms"));
    sc_jwt_result_clear(&r);
    /* and NO_WAIT never asks */
    sc_jwt_check_token(j, 0, rule, t3, strlen(t3), g_now, SC_JWT_NO_WAIT, &r);
    assert_int_equal(r.outcome, SC_JWT_UNKNOWN_KEY);
    sc_jwt_result_clear(&r);
    for (int i = 0; i < 5; i++)
        ev_run(loop, EVRUN_NOWAIT);
    assert_int_equal(server_hits(&s, "/jwks.json"), 2);

    /* SIGHUP-style reload fetches at once */
    sc_jwt_reload(j);
    assert_true(run_until(loop, notified_thrice, &nt, 5000));
    assert_int_equal(server_hits(&s, "/jwks.json"), 3);

    sc_jwt_stats stats;
    sc_jwt_stats_get(j, &stats);
    assert_int_equal(stats.fetches, 3);
    assert_int_equal(stats.fetch_errors, 0);
    assert_int_equal(stats.refetches, 1);
    assert_int_equal(stats.reloads, 2);
    assert_int_equal(stats.outcomes[SC_JWT_PENDING], 21);
    /* metrics */
    char *page = NULL;
    size_t plen = 0;
    FILE *f = open_memstream(&page, &plen);
    sc_jwt_render_stats(j, f);
    fclose(f);
    assert_non_null(strstr(page, "sidecar_jwt_verified_total{issuer=\"remote\"} 21\n"));
    assert_non_null(strstr(page, "sidecar_jwt_refused_total{reason=\"unknown_key\"} 2\n"));
    assert_non_null(strstr(page, "sidecar_jwt_jwks_fetches_total{issuer=\"remote\"} 3\n"));
    assert_non_null(strstr(page, "sidecar_jwt_jwks_refetches_total{issuer=\"remote\"} 1\n"));
    assert_non_null(strstr(page, "sidecar_jwt_jwks_keys{issuer=\"remote\"} 2\n"));
    assert_non_null(strstr(page, "# TYPE sidecar_jwt_cache_hits_total counter\n"));
    free(page);
    sc_jwt_free(j); /* stops first */
    ev_loop_destroy(loop);
    sc_config_free(cfg);
    server_stop(&s);
    free(a);
    free(b);
    free(t1);
    free(t2);
    free(t3);
}

static void test_jwks_url_failures_keep_keys(void **st)
{
    (void)st;
    server s;
    server_start(&s, "srv2");
    struct {
        const char *path;
        const char *error;
    } cases[] = {
        {"/status/500", "HTTP status 500"},
        {"/garbage", "not JSON"},
        {"/big", "larger than"},
        {"/missing", "HTTP status 404"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_config *cfg = url_config(s.port, cases[i].path, "");
        sc_jwt *j;
        char err[256];
        assert_int_equal(sc_jwt_new(cfg->inbound.jwt, 1, &j, err, sizeof(err)), 0);
        struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
        notified nt = {0};
        assert_int_equal(sc_jwt_start(j, loop, on_notify, &nt, err, sizeof(err)), 0);
        assert_true(run_until(loop, notified_once, &nt, 5000));
        char why[512];
        assert_false(sc_jwt_ready(j, why, sizeof(why)));
        if (!strstr(why, cases[i].error))
            fail_msg("%s: %s", cases[i].path, why);
        /* without keys, a token is refused (not parked again: the fetch ended) */
        char *t = mint("RS256", "rsa-1", "");
        sc_jwt_result r;
        sc_jwt_check_token(j, 0, &cfg->inbound.jwt->rules[0], t, strlen(t), g_now, SC_JWT_NO_WAIT, &r);
        assert_int_equal(r.outcome, SC_JWT_UNKNOWN_KEY);
        sc_jwt_result_clear(&r);
        free(t);
        sc_jwt_stats stats;
        sc_jwt_stats_get(j, &stats);
        assert_int_equal(stats.fetch_errors, 1);
        sc_jwt_free(j);
        ev_loop_destroy(loop);
        sc_config_free(cfg);
    }
    /* keys in use survive a failing refetch */
    char *a = jwk_of(g_rsa, "rsa-1", ""), doc[8192];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s]}", a);
    server_jwks(&s, doc);
    sc_config *cfg = url_config(s.port, "/jwks.json", "        refetch_min_interval: 1s\n");
    sc_jwt *j;
    char err[256];
    assert_int_equal(sc_jwt_new(cfg->inbound.jwt, 1, &j, err, sizeof(err)), 0);
    struct ev_loop *loop = ev_loop_new(EVFLAG_AUTO);
    notified nt = {0};
    assert_int_equal(sc_jwt_start(j, loop, on_notify, &nt, err, sizeof(err)), 0);
    assert_true(run_until(loop, notified_once, &nt, 5000));
    server_jwks(&s, "{\"keys\": 7}");
    sc_jwt_reload(j);
    assert_true(run_until(loop, notified_twice, &nt, 5000));
    char *t = mint("RS256", "rsa-1", "");
    sc_jwt_result r;
    sc_jwt_check_token(j, 0, &cfg->inbound.jwt->rules[0], t, strlen(t), g_now, 0, &r);
    assert_int_equal(r.outcome, SC_JWT_OK);
    sc_jwt_result_clear(&r);
    json_t *js = sc_jwt_json(j);
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(js, 0), "last_error")), "\"keys\" array"));
    json_decref(js);
    sc_jwt_free(j);
    ev_loop_destroy(loop);
    sc_config_free(cfg);
    server_stop(&s);
    free(a);
    free(t);
}

/* ---- threads: workers share the cache and the keys ---- */

typedef struct worker_arg {
    sc_jwt *j;
    const sc_jwt_rule *rule;
    char **toks;
    int n;
    unsigned id;
    int ok;
} worker_arg;

static void *worker_main(void *p)
{
    worker_arg *w = p;
    for (int round = 0; round < 50; round++)
        for (int i = 0; i < w->n; i++) {
            sc_jwt_result r;
            sc_jwt_check_token(w->j, w->id, w->rule, w->toks[i], strlen(w->toks[i]), g_now, 0, &r);
            w->ok += r.outcome == SC_JWT_OK && sc_jwt_claim(&r, "sub") != NULL;
            sc_jwt_result_clear(&r);
        }
    return NULL;
}

static void test_workers_share_cache(void **st)
{
    (void)st;
    char yaml[2048];
    snprintf(yaml, sizeof(yaml), "%s    cache_entries: 8\n%s", STD_ISSUER, RULE_ALL);
    sc_config *cfg = load_jwt(yaml, NULL);
    sc_jwt *j;
    char err[256];
    assert_int_equal(sc_jwt_new(cfg->inbound.jwt, 4, &j, err, sizeof(err)), 0);
    char *toks[12];
    for (int i = 0; i < 12; i++) {
        char c[32];
        snprintf(c, sizeof(c), "\"n\":%d", i);
        toks[i] = mint(i % 2 ? "ES256" : "HS256", i % 2 ? "ec-1" : "hs-1", c);
    }
    pthread_t th[4];
    worker_arg wa[4];
    for (unsigned i = 0; i < 4; i++) {
        wa[i] = (worker_arg){.j = j, .rule = &cfg->inbound.jwt->rules[0], .toks = toks, .n = 12, .id = i};
        pthread_create(&th[i], NULL, worker_main, &wa[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(wa[i].ok, 50 * 12);
    }
    sc_jwt_stats s;
    sc_jwt_stats_get(j, &s);
    assert_int_equal(s.cache_hits + s.cache_misses, 4 * 50 * 12);
    assert_true(s.cache_hits > 0);
    for (int i = 0; i < 12; i++)
        free(toks[i]);
    sc_jwt_free(j);
    sc_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_each_algorithm_verifies),
        cmocka_unit_test(test_algorithm_not_in_issuer_list),
        cmocka_unit_test(test_none_refused),
        cmocka_unit_test(test_hs256_with_rsa_public_key_refused),
        cmocka_unit_test(test_key_without_kid),
        cmocka_unit_test(test_ec_curve_must_fit),
        cmocka_unit_test(test_bad_signature),
        cmocka_unit_test(test_exp_nbf_leeway),
        cmocka_unit_test(test_wrong_issuer_and_audience),
        cmocka_unit_test(test_required_claims_and_scopes),
        cmocka_unit_test(test_claim_string_forms_and_forwarding),
        cmocka_unit_test(test_request_headers_and_modes),
        cmocka_unit_test(test_rule_for_path),
        cmocka_unit_test(test_reserved_headers),
        cmocka_unit_test(test_refusal_shape),
        cmocka_unit_test(test_cache_hit_path),
        cmocka_unit_test(test_cache_bounded_lru),
        cmocka_unit_test(test_jwks_file_reload_and_rotation),
        cmocka_unit_test(test_hostile_tokens),
        cmocka_unit_test(test_too_many_claims),
        cmocka_unit_test(test_hostile_jwks),
        cmocka_unit_test(test_config_full_section),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_pyjwt_interop),
        cmocka_unit_test(test_jwks_url_fetch_and_unknown_kid),
        cmocka_unit_test(test_jwks_url_failures_keep_keys),
        cmocka_unit_test(test_workers_share_cache),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}

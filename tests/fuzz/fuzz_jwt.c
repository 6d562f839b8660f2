/*
 * fuzz_jwt.c: arbitrary bytes as a bearer token (split, decoded, header and
 * claims checked, verified against a fixed key set with RSA, EC and HMAC
 * keys, claims built and held to a rule, the refusal shaped), as a JWKS
 * document (with and without HMAC secrets allowed), as an Authorization
 * header value and as a request path. Every parser must refuse or accept
 * without crashing, leaking or hanging, and what it accepts must be
 * consistent: a token that verifies has an alg the issuer allows, claims
 * are sorted and findable, a refusal is quoted safely.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "jwt/jwks.h"
#include "jwt/jwt.h"

/* The seed tokens (corpus/fuzz_jwt) are signed by these keys (made with
 * tests/data/jwt/issuer.py mint; iat 1796622298, exp 300 s later). */
static const char keys_doc[] =
    "{\"keys\":[{\"kty\":\"RSA\",\"key_ops\":[\"verify\"],\"n\":\"sH0Ry5cpAMkDy9RJ7b-dW3eSjnVbI_VUC6SnvnY"
    "v4t40jTC78K3hvwrMinlN3itTZKfgMA0LzFvHvdXzr1OKvUdZkbpXyoFPNHhwsNTVMS1bfAGBMUhv65OY_IDXAob4MtmRG_nbwRp"
    "n0q7gokM8q9U804GHamerWg8reJGKZBi315bp3rZeI3uJntAF66-OHRInlOmHPHhCJr9yZqyN5YvokDj7dY_l22-Zp63aKva6A-N"
    "tngwQ2XomaWhCtZQPqylLl6HWNd8e5fy57v3RHuQjdGOXcX0ssAQr3oE_E1C4_ULTzBYES3G-zDr3riQ_Si84FWNMJFznxrMAtAf"
    "ZaQ\",\"e\":\"AQAB\",\"kid\":\"py-rsa\",\"use\":\"sig\",\"alg\":\"RS256\"},{\"kty\":\"EC\",\"crv\":"
    "\"P-256\",\"x\":\"LwEbmB6IC7h1KG56ykMP53PI5kqMURLd_aGe-RJD7zY\",\"y\":\"L1kZr5Vevz_OrHdTBPwkaZc3MMGhc"
    "ipChk6BMPT5rFQ\",\"kid\":\"py-ec\",\"use\":\"sig\",\"alg\":\"ES256\"},{\"k\":\"P452deedOGrulBFhqk0Ss"
    "z5biHqhlCrNNkdaoPpPv2U\",\"kty\":\"oct\",\"kid\":\"py-hs\",\"alg\":\"HS256\"}]}";
#define NOW 1796622300

static sc_jwks *g_keys;

static char *claim_values[] = {"alice", "admin"};
static sc_jwt_claim_req claim_reqs[] = {{.name = "sub", .values = claim_values, .n_values = 2}, {.name = "scope"}};
static char *scopes[] = {"orders.read"};
static char *audiences[] = {"orders"};
static sc_jwt_issuer_cfg issuer = {.name = "py", .issuer = "https://py.issuer.test", .audiences = audiences,
                                   .n_audiences = 1, .algorithms = SC_JWT_RS256 | SC_JWT_ES256 | SC_JWT_HS256,
                                   .leeway_ms = 30000, .require_exp = true};
static sc_jwt_rule rule = {.prefix = "/", .header = "authorization", .issuers = 1, .claims = claim_reqs,
                           .n_claims = 2, .scopes = scopes, .n_scopes = 1, .keep_token = true};
static sc_jwt_rule xrule = {.prefix = "/", .header = "x-token", .issuers = 1, .keep_token = true};

static void check_claims(const sc_jwt_claims *c)
{
    for (size_t i = 0; i < c->n; i++) {
        if (i && strcmp(c->v[i - 1].name, c->v[i].name) > 0)
            abort();
        if (!sc_jwt_claims_find(c, c->v[i].name) || !c->v[i].value || !c->v[i].items)
            abort();
    }
}

static void check_refusal(sc_jwt_outcome o, const char *why)
{
    sc_jwt_refusal f;
    sc_jwt_refusal_for(o, why, "realm", &f);
    const char *d = strstr(f.www_authenticate, "realm=\"");
    if (!d || (f.http_status != 401 && f.http_status != 403))
        abort();
    /* the quoted strings hold no quote, backslash or control character */
    size_t quotes = 0;
    for (const char *p = f.www_authenticate; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == '\\')
            abort();
        quotes += *p == '"';
    }
    if (quotes % 2)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!g_keys && sc_jwks_parse(keys_doc, strlen(keys_doc), true, &g_keys, NULL, 0, NULL, 0) != 3)
        abort();
    const char *s = (const char *)data;

    /* a token */
    sc_jwt_token t;
    char why[256];
    sc_jwt_outcome o = sc_jwt_token_parse(s, size, 65536, &t, why, sizeof(why));
    if (o == SC_JWT_OK) {
        if (!t.alg || !t.payload)
            abort();
        sc_jwt_outcome c = sc_jwt_token_check_claims(&t, &issuer, NOW, why, sizeof(why));
        sc_jwt_outcome v = sc_jwt_token_verify(&t, g_keys, why, sizeof(why));
        if (v == SC_JWT_OK && !(t.alg & (SC_JWT_RS256 | SC_JWT_ES256 | SC_JWT_HS256)))
            abort();
        check_refusal(v == SC_JWT_OK ? c : v, why);
        sc_jwt_claims *cl = sc_jwt_claims_build(&t, 0, why, sizeof(why));
        if (cl) {
            check_claims(cl);
            (void)sc_jwt_rule_check(&rule, cl, why, sizeof(why));
            sc_jwt_claims_unref(cl);
        }
        sc_jwt_token_clear(&t);
    } else {
        check_refusal(o, why);
    }

    /* a key set, both ways */
    for (int secrets = 0; secrets < 2; secrets++) {
        sc_jwks *k = NULL;
        char notes[512], err[512];
        int n = sc_jwks_parse(s, size, secrets, &k, notes, sizeof(notes), err, sizeof(err));
        if (n > 0) {
            if (!k || (size_t)n != k->n)
                abort();
            for (size_t i = 0; i < k->n; i++)
                if (!k->keys[i].algs || (!secrets && k->keys[i].type == SC_JWK_OCT))
                    abort();
            sc_jwks_unref(k);
        } else if (k) {
            abort();
        }
    }

    /* a header value and a path */
    const char *tok;
    size_t tl;
    if (sc_jwt_token_from_header(&rule, s, size, &tok, &tl) > 0 && (tok < s || tok + tl > s + size || !tl))
        abort();
    (void)sc_jwt_token_from_header(&xrule, s, size, &tok, &tl);
    char out[512];
    long n = sc_jwt_path_normalize(s, size, out, sizeof(out));
    if (n > (long)sizeof(out) || (n >= 0 && out[0] != '/'))
        abort();
    return 0;
}

/*
 * jwt_bench.c: the CPU cost of the inbound JWT check, one thread, no
 * network: a first verification of an RS256 (RSA 2048) and an ES256
 * (P-256) token (each token distinct, so every check misses the cache and
 * runs in full: the cache lookup, parse, signature, claims, cache
 * entry), the signature verification alone, a cache hit (the same token
 * again), and the whole request-level check (rule by path, token from the
 * headers, cache hit) against the same call on a path no rule covers.
 *
 *   build/tests/jwt_bench [iterations]      (default 2000; built with the tests)
 *
 * Prints one line per case: microseconds per check (CPU time of the
 * process) and checks per second on one core.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "jwt/jwt_runtime.h"
#include "../unit/jwt_mint.h"

#define ISS "https://bench.issuer"

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *what, double secs, int n)
{
    printf("%-52s %9.2f us  %10.0f /s\n", what, secs / n * 1e6, n / secs);
}

static char *token(const char *alg, const char *kid, void *key, int64_t now, int i)
{
    char header[128], payload[512];
    snprintf(header, sizeof(header), "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}", alg, kid);
    snprintf(payload, sizeof(payload),
             "{\"iss\":\"" ISS "\",\"aud\":\"orders\",\"sub\":\"user-%d\",\"iat\":%lld,\"exp\":%lld,"
             "\"scope\":\"orders.read orders.write\",\"tenant\":\"acme\",\"jti\":\"%08d\"}",
             i, (long long)now, (long long)now + 3600, i);
    return mint_raw(header, payload, alg, key, 0);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    if (n < 10)
        n = 10;
    int64_t now = (int64_t)time(NULL);
    EVP_PKEY *rsa = EVP_RSA_gen(2048), *ec = EVP_EC_gen("P-256");
    char dir[] = "/tmp/sc-jwt-bench-XXXXXX";
    if (!rsa || !ec || !mkdtemp(dir))
        return 1;
    char *a = jwk_of(rsa, "rsa-1", ""), *b = jwk_of(ec, "ec-1", ""), path[256], doc[8192];
    snprintf(doc, sizeof(doc), "{\"keys\":[%s,%s]}", a, b);
    snprintf(path, sizeof(path), "%s/jwks.json", dir);
    FILE *f = fopen(path, "w");
    fputs(doc, f);
    fclose(f);
    char yaml[2048];
    snprintf(yaml, sizeof(yaml),
             "service: {name: orders}\n"
             "inbound:\n"
             "  listen: 127.0.0.1:15001\n"
             "  app: 127.0.0.1:8080\n"
             "  jwt:\n"
             "    cache_entries: %d\n"
             "    issuers:\n"
             "      - {name: bench, issuer: \"" ISS "\", audiences: [orders], algorithms: [RS256, ES256],"
             " jwks_file: jwks.json}\n"
             "    rules:\n"
             "      - prefix: /orders/\n"
             "        scopes: [orders.read]\n"
             "        claims: {tenant: acme}\n"
             "        forward: {sub: x-user}\n",
             4 * n + 16);
    sc_config *cfg = NULL;
    sc_diags d = {0};
    sc_log_set_level(SC_LOG_WARN);
    if (sc_config_load_string(yaml, strlen(yaml), "bench.yaml", dir, &cfg, &d) < 0) {
        sc_diags_print(&d, stderr);
        return 1;
    }
    sc_jwt *j;
    char err[256];
    if (sc_jwt_new(cfg->inbound.jwt, 1, &j, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    const sc_jwt_rule *rule = &cfg->inbound.jwt->rules[0];
    printf("jwt_bench: %d iterations per case, one thread, %s\n", n, OpenSSL_version(OPENSSL_VERSION));

    static const struct {
        const char *alg, *kid;
    } algs[] = {{"RS256", "rsa-1"}, {"ES256", "ec-1"}};
    for (size_t k = 0; k < 2; k++) {
        void *key = k == 0 ? (void *)rsa : (void *)ec;
        char **toks = malloc(sizeof(char *) * (size_t)n);
        for (int i = 0; i < n; i++)
            toks[i] = token(algs[k].alg, algs[k].kid, key, now, (int)k * n + i);
        /* the signature alone: parse + verify, no cache, no claims */
        sc_jwks *keys;
        sc_jwks_parse(doc, strlen(doc), false, &keys, NULL, 0, NULL, 0);
        double t0 = cpu_now();
        int ok = 0;
        for (int i = 0; i < n; i++) {
            sc_jwt_token t;
            if (sc_jwt_token_parse(toks[i], strlen(toks[i]), 8192, &t, err, sizeof(err)) == SC_JWT_OK)
                ok += sc_jwt_token_verify(&t, keys, err, sizeof(err)) == SC_JWT_OK;
            sc_jwt_token_clear(&t);
        }
        double t1 = cpu_now();
        char what[96];
        snprintf(what, sizeof(what), "%s parse + signature verification", algs[k].alg);
        report(what, t1 - t0, n);
        sc_jwks_unref(keys);
        /* a first verification through the runtime: every token new */
        t0 = cpu_now();
        for (int i = 0; i < n; i++) {
            sc_jwt_result r;
            sc_jwt_check_token(j, 0, rule, toks[i], strlen(toks[i]), now, 0, &r);
            ok += r.outcome == SC_JWT_OK && !r.cache_hit;
            sc_jwt_result_clear(&r);
        }
        t1 = cpu_now();
        snprintf(what, sizeof(what), "%s first verification (cache miss, full check)", algs[k].alg);
        report(what, t1 - t0, n);
        /* the same tokens again: cache hits */
        int reps = 20;
        t0 = cpu_now();
        for (int rep = 0; rep < reps; rep++)
            for (int i = 0; i < n; i++) {
                sc_jwt_result r;
                sc_jwt_check_token(j, 0, rule, toks[i], strlen(toks[i]), now, 0, &r);
                ok += r.outcome == SC_JWT_OK && r.cache_hit;
                sc_jwt_result_clear(&r);
            }
        t1 = cpu_now();
        snprintf(what, sizeof(what), "%s cache hit (%d distinct tokens)", algs[k].alg, n);
        report(what, t1 - t0, n * reps);
        if (ok != n * 2 + n * reps) {
            fprintf(stderr, "jwt_bench: %d of %d checks as expected\n", ok, n * 2 + n * reps);
            return 1;
        }
        for (int i = 0; i < n; i++)
            free(toks[i]);
        free(toks);
    }

    /* the request-level call, as the stage makes it: rule, headers, cache hit, forwarded claims */
    char *tok = token("ES256", "ec-1", ec, now, 999999);
    char bearer[2048];
    snprintf(bearer, sizeof(bearer), "Bearer %s", tok);
    nghttp2_nv hdrs[] = {
        {(uint8_t *)"user-agent", (uint8_t *)"grpc-go/1.60", 10, 12, 0},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0},
        {(uint8_t *)"te", (uint8_t *)"trailers", 2, 8, 0},
        {(uint8_t *)"authorization", (uint8_t *)bearer, 13, strlen(bearer), 0},
        {(uint8_t *)"grpc-timeout", (uint8_t *)"1S", 12, 2, 0},
    };
    int reps = n * 50, ok = 0;
    static const char *const paths[] = {"/orders/pkg.Orders/Get", "/health/pkg.Health/Check"};
    static const char *const names[] = {"request check, JWT on (rule, header, cache hit)",
                                        "request check, no rule for the path (JWT off)"};
    for (int p = 0; p < 2; p++) {
        double t0 = cpu_now();
        for (int i = 0; i < reps; i++) {
            sc_jwt_result r;
            sc_jwt_check(j, 0, paths[p], strlen(paths[p]), hdrs, 5, now, 0, &r);
            sc_jwt_header fw[4];
            ok += sc_jwt_outcome_passes(r.outcome) + (int)sc_jwt_forward_headers(&r, fw, 4);
            sc_jwt_result_clear(&r);
        }
        report(names[p], cpu_now() - t0, reps);
    }
    if (ok != reps * 3) {
        fprintf(stderr, "jwt_bench: request checks not as expected (%d)\n", ok);
        return 1;
    }
    sc_jwt_stats s;
    sc_jwt_stats_get(j, &s);
    printf("cache: %llu hits, %llu misses\n", (unsigned long long)s.cache_hits, (unsigned long long)s.cache_misses);
    free(tok);
    free(a);
    free(b);
    sc_jwt_free(j);
    sc_config_free(cfg);
    unlink(path);
    rmdir(dir);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ec);
    return 0;
}

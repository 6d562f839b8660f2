/*
 * client_cert_shim.c: LD_PRELOAD shim that gives h2load (or wrk) a TLS
 * client certificate, for the tls-persistent load of tests/bench/run.sh.
 *
 * h2load 1.52 and wrk 4.1 speak TLS but have no option for a client
 * certificate, and every proxy in the benchmark requires one (mTLS). This
 * library wraps SSL_CTX_new(): after the real call it loads the chain in
 * $BENCH_CLIENT_CERT and the key in $BENCH_CLIENT_KEY into the new context,
 * so every connection the tool makes presents them. Nothing else changes:
 * h2load keeps its own ciphers, ALPN, timing and reporting. Without the two
 * variables the shim does nothing. A certificate or key that does not load
 * is fatal (exit 1), never silently ignored.
 *
 *   cc -O2 -shared -fPIC -o client_cert_shim.so client_cert_shim.c -ldl -lssl
 *   BENCH_CLIENT_CERT=client.pem BENCH_CLIENT_KEY=client.key \
 *       LD_PRELOAD=./client_cert_shim.so h2load --h1 https://127.0.0.1:PORT/
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method)
{
    static SSL_CTX *(*real)(const SSL_METHOD *);
    if (real == NULL) {
        real = (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
        if (real == NULL) {
            fprintf(stderr, "client_cert_shim: SSL_CTX_new not found\n");
            exit(1);
        }
    }
    SSL_CTX *ctx = real(method);
    const char *cert = getenv("BENCH_CLIENT_CERT");
    const char *key = getenv("BENCH_CLIENT_KEY");
    if (ctx == NULL || cert == NULL || key == NULL)
        return ctx;
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1
        || SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1
        || SSL_CTX_check_private_key(ctx) != 1) {
        fprintf(stderr, "client_cert_shim: cannot use %s / %s:\n", cert, key);
        ERR_print_errors_fp(stderr);
        exit(1);
    }
    return ctx;
}

/*
 * tls_internal.h: what the files of the tls module share and nobody else
 * should use: the context and per-connection structures, the OpenSSL
 * ex_data slots they hang off, the error helpers, the material blobs a
 * context is built from, and the callbacks one file installs for another.
 *
 * Lifetimes: an sc_tls_ctx lives in its SSL_CTX's ex_data and is freed by
 * the SSL_CTX's ex_data free callback (tls_ctx.c), so its refcount is
 * OpenSSL's own: an SSL keeps the context (and our data its callbacks read)
 * alive by itself. Per-connection data (sc_tls_conn_state: expected server
 * identity, session-cache key, the failure text) hangs off the SSL the same
 * way, is freed with it, and is allocated only for client connections that
 * need it and for connections that failed: a server handshake that succeeds
 * allocates nothing here.
 */
#ifndef SC_TLS_INTERNAL_H
#define SC_TLS_INTERNAL_H

#include "tls/tls.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define SC_TLS_CONN_ERR_LEN (2 * SC_TLS_ID_MAX + 128)   /* two identities fit */

struct sc_tls_ctx {
    SSL_CTX *ssl;
    sc_tls_role role;
    uint64_t gen;
    bool has_cert;
    sc_tls_cert_info cert;
    sc_tls_cert_info *roots;
    size_t n_roots;
    unsigned char digest[32];           /* of the material, to ignore no-op reloads */
};

typedef struct sc_tls_conn_state {
    sc_tls_session_cache *cache;
    const char *expected;               /* server identity (URI SAN), points into tail, or NULL */
    const char *host;                   /* server name (DNS or IP SAN), points into tail, or NULL */
    const char *key;                    /* points into tail, or NULL */
    bool refused;                       /* our verification refused the peer */
    bool bad;                           /* a TLS failure: do not resume this session */
    char err[SC_TLS_CONN_ERR_LEN];
    char tail[];
} sc_tls_conn_state;

/* ---- ex_data slots (tls_ctx.c) ---- */

/* Set once by sc_tls_indexes_ready(), which every context build calls
 * first, so they are valid wherever an SSL exists. */
extern int sc_tls_ctx_idx, sc_tls_conn_idx;
bool sc_tls_indexes_ready(void);

static inline sc_tls_ctx *sc_tls_ctx_of(const SSL *ssl)
{
    return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), sc_tls_ctx_idx);
}

static inline sc_tls_conn_state *sc_tls_conn_get(const SSL *ssl)
{
    return SSL_get_ex_data(ssl, sc_tls_conn_idx);
}

/* ---- errors and connection state (tls_conn.c) ---- */

/* printf into err (nothing when err is NULL or errlen 0). */
void sc_tls_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* "what (<openssl reason>)" into err, clearing this thread's error queue. */
void sc_tls_set_ossl_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The SSL's state, allocated when missing (extra bytes for strings on
 * creation only); owned by the SSL. NULL on -ENOMEM. */
sc_tls_conn_state *sc_tls_conn_make(SSL *ssl, size_t extra);

/* SSL_CTX callbacks tls_ctx.c installs: certificate verification (chain
 * failures worded, the URI SAN and the expected server identity checked)
 * and the server's ALPN choice. */
int sc_tls_verify_cb(int ok, X509_STORE_CTX *x);
int sc_tls_alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg);

/* ---- identities and certificate facts (tls_identity.c, tls_cert.c) ---- */

/* Why cert's URI SAN cannot be an identity ("" when it can, or there is
 * none), for a log line: every byte of the peer's text escaped. */
void sc_tls_uri_san_problem(X509 *cert, char *out, size_t cap);
/* The names cert answers to, for "does not match" messages:
 * "DNS:api, DNS:localhost, IP:127.0.0.1" (escaped), "no DNS or IP SAN". */
void sc_tls_cert_names_text(X509 *cert, char *out, size_t cap);
/* Why verification failed at x's current certificate: "<reason> (depth N, <subject>)". */
void sc_tls_verify_error_text(X509_STORE_CTX *x, char *out, size_t cap);
/* Whether now lies within cert's validity dates. */
bool sc_tls_cert_current(X509 *cert, time_t now);
/* t as unix seconds and "2026-01-02T03:04:05Z" (0 and "" when t is unusable). */
void sc_tls_asn1_time_out(const ASN1_TIME *t, int64_t *unix_out, char *iso, size_t isolen);

/* ---- sessions (tls_session.c) ---- */

/* Server: new sessions capped at the client certificate's notAfter. */
int sc_tls_server_new_session_cb(SSL *ssl, SSL_SESSION *sess);
/* Client: new sessions into the connection's sc_tls_session_cache. */
int sc_tls_client_new_session_cb(SSL *ssl, SSL_SESSION *sess);
/* A session to offer for key (a reference for the caller), or NULL. */
SSL_SESSION *sc_tls_session_cache_take(sc_tls_session_cache *c, const char *key, uint64_t gen);

/* ---- material (tls_ctx.c), for contexts and reloads ---- */

typedef struct sc_tls_blob {
    char *data;                     /* owned when `owned` */
    size_t len;
    bool owned;
    const char *label;              /* "tls.cert" */
    const char *src;                /* path or "(memory)" */
} sc_tls_blob;

void sc_tls_blob_free(sc_tls_blob *b);
/* Loads the cert, key and ca of o (files read once, so what is checked is
 * what is used; in-memory PEM wins over a file; absent: data NULL). On
 * failure nothing is left to free. */
int sc_tls_load_blobs(const sc_tls_ctx_opts *o, sc_tls_blob *cert, sc_tls_blob *key, sc_tls_blob *ca,
                      char *err, size_t errlen);
/* SHA-256 over the blobs (lengths included, absent ones distinct from empty). */
void sc_tls_digest_blobs(const sc_tls_blob *const *bs, size_t n, unsigned char out[32]);
/* Builds the context from loaded blobs (one reference for the caller); the
 * digest is the caller's to fill. NULL with err. */
sc_tls_ctx *sc_tls_build_ctx(const sc_tls_ctx_opts *o, const sc_tls_blob *cert, const sc_tls_blob *key,
                             const sc_tls_blob *ca, char *err, size_t errlen);

#endif

/*
 * tls_ctx.c: TLS material and contexts: reading the certificate, key and CA
 * files (or taking in-memory Connect PEM), checking them, and building the
 * immutable SSL_CTX of a role once (protocols, ciphers, groups, trust store,
 * verification and session callbacks, ALPN); the context's accessors; the
 * OpenSSL ex_data slots the module hangs its data on; and chain checks of
 * PEM text outside a context (sc_tls_chain_verify_pem, sc_tls_cert_info_file).
 *
 * Memory: an sc_tls_ctx is refcounted through its SSL_CTX (see
 * tls_internal.h): sc_tls_ctx_unref drops one reference and the last one
 * frees it. Material read from files is held in OpenSSL memory and wiped
 * when freed (it may be a key); in-memory PEM is borrowed from the caller
 * for the duration of the call only.
 */
#include "tls/tls_internal.h"

#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MATERIAL_MAX (1u << 20)         /* a PEM file larger than 1 MiB is a mistake */
/* Sessions in a server context's cache, oldest evicted. Each holds the
 * client's certificate chain as parsed X509 objects: about 13 KiB of RSS per
 * session with a leaf + CA chain (38 MiB for 2,900 full handshakes by
 * tests/bench/handshake_client.c), so 10,000 reached 130 MiB. 2,048 covers a
 * TLS 1.3 ticket outstanding for each of 512 callers x 4 (the client side keeps
 * at most 4 per upstream instance) in about 26 MiB. */
#define SERVER_SESSION_CACHE 2048

int sc_tls_ctx_idx = -1, sc_tls_conn_idx = -1;
static pthread_once_t idx_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t next_gen = 1;

/* ---- ex_data slots ---- */

static void ctx_exfree(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                       void *argp)
{
    SC_UNUSED(parent), SC_UNUSED(ad), SC_UNUSED(idx), SC_UNUSED(argl), SC_UNUSED(argp);
    sc_tls_ctx *c = ptr;
    if (!c)
        return;
    free(c->roots);
    free(c);
}

static void conn_exfree(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                        void *argp)
{
    SC_UNUSED(parent), SC_UNUSED(ad), SC_UNUSED(idx), SC_UNUSED(argl), SC_UNUSED(argp);
    free(ptr);
}

static void idx_init(void)
{
    sc_tls_ctx_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ctx_exfree);
    sc_tls_conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_exfree);
}

bool sc_tls_indexes_ready(void)
{
    pthread_once(&idx_once, idx_init);
    return sc_tls_ctx_idx >= 0 && sc_tls_conn_idx >= 0;
}

/* ---- material ---- */

void sc_tls_blob_free(sc_tls_blob *b)
{
    if (b->owned)
        OPENSSL_clear_free(b->data, b->len);   /* may be a key */
    memset(b, 0, sizeof(*b));
}

static int read_file(const char *path, const char *label, sc_tls_blob *b, char *err, size_t errlen)
{
    memset(b, 0, sizeof(*b));
    b->label = label;
    b->src = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        sc_tls_set_err(err, errlen, "%s %s: cannot open: %s", label, path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        sc_tls_set_err(err, errlen, "%s %s: cannot stat: %s", label, path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)MATERIAL_MAX) {
        close(fd);
        sc_tls_set_err(err, errlen, "%s %s: not a regular file of at most %u bytes", label, path,
                       MATERIAL_MAX);
        return -EINVAL;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = OPENSSL_malloc(cap);
    if (!buf) {
        close(fd);
        sc_tls_set_err(err, errlen, "%s %s: out of memory", label, path);
        return -ENOMEM;
    }
    for (;;) {
        if (len + 1 >= cap) {   /* the file grew while we read it */
            if (cap > MATERIAL_MAX) {
                OPENSSL_clear_free(buf, cap);
                close(fd);
                sc_tls_set_err(err, errlen, "%s %s: larger than %u bytes", label, path, MATERIAL_MAX);
                return -EINVAL;
            }
            char *nb = OPENSSL_clear_realloc(buf, cap, cap * 2);
            if (!nb) {
                OPENSSL_clear_free(buf, cap);
                close(fd);
                return -ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            OPENSSL_clear_free(buf, cap);
            close(fd);
            sc_tls_set_err(err, errlen, "%s %s: cannot read: %s", label, path, strerror(e));
            return -e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = 0;
    b->data = buf;
    b->len = len;
    b->owned = true;
    return 0;
}

/* One of cert/key/ca from opts: in-memory PEM wins over a file. Absent: b->data NULL. */
static int get_blob(const char *pem, const char *file, const char *label, sc_tls_blob *b, char *err,
                    size_t errlen)
{
    memset(b, 0, sizeof(*b));
    b->label = label;
    if (pem) {
        b->data = (char *)pem;
        b->len = strlen(pem);
        b->src = "(memory)";
        if (b->len > MATERIAL_MAX) {
            sc_tls_set_err(err, errlen, "%s (memory): larger than %u bytes", label, MATERIAL_MAX);
            memset(b, 0, sizeof(*b));
            return -EINVAL;
        }
        return 0;
    }
    if (file)
        return read_file(file, label, b, err, errlen);
    return 0;
}

/* Every certificate of a PEM blob. NULL with err when none or one is bad. */
static STACK_OF(X509) *parse_certs(const sc_tls_blob *b, char *err, size_t errlen)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *bio = BIO_new_mem_buf(b->data, (int)b->len);
    if (!sk || !bio) {
        sk_X509_free(sk);
        BIO_free(bio);
        sc_tls_set_err(err, errlen, "%s %s: out of memory", b->label, b->src);
        return NULL;
    }
    ERR_clear_error();
    for (;;) {
        X509 *x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
        if (!x)
            break;
        if (!sk_X509_push(sk, x)) {
            X509_free(x);
            break;
        }
    }
    unsigned long e = ERR_peek_last_error();
    bool clean_end = ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
    BIO_free(bio);
    if (sk_X509_num(sk) == 0 || (e && !clean_end)) {
        if (sk_X509_num(sk) == 0 && clean_end) {
            ERR_clear_error();
            sc_tls_set_err(err, errlen, "%s %s: no PEM certificate found", b->label, b->src);
        } else {
            sc_tls_set_ossl_err(err, errlen, "%s %s: certificate %d is not valid PEM", b->label, b->src,
                                sk_X509_num(sk) + 1);
        }
        sk_X509_pop_free(sk, X509_free);
        return NULL;
    }
    ERR_clear_error();
    return sk;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    SC_UNUSED(buf), SC_UNUSED(size), SC_UNUSED(rwflag), SC_UNUSED(u);
    return -1;
}

static EVP_PKEY *parse_key(const sc_tls_blob *b, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(b->data, (int)b->len);
    if (!bio) {
        sc_tls_set_err(err, errlen, "%s %s: out of memory", b->label, b->src);
        return NULL;
    }
    ERR_clear_error();
    EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (!k) {
        bool encrypted = strstr(b->data, "ENCRYPTED") != NULL;
        sc_tls_set_ossl_err(err, errlen, "%s %s: %s", b->label, b->src,
                            encrypted ? "encrypted private keys are not supported"
                                      : "no valid PEM private key");
        return NULL;
    }
    return k;
}

void sc_tls_digest_blobs(const sc_tls_blob *const *bs, size_t n, unsigned char out[32])
{
    memset(out, 0, 32);
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md)
        return;
    unsigned int ol = 0;
    if (EVP_DigestInit_ex(md, EVP_sha256(), NULL)) {
        for (size_t i = 0; i < n; i++) {
            uint64_t l = bs[i]->data ? bs[i]->len : UINT64_MAX;
            EVP_DigestUpdate(md, &l, sizeof(l));
            if (bs[i]->data)
                EVP_DigestUpdate(md, bs[i]->data, bs[i]->len);
        }
        EVP_DigestFinal_ex(md, out, &ol);
    }
    EVP_MD_CTX_free(md);
}

/* ---- contexts ---- */

/* Builds the context from loaded blobs; digest computed by the caller. */
sc_tls_ctx *sc_tls_build_ctx(const sc_tls_ctx_opts *o, const sc_tls_blob *cert, const sc_tls_blob *key,
                             const sc_tls_blob *ca, char *err, size_t errlen)
{
    bool server = o->role == SC_TLS_ROLE_SERVER;
    STACK_OF(X509) *chain = NULL, *roots = NULL;
    EVP_PKEY *pkey = NULL;
    X509_STORE *store = NULL;
    STACK_OF(X509_NAME) *names = NULL;
    sc_tls_ctx *ctx = NULL;

    if (!sc_tls_indexes_ready()) {
        sc_tls_set_err(err, errlen, "tls: cannot register OpenSSL ex_data indexes");
        return NULL;
    }
    if (server && (!cert->data || !key->data)) {
        sc_tls_set_err(err, errlen, "tls: a server needs tls.cert and tls.key");
        return NULL;
    }
    if (!!cert->data != !!key->data) {
        sc_tls_set_err(err, errlen, cert->data ? "tls: tls.cert needs tls.key" : "tls: tls.key needs tls.cert");
        return NULL;
    }
    if (server && o->require_client_cert && !ca->data) {
        sc_tls_set_err(err, errlen, "tls: requiring client certificates needs tls.ca to verify them");
        return NULL;
    }

    SSL_CTX *sctx = SSL_CTX_new(TLS_method());
    if (!sctx) {
        sc_tls_set_ossl_err(err, errlen, "tls: cannot create SSL_CTX");
        return NULL;
    }
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx || !SSL_CTX_set_ex_data(sctx, sc_tls_ctx_idx, ctx)) {
        free(ctx);
        SSL_CTX_free(sctx);
        sc_tls_set_err(err, errlen, "tls: out of memory");
        return NULL;
    }
    /* From here on SSL_CTX_free(sctx) also frees ctx. */
    ctx->ssl = sctx;
    ctx->role = o->role;
    ctx->gen = atomic_fetch_add(&next_gen, 1);

    if (!SSL_CTX_set_min_proto_version(sctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(sctx, TLS1_3_VERSION))
        goto ossl_fail;
    SSL_CTX_set_options(sctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                  SSL_OP_NO_SESSION_RESUMPTION_ON_RENEGOTIATION |
                                  (server ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
    SSL_CTX_clear_options(sctx, SSL_OP_NO_TICKET);
    /* Read whole socket buffers, not a 5-byte header and then the record:
     * half the read(2) calls on request/response traffic. */
    SSL_CTX_set_read_ahead(sctx, 1);
    /* NO_AUTO_CHAIN: send the configured chain only, never the root (the peer
     * has it, and every extra certificate costs it a parse). */
    SSL_CTX_set_mode(sctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                               SSL_MODE_RELEASE_BUFFERS | SSL_MODE_NO_AUTO_CHAIN);
    /* AEADs with forward secrecy only; AES-128-GCM first (fastest with AES-NI). */
    if (!SSL_CTX_set_cipher_list(sctx, "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                       "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
                                       "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384") ||
        !SSL_CTX_set_ciphersuites(sctx, "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:"
                                        "TLS_AES_256_GCM_SHA384") ||
        !SSL_CTX_set1_groups_list(sctx, "X25519:P-256:P-384"))
        goto ossl_fail;

    if (cert->data) {
        chain = parse_certs(cert, err, errlen);
        if (!chain)
            goto fail;
        pkey = parse_key(key, err, errlen);
        if (!pkey)
            goto fail;
        X509 *leaf = sk_X509_value(chain, 0);
        if (!X509_check_private_key(leaf, pkey)) {
            ERR_clear_error();
            sc_tls_set_err(err, errlen, "%s %s: does not match the certificate in %s %s", key->label,
                           key->src, cert->label, cert->src);
            goto fail;
        }
        if (!SSL_CTX_use_certificate(sctx, leaf) || !SSL_CTX_use_PrivateKey(sctx, pkey)) {
            sc_tls_set_ossl_err(err, errlen, "%s %s: unusable certificate or key", cert->label,
                                cert->src);
            goto fail;
        }
        for (int i = 1; i < sk_X509_num(chain); i++)
            if (!SSL_CTX_add1_chain_cert(sctx, sk_X509_value(chain, i))) {
                sc_tls_set_ossl_err(err, errlen, "%s %s: cannot use intermediate %d", cert->label,
                                    cert->src, i);
                goto fail;
            }
        if (!SSL_CTX_check_private_key(sctx)) {
            sc_tls_set_ossl_err(err, errlen, "%s %s: does not match %s %s", key->label, key->src,
                                cert->label, cert->src);
            goto fail;
        }
        sc_tls_cert_info_get(leaf, &ctx->cert);
        ctx->has_cert = true;
    }

    if (ca->data) {
        roots = parse_certs(ca, err, errlen);
        if (!roots)
            goto fail;
        store = X509_STORE_new();
        names = server ? sk_X509_NAME_new_null() : NULL;
        ctx->n_roots = (size_t)sk_X509_num(roots);
        ctx->roots = calloc(ctx->n_roots, sizeof(*ctx->roots));
        if (!store || (server && !names) || !ctx->roots) {
            sc_tls_set_err(err, errlen, "tls: out of memory");
            goto fail;
        }
        for (int i = 0; i < sk_X509_num(roots); i++) {
            X509 *r = sk_X509_value(roots, i);
            if (!X509_STORE_add_cert(store, r)) {
                sc_tls_set_ossl_err(err, errlen, "%s %s: cannot add certificate %d", ca->label,
                                    ca->src, i + 1);
                goto fail;
            }
            sc_tls_cert_info_get(r, &ctx->roots[i]);
            if (names) {
                X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(r));
                if (!nm || !sk_X509_NAME_push(names, nm)) {
                    X509_NAME_free(nm);
                    sc_tls_set_err(err, errlen, "tls: out of memory");
                    goto fail;
                }
            }
        }
        SSL_CTX_set_cert_store(sctx, store);   /* takes ownership */
        store = NULL;
        if (names) {
            SSL_CTX_set_client_CA_list(sctx, names);   /* takes ownership */
            names = NULL;
        }
    } else if (!server) {
        if (!SSL_CTX_set_default_verify_paths(sctx))
            goto ossl_fail;
    }

    if (server) {
        if (ca->data)
            SSL_CTX_set_verify(sctx,
                               SSL_VERIFY_PEER |
                                   (o->require_client_cert ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                               sc_tls_verify_cb);
        else
            SSL_CTX_set_verify(sctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_alpn_select_cb(sctx, sc_tls_alpn_select_cb, NULL);
        /* Sessions (they carry the verified client certificate) stay in this
         * context's cache and TLS 1.3 tickets are references into it
         * (stateful), so a resumption neither decrypts a ticket nor re-parses
         * the client certificate in it: measured with OpenSSL 3.0, server CPU
         * per resumed handshake 0.49 ms stateful against 1.15 ms stateless
         * (whose certificate decoding also made full handshakes 0.27 ms
         * dearer). A reload (new context) never resumes older material. */
        SSL_CTX_set_options(sctx, SSL_OP_NO_TICKET);
        SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_AUTO_CLEAR);
        SSL_CTX_sess_set_cache_size(sctx, SERVER_SESSION_CACHE);
        SSL_CTX_set_num_tickets(sctx, 1);
        SSL_CTX_sess_set_new_cb(sctx, sc_tls_server_new_session_cb);
        unsigned char sid[32];
        sc_tls_digest_blobs((const sc_tls_blob *[]){cert, ca}, 2, sid);
        if (!SSL_CTX_set_session_id_context(sctx, sid, sizeof(sid)))
            goto ossl_fail;
    } else {
        SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER, sc_tls_verify_cb);
        SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_CLIENT |
                                                 SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(sctx, sc_tls_client_new_session_cb);
    }
    SSL_CTX_set_verify_depth(sctx, 8);

    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(roots, X509_free);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return ctx;

ossl_fail:
    sc_tls_set_ossl_err(err, errlen, "tls: cannot configure the TLS context");
fail:
    sk_X509_NAME_pop_free(names, X509_NAME_free);
    X509_STORE_free(store);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(roots, X509_free);
    EVP_PKEY_free(pkey);
    SSL_CTX_free(sctx);   /* frees ctx */
    ERR_clear_error();
    return NULL;
}

/* Loads the blobs of o (files read once, so what is checked is what is used). */
int sc_tls_load_blobs(const sc_tls_ctx_opts *o, sc_tls_blob *cert, sc_tls_blob *key, sc_tls_blob *ca,
                      char *err, size_t errlen)
{
    int rc;
    memset(cert, 0, sizeof(*cert));
    memset(key, 0, sizeof(*key));
    memset(ca, 0, sizeof(*ca));
    if ((rc = get_blob(o->cert_pem, o->cert_file, "tls.cert", cert, err, errlen)) < 0 ||
        (rc = get_blob(o->key_pem, o->key_file, "tls.key", key, err, errlen)) < 0 ||
        (rc = get_blob(o->ca_pem, o->ca_file, "tls.ca", ca, err, errlen)) < 0) {
        sc_tls_blob_free(cert);
        sc_tls_blob_free(key);
        sc_tls_blob_free(ca);
        return rc;
    }
    return 0;
}

sc_tls_ctx *sc_tls_ctx_new(const sc_tls_ctx_opts *o, char *err, size_t errlen)
{
    sc_tls_blob cert, key, ca;
    if (!o) {
        sc_tls_set_err(err, errlen, "tls: no options");
        return NULL;
    }
    if (sc_tls_load_blobs(o, &cert, &key, &ca, err, errlen) < 0)
        return NULL;
    sc_tls_ctx *ctx = sc_tls_build_ctx(o, &cert, &key, &ca, err, errlen);
    if (ctx)
        sc_tls_digest_blobs((const sc_tls_blob *[]){&cert, &key, &ca}, 3, ctx->digest);
    sc_tls_blob_free(&cert);
    sc_tls_blob_free(&key);
    sc_tls_blob_free(&ca);
    return ctx;
}

sc_tls_ctx *sc_tls_ctx_new_server(const char *cert_file, const char *key_file,
                                  const char *ca_file, bool require_client_cert, char *err,
                                  size_t errlen)
{
    sc_tls_ctx_opts o = {.role = SC_TLS_ROLE_SERVER, .cert_file = cert_file,
                         .key_file = key_file, .ca_file = ca_file,
                         .require_client_cert = require_client_cert};
    return sc_tls_ctx_new(&o, err, errlen);
}

sc_tls_ctx *sc_tls_ctx_new_client(const char *cert_file, const char *key_file,
                                  const char *ca_file, char *err, size_t errlen)
{
    sc_tls_ctx_opts o = {.role = SC_TLS_ROLE_CLIENT, .cert_file = cert_file,
                         .key_file = key_file, .ca_file = ca_file};
    return sc_tls_ctx_new(&o, err, errlen);
}

sc_tls_ctx *sc_tls_ctx_ref(sc_tls_ctx *ctx)
{
    if (ctx)
        SSL_CTX_up_ref(ctx->ssl);
    return ctx;
}

void sc_tls_ctx_unref(sc_tls_ctx *ctx)
{
    if (ctx)
        SSL_CTX_free(ctx->ssl);   /* the last reference frees ctx (ctx_exfree) */
}

sc_tls_role sc_tls_ctx_role(const sc_tls_ctx *ctx) { return ctx->role; }
SSL_CTX *sc_tls_ctx_ssl_ctx(sc_tls_ctx *ctx) { return ctx->ssl; }
uint64_t sc_tls_ctx_generation(const sc_tls_ctx *ctx) { return ctx->gen; }

void sc_tls_ctx_flush_sessions(sc_tls_ctx *ctx, time_t now)
{
    if (ctx && ctx->role == SC_TLS_ROLE_SERVER)
        SSL_CTX_flush_sessions(ctx->ssl, (long)now);
}

const sc_tls_cert_info *sc_tls_ctx_cert(const sc_tls_ctx *ctx)
{
    return ctx->has_cert ? &ctx->cert : NULL;
}

size_t sc_tls_ctx_n_roots(const sc_tls_ctx *ctx) { return ctx->n_roots; }

const sc_tls_cert_info *sc_tls_ctx_root(const sc_tls_ctx *ctx, size_t i)
{
    return i < ctx->n_roots ? &ctx->roots[i] : NULL;
}

/* ---- certificates from PEM, outside a context ---- */

int sc_tls_cert_info_file(const char *path, sc_tls_cert_info *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    sc_tls_blob b;
    int rc = read_file(path, "certificate", &b, err, errlen);
    if (rc < 0)
        return rc;
    STACK_OF(X509) *sk = parse_certs(&b, err, errlen);
    sc_tls_blob_free(&b);
    if (!sk)
        return -EINVAL;
    sc_tls_cert_info_get(sk_X509_value(sk, 0), out);
    sk_X509_pop_free(sk, X509_free);
    return 0;
}

int sc_tls_chain_verify_pem(const char *cert_pem, const char *ca_pem, int64_t now, char *err,
                            size_t errlen)
{
    if (!cert_pem || !ca_pem) {
        sc_tls_set_err(err, errlen, "tls: %s", cert_pem ? "no roots to verify against" : "no certificate");
        return -EINVAL;
    }
    sc_tls_blob cb, ab;
    int rc = get_blob(cert_pem, NULL, "certificate", &cb, err, errlen);
    if (rc < 0)
        return rc;
    rc = get_blob(ca_pem, NULL, "roots", &ab, err, errlen);
    if (rc < 0) {
        sc_tls_blob_free(&cb);
        return rc;
    }
    STACK_OF(X509) *chain = parse_certs(&cb, err, errlen);
    STACK_OF(X509) *roots = chain ? parse_certs(&ab, err, errlen) : NULL;
    X509_STORE *store = NULL;
    X509_STORE_CTX *xs = NULL;
    if (!chain || !roots) {
        rc = -EINVAL;
        goto out;
    }
    store = X509_STORE_new();
    xs = X509_STORE_CTX_new();
    rc = -ENOMEM;
    if (!store || !xs) {
        sc_tls_set_err(err, errlen, "tls: out of memory");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(roots); i++)
        if (!X509_STORE_add_cert(store, sk_X509_value(roots, i))) {
            sc_tls_set_ossl_err(err, errlen, "roots (memory): cannot add certificate %d", i + 1);
            goto out;
        }
    /* the whole chain as untrusted: OpenSSL skips the leaf when it looks for issuers */
    if (!X509_STORE_CTX_init(xs, store, sk_X509_value(chain, 0), chain)) {
        sc_tls_set_ossl_err(err, errlen, "tls: cannot set up the verification");
        goto out;
    }
    X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(xs);
    X509_VERIFY_PARAM_set_depth(vp, 8);     /* as SSL_CTX_set_verify_depth in sc_tls_build_ctx */
    X509_VERIFY_PARAM_set_time(vp, (time_t)(now ? now : (int64_t)time(NULL)));
    if (X509_verify_cert(xs) == 1) {
        rc = 0;
        goto out;
    }
    if (err && errlen)
        sc_tls_verify_error_text(xs, err, errlen);
    rc = -EPERM;
out:
    X509_STORE_CTX_free(xs);
    X509_STORE_free(store);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(roots, X509_free);
    sc_tls_blob_free(&cb);
    sc_tls_blob_free(&ab);
    ERR_clear_error();
    return rc;
}

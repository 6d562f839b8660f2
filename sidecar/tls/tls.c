/*
 * tls.c: see tls.h.
 *
 * Lifetimes: an sc_tls_ctx lives in its SSL_CTX's ex_data and is freed by
 * the SSL_CTX's ex_data free callback, so its refcount is OpenSSL's own: an
 * SSL keeps the context (and our data its callbacks read) alive by itself.
 * Per-connection data (expected server identity, session-cache key, the
 * failure text) hangs off the SSL the same way and is allocated only for
 * client connections that need it and for connections that failed: a server
 * handshake that succeeds allocates nothing here.
 */
#include "tls/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MATERIAL_MAX (1u << 20)         /* a PEM file larger than 1 MiB is a mistake */
#define SERVER_SESSION_CACHE 10000      /* sessions (each holds the client's certificate); oldest evicted */
#define SESSIONS_PER_KEY 4
#define CONN_ERR_LEN (2 * SC_TLS_ID_MAX + 128)   /* two identities fit */

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

typedef struct conn_state {
    sc_tls_session_cache *cache;
    const char *expected;               /* points into tail, or NULL */
    const char *key;                    /* points into tail, or NULL */
    bool refused;                       /* our verification refused the peer */
    bool bad;                           /* a TLS failure: do not resume this session */
    char err[CONN_ERR_LEN];
    char tail[];
} conn_state;

static int ctx_idx = -1, conn_idx = -1;
static pthread_once_t idx_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t next_gen = 1;

/* ---- small helpers ---- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

size_t sc_tls_last_error(char *buf, size_t len)
{
    size_t off = 0;
    unsigned long e;
    if (buf && len)
        buf[0] = 0;
    while ((e = ERR_get_error()) != 0) {
        if (!buf || off + 1 >= len)
            continue;               /* keep draining */
        const char *lib = ERR_lib_error_string(e);
        const char *reason = ERR_reason_error_string(e);
        int n;
        if (reason)
            n = snprintf(buf + off, len - off, "%s%s%s%s", off ? "; " : "", lib ? lib : "",
                         lib ? ": " : "", reason);
        else
            n = snprintf(buf + off, len - off, "%serror:%08lX", off ? "; " : "", e);
        if (n > 0)
            off = SC_MIN(len - 1, off + (size_t)n);
    }
    return off;
}

/* "what: <openssl reason>" into err, clearing the queue. */
static void set_ossl_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_ossl_err(char *err, size_t errlen, const char *fmt, ...)
{
    char head[384], q[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof(head), fmt, ap);
    va_end(ap);
    if (sc_tls_last_error(q, sizeof(q)))
        set_err(err, errlen, "%s (%s)", head, q);
    else
        set_err(err, errlen, "%s", head);
}

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
    ctx_idx = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, ctx_exfree);
    conn_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, conn_exfree);
}

static bool indexes_ready(void)
{
    pthread_once(&idx_once, idx_init);
    return ctx_idx >= 0 && conn_idx >= 0;
}

static sc_tls_ctx *ctx_of(const SSL *ssl)
{
    return SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ctx_idx);
}

static conn_state *conn_get(const SSL *ssl)
{
    return SSL_get_ex_data(ssl, conn_idx);
}

/* Allocates the state when missing (extra bytes for strings on creation only). */
static conn_state *conn_make(SSL *ssl, size_t extra)
{
    conn_state *cs = conn_get(ssl);
    if (cs)
        return cs;
    cs = calloc(1, sizeof(*cs) + extra);
    if (!cs)
        return NULL;
    if (!SSL_set_ex_data(ssl, conn_idx, cs)) {
        free(cs);
        return NULL;
    }
    return cs;
}

static void conn_set_err(SSL *ssl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_set_err(SSL *ssl, const char *fmt, ...)
{
    conn_state *cs = conn_make(ssl, 0);
    if (!cs)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cs->err, sizeof(cs->err), fmt, ap);
    va_end(ap);
}

const char *sc_tls_conn_error(const SSL *ssl)
{
    const conn_state *cs = ssl ? conn_get(ssl) : NULL;
    return cs ? cs->err : "";
}

static void name_oneline(const X509_NAME *name, char *out, size_t len)
{
    out[0] = 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return;
    if (X509_NAME_print_ex(b, name, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        if (n > 0) {
            size_t k = SC_MIN((size_t)n, len - 1);
            memcpy(out, p, k);
            out[k] = 0;
        }
    }
    BIO_free(b);
}

/* ---- identities ---- */

int sc_tls_cert_identity(X509 *cert, char *out, size_t len)
{
    if (!cert)
        return -ENOENT;
    int crit = 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    if (!gens) {
        ERR_clear_error();
        return crit == -2 ? -EPROTO : -ENOENT;  /* -2: the extension appears twice */
    }
    const ASN1_IA5STRING *uri = NULL;
    int n_uri = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        if (g->type == GEN_URI) {
            uri = g->d.uniformResourceIdentifier;
            n_uri++;
        }
    }
    int rc;
    if (n_uri == 0)
        rc = -ENOENT;
    else if (n_uri > 1)
        rc = -EPROTO;   /* an X.509-SVID has exactly one: refuse to guess */
    else {
        const unsigned char *d = ASN1_STRING_get0_data(uri);
        int dl = ASN1_STRING_length(uri);
        if (dl <= 0 || memchr(d, 0, (size_t)dl))
            rc = -EPROTO;
        else if ((size_t)dl >= len || dl >= SC_TLS_ID_MAX)
            rc = -ENOSPC;
        else {
            memcpy(out, d, (size_t)dl);
            out[dl] = 0;
            rc = dl;
        }
    }
    GENERAL_NAMES_free(gens);
    return rc;
}

int sc_tls_peer_identity(const SSL *ssl, char *out, size_t len)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert)
        return -ENOENT;
    if (!SSL_is_init_finished(ssl) || SSL_get_verify_result(ssl) != X509_V_OK)
        return -EPERM;
    return sc_tls_cert_identity(cert, out, len);
}

int sc_tls_serial_colon_hex(const unsigned char *be, size_t n, char *out, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    while (n && be[0] == 0) {
        be++;
        n--;
    }
    size_t need = n ? n * 3 : 1;
    if (cap < need)
        return -ENOSPC;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (i)
            out[k++] = ':';
        out[k++] = digits[be[i] >> 4];
        out[k++] = digits[be[i] & 15];
    }
    out[k] = 0;
    return (int)k;
}

int sc_tls_peer_serial(const SSL *ssl, char *out, size_t cap)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert)
        return -ENOENT;
    const ASN1_INTEGER *sn = X509_get0_serialNumber(cert);
    if (!sn)
        return -ENOENT;
    /* the content octets are the magnitude, big-endian (the sign is in the type) */
    return sc_tls_serial_colon_hex(ASN1_STRING_get0_data(sn), (size_t)ASN1_STRING_length(sn), out, cap);
}

/* ---- certificate facts ---- */

static void asn1_time_out(const ASN1_TIME *t, int64_t *unix_out, char *iso, size_t isolen)
{
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    *unix_out = 0;
    iso[0] = 0;
    if (!t || !ASN1_TIME_to_tm(t, &tm))
        return;
    *unix_out = (int64_t)timegm(&tm);
    strftime(iso, isolen, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int sc_tls_cert_info_get(X509 *cert, sc_tls_cert_info *out)
{
    memset(out, 0, sizeof(*out));
    if (!cert)
        return -EINVAL;
    name_oneline(X509_get_subject_name(cert), out->subject, sizeof(out->subject));
    name_oneline(X509_get_issuer_name(cert), out->issuer, sizeof(out->issuer));
    if (sc_tls_cert_identity(cert, out->identity, sizeof(out->identity)) < 0)
        out->identity[0] = 0;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex) {
        size_t i = 0;
        for (const char *h = hex; *h && i + 1 < sizeof(out->serial); h++)
            out->serial[i++] = (char)(*h >= 'A' && *h <= 'F' ? *h - 'A' + 'a' : *h);
        out->serial[i] = 0;
    }
    OPENSSL_free(hex);
    BN_free(bn);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (X509_digest(cert, EVP_sha256(), md, &mdlen) && mdlen == 32)
        for (unsigned i = 0; i < 32; i++)
            snprintf(out->sha256 + 2 * i, 3, "%02x", md[i]);
    asn1_time_out(X509_get0_notBefore(cert), &out->not_before, out->not_before_iso,
                  sizeof(out->not_before_iso));
    asn1_time_out(X509_get0_notAfter(cert), &out->not_after, out->not_after_iso,
                  sizeof(out->not_after_iso));
    out->is_ca = X509_check_ca(cert) > 0;
    ERR_clear_error();
    return 0;
}

int sc_tls_peer_cert_info(const SSL *ssl, sc_tls_cert_info *out)
{
    X509 *cert = SSL_get0_peer_certificate(ssl);
    if (!cert) {
        memset(out, 0, sizeof(*out));
        return -ENOENT;
    }
    return sc_tls_cert_info_get(cert, out);
}

int64_t sc_tls_cert_days_until_expiry(const sc_tls_cert_info *ci, int64_t now)
{
    int64_t d = ci->not_after - now;
    return d >= 0 ? d / 86400 : -((-d + 86399) / 86400);   /* floor */
}

sc_tls_cert_state sc_tls_cert_check(const sc_tls_cert_info *ci, int64_t now, int64_t warn_days)
{
    if (now < ci->not_before)
        return SC_TLS_CERT_NOT_YET_VALID;
    if (now >= ci->not_after)
        return SC_TLS_CERT_EXPIRED;
    if (warn_days > 0 && ci->not_after - now <= warn_days * 86400)
        return SC_TLS_CERT_EXPIRING;
    return SC_TLS_CERT_VALID;
}

const char *sc_tls_cert_state_name(sc_tls_cert_state s)
{
    switch (s) {
    case SC_TLS_CERT_VALID: return "valid";
    case SC_TLS_CERT_EXPIRING: return "expiring";
    case SC_TLS_CERT_EXPIRED: return "expired";
    case SC_TLS_CERT_NOT_YET_VALID: return "not-yet-valid";
    }
    return "?";
}

/* ---- material ---- */

typedef struct file_id {
    bool present;
    int err;                        /* errno of stat, when !present */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim, ctim;
} file_id;

static bool file_id_eq(const file_id *a, const file_id *b)
{
    if (a->present != b->present)
        return false;
    if (!a->present)
        return a->err == b->err;
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec &&
           a->ctim.tv_sec == b->ctim.tv_sec && a->ctim.tv_nsec == b->ctim.tv_nsec;
}

static void file_id_of(const char *path, file_id *id)
{
    memset(id, 0, sizeof(*id));
    if (!path)
        return;
    struct stat st;
    if (stat(path, &st) < 0) {
        id->err = errno;
        return;
    }
    id->present = true;
    id->dev = st.st_dev;
    id->ino = st.st_ino;
    id->size = st.st_size;
    id->mtim = st.st_mtim;
    id->ctim = st.st_ctim;
}

typedef struct blob {
    char *data;                     /* owned when `owned` */
    size_t len;
    bool owned;
    const char *label;              /* "tls.cert" */
    const char *src;                /* path or "(memory)" */
} blob;

static void blob_free(blob *b)
{
    if (b->owned)
        OPENSSL_clear_free(b->data, b->len);   /* may be a key */
    memset(b, 0, sizeof(*b));
}

static int read_file(const char *path, const char *label, blob *b, char *err, size_t errlen)
{
    memset(b, 0, sizeof(*b));
    b->label = label;
    b->src = path;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        set_err(err, errlen, "%s %s: cannot open: %s", label, path, strerror(e));
        return -e;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = errno;
        close(fd);
        set_err(err, errlen, "%s %s: cannot stat: %s", label, path, strerror(e));
        return -e;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > (off_t)MATERIAL_MAX) {
        close(fd);
        set_err(err, errlen, "%s %s: not a regular file of at most %u bytes", label, path,
                MATERIAL_MAX);
        return -EINVAL;
    }
    size_t cap = (size_t)st.st_size + 1, len = 0;
    char *buf = OPENSSL_malloc(cap);
    if (!buf) {
        close(fd);
        set_err(err, errlen, "%s %s: out of memory", label, path);
        return -ENOMEM;
    }
    for (;;) {
        if (len + 1 >= cap) {   /* the file grew while we read it */
            if (cap > MATERIAL_MAX) {
                OPENSSL_clear_free(buf, cap);
                close(fd);
                set_err(err, errlen, "%s %s: larger than %u bytes", label, path, MATERIAL_MAX);
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
            set_err(err, errlen, "%s %s: cannot read: %s", label, path, strerror(e));
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
static int get_blob(const char *pem, const char *file, const char *label, blob *b, char *err,
                    size_t errlen)
{
    memset(b, 0, sizeof(*b));
    b->label = label;
    if (pem) {
        b->data = (char *)pem;
        b->len = strlen(pem);
        b->src = "(memory)";
        if (b->len > MATERIAL_MAX) {
            set_err(err, errlen, "%s (memory): larger than %u bytes", label, MATERIAL_MAX);
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
static STACK_OF(X509) *parse_certs(const blob *b, char *err, size_t errlen)
{
    STACK_OF(X509) *sk = sk_X509_new_null();
    BIO *bio = BIO_new_mem_buf(b->data, (int)b->len);
    if (!sk || !bio) {
        sk_X509_free(sk);
        BIO_free(bio);
        set_err(err, errlen, "%s %s: out of memory", b->label, b->src);
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
            set_err(err, errlen, "%s %s: no PEM certificate found", b->label, b->src);
        } else {
            set_ossl_err(err, errlen, "%s %s: certificate %d is not valid PEM", b->label, b->src,
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

static EVP_PKEY *parse_key(const blob *b, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(b->data, (int)b->len);
    if (!bio) {
        set_err(err, errlen, "%s %s: out of memory", b->label, b->src);
        return NULL;
    }
    ERR_clear_error();
    EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
    BIO_free(bio);
    if (!k) {
        bool encrypted = strstr(b->data, "ENCRYPTED") != NULL;
        set_ossl_err(err, errlen, "%s %s: %s", b->label, b->src,
                     encrypted ? "encrypted private keys are not supported"
                               : "no valid PEM private key");
        return NULL;
    }
    return k;
}

static void digest_blobs(const blob *const *bs, size_t n, unsigned char out[32])
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

/* ---- SSL_CTX callbacks ---- */

/* Why verification failed at x's current certificate: "<reason> (depth N, <subject>)". */
static void verify_error_text(X509_STORE_CTX *x, char *out, size_t cap)
{
    X509 *cert = X509_STORE_CTX_get_current_cert(x);
    char subj[160] = "";
    if (cert)
        name_oneline(X509_get_subject_name(cert), subj, sizeof(subj));
    snprintf(out, cap, "%s (depth %d, %s)", X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)),
             X509_STORE_CTX_get_error_depth(x), subj[0] ? subj : "no subject");
}

static int verify_cb(int ok, X509_STORE_CTX *x)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    if (!ssl)
        return ok;
    int depth = X509_STORE_CTX_get_error_depth(x);
    X509 *cert = X509_STORE_CTX_get_current_cert(x);
    if (!ok) {
        conn_state *cs = conn_make(ssl, 0);
        if (cs && !cs->refused) {
            char why[300];
            verify_error_text(x, why, sizeof(why));
            snprintf(cs->err, sizeof(cs->err), "%s certificate verify failed: %s",
                     SSL_is_server(ssl) ? "client" : "server", why);
            cs->refused = true;
        }
        return 0;
    }
    if (depth == 0) {
        conn_state *cs = conn_get(ssl);
        if (cs && cs->expected) {
            char id[SC_TLS_ID_MAX];
            int n = sc_tls_cert_identity(cert, id, sizeof(id));
            if (n < 0 || strcmp(id, cs->expected) != 0) {
                snprintf(cs->err, sizeof(cs->err),
                         "server identity %s is not the expected %s",
                         n >= 0 ? id : n == -ENOENT ? "(none: no URI SAN)" : "(unusable URI SAN)",
                         cs->expected);
                cs->refused = true;
                X509_STORE_CTX_set_error(x, X509_V_ERR_APPLICATION_VERIFICATION);
                return 0;
            }
        }
    }
    return 1;
}

static int alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                          const unsigned char *in, unsigned int inlen, void *arg)
{
    SC_UNUSED(ssl), SC_UNUSED(arg);
    const unsigned char *http1 = NULL;
    for (unsigned int i = 0; i < inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen)
            break;
        const unsigned char *p = in + i + 1;
        if (l == 2 && memcmp(p, "h2", 2) == 0) {
            *out = p;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        if (l == 8 && memcmp(p, "http/1.1", 8) == 0)
            http1 = p;
        i += 1 + l;
    }
    if (http1) {
        *out = http1;
        *outlen = 8;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static void session_cache_put(sc_tls_session_cache *c, const char *key, uint64_t gen,
                              SSL_SESSION *s);

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    conn_state *cs = conn_get(ssl);
    sc_tls_ctx *ctx = ctx_of(ssl);
    if (!cs || !cs->cache || !cs->key || !ctx)
        return 0;
    session_cache_put(cs->cache, cs->key, ctx->gen, sess);
    return 1;   /* the cache owns the reference */
}

/* ---- contexts ---- */

static bool opts_has_files_only(const sc_tls_ctx_opts *o)
{
    return !o->cert_pem && !o->key_pem && !o->ca_pem;
}

/* Builds the context from loaded blobs; digest computed by the caller. */
static sc_tls_ctx *build_ctx(const sc_tls_ctx_opts *o, const blob *cert, const blob *key,
                             const blob *ca, char *err, size_t errlen)
{
    bool server = o->role == SC_TLS_ROLE_SERVER;
    STACK_OF(X509) *chain = NULL, *roots = NULL;
    EVP_PKEY *pkey = NULL;
    X509_STORE *store = NULL;
    STACK_OF(X509_NAME) *names = NULL;
    sc_tls_ctx *ctx = NULL;

    if (!indexes_ready()) {
        set_err(err, errlen, "tls: cannot register OpenSSL ex_data indexes");
        return NULL;
    }
    if (server && (!cert->data || !key->data)) {
        set_err(err, errlen, "tls: a server needs tls.cert and tls.key");
        return NULL;
    }
    if (!!cert->data != !!key->data) {
        set_err(err, errlen, cert->data ? "tls: tls.cert needs tls.key" : "tls: tls.key needs tls.cert");
        return NULL;
    }
    if (server && o->require_client_cert && !ca->data) {
        set_err(err, errlen, "tls: requiring client certificates needs tls.ca to verify them");
        return NULL;
    }

    SSL_CTX *sctx = SSL_CTX_new(TLS_method());
    if (!sctx) {
        set_ossl_err(err, errlen, "tls: cannot create SSL_CTX");
        return NULL;
    }
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx || !SSL_CTX_set_ex_data(sctx, ctx_idx, ctx)) {
        free(ctx);
        SSL_CTX_free(sctx);
        set_err(err, errlen, "tls: out of memory");
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
            set_err(err, errlen, "%s %s: does not match the certificate in %s %s", key->label,
                    key->src, cert->label, cert->src);
            goto fail;
        }
        if (!SSL_CTX_use_certificate(sctx, leaf) || !SSL_CTX_use_PrivateKey(sctx, pkey)) {
            set_ossl_err(err, errlen, "%s %s: unusable certificate or key", cert->label,
                         cert->src);
            goto fail;
        }
        for (int i = 1; i < sk_X509_num(chain); i++)
            if (!SSL_CTX_add1_chain_cert(sctx, sk_X509_value(chain, i))) {
                set_ossl_err(err, errlen, "%s %s: cannot use intermediate %d", cert->label,
                             cert->src, i);
                goto fail;
            }
        if (!SSL_CTX_check_private_key(sctx)) {
            set_ossl_err(err, errlen, "%s %s: does not match %s %s", key->label, key->src,
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
            set_err(err, errlen, "tls: out of memory");
            goto fail;
        }
        for (int i = 0; i < sk_X509_num(roots); i++) {
            X509 *r = sk_X509_value(roots, i);
            if (!X509_STORE_add_cert(store, r)) {
                set_ossl_err(err, errlen, "%s %s: cannot add certificate %d", ca->label,
                             ca->src, i + 1);
                goto fail;
            }
            sc_tls_cert_info_get(r, &ctx->roots[i]);
            if (names) {
                X509_NAME *nm = X509_NAME_dup(X509_get_subject_name(r));
                if (!nm || !sk_X509_NAME_push(names, nm)) {
                    X509_NAME_free(nm);
                    set_err(err, errlen, "tls: out of memory");
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
                               verify_cb);
        else
            SSL_CTX_set_verify(sctx, SSL_VERIFY_NONE, NULL);
        SSL_CTX_set_alpn_select_cb(sctx, alpn_select_cb, NULL);
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
        unsigned char sid[32];
        digest_blobs((const blob *[]){cert, ca}, 2, sid);
        if (!SSL_CTX_set_session_id_context(sctx, sid, sizeof(sid)))
            goto ossl_fail;
    } else {
        SSL_CTX_set_verify(sctx, SSL_VERIFY_PEER, verify_cb);
        SSL_CTX_set_session_cache_mode(sctx, SSL_SESS_CACHE_CLIENT |
                                                 SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(sctx, new_session_cb);
    }
    SSL_CTX_set_verify_depth(sctx, 8);

    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(roots, X509_free);
    EVP_PKEY_free(pkey);
    ERR_clear_error();
    return ctx;

ossl_fail:
    set_ossl_err(err, errlen, "tls: cannot configure the TLS context");
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
static int load_blobs(const sc_tls_ctx_opts *o, blob *cert, blob *key, blob *ca, char *err,
                      size_t errlen)
{
    int rc;
    memset(cert, 0, sizeof(*cert));
    memset(key, 0, sizeof(*key));
    memset(ca, 0, sizeof(*ca));
    if ((rc = get_blob(o->cert_pem, o->cert_file, "tls.cert", cert, err, errlen)) < 0 ||
        (rc = get_blob(o->key_pem, o->key_file, "tls.key", key, err, errlen)) < 0 ||
        (rc = get_blob(o->ca_pem, o->ca_file, "tls.ca", ca, err, errlen)) < 0) {
        blob_free(cert);
        blob_free(key);
        blob_free(ca);
        return rc;
    }
    return 0;
}

sc_tls_ctx *sc_tls_ctx_new(const sc_tls_ctx_opts *o, char *err, size_t errlen)
{
    blob cert, key, ca;
    if (!o) {
        set_err(err, errlen, "tls: no options");
        return NULL;
    }
    if (load_blobs(o, &cert, &key, &ca, err, errlen) < 0)
        return NULL;
    sc_tls_ctx *ctx = build_ctx(o, &cert, &key, &ca, err, errlen);
    if (ctx)
        digest_blobs((const blob *[]){&cert, &key, &ca}, 3, ctx->digest);
    blob_free(&cert);
    blob_free(&key);
    blob_free(&ca);
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

int sc_tls_cert_info_file(const char *path, sc_tls_cert_info *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    blob b;
    int rc = read_file(path, "certificate", &b, err, errlen);
    if (rc < 0)
        return rc;
    STACK_OF(X509) *sk = parse_certs(&b, err, errlen);
    blob_free(&b);
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
        set_err(err, errlen, "tls: %s", cert_pem ? "no roots to verify against" : "no certificate");
        return -EINVAL;
    }
    blob cb, ab;
    int rc = get_blob(cert_pem, NULL, "certificate", &cb, err, errlen);
    if (rc < 0)
        return rc;
    rc = get_blob(ca_pem, NULL, "roots", &ab, err, errlen);
    if (rc < 0) {
        blob_free(&cb);
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
        set_err(err, errlen, "tls: out of memory");
        goto out;
    }
    for (int i = 0; i < sk_X509_num(roots); i++)
        if (!X509_STORE_add_cert(store, sk_X509_value(roots, i))) {
            set_ossl_err(err, errlen, "roots (memory): cannot add certificate %d", i + 1);
            goto out;
        }
    /* the whole chain as untrusted: OpenSSL skips the leaf when it looks for issuers */
    if (!X509_STORE_CTX_init(xs, store, sk_X509_value(chain, 0), chain)) {
        set_ossl_err(err, errlen, "tls: cannot set up the verification");
        goto out;
    }
    X509_VERIFY_PARAM *vp = X509_STORE_CTX_get0_param(xs);
    X509_VERIFY_PARAM_set_depth(vp, 8);     /* as SSL_CTX_set_verify_depth in build_ctx */
    X509_VERIFY_PARAM_set_time(vp, (time_t)(now ? now : (int64_t)time(NULL)));
    if (X509_verify_cert(xs) == 1) {
        rc = 0;
        goto out;
    }
    if (err && errlen)
        verify_error_text(xs, err, errlen);
    rc = -EPERM;
out:
    X509_STORE_CTX_free(xs);
    X509_STORE_free(store);
    sk_X509_pop_free(chain, X509_free);
    sk_X509_pop_free(roots, X509_free);
    blob_free(&cb);
    blob_free(&ab);
    ERR_clear_error();
    return rc;
}

/* ---- client session cache ---- */

typedef struct sess_entry {
    struct sess_entry *hnext;               /* hash chain */
    struct sess_entry *prev, *next;         /* LRU, most recent first */
    uint64_t gen;
    uint32_t hash;
    unsigned n;
    SSL_SESSION *s[SESSIONS_PER_KEY];       /* oldest first */
    char key[];
} sess_entry;

struct sc_tls_session_cache {
    pthread_mutex_t mu;
    sess_entry **buckets;
    size_t nbuckets, nkeys, max_keys, nsessions;
    sess_entry lru;                         /* sentinel */
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

sc_tls_session_cache *sc_tls_session_cache_new(size_t max_keys)
{
    if (max_keys == 0)
        max_keys = 1;
    sc_tls_session_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    size_t nb = 16;
    while (nb < max_keys && nb < ((size_t)1 << 20))
        nb <<= 1;
    c->buckets = calloc(nb, sizeof(*c->buckets));
    if (!c->buckets || pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c->buckets);
        free(c);
        return NULL;
    }
    c->nbuckets = nb;
    c->max_keys = max_keys;
    c->lru.prev = c->lru.next = &c->lru;
    return c;
}

static void entry_clear(sc_tls_session_cache *c, sess_entry *e)
{
    for (unsigned i = 0; i < e->n; i++)
        SSL_SESSION_free(e->s[i]);
    c->nsessions -= e->n;
    e->n = 0;
}

static void lru_unlink(sess_entry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_front(sc_tls_session_cache *c, sess_entry *e)
{
    e->next = c->lru.next;
    e->prev = &c->lru;
    c->lru.next->prev = e;
    c->lru.next = e;
}

static void entry_remove(sc_tls_session_cache *c, sess_entry *e)
{
    sess_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(e);
    entry_clear(c, e);
    c->nkeys--;
    free(e);
}

void sc_tls_session_cache_free(sc_tls_session_cache *c)
{
    if (!c)
        return;
    while (c->lru.next != &c->lru)
        entry_remove(c, c->lru.next);
    pthread_mutex_destroy(&c->mu);
    free(c->buckets);
    free(c);
}

size_t sc_tls_session_cache_count(sc_tls_session_cache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->nsessions;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static sess_entry *entry_find(sc_tls_session_cache *c, const char *key, uint32_t h)
{
    for (sess_entry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static bool session_usable(SSL_SESSION *s, time_t now)
{
    return SSL_SESSION_is_resumable(s) &&
           (time_t)(SSL_SESSION_get_time(s) + SSL_SESSION_get_timeout(s)) > now;
}

/* Takes ownership of s (frees it when it cannot be kept). */
static void session_cache_put(sc_tls_session_cache *c, const char *key, uint64_t gen,
                              SSL_SESSION *s)
{
    uint32_t h = hash_str(key);
    pthread_mutex_lock(&c->mu);
    sess_entry *e = entry_find(c, key, h);
    if (!e) {
        if (c->nkeys >= c->max_keys)
            entry_remove(c, c->lru.prev);
        size_t kl = strlen(key);
        e = calloc(1, sizeof(*e) + kl + 1);
        if (!e) {
            pthread_mutex_unlock(&c->mu);
            SSL_SESSION_free(s);
            return;
        }
        memcpy(e->key, key, kl + 1);
        e->hash = h;
        e->gen = gen;
        e->hnext = c->buckets[h & (c->nbuckets - 1)];
        c->buckets[h & (c->nbuckets - 1)] = e;
        c->nkeys++;
    } else {
        lru_unlink(e);
    }
    lru_front(c, e);
    if (e->gen != gen) {
        if (gen < e->gen) {     /* a connection of an older context: ignore */
            pthread_mutex_unlock(&c->mu);
            SSL_SESSION_free(s);
            return;
        }
        entry_clear(c, e);
        e->gen = gen;
    }
    if (SSL_SESSION_get_protocol_version(s) < TLS1_3_VERSION)
        entry_clear(c, e);      /* TLS 1.2: one reusable session is enough */
    if (e->n == SESSIONS_PER_KEY) {
        SSL_SESSION_free(e->s[0]);
        memmove(e->s, e->s + 1, (SESSIONS_PER_KEY - 1) * sizeof(e->s[0]));
        e->n--;
        c->nsessions--;
    }
    e->s[e->n++] = s;
    c->nsessions++;
    pthread_mutex_unlock(&c->mu);
}

/* A session to offer for key (a reference for the caller), or NULL. */
static SSL_SESSION *session_cache_take(sc_tls_session_cache *c, const char *key, uint64_t gen)
{
    uint32_t h = hash_str(key);
    time_t now = time(NULL);
    SSL_SESSION *out = NULL;
    pthread_mutex_lock(&c->mu);
    sess_entry *e = entry_find(c, key, h);
    if (e && e->gen != gen)
        entry_clear(c, e);
    while (e && e->n && !out) {
        SSL_SESSION *s = e->s[e->n - 1];    /* newest */
        if (!session_usable(s, now)) {
            SSL_SESSION_free(s);
            e->n--;
            c->nsessions--;
            continue;
        }
        if (SSL_SESSION_get_protocol_version(s) >= TLS1_3_VERSION) {
            e->n--;                         /* single use */
            c->nsessions--;
            out = s;
        } else {
            SSL_SESSION_up_ref(s);
            out = s;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return out;
}

/* ---- connections ---- */

SSL *sc_tls_ssl_server(sc_tls_ctx *ctx, int fd, char *err, size_t errlen)
{
    if (!ctx || ctx->role != SC_TLS_ROLE_SERVER) {
        set_err(err, errlen, "tls: not a server context");
        return NULL;
    }
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ssl);
    if (!ssl || (fd >= 0 && !SSL_set_fd(ssl, fd))) {
        set_ossl_err(err, errlen, "tls: cannot create a connection");
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

static bool is_ip_literal(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    if (inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1)
        return true;
    return s[0] == '[';
}

SSL *sc_tls_ssl_client(sc_tls_ctx *ctx, int fd, const sc_tls_client_opts *o, char *err,
                       size_t errlen)
{
    static const sc_tls_client_opts none;
    static const unsigned char alpn_h2[] = "\x02h2", alpn_h1[] = "\x08http/1.1",
                               alpn_both[] = "\x02h2\x08http/1.1";
    if (!ctx || ctx->role != SC_TLS_ROLE_CLIENT) {
        set_err(err, errlen, "tls: not a client context");
        return NULL;
    }
    if (!o)
        o = &none;
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ssl);
    if (!ssl || (fd >= 0 && !SSL_set_fd(ssl, fd)))
        goto fail;
    SSL_set_connect_state(ssl);

    bool use_cache = o->cache && o->session_key && *o->session_key;
    size_t el = o->server_identity ? strlen(o->server_identity) + 1 : 0;
    size_t kl = use_cache ? strlen(o->session_key) + 1 : 0;
    if (el || kl) {
        conn_state *cs = conn_make(ssl, el + kl);
        if (!cs)
            goto fail;
        if (el) {
            memcpy(cs->tail, o->server_identity, el);
            cs->expected = cs->tail;
        }
        if (kl) {
            memcpy(cs->tail + el, o->session_key, kl);
            cs->key = cs->tail + el;
            cs->cache = o->cache;
        }
    }
    if (o->sni && *o->sni && !is_ip_literal(o->sni) && !SSL_set_tlsext_host_name(ssl, o->sni))
        goto fail;
    const unsigned char *alpn = NULL;
    unsigned alen = 0;
    switch (o->alpn) {
    case SC_TLS_ALPN_NONE: break;
    case SC_TLS_ALPN_H2: alpn = alpn_h2; alen = sizeof(alpn_h2) - 1; break;
    case SC_TLS_ALPN_HTTP1: alpn = alpn_h1; alen = sizeof(alpn_h1) - 1; break;
    case SC_TLS_ALPN_H2_HTTP1: alpn = alpn_both; alen = sizeof(alpn_both) - 1; break;
    }
    if (alpn && SSL_set_alpn_protos(ssl, alpn, alen) != 0)   /* 0 = success */
        goto fail;
    if (use_cache) {
        SSL_SESSION *s = session_cache_take(o->cache, o->session_key, ctx->gen);
        if (s) {
            int ok = SSL_set_session(ssl, s);
            SSL_SESSION_free(s);
            if (!ok)
                ERR_clear_error();   /* a full handshake then */
        }
    }
    return ssl;
fail:
    set_ossl_err(err, errlen, "tls: cannot create a connection");
    SSL_free(ssl);
    return NULL;
}

/* Classifies a failed SSL_* call. r is its return, e0 the errno right after it. */
static int io_fail(SSL *ssl, int r, int e0, const char *stage, sc_tls_want *want)
{
    int se = SSL_get_error(ssl, r);
    switch (se) {
    case SSL_ERROR_WANT_READ:
        *want = SC_TLS_WANT_READ;
        return -EAGAIN;
    case SSL_ERROR_WANT_WRITE:
        *want = SC_TLS_WANT_WRITE;
        return -EAGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    default:
        break;
    }
    int rc;
    unsigned long e = ERR_peek_error();
    int lib = ERR_GET_LIB(e), reason = ERR_GET_REASON(e);
    conn_state *cs = conn_get(ssl);
    if (cs && cs->refused) {
        rc = -EACCES;   /* verify_cb wrote the reason */
    } else if (se == SSL_ERROR_SYSCALL && !e) {
        if (e0 && e0 != EAGAIN) {
            conn_set_err(ssl, "%s: %s", stage, strerror(e0));
            rc = -e0;
        } else {
            conn_set_err(ssl, "%s: peer closed the connection", stage);
            rc = -ECONNRESET;
        }
    } else if (lib == ERR_LIB_SSL && reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        conn_set_err(ssl, "%s: peer closed the connection without close_notify", stage);
        rc = -ECONNRESET;
    } else if (lib == ERR_LIB_SSL && reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
        conn_set_err(ssl, "%s: client sent no certificate (one is required)", stage);
        rc = -EACCES;
    } else if (lib == ERR_LIB_SSL && reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        conn_set_err(ssl, "%s: certificate verify failed: %s", stage,
                     X509_verify_cert_error_string(SSL_get_verify_result(ssl)));
        rc = -EACCES;
    } else if (lib == ERR_LIB_SSL && reason >= SSL_AD_REASON_OFFSET &&
               reason < SSL_AD_REASON_OFFSET + 256) {
        const char *rs = ERR_reason_error_string(e);
        conn_set_err(ssl, "%s: peer sent alert: %s", stage, rs ? rs : "unknown");
        rc = -EPROTO;
    } else {
        char q[256];
        size_t n = sc_tls_last_error(q, sizeof(q));
        conn_set_err(ssl, "%s: %s", stage, n ? q : "TLS error");
        rc = -EPROTO;
    }
    ERR_clear_error();
    SSL_set_quiet_shutdown(ssl, 1);     /* never send close_notify after a fatal error */
    if (rc == -EPROTO || rc == -EACCES) {
        cs = conn_make(ssl, 0);
        if (cs)
            cs->bad = true;
    }
    return rc;
}

/* Empties this thread's OpenSSL error queue before an I/O call, as
 * SSL_get_error() needs. Peeking first: ERR_clear_error() walks all 16
 * slots (~800 instructions, twice per proxied request), ERR_peek_error()
 * is a quarter of that, and the queue is almost always empty already
 * because io_fail() clears it after every failure. */
static inline void err_reset(void)
{
    if (ERR_peek_error())
        ERR_clear_error();
}

int sc_tls_handshake(SSL *ssl, sc_tls_want *want)
{
    *want = SC_TLS_WANT_NONE;
    if (SSL_is_init_finished(ssl))
        return 0;
    err_reset();
    errno = 0;
    int r = SSL_do_handshake(ssl);
    int e0 = errno;
    if (r == 1) {
        /* A resumed session skipped verify_cb: check its identity again, the
         * expectation may have changed since the session was made. */
        conn_state *cs = conn_get(ssl);
        if (cs && cs->expected && SSL_session_reused(ssl)) {
            char id[SC_TLS_ID_MAX];
            int n = sc_tls_peer_identity(ssl, id, sizeof(id));
            if (n < 0 || strcmp(id, cs->expected) != 0) {
                snprintf(cs->err, sizeof(cs->err),
                         "server identity %s (resumed session) is not the expected %s",
                         n >= 0 ? id : "(none)", cs->expected);
                cs->refused = true;
                SSL_set_quiet_shutdown(ssl, 1);
                return -EACCES;
            }
        }
        return 0;
    }
    int rc = io_fail(ssl, r, e0, "TLS handshake", want);
    if (rc == 0) {  /* close_notify during the handshake */
        conn_set_err(ssl, "TLS handshake: peer closed the connection");
        rc = -ECONNRESET;
    }
    return rc;
}

ssize_t sc_tls_read(SSL *ssl, void *buf, size_t len, sc_tls_want *want)
{
    *want = SC_TLS_WANT_NONE;
    if (len == 0)
        return -EINVAL;
    size_t n = 0;
    err_reset();
    errno = 0;
    int r = SSL_read_ex(ssl, buf, len, &n);
    int e0 = errno;
    if (r == 1)
        return (ssize_t)n;
    return io_fail(ssl, r, e0, "TLS read", want);
}

ssize_t sc_tls_write(SSL *ssl, const void *buf, size_t len, sc_tls_want *want)
{
    *want = SC_TLS_WANT_NONE;
    if (len == 0)
        return 0;
    size_t n = 0;
    err_reset();
    errno = 0;
    int r = SSL_write_ex(ssl, buf, len, &n);
    int e0 = errno;
    if (r == 1)
        return (ssize_t)n;
    int rc = io_fail(ssl, r, e0, "TLS write", want);
    return rc == 0 ? -EPIPE : rc;   /* the peer closed: writing is over */
}

int sc_tls_shutdown(SSL *ssl, sc_tls_want *want)
{
    *want = SC_TLS_WANT_NONE;
    if (!SSL_is_init_finished(ssl) || SSL_get_quiet_shutdown(ssl))
        return 0;
    err_reset();
    errno = 0;
    int r = SSL_shutdown(ssl);
    int e0 = errno;
    if (r >= 0)
        return 0;
    int rc = io_fail(ssl, r, e0, "TLS shutdown", want);
    if (rc == -EAGAIN && *want == SC_TLS_WANT_READ)
        return 0;   /* close_notify is out; we do not wait for the peer's */
    return rc;
}

void sc_tls_ssl_free(SSL *ssl)
{
    if (!ssl)
        return;
    /* OpenSSL drops from the server's session cache the session of every
     * connection that did not send close_notify, as if it had failed. A
     * connection that merely ended (peer closed, reset, idle timeout) after
     * a good handshake keeps its session resumable. */
    const conn_state *cs = conn_get(ssl);
    if (SSL_is_init_finished(ssl) && !(cs && (cs->bad || cs->refused)))
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(ssl);
}

bool sc_tls_pending(const SSL *ssl)
{
    return SSL_has_pending(ssl) != 0;
}

const char *sc_tls_alpn_selected(const SSL *ssl)
{
    const unsigned char *p = NULL;
    unsigned int l = 0;
    SSL_get0_alpn_selected(ssl, &p, &l);
    if (l == 2 && memcmp(p, "h2", 2) == 0)
        return "h2";
    if (l == 8 && memcmp(p, "http/1.1", 8) == 0)
        return "http/1.1";
    return NULL;
}

bool sc_tls_session_reused(const SSL *ssl)
{
    return SSL_session_reused(ssl) == 1;
}

const char *sc_tls_version(const SSL *ssl)
{
    return SSL_get_version(ssl);
}

/* ---- watched material ---- */

struct sc_tls_watch {
    pthread_mutex_t mu;                 /* guards cur */
    sc_tls_ctx *cur;
    sc_tls_ctx_opts opts;               /* paths point into the strings below */
    char *cert, *key, *ca;
    file_id seen[3];                    /* at the last attempt */
    bool memory;                        /* material set with sc_tls_watch_set_pem, no files */
};

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void watch_stat(const sc_tls_watch *w, file_id ids[3])
{
    file_id_of(w->opts.cert_file, &ids[0]);
    file_id_of(w->opts.key_file, &ids[1]);
    file_id_of(w->opts.ca_file, &ids[2]);
}

void sc_tls_watch_free(sc_tls_watch *w)
{
    if (!w)
        return;
    sc_tls_ctx_unref(w->cur);
    pthread_mutex_destroy(&w->mu);
    free(w->cert);
    free(w->key);
    free(w->ca);
    free(w);
}

sc_tls_watch *sc_tls_watch_new(const sc_tls_ctx_opts *o, char *err, size_t errlen)
{
    if (!o || !opts_has_files_only(o)) {
        set_err(err, errlen, "tls: a watch needs file paths, not PEM text");
        return NULL;
    }
    sc_tls_watch *w = calloc(1, sizeof(*w));
    if (!w || pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        set_err(err, errlen, "tls: out of memory");
        return NULL;
    }
    w->cert = dup_or_null(o->cert_file);
    w->key = dup_or_null(o->key_file);
    w->ca = dup_or_null(o->ca_file);
    w->opts = *o;
    w->opts.cert_file = w->cert;
    w->opts.key_file = w->key;
    w->opts.ca_file = w->ca;
    if ((o->cert_file && !w->cert) || (o->key_file && !w->key) || (o->ca_file && !w->ca)) {
        set_err(err, errlen, "tls: out of memory");
        sc_tls_watch_free(w);
        return NULL;
    }
    watch_stat(w, w->seen);
    w->cur = sc_tls_ctx_new(&w->opts, err, errlen);
    if (!w->cur) {
        sc_tls_watch_free(w);
        return NULL;
    }
    return w;
}

sc_tls_ctx *sc_tls_watch_get(sc_tls_watch *w)
{
    pthread_mutex_lock(&w->mu);
    sc_tls_ctx *c = sc_tls_ctx_ref(w->cur);
    pthread_mutex_unlock(&w->mu);
    return c;
}

/*
 * Loads the material `o` names, builds a context from it and makes it the
 * watch's current one, unless it is byte for byte the current material
 * (0) or unusable: unreadable, inconsistent, or a certificate that is
 * expired or not yet valid (-errno and err; the current one stays).
 * `what` names the certificate in the error ("tls.cert <path>", "the new
 * certificate (serial ...)"). Control thread: only it replaces cur, so
 * reading cur here needs no lock. Returns 1 when the new material is in use.
 */
static int install(sc_tls_watch *w, const sc_tls_ctx_opts *o, const char *what, char *err, size_t errlen)
{
    blob cert, key, ca;
    int rc = load_blobs(o, &cert, &key, &ca, err, errlen);
    if (rc < 0)
        return rc;
    unsigned char digest[32];
    digest_blobs((const blob *[]){&cert, &key, &ca}, 3, digest);
    if (w->cur && memcmp(digest, w->cur->digest, sizeof(digest)) == 0) {
        blob_free(&cert);
        blob_free(&key);
        blob_free(&ca);
        return 0;
    }
    sc_tls_ctx *nc = build_ctx(o, &cert, &key, &ca, err, errlen);
    blob_free(&cert);
    blob_free(&key);
    blob_free(&ca);
    if (!nc)
        return -EINVAL;
    memcpy(nc->digest, digest, sizeof(digest));
    if (nc->has_cert) {
        int64_t t = (int64_t)time(NULL);
        sc_tls_cert_state st = sc_tls_cert_check(&nc->cert, t, 0);
        if (st == SC_TLS_CERT_EXPIRED || st == SC_TLS_CERT_NOT_YET_VALID) {
            set_err(err, errlen, "%s: the new certificate is %s (valid %s to %s); keeping the current one",
                    what ? what : "tls", sc_tls_cert_state_name(st), nc->cert.not_before_iso,
                    nc->cert.not_after_iso);
            sc_tls_ctx_unref(nc);
            return -EINVAL;
        }
    }
    pthread_mutex_lock(&w->mu);
    sc_tls_ctx *old = w->cur;
    w->cur = nc;
    pthread_mutex_unlock(&w->mu);
    sc_tls_ctx_unref(old);
    return 1;
}

sc_tls_watch *sc_tls_watch_new_memory(sc_tls_role role, bool require_client_cert)
{
    sc_tls_watch *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    if (pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        return NULL;
    }
    w->opts.role = role;
    w->opts.require_client_cert = require_client_cert;
    w->memory = true;
    return w;
}

int sc_tls_watch_set_pem(sc_tls_watch *w, const char *cert_pem, const char *key_pem,
                         const char *ca_pem, char *err, size_t errlen)
{
    if (!w->memory) {
        set_err(err, errlen, "tls: this material comes from files, not from memory");
        return -EINVAL;
    }
    sc_tls_ctx_opts o = w->opts;
    o.cert_pem = cert_pem;
    o.key_pem = key_pem;
    o.ca_pem = ca_pem;
    return install(w, &o, "the Connect leaf certificate", err, errlen);
}

int sc_tls_watch_check(sc_tls_watch *w, bool force, char *err, size_t errlen)
{
    if (w->memory)
        return 0;   /* in-memory material changes only through sc_tls_watch_set_pem */
    file_id now_ids[3];
    watch_stat(w, now_ids);
    bool changed = force;
    for (int i = 0; i < 3 && !changed; i++)
        changed = !file_id_eq(&now_ids[i], &w->seen[i]);
    if (!changed)
        return 0;
    memcpy(w->seen, now_ids, sizeof(now_ids));

    char what[PATH_MAX + 16];
    snprintf(what, sizeof(what), "tls.cert %s", w->cert ? w->cert : "");
    return install(w, &w->opts, what, err, errlen);
}

int sc_tls_identity_for_service(const char *ours, const char *dc, const char *service, char *out, size_t cap)
{
    /* spiffe://TD/ns/NS/dc/DC/svc/SVC */
    static const char pre[] = "spiffe://";
    if (!ours || !service || !*service || strncmp(ours, pre, sizeof(pre) - 1) != 0)
        return -EINVAL;
    const char *td = ours + sizeof(pre) - 1;
    const char *ns = strstr(td, "/ns/");
    if (!ns || ns == td)
        return -EINVAL;
    const char *ourdc = strstr(ns + 4, "/dc/");
    if (!ourdc || ourdc == ns + 4)
        return -EINVAL;
    const char *svc = strstr(ourdc + 4, "/svc/");
    if (!svc || svc == ourdc + 4 || !svc[5])
        return -EINVAL;
    int n;
    if (dc && *dc)
        n = snprintf(out, cap, "spiffe://%.*s/ns/%.*s/dc/%s/svc/%s", (int)(ns - td), td, (int)(ourdc - ns - 4), ns + 4,
                     dc, service);
    else
        n = snprintf(out, cap, "spiffe://%.*s/ns/%.*s/dc/%.*s/svc/%s", (int)(ns - td), td, (int)(ourdc - ns - 4),
                     ns + 4, (int)(svc - ourdc - 4), ourdc + 4, service);
    if (n < 0 || (size_t)n >= cap)
        return -ENOSPC;
    return n;
}

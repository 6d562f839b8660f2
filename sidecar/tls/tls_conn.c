/*
 * tls_conn.c: one TLS connection: the SSL of an accepted or outgoing
 * connection (server name, expected identity, ALPN, an offered session),
 * peer verification (the callbacks a context installs, and the same checks
 * again on a resumed session), the non-blocking handshake, read, write and
 * shutdown with their errors as negative errno, and the error texts of the
 * module (sc_tls_set_err, sc_tls_last_error).
 *
 * Memory: the caller owns the SSL (sc_tls_ssl_free). Its state
 * (sc_tls_conn_state, with the failure text sc_tls_conn_error returns)
 * hangs off it as ex_data and is freed with it; the strings of the client
 * options are copied into that state. No function leaves an error in
 * OpenSSL's per-thread queue.
 */
#include "tls/tls_internal.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- errors ---- */

void sc_tls_set_err(char *err, size_t errlen, const char *fmt, ...)
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

/* "what (<openssl reason>)" into err, clearing the queue. */
void sc_tls_set_ossl_err(char *err, size_t errlen, const char *fmt, ...)
{
    char head[384], q[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof(head), fmt, ap);
    va_end(ap);
    if (sc_tls_last_error(q, sizeof(q)))
        sc_tls_set_err(err, errlen, "%s (%s)", head, q);
    else
        sc_tls_set_err(err, errlen, "%s", head);
}

/* ---- per-connection state ---- */

/* Allocates the state when missing (extra bytes for strings on creation only). */
sc_tls_conn_state *sc_tls_conn_make(SSL *ssl, size_t extra)
{
    sc_tls_conn_state *cs = sc_tls_conn_get(ssl);
    if (cs)
        return cs;
    cs = calloc(1, sizeof(*cs) + extra);
    if (!cs)
        return NULL;
    if (!SSL_set_ex_data(ssl, sc_tls_conn_idx, cs)) {
        free(cs);
        return NULL;
    }
    return cs;
}

static void conn_set_err(SSL *ssl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void conn_set_err(SSL *ssl, const char *fmt, ...)
{
    sc_tls_conn_state *cs = sc_tls_conn_make(ssl, 0);
    if (!cs)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cs->err, sizeof(cs->err), fmt, ap);
    va_end(ap);
}

const char *sc_tls_conn_error(const SSL *ssl)
{
    const sc_tls_conn_state *cs = ssl ? sc_tls_conn_get(ssl) : NULL;
    return cs ? cs->err : "";
}

/* ---- peer verification (SSL_CTX callbacks) ---- */

/* How the server's DNS names are matched: RFC 6125 (a wildcard only as a
 * whole left-most label), never the subject CN. */
#define HOST_FLAGS (X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS | X509_CHECK_FLAG_NEVER_CHECK_SUBJECT)

/* Refuses the handshake from inside verification with cs->err = text. A
 * failure OpenSSL found keeps its error (it picks the alert: unknown CA,
 * certificate expired, ...); one of ours is an application verification
 * failure. */
static int verify_refuse(X509_STORE_CTX *x, SSL *ssl, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int verify_refuse(X509_STORE_CTX *x, SSL *ssl, const char *fmt, ...)
{
    sc_tls_conn_state *cs = sc_tls_conn_make(ssl, 0);
    if (cs && !cs->refused) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cs->err, sizeof(cs->err), fmt, ap);
        va_end(ap);
        cs->refused = true;
    }
    if (X509_STORE_CTX_get_error(x) == X509_V_OK)
        X509_STORE_CTX_set_error(x, X509_V_ERR_APPLICATION_VERIFICATION);
    return 0;
}

int sc_tls_verify_cb(int ok, X509_STORE_CTX *x)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    if (!ssl)
        return ok;
    int depth = X509_STORE_CTX_get_error_depth(x);
    X509 *cert = X509_STORE_CTX_get_current_cert(x);
    const char *side = SSL_is_server(ssl) ? "client" : "server";
    sc_tls_conn_state *cs = sc_tls_conn_get(ssl);
    if (!ok) {
        int e = X509_STORE_CTX_get_error(x);
        if ((e == X509_V_ERR_HOSTNAME_MISMATCH || e == X509_V_ERR_IP_ADDRESS_MISMATCH) && cs &&
            cs->host && cert) {
            char names[256];
            sc_tls_cert_names_text(cert, names, sizeof(names));
            return verify_refuse(x, ssl, "server certificate is not for the name %s (it names %s)",
                                 cs->host, names);
        }
        char why[300];
        sc_tls_verify_error_text(x, why, sizeof(why));
        return verify_refuse(x, ssl, "%s certificate verify failed: %s", side, why);
    }
    if (depth != 0 || !cert)
        return 1;
    /* The leaf's URI SAN is an identity on the inbound side (headers, allow
     * lists, authorization, logs) and when a server identity is expected:
     * one that cannot be (CR/LF, several, not SPIFFE) refuses the peer. */
    if (SSL_is_server(ssl) || (cs && cs->expected)) {
        char problem[300];
        sc_tls_uri_san_problem(cert, problem, sizeof(problem));
        if (problem[0])
            return verify_refuse(x, ssl, "%s certificate refused: %s", side, problem);
    }
    if (cs && cs->expected) {
        char id[SC_TLS_ID_MAX];
        int n = sc_tls_cert_identity(cert, id, sizeof(id));
        if (n < 0 || strcmp(id, cs->expected) != 0)
            return verify_refuse(x, ssl, "server identity %s is not the expected %s",
                                 n >= 0 ? id : "(none: no URI SAN)", cs->expected);
    }
    return 1;
}

int sc_tls_alpn_select_cb(SSL *ssl, const unsigned char **out, unsigned char *outlen,
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

/* ---- connections ---- */

SSL *sc_tls_ssl_server(sc_tls_ctx *ctx, int fd, char *err, size_t errlen)
{
    if (!ctx || ctx->role != SC_TLS_ROLE_SERVER) {
        sc_tls_set_err(err, errlen, "tls: not a server context");
        return NULL;
    }
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ssl);
    if (!ssl || (fd >= 0 && !SSL_set_fd(ssl, fd))) {
        sc_tls_set_ossl_err(err, errlen, "tls: cannot create a connection");
        SSL_free(ssl);
        return NULL;
    }
    SSL_set_accept_state(ssl);
    return ssl;
}

/* Whether s is an IP address ("10.0.0.7", "::1", "[::1]"); its text without
 * brackets goes to ip (cap >= INET6_ADDRSTRLEN + 1). */
static bool ip_literal(const char *s, char *ip, size_t cap)
{
    unsigned char buf[sizeof(struct in6_addr)];
    size_t l = strlen(s);
    if (s[0] == '[' && l >= 2 && s[l - 1] == ']' && l - 2 < cap) {
        memcpy(ip, s + 1, l - 2);
        ip[l - 2] = 0;
        return inet_pton(AF_INET6, ip, buf) == 1;
    }
    if (l >= cap || (inet_pton(AF_INET, s, buf) != 1 && inet_pton(AF_INET6, s, buf) != 1))
        return false;
    memcpy(ip, s, l + 1);
    return true;
}

SSL *sc_tls_ssl_client(sc_tls_ctx *ctx, int fd, const sc_tls_client_opts *o, char *err,
                       size_t errlen)
{
    static const sc_tls_client_opts none;
    static const unsigned char alpn_h2[] = "\x02h2", alpn_h1[] = "\x08http/1.1",
                               alpn_both[] = "\x02h2\x08http/1.1";
    if (!ctx || ctx->role != SC_TLS_ROLE_CLIENT) {
        sc_tls_set_err(err, errlen, "tls: not a client context");
        return NULL;
    }
    if (!o)
        o = &none;
    const char *host = o->sni && *o->sni ? o->sni : NULL;
    const char *expect = o->server_identity && *o->server_identity ? o->server_identity : NULL;
    if (!host && !expect) {
        sc_tls_set_err(err, errlen, "tls: no name to verify the server against: set tls.sni (a DNS "
                                    "name on its certificate) or tls.server_identity (its SPIFFE ID)");
        return NULL;
    }
    ERR_clear_error();
    SSL *ssl = SSL_new(ctx->ssl);
    if (!ssl || (fd >= 0 && !SSL_set_fd(ssl, fd)))
        goto fail;
    SSL_set_connect_state(ssl);

    bool use_cache = o->cache && o->session_key && *o->session_key;
    size_t el = expect ? strlen(expect) + 1 : 0;
    size_t hl = host ? strlen(host) + 1 : 0;
    size_t kl = use_cache ? strlen(o->session_key) + 1 : 0;
    sc_tls_conn_state *cs = sc_tls_conn_make(ssl, el + hl + kl);
    if (!cs)
        goto fail;
    char *t = cs->tail;
    if (el) {
        cs->expected = memcpy(t, expect, el);
        t += el;
    }
    if (hl) {
        cs->host = memcpy(t, host, hl);
        t += hl;
    }
    if (kl) {
        cs->key = memcpy(t, o->session_key, kl);
        cs->cache = o->cache;
    }
    if (host) {
        /* OpenSSL checks the name inside certificate verification (sc_tls_verify_cb
         * words the mismatch); sc_tls_handshake checks resumed sessions. */
        char ip[INET6_ADDRSTRLEN + 1];
        if (ip_literal(host, ip, sizeof(ip))) {
            if (!X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), ip))
                goto fail;      /* no SNI for an address (RFC 6066) */
        } else {
            SSL_set_hostflags(ssl, HOST_FLAGS);
            if (!SSL_set_tlsext_host_name(ssl, host) || !SSL_set1_host(ssl, host))
                goto fail;
        }
    }
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
        SSL_SESSION *s = sc_tls_session_cache_take(o->cache, o->session_key, ctx->gen);
        if (s) {
            int ok = SSL_set_session(ssl, s);
            SSL_SESSION_free(s);
            if (!ok)
                ERR_clear_error();   /* a full handshake then */
        }
    }
    return ssl;
fail:
    sc_tls_set_ossl_err(err, errlen, "tls: cannot create a connection");
    SSL_free(ssl);
    return NULL;
}

/* ---- handshake and I/O ---- */

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
    sc_tls_conn_state *cs = sc_tls_conn_get(ssl);
    if (cs && cs->refused) {
        rc = -EACCES;   /* sc_tls_verify_cb wrote the reason */
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
        cs = sc_tls_conn_make(ssl, 0);
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

static int resumed_refuse(SSL *ssl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int resumed_refuse(SSL *ssl, const char *fmt, ...)
{
    sc_tls_conn_state *cs = sc_tls_conn_make(ssl, 0);
    if (cs) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cs->err, sizeof(cs->err), fmt, ap);
        va_end(ap);
        cs->refused = true;
    }
    SSL_set_quiet_shutdown(ssl, 1);
    return -EACCES;
}

/*
 * A resumed session skipped certificate verification (sc_tls_verify_cb), so what
 * it would have checked is checked again on the certificate the session
 * carries: still within its dates (sessions are capped at its notAfter, this
 * is the second line), and on the client side the server name and identity
 * this connection expects, which may differ from when the session was made.
 */
static int resumed_check(SSL *ssl)
{
    const char *side = SSL_is_server(ssl) ? "client" : "server";
    X509 *peer = SSL_get0_peer_certificate(ssl);
    sc_tls_conn_state *cs = sc_tls_conn_get(ssl);
    if (!peer) {
        if (SSL_is_server(ssl))
            return 0;   /* a caller without certificate (optional ones): nothing to check */
        return resumed_refuse(ssl, "resumed session carries no server certificate");
    }
    if (!sc_tls_cert_current(peer, time(NULL))) {
        sc_tls_cert_info ci;
        sc_tls_cert_info_get(peer, &ci);
        return resumed_refuse(ssl, "%s certificate of the resumed session is no longer valid "
                                   "(valid %s to %s, %s)", side, ci.not_before_iso,
                              ci.not_after_iso, ci.subject);
    }
    if (SSL_is_server(ssl) || !cs)
        return 0;
    if (cs->host) {
        char ip[INET6_ADDRSTRLEN + 1];
        int m = ip_literal(cs->host, ip, sizeof(ip)) ? X509_check_ip_asc(peer, ip, 0)
                                                      : X509_check_host(peer, cs->host, 0, HOST_FLAGS, NULL);
        ERR_clear_error();
        if (m != 1) {
            char names[256];
            sc_tls_cert_names_text(peer, names, sizeof(names));
            return resumed_refuse(ssl, "server certificate (resumed session) is not for the name %s "
                                       "(it names %s)", cs->host, names);
        }
    }
    if (cs->expected) {
        char id[SC_TLS_ID_MAX];
        int n = sc_tls_peer_identity(ssl, id, sizeof(id));
        if (n < 0 || strcmp(id, cs->expected) != 0)
            return resumed_refuse(ssl, "server identity %s (resumed session) is not the expected %s",
                                  n >= 0 ? id : "(none)", cs->expected);
    }
    return 0;
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
    if (r == 1)
        return SSL_session_reused(ssl) ? resumed_check(ssl) : 0;
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
    const sc_tls_conn_state *cs = sc_tls_conn_get(ssl);
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

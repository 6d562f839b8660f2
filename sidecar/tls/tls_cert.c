/*
 * tls_cert.c: certificate facts for the admin endpoint, readiness and log
 * lines: subject, issuer, identity, serial, fingerprint and dates of a
 * certificate (sc_tls_cert_info), whether it is valid, expiring or expired,
 * and the wording of a failed chain verification.
 *
 * Memory: sc_tls_cert_info is a plain struct the caller owns (fixed-size
 * text, nothing to free); certificates are borrowed. No error is left in
 * OpenSSL's queue.
 */
#include "tls/tls_internal.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* "CN = web, O = x" (OpenSSL's one-line form; its own escapes use '\\'),
 * anything outside printable ASCII as \xHH: names come from peers. */
static void name_oneline(const X509_NAME *name, char *out, size_t len)
{
    out[0] = 0;
    BIO *b = BIO_new(BIO_s_mem());
    if (!b)
        return;
    if (X509_NAME_print_ex(b, name, 0, XN_FLAG_ONELINE & ~ASN1_STRFLGS_ESC_MSB) >= 0) {
        char *p;
        long n = BIO_get_mem_data(b, &p);
        if (n > 0)
            sc_tls_escape_ex((const unsigned char *)p, (size_t)n, out, len, true);
    }
    BIO_free(b);
}

/* t as unix seconds and ISO 8601 in UTC (0 and "" when t is unusable). */
void sc_tls_asn1_time_out(const ASN1_TIME *t, int64_t *unix_out, char *iso, size_t isolen)
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
    sc_tls_asn1_time_out(X509_get0_notBefore(cert), &out->not_before, out->not_before_iso,
                         sizeof(out->not_before_iso));
    sc_tls_asn1_time_out(X509_get0_notAfter(cert), &out->not_after, out->not_after_iso,
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

/* Whether now lies within cert's validity dates. */
bool sc_tls_cert_current(X509 *cert, time_t now)
{
    return X509_cmp_time(X509_get0_notBefore(cert), &now) < 0 &&
           X509_cmp_time(X509_get0_notAfter(cert), &now) > 0;
}

/* Why verification failed at x's current certificate: "<reason> (depth N, <subject>)". */
void sc_tls_verify_error_text(X509_STORE_CTX *x, char *out, size_t cap)
{
    X509 *cert = X509_STORE_CTX_get_current_cert(x);
    char subj[160] = "";
    if (cert)
        name_oneline(X509_get_subject_name(cert), subj, sizeof(subj));
    snprintf(out, cap, "%s (depth %d, %s)", X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)),
             X509_STORE_CTX_get_error_depth(x), subj[0] ? subj : "no subject");
}

/*
 * tls_identity.c: identities in X.509 certificates and on connections: the
 * one URI SAN of a certificate as a SPIFFE ID, the verified peer's identity
 * and serial, and the texts a refusal is worded with (why a URI SAN cannot
 * be an identity, which names a certificate answers to). The rules for the
 * identity text itself are in spiffe.c.
 *
 * Memory: results go into the caller's buffers; the certificates and SSLs
 * are borrowed; OpenSSL objects made here are freed before returning and
 * no error is left in OpenSSL's queue.
 */
#include "tls/tls_internal.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <stdio.h>
#include <string.h>

/*
 * The URI SANs of cert: returns how many there are (0: none) and the first
 * one's bytes in *d, *dl, borrowed from *gens, which the caller frees with
 * GENERAL_NAMES_free; -EPROTO when the extension appears twice.
 */
static int cert_uri_sans(X509 *cert, GENERAL_NAMES **gens, const unsigned char **d, int *dl)
{
    int crit = 0;
    *d = NULL;
    *dl = 0;
    *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, &crit, NULL);
    if (!*gens) {
        ERR_clear_error();
        return crit == -2 ? -EPROTO : 0;  /* -2: the extension appears twice */
    }
    int n_uri = 0;
    for (int i = 0; i < sk_GENERAL_NAME_num(*gens); i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(*gens, i);
        if (g->type == GEN_URI && n_uri++ == 0) {
            *d = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
            *dl = ASN1_STRING_length(g->d.uniformResourceIdentifier);
        }
    }
    return n_uri;
}

int sc_tls_cert_identity(X509 *cert, char *out, size_t len)
{
    if (!cert)
        return -ENOENT;
    GENERAL_NAMES *gens;
    const unsigned char *d;
    int dl, rc;
    int n_uri = cert_uri_sans(cert, &gens, &d, &dl);
    if (n_uri < 0)
        rc = n_uri;
    else if (n_uri == 0)
        rc = -ENOENT;
    else if (n_uri > 1)
        rc = -EPROTO;   /* an X.509-SVID has exactly one: refuse to guess */
    else if (dl <= 0 || sc_tls_spiffe_id_valid((const char *)d, (size_t)dl, NULL) < 0)
        rc = -EPROTO;   /* also an embedded NUL, CR/LF, ...: never an identity */
    else if ((size_t)dl >= len)
        rc = -ENOSPC;
    else {
        memcpy(out, d, (size_t)dl);
        out[dl] = 0;
        rc = dl;
    }
    GENERAL_NAMES_free(gens);
    return rc;
}

/* Why cert's URI SAN cannot be an identity ("" when it can, or there is
 * none), for a log line: every byte of the peer's text escaped. */
void sc_tls_uri_san_problem(X509 *cert, char *out, size_t cap)
{
    GENERAL_NAMES *gens;
    const unsigned char *d;
    int dl;
    const char *why = NULL;
    out[0] = 0;
    int n_uri = cert_uri_sans(cert, &gens, &d, &dl);
    if (n_uri < 0)
        snprintf(out, cap, "its subjectAltName extension appears twice");
    else if (n_uri > 1)
        snprintf(out, cap, "it has %d URI SANs (a SPIFFE certificate has exactly one)", n_uri);
    else if (n_uri == 1 && (dl <= 0 || sc_tls_spiffe_id_valid((const char *)d, (size_t)dl, &why) < 0)) {
        char esc[160];
        sc_tls_escape(d, dl > 0 ? (size_t)dl : 0, esc, sizeof(esc));
        snprintf(out, cap, "its URI SAN \"%s\" is not a valid SPIFFE ID: %s", esc,
                 why ? why : "it is empty");
    }
    GENERAL_NAMES_free(gens);
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

/* The names cert answers to, for "does not match" messages:
 * "DNS:api, DNS:localhost, IP:127.0.0.1" (escaped), "no DNS or IP SAN". */
void sc_tls_cert_names_text(X509 *cert, char *out, size_t cap)
{
    size_t k = 0;
    out[0] = 0;
    GENERAL_NAMES *gens = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    for (int i = 0; gens && i < sk_GENERAL_NAME_num(gens) && k + 1 < cap; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
        char v[96];
        const char *kind = NULL;
        if (g->type == GEN_DNS) {
            kind = "DNS";
            sc_tls_escape(ASN1_STRING_get0_data(g->d.dNSName),
                          (size_t)SC_MAX(0, ASN1_STRING_length(g->d.dNSName)), v, sizeof(v));
        } else if (g->type == GEN_IPADD) {
            int il = ASN1_STRING_length(g->d.iPAddress);
            kind = "IP";
            if (!inet_ntop(il == 16 ? AF_INET6 : AF_INET, ASN1_STRING_get0_data(g->d.iPAddress), v,
                           sizeof(v)) || (il != 4 && il != 16))
                snprintf(v, sizeof(v), "(%d bytes)", il);
        }
        if (!kind)
            continue;
        int n = snprintf(out + k, cap - k, "%s%s:%s", k ? ", " : "", kind, v);
        if (n > 0)
            k = SC_MIN(cap - 1, k + (size_t)n);
    }
    GENERAL_NAMES_free(gens);
    ERR_clear_error();
    if (!k)
        snprintf(out, cap, "no DNS or IP SAN");
}

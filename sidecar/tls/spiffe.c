/*
 * spiffe.c: identities as text (see spiffe.h): SPIFFE ID validation,
 * allow-list patterns and matching, the identity of a service in our mesh,
 * escaping of peer-chosen text for log lines, serials in Consul's form.
 *
 * No OpenSSL header and no allocation: every function reads its arguments
 * and writes into the caller's buffer, so the configuration code links it
 * without libssl.
 */
#include "tls/spiffe.h"

#include <stdio.h>
#include <string.h>

/* in[0..n) into out (cap > 0), every byte outside printable ASCII as \xHH,
 * the backslash too unless keep_bs; cut with "..." when it does not fit. */
size_t sc_tls_escape_ex(const void *data, size_t n, char *out, size_t cap, bool keep_bs)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *in = data;
    if (!cap)
        return 0;
    size_t lim = cap - 1, total = 0;
    for (size_t i = 0; i < n; i++)
        total += (in[i] >= 0x20 && in[i] < 0x7f && (keep_bs || in[i] != '\\')) ? 1 : 4;
    if (total > lim)
        lim = lim >= 3 ? lim - 3 : 0;   /* room for "..." */
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = in[i];
        bool plain = c >= 0x20 && c < 0x7f && (keep_bs || c != '\\');
        if (k + (plain ? 1 : 4) > lim)
            break;
        if (plain) {
            out[k++] = (char)c;
        } else {
            out[k++] = '\\';
            out[k++] = 'x';
            out[k++] = hex[c >> 4];
            out[k++] = hex[c & 15];
        }
    }
    if (total > cap - 1)
        for (int i = 0; i < 3 && k < cap - 1; i++)
            out[k++] = '.';
    out[k] = 0;
    return k;
}

size_t sc_tls_escape(const void *in, size_t n, char *out, size_t cap)
{
    return sc_tls_escape_ex(in, n, out, cap, false);
}

static bool spiffe_td_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

static bool spiffe_path_char(unsigned char c)
{
    return spiffe_td_char(c) || (c >= 'A' && c <= 'Z');
}

int sc_tls_spiffe_id_valid(const char *id, size_t len, const char **why)
{
    static const char pre[] = "spiffe://";
    const size_t pl = sizeof(pre) - 1;
    const unsigned char *u = (const unsigned char *)id;
    const char *w = NULL;
    for (size_t i = 0; id && i < len && !w; i++) {
        if (u[i] < 0x20 || u[i] == 0x7f)
            w = "it contains a control character";
        else if (u[i] >= 0x80)
            w = "it contains a byte outside ASCII";
    }
    if (w)
        ;
    else if (!id || len < pl || memcmp(id, pre, pl) != 0)
        w = "it does not start with spiffe:// (lower case)";
    else if (len >= SC_TLS_ID_MAX)
        w = "it is longer than 511 bytes";
    else {
        size_t i = pl;
        while (i < len && id[i] != '/' && !w) {
            if (!spiffe_td_char(u[i]))
                w = "its trust domain may hold only a-z, 0-9, '.', '-' and '_'";
            i++;
        }
        if (!w && i == pl)
            w = "its trust domain is empty";
        else if (!w && i - pl > 255)
            w = "its trust domain is longer than 255 characters";
        while (!w && i < len) {     /* id[i] == '/' */
            size_t seg = ++i;
            while (i < len && id[i] != '/' && !w) {
                if (!spiffe_path_char(u[i]))
                    w = "its path may hold only A-Z, a-z, 0-9, '.', '-', '_' and '/'";
                i++;
            }
            if (w)
                break;
            if (i == seg)
                w = i == len ? "its path ends with '/'" : "its path has an empty segment ('//')";
            else if ((i - seg == 1 && id[seg] == '.') ||
                     (i - seg == 2 && id[seg] == '.' && id[seg + 1] == '.'))
                w = "its path has a '.' or '..' segment";
        }
    }
    if (why)
        *why = w;
    return w ? -EINVAL : 0;
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

int sc_tls_pattern_valid(const char *p, const char **why)
{
    const char *w = NULL;
    const char *star = p ? strchr(p, '*') : NULL;
    if (!p || !*p)
        w = "empty identity pattern";
    else if (strlen(p) >= SC_TLS_ID_MAX)
        w = "identity pattern too long";
    else {
        for (const unsigned char *c = (const unsigned char *)p; *c && !w; c++)
            if (*c <= 0x20 || *c == 0x7f)
                w = "identity pattern contains a space or control character";
    }
    if (!w && star) {
        const char *scheme = strstr(p, "://");
        if (star[1] != 0)
            w = "'*' is supported only at the end of a pattern (e.g. "
                "spiffe://example.org/ns/default/dc/dc1/svc/*)";
        else if (star == p)
            ;   /* a lone "*": any verified identity */
        else if (!scheme || scheme > star || !memchr(scheme + 3, '/', (size_t)(star - scheme - 3)))
            w = "'*' inside the trust domain is not supported; spell out the trust domain and "
                "a '/' before '*' (e.g. spiffe://example.org/*)";
    }
    if (why)
        *why = w;
    return w ? -EINVAL : 0;
}

bool sc_tls_allowed(const char *const *allow, size_t n, const char *identity)
{
    if (n == 0)
        return true;
    if (!identity || !*identity)
        return false;
    for (size_t i = 0; i < n; i++) {
        const char *p = allow[i];
        if (!p || sc_tls_pattern_valid(p, NULL) < 0)
            continue;   /* fail closed */
        size_t pl = strlen(p);
        if (p[pl - 1] == '*') {
            if (strncmp(identity, p, pl - 1) == 0 && identity[pl - 1] != 0)
                return true;
        } else if (strcmp(identity, p) == 0) {
            return true;
        }
    }
    return false;
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
    if (sc_tls_spiffe_id_valid(out, (size_t)n, NULL) < 0)
        return -EINVAL;     /* e.g. a service name with characters no identity has */
    return n;
}

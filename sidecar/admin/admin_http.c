/*
 * admin_http.c: query strings and the request checks of the admin endpoint
 * (see admin_http.h). Pure functions over caller-owned bytes.
 */
#include "admin/admin_http.h"
#include "config/config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <strings.h>
#include <sys/socket.h>

/* ---- query string ---- */

/* Decodes s[0..len) onto the end of q->text with a NUL; returns its start or
 * NULL with *err / *why set. */
static const char *decode(sc_admin_query *q, const char *s, size_t len, int *err, const char **why)
{
    char *out = q->text + q->used;
    size_t room = SC_ADMIN_QUERY_MAX_TEXT + 2 * SC_ADMIN_QUERY_MAX_PARAMS - q->used;
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%') {
            if (len - i < 3 || sc_hexval(s[i + 1]) < 0 || sc_hexval(s[i + 2]) < 0) {
                *err = -EINVAL;
                *why = "'%' must be followed by two hex digits";
                return NULL;
            }
            c = (char)(sc_hexval(s[i + 1]) << 4 | sc_hexval(s[i + 2]));
            i += 2;
            if (c == 0) {
                *err = -EINVAL;
                *why = "an encoded NUL (%00) is not allowed";
                return NULL;
            }
        } else if (c == '+') {
            c = ' ';
        }
        if (n + 1 >= room) {
            *err = -E2BIG;
            *why = "the query is too long";
            return NULL;
        }
        out[n++] = c;
    }
    out[n] = 0;
    q->used += n + 1;
    return out;
}

int sc_admin_query_parse(const char *target, size_t len, sc_admin_query *q, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    *why = NULL;
    q->n = q->used = 0;
    const char *qm = target ? memchr(target, '?', len) : NULL;
    if (!qm)
        return 0;
    const char *p = qm + 1, *end = target + len;
    int err = 0;
    if (memchr(p, '#', (size_t)(end - p))) {
        *why = "a '#' is not allowed in the query";
        err = -EINVAL;
        goto fail;
    }
    /* Decoded text never exceeds the raw text; counting raw bytes first
     * bounds the work before anything is decoded. */
    if ((size_t)(end - p) > SC_ADMIN_QUERY_MAX_TEXT * 3) {
        *why = "the query is too long";
        err = -E2BIG;
        goto fail;
    }
    while (p < end) {
        const char *amp = memchr(p, '&', (size_t)(end - p));
        const char *seg_end = amp ? amp : end;
        if (seg_end > p) {
            if (q->n == SC_ADMIN_QUERY_MAX_PARAMS) {
                *why = "too many query parameters";
                err = -E2BIG;
                goto fail;
            }
            const char *eq = memchr(p, '=', (size_t)(seg_end - p));
            const char *name_end = eq ? eq : seg_end;
            const char *name = decode(q, p, (size_t)(name_end - p), &err, why);
            if (!name)
                goto fail;
            if (!*name) {
                *why = "a query parameter has no name";
                err = -EINVAL;
                goto fail;
            }
            for (size_t i = 0; i < q->n; i++)
                if (strcmp(q->p[i].name, name) == 0) {
                    *why = "a query parameter is given twice";
                    err = -EINVAL;
                    goto fail;
                }
            const char *value = eq ? decode(q, eq + 1, (size_t)(seg_end - eq - 1), &err, why)
                                   : decode(q, "", 0, &err, why);
            if (!value)
                goto fail;
            q->p[q->n++] = (sc_admin_param){name, value};
        }
        p = seg_end + 1;
    }
    return 0;
fail:
    q->n = q->used = 0;
    return err;
}

const char *sc_admin_query_get(const sc_admin_query *q, const char *name)
{
    for (size_t i = 0; i < q->n; i++)
        if (strcmp(q->p[i].name, name) == 0)
            return q->p[i].value;
    return NULL;
}

const char *sc_admin_query_unknown(const sc_admin_query *q, const char *const *allowed, size_t n)
{
    for (size_t i = 0; i < q->n; i++) {
        size_t k = 0;
        while (k < n && strcmp(q->p[i].name, allowed[k]) != 0)
            k++;
        if (k == n)
            return q->p[i].name;
    }
    return NULL;
}

/* ---- Host ---- */

typedef struct hostport {
    char host[256];                 /* brackets kept for IPv6 */
    long port;                      /* -1 = none given */
} hostport;

/* Splits "name", "name:port", "[v6]" or "[v6]:port". Only checks the shape. */
static bool split_hostport(const char *s, size_t len, hostport *out)
{
    size_t hl;
    const char *rest;
    if (len && s[0] == '[') {
        const char *close = memchr(s, ']', len);
        if (!close)
            return false;
        hl = (size_t)(close - s) + 1;
        rest = close + 1;
    } else {
        const char *colon = memchr(s, ':', len);
        hl = colon ? (size_t)(colon - s) : len;
        rest = s + hl;
    }
    if (hl == 0 || hl >= sizeof(out->host))
        return false;
    memcpy(out->host, s, hl);
    out->host[hl] = 0;
    out->port = -1;
    size_t rl = len - (size_t)(rest - s);
    if (rl == 0)
        return true;
    if (rest[0] != ':' || rl < 2 || rl > 6)
        return false;
    long port = 0;
    for (size_t i = 1; i < rl; i++) {
        if (rest[i] < '0' || rest[i] > '9')
            return false;
        port = port * 10 + (rest[i] - '0');
    }
    if (port < 1 || port > 65535)
        return false;
    out->port = port;
    return true;
}

/* The address of an IP literal host ("127.0.0.1", "[::1]"); false for names. */
static bool host_ip(const char *host, sc_addr *a)
{
    memset(a, 0, sizeof(*a));
    size_t hl = strlen(host);
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
        char inner[INET6_ADDRSTRLEN + 1];
        if (hl - 2 >= sizeof(inner))
            return false;
        memcpy(inner, host + 1, hl - 2);
        inner[hl - 2] = 0;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a->ss;
        s6->sin6_family = AF_INET6;
        return inet_pton(AF_INET6, inner, &s6->sin6_addr) == 1;
    }
    struct sockaddr_in *s4 = (struct sockaddr_in *)&a->ss;
    s4->sin_family = AF_INET;
    return inet_pton(AF_INET, host, &s4->sin_addr) == 1;
}

static bool ip_equal(const sc_addr *a, const struct sockaddr *b)
{
    if (a->ss.ss_family != b->sa_family)
        return false;
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr ==
               ((const struct sockaddr_in *)b)->sin_addr.s_addr;
    return memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr,
                  &((const struct sockaddr_in6 *)b)->sin6_addr, sizeof(struct in6_addr)) == 0;
}

static bool name_chars_ok(const char *h)
{
    size_t n = strlen(h);
    return n > 0 && n <= 253 &&
           strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == n;
}

const char *sc_admin_host_entry_problem(const char *entry)
{
    hostport hp;
    sc_addr ss;
    if (!entry || !*entry)
        return "empty host";
    if (!split_hostport(entry, strlen(entry), &hp))
        return "expected name, name:port, an IP address or [IPv6]:port (port 1..65535)";
    if (hp.host[0] == '[' ? !host_ip(hp.host, &ss) : !name_chars_ok(hp.host))
        return "not a host name or IP address";
    return NULL;
}

bool sc_admin_host_allowed(const char *host, size_t len, uint16_t port,
                           const struct sockaddr *own_ip, char *const *allowed, size_t n_allowed)
{
    hostport hp;
    if (!host || !len || !split_hostport(host, len, &hp))
        return false;
    long hport = hp.port < 0 ? 80 : hp.port;
    sc_addr ss;
    bool is_ip = host_ip(hp.host, &ss);
    if (hport == port) {
        if (strcasecmp(hp.host, "localhost") == 0)
            return true;
        if (is_ip && (sc_addr_is_loopback(&ss) || (own_ip && ip_equal(&ss, own_ip))))
            return true;
    }
    for (size_t i = 0; i < n_allowed; i++) {
        hostport e;
        if (!split_hostport(allowed[i], strlen(allowed[i]), &e))
            continue;
        if ((e.port < 0 ? (long)port : e.port) == hport && strcasecmp(e.host, hp.host) == 0)
            return true;
    }
    return false;
}

/* ---- state-changing requests ---- */

static bool val_ieq(sc_admin_hval v, const char *s)
{
    size_t n = strlen(s);
    return v.p && v.len == n && strncasecmp(v.p, s, n) == 0;
}

/* Content-Type media type (before ';', spaces trimmed) is application/json. */
static bool is_json(sc_admin_hval ct)
{
    if (!ct.p)
        return false;
    size_t n = 0;
    while (n < ct.len && ct.p[n] != ';')
        n++;
    size_t a = 0;
    while (a < n && (ct.p[a] == ' ' || ct.p[a] == '\t'))
        a++;
    while (n > a && (ct.p[n - 1] == ' ' || ct.p[n - 1] == '\t'))
        n--;
    return val_ieq((sc_admin_hval){ct.p + a, n - a}, "application/json");
}

const char *sc_admin_csrf_problem(sc_admin_hval host, sc_admin_hval origin,
                                  sc_admin_hval sec_fetch_site, sc_admin_hval marker,
                                  sc_admin_hval content_type)
{
    if (origin.p) {
        static const char scheme[] = "http://";
        size_t sl = sizeof(scheme) - 1;
        if (!host.p || origin.len != sl + host.len || strncasecmp(origin.p, scheme, sl) != 0 ||
            strncasecmp(origin.p + sl, host.p, host.len) != 0)
            return "the request comes from another origin (a web page?); the admin endpoint "
                   "accepts state-changing requests only from its own origin or from tools "
                   "that send no Origin";
    }
    if (sec_fetch_site.p && !val_ieq(sec_fetch_site, "same-origin") && !val_ieq(sec_fetch_site, "none"))
        return "the browser marks the request as cross-site (Sec-Fetch-Site); refused";
    if (!(marker.p && marker.len) && !is_json(content_type))
        return "a state-changing request needs the header 'X-Sidecar-Admin: 1' (or "
               "Content-Type: application/json), which a web page cannot send cross-site";
    return NULL;
}

/* ---- bearer token ---- */

static bool sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int ol = 0;
    return EVP_Digest(p, n, out, &ol, EVP_sha256(), NULL) == 1 && ol == 32;
}

bool sc_admin_token_ok(sc_admin_hval authz, const char *token)
{
    static const char scheme[] = "bearer ";
    size_t sl = sizeof(scheme) - 1;
    if (!authz.p || !token || authz.len <= sl || strncasecmp(authz.p, scheme, sl) != 0)
        return false;
    const char *given = authz.p + sl;
    size_t gl = authz.len - sl;
    while (gl && *given == ' ') {
        given++;
        gl--;
    }
    unsigned char a[32], b[32];
    if (!sha256(given, gl, a) || !sha256(token, strlen(token), b))
        return false;
    return CRYPTO_memcmp(a, b, sizeof(a)) == 0;
}

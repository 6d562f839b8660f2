/*
 * tls_ident.c: the rules on identity strings of the TLS module that need no
 * OpenSSL (see tls.h): allow-list patterns and matching. Apart from tls.c so
 * that the configuration loader, which checks tls.allow with the same rule
 * the listener applies, stays free of TLS sessions (the pure library,
 * CMakeLists.txt).
 */
#include "tls/tls.h"

#include <string.h>

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

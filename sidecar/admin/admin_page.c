#include "admin/admin_page.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

/* "'sha256-<base64>'" of the text between the first `open` tag and the next
 * `close` tag: what CSP compares an inline element with. */
static int element_hash(const char *html, const char *open, const char *close, char *out, size_t cap)
{
    const char *a = strstr(html, open);
    if (!a)
        return -EINVAL;
    a += strlen(open);
    const char *b = strstr(a, close);
    if (!b)
        return -EINVAL;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(a, (size_t)(b - a), md, &mdlen, EVP_sha256(), NULL))
        return -EINVAL;
    unsigned char b64[4 * ((EVP_MAX_MD_SIZE + 2) / 3) + 1];
    EVP_EncodeBlock(b64, md, (int)mdlen);
    int n = snprintf(out, cap, "'sha256-%s'", (const char *)b64);
    return n < 0 || (size_t)n >= cap ? -ENOSPC : 0;
}

int sc_admin_page_csp(const char *html, char *out, size_t cap)
{
    char script[80], style[80];
    int rv = element_hash(html, "<script>", "</script>", script, sizeof(script));
    if (rv == 0)
        rv = element_hash(html, "<style>", "</style>", style, sizeof(style));
    if (rv < 0)
        return rv;
    int n = snprintf(out, cap,
                     "default-src 'none'; script-src %s; style-src %s; connect-src 'self'; img-src 'self' data:; "
                     "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                     script, style);
    return n < 0 || (size_t)n >= cap ? -ENOSPC : 0;
}

/*
 * descriptor.c: rate-limit matching and keys (descriptor.h).
 */
#include "ratelimit/descriptor.h"

#include <openssl/evp.h>
#include <stdio.h>

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

/* RFC 3986 5.2.4 on an absolute path, in place: the output never outruns
 * the input, so one buffer serves both. Returns the new length. */
static size_t remove_dot_segments(char *b, size_t n)
{
    size_t w = 0, i = 0;
    while (i < n) {
        /* b[i] == '/' here: every segment starts with its slash. */
        size_t s = i + 1, j = s;
        while (j < n && b[j] != '/')
            j++;
        size_t sl = j - s;
        bool last = j == n;
        if (sl == 1 && b[s] == '.') {
            if (last)
                b[w++] = '/';
        } else if (sl == 2 && b[s] == '.' && b[s + 1] == '.') {
            while (w > 0 && b[w - 1] != '/')
                w--;
            if (w > 0)
                w--;
            if (last)
                b[w++] = '/';
        } else {
            memmove(b + w, b + i, sl + 1);
            w += sl + 1;
        }
        i = j;
    }
    if (w == 0)
        b[w++] = '/';
    return w;
}

int sc_rl_path_normalize(const char *path, size_t len, char *out, size_t cap, size_t *out_len)
{
    size_t w = 0;
    for (size_t i = 0; i < len; i++) {
        char c = path[i];
        if (c == '?' || c == '#')
            break;
        if (w >= cap)
            return -ENOSPC;
        if (c == '%' && i + 2 < len && hexval(path[i + 1]) >= 0 && hexval(path[i + 2]) >= 0) {
            unsigned char d = (unsigned char)(hexval(path[i + 1]) * 16 + hexval(path[i + 2]));
            if (unreserved(d)) {
                out[w++] = (char)d;
            } else {
                if (w + 3 > cap)
                    return -ENOSPC;
                out[w++] = '%';
                out[w++] = (char)(path[i + 1] >= 'a' ? path[i + 1] - 32 : path[i + 1]);
                out[w++] = (char)(path[i + 2] >= 'a' ? path[i + 2] - 32 : path[i + 2]);
            }
            i += 2;
            continue;
        }
        out[w++] = c;
    }
    if (w > 0 && out[0] == '/')
        w = remove_dot_segments(out, w);
    else if (w == 0 && len > 0 && path[0] == '/') {
        if (cap < 1)
            return -ENOSPC;
        out[w++] = '/';
    }
    *out_len = w;
    return 0;
}

/* The normalised path, computed once per request (see sc_rl_request). */
static void norm_path(sc_rl_request *r, const char **p, size_t *n)
{
    if (!r->norm_done) {
        r->norm_done = true;
        if (!r->norm || !r->path ||
            sc_rl_path_normalize(r->path, r->path_len, r->norm, r->norm_cap, &r->norm_len) < 0) {
            /* A caller's mistake (buffer too small): the raw path, cut at
             * the query, stands in; the limit is still applied. */
            size_t k = 0;
            while (r->path && k < r->path_len && r->path[k] != '?' && r->path[k] != '#')
                k++;
            r->norm = NULL;
            r->norm_len = k;
        }
    }
    *p = r->norm ? r->norm : r->path;
    *n = r->norm_len;
}

static bool matches(const sc_rate_limit *l, sc_rl_request *r)
{
    if (l->n_methods) {
        size_t i = 0;
        while (i < l->n_methods && !(strlen(l->methods[i]) == r->method_len &&
                                     memcmp(l->methods[i], r->method, r->method_len) == 0))
            i++;
        if (i == l->n_methods)
            return false;
    }
    if (l->path_prefix) {
        const char *p;
        size_t n, pl = strlen(l->path_prefix);
        norm_path(r, &p, &n);
        if (n < pl || memcmp(p, l->path_prefix, pl) != 0)
            return false;
    }
    return true;
}

/* The pieces of a key as they are found; copied into the key at the end,
 * or hashed when the whole is longer than SC_RL_KEY_MAX. */
typedef struct kpieces {
    struct { const char *p; size_t n; } v[2 * SC_RL_MAX_KEY_PARTS];
    size_t n, total;
} kpieces;

static void kput(kpieces *k, const char *p, size_t n)
{
    k->v[k->n].p = p;
    k->v[k->n++].n = n;
    k->total += n;
}

/* Shortens a long key: its first SC_RL_KEY_KEEP bytes, 0x1d, and 32 hex
 * digits of the SHA-256 of the whole. Without memory for the digest (the
 * only allocation, and only for long keys) the key is cut instead, which
 * still bounds it; the request is limited either way. */
static size_t shorten(const kpieces *k, char *key)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdl = 0;
    EVP_MD_CTX *x = EVP_MD_CTX_new();
    bool ok = x && EVP_DigestInit_ex(x, EVP_sha256(), NULL) == 1;
    for (size_t i = 0; ok && i < k->n; i++)
        ok = EVP_DigestUpdate(x, k->v[i].p, k->v[i].n) == 1;
    ok = ok && EVP_DigestFinal_ex(x, md, &mdl) == 1 && mdl >= 16;
    EVP_MD_CTX_free(x);
    if (!ok)
        return SC_RL_KEY_MAX;
    static const char hx[] = "0123456789abcdef";
    char *o = key + SC_RL_KEY_KEEP;
    *o++ = '\x1d';
    for (size_t i = 0; i < 16; i++) {
        *o++ = hx[md[i] >> 4];
        *o++ = hx[md[i] & 15];
    }
    return (size_t)(o - key);
}

static const char sep[1] = {SC_RL_SEP}, absent[1] = {SC_RL_ABSENT};

int sc_rl_descriptor(const sc_rate_limit *l, sc_rl_request *r, char *key, size_t *klen)
{
    *klen = 0;
    if (!matches(l, r))
        return 0;
    kpieces k = {.n = 0};
    for (size_t i = 0; i < l->n_key && i < SC_RL_MAX_KEY_PARTS; i++) {
        const sc_rl_key_part *part = &l->key[i];
        const char *v = NULL;
        size_t vn = 0;
        switch (part->kind) {
        case SC_RL_KEY_ROUTE:
            v = "";
            break;
        case SC_RL_KEY_CALLER:
            v = r->caller;
            vn = r->caller_len;
            break;
        case SC_RL_KEY_HEADER:
            if (r->header)
                v = r->header(r->ctx, part->arg, strlen(part->arg), &vn);
            break;
        case SC_RL_KEY_CLAIM:
            if (r->claim)
                v = r->claim(r->ctx, part->arg, &vn);
            break;
        case SC_RL_KEY_METHOD:
            v = r->method;
            vn = r->method_len;
            break;
        case SC_RL_KEY_PATH:
            if (r->path)
                norm_path(r, &v, &vn);
            break;
        }
        if (i > 0)
            kput(&k, sep, 1);
        if (!v) {
            if (l->skip_missing)
                return 0;
            kput(&k, absent, 1);
        } else {
            kput(&k, v, vn);
        }
    }
    size_t w = 0;
    for (size_t i = 0; i < k.n && w < SC_RL_KEY_MAX; i++) {
        size_t c = SC_MIN(k.v[i].n, SC_RL_KEY_MAX - w);
        memcpy(key + w, k.v[i].p, c);
        w += c;
    }
    *klen = k.total > SC_RL_KEY_MAX ? shorten(&k, key) : w;
    return 1;
}

size_t sc_rl_key_display(const char *key, size_t klen, char *out, size_t cap)
{
    size_t w = 0;
    if (cap == 0)
        return 0;
#define PUT(s, n)                                  \
    do {                                           \
        size_t n_ = (n);                           \
        if (w + n_ >= cap)                         \
            goto done;                             \
        memcpy(out + w, (s), n_);                  \
        w += n_;                                   \
    } while (0)
    for (size_t i = 0; i < klen; i++) {
        unsigned char c = (unsigned char)key[i];
        if (c == (unsigned char)SC_RL_SEP)
            PUT(" | ", 3);
        else if (c == (unsigned char)SC_RL_ABSENT)
            PUT("-", 1);
        else if (c == 0x1d)
            PUT("#", 1);
        else if (c < 0x20 || c >= 0x7f || c == '\\') {
            char e[5];
            snprintf(e, sizeof(e), "\\x%02x", c);
            PUT(e, 4);
        } else
            PUT(&key[i], 1);
    }
#undef PUT
done:
    out[w] = 0;
    return w;
}

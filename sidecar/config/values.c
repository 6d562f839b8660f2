/*
 * values.c: the scalar grammars of the config (durations, sizes, addresses,
 * percentages), diagnostics, and the typed readers every section uses.
 */
#include "config/config_internal.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- diagnostics ---- */

static void diags_vadd(sc_diags *d, const char *file, unsigned line, const char *field,
                       const char *fmt, va_list ap)
{
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 16;
        sc_diag *v = realloc(d->v, cap * sizeof(*v));
        if (!v) {
            fputs("sidecar: out of memory during setup\n", stderr);
            abort();
        }
        d->v = v;
        d->cap = cap;
    }
    sc_diag *g = &d->v[d->n++];
    g->file = sc_xstrdup(file ? file : "<string>");
    g->line = line;
    g->field = sc_xstrdup(field ? field : "");
    g->msg = sc_xstrdup(msg);
}

void sc_diags_add(sc_diags *d, const char *file, unsigned line, const char *field,
                  const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diags_vadd(d, file, line, field, fmt, ap);
    va_end(ap);
}

void sc_diags_free(sc_diags *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->v[i].file);
        free(d->v[i].field);
        free(d->v[i].msg);
    }
    free(d->v);
    d->v = NULL;
    d->n = d->cap = 0;
}

void sc_diags_print(const sc_diags *d, FILE *out)
{
    for (size_t i = 0; d && i < d->n; i++) {
        const sc_diag *g = &d->v[i];
        if (g->line)
            fprintf(out, "%s:%u: ", g->file, g->line);
        else
            fprintf(out, "%s: ", g->file);
        if (g->field[0])
            fprintf(out, "%s: ", g->field);
        fprintf(out, "%s\n", g->msg);
    }
}

void sc_config_err_line(sc_cx *c, unsigned line, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diags_vadd(c->d, c->file, line, field, fmt, ap);
    va_end(ap);
    c->n_errors++;
}

void sc_config_err(sc_cx *c, const sc_ynode *at, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diags_vadd(c->d, c->file, at ? at->line : 0, field, fmt, ap);
    va_end(ap);
    c->n_errors++;
}

void sc_config_path(char *buf, size_t cap, const char *path, const char *key)
{
    if (path && path[0])
        snprintf(buf, cap, "%s.%s", path, key);
    else
        snprintf(buf, cap, "%s", key);
}

void sc_config_path_idx(char *buf, size_t cap, const char *path, size_t i)
{
    snprintf(buf, cap, "%s[%zu]", path ? path : "", i);
}

/* ---- durations ---- */

int sc_duration_parse(const char *s, uint64_t *ms)
{
    static const struct { const char *unit; uint64_t mult; } units[] = {
        {"h", 3600000u}, {"m", 60000u}, {"s", 1000u}, {"ms", 1u},
    };
    if (!s || !*s)
        return -EINVAL;
    if (strcmp(s, "0") == 0) {
        *ms = 0;
        return 0;
    }
    uint64_t total = 0;
    size_t next_unit = 0; /* units must appear largest first, each once */
    const char *p = s;
    while (*p) {
        if (*p < '0' || *p > '9')
            return -EINVAL;
        uint64_t v = 0;
        while (*p >= '0' && *p <= '9') {
            unsigned dgt = (unsigned)(*p - '0');
            if (v > (UINT64_MAX - dgt) / 10)
                return -EINVAL;
            v = v * 10 + dgt;
            p++;
        }
        size_t u;
        if (p[0] == 'm' && p[1] == 's')
            u = 3;
        else if (p[0] == 'h')
            u = 0;
        else if (p[0] == 'm')
            u = 1;
        else if (p[0] == 's')
            u = 2;
        else
            return -EINVAL;
        if (u < next_unit)
            return -EINVAL;
        next_unit = u + 1;
        p += strlen(units[u].unit);
        if (v > SC_DURATION_MAX_MS / units[u].mult)
            return -EINVAL;
        v *= units[u].mult;
        if (total > SC_DURATION_MAX_MS - v)
            return -EINVAL;
        total += v;
    }
    *ms = total;
    return 0;
}

size_t sc_duration_format(uint64_t ms, char *buf, size_t cap)
{
    char tmp[64];
    size_t n = 0;
    if (ms == 0) {
        tmp[n++] = '0';
        tmp[n] = 0;
    } else {
        uint64_t h = ms / 3600000u, m = ms / 60000u % 60, s = ms / 1000u % 60,
                 r = ms % 1000u;
        if (h)
            n += (size_t)snprintf(tmp + n, sizeof(tmp) - n, "%lluh", (unsigned long long)h);
        if (m)
            n += (size_t)snprintf(tmp + n, sizeof(tmp) - n, "%llum", (unsigned long long)m);
        if (s)
            n += (size_t)snprintf(tmp + n, sizeof(tmp) - n, "%llus", (unsigned long long)s);
        if (r)
            n += (size_t)snprintf(tmp + n, sizeof(tmp) - n, "%llums", (unsigned long long)r);
    }
    if (cap > 0)
        snprintf(buf, cap, "%s", tmp);
    return n;
}

/* ---- sizes ---- */

int sc_size_parse(const char *s, uint64_t *bytes)
{
    static const struct { const char *suffix; uint64_t mult; } sfx[] = {
        {"", 1}, {"B", 1}, {"KiB", 1024u}, {"MiB", 1024u * 1024u},
        {"GiB", 1024u * 1024u * 1024u},
    };
    if (!s || *s < '0' || *s > '9')
        return -EINVAL;
    uint64_t v = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        unsigned dgt = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - dgt) / 10)
            return -EINVAL;
        v = v * 10 + dgt;
        p++;
    }
    for (size_t i = 0; i < SC_ARRAY_LEN(sfx); i++) {
        if (strcmp(p, sfx[i].suffix) == 0) {
            if (v > UINT64_MAX / sfx[i].mult)
                return -EINVAL;
            *bytes = v * sfx[i].mult;
            return 0;
        }
    }
    return -EINVAL;
}

/* ---- decimals and names ---- */

int sc_config_decimal(const char *s, double *out)
{
    /* digits into one integer, then a single division: correctly rounded,
     * so "0.3" is the same double as the C literal 0.3 */
    uint64_t mant = 0;
    size_t digits = 0, frac = 0;
    const char *p = s;
    while (*p >= '0' && *p <= '9') {
        if (++digits > 18)
            return -EINVAL;
        mant = mant * 10 + (uint64_t)(*p - '0');
        p++;
    }
    if (digits == 0)
        return -EINVAL;
    if (*p == '.') {
        p++;
        while (*p >= '0' && *p <= '9') {
            if (++digits > 18)
                return -EINVAL;
            mant = mant * 10 + (uint64_t)(*p - '0');
            frac++;
            p++;
        }
        if (frac == 0)
            return -EINVAL;
    }
    if (*p)
        return -EINVAL;
    double scale = 1;
    for (size_t i = 0; i < frac; i++)
        scale *= 10;
    *out = (double)mant / scale;
    return 0;
}

bool sc_config_is_name(const char *s, size_t maxlen)
{
    size_t n = strlen(s);
    if (n == 0 || n > maxlen)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

/* ---- addresses ---- */

static atomic_bool dns_enabled = true;

void sc_addr_set_dns_enabled(bool enabled)
{
    atomic_store(&dns_enabled, enabled);
}

static bool is_hostname(const char *h)
{
    size_t n = strlen(h);
    if (n == 0 || n > 253)
        return false;
    size_t label = 0;
    bool all_digits_label = true;
    for (size_t i = 0; i <= n; i++) {
        char ch = h[i];
        if (ch == '.' || ch == 0) {
            if (label == 0 || label > 63 || h[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        bool alpha = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z');
        bool digit = ch >= '0' && ch <= '9';
        if (!alpha && !digit && ch != '-')
            return false;
        if (label == 0) {
            if (ch == '-')
                return false;
            all_digits_label = true;
        }
        if (!digit)
            all_digits_label = false;
        label++;
    }
    /* A last label of digits only is a mistyped IPv4 address, not a name. */
    return !all_digits_label;
}

bool sc_config_is_host(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1 ||
           (strspn(s, "0123456789.") != strlen(s) && is_hostname(s));
}

int sc_addr_parse_why(const char *s, sc_addr *out, bool allow_hostname, const char **why)
{
    const char *dummy;
    if (!why)
        why = &dummy;
    *why = NULL;
    memset(out, 0, sizeof(*out));
    if (!s || !*s) {
        *why = "empty address; expected ip:port";
        return -EINVAL;
    }
    size_t n = strlen(s);
    if (n >= sizeof(out->text)) {
        *why = "address too long (at most 79 characters)";
        return -EINVAL;
    }
    char host[sizeof(out->text)];
    const char *port;
    bool bracketed = false;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            *why = close ? "missing ':port' after ']'" : "missing ']' after an IPv6 address";
            return -EINVAL;
        }
        size_t hl = (size_t)(close - s - 1);
        memcpy(host, s + 1, hl);
        host[hl] = 0;
        port = close + 2;
        bracketed = true;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon) {
            *why = "missing ':port'; expected ip:port";
            return -EINVAL;
        }
        if (memchr(s, ':', (size_t)(colon - s))) {
            *why = "IPv6 addresses must be written in brackets, e.g. [::1]:8080";
            return -EINVAL;
        }
        size_t hl = (size_t)(colon - s);
        memcpy(host, s, hl);
        host[hl] = 0;
        port = colon + 1;
    }
    size_t pl = strlen(port);
    unsigned long pv = 0;
    if (pl == 0 || pl > 5 || strspn(port, "0123456789") != pl) {
        *why = "the port must be a number 1..65535";
        return -EINVAL;
    }
    pv = strtoul(port, NULL, 10);
    if (pv == 0 || pv > 65535) {
        *why = "the port must be a number 1..65535";
        return -EINVAL;
    }
    if (host[0] == 0) {
        *why = "missing host; expected ip:port (use 0.0.0.0 for every interface)";
        return -EINVAL;
    }
    if (bracketed) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&out->ss;
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1) {
            *why = "not a valid IPv6 address";
            return -EINVAL;
        }
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)pv);
        out->len = sizeof(*a6);
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&out->ss;
        if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
            a4->sin_family = AF_INET;
            a4->sin_port = htons((uint16_t)pv);
            out->len = sizeof(*a4);
        } else if (strspn(host, "0123456789.") == strlen(host) || !is_hostname(host)) {
            *why = allow_hostname ? "not a valid IPv4 address or hostname"
                                  : "not a valid IPv4 address";
            return -EINVAL;
        } else if (!allow_hostname) {
            *why = "a hostname is not allowed here; use an IP address";
            return -EINVAL;
        } else {
            if (!atomic_load(&dns_enabled)) {
                *why = "cannot resolve the hostname (name lookups are disabled)";
                return -EHOSTUNREACH;
            }
            struct addrinfo hints, *res = NULL;
            memset(&hints, 0, sizeof(hints));
            hints.ai_family = AF_UNSPEC;
            hints.ai_socktype = SOCK_STREAM;
            hints.ai_flags = AI_NUMERICSERV;
            int rc = getaddrinfo(host, port, &hints, &res);
            if (rc != 0 || !res || res->ai_addrlen > sizeof(out->ss)) {
                if (res)
                    freeaddrinfo(res);
                *why = "cannot resolve the hostname";
                return -EHOSTUNREACH;
            }
            memcpy(&out->ss, res->ai_addr, res->ai_addrlen);
            out->len = (socklen_t)res->ai_addrlen;
            freeaddrinfo(res);
        }
    }
    memcpy(out->text, s, n + 1);
    return 0;
}

int sc_addr_parse(const char *s, sc_addr *out, bool allow_hostname)
{
    return sc_addr_parse_why(s, out, allow_hostname, NULL);
}

bool sc_addr_is_wildcard(const sc_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr == htonl(INADDR_ANY);
    if (a->ss.ss_family == AF_INET6)
        return memcmp(&((const struct sockaddr_in6 *)&a->ss)->sin6_addr, &in6addr_any,
                      sizeof(in6addr_any)) == 0;
    return false;
}

uint16_t sc_addr_port(const sc_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}

bool sc_addr_is_loopback(const sc_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&a->ss)->sin_addr.s_addr) >> 24) == 127;
    if (a->ss.ss_family != AF_INET6)
        return false;
    const struct in6_addr *v6 = &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
    return IN6_IS_ADDR_LOOPBACK(v6) || (IN6_IS_ADDR_V4MAPPED(v6) && v6->s6_addr[12] == 127);
}

/* ---- mappings ---- */

static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    size_t row[40];
    if (la > 38 || lb > 38)
        return 99;
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t prev = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t cur = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            row[j] = SC_MIN(SC_MIN(row[j] + 1, row[j - 1] + 1), prev + cost);
            prev = cur;
        }
    }
    return row[lb];
}

bool sc_config_fields(sc_cx *c, const sc_ynode *m, const char *path, const char *const *keys,
                      size_t n_keys, const sc_ynode **out)
{
    for (size_t i = 0; i < n_keys; i++)
        out[i] = NULL;
    if (!m || sc_config_yaml_is_null(m))
        return true;
    if (m->kind == SC_YN_BAD)
        return false;
    if (m->kind != SC_YN_MAP) {
        sc_config_err(c, m, path, "expected a mapping (key: value lines), got %s",
                      m->kind == SC_YN_SEQ ? "a list" : "a single value");
        return false;
    }
    const sc_ynode *keyat[64];
    for (size_t k = 0; k + 1 < m->n; k += 2) {
        const sc_ynode *key = m->items[k], *val = m->items[k + 1];
        if (key->kind != SC_YN_SCALAR)
            continue; /* reported by the parser */
        size_t i = 0;
        while (i < n_keys && strcmp(keys[i], key->str) != 0)
            i++;
        char f[256];
        sc_config_path(f, sizeof(f), path, key->str);
        if (i == n_keys) {
            char list[512];
            size_t len = 0;
            const char *best = NULL;
            size_t best_d = 3;
            list[0] = 0;
            for (size_t j = 0; j < n_keys; j++) {
                int w = snprintf(list + len, sizeof(list) - len, "%s%s", j ? ", " : "", keys[j]);
                if (w > 0 && (size_t)w < sizeof(list) - len)
                    len += (size_t)w;
                size_t dist = edit_distance(key->str, keys[j]);
                if (dist < best_d) {
                    best_d = dist;
                    best = keys[j];
                }
            }
            if (best)
                sc_config_err(c, key, f, "unknown key '%.64s' (did you mean '%s'?)", key->str,
                              best);
            else
                sc_config_err(c, key, f, "unknown key '%.64s'; expected one of: %s", key->str,
                              list);
            continue;
        }
        if (out[i]) {
            sc_config_err(c, key, f, "duplicate key '%s' (first set at line %u)", keys[i],
                          i < SC_ARRAY_LEN(keyat) ? keyat[i]->line : out[i]->line);
            continue;
        }
        out[i] = val;
        if (i < SC_ARRAY_LEN(keyat))
            keyat[i] = key;
    }
    return true;
}

void sc_config_require(sc_cx *c, const sc_ynode *m, const char *path, const char *key,
                       const sc_ynode *v)
{
    if (v)
        return;
    char f[256];
    sc_config_path(f, sizeof(f), path, key);
    /* point at the section's own key ("inbound:"), where the reader looks */
    sc_config_err_line(c, m ? (m->key_line ? m->key_line : m->line) : 0, f,
                       "missing required key '%s'", key);
}

/* ---- typed readers ---- */

static const char *kind_name(const sc_ynode *v)
{
    if (v->kind == SC_YN_SEQ)
        return "a list";
    if (v->kind == SC_YN_MAP)
        return "a mapping";
    return "nothing";
}

/* The scalar text of v, or NULL after reporting (expected `what`). */
static const char *scalar(sc_cx *c, const sc_ynode *v, const char *field, const char *what)
{
    if (v->kind == SC_YN_BAD)
        return NULL;
    if (v->kind != SC_YN_SCALAR || sc_config_yaml_is_null(v)) {
        sc_config_err(c, v, field, "expected %s, got %s", what, kind_name(v));
        return NULL;
    }
    return v->str;
}

bool sc_config_rd_str(sc_cx *c, const sc_ynode *v, const char *field, bool allow_empty,
                      char **dst)
{
    if (!v)
        return true;
    if (allow_empty && v->kind == SC_YN_SCALAR && !v->plain && v->len == 0) {
        free(*dst);
        *dst = sc_xstrdup("");
        return true;
    }
    const char *s = scalar(c, v, field, "a string");
    if (!s)
        return false;
    if (!*s && !allow_empty) {
        sc_config_err(c, v, field, "must not be empty");
        return false;
    }
    free(*dst);
    *dst = sc_xstrdup(s);
    return true;
}

bool sc_config_rd_bool(sc_cx *c, const sc_ynode *v, const char *field, bool *dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, "true or false");
    if (!s)
        return false;
    if (strcmp(s, "true") == 0 || strcmp(s, "True") == 0 || strcmp(s, "TRUE") == 0)
        *dst = true;
    else if (strcmp(s, "false") == 0 || strcmp(s, "False") == 0 || strcmp(s, "FALSE") == 0)
        *dst = false;
    else {
        sc_config_err(c, v, field, "expected true or false, got '%.64s'", s);
        return false;
    }
    return true;
}

bool sc_config_rd_uint(sc_cx *c, const sc_ynode *v, const char *field, uint64_t min,
                       uint64_t max, uint64_t *dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, "a whole number");
    if (!s)
        return false;
    uint64_t x = 0;
    bool ok = *s != 0;
    for (const char *p = s; ok && *p; p++) {
        if (*p < '0' || *p > '9' || x > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            ok = false;
        else
            x = x * 10 + (uint64_t)(*p - '0');
    }
    if (!ok || x < min || x > max) {
        sc_config_err(c, v, field, "expected a whole number from %llu to %llu, got '%.64s'",
                      (unsigned long long)min, (unsigned long long)max, s);
        return false;
    }
    *dst = x;
    return true;
}

bool sc_config_rd_u32(sc_cx *c, const sc_ynode *v, const char *field, uint32_t min,
                      uint32_t max, uint32_t *dst)
{
    uint64_t x;
    if (!v)
        return true;
    if (!sc_config_rd_uint(c, v, field, min, max, &x))
        return false;
    *dst = (uint32_t)x;
    return true;
}

static void size_text(uint64_t b, char *buf, size_t cap)
{
    if (b && b % (1024u * 1024u * 1024u) == 0)
        snprintf(buf, cap, "%lluGiB", (unsigned long long)(b >> 30));
    else if (b && b % (1024u * 1024u) == 0)
        snprintf(buf, cap, "%lluMiB", (unsigned long long)(b >> 20));
    else if (b && b % 1024u == 0)
        snprintf(buf, cap, "%lluKiB", (unsigned long long)(b >> 10));
    else
        snprintf(buf, cap, "%llu", (unsigned long long)b);
}

bool sc_config_rd_size(sc_cx *c, const sc_ynode *v, const char *field, uint64_t min,
                       uint64_t max, uint64_t *dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, "a size");
    if (!s)
        return false;
    uint64_t x;
    char lo[32], hi[32];
    size_text(min, lo, sizeof(lo));
    size_text(max, hi, sizeof(hi));
    if (sc_size_parse(s, &x) < 0) {
        sc_config_err(c, v, field,
                      "'%.64s' is not a size; expected bytes or a number with KiB, MiB or "
                      "GiB, e.g. 64KiB",
                      s);
        return false;
    }
    if (x < min || x > max) {
        sc_config_err(c, v, field, "%.64s is out of range; expected %s to %s", s, lo, hi);
        return false;
    }
    *dst = x;
    return true;
}

bool sc_config_rd_size32(sc_cx *c, const sc_ynode *v, const char *field, uint32_t min,
                         uint32_t max, uint32_t *dst)
{
    uint64_t x;
    if (!v)
        return true;
    if (!sc_config_rd_size(c, v, field, min, max, &x))
        return false;
    *dst = (uint32_t)x;
    return true;
}

bool sc_config_rd_dur(sc_cx *c, const sc_ynode *v, const char *field, uint64_t min_ms,
                      uint64_t *dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, "a duration");
    if (!s)
        return false;
    uint64_t ms;
    if (sc_duration_parse(s, &ms) < 0) {
        const char *hint = "";
        if (strspn(s, "0123456789") == strlen(s) && *s)
            hint = " (a number needs a unit)";
        else if (strchr(s, '.'))
            hint = " (no fractions: write 1500ms, not 1.5s)";
        else if (*s == '-')
            hint = " (durations cannot be negative)";
        sc_config_err(c, v, field,
                      "'%.64s' is not a duration%s; expected e.g. 250ms, 2s, 1m30s, 1h or 0",
                      s, hint);
        return false;
    }
    if (ms < min_ms) {
        char b[32];
        sc_duration_format(min_ms, b, sizeof(b));
        sc_config_err(c, v, field, "%s is too short; expected at least %s", s, b);
        return false;
    }
    *dst = ms;
    return true;
}

bool sc_config_rd_percent(sc_cx *c, const sc_ynode *v, const char *field, bool allow_zero,
                          double *dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, "a percentage");
    if (!s)
        return false;
    char buf[32];
    size_t n = strlen(s);
    double x;
    if (n > 0 && n < sizeof(buf) && s[n - 1] == '%') {
        memcpy(buf, s, n - 1);
        buf[n - 1] = 0;
    } else {
        snprintf(buf, sizeof(buf), "%s", n < sizeof(buf) ? s : "x");
    }
    if (sc_config_decimal(buf, &x) < 0 || x > 100 || (!allow_zero && x <= 0)) {
        sc_config_err(c, v, field, "expected a percentage %s 100, e.g. 50%% or 50, got '%.64s'",
                      allow_zero ? "from 0 to" : "above 0 and at most", s);
        return false;
    }
    *dst = x;
    return true;
}

bool sc_config_rd_ratio(sc_cx *c, const sc_ynode *v, const char *field, double *dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, "a ratio");
    if (!s)
        return false;
    double x;
    if (sc_config_decimal(s, &x) < 0 || x > 1) {
        sc_config_err(c, v, field, "expected a ratio from 0 to 1, e.g. 0.2, got '%.64s'", s);
        return false;
    }
    *dst = x;
    return true;
}

bool sc_config_rd_enum(sc_cx *c, const sc_ynode *v, const char *field,
                       const char *const *names, size_t n, int *dst)
{
    if (!v)
        return true;
    char list[256];
    size_t len = 0;
    list[0] = 0;
    for (size_t i = 0; i < n; i++) {
        int w = snprintf(list + len, sizeof(list) - len, "%s%s", i ? i + 1 == n ? " or " : ", "
                                                                    : "", names[i]);
        if (w > 0 && (size_t)w < sizeof(list) - len)
            len += (size_t)w;
    }
    const char *s = scalar(c, v, field, list);
    if (!s)
        return false;
    for (size_t i = 0; i < n; i++)
        if (strcmp(s, names[i]) == 0) {
            *dst = (int)i;
            return true;
        }
    sc_config_err(c, v, field, "'%.64s' is not valid; expected %s", s, list);
    return false;
}

bool sc_config_rd_addr(sc_cx *c, const sc_ynode *v, const char *field, bool allow_hostname,
                       sc_addr *dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, allow_hostname ? "host:port" : "ip:port");
    if (!s)
        return false;
    sc_addr a;
    const char *why;
    if (sc_addr_parse_why(s, &a, allow_hostname, &why) < 0) {
        sc_config_err(c, v, field, "bad address '%.80s': %s", s, why);
        return false;
    }
    *dst = a;
    return true;
}

char *sc_config_resolve_path(const char *base_dir, const char *p)
{
    if (p[0] == '/' || !base_dir || !base_dir[0] || strcmp(base_dir, ".") == 0)
        return sc_xstrdup(p);
    size_t lb = strlen(base_dir), lp = strlen(p);
    char *r = sc_xcalloc(1, lb + lp + 2);
    memcpy(r, base_dir, lb);
    size_t o = lb;
    if (lb && base_dir[lb - 1] != '/')
        r[o++] = '/';
    memcpy(r + o, p, lp + 1);
    return r;
}

bool sc_config_rd_path(sc_cx *c, const sc_ynode *v, const char *field, char **dst)
{
    if (!v)
        return true;
    const char *s = scalar(c, v, field, "a file path");
    if (!s)
        return false;
    if (!*s) {
        sc_config_err(c, v, field, "the path is empty");
        return false;
    }
    free(*dst);
    *dst = sc_config_resolve_path(c->base_dir, s);
    return true;
}

bool sc_config_rd_str_list(sc_cx *c, const sc_ynode *v, const char *field, char ***dst,
                           size_t *n)
{
    if (!v)
        return true;
    if (v->kind == SC_YN_BAD)
        return false;
    if (sc_config_yaml_is_null(v))
        return true;
    if (v->kind != SC_YN_SEQ) {
        sc_config_err(c, v, field, "expected a list, e.g. [a, b], got %s",
                      v->kind == SC_YN_MAP ? "a mapping" : "a single value");
        return false;
    }
    bool ok = true;
    char **arr = sc_xcalloc(v->n ? v->n : 1, sizeof(*arr));
    size_t k = 0;
    for (size_t i = 0; i < v->n; i++) {
        char f[256];
        sc_config_path_idx(f, sizeof(f), field, i);
        const char *s = scalar(c, v->items[i], f, "a string");
        if (!s) {
            ok = false;
            continue;
        }
        if (!*s) {
            sc_config_err(c, v->items[i], f, "empty string");
            ok = false;
            continue;
        }
        arr[k++] = sc_xstrdup(s);
    }
    for (size_t i = 0; i < *n; i++)
        free((*dst)[i]);
    free(*dst);
    *dst = arr;
    *n = k;
    return ok;
}

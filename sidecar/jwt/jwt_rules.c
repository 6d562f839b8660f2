/*
 * jwt_rules.c: the loaded `inbound.jwt:` section at run time (jwt_config.h):
 * algorithm names, which rule a path falls under, which headers only the
 * sidecar may set, the section as JSON, and freeing it.
 */
#include "jwt/jwt_config.h"

#include "http/hdr.h"

#include <jansson.h>
#include <stdlib.h>

static const struct {
    const char *name;
    uint32_t bit;
} algs[] = {
    {"RS256", SC_JWT_RS256}, {"RS384", SC_JWT_RS384}, {"RS512", SC_JWT_RS512},
    {"ES256", SC_JWT_ES256}, {"ES384", SC_JWT_ES384}, {"ES512", SC_JWT_ES512},
    {"HS256", SC_JWT_HS256}, {"HS384", SC_JWT_HS384}, {"HS512", SC_JWT_HS512},
};

const char *sc_jwt_alg_name(uint32_t alg)
{
    for (size_t i = 0; i < SC_ARRAY_LEN(algs); i++)
        if (algs[i].bit == alg)
            return algs[i].name;
    return NULL;
}

uint32_t sc_jwt_alg_from_name(const char *s, size_t len)
{
    for (size_t i = 0; i < SC_ARRAY_LEN(algs); i++)
        if (strlen(algs[i].name) == len && memcmp(algs[i].name, s, len) == 0)
            return algs[i].bit;
    return 0;
}

const char *sc_jwt_mode_name(sc_jwt_mode m)
{
    switch (m) {
    case SC_JWT_MODE_REQUIRED: return "required";
    case SC_JWT_MODE_OPTIONAL: return "optional";
    case SC_JWT_MODE_OFF: return "off";
    }
    return "?";
}

static void free_strv(char **v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

void sc_jwt_config_free(sc_jwt_config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_issuers; i++) {
        sc_jwt_issuer_cfg *is = &c->issuers[i];
        free(is->name);
        free(is->issuer);
        free_strv(is->audiences, is->n_audiences);
        free(is->jwks_file);
        free(is->jwks_url);
        free(is->jwks_ca_file);
    }
    free(c->issuers);
    for (size_t i = 0; i < c->n_rules; i++) {
        sc_jwt_rule *r = &c->rules[i];
        free(r->prefix);
        free(r->header);
        for (size_t k = 0; k < r->n_claims; k++) {
            free(r->claims[k].name);
            free_strv(r->claims[k].values, r->claims[k].n_values);
        }
        free(r->claims);
        free_strv(r->scopes, r->n_scopes);
        for (size_t k = 0; k < r->n_forward; k++) {
            free(r->forward[k].claim);
            free(r->forward[k].header);
        }
        free(r->forward);
    }
    free(c->rules);
    free(c->realm);
    free(c);
}

/* ---- paths ---- */

static bool unreserved(int c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.' ||
           c == '_' || c == '~';
}

long sc_jwt_path_normalize(const char *path, size_t len, char *out, size_t cap)
{
    if (!len || path[0] != '/' || cap == 0)
        return -1;
    size_t k = 0;
    size_t i = 0;
    while (i < len) {
        /* one segment: path[i] is '/' */
        while (i < len && path[i] == '/')
            i++; /* "//" merged */
        size_t seg_start = k;
        if (k + 1 > cap)
            return -1;
        out[k++] = '/';
        while (i < len && path[i] != '/') {
            char ch = path[i];
            if (ch == '%' && i + 2 < len && sc_hexval(path[i + 1]) >= 0 && sc_hexval(path[i + 2]) >= 0) {
                int v = sc_hexval(path[i + 1]) * 16 + sc_hexval(path[i + 2]);
                if (unreserved(v)) {
                    ch = (char)v;
                    i += 2;
                }
            }
            if (k + 1 > cap)
                return -1;
            out[k++] = ch;
            i++;
        }
        size_t sl = k - seg_start - 1;
        const char *seg = out + seg_start + 1;
        if (sl == 1 && seg[0] == '.') {
            k = seg_start; /* "." */
        } else if (sl == 2 && seg[0] == '.' && seg[1] == '.') {
            k = seg_start; /* ".." drops the segment before it */
            while (k > 0 && out[k - 1] != '/')
                k--;
            if (k > 0)
                k--;
        }
    }
    if (k == 0 || (len && path[len - 1] == '/' && out[k - 1] != '/')) {
        if (k + 1 > cap)
            return -1;
        out[k++] = '/'; /* a trailing slash is kept: "/a/" and "/a" are different paths */
    }
    return (long)k;
}

bool sc_jwt_path_is_normal(const char *path, size_t len)
{
    if (!len || path[0] != '/' || len > 8000)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = path[i];
        if (ch == '%')
            return false;
        if (ch == '/' && i + 1 < len && (path[i + 1] == '/' || path[i + 1] == '.'))
            return false;
    }
    return true;
}

static const sc_jwt_rule *longest(const sc_jwt_config *c, const char *p, size_t len)
{
    const sc_jwt_rule *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < c->n_rules; i++) {
        const sc_jwt_rule *r = &c->rules[i];
        size_t pl = strlen(r->prefix);
        if (pl <= len && memcmp(p, r->prefix, pl) == 0 && (!best || pl > best_len)) {
            best = r;
            best_len = pl;
        }
    }
    return best;
}

/* required (0) > optional (1) > off (2), and no rule is like off. */
static int strictness(const sc_jwt_rule *r)
{
    return r ? 2 - (int)r->mode : -1;
}

const sc_jwt_rule *sc_jwt_rule_for_path(const sc_jwt_config *c, const char *path, size_t len)
{
    if (!c || !c->n_rules)
        return NULL;
    const char *q = memchr(path, '?', len);
    if (q)
        len = (size_t)(q - path);
    const sc_jwt_rule *raw = longest(c, path, len);
    if (sc_jwt_path_is_normal(path, len))
        return raw; /* the usual path: normalising would give it back unchanged */
    char buf[8192];
    long n = sc_jwt_path_normalize(path, len, buf, sizeof(buf));
    const sc_jwt_rule *norm = n >= 0 ? longest(c, buf, (size_t)n) : NULL;
    if (n < 0) {
        /* not normalisable (too long, not origin-form): the strictest rule with any prefix of "/" applies */
        norm = longest(c, "/", 1);
    }
    return strictness(norm) > strictness(raw) ? norm : raw;
}

/* ---- headers ---- */

bool sc_jwt_header_reserved(const sc_jwt_config *c, const char *name, size_t len)
{
    /* asked for every inbound header line: the lengths rule most out at once */
    if (!c || !(c->forward_len_mask & (1ull << SC_MIN(len, (size_t)63))))
        return false;
    for (size_t i = 0; i < c->n_rules; i++)
        for (size_t k = 0; k < c->rules[i].n_forward; k++)
            if (c->rules[i].forward[k].header_len == len && sc_hdr_aliases(name, len, c->rules[i].forward[k].header))
                return true;
    return false;
}

bool sc_jwt_header_stripped(const sc_jwt_rule *r, const char *name, size_t len)
{
    return r && r->mode != SC_JWT_MODE_OFF && !r->keep_token && sc_hdr_aliases(name, len, r->header);
}

/* ---- JSON ---- */

static json_t *jstrv(char **v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *jdur(uint64_t ms)
{
    char b[32];
    if (ms % 1000)
        snprintf(b, sizeof(b), "%llums", (unsigned long long)ms);
    else
        snprintf(b, sizeof(b), "%llus", (unsigned long long)(ms / 1000));
    return json_string(b);
}

json_t *sc_jwt_config_to_json(const sc_jwt_config *c)
{
    if (!c)
        return json_null();
    json_t *o = json_object();
    json_t *iss = json_array();
    for (size_t i = 0; i < c->n_issuers; i++) {
        const sc_jwt_issuer_cfg *is = &c->issuers[i];
        json_t *j = json_object();
        json_object_set_new(j, "name", json_string(is->name));
        json_object_set_new(j, "issuer", json_string(is->issuer));
        json_object_set_new(j, "audiences", jstrv(is->audiences, is->n_audiences));
        json_t *a = json_array();
        for (uint32_t b = 1; b <= SC_JWT_HS512; b <<= 1)
            if (is->algorithms & b)
                json_array_append_new(a, json_string(sc_jwt_alg_name(b)));
        json_object_set_new(j, "algorithms", a);
        json_object_set_new(j, "jwks_file", is->jwks_file ? json_string(is->jwks_file) : json_null());
        json_object_set_new(j, "jwks_url", is->jwks_url ? json_string(is->jwks_url) : json_null());
        json_object_set_new(j, "jwks_ca", is->jwks_ca_file ? json_string(is->jwks_ca_file) : json_null());
        json_object_set_new(j, "refresh", jdur(is->refresh_ms));
        json_object_set_new(j, "refetch_min_interval", jdur(is->refetch_min_ms));
        json_object_set_new(j, "fetch_timeout", jdur(is->fetch_timeout_ms));
        json_object_set_new(j, "leeway", jdur(is->leeway_ms));
        json_object_set_new(j, "require_exp", json_boolean(is->require_exp));
        json_array_append_new(iss, j);
    }
    json_object_set_new(o, "issuers", iss);
    json_t *rules = json_array();
    for (size_t i = 0; i < c->n_rules; i++) {
        const sc_jwt_rule *r = &c->rules[i];
        json_t *j = json_object();
        json_object_set_new(j, "prefix", json_string(r->prefix));
        json_object_set_new(j, "mode", json_string(sc_jwt_mode_name(r->mode)));
        json_object_set_new(j, "header", json_string(r->header));
        json_t *names = json_array();
        for (size_t k = 0; k < c->n_issuers; k++)
            if (r->issuers & (1u << k))
                json_array_append_new(names, json_string(c->issuers[k].name));
        json_object_set_new(j, "issuers", names);
        json_t *claims = json_object();
        for (size_t k = 0; k < r->n_claims; k++)
            json_object_set_new(claims, r->claims[k].name,
                                r->claims[k].n_values ? jstrv(r->claims[k].values, r->claims[k].n_values)
                                                      : json_true());
        json_object_set_new(j, "claims", claims);
        json_object_set_new(j, "scopes", jstrv(r->scopes, r->n_scopes));
        json_t *fwd = json_object();
        for (size_t k = 0; k < r->n_forward; k++)
            json_object_set_new(fwd, r->forward[k].claim, json_string(r->forward[k].header));
        json_object_set_new(j, "forward", fwd);
        json_object_set_new(j, "keep_token", json_boolean(r->keep_token));
        json_array_append_new(rules, j);
    }
    json_object_set_new(o, "rules", rules);
    json_object_set_new(o, "realm", c->realm ? json_string(c->realm) : json_null());
    json_object_set_new(o, "max_token_bytes", json_integer(c->max_token_bytes));
    json_object_set_new(o, "cache_entries", json_integer(c->cache_entries));
    return o;
}

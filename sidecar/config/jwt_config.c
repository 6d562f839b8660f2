/*
 * jwt_config.c: the `inbound.jwt:` section (jwt/jwt_config.h,
 * docs/configuration.md "inbound.jwt"). Strict like the rest of the
 * loader: every problem is reported with its file, line and field. A
 * jwks_file is read and parsed now, so `sidecar --check` reports a broken
 * key set (and one with no key for the issuer's algorithms) before a
 * deployment.
 */
#include "config/config_internal.h"

#include "jwt/jwks.h"
#include "jwt/jwt_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#define FIELDS(c, m, path, keys, out) sc_config_fields((c), (m), (path), (keys), SC_ARRAY_LEN(keys), (out))

/* Headers a claim may never be forwarded as: framing, routing, hop-by-hop,
 * credentials, and what the sidecar sets itself. */
static const char *const refused_headers[] = {
    "host", "content-length", "content-type", "transfer-encoding", "connection", "te", "upgrade", "keep-alive",
    "proxy-connection", "proxy-authorization", "authorization", "cookie", "expect", "trailer", "x-sidecar-attempt",
    "grpc-timeout", "grpc-encoding", "grpc-accept-encoding",
};

static bool is_header_name(const char *h)
{
    return *h && strspn(h, "abcdefghijklmnopqrstuvwxyz0123456789-") == strlen(h) && h[0] != '-';
}

static bool printable(const char *s)
{
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return false;
    return true;
}

/* http:// only to a loopback host: keys fetched in cleartext over a network
 * could be replaced by anyone on the path. */
static bool http_loopback(const char *url)
{
    const char *h = url + 7;
    size_t n = strcspn(h, "/?#");
    static const char *const hosts[] = {"127.0.0.1", "localhost", "[::1]"};
    for (size_t i = 0; i < SC_ARRAY_LEN(hosts); i++) {
        size_t hl = strlen(hosts[i]);
        if (n >= hl && strncasecmp(h, hosts[i], hl) == 0 && (n == hl || h[hl] == ':'))
            return true;
    }
    return false;
}

static bool is_url(const char *u)
{
    const char *rest = strncmp(u, "http://", 7) == 0 ? u + 7 : strncmp(u, "https://", 8) == 0 ? u + 8 : NULL;
    if (!rest || strlen(u) > 1024 || !*rest || strchr("/:?#", *rest))
        return false;
    for (const unsigned char *p = (const unsigned char *)u; *p; p++)
        if (*p <= ' ' || *p == 0x7f)
            return false;
    return true;
}

static void parse_algorithms(sc_cx *c, const sc_ynode *v, const char *path, sc_jwt_issuer_cfg *is)
{
    char field[192];
    sc_config_path(field, sizeof(field), path, "algorithms");
    char **names = NULL;
    size_t n = 0;
    if (!sc_config_rd_str_list(c, v, field, &names, &n))
        goto out;
    for (size_t i = 0; i < n; i++) {
        char f[208];
        sc_config_path_idx(f, sizeof(f), field, i);
        uint32_t b = sc_jwt_alg_from_name(names[i], strlen(names[i]));
        if (strcasecmp(names[i], "none") == 0)
            sc_config_err(c, v->items[i], f, "alg none (unsigned tokens) is never accepted");
        else if (!b)
            sc_config_err(c, v->items[i], f,
                          "'%.32s' is not a supported algorithm; expected RS256, RS384, RS512, ES256, ES384, ES512, "
                          "HS256, HS384 or HS512",
                          names[i]);
        else if (is->algorithms & b)
            sc_config_err(c, v->items[i], f, "%s is listed twice", names[i]);
        is->algorithms |= b;
    }
    if (!n && v)
        sc_config_err(c, v, field, "list at least one algorithm");
out:
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

/* The keys of a jwks_file, read now: broken files and files without a key
 * for the issuer's algorithms are load errors. */
static void check_jwks_file(sc_cx *c, const sc_ynode *at, const char *field, const sc_jwt_issuer_cfg *is)
{
    sc_jwks *k = NULL;
    char err[512], notes[512];
    if (sc_jwks_load_file(is->jwks_file, true, &k, notes, sizeof(notes), err, sizeof(err)) < 0) {
        sc_config_err(c, at, field, "%s", err);
        return;
    }
    uint32_t can = 0;
    for (size_t i = 0; i < k->n; i++)
        can |= k->keys[i].algs;
    if (is->algorithms && !(can & is->algorithms))
        sc_config_err(c, at, field, "%s: none of its keys verifies the issuer's algorithms%s%s", is->jwks_file,
                      notes[0] ? " (" : "", notes[0] ? notes : "");
    sc_jwks_unref(k);
}

static void parse_issuer(sc_cx *c, const sc_ynode *m, const char *path, sc_jwt_issuer_cfg *is)
{
    static const char *const keys[] = {"name",  "issuer",        "audiences",           "algorithms",
                                       "jwks_file", "jwks_url",  "jwks_ca",             "refresh",
                                       "refetch_min_interval", "fetch_timeout", "leeway", "require_exp"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[SC_ARRAY_LEN(keys)][192];
    is->refresh_ms = SC_JWT_REFRESH_DEFAULT_MS;
    is->refetch_min_ms = SC_JWT_REFETCH_DEFAULT_MS;
    is->fetch_timeout_ms = SC_JWT_FETCH_TIMEOUT_DEFAULT_MS;
    is->leeway_ms = SC_JWT_LEEWAY_DEFAULT_MS;
    is->require_exp = true;
    is->line = m->line;
    if (!FIELDS(c, m, path, keys, f))
        return;
    for (size_t i = 0; i < SC_ARRAY_LEN(keys); i++)
        sc_config_path(fp[i], sizeof(fp[i]), path, keys[i]);
    sc_config_require(c, m, path, "name", f[0]);
    sc_config_require(c, m, path, "issuer", f[1]);
    sc_config_require(c, m, path, "algorithms", f[3]);
    if (sc_config_rd_str(c, f[0], fp[0], false, &is->name) && is->name && !sc_config_is_name(is->name, 64))
        sc_config_err(c, f[0], fp[0], "'%.64s' is not a name ([A-Za-z0-9_.-], at most 64)", is->name);
    if (sc_config_rd_str(c, f[1], fp[1], false, &is->issuer) && is->issuer &&
        (!printable(is->issuer) || strlen(is->issuer) > 1024))
        sc_config_err(c, f[1], fp[1], "control characters or more than 1024 characters");
    sc_config_rd_str_list(c, f[2], fp[2], &is->audiences, &is->n_audiences);
    parse_algorithms(c, f[3], path, is);
    if (f[4] && f[5])
        sc_config_err(c, f[5], fp[5], "give jwks_file or jwks_url, not both");
    else if (!f[4] && !f[5])
        sc_config_err_line(c, m->line, fp[4], "an issuer needs its keys: jwks_file or jwks_url");
    if (f[5] && sc_config_rd_str(c, f[5], fp[5], false, &is->jwks_url) && is->jwks_url) {
        if (!is_url(is->jwks_url))
            sc_config_err(c, f[5], fp[5], "'%.64s' is not an http:// or https:// URL", is->jwks_url);
        else if (strncmp(is->jwks_url, "http://", 7) == 0 && !http_loopback(is->jwks_url))
            sc_config_err(c, f[5], fp[5],
                          "keys are fetched over https:// (http:// only from 127.0.0.1, [::1] or localhost)");
        if (is->algorithms & SC_JWT_ALGS_HMAC)
            sc_config_err(c, f[3], fp[3], "HMAC secrets (HS*) are never fetched from a URL; use jwks_file");
    }
    sc_config_rd_path(c, f[6], fp[6], &is->jwks_ca_file);
    if (f[6] && (!is->jwks_url || strncmp(is->jwks_url, "https://", 8) != 0))
        sc_config_err(c, f[6], fp[6], "only with an https:// jwks_url");
    if (sc_config_rd_dur(c, f[7], fp[7], SC_JWT_REFRESH_MIN_MS, &is->refresh_ms) &&
        is->refresh_ms > SC_JWT_REFRESH_MAX_MS)
        sc_config_err(c, f[7], fp[7], "at most 24h");
    if (sc_config_rd_dur(c, f[8], fp[8], SC_JWT_REFETCH_MIN_MS, &is->refetch_min_ms) &&
        is->refetch_min_ms > is->refresh_ms)
        sc_config_err(c, f[8], fp[8], "longer than refresh; an unknown kid would wait for the next refresh anyway");
    if (sc_config_rd_dur(c, f[9], fp[9], 1, &is->fetch_timeout_ms) &&
        is->fetch_timeout_ms > SC_JWT_FETCH_TIMEOUT_MAX_MS)
        sc_config_err(c, f[9], fp[9], "at most 60s");
    for (size_t i = 7; i <= 9; i++)
        if (f[i] && f[4])
            sc_config_err(c, f[i], fp[i], "only with jwks_url (a jwks_file is reloaded when it changes)");
    if (sc_config_rd_dur(c, f[10], fp[10], 0, &is->leeway_ms) && is->leeway_ms > SC_JWT_LEEWAY_MAX_MS)
        sc_config_err(c, f[10], fp[10], "at most 5m; clocks that far apart need fixing, not leeway");
    sc_config_rd_bool(c, f[11], fp[11], &is->require_exp);
    if (f[4] && sc_config_rd_path(c, f[4], fp[4], &is->jwks_file) && is->jwks_file)
        check_jwks_file(c, f[4], fp[4], is);
}

static void parse_claims(sc_cx *c, const sc_ynode *v, const char *field, sc_jwt_rule *r)
{
    if (!v || sc_config_yaml_is_null(v) || v->kind == SC_YN_BAD)
        return;
    if (v->kind != SC_YN_MAP) {
        sc_config_err(c, v, field, "expected a mapping of claim names to a value, a list of values or nothing");
        return;
    }
    r->claims = sc_xcalloc(v->n / 2 + 1, sizeof(*r->claims));
    for (size_t i = 0; i + 1 < v->n; i += 2) {
        const sc_ynode *k = v->items[i], *val = v->items[i + 1];
        char f[256];
        sc_config_path(f, sizeof(f), field, k->str ? k->str : "?");
        if (!k->str || !*k->str || strlen(k->str) > SC_JWT_MAX_CLAIM_NAME || !printable(k->str)) {
            sc_config_err(c, k, f, "a claim name of 1 to %d printable characters", SC_JWT_MAX_CLAIM_NAME);
            continue;
        }
        sc_jwt_claim_req *q = &r->claims[r->n_claims++];
        q->name = sc_xstrdup(k->str);
        if (sc_config_yaml_is_null(val))
            continue;
        if (val->kind == SC_YN_SCALAR) {
            q->values = sc_xcalloc(1, sizeof(char *));
            if (sc_config_rd_str(c, val, f, true, &q->values[0]))
                q->n_values = 1;
        } else {
            sc_config_rd_str_list(c, val, f, &q->values, &q->n_values);
        }
    }
}

static void parse_forward(sc_cx *c, const sc_ynode *v, const char *field, sc_jwt_rule *r, const char *idh)
{
    if (!v || sc_config_yaml_is_null(v) || v->kind == SC_YN_BAD)
        return;
    if (v->kind != SC_YN_MAP) {
        sc_config_err(c, v, field, "expected a mapping of claim names to header names, e.g. {sub: x-jwt-sub}");
        return;
    }
    if (v->n / 2 > SC_JWT_MAX_FORWARD) {
        sc_config_err(c, v, field, "at most %d claims are forwarded per rule", SC_JWT_MAX_FORWARD);
        return;
    }
    r->forward = sc_xcalloc(v->n / 2 + 1, sizeof(*r->forward));
    for (size_t i = 0; i + 1 < v->n; i += 2) {
        const sc_ynode *k = v->items[i], *val = v->items[i + 1];
        char f[256];
        sc_config_path(f, sizeof(f), field, k->str ? k->str : "?");
        char *h = NULL;
        if (!k->str || !*k->str || strlen(k->str) > SC_JWT_MAX_CLAIM_NAME || !printable(k->str)) {
            sc_config_err(c, k, f, "a claim name of 1 to %d printable characters", SC_JWT_MAX_CLAIM_NAME);
            continue;
        }
        if (!sc_config_rd_str(c, val, f, false, &h) || !h)
            continue;
        bool bad = !is_header_name(h) || strlen(h) > 128;
        for (size_t j = 0; j < SC_ARRAY_LEN(refused_headers) && !bad; j++)
            bad = strcmp(h, refused_headers[j]) == 0;
        if (bad || strcmp(h, r->header ? r->header : "authorization") == 0 || (idh && strcmp(h, idh) == 0)) {
            sc_config_err(c, val, f,
                          "'%.64s' cannot carry a claim: use a lower-case header name of letters, digits and '-' "
                          "that is not a framing, routing, credential or hop-by-hop header, the token's header or "
                          "tls.identity_header",
                          h);
            free(h);
            continue;
        }
        for (size_t j = 0; j < r->n_forward; j++)
            if (strcmp(r->forward[j].header, h) == 0) {
                sc_config_err(c, val, f, "header '%.64s' already carries claim '%.64s'", h, r->forward[j].claim);
                bad = true;
            }
        if (bad) {
            free(h);
            continue;
        }
        r->forward[r->n_forward].claim = sc_xstrdup(k->str);
        r->forward[r->n_forward].header_len = strlen(h);
        r->forward[r->n_forward++].header = h;
    }
}

static void parse_rule(sc_cx *c, const sc_ynode *m, const char *path, const sc_jwt_config *jc, sc_jwt_rule *r,
                       const char *idh)
{
    static const char *const keys[] = {"prefix", "mode",    "header",  "issuers",
                                       "claims", "scopes",  "forward", "keep_token"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[SC_ARRAY_LEN(keys)][192];
    r->keep_token = true;
    r->line = m->line;
    r->issuers = jc->n_issuers >= 32 ? UINT32_MAX : (1u << jc->n_issuers) - 1;
    if (!FIELDS(c, m, path, keys, f))
        return;
    for (size_t i = 0; i < SC_ARRAY_LEN(keys); i++)
        sc_config_path(fp[i], sizeof(fp[i]), path, keys[i]);
    sc_config_require(c, m, path, "prefix", f[0]);
    if (sc_config_rd_str(c, f[0], fp[0], false, &r->prefix) && r->prefix &&
        (r->prefix[0] != '/' || strpbrk(r->prefix, "?# \t") || !printable(r->prefix) || strlen(r->prefix) > 1024))
        sc_config_err(c, f[0], fp[0], "'%.64s' is not a path prefix: it starts with '/', has no '?', '#' or blanks",
                      r->prefix);
    static const char *const modes[] = {"required", "optional", "off"};
    int mode = SC_JWT_MODE_REQUIRED;
    if (sc_config_rd_enum(c, f[1], fp[1], modes, SC_ARRAY_LEN(modes), &mode))
        r->mode = (sc_jwt_mode)mode;
    if (sc_config_rd_str(c, f[2], fp[2], false, &r->header) && r->header && !is_header_name(r->header))
        sc_config_err(c, f[2], fp[2], "'%.64s' is not a header name; use lower-case letters, digits and '-'",
                      r->header);
    if (!r->header)
        r->header = sc_xstrdup("authorization");
    r->header_len = strlen(r->header);
    if (f[3]) {
        char **names = NULL;
        size_t n = 0;
        if (sc_config_rd_str_list(c, f[3], fp[3], &names, &n)) {
            r->issuers = 0;
            for (size_t i = 0; i < n; i++) {
                size_t k = 0;
                while (k < jc->n_issuers && (!jc->issuers[k].name || strcmp(jc->issuers[k].name, names[i]) != 0))
                    k++;
                char fi[208];
                sc_config_path_idx(fi, sizeof(fi), fp[3], i);
                if (k == jc->n_issuers)
                    sc_config_err(c, f[3]->items[i], fi, "no issuer is named '%.64s'", names[i]);
                else
                    r->issuers |= 1u << k;
            }
            if (!n)
                sc_config_err(c, f[3], fp[3], "an empty list accepts no token; leave it out to accept every issuer");
        }
        for (size_t i = 0; i < n; i++)
            free(names[i]);
        free(names);
    }
    parse_claims(c, f[4], fp[4], r);
    if (sc_config_rd_str_list(c, f[5], fp[5], &r->scopes, &r->n_scopes))
        for (size_t i = 0; i < r->n_scopes; i++)
            if (strpbrk(r->scopes[i], " \t") || !printable(r->scopes[i]))
                sc_config_err(c, f[5], fp[5], "scope '%.64s' has blanks or control characters (one scope per item)",
                              r->scopes[i]);
    parse_forward(c, f[6], fp[6], r, idh);
    sc_config_rd_bool(c, f[7], fp[7], &r->keep_token);
    if (r->mode == SC_JWT_MODE_OFF)
        for (size_t i = 3; i < SC_ARRAY_LEN(keys); i++)
            if (f[i])
                sc_config_err(c, f[i], fp[i], "mode off does not look at the token; %s does not apply", keys[i]);
}

void sc_config_parse_jwt(sc_cx *c, const sc_ynode *m, sc_config *cfg)
{
    static const char *const keys[] = {"issuers", "rules", "realm", "max_token_bytes", "cache_entries"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    sc_jwt_config *jc = sc_xcalloc(1, sizeof(*jc));
    cfg->inbound.jwt = jc;
    jc->max_token_bytes = SC_JWT_TOKEN_BYTES_DEFAULT;
    jc->cache_entries = SC_JWT_CACHE_DEFAULT;
    if (!FIELDS(c, m, "inbound.jwt", keys, f))
        return;
    sc_config_require(c, m, "inbound.jwt", "rules", f[1]);
    const sc_ynode *iv = f[0], *rv = f[1];
    if (iv && iv->kind == SC_YN_SEQ) {
        if (iv->n > SC_JWT_MAX_ISSUERS)
            sc_config_err(c, iv, "inbound.jwt.issuers", "at most %d issuers", SC_JWT_MAX_ISSUERS);
        size_t n = SC_MIN(iv->n, (size_t)SC_JWT_MAX_ISSUERS);
        jc->issuers = sc_xcalloc(n ? n : 1, sizeof(*jc->issuers));
        for (size_t i = 0; i < n; i++) {
            char p[64];
            sc_config_path_idx(p, sizeof(p), "inbound.jwt.issuers", i);
            sc_jwt_issuer_cfg *is = &jc->issuers[jc->n_issuers++];
            parse_issuer(c, iv->items[i], p, is);
            for (size_t k = 0; k + 1 < jc->n_issuers; k++) {
                const sc_jwt_issuer_cfg *o = &jc->issuers[k];
                if (is->name && o->name && strcmp(is->name, o->name) == 0)
                    sc_config_err_line(c, is->line, p, "issuer name '%.64s' is already used (line %u)", is->name,
                                       o->line);
                if (is->issuer && o->issuer && strcmp(is->issuer, o->issuer) == 0)
                    sc_config_err_line(c, is->line, p,
                                       "iss '%.64s' is already configured (line %u); one issuer per iss value",
                                       is->issuer, o->line);
            }
        }
    } else if (iv && !sc_config_yaml_is_null(iv) && iv->kind != SC_YN_BAD) {
        sc_config_err(c, iv, "inbound.jwt.issuers", "expected a list of issuers");
    }
    if (rv && rv->kind == SC_YN_SEQ) {
        if (rv->n > SC_JWT_MAX_RULES)
            sc_config_err(c, rv, "inbound.jwt.rules", "at most %d rules", SC_JWT_MAX_RULES);
        size_t n = SC_MIN(rv->n, (size_t)SC_JWT_MAX_RULES);
        jc->rules = sc_xcalloc(n ? n : 1, sizeof(*jc->rules));
        bool needs_issuer = false;
        for (size_t i = 0; i < n; i++) {
            char p[64];
            sc_config_path_idx(p, sizeof(p), "inbound.jwt.rules", i);
            sc_jwt_rule *r = &jc->rules[jc->n_rules++];
            parse_rule(c, rv->items[i], p, jc, r, cfg->tls.identity_header);
            needs_issuer |= r->mode != SC_JWT_MODE_OFF;
            for (size_t k = 0; k < r->n_forward; k++)
                jc->forward_len_mask |= 1ull << SC_MIN(r->forward[k].header_len, (size_t)63);
            for (size_t k = 0; k + 1 < jc->n_rules; k++)
                if (r->prefix && jc->rules[k].prefix && strcmp(r->prefix, jc->rules[k].prefix) == 0)
                    sc_config_err_line(c, r->line, p, "prefix '%.64s' already has a rule (line %u)", r->prefix,
                                       jc->rules[k].line);
        }
        if (!n)
            sc_config_err(c, rv, "inbound.jwt.rules", "list at least one rule");
        if (needs_issuer && !jc->n_issuers && !(iv && iv->kind == SC_YN_BAD))
            sc_config_err_line(c, m->line, "inbound.jwt.issuers",
                               "rules that look at tokens need at least one issuer");
    } else if (rv && rv->kind != SC_YN_BAD) {
        sc_config_err(c, rv, "inbound.jwt.rules", "expected a list of rules");
    }
    if (sc_config_rd_str(c, f[2], "inbound.jwt.realm", false, &jc->realm) && jc->realm && !printable(jc->realm))
        sc_config_err(c, f[2], "inbound.jwt.realm", "control characters");
    if (!jc->realm && cfg->service.name)
        jc->realm = sc_xstrdup(cfg->service.name);
    sc_config_rd_size32(c, f[3], "inbound.jwt.max_token_bytes", SC_JWT_TOKEN_BYTES_MIN, SC_JWT_TOKEN_BYTES_MAX,
                        &jc->max_token_bytes);
    sc_config_rd_u32(c, f[4], "inbound.jwt.cache_entries", 0, SC_JWT_CACHE_MAX, &jc->cache_entries);
}

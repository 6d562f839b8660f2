/*
 * config/ratelimit.c: the `rate_limits:` lists (inbound in sidecar.yaml and
 * per upstream policy) and the `redis:` section of sidecar.yaml, their
 * checks across files, and their JSON (admin /config). The runtime lives
 * in sidecar/ratelimit/.
 */
#include "config/config_internal.h"
#include "ratelimit/descriptor.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define FIELDS(c, m, path, keys, out) \
    sc_config_fields((c), (m), (path), (keys), SC_ARRAY_LEN(keys), (out))

/* Bounds of the values (docs/configuration.md, "rate_limits"). */
#define RL_MAX_COUNT 1000000000ull          /* requests per period */
#define RL_MAX_PERIOD_MS (24ull * 3600 * 1000)
#define RL_MAX_BURST 1000000000ull
#define RL_MAX_TOLERANCE_MS (30ull * 24 * 3600 * 1000) /* burst x interval: a month of debt */
#define RL_DEFAULT_MAX_KEYS 10000u
#define RL_MAX_MAX_KEYS 10000000u
#define RL_MAX_NAME 64                      /* header / claim names in keys */
#define RL_MAX_PREFIX 1024
#define RL_MAX_TIMEOUT_MS 10000u

static const char *const scope_names[] = {"local", "global"};
static const char *const on_error_names[] = {"allow", "deny"};
static const char *const missing_names[] = {"share", "skip"};

static const char *const key_kind_names[] = {
    [SC_RL_KEY_ROUTE] = "route",   [SC_RL_KEY_CALLER] = "caller", [SC_RL_KEY_HEADER] = "header",
    [SC_RL_KEY_CLAIM] = "claim",   [SC_RL_KEY_METHOD] = "method", [SC_RL_KEY_PATH] = "path",
};

const char *sc_config_rl_key_kind_name(sc_rl_key_kind k)
{
    return (unsigned)k < SC_ARRAY_LEN(key_kind_names) ? key_kind_names[k] : "?";
}

/* "100/s", "5/m", "1000/h", "10/100ms", "600/1m": count per period. */
int sc_config_rl_rate_parse(const char *s, uint64_t *count, uint64_t *period_ms)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || strspn(s, "0123456789") != (size_t)(slash - s) ||
        slash - s > 10)
        return -EINVAL;
    uint64_t n = strtoull(s, NULL, 10);
    const char *u = slash + 1;
    uint64_t ms;
    if (!strcmp(u, "s"))
        ms = 1000;
    else if (!strcmp(u, "m"))
        ms = 60000;
    else if (!strcmp(u, "h"))
        ms = 3600000;
    else if (sc_duration_parse(u, &ms) < 0)
        return -EINVAL;
    if (n == 0 || n > RL_MAX_COUNT || ms == 0 || ms > RL_MAX_PERIOD_MS)
        return -ERANGE;
    /* One request per microsecond at most: the emission interval is kept in
     * nanoseconds locally and in microseconds in Redis. */
    if (n > ms * 1000)
        return -ERANGE;
    *count = n;
    *period_ms = ms;
    return 0;
}

/* Why a header name cannot key a limit, or NULL. `lname` is lower-case. */
static const char *header_name_problem(const char *lname)
{
    size_t n = strlen(lname);
    if (n == 0)
        return "names no header";
    if (lname[0] == ':')
        return "is a pseudo-header; use key: method or path (or header:host for the authority)";
    if (n > RL_MAX_NAME || strspn(lname, "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~") != n)
        return "is not a header name (1-64 letters, digits and !#$%&'*+-.^_`|~)";
    return NULL;
}

static const char *claim_name_problem(const char *name)
{
    size_t n = strlen(name);
    if (n == 0)
        return "names no claim";
    if (n > RL_MAX_NAME)
        return "is longer than 64 bytes";
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)name[i] <= 0x20 || name[i] == 0x7f)
            return "contains a space or a control character";
    return NULL;
}

/* One entry of `key:`: "route", "caller", "method", "path", "header:NAME", "claim:NAME". */
static bool parse_key_part(sc_cx *c, const sc_ynode *v, const char *field, sc_rl_key_part *out)
{
    char *s = NULL;
    if (!sc_config_rd_str(c, v, field, false, &s))
        return false;
    bool ok = true;
    char *colon = strchr(s, ':');
    if (colon) {
        *colon = 0;
        const char *arg = colon + 1;
        if (!strcmp(s, "header")) {
            char *l = sc_xstrdup(arg);
            for (char *p = l; *p; p++)
                if (*p >= 'A' && *p <= 'Z')
                    *p = (char)(*p + 32);
            const char *why = header_name_problem(l);
            if (why) {
                sc_config_err(c, v, field, "header '%.64s' %s", arg, why);
                free(l);
                ok = false;
            } else {
                *out = (sc_rl_key_part){SC_RL_KEY_HEADER, l};
            }
        } else if (!strcmp(s, "claim")) {
            const char *why = claim_name_problem(arg);
            if (why) {
                sc_config_err(c, v, field, "claim '%.64s' %s", arg, why);
                ok = false;
            } else {
                *out = (sc_rl_key_part){SC_RL_KEY_CLAIM, sc_xstrdup(arg)};
            }
        } else {
            sc_config_err(c, v, field,
                          "'%.32s:' is not a key kind; expected header:NAME or claim:NAME", s);
            ok = false;
        }
    } else {
        static const sc_rl_key_kind plain[] = {SC_RL_KEY_ROUTE, SC_RL_KEY_CALLER,
                                               SC_RL_KEY_METHOD, SC_RL_KEY_PATH};
        size_t i = 0;
        while (i < SC_ARRAY_LEN(plain) && strcmp(s, key_kind_names[plain[i]]))
            i++;
        if (i < SC_ARRAY_LEN(plain)) {
            *out = (sc_rl_key_part){plain[i], NULL};
        } else {
            sc_config_err(c, v, field,
                          "'%.64s' is not a key; expected route, caller, method, path, "
                          "header:NAME or claim:NAME",
                          s);
            ok = false;
        }
    }
    free(s);
    return ok;
}

static bool same_part(const sc_rl_key_part *a, const sc_rl_key_part *b)
{
    return a->kind == b->kind && (!a->arg || !b->arg ? a->arg == b->arg : !strcmp(a->arg, b->arg));
}

static void parse_key(sc_cx *c, const sc_ynode *v, const char *field, sc_rate_limit *l)
{
    if (v->kind == SC_YN_BAD)
        return;
    l->key_line = v->line;
    if (v->kind == SC_YN_SCALAR) {
        sc_rl_key_part p;
        if (parse_key_part(c, v, field, &p)) {
            l->key[0] = p;
            l->n_key = 1;
        }
        return;
    }
    if (v->kind != SC_YN_SEQ) {
        sc_config_err(c, v, field, "expected a key or a list of keys");
        return;
    }
    if (v->n == 0) {
        sc_config_err(c, v, field, "an empty list; leave key out for one bucket for the route");
        return;
    }
    if (v->n > SC_RL_MAX_KEY_PARTS) {
        sc_config_err(c, v, field, "too many parts (%zu, at most %d)", v->n, SC_RL_MAX_KEY_PARTS);
        return;
    }
    for (size_t i = 0; i < v->n; i++) {
        char fp[256];
        sc_config_path_idx(fp, sizeof(fp), field, i);
        sc_rl_key_part p;
        if (!parse_key_part(c, v->items[i], fp, &p))
            continue;
        bool dup = false;
        for (size_t j = 0; j < l->n_key && !dup; j++)
            dup = same_part(&l->key[j], &p);
        if (dup) {
            sc_config_err(c, v->items[i], fp, "this part is given twice");
            free(p.arg);
            continue;
        }
        l->key[l->n_key++] = p;
    }
    for (size_t j = 0; j < l->n_key; j++)
        if (l->key[j].kind == SC_RL_KEY_ROUTE && l->n_key > 1) {
            sc_config_err(c, v, field,
                          "route means one bucket for the whole route; it cannot be combined "
                          "with other parts (leave it out)");
            break;
        }
}

static void parse_match(sc_cx *c, const sc_ynode *m, const char *path, sc_rate_limit *l)
{
    static const char *const keys[] = {"path_prefix", "methods"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    if (!FIELDS(c, m, path, keys, f))
        return;
    sc_config_path(fp, sizeof(fp), path, "path_prefix");
    if (sc_config_rd_str(c, f[0], fp, false, &l->path_prefix) && l->path_prefix) {
        const char *pp = l->path_prefix;
        size_t n = strlen(pp);
        char norm[RL_MAX_PREFIX + 1];
        size_t nl = 0;
        size_t bad = 0;
        while (bad < n && (unsigned char)pp[bad] > 0x20 && pp[bad] != 0x7f)
            bad++;
        const char *why = NULL;
        if (pp[0] != '/')
            why = "must start with '/'";
        else if (n > RL_MAX_PREFIX)
            why = "is longer than 1024 bytes";
        else if (bad < n || n != f[0]->len)
            why = "contains a space or a control character";
        else if (strpbrk(pp, "?#"))
            why = "must not contain '?' or '#' (the query is not matched)";
        if (why)
            sc_config_err(c, f[0], fp, "'%.128s' %s", pp, why);
        else if (sc_rl_path_normalize(pp, n, norm, sizeof(norm), &nl) < 0 || nl != n ||
                 memcmp(norm, pp, n))
            sc_config_err(c, f[0], fp,
                          "'%.128s' is not in normal form (requests are matched after '.' and "
                          "'..' segments are resolved and escaped unreserved characters "
                          "decoded); write '%.*s'",
                          pp, (int)SC_MIN(nl, 256), norm);
    }
    sc_config_path(fp, sizeof(fp), path, "methods");
    if (sc_config_rd_str_list(c, f[1], fp, &l->methods, &l->n_methods)) {
        if (l->n_methods > SC_RL_MAX_METHODS)
            sc_config_err(c, f[1], fp, "too many methods (%zu, at most %d)", l->n_methods,
                          SC_RL_MAX_METHODS);
        for (size_t i = 0; i < l->n_methods; i++) {
            const char *mth = l->methods[i];
            size_t n = strlen(mth);
            char ip[280];
            sc_config_path_idx(ip, sizeof(ip), fp, i);
            if (n > 32 || strspn(mth, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                                      "0123456789!#$%&'*+-.^_`|~") != n)
                sc_config_err(c, f[1]->items[i], ip, "'%.64s' is not a method (a token)", mth);
            for (size_t j = 0; j < i; j++)
                if (!strcmp(l->methods[j], mth)) {
                    sc_config_err(c, f[1]->items[i], ip, "'%.32s' is given twice", mth);
                    break;
                }
        }
    }
}

static void parse_one(sc_cx *c, const sc_ynode *m, const char *path, sc_rate_limit *l)
{
    static const char *const keys[] = {"name",     "rate",    "burst",   "key",
                                       "match",    "scope",   "on_error", "timeout",
                                       "max_keys", "missing"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    l->max_keys = RL_DEFAULT_MAX_KEYS;
    l->line = m ? m->line : 0;
    if (!FIELDS(c, m, path, keys, f))
        return;
    sc_config_require(c, m, path, "name", f[0]);
    sc_config_require(c, m, path, "rate", f[1]);
    sc_config_path(fp, sizeof(fp), path, "name");
    if (sc_config_rd_str(c, f[0], fp, false, &l->name) && l->name &&
        !sc_config_is_name(l->name, 64))
        sc_config_err(c, f[0], fp,
                      "'%.64s' is not a valid limit name; use letters, digits, '_', '.' and '-' "
                      "(at most 64)",
                      l->name);
    sc_config_path(fp, sizeof(fp), path, "rate");
    char *rate = NULL;
    if (sc_config_rd_str(c, f[1], fp, false, &rate) && rate) {
        int rc = sc_config_rl_rate_parse(rate, &l->count, &l->period_ms);
        if (rc == -EINVAL)
            sc_config_err(c, f[1], fp,
                          "'%.64s' is not a rate; write COUNT/UNIT (100/s, 5/m, 1000/h) or "
                          "COUNT/DURATION (10/100ms, 600/1m)",
                          rate);
        else if (rc < 0)
            sc_config_err(c, f[1], fp,
                          "'%.64s' is out of range: 1 to 10^9 requests per period, a period "
                          "of 1ms to 24h, at most one request per microsecond",
                          rate);
    }
    free(rate);
    l->burst = l->count;
    sc_config_path(fp, sizeof(fp), path, "burst");
    sc_config_rd_uint(c, f[2], fp, 1, RL_MAX_BURST, &l->burst);
    if (l->count && l->burst &&
        (double)l->burst * (double)l->period_ms / (double)l->count > (double)RL_MAX_TOLERANCE_MS)
        sc_config_err(c, f[2] ? f[2] : f[1], f[2] ? fp : "rate",
                      "a full burst would take longer than 30 days to earn back at this rate");
    sc_config_path(fp, sizeof(fp), path, "key");
    if (f[3])
        parse_key(c, f[3], fp, l);
    if (l->n_key == 0) {
        l->key[0] = (sc_rl_key_part){SC_RL_KEY_ROUTE, NULL};
        l->n_key = 1;
    }
    sc_config_path(fp, sizeof(fp), path, "match");
    if (f[4])
        parse_match(c, f[4], fp, l);
    int v = 0;
    sc_config_path(fp, sizeof(fp), path, "scope");
    if (f[5])
        l->scope_line = f[5]->line;
    if (sc_config_rd_enum(c, f[5], fp, scope_names, SC_ARRAY_LEN(scope_names), &v))
        l->global = v == 1;
    v = 0;
    sc_config_path(fp, sizeof(fp), path, "on_error");
    if (sc_config_rd_enum(c, f[6], fp, on_error_names, SC_ARRAY_LEN(on_error_names), &v))
        l->on_error_deny = v == 1;
    sc_config_path(fp, sizeof(fp), path, "timeout");
    if (sc_config_rd_dur(c, f[7], fp, 1, &l->timeout_ms) && l->timeout_ms > RL_MAX_TIMEOUT_MS)
        sc_config_err(c, f[7], fp, "at most 10s: a request waits this long for Redis");
    sc_config_path(fp, sizeof(fp), path, "max_keys");
    sc_config_rd_u32(c, f[8], fp, 1, RL_MAX_MAX_KEYS, &l->max_keys);
    v = 0;
    sc_config_path(fp, sizeof(fp), path, "missing");
    if (sc_config_rd_enum(c, f[9], fp, missing_names, SC_ARRAY_LEN(missing_names), &v))
        l->skip_missing = v == 1;

    /* Fields that mean nothing in the chosen scope are errors, not ignored. */
    if (!l->global) {
        for (size_t i = 6; i <= 7; i++)
            if (f[i]) {
                sc_config_path(fp, sizeof(fp), path, keys[i]);
                sc_config_err(c, f[i], fp, "applies to scope: global only (a local limit "
                                           "never waits for anyone)");
            }
    } else if (f[8]) {
        sc_config_path(fp, sizeof(fp), path, "max_keys");
        sc_config_err(c, f[8], fp, "bounds the local key table; a global limit keeps its keys "
                                   "in Redis, where they expire on their own");
    }
    if (f[9] && l->n_key == 1 && l->key[0].kind == SC_RL_KEY_ROUTE) {
        sc_config_path(fp, sizeof(fp), path, "missing");
        sc_config_err(c, f[9], fp, "a route key is never missing");
    }
}

void sc_config_parse_rate_limits(sc_cx *c, const sc_ynode *v, const char *path,
                                 sc_rate_limit **out, size_t *n_out)
{
    *out = NULL;
    *n_out = 0;
    if (!v || sc_config_yaml_is_null(v) || v->kind == SC_YN_BAD)
        return;
    if (v->kind != SC_YN_SEQ) {
        sc_config_err(c, v, path, "expected a list of limits");
        return;
    }
    if (v->n > SC_RL_MAX_LIMITS) {
        sc_config_err(c, v, path, "too many limits (%zu, at most %d)", v->n, SC_RL_MAX_LIMITS);
        return;
    }
    *out = sc_xcalloc(v->n + 1, sizeof(sc_rate_limit));
    for (size_t i = 0; i < v->n; i++) {
        char fp[256];
        sc_config_path_idx(fp, sizeof(fp), path, i);
        sc_rate_limit *l = &(*out)[*n_out];
        parse_one(c, v->items[i], fp, l);
        (*n_out)++;
        for (size_t j = 0; j < i && l->name; j++)
            if ((*out)[j].name && !strcmp((*out)[j].name, l->name)) {
                char nf[280];
                sc_config_path(nf, sizeof(nf), fp, "name");
                sc_config_err(c, v->items[i], nf, "'%s' is already the name of %s[%zu]",
                              l->name, path, j);
                break;
            }
    }
}

void sc_config_rate_limits_free(sc_rate_limit *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].name);
        for (size_t k = 0; k < v[i].n_key; k++)
            free(v[i].key[k].arg);
        free(v[i].path_prefix);
        for (size_t k = 0; k < v[i].n_methods; k++)
            free(v[i].methods[k]);
        free(v[i].methods);
    }
    free(v);
}

/* ---- redis: ---- */

static void read_password(sc_cx *c, const char *path, unsigned line, char **dst)
{
    size_t len;
    int err;
    char *buf = sc_config_read_file(path, &len, &err);
    if (!buf) {
        sc_config_err_line(c, line, "redis.password_file", "cannot read %s: %s", path,
                           strerror(-err));
        return;
    }
    size_t a = 0, b = len;
    while (b > a && (buf[b - 1] == '\n' || buf[b - 1] == '\r'))
        b--;
    if (memchr(buf + a, 0, b - a) || memchr(buf + a, '\n', b - a) || memchr(buf + a, '\r', b - a))
        sc_config_err_line(c, line, "redis.password_file", "%s holds more than one line", path);
    else if (b == a)
        sc_config_err_line(c, line, "redis.password_file", "%s is empty", path);
    else
        *dst = sc_xstrndup(buf + a, b - a);
    /* The secret leaves no copy behind in freed memory. */
    explicit_bzero(buf, len);
    free(buf);
}

void sc_config_parse_redis(sc_cx *c, const sc_ynode *m, sc_config *cfg)
{
    static const char *const keys[] = {"address", "user",       "password_file",
                                       "db",      "key_prefix", "tls",
                                       "connect_timeout", "timeout"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    cfg->redis.enabled = true;
    cfg->redis.connect_timeout_ms = 1000;
    cfg->redis.timeout_ms = 5;
    if (!FIELDS(c, m, "redis", keys, f))
        return;
    sc_config_require(c, m, "redis", "address", f[0]);
    sc_config_rd_addr(c, f[0], "redis.address", true, &cfg->redis.address);
    if (sc_config_rd_str(c, f[1], "redis.user", false, &cfg->redis.user) && cfg->redis.user &&
        strpbrk(cfg->redis.user, " \t\r\n"))
        sc_config_err(c, f[1], "redis.user", "an ACL user name has no spaces");
    if (sc_config_rd_path(c, f[2], "redis.password_file", &cfg->redis.password_file) &&
        cfg->redis.password_file)
        read_password(c, cfg->redis.password_file, f[2]->line, &cfg->redis.password);
    if (cfg->redis.user && !f[2])
        sc_config_err(c, f[1], "redis.user", "an ACL user needs its password: set "
                                             "redis.password_file");
    sc_config_rd_u32(c, f[3], "redis.db", 0, 1000000, &cfg->redis.db);
    if (sc_config_rd_str(c, f[4], "redis.key_prefix", true, &cfg->redis.key_prefix) &&
        cfg->redis.key_prefix && strlen(cfg->redis.key_prefix) > 256)
        sc_config_err(c, f[4], "redis.key_prefix", "longer than 256 bytes");
    if (f[5]) {
        static const char *const tk[] = {"ca", "cert", "key", "server_name"};
        const sc_ynode *tf[SC_ARRAY_LEN(tk)];
        cfg->redis.tls = true;
        if (FIELDS(c, f[5], "redis.tls", tk, tf)) {
            sc_config_rd_path(c, tf[0], "redis.tls.ca", &cfg->redis.tls_ca_file);
            sc_config_rd_path(c, tf[1], "redis.tls.cert", &cfg->redis.tls_cert_file);
            sc_config_rd_path(c, tf[2], "redis.tls.key", &cfg->redis.tls_key_file);
            if (!tf[1] != !tf[2])
                sc_config_err(c, tf[1] ? tf[1] : tf[2], tf[1] ? "redis.tls.cert" : "redis.tls.key",
                              "a client certificate needs both cert and key");
            if (sc_config_rd_str(c, tf[3], "redis.tls.server_name", false,
                                 &cfg->redis.tls_server_name) &&
                cfg->redis.tls_server_name && !sc_config_is_host(cfg->redis.tls_server_name))
                sc_config_err(c, tf[3], "redis.tls.server_name",
                              "'%.64s' is not a DNS name or an IP address",
                              cfg->redis.tls_server_name);
        }
        /* Without a name there is nothing to check the certificate against:
         * the host as written in the address (name or IP literal). */
        if (!cfg->redis.tls_server_name && f[0] && f[0]->kind == SC_YN_SCALAR) {
            const char *a = f[0]->str;
            const char *colon = strrchr(a, ':');
            if (a[0] == '[' && colon && colon > a && colon[-1] == ']')
                cfg->redis.tls_server_name = sc_xstrndup(a + 1, (size_t)(colon - a - 2));
            else if (colon)
                cfg->redis.tls_server_name = sc_xstrndup(a, (size_t)(colon - a));
        }
    }
    if (!cfg->redis.key_prefix) {
        /* Every sidecar of a service shares its keys; services do not share. */
        const char *svc = cfg->service.name ? cfg->service.name : "";
        size_t n = strlen(svc) + 16;
        cfg->redis.key_prefix = sc_xcalloc(1, n);
        snprintf(cfg->redis.key_prefix, n, "sidecar:rl:%s:", svc);
    }
    sc_config_rd_dur(c, f[6], "redis.connect_timeout", 1, &cfg->redis.connect_timeout_ms);
    if (sc_config_rd_dur(c, f[7], "redis.timeout", 1, &cfg->redis.timeout_ms) &&
        cfg->redis.timeout_ms > RL_MAX_TIMEOUT_MS)
        sc_config_err(c, f[7], "redis.timeout", "at most 10s: a request waits this long for Redis");
}

void sc_config_redis_free(sc_config *cfg)
{
    free(cfg->redis.user);
    free(cfg->redis.password_file);
    if (cfg->redis.password) {
        explicit_bzero(cfg->redis.password, strlen(cfg->redis.password));
        free(cfg->redis.password);
    }
    free(cfg->redis.key_prefix);
    free(cfg->redis.tls_ca_file);
    free(cfg->redis.tls_cert_file);
    free(cfg->redis.tls_key_file);
    free(cfg->redis.tls_server_name);
}

/* ---- checks across files ---- */

/* Whether requests can carry verified JWT claims: only inbound ones, and
 * only with inbound.jwt. Otherwise a claim key could never have a value: it
 * is refused rather than left to match every request as "missing". */
static bool jwt_configured(const sc_config *cfg)
{
    return cfg->inbound.jwt != NULL;
}

void sc_config_rl_cross_check(sc_cx *c, sc_config *cfg, const char *file, const char *prefix,
                              sc_rate_limit *v, size_t n, bool inbound)
{
    bool mtls = cfg->tls.source == SC_TLS_SOURCE_CONSUL ||
                (cfg->tls.cert_file && cfg->tls.key_file && cfg->tls.ca_file);
    for (size_t i = 0; i < n; i++) {
        sc_rate_limit *l = &v[i];
        char base[128], fp[192];
        char rl[64];
        sc_config_path_idx(rl, sizeof(rl), "rate_limits", i);
        sc_config_path(base, sizeof(base), prefix, rl);
        if (l->global && !cfg->redis.enabled) {
            sc_config_path(fp, sizeof(fp), base, "scope");
            sc_diags_add(c->d, file, l->scope_line ? l->scope_line : l->line, fp,
                         "a global limit is kept in Redis: add a redis: section to %s",
                         cfg->file);
            c->n_errors++;
        }
        if (l->global && !l->timeout_ms)
            l->timeout_ms = cfg->redis.enabled ? cfg->redis.timeout_ms : 5;
        for (size_t k = 0; k < l->n_key; k++) {
            sc_config_path(fp, sizeof(fp), base, "key");
            if (l->key[k].kind == SC_RL_KEY_CLAIM && (!inbound || !jwt_configured(cfg))) {
                sc_diags_add(c->d, file, l->key_line ? l->key_line : l->line, fp,
                             "claim:%s keys requests by a verified JWT claim, but %s, so no "
                             "request carries one",
                             l->key[k].arg, inbound ? "inbound.jwt is not configured"
                                                    : "JWTs are only checked on the inbound listener");
                c->n_errors++;
            }
            if (l->key[k].kind == SC_RL_KEY_CALLER && !inbound) {
                sc_diags_add(c->d, file, l->key_line ? l->key_line : l->line, fp,
                             "on an upstream the caller is the local app, which has no "
                             "verified identity; key by a header instead");
                c->n_errors++;
            } else if (l->key[k].kind == SC_RL_KEY_CALLER && !mtls) {
                sc_diags_add(c->d, file, l->key_line ? l->key_line : l->line, fp,
                             "keying by caller needs the callers' verified identities: "
                             "inbound mutual TLS (tls.cert, tls.key and tls.ca, or tls.source: "
                             "consul) in %s",
                             cfg->file);
                c->n_errors++;
            }
        }
    }
}

/* ---- JSON ---- */

static json_t *jdur(uint64_t ms)
{
    char b[64];
    sc_duration_format(ms, b, sizeof(b));
    return json_string(b);
}

json_t *sc_config_rate_limits_json(const sc_rate_limit *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        const sc_rate_limit *l = &v[i];
        json_t *o = json_object();
        char rate[64], per[48];
        sc_duration_format(l->period_ms, per, sizeof(per));
        snprintf(rate, sizeof(rate), "%llu/%s", (unsigned long long)l->count, per);
        json_object_set_new(o, "name", json_string(l->name ? l->name : ""));
        json_object_set_new(o, "rate", json_string(rate));
        json_object_set_new(o, "burst", json_integer((json_int_t)l->burst));
        json_t *k = json_array();
        for (size_t j = 0; j < l->n_key; j++) {
            char part[96];
            if (l->key[j].arg)
                snprintf(part, sizeof(part), "%s:%s", sc_config_rl_key_kind_name(l->key[j].kind),
                         l->key[j].arg);
            else
                snprintf(part, sizeof(part), "%s", sc_config_rl_key_kind_name(l->key[j].kind));
            json_array_append_new(k, json_string(part));
        }
        json_object_set_new(o, "key", k);
        json_t *mt = json_object();
        json_object_set_new(mt, "path_prefix",
                            l->path_prefix ? json_string(l->path_prefix) : json_null());
        json_t *ms = json_array();
        for (size_t j = 0; j < l->n_methods; j++)
            json_array_append_new(ms, json_string(l->methods[j]));
        json_object_set_new(mt, "methods", ms);
        json_object_set_new(o, "match", mt);
        json_object_set_new(o, "scope", json_string(l->global ? "global" : "local"));
        json_object_set_new(o, "missing", json_string(l->skip_missing ? "skip" : "share"));
        if (l->global) {
            json_object_set_new(o, "on_error", json_string(l->on_error_deny ? "deny" : "allow"));
            json_object_set_new(o, "timeout", jdur(l->timeout_ms));
        } else {
            json_object_set_new(o, "max_keys", json_integer(l->max_keys));
        }
        json_array_append_new(a, o);
    }
    return a;
}

json_t *sc_config_redis_json(const sc_config *cfg)
{
    if (!cfg->redis.enabled)
        return json_null();
    json_t *o = json_object();
    json_object_set_new(o, "address", json_string(cfg->redis.address.text));
    json_object_set_new(o, "user", cfg->redis.user ? json_string(cfg->redis.user) : json_null());
    json_object_set_new(o, "password_file", cfg->redis.password_file
                                                ? json_string(cfg->redis.password_file)
                                                : json_null());
    json_object_set_new(o, "password", json_string(cfg->redis.password ? "<set>" : ""));
    json_object_set_new(o, "db", json_integer(cfg->redis.db));
    json_object_set_new(o, "key_prefix", json_string(cfg->redis.key_prefix ? cfg->redis.key_prefix : ""));
    if (cfg->redis.tls) {
        json_t *t = json_object();
        json_object_set_new(t, "ca", cfg->redis.tls_ca_file ? json_string(cfg->redis.tls_ca_file) : json_null());
        json_object_set_new(t, "cert", cfg->redis.tls_cert_file ? json_string(cfg->redis.tls_cert_file) : json_null());
        json_object_set_new(t, "key", cfg->redis.tls_key_file ? json_string(cfg->redis.tls_key_file) : json_null());
        json_object_set_new(t, "server_name", cfg->redis.tls_server_name ? json_string(cfg->redis.tls_server_name) : json_null());
        json_object_set_new(o, "tls", t);
    } else {
        json_object_set_new(o, "tls", json_null());
    }
    json_object_set_new(o, "connect_timeout", jdur(cfg->redis.connect_timeout_ms));
    json_object_set_new(o, "timeout", jdur(cfg->redis.timeout_ms));
    return o;
}

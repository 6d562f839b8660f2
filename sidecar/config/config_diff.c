/*
 * config_diff.c: the difference between two configurations, route by route
 * and setting by setting, and the configuration hash (config_diff.h).
 */
#include "config/config_diff.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>

/* ---- how process-wide settings apply ---- */

/* Longest prefix wins ("inbound.jwt" before "inbound"); a path matches an
 * entry when it equals it or continues it with a '.'. Anything not listed
 * needs a restart: the modules that read it hold the configuration they
 * started with (workers and their buffers, the admin listener, the Consul
 * client, the TLS material's paths, the access log writer, the tracer...). */
static const struct {
    const char *path;
    sc_apply_kind apply;
} apply_table[] = {
    {"log", SC_APPLY_LIVE},         /* the process's log level */
    {"reload", SC_APPLY_LIVE},      /* the file watch itself */
    {"policies", SC_APPLY_LIVE},    /* where upstreams come from: their changes are the routes' */
};

static bool path_has_prefix(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    return strncmp(path, prefix, n) == 0 && (path[n] == 0 || path[n] == '.');
}

sc_apply_kind sc_config_setting_apply(const char *path)
{
    size_t best = 0;
    sc_apply_kind kind = SC_APPLY_RESTART;
    for (size_t i = 0; i < SC_ARRAY_LEN(apply_table); i++) {
        size_t n = strlen(apply_table[i].path);
        if (n > best && path_has_prefix(path, apply_table[i].path)) {
            best = n;
            kind = apply_table[i].apply;
        }
    }
    return kind;
}

/* ---- parts of a route ---- */

/* JSON keys of an upstream (sc_policy_to_json) and of the inbound section,
 * and the part each belongs to. Keys not listed are SC_PART_OTHER; "skip"
 * entries are not route parts. */
typedef struct {
    const char *key;
    uint32_t part;                  /* 0: not a part of the route */
} part_key;

static const part_key upstream_keys[] = {
    {"file", 0}, {"upstream", 0},
    {"protocol", SC_PART_PROTOCOL}, {"listen", SC_PART_LISTEN}, {"discovery", SC_PART_DISCOVERY},
    {"tls", SC_PART_TLS}, {"timeouts", SC_PART_TIMEOUTS}, {"retries", SC_PART_RETRIES},
    {"bulkhead", SC_PART_BULKHEAD}, {"circuit_breaker", SC_PART_BREAKER}, {"outlier", SC_PART_OUTLIER},
    {"load_balancer", SC_PART_LB}, {"rate_limits", SC_PART_RATE_LIMITS},
};

static const part_key inbound_keys[] = {
    {"jwt", 0}, /* a process-wide setting: inbound.jwt */
    {"listen", SC_PART_LISTEN}, {"app", SC_PART_DISCOVERY}, {"app_protocol", SC_PART_PROTOCOL},
    {"timeouts", SC_PART_TIMEOUTS}, {"max_concurrent", SC_PART_BULKHEAD},
    {"rate_limits", SC_PART_RATE_LIMITS},
};

static const char *const part_names[SC_PART_COUNT] = {
    "protocol", "listen", "discovery", "tls", "timeouts", "retries", "retries.budget", "bulkhead",
    "circuit_breaker", "circuit_breaker.fallback", "outlier", "load_balancer", "rate_limits", "other",
};

const char *sc_config_part_name(uint32_t part_bit, bool inbound)
{
    if (inbound) {
        for (size_t i = 0; i < SC_ARRAY_LEN(inbound_keys); i++)
            if (inbound_keys[i].part == part_bit)
                return inbound_keys[i].key;
    }
    for (unsigned i = 0; i < SC_PART_COUNT; i++)
        if (part_bit == 1u << i)
            return part_names[i];
    return NULL;
}

static uint32_t key_part(const part_key *tab, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(tab[i].key, key) == 0)
            return tab[i].part;
    return SC_PART_OTHER;
}

/* json_equal() says two absent values differ. */
static bool same(const json_t *a, const json_t *b)
{
    return a == b || (a && b && json_equal(a, b));
}

/* The parts of one sub-object that differ: `split` (a member name) gets its
 * own bit, the rest the section's. */
static uint32_t split_parts(const json_t *a, const json_t *b, const char *split, uint32_t split_bit,
                            uint32_t rest_bit)
{
    if (!json_is_object(a) || !json_is_object(b))
        return same(a, b) ? 0 : rest_bit;
    uint32_t parts = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)a, k, v) {
        if (!same(v, json_object_get(b, k)))
            parts |= strcmp(k, split) == 0 ? split_bit : rest_bit;
    }
    json_object_foreach((json_t *)b, k, v) {
        if (!json_object_get(a, k))
            parts |= strcmp(k, split) == 0 ? split_bit : rest_bit;
    }
    return parts;
}

static uint32_t member_parts(const part_key *tab, size_t n, const char *key, const json_t *a, const json_t *b)
{
    uint32_t part = key_part(tab, n, key);
    if (!part || same(a, b))
        return 0;
    if (part == SC_PART_RETRIES)
        return split_parts(a, b, "budget", SC_PART_RETRY_BUDGET, SC_PART_RETRIES);
    if (part == SC_PART_BREAKER)
        return split_parts(a, b, "fallback", SC_PART_FALLBACK, SC_PART_BREAKER);
    return part;
}

static uint32_t route_parts(const part_key *tab, size_t n, const json_t *a, const json_t *b)
{
    uint32_t parts = 0;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)a, k, v) parts |= member_parts(tab, n, k, v, json_object_get(b, k));
    json_object_foreach((json_t *)b, k, v) {
        if (!json_object_get(a, k))
            parts |= member_parts(tab, n, k, NULL, v);
    }
    return parts;
}

/* ---- building the diff ---- */

static int add_route(sc_config_diff *d, const char *name, bool inbound, sc_route_change ch, uint32_t parts,
                     size_t oi, size_t ni)
{
    sc_route_diff *nv = realloc(d->routes, (d->n_routes + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    d->routes = nv;
    char *nm = strdup(name);
    if (!nm)
        return -ENOMEM;
    nv[d->n_routes++] = (sc_route_diff){.name = nm, .inbound = inbound, .change = ch, .parts = parts,
                                        .old_index = oi, .new_index = ni};
    return 0;
}

static bool has_setting(const sc_config_diff *d, const char *path)
{
    for (size_t i = 0; i < d->n_settings; i++)
        if (strcmp(d->settings[i].path, path) == 0)
            return true;
    return false;
}

static int add_setting(sc_config_diff *d, const char *section, const char *field)
{
    char path[256];
    snprintf(path, sizeof(path), "%s%s%s", section, field ? "." : "", field ? field : "");
    if (has_setting(d, path))
        return 0;
    sc_setting_diff *nv = realloc(d->settings, (d->n_settings + 1) * sizeof(*nv));
    if (!nv)
        return -ENOMEM;
    d->settings = nv;
    char *p = strdup(path);
    if (!p)
        return -ENOMEM;
    nv[d->n_settings++] = (sc_setting_diff){.path = p, .apply = sc_config_setting_apply(path)};
    return 0;
}

/* One top-level section: each member that differs ("section.member"), or
 * the section itself when it is not an object on both sides. */
static int diff_section(sc_config_diff *d, const char *section, const json_t *a, const json_t *b)
{
    if (same(a, b))
        return 0;
    if (!json_is_object(a) || !json_is_object(b))
        return add_setting(d, section, NULL);
    const char *k;
    json_t *v;
    int rc = 0;
    json_object_foreach((json_t *)a, k, v) {
        if (!same(v, json_object_get(b, k)) && (rc = add_setting(d, section, k)) < 0)
            return rc;
    }
    json_object_foreach((json_t *)b, k, v) {
        if (!json_object_get(a, k) && (rc = add_setting(d, section, k)) < 0)
            return rc;
    }
    return 0;
}

static const json_t *find_upstream(const json_t *ups, const char *name, size_t *index)
{
    size_t i;
    json_t *u;
    json_array_foreach(ups, i, u) {
        const char *n = json_string_value(json_object_get(u, "upstream"));
        if (n && strcmp(n, name) == 0) {
            *index = i;
            return u;
        }
    }
    return NULL;
}

static int diff_routes(sc_config_diff *d, const json_t *a, const json_t *b)
{
    int rc;
    /* inbound first: its route fields (inbound.jwt is a setting) */
    const json_t *ia = json_object_get(a, "inbound"), *ib = json_object_get(b, "inbound");
    bool ha = json_is_object(ia), hb = json_is_object(ib);
    if (ha || hb) {
        uint32_t parts = ha && hb ? route_parts(inbound_keys, SC_ARRAY_LEN(inbound_keys), ia, ib) : 0;
        sc_route_change ch = !ha ? SC_ROUTE_ADDED : !hb ? SC_ROUTE_REMOVED : parts ? SC_ROUTE_CHANGED
                                                                                     : SC_ROUTE_UNCHANGED;
        if ((rc = add_route(d, "inbound", true, ch, parts, SIZE_MAX, SIZE_MAX)) < 0)
            return rc;
        if (ha && hb && !same(json_object_get(ia, "jwt"), json_object_get(ib, "jwt")) &&
            (rc = add_setting(d, "inbound", "jwt")) < 0)
            return rc;
    }
    const json_t *ua = json_object_get(a, "upstreams"), *ub = json_object_get(b, "upstreams");
    size_t i;
    json_t *u;
    json_array_foreach(ub, i, u) {
        const char *name = json_string_value(json_object_get(u, "upstream"));
        if (!name)
            continue;
        size_t oi = SIZE_MAX;
        const json_t *old = find_upstream(ua, name, &oi);
        uint32_t parts = old ? route_parts(upstream_keys, SC_ARRAY_LEN(upstream_keys), old, u) : 0;
        sc_route_change ch = !old ? SC_ROUTE_ADDED : parts ? SC_ROUTE_CHANGED : SC_ROUTE_UNCHANGED;
        if ((rc = add_route(d, name, false, ch, parts, oi, i)) < 0)
            return rc;
    }
    json_array_foreach(ua, i, u) {
        const char *name = json_string_value(json_object_get(u, "upstream"));
        size_t ni;
        if (name && !find_upstream(ub, name, &ni) && (rc = add_route(d, name, false, SC_ROUTE_REMOVED, 0, i,
                                                                     SIZE_MAX)) < 0)
            return rc;
    }
    return 0;
}

int sc_config_diff_build_json(const json_t *a, const json_t *b, sc_config_diff *out)
{
    memset(out, 0, sizeof(*out));
    int rc = diff_routes(out, a, b);
    /* the inbound section's jwt member went in above, as "inbound.jwt" */
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)a, k, v) {
        if (rc < 0)
            break;
        if (strcmp(k, "file") && strcmp(k, "upstreams") && strcmp(k, "inbound"))
            rc = diff_section(out, k, v, json_object_get(b, k));
    }
    json_object_foreach((json_t *)b, k, v) {
        if (rc < 0)
            break;
        if (strcmp(k, "file") && strcmp(k, "upstreams") && strcmp(k, "inbound") && !json_object_get(a, k))
            rc = add_setting(out, k, NULL);
    }
    if (rc < 0)
        sc_config_diff_free(out);
    return rc;
}

/* ---- what the JSON cannot show ---- */

static bool str_differ(const char *a, const char *b)
{
    return (a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0);
}

static bool addr_differ(const sc_addr *a, const sc_addr *b)
{
    return a->len != b->len || memcmp(&a->ss, &b->ss, a->len) != 0;
}

static bool instances_differ(const sc_policy *a, const sc_policy *b)
{
    if (a->discovery != SC_DISCOVERY_STATIC || b->discovery != SC_DISCOVERY_STATIC)
        return false;
    if (a->n_instances != b->n_instances)
        return true;
    for (size_t i = 0; i < a->n_instances; i++)
        if (addr_differ(&a->instances[i].addr, &b->instances[i].addr))
            return true;
    return false;
}

static void mark_discovery(sc_route_diff *r)
{
    r->parts |= SC_PART_DISCOVERY;
    r->change = SC_ROUTE_CHANGED;
}

int sc_config_diff_build(const sc_config *old_cfg, const sc_config *new_cfg, sc_config_diff *out)
{
    memset(out, 0, sizeof(*out));
    json_t *a = sc_config_to_json(old_cfg), *b = sc_config_to_json(new_cfg);
    int rc = a && b ? sc_config_diff_build_json(a, b, out) : -ENOMEM;
    json_decref(a);
    json_decref(b);
    if (rc < 0)
        return rc;
    static const struct {
        const char *section, *path;
        size_t off;
    } secrets[] = {
        {"admin", "admin.token", offsetof(sc_config, admin.token)},
        {"consul", "consul.token", offsetof(sc_config, consul.token)},
        {"redis", "redis.password", offsetof(sc_config, redis.password)},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(secrets) && rc == 0; i++) {
        const char *sa = *(char *const *)((const char *)old_cfg + secrets[i].off);
        const char *sb = *(char *const *)((const char *)new_cfg + secrets[i].off);
        if (str_differ(sa, sb) && !has_setting(out, secrets[i].section))
            rc = add_setting(out, secrets[i].section, secrets[i].path + strlen(secrets[i].section) + 1);
    }
    for (size_t i = 0; i < out->n_routes && rc == 0; i++) {
        sc_route_diff *r = &out->routes[i];
        if (r->inbound) {
            if (r->change != SC_ROUTE_ADDED && r->change != SC_ROUTE_REMOVED &&
                addr_differ(&old_cfg->inbound.app, &new_cfg->inbound.app))
                mark_discovery(r);
            continue;
        }
        r->old_p = r->old_index != SIZE_MAX ? &old_cfg->policies[r->old_index] : NULL;
        r->new_p = r->new_index != SIZE_MAX ? &new_cfg->policies[r->new_index] : NULL;
        if (r->old_p && r->new_p && !(r->parts & SC_PART_DISCOVERY) && instances_differ(r->old_p, r->new_p))
            mark_discovery(r);
    }
    if (rc < 0)
        sc_config_diff_free(out);
    return rc;
}

void sc_config_diff_free(sc_config_diff *d)
{
    for (size_t i = 0; i < d->n_routes; i++)
        free(d->routes[i].name);
    for (size_t i = 0; i < d->n_settings; i++)
        free(d->settings[i].path);
    free(d->routes);
    free(d->settings);
    memset(d, 0, sizeof(*d));
}

/* ---- questions about a diff ---- */

size_t sc_config_diff_count_routes(const sc_config_diff *d, sc_route_change change)
{
    size_t n = 0;
    for (size_t i = 0; i < d->n_routes; i++)
        n += d->routes[i].change == change;
    return n;
}

size_t sc_config_diff_count_settings(const sc_config_diff *d, sc_apply_kind apply)
{
    size_t n = 0;
    for (size_t i = 0; i < d->n_settings; i++)
        n += d->settings[i].apply == apply;
    return n;
}

const sc_route_diff *sc_config_diff_route(const sc_config_diff *d, const char *name, bool inbound)
{
    for (size_t i = 0; i < d->n_routes; i++)
        if (d->routes[i].inbound == inbound && (inbound || strcmp(d->routes[i].name, name) == 0))
            return &d->routes[i];
    return NULL;
}

bool sc_config_diff_empty(const sc_config_diff *d)
{
    return d->n_settings == 0 && sc_config_diff_count_routes(d, SC_ROUTE_UNCHANGED) == d->n_routes;
}

static json_t *parts_json(uint32_t parts, bool inbound)
{
    json_t *a = json_array();
    for (unsigned i = 0; i < SC_PART_COUNT; i++)
        if (parts & (1u << i))
            json_array_append_new(a, json_string(sc_config_part_name(1u << i, inbound)));
    return a;
}

json_t *sc_config_diff_to_json(const sc_config_diff *d)
{
    static const char *const change_names[] = {"unchanged", "added", "removed", "changed"};
    json_t *ups = json_pack("{s:[], s:[], s:[], s:{}}", "added", "removed", "unchanged", "changed");
    json_t *o = json_pack("{s:o, s:n, s:[]}", "upstreams", ups, "inbound", "settings");
    if (!o)
        return NULL;
    for (size_t i = 0; i < d->n_routes; i++) {
        const sc_route_diff *r = &d->routes[i];
        if (r->inbound)
            json_object_set_new(o, "inbound", r->change == SC_ROUTE_CHANGED ? parts_json(r->parts, true)
                                                                            : json_string(change_names[r->change]));
        else if (r->change == SC_ROUTE_CHANGED)
            json_object_set_new(json_object_get(ups, "changed"), r->name, parts_json(r->parts, false));
        else
            json_array_append_new(json_object_get(ups, change_names[r->change]), json_string(r->name));
    }
    json_t *s = json_object_get(o, "settings");
    for (size_t i = 0; i < d->n_settings; i++)
        json_array_append_new(s, json_string(d->settings[i].path));
    return o;
}

/* ---- hash ---- */

int sc_config_hash_json(const json_t *j, char out[SC_CONFIG_HASH_LEN + 1])
{
    out[0] = 0;
    char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    if (!text)
        return -ENOMEM;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    int ok = EVP_Digest(text, strlen(text), md, &mdlen, EVP_sha256(), NULL);
    free(text);
    if (ok != 1 || mdlen < SC_CONFIG_HASH_LEN / 2)
        return -EIO;
    for (unsigned i = 0; i < SC_CONFIG_HASH_LEN / 2; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int sc_config_hash(const sc_config *cfg, char out[SC_CONFIG_HASH_LEN + 1])
{
    json_t *j = sc_config_to_json(cfg);
    int rc = j ? sc_config_hash_json(j, out) : -ENOMEM;
    json_decref(j);
    return rc;
}

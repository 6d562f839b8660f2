/*
 * policy.c: the schema of one upstream policy (policies/<name>.yaml or an
 * entry of `upstreams:`), its defaults and the checks that need more than
 * one field.
 */
#include "config/config_internal.h"
#include "http/grpc.h"
#include "http/h1.h"
#include "tls/spiffe.h"

#include <stdlib.h>
#include <string.h>

const struct sc_cond_name sc_config_conds[] = {
    {"5xx", SC_COND_5XX},
    {"gateway-error", SC_COND_GATEWAY_ERROR},
    {"connect-failure", SC_COND_CONNECT_FAILURE},
    {"reset", SC_COND_RESET},
    {"refused-stream", SC_COND_REFUSED_STREAM},
    {"timeout", SC_COND_TIMEOUT},
    {"4xx", SC_COND_4XX},
};
const size_t sc_config_n_conds = SC_ARRAY_LEN(sc_config_conds);

static const char *const proto_names[] = {"http1", "http2", "grpc"};
static const char *const lb_names[] = {"round_robin", "least_request", "random"};
static const char *const tls_names[] = {"off", "simple", "mutual"};

const char *sc_proto_name(sc_proto p)
{
    return (unsigned)p < SC_ARRAY_LEN(proto_names) ? proto_names[p] : "?";
}

const char *sc_lb_kind_name(sc_lb_kind k)
{
    return (unsigned)k < SC_ARRAY_LEN(lb_names) ? lb_names[k] : "?";
}

const char *sc_config_tls_mode_name(sc_tls_mode m)
{
    return (unsigned)m < SC_ARRAY_LEN(tls_names) ? tls_names[m] : "?";
}

#define GRPC_BIT(code) (1u << (code))

void sc_config_policy_defaults(sc_policy *p)
{
    p->protocol = SC_PROTO_HTTP1;
    p->discovery = SC_DISCOVERY_STATIC;
    p->timeouts = (sc_timeouts){.connect_ms = 1000, .request_ms = 15000, .per_try_ms = 0,
                                .idle_ms = 60000, .header_read_ms = 10000};
    p->retries = (sc_retry_policy){
        .enabled = false,
        .max_attempts = 1,
        .on = SC_COND_CONNECT_FAILURE | SC_COND_REFUSED_STREAM,
        .on_grpc = GRPC_BIT(SC_GRPC_UNAVAILABLE),
        .backoff_base_ms = 25,
        .backoff_max_ms = 250,
        .budget_ratio = 0.2,
        .budget_min_per_second = 10,
        .buffer_limit = 65536,
    };
    p->bulkhead = (sc_bulkhead_policy){.enabled = false, .max_concurrent = 1024};
    p->breaker = (sc_breaker_policy){
        .enabled = false,
        .failure_rate = 50,
        .slow_call_ms = 0,
        .slow_call_rate = 100,
        .window_ms = 10000,
        .min_calls = 20,
        .open_for_ms = 30000,
        .half_open_calls = 3,
        .consecutive_failures = 0,
        .failure_on = SC_COND_GATEWAY_ERROR | SC_COND_CONNECT_FAILURE | SC_COND_RESET |
                      SC_COND_TIMEOUT,
        .failure_on_grpc = GRPC_BIT(SC_GRPC_UNAVAILABLE) | GRPC_BIT(SC_GRPC_DEADLINE_EXCEEDED) |
                           GRPC_BIT(SC_GRPC_INTERNAL) | GRPC_BIT(SC_GRPC_UNKNOWN) |
                           GRPC_BIT(SC_GRPC_DATA_LOSS),
        .has_fallback = false,
        .fallback_http_status = 503,
        .fallback_grpc_status = SC_GRPC_UNAVAILABLE,
    };
    p->outlier = (sc_outlier_policy){.enabled = false, .consecutive_failures = 5,
                                     .eject_for_ms = 30000, .max_eject_ms = 300000,
                                     .max_ejected_percent = 50};
    p->lb = SC_LB_ROUND_ROBIN;
    p->tls.mode = SC_TLS_OFF;
}

static void free_kv(sc_kv *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(v[i].key);
        free(v[i].value);
    }
    free(v);
}

void sc_policy_clear(sc_policy *p)
{
    if (!p)
        return;
    free(p->file);
    free(p->name);
    free(p->instances);
    free(p->consul.service);
    free(p->consul.tag);
    free(p->consul.dc);
    free(p->breaker.fallback_http_body);
    free(p->breaker.fallback_grpc_message);
    free_kv(p->breaker.fallback_http_headers, p->breaker.n_fallback_http_headers);
    free_kv(p->breaker.fallback_grpc_metadata, p->breaker.n_fallback_grpc_metadata);
    free(p->tls.server_identity);
    free(p->tls.sni);
    sc_config_rate_limits_free(p->rate_limits, p->n_rate_limits);
    memset(p, 0, sizeof(*p));
}

/* A list of condition names into SC_COND_* and gRPC code bits. */
static bool parse_conds(sc_cx *c, const sc_ynode *v, const char *field, sc_proto proto,
                        uint32_t *bits, uint32_t *grpc_bits)
{
    if (v->kind == SC_YN_BAD)
        return false;
    if (v->kind != SC_YN_SEQ && !sc_config_yaml_is_null(v)) {
        sc_config_err(c, v, field,
                      "expected a list of conditions, e.g. [connect-failure, unavailable]");
        return false;
    }
    uint32_t b = 0, g = 0;
    bool ok = true;
    for (size_t i = 0; v->kind == SC_YN_SEQ && i < v->n; i++) {
        const sc_ynode *it = v->items[i];
        char f[256];
        sc_config_path_idx(f, sizeof(f), field, i);
        if (it->kind == SC_YN_BAD) {
            ok = false;
            continue;
        }
        if (it->kind != SC_YN_SCALAR || sc_config_yaml_is_null(it)) {
            sc_config_err(c, it, f, "expected a condition name");
            ok = false;
            continue;
        }
        uint32_t bit = 0, gbit = 0;
        for (size_t k = 0; k < sc_config_n_conds; k++)
            if (strcmp(it->str, sc_config_conds[k].name) == 0)
                bit = sc_config_conds[k].bit;
        if (!bit) {
            int code = sc_grpc_status_from_name(it->str, it->len);
            if (code == 0) {
                sc_config_err(c, it, f, "'%s' is the gRPC success status, not a failure",
                              it->str);
                ok = false;
                continue;
            }
            if (code < 0 || code > SC_GRPC_STATUS_MAX) {
                sc_config_err(c, it, f,
                              "unknown condition '%.64s'; expected 5xx, gateway-error, "
                              "connect-failure, reset, refused-stream, timeout, 4xx or a gRPC "
                              "status name such as unavailable",
                              it->str);
                ok = false;
                continue;
            }
            if (proto != SC_PROTO_GRPC) {
                sc_config_err(c, it, f,
                              "'%.64s' is a gRPC status but the protocol is %s; gRPC statuses "
                              "apply only to protocol grpc",
                              it->str, sc_proto_name(proto));
                ok = false;
                continue;
            }
            gbit = GRPC_BIT(code);
        }
        if ((b & bit) || (g & gbit)) {
            sc_config_err(c, it, f, "'%.64s' is listed twice", it->str);
            ok = false;
            continue;
        }
        b |= bit;
        g |= gbit;
    }
    if (ok) {
        *bits = b;
        *grpc_bits = g;
    }
    return ok;
}

static void parse_timeouts(sc_cx *c, const sc_ynode *m, const char *path, sc_timeouts *t)
{
    static const char *const keys[] = {"connect", "request", "per_try", "idle", "header_read"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    if (!FIELDS(c, m, path, keys, f))
        return;
    sc_config_path(fp, sizeof(fp), path, "connect");
    sc_config_rd_dur(c, f[0], fp, 1, &t->connect_ms);
    sc_config_path(fp, sizeof(fp), path, "request");
    sc_config_rd_dur(c, f[1], fp, 0, &t->request_ms);
    sc_config_path(fp, sizeof(fp), path, "per_try");
    bool pt = sc_config_rd_dur(c, f[2], fp, 0, &t->per_try_ms);
    sc_config_path(fp, sizeof(fp), path, "idle");
    sc_config_rd_dur(c, f[3], fp, 0, &t->idle_ms);
    sc_config_path(fp, sizeof(fp), path, "header_read");
    sc_config_rd_dur(c, f[4], fp, 1, &t->header_read_ms);
    if (pt && f[2] && t->request_ms && t->per_try_ms > t->request_ms) {
        char a[32], b[32];
        sc_duration_format(t->per_try_ms, a, sizeof(a));
        sc_duration_format(t->request_ms, b, sizeof(b));
        sc_config_path(fp, sizeof(fp), path, "per_try");
        sc_config_err(c, f[2], fp,
                      "per_try (%s) is longer than request (%s); a try cannot outlive the "
                      "request",
                      a, b);
    }
}

static void parse_discovery(sc_cx *c, const sc_ynode *m, const char *path, sc_policy *p)
{
    static const char *const keys[] = {"static", "consul"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    if (!FIELDS(c, m, path, keys, f))
        return;
    if (f[0] && f[1]) {
        sc_config_err(c, f[1], path, "set either discovery.static or discovery.consul, not both");
        return;
    }
    if (!f[0] && !f[1]) {
        sc_config_err(c, m, path,
                      "needs exactly one of static: [ip:port, ...] or consul: {service: ...}");
        return;
    }
    if (f[1]) {
        static const char *const ck[] = {"service", "tag", "dc"};
        const sc_ynode *cf[SC_ARRAY_LEN(ck)];
        char cp[256];
        p->discovery = SC_DISCOVERY_CONSUL;
        sc_config_path(cp, sizeof(cp), path, "consul");
        if (!FIELDS(c, f[1], cp, ck, cf))
            return;
        sc_config_path(fp, sizeof(fp), cp, "service");
        if (sc_config_rd_str(c, cf[0], fp, false, &p->consul.service) && p->consul.service &&
            !sc_config_is_name(p->consul.service, 128)) {
            sc_config_err(c, cf[0], fp,
                          "'%.64s' is not a service name; use letters, digits, '_', '.', '-'",
                          p->consul.service);
        }
        sc_config_path(fp, sizeof(fp), cp, "tag");
        sc_config_rd_str(c, cf[1], fp, false, &p->consul.tag);
        sc_config_path(fp, sizeof(fp), cp, "dc");
        if (sc_config_rd_str(c, cf[2], fp, false, &p->consul.dc) && p->consul.dc &&
            !sc_config_is_name(p->consul.dc, 64))
            sc_config_err(c, cf[2], fp, "'%.64s' is not a datacenter name", p->consul.dc);
        return;
    }
    const sc_ynode *s = f[0];
    p->discovery = SC_DISCOVERY_STATIC;
    sc_config_path(fp, sizeof(fp), path, "static");
    if (s->kind == SC_YN_BAD)
        return;
    if (s->kind != SC_YN_SEQ) {
        sc_config_err(c, s, fp, "expected a list of instances, e.g. [10.0.0.7:8080]");
        return;
    }
    if (s->n == 0) {
        sc_config_err(c, s, fp, "no instances: list at least one ip:port");
        return;
    }
    if (s->n > 10000) {
        sc_config_err(c, s, fp, "too many instances (%zu, at most 10000)", s->n);
        return;
    }
    p->instances = sc_xcalloc(s->n, sizeof(*p->instances));
    for (size_t i = 0; i < s->n; i++) {
        const sc_ynode *it = s->items[i];
        char ip[256], kp[256];
        sc_config_path_idx(ip, sizeof(ip), fp, i);
        sc_static_instance inst = {.weight = 1};
        const sc_ynode *addr_node = it;
        if (it->kind == SC_YN_MAP) {
            static const char *const ik[] = {"address", "weight"};
            const sc_ynode *inf[SC_ARRAY_LEN(ik)];
            FIELDS(c, it, ip, ik, inf);
            sc_config_require(c, it, ip, "address", inf[0]);
            sc_config_path(kp, sizeof(kp), ip, "weight");
            sc_config_rd_u32(c, inf[1], kp, 1, 10000, &inst.weight);
            addr_node = inf[0];
            sc_config_path(kp, sizeof(kp), ip, "address");
            if (!addr_node || !sc_config_rd_addr(c, addr_node, kp, true, &inst.addr))
                continue;
        } else {
            if (it->kind == SC_YN_SEQ) {
                sc_config_err(c, it, ip,
                              "expected an instance (ip:port or {address: ip:port, weight: N}), "
                              "got a list");
                continue;
            }
            if (!sc_config_rd_addr(c, it, ip, true, &inst.addr))
                continue;
        }
        bool dup = false;
        for (size_t k = 0; k < p->n_instances && !dup; k++)
            dup = strcmp(p->instances[k].addr.text, inst.addr.text) == 0;
        if (dup) {
            sc_config_err(c, addr_node, ip, "instance %s is listed twice", inst.addr.text);
            continue;
        }
        p->instances[p->n_instances++] = inst;
    }
}

static void parse_tls(sc_cx *c, const sc_ynode *m, const char *path, sc_policy *p)
{
    static const char *const keys[] = {"mode", "server_identity", "sni"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    if (!FIELDS(c, m, path, keys, f))
        return;
    int mode = SC_TLS_OFF;
    sc_config_path(fp, sizeof(fp), path, "mode");
    bool mode_ok = sc_config_rd_enum(c, f[0], fp, tls_names, SC_ARRAY_LEN(tls_names), &mode);
    if (mode_ok)
        p->tls.mode = (sc_tls_mode)mode;
    sc_config_path(fp, sizeof(fp), path, "server_identity");
    const char *why;
    if (sc_config_rd_str(c, f[1], fp, false, &p->tls.server_identity) && p->tls.server_identity &&
        sc_tls_spiffe_id_valid(p->tls.server_identity, strlen(p->tls.server_identity), &why) < 0)
        sc_config_err(c, f[1], fp, "not a SPIFFE ID (spiffe://<trust-domain>/<path>): %s", why);
    sc_config_path(fp, sizeof(fp), path, "sni");
    if (sc_config_rd_str(c, f[2], fp, false, &p->tls.sni) && p->tls.sni) {
        /* syntax only: a DNS name, never resolved */
        bool ok = strlen(p->tls.sni) <= 253 && strspn(p->tls.sni,
                  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") ==
                  strlen(p->tls.sni) && p->tls.sni[0] != '.' && p->tls.sni[0] != '-';
        if (!ok)
            sc_config_err(c, f[2], fp, "'%.64s' is not a valid server name (DNS name)",
                          p->tls.sni);
    }
    /* Every TLS upstream verifies a name, or any certificate its CA (the
     * system's without tls.ca) vouches for would do; a Consul-discovered one
     * in mutual mode expects its Consul identity by itself (docs/tls.md). */
    if (mode_ok && p->tls.mode != SC_TLS_OFF && !p->tls.sni && !p->tls.server_identity &&
        !(p->tls.mode == SC_TLS_MUTUAL && p->discovery == SC_DISCOVERY_CONSUL))
        sc_config_err(c, m, path,
                      "TLS to this upstream would verify no name: set tls.sni (a DNS name or IP address "
                      "on its certificates) or tls.server_identity (their SPIFFE ID)");
    if (mode_ok && p->tls.mode == SC_TLS_OFF) {
        for (size_t i = 1; i < SC_ARRAY_LEN(keys); i++)
            if (f[i] && f[i]->kind == SC_YN_SCALAR) {
                sc_config_path(fp, sizeof(fp), path, keys[i]);
                sc_config_err(c, f[i], fp, "needs tls.mode simple or mutual (mode is off)");
            }
    }
}

static void parse_retries(sc_cx *c, const sc_ynode *m, const char *path, sc_policy *p)
{
    static const char *const keys[] = {"max_attempts", "on", "backoff", "budget", "buffer_limit"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256], sp[256];
    sc_retry_policy *r = &p->retries;
    r->enabled = true;
    r->max_attempts = 2;
    if (!FIELDS(c, m, path, keys, f))
        return;
    sc_config_path(fp, sizeof(fp), path, "max_attempts");
    sc_config_rd_u32(c, f[0], fp, 1, 10, &r->max_attempts);
    sc_config_path(fp, sizeof(fp), path, "on");
    if (f[1])
        parse_conds(c, f[1], fp, p->protocol, &r->on, &r->on_grpc);
    if (f[2]) {
        static const char *const bk[] = {"base", "max"};
        const sc_ynode *bf[SC_ARRAY_LEN(bk)];
        sc_config_path(sp, sizeof(sp), path, "backoff");
        if (FIELDS(c, f[2], sp, bk, bf)) {
            sc_config_path(fp, sizeof(fp), sp, "base");
            bool ok = sc_config_rd_dur(c, bf[0], fp, 1, &r->backoff_base_ms);
            sc_config_path(fp, sizeof(fp), sp, "max");
            ok = sc_config_rd_dur(c, bf[1], fp, 1, &r->backoff_max_ms) && ok;
            if (ok && r->backoff_base_ms > r->backoff_max_ms) {
                char a[32], b[32];
                sc_duration_format(r->backoff_base_ms, a, sizeof(a));
                sc_duration_format(r->backoff_max_ms, b, sizeof(b));
                sc_config_path(fp, sizeof(fp), sp, "base");
                sc_config_err(c, bf[0] ? bf[0] : bf[1] ? bf[1] : f[2], fp,
                              "base (%s) is larger than max (%s); expected base <= max", a, b);
            }
        }
    }
    if (f[3]) {
        static const char *const bk[] = {"ratio", "min_per_second"};
        const sc_ynode *bf[SC_ARRAY_LEN(bk)];
        sc_config_path(sp, sizeof(sp), path, "budget");
        if (FIELDS(c, f[3], sp, bk, bf)) {
            sc_config_path(fp, sizeof(fp), sp, "ratio");
            sc_config_rd_ratio(c, bf[0], fp, &r->budget_ratio);
            sc_config_path(fp, sizeof(fp), sp, "min_per_second");
            sc_config_rd_u32(c, bf[1], fp, 0, 1000000, &r->budget_min_per_second);
        }
    }
    sc_config_path(fp, sizeof(fp), path, "buffer_limit");
    sc_config_rd_size(c, f[4], fp, 0, 64u << 20, &r->buffer_limit);
}

static void parse_bulkhead(sc_cx *c, const sc_ynode *m, const char *path, sc_policy *p)
{
    static const char *const keys[] = {"max_concurrent", "max_pending", "queue_timeout",
                                       "max_connections"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    sc_bulkhead_policy *b = &p->bulkhead;
    b->enabled = true;
    if (!FIELDS(c, m, path, keys, f))
        return;
    sc_config_path(fp, sizeof(fp), path, "max_concurrent");
    sc_config_rd_u32(c, f[0], fp, 1, 1000000, &b->max_concurrent);
    sc_config_path(fp, sizeof(fp), path, "max_pending");
    bool okp = sc_config_rd_u32(c, f[1], fp, 0, 1000000, &b->max_pending);
    sc_config_path(fp, sizeof(fp), path, "queue_timeout");
    bool okq = sc_config_rd_dur(c, f[2], fp, 0, &b->queue_timeout_ms);
    sc_config_path(fp, sizeof(fp), path, "max_connections");
    sc_config_rd_u32(c, f[3], fp, 0, 1000000, &b->max_connections);
    if (okp && okq && f[2] && b->queue_timeout_ms && b->max_pending == 0) {
        sc_config_path(fp, sizeof(fp), path, "queue_timeout");
        sc_config_err(c, f[2], fp,
                      "a queue timeout needs a queue: set max_pending above 0 or remove it");
    }
}

/* Longest fallback header name and value. */
#define FALLBACK_MAX_NAME 128
#define FALLBACK_MAX_VALUE 1024

/* Why a fallback header name cannot be used, or NULL. `lname` is lower-case. */
static const char *fallback_name_problem(const char *lname, bool grpc)
{
    size_t n = strlen(lname);
    if (lname[0] == ':')
        return "is a pseudo-header; the sidecar sets those itself";
    if (n > FALLBACK_MAX_NAME ||
        strspn(lname, "abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~") != n)
        return "is not a header name (1-128 letters, digits and !#$%&'*+-.^_`|~)";
    if (sc_h1_is_hop_by_hop(lname, n, (sc_h1_str){NULL, 0}))
        return "is a hop-by-hop header, which a response must not carry across a proxy";
    if (!strcmp(lname, "content-length") || !strcmp(lname, "x-sidecar-reason"))
        return "is set by the sidecar";
    if (grpc && (!strcmp(lname, "content-type") || !strncmp(lname, "grpc-", 5)))
        return "is reserved for gRPC (set status and message instead)";
    return NULL;
}

/* fallback.http.headers / fallback.grpc.metadata: a mapping of name: value. */
static void parse_fallback_headers(sc_cx *c, const sc_ynode *m, const char *field, bool grpc,
                                   sc_kv **out, size_t *n_out)
{
    if (!m || sc_config_yaml_is_null(m) || m->kind == SC_YN_BAD)
        return;
    if (m->kind != SC_YN_MAP) {
        sc_config_err(c, m, field, "expected a mapping of name: value");
        return;
    }
    if (m->n / 2 > SC_FALLBACK_MAX_HEADERS) {
        sc_config_err(c, m, field, "too many entries (%zu, at most %d)", m->n / 2,
                      SC_FALLBACK_MAX_HEADERS);
        return;
    }
    *out = sc_xcalloc(m->n / 2 + 1, sizeof(sc_kv));
    for (size_t k = 0; k + 1 < m->n; k += 2) {
        const sc_ynode *key = m->items[k], *val = m->items[k + 1];
        if (key->kind != SC_YN_SCALAR)
            continue;
        char fp[320];
        sc_config_path(fp, sizeof(fp), field, key->str);
        char lname[FALLBACK_MAX_NAME + 2] = "";
        size_t nl = SC_MIN(key->len, sizeof(lname) - 1);
        for (size_t i = 0; i < nl; i++)
            lname[i] = (char)(key->str[i] >= 'A' && key->str[i] <= 'Z' ? key->str[i] + 32 : key->str[i]);
        lname[nl] = 0;
        const char *why = key->len == 0 || strlen(key->str) != key->len ? "is not a header name"
                                                                          : fallback_name_problem(lname, grpc);
        if (why) {
            sc_config_err(c, key, fp, "'%.64s' %s", key->str, why);
            continue;
        }
        bool dup = false;
        for (size_t j = 0; j < *n_out && !dup; j++)
            if (!strcmp((*out)[j].key, lname)) {
                sc_config_err(c, key, fp, "'%.64s' is given twice (names ignore case)", key->str);
                dup = true;
            }
        char *v = NULL;
        if (dup || !sc_config_rd_str(c, val, fp, true, &v))
            continue;
        size_t vl = strlen(v), bad = 0;
        while (bad < vl && ((unsigned char)v[bad] >= 0x20 || v[bad] == '\t') && v[bad] != 0x7f)
            bad++;
        if (bad < vl || vl != val->len)
            sc_config_err(c, val, fp, "the value contains a control character (CR, LF, NUL, ...)");
        else if (vl > FALLBACK_MAX_VALUE)
            sc_config_err(c, val, fp, "the value is longer than %d bytes", FALLBACK_MAX_VALUE);
        else if (grpc && nl > 4 && !strcmp(lname + nl - 4, "-bin") &&
                 strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != vl)
            sc_config_err(c, val, fp, "a -bin metadata value must be base64");
        else {
            (*out)[*n_out] = (sc_kv){sc_xstrdup(lname), v};
            (*n_out)++;
            continue;
        }
        free(v);
    }
}

static void parse_fallback(sc_cx *c, const sc_ynode *m, const char *path, sc_breaker_policy *b)
{
    static const char *const keys[] = {"http", "grpc"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char sp[256], fp[256];
    b->has_fallback = true;
    if (!FIELDS(c, m, path, keys, f))
        return;
    if (f[0]) {
        static const char *const hk[] = {"status", "body", "headers"};
        const sc_ynode *hf[SC_ARRAY_LEN(hk)];
        sc_config_path(sp, sizeof(sp), path, "http");
        if (FIELDS(c, f[0], sp, hk, hf)) {
            sc_config_path(fp, sizeof(fp), sp, "status");
            sc_config_rd_u32(c, hf[0], fp, 200, 599, &b->fallback_http_status);
            sc_config_path(fp, sizeof(fp), sp, "body");
            sc_config_rd_str(c, hf[1], fp, true, &b->fallback_http_body);
            sc_config_path(fp, sizeof(fp), sp, "headers");
            parse_fallback_headers(c, hf[2], fp, false, &b->fallback_http_headers,
                                   &b->n_fallback_http_headers);
        }
    }
    if (f[1]) {
        static const char *const gk[] = {"status", "message", "metadata"};
        const sc_ynode *gf[SC_ARRAY_LEN(gk)];
        sc_config_path(sp, sizeof(sp), path, "grpc");
        if (FIELDS(c, f[1], sp, gk, gf)) {
            sc_config_path(fp, sizeof(fp), sp, "status");
            const sc_ynode *st = gf[0];
            if (st && st->kind == SC_YN_SCALAR && !sc_config_yaml_is_null(st)) {
                int code = sc_grpc_status_from_name(st->str, st->len);
                if (code < 0 || code > SC_GRPC_STATUS_MAX)
                    sc_config_err(c, st, fp,
                                  "'%.64s' is not a gRPC status; expected a name such as "
                                  "unavailable or a code 0..16",
                                  st->str);
                else
                    b->fallback_grpc_status = (uint32_t)code;
            } else if (st && st->kind != SC_YN_BAD) {
                sc_config_err(c, st, fp, "expected a gRPC status name, e.g. unavailable");
            }
            sc_config_path(fp, sizeof(fp), sp, "message");
            sc_config_rd_str(c, gf[1], fp, true, &b->fallback_grpc_message);
            sc_config_path(fp, sizeof(fp), sp, "metadata");
            parse_fallback_headers(c, gf[2], fp, true, &b->fallback_grpc_metadata,
                                   &b->n_fallback_grpc_metadata);
        }
    }
}

static void parse_breaker(sc_cx *c, const sc_ynode *m, const char *path, sc_policy *p)
{
    static const char *const keys[] = {"failure_rate",   "slow_call",       "window",
                                       "min_calls",      "open_for",        "half_open_calls",
                                       "consecutive_failures", "failure_on", "fallback"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256], sp[256];
    sc_breaker_policy *b = &p->breaker;
    b->enabled = true;
    if (!FIELDS(c, m, path, keys, f))
        return;
    sc_config_path(fp, sizeof(fp), path, "failure_rate");
    sc_config_rd_percent(c, f[0], fp, false, &b->failure_rate);
    if (f[1]) {
        static const char *const sk[] = {"duration", "rate"};
        const sc_ynode *sf[SC_ARRAY_LEN(sk)];
        sc_config_path(sp, sizeof(sp), path, "slow_call");
        if (FIELDS(c, f[1], sp, sk, sf)) {
            sc_config_require(c, f[1], sp, "duration", sf[0]);
            sc_config_path(fp, sizeof(fp), sp, "duration");
            sc_config_rd_dur(c, sf[0], fp, 1, &b->slow_call_ms);
            sc_config_path(fp, sizeof(fp), sp, "rate");
            sc_config_rd_percent(c, sf[1], fp, false, &b->slow_call_rate);
        }
    }
    sc_config_path(fp, sizeof(fp), path, "window");
    sc_config_rd_dur(c, f[2], fp, 1000, &b->window_ms);
    sc_config_path(fp, sizeof(fp), path, "min_calls");
    sc_config_rd_u32(c, f[3], fp, 1, 1000000, &b->min_calls);
    sc_config_path(fp, sizeof(fp), path, "open_for");
    sc_config_rd_dur(c, f[4], fp, 1, &b->open_for_ms);
    sc_config_path(fp, sizeof(fp), path, "half_open_calls");
    sc_config_rd_u32(c, f[5], fp, 1, 1000, &b->half_open_calls);
    sc_config_path(fp, sizeof(fp), path, "consecutive_failures");
    sc_config_rd_u32(c, f[6], fp, 0, 1000000, &b->consecutive_failures);
    sc_config_path(fp, sizeof(fp), path, "failure_on");
    if (f[7]) {
        uint32_t bits = 0, g = 0;
        if (parse_conds(c, f[7], fp, p->protocol, &bits, &g)) {
            if (!bits && !g)
                sc_config_err(c, f[7], fp, "lists no condition; the breaker would never open");
            b->failure_on = bits;
            b->failure_on_grpc = g;
        }
    }
    sc_config_path(sp, sizeof(sp), path, "fallback");
    if (f[8])
        parse_fallback(c, f[8], sp, b);
}

static void parse_outlier(sc_cx *c, const sc_ynode *m, const char *path, sc_policy *p)
{
    static const char *const keys[] = {"consecutive_failures", "eject_for", "max_eject",
                                       "max_ejected"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    sc_outlier_policy *o = &p->outlier;
    o->enabled = true;
    if (!FIELDS(c, m, path, keys, f))
        return;
    sc_config_path(fp, sizeof(fp), path, "consecutive_failures");
    sc_config_rd_u32(c, f[0], fp, 1, 1000000, &o->consecutive_failures);
    sc_config_path(fp, sizeof(fp), path, "eject_for");
    bool ok = sc_config_rd_dur(c, f[1], fp, 1, &o->eject_for_ms);
    sc_config_path(fp, sizeof(fp), path, "max_eject");
    ok = sc_config_rd_dur(c, f[2], fp, 1, &o->max_eject_ms) && ok;
    sc_config_path(fp, sizeof(fp), path, "max_ejected");
    sc_config_rd_percent(c, f[3], fp, false, &o->max_ejected_percent);
    if (ok && o->max_eject_ms < o->eject_for_ms) {
        char a[32], b[32];
        sc_duration_format(o->max_eject_ms, a, sizeof(a));
        sc_duration_format(o->eject_for_ms, b, sizeof(b));
        sc_config_path(fp, sizeof(fp), path, f[2] ? "max_eject" : "eject_for");
        sc_config_err(c, f[2] ? f[2] : f[1], fp,
                      "max_eject (%s) is shorter than eject_for (%s); expected max_eject >= "
                      "eject_for",
                      a, b);
    }
}

void sc_config_parse_policy(sc_cx *c, const sc_ynode *root, const char *path, sc_policy *p,
                            sc_policy_where *where)
{
    static const char *const keys[] = {"upstream", "protocol",        "listen",
                                       "discovery", "tls",            "timeouts",
                                       "retries",  "bulkhead",        "circuit_breaker",
                                       "outlier",  "load_balancer",   "rate_limits"};
    const sc_ynode *f[SC_ARRAY_LEN(keys)];
    char fp[256];
    sc_config_policy_defaults(p);
    memset(where, 0, sizeof(*where));
    if (!root || sc_config_yaml_is_null(root)) {
        sc_config_err_line(c, root ? root->line : 0, path,
                           "the policy is empty; it needs at least upstream, protocol, listen "
                           "and discovery");
        return;
    }
    where->line = root->line;
    if (!FIELDS(c, root, path, keys, f))
        return;
    for (size_t i = 0; i < 4; i++)
        sc_config_require(c, root, path, keys[i], f[i]);

    sc_config_path(fp, sizeof(fp), path, "upstream");
    if (f[0]) {
        where->name_line = f[0]->line;
        if (sc_config_rd_str(c, f[0], fp, false, &p->name) && !sc_config_is_name(p->name, 128)) {
            sc_config_err(c, f[0], fp,
                          "'%.64s' is not a valid upstream name; use letters, digits, '_', "
                          "'.' and '-' (at most 128)",
                          p->name);
        }
    }
    int proto = SC_PROTO_HTTP1;
    sc_config_path(fp, sizeof(fp), path, "protocol");
    if (sc_config_rd_enum(c, f[1], fp, proto_names, SC_ARRAY_LEN(proto_names), &proto))
        p->protocol = (sc_proto)proto;
    sc_config_path(fp, sizeof(fp), path, "listen");
    if (f[2])
        where->listen_line = f[2]->line;
    sc_config_rd_addr(c, f[2], fp, false, &p->listen);
    sc_config_path(fp, sizeof(fp), path, "discovery");
    if (f[3]) {
        where->discovery_line = f[3]->line;
        parse_discovery(c, f[3], fp, p);
    }
    if (p->discovery == SC_DISCOVERY_CONSUL && !p->consul.service && p->name)
        p->consul.service = sc_xstrdup(p->name);
    sc_config_path(fp, sizeof(fp), path, "tls");
    if (f[4]) {
        where->tls_line = f[4]->line;
        parse_tls(c, f[4], fp, p);
    }
    sc_config_path(fp, sizeof(fp), path, "timeouts");
    if (f[5])
        parse_timeouts(c, f[5], fp, &p->timeouts);
    sc_config_path(fp, sizeof(fp), path, "retries");
    if (f[6])
        parse_retries(c, f[6], fp, p);
    sc_config_path(fp, sizeof(fp), path, "bulkhead");
    if (f[7])
        parse_bulkhead(c, f[7], fp, p);
    sc_config_path(fp, sizeof(fp), path, "circuit_breaker");
    if (f[8])
        parse_breaker(c, f[8], fp, p);
    sc_config_path(fp, sizeof(fp), path, "outlier");
    if (f[9])
        parse_outlier(c, f[9], fp, p);
    int lb = SC_LB_ROUND_ROBIN;
    sc_config_path(fp, sizeof(fp), path, "load_balancer");
    if (sc_config_rd_enum(c, f[10], fp, lb_names, SC_ARRAY_LEN(lb_names), &lb))
        p->lb = (sc_lb_kind)lb;
    sc_config_path(fp, sizeof(fp), path, "rate_limits");
    sc_config_parse_rate_limits(c, f[11], fp, &p->rate_limits, &p->n_rate_limits);

    /* An instance that is our own listener would loop requests forever. */
    for (size_t i = 0; i < p->n_instances && p->listen.len; i++) {
        if (p->instances[i].addr.len == p->listen.len &&
            memcmp(&p->instances[i].addr.ss, &p->listen.ss, p->listen.len) == 0) {
            sc_config_path(fp, sizeof(fp), path, "discovery.static");
            sc_config_err(c, f[3], fp,
                          "instance %s is this upstream's own listen address; requests would "
                          "loop",
                          p->instances[i].addr.text);
        }
    }
}

int sc_policy_load_string(const char *yaml, size_t len, const char *name, sc_policy *out,
                          sc_diags *diags)
{
    sc_diags local = {0};
    sc_diags *d = diags ? diags : &local;
    sc_cx c = {.d = d, .file = name ? name : "<string>", .base_dir = NULL};
    sc_ynode *root = NULL;
    sc_policy_where where;

    memset(out, 0, sizeof(*out));
    size_t before = d->n;
    if (sc_config_yaml_parse(yaml ? yaml : "", yaml ? len : 0, c.file, d, &root) < 0) {
        sc_diags_free(&local);
        return -EINVAL;
    }
    out->file = sc_xstrdup(c.file);
    sc_config_parse_policy(&c, root, "", out, &where);
    sc_config_yaml_free(root);
    bool bad = d->n != before; /* includes aliases the parser reported */
    sc_diags_free(&local);
    if (bad) {
        sc_policy_clear(out);
        return -EINVAL;
    }
    return 0;
}

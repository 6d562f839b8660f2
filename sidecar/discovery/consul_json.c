/*
 * consul_json.c: health answers, index rules, pacing, the registration body
 * and the cache file. Pure functions; see consul_json.h.
 */
#include "discovery/consul_json.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- JSON helpers: Go's encoding/json matches keys without regard to case ---- */

static json_t *ci_get(const json_t *obj, const char *key)
{
    if (!json_is_object(obj))
        return NULL;
    json_t *v = json_object_get(obj, key);
    if (v)
        return v;
    const char *k;
    json_t *val;
    json_object_foreach((json_t *)obj, k, val) {
        if (strcasecmp(k, key) == 0)
            return val;
    }
    return NULL;
}

/* A string member, "" when missing or null; NULL when of another type. */
static const char *str_member(const json_t *obj, const char *key)
{
    json_t *v = ci_get(obj, key);
    if (!v || json_is_null(v))
        return "";
    return json_is_string(v) ? json_string_value(v) : NULL;
}

/* An integer member; `def` when missing or null; false when of another type. */
static bool int_member(const json_t *obj, const char *key, json_int_t def, json_int_t *out)
{
    json_t *v = ci_get(obj, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return true;
    }
    if (json_is_integer(v)) {
        *out = json_integer_value(v);
        return true;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (d >= -9e15 && d <= 9e15 && d == (double)(json_int_t)d) {
            *out = (json_int_t)d;
            return true;
        }
    }
    return false;
}

static void say(char *buf, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *buf, size_t cap, const char *fmt, ...)
{
    if (!buf || cap == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
}

/* ---- addresses ---- */

/* Fills *a from an IP literal (IPv6 with or without brackets) and a port.
 * Returns false for anything else (hostnames, zones, garbage). */
static bool ip_literal_addr(const char *host, unsigned port, sc_addr *a)
{
    char text[sizeof(a->text)];
    size_t hl = strlen(host);
    if (hl == 0 || hl > 64)
        return false;
    char h[72];
    memcpy(h, host, hl + 1);
    if (h[0] == '[' && h[hl - 1] == ']') {
        memmove(h, h + 1, hl - 2);
        h[hl - 2] = 0;
    }
    unsigned char buf[16];
    if (inet_pton(AF_INET, h, buf) == 1)
        snprintf(text, sizeof(text), "%s:%u", h, port);
    else if (inet_pton(AF_INET6, h, buf) == 1)
        snprintf(text, sizeof(text), "[%s]:%u", h, port);
    else
        return false;
    return sc_addr_parse(text, a, false) == 0;
}

/* Service.TaggedAddresses: {"lan_ipv4": {"Address","Port"}, ...}; the first
 * of lan_ipv4, lan_ipv6, lan that holds an IP literal. */
static bool tagged_addr(const json_t *svc, unsigned def_port, sc_addr *a)
{
    json_t *ta = ci_get(svc, "TaggedAddresses");
    static const char *const keys[] = {"lan_ipv4", "lan_ipv6", "lan"};
    for (size_t i = 0; json_is_object(ta) && i < SC_ARRAY_LEN(keys); i++) {
        json_t *t = ci_get(ta, keys[i]);
        const char *addr = str_member(t, "Address");
        json_int_t port;
        if (!json_is_object(t) || !addr || !*addr || !int_member(t, "Port", 0, &port))
            continue;
        unsigned p = port > 0 && port <= 65535 ? (unsigned)port : def_port;
        if (ip_literal_addr(addr, p, a))
            return true;
    }
    return false;
}

/* ---- health answers ---- */

enum { H_PASSING = 0, H_WARNING, H_CRITICAL };

/* The worst status among an entry's checks (node checks included); unknown
 * statuses (e.g. maintenance) count as critical. */
static int worst_status(const json_t *entry, bool *bad_type)
{
    json_t *checks = ci_get(entry, "Checks");
    int worst = H_PASSING;
    *bad_type = false;
    if (!checks || json_is_null(checks))
        return worst;
    if (!json_is_array(checks)) {
        *bad_type = true;
        return H_CRITICAL;
    }
    size_t i;
    json_t *c;
    json_array_foreach(checks, i, c) {
        const char *st = str_member(c, "Status");
        if (!json_is_object(c) || !st) {
            *bad_type = true;
            return H_CRITICAL;
        }
        int s = strcmp(st, "passing") == 0   ? H_PASSING
                : strcmp(st, "warning") == 0 ? H_WARNING
                                             : H_CRITICAL;
        if (s > worst)
            worst = s;
    }
    return worst;
}

static void skip(sc_consul_parse_stats *st, size_t i, const char *id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void skip(sc_consul_parse_stats *st, size_t i, const char *id, const char *fmt, ...)
{
    if (st->skipped++ == 0) {
        char why[160];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, sizeof(why), fmt, ap);
        va_end(ap);
        /* Cut to fit on purpose (the return value is looked at, which tells
         * gcc's -Wformat-truncation that a short text is expected). */
        if (snprintf(st->first_skip, sizeof(st->first_skip), "entry %zu%s%.48s%s: %s", i,
                     id && *id ? " (" : "", id ? id : "", id && *id ? ")" : "", why) < 0)
            st->first_skip[0] = '\0';
    }
}

/* Fills *in from one entry; false (and a reason in st) when it gives none. */
static bool entry_instance(const json_t *e, size_t i, const sc_consul_parse_opts *o,
                           sc_consul_parse_stats *st, sc_instance *in)
{
    if (!json_is_object(e)) {
        skip(st, i, NULL, "not an object");
        return false;
    }
    json_t *svc = ci_get(e, "Service");
    json_t *node = ci_get(e, "Node");
    if (!json_is_object(svc)) {
        skip(st, i, NULL, "no Service object");
        return false;
    }
    const char *id = str_member(svc, "ID");
    if (!id) {
        skip(st, i, NULL, "Service.ID is not a string");
        return false;
    }
    bool bad;
    int health = worst_status(e, &bad);
    if (bad) {
        skip(st, i, id, "Checks is malformed");
        return false;
    }
    if (health == H_CRITICAL) {
        skip(st, i, id, "a check is critical");
        return false;
    }
    if (health == H_WARNING && !o->include_warning) {
        skip(st, i, id, "a check is warning");
        return false;
    }
    json_int_t port;
    if (!int_member(svc, "Port", 0, &port) || port < 1 || port > 65535) {
        skip(st, i, id, "Service.Port is missing or not 1..65535");
        return false;
    }
    json_t *w = ci_get(svc, "Weights");
    json_int_t weight = 1;
    if (w && !json_is_null(w)) {
        if (!json_is_object(w) ||
            !int_member(w, health == H_WARNING ? "Warning" : "Passing", 1, &weight)) {
            skip(st, i, id, "Service.Weights is malformed");
            return false;
        }
        if (health == H_WARNING && weight <= 0) {
            skip(st, i, id, "warning and Weights.Warning is 0");
            return false;
        }
    }
    if (weight < 1)
        weight = 1;
    if (weight > 65535)
        weight = 65535;

    const char *addr = str_member(svc, "Address");
    const char *from = "Service.Address";
    if (!addr) {
        skip(st, i, id, "Service.Address is not a string");
        return false;
    }
    if (!*addr) {
        addr = json_is_object(node) ? str_member(node, "Address") : "";
        from = "Node.Address";
        if (!addr) {
            skip(st, i, id, "Node.Address is not a string");
            return false;
        }
    }
    memset(in, 0, sizeof(*in));
    if (!*addr) {
        if (!tagged_addr(svc, (unsigned)port, &in->addr)) {
            skip(st, i, id, "no address (Service.Address and Node.Address are empty)");
            return false;
        }
    } else if (!ip_literal_addr(addr, (unsigned)port, &in->addr) &&
               !tagged_addr(svc, (unsigned)port, &in->addr)) {
        skip(st, i, id, "%s '%.64s' is not an IP address (hostnames are not resolved)", from,
             addr);
        return false;
    }
    in->weight = (uint32_t)weight;
    snprintf(in->id, sizeof(in->id), "%.63s", *id ? id : in->addr.text);
    return true;
}

static int inst_cmp(const void *pa, const void *pb)
{
    const sc_instance *a = pa, *b = pb;
    int c = strcmp(a->addr.text, b->addr.text);
    if (c)
        return c;
    c = strcmp(a->id, b->id);
    if (c)
        return c;
    return a->weight < b->weight ? -1 : a->weight > b->weight;
}

int sc_consul_parse_health(const char *body, size_t len, const sc_consul_parse_opts *opts,
                           sc_endpoints **out, sc_consul_parse_stats *st, char *err,
                           size_t errlen)
{
    sc_consul_parse_opts dflt = {0};
    sc_consul_parse_stats local;
    if (!opts)
        opts = &dflt;
    if (!st)
        st = &local;
    memset(st, 0, sizeof(*st));
    *out = NULL;
    json_error_t je;
    json_t *root = json_loadb(body ? body : "", body ? len : 0, 0, &je);
    if (!root) {
        say(err, errlen, "the answer is not JSON: %s (line %d, column %d)", je.text, je.line,
            je.column);
        return -EPROTO;
    }
    if (!json_is_array(root)) {
        say(err, errlen, "the answer is not a JSON array");
        json_decref(root);
        return -EPROTO;
    }
    size_t n = json_array_size(root);
    st->entries = n;
    if (n > SC_CONSUL_MAX_INSTANCES) {
        say(err, errlen, "the answer lists %zu instances; at most %u are supported", n,
            (unsigned)SC_CONSUL_MAX_INSTANCES);
        json_decref(root);
        return -E2BIG;
    }
    sc_instance *tmp = n ? malloc(n * sizeof(*tmp)) : NULL;
    if (n && !tmp) {
        json_decref(root);
        return -ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (entry_instance(json_array_get(root, i), i, opts, st, &tmp[k]))
            k++;
    json_decref(root);
    if (k > 1)
        qsort(tmp, k, sizeof(*tmp), inst_cmp);
    sc_endpoints *e = sc_endpoints_new(k);
    if (!e) {
        free(tmp);
        return -ENOMEM;
    }
    if (k)
        memcpy(e->inst, tmp, k * sizeof(*tmp));
    free(tmp);
    *out = e;
    return 0;
}

bool sc_consul_endpoints_same(const sc_endpoints *a, const sc_endpoints *b)
{
    if (!a || !b)
        return a == b;
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++) {
        const sc_instance *x = &a->inst[i], *y = &b->inst[i];
        if (x->weight != y->weight || strcmp(x->addr.text, y->addr.text) != 0 ||
            strcmp(x->id, y->id) != 0)
            return false;
    }
    return true;
}

sc_endpoints *sc_consul_endpoints_copy(const sc_endpoints *e, bool stale)
{
    size_t n = e ? e->n : 0;
    sc_endpoints *c = sc_endpoints_new(n);
    if (!c)
        return NULL;
    if (n)
        memcpy(c->inst, e->inst, n * sizeof(sc_instance));
    c->stale = stale;
    return c;
}

/* ---- blocking queries ---- */

int sc_consul_index_parse(const char *s, size_t len, uint64_t *out)
{
    if (!s)
        return -EINVAL;
    size_t a = 0, b = len;
    while (a < b && (s[a] == ' ' || s[a] == '\t'))
        a++;
    while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t' || s[b - 1] == '\r' || s[b - 1] == '\n'))
        b--;
    if (a == b || b - a > 20)
        return -EINVAL;
    uint64_t v = 0;
    for (size_t i = a; i < b; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -EINVAL;
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

uint64_t sc_consul_index_next(uint64_t prev, uint64_t got)
{
    if (got < prev)
        return 0;
    return got < 1 ? 1 : got;
}

uint64_t sc_consul_read_timeout_ms(uint64_t wait_ms)
{
    return wait_ms + wait_ms / 16 + 1 + SC_CONSUL_READ_MARGIN_MS;
}

int sc_consul_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool keep = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                    (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' || *p == '~';
        size_t need = keep ? 1 : 3;
        if (n + need >= cap)
            return -ENOSPC;
        if (keep) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    if (cap == 0)
        return -ENOSPC;
    out[n] = 0;
    return (int)n;
}

int sc_consul_health_path(char *buf, size_t cap, const char *service, const char *tag,
                          const char *dc, uint64_t index, uint64_t wait_ms)
{
    char es[3 * 256 + 1], et[3 * 256 + 1], ed[3 * 256 + 1], w[64];
    if (!service || !*service || sc_consul_escape(service, es, sizeof(es)) < 0 ||
        (tag && sc_consul_escape(tag, et, sizeof(et)) < 0) ||
        (dc && sc_consul_escape(dc, ed, sizeof(ed)) < 0))
        return -ENOSPC;
    sc_duration_format(wait_ms, w, sizeof(w));
    char ix[128] = "";
    if (index)
        snprintf(ix, sizeof(ix), "&index=%llu&wait=%s", (unsigned long long)index, w);
    int n = snprintf(buf, cap, "/v1/health/service/%s?passing%s%s%s%s%s", es, tag ? "&tag=" : "",
                     tag ? et : "", dc ? "&dc=" : "", dc ? ed : "", ix);
    if (n < 0 || (size_t)n >= cap)
        return -ENOSPC;
    return n;
}

int sc_consul_path_ent(char *buf, size_t cap, const char *ns, const char *partition)
{
    size_t n = strnlen(buf, cap);
    if (n >= cap)
        return -ENOSPC;
    char ens[3 * 256 + 1], ep[3 * 256 + 1];
    bool has_ns = ns && *ns, has_p = partition && *partition;
    if ((has_ns && sc_consul_escape(ns, ens, sizeof(ens)) < 0) ||
        (has_p && sc_consul_escape(partition, ep, sizeof(ep)) < 0))
        return -ENOSPC;
    bool q = memchr(buf, '?', n) != NULL;
    int m = snprintf(buf + n, cap - n, "%s%s%s%s%s%s", has_ns ? (q ? "&" : "?") : "",
                     has_ns ? "ns=" : "", has_ns ? ens : "",
                     has_p ? ((q || has_ns) ? "&" : "?") : "", has_p ? "partition=" : "",
                     has_p ? ep : "");
    if (m < 0 || (size_t)m >= cap - n) {
        buf[n] = 0;
        return -ENOSPC;
    }
    return (int)(n + (size_t)m);
}

int sc_consul_target_make(const char *address, bool ssl, const char *server_name, sc_consul_target *t)
{
    memset(t, 0, sizeof(*t));
    const char *a = address && *address ? address : "127.0.0.1:8500";
    if (strncmp(a, "unix://", 7) == 0) {
        if (!a[7])
            return -EINVAL;
        t->unix_path = a + 7;
        /* libcurl needs a URL; the host in it is only the Host header */
        snprintf(t->display, sizeof(t->display), "http://localhost");
        snprintf(t->url_base, sizeof(t->url_base), "http://localhost");
        return 0;
    }
    if (strncmp(a, "http://", 7) == 0) {
        a += 7;
    } else if (strncmp(a, "https://", 8) == 0) {
        a += 8;
        ssl = true;
    }
    size_t n = strlen(a);
    while (n && a[n - 1] == '/')
        n--;
    if (n == 0)
        return -EINVAL;
    int k = snprintf(t->display, sizeof(t->display), "%s://%.*s", ssl ? "https" : "http", (int)n, a);
    if (k < 0 || (size_t)k >= sizeof(t->display))
        return -ENOSPC;
    memcpy(t->url_base, t->display, (size_t)k + 1);
    if (!ssl || !server_name || !*server_name)
        return 0;
    if (strchr(server_name, ':'))
        return -EINVAL; /* SNI carries DNS names only */
    /* authority: host[:port], host maybe [v6] (kept in brackets for CONNECT_TO) */
    const char *port = NULL;
    size_t hl = n;
    if (a[0] == '[') {
        const char *close = memchr(a, ']', n);
        if (!close)
            return -EINVAL;
        hl = (size_t)(close - a) + 1;
        if (hl < n && a[hl] == ':')
            port = a + hl + 1;
    } else {
        const char *colon = memchr(a, ':', n);
        if (colon) {
            hl = (size_t)(colon - a);
            port = colon + 1;
        }
    }
    size_t pl = port ? n - (size_t)(port - a) : 0;
    k = snprintf(t->url_base, sizeof(t->url_base), "https://%s%s%.*s", server_name, pl ? ":" : "",
                 (int)pl, pl ? port : "");
    if (k < 0 || (size_t)k >= sizeof(t->url_base))
        return -ENOSPC;
    /* an empty first port matches any port of the URL; an empty last one keeps it */
    k = snprintf(t->connect_to, sizeof(t->connect_to), "%s::%.*s:", server_name, (int)hl, a);
    if (k < 0 || (size_t)k >= sizeof(t->connect_to))
        return -ENOSPC;
    return 0;
}

int sc_consul_token_trim(const char *buf, size_t len, const char **tok, size_t *tlen)
{
    size_t a = 0, b = len;
    while (a < b && (buf[a] == ' ' || buf[a] == '\t' || buf[a] == '\r' || buf[a] == '\n'))
        a++;
    while (b > a && (buf[b - 1] == ' ' || buf[b - 1] == '\t' || buf[b - 1] == '\r' || buf[b - 1] == '\n'))
        b--;
    *tok = buf + a;
    *tlen = b - a;
    if (b == a)
        return -ENODATA;
    if (memchr(buf + a, 0, b - a) || memchr(buf + a, '\n', b - a) || memchr(buf + a, '\r', b - a))
        return -EINVAL;
    return 0;
}

/* ---- pacing ---- */

uint64_t sc_consul_backoff_ms(unsigned failures, uint64_t base_ms, uint64_t cap_ms, uint64_t rnd)
{
    if (failures == 0)
        return 0;
    if (base_ms == 0)
        base_ms = 1;
    if (cap_ms < base_ms)
        cap_ms = base_ms;
    unsigned shift = failures - 1 > 40 ? 40 : failures - 1;
    uint64_t ceil = base_ms;
    for (unsigned i = 0; i < shift && ceil < cap_ms; i++)
        ceil *= 2;
    if (ceil > cap_ms)
        ceil = cap_ms;
    uint64_t half = ceil / 2;
    return half + rnd % (ceil - half + 1);
}

void sc_consul_bucket_init(sc_consul_bucket *b, double burst, double per_s, uint64_t now_ms)
{
    b->burst = burst < 1 ? 1 : burst;
    b->per_ms = per_s > 0 ? per_s / 1000.0 : 0.001;
    b->tokens = b->burst;
    b->last_ms = now_ms;
}

uint64_t sc_consul_bucket_take(sc_consul_bucket *b, uint64_t now_ms)
{
    if (now_ms > b->last_ms) {
        b->tokens += (double)(now_ms - b->last_ms) * b->per_ms;
        if (b->tokens > b->burst)
            b->tokens = b->burst;
        b->last_ms = now_ms;
    }
    if (b->tokens >= 1.0) {
        b->tokens -= 1.0;
        return 0;
    }
    double wait = (1.0 - b->tokens) / b->per_ms;
    uint64_t ms = (uint64_t)wait;
    return ms < wait ? ms + 1 : (ms ? ms : 1);
}

/* ---- registration ---- */

void sc_consul_check_id(const char *service_id, char *buf, size_t cap)
{
    snprintf(buf, cap, "service:%s", service_id ? service_id : "");
}

static json_t *jdur(uint64_t ms)
{
    char b[64];
    sc_duration_format(ms, b, sizeof(b));
    if (strcmp(b, "0") == 0)
        snprintf(b, sizeof(b), "0s");
    return json_string(b);
}

static int set(json_t *o, const char *k, json_t *v)
{
    return v ? json_object_set_new(o, k, v) : -1;
}

char *sc_consul_registration_body(const sc_consul_reg *r)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = 0;
    bad |= set(o, "ID", json_string(r->id ? r->id : r->name));
    bad |= set(o, "Name", json_string(r->name ? r->name : ""));
    json_t *tags = json_array();
    for (size_t i = 0; tags && i < r->n_tags; i++)
        bad |= json_array_append_new(tags, json_string(r->tags[i]));
    bad |= set(o, "Tags", tags);
    if (r->address && *r->address)
        bad |= set(o, "Address", json_string(r->address));
    if (r->port)
        bad |= set(o, "Port", json_integer(r->port));
    json_t *meta = json_object();
    for (size_t i = 0; meta && i < r->n_meta; i++)
        bad |= set(meta, r->meta[i].key, json_string(r->meta[i].value ? r->meta[i].value : ""));
    if (meta && r->version && (r->n_meta < 64 || json_object_get(meta, "sidecar-version")))
        bad |= set(meta, "sidecar-version", json_string(r->version));
    bad |= set(o, "Meta", meta);
    if (r->check == SC_CHECK_HTTP || r->check == SC_CHECK_TTL || r->check == SC_CHECK_GRPC) {
        json_t *c = json_object();
        char cid[300];
        sc_consul_check_id(r->id ? r->id : r->name, cid, sizeof(cid));
        bad |= set(c, "CheckID", json_string(cid));
        char name[300];
        snprintf(name, sizeof(name), "%s readiness (sidecar %s)", r->name ? r->name : "",
                 r->check == SC_CHECK_TTL ? "TTL" : r->check == SC_CHECK_GRPC ? "gRPC health" : "/ready");
        bad |= set(c, "Name", json_string(name));
        if (r->check == SC_CHECK_TTL) {
            bad |= set(c, "TTL", jdur(r->ttl_ms));
        } else {
            if (r->check == SC_CHECK_HTTP) {
                bad |= set(c, "HTTP", json_string(r->check_target ? r->check_target : ""));
                bad |= set(c, "Method", json_string("GET"));
            } else {
                bad |= set(c, "GRPC", json_string(r->check_target ? r->check_target : ""));
                bad |= set(c, "GRPCUseTLS", json_false());
            }
            bad |= set(c, "Interval", jdur(r->interval_ms));
            bad |= set(c, "Timeout", jdur(r->timeout_ms));
        }
        if (r->deregister_after_ms)
            bad |= set(c, "DeregisterCriticalServiceAfter", jdur(r->deregister_after_ms));
        bad |= set(o, "Check", c);
    }
    char *s = bad ? NULL : json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* ---- cache file ---- */

static json_t *jstr_or_null(const char *s)
{
    return s ? json_string(s) : json_null();
}

char *sc_consul_cache_dump(const sc_consul_cache_entry *e, size_t n)
{
    json_t *root = json_object();
    json_t *ups = json_array();
    int bad = !root || !ups;
    for (size_t i = 0; !bad && i < n; i++) {
        json_t *u = json_object();
        json_t *insts = json_array();
        bad |= !u || !insts;
        if (bad) {
            json_decref(u);
            json_decref(insts);
            break;
        }
        bad |= set(u, "upstream", json_string(e[i].upstream ? e[i].upstream : ""));
        bad |= set(u, "service", json_string(e[i].service ? e[i].service : ""));
        bad |= set(u, "tag", jstr_or_null(e[i].tag));
        bad |= set(u, "dc", jstr_or_null(e[i].dc));
        bad |= set(u, "saved", json_integer(e[i].saved_unix));
        for (size_t k = 0; e[i].endpoints && k < e[i].endpoints->n; k++) {
            const sc_instance *in = &e[i].endpoints->inst[k];
            json_t *j = json_object();
            bad |= set(j, "address", json_string(in->addr.text));
            bad |= set(j, "id", json_string(in->id));
            bad |= set(j, "weight", json_integer(in->weight));
            bad |= json_array_append_new(insts, j);
        }
        bad |= set(u, "instances", insts);
        bad |= json_array_append_new(ups, u);
    }
    if (root) {
        bad |= set(root, "version", json_integer(1));
        bad |= set(root, "upstreams", ups);
    } else {
        json_decref(ups);
    }
    char *s = bad ? NULL : json_dumps(root, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(root);
    return s;
}

static bool opt_eq(const json_t *v, const char *want)
{
    if (!want)
        return !v || json_is_null(v);
    return json_is_string(v) && strcmp(json_string_value(v), want) == 0;
}

int sc_consul_cache_find(const char *doc, size_t len, const char *upstream, const char *service,
                         const char *tag, const char *dc, sc_endpoints **out,
                         int64_t *saved_unix)
{
    *out = NULL;
    json_t *root = json_loadb(doc ? doc : "", doc ? len : 0, 0, NULL);
    json_t *ups = root ? json_object_get(root, "upstreams") : NULL;
    json_t *ver = root ? json_object_get(root, "version") : NULL;
    if (!json_is_object(root) || !json_is_array(ups) || !json_is_integer(ver) ||
        json_integer_value(ver) != 1) {
        json_decref(root);
        return -EPROTO;
    }
    size_t i;
    json_t *u;
    int rc = -ENOENT;
    json_array_foreach(ups, i, u) {
        if (!opt_eq(json_object_get(u, "upstream"), upstream) ||
            !opt_eq(json_object_get(u, "service"), service) ||
            !opt_eq(json_object_get(u, "tag"), tag) || !opt_eq(json_object_get(u, "dc"), dc))
            continue;
        json_t *insts = json_object_get(u, "instances");
        size_t n = json_array_size(insts);
        if (!json_is_array(insts) || n > SC_CONSUL_MAX_INSTANCES) {
            rc = -EPROTO;
            break;
        }
        sc_endpoints *e = sc_endpoints_new(n);
        if (!e) {
            rc = -ENOMEM;
            break;
        }
        size_t k = 0, j;
        json_t *in;
        json_array_foreach(insts, j, in) {
            const char *a = json_string_value(json_object_get(in, "address"));
            const char *id = json_string_value(json_object_get(in, "id"));
            json_t *w = json_object_get(in, "weight");
            json_int_t wv = json_is_integer(w) ? json_integer_value(w) : 1;
            if (!a || sc_addr_parse(a, &e->inst[k].addr, false) < 0)
                continue;
            e->inst[k].weight = wv < 1 ? 1 : wv > 65535 ? 65535 : (uint32_t)wv;
            snprintf(e->inst[k].id, sizeof(e->inst[k].id), "%.63s", id ? id : a);
            k++;
        }
        e->n = k;
        if (k > 1)
            qsort(e->inst, k, sizeof(sc_instance), inst_cmp);
        e->stale = true;
        json_t *sv = json_object_get(u, "saved");
        if (saved_unix)
            *saved_unix = json_is_integer(sv) ? json_integer_value(sv) : 0;
        *out = e;
        rc = 0;
        break;
    }
    json_decref(root);
    return rc;
}

/* ---- Connect ---- */

static int pem_append(char **buf, size_t *len, const char *pem)
{
    size_t n = strlen(pem);
    char *nb = realloc(*buf, *len + n + 2);
    if (!nb)
        return -ENOMEM;
    memcpy(nb + *len, pem, n);
    *len += n;
    if (n && pem[n - 1] != '\n')
        nb[(*len)++] = '\n';
    nb[*len] = 0;
    *buf = nb;
    return 0;
}

int sc_consul_parse_roots(const char *body, size_t len, char **ca_pem, size_t *n_roots,
                          char *active_id, size_t id_cap, char *err, size_t errlen)
{
    *ca_pem = NULL;
    *n_roots = 0;
    if (id_cap)
        active_id[0] = 0;
    json_error_t je;
    json_t *doc = json_loadb(body ? body : "", len, 0, &je);
    if (!doc) {
        snprintf(err, errlen, "the roots answer is not JSON: %s", je.text);
        return -EPROTO;
    }
    json_t *roots = ci_get(doc, "Roots");
    if (!json_is_array(roots)) {
        json_decref(doc);
        snprintf(err, errlen, "the roots answer has no Roots array");
        return -EPROTO;
    }
    const char *act = str_member(doc, "ActiveRootID");
    if (act && id_cap)
        snprintf(active_id, id_cap, "%s", act);
    char *buf = NULL;
    size_t bl = 0, n = 0;
    int rc = 0;
    size_t i;
    json_t *r;
    json_array_foreach(roots, i, r) {
        const char *pem = str_member(r, "RootCert");
        if (!pem || !strstr(pem, "-----BEGIN CERTIFICATE-----"))
            continue;
        if ((rc = pem_append(&buf, &bl, pem)) < 0)
            break;
        json_t *im = ci_get(r, "IntermediateCerts");
        size_t k;
        json_t *v;
        if (json_is_array(im))
            json_array_foreach(im, k, v) {
                if (rc == 0 && json_is_string(v))
                    rc = pem_append(&buf, &bl, json_string_value(v));
            }
        if (rc < 0)
            break;
        n++;
    }
    json_decref(doc);
    if (rc < 0) {
        free(buf);
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    if (!n) {
        free(buf);
        snprintf(err, errlen, "the roots answer lists no root certificate");
        return -EPROTO;
    }
    *ca_pem = buf;
    *n_roots = n;
    return 0;
}

int sc_consul_parse_leaf(const char *body, size_t len, char **cert_pem, char **key_pem,
                         char *serial, size_t serial_cap, char *uri, size_t uri_cap, char *err,
                         size_t errlen)
{
    *cert_pem = *key_pem = NULL;
    if (serial_cap)
        serial[0] = 0;
    if (uri_cap)
        uri[0] = 0;
    json_error_t je;
    json_t *doc = json_loadb(body ? body : "", len, 0, &je);
    if (!doc) {
        snprintf(err, errlen, "the leaf answer is not JSON: %s", je.text);
        return -EPROTO;
    }
    const char *c = str_member(doc, "CertPEM"), *k = str_member(doc, "PrivateKeyPEM");
    if (!c || !*c || !k || !*k) {
        /* c and k point into doc: decide the message before releasing it */
        snprintf(err, errlen, "the leaf answer has no %s", (!c || !*c) ? "CertPEM" : "PrivateKeyPEM");
        json_decref(doc);
        return -EPROTO;
    }
    const char *sn = str_member(doc, "SerialNumber"), *u = str_member(doc, "ServiceURI");
    if (sn && serial_cap)
        snprintf(serial, serial_cap, "%s", sn);
    if (u && uri_cap)
        snprintf(uri, uri_cap, "%s", u);
    *cert_pem = strdup(c);
    *key_pem = strdup(k);
    json_decref(doc);
    if (!*cert_pem || !*key_pem) {
        free(*cert_pem);
        free(*key_pem);
        *cert_pem = *key_pem = NULL;
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    return 0;
}

/* ---- Connect authorization ---- */

char *sc_consul_authorize_body(const char *target, const char *client_uri,
                               const char *client_serial)
{
    if (!target || !client_uri)
        return NULL;
    json_t *o = json_object();
    if (!o)
        return NULL;
    int bad = json_object_set_new(o, "Target", json_string(target));
    bad |= json_object_set_new(o, "ClientCertURI", json_string(client_uri));
    if (client_serial && *client_serial)
        bad |= json_object_set_new(o, "ClientCertSerial", json_string(client_serial));
    char *s = bad ? NULL : json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

int sc_consul_parse_authorize(const char *body, size_t len, bool *authorized, char *reason,
                              size_t reason_cap, char *err, size_t errlen)
{
    if (reason_cap)
        reason[0] = 0;
    json_error_t je;
    json_t *doc = json_loadb(body ? body : "", len, 0, &je);
    if (!doc) {
        snprintf(err, errlen, "the authorize answer is not JSON: %s", je.text);
        return -EPROTO;
    }
    int rc = -EPROTO;
    json_t *a = ci_get(doc, "Authorized");
    const char *r = json_is_object(doc) ? str_member(doc, "Reason") : NULL;
    if (!json_is_object(doc))
        snprintf(err, errlen, "the authorize answer is not a JSON object");
    else if (!a || !json_is_boolean(a))
        snprintf(err, errlen, "the authorize answer has no boolean Authorized");
    else if (!r)
        snprintf(err, errlen, "the authorize answer's Reason is not a string");
    else {
        *authorized = json_is_true(a);
        size_t n = 0;
        for (; r[n] && n + 1 < reason_cap; n++) {
            unsigned char ch = (unsigned char)r[n];
            reason[n] = (ch < 0x20 || ch == 0x7f) ? ' ' : (char)ch;
        }
        /* never end inside a UTF-8 sequence when cut */
        if (r[n] && n) {
            size_t k = n;
            while (k && ((unsigned char)reason[k - 1] & 0xc0) == 0x80)
                k--;
            if (k && ((unsigned char)reason[k - 1] & 0x80))
                k--;
            else
                k = n;
            n = k;
        }
        if (reason_cap)
            reason[n] = 0;
        rc = 0;
    }
    json_decref(doc);
    return rc;
}

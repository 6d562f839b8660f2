/*
 * fuzz_consul_json.c: arbitrary bytes as a /v1/health/service answer, as an
 * X-Consul-Index value, as a cache file, as a grpc.health.v1 request, as
 * Connect CA roots and leaf answers and as a Connect authorize answer, as
 * a token file, an agent address with a TLS server name, a namespace.
 * The parsers must refuse or skip bad input, never crash, leak or hang, and
 * what they accept must be well formed (sorted, ports set, weights >= 1).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/consul_json.h"
#include "discovery/grpc_health.h"

static void check_snapshot(const sc_endpoints *e)
{
    for (size_t i = 0; i < e->n; i++) {
        if (e->inst[i].weight < 1 || e->inst[i].weight > 65535 || e->inst[i].addr.len == 0)
            abort();
        if (i && strcmp(e->inst[i - 1].addr.text, e->inst[i].addr.text) > 0)
            abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sc_addr_set_dns_enabled(false);
    const char *s = (const char *)data;

    for (int warn = 0; warn < 2; warn++) {
        sc_consul_parse_opts o = {.include_warning = warn};
        sc_endpoints *e = NULL;
        sc_consul_parse_stats st;
        char err[128];
        if (sc_consul_parse_health(s, size, &o, &e, &st, err, sizeof(err)) == 0) {
            check_snapshot(e);
            if (!sc_consul_endpoints_same(e, e))
                abort();
            sc_endpoints *c = sc_consul_endpoints_copy(e, true);
            if (!c || !sc_consul_endpoints_same(e, c))
                abort();
            sc_consul_cache_entry ent = {.upstream = "u", .service = "s", .endpoints = e};
            char *doc = sc_consul_cache_dump(&ent, 1);
            sc_endpoints *back = NULL;
            if (!doc || sc_consul_cache_find(doc, strlen(doc), "u", "s", NULL, NULL, &back, NULL) != 0 ||
                !sc_consul_endpoints_same(e, back))
                abort();
            free(back);
            free(doc);
            free(c);
            free(e);
        }
    }

    uint64_t v;
    if (sc_consul_index_parse(s, size, &v) == 0)
        (void)sc_consul_index_next(v / 2, v);

    sc_endpoints *e = NULL;
    if (sc_consul_cache_find(s, size, "u", "s", NULL, NULL, &e, NULL) == 0) {
        check_snapshot(e);
        free(e);
    }

    char svc[64];
    (void)sc_grpc_health_decode_request(data, size, svc, sizeof(svc));

    /* token files, and the address / TLS server name / namespace of the agent
     * (config values: bounded, NUL terminated strings) */
    const char *tok;
    size_t tl;
    if (sc_consul_token_trim(s, size, &tok, &tl) == 0 &&
        (tl == 0 || tok < s || tok + tl > s + size || memchr(tok, '\n', tl)))
        abort();
    if (size < 300) {
        char str[301];
        memcpy(str, data, size);
        str[size] = 0;
        size_t half = strlen(str) / 2;
        char a[301], b[301];
        memcpy(a, str, half);
        a[half] = 0;
        snprintf(b, sizeof(b), "%s", str + half);
        sc_consul_target t;
        if (sc_consul_target_make(a, size & 1, b, &t) == 0 && strlen(t.url_base) >= sizeof(t.url_base))
            abort();
        char path[64] = "/v1/agent/service/register";
        int n = sc_consul_path_ent(path, sizeof(path), a, b);
        if ((n >= 0 && (size_t)n != strlen(path)) || strlen(path) >= sizeof(path))
            abort();
    }

    /* Connect answers (tls.source: consul). */
    char *ca = NULL, *cert = NULL, *key = NULL, id[64], serial[64], uri[256], err2[128];
    size_t n_roots = 0;
    if (sc_consul_parse_roots(s, size, &ca, &n_roots, id, sizeof(id), err2, sizeof(err2)) == 0 &&
        (!ca || n_roots == 0 || strlen(id) >= sizeof(id)))
        abort();
    free(ca);
    if (sc_consul_parse_leaf(s, size, &cert, &key, serial, sizeof(serial), uri, sizeof(uri), err2, sizeof(err2)) == 0 &&
        (!cert || !key))
        abort();
    free(cert);
    free(key);

    /* Connect authorize answers (tls.authorize: consul): a reason is cut to
     * its buffer and holds no control character. */
    bool authorized = false;
    char reason[SC_CONSUL_REASON_MAX];
    if (sc_consul_parse_authorize(s, size, &authorized, reason, sizeof(reason), err2, sizeof(err2)) == 0) {
        size_t n = strnlen(reason, sizeof(reason));
        if (n == sizeof(reason))
            abort();
        for (size_t i = 0; i < n; i++)
            if ((unsigned char)reason[i] < 0x20 || reason[i] == 0x7f)
                abort();
    }
    return 0;
}

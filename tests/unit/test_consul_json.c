/* Unit tests for discovery/consul_json.c: health answers, index rules,
 * pacing, the registration body, the cache file, Connect answers and the
 * authorize request and answer. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "discovery/consul_json.h"

static sc_endpoints *parse_ok(const char *body, const sc_consul_parse_opts *o,
                              sc_consul_parse_stats *st)
{
    sc_endpoints *e = NULL;
    char err[256] = "";
    int rc = sc_consul_parse_health(body, strlen(body), o, &e, st, err, sizeof(err));
    if (rc != 0)
        fprintf(stderr, "parse failed (%d): %s\n", rc, err);
    assert_int_equal(rc, 0);
    assert_non_null(e);
    assert_false(e->stale);
    return e;
}

/* One entry as the agent writes it (the reference's shape). */
#define ENTRY(node_addr, svc_id, svc_addr, port, weights, checks)                             \
    "{\"Node\":{\"ID\":\"n\",\"Node\":\"node-" svc_id "\",\"Address\":\"" node_addr "\","      \
    "\"Datacenter\":\"dc1\",\"TaggedAddresses\":{\"lan\":\"" node_addr "\"},\"Meta\":{}},"     \
    "\"Service\":{\"ID\":\"" svc_id "\",\"Service\":\"pay\",\"Tags\":[],\"Address\":\""        \
    svc_addr "\",\"Meta\":null,\"Port\":" #port weights ",\"EnableTagOverride\":false},"        \
    "\"Checks\":" checks "}"
#define W(p, w) ",\"Weights\":{\"Passing\":" #p ",\"Warning\":" #w "}"
#define SERF(st) "{\"Node\":\"n\",\"CheckID\":\"serfHealth\",\"Status\":\"" st "\",\"ServiceID\":\"\"}"
#define SVC(id, st) "{\"CheckID\":\"service:" id "\",\"Status\":\"" st "\",\"ServiceID\":\"" id "\"}"
#define PASSING(id) "[" SERF("passing") "," SVC(id, "passing") "]"

static void test_empty_array(void **st)
{
    (void)st;
    sc_consul_parse_stats s;
    sc_endpoints *e = parse_ok("[]", NULL, &s);
    assert_int_equal(e->n, 0);
    assert_int_equal(s.entries, 0);
    assert_int_equal(s.skipped, 0);
    free(e);
    e = parse_ok(" [ ] \n", NULL, NULL);
    assert_int_equal(e->n, 0);
    free(e);
}

static void test_not_an_array(void **st)
{
    (void)st;
    static const char *const bad[] = {"", "null", "{}", "{\"a\":1}", "[", "nope", "[1,", "\"x\""};
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        sc_endpoints *e = (sc_endpoints *)1;
        char err[200] = "";
        assert_int_equal(sc_consul_parse_health(bad[i], strlen(bad[i]), NULL, &e, NULL, err,
                                                sizeof(err)),
                         -EPROTO);
        assert_null(e);
        assert_true(err[0] != 0);
    }
    sc_endpoints *e = (sc_endpoints *)1;
    assert_int_equal(sc_consul_parse_health(NULL, 0, NULL, &e, NULL, NULL, 0), -EPROTO);
}

static void test_service_address_and_weights(void **st)
{
    (void)st;
    const char *body = "[" ENTRY("10.0.0.1", "pay-1", "10.1.0.1", 8080, W(3, 1), PASSING("pay-1")) "]";
    sc_endpoints *e = parse_ok(body, NULL, NULL);
    assert_int_equal(e->n, 1);
    assert_string_equal(e->inst[0].addr.text, "10.1.0.1:8080");
    assert_int_equal(e->inst[0].addr.ss.ss_family, AF_INET);
    assert_int_equal(e->inst[0].weight, 3);
    assert_string_equal(e->inst[0].id, "pay-1");
    free(e);
}

static void test_node_address_fallback(void **st)
{
    (void)st;
    const char *body = "[" ENTRY("10.0.0.2", "pay-2", "", 9000, "", PASSING("pay-2")) "]";
    sc_endpoints *e = parse_ok(body, NULL, NULL);
    assert_int_equal(e->n, 1);
    assert_string_equal(e->inst[0].addr.text, "10.0.0.2:9000");
    assert_int_equal(e->inst[0].weight, 1); /* no Weights: 1 */
    free(e);
    /* Service.Address missing altogether (not just empty) */
    body = "[{\"Node\":{\"Address\":\"10.0.0.3\"},\"Service\":{\"ID\":\"x\",\"Port\":1}}]";
    e = parse_ok(body, NULL, NULL);
    assert_int_equal(e->n, 1);
    assert_string_equal(e->inst[0].addr.text, "10.0.0.3:1");
    free(e);
}

static void test_missing_fields(void **st)
{
    (void)st;
    sc_consul_parse_stats s;
    /* no Node, no address anywhere */
    const char *body = "[{\"Service\":{\"ID\":\"a\",\"Port\":80}}]";
    sc_endpoints *e = parse_ok(body, NULL, &s);
    assert_int_equal(e->n, 0);
    assert_int_equal(s.skipped, 1);
    assert_non_null(strstr(s.first_skip, "no address"));
    free(e);
    /* no Service */
    e = parse_ok("[{\"Node\":{\"Address\":\"10.0.0.1\"}}]", NULL, &s);
    assert_int_equal(e->n, 0);
    assert_non_null(strstr(s.first_skip, "no Service"));
    free(e);
    /* no Port, port 0, port too large, port a string */
    static const char *const ports[] = {
        "[{\"Service\":{\"ID\":\"a\",\"Address\":\"10.0.0.1\"}}]",
        "[{\"Service\":{\"ID\":\"a\",\"Address\":\"10.0.0.1\",\"Port\":0}}]",
        "[{\"Service\":{\"ID\":\"a\",\"Address\":\"10.0.0.1\",\"Port\":70000}}]",
        "[{\"Service\":{\"ID\":\"a\",\"Address\":\"10.0.0.1\",\"Port\":\"80\"}}]",
        "[{\"Service\":{\"ID\":\"a\",\"Address\":\"10.0.0.1\",\"Port\":-5}}]",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(ports); i++) {
        e = parse_ok(ports[i], NULL, &s);
        assert_int_equal(e->n, 0);
        assert_non_null(strstr(s.first_skip, "Port"));
        free(e);
    }
    /* wrong types skip the entry, others stay */
    body = "[{\"Service\":{\"ID\":7,\"Address\":\"10.0.0.1\",\"Port\":1}},"
           "{\"Service\":{\"ID\":\"b\",\"Address\":42,\"Port\":1}},"
           "{\"Service\":{\"ID\":\"c\",\"Address\":\"10.0.0.1\",\"Port\":1,\"Weights\":3}},"
           "{\"Service\":{\"ID\":\"d\",\"Address\":\"10.0.0.1\",\"Port\":1},\"Checks\":{}},"
           "{\"Service\":{\"ID\":\"e\",\"Address\":\"10.0.0.1\",\"Port\":1},\"Checks\":[5]},"
           "42, null, [], \"x\","
           "{\"Service\":{\"ID\":\"ok\",\"Address\":\"10.0.0.9\",\"Port\":1,\"Port2\":1}}]";
    e = parse_ok(body, NULL, &s);
    assert_int_equal(e->n, 1);
    assert_string_equal(e->inst[0].id, "ok");
    assert_int_equal(s.entries, 10);
    assert_int_equal(s.skipped, 9);
    free(e);
    /* null members count as missing; ID missing -> the address */
    body = "[{\"Node\":null,\"Service\":{\"ID\":null,\"Address\":\"10.0.0.5\",\"Port\":7,"
           "\"Weights\":null},\"Checks\":null}]";
    e = parse_ok(body, NULL, &s);
    assert_int_equal(e->n, 1);
    assert_string_equal(e->inst[0].id, "10.0.0.5:7");
    assert_int_equal(e->inst[0].weight, 1);
    free(e);
}

static void test_checks(void **st)
{
    (void)st;
    sc_consul_parse_stats s;
    /* a critical node check (serfHealth) removes the instance */
    const char *body =
        "[" ENTRY("10.0.0.1", "a", "", 80, "", "[" SERF("critical") "," SVC("a", "passing") "]") ","
        ENTRY("10.0.0.2", "b", "", 80, W(5, 2), "[" SERF("passing") "," SVC("b", "warning") "]") ","
        ENTRY("10.0.0.3", "c", "", 80, W(5, 0), "[" SVC("c", "warning") "]") ","
        ENTRY("10.0.0.4", "d", "", 80, "", "[" SVC("d", "maintenance") "]") ","
        ENTRY("10.0.0.5", "e", "", 80, W(4, 1), "[]") "]";
    sc_endpoints *e = parse_ok(body, NULL, &s);
    assert_int_equal(e->n, 1);
    assert_string_equal(e->inst[0].id, "e");
    assert_int_equal(e->inst[0].weight, 4);
    assert_int_equal(s.skipped, 4);
    assert_non_null(strstr(s.first_skip, "critical"));
    free(e);
    /* with warning entries included: Weights.Warning; 0 skips */
    sc_consul_parse_opts o = {.include_warning = true};
    e = parse_ok(body, &o, &s);
    assert_int_equal(e->n, 2);
    assert_string_equal(e->inst[0].id, "b");
    assert_int_equal(e->inst[0].weight, 2);
    assert_string_equal(e->inst[1].id, "e");
    assert_int_equal(s.skipped, 3);
    free(e);
}

static void test_ipv6_and_hostnames(void **st)
{
    (void)st;
    sc_consul_parse_stats s;
    const char *body =
        "[" ENTRY("10.0.0.1", "v6", "2001:db8::1", 443, "", PASSING("v6")) ","
        ENTRY("::1", "v6node", "", 80, "", PASSING("v6node")) ","
        ENTRY("10.0.0.1", "br", "[fe80::1]", 80, "", PASSING("br")) ","
        ENTRY("10.0.0.1", "host", "pay.service.consul", 80, "", PASSING("host")) "]";
    sc_endpoints *e = parse_ok(body, NULL, &s);
    assert_int_equal(e->n, 3);
    assert_string_equal(e->inst[0].addr.text, "[2001:db8::1]:443");
    assert_int_equal(e->inst[0].addr.ss.ss_family, AF_INET6);
    assert_string_equal(e->inst[1].addr.text, "[::1]:80");
    assert_string_equal(e->inst[2].addr.text, "[fe80::1]:80");
    assert_int_equal(s.skipped, 1);
    assert_non_null(strstr(s.first_skip, "pay.service.consul"));
    assert_non_null(strstr(s.first_skip, "not an IP"));
    free(e);
    /* a hostname with an IP in the service's tagged addresses; keys in any case */
    body = "[{\"Service\":{\"ID\":\"h\",\"Address\":\"web.local\",\"Port\":80,"
           "\"TaggedAddresses\":{\"LAN_IPV4\":{\"address\":\"10.9.9.9\",\"port\":8080}}}},"
           "{\"Service\":{\"ID\":\"i\",\"Address\":\"\",\"Port\":81,"
           "\"TaggedAddresses\":{\"lan\":{\"Address\":\"10.9.9.8\",\"Port\":0}}}}]";
    e = parse_ok(body, NULL, &s);
    assert_int_equal(e->n, 2);
    assert_string_equal(e->inst[0].addr.text, "10.9.9.8:81");
    assert_string_equal(e->inst[1].addr.text, "10.9.9.9:8080");
    free(e);
}

static void test_key_case_and_limits(void **st)
{
    (void)st;
    const char *body = "[{\"node\":{\"address\":\"10.0.0.1\"},\"service\":{\"id\":\"a\","
                       "\"address\":\"\",\"port\":5,\"weights\":{\"passing\":1000000}},"
                       "\"checks\":[{\"status\":\"passing\"}]}]";
    sc_endpoints *e = parse_ok(body, NULL, NULL);
    assert_int_equal(e->n, 1);
    assert_string_equal(e->inst[0].addr.text, "10.0.0.1:5");
    assert_int_equal(e->inst[0].weight, 65535);
    free(e);
    /* Passing 0 -> 1; a long ID is cut to 63 characters */
    char id[200];
    memset(id, 'x', 150);
    id[150] = 0;
    char buf[600];
    snprintf(buf, sizeof(buf),
             "[{\"Service\":{\"ID\":\"%s\",\"Address\":\"10.0.0.1\",\"Port\":1,"
             "\"Weights\":{\"Passing\":0,\"Warning\":0}}}]", id);
    e = parse_ok(buf, NULL, NULL);
    assert_int_equal(e->inst[0].weight, 1);
    assert_int_equal(strlen(e->inst[0].id), 63);
    free(e);
    /* floats that are whole numbers are numbers */
    e = parse_ok("[{\"Service\":{\"ID\":\"f\",\"Address\":\"10.0.0.1\",\"Port\":80.0}}]", NULL, NULL);
    assert_int_equal(e->n, 1);
    free(e);
}

static void test_sorted_and_same(void **st)
{
    (void)st;
    const char *ab = "[" ENTRY("10.0.0.2", "b", "", 80, "", PASSING("b")) ","
                     ENTRY("10.0.0.1", "a", "", 80, "", PASSING("a")) "]";
    const char *ba = "[" ENTRY("10.0.0.1", "a", "", 80, "", PASSING("a")) ","
                     ENTRY("10.0.0.2", "b", "", 80, "", PASSING("b")) "]";
    sc_endpoints *x = parse_ok(ab, NULL, NULL), *y = parse_ok(ba, NULL, NULL);
    assert_string_equal(x->inst[0].id, "a");
    assert_true(sc_consul_endpoints_same(x, y));
    y->version = 99;
    y->stale = true;
    assert_true(sc_consul_endpoints_same(x, y));
    y->inst[1].weight = 2;
    assert_false(sc_consul_endpoints_same(x, y));
    y->inst[1].weight = 1;
    snprintf(y->inst[1].id, sizeof(y->inst[1].id), "other");
    assert_false(sc_consul_endpoints_same(x, y));
    sc_endpoints *z = parse_ok("[" ENTRY("10.0.0.1", "a", "", 80, "", PASSING("a")) "]", NULL, NULL);
    assert_false(sc_consul_endpoints_same(x, z));
    assert_true(sc_consul_endpoints_same(NULL, NULL));
    assert_false(sc_consul_endpoints_same(x, NULL));
    sc_endpoints *c = sc_consul_endpoints_copy(x, true);
    assert_true(c->stale);
    assert_true(sc_consul_endpoints_same(x, c));
    sc_endpoints *c0 = sc_consul_endpoints_copy(NULL, false);
    assert_int_equal(c0->n, 0);
    free(x);
    free(y);
    free(z);
    free(c);
    free(c0);
}

static void test_many_instances(void **st)
{
    (void)st;
    size_t n = 1000;
    size_t cap = n * 200 + 16;
    char *buf = malloc(cap);
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(buf + off, cap - off,
                                "%s{\"Service\":{\"ID\":\"s-%zu\",\"Address\":\"10.%zu.%zu.1\",\"Port\":80}}",
                                i ? "," : "", i, i / 256, i % 256);
    snprintf(buf + off, cap - off, "]");
    sc_endpoints *e = parse_ok(buf, NULL, NULL);
    assert_int_equal(e->n, n);
    free(e);
    free(buf);
}

/* ---- index rules ---- */

static void test_index_parse(void **st)
{
    (void)st;
    uint64_t v = 7;
    assert_int_equal(sc_consul_index_parse("123", 3, &v), 0);
    assert_int_equal(v, 123);
    assert_int_equal(sc_consul_index_parse(" 42\r\n", 5, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(sc_consul_index_parse("0", 1, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(sc_consul_index_parse("18446744073709551615", 20, &v), 0);
    assert_true(v == UINT64_MAX);
    static const char *const bad[] = {"", " ", "abc", "-1", "+1", "1.5", "12a",
                                      "18446744073709551616", "99999999999999999999999"};
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++)
        assert_int_equal(sc_consul_index_parse(bad[i], strlen(bad[i]), &v), -EINVAL);
    assert_int_equal(sc_consul_index_parse(NULL, 0, &v), -EINVAL);
}

static void test_index_next(void **st)
{
    (void)st;
    assert_int_equal(sc_consul_index_next(0, 5), 5);   /* first answer */
    assert_int_equal(sc_consul_index_next(5, 5), 5);   /* wait ended, no change */
    assert_int_equal(sc_consul_index_next(5, 9), 9);   /* change */
    assert_int_equal(sc_consul_index_next(9, 5), 0);   /* backwards: reset, fetch again */
    assert_int_equal(sc_consul_index_next(0, 0), 1);   /* never block with 0 */
    assert_int_equal(sc_consul_index_next(1, 0), 0);   /* 0 after 1 went backwards */
    assert_int_equal(sc_consul_index_next(0, 1), 1);
    /* a blocking query with timeout longer than wait + wait/16 */
    assert_true(sc_consul_read_timeout_ms(300000) > 300000 + 300000 / 16);
    assert_true(sc_consul_read_timeout_ms(600000) >= 600000 * 17 / 16 + 5000);
    assert_true(sc_consul_read_timeout_ms(1000) > 1000 + 1000 / 16);
}

static void test_escape_and_path(void **st)
{
    (void)st;
    char b[64];
    assert_int_equal(sc_consul_escape("a b/c?&=", b, sizeof(b)), 18);
    assert_string_equal(b, "a%20b%2Fc%3F%26%3D");
    assert_int_equal(sc_consul_escape("Az09-._~", b, sizeof(b)), 8);
    assert_string_equal(b, "Az09-._~");
    assert_int_equal(sc_consul_escape("abc", b, 3), -ENOSPC);
    assert_int_equal(sc_consul_escape("", b, 1), 0);

    char p[512];
    assert_true(sc_consul_health_path(p, sizeof(p), "pay", NULL, NULL, 0, 300000) > 0);
    assert_string_equal(p, "/v1/health/service/pay?passing");
    sc_consul_health_path(p, sizeof(p), "pay", "v2", "dc 2", 17, 300000);
    assert_string_equal(p, "/v1/health/service/pay?passing&tag=v2&dc=dc%202&index=17&wait=5m");
    sc_consul_health_path(p, sizeof(p), "pay", NULL, NULL, 1, 90500);
    assert_string_equal(p, "/v1/health/service/pay?passing&index=1&wait=1m30s500ms");
    assert_int_equal(sc_consul_health_path(p, 10, "pay", NULL, NULL, 0, 1000), -ENOSPC);
    assert_int_equal(sc_consul_health_path(p, sizeof(p), "", NULL, NULL, 0, 1000), -ENOSPC);
}

static void test_ent_query(void **st)
{
    (void)st;
    char p[128];
    snprintf(p, sizeof(p), "/v1/agent/service/register");
    assert_int_equal(sc_consul_path_ent(p, sizeof(p), NULL, NULL), 26);
    assert_string_equal(p, "/v1/agent/service/register");
    assert_int_equal(sc_consul_path_ent(p, sizeof(p), "", ""), 26); /* empty = not configured */
    assert_string_equal(p, "/v1/agent/service/register");
    assert_true(sc_consul_path_ent(p, sizeof(p), "team-a", NULL) > 0);
    assert_string_equal(p, "/v1/agent/service/register?ns=team-a");
    snprintf(p, sizeof(p), "/v1/health/service/pay?passing&index=3&wait=5m");
    sc_consul_path_ent(p, sizeof(p), "team a", "p1");
    assert_string_equal(p, "/v1/health/service/pay?passing&index=3&wait=5m&ns=team%20a&partition=p1");
    snprintf(p, sizeof(p), "/v1/agent/connect/ca/leaf/web");
    sc_consul_path_ent(p, sizeof(p), NULL, "p1");
    assert_string_equal(p, "/v1/agent/connect/ca/leaf/web?partition=p1");
    snprintf(p, 20, "/v1/agent/x");
    assert_int_equal(sc_consul_path_ent(p, 20, "a-long-namespace", NULL), -ENOSPC);
    assert_string_equal(p, "/v1/agent/x"); /* unchanged */
}

static void test_target(void **st)
{
    (void)st;
    sc_consul_target t;
    assert_int_equal(sc_consul_target_make(NULL, false, NULL, &t), 0);
    assert_string_equal(t.display, "http://127.0.0.1:8500");
    assert_string_equal(t.url_base, "http://127.0.0.1:8500");
    assert_string_equal(t.connect_to, "");
    assert_null(t.unix_path);
    /* a server name with plain http does not apply */
    assert_int_equal(sc_consul_target_make("10.0.0.1:8500", false, "consul.example", &t), 0);
    assert_string_equal(t.url_base, "http://10.0.0.1:8500");
    assert_string_equal(t.connect_to, "");
    /* ssl: true with host:port */
    assert_int_equal(sc_consul_target_make("10.0.0.1:8501/", true, "consul.example", &t), 0);
    assert_string_equal(t.display, "https://10.0.0.1:8501");
    assert_string_equal(t.url_base, "https://consul.example:8501");
    assert_string_equal(t.connect_to, "consul.example::10.0.0.1:");
    /* https://, IPv6 literal kept in brackets for CONNECT_TO */
    assert_int_equal(sc_consul_target_make("https://[::1]:8501", false, "consul.example", &t), 0);
    assert_string_equal(t.display, "https://[::1]:8501");
    assert_string_equal(t.url_base, "https://consul.example:8501");
    assert_string_equal(t.connect_to, "consul.example::[::1]:");
    /* no port: the URL's default port stays */
    assert_int_equal(sc_consul_target_make("https://agent.local", false, "consul.example", &t), 0);
    assert_string_equal(t.url_base, "https://consul.example");
    assert_string_equal(t.connect_to, "consul.example::agent.local:");
    assert_int_equal(sc_consul_target_make("https://[fe80::1]", false, "c.example", &t), 0);
    assert_string_equal(t.connect_to, "c.example::[fe80::1]:");
    /* without a server name nothing changes */
    assert_int_equal(sc_consul_target_make("https://10.0.0.1:8501", false, NULL, &t), 0);
    assert_string_equal(t.url_base, "https://10.0.0.1:8501");
    assert_string_equal(t.connect_to, "");
    /* unix:// never takes it */
    assert_int_equal(sc_consul_target_make("unix:///run/consul.sock", true, "consul.example", &t), 0);
    assert_string_equal(t.unix_path, "/run/consul.sock");
    assert_string_equal(t.url_base, "http://localhost");
    assert_string_equal(t.connect_to, "");
    /* refused */
    assert_int_equal(sc_consul_target_make("https://10.0.0.1", false, "::1", &t), -EINVAL);
    assert_int_equal(sc_consul_target_make("https://", false, NULL, &t), -EINVAL);
    assert_int_equal(sc_consul_target_make("unix://", false, NULL, &t), -EINVAL);
    assert_int_equal(sc_consul_target_make("https://[::1:8501", false, "c.example", &t), -EINVAL);
}

static void test_token_trim(void **st)
{
    (void)st;
    const char *t;
    size_t n;
    const char good[] = "  \tabc-123\r\n\n";
    assert_int_equal(sc_consul_token_trim(good, sizeof(good) - 1, &t, &n), 0);
    assert_int_equal(n, 7);
    assert_memory_equal(t, "abc-123", 7);
    assert_int_equal(sc_consul_token_trim(" \n\t\r\n", 5, &t, &n), -ENODATA);
    assert_int_equal(sc_consul_token_trim("", 0, &t, &n), -ENODATA);
    assert_int_equal(sc_consul_token_trim("a\nb\n", 4, &t, &n), -EINVAL);
    assert_int_equal(sc_consul_token_trim("a\0b", 3, &t, &n), -EINVAL);
}

/* ---- pacing ---- */

static void test_backoff(void **st)
{
    (void)st;
    const uint64_t base = SC_CONSUL_BACKOFF_BASE_MS, cap = SC_CONSUL_BACKOFF_CAP_MS;
    assert_int_equal(sc_consul_backoff_ms(0, base, cap, 12345), 0);
    uint64_t prev_ceil = 0;
    for (unsigned f = 1; f <= 40; f++) {
        uint64_t ceil = base;
        for (unsigned i = 1; i < f && ceil < cap; i++)
            ceil *= 2;
        if (ceil > cap)
            ceil = cap;
        assert_true(ceil >= prev_ceil);
        prev_ceil = ceil;
        uint64_t lo = sc_consul_backoff_ms(f, base, cap, 0);
        uint64_t hi = sc_consul_backoff_ms(f, base, cap, ceil - ceil / 2);
        assert_int_equal(lo, ceil / 2);
        assert_int_equal(hi, ceil);
        for (uint64_t r = 0; r < 2000; r += 7) {
            uint64_t d = sc_consul_backoff_ms(f, base, cap, r * 2654435761u);
            assert_true(d >= ceil / 2 && d <= ceil && d <= cap);
        }
    }
    /* the Go watcher's cap: 180s; reached by the ninth failure */
    assert_int_equal(sc_consul_backoff_ms(9, base, cap, UINT64_MAX - 1) <= 180000, 1);
    assert_int_equal(sc_consul_backoff_ms(9, base, cap, 0), 90000);
    assert_int_equal(sc_consul_backoff_ms(1, base, cap, 0), 500);
    assert_int_equal(sc_consul_backoff_ms(UINT32_MAX, base, cap, 0), 90000);
    /* degenerate arguments */
    assert_true(sc_consul_backoff_ms(3, 0, 0, 5) <= 1);
}

static void test_bucket(void **st)
{
    (void)st;
    sc_consul_bucket b;
    sc_consul_bucket_init(&b, 4, 1.0, 1000);
    for (int i = 0; i < 4; i++)
        assert_int_equal(sc_consul_bucket_take(&b, 1000), 0);
    uint64_t w = sc_consul_bucket_take(&b, 1000);
    assert_true(w >= 999 && w <= 1000);
    assert_true(sc_consul_bucket_take(&b, 1500) >= 499);
    assert_int_equal(sc_consul_bucket_take(&b, 2000), 0);
    assert_true(sc_consul_bucket_take(&b, 2000) > 0);
    /* a long pause refills to the burst, not beyond */
    for (int i = 0; i < 4; i++)
        assert_int_equal(sc_consul_bucket_take(&b, 100000), 0);
    assert_true(sc_consul_bucket_take(&b, 100000) > 0);
    /* a clock that goes backwards does not add tokens */
    assert_true(sc_consul_bucket_take(&b, 50000) > 0);
    /* 1000 answers in a row at the same instant: only the burst goes through */
    sc_consul_bucket_init(&b, 4, 1.0, 0);
    int went = 0;
    for (int i = 0; i < 1000; i++)
        went += sc_consul_bucket_take(&b, 0) == 0;
    assert_int_equal(went, 4);
}

/* ---- registration body ---- */

static json_t *reg_json(const sc_consul_reg *r)
{
    char *s = sc_consul_registration_body(r);
    assert_non_null(s);
    json_error_t je;
    json_t *j = json_loads(s, 0, &je);
    assert_non_null(j);
    free(s);
    return j;
}

static const char *jgets(json_t *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_object_get(cur, tok);
    return cur && json_is_string(cur) ? json_string_value(cur) : NULL;
}

static void test_registration_http(void **st)
{
    (void)st;
    char *tags[] = {"v1", "canary"};
    sc_kv meta[] = {{"team", "checkout"}};
    sc_consul_reg r = {.id = "web-1", .name = "web", .address = "10.0.0.5", .port = 15001,
                       .tags = tags, .n_tags = 2, .meta = meta, .n_meta = 1,
                       .version = "0.1.0", .check = SC_CHECK_HTTP,
                       .check_target = "http://127.0.0.1:19000/ready", .interval_ms = 10000,
                       .timeout_ms = 5000, .ttl_ms = 15000, .deregister_after_ms = 90000};
    json_t *j = reg_json(&r);
    assert_string_equal(jgets(j, "ID"), "web-1");
    assert_string_equal(jgets(j, "Name"), "web");
    assert_string_equal(jgets(j, "Address"), "10.0.0.5");
    assert_int_equal(json_integer_value(json_object_get(j, "Port")), 15001);
    json_t *t = json_object_get(j, "Tags");
    assert_int_equal(json_array_size(t), 2);
    assert_string_equal(json_string_value(json_array_get(t, 1)), "canary");
    assert_string_equal(jgets(j, "Meta.team"), "checkout");
    assert_string_equal(jgets(j, "Meta.sidecar-version"), "0.1.0");
    assert_string_equal(jgets(j, "Check.CheckID"), "service:web-1");
    assert_non_null(jgets(j, "Check.Name"));
    assert_string_equal(jgets(j, "Check.HTTP"), "http://127.0.0.1:19000/ready");
    assert_string_equal(jgets(j, "Check.Method"), "GET");
    assert_string_equal(jgets(j, "Check.Interval"), "10s");
    assert_string_equal(jgets(j, "Check.Timeout"), "5s");
    assert_string_equal(jgets(j, "Check.DeregisterCriticalServiceAfter"), "1m30s");
    assert_null(json_object_get(json_object_get(j, "Check"), "TTL"));
    assert_null(json_object_get(json_object_get(j, "Check"), "GRPC"));
    assert_null(json_object_get(j, "Checks"));
    json_decref(j);
}

static void test_registration_ttl_grpc_none(void **st)
{
    (void)st;
    sc_consul_reg r = {.id = "api-7", .name = "api", .address = "", .port = 0,
                       .check = SC_CHECK_TTL, .ttl_ms = 15000, .interval_ms = 250,
                       .timeout_ms = 250};
    json_t *j = reg_json(&r);
    assert_null(json_object_get(j, "Address"));
    assert_null(json_object_get(j, "Port"));
    assert_int_equal(json_array_size(json_object_get(j, "Tags")), 0);
    assert_null(jgets(j, "Meta.sidecar-version"));
    assert_string_equal(jgets(j, "Check.CheckID"), "service:api-7");
    assert_string_equal(jgets(j, "Check.TTL"), "15s");
    assert_null(json_object_get(json_object_get(j, "Check"), "Interval"));
    assert_null(json_object_get(json_object_get(j, "Check"), "HTTP"));
    assert_null(json_object_get(json_object_get(j, "Check"), "DeregisterCriticalServiceAfter"));
    json_decref(j);

    r.check = SC_CHECK_GRPC;
    r.check_target = "127.0.0.1:19002";
    j = reg_json(&r);
    assert_string_equal(jgets(j, "Check.GRPC"), "127.0.0.1:19002");
    assert_true(json_is_false(json_object_get(json_object_get(j, "Check"), "GRPCUseTLS")));
    assert_string_equal(jgets(j, "Check.Interval"), "250ms");
    assert_string_equal(jgets(j, "Check.Timeout"), "250ms");
    json_decref(j);

    r.check = SC_CHECK_NONE;
    j = reg_json(&r);
    assert_null(json_object_get(j, "Check"));
    assert_string_equal(jgets(j, "ID"), "api-7");
    json_decref(j);

    /* 64 user meta entries: Consul's limit, so no room for sidecar-version */
    sc_kv meta[64];
    char keys[64][8];
    for (int i = 0; i < 64; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        meta[i].key = keys[i];
        meta[i].value = "v";
    }
    r.meta = meta;
    r.n_meta = 64;
    r.version = "0.1.0";
    j = reg_json(&r);
    assert_int_equal(json_object_size(json_object_get(j, "Meta")), 64);
    json_decref(j);

    char id[32];
    sc_consul_check_id("web-1", id, sizeof(id));
    assert_string_equal(id, "service:web-1");
}

/* ---- cache file ---- */

static void test_cache_roundtrip(void **st)
{
    (void)st;
    const char *body = "[" ENTRY("10.0.0.2", "b", "", 80, W(2, 1), PASSING("b")) ","
                       ENTRY("10.0.0.1", "a", "::1", 81, "", PASSING("a")) "]";
    sc_endpoints *e = parse_ok(body, NULL, NULL);
    sc_endpoints *empty = sc_endpoints_new(0);
    sc_consul_cache_entry ents[] = {
        {.upstream = "pay", .service = "payments", .tag = "v2", .dc = NULL, .endpoints = e,
         .saved_unix = 1700000000},
        {.upstream = "inv", .service = "inv", .tag = NULL, .dc = "dc2", .endpoints = empty,
         .saved_unix = 5},
    };
    char *doc = sc_consul_cache_dump(ents, 2);
    assert_non_null(doc);
    sc_endpoints *got = NULL;
    int64_t saved = 0;
    assert_int_equal(sc_consul_cache_find(doc, strlen(doc), "pay", "payments", "v2", NULL, &got,
                                          &saved), 0);
    assert_true(got->stale);
    assert_true(sc_consul_endpoints_same(e, got));
    assert_int_equal(saved, 1700000000);
    free(got);
    assert_int_equal(sc_consul_cache_find(doc, strlen(doc), "inv", "inv", NULL, "dc2", &got, NULL), 0);
    assert_int_equal(got->n, 0);
    free(got);
    /* another tag, service, dc or upstream: not the same question */
    assert_int_equal(sc_consul_cache_find(doc, strlen(doc), "pay", "payments", NULL, NULL, &got, NULL), -ENOENT);
    assert_int_equal(sc_consul_cache_find(doc, strlen(doc), "pay", "payments", "v3", NULL, &got, NULL), -ENOENT);
    assert_int_equal(sc_consul_cache_find(doc, strlen(doc), "pay", "other", "v2", NULL, &got, NULL), -ENOENT);
    assert_int_equal(sc_consul_cache_find(doc, strlen(doc), "inv", "inv", NULL, NULL, &got, NULL), -ENOENT);
    assert_null(got);
    free(doc);
    free(e);
    free(empty);
    static const char *const bad[] = {"", "[]", "{}", "{\"version\":2,\"upstreams\":[]}",
                                      "{\"version\":1}", "garbage"};
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++)
        assert_int_equal(sc_consul_cache_find(bad[i], strlen(bad[i]), "a", "a", NULL, NULL, &got, NULL), -EPROTO);
    /* unusable saved addresses are skipped */
    const char *d = "{\"version\":1,\"upstreams\":[{\"upstream\":\"a\",\"service\":\"a\",\"tag\":null,"
                    "\"dc\":null,\"instances\":[{\"address\":\"host:1\"},{\"address\":\"10.0.0.1:2\","
                    "\"weight\":3},{\"id\":\"x\"}]}]}";
    assert_int_equal(sc_consul_cache_find(d, strlen(d), "a", "a", NULL, NULL, &got, NULL), 0);
    assert_int_equal(got->n, 1);
    assert_int_equal(got->inst[0].weight, 3);
    assert_string_equal(got->inst[0].id, "10.0.0.1:2");
    free(got);
}

/* ---- Connect answers ---- */

static void test_connect_roots(void **st)
{
    (void)st;
    const char *body =
        "{\"ActiveRootID\":\"r2\",\"TrustDomain\":\"11111111-2222.consul\",\"Roots\":["
        "{\"ID\":\"r1\",\"Name\":\"old\",\"RootCert\":\"-----BEGIN CERTIFICATE-----\\nAAA\\n-----END CERTIFICATE-----\\n\","
        "\"IntermediateCerts\":null,\"Active\":false},"
        "{\"ID\":\"r2\",\"Name\":\"new\",\"RootCert\":\"-----BEGIN CERTIFICATE-----\\nBBB\\n-----END CERTIFICATE-----\","
        "\"IntermediateCerts\":[\"-----BEGIN CERTIFICATE-----\\nCCC\\n-----END CERTIFICATE-----\\n\"],\"Active\":true}]}";
    char *ca = NULL, id[64], err[128];
    size_t n = 0;
    assert_int_equal(sc_consul_parse_roots(body, strlen(body), &ca, &n, id, sizeof(id), err, sizeof(err)), 0);
    assert_int_equal(n, 2);        /* every root is trusted, not only the active one */
    assert_string_equal(id, "r2");
    assert_non_null(strstr(ca, "AAA"));
    assert_non_null(strstr(ca, "BBB"));
    assert_non_null(strstr(ca, "CCC")); /* intermediates ride along */
    free(ca);

    static const char *const bad[] = {"", "[]", "{}", "{\"Roots\":[]}", "{\"Roots\":[{\"ID\":\"x\"}]}",
                                      "{\"Roots\":null}", "not json"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ca = NULL;
        assert_int_equal(sc_consul_parse_roots(bad[i], strlen(bad[i]), &ca, &n, id, sizeof(id), err, sizeof(err)),
                         -EPROTO);
        assert_null(ca);
        assert_true(err[0] != 0);
    }
}

static void test_connect_leaf(void **st)
{
    (void)st;
    const char *body = "{\"SerialNumber\":\"4f:2a\",\"CertPEM\":\"-----BEGIN CERTIFICATE-----\\nL\\n-----END CERTIFICATE-----\\n\","
                       "\"PrivateKeyPEM\":\"-----BEGIN EC PRIVATE KEY-----\\nK\\n-----END EC PRIVATE KEY-----\\n\","
                       "\"Service\":\"api\",\"ServiceURI\":\"spiffe://1111.consul/ns/default/dc/dc1/svc/api\","
                       "\"ValidAfter\":\"2026-11-25T00:00:00Z\",\"ValidBefore\":\"2026-11-28T00:00:00Z\"}";
    char *cert = NULL, *key = NULL, serial[64], uri[256], err[128];
    assert_int_equal(sc_consul_parse_leaf(body, strlen(body), &cert, &key, serial, sizeof(serial), uri, sizeof(uri),
                                          err, sizeof(err)), 0);
    assert_non_null(strstr(cert, "BEGIN CERTIFICATE"));
    assert_non_null(strstr(key, "PRIVATE KEY"));
    assert_string_equal(serial, "4f:2a");
    assert_string_equal(uri, "spiffe://1111.consul/ns/default/dc/dc1/svc/api");
    free(cert);
    free(key);

    static const char *const bad[] = {"{}", "{\"CertPEM\":\"x\"}", "{\"PrivateKeyPEM\":\"x\"}",
                                      "{\"CertPEM\":1,\"PrivateKeyPEM\":\"x\"}", "[]", ""};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cert = key = NULL;
        assert_int_equal(sc_consul_parse_leaf(bad[i], strlen(bad[i]), &cert, &key, serial, sizeof(serial), uri,
                                              sizeof(uri), err, sizeof(err)), -EPROTO);
        assert_null(cert);
        assert_null(key);
    }
}

static void test_authorize_body(void **st)
{
    (void)st;
    char *b = sc_consul_authorize_body("api", "spiffe://example.org/ns/default/dc/dc1/svc/web", "0a:1b:ff");
    assert_non_null(b);
    assert_string_equal(b, "{\"Target\":\"api\",\"ClientCertURI\":\"spiffe://example.org/ns/default/dc/dc1/svc/web\","
                           "\"ClientCertSerial\":\"0a:1b:ff\"}");
    free(b);
    /* no serial: left out; JSON escaping of odd names */
    b = sc_consul_authorize_body("a\"b", "spiffe://x/ns/default/dc/dc1/svc/w", "");
    assert_string_equal(b, "{\"Target\":\"a\\\"b\",\"ClientCertURI\":\"spiffe://x/ns/default/dc/dc1/svc/w\"}");
    free(b);
    b = sc_consul_authorize_body("api", "spiffe://x/ns/default/dc/dc1/svc/w", NULL);
    assert_null(strstr(b, "ClientCertSerial"));
    free(b);
    assert_null(sc_consul_authorize_body(NULL, "x", ""));
    assert_null(sc_consul_authorize_body("api", NULL, ""));
}

static void test_authorize_answer(void **st)
{
    (void)st;
    bool ok = false;
    char reason[SC_CONSUL_REASON_MAX], err[160];
    const char *a = "{\"Authorized\":true,\"Reason\":\"Matched L4 intention: web => api (ID: 1, Precedence: 9, "
                    "Action: ALLOW)\"}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, reason, sizeof(reason), err, sizeof(err)), 0);
    assert_true(ok);
    assert_string_equal(reason, "Matched L4 intention: web => api (ID: 1, Precedence: 9, Action: ALLOW)");
    /* a denial is an answer; keys without regard to case; Reason missing or null */
    a = "{\"authorized\":false,\"reason\":\"Default behavior configured by ACLs\",\"Extra\":[1]}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, reason, sizeof(reason), err, sizeof(err)), 0);
    assert_false(ok);
    assert_string_equal(reason, "Default behavior configured by ACLs");
    ok = true;
    a = "{\"Authorized\":false}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, reason, sizeof(reason), err, sizeof(err)), 0);
    assert_false(ok);
    assert_string_equal(reason, "");
    a = "{\"Authorized\":true,\"Reason\":null}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, reason, sizeof(reason), err, sizeof(err)), 0);
    assert_true(ok);
    /* control characters never reach a log line or a header */
    a = "{\"Authorized\":false,\"Reason\":\"a\\nb\\u0000c\\td\"}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, reason, sizeof(reason), err, sizeof(err)), -EPROTO);
    a = "{\"Authorized\":false,\"Reason\":\"a\\nb\\td\"}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, reason, sizeof(reason), err, sizeof(err)), 0);
    assert_string_equal(reason, "a b d");
    /* cut to the buffer, never inside a UTF-8 sequence */
    char small[6];
    a = "{\"Authorized\":false,\"Reason\":\"abcd\u00e9f\"}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, small, sizeof(small), err, sizeof(err)), 0);
    assert_string_equal(small, "abcd");
    a = "{\"Authorized\":false,\"Reason\":\"abc\u00e9f\"}";
    assert_int_equal(sc_consul_parse_authorize(a, strlen(a), &ok, small, sizeof(small), err, sizeof(err)), 0);
    assert_string_equal(small, "abc");

    static const struct { const char *body, *msg; } bad[] = {
        {"", "not JSON"},
        {"ACL not found", "not JSON"},
        {"[true]", "not a JSON object"},
        {"{}", "no boolean Authorized"},
        {"{\"Authorized\":\"true\"}", "no boolean Authorized"},
        {"{\"Authorized\":1}", "no boolean Authorized"},
        {"{\"Authorized\":true,\"Reason\":5}", "Reason is not a string"},
        {"{\"Authorized\":true", "not JSON"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = 0;
        assert_int_equal(sc_consul_parse_authorize(bad[i].body, strlen(bad[i].body), &ok, reason, sizeof(reason), err,
                                                   sizeof(err)), -EPROTO);
        if (!strstr(err, bad[i].msg))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].msg);
    }
}

int main(void)
{
    sc_addr_set_dns_enabled(false);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty_array),
        cmocka_unit_test(test_not_an_array),
        cmocka_unit_test(test_service_address_and_weights),
        cmocka_unit_test(test_node_address_fallback),
        cmocka_unit_test(test_missing_fields),
        cmocka_unit_test(test_checks),
        cmocka_unit_test(test_ipv6_and_hostnames),
        cmocka_unit_test(test_key_case_and_limits),
        cmocka_unit_test(test_sorted_and_same),
        cmocka_unit_test(test_many_instances),
        cmocka_unit_test(test_index_parse),
        cmocka_unit_test(test_index_next),
        cmocka_unit_test(test_escape_and_path),
        cmocka_unit_test(test_ent_query),
        cmocka_unit_test(test_target),
        cmocka_unit_test(test_token_trim),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_bucket),
        cmocka_unit_test(test_registration_http),
        cmocka_unit_test(test_registration_ttl_grpc_none),
        cmocka_unit_test(test_cache_roundtrip),
        cmocka_unit_test(test_connect_roots),
        cmocka_unit_test(test_connect_leaf),
        cmocka_unit_test(test_authorize_body),
        cmocka_unit_test(test_authorize_answer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_config.c: the configuration module: value grammars, good files with
 * their expected values, every kind of bad input with the file, line and
 * field of its diagnostic, Consul environment variables, JSON output.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "http/grpc.h"
#include "http/hdr.h"

#define DATA SC_TEST_DATA "/config"

/* ---- helpers ---- */

static bool diag_matches(const sc_diag *g, const char *file_suffix, unsigned line,
                         const char *field, const char *msg)
{
    size_t fl = strlen(g->file), sl = strlen(file_suffix);
    if (sl > fl || strcmp(g->file + fl - sl, file_suffix) != 0)
        return false;
    if (line != (unsigned)-1 && g->line != line)
        return false;
    if (field && strcmp(g->field, field) != 0)
        return false;
    return strstr(g->msg, msg) != NULL;
}

/* Asserts that some diagnostic names file (suffix), line (-1 = any), field
 * (NULL = any) and contains msg; prints them all when none does. */
static void expect_diag_(const sc_diags *d, const char *file, unsigned line, const char *field,
                         const char *msg, const char *where, int wline)
{
    for (size_t i = 0; i < d->n; i++)
        if (diag_matches(&d->v[i], file, line, field, msg))
            return;
    fprintf(stderr, "%s:%d: no diagnostic %s:%u: %s: ...%s... among %zu:\n", where, wline, file,
            line, field ? field : "*", msg, d->n);
    sc_diags_print(d, stderr);
    fail();
}
#define expect_diag(d, file, line, field, msg) \
    expect_diag_((d), (file), (line), (field), (msg), __FILE__, __LINE__)

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    *len = fread(buf, 1, (size_t)n, f);
    buf[*len] = 0;
    fclose(f);
    return buf;
}

static uint16_t port_of(const sc_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
}

static const sc_policy *find_policy(const sc_config *cfg, const char *name)
{
    for (size_t i = 0; i < cfg->n_policies; i++)
        if (strcmp(cfg->policies[i].name, name) == 0)
            return &cfg->policies[i];
    return NULL;
}

static void clear_consul_env(void)
{
    static const char *const vars[] = {
        "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE", "CONSUL_HTTP_SSL",
        "CONSUL_HTTP_SSL_VERIFY", "CONSUL_CACERT", "CONSUL_CLIENT_CERT", "CONSUL_CLIENT_KEY",
        "CONSUL_CAPATH", "CONSUL_TLS_SERVER_NAME", "CONSUL_NAMESPACE", "CONSUL_PARTITION"};
    for (size_t i = 0; i < SC_ARRAY_LEN(vars); i++)
        unsetenv(vars[i]);
}

static int setup(void **state)
{
    (void)state;
    clear_consul_env();
    return 0;
}

/* ---- durations, sizes ---- */

static void test_duration_table(void **state)
{
    (void)state;
    static const struct { const char *s; int rc; uint64_t ms; } cases[] = {
        {"250ms", 0, 250},
        {"2s", 0, 2000},
        {"1m", 0, 60000},
        {"1h", 0, 3600000},
        {"1m30s", 0, 90000},
        {"1h2m3s4ms", 0, 3723004},
        {"0", 0, 0},
        {"0s", 0, 0},
        {"0ms", 0, 0},
        {"90s", 0, 90000},
        {"10", -EINVAL, 0},
        {"-1s", -EINVAL, 0},
        {"1.5s", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"5x", -EINVAL, 0},
        {"s", -EINVAL, 0},
        {"1s1m", -EINVAL, 0},     /* largest unit first */
        {"1s1s", -EINVAL, 0},     /* each unit once */
        {" 1s", -EINVAL, 0},
        {"1s ", -EINVAL, 0},
        {"1S", -EINVAL, 0},
        {"1d", -EINVAL, 0},
        {"1us", -EINVAL, 0},
        {"00", -EINVAL, 0},
        {"+1s", -EINVAL, 0},
        {"18446744073709551615ms", -EINVAL, 0},
        {"18446744073709551616ms", -EINVAL, 0},
        {"99999999999999999999999h", -EINVAL, 0},
        {"5124095576h", -EINVAL, 0},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        uint64_t ms = 12345;
        int rc = sc_duration_parse(cases[i].s, &ms);
        if (rc != cases[i].rc)
            fprintf(stderr, "duration '%s': rc %d, want %d\n", cases[i].s, rc, cases[i].rc);
        assert_int_equal(rc, cases[i].rc);
        assert_int_equal(ms, rc == 0 ? cases[i].ms : 12345);
    }
    uint64_t ms;
    assert_int_equal(sc_duration_parse(NULL, &ms), -EINVAL);
    /* the largest accepted value, one past it */
    char buf[64];
    snprintf(buf, sizeof(buf), "%llums", (unsigned long long)SC_DURATION_MAX_MS);
    assert_int_equal(sc_duration_parse(buf, &ms), 0);
    assert_int_equal(ms, SC_DURATION_MAX_MS);
    snprintf(buf, sizeof(buf), "%llums", (unsigned long long)SC_DURATION_MAX_MS + 1);
    assert_int_equal(sc_duration_parse(buf, &ms), -EINVAL);
}

static void test_duration_format(void **state)
{
    (void)state;
    static const struct { uint64_t ms; const char *s; } cases[] = {
        {0, "0"}, {250, "250ms"}, {1000, "1s"}, {90000, "1m30s"}, {3600000, "1h"},
        {3723004, "1h2m3s4ms"}, {1500, "1s500ms"}, {86400000, "24h"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char buf[64];
        uint64_t back;
        sc_duration_format(cases[i].ms, buf, sizeof(buf));
        assert_string_equal(buf, cases[i].s);
        assert_int_equal(sc_duration_parse(buf, &back), 0);
        assert_int_equal(back, cases[i].ms);
    }
    char buf[64];
    sc_duration_format(SC_DURATION_MAX_MS, buf, sizeof(buf));
    uint64_t back;
    assert_int_equal(sc_duration_parse(buf, &back), 0);
    assert_int_equal(back, SC_DURATION_MAX_MS);
    char small[4];
    assert_int_equal(sc_duration_format(90000, small, sizeof(small)), 5);
    assert_string_equal(small, "1m3");
}

static void test_size_table(void **state)
{
    (void)state;
    static const struct { const char *s; int rc; uint64_t v; } cases[] = {
        {"0", 0, 0}, {"65536", 0, 65536}, {"512B", 0, 512}, {"64KiB", 0, 65536},
        {"1MiB", 0, 1048576}, {"2GiB", 0, 2147483648u}, {"64KB", -EINVAL, 0},
        {"64k", -EINVAL, 0}, {"1.5MiB", -EINVAL, 0}, {"", -EINVAL, 0}, {"KiB", -EINVAL, 0},
        {"-1", -EINVAL, 0}, {"1 KiB", -EINVAL, 0}, {"18446744073709551616", -EINVAL, 0},
        {"17179869184GiB", -EINVAL, 0},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        uint64_t v = 7;
        int rc = sc_size_parse(cases[i].s, &v);
        if (rc != cases[i].rc)
            fprintf(stderr, "size '%s': rc %d\n", cases[i].s, rc);
        assert_int_equal(rc, cases[i].rc);
        assert_int_equal(v, rc == 0 ? cases[i].v : 7);
    }
}

/* ---- addresses ---- */

static void test_addr(void **state)
{
    (void)state;
    sc_addr a;
    assert_int_equal(sc_addr_parse("127.0.0.1:9191", &a, false), 0);
    assert_int_equal(a.ss.ss_family, AF_INET);
    assert_int_equal(a.len, sizeof(struct sockaddr_in));
    assert_int_equal(port_of(&a), 9191);
    assert_string_equal(a.text, "127.0.0.1:9191");
    assert_int_equal(((struct sockaddr_in *)&a.ss)->sin_addr.s_addr, htonl(0x7f000001));

    assert_int_equal(sc_addr_parse("[::1]:80", &a, false), 0);
    assert_int_equal(a.ss.ss_family, AF_INET6);
    assert_int_equal(a.len, sizeof(struct sockaddr_in6));
    assert_int_equal(port_of(&a), 80);
    assert_string_equal(a.text, "[::1]:80");
    assert_int_equal(sc_addr_parse("[2001:db8::7]:65535", &a, false), 0);
    assert_int_equal(port_of(&a), 65535);
    assert_int_equal(sc_addr_parse("0.0.0.0:1", &a, false), 0);

    static const char *const bad[] = {
        "127.0.0.1", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:99999999",
        "127.0.0.1:-1", "127.0.0.1:+80", "127.0.0.1:8a", "::1:80", "[::1]", "[::1]80",
        "[::1:80", "[127.0.0.1]:80", "1.2.3.256:80", "1.2.3:80", ":80", "", "[]:80",
        "localhost:80", "a b:80",
        "a-very-long-hostname-that-goes-on.and-on.and-on.example.org.example.org.example:1",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        int rc = sc_addr_parse(bad[i], &a, false);
        if (rc == 0)
            fprintf(stderr, "address '%s' accepted\n", bad[i]);
        assert_int_equal(rc, -EINVAL);
    }
    /* hostnames only when allowed; syntax is checked before any lookup */
    const char *why = NULL;
    assert_int_equal(sc_addr_parse_why("localhost:80", &a, false, &why), -EINVAL);
    assert_non_null(strstr(why, "hostname is not allowed"));
    assert_int_equal(sc_addr_parse_why("bad_name:80", &a, true, &why), -EINVAL);
    assert_int_equal(sc_addr_parse_why("-bad:80", &a, true, &why), -EINVAL);
    assert_int_equal(sc_addr_parse_why("10.0.0.300:80", &a, true, &why), -EINVAL);
    assert_int_equal(sc_addr_parse_why("::1:80", &a, true, &why), -EINVAL);
    assert_non_null(strstr(why, "brackets"));
    assert_int_equal(sc_addr_parse_why("127.0.0.1:0", &a, true, &why), -EINVAL);
    assert_non_null(strstr(why, "1..65535"));

    assert_int_equal(sc_addr_parse("localhost:8080", &a, true), 0);
    assert_true(a.ss.ss_family == AF_INET || a.ss.ss_family == AF_INET6);
    assert_int_equal(port_of(&a), 8080);
    assert_string_equal(a.text, "localhost:8080");

    sc_addr_set_dns_enabled(false);
    assert_int_equal(sc_addr_parse_why("localhost:8080", &a, true, &why), -EHOSTUNREACH);
    assert_int_equal(sc_addr_parse("127.0.0.1:8080", &a, true), 0); /* literals still work */
    sc_addr_set_dns_enabled(true);
    assert_int_equal(sc_addr_parse("no-such-host.invalid:80", &a, true), -EHOSTUNREACH);
}

/* ---- good files ---- */

static void check_design_payments(const sc_policy *p)
{
    assert_string_equal(p->name, "payments");
    assert_int_equal(p->protocol, SC_PROTO_GRPC);
    assert_string_equal(p->listen.text, "127.0.0.1:9191");
    assert_int_equal(p->discovery, SC_DISCOVERY_CONSUL);
    assert_string_equal(p->consul.service, "payments");
    assert_string_equal(p->consul.tag, "v2");
    assert_null(p->consul.dc);
    assert_int_equal(p->tls.mode, SC_TLS_MUTUAL);
    assert_string_equal(p->tls.server_identity, "spiffe://example.org/svc/payments");
    assert_null(p->tls.sni);
    assert_int_equal(p->timeouts.connect_ms, 250);
    assert_int_equal(p->timeouts.request_ms, 2000);
    assert_int_equal(p->timeouts.per_try_ms, 600);
    assert_int_equal(p->timeouts.idle_ms, 60000);
    assert_true(p->retries.enabled);
    assert_int_equal(p->retries.max_attempts, 3);
    assert_int_equal(p->retries.on,
                     SC_COND_RESET | SC_COND_CONNECT_FAILURE | SC_COND_GATEWAY_ERROR);
    assert_int_equal(p->retries.on_grpc, 1u << SC_GRPC_UNAVAILABLE);
    assert_int_equal(p->retries.backoff_base_ms, 25);
    assert_int_equal(p->retries.backoff_max_ms, 250);
    assert_true(p->retries.budget_ratio > 0.1999 && p->retries.budget_ratio < 0.2001);
    assert_int_equal(p->retries.budget_min_per_second, 10);
    assert_int_equal(p->retries.buffer_limit, 65536);
    assert_true(p->bulkhead.enabled);
    assert_int_equal(p->bulkhead.max_concurrent, 100);
    assert_int_equal(p->bulkhead.max_pending, 50);
    assert_int_equal(p->bulkhead.queue_timeout_ms, 50);
    assert_int_equal(p->bulkhead.max_connections, 0);
    assert_true(p->breaker.enabled);
    assert_true(p->breaker.failure_rate == 50.0);
    assert_int_equal(p->breaker.slow_call_ms, 1000);
    assert_true(p->breaker.slow_call_rate == 80.0);
    assert_int_equal(p->breaker.window_ms, 10000);
    assert_int_equal(p->breaker.min_calls, 20);
    assert_int_equal(p->breaker.open_for_ms, 15000);
    assert_int_equal(p->breaker.half_open_calls, 3);
    assert_int_equal(p->breaker.failure_on, SC_COND_GATEWAY_ERROR | SC_COND_CONNECT_FAILURE |
                                                SC_COND_RESET | SC_COND_TIMEOUT);
    assert_int_equal(p->breaker.failure_on_grpc,
                     (1u << SC_GRPC_UNAVAILABLE) | (1u << SC_GRPC_DEADLINE_EXCEEDED) |
                         (1u << SC_GRPC_INTERNAL) | (1u << SC_GRPC_UNKNOWN) |
                         (1u << SC_GRPC_DATA_LOSS));
    assert_true(p->outlier.enabled);
    assert_int_equal(p->outlier.consecutive_failures, 5);
    assert_int_equal(p->outlier.eject_for_ms, 30000);
    assert_int_equal(p->outlier.max_eject_ms, 300000);
    assert_true(p->outlier.max_ejected_percent == 50.0);
    assert_int_equal(p->lb, SC_LB_LEAST_REQUEST);
}

static void test_design_example_policy(void **state)
{
    (void)state;
    size_t len;
    char *buf = slurp(DATA "/good/policies/payments.yaml", &len);
    sc_policy p;
    sc_diags d = {0};
    int rc = sc_policy_load_string(buf, len, "payments.yaml", &p, &d);
    sc_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    assert_int_equal(d.n, 0);
    assert_string_equal(p.file, "payments.yaml");
    check_design_payments(&p);
    assert_false(p.breaker.has_fallback);
    sc_policy_clear(&p);
    sc_policy_clear(&p); /* idempotent */
    free(buf);
}

static void test_shipped_policies(void **state)
{
    (void)state;
    static const char *const files[] = {"payments.yaml", "web.yaml"};
    for (size_t i = 0; i < SC_ARRAY_LEN(files); i++) {
        char path[512];
        snprintf(path, sizeof(path), "%s/../../policies/%s", SC_TEST_DATA, files[i]);
        size_t len;
        char *buf = slurp(path, &len);
        sc_policy p;
        sc_diags d = {0};
        int rc = sc_policy_load_string(buf, len, files[i], &p, &d);
        sc_diags_print(&d, stderr);
        assert_int_equal(rc, 0);
        if (i == 0) {
            assert_int_equal(p.protocol, SC_PROTO_GRPC);
            assert_true(p.breaker.has_fallback);
            assert_int_equal(p.breaker.fallback_grpc_status, SC_GRPC_UNAVAILABLE);
        } else {
            assert_int_equal(p.protocol, SC_PROTO_HTTP1);
            assert_int_equal(p.n_instances, 2);
            assert_int_equal(p.instances[1].weight, 2);
            assert_int_equal(p.outlier.max_eject_ms, 120000);
        }
        sc_policy_clear(&p);
        free(buf);
    }
}

static void test_good_config(void **state)
{
    (void)state;
    sc_config *cfg = NULL;
    sc_diags d = {0};
    int rc = sc_config_load(DATA "/good/sidecar.yaml", &cfg, &d);
    sc_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    assert_int_equal(d.n, 0);
    assert_non_null(cfg);

    assert_string_equal(cfg->file, DATA "/good/sidecar.yaml");
    assert_string_equal(cfg->service.name, "orders");
    assert_string_equal(cfg->service.id, "orders-1");
    assert_string_equal(cfg->service.address, "10.0.0.5");
    assert_int_equal(cfg->service.n_tags, 2);
    assert_string_equal(cfg->service.tags[0], "v1");
    assert_string_equal(cfg->service.tags[1], "canary");
    assert_int_equal(cfg->service.n_meta, 2);
    assert_string_equal(cfg->service.meta[0].key, "team");
    assert_string_equal(cfg->service.meta[0].value, "checkout");
    assert_string_equal(cfg->service.meta[1].key, "version");
    assert_string_equal(cfg->service.meta[1].value, "1.2.3");

    assert_true(cfg->inbound.enabled);
    assert_string_equal(cfg->inbound.listen.text, "0.0.0.0:15443");
    assert_string_equal(cfg->inbound.app.text, "127.0.0.1:8080");
    assert_int_equal(cfg->inbound.app_protocol, SC_PROTO_GRPC);
    assert_int_equal(cfg->inbound.timeouts.connect_ms, 500);
    assert_int_equal(cfg->inbound.timeouts.request_ms, 30000);
    assert_int_equal(cfg->inbound.timeouts.idle_ms, 120000);
    assert_int_equal(cfg->inbound.timeouts.header_read_ms, 5000);
    assert_int_equal(cfg->inbound.max_concurrent, 500);
    assert_string_equal(cfg->admin.listen.text, "127.0.0.1:19001");
    assert_int_equal(cfg->workers, 4);
    assert_int_equal(cfg->drain_timeout_ms, 20000);
    assert_string_equal(cfg->policies_dir, DATA "/good/policies");
    assert_int_equal(cfg->limits.max_header_bytes, 32768);
    assert_int_equal(cfg->limits.max_request_line, 4096);
    assert_int_equal(cfg->limits.stream_buffer, 1048576);
    assert_int_equal(cfg->limits.max_connections, 2000);
    assert_int_equal(cfg->limits.h2_max_concurrent_streams, 128);
    assert_int_equal(cfg->log_level, SC_LOG_DEBUG);

    assert_true(cfg->consul.enabled);
    assert_string_equal(cfg->consul.address, "http://127.0.0.1:8500");
    assert_string_equal(cfg->consul.token_file, DATA "/good/token.txt");
    assert_string_equal(cfg->consul.token, "s3cr3t-token");
    assert_false(cfg->consul.ssl);
    assert_true(cfg->consul.ssl_verify);
    assert_string_equal(cfg->consul.datacenter, "dc1");
    assert_true(cfg->consul.register_service);
    assert_int_equal(cfg->consul.check, SC_CHECK_GRPC);
    assert_int_equal(cfg->consul.check_interval_ms, 5000);
    assert_int_equal(cfg->consul.check_ttl_ms, 15000);
    assert_int_equal(cfg->consul.deregister_after_ms, 60000);
    assert_int_equal(cfg->consul.wait_ms, 300000);
    assert_null(cfg->consul.cache_file);

    assert_int_equal(cfg->health.app_probe, SC_APP_PROBE_HTTP);
    assert_string_equal(cfg->health.app_path, "/healthz");
    assert_int_equal(cfg->health.interval_ms, 3000);
    assert_int_equal(cfg->health.timeout_ms, 500);
    assert_true(cfg->health.grpc_enabled);
    assert_string_equal(cfg->health.grpc_listen.text, "127.0.0.1:19002");

    assert_string_equal(cfg->tls.cert_file, DATA "/good/certs/orders.pem");
    assert_string_equal(cfg->tls.key_file, DATA "/good/certs/orders.key");
    assert_string_equal(cfg->tls.ca_file, "/etc/sidecar/ca.pem");
    assert_int_equal(cfg->tls.n_allow, 2);
    assert_string_equal(cfg->tls.allow[0], "spiffe://example.org/svc/*");
    assert_string_equal(cfg->tls.identity_header, "x-sidecar-caller");

    /* inline upstreams first, then the directory's files in name order */
    assert_int_equal(cfg->n_policies, 3);
    assert_string_equal(cfg->policies[0].name, "inventory");
    assert_string_equal(cfg->policies[1].name, "payments");
    assert_string_equal(cfg->policies[2].name, "web");
    const sc_policy *inv = find_policy(cfg, "inventory");
    assert_string_equal(inv->file, DATA "/good/sidecar.yaml");
    assert_int_equal(inv->protocol, SC_PROTO_HTTP2);
    assert_int_equal(inv->n_instances, 2);
    assert_string_equal(inv->instances[0].addr.text, "10.0.0.9:8443");
    assert_int_equal(inv->instances[0].weight, 3);
    assert_string_equal(inv->instances[1].addr.text, "[::1]:8443");
    assert_int_equal(inv->instances[1].weight, 1);
    assert_false(inv->retries.enabled);
    assert_int_equal(inv->retries.max_attempts, 1);
    assert_false(inv->bulkhead.enabled);
    assert_false(inv->breaker.enabled);
    assert_false(inv->outlier.enabled);
    assert_int_equal(inv->lb, SC_LB_ROUND_ROBIN);
    assert_int_equal(inv->timeouts.connect_ms, 1000);
    assert_int_equal(inv->timeouts.request_ms, 15000);
    assert_int_equal(inv->timeouts.per_try_ms, 0);
    assert_int_equal(inv->timeouts.idle_ms, 60000);
    assert_int_equal(inv->tls.mode, SC_TLS_OFF);

    const sc_policy *pay = find_policy(cfg, "payments");
    assert_string_equal(pay->file, DATA "/good/policies/payments.yaml");
    check_design_payments(pay);

    const sc_policy *web = find_policy(cfg, "web");
    assert_string_equal(web->file, DATA "/good/policies/web.yml");
    assert_int_equal(web->retries.max_attempts, 2);
    assert_int_equal(web->retries.on, SC_COND_CONNECT_FAILURE | SC_COND_5XX);
    assert_int_equal(web->retries.on_grpc, 0);
    assert_int_equal(web->retries.buffer_limit, 16384);
    assert_int_equal(web->retries.backoff_base_ms, 25);
    assert_true(web->breaker.failure_rate == 25.5);
    assert_int_equal(web->breaker.consecutive_failures, 10);
    assert_int_equal(web->breaker.failure_on, SC_COND_5XX | SC_COND_TIMEOUT);
    assert_int_equal(web->breaker.failure_on_grpc, 0);
    assert_true(web->breaker.has_fallback);
    assert_int_equal(web->breaker.fallback_http_status, 503);
    assert_string_equal(web->breaker.fallback_http_body, "web is resting");
    assert_int_equal(web->breaker.fallback_grpc_status, SC_GRPC_UNAVAILABLE);
    assert_null(web->breaker.fallback_grpc_message);
    assert_int_equal(web->lb, SC_LB_RANDOM);
    assert_int_equal(web->timeouts.request_ms, 5000);

    sc_config_free(cfg);
    sc_diags_free(&d);
}

#define POL_BASE_D "upstream: x\nprotocol: http1\nlisten: 127.0.0.1:9000\n" \
                   "discovery: {static: [127.0.0.1:8000]}\n"

static void test_defaults(void **state)
{
    (void)state;
    const char *y = "service: {name: tiny}\n";
    sc_config *cfg;
    sc_diags d = {0};
    assert_int_equal(sc_config_load_string(y, strlen(y), "tiny.yaml", NULL, &cfg, &d), 0);
    assert_string_equal(cfg->service.id, "tiny");
    assert_null(cfg->service.address);
    assert_int_equal(cfg->service.n_tags, 0);
    assert_false(cfg->inbound.enabled);
    assert_string_equal(cfg->admin.listen.text, "127.0.0.1:19000");
    assert_int_equal(port_of(&cfg->admin.listen), 19000);
    assert_int_equal(cfg->workers, 0);
    assert_int_equal(cfg->drain_timeout_ms, 10000);
    assert_null(cfg->policies_dir);
    assert_int_equal(cfg->limits.max_header_bytes, 65536);
    assert_int_equal(cfg->limits.max_request_line, 8192);
    assert_int_equal(cfg->limits.stream_buffer, 65536);
    assert_int_equal(cfg->limits.max_connections, 10000);
    assert_int_equal(cfg->limits.h2_max_concurrent_streams, 256);
    assert_int_equal(cfg->log_level, SC_LOG_INFO);
    assert_false(cfg->consul.enabled);
    assert_null(cfg->consul.address);
    assert_null(cfg->tls.cert_file);
    assert_string_equal(cfg->tls.identity_header, "x-sidecar-caller");
    assert_int_equal(cfg->n_policies, 0);
    assert_int_equal(cfg->inbound.timeouts.header_read_ms, 10000);
    sc_config_free(cfg);

    /* sections present but empty: enabled, with every default */
    const char *pol = "upstream: p\nprotocol: grpc\nlisten: 127.0.0.1:9000\n"
                      "discovery: {consul: {}}\nretries: {}\nbulkhead:\ncircuit_breaker: {}\n"
                      "outlier: {}\n";
    sc_policy p;
    assert_int_equal(sc_policy_load_string(pol, strlen(pol), "p.yaml", &p, &d), 0);
    assert_string_equal(p.consul.service, "p"); /* defaults to the upstream name */
    assert_true(p.retries.enabled);
    assert_int_equal(p.retries.max_attempts, 2);
    assert_int_equal(p.retries.on, SC_COND_CONNECT_FAILURE | SC_COND_REFUSED_STREAM);
    assert_int_equal(p.retries.on_grpc, 1u << SC_GRPC_UNAVAILABLE);
    assert_int_equal(p.retries.backoff_base_ms, 25);
    assert_int_equal(p.retries.backoff_max_ms, 250);
    assert_int_equal(p.retries.budget_min_per_second, 10);
    assert_int_equal(p.retries.buffer_limit, 65536);
    assert_true(p.bulkhead.enabled);
    assert_int_equal(p.bulkhead.max_concurrent, 1024);
    assert_true(p.breaker.enabled);
    assert_true(p.breaker.failure_rate == 50.0);
    assert_int_equal(p.breaker.slow_call_ms, 0);
    assert_int_equal(p.breaker.window_ms, 10000);
    assert_int_equal(p.breaker.open_for_ms, 30000);
    assert_int_equal(p.breaker.half_open_calls, 3);
    assert_false(p.breaker.has_fallback);
    assert_true(p.outlier.enabled);
    assert_int_equal(p.outlier.consecutive_failures, 5);
    assert_int_equal(p.outlier.eject_for_ms, 30000);
    assert_int_equal(p.outlier.max_eject_ms, 300000);
    assert_true(p.outlier.max_ejected_percent == 50.0);
    sc_policy_clear(&p);
    assert_int_equal(d.n, 0);

    /* decimals are correctly rounded: "0.3" is the double 0.3 */
    const char *dec = POL_BASE_D "retries: {budget: {ratio: 0.3}}\n"
                      "circuit_breaker: {failure_rate: 33.3%, slow_call: {duration: 1s, rate: 0.7}}\n";
    assert_int_equal(sc_policy_load_string(dec, strlen(dec), "d.yaml", &p, &d), 0);
    assert_true(p.retries.budget_ratio == 0.3);
    assert_true(p.breaker.failure_rate == 33.3);
    assert_true(p.breaker.slow_call_rate == 0.7);
    sc_policy_clear(&p);
}

static void test_example(void **state)
{
    (void)state;
    sc_config *cfg;
    sc_diags d = {0};
    int rc = sc_config_load_string(sc_config_example_yaml, strlen(sc_config_example_yaml),
                                   "<example>", NULL, &cfg, &d);
    sc_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    assert_string_equal(cfg->service.name, "example");
    assert_true(cfg->inbound.enabled);
    assert_string_equal(cfg->inbound.listen.text, "127.0.0.1:15001");
    assert_string_equal(cfg->inbound.app.text, "127.0.0.1:8080");
    assert_int_equal(cfg->inbound.app_protocol, SC_PROTO_HTTP1);
    assert_string_equal(cfg->admin.listen.text, "127.0.0.1:19000");
    assert_int_equal(cfg->n_policies, 1);
    const sc_policy *p = &cfg->policies[0];
    assert_string_equal(p->name, "demo");
    assert_int_equal(p->protocol, SC_PROTO_HTTP1);
    assert_string_equal(p->listen.text, "127.0.0.1:9191");
    assert_int_equal(p->discovery, SC_DISCOVERY_STATIC);
    assert_int_equal(p->n_instances, 1);
    assert_string_equal(p->instances[0].addr.text, "127.0.0.1:8080");
    sc_config_free(cfg);
}

/* ---- bad input ---- */

#define POL_HEAD "upstream: x\nprotocol: http1\nlisten: 127.0.0.1:9000\n"
#define POL_BASE POL_HEAD "discovery: {static: [127.0.0.1:8000]}\n"

static void test_bad_policies(void **state)
{
    (void)state;
    static const struct { const char *yaml; unsigned line; const char *field, *msg; } cases[] = {
        {POL_BASE "timeouts: {connect: 10}\n", 5, "timeouts.connect", "needs a unit"},
        {POL_BASE "timeouts: {connect: -1s}\n", 5, "timeouts.connect", "negative"},
        {POL_BASE "timeouts: {connect: 1.5s}\n", 5, "timeouts.connect", "no fractions"},
        {POL_BASE "timeouts: {connect: ''}\n", 5, "timeouts.connect", "not a duration"},
        {POL_BASE "timeouts: {connect: 5x}\n", 5, "timeouts.connect", "not a duration"},
        {POL_BASE "timeouts: {connect: 0}\n", 5, "timeouts.connect", "too short"},
        {POL_BASE "timeouts: {connect: 99999999999999h}\n", 5, "timeouts.connect",
         "not a duration"},
        {POL_BASE "timeouts:\n  request: 1s\n  per_try: 2s\n", 7, "timeouts.per_try",
         "longer than request"},
        {POL_BASE "timeouts: {conect: 1s}\n", 5, "timeouts.conect", "did you mean 'connect'"},
        {POL_BASE "timeouts: {connect: 1s, connect: 2s}\n", 5, "timeouts.connect",
         "duplicate key"},
        {POL_BASE "colour: blue\n", 5, "colour", "unknown key 'colour'"},
        {POL_BASE "timeouts: [1s]\n", 5, "timeouts", "expected a mapping"},
        {POL_BASE "retries: {max_attempts: 0}\n", 5, "retries.max_attempts", "from 1 to 10"},
        {POL_BASE "retries: {max_attempts: 11}\n", 5, "retries.max_attempts", "from 1 to 10"},
        {POL_BASE "retries: {max_attempts: three}\n", 5, "retries.max_attempts", "whole number"},
        {POL_BASE "retries:\n  backoff: {base: 1s, max: 100ms}\n", 6, "retries.backoff.base",
         "larger than max"},
        {POL_BASE "retries:\n  on: [reset, bogus]\n", 6, "retries.on[1]", "unknown condition"},
        {POL_BASE "retries:\n  on: [reset, reset]\n", 6, "retries.on[1]", "twice"},
        {POL_BASE "retries:\n  on: [unavailable]\n", 6, "retries.on[0]", "protocol is http1"},
        {POL_BASE "retries:\n  on: reset\n", 6, "retries.on", "expected a list"},
        {POL_BASE "retries:\n  budget: {ratio: 1.5}\n", 6, "retries.budget.ratio", "0 to 1"},
        {POL_BASE "retries:\n  buffer_limit: 1TiB\n", 6, "retries.buffer_limit", "not a size"},
        {POL_BASE "bulkhead:\n  max_concurrent: [100]\n", 6, "bulkhead.max_concurrent",
         "got a list"},
        {POL_BASE "bulkhead:\n  max_concurrent: 0\n", 6, "bulkhead.max_concurrent", "from 1"},
        {POL_BASE "bulkhead: {max_concurrent: 5, queue_timeout: 1s}\n", 5,
         "bulkhead.queue_timeout", "needs a queue"},
        {POL_BASE "circuit_breaker: {failure_rate: 101%}\n", 5, "circuit_breaker.failure_rate",
         "percentage"},
        {POL_BASE "circuit_breaker: {failure_rate: 0}\n", 5, "circuit_breaker.failure_rate",
         "percentage"},
        {POL_BASE "circuit_breaker: {failure_rate: -5%}\n", 5, "circuit_breaker.failure_rate",
         "percentage"},
        {POL_BASE "circuit_breaker:\n  slow_call: {rate: 50%}\n", 6,
         "circuit_breaker.slow_call.duration", "missing required key"},
        {POL_BASE "circuit_breaker: {window: 500ms}\n", 5, "circuit_breaker.window",
         "at least 1s"},
        {POL_BASE "circuit_breaker: {failure_on: []}\n", 5, "circuit_breaker.failure_on",
         "never open"},
        {POL_BASE "circuit_breaker:\n  fallback:\n    grpc: {status: sad}\n", 7,
         "circuit_breaker.fallback.grpc.status", "not a gRPC status"},
        {POL_BASE "circuit_breaker:\n  fallback:\n    http: {status: 99}\n", 7,
         "circuit_breaker.fallback.http.status", "from 200 to 599"},
#define FB_H POL_BASE "circuit_breaker:\n  fallback:\n    http:\n      headers:\n"
#define FB_G POL_BASE "circuit_breaker:\n  fallback:\n    grpc:\n      metadata:\n"
        {FB_H "        'bad name': x\n", 9, "circuit_breaker.fallback.http.headers.bad name",
         "not a header name"},
        {FB_H "        'x:y': x\n", 9, "circuit_breaker.fallback.http.headers.x:y", "not a header name"},
        {FB_H "        ':status': '200'\n", 9, "circuit_breaker.fallback.http.headers.:status",
         "pseudo-header"},
        {FB_H "        Connection: close\n", 9, "circuit_breaker.fallback.http.headers.Connection",
         "hop-by-hop"},
        {FB_H "        transfer-encoding: chunked\n", 9,
         "circuit_breaker.fallback.http.headers.transfer-encoding", "hop-by-hop"},
        {FB_H "        Content-Length: '5'\n", 9,
         "circuit_breaker.fallback.http.headers.Content-Length", "set by the sidecar"},
        {FB_H "        x-a: \"1\\r\\nSet-Cookie: evil=1\"\n", 9, "circuit_breaker.fallback.http.headers.x-a",
         "control character"},
        {FB_H "        x-a: \"a\\nb\"\n", 9, "circuit_breaker.fallback.http.headers.x-a",
         "control character"},
        {FB_H "        x-a: \"a\\0b\"\n", 9, NULL, "NUL byte"},
        {FB_H "        x-a: \"a\\x01b\"\n", 9, "circuit_breaker.fallback.http.headers.x-a",
         "control character"},
        {FB_H "        x-a: [1]\n", 9, "circuit_breaker.fallback.http.headers.x-a", "got a list"},
        {FB_H "        X-A: 1\n        x-a: 2\n", 10, "circuit_breaker.fallback.http.headers.x-a",
         "given twice"},
        {POL_BASE "circuit_breaker:\n  fallback:\n    http:\n      headers: [x-a]\n", 8,
         "circuit_breaker.fallback.http.headers", "expected a mapping"},
        {POL_BASE "circuit_breaker:\n  fallback:\n    http:\n      headers: {a: 1, b: 1, c: 1, d: 1, "
                  "e: 1, f: 1, g: 1, h: 1, i: 1, j: 1, k: 1, l: 1, m: 1, n: 1, o: 1, p: 1, q: 1}\n",
         8, "circuit_breaker.fallback.http.headers", "too many entries (17, at most 16)"},
        {FB_G "        grpc-status: '0'\n", 9, "circuit_breaker.fallback.grpc.metadata.grpc-status",
         "reserved for gRPC"},
        {FB_G "        content-type: text/plain\n", 9,
         "circuit_breaker.fallback.grpc.metadata.content-type", "reserved for gRPC"},
        {FB_G "        te: trailers\n", 9, "circuit_breaker.fallback.grpc.metadata.te", "hop-by-hop"},
        {FB_G "        x-bin: 'not base64!'\n", 9, "circuit_breaker.fallback.grpc.metadata.x-bin",
         "base64"},
        {POL_BASE "outlier: {max_ejected: 150%}\n", 5, "outlier.max_ejected", "percentage"},
        {POL_BASE "outlier: {eject_for: 10m, max_eject: 1m}\n", 5, "outlier.max_eject",
         "shorter than eject_for"},
        {POL_BASE "outlier: {consecutive_failures: 0}\n", 5, "outlier.consecutive_failures",
         "from 1"},
        {POL_BASE "load_balancer: fastest\n", 5, "load_balancer",
         "expected round_robin, least_request or random"},
        {POL_BASE "load_balancer: [random]\n", 5, "load_balancer", "got a list"},
        {POL_BASE "tls: {mode: off, sni: pay.example.org}\n", 5, "tls.sni", "needs tls.mode"},
        {POL_BASE "tls: {mode: strict}\n", 5, "tls.mode", "off, simple or mutual"},
        {POL_BASE "tls: {mode: simple, sni: 'bad name'}\n", 5, "tls.sni", "server name"},
        {POL_BASE "tls: {mode: simple}\n", 5, "tls", "would verify no name: set tls.sni"},
        {POL_BASE "tls: {mode: mutual}\n", 5, "tls", "would verify no name"},
        {POL_HEAD "discovery: {consul: {}}\ntls: {mode: simple}\n", 5, "tls", "would verify no name"},
        {POL_BASE "tls: {mode: mutual, server_identity: \"spiffe://example.org/a\\r\\nb\"}\n", 5,
         "tls.server_identity", "not a SPIFFE ID (spiffe://<trust-domain>/<path>): it contains a control character"},
        {POL_BASE "tls: {mode: mutual, server_identity: payments}\n", 5, "tls.server_identity",
         "not a SPIFFE ID"},
        {POL_BASE "protocol: grpc\n", 5, "protocol", "duplicate key 'protocol' (first set at line 2)"},
        {"upstream: 'a b'\nprotocol: http1\nlisten: 127.0.0.1:9000\n"
         "discovery: {static: [127.0.0.1:8000]}\n",
         1, "upstream", "not a valid upstream name"},
        {"protocol: http1\nlisten: 127.0.0.1:9000\ndiscovery: {static: [127.0.0.1:8000]}\n", 1,
         "upstream", "missing required key 'upstream'"},
        {"upstream: x\nlisten: 127.0.0.1:9000\ndiscovery: {static: [127.0.0.1:8000]}\n", 1,
         "protocol", "missing required key"},
        {"upstream: x\nprotocol: http3\nlisten: 127.0.0.1:9000\n"
         "discovery: {static: [127.0.0.1:8000]}\n",
         2, "protocol", "http1, http2 or grpc"},
        {POL_HEAD "discovery: {static: []}\n", 4, "discovery.static", "no instances"},
        {POL_HEAD "discovery: {}\n", 4, "discovery", "exactly one"},
        {POL_HEAD "discovery: {static: [127.0.0.1:1], consul: {}}\n", 4, "discovery",
         "not both"},
        {POL_HEAD "discovery: {static: [10.0.0.1]}\n", 4, "discovery.static[0]",
         "missing ':port'"},
        {POL_HEAD "discovery:\n  static:\n    - 10.0.0.1:1\n    - 10.0.0.1:1\n", 7,
         "discovery.static[1]", "listed twice"},
        {POL_HEAD "discovery:\n  static:\n    - {address: 10.0.0.1:1, weight: 0}\n", 6,
         "discovery.static[0].weight", "from 1 to 10000"},
        {POL_HEAD "discovery:\n  static:\n    - {weight: 2}\n", 6, "discovery.static[0].address",
         "missing required key"},
        {POL_HEAD "discovery: {static: [127.0.0.1:9000]}\n", 4, "discovery.static",
         "own listen address"},
        {POL_HEAD "discovery: {consul: {service: 'pay ments'}}\n", 4, "discovery.consul.service",
         "not a service name"},
        {"upstream: x\nprotocol: http1\nlisten: 127.0.0.1:0\n"
         "discovery: {static: [127.0.0.1:8000]}\n",
         3, "listen", "1..65535"},
        {"upstream: x\nprotocol: http1\nlisten: 127.0.0.1:65536\n"
         "discovery: {static: [127.0.0.1:8000]}\n",
         3, "listen", "1..65535"},
        {"upstream: x\nprotocol: http1\nlisten: localhost:9000\n"
         "discovery: {static: [127.0.0.1:8000]}\n",
         3, "listen", "hostname is not allowed"},
        {"upstream: x\nprotocol: http1\nlisten: ::1:9000\n"
         "discovery: {static: [127.0.0.1:8000]}\n",
         3, "listen", "brackets"},
        {"upstream: x\nprotocol: http1\nlisten: 127.0.0.1:9000\n"
         "discovery: {static: [127.0.0.1:8000]}\nupstream: y\n",
         5, "upstream", "duplicate key 'upstream' (first set at line 1)"},
        {"- upstream: x\n", 1, "", "expected a mapping"},
        {"", 0, "", "the policy is empty"},
        {"a: &x 1\nb: *x\n", 2, "", "aliases"},
        {"upstream: x\nprotocol: http1\n\"listen\\0\": 1\n", 3, "", "NUL byte"},
        {"upstream: x\n---\nupstream: y\n", 2, "", "only one YAML document"},
        {"upstream: x\nprotocol: [http1\n", 3, "", "YAML syntax error"},
        {"upstream: x\n  protocol: http1\n", 2, "", "YAML syntax error"},
        {"? [a, b]\n: c\n", 1, "", "mapping keys must be plain strings"},
        {"a: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
         1, "", "nesting deeper"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_policy p;
        sc_diags d = {0};
        int rc = sc_policy_load_string(cases[i].yaml, strlen(cases[i].yaml), "bad.yaml", &p, &d);
        if (rc != -EINVAL)
            fprintf(stderr, "case %zu was accepted:\n%s\n", i, cases[i].yaml);
        assert_int_equal(rc, -EINVAL);
        assert_null(p.name); /* cleared on failure */
        assert_null(p.instances);
        expect_diag(&d, "bad.yaml", cases[i].line, cases[i].field, cases[i].msg);
        sc_policy_clear(&p);
        sc_diags_free(&d);
    }
}

static void test_policy_nul_inside_document(void **state)
{
    (void)state;
    /* raw NUL bytes in the input are a syntax problem, not a crash */
    static const char y[] = "upstream: x\0\nprotocol: http1\n";
    sc_policy p;
    sc_diags d = {0};
    assert_int_equal(sc_policy_load_string(y, sizeof(y) - 1, "nul.yaml", &p, &d), -EINVAL);
    assert_true(d.n >= 1);
    sc_diags_free(&d);
    assert_int_equal(sc_policy_load_string(NULL, 0, "null.yaml", &p, NULL), -EINVAL);
}

static void test_bad_policy_files(void **state)
{
    (void)state;
    static const struct { const char *file; unsigned line; const char *field, *msg; } cases[] = {
        {"policy_syntax.yaml", 4, "", "YAML syntax error"},
        {"policy_unknown_key.yaml", 7, "retries.retry_on", "unknown key 'retry_on'"},
        {"policy_duplicate_key.yaml", 8, "timeouts.connect", "first set at line 6"},
        {"policy_wrong_type.yaml", 6, "bulkhead.max_concurrent", "got a list"},
        {"policy_bad_duration.yaml", 5, "timeouts.connect", "'10' is not a duration"},
        {"policy_bad_address.yaml", 3, "listen", "port"},
        {"policy_per_try.yaml", 7, "timeouts.per_try", "per_try (2s) is longer than request (1s)"},
        {"policy_no_instances.yaml", 5, "discovery.static", "no instances"},
        {"policy_percent.yaml", 6, "circuit_breaker.failure_rate", "150%"},
        {"policy_backoff.yaml", 7, "retries.backoff.base", "base (1s) is larger than max (100ms)"},
        {"policy_empty.yaml", 0, "", "empty"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char path[512];
        snprintf(path, sizeof(path), DATA "/bad/%s", cases[i].file);
        size_t len;
        char *buf = slurp(path, &len);
        sc_policy p;
        sc_diags d = {0};
        assert_int_equal(sc_policy_load_string(buf, len, path, &p, &d), -EINVAL);
        expect_diag(&d, cases[i].file, cases[i].line, cases[i].field, cases[i].msg);
        sc_diags_free(&d);
        free(buf);
    }
}

#define CFG_HEAD "service: {name: s}\n"
#define UP(name, listen) \
    "  - upstream: " name "\n    protocol: http1\n    listen: " listen "\n" \
    "    discovery: {static: [10.9.9.9:80]}\n"

static void test_bad_configs(void **state)
{
    (void)state;
    clear_consul_env();
    static const struct { const char *yaml; unsigned line; const char *field, *msg; } cases[] = {
        {"service: {id: x}\n", 1, "service.name", "missing required key 'name'"},
        {"inbound: {listen: 127.0.0.1:1, app: 127.0.0.1:2}\n", 1, "service",
         "missing required key"},
        {"", 0, "service.name", "empty"},
        {"service: [a]\n", 1, "service", "expected a mapping"},
        {"service: {name: 'my service'}\n", 1, "service.name", "not a valid service name"},
        {CFG_HEAD "service: {name: t}\n", 2, "service", "duplicate key"},
        {"service:\n  name: s\n  tags: [a, b, a]\n", 3, "service.tags[2]", "listed twice"},
        {"service:\n  name: s\n  tags: a\n", 3, "service.tags", "expected a list"},
        {"service:\n  name: s\n  meta:\n    consul-x: y\n", 4, "service.meta.consul-x",
         "not a valid meta key"},
        {"service:\n  name: s\n  meta:\n    k: [1]\n", 4, "service.meta.k", "got a list"},
        {"service:\n  name: s\n  meta: {a: 1, a: 2}\n", 3, "service.meta.a", "duplicate key"},
        {"service:\n  name: s\n  address: 10.0.0.1:80\n", 3, "service.address", "no port"},
        {CFG_HEAD "inbound:\n  listen: 127.0.0.1:15001\n", 2, "inbound.app",
         "missing required key 'app'"},
        {CFG_HEAD "inbound:\n  listen: 127.0.0.1:15001\n  app: 127.0.0.1:15001\n", 4,
         "inbound.app", "loop"},
        {CFG_HEAD "inbound:\n  listen: 127.0.0.1:1\n  app: 127.0.0.1:2\n  app_protocol: h2\n", 5,
         "inbound.app_protocol", "http1, http2 or grpc"},
        {CFG_HEAD "inbound:\n  listen: 127.0.0.1:1\n  app: 127.0.0.1:2\n"
                  "  timeouts: {per_try: 1s}\n",
         5, "inbound.timeouts.per_try", "not retried"},
        {CFG_HEAD "admin: {listen: nowhere}\n", 2, "admin.listen", "bad address"},
        {CFG_HEAD "admin: {listen: 127.0.0.1:19000, port: 1}\n", 2, "admin.port", "unknown key"},
        {CFG_HEAD "admin: {listen: '0.0.0.0:19000'}\n", 2, "admin.listen",
         "not a loopback address"},
        {CFG_HEAD "admin: {listen: '10.0.0.5:19000', allow_remote: false}\n", 2, "admin.listen",
         "set admin.allow_remote: true"},
        {CFG_HEAD "admin: {listen: '[::]:19000'}\n", 2, "admin.listen", "not a loopback address"},
        {CFG_HEAD "admin: {allow_remote: yes}\n", 2, "admin.allow_remote", "true or false"},
        {CFG_HEAD "admin: {allowed_hosts: admin.internal}\n", 2, "admin.allowed_hosts",
         "expected a list"},
        {CFG_HEAD "admin: {allowed_hosts: ['http://admin']}\n", 2, "admin.allowed_hosts[0]",
         "expected name, name:port"},
        {CFG_HEAD "admin: {allowed_hosts: [ok.example, 'a b']}\n", 2, "admin.allowed_hosts[1]",
         "not a host name"},
        {CFG_HEAD "admin: {allowed_hosts: ['admin:0']}\n", 2, "admin.allowed_hosts[0]",
         "port 1..65535"},
        {CFG_HEAD "admin: {token_file: /nonexistent/admin-token}\n", 2, "admin.token_file",
         "cannot read the token file /nonexistent/admin-token"},
        {CFG_HEAD "workers: many\n", 2, "workers", "whole number from 0 to 1024"},
        {CFG_HEAD "workers: 2000\n", 2, "workers", "from 0 to 1024"},
        {CFG_HEAD "drain_timeout: 10\n", 2, "drain_timeout", "needs a unit"},
        {CFG_HEAD "log: {level: verbose}\n", 2, "log.level", "not a log level"},
        {CFG_HEAD "log: debug\n", 2, "log", "expected a mapping"},
        {CFG_HEAD "limits:\n  max_header_bytes: 64KB\n", 3, "limits.max_header_bytes",
         "not a size"},
        {CFG_HEAD "limits:\n  max_header_bytes: 100\n", 3, "limits.max_header_bytes",
         "out of range; expected 1KiB to 16MiB"},
        {CFG_HEAD "limits:\n  max_header_bytes: 4KiB\n  max_request_line: 8KiB\n", 4,
         "limits.max_request_line", "larger than max_header_bytes"},
        {CFG_HEAD "limits: {max_connections: 0}\n", 2, "limits.max_connections", "from 1"},
        {CFG_HEAD "consul: {check: tcp}\n", 2, "consul.check", "http, ttl, grpc or none"},
        {CFG_HEAD "consul: {deregister_after: 30s}\n", 2, "consul.deregister_after",
         "minimum is 1m"},
        {CFG_HEAD "consul: {wait: 20m}\n", 2, "consul.wait", "10m"},
        {CFG_HEAD "consul: {ssl: yes}\n", 2, "consul.ssl", "true or false"},
        {CFG_HEAD "consul: {token: a, token_file: /t}\n", 2, "consul.token_file", "not both"},
        {CFG_HEAD "consul: {address: 'ftp://x'}\n", 2, "consul.address", "expected http://"},
        {CFG_HEAD "consul: {address: 'http://'}\n", 2, "consul.address", "not a Consul address"},
        {CFG_HEAD "consul: {address: 'https://c:8501', ssl: false}\n", 2, "consul.ssl",
         "https"},
        {CFG_HEAD "consul: {cert_file: /c.pem}\n", 2, "consul.key_file", "both"},
        {CFG_HEAD "consul: {token: ''}\n", 2, "consul.token", "must not be empty"},
        {CFG_HEAD "consul: {check: grpc}\n", 2, "consul.check", "set health.grpc_listen"},
        {CFG_HEAD "consul: {namespace: ''}\n", 2, "consul.namespace", "must not be empty"},
        {CFG_HEAD "consul: {namespace: 'a/b'}\n", 2, "consul.namespace", "not a valid name"},
        {CFG_HEAD "consul: {partition: 'p_1'}\n", 2, "consul.partition", "not a valid name"},
        {CFG_HEAD "consul: {address: 'https://c:8501', tls_server_name: '[::1]'}\n", 2,
         "consul.tls_server_name", "not a DNS name"},
        {CFG_HEAD "consul: {address: 'http://c:8500', tls_server_name: c.example.org}\n", 2,
         "consul.tls_server_name", "only for an https agent"},
        {CFG_HEAD "consul: {address: 'unix:///s', ssl: true, tls_server_name: c.example.org}\n", 2,
         "consul.tls_server_name", "only for an https agent"},
        {CFG_HEAD "consul: {ca_path: ''}\n", 2, "consul.ca_path", "empty"},
        {CFG_HEAD "consul: {namespace: [a]}\n", 2, "consul.namespace", "expected"},
        {CFG_HEAD "consul: {check_http: 'ftp://h/x'}\n", 2, "consul.check_http", "not an http://"},
        {CFG_HEAD "consul: {check_http: 'http://'}\n", 2, "consul.check_http", "not an http://"},
        {CFG_HEAD "consul: {check_http: 'http:///ready'}\n", 2, "consul.check_http", "not an http://"},
        {CFG_HEAD "consul: {check_http: 'http://h/a b'}\n", 2, "consul.check_http", "no spaces"},
        {CFG_HEAD "consul: {check: ttl, check_http: 'http://h/ready'}\n", 2, "consul.check_http",
         "only with check: http"},
        {CFG_HEAD "health: {app_probe: ping}\n", 2, "health.app_probe", "tcp, http or none"},
        {CFG_HEAD "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
                  "health: {app_probe: http}\n", 3, "health.app_path", "needs app_path"},
        {CFG_HEAD "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
                  "health: {app_path: /h}\n", 3, "health.app_path", "only with app_probe: http"},
        {CFG_HEAD "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
                  "health: {app_probe: http, app_path: 'x y'}\n", 3, "health.app_path",
         "not a request path"},
        {CFG_HEAD "health: {interval: 1s, timeout: 2s}\n", 2, "health.timeout", "longer"},
        {CFG_HEAD "health: {interval: 10ms}\n", 2, "health.interval", "too short"},
        {CFG_HEAD "health: {app_probe: http, app_path: /h}\n", 2, "health.app_probe",
         "needs an inbound"},
        {CFG_HEAD "health: {grpc_listen: 127.0.0.1:19000}\n", 2, "health.grpc_listen",
         "already used by the admin listener"},
        {CFG_HEAD "tls: {cert: c.pem}\n", 2, "tls.key", "needs tls.key"},
        {CFG_HEAD "tls: {source: vault}\n", 2, "tls.source", "files or consul"},
        {CFG_HEAD "tls: {source: consul}\n", 2, "tls.source", "needs a consul: section"},
        {CFG_HEAD "consul: {}\ntls: {source: consul, cert: c.pem, key: k.pem}\n", 3, "tls.cert",
         "not allowed with tls.source: consul"},
        {CFG_HEAD "consul: {}\ntls: {source: consul, ca: ca.pem}\n", 3, "tls.ca",
         "not allowed with tls.source: consul"},
        {CFG_HEAD "tls: {cert: c.pem, key: k.pem, allow: [spiffe://a/*]}\n", 2, "tls.allow",
         "needs tls.ca"},
        {CFG_HEAD "tls: {cert: c, key: k, ca: a, allow: ['spiffe://*/x']}\n", 2, "tls.allow[0]",
         "only at the end"},
        {CFG_HEAD "tls: {identity_header: X-Caller}\n", 2, "tls.identity_header",
         "lower-case"},
        /* tls.authorize / tls.authorize_cache */
#define AZ_IN "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
#define AZ_TLS "cert: c.pem, key: k.pem, ca: ca.pem, "
        {CFG_HEAD AZ_IN "consul: {}\ntls: {" AZ_TLS "authorize: opa}\n", 4, "tls.authorize",
         "expected none or consul"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {" AZ_TLS "authorize: [consul]}\n", 4, "tls.authorize",
         "got a list"},
        {CFG_HEAD AZ_IN "tls: {" AZ_TLS "authorize: consul}\n", 3, "tls.authorize",
         "needs a consul: section"},
        {CFG_HEAD "consul: {}\ntls: {" AZ_TLS "authorize: consul}\n", 3, "tls.authorize",
         "needs an inbound: section"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {authorize: consul}\n", 4, "tls.authorize",
         "needs inbound mutual TLS"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {cert: c.pem, key: k.pem, authorize: consul}\n", 4,
         "tls.authorize", "set tls.source: consul, or tls.cert, tls.key and tls.ca"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {" AZ_TLS "authorize: consul, authorize_cache: 500ms}\n", 4,
         "tls.authorize_cache", "too short; expected at least 1s"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {" AZ_TLS "authorize: consul, authorize_cache: 2h}\n", 4,
         "tls.authorize_cache", "too long; expected 1s to 1h"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {" AZ_TLS "authorize: consul, authorize_cache: 30}\n", 4,
         "tls.authorize_cache", "a number needs a unit"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {" AZ_TLS "authorize_cache: 10s}\n", 4,
         "tls.authorize_cache", "only with tls.authorize: consul"},
        {CFG_HEAD AZ_IN "consul: {}\ntls: {" AZ_TLS "authorize: none, authorize_cache: 10s}\n", 4,
         "tls.authorize_cache", "only with tls.authorize: consul"},
        {CFG_HEAD AZ_IN "consul: {}\ntls:\n  source: consul\n  authorize: consul\n  authorise: consul\n", 7,
         "tls.authorise", "did you mean 'authorize'"},
        {CFG_HEAD "inbound: {listen: 127.0.0.1:19000, app: 127.0.0.1:8080}\n", 2,
         "inbound.listen", "already used by the admin listener (its default)"},
        {CFG_HEAD "inbound: {listen: '0.0.0.0:9001', app: 127.0.0.1:8080}\nupstreams:\n"
             UP("a", "127.0.0.1:9001"),
         6, "upstreams[0].listen", "already used by the inbound listener"},
        {CFG_HEAD "admin: {listen: '[::]:9001'}\nupstreams:\n" UP("a", "127.0.0.1:9001"), 6,
         "upstreams[0].listen", "already used by the admin listener"},
        {CFG_HEAD "upstreams:\n" UP("a", "127.0.0.1:9001") UP("a", "127.0.0.1:9002"), 7,
         "upstreams[1].upstream", "upstream 'a' is already defined in cfg.yaml:3"},
        {CFG_HEAD "upstreams:\n" UP("a", "127.0.0.1:9001") UP("b", "127.0.0.1:9001"), 9,
         "upstreams[1].listen", "already used by upstream 'a' (cfg.yaml:5)"},
        {CFG_HEAD "upstreams:\n" UP("a", "127.0.0.1:9001") "    timeouts: {idle: forever}\n", 7,
         "upstreams[0].timeouts.idle", "not a duration"},
        {CFG_HEAD "upstreams:\n  - upstream: c\n    protocol: grpc\n    listen: 127.0.0.1:9001\n"
                  "    discovery: {consul: {service: c}}\n",
         6, "upstreams[0].discovery.consul", "needs a consul: section"},
        {CFG_HEAD "upstreams:\n" UP("m", "127.0.0.1:9001") "    tls: {mode: mutual}\n", 7,
         "upstreams[0].tls.mode", "set tls.cert and tls.key"},
        {CFG_HEAD "upstreams: {upstream: a}\n", 2, "upstreams", "expected a list"},
        {CFG_HEAD "upstreams: [42]\n", 2, "upstreams[0]", "expected a mapping"},
        {CFG_HEAD "policies: /nonexistent/policies\n", 2, "policies",
         "cannot open the policies directory"},
        {CFG_HEAD "service: {name: [x\n", 3, "", "YAML syntax error"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_config *cfg = (sc_config *)1;
        sc_diags d = {0};
        int rc = sc_config_load_string(cases[i].yaml, strlen(cases[i].yaml), "cfg.yaml", "/tmp",
                                       &cfg, &d);
        if (rc == 0)
            fprintf(stderr, "case %zu was accepted:\n%s\n", i, cases[i].yaml);
        assert_true(rc < 0);
        assert_null(cfg);
        expect_diag(&d, "cfg.yaml", cases[i].line, cases[i].field, cases[i].msg);
        sc_diags_free(&d);
    }
}

static void test_tls_source(void **state)
{
    (void)state;
    clear_consul_env();
    sc_config *cfg;
    sc_diags d = {0};
    const char *y = "service: {name: tiny}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "t.yaml", NULL, &cfg, &d), 0);
    assert_int_equal(cfg->tls.source, SC_TLS_SOURCE_FILES);
    sc_config_free(cfg);
    /* consul: no files; mutual TLS and tls.allow work without tls.cert / tls.ca
     * (a Consul-discovered mutual upstream expects its Consul identity: no name needed) */
    y = "service: {name: web}\n"
        "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
        "consul: {}\n"
        "tls: {source: consul, allow: ['spiffe://x.consul/ns/default/dc/dc1/svc/*']}\n"
        "upstreams:\n  - upstream: m\n    protocol: http1\n    listen: 127.0.0.1:9002\n"
        "    discovery: {consul: {service: m}}\n    tls: {mode: mutual}\n";
    int rc = sc_config_load_string(y, strlen(y), "t.yaml", NULL, &cfg, &d);
    for (size_t i = 0; i < d.n; i++)
        fprintf(stderr, "%s:%u: %s: %s\n", d.v[i].file, d.v[i].line, d.v[i].field,
                d.v[i].msg);
    assert_int_equal(rc, 0);
    assert_int_equal(cfg->tls.source, SC_TLS_SOURCE_CONSUL);
    assert_null(cfg->tls.cert_file);
    assert_null(cfg->tls.ca_file);
    assert_int_equal(cfg->tls.n_allow, 1);
    sc_config_free(cfg);
    sc_diags_free(&d);
    /* explicit files is the default */
    y = "service: {name: web}\ntls: {source: files, cert: c.pem, key: k.pem}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "t.yaml", "/tmp", &cfg, &d), 0);
    assert_int_equal(cfg->tls.source, SC_TLS_SOURCE_FILES);
    sc_config_free(cfg);
}

/* limits.header_underscores: each value, the default, and a bad one. */
static void test_header_underscores(void **state)
{
    (void)state;
    static const struct { const char *v; int want; } ok[] = {
        {"allow", SC_HDR_US_ALLOW}, {"drop", SC_HDR_US_DROP}, {"reject", SC_HDR_US_REJECT},
    };
    sc_config *cfg;
    sc_diags d = {0};
    const char *y = "service: {name: s}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "t.yaml", NULL, &cfg, &d), 0);
    assert_int_equal(cfg->limits.header_underscores, SC_HDR_US_ALLOW);
    sc_config_free(cfg);
    for (size_t i = 0; i < SC_ARRAY_LEN(ok); i++) {
        char buf[128];
        snprintf(buf, sizeof(buf), "service: {name: s}\nlimits: {header_underscores: %s}\n", ok[i].v);
        assert_int_equal(sc_config_load_string(buf, strlen(buf), "t.yaml", NULL, &cfg, &d), 0);
        assert_int_equal(cfg->limits.header_underscores, ok[i].want);
        sc_config_free(cfg);
    }
    y = "service: {name: s}\nlimits: {header_underscores: strip}\n";
    assert_int_not_equal(sc_config_load_string(y, strlen(y), "t.yaml", NULL, &cfg, &d), 0);
    expect_diag(&d, "t.yaml", 2, "limits.header_underscores", "strip");
    sc_diags_free(&d);
}

static const char *jget(json_t *o, const char *path);

static void test_tls_authorize(void **state)
{
    (void)state;
    clear_consul_env();
    sc_config *cfg;
    sc_diags d = {0};
    /* default: none, 30s */
    const char *y = "service: {name: tiny}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "t.yaml", NULL, &cfg, &d), 0);
    assert_int_equal(cfg->tls.authorize, SC_AUTHORIZE_NONE);
    assert_int_equal(cfg->tls.authorize_cache_ms, 30000);
    json_t *j = sc_config_to_json(cfg);
    assert_string_equal(jget(j, "tls.authorize"), "none");
    assert_string_equal(jget(j, "tls.authorize_cache"), "30s");
    json_decref(j);
    sc_config_free(cfg);
    /* consul with Connect certificates, and with file certificates */
    static const char *const good[] = {
        "service: {name: api}\n"
        "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
        "consul: {}\n"
        "tls: {source: consul, authorize: consul, authorize_cache: 1s}\n",
        "service: {name: api}\n"
        "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
        "consul: {register_service: false}\n"
        "tls: {cert: c.pem, key: k.pem, ca: ca.pem, allow: ['spiffe://example.org/*'],\n"
        "      authorize: consul, authorize_cache: 1h}\n",
        "service: {name: api}\n"
        "inbound: {listen: 127.0.0.1:9001, app: 127.0.0.1:8080}\n"
        "consul: {}\n"
        "tls: {source: consul, authorize: none}\n",
    };
    static const uint64_t ttl[] = {1000, 3600000, 30000};
    static const int mode[] = {SC_AUTHORIZE_CONSUL, SC_AUTHORIZE_CONSUL, SC_AUTHORIZE_NONE};
    for (size_t i = 0; i < SC_ARRAY_LEN(good); i++) {
        int rc = sc_config_load_string(good[i], strlen(good[i]), "t.yaml", "/tmp", &cfg, &d);
        if (rc != 0)
            sc_diags_print(&d, stderr);
        assert_int_equal(rc, 0);
        assert_int_equal(cfg->tls.authorize, mode[i]);
        assert_int_equal(cfg->tls.authorize_cache_ms, ttl[i]);
        j = sc_config_to_json(cfg);
        assert_string_equal(jget(j, "tls.authorize"), mode[i] == SC_AUTHORIZE_CONSUL ? "consul" : "none");
        uint64_t back;
        assert_int_equal(sc_duration_parse(jget(j, "tls.authorize_cache"), &back), 0);
        assert_int_equal(back, ttl[i]);
        json_decref(j);
        sc_config_free(cfg);
    }
    sc_diags_free(&d);
}

static void test_bad_config_files(void **state)
{
    (void)state;
    static const struct { const char *file; unsigned line; const char *field, *msg; } cases[] = {
        {"cfg_dup_listen.yaml", 3, "inbound.listen", "127.0.0.1:19000 is already used by the admin"},
        {"cfg_dup_upstream.yaml", 7, "upstreams[1].upstream", "already defined"},
        {"cfg_missing_name.yaml", 1, "service.name", "missing required key 'name'"},
        {"cfg_bad_size.yaml", 3, "limits.max_header_bytes", "'64KB' is not a size"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        char path[512];
        snprintf(path, sizeof(path), DATA "/bad/%s", cases[i].file);
        sc_config *cfg;
        sc_diags d = {0};
        assert_int_equal(sc_config_load(path, &cfg, &d), -EINVAL);
        assert_null(cfg);
        expect_diag(&d, cases[i].file, cases[i].line, cases[i].field, cases[i].msg);
        assert_string_equal(d.v[0].file, path);
        sc_diags_free(&d);
    }
}

/* Every problem in every file is reported, not just the first. */
static void test_all_problems_collected(void **state)
{
    (void)state;
    sc_config *cfg;
    sc_diags d = {0};
    assert_int_equal(sc_config_load(DATA "/multi/sidecar.yaml", &cfg, &d), -EINVAL);
    assert_null(cfg);
    expect_diag(&d, "multi/sidecar.yaml", 3, "service.colour", "unknown key");
    expect_diag(&d, "multi/sidecar.yaml", 7, "workers", "whole number");
    expect_diag(&d, "multi/sidecar.yaml", 12, "upstreams[0].listen",
                "127.0.0.1:15001 is already used by the inbound listener (" DATA
                "/multi/sidecar.yaml:5)");
    expect_diag(&d, "multi/policies/alpha.yaml", 1, "upstream",
                "upstream 'alpha' is already defined in " DATA "/multi/sidecar.yaml:10");
    expect_diag(&d, "multi/policies/broken.yaml", 4, "", "YAML syntax error");
    expect_diag(&d, "multi/policies/timeouts.yaml", 5, "timeouts.connect", "needs a unit");
    expect_diag(&d, "multi/policies/timeouts.yaml", 6, "timeouts.request", "no fractions");
    expect_diag(&d, "multi/policies/timeouts.yaml", 1, "discovery", "missing required key");
    assert_int_equal(d.n, 8);

    /* the printed form: file:line: field: message */
    char *out = NULL;
    size_t outlen = 0;
    FILE *f = open_memstream(&out, &outlen);
    sc_diags_print(&d, f);
    fclose(f);
    assert_non_null(strstr(out, DATA "/multi/sidecar.yaml:7: workers: expected a whole number"));
    free(out);

    /* diagnostics accumulate across calls */
    assert_int_equal(sc_config_load(DATA "/multi/sidecar.yaml", &cfg, &d), -EINVAL);
    assert_int_equal(d.n, 16);
    sc_diags_free(&d);
    assert_int_equal(d.n, 0);
}

static void test_unreadable(void **state)
{
    (void)state;
    sc_config *cfg;
    sc_diags d = {0};
    assert_int_equal(sc_config_load(DATA "/does-not-exist.yaml", &cfg, &d), -ENOENT);
    assert_null(cfg);
    expect_diag(&d, "does-not-exist.yaml", 0, "", "cannot read");
    sc_diags_free(&d);
    assert_int_equal(sc_config_load(DATA, &cfg, &d), -EISDIR);
    sc_diags_free(&d);
    assert_int_equal(sc_config_load(DATA "/does-not-exist.yaml", &cfg, NULL), -ENOENT);
}

/* ---- Consul environment variables ---- */

static sc_config *load_ok(const char *y)
{
    sc_config *cfg = NULL;
    sc_diags d = {0};
    int rc = sc_config_load_string(y, strlen(y), "env.yaml", NULL, &cfg, &d);
    sc_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    sc_diags_free(&d);
    return cfg;
}

static void test_consul_env(void **state)
{
    (void)state;
    sc_config *cfg;

    clear_consul_env();
    cfg = load_ok(CFG_HEAD "consul: {}\n");
    assert_true(cfg->consul.enabled);
    assert_string_equal(cfg->consul.address, "127.0.0.1:8500");
    assert_null(cfg->consul.token);
    assert_false(cfg->consul.ssl);
    assert_true(cfg->consul.ssl_verify);
    assert_int_equal(cfg->consul.check, SC_CHECK_HTTP);
    assert_int_equal(cfg->consul.wait_ms, 300000);
    sc_config_free(cfg);

    setenv("CONSUL_HTTP_ADDR", "https://consul.example.org:8501", 1);
    setenv("CONSUL_HTTP_TOKEN", "env-token", 1);
    setenv("CONSUL_HTTP_SSL_VERIFY", "false", 1);
    setenv("CONSUL_CACERT", "/etc/consul/ca.pem", 1);
    setenv("CONSUL_CLIENT_CERT", "/etc/consul/cert.pem", 1);
    setenv("CONSUL_CLIENT_KEY", "/etc/consul/key.pem", 1);
    cfg = load_ok(CFG_HEAD "consul:\n");
    assert_string_equal(cfg->consul.address, "https://consul.example.org:8501");
    assert_true(cfg->consul.ssl); /* https:// implies it */
    assert_false(cfg->consul.ssl_verify);
    assert_string_equal(cfg->consul.token, "env-token");
    assert_null(cfg->consul.token_file);
    assert_string_equal(cfg->consul.ca_file, "/etc/consul/ca.pem");
    assert_string_equal(cfg->consul.cert_file, "/etc/consul/cert.pem");
    assert_string_equal(cfg->consul.key_file, "/etc/consul/key.pem");
    sc_config_free(cfg);

    /* values in the file win over the environment */
    cfg = load_ok(CFG_HEAD "consul:\n  address: 10.1.1.1:8500\n  token: file-token\n"
                           "  ssl_verify: true\n  ca_file: /file/ca.pem\n"
                           "  cert_file: c.pem\n  key_file: k.pem\n");
    assert_string_equal(cfg->consul.address, "10.1.1.1:8500");
    assert_false(cfg->consul.ssl);
    assert_true(cfg->consul.ssl_verify);
    assert_string_equal(cfg->consul.token, "file-token");
    assert_string_equal(cfg->consul.ca_file, "/file/ca.pem");
    assert_string_equal(cfg->consul.cert_file, "c.pem");
    sc_config_free(cfg);

    /* CONSUL_HTTP_TOKEN_FILE: read once, trimmed, wins over CONSUL_HTTP_TOKEN */
    setenv("CONSUL_HTTP_TOKEN_FILE", DATA "/good/token.txt", 1);
    cfg = load_ok(CFG_HEAD "consul: {}\n");
    assert_string_equal(cfg->consul.token, "s3cr3t-token");
    assert_string_equal(cfg->consul.token_file, DATA "/good/token.txt");
    json_t *j = sc_config_to_json(cfg);
    char *text = json_dumps(j, 0);
    assert_null(strstr(text, "s3cr3t"));
    assert_string_equal(json_string_value(json_object_get(json_object_get(j, "consul"), "token")),
                        "<set>");
    free(text);
    json_decref(j);
    sc_config_free(cfg);

    /* no consul section: the environment is not consulted */
    cfg = load_ok(CFG_HEAD);
    assert_false(cfg->consul.enabled);
    assert_null(cfg->consul.address);
    assert_null(cfg->consul.token);
    sc_config_free(cfg);

    /* bad values in the environment are diagnostics too */
    sc_diags d = {0};
    setenv("CONSUL_HTTP_TOKEN_FILE", DATA "/no-such-token", 1);
    setenv("CONSUL_HTTP_SSL", "maybe", 1);
    setenv("CONSUL_HTTP_ADDR", "ftp://x", 1);
    const char *y = CFG_HEAD "consul: {}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "env.yaml", NULL, &cfg, &d), -ENOENT);
    assert_null(cfg);
    expect_diag(&d, "env.yaml", 0, "consul.token_file", "$CONSUL_HTTP_TOKEN_FILE");
    expect_diag(&d, "env.yaml", 0, "consul.ssl", "$CONSUL_HTTP_SSL='maybe'");
    expect_diag(&d, "env.yaml", 0, "consul.address", "$CONSUL_HTTP_ADDR");
    sc_diags_free(&d);

    clear_consul_env();
    setenv("CONSUL_HTTP_SSL", "1", 1);
    setenv("CONSUL_HTTP_ADDR", "unix:///run/consul/agent.sock", 1);
    cfg = load_ok(CFG_HEAD "consul: {}\n");
    assert_true(cfg->consul.ssl);
    assert_string_equal(cfg->consul.address, "unix:///run/consul/agent.sock");
    sc_config_free(cfg);
    clear_consul_env();

    /* token_file in the file, relative to the config's directory */
    y = CFG_HEAD "consul: {token_file: token.txt}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "env.yaml", DATA "/good", &cfg, &d), 0);
    assert_string_equal(cfg->consul.token, "s3cr3t-token");
    sc_config_free(cfg);
    sc_diags_free(&d);

    /* consul.check_http: unset by default (the admin /ready), any http(s) URL */
    cfg = load_ok(CFG_HEAD "consul: {check_http: 'https://10.0.0.5:8443/healthz?deep=1'}\n");
    assert_string_equal(cfg->consul.check_http, "https://10.0.0.5:8443/healthz?deep=1");
    sc_config_free(cfg);

    /* CONSUL_CAPATH, CONSUL_TLS_SERVER_NAME, CONSUL_NAMESPACE, CONSUL_PARTITION */
    cfg = load_ok(CFG_HEAD "consul: {}\n");
    assert_null(cfg->consul.ca_path);
    assert_null(cfg->consul.tls_server_name);
    assert_null(cfg->consul.ns);
    assert_null(cfg->consul.partition);
    assert_null(cfg->consul.check_http);
    sc_config_free(cfg);
    setenv("CONSUL_HTTP_ADDR", "https://10.0.0.1:8501", 1);
    setenv("CONSUL_CAPATH", "/etc/consul/cas", 1);
    setenv("CONSUL_TLS_SERVER_NAME", "consul.service.internal", 1);
    setenv("CONSUL_NAMESPACE", "team-a", 1);
    setenv("CONSUL_PARTITION", "part1", 1);
    cfg = load_ok(CFG_HEAD "consul: {}\n");
    assert_string_equal(cfg->consul.ca_path, "/etc/consul/cas");
    assert_string_equal(cfg->consul.tls_server_name, "consul.service.internal");
    assert_string_equal(cfg->consul.ns, "team-a");
    assert_string_equal(cfg->consul.partition, "part1");
    json_t *jj = sc_config_to_json(cfg);
    assert_string_equal(jget(jj, "consul.namespace"), "team-a");
    assert_string_equal(jget(jj, "consul.partition"), "part1");
    assert_string_equal(jget(jj, "consul.ca_path"), "/etc/consul/cas");
    assert_string_equal(jget(jj, "consul.tls_server_name"), "consul.service.internal");
    json_decref(jj);
    sc_config_free(cfg);
    /* the file wins; a relative ca_path is relative to the config's directory */
    y = CFG_HEAD "consul: {ca_path: cas, tls_server_name: c.example.org, namespace: ns-1, "
                 "partition: p-2}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "env.yaml", DATA "/good", &cfg, &d), 0);
    assert_string_equal(cfg->consul.ca_path, DATA "/good/cas");
    assert_string_equal(cfg->consul.tls_server_name, "c.example.org");
    assert_string_equal(cfg->consul.ns, "ns-1");
    assert_string_equal(cfg->consul.partition, "p-2");
    sc_config_free(cfg);
    sc_diags_free(&d);
    /* CONSUL_TLS_SERVER_NAME means nothing for a plain agent: dropped */
    setenv("CONSUL_HTTP_ADDR", "127.0.0.1:8500", 1);
    cfg = load_ok(CFG_HEAD "consul: {}\n");
    assert_null(cfg->consul.tls_server_name);
    sc_config_free(cfg);
    /* bad values from the environment */
    setenv("CONSUL_HTTP_ADDR", "https://10.0.0.1:8501", 1);
    setenv("CONSUL_TLS_SERVER_NAME", "10.0.0.1", 1);
    setenv("CONSUL_NAMESPACE", "team a", 1);
    setenv("CONSUL_PARTITION", "-p", 1);
    y = CFG_HEAD "consul: {}\n";
    assert_int_equal(sc_config_load_string(y, strlen(y), "env.yaml", NULL, &cfg, &d), -EINVAL);
    expect_diag(&d, "env.yaml", 0, "consul.tls_server_name", "$CONSUL_TLS_SERVER_NAME");
    expect_diag(&d, "env.yaml", 0, "consul.namespace", "$CONSUL_NAMESPACE");
    expect_diag(&d, "env.yaml", 0, "consul.partition", "$CONSUL_PARTITION");
    sc_diags_free(&d);
    clear_consul_env();
}

/* ---- JSON ---- */

static const char *jget(json_t *o, const char *path)
{
    char buf[256];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    for (char *tok = strtok(buf, "."); tok && cur; tok = strtok(NULL, "."))
        cur = json_object_get(cur, tok);
    return json_string_value(cur);
}

static void test_to_json(void **state)
{
    (void)state;
    sc_config *cfg;
    sc_diags d = {0};
    assert_int_equal(sc_config_load(DATA "/good/sidecar.yaml", &cfg, &d), 0);
    json_t *j = sc_config_to_json(cfg);
    assert_non_null(j);
    assert_string_equal(jget(j, "service.name"), "orders");
    assert_string_equal(jget(j, "inbound.listen"), "0.0.0.0:15443");
    assert_string_equal(jget(j, "inbound.app_protocol"), "grpc");
    assert_string_equal(jget(j, "inbound.timeouts.connect"), "500ms");
    assert_string_equal(jget(j, "inbound.timeouts.idle"), "2m");
    assert_string_equal(jget(j, "drain_timeout"), "20s");
    assert_string_equal(jget(j, "admin.listen"), "127.0.0.1:19001");
    assert_string_equal(jget(j, "log.level"), "debug");
    assert_string_equal(jget(j, "consul.token"), "<set>");
    assert_string_equal(jget(j, "consul.check"), "grpc");
    assert_string_equal(jget(j, "consul.deregister_after"), "1m");
    assert_string_equal(jget(j, "tls.identity_header"), "x-sidecar-caller");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "limits"),
                                                        "max_header_bytes")),
                     32768);
    assert_int_equal(json_integer_value(json_object_get(j, "workers")), 4);
    char *text = json_dumps(j, 0);
    assert_null(strstr(text, "s3cr3t"));
    free(text);

    json_t *ups = json_object_get(j, "upstreams");
    assert_int_equal(json_array_size(ups), 3);
    json_t *pay = json_array_get(ups, 1);
    assert_string_equal(jget(pay, "upstream"), "payments");
    assert_string_equal(jget(pay, "protocol"), "grpc");
    assert_string_equal(jget(pay, "discovery.consul.service"), "payments");
    assert_string_equal(jget(pay, "tls.mode"), "mutual");
    assert_string_equal(jget(pay, "load_balancer"), "least_request");
    assert_string_equal(jget(pay, "circuit_breaker.slow_call.duration"), "1s");
    json_t *on = json_object_get(json_object_get(pay, "retries"), "on");
    assert_int_equal(json_array_size(on), 4);
    assert_string_equal(json_string_value(json_array_get(on, 3)), "unavailable");
    assert_true(json_is_null(json_object_get(json_object_get(pay, "circuit_breaker"),
                                             "fallback")));

    /* round trip: every duration string parses back to the loaded value */
    const sc_policy *p = find_policy(cfg, "payments");
    static const char *const tkeys[] = {"connect", "request", "per_try", "idle", "header_read"};
    const uint64_t tvals[] = {p->timeouts.connect_ms, p->timeouts.request_ms,
                              p->timeouts.per_try_ms, p->timeouts.idle_ms,
                              p->timeouts.header_read_ms};
    for (size_t i = 0; i < SC_ARRAY_LEN(tkeys); i++) {
        uint64_t ms;
        const char *s = json_string_value(
            json_object_get(json_object_get(pay, "timeouts"), tkeys[i]));
        assert_non_null(s);
        assert_int_equal(sc_duration_parse(s, &ms), 0);
        assert_int_equal(ms, tvals[i]);
    }
    json_t *web = json_array_get(ups, 2);
    json_t *fb = json_object_get(json_object_get(web, "circuit_breaker"), "fallback");
    assert_int_equal(json_integer_value(json_object_get(json_object_get(fb, "http"), "status")),
                     503);
    assert_string_equal(jget(web, "circuit_breaker.fallback.http.body"), "web is resting");
    assert_string_equal(jget(web, "circuit_breaker.fallback.grpc.status"), "unavailable");
    json_t *st = json_object_get(json_object_get(web, "discovery"), "static");
    assert_int_equal(json_array_size(st), 2);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(st, 1), "weight")), 2);

    /* the policy JSON of the loaded values and of a reload from the same file agree */
    json_t *again = sc_policy_to_json(p);
    assert_true(json_equal(again, pay));
    json_decref(again);
    json_decref(j);
    sc_config_free(cfg);
}

/* fallback.http.headers and fallback.grpc.metadata: names lower-cased, kept
 * in order, shown by /config. */
static void test_fallback_headers(void **state)
{
    (void)state;
    static const char pol[] = POL_BASE "circuit_breaker:\n  fallback:\n"
                                       "    http:\n      status: 200\n      body: '{}'\n"
                                       "      headers: {Content-Type: application/json, X-Fallback: '1', "
                                       "cache-control: 'no-store, max-age=0'}\n"
                                       "    grpc:\n      metadata: {x-fallback: yes, trace-bin: 'AAEC'}\n";
    sc_policy p;
    sc_diags d = {0};
    int rc = sc_policy_load_string(pol, strlen(pol), "p.yaml", &p, &d);
    if (rc != 0)
        sc_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    const sc_breaker_policy *b = &p.breaker;
    assert_true(b->has_fallback);
    assert_int_equal(b->n_fallback_http_headers, 3);
    assert_string_equal(b->fallback_http_headers[0].key, "content-type");
    assert_string_equal(b->fallback_http_headers[0].value, "application/json");
    assert_string_equal(b->fallback_http_headers[1].key, "x-fallback");
    assert_string_equal(b->fallback_http_headers[1].value, "1");
    assert_string_equal(b->fallback_http_headers[2].value, "no-store, max-age=0");
    assert_int_equal(b->n_fallback_grpc_metadata, 2);
    assert_string_equal(b->fallback_grpc_metadata[0].value, "yes");
    assert_string_equal(b->fallback_grpc_metadata[1].key, "trace-bin");
    json_t *j = sc_policy_to_json(&p);
    assert_string_equal(jget(j, "circuit_breaker.fallback.http.headers.content-type"), "application/json");
    assert_string_equal(jget(j, "circuit_breaker.fallback.grpc.metadata.x-fallback"), "yes");
    json_decref(j);
    sc_policy_clear(&p);
    sc_diags_free(&d);
}

/* admin: loopback unless allow_remote; allowed_hosts; the token read from
 * token_file (whitespace trimmed) and never shown. */
static void test_admin_section(void **state)
{
    (void)state;
    char dir[] = "/tmp/sc-cfg-admin-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char tok[64];
    snprintf(tok, sizeof(tok), "%s/admin-token", dir);
    FILE *f = fopen(tok, "w");
    assert_non_null(f);
    fputs("  Zm9v-admin-s3cr3t\n", f);
    fclose(f);
    static const char yaml[] = CFG_HEAD "admin:\n  listen: '0.0.0.0:19005'\n  allow_remote: true\n"
                                        "  allowed_hosts: [admin.internal, 'ops.example:8443', '[fd00::1]']\n"
                                        "  token_file: admin-token\n";
    sc_config *cfg;
    sc_diags d = {0};
    int rc = sc_config_load_string(yaml, strlen(yaml), "s.yaml", dir, &cfg, &d);
    if (rc != 0)
        sc_diags_print(&d, stderr);
    assert_int_equal(rc, 0);
    assert_true(cfg->admin.allow_remote);
    assert_false(sc_addr_is_loopback(&cfg->admin.listen));
    assert_true(sc_addr_is_wildcard(&cfg->admin.listen));
    assert_int_equal(sc_addr_port(&cfg->admin.listen), 19005);
    assert_int_equal(cfg->admin.n_allowed_hosts, 3);
    assert_string_equal(cfg->admin.allowed_hosts[1], "ops.example:8443");
    assert_string_equal(cfg->admin.token, "Zm9v-admin-s3cr3t");
    json_t *j = sc_config_to_json(cfg);
    assert_string_equal(jget(j, "admin.token"), "<set>");
    assert_true(json_is_true(json_object_get(json_object_get(j, "admin"), "allow_remote")));
    char *text = json_dumps(j, 0);
    assert_null(strstr(text, "s3cr3t"));
    free(text);
    json_decref(j);
    sc_config_free(cfg);

    /* an empty token file is refused; the default admin address is loopback */
    f = fopen(tok, "w");
    fclose(f);
    static const char empty[] = CFG_HEAD "admin: {token_file: admin-token}\n";
    assert_int_not_equal(sc_config_load_string(empty, strlen(empty), "s.yaml", dir, &cfg, &d), 0);
    expect_diag(&d, "s.yaml", 2, "admin.token_file", "is empty");
    static const char def[] = CFG_HEAD;
    assert_int_equal(sc_config_load_string(def, strlen(def), "s.yaml", dir, &cfg, NULL), 0);
    assert_true(sc_addr_is_loopback(&cfg->admin.listen));
    assert_false(cfg->admin.allow_remote);
    assert_null(cfg->admin.token);
    sc_config_free(cfg);
    /* loopback v6 and any 127/8 address need no allow_remote */
    static const char v6[] = CFG_HEAD "admin: {listen: '[::1]:19006'}\n";
    assert_int_equal(sc_config_load_string(v6, strlen(v6), "s.yaml", dir, &cfg, NULL), 0);
    sc_config_free(cfg);
    static const char v4[] = CFG_HEAD "admin: {listen: '127.0.0.2:19006'}\n";
    assert_int_equal(sc_config_load_string(v4, strlen(v4), "s.yaml", dir, &cfg, NULL), 0);
    sc_config_free(cfg);
    sc_diags_free(&d);
    unlink(tok);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_duration_table, setup),
        cmocka_unit_test_setup(test_duration_format, setup),
        cmocka_unit_test_setup(test_size_table, setup),
        cmocka_unit_test_setup(test_addr, setup),
        cmocka_unit_test_setup(test_design_example_policy, setup),
        cmocka_unit_test_setup(test_shipped_policies, setup),
        cmocka_unit_test_setup(test_good_config, setup),
        cmocka_unit_test_setup(test_defaults, setup),
        cmocka_unit_test_setup(test_example, setup),
        cmocka_unit_test_setup(test_bad_policies, setup),
        cmocka_unit_test_setup(test_policy_nul_inside_document, setup),
        cmocka_unit_test_setup(test_bad_policy_files, setup),
        cmocka_unit_test_setup(test_bad_configs, setup),
        cmocka_unit_test_setup(test_tls_source, setup),
        cmocka_unit_test_setup(test_header_underscores, setup),
        cmocka_unit_test_setup(test_tls_authorize, setup),
        cmocka_unit_test_setup(test_bad_config_files, setup),
        cmocka_unit_test_setup(test_all_problems_collected, setup),
        cmocka_unit_test_setup(test_unreadable, setup),
        cmocka_unit_test_setup(test_consul_env, setup),
        cmocka_unit_test_setup(test_to_json, setup),
        cmocka_unit_test_setup(test_fallback_headers, setup),
        cmocka_unit_test_setup(test_admin_section, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

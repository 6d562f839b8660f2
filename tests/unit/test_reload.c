/*
 * test_reload.c: what a reload compares (config/config_diff.h): upstreams
 * added, removed, changed (which parts) and unchanged; the inbound route;
 * process-wide settings and whether each applies live or needs a restart;
 * secrets and re-resolved addresses the JSON does not show; the diff as
 * JSON; the configuration hash.
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

#include "config/config.h"
#include "config/config_diff.h"

/* ---- helpers ---- */

/* sidecar.yaml with `head` (top-level settings) and three upstreams a, b, c
 * whose bodies (policy fields after upstream/listen) are given; NULL leaves
 * an upstream out. */
static char *doc(const char *head, const char *a, const char *b, const char *c)
{
    static const char *const names[] = {"a", "b", "c"};
    const char *bodies[] = {a, b, c};
    char *out = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&out, &len);
    assert_non_null(f);
    fprintf(f, "service: {name: web}\n%s\nupstreams:\n", head ? head : "");
    for (int i = 0; i < 3; i++)
        if (bodies[i])
            fprintf(f, "  - upstream: %s\n    listen: 127.0.0.1:%d\n%s\n", names[i], 9101 + i, bodies[i]);
    fclose(f);
    return out;
}

static sc_config *load(const char *yaml)
{
    sc_diags d = {0};
    sc_config *cfg = NULL;
    int rc = sc_config_load_string(yaml, strlen(yaml), "sidecar.yaml", ".", &cfg, &d);
    if (rc < 0)
        sc_diags_print(&d, stderr);
    sc_diags_free(&d);
    assert_int_equal(rc, 0);
    assert_non_null(cfg);
    return cfg;
}

/* Loads both documents (freeing the texts) and diffs them. */
static void diff_docs(char *old_yaml, char *new_yaml, sc_config **oc, sc_config **nc, sc_config_diff *d)
{
    *oc = load(old_yaml);
    *nc = load(new_yaml);
    free(old_yaml);
    free(new_yaml);
    assert_int_equal(sc_config_diff_build(*oc, *nc, d), 0);
}

static void release(sc_config *a, sc_config *b, sc_config_diff *d)
{
    sc_config_diff_free(d);
    sc_config_free(a);
    sc_config_free(b);
}

#define BODY_HTTP1 "    protocol: http1\n    discovery: {static: [127.0.0.1:8001]}\n"
#define BODY_GRPC "    protocol: grpc\n    discovery: {static: [127.0.0.1:8002, 127.0.0.1:8003]}\n"

static bool has_setting(const sc_config_diff *d, const char *path, sc_apply_kind apply)
{
    for (size_t i = 0; i < d->n_settings; i++)
        if (strcmp(d->settings[i].path, path) == 0)
            return d->settings[i].apply == apply;
    return false;
}

static void print_diff(const sc_config_diff *d)
{
    json_t *j = sc_config_diff_to_json(d);
    char *s = json_dumps(j, JSON_COMPACT);
    fprintf(stderr, "diff: %s\n", s);
    free(s);
    json_decref(j);
}

/* ---- tests ---- */

static void test_identical(void **state)
{
    (void)state;
    sc_config *a, *b;
    sc_config_diff d;
    diff_docs(doc("workers: 2", BODY_HTTP1, BODY_GRPC, NULL), doc("workers: 2", BODY_HTTP1, BODY_GRPC, NULL), &a,
              &b, &d);
    assert_true(sc_config_diff_empty(&d));
    assert_int_equal(d.n_routes, 2);
    assert_int_equal(sc_config_diff_count_routes(&d, SC_ROUTE_UNCHANGED), 2);
    assert_int_equal(d.n_settings, 0);
    char ha[SC_CONFIG_HASH_LEN + 1], hb[SC_CONFIG_HASH_LEN + 1];
    assert_int_equal(sc_config_hash(a, ha), 0);
    assert_int_equal(sc_config_hash(b, hb), 0);
    assert_string_equal(ha, hb);
    assert_int_equal(strlen(ha), SC_CONFIG_HASH_LEN);
    assert_int_equal(strspn(ha, "0123456789abcdef"), SC_CONFIG_HASH_LEN);
    release(a, b, &d);
}

/* The hash follows the values, not how the files write them. */
static void test_hash(void **state)
{
    (void)state;
    sc_config *a = load("service: {name: web}\nworkers: 2\ndrain_timeout: 10s\nupstreams:\n"
                        "  - {upstream: a, protocol: http1, listen: 127.0.0.1:9101, discovery: {static: [127.0.0.1:8001]},"
                        " timeouts: {connect: 1s, request: 2s}}\n");
    sc_config *b = load("# same values, other order and spelling\ndrain_timeout: 10000ms\nworkers: 2\n"
                        "upstreams:\n  - upstream: a\n    listen: 127.0.0.1:9101\n    protocol: http1\n"
                        "    timeouts:\n      request: 2000ms\n      connect: 1000ms\n"
                        "    discovery:\n      static:\n        - 127.0.0.1:8001\nservice:\n  name: web\n");
    sc_config *c = load("service: {name: web}\nworkers: 2\ndrain_timeout: 10s\nupstreams:\n"
                        "  - {upstream: a, protocol: http1, listen: 127.0.0.1:9101, discovery: {static: [127.0.0.1:8001]},"
                        " timeouts: {connect: 1s, request: 3s}}\n");
    char ha[SC_CONFIG_HASH_LEN + 1], hb[SC_CONFIG_HASH_LEN + 1], hc[SC_CONFIG_HASH_LEN + 1];
    assert_int_equal(sc_config_hash(a, ha), 0);
    assert_int_equal(sc_config_hash(b, hb), 0);
    assert_int_equal(sc_config_hash(c, hc), 0);
    /* the file names differ only through "file", which both name sidecar.yaml */
    assert_string_equal(ha, hb);
    assert_string_not_equal(ha, hc);
    sc_config_free(a);
    sc_config_free(b);
    sc_config_free(c);
}

static void test_upstream_changes(void **state)
{
    (void)state;
    sc_config *a, *b;
    sc_config_diff d;
    /* old: a, b, c; new: a with another timeout, b as it was, c gone; a fourth, d,
     * arrives through the same document as c's slot renamed */
    char *old_yaml = doc(NULL, BODY_HTTP1, BODY_GRPC, BODY_HTTP1);
    char *new_yaml = doc(NULL, BODY_HTTP1 "    timeouts: {request: 3s}\n", BODY_GRPC, NULL);
    char *with_d = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&with_d, &n);
    fprintf(f, "%s  - upstream: d\n    listen: 127.0.0.1:9200\n" BODY_HTTP1, new_yaml);
    fclose(f);
    free(new_yaml);
    diff_docs(old_yaml, with_d, &a, &b, &d);
    assert_false(sc_config_diff_empty(&d));
    assert_int_equal(d.n_routes, 4);
    const sc_route_diff *r = sc_config_diff_route(&d, "a", false);
    assert_non_null(r);
    assert_int_equal(r->change, SC_ROUTE_CHANGED);
    assert_int_equal(r->parts, SC_PART_TIMEOUTS);
    assert_ptr_equal(r->old_p, &a->policies[0]);
    assert_ptr_equal(r->new_p, &b->policies[0]);
    r = sc_config_diff_route(&d, "b", false);
    assert_int_equal(r->change, SC_ROUTE_UNCHANGED);
    assert_int_equal(r->parts, 0);
    r = sc_config_diff_route(&d, "c", false);
    assert_int_equal(r->change, SC_ROUTE_REMOVED);
    assert_null(r->new_p);
    assert_ptr_equal(r->old_p, &a->policies[2]);
    assert_int_equal(r->new_index, SIZE_MAX);
    r = sc_config_diff_route(&d, "d", false);
    assert_int_equal(r->change, SC_ROUTE_ADDED);
    assert_null(r->old_p);
    assert_ptr_equal(r->new_p, &b->policies[2]);
    /* order: the new configuration's, then what was removed */
    assert_string_equal(d.routes[0].name, "a");
    assert_string_equal(d.routes[2].name, "d");
    assert_string_equal(d.routes[3].name, "c");
    assert_null(sc_config_diff_route(&d, "zz", false));
    assert_null(sc_config_diff_route(&d, NULL, true));
    assert_int_equal(d.n_settings, 0);

    json_t *j = sc_config_diff_to_json(&d);
    json_t *want = json_loads("{\"upstreams\": {\"added\": [\"d\"], \"removed\": [\"c\"], \"unchanged\": [\"b\"],"
                              " \"changed\": {\"a\": [\"timeouts\"]}}, \"inbound\": null, \"settings\": []}",
                              0, NULL);
    assert_non_null(want);
    if (!json_equal(j, want))
        print_diff(&d);
    assert_true(json_equal(j, want));
    json_decref(j);
    json_decref(want);
    release(a, b, &d);
}

/* Each part of an upstream, changed alone, is reported alone. */
static void test_parts(void **state)
{
    (void)state;
    static const struct {
        const char *old_body, *new_body;
        uint32_t part;
        const char *name;
    } cases[] = {
        {BODY_HTTP1, "    protocol: http2\n    discovery: {static: [127.0.0.1:8001]}\n", SC_PART_PROTOCOL, "protocol"},
        {BODY_HTTP1, "    protocol: http1\n    discovery: {static: [127.0.0.1:8001, 127.0.0.1:8009]}\n",
         SC_PART_DISCOVERY, "discovery"},
        {BODY_HTTP1, "    protocol: http1\n    discovery: {static: [{address: 127.0.0.1:8001, weight: 3}]}\n",
         SC_PART_DISCOVERY, "discovery"},
        {BODY_HTTP1, BODY_HTTP1 "    tls: {mode: simple, sni: a.example}\n", SC_PART_TLS, "tls"},
        {BODY_HTTP1 "    timeouts: {connect: 1s}\n", BODY_HTTP1 "    timeouts: {connect: 2s}\n", SC_PART_TIMEOUTS,
         "timeouts"},
        {BODY_HTTP1 "    retries: {max_attempts: 2}\n", BODY_HTTP1 "    retries: {max_attempts: 3}\n",
         SC_PART_RETRIES, "retries"},
        {BODY_HTTP1 "    retries: {on: [connect-failure]}\n", BODY_HTTP1 "    retries: {on: [connect-failure, 5xx]}\n",
         SC_PART_RETRIES, "retries"},
        {BODY_HTTP1, BODY_HTTP1 "    retries: {}\n", SC_PART_RETRIES, "retries"},
        {BODY_HTTP1 "    retries: {budget: {ratio: 0.2}}\n", BODY_HTTP1 "    retries: {budget: {ratio: 0.5}}\n",
         SC_PART_RETRY_BUDGET, "retries.budget"},
        {BODY_HTTP1 "    bulkhead: {max_concurrent: 10}\n", BODY_HTTP1 "    bulkhead: {max_concurrent: 20}\n",
         SC_PART_BULKHEAD, "bulkhead"},
        {BODY_HTTP1 "    circuit_breaker: {failure_rate: 50%}\n",
         BODY_HTTP1 "    circuit_breaker: {failure_rate: 60%}\n", SC_PART_BREAKER, "circuit_breaker"},
        {BODY_HTTP1 "    circuit_breaker: {fallback: {http: {status: 503}}}\n",
         BODY_HTTP1 "    circuit_breaker: {fallback: {http: {status: 200}}}\n", SC_PART_FALLBACK,
         "circuit_breaker.fallback"},
        {BODY_HTTP1 "    circuit_breaker: {}\n", BODY_HTTP1 "    circuit_breaker: {fallback: {}}\n", SC_PART_FALLBACK,
         "circuit_breaker.fallback"},
        {BODY_HTTP1 "    outlier: {consecutive_failures: 5}\n", BODY_HTTP1 "    outlier: {consecutive_failures: 6}\n",
         SC_PART_OUTLIER, "outlier"},
        {BODY_HTTP1, BODY_HTTP1 "    load_balancer: random\n", SC_PART_LB, "load_balancer"},
        {BODY_HTTP1, BODY_HTTP1 "    rate_limits: [{name: all, rate: 10/s}]\n", SC_PART_RATE_LIMITS,
         "rate_limits"},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        sc_config *a, *b;
        sc_config_diff d;
        diff_docs(doc(NULL, cases[i].old_body, BODY_GRPC, NULL), doc(NULL, cases[i].new_body, BODY_GRPC, NULL), &a,
                  &b, &d);
        const sc_route_diff *r = sc_config_diff_route(&d, "a", false);
        if (r->parts != cases[i].part) {
            fprintf(stderr, "case %zu (%s): parts %#x\n", i, cases[i].name, r->parts);
            print_diff(&d);
        }
        assert_int_equal(r->change, SC_ROUTE_CHANGED);
        assert_int_equal(r->parts, cases[i].part);
        assert_string_equal(sc_config_part_name(cases[i].part, false), cases[i].name);
        assert_int_equal(sc_config_diff_route(&d, "b", false)->change, SC_ROUTE_UNCHANGED);
        assert_int_equal(d.n_settings, 0);
        release(a, b, &d);
    }
    /* several at once, and a listener moved */
    sc_config *a, *b;
    sc_config_diff d;
    char *new_yaml = doc(NULL, BODY_HTTP1 "    timeouts: {request: 1s}\n    load_balancer: random\n", BODY_GRPC, NULL);
    char *p = strstr(new_yaml, "127.0.0.1:9101");
    assert_non_null(p);
    memcpy(p, "127.0.0.1:9109", 14);
    diff_docs(doc(NULL, BODY_HTTP1, BODY_GRPC, NULL), new_yaml, &a, &b, &d);
    assert_int_equal(sc_config_diff_route(&d, "a", false)->parts, SC_PART_LISTEN | SC_PART_TIMEOUTS | SC_PART_LB);
    json_t *j = sc_config_diff_to_json(&d);
    json_t *want = json_pack("[s, s, s]", "listen", "timeouts", "load_balancer");
    assert_true(json_equal(json_object_get(json_object_get(json_object_get(j, "upstreams"), "changed"), "a"), want));
    json_decref(j);
    json_decref(want);
    release(a, b, &d);
}

/* A policy that moved from sidecar.yaml to a file of the policies directory
 * (or the reverse) is the same upstream: its file is not a part. */
static void test_file_is_not_a_part(void **state)
{
    (void)state;
    json_t *a = json_loads("{\"upstreams\": [{\"upstream\": \"a\", \"file\": \"sidecar.yaml\", \"protocol\": \"http1\"}]}",
                           0, NULL);
    json_t *b = json_loads("{\"upstreams\": [{\"upstream\": \"a\", \"file\": \"policies/a.yaml\", \"protocol\": \"http1\"}]}",
                           0, NULL);
    sc_config_diff d;
    assert_int_equal(sc_config_diff_build_json(a, b, &d), 0);
    assert_true(sc_config_diff_empty(&d));
    sc_config_diff_free(&d);
    json_decref(a);
    json_decref(b);
}

/* A field this build does not name (a newer JSON member) is still a change:
 * "other" for an upstream, a restart for a setting. */
static void test_unknown_fields(void **state)
{
    (void)state;
    json_t *a = json_loads("{\"upstreams\": [{\"upstream\": \"a\", \"shiny\": 1}], \"gadget\": {\"x\": 1},"
                           " \"inbound\": {\"listen\": \"127.0.0.1:1\", \"jwt\": null, \"novel\": 1}}",
                           0, NULL);
    json_t *b = json_loads("{\"upstreams\": [{\"upstream\": \"a\", \"shiny\": 2}], \"gadget\": {\"x\": 2},"
                           " \"inbound\": {\"listen\": \"127.0.0.1:1\", \"jwt\": {\"issuers\": []}, \"novel\": 2},"
                           " \"brand_new\": true}",
                           0, NULL);
    sc_config_diff d;
    assert_int_equal(sc_config_diff_build_json(a, b, &d), 0);
    assert_int_equal(sc_config_diff_route(&d, "a", false)->parts, SC_PART_OTHER);
    const sc_route_diff *in = sc_config_diff_route(&d, NULL, true);
    assert_non_null(in);
    assert_int_equal(in->change, SC_ROUTE_CHANGED);
    assert_int_equal(in->parts, SC_PART_OTHER);
    assert_true(has_setting(&d, "gadget.x", SC_APPLY_RESTART));
    assert_true(has_setting(&d, "brand_new", SC_APPLY_RESTART));
    assert_true(has_setting(&d, "inbound.jwt", SC_APPLY_RESTART));
    assert_int_equal(d.n_settings, 3);
    sc_config_diff_free(&d);
    json_decref(a);
    json_decref(b);
}

static void test_apply_table(void **state)
{
    (void)state;
    assert_int_equal(sc_config_setting_apply("log.level"), SC_APPLY_LIVE);
    assert_int_equal(sc_config_setting_apply("log"), SC_APPLY_LIVE);
    assert_int_equal(sc_config_setting_apply("logs"), SC_APPLY_RESTART);
    assert_int_equal(sc_config_setting_apply("reload.watch"), SC_APPLY_LIVE);
    assert_int_equal(sc_config_setting_apply("reload.debounce"), SC_APPLY_LIVE);
    assert_int_equal(sc_config_setting_apply("policies"), SC_APPLY_LIVE);
    static const char *const restart[] = {"workers", "admin.listen", "admin.token", "limits.stream_buffer",
                                          "service.name", "consul.token", "consul.wait", "health.interval",
                                          "tls.cert", "redis", "tracing.enabled", "access_log", "inbound.jwt",
                                          "drain_timeout"};
    for (size_t i = 0; i < SC_ARRAY_LEN(restart); i++)
        assert_int_equal(sc_config_setting_apply(restart[i]), SC_APPLY_RESTART);
}

static void test_settings(void **state)
{
    (void)state;
    sc_config *a, *b;
    sc_config_diff d;
    diff_docs(doc("workers: 2\nlog: {level: info}\nlimits: {stream_buffer: 64KiB}\nreload: {watch: false}",
                  BODY_HTTP1, NULL, NULL),
              doc("workers: 4\nlog: {level: debug}\nlimits: {stream_buffer: 1MiB}\nreload: {watch: true}\n"
                  "tracing: {sample_ratio: 0.5}",
                  BODY_HTTP1, NULL, NULL),
              &a, &b, &d);
    assert_int_equal(sc_config_diff_route(&d, "a", false)->change, SC_ROUTE_UNCHANGED);
    assert_true(has_setting(&d, "workers", SC_APPLY_RESTART));
    assert_true(has_setting(&d, "log.level", SC_APPLY_LIVE));
    assert_true(has_setting(&d, "limits.stream_buffer", SC_APPLY_RESTART));
    assert_true(has_setting(&d, "reload.watch", SC_APPLY_LIVE));
    assert_true(has_setting(&d, "tracing.enabled", SC_APPLY_RESTART));
    assert_true(has_setting(&d, "tracing.sample_ratio", SC_APPLY_RESTART));
    assert_int_equal(d.n_settings, 6);
    assert_int_equal(sc_config_diff_count_settings(&d, SC_APPLY_LIVE), 2);
    assert_int_equal(sc_config_diff_count_settings(&d, SC_APPLY_RESTART), 4);
    /* in sidecar.yaml's order */
    assert_string_equal(d.settings[0].path, "workers");
    release(a, b, &d);

    /* admin.listen moved; access_log appears */
    diff_docs(doc(NULL, BODY_HTTP1, NULL, NULL),
              doc("admin: {listen: 127.0.0.1:19001}\naccess_log: {}", BODY_HTTP1, NULL, NULL), &a, &b, &d);
    assert_true(has_setting(&d, "admin.listen", SC_APPLY_RESTART));
    assert_true(has_setting(&d, "access_log", SC_APPLY_RESTART));
    assert_int_equal(d.n_settings, 2);
    release(a, b, &d);
}

/* Secrets are compared but never printed; they do not enter the hash. */
static void test_secrets(void **state)
{
    (void)state;
    sc_config *a, *b;
    sc_config_diff d;
    diff_docs(doc("consul: {token: first-secret}", BODY_HTTP1, NULL, NULL),
              doc("consul: {token: second-secret}", BODY_HTTP1, NULL, NULL), &a, &b, &d);
    assert_int_equal(d.n_settings, 1);
    assert_true(has_setting(&d, "consul.token", SC_APPLY_RESTART));
    json_t *j = sc_config_diff_to_json(&d);
    char *s = json_dumps(j, 0);
    assert_null(strstr(s, "secret"));
    free(s);
    json_decref(j);
    char ha[SC_CONFIG_HASH_LEN + 1], hb[SC_CONFIG_HASH_LEN + 1];
    sc_config_hash(a, ha);
    sc_config_hash(b, hb);
    assert_string_equal(ha, hb);
    release(a, b, &d);

    /* a token set where there was none: the JSON already says it (once) */
    diff_docs(doc("consul: {}", BODY_HTTP1, NULL, NULL), doc("consul: {token: x}", BODY_HTTP1, NULL, NULL), &a, &b,
              &d);
    assert_int_equal(d.n_settings, 1);
    assert_string_equal(d.settings[0].path, "consul.token");
    release(a, b, &d);
}

/* The same text may resolve to other addresses at the next load (a DNS
 * name): that is a change of the discovery part. */
static void test_resolved_addresses(void **state)
{
    (void)state;
    char *ya = doc("inbound: {listen: 127.0.0.1:15001, app: 127.0.0.1:8080}", BODY_GRPC, BODY_HTTP1, NULL);
    sc_config *a = load(ya), *b = load(ya);
    free(ya);
    sc_config_diff d;
    assert_int_equal(sc_config_diff_build(a, b, &d), 0);
    assert_true(sc_config_diff_empty(&d));
    sc_config_diff_free(&d);
    /* the second instance of a (and the app) now resolve elsewhere; the text is the same */
    ((struct sockaddr_in *)&b->policies[0].instances[1].addr.ss)->sin_addr.s_addr = htonl(0x7f000002);
    ((struct sockaddr_in *)&b->inbound.app.ss)->sin_port = htons(8081);
    assert_int_equal(sc_config_diff_build(a, b, &d), 0);
    const sc_route_diff *r = sc_config_diff_route(&d, "a", false);
    assert_int_equal(r->change, SC_ROUTE_CHANGED);
    assert_int_equal(r->parts, SC_PART_DISCOVERY);
    assert_int_equal(sc_config_diff_route(&d, "b", false)->change, SC_ROUTE_UNCHANGED);
    assert_int_equal(sc_config_diff_route(&d, NULL, true)->parts, SC_PART_DISCOVERY);
    release(a, b, &d);
}

static void test_inbound(void **state)
{
    (void)state;
    static const char *const base = "inbound: {listen: 127.0.0.1:15001, app: 127.0.0.1:8080, timeouts: {request: 5s}}";
    sc_config *a, *b;
    sc_config_diff d;
    diff_docs(doc(base, BODY_HTTP1, NULL, NULL),
              doc("inbound: {listen: 127.0.0.1:15001, app: 127.0.0.1:8081, timeouts: {request: 6s},"
                  " max_concurrent: 5}",
                  BODY_HTTP1, NULL, NULL),
              &a, &b, &d);
    const sc_route_diff *in = sc_config_diff_route(&d, NULL, true);
    assert_non_null(in);
    assert_true(in->inbound);
    assert_string_equal(in->name, "inbound");
    assert_int_equal(in->change, SC_ROUTE_CHANGED);
    assert_int_equal(in->parts, SC_PART_DISCOVERY | SC_PART_TIMEOUTS | SC_PART_BULKHEAD);
    assert_null(in->old_p);
    assert_int_equal(d.n_settings, 0);
    json_t *j = sc_config_diff_to_json(&d);
    json_t *want = json_pack("[s, s, s]", "app", "timeouts", "max_concurrent");
    assert_true(json_equal(json_object_get(j, "inbound"), want));
    json_decref(want);
    json_decref(j);
    release(a, b, &d);

    /* appears and goes */
    diff_docs(doc(NULL, BODY_HTTP1, NULL, NULL), doc(base, BODY_HTTP1, NULL, NULL), &a, &b, &d);
    assert_int_equal(sc_config_diff_route(&d, NULL, true)->change, SC_ROUTE_ADDED);
    j = sc_config_diff_to_json(&d);
    assert_string_equal(json_string_value(json_object_get(j, "inbound")), "added");
    json_decref(j);
    release(a, b, &d);
    diff_docs(doc(base, BODY_HTTP1, NULL, NULL), doc(NULL, BODY_HTTP1, NULL, NULL), &a, &b, &d);
    assert_int_equal(sc_config_diff_route(&d, NULL, true)->change, SC_ROUTE_REMOVED);
    release(a, b, &d);
    /* unchanged */
    diff_docs(doc(base, BODY_HTTP1, NULL, NULL), doc(base, BODY_HTTP1, NULL, NULL), &a, &b, &d);
    assert_int_equal(sc_config_diff_route(&d, NULL, true)->change, SC_ROUTE_UNCHANGED);
    assert_true(sc_config_diff_empty(&d));
    release(a, b, &d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identical),
        cmocka_unit_test(test_hash),
        cmocka_unit_test(test_upstream_changes),
        cmocka_unit_test(test_parts),
        cmocka_unit_test(test_file_is_not_a_part),
        cmocka_unit_test(test_unknown_fields),
        cmocka_unit_test(test_apply_table),
        cmocka_unit_test(test_settings),
        cmocka_unit_test(test_secrets),
        cmocka_unit_test(test_resolved_addresses),
        cmocka_unit_test(test_inbound),
    };
    sc_addr_set_dns_enabled(false);
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * config_json.c: the effective configuration as JSON (admin /config,
 * `sidecar --check --print`). Every field is present; durations are strings
 * in the config syntax ("250ms"), so the output reads like the input;
 * secrets are replaced by "<set>".
 */
#include "config/config_internal.h"
#include "http/grpc.h"
#include "jwt/jwt_config.h"

#include <jansson.h>

static json_t *jstr(const char *s)
{
    return s ? json_string(s) : json_null();
}

static json_t *jdur(uint64_t ms)
{
    char b[64];
    sc_duration_format(ms, b, sizeof(b));
    return json_string(b);
}

static json_t *jaddr(const sc_addr *a)
{
    return a->len ? json_string(a->text) : json_null();
}

static json_t *jconds(uint32_t bits, uint32_t grpc_bits)
{
    json_t *a = json_array();
    for (size_t i = 0; i < sc_config_n_conds; i++)
        if (bits & sc_config_conds[i].bit)
            json_array_append_new(a, json_string(sc_config_conds[i].name));
    for (int code = 0; code <= SC_GRPC_STATUS_MAX; code++)
        if (grpc_bits & (1u << code)) {
            const char *n = sc_grpc_status_name(code);
            json_array_append_new(a, n ? json_string(n) : json_integer(code));
        }
    return a;
}

static json_t *jtimeouts(const sc_timeouts *t, bool policy)
{
    json_t *o = json_object();
    json_object_set_new(o, "connect", jdur(t->connect_ms));
    json_object_set_new(o, "request", jdur(t->request_ms));
    if (policy)
        json_object_set_new(o, "per_try", jdur(t->per_try_ms));
    json_object_set_new(o, "idle", jdur(t->idle_ms));
    json_object_set_new(o, "header_read", jdur(t->header_read_ms));
    return o;
}

static json_t *jkv(const sc_kv *v, size_t n)
{
    json_t *o = json_object();
    for (size_t i = 0; i < n; i++)
        json_object_set_new(o, v[i].key, json_string(v[i].value));
    return o;
}

static json_t *jstrv(char *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

json_t *sc_policy_to_json(const sc_policy *p)
{
    json_t *o = json_object();
    json_object_set_new(o, "file", jstr(p->file));
    json_object_set_new(o, "upstream", jstr(p->name));
    json_object_set_new(o, "protocol", json_string(sc_proto_name(p->protocol)));
    json_object_set_new(o, "listen", jaddr(&p->listen));

    json_t *disc = json_object();
    if (p->discovery == SC_DISCOVERY_STATIC) {
        json_t *a = json_array();
        for (size_t i = 0; i < p->n_instances; i++)
            json_array_append_new(a, json_pack("{s:s, s:I}", "address", p->instances[i].addr.text,
                                               "weight", (json_int_t)p->instances[i].weight));
        json_object_set_new(disc, "static", a);
    } else {
        json_t *cs = json_object();
        json_object_set_new(cs, "service", jstr(p->consul.service));
        json_object_set_new(cs, "tag", jstr(p->consul.tag));
        json_object_set_new(cs, "dc", jstr(p->consul.dc));
        json_object_set_new(disc, "consul", cs);
    }
    json_object_set_new(o, "discovery", disc);

    json_t *tls = json_object();
    json_object_set_new(tls, "mode", json_string(sc_config_tls_mode_name(p->tls.mode)));
    json_object_set_new(tls, "server_identity", jstr(p->tls.server_identity));
    json_object_set_new(tls, "sni", jstr(p->tls.sni));
    json_object_set_new(o, "tls", tls);
    json_object_set_new(o, "timeouts", jtimeouts(&p->timeouts, true));

    const sc_retry_policy *r = &p->retries;
    json_t *rj = json_object();
    json_object_set_new(rj, "enabled", json_boolean(r->enabled));
    json_object_set_new(rj, "max_attempts", json_integer(r->max_attempts));
    json_object_set_new(rj, "on", jconds(r->on, r->on_grpc));
    json_object_set_new(rj, "backoff", json_pack("{s:o, s:o}", "base", jdur(r->backoff_base_ms),
                                                 "max", jdur(r->backoff_max_ms)));
    json_object_set_new(rj, "budget", json_pack("{s:f, s:I}", "ratio", r->budget_ratio,
                                                "min_per_second",
                                                (json_int_t)r->budget_min_per_second));
    json_object_set_new(rj, "buffer_limit", json_integer((json_int_t)r->buffer_limit));
    json_object_set_new(o, "retries", rj);

    const sc_bulkhead_policy *b = &p->bulkhead;
    json_object_set_new(o, "bulkhead",
                        json_pack("{s:b, s:I, s:I, s:o, s:I}", "enabled", b->enabled,
                                  "max_concurrent", (json_int_t)b->max_concurrent, "max_pending",
                                  (json_int_t)b->max_pending, "queue_timeout",
                                  jdur(b->queue_timeout_ms), "max_connections",
                                  (json_int_t)b->max_connections));

    const sc_breaker_policy *cb = &p->breaker;
    json_t *bj = json_object();
    json_object_set_new(bj, "enabled", json_boolean(cb->enabled));
    json_object_set_new(bj, "failure_rate", json_real(cb->failure_rate));
    json_object_set_new(bj, "slow_call", json_pack("{s:o, s:f}", "duration",
                                                   jdur(cb->slow_call_ms), "rate",
                                                   cb->slow_call_rate));
    json_object_set_new(bj, "window", jdur(cb->window_ms));
    json_object_set_new(bj, "min_calls", json_integer(cb->min_calls));
    json_object_set_new(bj, "open_for", jdur(cb->open_for_ms));
    json_object_set_new(bj, "half_open_calls", json_integer(cb->half_open_calls));
    json_object_set_new(bj, "consecutive_failures", json_integer(cb->consecutive_failures));
    json_object_set_new(bj, "failure_on", jconds(cb->failure_on, cb->failure_on_grpc));
    if (cb->has_fallback) {
        const char *gn = sc_grpc_status_name((int)cb->fallback_grpc_status);
        json_object_set_new(
            bj, "fallback",
            json_pack("{s:{s:I, s:o, s:o}, s:{s:o, s:o, s:o}}", "http", "status",
                      (json_int_t)cb->fallback_http_status, "body",
                      jstr(cb->fallback_http_body), "headers",
                      jkv(cb->fallback_http_headers, cb->n_fallback_http_headers), "grpc",
                      "status", gn ? json_string(gn) : json_integer(cb->fallback_grpc_status),
                      "message", jstr(cb->fallback_grpc_message), "metadata",
                      jkv(cb->fallback_grpc_metadata, cb->n_fallback_grpc_metadata)));
    } else {
        json_object_set_new(bj, "fallback", json_null());
    }
    json_object_set_new(o, "circuit_breaker", bj);

    const sc_outlier_policy *ol = &p->outlier;
    json_object_set_new(o, "outlier",
                        json_pack("{s:b, s:I, s:o, s:o, s:f}", "enabled", ol->enabled,
                                  "consecutive_failures", (json_int_t)ol->consecutive_failures,
                                  "eject_for", jdur(ol->eject_for_ms), "max_eject",
                                  jdur(ol->max_eject_ms), "max_ejected",
                                  ol->max_ejected_percent));
    json_object_set_new(o, "load_balancer", json_string(sc_lb_kind_name(p->lb)));
    json_object_set_new(o, "rate_limits", sc_config_rate_limits_json(p->rate_limits, p->n_rate_limits));
    return o;
}

json_t *sc_config_to_json(const sc_config *cfg)
{
    json_t *o = json_object();
    json_object_set_new(o, "file", jstr(cfg->file));

    json_t *svc = json_object();
    json_object_set_new(svc, "name", jstr(cfg->service.name));
    json_object_set_new(svc, "id", jstr(cfg->service.id));
    json_object_set_new(svc, "address", jstr(cfg->service.address));
    json_object_set_new(svc, "tags", jstrv(cfg->service.tags, cfg->service.n_tags));
    json_object_set_new(svc, "meta", jkv(cfg->service.meta, cfg->service.n_meta));
    json_object_set_new(o, "service", svc);

    if (cfg->inbound.enabled) {
        json_t *in = json_object();
        json_object_set_new(in, "listen", jaddr(&cfg->inbound.listen));
        json_object_set_new(in, "app", jaddr(&cfg->inbound.app));
        json_object_set_new(in, "app_protocol", json_string(sc_proto_name(cfg->inbound.app_protocol)));
        json_object_set_new(in, "timeouts", jtimeouts(&cfg->inbound.timeouts, false));
        json_object_set_new(in, "max_concurrent", json_integer(cfg->inbound.max_concurrent));
        json_object_set_new(in, "rate_limits", sc_config_rate_limits_json(cfg->inbound.rate_limits,
                                                                          cfg->inbound.n_rate_limits));
        json_object_set_new(in, "jwt", sc_jwt_config_to_json(cfg->inbound.jwt));
        json_object_set_new(o, "inbound", in);
    } else {
        json_object_set_new(o, "inbound", json_null());
    }
    json_object_set_new(o, "admin",
                        json_pack("{s:o, s:b, s:o, s:o, s:o}", "listen", jaddr(&cfg->admin.listen),
                                  "allow_remote", cfg->admin.allow_remote, "allowed_hosts",
                                  jstrv(cfg->admin.allowed_hosts, cfg->admin.n_allowed_hosts),
                                  "token", cfg->admin.token ? json_string("<set>") : json_null(),
                                  "token_file", jstr(cfg->admin.token_file)));
    json_object_set_new(o, "workers", json_integer(cfg->workers));
    json_object_set_new(o, "drain_timeout", jdur(cfg->drain_timeout_ms));
    json_object_set_new(o, "policies", jstr(cfg->policies_dir));
    json_object_set_new(o, "limits",
                        json_pack("{s:I, s:I, s:I, s:I, s:I, s:s}", "max_header_bytes",
                                  (json_int_t)cfg->limits.max_header_bytes, "max_request_line",
                                  (json_int_t)cfg->limits.max_request_line, "stream_buffer",
                                  (json_int_t)cfg->limits.stream_buffer, "max_connections",
                                  (json_int_t)cfg->limits.max_connections,
                                  "h2_max_concurrent_streams",
                                  (json_int_t)cfg->limits.h2_max_concurrent_streams,
                                  "header_underscores",
                                  cfg->limits.header_underscores == 2   ? "reject"
                                  : cfg->limits.header_underscores == 1 ? "drop"
                                                                        : "allow"));
    json_object_set_new(o, "log",
                        json_pack("{s:s}", "level", sc_log_level_name(cfg->log_level)));

    json_t *cs = json_object();
    json_object_set_new(cs, "enabled", json_boolean(cfg->consul.enabled));
    json_object_set_new(cs, "address", jstr(cfg->consul.address));
    json_object_set_new(cs, "token", cfg->consul.token ? json_string("<set>") : json_null());
    json_object_set_new(cs, "token_file", jstr(cfg->consul.token_file));
    json_object_set_new(cs, "ssl", json_boolean(cfg->consul.ssl));
    json_object_set_new(cs, "ssl_verify", json_boolean(cfg->consul.ssl_verify));
    json_object_set_new(cs, "ca_file", jstr(cfg->consul.ca_file));
    json_object_set_new(cs, "cert_file", jstr(cfg->consul.cert_file));
    json_object_set_new(cs, "key_file", jstr(cfg->consul.key_file));
    json_object_set_new(cs, "ca_path", jstr(cfg->consul.ca_path));
    json_object_set_new(cs, "tls_server_name", jstr(cfg->consul.tls_server_name));
    json_object_set_new(cs, "namespace", jstr(cfg->consul.ns));
    json_object_set_new(cs, "partition", jstr(cfg->consul.partition));
    json_object_set_new(cs, "datacenter", jstr(cfg->consul.datacenter));
    json_object_set_new(cs, "register_service", json_boolean(cfg->consul.register_service));
    json_object_set_new(cs, "check", json_string(sc_config_check_name(cfg->consul.check)));
    json_object_set_new(cs, "check_http", jstr(cfg->consul.check_http));
    json_object_set_new(cs, "check_interval", jdur(cfg->consul.check_interval_ms));
    json_object_set_new(cs, "check_ttl", jdur(cfg->consul.check_ttl_ms));
    json_object_set_new(cs, "deregister_after", jdur(cfg->consul.deregister_after_ms));
    json_object_set_new(cs, "wait", jdur(cfg->consul.wait_ms));
    json_object_set_new(cs, "cache_file", jstr(cfg->consul.cache_file));
    json_object_set_new(o, "consul", cs);

    json_t *hs = json_object();
    json_object_set_new(hs, "app_probe", json_string(sc_config_probe_name(cfg->health.app_probe)));
    json_object_set_new(hs, "app_path", jstr(cfg->health.app_path));
    json_object_set_new(hs, "interval", jdur(cfg->health.interval_ms));
    json_object_set_new(hs, "timeout", jdur(cfg->health.timeout_ms));
    json_object_set_new(hs, "grpc_listen",
                        cfg->health.grpc_enabled ? json_string(cfg->health.grpc_listen.text)
                                                 : json_null());
    json_object_set_new(o, "health", hs);

    json_t *tls = json_object();
    json_object_set_new(tls, "source", json_string(cfg->tls.source == SC_TLS_SOURCE_CONSUL ? "consul" : "files"));
    json_object_set_new(tls, "cert", jstr(cfg->tls.cert_file));
    json_object_set_new(tls, "key", jstr(cfg->tls.key_file));
    json_object_set_new(tls, "ca", jstr(cfg->tls.ca_file));
    json_object_set_new(tls, "allow", jstrv(cfg->tls.allow, cfg->tls.n_allow));
    json_object_set_new(tls, "identity_header", jstr(cfg->tls.identity_header));
    json_object_set_new(tls, "authorize", json_string(cfg->tls.authorize == SC_AUTHORIZE_CONSUL ? "consul" : "none"));
    json_object_set_new(tls, "authorize_cache", jdur(cfg->tls.authorize_cache_ms));
    json_object_set_new(o, "tls", tls);
    json_object_set_new(o, "redis", sc_config_redis_json(cfg));
    json_object_set_new(o, "tracing", sc_config_tracing_to_json(&cfg->tracing));
    json_object_set_new(o, "access_log", sc_config_access_log_json(&cfg->access_log));
    json_object_set_new(o, "reload", json_pack("{s:b, s:o}", "watch", cfg->reload.watch, "debounce",
                                               jdur(cfg->reload.debounce_ms)));

    json_t *ups = json_array();
    for (size_t i = 0; i < cfg->n_policies; i++)
        json_array_append_new(ups, sc_policy_to_json(&cfg->policies[i]));
    json_object_set_new(o, "upstreams", ups);
    return o;
}

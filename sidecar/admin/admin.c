#include "admin/admin.h"
#include "admin/admin_http.h"
#include "admin/admin_page.h"

#include "core/log.h"
#include "core/prom.h"
#include "authz/authz.h"
#include "jwt/jwt_runtime.h"
#include "ratelimit/ratelimit.h"
#include "discovery/app_health.h"
#include "discovery/consul.h"
#include "http/grpc.h"
#include "http/h1.h"
#include "obs/access_log.h"
#include "obs/failures.h"
#include "reload.h"
#include "tls/tls.h"
#include "tls/tls_runtime.h"
#include "trace/tracer.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQ_CAP 8192

struct sc_admin {
    sidecar *sc;
    ev_io listener;
    uint16_t port;                  /* of admin.listen */
    const struct sockaddr *own_ip;  /* admin.listen when a specific non-loopback address, else NULL */
    char page_headers[640];         /* extra header lines of GET / (its Content-Security-Policy) */
};

typedef struct admin_conn {
    ev_io io;
    ev_timer timer;
    sc_admin *admin;
    char req[REQ_CAP];
    size_t req_len;
    char *resp;
    size_t resp_len, resp_off;
} admin_conn;

static void conn_free(struct ev_loop *loop, admin_conn *ac)
{
    ev_io_stop(loop, &ac->io);
    ev_timer_stop(loop, &ac->timer);
    close(ac->io.fd);
    free(ac->resp);
    free(ac);
}

/* Builds the whole answer; `extra` is more header lines ("name: value\r\n"), or "". */
static void respond_ex(admin_conn *ac, int status, const char *ctype, const char *extra, const char *body)
{
    size_t blen = strlen(body);
    char head[1024];
    int hl = snprintf(head, sizeof(head),
                      "HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %zu\r\n%sconnection: close\r\n\r\n",
                      status, sc_h1_reason(status), ctype, blen, extra);
    if (hl < 0 || (size_t)hl >= sizeof(head))
        return;
    ac->resp = malloc((size_t)hl + blen);
    if (!ac->resp)
        return;
    memcpy(ac->resp, head, (size_t)hl);
    memcpy(ac->resp + hl, body, blen);
    ac->resp_len = (size_t)hl + blen;
}

static void respond(admin_conn *ac, int status, const char *ctype, const char *body)
{
    respond_ex(ac, status, ctype, "", body);
}

/* ---- /stats ---- */

typedef struct strbuf {
    char *p;
    size_t len;
    FILE *f;
} strbuf;

#define RS_OFF(field) offsetof(sc_route_stats, field)
#define WS_OFF(field) offsetof(sc_worker_stats, field)

/* Seconds until each certificate of ours in use expires (files or Connect),
 * for alerts: labelled by what it is used for, as /certs names them. */
static void render_cert_expiry(const sidecar *sc, FILE *f)
{
    const struct {
        const char *use;
        sc_tls_watch *w;
    } ws[] = {{"inbound", sc->tls_server}, {"outbound_mutual", sc->tls_client}};
    int64_t now = time(NULL);
    bool head = false;
    for (size_t i = 0; i < SC_ARRAY_LEN(ws); i++) {
        sc_tls_ctx *ctx = ws[i].w ? sc_tls_watch_get(ws[i].w) : NULL;
        const sc_tls_cert_info *ci = ctx ? sc_tls_ctx_cert(ctx) : NULL;
        if (ci) {
            if (!head)
                sc_prom_head(f, "sidecar_tls_certificate_expiry_seconds", "gauge",
                             "Seconds until our certificate in use expires (negative once expired), by use.");
            head = true;
            fprintf(f, "sidecar_tls_certificate_expiry_seconds{use=\"%s\"} %lld\n", ws[i].use,
                    (long long)(ci->not_after - now));
        }
        if (ctx)
            sc_tls_ctx_unref(ctx);
    }
}

char *sc_admin_render_stats(const sidecar *sc)
{
    strbuf b = {0};
    b.f = open_memstream(&b.p, &b.len);
    if (!b.f)
        return NULL;
    FILE *f = b.f;
    static const struct {
        const char *name, *type, *help;
        size_t off;
    } per_route[] = {
        {"sidecar_upstream_requests_total", "counter", "Requests routed to the upstream.", RS_OFF(requests)},
        {"sidecar_upstream_requests_active", "gauge", "Requests in flight.", RS_OFF(active_requests)},
        {"sidecar_upstream_local_replies_total", "counter", "Errors answered by the sidecar itself.", RS_OFF(local_replies)},
        {"sidecar_upstream_connect_failures_total", "counter", "Failed connection attempts.", RS_OFF(connect_failures)},
        {"sidecar_upstream_connect_timeouts_total", "counter", "Connection attempts that timed out.", RS_OFF(connect_timeouts)},
        {"sidecar_upstream_timeouts_total", "counter", "Requests that hit their deadline.", RS_OFF(timeouts)},
        {"sidecar_upstream_resets_total", "counter", "Requests cut by an upstream reset or protocol error.", RS_OFF(resets)},
        {"sidecar_upstream_no_instance_total", "counter", "Requests with no instance to go to.", RS_OFF(no_instance)},
        {"sidecar_upstream_connections_active", "gauge", "Open connections to the upstream's instances.", RS_OFF(upstream_conns)},
        {"sidecar_upstream_connections_total", "counter", "Connections opened to the upstream's instances.", RS_OFF(upstream_conns_total)},
        {"sidecar_upstream_request_bytes_total", "counter", "Request body bytes sent by callers.", RS_OFF(bytes_in)},
        {"sidecar_upstream_response_bytes_total", "counter", "Response body bytes returned to callers.", RS_OFF(bytes_out)},
        {"sidecar_upstream_retries_total", "counter", "Retries scheduled.", RS_OFF(retries)},
        {"sidecar_upstream_retry_budget_exhausted_total", "counter", "Retries refused by the retry budget.", RS_OFF(retry_budget_exhausted)},
        {"sidecar_upstream_breaker_rejections_total", "counter", "Calls refused by an open circuit breaker.", RS_OFF(breaker_rejections)},
        {"sidecar_upstream_bulkhead_rejections_total", "counter", "Calls refused by the bulkhead (full or queue timeout).", RS_OFF(bulkhead_rejections)},
    };
    for (size_t m = 0; m < SC_ARRAY_LEN(per_route); m++) {
        sc_prom_head(f, per_route[m].name, per_route[m].type, per_route[m].help);
        SC_FOR_ACTIVE_ROUTES(sc, r)
            fprintf(f, "%s{upstream=\"%s\"} %llu\n", per_route[m].name, sc->routes[r].name,
                    (unsigned long long)sc_workers_sum_route(sc, r, per_route[m].off));
    }
    sc_prom_head(f, "sidecar_upstream_responses_total", "counter", "Responses by HTTP status class (0xx: no response).");
    SC_FOR_ACTIVE_ROUTES(sc, r)
        for (int k = 0; k < 6; k++)
            fprintf(f, "sidecar_upstream_responses_total{upstream=\"%s\",class=\"%dxx\"} %llu\n", sc->routes[r].name, k,
                    (unsigned long long)sc_workers_sum_route(sc, r, RS_OFF(responses) + (size_t)k * sizeof(sc_counter)));
    sc_prom_head(f, "sidecar_upstream_grpc_responses_total", "counter", "gRPC calls by grpc-status.");
    SC_FOR_ACTIVE_ROUTES(sc, r)
        for (int k = 0; k <= SC_GRPC_STATUS_MAX; k++) {
            uint64_t v = sc_workers_sum_route(sc, r, RS_OFF(grpc) + (size_t)k * sizeof(sc_counter));
            if (v || k == 0)
                fprintf(f, "sidecar_upstream_grpc_responses_total{upstream=\"%s\",grpc_status=\"%s\"} %llu\n",
                        sc->routes[r].name, sc_grpc_status_name(k), (unsigned long long)v);
        }
    sc_prom_head(f, "sidecar_upstream_request_duration_seconds", "histogram", "Time from request head to the end of the exchange.");
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        uint64_t cum = 0;
        for (int k = 0; k <= SC_LAT_BUCKETS; k++) {
            cum += sc_workers_sum_route(sc, r, RS_OFF(lat_buckets) + (size_t)k * sizeof(sc_counter));
            if (k < SC_LAT_BUCKETS)
                fprintf(f, "sidecar_upstream_request_duration_seconds_bucket{upstream=\"%s\",le=\"%g\"} %llu\n",
                        sc->routes[r].name, (double)sc_lat_bounds_us[k] / 1e6, (unsigned long long)cum);
            else
                fprintf(f, "sidecar_upstream_request_duration_seconds_bucket{upstream=\"%s\",le=\"+Inf\"} %llu\n",
                        sc->routes[r].name, (unsigned long long)cum);
        }
        fprintf(f, "sidecar_upstream_request_duration_seconds_sum{upstream=\"%s\"} %.6f\n", sc->routes[r].name,
                (double)sc_workers_sum_route(sc, r, RS_OFF(lat_sum_us)) / 1e6);
        fprintf(f, "sidecar_upstream_request_duration_seconds_count{upstream=\"%s\"} %llu\n", sc->routes[r].name,
                (unsigned long long)cum);
    }
    sc_prom_head(f, "sidecar_downstream_connections_active", "gauge", "Open connections from callers.");
    fprintf(f, "sidecar_downstream_connections_active %llu\n", (unsigned long long)sc_workers_sum(sc, WS_OFF(down_conns)));
    sc_prom_head(f, "sidecar_downstream_connections_total", "counter", "Connections accepted from callers.");
    fprintf(f, "sidecar_downstream_connections_total %llu\n", (unsigned long long)sc_workers_sum(sc, WS_OFF(down_conns_total)));
    sc_prom_head(f, "sidecar_downstream_connections_refused_total", "counter",
                 "Connections from callers closed at accept because limits.max_connections were open on the worker.");
    fprintf(f, "sidecar_downstream_connections_refused_total %llu\n",
            (unsigned long long)sc_workers_sum(sc, WS_OFF(down_conns_refused)));
    sc_prom_head(f, "sidecar_downstream_h2_idle_trimmed", "gauge",
                 "HTTP/2 connections from callers, idle or quiet, whose session memory was handed back to the kernel.");
    fprintf(f, "sidecar_downstream_h2_idle_trimmed %llu\n",
            (unsigned long long)sc_workers_sum(sc, WS_OFF(h2_idle_trimmed)));
    sc_prom_head(f, "sidecar_buffer_blocks", "gauge",
                 "Buffer blocks held by connections and requests (each at most limits.stream_buffer bytes); "
                 "an idle connection or a request waiting for data holds none.");
    fprintf(f, "sidecar_buffer_blocks %llu\n", (unsigned long long)sc_workers_sum(sc, WS_OFF(buf_blocks)));
    sc_prom_head(f, "sidecar_streams_active", "gauge", "Requests in flight on all listeners.");
    fprintf(f, "sidecar_streams_active %llu\n", (unsigned long long)sc_workers_sum(sc, WS_OFF(streams)));
    static const struct {
        const char *name, *help;
        size_t off;
    } tls_m[] = {
        {"sidecar_tls_handshakes_total", "TLS handshakes completed (inbound and outbound).", WS_OFF(tls_handshakes)},
        {"sidecar_tls_resumed_total", "Of those, resumed sessions.", WS_OFF(tls_resumed)},
        {"sidecar_tls_handshake_refused_total", "Handshakes refused: no, untrusted or expired certificate, wrong identity.", WS_OFF(tls_refused)},
        {"sidecar_tls_handshake_failures_total", "Other TLS handshake failures.", WS_OFF(tls_failed)},
        {"sidecar_inbound_authz_denied_total", "Inbound requests refused because the caller is not in tls.allow.", WS_OFF(authz_denied)},
    };
    for (size_t m = 0; m < SC_ARRAY_LEN(tls_m); m++) {
        sc_prom_head(f, tls_m[m].name, "counter", tls_m[m].help);
        fprintf(f, "%s %llu\n", tls_m[m].name, (unsigned long long)sc_workers_sum(sc, tls_m[m].off));
    }
    sc_prom_head(f, "sidecar_downstream_bad_requests_total", "counter", "Requests refused as malformed, by reason.");
    for (int k = 0; k < SC_BAD_REQ_KINDS; k++)
        fprintf(f, "sidecar_downstream_bad_requests_total{reason=\"%s\"} %llu\n", sc_bad_req_names[k],
                (unsigned long long)sc_workers_sum(sc, WS_OFF(bad_requests) + (size_t)k * sizeof(sc_counter)));
    sc_prom_head(f, "sidecar_upstream_instances", "gauge", "Instances known for the upstream.");
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        sc_endpoints *e = sc_endpoints_current(&((sidecar *)sc)->routes[r].endpoints);
        fprintf(f, "sidecar_upstream_instances{upstream=\"%s\"} %zu\n", sc->routes[r].name, e ? e->n : 0);
    }
    sc_prom_head(f, "sidecar_upstream_discovery_stale", "gauge", "1 when the instance list is last-known data.");
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        sc_endpoints *e = sc_endpoints_current(&((sidecar *)sc)->routes[r].endpoints);
        fprintf(f, "sidecar_upstream_discovery_stale{upstream=\"%s\"} %d\n", sc->routes[r].name, e && e->stale);
    }
    sc_consul_render_stats(sc->consul, f);         /* Consul client and health checks */
    sc_authz_render_stats(sc->authz, f);           /* tls.authorize: consul */
    if (sc->ratelimit)                             /* rate_limits, redis */
        sc_rl_runtime_render_prom(sc->ratelimit, f, sc_now_ns());
    if (sc->jwt)                                   /* inbound.jwt */
        sc_jwt_render_stats(sc->jwt, f);
    sc_app_health_render_stats(sc->app_health, f);
    uint64_t now = sc_now_ms();
    sc_prom_head(f, "sidecar_upstream_breaker_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 half-open.");
    SC_FOR_ACTIVE_ROUTES(sc, r)
        fprintf(f, "sidecar_upstream_breaker_state{upstream=\"%s\"} %d\n", sc->routes[r].name,
                (int)sc_breaker_state_now(sc_route_breaker(&sc->routes[r])));
    sc_prom_head(f, "sidecar_upstream_breaker_transitions_total", "counter", "Circuit breaker state changes by destination.");
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        sc_breaker_view v;
        sc_breaker_snapshot(sc_route_breaker(&sc->routes[r]), now, &v);
        fprintf(f, "sidecar_upstream_breaker_transitions_total{upstream=\"%s\",to=\"open\"} %llu\n", sc->routes[r].name, (unsigned long long)v.to_open);
        fprintf(f, "sidecar_upstream_breaker_transitions_total{upstream=\"%s\",to=\"half-open\"} %llu\n", sc->routes[r].name, (unsigned long long)v.to_half_open);
        fprintf(f, "sidecar_upstream_breaker_transitions_total{upstream=\"%s\",to=\"closed\"} %llu\n", sc->routes[r].name, (unsigned long long)v.to_closed);
    }
    sc_prom_head(f, "sidecar_upstream_bulkhead_active", "gauge", "Requests holding a bulkhead slot.");
    sc_prom_head(f, "sidecar_upstream_bulkhead_pending", "gauge", "Requests waiting in the bulkhead queue.");
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        sc_bulkhead_view v;
        sc_bulkhead_snapshot(&sc->routes[r].bulkhead, &v);
        fprintf(f, "sidecar_upstream_bulkhead_active{upstream=\"%s\"} %u\n", sc->routes[r].name, v.active);
        fprintf(f, "sidecar_upstream_bulkhead_pending{upstream=\"%s\"} %u\n", sc->routes[r].name, v.pending);
    }
    sc_prom_head(f, "sidecar_upstream_ejections_total", "counter", "Instances ejected by outlier detection.");
    sc_prom_head(f, "sidecar_upstream_instances_ejected", "gauge", "Instances ejected now.");
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        sc_endpoints *e = sc_endpoints_current(&((sidecar *)sc)->routes[r].endpoints);
        sc_outlier_view v;
        sc_outlier_snapshot(&sc->routes[r].outlier, e ? e->n : 0, &v);
        fprintf(f, "sidecar_upstream_ejections_total{upstream=\"%s\"} %llu\n", sc->routes[r].name, (unsigned long long)v.ejections_total);
        fprintf(f, "sidecar_upstream_instances_ejected{upstream=\"%s\"} %u\n", sc->routes[r].name, v.ejected_now);
    }
    sc_access_log_render_stats(sc->access_log, f);
    sc_reload_render_stats(sc, f);
    sc_failures_render_stats(sc->failures, f);
    render_cert_expiry(sc, f);
    sc_tracer_prom(sc->tracer, f);
    sc_prom_head(f, "sidecar_uptime_seconds", "gauge", "Seconds since start.");
    fprintf(f, "sidecar_uptime_seconds %llu\n", (unsigned long long)((sc_now_ms() - sc->started_ms) / 1000));
    fclose(f);
    return b.p;
}

static json_t *breaker_json(const sc_breaker *b, bool enabled, uint64_t now)
{
    sc_breaker_view v;
    sc_breaker_snapshot(b, now, &v);
    static const char *const forced[] = {"none", "open", "closed"};
    json_t *j = json_object();
    json_object_set_new(j, "enabled", json_boolean(enabled));
    json_object_set_new(j, "state", json_string(sc_breaker_state_name(v.state)));
    json_object_set_new(j, "forced", json_string(v.forced >= 0 && v.forced <= 2 ? forced[v.forced] : "?"));
    json_object_set_new(j, "calls", json_integer((json_int_t)v.calls));
    json_object_set_new(j, "failures", json_integer((json_int_t)v.failures));
    json_object_set_new(j, "slow", json_integer((json_int_t)v.slow));
    json_object_set_new(j, "failure_rate", json_real(v.failure_rate));
    json_object_set_new(j, "slow_rate", json_real(v.slow_rate));
    json_object_set_new(j, "consecutive_failures", json_integer(v.consecutive_failures));
    json_object_set_new(j, "ms_until_half_open", json_integer((json_int_t)v.ms_until_half_open));
    json_object_set_new(j, "transitions", json_pack("{s:I,s:I,s:I,s:I}", "total", (json_int_t)v.transitions, "to_open",
                                                   (json_int_t)v.to_open, "to_half_open", (json_int_t)v.to_half_open,
                                                   "to_closed", (json_int_t)v.to_closed));
    if (v.last.seq)
        json_object_set_new(j, "last_transition",
                            json_pack("{s:s,s:s,s:s,s:I}", "from", sc_breaker_state_name(v.last.from), "to",
                                      sc_breaker_state_name(v.last.to), "reason", v.last.reason, "ms_ago",
                                      (json_int_t)(now - v.last.at_ms)));
    else
        json_object_set_new(j, "last_transition", json_null());
    return j;
}

char *sc_admin_render_clusters(const sidecar *sc)
{
    uint64_t now = sc_now_ms();
    json_t *root = json_object();
    json_t *ups = json_array();
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        const sc_route *rt = &sc->routes[r];
        json_t *u = json_object();
        json_object_set_new(u, "name", json_string(rt->name));
        json_object_set_new(u, "direction", json_string(rt->inbound ? "inbound" : "outbound"));
        json_object_set_new(u, "protocol", json_string(sc_proto_name(rt->protocol)));
        json_object_set_new(u, "listen", json_string(rt->inbound ? sc->cfg->inbound.listen.text : rt->policy->listen.text));
        json_object_set_new(u, "discovery",
                            json_string(rt->policy && rt->policy->discovery == SC_DISCOVERY_CONSUL ? "consul" : "static"));
        sc_endpoints *e = sc_endpoints_current(&((sc_route *)rt)->endpoints);
        json_t *insts = json_array();
        for (size_t i = 0; e && i < e->n; i++) {
            json_t *in = json_object();
            json_object_set_new(in, "address", json_string(e->inst[i].addr.text));
            json_object_set_new(in, "id", json_string(e->inst[i].id));
            json_object_set_new(in, "weight", json_integer(e->inst[i].weight));
            sc_outlier_instance_view ov = {0};
            if (e->inst[i].state)
                sc_outlier_instance_snapshot(&e->inst[i].state->ol, now, &ov);
            json_object_set_new(in, "health", json_string(ov.ejected ? "ejected" : "healthy"));
            json_object_set_new(in, "ejected", json_boolean(ov.ejected));
            json_object_set_new(in, "ejected_ms_left", json_integer((json_int_t)ov.ms_left));
            json_object_set_new(in, "ejections", json_integer((json_int_t)ov.total_ejections));
            json_object_set_new(in, "consecutive_failures", json_integer(ov.consecutive));
            json_object_set_new(in, "active_requests", json_integer(ov.active_requests));
            json_array_append_new(insts, in);
        }
        json_object_set_new(u, "instances", insts);
        json_object_set_new(u, "stale", json_boolean(e && e->stale));
        json_object_set_new(u, "endpoints_version", json_integer(e ? (json_int_t)e->version : 0));
        const sc_policy *p = rt->policy; /* NULL for inbound */
        json_object_set_new(u, "active_requests", json_integer((json_int_t)sc_workers_sum_route(sc, r, RS_OFF(active_requests))));
        json_object_set_new(u, "active_connections", json_integer((json_int_t)sc_workers_sum_route(sc, r, RS_OFF(upstream_conns))));
        json_object_set_new(u, "requests_total", json_integer((json_int_t)sc_workers_sum_route(sc, r, RS_OFF(requests))));
        json_object_set_new(u, "connect_failures_total", json_integer((json_int_t)sc_workers_sum_route(sc, r, RS_OFF(connect_failures))));
        json_object_set_new(u, "timeouts_total", json_integer((json_int_t)sc_workers_sum_route(sc, r, RS_OFF(timeouts))));
        json_object_set_new(u, "retries_total", json_integer((json_int_t)sc_workers_sum_route(sc, r, RS_OFF(retries))));
        json_object_set_new(u, "circuit_breaker", breaker_json(&rt->breaker, p && p->breaker.enabled, now));
        json_object_set_new(u, "outlier_detection", json_boolean(p && p->outlier.enabled));
        sc_bulkhead_view bv;
        sc_bulkhead_snapshot(&rt->bulkhead, &bv);
        json_object_set_new(u, "bulkhead", json_pack("{s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "enabled",
                                                     bv.max_concurrent != 0 && bv.max_concurrent != UINT32_MAX, "active", (json_int_t)bv.active,
                                                     "pending", (json_int_t)bv.pending, "connections", (json_int_t)bv.connections,
                                                     "max_concurrent", (json_int_t)bv.max_concurrent, "max_pending", (json_int_t)bv.max_pending,
                                                     "max_connections", (json_int_t)bv.max_connections, "admitted", (json_int_t)bv.admitted,
                                                     "queued", (json_int_t)bv.queued, "rejected", (json_int_t)bv.rejected,
                                                     "queue_timeouts", (json_int_t)bv.queue_timeouts));
        sc_retry_budget_view rv;
        sc_retry_budget_snapshot(&rt->budget, now, &rv);
        json_object_set_new(u, "retry_budget", json_pack("{s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:f,s:I}", "enabled",
                                                         p && p->retries.enabled && p->retries.max_attempts > 1, "requests", (json_int_t)rv.requests,
                                                         "retries", (json_int_t)rv.retries, "allowance", (json_int_t)rv.allowance,
                                                         "remaining", (json_int_t)rv.remaining, "granted", (json_int_t)rv.granted,
                                                         "refused", (json_int_t)rv.refused, "ratio", rv.ratio,
                                                         "min_per_second", (json_int_t)rv.min_per_second));
        if (sc->ratelimit) { /* rate_limits: each limit with its busiest keys */
            sc_rl_set *rls = rt->inbound ? sc_rl_runtime_inbound(sc->ratelimit)
                             : rt->policy ? sc_rl_runtime_upstream(sc->ratelimit, (size_t)(rt->policy - sc->cfg->policies))
                                          : NULL;
            if (rls && rls->n)
                json_object_set_new(u, "rate_limits", sc_rl_runtime_route_json(rls, sc_now_ns()));
        }
        json_t *cj = sc_consul_route_json(sc->consul, r); /* its Consul watch, when discovered there */
        if (cj)
            json_object_set_new(u, "consul", cj);
        json_array_append_new(ups, u);
    }
    json_object_set_new(root, "upstreams", ups);
    if (sc->consul) /* the Consul client, when configured */
        json_object_set_new(root, "consul", sc_consul_json(sc->consul));
    if (sc->authz) /* tls.authorize: consul */
        json_object_set_new(root, "authorize", sc_authz_json(sc->authz));
    if (sc->jwt) /* inbound.jwt: each issuer's keys and fetches */
        json_object_set_new(root, "jwt", sc_jwt_json(sc->jwt));
    char *out = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return out;
}

/* ---- request handling ---- */

static bool path_is(const sc_h1_head *h, const char *p)
{
    size_t l = strlen(p);
    return h->target.len >= l && memcmp(h->target.p, p, l) == 0 &&
           (h->target.len == l || h->target.p[l] == '?');
}

static bool method_is(const sc_h1_head *h, const char *m)
{
    return h->method.len == strlen(m) && memcmp(h->method.p, m, h->method.len) == 0;
}

static sc_admin_hval hdr(const sc_h1_head *h, const char *name)
{
    const sc_h1_header *x = sc_h1_find(h, name);
    return x ? (sc_admin_hval){x->value.p, x->value.len} : (sc_admin_hval){NULL, 0};
}

/* Refusals are logged at most once a second: a web page can send many. */
static sc_ratelimit refused_rl;

static void refuse(admin_conn *ac, const sc_h1_head *h, int status, const char *extra, const char *why)
{
    SC_WARN_LIMITED(&refused_rl, "admin: refused %.*s %.*s (Host '%.*s'): %s", (int)SC_MIN(h->method.len, 16),
                    h->method.p, (int)SC_MIN(h->target.len, 200), h->target.p, (int)SC_MIN(h->host.len, 100),
                    h->host.p ? h->host.p : "", why);
    char body[600];
    snprintf(body, sizeof(body), "admin: %s\n", why);
    respond_ex(ac, status, "text/plain", extra, body);
}

/*
 * The checks every request passes before it is served (see admin.h): the
 * Host names this endpoint, the token when one is set, and for anything but
 * GET/HEAD the same-origin marker. GET /ready is exempt: orchestrator probes
 * and Consul HTTP checks reach it by the pod or host address and cannot be
 * given a secret without spreading it, and it tells no more than "ready".
 * GET / (the admin page) needs the Host check but not the token: it is the
 * same static text for everyone, and the page asks the person for the token
 * and sends it with the requests that fetch the figures.
 * Returns false after building the refusal.
 */
static bool guard(admin_conn *ac, const sc_h1_head *h)
{
    const sc_admin *a = ac->admin;
    const sc_config *cfg = a->sc->cfg;
    if (method_is(h, "GET") && path_is(h, "/ready"))
        return true;
    if (!sc_admin_host_allowed(h->host.p, h->host.len, a->port, a->own_ip, cfg->admin.allowed_hosts,
                               cfg->admin.n_allowed_hosts)) {
        char why[300];
        snprintf(why, sizeof(why),
                 "the Host header does not name this admin endpoint (a DNS rebinding attempt?); use "
                 "localhost:%u or 127.0.0.1:%u, or list the name in admin.allowed_hosts", a->port, a->port);
        refuse(ac, h, 403, "", why);
        return false;
    }
    bool page = method_is(h, "GET") && path_is(h, "/");
    if (cfg->admin.token && !page && !sc_admin_token_ok(hdr(h, "authorization"), cfg->admin.token)) {
        refuse(ac, h, 401, "www-authenticate: Bearer realm=\"sidecar-admin\"\r\n",
               "this admin endpoint needs 'Authorization: Bearer <the token in admin.token_file>'");
        return false;
    }
    if (!method_is(h, "GET") && !method_is(h, "HEAD")) {
        const char *why = sc_admin_csrf_problem(hdr(h, "host"), hdr(h, "origin"), hdr(h, "sec-fetch-site"),
                                                hdr(h, "x-sidecar-admin"), hdr(h, "content-type"));
        if (why) {
            refuse(ac, h, 403, "", why);
            return false;
        }
    }
    return true;
}

/* Parses the query into q and refuses (400) a malformed one or a parameter
 * the endpoint does not take. */
static bool query(admin_conn *ac, const sc_h1_head *h, sc_admin_query *q, const char *const *allowed, size_t n,
                  const char *usage)
{
    const char *why = NULL;
    char body[400];
    if (sc_admin_query_parse(h->target.p, h->target.len, q, &why) < 0) {
        snprintf(body, sizeof(body), "bad query: %s; %s\n", why, usage);
    } else {
        const char *u = sc_admin_query_unknown(q, allowed, n);
        if (!u)
            return true;
        snprintf(body, sizeof(body), "unknown query parameter '%.64s'; %s\n", u, usage);
    }
    respond(ac, 400, "text/plain", body);
    return false;
}

static void handle_breaker(admin_conn *ac, const sc_h1_head *h)
{
    static const char usage[] = "use POST /breaker?upstream=NAME&action=open|close|release";
    static const char *const params[] = {"upstream", "action"};
    sidecar *sc = ac->admin->sc;
    sc_admin_query q;
    if (!method_is(h, "POST")) {
        respond(ac, 405, "text/plain", "use POST /breaker?upstream=NAME&action=open|close|release\n");
        return;
    }
    if (!query(ac, h, &q, params, SC_ARRAY_LEN(params), usage))
        return;
    const char *name = sc_admin_query_get(&q, "upstream"), *action = sc_admin_query_get(&q, "action");
    if (!name || !action) {
        respond(ac, 400, "text/plain", "need upstream=NAME and action=open|close|release\n");
        return;
    }
    int mode = !strcmp(action, "open") ? SC_BREAKER_FORCE_OPEN
               : !strcmp(action, "close") ? SC_BREAKER_FORCE_CLOSED
               : !strcmp(action, "release") ? SC_BREAKER_RELEASE : -1;
    if (mode < 0) {
        respond(ac, 400, "text/plain", "action must be open, close or release\n");
        return;
    }
    SC_FOR_ACTIVE_ROUTES(sc, r) {
        if (strcmp(sc->routes[r].name, name) != 0)
            continue;
        sc_breaker_transition tr = {0};
        sc_breaker_force_ex(sc_route_breaker(&sc->routes[r]), mode, sc_now_ms(), &tr);
        SC_WARN("admin: circuit breaker of upstream %s: %s by operator%s%s -> %s", name, action,
                tr.seq ? "; " : "", tr.seq ? sc_breaker_state_name(tr.from) : "",
                sc_breaker_state_name(sc_breaker_state_now(sc_route_breaker(&sc->routes[r]))));
        char body[128];
        snprintf(body, sizeof(body), "%s\n", sc_breaker_state_name(sc_breaker_state_now(sc_route_breaker(&sc->routes[r]))));
        respond(ac, 200, "text/plain", body);
        return;
    }
    respond(ac, 404, "text/plain", "no such upstream\n");
}

static void handle_log(admin_conn *ac, const sc_h1_head *h)
{
    static const char usage[] = "use POST /log?level=debug|info|warn|error";
    static const char *const params[] = {"level"};
    if (!method_is(h, "POST")) {
        char b[32];
        snprintf(b, sizeof(b), "%s\n", sc_log_level_name(sc_log_get_level()));
        respond(ac, 200, "text/plain", b);
        return;
    }
    sc_admin_query q;
    if (!query(ac, h, &q, params, SC_ARRAY_LEN(params), usage))
        return;
    const char *lvl = sc_admin_query_get(&q, "level");
    sc_log_level l;
    if (lvl && sc_log_level_parse(lvl, &l) == 0) {
        sc_log_set_level(l);
        SC_INFO("admin: log level set to %s", sc_log_level_name(l));
        respond(ac, 200, "text/plain", "ok\n");
    } else {
        respond(ac, 400, "text/plain", "level must be one of debug, info, warn, error\n");
    }
}

/* GET /failures: the last failed requests of every worker, newest first. */
static void handle_failures(admin_conn *ac, const sc_h1_head *h)
{
    static const char usage[] = "use GET /failures?limit=1..1000&upstream=NAME";
    static const char *const params[] = {"limit", "upstream"};
    sidecar *sc = ac->admin->sc;
    sc_admin_query q;
    if (!method_is(h, "GET")) {
        respond(ac, 405, "text/plain", "use GET /failures?limit=1..1000&upstream=NAME\n");
        return;
    }
    if (!query(ac, h, &q, params, SC_ARRAY_LEN(params), usage))
        return;
    const char *ls = sc_admin_query_get(&q, "limit"), *up = sc_admin_query_get(&q, "upstream");
    unsigned long limit = 100;
    if (ls) {
        char *end;
        limit = strtoul(ls, &end, 10);
        if (!*ls || *end || *ls < '0' || *ls > '9' || limit < 1 || limit > SC_FAILURES_LIMIT_MAX) {
            respond(ac, 400, "text/plain", "limit must be a number from 1 to 1000\n");
            return;
        }
    }
    size_t r = 0;
    while (up && r < sc->n_routes && (!sc_route_active(&sc->routes[r]) || strcmp(sc->routes[r].name, up) != 0))
        r++;
    if (up && r == sc->n_routes) {
        respond(ac, 404, "text/plain", "no such upstream\n");
        return;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char *body = sc_failures_render_json(sc->failures, up, limit,
                                         (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
    respond(ac, body ? 200 : 500, "application/json", body ? body : "{}");
    free(body);
}

/* POST /reload: reload the configuration now (as SIGHUP does) and answer
 * with the outcome: 200 applied or unchanged, 422 when it was refused. */
static void handle_reload(admin_conn *ac, const sc_h1_head *h)
{
    sidecar *sc = ac->admin->sc;
    if (!method_is(h, "POST")) {
        respond(ac, 405, "text/plain", "use POST /reload\n");
        return;
    }
    SC_INFO("admin: reload requested");
    sc_reload_outcome o = sc_reload_run(sc, "admin");
    json_t *j = sc_reload_json(sc);
    char *body = j ? json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(j);
    respond(ac, !body ? 500 : o == SC_RELOAD_FAILED ? 422 : 200, "application/json", body ? body : "{}");
    free(body);
}

static void handle(admin_conn *ac, const sc_h1_head *h)
{
    sidecar *sc = ac->admin->sc;
    char *body = NULL;
    if (!guard(ac, h))
        return;
    if (path_is(h, "/ready")) {
        char why[400]; /* starting, draining, or the app is down (health checks) */
        if (sc_health_ready(sc, why, sizeof(why) - 1)) {
            respond(ac, 200, "text/plain", "ready\n");
        } else {
            strcat(why, "\n");
            respond(ac, 503, "text/plain", why);
        }
    } else if (path_is(h, "/stats") || path_is(h, "/metrics")) {
        body = sc_admin_render_stats(sc);
        respond(ac, body ? 200 : 500, "text/plain; version=0.0.4", body ? body : "out of memory\n");
    } else if (path_is(h, "/clusters")) {
        body = sc_admin_render_clusters(sc);
        respond(ac, body ? 200 : 500, "application/json", body ? body : "{}");
    } else if (path_is(h, "/config")) {
        json_t *j = sc_reload_config_json(sc); /* the effective configuration and the last reload */
        body = j ? json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(15)) : NULL;
        json_decref(j);
        respond(ac, body ? 200 : 500, "application/json", body ? body : "{}");
    } else if (path_is(h, "/log")) {
        handle_log(ac, h);
    } else if (path_is(h, "/drain")) {
        if (!method_is(h, "POST")) {
            respond(ac, 405, "text/plain", "use POST /drain\n");
        } else {
            SC_INFO("admin: drain requested");
            sc_sidecar_drain(sc);
            respond(ac, 200, "text/plain", "draining\n");
        }
    } else if (path_is(h, "/reload")) {
        handle_reload(ac, h);
    } else if (path_is(h, "/certs")) {
        body = sc_tls_runtime_render(sc);
        respond(ac, body ? 200 : 500, "application/json", body ? body : "{}");
    } else if (path_is(h, "/breaker")) {
        handle_breaker(ac, h);
    } else if (path_is(h, "/failures")) {
        handle_failures(ac, h);
    } else if (path_is(h, "/")) {
        respond_ex(ac, 200, "text/html; charset=utf-8", ac->admin->page_headers, sc_admin_page_html);
    } else if (path_is(h, "/help")) {
        respond(ac, 200, "text/plain",
                "sidecar admin\n  GET /          the admin page (HTML, for a browser)\n  GET /ready\n  GET /stats\n"
                "  GET /clusters\n  GET /config\n  GET /certs\n  GET /failures?limit=N&upstream=NAME\n  GET /log, POST /log?level=LEVEL\n"
                "  POST /drain\n  POST /reload\n  POST /breaker?upstream=NAME&action=open|close|release\n"
                "POST needs the header 'X-Sidecar-Admin: 1'\n");
    } else {
        respond(ac, 404, "text/plain", "not found; GET /help lists the endpoints\n");
    }
    free(body);
}

static void conn_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    admin_conn *ac = SC_CONTAINER_OF(io, admin_conn, io);
    if (revents & EV_READ && !ac->resp) {
        ssize_t n = recv(io->fd, ac->req + ac->req_len, REQ_CAP - ac->req_len, 0);
        if (n <= 0) {
            if (n < 0 && errno == EAGAIN)
                return;
            conn_free(loop, ac);
            return;
        }
        ac->req_len += (size_t)n;
        sc_h1_head h;
        const char *why = NULL;
        int rv = sc_h1_parse_head(ac->req, ac->req_len, true, false, NULL, &h, &why);
        if (rv == 0 && ac->req_len < REQ_CAP)
            return;
        if (rv <= 0)
            respond(ac, 400, "text/plain", "bad request\n");
        else
            handle(ac, &h);
        if (!ac->resp) {
            conn_free(loop, ac);
            return;
        }
        ev_io_stop(loop, io);
        ev_io_set(io, io->fd, EV_WRITE);
        ev_io_start(loop, io);
        return;
    }
    if (revents & EV_WRITE && ac->resp) {
        ssize_t n = send(io->fd, ac->resp + ac->resp_off, ac->resp_len - ac->resp_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EAGAIN)
            return;
        if (n > 0)
            ac->resp_off += (size_t)n;
        if (n <= 0 || ac->resp_off == ac->resp_len)
            conn_free(loop, ac);
    }
}

static void conn_timeout_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    conn_free(loop, SC_CONTAINER_OF(t, admin_conn, timer));
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
    (void)revents;
    sc_admin *a = SC_CONTAINER_OF(io, sc_admin, listener);
    for (int i = 0; i < 16; i++) {
        int fd = accept4(io->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        admin_conn *ac = calloc(1, sizeof(*ac));
        if (!ac) {
            close(fd);
            continue;
        }
        ac->admin = a;
        ev_io_init(&ac->io, conn_cb, fd, EV_READ);
        ev_io_start(loop, &ac->io);
        ev_timer_init(&ac->timer, conn_timeout_cb, 10.0, 0);
        ev_timer_start(loop, &ac->timer);
    }
}

int sc_admin_start(sidecar *sc, sc_admin **out, char *err, size_t errlen)
{
    sc_admin *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->sc = sc;
    int fd;
    int rv = sc_listen_probe(&sc->cfg->admin.listen, err, errlen);
    if (rv == 0)
        rv = sc_listen_socket(&sc->cfg->admin.listen, &fd, err, errlen);
    if (rv < 0) {
        free(a);
        return rv;
    }
    char csp[400];
    rv = sc_admin_page_csp(sc_admin_page_html, csp, sizeof(csp));
    if (rv < 0) { /* the page as built has no <script> or <style>: a build defect */
        snprintf(err, errlen, "admin: the built-in admin page has no inline <script> and <style> to pin");
        close(fd);
        free(a);
        return rv;
    }
    snprintf(a->page_headers, sizeof(a->page_headers),
             "content-security-policy: %s\r\nx-content-type-options: nosniff\r\ncache-control: no-store\r\n"
             "referrer-policy: no-referrer\r\n",
             csp);
    ev_io_init(&a->listener, accept_cb, fd, EV_READ);
    ev_io_start(sc->loop, &a->listener);
    const sc_addr *la = &sc->cfg->admin.listen;
    a->port = sc_addr_port(la);
    if (!sc_addr_is_loopback(la)) {
        if (!sc_addr_is_wildcard(la))
            a->own_ip = (const struct sockaddr *)&la->ss;
        SC_WARN("admin: listening on %s, which is not a loopback address (admin.allow_remote: true): "
                "whoever reaches it can trip circuit breakers and drain this sidecar%s",
                la->text,
                sc->cfg->admin.token ? "; every request but GET /ready needs the bearer token of admin.token_file"
                                     : ", and admin.token_file is not set: no token is asked for");
    }
    *out = a;
    return 0;
}

void sc_admin_stop(sc_admin *a)
{
    if (!a)
        return;
    ev_io_stop(a->sc->loop, &a->listener);
    close(a->listener.fd);
    free(a);
}

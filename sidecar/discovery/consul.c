/*
 * consul.c: the Consul agent client (see consul.h): start and stop, which
 * put together the parts in consul_http.c (requests to the agent),
 * consul_register.c (registration), consul_watch.c (watches, cache file)
 * and consul_connect.c (Connect); the retry after a token change; the admin
 * JSON and metrics. The pure parts (parsing, index rules, pacing, bodies)
 * live in consul_json.c.
 */
#include "discovery/consul_internal.h"

#include "core/log.h"
#include "core/prom.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

void sc_consul_iso_time(int64_t unix_s, char *buf, size_t cap)
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Failing loops wait for their backoff; after a token change they go at once. */
void sc_consul_retry_now(sc_consul *c)
{
    sc_consul_reg_retry_now(c);
    sc_consul_watch_retry_now(c);
    sc_consul_connect_retry_now(c);
}

int sc_consul_start(sidecar *sc, sc_consul **out)
{
    *out = NULL;
    const sc_config *cfg = sc->cfg;
    if (!cfg->consul.enabled)
        return -ENOENT;
    if (sc_consul_http_global_init() < 0)
        return -EIO;
    sc_consul *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    c->sc = sc;
    c->cfg = cfg;
    c->loop = sc->loop;
    int rc = sc_consul_http_init(c);
    if (rc < 0) {
        free(c);
        return rc;
    }
    sc_consul_connect_init(c);
    rc = sc_consul_watch_init(c);
    if (rc == 0)
        rc = sc_consul_reg_init(c);
    if (rc < 0) {
        sc_consul_stop(c);
        return rc;
    }
    SC_INFO("consul: agent %s%s%s%s; %s; watching %zu service(s)%s%s", c->base,
            c->unix_path ? " via " : "", c->unix_path ? c->unix_path : "",
            c->token ? " (ACL token set)" : "",
            cfg->consul.register_service ? "registering the local service" : "not registering",
            c->n_watches, cfg->consul.cache_file ? ", cache file " : "",
            cfg->consul.cache_file ? cfg->consul.cache_file : "");
    *out = c;
    if (cfg->consul.register_service)
        sc_consul_reg_start(c);
    sc_consul_watch_start_all(c);
    sc_consul_connect_start(c);
    return 0;
}

void sc_consul_stop(sc_consul *c)
{
    if (!c)
        return;
    sc_consul_http_stop(c);     /* first: no request callback runs after this */
    sc_consul_reg_stop(c);
    sc_consul_watch_stop(c);    /* writes the cache file */
    sc_consul_connect_stop(c);
    free(c);
}

/* ---- admin ---- */

json_t *sc_consul_jtime(int64_t t)
{
    if (!t)
        return json_null();
    char b[32];
    sc_consul_iso_time(t, b, sizeof(b));
    return json_string(b);
}

json_t *sc_consul_jstr(const char *s)
{
    return s && *s ? json_string(s) : json_null();
}

json_t *sc_consul_json(const sc_consul *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "address", json_string(c->base));
    if (c->unix_path)
        json_object_set_new(o, "unix_socket", json_string(c->unix_path));
    json_object_set_new(o, "token", json_boolean(c->token != NULL));
    json_object_set_new(o, "token_reloads", json_integer((json_int_t)c->token_reloads_total));
    if (c->connect_to)
        json_object_set_new(o, "tls_server_name", json_string(c->cfg->consul.tls_server_name));
    if (c->cfg->consul.ns)
        json_object_set_new(o, "namespace", json_string(c->cfg->consul.ns));
    if (c->cfg->consul.partition)
        json_object_set_new(o, "partition", json_string(c->cfg->consul.partition));
    json_object_set_new(o, "registration", sc_consul_reg_json(c));
    json_object_set_new(o, "requests_total", json_integer((json_int_t)c->requests_total));
    json_object_set_new(o, "request_errors_total", json_integer((json_int_t)c->request_errors_total));
    return o;
}

void sc_consul_render_stats(const sc_consul *c, FILE *f)
{
    if (!c)
        return;
    sc_consul_reg_render_stats(c, f);
    sc_prom_u64(f, "sidecar_consul_requests_total", "counter", "Requests sent to the agent.", c->requests_total);
    sc_prom_u64(f, "sidecar_consul_request_errors_total", "counter",
                "Requests to the agent that failed.", c->request_errors_total);
    sc_consul_connect_render_stats(c, f);
    sc_consul_watch_render_stats(c, f);
}

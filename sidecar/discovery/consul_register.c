/*
 * consul_register.c: registration of the local service with the Consul
 * agent (see consul.h): PUT /v1/agent/service/register at start, retried
 * with backoff; the TTL check kept passing or failed with a note saying why;
 * the agent-local blocking GET /v1/agent/service/<id> that notices a lost
 * registration and registers again; deregistration at drain.
 */
#include "discovery/consul_internal.h"

#include "core/log.h"
#include "core/prom.h"
#include "discovery/app_health.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const reg_state_names[] = {"off", "registering", "registered", "failed",
                                              "deregistering", "deregistered"};

static unsigned addr_port(const sc_addr *a)
{
    if (a->ss.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}

static const char *check_name(int check)
{
    static const char *const names[] = {"http", "ttl", "grpc", "none"};
    return (unsigned)check < SC_ARRAY_LEN(names) ? names[check] : "?";
}

/* ---- registration ---- */

static void ttl_send(sc_consul *c);
static void svc_start(sc_consul *c);

static void set_reg_error(sc_consul *c, const char *msg)
{
    snprintf(c->reg_error, sizeof(c->reg_error), "%s", msg);
    c->reg_error_unix = (int64_t)time(NULL);
}

static void reg_retry(sc_consul *c)
{
    c->reg = REG_FAILED;
    uint64_t ms = sc_consul_backoff(c, ++c->reg_failures);
    sc_consul_timer_again(c, &c->reg_timer, ms);
}

static void reg_done(creq *r)
{
    sc_consul *c = r->c;
    c->reg_req = NULL;
    char err[300];
    sc_consul_req_error(r, err, sizeof(err));
    if (err[0]) {
        c->reg_failures_total++;
        bool first = c->reg_failures == 0 || strcmp(err, c->reg_error) != 0;
        set_reg_error(c, err);
        reg_retry(c);
        if (first)
            SC_ERROR("consul: registering service '%s' (id %s) failed: %s%s; retrying with backoff",
                     c->cfg->service.name, c->cfg->service.id, err, sc_consul_req_hint(r));
        else
            SC_DEBUG("consul: registering service '%s' failed again (%u in a row): %s",
                     c->cfg->service.name, c->reg_failures, err);
        return;
    }
    c->reg = REG_REGISTERED;
    c->reg_failures = 0;
    c->registrations_total++;
    c->registered_unix = (int64_t)time(NULL);
    SC_INFO("consul: registered service '%s' (id %s%s%s, port %u) with check %s (%s%s%s)",
            c->cfg->service.name, c->cfg->service.id, c->address[0] ? ", address " : "",
            c->address, c->cfg->inbound.enabled ? addr_port(&c->cfg->inbound.listen) : 0u,
            c->check_id, check_name(c->cfg->consul.check),
            c->check_target[0] ? " " : "", c->check_target);
    if (c->cfg->consul.check == SC_CHECK_TTL) {
        c->ttl_failures = 0;
        ttl_send(c);
    }
    c->svc_hash[0] = 0;
    c->svc_failures = 0;
    svc_start(c);
}

void sc_consul_reg_start(sc_consul *c)
{
    if (c->reg == REG_DEREGISTERING || c->reg == REG_DEREGISTERED)
        return;
    ev_timer_stop(c->loop, &c->reg_timer);
    ev_timer_stop(c->loop, &c->ttl_timer);
    ev_timer_stop(c->loop, &c->svc_timer);
    sc_consul_req_cancel(&c->reg_req);
    sc_consul_req_cancel(&c->ttl_req);
    sc_consul_req_cancel(&c->svc_req);
    c->reg = REG_REGISTERING;
    c->reg_req = sc_consul_req_start(c, "PUT", "/v1/agent/service/register", true, c->reg_body,
                                     WRITE_TIMEOUT_MS, reg_done, NULL);
    if (!c->reg_req) {
        set_reg_error(c, "cannot start a request (out of memory?)");
        reg_retry(c);
    }
}

static void reg_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_consul_reg_start(SC_CONTAINER_OF(t, sc_consul, reg_timer));
}

/* The agent lost our registration: register again (at once). */
static void reg_lost(sc_consul *c, const char *why)
{
    SC_WARN("consul: the agent lost the registration of '%s' (%s); registering again",
            c->cfg->service.id, why);
    set_reg_error(c, why);
    sc_consul_reg_start(c);
}

/* ---- TTL check ---- */

static uint64_t ttl_period_ms(const sc_consul *c)
{
    uint64_t p = c->cfg->consul.check_ttl_ms / 2;
    return p < 250 ? 250 : p;
}

static void ttl_done(creq *r)
{
    sc_consul *c = r->c;
    c->ttl_req = NULL;
    char err[300];
    sc_consul_req_error(r, err, sizeof(err));
    if (!err[0]) {
        c->ttl_failures = 0;
        c->ttl_sent = true;
        if (c->ttl_resend) {
            ttl_send(c);
            return;
        }
        sc_consul_timer_again(c, &c->ttl_timer, ttl_period_ms(c));
        return;
    }
    c->ttl_failures_total++;
    if (r->result == CURLE_OK &&
        (r->status == 404 ||
         (r->status == 500 && sc_consul_req_body_has(r, "does not have associated TTL")))) {
        reg_lost(c, err);
        return;
    }
    if (c->ttl_failures++ == 0)
        SC_WARN("consul: updating TTL check %s failed: %s%s; retrying", c->check_id, err,
                sc_consul_req_hint(r));
    uint64_t ms = sc_consul_backoff(c, c->ttl_failures);
    sc_consul_timer_again(c, &c->ttl_timer, SC_MIN(ms, ttl_period_ms(c)));
}

static void ttl_send(sc_consul *c)
{
    if (c->reg != REG_REGISTERED || c->cfg->consul.check != SC_CHECK_TTL)
        return;
    if (c->ttl_req) {
        c->ttl_resend = true;
        return;
    }
    c->ttl_resend = false;
    ev_timer_stop(c->loop, &c->ttl_timer);
    char why[240];
    bool ok = sc_health_ready(c->sc, why, sizeof(why));
    if (ok) {
        if (c->sc->app_health)
            snprintf(c->ttl_note, sizeof(c->ttl_note), "ready: %s",
                     sc_app_health_reason(c->sc->app_health));
        else
            snprintf(c->ttl_note, sizeof(c->ttl_note), "ready");
    } else {
        snprintf(c->ttl_note, sizeof(c->ttl_note), "not ready: %s", why);
    }
    if (ok != c->ttl_passing || !c->ttl_sent)
        SC_INFO("consul: TTL check %s -> %s (%s)", c->check_id, ok ? "passing" : "critical",
                c->ttl_note);
    c->ttl_passing = ok;
    char id[3 * 300 + 1], note[3 * 256 + 1], path[2200];
    sc_consul_escape(c->check_id, id, sizeof(id));
    sc_consul_escape(c->ttl_note, note, sizeof(note));
    snprintf(path, sizeof(path), "/v1/agent/check/%s/%s?note=%s", ok ? "pass" : "fail", id, note);
    c->ttl_updates_total++;
    c->ttl_req = sc_consul_req_start(c, "PUT", path, true, NULL, WRITE_TIMEOUT_MS, ttl_done, NULL);
    if (!c->ttl_req)
        sc_consul_timer_again(c, &c->ttl_timer, 1000);
}

static void ttl_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    ttl_send(SC_CONTAINER_OF(t, sc_consul, ttl_timer));
}

static void on_app_health(void *arg, bool up)
{
    (void)up;
    ttl_send(arg);
}

/* ---- re-registration check: blocking GET /v1/agent/service/<id> ---- */

static void svc_done(creq *r)
{
    sc_consul *c = r->c;
    c->svc_req = NULL;
    if (c->reg != REG_REGISTERED)
        return;
    char err[300];
    sc_consul_req_error(r, err, sizeof(err));
    if (!err[0]) {
        c->svc_failures = 0;
        snprintf(c->svc_hash, sizeof(c->svc_hash), "%s", r->hash);
        uint64_t wait = sc_consul_bucket_take(&c->svc_bucket, sc_now_ms());
        sc_consul_timer_again(c, &c->svc_timer, wait);
        return;
    }
    if (r->result == CURLE_OK && r->status == 404) {
        reg_lost(c, err);
        return;
    }
    c->svc_failures++;
    SC_DEBUG("consul: checking the registration of %s failed: %s", c->cfg->service.id, err);
    sc_consul_timer_again(c, &c->svc_timer, sc_consul_backoff(c, c->svc_failures));
}

static void svc_start(sc_consul *c)
{
    if (c->reg != REG_REGISTERED || c->svc_req)
        return;
    char id[3 * 128 + 1], path[1200], w[32];
    sc_consul_escape(c->cfg->service.id, id, sizeof(id));
    sc_duration_format(c->cfg->consul.wait_ms, w, sizeof(w));
    uint64_t timeout = WRITE_TIMEOUT_MS;
    if (c->svc_hash[0]) {
        char h[3 * 96 + 1];
        sc_consul_escape(c->svc_hash, h, sizeof(h));
        snprintf(path, sizeof(path), "/v1/agent/service/%s?hash=%s&wait=%s", id, h, w);
        timeout = sc_consul_read_timeout_ms(c->cfg->consul.wait_ms);
    } else {
        snprintf(path, sizeof(path), "/v1/agent/service/%s", id);
    }
    c->svc_req = sc_consul_req_start(c, "GET", path, true, NULL, timeout, svc_done, NULL);
    if (!c->svc_req)
        sc_consul_timer_again(c, &c->svc_timer, 1000);
}

static void svc_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    svc_start(SC_CONTAINER_OF(t, sc_consul, svc_timer));
}

/* ---- deregistration ---- */

static void dereg_finish(sc_consul *c)
{
    ev_timer_stop(c->loop, &c->dereg_timer);
    void (*done)(void *) = c->dereg_done;
    c->dereg_done = NULL;
    if (done)
        done(c->dereg_arg);
}

static void dereg_done(creq *r)
{
    sc_consul *c = r->c;
    c->dereg_req = NULL;
    char err[300];
    sc_consul_req_error(r, err, sizeof(err));
    c->reg = REG_DEREGISTERED;
    if (!err[0])
        SC_INFO("consul: deregistered service '%s' (id %s)", c->cfg->service.name,
                c->cfg->service.id);
    else if (r->result == CURLE_OK && r->status == 404)
        SC_INFO("consul: service id %s was not registered (404); nothing to deregister",
                c->cfg->service.id);
    else {
        set_reg_error(c, err);
        SC_WARN("consul: deregistering service id %s failed: %s%s; draining anyway (the agent's "
                "check will fail once the sidecar is gone)", c->cfg->service.id, err,
                sc_consul_req_hint(r));
    }
    dereg_finish(c);
}

static void dereg_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    sc_consul *c = SC_CONTAINER_OF(t, sc_consul, dereg_timer);
    SC_WARN("consul: the agent did not confirm the deregistration of %s within %dms; draining "
            "anyway", c->cfg->service.id, SC_CONSUL_DEREGISTER_TIMEOUT_MS);
    sc_consul_req_cancel(&c->dereg_req);
    c->reg = REG_DEREGISTERED;
    dereg_finish(c);
}

int sc_consul_deregister(sc_consul *c, void (*done)(void *arg), void *arg)
{
    if (!c || c->reg == REG_OFF || c->reg == REG_DEREGISTERING || c->reg == REG_DEREGISTERED)
        return -EALREADY;
    ev_timer_stop(c->loop, &c->reg_timer);
    ev_timer_stop(c->loop, &c->ttl_timer);
    ev_timer_stop(c->loop, &c->svc_timer);
    sc_consul_req_cancel(&c->reg_req);
    sc_consul_req_cancel(&c->ttl_req);
    sc_consul_req_cancel(&c->svc_req);
    c->reg = REG_DEREGISTERING;
    char id[3 * 128 + 1], path[600];
    sc_consul_escape(c->cfg->service.id, id, sizeof(id));
    snprintf(path, sizeof(path), "/v1/agent/service/deregister/%s", id);
    SC_INFO("consul: deregistering service '%s' (id %s) before draining", c->cfg->service.name,
            c->cfg->service.id);
    c->dereg_req = sc_consul_req_start(c, "PUT", path, true, NULL, SC_CONSUL_DEREGISTER_TIMEOUT_MS,
                                       dereg_done, NULL);
    if (!c->dereg_req) {
        c->reg = REG_DEREGISTERED;
        return -EALREADY;
    }
    c->dereg_done = done;
    c->dereg_arg = arg;
    sc_consul_timer_again(c, &c->dereg_timer, SC_CONSUL_DEREGISTER_TIMEOUT_MS + 250);
    return 0;
}

/* The address to register: service.address, else the inbound listener's
 * when it is a specific non-loopback IP, else the host's first non-loopback
 * address (IPv4 first); "" lets the agent use the node's address. */
static void pick_address(const sc_config *cfg, char *buf, size_t cap)
{
    buf[0] = 0;
    if (cfg->service.address) {
        snprintf(buf, cap, "%s", cfg->service.address);
        return;
    }
    if (cfg->inbound.enabled) {
        const struct sockaddr_storage *ss = &cfg->inbound.listen.ss;
        if (ss->ss_family == AF_INET) {
            const struct in_addr *a = &((const struct sockaddr_in *)ss)->sin_addr;
            uint32_t h = ntohl(a->s_addr);
            if (h != INADDR_ANY && (h >> 24) != 127 && inet_ntop(AF_INET, a, buf, (socklen_t)cap))
                return;
        } else if (ss->ss_family == AF_INET6) {
            const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
            if (!IN6_IS_ADDR_UNSPECIFIED(a) && !IN6_IS_ADDR_LOOPBACK(a) &&
                inet_ntop(AF_INET6, a, buf, (socklen_t)cap))
                return;
        }
        buf[0] = 0;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) < 0)
        return;
    for (int pass = 0; pass < 2 && !buf[0]; pass++) {
        for (struct ifaddrs *i = ifs; i && !buf[0]; i = i->ifa_next) {
            if (!i->ifa_addr || !(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK))
                continue;
            if (pass == 0 && i->ifa_addr->sa_family == AF_INET) {
                inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf,
                          (socklen_t)cap);
            } else if (pass == 1 && i->ifa_addr->sa_family == AF_INET6) {
                const struct in6_addr *a = &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
                if (!IN6_IS_ADDR_LINKLOCAL(a) && !IN6_IS_ADDR_LOOPBACK(a))
                    inet_ntop(AF_INET6, a, buf, (socklen_t)cap);
            }
        }
    }
    freeifaddrs(ifs);
}

/* host:port the agent can reach a local listener at (wildcards -> loopback). */
static void local_target(const sc_addr *a, char *buf, size_t cap)
{
    char host[INET6_ADDRSTRLEN] = "127.0.0.1";
    unsigned port = addr_port(a);
    if (a->ss.ss_family == AF_INET6) {
        const struct in6_addr *ia = &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
        if (IN6_IS_ADDR_UNSPECIFIED(ia))
            snprintf(host, sizeof(host), "::1");
        else
            inet_ntop(AF_INET6, ia, host, sizeof(host));
        snprintf(buf, cap, "[%s]:%u", host, port);
        return;
    }
    const struct in_addr *ia = &((const struct sockaddr_in *)&a->ss)->sin_addr;
    if (ia->s_addr != htonl(INADDR_ANY))
        inet_ntop(AF_INET, ia, host, sizeof(host));
    snprintf(buf, cap, "%s:%u", host, port);
}

int sc_consul_reg_init(sc_consul *c)
{
    const sc_config *cfg = c->cfg;
    ev_init(&c->reg_timer, reg_timer_cb);
    ev_init(&c->ttl_timer, ttl_timer_cb);
    ev_init(&c->svc_timer, svc_timer_cb);
    ev_init(&c->dereg_timer, dereg_timer_cb);
    sc_consul_bucket_init(&c->svc_bucket, BUCKET_BURST, BUCKET_PER_S, sc_now_ms());
    if (cfg->consul.register_service) {
        pick_address(cfg, c->address, sizeof(c->address));
        sc_consul_check_id(cfg->service.id, c->check_id, sizeof(c->check_id));
        if (cfg->consul.check == SC_CHECK_HTTP) {
            char t[160];
            local_target(&cfg->admin.listen, t, sizeof(t));
            if (cfg->consul.check_http)
                snprintf(c->check_target, sizeof(c->check_target), "%s", cfg->consul.check_http);
            else
                snprintf(c->check_target, sizeof(c->check_target), "http://%s/ready", t);
        } else if (cfg->consul.check == SC_CHECK_GRPC) {
            local_target(&cfg->health.grpc_listen, c->check_target, sizeof(c->check_target));
        }
        uint64_t interval = cfg->consul.check_interval_ms;
        sc_consul_reg reg = {
            .id = cfg->service.id,
            .name = cfg->service.name,
            .address = c->address,
            .port = cfg->inbound.enabled ? addr_port(&cfg->inbound.listen) : 0,
            .tags = cfg->service.tags,
            .n_tags = cfg->service.n_tags,
            .meta = cfg->service.meta,
            .n_meta = cfg->service.n_meta,
            .version = SC_VERSION,
            .check = cfg->consul.check,
            .check_target = c->check_target,
            .interval_ms = interval,
            .timeout_ms = interval < 5000 ? interval : 5000,
            .ttl_ms = cfg->consul.check_ttl_ms,
            .deregister_after_ms = cfg->consul.deregister_after_ms,
        };
        c->reg_body = sc_consul_registration_body(&reg);
        if (!c->reg_body)
            return -ENOMEM;
        if (cfg->consul.check == SC_CHECK_TTL)
            sc_app_health_subscribe(c->sc->app_health, on_app_health, c);
    }
    return 0;
}

void sc_consul_reg_retry_now(sc_consul *c)
{
    if (c->reg == REG_FAILED && !c->reg_req) {
        ev_timer_stop(c->loop, &c->reg_timer);
        sc_consul_reg_start(c);
    }
    if (c->reg == REG_REGISTERED && c->ttl_failures && !c->ttl_req)
        sc_consul_timer_again(c, &c->ttl_timer, 0);
}

void sc_consul_reg_stop(sc_consul *c)
{
    ev_timer_stop(c->loop, &c->reg_timer);
    ev_timer_stop(c->loop, &c->ttl_timer);
    ev_timer_stop(c->loop, &c->svc_timer);
    ev_timer_stop(c->loop, &c->dereg_timer);
    free(c->reg_body);
    c->reg_body = NULL;
}

json_t *sc_consul_reg_json(const sc_consul *c)
{
    json_t *r = json_object();
    json_object_set_new(r, "state", json_string(reg_state_names[c->reg]));
    if (c->reg != REG_OFF) {
        json_object_set_new(r, "service", json_string(c->cfg->service.name));
        json_object_set_new(r, "id", json_string(c->cfg->service.id));
        json_object_set_new(r, "address", sc_consul_jstr(c->address));
        json_object_set_new(r, "check", json_string(check_name(c->cfg->consul.check)));
        json_object_set_new(r, "check_id", json_string(c->check_id));
        json_object_set_new(r, "check_target", sc_consul_jstr(c->check_target));
        json_object_set_new(r, "registered_at", sc_consul_jtime(c->registered_unix));
        json_object_set_new(r, "registrations_total", json_integer((json_int_t)c->registrations_total));
        json_object_set_new(r, "failures_in_a_row", json_integer(c->reg_failures));
        json_object_set_new(r, "last_error", sc_consul_jstr(c->reg_error));
        json_object_set_new(r, "last_error_at", sc_consul_jtime(c->reg_error_unix));
        if (c->cfg->consul.check == SC_CHECK_TTL) {
            json_object_set_new(r, "ttl_status", c->ttl_sent ? json_string(c->ttl_passing ? "passing" : "critical") : json_null());
            json_object_set_new(r, "ttl_note", sc_consul_jstr(c->ttl_note));
        }
    }
    return r;
}

void sc_consul_reg_render_stats(const sc_consul *c, FILE *f)
{
    sc_prom_i64(f, "sidecar_consul_registered", "gauge",
                "1 when the local service is registered with the agent.", c->reg == REG_REGISTERED);
    sc_prom_head(f, "sidecar_consul_registration_state", "gauge", "Registration state (1 for the current one).");
    for (size_t i = 0; i < SC_ARRAY_LEN(reg_state_names); i++)
        fprintf(f, "sidecar_consul_registration_state{state=\"%s\"} %d\n", reg_state_names[i],
                (size_t)c->reg == i);
    sc_prom_u64(f, "sidecar_consul_registrations_total", "counter",
                "Successful registrations.", c->registrations_total);
    sc_prom_u64(f, "sidecar_consul_registration_errors_total", "counter",
                "Failed registration attempts.", c->reg_failures_total);
    sc_prom_u64(f, "sidecar_consul_ttl_updates_total", "counter", "TTL check updates sent.", c->ttl_updates_total);
    sc_prom_u64(f, "sidecar_consul_ttl_errors_total", "counter",
                "TTL check updates that failed.", c->ttl_failures_total);
}

/*
 * sidecar.c: process start-up, the control loop (admin, signals, snapshot
 * reclamation) and the drain.
 */
#include "sidecar.h"

#include "admin/admin.h"
#include "authz/authz.h"
#include "core/log.h"
#include "tls/tls_runtime.h"
#include "discovery/app_health.h"
#include "discovery/consul.h"
#include "discovery/grpc_health.h"
#include "trace/tracer.h"
#include "obs/access_log.h"
#include "obs/failures.h"
#include "obs/observe.h"
#include "jwt/jwt_runtime.h"
#include "ratelimit/ratelimit.h"
#include "reload.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

static sc_endpoints *static_snapshot(const sc_static_instance *in, size_t n)
{
    sc_endpoints *e = sc_endpoints_new(n);
    if (!e)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        e->inst[i].addr = in[i].addr;
        e->inst[i].weight = in[i].weight ? in[i].weight : 1;
        snprintf(e->inst[i].id, sizeof(e->inst[i].id), "%.63s", in[i].addr.text);
    }
    return e;
}

void sc_sidecar_route_publish_static(sc_route *rt, const sc_policy *p)
{
    if (p->discovery == SC_DISCOVERY_STATIC) {
        sc_route_publish(rt, static_snapshot(p->instances, p->n_instances));
    } else {
        sc_endpoints *e = sc_endpoints_new(0);
        e->stale = true;
        sc_route_publish(rt, e);
    }
}

static void init_policy_route(sc_route *rt, unsigned index, const sc_policy *p)
{
    rt->name = p->name;
    rt->index = index;
    rt->protocol = p->protocol;
    rt->timeouts = &p->timeouts;
    rt->policy = p;
    sc_route_init_resilience(rt, p, 0);
    sc_sidecar_route_publish_static(rt, p);
}

sc_route *sc_sidecar_route_prepare(sidecar *sc, const sc_policy *p, sc_cfg_hold *hold)
{
    size_t n = atomic_load(&sc->n_routes);
    if (n >= sc->routes_cap)
        return NULL;
    sc_route *rt = &sc->routes[n];
    memset(rt, 0, sizeof(*rt));
    rt->owned_name = sc_xstrdup(p->name);
    init_policy_route(rt, (unsigned)n, p);
    rt->name = rt->owned_name; /* p's configuration may go before the route */
    sc_route_build_pipeline(rt, sc);
    sc_route_hold_config(rt, hold);
    return rt;
}

sidecar *sc_sidecar_new(sc_config *cfg)
{
    sidecar *sc = sc_xcalloc(1, sizeof(*sc));
    sc->cfg = cfg;
    sc->n_routes = (cfg->inbound.enabled ? 1 : 0) + cfg->n_policies;
    sc->routes_cap = sc->n_routes + SC_ROUTES_SPARE;
    sc->routes = sc_xcalloc(sc->routes_cap, sizeof(sc_route));
    size_t r = 0;
    if (cfg->inbound.enabled) {
        sc_route *rt = &sc->routes[r];
        rt->name = "inbound";
        rt->index = (unsigned)r++;
        rt->protocol = cfg->inbound.app_protocol;
        rt->timeouts = &cfg->inbound.timeouts;
        rt->inbound = true;
        sc_static_instance app = {.addr = cfg->inbound.app, .weight = 1};
        sc_route_init_resilience(rt, NULL, cfg->inbound.max_concurrent);
        sc_route_publish(rt, static_snapshot(&app, 1));
    }
    for (size_t i = 0; i < cfg->n_policies; i++, r++)
        init_policy_route(&sc->routes[r], (unsigned)r, &cfg->policies[i]);
    /* Rate limits before the pipelines: the stage's configure takes each route's set. */
    char err[512];
    sc->ratelimit = sc_rl_runtime_new(cfg, err, sizeof(err));
    if (!sc->ratelimit)
        sc->ratelimit_err = sc_xstrdup(err);
    for (size_t i = 0; i < sc->n_routes; i++)
        sc_route_build_pipeline(&sc->routes[i], sc);
    return sc;
}

/* Workers parked on an unknown kid: the JWKS fetch they wait for ended. */
static void jwt_notify(void *arg)
{
    sidecar *sc = arg;
    for (unsigned i = 0; i < sc->n_workers; i++)
        sc_worker_wake(sc->workers[i], SC_WAKE_JWT);
}

/* inbound.jwt: keys loaded (a broken jwks_file stops the start), fetches begun. */
static int jwt_start(sidecar *sc)
{
    char err[512];
    int rv = sc_jwt_new(sc->cfg->inbound.jwt, sc->n_workers, &sc->jwt, err, sizeof(err));
    if (rv == 0 && (rv = sc_jwt_start(sc->jwt, sc->loop, jwt_notify, sc, err, sizeof(err))) < 0) {
        sc_jwt_free(sc->jwt);
        sc->jwt = NULL;
    }
    if (rv < 0)
        SC_ERROR("inbound.jwt: %s", rv == -ENOMEM ? "out of memory" : err);
    return rv;
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void drain_workers(void *arg)
{
    sidecar *sc = arg;
    SC_INFO("draining: no new connections; in-flight requests have %llums to finish",
            (unsigned long long)sc->cfg->drain_timeout_ms);
    for (unsigned i = 0; i < sc->n_workers; i++)
        sc_worker_wake(sc->workers[i], SC_WAKE_DRAIN);
}

void sc_sidecar_drain(sidecar *sc)
{
    if (atomic_exchange(&sc->draining, true))
        return;
    /* With Consul: deregister first (bounded); the workers drain when it is done. */
    if (sc->consul && sc_consul_deregister(sc->consul, drain_workers, sc) == 0)
        return;
    drain_workers(sc);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    sidecar *sc = w->data;
    if (atomic_load(&sc->draining)) {
        SC_WARN("second signal %d during drain: stopping now", w->signum);
        for (unsigned i = 0; i < sc->n_workers; i++)
            sc_worker_wake(sc->workers[i], SC_WAKE_STOP);
        return;
    }
    SC_INFO("received %s", w->signum == SIGTERM ? "SIGTERM" : "SIGINT");
    sc_sidecar_drain(sc);
}

static void sighup_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
    (void)loop;
    (void)revents;
    sidecar *sc = w->data;
    sc_access_log_reopen(sc->access_log);
    if (sc->jwt)
        sc_jwt_reload(sc->jwt); /* every jwks_file read, every jwks_url fetched now */
}

static void tick_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)revents;
    sidecar *sc = t->data;
    sc_endpoints_reclaim();
    sc_route_reclaim();
    if (atomic_load(&sc->workers_running) == 0)
        ev_break(loop, EVBREAK_ALL);
}

int sc_sidecar_run(sidecar *sc)
{
    const sc_config *cfg = sc->cfg;
    raise_nofile();
    signal(SIGPIPE, SIG_IGN);
    sc->started_ms = sc_now_ms();
    sc->n_workers = cfg->workers ? cfg->workers : (unsigned)sysconf(_SC_NPROCESSORS_ONLN);
    if (sc->n_workers == 0)
        sc->n_workers = 1;
    sc->loop = ev_default_loop(EVFLAG_NOENV);
    char err[256];
    if (!sc->ratelimit) {
        SC_ERROR("rate limits: %s", sc->ratelimit_err ? sc->ratelimit_err : "cannot build them");
        return -EINVAL;
    }
    int rv = sc_admin_start(sc, &sc->admin, err, sizeof(err));
    if (rv < 0) {
        SC_ERROR("admin listener: %s", err);
        return rv;
    }
    /* The app probe and gRPC health bind before the workers run. */
    sc_app_health_start(sc->loop, cfg, &sc->app_health);
    rv = sc_grpc_health_start(sc, &sc->grpc_health, err, sizeof(err));
    if (rv < 0 && rv != -ENOENT) {
        SC_ERROR("health.grpc_listen: %s", err);
        sc_app_health_stop(sc->app_health);
        sc->app_health = NULL;
        return rv;
    }
    rv = sc_tls_runtime_start(sc, err, sizeof(err));
    if (rv < 0) {
        SC_ERROR("tls: %s", err);
        return rv;
    }
    /* tracing: the span queues and the exporter, before the workers run */
    rv = sc_tracer_new(cfg, sc->n_workers, &sc->tracer, err, sizeof(err));
    if (rv < 0) {
        SC_ERROR("%s", err);
        return rv;
    }
    if (sc->tracer && sc_tracer_start(sc->tracer, sc->loop, err, sizeof(err)) < 0)
        SC_ERROR("tracing: cannot export spans: %s (install libcurl4); trace headers are still "
                 "propagated, no span is recorded", err);
    else if (sc->tracer)
        SC_INFO("tracing: spans to %s, sample ratio %g",
                cfg->tracing.endpoint ? cfg->tracing.endpoint : SC_TRACING_DEFAULT_ENDPOINT,
                cfg->tracing.sample_ratio);
    sc->workers = sc_xcalloc(sc->n_workers, sizeof(*sc->workers));
    for (unsigned i = 0; i < sc->n_workers; i++)
        if (!(sc->workers[i] = sc_worker_new(sc, i, &rv)))
            return rv;
    /* tls.authorize: consul: the shared answer cache, before the workers run */
    rv = sc_authz_start(sc, &sc->authz);
    if (rv < 0 && rv != -ENOENT) {
        SC_ERROR("tls.authorize: cannot start: %s", strerror(-rv));
        return rv;
    }
    /* inbound.jwt: keys and fetches on this loop, before the workers run (they read sc->jwt) */
    if (cfg->inbound.jwt && (rv = jwt_start(sc)) < 0)
        return rv;
    /* obs/: the failure rings and the access log writer, before the workers run */
    sc->failures = sc_failures_new(sc->n_workers);
    if (!sc->failures) {
        SC_ERROR("cannot allocate the rings of recent failures");
        return -ENOMEM;
    }
    if (cfg->access_log.enabled) {
        rv = sc_access_log_new(&cfg->access_log, sc->n_workers, &sc->access_log, err, sizeof(err));
        if (rv == 0 && (rv = sc_access_log_start(sc->access_log)) < 0)
            snprintf(err, sizeof(err), "access log: cannot start the writer thread: %s", strerror(-rv));
        if (rv < 0) {
            SC_ERROR("%s", err);
            return rv;
        }
    }
    sc->obs = sc_obs_workers_new(sc->n_workers, sc->access_log, sc->failures);
    if (!sc->obs) {
        SC_ERROR("cannot allocate the per-worker observation state");
        return -ENOMEM;
    }
    /* Workers inherit a mask without the shutdown signals: only this thread takes them. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, &old);
    atomic_store(&sc->workers_running, sc->n_workers);
    for (unsigned i = 0; i < sc->n_workers; i++) {
        rv = sc_worker_start(sc->workers[i]);
        if (rv < 0) {
            SC_ERROR("cannot start worker thread %u: %s", i, strerror(-rv));
            abort();
        }
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);

    ev_signal sigterm, sigint;
    ev_signal_init(&sigterm, signal_cb, SIGTERM);
    ev_signal_init(&sigint, signal_cb, SIGINT);
    sigterm.data = sigint.data = sc;
    ev_signal_start(sc->loop, &sigterm);
    ev_signal_start(sc->loop, &sigint);
    ev_signal sighup; /* access_log: a file is reopened (logrotate); inbound.jwt: keys read again */
    ev_signal_init(&sighup, sighup_cb, SIGHUP);
    sighup.data = sc;
    if (sc->access_log || sc->jwt)
        ev_signal_start(sc->loop, &sighup);
    sc_tls_runtime_watch(sc);
    if (sc_reload_start(sc) < 0)
        SC_ERROR("reload: out of memory; the configuration cannot be reloaded");
    ev_timer tick;
    ev_timer_init(&tick, tick_cb, 0.1, 0.1);
    tick.data = sc;
    ev_timer_start(sc->loop, &tick);

    atomic_store(&sc->ready, true);
    SC_INFO("sidecar %s ready: %u workers, admin on %s", SC_VERSION, sc->n_workers, cfg->admin.listen.text);
    if (cfg->inbound.enabled)
        SC_INFO("inbound: %s -> app %s (%s)", cfg->inbound.listen.text, cfg->inbound.app.text,
                sc_proto_name(cfg->inbound.app_protocol));
    for (size_t i = 0; i < cfg->n_policies; i++) {
        const sc_policy *p = &cfg->policies[i];
        SC_INFO("upstream %s: %s -> %zu %s instance(s) (%s)", p->name, p->listen.text,
                p->discovery == SC_DISCOVERY_STATIC ? p->n_instances : 0,
                p->discovery == SC_DISCOVERY_STATIC ? "static" : "consul", sc_proto_name(p->protocol));
        if (p->tls.mode != SC_TLS_OFF)
            SC_INFO("upstream %s: TLS (%s) to its instances%s%s", p->name,
                    p->tls.mode == SC_TLS_MUTUAL ? "mutual" : "simple",
                    p->tls.server_identity ? ", expecting " : "", p->tls.server_identity ? p->tls.server_identity : "");
    }

    /* Consul registration and watches once serving. */
    rv = sc_consul_start(sc, &sc->consul);
    if (rv < 0 && rv != -ENOENT)
        SC_ERROR("consul: cannot start the client: %s; running without Consul", strerror(-rv));

    ev_run(sc->loop, 0);

    for (unsigned i = 0; i < sc->n_workers; i++)
        sc_worker_join(sc->workers[i]);
    ev_signal_stop(sc->loop, &sighup);
    sc_reload_stop(sc);
    /* The admin and gRPC health threads read the other components (readiness
     * looks at app health, certificates and JWKS): they stop before any of
     * those is freed. */
    sc_grpc_health_stop(sc->grpc_health);
    sc->grpc_health = NULL;
    sc_admin_stop(sc->admin);
    sc->admin = NULL;
    sc_access_log_stop(sc->access_log); /* the workers are quiet: every queued line is written */
    sc_consul_stop(sc->consul);
    sc->consul = NULL;
    sc_authz_free(sc->authz); /* after the workers and the Consul client: nothing refers to it now */
    sc->authz = NULL;
    sc_jwt_stop(sc->jwt); /* after the workers: no request checks a token any more */
    sc_jwt_free(sc->jwt);
    sc->jwt = NULL;
    sc_app_health_stop(sc->app_health);
    sc->app_health = NULL;
    sc_tls_runtime_stop(sc);
    sc_tracer_flush(sc->tracer, 5000); /* the workers are gone: what they recorded goes now */
    sc_tracer_free(sc->tracer);
    sc->tracer = NULL;
    SC_INFO("drained; exiting");
    return 0;
}

void sc_sidecar_free(sidecar *sc)
{
    if (!sc)
        return;
    sc_authz_free(sc->authz); /* still set only when the run ended early */
    sc->authz = NULL;
    sc_jwt_free(sc->jwt); /* likewise */
    sc->jwt = NULL;
    sc_tracer_free(sc->tracer);
    sc->tracer = NULL;
    for (unsigned i = 0; sc->workers && i < sc->n_workers; i++)
        sc_worker_free(sc->workers[i]);
    free(sc->workers);
    free(sc->obs);
    sc_access_log_free(sc->access_log); /* after the workers: they hold its producers */
    sc_failures_free(sc->failures);
    sc_endpoints_reclaim();
    sc_route_reclaim_all();
    for (size_t r = 0; r < sc->n_routes; r++) {
        sc_endpoints_ref_clear(&sc->routes[r].endpoints);
        sc_route_free_states(&sc->routes[r]);
        sc_route_free_pipeline(&sc->routes[r]);
        free(sc->routes[r].owned_name);
    }
    free(sc->routes);
    sc_rl_runtime_free(sc->ratelimit); /* after the workers (their Redis clients) and the pipelines */
    free(sc->ratelimit_err);
    sc_config_free(sc->cfg);
    free(sc);
}

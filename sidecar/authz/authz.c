/*
 * authz.c: tls.authorize: consul at run time (see authz.h): the mutex
 * around the shared cache, the hand-off of lookups to the control thread,
 * the Consul requests, waking the workers, logs, admin output.
 */
#include "authz/authz.h"

#include "core/prom.h"
#include "discovery/consul.h"
#include "discovery/consul_json.h"
#include "tls/tls.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One lookup sent to Consul; owned by the authz object until it ends (the
 * Consul client drops requests without a callback when it stops first). */
typedef struct lookup {
    struct lookup *prev, *next;
    sc_authz *a;
    char identity[];
} lookup;

struct sc_authz {
    sidecar *sc;
    const char *target;             /* service.name: the intention's destination */
    pthread_mutex_t mu;             /* guards cache */
    sc_authz_cache *cache;
    _Atomic bool *wake;             /* [n_workers]: a request of that worker waits */
    unsigned n_workers;
    ev_async kick;                  /* control loop: lookups were queued */
    lookup *lookups;                /* sent, not yet ended (control thread) */
    sc_ratelimit deny_limit;        /* per-request denial lines (workers) */
    sc_ratelimit fail_limit;        /* lookups that failed without an earlier answer */
    /* control thread only */
    char last_error[SC_AUTHZ_ERROR_MAX];
    int64_t last_error_unix;
    char last_error_identity[128];
};

static void send_lookups(sc_authz *a);

static void kick_cb(struct ev_loop *loop, ev_async *w, int revents)
{
    (void)loop;
    (void)revents;
    send_lookups(SC_CONTAINER_OF(w, sc_authz, kick));
}

int sc_authz_start(sidecar *sc, sc_authz **out)
{
    *out = NULL;
    const sc_config *cfg = sc->cfg;
    if (cfg->tls.authorize != SC_AUTHORIZE_CONSUL)
        return -ENOENT;
    sc_authz *a = calloc(1, sizeof(*a));
    if (!a)
        return -ENOMEM;
    a->sc = sc;
    a->target = cfg->service.name;
    a->n_workers = sc->n_workers;
    a->cache = sc_authz_cache_new(cfg->tls.authorize_cache_ms, SC_AUTHZ_MAX_ENTRIES);
    a->wake = calloc(sc->n_workers ? sc->n_workers : 1, sizeof(*a->wake));
    if (!a->cache || !a->wake || pthread_mutex_init(&a->mu, NULL) != 0) {
        sc_authz_cache_free(a->cache);
        free(a->wake);
        free(a);
        return -ENOMEM;
    }
    ev_async_init(&a->kick, kick_cb);
    ev_async_start(sc->loop, &a->kick);
    char ttl[32];
    sc_duration_format(cfg->tls.authorize_cache_ms, ttl, sizeof(ttl));
    SC_INFO("inbound: callers are authorized by Consul intentions (POST /v1/agent/connect/authorize, target %s), "
            "answers cached for %s%s",
            a->target, ttl, cfg->tls.n_allow ? "; tls.allow is checked first" : "");
    *out = a;
    return 0;
}

void sc_authz_free(sc_authz *a)
{
    if (!a)
        return;
    ev_async_stop(a->sc->loop, &a->kick);
    while (a->lookups) {
        lookup *lk = a->lookups;
        a->lookups = lk->next;
        free(lk);
    }
    sc_authz_cache_free(a->cache);
    pthread_mutex_destroy(&a->mu);
    free(a->wake);
    free(a);
}

sc_ratelimit *sc_authz_log_limit(sc_authz *a)
{
    return &a->deny_limit;
}

/* ---- workers ---- */

void sc_authz_check(sc_authz *a, unsigned worker, const char *identity, const char *serial,
                    uint64_t now_ms, sc_authz_decision *d)
{
    pthread_mutex_lock(&a->mu);
    sc_authz_cache_check(a->cache, identity, serial, now_ms, d);
    if (d->verdict == SC_AUTHZ_WAIT && worker < a->n_workers)
        atomic_store(&a->wake[worker], true);
    pthread_mutex_unlock(&a->mu);
    if (d->queued)
        ev_async_send(a->sc->loop, &a->kick);
}

void sc_authz_result(sc_authz *a, unsigned worker, const char *identity, uint64_t seq,
                     uint64_t now_ms, sc_authz_decision *d)
{
    pthread_mutex_lock(&a->mu);
    sc_authz_cache_result(a->cache, identity, seq, now_ms, d);
    if (d->verdict == SC_AUTHZ_WAIT && worker < a->n_workers)
        atomic_store(&a->wake[worker], true);
    pthread_mutex_unlock(&a->mu);
}

/* ---- control thread ---- */

static void finish(sc_authz *a, const char *identity, const sc_authz_answer *ans)
{
    sc_authz_event ev;
    pthread_mutex_lock(&a->mu);
    sc_authz_cache_answer(a->cache, identity, sc_now_ms(), ans, &ev);
    pthread_mutex_unlock(&a->mu);

    if (!ans->ok) {
        snprintf(a->last_error, sizeof(a->last_error), "%s", ans->error ? ans->error : "");
        snprintf(a->last_error_identity, sizeof(a->last_error_identity), "%s", identity);
        a->last_error_unix = time(NULL);
    }
    if (ev.refused)
        SC_WARN_LIMITED(&a->fail_limit,
                        "inbound: cannot ask Consul whether caller %s may call %s: %s; its requests are "
                        "refused (503 / UNAVAILABLE, authz-unavailable) until Consul answers",
                        identity, a->target, ans->error ? ans->error : "no answer");
    else if (ev.became_stale)
        SC_WARN("inbound: Consul cannot answer whether caller %s may call %s (%s); using its last answer "
                "(%s, %llus old) until it can",
                identity, a->target, ans->error ? ans->error : "no answer", ev.allowed ? "allowed" : "denied",
                (unsigned long long)(ev.answer_age_ms / 1000));
    else if (!ans->ok)
        SC_DEBUG("inbound: Consul still cannot answer for caller %s: %s", identity, ans->error ? ans->error : "");
    else if (ev.recovered)
        SC_INFO("inbound: Consul answers again for caller %s: %s (%s)", identity, ev.allowed ? "allowed" : "denied",
                ans->reason);
    else if (ev.changed || ev.first_answer)
        SC_INFO("inbound: Consul %s caller %s to call %s: %s", ev.allowed ? "allows" : "does not allow", identity,
                a->target, ans->reason && *ans->reason ? ans->reason : "(no reason given)");

    for (unsigned i = 0; i < a->n_workers; i++)
        if (atomic_exchange(&a->wake[i], false))
            sc_worker_wake(a->sc->workers[i], SC_WAKE_AUTHZ);
}

static void lookup_done(void *arg, long status, const char *body, size_t len, const char *err)
{
    lookup *lk = arg;
    sc_authz *a = lk->a;
    if (lk->prev)
        lk->prev->next = lk->next;
    else
        a->lookups = lk->next;
    if (lk->next)
        lk->next->prev = lk->prev;

    sc_authz_answer ans = {0};
    char reason[SC_CONSUL_REASON_MAX], why[SC_AUTHZ_ERROR_MAX];
    if (status == 200) {
        char perr[200];
        if (sc_consul_parse_authorize(body, len, &ans.authorized, reason, sizeof(reason), perr, sizeof(perr)) == 0) {
            ans.ok = true;
            ans.reason = reason;
        } else {
            snprintf(why, sizeof(why), "Consul's answer cannot be used: %s", perr);
            ans.error = why;
        }
    } else {
        snprintf(why, sizeof(why), "POST /v1/agent/connect/authorize: %s",
                 err && *err ? err : status ? "unexpected answer" : "no answer");
        ans.error = why;
    }
    SC_DEBUG("inbound: Consul authorize for %s: HTTP %ld, %s", lk->identity, status,
             ans.ok ? (ans.authorized ? "authorized" : "not authorized") : ans.error);
    finish(a, lk->identity, &ans);
    free(lk);
}

static void send_one(sc_authz *a, const char *identity, const char *serial)
{
    char why[SC_AUTHZ_ERROR_MAX];
    struct sc_consul *consul = a->sc->consul;
    if (!consul) {
        sc_authz_answer ans = {.ok = false, .error = "the Consul client is not running"};
        finish(a, identity, &ans);
        return;
    }
    size_t n = strlen(identity);
    lookup *lk = malloc(sizeof(*lk) + n + 1);
    char *body = sc_consul_authorize_body(a->target, identity, serial);
    if (!lk || !body) {
        free(lk);
        free(body);
        sc_authz_answer ans = {.ok = false, .error = "out of memory"};
        finish(a, identity, &ans);
        return;
    }
    lk->a = a;
    memcpy(lk->identity, identity, n + 1);
    lk->prev = NULL;
    lk->next = a->lookups;
    if (a->lookups)
        a->lookups->prev = lk;
    a->lookups = lk;
    int rv = sc_consul_authorize(consul, body, SC_AUTHZ_LOOKUP_TIMEOUT_MS, lookup_done, lk);
    free(body);
    if (rv < 0) {
        a->lookups = lk->next;
        if (lk->next)
            lk->next->prev = NULL;
        free(lk);
        snprintf(why, sizeof(why), "cannot start the request to Consul: %s", strerror(-rv));
        sc_authz_answer ans = {.ok = false, .error = why};
        finish(a, identity, &ans);
    }
}

static void send_lookups(sc_authz *a)
{
    for (;;) {
        char identity[SC_TLS_ID_MAX], serial[SC_AUTHZ_SERIAL_MAX];
        pthread_mutex_lock(&a->mu);
        bool got = sc_authz_cache_next(a->cache, identity, sizeof(identity), serial, sizeof(serial));
        pthread_mutex_unlock(&a->mu);
        if (!got)
            return;
        send_one(a, identity, serial);
    }
}

/* ---- admin ---- */

#define WS(f) offsetof(sc_worker_stats, f)

json_t *sc_authz_json(sc_authz *a)
{
    if (!a)
        return json_null();
    sc_authz_cache_view v;
    pthread_mutex_lock(&a->mu);
    sc_authz_cache_snapshot(a->cache, &v);
    pthread_mutex_unlock(&a->mu);
    char ttl[32], to[32];
    sc_duration_format(v.ttl_ms, ttl, sizeof(ttl));
    sc_duration_format(SC_AUTHZ_LOOKUP_TIMEOUT_MS, to, sizeof(to));
    json_t *o = json_object();
    json_object_set_new(o, "mode", json_string("consul"));
    json_object_set_new(o, "target", json_string(a->target));
    json_object_set_new(o, "cache_ttl", json_string(ttl));
    json_object_set_new(o, "lookup_timeout", json_string(to));
    json_object_set_new(o, "allow_list_first", json_boolean(a->sc->cfg->tls.n_allow > 0));
    json_t *c = json_object();
    json_object_set_new(c, "entries", json_integer((json_int_t)v.entries));
    json_object_set_new(c, "max_entries", json_integer((json_int_t)v.max_entries));
    json_object_set_new(c, "answered", json_integer((json_int_t)v.answered));
    json_object_set_new(c, "stale", json_integer((json_int_t)v.stale));
    json_object_set_new(c, "in_flight", json_integer((json_int_t)(v.in_flight + v.queued)));
    json_object_set_new(c, "evictions_total", json_integer((json_int_t)v.evictions_total));
    json_object_set_new(o, "cache", c);
    json_object_set_new(o, "lookups_total", json_integer((json_int_t)v.lookups_total));
    json_object_set_new(o, "answers_total", json_integer((json_int_t)v.answers_total));
    json_object_set_new(o, "errors_total", json_integer((json_int_t)v.errors_total));
    const sidecar *sc = a->sc;
    json_object_set_new(o, "hits_total", json_integer((json_int_t)sc_workers_sum(sc, WS(authz_cache_hits))));
    json_object_set_new(o, "misses_total", json_integer((json_int_t)sc_workers_sum(sc, WS(authz_cache_misses))));
    json_object_set_new(o, "denied_total", json_integer((json_int_t)sc_workers_sum(sc, WS(authz_consul_denied))));
    json_object_set_new(o, "unavailable_total", json_integer((json_int_t)sc_workers_sum(sc, WS(authz_unavailable))));
    json_object_set_new(o, "stale_total", json_integer((json_int_t)sc_workers_sum(sc, WS(authz_stale))));
    json_object_set_new(o, "last_error", a->last_error[0] ? json_string(a->last_error) : json_null());
    json_object_set_new(o, "last_error_caller", a->last_error[0] ? json_string(a->last_error_identity) : json_null());
    if (a->last_error_unix) {
        char b[32];
        time_t t = (time_t)a->last_error_unix;
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%SZ", &tm);
        json_object_set_new(o, "last_error_at", json_string(b));
    } else {
        json_object_set_new(o, "last_error_at", json_null());
    }
    return o;
}

void sc_authz_render_stats(sc_authz *a, FILE *f)
{
    if (!a)
        return;
    sc_authz_cache_view v;
    pthread_mutex_lock(&a->mu);
    sc_authz_cache_snapshot(a->cache, &v);
    pthread_mutex_unlock(&a->mu);
    const sidecar *sc = a->sc;
    static const struct {
        const char *name, *help;
        size_t off;
    } wm[] = {
        {"sidecar_inbound_authz_consul_denied_total", "Inbound requests refused because Consul denied the caller.",
         WS(authz_consul_denied)},
        {"sidecar_inbound_authz_unavailable_total",
         "Inbound requests refused because Consul could not answer and there was no earlier answer.",
         WS(authz_unavailable)},
        {"sidecar_inbound_authz_stale_total", "Inbound requests decided with an earlier answer while Consul could not answer.",
         WS(authz_stale)},
        {"sidecar_inbound_authz_cache_hits_total", "Inbound requests decided without waiting for Consul.",
         WS(authz_cache_hits)},
        {"sidecar_inbound_authz_cache_misses_total", "Inbound requests that waited for a Consul lookup.",
         WS(authz_cache_misses)},
    };
    for (size_t m = 0; m < SC_ARRAY_LEN(wm); m++)
        sc_prom_u64(f, wm[m].name, "counter", wm[m].help, sc_workers_sum(sc, wm[m].off));
    sc_prom_u64(f, "sidecar_inbound_authz_consul_lookups_total", "counter",
                "Authorize requests to Consul.", v.lookups_total);
    sc_prom_u64(f, "sidecar_inbound_authz_consul_errors_total", "counter",
                "Authorize requests Consul did not answer usefully.", v.errors_total);
    sc_prom_u64(f, "sidecar_inbound_authz_cache_entries", "gauge",
                "Caller identities in the authorize cache.", v.entries);
    sc_prom_u64(f, "sidecar_inbound_authz_cache_stale_entries", "gauge",
                "Identities whose answer is in use stale.", v.stale);
}

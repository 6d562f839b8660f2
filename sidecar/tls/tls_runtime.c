#include "tls/tls_runtime.h"

#include "core/log.h"
#include "tls/tls.h"

#include <jansson.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define WARN_DAYS 14

static ev_timer g_reload;
static ev_signal g_sighup;
static _Atomic int g_cert_state = SC_TLS_CERT_VALID;
static int64_t g_last_warn;
/* tls.source: consul */
static _Atomic bool g_connect_waiting;   /* no Connect leaf in use yet */
static struct {
    char leaf_serial[128];
    size_t n_roots;
    uint64_t leaf_index, roots_index;
    char last_error[512];       /* written on the control thread under g_connect_mu */
    int64_t updated_unix;
    uint64_t updates;
} g_connect;
/* last_error is also read by sc_tls_runtime_cert_ok (the /ready reason), which
 * any thread may call; the rest is control-thread only */
static pthread_mutex_t g_connect_mu = PTHREAD_MUTEX_INITIALIZER;

static bool g_connect_source;            /* tls.source: consul */

/* Files: "expiring" 14 days ahead. Connect leaves live for days (72h by
 * default) and Consul renews them at 60-90% of their life: "expiring" once
 * less than a fifth of the life is left (Consul did not renew it). */
static sc_tls_cert_state cert_state(const sc_tls_cert_info *ci, int64_t now)
{
    if (!g_connect_source)
        return sc_tls_cert_check(ci, now, WARN_DAYS);
    sc_tls_cert_state st = sc_tls_cert_check(ci, now, 0);
    if (st == SC_TLS_CERT_VALID && !ci->is_ca && (ci->not_after - now) * 5 < ci->not_after - ci->not_before)
        st = SC_TLS_CERT_EXPIRING;
    return st;
}

static sc_tls_watch *make_watch(sc_tls_role role, const char *cert, const char *key, const char *ca, bool require,
                                char *err, size_t errlen)
{
    sc_tls_ctx_opts o = {.role = role, .cert_file = cert, .key_file = key, .ca_file = ca, .require_client_cert = require};
    return sc_tls_watch_new(&o, err, errlen);
}

static void check_expiry(sidecar *sc)
{
    sc_tls_watch *w = sc->tls_server ? sc->tls_server : sc->tls_client;
    if (!w)
        return;
    sc_tls_ctx *ctx = sc_tls_watch_get(w);
    const sc_tls_cert_info *ci = ctx ? sc_tls_ctx_cert(ctx) : NULL;
    if (ci) {
        int64_t now = time(NULL);
        sc_tls_cert_state st = cert_state(ci, now);
        int old = atomic_exchange(&g_cert_state, (int)st);
        if (st != SC_TLS_CERT_VALID && (old != (int)st || now - g_last_warn >= 3600)) {
            g_last_warn = now;
            SC_WARN("tls: our certificate %s (%s, serial %s) is %s: not after %s, %lld day(s) left%s", ci->identity,
                    ci->subject, ci->serial, sc_tls_cert_state_name(st), ci->not_after_iso,
                    (long long)sc_tls_cert_days_until_expiry(ci, now),
                    st == SC_TLS_CERT_EXPIRING ? (g_connect_source ? "; Consul has not renewed it yet" : "; renew it") : "; readiness fails until it is replaced");
        }
    }
    if (ctx)
        sc_tls_ctx_unref(ctx);
}

static void reload(sidecar *sc, bool force)
{
    sc_tls_watch *ws[] = {sc->tls_server, sc->tls_client, sc->tls_client_anon};
    static const char *const names[] = {"inbound", "outbound (mutual)", "outbound (simple)"};
    for (size_t i = 0; i < SC_ARRAY_LEN(ws); i++) {
        if (!ws[i])
            continue;
        char err[512];
        int rv = sc_tls_watch_check(ws[i], force, err, sizeof(err));
        if (rv < 0)
            SC_ERROR("tls: new %s material refused, the old stays in use: %s", names[i], err);
        else if (rv == 1)
            SC_INFO("tls: %s certificate material reloaded; new handshakes use it, open connections keep theirs",
                    names[i]);
    }
    check_expiry(sc);
}

/* Once a minute (this timer ticks every second): expired sessions out of the
 * inbound context's session cache, whose automatic flush is off
 * (sc_tls_ctx_flush_sessions). A session cut to its client certificate's
 * notAfter, or past its lifetime, would otherwise stay until evicted. */
#define SESSION_FLUSH_TICKS 60

static void reload_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    static unsigned ticks;
    sidecar *sc = t->data;
    reload(sc, false);
    if (sc->tls_server && ++ticks >= SESSION_FLUSH_TICKS) {
        ticks = 0;
        sc_tls_ctx *ctx = sc_tls_watch_get(sc->tls_server);
        sc_tls_ctx_flush_sessions(ctx, time(NULL));
        sc_tls_ctx_unref(ctx);
    }
}

static void sighup_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)revents;
    sidecar *sc = s->data;
    if (!sc->tls_server && !sc->tls_client && !sc->tls_client_anon) {
        SC_INFO("tls: SIGHUP: no TLS material configured, no certificates to reload");
        return;
    }
    SC_INFO("tls: SIGHUP: reloading certificates");
    reload(s->data, true);
}

/*
 * A Consul-discovered upstream in mutual mode without tls.sni and
 * tls.server_identity expects the identity its service has in our mesh,
 * derived from our own (sc_tls_identity_for_service). With file material
 * ours may not be in Consul's form; then no connection to it could verify
 * anything, so the sidecar does not start (Connect leaves always are).
 */
static int check_derived_identities(sidecar *sc, char *err, size_t errlen)
{
    const sc_config *cfg = sc->cfg;
    sc_tls_ctx *ctx = sc_tls_watch_get(sc->tls_client);
    const sc_tls_cert_info *ours = ctx ? sc_tls_ctx_cert(ctx) : NULL;
    int rc = 0;
    for (size_t i = 0; i < cfg->n_policies && rc == 0; i++) {
        const sc_policy *p = &cfg->policies[i];
        if (p->tls.mode != SC_TLS_MUTUAL || p->discovery != SC_DISCOVERY_CONSUL || p->tls.sni ||
            p->tls.server_identity)
            continue;
        char id[SC_TLS_ID_MAX];
        const char *svc = p->consul.service ? p->consul.service : p->name;
        if (ours && sc_tls_identity_for_service(ours->identity, p->consul.dc, svc, id, sizeof(id)) > 0)
            continue;
        snprintf(err, errlen,
                 "upstream %s: without tls.server_identity it expects the identity of Consul service %s, "
                 "derived from ours (%s), which is not of the form spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<name>; "
                 "set tls.server_identity (or tls.sni) in %s",
                 p->name, svc, ours && ours->identity[0] ? ours->identity : "none", p->file ? p->file : "its policy");
        rc = -EINVAL;
    }
    sc_tls_ctx_unref(ctx);
    return rc;
}

int sc_tls_runtime_start(sidecar *sc, char *err, size_t errlen)
{
    const sc_config *cfg = sc->cfg;
    bool need_mutual = false, need_simple = false;
    for (size_t i = 0; i < cfg->n_policies; i++) {
        need_mutual |= cfg->policies[i].tls.mode == SC_TLS_MUTUAL;
        need_simple |= cfg->policies[i].tls.mode == SC_TLS_SIMPLE;
    }
    if (cfg->tls.source == SC_TLS_SOURCE_CONSUL) {
        /* contexts come later from Consul Connect (sc_tls_runtime_connect_set); until then
         * inbound TLS accepts fail and readiness says why: the listener never serves cleartext */
        if (cfg->inbound.enabled)
            sc->tls_server = sc_tls_watch_new_memory(SC_TLS_ROLE_SERVER, true);
        if (need_mutual)
            sc->tls_client = sc_tls_watch_new_memory(SC_TLS_ROLE_CLIENT, false);
        if (need_simple)
            sc->tls_client_anon = sc_tls_watch_new_memory(SC_TLS_ROLE_CLIENT, false);
        if ((cfg->inbound.enabled && !sc->tls_server) || (need_mutual && !sc->tls_client) ||
            (need_simple && !sc->tls_client_anon)) {
            snprintf(err, errlen, "out of memory");
            return -ENOMEM;
        }
        atomic_store(&g_connect_waiting, true);
        g_connect_source = true;
        memset(&g_connect, 0, sizeof(g_connect));
        SC_INFO("tls: certificates from Consul Connect (service %s); inbound TLS and readiness wait for the "
                "first leaf certificate", cfg->service.name);
        return 0;
    }
    if (cfg->tls.cert_file && cfg->inbound.enabled) {
        sc->tls_server = make_watch(SC_TLS_ROLE_SERVER, cfg->tls.cert_file, cfg->tls.key_file, cfg->tls.ca_file,
                                    cfg->tls.ca_file != NULL, err, errlen);
        if (!sc->tls_server)
            return -EINVAL;
    }
    if (need_mutual) {
        sc->tls_client = make_watch(SC_TLS_ROLE_CLIENT, cfg->tls.cert_file, cfg->tls.key_file, cfg->tls.ca_file, false,
                                    err, errlen);
        if (!sc->tls_client)
            return -EINVAL;
    }
    if (need_simple) {
        sc->tls_client_anon = make_watch(SC_TLS_ROLE_CLIENT, NULL, NULL, cfg->tls.ca_file, false, err, errlen);
        if (!sc->tls_client_anon)
            return -EINVAL;
    }
    if (sc->tls_client && check_derived_identities(sc, err, errlen) < 0)
        return -EINVAL;
    if (sc->tls_server || sc->tls_client) {
        sc_tls_ctx *ctx = sc_tls_watch_get(sc->tls_server ? sc->tls_server : sc->tls_client);
        const sc_tls_cert_info *ci = sc_tls_ctx_cert(ctx);
        if (ci)
            SC_INFO("tls: our identity %s (serial %s, valid until %s); %zu trusted root(s)%s", ci->identity, ci->serial,
                    ci->not_after_iso, sc_tls_ctx_n_roots(ctx),
                    cfg->tls.n_allow ? "; inbound callers checked against tls.allow" : "");
        sc_tls_ctx_unref(ctx);
        check_expiry(sc);
    }
    return 0;
}

void sc_tls_runtime_watch(sidecar *sc)
{
    /* SIGHUP always has a handler: its default action would kill the process. */
    ev_signal_init(&g_sighup, sighup_cb, SIGHUP);
    g_sighup.data = sc;
    ev_signal_start(sc->loop, &g_sighup);
    if (!sc->tls_server && !sc->tls_client && !sc->tls_client_anon)
        return;
    ev_timer_init(&g_reload, reload_cb, 1.0, 1.0);
    g_reload.data = sc;
    ev_timer_start(sc->loop, &g_reload);
}

void sc_tls_runtime_stop(sidecar *sc)
{
    if (ev_is_active(&g_reload))
        ev_timer_stop(sc->loop, &g_reload);
    if (ev_is_active(&g_sighup))
        ev_signal_stop(sc->loop, &g_sighup);
    sc_tls_watch_free(sc->tls_server);
    sc_tls_watch_free(sc->tls_client);
    sc_tls_watch_free(sc->tls_client_anon);
    sc->tls_server = sc->tls_client = sc->tls_client_anon = NULL;
}

int sc_tls_runtime_connect_set(sidecar *sc, const char *cert_pem, const char *key_pem,
                               const char *ca_pem, char *err, size_t errlen)
{
    /* the server first: it needs everything, so what it refuses is refused for all */
    sc_tls_watch *ws[] = {sc->tls_server, sc->tls_client, sc->tls_client_anon};
    bool with_cert[] = {true, true, false};
    static const char *const names[] = {"inbound", "outbound (mutual)", "outbound (simple)"};
    int changed = 0;
    for (size_t i = 0; i < SC_ARRAY_LEN(ws); i++) {
        if (!ws[i])
            continue;
        char e[512];
        int rv = sc_tls_watch_set_pem(ws[i], with_cert[i] ? cert_pem : NULL, with_cert[i] ? key_pem : NULL, ca_pem,
                                      e, sizeof(e));
        if (rv < 0) {
            snprintf(err, errlen, "%s: %s", names[i], e);
            return rv;
        }
        changed |= rv == 1;
    }
    if (changed) {
        bool first = atomic_exchange(&g_connect_waiting, false);
        sc_tls_watch *w = sc->tls_server ? sc->tls_server : sc->tls_client;
        sc_tls_ctx *ctx = w ? sc_tls_watch_get(w) : NULL;
        const sc_tls_cert_info *ci = ctx ? sc_tls_ctx_cert(ctx) : NULL;
        if (ci)
            SC_INFO("tls: %s Consul Connect material in use: identity %s (serial %s, valid until %s); %zu trusted "
                    "root(s); new handshakes use it, open connections keep theirs",
                    first ? "first" : "new", ci->identity, ci->serial, ci->not_after_iso, sc_tls_ctx_n_roots(ctx));
        sc_tls_ctx_unref(ctx);
        g_connect.updates++;
        g_connect.updated_unix = (int64_t)time(NULL);
        check_expiry(sc);
    }
    return changed;
}

void sc_tls_runtime_connect_note(const char *leaf_serial, size_t n_roots, uint64_t leaf_index,
                                 uint64_t roots_index, const char *last_error)
{
    if (leaf_serial)
        snprintf(g_connect.leaf_serial, sizeof(g_connect.leaf_serial), "%s", leaf_serial);
    g_connect.n_roots = n_roots;
    g_connect.leaf_index = leaf_index;
    g_connect.roots_index = roots_index;
    pthread_mutex_lock(&g_connect_mu);
    snprintf(g_connect.last_error, sizeof(g_connect.last_error), "%s", last_error ? last_error : "");
    pthread_mutex_unlock(&g_connect_mu);
}

bool sc_tls_runtime_cert_ok(const sidecar *sc, char *why, size_t whylen)
{
    (void)sc;
    if (atomic_load(&g_connect_waiting)) {   /* only ever set with tls.source: consul */
        if (why && whylen) {
            /* with what went wrong last (a refused ACL token, say), so /ready says why */
            pthread_mutex_lock(&g_connect_mu);
            snprintf(why, whylen, "waiting for the Connect certificate%s%s%s",
                     g_connect.last_error[0] ? " (" : "", g_connect.last_error, g_connect.last_error[0] ? ")" : "");
            pthread_mutex_unlock(&g_connect_mu);
        }
        return false;
    }
    int st = atomic_load(&g_cert_state);
    if (st == SC_TLS_CERT_EXPIRED || st == SC_TLS_CERT_NOT_YET_VALID) {
        snprintf(why, whylen, "our TLS certificate is %s", sc_tls_cert_state_name((sc_tls_cert_state)st));
        return false;
    }
    return true;
}

static json_t *cert_json(const sc_tls_cert_info *ci, int64_t now)
{
    return json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:I,s:s}", "subject", ci->subject, "issuer", ci->issuer, "identity",
                     ci->identity, "serial", ci->serial, "not_before", ci->not_before_iso, "not_after", ci->not_after_iso,
                     "days_left", (json_int_t)sc_tls_cert_days_until_expiry(ci, now), "state",
                     sc_tls_cert_state_name(cert_state(ci, now)));
}

char *sc_tls_runtime_render(const sidecar *sc)
{
    json_t *root = json_object();
    int64_t now = time(NULL);
    bool connect = g_connect_source;
    json_object_set_new(root, "source", json_string(connect ? "consul" : "files"));
    if (connect) {
        json_t *cj = json_object();
        json_object_set_new(cj, "state", json_string(atomic_load(&g_connect_waiting) ? "waiting for the Connect certificate"
                                                                                     : "ready"));
        json_object_set_new(cj, "service", json_string(sc->cfg && sc->cfg->service.name ? sc->cfg->service.name : ""));
        json_object_set_new(cj, "leaf_serial", json_string(g_connect.leaf_serial));
        json_object_set_new(cj, "leaf_index", json_integer((json_int_t)g_connect.leaf_index));
        json_object_set_new(cj, "roots", json_integer((json_int_t)g_connect.n_roots));
        json_object_set_new(cj, "roots_index", json_integer((json_int_t)g_connect.roots_index));
        json_object_set_new(cj, "updates", json_integer((json_int_t)g_connect.updates));
        json_object_set_new(cj, "last_error", g_connect.last_error[0] ? json_string(g_connect.last_error) : json_null());
        json_object_set_new(root, "connect", cj);
    }
    struct {
        const char *name;
        sc_tls_watch *w;
    } ws[] = {{"inbound", sc->tls_server}, {"outbound_mutual", sc->tls_client}, {"outbound_simple", sc->tls_client_anon}};
    for (size_t i = 0; i < SC_ARRAY_LEN(ws); i++) {
        if (!ws[i].w) {
            json_object_set_new(root, ws[i].name, json_null());
            continue;
        }
        sc_tls_ctx *ctx = sc_tls_watch_get(ws[i].w);
        if (!ctx) {
            json_object_set_new(root, ws[i].name, json_pack("{s:n,s:[],s:n}", "certificate", "roots", "generation"));
            continue;
        }
        json_t *o = json_object();
        const sc_tls_cert_info *ci = sc_tls_ctx_cert(ctx);
        json_object_set_new(o, "certificate", ci ? cert_json(ci, now) : json_null());
        json_t *roots = json_array();
        for (size_t k = 0; k < sc_tls_ctx_n_roots(ctx); k++)
            json_array_append_new(roots, cert_json(sc_tls_ctx_root(ctx, k), now));
        json_object_set_new(o, "roots", roots);
        json_object_set_new(o, "generation", json_integer((json_int_t)sc_tls_ctx_generation(ctx)));
        json_object_set_new(root, ws[i].name, o);
        sc_tls_ctx_unref(ctx);
    }
    char *out = json_dumps(root, JSON_INDENT(2));
    json_decref(root);
    return out;
}

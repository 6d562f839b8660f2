#include "tls/tls_runtime.h"

#include "core/log.h"
#include "tls/tls.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define WARN_DAYS 14

static ev_timer g_reload;
static ev_signal g_sighup;
static _Atomic int g_cert_state = SC_TLS_CERT_VALID;
static int64_t g_last_warn;

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
        sc_tls_cert_state st = sc_tls_cert_check(ci, now, WARN_DAYS);
        int old = atomic_exchange(&g_cert_state, (int)st);
        if (st != SC_TLS_CERT_VALID && (old != (int)st || now - g_last_warn >= 3600)) {
            g_last_warn = now;
            SC_WARN("tls: our certificate %s (%s, serial %s) is %s: not after %s, %lld day(s) left%s", ci->identity,
                    ci->subject, ci->serial, sc_tls_cert_state_name(st), ci->not_after_iso,
                    (long long)sc_tls_cert_days_until_expiry(ci, now),
                    st == SC_TLS_CERT_EXPIRING ? "; renew it" : "; readiness fails until it is replaced");
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

static void reload_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    reload(t->data, false);
}

static void sighup_cb(struct ev_loop *loop, ev_signal *s, int revents)
{
    (void)loop;
    (void)revents;
    sidecar *sc = s->data;
    if (!sc->tls_server && !sc->tls_client && !sc->tls_client_anon) {
        SC_INFO("SIGHUP: no TLS material configured, nothing to reload");
        return;
    }
    SC_INFO("tls: SIGHUP: reloading certificates");
    reload(s->data, true);
}

int sc_tls_runtime_start(sidecar *sc, char *err, size_t errlen)
{
    const sc_config *cfg = sc->cfg;
    bool need_mutual = false, need_simple = false;
    for (size_t i = 0; i < cfg->n_policies; i++) {
        need_mutual |= cfg->policies[i].tls.mode == SC_TLS_MUTUAL;
        need_simple |= cfg->policies[i].tls.mode == SC_TLS_SIMPLE;
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

bool sc_tls_runtime_cert_ok(const sidecar *sc, char *why, size_t whylen)
{
    (void)sc;
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
                     sc_tls_cert_state_name(sc_tls_cert_check(ci, now, WARN_DAYS)));
}

char *sc_tls_runtime_render(const sidecar *sc)
{
    json_t *root = json_object();
    int64_t now = time(NULL);
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

/*
 * stage_authz.c: tls.authorize: consul on the inbound route (authz/authz.h):
 * whether the caller's identity may call this service is Consul's
 * intentions' decision, after tls.allow.
 *
 * The decision for a connection's caller is remembered on the connection
 * (sc_caller.authz_*) until it expires: while it holds, a request costs two
 * compares and a counter, no lock. After that the shared cache is asked (one
 * mutex); when Consul must be asked, the request parks on the worker's
 * authz_waiters (the stage's word holds the lookup's sequence number) for
 * at most SC_AUTHZ_WAIT_MS, until the control thread wakes the worker
 * (SC_WAKE_AUTHZ: sc_stage_authz_wake). Nothing is allowed by default: no answer and no
 * earlier answer is 503 / UNAVAILABLE (authz-unavailable); a denial is 403 /
 * PERMISSION_DENIED (caller-not-allowed) naming Consul's reason.
 */
#include "proxy/stage.h"

#include "authz/authz.h"
#include "tls/tls.h"

#include <string.h>

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    *conf = sc;
    return r->inbound && sc->cfg->tls.authorize == SC_AUTHORIZE_CONSUL;
}

static const char *caller_name(const sc_caller *c)
{
    return c && c->identity ? c->identity : "(no SPIFFE identity)";
}

/* Consul (or the lack of an identity to ask it about) refuses the caller. */
static sc_fail denied(sc_stream *s, const char *note)
{
    SC_STAT_INC(s->w->stats->authz_consul_denied);
    sc_stream_fail_msg(s, "inbound: Consul denied caller %.300s: %.300s", caller_name(sc_stream_caller(s)), note);
    return SC_FAIL_FORBIDDEN;
}

/* No answer from Consul, and no earlier one. */
static sc_fail unavailable(sc_stream *s, const char *why)
{
    SC_STAT_INC(s->w->stats->authz_unavailable);
    sc_stream_fail_msg(s, "inbound: cannot check with Consul whether caller %.300s may call: %.300s",
                       caller_name(sc_stream_caller(s)), why && *why ? why : "no answer");
    return SC_FAIL_AUTHZ_UNAVAILABLE;
}

static void remember(sc_caller *c, const sc_authz_decision *dec)
{
    c->authz_until_ms = dec->until_ms;
    c->authz_allowed = dec->verdict == SC_AUTHZ_ALLOW;
    c->authz_reason = dec->reason;
    c->authz_stale = dec->stale;
}

/* An answer (fresh or stale) for this request: SC_FAIL_NONE = go on. */
static sc_fail apply(sc_stream *s, sc_authz *az, bool allowed, const char *reason, bool stale)
{
    if (stale)
        SC_STAT_INC(s->w->stats->authz_stale);
    if (allowed)
        return SC_FAIL_NONE;
    const char *note = reason && *reason ? reason : "(no reason given)";
    SC_WARN_LIMITED(sc_authz_log_limit(az), "inbound: Consul denied caller %s: %s%s",
                    caller_name(sc_stream_caller(s)), note, stale ? " (its last answer; Consul cannot answer now)" : "");
    return denied(s, note);
}

static sc_stage_verdict verdict(sc_fail f, sc_fail *fail)
{
    *fail = f;
    return f == SC_FAIL_NONE ? SC_STAGE_GO : SC_STAGE_DENY;
}

static sc_stage_verdict admit(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail)
{
    sc_authz *az = ((const sidecar *)conf)->authz;
    sc_caller *c = sc_stream_caller(s);
    if (!az || !c)
        return SC_STAGE_GO; /* not running (sc_sidecar_run starts it before any request) */
    uint64_t now = s->start_ns / 1000000u;
    if (SC_LIKELY(now < c->authz_until_ms)) {
        SC_STAT_INC(s->w->stats->authz_cache_hits);
        if (SC_LIKELY(c->authz_allowed && !c->authz_stale))
            return SC_STAGE_GO;
        return verdict(apply(s, az, c->authz_allowed, c->authz_reason, c->authz_stale), fail);
    }
    if (!c->identity)
        return verdict(denied(s, "the caller's certificate has no SPIFFE identity (URI SAN) to ask Consul about"),
                       fail);
    char serial[SC_AUTHZ_SERIAL_MAX];
    if (!s->down->ssl || sc_tls_peer_serial(s->down->ssl, serial, sizeof(serial)) < 0)
        serial[0] = 0;
    sc_authz_decision dec;
    sc_authz_check(az, s->w->id, c->identity, serial, sc_worker_now_ms(s->w), &dec);
    switch (dec.verdict) {
    case SC_AUTHZ_ALLOW:
    case SC_AUTHZ_DENY:
        SC_STAT_INC(s->w->stats->authz_cache_hits);
        remember(c, &dec);
        return verdict(apply(s, az, dec.verdict == SC_AUTHZ_ALLOW, dec.reason, dec.stale), fail);
    case SC_AUTHZ_WAIT:
        SC_STAT_INC(s->w->stats->authz_cache_misses);
        *word = dec.seq;
        sc_stage_park(s, &s->w->authz_waiters, SC_AUTHZ_WAIT_MS);
        return SC_STAGE_PARK;
    case SC_AUTHZ_UNAVAILABLE:
    default:
        return verdict(unavailable(s, dec.error), fail);
    }
}

static sc_fail timeout(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)conf;
    (void)word;
    return unavailable(s, "Consul did not answer in time");
}

/*
 * The control thread: a lookup this worker waits for ended. Decisions are
 * taken for every waiting request first (each one's failure kind, or
 * SC_FAIL_NONE, left in its word) and acted on afterwards, so that a
 * request ending while another is handled (it leaves `ready` when it is
 * freed) is never touched.
 */
void sc_stage_authz_wake(sc_worker *w)
{
    sc_authz *az = w->sc->authz;
    if (!az)
        return;
    uint64_t now = sc_now_ms();
    sc_link ready;
    sc_list_init(&ready);
    sc_link *l = w->authz_waiters.next;
    while (l != &w->authz_waiters) {
        sc_stream *s = sc_parked_stream(l);
        l = l->next;
        sc_caller *c = sc_stream_caller(s);
        uint64_t *word = sc_parked_word(s);
        sc_authz_decision dec;
        sc_authz_result(az, w->id, c->identity, *word, now, &dec);
        if (dec.verdict == SC_AUTHZ_WAIT)
            continue;
        if (dec.verdict == SC_AUTHZ_UNAVAILABLE) {
            *word = unavailable(s, dec.error);
        } else {
            remember(c, &dec);
            *word = apply(s, az, dec.verdict == SC_AUTHZ_ALLOW, dec.reason, dec.stale);
        }
        sc_list_remove(&s->park_link);
        sc_list_push(&ready, &s->park_link);
    }
    while (!sc_list_empty(&ready)) {
        sc_stream *s = sc_parked_stream(ready.next);
        sc_fail f = (sc_fail)*sc_parked_word(s);
        sc_admit_resume(s, f == SC_FAIL_NONE ? SC_STAGE_GO : SC_STAGE_DENY, f);
    }
}

const sc_stage sc_stage_authz = {
    .name = "consul-intentions",
    .configure = configure,
    .admit = admit,
    .timeout = timeout,
};

/*
 * stage_allow.c: tls.allow on the inbound route. The caller's identity was
 * checked once at the TLS handshake (down_h1.c, sc_caller.denied); every
 * request of a refused caller gets 403 / PERMISSION_DENIED with
 * x-sidecar-reason caller-not-allowed, counted in
 * sidecar_inbound_authz_denied_total.
 */
#include "proxy/stage.h"

#include "sidecar.h"

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    *conf = NULL;
    return r->inbound && sc->cfg->tls.n_allow > 0;
}

static sc_stage_verdict admit(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail)
{
    (void)conf;
    (void)word;
    const sc_caller *c = sc_stream_caller(s);
    if (SC_LIKELY(!c || !c->denied))
        return SC_STAGE_GO;
    SC_STAT_INC(s->w->stats->authz_denied);
    if (c->identity)
        sc_stream_fail_msg(s, "inbound: caller %.300s is not in tls.allow", c->identity);
    else
        s->fail_msg = "inbound: the caller's certificate has no SPIFFE identity; tls.allow needs one";
    *fail = SC_FAIL_FORBIDDEN;
    return SC_STAGE_DENY;
}

const sc_stage sc_stage_allow = {
    .name = "allow",
    .configure = configure,
    .admit = admit,
};

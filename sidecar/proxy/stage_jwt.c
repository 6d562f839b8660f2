/*
 * stage_jwt.c: inbound.jwt on the inbound route (jwt/jwt_runtime.h): the
 * caller's bearer token is checked against the rule for the request path
 * before the rate limits run, so that a limit keyed by a claim sees it.
 *
 * The stage's word: once passed, the verified claims (one reference,
 * dropped in release; NULL without a token), which later stages read
 * through sc_stage_jwt_claim; while parked, the request's sc_jwt_result (in
 * the stream's arena: the common path keeps it on the stack, so a verified
 * request costs the arena nothing).
 *
 *   passes   (verified, or no token where none is required): GO; with
 *            keep_token: false the token's header is removed; the rule's
 *            claim headers are added (the codecs removed every copy the
 *            caller sent, sc_jwt_header_reserved);
 *   pending  (an unknown kid: the issuer's JWKS is being fetched): PARK on
 *            the worker's jwt_waiters for at most the issuer's
 *            fetch_timeout + SC_JWT_PARK_SLACK_MS; the control thread wakes
 *            the workers after every fetch (SC_WAKE_JWT) and the token is
 *            checked again, without waiting a second time;
 *   refused  DENY: 401 / UNAUTHENTICATED with WWW-Authenticate, or 403 /
 *            PERMISSION_DENIED for missing claims or scopes;
 *            x-sidecar-reason names the outcome (jwt-expired, ...).
 */
#include "proxy/stage.h"

#include "core/log.h"
#include "jwt/jwt_runtime.h"
#include "sidecar.h"

#include <string.h>
#include <time.h>

static bool configure(const sc_route *r, const struct sidecar *sc, const void **conf)
{
    *conf = sc;
    return r->inbound && sc->cfg->inbound.jwt;
}

static sc_jwt *jwt_of(const void *conf)
{
    return ((const sidecar *)conf)->jwt;
}

static void check(sc_stream *s, sc_jwt *j, unsigned flags, sc_jwt_result *r)
{
    /* the path with its query: the rule lookup leaves the query out */
    sc_jwt_check(j, s->w->id, s->req.path, s->req.path_len, s->req.hdrs, s->req.n_hdrs, (int64_t)time(NULL), flags, r);
}

/* A passing result: the token's header goes when the rule says so; the claim
 * headers come. false: no memory for them (the request is refused rather
 * than reach the app without the identity it was sent with). */
static bool forward(sc_stream *s, const sc_jwt_result *r)
{
    sc_msg *m = &s->req;
    if (r->n_named && sc_jwt_header_stripped(r->rule, (const char *)m->hdrs[r->named_at].name,
                                             m->hdrs[r->named_at].namelen)) {
        /* the check counted the token header's lines: the usual one goes
         * without a second walk over every header */
        size_t k = r->named_at;
        for (size_t i = k + 1; i < m->n_hdrs; i++)
            if (r->n_named == 1 ||
                !sc_jwt_header_stripped(r->rule, (const char *)m->hdrs[i].name, m->hdrs[i].namelen))
                m->hdrs[k++] = m->hdrs[i];
        m->n_hdrs = k;
    }
    if (r->outcome != SC_JWT_OK)
        return true;
    sc_jwt_header h[SC_JWT_MAX_FORWARD];
    size_t n = sc_jwt_forward_headers(r, h, SC_ARRAY_LEN(h));
    /* not copied: the names are the rule's (lower-case, configuration) and
     * the values the claims', which the stage's word holds until release */
    for (size_t i = 0; i < n; i++)
        if (sc_msg_add_ref(s, m, h[i].name, h[i].name_len, h[i].value, h[i].value_len) < 0)
            return false;
    return true;
}

/* A refused result: the answer's status, headers and text; the result is cleared. */
static sc_fail refuse(sc_stream *s, sc_jwt *j, sc_jwt_result *r)
{
    sc_jwt_refusal ref;
    sc_jwt_refusal_of(j, r, &ref);
    const sc_caller *c = sc_stream_caller(s);
    SC_WARN_LIMITED(sc_jwt_log_limit(j), "inbound: JWT refused (%s) for %.*s %.*s from %s: %s", ref.reason,
                    (int)SC_MIN(s->req.method_len, 16), s->req.method, (int)SC_MIN(s->req.path_len, 200), s->req.path,
                    c && c->identity ? c->identity : s->down ? s->down->peer_text : "(gone)", r->why);
    sc_stream_fail_msg(s, "inbound: %s", ref.message);
    sc_stream_fail_header(s, "x-sidecar-reason", ref.reason);
    if (!s->req.is_grpc)
        sc_stream_fail_header(s, "www-authenticate", ref.www_authenticate);
    sc_jwt_result_clear(r);
    return ref.http_status == 403 ? SC_FAIL_JWT_FORBIDDEN : SC_FAIL_JWT_UNAUTHENTICATED;
}

/* A final result (passes or refused): SC_FAIL_NONE = go on. */
static sc_fail settle_result(sc_stream *s, sc_jwt *j, sc_jwt_result *r)
{
    if (sc_jwt_outcome_passes(r->outcome)) {
        if (forward(s, r))
            return SC_FAIL_NONE;
        sc_jwt_result_clear(r);
        return SC_FAIL_NO_MEMORY;
    }
    return refuse(s, j, r);
}

static uint64_t park_ms(const sc_stream *s, const sc_jwt_result *r)
{
    const sc_jwt_config *cfg = s->w->sc->cfg->inbound.jwt;
    uint64_t ft = r->wait_issuer < cfg->n_issuers ? cfg->issuers[r->wait_issuer].fetch_timeout_ms : 0;
    return ft + SC_JWT_PARK_SLACK_MS;
}

/* A passing result's claims become the stage's word (the reference moves). */
static void keep_claims(sc_jwt_result *r, uint64_t *word)
{
    *word = (uint64_t)(uintptr_t)r->claims;
    r->claims = NULL;
}

static sc_stage_verdict admit(sc_stream *s, const void *conf, uint64_t *word, sc_fail *fail)
{
    sc_jwt *j = jwt_of(conf);
    if (!j)
        return SC_STAGE_GO; /* not running (sc_sidecar_run starts it before any request) */
    sc_jwt_result r;
    check(s, j, 0, &r);
    if (r.outcome == SC_JWT_PENDING) {
        sc_jwt_result *kept = sc_arena_alloc(&s->arena, sizeof(*kept));
        if (!kept) {
            sc_jwt_result_clear(&r);
            *fail = SC_FAIL_NO_MEMORY;
            return SC_STAGE_DENY;
        }
        *kept = r;
        *word = (uint64_t)(uintptr_t)kept;
        sc_stage_park(s, &s->w->jwt_waiters, park_ms(s, kept));
        return SC_STAGE_PARK;
    }
    *fail = settle_result(s, j, &r);
    if (*fail != SC_FAIL_NONE)
        return SC_STAGE_DENY;
    keep_claims(&r, word);
    return SC_STAGE_GO;
}

/* Waited for keys in vain: checked once more without waiting (a fetch may
 * have ended just now); a token that would pass is still refused here (a
 * timeout can only fail), which the next request will not be. */
static sc_fail timeout(sc_stream *s, const void *conf, uint64_t *word)
{
    sc_jwt *j = jwt_of(conf);
    sc_jwt_result *r = (sc_jwt_result *)(uintptr_t)*word;
    *word = 0;
    sc_jwt_result_clear(r);
    check(s, j, SC_JWT_NO_WAIT, r);
    if (sc_jwt_outcome_passes(r->outcome)) {
        sc_jwt_result_clear(r);
        r->outcome = SC_JWT_UNKNOWN_KEY;
        snprintf(r->why, sizeof(r->why), "the issuer's keys did not arrive in time");
    }
    return refuse(s, j, r);
}

static void cancel(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)s;
    (void)conf;
    sc_jwt_result_clear((sc_jwt_result *)(uintptr_t)*word);
    *word = 0;
}

static void release(sc_stream *s, const void *conf, uint64_t *word)
{
    (void)s;
    (void)conf;
    sc_jwt_claims_unref((sc_jwt_claims *)(uintptr_t)*word);
    *word = 0;
}

void sc_stage_jwt_wake(sc_worker *w)
{
    sc_jwt *j = w->sc->jwt;
    if (!j)
        return;
    /* Decide first, resume afterwards: a resumed stream may end and free
     * another one still on the list (as in stage_authz.c). */
    sc_link ready;
    sc_list_init(&ready);
    sc_link *l = w->jwt_waiters.next;
    while (l != &w->jwt_waiters) {
        sc_stream *s = sc_parked_stream(l);
        l = l->next;
        sc_jwt_result *r = (sc_jwt_result *)(uintptr_t)*sc_parked_word(s);
        if (!sc_jwt_wait_over(j, r))
            continue;
        sc_jwt_result_clear(r);
        check(s, j, SC_JWT_NO_WAIT, r);
        sc_list_remove(&s->park_link);
        sc_list_push(&ready, &s->park_link);
    }
    while (!sc_list_empty(&ready)) {
        sc_stream *s = sc_parked_stream(ready.next);
        uint64_t *word = sc_parked_word(s);
        sc_jwt_result *r = (sc_jwt_result *)(uintptr_t)*word;
        sc_fail f = settle_result(s, j, r);
        if (f == SC_FAIL_NONE)
            keep_claims(r, word);
        else
            *word = 0;
        sc_admit_resume(s, f == SC_FAIL_NONE ? SC_STAGE_GO : SC_STAGE_DENY, f);
    }
}

const char *sc_stage_jwt_claim(const sc_stream *s, const char *name, size_t *len)
{
    const sc_pipeline *p = s->pipe;
    for (unsigned i = 0; p && i < p->n_stages && i < s->stage_pos; i++) {
        if (p->stage[i] != &sc_stage_jwt)
            continue;
        const sc_jwt_claim_entry *c = sc_jwt_claims_find((const sc_jwt_claims *)(uintptr_t)s->stage_word[i], name);
        if (c)
            *len = strlen(c->value);
        return c ? c->value : NULL;
    }
    return NULL;
}

const sc_stage sc_stage_jwt = {
    .name = "jwt",
    .configure = configure,
    .admit = admit,
    .timeout = timeout,
    .cancel = cancel,
    .release = release,
};

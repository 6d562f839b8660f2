/*
 * consul_connect.c: Consul Connect in the agent client (see consul.h). With
 * tls.source: consul, blocking query loops on the Connect roots and on the
 * leaf certificate of our service hand the material to tls_runtime: a new
 * leaf is used only once the roots in use vouch for it, a replacement after
 * a grace period so peers learn a new root first. With tls.authorize:
 * consul, POST /v1/agent/connect/authorize for authz/authz.c.
 */
#include "discovery/consul_internal.h"

#include "core/log.h"
#include "core/prom.h"
#include "tls/tls.h"
#include "tls/tls_runtime.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define LEAF_GRACE_S 2.0        /* a replacement leaf waits this long, so peers learn a new root first */
#define LEAF_ROOTS_WAIT_S 10.0  /* a leaf the roots do not vouch for waits this long for roots, then: an error */

/* ---- Connect certificates (tls.source: consul) ---- */

static void cwatch_start(cwatch *w);

/* Hands the state to tls_runtime (/certs, /ready). err NULL means no error, except
 * that a query still failing keeps its error shown. */
static void connect_note(sc_consul *c, const char *err)
{
    const cwatch *ws[] = {&c->leaf_w, &c->roots_w};
    for (size_t i = 0; !err && i < SC_ARRAY_LEN(ws); i++)
        if (ws[i]->failures)
            err = ws[i]->note;
    sc_tls_runtime_connect_note(c->leaf_serial, c->n_roots, c->leaf_w.last_index, c->roots_w.last_index, err);
}

static void cwatch_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    cwatch_start(SC_CONTAINER_OF(t, cwatch, timer));
}

/* Advice for a refused Connect query, "" when none: the leaf needs service:write on our
 * service (roots need no permission). buf holds the text when it is built here. */
static const char *connect_hint(const cwatch *w, const creq *r, char *buf, size_t cap)
{
    if (!r)
        return "";
    if (w == &w->c->leaf_w && r->result == CURLE_OK && r->status == 403 &&
        !sc_consul_req_body_has(r, "ACL not found")) {
        snprintf(buf, cap, " (the ACL token lacks service:write on '%s', which Consul requires to hand out "
                 "the service's Connect leaf certificate)", w->c->cfg->service.name);
        return buf;
    }
    return sc_consul_req_hint(r);
}

static void cwatch_fail(cwatch *w, const creq *r, const char *err)
{
    sc_consul *c = w->c;
    w->errors_total++;
    w->failures++;
    w->index = 0;
    bool same = strcmp(err, w->last_error) == 0;
    snprintf(w->last_error, sizeof(w->last_error), "%s", err);
    uint64_t ms = sc_consul_backoff(c, w->failures);
    char hb[320];
    const char *h = connect_hint(w, r, hb, sizeof(hb));
    if (w->failures == 1 || !same)
        SC_WARN("tls: fetching the Connect %s from Consul failed: %s%s; %s, retrying in %llums", w->what, err, h,
                c->cert_pem ? "the current certificate material stays in use"
                            : "no certificate yet (inbound TLS refused, not ready)",
                (unsigned long long)ms);
    else
        SC_DEBUG("tls: Connect %s fetch failed again (%u in a row): %s", w->what, w->failures, err);
    snprintf(w->note, sizeof(w->note), "%s: %s%s", w->what, err, h);
    connect_note(c, w->note);
    sc_consul_timer_again(c, &w->timer, ms);
}

/* Makes cert + key + roots current. false when refused (logged). */
static bool connect_apply(sc_consul *c, const char *cert, const char *key, const char *ca, const char *what)
{
    char err[600];
    int rv = sc_tls_runtime_connect_set(c->sc, cert, key, ca, err, sizeof(err));
    if (rv < 0) {
        SC_ERROR("tls: the new Connect %s from Consul is refused, the old material stays in use: %s", what, err);
        connect_note(c, err);
        return false;
    }
    connect_note(c, NULL);
    return true;
}

/* Forgets the leaf waiting to be used. */
static void drop_new_leaf(sc_consul *c)
{
    ev_timer_stop(c->loop, &c->leaf_timer);
    free(c->new_cert);
    free(c->new_key);
    c->new_cert = c->new_key = NULL;
    c->new_unverified = false;
}

/* Asks for the roots now (a query that does not block) rather than when the blocking one returns. */
static void roots_refetch(sc_consul *c)
{
    cwatch *w = &c->roots_w;
    if (w->failures)
        return;     /* retrying with backoff, and that query does not block */
    sc_consul_req_cancel(&w->req);
    ev_timer_stop(c->loop, &w->timer);
    w->index = 0;
    cwatch_start(w);
}

static void take_new_leaf(sc_consul *c);

/*
 * When to use the leaf waiting in new_cert. Only once the roots in use vouch
 * for it (leaf + its intermediates verify against them): after a CA rotation
 * the new leaf can come before the roots that list the new CA, and peers
 * holding the same roots would refuse it. Such a leaf waits for new roots
 * (asked for at once, unless they just came) and is logged as an error after
 * LEAF_ROOTS_WAIT_S; it stays parked, so roots that vouch for it later still
 * bring it in. A leaf that verifies: the first at once, a replacement after
 * LEAF_GRACE_S (peers learn a new root first).
 */
static void leaf_schedule(sc_consul *c, bool roots_just_came)
{
    if (!c->new_cert || !c->ca_pem)
        return;     /* no roots yet: their first answer brings the leaf in */
    char verr[400];
    if (sc_tls_chain_verify_pem(c->new_cert, c->ca_pem, 0, verr, sizeof(verr)) < 0) {
        char note[800];
        snprintf(note, sizeof(note), "the new Connect leaf certificate (serial %s) does not verify against the %zu "
                 "trusted root(s): %s", c->new_serial, c->n_roots, verr);
        connect_note(c, note);
        if (c->new_unverified) {
            SC_DEBUG("tls: the waiting Connect leaf certificate (serial %s) still does not verify: %s", c->new_serial,
                     verr);
            return;
        }
        c->new_unverified = true;
        /* INFO: during a CA rotation the leaf often comes a moment before the roots */
        SC_INFO("tls: %s; not using it before roots that vouch for it arrive (%s; waiting up to %.0fs); %s", note,
                roots_just_came      ? "these roots just came"
                : c->roots_w.failures ? "the roots query is failing and retries with backoff"
                                      : "asking Consul for the roots now",
                LEAF_ROOTS_WAIT_S,
                c->cert_pem ? "the current certificate stays in use" : "no certificate yet (not ready)");
        sc_consul_timer_again(c, &c->leaf_timer, (uint64_t)(LEAF_ROOTS_WAIT_S * 1000));
        if (!roots_just_came)
            roots_refetch(c);
        return;
    }
    bool waited = c->new_unverified;
    c->new_unverified = false;
    ev_timer_stop(c->loop, &c->leaf_timer);
    if (!c->cert_pem) {
        if (waited)
            SC_INFO("tls: the Connect leaf certificate (serial %s) verifies against the new roots", c->new_serial);
        take_new_leaf(c);
        return;
    }
    SC_INFO("tls: the new Connect leaf certificate (serial %s) verifies against the %zu trusted root(s)%s; in use in "
            "%.0fs (peers learn a new root first)", c->new_serial, c->n_roots, waited ? " (new roots)" : "",
            LEAF_GRACE_S);
    sc_consul_timer_again(c, &c->leaf_timer, (uint64_t)(LEAF_GRACE_S * 1000));
}

static void take_new_leaf(sc_consul *c)
{
    if (!c->new_cert || !c->ca_pem)
        return;
    char verr[400];
    if (sc_tls_chain_verify_pem(c->new_cert, c->ca_pem, 0, verr, sizeof(verr)) < 0) {
        if (!c->new_unverified) {   /* the roots changed under the grace period */
            leaf_schedule(c, false);
            return;
        }
        /* LEAF_ROOTS_WAIT_S is over: an error, but the leaf stays parked for roots that may still come */
        char note[800];
        snprintf(note, sizeof(note), "the new Connect leaf certificate (serial %s) does not verify against the %zu "
                 "trusted root(s) after waiting %.0fs for new roots: %s", c->new_serial, c->n_roots,
                 LEAF_ROOTS_WAIT_S, verr);
        c->leaf_w.errors_total++;
        SC_ERROR("tls: %s; it is not used (%s) until roots that vouch for it arrive", note,
                 c->cert_pem ? "the old material stays in use" : "no certificate yet: not ready");
        connect_note(c, note);
        return;
    }
    if (connect_apply(c, c->new_cert, c->new_key, c->ca_pem, "leaf certificate")) {
        free(c->cert_pem);
        free(c->key_pem);
        c->cert_pem = c->new_cert;
        c->key_pem = c->new_key;
        snprintf(c->leaf_serial, sizeof(c->leaf_serial), "%s", c->new_serial);
        c->leaf_not_after = c->new_not_after;
        c->leaf_updates_total++;
        connect_note(c, NULL);
    } else {
        c->leaf_w.errors_total++;
        free(c->new_cert);
        free(c->new_key);
    }
    c->new_cert = c->new_key = NULL;
    c->new_unverified = false;
    ev_timer_stop(c->loop, &c->leaf_timer);
}

static void leaf_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
    (void)loop;
    (void)revents;
    take_new_leaf(SC_CONTAINER_OF(t, sc_consul, leaf_timer));
}

/* An answer of either query; false when it cannot be used. */
static bool cwatch_answer(cwatch *w, creq *r, char *err, size_t errlen)
{
    sc_consul *c = w->c;
    if (w == &c->roots_w) {
        char *ca = NULL, active[128];
        size_t n = 0;
        if (sc_consul_parse_roots(r->body, r->len, &ca, &n, active, sizeof(active), err, errlen) < 0)
            return false;
        if (c->ca_pem && strcmp(ca, c->ca_pem) == 0) {
            free(ca);
            return true;
        }
        SC_INFO("tls: Consul Connect roots: %zu root(s), active %s (index %llu)", n, active[0] ? active : "?",
                (unsigned long long)r->index);
        if (c->cert_pem && !connect_apply(c, c->cert_pem, c->key_pem, ca, "roots")) {
            w->errors_total++;
            free(ca);
            return true;    /* refused and logged; not a transport error */
        }
        char verr[400];
        if (c->cert_pem && sc_tls_chain_verify_pem(c->cert_pem, ca, 0, verr, sizeof(verr)) < 0)
            SC_WARN("tls: the new Connect roots do not vouch for our leaf certificate in use (serial %s): %s; peers "
                    "that trust only these roots refuse it until Consul hands out a new leaf", c->leaf_serial, verr);
        free(c->ca_pem);
        c->ca_pem = ca;
        c->n_roots = n;
        c->roots_updates_total++;
        connect_note(c, NULL);
        if (c->new_cert && (!c->cert_pem || c->new_unverified))
            leaf_schedule(c, true);     /* a leaf that came before these roots */
        return true;
    }
    char *cert = NULL, *key = NULL, serial[128], uri[512];
    if (sc_consul_parse_leaf(r->body, r->len, &cert, &key, serial, sizeof(serial), uri, sizeof(uri), err,
                             errlen) < 0)
        return false;
    if (c->cert_pem && strcmp(cert, c->cert_pem) == 0 && strcmp(key, c->key_pem) == 0) {
        /* the agent's latest answer is the leaf in use: forget one still waiting */
        if (c->new_cert)
            drop_new_leaf(c);
        free(cert);
        free(key);
        return true;
    }
    if (c->new_cert && strcmp(cert, c->new_cert) == 0 && strcmp(key, c->new_key) == 0) {
        free(cert);
        free(key);
        return true;
    }
    /* checked now (PEM, key matches, dates), so a bad answer is refused at once and
     * the leaf waiting for LEAF_GRACE_S is a good one */
    char verr[512];
    sc_tls_ctx_opts vo = {.role = SC_TLS_ROLE_SERVER, .cert_pem = cert, .key_pem = key};
    sc_tls_ctx *vc = sc_tls_ctx_new(&vo, verr, sizeof(verr));
    const sc_tls_cert_info *ci = vc ? sc_tls_ctx_cert(vc) : NULL;
    sc_tls_cert_state vst = ci ? sc_tls_cert_check(ci, (int64_t)time(NULL), 0) : SC_TLS_CERT_VALID;
    if (vc && vst != SC_TLS_CERT_VALID)
        snprintf(verr, sizeof(verr), "the certificate (serial %s) is %s (valid %s to %s)", ci->serial,
                 sc_tls_cert_state_name(vst), ci->not_before_iso, ci->not_after_iso);
    bool valid = vc && vst == SC_TLS_CERT_VALID;
    int64_t not_after = ci ? ci->not_after : 0;
    sc_tls_ctx_unref(vc);
    if (!valid) {
        SC_ERROR("tls: the new Connect leaf certificate from Consul (serial %s, index %llu) is refused, the "
                 "old material stays in use: %s", serial[0] ? serial : "?", (unsigned long long)r->index, verr);
        w->errors_total++;
        connect_note(c, verr);
        free(cert);
        free(key);
        return true;    /* refused and logged; the query loop goes on */
    }
    drop_new_leaf(c);
    c->new_cert = cert;
    c->new_key = key;
    c->new_not_after = not_after;
    snprintf(c->new_serial, sizeof(c->new_serial), "%s", serial);
    SC_INFO("tls: %sConsul Connect leaf certificate for %s (serial %s, index %llu)", c->cert_pem ? "new " : "", uri,
            serial, (unsigned long long)r->index);
    leaf_schedule(c, false);    /* the first at once, a replacement after LEAF_GRACE_S; both once the roots vouch */
    return true;
}

static void cwatch_done(creq *r)
{
    cwatch *w = r->owner;
    sc_consul *c = w->c;
    w->req = NULL;
    char err[400];
    sc_consul_req_error(r, err, sizeof(err));
    if (!err[0] && !r->has_index)
        snprintf(err, sizeof(err), "the answer has %s X-Consul-Index header", r->bad_index ? "an invalid" : "no");
    /* while the answer is handled this query is not failing (what it notes replaces its error);
     * an unusable answer continues the backoff where it was */
    unsigned failures = w->failures;
    if (!err[0]) {
        w->failures = 0;
        if (failures)
            connect_note(c, NULL);
        cwatch_answer(w, r, err, sizeof(err));
    }
    if (err[0]) {
        w->failures = failures;
        cwatch_fail(w, r, err);
        return;
    }
    w->answers_total++;
    if (failures)
        SC_INFO("tls: fetching the Connect %s works again after %u failure(s)", w->what, failures);
    w->last_error[0] = 0;
    w->last_index = r->index;
    w->index = sc_consul_index_next(w->sent_index, r->index);
    uint64_t wait = sc_consul_bucket_take(&w->bucket, sc_now_ms());
    if (wait)
        sc_consul_timer_again(c, &w->timer, wait);
    else
        cwatch_start(w);
}

static void cwatch_start(cwatch *w)
{
    sc_consul *c = w->c;
    if (w->req)
        return;
    char path[700], ix[128] = "", wt[32];
    w->sent_index = w->index;
    if (w->index) {
        sc_duration_format(c->cfg->consul.wait_ms, wt, sizeof(wt));
        snprintf(ix, sizeof(ix), "?index=%llu&wait=%s", (unsigned long long)w->index, wt);
    }
    if (w == &c->roots_w) {
        snprintf(path, sizeof(path), "/v1/agent/connect/ca/roots%s", ix);
    } else {
        char es[400];
        if (sc_consul_escape(c->cfg->service.name, es, sizeof(es)) < 0) {
            cwatch_fail(w, NULL, "the service name is too long");
            return;
        }
        snprintf(path, sizeof(path), "/v1/agent/connect/ca/leaf/%s%s", es, ix);
    }
    uint64_t timeout = w->index ? sc_consul_read_timeout_ms(c->cfg->consul.wait_ms) : WRITE_TIMEOUT_MS;
    w->req = sc_consul_req_start(c, "GET", path, w == &c->leaf_w, NULL, timeout, cwatch_done, w);
    if (!w->req)
        cwatch_fail(w, NULL, "cannot start a request (out of memory?)");
}

void sc_consul_connect_init(sc_consul *c)
{
    cwatch *ws[] = {&c->roots_w, &c->leaf_w};
    const char *names[] = {"roots", "leaf certificate"};
    for (int i = 0; i < 2; i++) {
        ws[i]->c = c;
        ws[i]->what = names[i];
        sc_consul_bucket_init(&ws[i]->bucket, BUCKET_BURST, BUCKET_PER_S, sc_now_ms());
        ev_init(&ws[i]->timer, cwatch_timer_cb);
    }
    ev_init(&c->leaf_timer, leaf_timer_cb);
    c->connect = c->cfg->tls.source == SC_TLS_SOURCE_CONSUL && c->cfg->service.name;
}

/* /stats: the Connect certificate source. Plain fields, read where they are
 * written: the admin endpoint runs on the control loop, like this client. */
void sc_consul_connect_render_stats(const sc_consul *c, FILE *f)
{
    if (!c->connect)
        return;
    sc_prom_i64(f, "sidecar_connect_ready", "gauge",
                "1 once a Connect leaf certificate is in use.", c->cert_pem != NULL);
    sc_prom_u64(f, "sidecar_connect_leaf_updates_total", "counter",
                "Connect leaf certificates put in use.", c->leaf_updates_total);
    sc_prom_u64(f, "sidecar_connect_roots_updates_total", "counter",
                "Connect root sets put in use.", c->roots_updates_total);
    sc_prom_head(f, "sidecar_connect_errors_total", "counter", "Connect queries that failed and answers refused.");
    fprintf(f, "sidecar_connect_errors_total{what=\"leaf\"} %llu\nsidecar_connect_errors_total{what=\"roots\"} %llu\n",
            (unsigned long long)c->leaf_w.errors_total, (unsigned long long)c->roots_w.errors_total);
    sc_prom_u64(f, "sidecar_connect_roots", "gauge", "Trusted Connect roots.", c->n_roots);
    sc_prom_i64(f, "sidecar_connect_leaf_pending", "gauge",
                "1 while a new leaf certificate waits (grace period, or roots that vouch for it).",
                c->new_cert != NULL);
    if (c->cert_pem)
        sc_prom_i64(f, "sidecar_connect_leaf_expiry_seconds", "gauge",
                    "Seconds until the Connect leaf certificate in use expires (negative once expired).",
                    (long long)(c->leaf_not_after - (int64_t)time(NULL)));
}


/* ---- Connect authorization (tls.authorize: consul; authz/authz.c decides what to do) ---- */

static void authorize_done(creq *r)
{
    char err[400];
    sc_consul_req_error(r, err, sizeof(err));
    if (err[0]) {
        size_t n = strlen(err);
        snprintf(err + n, sizeof(err) - n, "%s", sc_consul_req_hint(r));
    }
    long status = r->result == CURLE_OK && !r->too_big ? r->status : 0;
    r->user_done(r->user_arg, status, r->body ? r->body : "", r->len, err);
}

int sc_consul_authorize(sc_consul *c, const char *body, uint64_t timeout_ms,
                        sc_consul_authorize_cb done, void *arg)
{
    if (!c || !body || !done)
        return -EINVAL;
    creq *r = sc_consul_req_start(c, "POST", "/v1/agent/connect/authorize", true, body, timeout_ms,
                                  authorize_done, NULL);
    if (!r)
        return -EIO;
    r->user_done = done;
    r->user_arg = arg;
    return 0;
}

void sc_consul_connect_start(sc_consul *c)
{
    if (c->connect) {
        cwatch_start(&c->roots_w);
        cwatch_start(&c->leaf_w);
    }
}

void sc_consul_connect_retry_now(sc_consul *c)
{
    cwatch *cw[] = {&c->roots_w, &c->leaf_w};
    for (size_t i = 0; c->connect && i < SC_ARRAY_LEN(cw); i++)
        if (cw[i]->failures && !cw[i]->req)
            sc_consul_timer_again(c, &cw[i]->timer, 0);
}

void sc_consul_connect_stop(sc_consul *c)
{
    ev_timer_stop(c->loop, &c->roots_w.timer);
    ev_timer_stop(c->loop, &c->leaf_w.timer);
    ev_timer_stop(c->loop, &c->leaf_timer);
    free(c->ca_pem);
    free(c->cert_pem);
    free(c->key_pem);
    free(c->new_cert);
    free(c->new_key);
    c->ca_pem = c->cert_pem = c->key_pem = c->new_cert = c->new_key = NULL;
}

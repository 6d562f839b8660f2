/*
 * jwt.c: tokens, claims and refusals (see jwt.h for the rules and why
 * libcjose).
 */
#include "jwt/jwt.h"

#include "http/grpc.h"
#include "jwt/jwt_internal.h"

#include <cjose/cjose.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>

#define HEADER_MAX 2048          /* decoded JOSE header */
#define SIG_MAX (SC_JWKS_MAX_RSA_BITS / 8)

const char *sc_jwt_outcome_name(sc_jwt_outcome o)
{
    switch (o) {
    case SC_JWT_OK: return "ok";
    case SC_JWT_SKIPPED: return "skipped";
    case SC_JWT_ANONYMOUS: return "anonymous";
    case SC_JWT_PENDING: return "pending";
    case SC_JWT_MISSING: return "missing";
    case SC_JWT_MALFORMED: return "malformed";
    case SC_JWT_ALG_REFUSED: return "alg_refused";
    case SC_JWT_UNKNOWN_ISSUER: return "unknown_issuer";
    case SC_JWT_UNKNOWN_KEY: return "unknown_key";
    case SC_JWT_BAD_SIGNATURE: return "bad_signature";
    case SC_JWT_EXPIRED: return "expired";
    case SC_JWT_NOT_YET_VALID: return "not_yet_valid";
    case SC_JWT_WRONG_AUDIENCE: return "wrong_audience";
    case SC_JWT_CLAIMS: return "claims_missing";
    case SC_JWT_OUTCOMES: break;
    }
    return "unknown";
}

/* ---- parsing ---- */

void sc_jwt_token_clear(sc_jwt_token *t)
{
    if (!t)
        return;
    free(t->sig);
    if (t->payload)
        json_decref(t->payload);
    memset(t, 0, sizeof(*t));
}

/* Decodes one segment into a new buffer (NUL terminated for JSON). */
static uint8_t *decode_segment(const char *s, size_t len, size_t cap, size_t *out_len)
{
    if (sc_jwt_b64url_decoded_len(len) > cap)
        return NULL;
    uint8_t *b = malloc(sc_jwt_b64url_decoded_len(len) + 1);
    if (!b)
        return NULL;
    long n = sc_jwt_b64url_decode(s, len, b, sc_jwt_b64url_decoded_len(len));
    if (n < 0) {
        free(b);
        return NULL;
    }
    b[n] = 0;
    *out_len = (size_t)n;
    return b;
}

static json_t *decode_json_object(const char *seg, size_t len, size_t cap, const char *what, char *why,
                                  size_t whylen)
{
    size_t n = 0;
    uint8_t *raw = decode_segment(seg, len, cap, &n);
    if (!raw) {
        sc_jwt_set_err(why, whylen, "the %s is not base64url (RFC 7515: URL-safe alphabet, no padding) or too large",
                       what);
        return NULL;
    }
    json_error_t je;
    json_t *o = json_loadb((const char *)raw, n, JSON_REJECT_DUPLICATES, &je);
    free(raw);
    if (!o || !json_is_object(o)) {
        char pt[100];
        sc_jwt_set_err(why, whylen, "the %s is not a JSON object%s%s", what, o ? "" : ": ",
                       o ? "" : sc_jwt_printable(je.text, strlen(je.text), pt, sizeof(pt)));
        if (o)
            json_decref(o);
        return NULL;
    }
    return o;
}

static bool is_time(json_t *v)
{
    return !v || (json_is_number(v) && isfinite(json_number_value(v)));
}

static sc_jwt_outcome parse_header(const char *seg, size_t len, sc_jwt_token *t, char *why, size_t whylen)
{
    json_t *h = decode_json_object(seg, len, HEADER_MAX, "JOSE header", why, whylen);
    if (!h)
        return SC_JWT_MALFORMED;
    sc_jwt_outcome o = SC_JWT_MALFORMED;
    json_t *alg = json_object_get(h, "alg");
    json_t *kid = json_object_get(h, "kid");
    if (!json_is_string(alg)) {
        sc_jwt_set_err(why, whylen, "the header has no \"alg\" string");
        goto out;
    }
    sc_jwt_printable(json_string_value(alg), json_string_length(alg), t->alg_name, sizeof(t->alg_name));
    if (strcasecmp(json_string_value(alg), "none") == 0) {
        sc_jwt_set_err(why, whylen, "alg \"none\" (an unsigned token) is never accepted");
        o = SC_JWT_ALG_REFUSED;
        goto out;
    }
    t->alg = sc_jwt_alg_from_name(json_string_value(alg), json_string_length(alg));
    if (!t->alg) {
        sc_jwt_set_err(why, whylen, "alg \"%s\" is not supported", t->alg_name);
        o = SC_JWT_ALG_REFUSED;
        goto out;
    }
    if (json_object_get(h, "crit")) {
        sc_jwt_set_err(why, whylen, "the header has \"crit\" extensions, which are not supported");
        goto out;
    }
    if (kid) {
        size_t kl = json_string_length(kid);
        if (!json_is_string(kid) || kl == 0 || kl > SC_JWKS_MAX_KID || strlen(json_string_value(kid)) != kl) {
            sc_jwt_set_err(why, whylen, "\"kid\" must be a string of 1 to %d bytes", SC_JWKS_MAX_KID);
            goto out;
        }
        memcpy(t->kid, json_string_value(kid), kl + 1);
        t->has_kid = true;
    }
    o = SC_JWT_OK;
out:
    json_decref(h);
    return o;
}

static sc_jwt_outcome check_payload_types(json_t *p, char *why, size_t whylen)
{
    json_t *iss = json_object_get(p, "iss");
    json_t *aud = json_object_get(p, "aud");
    if (iss && (!json_is_string(iss) || strlen(json_string_value(iss)) != json_string_length(iss))) {
        sc_jwt_set_err(why, whylen, "\"iss\" is not a string");
        return SC_JWT_MALFORMED;
    }
    if (aud && !json_is_string(aud)) {
        bool ok = json_is_array(aud);
        size_t i;
        json_t *a;
        json_array_foreach(aud, i, a) ok = ok && json_is_string(a);
        if (!ok) {
            sc_jwt_set_err(why, whylen, "\"aud\" is neither a string nor an array of strings");
            return SC_JWT_MALFORMED;
        }
    }
    static const char *const times[] = {"exp", "nbf", "iat"};
    for (size_t i = 0; i < SC_ARRAY_LEN(times); i++)
        if (!is_time(json_object_get(p, times[i]))) {
            sc_jwt_set_err(why, whylen, "\"%s\" is not a number (seconds since 1970)", times[i]);
            return SC_JWT_MALFORMED;
        }
    return SC_JWT_OK;
}

sc_jwt_outcome sc_jwt_token_parse(const char *tok, size_t len, uint32_t max_bytes, sc_jwt_token *t, char *why,
                                  size_t whylen)
{
    memset(t, 0, sizeof(*t));
    if (len > max_bytes) {
        sc_jwt_set_err(why, whylen, "the token is %zu bytes; at most %u are accepted (jwt.max_token_bytes)", len,
                       max_bytes);
        return SC_JWT_MALFORMED;
    }
    size_t dots[4], nd = 0;
    for (size_t i = 0; i < len; i++)
        if (tok[i] == '.') {
            if (nd == SC_ARRAY_LEN(dots)) {
                nd++;
                break;
            }
            dots[nd++] = i;
        }
    if (nd == 4) {
        sc_jwt_set_err(why, whylen, "an encrypted token (JWE) is not supported; a signed JWT (JWS) is needed");
        return SC_JWT_MALFORMED;
    }
    if (nd != 2) {
        sc_jwt_set_err(why, whylen, "not a JWT: %s%zu segments where a signed token has 3 (header.payload.signature)",
                       nd > 4 ? "more than " : "", nd > 4 ? (size_t)5 : nd + 1);
        return SC_JWT_MALFORMED;
    }
    sc_jwt_outcome o = parse_header(tok, dots[0], t, why, whylen);
    if (o != SC_JWT_OK)
        goto fail;
    o = SC_JWT_MALFORMED;
    t->payload = decode_json_object(tok + dots[0] + 1, dots[1] - dots[0] - 1, max_bytes, "payload", why, whylen);
    if (!t->payload)
        goto fail;
    if ((o = check_payload_types(t->payload, why, whylen)) != SC_JWT_OK)
        goto fail;
    o = SC_JWT_MALFORMED;
    size_t sl = len - dots[1] - 1;
    if (sc_jwt_b64url_decoded_len(sl) > SIG_MAX) {
        sc_jwt_set_err(why, whylen, "the signature is longer than any supported key makes");
        goto fail;
    }
    t->sig = decode_segment(tok + dots[1] + 1, sl, SIG_MAX, &t->sig_len);
    if (!t->sig) {
        sc_jwt_set_err(why, whylen, "the signature is not base64url");
        goto fail;
    }
    t->text = tok;
    t->text_len = len;
    t->signing_input = tok;
    t->signing_len = dots[1];
    t->iss = json_string_value(json_object_get(t->payload, "iss"));
    return SC_JWT_OK;
fail:
    sc_jwt_token_clear(t);
    return o;
}

/* ---- claims the issuer decides ---- */

static void alg_list(uint32_t algs, char *out, size_t cap)
{
    size_t k = 0;
    out[0] = 0;
    for (uint32_t b = 1; b && b <= SC_JWT_HS512; b <<= 1)
        if ((algs & b) && k < cap)
            k += (size_t)snprintf(out + k, cap - k, "%s%s", k ? ", " : "", sc_jwt_alg_name(b));
}

static bool aud_matches(json_t *aud, const sc_jwt_issuer_cfg *iss)
{
    for (size_t i = 0; i < iss->n_audiences; i++) {
        if (json_is_string(aud) && strcmp(json_string_value(aud), iss->audiences[i]) == 0)
            return true;
        size_t k;
        json_t *a;
        json_array_foreach(aud, k, a) if (strcmp(json_string_value(a), iss->audiences[i]) == 0) return true;
    }
    return false;
}

sc_jwt_outcome sc_jwt_token_check_claims(const sc_jwt_token *t, const sc_jwt_issuer_cfg *iss, int64_t now_unix,
                                         char *why, size_t whylen)
{
    if (!(t->alg & iss->algorithms)) {
        char list[96];
        alg_list(iss->algorithms, list, sizeof(list));
        sc_jwt_set_err(why, whylen, "alg %s is not one of issuer %s's algorithms (%s)", t->alg_name, iss->name, list);
        return SC_JWT_ALG_REFUSED;
    }
    double leeway = (double)(iss->leeway_ms / 1000u);
    double now = (double)now_unix;
    json_t *exp = json_object_get(t->payload, "exp");
    if (!exp && iss->require_exp) {
        sc_jwt_set_err(why, whylen, "the token has no \"exp\" (expiry), which issuer %s requires", iss->name);
        return SC_JWT_EXPIRED;
    }
    if (exp && !(now < json_number_value(exp) + leeway)) {
        sc_jwt_set_err(why, whylen, "the token expired %.0fs ago", now - json_number_value(exp));
        return SC_JWT_EXPIRED;
    }
    json_t *nbf = json_object_get(t->payload, "nbf");
    if (nbf && now + leeway < json_number_value(nbf)) {
        sc_jwt_set_err(why, whylen, "the token is not valid for another %.0fs (nbf)", json_number_value(nbf) - now);
        return SC_JWT_NOT_YET_VALID;
    }
    if (iss->n_audiences) {
        json_t *aud = json_object_get(t->payload, "aud");
        if (!aud || !aud_matches(aud, iss)) {
            sc_jwt_set_err(why, whylen, "the token's audience (aud) is %s this service's (issuer %s)",
                           aud ? "not" : "missing, it must name", iss->name);
            return SC_JWT_WRONG_AUDIENCE;
        }
    }
    return SC_JWT_OK;
}

/* ---- signatures ---- */

static size_t expected_sig_len(const sc_jwk *k, uint32_t alg)
{
    switch (k->type) {
    case SC_JWK_RSA: return (k->bits + 7) / 8;
    case SC_JWK_EC: return 2 * (size_t)((k->bits + 7) / 8);
    case SC_JWK_OCT: return alg == SC_JWT_HS256 ? 32 : alg == SC_JWT_HS384 ? 48 : 64;
    }
    return 0;
}

sc_jwt_outcome sc_jwt_token_verify(const sc_jwt_token *t, const sc_jwks *keys, char *why, size_t whylen)
{
    char pk[72];
    const char *kid = t->has_kid ? sc_jwt_printable(t->kid, strlen(t->kid), pk, sizeof(pk)) : NULL;
    size_t candidates = 0;
    bool kid_seen = false;
    cjose_jws_t *jws = NULL;
    sc_jwt_outcome o = SC_JWT_UNKNOWN_KEY;
    for (size_t i = 0; keys && i < keys->n; i++) {
        const sc_jwk *k = &keys->keys[i];
        if (t->has_kid && k->kid && strcmp(k->kid, t->kid) != 0)
            continue; /* a key without kid may verify any token (RFC 7517 4.5: kid is optional) */
        kid_seen = true;
        if (!(k->algs & t->alg))
            continue; /* never an RSA or EC key for HS*, never a key of another curve */
        candidates++;
        if (t->sig_len != expected_sig_len(k, t->alg))
            continue;
        if (!jws) {
            /* the token as sent, its segments validated by sc_jwt_token_parse */
            cjose_err cerr = {0};
            jws = cjose_jws_import(t->text, t->text_len, &cerr);
            if (!jws) {
                sc_jwt_set_err(why, whylen, "libcjose could not read the token: %s",
                               cerr.message ? cerr.message : "unknown error");
                return SC_JWT_MALFORMED;
            }
        }
        cjose_err cerr = {0};
        if (cjose_jws_verify(jws, k->cjose, &cerr)) {
            cjose_jws_release(jws);
            return SC_JWT_OK;
        }
    }
    if (jws)
        cjose_jws_release(jws);
    if (candidates) {
        o = SC_JWT_BAD_SIGNATURE;
        sc_jwt_set_err(why, whylen, "the %s signature does not verify with %s", t->alg_name,
                       kid ? "the key of that kid" : candidates == 1 ? "the issuer's key" : "any of the issuer's keys");
    } else if (kid_seen) {
        sc_jwt_set_err(why, whylen, "key \"%s\" is not a key for %s", kid ? kid : "", t->alg_name);
    } else if (kid) {
        sc_jwt_set_err(why, whylen, "no key with kid \"%s\" in the issuer's key set", kid);
    } else {
        sc_jwt_set_err(why, whylen, "the issuer has no key for %s", t->alg_name);
    }
    return o;
}

/* ---- claims ---- */

sc_jwt_claims *sc_jwt_claims_ref(sc_jwt_claims *c)
{
    if (c)
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    return c;
}

static void claims_free(sc_jwt_claims *c)
{
    for (size_t i = 0; i < c->n; i++) {
        sc_jwt_claim_entry *cl = &c->v[i];
        if (cl->n_items > 1 || (cl->items && cl->items != &cl->value)) {
            for (uint32_t k = 0; k < cl->n_items; k++)
                free((char *)cl->items[k]);
            free((void *)cl->items);
        }
        free((char *)cl->name);
        free((char *)cl->value);
    }
    free(c->v);
    free(c);
}

void sc_jwt_claims_unref(sc_jwt_claims *c)
{
    if (c && atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        claims_free(c);
}

static int claim_cmp(const void *a, const void *b)
{
    return strcmp(((const sc_jwt_claim_entry *)a)->name, ((const sc_jwt_claim_entry *)b)->name);
}

const sc_jwt_claim_entry *sc_jwt_claims_find(const sc_jwt_claims *c, const char *name)
{
    if (!c || !name)
        return NULL;
    size_t lo = 0, hi = c->n; /* sorted by name: a binary search without bsearch's indirect calls */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int d = strcmp(name, c->v[mid].name);
        if (!d)
            return &c->v[mid];
        if (d < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* The string form of a scalar or a nested container (compact JSON). */
static char *string_form(json_t *v)
{
    char buf[40];
    switch (json_typeof(v)) {
    case JSON_STRING: return strndup(json_string_value(v), json_string_length(v));
    case JSON_INTEGER: snprintf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT, json_integer_value(v)); return strdup(buf);
    case JSON_REAL: {
        double d = json_real_value(v);
        if (d == floor(d) && fabs(d) < 9.007199254740992e15)
            snprintf(buf, sizeof(buf), "%.0f", d);
        else
            snprintf(buf, sizeof(buf), "%.17g", d);
        return strdup(buf);
    }
    case JSON_TRUE: return strdup("true");
    case JSON_FALSE: return strdup("false");
    case JSON_NULL: return strdup("");
    default: return json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    }
}

static bool header_safe(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++, n++)
        if ((*p < 0x20 && *p != '\t') || *p == 0x7f)
            return false;
    return n <= SC_JWT_CLAIM_VALUE_MAX;
}

typedef struct builder {
    sc_jwt_claims *c;
    size_t cap;
    bool full, nomem;
} builder;

static void add_claim(builder *b, const char *prefix, const char *key, json_t *v, int depth)
{
    if (b->full || b->nomem)
        return;
    if (b->c->n == SC_JWT_MAX_CLAIMS) {
        b->full = true;
        return;
    }
    if (b->c->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        sc_jwt_claim_entry *nv = realloc(b->c->v, cap * sizeof(*nv));
        if (!nv) {
            b->nomem = true;
            return;
        }
        b->c->v = nv;
        b->cap = cap;
    }
    sc_jwt_claim_entry *cl = &b->c->v[b->c->n];
    memset(cl, 0, sizeof(*cl));
    size_t pl = prefix ? strlen(prefix) : 0;
    char *name = malloc(pl + 1 + strlen(key) + 1);
    if (!name) {
        b->nomem = true;
        return;
    }
    if (prefix)
        sprintf(name, "%s.%s", prefix, key);
    else
        strcpy(name, key);
    cl->name = name;
    if (json_is_array(v)) {
        size_t n = json_array_size(v), total = 0;
        char **items = calloc(n ? n : 1, sizeof(char *));
        cl->items = (const char *const *)items;
        cl->n_items = (uint32_t)n;
        b->c->n++; /* owned by the claims from here on, complete or not */
        if (!items) {
            cl->n_items = 0;
            b->nomem = true;
            return;
        }
        for (size_t i = 0; i < n; i++) {
            if (!(items[i] = string_form(json_array_get(v, i)))) {
                cl->n_items = (uint32_t)i;
                b->nomem = true;
                return;
            }
            total += strlen(items[i]) + 1;
        }
        char *joined = malloc(total + 1);
        if (!joined) {
            b->nomem = true;
            return;
        }
        size_t k = 0;
        for (size_t i = 0; i < n; i++) {
            size_t l = strlen(items[i]);
            if (i)
                joined[k++] = ',';
            memcpy(joined + k, items[i], l);
            k += l;
        }
        joined[k] = 0;
        cl->value = joined;
    } else {
        b->c->n++;
        cl->value = string_form(v);
        cl->n_items = 1;
        if (!cl->value) {
            b->nomem = true;
            return;
        }
    }
    cl->header_safe = header_safe(cl->value);
    if (json_is_object(v) && depth < SC_JWT_CLAIM_DEPTH) {
        const char *k;
        json_t *m;
        char *path = strdup(name);
        if (!path) {
            b->nomem = true;
            return;
        }
        json_object_foreach(v, k, m) add_claim(b, path, k, m, depth + 1);
        free(path);
    }
}

sc_jwt_claims *sc_jwt_claims_build(const sc_jwt_token *t, uint32_t issuer, char *why, size_t whylen)
{
    sc_jwt_claims *c = calloc(1, sizeof(*c));
    if (!c) {
        sc_jwt_set_err(why, whylen, "out of memory");
        return NULL;
    }
    atomic_init(&c->refs, 1);
    c->issuer = issuer;
    json_t *exp = json_object_get(t->payload, "exp");
    c->exp = exp ? (json_number_value(exp) >= 9.2e18 ? INT64_MAX
                    : json_number_value(exp) <= -9.2e18 ? INT64_MIN
                                                         : (int64_t)floor(json_number_value(exp)))
                 : INT64_MAX;
    builder b = {.c = c};
    const char *k;
    json_t *v;
    json_object_foreach(t->payload, k, v) add_claim(&b, NULL, k, v, 1);
    if (b.full || b.nomem) {
        sc_jwt_set_err(why, whylen, b.nomem ? "out of memory" : "the token has more than %d claims (with nested members)",
                       SC_JWT_MAX_CLAIMS);
        claims_free(c);
        return NULL;
    }
    if (c->n)
        qsort(c->v, c->n, sizeof(*c->v), claim_cmp);
    /* (a dotted name may also be a top-level name: either may be found) */
    for (size_t i = 0; i < c->n; i++)
        if (!c->v[i].items)
            c->v[i].items = &c->v[i].value; /* after the sort: the array no longer moves */
    return c;
}

/* ---- rules ---- */

static bool item_is(const sc_jwt_claim_entry *cl, const char *want)
{
    for (uint32_t i = 0; i < cl->n_items; i++)
        if (strcmp(cl->items[i], want) == 0)
            return true;
    return false;
}

/* Whether `scope` is a space-separated word of one of the claim's items. */
static bool has_scope(const sc_jwt_claim_entry *cl, const char *scope)
{
    size_t sl = strlen(scope);
    for (uint32_t i = 0; cl && i < cl->n_items; i++)
        for (const char *p = cl->items[i]; *p;) {
            while (*p == ' ')
                p++;
            size_t w = strcspn(p, " ");
            if (w == sl && memcmp(p, scope, sl) == 0)
                return true;
            p += w;
        }
    return false;
}

sc_jwt_outcome sc_jwt_rule_check(const sc_jwt_rule *r, const sc_jwt_claims *c, char *why, size_t whylen)
{
    for (size_t i = 0; i < r->n_claims; i++) {
        const sc_jwt_claim_req *q = &r->claims[i];
        const sc_jwt_claim_entry *cl = sc_jwt_claims_find(c, q->name);
        if (!cl) {
            sc_jwt_set_err(why, whylen, "the token has no \"%s\" claim, which this path requires", q->name);
            return SC_JWT_CLAIMS;
        }
        if (!q->n_values)
            continue;
        bool ok = false;
        for (size_t k = 0; k < q->n_values && !ok; k++)
            ok = item_is(cl, q->values[k]);
        if (!ok) {
            sc_jwt_set_err(why, whylen, "the token's \"%s\" claim has none of the values this path requires", q->name);
            return SC_JWT_CLAIMS;
        }
    }
    if (!r->n_scopes)
        return SC_JWT_OK;
    const sc_jwt_claim_entry *scope = sc_jwt_claims_find(c, "scope");
    const sc_jwt_claim_entry *scp = sc_jwt_claims_find(c, "scp");
    for (size_t i = 0; i < r->n_scopes; i++)
        if (!has_scope(scope, r->scopes[i]) && !has_scope(scp, r->scopes[i])) {
            sc_jwt_set_err(why, whylen, "the token lacks scope \"%s\", which this path requires", r->scopes[i]);
            return SC_JWT_CLAIMS;
        }
    return SC_JWT_OK;
}

static inline bool blank(char c)
{
    return c == ' ' || c == '\t';
}

/* "bearer" in any case, without a call: this runs for every request. */
static inline bool is_bearer(const char *v)
{
    return (v[0] | 0x20) == 'b' && (v[1] | 0x20) == 'e' && (v[2] | 0x20) == 'a' && (v[3] | 0x20) == 'r' &&
           (v[4] | 0x20) == 'e' && (v[5] | 0x20) == 'r';
}

int sc_jwt_token_in_value(const sc_jwt_rule *r, const char *value, size_t len, const char **tok, size_t *toklen)
{
    while (len && blank(value[0]))
        value++, len--;
    while (len && blank(value[len - 1]))
        len--;
    if (len >= 6 && is_bearer(value) && (len == 6 || blank(value[6]))) {
        value += 6, len -= 6;
        while (len && blank(value[0]))
            value++, len--;
    } else if (strcmp(r->header, "authorization") == 0) {
        return 0; /* Basic, Negotiate, ...: not ours */
    }
    if (!len)
        return -1;
    *tok = value;
    *toklen = len;
    return 1;
}

bool sc_jwt_token_has_blank(const char *tok, size_t len)
{
    return memchr(tok, ' ', len) || memchr(tok, '\t', len); /* vectorised: tokens are long */
}

int sc_jwt_token_from_header(const sc_jwt_rule *r, const char *value, size_t len, const char **tok, size_t *toklen)
{
    int rc = sc_jwt_token_in_value(r, value, len, tok, toklen);
    return rc > 0 && sc_jwt_token_has_blank(*tok, *toklen) ? -1 : rc;
}

/* ---- refusals ---- */

/* A quoted-string body RFC 6750 allows: %x20-21 / %x23-5B / %x5D-7E. */
static void quoted_safe(const char *in, char *out, size_t cap)
{
    size_t k = 0;
    for (; in && *in && k + 1 < cap; in++) {
        unsigned char ch = (unsigned char)*in;
        out[k++] = (ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\') ? '\'' : (char)ch;
    }
    out[k] = 0;
}

void sc_jwt_refusal_for(sc_jwt_outcome o, const char *why, const char *realm, sc_jwt_refusal *out)
{
    memset(out, 0, sizeof(*out));
    char r[128], d[256];
    quoted_safe(realm ? realm : "", r, sizeof(r));
    quoted_safe(why && *why ? why : sc_jwt_outcome_name(o), d, sizeof(d));
    const char *name = sc_jwt_outcome_name(o);
    size_t k = (size_t)snprintf(out->reason, sizeof(out->reason), "jwt-%s", name);
    for (size_t i = 4; i < k && i < sizeof(out->reason); i++)
        if (out->reason[i] == '_')
            out->reason[i] = '-';
    if (o == SC_JWT_CLAIMS) {
        out->http_status = 403;
        out->grpc_status = SC_GRPC_PERMISSION_DENIED;
        snprintf(out->www_authenticate, sizeof(out->www_authenticate),
                 "Bearer realm=\"%s\", error=\"insufficient_scope\", error_description=\"%s\"", r, d);
        snprintf(out->message, sizeof(out->message), "JWT refused: %s", d);
        return;
    }
    out->http_status = 401;
    out->grpc_status = SC_GRPC_UNAUTHENTICATED;
    if (o == SC_JWT_MISSING) {
        /* RFC 6750 3.1: no error code when the request had no credentials */
        snprintf(out->www_authenticate, sizeof(out->www_authenticate), "Bearer realm=\"%s\"", r);
        snprintf(out->message, sizeof(out->message), "JWT required: %s", d);
        return;
    }
    snprintf(out->www_authenticate, sizeof(out->www_authenticate),
             "Bearer realm=\"%s\", error=\"invalid_token\", error_description=\"%s\"", r, d);
    snprintf(out->message, sizeof(out->message), "JWT refused: %s", d);
}

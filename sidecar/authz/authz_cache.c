/*
 * authz_cache.c: Consul's authorize answers per caller identity; the rules
 * are in authz_cache.h. A hash table of entries (FNV-1a on the identity), a
 * FIFO of lookups waiting to be sent, interned reason texts.
 */
#include "authz/authz_cache.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct entry {
    struct entry *hnext;            /* bucket chain */
    struct entry *qnext;            /* c->qhead: lookups to send */
    uint64_t hash;
    uint64_t last_used_ms;
    uint64_t answered_ms;
    uint64_t fresh_until_ms;        /* the answer (fresh or stale) is used until then */
    uint64_t done_seq;              /* changes whenever a lookup ends */
    const char *reason;             /* interned */
    bool has_answer, allowed, stale, inflight, queued;
    char serial[SC_AUTHZ_SERIAL_MAX];
    char error[SC_AUTHZ_ERROR_MAX]; /* the last failure, "" after an answer */
    char identity[];
} entry;

struct sc_authz_cache {
    uint64_t ttl_ms;
    size_t max, n;
    entry **buckets;
    size_t n_buckets;               /* a power of two */
    entry *qhead, *qtail;
    char **reasons;
    size_t n_reasons;
    uint64_t seq;
    uint64_t lookups_total, answers_total, errors_total, evictions_total;
};

static const char REASON_NOT_KEPT[] = "(Consul's reason not kept: too many distinct reasons)";

const char *sc_authz_verdict_name(sc_authz_verdict v)
{
    switch (v) {
    case SC_AUTHZ_ALLOW: return "allow";
    case SC_AUTHZ_DENY: return "deny";
    case SC_AUTHZ_WAIT: return "wait";
    case SC_AUTHZ_UNAVAILABLE: return "unavailable";
    }
    return "?";
}

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

sc_authz_cache *sc_authz_cache_new(uint64_t ttl_ms, size_t max_entries)
{
    sc_authz_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->ttl_ms = ttl_ms ? ttl_ms : 1;
    c->max = max_entries ? max_entries : SC_AUTHZ_MAX_ENTRIES;
    c->n_buckets = 16;
    while (c->n_buckets < c->max && c->n_buckets < 4096)
        c->n_buckets *= 2;
    c->buckets = calloc(c->n_buckets, sizeof(*c->buckets));
    c->reasons = calloc(SC_AUTHZ_MAX_REASONS, sizeof(*c->reasons));
    if (!c->buckets || !c->reasons) {
        free(c->buckets);
        free(c->reasons);
        free(c);
        return NULL;
    }
    return c;
}

void sc_authz_cache_free(sc_authz_cache *c)
{
    if (!c)
        return;
    for (size_t b = 0; b < c->n_buckets; b++) {
        entry *e = c->buckets[b];
        while (e) {
            entry *next = e->hnext;
            free(e);
            e = next;
        }
    }
    for (size_t i = 0; i < c->n_reasons; i++)
        free(c->reasons[i]);
    free(c->reasons);
    free(c->buckets);
    free(c);
}

static entry *find(const sc_authz_cache *c, const char *identity, uint64_t h)
{
    for (entry *e = c->buckets[h & (c->n_buckets - 1)]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->identity, identity) == 0)
            return e;
    return NULL;
}

static void unlink_entry(sc_authz_cache *c, entry *victim)
{
    entry **pp = &c->buckets[victim->hash & (c->n_buckets - 1)];
    while (*pp && *pp != victim)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = victim->hnext;
    c->n--;
}

/* Makes room by dropping the least recently used entry without a lookup in
 * flight (a queued or sent lookup must find its entry when it ends). */
static bool evict_one(sc_authz_cache *c)
{
    entry *lru = NULL;
    for (size_t b = 0; b < c->n_buckets; b++)
        for (entry *e = c->buckets[b]; e; e = e->hnext)
            if (!e->inflight && (!lru || e->last_used_ms < lru->last_used_ms))
                lru = e;
    if (!lru)
        return false;
    unlink_entry(c, lru);
    free(lru);
    c->evictions_total++;
    return true;
}

static entry *insert(sc_authz_cache *c, const char *identity, uint64_t h)
{
    if (c->n >= c->max && !evict_one(c))
        return NULL;
    size_t len = strlen(identity);
    entry *e = calloc(1, sizeof(*e) + len + 1);
    if (!e)
        return NULL;
    memcpy(e->identity, identity, len + 1);
    e->hash = h;
    e->done_seq = ++c->seq;
    entry **b = &c->buckets[h & (c->n_buckets - 1)];
    e->hnext = *b;
    *b = e;
    c->n++;
    return e;
}

static const char *intern(sc_authz_cache *c, const char *reason)
{
    if (!reason || !*reason)
        return "";
    for (size_t i = 0; i < c->n_reasons; i++)
        if (strcmp(c->reasons[i], reason) == 0)
            return c->reasons[i];
    if (c->n_reasons == SC_AUTHZ_MAX_REASONS)
        return REASON_NOT_KEPT;
    char *s = strdup(reason);
    if (!s)
        return REASON_NOT_KEPT;
    c->reasons[c->n_reasons++] = s;
    return s;
}

static uint64_t retry_ms(const sc_authz_cache *c)
{
    return SC_MIN((uint64_t)SC_AUTHZ_RETRY_MS, c->ttl_ms);
}

static void decision_init(sc_authz_decision *d)
{
    d->verdict = SC_AUTHZ_UNAVAILABLE;
    d->until_ms = 0;
    d->reason = NULL;
    d->stale = false;
    d->seq = 0;
    d->queued = false;
    d->error[0] = 0;
}

static void decide(const entry *e, sc_authz_decision *d)
{
    d->verdict = e->allowed ? SC_AUTHZ_ALLOW : SC_AUTHZ_DENY;
    d->until_ms = e->fresh_until_ms;
    d->reason = e->reason ? e->reason : "";
    d->stale = e->stale;
}

static void enqueue(sc_authz_cache *c, entry *e, const char *serial)
{
    e->inflight = true;
    e->queued = true;
    snprintf(e->serial, sizeof(e->serial), "%s", serial ? serial : "");
    e->qnext = NULL;
    if (c->qtail)
        c->qtail->qnext = e;
    else
        c->qhead = e;
    c->qtail = e;
    c->lookups_total++;
}

void sc_authz_cache_check(sc_authz_cache *c, const char *identity, const char *serial,
                          uint64_t now_ms, sc_authz_decision *d)
{
    decision_init(d);
    if (!identity || !*identity) {
        snprintf(d->error, sizeof(d->error), "the caller has no identity to ask about");
        return;
    }
    uint64_t h = fnv1a(identity);
    entry *e = find(c, identity, h);
    if (!e && !(e = insert(c, identity, h))) {
        snprintf(d->error, sizeof(d->error),
                 "too many callers are waiting for Consul (%zu identities with a lookup in flight)",
                 c->n);
        return;
    }
    e->last_used_ms = now_ms;
    if (e->has_answer && now_ms < e->fresh_until_ms) {
        decide(e, d);
        return;
    }
    if (!e->inflight) {
        enqueue(c, e, serial);
        d->queued = true;
    }
    if (e->has_answer && e->stale) {
        /* Consul failed last time: the last answer holds while it is asked again */
        decide(e, d);
        d->until_ms = now_ms + retry_ms(c);
        return;
    }
    d->verdict = SC_AUTHZ_WAIT;
    d->seq = e->done_seq;
}

void sc_authz_cache_result(sc_authz_cache *c, const char *identity, uint64_t seq,
                           uint64_t now_ms, sc_authz_decision *d)
{
    decision_init(d);
    entry *e = identity && *identity ? find(c, identity, fnv1a(identity)) : NULL;
    if (!e) {
        snprintf(d->error, sizeof(d->error),
                 "the answer was dropped from the cache before it was used (too many callers)");
        return;
    }
    if (e->done_seq == seq) {
        d->verdict = SC_AUTHZ_WAIT;
        d->seq = seq;
        return;
    }
    e->last_used_ms = now_ms;
    if (e->has_answer) {
        decide(e, d);
        return;
    }
    snprintf(d->error, sizeof(d->error), "%s", e->error[0] ? e->error : "Consul has not answered");
}

bool sc_authz_cache_next(sc_authz_cache *c, char *identity, size_t id_cap, char *serial,
                         size_t serial_cap)
{
    entry *e = c->qhead;
    if (!e)
        return false;
    c->qhead = e->qnext;
    if (!c->qhead)
        c->qtail = NULL;
    e->qnext = NULL;
    e->queued = false;
    if (id_cap)
        snprintf(identity, id_cap, "%s", e->identity);
    if (serial_cap)
        snprintf(serial, serial_cap, "%s", e->serial);
    return true;
}

void sc_authz_cache_answer(sc_authz_cache *c, const char *identity, uint64_t now_ms,
                           const sc_authz_answer *a, sc_authz_event *ev)
{
    memset(ev, 0, sizeof(*ev));
    entry *e = identity && *identity ? find(c, identity, fnv1a(identity)) : NULL;
    if (!e)
        return;
    ev->known = true;
    e->inflight = false;
    e->done_seq = ++c->seq;
    e->last_used_ms = now_ms;
    if (a->ok) {
        c->answers_total++;
        ev->first_answer = !e->has_answer;
        ev->changed = e->has_answer && e->allowed != a->authorized;
        ev->recovered = e->has_answer && e->stale;
        e->has_answer = true;
        e->allowed = a->authorized;
        e->reason = intern(c, a->reason);
        e->answered_ms = now_ms;
        e->fresh_until_ms = now_ms + c->ttl_ms;
        e->stale = false;
        e->error[0] = 0;
    } else {
        c->errors_total++;
        snprintf(e->error, sizeof(e->error), "%s", a->error && *a->error ? a->error : "Consul did not answer");
        if (e->has_answer) {
            ev->became_stale = !e->stale;
            ev->answer_age_ms = now_ms - e->answered_ms;
            e->stale = true;
            e->fresh_until_ms = now_ms + retry_ms(c);
        } else {
            ev->refused = true;
        }
    }
    ev->has_answer = e->has_answer;
    ev->allowed = e->allowed;
}

void sc_authz_cache_snapshot(const sc_authz_cache *c, sc_authz_cache_view *v)
{
    memset(v, 0, sizeof(*v));
    v->entries = c->n;
    v->max_entries = c->max;
    v->reasons = c->n_reasons;
    v->ttl_ms = c->ttl_ms;
    v->lookups_total = c->lookups_total;
    v->answers_total = c->answers_total;
    v->errors_total = c->errors_total;
    v->evictions_total = c->evictions_total;
    for (size_t b = 0; b < c->n_buckets; b++)
        for (const entry *e = c->buckets[b]; e; e = e->hnext) {
            v->answered += e->has_answer;
            v->stale += e->has_answer && e->stale;
            v->in_flight += e->inflight && !e->queued;
            v->queued += e->queued;
        }
}

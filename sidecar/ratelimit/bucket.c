/*
 * bucket.c: GCRA buckets, one lock-free cell or a bounded sharded key table
 * (bucket.h).
 */
#include "ratelimit/bucket.h"
#include "ratelimit/descriptor.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

void sc_rl_gcra_init(sc_rl_gcra *g, uint64_t count, uint64_t period_ms, uint64_t burst)
{
    uint64_t period_ns = period_ms * 1000000ull;
    g->count = count ? count : 1;
    g->period_ms = period_ms;
    g->burst = burst ? burst : 1;
    g->interval_ns = period_ns / g->count;
    if (g->interval_ns == 0)
        g->interval_ns = 1;
    g->tolerance_ns = g->burst * g->interval_ns;
}

uint64_t sc_rl_gcra_step(const sc_rl_gcra *g, uint64_t tat, uint64_t now_ns, sc_rl_outcome *o)
{
    uint64_t base = tat > now_ns ? tat : now_ns;
    uint64_t next = base + g->interval_ns;
    uint64_t d = next - now_ns;             /* > 0 */
    if (d > g->tolerance_ns) {
        o->allowed = false;
        o->remaining = 0;
        o->next_ns = d - g->tolerance_ns;
        o->full_ns = base - now_ns;
        return tat;
    }
    uint64_t room = g->tolerance_ns - d;
    o->allowed = true;
    o->remaining = room / g->interval_ns;
    o->next_ns = d - g->tolerance_ns + (o->remaining + 1) * g->interval_ns;
    o->full_ns = d;
    return next;
}

void sc_rl_cell_take(sc_rl_cell *c, const sc_rl_gcra *g, uint64_t now_ns, sc_rl_outcome *o)
{
    uint64_t tat = atomic_load_explicit(&c->tat, memory_order_relaxed);
    for (;;) {
        uint64_t nt = sc_rl_gcra_step(g, tat, now_ns, o);
        if (!o->allowed)
            return;
        /* A failed CAS reloads tat and the step is made again on it. */
        if (atomic_compare_exchange_weak_explicit(&c->tat, &tat, nt, memory_order_relaxed,
                                                  memory_order_relaxed))
            return;
    }
}

/* ---- SipHash-1-3 (64-bit output), seeded per table ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                      \
    do {                                                                              \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                     \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                        \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                        \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                     \
    } while (0)

static uint64_t siphash13(const uint64_t k[2], const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v0 = 0x736f6d6570736575ull ^ k[0], v1 = 0x646f72616e646f6dull ^ k[1];
    uint64_t v2 = 0x6c7967656e657261ull ^ k[0], v3 = 0x7465646279746573ull ^ k[1];
    uint64_t b = (uint64_t)len << 56;
    size_t i = 0;
    for (; i + 8 <= len; i += 8) {
        uint64_t m;
        memcpy(&m, p + i, 8);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; i + j < len; j++)
        b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- the key table ---- */

typedef struct link {
    struct link *prev, *next;           /* LRU: head = most recent */
} link;

typedef struct entry {
    link lru;                           /* first: an entry is its link */
    struct entry *hnext;                /* hash chain */
    uint64_t hash;
    uint64_t tat;
    uint64_t admitted, refused;
    uint64_t epoch, cur, prev_cnt;      /* requests per SC_RL_BUSY_WINDOW_NS */
    uint16_t klen;
    char key[];
} entry;

typedef struct shard {
    pthread_mutex_t mu;
    entry **buckets;
    size_t mask;
    link lru;                           /* sentinel */
    size_t n, max;
    uint64_t evictions, evictions_active, alloc_failures;
} __attribute__((aligned(64))) shard;

struct sc_rl_table {
    uint64_t seed[2];
    size_t nshards;                     /* power of two */
    size_t max_keys;
    shard *shards;
};

static size_t pow2_ge(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

sc_rl_table *sc_rl_table_new(size_t max_keys)
{
    if (max_keys == 0)
        max_keys = 1;
    sc_rl_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    if (getrandom(t->seed, sizeof(t->seed), GRND_NONBLOCK) != (ssize_t)sizeof(t->seed)) {
        /* Early boot without entropy: still seeded per process and table. */
        t->seed[0] = sc_now_ns() ^ (uint64_t)(uintptr_t)t;
        t->seed[1] = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ull;
    }
    /* At least 64 keys per shard so LRU order stays meaningful; at most 64 shards. */
    size_t ns = 1;
    while (ns < 64 && max_keys / (ns * 2) >= 64)
        ns *= 2;
    t->nshards = ns;
    t->max_keys = max_keys;
    t->shards = aligned_alloc(64, ns * sizeof(shard));
    if (!t->shards) {
        free(t);
        return NULL;
    }
    memset(t->shards, 0, ns * sizeof(shard));
    for (size_t i = 0; i < ns; i++) {
        shard *s = &t->shards[i];
        s->max = max_keys / ns + (i < max_keys % ns);
        size_t nb = pow2_ge(s->max < 4 ? 4 : s->max);
        s->buckets = calloc(nb, sizeof(entry *));
        s->mask = nb - 1;
        s->lru.prev = s->lru.next = &s->lru;
        pthread_mutex_init(&s->mu, NULL);
        if (!s->buckets) {
            t->nshards = i + 1;
            sc_rl_table_free(t);
            return NULL;
        }
    }
    return t;
}

void sc_rl_table_free(sc_rl_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nshards; i++) {
        shard *s = &t->shards[i];
        for (link *k = s->lru.next; k && k != &s->lru;) {
            link *n = k->next;
            free((entry *)k);
            k = n;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    free(t->shards);
    free(t);
}

static void lru_unlink(entry *e)
{
    e->lru.prev->next = e->lru.next;
    e->lru.next->prev = e->lru.prev;
}

static void lru_push(shard *s, entry *e)
{
    e->lru.prev = &s->lru;
    e->lru.next = s->lru.next;
    s->lru.next->prev = &e->lru;
    s->lru.next = &e->lru;
}

static void chain_remove(shard *s, entry *e)
{
    entry **pp = &s->buckets[e->hash & s->mask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
}

static void count_hit(entry *e, uint64_t now_ns, bool allowed)
{
    uint64_t ep = now_ns / SC_RL_BUSY_WINDOW_NS;
    if (e->epoch != ep) {
        e->prev_cnt = e->epoch + 1 == ep ? e->cur : 0;
        e->cur = 0;
        e->epoch = ep;
    }
    e->cur++;
    if (allowed)
        e->admitted++;
    else
        e->refused++;
}

static entry *find(shard *s, uint64_t h, const char *key, size_t klen)
{
    for (entry *e = s->buckets[h & s->mask]; e; e = e->hnext)
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    return NULL;
}

/* A decision on an entry that is in the table (under its shard's lock). */
static void take_locked(shard *s, entry *e, const sc_rl_gcra *g, uint64_t now_ns,
                        sc_rl_outcome *o)
{
    e->tat = sc_rl_gcra_step(g, e->tat, now_ns, o);
    count_hit(e, now_ns, o->allowed);
    if (s->lru.next != &e->lru) {
        lru_unlink(e);
        lru_push(s, e);
    }
}

int sc_rl_table_take(sc_rl_table *t, const sc_rl_gcra *g, const char *key, size_t klen,
                     uint64_t now_ns, sc_rl_outcome *o)
{
    if (klen > SC_RL_KEY_MAX)
        klen = SC_RL_KEY_MAX;
    uint64_t h = siphash13(t->seed, key, klen);
    /* The shard from the high bits, the chain from the low ones. */
    shard *s = &t->shards[(h >> 58) & (t->nshards - 1)];
    pthread_mutex_lock(&s->mu);
    entry *e = find(s, h, key, klen);
    if (e) {
        take_locked(s, e, g, now_ns, o);
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    pthread_mutex_unlock(&s->mu);

    /* A new key: allocated outside the lock, then looked up again, since
     * another worker may have added it meanwhile. */
    entry *fresh = malloc(sizeof(entry) + klen);
    if (!fresh) {
        pthread_mutex_lock(&s->mu);
        s->alloc_failures++;
        pthread_mutex_unlock(&s->mu);
        *o = (sc_rl_outcome){.allowed = true};
        return -ENOMEM;
    }
    memset(fresh, 0, sizeof(*fresh));
    fresh->hash = h;
    fresh->klen = (uint16_t)klen;
    memcpy(fresh->key, key, klen);
    entry *victim = NULL;
    pthread_mutex_lock(&s->mu);
    e = find(s, h, key, klen);
    if (e) {
        take_locked(s, e, g, now_ns, o);
        pthread_mutex_unlock(&s->mu);
        free(fresh);
        return 0;
    }
    if (s->n >= s->max) {
        /* Full: the least recently used key makes room. */
        victim = (entry *)s->lru.prev;
        lru_unlink(victim);
        chain_remove(s, victim);
        s->n--;
        s->evictions++;
        if (victim->tat > now_ns)
            s->evictions_active++;
    }
    size_t b = h & s->mask;
    fresh->hnext = s->buckets[b];
    s->buckets[b] = fresh;
    lru_push(s, fresh);
    s->n++;
    fresh->tat = sc_rl_gcra_step(g, 0, now_ns, o);
    count_hit(fresh, now_ns, o->allowed);
    pthread_mutex_unlock(&s->mu);
    free(victim);
    return 0;
}

void sc_rl_table_snapshot(sc_rl_table *t, sc_rl_table_view *v)
{
    memset(v, 0, sizeof(*v));
    v->max_keys = t->max_keys;
    v->shards = t->nshards;
    for (size_t i = 0; i < t->nshards; i++) {
        shard *s = &t->shards[i];
        pthread_mutex_lock(&s->mu);
        v->keys += s->n;
        v->evictions += s->evictions;
        v->evictions_active += s->evictions_active;
        v->alloc_failures += s->alloc_failures;
        pthread_mutex_unlock(&s->mu);
    }
}

static uint64_t recent(const entry *e, uint64_t ep)
{
    if (e->epoch == ep)
        return e->cur + e->prev_cnt;
    if (e->epoch + 1 == ep)
        return e->cur;
    return 0;
}

size_t sc_rl_table_busiest(sc_rl_table *t, uint64_t now_ns, const sc_rl_gcra *g,
                           sc_rl_busy_key *out, size_t n)
{
    SC_UNUSED(g);
    size_t have = 0;
    uint64_t ep = now_ns / SC_RL_BUSY_WINDOW_NS;
    for (size_t i = 0; i < t->nshards && n; i++) {
        shard *s = &t->shards[i];
        pthread_mutex_lock(&s->mu);
        for (link *k = s->lru.next; k != &s->lru; k = k->next) {
            const entry *e = (const entry *)k;
            uint64_t r = recent(e, ep);
            if (r == 0)
                continue;
            /* Insertion into a short sorted list (n is small: the top few). */
            size_t pos = have;
            while (pos > 0 && out[pos - 1].recent < r)
                pos--;
            if (pos >= n)
                continue;
            size_t last = have < n ? have : n - 1;
            memmove(&out[pos + 1], &out[pos], (last - pos) * sizeof(*out));
            sc_rl_busy_key *b = &out[pos];
            b->klen = e->klen;
            memcpy(b->key, e->key, e->klen);
            b->recent = r;
            b->admitted = e->admitted;
            b->refused = e->refused;
            b->full_ns = e->tat > now_ns ? e->tat - now_ns : 0;
            if (have < n)
                have++;
        }
        pthread_mutex_unlock(&s->mu);
    }
    return have;
}

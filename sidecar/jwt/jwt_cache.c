/*
 * jwt_cache.c: the verified-token cache (see jwt_cache.h). Each shard is a
 * chained hash table over a fixed array of entries, with a free list and an
 * LRU list; entries are allocated when the cache is made and token copies
 * before the lock is taken, so nothing is allocated under a lock, and what
 * an eviction or an expiry releases (claims, token copies) is released
 * after the lock is dropped.
 */
#include "jwt/jwt_cache.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/random.h>

typedef struct entry {
    uint64_t hash;
    char *tok;                      /* the token's text (a copy), NULL: free slot */
    size_t len;
    sc_jwt_claims *claims;
    int64_t until;
    struct entry *hnext;            /* bucket chain / free list */
    struct entry *prev, *next;      /* LRU: head most recent */
} entry;

typedef struct shard {
    pthread_mutex_t mu;
    entry **buckets;
    size_t mask;
    entry *slab;
    size_t cap, n;
    size_t bytes, max_bytes;
    entry *free_list;
    entry *head, *tail;
    uint64_t evictions, expired;
    char pad[64];                   /* keeps neighbouring shards' locks off one cache line */
} shard;

struct sc_jwt_cache {
    size_t max_entries;
    shard shards[SC_JWT_CACHE_SHARDS];
};

/* What a critical section gives up, released after the unlock. */
#define MAX_DROPS 64
typedef struct drops {
    size_t n;
    sc_jwt_claims *claims[MAX_DROPS];
    char *tok[MAX_DROPS];
} drops;

static void drops_release(drops *d)
{
    for (size_t i = 0; i < d->n; i++) {
        sc_jwt_claims_unref(d->claims[i]);
        free(d->tok[i]);
    }
}

/* ---- the hash: 64-bit multiply-mix over 16-byte blocks, seeded per process ----
 *
 * Over the length and at most the last SC_JWT_HASH_TAIL bytes: a token ends
 * in its signature (43 to 342 characters for HS256 to RS256), whose bytes
 * no one can choose for a token that verifies, and only verified tokens are
 * stored; a lookup compares the whole token. Hashing the whole token cost
 * as much as the rest of a cache hit. */
#define SC_JWT_HASH_TAIL 48

static uint64_t g_seed;
static pthread_once_t seed_once = PTHREAD_ONCE_INIT;

static void seed_init(void)
{
    if (getrandom(&g_seed, sizeof(g_seed), GRND_NONBLOCK) != (ssize_t)sizeof(g_seed))
        g_seed = (uint64_t)sc_now_ns() * 0x9E3779B97F4A7C15ull;
}

static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

uint64_t sc_jwt_cache_hash(const char *tok, size_t len)
{
    static const uint64_t k0 = 0xa0761d6478bd642full, k1 = 0xe7037ed1a0b428dbull, k2 = 0x8ebc6af09c88c6e3ull,
                          k3 = 0x589965cc75374cc3ull;
    pthread_once(&seed_once, seed_init);
    size_t n = SC_MIN(len, (size_t)SC_JWT_HASH_TAIL);
    const uint8_t *p = (const uint8_t *)tok + (len - n);
    uint64_t h = g_seed ^ mum((uint64_t)len ^ k0, k1);
    while (n >= 16) {
        uint64_t a, b;
        memcpy(&a, p, 8);
        memcpy(&b, p + 8, 8);
        h = mum(a ^ k0 ^ h, b ^ k1 ^ g_seed);
        p += 16;
        n -= 16;
    }
    uint64_t a = 0, b = 0;
    if (n >= 8) {
        memcpy(&a, p, 8);
        memcpy(&b, p + n - 8, 8);
    } else if (n) {
        memcpy(&a, p, n);
    }
    return mum(h ^ a ^ k2, b ^ k3);
}

/* ---- life cycle ---- */

sc_jwt_cache *sc_jwt_cache_new(size_t max_entries)
{
    if (!max_entries)
        return NULL;
    sc_jwt_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->max_entries = max_entries;
    size_t per = (max_entries + SC_JWT_CACHE_SHARDS - 1) / SC_JWT_CACHE_SHARDS;
    size_t nb = 8;
    while (nb < per * 2)
        nb <<= 1;
    for (size_t i = 0; i < SC_JWT_CACHE_SHARDS; i++) {
        shard *s = &c->shards[i];
        /* the last shards get what is left, so the total is exactly max_entries */
        size_t done = per * i;
        s->cap = done >= max_entries ? 0 : SC_MIN(per, max_entries - done);
        s->max_bytes = s->cap * SC_JWT_CACHE_AVG_BYTES;
        pthread_mutex_init(&s->mu, NULL);
        s->buckets = calloc(nb, sizeof(entry *));
        s->slab = calloc(s->cap ? s->cap : 1, sizeof(entry));
        if (!s->buckets || !s->slab) {
            for (size_t k = 0; k <= i; k++) {
                free(c->shards[k].buckets);
                free(c->shards[k].slab);
                pthread_mutex_destroy(&c->shards[k].mu);
            }
            free(c);
            return NULL;
        }
        s->mask = nb - 1;
        for (size_t k = 0; k < s->cap; k++) {
            s->slab[k].hnext = s->free_list;
            s->free_list = &s->slab[k];
        }
    }
    return c;
}

void sc_jwt_cache_free(sc_jwt_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < SC_JWT_CACHE_SHARDS; i++) {
        shard *s = &c->shards[i];
        for (size_t k = 0; k < s->cap; k++) {
            sc_jwt_claims_unref(s->slab[k].claims);
            free(s->slab[k].tok);
        }
        free(s->buckets);
        free(s->slab);
        pthread_mutex_destroy(&s->mu);
    }
    free(c);
}

/* ---- table ---- */

static inline shard *shard_of(sc_jwt_cache *c, uint64_t hash)
{
    return &c->shards[(hash >> 60) % SC_JWT_CACHE_SHARDS];
}

static void lru_unlink(shard *s, entry *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push(shard *s, entry *e)
{
    e->prev = NULL;
    e->next = s->head;
    if (s->head)
        s->head->prev = e;
    s->head = e;
    if (!s->tail)
        s->tail = e;
}

/* Removes e from its bucket and the LRU and frees the slot; what it held
 * goes to d (released after the unlock). */
static void remove_entry(shard *s, entry *e, drops *d)
{
    entry **pp = &s->buckets[e->hash & s->mask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(s, e);
    d->claims[d->n] = e->claims;
    d->tok[d->n++] = e->tok;
    s->bytes -= e->len;
    s->n--;
    e->claims = NULL;
    e->tok = NULL;
    e->hnext = s->free_list;
    s->free_list = e;
}

static entry *find(shard *s, const char *tok, size_t len, uint64_t hash)
{
    for (entry *e = s->buckets[hash & s->mask]; e; e = e->hnext)
        if (e->hash == hash && e->len == len && memcmp(e->tok, tok, len) == 0)
            return e;
    return NULL;
}

sc_jwt_claims *sc_jwt_cache_get(sc_jwt_cache *c, const char *tok, size_t len, uint64_t hash, int64_t now_unix)
{
    if (!c)
        return NULL;
    shard *s = shard_of(c, hash);
    sc_jwt_claims *out = NULL;
    drops d;
    d.n = 0; /* the arrays are written before they are read: 1 KiB not zeroed per lookup */
    pthread_mutex_lock(&s->mu);
    entry *e = find(s, tok, len, hash);
    if (e && now_unix >= e->until) {
        remove_entry(s, e, &d);
        s->expired++;
    } else if (e) {
        out = sc_jwt_claims_ref(e->claims);
        if (s->head != e) {
            lru_unlink(s, e);
            lru_push(s, e);
        }
    }
    pthread_mutex_unlock(&s->mu);
    drops_release(&d);
    return out;
}

void sc_jwt_cache_put(sc_jwt_cache *c, const char *tok, size_t len, uint64_t hash, sc_jwt_claims *claims,
                      int64_t until_unix)
{
    if (!c || !claims)
        return;
    shard *s = shard_of(c, hash);
    if (!s->cap || len > s->max_bytes)
        return;
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return;
    memcpy(copy, tok, len);
    sc_jwt_claims_ref(claims);
    drops d;
    d.n = 0; /* the arrays are written before they are read: 1 KiB not zeroed per lookup */
    pthread_mutex_lock(&s->mu);
    entry *e = find(s, tok, len, hash);
    if (e) {
        /* another worker verified the same token at the same time */
        d.claims[d.n] = e->claims;
        d.tok[d.n++] = copy;
        e->claims = claims;
        e->until = until_unix;
    } else {
        while ((!s->free_list || s->bytes + len > s->max_bytes) && s->tail && d.n + 1 < MAX_DROPS) {
            remove_entry(s, s->tail, &d);
            s->evictions++;
        }
        if (!s->free_list || s->bytes + len > s->max_bytes) {
            d.claims[d.n] = claims; /* cannot make room now (rare): not entered */
            d.tok[d.n++] = copy;
        } else {
            e = s->free_list;
            s->free_list = e->hnext;
            e->hash = hash;
            e->tok = copy;
            e->len = len;
            e->claims = claims;
            e->until = until_unix;
            entry **b = &s->buckets[hash & s->mask];
            e->hnext = *b;
            *b = e;
            lru_push(s, e);
            s->n++;
            s->bytes += len;
        }
    }
    pthread_mutex_unlock(&s->mu);
    drops_release(&d);
}

void sc_jwt_cache_snapshot(sc_jwt_cache *c, sc_jwt_cache_view *v)
{
    memset(v, 0, sizeof(*v));
    if (!c)
        return;
    v->max_entries = c->max_entries;
    for (size_t i = 0; i < SC_JWT_CACHE_SHARDS; i++) {
        shard *s = &c->shards[i];
        pthread_mutex_lock(&s->mu);
        v->entries += s->n;
        v->bytes += s->bytes;
        v->max_bytes += s->max_bytes;
        v->evictions += s->evictions;
        v->expired += s->expired;
        pthread_mutex_unlock(&s->mu);
    }
}

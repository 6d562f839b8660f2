/*
 * jwt_cache.c: the verified-token cache (see jwt_cache.h). Each shard is a
 * chained hash table over a fixed array of entries, with a free list and an
 * LRU list; all memory is allocated when the cache is made, so nothing is
 * allocated under a lock, and claims whose last reference the cache held
 * are released after the lock is dropped.
 */
#include "jwt/jwt_cache.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdlib.h>

typedef struct entry {
    uint8_t key[SC_JWT_DIGEST_LEN];
    sc_jwt_claims *claims;          /* NULL: free */
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
    entry *free_list;
    entry *head, *tail;
    uint64_t evictions, expired;
    char pad[64];                   /* keeps neighbouring shards' locks off one cache line */
} shard;

struct sc_jwt_cache {
    size_t max_entries;
    shard shards[SC_JWT_CACHE_SHARDS];
};

/* One digest context per thread, reused (EVP_Digest would allocate one per
 * call); freed when its thread ends. */
static pthread_key_t md_key;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void md_free(void *p)
{
    EVP_MD_CTX_free(p);
}

static void md_init(void)
{
    pthread_key_create(&md_key, md_free);
}

void sc_jwt_cache_key(const char *tok, size_t len, uint8_t out[SC_JWT_DIGEST_LEN])
{
    unsigned int n = 0;
    pthread_once(&md_once, md_init);
    EVP_MD_CTX *md = pthread_getspecific(md_key);
    if (!md && (md = EVP_MD_CTX_new()) != NULL && pthread_setspecific(md_key, md) != 0) {
        EVP_MD_CTX_free(md);
        md = NULL;
    }
    if (!md || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) || !EVP_DigestUpdate(md, tok, len) ||
        !EVP_DigestFinal_ex(md, out, &n))
        EVP_Digest(tok, len, out, &n, EVP_sha256(), NULL);
}

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
        for (size_t k = 0; k < s->cap; k++)
            sc_jwt_claims_unref(s->slab[k].claims);
        free(s->buckets);
        free(s->slab);
        pthread_mutex_destroy(&s->mu);
    }
    free(c);
}

static inline uint64_t key_hash(const uint8_t *k)
{
    uint64_t h;
    memcpy(&h, k, sizeof(h));
    return h;
}

static inline shard *shard_of(sc_jwt_cache *c, const uint8_t *key)
{
    return &c->shards[key[31] % SC_JWT_CACHE_SHARDS];
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

/* Removes e from its bucket and the LRU and frees the slot; returns the
 * claims for the caller to release after unlocking. */
static sc_jwt_claims *remove_entry(shard *s, entry *e)
{
    entry **pp = &s->buckets[key_hash(e->key) & s->mask];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(s, e);
    sc_jwt_claims *old = e->claims;
    e->claims = NULL;
    e->hnext = s->free_list;
    s->free_list = e;
    s->n--;
    return old;
}

static entry *find(shard *s, const uint8_t *key)
{
    for (entry *e = s->buckets[key_hash(key) & s->mask]; e; e = e->hnext)
        if (memcmp(e->key, key, SC_JWT_DIGEST_LEN) == 0)
            return e;
    return NULL;
}

sc_jwt_claims *sc_jwt_cache_get(sc_jwt_cache *c, const uint8_t key[SC_JWT_DIGEST_LEN], int64_t now_unix)
{
    if (!c)
        return NULL;
    shard *s = shard_of(c, key);
    sc_jwt_claims *out = NULL, *drop = NULL;
    pthread_mutex_lock(&s->mu);
    entry *e = find(s, key);
    if (e && now_unix >= e->until) {
        drop = remove_entry(s, e);
        s->expired++;
    } else if (e) {
        out = sc_jwt_claims_ref(e->claims);
        if (s->head != e) {
            lru_unlink(s, e);
            lru_push(s, e);
        }
    }
    pthread_mutex_unlock(&s->mu);
    sc_jwt_claims_unref(drop);
    return out;
}

void sc_jwt_cache_put(sc_jwt_cache *c, const uint8_t key[SC_JWT_DIGEST_LEN], sc_jwt_claims *claims,
                      int64_t until_unix)
{
    if (!c || !claims)
        return;
    shard *s = shard_of(c, key);
    if (!s->cap)
        return;
    sc_jwt_claims_ref(claims);
    sc_jwt_claims *drop = NULL;
    pthread_mutex_lock(&s->mu);
    entry *e = find(s, key);
    if (e) {
        drop = e->claims; /* another worker verified the same token at the same time */
        e->claims = claims;
        e->until = until_unix;
    } else {
        if (!s->free_list) {
            drop = remove_entry(s, s->tail);
            s->evictions++;
        }
        e = s->free_list;
        s->free_list = e->hnext;
        memcpy(e->key, key, SC_JWT_DIGEST_LEN);
        e->claims = claims;
        e->until = until_unix;
        entry **b = &s->buckets[key_hash(key) & s->mask];
        e->hnext = *b;
        *b = e;
        lru_push(s, e);
        s->n++;
    }
    pthread_mutex_unlock(&s->mu);
    sc_jwt_claims_unref(drop);
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
        v->evictions += s->evictions;
        v->expired += s->expired;
        pthread_mutex_unlock(&s->mu);
    }
}

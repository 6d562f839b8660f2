/*
 * tls_session.c: TLS session resumption. Server side: the context's own
 * OpenSSL cache, each session capped at the client certificate's notAfter.
 * Client side: sc_tls_session_cache, sessions per upstream instance key
 * ("payments/10.0.0.7:15443"), a few per key, LRU over keys, sessions of an
 * older context generation never offered; also capped at the server
 * certificate.
 *
 * Memory: the cache holds one reference to each SSL_SESSION it keeps and
 * frees it when it is evicted, used up (TLS 1.3: once) or stale;
 * sc_tls_session_cache_take hands the caller a reference of its own. Keys
 * are copied. The cache is locked inside; it must outlive every SSL made
 * with it (their callbacks put sessions into it).
 */
#include "tls/tls_internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SESSIONS_PER_KEY 4

/* ---- server and client: sessions end with the peer certificate ---- */

/* A session must not outlive the peer certificate it carries: its timeout
 * is cut to the certificate's notAfter. false when that is already past. */
static bool session_cap_to_cert(SSL_SESSION *sess)
{
    X509 *peer = SSL_SESSION_get0_peer(sess);
    if (!peer)
        return true;
    int64_t not_after;
    char iso[24];
    sc_tls_asn1_time_out(X509_get0_notAfter(peer), &not_after, iso, sizeof(iso));
    int64_t left = not_after - (int64_t)SSL_SESSION_get_time(sess);
    if (left <= 0)
        return false;
    if ((int64_t)SSL_SESSION_get_timeout(sess) > left)
        SSL_SESSION_set_timeout(sess, (long)left);
    return true;
}

/* Server: every session going into the context's cache (full handshakes,
 * and the new ticket of each TLS 1.3 resumption, which would otherwise
 * restart the clock) ends when the client's certificate does. */
int sc_tls_server_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    if (!session_cap_to_cert(sess))
        SSL_CTX_remove_session(SSL_get_SSL_CTX(ssl), sess);
    return 0;   /* no reference kept */
}

/* ---- client session cache ---- */

typedef struct sess_entry {
    struct sess_entry *hnext;               /* hash chain */
    struct sess_entry *prev, *next;         /* LRU, most recent first */
    uint64_t gen;
    uint32_t hash;
    unsigned n;
    SSL_SESSION *s[SESSIONS_PER_KEY];       /* oldest first */
    char key[];
} sess_entry;

struct sc_tls_session_cache {
    pthread_mutex_t mu;
    sess_entry **buckets;
    size_t nbuckets, nkeys, max_keys, nsessions;
    sess_entry lru;                         /* sentinel */
};

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

sc_tls_session_cache *sc_tls_session_cache_new(size_t max_keys)
{
    if (max_keys == 0)
        max_keys = 1;
    sc_tls_session_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    size_t nb = 16;
    while (nb < max_keys && nb < ((size_t)1 << 20))
        nb <<= 1;
    c->buckets = calloc(nb, sizeof(*c->buckets));
    if (!c->buckets || pthread_mutex_init(&c->mu, NULL) != 0) {
        free(c->buckets);
        free(c);
        return NULL;
    }
    c->nbuckets = nb;
    c->max_keys = max_keys;
    c->lru.prev = c->lru.next = &c->lru;
    return c;
}

static void entry_clear(sc_tls_session_cache *c, sess_entry *e)
{
    for (unsigned i = 0; i < e->n; i++)
        SSL_SESSION_free(e->s[i]);
    c->nsessions -= e->n;
    e->n = 0;
}

static void lru_unlink(sess_entry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
}

static void lru_front(sc_tls_session_cache *c, sess_entry *e)
{
    e->next = c->lru.next;
    e->prev = &c->lru;
    c->lru.next->prev = e;
    c->lru.next = e;
}

static void entry_remove(sc_tls_session_cache *c, sess_entry *e)
{
    sess_entry **pp = &c->buckets[e->hash & (c->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lru_unlink(e);
    entry_clear(c, e);
    c->nkeys--;
    free(e);
}

void sc_tls_session_cache_free(sc_tls_session_cache *c)
{
    if (!c)
        return;
    while (c->lru.next != &c->lru)
        entry_remove(c, c->lru.next);
    pthread_mutex_destroy(&c->mu);
    free(c->buckets);
    free(c);
}

size_t sc_tls_session_cache_count(sc_tls_session_cache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->nsessions;
    pthread_mutex_unlock(&c->mu);
    return n;
}

static sess_entry *entry_find(sc_tls_session_cache *c, const char *key, uint32_t h)
{
    for (sess_entry *e = c->buckets[h & (c->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

static bool session_usable(SSL_SESSION *s, time_t now)
{
    X509 *peer = SSL_SESSION_get0_peer(s);
    return SSL_SESSION_is_resumable(s) &&
           (time_t)(SSL_SESSION_get_time(s) + SSL_SESSION_get_timeout(s)) > now &&
           (!peer || sc_tls_cert_current(peer, now));
}

/* Takes ownership of s (frees it when it cannot be kept). */
static void session_cache_put(sc_tls_session_cache *c, const char *key, uint64_t gen,
                              SSL_SESSION *s)
{
    uint32_t h = hash_str(key);
    pthread_mutex_lock(&c->mu);
    sess_entry *e = entry_find(c, key, h);
    if (!e) {
        if (c->nkeys >= c->max_keys)
            entry_remove(c, c->lru.prev);
        size_t kl = strlen(key);
        e = calloc(1, sizeof(*e) + kl + 1);
        if (!e) {
            pthread_mutex_unlock(&c->mu);
            SSL_SESSION_free(s);
            return;
        }
        memcpy(e->key, key, kl + 1);
        e->hash = h;
        e->gen = gen;
        e->hnext = c->buckets[h & (c->nbuckets - 1)];
        c->buckets[h & (c->nbuckets - 1)] = e;
        c->nkeys++;
    } else {
        lru_unlink(e);
    }
    lru_front(c, e);
    if (e->gen != gen) {
        if (gen < e->gen) {     /* a connection of an older context: ignore */
            pthread_mutex_unlock(&c->mu);
            SSL_SESSION_free(s);
            return;
        }
        entry_clear(c, e);
        e->gen = gen;
    }
    if (SSL_SESSION_get_protocol_version(s) < TLS1_3_VERSION)
        entry_clear(c, e);      /* TLS 1.2: one reusable session is enough */
    if (e->n == SESSIONS_PER_KEY) {
        SSL_SESSION_free(e->s[0]);
        memmove(e->s, e->s + 1, (SESSIONS_PER_KEY - 1) * sizeof(e->s[0]));
        e->n--;
        c->nsessions--;
    }
    e->s[e->n++] = s;
    c->nsessions++;
    pthread_mutex_unlock(&c->mu);
}

/* A session to offer for key (a reference for the caller), or NULL. */
SSL_SESSION *sc_tls_session_cache_take(sc_tls_session_cache *c, const char *key, uint64_t gen)
{
    uint32_t h = hash_str(key);
    time_t now = time(NULL);
    SSL_SESSION *out = NULL;
    pthread_mutex_lock(&c->mu);
    sess_entry *e = entry_find(c, key, h);
    if (e && e->gen != gen)
        entry_clear(c, e);
    while (e && e->n && !out) {
        SSL_SESSION *s = e->s[e->n - 1];    /* newest */
        if (!session_usable(s, now)) {
            SSL_SESSION_free(s);
            e->n--;
            c->nsessions--;
            continue;
        }
        if (SSL_SESSION_get_protocol_version(s) >= TLS1_3_VERSION) {
            e->n--;                         /* single use */
            c->nsessions--;
            out = s;
        } else {
            SSL_SESSION_up_ref(s);
            out = s;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return out;
}

/* Client: a new session (full handshake, or a TLS 1.3 ticket) goes into
 * the connection's cache under its key, capped at the server certificate. */
int sc_tls_client_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    sc_tls_conn_state *cs = sc_tls_conn_get(ssl);
    sc_tls_ctx *ctx = sc_tls_ctx_of(ssl);
    if (!cs || !cs->cache || !cs->key || !ctx || !session_cap_to_cert(sess))
        return 0;
    session_cache_put(cs->cache, cs->key, ctx->gen, sess);
    return 1;   /* the cache owns the reference */
}

/*
 * jwt_cache.h: verified tokens, so a token seen again costs one fast hash
 * of its text, one table lookup and one compare instead of a signature
 * verification.
 *
 * Key: the token's text itself. Entries keep a copy of it and a hit
 * compares the whole text, so a hit is exactly the token that was verified;
 * the table is indexed by a seeded 64-bit hash (sc_jwt_cache_hash), which
 * only spreads entries: only verified tokens are ever entered, so a caller
 * cannot fill a bucket with chosen collisions. (A SHA-256 key would avoid
 * the copy but costs about 0.5 us per 600-byte token, most of a hit.)
 * Value: the claims (jwt.h), shared by reference.
 *
 * An entry is used until the token's exp plus the issuer's leeway (the
 * caller computes `until`); one whose time is up is removed when met. The
 * caller also drops hits verified with an older key set of the issuer
 * (claims->keys_gen), so a key removed from a JWKS stops verifying cached
 * tokens too.
 *
 * Bounded: at most max_entries tokens and max_entries * SC_JWT_CACHE_AVG_BYTES
 * bytes of token text; a new one replaces those used least recently (LRU),
 * counted as evictions.
 *
 * Shared by all workers, not one per worker: a token verified by any
 * worker is a hit for all of them (a caller's connections spread over
 * workers, and per-worker caches would verify each token once per worker
 * and hold it n times). The table is split in SC_JWT_CACHE_SHARDS shards
 * by hash, each with its own mutex held for a few pointer operations and
 * one compare (no allocation, no verification, no free under it), so
 * workers rarely meet on a lock.
 *
 * Threads: every function may run on any thread.
 */
#ifndef SC_JWT_CACHE_H
#define SC_JWT_CACHE_H

#include "jwt/jwt.h"

#define SC_JWT_CACHE_SHARDS 16
#define SC_JWT_CACHE_AVG_BYTES 2048     /* token text budget per entry, on average */

typedef struct sc_jwt_cache sc_jwt_cache;

/* NULL for max_entries 0 (no cache: every call below accepts NULL) or -ENOMEM. */
sc_jwt_cache *sc_jwt_cache_new(size_t max_entries);
void sc_jwt_cache_free(sc_jwt_cache *c);

/* The table hash of a token (seeded per process). */
uint64_t sc_jwt_cache_hash(const char *tok, size_t len);

/* The claims of a cached token still valid at now_unix (a reference the
 * caller releases with sc_jwt_claims_unref), or NULL. hash is
 * sc_jwt_cache_hash(tok, len). */
sc_jwt_claims *sc_jwt_cache_get(sc_jwt_cache *c, const char *tok, size_t len, uint64_t hash, int64_t now_unix);

/* Enters a verified token's claims (the cache takes its own reference and
 * copies the text) valid until until_unix (exclusive); replaces an entry
 * for the same token. A token longer than the byte budget of its shard is
 * not entered. */
void sc_jwt_cache_put(sc_jwt_cache *c, const char *tok, size_t len, uint64_t hash, sc_jwt_claims *claims,
                      int64_t until_unix);

typedef struct sc_jwt_cache_view {
    size_t entries, max_entries, bytes, max_bytes;
    uint64_t evictions, expired;
} sc_jwt_cache_view;

void sc_jwt_cache_snapshot(sc_jwt_cache *c, sc_jwt_cache_view *v);

#endif

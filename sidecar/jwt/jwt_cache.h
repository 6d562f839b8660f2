/*
 * jwt_cache.h: verified tokens, so a token seen again costs one SHA-256 of
 * its text and one hash-table lookup instead of a signature verification.
 *
 * Key: SHA-256 of the token's text. A token is only ever entered after its
 * signature and claims were verified, and a different token with the same
 * digest would need a SHA-256 collision, so a hit is as good as a
 * verification. Value: the claims (jwt.h), shared by reference.
 * An entry is used until the token's exp plus the issuer's leeway (the
 * caller computes `until`); one whose time is up is removed when met. The
 * caller also drops hits verified with an older key set of the issuer
 * (claims->keys_gen), so a key removed from a JWKS stops verifying cached
 * tokens too.
 *
 * Bounded: at most max_entries tokens; a new one replaces the one used
 * least recently (LRU), counted as an eviction.
 *
 * Shared by all workers, not one per worker: a token verified by any
 * worker is a hit for all of them (a caller's connections spread over
 * workers, and per-worker caches would verify each token once per worker
 * and hold it n times). The table is split in SC_JWT_CACHE_SHARDS shards
 * by digest, each with its own mutex held for a few pointer operations
 * (no allocation, no verification, no reference drop under it), so
 * workers rarely meet on a lock.
 *
 * Threads: every function may run on any thread.
 */
#ifndef SC_JWT_CACHE_H
#define SC_JWT_CACHE_H

#include "jwt/jwt.h"

#define SC_JWT_CACHE_SHARDS 16
#define SC_JWT_DIGEST_LEN 32

typedef struct sc_jwt_cache sc_jwt_cache;

/* NULL for max_entries 0 (no cache: every call below accepts NULL) or -ENOMEM. */
sc_jwt_cache *sc_jwt_cache_new(size_t max_entries);
void sc_jwt_cache_free(sc_jwt_cache *c);

/* SHA-256 of the token text (the key). */
void sc_jwt_cache_key(const char *tok, size_t len, uint8_t out[SC_JWT_DIGEST_LEN]);

/* The claims of a cached token still valid at now_unix (a reference the
 * caller releases with sc_jwt_claims_unref), or NULL. */
sc_jwt_claims *sc_jwt_cache_get(sc_jwt_cache *c, const uint8_t key[SC_JWT_DIGEST_LEN], int64_t now_unix);

/* Enters claims (the cache takes its own reference) valid until until_unix
 * (exclusive); replaces an entry with the same key. */
void sc_jwt_cache_put(sc_jwt_cache *c, const uint8_t key[SC_JWT_DIGEST_LEN], sc_jwt_claims *claims,
                      int64_t until_unix);

typedef struct sc_jwt_cache_view {
    size_t entries, max_entries;
    uint64_t evictions, expired;
} sc_jwt_cache_view;

void sc_jwt_cache_snapshot(sc_jwt_cache *c, sc_jwt_cache_view *v);

#endif

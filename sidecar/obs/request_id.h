/*
 * request_id.h: the x-request-id a request carries through the sidecar.
 * Pure: no I/O beyond getrandom(2) when a generator is seeded.
 *
 * Kept: a caller's x-request-id is kept when it is valid: 1 to
 * SC_REQUEST_ID_MAX bytes, each one of the safe characters
 *
 *     A-Z a-z 0-9 and  - _ . : + / = @ ~
 *
 * which covers UUIDs, ULIDs, hex and base64 / base64url IDs and
 * "prefix:id" forms, and excludes everything that could change the meaning
 * of the places the ID is copied to: spaces and control characters (header
 * and log line injection), quotes and backslashes (JSON, HTML), ',' and ';'
 * (header list and parameter separators), '<' '>' '&' (HTML), '%' (a second
 * decoding), and every non-ASCII byte. An invalid one is not repaired or
 * forwarded: the request gets a generated ID instead.
 *
 * Generated: 128 random bits written as 32 lower-case hex digits in the
 * 8-4-4-4-12 grouping of a UUID ("3f2a...-....-....-....-............", 36
 * characters). All 128 bits are random: it is UUID-shaped, not an RFC 9562
 * version-4 UUID (whose version and variant take 6 of the bits), so tools
 * must not read a version out of it. The generator is xoshiro256++ (a
 * fast, non-cryptographic PRNG, one per worker thread, no locks) seeded
 * from getrandom(2): request IDs are unique names, not secrets.
 *
 * Memory: nothing here allocates; outputs go to caller buffers.
 */
#ifndef SC_OBS_REQUEST_ID_H
#define SC_OBS_REQUEST_ID_H

#include "core/common.h"

/* Longest x-request-id accepted from a caller, in bytes. */
#define SC_REQUEST_ID_MAX 128
/* Length of a generated ID (no terminator). */
#define SC_REQUEST_ID_LEN 36

/* True when p[0..len) is a request ID the sidecar keeps (see above). */
bool sc_request_id_valid(const char *p, size_t len);
/* True when c is one of the safe characters. */
bool sc_request_id_char_ok(unsigned char c);

/* Per-thread generator state (xoshiro256++); owned by one thread. */
typedef struct sc_request_id_rng {
    uint64_t s[4];
} sc_request_id_rng;

/* Seeds from getrandom(2). Returns 0, or a negative errno when the kernel
 * gave no randomness; the state is then seeded from the clock, the thread
 * and an address (still distinct per worker and per start, the caller logs
 * that it happened). */
int sc_request_id_rng_init(sc_request_id_rng *r);
/* Deterministic seeding for tests. */
void sc_request_id_rng_seed(sc_request_id_rng *r, uint64_t seed);
/* Next 64 random bits. */
uint64_t sc_request_id_rng_next(sc_request_id_rng *r);

/* Writes a new ID: SC_REQUEST_ID_LEN characters and a NUL into out
 * (at least SC_REQUEST_ID_LEN + 1 bytes). Returns SC_REQUEST_ID_LEN. */
size_t sc_request_id_generate(sc_request_id_rng *r, char *out);
/* The text form of 16 given bytes (the same layout), for tests and for
 * callers that already hold 128 random bits. NUL terminated. */
void sc_request_id_format(const uint8_t id[16], char *out);

#endif

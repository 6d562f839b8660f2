/*
 * digits.h: bytes to hex text for what is written on every request: a
 * byte to two lower-case hex digits (one load and one 2-byte store instead
 * of two shifts, two loads and two stores: request, trace and span IDs).
 * Decimal is core/decimal.h, included here for the modules that write
 * both. Header only; nothing allocates.
 */
#ifndef SC_OBS_DIGITS_H
#define SC_OBS_DIGITS_H

#include "core/decimal.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* sc_hex_pairs + 2 * b: the two digits of byte b. */
static const char sc_hex_pairs[513] =
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f"
    "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
    "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"
    "808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f"
    "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf"
    "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7d8d9dadbdcdddedf"
    "e0e1e2e3e4e5e6e7e8e9eaebecedeeeff0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";

/* The 8 hex digits of x, most significant first, as they go to memory:
 * each nibble spread into a byte of its own, then '0' or 'a' - 10 added
 * to all eight at once (about 20 instructions instead of 8 table steps). */
static inline uint64_t sc_hex_word(uint32_t x)
{
    uint64_t v = x;
    v = ((v & 0xffff0000ull) << 16) | (v & 0xffffull);
    v = ((v & 0x0000ff000000ff00ull) << 8) | (v & 0x000000ff000000ffull);
    v = ((v & 0x00f000f000f000f0ull) << 4) | (v & 0x000f000f000f000full);
    uint64_t letters = ((v + 0x0606060606060606ull) >> 4) & 0x0101010101010101ull; /* 1 where >= 10 */
    v += 0x3030303030303030ull + letters * ('a' - '0' - 10);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

#ifdef __SSE2__
/* The 32 hex digits of the 16 bytes x (SSE2, every x86-64): each byte's
 * two nibbles side by side, then '0' or 'a' - 10 added to all 32 at once. */
static inline void sc_hex_16(__m128i x, char *out)
{
    const __m128i low4 = _mm_set1_epi8(0x0f);
    __m128i lo = _mm_and_si128(x, low4), hi = _mm_and_si128(_mm_srli_epi16(x, 4), low4);
    __m128i d[2] = {_mm_unpacklo_epi8(hi, lo), _mm_unpackhi_epi8(hi, lo)};
    for (int k = 0; k < 2; k++) {
        __m128i letters = _mm_and_si128(_mm_cmpgt_epi8(d[k], _mm_set1_epi8(9)), _mm_set1_epi8('a' - '0' - 10));
        d[k] = _mm_add_epi8(d[k], _mm_add_epi8(letters, _mm_set1_epi8('0')));
    }
    _mm_storeu_si128((__m128i *)out, d[0]);
    _mm_storeu_si128((__m128i *)(out + 16), d[1]);
}
#endif

/* Writes 2n hex digits of b[0..n) into out (no terminator). With SSE2, 16
 * bytes (a trace ID) are one step and 8 (a span ID) half of one: a few
 * instructions instead of 4 or 2 sc_hex_word steps. */
static inline void sc_hex_bytes(const uint8_t *b, size_t n, char *out)
{
    size_t i = 0;
#ifdef __SSE2__
    for (; i + 16 <= n; i += 16)
        sc_hex_16(_mm_loadu_si128((const __m128i *)(b + i)), out + 2 * i);
    if (i + 8 <= n) {
        char tmp[32];
        sc_hex_16(_mm_loadl_epi64((const __m128i *)(b + i)), tmp);
        memcpy(out + 2 * i, tmp, 16);
        i += 8;
    }
#endif
    size_t whole = n & ~(size_t)3;
    for (; i < whole; i += 4) {
        uint32_t x; /* b[i] the top byte */
        memcpy(&x, b + i, 4);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        x = __builtin_bswap32(x);
#endif
        uint64_t w = sc_hex_word(x);
        memcpy(out + 2 * i, &w, 8);
    }
    for (; i < n; i++)
        memcpy(out + 2 * i, sc_hex_pairs + 2 * b[i], 2);
}

#endif

/*
 * decimal.h: unsigned integers to decimal text, for what is written on
 * every request (content-length, status codes, grpc-timeout, access-log and
 * span numbers): the digits counted first, then written two at a time from
 * a table of digit pairs (half the divisions, each by a constant: a
 * multiply), or eight at a time in the lanes of one word (sc_dec_word).
 * Header only; nothing allocates.
 */
#ifndef SC_CORE_DECIMAL_H
#define SC_CORE_DECIMAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* sc_dec_pairs + 2 * v: the two decimal digits of v (0..99). */
static const char sc_dec_pairs[201] =
    "00010203040506070809101112131415161718192021222324"
    "25262728293031323334353637383940414243444546474849"
    "50515253545556575859606162636465666768697071727374"
    "75767778798081828384858687888990919293949596979899";

/* The number of decimal digits of v (1..20): the bit length times
 * log10(2) (1233 / 4096) gives the count or one less, and one compare
 * with a power of ten settles it. */
static inline size_t sc_dec_len(uint64_t v)
{
    static const uint64_t pow10[20] = {
        1ull, 10ull, 100ull, 1000ull, 10000ull, 100000ull, 1000000ull, 10000000ull, 100000000ull,
        1000000000ull, 10000000000ull, 100000000000ull, 1000000000000ull, 10000000000000ull,
        100000000000000ull, 1000000000000000ull, 10000000000000000ull, 100000000000000000ull,
        1000000000000000000ull, 10000000000000000000ull};
    unsigned bits = 64u - (unsigned)__builtin_clzll(v | 1);
    size_t t = (bits * 1233u) >> 12;
    return t + 1 - (v < pow10[t]) + (v == 0);
}

/* The 8 decimal digits of v (< 10^8, leading zeros included), most
 * significant first, as they go to memory: v split in two halves of 4
 * digits, each half in two of 2, each of those in two digits, every split
 * done on all lanes of the word at once by a multiply and shift (exact for
 * these ranges: x / 100 = x * 5243 >> 19 for x < 43699, x / 10 = x * 103 >> 10
 * for x < 179), then '0' added to all eight: about 20 instructions, no
 * table, for what sc_fmt_u64 does in four table steps. */
static inline uint64_t sc_dec_word(uint32_t v)
{
    uint64_t z = (uint64_t)(v / 10000u) | (uint64_t)(v % 10000u) << 32;          /* 2 lanes of 32 bits, < 10^4 */
    uint64_t q = ((z * 5243u) >> 19) & 0x0000007f0000007full;
    z = q | (z - q * 100u) << 16;                                                 /* 4 lanes of 16 bits, < 100 */
    q = ((z * 103u) >> 10) & 0x000f000f000f000full;
    z = q | (z - q * 10u) << 8;                                                   /* 8 lanes of 8 bits, < 10 */
    z += 0x3030303030303030ull;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    z = __builtin_bswap64(z);
#endif
    return z;
}

/* v in decimal into out (up to 20 bytes, no terminator); returns the
 * length: the digits counted first, then written from the end two at a
 * time straight into out, eight at a time in 32-bit arithmetic (a
 * nanosecond timestamp has 19). snprintf("%llu") costs ~1000
 * instructions of format parsing. */
static inline size_t sc_fmt_u64(char *out, uint64_t v)
{
    size_t n = sc_dec_len(v);
    char *p = out + n;
    while (v >= 100000000u) {
        uint32_t lo = (uint32_t)(v % 100000000u);
        v /= 100000000u;
        for (int i = 0; i < 4; i++) {
            p -= 2;
            memcpy(p, sc_dec_pairs + 2 * (lo % 100u), 2);
            lo /= 100u;
        }
    }
    uint32_t x = (uint32_t)v;
    while (x >= 100u) {
        p -= 2;
        memcpy(p, sc_dec_pairs + 2 * (x % 100u), 2);
        x /= 100u;
    }
    if (x >= 10u)
        memcpy(p - 2, sc_dec_pairs + 2 * x, 2);
    else
        p[-1] = (char)('0' + x);
    return n;
}

#endif

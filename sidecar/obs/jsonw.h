/*
 * jsonw.h: a bounded JSON writer for the per-request path (access log lines,
 * the failure ring's JSON): appends into a caller-provided buffer, never
 * allocates, never calls the printf family.
 *
 * Strings are escaped so any bytes give valid JSON: '"' and '\' and the
 * control characters (and DEL) are escaped, valid UTF-8 passes through, and
 * every byte that is not part of a valid UTF-8 sequence becomes U+FFFD
 * ("\ufffd"), so a request path with stray bytes cannot break a log parser.
 *
 * Bounds: each string is written within a byte budget (quotes included); one
 * that does not fit is cut at a character boundary and ends with "..."
 * before its closing quote, and the writer's `truncated` flag is set. When
 * the buffer itself runs out, `overflow` is set and nothing more is written
 * (the caller drops the line: it would not be valid JSON).
 *
 * Memory: the writer points into the caller's buffer; nothing is owned.
 */
#ifndef SC_OBS_JSONW_H
#define SC_OBS_JSONW_H

#include "core/common.h"

typedef struct sc_jw {
    char *p;            /* next byte to write */
    char *end;          /* one past the last byte of the buffer */
    bool truncated;     /* a string was cut to its budget */
    bool overflow;      /* the buffer ran out: the output is incomplete */
} sc_jw;

static inline void sc_jw_init(sc_jw *w, char *buf, size_t cap)
{
    w->p = buf;
    w->end = buf + cap;
    w->truncated = false;
    w->overflow = false;
}

/* Raw bytes (already valid JSON). */
static inline void sc_jw_raw(sc_jw *w, const char *s, size_t n)
{
    if (SC_UNLIKELY((size_t)(w->end - w->p) < n)) {
        w->overflow = true;
        w->p = w->end;
        return;
    }
    memcpy(w->p, s, n);
    w->p += n;
}
#define SC_JW_LIT(w, s) sc_jw_raw((w), "" s, sizeof(s) - 1) /* string literals only */

static inline void sc_jw_char(sc_jw *w, char c)
{
    if (SC_UNLIKELY(w->p == w->end)) {
        w->overflow = true;
        return;
    }
    *w->p++ = c;
}

/* Unsigned and signed decimal integers. */
void sc_jw_u64(sc_jw *w, uint64_t v);
void sc_jw_i64(sc_jw *w, int64_t v);
/* A duration in nanoseconds as milliseconds with three decimals ("12.345"):
 * microsecond resolution, rounded down. */
void sc_jw_ms(sc_jw *w, uint64_t ns);
/* A JSON string of s[0..len) within `budget` output bytes (both quotes
 * included; at least 5 so "\"...\"" fits; larger than the space left is
 * clipped to it). s may be NULL when len is 0. sc_jw_str_any does every
 * case; sc_jw_str below takes the usual one inline (a short string with
 * nothing to escape that fits: a line has a dozen of them). */
void sc_jw_str_any(sc_jw *w, const char *s, size_t len, size_t budget);

/* Non-zero when one of the 8 bytes of x is not copied as is (below 0x20,
 * '"', '\\', 0x7f, or 0x80 and up: jsonw.c's escaped or UTF-8 classes), a word at a
 * time: a byte's top bit ends up set when it is 0x80 or more (x), below
 * 0x20 (x - 0x20), 0x7f (x + 1), '"' or '\\' (x ^ c - 1). A borrow or carry
 * between bytes only starts at a byte that is itself one of these, so the
 * answer (not which byte) is exact. */
static inline uint64_t sc_jw_special8(uint64_t x)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    return ((x - ones * 0x20) | x | (x + ones) | ((x ^ (ones * '"')) - ones) | ((x ^ (ones * '\\')) - ones)) & highs;
}

/* True when no byte of s[0..n) needs escaping, a word at a time (words
 * that overlap at the end: every byte tested is one of the string's). */
static inline bool sc_jw_plain_all(const unsigned char *s, size_t n)
{
    uint64_t x;
    if (n >= 8) {
        size_t whole = n & ~(size_t)7;
        for (size_t i = 0; i < whole; i += 8) {
            memcpy(&x, s + i, 8);
            if (sc_jw_special8(x))
                return false;
        }
        memcpy(&x, s + n - 8, 8);
        return !sc_jw_special8(x);
    }
    if (n >= 4) {
        uint32_t lo, hi;
        memcpy(&lo, s, 4);
        memcpy(&hi, s + n - 4, 4);
        return !sc_jw_special8(lo | (uint64_t)hi << 32);
    }
    x = 0x6161616161616161ull; /* padded with a plain byte */
    for (size_t i = 0; i < n; i++)
        x = (x << 8) | s[i];
    return !sc_jw_special8(x);
}

/* memcpy for the short strings of a line, inline: fixed-size moves that
 * overlap at the end instead of a call. */
static inline void sc_jw_copy_small(char *d, const unsigned char *s, size_t n)
{
    if (n >= 8) {
        size_t whole = n & ~(size_t)7;
        for (size_t i = 0; i < whole; i += 8)
            memcpy(d + i, s + i, 8);
        memcpy(d + n - 8, s + n - 8, 8);
    } else if (n >= 4) {
        memcpy(d, s, 4);
        memcpy(d + n - 4, s + n - 4, 4);
    } else {
        for (size_t i = 0; i < n; i++)
            d[i] = (char)s[i];
    }
}

static inline void sc_jw_str(sc_jw *w, const char *s, size_t len, size_t budget)
{
    if (SC_LIKELY(len <= 64 && len + 2 <= budget && len + 2 <= (size_t)(w->end - w->p) && budget >= 5 &&
                  sc_jw_plain_all((const unsigned char *)s, len))) {
        char *q = w->p;
        *q++ = '"';
        sc_jw_copy_small(q, (const unsigned char *)s, len);
        q[len] = '"';
        w->p = q + len + 1;
        return;
    }
    sc_jw_str_any(w, s, len, budget);
}
/* The same for a NUL-terminated string, or JSON null when s is NULL. */
void sc_jw_cstr_or_null(sc_jw *w, const char *s, size_t budget);
/* Wall-clock time (ns since the Unix epoch) as a JSON string in RFC 3339
 * UTC with milliseconds: "2026-12-07T05:31:17.123Z". */
void sc_jw_time(sc_jw *w, uint64_t unix_ns);

/* Civil date of a day count since 1970-01-01 (proleptic Gregorian), exposed
 * for tests: no gmtime_r (and its locks) on the per-request path. */
void sc_jw_civil(int64_t days, int64_t *y, unsigned *m, unsigned *d);

#endif

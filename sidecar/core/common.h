/*
 * common.h: the conventions every module of the sidecar follows.
 *
 * Errors: a function that can fail returns int; 0 (or a non-negative count)
 * means success and a negative errno value means failure (-EINVAL for bad
 * input, -ENOMEM when an allocation failed, -EPROTO for a protocol
 * violation by a peer, ...), the libuv convention. Functions that need to
 * explain a failure to a human take a `char *err, size_t errlen` buffer.
 *
 * Naming: every exported symbol starts with `sc_<module>_`; types are
 * `sc_<thing>`; static helpers inside a .c file carry no prefix.
 *
 * Memory: a header says who owns what it returns. Unless it says otherwise
 * the caller owns nothing it did not allocate itself.
 */
#ifndef SC_COMMON_H
#define SC_COMMON_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/decimal.h" /* sc_fmt_u64 */

#define SC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define SC_MIN(a, b) ((a) < (b) ? (a) : (b))
#define SC_MAX(a, b) ((a) > (b) ? (a) : (b))
#define SC_UNUSED(x) ((void)(x))
#define SC_LIKELY(x) __builtin_expect(!!(x), 1)
#define SC_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* container_of: from a pointer to a member back to its enclosing struct. */
#define SC_CONTAINER_OF(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))

/* Allocation that cannot usefully fail at start-up (config, tables): aborts
 * with a message on out-of-memory. Never used on the per-request path. */
void *sc_xcalloc(size_t n, size_t size);
char *sc_xstrdup(const char *s);
char *sc_xstrndup(const char *s, size_t n);

/* Monotonic clock in milliseconds / nanoseconds (CLOCK_MONOTONIC). */
uint64_t sc_now_ms(void);
uint64_t sc_now_ns(void);

/*
 * A string literal with its length, for tables of names matched on the
 * per-request path (hop-by-hop header lists): the length is compared first,
 * so most names are rejected without touching their bytes and without a
 * strlen() per entry per header. Build entries with SC_LIT("name").
 */
typedef struct {
    const char *p;
    size_t len;
} sc_lit;
#define SC_LIT(s) {(s), sizeof(s) - 1}

/* True when name[0..len) equals one of the n entries exactly (case-sensitive:
 * HTTP/2 and the HTTP/1 codec hand over lower-case names). */
static inline bool sc_lit_in(const void *name, size_t len, const sc_lit *tab, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (tab[i].len == len && memcmp(tab[i].p, name, len) == 0)
            return true;
    return false;
}

/* A set of names with the mask of their lengths (bit L set: an entry is L
 * bytes long), so that a name of a length no entry has (most names) is
 * refused with one test. Made at compile time from one list, an X-macro
 * that applies its argument to each literal:
 *
 *   #define HOP(X) X("connection") X("keep-alive")
 *   SC_LIT_SET(hop_set, HOP);
 *   ... sc_lit_set_has(&hop_set, name, len) ...
 *
 * Entries are at most 63 bytes long (the compiler refuses a longer one:
 * the shift overflows). */
typedef struct {
    uint64_t lens;
    size_t n;
    const sc_lit *tab;
} sc_lit_set;
#define SC_LIT_ITEM_(s) SC_LIT(s),
#define SC_LIT_LENBIT_(s) (UINT64_C(1) << (sizeof(s) - 1)) |
#define SC_LIT_SET(name, LIST)                                                                                        \
    static const sc_lit name##_tab_[] = {LIST(SC_LIT_ITEM_)};                                                         \
    static const sc_lit_set name = {LIST(SC_LIT_LENBIT_) 0, sizeof(name##_tab_) / sizeof(name##_tab_[0]), name##_tab_}

/* Whether an entry of the set is len bytes long (for a compare of another
 * kind, such as in any letter case, after it). */
static inline bool sc_lit_set_len_in(const sc_lit_set *set, size_t len)
{
    return len <= 63 && ((set->lens >> len) & 1);
}

static inline bool sc_lit_set_has(const sc_lit_set *set, const void *name, size_t len)
{
    return sc_lit_set_len_in(set, len) && sc_lit_in(name, len, set->tab, set->n);
}

/* True when a[0..alen) equals lit exactly. lit a string literal: always
 * inlined, so its strlen is a constant and the test is a compare and a
 * fixed-size memcmp. */
static inline __attribute__((always_inline)) bool sc_lit_eq(const void *a, size_t alen, const char *lit)
{
    size_t l = strlen(lit);
    return alen == l && memcmp(a, lit, l) == 0;
}

/* ASCII letter case, independent of the locale (header names, media types
 * and tokens are ASCII; strncasecmp goes through the locale's tables). */
static inline char sc_ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
}

/* a[0..n) equals b[0..n), ignoring ASCII case. Bytes equal as they are
 * (most, in the spellings clients send) skip the case folding. */
static inline bool sc_ascii_ieq_n(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i] && sc_ascii_lower(a[i]) != sc_ascii_lower(b[i]))
            return false;
    return true;
}

/* The value of one hexadecimal digit (either case), -1 for anything else. */
static inline int sc_hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

#endif

/*
 * smallpool.h: a cache of small heap blocks for one thread, in front of
 * malloc, for the allocations an HTTP/2 session makes for every stream
 * (nghttp2 allocates a dozen blocks per request: the stream, its header
 * copies, outbound items, received header buffers). A worker keeps one pool
 * and hands it to nghttp2 through nghttp2_mem, so a block freed by one
 * request is the next request's without a trip through malloc.
 *
 * Blocks carry a 16-byte header in front (the size class, or "plain" for a
 * block too large for the classes, which goes to malloc and back), so free
 * and realloc need no size. Classes are powers of two from 32 to 2048 bytes,
 * header included. Each class keeps at most max_bytes_per_class bytes of
 * free blocks; beyond that a freed block goes back to malloc, so what the
 * pool holds is bounded (7 classes x the cap).
 *
 * Threads: a pool belongs to one thread; nothing is locked. Memory: the
 * pool owns its free blocks (sc_smallpool_drain frees them); a block handed
 * out is the caller's until sc_smallpool_free. A NULL pool is valid: every
 * block is then plain (malloc with the header).
 */
#ifndef SC_CORE_SMALLPOOL_H
#define SC_CORE_SMALLPOOL_H

#include "core/common.h"

/* Under AddressSanitizer a block on a free list is poisoned (all but the
 * word that links it), so a use after free of a recycled block is still
 * reported. */
#if defined(__SANITIZE_ADDRESS__)
#define SC_SMALLPOOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SC_SMALLPOOL_ASAN 1
#endif
#endif
#ifdef SC_SMALLPOOL_ASAN
#include <sanitizer/asan_interface.h>
#define SC_SMALLPOOL_POISON(p, n) ASAN_POISON_MEMORY_REGION((p), (n))
#define SC_SMALLPOOL_UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define SC_SMALLPOOL_POISON(p, n) ((void)(p), (void)(n))
#define SC_SMALLPOOL_UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define SC_SMALLPOOL_CLASSES 7 /* 32, 64, ..., 2048 bytes with the header */
#define SC_SMALLPOOL_HEADER 16

typedef struct sc_smallpool {
    void *head[SC_SMALLPOOL_CLASSES];     /* free blocks, linked through their first word */
    uint32_t n[SC_SMALLPOOL_CLASSES];     /* free blocks per class */
    uint32_t max[SC_SMALLPOOL_CLASSES];   /* at most this many kept per class */
    uint64_t hits, misses;                /* allocations served from a list / by malloc */
} sc_smallpool;

/* Keeps at most max_bytes_per_class bytes of free blocks in each class (0:
 * keeps none, a pass-through to malloc). */
void sc_smallpool_init(sc_smallpool *p, size_t max_bytes_per_class);
/* The header in front of every block (the rest of the module's use). */
typedef struct sc_smallpool_header {
    uint16_t magic;
    uint8_t cls;            /* class index, or SC_SMALLPOOL_PLAIN */
    uint8_t pad_;
    uint32_t pad2_;
    uint64_t size;          /* SC_SMALLPOOL_PLAIN: the bytes asked for (what realloc copies) */
} sc_smallpool_header;
#define SC_SMALLPOOL_PLAIN 0xffu
#define SC_SMALLPOOL_MAGIC 0x5350u /* "SP": a header this module wrote */

void *sc_smallpool_alloc_slow(sc_smallpool *p, size_t n, unsigned cls);
void sc_smallpool_free_slow(sc_smallpool *p, sc_smallpool_header *h);

/* The class for n bytes of payload, or SC_SMALLPOOL_PLAIN when too large. */
static inline unsigned sc_smallpool_class(size_t n)
{
    size_t total = n + SC_SMALLPOOL_HEADER;
    if (total > ((size_t)32 << (SC_SMALLPOOL_CLASSES - 1)))
        return SC_SMALLPOOL_PLAIN;
    if (total <= 32)
        return 0;
    return (unsigned)(64 - __builtin_clzll((unsigned long long)(total - 1))) - 5;
}

/* n bytes, 16-byte aligned; NULL when out of memory (n may be 0). Inline:
 * the usual case is a pop from a class list. */
static inline void *sc_smallpool_alloc(sc_smallpool *p, size_t n)
{
    unsigned c = sc_smallpool_class(n);
    if (SC_LIKELY(c != SC_SMALLPOOL_PLAIN && p && p->head[c])) {
        sc_smallpool_header *h = p->head[c];
        SC_SMALLPOOL_UNPOISON(h, (size_t)32 << c);
        p->head[c] = *(void **)h;
        p->n[c]--;
        p->hits++;
        h->magic = SC_SMALLPOOL_MAGIC;
        h->cls = (uint8_t)c;
        return (char *)h + SC_SMALLPOOL_HEADER;
    }
    return sc_smallpool_alloc_slow(p, n, c);
}
/* n bytes in a block of their own size (malloc with the header), never
 * from or back to a class list: for blocks kept for a long time, where a
 * class's rounding up would be waste held for as long. Freed like any
 * other block. */
static inline void *sc_smallpool_alloc_exact(sc_smallpool *p, size_t n)
{
    return sc_smallpool_alloc_slow(p, n, SC_SMALLPOOL_PLAIN);
}
/* Zeroed k * n bytes; NULL on overflow or out of memory. */
void *sc_smallpool_calloc(sc_smallpool *p, size_t k, size_t n);
/* NULL is a no-op. ptr must come from a pool function (any pool's: the
 * class is in the header; it goes to p's list); anything else aborts. */
static inline void sc_smallpool_free(sc_smallpool *p, void *ptr)
{
    if (!ptr)
        return;
    sc_smallpool_header *h = (sc_smallpool_header *)((char *)ptr - SC_SMALLPOOL_HEADER);
    unsigned c = h->cls;
    if (SC_LIKELY(h->magic == SC_SMALLPOOL_MAGIC && c != SC_SMALLPOOL_PLAIN && p && p->n[c] < p->max[c])) {
        *(void **)h = p->head[c];
        p->head[c] = h;
        p->n[c]++;
        SC_SMALLPOOL_POISON((char *)h + sizeof(void *), ((size_t)32 << c) - sizeof(void *));
        return;
    }
    sc_smallpool_free_slow(p, h);
}
/* realloc(3) semantics: NULL ptr allocates; NULL on failure leaves ptr as
 * it was. */
void *sc_smallpool_realloc(sc_smallpool *p, void *ptr, size_t n);
/* How many bytes ptr may hold. */
size_t sc_smallpool_usable(const void *ptr);
/* Frees every cached block (the blocks handed out are not touched). */
void sc_smallpool_drain(sc_smallpool *p);

#endif

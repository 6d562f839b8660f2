/*
 * smallpool.c: per-thread small-block cache (smallpool.h).
 *
 * Why by hand: glibc's malloc already has per-thread caches, but a call
 * through it costs about 100 instructions each way on this path (arena
 * checks, tcache bookkeeping, chunk headers) and its tcache holds only 7
 * blocks per size, far fewer than the streams in flight on a busy
 * connection; a class list here is a handful of instructions, and its
 * bound is ours to choose.
 */
#include "core/smallpool.h"

#include <stdlib.h>

#define PLAIN SC_SMALLPOOL_PLAIN
#define MAGIC SC_SMALLPOOL_MAGIC
typedef sc_smallpool_header header;
_Static_assert(sizeof(header) == SC_SMALLPOOL_HEADER, "the header keeps blocks 16-byte aligned");

static inline size_t class_size(unsigned c)
{
    return (size_t)32 << c;
}

static inline header *head_of(const void *ptr)
{
    return (header *)((char *)ptr - SC_SMALLPOOL_HEADER);
}

void sc_smallpool_init(sc_smallpool *p, size_t max_bytes_per_class)
{
    memset(p, 0, sizeof(*p));
    for (unsigned c = 0; c < SC_SMALLPOOL_CLASSES; c++)
        p->max[c] = (uint32_t)SC_MIN(max_bytes_per_class / class_size(c), (size_t)UINT32_MAX);
}

/* The class list is empty, or the block is plain: malloc. */
void *sc_smallpool_alloc_slow(sc_smallpool *p, size_t n, unsigned c)
{
    size_t total = c == PLAIN ? n + SC_SMALLPOOL_HEADER : class_size(c);
    header *h;
    if (total < n || !(h = malloc(total)))
        return NULL;
    if (p)
        p->misses++;
    h->magic = MAGIC;
    h->cls = (uint8_t)c;
    h->size = n;
    return (char *)h + SC_SMALLPOOL_HEADER;
}

void *sc_smallpool_calloc(sc_smallpool *p, size_t k, size_t n)
{
    size_t t;
    if (__builtin_mul_overflow(k, n, &t))
        return NULL;
    void *q = sc_smallpool_alloc(p, t);
    if (q)
        memset(q, 0, t);
    return q;
}

/* Not a pool block (abort: freeing it would corrupt the heap), a plain
 * block, or its class list is full: back to malloc. */
void sc_smallpool_free_slow(sc_smallpool *p, header *h)
{
    (void)p;
    if (h->magic != MAGIC)
        abort();
    free(h);
}

size_t sc_smallpool_usable(const void *ptr)
{
    const header *h = head_of(ptr);
    return h->cls == PLAIN ? (size_t)h->size : class_size(h->cls) - SC_SMALLPOOL_HEADER;
}

void *sc_smallpool_realloc(sc_smallpool *p, void *ptr, size_t n)
{
    if (!ptr)
        return sc_smallpool_alloc(p, n);
    size_t have = sc_smallpool_usable(ptr);
    header *h = head_of(ptr);
    if (h->cls != PLAIN && n <= have)
        return ptr; /* the class already holds it */
    void *q = sc_smallpool_alloc(p, n);
    if (!q)
        return NULL;
    memcpy(q, ptr, SC_MIN(have, n));
    sc_smallpool_free(p, ptr);
    return q;
}

void sc_smallpool_drain(sc_smallpool *p)
{
    for (unsigned c = 0; c < SC_SMALLPOOL_CLASSES; c++) {
        while (p->head[c]) {
            void *b = p->head[c];
            p->head[c] = *(void **)b;
            SC_SMALLPOOL_UNPOISON(b, class_size(c));
            free(b);
        }
        p->n[c] = 0;
    }
}

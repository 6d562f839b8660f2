/*
 * buf.h: a bounded contiguous byte buffer. Data lives in [start, end) of a
 * block of `cap` bytes; space is reclaimed by compaction when the front is
 * consumed. The block comes from the worker's block pool (sc_pool_*), so a
 * buffer costs no malloc on the per-request path once the pool is warm.
 */
#ifndef SC_BUF_H
#define SC_BUF_H

#include "core/common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

typedef struct sc_buf {
    char *data;      /* NULL until first use */
    uint32_t cap;
    uint32_t start;
    uint32_t end;
} sc_buf;

static inline size_t sc_buf_len(const sc_buf *b) { return b->end - b->start; }
static inline char *sc_buf_head(const sc_buf *b) { return b->data + b->start; }

/* Free space at the tail after compaction (compacts when worthwhile). */
static inline size_t sc_buf_space(sc_buf *b)
{
    if (!b->data)
        return b->cap;
    if (b->start && (b->start == b->end || b->cap - b->end < b->cap / 4)) {
        memmove(b->data, b->data + b->start, b->end - b->start);
        b->end -= b->start;
        b->start = 0;
    }
    return b->cap - b->end;
}

static inline char *sc_buf_tail(const sc_buf *b) { return b->data + b->end; }

/* A rollback point for a writer that may give up half-way: the length of
 * the data, not the end offset, because sc_buf_space() may compact the
 * buffer (move the data to the front) between the mark and the rewind. */
static inline size_t sc_buf_mark(const sc_buf *b) { return b->end - b->start; }
static inline void sc_buf_rewind(sc_buf *b, size_t mark) { b->end = b->start + (uint32_t)mark; }

static inline void sc_buf_consume(sc_buf *b, size_t n)
{
    b->start += (uint32_t)n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

/* Appends n bytes to a buffer on the heap (not the block pool), growing it by
 * doubling from 256 bytes up to limit: a copy that is kept, such as a retry's
 * replay of the request body, holds about what was appended, not limit (an
 * 18-byte gRPC message pinned a 64 KiB block). -E2BIG when the contents would
 * exceed limit, -ENOMEM; b is unchanged on failure. The caller frees b->data. */
static inline int sc_buf_append_heap(sc_buf *b, const void *p, size_t n, size_t limit)
{
    size_t need = (size_t)b->end + n;
    if (need > limit || limit > UINT32_MAX)
        return -E2BIG;
    if (need > b->cap || !b->data) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < need)
            cap *= 2;
        if (cap > limit)
            cap = limit ? limit : 1;
        char *nd = realloc(b->data, cap);
        if (!nd)
            return -ENOMEM;
        b->data = nd;
        b->cap = (uint32_t)cap;
    }
    if (n)
        memcpy(b->data + b->end, p, n);
    b->end += (uint32_t)n;
    return 0;
}

#endif

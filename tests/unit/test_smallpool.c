/*
 * test_smallpool.c: the per-thread small-block cache: classes and
 * alignment, reuse from the lists, the per-class bound, plain and exact
 * blocks, realloc across classes, the NULL pool, and a random workload
 * checked byte for byte.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/smallpool.h"

static void test_classes_and_reuse(void **state)
{
    (void)state;
    sc_smallpool p;
    sc_smallpool_init(&p, 4096);
    size_t sizes[] = {0, 1, 16, 17, 48, 49, 112, 113, 240, 496, 1008, 2032};
    size_t usable[] = {16, 16, 16, 48, 48, 112, 112, 240, 240, 496, 1008, 2032};
    for (size_t i = 0; i < SC_ARRAY_LEN(sizes); i++) {
        void *a = sc_smallpool_alloc(&p, sizes[i]);
        assert_non_null(a);
        assert_int_equal((uintptr_t)a % 16, 0);
        assert_int_equal(sc_smallpool_usable(a), usable[i]);
        memset(a, 0xab, sizes[i]);
        sc_smallpool_free(&p, a);
        void *b = sc_smallpool_alloc(&p, sizes[i]);
        assert_ptr_equal(a, b); /* the block just freed comes back */
        sc_smallpool_free(&p, b);
    }
    assert_true(p.hits >= SC_ARRAY_LEN(sizes));
    /* too large for the classes: plain, exact size, never cached */
    void *big = sc_smallpool_alloc(&p, 5000);
    assert_non_null(big);
    assert_int_equal(sc_smallpool_usable(big), 5000);
    memset(big, 1, 5000);
    sc_smallpool_free(&p, big);
    /* exact: a small block of its own size, not a class's, and not kept
     * on a list when freed (a 1 KiB block would otherwise take 2 KiB) */
    unsigned n6 = p.n[6];
    void *ex = sc_smallpool_alloc_exact(&p, 1024);
    assert_non_null(ex);
    assert_int_equal((uintptr_t)ex % 16, 0);
    assert_int_equal(sc_smallpool_usable(ex), 1024);
    memset(ex, 2, 1024);
    sc_smallpool_free(&p, ex);
    assert_int_equal(p.n[6], n6);
    ex = sc_smallpool_alloc_exact(&p, 1024);
    memset(ex, 3, 1024);
    ex = sc_smallpool_realloc(&p, ex, 1030); /* moves to a class, bytes kept */
    assert_int_equal(((unsigned char *)ex)[1023], 3);
    sc_smallpool_free(&p, ex);
    sc_smallpool_drain(&p);
}

static void test_bound(void **state)
{
    (void)state;
    sc_smallpool p;
    sc_smallpool_init(&p, 4 * 64); /* four blocks of the 64-byte class */
    void *v[10];
    for (int i = 0; i < 10; i++)
        v[i] = sc_smallpool_alloc(&p, 40);
    for (int i = 0; i < 10; i++)
        sc_smallpool_free(&p, v[i]);
    assert_int_equal(p.n[1], 4); /* the rest went back to malloc */
    sc_smallpool_drain(&p);
    assert_int_equal(p.n[1], 0);
    assert_null(p.head[1]);
    /* a pass-through pool keeps nothing */
    sc_smallpool_init(&p, 0);
    void *a = sc_smallpool_alloc(&p, 10);
    sc_smallpool_free(&p, a);
    assert_int_equal(p.n[0], 0);
}

static void test_realloc_and_calloc(void **state)
{
    (void)state;
    sc_smallpool p;
    sc_smallpool_init(&p, 8192);
    unsigned char *a = sc_smallpool_realloc(&p, NULL, 10);
    for (int i = 0; i < 10; i++)
        a[i] = (unsigned char)i;
    a = sc_smallpool_realloc(&p, a, 14); /* same class: same block */
    unsigned char *b = sc_smallpool_realloc(&p, a, 3000); /* to plain */
    for (int i = 0; i < 10; i++)
        assert_int_equal(b[i], i);
    b = sc_smallpool_realloc(&p, b, 100); /* back to a class */
    for (int i = 0; i < 10; i++)
        assert_int_equal(b[i], i);
    sc_smallpool_free(&p, b);
    unsigned char *z = sc_smallpool_calloc(&p, 30, 7);
    for (int i = 0; i < 210; i++)
        assert_int_equal(z[i], 0);
    sc_smallpool_free(&p, z);
    assert_null(sc_smallpool_calloc(&p, SIZE_MAX / 2, 3));
    sc_smallpool_free(&p, NULL);
    /* the NULL pool: plain blocks, still freeable */
    void *q = sc_smallpool_alloc(NULL, 20);
    q = sc_smallpool_realloc(NULL, q, 200);
    sc_smallpool_free(NULL, q);
    sc_smallpool_drain(&p);
}

/* Random allocations, frees and reallocs: every live block keeps the bytes
 * written into it (ASan builds also check the bounds). */
static void test_random_workload(void **state)
{
    (void)state;
    sc_smallpool p;
    sc_smallpool_init(&p, 16384);
    enum { N = 256 };
    unsigned char *blk[N] = {0};
    size_t len[N] = {0};
    uint32_t x = 12345;
    for (int step = 0; step < 200000; step++) {
        x = x * 1664525u + 1013904223u;
        unsigned i = (x >> 8) % N;
        if (blk[i]) {
            for (size_t k = 0; k < len[i]; k++)
                if (blk[i][k] != (unsigned char)(i + k))
                    fail_msg("block %u lost byte %zu", i, k);
        }
        size_t n = (x >> 20) % ((x & 1) ? 64 : 2600);
        if (blk[i] && (x & 6) == 0) {
            sc_smallpool_free(&p, blk[i]);
            blk[i] = NULL;
            continue;
        }
        unsigned char *q = blk[i] ? sc_smallpool_realloc(&p, blk[i], n) : sc_smallpool_alloc(&p, n);
        assert_non_null(q);
        blk[i] = q;
        len[i] = n;
        for (size_t k = 0; k < n; k++)
            q[k] = (unsigned char)(i + k);
    }
    for (int i = 0; i < N; i++)
        sc_smallpool_free(&p, blk[i]);
    assert_true(p.hits > p.misses);
    sc_smallpool_drain(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_classes_and_reuse),
        cmocka_unit_test(test_bound),
        cmocka_unit_test(test_realloc_and_calloc),
        cmocka_unit_test(test_random_workload),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

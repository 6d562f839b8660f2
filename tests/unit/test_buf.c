/* Unit tests for proxy/buf.h: the heap-backed append that keeps a retry's
 * replay copy of the request body (sized by what was sent, not the limit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "proxy/buf.h"

/* An 18-byte gRPC message under the default 64 KiB buffer_limit: the copy
 * is a few hundred bytes, not a 64 KiB block. */
/* A writer marks, writes, gives up and rewinds; sc_buf_space() compacted the
 * buffer in between (data moved to the front). The rewind must leave exactly
 * the data that was there, not the old end offset with stale bytes. */
static void test_mark_survives_compaction(void **st)
{
    (void)st;
    char block[64];
    sc_buf b = {.data = block, .cap = sizeof(block)};
    memset(block, 'x', sizeof(block));
    memcpy(block, "0123456789", 10);
    b.start = 0;
    b.end = 60;                 /* nearly full */
    sc_buf_consume(&b, 8);      /* the socket took 8 bytes: start 8, 52 left */
    size_t mark = sc_buf_mark(&b);
    assert_int_equal(mark, 52);
    assert_true(sc_buf_space(&b) >= 12); /* tail under cap/4: compacts to the front */
    assert_int_equal(b.start, 0);
    memcpy(sc_buf_tail(&b), "partial", 7);
    b.end += 7;                 /* part of a head, then no room for the rest */
    sc_buf_rewind(&b, mark);
    assert_int_equal(sc_buf_len(&b), 52);
    assert_memory_equal(sc_buf_head(&b), "89", 2);
}

static void test_append_small_stays_small(void **st)
{
    (void)st;
    sc_buf b = {0};
    const char msg[18] = "\0\0\0\0\x0d" "hello-sidecar";
    assert_int_equal(sc_buf_append_heap(&b, msg, sizeof(msg), 65536), 0);
    assert_int_equal(b.end, 18);
    assert_true(b.cap <= 256);
    assert_memory_equal(b.data, msg, sizeof(msg));
    free(b.data);
}

/* Grows by doubling, never past the limit, keeps every byte in order. */
static void test_append_grows_to_limit(void **st)
{
    (void)st;
    sc_buf b = {0};
    char chunk[1000];
    size_t total = 0;
    for (int i = 0; i < 65; i++) {
        memset(chunk, 'a' + i % 26, sizeof(chunk));
        assert_int_equal(sc_buf_append_heap(&b, chunk, sizeof(chunk), 65536), 0);
        total += sizeof(chunk);
        assert_int_equal(b.end, total);
        assert_true(b.cap >= b.end && b.cap <= 65536);
    }
    for (int i = 0; i < 65; i++)
        assert_int_equal(b.data[i * 1000 + 999], 'a' + i % 26);
    free(b.data);
}

/* Past the limit: -E2BIG and the buffer as it was. */
static void test_append_over_limit_refused(void **st)
{
    (void)st;
    sc_buf b = {0};
    char chunk[600] = {0};
    assert_int_equal(sc_buf_append_heap(&b, chunk, 600, 1000), 0);
    assert_int_equal(sc_buf_append_heap(&b, chunk, 600, 1000), -E2BIG);
    assert_int_equal(b.end, 600);
    assert_true(b.cap <= 1000);
    assert_int_equal(sc_buf_append_heap(&b, chunk, 400, 1000), 0);
    assert_int_equal(b.end, 1000);
    free(b.data);
    sc_buf z = {0};
    assert_int_equal(sc_buf_append_heap(&z, chunk, 1, 0), -E2BIG);   /* limit 0: nothing kept */
    assert_null(z.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mark_survives_compaction),
        cmocka_unit_test(test_append_small_stays_small),
        cmocka_unit_test(test_append_grows_to_limit),
        cmocka_unit_test(test_append_over_limit_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_digits.c: the number-to-text helpers of obs/digits.h against
 * snprintf and a plain hex loop, at every digit-count boundary and on
 * pseudo-random values.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "obs/digits.h"

static void check_dec(uint64_t v)
{
    char want[32], got[32];
    int wn = snprintf(want, sizeof(want), "%" PRIu64, v);
    memset(got, 'x', sizeof(got));
    size_t n = sc_fmt_u64(got, v);
    if (n != (size_t)wn || memcmp(got, want, n) != 0 || got[n] != 'x')
        fail_msg("%s: got \"%.*s\" (%zu bytes)", want, (int)n, got, n);
    assert_int_equal(sc_dec_len(v), n);
}

static void test_dec_boundaries(void **state)
{
    (void)state;
    check_dec(0);
    check_dec(UINT64_MAX);
    uint64_t p = 1;
    for (int i = 0; i < 20; i++) {
        check_dec(p);
        check_dec(p - 1);
        check_dec(p + 1);
        if (i < 19)
            p *= 10;
    }
    for (int b = 0; b < 64; b++) { /* every bit length */
        check_dec(UINT64_C(1) << b);
        check_dec((UINT64_C(1) << b) - 1);
    }
}

static void test_dec_random(void **state)
{
    (void)state;
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        check_dec(x >> (i % 64)); /* every magnitude */
    }
}

static void check_dec_word(uint32_t v)
{
    char want[16], got[8];
    snprintf(want, sizeof(want), "%08" PRIu32, v);
    uint64_t w = sc_dec_word(v);
    memcpy(got, &w, 8);
    if (memcmp(got, want, 8) != 0)
        fail_msg("%s: got \"%.8s\"", want, got);
}

/* sc_dec_word: every power of ten and its neighbours, every value of a
 * 4-digit half in both halves, and pseudo-random values. */
static void test_dec_word(void **state)
{
    (void)state;
    for (uint32_t p = 1; p <= 100000000u; p *= 10) {
        check_dec_word(p - 1);
        if (p < 100000000u) {
            check_dec_word(p);
            check_dec_word(p + 1);
        }
    }
    for (uint32_t h = 0; h < 10000u; h++) {
        check_dec_word(h);
        check_dec_word(h * 10000u);
        check_dec_word(h * 10000u + 9999u - h);
    }
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        check_dec_word((uint32_t)(x % 100000000u));
    }
}

static void test_hex(void **state)
{
    (void)state;
    uint8_t b[40];
    for (int round = 0; round < 7; round++) /* every byte value somewhere (37 odd: a bijection mod 256), at every length */
        for (size_t n = 0; n <= sizeof(b); n++) {
            for (size_t i = 0; i < sizeof(b); i++)
                b[i] = (uint8_t)((i + (size_t)round * 40) * 37 + 5);
            char got[2 * sizeof(b) + 1], want[2 * sizeof(b) + 1];
            memset(got, 'x', sizeof(got));
            sc_hex_bytes(b, n, got);
            for (size_t i = 0; i < n; i++)
                snprintf(want + 2 * i, 3, "%02x", b[i]);
            assert_memory_equal(got, want, 2 * n);
            assert_int_equal(got[2 * n], 'x');
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dec_boundaries),
        cmocka_unit_test(test_dec_random),
        cmocka_unit_test(test_dec_word),
        cmocka_unit_test(test_hex),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_request_id.c: x-request-id validation (length, the safe characters,
 * every byte value) and generation (shape, all 128 bits random, unique,
 * seeding).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "obs/request_id.h"

#define T(s) (s), strlen(s)

static void test_valid_forms(void **state)
{
    (void)state;
    assert_true(sc_request_id_valid(T("3f2a9c1e-0b7d-4e59-a2c4-9d8e7f6a5b4c")));  /* UUID */
    assert_true(sc_request_id_valid(T("01ARZ3NDEKTSV4RRFFQ69G5FAV")));            /* ULID */
    assert_true(sc_request_id_valid(T("q83vEjRWeJA+/w==")));                      /* base64 */
    assert_true(sc_request_id_valid(T("q83vEjRWeJA-_w")));                        /* base64url */
    assert_true(sc_request_id_valid(T("web-1:42")));
    assert_true(sc_request_id_valid(T("user@host.example~7")));
    assert_true(sc_request_id_valid(T("a")));
}

static void test_length_bounds(void **state)
{
    (void)state;
    char buf[SC_REQUEST_ID_MAX + 2];
    memset(buf, 'a', sizeof(buf));
    assert_true(sc_request_id_valid(buf, SC_REQUEST_ID_MAX));
    assert_false(sc_request_id_valid(buf, SC_REQUEST_ID_MAX + 1));
    assert_false(sc_request_id_valid(buf, 0));
    assert_false(sc_request_id_valid(NULL, 0));
    assert_false(sc_request_id_valid(NULL, 5));
}

/* Every byte value: exactly the 71 documented characters pass. */
static void test_every_byte(void **state)
{
    (void)state;
    const char *extra = "-_.:+/=@~";
    unsigned ok = 0;
    for (unsigned c = 0; c < 256; c++) {
        bool want = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    (c != 0 && strchr(extra, (int)c) != NULL);
        char id[3] = {'a', (char)c, 'b'};
        assert_int_equal(sc_request_id_char_ok((unsigned char)c), want);
        assert_int_equal(sc_request_id_valid(id, 3), want);
        ok += want;
    }
    assert_int_equal(ok, 26 + 26 + 10 + 9);
}

/* What would change meaning downstream is refused, wherever it sits. */
static void test_injection_refused(void **state)
{
    (void)state;
    static const char *const bad[] = {
        "abc\r\nx-admin: 1", "abc def", "abc\"}", "a\\b", "a,b", "a;b", "<script>", "a&b", "a%0d%0a",
        "a\tb", "caf\xc3\xa9", "a\x7f", "\xff",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_false(sc_request_id_valid(bad[i], strlen(bad[i])));
    assert_false(sc_request_id_valid("ab\0cd", 5)); /* an embedded NUL */
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

static void test_generated_shape(void **state)
{
    (void)state;
    sc_request_id_rng r;
    assert_int_equal(sc_request_id_rng_init(&r), 0);
    for (int k = 0; k < 1000; k++) {
        char id[SC_REQUEST_ID_LEN + 1];
        memset(id, 'X', sizeof(id));
        assert_int_equal(sc_request_id_generate(&r, id), SC_REQUEST_ID_LEN);
        assert_int_equal(strlen(id), SC_REQUEST_ID_LEN);
        for (int i = 0; i < SC_REQUEST_ID_LEN; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23)
                assert_int_equal(id[i], '-');
            else
                assert_true(is_hex(id[i]));
        }
        assert_true(sc_request_id_valid(id, SC_REQUEST_ID_LEN)); /* a generated ID is always kept */
    }
}

static void test_format_known_bytes(void **state)
{
    (void)state;
    const uint8_t b[16] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
                           0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
    char out[SC_REQUEST_ID_LEN + 1];
    sc_request_id_format(b, out);
    assert_string_equal(out, "00112233-4455-6677-8899-aabbccddeeff");
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, SC_REQUEST_ID_LEN);
}

/* All 128 bits vary (none fixed as in a version-4 UUID), each is set about
 * half the time, and 100k IDs are distinct. */
static void test_generated_bits_random_and_unique(void **state)
{
    (void)state;
    enum { N = 100000 };
    sc_request_id_rng r;
    sc_request_id_rng_seed(&r, 12345);
    char (*ids)[SC_REQUEST_ID_LEN + 1] = malloc(sizeof(*ids) * N);
    assert_non_null(ids);
    unsigned ones[128] = {0};
    for (int k = 0; k < N; k++) {
        sc_request_id_generate(&r, ids[k]);
        int bit = 0;
        for (int i = 0; i < SC_REQUEST_ID_LEN; i++) {
            char c = ids[k][i];
            if (c == '-')
                continue;
            unsigned v = (unsigned)(c <= '9' ? c - '0' : c - 'a' + 10);
            for (int j = 3; j >= 0; j--)
                ones[bit++] += (v >> j) & 1u;
        }
        assert_int_equal(bit, 128);
    }
    for (int b = 0; b < 128; b++) {
        /* binomial(100000, 0.5): sd ~ 158; 10 sd */
        assert_true(ones[b] > N / 2 - 1600 && ones[b] < N / 2 + 1600);
    }
    qsort(ids, N, sizeof(*ids), cmp_id);
    for (int k = 1; k < N; k++)
        assert_true(memcmp(ids[k - 1], ids[k], SC_REQUEST_ID_LEN) != 0);
    free(ids);
}

static void test_seeding(void **state)
{
    (void)state;
    sc_request_id_rng a, b;
    char x[SC_REQUEST_ID_LEN + 1], y[SC_REQUEST_ID_LEN + 1];
    sc_request_id_rng_seed(&a, 7);
    sc_request_id_rng_seed(&b, 7);
    sc_request_id_generate(&a, x);
    sc_request_id_generate(&b, y);
    assert_string_equal(x, y); /* deterministic for tests */
    sc_request_id_rng_seed(&b, 8);
    sc_request_id_generate(&b, y);
    assert_string_not_equal(x, y);
    /* two generators seeded by the kernel (two workers) differ */
    assert_int_equal(sc_request_id_rng_init(&a), 0);
    assert_int_equal(sc_request_id_rng_init(&b), 0);
    sc_request_id_generate(&a, x);
    sc_request_id_generate(&b, y);
    assert_string_not_equal(x, y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_forms),
        cmocka_unit_test(test_length_bounds),
        cmocka_unit_test(test_every_byte),
        cmocka_unit_test(test_injection_refused),
        cmocka_unit_test(test_generated_shape),
        cmocka_unit_test(test_format_known_bytes),
        cmocka_unit_test(test_generated_bits_random_and_unique),
        cmocka_unit_test(test_seeding),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

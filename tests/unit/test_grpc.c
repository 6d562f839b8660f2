/*
 * test_grpc.c: status names, grpc-timeout, content-type, grpc-message
 * percent-encoding and the HTTP -> gRPC status mapping.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "http/grpc.h"

static int parse_str(const char *s) { return sc_grpc_status_from_name(s, strlen(s)); }

static void test_status_names(void **state)
{
    (void)state;
    static const char *const want[] = {
        "ok", "cancelled", "unknown", "invalid-argument", "deadline-exceeded", "not-found",
        "already-exists", "permission-denied", "resource-exhausted", "failed-precondition",
        "aborted", "out-of-range", "unimplemented", "internal", "unavailable", "data-loss",
        "unauthenticated",
    };
    static const char *const upper[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    assert_int_equal(SC_ARRAY_LEN(want), SC_GRPC_STATUS_MAX + 1);
    for (int i = 0; i <= SC_GRPC_STATUS_MAX; i++) {
        assert_string_equal(sc_grpc_status_name(i), want[i]);
        assert_int_equal(parse_str(want[i]), i);
        assert_int_equal(parse_str(upper[i]), i);
        char num[12];
        snprintf(num, sizeof(num), "%d", i);
        assert_int_equal(parse_str(num), i);
        /* the name round-trips */
        assert_int_equal(parse_str(sc_grpc_status_name(i)), i);
    }
    assert_int_equal(SC_GRPC_UNAVAILABLE, 14);
    assert_int_equal(parse_str("deadline-exceeded"), SC_GRPC_DEADLINE_EXCEEDED);
    assert_int_equal(parse_str("RESOURCE_EXHAUSTED"), SC_GRPC_RESOURCE_EXHAUSTED);
    /* not a length-prefix match */
    assert_int_equal(sc_grpc_status_from_name("unavailable-x", 11), SC_GRPC_UNAVAILABLE);
    assert_string_equal(sc_grpc_status_name(-1), "invalid");
    assert_string_equal(sc_grpc_status_name(17), "invalid");

    static const char *const bad[] = {
        "", "17", "99", "-1", "01", "00", "1x", " 1", "1 ", "Unavailable", "UNAVAILABLE ",
        "unavailable_", "deadline_exceeded", "DEADLINE-EXCEEDED", "unavailabl", "unavailablee",
        "OKAY", "ok ", "0x1", "100",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++)
        if (parse_str(bad[i]) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
    assert_int_equal(sc_grpc_status_from_name(NULL, 0), -EINVAL);
}

static int wire(const char *s, int *out) { return sc_grpc_status_parse(s, strlen(s), out); }

/* grpc-status as received: digits 0..16 only; anything else is refused and
 * leaves the output alone (it must never index the per-status counters). */
static void test_status_wire_parse(void **state)
{
    (void)state;
    for (int i = 0; i <= SC_GRPC_STATUS_MAX; i++) {
        char num[12];
        snprintf(num, sizeof(num), "%d", i);
        int v = -7;
        assert_int_equal(wire(num, &v), 0);
        assert_int_equal(v, i);
    }
    int v = -7;
    assert_int_equal(wire("014", &v), 0); /* 1*DIGIT: leading zeros are digits */
    assert_int_equal(v, 14);
    static const char *const bad[] = {
        "", "17", "99", "-1", "+1", "1x", " 1", "1 ", "0x1", "100", "unavailable", "UNAVAILABLE",
        "4294967310", "99999999999999999999999", "1.0", "1\\", "\\1",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        v = -7;
        if (wire(bad[i], &v) != -1 || v != -7)
            fail_msg("accepted \"%s\"", bad[i]);
    }
    /* the length is honoured: "14" inside "145" */
    assert_int_equal(sc_grpc_status_parse("145", 2, &v), 0);
    assert_int_equal(v, 14);
    assert_int_equal(sc_grpc_status_parse("1\0", 2, &v), -1);
    assert_int_equal(sc_grpc_status_parse(NULL, 0, &v), -1);
}

static uint64_t tparse(const char *s)
{
    uint64_t ns = 12345;
    int rc = sc_grpc_timeout_parse(s, strlen(s), &ns);
    if (rc != 0)
        fail_msg("refused \"%s\"", s);
    return ns;
}

static void test_timeout_parse(void **state)
{
    (void)state;
    assert_int_equal(tparse("1n"), 1);
    assert_int_equal(tparse("0n"), 0);
    assert_int_equal(tparse("0H"), 0);
    assert_int_equal(tparse("1u"), 1000);
    assert_int_equal(tparse("1m"), 1000000);
    assert_int_equal(tparse("1S"), 1000000000ull);
    assert_int_equal(tparse("1M"), 60000000000ull);
    assert_int_equal(tparse("1H"), 3600000000000ull);
    assert_int_equal(tparse("250m"), 250000000ull);
    assert_int_equal(tparse("00000010S"), 10000000000ull);
    assert_int_equal(tparse("99999999n"), 99999999ull);
    assert_int_equal(tparse("99999999u"), 99999999000ull);
    assert_int_equal(tparse("99999999m"), 99999999000000ull);
    assert_int_equal(tparse("99999999S"), 99999999000000000ull);
    assert_int_equal(tparse("99999999M"), 5999999940000000000ull);
    /* 99999999H does not fit: saturate */
    assert_int_equal(tparse("99999999H"), UINT64_MAX / 2);
    assert_int_equal(tparse("2562047H"), 2562047ull * 3600000000000ull);
    assert_int_equal(tparse("2562048H"), UINT64_MAX / 2);
    assert_int_equal(tparse("15372286M"), 15372286ull * 60000000000ull);

    static const char *const bad[] = {
        "", "n", "S", "1", "12", "100000000n", "123456789S", "1s", "1h", "1x", "1 S", " 1S",
        "1S ", "-1S", "+1S", "1.5S", "1Sn", "0x1S", "1\0S", "SS", "1nn",
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(bad); i++) {
        uint64_t ns = 777;
        size_t len = i == 18 ? 3 : strlen(bad[i]);
        if (sc_grpc_timeout_parse(bad[i], len, &ns) != -EINVAL)
            fail_msg("accepted \"%s\"", bad[i]);
        assert_int_equal(ns, 777);
    }
    uint64_t ns;
    assert_int_equal(sc_grpc_timeout_parse(NULL, 0, &ns), -EINVAL);
}

static void check_format(uint64_t ns, const char *want)
{
    char buf[16];
    size_t n = sc_grpc_timeout_format(ns, buf, sizeof(buf));
    assert_int_equal(n, strlen(buf));
    if (strcmp(buf, want) != 0)
        fail_msg("format(%llu) = \"%s\", want \"%s\"", (unsigned long long)ns, buf, want);
}

static void test_timeout_format(void **state)
{
    (void)state;
    check_format(0, "1n");
    check_format(1, "1n");
    check_format(999, "999n");
    check_format(1000, "1000n");
    check_format(99999999, "99999999n");
    check_format(100000000, "100000u");
    check_format(100000001, "100001u");       /* rounded up */
    check_format(99999999000ull, "99999999u");
    check_format(99999999001ull, "100000m");
    check_format(2000000000ull, "2000000u");
    check_format(99999999000000ull, "99999999m");
    check_format(99999999000000001ull, "1666667M");
    check_format(UINT64_MAX, "5124096H");
    check_format(UINT64_MAX / 2, "2562048H");

    /* buffer sizes: 10 bytes are enough for the longest value */
    char buf[10];
    assert_int_equal(sc_grpc_timeout_format(99999999, buf, 10), 9);
    assert_string_equal(buf, "99999999n");
    assert_int_equal(sc_grpc_timeout_format(99999999, buf, 9), 0);
    assert_string_equal(buf, "");
    assert_int_equal(sc_grpc_timeout_format(5, buf, 0), 0);
}

/* format then parse never shortens a deadline, loses at most one unit, and
 * uses the finest unit that fits. */
static void roundtrip(uint64_t ns)
{
    char buf[16];
    size_t n = sc_grpc_timeout_format(ns, buf, sizeof(buf));
    assert_true(n >= 2 && n <= 9);
    uint64_t back;
    if (sc_grpc_timeout_parse(buf, n, &back) != 0)
        fail_msg("format(%llu) = \"%s\" does not parse", (unsigned long long)ns, buf);
    uint64_t unit = 1;
    switch (buf[n - 1]) {
    case 'n': unit = 1; break;
    case 'u': unit = 1000; break;
    case 'm': unit = 1000000; break;
    case 'S': unit = 1000000000ull; break;
    case 'M': unit = 60000000000ull; break;
    case 'H': unit = 3600000000000ull; break;
    default: fail_msg("bad unit in \"%s\"", buf);
    }
    uint64_t want = ns ? ns : 1;
    if (want > UINT64_MAX / 2)
        want = UINT64_MAX / 2; /* parse saturates */
    if (back < want || back - want >= unit)
        fail_msg("%llu -> \"%s\" -> %llu", (unsigned long long)ns, buf, (unsigned long long)back);
    /* the next finer unit would not have fitted */
    if (unit > 1) {
        static const uint64_t units[] = {1, 1000, 1000000, 1000000000ull, 60000000000ull, 3600000000000ull};
        uint64_t finer = 0;
        for (size_t i = 1; i < SC_ARRAY_LEN(units); i++)
            if (units[i] == unit)
                finer = units[i - 1];
        assert_true(ns / finer + (ns % finer != 0) > 99999999);
    }
    if (ns <= 99999999 && ns > 0)
        assert_int_equal(back, ns); /* exact in nanoseconds */
}

static void test_timeout_roundtrip(void **state)
{
    (void)state;
    /* every power of ten, and its neighbours, and unit boundaries */
    uint64_t p = 1;
    for (int i = 0; i < 20; i++, p *= 10) {
        roundtrip(p - 1);
        roundtrip(p);
        roundtrip(p + 1);
        if (i == 19)
            break;
    }
    static const uint64_t edges[] = {
        99999999ull, 100000000ull, 99999999000ull, 99999999001ull, 99999999000000ull,
        99999999000001ull, 99999999000000000ull, 99999999000000001ull, 5999999994000000000ull,
        5999999994000000001ull, UINT64_MAX / 2, UINT64_MAX / 2 + 1, UINT64_MAX - 1, UINT64_MAX,
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(edges); i++)
        roundtrip(edges[i]);
    /* a deterministic pseudo-random sweep over every magnitude */
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < 200000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        roundtrip(x >> (i % 64));
    }
    /* parse then format: a value already in canonical form is kept */
    static const char *const canon[] = {"1n", "99999999n", "100000u", "5S", "99999999m", "1666667M", "2562047H"};
    for (size_t i = 0; i < SC_ARRAY_LEN(canon); i++) {
        uint64_t ns;
        assert_int_equal(sc_grpc_timeout_parse(canon[i], strlen(canon[i]), &ns), 0);
        char buf[16];
        sc_grpc_timeout_format(ns, buf, sizeof(buf));
        uint64_t again;
        assert_int_equal(sc_grpc_timeout_parse(buf, strlen(buf), &again), 0);
        assert_int_equal(again, ns);
    }
}

static bool ct(const char *s) { return sc_grpc_is_content_type(s, strlen(s)); }

static void test_content_type(void **state)
{
    (void)state;
    assert_true(ct("application/grpc"));
    assert_true(ct("application/grpc+proto"));
    assert_true(ct("application/grpc+json"));
    assert_true(ct("application/grpc;charset=utf-8"));
    assert_true(ct("application/grpc ; x=y"));
    assert_true(ct("Application/GRPC"));
    assert_false(ct("application/grpc-web"));
    assert_false(ct("application/grpc-web+proto"));
    assert_false(ct("application/grpcx"));
    assert_false(ct("application/grpc+"));
    assert_false(ct("application/grpc "));
    assert_false(ct("application/grp"));
    assert_false(ct("application/json"));
    assert_false(ct(""));
    assert_false(ct(" application/grpc"));
    assert_false(sc_grpc_is_content_type(NULL, 0));
    /* length is honoured, not the NUL */
    assert_true(sc_grpc_is_content_type("application/grpc-web", 16));
}

static void test_message_encode(void **state)
{
    (void)state;
    char buf[64];
    assert_int_equal(sc_grpc_message_encode("no healthy upstream", buf, sizeof(buf)), 19);
    assert_string_equal(buf, "no healthy upstream");
    sc_grpc_message_encode("50% off", buf, sizeof(buf));
    assert_string_equal(buf, "50%25 off");
    sc_grpc_message_encode("a\r\nb\t\x7f", buf, sizeof(buf));
    assert_string_equal(buf, "a%0D%0Ab%09%7F");
    sc_grpc_message_encode("caf\xc3\xa9 ~!\"", buf, sizeof(buf));
    assert_string_equal(buf, "caf%C3%A9 ~!\"");
    sc_grpc_message_encode("", buf, sizeof(buf));
    assert_string_equal(buf, "");

    /* truncation never splits an escape and always terminates */
    assert_int_equal(sc_grpc_message_encode("ab%", buf, 4), 2);
    assert_string_equal(buf, "ab");
    assert_int_equal(sc_grpc_message_encode("ab%", buf, 6), 5);
    assert_string_equal(buf, "ab%25");
    assert_int_equal(sc_grpc_message_encode("abc", buf, 3), 2);
    assert_string_equal(buf, "ab");
    assert_int_equal(sc_grpc_message_encode("abc", buf, 1), 0);
    assert_string_equal(buf, "");
    buf[0] = 'X';
    assert_int_equal(sc_grpc_message_encode("abc", buf, 0), 0);
    assert_int_equal(buf[0], 'X');

    /* every byte round-trips through decode */
    char all[256], enc[800], dec[300];
    for (int i = 1; i < 256; i++)
        all[i - 1] = (char)i;
    all[255] = '\0';
    size_t n = sc_grpc_message_encode(all, enc, sizeof(enc));
    assert_int_equal(n, strlen(enc));
    for (size_t i = 0; i < n; i++)
        assert_true(enc[i] >= 0x20 && enc[i] <= 0x7e);
    assert_int_equal(sc_grpc_message_decode(enc, n, dec, sizeof(dec)), 255);
    assert_memory_equal(dec, all, 255);
}

static void test_message_decode(void **state)
{
    (void)state;
    char buf[32];
    const char *s = "a%20b%zz%4%";
    assert_int_equal(sc_grpc_message_decode(s, strlen(s), buf, sizeof(buf)), 9);
    assert_string_equal(buf, "a b%zz%4%");
    s = "%e2%9C%93";
    assert_int_equal(sc_grpc_message_decode(s, strlen(s), buf, sizeof(buf)), 3);
    assert_string_equal(buf, "\xe2\x9c\x93");
    assert_int_equal(sc_grpc_message_decode("abcdef", 6, buf, 4), 3);
    assert_string_equal(buf, "abc");
    assert_int_equal(sc_grpc_message_decode("%41", 2, buf, sizeof(buf)), 2); /* length honoured */
    assert_string_equal(buf, "%4");
}

static void test_status_from_http(void **state)
{
    (void)state;
    assert_int_equal(sc_grpc_status_from_http(400), SC_GRPC_INTERNAL);
    assert_int_equal(sc_grpc_status_from_http(401), SC_GRPC_UNAUTHENTICATED);
    assert_int_equal(sc_grpc_status_from_http(403), SC_GRPC_PERMISSION_DENIED);
    assert_int_equal(sc_grpc_status_from_http(404), SC_GRPC_UNIMPLEMENTED);
    assert_int_equal(sc_grpc_status_from_http(429), SC_GRPC_UNAVAILABLE);
    assert_int_equal(sc_grpc_status_from_http(502), SC_GRPC_UNAVAILABLE);
    assert_int_equal(sc_grpc_status_from_http(503), SC_GRPC_UNAVAILABLE);
    assert_int_equal(sc_grpc_status_from_http(504), SC_GRPC_UNAVAILABLE);
    static const int other[] = {100, 200, 204, 301, 402, 405, 408, 431, 500, 501, 505, 599, 0, -1};
    for (size_t i = 0; i < SC_ARRAY_LEN(other); i++)
        assert_int_equal(sc_grpc_status_from_http(other[i]), SC_GRPC_UNKNOWN);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_status_names),
        cmocka_unit_test(test_status_wire_parse),
        cmocka_unit_test(test_timeout_parse),
        cmocka_unit_test(test_timeout_format),
        cmocka_unit_test(test_timeout_roundtrip),
        cmocka_unit_test(test_content_type),
        cmocka_unit_test(test_message_encode),
        cmocka_unit_test(test_message_decode),
        cmocka_unit_test(test_status_from_http),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

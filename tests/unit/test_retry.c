/* Unit tests for resilience/retry.c: retry conditions, backoff bounds,
 * pushback parsing, and the retry budget with an injected clock. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <string.h>

#include "http/grpc.h"
#include "lb/lb.h"
#include "resilience/retry.h"

#define GBIT(c) (1u << (c))

static sc_retry_policy pol(void)
{
    return (sc_retry_policy){
        .enabled = true,
        .max_attempts = 3,
        .on = SC_COND_CONNECT_FAILURE | SC_COND_RESET | SC_COND_REFUSED_STREAM,
        .on_grpc = GBIT(SC_GRPC_UNAVAILABLE),
        .backoff_base_ms = 25,
        .backoff_max_ms = 250,
        .budget_ratio = 0.2,
        .budget_min_per_second = 10,
        .buffer_limit = 65536,
    };
}

static void test_should_conditions(void **st)
{
    (void)st;
    sc_retry_policy p = pol();
    /* named gRPC code */
    assert_true(sc_retry_should(&p, 1, 200, SC_GRPC_UNAVAILABLE, 0));
    assert_true(sc_retry_should(&p, 2, 200, SC_GRPC_UNAVAILABLE, 0));
    assert_false(sc_retry_should(&p, 3, 200, SC_GRPC_UNAVAILABLE, 0)); /* no attempt left */
    assert_false(sc_retry_should(&p, 4, 200, SC_GRPC_UNAVAILABLE, 0));
    /* every other code, client errors included, only when named */
    for (int c = 0; c <= SC_GRPC_STATUS_MAX; c++) {
        if (c != SC_GRPC_UNAVAILABLE)
            assert_false(sc_retry_should(&p, 1, 200, c, 0));
    }
    p.on_grpc |= GBIT(SC_GRPC_RESOURCE_EXHAUSTED) | GBIT(SC_GRPC_INVALID_ARGUMENT);
    assert_true(sc_retry_should(&p, 1, 200, SC_GRPC_RESOURCE_EXHAUSTED, 0));
    assert_true(sc_retry_should(&p, 1, 200, SC_GRPC_INVALID_ARGUMENT, 0));
    assert_false(sc_retry_should(&p, 1, 200, SC_GRPC_INTERNAL, 0));
    assert_false(sc_retry_should(&p, 1, 200, 17, 0));
    assert_false(sc_retry_should(&p, 1, 200, -1, 0));
    p.on_grpc = GBIT(SC_GRPC_OK);
    assert_false(sc_retry_should(&p, 1, 200, SC_GRPC_OK, 0)); /* OK is never retried */

    /* HTTP: 5xx vs gateway-error vs 4xx */
    p = pol();
    assert_false(sc_retry_should(&p, 1, 503, -1, 0));
    p.on = SC_COND_GATEWAY_ERROR;
    assert_true(sc_retry_should(&p, 1, 502, -1, 0));
    assert_true(sc_retry_should(&p, 1, 503, -1, 0));
    assert_true(sc_retry_should(&p, 1, 504, -1, 0));
    assert_false(sc_retry_should(&p, 1, 500, -1, 0));
    assert_false(sc_retry_should(&p, 1, 501, -1, 0));
    assert_false(sc_retry_should(&p, 1, 505, -1, 0));
    p.on = SC_COND_5XX;
    for (int s = 500; s <= 599; s++)
        assert_true(sc_retry_should(&p, 1, s, -1, 0));
    assert_false(sc_retry_should(&p, 1, 600, -1, 0));
    for (int s = 400; s <= 499; s++)
        assert_false(sc_retry_should(&p, 1, s, -1, 0));
    p.on = SC_COND_4XX;
    assert_true(sc_retry_should(&p, 1, 429, -1, 0));
    assert_true(sc_retry_should(&p, 1, 400, -1, 0));
    assert_false(sc_retry_should(&p, 1, 200, -1, 0));
    assert_false(sc_retry_should(&p, 1, 399, -1, 0));

    /* local failures */
    p = pol();
    assert_true(sc_retry_should(&p, 1, 0, -1, SC_COND_CONNECT_FAILURE));
    assert_true(sc_retry_should(&p, 1, 0, -1, SC_COND_RESET));
    assert_true(sc_retry_should(&p, 1, 0, -1, SC_COND_REFUSED_STREAM));
    assert_false(sc_retry_should(&p, 1, 0, -1, SC_COND_TIMEOUT));
    assert_false(sc_retry_should(&p, 1, 0, -1, 0));
    assert_false(sc_retry_should(&p, 1, 200, SC_GRPC_OK, 0));

    /* disabled policy, single attempt */
    p.enabled = false;
    assert_false(sc_retry_should(&p, 1, 0, -1, SC_COND_CONNECT_FAILURE));
    p = pol();
    p.max_attempts = 1;
    assert_false(sc_retry_should(&p, 1, 0, -1, SC_COND_CONNECT_FAILURE));
}

static uint64_t cap_of(uint64_t base, uint64_t max, uint32_t attempt)
{
    /* reference: doubling with saturation */
    uint64_t c = base;
    if (c == 0)
        return 0;
    for (uint32_t i = 1; i < attempt && c <= max && c != UINT64_MAX; i++)
        c = c > UINT64_MAX / 2 ? UINT64_MAX : c * 2;
    return c < max ? c : max;
}

static void test_backoff_bounds(void **st)
{
    (void)st;
    const uint64_t cfgs[][2] = {
        {25, 250}, {1, 1000}, {100, 100}, {300, 250}, {0, 250}, {25, 0},
        {1, UINT64_MAX}, {UINT64_MAX / 3, UINT64_MAX}, {UINT64_MAX, UINT64_MAX},
        {SC_DURATION_MAX_MS, SC_DURATION_MAX_MS},
    };
    const uint64_t rands[] = {0, 1, 2, 0x8000000000000000ull, UINT64_MAX - 1, UINT64_MAX,
                              0x123456789abcdefull};
    for (size_t c = 0; c < SC_ARRAY_LEN(cfgs); c++) {
        sc_retry_policy p = pol();
        p.backoff_base_ms = cfgs[c][0];
        p.backoff_max_ms = cfgs[c][1];
        for (uint32_t a = 1; a <= 64; a++) {
            uint64_t cap = cap_of(p.backoff_base_ms, p.backoff_max_ms, a);
            for (size_t r = 0; r < SC_ARRAY_LEN(rands); r++) {
                uint64_t d = sc_retry_backoff_ms(&p, a, rands[r]);
                assert_true(d <= cap);
            }
            assert_int_equal(sc_retry_backoff_ms(&p, a, 0), 0);
            assert_int_equal(sc_retry_backoff_ms(&p, a, UINT64_MAX), cap);
        }
        /* far beyond 64 doublings: the cap */
        uint32_t huge[] = {65, 100, 1000, UINT32_MAX};
        for (size_t i = 0; i < SC_ARRAY_LEN(huge); i++)
            assert_int_equal(sc_retry_backoff_ms(&p, huge[i], UINT64_MAX),
                             cap_of(p.backoff_base_ms, p.backoff_max_ms, huge[i]));
        /* attempt 0 counts as 1 */
        assert_int_equal(sc_retry_backoff_ms(&p, 0, UINT64_MAX),
                         sc_retry_backoff_ms(&p, 1, UINT64_MAX));
    }
    /* the documented default: 25, 50, 100, 200, 250, 250 ... */
    sc_retry_policy p = pol();
    const uint64_t want[] = {25, 50, 100, 200, 250, 250, 250};
    for (uint32_t a = 1; a <= SC_ARRAY_LEN(want); a++)
        assert_int_equal(sc_retry_backoff_ms(&p, a, UINT64_MAX), want[a - 1]);
}

static void test_backoff_full_jitter_is_uniform(void **st)
{
    (void)st;
    sc_retry_policy p = pol();
    sc_lb_ctx rng;
    sc_lb_ctx_init(&rng, 12345);
    /* attempt 3: uniform over [0, 100]; 101 values */
    enum { N = 101000 };
    static unsigned hist[101];
    memset(hist, 0, sizeof(hist));
    uint64_t sum = 0;
    for (int i = 0; i < N; i++) {
        uint64_t d = sc_retry_backoff_ms(&p, 3, sc_lb_rand(&rng));
        assert_true(d <= 100);
        hist[d]++;
        sum += d;
    }
    for (int v = 0; v <= 100; v++)
        assert_in_range(hist[v], 800, 1200); /* 1000 expected each */
    assert_in_range(sum / N, 48, 52);
}

static void test_pushback_parse(void **st)
{
    (void)st;
    struct {
        const char *v;
        int rc;
        int64_t ms;
    } cases[] = {
        {"0", 0, 0},
        {"125", 0, 125},
        {" 125\t", 0, 125},
        {"007", 0, 7},
        {"9223372036854775807", 0, INT64_MAX},
        {"-1", 0, -1},
        {"-250", 0, -1},
        {"-99999999999999999999999999", 0, -1},
        {"-0", 0, 0},
        {"9223372036854775808", -EINVAL, 0},
        {"99999999999999999999999999", -EINVAL, 0},
        {"", -EINVAL, 0},
        {"   ", -EINVAL, 0},
        {"-", -EINVAL, 0},
        {"+5", -EINVAL, 0},
        {"12a", -EINVAL, 0},
        {"1.5", -EINVAL, 0},
        {"1 2", -EINVAL, 0},
        {"--1", -EINVAL, 0},
        {"0x10", -EINVAL, 0},
        {"5ms", -EINVAL, 0},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        int64_t ms = 4242;
        int rc = sc_retry_parse_pushback_ms(cases[i].v, strlen(cases[i].v), &ms);
        if (rc != cases[i].rc)
            fail_msg("'%s': rc %d, want %d", cases[i].v, rc, cases[i].rc);
        if (rc == 0 && ms != cases[i].ms)
            fail_msg("'%s': ms %lld, want %lld", cases[i].v, (long long)ms,
                     (long long)cases[i].ms);
        if (rc != 0)
            assert_int_equal(ms, 4242); /* untouched on error */
    }
    /* not NUL terminated: only len bytes are read */
    int64_t ms;
    assert_int_equal(sc_retry_parse_pushback_ms("12345", 3, &ms), 0);
    assert_int_equal(ms, 123);
    assert_int_equal(sc_retry_parse_pushback_ms("1x", 1, &ms), 0);
    assert_int_equal(ms, 1);
    assert_int_equal(sc_retry_parse_pushback_ms(NULL, 0, &ms), -EINVAL);
}

static void test_retry_after_parse(void **st)
{
    (void)st;
    const time_t t0 = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */
    struct {
        const char *v;
        time_t now;
        int rc;
        int64_t ms;
    } cases[] = {
        {"120", t0, 0, 120000},
        {"0", t0, 0, 0},
        {" 3 ", t0, 0, 3000},
        {"9223372036854775", t0, 0, 9223372036854775000},
        {"9223372036854776", t0, 0, INT64_MAX},
        {"999999999999999999999999", t0, 0, INT64_MAX},
        {"Sun, 06 Nov 1994 08:49:37 GMT", t0 - 10, 0, 10000},
        {"Sun, 06 Nov 1994 08:49:37 GMT", t0, 0, 0},
        {"Sun, 06 Nov 1994 08:49:37 GMT", t0 + 3600, 0, 0},
        {"  Sun, 06 Nov 1994 08:49:37 GMT ", t0 - 1, 0, 1000},
        {"Tue, 19 Jan 2038 03:14:08 GMT", 2147483647, 0, 1000},
        {"Thu, 29 Feb 2024 00:00:00 GMT", 1709164800 - 5, 0, 5000},
        {"Fri, 31 Dec 9999 23:59:59 GMT", 0, 0, 253402300799000},
        {"Sat, 31 Dec 1969 23:59:59 GMT", 0, 0, 0},
        {"Mon, 06 Nov 1994 08:49:37 GMT", t0 - 10, 0, 10000}, /* day name not cross-checked */
        /* malformed */
        {"", t0, -EINVAL, 0},
        {"-5", t0, -EINVAL, 0},
        {"1.5", t0, -EINVAL, 0},
        {"5s", t0, -EINVAL, 0},
        {"Sunday, 06-Nov-94 08:49:37 GMT", t0, -EINVAL, 0},  /* RFC 850 */
        {"Sun Nov  6 08:49:37 1994", t0, -EINVAL, 0},        /* asctime */
        {"Sun, 06 Nov 1994 08:49:37 UTC", t0, -EINVAL, 0},
        {"Sun, 06 Nov 1994 08:49:37 gmt", t0, -EINVAL, 0},
        {"sun, 06 Nov 1994 08:49:37 GMT", t0, -EINVAL, 0},
        {"Sun, 06 nov 1994 08:49:37 GMT", t0, -EINVAL, 0},
        {"Sun, 6 Nov 1994 08:49:37 GMT", t0, -EINVAL, 0},
        {"Sun, 06 Nov 1994 8:49:37 GMT", t0, -EINVAL, 0},
        {"Sun, 31 Feb 1994 08:49:37 GMT", t0, -EINVAL, 0},
        {"Wed, 29 Feb 2023 00:00:00 GMT", t0, -EINVAL, 0},
        {"Tue, 29 Feb 2100 00:00:00 GMT", t0, -EINVAL, 0},
        {"Sun, 00 Nov 1994 08:49:37 GMT", t0, -EINVAL, 0},
        {"Sun, 06 Nov 1994 24:00:00 GMT", t0, -EINVAL, 0},
        {"Sun, 06 Nov 1994 23:60:00 GMT", t0, -EINVAL, 0},
        {"Sun, 06 Nov 1994 23:59:61 GMT", t0, -EINVAL, 0},
        {"Sun, 06 Nov 199x 08:49:37 GMT", t0, -EINVAL, 0},
        {"Sun, 06 Nov 1994 08:49:37 GMTX", t0, -EINVAL, 0},
        {"Xyz, 06 Nov 1994 08:49:37 GMT", t0, -EINVAL, 0},
    };
    for (size_t i = 0; i < SC_ARRAY_LEN(cases); i++) {
        int64_t ms = 4242;
        int rc = sc_retry_parse_retry_after(cases[i].v, strlen(cases[i].v), cases[i].now, &ms);
        if (rc != cases[i].rc)
            fail_msg("'%s': rc %d, want %d", cases[i].v, rc, cases[i].rc);
        if (rc == 0 && ms != cases[i].ms)
            fail_msg("'%s': ms %lld, want %lld", cases[i].v, (long long)ms,
                     (long long)cases[i].ms);
    }
    /* leap second accepted */
    int64_t ms;
    assert_int_equal(sc_retry_parse_retry_after("Sat, 31 Dec 2016 23:59:60 GMT", 29, 0, &ms), 0);
    assert_int_equal(sc_retry_parse_retry_after(NULL, 0, 0, &ms), -EINVAL);
}

/* ----------------------------------------------------------------- budget */

/* A pushback beyond SC_RETRY_MAX_PUSHBACK_MS means "not now": no retry is
 * scheduled (a Retry-After with no sane end once became a timer INT64_MAX ms away). */
static void test_pushback_ceiling(void **st)
{
    (void)st;
    assert_true(sc_retry_pushback_acceptable(0));
    assert_true(sc_retry_pushback_acceptable(1));
    assert_true(sc_retry_pushback_acceptable(SC_RETRY_MAX_PUSHBACK_MS));
    assert_false(sc_retry_pushback_acceptable(SC_RETRY_MAX_PUSHBACK_MS + 1));
    assert_false(sc_retry_pushback_acceptable(INT64_MAX));
    assert_false(sc_retry_pushback_acceptable(-1));
    /* what the parsers give for hostile values lands beyond it */
    int64_t ms = 0;
    assert_int_equal(sc_retry_parse_retry_after("99999999999999999999", 20, 0, &ms), 0);
    assert_false(sc_retry_pushback_acceptable(ms));
    assert_int_equal(sc_retry_parse_retry_after("3600", 4, 0, &ms), 0);
    assert_false(sc_retry_pushback_acceptable(ms));
    assert_int_equal(sc_retry_parse_retry_after("Fri, 31 Dec 9999 23:59:59 GMT", 29, 784111777, &ms), 0);
    assert_false(sc_retry_pushback_acceptable(ms));
    assert_int_equal(sc_retry_parse_pushback_ms("9223372036854775807", 19, &ms), 0);
    assert_false(sc_retry_pushback_acceptable(ms));
    /* ordinary values are honoured */
    assert_int_equal(sc_retry_parse_retry_after("1", 1, 0, &ms), 0);
    assert_true(sc_retry_pushback_acceptable(ms));
    assert_int_equal(sc_retry_parse_retry_after("60", 2, 0, &ms), 0);
    assert_true(sc_retry_pushback_acceptable(ms));
    assert_int_equal(sc_retry_parse_pushback_ms("300", 3, &ms), 0);
    assert_true(sc_retry_pushback_acceptable(ms));
}

/* A policy reload changes the budget's parameters; its window stays. */
static void test_budget_set_keeps_window(void **st)
{
    (void)st;
    sc_retry_budget b;
    sc_retry_budget_init(&b, 0, 0);
    for (int i = 0; i < 100; i++)
        sc_retry_budget_on_request(&b, 1000);
    assert_false(sc_retry_budget_try_acquire(&b, 1000));
    sc_retry_budget_set(&b, 0.05, 0); /* 5% of the 100 requests already counted */
    for (int i = 0; i < 5; i++)
        assert_true(sc_retry_budget_try_acquire(&b, 1000));
    assert_false(sc_retry_budget_try_acquire(&b, 1000));
    sc_retry_budget_view v;
    sc_retry_budget_snapshot(&b, 1000, &v);
    assert_int_equal(v.requests, 100);
    assert_int_equal(v.retries, 5);
    assert_int_equal(v.granted, 5);
    assert_int_equal(v.refused, 2);
    assert_true(v.ratio == 0.05);
    sc_retry_budget_set(&b, 0, 1); /* a floor of 1/s: 10 in the window, 5 used */
    for (int i = 0; i < 5; i++)
        assert_true(sc_retry_budget_try_acquire(&b, 1000));
    assert_false(sc_retry_budget_try_acquire(&b, 1000));
    sc_retry_budget_snapshot(&b, 1000, &v);
    assert_int_equal(v.min_per_second, 1);
    assert_int_equal(v.allowance, 10);
}

static void test_budget_floor(void **st)
{
    (void)st;
    sc_retry_budget b;
    sc_retry_budget_init(&b, 0.2, 10); /* floor: 10/s over 10 s = 100 */
    for (int i = 0; i < 100; i++)
        assert_true(sc_retry_budget_try_acquire(&b, 1000));
    assert_false(sc_retry_budget_try_acquire(&b, 1000));
    sc_retry_budget_view v;
    sc_retry_budget_snapshot(&b, 1000, &v);
    assert_int_equal(v.requests, 0);
    assert_int_equal(v.retries, 100);
    assert_int_equal(v.allowance, 100);
    assert_int_equal(v.remaining, 0);
    assert_int_equal(v.granted, 100);
    assert_int_equal(v.refused, 1);
    /* 500 requests: ratio 0.2 -> 100, still not above the floor */
    for (int i = 0; i < 500; i++)
        sc_retry_budget_on_request(&b, 1000);
    assert_false(sc_retry_budget_try_acquire(&b, 1000));
    /* one more request: 0.2 * 501 = 100.2 -> one more retry */
    sc_retry_budget_on_request(&b, 1000);
    assert_true(sc_retry_budget_try_acquire(&b, 1000));
    assert_false(sc_retry_budget_try_acquire(&b, 1000));
}

static void test_budget_ratio(void **st)
{
    (void)st;
    sc_retry_budget b;
    sc_retry_budget_init(&b, 0.2, 0);
    assert_false(sc_retry_budget_try_acquire(&b, 0)); /* no requests, no floor */
    for (int i = 0; i < 100; i++)
        sc_retry_budget_on_request(&b, 0);
    for (int i = 0; i < 20; i++)
        assert_true(sc_retry_budget_try_acquire(&b, 0));
    assert_false(sc_retry_budget_try_acquire(&b, 0));
    sc_retry_budget_view v;
    sc_retry_budget_snapshot(&b, 0, &v);
    assert_int_equal(v.requests, 100);
    assert_int_equal(v.retries, 20);
    assert_int_equal(v.allowance, 20);
    assert_int_equal(v.remaining, 0);
    /* fractions round up: 0.2 * 7 = 1.4 -> 2 */
    sc_retry_budget c;
    sc_retry_budget_init(&c, 0.2, 0);
    for (int i = 0; i < 7; i++)
        sc_retry_budget_on_request(&c, 0);
    sc_retry_budget_snapshot(&c, 0, &v);
    assert_int_equal(v.allowance, 2);
    assert_int_equal(v.remaining, 2);
    assert_true(sc_retry_budget_try_acquire(&c, 0));
    assert_true(sc_retry_budget_try_acquire(&c, 0));
    assert_false(sc_retry_budget_try_acquire(&c, 0));
    /* ratio 0 and no floor: never */
    sc_retry_budget z;
    sc_retry_budget_init(&z, 0, 0);
    sc_retry_budget_on_request(&z, 0);
    assert_false(sc_retry_budget_try_acquire(&z, 0));
    /* ratio 1: as many retries as requests */
    sc_retry_budget o;
    sc_retry_budget_init(&o, 1.0, 0);
    for (int i = 0; i < 3; i++)
        sc_retry_budget_on_request(&o, 0);
    for (int i = 0; i < 3; i++)
        assert_true(sc_retry_budget_try_acquire(&o, 0));
    assert_false(sc_retry_budget_try_acquire(&o, 0));
}

static void test_budget_window_sliding(void **st)
{
    (void)st;
    sc_retry_budget b;
    sc_retry_budget_init(&b, 0.2, 0);
    for (int i = 0; i < 100; i++)
        sc_retry_budget_on_request(&b, 0);
    for (int i = 0; i < 20; i++)
        assert_true(sc_retry_budget_try_acquire(&b, 0));
    assert_false(sc_retry_budget_try_acquire(&b, 5000));
    for (int i = 0; i < 100; i++)
        sc_retry_budget_on_request(&b, 5000);
    for (int i = 0; i < 20; i++)
        assert_true(sc_retry_budget_try_acquire(&b, 5000));
    assert_false(sc_retry_budget_try_acquire(&b, 9999));
    sc_retry_budget_view v;
    sc_retry_budget_snapshot(&b, 9999, &v);
    assert_int_equal(v.requests, 200);
    assert_int_equal(v.retries, 40);
    /* at 10 s the first second falls out: 100 requests, 20 retries */
    sc_retry_budget_snapshot(&b, 10000, &v);
    assert_int_equal(v.requests, 100);
    assert_int_equal(v.retries, 20);
    assert_false(sc_retry_budget_try_acquire(&b, 10000));
    sc_retry_budget_on_request(&b, 10000);
    sc_retry_budget_on_request(&b, 10000);
    sc_retry_budget_on_request(&b, 10000);
    sc_retry_budget_on_request(&b, 10000);
    sc_retry_budget_on_request(&b, 10000); /* 105 * 0.2 = 21 */
    assert_true(sc_retry_budget_try_acquire(&b, 10000));
    assert_false(sc_retry_budget_try_acquire(&b, 10000));
    /* everything gone */
    sc_retry_budget_snapshot(&b, 20000, &v);
    assert_int_equal(v.requests, 0);
    assert_int_equal(v.retries, 0);
    assert_int_equal(v.allowance, 0);
}

/* A fully failing upstream: every attempt fails with UNAVAILABLE.
 * Returns the attempts the upstream saw for n requests at `rps`. */
static uint64_t storm(double ratio, uint32_t min_per_second, uint32_t max_attempts, int rps,
                      int seconds, uint64_t *retries_out)
{
    sc_retry_policy p = pol();
    p.max_attempts = max_attempts;
    sc_retry_budget b;
    sc_retry_budget_init(&b, ratio, min_per_second);
    sc_lb_ctx rng;
    sc_lb_ctx_init(&rng, 7);
    uint64_t attempts = 0, retries = 0;
    uint64_t step = 1000u / (uint64_t)rps;
    for (uint64_t t = 0; t < (uint64_t)seconds * 1000u; t += step) {
        sc_retry_budget_on_request(&b, t);
        uint64_t now = t;
        for (uint32_t attempt = 1;; attempt++) {
            attempts++;
            if (!sc_retry_should(&p, attempt, 200, SC_GRPC_UNAVAILABLE, 0))
                break;
            if (!sc_retry_budget_try_acquire(&b, now)) /* counted while in backoff */
                break;
            retries++;
            now += sc_retry_backoff_ms(&p, attempt, sc_lb_rand(&rng));
        }
    }
    *retries_out = retries;
    return attempts;
}

static void test_budget_no_retry_storm(void **st)
{
    (void)st;
    const uint64_t n = 100 * 60; /* 100 req/s for 60 s */
    uint64_t retries;
    /* floor 10/s: at most N * 1.2 + 100 */
    uint64_t a = storm(0.2, 10, 5, 100, 60, &retries);
    print_message("ratio 0.2, floor 10/s: %llu requests -> %llu attempts\n",
                  (unsigned long long)n, (unsigned long long)a);
    assert_true(a <= n * 12 / 10 + 100);
    assert_true(a >= n + n / 10); /* the budget is used, not just refused */
    assert_int_equal(a, n + retries);
    /* no floor: the ratio alone; any 10 s window grants at most 20% of its requests */
    a = storm(0.2, 0, 5, 100, 60, &retries);
    print_message("ratio 0.2, no floor: %llu requests -> %llu attempts\n",
                  (unsigned long long)n, (unsigned long long)a);
    assert_true(a <= n * 12 / 10);
    assert_true(retries >= n / 5 - 200);
    /* max_attempts 100 changes nothing */
    a = storm(0.2, 10, 100, 100, 60, &retries);
    assert_true(a <= n * 12 / 10 + 100);
    /* a low rate is covered by the floor: every request gets its retries */
    a = storm(0.2, 10, 3, 2, 60, &retries);
    assert_int_equal(a, 2 * 60 * 3);
}

#define THREADS 8

typedef struct {
    sc_retry_budget *b;
    pthread_barrier_t *bar;
    int granted;
} budget_arg;

static void *budget_worker(void *a)
{
    budget_arg *w = a;
    pthread_barrier_wait(w->bar);
    for (int i = 0; i < 2000; i++) {
        if (i % 4 == 0)
            sc_retry_budget_on_request(w->b, 500);
        if (sc_retry_budget_try_acquire(w->b, 500))
            w->granted++;
    }
    return NULL;
}

static void test_budget_threads_exact(void **st)
{
    (void)st;
    for (int round = 0; round < 20; round++) {
        sc_retry_budget b;
        sc_retry_budget_init(&b, 0.1, 10);
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, THREADS);
        pthread_t th[THREADS];
        budget_arg args[THREADS];
        for (int i = 0; i < THREADS; i++) {
            args[i] = (budget_arg){.b = &b, .bar = &bar};
            pthread_create(&th[i], NULL, budget_worker, &args[i]);
        }
        int granted = 0;
        for (int i = 0; i < THREADS; i++) {
            pthread_join(th[i], NULL);
            granted += args[i].granted;
        }
        pthread_barrier_destroy(&bar);
        /* 4000 requests * 0.1 = 400 > floor 100: never more than 400 grants;
         * what the race left unused (requests counted after the last try)
         * is still there to take */
        assert_true(granted <= 400);
        int extra = 0;
        while (sc_retry_budget_try_acquire(&b, 500))
            extra++;
        assert_int_equal(granted + extra, 400);
        sc_retry_budget_view v;
        sc_retry_budget_snapshot(&b, 500, &v);
        assert_int_equal(v.requests, 4000);
        assert_int_equal(v.retries, 400);
        assert_int_equal(v.granted, 400);
        assert_int_equal(v.granted + v.refused, THREADS * 2000 + extra + 1);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_should_conditions),
        cmocka_unit_test(test_backoff_bounds),
        cmocka_unit_test(test_backoff_full_jitter_is_uniform),
        cmocka_unit_test(test_pushback_parse),
        cmocka_unit_test(test_retry_after_parse),
        cmocka_unit_test(test_pushback_ceiling),
        cmocka_unit_test(test_budget_floor),
        cmocka_unit_test(test_budget_set_keeps_window),
        cmocka_unit_test(test_budget_ratio),
        cmocka_unit_test(test_budget_window_sliding),
        cmocka_unit_test(test_budget_no_retry_storm),
        cmocka_unit_test(test_budget_threads_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

/* Unit tests for lb/lb.c: every algorithm with a fixed seed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "lb/lb.h"

static void mk(sc_instance *in, size_t n, const uint32_t *w)
{
    memset(in, 0, n * sizeof(*in));
    for (size_t i = 0; i < n; i++)
        in[i].weight = w ? w[i] : 1;
}

static void test_empty(void **st)
{
    (void)st;
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 1);
    assert_int_equal(sc_lb_pick(SC_LB_ROUND_ROBIN, NULL, 0, NULL, NULL, &c), -1);
    assert_int_equal(sc_lb_pick(SC_LB_RANDOM, NULL, 0, NULL, NULL, &c), -1);
    assert_int_equal(sc_lb_pick(SC_LB_LEAST_REQUEST, NULL, 0, NULL, NULL, &c), -1);
}

static void test_round_robin_even(void **st)
{
    (void)st;
    sc_instance in[3];
    mk(in, 3, NULL);
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 0);
    c.rr = 0;
    for (int i = 0; i < 9; i++)
        assert_int_equal(sc_lb_pick(SC_LB_ROUND_ROBIN, in, 3, NULL, NULL, &c), i % 3);
}

static void test_round_robin_weighted_exact(void **st)
{
    (void)st;
    uint32_t w[3] = {1, 3, 2};
    sc_instance in[3];
    mk(in, 3, w);
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 0);
    c.rr = 0;
    int count[3] = {0};
    for (int i = 0; i < 6 * 100; i++)
        count[sc_lb_pick(SC_LB_ROUND_ROBIN, in, 3, NULL, NULL, &c)]++;
    assert_int_equal(count[0], 100);
    assert_int_equal(count[1], 300);
    assert_int_equal(count[2], 200);
}

static void test_round_robin_skips(void **st)
{
    (void)st;
    sc_instance in[3];
    mk(in, 3, NULL);
    uint8_t skip[3] = {0, 1, 0};
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 0);
    c.rr = 0;
    for (int i = 0; i < 50; i++)
        assert_int_not_equal(sc_lb_pick(SC_LB_ROUND_ROBIN, in, 3, NULL, skip, &c), 1);
}

static void test_all_skipped_routes_to_all(void **st)
{
    (void)st;
    sc_instance in[2];
    mk(in, 2, NULL);
    uint8_t skip[2] = {1, 1};
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 7);
    c.rr = 0;
    int count[2] = {0};
    for (int i = 0; i < 10; i++)
        count[sc_lb_pick(SC_LB_ROUND_ROBIN, in, 2, NULL, skip, &c)]++;
    assert_int_equal(count[0], 5);
    assert_int_equal(count[1], 5);
}

static void test_random_weighted(void **st)
{
    (void)st;
    uint32_t w[2] = {1, 4};
    sc_instance in[2];
    mk(in, 2, w);
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 42);
    int count[2] = {0};
    for (int i = 0; i < 50000; i++) {
        int k = sc_lb_pick(SC_LB_RANDOM, in, 2, NULL, NULL, &c);
        assert_true(k == 0 || k == 1);
        count[k]++;
    }
    /* expected 10000 / 40000; a correct generator stays well within 5% */
    assert_in_range(count[0], 9000, 11000);
    assert_in_range(count[1], 39000, 41000);
}

static void test_p2c_prefers_less_loaded(void **st)
{
    (void)st;
    sc_instance in[2];
    mk(in, 2, NULL);
    uint32_t load[2] = {10, 0};
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 3);
    /* With two instances P2C draws both almost always, so the idle one wins. */
    int idle = 0;
    for (int i = 0; i < 1000; i++)
        idle += sc_lb_pick(SC_LB_LEAST_REQUEST, in, 2, load, NULL, &c) == 1;
    assert_true(idle > 700);
}

static void test_p2c_never_picks_worst_of_many(void **st)
{
    (void)st;
    enum { N = 8 };
    sc_instance in[N];
    mk(in, N, NULL);
    uint32_t load[N];
    for (int i = 0; i < N; i++)
        load[i] = (uint32_t)i; /* instance 7 is the most loaded */
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 99);
    int worst = 0;
    for (int i = 0; i < 5000; i++)
        worst += sc_lb_pick(SC_LB_LEAST_REQUEST, in, N, load, NULL, &c) == N - 1;
    /* picked only when both draws land on it: at most ~1/64 of the time, minus re-draws */
    assert_true(worst < 5000 / 64 + 40);
}

static void test_p2c_weight_scales_load(void **st)
{
    (void)st;
    uint32_t w[2] = {4, 1};
    sc_instance in[2];
    mk(in, 2, w);
    uint32_t load[2] = {3, 1}; /* 3/4 < 1/1: the heavy one is relatively less loaded */
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 5);
    int heavy = 0, both_drawn = 0;
    for (int i = 0; i < 2000; i++) {
        int k = sc_lb_pick(SC_LB_LEAST_REQUEST, in, 2, load, NULL, &c);
        heavy += k == 0;
        both_drawn++;
    }
    assert_true(heavy > both_drawn / 2);
}

static void test_p2c_single_eligible_draws_once(void **st)
{
    (void)st;
    sc_instance in[3];
    uint32_t w[3] = {1, 5, 1};
    mk(in, 3, w);
    uint32_t load[3] = {0, 100, 0};
    uint8_t skip[3] = {1, 0, 1}; /* only instance 1 is eligible, however loaded */
    sc_lb_ctx c, ref;
    sc_lb_ctx_init(&c, 11);
    sc_lb_ctx_init(&ref, 11);
    for (int i = 0; i < 100; i++) {
        assert_int_equal(sc_lb_pick(SC_LB_LEAST_REQUEST, in, 3, load, skip, &c), 1);
        sc_lb_rand(&ref); /* one draw per pick: no second candidate to look for */
        assert_true(c.rng == ref.rng);
    }
    /* one instance in all */
    assert_int_equal(sc_lb_pick(SC_LB_LEAST_REQUEST, in, 1, load, NULL, &c), 0);
}

static void test_rand_never_zero_state(void **st)
{
    (void)st;
    sc_lb_ctx c;
    sc_lb_ctx_init(&c, 0);
    for (int i = 0; i < 1000; i++) {
        sc_lb_rand(&c);
        assert_true(c.rng != 0);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_round_robin_even),
        cmocka_unit_test(test_round_robin_weighted_exact),
        cmocka_unit_test(test_round_robin_skips),
        cmocka_unit_test(test_all_skipped_routes_to_all),
        cmocka_unit_test(test_random_weighted),
        cmocka_unit_test(test_p2c_prefers_less_loaded),
        cmocka_unit_test(test_p2c_single_eligible_draws_once),
        cmocka_unit_test(test_p2c_never_picks_worst_of_many),
        cmocka_unit_test(test_p2c_weight_scales_load),
        cmocka_unit_test(test_rand_never_zero_state),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

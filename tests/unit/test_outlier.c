/* Unit tests for resilience/outlier.c: ejection timing and multiplier,
 * decay, the max-ejected cap, return to service, and a threaded check that
 * each ejection and return is reported once and the cap always holds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "resilience/outlier.h"

static sc_outlier_policy pol(void)
{
    return (sc_outlier_policy){.enabled = true,
                               .consecutive_failures = 5,
                               .eject_for_ms = 30000,
                               .max_eject_ms = 300000,
                               .max_ejected_percent = 50};
}

/* n failures at now; returns how many of them ejected. */
static int fail_n(sc_outlier *o, sc_outlier_instance *in, size_t n_inst, int n, uint64_t now)
{
    int ej = 0;
    for (int i = 0; i < n; i++)
        ej += sc_outlier_record(o, in, n_inst, true, now);
    return ej;
}

static void test_ejection_timing_and_return(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance in[4];
    for (int i = 0; i < 4; i++)
        sc_outlier_instance_init(&in[i]);
    assert_int_equal(fail_n(&o, &in[0], 4, 4, 1000), 0);
    assert_false(sc_outlier_is_ejected(&o, &in[0], 1000));
    assert_int_equal(sc_outlier_record(&o, &in[0], 4, true, 1000), 1);
    assert_int_equal(atomic_load(&o.ejected_now), 1);
    assert_int_equal(atomic_load(&in[0].ejected_until_ms), 31000);
    sc_outlier_instance_view iv;
    sc_outlier_instance_snapshot(&in[0], 1000, &iv);
    assert_true(iv.ejected);
    assert_int_equal(iv.ms_left, 30000);
    assert_int_equal(iv.multiplier, 1);
    assert_int_equal(iv.total_ejections, 1);
    assert_int_equal(iv.consecutive, 0);
    /* outcomes while ejected are ignored */
    assert_int_equal(fail_n(&o, &in[0], 4, 20, 2000), 0);
    sc_outlier_instance_snapshot(&in[0], 2000, &iv);
    assert_int_equal(iv.consecutive, 0);

    bool ret = true;
    assert_true(sc_outlier_check(&o, &in[0], 30999, &ret));
    assert_false(ret);
    assert_false(sc_outlier_check(&o, &in[0], 31000, &ret));
    assert_true(ret); /* reported once */
    assert_false(sc_outlier_check(&o, &in[0], 31000, &ret));
    assert_false(ret);
    assert_false(sc_outlier_is_ejected(&o, &in[0], 31001));
    assert_int_equal(atomic_load(&o.ejected_now), 0);
    sc_outlier_view v;
    sc_outlier_snapshot(&o, 4, &v);
    assert_int_equal(v.ejections_total, 1);
    assert_int_equal(v.returns_total, 1);
    assert_int_equal(v.max_ejected, 2);
    sc_outlier_instance_snapshot(&in[0], 31001, &iv);
    assert_false(iv.ejected);
    assert_int_equal(iv.ms_left, 0);
    assert_int_equal(iv.returned_at_ms, 31000);
}

static void test_success_resets(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance in;
    sc_outlier_instance_init(&in);
    assert_int_equal(fail_n(&o, &in, 3, 4, 0), 0);
    assert_int_equal(sc_outlier_record(&o, &in, 3, false, 0), 0);
    assert_int_equal(atomic_load(&in.consecutive), 0);
    assert_int_equal(fail_n(&o, &in, 3, 4, 0), 0);
    assert_int_equal(fail_n(&o, &in, 3, 1, 0), 1);
}

static void test_multiplier_and_cap(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    p.max_eject_ms = 100000;
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance in;
    sc_outlier_instance_init(&in);
    /* each ejection right after the return: 30 s, 60 s, 90 s, then the 100 s cap */
    const uint64_t want[] = {30000, 60000, 90000, 100000, 100000, 100000};
    uint64_t now = 1;
    for (size_t i = 0; i < SC_ARRAY_LEN(want); i++) {
        assert_int_equal(fail_n(&o, &in, 2, 5, now), 1);
        uint64_t until = atomic_load(&in.ejected_until_ms);
        assert_int_equal(until - now, want[i]);
        assert_true(sc_outlier_is_ejected(&o, &in, until - 1));
        bool ret;
        assert_false(sc_outlier_check(&o, &in, until, &ret));
        assert_true(ret);
        now = until;
    }
    /* the multiplier stops growing at the cap (ceil(100/30) = 4) */
    assert_int_equal(atomic_load(&in.ejections), 4);
}

static void test_decay(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance a, b;
    sc_outlier_instance_init(&a);
    sc_outlier_instance_init(&b);
    /* two quick ejections: multiplier 2 */
    for (int k = 0; k < 2; k++) {
        sc_outlier_instance *in = k ? &b : &a;
        assert_int_equal(fail_n(&o, in, 4, 5, 1), 1);
        assert_false(sc_outlier_is_ejected(&o, in, 30001));
        assert_int_equal(fail_n(&o, in, 4, 5, 30001), 1);
        assert_int_equal(atomic_load(&in->ejected_until_ms), 90001);
        assert_false(sc_outlier_is_ejected(&o, in, 90001));
    }
    /* a: healthy for 29.999 s: multiplier still 2 -> 3 */
    assert_int_equal(fail_n(&o, &a, 4, 5, 90001 + 29999), 1);
    assert_int_equal(atomic_load(&a.ejected_until_ms) - (90001 + 29999), 90000);
    /* b: healthy for exactly 30 s: one step of decay, 2 -> 1 -> 2 */
    assert_int_equal(fail_n(&o, &b, 4, 5, 90001 + 30000), 1);
    assert_int_equal(atomic_load(&b.ejected_until_ms) - (90001 + 30000), 60000);
    assert_false(sc_outlier_is_ejected(&o, &b, 180001));
    /* b: healthy for a long time: starts over at 1 */
    assert_int_equal(fail_n(&o, &b, 4, 5, 180001 + 1000000), 1);
    assert_int_equal(atomic_load(&b.ejected_until_ms) - (180001 + 1000000), 30000);
}

static void test_max_ejected_cap(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    sc_outlier o;
    sc_outlier_init(&o, &p);
    assert_int_equal(sc_outlier_max_ejected(&o, 0), 0);
    assert_int_equal(sc_outlier_max_ejected(&o, 1), 0);
    assert_int_equal(sc_outlier_max_ejected(&o, 2), 1);
    assert_int_equal(sc_outlier_max_ejected(&o, 3), 1);
    assert_int_equal(sc_outlier_max_ejected(&o, 4), 2);
    assert_int_equal(sc_outlier_max_ejected(&o, 5), 2);
    sc_outlier_instance in[3];
    for (int i = 0; i < 3; i++)
        sc_outlier_instance_init(&in[i]);
    /* 3 instances at 50%: one at a time */
    assert_int_equal(fail_n(&o, &in[0], 3, 5, 0), 1);
    assert_int_equal(fail_n(&o, &in[1], 3, 5, 0), 0);
    assert_int_equal(fail_n(&o, &in[2], 3, 7, 0), 0);
    sc_outlier_view v;
    sc_outlier_snapshot(&o, 3, &v);
    assert_int_equal(v.ejected_now, 1);
    assert_int_equal(v.max_ejected, 1);
    assert_int_equal(v.ejections_capped, 1 + 3);
    assert_false(sc_outlier_is_ejected(&o, &in[1], 10));
    /* once in[0] is back, in[1]'s next failure ejects it */
    assert_false(sc_outlier_is_ejected(&o, &in[0], 30000));
    assert_int_equal(fail_n(&o, &in[1], 3, 1, 30000), 1);
    sc_outlier_snapshot(&o, 3, &v);
    assert_int_equal(v.ejected_now, 1);

    /* a lone instance is never ejected at 50%; at 100% it is */
    sc_outlier o1;
    sc_outlier_init(&o1, &p);
    sc_outlier_instance lone;
    sc_outlier_instance_init(&lone);
    assert_int_equal(fail_n(&o1, &lone, 1, 50, 0), 0);
    p.max_ejected_percent = 100;
    sc_outlier_init(&o1, &p);
    sc_outlier_instance_init(&lone);
    assert_int_equal(fail_n(&o1, &lone, 1, 5, 0), 1);
    /* 33.4% of 3 is 1.002: one */
    p.max_ejected_percent = 33.4;
    sc_outlier_init(&o1, &p);
    assert_int_equal(sc_outlier_max_ejected(&o1, 3), 1);
    p.max_ejected_percent = 33.3;
    sc_outlier_init(&o1, &p);
    assert_int_equal(sc_outlier_max_ejected(&o1, 3), 0);
    assert_int_equal(sc_outlier_max_ejected(&o1, 10), 3);
}

static void test_snapshot_shrinks(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance in[4];
    for (int i = 0; i < 4; i++)
        sc_outlier_instance_init(&in[i]);
    assert_int_equal(fail_n(&o, &in[0], 4, 5, 0), 1);
    assert_int_equal(fail_n(&o, &in[1], 4, 5, 0), 1);
    /* now only 2 instances: cap 1, two stay ejected, no new ejection */
    assert_int_equal(fail_n(&o, &in[2], 2, 5, 0), 0);
    assert_int_equal(atomic_load(&o.ejected_now), 2);
    /* in[1] leaves discovery: its slot is given back */
    assert_true(sc_outlier_remove(&o, &in[1]));
    assert_false(sc_outlier_remove(&o, &in[1]));
    assert_false(sc_outlier_remove(&o, &in[3]));
    assert_int_equal(atomic_load(&o.ejected_now), 1);
    assert_int_equal(fail_n(&o, &in[2], 2, 1, 0), 0); /* cap 1 still full */
    assert_false(sc_outlier_is_ejected(&o, &in[0], 30000));
    assert_int_equal(fail_n(&o, &in[2], 2, 1, 30000), 1);
}

/* A policy reload changes the parameters of a detector in use: failure
 * counts and ejections in force stay; the next outcomes follow the new
 * parameters. */
static void test_set_policy_keeps_state(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance in[4];
    for (int i = 0; i < 4; i++)
        sc_outlier_instance_init(&in[i]);
    assert_int_equal(fail_n(&o, &in[0], 4, 3, 1000), 0);
    p.consecutive_failures = 4;
    p.eject_for_ms = 10000;
    p.max_eject_ms = 10000;
    sc_outlier_set_policy(&o, &p);
    assert_int_equal(fail_n(&o, &in[0], 4, 1, 1000), 1); /* the 4th in a row, counted across the change */
    assert_int_equal(atomic_load(&in[0].ejected_until_ms), 11000);
    /* detection off: no new ejection, the one in force ends at its time */
    p.enabled = false;
    sc_outlier_set_policy(&o, &p);
    assert_int_equal(fail_n(&o, &in[1], 4, 10, 2000), 0);
    assert_true(sc_outlier_is_ejected(&o, &in[0], 10999));
    assert_false(sc_outlier_is_ejected(&o, &in[0], 11000));
    sc_outlier_view v;
    sc_outlier_snapshot(&o, 4, &v);
    assert_int_equal(v.ejected_now, 0);
    assert_int_equal(v.ejections_total, 1);
    assert_int_equal(v.returns_total, 1);
    /* on again with a cap of 25%: one of four */
    p = pol();
    p.consecutive_failures = 1;
    p.max_ejected_percent = 25;
    sc_outlier_set_policy(&o, &p);
    assert_int_equal(sc_outlier_max_ejected(&o, 4), 1);
    assert_int_equal(fail_n(&o, &in[2], 4, 1, 20000), 1);
    assert_int_equal(fail_n(&o, &in[3], 4, 1, 20000), 0);
}

static void test_disabled(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    p.enabled = false;
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance in;
    sc_outlier_instance_init(&in);
    assert_int_equal(fail_n(&o, &in, 10, 100, 0), 0);
    assert_false(sc_outlier_is_ejected(&o, &in, 0));
}

/* ----------------------------------------------------------- threads */

#define THREADS 8
#define NINST 10

typedef struct {
    sc_outlier *o;
    sc_outlier_instance *in;
    pthread_barrier_t *bar;
    _Atomic uint64_t *clock;
    _Atomic int *violations;
    int ejections, returns;
    unsigned seed;
} th_arg;

static void *worker(void *p)
{
    th_arg *a = p;
    pthread_barrier_wait(a->bar);
    for (int i = 0; i < 50000; i++) {
        uint64_t now = atomic_fetch_add(a->clock, 1) / 8; /* ~1 ms per 8 calls */
        a->seed = a->seed * 1103515245u + 12345u;
        unsigned k = (a->seed >> 16) % NINST;
        bool ret;
        if (sc_outlier_check(a->o, &a->in[k], now, &ret))
            continue;
        a->returns += ret;
        /* instances 0..6 fail 90% of the time, the others 5% */
        bool fail = ((a->seed >> 8) % 100) < (k < 7 ? 90u : 5u);
        a->ejections += sc_outlier_record(a->o, &a->in[k], NINST, fail, now);
        if (atomic_load(&a->o->ejected_now) > 5)
            atomic_fetch_add(a->violations, 1);
    }
    return NULL;
}

static void test_threads_cap_and_reports(void **st)
{
    (void)st;
    sc_outlier_policy p = pol();
    p.consecutive_failures = 3;
    p.eject_for_ms = 20;
    p.max_eject_ms = 100;
    sc_outlier o;
    sc_outlier_init(&o, &p);
    sc_outlier_instance in[NINST];
    for (int i = 0; i < NINST; i++)
        sc_outlier_instance_init(&in[i]);
    _Atomic uint64_t clock = 8;
    _Atomic int violations = 0;
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, THREADS);
    pthread_t th[THREADS];
    th_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (th_arg){.o = &o, .in = in, .bar = &bar, .clock = &clock,
                           .violations = &violations, .seed = (unsigned)i * 31337u + 5};
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    int ejections = 0, returns = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ejections += args[i].ejections;
        returns += args[i].returns;
    }
    pthread_barrier_destroy(&bar);
    assert_int_equal(atomic_load(&violations), 0);
    assert_true(ejections > 10);
    sc_outlier_view v;
    sc_outlier_snapshot(&o, NINST, &v);
    assert_int_equal(v.ejections_total, (uint64_t)ejections);
    assert_int_equal(v.returns_total, (uint64_t)returns);
    assert_int_equal(v.ejected_now, (uint32_t)(ejections - returns));
    uint32_t held = 0;
    for (int i = 0; i < NINST; i++)
        held += atomic_load(&in[i].ejected_until_ms) != 0;
    assert_int_equal(held, v.ejected_now);
    /* everything returns once time passes */
    for (int i = 0; i < NINST; i++)
        sc_outlier_is_ejected(&o, &in[i], UINT64_MAX - 1);
    assert_int_equal(atomic_load(&o.ejected_now), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ejection_timing_and_return),
        cmocka_unit_test(test_success_resets),
        cmocka_unit_test(test_multiplier_and_cap),
        cmocka_unit_test(test_decay),
        cmocka_unit_test(test_max_ejected_cap),
        cmocka_unit_test(test_snapshot_shrinks),
        cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_set_policy_keeps_state),
        cmocka_unit_test(test_threads_cap_and_reports),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

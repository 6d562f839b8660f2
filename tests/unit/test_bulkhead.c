/* Unit tests for resilience/bulkhead.c: admission bookkeeping, and a
 * multi-threaded stress test that active never exceeds max_concurrent. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>

#include "resilience/bulkhead.h"

static sc_bulkhead_policy pol(uint32_t conc, uint32_t pending)
{
    return (sc_bulkhead_policy){.enabled = true,
                                .max_concurrent = conc,
                                .max_pending = pending,
                                .queue_timeout_ms = 50};
}

static void test_admit_queue_reject(void **st)
{
    (void)st;
    sc_bulkhead_policy p = pol(2, 2);
    sc_bulkhead b;
    sc_bulkhead_init(&b, &p);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_QUEUE);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_QUEUE);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_REJECT);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_REJECT);
    sc_bulkhead_view v;
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 2);
    assert_int_equal(v.pending, 2);
    assert_int_equal(v.admitted, 2);
    assert_int_equal(v.queued, 2);
    assert_int_equal(v.rejected, 2);
    assert_int_equal(v.queue_timeout_ms, 50);

    /* no slot free: a waiter cannot promote */
    assert_false(sc_bulkhead_try_promote(&b));
    /* a slot frees: leave says someone waits; one waiter takes it */
    assert_true(sc_bulkhead_leave(&b));
    assert_true(sc_bulkhead_try_promote(&b));
    assert_false(sc_bulkhead_try_promote(&b));
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 2);
    assert_int_equal(v.pending, 1);
    assert_int_equal(v.promoted, 1);
    /* the other waiter times out */
    sc_bulkhead_queue_timeout(&b);
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.pending, 0);
    assert_int_equal(v.queue_timeouts, 1);
    /* with nobody waiting leave says so */
    assert_false(sc_bulkhead_leave(&b));
    /* a queued request that is cancelled */
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_QUEUE);
    sc_bulkhead_abandon(&b);
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.pending, 0);
    assert_int_equal(v.abandoned, 1);
    assert_false(sc_bulkhead_leave(&b));
    assert_false(sc_bulkhead_leave(&b));
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 0);
    /* a release too many saturates at 0 */
    sc_bulkhead_leave(&b);
    sc_bulkhead_abandon(&b);
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 0);
    assert_int_equal(v.pending, 0);
    assert_int_equal(v.queued, v.promoted + v.queue_timeouts + v.abandoned - 1);
}

static void test_no_queue(void **st)
{
    (void)st;
    sc_bulkhead_policy p = pol(1, 0);
    sc_bulkhead b;
    sc_bulkhead_init(&b, &p);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_REJECT);
    assert_false(sc_bulkhead_leave(&b));
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    assert_string_equal(sc_bulkhead_result_name(SC_BULKHEAD_ADMITTED), "admitted");
    assert_string_equal(sc_bulkhead_result_name(SC_BULKHEAD_QUEUE), "queue");
    assert_string_equal(sc_bulkhead_result_name(SC_BULKHEAD_REJECT), "reject");
    assert_string_equal(sc_bulkhead_result_name((sc_bulkhead_result)9), "?");
}

/* A policy reload changes the limits of a bulkhead in use: the slots held
 * stay held, later admissions follow the new limits. */
static void test_set_limits_keeps_counts(void **st)
{
    (void)st;
    sc_bulkhead_policy p = pol(3, 0);
    sc_bulkhead b;
    sc_bulkhead_init(&b, &p);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    p = pol(1, 1);
    p.queue_timeout_ms = 75;
    sc_bulkhead_set_limits(&b, &p);
    sc_bulkhead_view v;
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 3); /* above the new limit until they leave */
    assert_int_equal(v.max_concurrent, 1);
    assert_int_equal(v.max_pending, 1);
    assert_int_equal(v.queue_timeout_ms, 75);
    assert_int_equal(v.admitted, 3);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_QUEUE);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_REJECT);
    assert_true(sc_bulkhead_leave(&b));
    assert_false(sc_bulkhead_try_promote(&b)); /* 2 active, limit 1 */
    sc_bulkhead_leave(&b);
    assert_false(sc_bulkhead_try_promote(&b));
    sc_bulkhead_leave(&b);
    assert_true(sc_bulkhead_try_promote(&b));  /* now under it */
    /* raised again, and switched off: unlimited */
    p = pol(5, 0);
    sc_bulkhead_set_limits(&b, &p);
    for (int i = 0; i < 4; i++)
        assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_REJECT);
    p.enabled = false;
    sc_bulkhead_set_limits(&b, &p);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 6);
    assert_int_equal(v.max_concurrent, UINT32_MAX);
    assert_int_equal(v.queue_timeout_ms, 0);
    sc_bulkhead_set_limits(&b, NULL);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
}

static void test_disabled_is_unlimited(void **st)
{
    (void)st;
    sc_bulkhead_policy p = pol(1, 0);
    p.enabled = false;
    sc_bulkhead b;
    sc_bulkhead_init(&b, &p);
    for (int i = 0; i < 10000; i++)
        assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
    sc_bulkhead_view v;
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 10000);
    assert_int_equal(v.max_concurrent, UINT32_MAX);
    sc_bulkhead_init(&b, NULL);
    assert_int_equal(sc_bulkhead_try_enter(&b), SC_BULKHEAD_ADMITTED);
}

static void test_connection_cap(void **st)
{
    (void)st;
    sc_bulkhead_policy p = pol(10, 0);
    p.max_connections = 2;
    sc_bulkhead b;
    sc_bulkhead_init(&b, &p);
    assert_true(sc_bulkhead_conn_acquire(&b));
    assert_true(sc_bulkhead_conn_acquire(&b));
    assert_false(sc_bulkhead_conn_acquire(&b));
    sc_bulkhead_conn_release(&b);
    assert_true(sc_bulkhead_conn_acquire(&b));
    sc_bulkhead_view v;
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.connections, 2);
    assert_int_equal(v.conn_rejected, 1);
    assert_int_equal(v.max_connections, 2);
    /* 0 = unlimited, still counted */
    p.max_connections = 0;
    sc_bulkhead_init(&b, &p);
    for (int i = 0; i < 5000; i++)
        assert_true(sc_bulkhead_conn_acquire(&b));
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.connections, 5000);
    for (int i = 0; i < 5001; i++)
        sc_bulkhead_conn_release(&b);
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.connections, 0);
}

/* ------------------------------------------------------------- stress */

#define THREADS 8
#define ITERS 20000
#define MAXC 3
#define MAXP 4
#define MAXCONN 2

typedef struct {
    sc_bulkhead *b;
    pthread_barrier_t *bar;
    _Atomic int *inside;       /* requests running, counted by the test itself */
    _Atomic int *conns;
    _Atomic int *violations;
    _Atomic int *max_seen;
    uint64_t ran, rejected, gave_up;
    unsigned seed;
} stress_arg;

static void run_one(stress_arg *a)
{
    int n = atomic_fetch_add(a->inside, 1) + 1;
    int m = atomic_load(a->max_seen);
    while (n > m && !atomic_compare_exchange_weak(a->max_seen, &m, n))
        ;
    if (n > MAXC || atomic_load(&a->b->active) > MAXC)
        atomic_fetch_add(a->violations, 1);
    for (volatile int spin = 0; spin < 50; spin++)
        ;
    atomic_fetch_sub(a->inside, 1);
    a->ran++;
    sc_bulkhead_leave(a->b);
}

static void *stress_worker(void *p)
{
    stress_arg *a = p;
    pthread_barrier_wait(a->bar);
    for (int i = 0; i < ITERS; i++) {
        a->seed = a->seed * 1103515245u + 12345u;
        if ((a->seed >> 16) % 8 == 0 && sc_bulkhead_conn_acquire(a->b)) {
            if (atomic_fetch_add(a->conns, 1) + 1 > MAXCONN)
                atomic_fetch_add(a->violations, 1);
            atomic_fetch_sub(a->conns, 1);
            sc_bulkhead_conn_release(a->b);
        }
        switch (sc_bulkhead_try_enter(a->b)) {
        case SC_BULKHEAD_ADMITTED:
            run_one(a);
            break;
        case SC_BULKHEAD_QUEUE: {
            if (atomic_load(&a->b->pending) > MAXP)
                atomic_fetch_add(a->violations, 1);
            bool promoted = false;
            for (int t = 0; t < 20 && !promoted; t++) {
                promoted = sc_bulkhead_try_promote(a->b);
                if (!promoted)
                    sched_yield();
            }
            if (promoted) {
                run_one(a);
            } else {
                a->gave_up++;
                if (a->seed & 1)
                    sc_bulkhead_queue_timeout(a->b);
                else
                    sc_bulkhead_abandon(a->b);
            }
            break;
        }
        case SC_BULKHEAD_REJECT:
            a->rejected++;
            break;
        }
    }
    return NULL;
}

static void test_stress_never_exceeds(void **st)
{
    (void)st;
    sc_bulkhead_policy p = pol(MAXC, MAXP);
    p.max_connections = MAXCONN;
    sc_bulkhead b;
    sc_bulkhead_init(&b, &p);
    _Atomic int inside = 0, conns = 0, violations = 0, max_seen = 0;
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, THREADS);
    pthread_t th[THREADS];
    stress_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (stress_arg){.b = &b, .bar = &bar, .inside = &inside, .conns = &conns,
                               .violations = &violations, .max_seen = &max_seen,
                               .seed = (unsigned)i * 7919u + 1};
        pthread_create(&th[i], NULL, stress_worker, &args[i]);
    }
    uint64_t ran = 0, rejected = 0, gave_up = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        ran += args[i].ran;
        rejected += args[i].rejected;
        gave_up += args[i].gave_up;
    }
    pthread_barrier_destroy(&bar);
    assert_int_equal(atomic_load(&violations), 0);
    assert_true(atomic_load(&max_seen) <= MAXC);
    assert_true(atomic_load(&max_seen) >= 1);
    sc_bulkhead_view v;
    sc_bulkhead_snapshot(&b, &v);
    assert_int_equal(v.active, 0);
    assert_int_equal(v.pending, 0);
    assert_int_equal(v.connections, 0);
    assert_int_equal(ran + rejected + gave_up, (uint64_t)THREADS * ITERS);
    assert_int_equal(v.admitted + v.promoted, ran);
    assert_int_equal(v.rejected, rejected);
    assert_int_equal(v.queued, v.promoted + v.queue_timeouts + v.abandoned);
    assert_int_equal(v.queue_timeouts + v.abandoned, gave_up);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admit_queue_reject),
        cmocka_unit_test(test_no_queue),
        cmocka_unit_test(test_set_limits_keeps_counts),
        cmocka_unit_test(test_disabled_is_unlimited),
        cmocka_unit_test(test_connection_cap),
        cmocka_unit_test(test_stress_never_exceeds),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

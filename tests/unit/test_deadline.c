/*
 * test_deadline.c: the lazy deadline queue (proxy/deadline.h) on a real
 * libev loop: order of expiry, removal without touching the timer, the
 * timer kept when a later deadline arrives, restarted for an earlier one,
 * and deadlines out of order refused; and the worker's clock
 * (sc_worker_now_ns), read once per event.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include "proxy/deadline.h"
#include "proxy/proxy.h"

#include <stdlib.h>
#include <time.h>


#define MS 1000000ull

typedef struct item {
    sc_dq_entry e;
    int id;
    uint64_t fired_ns;
} item;

static int order[16], n_fired;
static sc_dq *cur_q;
static item *add_on_expire; /* queued from inside the expiry of another */

static void expire(sc_dq_entry *e)
{
    item *it = SC_CONTAINER_OF(e, item, e);
    it->fired_ns = sc_now_ns();
    order[n_fired++] = it->id;
    assert_false(sc_dq_queued(e));
    if (add_on_expire) {
        item *a = add_on_expire;
        add_on_expire = NULL;
        assert_true(sc_dq_add(cur_q, &a->e, sc_now_ns() + 10 * MS));
    }
}

/* Runs the loop until n expiries (or 2 s). */
static void run_until(struct ev_loop *loop, int n)
{
    uint64_t end = sc_now_ns() + 2000 * MS;
    while (n_fired < n && sc_now_ns() < end)
        ev_run(loop, EVRUN_ONCE);
}

typedef struct fixture {
    struct ev_loop *loop;
    sc_dq q;
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    f->loop = ev_loop_new(EVFLAG_AUTO);
    sc_dq_init(&f->q, f->loop, expire);
    cur_q = &f->q;
    n_fired = 0;
    add_on_expire = NULL;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    sc_dq_stop(&f->q);
    ev_loop_destroy(f->loop);
    free(f);
    return 0;
}

static void test_order_and_removal(void **state)
{
    fixture *f = *state;
    sc_dq *q = &f->q;
    item a = {.id = 1}, b = {.id = 2}, c = {.id = 3};
    uint64_t t0 = sc_now_ns();
    assert_true(sc_dq_add(q, &a.e, t0 + 30 * MS));
    assert_int_equal(q->armed_ns, t0 + 30 * MS);
    assert_true(sc_dq_add(q, &b.e, t0 + 40 * MS));
    assert_true(sc_dq_add(q, &c.e, t0 + 40 * MS)); /* equal deadlines keep their order */
    assert_int_equal(q->armed_ns, t0 + 30 * MS);     /* later ones do not touch the timer */
    item early = {.id = 9};
    assert_false(sc_dq_add(q, &early.e, t0 + 35 * MS)); /* before the tail: refused */
    assert_false(sc_dq_queued(&early.e));
    sc_dq_remove(&a.e); /* the head leaves; the timer stays as it was */
    assert_false(sc_dq_queued(&a.e));
    sc_dq_remove(&a.e); /* twice: nothing */
    assert_int_equal(q->armed_ns, t0 + 30 * MS);
    run_until(f->loop, 2);
    assert_int_equal(n_fired, 2);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 3);
    assert_true(b.fired_ns + 1 * MS >= t0 + 40 * MS); /* not before its deadline (less the slack) */
    assert_true(b.fired_ns < t0 + 1000 * MS);
    assert_int_equal(a.fired_ns, 0);
}

static void test_lazy_timer_when_empty(void **state)
{
    fixture *f = *state;
    sc_dq *q = &f->q;
    item a = {.id = 1}, b = {.id = 2}, c = {.id = 3};
    uint64_t t0 = sc_now_ns();
    assert_true(sc_dq_add(q, &a.e, t0 + 50 * MS));
    sc_dq_remove(&a.e);
    /* empty, the timer still runs for a: a later deadline keeps it */
    assert_true(sc_dq_add(q, &b.e, t0 + 80 * MS));
    assert_int_equal(q->armed_ns, t0 + 50 * MS);
    sc_dq_remove(&b.e);
    /* an earlier one (a shortened timeout) restarts it */
    assert_true(sc_dq_add(q, &c.e, t0 + 20 * MS));
    assert_int_equal(q->armed_ns, t0 + 20 * MS);
    run_until(f->loop, 1);
    assert_int_equal(n_fired, 1);
    assert_int_equal(order[0], 3);
    /* the timer fired for c; b's deadline (removed) never fires */
    assert_int_equal(b.fired_ns, 0);
}

static void test_fires_early_timer_then_rearms(void **state)
{
    fixture *f = *state;
    sc_dq *q = &f->q;
    item a = {.id = 1}, b = {.id = 2}, d = {.id = 4};
    uint64_t t0 = sc_now_ns();
    assert_true(sc_dq_add(q, &a.e, t0 + 20 * MS));
    assert_true(sc_dq_add(q, &b.e, t0 + 60 * MS));
    sc_dq_remove(&a.e);
    add_on_expire = &d; /* queued from b's expiry */
    run_until(f->loop, 2);
    /* the timer fired at a's deadline with nothing due, ran again for b,
     * then for the one b's expiry queued */
    assert_int_equal(n_fired, 2);
    assert_int_equal(order[0], 2);
    assert_int_equal(order[1], 4);
    assert_true(b.fired_ns + 1 * MS >= t0 + 60 * MS);
    assert_true(d.fired_ns + 1 * MS >= b.fired_ns + 10 * MS);
    assert_true(sc_list_empty(&q->list));
}

/* One reading per event: uses within an event share it, a tick makes the
 * next use read the clock again, and readings never go back. */
static void test_worker_clock(void **state)
{
    (void)state;
    sc_worker w = {0};
    uint64_t before = sc_now_ns();
    uint64_t a = sc_worker_now_ns(&w);
    assert_true(a >= before);
    struct timespec pause = {0, 2 * 1000000};
    nanosleep(&pause, NULL);
    assert_int_equal(sc_worker_now_ns(&w), a);
    assert_int_equal(sc_worker_now_ms(&w), a / MS);
    sc_worker_tick(&w);
    uint64_t b = sc_worker_now_ns(&w);
    assert_true(b >= a + 2 * MS);
    assert_true(b <= sc_now_ns());
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_order_and_removal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lazy_timer_when_empty, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fires_early_timer_then_rearms, setup, teardown),
        cmocka_unit_test(test_worker_clock),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

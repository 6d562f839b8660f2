/* Unit tests for resilience/breaker.c: every transition at its exact
 * threshold, with an injected clock; plus concurrency checks of the
 * exactly-once transition report and the half-open probe limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <string.h>

#include "config/config_internal.h"
#include "http/grpc.h"
#include "resilience/breaker.h"

static sc_breaker_policy pol(void)
{
    return (sc_breaker_policy){
        .enabled = true,
        .failure_rate = 50,
        .slow_call_ms = 0,
        .slow_call_rate = 100,
        .window_ms = 10000,
        .min_calls = 20,
        .open_for_ms = 15000,
        .half_open_calls = 3,
        .consecutive_failures = 0,
    };
}

/* Records n outcomes at now; asserts the state after each but the last is `during`. */
static sc_breaker_state rec_n(sc_breaker *b, uint64_t now, int n, bool failure, bool slow)
{
    sc_breaker_state st = SC_BREAKER_CLOSED;
    for (int i = 0; i < n; i++)
        st = sc_breaker_record(b, now, failure, slow, false);
    return st;
}

/* Opens a breaker at `now` through the consecutive trigger. */
static void open_now(sc_breaker *b, uint64_t now)
{
    sc_breaker_transition tr;
    assert_int_equal(sc_breaker_force_ex(b, SC_BREAKER_FORCE_OPEN, now, &tr), 0);
    assert_int_equal(sc_breaker_force_ex(b, SC_BREAKER_RELEASE, now, &tr), 0);
    /* released from forced open: half-open; one failed probe re-opens at now */
    bool probe = false;
    assert_true(sc_breaker_allow(b, now, &probe));
    assert_true(probe);
    assert_int_equal(sc_breaker_record(b, now, true, false, true), SC_BREAKER_OPEN);
}

static void test_state_names(void **st)
{
    (void)st;
    assert_string_equal(sc_breaker_state_name(SC_BREAKER_CLOSED), "closed");
    assert_string_equal(sc_breaker_state_name(SC_BREAKER_OPEN), "open");
    assert_string_equal(sc_breaker_state_name(SC_BREAKER_HALF_OPEN), "half-open");
    assert_string_equal(sc_breaker_state_name((sc_breaker_state)7), "?");
}

static void test_opens_exactly_at_min_calls(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    sc_breaker b;
    sc_breaker_init(&b, &p, 1000);
    for (int i = 0; i < 19; i++) {
        assert_true(sc_breaker_allow(&b, 1000, NULL));
        assert_int_equal(sc_breaker_record(&b, 1000 + (uint64_t)i, true, false, false),
                         SC_BREAKER_CLOSED);
    }
    sc_breaker_transition tr;
    assert_int_equal(sc_breaker_record_ex(&b, 1019, true, false, 0, &tr), SC_BREAKER_OPEN);
    assert_int_equal(tr.seq, 1);
    assert_int_equal(tr.from, SC_BREAKER_CLOSED);
    assert_int_equal(tr.to, SC_BREAKER_OPEN);
    assert_int_equal(tr.at_ms, 1019);
    assert_string_equal(tr.reason, "failure rate 100% >= 50% over 20 calls");
    assert_false(sc_breaker_allow(&b, 1020, NULL));
    /* later records do not report the transition again */
    assert_int_equal(sc_breaker_record_ex(&b, 1021, true, false, 0, &tr), SC_BREAKER_OPEN);
    assert_int_equal(tr.seq, 0);
}

/* succ successes then fail failures, with min_calls = succ + fail: opens
 * (on the last record) exactly when the final rate reaches the threshold. */
static sc_breaker_state rate_case(double threshold, int succ, int fail)
{
    sc_breaker_policy p = pol();
    p.failure_rate = threshold;
    p.min_calls = (uint32_t)(succ + fail);
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    assert_int_equal(rec_n(&b, 5, succ, false, false), SC_BREAKER_CLOSED);
    for (int i = 0; i < fail - 1; i++)
        assert_int_equal(sc_breaker_record(&b, 5, true, false, false), SC_BREAKER_CLOSED);
    return sc_breaker_record(&b, 5, true, false, false);
}

static void test_failure_rate_boundary(void **st)
{
    (void)st;
    /* 49.9% vs 50% */
    assert_int_equal(rate_case(50, 501, 499), SC_BREAKER_CLOSED);
    assert_int_equal(rate_case(50, 500, 500), SC_BREAKER_OPEN);
    assert_int_equal(rate_case(50, 5, 5), SC_BREAKER_OPEN);
    assert_int_equal(rate_case(50, 6, 4), SC_BREAKER_CLOSED);
    /* thresholds that are not exact in binary still compare exactly */
    assert_int_equal(rate_case(49.9, 501, 499), SC_BREAKER_OPEN);
    assert_int_equal(rate_case(49.9, 502, 498), SC_BREAKER_CLOSED);
    assert_int_equal(rate_case(33.3, 667, 333), SC_BREAKER_OPEN);
    assert_int_equal(rate_case(33.3, 668, 332), SC_BREAKER_CLOSED);
    assert_int_equal(rate_case(100, 0, 7), SC_BREAKER_OPEN);
    assert_int_equal(rate_case(100, 1, 7), SC_BREAKER_CLOSED);
}

static void test_success_never_opens(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    assert_int_equal(rec_n(&b, 0, 10, true, false), SC_BREAKER_CLOSED);
    assert_int_equal(rec_n(&b, 0, 10, false, false), SC_BREAKER_CLOSED); /* 10/20 = 50% */
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 0, &v);
    assert_int_equal(v.calls, 20);
    assert_int_equal(v.failures, 10);
    assert_true(v.failure_rate == 50.0);
    assert_int_equal(sc_breaker_record(&b, 0, true, false, false), SC_BREAKER_OPEN);
}

static void test_window_sliding(void **st)
{
    (void)st;
    sc_breaker_policy p = pol(); /* window 10 s, buckets of 1 s */
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    assert_int_equal(rec_n(&b, 0, 19, true, false), SC_BREAKER_CLOSED);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 9999, &v);
    assert_int_equal(v.calls, 19);
    sc_breaker_snapshot(&b, 10000, &v);
    assert_int_equal(v.calls, 0);
    /* at window_ms the old failures are gone: one more failure is 1 call */
    assert_int_equal(sc_breaker_record(&b, 10000, true, false, false), SC_BREAKER_CLOSED);
    sc_breaker_snapshot(&b, 10000, &v);
    assert_int_equal(v.calls, 1);
    assert_int_equal(v.failures, 1);

    /* one ms earlier they still count */
    sc_breaker b2;
    sc_breaker_init(&b2, &p, 0);
    assert_int_equal(rec_n(&b2, 0, 19, true, false), SC_BREAKER_CLOSED);
    assert_int_equal(sc_breaker_record(&b2, 9999, true, false, false), SC_BREAKER_OPEN);

    /* a window spread over time: each bucket ages out on its own */
    sc_breaker b3;
    sc_breaker_init(&b3, &p, 0);
    for (uint64_t t = 0; t < 10; t++)
        rec_n(&b3, t * 1000, 1, t % 2 == 0, false);
    sc_breaker_snapshot(&b3, 9000, &v);
    assert_int_equal(v.calls, 10);
    assert_int_equal(v.failures, 5);
    sc_breaker_snapshot(&b3, 12500, &v); /* buckets 0..2 gone */
    assert_int_equal(v.calls, 7);
    assert_int_equal(v.failures, 3);
    sc_breaker_snapshot(&b3, 18999, &v);
    assert_int_equal(v.calls, 1);
    sc_breaker_snapshot(&b3, 19000, &v);
    assert_int_equal(v.calls, 0);
    sc_breaker_snapshot(&b3, 100000, &v);
    assert_int_equal(v.calls, 0);
    /* slots are reused after many windows */
    assert_int_equal(rec_n(&b3, 100000, 3, true, false), SC_BREAKER_CLOSED);
    sc_breaker_snapshot(&b3, 100000, &v);
    assert_int_equal(v.calls, 3);
    assert_int_equal(v.failures, 3);
}

static void test_slow_call_trigger(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.slow_call_ms = 1000;
    p.slow_call_rate = 80;
    p.min_calls = 10;
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    assert_false(sc_breaker_is_slow(&b, 999));
    assert_true(sc_breaker_is_slow(&b, 1000));
    assert_int_equal(rec_n(&b, 0, 2, false, false), SC_BREAKER_CLOSED);
    assert_int_equal(rec_n(&b, 0, 7, false, true), SC_BREAKER_CLOSED); /* 7/9, 9 < min_calls */
    sc_breaker_transition tr;
    assert_int_equal(sc_breaker_record_ex(&b, 0, false, true, 0, &tr), SC_BREAKER_OPEN);
    assert_string_equal(tr.reason, "slow call rate 80% >= 80% over 10 calls (slow >= 1000 ms)");

    sc_breaker b2;
    sc_breaker_init(&b2, &p, 0);
    assert_int_equal(rec_n(&b2, 0, 3, false, false), SC_BREAKER_CLOSED);
    assert_int_equal(rec_n(&b2, 0, 7, false, true), SC_BREAKER_CLOSED); /* 70% */
    sc_breaker_view v;
    sc_breaker_snapshot(&b2, 0, &v);
    assert_int_equal(v.slow, 7);
    assert_true(v.slow_rate == 70.0);

    /* slow_call_ms 0: slow flags are ignored */
    p.slow_call_ms = 0;
    sc_breaker b3;
    sc_breaker_init(&b3, &p, 0);
    assert_false(sc_breaker_is_slow(&b3, 100000));
    assert_int_equal(rec_n(&b3, 0, 100, false, true), SC_BREAKER_CLOSED);
    sc_breaker_snapshot(&b3, 0, &v);
    assert_int_equal(v.slow, 0);
}

static void test_consecutive_trigger(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.consecutive_failures = 5;
    p.min_calls = 1000; /* the rate cannot trigger */
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    assert_int_equal(rec_n(&b, 0, 4, true, false), SC_BREAKER_CLOSED);
    assert_int_equal(rec_n(&b, 0, 1, false, false), SC_BREAKER_CLOSED);
    assert_int_equal(rec_n(&b, 0, 4, true, false), SC_BREAKER_CLOSED);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 0, &v);
    assert_int_equal(v.consecutive_failures, 4);
    sc_breaker_transition tr;
    assert_int_equal(sc_breaker_record_ex(&b, 0, true, false, 0, &tr), SC_BREAKER_OPEN);
    assert_string_equal(tr.reason, "5 consecutive failures >= 5");

    /* 0 = off */
    p.consecutive_failures = 0;
    sc_breaker b2;
    sc_breaker_init(&b2, &p, 0);
    assert_int_equal(rec_n(&b2, 0, 999, true, false), SC_BREAKER_CLOSED);
}

static void test_open_to_half_open_exactly_at_open_for(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.consecutive_failures = 1;
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    assert_int_equal(sc_breaker_record(&b, 100, true, false, false), SC_BREAKER_OPEN);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 100, &v);
    assert_int_equal(v.ms_until_half_open, 15000);
    sc_breaker_snapshot(&b, 15099, &v);
    assert_int_equal(v.ms_until_half_open, 1);
    bool probe = true;
    assert_false(sc_breaker_allow(&b, 15099, &probe));
    assert_false(probe);
    assert_int_equal(sc_breaker_state_now(&b), SC_BREAKER_OPEN);
    uint64_t id;
    sc_breaker_transition tr;
    assert_true(sc_breaker_allow_ex(&b, 15100, &id, &tr));
    assert_int_not_equal(id, 0);
    assert_int_equal(tr.seq, 2);
    assert_int_equal(tr.from, SC_BREAKER_OPEN);
    assert_int_equal(tr.to, SC_BREAKER_HALF_OPEN);
    assert_string_equal(tr.reason, "open for 15000 ms (open_for 15000 ms)");
    assert_int_equal(sc_breaker_state_now(&b), SC_BREAKER_HALF_OPEN);
    /* a clock a little behind never half-opens early */
    sc_breaker b2;
    sc_breaker_init(&b2, &p, 0);
    sc_breaker_record(&b2, 100, true, false, false);
    assert_false(sc_breaker_allow(&b2, 50, NULL));
}

static void test_half_open_probe_limit(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    open_now(&b, 0);
    bool probe;
    for (int i = 0; i < 3; i++) {
        probe = false;
        assert_true(sc_breaker_allow(&b, 15000, &probe));
        assert_true(probe);
    }
    probe = true;
    assert_false(sc_breaker_allow(&b, 15000, &probe)); /* the 4th */
    assert_false(probe);
    /* a limit per half-open period, not per concurrency */
    assert_int_equal(sc_breaker_record(&b, 15001, false, false, true), SC_BREAKER_HALF_OPEN);
    assert_int_equal(sc_breaker_record(&b, 15002, false, false, true), SC_BREAKER_HALF_OPEN);
    assert_false(sc_breaker_allow(&b, 15003, NULL));
    /* a non-probe outcome (call admitted before opening) changes nothing */
    assert_int_equal(sc_breaker_record(&b, 15003, true, false, false), SC_BREAKER_HALF_OPEN);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 15003, &v);
    assert_int_equal(v.probes_issued, 3);
    assert_int_equal(v.probes_succeeded, 2);
    sc_breaker_transition tr;
    assert_int_equal(sc_breaker_record_ex(&b, 15004, false, false, SC_BREAKER_PROBE_CURRENT, &tr),
                     SC_BREAKER_CLOSED);
    assert_int_equal(tr.from, SC_BREAKER_HALF_OPEN);
    assert_int_equal(tr.to, SC_BREAKER_CLOSED);
    assert_string_equal(tr.reason, "3 probes succeeded");
    /* closing cleared the window and the consecutive count */
    sc_breaker_snapshot(&b, 15004, &v);
    assert_int_equal(v.calls, 0);
    assert_int_equal(v.consecutive_failures, 0);
    probe = true;
    assert_true(sc_breaker_allow(&b, 15005, &probe));
    assert_false(probe);
    /* a stale probe outcome after closing is an ordinary call */
    assert_int_equal(sc_breaker_record(&b, 15006, false, false, true), SC_BREAKER_CLOSED);
}

static void test_probe_failure_reopens(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    open_now(&b, 0);
    assert_true(sc_breaker_allow(&b, 15000, NULL));
    assert_true(sc_breaker_allow(&b, 15000, NULL));
    assert_int_equal(sc_breaker_record(&b, 15010, false, false, true), SC_BREAKER_HALF_OPEN);
    sc_breaker_transition tr;
    assert_int_equal(sc_breaker_record_ex(&b, 15020, true, false, SC_BREAKER_PROBE_CURRENT, &tr),
                     SC_BREAKER_OPEN);
    assert_string_equal(tr.reason, "probe failed");
    /* the open timer restarted at 15020 */
    assert_false(sc_breaker_allow(&b, 30019, NULL));
    bool probe = false;
    assert_true(sc_breaker_allow(&b, 30020, &probe));
    assert_true(probe);
    /* a slow probe fails too when slow calls are tracked */
    sc_breaker_policy ps = pol();
    ps.slow_call_ms = 500;
    sc_breaker b2;
    sc_breaker_init(&b2, &ps, 0);
    open_now(&b2, 0);
    assert_true(sc_breaker_allow(&b2, 15000, NULL));
    assert_int_equal(sc_breaker_record_ex(&b2, 15600, false, true, SC_BREAKER_PROBE_CURRENT, &tr),
                     SC_BREAKER_OPEN);
    assert_string_equal(tr.reason, "probe slow (>= 500 ms)");
}

static void test_probe_ids_and_abandon(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.half_open_calls = 2;
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    open_now(&b, 0);
    uint64_t id1, id2, id3;
    assert_true(sc_breaker_allow_ex(&b, 15000, &id1, NULL));
    assert_true(sc_breaker_allow_ex(&b, 15000, &id2, NULL));
    assert_int_equal(id1, id2);
    assert_false(sc_breaker_allow_ex(&b, 15000, &id3, NULL));
    assert_int_equal(id3, 0);
    /* abandoning gives the slot back, once */
    sc_breaker_abandon(&b, id1);
    assert_true(sc_breaker_allow_ex(&b, 15001, &id3, NULL));
    assert_false(sc_breaker_allow(&b, 15001, NULL));
    sc_breaker_abandon(&b, 0); /* no-op */
    assert_false(sc_breaker_allow(&b, 15001, NULL));

    /* the period ends: a probe from it never counts in the next one */
    assert_int_equal(sc_breaker_record_ex(&b, 15002, true, false, id2, NULL), SC_BREAKER_OPEN);
    uint64_t nid;
    assert_true(sc_breaker_allow_ex(&b, 30002, &nid, NULL));
    assert_int_not_equal(nid, id3);
    assert_int_equal(sc_breaker_record_ex(&b, 30003, false, false, id3, NULL),
                     SC_BREAKER_HALF_OPEN);
    assert_int_equal(sc_breaker_record_ex(&b, 30003, true, false, id3, NULL),
                     SC_BREAKER_HALF_OPEN);
    sc_breaker_abandon(&b, id3);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 30003, &v);
    assert_int_equal(v.probes_issued, 1);
    assert_int_equal(v.probes_succeeded, 0);
    /* an outcome for more probes than were issued is ignored */
    assert_int_equal(sc_breaker_record_ex(&b, 30004, false, false, nid, NULL),
                     SC_BREAKER_HALF_OPEN);
    assert_int_equal(sc_breaker_record_ex(&b, 30004, false, false, nid, NULL),
                     SC_BREAKER_HALF_OPEN);
    sc_breaker_snapshot(&b, 30004, &v);
    assert_int_equal(v.probes_succeeded, 1);
    assert_true(sc_breaker_allow(&b, 30005, NULL));
    assert_int_equal(sc_breaker_record_ex(&b, 30006, false, false, nid, NULL), SC_BREAKER_CLOSED);
}

static void test_force(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.consecutive_failures = 1;
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    sc_breaker_transition tr;
    assert_int_equal(sc_breaker_force_ex(&b, 3, 0, &tr), -EINVAL);
    assert_int_equal(sc_breaker_force_ex(&b, -1, 0, &tr), -EINVAL);
    assert_int_equal(tr.seq, 0);
    /* releasing a breaker that is not forced is not a transition */
    assert_int_equal(sc_breaker_force_ex(&b, SC_BREAKER_RELEASE, 0, &tr), 0);
    assert_int_equal(tr.seq, 0);

    assert_int_equal(sc_breaker_force_ex(&b, SC_BREAKER_FORCE_OPEN, 10, &tr), 0);
    assert_int_equal(tr.seq, 1);
    assert_string_equal(tr.reason, "forced open by operator");
    assert_false(sc_breaker_allow(&b, 10, NULL));
    assert_false(sc_breaker_allow(&b, 1000000, NULL)); /* never half-opens by itself */
    assert_int_equal(sc_breaker_record(&b, 11, false, false, false), SC_BREAKER_OPEN);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 20, &v);
    assert_int_equal(v.forced, SC_BREAKER_FORCE_OPEN);
    assert_int_equal(v.ms_until_half_open, 0);
    /* forcing again is a no-op */
    sc_breaker_force_ex(&b, SC_BREAKER_FORCE_OPEN, 20, &tr);
    assert_int_equal(tr.seq, 0);
    /* release: half-open, probes decide */
    assert_int_equal(sc_breaker_force_ex(&b, SC_BREAKER_RELEASE, 30, &tr), 0);
    assert_int_equal(tr.from, SC_BREAKER_OPEN);
    assert_int_equal(tr.to, SC_BREAKER_HALF_OPEN);
    assert_string_equal(tr.reason, "released by operator");
    bool probe;
    assert_true(sc_breaker_allow(&b, 31, &probe));
    assert_true(probe);

    /* forced closed: admits everything, failures never open */
    sc_breaker_force(&b, SC_BREAKER_FORCE_CLOSED, 40);
    assert_int_equal(sc_breaker_state_now(&b), SC_BREAKER_CLOSED);
    for (int i = 0; i < 100; i++) {
        assert_true(sc_breaker_allow(&b, 41, &probe));
        assert_false(probe);
        assert_int_equal(sc_breaker_record(&b, 41, true, false, false), SC_BREAKER_CLOSED);
    }
    /* the old probe is no longer counted */
    assert_int_equal(sc_breaker_record(&b, 42, true, false, true), SC_BREAKER_CLOSED);
    sc_breaker_force(&b, SC_BREAKER_RELEASE, 50);
    sc_breaker_snapshot(&b, 50, &v);
    assert_int_equal(v.forced, 0);
    assert_int_equal(v.state, SC_BREAKER_CLOSED);
    assert_int_equal(v.last.to, SC_BREAKER_CLOSED);
    /* back to automatic: the next failure opens (consecutive_failures 1) */
    assert_int_equal(sc_breaker_record(&b, 51, true, false, false), SC_BREAKER_OPEN);
    /* force closed from open, then forced open from forced closed */
    sc_breaker_force(&b, SC_BREAKER_FORCE_CLOSED, 60);
    assert_true(sc_breaker_allow(&b, 60, NULL));
    sc_breaker_force(&b, SC_BREAKER_FORCE_OPEN, 61);
    assert_false(sc_breaker_allow(&b, 61, NULL));

    sc_breaker_snapshot(&b, 70, &v);
    /* 1 open, 2 release->half-open, 3 forced closed, 4 release, 5 open, 6 forced closed, 7 forced open */
    assert_int_equal(v.transitions, 7);
    assert_int_equal(v.last.seq, 7);
    assert_int_equal(v.last_transition_ms, 61);
    assert_int_equal(v.to_open, 3);
    assert_int_equal(v.to_half_open, 1);
    assert_int_equal(v.to_closed, 2); /* 4 (release, closed -> closed) is not a change of state */
}

static void test_snapshot_and_last_transition(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.min_calls = 4;
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 0, &v);
    assert_int_equal(v.state, SC_BREAKER_CLOSED);
    assert_int_equal(v.transitions, 0);
    assert_int_equal(v.last.seq, 0);
    assert_int_equal(v.last_transition_ms, 0);
    assert_true(v.failure_rate == 0.0);
    rec_n(&b, 500, 3, false, false);
    rec_n(&b, 600, 4, true, false);
    assert_int_equal(sc_breaker_state_now(&b), SC_BREAKER_OPEN);
    sc_breaker_snapshot(&b, 700, &v);
    assert_int_equal(v.state, SC_BREAKER_OPEN);
    /* the 6th call opened it; the 7th was still counted */
    assert_int_equal(v.calls, 7);
    assert_int_equal(v.failures, 4);
    assert_int_equal(v.consecutive_failures, 4);
    assert_int_equal(v.ms_until_half_open, 14900);
    assert_int_equal(v.transitions, 1);
    assert_int_equal(v.to_open, 1);
    assert_int_equal(v.last.seq, 1);
    assert_int_equal(v.last.from, SC_BREAKER_CLOSED);
    assert_int_equal(v.last.to, SC_BREAKER_OPEN);
    assert_int_equal(v.last_transition_ms, 600);
    assert_string_equal(v.last.reason, "failure rate 50% >= 50% over 6 calls");
    sc_breaker_snapshot(&b, 20000, &v);
    assert_int_equal(v.ms_until_half_open, 0);
}

static void test_disabled_policy(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.enabled = false;
    p.consecutive_failures = 1;
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    for (int i = 0; i < 100; i++) {
        assert_true(sc_breaker_allow(&b, 0, NULL));
        assert_int_equal(sc_breaker_record(&b, 0, true, false, false), SC_BREAKER_CLOSED);
    }
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 0, &v);
    assert_int_equal(v.calls, 100);
    assert_int_equal(v.transitions, 0);
}

static void test_counts_as_failure_defaults(void **st)
{
    (void)st;
    sc_policy pol_all;
    memset(&pol_all, 0, sizeof(pol_all));
    sc_config_policy_defaults(&pol_all);
    const sc_breaker_policy *p = &pol_all.breaker;
    /* HTTP: gateway errors only */
    assert_true(sc_breaker_counts_as_failure(p, 502, -1, 0));
    assert_true(sc_breaker_counts_as_failure(p, 503, -1, 0));
    assert_true(sc_breaker_counts_as_failure(p, 504, -1, 0));
    assert_false(sc_breaker_counts_as_failure(p, 500, -1, 0));
    assert_false(sc_breaker_counts_as_failure(p, 501, -1, 0));
    assert_false(sc_breaker_counts_as_failure(p, 200, -1, 0));
    assert_false(sc_breaker_counts_as_failure(p, 0, -1, 0));
    for (int s = 400; s < 500; s++)
        assert_false(sc_breaker_counts_as_failure(p, s, -1, 0));
    /* gRPC: server-side codes only */
    assert_true(sc_breaker_counts_as_failure(p, 200, SC_GRPC_UNAVAILABLE, 0));
    assert_true(sc_breaker_counts_as_failure(p, 200, SC_GRPC_DEADLINE_EXCEEDED, 0));
    assert_true(sc_breaker_counts_as_failure(p, 200, SC_GRPC_INTERNAL, 0));
    assert_true(sc_breaker_counts_as_failure(p, 200, SC_GRPC_UNKNOWN, 0));
    assert_true(sc_breaker_counts_as_failure(p, 200, SC_GRPC_DATA_LOSS, 0));
    int client[] = {SC_GRPC_OK, SC_GRPC_CANCELLED, SC_GRPC_INVALID_ARGUMENT, SC_GRPC_NOT_FOUND,
                    SC_GRPC_ALREADY_EXISTS, SC_GRPC_PERMISSION_DENIED,
                    SC_GRPC_RESOURCE_EXHAUSTED, SC_GRPC_FAILED_PRECONDITION, SC_GRPC_ABORTED,
                    SC_GRPC_OUT_OF_RANGE, SC_GRPC_UNIMPLEMENTED, SC_GRPC_UNAUTHENTICATED, 17, 31,
                    -1, -5};
    for (size_t i = 0; i < SC_ARRAY_LEN(client); i++)
        assert_false(sc_breaker_counts_as_failure(p, 200, client[i], 0));
    /* local failures */
    assert_true(sc_breaker_counts_as_failure(p, 0, -1, SC_COND_CONNECT_FAILURE));
    assert_true(sc_breaker_counts_as_failure(p, 0, -1, SC_COND_RESET));
    assert_true(sc_breaker_counts_as_failure(p, 0, -1, SC_COND_TIMEOUT));
    assert_false(sc_breaker_counts_as_failure(p, 0, -1, SC_COND_REFUSED_STREAM));
    /* named explicitly */
    sc_breaker_policy q = *p;
    q.failure_on = SC_COND_5XX | SC_COND_4XX;
    q.failure_on_grpc = 1u << SC_GRPC_INVALID_ARGUMENT;
    assert_true(sc_breaker_counts_as_failure(&q, 500, -1, 0));
    assert_true(sc_breaker_counts_as_failure(&q, 599, -1, 0));
    assert_true(sc_breaker_counts_as_failure(&q, 404, -1, 0));
    assert_false(sc_breaker_counts_as_failure(&q, 600, -1, 0));
    assert_true(sc_breaker_counts_as_failure(&q, 200, SC_GRPC_INVALID_ARGUMENT, 0));
    assert_false(sc_breaker_counts_as_failure(&q, 200, SC_GRPC_UNAVAILABLE, 0));
    assert_false(sc_breaker_counts_as_failure(&q, 0, -1, SC_COND_CONNECT_FAILURE));
    q.failure_on_grpc = 1u; /* naming OK makes no sense and is ignored */
    assert_false(sc_breaker_counts_as_failure(&q, 200, SC_GRPC_OK, 0));
    sc_policy_clear(&pol_all);
}

/* ----------------------------------------------------------- concurrency */

#define THREADS 8

typedef struct {
    sc_breaker *b;
    pthread_barrier_t *bar;
    int opened_reports;
    int probes;
    int iters;
} worker_arg;

static void *trip_worker(void *a)
{
    worker_arg *w = a;
    pthread_barrier_wait(w->bar);
    for (int i = 0; i < w->iters; i++) {
        sc_breaker_transition tr;
        sc_breaker_record_ex(w->b, 1000, true, false, 0, &tr);
        if (tr.seq)
            w->opened_reports++;
    }
    return NULL;
}

static void test_transition_reported_once_under_threads(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.min_calls = 50;
    for (int round = 0; round < 20; round++) {
        sc_breaker b;
        sc_breaker_init(&b, &p, 0);
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, THREADS);
        pthread_t th[THREADS];
        worker_arg args[THREADS];
        for (int i = 0; i < THREADS; i++) {
            args[i] = (worker_arg){.b = &b, .bar = &bar, .iters = 200};
            pthread_create(&th[i], NULL, trip_worker, &args[i]);
        }
        int reports = 0;
        for (int i = 0; i < THREADS; i++) {
            pthread_join(th[i], NULL);
            reports += args[i].opened_reports;
        }
        pthread_barrier_destroy(&bar);
        assert_int_equal(reports, 1);
        sc_breaker_view v;
        sc_breaker_snapshot(&b, 1000, &v);
        assert_int_equal(v.state, SC_BREAKER_OPEN);
        assert_int_equal(v.transitions, 1);
        assert_int_equal(v.calls, THREADS * 200);
        assert_int_equal(v.failures, THREADS * 200);
        assert_int_equal(v.consecutive_failures, THREADS * 200);
    }
}

static void *probe_worker(void *a)
{
    worker_arg *w = a;
    pthread_barrier_wait(w->bar);
    for (int i = 0; i < w->iters; i++) {
        bool probe = false;
        if (sc_breaker_allow(w->b, 20000, &probe)) {
            w->probes++;
            if (!probe)
                w->probes += 1000000; /* must not happen */
        }
    }
    return NULL;
}

static void test_half_open_limit_under_threads(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    p.half_open_calls = 5;
    for (int round = 0; round < 50; round++) {
        sc_breaker b;
        sc_breaker_init(&b, &p, 0);
        open_now(&b, 0);
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, THREADS);
        pthread_t th[THREADS];
        worker_arg args[THREADS];
        for (int i = 0; i < THREADS; i++) {
            args[i] = (worker_arg){.b = &b, .bar = &bar, .iters = 100};
            pthread_create(&th[i], NULL, probe_worker, &args[i]);
        }
        int probes = 0;
        for (int i = 0; i < THREADS; i++) {
            pthread_join(th[i], NULL);
            probes += args[i].probes;
        }
        pthread_barrier_destroy(&bar);
        assert_int_equal(probes, 5);
        sc_breaker_view v;
        sc_breaker_snapshot(&b, 20000, &v);
        assert_int_equal(v.state, SC_BREAKER_HALF_OPEN);
        assert_int_equal(v.probes_issued, 5);
        assert_int_equal(v.to_half_open, 2); /* release from forced open, then open_for elapsed */
    }
}

typedef struct {
    sc_breaker *b;
    pthread_barrier_t *bar;
    int idx;
    uint64_t *seqs;          /* seqs[seq] = 1 when reported */
    int reports;
    int bad;
} force_arg;

static void *force_worker(void *a)
{
    force_arg *w = a;
    pthread_barrier_wait(w->bar);
    for (int i = 0; i < 3000; i++) {
        int mode = (i + w->idx) % 3;
        sc_breaker_transition tr;
        sc_breaker_force_ex(w->b, mode, (uint64_t)i, &tr);
        if (tr.seq) {
            w->reports++;
            if (tr.seq >= 100000 || __atomic_exchange_n(&w->seqs[tr.seq], 1, __ATOMIC_RELAXED))
                w->bad++;
        }
    }
    return NULL;
}

static void *snap_worker(void *a)
{
    force_arg *w = a;
    pthread_barrier_wait(w->bar);
    for (int i = 0; i < 3000; i++) {
        sc_breaker_view v;
        sc_breaker_snapshot(w->b, 0, &v);
        if (!v.last.seq)
            continue;
        const char *want = v.last.to == SC_BREAKER_OPEN        ? "forced open by operator"
                           : v.last.reason[0] == 'r'           ? "released by operator"
                                                               : "forced closed by operator";
        if (strcmp(v.last.reason, want) != 0 || v.last.seq > v.transitions)
            w->bad++;
    }
    return NULL;
}

static void test_force_and_snapshot_under_threads(void **st)
{
    (void)st;
    sc_breaker_policy p = pol();
    sc_breaker b;
    sc_breaker_init(&b, &p, 0);
    static uint64_t seqs[100000];
    memset(seqs, 0, sizeof(seqs));
    enum { W = 4, R = 2 };
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, W + R);
    pthread_t th[W + R];
    force_arg args[W + R];
    for (int i = 0; i < W + R; i++) {
        args[i] = (force_arg){.b = &b, .bar = &bar, .idx = i, .seqs = seqs};
        pthread_create(&th[i], NULL, i < W ? force_worker : snap_worker, &args[i]);
    }
    int reports = 0, bad = 0;
    for (int i = 0; i < W + R; i++) {
        pthread_join(th[i], NULL);
        reports += args[i].reports;
        bad += args[i].bad;
    }
    pthread_barrier_destroy(&bar);
    assert_int_equal(bad, 0);
    sc_breaker_view v;
    sc_breaker_snapshot(&b, 0, &v);
    /* every transition reported to exactly one caller, numbers 1..n each once */
    assert_int_equal(v.transitions, (uint64_t)reports);
    for (int i = 1; i <= reports; i++)
        assert_int_equal(seqs[i], 1);
    assert_true(v.last.seq <= v.transitions);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_state_names),
        cmocka_unit_test(test_opens_exactly_at_min_calls),
        cmocka_unit_test(test_failure_rate_boundary),
        cmocka_unit_test(test_success_never_opens),
        cmocka_unit_test(test_window_sliding),
        cmocka_unit_test(test_slow_call_trigger),
        cmocka_unit_test(test_consecutive_trigger),
        cmocka_unit_test(test_open_to_half_open_exactly_at_open_for),
        cmocka_unit_test(test_half_open_probe_limit),
        cmocka_unit_test(test_probe_failure_reopens),
        cmocka_unit_test(test_probe_ids_and_abandon),
        cmocka_unit_test(test_force),
        cmocka_unit_test(test_snapshot_and_last_transition),
        cmocka_unit_test(test_disabled_policy),
        cmocka_unit_test(test_counts_as_failure_defaults),
        cmocka_unit_test(test_transition_reported_once_under_threads),
        cmocka_unit_test(test_half_open_limit_under_threads),
        cmocka_unit_test(test_force_and_snapshot_under_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

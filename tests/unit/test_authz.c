/* Unit tests for authz/authz_cache.c: Consul's authorize answers per caller
 * identity: fresh answers, one lookup per identity, waiting requests, the
 * stale rules when Consul fails, never allowing by default, eviction and
 * interned reasons. The clock is an argument: no sleeping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "authz/authz_cache.h"

#define WEB "spiffe://example.org/ns/default/dc/dc1/svc/web"
#define BATCH "spiffe://example.org/ns/default/dc/dc1/svc/batch"
#define TTL 30000u

static void answer_ok(sc_authz_cache *c, const char *id, uint64_t now, bool allowed, const char *reason,
                      sc_authz_event *ev)
{
    sc_authz_answer a = {.ok = true, .authorized = allowed, .reason = reason};
    sc_authz_cache_answer(c, id, now, &a, ev);
}

static void answer_fail(sc_authz_cache *c, const char *id, uint64_t now, const char *error, sc_authz_event *ev)
{
    sc_authz_answer a = {.ok = false, .error = error};
    sc_authz_cache_answer(c, id, now, &a, ev);
}

/* Takes the next queued lookup and checks it is for `id`. */
static void expect_lookup(sc_authz_cache *c, const char *id, const char *serial)
{
    char got[512], sn[SC_AUTHZ_SERIAL_MAX];
    assert_true(sc_authz_cache_next(c, got, sizeof(got), sn, sizeof(sn)));
    assert_string_equal(got, id);
    if (serial)
        assert_string_equal(sn, serial);
}

static void expect_no_lookup(sc_authz_cache *c)
{
    char got[512], sn[SC_AUTHZ_SERIAL_MAX];
    assert_false(sc_authz_cache_next(c, got, sizeof(got), sn, sizeof(sn)));
}

static void test_first_request_waits_then_answer_is_fresh(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(TTL, 0);
    sc_authz_decision d;
    sc_authz_event ev;
    sc_authz_cache_check(c, WEB, "0a:1b", 1000, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    assert_true(d.queued);
    uint64_t seq = d.seq;
    /* a second request for the same identity joins the lookup: nothing new queued */
    sc_authz_cache_check(c, WEB, "0a:1b", 1001, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    assert_false(d.queued);
    assert_int_equal(d.seq, seq);
    expect_lookup(c, WEB, "0a:1b");
    expect_no_lookup(c);
    /* still in flight (taken, not answered): waiters keep waiting, no new lookup */
    sc_authz_cache_result(c, WEB, seq, 1002, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    sc_authz_cache_check(c, WEB, "0a:1b", 1003, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    assert_false(d.queued);

    answer_ok(c, WEB, 1100, true, "Matched L4 intention: web => api", &ev);
    assert_true(ev.known);
    assert_true(ev.first_answer);
    assert_false(ev.changed);
    sc_authz_cache_result(c, WEB, seq, 1101, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    assert_int_equal(d.until_ms, 1100 + TTL);
    assert_false(d.stale);
    assert_string_equal(d.reason, "Matched L4 intention: web => api");
    /* fresh until answered + ttl, then asked again */
    sc_authz_cache_check(c, WEB, "0a:1b", 1100 + TTL - 1, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    assert_false(d.queued);
    expect_no_lookup(c);
    sc_authz_cache_check(c, WEB, "0a:1b", 1100 + TTL, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    assert_true(d.queued);
    expect_lookup(c, WEB, NULL);

    sc_authz_cache_view v;
    sc_authz_cache_snapshot(c, &v);
    assert_int_equal(v.entries, 1);
    assert_int_equal(v.in_flight, 1);
    assert_int_equal(v.lookups_total, 2);
    assert_int_equal(v.answers_total, 1);
    sc_authz_cache_free(c);
}

static void test_deny_is_cached_and_a_change_is_reported(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(TTL, 0);
    sc_authz_decision d;
    sc_authz_event ev;
    sc_authz_cache_check(c, BATCH, "", 0, &d);
    uint64_t seq = d.seq;
    expect_lookup(c, BATCH, "");
    answer_ok(c, BATCH, 10, false, "Default behavior configured by ACLs", &ev);
    assert_false(ev.allowed);
    sc_authz_cache_result(c, BATCH, seq, 10, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_DENY);
    assert_string_equal(d.reason, "Default behavior configured by ACLs");
    sc_authz_cache_check(c, BATCH, "", 20, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_DENY);
    assert_false(d.queued);
    /* after the ttl: asked again; the new answer differs */
    sc_authz_cache_check(c, BATCH, "", 10 + TTL, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    seq = d.seq;
    expect_lookup(c, BATCH, NULL);
    answer_ok(c, BATCH, 20 + TTL, true, "Matched L4 intention: batch => api", &ev);
    assert_true(ev.changed);
    assert_false(ev.first_answer);
    sc_authz_cache_result(c, BATCH, seq, 20 + TTL, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    sc_authz_cache_free(c);
}

static void test_failure_without_an_answer_is_unavailable(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(TTL, 0);
    sc_authz_decision d;
    sc_authz_event ev;
    sc_authz_cache_check(c, WEB, "", 0, &d);
    uint64_t seq = d.seq;
    expect_lookup(c, WEB, NULL);
    answer_fail(c, WEB, 5, "HTTP 403: ACL not found", &ev);
    assert_true(ev.refused);
    assert_false(ev.became_stale);
    sc_authz_cache_result(c, WEB, seq, 5, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_UNAVAILABLE);   /* never allowed by default */
    assert_string_equal(d.error, "HTTP 403: ACL not found");
    /* the next request asks again (and waits) */
    sc_authz_cache_check(c, WEB, "", 6, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    assert_true(d.queued);
    expect_lookup(c, WEB, NULL);
    answer_fail(c, WEB, 7, NULL, &ev);
    sc_authz_cache_result(c, WEB, d.seq, 7, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_UNAVAILABLE);
    assert_string_equal(d.error, "Consul did not answer");
    sc_authz_cache_view v;
    sc_authz_cache_snapshot(c, &v);
    assert_int_equal(v.errors_total, 2);
    assert_int_equal(v.answered, 0);
    sc_authz_cache_free(c);
}

static void test_stale_answer_when_consul_fails(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(TTL, 0);
    sc_authz_decision d;
    sc_authz_event ev;
    sc_authz_cache_check(c, WEB, "", 0, &d);
    expect_lookup(c, WEB, NULL);
    answer_ok(c, WEB, 0, true, "ok", &ev);
    /* expired: the refresh is waited for ... */
    sc_authz_cache_check(c, WEB, "", TTL, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    uint64_t seq = d.seq;
    expect_lookup(c, WEB, NULL);
    /* ... and fails: the last answer is used, stale, and logged once */
    answer_fail(c, WEB, TTL + 10, "connection refused", &ev);
    assert_true(ev.became_stale);
    assert_true(ev.allowed);
    assert_int_equal(ev.answer_age_ms, TTL + 10);
    sc_authz_cache_result(c, WEB, seq, TTL + 10, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    assert_true(d.stale);
    assert_int_equal(d.until_ms, TTL + 10 + SC_AUTHZ_RETRY_MS);
    /* until the retry time: stale answer without asking */
    sc_authz_cache_check(c, WEB, "", TTL + 11, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    assert_true(d.stale);
    assert_false(d.queued);
    expect_no_lookup(c);
    /* then asked again in the background: requests do not wait for it */
    uint64_t t = TTL + 10 + SC_AUTHZ_RETRY_MS;
    sc_authz_cache_check(c, WEB, "", t, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    assert_true(d.stale);
    assert_true(d.queued);
    assert_int_equal(d.until_ms, t + SC_AUTHZ_RETRY_MS);
    sc_authz_cache_check(c, WEB, "", t + 1, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    assert_false(d.queued);
    expect_lookup(c, WEB, NULL);
    answer_fail(c, WEB, t + 2, "connection refused", &ev);
    assert_false(ev.became_stale);   /* already stale: not logged again */
    sc_authz_cache_view v;
    sc_authz_cache_snapshot(c, &v);
    assert_int_equal(v.stale, 1);
    /* Consul answers again: fresh, and the recovery is reported */
    sc_authz_cache_check(c, WEB, "", t + 2 + SC_AUTHZ_RETRY_MS, &d);
    assert_true(d.queued);
    expect_lookup(c, WEB, NULL);
    answer_ok(c, WEB, t + 3 + SC_AUTHZ_RETRY_MS, false, "Matched L4 intention: web => api", &ev);
    assert_true(ev.recovered);
    assert_true(ev.changed);
    sc_authz_cache_check(c, WEB, "", t + 4 + SC_AUTHZ_RETRY_MS, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_DENY);
    assert_false(d.stale);
    sc_authz_cache_free(c);
}

static void test_stale_deny_stays_a_deny(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(1000, 0);
    sc_authz_decision d;
    sc_authz_event ev;
    sc_authz_cache_check(c, BATCH, "", 0, &d);
    expect_lookup(c, BATCH, NULL);
    answer_ok(c, BATCH, 0, false, "no", &ev);
    sc_authz_cache_check(c, BATCH, "", 1000, &d);
    expect_lookup(c, BATCH, NULL);
    answer_fail(c, BATCH, 1001, "timeout", &ev);
    sc_authz_cache_result(c, BATCH, d.seq, 1001, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_DENY);
    assert_true(d.stale);
    /* the retry period is capped by a ttl shorter than SC_AUTHZ_RETRY_MS */
    sc_authz_cache_free(c);
    c = sc_authz_cache_new(200, 0);
    sc_authz_cache_check(c, BATCH, "", 0, &d);
    expect_lookup(c, BATCH, NULL);
    answer_ok(c, BATCH, 0, true, "", &ev);
    sc_authz_cache_check(c, BATCH, "", 200, &d);
    expect_lookup(c, BATCH, NULL);
    answer_fail(c, BATCH, 300, "timeout", &ev);
    sc_authz_cache_result(c, BATCH, d.seq, 300, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    assert_int_equal(d.until_ms, 500);
    assert_string_equal(d.reason, "");
    sc_authz_cache_free(c);
}

static void test_identities_are_separate(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(TTL, 0);
    sc_authz_decision dw, db;
    sc_authz_event ev;
    sc_authz_cache_check(c, WEB, "01", 0, &dw);
    sc_authz_cache_check(c, BATCH, "02", 0, &db);
    assert_true(dw.queued && db.queued);
    expect_lookup(c, WEB, "01");     /* in the order they were queued */
    expect_lookup(c, BATCH, "02");
    answer_ok(c, BATCH, 1, false, "deny", &ev);
    sc_authz_decision d;
    sc_authz_cache_result(c, WEB, dw.seq, 2, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);   /* web's lookup has not ended */
    sc_authz_cache_result(c, BATCH, db.seq, 2, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_DENY);
    answer_ok(c, WEB, 3, true, "allow", &ev);
    sc_authz_cache_result(c, WEB, dw.seq, 3, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    /* an answer for an identity nobody asked about is ignored */
    answer_ok(c, "spiffe://example.org/ns/default/dc/dc1/svc/nobody", 4, true, "x", &ev);
    assert_false(ev.known);
    /* no identity: nothing to ask, never allowed */
    sc_authz_cache_check(c, "", "", 5, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_UNAVAILABLE);
    sc_authz_cache_check(c, NULL, "", 5, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_UNAVAILABLE);
    sc_authz_cache_free(c);
}

static void test_eviction_keeps_lookups_in_flight(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(TTL, 3);
    sc_authz_decision d;
    sc_authz_event ev;
    char id[3][64];
    for (int i = 0; i < 3; i++) {
        snprintf(id[i], sizeof(id[i]), "spiffe://example.org/ns/default/dc/dc1/svc/s%d", i);
        sc_authz_cache_check(c, id[i], "", (uint64_t)i, &d);
        assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    }
    /* full, every entry has a lookup in flight: a fourth caller cannot be tracked */
    sc_authz_cache_check(c, WEB, "", 10, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_UNAVAILABLE);
    assert_non_null(strstr(d.error, "too many callers"));
    for (int i = 0; i < 3; i++) {
        expect_lookup(c, id[i], NULL);
        answer_ok(c, id[i], 20 + (uint64_t)i, true, "ok", &ev);
    }
    /* s1 is used again, so s0 is the least recently used and goes */
    sc_authz_cache_check(c, id[1], "", 30, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    sc_authz_cache_check(c, WEB, "", 31, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    sc_authz_cache_view v;
    sc_authz_cache_snapshot(c, &v);
    assert_int_equal(v.entries, 3);
    assert_int_equal(v.evictions_total, 1);
    sc_authz_cache_check(c, id[1], "", 32, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_ALLOW);
    sc_authz_cache_check(c, id[0], "", 33, &d);     /* forgotten: asked again */
    assert_int_equal(d.verdict, SC_AUTHZ_WAIT);
    /* a waiter whose entry was dropped is refused, not left waiting */
    sc_authz_cache_result(c, "spiffe://example.org/ns/default/dc/dc1/svc/gone", 1, 34, &d);
    assert_int_equal(d.verdict, SC_AUTHZ_UNAVAILABLE);
    sc_authz_cache_free(c);
}

static void test_reasons_are_interned(void **st)
{
    (void)st;
    sc_authz_cache *c = sc_authz_cache_new(TTL, 0);
    sc_authz_decision d1, d2;
    sc_authz_event ev;
    sc_authz_cache_check(c, WEB, "", 0, &d1);
    sc_authz_cache_check(c, BATCH, "", 0, &d2);
    expect_lookup(c, WEB, NULL);
    expect_lookup(c, BATCH, NULL);
    char r1[] = "Default behavior configured by ACLs", r2[] = "Default behavior configured by ACLs";
    answer_ok(c, WEB, 1, false, r1, &ev);
    answer_ok(c, BATCH, 1, false, r2, &ev);
    sc_authz_cache_check(c, WEB, "", 2, &d1);
    sc_authz_cache_check(c, BATCH, "", 2, &d2);
    assert_ptr_equal(d1.reason, d2.reason);       /* one copy, owned by the cache */
    assert_ptr_not_equal(d1.reason, r1);
    sc_authz_cache_view v;
    sc_authz_cache_snapshot(c, &v);
    assert_int_equal(v.reasons, 1);
    /* beyond SC_AUTHZ_MAX_REASONS distinct texts a fixed one is used */
    for (int i = 0; i < SC_AUTHZ_MAX_REASONS + 5; i++) {
        char id[80], why[32];
        snprintf(id, sizeof(id), "spiffe://example.org/ns/default/dc/dc1/svc/r%d", i);
        snprintf(why, sizeof(why), "reason %d", i);
        sc_authz_cache_check(c, id, "", 3, &d1);
        expect_lookup(c, id, NULL);
        answer_ok(c, id, 4, true, why, &ev);
        sc_authz_cache_check(c, id, "", 5, &d1);
        assert_non_null(d1.reason);
        if (i >= SC_AUTHZ_MAX_REASONS)
            assert_non_null(strstr(d1.reason, "not kept"));
    }
    sc_authz_cache_snapshot(c, &v);
    assert_int_equal(v.reasons, SC_AUTHZ_MAX_REASONS);
    assert_string_equal(sc_authz_verdict_name(SC_AUTHZ_UNAVAILABLE), "unavailable");
    sc_authz_cache_free(c);
    sc_authz_cache_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_first_request_waits_then_answer_is_fresh),
        cmocka_unit_test(test_deny_is_cached_and_a_change_is_reported),
        cmocka_unit_test(test_failure_without_an_answer_is_unavailable),
        cmocka_unit_test(test_stale_answer_when_consul_fails),
        cmocka_unit_test(test_stale_deny_stays_a_deny),
        cmocka_unit_test(test_identities_are_separate),
        cmocka_unit_test(test_eviction_keeps_lookups_in_flight),
        cmocka_unit_test(test_reasons_are_interned),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}

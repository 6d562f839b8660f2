"""Retries through the real binary, counted at the upstream (fault_server peers).

  retry-grpc     2 instances, max_attempts 4, on [unavailable], big budget
  retry-h1       2 instances, max_attempts 4, on [gateway-error], buffer_limit 1KiB
  retry-connect  a closed port + 1 instance, max_attempts 2, on [connect-failure]
  storm          1 instance that always fails; max_attempts 3, budget ratio 0.2,
                 min_per_second 1
  pertry-grpc    2 instances, per_try 300ms under request 3s, on [timeout, ...]
  pertry-short   same instances, per_try 300ms under request 1s
  pertry-h1      2 HTTP instances, per_try 300ms under request 3s, on [timeout]

What is asserted: the caller's outcome, the exact number of attempts the
upstream saw per logical request (the fault ledger numbers calls per
x-fault-key across instances), the attempt header on each attempt
(grpc-previous-rpc-attempts absent/0 then 1, 2...; x-sidecar-attempt 1, 2,
3...), that consecutive attempts go to different instances, pushback and
Retry-After timing, non-retriable outcomes (by name, response already
started, body above buffer_limit) passed through after one attempt, the
retry budget bound under a 100% failing upstream, per-try timeouts, and the
retry counters on /stats.
"""

import hashlib
import os
import threading
import time
import unittest

import grpc

import harness
from harness import SidecarTestCase, free_port
from grpc_client import Echo
from fault_server import FaultLedger
from fault_client import http_call, unary, unique_key, upstream_view

OK, CANCELLED, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 3, 4, 5
RESOURCE_EXHAUSTED, FAILED_PRECONDITION, INTERNAL, UNAVAILABLE = 8, 9, 13, 14

FAST_BACKOFF = {"base": "5ms", "max": "20ms"}
BIG_BUDGET = {"ratio": 1, "min_per_second": 10000}

# retry budget scenario
STORM_CALLS = 400
STORM_THREADS = 8
STORM_SECONDS = 2.0
STORM_RATIO = 0.2
STORM_MIN_PER_SECOND = 1
BUDGET_WINDOW_S = 10          # the budget's sliding window (sidecar/resilience/retry.h)


def _first_attempt_header_ok(v):
    """grpc-previous-rpc-attempts on a first attempt: absent or 0."""
    return v is None or v == "0"


def _first_http_attempt_ok(v):
    """x-sidecar-attempt (1-based) on a first attempt: absent or 1."""
    return v is None or v == "1"


class RetriesTest(SidecarTestCase):
    @classmethod
    def fault_grpc(cls, name):
        return cls.class_fault_peer("grpc", name, cls.ledger)

    @classmethod
    def fault_http(cls, name):
        return cls.class_fault_peer("http", name, cls.ledger)

    @classmethod
    def setUpClass(cls):
        cls.ledger = FaultLedger()
        cls.g1, cls.g2 = cls.fault_grpc("g1"), cls.fault_grpc("g2")
        cls.h1, cls.h2 = cls.fault_http("h1"), cls.fault_http("h2")
        cls.gc = cls.fault_grpc("gc")
        cls.gs = cls.fault_grpc("storm")
        cls.gp1, cls.gp2 = cls.fault_grpc("gp1"), cls.fault_grpc("gp2")
        cls.hp1, cls.hp2 = cls.fault_http("hp1"), cls.fault_http("hp2")
        cls.closed_port = free_port()
        cls.ports = {n: free_port() for n in ("retry-grpc", "retry-h1", "retry-connect", "storm",
                                              "pertry-grpc", "pertry-short", "pertry-h1")}
        P = cls.ports
        ups = [
            harness.upstream("retry-grpc", "grpc", P["retry-grpc"], [cls.g1.port, cls.g2.port],
                             retries={"max_attempts": 4, "on": ["unavailable"],
                                      "backoff": FAST_BACKOFF, "budget": BIG_BUDGET},
                             load_balancer="round_robin"),
            harness.upstream("retry-h1", "http1", P["retry-h1"], [cls.h1.port, cls.h2.port],
                             retries={"max_attempts": 4, "on": ["gateway-error"],
                                      "backoff": FAST_BACKOFF, "budget": BIG_BUDGET,
                                      "buffer_limit": "1KiB"},
                             load_balancer="round_robin"),
            harness.upstream("retry-connect", "grpc", P["retry-connect"], [cls.closed_port, cls.gc.port],
                             retries={"max_attempts": 2, "on": ["connect-failure"],
                                      "backoff": FAST_BACKOFF, "budget": BIG_BUDGET},
                             load_balancer="round_robin"),
            harness.upstream("storm", "grpc", P["storm"], [cls.gs.port],
                             retries={"max_attempts": 3, "on": ["unavailable"],
                                      "backoff": {"base": "1ms", "max": "5ms"},
                                      "budget": {"ratio": STORM_RATIO,
                                                 "min_per_second": STORM_MIN_PER_SECOND}}),
            harness.upstream("pertry-grpc", "grpc", P["pertry-grpc"], [cls.gp1.port, cls.gp2.port],
                             timeouts={"per_try": "300ms", "request": "3s"},
                             retries={"max_attempts": 3, "on": ["unavailable", "deadline-exceeded", "timeout"],
                                      "backoff": FAST_BACKOFF, "budget": BIG_BUDGET},
                             load_balancer="round_robin"),
            harness.upstream("pertry-short", "grpc", P["pertry-short"], [cls.gp1.port, cls.gp2.port],
                             timeouts={"per_try": "300ms", "request": "1s"},
                             retries={"max_attempts": 5, "on": ["unavailable", "deadline-exceeded", "timeout"],
                                      "backoff": FAST_BACKOFF, "budget": BIG_BUDGET},
                             load_balancer="round_robin"),
            harness.upstream("pertry-h1", "http1", P["pertry-h1"], [cls.hp1.port, cls.hp2.port],
                             timeouts={"per_try": "300ms", "request": "3s"},
                             retries={"max_attempts": 3, "on": ["timeout", "gateway-error"],
                                      "backoff": FAST_BACKOFF, "budget": BIG_BUDGET},
                             load_balancer="round_robin"),
        ]
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=ups, drain="2s"))
        cls.echo = {n: Echo(cls.class_channel(P[n])) for n in ("retry-grpc", "retry-connect", "storm",
                                                               "pertry-grpc", "pertry-short")}

    # -- helpers ------------------------------------------------------------------
    def call(self, name, key=None, md=(), timeout=5.0, msg=b"x"):
        m = list(md)
        if key:
            m.append(("x-fault-key", key))
        return unary(self.echo[name], m, timeout, msg)

    def get(self, name, key=None, headers=(), path="/x", method="GET", body=None):
        h = list(headers)
        if key:
            h.append(("x-fault-key", key))
        return http_call(self.ports[name], path, h, method, body)

    def attempts(self, key, expect=None, timeout=1.0):
        """Records of `key` after they settle (an attempt may still be
        arriving, or finishing, when the caller has its answer)."""
        if expect is not None:
            self.ledger.wait_for(lambda: self.ledger.count(key=key) >= expect, timeout)
        else:
            time.sleep(0.05)
        self.ledger.wait_for(lambda: all(r["t_end"] for r in self.ledger.calls(key=key)), timeout)
        return self.ledger.calls(key=key)

    def assertOneAttempt(self, key, what):
        time.sleep(0.15)           # a wrong retry would arrive within the backoff (<= 20 ms)
        recs = self.ledger.calls(key=key)
        self.assertEqual(len(recs), 1, "%s: the upstream saw %d attempts, expected exactly 1: %s"
                         % (what, len(recs), [(r["instance"], r["outcome"]) for r in recs]))

    def stat(self, name, upstream):
        return self.sc.stats().value(name, upstream=upstream)

    # -- 1. transient failures recovered ------------------------------------------
    def test_grpc_transient_unavailable_recovered(self):
        before = self.stat("sidecar_upstream_retries_total", "retry-grpc")
        keys = [unique_key("transient") for _ in range(10)]
        for key in keys:
            o = self.call("retry-grpc", key, [("x-fault-fail-first", "2")])
            self.assertEqual(o.code, OK, "fail-first 2 with max_attempts 4 should end OK: %r" % o)
            self.assertEqual(o.trailers.get("x-fault-attempt"), "3", o)
            recs = self.attempts(key, 3)
            self.assertEqual(len(recs), 3, "upstream attempts for one call: %s"
                             % [(r["instance"], r["outcome"]) for r in recs])
            self.assertEqual([r["outcome"] for r in recs], ["fail:14", "fail:14", "ok"])
            hdrs = [r["attempt_header"] for r in recs]
            self.assertTrue(_first_attempt_header_ok(hdrs[0]),
                            "first attempt carries grpc-previous-rpc-attempts=%r" % hdrs[0])
            self.assertEqual(hdrs[1:], ["1", "2"], "grpc-previous-rpc-attempts on the retries")
            for a, b in zip(recs, recs[1:]):
                self.assertNotEqual(a["instance"], b["instance"],
                                    "a retry went to the instance that just failed: %s"
                                    % [r["instance"] for r in recs])
        self.assertEqual(self.stat("sidecar_upstream_retries_total", "retry-grpc") - before, 20,
                         "sidecar_upstream_retries_total{upstream=retry-grpc} should count the 20 retries")

    def test_grpc_gives_up_after_max_attempts(self):
        key = unique_key("exhaust")
        o = self.call("retry-grpc", key, [("x-fault-fail-first", "10"), ("x-fault-message", "still down " + key)])
        self.assertEqual(o.code, UNAVAILABLE, o)
        self.assertEqual(o.details, "still down " + key, "the last attempt's status is passed through")
        time.sleep(0.2)
        self.assertEqual(len(self.attempts(key)), 4, "max_attempts 4 counts the first try")

    def test_http_transient_503_recovered(self):
        before = self.stat("sidecar_upstream_retries_total", "retry-h1")
        for _ in range(10):
            key = unique_key("h503")
            # the caller's own x-sidecar-attempt must not reach the upstream
            o = self.get("retry-h1", key, [("x-fault-fail-first", "2"), ("x-sidecar-attempt", "9")])
            self.assertEqual(o.code, 200, o)
            self.assertIn(b'"attempt": 3', o.body)
            recs = self.attempts(key, 3)
            self.assertEqual([r["outcome"] for r in recs], ["fail:503", "fail:503", "ok"],
                             [(r["instance"], r["outcome"]) for r in recs])
            hdrs = [r["attempt_header"] for r in recs]
            self.assertTrue(_first_http_attempt_ok(hdrs[0]),
                            "first attempt carries x-sidecar-attempt=%r" % hdrs[0])
            self.assertEqual(hdrs[1:], ["2", "3"], "x-sidecar-attempt on the retries")
            for a, b in zip(recs, recs[1:]):
                self.assertNotEqual(a["instance"], b["instance"], "a retry went to the same instance")
        self.assertEqual(self.stat("sidecar_upstream_retries_total", "retry-h1") - before, 20)

    def test_http_post_body_replayed_whole(self):
        body = os.urandom(512)
        key = unique_key("replay")
        o = self.get("retry-h1", key, [("x-fault-fail-first", "1"), ("Content-Type", "application/octet-stream")],
                     method="POST", body=body)
        self.assertEqual(o.code, 200, o)
        recs = self.attempts(key, 2)
        self.assertEqual(len(recs), 2)
        want = hashlib.sha256(body).hexdigest()
        for r in recs:
            self.assertEqual((r["method"], r["body_length"], r["body_sha256"]), ("POST", 512, want),
                             "attempt %s did not get the whole body" % r["attempt"])

    def test_http_body_above_buffer_limit_not_retried(self):
        body = os.urandom(4096)            # buffer_limit is 1KiB
        key = unique_key("bigbody")
        o = self.get("retry-h1", key, [("x-fault-fail-first", "1")], method="POST", body=body)
        self.assertEqual(o.code, 503, o)
        self.assertIsNotNone(o.header("x-peer"), "the caller should get the upstream's own 503")
        self.assertOneAttempt(key, "POST body above buffer_limit")
        self.assertEqual(self.ledger.calls(key=key)[0]["body_length"], 4096)

    def test_grpc_body_replayed_and_limit(self):
        small = os.urandom(10 * 1024)
        key = unique_key("gsmall")
        o = self.call("retry-grpc", key, [("x-fault-fail-first", "1")], msg=small)
        self.assertEqual(o.code, OK, o)
        self.assertEqual(o.response, small)
        recs = self.attempts(key, 2)
        self.assertEqual(len(recs), 2)
        for r in recs:
            self.assertEqual(r["body_sha256"], hashlib.sha256(small).hexdigest())
        big = os.urandom(100 * 1024)       # above the default buffer_limit (64 KiB)
        key = unique_key("gbig")
        o = self.call("retry-grpc", key, [("x-fault-fail-first", "1")], msg=big)
        self.assertEqual(o.code, UNAVAILABLE, "a 100 KiB request (buffer_limit 64 KiB) must not be retried: %r" % o)
        self.assertOneAttempt(key, "100 KiB gRPC request")

    # -- 2. non-retriable outcomes -------------------------------------------------
    def test_grpc_non_retriable_codes_one_attempt(self):
        for code in (INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, FAILED_PRECONDITION, INTERNAL):
            with self.subTest(code=code):
                key = unique_key("nr%d" % code)
                o = self.call("retry-grpc", key, [("x-fault-fail-first", "1"), ("x-fault-status", str(code)),
                                                  ("x-fault-message", "code %d" % code)])
                self.assertEqual(o.code, code, o)
                self.assertEqual(o.details, "code %d" % code)
                self.assertOneAttempt(key, "gRPC code %d (not in retries.on)" % code)

    def test_http_non_retriable_statuses_one_attempt(self):
        # 4xx never; 500 is not a gateway-error (only gateway-error is named)
        for status in (400, 404, 429, 500):
            with self.subTest(status=status):
                key = unique_key("nh%d" % status)
                o = self.get("retry-h1", key, [("x-fault-fail-first", "1"), ("x-fault-status", str(status)),
                                               ("x-fault-message", "status %d" % status)])
                self.assertEqual(o.code, status, o)
                self.assertEqual(o.body, b"status %d\n" % status)
                self.assertIsNotNone(o.header("x-peer"))
                self.assertOneAttempt(key, "HTTP %d" % status)

    def test_grpc_response_started_not_retried(self):
        key = unique_key("started")
        md = [("x-fault-key", key), ("x-fault-stream-first", "1"), ("x-fault-stream-gap-ms", "200")]
        got = []
        code = None
        t = time.monotonic()
        try:
            for m in self.echo["retry-grpc"].server_stream(b"m", metadata=md, timeout=5):
                got.append(m)
        except grpc.RpcError as e:
            code = e.code().value[0]
        self.assertEqual(got, [b"m"], "the message sent before the failure reaches the caller once")
        self.assertEqual(code, UNAVAILABLE)
        self.assertLess(time.monotonic() - t, 2.0)
        self.assertOneAttempt(key, "a stream that already sent a message")

    # -- pushback -----------------------------------------------------------------
    def test_grpc_pushback_negative_or_malformed_means_no_retry(self):
        for value in ("-1", "soon", ""):
            with self.subTest(pushback=value):
                key = unique_key("pb")
                o = self.call("retry-grpc", key, [("x-fault-fail-first", "1"), ("x-fault-pushback", value)])
                self.assertEqual(o.code, UNAVAILABLE, o)
                self.assertOneAttempt(key, "grpc-retry-pushback-ms: %r" % value)

    def test_grpc_pushback_delays_the_retry(self):
        key = unique_key("pb300")
        o = self.call("retry-grpc", key, [("x-fault-fail-first", "1"), ("x-fault-pushback", "300")])
        self.assertEqual(o.code, OK, o)
        recs = self.attempts(key, 2)
        self.assertEqual(len(recs), 2)
        gap = recs[1]["t_start"] - recs[0]["t_end"]
        self.assertBetween(gap, 0.28, 1.5, "retry after grpc-retry-pushback-ms: 300 came %.3fs later" % gap)

    def test_http_retry_after(self):
        key = unique_key("ra1")
        o = self.get("retry-h1", key, [("x-fault-fail-first", "1"), ("x-fault-pushback", "1")])
        self.assertEqual(o.code, 200, o)
        recs = self.attempts(key, 2)
        self.assertEqual(len(recs), 2)
        gap = recs[1]["t_start"] - recs[0]["t_end"]
        self.assertBetween(gap, 0.95, 2.5, "retry after Retry-After: 1 came %.3fs later" % gap)
        # a Retry-After beyond the request deadline (5s): no retry, the 503 at once
        key = unique_key("ra30")
        o = self.get("retry-h1", key, [("x-fault-fail-first", "1"), ("x-fault-pushback", "30")])
        self.assertEqual(o.code, 503, o)
        self.assertIsNotNone(o.header("x-peer"), "the upstream's own 503 is expected: %r" % o)
        self.assertLess(o.elapsed, 1.5, "waited for a retry that cannot fit in the deadline")
        self.assertOneAttempt(key, "Retry-After: 30 with a 5s request timeout")

    # -- connect failure ----------------------------------------------------------------
    def test_connect_failure_retried_on_the_other_instance(self):
        before = self.gc.count()
        for i in range(20):
            o = self.call("retry-connect", unique_key("cf"))
            self.assertEqual(o.code, OK, "call %d: %r" % (i, o))
        time.sleep(0.1)
        self.assertEqual(self.gc.count() - before, 20, "each call reached the live instance exactly once")

    # -- 3. retry budget ----------------------------------------------------------------
    def test_budget_bounds_a_retry_storm(self):
        """400 calls over ~2 s to an upstream that always fails (max_attempts
        3, ratio 0.2, min_per_second 1). Without a budget it would see 1200
        attempts. The budget allows max(min_per_second x window, ratio x
        requests in the window) retries: max(1 x 10, 0.2 x 400) = 80, so the
        upstream sees at most 400 + 80 attempts; the bound below adds the
        floor once more (10) as slack for the request count lagging
        concurrent calls: 490. It must also have seen retries (>= 400 + 40):
        the budget limits retries, it does not switch them off."""
        self.gs.set(mode="fail", status=UNAVAILABLE)
        stats0 = self.sc.stats()
        before = self.gs.count()
        t0 = time.monotonic()
        spacing = STORM_SECONDS / (STORM_CALLS / STORM_THREADS)
        codes = []
        lock = threading.Lock()

        def worker(t):
            for i in range(STORM_CALLS // STORM_THREADS):
                start = t0 + i * spacing + t * spacing / STORM_THREADS
                delay = start - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                o = unary(self.echo["storm"], timeout=5)
                with lock:
                    codes.append(o.code)

        threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(STORM_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        took = time.monotonic() - t0
        time.sleep(0.2)
        seen = self.gs.count() - before
        stats1 = self.sc.stats()
        self.assertEqual(len(codes), STORM_CALLS)
        self.assertEqual(codes.count(UNAVAILABLE), STORM_CALLS, "every call fails with UNAVAILABLE")
        self.assertLess(took, BUDGET_WINDOW_S, "the storm must fit in one budget window")
        floor = STORM_MIN_PER_SECOND * BUDGET_WINDOW_S
        bound = STORM_CALLS + int(STORM_RATIO * STORM_CALLS) + floor
        self.assertLessEqual(seen, bound, "a 100%% failing upstream saw %d attempts for %d calls "
                             "(bound (1 + %.1f) x calls + floor = %d; without a budget: %d)"
                             % (seen, STORM_CALLS, STORM_RATIO, bound, 3 * STORM_CALLS))
        self.assertGreaterEqual(seen, STORM_CALLS + int(STORM_RATIO * STORM_CALLS) // 2,
                                "no (or too few) retries at all: %d attempts for %d calls" % (seen, STORM_CALLS))
        retries = (stats1.value("sidecar_upstream_retries_total", upstream="storm")
                   - stats0.value("sidecar_upstream_retries_total", upstream="storm"))
        self.assertEqual(retries, seen - STORM_CALLS, "retries_total vs attempts the upstream saw")
        exhausted = (stats1.value("sidecar_upstream_retry_budget_exhausted_total", upstream="storm")
                     - stats0.value("sidecar_upstream_retry_budget_exhausted_total", upstream="storm"))
        self.assertGreater(exhausted, 0, "sidecar_upstream_retry_budget_exhausted_total did not move")
        rb = upstream_view(self.sc, "storm").get("retry_budget")
        self.assertIsInstance(rb, dict, "/clusters storm has no retry_budget object")
        print("\nstorm: %d calls -> %d attempts in %.2fs; /clusters retry_budget %s"
              % (STORM_CALLS, seen, took, rb))

    # -- 8. per-try timeout -----------------------------------------------------------------
    def test_per_try_timeout_then_retry_succeeds_grpc(self):
        key = unique_key("pt")
        o = self.call("pertry-grpc", key, [("x-fault-hang-first", "1")])
        self.assertEqual(o.code, OK, o)
        self.assertBetween(o.elapsed, 0.28, 1.2, "per_try 300ms, then a retry that answers at once")
        recs = self.attempts(key, 2)
        self.assertEqual(len(recs), 2, [(r["instance"], r["outcome"]) for r in recs])
        self.assertNotEqual(recs[0]["instance"], recs[1]["instance"], "the retry went to the hung instance")
        self.assertEqual(recs[0]["outcome"], "cancelled", "the hung attempt was not ended")
        self.assertBetween(recs[0]["t_end"] - recs[0]["t_start"], 0.25, 0.8,
                           "the hung attempt should end at per_try (300ms)")
        self.assertEqual(recs[1]["attempt_header"], "1")

    def test_per_try_timeout_then_retry_succeeds_http(self):
        key = unique_key("pth")
        o = self.get("pertry-h1", key, [("x-fault-hang-first", "1")])
        self.assertEqual(o.code, 200, o)
        self.assertBetween(o.elapsed, 0.28, 1.2)
        recs = self.attempts(key, 2)
        self.assertEqual(len(recs), 2, [(r["instance"], r["outcome"]) for r in recs])
        self.assertNotEqual(recs[0]["instance"], recs[1]["instance"])
        self.assertTrue(_first_http_attempt_ok(recs[0]["attempt_header"]), recs[0]["attempt_header"])
        self.assertEqual(recs[1]["attempt_header"], "2")
        self.assertEqual(recs[0]["outcome"], "cancelled", "the hung HTTP attempt was not abandoned")

    def test_request_timeout_bounds_every_try(self):
        key = unique_key("ptall")
        o = self.call("pertry-short", key, [("x-fault-hang-first", "99")])
        self.assertEqual(o.code, DEADLINE_EXCEEDED, o)
        self.assertBetween(o.elapsed, 0.9, 1.6, "request timeout 1s bounds all the tries")
        recs = self.attempts(key, 2, timeout=1.5)
        self.assertBetween(len(recs), 2, 4, "per_try 300ms under request 1s: 2..4 attempts, saw %d" % len(recs))
        for r in recs:
            self.assertIsNotNone(r["t_end"], "an attempt kept running after the request ended")

    # -- admin --------------------------------------------------------------------------
    def test_clusters_retry_budget_shape(self):
        rb = upstream_view(self.sc, "retry-grpc").get("retry_budget")
        self.assertIsInstance(rb, dict, "no retry_budget object in /clusters")
        self.assertTrue(rb, "empty retry_budget object")


if __name__ == "__main__":
    unittest.main()

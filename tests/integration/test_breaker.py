"""Circuit breaker through the real binary; every upstream has its own fault
instance, so "the upstream saw no call while open" is counted exactly.

  brk-min     min_calls 10, failure_rate 50%, open_for 30s: stays closed after
              9 failures, opens on the 10th, then fails fast (UNAVAILABLE,
              circuit reason naming the upstream) without reaching the
              upstream; counters, /clusters, /stats, log
  brk-probe   open_for 800ms, half_open_calls 2: half-open admits exactly 2
              probes of 5 concurrent calls, their success closes it
  brk-reopen  a failed half-open probe re-opens it (and restarts open_for)
  brk-client  client errors (INVALID_ARGUMENT, NOT_FOUND) never open it
  brk-slow    slow_call {duration 100ms, rate 50%}: slow successes open it
  brk-consec  consecutive_failures 3 (min_calls 1000): 3 failures in a row open it
  brk-force   POST /breaker?upstream=..&action=open|close|release
  brk-h       HTTP/1.1: 503 + x-sidecar-reason: circuit-open
  brk-fb-g/h  the configured fallback answers while open
"""

import threading
import time
import unittest

import harness
from harness import SidecarTestCase, free_port
from grpc_client import Echo
from fault_server import FaultLedger
from fault_client import admin_post, breaker_state, breaker_view, http_call, unary

OK, INVALID_ARGUMENT, NOT_FOUND, RESOURCE_EXHAUSTED, UNAVAILABLE = 0, 3, 5, 8, 14
FAST_FAIL_S = 0.2          # a call refused by an open breaker answers within this
UPSTREAM_MESSAGE = "fault injected"

GRPC = ("brk-min", "brk-probe", "brk-reopen", "brk-client", "brk-force", "brk-fb-g", "brk-slow",
        "brk-consec")
HTTP = ("brk-h", "brk-fb-h")


def breaker(min_calls, open_for, half_open_calls=2, **extra):
    b = {"failure_rate": "50%", "window": "10s", "min_calls": min_calls, "open_for": open_for,
         "half_open_calls": half_open_calls}
    b.update(extra)
    return b


def not_forced(v):
    return v in (None, False, "none", "", 0)


class BreakerTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.ledger = FaultLedger()
        cls.inst = {n: cls.class_fault_peer("grpc" if n in GRPC else "http", n, cls.ledger) for n in GRPC + HTTP}
        cls.ports = {n: free_port() for n in GRPC + HTTP}
        cfg = {
            "brk-min": breaker(10, "30s"),
            "brk-probe": breaker(5, "800ms", 2),
            "brk-reopen": breaker(5, "500ms", 1),
            "brk-client": breaker(5, "30s"),
            "brk-force": breaker(5, "30s", 2),
            "brk-fb-g": breaker(5, "30s", fallback={"grpc": {"status": "resource-exhausted",
                                                             "message": "brk-fb-g is resting",
                                                             "metadata": {"X-Fallback": "brk-fb-g",
                                                                          "retry-hint-bin": "AAEC"}}}),
            "brk-slow": breaker(5, "30s", slow_call={"duration": "100ms", "rate": "50%"}),
            "brk-consec": breaker(1000, "30s", consecutive_failures=3),
            "brk-h": breaker(5, "30s"),
            "brk-fb-h": breaker(5, "30s", fallback={"http": {
                "status": 200, "body": "fallback body\n",
                "headers": {"Content-Type": "application/json", "X-Fallback": "brk-fb-h",
                            "cache-control": "no-store, max-age=0"}}}),
        }
        ups = []
        for n in GRPC + HTTP:
            ups.append(harness.upstream(n, "grpc" if n in GRPC else "http1", cls.ports[n], [cls.inst[n].port],
                                        circuit_breaker=cfg[n]))
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=ups, drain="2s"))
        cls.echo = {n: Echo(cls.class_channel(cls.ports[n])) for n in GRPC}

    # -- helpers --------------------------------------------------------------------
    def call(self, name, md=(), timeout=5.0):
        return unary(self.echo[name], md, timeout)

    def get(self, name, headers=()):
        return http_call(self.ports[name], "/x", headers)

    def wait_state(self, name, state, timeout=2.0):
        got = harness.wait_until(lambda: breaker_state(self.sc, name) == state, timeout)
        self.assertTrue(got, "breaker of %s is %r, expected %r: %s"
                        % (name, breaker_state(self.sc, name), state, breaker_view(self.sc, name)))

    def metric(self, name, upstream):
        return self.sc.stats().value(name, upstream=upstream)

    def log_has(self, upstream, *words):
        """A sidecar log line naming `upstream`, the breaker, and every word."""
        for line in self.sc.log_text().splitlines():
            low = line.lower()
            if upstream in line and ("breaker" in low or "circuit" in low) and all(w in low for w in words):
                return True
        return False

    def assertFastFailGrpc(self, o, name):
        self.assertEqual(o.code, UNAVAILABLE, "open breaker: %r" % o)
        self.assertLess(o.elapsed, FAST_FAIL_S, "open breaker should fail fast: %r" % o)
        self.assertNotEqual(o.details, UPSTREAM_MESSAGE, "this error came from the upstream")
        self.assertIn(name, o.details or "", "grpc-message should name the upstream")
        self.assertRegex((o.details or "").lower(), r"circuit|breaker", "grpc-message should name the breaker")
        self.assertNotIn("x-fault-instance", o.trailers, "the upstream answered")

    def open_by_failures(self, name, n):
        self.inst[name].set(mode="fail")
        for i in range(n):
            o = self.call(name)
            self.assertEqual((o.code, o.details), (UNAVAILABLE, UPSTREAM_MESSAGE),
                             "call %d should reach the (failing) upstream: %r" % (i + 1, o))
        self.wait_state(name, "open", 1.0)

    # -- 4. opens after min_calls, then no upstream calls --------------------------------
    def test_opens_after_min_calls_then_fails_fast(self):
        name = "brk-min"
        inst = self.inst[name]
        inst.set(mode="fail")
        for i in range(9):
            o = self.call(name)
            self.assertEqual((o.code, o.details), (UNAVAILABLE, UPSTREAM_MESSAGE), "call %d: %r" % (i + 1, o))
        v = breaker_view(self.sc, name)
        self.assertEqual(v["state"], "closed", "opened before min_calls (10): %s" % v)
        self.assertEqual((v["calls"], v["failures"]), (9, 9), v)
        o = self.call(name)
        self.assertEqual((o.code, o.details), (UNAVAILABLE, UPSTREAM_MESSAGE), "10th call: %r" % o)
        self.wait_state(name, "open", 1.0)
        seen = inst.count()
        self.assertEqual(seen, 10)
        rej0 = self.metric("sidecar_upstream_breaker_rejections_total", name)
        for _ in range(20):
            self.assertFastFailGrpc(self.call(name), name)
        time.sleep(0.1)
        self.assertEqual(inst.count(), seen, "the upstream saw calls while the breaker was open")
        self.assertEqual(self.metric("sidecar_upstream_breaker_rejections_total", name) - rej0, 20)
        self.assertEqual(self.metric("sidecar_upstream_breaker_state", name), 1)
        v = breaker_view(self.sc, name)
        self.assertBetween(v["ms_until_half_open"], 28000, 30000, "open_for 30s: %s" % v)
        self.assertGreaterEqual(v["failure_rate"], 50)
        self.assertTrue(not_forced(v.get("forced")), v)
        lt = v.get("last_transition") or {}
        self.assertEqual((lt.get("from"), lt.get("to")), ("closed", "open"), v)
        self.assertIsInstance(v.get("transitions"), dict, v)
        self.assertTrue(self.log_has(name, "open"), "no log line for the transition to open:\n"
                        + self.sc.log_tail(20))

    # -- half-open probes and recovery ------------------------------------------------------
    def test_half_open_probes_then_recovery(self):
        name = "brk-probe"
        inst = self.inst[name]
        self.open_by_failures(name, 5)
        t_open = time.monotonic()
        inst.set(mode="ok")
        seen = inst.count()
        self.assertFastFailGrpc(self.call(name), name)
        v = breaker_view(self.sc, name)
        self.assertBetween(v["ms_until_half_open"], 1, 800, "open_for 800ms: %s" % v)
        time.sleep(max(0.0, t_open + 0.95 - time.monotonic()))
        # 5 concurrent calls that each take 300 ms at the upstream: exactly
        # half_open_calls (2) are probes, the other 3 are refused at once
        results = [None] * 5

        def one(i):
            results[i] = self.call(name, [("x-fault-delay-ms", "300")])

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(5)]
        for th in threads:
            th.start()
            time.sleep(0.01)
        time.sleep(0.15)
        mid = breaker_view(self.sc, name)
        mid_metric = self.metric("sidecar_upstream_breaker_state", name)
        for th in threads:
            th.join(5)
        ok = [r for r in results if r and r.code == OK]
        refused = [r for r in results if r and r.code != OK]
        self.assertEqual(len(ok), 2, "half_open_calls 2: %s" % results)
        for r in refused:
            self.assertFastFailGrpc(r, name)
        self.assertEqual(mid["state"], "half-open", "state while the probes were in flight: %s" % mid)
        self.assertEqual(mid_metric, 2, "sidecar_upstream_breaker_state while half-open")
        self.assertEqual(inst.count() - seen, 2, "only the probes reach the upstream")
        self.wait_state(name, "closed", 1.0)
        for i in range(10):
            self.assertEqual(self.call(name).code, OK, "after recovery, call %d" % i)
        self.assertEqual(inst.count() - seen, 12)
        self.assertEqual(self.metric("sidecar_upstream_breaker_state", name), 0)
        tr = breaker_view(self.sc, name)["transitions"]
        self.assertGreaterEqual(tr.get("to_half_open", 0), 1, tr)
        self.assertGreaterEqual(tr.get("to_closed", 0), 1, tr)
        self.assertTrue(self.log_has(name, "half"), "no log line for half-open:\n" + self.sc.log_tail(20))
        self.assertTrue(self.log_has(name, "closed"), "no log line for closing:\n" + self.sc.log_tail(20))

    def test_failed_probe_reopens(self):
        name = "brk-reopen"
        inst = self.inst[name]
        self.open_by_failures(name, 5)
        time.sleep(0.6)
        seen = inst.count()
        o = self.call(name)
        self.assertEqual((o.code, o.details), (UNAVAILABLE, UPSTREAM_MESSAGE), "the probe reaches the upstream: %r" % o)
        self.assertEqual(inst.count(), seen + 1)
        self.wait_state(name, "open", 1.0)
        v = breaker_view(self.sc, name)
        self.assertBetween(v["ms_until_half_open"], 1, 500, "open_for restarts: %s" % v)
        for _ in range(5):
            self.assertFastFailGrpc(self.call(name), name)
        time.sleep(0.05)
        self.assertEqual(inst.count(), seen + 1, "calls reached the upstream after the failed probe")

    # -- what counts -----------------------------------------------------------------------
    def test_client_errors_do_not_open(self):
        name = "brk-client"
        inst = self.inst[name]
        for i in range(20):
            code = INVALID_ARGUMENT if i % 2 else NOT_FOUND
            o = self.call(name, [("x-fault-fail", str(code))])
            self.assertEqual(o.code, code, o)
        self.assertEqual(inst.count(), 20)
        v = breaker_view(self.sc, name)
        self.assertEqual(v["state"], "closed", v)
        self.assertEqual(v["failures"], 0, "client errors counted as failures: %s" % v)

    def test_slow_calls_open(self):
        name = "brk-slow"
        inst = self.inst[name]
        for i in range(4):
            self.assertEqual(self.call(name, [("x-fault-delay-ms", "150")]).code, OK)
        self.assertEqual(breaker_state(self.sc, name), "closed", "opened before min_calls (5)")
        self.assertEqual(self.call(name, [("x-fault-delay-ms", "150")]).code, OK)
        self.wait_state(name, "open", 1.0)
        seen = inst.count()
        self.assertFastFailGrpc(self.call(name), name)
        self.assertEqual(inst.count(), seen)

    def test_consecutive_failures_open(self):
        name = "brk-consec"
        inst = self.inst[name]
        self.assertEqual(self.call(name).code, OK)
        inst.set(mode="fail")
        for _ in range(2):
            self.assertEqual(self.call(name).details, UPSTREAM_MESSAGE)
        self.assertEqual(breaker_state(self.sc, name), "closed", "opened after 2 failures in a row")
        self.assertEqual(self.call(name).details, UPSTREAM_MESSAGE)
        self.wait_state(name, "open", 1.0)
        self.assertFastFailGrpc(self.call(name), name)
        self.assertEqual(inst.count(), 4)

    # -- operator -------------------------------------------------------------------------
    def test_forced_open_close_release(self):
        name = "brk-force"
        inst = self.inst[name]
        status, body = admin_post(self.sc, "/breaker?upstream=%s&action=open" % name)
        self.assertEqual(status, 200, body)
        v = breaker_view(self.sc, name)
        self.assertEqual(v["state"], "open", v)
        self.assertFalse(not_forced(v.get("forced")), "forced open not shown: %s" % v)
        for _ in range(5):
            self.assertFastFailGrpc(self.call(name), name)
        time.sleep(0.05)
        self.assertEqual(inst.count(), 0, "a forced-open breaker let calls through")

        status, body = admin_post(self.sc, "/breaker?upstream=%s&action=close" % name)
        self.assertEqual(status, 200, body)
        self.assertEqual(breaker_state(self.sc, name), "closed")
        inst.set(mode="fail")
        for i in range(20):
            o = self.call(name)
            self.assertEqual((o.code, o.details), (UNAVAILABLE, UPSTREAM_MESSAGE), "forced closed, call %d: %r" % (i, o))
        self.assertEqual(inst.count(), 20, "a forced-closed breaker must let every call through")
        v = breaker_view(self.sc, name)
        self.assertEqual(v["state"], "closed", v)
        self.assertFalse(not_forced(v.get("forced")), "forced closed not shown: %s" % v)

        # release: closed again with its window (20 failures): the next failure opens it
        status, body = admin_post(self.sc, "/breaker?upstream=%s&action=release" % name)
        self.assertEqual(status, 200, body)
        v = breaker_view(self.sc, name)
        self.assertEqual(v["state"], "closed", v)
        self.assertTrue(not_forced(v.get("forced")), v)
        self.call(name)
        self.wait_state(name, "open", 1.0)

        # forced open, then released: half-open, it probes its way back
        inst.set(mode="ok")
        self.assertEqual(admin_post(self.sc, "/breaker?upstream=%s&action=open" % name)[0], 200)
        self.assertEqual(admin_post(self.sc, "/breaker?upstream=%s&action=release" % name)[0], 200)
        self.assertEqual(breaker_state(self.sc, name), "half-open")
        seen = inst.count()
        for _ in range(2):
            self.assertEqual(self.call(name).code, OK)
        self.wait_state(name, "closed", 1.0)
        self.assertEqual(inst.count(), seen + 2)
        self.assertTrue(any(name in line and "operator" in line.lower() or
                            name in line and "admin" in line.lower()
                            for line in self.sc.log_text().splitlines()),
                        "operator actions are not logged")

    def test_breaker_admin_errors(self):
        self.addCleanup(admin_post, self.sc, "/breaker?upstream=brk-client&action=release")
        self.assertEqual(admin_post(self.sc, "/breaker?upstream=no-such-upstream&action=open")[0], 404)
        self.assertEqual(admin_post(self.sc, "/breaker?upstream=brk-client&action=explode")[0], 400)
        self.assertEqual(admin_post(self.sc, "/breaker?action=open")[0], 400)
        status, _, _ = self.sc.admin("/breaker?upstream=brk-client&action=open")      # GET
        self.assertGreaterEqual(status, 400)
        self.assertLess(status, 500)
        v = breaker_view(self.sc, "brk-client")
        self.assertTrue(not_forced(v.get("forced")) and v["state"] == "closed",
                        "a refused admin request changed the breaker: %s" % v)

    # -- HTTP ------------------------------------------------------------------------------
    def test_http_breaker(self):
        name = "brk-h"
        inst = self.inst[name]
        inst.set(mode="fail", status=503)
        for i in range(5):
            o = self.get(name)
            self.assertEqual(o.code, 503, o)
            self.assertEqual(o.header("x-peer"), name, "call %d should reach the upstream: %r" % (i, o))
        self.wait_state(name, "open", 1.0)
        seen = inst.count()
        for _ in range(10):
            o = self.get(name)
            self.assertEqual(o.code, 503, o)
            self.assertIsNone(o.header("x-peer"), "the upstream answered while open: %r" % o)
            self.assertEqual(o.header("x-sidecar-reason"), "circuit-open", o)
            self.assertIn(name.encode(), o.body, "the body should name the upstream: %r" % o)
            self.assertLess(o.elapsed, FAST_FAIL_S)
        time.sleep(0.05)
        self.assertEqual(inst.count(), seen)

    # -- fallback -----------------------------------------------------------------------------
    def test_fallback_grpc(self):
        name = "brk-fb-g"
        self.assertEqual(admin_post(self.sc, "/breaker?upstream=%s&action=open" % name)[0], 200)
        self.addCleanup(admin_post, self.sc, "/breaker?upstream=%s&action=release" % name)
        o = self.call(name)
        self.assertEqual((o.code, o.details), (RESOURCE_EXHAUSTED, "brk-fb-g is resting"), o)
        self.assertLess(o.elapsed, FAST_FAIL_S)
        self.assertEqual(self.inst[name].count(), 0)
        # fallback.grpc.metadata: sent as response metadata (names lower-cased)
        self.assertEqual(o.trailers.get("x-fallback"), "brk-fb-g", o)
        self.assertEqual(o.trailers.get("retry-hint-bin"), "000102", o)    # bytes, shown as hex

    def test_fallback_http(self):
        name = "brk-fb-h"
        self.assertEqual(admin_post(self.sc, "/breaker?upstream=%s&action=open" % name)[0], 200)
        self.addCleanup(admin_post, self.sc, "/breaker?upstream=%s&action=release" % name)
        o = self.get(name)
        self.assertEqual((o.code, o.body), (200, b"fallback body\n"), o)
        self.assertIsNone(o.header("x-peer"))
        self.assertEqual(self.inst[name].count(), 0)
        # fallback.http.headers: sent; a configured content-type replaces the default one
        self.assertEqual(o.header("content-type"), "application/json", o)
        self.assertEqual(o.header("x-fallback"), "brk-fb-h", o)
        self.assertEqual(o.header("cache-control"), "no-store, max-age=0", o)
        self.assertEqual(o.header("x-sidecar-reason"), "circuit-open", o)
        r1 = harness.http_get(self.ports[name], "/x")
        self.assertEqual(r1.header_all("content-type"), ["application/json"], r1.headers)
        # and the same to an HTTP/2 caller
        r = harness.curl("--http2-prior-knowledge", "-sS", "-D", "-", "-o", "/dev/null",
                         "http://127.0.0.1:%d/x" % self.ports[name], timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        h2 = r.stdout.decode().lower()
        self.assertRegex(h2, r"^http/2 200")
        self.assertEqual(h2.count("content-type:"), 1, h2)
        self.assertIn("content-type: application/json", h2)
        self.assertIn("x-fallback: brk-fb-h", h2)
        self.assertIn("cache-control: no-store, max-age=0", h2)

    # -- admin shape ----------------------------------------------------------------------------
    def test_clusters_breaker_shape(self):
        v = breaker_view(self.sc, "brk-client")
        for k in ("state", "forced", "calls", "failures", "failure_rate", "ms_until_half_open",
                  "transitions", "last_transition"):
            self.assertIn(k, v, "circuit_breaker.%s missing in /clusters" % k)
        self.assertIn(v["state"], ("closed", "open", "half-open"))
        names = self.sc.stats().names()
        for m in ("sidecar_upstream_breaker_state", "sidecar_upstream_breaker_rejections_total"):
            self.assertIn(m, names)


if __name__ == "__main__":
    unittest.main()

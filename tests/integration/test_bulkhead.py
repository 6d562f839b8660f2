"""Bulkheads through the real binary: isolation between upstreams, immediate
refusal beyond the limits, the pending queue and its timeout.

  bh-a   gRPC, max_concurrent 4, no queue: its instance hangs on request
  bh-b   gRPC, healthy, generous bulkhead: must keep latency and success
  bh-ah  HTTP/1.1, max_concurrent 3, no queue: its instance hangs
  bh-bh  HTTP/1.1, healthy
  bh-q   gRPC, max_concurrent 2, max_pending 2, queue_timeout 300ms
  bh-qh  HTTP/1.1, max_concurrent 1, max_pending 1, queue_timeout 300ms
  bh-conn HTTP/1.1, max_connections 2: never more than 2 connections open
  inbound inbound.max_concurrent 2 in front of a hanging local app

Calls are counted at the fault instances; hanging calls are cancelled and
the hangs released at the end of each test.
"""

import threading
import time
import unittest


import harness
from harness import RawConn, SidecarTestCase, free_port
from grpc_client import Echo
from fault_server import FaultLedger
from fault_client import http_call, percentile, unary, upstream_view

OK, RESOURCE_EXHAUSTED = 0, 8
FAST_REFUSAL_S = 0.2         # a refused call answers within this
B_P99_LIMIT_S = 0.1          # healthy upstream's p99 while its neighbour hangs
HANG = [("x-fault-hang", "1"), ("x-fault-hang-ms", "20000")]

GRPC = ("bh-a", "bh-b", "bh-q")
HTTP = ("bh-ah", "bh-bh", "bh-qh", "bh-conn")


class BulkheadTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.ledger = FaultLedger()
        cls.inst = {n: cls.class_fault_peer("grpc" if n in GRPC else "http", n, cls.ledger) for n in GRPC + HTTP}
        cls.ports = {n: free_port() for n in GRPC + HTTP}
        bh = {
            "bh-a": {"max_concurrent": 4, "max_pending": 0},
            "bh-b": {"max_concurrent": 1000},
            "bh-q": {"max_concurrent": 2, "max_pending": 2, "queue_timeout": "300ms"},
            "bh-ah": {"max_concurrent": 3, "max_pending": 0},
            "bh-bh": {"max_concurrent": 1000},
            "bh-qh": {"max_concurrent": 1, "max_pending": 1, "queue_timeout": "300ms"},
            "bh-conn": {"max_concurrent": 100, "max_connections": 2},
        }
        ups = [harness.upstream(n, "grpc" if n in GRPC else "http1", cls.ports[n], [cls.inst[n].port],
                                timeouts={"request": "30s"}, bulkhead=bh[n])
               for n in GRPC + HTTP]
        cls.app = cls.class_fault_peer("http", "app", cls.ledger)
        cls.inbound_port = free_port()
        cfg = harness.base_config(free_port(), upstreams=ups, drain="2s",
                                  inbound={"listen_port": cls.inbound_port, "app_port": cls.app.port,
                                           "app_protocol": "http1", "timeouts": {"request": "30s"}})
        cfg["inbound"]["max_concurrent"] = 2
        cls.sc = cls.class_sidecar(cfg)
        cls.echo = {n: Echo(cls.class_channel(cls.ports[n])) for n in GRPC}

    def setUp(self):
        for s in list(self.inst.values()) + [self.app]:
            s.reset(ledger_too=False)
        self.ledger.reset()

    # -- helpers ------------------------------------------------------------------------
    def hang_grpc(self, name, n, md=HANG):
        """n calls that hang at the instance; cancelled (and the hangs released) at cleanup."""
        futs = [self.echo[name].unary.future(b"h", metadata=list(md), timeout=25) for _ in range(n)]

        def done():
            for f in futs:
                f.cancel()
            self.inst[name].release()
            # leave nothing in flight for the next test
            self.inst[name].wait_for(lambda: self.inst[name].inflight == 0, 3.0)
        self.addCleanup(done)
        return futs

    def hang_http(self, name, n, port=None, inst=None):
        inst = inst or self.inst[name]
        conns = []
        for _ in range(n):
            c = RawConn(port or self.ports[name], timeout=25)
            c.send(b"GET /hang HTTP/1.1\r\nHost: x\r\nx-fault-hang: 1\r\nx-fault-hang-ms: 20000\r\n\r\n")
            conns.append(c)

        def done():
            for c in conns:
                c.close()
            inst.release()
            inst.wait_for(lambda: inst.inflight == 0, 3.0)
        self.addCleanup(done)
        return conns

    def wait_inflight(self, name, n, futs=()):
        got = self.inst[name].wait_inflight(n, 5.0)
        if got != n:
            done = []
            for f in futs:
                if f.done():
                    try:
                        f.result(0)
                        done.append("OK")
                    except Exception as e:     # grpc.RpcError / FutureCancelledError
                        done.append(repr(e)[:200])
            self.fail("%s: expected %d calls hanging at the instance, saw %d; finished calls: %s; "
                      "bulkhead %s" % (name, n, got, done, self.bulkhead(name)))

    def bulkhead(self, name):
        b = upstream_view(self.sc, name).get("bulkhead")
        self.assertIsInstance(b, dict, "no bulkhead object for %s in /clusters" % name)
        return b

    def metric(self, name, upstream):
        return self.sc.stats().value(name, upstream=upstream)

    def assertRefusedGrpc(self, o, name, what="bulkhead"):
        self.assertEqual(o.code, RESOURCE_EXHAUSTED, "%s: %r" % (what, o))
        self.assertIn(name, o.details or "", "grpc-message should name the upstream: %r" % o)
        self.assertNotIn("x-fault-instance", o.trailers, "the upstream answered: %r" % o)

    # -- 5. isolation -----------------------------------------------------------------------
    def test_grpc_isolation(self):
        a, b = self.inst["bh-a"], self.inst["bh-b"]
        # baseline latency of B
        base = [unary(self.echo["bh-b"], timeout=5).elapsed for _ in range(50)]
        futs = self.hang_grpc("bh-a", 4)
        self.wait_inflight("bh-a", 4, futs)
        rej0 = self.metric("sidecar_upstream_bulkhead_rejections_total", "bh-a")
        results_b, results_a = [], []
        lock = threading.Lock()

        def load_b(t):
            fails = 0
            for _ in range(50):
                o = unary(self.echo["bh-b"], timeout=2)
                with lock:
                    results_b.append(o)
                fails += o.code != OK
                if fails >= 3:          # broken: stop early, the assertions say why
                    return

        def excess_a():
            for _ in range(20):
                o = unary(self.echo["bh-a"], HANG, timeout=1)
                with lock:
                    results_a.append(o)
                if o.code != RESOURCE_EXHAUSTED:
                    return

        threads = [threading.Thread(target=load_b, args=(t,), daemon=True) for t in range(4)]
        threads.append(threading.Thread(target=excess_a, daemon=True))
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        # A: every excess call refused at once, none reached the instance
        for o in results_a:
            self.assertRefusedGrpc(o, "bh-a")
            self.assertLess(o.elapsed, FAST_REFUSAL_S, "refusal was not immediate: %r" % o)
        self.assertEqual(len(results_a), 20)
        self.assertEqual(a.count(), 4, "the hung upstream saw more than max_concurrent calls")
        # B: 100% success, latency kept
        codes = [o.code for o in results_b]
        self.assertEqual(codes.count(OK), len(codes), "B failed while A hung: %s" % [o for o in results_b if o.code][:3])
        self.assertEqual(len(results_b), 200)
        p99 = percentile([o.elapsed for o in results_b], 99)
        print("\nbh-b p99 %.1f ms while bh-a hangs (alone: p99 %.1f ms)" % (p99 * 1e3, percentile(base, 99) * 1e3))
        self.assertLess(p99, B_P99_LIMIT_S, "B's p99 latency while A hangs")
        self.assertEqual(b.count(), 250)
        # counters
        bh = self.bulkhead("bh-a")
        self.assertEqual(bh.get("active"), 4, bh)
        self.assertGreaterEqual(bh.get("rejected", 0), 20, bh)
        self.assertEqual(self.metric("sidecar_upstream_bulkhead_rejections_total", "bh-a") - rej0, 20)
        self.assertEqual(self.metric("sidecar_upstream_bulkhead_rejections_total", "bh-b"), 0)

    def test_grpc_capacity_comes_back(self):
        futs = self.hang_grpc("bh-a", 4)
        self.wait_inflight("bh-a", 4, futs)
        self.assertRefusedGrpc(unary(self.echo["bh-a"], timeout=5), "bh-a")
        for f in futs:
            f.cancel()
        self.inst["bh-a"].release()
        self.assertTrue(harness.wait_until(lambda: self.bulkhead("bh-a").get("active") == 0, 3),
                        "bulkhead slots not given back: %s" % self.bulkhead("bh-a"))
        self.inst["bh-a"].unrelease()
        for i in range(10):
            self.assertEqual(unary(self.echo["bh-a"], timeout=5).code, OK, "call %d after the hangs ended" % i)

    def test_http_isolation(self):
        a, b = self.inst["bh-ah"], self.inst["bh-bh"]
        self.hang_http("bh-ah", 3)
        self.wait_inflight("bh-ah", 3)
        rej0 = self.metric("sidecar_upstream_bulkhead_rejections_total", "bh-ah")
        results_b, results_a = [], []
        lock = threading.Lock()

        def load_b(t):
            import http.client
            c = http.client.HTTPConnection("127.0.0.1", self.ports["bh-bh"], timeout=2)
            try:
                for _ in range(50):
                    o = http_call(self.ports["bh-bh"], "/b", conn=c)
                    with lock:
                        results_b.append(o)
                    if o.code != 200:   # broken: stop early, the assertions say why
                        return
            finally:
                c.close()

        def excess_a():
            for _ in range(10):
                o = http_call(self.ports["bh-ah"], "/a", [("x-fault-hang", "1"), ("x-fault-hang-ms", "20000")],
                              timeout=1)
                with lock:
                    results_a.append(o)
                if o.code != 503:
                    return

        threads = [threading.Thread(target=load_b, args=(t,), daemon=True) for t in range(4)]
        threads.append(threading.Thread(target=excess_a, daemon=True))
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        for o in results_a:
            self.assertEqual(o.code, 503, o)
            self.assertEqual(o.header("x-sidecar-reason"), "bulkhead-full", o)
            self.assertIsNone(o.header("x-peer"), o)
            self.assertLess(o.elapsed, FAST_REFUSAL_S, o)
        self.assertEqual(len(results_a), 10)
        self.assertEqual(a.count(), 3)
        self.assertEqual([o.code for o in results_b].count(200), len(results_b),
                         [o for o in results_b if o.code != 200][:3])
        self.assertEqual(len(results_b), 200)
        p99 = percentile([o.elapsed for o in results_b], 99)
        self.assertLess(p99, B_P99_LIMIT_S, "B's p99 latency while A hangs: %.3fs" % p99)
        self.assertEqual(b.count(), 200)
        self.assertEqual(self.metric("sidecar_upstream_bulkhead_rejections_total", "bh-ah") - rej0, 10)

    # -- queue ----------------------------------------------------------------------------------
    def test_grpc_queue_timeout_and_full_queue(self):
        name = "bh-q"
        futs = self.hang_grpc(name, 2)
        self.wait_inflight(name, 2, futs)
        qt0 = self.bulkhead(name).get("queue_timeouts", 0)
        queued = [None, None]

        def q(i):
            queued[i] = unary(self.echo[name], HANG, timeout=5)

        threads = [threading.Thread(target=q, args=(i,), daemon=True) for i in range(2)]
        for th in threads:
            th.start()
        self.assertTrue(harness.wait_until(lambda: self.bulkhead(name).get("pending") == 2, 1.0),
                        "2 calls should wait in the queue: %s" % self.bulkhead(name))
        # queue full: the next one is refused at once
        o = unary(self.echo[name], HANG, timeout=2)
        self.assertRefusedGrpc(o, name, "queue full")
        self.assertLess(o.elapsed, FAST_REFUSAL_S, o)
        for th in threads:
            th.join(5)
        for o in queued:
            self.assertRefusedGrpc(o, name, "queue timeout")
            self.assertBetween(o.elapsed, 0.25, 1.0, "queue_timeout is 300ms: %r" % o)
        self.assertEqual(self.inst[name].count(), 2, "queued calls reached the upstream")
        bh = self.bulkhead(name)
        self.assertEqual(bh.get("queue_timeouts", 0) - qt0, 2, bh)
        self.assertEqual(bh.get("pending"), 0, bh)

    def test_grpc_queued_call_promoted(self):
        name = "bh-q"
        # two calls hold the slots for 200 ms; a third waits in the queue and then runs
        futs = self.hang_grpc(name, 2, md=[("x-fault-delay-ms", "200")])
        self.wait_inflight(name, 2, futs)
        o = unary(self.echo[name], timeout=5)
        self.assertEqual(o.code, OK, "a queued call should run once a slot frees: %r" % o)
        self.assertBetween(o.elapsed, 0.1, 0.5, "slots free after 200ms: %r" % o)
        self.assertEqual(self.inst[name].count(), 3)

    def test_http_queue_timeout(self):
        name = "bh-qh"
        self.hang_http(name, 1)
        self.wait_inflight(name, 1)
        res = [None]

        def q():
            res[0] = http_call(self.ports[name], "/q", [("x-fault-hang", "1")], timeout=10)

        th = threading.Thread(target=q, daemon=True)
        th.start()
        self.assertTrue(harness.wait_until(lambda: self.bulkhead(name).get("pending") == 1, 1.0),
                        self.bulkhead(name))
        o = http_call(self.ports[name], "/full", timeout=10)
        self.assertEqual((o.code, o.header("x-sidecar-reason")), (503, "bulkhead-full"), o)
        self.assertLess(o.elapsed, FAST_REFUSAL_S)
        th.join(5)
        o = res[0]
        self.assertEqual((o.code, o.header("x-sidecar-reason")), (503, "bulkhead-queue-timeout"), o)
        self.assertBetween(o.elapsed, 0.25, 1.0, "queue_timeout is 300ms: %r" % o)
        self.assertEqual(self.inst[name].count(), 1)

    def test_http_connection_cap(self):
        """6 concurrent slow requests with max_connections 2 (HTTP/1.1: one
        request per connection): the instance never has more than 2
        connections open; each request is served (200 from the instance) or
        refused by the sidecar (503 without x-peer), none hangs."""
        name = "bh-conn"
        inst = self.inst[name]
        results = [None] * 6

        def one(i):
            results[i] = http_call(self.ports[name], "/c", [("x-fault-delay-ms", "300")], timeout=5)

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(6)]
        for th in threads:
            th.start()
        time.sleep(0.15)
        conns_mid = self.bulkhead(name).get("connections")
        for th in threads:
            th.join(10)
        self.assertLessEqual(inst.max_open_connections, 2,
                             "the instance saw %d connections at once" % inst.max_open_connections)
        self.assertLessEqual(conns_mid, 2, "/clusters bulkhead.connections")
        served = [o for o in results if o and o.code == 200]
        print("\nmax_connections 2: %s" % sorted((o.code, round(o.elapsed, 2)) for o in results if o))
        self.assertGreaterEqual(len(served), 2, results)
        for o in results:
            self.assertIsNotNone(o)
            if o.code != 200:
                self.assertEqual(o.code, 503, o)
                self.assertIsNone(o.header("x-peer"), o)
                self.assertTrue(o.header("x-sidecar-reason"), o)

    def test_inbound_bulkhead(self):
        self.hang_http("inbound", 2, port=self.inbound_port, inst=self.app)
        got = self.app.wait_inflight(2, 5.0)
        self.assertEqual(got, 2, "2 inbound requests should hang at the app")
        for _ in range(5):
            o = http_call(self.inbound_port, "/in", [("x-fault-hang", "1")], timeout=2)
            self.assertEqual(o.code, 503, o)
            self.assertIsNone(o.header("x-peer"), o)
            self.assertTrue(o.header("x-sidecar-reason"), o)
            self.assertLess(o.elapsed, FAST_REFUSAL_S, o)
        self.assertEqual(self.app.count(), 2, "the app saw more than inbound.max_concurrent requests")

    def test_clusters_bulkhead_shape(self):
        bh = self.bulkhead("bh-b")
        for k in ("active", "pending", "rejected", "queue_timeouts"):
            self.assertIn(k, bh, "bulkhead.%s missing in /clusters" % k)


if __name__ == "__main__":
    unittest.main()

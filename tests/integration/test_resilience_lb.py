"""Load balancing through the real binary, counted at the instances.

  lb-rr-w       round_robin, static weights 1 and 3 (gRPC)
  lb-rr-w-h1    round_robin, static weights 1 and 3 (HTTP/1.1)
  lb-random-w   random, weights 1 and 3
  lb-least      least_request (power of two choices), one instance slow:
                the fast one must get most calls (round robin would split 50/50)
  lb-least-eq   least_request over two equal idle instances: both used
"""

import http.client
import threading
import time
import unittest

import harness
from harness import SidecarTestCase, free_port
from grpc_client import Echo
from fault_server import FaultGrpcServer, FaultHttpServer, FaultLedger
from fault_client import http_call, unary

OK = 0
SLOW_MS = 100
LEAST_THREADS = 8
LEAST_SECONDS = 1.5


def weighted(ports_weights):
    return {"static": [{"address": "127.0.0.1:%d" % p, "weight": w} for p, w in ports_weights]}


class LoadBalancingTest(SidecarTestCase):
    @classmethod
    def inst(cls, name, http=False):
        s = (FaultHttpServer if http else FaultGrpcServer)(name, ledger=cls.ledger)
        s.start()
        cls.addClassCleanup(s.stop)
        return s

    @classmethod
    def setUpClass(cls):
        cls.ledger = FaultLedger()
        cls.rr = [cls.inst("rr1"), cls.inst("rr3")]
        cls.rrh = [cls.inst("rrh1", True), cls.inst("rrh3", True)]
        cls.rnd = [cls.inst("rnd1"), cls.inst("rnd3")]
        cls.least = [cls.inst("slow"), cls.inst("fast")]
        cls.eq = [cls.inst("eq0"), cls.inst("eq1")]
        names = ("lb-rr-w", "lb-rr-w-h1", "lb-random-w", "lb-least", "lb-least-eq")
        cls.ports = {n: free_port() for n in names}
        P = cls.ports

        def up(name, proto, insts, lb, weights=None):
            u = harness.upstream(name, proto, P[name], [s.port for s in insts], load_balancer=lb)
            if weights:
                u["discovery"] = weighted(zip([s.port for s in insts], weights))
            return u

        ups = [
            up("lb-rr-w", "grpc", cls.rr, "round_robin", (1, 3)),
            up("lb-rr-w-h1", "http1", cls.rrh, "round_robin", (1, 3)),
            up("lb-random-w", "grpc", cls.rnd, "random", (1, 3)),
            up("lb-least", "grpc", cls.least, "least_request"),
            up("lb-least-eq", "grpc", cls.eq, "least_request"),
        ]
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=ups, drain="2s"))
        cls.echo = {n: Echo(cls.class_channel(P[n])) for n in ("lb-rr-w", "lb-random-w", "lb-least", "lb-least-eq")}

    def share(self, a, b):
        ca, cb = a.count(), b.count()
        return ca / float(ca + cb) if ca + cb else 0.0, ca, cb

    # -- 7. weights ---------------------------------------------------------------------------
    def test_round_robin_weights_grpc(self):
        for _ in range(400):
            self.assertEqual(unary(self.echo["lb-rr-w"], timeout=5).code, OK)
        s, c1, c3 = self.share(*self.rr)
        self.assertEqual(c1 + c3, 400)
        self.assertBetween(s, 0.22, 0.28, "weight 1 of 1:3 got %d, weight 3 got %d" % (c1, c3))

    def test_round_robin_weights_http(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.ports["lb-rr-w-h1"], timeout=10)
        self.addCleanup(conn.close)
        for _ in range(200):
            self.assertEqual(http_call(self.ports["lb-rr-w-h1"], "/x", conn=conn).code, 200)
        s, c1, c3 = self.share(*self.rrh)
        self.assertEqual(c1 + c3, 200)
        self.assertBetween(s, 0.2, 0.3, "weight 1 of 1:3 got %d, weight 3 got %d" % (c1, c3))

    def test_random_weights(self):
        for _ in range(400):
            self.assertEqual(unary(self.echo["lb-random-w"], timeout=5).code, OK)
        s, c1, c3 = self.share(*self.rnd)
        self.assertEqual(c1 + c3, 400)
        # binomial(400, 0.25): sd 8.7 calls; the bounds are more than 4 sd wide
        self.assertBetween(s, 0.15, 0.35, "weight 1 of 1:3 got %d, weight 3 got %d" % (c1, c3))
        self.assertGreater(c1, 0)

    # -- least_request ------------------------------------------------------------------------------
    def test_least_request_prefers_the_less_busy_instance(self):
        slow, fast = self.least
        slow.set(mode="delay", delay_ms=SLOW_MS)
        stop = time.monotonic() + LEAST_SECONDS
        errors = []

        def worker():
            while time.monotonic() < stop:
                o = unary(self.echo["lb-least"], timeout=5)
                if o.code != OK:
                    errors.append(o)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(LEAST_THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(LEAST_SECONDS + 10)
        self.assertEqual(errors, [])
        s, cs, cf = self.share(slow, fast)
        print("\nleast_request: slow %d, fast %d calls (slow max in flight %d)" % (cs, cf, slow.max_inflight))
        self.assertGreater(cs + cf, 100, "too few calls to judge")
        # round robin would give the slow instance 50% of the calls
        self.assertLess(s, 0.3, "the slow instance got %d of %d calls" % (cs, cs + cf))
        self.assertGreater(cs, 0, "the slow instance should still be tried sometimes")

    def test_least_request_spreads_over_idle_instances(self):
        for _ in range(200):
            self.assertEqual(unary(self.echo["lb-least-eq"], timeout=5).code, OK)
        s, c0, c1 = self.share(*self.eq)
        self.assertBetween(s, 0.3, 0.7, "two idle instances: %d vs %d" % (c0, c1))


if __name__ == "__main__":
    unittest.main()

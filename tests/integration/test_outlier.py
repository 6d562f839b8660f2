"""Outlier ejection through the real binary: one bad instance of three is
ejected, after which the success rate is back above 99% and the bad
instance sees no traffic; ejection return after eject_for; the
max_ejected cap. No retries on these upstreams, so every failure reaches
the caller and the success rate measures the ejection alone.

  ol-grpc     3 gRPC instances, one always UNAVAILABLE
  ol-refused  2 gRPC instances + a closed port (connection refused)
  ol-h1       3 HTTP/1.1 instances, one always 503
  ol-return   eject_for 400ms: the instance comes back
  ol-cap      2 bad of 3 with max_ejected 50%: only one ejected at a time

outlier: consecutive_failures 3, eject_for 30s (unless noted), max_ejected 50%.
"""

import http.client
import time
import unittest

import harness
from harness import SidecarTestCase, free_port
from grpc_client import Echo
from fault_server import FaultLedger
from fault_client import http_call, instance_view, unary, upstream_view

OK = 0
CONSECUTIVE = 3
WINDOW_CALLS = 300
MIN_SUCCESS = 0.99
MAX_CALLS_TO_EJECT = 60


def outlier(eject_for="30s", max_eject="5m", max_ejected="50%"):
    return {"consecutive_failures": CONSECUTIVE, "eject_for": eject_for, "max_eject": max_eject,
            "max_ejected": max_ejected}


class OutlierTest(SidecarTestCase):
    @classmethod
    def grpc_inst(cls, name):
        return cls.class_fault_peer("grpc", name, cls.ledger)

    @classmethod
    def http_inst(cls, name):
        return cls.class_fault_peer("http", name, cls.ledger)

    @classmethod
    def setUpClass(cls):
        cls.ledger = FaultLedger()
        cls.g = [cls.grpc_inst("og%d" % i) for i in range(3)]
        cls.r = [cls.grpc_inst("or%d" % i) for i in range(2)]
        cls.closed_port = free_port()
        cls.h = [cls.http_inst("oh%d" % i) for i in range(3)]
        cls.t = [cls.grpc_inst("ot%d" % i) for i in range(3)]
        cls.c = [cls.grpc_inst("oc%d" % i) for i in range(3)]
        cls.ports = {n: free_port() for n in ("ol-grpc", "ol-refused", "ol-h1", "ol-return", "ol-cap")}
        P = cls.ports
        rr = {"load_balancer": "round_robin"}
        ups = [
            harness.upstream("ol-grpc", "grpc", P["ol-grpc"], [s.port for s in cls.g], outlier=outlier(), **rr),
            harness.upstream("ol-refused", "grpc", P["ol-refused"], [s.port for s in cls.r] + [cls.closed_port],
                             outlier=outlier(), **rr),
            harness.upstream("ol-h1", "http1", P["ol-h1"], [s.port for s in cls.h], outlier=outlier(), **rr),
            harness.upstream("ol-return", "grpc", P["ol-return"], [s.port for s in cls.t],
                             outlier=outlier("400ms", "400ms"), **rr),
            harness.upstream("ol-cap", "grpc", P["ol-cap"], [s.port for s in cls.c], outlier=outlier(), **rr),
        ]
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=ups, drain="2s"))
        cls.echo = {n: Echo(cls.class_channel(P[n])) for n in ("ol-grpc", "ol-refused", "ol-return", "ol-cap")}

    # -- helpers --------------------------------------------------------------------------
    def grpc_ok(self, name):
        return unary(self.echo[name], timeout=5).code == OK

    def http_caller(self, name):
        conn = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=10)
        self.addCleanup(conn.close)
        state = {"conn": conn}

        def call():
            o = http_call(self.ports[name], "/x", conn=state["conn"])
            if o.code == -1:                      # connection dropped: a new one
                state["conn"].close()
                state["conn"] = http.client.HTTPConnection("127.0.0.1", self.ports[name], timeout=10)
                self.addCleanup(state["conn"].close)
            return o.code == 200
        return call

    def ejected(self, name, port):
        return bool(instance_view(self.sc, name, port).get("ejected"))

    def drive_until_ejected(self, name, port, call):
        """Calls until /clusters shows the instance ejected; returns (calls, failures)."""
        fails = 0
        for n in range(1, MAX_CALLS_TO_EJECT + 1):
            if not call():
                fails += 1
            if self.ejected(name, port):
                return n, fails
        self.fail("instance 127.0.0.1:%d of %s not ejected after %d calls (%d failed): %s"
                  % (port, name, MAX_CALLS_TO_EJECT, fails, upstream_view(self.sc, name)["instances"]))

    def measure(self, call, n=WINDOW_CALLS):
        ok = sum(1 for _ in range(n) if call())
        return ok / float(n)

    def assertEjectionShown(self, name, bad_port, good_ports):
        v = instance_view(self.sc, name, bad_port)
        self.assertIs(v.get("ejected"), True, v)
        self.assertEqual(v.get("ejections"), 1, v)
        for k in ("consecutive_failures", "active_requests"):
            self.assertIn(k, v, "instance field %s missing in /clusters" % k)
        for p in good_ports:
            self.assertIs(instance_view(self.sc, name, p).get("ejected"), False)
        st = self.sc.stats()
        self.assertEqual(st.value("sidecar_upstream_ejections_total", upstream=name), 1)
        self.assertEqual(st.value("sidecar_upstream_instances_ejected", upstream=name), 1)

    def assertEjectionLogged(self, name, bad_port):
        addr = "127.0.0.1:%d" % bad_port
        lines = [l for l in self.sc.log_text().splitlines() if name in l and "eject" in l.lower()]
        self.assertTrue(lines, "no log line for the ejection in %s" % name)
        self.assertTrue(any(addr in l for l in lines),
                        "the ejection log line does not name the instance %s:\n%s" % (addr, "\n".join(lines)))

    # -- 6. one bad instance of three -------------------------------------------------------------
    def test_grpc_unavailable_instance_ejected(self):
        name, bad = "ol-grpc", self.g[2]
        bad.set(mode="fail", status=14)
        n, fails = self.drive_until_ejected(name, bad.port, lambda: self.grpc_ok(name))
        self.assertBetween(bad.count(), CONSECUTIVE, CONSECUTIVE + 1,
                           "calls the bad instance got before its ejection")
        before = bad.count()
        rate = self.measure(lambda: self.grpc_ok(name))
        self.assertGreaterEqual(rate, MIN_SUCCESS, "success rate after the ejection: %.3f" % rate)
        self.assertEqual(bad.count(), before, "the ejected instance still got calls")
        self.assertEqual(self.g[0].count() + self.g[1].count(), n - before + WINDOW_CALLS)
        self.assertEjectionShown(name, bad.port, [self.g[0].port, self.g[1].port])
        self.assertEjectionLogged(name, bad.port)

    def test_refused_instance_ejected(self):
        name = "ol-refused"
        n, fails = self.drive_until_ejected(name, self.closed_port, lambda: self.grpc_ok(name))
        self.assertBetween(fails, CONSECUTIVE, CONSECUTIVE + 1)
        rate = self.measure(lambda: self.grpc_ok(name))
        self.assertGreaterEqual(rate, MIN_SUCCESS, "success rate after the ejection: %.3f" % rate)
        self.assertEqual(self.r[0].count() + self.r[1].count(), n - fails + WINDOW_CALLS)
        self.assertEjectionShown(name, self.closed_port, [s.port for s in self.r])
        self.assertEjectionLogged(name, self.closed_port)

    def test_http_503_instance_ejected(self):
        name, bad = "ol-h1", self.h[1]
        bad.set(mode="fail", status=503)
        call = self.http_caller(name)
        self.drive_until_ejected(name, bad.port, call)
        before = bad.count()
        self.assertBetween(before, CONSECUTIVE, CONSECUTIVE + 1)
        rate = self.measure(call)
        self.assertGreaterEqual(rate, MIN_SUCCESS, "success rate after the ejection: %.3f" % rate)
        self.assertEqual(bad.count(), before, "the ejected instance still got requests")
        self.assertEjectionShown(name, bad.port, [self.h[0].port, self.h[2].port])
        self.assertEjectionLogged(name, bad.port)

    # -- return after eject_for ---------------------------------------------------------------------
    def test_ejected_instance_returns(self):
        name, bad = "ol-return", self.t[2]
        bad.set(mode="fail")
        self.drive_until_ejected(name, bad.port, lambda: self.grpc_ok(name))
        t_ejected = time.monotonic()
        bad.set(mode="ok")
        before = bad.count()
        while time.monotonic() < t_ejected + 0.25:
            self.assertTrue(self.grpc_ok(name))
        self.assertEqual(bad.count(), before, "the instance got calls during its 400ms ejection")
        time.sleep(max(0.0, t_ejected + 0.5 - time.monotonic()))
        for _ in range(30):
            self.assertTrue(self.grpc_ok(name))
        self.assertGreaterEqual(bad.count() - before, 5, "the instance did not come back after eject_for")
        self.assertIs(instance_view(self.sc, name, bad.port).get("ejected"), False)
        self.assertEqual(self.sc.stats().value("sidecar_upstream_instances_ejected", upstream=name), 0)
        self.assertTrue(any(name in l and "return" in l.lower() for l in self.sc.log_text().splitlines()),
                        "the return to service is not logged")

    # -- cap ----------------------------------------------------------------------------------------
    def test_max_ejected_cap(self):
        name = "ol-cap"
        self.c[1].set(mode="fail")
        self.c[2].set(mode="fail")
        most = 0
        for _ in range(60):
            self.grpc_ok(name)
            n = sum(1 for i in upstream_view(self.sc, name)["instances"] if i.get("ejected"))
            most = max(most, n)
        self.assertEqual(most, 1, "max_ejected 50% of 3 instances allows one ejection at a time")
        self.assertEqual(self.sc.stats().value("sidecar_upstream_instances_ejected", upstream=name), 1)
        # the healthy instance is never the one ejected
        self.assertIs(instance_view(self.sc, name, self.c[0].port).get("ejected"), False)


if __name__ == "__main__":
    unittest.main()

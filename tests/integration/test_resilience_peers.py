"""The resilience fixtures alone (no sidecar): tests/peers/fault_server.py
must fail, hang, delay and count exactly as the resilience tests assume,
so that a failure in test_retries / test_breaker / test_bulkhead /
test_outlier / test_resilience_lb points at the sidecar, not the peer."""

import http.client
import json
import socket
import subprocess
import sys
import time
import unittest

import grpc

import harness
from grpc_client import Echo, channel
from fault_server import FaultGrpcServer, FaultHttpServer, FaultLedger
from fault_client import http_call, percentile, unary


class FaultGrpcPeerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ledger = FaultLedger()
        cls.a = FaultGrpcServer("a", ledger=cls.ledger)
        cls.b = FaultGrpcServer("b", ledger=cls.ledger)
        for s in (cls.a, cls.b):
            s.start()
            cls.addClassCleanup(s.stop)
        cls.cha = channel("127.0.0.1:%d" % cls.a.port)
        cls.chb = channel("127.0.0.1:%d" % cls.b.port)
        cls.addClassCleanup(cls.cha.close)
        cls.addClassCleanup(cls.chb.close)
        cls.ea, cls.eb = Echo(cls.cha), Echo(cls.chb)

    def setUp(self):
        self.a.reset()
        self.b.reset()
        # A handler leaves the in-flight gauge just after its answer is sent,
        # so the previous test's last call may still count here.
        self.assertTrue(self.a.wait_for(lambda: self.a.inflight == 0 and self.b.inflight == 0, 3))

    def test_fail_first_numbered_across_instances(self):
        md = [("x-fault-key", "k"), ("x-fault-fail-first", "2"), ("x-fault-message", "nope")]
        o1 = unary(self.ea, md)
        o2 = unary(self.eb, md)
        o3 = unary(self.ea, md)
        self.assertEqual([(o.code, o.details) for o in (o1, o2)], [(14, "nope"), (14, "nope")])
        self.assertEqual(o3.code, 0)
        self.assertEqual(o3.response, b"x")
        self.assertEqual(o3.trailers.get("x-fault-attempt"), "3")
        self.assertEqual(o3.trailers.get("x-fault-instance"), "a")
        recs = self.ledger.calls(key="k")
        self.assertEqual([(r["instance"], r["attempt"], r["outcome"]) for r in recs],
                         [("a", 1, "fail:14"), ("b", 2, "fail:14"), ("a", 3, "ok")])
        self.assertEqual((self.a.count(), self.b.count()), (2, 1))

    def test_status_pushback_and_plain_fail(self):
        o = unary(self.ea, [("x-fault-key", "p"), ("x-fault-fail-first", "1"), ("x-fault-status", "3"),
                            ("x-fault-pushback", "250")])
        self.assertEqual(o.code, 3)
        self.assertEqual(o.trailers.get("grpc-retry-pushback-ms"), "250")
        self.assertEqual(unary(self.ea, [("x-fault-fail", "9")]).code, 9)

    def test_hang_ends_when_the_caller_goes_away(self):
        o = unary(self.ea, [("x-fault-key", "h"), ("x-fault-hang-first", "1")], timeout=0.3)
        self.assertEqual(o.code, grpc.StatusCode.DEADLINE_EXCEEDED.value[0])
        self.assertTrue(self.ledger.wait_for(lambda: self.ledger.calls(key="h")[0]["t_end"], 2))
        r = self.ledger.calls(key="h")[0]
        self.assertEqual(r["outcome"], "cancelled")
        self.assertLess(r["t_end"] - r["t_start"], 1.0)
        self.assertEqual(unary(self.ea, [("x-fault-key", "h"), ("x-fault-hang-first", "1")]).code, 0)

    def test_release_ends_hangs(self):
        f = self.ea.unary.future(b"x", metadata=[("x-fault-hang", "1")], timeout=10)
        self.assertEqual(self.a.wait_inflight(1, 3), 1)
        t = time.monotonic()
        self.a.release()
        self.assertEqual(f.result(timeout=5), b"x")
        self.assertLess(time.monotonic() - t, 1.0)
        self.assertEqual(self.a.inflight, 0)
        self.assertEqual(self.a.max_inflight, 1)

    def test_modes_and_control_call(self):
        set_ = self.cha.unary_unary("/fault.Control/Set")
        doc = json.loads(set_(json.dumps({"mode": "fail", "status": 8}).encode(), timeout=5))
        self.assertEqual((doc["mode"], doc["status"]), ("fail", 8))
        self.assertEqual(unary(self.ea).code, 8)
        self.a.set(mode="ok", status=None, fail_next=2)   # status back to the default (14)
        self.assertEqual([unary(self.ea).code for _ in range(3)], [14, 14, 0])
        self.a.set(mode="delay", delay_ms=200)
        o = unary(self.ea)
        self.assertEqual(o.code, 0)
        self.assertGreaterEqual(o.elapsed, 0.19)
        self.a.set(mode="ok", fail_ratio=0.5)
        codes = [unary(self.ea).code for _ in range(100)]
        self.assertBetween(codes.count(14), 25, 75)
        stats = json.loads(self.cha.unary_unary("/fault.Control/Stats")(b"", timeout=5))
        self.assertEqual(stats["calls"], self.a.count())
        with self.assertRaises(grpc.RpcError) as cm:
            set_(json.dumps({"mode": "explode"}).encode(), timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)

    def test_stream_then_fail(self):
        got = []
        with self.assertRaises(grpc.RpcError) as cm:
            for m in self.ea.server_stream(b"s", metadata=[("x-fault-stream-first", "2"),
                                                           ("x-fault-stream-gap-ms", "50")], timeout=5):
                got.append(m)
        self.assertEqual(got, [b"s", b"s"])
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)

    def test_attempt_header_recorded(self):
        # grpcio clients may not send grpc-* metadata; nghttp sends it raw
        if not harness.have_tool("nghttp"):
            self.skipTest("nghttp not installed")
        import os
        import tempfile
        from grpc_client import frame
        d = tempfile.mkdtemp(prefix="sc-it-")
        path = os.path.join(d, "req.bin")
        with open(path, "wb") as f:
            f.write(frame(b"x"))
        r = harness.run(["nghttp", "-H", ":method: POST", "-H", "content-type: application/grpc",
                         "-H", "te: trailers", "-H", "grpc-previous-rpc-attempts: 2", "-H", "x-fault-key: raw",
                         "-d", path, "http://127.0.0.1:%d/test.Echo/Unary" % self.a.port], timeout=15)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.ledger.calls(key="raw")[0]["attempt_header"], "2")


class FaultHttpPeerTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.ledger = FaultLedger()
        cls.a = FaultHttpServer("ha", ledger=cls.ledger)
        cls.b = FaultHttpServer("hb", ledger=cls.ledger)
        for s in (cls.a, cls.b):
            s.start()
            cls.addClassCleanup(s.stop)

    def setUp(self):
        self.a.reset()
        self.b.reset()
        # A handler leaves the in-flight gauge just after its response is
        # written, so the previous test's last call may still count here.
        self.assertTrue(self.a.wait_for(lambda: self.a.inflight == 0 and self.b.inflight == 0, 3))

    def test_fail_first_retry_after_and_body(self):
        h = [("x-fault-key", "k"), ("x-fault-fail-first", "1"), ("x-fault-pushback", "2"),
             ("x-sidecar-attempt", "5")]
        o1 = http_call(self.a.port, "/p", h, "POST", b"abc")
        o2 = http_call(self.b.port, "/p", h, "POST", b"abc")
        self.assertEqual((o1.code, o1.header("retry-after"), o1.header("x-peer")), (503, "2", "ha"))
        self.assertEqual(o2.code, 200)
        doc = json.loads(o2.body)
        self.assertEqual((doc["instance"], doc["attempt"], doc["body_length"]), ("hb", 2, 3))
        recs = self.ledger.calls(key="k")
        self.assertEqual([(r["instance"], r["attempt_header"], r["outcome"]) for r in recs],
                         [("ha", "5", "fail:503"), ("hb", "5", "ok")])

    def test_hang_ends_when_the_client_closes(self):
        s = socket.create_connection(("127.0.0.1", self.a.port))
        s.sendall(b"GET /h HTTP/1.1\r\nHost: x\r\nx-fault-hang: 1\r\n\r\n")
        self.assertEqual(self.a.wait_inflight(1, 3), 1)
        s.close()
        self.assertTrue(self.a.wait_for(lambda: self.a.inflight == 0, 2))
        self.assertEqual(self.a.calls()[0]["outcome"], "cancelled")

    def test_reset_mode_and_control(self):
        c = http.client.HTTPConnection("127.0.0.1", self.a.port, timeout=5)
        c.request("POST", "/_fault/set", body=json.dumps({"mode": "reset"}))
        self.assertEqual(c.getresponse().read() and 200, 200)
        c.close()
        o = http_call(self.a.port, "/x")
        self.assertEqual(o.code, -1, o)
        self.assertEqual(self.a.count(), 1)
        self.a.set(mode="ok")
        self.assertEqual(http_call(self.a.port, "/x").code, 200)

    def test_keepalive_latency(self):
        """No Nagle stall between the head and the body of a response."""
        c = http.client.HTTPConnection("127.0.0.1", self.a.port, timeout=5)
        try:
            lat = [http_call(self.a.port, "/x", conn=c).elapsed for _ in range(50)]
        finally:
            c.close()
        self.assertLess(percentile(lat, 90), 0.02, "p90 %.3fs" % percentile(lat, 90))

    def assertBetween(self, v, lo, hi):
        self.assertTrue(lo <= v <= hi, "%s not in [%s, %s]" % (v, lo, hi))


FaultGrpcPeerTest.assertBetween = FaultHttpPeerTest.assertBetween


class StandaloneTest(unittest.TestCase):
    def test_standalone_prints_ports(self):
        p = harness.spawn([sys.executable, "-u", "../peers/fault_server.py", "--grpc-port", "0", "--http-port", "0"],
                          stdout=subprocess.PIPE)
        self.addCleanup(p.stdout.close)
        self.addCleanup(harness.kill_proc, p)
        lines = {}
        for _ in range(2):
            k, v = p.stdout.readline().decode().split()
            lines[k] = int(v)
        self.assertEqual(http_call(lines["http"], "/x").code, 200)
        ch = channel("127.0.0.1:%d" % lines["grpc"])
        self.addCleanup(ch.close)
        self.assertEqual(unary(Echo(ch)).code, 0)


if __name__ == "__main__":
    unittest.main()

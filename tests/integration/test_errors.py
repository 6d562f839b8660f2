"""Errors the sidecar produces itself, load balancing, the admin endpoint
and `--check`.

- upstream down (nothing listening): gRPC UNAVAILABLE / HTTP 502|503 with
  x-sidecar-reason, fast
- blackholed connect (SYNs dropped): error after about the connect timeout
- request timeout: HTTP 504 / gRPC DEADLINE_EXCEEDED naming the upstream
- round robin over two static instances, HTTP/1.1 and gRPC
- /ready, /stats, /clusters, /config and counters that move
- `sidecar --check` exit codes and file:line diagnostics
"""

import json
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import unittest

import grpc

import harness
from harness import RawConn, SidecarTestCase, curl, free_port, run
from grpc_client import Echo, channel, frame, md_dict

CONNECT_TIMEOUT_S = 0.25


class LocalErrorsTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.hole = harness.Blackhole()
        cls.addClassCleanup(cls.hole.close)
        if not cls.hole.hangs():
            raise unittest.SkipTest("the loopback blackhole trick does not work here")
        cls.closed_port = free_port()          # nothing listens there
        cls.web = cls.class_http1_peer("web")
        cls.srv = cls.class_grpc_peer("grpc")
        cls.ports = {n: free_port() for n in ("down-h1", "down-grpc", "hole-h1", "hole-grpc",
                                              "slow-h1", "slow-grpc", "slow-grpc-native")}
        ups = [
            harness.upstream("down-h1", "http1", cls.ports["down-h1"], [cls.closed_port]),
            harness.upstream("down-grpc", "grpc", cls.ports["down-grpc"], [cls.closed_port]),
            harness.upstream("hole-h1", "http1", cls.ports["hole-h1"], [cls.hole.port]),
            harness.upstream("hole-grpc", "grpc", cls.ports["hole-grpc"], [cls.hole.port]),
            harness.upstream("slow-h1", "http1", cls.ports["slow-h1"], [cls.web.port],
                             timeouts={"request": "500ms"}),
            harness.upstream("slow-grpc-native", "grpc", cls.ports["slow-grpc-native"], [cls.srv.port],
                             timeouts={"request": "500ms"}),
        ]
        # a gRPC upstream that does not know about deadlines (nghttpx -> HTTP/1.1
        # peer), so the DEADLINE_EXCEEDED can only come from the sidecar
        if harness.have_tool("nghttpx"):
            cls.front = cls.class_h2c_front(cls.web.port)
            ups.append(harness.upstream("slow-grpc", "grpc", cls.ports["slow-grpc"], [cls.front.port],
                                        timeouts={"request": "500ms"}))
        else:
            cls.front = None
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=ups))

    def setUp(self):
        self.web.reset()
        self.srv.reset()

    def echo(self, name):
        return Echo(self.channel(self.ports[name]))

    def timed_get(self, name, path="/echo"):
        t = time.monotonic()
        r = harness.http_get(self.ports[name], path, timeout=10)
        return r, time.monotonic() - t

    def assertSidecarHttpError(self, r, statuses):
        self.assertIn(r.status, statuses, r)
        reason = r.header("x-sidecar-reason")
        self.assertTrue(reason, "no x-sidecar-reason header: %r" % (r.headers,))
        self.assertLess(len(r.body), 4096, "error body is not short")
        self.assertIsNone(r.header("x-peer"))

    def grpc_error(self, name, method="unary", path=None, timeout=10, metadata=()):
        t = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            if path:
                ch = self.channel(self.ports[name])
                ch.unary_unary(path)(b"x", timeout=timeout, metadata=metadata)
            elif method == "unary":
                self.echo(name).unary(b"x", timeout=timeout, metadata=metadata)
            else:
                list(self.echo(name).server_stream(b"x", timeout=timeout, metadata=metadata))
        return cm.exception, time.monotonic() - t

    # -- upstream down ----------------------------------------------------------

    def test_down_http1(self):
        r, took = self.timed_get("down-h1")
        self.assertSidecarHttpError(r, (502, 503))
        self.assertLess(took, 1.0)

    def test_down_http1_keepalive_connection_survives_error(self):
        with RawConn(self.ports["down-h1"]) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response()
            self.assertIn(r.status, (502, 503))
            if not c.closed_by_peer(0.2):
                c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertIn(c.read_response().status, (502, 503))

    def test_down_http2_client(self):
        r = curl("--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                 "http://127.0.0.1:%d/echo" % self.ports["down-h1"], timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        head = r.stdout.decode().lower()
        self.assertRegex(head, r"^http/2 50[23]")
        self.assertIn("x-sidecar-reason:", head)

    def test_down_grpc(self):
        for method in ("unary", "stream"):
            with self.subTest(method):
                e, took = self.grpc_error("down-grpc", method)
                self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
                self.assertIn("down-grpc", e.details() or "")
                self.assertLess(took, 1.0)

    def test_down_grpc_is_trailers_only(self):
        if not harness.have_tool("nghttp"):
            self.skipTest("nghttp not installed")
        d = tempfile.mkdtemp(prefix="sc-it-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "req.bin")
        with open(path, "wb") as f:
            f.write(frame(b"x"))
        r = run(["nghttp", "-v", "-H", ":method: POST", "-H", "content-type: application/grpc",
                 "-H", "te: trailers", "-d", path,
                 "http://127.0.0.1:%d/test.Echo/Unary" % self.ports["down-grpc"]], timeout=15)
        out = r.stdout.decode("utf-8", "replace")
        self.assertIn(":status: 200", out, out[-3000:])
        self.assertIn("content-type: application/grpc", out)
        self.assertIn("grpc-status: 14", out)
        self.assertRegex(out, r"grpc-message: \S")
        self.assertNotIn("recv DATA", out)
        # exactly one HEADERS frame, carrying END_STREAM
        frames = re.findall(r"recv HEADERS frame <[^>]*>\s*;\s*([A-Z_ |]+)", out)
        self.assertEqual(len(frames), 1, out[-3000:])
        self.assertIn("END_STREAM", frames[0])

    # -- blackholed connect ---------------------------------------------------

    def test_blackhole_http1(self):
        r, took = self.timed_get("hole-h1")
        self.assertSidecarHttpError(r, (502, 503, 504))
        self.assertBetween(took, CONNECT_TIMEOUT_S - 0.05, CONNECT_TIMEOUT_S + 1.25,
                           "connect timeout is 250ms")

    def test_blackhole_grpc(self):
        e, took = self.grpc_error("hole-grpc")
        self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e.details())
        self.assertIn("hole-grpc", e.details() or "")
        self.assertBetween(took, CONNECT_TIMEOUT_S - 0.05, CONNECT_TIMEOUT_S + 1.25,
                           "connect timeout is 250ms")

    # -- request timeout ----------------------------------------------------------

    def test_request_timeout_http1(self):
        r, took = self.timed_get("slow-h1", "/delay/3000")
        self.assertSidecarHttpError(r, (504,))
        self.assertBetween(took, 0.45, 1.5, "request timeout is 500ms")

    def test_request_timeout_grpc_from_sidecar(self):
        if self.front is None:
            self.skipTest("nghttpx not installed")
        # the HTTP/1.1 peer serves /delay/<ms>; as a gRPC path that is service
        # "delay", method "3000"
        e, took = self.grpc_error("slow-grpc", path="/delay/3000", timeout=10)
        self.assertEqual(e.code(), grpc.StatusCode.DEADLINE_EXCEEDED, e.details())
        self.assertIn("slow-grpc", e.details() or "", "grpc-message does not name the upstream")
        self.assertBetween(took, 0.45, 1.5, "request timeout is 500ms")

    def test_request_timeout_grpc_native(self):
        e, took = self.grpc_error("slow-grpc-native", metadata=[("x-echo-delay-ms", "3000")])
        self.assertEqual(e.code(), grpc.StatusCode.DEADLINE_EXCEEDED, e.details())
        self.assertBetween(took, 0.45, 1.5, "request timeout is 500ms")
        rec = self.srv.last("Unary")
        self.assertTrue(self.srv.wait_for(lambda: self.srv.last("Unary")["terminated_at"], 1.5),
                        "the upstream call kept running after the timeout")

    def test_errors_are_counted(self):
        before = self.sc.stats()
        self.timed_get("down-h1")
        self.grpc_error("down-grpc")
        after = self.sc.stats()
        for name in ("down-h1", "down-grpc"):
            moved = [(n, l, v) for n, l, v in after.with_label("upstream", name)
                     if v > before.value(n, **l)]
            self.assertTrue(moved, "no metric with upstream=%s moved after an error" % name)


class MidStreamFailureTest(SidecarTestCase):
    def test_grpc_server_dies_mid_stream(self):
        """The instance goes away during a server stream: the caller gets a
        clean gRPC error promptly, and the sidecar keeps running."""
        srv = self.grpc_peer("dying")
        port = free_port()
        self.sidecar(harness.base_config(free_port(), upstreams=[
            harness.upstream("dying", "grpc", port, [srv.port])]))
        echo = Echo(self.channel(port))
        it = echo.server_stream(b"", timeout=20, metadata=[("x-echo-count", "1000"),
                                                            ("x-echo-interval-ms", "20")])
        next(it)
        next(it)
        t = time.monotonic()
        srv.stop(0)
        with self.assertRaises(grpc.RpcError) as cm:
            for _ in it:
                pass
        took = time.monotonic() - t
        self.assertLess(took, 2.0, "the caller waited %.1fs after the instance died" % took)
        self.assertIn(cm.exception.code(), (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                            grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN),
                      cm.exception.details())
        # the next call fails cleanly too (instance gone), fast
        t = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            echo.unary(b"x", timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, cm.exception.details())
        self.assertLess(time.monotonic() - t, 1.5)


class ConnectingIdleTest(SidecarTestCase):
    """An HTTP/2 upstream connection whose only stream went away while it was
    still connecting: the connect timeout still bounds the connect, and a
    connection that comes up with nothing to do gets the idle timeout."""

    def setUp(self):
        self.hole = harness.Blackhole()
        self.addCleanup(self.hole.close)
        if not self.hole.hangs():
            self.skipTest("the loopback blackhole trick does not work here")

    def start(self, timeouts):
        port = free_port()
        self.sc = self.sidecar(harness.base_config(free_port(), workers=1, upstreams=[
            harness.upstream("late", "grpc", port, [self.hole.port], timeouts=timeouts)]))
        return Echo(self.channel(port))

    def active(self):
        return self.sc.stats().value("sidecar_upstream_connections_active", upstream="late")

    def wait_active(self, want, within):
        end = time.monotonic() + within
        while time.monotonic() < end:
            if self.active() == want:
                return True
            time.sleep(0.05)
        return self.active() == want

    def test_connect_timeout_still_bounds_the_connect(self):
        echo = self.start({"connect": "1s", "request": "200ms", "idle": "60s"})
        t = time.monotonic()
        with self.assertRaises(grpc.RpcError) as cm:
            echo.unary(b"x", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED, cm.exception.details())
        self.assertEqual(self.active(), 1, "the connection attempt is still running")
        self.assertTrue(self.wait_active(0, 3.0), "a connect whose stream left ran past its 1s connect timeout")
        self.assertBetween(time.monotonic() - t, 0.8, 3.0, "the connect timeout is 1s")

    def test_connection_up_with_nothing_to_do_gets_the_idle_timeout(self):
        echo = self.start({"connect": "10s", "request": "200ms", "idle": "1s"})
        with self.assertRaises(grpc.RpcError) as cm:
            echo.unary(b"x", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED, cm.exception.details())
        # Let the sidecar's SYN in: drop the fillers (their pending connects
        # stop) and take the one the kernel queued, then wait for the
        # sidecar's retransmitted SYN to be accepted.
        self.hole.open_up()
        lsock = self.hole.lsock
        lsock.settimeout(0.5)
        up = None
        end = time.monotonic() + 8
        while up is None and time.monotonic() < end:
            try:
                c, _ = lsock.accept()
            except socket.timeout:
                continue
            c.settimeout(0.5)
            try:
                first = c.recv(24)
            except socket.timeout:
                first = b""
            if first.startswith(b"PRI * HTTP/2.0"):
                up = c
            else:
                c.close()
        self.assertIsNotNone(up, "the sidecar's connection never came up")
        self.addCleanup(up.close)
        connected = time.monotonic()
        up.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an empty SETTINGS frame
        up.settimeout(0.25)
        closed = None
        while time.monotonic() - connected < 4:
            try:
                if up.recv(65536) == b"":
                    closed = time.monotonic()
                    break
            except socket.timeout:
                continue
            except OSError:
                closed = time.monotonic()
                break
        self.assertIsNotNone(closed, "an idle connection stayed open 4s with a 1s idle timeout")
        self.assertBetween(closed - connected, 0.7, 2.5, "the idle timeout is 1s")
        self.assertTrue(self.wait_active(0, 1.0))


class RoundRobinTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.class_http1_peer("a")
        cls.b = cls.class_http1_peer("b")
        cls.ga = cls.class_grpc_peer("ga")
        cls.gb = cls.class_grpc_peer("gb")
        cls.h1_port = free_port()
        cls.grpc_port = free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=[
            harness.upstream("rr-h1", "http1", cls.h1_port, [cls.a.port, cls.b.port],
                             load_balancer="round_robin"),
            harness.upstream("rr-grpc", "grpc", cls.grpc_port, [cls.ga.port, cls.gb.port],
                             load_balancer="round_robin"),
        ]))

    def setUp(self):
        for p in (self.a, self.b, self.ga, self.gb):
            p.reset()

    def test_round_robin_one_connection(self):
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", self.h1_port, timeout=10)
        seq = []
        for _ in range(20):
            c.request("GET", "/echo")
            r = c.getresponse()
            r.read()
            seq.append(r.getheader("x-peer"))
        c.close()
        self.assertEqual(sorted(set(seq)), ["a", "b"], seq)
        self.assertLessEqual(abs(seq.count("a") - seq.count("b")), 1, seq)

    def test_round_robin_new_connections(self):
        n = 40
        for _ in range(n):
            r = harness.http_get(self.h1_port, "/echo")
            self.assertEqual(r.status, 200)
        ca, cb = self.a.count("requests_completed"), self.b.count("requests_completed")
        self.assertEqual(ca + cb, n)
        self.assertBetween(ca, n * 0.3, n * 0.7, "a=%d b=%d" % (ca, cb))

    def test_round_robin_grpc(self):
        echo = Echo(self.channel(self.grpc_port))
        n = 40
        for i in range(n):
            echo.unary(b"%d" % i, timeout=10)
        ca, cb = self.ga.count("Unary"), self.gb.count("Unary")
        self.assertEqual(ca + cb, n)
        self.assertLessEqual(abs(ca - cb), 2, "ga=%d gb=%d" % (ca, cb))


class AdminTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.a = cls.class_http1_peer("a")
        cls.b = cls.class_http1_peer("b")
        cls.srv = cls.class_grpc_peer("g")
        cls.h1_port = free_port()
        cls.grpc_port = free_port()
        cls.cfg = harness.base_config(free_port(), upstreams=[
            harness.upstream("web", "http1", cls.h1_port, [cls.a.port, cls.b.port]),
            harness.upstream("backend", "grpc", cls.grpc_port, [cls.srv.port]),
        ])
        cls.sc = cls.class_sidecar(cls.cfg)

    def test_ready(self):
        status, _, body = self.sc.admin("/ready")
        self.assertEqual(status, 200)

    def test_unknown_path_404(self):
        status, _, _ = self.sc.admin("/no-such-endpoint")
        self.assertEqual(status, 404)

    def test_stats_format_and_counters_move(self):
        before = self.sc.stats()
        self.assertEqual(before.bad_lines, [], "unparsable /stats lines")
        self.assertTrue(before.samples)
        for n in before.names():
            self.assertTrue(n.startswith("sidecar_"), "metric %s lacks the sidecar_ prefix" % n)
        for _ in range(7):
            self.assertEqual(harness.http_get(self.h1_port, "/echo").status, 200)
        echo = Echo(self.channel(self.grpc_port))
        for _ in range(5):
            echo.unary(b"x", timeout=10)
        after = self.sc.stats()
        self.assertEqual(after.value("sidecar_upstream_requests_total", upstream="web")
                         - before.value("sidecar_upstream_requests_total", upstream="web"), 7)
        self.assertEqual(after.value("sidecar_upstream_requests_total", upstream="backend")
                         - before.value("sidecar_upstream_requests_total", upstream="backend"), 5)

    def test_clusters(self):
        doc = self.sc.clusters()
        ups = {u["name"]: u for u in doc["upstreams"]}
        self.assertEqual(set(ups), {"web", "backend"})
        addrs = {i["address"] for i in ups["web"]["instances"]}
        self.assertEqual(addrs, {"127.0.0.1:%d" % self.a.port, "127.0.0.1:%d" % self.b.port})
        for i in ups["web"]["instances"] + ups["backend"]["instances"]:
            self.assertIsInstance(i.get("active_requests"), int,
                                  "instance without active_requests in /clusters: %s" % i)

    def test_clusters_show_active_requests(self):
        t = threading.Thread(target=harness.http_get, args=(self.h1_port, "/delay/1500"), daemon=True)
        t.start()
        try:
            def active():
                # per instance (the documented shape), else the upstream's total
                doc = self.sc.clusters()
                web = [u for u in doc["upstreams"] if u["name"] == "web"][0]
                if all("active_requests" in i for i in web["instances"]):
                    return sum(i["active_requests"] for i in web["instances"])
                return web.get("active_requests", 0)
            self.assertTrue(harness.wait_until(lambda: active() >= 1, 1.2),
                            "an in-flight request is not shown in /clusters")
            self.assertGreaterEqual(self.sc.stats().value("sidecar_upstream_requests_active", upstream="web"), 1)
        finally:
            t.join(5)
        self.assertTrue(harness.wait_until(lambda: self.sc.stats().value(
            "sidecar_upstream_requests_active", upstream="web") == 0, 2))

    def test_config(self):
        doc = self.sc.config_json()
        text = json.dumps(doc)
        for needle in ("web", "backend", "127.0.0.1:%d" % self.h1_port, "127.0.0.1:%d" % self.grpc_port):
            self.assertIn(needle, text)


class CheckTest(unittest.TestCase):
    BAD = """\
service: { name: test }
admin: { listen: 127.0.0.1:%d }
workers: 2
bogus_key: 1
upstreams:
  - upstream: backend
    protocol: grpc
    listen: 127.0.0.1:notaport
    discovery: { static: [ 127.0.0.1:9 ] }
    timeouts: { connect: 250, request: 5s }
  - upstream: other
    protocol: carrier-pigeon
    listen: 127.0.0.1:%d
    discovery: { static: [ 127.0.0.1:9 ] }
"""

    def setUp(self):
        self.binary = harness.sidecar_binary()
        self.dir = tempfile.mkdtemp(prefix="sc-it-check-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, rel, text):
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        return path

    def check(self, path):
        t = time.monotonic()
        r = run([self.binary, "--config", path, "--check"], timeout=20, cwd=self.dir)
        self.assertLess(time.monotonic() - t, 10)
        return r, (r.stdout + r.stderr).decode("utf-8", "replace")

    def test_good_config_exits_0(self):
        admin = free_port()
        path = self.write("sidecar.yaml", harness.to_yaml(harness.base_config(admin, upstreams=[
            harness.upstream("backend", "grpc", free_port(), [free_port()])])))
        r, out = self.check(path)
        self.assertEqual(r.returncode, 0, out)
        self.assertFalse(harness.port_open(admin), "--check started the admin listener")

    def test_bad_config_exits_1_with_file_line(self):
        path = self.write("sidecar.yaml", self.BAD % (free_port(), free_port()))
        r, out = self.check(path)
        self.assertEqual(r.returncode, 1, out)
        lines = {int(m) for m in re.findall(r"sidecar\.yaml:(\d+): ", out)}
        for want, what in ((4, "unknown key"), (8, "bad listen address"), (10, "unit-less duration"),
                           (12, "unknown protocol")):
            self.assertIn(want, lines, "no diagnostic for line %d (%s):\n%s" % (want, what, out))
        for line in out.splitlines():
            if "sidecar.yaml:" in line:
                self.assertRegex(line, r"sidecar\.yaml:\d+: [\w.\[\]-]+: \S", "not file:line: field: message")

    def test_bad_policy_file_named(self):
        self.write("policies/good.yaml", harness.to_yaml(harness.upstream("good", "http1", free_port(),
                                                                          [free_port()])))
        self.write("policies/bad.yaml", "upstream: bad\nprotocol: http1\nlisten: 127.0.0.1:%d\n"
                                        "discovery: { static: [ 127.0.0.1:9 ] }\n"
                                        "timeouts: { connect: soon }\n" % free_port())
        cfg = harness.base_config(free_port())
        cfg["policies"] = "policies"
        path = self.write("sidecar.yaml", harness.to_yaml(cfg))
        r, out = self.check(path)
        self.assertEqual(r.returncode, 1, out)
        self.assertRegex(out, r"bad\.yaml:5: ")
        self.assertNotIn("good.yaml:", out)

    def test_missing_file(self):
        r, out = self.check(os.path.join(self.dir, "nope.yaml"))
        self.assertEqual(r.returncode, 1, out)
        self.assertIn("nope.yaml", out)


if __name__ == "__main__":
    unittest.main()

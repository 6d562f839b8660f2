"""The fixtures themselves: the HTTP/1.1 and gRPC peers, the nghttpx h2c
front and the harness helpers, exercised directly (no sidecar). When one of
these fails, the other integration tests cannot be trusted."""

import hashlib
import http.client
import json
import os
import socket
import subprocess
import threading
import time
import unittest

import harness
from harness import RawConn, SidecarTestCase, run

import grpc
from grpc_client import Echo, frame, md_dict
from grpc_server import payload


class Http1PeerTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer("p")
        cls.port = cls.peer.port

    def setUp(self):
        self.peer.reset()

    def test_keepalive_and_echo(self):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        socks = set()
        for i in range(3):
            c.request("POST", "/echo?i=%d" % i, body=b"x" * i, headers={"X-I": str(i)})
            r = c.getresponse()
            doc = json.loads(r.read())
            socks.add(c.sock.getsockname())
            self.assertEqual(doc["body_length"], i)
            self.assertIn(["X-I", str(i)], doc["headers"])
        c.close()
        self.assertEqual(len(socks), 1)
        self.assertEqual(self.peer.count("connections"), 1)
        self.assertEqual(self.peer.count("requests_completed"), 3)

    def test_chunked_upload_with_trailers(self):
        with RawConn(self.port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
            r = c.read_response()
        doc = json.loads(r.body)
        self.assertEqual(doc["body"], "abcde")
        self.assertTrue(doc["chunked"])
        self.assertEqual(doc["trailers"], [["X-T", "1"]])

    def test_chunked_download_with_trailers(self):
        with RawConn(self.port) as c:
            c.send(b"GET /chunked?n=4&size=7&trailers=1 HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
            r = c.read_response()
        self.assertTrue(r.chunked)
        self.assertEqual(r.body, harness.pattern_blocks and b"".join(
            bytes(m) for m in harness.pattern_blocks(28)))
        self.assertEqual(dict(r.trailers)["x-count"], "4")

    def test_head_and_status_and_close(self):
        r = harness.http_get(self.port, "/bytes/1000", method="HEAD")
        self.assertEqual((r.status, r.header("content-length"), r.body), (200, "1000", b""))
        r = harness.http_get(self.port, "/status/418")
        self.assertEqual(r.status, 418)
        with RawConn(self.port) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            r = c.read_response()
            self.assertEqual(r.header("connection"), "close")
            self.assertClosed(c)

    def test_expect_continue_and_early_hints(self):
        with RawConn(self.port) as c:
            c.send(b"POST /sha256 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n")
            self.assertEqual(c.read_line(time.monotonic() + 5), b"HTTP/1.1 100 Continue")
            c.read_line(time.monotonic() + 5)
            c.send(b"abc")
            r = c.read_response()
            self.assertEqual(json.loads(r.body)["sha256"], hashlib.sha256(b"abc").hexdigest())
            c.send(b"GET /early-hints HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response()
            self.assertEqual([s for s, _ in r.interim], [103])
            self.assertEqual(r.status, 200)

    def test_curl_large_download_and_upload(self):
        n = 64 << 20
        p = subprocess.Popen(["curl", "-sS", "--http1.1", "http://127.0.0.1:%d/bytes/%d" % (self.port, n)],
                             stdout=subprocess.PIPE)
        h = hashlib.sha256()
        got = 0
        while True:
            b = p.stdout.read(1 << 20)
            if not b:
                break
            h.update(b)
            got += len(b)
        p.wait(30)
        p.stdout.close()
        self.assertEqual((got, h.hexdigest()), (n, harness.pattern_sha256(n)))
        r = run(["curl", "-sS", "-T", "-", "-X", "POST", "http://127.0.0.1:%d/sha256" % self.port],
                input=harness.pattern_bytes(4 << 20), timeout=30)
        doc = json.loads(r.stdout)
        self.assertEqual((doc["length"], doc["sha256"], doc["chunked"]),
                         (4 << 20, harness.pattern_sha256(4 << 20), True))

    def test_malformed_counted_but_not_completed(self):
        with RawConn(self.port) as c:
            c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nX: a\r\n b\r\n\r\n")
            c.read_until_close(time.monotonic() + 3)
        self.assertEqual(self.peer.count("requests_started"), 1)

    def test_truncate_route(self):
        with RawConn(self.port) as c:
            c.send(b"GET /truncate?len=1000&send=400 HTTP/1.1\r\nHost: a\r\n\r\n")
            with self.assertRaises(EOFError):
                c.read_response()

    def test_h2c_front(self):
        front = self.h2c_front(self.port)
        r = run(["curl", "-sS", "--http2-prior-knowledge", "-d", "xyz",
                 "http://127.0.0.1:%d/echo" % front.port], timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["body"], "xyz")


class GrpcPeerTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.srv = cls.class_grpc_peer()
        cls.echo = Echo(cls.class_channel(cls.srv.port))

    def test_unary_metadata_trailers(self):
        resp, call = self.echo.unary.with_call(
            b"hello", timeout=5,
            metadata=[("x-echo-meta-a", "1"), ("x-echo-trailer-x-t", "v"),
                      ("x-echo-meta-b-bin", b"\x00\x01")])
        self.assertEqual(resp, b"hello")
        self.assertEqual(md_dict(call.initial_metadata())["x-echo-meta-b-bin"], b"\x00\x01")
        self.assertEqual(md_dict(call.trailing_metadata())["x-t"], "v")

    def test_status_and_streams(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.unary(b"", timeout=5, metadata=[("x-echo-status", "7"), ("x-echo-message", "no")])
        self.assertEqual((cm.exception.code(), cm.exception.details()),
                         (grpc.StatusCode.PERMISSION_DENIED, "no"))
        msgs = list(self.echo.server_stream(b"", timeout=5, metadata=[
            ("x-echo-count", "3"), ("x-echo-response-size", "10")]))
        self.assertEqual(msgs, [payload(10, i) for i in range(3)])
        doc = json.loads(self.echo.client_stream(iter([b"a", b"bc"]), timeout=5))
        self.assertEqual((doc["count"], doc["bytes"]), (2, 3))
        self.assertEqual(list(self.echo.bidi(iter([b"1", b"2"]), timeout=5)), [b"1", b"2"])

    def test_trailers_only_on_the_wire(self):
        if not harness.have_tool("nghttp"):
            self.skipTest("nghttp missing")
        path = os.path.join(self.srv_tmp(), "req.bin")
        with open(path, "wb") as f:
            f.write(frame(b"x"))
        r = run(["nghttp", "-v", "-H", ":method: POST", "-H", "content-type: application/grpc",
                 "-H", "te: trailers", "-H", "x-echo-status: 5", "-d", path,
                 "http://127.0.0.1:%d/test.Echo/Unary" % self.srv.port], timeout=10)
        out = r.stdout.decode()
        self.assertIn("grpc-status: 5", out)
        self.assertNotIn("recv DATA", out)

    def srv_tmp(self):
        import tempfile
        d = tempfile.mkdtemp(prefix="sc-it-peer-")
        self.addCleanup(__import__("shutil").rmtree, d, True)
        return d

    def test_cancel_and_deadline_observed(self):
        it = self.echo.server_stream(b"", timeout=10, metadata=[("x-echo-count", "1000"),
                                                                 ("x-echo-interval-ms", "20")])
        next(it)
        it.cancel()
        t = time.monotonic()
        self.assertTrue(self.srv.wait_for(lambda: self.srv.last("ServerStream")["cancelled"], 2))
        self.assertLess(time.monotonic() - t, 1.0)
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.unary(b"", timeout=0.3, metadata=[("x-echo-delay-ms", "2000")])
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        rec = self.srv.last("Unary")
        self.assertIsNotNone(rec["time_remaining"])
        self.assertLessEqual(rec["time_remaining"], 0.3 + 0.02)
        self.assertTrue(self.srv.wait_for(lambda: self.srv.last("Unary")["cancelled"], 2))

    def test_control_stats(self):
        ch = self.channel(self.srv.port)
        self.echo.unary(b"x", timeout=5)
        doc = json.loads(ch.unary_unary("/test.Control/Stats")(b"", timeout=5))
        self.assertGreaterEqual(doc["counts"]["Unary"], 1)

    def test_16mib(self):
        big = payload(16 << 20, 1)
        self.assertEqual(self.echo.unary(big, timeout=20), big)

    def test_h2load_grpc(self):
        if not harness.have_tool("h2load"):
            self.skipTest("h2load missing")
        path = os.path.join(self.srv_tmp(), "req.bin")
        with open(path, "wb") as f:
            f.write(frame(b"ping"))
        before = self.srv.count("Unary")
        r = run(["h2load", "-n", "300", "-c", "3", "-m", "4", "-H", "content-type: application/grpc",
                 "-H", "te: trailers", "-d", path, "http://127.0.0.1:%d/test.Echo/Unary" % self.srv.port],
                timeout=60)
        self.assertIn(b"300 succeeded, 0 failed, 0 errored, 0 timeout", r.stdout)
        self.assertEqual(self.srv.count("Unary") - before, 300)


class HarnessTest(unittest.TestCase):
    def test_yaml_and_stats(self):
        y = harness.to_yaml({"a": {"b": [1, "x:1", "[::1]:80", {"c": "250ms", "d": "0"}]}, "e": []})
        self.assertEqual(y, 'a:\n  b:\n    - 1\n    - x:1\n    - "[::1]:80"\n    - c: 250ms\n'
                            '      d: "0"\ne: []\n')
        st = harness.Stats('# TYPE x_total counter\nx_total{u="a",k="1"} 2\nx_total{u="a",k="2"} 3\n'
                           'x_total{u="b"} 7\ny 1e3\n')
        self.assertEqual(st.value("x_total", u="a"), 5)
        self.assertEqual(st.value("y"), 1000)
        self.assertEqual(st.bad_lines, [])

    def test_blackhole_and_ports(self):
        b = harness.Blackhole()
        try:
            self.assertTrue(b.hangs(), "the blackhole trick does not work on this kernel")
        finally:
            b.close()
        p = harness.free_port()
        self.assertFalse(harness.port_open(p))

    def test_rss_sampler(self):
        with harness.RssSampler(os.getpid()) as s:
            time.sleep(0.1)
        self.assertGreater(s.max_kib, 1000)


if __name__ == "__main__":
    unittest.main()

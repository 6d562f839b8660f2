"""HTTP/1.1 through the sidecar, both ways:

  client -> outbound listener (upstream `web`, protocol http1) -> HTTP/1.1 peer
  client -> inbound listener (app_protocol http1)              -> HTTP/1.1 app

Framing (Content-Length, chunked), keep-alive, HEAD, 100-continue, 1xx,
Connection: close, hop-by-hop removal, Host, pipelining, status codes, and
1 GiB each way with the sidecar's RSS sampled during the transfer.
"""

import hashlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import harness
from harness import RawConn, SidecarTestCase, curl, curl_download, free_port, pattern_bytes, pattern_sha256

GIB = 1 << 30
BIG = int(os.environ.get("SC_BIG_TRANSFER_BYTES", str(GIB)))


class Http1ProxyTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")
        cls.app = cls.class_http1_peer("app")
        cls.out_port = free_port()
        cls.in_port = free_port()
        cfg = harness.base_config(
            free_port(),
            upstreams=[harness.upstream("web", "http1", cls.out_port, [cls.web.port],
                                        timeouts={"request": "120s"})],
            inbound={"listen_port": cls.in_port, "app_port": cls.app.port,
                     "timeouts": {"request": "120s"}})
        cls.sc = cls.class_sidecar(cfg)

    def setUp(self):
        self.web.reset()
        self.app.reset()

    def routes(self):
        """(label, listener port, peer behind it)."""
        return [("outbound", self.out_port, self.web), ("inbound", self.in_port, self.app)]

    # -- framing --------------------------------------------------------------

    def test_get_content_length(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                r = harness.http_get(port, "/bytes/100000")
                self.assertEqual(r.status, 200)
                self.assertEqual(hashlib.sha256(r.body).hexdigest(), pattern_sha256(100000))
                self.assertEqual(r.header("x-peer"), peer.name)
                self.assertEqual(peer.count("requests_completed"), 1)

    def test_post_content_length(self):
        body = pattern_bytes(300000)
        for label, port, peer in self.routes():
            with self.subTest(label):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                c.request("POST", "/echo", body=body, headers={"Content-Type": "application/x-test"})
                r = c.getresponse()
                doc = json.loads(r.read())
                c.close()
                self.assertEqual(r.status, 200)
                self.assertEqual(doc["body_length"], len(body))
                self.assertEqual(doc["body_sha256"], hashlib.sha256(body).hexdigest())
                self.assertEqual(doc["method"], "POST")
                hdrs = {k.lower(): v for k, v in doc["headers"]}
                self.assertEqual(hdrs.get("content-type"), "application/x-test")

    def test_chunked_upload_raw(self):
        chunks = [b"a" * 1, b"bc" * 500, pattern_bytes(70000), b"z"]
        wire = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
        body = b"".join(chunks)
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"POST /echo HTTP/1.1\r\nHost: example.test\r\nTransfer-Encoding: chunked\r\n\r\n")
                    # the body in pieces that split chunk headers
                    for i in range(0, len(wire), 7001):
                        c.send(wire[i:i + 7001])
                    r = c.read_response()
                self.assertEqual(r.status, 200)
                doc = json.loads(r.body)
                self.assertEqual(doc["body_length"], len(body))
                self.assertEqual(doc["body_sha256"], hashlib.sha256(body).hexdigest())

    def test_chunked_upload_curl(self):
        n = 8 << 20
        for label, port, peer in self.routes():
            with self.subTest(label):
                r = curl("--http1.1", "-T", "-", "-X", "POST", "http://127.0.0.1:%d/sha256" % port,
                         input=pattern_bytes(n), timeout=60)
                self.assertEqual(r.returncode, 0, r.stderr)
                doc = json.loads(r.stdout)
                self.assertEqual((doc["length"], doc["sha256"]), (n, pattern_sha256(n)))

    def test_chunked_download(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                for trailers in ("0", "1"):
                    with RawConn(port) as c:
                        c.send(b"GET /chunked?n=50&size=999&interval_ms=2&trailers=%s HTTP/1.1\r\n"
                               b"Host: example.test\r\n\r\n" % trailers.encode())
                        r = c.read_response()
                        self.assertEqual(r.status, 200)
                        self.assertEqual(r.body, pattern_bytes(50 * 999))
                        # the connection stays usable after a chunked response
                        c.send(b"GET /echo HTTP/1.1\r\nHost: example.test\r\n\r\n")
                        self.assertEqual(c.read_response().status, 200)

    def test_chunked_download_curl_large(self):
        n = 32 << 20
        for label, port, peer in self.routes():
            with self.subTest(label):
                rc, got, sha, err = curl_download("http://127.0.0.1:%d/bytes/%d?chunked=1&chunk=65536"
                                                  % (port, n), "--http1.1", max_time=30)
                self.assertEqual(rc, 0, err)
                self.assertEqual((got, sha), (n, pattern_sha256(n)))

    # -- connection management ------------------------------------------------

    def test_keepalive_reuse(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                names = set()
                for i in range(6):
                    c.request("GET" if i % 2 else "POST", "/echo?i=%d" % i, body=b"q" * i if i % 2 == 0 else None)
                    r = c.getresponse()
                    doc = json.loads(r.read())
                    self.assertEqual(r.status, 200)
                    self.assertFalse(r.will_close, "response %d asks to close the connection" % i)
                    self.assertEqual(doc["target"], "/echo?i=%d" % i)
                    names.add(c.sock.getsockname())
                c.close()
                self.assertEqual(len(names), 1, "the client had to reconnect: %s" % names)
                self.assertEqual(peer.count("requests_completed"), 6)

    def test_pipelined_requests(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"GET /echo?n=1 HTTP/1.1\r\nHost: example.test\r\n\r\n"
                           b"POST /echo?n=2 HTTP/1.1\r\nHost: example.test\r\nContent-Length: 3\r\n\r\nabc"
                           b"GET /bytes/10 HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    r1, r2, r3 = (c.read_response() for _ in range(3))
                self.assertEqual(json.loads(r1.body)["target"], "/echo?n=1")
                self.assertEqual(json.loads(r2.body)["body"], "abc")
                self.assertEqual(r3.body, pattern_bytes(10))

    def test_head(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"HEAD /bytes/5000 HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    r = c.read_response(head_request=True)
                    self.assertEqual(r.status, 200)
                    self.assertEqual(r.header("content-length"), "5000")
                    # no body follows: the next response starts right away
                    c.send(b"GET /bytes/7 HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    r2 = c.read_response()
                    self.assertEqual((r2.status, r2.body), (200, pattern_bytes(7)))
                self.assertEqual(peer.last("/bytes/5000")["method"], "HEAD")

    def test_expect_100_continue_raw(self):
        """The client waits for 100 Continue before sending the body: the
        sidecar must produce or relay it, not wait for the body."""
        body = pattern_bytes(200000)
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"POST /sha256 HTTP/1.1\r\nHost: example.test\r\nContent-Length: %d\r\n"
                           b"Expect: 100-continue\r\n\r\n" % len(body))
                    line = c.read_line(time.monotonic() + 3)
                    self.assertTrue(line.startswith(b"HTTP/1.1 100"), line)
                    while c.read_line(time.monotonic() + 3):
                        pass
                    c.send(body)
                    r = c.read_response()
                self.assertEqual(r.status, 200)
                doc = json.loads(r.body)
                self.assertEqual((doc["length"], doc["sha256"]),
                                 (len(body), hashlib.sha256(body).hexdigest()))

    def test_expect_100_continue_curl(self):
        d = tempfile.mkdtemp(prefix="sc-it-")
        self.addCleanup(__import__("shutil").rmtree, d, True)
        path = os.path.join(d, "body")
        n = 3 << 20
        with open(path, "wb") as f:
            f.write(pattern_bytes(n))
        for label, port, peer in self.routes():
            with self.subTest(label):
                t = time.monotonic()
                r = curl("-v", "--http1.1", "-H", "Expect: 100-continue", "--expect100-timeout", "5",
                         "--data-binary", "@" + path, "http://127.0.0.1:%d/sha256" % port, timeout=30)
                elapsed = time.monotonic() - t
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn(b"< HTTP/1.1 100", r.stderr)
                doc = json.loads(r.stdout)
                self.assertEqual((doc["length"], doc["sha256"]), (n, pattern_sha256(n)))
                self.assertLess(elapsed, 3.0, "curl waited for its 5 s expect timeout")

    def test_early_hints_pass_through(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"GET /early-hints HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    r = c.read_response()
                self.assertEqual(r.status, 200)
                self.assertEqual(r.body, b"after early hints\n")
                self.assertEqual([s for s, _ in r.interim], [103], r.interim)
                link = [v for k, v in r.interim[0][1] if k.lower() == "link"]
                self.assertEqual(link, ["</style.css>; rel=preload; as=style"])

    def test_connection_close_from_client(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"GET /echo HTTP/1.1\r\nHost: example.test\r\nConnection: close\r\n\r\n")
                    r = c.read_response()
                    self.assertEqual(r.status, 200)
                    self.assertClosed(c, 2.0)

    def test_connection_close_from_upstream(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"GET /close HTTP/1.1\r\nHost: example.test\r\n\r\n")
                    r = c.read_response()
                    self.assertEqual((r.status, r.body), (200, b"closing\n"))
                    if not c.closed_by_peer(0.3):
                        # the sidecar kept the client connection: it must still work
                        c.send(b"GET /echo HTTP/1.1\r\nHost: example.test\r\n\r\n")
                        self.assertEqual(c.read_response().status, 200)

    def test_http10_client(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"GET /bytes/123 HTTP/1.0\r\nHost: example.test\r\n\r\n")
                    r = c.read_response()
                    self.assertEqual((r.status, r.body), (200, pattern_bytes(123)))
                    self.assertFalse(r.chunked, "chunked sent to an HTTP/1.0 client")
                    self.assertClosed(c, 2.0)

    def test_client_abort_cancels_upstream(self):
        """A caller that goes away mid-response: the sidecar drops the upstream
        exchange promptly (the peer's writes start failing)."""
        for label, port, peer in self.routes():
            with self.subTest(label):
                peer.reset()
                with RawConn(port) as c:
                    c.send(b"GET /slow?bytes=400&interval_ms=50 HTTP/1.1\r\nHost: a\r\n\r\n")
                    c.read_line(time.monotonic() + 5)
                    time.sleep(0.2)
                t = time.monotonic()
                ok = peer.wait_for(lambda: (peer.last("/slow") or {}).get("aborted"), 5)
                self.assertTrue(ok, "the upstream kept streaming to a caller that left (sent %s of 400)"
                                % (peer.last("/slow") or {}).get("sent"))
                self.assertLess(time.monotonic() - t, 2.0)

    def test_upstream_truncated_body_not_completed(self):
        """The upstream dies mid-body: the caller must see the response fail
        (connection closed early), never a complete-looking response."""
        for label, port, peer in self.routes():
            for q in (b"len=100000&send=50000", b"len=100000&send=50000&chunked=1"):
                with self.subTest(listener=label, query=q):
                    with RawConn(port, timeout=10) as c:
                        c.send(b"GET /truncate?" + q + b" HTTP/1.1\r\nHost: a\r\n\r\n")
                        try:
                            r = c.read_response(8)
                        except (EOFError, ConnectionResetError):
                            continue
                        except socket.timeout:
                            self.fail("the caller was left hanging after the upstream died")
                        if r.status == 200:
                            self.fail("a truncated upstream body (%d of 100000 bytes) was delivered "
                                      "as a complete response" % len(r.body))
                        # an error status before any body was sent is fine too
                        self.assertIn(r.status, (502, 503), r)

    def test_many_concurrent_connections(self):
        if not harness.have_tool("h2load"):
            self.skipTest("h2load not installed")
        n = 3000
        for label, port, peer in self.routes():
            with self.subTest(label):
                r = harness.run(["h2load", "--h1", "-n", str(n), "-c", "100", "-t", "2",
                                 "http://127.0.0.1:%d/echo" % port], timeout=120)
                out = r.stdout.decode()
                self.assertIn("%d succeeded, 0 failed, 0 errored, 0 timeout" % n, out, out[-1500:])
                self.assertEqual(peer.count("requests_completed"), n)

    # -- headers --------------------------------------------------------------

    def test_hop_by_hop_request_headers_removed(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                with RawConn(port) as c:
                    c.send(b"POST /echo HTTP/1.1\r\n"
                           b"Host: api.example.test:8080\r\n"
                           b"Connection: keep-alive, X-Custom-Hop\r\n"
                           b"X-Custom-Hop: secret\r\n"
                           b"Keep-Alive: timeout=5, max=10\r\n"
                           b"Proxy-Connection: keep-alive\r\n"
                           b"TE: gzip\r\n"
                           b"Upgrade: foo/1\r\n"
                           b"X-End-To-End: kept\r\n"
                           b"X-Dup: 1\r\nX-Dup: 2\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhello\r\n0\r\n\r\n")
                    r = c.read_response()
                self.assertEqual(r.status, 200)
                doc = json.loads(r.body)
                seen = [(k.lower(), v) for k, v in doc["headers"]]
                names = [k for k, _ in seen]
                for hop in ("x-custom-hop", "keep-alive", "proxy-connection", "upgrade"):
                    self.assertNotIn(hop, names, "%s forwarded: %s" % (hop, seen))
                for k, v in seen:
                    if k == "connection":
                        self.assertNotIn("x-custom-hop", v.lower(), seen)
                    if k == "te":
                        self.assertNotIn("gzip", v.lower(), seen)
                    if k == "transfer-encoding":
                        self.assertEqual(v.lower(), "chunked", seen)
                self.assertIn(("x-end-to-end", "kept"), seen)
                self.assertEqual([v for k, v in seen if k == "x-dup"] in (["1", "2"], ["1, 2"]), True, seen)
                self.assertEqual([v for k, v in seen if k == "host"], ["api.example.test:8080"])
                self.assertEqual(doc["body"], "hello")

    def test_hop_by_hop_response_headers_removed(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                r = harness.http_get(port, "/hop")
                self.assertEqual(r.status, 200)
                names = [k.lower() for k, _ in r.headers]
                for hop in ("x-hop-custom", "keep-alive", "proxy-connection", "upgrade"):
                    self.assertNotIn(hop, names, r.headers)
                for v in r.header_all("connection"):
                    self.assertNotIn("x-hop-custom", v.lower())
                self.assertEqual(r.header("x-end-to-end"), "kept")
                self.assertEqual(r.body, b"hop\n")

    def test_host_preserved(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                r = harness.http_get(port, "/echo", host_header="svc.example.test")
                doc = json.loads(r.body)
                hosts = [v for k, v in doc["headers"] if k.lower() == "host"]
                self.assertEqual(hosts, ["svc.example.test"])

    def test_upstream_status_codes_pass_through(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                for code in (201, 204, 301, 404, 418, 500, 502, 503, 504):
                    r = harness.http_get(port, "/status/%d" % code)
                    self.assertEqual(r.status, code)
                    self.assertEqual(r.header("x-peer"), peer.name, "answer did not come from the peer")
                    self.assertIsNone(r.header("x-sidecar-reason"),
                                      "an upstream %d was dressed as a sidecar error" % code)
                    if code != 204:
                        self.assertEqual(r.body, b"status %d\n" % code)

    # -- big transfers ----------------------------------------------------------

    def _check_rss(self, sampler, what):
        self.assertIsNotNone(sampler.max_kib)
        self.assertLess(sampler.max_kib, harness.RSS_LIMIT_KIB,
                        "%s: sidecar RSS peaked at %d KiB (limit %d KiB; first sample %d KiB)"
                        % (what, sampler.max_kib, harness.RSS_LIMIT_KIB, sampler.first_kib))

    def test_big_download(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                t = time.monotonic()
                with harness.RssSampler(self.sc.pid) as s:
                    rc, got, sha, err = curl_download("http://127.0.0.1:%d/bytes/%d" % (port, BIG),
                                                      "--http1.1", max_time=180)
                elapsed = time.monotonic() - t
                self.assertEqual(rc, 0, err)
                self.assertEqual((got, sha), (BIG, pattern_sha256(BIG)))
                self._check_rss(s, "%s download of %d bytes in %.1fs" % (label, BIG, elapsed))

    def test_big_upload(self):
        # The sender runs in its own process so that its pace does not depend
        # on the in-process peers. This test caught a lost wake-up in the
        # worker loop (dirty work left when a bounded flush pass ended).
        sender = os.path.join(harness.HERE, "upload_sender.py")
        for label, port, peer in self.routes():
            with self.subTest(label):
                t = time.monotonic()
                with harness.RssSampler(self.sc.pid) as s:
                    proc = subprocess.run([sys.executable, sender, str(port), str(BIG)],
                                          capture_output=True, timeout=240)
                elapsed = time.monotonic() - t
                if proc.returncode != 0:
                    rec = peer.last("/sha256") or {}
                    self.fail("%s upload failed after %.1fs (peer received %d MiB): %s" % (
                        label, elapsed, rec.get("received", 0) >> 20, proc.stderr.decode(errors="replace")[-500:]))
                status, body = proc.stdout.split(b"\n", 1)
                self.assertEqual(int(status), 200, body)
                doc = json.loads(body)
                self.assertEqual((doc["length"], doc["sha256"]), (BIG, pattern_sha256(BIG)))
                self._check_rss(s, "%s upload of %d bytes in %.1fs" % (label, BIG, elapsed))


class Ipv6Test(SidecarTestCase):
    """Listener and upstream on ::1."""

    @classmethod
    def setUpClass(cls):
        try:
            with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
                s.bind(("::1", 0))
        except OSError:
            raise unittest.SkipTest("no IPv6 loopback here")
        cls.web = cls.class_http1_peer("web6", host="::1")
        cls.port = harness.free_port("::1")
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=[
            harness.upstream("web6", "http1", 0, ["[::1]:%d" % cls.web.port],
                             listen="[::1]:%d" % cls.port)]))

    def test_get_over_ipv6(self):
        with RawConn(self.port, host="::1") as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: [::1]\r\n\r\n")
            r = c.read_response()
        self.assertEqual(r.status, 200)
        self.assertEqual(json.loads(r.body)["peer"], "web6")


class BurstUpstreamTest(SidecarTestCase):
    """A response whose whole body arrives in one burst, larger than
    limits.stream_buffer (64 KiB): everything must reach the caller and the
    response must end (deterministic regression test)."""

    @classmethod
    def setUpClass(cls):
        def chunked(n, size):
            data = pattern_bytes(n)
            out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            for i in range(0, n, size):
                out += b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size])
            return out + b"0\r\n\r\n"
        cls.cases = {
            "chunked-70000-in-1000s": (chunked(70000, 1000), 70000),
            "chunked-200000-in-65535s": (chunked(200000, 65535), 200000),
            "length-200000": (b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n" + pattern_bytes(200000),
                              200000),
        }
        ups = []
        cls.ports = {}
        for name, (resp, _) in cls.cases.items():
            u = harness.ScriptedUpstream(resp)
            cls.addClassCleanup(u.close)
            cls.ports[name] = free_port()
            ups.append(harness.upstream(name, "http1", cls.ports[name], [u.port], timeouts={"request": "30s"}))
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=ups,
                                                       limits={"stream_buffer": 65536}))

    def test_burst_bodies_complete(self):
        for name, (_, n) in self.cases.items():
            for proto in ("--http1.1", "--http2-prior-knowledge"):
                with self.subTest(case=name, client=proto):
                    rc, got, sha, err = curl_download("http://127.0.0.1:%d/x" % self.ports[name], proto,
                                                      max_time=6, stall_s=4)
                    self.assertEqual(rc, 0, "%s (%d of %d bytes arrived)" % (err.strip(), got, n))
                    self.assertEqual((got, sha), (n, pattern_sha256(n)))


class KeepAliveDeadlinesTest(SidecarTestCase):
    """The idle and header-read timeouts of keep-alive connections, whose
    deadlines move on every request without the timer being restarted (the
    timer fires at the old deadline and is started again for the rest):

    - a connection used more often than its idle timeout stays open, on both
      sides, and closes one idle timeout after its last response;
    - a head that trickles in on a connection that already carried a request
      gets its header-read deadline from its first bytes, not the idle one.
    """

    IDLE_S = 1.0
    HEADER_READ_S = 0.6

    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")
        cls.idle_port, cls.head_port = free_port(), free_port()
        cfg = harness.base_config(free_port(), upstreams=[
            harness.upstream("ka", "http1", cls.idle_port, [cls.web.port],
                             timeouts={"idle": "%dms" % int(cls.IDLE_S * 1000), "header_read": "5s"}),
            harness.upstream("hr", "http1", cls.head_port, [cls.web.port],
                             timeouts={"idle": "5s", "header_read": "%dms" % int(cls.HEADER_READ_S * 1000)}),
        ], workers=1)
        cls.sc = cls.class_sidecar(cfg)

    def setUp(self):
        self.web.reset()

    def upstream_conns(self, name):
        return [u for u in self.sc.clusters()["upstreams"] if u["name"] == name][0]["active_connections"]

    def test_idle_deadline_moves_with_every_request(self):
        n, gap = 7, 0.4                             # 2.4 s of use, idle timeout 1 s
        with RawConn(self.idle_port, timeout=10) as c:
            for i in range(n):
                c.send(b"GET /echo?%d HTTP/1.1\r\nHost: a\r\n\r\n" % i)
                self.assertEqual(c.read_response().status, 200, i)
                last = time.monotonic()
                if i < n - 1:
                    self.assertFalse(c.closed_by_peer(gap), "closed while in use (request %d)" % i)
            self.assertEqual(self.web.count("connections"), 1, "the upstream connection was not kept")
            self.assertEqual(self.upstream_conns("ka"), 1)
            self.assertTrue(c.closed_by_peer(self.IDLE_S + 3.0), "idle connection not closed")
            took = time.monotonic() - last
        self.assertBetween(took, self.IDLE_S - 0.2, self.IDLE_S + 1.0,
                           "caller's connection closed %.2fs after its last response" % took)
        # the upstream connection's deadline moved the same way
        deadline = last + self.IDLE_S + 3.0
        while self.upstream_conns("ka") and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - last
        self.assertEqual(self.upstream_conns("ka"), 0, "idle upstream connection not closed")
        self.assertBetween(took, self.IDLE_S - 0.2, self.IDLE_S + 1.5,
                           "upstream connection closed %.2fs after its last response" % took)

    def test_slow_second_head_gets_the_header_read_deadline(self):
        with RawConn(self.head_port, timeout=10) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)
            time.sleep(0.3)                         # the idle deadline (5 s) is running
            t0 = time.monotonic()
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            r = c.read_response(timeout=5.0)
            took = time.monotonic() - t0
        self.assertEqual(r.status, 408, r)
        self.assertBetween(took, self.HEADER_READ_S - 0.1, self.HEADER_READ_S + 1.0,
                           "408 after %.2fs, header_read is %.1fs" % (took, self.HEADER_READ_S))
        self.assertEqual(self.web.count("requests_started"), 1)


if __name__ == "__main__":
    unittest.main()

"""Protocol translation: HTTP/1.1 <-> HTTP/2.

  HTTP/1.1 client (curl --http1.1, raw)      -> `h2web` (protocol http2) -> nghttpx h2c -> HTTP/1.1 peer
  HTTP/2 client (curl --http2-prior-knowledge, h2load) -> `web` (protocol http1) -> HTTP/1.1 peer
  HTTP/2 client                              -> `h2web` (protocol http2)

nghttpx (Debian nghttp2-proxy) is the real HTTP/2 cleartext upstream; it
passes requests on to the HTTP/1.1 peer, which records what arrived.
Bodies, status codes and headers must survive; connection-specific headers
must not leak into HTTP/2 (that would be a protocol error there).
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
import unittest

import harness
from harness import RawConn, SidecarTestCase, curl, curl_download, free_port, pattern_bytes, pattern_sha256


def hdrs(doc):
    return [(k.lower(), v) for k, v in doc["headers"]]


class TranslationTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        if not harness.have_tool("nghttpx"):
            raise unittest.SkipTest("nghttpx not installed")
        cls.h2peer = cls.class_http1_peer("behind-h2")
        cls.front = cls.class_h2c_front(cls.h2peer.port)
        cls.web = cls.class_http1_peer("web")
        cls.h2_port = free_port()     # upstream speaks HTTP/2
        cls.h1_port = free_port()     # upstream speaks HTTP/1.1
        cfg = harness.base_config(
            free_port(),
            upstreams=[
                harness.upstream("h2web", "http2", cls.h2_port, [cls.front.port],
                                 timeouts={"request": "60s"}),
                harness.upstream("web", "http1", cls.h1_port, [cls.web.port],
                                 timeouts={"request": "60s"}),
            ])
        cls.sc = cls.class_sidecar(cfg)
        cls.tmp = tempfile.mkdtemp(prefix="sc-it-tr-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)

    def setUp(self):
        self.h2peer.reset()
        self.web.reset()

    def file_of(self, n):
        path = os.path.join(self.tmp, "body-%d" % n)
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(pattern_bytes(n))
        return path

    # ---- HTTP/1.1 client -> HTTP/2 upstream ---------------------------------

    def test_h1_to_h2_get_echo(self):
        r = harness.http_get(self.h2_port, "/echo?q=1", host_header="svc.example.test",
                             headers=[("X-Custom", "v1"), ("Accept", "text/plain")])
        self.assertEqual(r.status, 200, r)
        doc = json.loads(r.body)
        h = hdrs(doc)
        self.assertEqual(doc["method"], "GET")
        self.assertEqual(doc["target"], "/echo?q=1")
        self.assertIn(("host", "svc.example.test"), h)
        self.assertIn(("x-custom", "v1"), h)
        self.assertEqual(r.header("x-peer"), "behind-h2")

    def test_h1_to_h2_post_content_length(self):
        body = pattern_bytes(1 << 20)
        with RawConn(self.h2_port) as c:
            c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            r = c.read_response()
        doc = json.loads(r.body)
        self.assertEqual((doc["body_length"], doc["body_sha256"]),
                         (len(body), hashlib.sha256(body).hexdigest()))

    def test_h1_to_h2_chunked_upload(self):
        n = 4 << 20
        r = curl("--http1.1", "-T", "-", "-X", "POST", "http://127.0.0.1:%d/sha256" % self.h2_port,
                 input=pattern_bytes(n), timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual((doc["length"], doc["sha256"]), (n, pattern_sha256(n)))

    def test_h1_to_h2_download(self):
        n = 32 << 20
        for q in ("", "?chunked=1", "?chunked=1&chunk=65536"):
            with self.subTest(q or "content-length"):
                rc, got, sha, err = curl_download("http://127.0.0.1:%d/bytes/%d%s" % (self.h2_port, n, q),
                                                  "--http1.1", max_time=30)
                self.assertEqual(rc, 0, err)
                self.assertEqual((got, sha), (n, pattern_sha256(n)))

    def test_h1_to_h2_status_codes(self):
        for code in (201, 204, 404, 500, 503):
            with self.subTest(code):
                r = harness.http_get(self.h2_port, "/status/%d" % code)
                self.assertEqual(r.status, code)
                self.assertIsNone(r.header("x-sidecar-reason"))
                self.assertEqual(r.header("x-peer"), "behind-h2")

    def test_h1_to_h2_connection_headers_not_forwarded(self):
        with RawConn(self.h2_port) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n"
                   b"Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: gzip\r\n"
                   b"Upgrade: foo/1\r\nX-Kept: yes\r\n\r\n")
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        h = hdrs(json.loads(r.body))
        names = [k for k, _ in h]
        for hop in ("x-hop", "keep-alive", "proxy-connection", "upgrade"):
            self.assertNotIn(hop, names)
        self.assertIn(("x-kept", "yes"), h)

    def test_h1_to_h2_keepalive_and_head(self):
        with RawConn(self.h2_port) as c:
            for i in range(4):
                c.send(b"HEAD /bytes/100 HTTP/1.1\r\nHost: a\r\n\r\n")
                r = c.read_response(head_request=True)
                self.assertEqual((r.status, r.header("content-length")), (200, "100"))
                c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (i + 1))
                r = c.read_response()
                self.assertEqual(r.body, pattern_bytes(i + 1))

    def test_h1_to_h2_response_hop_headers(self):
        # (nghttpx itself drops Connection and forwards the header it named,
        # so only the end-to-end part is meaningful here)
        r = harness.http_get(self.h2_port, "/hop")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.header("x-end-to-end"), "kept")
        for hop in ("keep-alive", "proxy-connection", "upgrade"):
            self.assertIsNone(r.header(hop))

    # ---- HTTP/2 client -> HTTP/1.1 upstream --------------------------------

    def h2curl(self, *args, timeout=60):
        return curl("--http2-prior-knowledge", *args, timeout=timeout)

    def test_h2_to_h1_get_echo(self):
        r = self.h2curl("-H", "Host: svc.example.test", "-H", "X-Custom: v2", "-D", "-",
                        "http://127.0.0.1:%d/echo?x=y" % self.h1_port)
        self.assertEqual(r.returncode, 0, r.stderr)
        head, _, body = r.stdout.partition(b"\r\n\r\n")
        self.assertTrue(head.startswith(b"HTTP/2 200"), head)
        self.assertIn(b"x-peer: web", head.lower())
        doc = json.loads(body)
        h = hdrs(doc)
        self.assertEqual(doc["target"], "/echo?x=y")
        self.assertEqual(doc["version"], "HTTP/1.1")
        self.assertEqual([v for k, v in h if k == "host"], ["svc.example.test"])
        self.assertIn(("x-custom", "v2"), h)
        for k, _ in h:
            self.assertFalse(k.startswith(":"), "pseudo-header leaked: %s" % k)

    def test_h2_to_h1_post_with_length(self):
        n = 3 << 20
        r = self.h2curl("--data-binary", "@" + self.file_of(n), "http://127.0.0.1:%d/sha256" % self.h1_port)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual((doc["length"], doc["sha256"]), (n, pattern_sha256(n)))

    def test_h2_to_h1_post_without_length(self):
        """An h2 request body without content-length must be framed (chunked)
        towards the HTTP/1.1 upstream."""
        n = 2 << 20
        r = curl("--http2-prior-knowledge", "-T", "-", "-X", "POST",
                 "http://127.0.0.1:%d/sha256" % self.h1_port, input=pattern_bytes(n), timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual((doc["length"], doc["sha256"]), (n, pattern_sha256(n)))

    def test_h2_to_h1_download(self):
        n = 32 << 20
        for q in ("", "?chunked=1", "?chunked=1&chunk=65536"):
            with self.subTest(q or "content-length"):
                rc, got, sha, err = curl_download("http://127.0.0.1:%d/bytes/%d%s" % (self.h1_port, n, q),
                                                  "--http2-prior-knowledge", max_time=30)
                self.assertEqual(rc, 0, err)
                self.assertEqual((got, sha), (n, pattern_sha256(n)))

    def test_h2_to_h1_chunked_with_trailers(self):
        r = self.h2curl("http://127.0.0.1:%d/chunked?n=20&size=500&trailers=1" % self.h1_port)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, pattern_bytes(20 * 500))

    def test_h2_to_h1_upstream_truncated(self):
        """The HTTP/1.1 upstream dies mid-body: the h2 stream must fail (reset),
        not end cleanly and not hang."""
        for q in ("len=100000&send=50000", "len=100000&send=50000&chunked=1"):
            with self.subTest(q):
                r = self.h2curl("--max-time", "10", "-o", "/dev/null",
                                "http://127.0.0.1:%d/truncate?%s" % (self.h1_port, q), timeout=20)
                self.assertNotEqual(r.returncode, 0, "truncated body delivered as complete")
                self.assertNotEqual(r.returncode, 28, "the h2 stream hung: %s" % r.stderr)

    def test_h2_to_h1_status_codes(self):
        for code in (201, 204, 404, 500, 503):
            with self.subTest(code):
                r = self.h2curl("-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:%d/status/%d"
                                % (self.h1_port, code))
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertEqual(r.stdout, str(code).encode())

    def test_h2_to_h1_response_hop_headers_dropped(self):
        """Connection-specific response headers are illegal in HTTP/2: curl
        fails the stream if the sidecar forwards them."""
        r = self.h2curl("-D", "-", "http://127.0.0.1:%d/hop" % self.h1_port)
        self.assertEqual(r.returncode, 0, r.stderr)
        head = r.stdout.lower()
        self.assertIn(b"x-end-to-end: kept", head)
        for hop in (b"x-hop-custom", b"keep-alive:", b"proxy-connection", b"upgrade:", b"\nconnection:"):
            self.assertNotIn(hop, head)

    def test_h2_to_h1_head(self):
        r = self.h2curl("-I", "http://127.0.0.1:%d/bytes/4321" % self.h1_port)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(b"content-length: 4321", r.stdout.lower())

    def test_h2_to_h1_multiplexed_slow_requests(self):
        """10 concurrent 500 ms requests on one h2 connection take about 500 ms,
        not 5 s: streams are not serialized on one upstream connection."""
        if not harness.have_tool("h2load"):
            self.skipTest("h2load not installed")
        t = time.monotonic()
        r = harness.run(["h2load", "-n", "10", "-c", "1", "-m", "10",
                         "http://127.0.0.1:%d/delay/500" % self.h1_port], timeout=60)
        took = time.monotonic() - t
        out = r.stdout.decode()
        self.assertIn("10 succeeded, 0 failed", out, out[-1500:])
        self.assertLess(took, 2.5, "10 x 500 ms streams took %.1fs" % took)
        self.assertGreaterEqual(self.web.max_inflight, 5)

    def test_h2load_to_h1(self):
        if not harness.have_tool("h2load"):
            self.skipTest("h2load not installed")
        n = 2000
        r = harness.run(["h2load", "-n", str(n), "-c", "4", "-m", "10",
                         "http://127.0.0.1:%d/echo" % self.h1_port], timeout=120)
        out = r.stdout.decode()
        self.assertIn("%d succeeded, 0 failed, 0 errored, 0 timeout" % n, out, out[-1500:])
        self.assertIn("status codes: %d 2xx" % n, out)
        self.assertEqual(self.web.count("requests_completed"), n)

    # ---- HTTP/2 client -> HTTP/2 upstream ---------------------------------

    def test_h2_to_h2(self):
        n = 1 << 20
        r = self.h2curl("--data-binary", "@" + self.file_of(n), "-H", "X-Custom: v3",
                        "http://127.0.0.1:%d/echo" % self.h2_port)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual((doc["body_length"], doc["body_sha256"]), (n, pattern_sha256(n)))
        self.assertIn(("x-custom", "v3"), hdrs(doc))
        rc, got, sha, err = curl_download("http://127.0.0.1:%d/bytes/%d" % (self.h2_port, 8 << 20),
                                          "--http2-prior-knowledge", max_time=30)
        self.assertEqual((rc, got, sha), (0, 8 << 20, pattern_sha256(8 << 20)), err)

    def test_h2load_to_h2(self):
        if not harness.have_tool("h2load"):
            self.skipTest("h2load not installed")
        n = 1000
        r = harness.run(["h2load", "-n", str(n), "-c", "2", "-m", "10",
                         "http://127.0.0.1:%d/echo" % self.h2_port], timeout=120)
        out = r.stdout.decode()
        self.assertIn("%d succeeded, 0 failed, 0 errored, 0 timeout" % n, out, out[-1500:])
        self.assertEqual(self.h2peer.count("requests_completed"), n)


if __name__ == "__main__":
    unittest.main()

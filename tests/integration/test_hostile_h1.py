"""Hostile HTTP/1.1 on both sides of the sidecar.

Callers are raw sockets sending what an attacker would: the identity header
in trailers and in '_' spellings, CONNECT, absolute-form targets with
userinfo or another scheme, a second Connection header, a malformed request
pipelined behind a large response. Upstreams are a raw-socket peer that
misbehaves on purpose (HostilePeer): endless 103 Early Hints, a head or a
trailer section that never ends, hop-by-hop names in a second Connection
header, forbidden trailer fields, garbage grpc-status, a Retry-After decades
away.

Every test asserts the status the caller gets, and then that the sidecar is
healthy: alive, RSS bounded (/proc/<pid>/status), no CPU spent while idle
(/proc/<pid>/stat), and an ordinary request still served.
"""

import hashlib
import json
import os
import socket
import threading
import time
import unittest

import harness
from harness import RawConn, SidecarTestCase, free_port, pattern_sha256

IDH = "x-sidecar-caller"
SPOOF = "spiffe://evil.example/ns/default/dc/dc1/svc/admin"
MAX_HEADER_BYTES = 65536


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chunked_post(path, head_fields=(), trailers=(), host="a", body=b"hello"):
    """A chunked POST with the given extra head fields and trailer fields."""
    head = "POST %s HTTP/1.1\r\nHost: %s\r\nTransfer-Encoding: chunked\r\n" % (path, host)
    head += "".join("%s: %s\r\n" % kv for kv in head_fields) + "\r\n"
    tail = b"0\r\n" + "".join("%s: %s\r\n" % kv for kv in trailers).encode() + b"\r\n"
    return head.encode() + b"%x\r\n" % len(body) + body + b"\r\n" + tail


def exchange(port, data, timeout=5.0, head_request=False):
    """Sends `data` on a fresh connection and reads one response: (Response
    or None, closed afterwards, error text)."""
    with RawConn(port, timeout=timeout) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            r = c.read_response(timeout, head_request=head_request)
        except (EOFError, ConnectionResetError) as e:
            return None, True, "no response: %s" % e
        except socket.timeout:
            return None, False, "no response within %.1fs" % timeout
        return r, c.closed_by_peer(2.0), None


def read_until_close(c, limit, deadline, slow_while=None, piece=4096, pause=0.001):
    """Reads into c.buf until EOF, `limit` bytes or the deadline. While
    slow_while() (checked every 64 reads) is true, in small pieces with
    pauses: a reader slower than the sidecar, so that its output backs up."""
    slow, reads = slow_while is not None, 0
    while time.monotonic() < deadline and len(c.buf) < limit:
        if slow and reads % 64 == 0:
            slow = slow_while()
        reads += 1
        try:
            d = c.sock.recv(piece if slow else 262144)
        except socket.timeout:
            return
        except ConnectionResetError:
            c.eof = True
            return
        if not d:
            c.eof = True
            return
        c.buf += d
        if slow:
            time.sleep(pause)


class HostilePeer(harness.ScriptedUpstream):
    """A raw-socket HTTP/1.1 upstream that misbehaves as the request path
    says (/<behaviour>...). Requests reaching it carry no body. Every
    behaviour is bounded in bytes and time; a peer that closes ends it.
    (ScriptedUpstream's listener and cleanup, its own answers.)"""

    def __init__(self):
        self.lock = threading.Lock()
        self.heads = []          # request heads received, in order
        self.sent = {}           # behaviour -> bytes written
        super().__init__(b"")

    def count(self, prefix):
        with self.lock:
            return sum(1 for h in self.heads if h.split(b" ", 2)[1].startswith(prefix.encode()))

    def _serve(self, c):
        buf = b""
        c.settimeout(15)
        try:
            while not self._stop:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d or len(buf) > 1 << 20:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                with self.lock:
                    self.heads.append(head)
                path = head.split(b" ", 2)[1].decode("latin-1")
                name = path.strip("/").split("/")[0].split("?")[0].replace("-", "_")
                how = getattr(self, "do_" + name, None)
                if not (how(c, path) if how else self.do_canned(c, name)):
                    return
        except OSError:
            pass
        finally:
            c.close()

    def _send(self, c, what, data):
        c.sendall(data)
        with self.lock:
            self.sent[what] = self.sent.get(what, 0) + len(data)

    # -- behaviours --------------------------------------------------------------
    # one fixed answer each, the connection kept
    CANNED = {
        "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n",
        # hop-by-hop names listed in a second Connection header
        "conn2": b"HTTP/1.1 200 OK\r\nConnection: x-a\r\nConnection: x-b, keep-alive\r\n"
                 b"X-A: 1\r\nX-B: 1\r\nX-C: 1\r\nContent-Length: 3\r\n\r\nok\n",
        # trailers that no trailer section may carry, and one that may
        "bad_trailers": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"5\r\nhello\r\n0\r\nHost: evil.example\r\nSet-Cookie: s=evil\r\n"
                        b"Content-Type: text/evil\r\nConnection: close\r\nX-T: 1\r\n\r\n",
        # a trailers-only gRPC answer whose grpc-status is not a number
        "grpc_garbage": b"HTTP/1.1 200 OK\r\nContent-Type: application/grpc\r\n"
                        b"grpc-status: 0:\r\nContent-Length: 0\r\n\r\n",
        # 503 with a Retry-After thousands of years away
        "retry_forever": b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 99999999999\r\n"
                         b"Content-Length: 5\r\n\r\nbusy\n",
    }

    def do_canned(self, c, name):
        self._send(c, name, self.CANNED.get(name, self.CANNED["ok"]))
        return True

    # the others: return True to keep the connection

    def do_interim_flood(self, c, path):
        """103 Early Hints for ever (bounded: 10 s or 200000 of them)."""
        hint = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        end = time.monotonic() + 10
        for _ in range(200000):
            if time.monotonic() > end:
                break
            self._send(c, "interim_flood", hint * 64)
        return False

    def do_interim_big(self, c, path):
        """Ten 103s of 8 KiB each: fewer than 16, more than 64 KiB together."""
        pad = b"x" * 8000
        for i in range(10):
            self._send(c, "interim_big", b"HTTP/1.1 103 Early Hints\r\nX-Pad: " + pad + b"\r\n\r\n")
        self._send(c, "interim_big", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
        return True

    def _endless(self, c, what, start, line):
        """`start`, then 4 MiB of `line`s that never make a complete block."""
        self._send(c, what, start)
        for _ in range(4096):
            self._send(c, what, line)
        return False

    def do_big_head(self, c, path):
        """A response head that never ends."""
        return self._endless(c, "big_head", b"HTTP/1.1 200 OK\r\n", b"X-Pad: " + b"p" * 1000 + b"\r\n")

    def do_big_trailers(self, c, path):
        """A chunked body whose trailer section never ends. The head and body
        go first, on their own: when they arrive together with more than the
        trailer buffer, the sidecar fails the exchange before the caller got
        the head and answers 502 itself (the test wants the other case, a
        response cut after its head)."""
        self._send(c, "big_trailers", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        time.sleep(0.2)
        return self._endless(c, "big_trailers", b"0\r\n", b"X-Trailer-Pad: " + b"t" * 1000 + b"\r\n")


def config(web_port, hostile_port, app_port, ports, underscores=None):
    """out: web (HTTP/1 peer); hostile: HostilePeer; retry: HostilePeer
    with retries on 5xx and no overall deadline; inbound: app."""
    limits = {"max_header_bytes": MAX_HEADER_BYTES}
    if underscores:
        limits["header_underscores"] = underscores
    return harness.base_config(
        free_port(),
        upstreams=[
            harness.upstream("web", "http1", ports["out"], [web_port], timeouts={"request": "30s"}),
            harness.upstream("hostile", "http1", ports["hostile"], [hostile_port]),
            harness.upstream("retry", "http1", ports["retry"], [hostile_port],
                             timeouts={"request": 0},
                             retries={"max_attempts": 2, "on": ["5xx"],
                                      "backoff": {"base": "1ms", "max": "5ms"}}),
        ],
        inbound={"listen_port": ports["in"], "app_port": app_port},
        limits=limits)


class HostileHttp1Test(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")
        cls.app = cls.class_http1_peer("app")
        cls.hostile = HostilePeer()
        cls.addClassCleanup(cls.hostile.close)
        cls.ports = {k: free_port() for k in ("out", "hostile", "retry", "in")}
        cls.sc = cls.class_sidecar(config(cls.web.port, cls.hostile.port, cls.app.port, cls.ports))

    def setUp(self):
        self.web.reset()
        self.app.reset()

    def routes(self):
        return [("outbound", self.ports["out"], self.web), ("inbound", self.ports["in"], self.app)]

    # -- health --------------------------------------------------------------------
    def assertHealthy(self, sc=None, port=None):
        """Alive, RSS bounded, idle CPU, and an ordinary request served."""
        sc = sc or self.sc
        port = port or self.ports["out"]
        self.assertTrue(sc.alive(), "sidecar died")
        rss = sc.rss_kib()
        self.assertLess(rss, harness.RSS_LIMIT_KIB, "RSS %d KiB" % rss)
        c0 = cpu_seconds(sc.pid)
        time.sleep(0.5)
        used = cpu_seconds(sc.pid) - c0
        self.assertLess(used, 0.15, "sidecar used %.2fs of CPU in 0.5s idle: spinning" % used)
        r = harness.http_get(port, "/echo")
        self.assertEqual(r.status, 200, r)

    def echo_doc(self, r):
        self.assertEqual(r.status, 200, r)
        doc = json.loads(r.body)
        doc["hnames"] = [k.lower() for k, _ in doc["headers"]]
        doc["tlist"] = [[k.lower(), v] for k, v in doc["trailers"]]
        return doc

    # -- identity header: trailers and '_' spellings ---------------------------------
    def test_identity_header_in_trailers_removed(self):
        """A caller cannot set the identity header as a trailer, in any
        spelling; framing and routing fields in trailers are dropped too,
        ordinary trailers pass."""
        req = chunked_post("/echo", trailers=[
            (IDH, SPOOF), ("X_Sidecar_Caller", SPOOF), ("X-Sidecar_CALLER", SPOOF),
            ("Content-Length", "5"), ("Host", "evil.example"), ("Transfer-Encoding", "chunked"),
            ("Connection", "close"), ("Authorization", "Bearer evil"), ("X-Checksum", "abc")])
        for label, port, peer in self.routes():
            with self.subTest(label):
                r, _, err = exchange(port, req)
                self.assertIsNotNone(r, err)
                doc = self.echo_doc(r)
                self.assertEqual(doc["body_length"], 5)
                self.assertEqual(doc["tlist"], [["x-checksum", "abc"]],
                                 "trailers that reached the app: %r" % doc["trailers"])
                self.assertNotIn(IDH, doc["hnames"])
        self.assertHealthy()

    def test_identity_header_underscore_spellings_removed(self):
        """X_Sidecar_Caller reads as HTTP_X_SIDECAR_CALLER in CGI-style apps:
        every spelling goes; other '_' names pass (header_underscores: allow)."""
        req = ("GET /echo HTTP/1.1\r\nHost: a\r\nX_Sidecar_Caller: %s\r\nx-sidecar_caller: %s\r\n"
               "X-SIDECAR-CALLER: %s\r\nX_Custom: 1\r\n\r\n" % (SPOOF, SPOOF, SPOOF)).encode()
        for label, port, peer in self.routes():
            with self.subTest(label):
                r, _, err = exchange(port, req)
                self.assertIsNotNone(r, err)
                doc = self.echo_doc(r)
                spelled = [n for n in doc["hnames"] if n.replace("_", "-") == IDH]
                self.assertEqual(spelled, [], "identity header spellings reached the app")
                self.assertIn("x_custom", doc["hnames"])
        self.assertHealthy()

    def test_header_underscores_drop(self):
        ports = {k: free_port() for k in ("out", "hostile", "retry", "in")}
        sc = self.sidecar(config(self.web.port, self.hostile.port, self.app.port, ports, "drop"), "drop")
        req = chunked_post("/echo", head_fields=[("X_Custom", "1"), ("X-Custom", "2")],
                           trailers=[("X_T", "1"), ("X-T", "2")])
        r, _, err = exchange(ports["out"], req)
        self.assertIsNotNone(r, err)
        doc = self.echo_doc(r)
        self.assertNotIn("x_custom", doc["hnames"])
        self.assertIn("x-custom", doc["hnames"])
        self.assertEqual(doc["tlist"], [["x-t", "2"]])
        self.assertHealthy(sc, ports["out"])

    def test_header_underscores_reject(self):
        ports = {k: free_port() for k in ("out", "hostile", "retry", "in")}
        sc = self.sidecar(config(self.web.port, self.hostile.port, self.app.port, ports, "reject"), "reject")
        before = self.web.count("requests_started")
        r, closed, err = exchange(ports["out"], b"GET /echo HTTP/1.1\r\nHost: a\r\nX_Custom: 1\r\n\r\n")
        self.assertIsNotNone(r, err)
        self.assertEqual(r.status, 400, r)
        self.assertIn(b"header_underscores", r.body)
        self.assertTrue(closed)
        self.assertEqual(self.web.count("requests_started"), before, "a refused request reached the upstream")
        # in trailers: the head went upstream, the request never completes there
        r, closed, err = exchange(ports["out"], chunked_post("/echo", trailers=[("X_T", "1")]))
        self.assertIsNotNone(r, err)
        self.assertEqual(r.status, 400, r)
        self.assertIn(b"header_underscores", r.body)
        self.assertTrue(closed)
        self.web.wait_for(lambda: self.web.inflight == 0, 3)
        self.assertEqual(self.web.count("requests_completed"), 0)
        self.assertHealthy(sc, ports["out"])

    # -- request-target forms ---------------------------------------------------------
    def test_connect_refused(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                r, closed, err = exchange(port, b"CONNECT evil.example:443 HTTP/1.1\r\n"
                                                b"Host: evil.example:443\r\n\r\n")
                self.assertIsNotNone(r, err)
                self.assertEqual(r.status, 501, r)
                self.assertEqual(r.header("x-sidecar-reason"), "connect-not-supported")
                self.assertIn(b"CONNECT is not proxied", r.body)
                self.assertTrue(closed)
                self.assertEqual(peer.count("requests_started"), 0)
        self.assertHealthy()

    def test_asterisk_form_reaches_upstream_intact(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                peer.reset()
                r, _, err = exchange(port, b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertIsNotNone(r, err)
                self.assertEqual([x["target"] for x in peer.requests()], ["*"])
                # absolute-form with an empty path: "*" too (RFC 9112 3.2.4)
                peer.reset()
                exchange(port, b"OPTIONS http://a.example:8001 HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertEqual([x["target"] for x in peer.requests()], ["*"])
        self.assertHealthy()

    def test_absolute_form(self):
        bad = [
            (b"GET http://user@evil.example?q HTTP/1.1\r\nHost: a\r\n\r\n", b"authority"),
            (b"GET http://evil.example#x HTTP/1.1\r\nHost: a\r\n\r\n", b"fragment"),
            (b"GET http://evil.example:80x/ HTTP/1.1\r\nHost: a\r\n\r\n", b"authority"),
            (b"GET http:///echo HTTP/1.1\r\nHost: a\r\n\r\n", b"authority"),
            (b"GET https://a.example/echo HTTP/1.1\r\nHost: a\r\n\r\n", b"https"),
            (b"GET ftp://a.example/echo HTTP/1.1\r\nHost: a\r\n\r\n", b"scheme"),
            (b"GET / HTTP/1.1\r\nHost: user@evil.example\r\n\r\n", b"Host"),
        ]
        for label, port, peer in self.routes():
            for data, why in bad:
                with self.subTest(listener=label, request=data[:40]):
                    r, closed, err = exchange(port, data)
                    self.assertIsNotNone(r, err)
                    self.assertEqual(r.status, 400, r)
                    self.assertIn(why, r.body)
                    self.assertTrue(closed)
            self.assertEqual(peer.count("requests_started"), 0)
            with self.subTest(listener=label, case="absolute-form wins over Host"):
                doc = self.echo_doc(exchange(port, b"GET http://good.example:8080/echo?x=1 HTTP/1.1\r\n"
                                                   b"Host: other.example\r\n\r\n")[0])
                self.assertEqual(doc["target"], "/echo?x=1")
                hosts = [v for k, v in doc["headers"] if k.lower() == "host"]
                self.assertEqual(hosts, ["good.example:8080"])
            with self.subTest(listener=label, case="query without a path"):
                peer.reset()
                exchange(port, b"GET http://good.example?x=1 HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertEqual([x["target"] for x in peer.requests()], ["/?x=1"])
        self.assertHealthy()

    # -- Connection lists -----------------------------------------------------------------
    def test_second_connection_header_request(self):
        req = (b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: x-hop\r\n"
               b"X-Hop: secret\r\nX-Keep: 1\r\n\r\n")
        for label, port, peer in self.routes():
            with self.subTest(label):
                r, _, err = exchange(port, req)
                self.assertIsNotNone(r, err)
                doc = self.echo_doc(r)
                self.assertNotIn("x-hop", doc["hnames"])
                self.assertNotIn("connection", doc["hnames"])
                self.assertIn("x-keep", doc["hnames"])
        self.assertHealthy()

    def test_second_connection_header_response(self):
        r = harness.http_get(self.ports["hostile"], "/conn2")
        self.assertEqual(r.status, 200, r)
        names = [k.lower() for k, _ in r.headers]
        self.assertNotIn("x-a", names)
        self.assertNotIn("x-b", names)
        self.assertIn("x-c", names)
        self.assertHealthy()

    def test_forbidden_response_trailers_dropped(self):
        r = harness.http_get(self.ports["hostile"], "/bad-trailers", headers=[("TE", "trailers")])
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, b"hello")
        self.assertEqual([(k.lower(), v) for k, v in r.trailers], [("x-t", "1")],
                         "trailers passed to the caller: %r" % r.trailers)
        self.assertHealthy()

    # -- hostile upstream --------------------------------------------------------------
    def hostile_call(self, path, want_status=502, timeout=8.0):
        """A request to the hostile upstream: the caller gets `want_status`
        (or, when the head was already forwarded, a closed connection) in
        bounded time, while the sidecar's RSS stays bounded."""
        t0 = time.monotonic()
        with harness.RssSampler(self.sc.pid) as rss:
            r, closed, err = exchange(self.ports["hostile"],
                                      ("GET %s HTTP/1.1\r\nHost: a\r\n\r\n" % path).encode(), timeout)
        took = time.monotonic() - t0
        self.assertLess(took, timeout, "no answer for %s" % path)
        self.assertLess(rss.max_kib, harness.RSS_LIMIT_KIB, "RSS during %s" % path)
        if want_status is not None:
            self.assertIsNotNone(r, err)
            self.assertEqual(r.status, want_status, r)
        return r, closed

    def test_endless_early_hints(self):
        r, _ = self.hostile_call("/interim-flood")
        self.assertEqual(r.header("x-sidecar-reason"), "upstream-protocol-error")
        self.assertLessEqual(len(r.interim), 16, "1xx forwarded: %d" % len(r.interim))
        self.assertTrue(harness.wait_until(lambda: "informational (1xx)" in self.sc.log_text(), 3),
                        self.sc.log_tail())
        self.assertHealthy()

    def test_early_hints_bytes_bounded(self):
        r, _ = self.hostile_call("/interim-big")
        self.assertEqual(r.header("x-sidecar-reason"), "upstream-protocol-error")
        self.assertHealthy()

    def test_endless_response_head(self):
        r, _ = self.hostile_call("/big-head")
        self.assertEqual(r.header("x-sidecar-reason"), "upstream-protocol-error")
        self.assertTrue(harness.wait_until(lambda: "max_header_bytes" in self.sc.log_text(), 3))
        self.assertHealthy()

    def test_endless_response_trailers(self):
        """The head and body were forwarded; the trailer section overflows:
        the caller's connection is cut (HTTP/1.1 has no other way to say the
        response is incomplete), no terminating chunk is sent."""
        t0 = time.monotonic()
        with RawConn(self.ports["hostile"], timeout=8) as c:
            c.send(b"GET /big-trailers HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
            data = c.read_until_close(time.monotonic() + 8, limit=1 << 20)
        self.assertLess(time.monotonic() - t0, 8)
        self.assertTrue(data.startswith(b"HTTP/1.1 200 "), data[:100])
        self.assertNotIn(b"\r\n0\r\n", data, "a complete chunked end was sent for a broken response")
        self.assertHealthy()

    def test_grpc_status_garbage_is_no_status(self):
        """grpc-status '0:' once became 10 (ABORTED) in the per-status counters."""
        def aborted():
            return self.sc.stats().value("sidecar_upstream_grpc_responses_total", upstream="hostile",
                                         grpc_status="aborted") or 0
        before = aborted()
        with RawConn(self.ports["hostile"]) as c:
            c.send(b"POST /grpc-garbage HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc\r\n"
                   b"Content-Length: 0\r\n\r\n")
            r = c.read_response()
        self.assertEqual(r.status, 200, r)
        time.sleep(0.2)
        self.assertEqual(aborted(), before)
        self.assertHealthy()

    def test_retry_after_far_future_not_waited_for(self):
        """A 503 with Retry-After: 99999999999 on an upstream retried on 5xx
        without an overall deadline: not retried, the 503 goes back at once."""
        before = self.hostile.count("/retry-forever")
        t0 = time.monotonic()
        with RawConn(self.ports["retry"], timeout=5) as c:
            c.send(b"GET /retry-forever HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response(5)
        self.assertEqual(r.status, 503, r)
        self.assertEqual(r.header("retry-after"), "99999999999")
        self.assertLess(time.monotonic() - t0, 2)
        self.assertEqual(self.hostile.count("/retry-forever") - before, 1)
        self.assertHealthy()

    # -- pipelining -----------------------------------------------------------------------
    def bad_requests(self):
        return self.sc.stats().value("sidecar_downstream_bad_requests_total")

    def test_refused_pipelined_request_keeps_earlier_response(self):
        """A (3 MB) and a malformed B in one write; A is read slowly (a small
        receive buffer, small reads) until B was refused, so that the end of
        A still waits in the sidecar's output buffer behind a full socket
        (the refusal used to discard it). The caller gets all of A, then B's
        400, then the close."""
        n = 3000000
        for label, port, peer in self.routes():
            with self.subTest(label):
                before = self.bad_requests()
                with RawConn(port, timeout=20, rcvbuf=4096) as c:
                    c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE / HTTP/9\r\n\r\n" % n)
                    read_until_close(c, n + 65536, time.monotonic() + 30,
                                     slow_while=lambda: self.bad_requests() == before)
                    self.assertGreater(self.bad_requests(), before, "B was never refused")
                    self.assertTrue(c.eof, "connection not closed after the refusal")
                    a = c.read_response(1)
                    self.assertEqual(a.status, 200)
                    self.assertEqual(len(a.body), n)
                    self.assertEqual(hashlib.sha256(a.body).hexdigest(), pattern_sha256(n))
                    b = c.read_response(1)
                    self.assertEqual(b.status, 400, b)
                    self.assertEqual(b.header("connection"), "close")
                    self.assertEqual(c.buf, b"")
        self.assertHealthy()

    def test_pipelined_request_after_a_body_ending_a_full_pipe(self):
        """A response whose last byte exactly fills the sidecar's response
        pipe (here 256 KiB read by a slow caller) used to never end: the
        decoder stopped at the full pipe and nothing was left to read that
        would bring it back, so the pipelined request behind it hung until
        the request timeout."""
        n = 262144
        for i in range(6):
            with RawConn(self.ports["out"], timeout=5, rcvbuf=16384) as c:
                c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\nGARBAGE / HTTP/9\r\n\r\n" % n)
                t0 = time.monotonic()
                read_until_close(c, n + 65536, time.monotonic() + 4, slow_while=lambda: True)
                self.assertTrue(c.eof, "round %d: stalled after %d bytes (%.1fs)"
                                % (i, len(c.buf), time.monotonic() - t0))
                self.assertEqual(len(c.read_response(1).body), n)
                self.assertEqual(c.read_response(1).status, 400)
        self.assertHealthy()

    def test_upload_filling_the_pipe_exactly_keeps_alive(self):
        """A request body of exactly stream_buffer (64 KiB) or twice that
        used to leave the request unfinished (the end never seen), so the
        keep-alive connection was dropped after the response."""
        for n in (65536, 131072):
            for i in range(3):
                with self.subTest(n=n, round=i), RawConn(self.ports["out"], timeout=5) as c:
                    c.send(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % n + b"y" * n)
                    r = c.read_response()
                    self.assertEqual(json.loads(r.body)["body_length"], n)
                    c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                    self.assertEqual(c.read_response().status, 200)
        self.assertHealthy()

    def test_refused_pipelined_after_small_responses(self):
        """Several small valid requests and a bad one in one write: every
        answer in order, the 400 last."""
        reqs = b"".join(b"GET /status/%d HTTP/1.1\r\nHost: a\r\n\r\n" % (200 + i) for i in range(4))
        reqs += b"GET /echo HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n"
        with RawConn(self.ports["out"], timeout=10) as c:
            c.send(reqs)
            for i in range(4):
                self.assertEqual(c.read_response().status, 200 + i)
            self.assertEqual(c.read_response().status, 400)
            self.assertClosed(c)
        self.assertHealthy()


if __name__ == "__main__":
    unittest.main()

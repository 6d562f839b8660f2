"""Malformed and hostile HTTP/1.1 on both listeners (outbound and inbound).

Every bad request must get the right 4xx (400, 414 for a long request line,
431 for an oversized head), the connection must be closed, and nothing may
reach the upstream / app. A slowloris client is cut off after the inbound
header_read timeout. Limits are checked from both sides: just under them
passes.
"""

import json
import socket
import time
import unittest

import harness
from harness import RawConn, SidecarTestCase, free_port

HEADER_READ_S = 2.0

# (name, request bytes, acceptable statuses)
BAD_HEADS = [
    ("cl_and_te", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
    ("te_and_cl", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 5\r\n\r\n0\r\n\r\n", {400}),
    ("duplicate_cl_differ", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
                            b"Content-Length: 6\r\n\r\nhello!", {400}),
    ("cl_list_differ", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!", {400}),
    ("cl_alpha", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", {400}),
    ("cl_negative", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", {400}),
    ("cl_plus", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello", {400}),
    ("cl_hex", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello", {400}),
    ("cl_overflow", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 184467440737095516160\r\n\r\n",
     {400, 413}),
    ("te_not_chunked", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", {400, 501}),
    ("te_xchunked", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", {400, 501}),
    ("te_chunked_not_last", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
     {400, 501}),
    ("nul_in_value", b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n", {400}),
    ("cr_in_value", b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n", {400}),
    ("bare_lf", b"GET /echo HTTP/1.1\nHost: a\nX-A: b\n\n", {400}),
    ("bare_lf_one_header", b"GET /echo HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", {400}),
    ("obs_fold", b"GET /echo HTTP/1.1\r\nHost: a\r\nX-A: a\r\n  folded\r\n\r\n", {400}),
    ("space_before_colon", b"GET /echo HTTP/1.1\r\nHost : a\r\n\r\n", {400}),
    ("bad_header_name", b"GET /echo HTTP/1.1\r\nHost: a\r\nX@A: b\r\n\r\n", {400}),
    ("empty_header_name", b"GET /echo HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", {400}),
    ("missing_host", b"GET /echo HTTP/1.1\r\nX-A: b\r\n\r\n", {400}),
    ("duplicate_host", b"GET /echo HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", {400}),
    ("bad_method", b"G(T /echo HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("bad_version", b"GET /echo HTTP/1.7\r\nHost: a\r\n\r\n", {400, 505}),
    ("garbage_line", b"hello\r\n\r\n", {400}),
    ("space_in_target", b"GET /ec ho HTTP/1.1\r\nHost: a\r\n\r\n", {400}),
    ("request_line_too_long", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", {414}),
    ("header_block_too_large", b"GET /echo HTTP/1.1\r\nHost: a\r\n"
                               + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 30000) for i in range(3))
                               + b"\r\n", {431}),
    ("too_many_headers", b"GET /echo HTTP/1.1\r\nHost: a\r\n"
                         + b"".join(b"X-H-%d: v\r\n" % i for i in range(300)) + b"\r\n", {431, 400}),
]

# bodies that go bad after a valid head (the head may already be upstream)
BAD_BODIES = [
    ("bad_chunk_size", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nhello\r\n0\r\n\r\n"),
    ("chunk_size_overflow", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
    ("chunk_missing_crlf", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nhelloXX3\r\nabc\r\n0\r\n\r\n"),
    ("chunk_negative", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"-5\r\nhello\r\n0\r\n\r\n"),
]


def exchange(port, data, timeout=5.0):
    """Sends `data`, reads one response. Returns (Response or None, closed,
    error text)."""
    with RawConn(port, timeout=timeout) as c:
        try:
            c.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass   # the sidecar may refuse before reading everything
        try:
            r = c.read_response(timeout)
        except (EOFError, ConnectionResetError) as e:
            return None, True, "no response: %s" % e
        except socket.timeout:
            return None, False, "no response within %.1fs" % timeout
        return r, c.closed_by_peer(2.0), None


class MalformedTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")
        cls.app = cls.class_http1_peer("app")
        cls.out_port = free_port()
        cls.in_port = free_port()
        cfg = harness.base_config(
            free_port(),
            upstreams=[harness.upstream("web", "http1", cls.out_port, [cls.web.port])],
            inbound={"listen_port": cls.in_port, "app_port": cls.app.port,
                     "timeouts": {"header_read": "%dms" % int(HEADER_READ_S * 1000)}},
            limits={"max_header_bytes": 65536, "max_request_line": 8192})
        cls.sc = cls.class_sidecar(cfg)

    def setUp(self):
        self.web.reset()
        self.app.reset()

    def routes(self):
        return [("outbound", self.out_port, self.web), ("inbound", self.in_port, self.app)]

    def test_bad_heads_refused(self):
        for label, port, peer in self.routes():
            for name, data, statuses in BAD_HEADS:
                with self.subTest(listener=label, case=name):
                    r, closed, err = exchange(port, data)
                    self.assertIsNotNone(r, err)
                    self.assertIn(r.status, statuses, "%s: got %s" % (name, r))
                    self.assertTrue(closed, "%s: connection left open after %d" % (name, r.status))
            self.assertEqual(peer.count("requests_started"), 0,
                             "%s: %d bad request(s) reached the peer: %s"
                             % (label, peer.count("requests_started"),
                                [x["target"][:60] for x in peer.requests()]))

    def test_bad_bodies_not_delivered(self):
        for label, port, peer in self.routes():
            for name, data in BAD_BODIES:
                with self.subTest(listener=label, case=name):
                    peer.reset()
                    r, closed, err = exchange(port, data)
                    if r is not None:
                        self.assertGreaterEqual(r.status, 400, "%s: bad body answered %s" % (name, r))
                        # a complete error response must still end the connection
                        self.assertTrue(closed, "%s: connection left open" % name)
                    else:
                        self.assertTrue(closed, "%s: %s" % (name, err))
                    # whatever reached the peer must not be a complete request
                    peer.wait_for(lambda: peer.inflight == 0, 3)
                    self.assertEqual(peer.count("requests_completed"), 0,
                                     "%s: the peer got a complete request from a bad body" % name)

    def test_bad_requests_are_counted(self):
        """Refused requests show up in /stats (a metric named *bad_request*)."""
        def bad_total(st):
            return sum(v for n, _, v in st.samples if "bad_request" in n)
        before = bad_total(self.sc.stats())
        for name, data, _ in BAD_HEADS[:5]:
            exchange(self.out_port, data)
        self.assertTrue(harness.wait_until(lambda: bad_total(self.sc.stats()) - before >= 5, 2),
                        "5 refused requests, bad_request metrics moved by %s"
                        % (bad_total(self.sc.stats()) - before))

    def test_smuggling_second_request_not_forwarded(self):
        """CL+TE with a request hidden in the body: the hidden one must never run."""
        smuggle = (b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 44\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n"
                   b"0\r\n\r\nGET /status/299 HTTP/1.1\r\nHost: a\r\n\r\n")
        for label, port, peer in self.routes():
            with self.subTest(label):
                r, closed, err = exchange(port, smuggle)
                self.assertIsNotNone(r, err)
                self.assertEqual(r.status, 400)
                self.assertTrue(closed)
                self.assertEqual(peer.requests("/status/299"), [])
                self.assertEqual(peer.count("requests_started"), 0)

    def test_limits_just_below_pass(self):
        for label, port, peer in self.routes():
            with self.subTest(label):
                target = b"/echo?" + b"a" * 8000
                r, _, err = exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertIsNotNone(r, err)
                self.assertEqual(r.status, 200, r)
                self.assertEqual(json.loads(r.body)["target"], target.decode())
                head = (b"GET /echo HTTP/1.1\r\nHost: a\r\n"
                        + b"".join(b"X-Big-%d: %s\r\n" % (i, b"v" * 29000) for i in range(2)) + b"\r\n")
                self.assertLess(len(head), 65536)
                r, _, err = exchange(port, head)
                self.assertIsNotNone(r, err)
                self.assertEqual(r.status, 200, r)
                hdrs = {k.lower(): v for k, v in json.loads(r.body)["headers"]}
                self.assertEqual(len(hdrs.get("x-big-1", "")), 29000)

    def test_sidecar_survives_garbage(self):
        """Random-ish binary garbage on both listeners; the sidecar keeps serving."""
        import random
        rnd = random.Random(7)
        for label, port, peer in self.routes():
            for i in range(30):
                blob = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 3000)))
                try:
                    with RawConn(port, timeout=2) as c:
                        c.send(blob)
                        c.closed_by_peer(0.05)
                except OSError:
                    pass
            r = harness.http_get(port, "/echo")
            self.assertEqual(r.status, 200)
        self.assertTrue(self.sc.alive())

    def test_slowloris_cut_off(self):
        """One header byte every 0.4 s never completes a head: the inbound
        listener must close the connection after header_read (2 s)."""
        with RawConn(self.in_port, timeout=10) as c:
            t0 = time.monotonic()
            closed_at = None
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\nX-Slow: ")
            for _ in range(40):                      # at most 16 s
                try:
                    c.send(b"a")
                except (BrokenPipeError, ConnectionResetError):
                    closed_at = time.monotonic()
                    break
                if c.closed_by_peer(0.4):
                    closed_at = time.monotonic()
                    break
            self.assertIsNotNone(closed_at, "slowloris connection still open after %.1fs"
                                 % (time.monotonic() - t0))
            took = closed_at - t0
            self.assertBetween(took, HEADER_READ_S - 0.3, HEADER_READ_S + 2.0,
                               "closed after %.2fs, header_read is %.1fs" % (took, HEADER_READ_S))
            if c.buf:
                self.assertRegex(c.buf, rb"^HTTP/1\.1 (408|400) ", c.buf[:200])
        self.assertEqual(self.app.count("requests_started"), 0)

    def test_idle_open_connection_without_bytes_is_cut_off(self):
        """A connection that sends nothing at all is also closed on the inbound
        listener once header_read passed (before the 60 s idle timeout)."""
        with RawConn(self.in_port, timeout=10) as c:
            t0 = time.monotonic()
            closed = c.closed_by_peer(HEADER_READ_S + 3.0)
            took = time.monotonic() - t0
        self.assertTrue(closed, "an empty connection stayed open %.1fs" % took)
        self.assertLess(took, HEADER_READ_S + 2.0)


if __name__ == "__main__":
    unittest.main()

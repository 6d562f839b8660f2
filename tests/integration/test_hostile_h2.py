"""Hostile HTTP/2 peers on both sides of the sidecar, frames written by hand
(tests/peers/h2_raw.py: raw sockets, python3-hpack for header blocks):

- callers: header lists that HPACK makes cheap on the wire and large once
  decoded (one field in the dynamic table named again by index), in the
  head and in trailers; a CONTINUATION flood; CONNECT and extended
  CONNECT; the identity header forged in trailers and in '_' spellings;
  limits.header_underscores; cookie crumbs towards an HTTP/1.1 app.
- upstreams (H2Upstream): the same amplified lists in a response head and
  in trailers, endless 103 Early Hints, garbage grpc-status, a stream
  refused or GOAWAY'd on every try, a SETTINGS_MAX_HEADER_LIST_SIZE
  smaller than the request head, and a request head of 1 MiB.

Each attack checks the answer (status / RST_STREAM / GOAWAY), that the
sidecar's RSS stayed bounded while it ran, that it does not spin
afterwards (CPU time over an idle second), and that it serves normally
afterwards. Every loop is bounded in frames and seconds.
"""
import json
import os
import shutil
import ssl
import tempfile
import time
import unittest

import harness
from harness import SidecarTestCase, free_port, wait_until

import h2_raw
from h2_raw import H2Conn, H2Upstream, amplified, frame, list_size

RSS_GROWTH_LIMIT_KIB = int(os.environ.get("SC_RSS_GROWTH_LIMIT_MIB", "32")) * 1024
MAX_HEADER_BYTES = 65536
IDLE_CPU_LIMIT_S = 0.25      # CPU time the sidecar may use in an idle second after an attack
IDENTITY = "x-sidecar-caller"


def cpu_seconds(pid):
    """user + system CPU time of a process, in seconds (/proc/<pid>/stat)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def h2_upstream(owner, **kw):
    u = H2Upstream(**kw)
    u.start()
    (owner.addClassCleanup if isinstance(owner, type) else owner.addCleanup)(u.stop)
    return u


class HostileBase(SidecarTestCase):
    """Checks shared by every attack."""

    def assertBoundedAndIdle(self, sampler, what):
        growth = sampler.max_kib - sampler.first_kib
        self.assertLess(growth, RSS_GROWTH_LIMIT_KIB,
                        "%s: RSS grew by %d KiB (limit %d KiB)" % (what, growth, RSS_GROWTH_LIMIT_KIB))
        time.sleep(0.2)
        c0 = cpu_seconds(self.sc.pid)
        time.sleep(1.0)
        used = cpu_seconds(self.sc.pid) - c0
        self.assertLess(used, IDLE_CPU_LIMIT_S, "%s: the sidecar used %.2fs of CPU in an idle second "
                        "afterwards (spinning?)\n%s" % (what, used, self.sc.log_tail(10)))

    def attack(self):
        return harness.RssSampler(self.sc.pid)

    def bad_requests(self, reason):
        return self.sc.stats().value("sidecar_downstream_bad_requests_total", reason=reason) or 0

    def h2_get_ok(self, port, path="/echo"):
        with H2Conn(port) as c:
            st = c.response(c.get(path))
            self.assertEqual(st.status, 200, st)
            return st


class HostileCallersTest(HostileBase):
    """Callers on an outbound listener whose upstream is the HTTP/1.1 peer
    (/echo shows what reached the app), and on one towards an HTTP/2 peer."""

    @classmethod
    def setUpClass(cls):
        cls.app = cls.class_http1_peer("app")
        cls.up = h2_upstream(cls, name="h2app")
        cls.port = free_port()
        cls.h2port = free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), [
            harness.upstream("web", "http1", cls.port, [cls.app.port]),
            harness.upstream("h2web", "http2", cls.h2port, [cls.up.port]),
        ], workers=1, limits={"max_header_bytes": MAX_HEADER_BYTES}))

    def still_serves(self):
        self.h2_get_ok(self.port)
        with harness.RawConn(self.port) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)

    def app_requests(self):
        return self.app.count("requests_started")

    # -- header lists beyond limits.max_header_bytes ---------------------------

    def test_amplified_request_head_is_reset_not_decoded_into_memory(self):
        """24 KiB on the wire, 96 MiB once decoded, on a stream left open."""
        hdrs = amplified(refs=24000)
        before_app, before_bad = self.app_requests(), self.bad_requests("header_too_large")
        with self.attack() as rss, H2Conn(self.port) as c:
            sid = c.get("/echo", extra=hdrs, end_stream=False)
            st = c.response(sid, timeout=10)
            self.assertTrue(st.rst is not None or st.status == 431, st)
            # the same connection still serves
            ok = c.response(c.get("/echo"))
            self.assertEqual(ok.status, 200, ok)
        self.assertBoundedAndIdle(rss, "amplified request head (%d MiB decoded)" % (list_size(hdrs) >> 20))
        self.assertEqual(self.app_requests() - before_app, 1, "only the good request reaches the app")
        self.assertGreater(self.bad_requests("header_too_large"), before_bad)
        self.assertIn("counted as HPACK does", self.sc.log_text())
        self.still_serves()

    def test_many_oversized_heads_end_the_connection(self):
        """Each oversized head costs the sidecar work for a few bytes on the
        wire (the large field is indexed once for all streams): past a bound
        the connection ends with GOAWAY ENHANCE_YOUR_CALM, counted as a flood."""
        floods = self.bad_requests("h2_flood")
        with self.attack() as rss, H2Conn(self.port) as c:
            sent = 0
            try:
                for _ in range(150):
                    c.get("/echo", extra=amplified(refs=40))     # ~160 KiB decoded, ~60 bytes sent
                    sent += 1
            except (BrokenPipeError, ConnectionResetError):
                pass
            c.wait(lambda: c.goaway is not None, timeout=5)
            # GOAWAY, unless the close that follows it reset the connection
            # while our frames were still arriving (then it may be lost)
            self.assertTrue(c.goaway is not None or c.closed or sent < 150,
                            "the connection survived %d oversized heads" % sent)
            if c.goaway is not None:
                self.assertEqual(c.goaway[1], h2_raw.ENHANCE_YOUR_CALM)
        self.assertBoundedAndIdle(rss, "oversized heads on one connection")
        self.assertTrue(wait_until(lambda: self.bad_requests("h2_flood") > floods, timeout=3))
        self.assertIn("header blocks over limits.max_header_bytes", self.sc.log_text())
        self.still_serves()

    def test_head_just_over_the_limit_is_answered_431(self):
        over = [("x-f%02d" % i, "a" * 3500) for i in range(20)]          # ~70 KiB, distinct fields
        self.assertGreater(list_size(over), MAX_HEADER_BYTES)
        under = [("x-f%02d" % i, "a" * 3500) for i in range(17)]         # ~60 KiB
        self.assertLess(list_size(under) + 200, MAX_HEADER_BYTES)
        before = self.app_requests()
        with H2Conn(self.port) as c:
            st = c.response(c.get("/echo", extra=over))
            self.assertEqual(st.status, 431, st)
            self.assertEqual(st.header("x-sidecar-reason"), "request-headers-too-large")
            self.assertIn(b"limits.max_header_bytes", st.data)
            g = c.response(c.get("/echo", extra=over + [("content-type", "application/grpc")]))
            self.assertEqual(g.status, 200, g)
            self.assertEqual(g.header("grpc-status"), "8", g)      # RESOURCE_EXHAUSTED
            self.assertEqual(self.app_requests(), before, "a refused head reached the app")
            ok = c.response(c.get("/echo", extra=under))
            self.assertEqual(ok.status, 200, ok)
        self.still_serves()

    def test_amplified_trailers_reset_the_stream(self):
        with self.attack() as rss, H2Conn(self.port) as c:
            sid = c.get("/echo", method="POST", body=b"hello", trailers=amplified(refs=24000))
            st = c.response(sid, timeout=10)
            self.assertIsNotNone(st.rst, st)
            self.assertNotEqual(st.status, 200, st)
        self.assertBoundedAndIdle(rss, "amplified request trailers")
        self.still_serves()

    def test_continuation_flood_ends_the_connection(self):
        """HEADERS without END_HEADERS, then CONTINUATION frames without end
        (CVE-2024-28182): the connection is ended, bounded CPU and memory."""
        with self.attack() as rss, H2Conn(self.port) as c:
            block = c.encode([(":method", "GET"), (":scheme", "http"), (":path", "/echo"),
                              (":authority", "a")])
            c.send(frame(h2_raw.HEADERS, h2_raw.END_STREAM, 1, block))
            sent = 0
            try:
                for _ in range(200):               # at most 200 x 100 small CONTINUATIONs
                    c.send(b"".join(frame(h2_raw.CONTINUATION, 0, 1, c.encode([("x-c", "1")]))
                                    for _ in range(100)))
                    sent += 100
            except (BrokenPipeError, ConnectionResetError):
                pass
            c.wait(lambda: c.goaway is not None, timeout=5)
            self.assertTrue(c.goaway is not None or c.closed, "the connection survived %d CONTINUATIONs" % sent)
        self.assertBoundedAndIdle(rss, "CONTINUATION flood")
        self.still_serves()

    # -- CONNECT -----------------------------------------------------------------

    def test_connect_is_refused_not_forwarded(self):
        before = self.app_requests()
        with H2Conn(self.port) as c:
            st = c.response(c.request([(":method", "CONNECT"), (":authority", "127.0.0.1:22")]))
            self.assertEqual(st.status, 501, st)
            self.assertEqual(st.header("x-sidecar-reason"), "method-not-supported")
            self.assertIn(b"CONNECT is not proxied", st.data)
            # extended CONNECT (RFC 8441): never enabled, so refused by nghttp2 or by us
            ext = c.response(c.request([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                        (":path", "/chat"), (":authority", "a")]))
            self.assertTrue(ext.rst is not None or ext.status == 501, ext)
        self.assertEqual(self.app_requests(), before, "CONNECT reached the app")
        self.still_serves()

    # -- filtering ------------------------------------------------------------------

    def test_identity_header_forged_in_trailers_or_spelling_is_dropped(self):
        forged = "spiffe://evil/ns/default/dc/dc1/svc/admin"
        head = [("x_sidecar_caller", forged), ("x-sidecar-caller", forged), ("x-kept", "1")]
        trailers = [("x-sidecar-caller", forged), ("x_sidecar_caller", forged), ("x-trailer-kept", "2")]
        for port, name in ((self.port, "HTTP/1.1 app"), (self.h2port, "HTTP/2 app")):
            with H2Conn(port) as c:
                st = c.response(c.get("/echo", method="POST", extra=head, body=b"data", trailers=trailers))
                self.assertEqual(st.status, 200, st)
            seen = json.loads(st.data)
            names = [n.lower() for n, _ in seen["headers"]]
            tnames = [n.lower() for n, _ in seen["trailers"] or []]
            for spelling in ("x-sidecar-caller", "x_sidecar_caller"):
                self.assertNotIn(spelling, names, "%s: forged head field reached the app" % name)
                self.assertNotIn(spelling, tnames, "%s: forged trailer reached the app: %r" % (name, seen))
            self.assertIn("x-kept", names, name)
            self.assertIn("x-trailer-kept", tnames, "%s: %r" % (name, seen))

    def test_upper_case_field_names_are_refused(self):
        """HTTP/2 field names are lower-case (RFC 9113 8.2.1); the sidecar
        relies on it (it does not lower-case them again): a caller's request
        with an upper-case name in its head is reset and never reaches the
        app; one in its trailers is reset (the head may have gone on: the
        app sees a request cut short, never the trailer)."""
        before = self.app_requests()
        with H2Conn(self.port) as c:
            st = c.response(c.get("/echo", extra=[("X-Upper", "1")]))
            self.assertEqual(st.rst, h2_raw.PROTOCOL_ERROR, st)
            self.assertEqual(self.app_requests(), before, "a head with an upper-case field name reached the app")
            st = c.response(c.get("/echo", method="POST", body=b"d", trailers=[("X-Upper", "1")]))
            self.assertEqual(st.rst, h2_raw.PROTOCOL_ERROR, st)
        self.still_serves()

    def test_cookie_crumbs_reach_an_http1_app_as_one_field(self):
        with H2Conn(self.port) as c:
            st = c.response(c.get("/echo", extra=[("cookie", "a=1"), ("x-between", "y"), ("cookie", "b=2"),
                                                  ("cookie", "c=3")]))
            self.assertEqual(st.status, 200, st)
        cookies = [v for n, v in json.loads(st.data)["headers"] if n.lower() == "cookie"]
        self.assertEqual(cookies, ["a=1; b=2; c=3"])


class UnderscoreBase(HostileBase):
    """An outbound listener towards the HTTP/1.1 peer with limits.header_underscores: MODE."""
    MODE = None

    @classmethod
    def setUpClass(cls):
        cls.app = cls.class_http1_peer("app")
        cls.port = free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), [
            harness.upstream("web", "http1", cls.port, [cls.app.port]),
        ], workers=1, limits={"header_underscores": cls.MODE}))


class UnderscoreDropTest(UnderscoreBase):
    MODE = "drop"

    def test_underscored_fields_are_dropped_from_head_and_trailers(self):
        with H2Conn(self.port) as c:
            st = c.response(c.get("/echo", method="POST", extra=[("x_user", "a"), ("x-user", "b")], body=b"d",
                                  trailers=[("x_t", "1"), ("x-t", "2")]))
            self.assertEqual(st.status, 200, st)
        seen = json.loads(st.data)
        self.assertEqual([(n.lower(), v) for n, v in seen["headers"] if n.lower() in ("x_user", "x-user")],
                         [("x-user", "b")])
        self.assertEqual([(n.lower(), v) for n, v in seen["trailers"]], [("x-t", "2")])


class UnderscoreRejectTest(UnderscoreBase):
    MODE = "reject"

    def test_underscored_field_refuses_the_request(self):
        before = self.app.count("requests_started")
        with H2Conn(self.port) as c:
            st = c.response(c.get("/echo", extra=[("x_user", "a")]))
            self.assertEqual(st.status, 400, st)
            self.assertEqual(st.header("x-sidecar-reason"), "bad-request")
            self.assertEqual(self.app.count("requests_started"), before)
            tr = c.response(c.get("/echo", method="POST", body=b"d", trailers=[("x_t", "1")]))
            self.assertIsNotNone(tr.rst, tr)
            ok = c.response(c.get("/echo", extra=[("x-user", "a")]))
            self.assertEqual(ok.status, 200, ok)
        self.assertIn("limits.header_underscores: reject", self.sc.log_text())


class DeniedCallerTest(HostileBase):
    """An inbound TLS listener with tls.allow; the caller's certificate is
    valid (same CA) but its identity is not allowed: nothing of its headers
    is kept, whatever HPACK makes of them."""

    @classmethod
    def setUpClass(cls):
        cls.certs = tempfile.mkdtemp(prefix="sc-it-hostile-h2-")
        cls.addClassCleanup(shutil.rmtree, cls.certs, True)
        r = harness.run(["sh", os.path.join(harness.ROOT, "certs", "make-certs.sh"), "--out", cls.certs,
                         "--trust-domain", "example.org", "api", "batch"], timeout=60)
        if r.returncode != 0:
            raise AssertionError("make-certs.sh failed: %s" % r.stderr.decode())
        cls.app = cls.class_http1_peer("app")
        cls.port = free_port()
        cfg = harness.base_config(free_port(), inbound={"listen_port": cls.port, "app_port": cls.app.port},
                                  workers=1, name="api")
        cfg["tls"] = {"cert": os.path.join(cls.certs, "api.pem"), "key": os.path.join(cls.certs, "api.key"),
                      "ca": os.path.join(cls.certs, "ca-bundle.pem"),
                      "allow": ["spiffe://example.org/ns/default/dc/dc1/svc/web"]}
        cls.sc = cls.class_sidecar(cfg)

    def tls(self):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False       # the sidecar's identity is a SPIFFE URI, not a host name
        ctx.load_verify_locations(os.path.join(self.certs, "ca-bundle.pem"))
        ctx.load_cert_chain(os.path.join(self.certs, "batch.pem"), os.path.join(self.certs, "batch.key"))
        return ctx

    def test_denied_caller_gets_403_and_nothing_of_its_headers_is_kept(self):
        before = self.app.count("requests_started")
        with self.attack() as rss, H2Conn(self.port, tls=self.tls()) as c:
            st = c.response(c.get("/echo", extra=[("x-f%02d" % i, "a" * 3000) for i in range(20)]))
            self.assertEqual(st.status, 403, st)
            self.assertEqual(st.header("x-sidecar-reason"), "caller-not-allowed")
            amp = c.response(c.get("/echo", extra=amplified(refs=24000), end_stream=False), timeout=10)
            self.assertTrue(amp.rst is not None or amp.status in (403, 431), amp)
            g = c.response(c.get("/echo", extra=[("content-type", "application/grpc")]))
            self.assertEqual(g.header("grpc-status"), "7", g)     # PERMISSION_DENIED
        self.assertBoundedAndIdle(rss, "denied caller's amplified head")
        self.assertEqual(self.app.count("requests_started"), before, "a denied caller reached the app")


class HostileUpstreamTest(HostileBase):
    """HTTP/2 upstreams that misbehave (H2Upstream), called by HTTP/2 and
    HTTP/1.1 callers."""

    @classmethod
    def setUpClass(cls):
        cls.up = h2_upstream(cls, name="hostile")
        cls.tight = h2_upstream(cls, name="tight", settings={h2_raw.SETTINGS_MAX_HEADER_LIST_SIZE: 16384})
        cls.port = free_port()
        cls.tight_port = free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), [
            harness.upstream("hostile", "http2", cls.port, [cls.up.port]),
            harness.upstream("tight", "http2", cls.tight_port, [cls.tight.port]),
        ], workers=1, limits={"max_header_bytes": MAX_HEADER_BYTES}))

    def still_serves(self):
        self.h2_get_ok(self.port, "/ok")
        with harness.RawConn(self.port) as c:
            c.send(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)

    def test_amplified_response_head_fails_the_request(self):
        with self.attack() as rss:
            with H2Conn(self.port) as c:
                st = c.response(c.get("/huge-headers?n=24000"), timeout=10)
                self.assertEqual(st.status, 502, st)
                self.assertEqual(st.header("x-sidecar-reason"), "upstream-protocol-error")
            with harness.RawConn(self.port) as c:
                c.send(b"GET /huge-headers?n=24000 HTTP/1.1\r\nHost: a\r\n\r\n")
                self.assertEqual(c.read_response(timeout=10).status, 502)
        self.assertBoundedAndIdle(rss, "amplified response head")
        self.assertIn("sent response header fields over", self.sc.log_text())
        self.still_serves()

    def test_amplified_response_trailers_end_the_response(self):
        with self.attack() as rss, H2Conn(self.port) as c:
            st = c.response(c.get("/huge-trailers?n=24000"), timeout=10)
            self.assertTrue(st.rst is not None or st.status == 502, st)
            self.assertIsNone(st.trailers, "the huge trailers were forwarded")
        self.assertBoundedAndIdle(rss, "amplified response trailers")
        self.still_serves()

    def test_endless_early_hints_are_cut_off(self):
        with self.attack() as rss:
            with H2Conn(self.port) as c:
                st = c.response(c.get("/hints?n=3000&len=3000"), timeout=10)
                self.assertEqual(st.status, 502, st)
                self.assertLessEqual(len(st.informational), 8)
            with harness.RawConn(self.port) as c:
                c.send(b"GET /hints?n=3000&len=3000 HTTP/1.1\r\nHost: a\r\n\r\n")
                r = c.read_response(timeout=10)
                self.assertEqual(r.status, 502, r)
                self.assertLessEqual(len(r.interim), 8)
        self.assertBoundedAndIdle(rss, "103 flood")
        self.assertIn("informational (1xx) responses", self.sc.log_text())
        self.still_serves()

    def test_upper_case_field_names_from_the_upstream_fail_the_request(self):
        """An upstream whose response head or trailers carry an upper-case
        field name broke HTTP/2: the request fails (a 502 before the
        head, a reset after it); the name never reaches the caller."""
        def names(fields):
            return [n.lower() for n, _ in fields or ()]
        with H2Conn(self.port) as c:
            st = c.response(c.get("/upper"))
            self.assertNotIn("x-upper", names(st.headers), st)
            self.assertEqual(st.status, 502, st)
            st = c.response(c.get("/upper-trailer"))
            self.assertNotIn("x-upper", names(st.trailers), st)
            self.assertTrue(st.rst is not None or st.status == 502, st)
        self.h2_get_ok(self.port, "/ok")

    def test_garbage_grpc_status_is_counted_as_unknown(self):
        def unknown():
            return self.sc.stats().value("sidecar_upstream_grpc_responses_total", upstream="hostile",
                                         grpc_status="unknown") or 0
        before = unknown()
        garbage = ["abc", "99", "1a", "-1", "017", "", "9999999999"]
        with H2Conn(self.port) as c:
            for i, v in enumerate(garbage):
                for path in ("/grpc-status?v=", "/grpc-trailers?v="):
                    st = c.response(c.get(path + v, extra=[("content-type", "application/grpc"),
                                                           ("te", "trailers")]))
                    self.assertEqual(st.status, 200, st)
            ok = c.response(c.get("/grpc-status?v=5", extra=[("content-type", "application/grpc")]))
            self.assertEqual(ok.header("grpc-status"), "5", ok)
        self.assertTrue(wait_until(lambda: unknown() - before == 2 * len(garbage), timeout=3),
                        "grpc-status garbage counted %s times as unknown, want %d"
                        % (unknown() - before, 2 * len(garbage)))
        self.still_serves()

    def test_refused_stream_is_resent_a_bounded_number_of_times(self):
        before = self.up.count("/refuse")
        t0 = time.monotonic()
        with self.attack() as rss, H2Conn(self.port) as c:
            st = c.response(c.get("/refuse"), timeout=10)
            self.assertEqual(st.status, 503, st)
            self.assertEqual(st.header("x-sidecar-reason"), "upstream-refused-stream")
        self.assertLess(time.monotonic() - t0, 5)
        self.assertLessEqual(self.up.count("/refuse") - before, 3)
        self.assertBoundedAndIdle(rss, "REFUSED_STREAM on every try")
        self.still_serves()

    def test_goaway_on_every_try_is_resent_a_bounded_number_of_times(self):
        before_req, before_conn = self.up.count("/goaway"), self.up.connections
        with self.attack() as rss, H2Conn(self.port) as c:
            st = c.response(c.get("/goaway"), timeout=10)
            self.assertEqual(st.status, 503, st)
        self.assertLessEqual(self.up.count("/goaway") - before_req, 3)
        self.assertLessEqual(self.up.connections - before_conn, 3)
        self.assertBoundedAndIdle(rss, "GOAWAY on every try")
        self.still_serves()

    def test_request_head_over_the_upstreams_limit_fails_once(self):
        """The upstream advertises SETTINGS_MAX_HEADER_LIST_SIZE 16 KiB; a
        30 KiB head (within ours) is refused without being sent."""
        with H2Conn(self.tight_port) as c:
            self.assertEqual(c.response(c.get("/ok")).status, 200)     # the connection knows its SETTINGS
            before = self.tight.count("/ok")
            with self.attack() as rss:
                st = c.response(c.get("/ok?big", extra=[("x-big-%d" % i, "b" * 3000) for i in range(10)]))
            self.assertEqual(st.status, 431, st)
            self.assertEqual(st.header("x-sidecar-reason"), "request-headers-too-large")
            self.assertIn(b"SETTINGS_MAX_HEADER_LIST_SIZE", st.data)
            self.assertEqual(self.tight.count("/ok"), before, "the oversized head was sent")
            self.assertEqual(c.response(c.get("/ok")).status, 200)
        self.assertBoundedAndIdle(rss, "request head over the upstream's limit")


class HugeHeadTest(HostileBase):
    """limits.max_header_bytes raised to 2 MiB: a 1 MiB request head (256
    fields of 4000 bytes, HPACK-indexed) goes to an HTTP/2 upstream once,
    no re-send loop, no spin, and SIGTERM still ends the sidecar."""

    @classmethod
    def setUpClass(cls):
        cls.up = h2_upstream(cls, name="h2app")
        cls.port = free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), [
            harness.upstream("h2web", "http2", cls.port, [cls.up.port]),
        ], workers=1, limits={"max_header_bytes": 2 << 20}))

    def test_one_mib_head_is_sent_once(self):
        hdrs = amplified(refs=262)
        self.assertGreater(list_size(hdrs), 1 << 20)
        with self.attack() as rss, H2Conn(self.port) as c:
            st = c.response(c.get("/ok", extra=hdrs), timeout=10)
            self.assertIn(st.status, (200, 431), st)
        self.assertLessEqual(self.up.count("/ok"), 1)
        self.assertBoundedAndIdle(rss, "1 MiB request head")
        self.h2_get_ok(self.port, "/ok")
        self.assertEqual(self.sc.stop(timeout=10), 0, "SIGTERM did not end the sidecar")


if __name__ == "__main__":
    unittest.main()

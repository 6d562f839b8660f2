"""Hostile callers at the connection level: churn that reuses descriptors on
every listener kind, and slow readers.

- DescriptorReuseTest: thousands of short connections (connect and close at
  once, connect and send garbage, a full request) on the TLS inbound
  listener, a plaintext inbound listener and an outbound listener. The
  kernel hands the lowest free descriptor to the next accept(), so a closed
  descriptor is reused at once; every connection that sends a request must
  be served promptly (a descriptor the event loop forgot to re-register
  would leave its request unread until the header-read timeout). Also
  `openssl s_time -reuse` (TLS 1.2 session resumption churn), which must
  finish in its own time.
- SlowReaderTest: callers that send requests for large responses and never
  read them: the sidecar's memory stays bounded (backpressure, not
  buffering), it does not spin, and other callers are served meanwhile.

Every loop is bounded in count and time.
"""

import os
import shutil
import socket
import ssl
import tempfile
import time
import unittest

import harness
from harness import LOOPBACK, SidecarTestCase, addr, free_port, run

MAKE_CERTS = os.path.join(harness.ROOT, "certs", "make-certs.sh")
TD = "example.org"
CERTS = None


def setUpModule():
    global CERTS
    CERTS = tempfile.mkdtemp(prefix="sc-it-hostile-conn-")
    r = run(["sh", MAKE_CERTS, "--out", CERTS, "--trust-domain", TD, "web", "api"], timeout=120)
    if r.returncode != 0:
        raise AssertionError("make-certs.sh failed:\n%s%s" % (r.stdout.decode(), r.stderr.decode()))


def tearDownModule():
    if CERTS and not harness.KEEP_TMP:
        shutil.rmtree(CERTS, ignore_errors=True)


def pem(name):
    return os.path.join(CERTS, name + ".pem")


def key(name):
    return os.path.join(CERTS, name + ".key")


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def read_http_response(sock, deadline):
    """Reads one response with a Content-Length body; returns (status, elapsed ok)."""
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before the response head")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed in the body")
        body += chunk
    return status


class DescriptorReuseTest(SidecarTestCase):
    ROUNDS = 800            # per listener; each round is three connections
    BUDGET_S = 15.0         # per listener, a hard bound on the loop
    SLOW_S = 1.5            # a served request slower than this counts as stuck

    @classmethod
    def setUpClass(cls):
        cls.app = cls.class_http1_peer("app")
        cls.web = cls.class_http1_peer("web")

    def start_tls_inbound(self):
        in_port = free_port()
        cfg = harness.base_config(free_port(), inbound={"listen_port": in_port, "app_port": self.app.port,
                                                        "timeouts": {"header_read": "10s"}}, workers=2, name="api")
        cfg["tls"] = {"cert": pem("api"), "key": key("api"), "ca": os.path.join(CERTS, "ca-bundle.pem")}
        return self.sidecar(cfg), in_port

    def start_plain(self):
        in_port, out_port = free_port(), free_port()
        cfg = harness.base_config(free_port(), workers=2, upstreams=[
            harness.upstream("web", "http1", out_port, [self.web.port])],
            inbound={"listen_port": in_port, "app_port": self.app.port, "timeouts": {"header_read": "10s"}})
        return self.sidecar(cfg), in_port, out_port

    def churn(self, port, wrap=None):
        """Rounds of: connect+close, connect+garbage+close, connect+request.
        Returns (served, slowest request in seconds)."""
        served, slowest = 0, 0.0
        t_end = time.monotonic() + self.BUDGET_S
        for i in range(self.ROUNDS):
            if time.monotonic() > t_end:
                break
            a = socket.create_connection((LOOPBACK, port), timeout=2)
            a.close()
            b = socket.create_connection((LOOPBACK, port), timeout=2)
            try:
                b.sendall(b"\x16\x03\x01garbage" if wrap else b"GARBAGE\r\n\r\n")
            except OSError:
                pass
            b.close()
            t0 = time.monotonic()
            c = socket.create_connection((LOOPBACK, port), timeout=2)
            try:
                if wrap:
                    c = wrap(c)
                c.sendall(b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                status = read_http_response(c, t0 + 5.0)
            except (socket.timeout, ssl.SSLError, OSError, EOFError) as e:
                self.fail("round %d: request not served within 5 s (%s): a reused descriptor was "
                          "not watched" % (i, e))
            finally:
                c.close()
            self.assertEqual(status, 200)
            served += 1
            slowest = max(slowest, time.monotonic() - t0)
        return served, slowest

    def test_tls_inbound_churn(self):
        sc, port = self.start_tls_inbound()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(os.path.join(CERTS, "ca-bundle.pem"))
        ctx.load_cert_chain(pem("web"), key("web"))
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        state = {"session": None}

        def wrap(raw):
            s = ctx.wrap_socket(raw, server_hostname="api", session=state["session"])
            state["session"] = s.session   # resume: the cheap handshake makes the churn fast
            return s

        served, slowest = self.churn(port, wrap)
        self.assertGreater(served, 200, "too few rounds in the time budget")
        self.assertLess(slowest, self.SLOW_S, "a request waited %.2fs" % slowest)
        self.assertTrue(sc.alive())

    def test_tls_inbound_s_time_reuse(self):
        """The reproduction with openssl's own churn tool: resumed TLS 1.2
        connections for 2 s; a forgotten descriptor made it hang."""
        if not harness.have_tool("openssl"):
            self.fail("openssl is needed (deploy/install-deps.sh installs it)")
        sc, port = self.start_tls_inbound()
        for _ in range(1):
            t0 = time.monotonic()
            r = run(["openssl", "s_time", "-connect", addr(port), "-reuse", "-tls1_2", "-time", "2",
                     "-cert", pem("web"), "-key", key("web"), "-CAfile", os.path.join(CERTS, "ca-bundle.pem")],
                    timeout=30)
            took = time.monotonic() - t0
            out = r.stdout.decode("utf-8", "replace")
            self.assertEqual(r.returncode, 0, out + r.stderr.decode("utf-8", "replace"))
            self.assertIn("connections", out)
            self.assertLess(took, 8.0, "s_time took %.1fs: a connection hung" % took)
        self.assertTrue(sc.alive())

    def test_plaintext_inbound_and_outbound_churn(self):
        sc, in_port, out_port = self.start_plain()
        for port in (in_port, out_port):
            served, slowest = self.churn(port)
            self.assertGreater(served, 200)
            self.assertLess(slowest, self.SLOW_S, "port %d: a request waited %.2fs" % (port, slowest))
        self.assertTrue(sc.alive())


class SlowReaderTest(SidecarTestCase):
    READERS = 40
    BODY = 4 << 20          # each asks for 4 MiB and reads none of it

    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")

    def test_slow_readers_bounded(self):
        out_port = free_port()
        cfg = harness.base_config(free_port(), workers=1, upstreams=[
            harness.upstream("web", "http1", out_port, [self.web.port], timeouts={"request": "30s"})])
        sc = self.sidecar(cfg)
        base_rss = sc.rss_kib()
        socks = []
        try:
            for _ in range(self.READERS):
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(2)
                s.connect((LOOPBACK, out_port))
                s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % self.BODY)
                socks.append(s)
            time.sleep(1.5)  # let every response fill what the sockets and pipes hold
            rss = sc.rss_kib()
            # Each stream holds at most its pipe (limits.stream_buffer, 64 KiB)
            # plus the connection's output block: far below the 160 MiB asked for.
            self.assertLess(rss - base_rss, self.READERS * 400,
                            "RSS grew by %d KiB for %d stalled readers" % (rss - base_rss, self.READERS))
            cpu0 = cpu_seconds(sc.pid)
            time.sleep(1.0)
            spent = cpu_seconds(sc.pid) - cpu0
            self.assertLess(spent, 0.3, "the sidecar used %.2fs of CPU in 1 s with stalled readers" % spent)
            r = harness.http_get(out_port, "/echo", timeout=5)
            self.assertEqual(r.status, 200, "another caller was not served while readers stalled")
        finally:
            for s in socks:
                s.close()
        self.assertTrue(sc.alive())


class FdExhaustionTest(SidecarTestCase):
    """Out of file descriptors: accept(2) fails with EMFILE while the
    connection stays in the backlog, so the listener stays readable. The
    sidecar must rest instead of spinning on it, log a bounded number of
    lines, and accept again once descriptors are free."""

    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")

    def test_emfile_does_not_spin(self):
        if not harness.have_tool("prlimit"):
            self.fail("prlimit (util-linux) is needed")
        out_port = free_port()
        cfg = harness.base_config(free_port(), workers=1, upstreams=[
            harness.upstream("web", "http1", out_port, [self.web.port])])
        sc = self.sidecar(cfg)
        r = run(["prlimit", "--pid", str(sc.pid), "--nofile=48:48"], timeout=10)
        self.assertEqual(r.returncode, 0, r.stderr.decode())
        socks = []
        try:
            for _ in range(80):
                s = socket.create_connection((LOOPBACK, out_port), timeout=2)
                socks.append(s)
            time.sleep(0.5)
            cpu0 = cpu_seconds(sc.pid)
            time.sleep(1.0)
            spent = cpu_seconds(sc.pid) - cpu0
            self.assertLess(spent, 0.3, "the sidecar used %.2fs of CPU in 1 s while out of descriptors" % spent)
        finally:
            for s in socks:
                s.close()
        self.assertTrue(harness.wait_until(lambda: "out of file descriptors" in sc.log_text(), 3), sc.log_tail())
        self.assertLessEqual(sc.log_text().count("out of file descriptors"), 3)
        # Descriptors are back: new callers are served (the listener rested, it did not stop).
        r = harness.http_get(out_port, "/echo", timeout=5)
        self.assertEqual(r.status, 200)
        self.assertTrue(sc.alive())


if __name__ == "__main__":
    unittest.main()

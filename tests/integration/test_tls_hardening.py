"""TLS hardening through the real binary (docs/tls.md): what an attacker who
holds a CA-signed certificate, or who can merely reach a TLS port, can no
longer do.

Certificates are made at test time with certs/make-certs.sh (CA `ca`:
api, web; every leaf names DNS:<service>, DNS:localhost, IP:127.0.0.1 and
its SPIFFE ID) plus, with the openssl CLI, a leaf of the same CA whose URI
SAN carries CR/LF and a second header line.

- OutboundNameTest: an upstream with `tls: {mode: simple, sni: ...}` in
  front of a real HTTPS peer (tests/peers/http1_server.py over python ssl)
  that presents api's certificate: the right DNS name or IP address passes,
  a wrong one fails as a connect failure (503 `connect-failure`) naming the
  expected name and the certificate's names in the log, and the peer sees
  no request. `sidecar --check` refuses a TLS upstream that names nothing.
- InboundIdentityTest: a caller whose CA-signed certificate's URI SAN holds
  CR/LF (and matches the `tls.allow` prefix) is refused at the handshake,
  the log line shows the bytes escaped (no raw line break, no injected
  line), nothing reaches the app; a proper certificate passes and the app
  sees exactly one identity header.
- LogFloodTest: 300 plaintext connections to the TLS listener, and 300
  connections beyond `limits.max_connections`: a handful of log lines each
  (one a second, the rest counted in the next line), while /stats counts
  every one of them.

Every wait and loop is bounded.
"""

import json
import os
import re
import shutil
import socket
import ssl
import tempfile
import time
import unittest

import harness
from harness import LOOPBACK, Http1Peer, SidecarTestCase, free_port, http_get, run, upstream, wait_until

MAKE_CERTS = os.path.join(harness.ROOT, "certs", "make-certs.sh")
TD = "example.org"
CERTS = None


def ident(svc):
    return "spiffe://%s/ns/default/dc/dc1/svc/%s" % (TD, svc)


# The URI SAN an attacker with a CA-signed certificate chose: a prefix the
# allow list matches, then CR/LF and a header line of its own.
CRLF_ID = ident("web") + "\r\nx-sidecar-caller: " + ident("admin")
CRLF_ID_ESCAPED = ident("web") + "\\x0d\\x0ax-sidecar-caller: " + ident("admin")


def crt(name):
    return os.path.join(CERTS, name + ".pem")


def key(name):
    return os.path.join(CERTS, name + ".key")


def bundle():
    return os.path.join(CERTS, "ca-bundle.pem")


def sh(args, **kw):
    r = run(args, timeout=60, **kw)
    if r.returncode != 0:
        raise AssertionError("%s failed (%d): %s%s" % (" ".join(args), r.returncode, r.stdout.decode(),
                                                      r.stderr.decode()))
    return r


def der_len(n):
    return bytes([n]) if n < 128 else bytes([0x81, n]) if n < 256 else bytes([0x82, n >> 8, n & 255])


def issue_raw_uri(name, uri):
    """A leaf of CA `ca` whose only SAN is a URI with these exact bytes (the
    extension is written as DER, so openssl does not look at the text)."""
    raw = uri.encode("latin-1")
    gn = b"\x86" + der_len(len(raw)) + raw              # [6] IA5String
    san = b"\x30" + der_len(len(gn)) + gn                # GeneralNames
    ext = os.path.join(CERTS, name + ".ext")
    with open(ext, "w") as f:
        f.write("[x]\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyAgreement\n"
                "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=DER:%s\n" % san.hex())
    sh(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key(name)])
    sh(["openssl", "req", "-new", "-key", key(name), "-subj", "/CN=" + name, "-out",
        os.path.join(CERTS, name + ".csr")])
    sh(["openssl", "x509", "-req", "-in", os.path.join(CERTS, name + ".csr"), "-CA",
        os.path.join(CERTS, "ca", "ca.pem"), "-CAkey", os.path.join(CERTS, "ca", "ca.key"),
        "-set_serial", "0x7e57", "-days", "2", "-extfile", ext, "-extensions", "x", "-out", crt(name)])


def setUpModule():
    global CERTS
    CERTS = tempfile.mkdtemp(prefix="sc-it-tlsh-")
    sh(["sh", MAKE_CERTS, "--out", CERTS, "--trust-domain", TD, "api", "web"])
    issue_raw_uri("crlf", CRLF_ID)


def tearDownModule():
    if CERTS and not harness.KEEP_TMP:
        shutil.rmtree(CERTS, ignore_errors=True)


def log_lines(sc, text):
    return [ln for ln in sc.log_text().splitlines() if text in ln]


def suppressed(lines):
    """Sum of the "(N more like it suppressed ...)" counts in these lines."""
    return sum(int(m.group(1)) for ln in lines for m in [re.search(r"\((\d+) more like it suppressed", ln)] if m)


# ----------------------------------------------------------------------------
# outbound: the server's name is verified
# ----------------------------------------------------------------------------

class OutboundNameTest(SidecarTestCase):

    @classmethod
    def setUpClass(cls):
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(crt("api"), key("api"))
        cls.peer = Http1Peer("https-api", ssl_context=ctx)
        cls.peer.start()
        cls.addClassCleanup(cls.peer.stop)
        cls.names = {"dns_ok": "api", "dns_wrong": "payments", "ip_ok": "127.0.0.1", "ip_wrong": "127.0.0.2"}
        cls.ports = {k: free_port() for k in cls.names}
        ups = [upstream(k, "http1", cls.ports[k], [cls.peer.port], tls={"mode": "simple", "sni": v})
               for k, v in cls.names.items()]
        cfg = harness.base_config(free_port(), upstreams=ups, workers=1, name="web")
        cfg["tls"] = {"ca": bundle()}
        cls.web = cls.class_sidecar(cfg, name="web")

    def test_right_name_passes(self):
        for k in ("dns_ok", "ip_ok"):
            before = self.peer.count("requests_started")
            r = http_get(self.ports[k], "/echo")
            self.assertEqual(r.status, 200, (k, r))
            self.assertEqual(self.peer.count("requests_started"), before + 1, k)

    def test_wrong_name_refused(self):
        for k in ("dns_wrong", "ip_wrong"):
            before = self.peer.count("requests_started")
            st = self.web.stats()
            refused0 = st.value("sidecar_tls_handshake_refused_total")
            r = http_get(self.ports[k], "/echo")
            self.assertEqual(r.status, 503, (k, r))
            self.assertEqual(r.header("x-sidecar-reason"), "connect-failure", (k, r))
            want = ("upstream %s: TLS handshake with 127.0.0.1:%d failed: server certificate is not for "
                    "the name %s (it names DNS:api, DNS:localhost, IP:127.0.0.1)"
                    % (k, self.peer.port, self.names[k]))
            self.assertTrue(wait_until(lambda: log_lines(self.web, want), timeout=5), self.web.log_tail(10))
            self.assertTrue(wait_until(lambda: self.web.stats().value("sidecar_tls_handshake_refused_total")
                                       >= refused0 + 1, timeout=5))
            time.sleep(0.2)
            self.assertEqual(self.peer.count("requests_started"), before,
                             "a request reached a server whose certificate is for another name")

    def test_check_refuses_tls_without_a_name(self):
        for tls in ({"mode": "simple"}, {"mode": "mutual"}):
            cfg = harness.base_config(free_port(), upstreams=[
                upstream("x", "http1", free_port(), [free_port()], tls=tls)], name="web")
            cfg["tls"] = {"ca": bundle(), "cert": crt("web"), "key": key("web")}
            sc = harness.Sidecar(cfg, name="check")
            try:
                r = sc.check()
            finally:
                sc.cleanup()
            out = (r.stdout + r.stderr).decode()
            self.assertEqual(r.returncode, 1, out)
            self.assertIn("TLS to this upstream would verify no name: set tls.sni", out)


# ----------------------------------------------------------------------------
# inbound: identities are SPIFFE IDs, nothing else
# ----------------------------------------------------------------------------

def tls_request(port, cert, key_, path="/echo", timeout=5.0):
    """One HTTP/1.1 request over TLS with a client certificate. Returns the
    raw response bytes, or the exception that ended the exchange."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(bundle())
    ctx.load_cert_chain(cert, key_)
    ctx.check_hostname = False
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout) as raw:
            with ctx.wrap_socket(raw, server_hostname="api") as s:
                s.sendall(("GET %s HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n" % path).encode())
                data = b""
                while True:
                    b = s.recv(65536)
                    if not b:
                        return data
                    data += b
    except (OSError, ssl.SSLError) as e:
        return e


class InboundIdentityTest(SidecarTestCase):

    @classmethod
    def setUpClass(cls):
        cls.app = cls.class_http1_peer("app")
        cls.port = free_port()
        cfg = harness.base_config(free_port(), inbound={"listen_port": cls.port, "app_port": cls.app.port},
                                  workers=1, name="api")
        # the CR/LF identity starts with web's: before, this prefix let it in
        cfg["tls"] = {"cert": crt("api"), "key": key("api"), "ca": bundle(), "allow": ["spiffe://%s/*" % TD]}
        cls.api = cls.class_sidecar(cfg, name="api")

    def test_uri_san_with_crlf_refused(self):
        before = self.app.count("requests_started")
        refused0 = self.api.stats().value("sidecar_tls_handshake_refused_total")
        res = tls_request(self.port, crt("crlf"), key("crlf"))
        self.assertIsInstance(res, (OSError, ssl.SSLError), res)
        want = "listener inbound: TLS handshake with 127.0.0.1:"
        why = ('failed: client certificate refused: its URI SAN "%s" is not a valid SPIFFE ID: it contains '
               'a control character' % CRLF_ID_ESCAPED)
        self.assertTrue(wait_until(lambda: [ln for ln in log_lines(self.api, why) if want in ln], timeout=5),
                        self.api.log_tail(10))
        self.assertTrue(wait_until(lambda: self.api.stats().value("sidecar_tls_handshake_refused_total")
                                   >= refused0 + 1, timeout=5))
        # no line of the log starts with what the certificate smuggled in
        for ln in self.api.log_text().splitlines():
            self.assertFalse(ln.startswith("x-sidecar-caller"), ln)
        time.sleep(0.2)
        self.assertEqual(self.app.count("requests_started"), before, "the caller reached the app")

    def test_valid_identity_passes(self):
        res = tls_request(self.port, crt("web"), key("web"))
        self.assertIsInstance(res, bytes, res)
        self.assertTrue(res.startswith(b"HTTP/1.1 200"), res[:200])
        rec = self.app.last("/echo")
        callers = [v for k, v in rec["headers"] if k.lower() == "x-sidecar-caller"]
        self.assertEqual(callers, [ident("web")])


# ----------------------------------------------------------------------------
# log floods from unauthenticated peers
# ----------------------------------------------------------------------------

FLOOD = 300


def connect_many(port, n, payload=b"", deadline_s=10.0):
    """n connections, one after the other, each sending payload and closing;
    returns how many were made (bounded by deadline_s)."""
    made = 0
    deadline = time.monotonic() + deadline_s
    while made < n and time.monotonic() < deadline:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=2) as s:
                if payload:
                    s.sendall(payload)
            made += 1
        except OSError:
            time.sleep(0.01)
    return made


class LogFloodTest(SidecarTestCase):

    def api_config(self, port, app_port, limits=None):
        cfg = harness.base_config(free_port(), inbound={"listen_port": port, "app_port": app_port},
                                  workers=1, name="api", limits=limits)
        cfg["tls"] = {"cert": crt("api"), "key": key("api"), "ca": bundle()}
        return cfg

    def test_plaintext_to_the_tls_port(self):
        app = self.http1_peer("app")
        port = free_port()
        api = self.sidecar(self.api_config(port, app.port), name="api")
        failed0 = api.stats().value("sidecar_tls_handshake_failures_total")
        t0 = time.monotonic()
        made = connect_many(port, FLOOD, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        took = time.monotonic() - t0
        self.assertEqual(made, FLOOD)
        self.assertTrue(wait_until(lambda: api.stats().value("sidecar_tls_handshake_failures_total")
                                   >= failed0 + FLOOD, timeout=10),
                        "counted %s of %d" % (api.stats().value("sidecar_tls_handshake_failures_total") - failed0,
                                              FLOOD))
        lines = log_lines(api, "TLS handshake with")
        # at most one line a second (plus the first)
        self.assertLessEqual(len(lines), int(took) + 2, "\n".join(lines[:10]))
        # one more a second later reports what was left out
        time.sleep(1.1)
        self.assertEqual(connect_many(port, 1, b"GET / HTTP/1.1\r\n\r\n"), 1)
        self.assertTrue(wait_until(lambda: len(log_lines(api, "TLS handshake with")) > len(lines), timeout=5))
        lines = log_lines(api, "TLS handshake with")
        self.assertEqual(len(lines) + suppressed(lines), FLOOD + 1, "\n".join(lines))
        self.assertEqual(api.stats().value("sidecar_tls_handshake_failures_total") - failed0, FLOOD + 1)
        self.assertEqual(app.count("requests_started"), 0)

    def test_beyond_max_connections(self):
        app = self.http1_peer("app")
        port = free_port()
        api = self.sidecar(self.api_config(port, app.port, limits={"max_connections": 2}), name="api")
        held = [socket.create_connection((LOOPBACK, port), timeout=2) for _ in range(2)]
        try:
            self.assertTrue(wait_until(lambda: api.stats().value("sidecar_downstream_connections_active") >= 2,
                                       timeout=5))
            refused0 = api.stats().value("sidecar_downstream_connections_refused_total")
            t0 = time.monotonic()
            made = connect_many(port, FLOOD)
            took = time.monotonic() - t0
            self.assertEqual(made, FLOOD)
            self.assertTrue(wait_until(lambda: api.stats().value("sidecar_downstream_connections_refused_total")
                                       >= refused0 + FLOOD, timeout=10))
            lines = log_lines(api, "refusing connection")
            self.assertGreaterEqual(len(lines), 1)
            self.assertLessEqual(len(lines), int(took) + 2, "\n".join(lines[:10]))
            time.sleep(1.1)
            self.assertEqual(connect_many(port, 1), 1)
            self.assertTrue(wait_until(lambda: len(log_lines(api, "refusing connection")) > len(lines), timeout=5))
            lines = log_lines(api, "refusing connection")
            self.assertEqual(len(lines) + suppressed(lines), FLOOD + 1, "\n".join(lines))
            self.assertIn("limits.max_connections", lines[0])
        finally:
            for s in held:
                s.close()


if __name__ == "__main__":
    unittest.main()

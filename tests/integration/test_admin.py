"""The admin endpoint against web pages, DNS rebinding and strangers.

  cross-site  POST /breaker, /log, /drain as a web page can send them
              (Origin: http://evil.example, Content-Type: text/plain, no
              marker) are refused with 403 and change nothing; with the
              X-Sidecar-Admin marker (or Content-Type: application/json) and
              no foreign Origin they work
  host        every request but GET /ready must name the admin by a loopback
              Host (localhost, 127.x, [::1]) with its port, or one of
              admin.allowed_hosts; GET /ready answers any Host (probes)
  query       parameters are parsed properly: ?x=level=debug sets nothing,
              a parameter given twice or unknown is a 400, values are
              percent-decoded
  token       admin.token_file: 401 without the bearer token, GET /ready exempt
  drain       POST /drain without the marker does not drain; with it, it does
  remote      a non-loopback admin.listen is refused by --check unless
              admin.allow_remote: true, and logged as a WARN at start
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

import harness
from harness import RawConn, SidecarTestCase, free_port, run, wait_until

EVIL = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
MARK = {"X-Sidecar-Admin": "1"}


def admin_raw(sc, method, path, headers=None, host=None):
    """(status, headers dict lower-case, body text) of one admin request with
    exactly the given headers; Host defaults to 127.0.0.1:<admin port>."""
    h, port = sc.admin_addr
    lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % (host or "127.0.0.1:%d" % port)]
    lines += ["%s: %s" % kv for kv in (headers or {}).items()]
    if method == "POST":
        lines.append("Content-Length: 0")
    with RawConn(port, host=h) as c:
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        r = c.read_response()
    return r.status, {k.lower(): v for k, v in r.headers}, r.body.decode("utf-8", "replace")


class AdminGuardTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer()
        cls.up_port = free_port()
        cfg = harness.base_config(free_port(), upstreams=[
            harness.upstream("adm-up", "http1", cls.up_port, [cls.peer.port],
                             circuit_breaker={"min_calls": 5, "open_for": "30s"})])
        cfg["admin"]["allowed_hosts"] = ["admin.test", "ops.test:8443"]
        cls.sc = cls.class_sidecar(cfg)
        cls.port = cls.sc.admin_addr[1]

    def breaker_state(self):
        for u in self.sc.clusters()["upstreams"]:
            if u["name"] == "adm-up":
                return u["circuit_breaker"]["state"], u["circuit_breaker"]["forced"]
        raise AssertionError("adm-up not in /clusters")

    def log_level(self):
        status, _, body = admin_raw(self.sc, "GET", "/log")
        self.assertEqual(status, 200, body)
        return body.strip()

    def test_cross_site_posts_refused(self):
        cases = [
            ("/breaker?upstream=adm-up&action=open", EVIL),
            ("/breaker?upstream=adm-up&action=open", {"Content-Type": "text/plain"}),
            ("/breaker?upstream=adm-up&action=open", {"Content-Type": "application/x-www-form-urlencoded"}),
            ("/breaker?upstream=adm-up&action=open", {}),
            ("/breaker?upstream=adm-up&action=open", dict(EVIL, **MARK)),          # marker, foreign Origin
            ("/breaker?upstream=adm-up&action=open", {"Origin": "null", "X-Sidecar-Admin": "1"}),
            ("/breaker?upstream=adm-up&action=open", {"Sec-Fetch-Site": "cross-site", "X-Sidecar-Admin": "1"}),
            ("/log?level=debug", EVIL),
            ("/drain", EVIL),
            ("/drain", {}),
        ]
        for path, headers in cases:
            with self.subTest(path=path, headers=headers):
                status, _, body = admin_raw(self.sc, "POST", path, headers)
                self.assertEqual(status, 403, body)
                self.assertIn("admin:", body)
        self.assertEqual(self.breaker_state(), ("closed", "none"))
        self.assertEqual(self.log_level(), "info")
        status, _, _ = admin_raw(self.sc, "GET", "/ready")
        self.assertEqual(status, 200, "a refused /drain drained the sidecar")
        self.assertTrue(self.sc.alive())
        self.assertIn("admin: refused POST", self.sc.log_text())
        # the 403 says what to send
        _, _, body = admin_raw(self.sc, "POST", "/drain", {"Content-Type": "text/plain"})
        self.assertIn("X-Sidecar-Admin", body)

    def test_marked_posts_accepted(self):
        self.addCleanup(admin_raw, self.sc, "POST", "/breaker?upstream=adm-up&action=release", MARK)
        self.addCleanup(admin_raw, self.sc, "POST", "/log?level=info", MARK)
        status, _, body = admin_raw(self.sc, "POST", "/breaker?upstream=adm-up&action=open", MARK)
        self.assertEqual((status, body), (200, "open\n"))
        self.assertEqual(self.breaker_state(), ("open", "open"))
        status, _, body = admin_raw(self.sc, "POST", "/breaker?upstream=adm-up&action=close",
                                    {"Content-Type": "application/json"})
        self.assertEqual((status, body), (200, "closed\n"))
        # the admin's own origin is not foreign
        status, _, body = admin_raw(self.sc, "POST", "/log?level=warn",
                                    dict(MARK, Origin="http://127.0.0.1:%d" % self.port,
                                         **{"Sec-Fetch-Site": "same-origin"}))
        self.assertEqual(status, 200, body)
        self.assertEqual(self.log_level(), "warn")

    def test_host_checked(self):
        p = self.port
        for host, want in (("evil.example:%d" % p, 403), ("localhost.evil.example:%d" % p, 403),
                           ("127.0.0.1:%d" % (p + 1 if p < 65535 else p - 1), 403), ("127.0.0.1", 403),
                           ("10.1.2.3:%d" % p, 403), ("ops.test:%d" % p, 403),
                           ("localhost:%d" % p, 200), ("LOCALHOST:%d" % p, 200), ("127.0.0.1:%d" % p, 200),
                           ("127.9.8.7:%d" % p, 200), ("[::1]:%d" % p, 200),
                           ("admin.test:%d" % p, 200), ("ops.test:8443", 200)):
            for path in ("/stats", "/config", "/clusters"):
                with self.subTest(host=host, path=path):
                    status, _, body = admin_raw(self.sc, "GET", path, host=host)
                    self.assertEqual(status, want, body[:300])
                    if want == 403:
                        self.assertIn("Host", body)
        # a rebinding page cannot POST either, even with the marker
        status, _, _ = admin_raw(self.sc, "POST", "/breaker?upstream=adm-up&action=open", MARK,
                                 host="evil.example:%d" % p)
        self.assertEqual(status, 403)
        self.assertEqual(self.breaker_state(), ("closed", "none"))
        # probes: GET /ready with the pod's address as Host
        for host in ("10.1.2.3:%d" % p, "evil.example:%d" % p, "sidecar-pod"):
            with self.subTest(probe=host):
                status, _, body = admin_raw(self.sc, "GET", "/ready", host=host)
                self.assertEqual((status, body), (200, "ready\n"))
        # HTTP/1.0 without a Host: refused, /ready still answered
        with RawConn(p) as c:
            c.send(b"GET /stats HTTP/1.0\r\n\r\n")
            self.assertEqual(c.read_response().status, 403)
        with RawConn(p) as c:
            c.send(b"GET /ready HTTP/1.0\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)

    def test_query_parsed(self):
        self.addCleanup(admin_raw, self.sc, "POST", "/log?level=info", MARK)
        for path, want in (("/log?x=level=debug", "unknown query parameter 'x'"),
                           ("/log?xlevel=debug", "unknown query parameter 'xlevel'"),
                           ("/log?level=debug&level=error", "given twice"),
                           ("/log?level=de%ZZbug", "two hex digits"),
                           ("/log?level=debug%00", "NUL"),
                           ("/log", "level must be one of"),
                           ("/breaker?upstream=adm-up&action=open&force=1", "unknown query parameter 'force'"),
                           ("/breaker?upstream=adm-up&upstream=x&action=open", "given twice")):
            with self.subTest(path=path):
                status, _, body = admin_raw(self.sc, "POST", path, MARK)
                self.assertEqual(status, 400, body)
                self.assertIn(want, body)
        self.assertEqual(self.log_level(), "info")
        self.assertEqual(self.breaker_state(), ("closed", "none"))
        status, _, body = admin_raw(self.sc, "POST", "/log?level=%64%65bug", MARK)
        self.assertEqual(status, 200, body)
        self.assertEqual(self.log_level(), "debug")
        status, _, body = admin_raw(self.sc, "POST", "/breaker?action=close&upstream=adm%2Dup", MARK)
        self.assertEqual(status, 200, body)
        self.assertEqual(admin_raw(self.sc, "POST", "/breaker?upstream=adm-up&action=release", MARK)[0], 200)


class AdminTokenTest(SidecarTestCase):
    TOKEN = "t0k-%d" % os.getpid()

    @classmethod
    def setUpClass(cls):
        cfg = harness.base_config(free_port())
        cfg["admin"]["token_file"] = "admin-token"
        cls.sc = cls.class_sidecar(cfg, files={"admin-token": cls.TOKEN + "\n"})

    def test_token_required(self):
        for auth in (None, "Bearer wrong", "Bearer " + self.TOKEN + "x", "Basic " + self.TOKEN, self.TOKEN):
            with self.subTest(auth=auth):
                status, headers, body = admin_raw(self.sc, "GET", "/stats",
                                                  {"Authorization": auth} if auth else {})
                self.assertEqual(status, 401, body)
                self.assertIn("bearer", headers.get("www-authenticate", "").lower())
                self.assertIn("admin.token_file", body)
        good = {"Authorization": "Bearer " + self.TOKEN}
        self.assertEqual(admin_raw(self.sc, "GET", "/stats", good)[0], 200)
        status, _, body = admin_raw(self.sc, "GET", "/config", good)
        self.assertEqual(status, 200)
        self.assertIn('"token": "<set>"', body)
        self.assertNotIn(self.TOKEN, body)
        # the token does not replace the marker
        self.assertEqual(admin_raw(self.sc, "POST", "/log?level=info", good)[0], 403)
        self.assertEqual(admin_raw(self.sc, "POST", "/log?level=info", dict(good, **MARK))[0], 200)
        # probes need no token
        self.assertEqual(admin_raw(self.sc, "GET", "/ready")[0], 200)
        self.assertNotIn(self.TOKEN, self.sc.log_text())


class AdminDrainTest(SidecarTestCase):
    def test_drain_needs_marker(self):
        sc = self.sidecar(harness.base_config(free_port(), drain="1s"))
        status, _, _ = admin_raw(sc, "POST", "/drain", EVIL)
        self.assertEqual(status, 403)
        time.sleep(0.2)
        self.assertTrue(sc.alive())
        self.assertEqual(admin_raw(sc, "GET", "/ready")[0], 200)
        status, _, body = admin_raw(sc, "POST", "/drain", MARK)
        self.assertEqual((status, body), (200, "draining\n"))
        self.assertTrue(wait_until(lambda: not sc.alive(), 10), "POST /drain did not stop the sidecar")
        sc.stopped = True
        self.assertEqual(sc.proc.returncode, 0)


class AdminRemoteTest(SidecarTestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="sc-it-admin-remote-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write_config(self, admin):
        cfg = harness.base_config(free_port())
        cfg["admin"] = admin
        path = os.path.join(self.dir, "sidecar.yaml")
        with open(path, "w") as f:
            f.write(harness.to_yaml(cfg))
        return path

    def check(self, path):
        r = run([harness.sidecar_binary(), "--config", path, "--check"], timeout=20, cwd=self.dir)
        return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")

    def test_non_loopback_needs_allow_remote(self):
        port = free_port()
        rc, out = self.check(self.write_config({"listen": "0.0.0.0:%d" % port}))
        self.assertEqual(rc, 1, out)
        self.assertIn("admin.listen", out)
        self.assertIn("not a loopback address", out)
        self.assertIn("admin.allow_remote", out)
        rc, out = self.check(self.write_config({"listen": "0.0.0.0:%d" % port, "allow_remote": True}))
        self.assertEqual(rc, 0, out)
        self.assertFalse(harness.port_open(port), "--check started the admin listener")

    def test_warn_at_start(self):
        """Started in a network namespace of its own (only there is binding
        0.0.0.0 still loopback-only), the sidecar says loudly that its admin
        endpoint is reachable from elsewhere."""
        if not shutil.which("unshare") or run(["unshare", "-rn", "true"], timeout=10).returncode != 0:
            raise unittest.SkipTest("no unprivileged network namespaces (unshare -rn)")
        path = self.write_config({"listen": "0.0.0.0:%d" % free_port(), "allow_remote": True})
        log_path = os.path.join(self.dir, "sidecar.log")
        with open(log_path, "wb") as log:
            p = subprocess.Popen(["unshare", "-rn", harness.sidecar_binary(), "--config", path],
                                 stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        harness._track(p)
        self.addCleanup(harness.kill_proc, p, 5.0)

        def warned():
            with open(log_path, encoding="utf-8", errors="replace") as f:
                return any("WARN" in line.upper() and "not a loopback address" in line and
                           "admin.token_file is not set" in line for line in f)
        ok = wait_until(warned, 10)
        p.send_signal(signal.SIGTERM)
        rc = p.wait(15)
        with open(log_path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self.assertTrue(ok, text)
        self.assertEqual(rc, 0, text)


if __name__ == "__main__":
    unittest.main()

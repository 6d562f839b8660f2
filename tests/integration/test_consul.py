"""The sidecar as a Consul client, against the agent emulator
(tests/consul/consul_emulator.py, in-process or as a process of its own):

- registration: the exact body and check (HTTP against /ready, TTL, gRPC),
  Content-Type, the check following the local app (critical when it dies,
  passing when it returns), re-registration after an agent restart,
  deregistration first on SIGTERM
- resolution: two instances share the traffic; one turning critical stops
  getting new requests within a second, with no failed request; the agent
  killed -> traffic goes on to the last known instances (stale on the admin
  endpoint), the agent back -> the watch resumes and follows changes; the
  index going backwards; the cache file after a restart during an outage
- a wrong ACL token: a clear error in the log and on the admin endpoint
- grpc.health.v1 Check and Watch, raw bytes over python3-grpcio
- the agent reached over a unix socket

Every wait is bounded.
"""

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from unittest import mock

import harness
from harness import SidecarTestCase, addr, free_port, wait_until
from http1_server import Http1Peer

sys.path.insert(0, os.path.join(harness.ROOT, "tests", "consul"))
from consul_emulator import ControlClient  # noqa: E402

EMULATOR = os.path.join(harness.ROOT, "tests", "consul", "consul_emulator.py")
PY = "/usr/bin/python3"


def consul_upstream(name, listen_port, service=None, tag=None, lb="round_robin"):
    d = {"service": service or name}
    if tag:
        d["tag"] = tag
    return {"upstream": name, "protocol": "http1", "listen": addr(listen_port),
            "discovery": {"consul": d},
            "timeouts": {"connect": "250ms", "request": "5s", "per_try": 0, "idle": "60s"},
            "load_balancer": lb}


def config(admin_port, consul, app_port=None, in_port=None, upstreams=(), health=None,
           service=None):
    cfg = harness.base_config(admin_port, upstreams=upstreams, workers=2, drain="3s",
                              inbound={"listen_port": in_port, "app_port": app_port}
                              if app_port else None)
    cfg["service"] = service or {"name": "web", "id": "web-1", "address": "127.0.0.1",
                                 "tags": ["v1", "canary"], "meta": {"team": "checkout"}}
    cfg["consul"] = consul
    cfg["health"] = dict({"interval": "200ms", "timeout": "200ms"}, **(health or {}))
    return cfg


def checks_of(emu, check_id):
    """The agent's view of a check: (status, output) or None."""
    for n in emu.snapshot()["Nodes"]:
        for c in n["Checks"]:
            if c["CheckID"] == check_id:
                return c["Status"], c.get("AgentOutput") or c.get("Output") or ""
    return None


def check_status(emu, check_id):
    c = checks_of(emu, check_id)
    return c[0] if c else None


def local_services(emu):
    for n in emu.snapshot()["Nodes"]:
        if n["Local"]:
            return {s["ID"]: s for s in n["Services"]}
    return {}


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def header(rec, name):
    for k, v in rec["Headers"]:
        if k.lower() == name.lower():
            return v
    return None


class Traffic:
    """Sends GET /echo to a port in a loop on one keep-alive connection (a
    new one after any failure); records (start time, status or error, peer)."""

    def __init__(self, port):
        self.port = port
        self.results = []
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        conn = None
        while not self.stop_ev.is_set():
            t = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/echo")
                r = conn.getresponse()
                r.read()
                self.results.append((t, r.status, r.getheader("x-peer")))
            except (OSError, http.client.HTTPException) as e:
                self.results.append((t, "error: %r" % e, None))
                conn = None
            time.sleep(0.005)
        if conn:
            conn.close()

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.th.join(10)


def get_many(port, n):
    """n requests on one connection: list of (status, peer)."""
    out = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        for _ in range(n):
            conn.request("GET", "/echo")
            r = conn.getresponse()
            r.read()
            out.append((r.status, r.getheader("x-peer")))
    finally:
        conn.close()
    return out


class ConsulTestCase(SidecarTestCase):
    def peer(self, name, port=0):
        p = Http1Peer(name, port=port)
        p.start()
        self.addCleanup(p.stop)
        return p

    def wait_register(self, emu, since=0, timeout=10):
        r = emu.wait_for_request(path_prefix="/v1/agent/service/register", method="PUT",
                                 predicate=lambda r: r["Status"] == 200, since=since,
                                 timeout=timeout)
        self.assertIsNotNone(r, "no successful registration within %ss" % timeout)
        return r

    def instances(self, sc, upstream):
        for u in sc.clusters()["upstreams"]:
            if u["name"] == upstream:
                return u
        raise AssertionError("no upstream %s" % upstream)


class RegistrationTest(ConsulTestCase):
    def test_http_check_body_and_app_health(self):
        """The registration body is exactly as specified; the agent's HTTP
        check of /ready goes critical when the app dies and passing when it
        is back; /ready says why."""
        emu = self.emulator()
        app = self.peer("app")
        admin, in_port = free_port(), free_port()
        sc = self.sidecar(config(admin, {"address": emu.address, "check": "http",
                                         "check_interval": "1s", "deregister_after": "1m"},
                                 app_port=app.port, in_port=in_port))
        rec = self.wait_register(emu)
        self.assertEqual(header(rec, "Content-Type"), "application/json")
        self.assertIsNone(header(rec, "X-Consul-Token"))
        body = json.loads(rec["Body"])
        self.assertEqual(body, {
            "ID": "web-1", "Name": "web", "Tags": ["v1", "canary"], "Address": "127.0.0.1",
            "Port": in_port,
            "Meta": {"team": "checkout", "sidecar-version": body["Meta"]["sidecar-version"]},
            "Check": {"CheckID": "service:web-1", "Name": body["Check"]["Name"],
                      "HTTP": "http://127.0.0.1:%d/ready" % admin, "Method": "GET",
                      "Interval": "1s", "Timeout": "1s", "DeregisterCriticalServiceAfter": "1m"}})
        self.assertRegex(body["Meta"]["sidecar-version"], r"^\d+\.\d+\.\d+")
        self.assertEqual(rec["Query"], "")
        self.assertEqual(local_services(emu)["web-1"]["Port"], in_port)

        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 10),
                        checks_of(emu, "service:web-1"))
        # the app dies: /ready 503 with the reason, the check goes critical
        app_port = app.port
        app.stop()
        self.assertTrue(wait_until(lambda: sc.admin("/ready")[0] == 503, 5))
        status, _, text = sc.admin("/ready")
        self.assertIn(b"app down", text)
        self.assertIn(b"127.0.0.1:%d" % app_port, text)
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "critical", 10),
                        checks_of(emu, "service:web-1"))
        self.assertIn("503", checks_of(emu, "service:web-1")[1])
        # it comes back
        self.peer("app2", port=app_port)
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 10),
                        checks_of(emu, "service:web-1"))
        self.assertEqual(sc.admin("/ready")[0], 200)
        st = sc.stats()
        self.assertEqual(st.value("sidecar_consul_registered"), 1)
        self.assertEqual(st.value("sidecar_app_healthy"), 1)

    def test_http_check_url_configured(self):
        """consul.check_http replaces the admin /ready URL in the check; the
        agent polls that URL."""
        emu = self.emulator()
        app = self.peer("app")
        url = "http://127.0.0.1:%d/echo?from=consul" % app.port
        self.sidecar(config(free_port(), {"address": emu.address, "check": "http", "check_interval": "1s",
                                          "check_http": url},
                            app_port=app.port, in_port=free_port()))
        rec = self.wait_register(emu)
        check = json.loads(rec["Body"])["Check"]
        self.assertEqual((check["HTTP"], check["Method"], check["Interval"]), (url, "GET", "1s"))
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 10),
                        checks_of(emu, "service:web-1"))
        app.stop()
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "critical", 10),
                        checks_of(emu, "service:web-1"))

    def test_ttl_check(self):
        """TTL: passing while the app is up (kept alive past the TTL), failed
        with a note saying why when it is down, passing again after."""
        emu = self.emulator()
        app = self.peer("app")
        admin, in_port = free_port(), free_port()
        sc = self.sidecar(config(admin, {"address": emu.address, "check": "ttl",
                                         "check_ttl": "2s"},
                                 app_port=app.port, in_port=in_port))
        rec = self.wait_register(emu)
        check = json.loads(rec["Body"])["Check"]
        self.assertEqual(check, {"CheckID": "service:web-1", "Name": check["Name"], "TTL": "2s"})
        r = emu.wait_for_request(path_prefix="/v1/agent/check/pass/service:web-1", method="PUT",
                                 timeout=5)
        self.assertIsNotNone(r)
        self.assertIn("ready", r["Args"]["note"][0])
        self.assertIsNone(header(r, "Content-Type"))
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 5))
        time.sleep(3.0)  # longer than the TTL: kept passing
        self.assertEqual(check_status(emu, "service:web-1"), "passing")
        seq = max(x["Seq"] for x in emu.requests())
        app_port = app.port
        app.stop()
        r = emu.wait_for_request(path_prefix="/v1/agent/check/fail/service:web-1", method="PUT",
                                 timeout=5, since=seq)
        self.assertIsNotNone(r, "no TTL fail update after the app died")
        note = r["Args"]["note"][0]
        self.assertIn("app down", note)
        self.assertIn("127.0.0.1:%d" % app_port, note)
        self.assertIn("refused", note)
        status, output = checks_of(emu, "service:web-1")
        self.assertEqual(status, "critical")
        self.assertIn("app down", output)
        self.peer("app2", port=app_port)
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 5))
        self.assertEqual(sc.clusters()["consul"]["registration"]["ttl_status"], "passing")

    def test_agent_restart_registers_again(self):
        """The agent loses every registration (restart without a data dir):
        the sidecar notices and registers again, for both check kinds."""
        for check in ("http", "ttl"):
            with self.subTest(check=check):
                emu = self.emulator()
                app = self.peer("app-" + check)
                sc = self.sidecar(config(free_port(), {"address": emu.address, "check": check,
                                                       "check_ttl": "3s", "check_interval": "1s"},
                                         app_port=app.port, in_port=free_port()))
                first = self.wait_register(emu)
                self.assertIn("web-1", local_services(emu))
                # The emulator logs the registration before its answer is
                # sent: restart only once the sidecar has the answer, or the
                # restart cuts it and the sidecar's retry is a first
                # registration, not a second one.
                self.assertTrue(wait_until(
                    lambda: sc.stats().value("sidecar_consul_registrations_total") >= 1, 5))
                emu.restart_agent()  # (the sidecar may register again at once)
                self.wait_register(emu, since=first["Seq"], timeout=15)
                self.assertTrue(wait_until(lambda: "web-1" in local_services(emu), 5))
                self.assertTrue(wait_until(
                    lambda: check_status(emu, "service:web-1") == "passing", 10))
                self.assertTrue(wait_until(
                    lambda: sc.stats().value("sidecar_consul_registrations_total") >= 2, 5))
                self.assertIn("registering again", sc.log_text())

    def test_sigterm_deregisters_first(self):
        emu = self.emulator()
        app = self.peer("app")
        sc = self.sidecar(config(free_port(), {"address": emu.address, "check": "http"},
                                 app_port=app.port, in_port=free_port()))
        self.wait_register(emu)
        self.assertIn("web-1", local_services(emu))
        t0 = time.time()
        self.assertEqual(sc.stop(timeout=15), 0)
        exited = time.time()
        recs = emu.requests(path_prefix="/v1/agent/service/deregister/web-1", method="PUT")
        self.assertEqual(len(recs), 1, recs)
        self.assertEqual(recs[0]["Status"], 200)
        self.assertTrue(t0 <= recs[0]["Time"] <= exited)
        self.assertNotIn("web-1", local_services(emu))
        log = sc.log_text()
        self.assertLess(log.index("deregistered service 'web'"), log.index("draining: no new"))

    def test_sigterm_agent_down_is_bounded(self):
        """An agent that does not answer cannot hold the drain for long."""
        emu = self.emulator()
        app = self.peer("app")
        sc = self.sidecar(config(free_port(), {"address": emu.address, "check": "http"},
                                 app_port=app.port, in_port=free_port()))
        self.wait_register(emu)
        emu.add_fault(Path="/v1/agent/service/deregister", Hang=True)
        t0 = time.monotonic()
        self.assertEqual(sc.stop(timeout=15), 0)
        self.assertLess(time.monotonic() - t0, 6.0)
        self.assertIn("draining anyway", sc.log_text())

    def test_wrong_acl_token(self):
        emu = self.emulator(acl_token="the-right-token")
        app = self.peer("app")
        pay = self.peer("pay")
        emu.register_instance("pay", id="pay-1", port=pay.port, address="127.0.0.1")
        out = free_port()
        sc = self.sidecar(config(free_port(), {"address": emu.address, "token": "a-wrong-token"},
                                 app_port=app.port, in_port=free_port(),
                                 upstreams=[consul_upstream("pay", out)]))
        r = emu.wait_for_request(path_prefix="/v1/agent/service/register", timeout=5)
        self.assertEqual(header(r, "X-Consul-Token"), "a-wrong-token")
        self.assertEqual(r["Status"], 403)
        # registration and the watch fail independently: wait for both lines
        self.assertTrue(wait_until(lambda: sc.log_text().count("ACL not found") >= 2, 5), sc.log_text())
        log = sc.log_text()
        self.assertIn("registering service 'web' (id web-1) failed: HTTP 403: ACL not found", log)
        self.assertIn("check consul.token", log)
        self.assertIn("watching Consul service 'pay' failed: HTTP 403: ACL not found", log)
        cl = sc.clusters()
        self.assertEqual(cl["consul"]["registration"]["state"], "failed")
        self.assertEqual(cl["consul"]["registration"]["last_error"], "HTTP 403: ACL not found")
        up = self.instances(sc, "pay")
        self.assertEqual(up["consul"]["last_error"], "HTTP 403: ACL not found")
        self.assertTrue(up["stale"])
        self.assertEqual(up["instances"], [])
        st = sc.stats()
        self.assertEqual(st.value("sidecar_consul_registered"), 0)
        self.assertGreaterEqual(st.value("sidecar_consul_watch_errors_total", upstream="pay",
                                         service="pay"), 1)
        self.assertEqual(st.value("sidecar_consul_watch_stale", upstream="pay", service="pay"), 1)
        # the outbound answers cleanly, and the sidecar stays up and keeps retrying
        resp = harness.http_get(out, "/echo")
        self.assertEqual(resp.status, 503)
        time.sleep(1.5)
        self.assertTrue(sc.alive())
        self.assertGreaterEqual(len(emu.requests(path_prefix="/v1/agent/service/register")), 2)

    def test_token_file_read_again_on_sighup(self):
        emu = self.emulator(acl_token="root-secret", acl_default_policy="deny")
        emu.add_acl_token("weak-secret", rules="read-only")       # no service:write on web
        emu.add_acl_token("good-secret", rules="service:web")
        app = self.peer("app")
        pay = self.peer("pay")
        emu.register_instance("pay", id="pay-1", port=pay.port, address="127.0.0.1")
        d = tempfile.mkdtemp(prefix="sc-consul-token-")
        tf = os.path.join(d, "token")
        with open(tf, "w") as f:
            f.write("weak-secret\n")
        out = free_port()
        sc = self.sidecar(config(free_port(), {"address": emu.address, "token_file": tf, "check": "ttl"},
                                 app_port=app.port, in_port=free_port(),
                                 upstreams=[consul_upstream("pay", out)]))
        r = emu.wait_for_request(path_prefix="/v1/agent/service/register", timeout=5)
        self.assertEqual((header(r, "X-Consul-Token"), r["Status"]), ("weak-secret", 403))
        self.assertTrue(wait_until(lambda: "Permission denied" in sc.log_text(), 5))

        # an empty, then a missing file: one clear line each, the old token stays
        with open(tf, "w") as f:
            f.write("  \n")
        sc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "keeping the ACL token in use" in sc.log_text(), 5))
        self.assertIn("consul: SIGHUP: cannot use the token file %s (the file is empty); "
                      "keeping the ACL token in use" % tf, sc.log_text())
        os.unlink(tf)
        sc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: sc.log_text().count("keeping the ACL token in use") == 2, 5))
        self.assertIn("No such file or directory", sc.log_text())
        seq = emu.requests()[-1]["Seq"]
        self.assertTrue(wait_until(lambda: emu.requests(path_prefix="/v1/agent/service/register", since=seq), 10))
        self.assertEqual(header(emu.requests(path_prefix="/v1/agent/service/register", since=seq)[0],
                                "X-Consul-Token"), "weak-secret")
        # the emulator records the request before the sidecar reads its 403
        self.assertTrue(wait_until(lambda: sc.clusters()["consul"]["registration"]["state"] == "failed", 5))

        # the operator fixes the file and sends SIGHUP: the next requests succeed at once
        with open(tf, "w") as f:
            f.write("good-secret\n")
        seq = emu.requests()[-1]["Seq"]
        t0 = time.monotonic()
        sc.send_signal(signal.SIGHUP)
        rec = self.wait_register(emu, since=seq, timeout=5)
        self.assertLess(time.monotonic() - t0, 3.0)   # not after the backoff
        self.assertEqual(header(rec, "X-Consul-Token"), "good-secret")
        self.assertIn("new ACL token from %s" % tf, sc.log_text())
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 5))
        self.assertTrue(wait_until(lambda: sc.clusters()["consul"]["registration"]["state"] == "registered", 5))
        later = [r for r in emu.requests() if r["Seq"] > rec["Seq"]]
        self.assertTrue(later)
        for r in later:
            self.assertEqual(header(r, "X-Consul-Token"), "good-secret", r["Path"])
        self.assertEqual(sc.clusters()["consul"]["token_reloads"], 1)
        self.assertEqual(len(self.instances(sc, "pay")["instances"]), 1)
        # the same token again: nothing changes
        sc.send_signal(signal.SIGHUP)
        self.assertTrue(wait_until(lambda: "ACL token in %s is unchanged" % tf in sc.log_text(), 5))
        self.assertEqual(sc.clusters()["consul"]["token_reloads"], 1)

    def test_unix_socket(self):
        d = tempfile.mkdtemp(prefix="sc-consul-unix-")
        path = os.path.join(d, "consul.sock")
        emu = self.emulator(unix_path=path)
        app = self.peer("app")
        self.sidecar(config(free_port(), {"address": "unix://" + path, "check": "ttl"},
                            app_port=app.port, in_port=free_port()))
        rec = self.wait_register(emu)
        self.assertEqual(rec["Transport"], "unix")
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 5))


def make_certs(d, server_san="IP:127.0.0.1"):
    """A CA, a server certificate for 127.0.0.1 (or server_san) and a client certificate."""
    def run(*a):
        r = harness.run(["openssl"] + list(a), timeout=30, cwd=d)
        if r.returncode != 0:
            raise AssertionError("openssl %s: %s" % (a[0], r.stderr.decode()))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca")
    for name, ext in (("server", "subjectAltName=%s\nextendedKeyUsage=serverAuth" % server_san),
                      ("client", "extendedKeyUsage=clientAuth")):
        with open(os.path.join(d, name + ".ext"), "w") as f:
            f.write(ext + "\n")
        run("req", *ec, "-keyout", name + ".key", "-out", name + ".csr", "-subj", "/CN=" + name)
        run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", name + ".pem", "-days", "1", "-extfile", name + ".ext")


class TlsFront:
    """TLS in front of the emulator (which speaks plain HTTP): requires a
    client certificate from the CA, then pipes bytes both ways."""

    def __init__(self, backend_port, d, client_cert=True):
        import ssl
        self.backend = backend_port
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(os.path.join(d, "server.pem"), os.path.join(d, "server.key"))
        self.ctx.load_verify_locations(os.path.join(d, "ca.pem"))
        self.ctx.verify_mode = ssl.CERT_REQUIRED if client_cert else ssl.CERT_NONE
        self.server_names = []        # SNI of each handshake (None: none sent)
        self.ctx.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
        self.lsock = socket.socket()
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.handshakes = 0
        self.closed = False
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def accept_loop(self):
        while not self.closed:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            t = self.ctx.wrap_socket(c, server_side=True)
        except OSError:
            c.close()
            return
        self.handshakes += 1
        b = socket.create_connection(("127.0.0.1", self.backend))

        def pipe(src, dst):
            try:
                while True:
                    data = src.recv(65536)
                    if not data:
                        break
                    dst.sendall(data)
            except OSError:
                pass
            for s_ in (src, dst):
                try:
                    s_.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        other = threading.Thread(target=pipe, args=(b, t), daemon=True)
        other.start()
        pipe(t, b)
        other.join(5)
        t.close()
        b.close()

    def close(self):
        self.closed = True
        self.lsock.close()


class TlsTest(ConsulTestCase):
    def test_https_with_client_certificate(self):
        if not harness.have_tool("openssl"):
            raise unittest.SkipTest("openssl is not installed")
        d = tempfile.mkdtemp(prefix="sc-consul-tls-")
        make_certs(d)
        emu = self.emulator()
        front = TlsFront(emu.port, d)
        self.addCleanup(front.close)
        app = self.peer("app")
        pay = self.peer("pay")
        emu.register_instance("pay", id="pay-1", port=pay.port, address="127.0.0.1")
        out = free_port()
        sc = self.sidecar(config(free_port(), {
            "address": "https://127.0.0.1:%d" % front.port, "check": "ttl",
            "ca_file": os.path.join(d, "ca.pem"), "cert_file": os.path.join(d, "client.pem"),
            "key_file": os.path.join(d, "client.key")},
            app_port=app.port, in_port=free_port(), upstreams=[consul_upstream("pay", out)]))
        self.wait_register(emu)
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 1, 5))
        self.assertGreater(front.handshakes, 0)
        self.assertEqual(sc.clusters()["consul"]["address"], "https://127.0.0.1:%d" % front.port)

    def test_https_unknown_ca_is_refused(self):
        if not harness.have_tool("openssl"):
            raise unittest.SkipTest("openssl is not installed")
        d = tempfile.mkdtemp(prefix="sc-consul-tls-")
        make_certs(d)
        emu = self.emulator()
        front = TlsFront(emu.port, d)
        self.addCleanup(front.close)
        app = self.peer("app")
        sc = self.sidecar(config(free_port(), {
            "address": "https://127.0.0.1:%d" % front.port, "check": "ttl",
            "cert_file": os.path.join(d, "client.pem"), "key_file": os.path.join(d, "client.key")},
            app_port=app.port, in_port=free_port()))
        self.assertTrue(wait_until(lambda: "registering service 'web'" in sc.log_text(), 5))
        self.assertIn("certificate", sc.clusters()["consul"]["registration"]["last_error"])
        self.assertEqual(emu.requests(path_prefix="/v1/agent/service/register"), [])


CONSUL_DNS_NAME = "consul.agent.test"   # in the agent's certificate; does not resolve


class TlsServerNameTest(ConsulTestCase):
    """The agent's certificate names a DNS name, not the address dialled:
    CONSUL_TLS_SERVER_NAME (or consul.tls_server_name) is the name verified
    and sent in SNI while the connection still goes to CONSUL_HTTP_ADDR."""

    def setUp(self):
        if not harness.have_tool("openssl"):
            raise unittest.SkipTest("openssl is not installed")
        self.d = tempfile.mkdtemp(prefix="sc-consul-sni-")
        make_certs(self.d, server_san="DNS:" + CONSUL_DNS_NAME)
        self.emu = self.emulator()
        self.front = TlsFront(self.emu.port, self.d, client_cert=False)
        self.addCleanup(self.front.close)
        self.app = self.peer("app")

    def start(self, consul, env=None):
        with mock.patch.dict(os.environ, env or {}):
            return self.sidecar(config(free_port(), dict({"check": "ttl"}, **consul),
                                       app_port=self.app.port, in_port=free_port()))

    def test_name_mismatch_without_server_name(self):
        sc = self.start({"address": "https://127.0.0.1:%d" % self.front.port,
                         "ca_file": os.path.join(self.d, "ca.pem")})
        self.assertTrue(wait_until(lambda: "registering service 'web'" in sc.log_text(), 5))
        err = sc.clusters()["consul"]["registration"]["last_error"]
        self.assertRegex(err, "certificate|SSL|127.0.0.1")
        self.assertEqual(emu_requests(self.emu, "/v1/agent/service/register"), [])

    def test_server_name_from_environment(self):
        sc = self.start({}, env={"CONSUL_HTTP_ADDR": "https://127.0.0.1:%d" % self.front.port,
                                 "CONSUL_CACERT": os.path.join(self.d, "ca.pem"),
                                 "CONSUL_TLS_SERVER_NAME": CONSUL_DNS_NAME})
        rec = self.wait_register(self.emu)
        self.assertIn(CONSUL_DNS_NAME, self.front.server_names)
        self.assertEqual(header(rec, "Host").split(":")[0], CONSUL_DNS_NAME)
        self.assertTrue(wait_until(lambda: check_status(self.emu, "service:web-1") == "passing", 5))
        cl = sc.clusters()["consul"]
        self.assertEqual(cl["address"], "https://127.0.0.1:%d" % self.front.port)
        self.assertEqual(cl["tls_server_name"], CONSUL_DNS_NAME)

    def test_server_name_in_file_and_ca_path(self):
        # CONSUL_CAPATH / consul.ca_path: a directory of CA certificates by subject hash
        capath = os.path.join(self.d, "cas")
        os.mkdir(capath)
        with open(os.path.join(self.d, "ca.pem")) as f, open(os.path.join(capath, "consul-ca.pem"), "w") as g:
            g.write(f.read())
        r = harness.run(["openssl", "rehash", capath], timeout=30)
        if r.returncode != 0:
            r = harness.run(["c_rehash", capath], timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(any(n.endswith(".0") for n in os.listdir(capath)), os.listdir(capath))
        sc = self.start({"address": "https://127.0.0.1:%d" % self.front.port, "ca_path": capath,
                         "tls_server_name": CONSUL_DNS_NAME})
        self.wait_register(self.emu)
        self.assertTrue(wait_until(lambda: check_status(self.emu, "service:web-1") == "passing", 5))
        self.assertIn(CONSUL_DNS_NAME, self.front.server_names)
        self.assertEqual(sc.config_json()["consul"]["ca_path"], capath)

    def test_ca_path_from_environment(self):
        capath = os.path.join(self.d, "cas-env")
        os.mkdir(capath)
        with open(os.path.join(self.d, "ca.pem")) as f, open(os.path.join(capath, "ca.pem"), "w") as g:
            g.write(f.read())
        r = harness.run(["openssl", "rehash", capath], timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.start({"address": "https://127.0.0.1:%d" % self.front.port},
                   env={"CONSUL_CAPATH": capath, "CONSUL_TLS_SERVER_NAME": CONSUL_DNS_NAME})
        self.wait_register(self.emu)
        # an empty directory holds no CA: refused
        empty = os.path.join(self.d, "cas-empty")
        os.mkdir(empty)
        since = self.emu.requests()[-1]["Seq"] if self.emu.requests() else 0
        sc2 = self.sidecar(config(free_port(), {
            "address": "https://127.0.0.1:%d" % self.front.port, "check": "ttl", "ca_path": empty,
            "tls_server_name": CONSUL_DNS_NAME}, app_port=self.app.port, in_port=free_port(),
            service={"name": "web2", "id": "web2-1", "address": "127.0.0.1"}))
        self.assertTrue(wait_until(lambda: "registering service 'web2'" in sc2.log_text(), 5))
        self.assertNotEqual(sc2.clusters()["consul"]["registration"]["state"], "registered")
        self.assertEqual([r for r in self.emu.requests(path_prefix="/v1/agent/service/register", since=since)
                          if "web2" in r["Body"]], [])


def emu_requests(emu, prefix):
    return emu.requests(path_prefix=prefix)


class NamespaceTest(ConsulTestCase):
    """CONSUL_NAMESPACE / CONSUL_PARTITION (consul.namespace / partition):
    sent as ?ns= / &partition= on the requests Consul scopes, only when set."""

    def run_sidecar(self, emu, consul, env=None):
        app = self.peer("app")
        pay = self.peer("pay")
        out = free_port()
        with mock.patch.dict(os.environ, env or {}):
            sc = self.sidecar(config(free_port(), dict({"address": emu.address, "check": "ttl"}, **consul),
                                     app_port=app.port, in_port=free_port(),
                                     upstreams=[consul_upstream("pay", out)]))
        return sc, pay, out

    def test_namespace_and_partition_sent_when_set(self):
        emu = self.emulator(enterprise=True)
        pay_default = self.peer("pay-default")
        emu.register_instance("pay", id="pay-default", port=pay_default.port, address="127.0.0.1")
        sc, pay, out = self.run_sidecar(emu, {"namespace": "team-a"}, env={"CONSUL_PARTITION": "part-1"})
        emu.register_instance("pay", id="pay-a", port=pay.port, address="127.0.0.1", namespace="team-a",
                              partition="part-1")
        rec = self.wait_register(emu)
        self.assertEqual(rec["Args"].get("ns"), ["team-a"])
        self.assertEqual(rec["Args"].get("partition"), ["part-1"])
        svc = local_services(emu)["web-1"]
        self.assertEqual((svc.get("Namespace"), svc.get("Partition")), ("team-a", "part-1"))
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 5))
        # the watch sees only the namespace's instance
        self.assertTrue(wait_until(lambda: [i["id"] for i in self.instances(sc, "pay")["instances"]]
                                   == ["pay-a"], 5), self.instances(sc, "pay"))
        self.assertEqual({p for _, p in get_many(out, 4)}, {"pay"})
        by_path = {}
        for r in emu.requests():
            by_path.setdefault(r["Path"].split("/")[3] if r["Path"].count("/") >= 3 else r["Path"], []).append(r)
        scoped = [r for r in emu.requests() if r["Path"].startswith(("/v1/agent/service/register",
                                                                    "/v1/agent/check/", "/v1/health/service/",
                                                                    "/v1/agent/service/"))]
        self.assertTrue(any(r["Path"].startswith("/v1/agent/check/") for r in scoped))
        self.assertTrue(any(r["Path"].startswith("/v1/health/service/") for r in scoped))
        for r in scoped:
            self.assertEqual((r["Args"].get("ns"), r["Args"].get("partition")), (["team-a"], ["part-1"]),
                             r["Method"] + " " + r["Path"] + "?" + r["Query"])
            self.assertEqual(r["Status"] in (200, None), True, r)
        # deregistration at drain carries them too
        self.assertEqual(sc.stop(timeout=15), 0)
        d = emu.requests(path_prefix="/v1/agent/service/deregister/")
        self.assertEqual(len(d), 1)
        self.assertEqual((d[0]["Args"].get("ns"), d[0]["Status"]), (["team-a"], 200))

    def test_never_sent_when_unset(self):
        emu = self.emulator()           # the Community Edition: 400 to any ns
        sc, pay, out = self.run_sidecar(emu, {}, env={"CONSUL_NAMESPACE": "", "CONSUL_PARTITION": ""})
        emu.register_instance("pay", id="pay-1", port=pay.port, address="127.0.0.1")
        self.wait_register(emu)
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 1, 5))
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 5))
        reqs = emu.requests()
        self.assertTrue(reqs)
        for r in reqs:
            self.assertNotIn("ns", r["Args"], r["Path"])
            self.assertNotIn("partition", r["Args"], r["Path"])
            self.assertNotEqual(r["Status"], 400, r["Path"])

    def test_community_edition_refuses_a_namespace(self):
        emu = self.emulator()
        app = self.peer("app")
        sc = self.sidecar(config(free_port(), {"address": emu.address, "check": "ttl", "namespace": "default"},
                                 app_port=app.port, in_port=free_port()))
        self.assertTrue(wait_until(lambda: "Namespaces are a Consul Enterprise feature" in sc.log_text(), 5))
        self.assertEqual(sc.clusters()["consul"]["namespace"], "default")


class ResolutionTest(ConsulTestCase):
    def setUp(self):
        self.a = self.peer("pay-a")
        self.b = self.peer("pay-b")

    def test_two_instances_and_one_turns_critical(self):
        emu = self.emulator()
        emu.register_instance("pay", id="pay-a", port=self.a.port, address="127.0.0.1")
        emu.register_instance("pay", id="pay-b", port=self.b.port, address="127.0.0.1",
                              weights={"Passing": 1, "Warning": 1})
        out = free_port()
        sc = self.sidecar(config(free_port(), {"address": emu.address, "register_service": False},
                                 upstreams=[consul_upstream("pay", out)]))
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 2, 5))
        up = self.instances(sc, "pay")
        self.assertEqual(sorted(i["id"] for i in up["instances"]), ["pay-a", "pay-b"])
        self.assertFalse(up["stale"])
        self.assertGreater(up["consul"]["last_index"], 0)
        peers = [p for s, p in get_many(out, 40) if s == 200]
        self.assertEqual(len(peers), 40)
        self.assertGreater(peers.count("pay-a"), 5)
        self.assertGreater(peers.count("pay-b"), 5)
        # the query the watch sends
        q = emu.requests(path_prefix="/v1/health/service/pay")
        self.assertIn("passing", q[0]["Args"])
        self.assertNotIn("index", q[0]["Args"])
        blocking = [r for r in q if "index" in r["Args"]]
        self.assertTrue(blocking)
        self.assertEqual(blocking[0]["Args"]["wait"], ["5m"])
        self.assertGreaterEqual(int(blocking[0]["Args"]["index"][0]), 1)

        with Traffic(out) as t:
            time.sleep(0.5)
            t_change = time.monotonic()
            emu.set_check_status("service:pay-b", "critical", output="test: critical")
            time.sleep(2.0)
        failed = [r for r in t.results if r[1] != 200]
        self.assertEqual(failed, [], "failed requests during the change")
        late_b = [r for r in t.results if r[0] > t_change + 1.0 and r[2] == "pay-b"]
        self.assertEqual(late_b, [], "pay-b got new requests more than 1s after it went critical")
        before_b = [r for r in t.results if r[0] < t_change and r[2] == "pay-b"]
        self.assertTrue(before_b)
        self.assertGreater(len([r for r in t.results if r[0] > t_change + 1.0]), 5)
        self.assertEqual([i["id"] for i in self.instances(sc, "pay")["instances"]], ["pay-a"])
        # and back
        emu.set_check_status("service:pay-b", "passing")
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 2, 5))
        self.assertIn("has 2 healthy instance(s) (+1 -0", sc.log_text())

    def test_outlier_ejection_on_consul_instances(self):
        # Consul-discovered instances share the per-instance state that outlier
        # detection needs: a dead instance is ejected and traffic goes on.
        emu = self.emulator()
        dead = free_port()  # registered, nothing listening
        emu.register_instance("pay", id="pay-a", port=self.a.port, address="127.0.0.1")
        emu.register_instance("pay", id="pay-dead", port=dead, address="127.0.0.1")
        out = free_port()
        up = consul_upstream("pay", out)
        up["outlier"] = {"consecutive_failures": 2, "eject_for": "30s", "max_ejected": "50%"}
        up["retries"] = {"max_attempts": 2, "on": ["connect-failure"]}
        sc = self.sidecar(config(free_port(), {"address": emu.address, "register_service": False},
                                 upstreams=[up]))
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 2, 5))
        results = get_many(out, 40)
        self.assertEqual([s for s, _ in results if s != 200], [])
        inst = {i["id"]: i for i in self.instances(sc, "pay")["instances"]}
        self.assertTrue(inst["pay-dead"]["ejected"], inst)
        self.assertFalse(inst["pay-a"]["ejected"], inst)
        self.assertIn("ejected", sc.log_text())

    def test_tag_and_weights(self):
        emu = self.emulator()
        emu.register_instance("pay", id="pay-a", port=self.a.port, address="127.0.0.1",
                              tags=["v2"], weights={"Passing": 3, "Warning": 1})
        emu.register_instance("pay", id="pay-b", port=self.b.port, address="127.0.0.1",
                              tags=["v1"])
        out = free_port()
        sc = self.sidecar(config(free_port(), {"address": emu.address, "register_service": False},
                                 upstreams=[consul_upstream("pay", out, tag="v2")]))
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 1, 5))
        inst = self.instances(sc, "pay")["instances"][0]
        self.assertEqual((inst["id"], inst["weight"]), ("pay-a", 3))
        q = emu.requests(path_prefix="/v1/health/service/pay")
        self.assertEqual(q[0]["Args"]["tag"], ["v2"])
        self.assertEqual({p for _, p in get_many(out, 10)}, {"pay-a"})

    def test_index_backwards(self):
        emu = self.emulator()
        emu.register_instance("pay", id="pay-a", port=self.a.port, address="127.0.0.1")
        sc = self.sidecar(config(free_port(), {"address": emu.address, "register_service": False},
                                 upstreams=[consul_upstream("pay", free_port())]))
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 1, 5))
        self.assertTrue(emu.wait_for_request(path_prefix="/v1/health/service/pay",
                                             predicate=lambda r: "index" in r["Args"], timeout=5))
        seq = max(r["Seq"] for r in emu.requests())
        emu.index_backwards(by=5)
        # the answer carries a lower index: the next query has no index (a
        # fresh fetch), then blocking goes on from the new index
        r = emu.wait_for_request(path_prefix="/v1/health/service/pay", since=seq,
                                 predicate=lambda r: "index" not in r["Args"], timeout=5)
        self.assertIsNotNone(r, emu.requests(since=seq))
        r2 = emu.wait_for_request(path_prefix="/v1/health/service/pay", since=r["Seq"],
                                  predicate=lambda r: "index" in r["Args"], timeout=5)
        self.assertIsNotNone(r2)
        self.assertGreaterEqual(int(r2["Args"]["index"][0]), 1)
        emu.register_instance("pay", id="pay-b", port=self.b.port, address="127.0.0.1")
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 2, 5))

    def test_agent_killed_then_back(self):
        """The agent process is killed: traffic goes on to the last known
        instances, stale on the admin endpoint and in metrics; the agent is
        started again: the watch resumes and follows changes."""
        port = free_port()
        state = os.path.join(tempfile.mkdtemp(prefix="sc-consul-state-"), "state.json")

        def start_agent():
            p = self.spawn([PY, EMULATOR, "--http", "127.0.0.1:%d" % port, "--state-file", state],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.assertTrue(harness.wait_port(port, timeout=10), "emulator did not start")
            return p

        agent = start_agent()
        ctl = ControlClient("http://127.0.0.1:%d" % port)
        ctl.register_instance("pay", id="pay-a", port=self.a.port, address="127.0.0.1")
        ctl.register_instance("pay", id="pay-b", port=self.b.port, address="127.0.0.1")
        out = free_port()
        sc = self.sidecar(config(free_port(), {"address": "http://127.0.0.1:%d" % port,
                                               "register_service": False},
                                 upstreams=[consul_upstream("pay", out)]))
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 2, 5))
        self.assertTrue(wait_until(lambda: "pay-b" in read_text(state), 5))

        agent.send_signal(signal.SIGKILL)
        agent.wait(5)
        self.assertTrue(wait_until(lambda: self.instances(sc, "pay")["stale"], 5))
        up = self.instances(sc, "pay")
        self.assertEqual(len(up["instances"]), 2)
        self.assertTrue(up["consul"]["stale"])
        self.assertTrue(up["consul"]["last_error"])
        st = sc.stats()
        self.assertEqual(st.value("sidecar_upstream_discovery_stale", upstream="pay"), 1)
        self.assertEqual(st.value("sidecar_consul_watch_stale", upstream="pay", service="pay"), 1)
        res = get_many(out, 20)
        self.assertEqual([s for s, _ in res], [200] * 20)
        self.assertEqual({p for _, p in res}, {"pay-a", "pay-b"})
        self.assertIn("keeping 2 last known instance(s) (stale)", sc.log_text())

        start_agent()
        self.assertTrue(wait_until(lambda: not self.instances(sc, "pay")["stale"], 20),
                        self.instances(sc, "pay"))
        self.assertIn("works again", sc.log_text())
        ctl.deregister_instance("pay-b")
        self.assertTrue(wait_until(
            lambda: [i["id"] for i in self.instances(sc, "pay")["instances"]] == ["pay-a"], 5))
        self.assertEqual({p for _, p in get_many(out, 10)}, {"pay-a"})
        self.assertEqual(sc.stats().value("sidecar_upstream_discovery_stale", upstream="pay"), 0)

    def test_cache_file_when_agent_unreachable_at_start(self):
        emu = self.emulator()
        emu.register_instance("pay", id="pay-a", port=self.a.port, address="127.0.0.1")
        cache = os.path.join(tempfile.mkdtemp(prefix="sc-consul-cache-"), "instances.json")
        out = free_port()
        cfg = config(free_port(), {"address": emu.address, "register_service": False,
                                   "cache_file": cache},
                     upstreams=[consul_upstream("pay", out)])
        sc = self.sidecar(cfg, name="first")
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 1, 5))
        self.assertEqual(sc.stop(), 0)
        doc = json.loads(read_text(cache))
        self.assertEqual(doc["upstreams"][0]["instances"][0]["id"], "pay-a")

        emu.stop_listening()
        sc2 = self.sidecar(cfg, name="second")
        self.assertTrue(wait_until(lambda: len(self.instances(sc2, "pay")["instances"]) == 1, 5))
        up = self.instances(sc2, "pay")
        self.assertTrue(up["stale"])
        self.assertTrue(up["consul"]["from_cache"])
        self.assertEqual({p for s, p in get_many(out, 5) if s == 200}, {"pay-a"})
        self.assertIn("from the cache file", sc2.log_text())
        emu.start_listening()
        self.assertTrue(wait_until(lambda: not self.instances(sc2, "pay")["stale"], 20))
        self.assertFalse(self.instances(sc2, "pay")["consul"]["from_cache"])


    def test_cache_file_tmp_symlink_not_followed(self):
        """A symbolic link planted at <cache_file>.tmp does not redirect the
        write: the sidecar refuses, says why, and the link's target is intact."""
        emu = self.emulator()
        emu.register_instance("pay", id="pay-a", port=self.a.port, address="127.0.0.1")
        d = tempfile.mkdtemp(prefix="sc-consul-cache-")
        cache = os.path.join(d, "instances.json")
        victim = os.path.join(d, "victim")
        with open(victim, "w") as f:
            f.write("precious\n")
        os.symlink(victim, cache + ".tmp")
        cfg = config(free_port(), {"address": emu.address, "register_service": False,
                                   "cache_file": cache},
                     upstreams=[consul_upstream("pay", free_port())])
        sc = self.sidecar(cfg)
        self.assertTrue(wait_until(lambda: len(self.instances(sc, "pay")["instances"]) == 1, 5))
        self.assertEqual(sc.stop(), 0)                     # the stop writes the cache
        self.assertEqual(read_text(victim), "precious\n")
        self.assertFalse(os.path.exists(cache))
        self.assertIn("is a symbolic link", sc.log_text())
        # once the link is gone the next run writes the file, mode 0600
        os.unlink(cache + ".tmp")
        sc2 = self.sidecar(cfg, name="second")
        self.assertTrue(wait_until(lambda: len(self.instances(sc2, "pay")["instances"]) == 1, 5))
        self.assertEqual(sc2.stop(), 0)
        self.assertEqual(json.loads(read_text(cache))["upstreams"][0]["instances"][0]["id"], "pay-a")
        self.assertEqual(os.stat(cache).st_mode & 0o777, 0o600)

class GrpcHealthTest(ConsulTestCase):
    def setUp(self):
        try:
            import grpc  # noqa: F401
        except ImportError:
            raise unittest.SkipTest("python3-grpcio is not installed")

    def test_check_and_watch(self):
        import grpc
        emu = self.emulator()
        app = self.peer("app")
        gport = free_port()
        sc = self.sidecar(config(free_port(), {"address": emu.address, "check": "grpc",
                                               "check_interval": "1s"},
                                 app_port=app.port, in_port=free_port(),
                                 health={"grpc_listen": addr(gport)}))
        rec = self.wait_register(emu)
        check = json.loads(rec["Body"])["Check"]
        self.assertEqual(check, {"CheckID": "service:web-1", "Name": check["Name"],
                                 "GRPC": "127.0.0.1:%d" % gport, "GRPCUseTLS": False,
                                 "Interval": "1s", "Timeout": "1s"})
        ch = self.channel(gport)
        chk = ch.unary_unary("/grpc.health.v1.Health/Check")
        self.assertEqual(chk(b"", timeout=5), b"\x08\x01")
        self.assertEqual(chk(b"\x0a\x03web", timeout=5), b"\x08\x01")
        with self.assertRaises(grpc.RpcError) as cm:
            chk(b"\x0a\x05other", timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(grpc.RpcError) as cm:
            ch.unary_unary("/grpc.health.v1.Health/List")(b"", timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)
        # the agent's gRPC check passes
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "passing", 10),
                        checks_of(emu, "service:web-1"))

        watch = ch.unary_stream("/grpc.health.v1.Health/Watch")(b"", timeout=30)
        it = iter(watch)
        self.assertEqual(next(it), b"\x08\x01")
        app_port = app.port
        app.stop()
        self.assertEqual(next(it), b"\x08\x02")   # NOT_SERVING, pushed
        self.assertEqual(chk(b"", timeout=5), b"\x08\x02")
        self.assertTrue(wait_until(lambda: check_status(emu, "service:web-1") == "critical", 10))
        self.peer("app2", port=app_port)
        self.assertEqual(next(it), b"\x08\x01")
        watch.cancel()
        unknown = iter(ch.unary_stream("/grpc.health.v1.Health/Watch")(b"\x0a\x01x", timeout=5))
        self.assertEqual(next(unknown), b"\x08\x03")  # SERVICE_UNKNOWN, stream stays open
        self.assertEqual(sc.stop(), 0)

    def test_port_in_use(self):
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        app = self.peer("app")
        sc = self.sidecar(config(free_port(), {"register_service": False,
                                               "address": "127.0.0.1:1"},
                                 app_port=app.port, in_port=free_port(),
                                 health={"grpc_listen": "127.0.0.1:%d" % busy.getsockname()[1]}),
                          wait_ready=False)
        sc.proc.wait(15)
        sc.stopped = True
        self.assertEqual(sc.proc.returncode, 1)
        self.assertIn("health.grpc_listen: cannot listen on 127.0.0.1:%d" % busy.getsockname()[1],
                      sc.log_text())


if __name__ == "__main__":
    unittest.main()

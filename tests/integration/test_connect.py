"""Consul Connect as the certificate source (tls.source: consul; docs/tls.md),
through the real binary against the agent emulator
(tests/consul/consul_emulator.py, in-process), which implements
/v1/agent/connect/ca/roots and /v1/agent/connect/ca/leaf/<service> as
blocking queries and a control call that rotates its CA.

- ConnectTrafficTest: a callee `api` (inbound mTLS, caller identities
  checked against tls.allow) and a caller `web` (upstream with tls.mode
  mutual and server_identity = api's SPIFFE ID as the emulator issues it:
  spiffe://<cluster-id>.consul/ns/default/dc/dc1/svc/api), both with
  tls.source consul: traffic passes, the app sees web's identity, /certs
  shows the source and the Connect leaf. The emulator rotates its CA: both
  sides pick up the new roots (old + new) and new leaves while a bounded
  client loop (a persistent upstream connection and one that reconnects for
  every request) sees zero failures; a garbage leaf answer is refused with a
  log line and the old material stays.
- ConnectStartupTest: while the emulator holds the leaf answer back,
  /ready is 503 "waiting for the Connect certificate" and the inbound
  listener serves neither TLS nor cleartext; once the leaf arrives the
  sidecar is ready and serves mTLS.
- ConnectAclTest: ACLs on (default deny) and a token without service:write
  on the service: the leaf is refused (403) with a log line naming the token
  problem, /ready 503 and /certs say why, no cleartext, no crash; once the
  token gets the permission the retry brings the leaf in, and a fresh
  sidecar with a proper token (consul.token_file) gets its leaf and traffic
  passes.
- ConnectMetricsTest: the sidecar_connect_* metrics after start, after a CA
  rotation and after bad answers (leaf garbage, roots 500).
- ConnectLeafOrderTest: a new leaf is used only once the roots in use vouch
  for it: a rotated leaf that comes while the roots query fails waits for
  the new roots; a leaf of a foreign CA is never used and is reported as an
  error after the bounded wait.

Every wait and loop is bounded.
"""

import http.client
import json
import os
import socket
import ssl
import sys
import threading
import time
import unittest
import urllib.request

import harness
from harness import SidecarTestCase, addr, free_port, upstream, wait_until


HDR = "x-sidecar-caller"


def ident(emu, svc):
    return "spiffe://%s.consul/ns/default/dc/%s/svc/%s" % (emu.cluster_id, emu.datacenter, svc)


def consul_section(emu, wait="2s"):
    return {"address": emu.address, "register_service": False, "wait": wait}


def api_config(emu, admin_port, in_port, app_port, allow=None):
    cfg = harness.base_config(admin_port, inbound={"listen_port": in_port, "app_port": app_port},
                              workers=2, name="api")
    cfg["consul"] = consul_section(emu)
    cfg["tls"] = {"source": "consul"}
    if allow:
        cfg["tls"]["allow"] = list(allow)
    return cfg


def web_config(emu, admin_port, upstreams):
    cfg = harness.base_config(admin_port, upstreams=upstreams, workers=1, name="web")
    cfg["consul"] = consul_section(emu)
    cfg["tls"] = {"source": "consul"}
    return cfg


def get(port, path="/echo", conn=None):
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        if own:
            conn.close()


class Loop:
    """GET /echo in a loop through one port on one keep-alive connection
    (a new one after any failure; with fresh, a new one for every request:
    the upstream's idle timeout of 5ms also closes idle client
    connections); records failures."""

    def __init__(self, port, fresh=False):
        self.port = port
        self.fresh = fresh
        self.ok = 0
        self.failures = []
        self.stop_ev = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        conn = None
        deadline = time.monotonic() + 120
        while not self.stop_ev.is_set() and time.monotonic() < deadline:
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/echo")
                r = conn.getresponse()
                body = r.read()
                if self.fresh:
                    conn.close()
                    conn = None
                if r.status == 200:
                    self.ok += 1
                else:
                    self.failures.append((r.status, body[:200]))
            except (OSError, http.client.HTTPException) as e:
                self.failures.append(("error", repr(e)))
                conn = None
            time.sleep(0.01)
        if conn:
            conn.close()

    def __enter__(self):
        self.th.start()
        return self

    def __exit__(self, *a):
        self.stop_ev.set()
        self.th.join(10)


class ConnectTestCase(SidecarTestCase):
    """Base of the Connect tests (the emulator comes from SidecarTestCase)."""


class ConnectTrafficTest(ConnectTestCase):

    def certs(self, sc):
        return sc.admin_json("/certs")

    def test_traffic_rotation_and_refusal(self):
        emu = self.emulator()
        app = self.http1_peer("app")
        api_id, web_id = ident(emu, "api"), ident(emu, "web")
        api_port = free_port()
        api = self.sidecar(api_config(emu, free_port(), api_port, app.port, allow=[web_id]),
                           name="api")
        mutual = {"mode": "mutual", "server_identity": api_id}
        keep_port, new_port = free_port(), free_port()
        web = self.sidecar(web_config(emu, free_port(), [
            upstream("api", "http1", keep_port, [api_port], tls=mutual),
            upstream("api-new", "http1", new_port, [api_port], tls=mutual,
                     timeouts={"idle": "5ms"}),
        ]), name="web")

        # /certs: the source, the Connect leaf and the emulator's root
        ca = self.certs(api)
        self.assertEqual(ca["source"], "consul")
        self.assertEqual(ca["connect"]["state"], "ready")
        self.assertEqual(ca["inbound"]["certificate"]["identity"], api_id)
        self.assertEqual(len(ca["inbound"]["roots"]), 1)
        # a 72h Connect leaf is not "expiring" (the 14-day file rule does not apply)
        self.assertEqual(ca["inbound"]["certificate"]["state"], "valid")
        cw = self.certs(web)
        self.assertEqual(cw["source"], "consul")
        self.assertEqual(cw["outbound_mutual"]["certificate"]["identity"], web_id)
        self.assertIn("first Consul Connect material in use", api.log_text())

        # traffic passes; the app sees the caller's Connect identity
        for port in (keep_port, new_port):
            status, body = get(port)
            self.assertEqual(status, 200, body)
            hdrs = [v for k, v in json.loads(body)["headers"] if k.lower() == HDR]
            self.assertEqual(hdrs, [web_id])

        api_serial = ca["inbound"]["certificate"]["serial"]
        web_serial = cw["outbound_mutual"]["certificate"]["serial"]
        api_issuer = ca["inbound"]["certificate"]["issuer"]

        # CA rotation under load: zero failures
        hs_before = api.stats().value("sidecar_tls_handshakes_total")
        with Loop(keep_port) as keep, Loop(new_port, fresh=True) as fresh:
            time.sleep(1.0)
            emu.rotate_ca()

            def rotated(sc, role, old_serial):
                c = self.certs(sc)
                return (len(c[role]["roots"]) == 2 and
                        c[role]["certificate"]["serial"] != old_serial)
            self.assertTrue(wait_until(lambda: rotated(api, "inbound", api_serial), 20),
                            json.dumps(self.certs(api), indent=1) + api.log_tail())
            self.assertTrue(wait_until(lambda: rotated(web, "outbound_mutual", web_serial), 20),
                            json.dumps(self.certs(web), indent=1) + web.log_tail())
            time.sleep(1.5)   # new handshakes on the new material
            n_before = fresh.ok
            self.assertTrue(wait_until(lambda: fresh.ok > n_before + 20, 10))
        self.assertEqual(keep.failures, [], "failures on the persistent connection")
        self.assertEqual(fresh.failures, [], "failures with a new connection per request")
        self.assertGreater(keep.ok, 50)
        self.assertGreater(fresh.ok, 50)
        st = api.stats()
        # the reconnecting loop made new TLS connections all along; none was refused
        self.assertGreater(st.value("sidecar_tls_handshakes_total") - hs_before, 50)
        self.assertEqual(st.value("sidecar_tls_handshake_refused_total"), 0)
        self.assertEqual(st.value("sidecar_tls_handshake_failures_total"), 0)
        ca2 = self.certs(api)
        self.assertNotEqual(ca2["inbound"]["certificate"]["issuer"], api_issuer)
        self.assertEqual(ca2["inbound"]["certificate"]["identity"], api_id)
        self.assertIn("Consul Connect roots: 2 root(s)", api.log_text())
        self.assertIn("new Consul Connect material in use", web.log_text())

        # a garbage leaf answer is refused, the old material stays, traffic goes on
        gen = ca2["inbound"]["generation"]
        emu.add_fault(Path="/v1/agent/connect/ca/leaf/api", Count=1, Status=200,
                      Body=json.dumps({"SerialNumber": "ff", "CertPEM": "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                       "-----END CERTIFICATE-----\n", "PrivateKeyPEM": "garbage"}),
                      ContentType="application/json",
                      Headers={"X-Consul-Index": "1"})
        self.assertTrue(wait_until(lambda: "is refused, the old material stays in use" in api.log_text(), 15),
                        api.log_tail())
        self.assertEqual(self.certs(api)["inbound"]["generation"], gen)
        self.assertIsNotNone(self.certs(api)["connect"]["last_error"])
        for port in (keep_port, new_port):
            self.assertEqual(get(port)[0], 200)


class ConnectDerivedIdentityTest(ConnectTestCase):
    def test_identity_from_the_consul_service_name(self):
        # A Consul-discovered upstream without server_identity expects the
        # identity that Consul service has in our mesh (our trust domain,
        # the service's name): the right service passes, an instance whose
        # certificate is another service's is refused.
        emu = self.emulator()
        app = self.http1_peer("app")
        api_port = free_port()
        self.sidecar(api_config(emu, free_port(), api_port, app.port), name="api")
        emu.register_instance("api", port=api_port, address="127.0.0.1", node_address="127.0.0.1")
        # "billing" resolves to the same sidecar, whose certificate says svc/api
        emu.register_instance("billing", port=api_port, address="127.0.0.1", node_address="127.0.0.1")
        ok_port, bad_port = free_port(), free_port()
        web = self.sidecar(web_config(emu, free_port(), [
            dict(upstream("api", "http1", ok_port, [api_port], tls={"mode": "mutual"}),
                 discovery={"consul": {"service": "api"}}),
            dict(upstream("billing", "http1", bad_port, [api_port], tls={"mode": "mutual"}),
                 discovery={"consul": {"service": "billing"}}),
        ]), name="web")
        deadline = time.monotonic() + 10
        status = None
        while time.monotonic() < deadline:
            status, body = get(ok_port)
            if status == 200:
                break
            time.sleep(0.2)  # until the watch has the instance
        self.assertEqual(status, 200, body)
        while time.monotonic() < deadline:
            cl = {u["name"]: u for u in web.admin_json("/clusters")["upstreams"]}
            if cl["billing"]["instances"]:
                break
            time.sleep(0.2)
        status, body = get(bad_port)
        self.assertEqual(status, 503, body)
        self.assertIn(b"connection to the instance failed", body)
        self.assertIn(ident(emu, "billing"), web.log_text())


class ConnectStartupTest(ConnectTestCase):

    def test_not_ready_before_the_first_leaf(self):
        emu = self.emulator()
        app = self.http1_peer("app")
        emu.delay(4.0, path="/v1/agent/connect/ca/leaf/", count=1)
        admin, in_port = free_port(), free_port()
        api = self.sidecar(api_config(emu, admin, in_port, app.port), name="api", wait_ready=False)

        def ready_status():
            try:
                return api.admin("/ready", timeout=0.5)
            except OSError:
                return None
        self.assertTrue(wait_until(lambda: b"waiting for the Connect certificate" in
                                   (ready_status() or (0, None, b""))[2], 5))
        status, _, text = api.admin("/ready")
        self.assertEqual(status, 503)
        self.assertIn(b"waiting for the Connect certificate", text)
        c = api.admin_json("/certs")
        self.assertEqual(c["source"], "consul")
        self.assertEqual(c["connect"]["state"], "waiting for the Connect certificate")
        self.assertIsNone(c["inbound"]["certificate"])

        # no cleartext: a plain HTTP request gets no answer
        with socket.create_connection(("127.0.0.1", in_port), timeout=3) as s:
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            try:
                data = s.recv(4096)
            except (ConnectionResetError, socket.timeout):
                data = b""
            self.assertFalse(data.startswith(b"HTTP/"), data)
        # and a TLS handshake fails cleanly
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with self.assertRaises((ssl.SSLError, OSError)):
            with socket.create_connection(("127.0.0.1", in_port), timeout=3) as s:
                with ctx.wrap_socket(s) as t:
                    t.recv(1)
        self.assertTrue(api.alive())

        # the leaf arrives: ready, and a Connect caller gets through
        api.wait_ready(timeout=15)
        self.assertEqual(api.admin_json("/certs")["connect"]["state"], "ready")
        port = free_port()
        self.sidecar(web_config(emu, free_port(), [
            upstream("api", "http1", port, [in_port],
                     tls={"mode": "mutual", "server_identity": ident(emu, "api")})]), name="web")
        self.assertEqual(get(port)[0], 200)


CONNECT_METRICS = ("sidecar_connect_ready", "sidecar_connect_leaf_updates_total",
                   "sidecar_connect_roots_updates_total", "sidecar_connect_roots",
                   "sidecar_connect_leaf_pending", "sidecar_connect_leaf_expiry_seconds")


def cm(sc):
    """The sidecar_connect_* metrics as a dict (errors as errors_leaf / errors_roots;
    a metric that is absent is None)."""
    st = sc.stats()
    assert not st.bad_lines, st.bad_lines
    out = {}
    for name in CONNECT_METRICS:
        s = st.series(name)
        out[name[len("sidecar_connect_"):]] = s[0][1] if s else None
    for what in ("leaf", "roots"):
        s = st.series("sidecar_connect_errors_total", what=what)
        out["errors_" + what] = s[0][1] if s else None
    out["types"] = {n: t for n, t in st.types.items() if n.startswith("sidecar_connect_")}
    return out


def plain_request_unanswered(test, port):
    """A cleartext request to the inbound port gets no HTTP answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=3) as s:
        s.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            data = s.recv(4096)
        except (ConnectionResetError, socket.timeout):
            data = b""
        test.assertFalse(data.startswith(b"HTTP/"), data)


class ConnectAclTest(ConnectTestCase):

    def test_token_without_service_write(self):
        emu = self.emulator(acl_token="root-secret", acl_default_policy="deny")
        emu.add_acl_token("api-secret", rules="read-only")      # service:read, no service:write
        app = self.http1_peer("app")
        in_port = free_port()
        cfg = api_config(emu, free_port(), in_port, app.port)
        cfg["consul"]["token"] = "api-secret"
        api = self.sidecar(cfg, name="api", wait_ready=False)

        # the leaf is refused; the log line names the token problem
        self.assertTrue(wait_until(lambda: "lacks permission 'service:write'" in api.log_text(), 10),
                        api.log_tail())
        log = api.log_text()
        self.assertIn("fetching the Connect leaf certificate from Consul failed: HTTP 403: Permission denied", log)
        self.assertIn("the ACL token lacks service:write on 'api'", log)
        self.assertIn("no certificate yet (inbound TLS refused, not ready)", log)
        # /ready and /certs say why
        status, _, text = api.admin("/ready")
        self.assertEqual(status, 503, text)
        self.assertIn(b"waiting for the Connect certificate (leaf certificate: HTTP 403: Permission denied", text)
        self.assertIn(b"service:write", text)
        c = api.admin_json("/certs")
        self.assertEqual(c["connect"]["state"], "waiting for the Connect certificate")
        self.assertIn("Permission denied", c["connect"]["last_error"])
        self.assertIsNone(c["inbound"]["certificate"])
        # the roots need no permission (the emulator may still be making its CA)
        self.assertTrue(wait_until(lambda: cm(api)["roots_updates_total"] == 1, 10), api.log_tail())
        m = cm(api)
        self.assertEqual(m["ready"], 0)
        self.assertEqual(m["leaf_updates_total"], 0)
        self.assertEqual(m["roots"], 1)
        self.assertGreaterEqual(m["errors_leaf"], 1)
        self.assertEqual(m["errors_roots"], 0)
        self.assertIsNone(m["leaf_expiry_seconds"])
        # no cleartext, no crash
        plain_request_unanswered(self, in_port)
        self.assertTrue(api.alive())

        # the operator gives the token service:write: a retry (backoff) brings the leaf in
        emu.add_acl_token("api-secret", rules="service:api")
        api.wait_ready(timeout=40)
        self.assertIn("fetching the Connect leaf certificate works again", api.log_text())
        c = api.admin_json("/certs")
        self.assertEqual(c["connect"]["state"], "ready")
        self.assertIsNone(c["connect"]["last_error"])
        self.assertEqual(c["inbound"]["certificate"]["identity"], ident(emu, "api"))
        self.assertEqual(cm(api)["ready"], 1)

        # a fresh sidecar with a proper token (from consul.token_file) gets its leaf at once ...
        emu.add_acl_token("web-secret", rules="service:web")
        port = free_port()
        wcfg = web_config(emu, free_port(), [
            upstream("api", "http1", port, [in_port],
                     tls={"mode": "mutual", "server_identity": ident(emu, "api")})])
        wcfg["consul"]["token_file"] = "consul-token"
        web = self.sidecar(wcfg, name="web", files={"consul-token": "web-secret\n"})
        self.assertNotIn("Permission denied", web.log_text())
        # ... and traffic passes, with web's identity
        status, body = get(port)
        self.assertEqual(status, 200, body)
        hdrs = [v for k, v in json.loads(body)["headers"] if k.lower() == HDR]
        self.assertEqual(hdrs, [ident(emu, "web")])


class ConnectMetricsTest(ConnectTestCase):

    def test_metrics_move(self):
        emu = self.emulator()
        app = self.http1_peer("app")
        api = self.sidecar(api_config(emu, free_port(), free_port(), app.port), name="api")

        m = cm(api)
        self.assertEqual(m["types"], {
            "sidecar_connect_ready": "gauge", "sidecar_connect_leaf_updates_total": "counter",
            "sidecar_connect_roots_updates_total": "counter", "sidecar_connect_errors_total": "counter",
            "sidecar_connect_roots": "gauge", "sidecar_connect_leaf_pending": "gauge",
            "sidecar_connect_leaf_expiry_seconds": "gauge"})
        self.assertEqual(m["ready"], 1)
        self.assertEqual(m["leaf_updates_total"], 1)
        self.assertEqual(m["roots_updates_total"], 1)
        self.assertEqual(m["roots"], 1)
        self.assertEqual(m["leaf_pending"], 0)
        self.assertEqual((m["errors_leaf"], m["errors_roots"]), (0, 0))
        # the emulator's leaves live 72h (backdated by a minute)
        self.assertBetween(m["leaf_expiry_seconds"], 72 * 3600 - 120, 72 * 3600 + 5)

        # a CA rotation: new roots (old + new), then a new leaf
        serial = api.admin_json("/certs")["inbound"]["certificate"]["serial"]
        emu.rotate_ca()
        self.assertTrue(wait_until(lambda: cm(api)["leaf_updates_total"] == 2, 20), api.log_tail())
        m = cm(api)
        self.assertEqual(m["roots_updates_total"], 2)
        self.assertEqual(m["roots"], 2)
        self.assertEqual(m["ready"], 1)
        self.assertEqual(m["leaf_pending"], 0)
        self.assertEqual((m["errors_leaf"], m["errors_roots"]), (0, 0))
        self.assertGreater(m["leaf_expiry_seconds"], 71 * 3600)
        self.assertNotEqual(api.admin_json("/certs")["inbound"]["certificate"]["serial"], serial)

        # bad answers: a garbage leaf (refused), a failing roots query
        emu.add_fault(Path="/v1/agent/connect/ca/leaf/api", Count=1, Status=200,
                      Body=json.dumps({"SerialNumber": "ff", "CertPEM": "-----BEGIN CERTIFICATE-----\nAAAA\n"
                                       "-----END CERTIFICATE-----\n", "PrivateKeyPEM": "garbage"}),
                      ContentType="application/json", Headers={"X-Consul-Index": "1"})
        emu.add_fault(Path="/v1/agent/connect/ca/roots", Count=1, Status=500, Body="injected")
        emu.release_waiters()
        self.assertTrue(wait_until(lambda: cm(api)["errors_leaf"] >= 1 and cm(api)["errors_roots"] >= 1, 15),
                        api.log_tail())
        m = cm(api)
        self.assertEqual((m["errors_leaf"], m["errors_roots"]), (1, 1))
        self.assertEqual(m["leaf_updates_total"], 2)          # nothing new in use
        self.assertEqual(m["roots_updates_total"], 2)
        self.assertEqual(m["ready"], 1)
        self.assertIn("fetching the Connect roots from Consul failed: HTTP 500", api.log_text())


class ConnectLeafOrderTest(ConnectTestCase):

    def test_rotated_leaf_waits_for_its_roots(self):
        emu = self.emulator()
        app = self.http1_peer("app")
        in_port = free_port()
        api = self.sidecar(api_config(emu, free_port(), in_port, app.port), name="api")
        before = api.admin_json("/certs")["inbound"]
        # the roots query fails from now on; wait until the sidecar saw it fail
        fault = emu.add_fault(Path="/v1/agent/connect/ca/roots", Status=500, Body="injected")
        emu.release_waiters()
        self.assertTrue(wait_until(lambda: "fetching the Connect roots from Consul failed" in api.log_text(), 10),
                        api.log_tail())
        # a rotation: the new leaf arrives, its root does not
        emu.rotate_ca()
        self.assertTrue(wait_until(lambda: "does not verify against the 1 trusted root(s)" in api.log_text(), 10),
                        api.log_tail())
        self.assertIn("not using it before roots that vouch for it arrive (the roots query is failing",
                      api.log_text())
        m = cm(api)
        self.assertEqual(m["leaf_pending"], 1)
        self.assertEqual(m["leaf_updates_total"], 1)
        self.assertEqual(m["ready"], 1)
        now = api.admin_json("/certs")["inbound"]
        self.assertEqual(now["generation"], before["generation"])     # the old leaf stays in use
        self.assertEqual(now["certificate"]["serial"], before["certificate"]["serial"])
        # the roots come back: the leaf verifies against them and is used after the grace period
        emu.remove_fault(fault)
        self.assertTrue(wait_until(lambda: cm(api)["leaf_updates_total"] == 2, 20), api.log_tail())
        self.assertIn("verifies against the 2 trusted root(s) (new roots); in use in 2s", api.log_text())
        m = cm(api)
        self.assertEqual((m["roots"], m["leaf_pending"], m["errors_leaf"]), (2, 0, 0))
        after = api.admin_json("/certs")["inbound"]
        self.assertEqual(len(after["roots"]), 2)
        self.assertNotEqual(after["certificate"]["issuer"], before["certificate"]["issuer"])
        # and a Connect caller (which trusts both roots) gets through
        port = free_port()
        self.sidecar(web_config(emu, free_port(), [
            upstream("api", "http1", port, [in_port],
                     tls={"mode": "mutual", "server_identity": ident(emu, "api")})]), name="web")
        self.assertEqual(get(port)[0], 200)

    def test_foreign_leaf_is_never_used(self):
        # consul.wait 30s: the blocking leaf query after the injected answer stays
        # open, so the foreign leaf is not replaced by the agent's answer first
        emu = self.emulator()
        other = self.emulator()     # another cluster: another CA
        app = self.http1_peer("app")
        cfg = api_config(emu, free_port(), free_port(), app.port)
        cfg["consul"]["wait"] = "30s"
        api = self.sidecar(cfg, name="api")
        before = api.admin_json("/certs")["inbound"]
        with urllib.request.urlopen("http://%s/v1/agent/connect/ca/leaf/api" % other.address, timeout=30) as r:
            foreign = r.read().decode()
        seq = emu.requests()[-1]["Seq"]
        emu.add_fault(Path="/v1/agent/connect/ca/leaf/api", Count=1, Status=200, Body=foreign,
                      ContentType="application/json",
                      Headers={"X-Consul-Index": str(emu.leaf_index("api") + 1000)})
        emu.release_waiters()
        self.assertTrue(wait_until(lambda: "does not verify against the 1 trusted root(s)" in api.log_text(), 10),
                        api.log_tail())
        self.assertIn("unable to get local issuer certificate", api.log_text())
        # the roots were asked for at once (a query that does not block)
        self.assertTrue(wait_until(lambda: any(
            "index" not in q["Args"] for q in emu.requests("/v1/agent/connect/ca/roots", since=seq)), 5))
        self.assertEqual(cm(api)["leaf_pending"], 1)
        # after the bounded wait: an error, the old material stays, still ready
        self.assertTrue(wait_until(lambda: "after waiting 10s for new roots" in api.log_text(), 20),
                        api.log_tail())
        m = cm(api)
        self.assertEqual((m["errors_leaf"], m["leaf_updates_total"], m["ready"]), (1, 1, 1))
        c = api.admin_json("/certs")
        self.assertEqual(c["inbound"]["generation"], before["generation"])
        self.assertIn("does not verify", c["connect"]["last_error"])
        status, _, _ = api.admin("/ready")
        self.assertEqual(status, 200)


if __name__ == "__main__":
    unittest.main()

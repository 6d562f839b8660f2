"""Consul intentions for inbound callers (tls.authorize: consul, docs/tls.md),
through the real binary against the agent emulator
(tests/consul/consul_emulator.py, in-process), which implements
POST /v1/agent/connect/authorize from the intentions set with
set_intentions() (and the ACL default policy) and logs every request.

The callee `api` terminates mTLS with file certificates made by
certs/make-certs.sh (CA `ca`; callers web, batch and admin with their own
certificates) and asks the emulator about each caller identity; the
callers here are direct TLS clients (Python ssl / gRPC secure channels)
with those certificates.

- allow -> 200 (the app sees the caller), deny -> 403 caller-not-allowed
  naming the caller and Consul's reason, over HTTP/1.1 and gRPC
  (PERMISSION_DENIED); the authorize body (Target, ClientCertURI,
  ClientCertSerial in Consul's colon form); one lookup per identity while
  the answer is cached; /clusters, /config and /stats.
- default deny with ACLs (the sidecar's token has service:write on api).
- an unknown ACL token: 503 authz-unavailable and a log line that says so.
- an intention change reaches an existing keep-alive connection after
  tls.authorize_cache and not before.
- many concurrent requests of a new caller (slow agent): one lookup.
- agent stopped: the cached identity keeps working on its last answer
  (stale, logged once), a new identity gets 503 / UNAVAILABLE; recovery.
- a hanging agent: waiting requests end at the lookup timeout or their own
  deadline, a caller that goes away while waiting leaves nothing behind.
- tls.allow first (no Consul call for a caller it refuses), then Consul.
- Connect certificates on both sides (tls.source: consul): a caller
  sidecar's leaf is asked about with the serial the agent issued.

Every wait and loop is bounded.
"""

import http.client
import json
import os
import shutil
import socket
import ssl
import sys
import tempfile
import threading
import time
import unittest

import grpc

import harness
from harness import SidecarTestCase, free_port, run, wait_until
from grpc_client import Echo, channel_options


MAKE_CERTS = os.path.join(harness.ROOT, "certs", "make-certs.sh")
TD = "example.org"
AUTHZ_PATH = "/v1/agent/connect/authorize"
HDR = "x-sidecar-caller"


def ident(svc):
    return "spiffe://%s/ns/default/dc/dc1/svc/%s" % (TD, svc)


WEB_ID, BATCH_ID, ADMIN_ID = ident("web"), ident("batch"), ident("admin")
CERTS = None


def setUpModule():
    global CERTS
    CERTS = tempfile.mkdtemp(prefix="sc-it-authz-")
    r = run(["sh", MAKE_CERTS, "--out", CERTS, "--trust-domain", TD, "api", "web", "batch", "admin"],
            timeout=120)
    if r.returncode != 0:
        raise AssertionError("make-certs.sh failed:\n%s%s" % (r.stdout.decode(), r.stderr.decode()))


def tearDownModule():
    if CERTS and not harness.KEEP_TMP:
        shutil.rmtree(CERTS, ignore_errors=True)


def crt(svc):
    return os.path.join(CERTS, svc + ".pem")


def key(svc):
    return os.path.join(CERTS, svc + ".key")


def bundle():
    return os.path.join(CERTS, "ca-bundle.pem")


def consul_serial(svc):
    """The certificate's serial the way Consul writes it: lower-case hex
    bytes joined by ':' (connect.HexString(SerialNumber.Bytes()))."""
    r = run(["openssl", "x509", "-noout", "-serial", "-in", crt(svc)], timeout=20)
    hx = r.stdout.decode().strip().split("=", 1)[1]
    if len(hx) % 2:
        hx = "0" + hx
    b = bytes.fromhex(hx).lstrip(b"\0")
    return ":".join("%02x" % x for x in b)


def tls_context(svc):
    ctx = ssl.create_default_context(cafile=bundle())
    ctx.load_cert_chain(crt(svc), key(svc))
    return ctx


def https(port, svc, timeout=10):
    """A keep-alive HTTPS connection to the inbound listener as `svc`."""
    return http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls_context(svc))


def get(conn, path="/echo"):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def get_once(port, svc, path="/echo", timeout=10):
    c = https(port, svc, timeout=timeout)
    try:
        return get(c, path)
    finally:
        c.close()


def read(path):
    with open(path, "rb") as f:
        return f.read()


def secure_channel(port, svc):
    creds = grpc.ssl_channel_credentials(root_certificates=read(bundle()), private_key=read(key(svc)),
                                         certificate_chain=read(crt(svc)))
    return grpc.secure_channel("127.0.0.1:%d" % port, creds,
                               options=channel_options(extra=[("grpc.ssl_target_name_override", "api")]))


def app_callers(body):
    return [v for k, v in json.loads(body)["headers"] if k.lower() == HDR]


class AuthorizeTestCase(SidecarTestCase):

    def api(self, emu, ttl="30s", allow=None, token=None, app_protocol="http1", request="5s",
            workers=2, app=None):
        app = app or (self.grpc_peer("gapp") if app_protocol == "grpc" else self.http1_peer("app"))
        port = free_port()
        cfg = harness.base_config(free_port(), inbound={"listen_port": port, "app_port": app.port,
                                                        "app_protocol": app_protocol,
                                                        "timeouts": {"request": request}},
                                  workers=workers, name="api")
        cfg["consul"] = {"address": emu.address, "register_service": False, "wait": "2s"}
        if token:
            cfg["consul"]["token"] = token
        cfg["tls"] = {"cert": crt("api"), "key": key("api"), "ca": bundle(),
                      "authorize": "consul", "authorize_cache": ttl}
        if allow:
            cfg["tls"]["allow"] = list(allow)
        sc = self.sidecar(cfg, name="api")
        sc.port = port
        sc.app = app
        return sc

    def lookups(self, emu, since=0):
        return [json.loads(r["Body"]) for r in emu.requests(path_prefix=AUTHZ_PATH, since=since)]

    def stat(self, sc, name):
        return sc.stats().value("sidecar_inbound_authz_" + name) or 0


class AuthorizeTest(AuthorizeTestCase):

    def test_allow_deny_http_body_and_admin(self):
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"},
                            {"SourceName": "batch", "DestinationName": "api", "Action": "deny"}])
        api = self.api(emu)

        c = https(api.port, "web")
        for _ in range(5):
            status, hdrs, body = get(c)
            self.assertEqual(status, 200, body)
            self.assertEqual(app_callers(body), [WEB_ID])
        c.close()

        status, hdrs, body = get_once(api.port, "batch")
        self.assertEqual(status, 403, body)
        self.assertEqual(hdrs.get("x-sidecar-reason"), "caller-not-allowed")
        text = body.decode()
        self.assertIn("Consul denied caller " + BATCH_ID, text)
        self.assertIn("Matched L4 intention: batch => api", text)
        self.assertEqual(len(api.app.requests("/echo")), 5)   # the denied caller never reached the app
        # the denial is cached too: no second lookup for batch
        status, _, _ = get_once(api.port, "batch")
        self.assertEqual(status, 403)

        sent = self.lookups(emu)
        self.assertEqual(sorted(b["ClientCertURI"] for b in sent), sorted([WEB_ID, BATCH_ID]), sent)
        web = [b for b in sent if b["ClientCertURI"] == WEB_ID][0]
        self.assertEqual(web["Target"], "api")
        self.assertEqual(web["ClientCertSerial"], consul_serial("web"))
        self.assertRegex(web["ClientCertSerial"], r"^[0-9a-f]{2}(:[0-9a-f]{2})*$")

        st = api.stats()
        self.assertEqual(st.value("sidecar_inbound_authz_consul_denied_total"), 2)
        self.assertEqual(st.value("sidecar_inbound_authz_consul_lookups_total"), 2)
        self.assertEqual(st.value("sidecar_inbound_authz_cache_misses_total"), 2)
        self.assertEqual(st.value("sidecar_inbound_authz_cache_hits_total"), 5)
        self.assertEqual(st.value("sidecar_inbound_authz_cache_entries"), 2)
        self.assertEqual(st.value("sidecar_inbound_authz_denied_total"), 0)   # tls.allow: none

        cl = api.clusters()["authorize"]
        self.assertEqual(cl["mode"], "consul")
        self.assertEqual(cl["cache_ttl"], "30s")
        self.assertEqual(cl["cache"]["entries"], 2)
        self.assertEqual(cl["lookups_total"], 2)
        conf = api.config_json()["tls"]
        self.assertEqual((conf["authorize"], conf["authorize_cache"]), ("consul", "30s"))

        log = api.log_text()
        self.assertIn("Consul denied caller %s: Matched L4 intention" % BATCH_ID, log)
        self.assertIn("Consul allows caller %s" % WEB_ID, log)

    def test_grpc_allow_and_permission_denied(self):
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"},
                            {"SourceName": "batch", "DestinationName": "api", "Action": "deny"}])
        api = self.api(emu, app_protocol="grpc")
        with secure_channel(api.port, "web") as ch:
            self.assertEqual(Echo(ch).unary(b"hi", timeout=5), b"hi")
        with secure_channel(api.port, "batch") as ch:
            with self.assertRaises(grpc.RpcError) as cm:
                Echo(ch).unary(b"hi", timeout=5)
        e = cm.exception
        self.assertEqual(e.code(), grpc.StatusCode.PERMISSION_DENIED, e.details())
        self.assertIn(BATCH_ID, e.details())
        self.assertIn("Matched L4 intention", e.details())
        md = dict(e.trailing_metadata() or ())
        self.assertEqual(md.get("x-sidecar-reason"), "caller-not-allowed")
        self.assertEqual(len(api.app.calls("Unary")), 1)   # only web's call reached the app

    def test_default_deny_with_acls(self):
        emu = self.emulator(acl_token="root", acl_default_policy="deny")
        emu.add_acl_token("api-token", "service:api")
        api = self.api(emu, token="api-token")
        status, hdrs, body = get_once(api.port, "web")
        self.assertEqual(status, 403, body)
        self.assertEqual(hdrs.get("x-sidecar-reason"), "caller-not-allowed")
        self.assertIn("Default behavior configured by ACLs", body.decode())
        sent = emu.requests(path_prefix=AUTHZ_PATH)
        self.assertEqual(len(sent), 1)
        self.assertIn(["X-Consul-Token", "api-token"], [list(h) for h in sent[0]["Headers"]])
        self.assertEqual(sent[0]["Status"], 200)
        # an intention lets a caller in (a new identity: nothing cached yet)
        emu.set_intentions([{"SourceName": "batch", "DestinationName": "api", "Action": "allow"}])
        status, _, body = get_once(api.port, "batch")
        self.assertEqual(status, 200, body)

    def test_unknown_acl_token_refuses_with_a_clear_log(self):
        emu = self.emulator(acl_token="root", acl_default_policy="deny")
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"}])
        api = self.api(emu, token="not-a-token")
        for _ in range(3):
            status, hdrs, body = get_once(api.port, "web")
            self.assertEqual(status, 503, body)
            self.assertEqual(hdrs.get("x-sidecar-reason"), "authz-unavailable")
            self.assertIn(WEB_ID, body.decode())
            self.assertIn("ACL not found", body.decode())
        self.assertTrue(wait_until(lambda: "ACL token is not known to the agent" in api.log_text(), 5),
                        api.log_tail())
        self.assertIn("cannot ask Consul whether caller %s may call api" % WEB_ID, api.log_text())
        self.assertEqual(self.stat(api, "unavailable_total"), 3)
        self.assertGreaterEqual(self.stat(api, "consul_errors_total"), 1)
        self.assertEqual(api.clusters()["authorize"]["last_error_caller"], WEB_ID)
        self.assertTrue(api.alive())

    def test_intention_change_reaches_a_keepalive_connection_after_the_ttl(self):
        ttl = 2.0
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"}])
        api = self.api(emu, ttl="2s")
        c = https(api.port, "web")
        self.addCleanup(c.close)
        status, _, body = get(c)
        self.assertEqual(status, 200, body)
        t0 = time.monotonic()   # the answer is at most this old
        sock = c.sock
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "deny"}])
        seen = []
        while time.monotonic() - t0 < ttl + 1.5:
            status, hdrs, _ = get(c)
            seen.append((time.monotonic() - t0, status))
            if status == 200:
                self.assertIs(c.sock, sock, "the connection was replaced")
            time.sleep(0.1)
        early = [s for t, s in seen if t < ttl - 0.5]
        late = [s for t, s in seen if t > ttl + 0.5]
        self.assertTrue(early and late, seen)
        self.assertEqual(set(early), {200}, seen)
        self.assertEqual(set(late), {403}, seen)
        # the cached answer ended once: two lookups in all
        self.assertEqual(len(self.lookups(emu)), 2)
        self.assertIn("Consul does not allow caller %s" % WEB_ID, api.log_text())

    def test_concurrent_requests_of_a_new_caller_make_one_lookup(self):
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"}])
        emu.delay(0.8, path=AUTHZ_PATH)          # the agent is slow: requests pile up behind it
        api = self.api(emu)
        n = 40
        results = []
        lock = threading.Lock()
        barrier = threading.Barrier(n)

        def one():
            try:
                c = https(api.port, "web")
                c.connect()
                barrier.wait(10)
                r = get(c)[0]
                c.close()
            except Exception as e:   # noqa: BLE001 - recorded and asserted below
                r = repr(e)
            with lock:
                results.append(r)

        ths = [threading.Thread(target=one, daemon=True) for _ in range(n)]
        for t in ths:
            t.start()
        for t in ths:
            t.join(30)
        self.assertEqual(results, [200] * n)
        self.assertEqual(len(self.lookups(emu)), 1)
        self.assertGreaterEqual(self.stat(api, "cache_misses_total"), 2)
        self.assertEqual(self.stat(api, "consul_lookups_total"), 1)

    def test_resumed_session_is_asked_about_with_the_same_serial(self):
        """A caller that resumes its TLS session sends no certificate; the
        identity and serial must come from the session, unchanged."""
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"}])
        api = self.api(emu, ttl="1s")
        ctx = tls_context("web")
        ctx.maximum_version = ssl.TLSVersion.TLSv1_3

        def exchange(session=None):
            raw = socket.create_connection(("127.0.0.1", api.port), timeout=10)
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1", session=session)
            try:
                s.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
                data = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                return data.split(b" ", 2)[1], s.session, s.session_reused
            finally:
                s.close()

        status, sess, reused = exchange()
        self.assertEqual((status, reused), (b"200", False))
        time.sleep(1.3)                          # the cached answer expires
        status, _, reused = exchange(sess)
        self.assertEqual((status, reused), (b"200", True), "the second connection did not resume")
        looks = self.lookups(emu)
        self.assertEqual(len(looks), 2, looks)
        want = {"Target": "api", "ClientCertURI": WEB_ID, "ClientCertSerial": consul_serial("web")}
        for lk in looks:
            self.assertEqual({k: lk.get(k) for k in want}, want)

    def test_agent_down_stale_answer_and_unavailable_new_caller(self):
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"},
                            {"SourceName": "batch", "DestinationName": "api", "Action": "allow"}])
        api = self.api(emu, ttl="1s")
        self.assertEqual(get_once(api.port, "web")[0], 200)
        emu.stop_listening()
        time.sleep(1.3)                          # web's answer expired
        c = https(api.port, "web")
        self.addCleanup(c.close)
        for _ in range(8):                       # 2.4s: several retries of the lookup
            status, _, body = get(c)
            self.assertEqual(status, 200, body)
            time.sleep(0.3)
        status, hdrs, body = get_once(api.port, "batch")
        self.assertEqual(status, 503, body)
        self.assertEqual(hdrs.get("x-sidecar-reason"), "authz-unavailable")
        self.assertIn(BATCH_ID, body.decode())
        with secure_channel(api.port, "admin") as ch:
            with self.assertRaises(grpc.RpcError) as cm:
                Echo(ch).unary(b"x", timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE, cm.exception.details())
        self.assertIn(ADMIN_ID, cm.exception.details())
        self.assertEqual(dict(cm.exception.trailing_metadata() or ()).get("x-sidecar-reason"),
                         "authz-unavailable")
        log = api.log_text()
        self.assertEqual(log.count("using its last answer"), 1, api.log_tail())
        self.assertIn("Consul cannot answer whether caller %s may call api" % WEB_ID, log)
        self.assertGreaterEqual(self.stat(api, "stale_total"), 1)
        self.assertEqual(self.stat(api, "unavailable_total"), 2)
        self.assertGreaterEqual(self.stat(api, "cache_stale_entries"), 1)

        # the agent is back: both get answers again
        emu.start_listening()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"},
                            {"SourceName": "batch", "DestinationName": "api", "Action": "allow"}])
        self.assertTrue(wait_until(lambda: get_once(api.port, "batch")[0] == 200, 5))

        def recovered():
            self.assertEqual(get(c)[0], 200)
            return "Consul answers again for caller %s" % WEB_ID in api.log_text()
        self.assertTrue(wait_until(recovered, 5, interval=0.2), api.log_tail())

    def test_hanging_agent_bounded_waits_and_callers_going_away(self):
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"}])
        hang = emu.add_fault(Path=AUTHZ_PATH, Hang=True)
        api = self.api(emu, request="15s", app_protocol="http1")
        # callers that give up while waiting: TLS connections closed mid-wait
        for _ in range(5):
            raw = socket.create_connection(("127.0.0.1", api.port), timeout=5)
            s = tls_context("web").wrap_socket(raw, server_hostname="127.0.0.1")
            s.sendall(b"GET /echo HTTP/1.1\r\nHost: api\r\n\r\n")
            time.sleep(0.05)
            s.close()
        # a gRPC call with its own short deadline
        with secure_channel(api.port, "web") as ch:
            t = time.monotonic()
            with self.assertRaises(grpc.RpcError) as cm:
                Echo(ch).unary(b"x", timeout=1)
            self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
            self.assertLess(time.monotonic() - t, 3)
        # an HTTP request that waits for the lookup: it ends at the lookup timeout (5s)
        t = time.monotonic()
        status, hdrs, body = get_once(api.port, "web", timeout=15)
        took = time.monotonic() - t
        self.assertEqual(status, 503, body)
        self.assertEqual(hdrs.get("x-sidecar-reason"), "authz-unavailable")
        self.assertLess(took, 8)
        self.assertEqual(len(self.lookups(emu)), 1)   # one lookup for all of them
        # the agent answers again: a new lookup, allowed
        emu.remove_fault(hang)
        self.assertEqual(get_once(api.port, "web")[0], 200)
        self.assertTrue(api.alive())

    def test_allow_list_first_then_consul(self):
        emu = self.emulator()
        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"},
                            {"SourceName": "batch", "DestinationName": "api", "Action": "deny"},
                            {"SourceName": "admin", "DestinationName": "api", "Action": "allow"}])
        api = self.api(emu, allow=[WEB_ID, BATCH_ID])
        self.assertEqual(get_once(api.port, "web")[0], 200)
        status, hdrs, body = get_once(api.port, "admin")
        self.assertEqual(status, 403, body)
        self.assertEqual(hdrs.get("x-sidecar-reason"), "caller-not-allowed")
        self.assertIn("is not in tls.allow", body.decode())
        status, hdrs, body = get_once(api.port, "batch")
        self.assertEqual(status, 403, body)
        self.assertIn("Consul denied caller " + BATCH_ID, body.decode())
        asked = sorted(b["ClientCertURI"] for b in self.lookups(emu))
        self.assertEqual(asked, sorted([WEB_ID, BATCH_ID]))   # admin was never asked about
        st = api.stats()
        self.assertEqual(st.value("sidecar_inbound_authz_denied_total"), 1)
        self.assertEqual(st.value("sidecar_inbound_authz_consul_denied_total"), 1)
        self.assertTrue(api.clusters()["authorize"]["allow_list_first"])


class ConnectAuthorizeTest(AuthorizeTestCase):
    """tls.source: consul on both sides: api asks about web's Connect leaf."""

    def test_connect_leaf_callers_through_a_sidecar(self):
        emu = self.emulator()

        def cid(svc):
            return "spiffe://%s.consul/ns/default/dc/dc1/svc/%s" % (emu.cluster_id, svc)

        emu.set_intentions([{"SourceName": "web", "DestinationName": "api", "Action": "allow"},
                            {"SourceName": "batch", "DestinationName": "api", "Action": "deny"}])
        app = self.http1_peer("app")
        api_port = free_port()
        cfg = harness.base_config(free_port(), inbound={"listen_port": api_port, "app_port": app.port},
                                  workers=2, name="api")
        cfg["consul"] = {"address": emu.address, "register_service": False, "wait": "2s"}
        cfg["tls"] = {"source": "consul", "authorize": "consul", "authorize_cache": "10s"}
        api = self.sidecar(cfg, name="api")

        def caller(svc):
            port = free_port()
            c = harness.base_config(free_port(), upstreams=[harness.upstream(
                "api", "http1", port, [api_port], tls={"mode": "mutual", "server_identity": cid("api")})],
                workers=1, name=svc)
            c["consul"] = {"address": emu.address, "register_service": False, "wait": "2s"}
            c["tls"] = {"source": "consul"}
            sc = self.sidecar(c, name=svc)
            sc.port = port
            return sc

        web, batch = caller("web"), caller("batch")
        conn = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
        status, _, body = get(conn)
        self.assertEqual(status, 200, body)
        self.assertEqual(app_callers(body), [cid("web")])
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", batch.port, timeout=10)
        status, hdrs, body = get(conn)
        conn.close()
        self.assertEqual(status, 403, body)
        self.assertEqual(hdrs.get("x-sidecar-reason"), "caller-not-allowed")
        self.assertIn("Consul denied caller " + cid("batch"), body.decode())

        # the serial sent is the one the agent issued, in the agent's own form
        hexs = web.admin_json("/certs")["outbound_mutual"]["certificate"]["serial"]
        hexs = ("0" + hexs) if len(hexs) % 2 else hexs
        want = ":".join(hexs[i:i + 2] for i in range(0, len(hexs), 2))
        sent = {b["ClientCertURI"]: b for b in self.lookups(emu)}
        self.assertEqual(set(sent), {cid("web"), cid("batch")})
        self.assertEqual(sent[cid("web")]["ClientCertSerial"], want)
        self.assertEqual(sent[cid("web")]["Target"], "api")


if __name__ == "__main__":
    unittest.main()

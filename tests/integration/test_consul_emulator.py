"""Tests of the Consul agent API emulator (tests/consul/consul_emulator.py).

Run from tests/integration:  /usr/bin/python3 -m unittest -v test_consul_emulator
Every emulator listens on 127.0.0.1 port 0 and is stopped in tearDown; every
wait is bounded.
"""

import gzip
import http.client
import http.server
import json
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
EMU_DIR = os.path.normpath(os.path.join(HERE, "..", "consul"))
sys.path.insert(0, EMU_DIR)

import consul_emulator  # noqa: E402
from consul_emulator import ConsulEmulator, ControlClient  # noqa: E402

ANON = "00000000-0000-0000-0000-000000000002"


class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # http.client.HTTPMessage: case-insensitive
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8")

    def json(self):
        return json.loads(self.text)

    def index(self):
        return int(self.headers["X-Consul-Index"])


def call(port, method, path, body=None, headers=None, timeout=10.0):
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        data = r.read()
        return Resp(r.status, r.headers, data)
    finally:
        conn.close()


class EmulatorTest(unittest.TestCase):
    emu_kwargs = {}

    def setUp(self):
        kw = {"check_update_interval": 0, "min_check_interval": 0.05, "check_stagger": False}
        kw.update(self.emu_kwargs)
        self.emu = ConsulEmulator(**kw)
        self.port = self.emu.start()
        self.addCleanup(self.emu.stop)

    def req(self, method, path, body=None, headers=None, timeout=10.0):
        return call(self.port, method, path, body, headers, timeout)

    def register(self, body, query="", headers=None):
        return self.req("PUT", "/v1/agent/service/register" + query, body, headers)

    def agent_checks(self):
        r = self.req("GET", "/v1/agent/checks")
        self.assertEqual(r.status, 200)
        return r.json()

    def wait_check(self, check_id, status, timeout=5.0):
        def ok():
            c = self.agent_checks().get(check_id)
            return c if c and c["Status"] == status else None
        c = self.emu.wait_for(ok, timeout=timeout, interval=0.05)
        self.assertTrue(c, "check %s did not become %s; now %r" % (check_id, status, self.agent_checks().get(check_id)))
        return c


class RegistrationTest(EmulatorTest):
    def test_validation_messages(self):
        cases = [
            ({"Port": 80}, "Missing service name"),
            ({"Name": "web", "Address": "0.0.0.0"}, "Invalid service address"),
            ({"Name": "web", "Address": "::"}, "Invalid service address"),
            ({"Name": "web", "Check": {"HTTP": "http://127.0.0.1:1/"}},
             "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"),
            ({"Name": "web", "Check": {"TCP": "127.0.0.1:1"}},
             "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"),
            ({"Name": "web", "Checks": [{"TTL": "5s"}, {"GRPC": "127.0.0.1:1"}]},
             "Invalid check: Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks"),
            ({"Name": "web", "Check": {"TTL": "5s", "Interval": "5s"}},
             "Invalid check: Interval and TTL cannot both be specified"),
            ({"Name": "web", "Check": {"Status": "passing"}}, "Invalid check: TTL must be > 0 for TTL checks"),
            ({"Name": "web", "Check": {"TTL": "10x"}},
             'Request decode failed: time: unknown unit "x" in duration "10x"'),
            ({"Name": "web", "Check": {"TTL": "10"}}, 'Request decode failed: time: missing unit in duration "10"'),
            ({"Name": "web", "Check": {"TTL": "5s", "DeregisterCriticalServiceAfter": "abc"}},
             'Request decode failed: time: invalid duration "abc"'),
            ({"Name": "web", "Check": {"TTL": "5s", "Status": "bogus"}},
             "Status for checks must 'passing', 'warning', 'critical'"),
            ({"Name": "web", "Port": "80"},
             "Request decode failed: json: cannot unmarshal string into Go struct field ServiceDefinition.Port of type int"),
            ({"Name": "web", "Bogus": 1}, 'Request decode failed: json: unknown field "Bogus"'),
            ({"Name": "web", "Weights": {"Passing": 0, "Warning": 1}},
             "Invalid Weights: Passing must be greater than 0"),
        ]
        for body, msg in cases:
            with self.subTest(body=body):
                r = self.register(body)
                self.assertEqual(r.status, 400, r.text)
                self.assertEqual(r.text, msg)
                self.assertTrue(r.headers["Content-Type"].startswith("text/plain"))
        for raw in ("{not json", "", '{"Name": "web"'):
            with self.subTest(raw=raw):
                r = self.register(raw)
                self.assertEqual(r.status, 400)
                self.assertTrue(r.text.startswith("Request decode failed: "), r.text)
        self.assertEqual(self.req("GET", "/v1/agent/services").json(), {})

    def test_ids_defaults_and_check_ids(self):
        r = self.register({"Name": "web", "Port": 8080, "Check": {"TTL": "30s"}})
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertIn("web", self.req("GET", "/v1/agent/services").json())
        checks = self.agent_checks()
        self.assertEqual(checks["service:web"]["Status"], "critical")  # default initial status
        self.assertEqual(checks["service:web"]["Name"], "Service 'web' check")
        self.assertEqual(checks["service:web"]["Type"], "ttl")

        r = self.register({"ID": "api-1", "Name": "api", "Checks": [
            {"TTL": "30s"}, {"TTL": "30s", "Status": "passing"}]})
        self.assertEqual(r.status, 200, r.text)
        checks = self.agent_checks()
        self.assertEqual(checks["service:api-1:1"]["Status"], "critical")
        self.assertEqual(checks["service:api-1:2"]["Status"], "passing")
        self.assertNotIn("service:api-1", checks)

        r = self.register({"ID": "db-1", "Name": "db", "Check": {"CheckID": "db-ttl", "Name": "db alive",
                                                                   "TTL": "30s", "Notes": "n"}})
        self.assertEqual(r.status, 200, r.text)
        c = self.agent_checks()["db-ttl"]
        self.assertEqual((c["Name"], c["ServiceID"], c["ServiceName"], c["Notes"]), ("db alive", "db-1", "db", "n"))

        # case-insensitive keys and snake_case aliases, like Go's encoding/json
        r = self.register({"name": "lower", "port": 1, "check": {"ttl": "1m", "deregister_critical_service_after": "2m"}})
        self.assertEqual(r.status, 200, r.text)
        self.assertEqual(self.agent_checks()["service:lower"]["Definition"]["DeregisterCriticalServiceAfter"], "2m0s")

    def test_reregistration_keeps_state_and_replace_existing_checks(self):
        body = {"Name": "web", "Checks": [{"CheckID": "a", "TTL": "30s"}, {"CheckID": "b", "TTL": "30s"}]}
        self.assertEqual(self.register(body).status, 200)
        self.assertEqual(self.req("PUT", "/v1/agent/check/pass/a?note=fine").status, 200)
        idx = self.req("GET", "/v1/health/service/web").index()
        # identical re-registration: nothing changes in the catalog
        self.assertEqual(self.register(body).status, 200)
        self.assertEqual(self.agent_checks()["a"]["Status"], "passing")
        self.assertEqual(self.req("GET", "/v1/health/service/web").index(), idx)
        # without replace-existing-checks a check left out stays
        self.assertEqual(self.register({"Name": "web", "Check": {"CheckID": "a", "TTL": "30s"}}).status, 200)
        self.assertEqual(set(self.agent_checks()), {"a", "b"})
        self.assertEqual(self.agent_checks()["a"]["Status"], "passing")
        # with it, it goes
        r = self.register({"Name": "web", "Check": {"CheckID": "a", "TTL": "30s"}}, "?replace-existing-checks")
        self.assertEqual(r.status, 200)
        self.assertEqual(set(self.agent_checks()), {"a"})

    def test_deregister(self):
        r = self.req("PUT", "/v1/agent/service/deregister/nope")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.text, 'Unknown service ID "nope". Ensure that the service ID is passed, not the service name.')
        self.register({"ID": "web-1", "Name": "web", "Check": {"TTL": "30s"}})
        r = self.req("PUT", "/v1/agent/service/deregister/web")  # the name is not the ID
        self.assertEqual(r.status, 404)
        r = self.req("PUT", "/v1/agent/service/deregister/web-1")
        self.assertEqual((r.status, r.body), (200, b""))
        self.assertEqual(self.req("GET", "/v1/agent/services").json(), {})
        self.assertEqual(self.agent_checks(), {})
        self.assertEqual(self.req("GET", "/v1/health/service/web").json(), [])


class TTLTest(EmulatorTest):
    def test_pass_warn_fail_update_and_errors(self):
        self.register({"Name": "web", "Check": {"CheckID": "ttl", "TTL": "30s"}})
        for verb, status in (("pass", "passing"), ("warn", "warning"), ("fail", "critical")):
            r = self.req("PUT", "/v1/agent/check/%s/ttl?note=%s+note" % (verb, verb))
            self.assertEqual((r.status, r.body), (200, b""))
            c = self.agent_checks()["ttl"]
            self.assertEqual((c["Status"], c["Output"]), (status, "%s note" % verb))
        r = self.req("PUT", "/v1/agent/check/update/ttl", {"Status": "passing", "Output": "all good"})
        self.assertEqual(r.status, 200, r.text)
        entry = self.req("GET", "/v1/health/service/web").json()[0]
        svc_check = [c for c in entry["Checks"] if c["CheckID"] == "ttl"][0]
        self.assertEqual((svc_check["Status"], svc_check["Output"]), ("passing", "all good"))

        r = self.req("PUT", "/v1/agent/check/update/ttl", {"Status": "bogus"})
        self.assertEqual((r.status, r.text), (400, "Invalid check status: 'bogus'"))
        r = self.req("PUT", "/v1/agent/check/update/ttl", "")
        self.assertEqual((r.status, r.text), (400, "Request decode failed: EOF"))
        r = self.req("PUT", "/v1/agent/check/pass/nope")
        self.assertEqual(r.status, 404)
        self.assertEqual(r.text, 'Unknown check ID "nope". Ensure that the check ID is passed, not the check name.')
        r = self.req("GET", "/v1/agent/check/pass/ttl")
        self.assertEqual((r.status, r.headers["Allow"]), (405, "OPTIONS,PUT"))

        # a check that is not a TTL check
        self.register({"Name": "h", "Check": {"CheckID": "h-http", "HTTP": "http://127.0.0.1:1/", "Interval": "10s"}})
        r = self.req("PUT", "/v1/agent/check/pass/h-http")
        self.assertEqual((r.status, r.text), (500, 'CheckID "h-http" does not have associated TTL'))

    def test_ttl_expiry(self):
        self.register({"Name": "web", "Check": {"CheckID": "ttl", "TTL": "400ms"}})
        self.assertEqual(self.req("PUT", "/v1/agent/check/pass/ttl?note=alive").status, 200)
        self.assertEqual(self.agent_checks()["ttl"]["Status"], "passing")
        c = self.wait_check("ttl", "critical", timeout=3)
        self.assertEqual(c["Output"], "TTL expired (last output before timeout follows): alive")
        self.assertTrue(c["Output"].startswith("TTL expired"))
        # each update resets the timer
        self.assertEqual(self.req("PUT", "/v1/agent/check/pass/ttl").status, 200)
        self.assertEqual(self.agent_checks()["ttl"]["Status"], "passing")

    def test_output_only_changes_are_deferred(self):
        self.emu.configure(check_update_interval=0.3)
        self.register({"Name": "web", "Check": {"CheckID": "ttl", "TTL": "30s"}})
        self.req("PUT", "/v1/agent/check/pass/ttl?note=a")  # status change: synced at once
        r = self.req("GET", "/v1/health/service/web")
        idx = r.index()
        out = lambda r: [c for c in r.json()[0]["Checks"] if c["CheckID"] == "ttl"][0]["Output"]  # noqa: E731
        self.assertEqual(out(r), "a")
        self.req("PUT", "/v1/agent/check/pass/ttl?note=b")  # output only: deferred
        self.assertEqual(self.agent_checks()["ttl"]["Output"], "b")
        r = self.req("GET", "/v1/health/service/web")
        self.assertEqual((out(r), r.index()), ("a", idx))
        r = self.req("GET", "/v1/health/service/web?index=%d&wait=3s" % idx, timeout=10)
        self.assertEqual(out(r), "b")
        self.assertGreater(r.index(), idx)

    def test_deregister_critical_service_after(self):
        self.emu.configure(reaper_interval=0.1, min_deregister_after=0)
        self.register({"Name": "doomed", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "300ms"}})
        self.register({"Name": "fine", "Check": {"TTL": "30s", "Status": "passing",
                                                  "DeregisterCriticalServiceAfter": "300ms"}})
        gone = self.emu.wait_for(lambda: "doomed" not in self.req("GET", "/v1/agent/services").json(), timeout=4)
        self.assertTrue(gone)
        self.assertIn("fine", self.req("GET", "/v1/agent/services").json())
        self.assertEqual(self.req("GET", "/v1/health/service/doomed").json(), [])


class ProbeTest(EmulatorTest):
    def _http_server(self, routes):
        hits = []

        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(dict(self.headers))
                code, body = routes.get(self.path, (404, b"nope"))
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        srv.daemon_threads = True
        t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        t.start()

        def stop():
            srv.shutdown()
            srv.server_close()
        self.addCleanup(lambda: (srv.shutdown(), srv.server_close()) if t.is_alive() else None)
        return srv.server_address[1], stop, hits

    def test_http_check_runs_for_real(self):
        port, stop, hits = self._http_server({"/health": (200, b"hello"), "/busy": (429, b"slow down"),
                                              "/bad": (503, b"down")})
        url = "http://127.0.0.1:%d/health" % port
        self.register({"Name": "web", "Port": port, "Checks": [
            {"CheckID": "ok", "HTTP": url, "Interval": "200ms", "Timeout": "1s"},
            {"CheckID": "busy", "HTTP": "http://127.0.0.1:%d/busy" % port, "Interval": "200ms"},
            {"CheckID": "bad", "HTTP": "http://127.0.0.1:%d/bad" % port, "Interval": "200ms"}]})
        c = self.wait_check("ok", "passing")
        self.assertEqual(c["Output"], "HTTP GET %s: 200 OK Output: hello" % url)
        self.assertEqual(self.wait_check("busy", "warning")["Output"],
                         "HTTP GET http://127.0.0.1:%d/busy: 429 Too Many Requests Output: slow down" % port)
        self.wait_check("bad", "critical")
        self.assertTrue(any(h.get("User-Agent") == "Consul Health Check" for h in hits))
        health = self.req("GET", "/v1/health/service/web").json()[0]
        self.assertEqual({c["CheckID"]: c["Status"] for c in health["Checks"]},
                         {"serfHealth": "passing", "ok": "passing", "busy": "warning", "bad": "critical"})
        stop()
        c = self.wait_check("ok", "critical")
        self.assertEqual(c["Output"], 'Get "%s": dial tcp 127.0.0.1:%d: connect: connection refused' % (url, port))

    def test_tcp_check(self):
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        port = ls.getsockname()[1]
        self.register({"Name": "db", "Check": {"CheckID": "tcp", "TCP": "127.0.0.1:%d" % port, "Interval": "200ms"}})
        self.assertEqual(self.wait_check("tcp", "passing")["Output"], "TCP connect 127.0.0.1:%d: Success" % port)
        ls.close()
        self.assertEqual(self.wait_check("tcp", "critical")["Output"],
                         "dial tcp 127.0.0.1:%d: connect: connection refused" % port)

    def test_grpc_check(self):
        try:
            import grpc
            from concurrent import futures
        except ImportError:
            self.skipTest("grpcio not installed")
        state = {"status": 1}

        def check(request, context):
            return bytes([0x08, state["status"]])

        handler = grpc.method_handlers_generic_handler(
            "grpc.health.v1.Health", {"Check": grpc.unary_unary_rpc_method_handler(check)})
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self.addCleanup(server.stop, 0)
        target = "127.0.0.1:%d/my.Service" % port
        self.register({"Name": "g", "Check": {"CheckID": "grpc", "GRPC": target, "Interval": "200ms"}})
        self.assertEqual(self.wait_check("grpc", "passing")["Output"], "gRPC check %s: success" % target)
        state["status"] = 2
        self.assertEqual(self.wait_check("grpc", "critical")["Output"],
                         "gRPC %s serving status: NOT_SERVING" % target)


class HealthTest(EmulatorTest):
    def setUp(self):
        super().setUp()
        e = self.emu
        e.register_instance("api", id="api-a", node="n-a", node_address="10.0.0.1", port=9001,
                            tags=["v1", "primary"], status="passing", weights={"Passing": 10, "Warning": 1},
                            meta={"zone": "a"})
        e.register_instance("api", id="api-b", node="n-b", node_address="10.0.0.2", address="10.1.0.2", port=9002,
                            tags=["v1"], status="warning")
        e.register_instance("api", id="api-c", node="n-c", port=9003, tags=["v2"], status="critical")
        e.register_instance("api", id="api-d", node="n-d", port=9004, tags=["v2"], status="passing",
                            node_status="critical")

    def ids(self, path):
        r = self.req("GET", path)
        self.assertEqual(r.status, 200, r.text)
        return sorted(e["Service"]["ID"] for e in r.json())

    def test_entries_and_headers(self):
        r = self.req("GET", "/v1/health/service/api")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers["Content-Type"], "application/json")
        self.assertEqual(r.headers["X-Consul-KnownLeader"], "true")
        self.assertEqual(r.headers["X-Consul-LastContact"], "0")
        self.assertGreaterEqual(r.index(), 1)
        entries = r.json()
        self.assertEqual([e["Service"]["ID"] for e in entries], ["api-a", "api-b", "api-c", "api-d"])
        a = entries[0]
        for k in ("ID", "Node", "Address", "Datacenter", "TaggedAddresses", "Meta"):
            self.assertIn(k, a["Node"])
        self.assertEqual((a["Node"]["Node"], a["Node"]["Address"], a["Node"]["Datacenter"]), ("n-a", "10.0.0.1", "dc1"))
        self.assertEqual(a["Node"]["TaggedAddresses"]["lan"], "10.0.0.1")
        for k in ("ID", "Service", "Tags", "Address", "Meta", "Port", "Weights", "EnableTagOverride"):
            self.assertIn(k, a["Service"])
        self.assertEqual(a["Service"]["Address"], "")  # dial Node.Address
        self.assertEqual(a["Service"]["Weights"], {"Passing": 10, "Warning": 1})
        self.assertEqual(a["Service"]["Meta"], {"zone": "a"})
        self.assertEqual(entries[1]["Service"]["Address"], "10.1.0.2")
        serf = [c for c in a["Checks"] if c["CheckID"] == "serfHealth"][0]
        self.assertEqual((serf["ServiceID"], serf["Status"]), ("", "passing"))
        self.assertEqual([c["CheckID"] for c in a["Checks"]], ["serfHealth", "service:api-a"])
        for k in ("Node", "CheckID", "Name", "Status", "Notes", "Output", "ServiceID", "ServiceName",
                  "ServiceTags", "Type"):
            self.assertIn(k, serf)
        self.assertEqual(self.req("GET", "/v1/health/service/nothing").body, b"[]")

    def test_passing_and_tags(self):
        everyone = ["api-a", "api-b", "api-c", "api-d"]
        self.assertEqual(self.ids("/v1/health/service/api"), everyone)
        for q in ("passing", "passing=true", "passing=1", "passing=TRUE"):
            self.assertEqual(self.ids("/v1/health/service/api?" + q), ["api-a"], q)
        self.assertEqual(self.ids("/v1/health/service/api?passing=false"), everyone)
        r = self.req("GET", "/v1/health/service/api?passing=maybe")
        self.assertEqual((r.status, r.text), (400, "Invalid value for ?passing"))
        self.assertEqual(self.ids("/v1/health/service/api?tag=v1"), ["api-a", "api-b"])
        self.assertEqual(self.ids("/v1/health/service/api?tag=v1&tag=primary"), ["api-a"])
        self.assertEqual(self.ids("/v1/health/service/api?tag=v1&tag=v2"), [])
        self.assertEqual(self.ids("/v1/health/service/api?tag=V1"), ["api-a", "api-b"])
        self.assertEqual(self.ids("/v1/health/service/api?tag=v2&passing"), [])
        self.assertEqual(self.ids("/v1/health/service/api?near=_agent&stale&cached&filter=Service.Port%3D%3D1"),
                         everyone)

    def test_query_errors(self):
        r = self.req("GET", "/v1/health/service/api?ns=default")
        self.assertEqual((r.status, r.text),
                         (400, 'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature'))
        r = self.req("GET", "/v1/health/service/api", headers={"X-Consul-Namespace": "default"})
        self.assertEqual(r.status, 400)
        r = self.req("GET", "/v1/health/service/api?dc=dc9")
        self.assertEqual((r.status, r.text), (500, "No path to datacenter"))
        self.assertEqual(self.req("GET", "/v1/health/service/api?dc=dc1").status, 200)
        for q, msg in (("wait=forever", "Invalid wait time"), ("index=abc", "Invalid index"),
                       ("index=-1", "Invalid index"), ("index=1&wait=10", "Invalid wait time")):
            r = self.req("GET", "/v1/health/service/api?" + q)
            self.assertEqual((r.status, r.text), (400, msg), q)
        r = self.req("GET", "/v1/health/service/api?stale&consistent")
        self.assertEqual(r.status, 400)

    def test_other_datacenter_and_no_leader(self):
        self.emu.register_instance("api", id="api-dc2", datacenter="dc2", port=1)
        self.assertEqual(self.ids("/v1/health/service/api?dc=dc2"), ["api-dc2"])
        self.assertEqual(self.req("GET", "/v1/catalog/datacenters").json(), ["dc1", "dc2"])
        self.emu.set_leader("")
        r = self.req("GET", "/v1/health/service/api")
        self.assertEqual((r.status, r.text), (500, "No cluster leader"))
        r = self.req("GET", "/v1/health/service/api?stale")
        self.assertEqual((r.status, r.headers["X-Consul-KnownLeader"]), (200, "false"))
        self.assertEqual(self.req("GET", "/v1/status/leader").json(), "")

    def test_gzip(self):
        r = self.req("GET", "/v1/health/service/api", headers={"Accept-Encoding": "gzip"})
        self.assertEqual(r.headers["Content-Encoding"], "gzip")
        self.assertEqual(len(json.loads(gzip.decompress(r.body))), 4)


class EnterpriseTest(EmulatorTest):
    emu_kwargs = {"enterprise": True}

    def ids(self, path):
        r = self.req("GET", path)
        self.assertEqual(r.status, 200, r.text)
        return sorted(e["Service"]["ID"] for e in r.json())

    def test_community_edition_refuses_ns_and_partition(self):
        self.emu.enterprise = False
        for q, msg in (("ns=team-a", 'Invalid query parameter: "ns" - Namespaces are a Consul Enterprise feature'),
                       ("partition=p1",
                        'Invalid query parameter: "partition" - Partitions are a Consul Enterprise feature')):
            r = self.register({"Name": "web"}, "?" + q)
            self.assertEqual((r.status, r.text), (400, msg))
        self.assertEqual(self.req("PUT", "/v1/agent/check/pass/x?ns=default").status, 400)
        self.assertEqual(self.req("PUT", "/v1/agent/service/deregister/x?ns=a").status, 400)
        self.assertEqual(self.req("GET", "/v1/agent/service/x?ns=a").status, 400)

    def test_services_per_namespace(self):
        self.assertEqual(self.register({"Name": "web", "ID": "web-a", "Port": 1,
                                        "Check": {"CheckID": "c-a", "TTL": "30s"}}, "?ns=team-a").status, 200)
        self.assertEqual(self.register({"Name": "web", "ID": "web-d", "Port": 2}).status, 200)
        self.emu.register_instance("web", id="web-b", port=3, namespace="team-b")
        self.emu.register_instance("web", id="web-a2", port=4, namespace="team-a", partition="p1")
        self.assertEqual(self.ids("/v1/health/service/web"), ["web-d"])
        self.assertEqual(self.ids("/v1/health/service/web?ns=default&partition=default"), ["web-d"])
        self.assertEqual(self.ids("/v1/health/service/web?ns=team-a"), ["web-a"])
        self.assertEqual(self.ids("/v1/health/service/web?ns=team-a&partition=p1"), ["web-a2"])
        r = self.req("GET", "/v1/health/service/web", headers={"X-Consul-Namespace": "team-b"})
        self.assertEqual([e["Service"]["ID"] for e in r.json()], ["web-b"])
        svc = r.json()[0]["Service"]
        self.assertEqual((svc["Namespace"], svc["Partition"]), ("team-b", "default"))
        # agent endpoints on a service of another namespace: unknown
        self.assertEqual(self.req("GET", "/v1/agent/service/web-a").status, 404)
        r = self.req("GET", "/v1/agent/service/web-a?ns=team-a")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.json()["Namespace"], "team-a")
        self.assertEqual(self.req("PUT", "/v1/agent/check/pass/c-a").status, 404)
        self.assertEqual(self.req("PUT", "/v1/agent/check/pass/c-a?ns=team-a").status, 200)
        self.assertEqual(sorted(self.req("GET", "/v1/agent/services?ns=team-a").json()), ["web-a"])
        self.assertEqual(self.req("PUT", "/v1/agent/service/deregister/web-a").status, 404)
        self.assertEqual(self.req("PUT", "/v1/agent/service/deregister/web-a?ns=team-a").status, 200)
        self.assertEqual(self.ids("/v1/health/service/web?ns=team-a"), [])
        # the request log keeps what was asked
        rec = self.emu.requests(path_prefix="/v1/agent/service/deregister/web-a")[-1]
        self.assertEqual(rec["Args"]["ns"], ["team-a"])


class BlockingTest(EmulatorTest):
    def blocking_get(self, path, timeout=15.0):
        out = {}

        def run():
            t0 = time.monotonic()
            try:
                out["resp"] = self.req("GET", path, timeout=timeout)
            except Exception as e:  # surfaced by the assertions below
                out["error"] = e
            out["elapsed"] = time.monotonic() - t0

        t = threading.Thread(target=run, daemon=True)
        t.start()
        return t, out

    def test_blocks_until_change(self):
        self.emu.register_instance("api", id="api-1", port=1)
        idx = self.req("GET", "/v1/health/service/api").index()
        since = self.emu.requests()[-1]["Seq"]
        t, out = self.blocking_get("/v1/health/service/api?index=%d&wait=10s" % idx)
        self.assertIsNotNone(self.emu.wait_for_request(path_prefix="/v1/health/service/api", since=since, timeout=5))
        time.sleep(0.3)
        self.assertTrue(t.is_alive(), "the query did not block")
        self.emu.register_instance("other", id="other-1", port=2)  # unrelated: must not wake it up
        time.sleep(0.3)
        self.assertTrue(t.is_alive(), "an unrelated change answered the query")
        self.emu.register_instance("api", id="api-2", port=3)
        t.join(5)
        self.assertFalse(t.is_alive())
        r = out["resp"]
        self.assertEqual(r.status, 200)
        self.assertGreater(r.index(), idx)
        self.assertEqual(len(r.json()), 2)
        self.assertLess(out["elapsed"], 5)

    def test_returns_after_wait_with_same_index(self):
        self.emu.register_instance("api", id="api-1", port=1)
        idx = self.req("GET", "/v1/health/service/api").index()
        t0 = time.monotonic()
        r = self.req("GET", "/v1/health/service/api?index=%d&wait=1s" % idx)
        elapsed = time.monotonic() - t0
        self.assertEqual((r.status, r.index()), (200, idx))
        self.assertGreaterEqual(elapsed, 0.95)
        self.assertLess(elapsed, 1.0 * 17 / 16 + 1.0)
        # index 0 and no index never block
        t0 = time.monotonic()
        self.req("GET", "/v1/health/service/api?index=0&wait=5s")
        self.assertLess(time.monotonic() - t0, 1.0)

    def test_index_semantics(self):
        idx0 = self.req("GET", "/v1/health/service/api").index()
        self.assertGreaterEqual(idx0, 1)
        a = self.emu.register_instance("api", id="api-1", port=1)
        idx1 = self.req("GET", "/v1/health/service/api").index()
        self.assertEqual(idx1, a["Index"])
        self.assertGreater(idx1, idx0)
        self.emu.set_check_status("service:api-1", "critical")
        idx2 = self.req("GET", "/v1/health/service/api").index()
        self.assertGreater(idx2, idx1)
        self.emu.register_instance("other", id="o-1", port=1)
        self.assertEqual(self.req("GET", "/v1/health/service/api").index(), idx2)
        self.emu.deregister_instance("api-1")
        idx3 = self.req("GET", "/v1/health/service/api").index()
        self.assertGreater(idx3, idx2)  # the extinction index

    def test_index_never_zero(self):
        self.emu.set_index(0)
        r = self.req("GET", "/v1/health/service/nothing")
        self.assertEqual((r.status, r.headers["X-Consul-Index"]), (200, "1"))

    def test_index_goes_backwards(self):
        self.emu.register_instance("api", id="api-1", port=1)
        idx = self.req("GET", "/v1/health/service/api").index()
        t, out = self.blocking_get("/v1/health/service/api?index=%d&wait=10s" % idx)
        self.emu.wait_for_request(path_prefix="/v1/health/service/api", predicate=lambda r: "index=" in r["Query"])
        time.sleep(0.2)
        new = self.emu.index_backwards(by=idx - 3)  # releases blocked queries
        t.join(5)
        self.assertFalse(t.is_alive())
        self.assertEqual(new, 3)
        self.assertLessEqual(out["resp"].index(), 3)
        self.assertLess(self.req("GET", "/v1/health/service/api").index(), idx)
        # and over the control API
        ctl = ControlClient(self.emu.url)
        self.assertEqual(ctl.set_index(2), 2)
        self.assertEqual(self.req("GET", "/v1/health/service/api").index(), 2)

    def test_agent_service_hash_blocking(self):
        self.register({"ID": "web-1", "Name": "web", "Port": 80})
        r = self.req("GET", "/v1/agent/service/web-1")
        h = r.headers["X-Consul-ContentHash"]
        self.assertEqual(r.json()["ContentHash"], h)
        t0 = time.monotonic()
        r2 = self.req("GET", "/v1/agent/service/web-1?hash=%s&wait=500ms" % h)
        self.assertGreaterEqual(time.monotonic() - t0, 0.45)
        self.assertEqual(r2.headers["X-Consul-ContentHash"], h)
        t, out = self.blocking_get("/v1/agent/service/web-1?hash=%s&wait=10s" % h)
        time.sleep(0.3)
        self.assertTrue(t.is_alive())
        self.register({"ID": "web-1", "Name": "web", "Port": 80, "Tags": ["new"]})
        t.join(5)
        self.assertFalse(t.is_alive())
        self.assertNotEqual(out["resp"].headers["X-Consul-ContentHash"], h)
        self.assertEqual(out["resp"].json()["Tags"], ["new"])
        r = self.req("GET", "/v1/agent/service/nope")
        self.assertEqual((r.status, r.text), (404, "unknown service ID: nope"))


class ACLTest(EmulatorTest):
    emu_kwargs = {"acl_token": "root-secret"}

    def test_tokens(self):
        web = {"Name": "web", "Check": {"CheckID": "ttl", "TTL": "30s"}}
        r = self.register(web)
        self.assertEqual(r.status, 403)
        self.assertEqual(r.text, "Permission denied: token with AccessorID '%s' lacks permission "
                                 "'service:write' on \"web\"" % ANON)
        r = self.register(web, headers={"X-Consul-Token": "wrong"})
        self.assertEqual((r.status, r.text), (403, "ACL not found"))
        self.assertEqual(self.register(web, headers={"X-Consul-Token": "root-secret"}).status, 200)
        self.assertEqual(self.register(web, headers={"Authorization": "Bearer root-secret"}).status, 200)
        r = self.req("GET", "/v1/agent/self")
        self.assertEqual(r.status, 403)
        self.assertIn("'agent:read' on \"node1\"", r.text)

        self.emu.add_acl_token("ro", "read-only")
        ro = {"X-Consul-Token": "ro"}
        r = self.req("GET", "/v1/health/service/web", headers=ro)
        self.assertEqual((r.status, len(r.json())), (200, 1))
        self.assertEqual(self.req("GET", "/v1/agent/self", headers=ro).status, 200)
        r = self.register(web, headers=ro)
        self.assertEqual(r.status, 403)
        self.assertTrue(r.text.startswith("Permission denied: "), r.text)
        r = self.req("PUT", "/v1/agent/check/pass/ttl", headers=ro)
        self.assertEqual(r.status, 403)
        r = self.req("PUT", "/v1/agent/service/deregister/web", headers=ro)
        self.assertEqual(r.status, 403)
        # reads without permission are filtered, not refused
        self.assertEqual(self.req("GET", "/v1/health/service/web").json(), [])
        self.assertEqual(self.req("GET", "/v1/health/service/web", headers={"X-Consul-Token": "nope"}).status, 403)

        # a service identity token over the control API
        ctl = ControlClient(self.emu.url)
        ctl.add_acl_token("web-token", "service:web")
        wt = {"X-Consul-Token": "web-token"}
        self.assertEqual(self.req("PUT", "/v1/agent/check/pass/ttl", headers=wt).status, 200)
        self.assertEqual(self.register({"Name": "db"}, headers=wt).status, 403)
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 200)  # no ACL on status


class ProtocolTest(EmulatorTest):
    def test_methods_and_unknown_paths(self):
        r = self.req("GET", "/v1/agent/service/register")
        self.assertEqual((r.status, r.headers["Allow"], r.text), (405, "OPTIONS,PUT", "method GET not allowed"))
        r = self.req("PUT", "/v1/health/service/web")
        self.assertEqual((r.status, r.headers["Allow"]), (405, "OPTIONS,GET"))
        r = self.req("POST", "/v1/agent/service/deregister/x")
        self.assertEqual(r.status, 405)
        r = self.req("OPTIONS", "/v1/agent/checks")
        self.assertEqual((r.status, r.headers["Allow"]), (200, "OPTIONS,GET"))
        r = self.req("GET", "/v1/no/such/thing")
        self.assertEqual((r.status, r.body), (404, b""))
        self.assertEqual(self.req("GET", "/").text, "Consul Agent")

    def test_agent_self_and_status(self):
        cfg = self.req("GET", "/v1/agent/self").json()["Config"]
        self.assertEqual((cfg["Datacenter"], cfg["NodeName"]), ("dc1", "node1"))
        self.assertTrue(cfg["NodeID"] and cfg["Version"])
        self.assertEqual(self.req("GET", "/v1/status/leader").json(), "127.0.0.1:8300")

    def test_unix_socket(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "consul.sock")
        emu = ConsulEmulator(http_addr=None, unix_path=path)
        emu.start()
        self.addCleanup(emu.stop)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(5)
        s.connect(path)
        s.sendall(b"GET /v1/status/leader HTTP/1.1\r\nHost: consul\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        s.close()
        self.assertTrue(data.startswith(b"HTTP/1.1 200 OK"), data)
        self.assertTrue(data.endswith(b'"127.0.0.1:8300"'), data)
        self.assertEqual(emu.requests()[0]["Transport"], "unix")

    def test_keep_alive_and_chunked_body(self):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        self.addCleanup(conn.close)
        for _ in range(3):
            conn.request("GET", "/v1/status/leader")
            self.assertEqual(conn.getresponse().read(), b'"127.0.0.1:8300"')
        body = json.dumps({"Name": "chunky"}).encode()
        conn.putrequest("PUT", "/v1/agent/service/register")
        conn.putheader("Transfer-Encoding", "chunked")
        conn.endheaders()
        conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
        r = conn.getresponse()
        r.read()
        self.assertEqual(r.status, 200)
        self.assertIn("chunky", self.req("GET", "/v1/agent/services").json())


class FaultTest(EmulatorTest):
    def test_fail_next_and_path_rules(self):
        self.emu.fail_next(2, path="/v1/health/")
        self.assertEqual(self.req("GET", "/v1/agent/self").status, 200)
        for _ in range(2):
            r = self.req("GET", "/v1/health/service/x")
            self.assertEqual(r.status, 500)
        self.assertEqual(self.req("GET", "/v1/health/service/x").status, 200)
        self.emu.add_fault(Status=429, Body="rate limited", Method="PUT", Count=1)
        r = self.register({"Name": "x"})
        self.assertEqual((r.status, r.text), (429, "rate limited"))
        self.assertEqual(self.register({"Name": "x"}).status, 200)
        fid = self.emu.add_fault(Status=503, PathRegex=r"^/v1/status/")
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 503)
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 503)
        self.assertTrue(self.emu.remove_fault(fid))
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 200)
        self.emu.add_fault(Status=500, Skip=1, Count=1)
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 200)
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 500)

    def test_delay_and_drop(self):
        self.emu.delay(0.4, path="/v1/status/leader", count=1)
        t0 = time.monotonic()
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.35)
        self.emu.add_fault(Drop=True, Count=1)
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.req("GET", "/v1/status/leader")
        self.emu.add_fault(Reset=True, Count=1)
        with self.assertRaises((http.client.HTTPException, ConnectionError)):
            self.req("GET", "/v1/status/leader")
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 200)
        self.assertEqual([r["Status"] for r in self.emu.requests()][-3:], ["dropped", "reset", 200])

    def test_refuse_connections(self):
        self.emu.stop_listening()
        with self.assertRaises(ConnectionRefusedError):
            self.req("GET", "/v1/status/leader", timeout=2)
        self.emu.start_listening()
        self.assertEqual(self.req("GET", "/v1/status/leader").status, 200)
        self.assertEqual(self.emu.port, self.port)
        # timed outage, and blocked queries are cut
        self.emu.register_instance("api", id="a", port=1)
        idx = self.req("GET", "/v1/health/service/api").index()
        out = {}

        def blocked():
            try:
                out["r"] = self.req("GET", "/v1/health/service/api?index=%d&wait=10s" % idx, timeout=10)
            except Exception as e:
                out["e"] = e
        t = threading.Thread(target=blocked, daemon=True)
        t.start()
        self.emu.wait_for_request(path_prefix="/v1/health/service/api", predicate=lambda r: "index=" in r["Query"])
        time.sleep(0.1)
        self.emu.stop_listening(duration=0.5)
        t.join(5)
        self.assertFalse(t.is_alive())
        self.assertIn("e", out)
        ok = self.emu.wait_for(lambda: self._up(), timeout=5, interval=0.05)
        self.assertTrue(ok)

    def _up(self):
        try:
            return self.req("GET", "/v1/status/leader", timeout=1).status == 200
        except OSError:
            return False

    def test_agent_restart_drops_registrations(self):
        self.register({"Name": "web", "Check": {"CheckID": "ttl", "TTL": "30s"}})
        idx = self.req("GET", "/v1/health/service/web").index()
        new = self.emu.restart_agent()
        self.assertGreater(new, idx)
        self.assertEqual(self.req("GET", "/v1/agent/services").json(), {})
        r = self.req("GET", "/v1/health/service/web")
        self.assertEqual(r.json(), [])
        self.assertGreater(r.index(), idx)
        r = self.req("PUT", "/v1/agent/check/pass/ttl")
        self.assertEqual(r.status, 404)
        self.register({"Name": "web"})
        self.assertEqual(self.emu.restart_agent(reset_index=5), 5)
        self.assertEqual(self.req("GET", "/v1/health/service/web").index(), 5)

    def test_request_log(self):
        self.req("PUT", "/v1/agent/service/register?replace-existing-checks", {"Name": "web"},
                 headers={"X-Consul-Token": "t0k", "Content-Type": "application/json"})
        self.req("GET", "/v1/health/service/web?passing&tag=a&tag=b&index=7&wait=1ms")
        ControlClient(self.emu.url).state()  # control requests are not logged
        log = self.emu.requests()
        self.assertEqual([(r["Method"], r["Path"]) for r in log],
                         [("PUT", "/v1/agent/service/register"), ("GET", "/v1/health/service/web")])
        reg, health = log
        self.assertEqual(reg["Query"], "replace-existing-checks")
        self.assertEqual(json.loads(reg["Body"]), {"Name": "web"})
        hdrs = {k.lower(): v for k, v in reg["Headers"]}
        self.assertEqual((hdrs["x-consul-token"], hdrs["content-type"]), ("t0k", "application/json"))
        self.assertEqual(reg["Status"], 200)
        self.assertEqual(health["Args"], {"passing": [""], "tag": ["a", "b"], "index": ["7"], "wait": ["1ms"]})
        self.assertEqual(self.emu.requests(method="GET")[0]["Path"], "/v1/health/service/web")
        ctl = ControlClient(self.emu.url)
        self.assertEqual(len(ctl.requests(path_prefix="/v1/agent/")), 1)
        ctl.clear_requests()
        self.assertEqual(self.emu.requests(), [])

    def test_control_http_api(self):
        ctl = ControlClient(self.emu.url)
        res = ctl.register_instance("pay", id="pay-1", node="n1", node_address="10.9.0.1", port=15443,
                                    tags=["v2"], weights={"Passing": 3, "Warning": 1}, status="warning")
        self.assertEqual(res["ServiceID"], "pay-1")
        e = self.req("GET", "/v1/health/service/pay").json()[0]
        self.assertEqual((e["Node"]["Address"], e["Service"]["Port"], e["Service"]["Tags"]), ("10.9.0.1", 15443, ["v2"]))
        self.assertEqual(e["Checks"][1]["Status"], "warning")
        ctl.set_check_status("service:pay-1", "passing", node="n1")
        ctl.set_node_health("n1", "critical")
        self.assertEqual(self.req("GET", "/v1/health/service/pay?passing").json(), [])
        ctl.fail_next(1, status=502, path="/v1/health/")
        self.assertEqual(self.req("GET", "/v1/health/service/pay").status, 502)
        ctl.deregister_instance("pay-1")
        self.assertEqual(self.req("GET", "/v1/health/service/pay").json(), [])
        self.assertGreaterEqual(ctl.current_index(), res["Index"])
        r = call(self.port, "POST", "/_emulator/listener/stop", {"For": 0.3})
        self.assertEqual(r.status, 200)
        self.assertTrue(self.emu.wait_for(self._up, timeout=5, interval=0.05))
        r = call(self.port, "GET", "/_emulator/nope")
        self.assertEqual(r.status, 404)


class PersistenceAndCLITest(unittest.TestCase):
    def test_state_file(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "state.json")
        a = ConsulEmulator(state_file=path)
        pa = a.start()
        try:
            r = call(pa, "PUT", "/v1/agent/service/register", {"Name": "web", "Check": {"CheckID": "t", "TTL": "1m",
                                                                                           "Status": "passing"}})
            self.assertEqual(r.status, 200)
            a.register_instance("api", id="api-1", port=7)
            idx = call(pa, "GET", "/v1/health/service/web").index()
        finally:
            a.stop()
        b = ConsulEmulator(state_file=path)
        pb = b.start()
        try:
            self.assertIn("web", call(pb, "GET", "/v1/agent/services").json())
            self.assertEqual(call(pb, "GET", "/v1/agent/checks").json()["t"]["Status"], "passing")
            self.assertEqual(len(call(pb, "GET", "/v1/health/service/api").json()), 1)
            self.assertGreaterEqual(call(pb, "GET", "/v1/health/service/web").index(), idx)
        finally:
            b.stop()

    def test_command_line(self):
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        pf = os.path.join(d, "port")
        p = subprocess.Popen([sys.executable, os.path.join(EMU_DIR, "consul_emulator.py"), "--http", "127.0.0.1:0",
                              "--port-file", pf, "--datacenter", "dc7", "--node-name", "n7", "--acl-token", "root"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def cleanup():
            if p.poll() is None:
                p.kill()
            p.wait(5)
            p.stdout.close()
            p.stderr.close()
        self.addCleanup(cleanup)
        ready, _, _ = select.select([p.stdout], [], [], 10)
        self.assertTrue(ready, "the emulator did not start")
        info = json.loads(p.stdout.readline())
        port = info["port"]
        with open(pf) as f:
            self.assertEqual(int(f.read()), port)
        cfg = call(port, "GET", "/v1/agent/self", headers={"X-Consul-Token": "root"}).json()["Config"]
        self.assertEqual((cfg["Datacenter"], cfg["NodeName"]), ("dc7", "n7"))
        p.terminate()
        self.assertEqual(p.wait(10), 0)


@unittest.skipUnless(shutil.which("openssl"), "openssl not installed")
class ConnectTest(EmulatorTest):
    def test_roots_leaf_authorize(self):
        r = self.req("GET", "/v1/agent/connect/ca/roots")
        self.assertEqual(r.status, 200, r.text)
        roots = r.json()
        self.assertTrue(roots["TrustDomain"].endswith(".consul"))
        self.assertEqual(len(roots["Roots"]), 1)
        root = roots["Roots"][0]
        self.assertTrue(root["Active"])
        self.assertEqual(root["ID"], roots["ActiveRootID"])
        self.assertIn("BEGIN CERTIFICATE", root["RootCert"])

        r = self.req("GET", "/v1/agent/connect/ca/leaf/web")
        self.assertEqual(r.status, 200, r.text)
        leaf = r.json()
        uri = "spiffe://%s/ns/default/dc/dc1/svc/web" % roots["TrustDomain"]
        self.assertEqual((leaf["Service"], leaf["ServiceURI"]), ("web", uri))
        self.assertIn("BEGIN EC PRIVATE KEY", leaf["PrivateKeyPEM"])
        self.assertEqual(r.index(), leaf["ModifyIndex"])
        d = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, d, True)
        with open(os.path.join(d, "root.pem"), "w") as f:
            f.write(root["RootCert"])
        with open(os.path.join(d, "leaf.pem"), "w") as f:
            f.write(leaf["CertPEM"])
        v = subprocess.run(["openssl", "verify", "-CAfile", "root.pem", "leaf.pem"], cwd=d, capture_output=True,
                           timeout=30)
        self.assertEqual(v.returncode, 0, v.stderr)
        txt = subprocess.run(["openssl", "x509", "-in", "leaf.pem", "-noout", "-text"], cwd=d, capture_output=True,
                             timeout=30).stdout.decode()
        self.assertIn("URI:" + uri, txt)
        self.assertIn("prime256v1", txt)

        # the same leaf until something changes
        self.assertEqual(self.req("GET", "/v1/agent/connect/ca/leaf/web").json()["SerialNumber"], leaf["SerialNumber"])

        auth = {"Target": "web", "ClientCertURI": "spiffe://%s/ns/default/dc/dc1/svc/api" % roots["TrustDomain"]}
        r = self.req("POST", "/v1/agent/connect/authorize", auth)
        self.assertEqual(r.json(), {"Authorized": True, "Reason": "Default behavior configured by ACLs"})
        self.emu.set_intentions([{"SourceName": "api", "DestinationName": "web", "Action": "deny"}])
        r = self.req("POST", "/v1/agent/connect/authorize", auth).json()
        self.assertFalse(r["Authorized"])
        self.assertTrue(r["Reason"].startswith("Matched L4 intention: api => web"), r["Reason"])
        self.emu.set_intentions([{"SourceName": "*", "DestinationName": "web", "Action": "allow"},
                                 {"SourceName": "api", "DestinationName": "web", "Permissions": [{"Action": "allow"}]}])
        r = self.req("POST", "/v1/agent/connect/authorize", auth).json()
        self.assertFalse(r["Authorized"])
        self.assertTrue(r["Reason"].startswith("Matched L7 intention"), r["Reason"])
        r = self.req("POST", "/v1/agent/connect/authorize", {"Target": "web", "ClientCertURI": "https://x"})
        self.assertEqual((r.status, r.text), (400, "ClientCertURI not a valid Connect identifier"))
        r = self.req("POST", "/v1/agent/connect/authorize", {"ClientCertURI": auth["ClientCertURI"]})
        self.assertEqual((r.status, r.text), (400, "Target service must be specified"))

        # rotation: a blocked leaf query answers with a certificate of the new root
        idx = leaf["ModifyIndex"]
        out = {}
        t = threading.Thread(target=lambda: out.update(r=self.req(
            "GET", "/v1/agent/connect/ca/leaf/web?index=%d&wait=20s" % idx, timeout=30)), daemon=True)
        t.start()
        time.sleep(0.3)
        self.assertTrue(t.is_alive())
        new_root = self.emu.rotate_ca()
        t.join(20)
        self.assertFalse(t.is_alive())
        new_leaf = out["r"].json()
        self.assertGreater(new_leaf["ModifyIndex"], idx)
        self.assertNotEqual(new_leaf["SerialNumber"], leaf["SerialNumber"])
        roots = self.req("GET", "/v1/agent/connect/ca/roots").json()
        self.assertEqual(len(roots["Roots"]), 2)
        self.assertEqual(roots["ActiveRootID"], new_root)


class HelpersTest(unittest.TestCase):
    def test_go_durations(self):
        p = consul_emulator.parse_go_duration
        self.assertEqual(p("10s"), 10 * 10 ** 9)
        self.assertEqual(p("1m30s"), 90 * 10 ** 9)
        self.assertEqual(p("250ms"), 250 * 10 ** 6)
        self.assertEqual(p("1.5h"), 5400 * 10 ** 9)
        self.assertEqual(p("0"), 0)
        for bad, msg in (("", 'time: invalid duration ""'), ("10", 'time: missing unit in duration "10"'),
                         ("5y", 'time: unknown unit "y" in duration "5y"'), ("s", 'time: invalid duration "s"')):
            with self.assertRaises(ValueError) as cm:
                p(bad)
            self.assertEqual(str(cm.exception), msg)
        f = consul_emulator.format_go_duration
        self.assertEqual([f(x * 10 ** 6) for x in (0, 250, 1500, 90000, 3600000)],
                         ["0s", "250ms", "1.5s", "1m30s", "1h0m0s"])


if __name__ == "__main__":
    unittest.main()

"""The access log, request IDs and GET /failures through the real binary.

  requests   one JSON line per request and gRPC call, inbound and outbound,
             every field checked (success, the sidecar's own failure answer,
             gRPC); x-request-id kept, generated (absent, invalid,
             duplicated), passed to the app and upstreams, and in the
             sidecar's error answers (HTTP header, gRPC trailers-only
             metadata); /failures rows after a failing upstream
  two hops   one request ID through two sidecars, in both lines
  select     errors, slow and sample write only what they select
  rotate     SIGHUP with traffic running: every line in the old or new file
  stall      a stdout pipe nobody reads: lines dropped and counted, the
             sidecar keeps serving

  file       access_log: destination file: the file is created at start
             (mode 0640 less the umask), the metrics are in /stats, the
             writer thread runs, and the sidecar exits 0 on SIGTERM
  sighup     logrotate: the file moved away and SIGHUP make a new file, the
             reopen is logged and counted; a reopen that fails (directory
             gone) keeps the sidecar serving and says why
  start      a file that cannot be opened at start fails start-up with the
             path and the reason
  check      --check reports every bad access_log: field by name
  failures   GET /failures answers a JSON array (empty: nothing failed yet) and
             refuses bad queries: limit out of range (400), unknown
             parameter (400), unknown upstream (404), POST (405)
  off        without access_log: the metrics are still there, at zero
"""

import json
import os
import shutil
import signal
import stat
import tempfile
import time
import unittest

import http.client
import re
import subprocess

import harness
from harness import SidecarTestCase, free_port, run, wait_until

GENERATED_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
FIELDS = ["time", "direction", "upstream", "method", "authority", "path", "grpc_service", "grpc_method", "status",
          "grpc_status", "reason", "duration_ms", "upstream_ms", "attempts", "instance", "bytes_in", "bytes_out",
          "caller", "request_id", "trace_id", "span_id", "downstream_protocol", "upstream_protocol",
          "downstream_tls", "upstream_tls"]


class LogFile:
    """Reads the JSON lines of an access log file as they come."""

    def __init__(self, path):
        self.path = path
        self.seen = 0

    def all(self):
        try:
            with open(self.path) as f:
                return [json.loads(l) for l in f.read().splitlines() if l]
        except FileNotFoundError:
            return []

    def wait_new(self, n, timeout=5.0):
        """The next n lines (waits for them); then no more for a short while."""
        want = self.seen + n
        wait_until(lambda: len(self.all()) >= want, timeout=timeout)
        lines = self.all()
        self.seen = len(lines)
        return lines[want - n:want]


def call(port, path, headers=(), method="GET", body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, path, body=body, headers=dict(headers))
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def config(access_log=None, workers=2):
    cfg = harness.base_config(free_port(), workers=workers)
    cfg["upstreams"] = [harness.upstream("pay", "http1", free_port(), ["127.0.0.1:%d" % free_port()])]
    if access_log is not None:
        cfg["access_log"] = access_log
    return cfg


class AccessLogFileTest(SidecarTestCase):
    def test_file_created_metrics_and_clean_exit(self):
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "access.log")
        sc = self.sidecar(config({"destination": "file", "path": path, "select": ["errors", "slow"],
                                  "slow_threshold": "1s"}))
        st = os.stat(path)
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640 & ~umask)
        s = sc.stats()
        for name in ("sidecar_access_log_lines_total", "sidecar_access_log_dropped_total",
                     "sidecar_access_log_written_bytes_total", "sidecar_access_log_write_errors_total",
                     "sidecar_access_log_reopens_total", "sidecar_failures_recorded_total"):
            self.assertEqual(s.value(name), 0, name)
        # the writer thread runs (and wakes on its flush timer)
        wait_until(lambda: sc.stats().value("sidecar_access_log_writer_wakeups_total") > 0, timeout=5)
        tasks = [open("/proc/%d/task/%s/comm" % (sc.pid, t)).read().strip()
                 for t in os.listdir("/proc/%d/task" % sc.pid)]
        self.assertIn("sc-access-log", tasks)
        cfg = sc.config_json()["access_log"]
        self.assertEqual(cfg["destination"], "file")
        self.assertEqual(cfg["path"], path)
        self.assertEqual(cfg["select"], ["errors", "slow"])
        self.assertEqual(cfg["slow_threshold"], "1s")
        self.assertEqual(sc.stop(), 0)

    def test_sighup_reopens(self):
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "access.log")
        sc = self.sidecar(config({"destination": "file", "path": path}))
        os.rename(path, path + ".1")
        sc.send_signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(path), timeout=5)
        wait_until(lambda: "access log: reopened %s" % path in sc.log_text(), timeout=5)
        self.assertEqual(sc.stats().value("sidecar_access_log_reopens_total"), 1)
        # the directory goes away: the reopen fails, says why, nothing else changes
        shutil.rmtree(d)
        sc.send_signal(signal.SIGHUP)
        wait_until(lambda: "access log: cannot reopen %s" % path in sc.log_text(), timeout=5)
        self.assertIn("still writing to the file opened before", sc.log_text())
        self.assertEqual(sc.stats().value("sidecar_access_log_reopens_total"), 1)
        status, _, _ = sc.admin("/ready")
        self.assertEqual(status, 200)
        self.assertEqual(sc.stop(), 0)

    def test_start_fails_when_the_file_cannot_be_opened(self):
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "access.log")
        os.mkdir(path + ".d")
        os.symlink(path + ".d/missing/x", path)  # a dangling symlink into nowhere: open fails
        sc = harness.Sidecar(config({"destination": "file", "path": path}), name="al-start")
        self.addCleanup(sc.cleanup)
        sc.start(wait_ready=False)
        sc.proc.wait(10)
        self.assertNotEqual(sc.proc.returncode, 0)
        self.assertIn("access log: cannot open %s: No such file or directory" % path, sc.log_text())


class AccessLogCheckTest(unittest.TestCase):
    def check(self, access_log):
        sc = harness.Sidecar(config(access_log), name="al-check")
        self.addCleanup(sc.cleanup)
        r = sc.check()
        return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")

    def test_bad_fields_named(self):
        cases = [
            ({"destination": "syslog"}, "access_log.destination"),
            ({"destination": "file"}, "access_log.path: destination: file needs a path"),
            ({"path": "/tmp/x.log"}, "access_log.path: a path is used only with destination: file"),
            ({"destination": "file", "path": "/nonexistent-dir-sc-it/a.log"}, "does not exist"),
            ({"select": ["all", "errors"]}, "access_log.select"),
            ({"select": "slow"}, "access_log.slow_threshold: select: slow needs a slow_threshold"),
            ({"select": "sample", "sample_ratio": 0}, "access_log.sample_ratio: 0 logs nothing"),
            ({"buffer": "1KiB"}, "access_log.buffer"),
            ({"flush_interval": "1m"}, "access_log.flush_interval"),
            ({"destinaton": "stdout"}, "access_log.destinaton"),
        ]
        for section, needle in cases:
            with self.subTest(section=section):
                rc, out = self.check(section)
                self.assertEqual(rc, 1, out)
                self.assertIn(needle, out)

    def test_good_config_passes(self):
        rc, out = self.check({"destination": "stderr", "select": ["errors", "sample"], "sample_ratio": 0.01})
        self.assertEqual(rc, 0, out)


class FailuresEndpointTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.sc = cls.class_sidecar(config(workers=3))

    def test_empty_rings(self):
        self.assertEqual(self.sc.admin_json("/failures"), [])
        self.assertEqual(self.sc.admin_json("/failures?limit=1&upstream=pay"), [])
        status, headers, _ = self.sc.admin("/failures")
        self.assertEqual(headers["content-type"], "application/json")

    def test_bad_queries(self):
        for path, code, needle in [
            ("/failures?limit=0", 400, b"limit must be a number from 1 to 1000"),
            ("/failures?limit=1001", 400, b"limit must be"),
            ("/failures?limit=-1", 400, b"limit must be"),
            ("/failures?limit=5x", 400, b"limit must be"),
            ("/failures?foo=1", 400, b"unknown query parameter 'foo'"),
            ("/failures?upstream=nope", 404, b"no such upstream"),
        ]:
            with self.subTest(path=path):
                status, _, body = self.sc.admin(path)
                self.assertEqual(status, code, body)
                self.assertIn(needle, body)
        status, _, _ = self.sc.admin("/failures", method="POST")
        self.assertEqual(status, 405)

    def test_listed_in_help(self):
        status, _, body = self.sc.admin("/help")
        self.assertEqual(status, 200)
        self.assertIn(b"/failures", body)

    def test_metrics_present_when_access_log_off(self):
        s = self.sc.stats()
        self.assertEqual(s.value("sidecar_access_log_dropped_total"), 0)
        self.assertEqual(s.value("sidecar_failures_recorded_total"), 0)
        self.assertIsNone(self.sc.config_json()["access_log"])
        tasks = [open("/proc/%d/task/%s/comm" % (self.sc.pid, t)).read().strip()
                 for t in os.listdir("/proc/%d/task" % self.sc.pid)]
        self.assertNotIn("sc-access-log", tasks)


class AccessLogRequestTest(SidecarTestCase):
    """Outbound HTTP/1 and gRPC, inbound, and a dead upstream, one sidecar,
    every line to a file."""

    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer("app")
        cls.grpc = cls.class_grpc_peer("rpc")
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        cls.addClassCleanup(shutil.rmtree, d, True)
        cls.web, cls.rpc, cls.dead, cls.deadrpc, cls.inb = (free_port() for _ in range(5))
        cls.dead_port = free_port()
        cfg = harness.base_config(free_port(), inbound={"listen_port": cls.inb, "app_port": cls.peer.port},
                                  upstreams=[
                                      harness.upstream("web", "http1", cls.web, [cls.peer.port]),
                                      harness.upstream("rpc", "grpc", cls.rpc, [cls.grpc.port]),
                                      harness.upstream("dead", "http1", cls.dead, [cls.dead_port]),
                                      harness.upstream("deadrpc", "grpc", cls.deadrpc, [cls.dead_port])])
        cfg["access_log"] = {"destination": "file", "path": os.path.join(d, "access.log"), "flush_interval": "10ms"}
        cls.sc = cls.class_sidecar(cfg)
        cls.log = LogFile(os.path.join(d, "access.log"))

    def setUp(self):
        self.log.seen = len(self.log.all())

    def check_shape(self, line):
        self.assertEqual(list(line.keys()), FIELDS)
        self.assertRegex(line["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
        self.assertGreater(line["duration_ms"], 0)

    def test_outbound_http1_every_field(self):
        status, headers, body = call(self.web, "/echo?x=1", [("x-request-id", "abc-123:Z")], "POST", b"hello")
        self.assertEqual(status, 200)
        seen = json.loads(body)["headers"]
        self.assertEqual([v for k, v in seen if k.lower() == "x-request-id"], ["abc-123:Z"])
        (line,) = self.log.wait_new(1)
        self.check_shape(line)
        self.assertEqual({k: line[k] for k in FIELDS if k not in ("time", "duration_ms", "upstream_ms")}, {
            "direction": "outbound", "upstream": "web", "method": "POST", "authority": "127.0.0.1:%d" % self.web,
            "path": "/echo?x=1", "grpc_service": None, "grpc_method": None, "status": 200, "grpc_status": None,
            "reason": None, "attempts": 1, "instance": "127.0.0.1:%d" % self.peer.port, "bytes_in": 5,
            "bytes_out": len(body), "caller": None, "request_id": "abc-123:Z", "trace_id": None, "span_id": None,
            "downstream_protocol": "HTTP/1.1", "upstream_protocol": "HTTP/1.1", "downstream_tls": False,
            "upstream_tls": False})
        self.assertIsNotNone(line["upstream_ms"])
        self.assertLessEqual(line["upstream_ms"], line["duration_ms"])

    def test_request_id_generated_when_absent_invalid_or_repeated(self):
        for hdrs in ([], [("x-request-id", "has space")], [("x-request-id", "a" * 129)],
                     [("x-request-id", "\u00e9t\u00e9".encode().decode("latin-1"))]):
            with self.subTest(hdrs=hdrs):
                status, _, body = call(self.web, "/echo", hdrs)
                self.assertEqual(status, 200)
                ids = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-request-id"]
                self.assertEqual(len(ids), 1)
                self.assertRegex(ids[0], GENERATED_ID)
                (line,) = self.log.wait_new(1)
                self.assertEqual(line["request_id"], ids[0])
        # two fields: a new one replaces both
        r = harness.http_get(self.web, "/echo", host_header="x", headers=[("X-Request-Id", "one"),
                                                                             ("X-Request-Id", "two")])
        ids = [v for k, v in json.loads(r.body)["headers"] if k.lower() == "x-request-id"]
        self.assertEqual(len(ids), 1)
        self.assertRegex(ids[0], GENERATED_ID)
        self.log.wait_new(1)

    def test_inbound_line_and_id_to_the_app(self):
        status, _, body = call(self.inb, "/echo", [("x-request-id", "in-1")])
        self.assertEqual(status, 200)
        self.assertIn(["x-request-id", "in-1"], [[k.lower(), v] for k, v in json.loads(body)["headers"]])
        (line,) = self.log.wait_new(1)
        self.check_shape(line)
        self.assertEqual((line["direction"], line["upstream"], line["request_id"], line["attempts"], line["status"]),
                         ("inbound", "inbound", "in-1", 1, 200))

    def test_grpc_call_line(self):
        from grpc_client import Echo
        echo = Echo(self.class_channel(self.rpc))
        resp, c = echo.unary.with_call(b"ping", metadata=[("x-request-id", "rpc-1")], timeout=5)
        self.assertEqual(resp, b"ping")
        (line,) = self.log.wait_new(1)
        self.check_shape(line)
        self.assertEqual((line["grpc_service"], line["grpc_method"], line["grpc_status"], line["status"],
                          line["downstream_protocol"], line["upstream_protocol"], line["request_id"],
                          line["path"], line["reason"]),
                         ("test.Echo", "Unary", 0, 200, "HTTP/2", "HTTP/2", "rpc-1", "/test.Echo/Unary", None))
        self.assertGreater(line["bytes_in"], 0)
        self.assertGreater(line["bytes_out"], 0)

    def test_failing_upstream_line_error_answer_and_failures_row(self):
        status, headers, body = call(self.dead, "/x", [("x-request-id", "dead-1")])
        self.assertEqual(status, 503)
        self.assertEqual(headers["x-sidecar-reason"], "connect-failure")
        self.assertEqual(headers["x-request-id"], "dead-1")
        (line,) = self.log.wait_new(1)
        self.check_shape(line)
        self.assertEqual((line["status"], line["reason"], line["attempts"], line["instance"], line["request_id"],
                          line["upstream"], line["bytes_out"]),
                         (503, "connect-failure", 1, "127.0.0.1:%d" % self.dead_port, "dead-1", "dead", len(body)))
        rows = [r for r in self.sc.admin_json("/failures?upstream=dead") if r["request_id"] == "dead-1"]
        self.assertEqual(len(rows), 1, self.sc.admin_json("/failures"))
        self.assertEqual((rows[0]["reason"], rows[0]["status"], rows[0]["attempts"], rows[0]["instance"]),
                         ("connect-failure", 503, 1, "127.0.0.1:%d" % self.dead_port))
        # a generated ID is in the answer too
        status, headers, _ = call(self.dead, "/x")
        self.assertRegex(headers["x-request-id"], GENERATED_ID)
        self.log.wait_new(1)

    def test_grpc_error_carries_the_id_in_trailers_only_metadata(self):
        import grpc
        from grpc_client import Echo
        echo = Echo(self.class_channel(self.deadrpc))
        with self.assertRaises(grpc.RpcError) as cm:
            echo.unary.with_call(b"ping", metadata=[("x-request-id", "rpc-dead")], timeout=5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.UNAVAILABLE)
        md = dict(cm.exception.trailing_metadata())
        self.assertEqual(md.get("x-request-id"), "rpc-dead")
        self.assertEqual(md.get("x-sidecar-reason"), "connect-failure")
        (line,) = self.log.wait_new(1)
        self.assertEqual((line["grpc_status"], line["reason"], line["request_id"]), (14, "connect-failure", "rpc-dead"))


class RequestIdTwoHopsTest(SidecarTestCase):
    def test_one_id_through_two_sidecars(self):
        app = self.http1_peer("app")
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        b_in, a_out = free_port(), free_port()
        cfg_b = harness.base_config(free_port(), inbound={"listen_port": b_in, "app_port": app.port}, name="b")
        cfg_b["access_log"] = {"destination": "file", "path": os.path.join(d, "b.log"), "flush_interval": "10ms"}
        self.sidecar(cfg_b, name="b")
        cfg_a = harness.base_config(free_port(), upstreams=[harness.upstream("b", "http1", a_out, [b_in])], name="a")
        cfg_a["access_log"] = {"destination": "file", "path": os.path.join(d, "a.log"), "flush_interval": "10ms"}
        self.sidecar(cfg_a, name="a")
        status, _, body = call(a_out, "/echo")
        self.assertEqual(status, 200)
        (rid,) = [v for k, v in json.loads(body)["headers"] if k.lower() == "x-request-id"]
        self.assertRegex(rid, GENERATED_ID)
        (la,) = LogFile(os.path.join(d, "a.log")).wait_new(1)
        (lb,) = LogFile(os.path.join(d, "b.log")).wait_new(1)
        self.assertEqual((la["request_id"], la["direction"]), (rid, "outbound"))
        self.assertEqual((lb["request_id"], lb["direction"]), (rid, "inbound"))


class AccessLogSelectTest(SidecarTestCase):
    def start(self, section):
        app = self.http1_peer("app")
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        self.ok, self.dead = free_port(), free_port()
        cfg = harness.base_config(free_port(), upstreams=[harness.upstream("ok", "http1", self.ok, [app.port]),
                                                          harness.upstream("dead", "http1", self.dead,
                                                                           [free_port()])])
        cfg["access_log"] = dict({"destination": "file", "path": os.path.join(d, "a.log"),
                                  "flush_interval": "10ms"}, **section)
        self.sc = self.sidecar(cfg)
        return LogFile(os.path.join(d, "a.log"))

    def test_errors(self):
        log = self.start({"select": "errors"})
        for _ in range(3):
            self.assertEqual(call(self.ok, "/echo")[0], 200)
            self.assertEqual(call(self.ok, "/status/404")[0], 404)
        self.assertEqual(call(self.ok, "/status/500")[0], 500)
        self.assertEqual(call(self.dead, "/x")[0], 503)
        lines = log.wait_new(2)
        self.assertEqual(sorted((l["upstream"], l["status"]) for l in lines), [("dead", 503), ("ok", 500)])
        time.sleep(0.2)
        self.assertEqual(len(log.all()), 2)

    def test_slow(self):
        log = self.start({"select": "slow", "slow_threshold": "150ms"})
        self.assertEqual(call(self.ok, "/echo")[0], 200)
        self.assertEqual(call(self.ok, "/delay/300")[0], 200)
        (line,) = log.wait_new(1)
        self.assertEqual(line["path"], "/delay/300")
        self.assertGreater(line["duration_ms"], 150)
        time.sleep(0.2)
        self.assertEqual(len(log.all()), 1)

    def test_sample_by_request_id(self):
        log = self.start({"select": "sample", "sample_ratio": 0.5})
        ids = ["req-%d" % i for i in range(60)]
        for rid in ids + ids:  # the same ID makes the same choice
            self.assertEqual(call(self.ok, "/echo", [("x-request-id", rid)])[0], 200)
        wait_until(lambda: self.sc.stats().value("sidecar_access_log_lines_total") >= 2, timeout=5)
        time.sleep(0.3)
        logged = [l["request_id"] for l in log.all()]
        n = len(set(logged))
        self.assertTrue(10 <= n <= 50, n)
        self.assertEqual(sorted(logged), sorted(list(set(logged)) * 2))


class AccessLogRotateWithTrafficTest(SidecarTestCase):
    def test_sighup_during_traffic_loses_nothing(self):
        app = self.http1_peer("app")
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "a.log")
        port = free_port()
        cfg = harness.base_config(free_port(), upstreams=[harness.upstream("ok", "http1", port, [app.port])])
        cfg["access_log"] = {"destination": "file", "path": path, "flush_interval": "10ms"}
        sc = self.sidecar(cfg)
        sent = 0
        deadline = time.monotonic() + 20
        for i in range(300):
            if time.monotonic() > deadline:
                break
            self.assertEqual(call(port, "/echo", [("x-request-id", "rot-%d" % i)])[0], 200)
            sent += 1
            if i == 100:
                os.rename(path, path + ".1")
                sc.send_signal(signal.SIGHUP)
            if i == 200:
                wait_until(lambda: sc.stats().value("sidecar_access_log_reopens_total") == 1, timeout=5)
        self.assertEqual(sc.stop(), 0)  # writes what is queued

        def ids(p):
            with open(p) as f:
                return [json.loads(l)["request_id"] for l in f.read().splitlines()]
        old, new = ids(path + ".1"), ids(path)
        self.assertGreater(len(old), 100)
        self.assertGreater(len(new), 50)
        self.assertEqual(sorted(old + new), sorted("rot-%d" % i for i in range(sent)))


class AccessLogStalledStdoutTest(SidecarTestCase):
    def test_stalled_pipe_drops_and_counts(self):
        app = self.http1_peer("app")
        port = free_port()
        cfg = harness.base_config(free_port(), upstreams=[harness.upstream("ok", "http1", port, [app.port])],
                                  workers=1)
        cfg["access_log"] = {"destination": "stdout", "buffer": "64KiB", "flush_interval": "10ms"}
        sc = harness.Sidecar(cfg, name="al-stall")
        self.addCleanup(sc.cleanup)
        r, w = os.pipe()  # nobody reads r: the writer stalls once the pipe is full
        self.addCleanup(os.close, r)
        sc.proc = harness.spawn([sc.binary, "--config", sc.config_path], log_path=sc.log_path, cwd=sc.dir,
                                stdout=w)
        os.close(w)
        sc.wait_ready()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        deadline = time.monotonic() + 30
        n = 0
        while n < 3000 and time.monotonic() < deadline:
            conn.request("GET", "/echo?" + "p" * 200)
            resp = conn.getresponse()
            resp.read()
            self.assertEqual(resp.status, 200)
            n += 1
            if n % 200 == 0 and sc.stats().value("sidecar_access_log_dropped_total") > 0:
                break
        conn.close()
        s = sc.stats()
        self.assertGreater(s.value("sidecar_access_log_dropped_total"), 0)
        self.assertEqual(sc.admin("/ready")[0], 200)
        self.assertEqual(call(port, "/echo")[0], 200)  # still serving
        sc.kill()


if __name__ == "__main__":
    unittest.main()

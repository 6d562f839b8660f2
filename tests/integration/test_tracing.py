"""Distributed tracing: the exporter over real HTTP, and traces through sidecars.

Run from tests/integration:  /usr/bin/python3 -m unittest -v test_tracing

ExporterTest runs the tracer alone (tests/otlp/trace_export_driver.c, built
as sc_trace_driver: worker threads record the spans of requests that retry
once, the control loop exports them with libcurl) against the OTLP/HTTP
JSON collector emulator (tests/otlp/otlp_collector_emulator.py), which
checks every request against the protocol. It covers the spans' shape and
links, batching by size and by time, retries on 503 with Retry-After, a
timeout, a refused connection, a non-retryable 400, a partial success, a
full queue (spans dropped and counted, the producers never wait) and a 0
sample ratio.

TwoSidecarTraceTest is the end-to-end case: a call through two sidecars
whose first attempt fails at the app and is retried yields one connected
trace.
"""

import json
import os
import shutil
import tempfile
import subprocess
import sys
import time
import unittest

import harness
from harness import SidecarTestCase, free_port

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "otlp")))

from otlp_collector_emulator import OtlpCollector  # noqa: E402

CALLER_TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def driver_path():
    p = os.environ.get("SC_TRACE_DRIVER")
    if p:
        return p
    return os.path.normpath(os.path.join(HERE, "..", "..", "build", "tests", "sc_trace_driver"))


class ExporterTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        if not os.access(driver_path(), os.X_OK):
            raise unittest.SkipTest("no sc_trace_driver at %s (build the tree or set SC_TRACE_DRIVER)" % driver_path())

    def setUp(self):
        self.c = OtlpCollector()
        self.c.start()
        self.addCleanup(self.c.stop)

    def drive(self, endpoint=None, run_timeout=60, **opts):
        args = [driver_path(), "--endpoint", endpoint or self.c.url]
        for k, v in opts.items():
            if v is True:
                args.append("--" + k.replace("_", "-"))
            else:
                args += ["--" + k.replace("_", "-"), str(v)]
        t0 = time.monotonic()
        p = subprocess.run(args, capture_output=True, text=True, timeout=run_timeout)
        self.elapsed = time.monotonic() - t0
        self.assertEqual(p.returncode, 0, p.stderr)
        self.stderr = p.stderr
        return json.loads(p.stdout.strip().splitlines()[-1])

    def assertNoViolations(self, allow=()):
        bad = [v for v in self.c.violations if not any(a in v for a in allow)]
        self.assertEqual(bad, [], "the collector found protocol violations")

    def test_spans_shape_and_links(self):
        r = self.drive(workers=2, requests=20, interval="100ms")
        self.assertEqual(r["recorded"], 2 * 20 * 3)
        self.assertEqual(r["exported"], r["recorded"])
        self.assertEqual(r["dropped_queue_full"] + r["dropped_export"] + r["dropped_rejected"], 0)
        self.assertEqual(r["errors"], 0)
        spans = self.c.wait_spans(r["recorded"], timeout=5)
        self.assertNoViolations()
        traces = self.c.traces()
        self.assertEqual(len(traces), 40)
        for tid, ts in traces.items():
            problems, tree = self.c.check_trace(tid)
            self.assertEqual(problems, [], tid)
            self.assertEqual(len(ts), 3)
            root = [s for s in ts if s["spanId"] == tree[None][0]][0]
            self.assertEqual(root["kind"], 2)
            self.assertIsNone(root["parentSpanId"])
            self.assertEqual(root["attributes"]["sidecar.attempts"], 2)
            self.assertEqual(root["attributes"]["url.path"], "/items/42")
            self.assertEqual(root["attributes"]["sidecar.sampled_by"], "ratio")
            self.assertEqual([e["name"] for e in root["events"]], ["sidecar.retry.backoff"])
            self.assertEqual(root["events"][0]["attributes"], {"sidecar.backoff_ms": 25})
            attempts = sorted((s for s in ts if s is not root), key=lambda s: s["attributes"]["sidecar.attempt"])
            self.assertEqual(sorted(tree[root["spanId"]]), sorted(a["spanId"] for a in attempts))
            self.assertEqual([a["kind"] for a in attempts], [3, 3])
            self.assertEqual(attempts[0]["status"], {"code": 2, "message": "upstream answered 503"})
            self.assertEqual(attempts[0]["attributes"]["sidecar.outcome"], "retried")
            self.assertEqual([e["name"] for e in attempts[0]["events"]],
                             ["sidecar.response.first_byte", "sidecar.retry.pushback"])
            self.assertEqual(attempts[1]["attributes"]["http.request.resend_count"], 1)
            self.assertNotIn("http.request.resend_count", attempts[0]["attributes"])
            self.assertLessEqual(attempts[0]["end"], attempts[1]["start"])
            self.assertEqual(root["resource"]["service.name"], "web")
            self.assertEqual(root["resource"]["service.instance.id"], "web-1")
            self.assertEqual(root["resource"]["telemetry.sdk.name"], "sidecar")
            self.assertTrue(root["resource"]["telemetry.sdk.version"])
            self.assertEqual(root["flags"] & 0x3FF, 0x101)  # sampled, parent known to be local/none
        self.assertIn(r["first_traces"][0], traces)
        # the trace IDs are random: the right half too (ratio sampling reads it)
        self.assertEqual(len({t[16:] for t in traces}), 40)
        for req in self.c.requests:
            self.assertEqual(dict(req["headers"]).get("content-type"), "application/json")
        self.assertIn('sidecar_trace_spans_exported_total 120', self.stderr)

    def test_caller_context_is_the_remote_parent(self):
        r = self.drive(workers=1, requests=1, traceparent=CALLER_TP, interval="50ms")
        self.assertEqual(r["exported"], 3)
        self.c.wait_spans(3, timeout=5)
        self.assertNoViolations()
        problems, tree = self.c.check_trace("4bf92f3577b34da6a3ce929d0e0e4736", remote_root=True)
        self.assertEqual(problems, [])
        root = self.c.get_spans(trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
        root = [s for s in root if s["kind"] == 2][0]
        self.assertEqual(root["parentSpanId"], "00f067aa0ba902b7")
        self.assertEqual(root["flags"] & 0x300, 0x300)  # the parent is remote
        self.assertEqual(root["attributes"]["sidecar.sampled_by"], "parent")

    def test_batches_by_size(self):
        # 21 spans, batches of 10, an interval too long to matter: two full
        # batches go while the driver runs, the last span at the final flush
        r = self.drive(workers=1, requests=7, batch_size=10, interval="1h", wait_ms=1500)
        self.assertEqual(r["exported"], 21)
        self.assertEqual([q["spans"] for q in self.c.requests], [10, 10, 1])
        self.assertNoViolations()

    def test_batches_by_time(self):
        r = self.drive(workers=2, requests=3, batch_size=512, interval="200ms", no_flush=True, wait_ms=5000)
        self.assertEqual(r["exported"], 18)
        self.assertEqual(r["queued"], 0)
        self.assertLess(self.elapsed, 4.0)
        self.assertNoViolations()

    def test_retry_after_503(self):
        self.c.fail_next(1, status=503, retry_after=1)
        r = self.drive(workers=1, requests=2, interval="50ms", wait_ms=8000)
        self.assertEqual(r["exported"], 6)
        self.assertEqual(r["errors"], 1)
        self.assertEqual(r["requests"], 2)
        self.assertEqual([q["status"] for q in self.c.requests], [503, 200])
        self.assertGreaterEqual(self.elapsed, 1.0)  # Retry-After: 1 was honoured
        self.assertIn("HTTP 503", r["last_error"])
        self.assertNoViolations()

    def test_timeout_then_retry(self):
        self.c.delay_next(1, seconds=1.5)
        r = self.drive(workers=1, requests=2, interval="50ms", timeout="300ms", wait_ms=8000)
        self.assertEqual(r["exported"], 6)
        self.assertEqual(r["errors"], 1)
        self.assertIn("timed out", r["last_error"])
        # the delayed request still lands after the retry: duplicates, as the protocol allows
        self.c.wait_requests(2, timeout=5)
        self.assertNoViolations(allow=("received twice",))

    def test_collector_refuses_connections(self):
        port = free_port()
        r = self.drive(endpoint="http://127.0.0.1:%d/v1/traces" % port, workers=1, requests=2, interval="50ms",
                       wait_ms=10000)
        self.assertEqual(r["exported"], 0)
        self.assertEqual(r["dropped_export"], 6)
        self.assertEqual(r["requests"], 3)  # one batch, three tries; nothing left for the final flush
        self.assertEqual(r["errors"], 3)
        self.assertLess(self.elapsed, 8.0)
        self.assertIn("failed", self.stderr)
        self.assertIn('sidecar_trace_spans_dropped_total{reason="export_failed"} 6', self.stderr)

    def test_bad_request_not_retried(self):
        self.c.fail_next(1, status=400)
        r = self.drive(workers=1, requests=2, interval="50ms", wait_ms=3000)
        self.assertEqual(r["exported"], 0)
        self.assertEqual(r["dropped_export"], 6)
        self.assertEqual(r["requests"], 1)
        self.assertEqual(len(self.c.requests), 1)

    def test_partial_success(self):
        self.c.partial_next(1, rejected=2)
        r = self.drive(workers=1, requests=2, interval="50ms")
        self.assertEqual(r["dropped_rejected"], 2)
        self.assertEqual(r["exported"], 4)
        self.assertIn("rejected 2 of 6", r["last_error"])
        self.assertIn('sidecar_trace_spans_dropped_total{reason="rejected"} 2', self.stderr)

    def test_full_queue_drops_and_never_blocks(self):
        # a collector that takes 0.5 s per request, queues of 16 spans, 3000 spans
        self.c.delay_next(4, seconds=0.5)
        r = self.drive(workers=2, requests=500, queue=16, batch_size=8, interval="20ms", wait_ms=4000)
        self.assertGreater(r["dropped_queue_full"], 0)
        self.assertEqual(r["recorded"] + r["dropped_queue_full"], 2 * 500 * 3)
        self.assertEqual(r["exported"] + r["dropped_export"], r["recorded"])
        # recording never waited on the exporter: about a microsecond a
        # request, far below one collector round trip (0.5 s)
        self.assertLess(r["producer_busy_us"] / 1000.0, 200, r)
        self.assertIn('sidecar_trace_spans_dropped_total{reason="queue_full"} %d' % r["dropped_queue_full"],
                      self.stderr)
        self.assertNoViolations()

    def test_ratio_zero_records_nothing(self):
        r = self.drive(workers=1, requests=50, ratio=0, interval="50ms", wait_ms=500)
        self.assertEqual(r["recorded"], 0)
        self.assertEqual(r["requests"], 0)
        self.assertEqual(self.c.requests, [])


class SidecarTracingConfigTest(SidecarTestCase):
    """The binary with a tracing: section, before the request path reports
    spans: it starts the exporter, shows the section and the metrics, keeps
    serving, exits cleanly; --check names every bad field."""

    def test_section_config_stats_and_exit(self):
        collector = OtlpCollector()
        collector.start()
        self.addCleanup(collector.stop)
        app = self.http1_peer("app")
        out = free_port()
        cfg = harness.base_config(free_port(), upstreams=[harness.upstream("app", "http1", out, [app.port])])
        cfg["tracing"] = {"endpoint": "http://127.0.0.1:%d" % collector.port, "sample_ratio": 0.5,
                          "propagation": {"in": ["w3c"], "out": ["w3c", "b3multi"]},
                          "force_header": "X-Debug-Trace", "batch_interval": "100ms", "queue_size": 64}
        sc = self.sidecar(cfg)
        t = sc.config_json()["tracing"]
        self.assertEqual(t["endpoint"], "http://127.0.0.1:%d/v1/traces" % collector.port)
        self.assertEqual(t["propagation"], {"in": ["w3c"], "out": ["w3c", "b3multi"]})
        self.assertEqual(t["force_header"], "x-debug-trace")
        self.assertEqual(t["sample_ratio"], 0.5)
        self.assertIn("tracing: spans to", sc.log_text())
        st = sc.stats()
        for name in ("sidecar_trace_spans_total", "sidecar_trace_spans_exported_total",
                     "sidecar_trace_export_requests_total", "sidecar_trace_export_errors_total",
                     "sidecar_trace_queue_spans"):
            self.assertEqual(st.value(name), 0, name)
        self.assertEqual(st.value("sidecar_trace_spans_dropped_total", reason="queue_full"), 0)
        from fault_client import http_call
        r = http_call(out, "/echo", [("traceparent", CALLER_TP)])
        self.assertEqual(r.code, 200)
        sc.stop()
        self.assertEqual(collector.violations, [])

    def test_no_section_no_metrics(self):
        sc = self.sidecar(harness.base_config(free_port()))
        self.assertFalse(sc.config_json()["tracing"]["enabled"])
        self.assertNotIn("sidecar_trace_", sc.stats().text)

    def test_check_names_bad_fields(self):
        cfg = harness.base_config(free_port())
        cfg["tracing"] = {"endpoint": "ftp://collector", "sample_ratio": 2,
                          "propagation": {"in": ["jaeger"]}, "force_header": "traceparent", "queue_size": 1}
        sc = harness.Sidecar(cfg, name="check")
        self.addCleanup(sc.cleanup)
        p = sc.check()
        out = (p.stdout + p.stderr).decode() if isinstance(p.stdout, bytes) else p.stdout + p.stderr
        self.assertEqual(p.returncode, 1, out)
        for field in ("tracing.endpoint", "tracing.sample_ratio", "tracing.propagation.in[0]",
                      "tracing.force_header", "tracing.queue_size"):
            self.assertIn(field, out)


class TwoSidecarTraceTest(SidecarTestCase):
    """app client -> sidecar A (outbound 'api', retries on 5xx) -> sidecar B
    (inbound) -> app B, whose first call fails with 503. Expected trace:

      A  CLIENT  request span (root)
      ├─ A CLIENT attempt 1 ── B SERVER ── B CLIENT attempt 1 (503)
      └─ A CLIENT attempt 2 ── B SERVER ── B CLIENT attempt 1 (200)
    """

    def test_retry_through_two_sidecars_is_one_trace(self):
        from fault_server import FaultLedger
        collector = OtlpCollector()
        collector.start()
        self.addCleanup(collector.stop)
        ledger = FaultLedger()
        app = self.class_fault_peer("http", "app-b", ledger)
        tracing = {"endpoint": collector.url, "batch_interval": "100ms", "sample_ratio": 1}
        b_in = free_port()
        cfg_b = harness.base_config(free_port(), inbound={"listen_port": b_in, "app_port": app.port}, name="api")
        cfg_b["tracing"] = tracing
        self.sidecar(cfg_b, name="b")
        a_out = free_port()
        ups = [harness.upstream("api", "http1", a_out, [b_in],
                                retries={"max_attempts": 2, "on": ["5xx"], "backoff": {"base": "5ms", "max": "10ms"},
                                         "budget": {"ratio": 1, "min_per_second": 1000}})]
        cfg_a = harness.base_config(free_port(), upstreams=ups, name="web")
        cfg_a["tracing"] = tracing
        self.sidecar(cfg_a, name="a")
        from fault_client import http_call
        out = http_call(a_out, "/items/1", [("x-fault-key", "trace-1"), ("x-fault-fail-first", "1")])
        self.assertEqual(out.code, 200)
        spans = collector.wait_spans(7, timeout=10)  # A: request + 2 attempts; B: 2 x (server + attempt)
        self.assertEqual(collector.violations, [])
        traces = collector.traces()
        self.assertEqual(len(traces), 1, "one connected trace")
        tid = next(iter(traces))
        problems, tree = collector.check_trace(tid)
        self.assertEqual(problems, [])
        by_id = {s["spanId"]: s for s in spans}
        root = by_id[tree[None][0]]
        self.assertEqual((root["kind"], root["resource"]["service.name"]), (3, "web"))
        a_attempts = [by_id[i] for i in tree[root["spanId"]]]
        self.assertEqual(sorted(a["attributes"]["sidecar.attempt"] for a in a_attempts), [1, 2])
        for att in a_attempts:
            (server_id,) = tree[att["spanId"]]
            server = by_id[server_id]
            self.assertEqual((server["kind"], server["resource"]["service.name"]), (2, "api"))
            (b_att,) = tree[server_id]
            self.assertEqual(by_id[b_att]["kind"], 3)
        failed = [a for a in a_attempts if a["attributes"]["sidecar.attempt"] == 1][0]
        self.assertEqual(failed["attributes"]["http.response.status_code"], 503)
        # the app saw the context of B's attempt, in both formats configured
        calls = ledger.calls(key="trace-1")
        self.assertEqual(len(calls), 2)
        for call in calls:
            self.assertTrue(call["headers"]["traceparent"].startswith("00-%s-" % tid))


class TracingOneSidecarTest(SidecarTestCase):
    """Propagation formats, invalid context, sampling, and the access log's
    trace fields, through one sidecar to an echoing app."""

    def start(self, **tracing):
        self.collector = OtlpCollector()
        self.collector.start()
        self.addCleanup(self.collector.stop)
        app = self.http1_peer("app")
        self.port = free_port()
        self.logdir = tempfile.mkdtemp(prefix="sc-it-tr-")
        self.addCleanup(shutil.rmtree, self.logdir, True)
        cfg = harness.base_config(free_port(), upstreams=[harness.upstream("app", "http1", self.port, [app.port])],
                                  name="web")
        cfg["tracing"] = dict({"endpoint": self.collector.url, "batch_interval": "100ms", "sample_ratio": 1}, **tracing)
        cfg["access_log"] = {"destination": "file", "path": os.path.join(self.logdir, "a.log"),
                             "flush_interval": "10ms"}
        self.sc = self.sidecar(cfg)

    def call(self, headers=()):
        from fault_client import http_call
        out = http_call(self.port, "/echo", list(headers))
        self.assertEqual(out.code, 200)
        return {k.lower(): v for k, v in json.loads(out.body)["headers"]}, [k.lower() for k, _ in json.loads(out.body)["headers"]]

    def test_b3_in_w3c_and_b3_out_access_log_ids(self):
        self.start(propagation={"in": ["w3c", "b3", "b3multi"], "out": ["w3c", "b3"]})
        tid, parent = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"
        seen, names = self.call([("b3", "%s-%s-1" % (tid, parent))])
        self.assertEqual(names.count("b3"), 1)
        self.assertRegex(seen["traceparent"], r"^00-%s-[0-9a-f]{16}-01$" % tid)
        attempt_id = seen["traceparent"].split("-")[2]
        b3 = seen["b3"].split("-")
        self.assertEqual((b3[0], b3[1], b3[2]), (tid, attempt_id, "1"))
        spans = self.collector.wait_spans(2, timeout=10)
        self.assertEqual(self.collector.violations, [])
        by_id = {s["spanId"]: s for s in spans}
        att = by_id[attempt_id]
        req = by_id[att["parentSpanId"]]
        self.assertEqual((req["traceId"], req["parentSpanId"], req["kind"]), (tid, parent, 3))
        self.assertEqual(b3[3], req["spanId"])
        self.assertEqual(att["attributes"]["sidecar.outcome"], "ok")
        self.assertEqual(req["attributes"]["sidecar.request_id"], seen["x-request-id"])
        problems, _ = self.collector.check_trace(tid, remote_root=True)
        self.assertEqual(problems, [])
        with open(os.path.join(self.logdir, "a.log")) as f:
            (line,) = [json.loads(l) for l in f.read().splitlines()]
        self.assertEqual((line["trace_id"], line["span_id"]), (tid, req["spanId"]))

    def test_invalid_traceparent_starts_a_new_trace(self):
        self.start()
        bad = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz"
        seen, names = self.call([("traceparent", bad), ("tracestate", "k=v")])
        self.assertEqual(names.count("traceparent"), 1)
        self.assertNotIn("tracestate", seen)
        tid = seen["traceparent"].split("-")[1]
        self.assertNotEqual(tid, "4bf92f3577b34da6a3ce929d0e0e4736")
        spans = self.collector.wait_spans(2, timeout=10, trace_id=tid)
        root = [s for s in spans if not s.get("parentSpanId")]
        self.assertEqual(len(root), 1)
        self.assertEqual(self.collector.check_trace(tid)[0], [])

    def test_request_id_after_trace_headers_is_kept(self):
        # The trace headers are taken out of the request in the same pass that
        # finds x-request-id: the caller's ID must survive the fields after it
        # moving up (a header after it once took its place).
        self.start()
        tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        seen, names = self.call([("traceparent", tp), ("tracestate", "k=v"), ("x-request-id", "caller-id-1"),
                                 ("x-after", "ok-1"), ("x-later", "ok-2")])
        self.assertEqual(seen["x-request-id"], "caller-id-1")
        self.assertEqual(names.count("x-request-id"), 1)
        self.assertEqual((seen["x-after"], seen["x-later"]), ("ok-1", "ok-2"))
        spans = self.collector.wait_spans(2, timeout=10, trace_id="4bf92f3577b34da6a3ce929d0e0e4736")
        req = [s for s in spans if s["parentSpanId"] == "00f067aa0ba902b7"]
        self.assertEqual(len(req), 1)
        self.assertEqual(req[0]["attributes"]["sidecar.request_id"], "caller-id-1")

    def test_sampling_ratio_zero_follows_the_parent(self):
        self.start(sample_ratio=0)
        seen, _ = self.call()
        self.assertRegex(seen["traceparent"], r"-00$")  # not sampled, still a new span ID onward
        seen, _ = self.call([("traceparent", CALLER_TP)])  # the caller sampled: recorded
        self.assertRegex(seen["traceparent"], r"^00-4bf92f3577b34da6a3ce929d0e0e4736-[0-9a-f]{16}-01$")
        self.collector.wait_spans(2, timeout=10)
        time.sleep(0.5)
        self.assertEqual({s["traceId"] for s in self.collector.get_spans()}, {"4bf92f3577b34da6a3ce929d0e0e4736"})

    def test_sampling_ratio_half(self):
        self.start(sample_ratio=0.5)
        sampled = 0
        for _ in range(40):
            seen, _ = self.call()
            sampled += seen["traceparent"].endswith("-01")
        self.assertTrue(5 <= sampled <= 35, sampled)
        self.collector.wait_spans(2 * sampled, timeout=10)
        time.sleep(0.5)
        self.assertEqual(len(self.collector.traces()), sampled)


if __name__ == "__main__":
    unittest.main()

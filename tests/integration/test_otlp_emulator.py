"""Tests of the OTLP/HTTP JSON collector emulator (tests/otlp/otlp_collector_emulator.py).

Run from tests/integration:  /usr/bin/python3 -m unittest -v test_otlp_emulator
Each test posts hand-written requests (valid ones, and each kind of mistake
the emulator must catch) over real HTTP on 127.0.0.1 and checks the answer,
the violations recorded and the spans kept. Every wait is bounded.
"""

import copy
import gzip
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.normpath(os.path.join(HERE, "..", "otlp")))

from otlp_collector_emulator import OtlpCollector  # noqa: E402

TID = "4bf92f3577b34da6a3ce929d0e0e4736"


def now_ns():
    return time.time_ns()


def span(span_id, parent=None, name="GET", kind=2, start=None, end=None, **kw):
    start = now_ns() if start is None else start
    s = {"traceId": kw.pop("trace_id", TID), "spanId": span_id, "name": name, "kind": kind,
         "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 1000 if end is None else end),
         "attributes": [{"key": "http.request.method", "value": {"stringValue": "GET"}},
                        {"key": "http.response.status_code", "value": {"intValue": "200"}}],
         "status": {"code": 0}}
    if parent:
        s["parentSpanId"] = parent
    s.update(kw)
    return s


def request(spans, resource=None):
    res = resource if resource is not None else [
        {"key": "service.name", "value": {"stringValue": "web"}},
        {"key": "service.instance.id", "value": {"stringValue": "web-1"}}]
    return {"resourceSpans": [{"resource": {"attributes": res},
                               "scopeSpans": [{"scope": {"name": "t"}, "spans": spans}]}]}


class EmulatorTest(unittest.TestCase):
    def setUp(self):
        self.c = OtlpCollector()
        self.c.start()

    def tearDown(self):
        self.c.stop()

    def post(self, body, ctype="application/json", path="/v1/traces", headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.c.port, timeout=10)
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        h = {"Content-Type": ctype}
        h.update(headers or {})
        conn.request("POST", path, raw, h)
        r = conn.getresponse()
        data = r.read()
        conn.close()
        return r.status, dict(r.getheaders()), json.loads(data) if data else None

    def assert_violation(self, spans_or_doc, needle, resource=None):
        doc = spans_or_doc if isinstance(spans_or_doc, dict) else request(spans_or_doc, resource)
        before = len(self.c.violations)
        st, _, body = self.post(doc)
        new = self.c.violations[before:]
        self.assertTrue(any(needle in v for v in new), "no violation with %r in %r" % (needle, new))
        return st, body

    def test_valid_request_kept(self):
        t0 = now_ns()
        st, hdrs, body = self.post(request([span("00f067aa0ba902b7", start=t0, end=t0 + 1000),
                                            span("b9c7c989f97918e1", "00f067aa0ba902b7", kind=3, start=t0 + 10,
                                                 end=t0 + 900)]))
        self.assertEqual(st, 200)
        self.assertEqual(hdrs["Content-Type"], "application/json")
        self.assertEqual(body, {})
        self.assertEqual(self.c.violations, [])
        spans = self.c.wait_spans(2, timeout=2)
        self.assertEqual(spans[0]["resource"]["service.name"], "web")
        self.assertEqual(spans[1]["attributes"]["http.response.status_code"], 200)
        problems, tree = self.c.check_trace(TID)
        self.assertEqual(problems, [])
        self.assertEqual(tree[None], ["00f067aa0ba902b7"])
        self.assertEqual(tree["00f067aa0ba902b7"], ["b9c7c989f97918e1"])
        # upper-case hex is allowed (the spec says case-insensitive); kept lower-case
        st, _, _ = self.post(request([span("ABCDEF0123456789", trace_id=TID.upper())]))
        self.assertEqual(st, 200)
        self.assertEqual(self.c.get_spans(trace_id=TID)[-1]["spanId"], "abcdef0123456789")

    def test_id_formats(self):
        import base64
        b64 = base64.b64encode(bytes.fromhex(TID)).decode()
        st, body = self.assert_violation([span("00f067aa0ba902b7", trace_id=b64)], "not base64")
        self.assertEqual(st, 200)
        self.assertEqual(body["partialSuccess"]["rejectedSpans"], "1")
        self.assert_violation([span("00000000000000000")], "hex characters")
        self.assert_violation([span("0000000000000000")], "all zeros")
        self.assert_violation([span("00f067aa0ba902b7", trace_id="0" * 32)], "all zeros")
        self.assert_violation([span("00f067aa0ba902b7", parent="xyz")], "parentSpanId")
        self.assert_violation([span("00f067aa0ba902b7", trace_id=12)], "hex string")
        self.assertEqual(self.c.get_spans(), [])

    def test_enums_times_status_flags(self):
        self.assert_violation([span("00f067aa0ba902b7", kind="SPAN_KIND_SERVER")], "enum values are integers")
        self.assert_violation([span("00f067aa0ba902b7", kind=9)], "0..5")
        s = span("00f067aa0ba902b7")
        s["startTimeUnixNano"] = int(s["startTimeUnixNano"])
        self.assert_violation([s], "decimal strings")
        self.assert_violation([span("00f067aa0ba902b7", start=now_ns(), end=now_ns() - 10**9)], "before start")
        self.assert_violation([span("00f067aa0ba902b7", start=1000, end=2000)], "within a day")
        self.assert_violation([span("00f067aa0ba902b7", startTimeUnixNano="12x")], "64-bit integer")
        self.assert_violation([span("00f067aa0ba902b7", status={"code": 1, "message": "why"})], "only with code 2")
        self.assert_violation([span("00f067aa0ba902b7", status={"code": "STATUS_CODE_ERROR"})], "integers")
        self.assert_violation([span("00f067aa0ba902b7", status={"code": 3})], "expected 0")
        self.assert_violation([span("00f067aa0ba902b7", flags=0x1000)], "reserved bits")
        self.assert_violation([span("00f067aa0ba902b7", name="")], "name")
        t0 = now_ns()
        ev = [{"timeUnixNano": str(t0 + 10**9), "name": "late"}]
        self.assert_violation([span("00f067aa0ba902b7", start=t0, end=t0 + 1000, events=ev)], "outside its span")
        # with the fixture's extra strictness off, numbers are accepted
        lenient = OtlpCollector(strict_int64=False)
        lenient.start()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", lenient.port, timeout=10)
            conn.request("POST", "/v1/traces", json.dumps(request([s])), {"Content-Type": "application/json"})
            self.assertEqual(conn.getresponse().status, 200)
            self.assertEqual(lenient.violations, [])
        finally:
            lenient.stop()

    def test_attributes_and_keys(self):
        s = span("00f067aa0ba902b7")
        s["attributes"].append({"key": "http.request.method", "value": {"stringValue": "POST"}})
        self.assert_violation([s], "appears twice")
        s = span("00f067aa0ba902b7", attributes=[{"key": "a", "value": {"stringValue": "x", "intValue": "1"}}])
        self.assert_violation([s], "more than one value")
        s = span("00f067aa0ba902b7", attributes=[{"key": "a", "value": {"intValue": "1.5"}}])
        self.assert_violation([s], "64-bit integer")
        s = span("00f067aa0ba902b7", attributes=[{"key": "", "value": {"stringValue": "x"}}])
        self.assert_violation([s], "non-empty string")
        s = span("00f067aa0ba902b7", attributes=[{"key": "a", "value": {"boolValue": "true"}}])
        self.assert_violation([s], "true or false")
        s = span("00f067aa0ba902b7")
        s["trace_id"] = s.pop("traceId")
        self.assert_violation([s], "lowerCamelCase")
        # nested values are fine
        s = span("00f067aa0ba902b7", attributes=[
            {"key": "l", "value": {"arrayValue": {"values": [{"stringValue": "a"}, {"intValue": "2"}]}}},
            {"key": "m", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"doubleValue": 1.5}}]}}},
            {"key": "b", "value": {"bytesValue": "AAE="}}, {"key": "e", "value": {}}])
        st, _, body = self.post(request([s]))
        self.assertEqual((st, body), (200, {}))

    def test_resource_required(self):
        st, body = self.assert_violation(
            [span("00f067aa0ba902b7"), span("b9c7c989f97918e1")],
            "service.instance.id is required",
            resource=[{"key": "service.name", "value": {"stringValue": "web"}}])
        self.assertEqual(body["partialSuccess"]["rejectedSpans"], "2")
        self.assert_violation([span("00f067aa0ba902b7")], "service.name is required", resource=[])

    def test_duplicates_and_empty(self):
        self.post(request([span("00f067aa0ba902b7")]))
        st, body = self.assert_violation([span("00f067aa0ba902b7")], "received twice")
        self.assertEqual(body["partialSuccess"]["rejectedSpans"], "1")
        st, body = self.assert_violation({"resourceSpans": []}, "empty envelope")
        self.assertEqual(st, 200)
        self.assertEqual(len(self.c.get_spans()), 1)

    def test_transport(self):
        st, _, body = self.post(b"{not json")
        self.assertEqual(st, 400)
        self.assertIn("not a JSON document", body["message"])
        st, _, _ = self.post(b"\x0a\x02", ctype="application/x-protobuf")
        self.assertEqual(st, 415)
        self.assertTrue(any("application/json" in v for v in self.c.violations))
        st, _, _ = self.post(request([span("00f067aa0ba902b7")]), path="/v1/metrics")
        self.assertEqual(st, 404)
        st, _, _ = self.post([1, 2])
        self.assertEqual(st, 400)
        raw = gzip.compress(json.dumps(request([span("1111111111111111")])).encode())
        st, _, body = self.post(raw, headers={"Content-Encoding": "gzip"})
        self.assertEqual((st, body), (200, {}))
        st, _, _ = self.post(b"x" * (21 << 20))
        self.assertEqual(st, 413)

    def test_faults(self):
        self.c.fail_next(1, status=503, retry_after=2)
        st, hdrs, body = self.post(request([span("00f067aa0ba902b7")]))
        self.assertEqual(st, 503)
        self.assertEqual(hdrs["Retry-After"], "2")
        self.assertEqual(self.c.get_spans(), [])
        self.c.partial_next(1, rejected=1)
        st, _, body = self.post(request([span("00f067aa0ba902b7"), span("b9c7c989f97918e1")]))
        self.assertEqual(body["partialSuccess"]["rejectedSpans"], "1")
        self.assertEqual(len(self.c.get_spans()), 1)
        self.c.delay_next(1, seconds=0.3)
        t0 = time.monotonic()
        st, _, _ = self.post(request([span("2222222222222222")]))
        self.assertEqual(st, 200)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)
        self.assertEqual([r["status"] for r in self.c.requests], [503, 200, 200])

    def test_check_trace(self):
        t0 = now_ns()
        a = span("aaaaaaaaaaaaaaaa", start=t0, end=t0 + 10000)
        b = span("bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa", start=t0 + 100, end=t0 + 200)
        orphan = span("cccccccccccccccc", "dddddddddddddddd", start=t0 + 100, end=t0 + 200)
        late = span("eeeeeeeeeeeeeeee", "aaaaaaaaaaaaaaaa", start=t0 + 100, end=t0 + 20000)
        self.post(request([a, b, orphan, late]))
        problems, _ = self.c.check_trace(TID)
        self.assertTrue(any("dddddddddddddddd is not in the trace" in p for p in problems), problems)
        self.assertTrue(any("eeeeeeeeeeeeeeee" in p and "not within its parent" in p for p in problems), problems)
        # a remote root is allowed when asked: then two roots
        problems, tree = self.c.check_trace(TID, remote_root=True)
        self.assertTrue(any("2 roots" in p for p in problems), problems)
        # across service instances a child may stick out by the tolerance
        self.c.reset()
        other = [{"key": "service.name", "value": {"stringValue": "api"}},
                 {"key": "service.instance.id", "value": {"stringValue": "api-1"}}]
        root = span("aaaaaaaaaaaaaaaa", start=t0, end=t0 + 10**6)
        child = span("bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa", start=t0 - 10**6, end=t0 + 2 * 10**6)
        self.post(request([root]))
        self.post(request([child], resource=other))
        problems, tree = self.c.check_trace(TID)
        self.assertEqual(problems, [])
        self.assertEqual(tree["aaaaaaaaaaaaaaaa"], ["bbbbbbbbbbbbbbbb"])

    def test_standalone_process(self):
        d = tempfile.mkdtemp()
        pf = os.path.join(d, "port")
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "..", "otlp", "otlp_collector_emulator.py"),
                              "--listen", "127.0.0.1:0", "--port-file", pf], stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not (os.path.exists(pf) and open(pf).read().strip()):
                self.assertLess(time.monotonic(), deadline, "the emulator did not start")
                time.sleep(0.05)
            port = int(open(pf).read())
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("POST", "/_emulator/fault", json.dumps({"kind": "fail", "status": 429}))
            self.assertEqual(conn.getresponse().read(), b"{}")
            doc = json.dumps(request([span("00f067aa0ba902b7")]))
            conn.request("POST", "/v1/traces", doc, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 429)
            conn.request("POST", "/v1/traces", doc, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            conn.request("GET", "/_emulator/spans")
            spans = json.loads(conn.getresponse().read())
            self.assertEqual([s["spanId"] for s in spans], ["00f067aa0ba902b7"])
            conn.request("GET", "/_emulator/violations")
            self.assertEqual(json.loads(conn.getresponse().read()), [])
            conn.close()
        finally:
            p.terminate()
            p.wait(10)


if __name__ == "__main__":
    unittest.main()

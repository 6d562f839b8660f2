#!/usr/bin/env python3
"""An OTLP/HTTP collector for traces, JSON encoding only: a test fixture.

It receives what an OpenTelemetry exporter sends to /v1/traces and checks
it against the OpenTelemetry protocol specification (OTLP/HTTP, "JSON
Protobuf Encoding") and the trace data model, so a test can assert that the
sidecar's exporter writes what a real collector accepts, and can look at
the spans it received.

Checked on every request (a failed check is a *violation*, listed with the
JSON path it concerns):
  - POST to the traces path with Content-Type application/json (gzip
    Content-Encoding accepted), at most 20 MiB;
  - an ExportTraceServiceRequest: resourceSpans / scopeSpans / spans with
    lowerCamelCase keys (the proto field names are not valid keys);
  - every resource carries service.name and service.instance.id as
    non-empty strings;
  - traceId 32 and spanId / parentSpanId 16 hex characters (the spec says
    case-insensitive hex, not base64), not all zero; (traceId, spanId)
    unique;
  - name non-empty; kind an integer 0..5 (enum values are integers in
    OTLP/JSON, names are not allowed); status.code an integer 0..2, and a
    status message only with code 2 (ERROR);
  - times (startTimeUnixNano, endTimeUnixNano, event timeUnixNano) are
    64-bit integers, end >= start, events within their span; with
    strict_int64 (default) 64-bit integers must be decimal strings, as the
    protobuf JSON mapping writes them (decoders must also accept numbers;
    this fixture checks the writer); with check_clock (default) times lie
    within a day of the collector's clock (catches monotonic-vs-Unix
    mistakes);
  - attributes: a list of {key, value} with unique non-empty keys and an
    AnyValue holding one of stringValue, boolValue, intValue, doubleValue,
    arrayValue, kvlistValue, bytesValue of the right JSON type;
  - flags: an integer with no bits above bit 9 (reserved);
  - no empty envelope (a request without spans: senders SHOULD NOT).

A request that is not JSON or not an ExportTraceServiceRequest gets 400
with a Status body; otherwise spans with violations are rejected through
partialSuccess (rejectedSpans, errorMessage) and the others are kept.

Per trace, check_trace() checks what needs all of a trace's spans: every
parentSpanId resolves within the trace (except, when allowed, one remote
root), there is exactly one root, a child lies within its parent in time
(strictly between spans of one service instance; across instances with a
tolerance, since clocks of processes differ), no cycles.

Faults for exporter tests: fail_next(n, status, retry_after), delay_next(n,
seconds), partial_next(n, rejected).

Use in-process:
    c = OtlpCollector(); c.start(); url = c.url ... c.wait_spans(3); c.stop()
or as a process:
    python3 otlp_collector_emulator.py --listen 127.0.0.1:0 --port-file /tmp/p
with a control API under /_emulator/: GET spans, GET violations, GET
requests, POST reset, POST fault ({"kind": "fail"|"delay"|"partial", ...}).
Only the Python standard library is needed.
"""

import argparse
import base64
import gzip
import http.server
import json
import re
import socketserver
import sys
import threading
import time

MAX_BODY = 20 << 20
HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
INT64_RE = re.compile(r"^-?[0-9]+$")
UINT64_MAX = (1 << 64) - 1
SNAKE_KEYS = {
    "resource_spans", "scope_spans", "trace_id", "span_id", "parent_span_id", "trace_state",
    "start_time_unix_nano", "end_time_unix_nano", "time_unix_nano", "dropped_attributes_count",
    "dropped_events_count", "dropped_links_count", "schema_url", "string_value", "int_value",
    "bool_value", "double_value", "array_value", "kvlist_value", "bytes_value",
}
ANY_VALUE_KINDS = ("stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue", "bytesValue")
DAY_NS = 86400 * 10**9


class Violations:
    """Problems found in one request, each 'path: message'."""

    def __init__(self):
        self.items = []

    def add(self, path, msg):
        self.items.append("%s: %s" % (path, msg))

    def __bool__(self):
        return bool(self.items)


def _snake(obj, path, v):
    if isinstance(obj, dict):
        for k in obj:
            if k in SNAKE_KEYS:
                v.add(path, "key %r is a proto field name; OTLP/JSON keys are lowerCamelCase" % k)


def _hex_id(value, nbytes, path, v, required=True):
    """Returns the lower-case ID, or None (a violation is recorded when it is bad)."""
    if value is None or value == "":
        if required:
            v.add(path, "missing")
        return None
    if not isinstance(value, str):
        v.add(path, "expected a hex string, got %s" % type(value).__name__)
        return None
    if len(value) != 2 * nbytes or not HEX_RE.match(value):
        v.add(path, "expected %d hex characters (not base64), got %r" % (2 * nbytes, value[:80]))
        return None
    if set(value) == {"0"}:
        v.add(path, "all zeros is an invalid ID")
        return None
    return value.lower()


class Collector:
    """State and checks; the HTTP server is in OtlpCollector."""

    def __init__(self, path="/v1/traces", strict_int64=True, check_clock=True, cross_process_tolerance_ms=50.0):
        self.path = path
        self.strict_int64 = strict_int64
        self.check_clock = check_clock
        self.cross_tol_ns = int(cross_process_tolerance_ms * 1e6)
        self.lock = threading.Condition()
        self.reset()

    def reset(self):
        with self.lock:
            self.spans = []             # dicts, see _span()
            self.seen = set()
            self.requests = []          # {status, spans, rejected, bytes, headers, violations}
            self.violations = []        # every violation, "request N: path: msg"
            self.faults = []            # queued faults, first applies next
            self.lock.notify_all()

    # ---- faults ----
    def fail_next(self, n=1, status=503, retry_after=None, body=None):
        with self.lock:
            for _ in range(n):
                self.faults.append({"kind": "fail", "status": status, "retry_after": retry_after, "body": body})

    def delay_next(self, n=1, seconds=1.0):
        with self.lock:
            for _ in range(n):
                self.faults.append({"kind": "delay", "seconds": seconds})

    def partial_next(self, n=1, rejected=1, message="rejected by the emulator"):
        with self.lock:
            for _ in range(n):
                self.faults.append({"kind": "partial", "rejected": rejected, "message": message})

    def _take_fault(self):
        with self.lock:
            return self.faults.pop(0) if self.faults else None

    # ---- value checks ----
    def _int64(self, value, path, v, unsigned=True):
        """Reads a 64-bit integer field; None when bad."""
        if isinstance(value, bool):
            v.add(path, "expected a 64-bit integer, got a boolean")
            return None
        if isinstance(value, int):
            if self.strict_int64:
                v.add(path, "64-bit integers are decimal strings in the JSON encoding, got the number %d" % value)
            n = value
        elif isinstance(value, str) and INT64_RE.match(value):
            n = int(value)
        else:
            v.add(path, "expected a 64-bit integer, got %r" % (value,))
            return None
        if unsigned and not 0 <= n <= UINT64_MAX or not unsigned and not -(1 << 63) <= n < (1 << 63):
            v.add(path, "out of range: %d" % n)
            return None
        return n

    def _uint32(self, value, path, v):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            v.add(path, "expected a 32-bit unsigned integer (a number), got %r" % (value,))
            return None
        return value

    def _any_value(self, val, path, v, depth=0):
        if not isinstance(val, dict):
            v.add(path, "an AnyValue must be an object")
            return None
        _snake(val, path, v)
        kinds = [k for k in ANY_VALUE_KINDS if k in val]
        if len(kinds) > 1:
            v.add(path, "more than one value: %s" % ", ".join(kinds))
            return None
        if not kinds:
            return None  # an empty AnyValue is allowed
        k = kinds[0]
        x = val[k]
        p = path + "." + k
        if k == "stringValue":
            if not isinstance(x, str):
                v.add(p, "expected a string")
            return x
        if k == "boolValue":
            if not isinstance(x, bool):
                v.add(p, "expected true or false")
            return x
        if k == "intValue":
            return self._int64(x, p, v, unsigned=False)
        if k == "doubleValue":
            if isinstance(x, bool) or not isinstance(x, (int, float, str)):
                v.add(p, "expected a number")
            return x
        if k == "bytesValue":
            try:
                return base64.b64decode(x, validate=True)
            except Exception:
                v.add(p, "expected base64")
                return None
        if depth > 16:
            v.add(p, "nested too deeply")
            return None
        if k == "arrayValue":
            vals = x.get("values", []) if isinstance(x, dict) else None
            if not isinstance(vals, list):
                v.add(p, "expected {values: [...]}")
                return None
            return [self._any_value(e, "%s.values[%d]" % (p, i), v, depth + 1) for i, e in enumerate(vals)]
        vals = x.get("values", []) if isinstance(x, dict) else None
        if not isinstance(vals, list):
            v.add(p, "expected {values: [...]}")
            return None
        return self._attributes(vals, p + ".values", v, depth + 1)

    def _attributes(self, attrs, path, v, depth=0):
        out = {}
        if attrs is None:
            return out
        if not isinstance(attrs, list):
            v.add(path, "expected a list of {key, value}")
            return out
        for i, a in enumerate(attrs):
            p = "%s[%d]" % (path, i)
            if not isinstance(a, dict):
                v.add(p, "expected {key, value}")
                continue
            key = a.get("key")
            if not isinstance(key, str) or not key:
                v.add(p + ".key", "a non-empty string is required")
                continue
            if key in out:
                v.add(p + ".key", "%r appears twice (keys are unique)" % key)
            out[key] = self._any_value(a.get("value", {}), p + ".value", v, depth)
        return out

    def _count(self, obj, key, path, v):
        if key in obj:
            self._uint32(obj[key], path + "." + key, v)

    # ---- a span ----
    def _span(self, s, path, v, resource, scope, now_ns):
        if not isinstance(s, dict):
            v.add(path, "expected an object")
            return None
        _snake(s, path, v)
        tid = _hex_id(s.get("traceId"), 16, path + ".traceId", v)
        sid = _hex_id(s.get("spanId"), 8, path + ".spanId", v)
        pid = _hex_id(s.get("parentSpanId"), 8, path + ".parentSpanId", v, required=False)
        name = s.get("name")
        if not isinstance(name, str) or not name:
            v.add(path + ".name", "a non-empty string is required")
        kind = s.get("kind", 0)
        if isinstance(kind, str):
            v.add(path + ".kind", "enum values are integers in OTLP/JSON, got the name %r" % kind)
        elif isinstance(kind, bool) or not isinstance(kind, int) or not 0 <= kind <= 5:
            v.add(path + ".kind", "expected an integer 0..5, got %r" % (kind,))
        ts = s.get("traceState", "")
        if not isinstance(ts, str):
            v.add(path + ".traceState", "expected a string")
        start = self._int64(s.get("startTimeUnixNano"), path + ".startTimeUnixNano", v)
        end = self._int64(s.get("endTimeUnixNano"), path + ".endTimeUnixNano", v)
        if start is not None and end is not None:
            if start == 0:
                v.add(path + ".startTimeUnixNano", "required (0 means unset)")
            if end < start:
                v.add(path + ".endTimeUnixNano", "end %d is before start %d" % (end, start))
            if self.check_clock and start and abs(start - now_ns) > DAY_NS:
                v.add(path + ".startTimeUnixNano",
                      "%d is not within a day of the collector's clock %d (not Unix nanoseconds?)" % (start, now_ns))
        if "flags" in s:
            f = self._uint32(s["flags"], path + ".flags", v)
            if f is not None and f & ~0x3FF:
                v.add(path + ".flags", "reserved bits set: 0x%x" % f)
        attrs = self._attributes(s.get("attributes"), path + ".attributes", v)
        self._count(s, "droppedAttributesCount", path, v)
        self._count(s, "droppedEventsCount", path, v)
        self._count(s, "droppedLinksCount", path, v)
        events = []
        evs = s.get("events", [])
        if not isinstance(evs, list):
            v.add(path + ".events", "expected a list")
            evs = []
        for i, e in enumerate(evs):
            p = "%s.events[%d]" % (path, i)
            if not isinstance(e, dict):
                v.add(p, "expected an object")
                continue
            _snake(e, p, v)
            t = self._int64(e.get("timeUnixNano"), p + ".timeUnixNano", v)
            en = e.get("name")
            if not isinstance(en, str) or not en:
                v.add(p + ".name", "a non-empty string is required")
            if t is not None and start is not None and end is not None and not start <= t <= end:
                v.add(p + ".timeUnixNano", "event at %d outside its span [%d, %d]" % (t, start, end))
            self._count(e, "droppedAttributesCount", p, v)
            events.append({"time": t, "name": en, "attributes": self._attributes(e.get("attributes"), p + ".attributes", v)})
        links = s.get("links", [])
        if not isinstance(links, list):
            v.add(path + ".links", "expected a list")
            links = []
        for i, ln in enumerate(links):
            p = "%s.links[%d]" % (path, i)
            if isinstance(ln, dict):
                _hex_id(ln.get("traceId"), 16, p + ".traceId", v)
                _hex_id(ln.get("spanId"), 8, p + ".spanId", v)
            else:
                v.add(p, "expected an object")
        status = s.get("status", {})
        code, message = 0, ""
        if not isinstance(status, dict):
            v.add(path + ".status", "expected an object")
        else:
            code = status.get("code", 0)
            message = status.get("message", "")
            if isinstance(code, str):
                v.add(path + ".status.code", "enum values are integers in OTLP/JSON, got the name %r" % code)
            elif isinstance(code, bool) or not isinstance(code, int) or code not in (0, 1, 2):
                v.add(path + ".status.code", "expected 0 (unset), 1 (ok) or 2 (error), got %r" % (code,))
            if not isinstance(message, str):
                v.add(path + ".status.message", "expected a string")
            elif message and code != 2:
                v.add(path + ".status.message", "a description goes only with code 2 (ERROR)")
        return {
            "traceId": tid, "spanId": sid, "parentSpanId": pid, "name": name, "kind": kind,
            "start": start, "end": end, "attributes": attrs, "events": events, "flags": s.get("flags"),
            "status": {"code": code, "message": message}, "traceState": ts,
            "resource": resource, "scope": scope,
        }

    # ---- a request ----
    def export(self, doc):
        """Checks an ExportTraceServiceRequest (parsed JSON). Returns (http
        status, response object, spans kept, rejected, violations)."""
        now_ns = time.time_ns()
        v = Violations()
        if not isinstance(doc, dict):
            v.add("$", "expected an ExportTraceServiceRequest object")
            return 400, {"code": 3, "message": "; ".join(v.items)}, [], 0, v
        _snake(doc, "$", v)
        rss = doc.get("resourceSpans", [])
        if not isinstance(rss, list):
            v.add("$.resourceSpans", "expected a list")
            return 400, {"code": 3, "message": "; ".join(v.items)}, [], 0, v
        kept, rejected, total = [], 0, 0
        for ri, rs in enumerate(rss):
            rp = "$.resourceSpans[%d]" % ri
            if not isinstance(rs, dict):
                v.add(rp, "expected an object")
                continue
            _snake(rs, rp, v)
            rv = Violations()
            res = rs.get("resource", {})
            rattrs = self._attributes(res.get("attributes") if isinstance(res, dict) else None,
                                      rp + ".resource.attributes", rv)
            for req in ("service.name", "service.instance.id"):
                if not isinstance(rattrs.get(req), str) or not rattrs.get(req):
                    rv.add(rp + ".resource.attributes", "%s is required (a non-empty string)" % req)
            v.items.extend(rv.items)
            sss = rs.get("scopeSpans", [])
            if not isinstance(sss, list):
                v.add(rp + ".scopeSpans", "expected a list")
                continue
            for si, ss in enumerate(sss):
                sp = "%s.scopeSpans[%d]" % (rp, si)
                if not isinstance(ss, dict):
                    v.add(sp, "expected an object")
                    continue
                _snake(ss, sp, v)
                scope = ss.get("scope", {})
                if not isinstance(scope, dict) or not isinstance(scope.get("name", ""), str):
                    v.add(sp + ".scope", "expected {name, version}")
                    scope = {}
                spans = ss.get("spans", [])
                if not isinstance(spans, list):
                    v.add(sp + ".spans", "expected a list")
                    continue
                for i, s in enumerate(spans):
                    total += 1
                    sv = Violations()
                    rec = self._span(s, "%s.spans[%d]" % (sp, i), sv, rattrs, scope, now_ns)
                    if rec and rec["traceId"] and rec["spanId"]:
                        key = (rec["traceId"], rec["spanId"])
                        with self.lock:
                            dup = key in self.seen or any((k["traceId"], k["spanId"]) == key for k in kept)
                        if dup:
                            sv.add("%s.spans[%d]" % (sp, i), "span %s/%s received twice" % key)
                    if sv or rv or not rec:
                        rejected += 1
                        v.items.extend(sv.items)
                    else:
                        kept.append(rec)
        if total == 0:
            v.add("$", "an empty envelope: the request carries no span (senders SHOULD NOT send one)")
        resp = {}
        if rejected:
            resp = {"partialSuccess": {"rejectedSpans": str(rejected), "errorMessage": "; ".join(v.items)[:2000]}}
        return 200, resp, kept, rejected, v

    def record(self, status, kept, rejected, nbytes, headers, violations):
        with self.lock:
            n = len(self.requests)
            self.requests.append({"status": status, "spans": len(kept), "rejected": rejected, "bytes": nbytes,
                                  "headers": headers, "violations": list(violations.items)})
            self.violations.extend("request %d: %s" % (n, x) for x in violations.items)
            for rec in kept:
                self.seen.add((rec["traceId"], rec["spanId"]))
                self.spans.append(rec)
            self.lock.notify_all()

    # ---- queries ----
    def get_spans(self, trace_id=None, name=None):
        with self.lock:
            return [s for s in self.spans
                    if (trace_id is None or s["traceId"] == trace_id.lower()) and (name is None or s["name"] == name)]

    def traces(self):
        out = {}
        for s in self.get_spans():
            out.setdefault(s["traceId"], []).append(s)
        return out

    def wait_spans(self, n, timeout=10.0, trace_id=None):
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                have = [s for s in self.spans if trace_id is None or s["traceId"] == trace_id]
                if len(have) >= n:
                    return have
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("collector: %d span(s) after %.1fs, wanted %d" % (len(have), timeout, n))
                self.lock.wait(left)

    def wait_requests(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.requests) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("collector: %d request(s) after %.1fs, wanted %d"
                                         % (len(self.requests), timeout, n))
                self.lock.wait(left)
            return list(self.requests)

    def check_trace(self, trace_id, remote_root=False):
        """Checks one trace's links and nesting. Returns (problems, tree),
        tree mapping spanId -> list of child spanIds, with key None for the
        root(s). remote_root: the root's parent may be a span this collector
        never saw (a caller outside the test)."""
        spans = self.get_spans(trace_id=trace_id)
        problems = []
        by_id = {}
        for s in spans:
            by_id[s["spanId"]] = s
        tree = {None: []}
        for s in spans:
            p = s["parentSpanId"]
            if p is None:
                tree[None].append(s["spanId"])
            elif p in by_id:
                tree.setdefault(p, []).append(s["spanId"])
            elif remote_root:
                tree[None].append(s["spanId"])
            else:
                problems.append("span %s (%s): parent %s is not in the trace" % (s["spanId"], s["name"], p))
        if len(tree[None]) != 1:
            problems.append("%d roots (%s), expected 1" % (len(tree[None]), ", ".join(tree[None])))
        for s in spans:  # cycles: walking up must end
            seen, cur = set(), s
            while cur and cur["parentSpanId"] in by_id:
                if cur["spanId"] in seen:
                    problems.append("cycle through span %s" % s["spanId"])
                    break
                seen.add(cur["spanId"])
                cur = by_id[cur["parentSpanId"]]
        for s in spans:
            p = by_id.get(s["parentSpanId"]) if s["parentSpanId"] else None
            if not p or None in (s["start"], s["end"], p["start"], p["end"]):
                continue
            same = s["resource"].get("service.instance.id") == p["resource"].get("service.instance.id")
            tol = 0 if same else self.cross_tol_ns
            if s["start"] + tol < p["start"] or s["end"] > p["end"] + tol:
                problems.append("span %s (%s) [%d, %d] is not within its parent %s (%s) [%d, %d]%s"
                                % (s["spanId"], s["name"], s["start"], s["end"], p["spanId"], p["name"],
                                   p["start"], p["end"], "" if same else " (tolerance %d ns)" % tol))
        return problems, tree


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "otlp-collector-emulator"

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, status, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, val in extra:
            self.send_header(k, val)
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        n = self.headers.get("Content-Length")
        if n is None or not n.isdigit():
            return None, 411
        n = int(n)
        if n > MAX_BODY:
            # read (and forget) what the client sends, so it sees the answer
            # rather than a reset; far beyond the limit: just close
            self.close_connection = True
            left = n if n <= 4 * MAX_BODY else 0
            while left > 0:
                chunk = self.rfile.read(min(left, 1 << 20))
                if not chunk:
                    break
                left -= len(chunk)
            return None, 413
        return self.rfile.read(n), 200

    def do_GET(self):
        c = self.server.collector
        if self.path == "/_emulator/spans":
            return self._send(200, c.get_spans())
        if self.path == "/_emulator/violations":
            with c.lock:
                return self._send(200, list(c.violations))
        if self.path == "/_emulator/requests":
            with c.lock:
                return self._send(200, [dict(r, headers=dict(r["headers"])) for r in c.requests])
        self._send(404, {"code": 5, "message": "not found"})

    def do_POST(self):
        c = self.server.collector
        raw, st = self._body()
        if raw is None:
            return self._send(st, {"code": 3, "message": "body missing or too large"})
        if self.path.startswith("/_emulator/"):
            return self._control(c, raw)
        if self.path != c.path:
            return self._send(404, {"code": 5, "message": "only %s is served" % c.path})
        headers = [(k.lower(), v) for k, v in self.headers.items()]
        v = Violations()
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            v.add("Content-Type", "expected application/json, got %r" % ctype)
            c.record(415, [], 0, len(raw), headers, v)
            return self._send(415, {"code": 3, "message": "only the JSON encoding is served"})
        enc = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        try:
            if enc == "gzip":
                raw = gzip.decompress(raw)
                if len(raw) > MAX_BODY:
                    raise ValueError("larger than 20 MiB after decompression")
            elif enc != "identity":
                raise ValueError("unsupported Content-Encoding %r" % enc)
            doc = json.loads(raw.decode("utf-8"))
        except Exception as e:  # not JSON, not UTF-8, bad gzip
            v.add("$", "not a JSON document: %s" % e)
            c.record(400, [], 0, len(raw), headers, v)
            return self._send(400, {"code": 3, "message": "; ".join(v.items)})
        fault = c._take_fault()
        if fault and fault["kind"] == "delay":
            time.sleep(fault["seconds"])
        if fault and fault["kind"] == "fail":
            c.record(fault["status"], [], 0, len(raw), headers, Violations())
            extra = [("Retry-After", str(fault["retry_after"]))] if fault["retry_after"] is not None else []
            return self._send(fault["status"], fault["body"] or {"code": 14, "message": "injected failure"}, extra)
        status, resp, kept, rejected, v = c.export(doc)
        if status == 200 and fault and fault["kind"] == "partial" and not rejected:
            n = min(fault["rejected"], len(kept))
            kept, rejected = kept[n:], n
            resp = {"partialSuccess": {"rejectedSpans": str(n), "errorMessage": fault["message"]}}
        c.record(status, kept, rejected, len(raw), headers, v)
        self._send(status, resp)

    def _control(self, c, raw):
        try:
            arg = json.loads(raw.decode() or "{}")
        except ValueError:
            return self._send(400, {"message": "expected JSON"})
        if self.path == "/_emulator/reset":
            c.reset()
            return self._send(200, {})
        if self.path == "/_emulator/fault":
            kind = arg.get("kind")
            n = int(arg.get("n", 1))
            if kind == "fail":
                c.fail_next(n, int(arg.get("status", 503)), arg.get("retry_after"))
            elif kind == "delay":
                c.delay_next(n, float(arg.get("seconds", 1.0)))
            elif kind == "partial":
                c.partial_next(n, int(arg.get("rejected", 1)))
            else:
                return self._send(400, {"message": "kind: fail, delay or partial"})
            return self._send(200, {})
        self._send(404, {"message": "unknown control"})


class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # a client that gave up (an exporter's timeout) is not an error here
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)


class OtlpCollector(Collector):
    """The collector with its HTTP server on a thread."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.httpd = None
        self.thread = None

    def start(self, host="127.0.0.1", port=0):
        self.httpd = _Server((host, port), _Handler)
        self.httpd.collector = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        return self.port

    @property
    def port(self):
        return self.httpd.server_address[1]

    @property
    def url(self):
        return "http://127.0.0.1:%d%s" % (self.port, self.path)

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)
            self.httpd = None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:4318", help="host:port (port 0: any free port)")
    ap.add_argument("--port-file", help="write the port here once listening")
    ap.add_argument("--lenient-int64", action="store_true", help="accept 64-bit integers as JSON numbers")
    args = ap.parse_args()
    host, _, port = args.listen.rpartition(":")
    c = OtlpCollector(strict_int64=not args.lenient_int64)
    c.start(host or "127.0.0.1", int(port))
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write("%d\n" % c.port)
    print("otlp collector emulator on %s" % c.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    c.stop()


if __name__ == "__main__":
    sys.exit(main())

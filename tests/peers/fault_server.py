"""Fault-injecting peers for the resilience tests: a gRPC server and an
HTTP/1.1 server that fail, hang or delay on command, and record every call
they saw (which instance, which attempt, the attempt headers the sidecar
added, timing and how the call ended).

Two ways to steer them, combinable:

1. Per request, by gRPC metadata or HTTP headers (same names):

  x-fault-key: <k>            names a logical request; the *ledger* (see below)
                              numbers the calls carrying the same key 1, 2, 3...
                              across every instance that shares it
  x-fault-hang-first: <n>     calls 1..n of the key hang (until the caller goes
                              away, release() or x-fault-hang-ms)
  x-fault-fail-first: <n>     the next n calls of the key (after the hanging
                              ones) fail with x-fault-status
  x-fault-status: <code>      status of a failing call: a gRPC code (default
                              14 UNAVAILABLE) or an HTTP status (default 503)
  x-fault-message: <text>     grpc-message / response body of a failing call
  x-fault-pushback: <v>       on a failing call, send grpc-retry-pushback-ms: v
                              (gRPC trailers) or Retry-After: v (HTTP)
  x-fault-fail: <code>        this call fails with <code> (no key needed)
  x-fault-hang: 1             this call hangs
  x-fault-hang-ms: <ms>       cap of a hang (default 60000); the call then
                              answers normally
  x-fault-delay-ms: <ms>      sleep before answering (stops when the caller
                              goes away)
  x-fault-stream-first: <n>   gRPC ServerStream only: send n messages, wait
                              x-fault-stream-gap-ms (default 200), then end
                              with the failing status (x-fault-status)

2. Per instance (in process: srv.set(mode=..., ...); out of process: the
   gRPC call /fault.Control/Set or HTTP POST /_fault/set with a JSON body):

  mode: ok | fail | hang | delay | reset (HTTP: close without answering)
  status, message, pushback   as above, for mode fail and fail_next
  delay_ms                    for mode delay
  fail_next: <n>              fail the next n calls, then behave per mode
  fail_ratio: <p>             fail this fraction of calls (seeded RNG)

  Per-request directives win over the instance's behaviour.

A successful gRPC call echoes the request (ServerStream: 3 copies) with
trailing metadata x-fault-instance and x-fault-attempt; a successful HTTP
call answers 200 with a JSON body {instance, attempt, method, path,
body_length, body_sha256} and the header x-peer: <instance>. A failing one
answers the status with x-peer too (and x-fault-instance trailer for gRPC),
so a test can tell the upstream's own error from one the sidecar made.

Connections (HTTP): n_connections accepted, max_open_connections at once,
open_connections().

Records (srv.calls(), ledger.calls()): instance, key, attempt (ledger
number), method, path, headers (dict, lower-case; gRPC metadata as given),
attempt_header (grpc-previous-rpc-attempts / x-sidecar-attempt, None when
absent), t_start, t_end, outcome ("ok", "fail:<code>", "hang", "cancelled",
"reset"), body_length, body_sha256. Counters: calls, inflight,
max_inflight. Control calls are neither counted nor recorded.

Instances that must agree on "the first n calls of a key" share one
FaultLedger: FaultGrpcServer("a", ledger=L), FaultGrpcServer("b", ledger=L).

In process:  srv = FaultGrpcServer("a"); srv.start(); ...; srv.stop()
             web = FaultHttpServer("w"); web.start(); ...; web.stop()
Standalone:  python3 fault_server.py --grpc-port 0 --http-port 0
             (prints "grpc <port>" and "http <port>")
Every wait is bounded; stop() ends every hang at once.
"""

import argparse
import hashlib
import http.server
import json
import random
import select
import socket
import sys
import threading
import time
import urllib.parse
from concurrent import futures

from peer_common import PeerLifecycle, ThreadedHttpPeer, serve_until_interrupted

try:
    import grpc
except ImportError:          # the HTTP peer works without grpcio
    grpc = None

HANG_CAP_S = 60.0
MAX_MSG = 64 * 1024 * 1024


class FaultLedger:
    """Shared by the instances of one upstream: numbers calls per key and
    keeps every record in arrival order."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.reset()

    def reset(self):
        with self._lock:
            self._keys = {}
            self._records = []

    def begin(self, rec):
        """Numbers the call (rec['attempt']) and stores the record."""
        with self._lock:
            key = rec.get("key")
            if key is not None:
                self._keys[key] = self._keys.get(key, 0) + 1
                rec["attempt"] = self._keys[key]
            else:
                rec["attempt"] = None
            self._records.append(rec)
            self._cond.notify_all()
            return rec["attempt"]

    def changed(self):
        with self._lock:
            self._cond.notify_all()

    def calls(self, key=None, instance=None):
        with self._lock:
            return [dict(r) for r in self._records
                    if (key is None or r.get("key") == key)
                    and (instance is None or r["instance"] == instance)]

    def count(self, key=None, instance=None):
        with self._lock:
            return sum(1 for r in self._records
                       if (key is None or r.get("key") == key)
                       and (instance is None or r["instance"] == instance))

    def wait_for(self, pred, timeout=5.0):
        """Waits until pred() is truthy (re-checked on each change and every
        20 ms), at most `timeout` seconds; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                return v
            with self._cond:
                self._cond.wait(min(left, 0.02))


class _Behaviour:
    FIELDS = ("mode", "status", "message", "pushback", "delay_ms", "fail_next", "fail_ratio")

    def __init__(self, default_status):
        self.default_status = default_status
        self.reset()

    def reset(self):
        self.mode = "ok"
        self.status = self.default_status
        self.message = "fault injected"
        self.pushback = None
        self.delay_ms = 0
        self.fail_next = 0
        self.fail_ratio = 0.0

    def update(self, **kw):
        for k, v in kw.items():
            if k not in self.FIELDS:
                raise ValueError("unknown behaviour field %r" % k)
            if k == "mode" and v not in ("ok", "fail", "hang", "delay", "reset"):
                raise ValueError("unknown mode %r" % v)
            setattr(self, k, v)
        if "status" in kw and kw["status"] is None:
            self.status = self.default_status

    def as_dict(self):
        return {k: getattr(self, k) for k in self.FIELDS}


class _FaultBase:
    """What both servers share: behaviour, ledger, counters, decisions."""

    default_status = 0

    def __init__(self, name, host, port, ledger, seed):
        self.name = name
        self.host = host
        self.port = port
        self.ledger = ledger if ledger is not None else FaultLedger()
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._release = threading.Event()
        self.behaviour = _Behaviour(self.default_status)
        self._reset_counters()

    # -- control ----------------------------------------------------------------
    def set(self, **kw):
        """Changes the instance's behaviour (see the module docstring)."""
        with self._lock:
            self.behaviour.update(**kw)
            return self.behaviour.as_dict()

    def release(self):
        """Ends every hang now (the hanging calls then answer normally) and
        keeps ending new ones until unrelease()/reset()."""
        self._release.set()

    def unrelease(self):
        self._release.clear()

    def _reset_counters(self):
        """Zeroes the call count; `inflight` is a live gauge (calls of an
        earlier test may still be finishing), so it is kept, and
        max_inflight restarts from it."""
        with self._lock:
            self.n_calls = 0
            self.inflight = getattr(self, "inflight", 0)
            self.max_inflight = self.inflight

    def reset(self, ledger_too=True):
        """Back to mode ok, counters zero; the shared ledger too by default."""
        with self._lock:
            self.behaviour.reset()
        self._release.clear()
        self._reset_counters()
        if ledger_too:
            self.ledger.reset()

    # -- records ----------------------------------------------------------------
    def calls(self, key=None):
        return self.ledger.calls(key=key, instance=self.name)

    def count(self, key=None):
        return self.ledger.count(key=key, instance=self.name)

    def stats(self):
        with self._lock:
            return {"instance": self.name, "calls": self.n_calls, "inflight": self.inflight,
                    "max_inflight": self.max_inflight, "behaviour": self.behaviour.as_dict()}

    def wait_for(self, pred, timeout=5.0):
        return self.ledger.wait_for(pred, timeout)

    def wait_inflight(self, n, timeout=5.0):
        """Waits until at least n calls are in flight here; returns the count."""
        self.ledger.wait_for(lambda: self.inflight >= n, timeout)
        return self.inflight

    def _enter(self):
        with self._lock:
            self.n_calls += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def _leave(self):
        with self._lock:
            self.inflight -= 1
        self.ledger.changed()

    # -- decision ---------------------------------------------------------------
    def _decide(self, h, attempt):
        """h: request directives (lower-case dict). Returns a plan dict:
        action ok|fail|hang|delay|reset, status, message, pushback, delay_s,
        hang_s, stream_first, stream_gap_s."""
        def num(name, default=0):
            v = h.get(name)
            try:
                return int(v) if v is not None else default
            except ValueError:
                return default

        with self._lock:
            b = self.behaviour
            plan = {"action": "ok", "status": b.status, "message": b.message, "pushback": b.pushback,
                    "delay_s": 0.0, "hang_s": num("x-fault-hang-ms", int(HANG_CAP_S * 1000)) / 1000.0,
                    "stream_first": num("x-fault-stream-first", -1),
                    "stream_gap_s": num("x-fault-stream-gap-ms", 200) / 1000.0}
            if "x-fault-status" in h:
                plan["status"] = num("x-fault-status", b.status)
            if "x-fault-message" in h:
                plan["message"] = h["x-fault-message"]
            if "x-fault-pushback" in h:
                plan["pushback"] = h["x-fault-pushback"]
            hang_first = num("x-fault-hang-first")
            fail_first = num("x-fault-fail-first")
            if attempt is not None and attempt <= hang_first:
                plan["action"] = "hang"
            elif attempt is not None and attempt <= hang_first + fail_first:
                plan["action"] = "fail"
            elif "x-fault-fail" in h:
                plan["action"] = "fail"
                plan["status"] = num("x-fault-fail", plan["status"])
            elif h.get("x-fault-hang") in ("1", "true"):
                plan["action"] = "hang"
            elif b.fail_next > 0:
                b.fail_next -= 1
                plan["action"] = "fail"
            elif b.fail_ratio and self._rng.random() < b.fail_ratio:
                plan["action"] = "fail"
            elif b.mode in ("fail", "hang", "reset"):
                plan["action"] = b.mode
            elif b.mode == "delay":
                plan["delay_s"] = b.delay_ms / 1000.0
            if "x-fault-delay-ms" in h and plan["action"] == "ok":
                plan["delay_s"] = num("x-fault-delay-ms") / 1000.0
            if plan["stream_first"] >= 0 and plan["action"] == "ok":
                plan["action"] = "stream-fail"
            return plan

    def _wait(self, seconds, alive, for_hang=False):
        """Sleeps up to `seconds` in 10 ms steps. Returns "done", "gone"
        (the caller went away: alive() false), or "released"."""
        end = time.monotonic() + seconds
        while True:
            if self._stop.is_set():
                return "gone"
            if for_hang and self._release.is_set():
                return "released"
            if not alive():
                return "gone"
            left = end - time.monotonic()
            if left <= 0:
                return "done"
            time.sleep(min(left, 0.01))

    def _record(self, method, path, headers, attempt_header, body):
        key = headers.get("x-fault-key")
        rec = {"instance": self.name, "key": key, "method": method, "path": path,
               "headers": dict(headers), "attempt_header": attempt_header,
               "t_start": time.monotonic(), "t_end": None, "outcome": None,
               "body_length": len(body), "body_sha256": hashlib.sha256(body).hexdigest()}
        self.ledger.begin(rec)
        return rec

    def _finish(self, rec, outcome):
        rec["t_end"] = time.monotonic()
        rec["outcome"] = outcome
        self.ledger.changed()


# ------------------------------------------------------------------------------
# gRPC
# ------------------------------------------------------------------------------

class FaultGrpcServer(PeerLifecycle, _FaultBase):
    """gRPC (h2c) fault peer. Any method is served: a path ending in
    /ServerStream is server-streaming, everything else unary; the request
    bytes are echoed. /fault.Control/{Set,Stats,Reset,Release} take and
    answer JSON."""

    default_status = 14

    def __init__(self, name="fault", host="127.0.0.1", port=0, ledger=None, seed=1,
                 max_workers=96):
        super().__init__(name, host, port, ledger, seed)
        self.max_workers = max_workers
        self._server = None

    def _begin(self, method, request, context):
        md = list(context.invocation_metadata())
        headers = {}
        for k, v in md:
            headers[k] = v if isinstance(v, str) else v.hex()
        rec = self._record(method, method, headers, headers.get("grpc-previous-rpc-attempts"), request)
        plan = self._decide(headers, rec["attempt"])
        context.set_trailing_metadata([("x-fault-instance", self.name),
                                       ("x-fault-attempt", str(rec["attempt"]))])
        return rec, plan

    def _fail(self, rec, plan, context):
        code = grpc_code(plan["status"])
        trailers = [("x-fault-instance", self.name), ("x-fault-attempt", str(rec["attempt"]))]
        if plan["pushback"] is not None:
            trailers.append(("grpc-retry-pushback-ms", str(plan["pushback"])))
        context.set_trailing_metadata(trailers)
        self._finish(rec, "fail:%d" % plan["status"])
        context.abort(code, plan["message"])

    def _unary(self, method, request, context):
        self._enter()
        try:
            rec, plan = self._begin(method, request, context)
            alive = context.is_active
            if plan["action"] == "hang":
                how = self._wait(plan["hang_s"], alive, for_hang=True)
                if how == "gone":
                    self._finish(rec, "cancelled")
                    return b""
            elif plan["action"] == "fail":
                self._fail(rec, plan, context)
            if plan["delay_s"] and self._wait(plan["delay_s"], alive) == "gone":
                self._finish(rec, "cancelled")
                return b""
            self._finish(rec, "ok")
            return request
        finally:
            self._leave()

    def _stream(self, method, request, context):
        self._enter()
        try:
            rec, plan = self._begin(method, request, context)
            alive = context.is_active
            if plan["action"] == "hang":
                if self._wait(plan["hang_s"], alive, for_hang=True) == "gone":
                    self._finish(rec, "cancelled")
                    return
            elif plan["action"] == "fail":
                self._fail(rec, plan, context)
            if plan["delay_s"] and self._wait(plan["delay_s"], alive) == "gone":
                self._finish(rec, "cancelled")
                return
            n = plan["stream_first"] if plan["action"] == "stream-fail" else 3
            for _ in range(n):
                yield request
            if plan["action"] == "stream-fail":
                if self._wait(plan["stream_gap_s"], alive) == "gone":
                    self._finish(rec, "cancelled")
                    return
                self._fail(rec, plan, context)
            self._finish(rec, "ok")
        finally:
            self._leave()

    def _control(self, what, request, context):
        try:
            if what == "Set":
                doc = self.set(**json.loads(request or b"{}"))
            elif what == "Stats":
                doc = dict(self.stats(), records=self.calls())
            elif what == "Reset":
                self.reset()
                doc = {}
            elif what == "Release":
                self.release()
                doc = {}
            else:
                context.abort(grpc.StatusCode.UNIMPLEMENTED, "no control %s" % what)
        except (ValueError, TypeError) as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return json.dumps(doc).encode()

    def start(self):
        if grpc is None:
            raise RuntimeError("grpcio is not installed")
        srv = self

        class Generic(grpc.GenericRpcHandler):
            def service(self, details):
                m = details.method
                if m.startswith("/fault.Control/"):
                    what = m.rsplit("/", 1)[1]
                    return grpc.unary_unary_rpc_method_handler(
                        lambda req, ctx: srv._control(what, req, ctx))
                if m.endswith("/ServerStream"):
                    return grpc.unary_stream_rpc_method_handler(
                        lambda req, ctx: srv._stream(m, req, ctx))
                return grpc.unary_unary_rpc_method_handler(
                    lambda req, ctx: srv._unary(m, req, ctx))

        self._stop.clear()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers),
                                   handlers=[Generic()],
                                   options=[("grpc.max_receive_message_length", MAX_MSG),
                                            ("grpc.max_send_message_length", MAX_MSG),
                                            ("grpc.so_reuseport", 0)])
        host = "[%s]" % self.host if ":" in self.host else self.host
        self.port = self._server.add_insecure_port("%s:%d" % (host, self.port))
        if not self.port:
            raise RuntimeError("fault grpc server could not bind %s" % self.host)
        self._server.start()
        return self.port

    def stop(self, grace=0):
        self._stop.set()
        if self._server:
            self._server.stop(grace).wait(5)
            self._server = None


def grpc_code(n):
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return c
    return grpc.StatusCode.UNKNOWN


# ------------------------------------------------------------------------------
# HTTP/1.1
# ------------------------------------------------------------------------------

class _Closed(Exception):
    pass


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault-peer"
    sys_version = ""

    def log_message(self, *a):
        pass

    def setup(self):
        super().setup()
        try:   # headers and body are two writes: no Nagle delay between them
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        self.server.peer._conn_opened(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.server.peer._conn_closed(self.connection)

    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise _Closed("eof in chunk size")
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        t = self.rfile.readline(65537)
                        if not t or t in (b"\r\n", b"\n"):
                            break
                    break
                data = self.rfile.read(size)
                if len(data) < size:
                    raise _Closed("eof in chunk")
                out.append(data)
                self.rfile.readline(3)
            return b"".join(out)
        n = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(n) if n else b""
        if len(data) < n:
            raise _Closed("eof in body")
        return data

    def _alive(self):
        """False once the client closed its side (EOF readable)."""
        try:
            r, _, _ = select.select([self.connection], [], [], 0)
            if not r:
                return True
            return self.connection.recv(1, socket.MSG_PEEK) != b""
        except (OSError, ValueError):
            return False

    def _send(self, code, body, headers=()):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("x-peer", self.server.peer.name)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _control(self, what, body):
        peer = self.server.peer
        try:
            if what == "set" and self.command == "POST":
                doc = peer.set(**json.loads(body or b"{}"))
            elif what == "stats":
                doc = dict(peer.stats(), records=peer.calls())
            elif what == "reset" and self.command == "POST":
                peer.reset()
                doc = {}
            elif what == "release" and self.command == "POST":
                peer.release()
                doc = {}
            else:
                self._send(404, "no control %s\n" % what)
                return
        except (ValueError, TypeError) as e:
            self._send(400, "%s\n" % e)
            return
        self._send(200, json.dumps(doc), [("Content-Type", "application/json")])

    def _handle(self):
        peer = self.server.peer
        url = urllib.parse.urlsplit(self.path)
        try:
            body = self._read_body()
        except (_Closed, ValueError):
            self.close_connection = True
            return
        if url.path.startswith("/_fault/"):
            self._control(url.path[len("/_fault/"):], body)
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        peer._enter()
        try:
            rec = peer._record(self.command, url.path, headers, headers.get("x-sidecar-attempt"), body)
            plan = peer._decide(headers, rec["attempt"])
            if plan["action"] == "hang":
                how = peer._wait(plan["hang_s"], self._alive, for_hang=True)
                if how == "gone":
                    peer._finish(rec, "cancelled")
                    self.close_connection = True
                    return
            if plan["action"] == "reset":
                peer._finish(rec, "reset")
                self.close_connection = True
                try:   # close with linger 0: a reset, no response
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               b"\x01\x00\x00\x00\x00\x00\x00\x00")
                except OSError:
                    pass
                return
            if plan["action"] == "fail":
                extra = [("Content-Type", "text/plain")]
                if plan["pushback"] is not None:
                    extra.append(("Retry-After", str(plan["pushback"])))
                peer._finish(rec, "fail:%d" % plan["status"])
                self._send(plan["status"], "%s\n" % plan["message"], extra)
                return
            if plan["delay_s"] and peer._wait(plan["delay_s"], self._alive) == "gone":
                peer._finish(rec, "cancelled")
                self.close_connection = True
                return
            peer._finish(rec, "ok")
            doc = {"instance": peer.name, "attempt": rec["attempt"], "method": self.command,
                   "path": url.path, "body_length": rec["body_length"],
                   "body_sha256": rec["body_sha256"]}
            self._send(200, json.dumps(doc), [("Content-Type", "application/json")])
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError):
            self.close_connection = True
        finally:
            peer._leave()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


class FaultHttpServer(ThreadedHttpPeer, _FaultBase):
    """HTTP/1.1 fault peer (keep-alive, Content-Length and chunked request
    bodies). Any path is served; /_fault/{set,stats,reset,release} control it."""

    default_status = 503

    def __init__(self, name="fault-http", host="127.0.0.1", port=0, ledger=None, seed=1):
        self._conns = set()
        super().__init__(name, host, port, ledger, seed)
        self._server = None
        self._thread = None

    def _conn_opened(self, sock):
        with self._lock:
            self._conns.add(sock)
            self.n_connections += 1
            self.max_open_connections = max(self.max_open_connections, len(self._conns))

    def _reset_counters(self):
        super()._reset_counters()
        with self._lock:
            self.n_connections = 0                   # accepted since the reset
            self.max_open_connections = len(getattr(self, "_conns", ()))

    def start(self):
        self._stop.clear()
        return self._serve(_HttpHandler, "fault-http-%s" % self.name)

    def stop(self):
        self._stop.set()
        super().stop()


def main():
    ap = argparse.ArgumentParser(description="fault-injecting gRPC and HTTP/1.1 peers")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--grpc-port", type=int, default=None)
    ap.add_argument("--http-port", type=int, default=None)
    ap.add_argument("--name", default="fault")
    a = ap.parse_args()
    if a.grpc_port is None and a.http_port is None:
        a.grpc_port = a.http_port = 0
    ledger = FaultLedger()
    servers = []
    if a.grpc_port is not None:
        g = FaultGrpcServer(a.name, a.host, a.grpc_port, ledger=ledger)
        print("grpc", g.start(), flush=True)
        servers.append(g)
    if a.http_port is not None:
        h = FaultHttpServer(a.name, a.host, a.http_port, ledger=ledger)
        print("http", h.start(), flush=True)
        servers.append(h)
    serve_until_interrupted(servers)


if __name__ == "__main__":
    sys.exit(main())

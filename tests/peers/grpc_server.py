"""A real gRPC server for integration tests (grpcio, h2c, no protobuf).

Generic handlers pass raw bytes (no serializers), so any payload works.
Service /test.Echo/ has Unary, ServerStream, ClientStream and BidiStream;
what a call does is steered by its request metadata:

  x-echo-status: <int>        gRPC code to end with (default 0). A non-zero
                              code with no messages sent ends the call with
                              context.abort(): a trailers-only response.
  x-echo-message: <text>      grpc-message (details) to end with
  x-echo-message-bin: <utf-8> the same for non-ASCII text (binary metadata)
  x-echo-delay-ms: <ms>       sleep before answering (stops early when the
                              call is cancelled or its deadline passes)
  x-echo-response-size: <n>   answer with n bytes of payload(n, i) instead of
                              echoing the request
  x-echo-count: <n>           ServerStream: number of messages (default 3)
  x-echo-interval-ms: <ms>    pause between streamed messages
  x-echo-read-delay-ms: <ms>  ClientStream/Bidi: sleep after each message read
  x-echo-trailer-<name>: v    trailing metadata <name>: v (also -bin keys)
  x-echo-meta-<name>: v       sent back in the initial metadata as is

Unary echoes the request; ServerStream sends `count` copies of the request
(or payloads); ClientStream answers JSON {"count", "bytes", "sha256"} of
what it read; BidiStream answers every message as it arrives.

Every call is recorded (EchoServer.calls()): method, metadata,
time_remaining (seconds the server saw at the start, None without a
deadline), cancelled (the call ended before the handler finished: client
cancel, RST_STREAM or deadline), terminated_at, messages in/out, bytes.
/test.Control/Stats answers the same as JSON (for use out of process),
/test.Control/Reset clears it.

In-process: srv = EchoServer(); port = srv.start(); ...; srv.stop()
Standalone: python3 grpc_server.py --port 0   (prints the port)
"""

import argparse
import hashlib
import json
import random
import sys
import threading
import time
from concurrent import futures

import grpc

from peer_common import PeerLifecycle, serve_until_interrupted

MAX_MSG = 64 * 1024 * 1024
METHODS = ("Unary", "ServerStream", "ClientStream", "BidiStream")
CODES = {c.value[0]: c for c in grpc.StatusCode}
_BASE = random.Random(424242).randbytes(1 << 16)


def payload(size, index=0):
    """Deterministic payload: 8-byte big-endian index, then a fixed pattern."""
    if size <= 0:
        return b""
    head = index.to_bytes(8, "big")
    reps = (size // len(_BASE)) + 1
    return (head + _BASE * reps)[:size]


def server_options(max_msg=MAX_MSG):
    return [("grpc.max_receive_message_length", max_msg),
            ("grpc.max_send_message_length", max_msg),
            ("grpc.so_reuseport", 0)]


def _remaining(context):
    """Seconds left before the call's deadline, None without a deadline
    (grpcio reports an enormous number then)."""
    t = context.time_remaining()
    if t is None or t > 1e8:
        return None
    return t


class _Call:
    """Per-call state and record."""

    def __init__(self, srv, method, context):
        self.srv = srv
        self.ctx = context
        md = list(context.invocation_metadata())
        self.md = {}
        for k, v in md:
            self.md[k] = v
        self.rec = {
            "method": method,
            "metadata": [(k, v if isinstance(v, str) else v.hex()) for k, v in md],
            "time_remaining": _remaining(context),
            "t_start": time.monotonic(),
            "cancelled": False,
            "terminated_at": None,
            "handler_done": False,
            "messages_in": 0,
            "bytes_in": 0,
            "messages_out": 0,
            "bytes_out": 0,
            "peer": context.peer(),
        }
        srv._record(self.rec)
        context.add_callback(self._on_done)
        trailers = []
        meta = []
        for k, v in md:
            if k.startswith("x-echo-trailer-"):
                trailers.append((k[len("x-echo-trailer-"):], v))
            elif k.startswith("x-echo-meta-"):
                meta.append((k, v))
        self.trailers = trailers
        self.meta = meta
        self.status = int(self.md.get("x-echo-status", "0"))
        self.message = self.md.get("x-echo-message", "")
        if "x-echo-message-bin" in self.md:
            self.message = self.md["x-echo-message-bin"].decode("utf-8")
        self.delay = int(self.md.get("x-echo-delay-ms", "0")) / 1000.0
        size = self.md.get("x-echo-response-size")
        self.size = int(size) if size is not None else None
        self.count = int(self.md.get("x-echo-count", "3"))
        self.interval = int(self.md.get("x-echo-interval-ms", "0")) / 1000.0
        self.read_delay = int(self.md.get("x-echo-read-delay-ms", "0")) / 1000.0
        if meta:
            context.send_initial_metadata(meta)
        if trailers:
            context.set_trailing_metadata(trailers)

    def _on_done(self):
        now = time.monotonic()
        with self.srv._lock:
            self.rec["terminated_at"] = now
            if not self.rec["handler_done"]:
                self.rec["cancelled"] = True
            self.srv._cond.notify_all()

    def sleep(self, seconds):
        """Sleeps up to `seconds`; returns False when the call stopped being active."""
        end = time.monotonic() + seconds
        while True:
            if not self.ctx.is_active():
                return False
            left = end - time.monotonic()
            if left <= 0:
                return True
            time.sleep(min(left, 0.01))

    def settle_after_requests(self, grace=0.1):
        """The request stream ended. grpcio ends the iterator the same way for
        a half-close and for a cancellation whose status it has not processed
        yet, so give a cancellation `grace` seconds to show."""
        end = time.monotonic() + grace
        while time.monotonic() < end:
            if not self.ctx.is_active():
                return False
            time.sleep(0.005)
        return True

    def got(self, msg):
        with self.srv._lock:
            self.rec["messages_in"] += 1
            self.rec["bytes_in"] += len(msg)

    def sent(self, msg):
        with self.srv._lock:
            self.rec["messages_out"] += 1
            self.rec["bytes_out"] += len(msg)

    def done(self):
        # A cancelled call also ends a request iterator quietly (like a
        # half-close), so "inactive when the handler finishes" counts too.
        active = self.ctx.is_active()
        with self.srv._lock:
            if not active:
                self.rec["cancelled"] = True
            self.rec["handler_done"] = True
            self.rec["t_end"] = time.monotonic()

    def finish_status(self, any_sent):
        """Applies x-echo-status; aborts (trailers-only when nothing was sent)."""
        if self.status:
            code = CODES[self.status]
            self.done()
            if not any_sent and not self.meta:
                self.ctx.abort(code, self.message)
            self.ctx.set_code(code)
            self.ctx.set_details(self.message)
            return True
        return False


class EchoServer(PeerLifecycle):
    def __init__(self, host="127.0.0.1", port=0, max_workers=64, max_msg=MAX_MSG, name="grpc"):
        self.host = host
        self.port = port
        self.name = name
        self.max_workers = max_workers
        self.max_msg = max_msg
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._server = None
        self.reset()

    # records ------------------------------------------------------------------
    def reset(self):
        with self._lock:
            self._calls = []

    def _record(self, rec):
        with self._lock:
            self._calls.append(rec)
            self._cond.notify_all()

    def calls(self, method=None):
        with self._lock:
            return [dict(r) for r in self._calls if method is None or r["method"] == method]

    def count(self, method=None):
        with self._lock:
            return sum(1 for r in self._calls if method is None or r["method"] == method)

    def last(self, method=None):
        c = self.calls(method)
        return c[-1] if c else None

    def stats(self):
        with self._lock:
            counts = {m: 0 for m in METHODS}
            for r in self._calls:
                counts[r["method"]] = counts.get(r["method"], 0) + 1
            return {"counts": counts, "calls": [dict(r) for r in self._calls]}

    def wait_for(self, pred, timeout=5.0):
        """Waits until pred() is truthy (re-checked on every record change
        and every 20 ms), at most `timeout` seconds; returns its last value."""
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

    # handlers -----------------------------------------------------------------
    def _unary(self, request, context):
        c = _Call(self, "Unary", context)
        c.got(request)
        if c.delay and not c.sleep(c.delay):
            c.done()
            return b""
        if c.finish_status(False):
            return None
        resp = payload(c.size) if c.size is not None else request
        c.sent(resp)
        c.done()
        return resp

    def _server_stream(self, request, context):
        c = _Call(self, "ServerStream", context)
        c.got(request)
        if c.delay and not c.sleep(c.delay):
            c.done()
            return
        n = 0
        for i in range(c.count):
            if not context.is_active():
                break
            msg = payload(c.size, i) if c.size is not None else request
            c.sent(msg)
            yield msg
            n += 1
            if c.interval and i + 1 < c.count and not c.sleep(c.interval):
                break
        if c.finish_status(n > 0):
            return
        c.done()

    def _client_stream(self, request_iterator, context):
        c = _Call(self, "ClientStream", context)
        h = hashlib.sha256()
        count = 0
        total = 0
        for msg in request_iterator:
            c.got(msg)
            h.update(msg)
            count += 1
            total += len(msg)
            if c.read_delay and not c.sleep(c.read_delay):
                break
        c.settle_after_requests()
        if c.delay and not c.sleep(c.delay):
            c.done()
            return b""
        if c.finish_status(False):
            return None
        if c.size is not None:
            resp = payload(c.size)
        else:
            resp = json.dumps({"count": count, "bytes": total, "sha256": h.hexdigest()}).encode()
        c.sent(resp)
        c.done()
        return resp

    def _bidi(self, request_iterator, context):
        c = _Call(self, "BidiStream", context)
        n = 0
        for msg in request_iterator:
            c.got(msg)
            if c.read_delay and not c.sleep(c.read_delay):
                break
            resp = payload(c.size, n) if c.size is not None else msg
            c.sent(resp)
            yield resp
            n += 1
        c.settle_after_requests()
        if c.finish_status(n > 0):
            return
        c.done()

    def _stats(self, request, context):
        return json.dumps(self.stats()).encode()

    def _reset(self, request, context):
        self.reset()
        return b"{}"

    # lifecycle ----------------------------------------------------------------
    def start(self):
        srv = self

        class Generic(grpc.GenericRpcHandler):
            def service(self, details):
                m = details.method
                if m == "/test.Echo/Unary":
                    return grpc.unary_unary_rpc_method_handler(srv._unary)
                if m == "/test.Echo/ServerStream":
                    return grpc.unary_stream_rpc_method_handler(srv._server_stream)
                if m == "/test.Echo/ClientStream":
                    return grpc.stream_unary_rpc_method_handler(srv._client_stream)
                if m == "/test.Echo/BidiStream":
                    return grpc.stream_stream_rpc_method_handler(srv._bidi)
                if m == "/test.Control/Stats":
                    return grpc.unary_unary_rpc_method_handler(srv._stats)
                if m == "/test.Control/Reset":
                    return grpc.unary_unary_rpc_method_handler(srv._reset)
                return None

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=self.max_workers),
                                   handlers=[Generic()], options=server_options(self.max_msg))
        host = "[%s]" % self.host if ":" in self.host else self.host
        self.port = self._server.add_insecure_port("%s:%d" % (host, self.port))
        if not self.port:
            raise RuntimeError("grpc server could not bind %s" % self.host)
        self._server.start()
        return self.port

    def stop(self, grace=0):
        if self._server:
            self._server.stop(grace).wait(5)
            self._server = None


def main():
    ap = argparse.ArgumentParser(description="gRPC echo peer")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    s = EchoServer(a.host, a.port)
    print(s.start(), flush=True)
    serve_until_interrupted([s])


if __name__ == "__main__":
    sys.exit(main())

"""Client-side helpers for the resilience tests (fault_server.py peers and
the sidecar's admin view of upstream policy state).

  unary(echo, metadata, timeout) -> Outcome(code int, details, elapsed s,
                                           response bytes or None, trailers dict)
  http_call(port, path, headers, method, body) -> Outcome for HTTP/1.1
                                           (code = HTTP status; .headers, .body)
  upstream_view(sc, name) / instance_view(sc, name, port): entries of GET /clusters
  percentile(values, p)
  run_parallel(fn, n_threads, per_thread) -> list of results (bounded by joins)
  unique_key(prefix)

Nothing here starts a process; every call has a timeout.
"""

import http.client
import itertools
import socket
import threading
import time

try:
    import grpc
except ImportError:
    grpc = None

_counter = itertools.count(1)
_counter_lock = threading.Lock()


def unique_key(prefix="k"):
    with _counter_lock:
        return "%s-%d-%d" % (prefix, int(time.time() * 1000) % 100000000, next(_counter))


class Outcome:
    def __init__(self, code, details=None, elapsed=0.0, response=None, trailers=None,
                 headers=None, body=None, kind="grpc"):
        self.kind = kind
        self.code = code
        self.details = details
        self.elapsed = elapsed
        self.response = response
        self.trailers = trailers or {}
        self.headers = headers or {}
        self.body = body

    def header(self, name, default=None):
        return self.headers.get(name.lower(), default)

    def __repr__(self):
        if self.kind == "http":
            return "<HTTP %s %.3fs %s headers=%r body=%r>" % (self.code, self.elapsed, self.details or "",
                                                               self.headers, (self.body or b"")[:200])
        return "<gRPC %s %r %.3fs trailers=%r>" % (self.code, self.details, self.elapsed, self.trailers)


def _md(md):
    out = {}
    for k, v in (md or ()):
        out[k] = v if isinstance(v, str) else v.hex()
    return out


def unary(echo, metadata=(), timeout=5.0, msg=b"x"):
    """One unary call through an Echo stub; never raises an RpcError."""
    t = time.monotonic()
    try:
        resp, call = echo.unary.with_call(msg, metadata=list(metadata), timeout=timeout)
        return Outcome(0, call.details(), time.monotonic() - t, resp, _md(call.trailing_metadata()))
    except grpc.RpcError as e:
        return Outcome(e.code().value[0], e.details(), time.monotonic() - t, None,
                       _md(e.trailing_metadata()))


def http_call(port, path="/", headers=(), method="GET", body=None, timeout=10.0, conn=None):
    """One HTTP/1.1 request (a fresh connection unless `conn` is given).
    Returns an Outcome (code = status, or -1 when the connection failed)."""
    own = conn is None
    if own:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    t = time.monotonic()
    try:
        conn.request(method, path, body=body, headers=dict(headers))
        r = conn.getresponse()
        data = r.read()
        return Outcome(r.status, r.reason, time.monotonic() - t,
                       headers={k.lower(): v for k, v in r.getheaders()}, body=data, kind="http")
    except (OSError, http.client.HTTPException, socket.timeout) as e:
        return Outcome(-1, "%s: %s" % (type(e).__name__, e), time.monotonic() - t, body=b"", kind="http")
    finally:
        if own:
            conn.close()


def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    v = sorted(values)
    if not v:
        return None
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def run_parallel(fn, n_threads, per_thread, join_timeout=60.0):
    """Runs fn(thread_index, i) for i in range(per_thread) in n_threads
    threads; returns every result (thread-major order). Threads are daemons
    joined with a bound."""
    results = [[] for _ in range(n_threads)]

    def body(t):
        for i in range(per_thread):
            results[t].append(fn(t, i))

    threads = [threading.Thread(target=body, args=(t,), daemon=True) for t in range(n_threads)]
    for th in threads:
        th.start()
    deadline = time.monotonic() + join_timeout
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))
    return [r for rs in results for r in rs]


# -- admin view --------------------------------------------------------------------

def upstream_view(sc, name):
    """The entry of GET /clusters "upstreams" named `name` (AssertionError if absent)."""
    doc = sc.clusters()
    for u in doc.get("upstreams", []):
        if u.get("name") == name:
            return u
    raise AssertionError("upstream %s not in /clusters: %s" % (name, [u.get("name") for u in doc.get("upstreams", [])]))


def instance_view(sc, name, port, host="127.0.0.1"):
    u = upstream_view(sc, name)
    want = "%s:%d" % (host, port)
    for i in u.get("instances", []):
        if i.get("address") == want:
            return i
    raise AssertionError("instance %s of %s not in /clusters: %s" % (want, name, u.get("instances")))


def breaker_view(sc, name):
    u = upstream_view(sc, name)
    b = u.get("circuit_breaker")
    if not isinstance(b, dict):
        raise AssertionError("upstream %s has no circuit_breaker object in /clusters: %s" % (name, u))
    return b


def breaker_state(sc, name):
    return breaker_view(sc, name).get("state")


def admin_post(sc, path):
    """(status, body) of POST path on the admin endpoint (empty body, with the
    X-Sidecar-Admin marker state-changing admin requests need)."""
    status, _, body = sc.admin(path, method="POST", data=b"", headers={"X-Sidecar-Admin": "1"})
    return status, body

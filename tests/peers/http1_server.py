"""A real HTTP/1.1 server for integration tests (a peer of the sidecar).

Built on http.server (ThreadingHTTPServer, protocol HTTP/1.1) with its own
body handling so the tests see exactly what arrived on the wire:

  keep-alive, Content-Length and chunked request bodies (chunked is decoded,
  request trailers are recorded), Expect: 100-continue (answered by
  http.server before the body is read; recorded), HEAD on every route,
  Connection: close, responses with Content-Length or chunked (+ trailers),
  103 Early Hints, large streamed bodies generated on the fly.

Routes (the query string tunes some of them):

  /echo                 JSON: method, path, target, version, headers (list of
                        [name, value] in arrival order), body_length,
                        body_sha256, body (text, when < 64 KiB), trailers,
                        expect_continue, chunked
  /bytes/<n>            n bytes of the deterministic pattern (see pattern_bytes)
                        ?chunked=1 chunked instead of Content-Length,
                        ?chunk=<bytes> write size (default 1 MiB)
  /sha256               reads the whole body streaming; JSON {length, sha256,
                        trailers}; ?pause_ms=<ms> waits before reading the body,
                        ?read_delay_ms=<ms> sleeps after every 64 KiB read
  /status/<code>        that status, body "status <code>\n"
  /delay/<ms>           sleeps, then 200 "delayed <ms>\n" (?body=<n> bytes)
  /slow                 dribbles: ?bytes=<n> (default 20) ?interval_ms=<ms>
                        (default 100) ?chunk=<bytes> (default 1), Content-Length
  /chunked              chunked response: ?n=<chunks> ?size=<bytes>
                        ?interval_ms=<ms> ?trailers=1 (adds x-checksum, x-count)
  /early-hints          103 Early Hints (Link header), then 200
  /hop                  a response carrying hop-by-hop headers (Connection:
                        x-hop-custom, Keep-Alive, Proxy-Connection, Upgrade,
                        X-Hop-Custom) plus X-End-To-End
  /close                200 with Connection: close, then closes
  /truncate             announces ?len=<n> bytes (Content-Length, or chunked
                        with ?chunked=1), sends ?send=<m> of them, closes
  anything else         404

Every response carries `x-peer: <name>`. Counters (thread-safe):
connections, requests_started (every request line read, even one that
fails to parse), requests_completed (handler finished reading the body),
requests_aborted, per-path counts, in-flight count, and a list of
request records.

HTTPS: Http1Peer("a", ssl_context=ctx) serves the same routes over TLS with
an ssl.SSLContext (PROTOCOL_TLS_SERVER, its certificate loaded).

Use in-process:  peer = Http1Peer("a"); port = peer.start(); ...; peer.stop()
or standalone:   python3 http1_server.py --port 0 --name a   (prints the port)
"""

import argparse
import hashlib
import http.server
import json
import random
import socket
import sys
import threading
import time
import urllib.parse

from peer_common import ThreadedHttpPeer, serve_until_interrupted, tls_server_base

BLOCK = 1 << 20
_BASE_BLOCK = random.Random(20240607).randbytes(BLOCK)
_sha_cache = {}
_sha_lock = threading.Lock()


def pattern_blocks(n, block=BLOCK):
    """Yields the deterministic pattern of n bytes in pieces of at most `block`.
    Each 1 MiB block starts with its index (8 bytes, big endian), so dropped,
    duplicated or reordered blocks change the digest."""
    sent = 0
    idx = 0
    while sent < n:
        b = bytearray(_BASE_BLOCK)
        b[0:8] = idx.to_bytes(8, "big")
        idx += 1
        mv = memoryview(b)
        off = 0
        while off < BLOCK and sent < n:
            take = min(block, BLOCK - off, n - sent)
            yield mv[off:off + take]
            off += take
            sent += take


def pattern_bytes(n):
    return b"".join(bytes(m) for m in pattern_blocks(n))


def pattern_sha256(n):
    """sha256 hex digest of pattern_bytes(n), cached."""
    with _sha_lock:
        if n in _sha_cache:
            return _sha_cache[n]
    h = hashlib.sha256()
    for m in pattern_blocks(n):
        h.update(m)
    d = h.hexdigest()
    with _sha_lock:
        _sha_cache[n] = d
    return d


class _Aborted(Exception):
    pass


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "peer-http1"
    sys_version = ""
    rbufsize = 65536

    # -- plumbing -----------------------------------------------------------

    def setup(self):
        super().setup()
        self.peer = self.server.peer
        self.peer._conn_opened(self.connection)
        self._expect_seen = False

    def finish(self):
        try:
            super().finish()
        finally:
            self.peer._conn_closed(self.connection)

    def log_message(self, fmt, *args):  # quiet
        pass

    def parse_request(self):
        self.peer._bump("requests_started")
        self._expect_seen = False
        return super().parse_request()

    def handle_expect_100(self):
        self._expect_seen = True
        return super().handle_expect_100()

    def do_GET(self):
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_GET

    # -- body ---------------------------------------------------------------

    def _read_body(self, on_data=None, keep_limit=65536, read_delay=0.0, pause=0.0):
        """Reads the request body (Content-Length or chunked). Returns
        (length, sha256 hex, kept bytes or None, trailers list)."""
        te = self.headers.get("Transfer-Encoding")
        cl = self.headers.get("Content-Length")
        h = hashlib.sha256()
        kept = bytearray()
        length = 0
        trailers = []
        if pause:
            time.sleep(pause)
        since_sleep = 0

        def consume(data):
            nonlocal length, since_sleep
            length += len(data)
            h.update(data)
            if keep_limit and len(kept) < keep_limit:
                kept.extend(data[: keep_limit - len(kept)])
            if on_data:
                on_data(len(data))
            if read_delay:
                since_sleep += len(data)
                if since_sleep >= 65536:
                    since_sleep = 0
                    time.sleep(read_delay)

        if te is not None and te.strip().lower() == "chunked":
            while True:
                line = self.rfile.readline(4096)
                if not line.endswith(b"\n"):
                    raise _Aborted("eof in chunk size")
                size_s = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_s, 16)
                except ValueError:
                    raise _Aborted("bad chunk size %r" % line)
                if size == 0:
                    while True:
                        t = self.rfile.readline(65537)
                        if not t.endswith(b"\n"):
                            raise _Aborted("eof in trailers")
                        if t in (b"\r\n", b"\n"):
                            break
                        name, _, value = t.decode("latin-1").partition(":")
                        trailers.append([name.strip(), value.strip()])
                    break
                left = size
                while left:
                    data = self.rfile.read1(min(left, 262144))
                    if not data:
                        raise _Aborted("eof in chunk")
                    left -= len(data)
                    consume(data)
                crlf = self.rfile.readline(3)
                if crlf not in (b"\r\n", b"\n"):
                    raise _Aborted("missing chunk CRLF")
            chunked = True
        elif cl is not None:
            left = int(cl)
            while left:
                data = self.rfile.read1(min(left, 262144))
                if not data:
                    raise _Aborted("eof in body (%d left)" % left)
                left -= len(data)
                consume(data)
            chunked = False
        else:
            chunked = False
        self._chunked_req = chunked
        return length, h.hexdigest(), bytes(kept) if len(kept) == length else None, trailers

    # -- responses ----------------------------------------------------------

    def _start(self, code, headers=(), length=None, chunked=False, reason=None):
        self.send_response(code, reason)
        self.send_header("x-peer", self.peer.name)
        for k, v in headers:
            self.send_header(k, v)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif length is not None:
            self.send_header("Content-Length", str(length))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()

    def _simple(self, code, body=b"", ctype="text/plain", headers=()):
        if isinstance(body, str):
            body = body.encode()
        no_body = code in (204, 304)
        self._start(code, [("Content-Type", ctype)] + list(headers),
                    length=None if no_body else len(body))
        if self.command != "HEAD" and not no_body:
            self.wfile.write(body)

    def _write_chunk(self, data):
        self.wfile.write(b"%x\r\n" % len(data))
        self.wfile.write(data)
        self.wfile.write(b"\r\n")

    # -- dispatch -----------------------------------------------------------

    def _dispatch(self):
        url = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query).items()}
        path = url.path
        rec = {
            "method": self.command,
            "path": path,
            "target": self.path,
            "version": self.request_version,
            "headers": [[k, v] for k, v in self.headers.items()],
            "expect_continue": self._expect_seen,
            "t_start": time.monotonic(),
            "peer_port": self.client_address[1],
        }
        self.peer._begin(rec)
        try:
            self._route(path, q, rec)
            rec["completed"] = True
        except _Aborted as e:
            rec["aborted"] = str(e)
            self.peer._bump("requests_aborted")
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError, socket.timeout, OSError) as e:
            rec["aborted"] = "%s: %s" % (type(e).__name__, e)
            self.peer._bump("requests_aborted")
            self.close_connection = True
        finally:
            rec["t_end"] = time.monotonic()
            self.peer._end(rec)

    def _route(self, path, q, rec):
        parts = path.strip("/").split("/")
        head = parts[0] if parts else ""
        is_head = self.command == "HEAD"

        if head == "sha256":
            length, sha, _, trailers = self._read_body(
                read_delay=int(q.get("read_delay_ms", 0)) / 1000.0,
                pause=int(q.get("pause_ms", 0)) / 1000.0,
                on_data=lambda n: rec.__setitem__("received", rec.get("received", 0) + n))
            self.peer._bump("requests_completed")
            rec.update(body_length=length, body_sha256=sha)
            self._simple(200, json.dumps({"length": length, "sha256": sha, "trailers": trailers,
                                          "chunked": self._chunked_req}),
                         "application/json")
            return

        # every other route reads (and records) the body first
        length, sha, kept, trailers = self._read_body()
        rec.update(body_length=length, body_sha256=sha, trailers=trailers, chunked=self._chunked_req)
        self.peer._bump("requests_completed")

        if head == "echo":
            doc = {
                "method": self.command, "path": path, "target": self.path,
                "version": self.request_version,
                "headers": rec["headers"], "body_length": length, "body_sha256": sha,
                "body": kept.decode("latin-1") if kept is not None else None,
                "trailers": trailers, "expect_continue": self._expect_seen,
                "chunked": self._chunked_req, "peer": self.peer.name,
            }
            self._simple(200, json.dumps(doc), "application/json")
        elif head == "bytes" and len(parts) == 2:
            n = int(parts[1])
            chunked = q.get("chunked") == "1"
            wsize = int(q.get("chunk", BLOCK))
            self._start(200, [("Content-Type", "application/octet-stream")],
                        length=None if chunked else n, chunked=chunked)
            if is_head:
                return
            rec["sent"] = 0
            for m in pattern_blocks(n, min(wsize, BLOCK)):
                if chunked:
                    self._write_chunk(m)
                else:
                    self.wfile.write(m)
                rec["sent"] += len(m)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        elif head == "status" and len(parts) == 2:
            code = int(parts[1])
            self._simple(code, "status %d\n" % code)
        elif head == "delay" and len(parts) == 2:
            ms = min(int(parts[1]), 120000)
            time.sleep(ms / 1000.0)
            n = int(q.get("body", 0))
            if n:
                self._simple(200, pattern_bytes(n), "application/octet-stream")
            else:
                self._simple(200, "delayed %d\n" % ms)
        elif head == "slow":
            n = int(q.get("bytes", 20))
            interval = int(q.get("interval_ms", 100)) / 1000.0
            step = max(1, int(q.get("chunk", 1)))
            body = pattern_bytes(n)
            self._start(200, [("Content-Type", "application/octet-stream")], length=n)
            if is_head:
                return
            rec["sent"] = 0
            for off in range(0, n, step):
                self.wfile.write(body[off:off + step])
                rec["sent"] += len(body[off:off + step])
                if off + step < n:
                    time.sleep(interval)
        elif head == "chunked":
            n = int(q.get("n", 5))
            size = int(q.get("size", 10))
            interval = int(q.get("interval_ms", 0)) / 1000.0
            with_trailers = q.get("trailers") == "1"
            extra = [("Content-Type", "application/octet-stream")]
            if with_trailers:
                extra.append(("Trailer", "x-checksum, x-count"))
            self._start(200, extra, chunked=True)
            if is_head:
                return
            body = pattern_bytes(n * size)
            for i in range(n):
                self._write_chunk(body[i * size:(i + 1) * size])
                if interval and i + 1 < n:
                    time.sleep(interval)
            if with_trailers:
                self.wfile.write(b"0\r\nx-checksum: %s\r\nx-count: %d\r\n\r\n"
                                 % (hashlib.sha256(body).hexdigest().encode(), n))
            else:
                self.wfile.write(b"0\r\n\r\n")
        elif head == "early-hints":
            self.wfile.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n")
            time.sleep(int(q.get("gap_ms", 50)) / 1000.0)
            self._simple(200, "after early hints\n", headers=[("Link", "</style.css>; rel=preload; as=style")])
        elif head == "hop":
            self._simple(200, "hop\n", headers=[
                ("Connection", "x-hop-custom"),
                ("X-Hop-Custom", "must-not-pass"),
                ("Keep-Alive", "timeout=5, max=100"),
                ("Proxy-Connection", "keep-alive"),
                ("Upgrade", "foo/1"),
                ("X-End-To-End", "kept"),
            ])
        elif head == "truncate":
            # promises more than it sends, then closes: an upstream dying mid-body
            n = int(q.get("len", 1000))
            send = int(q.get("send", n // 2))
            chunked = q.get("chunked") == "1"
            self._start(200, [("Content-Type", "application/octet-stream")],
                        length=None if chunked else n, chunked=chunked)
            body = pattern_bytes(send)
            if chunked:
                self._write_chunk(body)
            else:
                self.wfile.write(body)
            time.sleep(int(q.get("linger_ms", 100)) / 1000.0)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
        elif head == "close":
            self.close_connection = True
            self._simple(200, "closing\n")
        else:
            self._simple(404, "no route %s\n" % path)


class Http1Peer(ThreadedHttpPeer):
    """An in-process HTTP/1.1 server on 127.0.0.1 (or `host`)."""

    def __init__(self, name="http1", host="127.0.0.1", port=0, ssl_context=None):
        self.name = name
        self.host = host
        self.port = port
        self.ssl_context = ssl_context   # None: plaintext
        self._lock = threading.Lock()
        self._conns = set()
        self._server = None
        self._thread = None
        self.reset()

    # counters ---------------------------------------------------------------
    def reset(self):
        with self._lock:
            self.counters = {"connections": 0, "requests_started": 0,
                             "requests_completed": 0, "requests_aborted": 0}
            self.paths = {}
            self.records = []
            self.inflight = 0
            self.max_inflight = 0

    def _bump(self, key, n=1):
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n

    def _conn_opened(self, sock):
        with self._lock:
            self._conns.add(sock)
            self.counters["connections"] += 1

    def _begin(self, rec):
        with self._lock:
            self.records.append(rec)
            self.paths[rec["path"]] = self.paths.get(rec["path"], 0) + 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)

    def _end(self, rec):
        with self._lock:
            self.inflight -= 1

    def count(self, key):
        with self._lock:
            return self.counters.get(key, 0)

    def requests(self, path=None):
        with self._lock:
            return [r for r in self.records if path is None or r["path"] == path]

    def last(self, path=None):
        r = self.requests(path)
        return r[-1] if r else None

    def wait_for(self, pred, timeout=5.0, interval=0.01):
        """Polls pred() until true or timeout; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            v = pred()
            if v or time.monotonic() >= deadline:
                return v
            time.sleep(interval)

    # lifecycle ----------------------------------------------------------------
    def start(self):
        if self.ssl_context is None:
            return self._serve(_Handler, "http1-peer-%s" % self.name)
        return self._serve(_Handler, "https-peer-%s" % self.name,
                           server_base=tls_server_base(self.ssl_context))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--name", default="http1")
    a = ap.parse_args()
    p = Http1Peer(a.name, a.host, a.port)
    print(p.start(), flush=True)
    serve_until_interrupted([p])


if __name__ == "__main__":
    sys.exit(main())

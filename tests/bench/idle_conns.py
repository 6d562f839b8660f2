#!/usr/bin/python3
"""tests/bench/idle_conns.py: memory per idle client connection of the
sidecar, HAProxy and nghttpx, in one run.

    /usr/bin/python3 tests/bench/idle_conns.py [-n 3000] [--mode h2|http1|both|mixed|held]
        [--only sidecar,haproxy,nghttpx] [--sidecar PATH] [--batch 100]
        [--settle 2] [--keep-work]

For each proxy (started with the configurations of run.sh, conf/*.in,
cleartext, in front of the same gRPC and HTTP/1.1 backends, all on
127.0.0.1), in turn:

  1. start it, make one warm-up call (so the backend connection and the
     proxy's first-use allocations are not counted), wait, read the RSS of
     its process tree (VmRSS of every process, /proc);
  2. open N client connections in batches of --batch; on each, one request:
     h2 mode: h2c prior knowledge to the gRPC listener, one unary gRPC call
     (POST /bench.Bench/Echo, application/grpc, one 16-byte message), read
     until the response's trailers (END_STREAM); http1 mode: one
     `GET / HTTP/1.1` keep-alive to the HTTP/1 listener, read the whole
     response; the connection stays open and idle;
  3. wait --settle seconds, read the RSS of the tree again;
  4. report (RSS with N idle connections - RSS before) / N, in KiB, then
     close everything and stop the proxy.

--mode mixed: N connections at once, half HTTP/1.1 keep-alive idle after
one GET, half h2c each holding one gRPC call open (HEADERS and one message
sent, the request never ended, so the proxy keeps the stream and its
upstream stream); while they are held, a probe makes --probes sequential
GETs on a connection of its own and reports their p50/p99 (the same probe
runs before the connections open, for reference). The limits of the
proxies' configurations are raised to fit N in every mode (HAProxy maxconn,
the sidecar's limits.max_connections); HAProxy needs two descriptors per maxconn, so
with a hard limit of 20,000 descriptors -n is at most about 9,900.
--mode held: the same with all N connections h2c holding a call (the
HTTP/2 half of mixed on its own).

The HTTP/2 client is a minimal raw one (no python3-h2 on Debian 12 by
default): connection preface, an empty SETTINGS, HEADERS (HPACK literal
fields without indexing, new names), DATA with END_STREAM; it acknowledges
the server's SETTINGS and checks that the response head starts with
`:status: 200` (HPACK static index 8) and that the stream ends.

Every loop is bounded in count and time; every process started is killed on
exit (also on an exception or Ctrl-C). Output: one Markdown table with the
ratios of the sidecar to each peer.
"""
import argparse
import os
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402  (tree RSS, same figures as run.sh)

PROXIES = ("sidecar", "haproxy", "nghttpx")
GRPC_PATH = "/bench.Bench/Echo"
# One length-prefixed gRPC message: protobuf field 1 = "hello-sidecar!".
GRPC_MSG = b"\x00\x00\x00\x00\x10\x0a\x0ehello-sidecar!"
BATCH_TIMEOUT = 15.0        # seconds for one batch of calls
START_TIMEOUT = 10.0


def log(msg):
    print(f"[idle_conns {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes

class Procs:
    """Every process started, killed (tree-wide) on exit."""

    def __init__(self):
        self.procs = []

    def start(self, name, argv, logdir):
        out = open(os.path.join(logdir, name + ".log"), "wb")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        out.close()
        self.procs.append(p)
        return p

    def stop(self, p):
        if p.poll() is None:
            pids = benchlib.tree(p.pid)
            p.terminate()
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
            for q in pids:
                try:
                    os.kill(q, signal.SIGKILL)
                except OSError:
                    pass
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        if p in self.procs:
            self.procs.remove(p)

    def stop_all(self):
        for p in reversed(list(self.procs)):
            self.stop(p)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, proc, seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def render(template, out, subst):
    text = open(template).read()
    text = re.sub(r"(?ms)^# BEGIN tls.*?^# END tls\n?", "", text)   # cleartext only
    for k, v in subst.items():
        text = text.replace(f"@{k}@", str(v))
    with open(out, "w") as f:
        f.write(text)


def http_get_status(port, path, timeout=1.0):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
            data = s.recv(64)
            m = re.match(rb"HTTP/1\.[01] (\d+)", data)
            return int(m.group(1)) if m else None
    except OSError:
        return None


# ---------------------------------------------------------------- HTTP/2 client

def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def hpack_literal(name, value):
    """Literal header field without indexing, new name (RFC 7541 6.2.2);
    names and values here are under 127 bytes, so one-byte lengths."""
    n, v = name.encode(), value.encode()
    assert len(n) < 127 and len(v) < 127
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def grpc_request_bytes(port, end=True):
    """end=False: the request is left open (no END_STREAM), and the
    server's SETTINGS are acknowledged up front (it sends them first)."""
    block = b"".join(hpack_literal(k, v) for k, v in (
        (":method", "POST"), (":scheme", "http"), (":path", GRPC_PATH),
        (":authority", f"127.0.0.1:{port}"), ("content-type", "application/grpc"),
        ("te", "trailers")))
    return (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0)       # SETTINGS (empty)
            + (b"" if end else frame(4, 0x1, 0))                        # SETTINGS ACK
            + frame(1, 0x4, 1, block)                                   # HEADERS, END_HEADERS
            + frame(0, 0x1 if end else 0, 1, GRPC_MSG))                 # DATA (END_STREAM)


class H2Call:
    """One connection, one unary call; feed() returns True once the call ended."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.ok_status = None
        self.data = 0
        self.done = False
        self.failed = None

    def feed(self, data):
        self.buf += data
        while len(self.buf) >= 9:
            length = int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < 9 + length:
                break
            ftype, flags = self.buf[3], self.buf[4]
            sid = int.from_bytes(self.buf[5:9], "big") & 0x7FFFFFFF
            payload = self.buf[9:9 + length]
            self.buf = self.buf[9 + length:]
            if ftype == 4 and not flags & 1:                 # SETTINGS: acknowledge
                self.sock.sendall(frame(4, 1, 0))
            elif ftype == 6 and not flags & 1:               # PING: answer
                self.sock.sendall(frame(6, 1, 0, payload))
            elif ftype == 7:                                 # GOAWAY
                self.failed = "GOAWAY"
                self.done = True
            elif ftype == 3 and sid == 1:                    # RST_STREAM
                self.failed = "RST_STREAM"
                self.done = True
            elif ftype == 1 and sid == 1:                    # HEADERS (head or trailers)
                if self.ok_status is None:
                    p = payload
                    if flags & 0x8:                          # PADDED
                        p = p[1:len(p) - p[0]]
                    if flags & 0x20:                         # PRIORITY
                        p = p[5:]
                    i = 0
                    while i < len(p) and (p[i] & 0xE0) == 0x20:   # dynamic table size updates
                        i += 1
                    self.ok_status = i < len(p) and p[i] == 0x88  # indexed :status 200
                if flags & 1:
                    self.done = True
            elif ftype == 0 and sid == 1:                    # DATA
                self.data += length
                if flags & 1:
                    self.done = True
        return self.done

    @property
    def ok(self):
        return self.done and not self.failed and self.ok_status and self.data > 0


class H1Call:
    """One keep-alive GET; feed() returns True once the response is complete."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.done = False
        self.status = None

    def feed(self, data):
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = self.buf[:end].decode("latin-1")
        m = re.match(r"HTTP/1\.1 (\d+)", head)
        self.status = int(m.group(1)) if m else None
        m = re.search(r"(?im)^content-length:\s*(\d+)", head)
        if m and len(self.buf) >= end + 4 + int(m.group(1)):
            self.done = True
        return self.done

    @property
    def ok(self):
        return self.done and self.status == 200


def open_idle(port, n, mode, batch):
    """N connections, one call each, left open. Returns (sockets, ok, failed)."""
    socks, ok, bad = [], 0, 0
    req_h2 = grpc_request_bytes(port)
    req_h1 = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    ep = select.epoll()
    try:
        for start in range(0, n, batch):
            calls = {}
            for _ in range(min(batch, n - start)):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(req_h2 if mode == "h2" else req_h1)
                s.setblocking(False)
                socks.append(s)
                calls[s.fileno()] = H2Call(s) if mode == "h2" else H1Call(s)
                ep.register(s.fileno(), select.EPOLLIN)
            deadline = time.monotonic() + BATCH_TIMEOUT
            pending = set(calls)
            while pending and time.monotonic() < deadline:
                for fd, _ in ep.poll(0.5):
                    c = calls[fd]
                    try:
                        data = c.sock.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError as e:
                        c.failed = str(e)
                        data = b""
                    if not data:
                        c.done = True
                        c.failed = getattr(c, "failed", None) or "closed"
                    elif not c.feed(data):
                        continue
                    pending.discard(fd)
                    ep.unregister(fd)
            for fd in pending:
                ep.unregister(fd)
            for c in calls.values():
                if c.ok:
                    ok += 1
                else:
                    bad += 1
            # The blocking sendall of an h2 SETTINGS ACK needs blocking mode back off.
            for c in calls.values():
                c.sock.setblocking(True)
    finally:
        ep.close()
    return socks, ok, bad


def open_held(port, n, batch):
    """N h2c connections, each with one gRPC call left open. Returns the
    sockets; what the proxy sends back is read and dropped."""
    socks = []
    req = grpc_request_bytes(port, end=False)
    for start in range(0, n, batch):
        for _ in range(min(batch, n - start)):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(req)
            s.setblocking(False)
            socks.append(s)
        drain(socks[start:], 0.2)
    return socks


def drain(socks, seconds):
    """Reads whatever arrived on socks for at most `seconds`; returns how
    many of them the peer closed."""
    closed = 0
    end = time.monotonic() + seconds
    pending = list(socks)
    while pending and time.monotonic() < end:
        nxt = []
        for s in pending:
            try:
                if s.recv(65536) == b"":
                    closed += 1
                    continue
                nxt.append(s)
            except BlockingIOError:
                pass
            except OSError:
                closed += 1
        pending = nxt
        if pending:
            time.sleep(0.01)
    return closed


def probe(port, n):
    """n sequential GETs on one keep-alive connection: (p50, p99) in ms, or
    None when one failed."""
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        req = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
        for _ in range(n):
            t0 = time.monotonic()
            s.sendall(req)
            c = H1Call(s)
            while not c.done:
                data = s.recv(65536)
                if not data:
                    return None
                c.feed(data)
            if not c.ok:
                return None
            times.append((time.monotonic() - t0) * 1000.0)
    times.sort()
    return times[len(times) // 2], times[min(len(times) - 1, int(len(times) * 0.99))]


# ---------------------------------------------------------------- proxies

class Bench:
    def __init__(self, args):
        self.args = args
        self.procs = Procs()
        self.work = tempfile.mkdtemp(prefix="idle-conns.")
        os.chmod(self.work, 0o755)
        self.ports = {"BACKEND_GRPC": free_port(), "BACKEND_HTTP": free_port(), "WORK": self.work}

    def close(self):
        self.procs.stop_all()
        if self.args.keep_work:
            log(f"work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    def start_backends(self):
        for b, libs in (("grpc_backend", ["-lnghttp2", "-lev"]), ("http1_backend", [])):
            subprocess.run(["cc", "-O2", "-Wall", "-Wextra", "-o", os.path.join(self.work, b),
                            os.path.join(HERE, b + ".c")] + libs, check=True, timeout=120)
        for b, port, arg in (("grpc_backend", self.ports["BACKEND_GRPC"], "16"),
                             ("http1_backend", self.ports["BACKEND_HTTP"], "64")):
            p = self.procs.start(b, [os.path.join(self.work, b), str(port), arg], self.work)
            if not wait_port(port, p, 5):
                raise RuntimeError(f"{b} did not start")

    def start(self, name):
        """Starts a proxy; returns (process, grpc port, http port)."""
        sub = dict(self.ports, PORT_GRPC=free_port(), PORT_HTTP=free_port(), PORT_ADMIN=free_port())
        w = self.work
        if name == "sidecar":
            render(os.path.join(HERE, "conf", "sidecar.yaml.in"), f"{w}/sidecar.yaml", sub)
            if self.args.n + 1000 > 10000:  # the sidecar's default limits.max_connections
                with open(f"{w}/sidecar.yaml", "a") as f:
                    f.write(f"limits: {{max_connections: {self.args.n + 1000}}}\n")
            p = self.procs.start(name, [self.args.sidecar, "--config", f"{w}/sidecar.yaml"], w)
            end = time.monotonic() + START_TIMEOUT
            while time.monotonic() < end and p.poll() is None:
                if http_get_status(sub["PORT_ADMIN"], "/ready") == 200:
                    break
                time.sleep(0.05)
            else:
                raise RuntimeError(f"sidecar not ready: {open(w + '/sidecar.log').read()[-400:]}")
        elif name == "haproxy":
            render(os.path.join(HERE, "conf", "haproxy.cfg.in"), f"{w}/haproxy.cfg", sub)
            if self.args.n + 100 > 4096:  # conf/haproxy.cfg.in's maxconn
                with open(f"{w}/haproxy.cfg") as f:
                    cfg = f.read()
                with open(f"{w}/haproxy.cfg", "w") as f:
                    # HAProxy asks for 2 x maxconn + 15 descriptors and will not start
                    # with fewer: maxconn is what the hard limit allows, at most N + 100.
                    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
                    mc = min(self.args.n + 100, (hard - 15) // 2)
                    if mc < self.args.n + 2:
                        log(f"haproxy: maxconn {mc} (the descriptor hard limit is {hard}): "
                            f"fewer than N + 2; use a smaller -n")
                    f.write(re.sub(r"maxconn \d+", f"maxconn {mc}\n    ulimit-n {2 * mc + 15}", cfg))
            p = self.procs.start(name, ["haproxy", "-db", "-f", f"{w}/haproxy.cfg"], w)
        elif name == "nghttpx":
            render(os.path.join(HERE, "conf", "nghttpx.conf.in"), f"{w}/nghttpx.conf", sub)
            p = self.procs.start(name, ["nghttpx", f"--conf={w}/nghttpx.conf"], w)
        else:
            raise ValueError(name)
        for port in (sub["PORT_GRPC"], sub["PORT_HTTP"]):
            if not wait_port(port, p, START_TIMEOUT):
                raise RuntimeError(f"{name} did not listen on {port}")
        return p, sub["PORT_GRPC"], sub["PORT_HTTP"]

    def measure_mixed(self, name, n_h1):
        """N connections at once: n_h1 HTTP/1.1 idle, the rest h2c holding a call."""
        n = self.args.n
        p, pg, ph = self.start(name)
        try:
            warm, wok, _ = open_idle(pg, 4, "h2", 4)
            for s in warm:
                s.close()
            time.sleep(self.args.settle)
            quiet = probe(ph, self.args.probes)
            before = benchlib.rss_kib(p.pid)
            h1, ok1, bad1 = open_idle(ph, n_h1, "http1", self.args.batch) if n_h1 else ([], 0, 0)
            for s in h1:
                s.setblocking(False)
            held = open_held(pg, n - n_h1, self.args.batch)
            time.sleep(self.args.settle)
            closed = drain(held + h1, 0.5)
            after = benchlib.rss_kib(p.pid)
            loaded = probe(ph, self.args.probes)
            alive = p.poll() is None
            for s in held + h1:
                s.close()
            per = (after - before) / n
            log(f"{name}: {n_h1} HTTP/1.1 idle ({ok1} ok), {n - n_h1} h2c with a held stream, "
                f"{closed} closed by the proxy; RSS {before} -> {after} KiB: {per:.2f} KiB per connection; "
                f"probe p50/p99 {quiet} ms before, {loaded} ms held")
            return {"before": before, "after": after, "per": per, "ok": ok1 + (n - n_h1) - closed,
                    "bad": bad1 + closed, "alive": alive, "quiet": quiet, "loaded": loaded}
        finally:
            self.procs.stop(p)

    def measure(self, name, mode):
        if mode in ("mixed", "held"):
            return self.measure_mixed(name, self.args.n // 2 if mode == "mixed" else 0)
        n = self.args.n
        p, pg, ph = self.start(name)
        port = pg if mode == "h2" else ph
        try:
            # Warm-up: the backend connection and first-use allocations.
            warm, wok, _ = open_idle(port, 4, mode, 4)
            for s in warm:
                s.close()
            time.sleep(self.args.settle)
            before = benchlib.rss_kib(p.pid)
            t0 = time.monotonic()
            socks, ok, bad = open_idle(port, n, mode, self.args.batch)
            took = time.monotonic() - t0
            time.sleep(self.args.settle)
            after = benchlib.rss_kib(p.pid)
            alive = p.poll() is None
            for s in socks:
                s.close()
            per = (after - before) / n if n else 0.0
            log(f"{name} {mode}: {ok} ok, {bad} failed of {n} (warm-up {wok}/4) in {took:.1f} s; "
                f"RSS {before} -> {after} KiB: {per:.2f} KiB per idle connection")
            return {"before": before, "after": after, "per": per, "ok": ok, "bad": bad, "alive": alive}
        finally:
            self.procs.stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=3000, help="idle connections per proxy (default 3000)")
    ap.add_argument("--mode", choices=("h2", "http1", "both", "mixed", "held"), default="h2")
    ap.add_argument("--probes", type=int, default=200, help="mixed, held: sequential probe GETs (default 200)")
    ap.add_argument("--only", default=",".join(PROXIES), help="comma-separated subset of " + ",".join(PROXIES))
    ap.add_argument("--sidecar", default=os.environ.get("SIDECAR_BIN", os.path.join(ROOT, "build", "sidecar")))
    ap.add_argument("--batch", type=int, default=100, help="connections opened and called at once (default 100)")
    ap.add_argument("--settle", type=float, default=2.0, help="seconds idle before reading RSS (default 2)")
    ap.add_argument("--keep-work", action="store_true")
    args = ap.parse_args()
    if not 1 <= args.n <= 20000 or not 1 <= args.batch <= 1000 or not 0 <= args.settle <= 60:
        ap.error("-n 1..20000, --batch 1..1000, --settle 0..60")
    only = [x for x in args.only.split(",") if x]
    for x in only:
        if x not in PROXIES:
            ap.error(f"unknown proxy {x}")
    if "sidecar" in only and not os.access(args.sidecar, os.X_OK):
        ap.error(f"{args.sidecar} is not an executable (--sidecar)")
    # Client sockets here, the proxies' (inherited), each with a backend or two.
    want = args.n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(want, soft), hard), hard))
        if resource.getrlimit(resource.RLIMIT_NOFILE)[0] < want:
            ap.error(f"need {want} file descriptors, the hard limit is {hard}")

    modes = ("h2", "http1") if args.mode == "both" else (args.mode,)
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = {}
    try:
        bench.start_backends()
        for mode in modes:
            for name in only:
                try:
                    results[(mode, name)] = bench.measure(name, mode)
                except (RuntimeError, OSError) as e:
                    log(f"{name} {mode}: n/a: {e}")
    finally:
        bench.close()

    print(f"Memory per idle client connection, N = {args.n} (batches of {args.batch}, "
          f"RSS read {args.settle:g} s after the last call; KiB = (RSS with N idle - RSS before) / N)\n")
    print("| connection | proxy | RSS before | RSS with N idle | KiB per idle connection | calls ok |")
    print("|---|---|---:|---:|---:|---:|")
    label = {"h2": "h2c, after one gRPC call", "http1": "HTTP/1.1 keep-alive, after one GET",
             "mixed": "half HTTP/1.1 idle, half h2c with a held gRPC stream",
             "held": "h2c with a held gRPC stream"}
    for mode in modes:
        for name in only:
            r = results.get((mode, name))
            if not r:
                print(f"| {label[mode]} | {name} | n/a | | | |")
                continue
            print(f"| {label[mode]} | {name} | {r['before'] / 1024:.1f} MiB | {r['after'] / 1024:.1f} MiB "
                  f"| {r['per']:.2f} | {r['ok']}/{args.n}{'' if r['alive'] else ' (exited)'} |")
    print()
    for mode in modes:
        s = results.get((mode, "sidecar"))
        for name in only:
            r = results.get((mode, name))
            if name != "sidecar" and s and r and r["per"] > 0:
                print(f"- {label[mode]}: sidecar / {name}: {s['per'] / r['per']:.2f}x")
    for name in only:
        r = results.get((modes[0], name)) if modes[0] in ("mixed", "held") else None
        if r:
            fmt = lambda t: "failed" if t is None else f"p50 {t[0]:.2f} ms, p99 {t[1]:.2f} ms"
            print(f"- {name}: probe ({args.probes} sequential GETs) before: {fmt(r['quiet'])}; "
                  f"with the N connections held: {fmt(r['loaded'])}")
    bad = [f"{m} {p}" for (m, p), r in results.items() if r["bad"] or not r["alive"]]
    if bad:
        print(f"\nWarning: failed calls or a proxy that exited: {', '.join(bad)}")
    return 0 if results and not bad else 1


if __name__ == "__main__":
    sys.exit(main())

"""Integration-test harness: runs the real sidecar binary against real peers
on loopback.

- free_port(), wait_port(): ports on 127.0.0.1
- Sidecar: writes a config (dict or YAML text) into a temp dir, starts
  $SC_BINARY --config, captures its log, waits for GET /ready == 200,
  stops it with SIGTERM, reads VmRSS, queries the admin endpoint
- Stats: a Prometheus text parser
- RssSampler: samples a process's VmRSS in a thread during a transfer
- raw HTTP/1.1 helpers (RawConn, read_response) for byte-exact tests
- run(): subprocess with a hard timeout (curl, h2load, nghttp)
- SidecarTestCase: a TestCase base that starts peers, sidecars and helper
  processes, always cleans them up, and fails a test whose sidecar died

The binary is $SC_BINARY, or ../../build/sidecar relative to this file.
Every wait and loop here is bounded in time.
"""

import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
PEERS = os.path.join(ROOT, "tests", "peers")
if PEERS not in sys.path:
    sys.path.insert(0, PEERS)

from http1_server import Http1Peer, pattern_blocks, pattern_bytes, pattern_sha256  # noqa: E402,F401

LOOPBACK = "127.0.0.1"
READY_TIMEOUT = float(os.environ.get("SC_READY_TIMEOUT", "10"))
KEEP_TMP = os.environ.get("SC_KEEP_TMP") == "1"


# --------------------------------------------------------------------------
# binary and tools
# --------------------------------------------------------------------------

def sidecar_binary():
    """Path of the sidecar binary. Raises SkipTest when it was not given and
    the default build path does not exist; fails when $SC_BINARY is wrong."""
    env = os.environ.get("SC_BINARY")
    if env:
        if not os.access(env, os.X_OK):
            raise AssertionError("SC_BINARY=%s is not an executable file" % env)
        return env
    default = os.path.join(ROOT, "build", "sidecar")
    if os.access(default, os.X_OK):
        return default
    raise unittest.SkipTest("no sidecar binary (set SC_BINARY or build %s)" % default)


def have_tool(name):
    return shutil.which(name) is not None


# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------

_ports_lock = threading.Lock()
_ports_given = set()


def free_port(host=LOOPBACK):
    """A TCP port that was free on `host` a moment ago (never the same one
    twice in this process)."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(200):
        with socket.socket(fam, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        with _ports_lock:
            if port not in _ports_given:
                _ports_given.add(port)
                return port
    raise RuntimeError("no free port found")


def port_open(port, host=LOOPBACK, timeout=0.2):
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(port, host=LOOPBACK, timeout=5.0, open_=True):
    """Waits until `port` accepts connections (or, with open_=False, refuses
    them). Returns True on success, False on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host) == open_:
            return True
        time.sleep(0.02)
    return port_open(port, host) == open_


def wait_until(pred, timeout=5.0, interval=0.02):
    """Polls pred() until truthy or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= deadline:
            return v
        time.sleep(interval)


# --------------------------------------------------------------------------
# YAML (a small block-style emitter: no PyYAML needed)
# --------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9_./][A-Za-z0-9_./:%+@-]*\Z")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}
_NUMBER = re.compile(r"[-+]?(\d[\d_]*(\.\d*)?|\.\d+)([eE][-+]?\d+)?\Z|0x[0-9a-fA-F]+\Z|0o[0-7]+\Z")


def _scalar(v):
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v)
    if _PLAIN.match(s) and s.lower() not in _RESERVED and not _NUMBER.match(s) and ": " not in s:
        return s
    return json.dumps(s)


def to_yaml(obj):
    """Emits dicts, lists and scalars as block-style YAML."""
    out = []

    def emit(o, ind):
        pad = " " * ind
        if isinstance(o, dict):
            for k, v in o.items():
                if isinstance(v, (dict, list)) and v:
                    out.append("%s%s:" % (pad, _scalar(k)))
                    emit(v, ind + 2)
                elif isinstance(v, dict):
                    out.append("%s%s: {}" % (pad, _scalar(k)))
                elif isinstance(v, list):
                    out.append("%s%s: []" % (pad, _scalar(k)))
                else:
                    out.append("%s%s: %s" % (pad, _scalar(k), _scalar(v)))
        elif isinstance(o, list):
            for v in o:
                if isinstance(v, (dict, list)) and v:
                    start = len(out)
                    emit(v, ind + 2)
                    out[start] = pad + "- " + out[start][ind + 2:]
                else:
                    out.append("%s- %s" % (pad, _scalar(v) if not isinstance(v, (dict, list))
                                           else ("{}" if isinstance(v, dict) else "[]")))
        else:
            out.append(pad + _scalar(o))

    emit(obj, 0)
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------
# config builders
# --------------------------------------------------------------------------

def addr(port, host=LOOPBACK):
    return "[%s]:%d" % (host, port) if ":" in host else "%s:%d" % (host, port)


def upstream(name, protocol, listen_port, instances, timeouts=None, **extra):
    """One inline policy. `instances` are ports on 127.0.0.1 or "host:port" strings."""
    u = {
        "upstream": name,
        "protocol": protocol,
        "listen": addr(listen_port),
        "discovery": {"static": [i if isinstance(i, str) else addr(i) for i in instances]},
        "timeouts": dict({"connect": "250ms", "request": "5s", "per_try": 0, "idle": "60s"},
                         **(timeouts or {})),
    }
    u.update(extra)
    return u


def base_config(admin_port, upstreams=(), inbound=None, workers=2, drain="5s",
                limits=None, log_level="info", name="test"):
    """A complete sidecar.yaml as a dict. `inbound` is None or a dict with
    listen_port, app_port, app_protocol and optional timeouts."""
    cfg = {"service": {"name": name, "id": name + "-1"}}
    if inbound:
        cfg["inbound"] = {
            "listen": addr(inbound["listen_port"]),
            "app": addr(inbound["app_port"]),
            "app_protocol": inbound.get("app_protocol", "http1"),
            "timeouts": dict({"connect": "250ms", "request": "5s", "idle": "60s",
                              "header_read": "5s"}, **inbound.get("timeouts", {})),
        }
    cfg["admin"] = {"listen": addr(admin_port)}
    cfg["workers"] = workers
    cfg["drain_timeout"] = drain
    cfg["limits"] = dict({"max_header_bytes": 65536, "max_request_line": 8192,
                          "stream_buffer": 65536}, **(limits or {}))
    cfg["log"] = {"level": log_level}
    if upstreams:
        cfg["upstreams"] = list(upstreams)
    return cfg


# --------------------------------------------------------------------------
# process registry: nothing survives the test process
# --------------------------------------------------------------------------

_procs_lock = threading.Lock()
_procs = set()


def _track(p):
    with _procs_lock:
        _procs.add(p)


def _untrack(p):
    with _procs_lock:
        _procs.discard(p)


def kill_proc(p, grace=0.0):
    """Stops a Popen: SIGTERM with `grace` seconds to exit, then SIGKILL."""
    if p.poll() is None:
        try:
            if grace > 0:
                p.terminate()
                try:
                    p.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            if p.poll() is None:
                p.kill()
            p.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
    _untrack(p)


@atexit.register
def _kill_all():
    with _procs_lock:
        left = list(_procs)
    for p in left:
        kill_proc(p)


def spawn(args, log_path=None, **kw):
    """Starts a helper process (tracked; killed at exit at the latest)."""
    if log_path:
        log = open(log_path, "ab")
        kw.setdefault("stdout", log)
        kw.setdefault("stderr", subprocess.STDOUT)
    p = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
    if log_path:
        log.close()
    _track(p)
    return p


def run(args, timeout=60, input=None, **kw):
    """subprocess.run with a hard timeout; returns CompletedProcess with
    bytes stdout/stderr (returncode -9 and a note in stderr on timeout)."""
    try:
        return subprocess.run(args, input=input, capture_output=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(args, -9, e.stdout or b"",
                                           (e.stderr or b"") + b"\n[harness] timed out after %ds" % timeout)


class Blackhole:
    """A loopback address whose connect() hangs, like an unreachable host:
    a listening socket (backlog 0) that never accepts, its accept queue
    filled by a few connections, so the kernel drops further SYNs."""

    def __init__(self, fillers=4):
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.bind((LOOPBACK, 0))
        self.lsock.listen(0)
        self.port = self.lsock.getsockname()[1]
        self.fillers = []
        for _ in range(fillers):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.connect_ex((LOOPBACK, self.port))
            self.fillers.append(s)
        time.sleep(0.05)

    def hangs(self, timeout=0.3):
        """True when a fresh connect() times out (the trick works here)."""
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect((LOOPBACK, self.port))
            return False
        except socket.timeout:
            return True
        except OSError:
            return False
        finally:
            s.close()

    def open_up(self):
        """Let connections in again: the fillers go (their pending connects
        stop); the one the kernel queued is still to be accepted, and a
        connect whose SYN was dropped gets in at its retransmission."""
        for s in self.fillers:
            s.close()
        self.fillers = []

    def close(self):
        self.open_up()
        self.lsock.close()


def curl(*args, timeout=60, input=None):
    """curl -sS --noproxy '*' ARGS with a hard timeout; CompletedProcess."""
    return run(["curl", "-sS", "--noproxy", "*"] + [str(a) for a in args], timeout=timeout, input=input)


def curl_download(url, *args, max_time=120, stall_s=15):
    """Streams `curl URL` through sha256 without storing it; curl gives up
    after max_time, or when nothing arrived for stall_s seconds (exit 28).
    Returns (returncode, length, sha256 hex, stderr text)."""
    import hashlib
    p = spawn(["curl", "-sS", "--noproxy", "*", "--max-time", str(max_time),
               "--speed-limit", "1", "--speed-time", str(stall_s)] + [str(a) for a in args]
              + ["-o", "-", url], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    h = hashlib.sha256()
    n = 0
    try:
        while True:
            b = p.stdout.read(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
        try:
            p.wait(max_time + 5)
        except subprocess.TimeoutExpired:
            pass
        err = p.stderr.read().decode("utf-8", "replace")
    finally:
        p.stdout.close()
        p.stderr.close()
        kill_proc(p)
    return p.returncode, n, h.hexdigest(), err


def send_pattern(sock, n, block=1 << 20, progress=None):
    """Sends n bytes of the peers' deterministic pattern on `sock`;
    progress[0], when given, counts the bytes sent so far."""
    for m in pattern_blocks(n, block):
        sock.sendall(m)
        if progress is not None:
            progress[0] += len(m)


RSS_LIMIT_KIB = int(os.environ.get("SC_RSS_LIMIT_MIB", "64")) * 1024


class ScriptedUpstream:
    """A raw HTTP/1.1 upstream that answers every request head with the
    exact bytes of `response` in ONE write (then keeps the connection open
    for keep-alive). For byte-exact framing cases the Python peer cannot
    produce, e.g. a whole chunked body arriving in a single burst."""

    def __init__(self, response):
        self.response = response
        self.requests = 0
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((LOOPBACK, 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self._stop = False
        self._conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            self._conns.append(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = b""
        try:
            while not self._stop:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                _, _, buf = buf.partition(b"\r\n\r\n")   # requests here carry no body
                self.requests += 1
                c.sendall(self.response)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self._stop = True
        self.lsock.close()
        for c in self._conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --------------------------------------------------------------------------
# the sidecar
# --------------------------------------------------------------------------

def read_rss_kib(pid):
    """VmRSS of a process in KiB, or None when it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def http_request(url, method="GET", timeout=5.0, data=None, headers=None):
    """(status, headers dict lower-case, body bytes) of one request with
    urllib, no proxy; an HTTP error status is an answer, not an exception."""
    req = urllib.request.Request(url, method=method, data=data, headers=headers or {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


class Traffic:
    """GETs to `url` every `interval` seconds in a thread, for at most
    `limit` seconds or until stop(); counts the answers by status."""

    def __init__(self, url, interval=0.1, limit=60.0):
        self.url, self.interval, self.limit = url, interval, limit
        self.codes = {}
        self._stop = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        end = time.time() + self.limit
        while not self._stop.is_set() and time.time() < end:
            status = http_request(self.url, timeout=2.0)[0]
            self.codes[status] = self.codes.get(status, 0) + 1
            self._stop.wait(self.interval)

    def stop(self):
        self._stop.set()
        self.t.join(5)


class SidecarError(AssertionError):
    pass


class Sidecar:
    """One sidecar process with its own temp dir, config and log."""

    def __init__(self, config, name="sidecar", files=None, binary=None, args=()):
        self.name = name
        self.binary = binary or sidecar_binary()
        self.dir = tempfile.mkdtemp(prefix="sc-it-%s-" % name)
        self.config_path = os.path.join(self.dir, "sidecar.yaml")
        self.log_path = os.path.join(self.dir, "sidecar.log")
        self.args = list(args)
        self.proc = None
        self.stopped = False          # stop()/kill() was called on purpose
        self.config = config
        text = config if isinstance(config, str) else to_yaml(config)
        with open(self.config_path, "w") as f:
            f.write(text)
        for rel, content in (files or {}).items():
            path = os.path.join(self.dir, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(content if isinstance(content, str) else to_yaml(content))
        self.admin_addr = self._admin_from_config(config)

    @staticmethod
    def _admin_from_config(config):
        if isinstance(config, dict):
            a = config.get("admin", {}).get("listen", "127.0.0.1:19000")
        else:
            m = re.search(r"^admin:.*?listen:\s*([^\s,}]+)", config, re.S | re.M)
            a = m.group(1) if m else "127.0.0.1:19000"
        host, _, port = a.rpartition(":")
        return host.strip("[]"), int(port)

    # -- lifecycle --------------------------------------------------------------
    def start(self, wait_ready=True, timeout=READY_TIMEOUT):
        self.proc = spawn([self.binary, "--config", self.config_path] + self.args,
                          log_path=self.log_path, cwd=self.dir)
        self.stopped = False
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SidecarError("sidecar exited with code %s before it was ready\n%s"
                                   % (self.proc.returncode, self.describe()))
            try:
                status, _, _ = self.admin("/ready", timeout=0.5)
                if status == 200:
                    return
                last = "GET /ready -> %d" % status
            except OSError as e:
                last = "GET /ready: %s" % e
            time.sleep(0.05)
        raise SidecarError("sidecar not ready within %.1fs (%s)\n%s" % (timeout, last, self.describe()))

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=15.0, sig=signal.SIGTERM):
        """Sends `sig` and waits up to `timeout`. Returns the exit code, or
        None when it did not exit in time (it is then killed)."""
        self.stopped = True
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except OSError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                kill_proc(self.proc)
                return None
        _untrack(self.proc)
        return self.proc.returncode

    def kill(self):
        self.stopped = True
        if self.proc is not None:
            kill_proc(self.proc)

    def cleanup(self):
        self.kill()
        if not KEEP_TMP:
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- observation --------------------------------------------------------------
    def rss_kib(self):
        return read_rss_kib(self.proc.pid)

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def sanitizer_report(self):
        """The first sanitizer report in the log, or None."""
        t = self.log_text()
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "ThreadSanitizer", "AddressSanitizer:DEADLYSIGNAL"):
            i = t.find(marker)
            if i >= 0:
                return t[max(0, i - 200): i + 3000]
        return None

    def describe(self):
        rc = None if self.proc is None else self.proc.poll()
        return ("--- sidecar %s (pid %s, exit %s, dir %s) config:\n%s--- log tail:\n%s\n---"
                % (self.name, self.proc.pid if self.proc else None, rc, self.dir,
                   open(self.config_path).read(), self.log_tail()))

    # -- admin -----------------------------------------------------------------------
    def admin_url(self, path):
        host, port = self.admin_addr
        h = "[%s]" % host if ":" in host else host
        return "http://%s:%d%s" % (h, port, path)

    # What the admin endpoint wants on every state-changing request: a header
    # a web page cannot send cross-site without a CORS preflight.
    ADMIN_MARKER = {"X-Sidecar-Admin": "1"}

    def admin(self, path, method="GET", timeout=5.0, data=None, headers=None):
        """(status, headers dict lower-case, body bytes) of an admin request.
        `headers` replaces the default ADMIN_MARKER (pass {} to send none)."""
        return http_request(self.admin_url(path), method=method, timeout=timeout, data=data,
                            headers=self.ADMIN_MARKER if headers is None else headers)

    def admin_json(self, path):
        status, _, body = self.admin(path)
        if status != 200:
            raise SidecarError("GET %s -> %d: %r" % (path, status, body[:500]))
        return json.loads(body)

    def stats(self):
        status, _, body = self.admin("/stats")
        if status != 200:
            raise SidecarError("GET /stats -> %d: %r" % (status, body[:500]))
        return Stats(body.decode("utf-8", "replace"))

    def clusters(self):
        return self.admin_json("/clusters")

    def config_json(self):
        return self.admin_json("/config")

    def check(self, timeout=20):
        """Runs `sidecar --config <this config> --check`; CompletedProcess."""
        return run([self.binary, "--config", self.config_path, "--check"], timeout=timeout,
                   cwd=self.dir)


# --------------------------------------------------------------------------
# Prometheus text
# --------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def _unescape(v):
    return v.replace("\\\\", "\x00").replace('\\"', '"').replace("\\n", "\n").replace("\x00", "\\")


class Stats:
    """Parsed Prometheus text: samples as (name, labels dict, float)."""

    def __init__(self, text):
        self.text = text
        self.samples = []
        self.types = {}
        self.bad_lines = []
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            if line.startswith("#"):
                parts = line.split(None, 3)
                if len(parts) >= 4 and parts[1] == "TYPE":
                    self.types[parts[2]] = parts[3]
                continue
            m = _SAMPLE.match(line)
            if not m:
                self.bad_lines.append(line)
                continue
            labels = {}
            if m.group(3):
                pos = 0
                body = m.group(3)
                while pos < len(body):
                    lm = _LABEL.match(body, pos)
                    if not lm:
                        self.bad_lines.append(line)
                        break
                    labels[lm.group(1)] = _unescape(lm.group(2))
                    pos = lm.end()
            try:
                value = float(m.group(4))
            except ValueError:
                self.bad_lines.append(line)
                continue
            self.samples.append((m.group(1), labels, value))

    def names(self):
        return sorted({n for n, _, _ in self.samples})

    def series(self, name, **labels):
        return [(l, v) for n, l, v in self.samples
                if n == name and all(l.get(k) == str(v2) for k, v2 in labels.items())]

    def value(self, name, **labels):
        """Sum of every sample of `name` whose labels include `labels`."""
        return sum(v for _, v in self.series(name, **labels))

    def with_label(self, key, value):
        """Samples (name, labels, value) that carry label key=value."""
        return [(n, l, v) for n, l, v in self.samples if l.get(key) == value]


# --------------------------------------------------------------------------
# memory sampling
# --------------------------------------------------------------------------

class RssSampler:
    """Samples VmRSS of `pid` every `interval` seconds in a thread.
    with RssSampler(pid) as s: ...  ->  s.max_kib, s.samples"""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            v = read_rss_kib(self.pid)
            if v is not None:
                self.samples.append(v)
            self._stop.wait(self.interval)

    def __enter__(self):
        v = read_rss_kib(self.pid)
        if v is not None:
            self.samples.append(v)
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join(2)

    @property
    def max_kib(self):
        return max(self.samples) if self.samples else None

    @property
    def first_kib(self):
        return self.samples[0] if self.samples else None


# --------------------------------------------------------------------------
# raw HTTP/1.1
# --------------------------------------------------------------------------

class Response:
    def __init__(self):
        self.version = None
        self.status = None
        self.reason = None
        self.headers = []      # [(name, value)] in order
        self.body = b""
        self.trailers = []
        self.interim = []      # [(status, headers)] 1xx responses before this one
        self.chunked = False

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    def has(self, name):
        return self.header(name) is not None

    def __repr__(self):
        return "<Response %s %s headers=%r body=%r>" % (self.status, self.reason, self.headers,
                                                         self.body[:200])


class RawConn:
    """A plain TCP connection with a receive buffer and HTTP/1.1 reading."""

    def __init__(self, port, host=LOOPBACK, timeout=5.0, rcvbuf=None):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect((host, port))
        except BaseException:
            self.sock.close()
            raise
        self.buf = b""
        self.eof = False

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("read deadline passed")
        self.sock.settimeout(left)
        data = self.sock.recv(262144)
        if not data:
            self.eof = True
            return False
        self.buf += data
        return True

    def read_line(self, deadline, limit=1 << 20):
        while b"\r\n" not in self.buf:
            if len(self.buf) > limit:
                raise ValueError("line too long")
            if not self._fill(deadline):
                raise EOFError("eof while reading a line")
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def read_exact(self, n, deadline):
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise EOFError("eof with %d of %d bytes" % (len(self.buf), n))
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_until_close(self, deadline, limit=1 << 31):
        while not self.eof and len(self.buf) < limit:
            if not self._fill(deadline):
                break
        data, self.buf = self.buf, b""
        return data

    def _read_head(self, deadline):
        line = self.read_line(deadline).decode("latin-1")
        parts = line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/"):
            raise ValueError("bad status line %r" % line)
        headers = []
        while True:
            h = self.read_line(deadline)
            if not h:
                break
            k, _, v = h.decode("latin-1").partition(":")
            headers.append((k.strip(), v.strip()))
        return parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers

    def read_response(self, timeout=10.0, head_request=False):
        """Reads one response (after any 1xx); raises EOFError when the
        connection closed before a status line."""
        deadline = time.monotonic() + timeout
        r = Response()
        while True:
            r.version, r.status, r.reason, r.headers = self._read_head(deadline)
            if 100 <= r.status < 200 and r.status != 101:
                r.interim.append((r.status, r.headers))
                continue
            break
        te = r.header("transfer-encoding")
        cl = r.header("content-length")
        if head_request or r.status in (204, 304) or 100 <= r.status < 200:
            return r
        if te is not None and "chunked" in te.lower():
            r.chunked = True
            body = []
            while True:
                size = int(self.read_line(deadline).split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = self.read_line(deadline)
                        if not t:
                            break
                        k, _, v = t.decode("latin-1").partition(":")
                        r.trailers.append((k.strip(), v.strip()))
                    break
                body.append(self.read_exact(size, deadline))
                if self.read_exact(2, deadline) != b"\r\n":
                    raise ValueError("missing CRLF after chunk")
            r.body = b"".join(body)
        elif cl is not None:
            r.body = self.read_exact(int(cl), deadline)
        else:
            r.body = self.read_until_close(deadline)
        return r

    def closed_by_peer(self, timeout=2.0):
        """True when the peer closes (EOF or reset) within `timeout` with no
        further bytes; False when it stays open; bytes it sent are kept."""
        if self.eof:
            return True
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self._fill(deadline):
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
        return False


def http_get(port, path="/", host_header="example.test", timeout=10.0, headers=(), method="GET"):
    """One request on a fresh connection; returns Response."""
    with RawConn(port, timeout=timeout) as c:
        lines = ["%s %s HTTP/1.1" % (method, path), "Host: %s" % host_header]
        lines += ["%s: %s" % kv for kv in headers]
        c.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        return c.read_response(timeout, head_request=(method == "HEAD"))


# --------------------------------------------------------------------------
# TestCase base
# --------------------------------------------------------------------------

def _cleanup_fn(owner):
    return owner.addClassCleanup if isinstance(owner, type) else owner.addCleanup


def _start_http1_peer(owner, name="http1", host=LOOPBACK):
    p = Http1Peer(name, host)
    p.start()
    _cleanup_fn(owner)(p.stop)
    return p


def _start_grpc_peer(owner, name="grpc", host=LOOPBACK, **kw):
    from grpc_server import EchoServer
    s = EchoServer(host=host, name=name, **kw)
    s.start()
    _cleanup_fn(owner)(s.stop)
    return s


def _finish_sidecar(sc):
    """Cleanup: a sidecar still running is stopped with SIGTERM and must exit
    0 without a sanitizer report (catches crashes and leaks at shutdown)."""
    try:
        problem = None
        if sc.alive() and not sc.stopped:
            rc = sc.stop(timeout=20)
            if rc != 0:
                problem = "sidecar %s: exit code %s on SIGTERM at cleanup" % (sc.name, rc)
        rep = sc.sanitizer_report()
        if rep and not problem:
            problem = "sidecar %s: sanitizer report:\n%s" % (sc.name, rep)
        if problem:
            raise SidecarError(problem + "\n" + sc.describe())
    finally:
        sc.cleanup()


def _start_sidecar(owner, config, name="sidecar", wait_ready=True, **kw):
    sc = Sidecar(config, name=name, **kw)
    _cleanup_fn(owner)(_finish_sidecar, sc)
    if isinstance(owner, type):
        owner._class_sidecars = list(owner.__dict__.get("_class_sidecars", [])) + [sc]
    else:
        owner.__dict__.setdefault("_test_sidecars", []).append(sc)
    sc.start(wait_ready=wait_ready)
    return sc


class H2cFront:
    """nghttpx in front of an HTTP/1.1 peer: a real HTTP/2 cleartext server
    (prior knowledge; HTTP/1.1 also accepted) for upstreams with protocol
    http2. nghttpx comes with Debian's nghttp2-proxy package."""

    def __init__(self, backend_port, backend_host=LOOPBACK):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sc-it-nghttpx-")
        self.log_path = os.path.join(self.dir, "nghttpx.log")
        self.proc = spawn(["nghttpx", "--conf=/dev/null", "--single-process", "--workers=1",
                           "--frontend=%s,%d;no-tls" % (LOOPBACK, self.port),
                           "--backend=%s,%d" % (backend_host, backend_port),
                           "--no-via", "--no-server-rewrite", "--no-ocsp",
                           "--no-add-x-forwarded-proto", "--no-strip-incoming-x-forwarded-proto",
                           "--errorlog-file=%s" % self.log_path,
                           "--pid-file=%s" % os.path.join(self.dir, "pid")],
                          log_path=os.path.join(self.dir, "stdout.log"))
        if not wait_port(self.port, timeout=10):
            self.stop()
            raise RuntimeError("nghttpx did not listen on %d" % self.port)

    def stop(self):
        kill_proc(self.proc, grace=1.0)
        if not KEEP_TMP:
            shutil.rmtree(self.dir, ignore_errors=True)


def _start_h2c_front(owner, backend_port):
    if not have_tool("nghttpx"):
        raise unittest.SkipTest("nghttpx (Debian nghttp2-proxy) is not installed")
    f = H2cFront(backend_port)
    _cleanup_fn(owner)(f.stop)
    return f


def _grpc_channel(owner, port, **kw):
    from grpc_client import channel
    ch = channel(addr(port), **kw)
    _cleanup_fn(owner)(ch.close)
    return ch


class SidecarTestCase(unittest.TestCase):
    """Base class: class_* helpers live for the whole class (setUpClass),
    the others for one test. Every test fails when a sidecar it uses died or
    printed a sanitizer report."""

    maxDiff = 4000

    # per class
    @classmethod
    def class_http1_peer(cls, name="http1", host=LOOPBACK):
        return _start_http1_peer(cls, name, host)

    @classmethod
    def class_fault_peer(cls, kind, name, ledger):
        """A started fault peer (tests/peers/fault_server.py) of kind "grpc"
        or "http", recording into `ledger`, stopped after the class."""
        from fault_server import FaultGrpcServer, FaultHttpServer
        s = (FaultGrpcServer if kind == "grpc" else FaultHttpServer)(name, ledger=ledger)
        s.start()
        cls.addClassCleanup(s.stop)
        return s

    @classmethod
    def class_grpc_peer(cls, name="grpc", **kw):
        return _start_grpc_peer(cls, name, **kw)

    @classmethod
    def class_sidecar(cls, config, name="sidecar", **kw):
        return _start_sidecar(cls, config, name, **kw)

    @classmethod
    def class_h2c_front(cls, backend_port):
        return _start_h2c_front(cls, backend_port)

    @classmethod
    def class_channel(cls, port, **kw):
        return _grpc_channel(cls, port, **kw)

    # per test
    def http1_peer(self, name="http1", host=LOOPBACK):
        return _start_http1_peer(self, name, host)

    def grpc_peer(self, name="grpc", **kw):
        return _start_grpc_peer(self, name, **kw)

    def sidecar(self, config, name="sidecar", **kw):
        return _start_sidecar(self, config, name, **kw)

    def channel(self, port, **kw):
        return _grpc_channel(self, port, **kw)

    def emulator(self, **kw):
        """A started Consul agent emulator (tests/consul/consul_emulator.py)
        for this test; checks run without start-up stagger unless asked."""
        if os.path.join(ROOT, "tests", "consul") not in sys.path:
            sys.path.insert(0, os.path.join(ROOT, "tests", "consul"))
        from consul_emulator import ConsulEmulator
        kw.setdefault("check_stagger", False)
        emu = ConsulEmulator(**kw)
        emu.start()
        self.addCleanup(emu.stop)
        return emu

    def h2c_front(self, backend_port):
        return _start_h2c_front(self, backend_port)

    def spawn(self, args, **kw):
        p = spawn(args, **kw)
        self.addCleanup(kill_proc, p)
        return p

    def all_sidecars(self):
        return list(getattr(type(self), "_class_sidecars", [])) + list(self.__dict__.get("_test_sidecars", []))

    def _failed_so_far(self):
        outcome = getattr(self, "_outcome", None)
        if outcome is None:
            return False
        if hasattr(outcome, "errors"):                  # Python <= 3.10
            return any(exc for _, exc in outcome.errors)
        res = getattr(outcome, "result", None)          # Python >= 3.11
        if res is None:
            return False
        for test, _ in list(getattr(res, "failures", [])) + list(getattr(res, "errors", [])):
            if test is self or getattr(test, "test_case", None) is self:
                return True
        return False

    def tearDown(self):
        if self._failed_so_far():
            for sc in self.all_sidecars():
                sys.stderr.write("\n--- %s: log tail of sidecar %s (%s)\n%s\n---\n"
                                 % (self.id(), sc.name, sc.log_path, sc.log_tail(30)))
        problems = []
        for sc in self.all_sidecars():
            rep = sc.sanitizer_report()
            if rep:
                problems.append("sanitizer report from sidecar %s:\n%s" % (sc.name, rep))
            if sc.proc is not None and not sc.stopped and sc.proc.poll() is not None:
                problems.append("sidecar %s died (exit %s)\n%s" % (sc.name, sc.proc.returncode,
                                                                   sc.describe()))
                sc.stopped = True   # report once
        if problems:
            self.fail("\n".join(problems))

    # assertions ------------------------------------------------------------------
    def assertClosed(self, conn, timeout=2.0, msg=None):
        if not conn.closed_by_peer(timeout):
            self.fail(msg or "connection still open %.1fs after the response" % timeout)

    def assertBetween(self, value, lo, hi, msg=None):
        if not (lo <= value <= hi):
            self.fail("%s not in [%s, %s]%s" % (value, lo, hi, (": " + msg) if msg else ""))

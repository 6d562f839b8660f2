"""Rate limits through the real binary: local limits on the inbound route and
on upstreams (route, header, path + method), the 429 answer and its
headers, gRPC RESOURCE_EXHAUSTED, /clusters with the busiest keys; global
limits shared by three sidecars through a real redis-server started here
(killed mid-run, slowed with SIGSTOP, back again).

Every load loop is bounded in count and time.
"""

import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

import grpc

import harness
from harness import SidecarTestCase, free_port, wait_until
from grpc_client import Echo

REDIS = "/usr/bin/redis-server"


class Redis:
    """A redis-server of our own on a free loopback port (no persistence)."""

    def __init__(self):
        self.port = free_port()
        self.proc = None

    def start(self):
        self.proc = harness.spawn([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "no", "--loglevel", "warning"], log_path=os.devnull)
        if not harness.wait_port(self.port, timeout=5.0):
            raise AssertionError("redis-server did not start on port %d" % self.port)
        return self

    def kill(self):
        if self.proc:
            harness.kill_proc(self.proc)
            self.proc = None

    def stop_signal(self, sig):
        os.kill(self.proc.pid, sig)

    def command(self, *args):
        """One command over RESP; the raw reply bytes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            out = b"*%d\r\n" % len(args)
            for a in args:
                a = a.encode() if isinstance(a, str) else a
                out += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(out)
            return s.recv(65536)


def request(port, path="/echo", method="GET", headers=None, timeout=5.0):
    """(status, headers lower-case, body) of one HTTP/1.1 request."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def rl_json(sc, route):
    for u in sc.clusters()["upstreams"]:
        if u["name"] == route:
            return {l["name"]: l for l in u.get("rate_limits", [])}
    raise AssertionError("no route %s in /clusters" % route)


class LocalLimitTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.app = cls.class_http1_peer("app")
        cls.inst = cls.class_http1_peer("inst")
        cls.grpc_inst = cls.class_grpc_peer("g")
        cls.in_port, cls.up_port, cls.g_port = free_port(), free_port(), free_port()
        ups = [harness.upstream("rl-up", "http1", cls.up_port, [cls.inst.port],
                                rate_limits=[{"name": "all", "rate": "4/m"}]),
               harness.upstream("rl-grpc", "grpc", cls.g_port, [cls.grpc_inst.port],
                                rate_limits=[{"name": "calls", "rate": "2/m"}])]
        cfg = harness.base_config(free_port(), upstreams=ups,
                                  inbound={"listen_port": cls.in_port, "app_port": cls.app.port})
        cfg["inbound"]["rate_limits"] = [
            {"name": "writes", "rate": "2/m", "key": ["path", "method"],
             "match": {"path_prefix": "/status/", "methods": ["POST"]}},
            {"name": "per-user", "rate": "3/m", "key": "header:x-user", "missing": "skip"},
        ]
        cls.sc = cls.class_sidecar(cfg)
        cls.echo = Echo(cls.class_channel(cls.g_port))

    def test_route_limit_and_429_headers(self):
        got = [request(self.up_port)[0] for _ in range(6)]
        self.assertEqual(got, [200] * 4 + [429] * 2)
        st, h, body = request(self.up_port)
        self.assertEqual(st, 429)
        self.assertEqual(h["x-sidecar-reason"], "rate-limited")
        self.assertEqual(h["x-sidecar-rate-limit"], "all")
        self.assertGreaterEqual(int(h["retry-after"]), 1)
        self.assertLessEqual(int(h["retry-after"]), 15)
        self.assertTrue(h["ratelimit-policy"].startswith('"all";'), h["ratelimit-policy"])
        self.assertIn('"all";r=0;t=', h["ratelimit"])
        self.assertIn(b"all", body)
        self.assertEqual(self.inst.counters["requests_completed"], 4)  # refused requests never reach it
        lim = rl_json(self.sc, "rl-up")["all"]
        self.assertEqual(lim["decisions"]["allowed"], 4)
        self.assertGreaterEqual(lim["decisions"]["refused"], 3)
        stats = self.sc.stats()
        self.assertEqual(stats.value("sidecar_rate_limit_decisions_total", route="rl-up", limit="all",
                                     scope="local", outcome="allowed"), 4)

    def test_header_key(self):
        alice = [request(self.in_port, headers={"x-user": "alice"})[0] for _ in range(4)]
        bob = [request(self.in_port, headers={"x-user": "bob"})[0] for _ in range(2)]
        anon = [request(self.in_port)[0] for _ in range(6)]  # missing: skip
        self.assertEqual(alice, [200, 200, 200, 429])
        self.assertEqual(bob, [200, 200])
        self.assertEqual(anon, [200] * 6)
        lim = rl_json(self.sc, "inbound")["per-user"]
        keys = {b["key"]: b for b in lim["busiest"]}
        self.assertIn("alice", keys)
        self.assertIn("bob", keys)
        self.assertEqual(lim["busiest"][0]["key"], "alice")  # busiest first

    def test_path_and_method(self):
        posts = [request(self.in_port, "/status/201", "POST")[0] for _ in range(3)]
        other = [request(self.in_port, "/status/202", "POST")[0] for _ in range(2)]
        gets = [request(self.in_port, "/status/201", "GET")[0] for _ in range(4)]
        self.assertEqual(posts, [201, 201, 429])
        self.assertEqual(other, [202, 202])    # another path: another bucket
        self.assertEqual(gets, [201] * 4)      # GET does not match

    def test_grpc_resource_exhausted(self):
        for _ in range(2):
            self.assertEqual(self.echo.unary(b"x", timeout=5), b"x")
        with self.assertRaises(grpc.RpcError) as cm:
            self.echo.unary(b"x", timeout=5)
        e = cm.exception
        self.assertEqual(e.code(), grpc.StatusCode.RESOURCE_EXHAUSTED)
        md = dict(e.trailing_metadata() or ()) | dict(e.initial_metadata() or ())
        self.assertEqual(md.get("x-sidecar-reason"), "rate-limited")
        self.assertEqual(md.get("x-sidecar-rate-limit"), "calls")
        self.assertIn("grpc-retry-pushback-ms", md)
        self.assertIn("calls", e.details())


@unittest.skipUnless(os.path.exists(REDIS), "redis-server not installed")
class GlobalLimitTest(SidecarTestCase):
    R = 20          # requests per second shared by the three sidecars
    SECONDS = 10
    BURST = 5       # a quarter of a second: absorbs the pacing jitter of the clients

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis().start()
        cls.addClassCleanup(cls.redis.kill)
        cls.app = cls.class_http1_peer("app")
        cls.ports = []
        cls.sidecars = []
        for i in range(3):
            port = free_port()
            cfg = harness.base_config(free_port(), name="shared",
                                      inbound={"listen_port": port, "app_port": cls.app.port})
            cfg["redis"] = {"address": "127.0.0.1:%d" % cls.redis.port, "timeout": "50ms",
                            "connect_timeout": "200ms"}
            cfg["inbound"]["rate_limits"] = [
                {"name": "shared", "rate": "%d/s" % cls.R, "burst": cls.BURST, "scope": "global",
                 "match": {"path_prefix": "/echo"}},
                {"name": "strict", "rate": "1000/s", "scope": "global", "on_error": "deny",
                 "match": {"path_prefix": "/status/"}},
            ]
            cls.ports.append(port)
            cls.sidecars.append(cls.class_sidecar(cfg, name="sc%d" % i))

    def offer(self, seconds, rate_each, path="/echo"):
        """Each sidecar offered rate_each req/s for `seconds` (one keep-alive
        connection per sidecar); returns {status: count} and the slowest answer."""
        counts, slowest, lock = {}, [0.0], threading.Lock()

        start = time.monotonic() + 0.05

        def run(k, port):
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            t0 = start + k / (rate_each * len(self.ports))  # the sidecars' arrivals interleave evenly
            n = int(seconds * rate_each)
            for i in range(n):  # bounded: n requests, each within 5 s
                delay = t0 + i / rate_each - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                s = time.monotonic()
                try:
                    c.request("GET", path)
                    r = c.getresponse()
                    r.read()
                    st = r.status
                except (OSError, http.client.HTTPException):
                    st = "error"
                    c.close()
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                with lock:
                    counts[st] = counts.get(st, 0) + 1
                    slowest[0] = max(slowest[0], time.monotonic() - s)
            c.close()

        ts = [threading.Thread(target=run, args=(k, p)) for k, p in enumerate(self.ports)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(seconds + 30)
        return counts, slowest[0]

    def test_1_shared_limit(self):
        counts, _ = self.offer(self.SECONDS, self.R)  # 3R offered in total
        admitted = counts.get(200, 0)
        expect = self.R * self.SECONDS  # at most R * T + BURST can pass
        self.assertLessEqual(abs(admitted - expect), expect * 0.05, counts)
        self.assertLessEqual(admitted, expect + self.BURST, counts)
        self.assertEqual(admitted + counts.get(429, 0), 3 * expect, counts)
        redis_dec = sum(harness.Stats(s.admin("/stats")[2].decode()).value(
            "sidecar_rate_limit_redis_decisions_total") for s in self.sidecars)
        self.assertGreaterEqual(redis_dec, 3 * expect)

    def test_2_redis_killed_and_back(self):
        self.redis.kill()
        try:
            harness.wait_port(self.redis.port, timeout=2.0, open_=False)
            # on_error: allow: nothing is refused; on_error: deny: 503
            got = [request(p, "/echo")[0] for p in self.ports for _ in range(5)]
            self.assertEqual(got, [200] * 15)
            st, h, _ = request(self.ports[0], "/status/204")
            self.assertEqual(st, 503)
            self.assertEqual(h["x-sidecar-reason"], "rate-limit-unavailable")
            self.assertEqual(h["retry-after"], "1")
        finally:
            self.redis.start()
        # back within the reconnect backoff: the limit refuses again
        def limited():
            got = [request(self.ports[0], "/echo")[0] for _ in range(3 * self.BURST)]  # beyond the burst
            return 429 in got and request(self.ports[1], "/status/204")[0] == 204
        self.assertTrue(wait_until(limited, timeout=15.0, interval=0.3))
        st = harness.Stats(self.sidecars[0].admin("/stats")[2].decode())
        self.assertGreater(st.value("sidecar_rate_limit_decisions_total", route="inbound", limit="shared",
                                    scope="global", outcome="error_allowed"), 0)

    def test_3_slow_redis_bounded(self):
        self.redis.stop_signal(signal.SIGSTOP)
        try:
            counts, slowest = self.offer(1.0, 10)
            self.assertEqual(counts, {200: 30}, counts)   # on_error: allow
            self.assertLess(slowest, 0.5)                 # 50 ms budget (+ loopback and Python)
            t0 = time.monotonic()
            st, h, _ = request(self.ports[2], "/status/204")
            self.assertEqual(st, 503)
            self.assertLess(time.monotonic() - t0, 0.5)
        finally:
            self.redis.stop_signal(signal.SIGCONT)
        self.assertTrue(wait_until(lambda: request(self.ports[0], "/status/204")[0] == 204, timeout=15.0,
                                   interval=0.3))


if __name__ == "__main__":
    unittest.main()

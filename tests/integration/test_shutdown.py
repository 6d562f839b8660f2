"""Graceful shutdown on SIGTERM: the sidecar stops accepting, lets in-flight
requests (HTTP/1.1 and gRPC, outbound and inbound) finish within
drain_timeout, and exits with code 0. Each test runs its own sidecar.
"""

import os
import signal
import socket
import threading
import time
import unittest

import grpc

import harness
from harness import RawConn, SidecarTestCase, free_port
from grpc_client import Echo, channel


def new_connection_rejected(port, timeout=1.0):
    """True when a new connection to `port` is refused, or accepted but
    closed/reset without a 2xx answer."""
    try:
        c = RawConn(port, timeout=timeout)
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except socket.timeout:
        return True
    with c:
        try:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            r = c.read_response(timeout)
        except (EOFError, ConnectionResetError, BrokenPipeError, socket.timeout):
            return True
        return not (200 <= r.status < 300)


class ShutdownTest(SidecarTestCase):
    DRAIN_S = 5.0

    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")
        cls.app = cls.class_http1_peer("app")
        cls.srv = cls.class_grpc_peer("grpc")

    def setUp(self):
        self.web.reset()
        self.app.reset()
        self.srv.reset()

    def start(self, drain="5s"):
        self.out_port = free_port()
        self.in_port = free_port()
        self.grpc_port = free_port()
        cfg = harness.base_config(free_port(), drain=drain, upstreams=[
            harness.upstream("web", "http1", self.out_port, [self.web.port], timeouts={"request": "30s"}),
            harness.upstream("backend", "grpc", self.grpc_port, [self.srv.port], timeouts={"request": "30s"}),
        ], inbound={"listen_port": self.in_port, "app_port": self.app.port, "timeouts": {"request": "30s"}})
        return self.sidecar(cfg)

    def slow_get(self, port, path, results, key):
        try:
            results[key] = harness.http_get(port, path, timeout=20)
        except Exception as e:  # noqa: BLE001
            results[key] = e
        results[key + "_t"] = time.monotonic()

    def wait_exit(self, sc, timeout):
        try:
            sc.proc.wait(timeout)
        except Exception:  # noqa: BLE001
            return None
        sc.stopped = True
        return sc.proc.returncode

    def test_sigterm_drains_http1(self):
        sc = self.start()
        results = {}
        threads = [threading.Thread(target=self.slow_get, args=(self.out_port, "/delay/1500", results, "o%d" % i))
                   for i in range(3)]
        threads.append(threading.Thread(target=self.slow_get, args=(self.in_port, "/delay/1500", results, "i")))
        for t in threads:
            t.start()
        self.assertTrue(self.web.wait_for(lambda: self.web.inflight == 3, 3), "requests never reached the peer")
        self.assertTrue(self.app.wait_for(lambda: self.app.inflight == 1, 3))
        sc.stopped = True
        t0 = time.monotonic()
        sc.send_signal(15)
        # new connections are turned away while the old ones drain
        time.sleep(0.3)
        for label, port in (("outbound", self.out_port), ("inbound", self.in_port)):
            self.assertTrue(harness.wait_until(lambda: new_connection_rejected(port), 1.0),
                            "%s listener still serves new connections after SIGTERM" % label)
        status, _, _ = (None, None, None)
        try:
            status, _, _ = sc.admin("/ready", timeout=1)
        except OSError:
            pass
        self.assertNotEqual(status, 200, "/ready still 200 while draining")
        for t in threads:
            t.join(15)
        for key in ("o0", "o1", "o2", "i"):
            r = results.get(key)
            self.assertIsInstance(r, harness.Response, "in-flight request %s failed: %r\n%s"
                                  % (key, r, sc.log_tail()))
            self.assertEqual((r.status, r.body), (200, b"delayed 1500\n"))
        rc = self.wait_exit(sc, self.DRAIN_S + 2)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, "exit code %s after SIGTERM\n%s" % (rc, sc.log_tail()))
        self.assertLess(took, self.DRAIN_S + 1.0)
        last_done = max(results[k + "_t"] for k in ("o0", "o1", "o2", "i"))
        self.assertLess(sc_exit_lag(sc, last_done), 2.0,
                        "the sidecar idled after its last request finished instead of exiting")

    def test_sigterm_drains_grpc(self):
        sc = self.start()
        echo = Echo(self.channel(self.grpc_port))
        out = {}

        def unary():
            try:
                out["unary"] = echo.unary(b"u", timeout=20, metadata=[("x-echo-delay-ms", "1500")])
            except grpc.RpcError as e:
                out["unary"] = e

        def stream():
            try:
                out["stream"] = list(echo.server_stream(b"s", timeout=20, metadata=[
                    ("x-echo-count", "10"), ("x-echo-interval-ms", "150")]))
            except grpc.RpcError as e:
                out["stream"] = e

        ts = [threading.Thread(target=unary), threading.Thread(target=stream)]
        for t in ts:
            t.start()
        self.assertTrue(self.srv.wait_for(lambda: self.srv.count() == 2, 3), "calls never reached the server")
        sc.stopped = True
        t0 = time.monotonic()
        sc.send_signal(15)
        time.sleep(0.3)
        # a new client cannot start calls any more
        fresh = channel(harness.addr(self.grpc_port))
        try:
            with self.assertRaises(grpc.RpcError) as cm:
                Echo(fresh).unary(b"late", timeout=1.0)
            self.assertIn(cm.exception.code(), (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED))
        finally:
            fresh.close()
        for t in ts:
            t.join(15)
        self.assertEqual(out.get("unary"), b"u", "in-flight unary: %r" % (out.get("unary"),))
        self.assertEqual(out.get("stream"), [b"s"] * 10, "in-flight stream: %r" % (out.get("stream"),))
        self.assertEqual(self.srv.count("Unary"), 1, "the late call reached the server")
        rc = self.wait_exit(sc, self.DRAIN_S + 2)
        self.assertEqual(rc, 0, "exit code %s\n%s" % (rc, sc.log_tail()))
        self.assertLess(time.monotonic() - t0, self.DRAIN_S + 1.0)

    def test_drain_timeout_bounds_exit(self):
        """A request longer than drain_timeout (1 s) does not hold the exit."""
        sc = self.start(drain="1s")
        results = {}
        t = threading.Thread(target=self.slow_get, args=(self.out_port, "/delay/6000", results, "r"))
        t.start()
        self.assertTrue(self.web.wait_for(lambda: self.web.inflight == 1, 3))
        sc.stopped = True
        t0 = time.monotonic()
        sc.send_signal(15)
        rc = self.wait_exit(sc, 5)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, "exit code %s\n%s" % (rc, sc.log_tail()))
        self.assertBetween(took, 0.8, 2.5, "drain_timeout is 1s")
        t.join(10)
        r = results.get("r")
        # the cut request fails (error response or closed connection), it does not hang
        self.assertFalse(isinstance(r, harness.Response) and r.status == 200, r)

    def test_idle_connections_do_not_hold_exit(self):
        sc = self.start()
        c = RawConn(self.out_port, timeout=10)
        self.addCleanup(c.close)
        c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(c.read_response().status, 200)
        echo = Echo(self.channel(self.grpc_port))
        echo.unary(b"x", timeout=5)
        sc.stopped = True
        t0 = time.monotonic()
        sc.send_signal(15)
        rc = self.wait_exit(sc, self.DRAIN_S + 2)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, "exit code %s\n%s" % (rc, sc.log_tail()))
        self.assertLess(took, 2.0, "idle keep-alive connections held the exit for %.1fs" % took)
        self.assertTrue(c.closed_by_peer(1.0))

    def test_sigterm_when_idle(self):
        sc = self.start()
        t0 = time.monotonic()
        rc = sc.stop(timeout=self.DRAIN_S + 2)
        self.assertEqual(rc, 0, sc.log_tail())
        self.assertLess(time.monotonic() - t0, 1.5)
        self.assertFalse(harness.port_open(self.out_port))
        self.assertFalse(harness.port_open(self.in_port))

    def test_sigterm_before_workers_run(self):
        """A SIGTERM that arrives after /ready turned 200 but before a worker
        thread reached its event loop is kept: the worker drains when it gets
        there and the process exits. The test hook delays each worker's start
        by 700 ms so the signal always lands in that window."""
        os.environ["SIDECAR_TEST_WORKER_START_DELAY_MS"] = "700"
        try:
            sc = self.start(drain="2s")
        finally:
            del os.environ["SIDECAR_TEST_WORKER_START_DELAY_MS"]
        t0 = time.monotonic()
        sc.send_signal(15)
        rc = self.wait_exit(sc, 6.0)
        self.assertEqual(rc, 0, "exit code %s (None: still running after 6 s)\n%s" % (rc, sc.log_tail()))
        self.assertLess(time.monotonic() - t0, 3.0)

    def test_fresh_connection_gets_its_first_request_served(self):
        """A caller that connected just before the drain began and sends its
        request a moment later is answered (connection: close), not cut; an
        idle keep-alive connection that already carried a request is closed."""
        sc = self.start(drain="5s")
        fresh = RawConn(self.out_port, timeout=5)
        used = RawConn(self.out_port, timeout=5)
        used.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(used.read_response(5).status, 200)
        time.sleep(0.1)
        sc.send_signal(15)
        time.sleep(0.3)
        with fresh:
            fresh.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            r = fresh.read_response(5)
            self.assertEqual(r.status, 200)
            self.assertEqual(r.header("connection"), "close")
        with used:
            self.assertTrue(used.closed_by_peer(1.0), "the idle keep-alive connection was kept")
        self.assertEqual(self.wait_exit(sc, self.DRAIN_S + 2), 0, sc.log_tail())

    def test_backlog_served_when_the_drain_begins(self):
        """Connections the kernel completed but the sidecar had not accepted
        yet when the drain began are served, not reset with the listening
        socket: the sidecar is stopped (SIGSTOP) while callers connect and
        send, then gets SIGTERM and SIGCONT together."""
        sc = self.start(drain="5s")
        sc.send_signal(signal.SIGSTOP)
        conns = []
        try:
            for _ in range(20):
                c = RawConn(self.out_port, timeout=5)
                c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
                conns.append(c)
            sc.send_signal(signal.SIGTERM)
        finally:
            sc.send_signal(signal.SIGCONT)
        statuses = []
        for c in conns:
            with c:
                try:
                    statuses.append(c.read_response(5).status)
                except (EOFError, ConnectionResetError, socket.timeout) as e:
                    statuses.append(repr(e))
        self.assertEqual(statuses, [200] * len(conns))
        self.assertEqual(self.wait_exit(sc, self.DRAIN_S + 2), 0, sc.log_tail())


def sc_exit_lag(sc, last_done):
    """Seconds between `last_done` and now (the caller just saw the exit)."""
    return time.monotonic() - last_done


if __name__ == "__main__":
    unittest.main()

"""Flow control: a slow reader on either side must slow the producer down,
not grow the sidecar's memory.

For each case the producer could push hundreds of MiB; the reader takes a
little, then stops. We assert that (a) the producer got stuck after a bounded
amount (kernel socket buffers and HTTP/2 windows account for some MiB; an
unbounded proxy buffer would let it run on), and (b) the sidecar's RSS grew
by less than RSS_GROWTH_LIMIT_KIB while it was stuck. Then the reader resumes
and the transfer still completes correctly (HTTP/1.1) or is cancelled
cleanly (gRPC).
"""

import hashlib
import json
import os
import queue
import socket
import threading
import time
import unittest

import grpc

import harness
from harness import RawConn, SidecarTestCase, free_port, pattern_sha256
from grpc_client import Echo
from grpc_server import payload

MIB = 1 << 20
RSS_GROWTH_LIMIT_KIB = int(os.environ.get("SC_RSS_GROWTH_LIMIT_MIB", "32")) * 1024
# what may legitimately sit in socket buffers and HTTP/2 windows on loopback
IN_FLIGHT_LIMIT = 64 * MIB
STALL_S = 3.0


class FlowControlTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.web = cls.class_http1_peer("web")
        cls.srv = cls.class_grpc_peer("grpc")
        cls.h1_port = free_port()
        cls.grpc_port = free_port()
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=[
            harness.upstream("web", "http1", cls.h1_port, [cls.web.port], timeouts={"request": "120s"}),
            harness.upstream("backend", "grpc", cls.grpc_port, [cls.srv.port],
                             timeouts={"request": "120s"}),
        ], limits={"stream_buffer": 65536}))

    def setUp(self):
        self.web.reset()
        self.srv.reset()

    def assertRssBounded(self, sampler, base_kib, what):
        growth = sampler.max_kib - base_kib
        self.assertLess(growth, RSS_GROWTH_LIMIT_KIB,
                        "%s: sidecar RSS grew by %d KiB (from %d to %d KiB)"
                        % (what, growth, base_kib, sampler.max_kib))

    # -- HTTP/1.1 ---------------------------------------------------------------

    def test_http1_slow_download_reader(self):
        n = 1 << 30
        base = self.sc.rss_kib()
        with harness.RssSampler(self.sc.pid) as s, RawConn(self.h1_port, timeout=30, rcvbuf=65536) as c:
            c.send(b"GET /bytes/%d HTTP/1.1\r\nHost: a\r\n\r\n" % n)
            head_end = time.monotonic() + 10
            got = 0
            while got < MIB and time.monotonic() < head_end:
                got += len(c.sock.recv(65536))
            rec = self.web.wait_for(lambda: self.web.last("/bytes/%d" % n), 2)
            self.assertIsNotNone(rec)
            time.sleep(STALL_S)                                  # the reader stops
            sent_a = rec.get("sent", 0)
            time.sleep(1.0)
            sent_b = rec.get("sent", 0)
            self.assertLess(sent_b, IN_FLIGHT_LIMIT,
                            "the upstream pushed %d MiB to a reader that took 1 MiB" % (sent_b // MIB))
            self.assertLess(sent_b - sent_a, 4 * MIB, "the upstream is still pushing: not stalled")
            self.assertRssBounded(s, base, "slow HTTP/1.1 download")
            # the reader resumes: data flows again and is intact
            deadline = time.monotonic() + 30
            more = 0
            while more < 32 * MIB and time.monotonic() < deadline:
                b = c.sock.recv(1 << 20)
                if not b:
                    break
                more += len(b)
            self.assertGreaterEqual(more, 32 * MIB, "transfer did not resume")

    def test_http1_slow_upload_reader(self):
        """The upstream reads nothing for 3 s: the client cannot push the
        whole body into the sidecar."""
        n = 512 * MIB
        base = self.sc.rss_kib()
        sent = [0]
        err = []

        with harness.RssSampler(self.sc.pid) as s, RawConn(self.h1_port, timeout=20) as c:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)

            def pump():
                try:
                    c.send(b"POST /sha256?pause_ms=%d HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n"
                           % (int(STALL_S * 1000), n))
                    for m in harness.pattern_blocks(n, 65536):
                        c.sock.sendall(m)
                        sent[0] += len(m)
                except OSError as e:
                    err.append(e)

            t = threading.Thread(target=pump, daemon=True)
            t.start()
            time.sleep(STALL_S - 0.8)
            stalled_at = sent[0]
            self.assertLess(stalled_at, IN_FLIGHT_LIMIT,
                            "the client pushed %d MiB while the upstream read nothing" % (stalled_at // MIB))
            self.assertRssBounded(s, base, "slow HTTP/1.1 upload")
            t.join(120)
            self.assertFalse(t.is_alive(), "upload did not finish")
            if err:
                rec = self.web.last("/sha256") or {}
                self.fail("upload stalled after the pause (%r): client sent %d MiB, the peer received %d MiB"
                          % (err[0], sent[0] // MIB, rec.get("received", 0) // MIB))
            r = c.read_response(timeout=30)
        doc = json.loads(r.body)
        self.assertEqual((doc["length"], doc["sha256"]), (n, pattern_sha256(n)))

    # -- gRPC -------------------------------------------------------------------------

    def grpc_channel(self):
        # no BDP probing: the client keeps the default 64 KiB stream window
        return self.channel(self.grpc_port, extra=[("grpc.http2.bdp_probe", 0)])

    def test_grpc_slow_stream_reader(self):
        echo = Echo(self.grpc_channel())
        base = self.sc.rss_kib()
        with harness.RssSampler(self.sc.pid) as s:
            it = echo.server_stream(b"", timeout=60, metadata=[
                ("x-echo-count", "400"), ("x-echo-response-size", str(MIB))])
            for i in range(2):
                self.assertEqual(next(it), payload(MIB, i))
            time.sleep(STALL_S)
            rec = self.srv.last("ServerStream")
            out_a = rec["messages_out"]
            time.sleep(1.0)
            out_b = self.srv.last("ServerStream")["messages_out"]
            self.assertLess(out_b * MIB, IN_FLIGHT_LIMIT,
                            "the server produced %d x 1 MiB for a reader that took 2" % out_b)
            self.assertLessEqual(out_b - out_a, 2, "the server is still producing: not stalled")
            self.assertRssBounded(s, base, "slow gRPC stream reader")
            # reading resumes and the messages are intact and in order
            for i in range(2, 12):
                self.assertTrue(next(it) == payload(MIB, i), "message %d corrupted" % i)
            it.cancel()
        self.assertTrue(self.srv.wait_for(lambda: self.srv.last("ServerStream")["cancelled"], 3))

    def test_grpc_slow_client_stream_consumer(self):
        """The server reads one 1 MiB message per second: the client's
        request iterator is not drained into the sidecar."""
        echo = Echo(self.grpc_channel())
        base = self.sc.rss_kib()
        produced = [0]

        def reqs():
            for i in range(400):
                produced[0] += 1
                yield payload(MIB, i)

        with harness.RssSampler(self.sc.pid) as s:
            fut = echo.client_stream.future(reqs(), timeout=60, metadata=[("x-echo-read-delay-ms", "1000")])
            time.sleep(STALL_S)
            p = produced[0]
            self.assertLess(p * MIB, IN_FLIGHT_LIMIT,
                            "the client pushed %d x 1 MiB while the server read ~%d" % (p, int(STALL_S)))
            self.assertRssBounded(s, base, "slow gRPC client-stream consumer")
            fut.cancel()
        self.assertTrue(self.srv.wait_for(lambda: self.srv.last("ClientStream")["cancelled"], 3))


if __name__ == "__main__":
    unittest.main()

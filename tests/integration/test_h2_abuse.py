"""Hostile HTTP/2 callers on a listener (h2c, prior knowledge), with frames
written by hand: a PING flood from a caller that never reads the answers,
and a "rapid reset" (HEADERS then RST_STREAM, over and over: CVE-2023-44487).
Each must end that caller's connection (closed, or GOAWAY and no new
streams), be counted in sidecar_downstream_bad_requests_total{reason=
"h2_flood"} with a log line naming the caller, and leave the sidecar
serving everyone else. Every loop is bounded in frames and seconds.
"""
import select
import socket
import struct
import time
import unittest

import harness
from harness import SidecarTestCase, free_port, wait_until

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0x0, 0x1, 0x3, 0x4, 0x6, 0x7
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 0x8


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def get_headers(sid, authority=b"127.0.0.1"):
    # HPACK: :method GET (static 2), :scheme http (6), :path / (4), then
    # :authority as a literal without indexing on static name 1.
    block = b"\x82\x86\x84\x01" + bytes([len(authority)]) + authority
    return frame(HEADERS, END_STREAM | END_HEADERS, sid, block)


def read_frames(sock, deadline):
    """Frames the sidecar sent until EOF/reset or the deadline: [(type, flags, sid, payload)]."""
    buf, out = b"", []
    while time.monotonic() < deadline:
        r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not r:
            break
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, OSError):
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]))
            buf = buf[9 + n:]
    return out


class H2AbuseTest(SidecarTestCase):

    def setUp(self):
        # One sidecar per test: each test looks for its own (rate-limited) log line.
        self.peer = self.http1_peer("app")
        self.port = free_port()
        self.sc = self.sidecar(harness.base_config(free_port(), [
            harness.upstream("web", "http1", self.port, [self.peer.port]),
        ], workers=1))

    def floods(self):
        return self.sc.stats().value("sidecar_downstream_bad_requests_total", reason="h2_flood") or 0

    def still_serves(self):
        with harness.RawConn(self.port) as c:
            c.send(b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertEqual(c.read_response().status, 200)

    def test_ping_flood_from_a_caller_that_does_not_read(self):
        """Two defences, and which one acts depends on how the bytes are cut
        into reads: more than 1000 unanswered PINGs taken in by one read pass
        -> nghttp2 reports a flood, the connection is closed and counted; else
        the answers back up, the sidecar stops reading the caller
        (backpressure) and its sends block. Either way the flood stops within
        bounded bytes and memory, and everyone else is served."""
        before = self.floods()
        rss0 = self.sc.rss_kib()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # our answers back up at once
        s.connect(("127.0.0.1", self.port))
        s.settimeout(3)
        ping = frame(PING, 0, 0, b"12345678")
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        stopped = None
        deadline = time.monotonic() + 20
        sent = 0
        try:
            while sent < 400000 and time.monotonic() < deadline:   # at most 6.8 MB
                s.sendall(ping * 10000)                       # 170 KB per write
                sent += 10000
        except (BrokenPipeError, ConnectionResetError):
            stopped = "closed"
        except socket.timeout:
            stopped = "blocked"
        self.assertIsNotNone(stopped, "a flood of %d PINGs was neither cut off nor held back" % sent)
        self.assertLess(self.sc.rss_kib() - rss0, 20 * 1024, "memory grew with the flood")
        if stopped == "closed":
            self.assertTrue(wait_until(lambda: self.floods() > before, timeout=5),
                            "closed, but not as a flood:\n" + self.sc.log_tail(10))
            self.assertIn("HTTP/2 flood from 127.0.0.1", self.sc.log_text())
        self.still_serves()
        s.close()

    def test_rapid_reset_gets_goaway_and_no_new_streams(self):
        before = self.floods()
        app_before = self.peer.count("requests_started")
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        n = 3000
        sid = 1
        for i in range(0, n, 100):     # HEADERS + RST_STREAM pairs, 100 per write
            batch = b""
            for _ in range(100):
                batch += get_headers(sid) + frame(RST_STREAM, 0, sid, struct.pack(">I", CANCEL))
                sid += 2
            try:
                s.sendall(batch)
            except (BrokenPipeError, ConnectionResetError):
                break
        frames = read_frames(s, time.monotonic() + 5)
        goaways = [f for f in frames if f[0] == GOAWAY]
        self.assertTrue(goaways, "no GOAWAY after %d reset streams" % n)
        last_sid, code = struct.unpack(">II", goaways[0][3][:8])
        self.assertNotEqual(code, 0, "GOAWAY with NO_ERROR")
        self.assertLess(last_sid & 0x7FFFFFFF, 2 * n, "GOAWAY did not stop the streams")
        # a stream opened after the GOAWAY is not served
        try:
            s.sendall(get_headers(sid))
            late = [f for f in read_frames(s, time.monotonic() + 1) if f[0] == HEADERS and f[2] == sid]
            self.assertEqual(late, [], "a stream after GOAWAY was answered")
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.close()
        self.assertTrue(wait_until(lambda: self.floods() >= before + 1, timeout=5), self.sc.log_tail(10))
        self.assertIn("reset streams faster than", self.sc.log_text())
        # bounded work reached the app: nghttp2's burst, not all 3000
        self.assertLessEqual(self.peer.count("requests_started") - app_before, 1100)
        self.still_serves()


if __name__ == "__main__":
    unittest.main()

"""Sends one POST /sha256 with n bytes of the peers' pattern to 127.0.0.1:PORT
and prints the status line code and the body. Used by test_http1 so that the
1 GiB sender does not share an interpreter with the upstream peer.
usage: upload_sender.py PORT N"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__))))
import harness  # noqa: E402
from harness import RawConn  # noqa: E402


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    with RawConn(port, timeout=15) as c:
        c.send(b"POST /sha256 HTTP/1.1\r\nHost: example.test\r\nContent-Length: %d\r\n\r\n" % n)
        sent = [0]
        try:
            harness.send_pattern(c.sock, n, progress=sent)
            r = c.read_response(timeout=60)
        except OSError as e:
            sys.stderr.write("stalled: %r after sending %d MiB\n" % (e, sent[0] >> 20))
            return 1
    sys.stdout.buffer.write(b"%d\n" % r.status + r.body)
    return 0


if __name__ == "__main__":
    sys.exit(main())

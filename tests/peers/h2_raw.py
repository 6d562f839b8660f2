"""Raw HTTP/2 for hostile-peer tests: frames written and read by hand, header
blocks by Debian's python3-hpack (HPACK encoder and decoder only; no
HTTP/2 library between the test and the wire, so a test can send what a
correct implementation never would).

- frame(), H2Conn: a caller (h2c prior knowledge) that sends header blocks
  of any size (split into HEADERS + CONTINUATION), DATA and trailers, and
  records per stream what came back: informational heads, the head, body,
  trailers, RST_STREAM code; GOAWAY.
- amplified(): a header list that costs little on the wire but much once
  decoded: one large field added to the HPACK dynamic table, then named
  again by its index (one byte) many times.
- H2Upstream: an HTTP/2 cleartext server whose behaviour follows the
  request's :path (see its docstring); it records every request (headers,
  trailers), connection and reset it sees.

Every wait here is bounded by a deadline.
"""

import json
import select
import socket
import struct
import threading
import time
import urllib.parse

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 0x7, 0x8, 0x9, 0xb
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_ENABLE_PUSH, SETTINGS_MAX_CONCURRENT_STREAMS = 0x1, 0x2, 0x3
SETTINGS_INITIAL_WINDOW_SIZE, SETTINGS_MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 0x4, 0x5, 0x6
MAX_FRAME = 16384


def frame(ftype, flags, sid, payload=b""):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", sid) + payload


def settings_frame(settings=None):
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", k, v) for k, v in (settings or {}).items()))


def header_frames(sid, block, end_stream=True, max_frame=MAX_FRAME):
    """HEADERS (+ CONTINUATION) frames carrying one header block."""
    chunks = [block[i:i + max_frame] for i in range(0, len(block), max_frame)] or [b""]
    out = []
    for i, c in enumerate(chunks):
        last = i == len(chunks) - 1
        if i == 0:
            out.append(frame(HEADERS, (END_STREAM if end_stream else 0) | (END_HEADERS if last else 0), sid, c))
        else:
            out.append(frame(CONTINUATION, END_HEADERS if last else 0, sid, c))
    return b"".join(out)


def amplified(name=b"x-amplified", value_len=4000, refs=12000):
    """`refs` + 1 copies of one field of about value_len bytes. Encoded by
    hpack.Encoder: the first as a literal with incremental indexing, then
    one byte each (an index into the dynamic table)."""
    v = b"v" * value_len
    return [(name, v)] * (refs + 1)


def list_size(headers):
    """A header list's size as HPACK and SETTINGS_MAX_HEADER_LIST_SIZE count it."""
    return sum(len(n) + len(v) + 32 for n, v in headers)


def parse_frames(buf):
    """Splits the complete frames off `buf`: ([(type, flags, sid, payload)], rest)."""
    out = []
    while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
        n = int.from_bytes(buf[:3], "big")
        out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + n]))
        buf = buf[9 + n:]
    return out, buf


def unpad(ftype, flags, payload):
    """The content of a DATA or HEADERS payload (padding and priority removed)."""
    if ftype in (DATA, HEADERS) and flags & PADDED:
        payload = payload[1:len(payload) - payload[0]]
    if ftype == HEADERS and flags & PRIORITY_FLAG:
        payload = payload[5:]
    return payload


def window_updates(sid, n):
    """Gives n bytes of window back on the connection and on stream sid."""
    return frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", n)) + frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", n))


def _hpack_int(block, i, prefix):
    """RFC 7541 5.1: the integer at block[i] with a `prefix`-bit prefix; (value, next index)."""
    mask = (1 << prefix) - 1
    v = block[i] & mask
    i += 1
    if v < mask:
        return v, i
    shift = 0
    while True:
        b = block[i]
        i += 1
        v += (b & 0x7f) << shift
        shift += 7
        if not b & 0x80:
            return v, i


def field_forms(block):
    """How each field of a header block was represented (RFC 7541 6):
    [(form, name_by_index)] in field order, form one of "indexed",
    "incremental" (literal added to the table), "without" (literal, not
    added) and "never" (literal never to be indexed by anyone); name_by_index
    tells whether a literal named its field by a table index or spelled the
    name out. Dynamic table size updates are not fields and are skipped."""
    out, i = [], 0
    while i < len(block):
        b = block[i]
        if b & 0x80:
            _, i = _hpack_int(block, i, 7)
            out.append(("indexed", True))
            continue
        if b & 0xe0 == 0x20:
            _, i = _hpack_int(block, i, 5)
            continue
        form, prefix = ("incremental", 6) if b & 0x40 else ("never", 4) if b & 0x10 else ("without", 4)
        idx, i = _hpack_int(block, i, prefix)
        for _ in range(1 if idx else 2):       # the value, and the name when spelled out
            n, i = _hpack_int(block, i, 7)
            i += n
        out.append((form, idx != 0))
    return out


class BlockReader:
    """Reassembles header blocks (HEADERS + CONTINUATION) and decodes them
    with one HPACK decoder per connection; last_forms is field_forms() of the
    last block completed."""

    def __init__(self):
        self.dec = _new_decoder()
        self.cur = None             # [sid, bytes, flags of the HEADERS frame]
        self.last_forms = []

    def feed(self, ftype, flags, sid, payload):
        """A HEADERS or CONTINUATION frame: (sid, [(name, value)], HEADERS flags)
        when it completed a block, else None."""
        if ftype == HEADERS:
            self.cur = [sid, unpad(ftype, flags, payload), flags]
        else:
            self.cur[1] += payload
        if not flags & END_HEADERS:
            return None
        sid, block, f0 = self.cur
        self.cur = None
        self.last_forms = field_forms(block)
        hdrs = [(n.decode() if isinstance(n, bytes) else n, v.decode("latin-1") if isinstance(v, bytes) else v)
                for n, v in self.dec.decode(block)]
        return sid, hdrs, f0


def _b(x):
    return x if isinstance(x, bytes) else str(x).encode()


def _new_decoder():
    d = hpack.Decoder()
    d.max_header_list_size = 1 << 30    # the test judges sizes, not the decoder
    return d


class Stream:
    def __init__(self, sid):
        self.sid = sid
        self.informational = []     # [headers] of 1xx heads
        self.headers = None         # final head: [(name, value)] as str
        self.trailers = None
        self.head_forms = self.trailer_forms = None     # field_forms() of the head, of the trailers
        self.data = b""
        self.rst = None             # RST_STREAM error code
        self.ended = False          # END_STREAM seen

    @property
    def done(self):
        return self.ended or self.rst is not None

    @property
    def status(self):
        return int(self.header(":status", 0)) if self.headers else None

    def header(self, name, default=None):
        for n, v in self.headers or ():
            if n == name:
                return v
        return default

    def trailer(self, name, default=None):
        for n, v in self.trailers or ():
            if n == name:
                return v
        return default

    def __repr__(self):
        return "Stream(%d, status=%s, headers=%r, rst=%s, ended=%s, data=%r, trailers=%r, 1xx=%d)" % (
            self.sid, self.status, (self.headers or [])[:8], self.rst, self.ended, self.data[:200],
            self.trailers, len(self.informational))


class H2Conn:
    """A hand-driven HTTP/2 caller: prior knowledge over cleartext, or over
    TLS with `tls` (an ssl.SSLContext; ALPN h2 is asked for)."""

    def __init__(self, port, host="127.0.0.1", timeout=5.0, settings=None, window=1 << 24, tls=None):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        if tls is not None:
            tls.set_alpn_protocols(["h2"])
            self.sock = tls.wrap_socket(self.sock, server_hostname=host)
        self.enc = hpack.Encoder()
        self.blocks = BlockReader()
        self.buf = b""
        self.streams = {}
        self.goaway = None          # (last_stream_id, error_code)
        self.closed = False
        self.next_sid = 1
        self.send(PREFACE + settings_frame(dict({SETTINGS_INITIAL_WINDOW_SIZE: window}, **(settings or {})))
                  + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", window)))

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def encode(self, headers):
        """`headers`: (name, value) pairs, or (name, value, True) for a field
        sent never-indexed (RFC 7541 6.2.3)."""
        return self.enc.encode([(_b(h[0]), _b(h[1])) + tuple(h[2:]) for h in headers])

    def request(self, headers, end_stream=True, sid=None, body=None, trailers=None):
        """Sends one request; returns its stream id. `headers` include the
        pseudo-headers (see get())."""
        if sid is None:
            sid = self.next_sid
        self.next_sid = max(self.next_sid, sid + 2)
        self.streams.setdefault(sid, Stream(sid))
        more = body is not None or trailers is not None
        out = header_frames(sid, self.encode(headers), end_stream=end_stream and not more)
        if body is not None:
            out += frame(DATA, 0 if trailers is not None or not end_stream else END_STREAM, sid, body)
        if trailers is not None:
            out += header_frames(sid, self.encode(trailers), end_stream=True)
        self.send(out)
        return sid

    def _on_frame(self, ftype, flags, sid, payload):
        if ftype == SETTINGS and not flags & ACK:
            self.send(frame(SETTINGS, ACK, 0))
        elif ftype == PING and not flags & ACK:
            self.send(frame(PING, ACK, 0, payload))
        elif ftype == GOAWAY:
            self.goaway = struct.unpack(">II", payload[:8])
        elif ftype == RST_STREAM:
            self.streams.setdefault(sid, Stream(sid)).rst = struct.unpack(">I", payload[:4])[0]
        elif ftype == DATA:
            st = self.streams.setdefault(sid, Stream(sid))
            payload = unpad(ftype, flags, payload)
            st.data += payload
            if len(payload):
                self.send(window_updates(sid, len(payload)))
            if flags & END_STREAM:
                st.ended = True
        elif ftype in (HEADERS, CONTINUATION):
            done = self.blocks.feed(ftype, flags, sid, payload)
            if done:
                s0, hdrs, f0 = done
                st = self.streams.setdefault(s0, Stream(s0))
                status = dict(hdrs).get(":status")
                if st.headers is None and status and status.startswith("1"):
                    st.informational.append(hdrs)
                elif st.headers is None:
                    st.headers = hdrs
                    st.head_forms = self.blocks.last_forms
                else:
                    st.trailers = hdrs
                    st.trailer_forms = self.blocks.last_forms
                if f0 & END_STREAM:
                    st.ended = True

    def pump(self, deadline):
        """Reads and handles frames until the deadline or EOF."""
        while not self.closed and time.monotonic() < deadline:
            buffered = getattr(self.sock, "pending", lambda: 0)()     # TLS: read but not yet handed out
            r, _, _ = select.select([self.sock], [], [], 0 if buffered else max(0.0, deadline - time.monotonic()))
            if not r and not buffered:
                return
            try:
                chunk = self.sock.recv(1 << 20)
            except (ConnectionResetError, OSError):
                chunk = b""
            if not chunk:
                self.closed = True
                return
            frames, self.buf = parse_frames(self.buf + chunk)
            for f in frames:
                try:
                    self._on_frame(*f)
                except OSError:
                    self.closed = True
                    return
            return

    def wait(self, pred, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not pred() and not self.closed and time.monotonic() < deadline:
            self.pump(deadline)
        return pred()

    def response(self, sid, timeout=5.0):
        """The stream once it ended or was reset (or as far as it got)."""
        st = self.streams.setdefault(sid, Stream(sid))
        self.wait(lambda: st.done, timeout)
        return st

    def get(self, path="/echo", authority="127.0.0.1", method="GET", extra=(), end_stream=True, **kw):
        headers = [(":method", method), (":scheme", "http"), (":path", path), (":authority", authority)]
        return self.request(headers + list(extra), end_stream=end_stream, **kw)


# --------------------------------------------------------------------------
# the upstream
# --------------------------------------------------------------------------

class H2Upstream:
    """An HTTP/2 cleartext upstream that misbehaves on request. What it does
    follows the request's :path (query parameters tune it):

      /ok            200, "ok <path>\\n"
      /echo          200, JSON {headers, trailers} of the request as received
      /huge-headers  200 whose head repeats one field of ?len= bytes (4000)
                     ?n= times (12000) by HPACK index: a few KiB on the wire
      /huge-trailers 200, body "x", then trailers built the same way
      /hints         ?n= (2000) 103 Early Hints heads (each with a link field,
                     ?len= bytes, 40), then 200
      /grpc-status   trailers-only gRPC answer with grpc-status ?v= as given
      /grpc-trailers gRPC answer: head, empty body, trailers grpc-status ?v=
      /never-indexed 200 with a never-indexed field (RFC 7541 6.2.3) in
                     its head (x-secret) and its trailers (x-trailer-secret)
      /upper         200 whose head carries a field name with upper-case
                     letters (X-Upper), which HTTP/2 forbids
      /upper-trailer 200, body "x", then trailers with X-Upper
      /refuse        RST_STREAM(REFUSED_STREAM) at once
      /goaway        GOAWAY naming the stream before this one as the last
                     processed (so this one was not), connection kept open
      anything else  404

    `settings` are sent in the server's SETTINGS (e.g. a small
    SETTINGS_MAX_HEADER_LIST_SIZE). Records: connections, requests (dict
    with sid, path, headers, trailers, forms and trailer_forms (field_forms()
    of each block), conn (the connection's number, from 1)), resets (sid,
    code) received.
    """

    def __init__(self, name="h2up", settings=None, host="127.0.0.1"):
        self.name = name
        self.settings = settings or {}
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((host, 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.connections = 0
        self.requests = []
        self.resets = []
        self._stop = False
        self._socks = []

    def start(self):
        threading.Thread(target=self._accept, daemon=True).start()
        return self.port

    def stop(self):
        self._stop = True
        try:
            self.lsock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def count(self, path_prefix):
        with self.lock:
            return sum(1 for r in self.requests if r["path"].startswith(path_prefix))

    def last(self, path_prefix):
        with self.lock:
            rs = [r for r in self.requests if r["path"].startswith(path_prefix)]
        return rs[-1] if rs else None

    def _accept(self):
        while not self._stop:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                conn_id = self.connections
                self._socks.append(c)
            threading.Thread(target=self._serve, args=(c, conn_id), daemon=True).start()

    def _serve(self, sock, conn_id):
        sock.settimeout(10)
        enc, blocks = hpack.Encoder(), BlockReader()
        buf, pending = b"", {}
        lock = threading.Lock()

        def send(data):
            with lock:
                sock.sendall(data)

        try:
            while len(buf) < len(PREFACE):
                d = sock.recv(65536)
                if not d:
                    return
                buf += d
            if not buf.startswith(PREFACE):
                return
            buf = buf[len(PREFACE):]
            send(settings_frame(self.settings) + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 24)))
            while not self._stop:
                frames, buf = parse_frames(buf)
                for ftype, flags, sid, payload in frames:
                    if ftype == SETTINGS and not flags & ACK:
                        send(frame(SETTINGS, ACK, 0))
                    elif ftype == PING and not flags & ACK:
                        send(frame(PING, ACK, 0, payload))
                    elif ftype == RST_STREAM:
                        with self.lock:
                            self.resets.append((sid, struct.unpack(">I", payload[:4])[0]))
                        pending.pop(sid, None)
                    elif ftype == DATA:
                        payload = unpad(ftype, flags, payload)
                        if len(payload):
                            send(window_updates(sid, len(payload)))
                        if flags & END_STREAM and sid in pending:
                            self._respond(send, enc, pending.pop(sid))
                    elif ftype in (HEADERS, CONTINUATION):
                        done = blocks.feed(ftype, flags, sid, payload)
                        if done:
                            self._on_block(send, enc, pending, *done, forms=blocks.last_forms, conn_id=conn_id)
                d = sock.recv(65536)
                if not d:
                    return
                buf += d
        except (OSError, ValueError, hpack.HPACKError):
            return
        finally:
            try:
                sock.close()
            except OSError:
                pass

    def _on_block(self, send, enc, pending, sid, hdrs, flags, forms, conn_id):
        """A complete header block from the sidecar: a request head, or its trailers."""
        if sid in pending:
            pending[sid]["trailers"] = hdrs
            pending[sid]["trailer_forms"] = forms
        else:
            rec = {"sid": sid, "headers": hdrs, "trailers": None, "path": dict(hdrs).get(":path", ""),
                   "forms": forms, "trailer_forms": None, "conn": conn_id}
            with self.lock:
                self.requests.append(rec)
            pending[sid] = rec
            if rec["path"].startswith(("/refuse", "/goaway")):
                self._respond(send, enc, pending.pop(sid))   # at once, whatever follows
                return
        if flags & END_STREAM and sid in pending:
            self._respond(send, enc, pending.pop(sid))

    def _respond(self, send, enc, rec):
        sid = rec["sid"]
        url = urllib.parse.urlsplit(rec["path"])
        q = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
        path = url.path

        def head(hdrs, end=False):
            send(header_frames(sid, enc.encode(hdrs), end_stream=end))

        def body(data, end=True):
            send(frame(DATA, END_STREAM if end else 0, sid, data))

        if path == "/ok":
            b = ("ok %s\n" % rec["path"]).encode()
            head([(":status", "200"), ("content-type", "text/plain"), ("content-length", str(len(b)))])
            body(b)
        elif path == "/echo":
            b = json.dumps({"headers": rec["headers"], "trailers": rec["trailers"]}).encode()
            head([(":status", "200"), ("content-type", "application/json"), ("content-length", str(len(b)))])
            body(b)
        elif path == "/huge-headers":
            n, ln = int(q.get("n", 12000)), int(q.get("len", 4000))
            head([(":status", "200"), ("content-type", "text/plain")] + amplified(b"x-huge", ln, n))
            body(b"x")
        elif path == "/huge-trailers":
            n, ln = int(q.get("n", 12000)), int(q.get("len", 4000))
            head([(":status", "200"), ("content-type", "text/plain")])
            body(b"x", end=False)
            head(amplified(b"x-huge", ln, n), end=True)
        elif path == "/hints":
            n, ln = int(q.get("n", 2000)), int(q.get("len", 40))
            link = "<" + "/s" * (ln // 2) + ">; rel=preload"
            for _ in range(n):
                head([(":status", "103"), ("link", link)])
            head([(":status", "200"), ("content-type", "text/plain"), ("content-length", "3")])
            body(b"ok\n")
        elif path == "/grpc-status":
            head([(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", q.get("v", "0"))],
                 end=True)
        elif path == "/grpc-trailers":
            head([(":status", "200"), ("content-type", "application/grpc")])
            body(b"", end=False)
            head([("grpc-status", q.get("v", "0"))], end=True)
        elif path == "/never-indexed":
            head([(":status", "200"), ("content-type", "text/plain"), ("x-secret", "head-secret", True)])
            body(b"x", end=False)
            head([("x-trailer-secret", "trailer-secret", True)], end=True)
        elif path == "/upper":
            head([(":status", "200"), ("X-Upper", "1"), ("content-length", "1")])
            body(b"x")
        elif path == "/upper-trailer":
            head([(":status", "200"), ("content-type", "text/plain")])
            body(b"x", end=False)
            head([("X-Upper", "1")], end=True)
        elif path == "/refuse":
            send(frame(RST_STREAM, 0, sid, struct.pack(">I", REFUSED_STREAM)))
        elif path == "/goaway":
            send(frame(GOAWAY, 0, 0, struct.pack(">II", max(0, sid - 2), NO_ERROR)))
        else:
            head([(":status", "404"), ("content-length", "0")], end=True)

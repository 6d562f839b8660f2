"""Client helpers for the gRPC echo peer (raw bytes, no protobuf).

    ch = channel("127.0.0.1:9191")
    echo = Echo(ch)
    resp, call = echo.unary.with_call(b"hi", metadata=[("x-echo-count", "2")], timeout=5)
"""

import struct

import grpc

MAX_MSG = 64 * 1024 * 1024
CODES = {c.value[0]: c for c in grpc.StatusCode}


def channel_options(max_msg=MAX_MSG, extra=()):
    return [("grpc.max_receive_message_length", max_msg),
            ("grpc.max_send_message_length", max_msg),
            # never reuse a subchannel of another test's channel
            ("grpc.use_local_subchannel_pool", 1),
            # fail fast on connect errors instead of waiting for the deadline
            ("grpc.enable_retries", 0)] + list(extra)


def channel(target, max_msg=MAX_MSG, extra=()):
    return grpc.insecure_channel(target, options=channel_options(max_msg, extra))


class Echo:
    """Generic stubs for /test.Echo/*."""

    def __init__(self, ch, service="test.Echo"):
        self.unary = ch.unary_unary("/%s/Unary" % service)
        self.server_stream = ch.unary_stream("/%s/ServerStream" % service)
        self.client_stream = ch.stream_unary("/%s/ClientStream" % service)
        self.bidi = ch.stream_stream("/%s/BidiStream" % service)


def frame(msg, compressed=False):
    """A gRPC length-prefixed message (for h2load / nghttp / curl bodies)."""
    return struct.pack(">BI", 1 if compressed else 0, len(msg)) + msg


def unframe(data):
    """Splits a gRPC body into messages; returns (messages, leftover bytes)."""
    out = []
    off = 0
    while len(data) - off >= 5:
        flag, n = struct.unpack(">BI", data[off:off + 5])
        if len(data) - off - 5 < n:
            break
        out.append(data[off + 5:off + 5 + n])
        off += 5 + n
    return out, data[off:]


def md_dict(md):
    """Metadata tuple list -> dict (last value wins)."""
    return {k: v for k, v in (md or ())}

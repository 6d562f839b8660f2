#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_h2_down (tests/fuzz/corpus/fuzz_h2_down/seed_*).

Each seed is laid out as fuzz_h2_down.c reads it: one flags byte, the
caller's HTTP/2 frames (the driver writes the connection preface before
them), and optionally SEP followed by the fake upstream's bytes. Header
blocks use HPACK literal fields without indexing and without Huffman, so
the seeds stay readable in a hex dump and easy to mutate.

    python3 tests/fuzz/gen_h2_seeds.py [OUT_DIR]
"""
import os
import struct
import sys

SEP = b"\xde\xad\xbe\xef"

# frame types and flags (RFC 9113)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIO = 0x1, 0x1, 0x4, 0x8, 0x20

# flags byte: route (bits 0-1), upstream mode (2-3), upstream close (4),
# caller half-close (5), caller write size (6-7)
R_INBOUND, R_H1, R_GRPC = 0, 1, 2
M_CANNED, M_AT_ONCE, M_AFTER_REQUEST = 0 << 2, 1 << 2, 2 << 2
UP_CLOSE, CALLER_SHUT = 0x10, 0x20
W_1, W_7, W_64 = 1 << 6, 2 << 6, 3 << 6


def frame(ftype, flags, sid, payload=b""):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, ftype, flags, sid & 0x7FFFFFFF) + payload


def hpack_int(v, prefix_bits, first=0):
    limit = (1 << prefix_bits) - 1
    if v < limit:
        return bytes([first | v])
    out = [first | limit]
    v -= limit
    while v >= 128:
        out.append(0x80 | (v & 0x7F))
        v >>= 7
    out.append(v)
    return bytes(out)


def lit(name, value):
    """Literal header field without indexing, new name, no Huffman."""
    name, value = name.encode(), value.encode()
    return b"\x00" + hpack_int(len(name), 7) + name + hpack_int(len(value), 7) + value


def block(*fields):
    return b"".join(lit(n, v) for n, v in fields)


def settings(**kv):
    ids = {"header_table_size": 1, "enable_push": 2, "max_concurrent_streams": 3,
           "initial_window_size": 4, "max_frame_size": 5, "max_header_list_size": 6}
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", ids[k], v) for k, v in kv.items()))


def grpc_msg(payload):
    return b"\x00" + struct.pack(">I", len(payload)) + payload


def req(method, path, authority="svc", *extra):
    return block((":method", method), (":scheme", "http"), (":authority", authority), (":path", path), *extra)


GRPC_HDRS = (("content-type", "application/grpc"), ("te", "trailers"), ("grpc-timeout", "5S"))

# upstream answers
H1_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello"
H1_CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n"
              b"a\r\n" + grpc_msg(b"hello") + b"\r\n0\r\ngrpc-status: 0\r\n\r\n")
H1_EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n" + H1_OK
H1_UNTIL_CLOSE = b"HTTP/1.1 200 OK\r\n\r\nbody until the connection closes"
H1_GARBAGE = b"HTTP/1.1 2x0 OK\r\n\r\n"


def h2_answer(sid=1, trailers_only=False, status="200"):
    out = frame(SETTINGS, 0, 0) + frame(SETTINGS, ACK, 0)
    if trailers_only:
        return out + frame(HEADERS, END_HEADERS | END_STREAM, sid,
                           block((":status", status), ("content-type", "application/grpc"),
                                 ("grpc-status", "14"), ("grpc-message", "down")))
    out += frame(HEADERS, END_HEADERS, sid, block((":status", status), ("content-type", "application/grpc")))
    out += frame(DATA, 0, sid, grpc_msg(b"hello"))
    out += frame(HEADERS, END_HEADERS | END_STREAM, sid, block(("grpc-status", "0"), ("grpc-message", "")))
    return out


def seeds():
    s = {}
    hello = settings(max_concurrent_streams=100, initial_window_size=65535)

    # plain requests on every route, canned answers
    get = frame(HEADERS, END_HEADERS | END_STREAM, 1, req("GET", "/"))
    for r, name in ((R_INBOUND, "inbound"), (R_H1, "h1"), (R_GRPC, "grpc")):
        s[f"get_{name}"] = bytes([r]) + hello + get
    s["get_empty_settings"] = bytes([R_H1]) + frame(SETTINGS, 0, 0) + get
    s["head_h1"] = bytes([R_H1]) + hello + frame(HEADERS, END_HEADERS | END_STREAM, 1, req("HEAD", "/x"))

    # gRPC unary call: HEADERS, DATA with END_STREAM
    unary = (frame(HEADERS, END_HEADERS, 1, req("POST", "/pkg.Svc/Unary", "svc", *GRPC_HDRS)) +
             frame(DATA, END_STREAM, 1, grpc_msg(b"ping")))
    for r, name in ((R_GRPC, "grpc"), (R_H1, "h1"), (R_INBOUND, "inbound")):
        s[f"grpc_unary_{name}"] = bytes([r]) + hello + unary
    s["grpc_unary_w1"] = bytes([R_GRPC | W_1]) + hello + unary
    s["grpc_unary_w7_shut"] = bytes([R_GRPC | W_7 | CALLER_SHUT]) + hello + unary

    # request body with a content-length, then trailers on a HEADERS frame
    post = frame(HEADERS, END_HEADERS, 3, req("POST", "/upload", "svc", ("content-type", "text/plain"),
                                              ("content-length", "10")))
    post += frame(DATA, 0, 3, b"01234") + frame(DATA, 0, 3, b"56789")
    s["post_cl_h1"] = bytes([R_H1]) + hello + post + frame(DATA, END_STREAM, 3)
    s["post_trailers_grpc"] = (bytes([R_GRPC]) + hello +
                               frame(HEADERS, END_HEADERS, 1, req("POST", "/pkg.Svc/Stream", "svc", *GRPC_HDRS)) +
                               frame(DATA, 0, 1, grpc_msg(b"a")) + frame(DATA, 0, 1, grpc_msg(b"b")) +
                               frame(HEADERS, END_HEADERS | END_STREAM, 1, block(("x-checksum", "abc"))))
    s["post_trailers_h1"] = (bytes([R_H1]) + hello +
                             frame(HEADERS, END_HEADERS, 1, req("POST", "/up", "svc", ("te", "trailers"))) +
                             frame(DATA, 0, 1, b"chunk") +
                             frame(HEADERS, END_HEADERS | END_STREAM, 1, block(("x-trailer", "1"))))

    # header block split over CONTINUATION frames
    hb = req("GET", "/continued", "svc", ("x-long", "v" * 300), ("accept", "*/*"))
    s["continuation_h1"] = (bytes([R_H1]) + hello + frame(HEADERS, END_STREAM, 1, hb[:20]) +
                            frame(CONTINUATION, 0, 1, hb[20:200]) + frame(CONTINUATION, END_HEADERS, 1, hb[200:]))
    s["continuation_grpc_w64"] = (bytes([R_GRPC | W_64]) + hello + frame(HEADERS, END_STREAM, 1, hb[:50]) +
                                  frame(CONTINUATION, END_HEADERS, 1, hb[50:]))

    # RST_STREAM by the caller mid-request and after the request
    s["rst_mid_request"] = (bytes([R_GRPC]) + hello +
                            frame(HEADERS, END_HEADERS, 1, req("POST", "/pkg.Svc/Unary", "svc", *GRPC_HDRS)) +
                            frame(DATA, 0, 1, grpc_msg(b"x")) + frame(RST_STREAM, 0, 1, struct.pack(">I", 8)))
    s["rst_after_request_h1"] = bytes([R_H1]) + hello + get + frame(RST_STREAM, 0, 1, struct.pack(">I", 8))

    # several streams interleaved, PING, WINDOW_UPDATE, PRIORITY, GOAWAY
    multi = hello
    for sid in (1, 3, 5):
        multi += frame(HEADERS, END_HEADERS | PRIO, sid,
                       struct.pack(">IB", 0, 15) + req("POST", f"/pkg.Svc/M{sid}", "svc", *GRPC_HDRS))
    for sid in (5, 1, 3):
        multi += frame(DATA, END_STREAM, sid, grpc_msg(bytes([sid])))
    multi += frame(PING, 0, 0, b"12345678") + frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1 << 20))
    s["multi_grpc"] = bytes([R_GRPC]) + multi
    s["multi_h1"] = bytes([R_H1]) + multi
    # a client's GOAWAY names the last server-initiated stream: 0 is valid, 5 is not
    s["multi_goaway"] = bytes([R_GRPC]) + multi + frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0))
    s["multi_goaway_bad_id"] = bytes([R_GRPC]) + multi + frame(GOAWAY, 0, 0, struct.pack(">II", 5, 0))
    s["priority_padded"] = (bytes([R_H1]) + hello + frame(PRIORITY, 0, 1, struct.pack(">IB", 0, 1)) +
                            frame(HEADERS, END_HEADERS | END_STREAM | PADDED, 1,
                                  b"\x04" + req("GET", "/padded") + b"\0\0\0\0"))
    s["settings_ack_and_ping_ack"] = (bytes([R_H1]) + hello + frame(SETTINGS, ACK, 0) +
                                      frame(PING, ACK, 0, b"abcdefgh") + get)

    # the fake upstream's own bytes
    s["up_h1_chunked_trailers"] = bytes([R_H1 | M_AFTER_REQUEST]) + hello + unary + SEP + H1_CHUNKED
    s["up_h1_early_hints"] = bytes([R_H1 | M_AFTER_REQUEST]) + hello + get + SEP + H1_EARLY_HINTS
    s["up_h1_until_close"] = bytes([R_H1 | M_AFTER_REQUEST | UP_CLOSE]) + hello + get + SEP + H1_UNTIL_CLOSE
    s["up_h1_garbage"] = bytes([R_H1 | M_AT_ONCE]) + hello + get + SEP + H1_GARBAGE
    s["up_h1_cut"] = bytes([R_H1 | M_AFTER_REQUEST | UP_CLOSE]) + hello + get + SEP + H1_OK[:-2]
    s["up_h2_answer"] = bytes([R_GRPC | M_AFTER_REQUEST]) + hello + unary + SEP + h2_answer()
    s["up_h2_trailers_only"] = bytes([R_GRPC | M_AFTER_REQUEST]) + hello + unary + SEP + h2_answer(trailers_only=True)
    s["up_h2_rst"] = (bytes([R_GRPC | M_AFTER_REQUEST]) + hello + unary + SEP + frame(SETTINGS, 0, 0) +
                      frame(HEADERS, END_HEADERS, 1, block((":status", "200"))) +
                      frame(RST_STREAM, 0, 1, struct.pack(">I", 2)))
    s["up_h2_goaway_refused"] = (bytes([R_GRPC | M_AT_ONCE]) + hello + unary + SEP + frame(SETTINGS, 0, 0) +
                                 frame(GOAWAY, 0, 0, struct.pack(">II", 0, 0)))
    s["up_h2_cut"] = bytes([R_GRPC | M_AFTER_REQUEST | UP_CLOSE]) + hello + unary + SEP + h2_answer()[:-20]
    s["up_inbound_h2"] = bytes([R_INBOUND | M_AFTER_REQUEST]) + hello + get + SEP + h2_answer(status="503")
    return s


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "corpus", "fuzz_h2_down")
    os.makedirs(out, exist_ok=True)
    for name, data in sorted(seeds().items()):
        with open(os.path.join(out, "seed_" + name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds())} seeds to {out}")


if __name__ == "__main__":
    main()

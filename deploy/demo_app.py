#!/usr/bin/env python3
"""A tiny demo service for the quick start: answers every GET with a JSON
greeting naming the path, and POST with the size of the body it received.
Each answer also names the caller identity its sidecar passed in the
x-sidecar-caller header (null when there is none: a plaintext caller)."""
import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = "demo"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _send(self, obj):
        body = (json.dumps(obj) + "\n").encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send({"service": NAME, "path": self.path, "hello": "from the demo app",
                    "caller": self.headers.get("x-sidecar-caller")})

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        self.rfile.read(n)
        self._send({"service": NAME, "path": self.path, "received_bytes": n,
                    "caller": self.headers.get("x-sidecar-caller")})

    def log_message(self, fmt, *args):
        pass


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--name", default="demo", help="service name in the answers")
    a = ap.parse_args()
    NAME = a.name
    ThreadingHTTPServer(("127.0.0.1", a.port), Handler).serve_forever()

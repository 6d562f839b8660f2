#!/usr/bin/env python3
"""The app the container tests run beside the sidecar (Debian's python3 and
python3-grpcio, nothing else).

  pod_app.py http --name orders [--port 8080] [--grace 3]
      HTTP/1.1 on 127.0.0.1: every GET answers JSON {"service", "path",
      "caller"} (caller: the x-sidecar-caller header its sidecar set);
      ?delay_ms=N waits N ms first (requests in flight during a drain);
      ?id=X prints "app: request X" (what reached the app).
  pod_app.py grpc --name payments [--port 8080] [--grace 3]
      gRPC (h2c) on 127.0.0.1: /test.Echo/Unary answers JSON
      {"service", "caller", "echo"} as bytes, with the caller from metadata.
  pod_app.py call-http URL [--header K:V]       (exit 0 and the body on 200)
  pod_app.py call-grpc HOST:PORT [--message M]  (exit 0 and the answer on OK)
      The app's outbound calls, run with `podman exec` inside the pod.
  pod_app.py consul --http HOST:PORT            the Consul agent emulator

On SIGTERM the servers keep serving for --grace seconds and then stop, as an
app that finishes its in-flight work does; the sidecar drains meanwhile.
"""
import argparse
import http.client
import json
import os
import signal
import sys
import threading
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def wait_for_term(grace):
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    signal.signal(signal.SIGINT, lambda *a: done.set())
    done.wait()
    print("app: SIGTERM, serving %.1fs more" % grace, flush=True)
    time.sleep(grace)


def serve_http(a):
    name = a.name

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            if "id" in q:   # the drain test matches what the app saw with what callers got
                print("app: request %s" % q["id"][0], flush=True)
            delay = int(q.get("delay_ms", ["0"])[0])
            if delay:
                time.sleep(min(delay, 10000) / 1000.0)
            body = (json.dumps({"service": name, "path": self.path,
                                "caller": self.headers.get("x-sidecar-caller")}) + "\n").encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 128

    srv = Server(("127.0.0.1", a.port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    print("app: http %s on 127.0.0.1:%d" % (name, a.port), flush=True)
    wait_for_term(a.grace)


def serve_grpc(a):
    import grpc
    name = a.name

    def unary(request, context):
        md = dict(context.invocation_metadata())
        return json.dumps({"service": name, "caller": md.get("x-sidecar-caller"),
                           "echo": request.decode(errors="replace")}).encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Unary": grpc.unary_unary_rpc_method_handler(unary)})
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8), handlers=[handler])
    srv.add_insecure_port("127.0.0.1:%d" % a.port)
    srv.start()
    print("app: grpc %s on 127.0.0.1:%d" % (name, a.port), flush=True)
    wait_for_term(a.grace)
    srv.stop(1).wait(2)


def call_http(a):
    u = urllib.parse.urlsplit(a.url)
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=a.timeout)
    headers = dict(h.split(":", 1) for h in a.header)
    c.request("GET", u.path + ("?" + u.query if u.query else ""), headers=headers)
    r = c.getresponse()
    body = r.read().decode(errors="replace")
    sys.stdout.write(body)
    if r.status != 200:
        print("HTTP %d %s" % (r.status, r.getheader("x-sidecar-reason", "")), file=sys.stderr)
        return 1
    return 0


def call_grpc(a):
    import grpc
    with grpc.insecure_channel(a.target, options=[("grpc.enable_retries", 0)]) as ch:
        unary = ch.unary_unary("/test.Echo/Unary")
        try:
            resp = unary(a.message.encode(), timeout=a.timeout)
        except grpc.RpcError as e:
            print("gRPC %s: %s" % (e.code(), e.details()), file=sys.stderr)
            return 1
    sys.stdout.write(resp.decode(errors="replace") + "\n")
    return 0


def consul(a):
    sys.path.insert(0, "/opt/consul")
    os.execv(sys.executable, [sys.executable, "/opt/consul/consul_emulator.py", "--http", a.http,
                              "--no-check-stagger", "--check-update-interval", "0"])


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for mode in ("http", "grpc"):
        p = sub.add_parser(mode)
        p.add_argument("--name", required=True)
        p.add_argument("--port", type=int, default=8080)
        p.add_argument("--grace", type=float, default=3.0)
    p = sub.add_parser("call-http")
    p.add_argument("url")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--timeout", type=float, default=10)
    p = sub.add_parser("call-grpc")
    p.add_argument("target")
    p.add_argument("--message", default="hello")
    p.add_argument("--timeout", type=float, default=10)
    p = sub.add_parser("consul")
    p.add_argument("--http", default="0.0.0.0:8500")
    a = ap.parse_args()
    return {"http": serve_http, "grpc": serve_grpc, "call-http": call_http,
            "call-grpc": call_grpc, "consul": consul}[a.cmd](a) or 0


if __name__ == "__main__":
    sys.exit(main())

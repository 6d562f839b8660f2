"""What every test peer (tests/peers/*.py) shares: the address text, use as
a context manager, serving an http.server on a thread with its open
connections tracked (so stop() can cut them), and the command-line main
loop. Standard library only."""
import http.server
import socket
import threading
import time


class PeerLifecycle:
    """start() -> port and stop() come from the subclass; it needs .host and .port."""

    @property
    def address(self):
        return "%s:%d" % (self.host if ":" not in self.host else "[%s]" % self.host, self.port)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *a):
        self.stop()


class QuietThreadingHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        pass   # a client going away mid-request is normal in these tests


def tls_server_base(ctx, base=QuietThreadingHTTPServer):
    """`base` whose accepted sockets speak TLS with the ssl.SSLContext ctx.
    The handshake runs in the connection's own thread on its first read, so
    a client that fails it (or never starts it) holds up no other; a failed
    handshake ends that connection quietly (handle_error)."""
    class TlsServer(base):
        def get_request(self):
            sock, peer = super().get_request()
            return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), peer
    return TlsServer


class ThreadedHttpPeer(PeerLifecycle):
    """Serves `handler` (an http.server handler whose setup()/finish() call
    server.peer._conn_opened/_conn_closed) on a thread. The subclass sets
    self._lock, self._conns (a set), self._server = self._thread = None."""

    def _conn_opened(self, sock):
        with self._lock:
            self._conns.add(sock)

    def _conn_closed(self, sock):
        with self._lock:
            self._conns.discard(sock)

    def open_connections(self):
        with self._lock:
            return len(self._conns)

    def _serve(self, handler, thread_name, server_base=QuietThreadingHTTPServer):
        fam = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        cls = type("%s%s" % (server_base.__name__, fam.name), (server_base,), {"address_family": fam})
        self._server = cls((self.host, self.port), handler)
        self._server.peer = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=thread_name, daemon=True)
        self._thread.start()
        return self.port

    def stop(self):
        if not self._server:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(5)
        self._server = None


def serve_until_interrupted(servers):
    """The peers' command-line main loop: sleep until Ctrl-C / SIGINT, then stop them."""
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        for s in servers:
            s.stop()

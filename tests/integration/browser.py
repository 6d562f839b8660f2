"""A real browser for tests: headless Chromium (Debian `chromium`) driven
over the DevTools protocol (python3-websocket).

    with Chromium(tmpdir) as b:
        b.navigate("http://127.0.0.1:19000/")
        b.wait_for("document.body.dataset.refreshes >= 2", timeout=10)
        text = b.evaluate("document.querySelector('h1').textContent")
        b.screenshot(os.path.join(tmpdir, "page.png"))

Chromium runs with a fresh profile in `tmpdir`, no sandbox (tests run as
root), no GPU, and none of its background traffic (component updates,
sync, QUIC, first-run pings): it talks only to the pages it is sent to.
Exceptions thrown by the page and console / security messages (a
Content-Security-Policy violation, a failed fetch) are collected in
`problems` for the test to look at. Every wait is bounded.
"""

import base64
import json
import os
import shutil
import time
import urllib.request

import harness

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--no-default-browser-check",
         "--window-size=1400,1000", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


def chromium_path():
    for name in ("chromium", "chromium-browser"):
        p = shutil.which(name)
        if p:
            return p
    return None


def missing():
    """Why a browser test cannot run here, or None."""
    if not chromium_path():
        return "chromium is not installed (tests/install-test-deps.sh installs it)"
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "python3-websocket is not installed (tests/install-test-deps.sh installs it)"
    return None


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


class BrowserError(AssertionError):
    pass


class Chromium:
    def __init__(self, tmpdir, start_timeout=30.0):
        import websocket
        self.tmpdir = tmpdir
        self.profile = os.path.join(tmpdir, "chromium-profile")
        os.makedirs(self.profile, exist_ok=True)
        self.log_path = os.path.join(tmpdir, "chromium.log")
        self.proc = harness.spawn([chromium_path()] + FLAGS + ["--user-data-dir=" + self.profile, "about:blank"],
                                  log_path=self.log_path)
        self.problems = []
        self._next = 0
        port_file = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.time() + start_timeout
        while not _read(port_file):
            if self.proc.poll() is not None:
                raise BrowserError("chromium exited (%s): %s" % (self.proc.returncode, self.log_tail()))
            if time.time() > deadline:
                self.close()
                raise BrowserError("chromium did not open its DevTools port in %.0fs: %s"
                                   % (start_timeout, self.log_tail()))
            time.sleep(0.1)
        self.port = int(_read(port_file).split()[0])
        page = None
        while page is None:
            with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % self.port, timeout=5) as r:
                targets = json.load(r)
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page is None:
                if time.time() > deadline:
                    self.close()
                    raise BrowserError("chromium has no page target: %r" % targets)
                time.sleep(0.1)
        # DevTools refuses WebSocket handshakes that carry an Origin it was
        # not told about: send none.
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=10, suppress_origin=True)
        for domain in ("Page", "Runtime", "Log"):
            self.call(domain + ".enable")

    def log_tail(self, n=2000):
        try:
            return open(self.log_path, errors="replace").read()[-n:]
        except OSError:
            return ""

    def _event(self, msg):
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            self.problems.append("exception: %s %s" % (d.get("text"), d.get("exception", {}).get("description", "")))
        elif m == "Log.entryAdded":
            e = p.get("entry", {})
            if e.get("level") in ("error", "warning"):
                self.problems.append("%s %s: %s %s" % (e.get("source"), e.get("level"), e.get("text"), e.get("url", "")))
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning"):
            self.problems.append("console %s: %s" % (p.get("type"), [a.get("value") for a in p.get("args", [])]))

    def call(self, method, timeout=15.0, **params):
        self._next += 1
        mid = self._next
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        deadline = time.time() + timeout
        while True:
            left = deadline - time.time()
            if left <= 0:
                raise BrowserError("no answer to %s in %.0fs" % (method, timeout))
            self.ws.settimeout(left)
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise BrowserError("%s: %s" % (method, msg["error"]))
                return msg.get("result", {})
            self._event(msg)

    def navigate(self, url, timeout=15.0):
        r = self.call("Page.navigate", url=url)
        if r.get("errorText"):
            raise BrowserError("navigating to %s: %s" % (url, r["errorText"]))
        self.wait_for("document.readyState === 'complete'", timeout=timeout)

    def evaluate(self, expr):
        """The value of a JavaScript expression (awaited when a promise),
        returned by value (JSON-able)."""
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            d = r["exceptionDetails"]
            raise BrowserError("evaluating %r: %s %s" % (expr[:200], d.get("text"),
                                                          d.get("exception", {}).get("description", "")))
        return r.get("result", {}).get("value")

    def wait_for(self, expr, timeout=10.0, interval=0.2):
        """Polls until `expr` is truthy; returns its value."""
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            last = self.evaluate(expr)
            if last:
                return last
            time.sleep(interval)
        raise BrowserError("still false after %.0fs: %s (last value %r)" % (timeout, expr, last))

    def screenshot(self, path):
        r = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(r["data"]))
        return path

    def close(self):
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
            self.ws = None
        harness.kill_proc(self.proc, grace=2.0)
        if not harness.KEEP_TMP:       # the profile is tens of MiB; screenshots stay
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

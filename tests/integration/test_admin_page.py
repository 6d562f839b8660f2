"""The admin page (GET / on the admin listener) in a real browser: headless
Chromium (tests/integration/browser.py) against a running sidecar with one
healthy upstream ("web", an HTTP/1.1 peer with traffic flowing) and one
failing upstream ("payments": its only instance refuses connections, so its
circuit breaker opens after 3 consecutive failures).

  headers      GET / is the built-in page byte for byte (sidecar/admin/ui/
               page.html), HTML with a Content-Security-Policy pinning its
               one inline script and style by hash; it loads nothing from
               anywhere else; the Host check applies (a rebinding name is
               refused, 127.0.0.1:port as a browser sends it is served)
  browser      the page, refreshing itself, shows both upstreams: "web" with
               a request rate, 100 % success and a p50; "payments" with its
               breaker open and the reason of the transition; the instances;
               no script error and no CSP violation; a screenshot is saved in
               the test's temp dir (its path is printed)
  escaping     hostile JSON fed to the page's renderers (markup in a failure
               reason, an upstream name, a breaker reason) appears as text
               and creates no element, runs nothing
  certificates an inbound listener with TLS (make-certs.sh): the certificate
               panel shows its identity, expiry and state as /certs has them,
               and /stats its seconds to expiry
  consul       a Consul-discovered upstream (the agent emulator): the watch
               row (fresh, last answer), the registration, the instance from
               Consul; the agent stopped: the watch shows stale, with its error
  token        with admin.token_file the page itself is served without the
               token, the figures are not; the page asks for the token and,
               given it, shows the upstreams
  z_failures   (last: needs GET /failures) the failed requests of "payments"
               appear as rows with their status, reason and request ID as the
               JSON has them
"""

import hashlib
import base64
import json
import os
import re
import shutil
import tempfile
import time
import unittest

import browser
import harness
from harness import SidecarTestCase, free_port

PAGE_SRC = os.path.join(harness.ROOT, "sidecar", "admin", "ui", "page.html")
TOKEN = "page-t0k-%d" % os.getpid()


def get(url, headers=None, timeout=5.0):
    return harness.http_request(url, headers=headers, timeout=timeout)


def csp_hash(html, tag):
    body = re.search(r"<%s>(.*?)</%s>" % (tag, tag), html, re.S).group(1)
    return "'sha256-%s'" % base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()


class AdminPageTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        why = browser.missing()
        if why:
            raise unittest.SkipTest(why)
        cls.web = cls.class_http1_peer("web")
        cls.dead = free_port()                      # nothing listens: connect-failure
        cls.web_port, cls.pay_port = free_port(), free_port()
        ups = [
            harness.upstream("web", "http1", cls.web_port, [cls.web.port]),
            harness.upstream("payments", "http1", cls.pay_port, [cls.dead],
                             circuit_breaker={"failure_rate": "50%", "window": "10s", "min_calls": 100,
                                              "consecutive_failures": 3, "open_for": "60s",
                                              "half_open_calls": 1},
                             retries={"max_attempts": 2, "on": ["connect-failure"]},
                             bulkhead={"max_concurrent": 8, "max_pending": 4, "queue_timeout": "1s"}),
        ]
        cls.sc = cls.class_sidecar(harness.base_config(free_port(), upstreams=ups))
        cls.page_url = cls.sc.admin_url("/")
        cls.failures = []                           # (status, x-sidecar-reason) of calls to payments
        for _ in range(6):
            status, h, _ = get("http://127.0.0.1:%d/pay" % cls.pay_port)
            cls.failures.append((status, h.get("x-sidecar-reason")))

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="sc-admin-page-")
        self.addCleanup(self.tidy)

    def tidy(self):
        """Screenshots stay (their paths are printed); the rest goes."""
        if harness.KEEP_TMP:
            return
        for name in os.listdir(self.tmp):
            path = os.path.join(self.tmp, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif not name.endswith(".png"):
                os.unlink(path)
        if not os.listdir(self.tmp):
            os.rmdir(self.tmp)

    def open_browser(self):
        b = browser.Chromium(self.tmp)
        self.addCleanup(b.close)
        return b

    def real_problems(self, b):
        # Chromium reports every non-2xx fetch; /failures answering 404
        # (a build without it) is expected and shown as such by the page.
        return [p for p in b.problems if not ("404" in p and "/failures" in p)]

    def has_failures_endpoint(self):
        return get(self.sc.admin_url("/failures"))[0] != 404

    # ------------------------------------------------------------------

    def test_headers(self):
        status, h, body = get(self.page_url)
        self.assertEqual(status, 200)
        self.assertTrue(h["content-type"].startswith("text/html"), h)
        with open(PAGE_SRC, "rb") as f:
            self.assertEqual(body, f.read(), "GET / is not the page as built from page.html")
        html = body.decode()
        csp = h["content-security-policy"]
        self.assertIn("default-src 'none'", csp)
        self.assertIn("script-src " + csp_hash(html, "script") + ";", csp)
        self.assertIn("style-src " + csp_hash(html, "style") + ";", csp)
        self.assertIn("connect-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertEqual(h.get("x-content-type-options"), "nosniff")
        # nothing from elsewhere: no external src/href, import or url()
        self.assertIsNone(re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I))
        self.assertNotIn("@import", html)
        self.assertIsNone(re.search(r"url\(\s*['\"]?(https?:)?//", html))
        self.assertEqual(len(re.findall(r"<script", html)), 1)
        # values from JSON go in as text only
        self.assertNotIn("innerHTML", html)
        self.assertNotIn("outerHTML", html)
        self.assertNotIn("insertAdjacentHTML", html)
        self.assertNotIn("document.write", html)
        # the admin's Host check applies to the page
        port = self.sc.admin_addr[1]
        self.assertEqual(get(self.page_url, {"Host": "rebind.example:%d" % port})[0], 403)
        self.assertEqual(get(self.page_url, {"Host": "127.0.0.1:%d" % port})[0], 200)
        self.assertEqual(get(self.page_url, {"Host": "localhost:%d" % port})[0], 200)
        # the endpoint list moved to /help
        status, _, text = get(self.sc.admin_url("/help"))
        self.assertEqual(status, 200)
        self.assertIn(b"GET /clusters", text)

    def test_browser(self):
        # the breaker of payments is open (setUpClass made it fail)
        cb = next(u for u in self.sc.clusters()["upstreams"] if u["name"] == "payments")["circuit_breaker"]
        self.assertEqual(cb["state"], "open", (cb, self.failures))
        self.assertIn("consecutive failures", cb["last_transition"]["reason"])
        self.assertTrue(cb["enabled"])
        traffic = harness.Traffic("http://127.0.0.1:%d/delay/3" % self.web_port, interval=0.05, limit=45.0)
        self.addCleanup(traffic.stop)
        b = self.open_browser()
        b.navigate(self.page_url)
        row = "document.querySelector('#upstreams tr[data-upstream=\"%s\"]')"
        cell = lambda u, c: "(%s?.querySelector('%s')?.textContent || '')" % (row % u, c)  # noqa: E731
        b.wait_for("Number(document.body.dataset.refreshes) >= 3", timeout=20)
        # web: traffic flows, all of it succeeds, a latency is shown
        b.wait_for(cell("web", ".rate") + " !== '–' && parseFloat(%s) > 0" % cell("web", ".rate"), timeout=15)
        self.assertEqual(b.evaluate(cell("web", ".success")).split("since")[0].strip(), "100 %")
        p50 = b.evaluate(cell("web", ".p50"))
        self.assertRegex(p50, r"^(> )?[0-9.]+ (µs|ms|s)$")
        self.assertRegex(b.evaluate(cell("web", ".p99")), r"^(> )?[0-9.]+ (µs|ms|s)$")
        self.assertEqual(b.evaluate(cell("web", ".breaker-state")), "closed")
        # payments: breaker open, with the reason of the transition
        self.assertEqual(b.evaluate(cell("payments", ".breaker-state")), "open")
        self.assertEqual(b.evaluate((row % "payments") + ".querySelector('.breaker').dataset.state"), "open")
        reason = b.evaluate(cell("payments", ".breaker-reason"))
        self.assertIn("closed → open", reason)
        self.assertIn(cb["last_transition"]["reason"], reason)
        self.assertRegex(b.evaluate(cell("payments", ".breaker-when")), r"^\d+ (s|min) ago$")
        self.assertIn("/ 8 active", b.evaluate(cell("payments", ".bulkhead")))
        self.assertIn("left", b.evaluate(cell("payments", ".retry-budget")))
        self.assertEqual(b.evaluate(cell("web", ".bulkhead")), "off")
        # instances of both, each with its address
        inst = b.evaluate("[...document.querySelectorAll('#instances tbody tr')].map("
                          "r => [r.dataset.upstream, r.dataset.address])")
        self.assertIn(["web", "127.0.0.1:%d" % self.web.port], inst)
        self.assertIn(["payments", "127.0.0.1:%d" % self.dead], inst)
        # the failures panel: rows once /failures exists, else a note
        if not self.has_failures_endpoint():
            self.assertIn("404", b.evaluate("document.getElementById('failures-note').textContent"))
        self.assertIn("not configured", b.evaluate("document.getElementById('consul-note').textContent"))
        self.assertIn("no TLS", b.evaluate("document.querySelector('#certs tbody').textContent"))
        self.assertEqual(b.evaluate("document.querySelector('#status .err')"), None)
        shot = b.screenshot(os.path.join(self.tmp, "admin-page.png"))
        print("\nscreenshot of the admin page: %s" % shot)
        self.assertGreater(os.path.getsize(shot), 10000)
        self.assertEqual(self.real_problems(b), [])
        traffic.stop()
        self.assertGreater(traffic.codes.get(200, 0), 0, traffic.codes)

    def test_escaping(self):
        b = self.open_browser()
        b.navigate(self.page_url)
        b.wait_for("Number(document.body.dataset.refreshes) >= 1", timeout=15)
        evil = '<img src=x onerror="window.pwned=1"><b>bold</b>'
        # stop the refresh so it does not redraw over what is fed in
        b.evaluate("document.getElementById('pause').click()")
        time.sleep(1.0)                              # a refresh in flight lands before what is fed in
        rows = [{"time": 1700000000.5, "upstream": "<b>up</b>", "instance": "127.0.0.1:1", "attempts": 2,
                 "status": 503, "grpc_status": None, "reason": evil, "request_id": "<script>x</script>",
                 "trace_id": "\"'&", "direction": "outbound"}]
        b.evaluate("window.sidecarAdmin.renderFailures(%s)" % json.dumps(rows))
        clusters = {"upstreams": [{"name": evil, "direction": "outbound", "protocol": "http1", "listen": evil,
                                   "discovery": "static", "instances": [], "active_requests": 0,
                                   "circuit_breaker": {"enabled": True, "state": "open", "forced": "none",
                                                       "calls": 1, "failures": 1, "ms_until_half_open": 1000,
                                                       "last_transition": {"from": "closed", "to": "open",
                                                                           "reason": evil, "ms_ago": 5}},
                                   "bulkhead": {"enabled": False}, "retry_budget": {"enabled": False}}]}
        b.evaluate("window.sidecarAdmin.renderUpstreams(%s, null, null)" % json.dumps(clusters))
        time.sleep(0.5)                              # an onerror would have fired by now
        self.assertIsNone(b.evaluate("window.pwned"))
        self.assertEqual(b.evaluate("document.querySelectorAll('main img, main b, main script').length"), 0)
        text = b.evaluate("document.querySelector('#failures tbody').textContent")
        self.assertIn(evil, text)
        self.assertIn("<b>up</b>", text)
        self.assertIn("<script>x</script>", text)
        self.assertIn(evil, b.evaluate("document.querySelector('#upstreams .breaker-reason').textContent"))
        self.assertEqual(b.evaluate("document.querySelector('#upstreams tbody tr').dataset.upstream"), evil)
        self.assertEqual(self.real_problems(b), [])

    def test_token(self):
        cfg = harness.base_config(free_port(), upstreams=[harness.upstream("web", "http1", free_port(),
                                                                           [self.web.port])])
        cfg["admin"]["token_file"] = "admin-token"
        sc = self.sidecar(cfg, name="token", files={"admin-token": TOKEN + "\n"})
        status, _, body = get(sc.admin_url("/"))
        self.assertEqual(status, 200)
        self.assertNotIn(TOKEN.encode(), body)
        self.assertEqual(get(sc.admin_url("/clusters"))[0], 401)
        self.assertEqual(get(sc.admin_url("/"), {"Host": "rebind.example:%d" % sc.admin_addr[1]})[0], 403)
        b = self.open_browser()
        b.navigate(sc.admin_url("/"))
        b.wait_for("document.getElementById('token').classList.contains('shown')", timeout=15)
        self.assertIn("401", b.evaluate("document.getElementById('status').textContent"))
        self.assertIsNone(b.evaluate("document.querySelector('#upstreams tr[data-upstream=\"web\"]')"))
        b.evaluate("document.getElementById('token-input').value = %s; "
                   "document.getElementById('token-use').click()" % json.dumps(TOKEN))
        b.wait_for("document.querySelector('#upstreams tr[data-upstream=\"web\"]') !== null", timeout=15)
        b.wait_for("!document.querySelector('#status .err')", timeout=10)
        self.assertFalse(b.evaluate("document.getElementById('token').classList.contains('shown')"))

    def test_certificates(self):
        d = os.path.join(self.tmp, "certs")
        r = harness.run(["sh", os.path.join(harness.ROOT, "certs", "make-certs.sh"), "--out", d,
                         "--trust-domain", "example.org", "api"], timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        cfg = harness.base_config(free_port(), inbound={"listen_port": free_port(), "app_port": self.web.port},
                                  name="api")
        cfg["tls"] = {"cert": os.path.join(d, "api.pem"), "key": os.path.join(d, "api.key"),
                      "ca": os.path.join(d, "ca-bundle.pem")}
        sc = self.sidecar(cfg, name="tls")
        certs = sc.admin_json("/certs")
        days = certs["inbound"]["certificate"]["days_left"]
        # /stats: seconds until our certificate expires, by use
        left = sc.stats().value("sidecar_tls_certificate_expiry_seconds", use="inbound")
        self.assertLessEqual(abs(left - days * 86400), 86400, (left, days))
        b = self.open_browser()
        b.navigate(sc.admin_url("/"))
        b.wait_for("document.querySelector('#certs tbody tr[data-use=\"inbound listener\"]') !== null", timeout=15)
        cells = b.evaluate("[...document.querySelector('#certs tbody tr[data-use=\"inbound listener\"]').cells]"
                           ".map(c => c.textContent)")
        self.assertEqual(cells[2], "spiffe://example.org/ns/default/dc/dc1/svc/api")
        self.assertEqual(cells[3], certs["inbound"]["certificate"]["not_after"])
        self.assertIn(cells[4], (str(days), str(days - 1)))  # a day boundary may pass in between
        self.assertEqual(cells[5], "valid")
        self.assertTrue(b.evaluate("document.querySelector('#certs tbody tr[data-use=\"inbound listener: CA\"]') "
                                   "!== null"))
        self.assertEqual(b.evaluate("document.getElementById('certs-source').textContent"), "from files")
        inbound = b.evaluate("document.querySelector('#upstreams tr[data-upstream=\"inbound\"]') !== null")
        self.assertTrue(inbound)
        self.assertEqual(self.real_problems(b), [])

    def test_consul(self):
        emu = self.emulator()
        emu.register_instance("orders", port=self.web.port, address="127.0.0.1")
        port = free_port()
        cfg = harness.base_config(free_port(), upstreams=[{
            "upstream": "orders", "protocol": "http1", "listen": harness.addr(port),
            "discovery": {"consul": {"service": "orders"}},
            "timeouts": {"connect": "250ms", "request": "5s", "per_try": 0, "idle": "60s"}}], name="web")
        cfg["service"] = {"name": "web", "id": "web-1", "address": "127.0.0.1"}
        cfg["consul"] = {"address": emu.address, "check": "ttl"}
        sc = self.sidecar(cfg, name="consul")
        self.assertTrue(harness.wait_until(lambda: get("http://127.0.0.1:%d/echo" % port)[0] == 200, timeout=10))
        b = self.open_browser()
        b.navigate(sc.admin_url("/"))
        watch = "document.querySelector('#consul-watches tbody tr[data-upstream=\"orders\"]')"
        b.wait_for(watch + " !== null", timeout=15)
        cells = b.evaluate("[...%s.cells].map(c => c.textContent)" % watch)
        self.assertEqual(cells[1], "orders")
        self.assertEqual(cells[2], "fresh")
        self.assertRegex(cells[3], r"^\d+ s ago$")
        note = b.evaluate("document.getElementById('consul-note').textContent")
        self.assertIn("registration: registered", note)
        self.assertIn("web-1", note)
        self.assertIn("consul: orders", b.evaluate(
            "document.querySelector('#upstreams tr[data-upstream=\"orders\"] .discovery').textContent"))
        self.assertIn(["orders", "127.0.0.1:%d" % self.web.port], b.evaluate(
            "[...document.querySelectorAll('#instances tbody tr')].map(r => [r.dataset.upstream, r.dataset.address])"))
        # the agent goes away: the watch turns stale, the page says so
        emu.stop()
        b.wait_for("(%s?.cells[2].textContent || '').startsWith('stale')" % watch, timeout=30)
        self.assertTrue(b.evaluate("document.querySelector('#upstreams tr[data-upstream=\"orders\"] .discovery')"
                                   ".textContent.includes('stale')"))
        self.assertNotEqual(b.evaluate("%s.cells[6].textContent" % watch), "")
        self.assertEqual(self.real_problems(b), [])

    # Last: needs GET /failures (a JSON array of {time, upstream, instance,
    # attempts, status, grpc_status, reason, request_id, trace_id, direction}).
    def test_z_failures(self):
        if not self.has_failures_endpoint():
            self.skipTest("GET /failures is not in this build")
        for _ in range(2):
            get("http://127.0.0.1:%d/pay-again" % self.pay_port)
        records = json.loads(get(self.sc.admin_url("/failures"))[2])
        self.assertGreater(self.sc.stats().value("sidecar_failures_recorded_total"), 0)
        self.assertTrue(all(r.get("request_id") for r in records), records)
        mine = [r for r in records if r.get("upstream") == "payments"]
        self.assertTrue(mine, records)
        b = self.open_browser()
        b.navigate(self.page_url)
        b.wait_for("document.querySelectorAll('#failures tbody tr[data-upstream=\"payments\"]').length > 0",
                   timeout=15)
        rows = b.evaluate("[...document.querySelectorAll('#failures tbody tr')].map("
                          "r => [...r.cells].map(c => c.textContent))")
        by_id = {r[8]: r for r in rows}
        shown = [r for r in mine if r.get("request_id") in by_id]
        self.assertTrue(shown, (rows, mine))
        text = lambda v: "" if v is None else str(v)  # noqa: E731  (null shows as an empty cell)
        for r in shown:
            cells = by_id[r["request_id"]]
            self.assertEqual(cells[1], "payments")
            self.assertEqual(cells[2], text(r.get("direction")))
            self.assertEqual(cells[3], text(r.get("instance")))
            self.assertEqual(cells[4], text(r.get("attempts")))
            self.assertEqual(cells[5], text(r.get("status")))
            self.assertEqual(cells[6], text(r.get("grpc_status")))
            self.assertEqual(cells[7], text(r.get("reason")))
            self.assertEqual(cells[9], text(r.get("trace_id")))
        self.assertTrue(any(c[7] in ("circuit-open", "connect-failure") for c in rows), rows)
        b.screenshot(os.path.join(self.tmp, "admin-page-failures.png"))
        self.assertEqual(self.real_problems(b), [])


if __name__ == "__main__":
    unittest.main()

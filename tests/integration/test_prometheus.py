"""deploy/prometheus/ (scrape configuration, recording and alert rules)
checked by promtool and run by a real Prometheus server (Debian
`prometheus`) against a running sidecar.

  promtool     `promtool check config` (which checks the rule files it
               names too), `promtool check rules`, and `promtool test rules`
               (deploy/prometheus/tests/: every alert on synthetic series,
               firing and staying quiet)
  live         Prometheus on loopback (temp storage, 1 s scrape and
               evaluation, the shipped rules with their `for:` shortened to
               1 s) scrapes a sidecar with a healthy upstream "web" (traffic
               flowing) and a failing one "payments": every rule evaluates
               without error and nothing fires while payments is untouched;
               once calls to payments fail and its breaker opens,
               SidecarCircuitBreakerOpen fires for payments (GET
               /api/v1/alerts), and no alert names web
"""

import json
import os
import shutil
import tempfile
import unittest
import urllib.parse

import yaml

import harness
from harness import SidecarTestCase, free_port

PROM_DIR = os.path.join(harness.ROOT, "deploy", "prometheus")
RULES = [os.path.join(PROM_DIR, "rules", n) for n in ("sidecar-recording.yml", "sidecar-alerts.yml")]


def missing_tools():
    for t in ("prometheus", "promtool"):
        if not shutil.which(t):
            return "%s is not installed (tests/install-test-deps.sh installs Debian's prometheus)" % t
    return None


def get_json(url, timeout=5.0):
    status, _, body = harness.http_request(url, timeout=timeout)
    if status != 200:
        raise AssertionError("GET %s: %d %r" % (url, status, body[:300]))
    return json.loads(body)


class PromtoolTest(unittest.TestCase):
    def setUp(self):
        why = missing_tools()
        if why:
            self.skipTest(why)

    def promtool(self, *args):
        r = harness.run(["promtool"] + list(args), timeout=60, cwd=PROM_DIR)
        out = (r.stdout + r.stderr).decode(errors="replace")
        self.assertEqual(r.returncode, 0, out)
        return out

    def test_check_config(self):
        out = self.promtool("check", "config", "prometheus.yml")
        self.assertIn("2 rule files found", out)

    def test_check_rules(self):
        out = self.promtool("check", "rules", *RULES)
        self.assertNotIn("FAILED", out)

    def test_rule_unit_tests(self):
        out = self.promtool("test", "rules", os.path.join("tests", "sidecar-rules-test.yml"))
        self.assertIn("SUCCESS", out)
        # every alert of the shipped rules has a unit test
        with open(os.path.join(PROM_DIR, "tests", "sidecar-rules-test.yml")) as f:
            tested = {t["alertname"] for case in yaml.safe_load(f)["tests"] for t in case.get("alert_rule_test", [])}
        with open(RULES[1]) as f:
            alerts = {r["alert"] for g in yaml.safe_load(f)["groups"] for r in g["rules"]}
        self.assertEqual(alerts - tested, set())


class LivePrometheusTest(SidecarTestCase):
    def setUp(self):
        why = missing_tools()
        if why:
            self.skipTest(why)
        self.tmp = tempfile.mkdtemp(prefix="sc-prometheus-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def start_prometheus(self, target):
        """Prometheus with the shipped configuration and rules, made fast:
        1 s intervals, `for:` 1 s, the one target."""
        with open(os.path.join(PROM_DIR, "prometheus.yml")) as f:
            cfg = yaml.safe_load(f)
        cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
        job = cfg["scrape_configs"][0]
        self.assertEqual(job["job_name"], "sidecar")
        job["scrape_interval"], job["scrape_timeout"] = "1s", "1s"
        job["static_configs"] = [{"targets": [target]}]
        cfg["rule_files"] = []
        for path in RULES:
            with open(path) as f:
                rules = yaml.safe_load(f)
            for g in rules["groups"]:
                for r in g["rules"]:
                    if "for" in r:
                        r["for"] = "1s"
            out = os.path.join(self.tmp, os.path.basename(path))
            with open(out, "w") as f:
                yaml.safe_dump(rules, f)
            cfg["rule_files"].append(out)
        conf = os.path.join(self.tmp, "prometheus.yml")
        with open(conf, "w") as f:
            yaml.safe_dump(cfg, f)
        port = free_port()
        log = os.path.join(self.tmp, "prometheus.log")
        p = self.spawn(["prometheus", "--config.file=" + conf, "--storage.tsdb.path=" + os.path.join(self.tmp, "data"),
                        "--web.listen-address=127.0.0.1:%d" % port, "--log.level=warn"], log_path=log)
        self.prom_log = log
        base = "http://127.0.0.1:%d" % port
        if not harness.wait_until(lambda: p.poll() is None and harness.port_open(port), timeout=30, interval=0.1):
            self.fail("prometheus did not start: %s" % self.log_tail())
        self.assertTrue(harness.wait_until(
            lambda: harness.http_request(base + "/-/ready", timeout=2)[0] == 200, timeout=30, interval=0.1), self.log_tail())
        return base

    def log_tail(self):
        try:
            with open(self.prom_log, errors="replace") as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def alerts(self, base):
        return get_json(base + "/api/v1/alerts")["data"]["alerts"]

    def query(self, base, expr):
        return get_json(base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr}))["data"]["result"]

    def test_breaker_alert_fires(self):
        web = self.http1_peer("web")
        dead = free_port()
        web_port, pay_port = free_port(), free_port()
        ups = [harness.upstream("web", "http1", web_port, [web.port]),
               harness.upstream("payments", "http1", pay_port, [dead],
                                circuit_breaker={"failure_rate": "50%", "window": "10s", "min_calls": 100,
                                                 "consecutive_failures": 3, "open_for": "60s",
                                                 "half_open_calls": 1})]
        sc = self.sidecar(harness.base_config(free_port(), upstreams=ups))
        traffic = harness.Traffic("http://127.0.0.1:%d/echo" % web_port, limit=90.0)
        self.addCleanup(traffic.stop)
        base = self.start_prometheus("%s:%d" % sc.admin_addr)

        # scraped, every rule evaluated without error, nothing firing
        def target_up():
            t = get_json(base + "/api/v1/targets")["data"]["activeTargets"]
            return len(t) == 1 and t[0]["health"] == "up" and t[0]
        self.assertTrue(harness.wait_until(target_up, timeout=20, interval=0.25), get_json(base + "/api/v1/targets"))

        def web_success():
            r = self.query(base, 'upstream:sidecar_upstream_success:ratio_rate1m{upstream="web"}')
            return r and float(r[0]["value"][1]) == 1.0
        self.assertTrue(harness.wait_until(web_success, timeout=30, interval=0.25),
                        self.query(base, '{__name__=~"upstream:.*", upstream="web"}'))
        groups = get_json(base + "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        self.assertEqual(len(rules), 21)
        for r in rules:
            self.assertEqual(r.get("health"), "ok", r)
        self.assertEqual([a for a in self.alerts(base) if a["state"] == "firing"], [])
        self.assertTrue(self.query(base, 'upstream:sidecar_upstream_request_duration_seconds:p99_5m{upstream="web"}'))

        # payments fails: the breaker opens, the alert fires
        codes = [harness.http_request("http://127.0.0.1:%d/pay" % pay_port)[0] for _ in range(5)]
        self.assertEqual(codes, [503] * 5)
        cb = next(u for u in sc.clusters()["upstreams"] if u["name"] == "payments")["circuit_breaker"]
        self.assertEqual(cb["state"], "open")

        def breaker_alert():
            return [a for a in self.alerts(base) if a["labels"]["alertname"] == "SidecarCircuitBreakerOpen"
                    and a["state"] == "firing"]
        firing = harness.wait_until(breaker_alert, timeout=30, interval=0.25)
        self.assertTrue(firing, (self.alerts(base), self.log_tail()))
        (alert,) = breaker_alert()
        self.assertEqual(alert["labels"]["upstream"], "payments")
        self.assertEqual(alert["labels"]["severity"], "page")
        self.assertEqual(alert["labels"]["instance"], "%s:%d" % sc.admin_addr)
        self.assertIn("circuit breaker of payments", alert["annotations"]["summary"])
        self.assertEqual(float(alert["value"]), 1.0)
        # the healthy upstream stays out of it
        for a in self.alerts(base):
            self.assertNotEqual(a["labels"].get("upstream"), "web", a)
        traffic.stop()
        self.assertGreater(traffic.codes.get(200, 0), 0, traffic.codes)


if __name__ == "__main__":
    unittest.main()

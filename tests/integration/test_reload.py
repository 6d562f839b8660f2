"""Reloading the configuration while running: the triggers (SIGHUP, POST
/reload with the admin's checks, the file watch with its debounce), an
invalid file that changes nothing and says why (log lines with file:line,
/config, the failure counter), settings that apply live (log.level) and
those that wait for a restart (workers, limits, ...) while the rest applies,
and the hash of the configuration in use.
"""

import json
import os
import signal
import time
import unittest

import threading

import harness
from harness import SidecarTestCase, free_port, http_get, wait_until
from grpc_client import Echo
from fault_client import http_call, unary


def sanitized_binary():
    """True for a build with AddressSanitizer: its quarantine keeps freed
    memory mapped, so RSS says nothing about leaks there (its leak check at
    exit does)."""
    with open(harness.sidecar_binary(), "rb") as f:
        return b"__asan_init" in f.read()


def total_reloads(state):
    return sum(state["reloads"].values())


class ReloadTestCase(SidecarTestCase):
    """Helpers: write files next to a sidecar's sidecar.yaml and reload."""

    def write(self, sc, rel, content):
        """Writes a file of the sidecar's directory (a dict as YAML) the
        way an editor saving in place does."""
        path = os.path.join(sc.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(content if isinstance(content, str) else harness.to_yaml(content))
        return path

    @staticmethod
    def read(path):
        with open(path) as f:
            return f.read()

    def state(self, sc):
        return sc.config_json()["reload"]

    def sighup(self, sc, timeout=5.0):
        """SIGHUP, then the state once that reload is recorded."""
        before = total_reloads(self.state(sc))
        sc.send_signal(signal.SIGHUP)
        got = {}

        def done():
            got["s"] = self.state(sc)
            return total_reloads(got["s"]) > before
        self.assertTrue(wait_until(done, timeout), "no reload recorded after SIGHUP\n" + sc.log_tail())
        return got["s"]

    def post_reload(self, sc, headers=None):
        status, _, body = sc.admin("/reload", method="POST", data=b"", headers=headers)
        return status, (json.loads(body) if body.startswith(b"{") else body)


class ReloadValidationTest(ReloadTestCase):
    """What reloads refuse, and the admin's trigger."""

    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer()

    def start(self, extra=None):
        admin, lp = free_port(), free_port()
        cfg = harness.base_config(admin, upstreams=[harness.upstream("a", "http1", lp, [self.peer.port])])
        cfg["policies"] = "policies"
        cfg.update(extra or {})
        sc = self.sidecar(cfg, name="reload", files={"policies/b.yaml": self.policy_b(free_port())})
        return sc, lp

    def policy_b(self, port, **extra):
        p = harness.upstream("b", "http1", port, [self.peer.port])
        p.update(extra)
        return p

    def test_invalid_files_change_nothing_and_say_why(self):
        sc, lp = self.start()
        before = sc.config_json()
        b_path = os.path.join(sc.dir, "policies/b.yaml")
        good_b = self.read(b_path)
        # one broken policy file (two problems) and a bad value in sidecar.yaml
        self.write(sc, "policies/b.yaml", good_b.replace("protocol: http1", "protocol: http9")
                   .replace("connect: 250ms", "connect: 10"))
        text = self.read(sc.config_path)
        self.write(sc, "sidecar.yaml", text.replace("drain_timeout: 5s", "drain_timeout: soon"))
        st = self.sighup(sc)
        last = st["last"]
        self.assertEqual(last["trigger"], "SIGHUP")
        self.assertEqual(last["outcome"], "failed")
        self.assertIsNone(last["changes"])
        problems = "\n".join(last["problems"])
        self.assertIn("policies/b.yaml:2: protocol: 'http9' is not valid", problems)
        self.assertRegex(problems, r"policies/b\.yaml:\d+: timeouts\.connect: '10' is not a duration")
        self.assertRegex(problems, r"sidecar\.yaml:\d+: drain_timeout: 'soon' is not a duration")
        self.assertEqual(len(last["problems"]), 3, problems)
        # each problem is in the log with file:line, and why nothing changed
        log = sc.log_text()
        for p in last["problems"]:
            self.assertIn("reload (SIGHUP): " + p, log)
        self.assertIn("the configuration is invalid (3 problems); still running the one in use (hash %s)"
                      % before["reload"]["hash"], log)
        # nothing changed: the configuration, its hash, the counters say so
        after = sc.config_json()
        self.assertEqual(after["reload"]["hash"], before["reload"]["hash"])
        for k in ("upstreams", "drain_timeout", "workers"):
            self.assertEqual(after[k], before[k])
        self.assertEqual(after["reload"]["reloads"], {"applied": 0, "unchanged": 0, "failed": 1})
        self.assertIsNone(after["reload"]["last_success"])
        stats = sc.stats()
        self.assertEqual(stats.value("sidecar_config_reload_failures_total"), 1)
        self.assertEqual(stats.value("sidecar_config_reloads_total", outcome="failed"), 1)
        self.assertEqual(stats.value("sidecar_config_info", hash=before["reload"]["hash"]), 1)
        # still serving
        self.assertEqual(http_get(lp, "/echo").status, 200)
        # a YAML syntax error, the file missing: the same
        self.write(sc, "sidecar.yaml", text + "workers: [\n")
        st = self.sighup(sc)
        self.assertEqual(st["last"]["outcome"], "failed")
        self.assertIn("YAML syntax error", "\n".join(st["last"]["problems"]))
        os.rename(sc.config_path, sc.config_path + ".gone")
        st = self.sighup(sc)
        self.assertEqual(st["last"]["outcome"], "failed")
        self.assertIn("cannot read the configuration", st["last"]["problems"][0])
        os.rename(sc.config_path + ".gone", sc.config_path)
        # fixed again: the next reload is fine
        self.write(sc, "sidecar.yaml", text)
        self.write(sc, "policies/b.yaml", good_b)
        st = self.sighup(sc)
        self.assertEqual(st["last"]["outcome"], "unchanged")
        self.assertEqual(st["last"]["problems"], [])
        self.assertEqual(st["hash"], before["reload"]["hash"])
        self.assertEqual(sc.stats().value("sidecar_config_reload_failures_total"), 3)

    def test_admin_reload_trigger_and_its_checks(self):
        sc, _ = self.start()
        # state-changing: the admin's marker and Origin checks apply
        for headers in ({}, {"X-Sidecar-Admin": "1", "Origin": "http://evil.example"},
                        {"Content-Type": "text/plain"}):
            status, body = self.post_reload(sc, headers=headers)
            self.assertEqual(status, 403, (headers, body))
        status, _, _ = sc.admin("/reload")
        self.assertEqual(status, 405)
        self.assertEqual(total_reloads(self.state(sc)), 0)
        # marked: reloads now and answers with the state
        status, body = self.post_reload(sc)
        self.assertEqual(status, 200, body)
        self.assertEqual(body["last"]["trigger"], "admin")
        self.assertEqual(body["last"]["outcome"], "unchanged")
        self.assertLess(body["last"]["duration_ms"], 100)
        # an invalid file: 422 with the problems
        self.write(sc, "policies/c.yaml", "upstream: c\n")
        status, body = self.post_reload(sc)
        self.assertEqual(status, 422, body)
        self.assertEqual(body["last"]["outcome"], "failed")
        self.assertTrue(body["last"]["problems"][0].endswith(
            "/policies/c.yaml:1: protocol: missing required key 'protocol'"), body)
        os.unlink(os.path.join(sc.dir, "policies/c.yaml"))
        self.assertIn("POST /reload", sc.admin("/help")[2].decode())

    def test_live_settings_and_restart_settings(self):
        sc, lp = self.start()
        before = sc.config_json()
        text = self.read(sc.config_path)
        changed = (text.replace("level: info", "level: debug").replace("workers: 2", "workers: 3")
                   .replace("stream_buffer: 65536", "stream_buffer: 131072"))
        self.assertNotEqual(changed, text)
        self.write(sc, "sidecar.yaml", changed)
        st = self.sighup(sc)
        last = st["last"]
        self.assertEqual(last["outcome"], "applied", last)
        self.assertEqual(set(last["changes"]["settings"]), {"workers", "limits.stream_buffer", "log.level"})
        self.assertEqual(last["applied_live"], ["log.level"])
        self.assertEqual(set(st["needs_restart"]), {"workers", "limits.stream_buffer"})
        # the log level is in effect at once; the rest waits for a restart
        self.assertEqual(sc.admin("/log")[2].strip(), b"debug")
        cfg = sc.config_json()
        self.assertEqual(cfg["log"]["level"], "debug")
        self.assertEqual(cfg["workers"], 2)
        self.assertEqual(cfg["limits"]["stream_buffer"], 65536)
        self.assertNotEqual(st["hash"], before["reload"]["hash"])
        self.assertNotEqual(st["file_hash"], st["hash"])
        self.assertEqual(sc.stats().value("sidecar_config_restart_pending"), 2)
        log = sc.log_text()
        self.assertIn("reload: log level now debug", log)
        self.assertRegex(log, r"reload \(SIGHUP\): 2 changes take effect only after a restart: "
                              r"\[\"workers\", ?\"limits\.stream_buffer\"\]")
        # back as it was: nothing waits for a restart any more
        self.write(sc, "sidecar.yaml", text)
        st = self.sighup(sc)
        self.assertEqual(st["last"]["outcome"], "applied")
        self.assertEqual(st["needs_restart"], [])
        self.assertEqual(st["hash"], before["reload"]["hash"])
        self.assertEqual(st["file_hash"], st["hash"])
        self.assertEqual(sc.admin("/log")[2].strip(), b"info")
        self.assertEqual(http_get(lp, "/echo").status, 200)

    def test_hash_follows_values_not_spelling(self):
        sc, _ = self.start()
        h = self.state(sc)["hash"]
        self.assertRegex(h, r"^[0-9a-f]{16}$")
        # the same values written otherwise: comments, key order, units
        text = self.read(sc.config_path)
        self.write(sc, "sidecar.yaml", "# a comment\n" + text.replace("drain_timeout: 5s", "drain_timeout: 5000ms"))
        st = self.sighup(sc)
        self.assertEqual(st["last"]["outcome"], "unchanged")
        self.assertEqual(st["hash"], h)
        # a restart with the same files: the same hash
        sc.stop()
        sc.start()
        self.assertEqual(self.state(sc)["hash"], h)


class ReloadWatchTest(ReloadTestCase):
    """reload: {watch: true}: edits of sidecar.yaml and of policy files
    reload by themselves, once per burst of changes."""

    DEBOUNCE_MS = 150

    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer()

    def start(self):
        admin, lp = free_port(), free_port()
        cfg = harness.base_config(admin)
        cfg["policies"] = "policies"
        cfg["reload"] = {"watch": True, "debounce": "%dms" % self.DEBOUNCE_MS}
        pol = harness.upstream("a", "http1", lp, [self.peer.port])
        sc = self.sidecar(cfg, name="watch", files={"policies/a.yaml": pol})
        return sc, pol

    def wait_reloads(self, sc, n, timeout=5.0):
        got = {}

        def done():
            got["s"] = self.state(sc)
            return total_reloads(got["s"]) >= n
        self.assertTrue(wait_until(done, timeout), "%d reloads expected: %s\n%s"
                        % (n, self.state(sc), sc.log_tail()))
        return got["s"]

    def test_policy_edits_reload_once_per_burst(self):
        sc, pol = self.start()
        st = self.state(sc)
        self.assertTrue(st["watch"]["enabled"])
        self.assertEqual(len(st["watch"]["paths"]), 2)
        # a burst of writes: one reload, after the burst
        t0 = time.monotonic()
        for i in range(5):
            pol["timeouts"]["request"] = "%ds" % (i + 2)
            self.write(sc, "policies/a.yaml", pol)
            time.sleep(0.02)
        st = self.wait_reloads(sc, 1)
        self.assertGreaterEqual(time.monotonic() - t0, self.DEBOUNCE_MS / 1000.0)
        time.sleep(3 * self.DEBOUNCE_MS / 1000.0)
        st = self.state(sc)
        self.assertEqual(total_reloads(st), 1, st)
        self.assertEqual(st["last"]["trigger"], "watch")
        self.assertEqual(st["last"]["changes"]["upstreams"]["changed"], {"a": ["timeouts"]})
        # an editor's save: a temporary file renamed over the policy
        pol["timeouts"]["request"] = "9s"
        tmp = self.write(sc, "policies/.a.yaml.swp", pol)
        os.rename(tmp, os.path.join(sc.dir, "policies/a.yaml"))
        st = self.wait_reloads(sc, 2)
        self.assertEqual(st["last"]["outcome"], "applied")
        # a new policy file, then sidecar.yaml itself
        self.write(sc, "policies/b.yaml", harness.upstream("b", "http1", free_port(), [self.peer.port]))
        st = self.wait_reloads(sc, 3)
        self.assertEqual(st["last"]["changes"]["upstreams"]["added"], ["b"])
        text = self.read(sc.config_path)
        self.write(sc, "sidecar.yaml", text.replace("level: info", "level: debug"))
        st = self.wait_reloads(sc, 4)
        self.assertEqual(st["last"]["applied_live"], ["log.level"])
        # files that are no policy: nothing
        self.write(sc, "policies/notes.txt", "hello\n")
        self.write(sc, "other.txt", "hello\n")
        time.sleep(3 * self.DEBOUNCE_MS / 1000.0)
        self.assertEqual(total_reloads(self.state(sc)), 4)
        # a broken save is refused like any reload; the fix is picked up
        self.write(sc, "policies/b.yaml", "upstream: b\nprotocol: [\n")
        st = self.wait_reloads(sc, 5)
        self.assertEqual(st["last"]["outcome"], "failed")
        self.assertIn("policies/b.yaml", st["last"]["problems"][0])
        os.unlink(os.path.join(sc.dir, "policies/b.yaml"))
        st = self.wait_reloads(sc, 6)
        self.assertEqual(st["last"]["outcome"], "applied")

    def test_watch_turned_off_by_a_reload(self):
        sc, _ = self.start()
        text = self.read(sc.config_path)
        self.write(sc, "sidecar.yaml", text.replace("watch: true", "watch: false"))
        st = self.wait_reloads(sc, 1)
        self.assertEqual(st["last"]["applied_live"], ["reload.watch"])
        self.assertFalse(st["watch"]["enabled"])
        self.write(sc, "sidecar.yaml", text)   # not seen any more
        time.sleep(3 * self.DEBOUNCE_MS / 1000.0)
        self.assertEqual(total_reloads(self.state(sc)), 1)
        st = self.sighup(sc)                   # SIGHUP still works, and turns it on again
        self.assertTrue(st["watch"]["enabled"])


class ReloadMemoryTest(ReloadTestCase):
    """Many reloads alternating two policy sets (timeouts, retry conditions,
    breaker thresholds, one upstream added and removed): memory stays flat
    and every configuration a reload loaded is freed (the ASan build of the
    suite reports any leak at exit)."""

    RELOADS = 1000

    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer()

    def policy_sets(self, ports):
        def pol(name, port, request, on, rate):
            return harness.upstream(name, "http1", port, [self.peer.port], timeouts={"request": request},
                                    retries={"max_attempts": 2, "on": on},
                                    circuit_breaker={"failure_rate": rate, "min_calls": 50})
        a = {n: pol(n, ports[n], "5s", ["connect-failure"], "50%") for n in ("a", "b", "c")}
        b = {n: pol(n, ports[n], "3s", ["connect-failure", "gateway-error"], "70%") for n in ("a", "b", "c")}
        b["extra"] = pol("extra", ports["extra"], "1s", ["reset"], "90%")
        return [{n: harness.to_yaml(p) for n, p in a.items()}, {n: harness.to_yaml(p) for n, p in b.items()}]

    def test_memory_flat_over_many_reloads(self):
        ports = {n: free_port() for n in ("a", "b", "c", "extra")}
        sets = self.policy_sets(ports)
        cfg = harness.base_config(free_port())
        cfg["policies"] = "policies"
        sc = self.sidecar(cfg, name="memory", files={"policies/%s.yaml" % n: t for n, t in sets[0].items()})
        pdir = os.path.join(sc.dir, "policies")

        def switch(i):
            want = sets[i % 2]
            for n in ("a", "b", "c", "extra"):
                path = os.path.join(pdir, n + ".yaml")
                if n in want:
                    with open(path, "w") as f:
                        f.write(want[n])
                elif os.path.exists(path):
                    os.unlink(path)
            status, body = self.post_reload(sc)
            self.assertEqual(status, 200, body)
            self.assertEqual(body["last"]["outcome"], "applied", body["last"])
            # "extra" is added right after its removal: its own closing listener is no obstacle
            self.assertEqual(body["needs_restart"], [], "reload %d: %s" % (i, body))
            return body
        deadline = time.monotonic() + 120
        for i in range(1, 11):
            switch(i)
        rss10 = sc.rss_kib()
        durations = []
        for i in range(11, self.RELOADS + 1):
            body = switch(i)
            durations.append(body["last"]["duration_ms"])
            self.assertLess(time.monotonic(), deadline, "reloads too slow: %d done" % i)
        rss = sc.rss_kib()
        st = self.state(sc)
        self.assertEqual(st["reloads"]["applied"], self.RELOADS)
        durations.sort()
        print("\n%d reloads: RSS after 10 %d KiB, after %d %d KiB; reload p50 %.2f ms, max %.2f ms"
              % (self.RELOADS, rss10, self.RELOADS, rss, durations[len(durations) // 2], durations[-1]))
        if not sanitized_binary():
            self.assertLessEqual(rss - rss10, 1024, "RSS grew by %d KiB" % (rss - rss10))


class ReloadLiveTest(ReloadTestCase):
    """Changed policies apply to the requests that start after the reload,
    within 100 ms of SIGHUP; requests in flight and upstreams that did not
    change see nothing of it."""

    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer()
        cls.grpc = cls.class_grpc_peer()

    def test_time_to_effect_and_what_a_change_keeps(self):
        lp = free_port()
        pol = harness.upstream("f", "http1", lp, [self.peer.port],
                               circuit_breaker={"failure_rate": "50%", "min_calls": 50,
                                                "fallback": {"http": {"status": 299, "body": "one\n"}}})
        cfg = harness.base_config(free_port())
        cfg["policies"] = "policies"
        sc = self.sidecar(cfg, name="live", files={"policies/f.yaml": pol})
        status, _, _ = sc.admin("/breaker?upstream=f&action=open", method="POST", data=b"")
        self.assertEqual(status, 200)
        self.assertEqual(http_get(lp, "/echo").status, 299)
        # only the fallback changes: the breaker (forced open) stays; the new
        # answer is in effect within 100 ms of the signal
        pol["circuit_breaker"]["fallback"]["http"]["status"] = 298
        self.write(sc, "policies/f.yaml", pol)
        conn = None
        t0 = time.monotonic()
        sc.send_signal(signal.SIGHUP)
        seen = None
        while time.monotonic() - t0 < 2.0:
            out = http_call(lp, "/echo", conn=conn)
            if out.code == 298:
                seen = time.monotonic() - t0
                break
        self.assertIsNotNone(seen, "the new fallback never answered\n" + sc.log_tail())
        print("\nSIGHUP to the new policy in effect: %.1f ms" % (seen * 1000))
        self.assertLessEqual(seen, 0.100)
        st = self.state(sc)
        self.assertEqual(st["last"]["changes"]["upstreams"]["changed"], {"f": ["circuit_breaker.fallback"]})
        self.assertEqual(st["last"]["applied_live"], ["upstreams.f"])
        self.assertEqual(st["needs_restart"], [])
        self.assertEqual(sc.config_json()["upstreams"][0]["circuit_breaker"]["fallback"]["http"]["status"], 298)
        # new thresholds: a new breaker, closed
        pol["circuit_breaker"]["failure_rate"] = "70%"
        self.write(sc, "policies/f.yaml", pol)
        self.assertEqual(self.sighup(sc)["last"]["applied_live"], ["upstreams.f"])
        self.assertEqual(http_get(lp, "/echo").status, 200)
        # a request timeout: requests in flight keep theirs, new ones get the new one
        slow = {}
        t = threading.Thread(target=lambda: slow.setdefault("r", http_call(lp, "/delay/600", timeout=5)))
        t.start()
        time.sleep(0.1)
        pol["timeouts"]["request"] = "300ms"
        self.write(sc, "policies/f.yaml", pol)
        self.sighup(sc)
        self.assertEqual(http_call(lp, "/delay/600").code, 504)
        t.join(5)
        self.assertEqual(slow["r"].code, 200, "the request in flight took the new timeout")
        # a new listen address applies live: bound before the old one closes
        lp2 = free_port()
        pol2 = dict(pol, listen=harness.addr(lp2))
        pol2["timeouts"] = dict(pol["timeouts"], request="5s")
        self.write(sc, "policies/f.yaml", pol2)
        st = self.sighup(sc)
        self.assertEqual(st["last"]["outcome"], "applied")
        self.assertEqual(st["needs_restart"], [])
        self.assertEqual(st["last"]["applied_live"], ["upstreams.f"])
        self.assertTrue(wait_until(lambda: http_call(lp, "/echo", timeout=1).code == -1, 2.0),
                        "the old listen address still accepts")
        self.assertEqual(http_call(lp2, "/delay/400").code, 200)
        # a change that cannot apply live (protocol) waits for a restart; the rest applies
        pol3 = dict(pol2, protocol="http2")
        pol3["timeouts"] = dict(pol2["timeouts"], request="300ms")
        self.write(sc, "policies/f.yaml", pol3)
        st = self.sighup(sc)
        self.assertEqual(st["last"]["outcome"], "applied")
        self.assertEqual(st["needs_restart"], ["upstreams.f"])
        self.assertEqual(http_call(lp2, "/delay/400").code, 200)
        self.assertEqual(sc.stats().value("sidecar_config_restart_pending"), 1)

    def test_reloads_under_load_fail_nothing(self):
        ports = {n: free_port() for n in ("h", "g", "c", "extra")}
        peer = {"h": self.peer.port, "g": self.grpc.port, "c": self.peer.port, "extra": self.peer.port}
        proto = {"h": "http1", "g": "grpc", "c": "http1", "extra": "http1"}

        def pol(name, request, on, rate):
            return harness.upstream(name, proto[name], ports[name], [peer[name]], timeouts={"request": request},
                                    retries={"max_attempts": 2, "on": on},
                                    circuit_breaker={"failure_rate": rate, "min_calls": 50})
        set_a = {"h": pol("h", "5s", ["connect-failure"], "50%"),
                 "g": pol("g", "5s", ["connect-failure"], "50%"),
                 "c": pol("c", "5s", ["connect-failure"], "50%")}
        set_b = {"h": set_a["h"],
                 "g": pol("g", "4s", ["connect-failure", "unavailable"], "70%"),
                 "c": pol("c", "3s", ["connect-failure", "gateway-error"], "80%"),
                 "extra": pol("extra", "1s", ["reset"], "90%")}
        sets = [{n: harness.to_yaml(p) for n, p in s.items()} for s in (set_a, set_b)]
        cfg = harness.base_config(free_port())
        cfg["policies"] = "policies"
        sc = self.sidecar(cfg, name="load", files={"policies/%s.yaml" % n: t for n, t in sets[0].items()})
        pdir = os.path.join(sc.dir, "policies")
        stop = threading.Event()
        results = {"h": [0, []], "c": [0, []], "g": [0, []]}
        deadline = time.monotonic() + 60

        def http_loop(name):
            n = 0
            while not stop.is_set() and n < 20000 and time.monotonic() < deadline:
                out = http_call(ports[name], "/delay/15")
                results[name][0] += 1
                if out.code != 200:
                    results[name][1].append(out.code)
                n += 1

        def grpc_loop():
            echo = Echo(harness._grpc_channel(self, ports["g"]))
            n = 0
            while not stop.is_set() and n < 20000 and time.monotonic() < deadline:
                out = unary(echo, metadata=[("x-echo-delay-ms", "15")])
                results["g"][0] += 1
                if out.code != 0:
                    results["g"][1].append((out.code, out.details))
                n += 1
        threads = [threading.Thread(target=http_loop, args=(n,)) for n in ("h", "c")]
        threads.append(threading.Thread(target=grpc_loop))
        for t in threads:
            t.start()
        try:
            for i in range(1, 101):
                want = sets[i % 2]
                for n in ("g", "c", "extra"):
                    path = os.path.join(pdir, n + ".yaml")
                    if n in want:
                        with open(path, "w") as f:
                            f.write(want[n])
                    elif os.path.exists(path):
                        os.unlink(path)
                status, body = self.post_reload(sc)
                self.assertEqual(status, 200, body)
                self.assertEqual(body["last"]["outcome"], "applied", body["last"])
                time.sleep(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        for name, (n, fails) in results.items():
            self.assertGreater(n, 20, name)
            self.assertEqual(fails, [], "%s: %d of %d requests failed" % (name, len(fails), n))
        st = self.state(sc)
        self.assertEqual(st["reloads"]["applied"], 100)
        print("\n100 reloads under load: %s requests, none failed"
              % ", ".join("%s %d" % (n, r[0]) for n, r in sorted(results.items())))


class ReloadUpstreamsTest(ReloadTestCase):
    """Upstreams added and removed by a reload: an added one (static
    discovery) listens and serves at once, a removed one stops accepting
    while its requests in flight finish, and the upstreams that did not
    change see nothing of either."""

    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer()

    def start(self, names, ports):
        cfg = harness.base_config(free_port())
        cfg["policies"] = "policies"
        files = {"policies/%s.yaml" % n: self.pol(n, ports[n]) for n in names}
        return self.sidecar(cfg, name="upstreams", files=files)

    def pol(self, name, port):
        return harness.upstream(name, "http1", port, [self.peer.port])

    def test_added_upstream_serves_within_100ms(self):
        ports = {"a": free_port(), "b": free_port()}
        sc = self.start(["a"], ports)
        self.assertEqual(http_call(ports["b"], "/echo", timeout=1).code, -1)
        self.write(sc, "policies/b.yaml", self.pol("b", ports["b"]))
        t0 = time.monotonic()
        sc.send_signal(signal.SIGHUP)
        seen = None
        while time.monotonic() - t0 < 2.0:
            if http_call(ports["b"], "/echo", timeout=1).code == 200:
                seen = time.monotonic() - t0
                break
            time.sleep(0.002)
        self.assertIsNotNone(seen, "the added upstream never answered\n" + sc.log_tail())
        print("\nSIGHUP to the added upstream serving: %.1f ms" % (seen * 1000))
        self.assertLessEqual(seen, 0.100)
        st = self.state(sc)
        self.assertEqual(st["last"]["changes"]["upstreams"]["added"], ["b"])
        self.assertEqual(st["last"]["applied_live"], ["upstreams.b"])
        self.assertEqual(st["needs_restart"], [])
        self.assertEqual(sorted(u["upstream"] for u in sc.config_json()["upstreams"]), ["a", "b"])
        self.assertIn("b", [u["name"] for u in sc.clusters()["upstreams"]])
        self.assertGreaterEqual(sc.stats().value("sidecar_upstream_requests_total", upstream="b"), 1)
        self.assertEqual(http_call(ports["a"], "/echo").code, 200)

    def test_removed_upstream_refuses_new_and_finishes_in_flight(self):
        ports = {"a": free_port(), "b": free_port()}
        sc = self.start(["a", "b"], ports)
        self.assertEqual(http_call(ports["b"], "/echo").code, 200)
        slow = {}
        t = threading.Thread(target=lambda: slow.setdefault("r", http_call(ports["b"], "/delay/600", timeout=5)))
        t.start()
        time.sleep(0.1)
        os.unlink(os.path.join(sc.dir, "policies/b.yaml"))
        st = self.sighup(sc)
        self.assertEqual(st["last"]["changes"]["upstreams"]["removed"], ["b"])
        self.assertEqual(st["last"]["applied_live"], ["upstreams.b"])
        self.assertEqual(st["needs_restart"], [])
        self.assertTrue(wait_until(lambda: http_call(ports["b"], "/echo", timeout=1).code == -1, 2.0),
                        "the removed upstream still accepts")
        t.join(5)
        self.assertEqual(slow["r"].code, 200, "the request in flight on the removed upstream failed")
        self.assertEqual([u["upstream"] for u in sc.config_json()["upstreams"]], ["a"])
        self.assertNotIn("b", [u["name"] for u in sc.clusters()["upstreams"]])
        self.assertEqual(sc.stats().series("sidecar_upstream_requests_total", upstream="b"), [])
        self.assertEqual(http_call(ports["a"], "/echo").code, 200)

    def test_removed_upstream_connections_end_at_drain_timeout(self):
        ports = {"a": free_port(), "b": free_port()}
        cfg = harness.base_config(free_port())
        cfg["policies"] = "policies"
        cfg["drain_timeout"] = "400ms"
        sc = self.sidecar(cfg, name="upstreams", files={"policies/%s.yaml" % n: self.pol(n, ports[n]) for n in "ab"})
        slow = {}
        t = threading.Thread(target=lambda: slow.setdefault("r", http_call(ports["b"], "/delay/5000", timeout=10)))
        t.start()
        time.sleep(0.1)
        os.unlink(os.path.join(sc.dir, "policies/b.yaml"))
        t0 = time.monotonic()
        self.sighup(sc)
        t.join(10)
        took = time.monotonic() - t0
        self.assertEqual(slow["r"].code, -1, "the request outlived the drain of its removed upstream")
        self.assertGreaterEqual(took, 0.35)
        self.assertLess(took, 2.0)
        self.assertTrue(wait_until(lambda: "upstream b removed: drain timeout: closed 1 connections" in sc.log_text(),
                                   2.0), sc.log_tail())
        self.assertEqual(http_call(ports["a"], "/echo").code, 200)

    def test_alternating_add_remove_under_load(self):
        ports = {n: free_port() for n in ("a", "b", "x")}
        sc = self.start(["a", "b"], ports)
        x_path = os.path.join(sc.dir, "policies/x.yaml")
        x_text = harness.to_yaml(self.pol("x", ports["x"]))
        stop = threading.Event()
        results = {"a": [0, []], "b": [0, []]}
        deadline = time.monotonic() + 60

        def load(name):
            n = 0
            while not stop.is_set() and n < 20000 and time.monotonic() < deadline:
                out = http_call(ports[name], "/delay/5")
                results[name][0] += 1
                if out.code != 200:
                    results[name][1].append((out.code, out.reason))
                n += 1
        threads = [threading.Thread(target=load, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        rss = []
        try:
            for i in range(1, 101):
                if i % 2:
                    with open(x_path, "w") as f:
                        f.write(x_text)
                else:
                    os.unlink(x_path)
                status, body = self.post_reload(sc)
                self.assertEqual(status, 200, body)
                self.assertEqual(body["last"]["outcome"], "applied", body["last"])
                self.assertEqual(body["needs_restart"], [], body)
                if i % 2:
                    self.assertEqual(http_call(ports["x"], "/echo").code, 200, "x added by reload %d" % i)
                else:
                    self.assertTrue(wait_until(lambda: http_call(ports["x"], "/echo", timeout=1).code == -1, 2.0),
                                    "x removed by reload %d still accepts" % i)
                if i in (10, 100):
                    rss.append(sc.rss_kib())
                time.sleep(0.01)
                self.assertLess(time.monotonic(), deadline)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        for name, (n, fails) in results.items():
            self.assertGreater(n, 20, name)
            self.assertEqual(fails, [], "%s: %d of %d requests failed" % (name, len(fails), n))
        print("\n100 add/remove reloads under load: a %d, b %d requests, none failed; RSS %d -> %d KiB"
              % (results["a"][0], results["b"][0], rss[0], rss[1]))
        if not sanitized_binary():
            self.assertLessEqual(rss[1] - rss[0], 1024, "RSS grew by %d KiB" % (rss[1] - rss[0]))


class ReloadConsulUpstreamTest(ReloadTestCase):
    """An upstream discovered through Consul added by a reload gets a watch
    of its own; removed and added again, it takes its route and watch back."""

    @classmethod
    def setUpClass(cls):
        cls.peer = cls.class_http1_peer()

    def test_added_consul_upstream_is_watched(self):
        from test_consul import consul_upstream
        emu = self.emulator()
        emu.register_instance("pay", id="pay-1", port=self.peer.port, address="127.0.0.1")
        ports = {"a": free_port(), "pay": free_port()}
        cfg = harness.base_config(free_port())
        cfg["consul"] = {"address": "http://127.0.0.1:%d" % emu.port, "register_service": False}
        cfg["policies"] = "policies"
        sc = self.sidecar(cfg, name="consul-add",
                          files={"policies/a.yaml": harness.upstream("a", "http1", ports["a"], [self.peer.port])})
        pay_path = os.path.join(sc.dir, "policies/pay.yaml")
        for i in range(4):
            self.write(sc, "policies/pay.yaml", consul_upstream("pay", ports["pay"]))
            st = self.sighup(sc)
            self.assertEqual(st["last"]["applied_live"], ["upstreams.pay"], st)
            self.assertEqual(st["needs_restart"], [])
            self.assertTrue(wait_until(lambda: http_call(ports["pay"], "/echo", timeout=1).code == 200, 3.0),
                            "the added Consul upstream never answered\n" + sc.log_tail())
            up = [u for u in sc.clusters()["upstreams"] if u["name"] == "pay"]
            self.assertEqual(len(up), 1)
            self.assertEqual(up[0]["consul"]["service"], "pay")
            # one watch for every addition: the route and its watch are taken again
            self.assertEqual(len(sc.stats().series("sidecar_consul_watch_stale", upstream="pay")), 1)
            os.unlink(pay_path)
            st = self.sighup(sc)
            self.assertEqual(st["last"]["applied_live"], ["upstreams.pay"], st)
            self.assertTrue(wait_until(lambda: http_call(ports["pay"], "/echo", timeout=1).code == -1, 2.0))
        self.assertEqual(http_call(ports["a"], "/echo").code, 200)
        self.assertEqual(sc.stats().series("sidecar_consul_watch_stale", upstream="pay"), [])


if __name__ == "__main__":
    unittest.main()

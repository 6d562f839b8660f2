"""The access log writer and GET /failures through the real binary, before
the request path calls them.

  file       access_log: destination file: the file is created at start
             (mode 0640 less the umask), the metrics are in /stats, the
             writer thread runs, and the sidecar exits 0 on SIGTERM
  sighup     logrotate: the file moved away and SIGHUP make a new file, the
             reopen is logged and counted; a reopen that fails (directory
             gone) keeps the sidecar serving and says why
  start      a file that cannot be opened at start fails start-up with the
             path and the reason
  check      --check reports every bad access_log: field by name
  failures   GET /failures answers a JSON array (empty: nothing failed yet) and
             refuses bad queries: limit out of range (400), unknown
             parameter (400), unknown upstream (404), POST (405)
  off        without access_log: the metrics are still there, at zero
"""

import json
import os
import shutil
import signal
import stat
import tempfile
import time
import unittest

import harness
from harness import SidecarTestCase, free_port, run, wait_until


def config(access_log=None, workers=2):
    cfg = harness.base_config(free_port(), workers=workers)
    cfg["upstreams"] = [harness.upstream("pay", "http1", free_port(), ["127.0.0.1:%d" % free_port()])]
    if access_log is not None:
        cfg["access_log"] = access_log
    return cfg


class AccessLogFileTest(SidecarTestCase):
    def test_file_created_metrics_and_clean_exit(self):
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "access.log")
        sc = self.sidecar(config({"destination": "file", "path": path, "select": ["errors", "slow"],
                                  "slow_threshold": "1s"}))
        st = os.stat(path)
        umask = os.umask(0)
        os.umask(umask)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640 & ~umask)
        s = sc.stats()
        for name in ("sidecar_access_log_lines_total", "sidecar_access_log_dropped_total",
                     "sidecar_access_log_written_bytes_total", "sidecar_access_log_write_errors_total",
                     "sidecar_access_log_reopens_total", "sidecar_failures_recorded_total"):
            self.assertEqual(s.value(name), 0, name)
        # the writer thread runs (and wakes on its flush timer)
        wait_until(lambda: sc.stats().value("sidecar_access_log_writer_wakeups_total") > 0, timeout=5)
        tasks = [open("/proc/%d/task/%s/comm" % (sc.pid, t)).read().strip()
                 for t in os.listdir("/proc/%d/task" % sc.pid)]
        self.assertIn("sc-access-log", tasks)
        cfg = sc.config_json()["access_log"]
        self.assertEqual(cfg["destination"], "file")
        self.assertEqual(cfg["path"], path)
        self.assertEqual(cfg["select"], ["errors", "slow"])
        self.assertEqual(cfg["slow_threshold"], "1s")
        self.assertEqual(sc.stop(), 0)

    def test_sighup_reopens(self):
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "access.log")
        sc = self.sidecar(config({"destination": "file", "path": path}))
        os.rename(path, path + ".1")
        sc.send_signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(path), timeout=5)
        wait_until(lambda: "access log: reopened %s" % path in sc.log_text(), timeout=5)
        self.assertEqual(sc.stats().value("sidecar_access_log_reopens_total"), 1)
        # the directory goes away: the reopen fails, says why, nothing else changes
        shutil.rmtree(d)
        sc.send_signal(signal.SIGHUP)
        wait_until(lambda: "access log: cannot reopen %s" % path in sc.log_text(), timeout=5)
        self.assertIn("still writing to the file opened before", sc.log_text())
        self.assertEqual(sc.stats().value("sidecar_access_log_reopens_total"), 1)
        status, _, _ = sc.admin("/ready")
        self.assertEqual(status, 200)
        self.assertEqual(sc.stop(), 0)

    def test_start_fails_when_the_file_cannot_be_opened(self):
        d = tempfile.mkdtemp(prefix="sc-it-al-")
        self.addCleanup(shutil.rmtree, d, True)
        path = os.path.join(d, "access.log")
        os.mkdir(path + ".d")
        os.symlink(path + ".d/missing/x", path)  # a dangling symlink into nowhere: open fails
        sc = harness.Sidecar(config({"destination": "file", "path": path}), name="al-start")
        self.addCleanup(sc.cleanup)
        sc.start(wait_ready=False)
        sc.proc.wait(10)
        self.assertNotEqual(sc.proc.returncode, 0)
        self.assertIn("access log: cannot open %s: No such file or directory" % path, sc.log_text())


class AccessLogCheckTest(unittest.TestCase):
    def check(self, access_log):
        sc = harness.Sidecar(config(access_log), name="al-check")
        self.addCleanup(sc.cleanup)
        r = sc.check()
        return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")

    def test_bad_fields_named(self):
        cases = [
            ({"destination": "syslog"}, "access_log.destination"),
            ({"destination": "file"}, "access_log.path: destination: file needs a path"),
            ({"path": "/tmp/x.log"}, "access_log.path: a path is used only with destination: file"),
            ({"destination": "file", "path": "/nonexistent-dir-sc-it/a.log"}, "does not exist"),
            ({"select": ["all", "errors"]}, "access_log.select"),
            ({"select": "slow"}, "access_log.slow_threshold: select: slow needs a slow_threshold"),
            ({"select": "sample", "sample_ratio": 0}, "access_log.sample_ratio: 0 logs nothing"),
            ({"buffer": "1KiB"}, "access_log.buffer"),
            ({"flush_interval": "1m"}, "access_log.flush_interval"),
            ({"destinaton": "stdout"}, "access_log.destinaton"),
        ]
        for section, needle in cases:
            with self.subTest(section=section):
                rc, out = self.check(section)
                self.assertEqual(rc, 1, out)
                self.assertIn(needle, out)

    def test_good_config_passes(self):
        rc, out = self.check({"destination": "stderr", "select": ["errors", "sample"], "sample_ratio": 0.01})
        self.assertEqual(rc, 0, out)


class FailuresEndpointTest(SidecarTestCase):
    @classmethod
    def setUpClass(cls):
        cls.sc = cls.class_sidecar(config(workers=3))

    def test_empty_rings(self):
        self.assertEqual(self.sc.admin_json("/failures"), [])
        self.assertEqual(self.sc.admin_json("/failures?limit=1&upstream=pay"), [])
        status, headers, _ = self.sc.admin("/failures")
        self.assertEqual(headers["content-type"], "application/json")

    def test_bad_queries(self):
        for path, code, needle in [
            ("/failures?limit=0", 400, b"limit must be a number from 1 to 1000"),
            ("/failures?limit=1001", 400, b"limit must be"),
            ("/failures?limit=-1", 400, b"limit must be"),
            ("/failures?limit=5x", 400, b"limit must be"),
            ("/failures?foo=1", 400, b"unknown query parameter 'foo'"),
            ("/failures?upstream=nope", 404, b"no such upstream"),
        ]:
            with self.subTest(path=path):
                status, _, body = self.sc.admin(path)
                self.assertEqual(status, code, body)
                self.assertIn(needle, body)
        status, _, _ = self.sc.admin("/failures", method="POST")
        self.assertEqual(status, 405)

    def test_listed_in_help(self):
        status, _, body = self.sc.admin("/help")
        self.assertEqual(status, 200)
        self.assertIn(b"/failures", body)

    def test_metrics_present_when_access_log_off(self):
        s = self.sc.stats()
        self.assertEqual(s.value("sidecar_access_log_dropped_total"), 0)
        self.assertEqual(s.value("sidecar_failures_recorded_total"), 0)
        self.assertIsNone(self.sc.config_json()["access_log"])
        tasks = [open("/proc/%d/task/%s/comm" % (self.sc.pid, t)).read().strip()
                 for t in os.listdir("/proc/%d/task" % self.sc.pid)]
        self.assertNotIn("sc-access-log", tasks)


if __name__ == "__main__":
    unittest.main()

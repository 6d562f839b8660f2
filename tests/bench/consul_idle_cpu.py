#!/usr/bin/python3
"""Control-thread CPU of the sidecar while Consul is quiet.

Starts the Consul agent emulator (tests/consul/consul_emulator.py) with
SERVICES services of INSTANCES instances each, a sidecar that watches every
one of them (one upstream per service, discovery: consul) and registers
itself with an HTTP check, waits until every upstream has its instances,
then measures, over a quiet period (nothing changes in the catalog), the CPU
time of the sidecar's control thread (the main thread: /proc/PID/task/PID)
and of the whole process.

    tests/bench/consul_idle_cpu.py [--binary build/sidecar] [--services 200]
                                   [--instances 5] [--seconds 60]

Prints one line per figure; exit code 0 when the control thread used less
than 1% of a core.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
EMULATOR = os.path.join(ROOT, "tests", "consul", "consul_emulator.py")
TICK = os.sysconf("SC_CLK_TCK")


_given = set()


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given:
            _given.add(port)
            return port


def wait_port(port, timeout=10):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def cpu_ticks(path):
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def http(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=timeout) as r:
        return r.read()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "sidecar"))
    ap.add_argument("--services", type=int, default=200)
    ap.add_argument("--instances", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60)
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="sc-consul-idle-")
    cport = free_port()
    emu = subprocess.Popen([sys.executable, EMULATOR, "--http", "127.0.0.1:%d" % cport],
                           stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "emu.log"), "w"))
    app = socket.socket()
    app.bind(("127.0.0.1", 0))
    app.listen(128)
    sc = None
    try:
        if not wait_port(cport):
            sys.exit("emulator did not start")
        base = "http://127.0.0.1:%d" % cport
        for s in range(args.services):
            for i in range(args.instances):
                http("POST", base + "/_emulator/catalog/register",
                     {"Node": "node-%d-%d" % (s, i), "Address": "10.%d.%d.%d" % (s // 250, s % 250, i + 1),
                      "Service": {"Service": "svc-%d" % s, "ID": "svc-%d-%d" % (s, i), "Port": 8000 + i}})
        admin = free_port()
        lines = ["service: {name: idle, id: idle-1, address: 127.0.0.1}",
                 "inbound: {listen: 127.0.0.1:%d, app: 127.0.0.1:%d}" % (free_port(), app.getsockname()[1]),
                 "admin: {listen: 127.0.0.1:%d}" % admin,
                 "workers: 2",
                 "log: {level: info}",
                 "consul: {address: '%s', check: http, check_interval: 10s}" % base,
                 "upstreams:"]
        for s in range(args.services):
            lines += ["  - upstream: svc-%d" % s, "    protocol: http1",
                      "    listen: 127.0.0.1:%d" % free_port(),
                      "    discovery: {consul: {service: svc-%d}}" % s]
        cfg = os.path.join(tmp, "sidecar.yaml")
        with open(cfg, "w") as f:
            f.write("\n".join(lines) + "\n")
        log = open(os.path.join(tmp, "sidecar.log"), "w")
        sc = subprocess.Popen([args.binary, "--config", cfg], stdout=log, stderr=log)
        end = time.monotonic() + 60
        while time.monotonic() < end:
            try:
                cl = json.loads(http("GET", "http://127.0.0.1:%d/clusters" % admin, timeout=5))
                ups = [u for u in cl["upstreams"] if u["direction"] == "outbound"]
                if len(ups) == args.services and all(len(u["instances"]) == args.instances and not u["stale"]
                                                     for u in ups):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            sys.exit("the sidecar did not learn every instance within 60s (log: %s)" % tmp)
        time.sleep(5)  # let start-up settle
        pid = sc.pid
        main_path = "/proc/%d/task/%d/stat" % (pid, pid)
        proc_path = "/proc/%d/stat" % pid
        t0 = time.monotonic()
        m0, p0 = cpu_ticks(main_path), cpu_ticks(proc_path)
        time.sleep(args.seconds)
        m1, p1 = cpu_ticks(main_path), cpu_ticks(proc_path)
        wall = time.monotonic() - t0
        main_s = (m1 - m0) / TICK
        proc_s = (p1 - p0) / TICK
        conns = len(os.listdir("/proc/%d/fd" % pid))
        print("watches: %d services, %d instances" % (args.services, args.services * args.instances))
        print("quiet period: %.1f s" % wall)
        print("control thread CPU: %.2f s = %.3f%% of one core" % (main_s, 100.0 * main_s / wall))
        print("whole process CPU:  %.2f s = %.3f%% of one core" % (proc_s, 100.0 * proc_s / wall))
        print("open file descriptors: %d" % conns)
        return 0 if main_s / wall < 0.01 else 1
    finally:
        if sc:
            sc.terminate()
            try:
                sc.wait(15)
            except subprocess.TimeoutExpired:
                sc.kill()
        emu.terminate()
        try:
            emu.wait(10)
        except subprocess.TimeoutExpired:
            emu.kill()
        app.close()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/python3
"""Helpers for tests/bench/run.sh: process-tree accounting, load-tool output
parsing, functional checks and the Markdown report. Standard library only,
except `check-grpc` which needs python3-grpcio.

Subcommands (all print to stdout, errors to stderr, exit 0 unless noted):
  tree PID                       PID and all its descendants, one per line
  cpu PID                        utime+stime of the tree, in clock ticks
  rss PID                        VmRSS of the tree, in KiB
  sample PID OUT INTERVAL MAXSEC max tree VmRSS (KiB) seen, rewritten to OUT
                                 on every new maximum; stops on SIGTERM/SIGINT,
                                 when the tree is gone, or after MAXSEC
  h2load OUT [LOG]               parse h2load output (+ per-request log) -> TSV
  wrk OUT                        parse `wrk --latency` output -> TSV
  s_time OUT WALL MODE           parse `openssl s_time` output (MODE new|reuse,
                                 WALL = measured seconds) -> TSV, see below
  conn-get PORT SECONDS          plaintext twin of `s_time -reuse -www /`: one
                                 connection per `GET / HTTP/1.0`, one at a time,
                                 for SECONDS; prints an s_time-like summary
  check-grpc HOST:PORT PATH      one unary call; exit 1 with a reason on failure
  check-http URL                 one GET; exit 1 with a reason on failure
  check-https URL CA CERT KEY    one GET over mTLS (client certificate CERT/KEY,
                                 server verified against CA); exit 1 on failure
  report RESULTS_TSV META_FILE   Markdown table + ratio lines; with rows from
                                 several rounds (run.sh --repeat), medians of
                                 the rounds and per-round ratios, see report()
The parse subcommands print: rps <TAB> ok_requests <TAB> p50_us <TAB> p99_us <TAB> errors
(for s_time: handshakes/s, connections, -, -, and as errors the connections
whose handshake was not of the kind asked for: resumed ones in a -new run,
full ones in a -reuse run; MODE plain parses conn-get, errors = non-200).
"""
import math
import os
import re
import signal
import statistics
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes

def _ppid_map():
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        # comm may hold spaces and parentheses: fields start after the last ')'.
        rest = data[data.rindex(b")") + 2:].split()
        children.setdefault(int(rest[1]), []).append(int(name))
    return children


def tree(pid):
    children = _ppid_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if not os.path.exists(f"/proc/{p}"):
            continue
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _stat_fields(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def cpu_ticks(pid):
    """utime+stime of every process in the tree. A process's /proc/PID/stat
    already sums all of its threads (live and exited)."""
    total = 0
    for p in tree(pid):
        try:
            f = _stat_fields(p)
        except (OSError, ValueError):
            continue
        # After the comm: state(3) ppid(4) ... utime(14) stime(15) -> index 11, 12.
        total += int(f[11]) + int(f[12])
    return total


def wakeups(pid):
    """Voluntary context switches of every thread in the tree: how often the
    proxy went to sleep (in epoll_wait, mostly) and was woken again. On a VM
    each costs several microseconds of the proxy's CPU, so wake-ups per
    request explain most differences in CPU per request at fixed rates."""
    total = 0
    for p in tree(pid):
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
                            break
            except (OSError, ValueError):
                continue
    return total


def rss_kib(pid, pids=None):
    total = 0
    for p in pids if pids is not None else tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def sample(pid, out, interval, maxsec):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    best = -1
    deadline = time.monotonic() + maxsec
    pids, refreshed = None, 0.0
    while not stop and time.monotonic() < deadline:
        now = time.monotonic()
        if pids is None or now - refreshed > 1.0:   # re-walk the tree once a second
            pids, refreshed = tree(pid), now
            if not pids:
                break
        v = rss_kib(pid, pids)
        if v > best:
            best = v
            with open(out + ".tmp", "w") as f:
                f.write(f"{best}\n")
            os.replace(out + ".tmp", out)
        time.sleep(interval)


# ---------------------------------------------------------------- parsing

def _pct(sorted_vals, q):
    if not sorted_vals:
        return ""
    # Nearest rank: the smallest value with at least q of the samples at or below it.
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return f"{sorted_vals[i]:.0f}"


def parse_h2load(out_path, log_path=None):
    text = open(out_path, errors="replace").read()
    m = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", text)
    rps = m.group(1) if m else ""
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    ok, errors = ("", "")
    if m:
        ok = m.group(4)
        errors = str(int(m.group(5)) + int(m.group(6)) + int(m.group(7)))
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m and ok:
        # h2load counts any completed response as "succeeded"; only 2xx count here.
        bad = int(m.group(2)) + int(m.group(3)) + int(m.group(4))
        ok = str(int(m.group(1)))
        errors = str(int(errors or 0) + bad)
    p50 = p99 = ""
    if log_path and os.path.exists(log_path):
        vals = []
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) >= 3 and parts[1].startswith("2"):
                    vals.append(float(parts[2]))
        vals.sort()
        p50, p99 = _pct(vals, 0.50), _pct(vals, 0.99)
    print("\t".join([rps, ok, p50, p99, errors]))


_UNIT_US = {"us": 1.0, "ms": 1000.0, "s": 1e6, "m": 60e6, "h": 3600e6}


def _wrk_time(s):
    m = re.match(r"([\d.]+)(us|ms|s|m|h)$", s)
    return f"{float(m.group(1)) * _UNIT_US[m.group(2)]:.0f}" if m else ""


def parse_wrk(out_path):
    text = open(out_path, errors="replace").read()
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    rps = m.group(1) if m else ""
    m = re.search(r"(\d+) requests in", text)
    total = int(m.group(1)) if m else None
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    non2xx = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    sockerr = sum(int(x) for x in m.groups()) if m else 0
    m50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
    m99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
    ok = "" if total is None else str(total - non2xx)
    print("\t".join([rps, ok, _wrk_time(m50.group(1)) if m50 else "",
                     _wrk_time(m99.group(1)) if m99 else "", str(non2xx + sockerr)]))


def parse_s_time(out_path, wall, mode):
    """openssl s_time prints one character per connection ('r' resumed,
    '*' or a version letter for a full handshake) and then
    "N connections in T real seconds, B bytes read per connection". T is
    whole seconds, so the rate uses the measured wall time instead."""
    text = open(out_path, errors="replace").read()
    m = re.findall(r"^(\d+) connections in \d+ real seconds", text, re.M)
    # "-" for "none": run.sh reads these fields with IFS=tab, which would
    # merge empty ones.
    if not m:
        print("\t".join(["-", "-", "-", "-", "-"]))
        return
    n = int(m[-1])
    # The progress characters sit on the lines between "starting" (or the
    # "Collecting ..." line) and the summary; count only those lines.
    marks = "".join(line for line in text.splitlines()
                    if line and re.fullmatch(r"[r*t3]+", line))
    resumed = marks.count("r")
    full = len(marks) - resumed
    if mode == "plain":
        mm = re.search(r"(\d+) not 200", text)
        wrong = int(mm.group(1)) if mm else 0
    elif mode == "confirmed":   # handshake_client.c
        mm = re.search(r"(\d+) not confirmed", text)
        wrong = int(mm.group(1)) if mm else 0
    else:
        wrong = full if mode == "reuse" else resumed
    try:
        rps = f"{n / float(wall):.1f}"
    except (ValueError, ZeroDivisionError):
        rps = "-"
    print("\t".join([rps, str(n), "-", "-", str(wrong)]))


def conn_get(port, secs):
    """What s_time -reuse -www / does per connection, without TLS: connect,
    send `GET / HTTP/1.0` (no Host, as s_time), read until the server closes,
    close; sequentially, like s_time."""
    import socket
    req = b"GET / HTTP/1.0\r\n\r\n"
    n = bad = 0
    t0 = time.monotonic()
    end = t0 + secs
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
                c.sendall(req)
                head = b""
                while True:
                    d = c.recv(65536)
                    if not d:
                        break
                    if len(head) < 16:
                        head += d[:16]
        except OSError:
            head = b""
        n += 1
        if not re.match(rb"HTTP/1\.[01] 200 ", head):
            bad += 1
    print(f"{n} connections in {time.monotonic() - t0:.0f} real seconds, {bad} not 200")


# ---------------------------------------------------------------- checks

def check_grpc(target, path):
    try:
        import grpc
    except ImportError:
        print("python3-grpcio missing", file=sys.stderr)
        return 1
    ch = grpc.insecure_channel(target)
    try:
        call = ch.unary_unary(path)
        resp, c = call.with_call(b"\x0a\x0ehello-sidecar!", timeout=3)
        if c.code() != grpc.StatusCode.OK or not resp:
            print(f"status {c.code()}, {len(resp or b'')} bytes", file=sys.stderr)
            return 1
    except grpc.RpcError as e:
        print(f"{e.code()}: {e.details()}", file=sys.stderr)
        return 1
    finally:
        ch.close()
    return 0


def check_http(url):
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            body = r.read()
            if r.status != 200 or not body:
                print(f"HTTP {r.status}, {len(body)} bytes", file=sys.stderr)
                return 1
    except Exception as e:  # noqa: BLE001 - any failure is the reason we report
        print(str(e), file=sys.stderr)
        return 1
    return 0


def check_https(url, ca, cert, key):
    import ssl
    import urllib.request
    try:
        ctx = ssl.create_default_context(cafile=ca)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
            body = r.read()
            if r.status != 200 or not body:
                print(f"HTTP {r.status}, {len(body)} bytes", file=sys.stderr)
                return 1
    except Exception as e:  # noqa: BLE001 - any failure is the reason we report
        print(str(e), file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------- report

COLS = ["load", "proxy", "rps", "cpu_us", "p50", "p99", "rss_idle", "rss_load",
        "core0", "errors", "note", "other0", "key", "wakeups", "round"]
# The figures of the main table that a report over several rounds gives as
# the median of the rounds (errors are summed instead).
MEDIAN_COLS = ("rps", "cpu_us", "wakeups", "p50", "p99", "rss_idle", "rss_load", "core0")

# Loads (the run.sh names in the "key" column) whose unit is a connection,
# not a request: req/s is handshakes/s and CPU µs/req is µs per connection.
HANDSHAKE_LOADS = ("tls-full", "tls-full-stime", "tls-resumed")
# tls-persistent is compared with its plaintext twin, measured right after it
# in the same proxy process at the same rate with the same tool.
TLS_PAIRS = (("tls-persistent", "tls-plain"), ("tls-paced", "tls-paced-plain"),
             ("tls-persistent-max", "tls-plain-max"))
HANDSHAKE_LOADS += ("tls-resumed-plain",)


def _f(v, fmt):
    try:
        return fmt.format(float(v))
    except (TypeError, ValueError):
        return v if v else "—"


def _mib(kib):
    try:
        return f"{float(kib) / 1024:.1f} MiB"
    except (TypeError, ValueError):
        return "—"


def _us(v):
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "—"
    return f"{x / 1000:.2f} ms" if x >= 10000 else f"{x:.0f} µs"


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _median_rows(rows):
    """One row per (load, proxy), in the order first seen, from the rows of
    every round: each figure the median over the rounds that measured it,
    errors summed, other0 the largest, and "runs" the number of rounds that
    measured it. A (load, proxy) no round measured keeps its first row (and
    that row's note)."""
    groups = {}
    for r in rows:
        groups.setdefault((r["load"], r["proxy"]), []).append(r)
    out = []
    for rs in groups.values():
        ok = [r for r in rs if not r["note"]]
        if not ok:
            out.append(dict(rs[0], runs=0))
            continue
        m = dict(ok[0], runs=len(ok))
        for c in MEDIAN_COLS:
            vals = [v for v in (_num(r[c]) for r in ok) if v is not None]
            m[c] = repr(statistics.median(vals)) if vals else ""
        errs = [v for v in (_num(r["errors"]) for r in ok) if v is not None]
        m["errors"] = f"{sum(errs):.0f}" if errs else ""
        others = [v for v in (_num(r["other0"]) for r in ok) if v is not None]
        m["other0"] = repr(max(others)) if others else ""
        out.append(m)
    return out


def report(results_path, meta_path):
    """The Markdown report. Rows carry their round (run.sh --repeat); with
    one round it is that run's table and ratios. With several, the table gives
    per load and proxy the median of the rounds (errors summed), a second
    table each round's CPU per request, and every ratio is taken within each
    round (both figures from the same slice of machine time) and reported as
    the median of those per-round ratios with their range."""
    rows = []
    with open(results_path) as f:
        for line in f:
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (len(COLS) - len(parts))
            rows.append(dict(zip(COLS, parts)))
    for r in rows:
        # Results written before rounds existed are one round.
        r["round"] = int(r["round"]) if r["round"].isdigit() else 1
    rounds = sorted({r["round"] for r in rows})
    nr = len(rounds)
    table = rows if nr <= 1 else _median_rows(rows)
    meta = open(meta_path).read().rstrip("\n") if os.path.exists(meta_path) else ""
    out = []
    if meta:
        out.append(meta)
    if nr > 1:
        out.append(f"- rounds: {nr} (--repeat), interleaved: each round ran every load on every "
                   "proxy in the order of the table, then the next round began. Every figure in "
                   f"the table is the median of the {nr} runs of its load and proxy (errors: "
                   "their sum); every ratio is the median of the ratios taken within each round, "
                   "followed by their range and how many rounds gave one")
    if out:
        out.append("")
    out.append("| load | proxy | req/s | CPU µs/req | wake-ups/req | p50 | p99 | RSS idle | RSS load "
               "| proxy core % | errors |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = {}   # (proxy, reason) -> {load: [rounds]}
    for r in rows:
        if r["note"]:
            notes.setdefault((r["proxy"], r["note"]), {}).setdefault(r["load"], []).append(r["round"])
    for r in table:
        if r["note"]:
            out.append(f"| {r['load']} | {r['proxy']} | n/a | | | | | | | | |")
            continue
        # A median over fewer rounds than ran says so (the others were n/a).
        runs = r.get("runs", nr)
        proxy = r["proxy"] if runs == nr else f"{r['proxy']} ({runs} of {nr} rounds)"
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["load"], proxy, _f(r["rps"], "{:,.0f}"), _f(r["cpu_us"], "{:.2f}"), _f(r["wakeups"], "{:.2f}"),
            _us(r["p50"]), _us(r["p99"]), _mib(r["rss_idle"]), _mib(r["rss_load"]),
            _f(r["core0"], "{:.0f}%"), r["errors"] or "0"))
    out.append("")
    all_loads = list(dict.fromkeys(r["load"] for r in rows))
    for (proxy, note), where in notes.items():
        loads = list(where)
        which = "" if len(loads) == len(all_loads) else " for " + ", ".join(loads)
        when = sorted({rd for rds in where.values() for rd in rds})
        if len(when) < nr:
            which += (" in round " if len(when) == 1 else " in rounds ") + ", ".join(map(str, when))
        out.append(f"- {proxy}: n/a{which} ({note})")
    if notes:
        out.append("")

    key_of = {r["load"]: r["key"] for r in rows}
    by = {(r["load"], r["proxy"]): r for r in table if not r["note"]}
    by_round = {rd: {} for rd in rounds}
    for r in rows:
        if not r["note"]:
            by_round[r["round"]][(r["load"], r["proxy"])] = r
    proxies = list(dict.fromkeys(r["proxy"] for r in rows))
    peers = [p for p in proxies if p not in ("sidecar", "direct")]

    if nr > 1:
        # Each round's CPU per request: how far one run can be from another.
        out.append("CPU µs/req in each round (the table above gives the median; spread = "
                   "(max - min) / median):")
        out.append("")
        out.append("| load | proxy | " + " | ".join(f"round {rd}" for rd in rounds)
                   + " | min | median | max | spread |")
        out.append("|---|---|" + "---:|" * (nr + 4))
        for r in table:
            k = (r["load"], r["proxy"])
            cells = [_num(by_round[rd][k]["cpu_us"]) if k in by_round[rd] else None for rd in rounds]
            vals = [v for v in cells if v is not None]
            if not vals:
                continue
            med = statistics.median(vals)
            spread = f"{(max(vals) - min(vals)) / med:.0%}" if med else "—"
            out.append(f"| {k[0]} | {k[1]} | "
                       + " | ".join("n/a" if v is None else f"{v:.2f}" for v in cells)
                       + f" | {min(vals):.2f} | {med:.2f} | {max(vals):.2f} | {spread} |")
        out.append("")

    def target_rate(load):
        m = re.search(r"@(\d+) rps", load)
        return float(m.group(1)) if m else None

    def stalled(load, r, src=None):
        """A run so far below what the load asks that its figures mean nothing
        (against direct in src: one round's rows, or by default the medians)."""
        rps = _num(r["rps"]) or 0.0
        rate = target_rate(load)
        if rate:
            return rps < 0.9 * rate
        d = (by if src is None else src).get((load, "direct"))
        return bool(d and _num(d["rps"]) and rps < 0.02 * _num(d["rps"]))

    def ratio(a, b):
        a, b = _num(a), _num(b)
        return f"{a / b:.2f}x" if a and b else "—"

    def round_ratios(ka, kb, field):
        """by_round[rd][ka][field] / by_round[rd][kb][field] for every round
        in which both were measured and neither stalled."""
        vals = []
        for rd in rounds:
            src = by_round[rd]
            x, y = src.get(ka), src.get(kb)
            if not x or not y or stalled(ka[0], x, src) or stalled(kb[0], y, src):
                continue
            a, b = _num(x[field]), _num(y[field])
            if a and b:
                vals.append(a / b)
        return vals

    def rratio(ka, kb, field):
        """The ratio of two rows' field, (load, proxy) keys ka / kb: with one
        round that run's ratio; with several, the median of the per-round
        ratios, their range and how many rounds gave one."""
        if nr <= 1:
            return ratio(by[ka][field], by[kb][field])
        return median_ratio(round_ratios(ka, kb, field))

    def median_ratio(vals):
        """"0.74x (0.70-0.79, 3 rounds)": per-round ratios, their median first."""
        if not vals:
            return "—"
        n = len(vals)
        return (f"{statistics.median(vals):.2f}x ({min(vals):.2f}-{max(vals):.2f}, "
                f"{n} round{'s' if n != 1 else ''})")

    # Ratios: sidecar / peer; below 1.00 means the sidecar uses less.
    lines = []
    crossing = []   # CPU/req ratios below 1.00x in some rounds, above in others
    for load in all_loads:
        s = by.get((load, "sidecar"))
        if not s:
            continue
        if stalled(load, s):
            lines.append(f"- {load}: sidecar stalled or starved ({_num(s['rps']) or 0:,.0f} req/s): no ratio")
            continue
        fixed_rate = target_rate(load) is not None
        for p in peers:
            q = by.get((load, p))
            if not q or stalled(load, q):
                continue
            ks, kq = (load, "sidecar"), (load, p)
            extra = (f", p99 {rratio(ks, kq, 'p99')}" if fixed_rate
                     else f", req/s {rratio(ks, kq, 'rps')}")
            lines.append(f"- {load}: sidecar vs {p}: CPU/req {rratio(ks, kq, 'cpu_us')}, "
                         f"RSS load {rratio(ks, kq, 'rss_load')}, "
                         f"RSS idle {rratio(ks, kq, 'rss_idle')}{extra}")
            rs = round_ratios(ks, kq, "cpu_us") if nr > 1 else []
            if rs and round(min(rs), 2) < 1 < round(max(rs), 2):
                crossing.append(f"sidecar vs {p} on {load} ({min(rs):.2f}-{max(rs):.2f})")
    if lines:
        out.append("Ratios, sidecar / peer (CPU/req, RSS, p99: < 1.00x means the sidecar "
                   "uses less; req/s: > 1.00x means the sidecar is faster):")
        out.append("")
        out.extend(lines)
    else:
        out.append("Ratios: none (no sidecar rows measured).")

    # Feature costs: the sidecar with a feature on (sidecar_policies, and the
    # observability variants) against the plain sidecar of the same run.
    cost_lines = []
    for load in all_loads:
        s = by.get((load, "sidecar"))
        if not s or stalled(load, s):
            continue
        for p in proxies:
            q = by.get((load, p))
            if not p.startswith("sidecar_") or not q or stalled(load, q):
                continue
            cost_lines.append(f"- {load}: {p} / sidecar: CPU/req {rratio((load, p), (load, 'sidecar'), 'cpu_us')} "
                              f"({_f(q['cpu_us'], '{:.2f}')} vs {_f(s['cpu_us'], '{:.2f}')} µs)")
    if cost_lines:
        out.append("")
        out.append("Feature cost, the sidecar with the feature on / off (CPU per request; "
                   "sidecar_policies: every resilience policy; sidecar_log: every access-log line; "
                   "sidecar_trace / sidecar_trace1: tracing sampling 100% / 1%):")
        out.append("")
        out.extend(cost_lines)

    # The L4 floor (HAProxy mode tcp, nothing parsed): how far above the cost
    # of forwarding the bytes each proxy is, CPU per request.
    floor_lines = []
    for load in all_loads:
        f = by.get((load, "floor"))
        if not f or stalled(load, f) or not _num(f["cpu_us"]):
            continue
        vals = [f"{p} {rratio((load, p), (load, 'floor'), 'cpu_us')}"
                for p in proxies if p not in ("floor", "direct") and (load, p) in by
                and not stalled(load, by[(load, p)])]
        if vals:
            floor_lines.append(f"- {load}: floor {_f(f['cpu_us'], '{:.2f}')} µs/req; "
                               + ", ".join(vals))
    if floor_lines:
        out.append("")
        out.append("CPU per request over the L4 floor (HAProxy `mode tcp`, same backends, "
                   "bytes forwarded, nothing parsed; 1.00x = the floor):")
        out.append("")
        out.extend(floor_lines)

    # TLS: what a handshake and what TLS on a kept-alive connection cost.
    hs = [l for l in all_loads if key_of.get(l) in HANDSHAKE_LOADS]
    pairs = []
    for tkey, pkey in TLS_PAIRS:
        tl = next((l for l in all_loads if key_of.get(l) == tkey), None)
        pl = next((l for l in all_loads if key_of.get(l) == pkey), None)
        if tl and pl:
            pairs.append((tl, pl))
    if hs or pairs:
        out.append("")
        out.append("TLS (sidecar / peer ratios are above; handshake rows count connections: "
                   "req/s = handshakes/s, CPU µs/req = proxy CPU µs per connection, errors = "
                   "connections whose handshake was not of the kind asked for):")
        out.append("")
        tproxies = [p for p in proxies if p != "direct"
                    and any((l, p) in by for l in hs + [x for pr in pairs for x in pr])]
        for load in hs:
            vals = [f"{p} {_num(by[(load, p)]['cpu_us']) / 1000:.3f} ms"
                    for p in tproxies if (load, p) in by and _num(by[(load, p)]["cpu_us"])]
            if vals:
                out.append(f"- {load}: proxy CPU per connection: " + ", ".join(vals))
        full = next((l for l in hs if key_of.get(l) == "tls-full"), None)
        res = next((l for l in hs if key_of.get(l) == "tls-resumed"), None)
        twin = next((l for l in hs if key_of.get(l) == "tls-resumed-plain"), None)
        if res and twin:
            # The resumed run carries one GET per connection; its plaintext
            # twin is the same connection + GET without TLS.
            vals, est = [], {}
            for p in tproxies:
                r, t = by.get((res, p)), by.get((twin, p))
                if r and t and _num(r["cpu_us"]) and _num(t["cpu_us"]):
                    est[p] = _num(r["cpu_us"]) - _num(t["cpu_us"])
                    vals.append(f"{p} {est[p] / 1000:.3f} ms")
            if vals:
                out.append("- resumed handshake alone, estimated as (resumed handshake + GET) - "
                           "(plaintext connection + GET): " + ", ".join(vals))
            s = est.get("sidecar")

            def alone(src, p):
                r, t = src.get((res, p)), src.get((twin, p))
                if r and t and _num(r["cpu_us"]) and _num(t["cpu_us"]):
                    return _num(r["cpu_us"]) - _num(t["cpu_us"])
                return None

            for p in peers:
                if s and est.get(p):
                    if nr <= 1:
                        out.append(f"  - sidecar vs {p}: {s / est[p]:.2f}x")
                        continue
                    # With rounds: the estimate and its ratio within each round.
                    vals = [alone(by_round[rd], "sidecar") / alone(by_round[rd], p) for rd in rounds
                            if alone(by_round[rd], "sidecar") and alone(by_round[rd], p)]
                    out.append(f"  - sidecar vs {p}: {median_ratio(vals)}")
        if full and res:
            vals = [f"{p} {rratio((res, p), (full, p), 'cpu_us')}"
                    for p in tproxies if (res, p) in by and (full, p) in by]
            if vals:
                out.append("- (resumed handshake + GET) / full handshake, CPU per connection: "
                           + ", ".join(vals))
        for tl, pl in pairs:
            vals = []
            for p in tproxies:
                t, q = by.get((tl, p)), by.get((pl, p))
                if t and q and not stalled(tl, t) and not stalled(pl, q):
                    vals.append(f"{p} {rratio((tl, p), (pl, p), 'cpu_us')} "
                                f"({_f(t['cpu_us'], '{:.1f}')} / {_f(q['cpu_us'], '{:.1f}')} µs)")
            if vals:
                out.append(f"- TLS / plaintext CPU per request on kept-alive connections at the "
                           f"same rate, \"{tl}\" / \"{pl}\": " + ", ".join(vals))

    # Sanity: at saturation the proxy, not core 1 (load tool + backend), must
    # be the limit, or req/s and CPU/req compare different regimes. Checked
    # in every round on that round's rows: a round that warned is named.
    def checks(src):
        """The checks over one round's rows, src: (load, proxy) -> row. Returns
        load -> {"stall", "near", "unsat": [(proxy, figure)], "errors": bool}."""
        found = {}
        for load in all_loads:
            d = src.get((load, "direct"))
            near, unsat, stall = [], [], []
            for p in proxies:
                q = src.get((load, p))
                if not q or p == "direct":
                    continue
                if stalled(load, q, src):
                    stall.append((p, f"{_num(q['rps']) or 0:,.0f} req/s"))
                    continue
                if target_rate(load) or key_of.get(load) in HANDSHAKE_LOADS + ("tls-plain-max",):
                    # Fixed rate: nothing to saturate. Handshakes: the client pays
                    # about as much per handshake as the server, so core 1 is the
                    # limit; CPU per handshake hardly depends on batching.
                    # tls-plain-max is paced at its TLS twin's rate on purpose.
                    continue
                if d and _num(q["rps"]) and _num(d["rps"]) and _num(q["rps"]) >= 0.9 * _num(d["rps"]):
                    near.append((p, f"{_num(q['rps']) / _num(d['rps']):.0%}"))
                c = _num(q["core0"])
                if c is not None and c < 85:
                    unsat.append((p, f"{c:.0f}%"))
            errors = any(_num(src[k]["errors"]) for k in src if k[0] == load)
            found[load] = {"stall": stall, "near": near, "unsat": unsat, "errors": errors}
        return found

    found = {rd: checks(by_round[rd]) for rd in rounds}

    def who(load, kind):
        """"proxy (figure)" for each proxy one check flagged; with several
        rounds, "proxy (round 1: figure, round 3: figure)"."""
        seen = {}
        for rd in rounds:
            for p, fig in found[rd][load][kind]:
                seen.setdefault(p, []).append((rd, fig))
        if nr <= 1:
            return ", ".join(f"{p} ({v[0][1]})" for p, v in seen.items())
        return ", ".join(f"{p} (" + ", ".join(f"round {rd}: {fig}" for rd, fig in seen[p]) + ")"
                         for p in proxies if p in seen)

    warn = []
    for load in all_loads:
        stall, near, unsat = who(load, "stall"), who(load, "near"), who(load, "unsat")
        if stall:
            warn.append(f"- {load}: far below the load (fixed rate missed, or < 2% of direct "
                        f"req/s), stalled or starved, figures meaningless: {stall}")
        if near:
            warn.append(f"- {load}: within 90% of direct req/s, the load core may be the limit: "
                        f"{near}")
        if unsat:
            warn.append(f"- {load}: proxy core not saturated, CPU/req measured with less batching "
                        f"than a saturated peer's: {unsat}")
        erred = [rd for rd in rounds if found[rd][load]["errors"]]
        if erred and nr <= 1:
            warn.append(f"- {load}: some runs had errors (see the errors column)")
        elif erred:
            warn.append(f"- {load}: some runs had errors, in round{'s' if len(erred) > 1 else ''} "
                        f"{', '.join(map(str, erred))} (the errors column sums the rounds)")
    noisy = {}   # proxy -> (largest share of the proxy core others took, its round)
    for r in rows:
        o = _num(r.get("other0"))
        if o is not None and o > 5 and o > noisy.get(r["proxy"], (0.0, 0))[0]:
            noisy[r["proxy"]] = (o, r["round"])
    if noisy:
        warn.append("- the machine was not quiet: other processes used up to "
                    + ", ".join(f"{o:.0f}% ({p})" if nr <= 1 else f"{o:.0f}% ({p}, round {rd})"
                                for p, (o, rd) in noisy.items())
                    + " of the proxy core during the runs: repeat on an idle machine before quoting")
    if crossing:
        warn.append("- CPU/req below 1.00x in some rounds and above in others, no clear winner: "
                    + ", ".join(crossing))
    out.append("")
    measured = any(k[1] != "direct" for k in by)
    if warn:
        out.append("Sanity warnings:")
        out.append("")
        out.extend(warn)
    elif measured:
        out.append("Sanity: no proxy came within 90% of direct req/s or left its core "
                   "unsaturated at saturation; no stalls, no errors, a quiet machine"
                   + ("." if nr <= 1 else f", in each of the {nr} rounds."))
    print("\n".join(out))


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "tree":
        print("\n".join(str(p) for p in tree(int(args[0]))))
    elif cmd == "cpu":
        print(cpu_ticks(int(args[0])))
    elif cmd == "wakeups":
        print(wakeups(int(args[0])))
    elif cmd == "rss":
        print(rss_kib(int(args[0])))
    elif cmd == "sample":
        sample(int(args[0]), args[1], float(args[2]), float(args[3]))
    elif cmd == "h2load":
        parse_h2load(args[0], args[1] if len(args) > 1 else None)
    elif cmd == "wrk":
        parse_wrk(args[0])
    elif cmd == "check-grpc":
        return check_grpc(args[0], args[1])
    elif cmd == "s_time":
        parse_s_time(args[0], args[1], args[2])
    elif cmd == "conn-get":
        conn_get(int(args[0]), float(args[1]))
    elif cmd == "check-http":
        return check_http(args[0])
    elif cmd == "check-https":
        return check_https(args[0], args[1], args[2], args[3])
    elif cmd == "report":
        report(args[0], args[1])
    else:
        print(f"unknown subcommand {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

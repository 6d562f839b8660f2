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
  report RESULTS_TSV META_FILE   Markdown table + ratio lines
The parse subcommands print: rps <TAB> ok_requests <TAB> p50_us <TAB> p99_us <TAB> errors
(for s_time: handshakes/s, connections, -, -, and as errors the connections
whose handshake was not of the kind asked for: resumed ones in a -new run,
full ones in a -reuse run; MODE plain parses conn-get, errors = non-200).
"""
import math
import os
import re
import signal
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
        "core0", "errors", "note", "other0", "key", "wakeups"]

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


def report(results_path, meta_path):
    rows = []
    with open(results_path) as f:
        for line in f:
            if not line.strip():
                continue
            parts = line.rstrip("\n").split("\t")
            parts += [""] * (len(COLS) - len(parts))
            rows.append(dict(zip(COLS, parts)))
    meta = open(meta_path).read().rstrip("\n") if os.path.exists(meta_path) else ""
    out = []
    if meta:
        out.append(meta)
        out.append("")
    out.append("| load | proxy | req/s | CPU µs/req | wake-ups/req | p50 | p99 | RSS idle | RSS load "
               "| proxy core % | errors |")
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    notes = {}   # reason -> [(proxy, load)]
    for r in rows:
        if r["note"]:
            notes.setdefault((r["proxy"], r["note"]), []).append(r["load"])
            out.append(f"| {r['load']} | {r['proxy']} | n/a | | | | | | | | |")
            continue
        out.append("| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["load"], r["proxy"], _f(r["rps"], "{:,.0f}"), _f(r["cpu_us"], "{:.2f}"), _f(r["wakeups"], "{:.2f}"),
            _us(r["p50"]), _us(r["p99"]), _mib(r["rss_idle"]), _mib(r["rss_load"]),
            _f(r["core0"], "{:.0f}%"), r["errors"] or "0"))
    out.append("")
    all_loads = list(dict.fromkeys(r["load"] for r in rows))
    for (proxy, note), loads in notes.items():
        which = "" if len(loads) == len(all_loads) else " for " + ", ".join(loads)
        out.append(f"- {proxy}: n/a{which} ({note})")
    if notes:
        out.append("")

    key_of = {r["load"]: r["key"] for r in rows}
    by = {(r["load"], r["proxy"]): r for r in rows if not r["note"]}
    proxies = list(dict.fromkeys(r["proxy"] for r in rows))
    peers = [p for p in proxies if p not in ("sidecar", "direct")]

    def target_rate(load):
        m = re.search(r"@(\d+) rps", load)
        return float(m.group(1)) if m else None

    def stalled(load, r):
        """A run so far below what the load asks that its figures mean nothing."""
        rps = _num(r["rps"]) or 0.0
        rate = target_rate(load)
        if rate:
            return rps < 0.9 * rate
        d = by.get((load, "direct"))
        return bool(d and _num(d["rps"]) and rps < 0.02 * _num(d["rps"]))

    def ratio(a, b):
        a, b = _num(a), _num(b)
        return f"{a / b:.2f}x" if a and b else "—"

    # Ratios: sidecar / peer; below 1.00 means the sidecar uses less.
    lines = []
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
            extra = (f", p99 {ratio(s['p99'], q['p99'])}" if fixed_rate
                     else f", req/s {ratio(s['rps'], q['rps'])}")
            lines.append(f"- {load}: sidecar vs {p}: CPU/req {ratio(s['cpu_us'], q['cpu_us'])}, "
                         f"RSS load {ratio(s['rss_load'], q['rss_load'])}, "
                         f"RSS idle {ratio(s['rss_idle'], q['rss_idle'])}{extra}")
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
            cost_lines.append(f"- {load}: {p} / sidecar: CPU/req {ratio(q['cpu_us'], s['cpu_us'])} "
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
        vals = [f"{p} {ratio(by[(load, p)]['cpu_us'], f['cpu_us'])}"
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
            for p in peers:
                if s and est.get(p):
                    out.append(f"  - sidecar vs {p}: {s / est[p]:.2f}x")
        if full and res:
            vals = [f"{p} {ratio(by[(res, p)]['cpu_us'], by[(full, p)]['cpu_us'])}"
                    for p in tproxies if (res, p) in by and (full, p) in by]
            if vals:
                out.append("- (resumed handshake + GET) / full handshake, CPU per connection: "
                           + ", ".join(vals))
        for tl, pl in pairs:
            vals = []
            for p in tproxies:
                t, q = by.get((tl, p)), by.get((pl, p))
                if t and q and not stalled(tl, t) and not stalled(pl, q):
                    vals.append(f"{p} {ratio(t['cpu_us'], q['cpu_us'])} "
                                f"({_f(t['cpu_us'], '{:.1f}')} / {_f(q['cpu_us'], '{:.1f}')} µs)")
            if vals:
                out.append(f"- TLS / plaintext CPU per request on kept-alive connections at the "
                           f"same rate, \"{tl}\" / \"{pl}\": " + ", ".join(vals))

    # Sanity: at saturation the proxy, not core 1 (load tool + backend), must
    # be the limit, or req/s and CPU/req compare different regimes.
    warn = []
    for load in all_loads:
        d = by.get((load, "direct"))
        near, unsat, stall = [], [], []
        for p in proxies:
            q = by.get((load, p))
            if not q or p == "direct":
                continue
            if stalled(load, q):
                stall.append(f"{p} ({_num(q['rps']) or 0:,.0f} req/s)")
                continue
            if target_rate(load) or key_of.get(load) in HANDSHAKE_LOADS + ("tls-plain-max",):
                # Fixed rate: nothing to saturate. Handshakes: the client pays
                # about as much per handshake as the server, so core 1 is the
                # limit; CPU per handshake hardly depends on batching.
                # tls-plain-max is paced at its TLS twin's rate on purpose.
                continue
            if d and _num(q["rps"]) and _num(d["rps"]) and _num(q["rps"]) >= 0.9 * _num(d["rps"]):
                near.append(f"{p} ({_num(q['rps']) / _num(d['rps']):.0%})")
            c = _num(q["core0"])
            if c is not None and c < 85:
                unsat.append(f"{p} ({c:.0f}%)")
        if stall:
            warn.append(f"- {load}: far below the load (fixed rate missed, or < 2% of direct "
                        f"req/s), stalled or starved, figures meaningless: {', '.join(stall)}")
        if near:
            warn.append(f"- {load}: within 90% of direct req/s, the load core may be the limit: "
                        f"{', '.join(near)}")
        if unsat:
            warn.append(f"- {load}: proxy core not saturated, CPU/req measured with less batching "
                        f"than a saturated peer's: {', '.join(unsat)}")
        if any(_num(by[k]["errors"]) for k in by if k[0] == load):
            warn.append(f"- {load}: some runs had errors (see the errors column)")
    noisy = {}
    for r in rows:
        o = _num(r.get("other0"))
        if o is not None and o > 5:
            noisy[r["proxy"]] = max(noisy.get(r["proxy"], 0.0), o)
    if noisy:
        warn.append("- the machine was not quiet: other processes used up to "
                    + ", ".join(f"{o:.0f}% ({p})" for p, o in noisy.items())
                    + " of the proxy core during the runs: repeat on an idle machine before quoting")
    out.append("")
    measured = any(k[1] != "direct" for k in by)
    if warn:
        out.append("Sanity warnings:")
        out.append("")
        out.extend(warn)
    elif measured:
        out.append("Sanity: no proxy came within 90% of direct req/s or left its core "
                   "unsaturated at saturation; no stalls, no errors, a quiet machine.")
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

#!/usr/bin/env bash
# tests/bench/run.sh: CPU per request, throughput, latency and memory of the
# sidecar against HAProxy, nghttpx and nginx (and no proxy at all), on this
# machine, in one run. See tests/bench/README.md for the method.
#
#   tests/bench/run.sh [--quick] [--duration N] [--only LIST] [--loads LIST]
#                      [--repeat N] [--sidecar PATH] [--out FILE] [--no-direct]
#                      [--keep-work] [--wait-quiet S]
#
# Layout: every proxy runs with one worker pinned to core 0; backends, load
# generators and the samplers run on core 1. Everything listens on 127.0.0.1.
# Every process this script starts is killed on exit; every load is bounded
# in time (the tool's own duration plus a `timeout` around it).
#
# --repeat N runs the whole measurement N times in interleaved rounds (round 1:
# every proxy with every load, in the usual order; then round 2, ...), so that
# every proxy sees the same slices of a noisy machine's time. Each result row
# carries its round; the report gives medians over the rounds and, for every
# ratio, the median of the ratios taken within each round with their range.
#
# Extension points (look for "EXTENSION"): a new proxy is a start_<name>
# function plus its name in ALL_PROXIES; a new load is a case in load_cmd()
# plus its name in ALL_LOADS.
#
# TLS loads (tls-full, tls-resumed, tls-persistent) run against an mTLS
# listener of the sidecar, HAProxy and nghttpx only, with certificates made at
# run time by certs/make-certs.sh (CA, server "bench", client "client", ECDSA
# P-256). See "TLS loads" in tests/bench/README.md.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
PY=/usr/bin/python3
LIB="$HERE/benchlib.py"

ALL_PROXIES="sidecar,sidecar_policies,haproxy,nghttpx,nginx,floor"
# The sidecar with one observability feature on (its cost against "sidecar"
# in the same run): every access-log line to a file, tracing with every
# request sampled, tracing at 1%. Run only when named in --only.
OBS_PROXIES="sidecar_log,sidecar_trace,sidecar_trace1"
ALL_LOADS="grpc,http1,grpc-lat,http1-lat,tls-full,tls-full-stime,tls-resumed,tls-persistent"
# Proxies with an mTLS listener (the others skip the tls-* loads).
TLS_PROXIES="sidecar,haproxy,nghttpx"

# ------------------------------------------------------------------ options
QUICK=0
DURATION=""
ONLY=$ALL_PROXIES
LOADS=$ALL_LOADS
DIRECT=1
KEEP_WORK=0
WAIT_QUIET=0
REPEAT=1
OUT=""
SIDECAR_BIN=${SIDECAR_BIN:-$ROOT/build/sidecar}
PORT_BASE=${BENCH_PORT_BASE:-27100}
# The HTTP/1 backend: "c" (http1_backend.c, cheapest on the shared load core)
# or "nginx" (conf/nginx-backend.conf.in).
HTTP_BACKEND=${BENCH_HTTP_BACKEND:-c}
LAT_CONNS=8            # fixed-rate loads: LAT_CONNS x LAT_RPS requests per second
LAT_RPS=250

usage() {
    cat <<EOF
usage: $0 [options]
  --quick          short runs (2 s per load, 1 s warm-up): a smoke test
  --duration N     seconds per measured load (default 10, --quick: 2)
  --only LIST      proxies, comma-separated, from: $ALL_PROXIES (default: all)
                   (the no-proxy baseline "direct" always runs unless --no-direct),
                   and $OBS_PROXIES (only when named: the sidecar with
                   access logs / tracing at 100% / tracing at 1%, against "sidecar")
  --loads LIST     loads, comma-separated, from: $ALL_LOADS (default: all)
                   tls-full: mTLS full handshakes, each confirmed by the server's
                   ticket (handshake_client.c); tls-full-stime: openssl s_time -new
                   (counts handshakes the server may not have finished); tls-resumed:
                   resumed ones (s_time -reuse -www /); tls-persistent: requests on
                   kept-alive mTLS connections against a plaintext twin, at a fixed
                   rate and at the highest rate the load core reaches. TLS loads
                   run on $TLS_PROXIES only.
  --repeat N       run everything N times (default 1), in interleaved rounds: round 1
                   is every selected proxy with every selected load, then round 2, ...
                   The report gives per load and proxy the median of the N runs
                   (errors summed), each run's CPU µs/req, and every ratio as the
                   median of the ratios taken within each round, with their range
  --sidecar PATH   sidecar binary (default: \$SIDECAR_BIN or build/sidecar)
  --out FILE       results file (default: tests/bench/results-<date>.md)
  --no-direct      skip the no-proxy baseline
  --keep-work      keep the work directory (configs, logs, raw tool output)
  --wait-quiet S   first wait up to S seconds for both cores to be idle (< 5% busy
                   over 1 s); the run goes on either way, with a warning if not
Environment: BENCH_PORT_BASE (default 27100; ports BASE+1..BASE+56 are used),
  BENCH_HTTP_BACKEND=c|nginx (HTTP/1 backend, default c: tests/bench/http1_backend.c).
EOF
}

while (($#)); do
    case $1 in
        --quick) QUICK=1 ;;
        --duration) DURATION=${2:?--duration needs a value}; shift ;;
        --duration=*) DURATION=${1#*=} ;;
        --only) ONLY=${2:?--only needs a list}; shift ;;
        --only=*) ONLY=${1#*=} ;;
        --loads) LOADS=${2:?--loads needs a list}; shift ;;
        --loads=*) LOADS=${1#*=} ;;
        --sidecar) SIDECAR_BIN=${2:?}; shift ;;
        --sidecar=*) SIDECAR_BIN=${1#*=} ;;
        --out) OUT=${2:?}; shift ;;
        --out=*) OUT=${1#*=} ;;
        --no-direct) DIRECT=0 ;;
        --keep-work) KEEP_WORK=1 ;;
        --wait-quiet) WAIT_QUIET=${2:?--wait-quiet needs seconds}; shift ;;
        --wait-quiet=*) WAIT_QUIET=${1#*=} ;;
        --repeat) REPEAT=${2:?--repeat needs a count}; shift ;;
        --repeat=*) REPEAT=${1#*=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done

if ((QUICK)); then WARM=1; : "${DURATION:=2}"; else WARM=2; : "${DURATION:=10}"; fi
[[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 1 && DURATION <= 600)) \
    || { echo "--duration must be 1..600 seconds" >&2; exit 2; }
[[ $WAIT_QUIET =~ ^[0-9]+$ ]] || { echo "--wait-quiet needs a number of seconds" >&2; exit 2; }
[[ $REPEAT =~ ^[0-9]+$ ]] && ((REPEAT >= 1 && REPEAT <= 100)) \
    || { echo "--repeat must be 1..100" >&2; exit 2; }
# Hard bound for any one load-tool run: its own duration plus slack.
LOAD_TIMEOUT=$((DURATION + 30))

in_list() { [[ ",$2," == *",$1,"* ]]; }
for p in ${ONLY//,/ }; do
    in_list "$p" "$ALL_PROXIES,$OBS_PROXIES,direct" || { echo "unknown proxy in --only: $p" >&2; exit 2; }
done
for l in ${LOADS//,/ }; do
    in_list "$l" "$ALL_LOADS" || { echo "unknown load in --loads: $l" >&2; exit 2; }
done
in_list direct "$ONLY" && DIRECT=1
TLS_WANTED=0
for l in ${LOADS//,/ }; do [[ $l == tls-* ]] && TLS_WANTED=1; done
PROXIES=()
((DIRECT)) && PROXIES+=(direct)
for p in ${ALL_PROXIES//,/ } ${OBS_PROXIES//,/ }; do in_list "$p" "$ONLY" && PROXIES+=("$p"); done
if ((TLS_WANTED)); then
    tls_any=0
    for p in "${PROXIES[@]}"; do in_list "$p" "$TLS_PROXIES" && tls_any=1; done
    ((tls_any)) || echo "warning: TLS loads run only on $TLS_PROXIES, none of which is in --only" >&2
fi

STAMP=$(date +%Y%m%d-%H%M%S)
[[ -n $OUT ]] || OUT="$HERE/results-$STAMP.md"

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ------------------------------------------------------------------ cores
NCPU=$(nproc)
if ((NCPU >= 2)); then
    PROXY_CORE=0; LOAD_CORE=1
else
    PROXY_CORE=0; LOAD_CORE=0
    log "warning: only $NCPU core: proxy and load share core 0, numbers are not comparable"
fi
# Command prefixes (arrays, not functions: a background function would put a
# bash subshell between $! and the process, and into its process tree).
ON_PROXY_CORE=(taskset -c "$PROXY_CORE")
ON_LOAD_CORE=(taskset -c "$LOAD_CORE")

# core_ticks CORE: "busy total" clock ticks of one core from /proc/stat
# (busy = user nice system irq softirq steal; total adds idle and iowait).
core_ticks() {
    awk -v c="cpu$1" '$1 == c { b = $2 + $3 + $4 + $7 + $8 + $9; print b, b + $5 + $6 }' /proc/stat
}

# ------------------------------------------------------------------ tools
# Installs what is missing, Debian packages only, and only when missing.
ensure_tools() {
    local pkgs=()
    need() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
    need h2load nghttp2-client
    need wrk wrk
    need taskset util-linux
    need timeout coreutils
    need cc gcc
    [[ -x $PY ]] || pkgs+=(python3)
    [[ -f /usr/include/nghttp2/nghttp2.h ]] || pkgs+=(libnghttp2-dev)
    [[ -f /usr/include/ev.h ]] || pkgs+=(libev-dev)
    [[ $HTTP_BACKEND == nginx ]] || in_list nginx "$ONLY" && need nginx nginx-light
    in_list haproxy "$ONLY" && need haproxy haproxy
    in_list floor "$ONLY" && need haproxy haproxy
    in_list nghttpx "$ONLY" && need nghttpx nghttp2-proxy
    if ((TLS_WANTED)); then
        need openssl openssl
        [[ -f /usr/include/openssl/ssl.h ]] || pkgs+=(libssl-dev)   # client_cert_shim.c
    fi
    if ((${#pkgs[@]})); then
        ((EUID == 0)) || die "missing packages: ${pkgs[*]} (install them or run as root)"
        log "installing: ${pkgs[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${pkgs[@]}" >&2 \
            || { apt-get update -q >&2 && apt-get install -y -q "${pkgs[@]}" >&2; } \
            || die "apt-get install ${pkgs[*]} failed"
    fi
    # python3-grpcio is only for the functional gRPC check; without it the
    # check is skipped, not the benchmark.
    if ! $PY -c 'import grpc' 2>/dev/null && ((EUID == 0)); then
        apt-get install -y -q python3-grpcio >&2 || log "warning: python3-grpcio unavailable"
    fi
}

# ------------------------------------------------------------------ processes
WORK=$(mktemp -d /tmp/sidecar-bench.XXXXXX)
chmod 755 "$WORK"   # nginx workers may run as nobody
PIDS=()             # every background process this script started

# stop_tree PID: TERM the process, then KILL it and every descendant left.
stop_tree() {
    local pid=$1 all i p
    kill -0 "$pid" 2>/dev/null || return 0
    all=$($PY "$LIB" tree "$pid" 2>/dev/null)
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 30; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    for p in $all; do kill -KILL "$p" 2>/dev/null; done
    wait "$pid" 2>/dev/null
    local keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    set +u
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do stop_tree "${PIDS[i]}"; done
    if ((KEEP_WORK)); then log "work directory kept: $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start_bg NAME CMD...: runs CMD in the background, output to $WORK/NAME.log;
# sets LAST_PID.
start_bg() {
    local name=$1; shift
    "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

# why FILE...: the most telling lines of a process's log, on one line.
why() {
    local lines
    lines=$(cat "$@" 2>/dev/null | grep -E 'ALERT|ERROR|FATAL|emerg|crit|error|fatal' | head -n 2)
    [[ -n $lines ]] || lines=$(cat "$@" 2>/dev/null | tail -n 2)
    echo "$lines" | tr '\n' ' ' | sed 's/ *$//' | cut -c1-240
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_port PORT PID SECONDS: until PORT accepts, PID dies, or time is up.
wait_port() {
    local port=$1 pid=$2 i
    for ((i = 0; i < $3 * 20; i++)); do
        port_open "$port" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.05
    done
    return 1
}

# http_status PORT PATH: status code of one HTTP/1.1 GET (bash only, 2 s max).
http_status() {
    timeout 2 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n" "$2" >&3
        read -r _ code _ <&3 && echo "$code"' _ "$1" "$2" 2>/dev/null
}

# render TEMPLATE OUT: @VAR@ -> value for the ports and paths below. The
# "# BEGIN tls" .. "# END tls" block (an mTLS listener) is kept only when a TLS
# load will run against this proxy (PORT_TLS set) and the certificates exist.
render() {
    local keep_tls=0
    [[ -n ${PORT_TLS:-} && -z $TLS_REASON ]] && keep_tls=1
    sed -e "s|@WORK@|$WORK|g" \
        -e "s|@PORT_GRPC@|$PORT_GRPC|g" -e "s|@PORT_HTTP@|$PORT_HTTP|g" \
        -e "s|@PORT_ADMIN@|${PORT_ADMIN:-0}|g" -e "s|@PORT_TLS@|${PORT_TLS:-0}|g" \
        -e "s|@BACKEND_GRPC@|$BACKEND_GRPC|g" -e "s|@BACKEND_HTTP@|$BACKEND_HTTP|g" \
        -e "s|@TLS_CERT@|$TLS_DIR/bench.pem|g" -e "s|@TLS_KEY@|$TLS_DIR/bench.key|g" \
        -e "s|@TLS_CERT_KEY@|$TLS_DIR/bench-with-key.pem|g" -e "s|@TLS_CA@|$TLS_DIR/ca-bundle.pem|g" \
        "$1" >"$2"
    ((keep_tls)) || sed -i '/^# BEGIN tls/,/^# END tls/d' "$2"
}

# ------------------------------------------------------------------ ports
BACKEND_GRPC=$((PORT_BASE + 1))
BACKEND_HTTP=$((PORT_BASE + 2))
declare -A PORTS_GRPC=([direct]=$BACKEND_GRPC [sidecar]=$((PORT_BASE + 10)) [sidecar_policies]=$((PORT_BASE + 12))
    [haproxy]=$((PORT_BASE + 20)) [nghttpx]=$((PORT_BASE + 30)) [nginx]=$((PORT_BASE + 40)) [floor]=$((PORT_BASE + 44))
    [sidecar_log]=$((PORT_BASE + 50)) [sidecar_trace]=$((PORT_BASE + 52)) [sidecar_trace1]=$((PORT_BASE + 54)))
declare -A PORTS_HTTP=([direct]=$BACKEND_HTTP [sidecar]=$((PORT_BASE + 11)) [sidecar_policies]=$((PORT_BASE + 13))
    [haproxy]=$((PORT_BASE + 21)) [nghttpx]=$((PORT_BASE + 31)) [nginx]=$((PORT_BASE + 41)) [floor]=$((PORT_BASE + 45))
    [sidecar_log]=$((PORT_BASE + 51)) [sidecar_trace]=$((PORT_BASE + 53)) [sidecar_trace1]=$((PORT_BASE + 55)))
# mTLS listeners (TLS_PROXIES): sidecar inbound, HAProxy and nghttpx frontends.
declare -A PORTS_TLS=([sidecar]=$((PORT_BASE + 14)) [haproxy]=$((PORT_BASE + 22)) [nghttpx]=$((PORT_BASE + 32)))
SIDECAR_ADMIN=$((PORT_BASE + 19))
SIDECAR_POLICIES_ADMIN=$((PORT_BASE + 18))
SIDECAR_OBS_ADMIN=$((PORT_BASE + 56))   # one at a time

check_ports_free() {
    local p
    for p in $BACKEND_GRPC $BACKEND_HTTP $SIDECAR_ADMIN $SIDECAR_POLICIES_ADMIN $SIDECAR_OBS_ADMIN "${PORTS_GRPC[@]}" "${PORTS_HTTP[@]}" "${PORTS_TLS[@]}"; do
        port_open "$p" && die "port $p is in use (set BENCH_PORT_BASE)"
    done
    return 0
}

# ------------------------------------------------------------------ backends
start_backends() {
    log "building the backends"
    local b
    declare -A libs=([grpc_backend]="-lnghttp2 -lev" [http1_backend]="")
    for b in grpc_backend http1_backend; do
        # shellcheck disable=SC2086 # the library list splits on purpose
        cc -O2 -Wall -Wextra -o "$WORK/$b" "$HERE/$b.c" ${libs[$b]} 2>"$WORK/$b.build.log" \
            || die "$b build failed: $(cat "$WORK/$b.build.log")"
    done

    start_bg grpc_backend "${ON_LOAD_CORE[@]}" "$WORK/grpc_backend" "$BACKEND_GRPC" 16
    wait_port "$BACKEND_GRPC" "$LAST_PID" 5 || die "grpc_backend did not start: $(cat "$WORK/grpc_backend.log")"

    if [[ $HTTP_BACKEND == nginx ]]; then
        PORT_GRPC=0 PORT_HTTP=0
        mkdir -p "$WORK/nginx-backend-tmp"
        render "$HERE/conf/nginx-backend.conf.in" "$WORK/nginx-backend.conf"
        start_bg nginx_backend "${ON_LOAD_CORE[@]}" nginx -p "$WORK" -c "$WORK/nginx-backend.conf"
    else
        start_bg http1_backend "${ON_LOAD_CORE[@]}" "$WORK/http1_backend" "$BACKEND_HTTP" 64
    fi
    wait_port "$BACKEND_HTTP" "$LAST_PID" 5 || die "HTTP/1 backend did not start: $(tail -n 3 "$WORK"/*backend.log)"

    # gRPC request body: one length-prefixed message (flag 0, 4-byte length)
    # holding protobuf field 1 = "hello-sidecar!" (16 bytes).
    printf '\x00\x00\x00\x00\x10\x0a\x0ehello-sidecar!' >"$WORK/grpc-request.bin"
}

# ------------------------------------------------------------------ TLS
# Certificates for the tls-* loads, made fresh in the work directory: a CA,
# the server certificate "bench" (every proxy's TLS listener) and the client
# certificate "client" (every load tool), ECDSA P-256, by certs/make-certs.sh.
# TLS_REASON is non-empty when there are none (then every tls-* load is n/a).
# SHIM is the LD_PRELOAD library that gives h2load the client certificate
# (client_cert_shim.c); SHIM_REASON says why it is missing.
TLS_DIR="$WORK/certs"
TLS_REASON="no TLS load selected"
SHIM="$WORK/client_cert_shim.so"
SHIM_REASON="no TLS load selected"
# PACED is tests/bench/paced_client.c (evenly paced arrivals, TLS or not);
# PACED_REASON says why it is missing.
PACED="$WORK/paced_client"
PACED_REASON="no TLS load selected"
# HSCLIENT is tests/bench/handshake_client.c (full handshakes the server
# provably finished); HSCLIENT_REASON says why it is missing.
HSCLIENT="$WORK/handshake_client"
HSCLIENT_REASON="no TLS load selected"
setup_tls() {
    ((TLS_WANTED)) || return 0
    log "making certificates in $TLS_DIR (certs/make-certs.sh: CA, bench, client)"
    if ! "$ROOT/certs/make-certs.sh" --out "$TLS_DIR" bench client >"$WORK/make-certs.log" 2>&1; then
        TLS_REASON="certs/make-certs.sh failed: $(tail -n 2 "$WORK/make-certs.log" | tr '\n' ' ' | cut -c1-200)"
        log "warning: $TLS_REASON"
        return 0
    fi
    # HAProxy's `crt` takes the certificate and its key in one file.
    cat "$TLS_DIR/bench.pem" "$TLS_DIR/bench.key" >"$TLS_DIR/bench-with-key.pem"
    chmod 600 "$TLS_DIR/bench-with-key.pem"
    TLS_REASON=""
    if cc -O2 -Wall -Wextra -shared -fPIC -o "$SHIM" "$HERE/client_cert_shim.c" -ldl -lssl -lcrypto \
        2>"$WORK/client_cert_shim.build.log"; then
        SHIM_REASON=""
    else
        SHIM_REASON="client_cert_shim.c build failed: $(head -n 2 "$WORK/client_cert_shim.build.log" | tr '\n' ' ' | cut -c1-200)"
        log "warning: $SHIM_REASON"
    fi
    if cc -O2 -Wall -Wextra -o "$HSCLIENT" "$HERE/handshake_client.c" -lssl -lcrypto 2>"$WORK/handshake_client.build.log"; then
        HSCLIENT_REASON=""
    else
        HSCLIENT_REASON="handshake_client.c build failed: $(head -n 2 "$WORK/handshake_client.build.log" | tr '\n' ' ' | cut -c1-200)"
        log "warning: $HSCLIENT_REASON"
    fi
    if cc -O2 -Wall -Wextra -o "$PACED" "$HERE/paced_client.c" -lssl -lcrypto 2>"$WORK/paced_client.build.log"; then
        PACED_REASON=""
    else
        PACED_REASON="paced_client.c build failed: $(head -n 2 "$WORK/paced_client.build.log" | tr '\n' ' ' | cut -c1-200)"
        log "warning: $PACED_REASON"
    fi
}

# check_tls: one mTLS GET through the proxy's TLS listener must answer 200.
check_tls() {
    timeout 10 "$PY" "$LIB" check-https "https://127.0.0.1:$PORT_TLS/" \
        "$TLS_DIR/ca-bundle.pem" "$TLS_DIR/client.pem" "$TLS_DIR/client.key" 2>&1
}

# ------------------------------------------------------------------ proxies
# start_<proxy>: starts the proxy pinned to PROXY_CORE with PORT_GRPC and
# PORT_HTTP set; sets PROXY_PID, and NO_GRPC / NO_HTTP to a reason when a
# protocol is not supported. Returns non-zero with REASON set on failure.

start_sidecar() { start_sidecar_with sidecar "$SIDECAR_ADMIN"; }
# The same binary with every resilience policy enabled (what the policies cost:
# CPU per request is to stay within 10% of the run without them).
start_sidecar_policies() { start_sidecar_with sidecar-policies "$SIDECAR_POLICIES_ADMIN"; }
# The plain configuration plus one observability section (OBS_PROXIES). The
# access log goes to a real file in the work directory, written by the
# sidecar's own writer thread (on the proxy core, so in its CPU); spans go
# by OTLP/HTTP to the HTTP/1.1 backend, which reads each POST and answers
# 200 like a collector (on the load core).
start_sidecar_obs() {
    local conf="$WORK/sidecar-$1.yaml.in"
    cp "$HERE/conf/sidecar.yaml.in" "$conf"
    case $1 in
        log) echo "access_log: {destination: file, path: \"$WORK/access.log\", select: all}" >>"$conf" ;;
        trace) echo "tracing: {endpoint: \"http://127.0.0.1:$BACKEND_HTTP/v1/traces\", sample_ratio: 1}" >>"$conf" ;;
        trace1) echo "tracing: {endpoint: \"http://127.0.0.1:$BACKEND_HTTP/v1/traces\", sample_ratio: 0.01}" >>"$conf" ;;
    esac
    start_sidecar_with "$conf" "$SIDECAR_OBS_ADMIN"
}
start_sidecar_log() { rm -f "$WORK/access.log"; start_sidecar_obs log; }
start_sidecar_trace() { start_sidecar_obs trace; }
start_sidecar_trace1() { start_sidecar_obs trace1; }

start_sidecar_with() {
    local conf=$1
    [[ -e $SIDECAR_BIN ]] || { REASON="$SIDECAR_BIN not built"; return 1; }
    [[ -x $SIDECAR_BIN ]] || { REASON="$SIDECAR_BIN not executable"; return 1; }
    PORT_ADMIN=$2
    [[ $conf == /* ]] || conf="$HERE/conf/$conf.yaml.in"   # a name in conf/, or a rendered variant's path
    render "$conf" "$WORK/sidecar.yaml"
    start_bg sidecar "${ON_PROXY_CORE[@]}" "$SIDECAR_BIN" --config "$WORK/sidecar.yaml"
    PROXY_PID=$LAST_PID
    local i code=""
    for ((i = 0; i < 200; i++)); do          # 10 s
        if ! kill -0 "$PROXY_PID" 2>/dev/null; then
            wait "$PROXY_PID"; local st=$?
            REASON="exited with status $st: $(why "$WORK/sidecar.log")"
            # --check may say more about a config problem; bounded in case it does not exist yet.
            local chk
            chk=$(timeout -k 1 5 "$SIDECAR_BIN" --config "$WORK/sidecar.yaml" --check 2>&1 | head -n 5 | tr '\n' ' ' | cut -c1-300)
            [[ -n $chk ]] && REASON+="; --check: $chk"
            return 1
        fi
        code=$(http_status "$PORT_ADMIN" /ready)
        if [[ $code == 200 ]]; then
            [[ -z ${PORT_TLS:-} || -n $TLS_REASON ]] && return 0
            wait_port "$PORT_TLS" "$PROXY_PID" 5 && return 0
            REASON="ready, but the inbound mTLS listener 127.0.0.1:$PORT_TLS did not accept: $(why "$WORK/sidecar.log")"
            return 1
        fi
        sleep 0.05
    done
    REASON="admin /ready on 127.0.0.1:$PORT_ADMIN did not answer 200 within 10 s (last: ${code:-no answer})"
    return 1
}

# wait_tls_port: when this proxy got an mTLS listener, until it accepts.
wait_tls_port() {
    [[ -z ${PORT_TLS:-} || -n $TLS_REASON ]] && return 0
    wait_port "$PORT_TLS" "$PROXY_PID" 5
}

start_haproxy() {
    render "$HERE/conf/haproxy.cfg.in" "$WORK/haproxy.cfg"
    local out
    out=$(haproxy -c -f "$WORK/haproxy.cfg" 2>&1) || { REASON="config check: $(echo "$out" | tail -n 3 | tr '\n' ' ')"; return 1; }
    start_bg haproxy "${ON_PROXY_CORE[@]}" haproxy -db -f "$WORK/haproxy.cfg"
    PROXY_PID=$LAST_PID
    wait_port "$PORT_GRPC" "$PROXY_PID" 5 && wait_port "$PORT_HTTP" "$PROXY_PID" 5 \
        || { REASON="did not listen: $(why "$WORK/haproxy.log")"; return 1; }
    wait_tls_port || { REASON="mTLS frontend did not listen: $(why "$WORK/haproxy.log")"; return 1; }
}

# The L4 floor: HAProxy in mode tcp (conf/haproxy-tcp.cfg.in), bytes copied
# between connections, nothing parsed. Its row is the "floor" proxy; the report
# prints every proxy's CPU per request over it.
start_floor() {
    command -v haproxy >/dev/null || { REASON="haproxy not installed"; return 1; }
    render "$HERE/conf/haproxy-tcp.cfg.in" "$WORK/haproxy-tcp.cfg"
    local out
    out=$(haproxy -c -f "$WORK/haproxy-tcp.cfg" 2>&1) || { REASON="config check: $(echo "$out" | tail -n 3 | tr '\n' ' ')"; return 1; }
    start_bg haproxy-tcp "${ON_PROXY_CORE[@]}" haproxy -db -f "$WORK/haproxy-tcp.cfg"
    PROXY_PID=$LAST_PID
    wait_port "$PORT_GRPC" "$PROXY_PID" 5 && wait_port "$PORT_HTTP" "$PROXY_PID" 5 \
        || { REASON="did not listen: $(why "$WORK/haproxy-tcp.log")"; return 1; }
}

start_nghttpx() {
    render "$HERE/conf/nghttpx.conf.in" "$WORK/nghttpx.conf"
    start_bg nghttpx "${ON_PROXY_CORE[@]}" nghttpx --conf="$WORK/nghttpx.conf"
    PROXY_PID=$LAST_PID
    wait_port "$PORT_GRPC" "$PROXY_PID" 5 && wait_port "$PORT_HTTP" "$PROXY_PID" 5 \
        || { REASON="did not listen: $(why "$WORK/nghttpx.errorlog" "$WORK/nghttpx.log")"; return 1; }
    wait_tls_port || { REASON="mTLS frontend did not listen: $(why "$WORK/nghttpx.errorlog" "$WORK/nghttpx.log")"; return 1; }
}

nginx_has_grpc() {
    mkdir -p "$WORK/nginx-probe"
    cat >"$WORK/nginx-probe/nginx.conf" <<EOF
pid $WORK/nginx-probe/nginx.pid;
error_log $WORK/nginx-probe/error.log;
events {}
http { server { listen 127.0.0.1:1 http2; location / { grpc_pass grpc://127.0.0.1:1; } } }
EOF
    nginx -t -p "$WORK/nginx-probe" -c "$WORK/nginx-probe/nginx.conf" >/dev/null 2>&1
}

start_nginx() {
    mkdir -p "$WORK/nginx-proxy-tmp"
    render "$HERE/conf/nginx-proxy.conf.in" "$WORK/nginx-proxy.conf"
    if ! nginx_has_grpc; then
        NO_GRPC="this nginx has no grpc module"
        sed -i '/^# BEGIN grpc/,/^# END grpc/d' "$WORK/nginx-proxy.conf"
    fi
    local out
    out=$(nginx -t -p "$WORK" -c "$WORK/nginx-proxy.conf" 2>&1) \
        || { REASON="config check: $(echo "$out" | tail -n 3 | tr '\n' ' ')"; return 1; }
    start_bg nginx "${ON_PROXY_CORE[@]}" nginx -p "$WORK" -c "$WORK/nginx-proxy.conf"
    PROXY_PID=$LAST_PID
    wait_port "$PORT_HTTP" "$PROXY_PID" 5 || { REASON="did not listen: $(why "$WORK/nginx.log" "$WORK/nginx-proxy.error.log")"; return 1; }
    [[ -n ${NO_GRPC:-} ]] || wait_port "$PORT_GRPC" "$PROXY_PID" 5 || { REASON="gRPC port did not listen"; return 1; }
}

# ------------------------------------------------------------------ loads
# load_cmd LOAD SECONDS LOGFILE: sets CMD (the load tool's argv), PROTO
# (grpc|http1|tls) and PARSER (h2load|wrk|s_time) for one run against
# PORT_GRPC/PORT_HTTP/PORT_TLS.
#
# tls-resumed is two runs: itself and tls-resumed-plain, the same connection
# + HTTP/1.0 GET without TLS (benchlib.py conn-get), so that the GET can be
# taken out of the figure. tls-persistent is six runs: itself
# (mTLS, fixed rate), tls-plain (its plaintext twin: same tool, rate and
# connections against the proxy's plaintext HTTP/1 listener), tls-paced and
# tls-paced-plain (the same rate and connections from paced_client.c, whose
# one schedule gives TLS and plaintext the same arrival pattern: h2load's
# per-connection timers fire together for plaintext connections, which come
# up microseconds apart, and apart for mTLS ones, so its twin pair also
# differs in how many requests the proxy reads per wake-up), tls-persistent-max
# (mTLS, closed loop, as fast as the load core goes) and tls-plain-max (its
# plaintext twin paced at the rate tls-persistent-max reached, TLS_MAX_RPS),
# so that TLS and plaintext CPU per request compare at equal request rates.
TLS_MAX_CONNS=16
TLS_MAX_RPS=""
load_cmd() {
    local load=$1 secs=$2 logf=$3
    local grpc_url="http://127.0.0.1:$PORT_GRPC/bench.Bench/Echo"
    local grpc_args=(-d "$WORK/grpc-request.bin" -H 'content-type: application/grpc' -H 'te: trailers')
    local s_time=(openssl s_time -connect "127.0.0.1:${PORT_TLS:-0}" -cert "$TLS_DIR/client.pem"
                  -key "$TLS_DIR/client.key" -CAfile "$TLS_DIR/ca-bundle.pem" -time "$secs")
    # h2load has no client-certificate option: the shim loads it (client_cert_shim.c).
    local with_cert=(env "LD_PRELOAD=$SHIM" "BENCH_CLIENT_CERT=$TLS_DIR/client.pem"
                     "BENCH_CLIENT_KEY=$TLS_DIR/client.key")
    case $load in
        grpc)       # gRPC unary over h2c at saturation: 8 connections x 16 streams
            PROTO=grpc PARSER=h2load
            CMD=(h2load -c 8 -m 16 -D "$secs" "${grpc_args[@]}" --log-file="$logf" "$grpc_url") ;;
        http1)      # HTTP/1.1 keep-alive at saturation: 16 connections
            PROTO=http1 PARSER=wrk
            CMD=(wrk -t1 -c16 -d"${secs}s" --latency "http://127.0.0.1:$PORT_HTTP/") ;;
        grpc-lat)   # gRPC unary at a fixed rate well below saturation
            PROTO=grpc PARSER=h2load
            CMD=(h2load -c "$LAT_CONNS" -m 16 --rps "$LAT_RPS" -D "$secs" "${grpc_args[@]}"
                 --log-file="$logf" "$grpc_url") ;;
        http1-lat)  # HTTP/1.1 keep-alive at a fixed rate (no pipelining)
            PROTO=http1 PARSER=h2load
            CMD=(h2load --h1 -c "$LAT_CONNS" -m 1 --rps "$LAT_RPS" -D "$secs"
                 --log-file="$logf" "http://127.0.0.1:$PORT_HTTP/") ;;
        tls-full)   # full mTLS handshakes, one per connection, no request, each
            # counted once the server's first session ticket arrived (it is
            # sent after the server verified the client's flight)
            PROTO=tls PARSER=s_time S_TIME_MODE=confirmed
            CMD=("$HSCLIENT" -t "$secs" "$TLS_DIR/client.pem" "$TLS_DIR/client.key"
                 "$TLS_DIR/ca-bundle.pem" 127.0.0.1 "${PORT_TLS:-0}") ;;
        tls-full-stime)  # the same with openssl s_time -new, which closes before the
            # server has read its last flight: a server may skip verifying the client
            PROTO=tls PARSER=s_time S_TIME_MODE=new
            CMD=("${s_time[@]}" -new) ;;
        tls-resumed)  # resumed mTLS handshakes (TLS 1.3 PSK + ECDHE) plus one GET each:
            # s_time -reuse only gets a TLS 1.3 ticket by reading after the
            # handshake, which it does only with -www (without it every
            # connection is a full handshake; the parser counts and reports that).
            PROTO=tls PARSER=s_time S_TIME_MODE=reuse
            CMD=("${s_time[@]}" -reuse -www /) ;;
        tls-resumed-plain)  # its plaintext twin: connection + the same GET, one at a time
            PROTO=http1 PARSER=s_time S_TIME_MODE=plain
            CMD=("$PY" "$LIB" conn-get "$PORT_HTTP" "$secs") ;;
        tls-persistent)  # HTTP/1.1 requests on kept-alive mTLS connections, fixed rate
            PROTO=tls PARSER=h2load
            CMD=("${with_cert[@]}" h2load --h1 -c "$LAT_CONNS" -m 1 --rps "$LAT_RPS" -D "$secs"
                 --log-file="$logf" "https://127.0.0.1:${PORT_TLS:-0}/") ;;
        tls-plain)  # its plaintext twin (= http1-lat, measured next to it)
            PROTO=http1 PARSER=h2load
            CMD=(h2load --h1 -c "$LAT_CONNS" -m 1 --rps "$LAT_RPS" -D "$secs"
                 --log-file="$logf" "http://127.0.0.1:$PORT_HTTP/") ;;
        tls-paced)  # mTLS keep-alive, one request every 1/rate s over all connections
            PROTO=tls PARSER=h2load
            CMD=("$PACED" -t "$TLS_DIR/client.pem" "$TLS_DIR/client.key" "$TLS_DIR/ca-bundle.pem"
                 -c "$LAT_CONNS" -r "$((LAT_CONNS * LAT_RPS))" -D "$secs" -l "$logf" 127.0.0.1 "${PORT_TLS:-0}" /) ;;
        tls-paced-plain)  # its plaintext twin: the same schedule
            PROTO=http1 PARSER=h2load
            CMD=("$PACED" -c "$LAT_CONNS" -r "$((LAT_CONNS * LAT_RPS))" -D "$secs" -l "$logf"
                 127.0.0.1 "$PORT_HTTP" /) ;;
        tls-persistent-max)  # mTLS, closed loop: as fast as the load core can drive it
            PROTO=tls PARSER=h2load
            CMD=("${with_cert[@]}" h2load --h1 -c "$TLS_MAX_CONNS" -m 1 -D "$secs"
                 --log-file="$logf" "https://127.0.0.1:${PORT_TLS:-0}/") ;;
        tls-plain-max)  # plaintext twin, paced at the rate tls-persistent-max reached
            PROTO=http1 PARSER=h2load
            local per_conn
            per_conn=$(awk -v r="${TLS_MAX_RPS:-0}" -v c="$TLS_MAX_CONNS" 'BEGIN{printf "%.1f", r / c}')
            CMD=(h2load --h1 -c "$TLS_MAX_CONNS" -m 1 --rps "$per_conn" -D "$secs"
                 --log-file="$logf" "http://127.0.0.1:$PORT_HTTP/") ;;
        *) die "unknown load $load" ;;
    esac
}

load_label() {
    case $1 in
        grpc) echo "grpc unary h2c (h2load c8 m16)" ;;
        http1) echo "http1 keep-alive (wrk c16)" ;;
        grpc-lat) echo "grpc unary @$((LAT_CONNS * LAT_RPS)) rps" ;;
        http1-lat) echo "http1 @$((LAT_CONNS * LAT_RPS)) rps (h2load --h1)" ;;
        tls-full) echo "mTLS full handshake, server-confirmed (handshake_client)" ;;
        tls-full-stime) echo "mTLS full handshake (s_time -new)" ;;
        tls-resumed) echo "mTLS resumed handshake + 1 GET (s_time -reuse -www /)" ;;
        tls-resumed-plain) echo "plaintext twin: connection + 1 GET (HTTP/1.0)" ;;
        tls-persistent) echo "mTLS keep-alive http1 @$((LAT_CONNS * LAT_RPS)) rps (h2load --h1 c$LAT_CONNS)" ;;
        tls-plain) echo "plaintext twin @$((LAT_CONNS * LAT_RPS)) rps (h2load --h1 c$LAT_CONNS)" ;;
        tls-paced) echo "mTLS keep-alive http1 @$((LAT_CONNS * LAT_RPS)) rps, evenly paced (paced_client c$LAT_CONNS)" ;;
        tls-paced-plain) echo "plaintext twin @$((LAT_CONNS * LAT_RPS)) rps, evenly paced (paced_client c$LAT_CONNS)" ;;
        tls-persistent-max) echo "mTLS keep-alive http1, max rate (h2load --h1 c$TLS_MAX_CONNS)" ;;
        tls-plain-max) echo "plaintext twin at the mTLS max rate (h2load --h1 c$TLS_MAX_CONNS)" ;;
        *) echo "$1" ;;
    esac
}

RESULTS="$WORK/results.tsv"
: >"$RESULTS"
# row LOAD PROXY RPS CPU_US P50 P99 RSS_IDLE RSS_LOAD CORE0 ERRORS NOTE OTHER0 KEY WAKEUPS
# (KEY: the load's name in load_cmd, for the report's TLS section); row adds
# the round (ROUND, 1..REPEAT) as the last column.
ROUND=1
row() { local IFS=$'\t'; echo "$*"$'\t'"$ROUND" >>"$RESULTS"; }
na_row() { row "$(load_label "$1")" "$2" "" "" "" "" "" "" "" "" "$3" "" "$1" ""; }
TLS_NEGOTIATED="$WORK/tls-negotiated.txt"
: >"$TLS_NEGOTIATED"

# run_load LOAD PROXY PID RSS_IDLE: warm-up, then the measured run.
run_load() {
    local load=$1 proxy=$2 pid=$3 rss_idle=$4
    # Raw tool output of every round is kept apart (--keep-work).
    local raw="$WORK/$proxy.$load" rtag=""
    ((REPEAT > 1)) && rtag=".r$ROUND" raw+=".r$ROUND"
    load_cmd "$load" "$WARM" "$raw.warm.reqlog"
    log "$proxy / $load: warm-up ${WARM}s"
    "${ON_LOAD_CORE[@]}" timeout -k 5 "$LOAD_TIMEOUT" "${CMD[@]}" >"$raw.warm.out" 2>&1
    rm -f "$raw.warm.reqlog"

    load_cmd "$load" "$DURATION" "$raw.reqlog"
    local c0="" c1="" w0="" w1="" t0 t1 sampler="" i
    if [[ -n $pid ]]; then
        rm -f "$raw.rss"
        start_bg "$proxy.$load$rtag.sampler" "${ON_LOAD_CORE[@]}" "$PY" "$LIB" sample "$pid" "$raw.rss" 0.1 "$LOAD_TIMEOUT"
        sampler=$LAST_PID
        # Let the sampler start (its first reading is the idle-before-load value)
        # so that its own start-up does not land inside the measured run.
        for ((i = 0; i < 40; i++)); do [[ -s $raw.rss ]] && break; sleep 0.05; done
        c0=$($PY "$LIB" cpu "$pid")
        w0=$($PY "$LIB" wakeups "$pid")
    fi
    local k0 k1
    k0=$(core_ticks "$PROXY_CORE")
    log "$proxy / $load: measuring ${DURATION}s: ${CMD[*]}"
    t0=$(date +%s.%N)
    "${ON_LOAD_CORE[@]}" timeout -k 5 "$LOAD_TIMEOUT" "${CMD[@]}" >"$raw.out" 2>&1
    local rc=$?
    t1=$(date +%s.%N)
    k1=$(core_ticks "$PROXY_CORE")
    local rss_load="" cpu_us="" core0="" note="" other0="" wake=""
    if [[ -n $pid ]]; then
        c1=$($PY "$LIB" cpu "$pid")
        w1=$($PY "$LIB" wakeups "$pid")
        stop_tree "$sampler"
        rss_load=$(cat "$raw.rss" 2>/dev/null)
        kill -0 "$pid" 2>/dev/null || note="proxy exited during the load"
    fi
    ((rc == 124 || rc == 137)) && note="load tool timed out"
    local rps ok p50 p99 errors
    IFS=$'\t' read -r rps ok p50 p99 errors < <(
        case $PARSER in
            wrk) $PY "$LIB" wrk "$raw.out" ;;
            s_time) $PY "$LIB" s_time "$raw.out" "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')" "$S_TIME_MODE" ;;
            *) $PY "$LIB" h2load "$raw.out" "$raw.reqlog" ;;
        esac)
    local v
    for v in rps ok p50 p99 errors; do [[ ${!v} == - ]] && printf -v "$v" ''; done
    if [[ $load == tls-persistent* ]] && grep -q '^TLS Protocol' "$raw.out"; then
        # What was negotiated (the server picks the cipher), once per proxy.
        grep -q "^- $proxy:" "$TLS_NEGOTIATED" || echo "- $proxy: $(grep -E '^(TLS Protocol|Cipher|Server Temp Key|Application protocol):' "$raw.out" \
            | sed 's/^[^:]*: *//' | tr '\n' ',' | sed 's/,$//; s/,/, /g')" >>"$TLS_NEGOTIATED"
    fi
    rm -f "$raw.reqlog"
    if [[ -z $ok || $ok == 0 ]]; then
        note=${note:-"no successful requests (see $proxy.$load$rtag.out)"}
    elif [[ -n $pid ]]; then
        local hz; hz=$(getconf CLK_TCK)
        cpu_us=$(awk -v a="$c0" -v b="$c1" -v n="$ok" -v hz="$hz" 'BEGIN{printf "%.3f", (b-a)*1e6/hz/n}')
        wake=$(awk -v a="$w0" -v b="$w1" -v n="$ok" 'BEGIN{printf "%.3f", (b-a)/n}')
        core0=$(awk -v a="$c0" -v b="$c1" -v hz="$hz" -v t0="$t0" -v t1="$t1" 'BEGIN{printf "%.1f", (b-a)/hz/(t1-t0)*100}')
    fi
    # CPU that others (not the proxy) used on the proxy's core during the run:
    # other sessions, kernel threads, hypervisor steal. Reported when large.
    other0=$(awk -v k0="$k0" -v k1="$k1" -v a="${c0:-0}" -v b="${c1:-0}" 'BEGIN{
        split(k0, x, " "); split(k1, y, " "); tot = y[2] - x[2];
        if (tot > 0) printf "%.1f", ((y[1] - x[1]) - (b - a)) / tot * 100 }')
    local unit=req lat=", p50 ${p50:-?}µs p99 ${p99:-?}µs"
    [[ $PARSER == s_time ]] && unit=conn lat=""
    log "$proxy / $load: ${rps:-?} ${unit}s/s, ${ok:-?} ok, ${errors:-?} errors, CPU ${cpu_us:-—} µs/$unit$lat${note:+ ($note)}"
    if [[ -n $note && -z $rps ]]; then
        na_row "$load" "$proxy" "$note"
    else
        row "$(load_label "$load")" "$proxy" "$rps" "$cpu_us" "$p50" "$p99" "$rss_idle" "$rss_load" "$core0" "$errors" "" "$other0" "$load" "$wake"
        [[ -n $note ]] && log "warning: $proxy / $load: $note"
        [[ $load == tls-persistent-max && -n $ok && $ok != 0 ]] && TLS_MAX_RPS=$rps
    fi
}

# functional check of one protocol through the proxy; prints a reason on failure.
check_proto() {
    case $1 in
        grpc)
            if $PY -c 'import grpc' 2>/dev/null; then
                timeout 10 "$PY" "$LIB" check-grpc "127.0.0.1:$PORT_GRPC" /bench.Bench/Echo 2>&1
            else
                return 0   # no grpcio: the h2load run will show failures instead
            fi ;;
        http1) timeout 10 "$PY" "$LIB" check-http "http://127.0.0.1:$PORT_HTTP/" 2>&1 ;;
    esac
}

# proxy_runs PROXY: the runs (load_cmd names) of the selected loads for PROXY,
# in order: tls-persistent expands to its four runs; TLS loads are left out
# for proxies without an mTLS listener.
proxy_runs() {
    local l out=()
    for l in ${LOADS//,/ }; do
        if [[ $l == tls-* ]]; then
            in_list "$1" "$TLS_PROXIES" || continue
            [[ $l == tls-resumed ]] && { out+=(tls-resumed tls-resumed-plain); continue; }
            [[ $l == tls-persistent ]] && { out+=(tls-persistent tls-plain tls-paced tls-paced-plain tls-persistent-max tls-plain-max); continue; }
        fi
        out+=("$l")
    done
    echo "${out[@]}"
}

bench_proxy() {
    local proxy=$1
    PORT_GRPC=${PORTS_GRPC[$proxy]} PORT_HTTP=${PORTS_HTTP[$proxy]}
    PORT_TLS=""
    ((TLS_WANTED)) && in_list "$proxy" "$TLS_PROXIES" && PORT_TLS=${PORTS_TLS[$proxy]}
    PROXY_PID="" REASON="" NO_GRPC="" NO_HTTP="" TLS_MAX_RPS=""
    local rss_idle="" runs
    runs=$(proxy_runs "$proxy")
    if [[ $proxy != direct ]]; then
        log "starting $proxy"
        if ! "start_$proxy"; then
            echo "$proxy: n/a ($REASON)"
            log "$proxy: n/a ($REASON)"
            [[ -n $PROXY_PID ]] && stop_tree "$PROXY_PID"
            local l
            for l in $runs; do na_row "$l" "$proxy" "$REASON"; done
            return 0
        fi
        sleep 0.5   # let it settle before the idle reading
        rss_idle=$($PY "$LIB" rss "$PROXY_PID")
        log "$proxy: pid $PROXY_PID, idle RSS ${rss_idle} KiB (process tree)"
    fi
    declare -A bad=()
    [[ -n $NO_GRPC ]] && bad[grpc]=$NO_GRPC
    [[ -n $NO_HTTP ]] && bad[http1]=$NO_HTTP
    local proto msg
    for proto in grpc http1; do
        [[ -n ${bad[$proto]:-} ]] && continue
        if ! msg=$(check_proto "$proto"); then
            bad[$proto]="functional $proto check failed: $(echo "$msg" | tail -n 2 | tr '\n' ' ' | cut -c1-200)"
            log "$proxy: ${bad[$proto]}"
            [[ $proxy == sidecar ]] && echo "sidecar: n/a for $proto (${bad[$proto]})"
        fi
    done
    if [[ -n $PORT_TLS ]]; then
        if [[ -n $TLS_REASON ]]; then
            bad[tls]=$TLS_REASON
        elif ! msg=$(check_tls); then
            bad[tls]="functional mTLS check failed: $(echo "$msg" | tail -n 2 | tr '\n' ' ' | cut -c1-200)"
            log "$proxy: ${bad[tls]}"
            [[ $proxy == sidecar ]] && echo "sidecar: n/a for tls (${bad[tls]})"
        fi
    fi
    local load
    for load in $runs; do
        load_cmd "$load" 1 /dev/null
        if [[ -n ${bad[$PROTO]:-} ]]; then
            na_row "$load" "$proxy" "${bad[$PROTO]}"
            continue
        fi
        case $load in
            tls-plain*|tls-resumed-plain)   # a twin means nothing without its TLS run
                if [[ -n ${bad[tls]:-} ]]; then na_row "$load" "$proxy" "${bad[tls]}"; continue; fi ;;&
            tls-full)
                if [[ -n $HSCLIENT_REASON ]]; then na_row "$load" "$proxy" "$HSCLIENT_REASON"; continue; fi ;;
            tls-paced*)
                if [[ -n $PACED_REASON ]]; then na_row "$load" "$proxy" "$PACED_REASON"; continue; fi ;;&
            tls-paced-plain)
                if [[ -n ${bad[tls]:-} ]]; then na_row "$load" "$proxy" "${bad[tls]}"; continue; fi ;;
            tls-persistent*|tls-plain*)
                if [[ -n $SHIM_REASON ]]; then na_row "$load" "$proxy" "$SHIM_REASON"; continue; fi ;;&
            tls-plain-max)
                if [[ -z $TLS_MAX_RPS ]]; then na_row "$load" "$proxy" "tls-persistent-max measured nothing to pace at"; continue; fi ;;
        esac
        if [[ -n $PROXY_PID ]] && ! kill -0 "$PROXY_PID" 2>/dev/null; then
            na_row "$load" "$proxy" "proxy no longer running"
            continue
        fi
        run_load "$load" "$proxy" "$PROXY_PID" "$rss_idle"
    done
    [[ -n $PROXY_PID ]] && stop_tree "$PROXY_PID"
    return 0
}

# ------------------------------------------------------------------ main
ensure_tools
check_ports_free
start_backends
setup_tls

# Is the machine quiet? Other work on either core skews every figure.
measure_quiet() {
    local a0 t0 a1 u0 b0 t1 b1 u1
    read -r a0 t0 < <(core_ticks "$PROXY_CORE"); read -r a1 u0 < <(core_ticks "$LOAD_CORE")
    sleep 1
    read -r b0 t1 < <(core_ticks "$PROXY_CORE"); read -r b1 u1 < <(core_ticks "$LOAD_CORE")
    BUSY0=$(( (b0 - a0) * 100 / (t1 - t0 > 0 ? t1 - t0 : 1) ))
    BUSY1=$(( (b1 - a1) * 100 / (u1 - u0 > 0 ? u1 - u0 : 1) ))
}
measure_quiet
if ((WAIT_QUIET > 0 && (BUSY0 > 5 || BUSY1 > 5))); then
    log "waiting up to ${WAIT_QUIET}s for idle cores (now ${BUSY0}% / ${BUSY1}% busy)"
    end=$((SECONDS + WAIT_QUIET))
    while ((SECONDS < end)); do
        measure_quiet
        ((BUSY0 <= 5 && BUSY1 <= 5)) && break
    done
fi
QUIET="core $PROXY_CORE ${BUSY0}% busy, core $LOAD_CORE ${BUSY1}% busy in the second before the run; load average $(cut -d' ' -f1-3 /proc/loadavg)"
if ((BUSY0 > 5 || BUSY1 > 5)); then
    log "warning: the machine is not idle ($QUIET): figures will be noisy"
    QUIET="NOT IDLE: $QUIET"
fi

META="$WORK/meta.md"
{
    echo "# Sidecar benchmark, $(date '+%Y-%m-%d %H:%M:%S %Z')"
    echo
    echo "- machine: $(uname -srm), $NCPU cores ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo))"
    echo "- before the run: $QUIET"
    echo "- layout: proxy (1 worker/thread) on core $PROXY_CORE; backends, load generators and samplers on core $LOAD_CORE"
    echo "- mode: $( ((QUICK)) && echo quick || echo full), ${DURATION}s per measured load after ${WARM}s warm-up; fixed-rate loads: $LAT_CONNS connections x $LAT_RPS rps"
    echo "- backends (core $LOAD_CORE): gRPC tests/bench/grpc_backend.c (h2c; 200, one 21-byte framed message, trailers grpc-status: 0); HTTP/1.1 $( [[ $HTTP_BACKEND == nginx ]] && echo "nginx (return 200, 66-byte body)" || echo "tests/bench/http1_backend.c (64-byte body)")"
    echo "- versions: $(haproxy -v 2>/dev/null | head -n1 | awk '{print "haproxy", $3}'), $(nghttpx --version 2>/dev/null | head -n1), $(nginx -v 2>&1 | sed 's|nginx version: ||'), $(h2load --version 2>/dev/null | head -n1), $(wrk -v 2>&1 | head -n1 | awk '{print "wrk", $2}')"
    if [[ -x $SIDECAR_BIN ]]; then
        echo "- sidecar: $SIDECAR_BIN ($(stat -c '%s bytes, built %y' "$SIDECAR_BIN" | cut -d. -f1))"
    else
        echo "- sidecar: $SIDECAR_BIN (absent)"
    fi
    echo "- CPU µs/req: utime+stime of the proxy's process tree (/proc/PID/stat, $(getconf CLK_TCK) ticks/s) over the measured run / 2xx responses; proxy core %: the same CPU time / wall time"
    echo "- p50/p99: per-request times from h2load --log-file (nearest rank), or wrk --latency; RSS: VmRSS summed over the process tree, idle = after start, load = max sampled every 100 ms"
    if ((TLS_WANTED)); then
        echo "- TLS loads (on $TLS_PROXIES): certificates from certs/make-certs.sh made for this run (CA, server \"bench\", client \"client\", ECDSA P-256); every listener requires and verifies the client certificate, ALPN h2/http1.1, session resumption at each proxy's default; $(openssl version 2>/dev/null)${TLS_REASON:+; n/a: $TLS_REASON}"
        echo "- TLS handshakes: openssl s_time -new, and -reuse -www / (TLS 1.3 resumption needs the read that -www makes, so each connection also carries one proxied GET; a plaintext twin, connection + the same GET, lets the report subtract it); CPU per handshake = proxy tree CPU / connections made. Kept-alive mTLS: h2load --h1 with the client certificate loaded by tests/bench/client_cert_shim.c (LD_PRELOAD), each run followed by a plaintext twin at the same rate on the proxy's plaintext HTTP/1 listener (for the sidecar its outbound listener; the mTLS one is its inbound listener)"
    fi
} >"$META"

# Rounds interleave: every proxy runs every load once per round, so a slow
# stretch of machine time lands on all of them rather than on one.
for ((ROUND = 1; ROUND <= REPEAT; ROUND++)); do
    ((REPEAT > 1)) && log "round $ROUND of $REPEAT"
    for proxy in "${PROXIES[@]}"; do
        bench_proxy "$proxy"
    done
done

mkdir -p "$(dirname "$OUT")"
$PY "$LIB" report "$RESULTS" "$META" >"$OUT"
if [[ -s $TLS_NEGOTIATED ]]; then
    { echo; echo "TLS negotiated on the kept-alive runs (h2load: protocol, cipher, key exchange, ALPN):"; echo
      cat "$TLS_NEGOTIATED"; } >>"$OUT"
fi
echo
cat "$OUT"
echo
log "results written to $OUT"

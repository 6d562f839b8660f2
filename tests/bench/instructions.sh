#!/usr/bin/env bash
# tests/bench/instructions.sh: instructions per request of one or more
# sidecar binaries, counted by valgrind's callgrind over a fixed number of
# requests: the A/B comparison for a change that must not cost CPU.
#
#   tests/bench/instructions.sh [-n REQUESTS] [--loads grpc,http1,inbound] [--config-extra FILE]...
#       [--inbound-extra FILE] [-H 'Name: value'] BINARY [BINARY...]
#
# --config-extra FILE: a configuration variant, FILE appended to the
# sidecar's YAML (top-level sections such as access_log: or tracing:); each
# one given is measured besides the plain configuration, and the ratio
# column gives its instructions per request against the plain one (same
# binary, same load): the cost of a feature (tests/bench/variants/).
# --upstream-extra FILE: the same for a variant of both upstreams' policies:
# FILE's lines (keys of an upstream, such as retries: or bulkhead:) are added
# to each of the two upstreams, and a `timeouts:` line there replaces the
# plain one (tests/bench/variants/policies_upstream.yaml: every resilience
# policy on, as run.sh's sidecar_policies).
# @BACKEND_HTTP@ in FILE becomes the HTTP/1.1 backend's port: the tracing
# variants export their spans there, so the export's work is counted too.
#
# Why instructions: CPU time per request (run.sh) needs a quiet machine and
# several runs to see a 2% difference; an instruction count over the same
# requests is the same on every run whatever else the machine does, so two
# binaries compare in one pass. It is not a time: cache misses, syscalls and
# the kernel's work are not in it (run.sh measures those). Both binaries see
# exactly the same requests, backends and configuration.
#
# Method: the sidecar (workers: 1, the run.sh configuration without TLS)
# runs under callgrind with instrumentation off; REQUESTS/10 warm-up requests;
# instrumentation on (callgrind_control -i on), REQUESTS requests, off again,
# dump; the Ir total of that dump / REQUESTS. Loads: grpc = h2load -c 8 -m 16 unary
# POSTs (the run.sh request), http1 = h2load --h1 -c 16 GETs, inbound = the
# same GETs through the inbound listener (in front of the HTTP/1.1 backend).
# Variants of one binary: --inbound-extra FILE adds FILE's lines to the
# `inbound:` section (e.g. a `jwt:` mapping, indented by two spaces), -H adds
# a header to every request of every load (e.g. an Authorization bearer
# token); tests/bench/jwt_ab.sh runs JWT off against on this way. Every
# process is killed on exit; every load is bounded by `timeout`.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
N=20000
LOADS=grpc,http1
INBOUND_EXTRA=
HDRS=()
BINS=()
EXTRAS=("")
while (($#)); do
    case $1 in
        -n) N=$2; shift 2 ;;
        --config-extra) EXTRAS+=("$(readlink -f "$2")"); shift 2 ;;
        --upstream-extra) EXTRAS+=("up:$(readlink -f "$2")"); shift 2 ;;
        --loads) LOADS=$2; shift 2 ;;
        --inbound-extra) INBOUND_EXTRA=$(readlink -f "$2"); shift 2 ;;
        -H) HDRS+=(-H "$2"); shift 2 ;;
        -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
        *) BINS+=("$(readlink -f "$1")"); shift ;;
    esac
done
((${#BINS[@]})) || { echo "usage: $0 [-n N] [--loads grpc,http1,inbound] [--config-extra FILE] [--upstream-extra FILE] [--inbound-extra FILE] [-H HEADER] BINARY..." >&2; exit 2; }
for t in valgrind callgrind_control h2load cc; do
    command -v "$t" >/dev/null || { echo "$t is needed (valgrind, nghttp2-client, gcc)" >&2; exit 2; }
done

WORK=$(mktemp -d /tmp/sidecar-instr.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [[ ${KEEP:-} ]] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

cc -O2 -o "$WORK/grpc_backend" "$HERE/grpc_backend.c" -lnghttp2 -lev
cc -O2 -o "$WORK/http1_backend" "$HERE/http1_backend.c"
BG=$(free_port); BH=$(free_port)
"$WORK/grpc_backend" "$BG" 16 >"$WORK/grpc_backend.log" 2>&1 & PIDS+=($!)
"$WORK/http1_backend" "$BH" 64 >"$WORK/http1_backend.log" 2>&1 & PIDS+=($!)
wait_port "$BG" && wait_port "$BH" || { echo "backends did not start" >&2; exit 1; }
printf '\x00\x00\x00\x00\x10\x0a\x0ehello-sidecar!' >"$WORK/grpc-request.bin"

load() { # load KIND PORT COUNT
    case $1 in
        grpc) timeout 600 h2load -n "$3" -c 8 -m 16 -d "$WORK/grpc-request.bin" -H 'content-type: application/grpc' \
                  -H 'te: trailers' "${HDRS[@]}" "http://127.0.0.1:$2/bench.Bench/Echo" ;;
        http1|inbound) timeout 600 h2load --h1 -n "$3" -c 16 -m 1 "${HDRS[@]}" "http://127.0.0.1:$2/" ;;
    esac
}

printf '| binary | config | load | requests | 2xx | instructions/request | ratio |\n|---|---|---|---:|---:|---:|---:|\n'
declare -A BASE
for bin in "${BINS[@]}"; do
  IFS=, read -ra loads <<<"$LOADS"
  for l in "${loads[@]}"; do
    for extra in "${EXTRAS[@]}"; do
        PA=$(free_port); PG=$(free_port); PH=$(free_port); PI=$(free_port)
        up_extra=
        if [[ $extra == up:* ]]; then up_extra=${extra#up:}; extra=; fi
        # the keys an upstream gets besides its name, protocol, listener and instances
        up_keys() {
            [[ $up_extra ]] && grep -q '^timeouts:' "$up_extra" || echo "    timeouts: {connect: 1s, request: 30s, idle: 60s}"
            [[ -z $up_extra ]] || sed 's/^/    /' "$up_extra"
        }
        cat >"$WORK/sidecar.yaml" <<EOF
service: {name: bench}
admin: {listen: "127.0.0.1:$PA"}
workers: 1
log: {level: warn}
upstreams:
  - upstream: grpc-backend
    protocol: grpc
    listen: "127.0.0.1:$PG"
    discovery: {static: ["127.0.0.1:$BG"]}
$(up_keys)
  - upstream: http-backend
    protocol: http1
    listen: "127.0.0.1:$PH"
    discovery: {static: ["127.0.0.1:$BH"]}
$(up_keys)
inbound:
  listen: "127.0.0.1:$PI"
  app: "127.0.0.1:$BH"
  app_protocol: http1
  timeouts: {connect: 1s, request: 30s, idle: 60s}
$( [[ $INBOUND_EXTRA ]] && sed 's/^/  /' "$INBOUND_EXTRA" )
EOF
        # @BACKEND_HTTP@: the HTTP/1.1 backend's port (it answers an OTLP POST as a collector would)
        [[ -z $extra ]] || sed "s/@BACKEND_HTTP@/$BH/g" "$extra" >>"$WORK/sidecar.yaml"
        out="$WORK/callgrind.out"
        rm -f "$out"*
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
            "$bin" --config "$WORK/sidecar.yaml" >"$WORK/sidecar.log" 2>&1 &
        vpid=$!; PIDS+=($vpid)
        wait_port "$PA" || { echo "$bin did not start: $(tail -5 "$WORK/sidecar.log")" >&2; exit 1; }
        case $l in grpc) port=$PG ;; inbound) port=$PI ;; *) port=$PH ;; esac
        wait_port "$port" || { echo "$bin: $l listener did not open" >&2; exit 1; } # workers bind after admin
        curl -s -o /dev/null --max-time 30 "http://127.0.0.1:$PA/ready" || true
        load "$l" "$port" $((N / 10)) >/dev/null
        callgrind_control -i on "$vpid" >/dev/null
        res=$(load "$l" "$port" "$N")
        callgrind_control -i off "$vpid" >/dev/null
        callgrind_control -d "$vpid" >/dev/null
        sleep 0.5
        ok=$(sed -n 's/.* \([0-9]*\) 2xx.*/\1/p' <<<"$res" | head -1)
        ir=$(cat "$out".* 2>/dev/null | sed -n 's/^totals: *\([0-9]*\).*/\1/p' | awk '{s+=$1} END {print s+0}')
        kill "$vpid" 2>/dev/null || true; wait "$vpid" 2>/dev/null || true
        per=$(awk -v ir="$ir" -v n="$N" 'BEGIN {printf "%.0f", ir / n}')
        [[ -n $extra || -n $up_extra ]] || BASE["$bin/$l"]=$per
        shown=${extra:-$up_extra}
        printf '| %s | %s | %s | %d | %s | %s | %s |\n' "$bin" "${shown:+$(basename "$shown")}" "$l" "$N" \
            "${ok:-?}" "$per" "$(awk -v a="$per" -v b="${BASE["$bin/$l"]}" 'BEGIN {printf "%.3f", a / b}')"
    done
  done
done

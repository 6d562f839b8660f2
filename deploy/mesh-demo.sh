#!/usr/bin/env bash
# deploy/mesh-demo.sh: two services on this machine, each with its sidecar,
# talking mutual TLS between the sidecars (no Consul needed):
#
#   curl (as app "web") -> web's sidecar 127.0.0.1:9201 (upstream "api")
#        == mTLS, web's certificate, checks the server is "api" ==>
#   api's sidecar 127.0.0.1:15443 (inbound: allows "web" only)
#        -> app "api" 127.0.0.1:8081 (deploy/demo_app.py), which sees
#           x-sidecar-caller: spiffe://example.org/ns/default/dc/dc1/svc/web
#
# Admin endpoints: web's sidecar 127.0.0.1:19100, api's 127.0.0.1:19101.
#
#   deploy/mesh-demo.sh            # set up, show the checks, keep running (Ctrl-C stops)
#   deploy/mesh-demo.sh --check    # set up, run the checks, stop; exit 1 if one failed
#
# Needs a built sidecar (./deploy/quickstart.sh builds one; SIDECAR=path to
# use another binary). Certificates (development CA, "web", "api" and an
# "intruder" the api side must refuse) and configs go to a temporary
# directory, removed at exit; certs/make-certs.sh makes them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SIDECAR=${SIDECAR:-$ROOT/build/sidecar}
PY=/usr/bin/python3
CHECK=0
[[ ${1:-} == --check ]] && CHECK=1
[[ -x $SIDECAR ]] || { echo "mesh-demo: no sidecar binary at $SIDECAR (run ./deploy/quickstart.sh or cmake --build build)" >&2; exit 2; }

WORK=$(mktemp -d /tmp/sidecar-mesh.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

TD=example.org
ID_WEB="spiffe://$TD/ns/default/dc/dc1/svc/web"
ID_API="spiffe://$TD/ns/default/dc/dc1/svc/api"
C=$WORK/certs
"$ROOT/certs/make-certs.sh" --out "$C" --trust-domain "$TD" --dc dc1 web api intruder >"$WORK/make-certs.log" 2>&1 \
    || { cat "$WORK/make-certs.log" >&2; exit 1; }

# api: its app behind an mTLS inbound listener that admits "web" only.
cat >"$WORK/api.yaml" <<EOF
service: {name: api}
admin: {listen: "127.0.0.1:19101"}
workers: 1
inbound:
  listen: "127.0.0.1:15443"
  app: "127.0.0.1:8081"
  app_protocol: http1
tls:
  cert: "$C/api.pem"
  key: "$C/api.key"
  ca: "$C/ca-bundle.pem"
  allow: ["$ID_WEB"]
EOF
# web: its app calls "api" on 127.0.0.1:9201; the sidecar originates mTLS
# with web's certificate and accepts only a server whose identity is api's.
cat >"$WORK/web.yaml" <<EOF
service: {name: web}
admin: {listen: "127.0.0.1:19100"}
workers: 1
tls:
  cert: "$C/web.pem"
  key: "$C/web.key"
  ca: "$C/ca-bundle.pem"
upstreams:
  - upstream: api
    protocol: http1
    listen: "127.0.0.1:9201"
    discovery: {static: ["127.0.0.1:15443"]}
    tls: {mode: mutual, server_identity: "$ID_API"}
    timeouts: {connect: 1s, request: 5s}
    retries: {max_attempts: 2, on: [connect-failure, refused-stream]}
EOF
for f in api web; do
    "$SIDECAR" --config "$WORK/$f.yaml" --check >/dev/null || { "$SIDECAR" --config "$WORK/$f.yaml" --check; exit 1; }
done

"$PY" deploy/demo_app.py --port 8081 --name api &
pids+=($!)
"$SIDECAR" --config "$WORK/api.yaml" >"$WORK/api.log" 2>&1 &
pids+=($!)
"$SIDECAR" --config "$WORK/web.yaml" >"$WORK/web.log" 2>&1 &
pids+=($!)

# Both sidecars answer /ready once their listeners are up (api's also needs its app).
for port in 19100 19101; do
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "http://127.0.0.1:$port/ready" 2>/dev/null && break
        sleep 0.1
    done
done

failed=0
check() {   # check "what" COMMAND... : prints ok/FAILED, keeps going
    local what=$1
    shift
    if out=$("$@" 2>&1); then
        echo "ok      $what"
    else
        echo "FAILED  $what"
        echo "$out" | sed 's/^/        /' | head -n 5
        failed=1
    fi
}
through_web() {   # web's app calls api through its sidecar; api's app names the caller
    local body
    body=$(curl -fsS http://127.0.0.1:9201/hello) || return 1
    echo "$body"
    grep -q "\"caller\": \"$ID_WEB\"" <<<"$body"
}
intruder_refused() {   # a certificate from the same CA, but not on api's allow list: 403
    local code
    code=$(curl -sS -o /dev/null -w '%{http_code}' --cacert "$C/ca-bundle.pem" --cert "$C/intruder.pem" \
        --key "$C/intruder.key" https://127.0.0.1:15443/hello)
    echo "HTTP $code"
    [[ $code == 403 ]]
}
no_cert_refused() {   # no client certificate: the handshake itself fails
    ! curl -sS -o /dev/null --cacert "$C/ca-bundle.pem" https://127.0.0.1:15443/hello
}
forged_header_dropped() {   # a caller cannot claim an identity with the header
    local body
    body=$(curl -fsS -H "x-sidecar-caller: spiffe://$TD/ns/default/dc/dc1/svc/admin" http://127.0.0.1:9201/hello) || return 1
    echo "$body"
    grep -q "\"caller\": \"$ID_WEB\"" <<<"$body"
}
api_certs() {
    curl -fsS http://127.0.0.1:19101/certs | grep -q "$ID_API"
}

echo
check "web -> web's sidecar == mTLS ==> api's sidecar -> api; api sees the caller $ID_WEB" through_web
check "a forged x-sidecar-caller from web's app is replaced by the verified identity" forged_header_dropped
check "an intruder certificate (same CA, not allowed) gets 403 from api's sidecar" intruder_refused
check "a caller without a client certificate fails the TLS handshake" no_cert_refused
check "api's sidecar shows its certificate on /certs" api_certs
echo

if ((CHECK)); then
    ((failed)) && { echo "mesh-demo: logs:"; tail -n 20 "$WORK/api.log" "$WORK/web.log"; }
    exit $failed
fi
cat <<MSG
Running. Try:
  curl -s http://127.0.0.1:9201/hello                      # web's app calling api
  curl -s http://127.0.0.1:19101/certs                     # api's certificate, identity, expiry
  curl -s http://127.0.0.1:19101/stats | grep -E 'tls|authz'   # handshakes, refusals
  curl -s http://127.0.0.1:19100/clusters                  # web's view of upstream api
Certificates and configs: $WORK (removed when this stops). Ctrl-C stops.
MSG
wait

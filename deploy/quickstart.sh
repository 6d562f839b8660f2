#!/usr/bin/env bash
# Installs the dependencies, builds, and runs the sidecar's built-in example:
# a small demo app on 127.0.0.1:8080 and the sidecar in front of it
# (inbound 127.0.0.1:15001 -> app, outbound upstream "demo" on 127.0.0.1:9191,
# admin on 127.0.0.1:19000). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target sidecar
/usr/bin/python3 deploy/demo_app.py --port 8080 &
app=$!
trap 'kill $app 2>/dev/null; wait 2>/dev/null' EXIT
sleep 0.5
cat <<'MSG'

The sidecar is starting with its built-in example (print it: build/sidecar --print-example).
In another terminal:
  curl -i http://127.0.0.1:9191/hello        # outbound: app -> sidecar -> upstream "demo"
  curl -i http://127.0.0.1:15001/hello       # inbound: caller -> sidecar -> local app
  curl --http2-prior-knowledge http://127.0.0.1:9191/hello   # HTTP/2 caller, HTTP/1.1 upstream
  curl http://127.0.0.1:19000/clusters       # admin: upstreams and instances
  curl http://127.0.0.1:19000/stats          # admin: Prometheus metrics
And in a browser on this machine: http://127.0.0.1:19000/ (the admin page).
Ctrl-C drains and stops.

MSG
build/sidecar

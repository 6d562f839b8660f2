#!/usr/bin/env bash
# Installs every Debian 12 package the sidecar needs to build, test and benchmark.
# Idempotent: skips apt entirely when everything is already there.
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config clang libclang-rt-14-dev
  libnghttp2-dev libssl-dev libcurl4-openssl-dev libgrpc-dev libcmocka-dev
  libev-dev libyaml-dev libjansson-dev libhiredis-dev redis-server libcjose-dev
  python3 python3-grpcio python3-yaml python3-hpack python3-jwt python3-cryptography curl openssl procps iproute2 util-linux
  nghttp2-client nghttp2-proxy haproxy nginx-light wrk
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

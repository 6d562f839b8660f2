#!/usr/bin/env bash
# Installs the Debian 12 packages that only the test suite needs, on top of
# deploy/install-deps.sh (which the quick start uses and keeps small):
#   chromium, fonts-liberation, python3-websocket
#                                the admin page in a real browser (test_admin_page)
#   prometheus                   promtool and a live server for deploy/prometheus/ (test_prometheus)
# Idempotent: skips apt entirely when everything is already there.
set -euo pipefail
pkgs=(chromium fonts-liberation python3-websocket prometheus)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-test-deps: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  # --no-install-recommends: no node exporter or other services come along;
  # the tests start their own Prometheus on loopback.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

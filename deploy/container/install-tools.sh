#!/usr/bin/env bash
# Installs the Debian 12 packages the container, Kubernetes-manifest, Compose
# and .deb tests need (podman with runc, buildah, podman-compose, debootstrap),
# kept apart from deploy/install-deps.sh so the quickstart never pulls podman.
# Idempotent: skips apt entirely when everything is already there.
set -euo pipefail
pkgs=(
  podman buildah runc podman-compose debootstrap containernetworking-plugins
  slirp4netns uidmap fuse-overlayfs catatonit dpkg-dev file python3-yaml
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-tools: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

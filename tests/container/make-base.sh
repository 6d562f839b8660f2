#!/usr/bin/env bash
# Makes the local base image localhost/debian:12 (Debian 12 minbase by
# debootstrap, apt pointed at bookworm, bookworm-updates and
# bookworm-security like the public debian:12 image) for machines that reach
# Debian's apt repositories but no container registry. Cached twice: podman's
# own storage (nothing to do when the image exists) and the root filesystem
# tarball under $SC_BASE_CACHE (default /var/cache/sidecar-test), so a wiped
# podman storage costs an import, not a debootstrap (about two minutes).
#
#   tests/container/make-base.sh [--force]
set -euo pipefail
source "$(dirname "$0")/podman-env.sh"
IMAGE=${SC_BASE_IMAGE:-localhost/debian:12}
CACHE=${SC_BASE_CACHE:-/var/cache/sidecar-test}
MIRROR=${SC_DEBIAN_MIRROR:-http://deb.debian.org/debian}
TAR=$CACHE/debian-12-minbase.tar
force=0
[[ ${1:-} == --force ]] && force=1

if ((!force)) && podman image exists "$IMAGE"; then
    exit 0
fi
mkdir -p "$CACHE"
if ((force)) || [[ ! -s $TAR ]]; then
    command -v debootstrap >/dev/null || { echo "make-base: debootstrap is not installed (deploy/container/install-tools.sh)" >&2; exit 2; }
    root=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$root" "$TAR.tmp"' EXIT
    echo "make-base: debootstrap --variant=minbase bookworm (about two minutes)" >&2
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -n 30 "$CACHE/debootstrap.log" >&2; exit 1; }
    rm -f "$root/etc/apt/sources.list"
    cat >"$root/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    # As in the public image: no package caches kept in layers, no
    # recommends pulled in by accident.
    printf 'APT::Install-Recommends "false";\n' >"$root/etc/apt/apt.conf.d/90container"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/log/*.log
    tar --numeric-owner -C "$root" -cf "$TAR.tmp" .
    mv "$TAR.tmp" "$TAR"
fi
podman import --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD=["/bin/bash"]' "$TAR" "$IMAGE" >/dev/null
echo "make-base: $IMAGE imported from $TAR" >&2

#!/usr/bin/env bash
# Build a Python 3.11 base image for deploy/Dockerfile from Debian bookworm's own packages.
#
# The Dockerfile's default base is the official python:3.11.x-slim-bookworm from Docker Hub. Where
# Docker Hub cannot be reached (an offline lab, a mirror of Debian only), this makes an equivalent
# base with debootstrap and `docker import`, and the Dockerfile takes it as its PYTHON_IMAGE build
# argument:
#
#   sudo deploy/debian_base.sh                          # -> splitlab-base:bookworm
#   docker build -f deploy/Dockerfile --build-arg PYTHON_IMAGE=splitlab-base:bookworm ...
#
# The image holds a minimal bookworm (debootstrap --variant=minbase) with bookworm-updates and the
# security updates applied, plus python3 (3.11.2 with Debian's patches), python3-venv (the venv
# module with ensurepip, which the Dockerfile's `python -m venv` needs), python-is-python3 (the
# official image's `python` command) and ca-certificates. Nothing is downloaded but Debian
# packages. Needs root (debootstrap and chroot) and a running Docker engine.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/debian_base.sh [-h] [--tag TAG] [--mirror URL] [--force]

Build a Python base image for deploy/Dockerfile from Debian bookworm packages (debootstrap) and
import it into the local Docker engine. Run as root.

  --tag TAG     image tag to create (default: splitlab-base:bookworm)
  --mirror URL  Debian mirror (default: $DEBIAN_MIRROR or http://deb.debian.org/debian)
  --force       rebuild even when TAG exists already
  -h, --help    this text

Environment: DOCKER (the Docker CLI, default: /usr/bin/docker when present, else `docker`).
EOF
}

TAG=splitlab-base:bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FORCE=0
while [[ $# -gt 0 ]]; do
    case $1 in
        --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
        --mirror) MIRROR=${2:?--mirror needs a value}; shift 2 ;;
        --force) FORCE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "error: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done

# /usr/local/bin/docker may be something else on PATH (see compose_check.sh); Debian's CLI first.
if [[ -z ${DOCKER:-} ]]; then
    if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi

if [[ $EUID -ne 0 ]]; then
    echo "error: debootstrap and chroot need root; run: sudo $0 $*" >&2
    exit 1
fi
if ! command -v debootstrap >/dev/null; then
    echo "error: debootstrap is not installed; run: apt-get install debootstrap" >&2
    exit 1
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
    echo "error: no Docker engine answers '$DOCKER info'; start one (see deploy/README.md)" >&2
    exit 1
fi
if [[ $FORCE -eq 0 ]] && "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    echo "$TAG exists already (--force rebuilds it)"
    exit 0
fi

ROOTFS=$(mktemp -d /var/tmp/splitlab-rootfs.XXXXXX)
cleanup() {
    # A failed chroot step can leave /proc mounted inside; unmount before deleting the tree.
    umount "$ROOTFS/proc" 2>/dev/null || true
    rm -rf --one-file-system "$ROOTFS"
}
trap cleanup EXIT

echo "debootstrap bookworm (minbase) from $MIRROR into $ROOTFS"
debootstrap --variant=minbase \
    --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR"

# The point releases and security fixes published since bookworm's release (python3.11 among them).
SECURITY_MIRROR=${MIRROR%/debian}/debian-security
cat > "$ROOTFS/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
EOF
mount -t proc proc "$ROOTFS/proc"
chroot "$ROOTFS" /usr/bin/env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get update -q && apt-get upgrade -y -q && apt-get clean'
umount "$ROOTFS/proc"
# What an image needs of none of this: package lists, caches, logs, documentation.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/* "$ROOTFS"/var/log/* \
       "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
       "$ROOTFS"/tmp/* "$ROOTFS"/root/.cache

# The official image's environment, so that the Dockerfile behaves the same on either base.
tar --numeric-owner -C "$ROOTFS" -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    --message "debootstrap bookworm minbase + python3 (deploy/debian_base.sh)" \
    - "$TAG" >/dev/null
echo "$TAG: $("$DOCKER" run --rm --network none "$TAG" python --version), $("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}')"

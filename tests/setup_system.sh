#!/usr/bin/env bash
# System packages the test suite uses, from Debian: headless Chromium for the lab's browser test
# (tests/test_lab_e2e.py drives /usr/bin/chromium with Playwright's Python package) and the
# Fashion-MNIST idx files (/usr/share/datasets/fashion-mnist). Idempotent: installs only what is
# missing (apt-get update only if the first try fails).
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -d /usr/share/datasets/fashion-mnist ] || need+=(dataset-fashion-mnist)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup_system: need root (or sudo) to apt-get install ${need[*]}" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q "${need[@]}" \
    || { $SUDO apt-get update -q && $SUDO apt-get install -y -q "${need[@]}"; }
test -x /usr/bin/chromium

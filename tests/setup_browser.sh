#!/usr/bin/env bash
# Headless Chromium for the lab's browser tests (tests/test_lab_e2e.py drives it with Playwright's
# Python package and executable_path=/usr/bin/chromium). Idempotent: does nothing when it is
# installed; otherwise installs the Debian package `chromium` (apt-get update only if needed).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup_browser: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y chromium \
    || { $SUDO apt-get update && $SUDO apt-get install -y chromium; }
test -x /usr/bin/chromium

#!/usr/bin/env bash
# System packages two tests use, from Debian: headless Chromium for the lab's browser test
# (tests/test_lab_e2e.py drives /usr/bin/chromium with Playwright's Python package) and the
# Fashion-MNIST idx files (/usr/share/datasets/fashion-mnist). Idempotent: installs only what is
# missing (apt-get update only if the first try fails).
#
# `make test` runs this before pytest. Where it cannot install (not root and no passwordless sudo,
# no apt-get: a laptop, Fedora, macOS) or the install fails, it says which tests will skip and why
# and exits 0, so the rest of the suite runs. Under CI (CI=true; root on Debian) nothing may skip:
# there it exits 1 instead, and the tests fail rather than skip (tests/system_prereqs.py).
# SPLITLAB_SYSTEM_PREFIX (tests only) is prepended to the two paths checked.
set -euo pipefail
prefix="${SPLITLAB_SYSTEM_PREFIX:-}"
chromium="$prefix/usr/bin/chromium"
fashion="$prefix/usr/share/datasets/fashion-mnist"
need=()
skips=()
if [ ! -x "$chromium" ]; then
    need+=(chromium)
    skips+=("tests/test_lab_e2e.py::test_experiment_page_in_headless_chromium: needs $chromium (Debian package chromium)")
fi
if [ ! -d "$fashion" ]; then
    need+=(dataset-fashion-mnist)
    skips+=("tests/test_datasets.py::test_fashion_mnist_from_debian: needs $fashion (Debian package dataset-fashion-mnist)")
fi
[ ${#need[@]} -eq 0 ] && exit 0

in_ci() { case "${CI:-}" in 1|[Tt]rue|[Yy]es) return 0 ;; *) return 1 ;; esac; }

give_up() {  # $1: why nothing was installed
    echo "setup_system: cannot install ${need[*]}: $1" >&2
    if in_ci; then
        echo "setup_system: CI=$CI: every test must run here, so this is an error" >&2
        exit 1
    fi
    echo "setup_system: these tests will skip (pytest -ra lists them again at the end):" >&2
    printf '  %s\n' "${skips[@]}" >&2
    echo "setup_system: to run them, install those packages as root (sudo apt-get install ${need[*]}) and rerun" >&2
    exit 0
}

command -v apt-get >/dev/null 2>&1 || give_up "apt-get not found (not a Debian/Ubuntu system)"
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    # never a password prompt in the middle of `make test`: only sudo that needs none
    if command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
        SUDO=(sudo -n)
    else
        give_up "not root, and no passwordless sudo"
    fi
fi
export DEBIAN_FRONTEND=noninteractive
apt_get() { ${SUDO[@]+"${SUDO[@]}"} apt-get "$@"; }  # (bash before 4.4 calls an empty array unbound)
if ! { apt_get install -y -q "${need[@]}" || { apt_get update -q && apt_get install -y -q "${need[@]}"; }; }; then
    give_up "apt-get failed (see above)"
fi
[ -x "$chromium" ] && [ -d "$fashion" ] || give_up "$chromium or $fashion still missing after apt-get install"

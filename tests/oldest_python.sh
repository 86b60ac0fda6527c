#!/usr/bin/env bash
# The tap's tests under the oldest Python the project accepts (requires-python >= 3.11).
#
# The relay tap once depended on an asyncio fix of CPython 3.11.3 and dropped every connection on
# Debian 12's python3 (3.11.2), which pyproject.toml accepts; the project's own venv (3.11.7) did
# not show it. So `make test` also runs the torch-free tests of the tap, the capture store and the
# wire format under the oldest 3.11 interpreter on the machine, in a venv of their own
# (.venv-oldest) that holds only what those modules import.
#
#   OLDEST_PYTHON=/path/to/python3.11 bash tests/oldest_python.sh   # another interpreter
#
# Where no such interpreter exists (a laptop with one Python) it says so and exits 0, except under
# CI, where it must run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${OLDEST_PYTHON:-/usr/bin/python3.11}
VENV=.venv-oldest
if ! [ -x "$PY" ]; then
    if [ "${CI:-}" = "true" ]; then echo "oldest_python: $PY not found (CI must run the tap's tests under it)" >&2; exit 1; fi
    echo "oldest_python: $PY not found: the tap's tests under the oldest Python are skipped (set OLDEST_PYTHON)"
    exit 0
fi
version=$("$PY" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')
case "$version" in
    3.11.*) ;;
    *) echo "oldest_python: $PY is Python $version, not 3.11" >&2; exit 1 ;;
esac
# Only the tap's own dependencies, at the versions pyproject.toml pins (no torch: the tap never
# imports it, and these tests check that it still does not).
reqs=$("$PY" - <<'PYEOF'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = {"grpcio", "grpcio-health-checking", "grpcio-reflection", "hpack", "protobuf", "numpy",
          "pytest", "pytest-timeout"}
pins = project["dependencies"] + project["optional-dependencies"]["dev"]
print(" ".join(p for p in pins if re.split(r"[=<>\[ ]", p)[0].lower() in wanted))
PYEOF
)
stamp="$VENV/.installed-$(echo "$version $reqs" | md5sum | cut -c1-12)"
if ! [ -f "$stamp" ]; then
    rm -rf "$VENV"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet $reqs
    touch "$stamp"
fi
echo "oldest_python: the tap's tests under Python $version ($PY)"
PYTHONPATH=$PWD exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -o addopts="" \
    tests/test_tap_relay_early_bytes.py tests/test_tap_h2parse.py tests/test_tap.py tests/test_tap_failures.py \
    tests/test_capture_store.py tests/test_segment_file.py

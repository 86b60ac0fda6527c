"""attacker.tap.heap: a process that calls keep_freed_memory() keeps large freed blocks for reuse
instead of unmapping them (glibc only; skipped elsewhere)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from fixtures_grpc import ROOT

PROBE = """
import sys
from attacker.tap.heap import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "keep" else True
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096
before = rss()
block = bytearray(16 << 20)  # 16 MiB, touched by the zero fill
del block
print(ok, (rss() - before) >> 20)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc only")
def test_freed_blocks_stay_in_the_process_only_when_asked():
    def held(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=ROOT,
                             timeout=60, check=True).stdout.split()
        assert out[0] == "True", "mallopt refused the thresholds"
        return int(out[1])

    assert held("default") < 4  # glibc returns a 16 MiB block to the kernel at once
    assert held("keep") >= 15  # kept: the next message reuses these pages

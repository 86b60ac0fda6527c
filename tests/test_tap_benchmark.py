"""The tap overhead benchmark: core placement, and one short real run (cloud + three taps as processes)."""

from __future__ import annotations

import os
import re

import pytest

from benchmarks import tap_overhead


def test_placements_split_the_cores():
    assert tap_overhead.placement_cpus("shared") == (None, None)
    victims, taps = tap_overhead.placement_cpus("separate")
    assert victims and taps and not victims & taps
    assert victims | taps == set(os.sched_getaffinity(0))


@pytest.mark.e2e
def test_separate_placement_run_writes_a_report(tmp_path):
    out = tmp_path / "tap.md"
    before = os.sched_getaffinity(0)
    try:
        assert tap_overhead.main(["--only", "0", "--seconds", "0.3", "--rounds", "1", "--placement", "separate",
                                  "--out", str(out)]) == 0
    finally:
        os.sched_setaffinity(0, before)  # the benchmark pins its own process (the client)
    text = out.read_text()
    assert "--placement separate" in text and "pinned: client and cloud to core(s)" in text
    row = next(line for line in text.splitlines() if line.startswith("| lenet5 relu2 |"))
    direct, tap = (float(v) for v in row.split("|")[5:8:2])  # direct img/s, tap img/s
    assert direct > 0 and tap > 0
    recorded = re.search(r'"recorded": (\d+)', text)
    assert recorded and int(recorded.group(1)) > 0  # the recording tap recorded the calls it relayed

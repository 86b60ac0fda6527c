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
    cells = row.split("|")
    direct, sniff, tap = float(cells[5]), float(cells[7]), float(cells[12])  # img/s
    assert direct > 0 and sniff > 0 and tap > 0
    sniff_kept, tap_kept = (float(cells[i].strip().rstrip("%")) for i in (10, 15))  # recorded, % of calls sent
    assert tap_kept == 100.0  # the relay holds traffic back rather than lose a call
    assert 50.0 < sniff_kept <= 100.0  # the sniffer keeps pace with small calls (it would lose, not slow, if not)
    recorded = re.findall(r'"mode": "(passive|sniff)".*"recorded": (\d+)', text)
    # both recording taps recorded the calls they saw: the relay its own, the sniffer those to its cloud
    assert sorted(mode for mode, n in recorded if int(n) > 0) == ["passive", "sniff"]

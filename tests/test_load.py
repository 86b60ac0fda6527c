"""The load benchmark at small scale: K = 1 and 4 clients, each on its own connection, unary and
stream, straight to the cloud and through the passive tap. Correctness only (no timings): every
request is answered with its own id, nothing is lost, and the tap records every call."""

from __future__ import annotations

import pytest

from benchmarks.load import main, run_load, write_report

pytestmark = pytest.mark.e2e


def test_concurrent_clients_lose_nothing_and_get_their_own_replies(tmp_path):
    rows = run_load(["direct", "passive"], ["unary", "stream"], [1, 4], seconds=0.5, progress=False)
    assert [(r["path"], r["mode"], r["clients"]) for r in rows] == [
        (p, m, k) for p in ("direct", "passive") for m in ("unary", "stream") for k in (1, 4)]
    for r in rows:
        assert r["sent"] > 0 and r["answered"] == r["sent"], r
        assert r["lost"] == 0 and r["mismatched"] == 0 and not r["errors"] and r["hung_clients"] == 0, r
        assert r["p50"] <= r["p99"] <= r["p999"] and r["cloud_mb"][1] > 0
        if r["path"] == "passive":
            assert r["recorded"] >= 0.999 and r["tap_mb"][1] > 0, r
    out = tmp_path / "load.md"
    write_report(out, rows, ["--quick"], 0.5, 4)
    table = [line for line in out.read_text().splitlines() if line.startswith("| direct") or line.startswith("| passive")]
    assert len(table) == 8 and "python -m benchmarks.load --quick" in out.read_text()


def test_bad_flags_are_refused_with_the_reason(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--path", "direct,telepathy"])
    assert info.value.code == 2 and "direct, passive, proxy, sniff" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--clients", "4,0"])
    assert "positive integers" in capsys.readouterr().err

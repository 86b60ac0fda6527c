"""The ``attacker`` CLI: tables, ground truth, and clear errors (exit 2) for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from attacker.__main__ import main
from attacker.captures.store import CaptureStore


@pytest.fixture()
def store_dir(tmp_path):
    store = CaptureStore(tmp_path / "captures")
    rows = []
    for i in range(5):
        feats = np.random.default_rng(i).random((2, 8, 24, 24), dtype=np.float32)
        rows.append({"method": "Infer", "request_id": f"req-{i}", "deployment_id": "dep-a", "peer": "ipv4:1.2.3.4:5",
                     "time": 1_700_000_000.0 + i, "latency": 0.002, "features": feats, "shape": feats.shape,
                     "wire_dtype": "float32", "top1": [i, i]})
    rows.append({"method": "Infer", "request_id": "req-b", "deployment_id": "dep-b", "time": 1_700_000_010.0,
                 "status": 5, "error": "unknown deployment"})
    store.add_captures(rows)
    store.close()
    return tmp_path / "captures"


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_captures_table_filters_and_json(store_dir, capsys):
    code, out, _ = run(capsys, "captures", "--store", str(store_dir))
    assert code == 0 and "6 capture(s)" in out
    assert "req-4" in out and "2x8x24x24" in out and "5 (unknown deployment)" in out
    code, out, _ = run(capsys, "captures", "--store", str(store_dir), "--deployment", "dep-a", "--last", "2")
    assert code == 0 and "req-4" in out and "req-3" in out and "req-2" not in out and "req-b" not in out
    code, out, _ = run(capsys, "captures", "--store", str(store_dir), "--since", "1700000003", "--until",
                       "2023-11-14T22:13:24", "--json")
    assert code == 0 and [line.count('"request_id"') for line in out.splitlines()] == [1, 1]
    assert '"req-3"' in out and '"req-4"' in out


def test_truth_attaches_ground_truth(store_dir, tmp_path, capsys):
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    np.savez(tmp_path / "gt.npz", request_ids=np.array(["req-1", "req-1", "nobody"]), images=images)
    code, out, _ = run(capsys, "truth", str(tmp_path / "gt.npz"), "--store", str(store_dir))
    assert code == 0 and "2 request id(s)" in out and "1 match" in out
    assert CaptureStore(store_dir).ground_truth("req-1").shape == (2, 1, 28, 28)
    code, out, _ = run(capsys, "captures", "--store", str(store_dir), "--deployment", "dep-a")
    assert "+truth" in out


@pytest.mark.parametrize("argv, message", [
    (["captures", "--store", "{missing}"], "no capture store"),
    (["captures", "--deployment", "nope"], "no deployment 'nope'"),
    (["captures", "--last", "0"], "--last must be at least 1"),
    (["captures", "--since", "yesterday-ish"], "--since must be"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--param", "iterationz=5"],
     "unknown parameter(s) iterationz"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--param", "iterations=-3"],
     "iterations must be an integer >= 1"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--param", "nonsense"],
     "--param must be NAME=VALUE"),
    (["invert", "--method", "whitebox", "--deployment", "nope", "--out", "{out}"], "no deployment 'nope'"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}"], "no captured head"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--head-from", "capture"],
     "no GetHead payload"),
    (["invert", "--method", "queryfree", "--deployment", "dep-a", "--out", "{out}", "--aux-data", "digits"],
     "needs the tail"),
    (["invert", "--method", "blackbox", "--deployment", "dep-a", "--out", "{out}"], "needs auxiliary data"),
    (["invert", "--method", "blackbox", "--deployment", "dep-a", "--out", "{out}", "--aux-data", "digits:val"],
     "neither train/test nor a positive count"),
    (["invert", "--method", "blackbox", "--deployment", "dep-a", "--out", "{out}", "--aux-data", "noise:100"],
     "needs a query source"),
    (["invert", "--method", "blackbox", "--deployment", "dep-a", "--out", "{out}", "--aux-data", "noise",
      "--artifacts", "{missing}"], "is not a folder"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--capture", "6"],
     "capture 6 is of deployment 'dep-b'"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--capture", "99"],
     "no capture 99"),
    (["invert", "--method", "whitebox", "--deployment", "dep-b", "--out", "{out}"], "no successful captures"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--max-batches", "2"],
     "needs --follow"),
    (["invert", "--method", "whitebox", "--deployment", "dep-a", "--out", "{out}", "--ground-truth", "{missing}"],
     "does not exist"),
    (["tap", "--listen", "nowhere", "--upstream", "localhost:1"], "--listen must be HOST:PORT"),
    (["tap", "--max-message-mb", "0"], "--max-message-mb must be positive"),
    (["tap", "--max-captures", "0"], "--max-captures must be at least 1"),
])
def test_errors_are_clear_and_exit_2(argv, message, store_dir, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing", out=tmp_path / "out") for a in argv]
    if "--store" not in argv and argv[0] != "tap":
        argv += ["--store", str(store_dir)]
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    assert err.startswith("error: ") and message in err, err


def test_help_explains_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for word in ("tap", "captures", "truth", "invert", "SPLITLAB_STORE", "SPLITLAB_THREADS"):
        assert word in out
    with pytest.raises(SystemExit):
        main(["invert", "--help"])
    out = capsys.readouterr().out
    assert "--follow" in out and "--ground-truth" in out and "whitebox" in out and "queryfree" in out

"""The He et al. suite's plumbing: auxiliary sets respect the threat model; the runner dispatches on 'suite'."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.__main__ import SUITES, main
from benchmarks.he2019 import PAPER, auxiliary_sets, evaluation_images, shortfalls, table
from models import load_dataset
from models.splits import privacy_splits


def _manifest(n, scheme):
    parts = privacy_splits(n, 0, scheme)
    return {"members": {"indices": parts["target_train"].tolist()},
            "splits": {k: v.tolist() for k, v in parts.items() if k != "target_train"}}


def test_auxiliary_sets_are_disjoint_where_the_setting_says_so():
    ds = load_dataset("digits")
    x_eval, y_eval, desc, eval_idx = evaluation_images("digits", ds, 1)
    assert len(x_eval) == 10 and sorted(y_eval.tolist()) == list(range(10)) and "test" in desc
    full = _manifest(len(ds.x_train), "full")
    aux = auxiliary_sets(ds, full, eval_idx, 200, 0, (1, 28, 28))
    members = {ds.x_train[i].tobytes() for i in full["members"]["indices"]}
    same, _ = aux["same-set"]
    assert len(same) == 200 and all((s.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0).tobytes() in members
                                     for s in same[:20])
    dist, labels = aux["same-distribution"]
    eval_bytes = {(x.numpy() * 255).round().astype(np.uint8).tobytes() for x in x_eval}
    assert not any((d.numpy() * 255).round().astype(np.uint8).tobytes() in eval_bytes for d in dist)
    assert len(labels) == len(dist)
    noise, none = aux["random-noise"]
    assert none is None and noise.shape == (200, 1, 28, 28) and 0 <= noise.min() and noise.max() <= 1
    # privacy scheme: the same-distribution set comes from the held-out parts of the training set
    priv = _manifest(len(ds.x_train), "privacy")
    dist2, _ = auxiliary_sets(ds, priv, eval_idx, 100, 0, (1, 28, 28))["same-distribution"]
    members2 = {ds.x_train[i].tobytes() for i in priv["members"]["indices"]}
    assert not any((d.numpy() * 255).round().astype(np.uint8).transpose(1, 2, 0).tobytes() in members2 for d in dist2)


def test_report_tables_put_ours_beside_the_paper():
    r = {"psnr_mean": 40.0, "psnr_std": 0.5, "ssim_mean": 0.99, "ssim_std": 0.01, "ssim_paper_mean": 0.99,
         "ssim_paper_std": 0.01}
    lines = table({("mnist", "conv1", "whitebox", "rMLE"): r}, "whitebox", ["rMLE"])
    assert "40.00 ± 0.50 (39.69)" in "\n".join(lines)
    assert PAPER[("blackbox", "random-noise")][("cifar10", "conv11")] == (48.59, 0.9996)
    low = {("mnist", "relu2", "whitebox", "rMLE"): {**r, "psnr_mean": 10.0}}
    assert "PSNR 10.00 < 15.1" in shortfalls(low)[0]


def test_runner_dispatches_on_suite(tmp_path, capsys):
    assert {"he2019", "whitebox-speed", "training"} <= set(SUITES)
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: nope\n")
    with pytest.raises(SystemExit):
        main(["run", str(bad)])
    assert "suite" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["run", str(tmp_path / "missing.yaml")])
    assert main(["suites"]) == 0
    torch.manual_seed(0)

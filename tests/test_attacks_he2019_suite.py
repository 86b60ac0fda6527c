"""The He et al. suite's plumbing: auxiliary sets respect the threat model; the runner dispatches on 'suite'."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from attack_helpers import mnist_target

from attacker.attacks import keys, noise_images
from benchmarks.__main__ import SUITES, main
from benchmarks.he2019 import (HE_LAMBDA, PAPER, auxiliary_sets, evaluation_images, run_cell, shortfalls, suite_attacks,
                               table)
from models import SplitlabError, load_dataset, split_model
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


@pytest.mark.parametrize("attack, setting, params", [
    ("whitebox", "He-lambda", {"iterations": 20}),
    ("blackbox", "random-noise", {"epochs": 1}),
    ("queryfree", "diff-set/diff-net", {"epochs": 1, "whitebox": {"iterations": 20}}),
])
def test_a_cell_fits_on_what_its_setting_allows(attack, setting, params):
    t = mnist_target()
    head, tail = split_model(t.model, "relu2")
    with torch.no_grad():
        feats = head(t.x_eval)
    aux = {"same-set": (t.x_train[:150], t.y_train[:150]), "same-distribution": (t.x_train[150:270], t.y_train[150:270]),
           "random-noise": (noise_images(90, (1, 28, 28)), None)}
    record = {"input_shape": (1, 28, 28), "feature_shape": tuple(feats.shape[1:]), "arch": "lenet5", "split": "relu2",
              "num_classes": 10}
    ctx = dict(head=head, tail=tail, record=record, split="relu2", features=feats, x_eval=t.x_eval, aux=aux)
    r, rec = run_cell(attack, setting, ctx, params, progress=False)
    assert rec.shape == t.x_eval.shape and np.isfinite(r["psnr_mean"]) and r["params"] == params
    if attack == "whitebox":  # He et al.'s loss and fixed weight at this split
        assert r["whitebox"]["feature_loss"] == "mean" and r["whitebox"]["tv_weight"] == HE_LAMBDA["relu2"]
    elif attack == "blackbox":  # every noise image queried through the head
        assert r["aux_count"] == 90 and r["queries"] >= 90
    else:  # diff-set: the same-distribution images; diff-net: He et al.'s other shadow structure
        assert r["aux_count"] == 120 and 0.0 <= r["shadow_accuracy"] <= 1.0


def test_attacks_outside_the_suite_are_refused():
    assert suite_attacks(["inversion/blackbox", "whitebox"]) == ["blackbox", "whitebox"]
    with pytest.raises(SplitlabError, match="unknown attack 'nope'.*inversion/whitebox"):
        suite_attacks(["nope"])
    for key in (k for k in keys() if not k.startswith("inversion/")):  # other families: registered, not He et al.'s
        with pytest.raises(SplitlabError, match=f"no settings for {key}"):
            suite_attacks([key])

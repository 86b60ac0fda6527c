"""Membership metrics: known answers on hand-made scores, the threshold rules, errors, the log-log ROC."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from attacker.membership_metrics import max_advantage_threshold, membership_metrics, plot_roc, tpr_at_fpr
from models import SplitlabError


def test_perfect_separation():
    m = membership_metrics([0.9, 0.8, 0.7, 0.1, 0.2, 0.3], [1, 1, 1, 0, 0, 0])
    assert m["auc"] == 1.0 and m["tpr_at_1pct_fpr"] == 1.0 and m["tpr_at_0_1pct_fpr"] == 1.0
    assert m["advantage"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["f1"] == 1.0
    assert m["threshold_source"] == "max-advantage" and 0.3 < m["threshold"] <= 0.7
    assert (m["members"], m["non_members"]) == (3, 3)


def test_label_metrics_at_a_given_threshold():
    scores = np.array([0.9, 0.6, 0.4, 0.7, 0.2, 0.1])
    member = np.array([1, 1, 1, 0, 0, 0], bool)
    m = membership_metrics(scores, member, threshold=0.5)
    # predicted members: 0.9, 0.6, 0.7 -> TP 2, FP 1, FN 1
    assert m["threshold_source"] == "given" and m["threshold"] == 0.5
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["advantage"] == pytest.approx(2 / 3 - 1 / 3) and m["balanced_accuracy"] == pytest.approx(2 / 3)
    assert m["auc"] == pytest.approx(7 / 9)


def test_tpr_at_low_fpr_is_the_best_tpr_within_the_fpr_budget():
    rng = np.random.default_rng(0)
    member = np.r_[np.ones(2000, bool), np.zeros(2000, bool)]
    scores = np.r_[rng.normal(1, 1, 2000), rng.normal(0, 1, 2000)]
    m = membership_metrics(scores, member)
    # a Gaussian shift of 1: TPR at 1% FPR is 1 - Phi(2.326 - 1) = 0.093 (sampling error ~0.02)
    assert m["tpr_at_1pct_fpr"] == pytest.approx(0.093, abs=0.035)
    assert 0 <= m["tpr_at_0_1pct_fpr"] <= m["tpr_at_1pct_fpr"]
    assert m["auc"] == pytest.approx(0.76, abs=0.02)  # Phi(1 / sqrt 2)
    assert tpr_at_fpr(np.array([0.0, 0.005, 0.02, 1.0]), np.array([0.1, 0.3, 0.5, 1.0]), 0.01) == 0.3
    assert tpr_at_fpr(np.array([0.5, 1.0]), np.array([0.6, 1.0]), 0.01) == 0.0


def test_guessing_is_near_chance_and_the_max_advantage_threshold_is_optimistic():
    rng = np.random.default_rng(1)
    scores, member = rng.random(400), rng.random(400) < 0.5
    m = membership_metrics(scores, member)
    assert abs(m["auc"] - 0.5) < 0.1 and m["advantage"] >= 0  # chosen on these labels: never below 0
    t = max_advantage_threshold(scores, member)
    assert membership_metrics(scores, member, t)["advantage"] == pytest.approx(m["advantage"])


@pytest.mark.parametrize("scores, member, match", [
    ([0.1, 0.2], [1, 1], "both"),
    ([0.1, np.nan], [1, 0], "NaN"),
    ([0.1, 0.2, 0.3], [1, 0], "3 scores for 2"),
    ([0.1, 0.2], [2, 0], "booleans"),
])
def test_bad_inputs(scores, member, match):
    with pytest.raises(SplitlabError, match=match):
        membership_metrics(scores, member)


def test_plot_roc_writes_a_log_log_figure(tmp_path):
    rng = np.random.default_rng(2)
    member = np.r_[np.ones(300, bool), np.zeros(300, bool)]
    curves = {"strong": (np.r_[rng.normal(2, 1, 300), rng.normal(0, 1, 300)], member),
              "guess": (rng.random(600), member)}
    path = plot_roc(curves, tmp_path / "roc" / "roc.png")
    with Image.open(path) as img:
        assert img.size[0] > 300 and img.size[1] > 300
    with pytest.raises(SplitlabError, match="at least one"):
        plot_roc({}, tmp_path / "none.png")

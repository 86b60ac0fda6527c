"""Membership-inference metrics (scikit-learn) and ROC curves on log-log axes.

A membership attack gives each sample a score (higher = more likely a member). Two kinds of figure
describe it, and the literature mixes them:

* **threshold-free**: ROC AUC, and the true-positive rate at a low false-positive rate (1% and
  0.1%), which Carlini et al. (2022) argue is the number that matters: an attack that is confident
  about a few members is a privacy breach even when its average accuracy is near 0.5. TPR at FPR
  ``f`` is the highest TPR the ROC reaches with FPR <= ``f``; with fewer than ``1 / f``
  non-members it is the TPR at zero false positives.
* **at a decision threshold**: balanced accuracy, precision, recall, F1 (the figures of Shokri et
  al. and of the course project's tables) and the membership advantage TPR - FPR (Yeom et al.).
  Which threshold matters: an attack that chose its threshold on shadow data (the threshold
  attacks; Shokri's classifier at probability 0.5) passes it as ``threshold`` and the figures are
  honest. Without one, the threshold that maximises the advantage on the evaluated scores is used
  (``threshold_source: "max-advantage"``): an upper bound on what any threshold achieves, not
  something an attacker could pick without the membership labels. ``macro_precision``,
  ``macro_recall`` and ``macro_f1`` average each over the two classes (member, non-member;
  scikit-learn's ``average="macro"``): the course project's tables report these (an F1 below both
  its precision and recall gives them away).

``plot_roc`` draws several attacks' curves on log-log axes, which shows the low-FPR regime that a
linear ROC squeezes into its corner.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import (balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score,
                             roc_curve)

from models.errors import SplitlabError

LOW_FPRS = {"tpr_at_1pct_fpr": 0.01, "tpr_at_0_1pct_fpr": 0.001}


def _checked(scores, is_member) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    m = np.asarray(is_member).reshape(-1)
    if len(s) != len(m):
        raise SplitlabError(f"{len(s)} scores for {len(m)} membership labels")
    if not np.isfinite(s).all():
        raise SplitlabError("membership scores contain NaN or Inf")
    if not np.isin(m, (0, 1, True, False)).all():
        raise SplitlabError("is_member must hold booleans (or 0/1)")
    m = m.astype(bool)
    if m.all() or not m.any():
        raise SplitlabError("membership metrics need both members and non-members")
    return s, m


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The highest TPR on the ROC with FPR <= ``target``."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def max_advantage_threshold(scores, is_member) -> float:
    """The score threshold (predict member when score >= it) maximising TPR - FPR on these labels."""
    s, m = _checked(scores, is_member)
    fpr, tpr, thresholds = roc_curve(m, s)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], s.max()))


def membership_metrics(scores, is_member, threshold: float | None = None) -> dict:
    """ROC AUC, TPR at 1% / 0.1% FPR, and the label metrics at ``threshold`` (see the module doc)."""
    s, m = _checked(scores, is_member)
    fpr, tpr, _ = roc_curve(m, s)
    source = "given"
    if threshold is None:
        threshold, source = max_advantage_threshold(s, m), "max-advantage"
    elif not np.isfinite(threshold):
        raise SplitlabError(f"threshold must be a finite number, got {threshold!r}")
    pred = s >= threshold
    out = {"auc": float(roc_auc_score(m, s))}
    out.update({name: tpr_at_fpr(fpr, tpr, f) for name, f in LOW_FPRS.items()})
    tp_rate, fp_rate = pred[m].mean(), pred[~m].mean()
    out.update({
        "balanced_accuracy": float(balanced_accuracy_score(m, pred)),
        "accuracy": float((pred == m).mean()),
        "precision": float(precision_score(m, pred, zero_division=0)),
        "recall": float(recall_score(m, pred, zero_division=0)),
        "f1": float(f1_score(m, pred, zero_division=0)),
        **{f"macro_{name}": float(score(m, pred, average="macro", zero_division=0))
           for name, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score))},
        "advantage": float(tp_rate - fp_rate),
        "threshold": float(threshold),
        "threshold_source": source,
        "members": int(m.sum()),
        "non_members": int((~m).sum()),
    })
    return out


def plot_roc(curves: dict[str, tuple], path, title: str = "membership inference") -> Path:
    """ROC curves ``{name: (scores, is_member)}`` on log-log axes, AUC in the legend; writes ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not curves:
        raise SplitlabError("plot_roc needs at least one curve")
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    floor = 1.0
    for name, (scores, is_member) in curves.items():
        s, m = _checked(scores, is_member)
        fpr, tpr, _ = roc_curve(m, s)
        floor = min(floor, 1.0 / max(1, (~m).sum()))
        ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(m, s):.3f})", lw=1.4)
    ax.plot([floor, 1], [floor, 1], "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(floor / 2, 1)
    ax.set_ylim(floor / 2, 1.02)
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

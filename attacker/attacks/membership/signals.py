"""Per-sample membership signals computed from a model's output probabilities and the true label.

A model is more confident on the samples it was trained on; each signal measures that confidence
in a different way, always oriented so that a higher value means "more likely a member":

* ``loss`` - the negated cross-entropy ``log p_y`` (Yeom et al. 2018);
* ``confidence`` - the largest probability (Salem et al. 2019, ML-Leaks);
* ``entropy`` - the negated entropy of the prediction (Salem et al.);
* ``modified-entropy`` - the negated modified entropy of Song & Mittal (2021), which, unlike the
  entropy, uses the label, so a confident wrong prediction does not look like a member;
* ``logit`` - the logit-scaled confidence ``log p_y - log (1 - p_y)`` of LiRA (Carlini et al.
  2022), approximately Gaussian across models, which is what LiRA's parametric test needs.

Probabilities arrive in float64 (the edge answers with a float64 softmax; in-process queries
compute the same); ``1 - p_y`` is computed as the sum of the other classes so that it does not
round to zero for confident predictions.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-30


def _true(probs, labels) -> tuple[np.ndarray, np.ndarray]:
    """``p_y`` (N,) and the other classes' probabilities (N, K) with the true class zeroed."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    others = np.where(np.arange(p.shape[1])[None] == y[:, None], 0.0, p)
    return p[np.arange(len(p)), y], others


def loss(probs, labels) -> np.ndarray:
    p_y, _ = _true(probs, labels)
    return np.log(p_y + EPS)


def confidence(probs, labels=None) -> np.ndarray:
    return np.asarray(probs, dtype=np.float64).max(axis=1)


def entropy(probs, labels=None) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    return (p * np.log(p + EPS)).sum(axis=1)


def modified_entropy(probs, labels) -> np.ndarray:
    p_y, wrong = _true(probs, labels)
    value = -wrong.sum(axis=1) * np.log(p_y + EPS) - (wrong * np.log(np.maximum(1.0 - wrong, EPS))).sum(axis=1)
    return -value


def logit(probs, labels) -> np.ndarray:
    p_y, others = _true(probs, labels)
    return np.log(p_y + EPS) - np.log(others.sum(axis=1) + EPS)


SIGNALS = {"loss": loss, "confidence": confidence, "entropy": entropy, "modified-entropy": modified_entropy,
           "logit": logit}

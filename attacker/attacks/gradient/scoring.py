"""Scoring a reconstructed batch: match each reconstruction to an original first, then measure.

A gradient is a sum over the batch, so it says nothing about the order of its images: an attack
returns them in any order. Each original is paired with one reconstruction by the Hungarian
algorithm on their MSE (``scipy.optimize.linear_sum_assignment``: the pairing with the smallest
total error), and the pairs are scored with :func:`attacker.metrics.image_metrics` (MSE, PSNR,
SSIM with scikit-image; PSNR capped at ``PSNR_CAP``). LPIPS needs pretrained network weights that
are not shipped: given a loaded :class:`attacker.lpips.LPIPS` it is computed, else it is reported
as ``None`` with ``lpips_note`` saying it was not computed, never a made-up number. Labels are
scored as a multiset (the fraction of the batch's labels recovered, whatever their order), which
is what iDLG's recovery and DLG's argmax give.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from attacker.metrics import PSNR_CAP, image_metrics

LPIPS_NOT_COMPUTED = "not computed (no LPIPS weights given: --lpips-weights PATH)"


def match(reconstructions, originals) -> np.ndarray:
    """``order`` such that ``reconstructions[order[i]]`` is paired with ``originals[i]`` (minimum total MSE)."""
    rec = torch.as_tensor(reconstructions, dtype=torch.float64).flatten(1)
    ref = torch.as_tensor(originals, dtype=torch.float64).flatten(1)
    if rec.shape != ref.shape:
        raise ValueError(f"reconstructions {tuple(rec.shape)} and originals {tuple(ref.shape)} differ in shape")
    cost = torch.cdist(ref, rec).pow(2) / ref.shape[1]
    rows, cols = linear_sum_assignment(cost.numpy())
    return cols[np.argsort(rows)]


def label_accuracy(recovered, true) -> float:
    """Fraction of the batch's labels recovered, as multisets (order does not matter)."""
    a, b = Counter(np.asarray(recovered).tolist()), Counter(np.asarray(true).tolist())
    return sum((a & b).values()) / max(len(np.asarray(true)), 1)


def score(reconstructions, originals, recovered_labels=None, true_labels=None, lpips=None) -> dict:
    """Metrics of a reconstructed batch after Hungarian matching (summaries and per-image lists)."""
    order = match(reconstructions, originals)
    matched = torch.as_tensor(reconstructions)[torch.as_tensor(order)]
    out = image_metrics(matched, originals, psnr_cap=PSNR_CAP)
    out["order"] = order.tolist()
    if lpips is not None:
        values = lpips(matched, torch.as_tensor(originals)).tolist()
        out.update(lpips=values, lpips_mean=float(np.mean(values)), lpips_std=float(np.std(values)))
    else:
        out.update(lpips=None, lpips_mean=None, lpips_std=None, lpips_note=LPIPS_NOT_COMPUTED)
    if recovered_labels is not None and true_labels is not None:
        out["label_accuracy"] = label_accuracy(recovered_labels, true_labels)
    return out

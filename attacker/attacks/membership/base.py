"""The membership family's calling shape: ``score(samples) -> scores``, higher = more likely a member.

A membership attack is asked about labelled samples ``(x, y)``: images (N, C, H, W) in [0, 1] and
their true labels (N,). It answers one float per sample; the ROC over those scores is the attack's
result (:mod:`attacker.membership_metrics`). Attacks that also commit to a yes/no decision chose
their ``threshold`` while fitting, on shadow data the attacker owns (never on the target's
members), and ``predict`` applies it.

What configures an attack and checks its knowledge is family-agnostic (:mod:`..base`); what an
attacker may know is in :mod:`.knowledge`.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import Attack, AttackParameterError


def as_samples(samples, input_shape=None, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` as float32 images (N, C, H, W) in [0, 1] and int64 labels, checked."""
    if not isinstance(samples, (tuple, list)) or len(samples) != 2:
        raise AttackParameterError("samples must be a pair (images, labels)")
    x, y = samples
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    y = np.asarray(y)
    if x.ndim != 4 or len(x) == 0:
        raise AttackParameterError(f"sample images must be a non-empty batch (N, C, H, W), got shape {x.shape}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise AttackParameterError(f"sample images must have shape (N, {', '.join(map(str, input_shape))}), "
                                   f"got {x.shape}")
    if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise AttackParameterError("sample images must be finite and in [0, 1]")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise AttackParameterError(f"sample labels must be {len(x)} integers, got shape {y.shape} {y.dtype}")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise AttackParameterError(f"sample labels must lie in 0..{num_classes - 1}")
    return x, y.astype(np.int64)


class MembershipAttack(Attack):
    """``Attack(params).fit(knowledge).score(samples)``; ``predict`` where a threshold was chosen."""

    family = "membership"

    def __init__(self, params=None, **overrides):
        super().__init__(params, **overrides)
        self.threshold: float | None = None  # chosen on the attacker's own shadow data by fit()
        self._stats: dict = {}

    def fit_stats(self) -> dict:
        return dict(self._stats)

    def _samples(self, samples) -> tuple[np.ndarray, np.ndarray]:
        self._require_fit("score")
        return as_samples(samples, self.knowledge.input_shape, self.knowledge.num_classes)

    def score(self, samples) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, samples) -> np.ndarray:
        """Member (True) / non-member decisions at the threshold chosen while fitting."""
        if self.threshold is None:
            raise AttackParameterError(f"the {self.key()} attack chose no decision threshold; rank its scores")
        return self.score(samples) >= self.threshold

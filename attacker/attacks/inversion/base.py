"""The inversion family's calling shape: ``reconstruct(features) -> images``.

Inversion attacks (He et al. 2019; later classifier inversion) see the features an edge sent and
return the private inputs they came from: (N, *feature_shape) -> (N, C, H, W) in [0, 1]. What
configures and feeds an attack is family-agnostic (:mod:`attacker.attacks.base`).
"""

from __future__ import annotations

import torch

from ..base import Attack


class InversionAttack(Attack):
    """``Attack(params).fit(knowledge).reconstruct(features)``."""

    family = "inversion"

    def reconstruct(self, features) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

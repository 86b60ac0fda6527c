"""The attacker's shadow experiments: its own data cut into known members and non-members.

Every attack that learns from shadow models (the threshold attacks' threshold, Shokri's attack
classifier, LiRA's offline reference models, Nasr's attack network) draws shadow ``j`` the same
way: ``shadow_halves(len(aux), size, seed + j)`` picks disjoint random members and non-members of
the auxiliary data, and the shadow is trained on the members with the target's recipe and seed
``seed + j``. Equal draws give equal training specs, so shadow ``j`` is one stored model shared by
every attack and trial (:func:`models.reference.obtain_models`).
"""

from __future__ import annotations

import numpy as np

from ..base import AttackParameterError
from .knowledge import MembershipKnowledge


def shadow_halves(count: int, size: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random (members, non-members) positions in ``count`` aux samples, ``size`` each."""
    size = size or count // 2
    if 2 * size > count:
        raise AttackParameterError(f"shadow_size {size} needs {2 * size} auxiliary samples, the attacker has {count}")
    perm = np.random.default_rng(seed).permutation(count)
    return perm[:size], perm[size:2 * size]


def shadow_signals(knowledge: MembershipKnowledge, features, size: int | None, seed: int):
    """Train one shadow on half the aux data; ``features(query, x, y)`` of its members and the rest.

    Returns ``(values, is_member)`` over both halves, members first.
    """
    inside, outside = shadow_halves(len(knowledge.aux_x), size, seed)
    query = knowledge.train_like_target(inside, seed)
    values = [features(query, knowledge.aux_x[idx], knowledge.aux_y[idx]) for idx in (inside, outside)]
    return np.concatenate(values), np.r_[np.ones(len(inside), bool), np.zeros(len(outside), bool)]

"""The attacker's shadow experiments: its own data cut into known members and non-members.

Every attack that learns from shadow models (the threshold attacks' threshold, Shokri's attack
classifier, LiRA's offline reference models, Nasr's attack network) draws shadow ``j`` the same
way: ``shadow_halves(len(aux), size, seed + j)`` picks disjoint random members and non-members of
the auxiliary data, and the shadow is trained on the members with the target's recipe and seed
``seed + j``. Equal draws give equal training specs, so shadow ``j`` is one stored model shared by
every attack and trial (:func:`models.reference.obtain_models`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..base import AttackParameterError, AttackParams, check_positive, check_positive_int
from .knowledge import MembershipKnowledge


@dataclass
class ShadowParams(AttackParams):
    """Parameters of every attack that learns from shadow models: their size and the seed."""

    shadow_size: int | None = None   # members per shadow (as many non-members); default: knowledge.shadow_size()
    seed: int = 0

    def validate(self) -> None:
        if self.shadow_size is not None:
            check_positive_int("shadow_size", self.shadow_size)
        check_positive_int("seed", self.seed, 0)


@dataclass
class AttackNetworkParams(ShadowParams):
    """... and of an attack network trained on the shadows' members and non-members."""

    shadow_models: int = 4
    hidden: int = 128
    epochs: int = 200
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-7

    def validate(self) -> None:
        super().validate()
        for name in ("shadow_models", "hidden", "epochs", "batch_size"):
            check_positive_int(name, getattr(self, name))
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)


def shadow_halves(count: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random (members, non-members) positions in ``count`` aux samples, ``size`` each."""
    if 2 * size > count:
        raise AttackParameterError(f"shadow_size {size} needs {2 * size} auxiliary samples, the attacker has {count}")
    perm = np.random.default_rng(seed).permutation(count)
    return perm[:size], perm[size:2 * size]


def shadow_signals(knowledge: MembershipKnowledge, features, size: int | None, seeds: list[int], train=None):
    """Train one shadow per seed on half the aux data; ``features(shadow, x, y)`` of its members and the rest.

    The shadows are asked for together (``knowledge.train_many_like_target``: one
    :func:`models.reference.obtain_models` call, so on CUDA the missing ones train side by side),
    or one by one through ``train(indices, seed)`` when given. Returns ``(values, is_member)`` over
    every shadow, in seed order, each shadow's members first.
    """
    aux_x, aux_y = knowledge.aux_x, knowledge.aux_y
    halves = [shadow_halves(len(aux_x), knowledge.shadow_size(size), seed) for seed in seeds]
    if train is None:
        shadows = knowledge.train_many_like_target([(aux_x[inside], aux_y[inside], seed)
                                                    for (inside, _), seed in zip(halves, seeds)])
    else:
        shadows = [train(inside, seed) for (inside, _), seed in zip(halves, seeds)]
    values, is_member = [], []
    for (inside, outside), shadow in zip(halves, shadows):
        for idx, member in ((inside, True), (outside, False)):
            values.append(features(shadow, aux_x[idx], aux_y[idx]))
            is_member.append(np.full(len(idx), member))
    return np.concatenate(values), np.concatenate(is_member)

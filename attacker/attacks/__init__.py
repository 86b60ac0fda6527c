"""Model-inversion attacks on split inference (He, Zhang, Lee, ACSAC 2019) and their registry.

Every attack has one shape: ``Attack(params).fit(knowledge).reconstruct(features)`` where the
knowledge object holds only what the threat model allows (see :mod:`.knowledge`) and
``reconstruct`` maps features (N, *feature_shape) to images (N, C, H, W) in [0, 1].

=========== ===================== ===================== =====================================
name        attack                params                knowledge
=========== ===================== ===================== =====================================
whitebox    :class:`WhiteBoxAttack`  :class:`WhiteBoxParams`  :class:`WhiteBoxKnowledge` (the head)
blackbox    :class:`BlackBoxAttack`  :class:`BlackBoxParams`  :class:`BlackBoxKnowledge` (queries + aux)
queryfree   :class:`QueryFreeAttack` :class:`QueryFreeParams` :class:`QueryFreeKnowledge` (tail + aux)
=========== ===================== ===================== =====================================

``create("whitebox", iterations=2000)`` builds one by name (parameters validated up front).
"""

from __future__ import annotations

from models.errors import SplitlabError

from .base import AttackParameterError, AttackParams, InversionAttack
from .blackbox import BlackBoxAttack, BlackBoxParams, inverse_network
from .knowledge import (BlackBoxKnowledge, QueryFreeKnowledge, WhiteBoxKnowledge, head_query, noise_images,
                        onnx_query)
from .queryfree import QueryFreeAttack, QueryFreeParams, shadow_head
from .whitebox import SPLIT_DEFAULTS, WhiteBoxAttack, WhiteBoxParams, rmle_invert, total_variation

ATTACKS: dict[str, type[InversionAttack]] = {
    "whitebox": WhiteBoxAttack,
    "blackbox": BlackBoxAttack,
    "queryfree": QueryFreeAttack,
}


def attack_class(name: str) -> type[InversionAttack]:
    if name not in ATTACKS:
        raise SplitlabError(f"unknown attack {name!r}; known: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def create(name: str, params=None, **overrides) -> InversionAttack:
    """An attack by registry name, with parameters from a dataclass, a dict and/or keywords."""
    return attack_class(name)(params, **overrides)


__all__ = [
    "ATTACKS", "AttackParameterError", "AttackParams", "BlackBoxAttack", "BlackBoxKnowledge", "BlackBoxParams",
    "InversionAttack", "QueryFreeAttack", "QueryFreeKnowledge", "QueryFreeParams", "SPLIT_DEFAULTS",
    "WhiteBoxAttack", "WhiteBoxKnowledge", "WhiteBoxParams", "attack_class", "create", "head_query",
    "inverse_network", "noise_images", "onnx_query", "rmle_invert", "shadow_head", "total_variation",
]

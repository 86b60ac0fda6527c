"""Membership inference: was this sample in the target's training set?

Every attack has one shape: ``Attack(params).fit(knowledge).score(samples)``, where ``samples``
is ``(images, labels)`` and the scores are higher for likelier members. The knowledge objects
(:mod:`.knowledge`) hold only what the threat model allows; none holds the target's member list.

=========== ======================== ======================= ====================================
name        attack                   params                  knowledge
=========== ======================== ======================= ====================================
threshold   :class:`ThresholdAttack` :class:`ThresholdParams` :class:`MembershipKnowledge`
shokri      :class:`ShokriAttack`    :class:`ShokriParams`    :class:`MembershipKnowledge`
lira        :class:`LiRAAttack`      :class:`LiRAParams`      :class:`MembershipKnowledge`
nasr        :class:`NasrAttack`      :class:`NasrParams`      :class:`WhiteBoxMembershipKnowledge`
=========== ======================== ======================= ====================================

Shadow draws and the parameters every shadow-trained attack shares: :mod:`.shadows`; the
confidence signals: :mod:`.signals`; the federated and fine-tuning observations: :mod:`.observations`.
Metrics and ROC plots: :mod:`attacker.membership_metrics`.
"""

from .base import MembershipAttack, as_samples
from .knowledge import (MembershipKnowledge, TargetRecipe, WhiteBoxMembershipKnowledge, edge_scores_query,
                        model_query)
from .lira import LiRAAttack, LiRAParams
from .nasr import NasrAttack, NasrParams, white_box_features
from .shokri import ShokriAttack, ShokriParams, sorted_posteriors
from .threshold import THRESHOLD_METRICS, ThresholdAttack, ThresholdParams

__all__ = [
    "LiRAAttack", "LiRAParams", "MembershipAttack", "MembershipKnowledge", "NasrAttack", "NasrParams",
    "ShokriAttack", "ShokriParams", "THRESHOLD_METRICS", "TargetRecipe", "ThresholdAttack", "ThresholdParams",
    "WhiteBoxMembershipKnowledge", "as_samples", "edge_scores_query", "model_query", "sorted_posteriors",
    "white_box_features",
]

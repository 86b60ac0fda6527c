"""Threshold attacks (Yeom et al. 2018; Salem et al. 2019, ML-Leaks; Song & Mittal 2021).

The simplest membership attack: compute one confidence signal per sample from the target's
answer (the loss, the top probability, the entropy or the modified entropy; see :mod:`.signals`)
and call every sample above a threshold a member. The ranking needs no training at all; the
threshold does, and choosing it on the target's own members would be cheating. Here it is chosen
on a shadow model the attacker trains with the target's recipe on part of its auxiliary data (as
many samples as the target trained on): the threshold that best separates the shadow's members
from as many held-out samples (maximum TPR - FPR). It
transfers to the target when shadow and target overfit alike, which is the attack's assumption.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...membership_metrics import max_advantage_threshold, membership_metrics
from ..base import check_choice
from .base import MembershipAttack
from .knowledge import MembershipKnowledge
from .shadows import ShadowParams, shadow_signals
from .signals import SIGNALS

THRESHOLD_METRICS = ("loss", "confidence", "entropy", "modified-entropy")


@dataclass
class ThresholdParams(ShadowParams):
    metric: str = "loss"

    def validate(self) -> None:
        super().validate()
        check_choice("metric", self.metric, THRESHOLD_METRICS)


class ThresholdAttack(MembershipAttack):
    name = "threshold"
    Params = ThresholdParams
    Knowledge = MembershipKnowledge

    def _signal(self, query, x, y) -> np.ndarray:
        return SIGNALS[self.params.metric](query(x), y)

    def fit(self, knowledge: MembershipKnowledge) -> "ThresholdAttack":
        super().fit(knowledge)
        p = self.params
        values, is_member = shadow_signals(knowledge, self._signal, p.shadow_size, [p.seed])
        self.threshold = max_advantage_threshold(values, is_member)
        shadow = membership_metrics(values, is_member, self.threshold)
        self._stats = {"shadow_auc": shadow["auc"], "shadow_advantage": shadow["advantage"],
                       "threshold": self.threshold}
        return self

    def score(self, samples) -> np.ndarray:
        x, y = self._samples(samples)
        return self._signal(self.knowledge.query, x, y)

"""Attribute inference: a private attribute the target was never trained on (UTKFace race, age band),
inferred from what the attacker observes of the victims' requests.

=================== ============================== ====================================================
registry key        attack                         knowledge (:mod:`.knowledge`)
=================== ============================== ====================================================
attribute/features  :class:`FeatureAttributeAttack` :class:`FeatureKnowledge`: the head's features
attribute/outputs   :class:`OutputAttributeAttack`  :class:`OutputKnowledge`: the released probabilities
=================== ============================== ====================================================

Both: ``create(key, **params).fit(knowledge).infer(observations) -> labels``. The attributes as
classes: :mod:`.attributes`; the attacker's images, the victims and the scores: :mod:`.evaluation`.
"""

from .attack import AttributeAttack, AttributeParams, FeatureAttributeAttack, OutputAttributeAttack
from .attributes import ATTRIBUTES, attribute_classes, attribute_labels
from .evaluation import attacker_and_victims, attacker_indices, attribute_metrics
from .knowledge import AttributeKnowledge, FeatureKnowledge, OutputKnowledge

__all__ = ["ATTRIBUTES", "AttributeAttack", "AttributeKnowledge", "AttributeParams", "FeatureAttributeAttack",
           "FeatureKnowledge", "OutputAttributeAttack", "OutputKnowledge", "attacker_and_victims", "attacker_indices",
           "attribute_classes", "attribute_labels", "attribute_metrics"]

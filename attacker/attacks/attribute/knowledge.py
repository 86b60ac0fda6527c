"""What an attribute-inference attacker knows: a way to observe what the target computes for images
of its own, and those images' private attribute. Never the victims' attributes, never their images.

The attacker owns labelled auxiliary data (in the testbed: the parts of UTKFace's train split that
the privacy scheme keeps away from the target's members, see :mod:`models.splits`) and learns the
map *observation -> attribute* on it; then it reads the victims' observations and applies the map.
Two observations, one knowledge class each, so that ``fit`` refuses the other:

* :class:`FeatureKnowledge` - the split features the edge sends. The attacker observes its own
  images' features the way the black-box inversion attacker does (He et al.'s black-box setting,
  :class:`~attacker.attacks.inversion.knowledge.BlackBoxKnowledge`, whose source resolution this
  reuses): live, each image sent to the edge's public ``/v1/infer`` and its features read back at
  the tap by request id; offline, through the head (in hand, or ``head.onnx`` from the artifact
  store). The victims' features are what the tap recorded for their requests.
* :class:`OutputKnowledge` - the released output: the probabilities the edge's ``/v1/infer``
  answers (``scores``), equal to a softmax of the logits the tap records in the cloud's reply.
  Live through the edge, or in-process from the stored model with the same float64 softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np
import torch

from ..base import AttackParameterError, as_float_tensor, check_positive_int
from ..knowledge import Knowledge, KnowledgeSource


@dataclass
class AttributeKnowledge(Knowledge):
    """``query(images) -> observations`` and labelled auxiliary images (``aux_labels`` in ``0..num_classes-1``)."""

    AUX: ClassVar[str] = "labelled"
    OBSERVES: ClassVar[str] = ""

    query: Callable
    aux_images: torch.Tensor
    aux_labels: np.ndarray
    num_classes: int
    origin: str = "a query function"

    def __post_init__(self) -> None:
        if not callable(self.query):
            raise AttackParameterError(f"query must be callable: images (N, C, H, W) -> {self.OBSERVES}")
        check_positive_int("num_classes", self.num_classes, 2)
        self.aux_images = as_float_tensor("aux_images", self.aux_images)
        if self.aux_images.ndim != 4 or self.aux_images.min() < 0 or self.aux_images.max() > 1:
            raise AttackParameterError("aux_images must be images (N, C, H, W) in [0, 1]")
        labels = np.asarray(self.aux_labels)
        if labels.shape != (len(self.aux_images),) or not np.issubdtype(labels.dtype, np.integer):
            raise AttackParameterError(f"aux_labels must be {len(self.aux_images)} integers, got {labels.shape} "
                                       f"{labels.dtype}")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise AttackParameterError(f"aux_labels must lie in 0..{self.num_classes - 1}")
        self.aux_labels = labels.astype(np.int64)
        self.queries = 0

    def observe(self, images: torch.Tensor, batch: int = 256) -> np.ndarray:
        """The attacker's observations of ``images`` (counted in ``queries``)."""
        out = []
        for i in range(0, len(images), batch):
            part = images[i:i + batch]
            self.queries += len(part)
            obs = self.query(part)
            out.append(obs.detach().cpu().numpy() if isinstance(obs, torch.Tensor) else np.asarray(obs))
        return np.concatenate(out).astype(np.float32)

    @classmethod
    def _labels(cls, source: KnowledgeSource, num_classes: int | None) -> tuple[np.ndarray, int]:
        labels = np.asarray(source.aux_labels)
        return labels, int(num_classes or (labels.max() + 1))


class FeatureKnowledge(AttributeKnowledge):
    """Observes the head's features (see the module doc)."""

    THREAT_MODEL: ClassVar[str] = "attribute (features)"
    OBSERVES: ClassVar[str] = "features"

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        from ..inversion.knowledge import BlackBoxKnowledge

        return BlackBoxKnowledge.missing(source)

    @classmethod
    def from_source(cls, source: KnowledgeSource, num_classes: int | None = None) -> "FeatureKnowledge":
        from ..inversion.knowledge import BlackBoxKnowledge

        queries = BlackBoxKnowledge.from_source(source)  # the same query access as the black-box inverter
        labels, k = cls._labels(source, num_classes)
        return cls(queries.query, queries.aux_images, labels, k, queries.origin)


class OutputKnowledge(AttributeKnowledge):
    """Observes the released probabilities (see the module doc)."""

    THREAT_MODEL: ClassVar[str] = "attribute (outputs)"
    OBSERVES: ClassVar[str] = "probabilities"

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        if source.query is None and source.edge_url is None and source.artifacts is None:
            return ("the output attribute attack needs a query source: a query function (images -> probabilities), "
                    "the edge's URL, or the artifact store's model")
        if source.query is None and not source.deployment_id:
            return "the output attribute attack needs a deployment id to query"
        return None

    @classmethod
    def from_source(cls, source: KnowledgeSource, num_classes: int | None = None) -> "OutputKnowledge":
        from ..queries import probability_query

        query, where = probability_query(source)
        labels, k = cls._labels(source, num_classes)
        return cls(query, source.aux_images, labels, k, f"labelled auxiliary images, {where}")

"""What a classifier-inversion attacker knows: a way to score images for each class.

Fredrikson et al. (CCS 2015) invert a face recogniser: the attacker knows a person's class (their
name) and the model's confidence for any image it makes up, and searches the image space for the
one the model is surest is that person. Three threat models, one class each:

* :class:`ClassifierWhiteBoxKnowledge` - the whole classifier as a differentiable module: the
  model provider's stored model, or in the split deployment the head the edge downloaded (the
  ``GetHead`` payload the tap captured, as the white-box inverter takes it) joined to the tail the
  cloud serves. Exact gradients.
* :class:`ClassifierQueryKnowledge` - the public API only: ``query(images) -> probabilities``, the
  edge's ``/v1/infer`` answer (``scores``), or the stored model queried in-process with the same
  float64 softmax. No gradients: the attack estimates them from queries. Optionally the
  attacker's own face images (``aux_images``), for the eigenface search space.
* :class:`ClassifierQueryFreeKnowledge` - the tail only (the cloud's view: no head, no queries) and
  labelled auxiliary images. He et al.'s query-free attack applied to classifier inversion: the
  attacker trains a shadow head so that shadow head + the known tail classifies its auxiliary
  images (:class:`.queryfree.QueryFreeAttack`'s training, reused as it is), then inverts through
  shadow head + tail with exact gradients. The tail alone, without auxiliary data, maps features
  to classes: inverting it gives features, not images, and :meth:`ClassifierKnowledge.from_source`
  says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import nn

from ..base import AttackParameterError, check_positive_int
from ..knowledge import Knowledge, KnowledgeError, KnowledgeSource

TAIL_ONLY = ("the tail alone maps features to classes: inverting it reconstructs features, not images; an image "
             "needs the head (a captured GetHead payload or the artifact store), queries (the edge's URL), or "
             "labelled auxiliary images (aux_images, aux_labels) to train a shadow head through the tail (query-free)")
SETTINGS = ("white-box", "api", "query-free")


@dataclass
class ClassifierKnowledge(Knowledge):
    """Base: the input shape and the number of classes; ``log_probs(images)`` per subclass."""

    THREAT_MODEL: ClassVar[str] = "classifier inversion"

    input_shape: tuple[int, int, int]
    num_classes: int

    def __post_init__(self) -> None:
        try:
            self.input_shape = tuple(int(v) for v in self.input_shape)
        except (TypeError, ValueError):
            raise AttackParameterError(f"input_shape must be (C, H, W), got {self.input_shape!r}") from None
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise AttackParameterError(f"input_shape must be (C, H, W), got {self.input_shape!r}")
        check_positive_int("num_classes", self.num_classes, 2)

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        if source.tail is not None and source.query is None and source.edge_url is None and source.head is None:
            return None if _labelled_aux(source) or source.artifacts is not None else TAIL_ONLY
        if source.query is None and source.edge_url is None and source.head is None and source.artifacts is None:
            return (
                "classifier inversion needs the classifier: a query function or the edge's URL (black-box), or the "
                "head and tail (in hand, captured, or in the artifact store)")
        if not source.deployment_id and source.query is None and source.head is None:
            return "classifier inversion needs a deployment id to find the classifier"
        return None

    @classmethod
    def from_source(cls, source: KnowledgeSource, num_classes: int | None = None,
                    setting: str | None = None) -> "ClassifierKnowledge":
        """The ``setting`` asked for; else queries where the source offers them (a query function, the
        edge), else query-free where it has a tail but no head, else the white-box model."""
        record = source.deployment_record() or {}
        k = int(num_classes or record.get("num_classes") or 0)
        if not k:
            raise KnowledgeError("classifier inversion needs the number of classes (num_classes)")
        if setting not in (None, *SETTINGS):
            raise KnowledgeError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
        if setting is None:
            setting = ("api" if source.query is not None or source.edge_url is not None else
                       "query-free" if source.tail is not None and source.head is None and source.captures is None
                       and _labelled_aux(source) else "white-box")
        kinds = {"api": ClassifierQueryKnowledge, "query-free": ClassifierQueryFreeKnowledge,
                 "white-box": ClassifierWhiteBoxKnowledge}
        return kinds[setting].from_source(source, k)


@dataclass
class ClassifierWhiteBoxKnowledge(ClassifierKnowledge):
    model: nn.Module = None
    origin: str = "a torch module"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.model, nn.Module):
            raise AttackParameterError(
                f"model must be a torch module (images -> logits), got {type(self.model).__name__}")
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_source(cls, source: KnowledgeSource, num_classes: int | None = None) -> "ClassifierWhiteBoxKnowledge":
        from .knowledge import WhiteBoxKnowledge

        if source.head is None and source.captures is None and source.artifacts is None:
            raise KnowledgeError(TAIL_ONLY)
        head = WhiteBoxKnowledge.from_source(source)
        if source.tail is not None:
            tail, where = source.tail, "the tail in hand"
        elif source.artifacts is not None:
            from models.loading import load_tail

            tail, where = load_tail(source.artifacts, source.require_deployment("the tail"))[0], "the stored tail"
        else:
            raise KnowledgeError("white-box classifier inversion needs the tail too (in hand or the artifact store)")
        return cls(head.input_shape, int(num_classes or source.deployment_record()["num_classes"]),
                   nn.Sequential(head.head, tail), f"{head.origin} joined to {where}")


@dataclass
class ClassifierQueryKnowledge(ClassifierKnowledge):
    query: Callable = None
    origin: str = "a query function"
    aux_images: Any = None     # optional: faces the attacker owns, for the eigenface search space
    aux_labels: Any = None     # optional: their classes (a class's own images are left out of its basis)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.query):
            raise AttackParameterError("query must be callable: images (N, C, H, W) -> probabilities (N, classes)")
        self.queries = 0

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        self.queries += len(images)
        return torch.as_tensor(np.asarray(self.query(images.detach().cpu().numpy())), dtype=torch.float64)

    @classmethod
    def from_source(cls, source: KnowledgeSource, num_classes: int | None = None) -> "ClassifierQueryKnowledge":
        from ..queries import probability_query

        query, where = probability_query(source)
        return cls(source.input_shape(), int(num_classes or source.deployment_record()["num_classes"]), query, where,
                   source.aux_images, source.aux_labels)


@dataclass
class ClassifierQueryFreeKnowledge(ClassifierKnowledge):
    """The tail and labelled auxiliary images, as :class:`.knowledge.QueryFreeKnowledge` holds them."""

    queryfree: Any = None
    origin: str = "a tail and labelled auxiliary images"

    def __post_init__(self) -> None:
        super().__post_init__()
        from .knowledge import QueryFreeKnowledge

        if not isinstance(self.queryfree, QueryFreeKnowledge):
            raise AttackParameterError(f"queryfree must be a QueryFreeKnowledge (the tail and labelled auxiliary "
                                       f"images), got {type(self.queryfree).__name__}")
        labels = self.queryfree.aux_labels
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise AttackParameterError(f"aux_labels must be class indices 0..{self.num_classes - 1}")

    @classmethod
    def from_source(cls, source: KnowledgeSource, num_classes: int | None = None) -> "ClassifierQueryFreeKnowledge":
        from .knowledge import QueryFreeKnowledge

        if not _labelled_aux(source):
            raise KnowledgeError(TAIL_ONLY)
        qk = QueryFreeKnowledge.from_source(source)
        return cls(qk.input_shape, int(num_classes or qk.num_classes), qk, f"query-free: {qk.origin}")


def _labelled_aux(source: KnowledgeSource) -> bool:
    return source.aux_images is not None and source.aux_labels is not None

"""What the attacker knows in each of He et al.'s settings, and nothing more.

Each attack's ``fit`` takes exactly one of these; none of them holds the victim's private inputs.

* :class:`WhiteBoxKnowledge` - the head itself (structure and weights): from a captured
  ``GetHead`` payload (ONNX bytes, turned into a differentiable module, see ``heads``), from the
  artifact store (the model provider attacks), or a torch module.
* :class:`BlackBoxKnowledge` - a query function ``images (N, C, H, W) -> features`` (live: chosen
  inputs sent to the edge's public ``/v1/infer`` with the features read at the tap; offline: the
  head run locally, see :func:`head_query` / :func:`onnx_query`) and auxiliary images: the target's
  training set, a disjoint set of the same distribution, or random noise (:func:`noise_images`).
* :class:`QueryFreeKnowledge` - the frozen tail, labelled auxiliary images, the feature shape and
  the deployment's architecture name and split (to build a same-structure shadow head); no queries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.errors import SplitlabError

from .base import AttackParameterError, as_float_tensor
from .heads import head_from_onnx

BLACKBOX_SETTINGS = ("same-set", "same-distribution", "random-noise", "other")


def _shape(name: str, value) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise AttackParameterError(f"{name} must be a sequence of positive integers, got {value!r}") from None
    if not shape or min(shape) < 1:
        raise AttackParameterError(f"{name} must be a sequence of positive integers, got {value!r}")
    return shape


def _images(name: str, value, input_shape) -> torch.Tensor:
    x = as_float_tensor(name, value, tuple(input_shape))
    if x.min() < 0 or x.max() > 1:
        raise AttackParameterError(f"{name} must be images in [0, 1] (got values {x.min():.3g}..{x.max():.3g})")
    return x


def probe_feature_shape(head: nn.Module, input_shape) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(head(torch.zeros(1, *input_shape)).shape[1:])


@dataclass
class WhiteBoxKnowledge:
    """The head as a frozen differentiable module; ``split`` picks per-split attack defaults."""

    head: nn.Module
    input_shape: tuple[int, int, int]
    split: str | None = None
    source: str = "torch"
    feature_shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if not isinstance(self.head, nn.Module):
            raise AttackParameterError(f"head must be a torch module, got {type(self.head).__name__}")
        self.input_shape = _shape("input_shape", self.input_shape)
        self.head.eval()
        for p in self.head.parameters():
            p.requires_grad_(False)
        if not self.feature_shape:
            self.feature_shape = probe_feature_shape(self.head, self.input_shape)

    @classmethod
    def from_onnx(cls, onnx_bytes: bytes, record: dict | None = None, input_shape=None) -> "WhiteBoxKnowledge":
        """From a captured ``GetHead`` payload; ``record`` (deployment.json) is optional."""
        head, method = head_from_onnx(onnx_bytes, record, input_shape)
        shape = input_shape or (record or {}).get("input_shape")
        from .heads import onnx_input_shape

        return cls(head, tuple(shape or onnx_input_shape(onnx_bytes)), (record or {}).get("split"), method)

    @classmethod
    def from_store(cls, store, deployment_id: str) -> "WhiteBoxKnowledge":
        """From the artifact store's ``head.onnx`` (the model provider is the attacker)."""
        record = store.deployment(deployment_id)
        path = store.deployment_dir(deployment_id) / "head.onnx"
        if not path.exists():
            raise SplitlabError(f"deployment {deployment_id!r} has no head.onnx ({path})")
        return cls.from_onnx(path.read_bytes(), record)


@dataclass
class BlackBoxKnowledge:
    """Query access to the head and auxiliary images (``setting`` labels where they came from)."""

    query: Callable[[torch.Tensor], object]
    aux_images: torch.Tensor
    input_shape: tuple[int, int, int]
    setting: str = "other"
    split: str | None = None

    def __post_init__(self) -> None:
        if not callable(self.query):
            raise AttackParameterError("query must be callable: images (N, C, H, W) -> features")
        if self.setting not in BLACKBOX_SETTINGS:
            raise AttackParameterError(f"setting must be one of {', '.join(BLACKBOX_SETTINGS)}, got {self.setting!r}")
        self.input_shape = _shape("input_shape", self.input_shape)
        self.aux_images = _images("aux_images", self.aux_images, self.input_shape)


@dataclass
class QueryFreeKnowledge:
    """The frozen tail, labelled auxiliary data and what the deployment record says (no head, no queries)."""

    tail: nn.Module
    aux_images: torch.Tensor
    aux_labels: torch.Tensor
    input_shape: tuple[int, int, int]
    feature_shape: tuple[int, ...]
    arch: str | None = None
    split: str | None = None
    num_classes: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.tail, nn.Module):
            raise AttackParameterError(f"tail must be a torch module, got {type(self.tail).__name__}")
        self.input_shape = _shape("input_shape", self.input_shape)
        self.feature_shape = _shape("feature_shape", self.feature_shape)
        self.aux_images = _images("aux_images", self.aux_images, self.input_shape)
        labels = torch.as_tensor(np.asarray(self.aux_labels)).long()
        if labels.shape != (len(self.aux_images),):
            raise AttackParameterError(f"aux_labels must have shape ({len(self.aux_images)},), got {tuple(labels.shape)}")
        self.aux_labels = labels
        self.tail.eval()
        for p in self.tail.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_store(cls, store, deployment_id: str, aux_images, aux_labels) -> "QueryFreeKnowledge":
        """The cloud's view: the tail and the deployment record from the artifact store."""
        from models.loading import load_tail

        tail, dep = load_tail(store, deployment_id)
        return cls(tail, aux_images, aux_labels, tuple(dep["input_shape"]), tuple(dep["feature_shape"]),
                   dep["arch"], dep["split"], dep["num_classes"])


# --- query functions and auxiliary data -------------------------------------------------------

def head_query(head: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Query the head offline with torch (benchmarks): ``images -> features``."""
    head = head.eval()

    def query(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head(images)

    return query


def onnx_query(onnx_bytes: bytes, threads: int = 1) -> Callable[[torch.Tensor], np.ndarray]:
    """Query an ONNX head with ONNX Runtime, as the edge computes it."""
    from models.onnx_runtime import head_session

    sess = head_session(bytes(onnx_bytes), threads)
    name = sess.get_inputs()[0].name

    def query(images: torch.Tensor) -> np.ndarray:
        return sess.run(None, {name: images.detach().cpu().float().numpy()})[0]

    return query


def noise_images(count: int, input_shape, seed: int = 0, kind: str = "gaussian") -> torch.Tensor:
    """He et al.'s 'random set': ``gaussian`` N(0.5, 0.25^2) clipped to [0, 1], or ``uniform``."""
    if kind not in ("gaussian", "uniform"):
        raise AttackParameterError(f"noise kind must be 'gaussian' or 'uniform', got {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    shape = (int(count), *_shape("input_shape", input_shape))
    if kind == "uniform":
        return torch.rand(shape, generator=gen)
    return (0.5 + 0.25 * torch.randn(shape, generator=gen)).clamp_(0, 1)

"""What the attacker knows in each of He et al.'s settings, and nothing more, and where it is found.

Each attack's ``fit`` takes exactly one of these; none of them holds the victim's private inputs.
Each builds itself from a :class:`~attacker.attacks.knowledge.KnowledgeSource` with ``from_source``
(through ``knowledge_for``), taking only what its threat model allows:

* :class:`WhiteBoxKnowledge` - the head itself (structure and weights): a head in hand, the
  ``GetHead`` payload the tap captured (ONNX bytes, turned into a differentiable module, see
  ``heads``), or the artifact store (the model provider attacks: its head with the deterministic,
  differentiable parts of a feature defence - a deeper cut, an extra activation - but nothing of
  its noise, dropout or rounding). A captured head is passed over when the deployment has a feature
  defence with such random or non-differentiable parts, and when it cannot be made differentiable
  the artifact store is used instead where there is one.
* :class:`BlackBoxKnowledge` - a query function ``images (N, C, H, W) -> features`` (live: chosen
  inputs sent to the edge's public ``/v1/infer`` with the features read at the tap; offline: the
  head run locally, see :mod:`attacker.attacks.queries`) and auxiliary images: the target's
  training set, a disjoint set of the same distribution, or random noise (:func:`noise_images`).
  Its ``feature_layout`` (``nchw``, ``nhwc``, ``tokens``: the record's, see
  :meth:`KnowledgeSource.feature_layout`) tells the inverse network where the channels are.
* :class:`QueryFreeKnowledge` - the frozen tail, labelled auxiliary images, the feature shape and
  the deployment's architecture name, split and ``dp_compatible`` (to build a same-structure shadow
  head); no queries.

An *adaptive* attacker (``KnowledgeSource.adaptive``) also knows the deployment's feature defence
from its record and attacks through it: each knowledge says so (``adaptive``) and carries the
defence in the form its attack applies it (:mod:`.known_defence`); a naive one carries none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.architectures import FEATURE_LAYOUTS
from models.defences import features as fdef
from models.errors import SplitlabError

from ..base import AttackParameterError, as_float_tensor
from ..knowledge import Knowledge, KnowledgeError, KnowledgeSource, record_layout
from ..queries import edge_query, head_query, onnx_query
from .heads import head_from_onnx, onnx_input_shape
from .known_defence import has_layers, known_chain

BLACKBOX_SETTINGS = ("same-set", "same-distribution", "random-noise", "other")

log = logging.getLogger("attacker.attacks")


def _shape(name: str, value) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise AttackParameterError(f"{name} must be a sequence of positive integers, got {value!r}") from None
    if not shape or min(shape) < 1:
        raise AttackParameterError(f"{name} must be a sequence of positive integers, got {value!r}")
    return shape


def _check_layout(layout) -> None:
    if layout not in FEATURE_LAYOUTS:
        raise AttackParameterError(f"feature_layout must be one of {', '.join(FEATURE_LAYOUTS)}, got {layout!r}")


def _images(name: str, value, input_shape) -> torch.Tensor:
    x = as_float_tensor(name, value, tuple(input_shape))
    if x.min() < 0 or x.max() > 1:
        raise AttackParameterError(f"{name} must be images in [0, 1] (got values {x.min():.3g}..{x.max():.3g})")
    return x


def probe_feature_shape(head: nn.Module, input_shape) -> tuple[int, ...]:
    with torch.no_grad():
        return tuple(head(torch.zeros(1, *input_shape)).shape[1:])


def _aux_words(source: KnowledgeSource, labelled: bool = False) -> str:
    """``2000 labelled auxiliary images (mnist:train:2000, setting same-set)``."""
    details = [d for d in (source.aux_name, source.aux_setting and f"setting {source.aux_setting}") if d]
    return (f"{len(source.aux_images)} {'labelled ' if labelled else ''}auxiliary images"
            + (f" ({', '.join(details)})" if details else ""))


@dataclass
class WhiteBoxKnowledge(Knowledge):
    """The head as a frozen differentiable module; ``split`` picks per-split attack defaults.

    ``defended_head``: where the deployment's defences are random or rounding (noise, dropout,
    quantisation), the head with those defences as the deployment record specifies them
    (:func:`models.defences.features.adaptive_head`: fresh draws per call, rounding
    straight-through, dropout as its scale), and ``defences`` that spec. The attacker knows the
    defence's spec, not its draws: an adaptive attack optimises through ``defended_head``, a naive
    one through ``head`` (the defence's deterministic part only). ``adaptive``: the attacker attacks
    through the defence (``KnowledgeSource.adaptive``; ``WhiteBoxParams.adaptive`` does the same).
    """

    THREAT_MODEL = "white-box"

    head: nn.Module
    input_shape: tuple[int, int, int]
    split: str | None = None
    source: str = "torch"
    feature_shape: tuple[int, ...] = field(default=())
    origin: str = "a torch module"
    defended_head: nn.Module | None = None
    defences: tuple = ()
    adaptive: bool = False

    def __post_init__(self) -> None:
        for name in ("head", "defended_head"):
            module = getattr(self, name)
            if module is None and name == "defended_head":
                continue
            if not isinstance(module, nn.Module):
                raise AttackParameterError(f"{name} must be a torch module, got {type(module).__name__}")
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
        self.input_shape = _shape("input_shape", self.input_shape)
        if not self.feature_shape:
            self.feature_shape = probe_feature_shape(self.head, self.input_shape)

    @classmethod
    def from_onnx(cls, onnx_bytes: bytes, record: dict | None = None, input_shape=None) -> "WhiteBoxKnowledge":
        """From a captured ``GetHead`` payload; ``record`` (deployment.json) is optional."""
        head, method = head_from_onnx(onnx_bytes, record, input_shape)
        shape = input_shape or (record or {}).get("input_shape")
        return cls(head, tuple(shape or onnx_input_shape(onnx_bytes)), (record or {}).get("split"), method,
                   origin=f"an ONNX head ({method})")

    @classmethod
    def from_store(cls, store, deployment_id: str) -> "WhiteBoxKnowledge":
        """From the artifact store's ``head.onnx`` (what the edge runs, defences included)."""
        record = store.deployment(deployment_id)
        path = store.deployment_dir(deployment_id) / "head.onnx"
        if not path.exists():
            raise SplitlabError(f"deployment {deployment_id!r} has no head.onnx ({path})")
        k = cls.from_onnx(path.read_bytes(), record)
        k.origin = f"{path} ({k.source})"
        return k

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        if source.head_from == "capture" and source.captures is None:
            return "the white-box head from a capture needs the tap's capture store"
        if source.head_from == "artifacts" and source.artifacts is None:
            return "the white-box head from the artifact store needs the artifact store"
        if source.head is None and source.captures is None and source.artifacts is None:
            return ("the white-box attack needs the head: a head module, the tap's capture store (a captured GetHead "
                    "payload) or the artifact store")
        if source.head is None and not source.deployment_id:
            return "the white-box attack needs a deployment id to find the head"
        return None

    @classmethod
    def from_source(cls, source: KnowledgeSource) -> "WhiteBoxKnowledge":
        k = cls._from_source(source)
        k.adaptive = source.adaptive
        return k

    @classmethod
    def _from_source(cls, source: KnowledgeSource) -> "WhiteBoxKnowledge":
        record = source.deployment_record() or {}
        if source.head is not None and source.head_from == "auto":
            return cls(source.head, source.input_shape(), record.get("split"), origin="the head in hand")
        dep = source.deployment_id
        heads = source.captures.heads(dep) if source.captures is not None else []
        hidden = fdef.hides_from_whitebox(fdef.record_defences(record))
        if source.head_from == "capture" or (source.head_from == "auto" and heads and not hidden):
            if not heads:
                raise KnowledgeError(f"no GetHead payload for {dep!r} was captured (the edge fetched its head before "
                                     "the tap ran, or from its cache); take the head from the artifact store instead")
            try:
                return cls._captured(source, heads)
            except SplitlabError as exc:
                if source.head_from == "capture" or source.artifacts is None:
                    raise
                log.warning("captured head of %s unusable (%s); using the artifact store", dep, exc)
        if source.artifacts is None:
            raise KnowledgeError(f"no captured head for {dep!r} and no artifact store: the white-box attack needs "
                                 "the head")
        return cls._provider(source, record)

    @classmethod
    def _captured(cls, source: KnowledgeSource, heads: list) -> "WhiteBoxKnowledge":
        """The newest captured head that can be made differentiable."""
        errors: list[SplitlabError] = []
        for h in heads:
            info = {"arch": h.arch, "split": h.split, "input_shape": h.input_shape, "feature_shape": h.feature_shape}
            if h.num_classes:
                info["num_classes"] = h.num_classes
            try:
                k = cls.from_onnx(source.captures.head_bytes(h.sha256), info, tuple(h.input_shape) or None)
            except SplitlabError as exc:
                errors.append(exc)
                continue
            k.origin = f"the head captured at the tap (captured GetHead payload sha256 {h.sha256[:16]}, {k.source})"
            return k
        raise errors[-1]

    @classmethod
    def _provider(cls, source: KnowledgeSource, record: dict) -> "WhiteBoxKnowledge":
        """The model provider's head: the clean one from the model's weights, else the deployed head.onnx."""
        model_id = record.get("model_id")
        if not (model_id and model_id in source.artifacts.list_models()):
            return cls.from_store(source.artifacts, source.deployment_id)
        from models.loading import load_model

        model, _ = load_model(source.artifacts, model_id)
        chain = fdef.record_defences(record)
        defended = fdef.rebuild_head(model, record["split"], chain, tuple(record["input_shape"]))
        return cls.from_defended(defended, tuple(record["input_shape"]), "the clean head from the artifact store "
                                 "(model provider)", "artifact store")

    @classmethod
    def from_defended(cls, defended: fdef.DefendedHead, input_shape, origin: str = "a defended head in hand",
                      source: str = "torch", adaptive: bool = False) -> "WhiteBoxKnowledge":
        """What a white-box attacker knowing the deployment (its head and its defence spec) has."""
        adaptive_head = None
        if fdef.hides_from_whitebox(defended.defences):
            origin += (f"; the noise of the defence ({fdef.label(defended.defences)}) is unknown to it, its spec "
                       "(deployment.json) is known")
            adaptive_head = fdef.adaptive_head(defended)
        return cls(fdef.whitebox_head(defended), tuple(input_shape), defended.split, source, origin=origin,
                   defended_head=adaptive_head, defences=tuple(defended.defences), adaptive=adaptive)


@dataclass
class BlackBoxKnowledge(Knowledge):
    """Query access to the head and auxiliary images (``setting`` labels where they came from).

    ``defences``: the known defence the attacker applies to its queried features (drawn afresh per
    mini-batch) - an adaptive attacker whose queries return clean features; empty for a naive one
    and where the queries carry the defence already (through the deployed edge or its head.onnx).
    """

    AUX = "images"
    THREAT_MODEL = "black-box"

    query: Callable[[torch.Tensor], object]
    aux_images: torch.Tensor
    input_shape: tuple[int, int, int]
    setting: str = "other"
    split: str | None = None
    origin: str = "a query function"
    defences: tuple = ()
    adaptive: bool = False
    feature_layout: str = "nchw"

    def __post_init__(self) -> None:
        self.defences = fdef.defences(list(self.defences))
        _check_layout(self.feature_layout)
        if not callable(self.query):
            raise AttackParameterError("query must be callable: images (N, C, H, W) -> features")
        if self.setting not in BLACKBOX_SETTINGS:
            raise AttackParameterError(f"setting must be one of {', '.join(BLACKBOX_SETTINGS)}, got {self.setting!r}")
        self.input_shape = _shape("input_shape", self.input_shape)
        self.aux_images = _images("aux_images", self.aux_images, self.input_shape)

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        if source.query is None and source.edge_url is None and source.head is None and source.artifacts is None:
            return ("the black-box attack needs a query source: a query function, the edge's URL (with the tap's "
                    "capture store), a head, or the artifact store's head")
        if source.query is None and source.edge_url is not None and source.captures is None:
            return "black-box queries through the edge need the tap's capture store to read their features back"
        if source.query is None and source.head is None and not source.deployment_id:
            return "the black-box attack needs a deployment id to query"
        return None

    @classmethod
    def from_source(cls, source: KnowledgeSource) -> "BlackBoxKnowledge":
        input_shape = source.input_shape()
        dep = source.deployment_id
        record = source.deployment_record()
        clean = source.clean_queries and (source.query is not None or source.head is not None)
        chain = known_chain(record, source.adaptive) if clean else ()
        if source.query is not None:
            query, where = source.query, f"queried through {source.query_label}"
        elif source.edge_url is not None:
            query = edge_query(source.edge_url, dep, source.captures, source.query_timeout, source.progress)
            where = f"live queries through {source.edge_url} (features read at the tap)"
        elif source.head is not None:
            query, where = head_query(source.head), "queried offline through the head in hand"
        else:
            path = source.artifacts.deployment_dir(dep) / "head.onnx"
            if not path.is_file():
                raise KnowledgeError(f"no head.onnx for {dep!r} in the artifact store ({path}) to query offline")
            query = onnx_query(path.read_bytes(), source.threads)
            where = "queried offline through the artifact store's head"
        if chain:
            where += f"; the known defence ({fdef.label(chain)}, deployment.json) applied to them, drawn per batch"
        elif source.adaptive and not clean and has_layers(fdef.record_defences(record)):
            where += "; the queries carry the deployment's defence already"
        return cls(query, source.aux_images, input_shape, source.aux_setting or "other", (record or {}).get("split"),
                   origin=f"{_aux_words(source)}, {where}", defences=chain, adaptive=source.adaptive,
                   feature_layout=source.feature_layout())


@dataclass
class QueryFreeKnowledge(Knowledge):
    """The frozen tail, labelled auxiliary data and what the deployment record says (no head, no queries).

    ``defences``: the deployment's feature defence, known to an adaptive attacker (it trains its
    shadow head through it and inverts through it); empty for a naive one.
    """

    AUX = "labelled"
    THREAT_MODEL = "query-free"

    tail: nn.Module
    aux_images: torch.Tensor
    aux_labels: torch.Tensor
    input_shape: tuple[int, int, int]
    feature_shape: tuple[int, ...]
    arch: str | None = None
    split: str | None = None
    num_classes: int | None = None
    origin: str = "a tail module"
    dp_compatible: bool = False  # the target was trained with DP-SGD: its head has GroupNorm for BatchNorm
    defences: tuple = ()
    adaptive: bool = False
    feature_layout: str = "nchw"

    def __post_init__(self) -> None:
        self.defences = fdef.defences(list(self.defences))
        _check_layout(self.feature_layout)
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
        return cls.from_source(KnowledgeSource(deployment_id, artifacts=store, aux_images=aux_images,
                                               aux_labels=aux_labels))

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        if source.tail is None and source.artifacts is None:
            return "the query-free attack needs the tail: a tail module or the artifact store (the cloud's)"
        if source.tail is None and not source.deployment_id:
            return "the query-free attack needs a deployment id to load the tail"
        return None

    @classmethod
    def from_source(cls, source: KnowledgeSource) -> "QueryFreeKnowledge":
        if source.tail is not None:
            tail, record, where = source.tail, source.deployment_record() or {}, "in hand"
            absent = [k for k in ("input_shape", "feature_shape") if not record.get(k)]
            if absent:
                raise KnowledgeError(f"a query-free attack on a tail in hand needs the deployment record's "
                                     f"{' and '.join(absent)}")
        else:
            from models.loading import load_tail

            tail, record = load_tail(source.artifacts, source.deployment_id)
            where = "artifact store"
        chain = known_chain(record, source.adaptive)
        known = f"; the defence {fdef.label(chain)} (deployment.json)" if chain else ""
        return cls(tail, source.aux_images, source.aux_labels, tuple(record["input_shape"]),
                   tuple(record["feature_shape"]), record.get("arch"), record.get("split"), record.get("num_classes"),
                   dp_compatible=bool(record.get("dp_compatible", False)),
                   origin=f"the tail ({where}) and {_aux_words(source, labelled=True)}{known}", defences=chain,
                   adaptive=source.adaptive, feature_layout=record_layout(record))


# --- auxiliary data ---------------------------------------------------------------------------

def noise_images(count: int, input_shape, seed: int = 0, kind: str = "gaussian") -> torch.Tensor:
    """He et al.'s 'random set': ``gaussian`` N(0.5, 0.25^2) clipped to [0, 1], or ``uniform``."""
    if kind not in ("gaussian", "uniform"):
        raise AttackParameterError(f"noise kind must be 'gaussian' or 'uniform', got {kind!r}")
    gen = torch.Generator().manual_seed(seed)
    shape = (int(count), *_shape("input_shape", input_shape))
    if kind == "uniform":
        return torch.rand(shape, generator=gen)
    return (0.5 + 0.25 * torch.randn(shape, generator=gen)).clamp_(0, 1)

"""What a membership attacker may know, and nothing more: never the target's member list.

:class:`MembershipKnowledge` is the black-box attacker of Shokri et al. (2017) and Carlini et al.
(2022):

* ``query(images) -> probabilities (N, classes)``: the target's answers. **Live**, through the
  deployed pipeline: each image goes to the edge's public ``POST /v1/infer`` (edge head -> tap ->
  cloud tail) and the answer's ``scores`` (a float64 softmax of the cloud's logits) are read.
  **In-process**, for offline sweeps: the torch model run here, with the same float64 softmax.
* ``aux_x, aux_y``: labelled data the attacker owns, disjoint from the target's members and
  non-members (in the privacy split of :mod:`models.splits`: the shadow parts and the auxiliary
  part).
* the target's **training recipe** (architecture and training options), which Shokri and LiRA
  assume the attacker knows: ``shadow_model(indices_into_aux, seed)`` trains a model with it on an
  aux subset, ``train_like_target(...)`` wraps that model as a query function.
  ``shadow_model_on(images, labels, seed)`` trains on any images of the attacker's *population*:
  LiRA's online attack trains reference models on random halves of a population that includes
  the candidate samples' images (not their membership, which is what is being inferred). With an
  artifact store, models come from :func:`models.reference.obtain_models`: trained once, stored
  under their full spec and shared by every trial and attack. A shadow trains on as many samples
  as the target did (the recipe includes the training-set size) unless an attack asks otherwise.

``knowledge_for(attack, KnowledgeSource(deployment_id, artifacts=store, edge_url=...))`` builds
either from a deployment: the recipe is the options in the target's manifest (never its member
list; a target trained on explicit members is refused), the aux data the privacy split's attacker
parts, the queries live through ``edge_url`` when given, else in-process from the stored model
(in process a source needs no deployment: a ``record`` naming the ``model_id`` will do, as the lab's
in-process membership experiments give).

:class:`WhiteBoxMembershipKnowledge` (Nasr et al. 2019) adds the target's weights: the trained
model, or the models observed at several points of training (the federated setting's passive
global attacker sees the model after each round; the fine-tuning setting's attacker sees it before
and after fine-tuning).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable, ClassVar

import numpy as np
import torch
from torch import nn

from models.errors import SplitlabError

from ..base import AttackParameterError, check_positive_int
from ..knowledge import Knowledge, KnowledgeError, KnowledgeSource
from .base import as_samples

QueryFn = Callable[[np.ndarray], np.ndarray]
Trainer = Callable[[np.ndarray, np.ndarray, int], nn.Module]


def model_query(model: nn.Module, device: str = "cpu", batch: int = 512) -> QueryFn:
    """In-process query of a torch classifier: images -> float64 softmax probabilities."""
    from ..inversion.base import placed

    model = placed(model, device).eval()  # a copy where it is elsewhere: the caller's model stays put

    def query(images) -> np.ndarray:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch):
                out.append(torch.softmax(model(x[i:i + batch].to(device)).double(), dim=1).cpu().numpy())
        return np.concatenate(out)

    return query


def edge_scores_query(edge, deployment_id: str, timeout: float = 60.0) -> QueryFn:
    """Query the live pipeline: each image to the edge's ``POST /v1/infer``, its ``scores`` back.

    ``edge`` is the edge's base URL or an ``httpx.Client`` already pointed at it (a test client).
    """
    import httpx

    http = httpx.Client(base_url=str(edge).rstrip("/"), timeout=timeout) if isinstance(edge, str) else edge

    def query(images) -> np.ndarray:
        out = []
        for image in np.asarray(images, dtype=np.float32):
            try:
                r = http.post("/v1/infer", json={"deployment_id": deployment_id, "array": image.tolist()})
            except httpx.HTTPError as exc:
                raise SplitlabError(f"the edge did not answer a membership query: {exc}") from exc
            if r.status_code != 200:
                raise SplitlabError(f"the edge answered {r.status_code} to a membership query: {r.text[:200]}")
            out.append(np.asarray(r.json()["scores"], dtype=np.float64))
        return np.stack(out)

    return query


def _counted(query: QueryFn, counter: dict) -> QueryFn:
    """``query`` counting the images it is asked about into ``counter`` (rewrapped, never nested)."""
    query = getattr(query, "inner", query)

    def counted(images) -> np.ndarray:
        counter["queries"] += len(images)
        return query(images)

    counted.inner = query
    return counted


@dataclass
class MembershipKnowledge(Knowledge):
    """The black-box membership attacker's knowledge (see the module doc)."""

    THREAT_MODEL: ClassVar[str] = "membership"

    query: QueryFn
    aux_x: np.ndarray
    aux_y: np.ndarray
    num_classes: int
    input_shape: tuple[int, int, int]
    trainer: Trainer | None = None
    source: str = "in-process"
    device: str = "cpu"
    counter: dict = field(default_factory=lambda: {"queries": 0})

    def __post_init__(self) -> None:
        if not callable(self.query):
            raise AttackParameterError("query must be callable: images (N, C, H, W) -> probabilities (N, classes)")
        if self.trainer is not None and not callable(self.trainer):
            raise AttackParameterError("trainer must be callable: (images, labels, seed) -> model")
        check_positive_int("num_classes", self.num_classes, 2)
        self.input_shape = tuple(int(v) for v in self.input_shape)
        self.aux_x, self.aux_y = as_samples((self.aux_x, self.aux_y), self.input_shape, self.num_classes)
        self.query = _counted(self.query, self.counter)

    # --- shadow and reference models with the target's recipe ----------------------------------

    def _require_trainer(self) -> Trainer:
        if self.trainer is None:
            raise SplitlabError("this knowledge has no training recipe: shadow and reference models need one "
                                "(build it with MembershipKnowledge.in_process or .live)")
        return self.trainer

    def shadow_model_on(self, images, labels, seed: int) -> nn.Module:
        """A model trained with the target's recipe on ``images`` (the attacker's population)."""
        return self.shadow_models_on([(images, labels, seed)])[0]

    def shadow_models_on(self, sets) -> list[nn.Module]:
        """Models trained with the target's recipe, one per ``(images, labels, seed)`` of ``sets``,
        asked for together: a recipe that can (:meth:`TargetRecipe.many`) trains them in one call,
        so on CUDA same-sized ones train side by side."""
        trainer = self._require_trainer()
        sets = [(*as_samples((x, y), self.input_shape, self.num_classes), int(seed)) for x, y, seed in sets]
        if hasattr(trainer, "many"):
            return trainer.many(sets)
        return [trainer(x, y, seed) for x, y, seed in sets]

    def shadow_model(self, indices, seed: int) -> nn.Module:
        """A model trained with the target's recipe on ``aux[indices]``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= len(self.aux_x):
            raise AttackParameterError(f"indices must be a non-empty list of positions in the {len(self.aux_x)} "
                                       "auxiliary samples")
        return self.shadow_model_on(self.aux_x[idx], self.aux_y[idx], seed)

    def shadow_size(self, requested: int | None = None) -> int:
        """Members per shadow: ``requested``, else the target's training-set size (part of the
        recipe) where the aux data holds twice that, else half the aux data."""
        if requested:
            return int(requested)
        half = len(self.aux_x) // 2
        return min(half, getattr(self.trainer, "train_size", None) or half)

    def train_like_target(self, indices, seed: int) -> QueryFn:
        return model_query(self.shadow_model(indices, seed), self.device)

    def train_like_target_on(self, images, labels, seed: int) -> QueryFn:
        return model_query(self.shadow_model_on(images, labels, seed), self.device)

    def train_many_like_target(self, sets) -> list[QueryFn]:
        """Query functions of :meth:`shadow_models_on` ``(images, labels, seed)`` sets."""
        return [model_query(m, self.device) for m in self.shadow_models_on(sets)]

    # --- builders --------------------------------------------------------------------------------

    @classmethod
    def _assemble(cls, query: QueryFn, source: str, dataset, target_options, store, aux_limit, device, **extra):
        aux_x, aux_y, trainer = attacker_side(dataset, target_options, store, aux_limit, device)
        return cls(query, aux_x, aux_y, dataset.num_classes, dataset.input_shape, trainer, source, device, **extra)

    @classmethod
    def in_process(cls, target_model: nn.Module, dataset, target_options, store=None, *,
                   aux_limit: int | None = None, device: str = "cpu") -> "MembershipKnowledge":
        """Offline: the target queried here; aux data and recipe from the dataset and the options."""
        return cls._assemble(model_query(target_model, device), "in-process", dataset, target_options, store,
                             aux_limit, device)

    @classmethod
    def live(cls, edge, deployment_id: str, dataset, target_options, store=None, *, aux_limit: int | None = None,
             device: str = "cpu", timeout: float = 60.0) -> "MembershipKnowledge":
        """Live: the target queried through the edge's ``/v1/infer`` (edge -> tap -> cloud)."""
        return cls._assemble(edge_scores_query(edge, deployment_id, timeout), f"live:{deployment_id}", dataset,
                             target_options, store, aux_limit, device)

    # --- from a KnowledgeSource (knowledge_for) ----------------------------------------------------

    @classmethod
    def missing(cls, source: KnowledgeSource) -> str | None:
        if not source.deployment_id and not (source.record or {}).get("model_id"):
            return ("a membership attack needs the target's deployment id (or, in process, a record naming its "
                    "model_id)")
        if source.artifacts is None:
            return ("a membership attack needs the artifact store: the target's training recipe (its manifest's "
                    "options, never its members) and the store its shadow models are shared through")
        return None

    @classmethod
    def from_source(cls, source: KnowledgeSource, *, dataset=None, aux_limit: int | None = None,
                    device: str = "cpu", data_root=None) -> "MembershipKnowledge":
        """The deployment's target: queried through ``source.query`` (images -> probabilities) if
        given, else live through ``source.edge_url``, else in-process from the artifact store."""
        model, options, dataset = _target_from_store(source, dataset, data_root)
        if source.query is not None:
            query, label = source.query, source.query_label
        elif source.edge_url is not None:
            query = edge_scores_query(source.edge_url, source.deployment_id, max(source.query_timeout, 30.0))
            label = f"live:{source.deployment_id}"
        else:
            query, label = model_query(model, device), "in-process"
        return cls._assemble(query, label, dataset, options, source.artifacts, aux_limit, device,
                             **cls._extra(model))

    @classmethod
    def _extra(cls, model: nn.Module) -> dict:
        return {}


def target_recipe(manifest: dict):
    """The target's training options from its manifest: the recipe the attacker is assumed to know
    (Shokri et al., Carlini et al.), without its members."""
    from models.training import TrainOptions

    options = dict(manifest.get("options") or {})
    if options.get("members"):
        raise KnowledgeError("the target was trained on explicit member indices: its recipe cannot be given to the "
                             "attacker without them, and its auxiliary data could not be kept disjoint from them")
    known = {f.name for f in dataclasses.fields(TrainOptions)}
    return TrainOptions(**{k: v for k, v in options.items() if k in known and k != "members"})


def _target_from_store(source: KnowledgeSource, dataset, data_root):
    from models.datasets import load_dataset
    from models.loading import load_model

    record = source.deployment_record() or {}  # in process, without a deployment: {"model_id": ...}
    if not record.get("model_id"):
        raise KnowledgeError(f"the deployment record of {source.deployment_id!r} names no model")
    model, manifest = load_model(source.artifacts, record["model_id"])
    options = target_recipe(manifest)
    return model.eval(), options, dataset or load_dataset(options.dataset, data_root)


@dataclass
class WhiteBoxMembershipKnowledge(MembershipKnowledge):
    """The black-box knowledge plus the target's weights at one or more observed points of training.

    ``observed`` holds the target model as the attacker saw it: one model when it is fully trained,
    a model per observed epoch in the federated setting, the model before and after fine-tuning in
    the fine-tuning setting. ``shadow_snapshots(indices, seed)`` trains a shadow the same way and
    returns its models at the same points (``snapshot_trainer``); with one observation it is the
    plain shadow model.
    """

    observed: list = field(default_factory=list)
    snapshot_trainer: Callable[[np.ndarray, np.ndarray, int], list] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.observed or not all(isinstance(m, nn.Module) for m in self.observed):
            raise AttackParameterError("observed must be a non-empty list of the target's torch modules")
        for m in self.observed:
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def shadow_snapshots(self, indices, seed: int) -> list[nn.Module]:
        """A shadow model's counterparts of ``observed``, trained on ``aux[indices]``."""
        if len(self.observed) == 1 and self.snapshot_trainer is None:
            return [self.shadow_model(indices, seed)]
        if self.snapshot_trainer is None:
            raise SplitlabError(f"{len(self.observed)} observations of the target need a snapshot_trainer "
                                "that trains a shadow and returns it at the same points")
        idx = np.asarray(indices, dtype=np.int64)
        models = list(self.snapshot_trainer(self.aux_x[idx], self.aux_y[idx], int(seed)))
        if len(models) != len(self.observed):
            raise SplitlabError(f"the snapshot trainer returned {len(models)} models for "
                                f"{len(self.observed)} observations")
        return models

    @classmethod
    def in_process(cls, target_model: nn.Module, dataset, target_options, store=None, *,
                   aux_limit: int | None = None, device: str = "cpu", observed: list | None = None,
                   snapshots: Callable[[TargetRecipe], Callable] | None = None) -> "WhiteBoxMembershipKnowledge":
        """The target (queried) and what was observed of it (default: the target alone).
        ``snapshots(recipe)`` builds the shadow snapshot trainer from the attacker's recipe (see
        :mod:`.observations`)."""
        knowledge = cls._assemble(model_query(target_model, device), "in-process", dataset, target_options, store,
                                  aux_limit, device, observed=list(observed or [target_model]))
        knowledge.snapshot_trainer = snapshots(knowledge.trainer) if snapshots else None
        return knowledge

    @classmethod
    def _extra(cls, model: nn.Module) -> dict:
        return {"observed": [model]}  # the artifact store's weights: the model provider attacks


# --- the attacker's side: its data and the target's recipe -------------------------------------

def _image_key(image_u8: np.ndarray, label: int) -> bytes:
    return hashlib.blake2b(image_u8.tobytes() + int(label).to_bytes(8, "little"), digest_size=16).digest()


class TargetRecipe:
    """Trains models with the target's options on images of the dataset's train split.

    Images are located in the train split by content (their uint8 pixels and label), so a model
    is stored and shared under its explicit member indices, whoever asks for it. An image that is
    not in the train split cannot be trained on (the reference store keys models by indices).
    With a ``store`` models come from :func:`models.reference.obtain_models` (trained once, shared
    by every attack and trial); without one they are trained here and kept in memory.
    """

    def __init__(self, dataset, options, store=None, device: str = "cpu"):
        self.dataset, self.options, self.store, self.device = dataset, options, store, device
        self._index = {_image_key(img, lab): i for i, (img, lab) in enumerate(zip(dataset.x_train, dataset.y_train))}
        self._cache: dict = {}

    def indices_of(self, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        u8 = np.clip(np.rint(np.asarray(images) * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
        out = []
        for img, lab in zip(u8, labels):
            i = self._index.get(_image_key(np.ascontiguousarray(img), lab))
            if i is None:
                raise SplitlabError(f"an image to train on is not in {self.dataset.name}'s train split (with "
                                    "its label); shadow and reference models train on train-split images only")
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    @property
    def train_size(self) -> int:
        """How many samples the target trained on (the scheme's members, cut at ``limit``)."""
        from models.splits import privacy_splits

        members = self.options.members or privacy_splits(len(self.dataset.x_train), self.options.seed,
                                                         self.options.scheme)["target_train"]
        return len(members[: self.options.limit] if self.options.limit else members)

    def spec(self, members: np.ndarray, seed: int):
        """The target's options on these members (all of them: the target's ``limit`` is dropped)."""
        return dataclasses.replace(self.options, members=tuple(int(i) for i in np.sort(members)), seed=int(seed),
                                   limit=None)

    def __call__(self, images: np.ndarray, labels: np.ndarray, seed: int) -> nn.Module:
        return self.many([(images, labels, seed)])[0]

    def many(self, sets) -> list[nn.Module]:
        """One model per ``(images, labels, seed)``; those not yet in hand are asked for in one
        :func:`models.reference.obtain_models` call (which trains same-budget ones together on CUDA)."""
        keys = []
        for images, labels, seed in sets:
            members = np.sort(self.indices_of(images, labels))
            keys.append((members.tobytes(), int(seed)))
        todo = list(dict.fromkeys(k for k in keys if k not in self._cache))
        specs = [self.spec(np.frombuffer(members, dtype=np.int64), seed) for members, seed in todo]
        for key, model in zip(todo, self._train(specs)):
            self._cache[key] = model
        return [self._cache[k] for k in keys]

    def _train(self, specs: list) -> list[nn.Module]:
        if not specs:
            return []
        if self.store is None:  # nothing to share them through: trained here, kept for this recipe
            from models.training import train

            return [train(dataclasses.replace(spec, device=self.device), progress=False, dataset=self.dataset)[0].eval()
                    for spec in specs]
        from models.reference import obtain_models

        return [model.eval() for model, _ in obtain_models(self.store, specs, self.device, progress=False,
                                                           dataset=self.dataset)]


def attacker_side(dataset, options, store, aux_limit: int | None, device: str):
    """The attacker's own data (disjoint from the target's members and non-members) and recipe."""
    from models.splits import privacy_splits

    if getattr(options, "scheme", None) != "privacy":
        raise SplitlabError("membership attacks need a target trained with the privacy split scheme "
                            f"(its shadow and aux parts are the attacker's data), not {options.scheme!r}")
    if aux_limit is not None:
        check_positive_int("aux_limit", aux_limit, 2)
    parts = privacy_splits(len(dataset.x_train), options.seed, options.scheme)
    aux = np.sort(np.concatenate([parts["shadow_train"], parts["shadow_out"], parts["aux"]]))
    explicit = getattr(options, "members", None)
    if explicit:
        aux = np.setdiff1d(aux, np.asarray(explicit))
    aux = aux[:aux_limit] if aux_limit else aux
    from models.datasets import to_tensor

    return (to_tensor(dataset.x_train[aux]).numpy(), dataset.y_train[aux].astype(np.int64),
            TargetRecipe(dataset, options, store, device))

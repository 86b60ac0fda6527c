"""The experiment spec: what a researcher submits to ``POST /v1/experiments``.

Two layers of validation, both answered with 422 and the offending field's location:

1. :class:`ExperimentSpec` (pydantic) checks types, ranges and the static catalogue (architecture
   and dataset names, attack names and their settings);
2. :func:`check_spec` checks what depends on the running service: the split points of the chosen
   architecture (or of the stored model's), the dataset actually being loadable and fitting the
   architecture, the attacks' declared parameters, and the configured budget :class:`Limits`
   (images, epochs, iterations).

Example::

    {"arch": "lenet5", "dataset": "digits", "train": {"epochs": 2},
     "split_points": ["conv1", "relu2"],
     "attacks": ["whitebox", {"name": "blackbox", "aux": "same-distribution"}],
     "feature_defense": {"type": "gaussian", "sigma": 0.1}, "samples": 10, "seed": 0}
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationInfo, WithJsonSchema, field_validator,
                      model_validator)

from models import DATASET_NAMES, architecture_names
from models.defences import features as fdef

from ..attacks.registry import names
from .limits import Limits  # noqa: F401  (re-exported: the budget the checks below enforce)

ATTACK_NAMES = names("inversion")  # the lab runs split-point inversion experiments
BLACKBOX_AUX = ("same-set", "same-distribution", "random-noise")
QUERYFREE_AUX = ("same-set", "same-distribution")
QUERYFREE_SHADOW = ("same", "different")
# Attack parameters counted against the budget limits.
ITERATION_PARAMS = ("iterations", "steps", "inversion_iterations")
EPOCH_PARAMS = ("epochs", "shadow_epochs", "train_epochs")

ArchName = Literal[tuple(architecture_names())]  # type: ignore[valid-type]
DatasetName = Literal[tuple(DATASET_NAMES)]  # type: ignore[valid-type]


def unique(values: list, what: str, key=lambda v: v, hint: str = "") -> list:
    """``values`` unchanged, or a ValueError naming the first one listed twice (by ``key``)."""
    keys = [key(v) for v in values]
    for i, k in enumerate(keys):
        if k in keys[:i]:
            raise ValueError(f"{what} {k!r} is listed twice (index {i}){hint}")
    return values


class SpecError(ValueError):
    """One or more semantic errors; each is ``(location tuple, message)`` like pydantic's."""

    def __init__(self, errors: list[tuple[tuple, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{loc_str(loc)}: {msg}" for loc, msg in errors))


def loc_str(loc) -> str:
    """``("split_points", 0)`` -> ``split_points[0]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


# Types as the JSON schema states them: strict, so that false is not a seed and "2" not a count
# (pydantic's lax mode accepted both, and a schema-driven client rightly calls that a bug).
SPEC_CONFIG = ConfigDict(extra="forbid", strict=True)


class TrainSpec(BaseModel):
    """Training budget and training-time defences (dropout, L2, DP-SGD), as ``python -m models train``."""

    model_config = SPEC_CONFIG
    epochs: int = Field(2, ge=1, description="training epochs (limit: --max-epochs)")
    limit: int | None = Field(None, ge=1, description="train on at most this many member images")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout before each FC layer (defence)")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 weight decay (defence)")
    weight_decay_scope: Literal["all", "output"] = Field(
        "all", description="L2 on every layer or on the output layer only (needs weight_decay > 0)")
    dp_epsilon: float | None = Field(None, gt=0.0, le=1000.0,
                                     description="DP-SGD (Opacus) to this target epsilon; null: no DP (defence)")
    dp_delta: float = Field(1e-5, gt=0.0, lt=1.0, description="DP-SGD delta (with dp_epsilon)")
    dp_max_grad_norm: float = Field(1.0, gt=0.0, le=1000.0,
                                    description="DP-SGD per-example gradient clipping norm (with dp_epsilon)")

    @model_validator(mode="after")
    def _scope_needs_decay(self) -> "TrainSpec":
        if self.weight_decay_scope == "output" and not self.weight_decay:
            raise ValueError("weight_decay_scope 'output' needs weight_decay > 0")
        return self


class AttackSpec(BaseModel):
    """One attack: its name, its knowledge setting and optional parameters of the attack."""

    model_config = SPEC_CONFIG
    name: Literal[ATTACK_NAMES]  # type: ignore[valid-type]
    aux: str | None = Field(None, validate_default=True,
                            description="auxiliary data: blackbox same-set | same-distribution | random-noise "
                                        "(default same-distribution); queryfree same-set | same-distribution "
                                        "(default same-distribution); not for whitebox")
    shadow: str | None = Field(None, validate_default=True,
                               description="queryfree only: shadow head architecture same | different (default same)")
    aux_images: int | None = Field(None, ge=1, description="blackbox / queryfree: number of auxiliary images "
                                                            "(default min(500, --max-aux-images), fewer if the "
                                                            "set is smaller); blackbox sends each through the edge")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="parameters of the attack (e.g. iterations), as the "
                                               "attack declares them")
    adaptive: bool = Field(False, description="the attacker knows the deployment's feature defence (its spec in "
                                              "deployment.json) and attacks through it; false: naive")

    @field_validator("aux_images", mode="after")
    @classmethod
    def _aux_images(cls, value, info: ValidationInfo):
        if value is not None and info.data.get("name") == "whitebox":
            raise ValueError("aux_images is not a setting of the whitebox attack")
        return value

    @field_validator("aux", mode="after")
    @classmethod
    def _aux(cls, value, info: ValidationInfo):
        name = info.data.get("name")
        if name == "whitebox":
            if value is not None:
                raise ValueError("aux is not a setting of the whitebox attack (it uses the head, no data)")
            return None
        if name is None:
            return value
        choices = BLACKBOX_AUX if name == "blackbox" else QUERYFREE_AUX
        value = value or "same-distribution"
        if value not in choices:
            raise ValueError(f"aux must be one of {', '.join(choices)} for {name}, got {value!r}")
        return value

    @field_validator("shadow", mode="after")
    @classmethod
    def _shadow(cls, value, info: ValidationInfo):
        name = info.data.get("name")
        if name in ("whitebox", "blackbox"):
            if value is not None:
                raise ValueError(f"shadow is not a setting of the {name} attack (queryfree only)")
            return None
        if name is None:
            return value
        value = value or "same"
        if value not in QUERYFREE_SHADOW:
            raise ValueError(f"shadow must be one of {', '.join(QUERYFREE_SHADOW)}, got {value!r}")
        return value

    @property
    def label(self) -> str:
        """Short name used in result rows and image names, e.g. ``blackbox-same-distribution``
        (``-adaptive`` appended for an adaptive attacker)."""
        parts = [self.name] + [p for p in (self.aux, self.shadow, self.adaptive and "adaptive") if p]
        return "-".join(parts)


def _attack_from_name(value):
    return {"name": value} if isinstance(value, str) else value


AttackItem = Annotated[AttackSpec, BeforeValidator(
    _attack_from_name, json_schema_input_type=Union[Literal[ATTACK_NAMES], AttackSpec])]  # type: ignore[valid-type]


def _defence_schema() -> dict:
    """The JSON schema of one feature defence object, from the dataclasses of models.defences.features."""
    from pydantic import TypeAdapter

    variants = []
    for name, cls in fdef.DEFENCES.items():
        schema = TypeAdapter(cls).json_schema()
        schema["additionalProperties"] = False
        schema["properties"]["type"] = {"const": name} if name not in fdef.ALIASES.values() else \
            {"enum": [name] + [a for a, b in fdef.ALIASES.items() if b == name]}
        for param in fdef.REQUIRED.get(name, ()):
            schema["properties"][param].pop("default", None)
        schema["required"] = ["type", *fdef.REQUIRED.get(name, ())]
        variants.append(schema)
    return {"oneOf": variants}


_DEFENCE = _defence_schema()
FeatureDefense = Annotated[Union[dict[str, Any], list[dict[str, Any]]], WithJsonSchema(
    {"anyOf": [_DEFENCE, {"type": "array", "items": _DEFENCE}]})]


_GIVEN, _ABSENT = {"not": {"type": "null"}}, {"type": "null"}  # a key that is absent or null is not given
# The model comes from exactly one place, in the JSON schema too (check_spec enforces it and names
# the field): train one (arch, with its dataset) or reuse a stored one (model_id, without train).
MODEL_SOURCE = {"oneOf": [
    {"title": "train a model", "required": ["arch", "dataset"],
     "properties": {"arch": _GIVEN, "dataset": _GIVEN, "model_id": _ABSENT}},
    {"title": "reuse a stored model", "required": ["model_id"],
     "properties": {"model_id": _GIVEN, "arch": _ABSENT, "train": _ABSENT}},
]}


class ModelSource(BaseModel):
    """Where an experiment's model comes from: trained for it (arch, dataset, train) or stored (model_id)."""

    model_config = SPEC_CONFIG
    TRAIN: ClassVar[type] = TrainSpec  # the train spec filled in with its defaults when arch is given

    arch: ArchName | None = Field(None, description="architecture to train (or give model_id)")
    model_id: str | None = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                                 description="an existing trained model in the artifact store")
    dataset: DatasetName | None = Field(None, description="dataset (with model_id: defaults to the model's)")

    @model_validator(mode="after")
    def _default_train(self):
        if self.arch is not None and self.model_id is None and self.train is None:
            self.train = self.TRAIN()
        return self


class ExperimentSpec(ModelSource):
    """A split-point experiment: which model, which cuts, which attacks, how many private images."""

    model_config = ConfigDict(**SPEC_CONFIG, json_schema_extra={**MODEL_SOURCE, "examples": [{
        "arch": "lenet5", "dataset": "digits", "train": {"epochs": 2},
        "split_points": ["conv1"], "attacks": [{"name": "whitebox", "params": {"iterations": 300}}],
        "samples": 10, "seed": 0}]})

    kind: Literal["inversion"] = Field("inversion", description="split-point inversion (the default kind)")
    train: TrainSpec | None = Field(None, description="training budget and defence (only with arch)")
    split_points: list[str] = Field(min_length=1, description="split points to deploy and attack")
    attacks: list[AttackItem] = Field(
        min_length=1, description='attacks: a name ("whitebox") or an object ({"name": "blackbox", "aux": ...})')
    feature_defense: FeatureDefense | None = Field(
        None, description="feature defence(s) exported in the edge's head, applied in order: gaussian (sigma; "
                          "'noise' is an alias), laplace (scale), dropout (p), quantize (bits; lo/hi calibrated "
                          "when absent), deeper (layers or to: a later split point), nonlinear (kind, seed); "
                          "see models/defences/features.py")
    samples: int = Field(10, ge=1, description="private images sent through the edge (limit: --max-samples)")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("attacks", mode="after")
    @classmethod
    def _unique_attacks(cls, value):
        return unique(value, "attack", lambda a: a.label)

    @field_validator("split_points", mode="after")
    @classmethod
    def _unique_splits(cls, value):
        return unique(value, "split point")


@functools.lru_cache(maxsize=16)
def dataset_info(name: str, root: str | None) -> tuple[tuple[int, int, int], int, int, int]:
    """(input shape, number of classes, test images, training images) of a dataset; raises
    SplitlabError if missing."""
    from models import load_dataset

    ds = load_dataset(name, root)
    return ds.input_shape, ds.num_classes, len(ds.x_test), len(ds.x_train)


def check_model_source(spec: ModelSource, limits: Limits, artifacts=None) -> tuple[str, str, dict | None, list]:
    """(arch, dataset, stored manifest or None, errors so far): one source of the model, the stored
    model's, the training budget within the limits. Raises SpecError when the source is unclear."""
    from models import ArtifactStore, SplitlabError

    errors: list[tuple[tuple, str]] = []
    arch, dataset, manifest = spec.arch, spec.dataset, None
    if arch is None and spec.model_id is None:
        errors.append((("arch",), "give arch (to train a model) or model_id (to reuse a stored one)"))
    if arch is not None and spec.model_id is not None:
        errors.append((("model_id",), "give arch or model_id, not both"))
    if arch is not None and dataset is None:
        errors.append((("dataset",), "dataset is required with arch"))
    if spec.model_id is not None and spec.train is not None:
        errors.append((("train",), "train applies only with arch; a stored model (model_id) is reused as is"))
    if errors:
        raise SpecError(errors)
    if spec.model_id is not None:
        store = ArtifactStore(artifacts)
        try:
            manifest = store.manifest(spec.model_id)
        except SplitlabError as exc:
            raise SpecError([(("model_id",), f"no trained model {spec.model_id!r} in the artifact store "
                                             f"({exc})")]) from None
        arch = manifest["arch"]
        if dataset is not None and dataset != manifest["dataset"]:
            errors.append((("dataset",), f"model {spec.model_id!r} was trained on {manifest['dataset']!r}, "
                                         f"not {dataset!r}"))
        dataset = manifest["dataset"]
    if spec.train is not None:
        if spec.train.epochs > limits.max_epochs:
            errors.append((("train", "epochs"), f"{spec.train.epochs} epochs is over the limit of "
                                                f"{limits.max_epochs} (--max-epochs / SPLITLAB_LAB_MAX_EPOCHS)"))
        if spec.train.limit is not None and spec.train.limit > limits.max_train_images:
            errors.append((("train", "limit"), f"{spec.train.limit} training images is over the limit of "
                                               f"{limits.max_train_images} (--max-train-images)"))
    return arch, dataset, manifest, errors


def check_spec(spec: ExperimentSpec, limits: Limits, artifacts=None, data_root=None) -> dict:
    """Semantic checks; returns what was resolved (arch, dataset, input shape); raises SpecError."""
    from models import SplitlabError, build_model

    from .attacks import shadow_error

    arch, dataset, _, errors = check_model_source(spec, limits, artifacts)
    if spec.samples > limits.max_samples:
        errors.append((("samples",), f"{spec.samples} images is over the limit of {limits.max_samples} "
                                     "(--max-samples / SPLITLAB_LAB_MAX_SAMPLES)"))
    if len(spec.split_points) > limits.max_split_points:
        errors.append((("split_points",), f"{len(spec.split_points)} split points is over the limit of "
                                          f"{limits.max_split_points}"))
    if len(spec.attacks) > limits.max_attacks:
        errors.append((("attacks",), f"{len(spec.attacks)} attacks is over the limit of {limits.max_attacks}"))

    input_shape = None
    try:
        input_shape, num_classes, n_test, _ = dataset_info(dataset, str(data_root) if data_root else None)
    except SplitlabError as exc:
        errors.append((("dataset",), str(exc)))
    else:
        if spec.samples > n_test:
            errors.append((("samples",), f"{dataset} has only {n_test} test images; asked for {spec.samples}"))
    points = []
    try:
        model = build_model(arch, 10, input_shape)
        points = model.split_points
    except SplitlabError as exc:
        errors.append((("arch",) if spec.arch else ("model_id",), f"{arch} does not fit {dataset}: {exc}"))
    if points:
        for i, point in enumerate(spec.split_points):
            if point not in points:
                errors.append((("split_points", i), f"{arch} has no split point {point!r}; "
                                                    f"choose from: {', '.join(points)}"))
    errors.extend(check_feature_defense(spec.feature_defense, spec.split_points if points else [], points))
    for i, attack in enumerate(spec.attacks):
        if attack.aux_images is not None and attack.aux_images > limits.max_aux_images:
            errors.append((("attacks", i, "aux_images"), f"{attack.aux_images} auxiliary images is over the limit "
                                                         f"of {limits.max_aux_images} (--max-aux-images)"))
        errors.extend((("attacks", i, "params") + loc, msg) for loc, msg in check_attack_params(attack, limits))
        for point in spec.split_points if points else []:
            message = shadow_error(attack, arch, point)
            if message:
                errors.append((("attacks", i, "shadow"), message))
                break
    if errors:
        raise SpecError(errors)
    return {"arch": arch, "dataset": dataset, "input_shape": list(input_shape)}


def check_feature_defense(value, split_points: list[str], points: list[str]) -> list[tuple[tuple, str]]:
    """Each defence object valid, and a ``deeper`` one reachable from every split point."""
    if value is None:
        return []
    items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
    errors, chain = [], []
    for i, item in items:
        loc = ("feature_defense",) + (() if i is None else (i,))
        try:
            chain.append(fdef.from_json(item))
        except fdef.DefenceError as exc:
            errors.append((loc + ((exc.param,) if exc.param else ()), str(exc)))
            continue
        if isinstance(chain[-1], fdef.Deeper):
            for point in (p for p in split_points if p in points):  # an unknown one has its own error
                try:
                    chain[-1].resolve(points, point)
                except fdef.DefenceError as exc:
                    errors.append((loc + (exc.param,), f"split point {point}: {exc}"))
    if not errors:
        try:
            fdef.check_chain(chain)
        except fdef.DefenceError as exc:
            errors.append((("feature_defense",), str(exc)))
    return errors


def check_attack_params(attack: AttackSpec, limits: Limits) -> list[tuple[tuple, str]]:
    """Budget limits and the attack's own declared parameters (names, types, ranges)."""
    from .attacks import attack_params_error, budget_errors

    errors = budget_errors(attack.params, limits)
    if errors:
        return errors
    message = attack_params_error(attack)
    if message:
        key = next((k for k in attack.params if message.startswith(k) or f" {k}" in message), None)
        errors.append(((key,) if key else (), message))
    return errors

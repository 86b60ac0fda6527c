"""The membership experiment spec: ``{"kind": "membership", ...}`` on ``POST /v1/experiments``.

A split-point experiment asks what the features on the wire give away about the *inputs*; a
membership experiment asks what the deployed model's *answers* give away about its *training set*.
Its spec names the target (trained for it, one per seed, or a stored one), the membership attacks
of the registry with their parameters, the seeds and how many members (and as many held-out
non-members) are evaluated, and whether the attacker queries the live pipeline (edge -> tap ->
cloud, ``through_pipeline``) or the model in process. Validation is two-layered as for the
inversion spec (:mod:`.spec`): pydantic for types and the catalogue, :func:`check_membership_spec`
for what depends on the service (stored models, datasets, budget limits, the attacks' declared
parameters), both answered with 422 naming the field.

Example::

    {"kind": "membership", "arch": "lenet5", "dataset": "digits",
     "train": {"epochs": 20, "limit": 100, "lr": 0.003, "batch_size": 16},
     "attacks": ["threshold", {"name": "lira", "params": {"reference_models": 4}}],
     "seeds": [0, 1], "samples": 100, "through_pipeline": false}
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ..attacks.registry import names
from .limits import Limits
from .spec import MODEL_SOURCE, SPEC_CONFIG, ModelSource, SpecError, TrainSpec, check_model_source, unique

MEMBERSHIP_ATTACKS = names("membership")
# The membership attacks' parameters counted against the budget limits.
MODEL_COUNT_PARAMS = ("shadow_models", "reference_models")
NETWORK_EPOCH_PARAMS = ("epochs",)
SERVICE_PARAMS = {"device": "device is the service's choice (attacker serve --device, env SPLITLAB_DEVICE), "
                            "not an experiment's",
                  "seed": "seed comes from the experiment's seeds (each seed seeds the attack)"}
# The privacy split scheme's share of the training set the target trains on (models.splits).
TARGET_SHARE = 0.25


class MembershipTrainSpec(TrainSpec):
    """The target's training budget; a membership target also sets its optimiser (an overfit one
    is what the attacks feed on)."""

    lr: float | None = Field(None, gt=0.0, le=1.0, description="learning rate (default the trainer's, 0.001)")
    batch_size: int | None = Field(None, ge=1, le=4096, description="batch size (default the trainer's, 128)")


class MembershipAttackSpec(BaseModel):
    """One membership attack of the registry (``membership/<name>``) and its parameters."""

    model_config = SPEC_CONFIG
    name: Literal[MEMBERSHIP_ATTACKS]  # type: ignore[valid-type]
    label: str | None = Field(None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
                              description="its name in the results (default the attack's name); unique")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="parameters of the attack as it declares them (e.g. "
                                               "reference_models, metric); seed and device are the service's")
    aux_limit: int | None = Field(None, ge=2, description="use only this many of the attacker's auxiliary samples")

    @property
    def title(self) -> str:
        return self.label or self.name


def _attack_from_name(value):
    return {"name": value} if isinstance(value, str) else value


MembershipAttackItem = Annotated[MembershipAttackSpec, BeforeValidator(
    _attack_from_name,
    json_schema_input_type=Union[Literal[MEMBERSHIP_ATTACKS], MembershipAttackSpec])]  # type: ignore[valid-type]


class MembershipExperimentSpec(ModelSource):
    """A membership experiment: which target, which attacks, which seeds, how many samples."""

    model_config = ConfigDict(**SPEC_CONFIG, json_schema_extra={**MODEL_SOURCE, "examples": [{
        "kind": "membership", "arch": "lenet5", "dataset": "digits",
        "train": {"epochs": 20, "limit": 100, "lr": 0.003, "batch_size": 16},
        "attacks": ["threshold", {"name": "lira", "params": {"reference_models": 4}}],
        "seeds": [0, 1], "samples": 100, "through_pipeline": False}]})
    TRAIN: ClassVar[type] = MembershipTrainSpec

    kind: Literal["membership"] = Field(description="membership inference against the deployed model")
    train: MembershipTrainSpec | None = Field(
        None, description="the target's training budget and defence (only with arch; privacy split scheme: "
                          "a quarter of the training set are its candidate members, a quarter its non-members, "
                          "the rest the attacker's)")
    attacks: list[MembershipAttackItem] = Field(
        min_length=1, description='attacks: a name ("lira") or an object ({"name": "lira", "params": {...}})')
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] = Field(
        default_factory=lambda: [0], min_length=1,
        description="one run per seed: it seeds the target's training (with arch), its privacy split, the "
                    "attacks and the draw of the evaluated samples (limit: --max-seeds)")
    samples: int = Field(100, ge=1, description="members evaluated per seed, and as many held-out non-members "
                                                "(limit: --max-membership-samples)")
    through_pipeline: bool = Field(False, description="query the target through the live pipeline (the edge's "
                                                      "/v1/infer -> tap -> cloud) instead of in process")
    split_point: str | None = Field(None, description="with through_pipeline: where the model is cut at the edge "
                                                      "(default its first split point)")

    @field_validator("attacks", mode="after")
    @classmethod
    def _unique_attacks(cls, value):
        return unique(value, "attack", lambda a: a.title, "; give each a distinct label")

    @field_validator("seeds", mode="after")
    @classmethod
    def _unique_seeds(cls, value):
        return unique(value, "seed")


def check_membership_spec(spec: MembershipExperimentSpec, limits: Limits, artifacts=None, data_root=None,
                          edge_url: str | None = None) -> dict:
    """Semantic checks; returns what was resolved (arch, dataset, split point); raises SpecError."""
    from models import SplitlabError, build_model

    from .spec import dataset_info

    arch, dataset, manifest, errors = check_model_source(spec, limits, artifacts)
    if manifest is not None:
        problem = _not_a_privacy_target(manifest)
        if problem:
            errors.append((("model_id",), f"model {spec.model_id!r} {problem}"))
    if spec.samples > limits.max_membership_samples:
        errors.append((("samples",), f"{spec.samples} members is over the limit of {limits.max_membership_samples} "
                                     "(--max-membership-samples / SPLITLAB_LAB_MAX_MEMBERSHIP_SAMPLES)"))
    if len(spec.seeds) > limits.max_seeds:
        errors.append((("seeds",), f"{len(spec.seeds)} seeds is over the limit of {limits.max_seeds} (--max-seeds)"))
    if len(spec.attacks) > limits.max_attacks:
        errors.append((("attacks",), f"{len(spec.attacks)} attacks is over the limit of {limits.max_attacks}"))
    split = None
    try:
        input_shape, _, _, n_train = dataset_info(dataset, str(data_root) if data_root else None)
    except SplitlabError as exc:
        errors.append((("dataset",), str(exc)))
    else:
        members = _member_count(spec, manifest, n_train)
        if members is not None and spec.samples > members:
            errors.append((("samples",), f"the target has {members} members (and as many non-members); asked "
                                         f"for {spec.samples}"))
        split = _check_split_point(spec, arch, input_shape, errors, build_model)
    if spec.through_pipeline and not edge_url:
        errors.append((("through_pipeline",), "this service has no edge to query through (attacker serve --edge "
                                              "URL); set through_pipeline to false to query in process"))
    for i, attack in enumerate(spec.attacks):
        errors.extend((("attacks", i, "params") + loc, msg) for loc, msg in membership_params_errors(attack, limits))
    if errors:
        raise SpecError(errors)
    return {"arch": arch, "dataset": dataset, "split_point": split}


def _not_a_privacy_target(manifest: dict) -> str | None:
    options = manifest.get("options") or {}
    if options.get("scheme", "privacy") != "privacy" or (manifest.get("members") or {}).get("split") != "train":
        return ("was not trained with the privacy split scheme: membership experiments need members and held-out "
                "non-members from its training split, and the attacker's data beside them")
    if options.get("members"):
        return "was trained on explicit member indices: its recipe cannot be given to the attacker without them"
    return None


def _member_count(spec: MembershipExperimentSpec, manifest: dict | None, n_train: int) -> int | None:
    """Members of the target (as many non-members are held out): the stored model's, or the privacy
    scheme's share of the training set cut at ``train.limit``."""
    if manifest is not None:
        return min(len(manifest["members"]["indices"]), len((manifest.get("non_members") or {}).get("indices", [])))
    members = int(n_train * TARGET_SHARE)
    return min(members, spec.train.limit) if spec.train and spec.train.limit else members


def _check_split_point(spec, arch, input_shape, errors, build_model) -> str | None:
    from models import SplitlabError

    if not spec.through_pipeline:
        if spec.split_point is not None:
            errors.append((("split_point",), "split_point applies only with through_pipeline (where the model "
                                             "is cut for the edge)"))
        return None
    try:
        points = build_model(arch, 10, input_shape).split_points
    except SplitlabError as exc:
        errors.append((("arch",) if spec.arch else ("model_id",), f"{arch} does not fit {spec.dataset}: {exc}"))
        return None
    if spec.split_point is None:
        return points[0]
    if spec.split_point not in points:
        errors.append((("split_point",), f"{arch} has no split point {spec.split_point!r}; choose from: "
                                         f"{', '.join(points)}"))
    return spec.split_point


def membership_params_errors(attack: MembershipAttackSpec, limits: Limits) -> list[tuple[tuple, str]]:
    """The service's parameters, the budget limits, then the attack's own checks (naming one)."""
    from ..attacks import AttackParameterError, attack_class

    errors = [((key,), message) for key, message in SERVICE_PARAMS.items() if key in attack.params]
    for key, value in attack.params.items():
        limit = _limit_of(key, limits)
        if limit is None or isinstance(value, bool) or not isinstance(value, int):
            continue
        if value > limit[0]:
            errors.append(((key,), f"{value} is over the limit of {limit[0]} ({limit[1]})"))
    if errors:
        return errors
    try:
        attack_class(f"membership/{attack.name}").Params.from_dict(membership_params(attack, limits))
    except (AttackParameterError, TypeError, ValueError) as exc:
        message = str(exc)
        key = next((k for k in attack.params if message.startswith(k) or f" {k}" in message), None)
        errors.append(((key,) if key else (), message))
    return errors


def _limit_of(key: str, limits: Limits) -> tuple[int, str] | None:
    if key in MODEL_COUNT_PARAMS:
        return limits.max_shadow_models, "--max-shadow-models / SPLITLAB_LAB_MAX_SHADOW_MODELS"
    if key in NETWORK_EPOCH_PARAMS:
        return limits.max_attack_epochs, "--max-attack-epochs / SPLITLAB_LAB_MAX_ATTACK_EPOCHS"
    return None


def membership_params(attack: MembershipAttackSpec, limits: Limits, seed: int | None = None,
                      device: str | None = None) -> dict[str, Any]:
    """The parameters handed to the attack: the user's, the run's seed and the service's device
    (where the attack has them), and any default over a budget limit lowered to the limit."""
    from ..attacks import attack_class

    cls = attack_class(f"membership/{attack.name}").Params
    fields = cls.__dataclass_fields__
    params = dict(attack.params)
    for key in fields:
        limit = _limit_of(key, limits)
        default = fields[key].default
        if limit is not None and key not in params and isinstance(default, int) and default > limit[0]:
            params[key] = limit[0]
    if seed is not None and "seed" in fields:
        params["seed"] = seed
    if device is not None and "device" in fields:
        params["device"] = device
    return params

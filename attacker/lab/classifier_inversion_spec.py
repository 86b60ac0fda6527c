"""The classifier-inversion experiment spec: ``{"kind": "classifier-inversion", ...}``.

Fredrikson et al.'s MI-FACE against a face recogniser (``face-mlp`` on the AT&T faces) deployed at
a split point: for each person (a class) the attack makes up the image the model is surest is that
person. The spec names the target (:mod:`.deployed_target`), the attacker's ``knowledge``
(``white-box``: the head the edge downloaded, as the tap captured it, joined to the tail;
``api``: the edge's ``/v1/infer`` answers only, NES gradient estimates), the ``people``, the
attack's ``params`` (``ClassifierParams``, validated up front: a bad one is a 422 naming it) and
optionally an ``evaluator_id``: a stored recogniser of another architecture trained on the same
faces, which judges the reconstructions without having been seen by the attack.

A model trained for the experiment trains on every training image (``train.scheme`` ``full``, the
default here): a person's class is all that is attacked, and 7 images a person are few already.

Example::

    {"kind": "classifier-inversion", "arch": "face-mlp", "dataset": "olivetti", "split_point": "fc1",
     "train": {"epochs": 20, "batch_size": 64}, "knowledge": "white-box", "people": 10,
     "params": {"iterations": 100, "denoise": 0.05}, "seed": 0}
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import ConfigDict, Field, field_validator

from .deployed_target import DEPLOYMENT_ID, TARGET_SOURCE, DeployedTarget, check_target
from .limits import Limits
from .membership_spec import MembershipTrainSpec
from .params_check import params_errors
from .spec import SPEC_CONFIG, SpecError, unique

ATTACK_KEY = "classifier-inversion/mi-face"
DATASETS = ("olivetti",)         # faces, one class per person
KNOWLEDGE = ("white-box", "api")


class FaceTrainSpec(MembershipTrainSpec):
    """The target's training budget; by default on every training image (``scheme`` ``full``)."""

    scheme: Literal["full", "privacy"] = Field(
        "full", description="full: every training image (default); privacy: a quarter of them (models.splits)")


Person = Annotated[int, Field(ge=0, le=10**6)]


class ClassifierInversionSpec(DeployedTarget):
    """A classifier-inversion experiment: which deployment, which knowledge, which people."""

    model_config = ConfigDict(**SPEC_CONFIG, json_schema_extra={**TARGET_SOURCE, "examples": [{
        "kind": "classifier-inversion", "arch": "face-mlp", "dataset": "olivetti", "split_point": "fc1",
        "train": {"epochs": 20, "batch_size": 64}, "knowledge": "white-box", "people": 10,
        "params": {"iterations": 100, "denoise": 0.05}, "seed": 0}]})
    TRAIN: ClassVar[type] = FaceTrainSpec

    kind: Literal["classifier-inversion"] = Field(description="classifier model inversion (Fredrikson et al.)")
    train: FaceTrainSpec | None = Field(None, description="the target's training budget (only with arch)")
    knowledge: Literal[KNOWLEDGE] = Field(  # type: ignore[valid-type]
        "white-box", description="white-box: the captured head (GetHead) joined to the tail, exact gradients; "
                                 "api: the edge's /v1/infer probabilities only, gradient-free estimates")
    people: Union[Annotated[int, Field(ge=1)], Annotated[list[Person], Field(min_length=1)]] = Field(
        10, description="the first N people (classes), or a list of person ids")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="the attack's parameters (ClassifierParams: iterations, step, loss, "
                                               "start, patience, target_cost, denoise, sharpen; api: samples, sigma, "
                                               "downsample, max_queries); seed and device are the service's")
    evaluator_id: str | None = Field(None, min_length=1, max_length=128, pattern=DEPLOYMENT_ID,
                                     description="optional: a stored recogniser of another architecture trained on "
                                                 "the same dataset; its top-1 / top-5 on the reconstructions")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the target's training (with arch) and the attack")

    @field_validator("people", mode="after")
    @classmethod
    def _unique_people(cls, value):
        return unique(value, "person") if isinstance(value, list) else value


def people_of(spec: dict) -> list[int]:
    people = spec["people"]
    return list(range(people)) if isinstance(people, int) else list(people)


def api_queries(params: dict, people: int) -> int:
    """Queries of the edge an API-only run makes at most (the attack's NES budget per person)."""
    from ..attacks import attack_class

    p = attack_class(ATTACK_KEY).Params.from_dict(params)
    return people * min(p.iterations, max(1, p.max_queries // (2 * p.samples + 1))) * (2 * p.samples + 1)


def check_classifier_inversion_spec(spec: ClassifierInversionSpec, limits: Limits, artifacts=None,
                                    data_root=None) -> dict:
    """Semantic checks; returns what was resolved (arch, dataset, split point); raises SpecError."""
    target, errors = check_target(spec, limits, artifacts, data_root, DATASETS, "classifier-inversion")
    classes = target.get("num_classes")
    count = spec.people if isinstance(spec.people, int) else len(spec.people)
    if classes is not None:
        if isinstance(spec.people, int) and spec.people > classes:
            errors.append((("people",), f"{target['dataset']} has {classes} people; asked for {spec.people}"))
        for i, person in enumerate(spec.people if isinstance(spec.people, list) else []):
            if person >= classes:
                errors.append((("people", i), f"person {person} is not one of {target['dataset']}'s 0..{classes - 1}"))
    param_errors = params_errors(ATTACK_KEY, spec.params, {
        "iterations": (limits.max_iterations, "--max-iterations / SPLITLAB_LAB_MAX_ITERATIONS")})
    errors += param_errors
    if not param_errors and spec.knowledge == "api":
        queries = api_queries(spec.params, count)
        if queries > limits.max_queries:
            errors.append((("params", "max_queries"), f"{count} people at this budget make up to {queries} "
                                                      f"queries, over the limit of {limits.max_queries} (--max-queries "
                                                      "/ SPLITLAB_LAB_MAX_QUERIES)"))
    if spec.evaluator_id is not None:
        errors.extend(_evaluator_errors(spec.evaluator_id, target, artifacts))
    if errors:
        raise SpecError(errors)
    return {"arch": target["arch"], "dataset": target["dataset"], "split_point": target["split_point"]}


def _evaluator_errors(evaluator_id: str, target: dict, artifacts) -> list[tuple[tuple, str]]:
    from models import ArtifactStore, SplitlabError

    try:
        manifest = ArtifactStore(artifacts).manifest(evaluator_id)
    except SplitlabError as exc:
        return [(("evaluator_id",), f"no trained model {evaluator_id!r} in the artifact store ({exc})")]
    if manifest["dataset"] != target["dataset"]:
        return [(("evaluator_id",), f"evaluator {evaluator_id!r} was trained on {manifest['dataset']!r}, not "
                                    f"{target['dataset']!r}")]
    if manifest["arch"] == target["arch"]:
        return [(("evaluator_id",), f"the evaluator must be another architecture than the target ({target['arch']}): "
                                    "it judges the target's reconstructions")]
    return []

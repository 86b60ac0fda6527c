"""The attribute experiment spec: ``{"kind": "attribute", ...}`` on ``POST /v1/experiments``.

A gender classifier (``aia-lenet`` on UTKFace) deployed at a split point leaks attributes it was
never trained on. The spec names the target (:mod:`.deployed_target`: a stored deployment, or a
model and a split point), what the attacker observes of the victims' requests (``features``: what
the tap captured; ``outputs``: the released probabilities), the private attributes it is after
(``race``, ``age-band``), how many of its own labelled images it trains the attack on
(``aux_images``, from the privacy split's shadow and aux parts), how many victims are sent through
the edge (``victims``, from the test split) and the attack's parameters (``AttributeParams``).
Validation is two-layered as for the other kinds: pydantic for types and the catalogue,
:func:`check_attribute_spec` for what depends on the service, both 422 naming the field.

Example::

    {"kind": "attribute", "arch": "aia-lenet", "dataset": "utkface", "split_point": "pool1",
     "train": {"epochs": 3, "limit": 2000, "lr": 0.002},
     "observations": ["features", "outputs"], "attributes": ["race", "age-band"],
     "aux_images": 1500, "victims": 500, "params": {"epochs": 20}, "seed": 0}
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator

from ..attacks.attribute.attributes import ATTRIBUTES
from .deployed_target import TARGET_SOURCE, DeployedTarget, check_target
from .limits import Limits
from .membership_spec import MembershipTrainSpec
from .params_check import params_errors
from .spec import SPEC_CONFIG, SpecError, unique

DATASETS = ("utkface",)          # a dataset whose images carry race and age
OBSERVATIONS = ("features", "outputs")
ATTACK_KEYS = {"features": "attribute/features", "outputs": "attribute/outputs"}
DEFAULT_AUX_IMAGES = 2000


class AttributeExperimentSpec(DeployedTarget):
    """An attribute-inference experiment: which deployment, what is observed, which attributes."""

    model_config = ConfigDict(**SPEC_CONFIG, json_schema_extra={**TARGET_SOURCE, "examples": [{
        "kind": "attribute", "arch": "aia-lenet", "dataset": "utkface", "split_point": "pool1",
        "train": {"epochs": 3, "limit": 2000, "lr": 0.002}, "observations": ["features", "outputs"],
        "attributes": ["race"], "aux_images": 1500, "victims": 500, "params": {"epochs": 20}, "seed": 0}]})
    TRAIN: ClassVar[type] = MembershipTrainSpec

    kind: Literal["attribute"] = Field(description="attribute inference from what the edge sends or releases")
    train: MembershipTrainSpec | None = Field(
        None, description="the target's training budget (only with arch; privacy split scheme: the target trains "
                          "on a quarter of the training set, the attacker owns the shadow and aux half)")
    observations: list[Literal[OBSERVATIONS]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["features"], min_length=1,
        description="what the attacker observes of each victim's request: features (the split features the tap "
                    "captured) and/or outputs (the released probabilities)")
    attributes: list[Literal[tuple(ATTRIBUTES)]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["race"], min_length=1,
        description="private attributes to infer: race (5 classes) and/or age-band (0-19, 20-39, 40-59, 60+)")
    aux_images: int | None = Field(None, ge=10, description="the attacker's own labelled images the attack learns "
                                                            f"from (default min({DEFAULT_AUX_IMAGES}, "
                                                            "--max-aux-images)); each is queried through the edge")
    victims: int = Field(500, ge=10, description="victims' test images sent through the edge (limit: --max-victims)")
    params: dict[str, Any] = Field(default_factory=dict,
                                   description="the attack's parameters (AttributeParams: hidden, epochs, batch_size, "
                                               "lr, weight_decay, pool); seed and device are the service's")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="seeds the target's training (with arch), the draws of "
                                                         "the attacker's images and the victims, and the attack")

    @field_validator("observations", mode="after")
    @classmethod
    def _unique_observations(cls, value):
        return unique(value, "observation")

    @field_validator("attributes", mode="after")
    @classmethod
    def _unique_attributes(cls, value):
        return unique(value, "attribute")


def aux_count(spec: dict, limits: Limits) -> int:
    return spec.get("aux_images") or min(DEFAULT_AUX_IMAGES, limits.max_aux_images)


def check_attribute_spec(spec: AttributeExperimentSpec, limits: Limits, artifacts=None, data_root=None) -> dict:
    """Semantic checks; returns what was resolved (arch, dataset, split point); raises SpecError."""
    from models import SplitlabError

    from ..attacks.attribute import attacker_indices
    from .spec import dataset_info

    target, errors = check_target(spec, limits, artifacts, data_root, DATASETS, "attribute")
    manifest = target["manifest"]
    if manifest is None and target["deployment"] is not None:
        from models import ArtifactStore

        try:
            manifest = ArtifactStore(artifacts).manifest(target["deployment"]["model_id"])
        except SplitlabError as exc:
            errors.append((("deployment_id",), f"the deployment's model is not in the artifact store ({exc})"))
    if manifest is not None:
        try:
            attacker_indices(manifest.get("splits") or {})
        except SplitlabError as exc:  # a target trained on every image (full scheme): nothing is the attacker's
            errors.append((("deployment_id",) if spec.deployment_id else ("model_id",), str(exc)))
    if spec.aux_images is not None and spec.aux_images > limits.max_aux_images:
        errors.append((("aux_images",), f"{spec.aux_images} images is over the limit of {limits.max_aux_images} "
                                        "(--max-aux-images / SPLITLAB_LAB_MAX_AUX_IMAGES)"))
    if spec.victims > limits.max_victims:
        errors.append((("victims",), f"{spec.victims} victims is over the limit of {limits.max_victims} "
                                     "(--max-victims / SPLITLAB_LAB_MAX_VICTIMS)"))
    elif target.get("input_shape"):
        n_test = dataset_info(target["dataset"], str(data_root) if data_root else None)[2]
        if spec.victims > n_test:
            errors.append((("victims",), f"{target['dataset']} has only {n_test} test images; asked for "
                                         f"{spec.victims}"))
    for obs in spec.observations:
        errors.extend(params_errors(ATTACK_KEYS[obs], spec.params,
                                    {"epochs": (limits.max_epochs, "--max-epochs / SPLITLAB_LAB_MAX_EPOCHS")}))
        if errors and errors[-1][0][:1] == ("params",):
            break  # the same parameters for both observations: one error is enough
    if errors:
        raise SpecError(errors)
    return {"arch": target["arch"], "dataset": target["dataset"], "split_point": target["split_point"]}

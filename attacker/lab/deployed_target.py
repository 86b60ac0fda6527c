"""The target of an attribute or classifier-inversion experiment: one model deployed at one split point.

Three ways to name it, exactly one per spec (the JSON schema's ``oneOf`` states them, and
:func:`check_target` answers any mix with a 422 naming the field):

* ``deployment_id`` - a deployment already in the cloud's artifact store (any feature defence it
  was deployed with stays in its head);
* ``arch`` + ``dataset`` (+ ``train``) + ``split_point`` - a model trained for the experiment
  (reused by an identical earlier spec, as for the other kinds) and deployed at the split point;
* ``model_id`` + ``split_point`` - a stored model deployed at the split point.

Each kind accepts only the datasets its attack and metrics mean something on (``datasets``: UTKFace
with its race and age for attribute inference, the AT&T faces for classifier inversion), and the
architecture must fit that dataset: a spec naming another gets a 422 before anything is trained.
"""

from __future__ import annotations

import functools
from typing import Any

from pydantic import Field

from .spec import ModelSource, SpecError, dataset_info

_GIVEN, _ABSENT = {"not": {"type": "null"}}, {"type": "null"}
DEPLOYMENT_ID = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
# The target comes from exactly one place (check_target enforces it and names the field).
TARGET_SOURCE = {"oneOf": [
    {"title": "train a model and deploy it", "required": ["arch", "dataset", "split_point"],
     "properties": {"arch": _GIVEN, "model_id": _ABSENT, "deployment_id": _ABSENT}},
    {"title": "deploy a stored model", "required": ["model_id", "split_point"],
     "properties": {"model_id": _GIVEN, "arch": _ABSENT, "train": _ABSENT, "deployment_id": _ABSENT}},
    {"title": "attack a stored deployment", "required": ["deployment_id"],
     "properties": {"deployment_id": _GIVEN, "arch": _ABSENT, "model_id": _ABSENT, "train": _ABSENT,
                    "split_point": _ABSENT}},
]}


class DeployedTarget(ModelSource):
    """A model deployed at a split point: ``deployment_id``, or a model (``arch`` or ``model_id``) and
    ``split_point``."""

    deployment_id: str | None = Field(None, min_length=1, max_length=200, pattern=DEPLOYMENT_ID,
                                      description="a deployment in the artifact store (or give arch / model_id and "
                                                  "split_point)")
    split_point: str | None = Field(None, min_length=1, max_length=64,
                                    description="where the model is cut for the edge (with arch or model_id)")


@functools.lru_cache(maxsize=32)
def split_points_fitting(arch: str, num_classes: int, input_shape: tuple) -> tuple[str, ...]:
    """The split points of ``arch`` built for the dataset's shape; raises SplitlabError if it does not fit
    (built once per service: face-mlp's 31M weights take a second to initialise)."""
    from models import build_model

    return tuple(build_model(arch, num_classes, input_shape).split_points)


def check_target(spec: DeployedTarget, limits, artifacts, data_root, datasets: tuple[str, ...],
                 kind: str) -> tuple[dict, list[tuple[tuple, str]]]:
    """``(target, errors)``: the resolved target (arch, dataset, split point, input shape, number of
    classes, the stored model's manifest and deployment record where they exist) and the errors
    found so far. Raises SpecError when the target itself cannot be found."""
    from models import ArtifactStore, SplitlabError

    from .spec import check_model_source

    if spec.deployment_id is not None:
        errors = [((key,), f"{key} does not go with deployment_id (the deployment fixes the model and its split "
                           "point)") for key in ("arch", "model_id", "train", "split_point")
                  if getattr(spec, key) is not None]
        if errors:
            raise SpecError(errors)
        store = ArtifactStore(artifacts)
        try:
            record = store.deployment(spec.deployment_id)
        except SplitlabError:
            raise SpecError([(("deployment_id",), f"no deployment {spec.deployment_id!r} in the artifact store "
                                                  f"({store.root})")]) from None
        arch, dataset, split, manifest = record["arch"], record["dataset"], record["split"], None
        if spec.dataset is not None and spec.dataset != dataset:
            errors.append((("dataset",), f"deployment {spec.deployment_id!r} is of a model trained on {dataset!r}, "
                                         f"not {spec.dataset!r}"))
        source = ("deployment_id",)
    else:
        record = None
        arch, dataset, manifest, errors = check_model_source(spec, limits, artifacts)
        split = spec.split_point
        if split is None:
            errors.append((("split_point",), "split_point is required with arch or model_id (where the edge cuts "
                                             "the model)"))
        source = ("arch",) if spec.arch else ("model_id",)
    target = {"arch": arch, "dataset": dataset, "split_point": split, "manifest": manifest, "deployment": record}
    if dataset not in datasets:
        errors.append(((source if spec.arch is None else ("dataset",)),
                       f"{kind} experiments run on {', '.join(datasets)}; this target's dataset is {dataset!r}"))
        return target, errors
    try:
        input_shape, classes, _, _ = dataset_info(dataset, str(data_root) if data_root else None)
    except SplitlabError as exc:
        errors.append((("dataset",), str(exc)))
        return target, errors
    target.update(input_shape=list(input_shape), num_classes=classes)
    try:
        points = split_points_fitting(arch, classes, tuple(input_shape))
    except SplitlabError as exc:
        errors.append((source, f"{arch} does not fit {dataset}: {exc}"))
        return target, errors
    if record is None and split is not None and split not in points:
        errors.append((("split_point",), f"{arch} has no split point {split!r}; choose from: {', '.join(points)}"))
    return target, errors


def resolve_target(store, spec: dict, data_root=None) -> dict[str, Any]:
    """At run time: the model (trained or reused) and its deployment; returns model id, manifest,
    deployment record and whether each was reused."""
    from .models_setup import ensure_deployment, ensure_model

    if spec.get("deployment_id"):
        record = store.deployment(spec["deployment_id"])
        model_id = record["model_id"]
        return {"model_id": model_id, "manifest": store.manifest(model_id), "model_reused": True,
                "deployment": record, "deployment_reused": True}
    model_id, manifest, reused = ensure_model(store, spec, data_root)
    record, dep_reused = ensure_deployment(store, model_id, spec["split_point"], None, data_root)
    return {"model_id": model_id, "manifest": manifest, "model_reused": reused, "deployment": record,
            "deployment_reused": dep_reused}


def start(run, what: str) -> dict:
    """The first step of an attribute or classifier-inversion run (``run``: a :class:`.runner.Steps`):
    the edge is there (else fail before any training), the target resolved, ``results["model"]`` set."""
    from models import SplitlabError

    if not run.cfg.edge_url:
        raise SplitlabError(f"no edge to {what} through: start the service with --edge URL")
    run.step("target: train or reuse, deploy")
    target = resolve_target(run.store, run.spec, run.cfg.data_root)
    run.results["model"] = model_summary(target)
    run.advance()
    return target


def model_summary(target: dict) -> dict:
    """The results' ``model`` entry: the target model and its deployment."""
    m, d = target["manifest"], target["deployment"]
    return {"model_id": target["model_id"], "arch": m["arch"], "dataset": m["dataset"],
            "reused": target["model_reused"],
            "train_accuracy": m.get("train_accuracy"), "test_accuracy": m.get("test_accuracy"),
            "deployment_id": d["deployment_id"], "split_point": d["split"], "feature_shape": d.get("feature_shape"),
            "deployment_reused": target["deployment_reused"]}

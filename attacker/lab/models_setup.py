"""Train-or-reuse the experiment's model and deploy its split points into the cloud's artifact store.

A model trained for an experiment gets a deterministic id from what determines it (architecture,
dataset, training budget and defence, seed), so a second experiment with the same training spec,
and the re-run of an interrupted one, reuse it instead of training again; the model comes from
:func:`models.reference.obtain_model` under that id, which compares a stored model's training spec
with the one asked for and refuses a different one rather than reuse it. Deployments are reused
the same way (``<model_id>--<split>[--<defence>]``).

A feature defence (any of :mod:`models.defences.features`) is part of the deployment: ``deploy``
exports it in ``head.onnx`` and records it in ``deployment.json`` in one atomic write, and the
deployment id ends with its label. The edge downloads that head like any other, so the defence runs
on the device before anything leaves it.
"""

from __future__ import annotations

import hashlib
import json
import threading

from models import ArtifactStore, SplitlabError, deployment_id_for
from models.defences import features as fdef
from models.deploy import deploy

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(key, threading.Lock())


def lab_model_id(arch: str, dataset: str, train_spec: dict, seed: int) -> str:
    key = json.dumps({"arch": arch, "dataset": dataset, "train": train_spec, "seed": seed}, sort_keys=True)
    return f"lab-{arch}-{dataset}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def lab_train_options(arch: str, dataset: str, train_spec: dict, seed: int):
    """The ``TrainOptions`` of an experiment's training spec (its optional keys at their defaults)."""
    from models.training import TrainOptions

    optional = {k: train_spec[k] for k in ("limit", "dropout", "weight_decay", "lr", "batch_size", "dp_epsilon",
                                           "scheme") if train_spec.get(k) is not None}
    if train_spec.get("weight_decay_scope", "all") != "all":
        optional["weight_decay_scope"] = train_spec["weight_decay_scope"]
    if train_spec.get("dp_epsilon") is not None:  # delta and clip mean something only with DP
        optional.update(dp_delta=train_spec.get("dp_delta", 1e-5), dp_max_grad_norm=train_spec.get("dp_max_grad_norm", 1.0))
    return TrainOptions(arch=arch, dataset=dataset, epochs=train_spec["epochs"], seed=seed, **optional)


def ensure_model(store: ArtifactStore, spec: dict, data_root=None, seed: int | None = None,
                 device: str = "cpu") -> tuple[str, dict, bool]:
    """(model id, manifest, reused?) for the spec: the given ``model_id``, or one trained for it
    (with ``seed``, default the spec's). A model stored under the lab's id is reused only when it
    was trained with this spec (:func:`models.reference.obtain_model` refuses another one)."""
    from models.reference import obtain_model

    if spec.get("model_id"):
        return spec["model_id"], store.manifest(spec["model_id"]), True
    seed = spec["seed"] if seed is None else seed
    train_spec = spec["train"]
    model_id = lab_model_id(spec["arch"], spec["dataset"], train_spec, seed)
    reused = (store.model_dir(model_id) / "manifest.json").is_file()
    opts = lab_train_options(spec["arch"], spec["dataset"], train_spec, seed)
    _, manifest = obtain_model(store, opts, device, progress=False, model_id=model_id, data_root=data_root)
    return model_id, manifest, reused


def ensure_deployment(store: ArtifactStore, model_id: str, split: str, defense=None,
                      data_root=None) -> tuple[dict, bool]:
    """(deployment record, reused?) of ``model_id`` at ``split`` with the feature defence(s), if any."""
    chain = fdef.defences(defense)
    dep_id = deployment_id_for(model_id, split, fdef.id_suffix(chain))
    with _lock(f"deployment:{store.root}:{dep_id}"):
        if (store.deployment_dir(dep_id) / "deployment.json").is_file():
            return store.deployment(dep_id), True
        try:
            return deploy(store, model_id, split, dep_id, data_root=data_root, defence=chain), False
        except SplitlabError:
            if (store.deployment_dir(dep_id) / "deployment.json").is_file():
                return store.deployment(dep_id), True
            raise

"""Rebuild stored models, heads and tails from the artifact store."""

from __future__ import annotations

from torch import nn

from .architectures import SplitNet
from .artifacts import ArtifactStore, load_into
from .split import split_model
from .zoo import build_model


def architecture(record: dict) -> SplitNet:
    """The untrained network a model manifest or a deployment record describes: its architecture,
    dropout layers, and the DP-SGD variant (BatchNorm -> GroupNorm) when it was trained with DP."""
    dropout = record.get("options", record).get("dropout", 0.0)
    return build_model(record["arch"], record["num_classes"], record["input_shape"], dropout,
                       dp_compatible=bool(record.get("dp_compatible", False)))


def load_model(store: ArtifactStore, model_id: str) -> tuple[SplitNet, dict]:
    """The trained full model (eval mode) and its manifest."""
    manifest = store.manifest(model_id)
    folder = store.model_dir(model_id)
    model = architecture(manifest)
    load_into(model, store.load_state_dict(folder / "weights.pt"), folder / "weights.pt")
    return model.eval(), manifest


def load_tail(store: ArtifactStore, deployment_id: str) -> tuple[nn.Sequential, dict]:
    """The cloud's tail (eval mode) and the deployment record; the head's weights are not needed."""
    dep = store.deployment(deployment_id)
    tail = tail_architecture(dep)
    path = store.deployment_dir(deployment_id) / "tail.pt"
    load_into(tail, store.load_state_dict(path), path)
    return tail.eval(), dep


def tail_architecture(dep: dict) -> nn.Sequential:
    """An untrained tail of the deployment's architecture (what a query-free attacker rebuilds)."""
    return split_model(architecture(dep), dep["split"])[1]

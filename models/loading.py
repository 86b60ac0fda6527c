"""Rebuild stored models, heads and tails from the artifact store."""

from __future__ import annotations

from torch import nn

from .architectures import SplitNet
from .artifacts import ArtifactStore, load_into
from .errors import SplitlabError
from .split import split_model
from .zoo import build_model


def architecture(record: dict) -> SplitNet:
    """The untrained network a model manifest or a deployment record describes: its architecture,
    dropout layers, and the DP-SGD variant (BatchNorm -> GroupNorm) when it was trained with DP."""
    dropout = record.get("options", record).get("dropout", 0.0)
    return build_model(record["arch"], record["num_classes"], record["input_shape"], dropout,
                       dp_compatible=bool(record.get("dp_compatible", False)))


def load_onnx_weights(module: nn.Module, graph) -> nn.Module:
    """Load ``module``'s parameters and buffers from the initializers of an ONNX ``graph`` with the
    same names (heads are exported unfolded, :func:`models.deploy.export_head_onnx`); BatchNorm's
    step counter, which no graph holds, is left as it is. Raises :class:`SplitlabError` naming the
    first state-dict entries the graph lacks (a head exported with folding, or another architecture)."""
    import torch
    from onnx import numpy_helper

    weights = {i.name: i for i in graph.initializer}
    state = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    absent = [k for k in state if k not in weights]
    if absent:
        weights.update(_deduplicated(graph, weights))
        absent = [k for k in state if k not in weights]
    if absent:
        raise SplitlabError(f"the ONNX graph has no initializers named {', '.join(absent[:4])}"
                            + (f" (and {len(absent) - 4} more)" if len(absent) > 4 else ""))
    loaded = {k: torch.from_numpy(numpy_helper.to_array(weights[k]).copy()) for k in state}
    bad = [f"{k} {tuple(loaded[k].shape)} != {tuple(v.shape)}" for k, v in state.items()
           if loaded[k].numel() != v.numel()]
    if bad:
        raise SplitlabError(f"the ONNX graph's initializers do not fit the architecture: {'; '.join(bad[:4])}")
    module.load_state_dict({k: t.reshape(state[k].shape) for k, t in loaded.items()}, strict=False)
    return module


def _deduplicated(graph, weights: dict) -> dict:
    """The state-dict entries the ONNX exporter stored once under another entry's name because their
    values were identical (an untrained model's LayerNorm weights, all ones, and zero biases, or
    BatchNorm's weight and running variance): each keeps its name as the output of an ``Identity``
    node reading the initializer it became."""
    return {n.output[0]: weights[n.input[0]] for n in graph.node
            if n.op_type == "Identity" and n.input and n.input[0] in weights}


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

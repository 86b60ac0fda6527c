"""Deploy a trained model at a split point: the head as ONNX for the edge, the tail for the cloud.

The head is exported with a dynamic batch axis and checked against torch with ONNX Runtime on real
images from the model's dataset (plus random inputs); if the two differ by more than ``tolerance``
the deployment is refused and nothing is written.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings

import numpy as np
import torch

from .artifacts import ArtifactStore, deployment_id_for, validate_id
from .errors import SplitlabError
from .loading import load_model
from .onnx_runtime import head_session
from .split import split_model
from .zoo import check_split_point, feature_shapes

TOLERANCE = 1e-4


def export_head_onnx(head: torch.nn.Module, input_shape) -> bytes:
    """The head as ONNX bytes, input ``input`` (batch, C, H, W) -> output ``features``."""
    buf = io.BytesIO()
    dummy = torch.zeros(2, *input_shape)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact and fast here
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(head.eval(), (dummy,), buf, input_names=["input"], output_names=["features"],
                          dynamic_axes={"input": {0: "batch"}, "features": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return buf.getvalue()


def check_head(onnx_bytes: bytes, head: torch.nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute difference between ONNX Runtime's and torch's head outputs."""
    sess = head_session(onnx_bytes)
    with torch.no_grad():
        expected = head(inputs).numpy()
    got = sess.run(None, {"input": inputs.numpy()})[0]
    if got.shape != expected.shape:
        raise SplitlabError(f"ONNX head output shape {got.shape} differs from torch's {expected.shape}")
    return float(np.max(np.abs(got - expected)))


def deploy(store: ArtifactStore, model_id: str, split: str, deployment_id: str | None = None,
           overwrite: bool = False, data_root=None, check_inputs: torch.Tensor | None = None) -> dict:
    """Write ``deployments/<id>/`` for ``model_id`` cut at ``split``; returns the deployment record."""
    model, manifest = load_model(store, model_id)
    check_split_point(model, split, manifest["arch"])
    dep_id = validate_id("deployment", deployment_id or deployment_id_for(model_id, split))
    final = store.deployment_dir(dep_id)
    if final.exists() and not overwrite:
        raise SplitlabError(f"deployment {dep_id!r} already exists in {final.parent}; pass --force to replace it")
    input_shape = tuple(manifest["input_shape"])
    head, tail = split_model(model, split)
    onnx_bytes = export_head_onnx(head, input_shape)
    if check_inputs is None:
        check_inputs = _check_inputs(manifest, data_root)
    diff = check_head(onnx_bytes, head, check_inputs)
    if not diff <= TOLERANCE:
        raise SplitlabError(f"ONNX Runtime's head differs from torch's by {diff:.3g} (> {TOLERANCE}); "
                            "deployment refused")
    feature_shape = feature_shapes(model, input_shape)[split]
    record = {
        "deployment_id": dep_id,
        "model_id": model_id,
        "arch": manifest["arch"],
        "dataset": manifest["dataset"],
        "split": split,
        "num_classes": manifest["num_classes"],
        "input_shape": list(input_shape),
        "feature_shape": list(feature_shape),
        "dropout": manifest["options"].get("dropout", 0.0),
        "dp_compatible": bool(manifest.get("dp_compatible", False)),
        "preprocessing": manifest["preprocessing"],
        "head_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "onnx_max_abs_diff": diff,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.write_folder(final, {
        "head.onnx": onnx_bytes,
        "tail.pt": lambda p: torch.save(tail.state_dict(), p),
        "deployment.json": record,
    }, overwrite)
    return record


def _check_inputs(manifest: dict, data_root) -> torch.Tensor:
    """Eight test images of the model's dataset (when available) and eight uniform-noise images."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(8, *manifest["input_shape"], generator=gen)
    try:
        from .datasets import load_dataset, to_tensor

        ds = load_dataset(manifest["dataset"], data_root)
        return torch.cat([to_tensor(ds.x_test[:8]), noise])
    except SplitlabError:
        return noise

"""Deploy a trained model at a split point: the head as ONNX for the edge, the tail for the cloud
(as ONNX, ``tail.onnx``, and as torch weights, ``tail.pt``).

The head is exported with a dynamic batch axis and checked against torch with ONNX Runtime on real
images from the model's dataset (plus random inputs); if the two differ by more than ``tolerance``
the deployment is refused and nothing is written. The tail is exported here too and checked the
same way (on the head's features of those images plus random normal features): a cloud that
serves it with ONNX Runtime then needs no torch at all, which takes a cloud serving one lenet5
tail from 768 MiB resident to 95 MiB (``python -m benchmarks.cloud_memory``), and loading a tail
costs no export.

A feature defence (:mod:`models.defences.features`) is part of the head: the defended head is
exported, checked and written by the same single ``write_folder`` call as the tail and
``deployment.json``, so no deployment is ever on disk without its defence, not even after a crash.
What the defence costs is measured here too: the tail's accuracy on held-out test images with
clean and with defended features, recorded in ``deployment.json``.
"""

from __future__ import annotations

import hashlib
import io
import time
import warnings

import numpy as np
import torch

from .artifacts import ArtifactStore, deployment_id_for, validate_id
from .defences import features as fdef
from .errors import SplitlabError
from .loading import load_model
from .onnx_runtime import head_session
from .split import split_model
from .zoo import check_split_point, feature_shapes

TOLERANCE = 1e-4
CALIBRATION_IMAGES = 256   # training images that set a quantize defence's range
ACCURACY_IMAGES = 512      # held-out test images the defended tail accuracy is measured on


def export_onnx(module: torch.nn.Module, input_shape, input_name: str = "input",
                output_name: str = "features", fold: bool = True) -> bytes:
    """``module`` as ONNX bytes with a dynamic batch axis, ``input_name`` -> ``output_name``;
    ``fold=False`` turns the exporter's constant folding off (see :func:`export_head_onnx`)."""
    buf = io.BytesIO()
    dummy = torch.zeros(2, *input_shape)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact and fast here
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (dummy,), buf, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=17, dynamo=False, do_constant_folding=fold)
    return buf.getvalue()


def export_head_onnx(head: torch.nn.Module, input_shape) -> bytes:
    """The head as ONNX bytes, input ``input`` (batch, C, H, W) -> output ``features``.

    Exported without constant folding, so every parameter and buffer keeps its state-dict name in
    the file: folding merges an eval-mode BatchNorm into the convolution before it and a GroupNorm's
    affine weights into new ``onnx::Mul_*`` constants, after which the edge's ``--runtime torch``
    (and a white-box attacker's rebuild) could not load them by name. ONNX Runtime folds them
    anyway when it builds its session (``ORT_ENABLE_ALL``), so this costs no inference time (a batch
    of 32, median of 60 interleaved runs, folded vs unfolded, on a machine at load 10: resnet18 at
    layer2 311 vs 319 ms, mia-cnn at relu2 1.22 vs 1.20 ms); the file grows by the unfolded
    parameters (mia-cnn at relu2: 76 -> 78 KB, resnet18 at layer2: 2702 -> 2715 KB; lenet5:
    unchanged). The exporter still stores identical tensors once (an untrained BatchNorm's weight
    and running variance, both all ones; an untrained LayerNorm's weights and zero biases), each
    duplicate's name kept as an ``Identity`` node's output, which is where
    :func:`models.loading.load_onnx_weights` finds it."""
    return export_onnx(head, input_shape, fold=False)


def export_tail_onnx(tail: torch.nn.Module, feature_shape) -> bytes:
    """The tail as ONNX bytes, input ``features`` -> output ``logits`` (an empty tail, split at the
    last layer, exports as an ``Identity``)."""
    return export_onnx(tail, feature_shape, "features", "logits")


def check_tail(onnx_bytes: bytes, tail: torch.nn.Module, features: np.ndarray) -> float:
    """Largest absolute difference between ONNX Runtime's and torch's tail outputs on ``features``
    (float32), ``inf`` when the shapes differ."""
    sess = head_session(onnx_bytes)
    with torch.inference_mode():
        expected = tail(torch.from_numpy(features)).numpy()
    got = sess.run(None, {sess.get_inputs()[0].name: features})[0]
    return float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")


def tail_probe(feature_shape, real: np.ndarray | None = None) -> np.ndarray:
    """What a tail export is checked on: three standard-normal feature tensors (seeded), after
    ``real`` features (the head's outputs on real images) when given."""
    probe = np.random.default_rng(0).standard_normal((3, *feature_shape)).astype(np.float32)
    return probe if real is None else np.concatenate([np.asarray(real, np.float32), probe])


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
           overwrite: bool = False, data_root=None, check_inputs: torch.Tensor | None = None,
           defence=None) -> dict:
    """Write ``deployments/<id>/`` for ``model_id`` cut at ``split``; returns the deployment record.

    ``defence``: a feature defence chain (a spec string such as ``gaussian:sigma=0.1``, JSON objects,
    or :mod:`models.defences.features` specs); the default id then ends with ``--<defence label>``.
    """
    chain = fdef.defences(defence)
    model, manifest = load_model(store, model_id)
    check_split_point(model, split, manifest["arch"])
    input_shape = tuple(manifest["input_shape"])
    ds = _dataset(manifest, data_root) if check_inputs is None or chain else None
    calibration = _calibration(ds, chain, check_inputs, manifest)
    defended = fdef.defended_head(model, split, chain, input_shape, calibration)
    dep_id = validate_id("deployment", deployment_id or deployment_id_for(model_id, split, fdef.id_suffix(chain)))
    final = store.deployment_dir(dep_id)
    if final.exists() and not overwrite:
        raise SplitlabError(f"deployment {dep_id!r} already exists in {final.parent}; pass --force to replace it")
    point = defended.split
    head, tail = split_model(model, point)
    if check_inputs is None:
        check_inputs = _check_inputs(manifest, ds)
    onnx_bytes = export_head_onnx(head, input_shape)
    diff = check_head(onnx_bytes, head, check_inputs)
    if not diff <= TOLERANCE:
        raise SplitlabError(f"ONNX Runtime's head differs from torch's by {diff:.3g} (> {TOLERANCE}); "
                            "deployment refused")
    feature_shape = feature_shapes(model, input_shape)[point]
    record = {
        "deployment_id": dep_id,
        "model_id": model_id,
        "arch": manifest["arch"],
        "dataset": manifest["dataset"],
        "split": point,
        "num_classes": manifest["num_classes"],
        "input_shape": list(input_shape),
        "feature_shape": list(feature_shape),
        "dropout": manifest["options"].get("dropout", 0.0),
        "dp_compatible": bool(manifest.get("dp_compatible", False)),
        "preprocessing": manifest["preprocessing"],
        "feature_defense": fdef.to_json(defended.defences),
        "onnx_max_abs_diff": diff,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if defended.layout != "nchw":  # absent: (C, H, W) or flat, as every record before layouts
        record["feature_layout"] = defended.layout
    if chain:
        onnx_bytes_clean, onnx_bytes = onnx_bytes, _defended_onnx(defended, input_shape, check_inputs)
        record["requested_split"] = split
        record["clean_head_sha256"] = hashlib.sha256(onnx_bytes_clean).hexdigest()
        record["accuracy"] = _accuracy(model, defended.module, tail, ds)
    record["head_sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    tail_onnx = export_tail_onnx(tail, feature_shape)
    with torch.inference_mode():
        real_features = head(check_inputs).numpy()
    tail_diff = check_tail(tail_onnx, tail, tail_probe(feature_shape, real_features))
    if not tail_diff <= TOLERANCE:
        raise SplitlabError(f"ONNX Runtime's tail differs from torch's by {tail_diff:.3g} (> {TOLERANCE}); "
                            "deployment refused")
    record["tail_onnx_max_abs_diff"] = tail_diff
    record["tail_sha256"] = hashlib.sha256(tail_onnx).hexdigest()
    store.write_folder(final, {
        "head.onnx": onnx_bytes,
        "tail.onnx": tail_onnx,
        "tail.pt": lambda p: torch.save(tail.state_dict(), p),
        "deployment.json": record,
    }, overwrite)
    return record


def _defended_onnx(defended: "fdef.DefendedHead", input_shape, inputs: torch.Tensor) -> bytes:
    """The defended head's ONNX bytes (defences in its metadata), run once by ONNX Runtime; a head
    without random layers must match torch (to within one quantisation step)."""
    onnx_bytes = fdef.tag_onnx(export_head_onnx(defended.module, input_shape), defended.defences)
    got = head_session(onnx_bytes).run(None, {"input": inputs.numpy()})[0]
    with torch.no_grad():
        expected = defended.module(inputs).numpy()
    if got.shape != expected.shape or not np.isfinite(got).all():
        raise SplitlabError(f"the defended head's ONNX output ({got.shape}) is not finite or differs in shape from "
                            f"torch's {expected.shape}; deployment refused")
    tolerance = fdef.comparison_tolerance(defended.defences, TOLERANCE)
    if tolerance is not None:
        diff = float(np.max(np.abs(got - expected)))
        if not diff <= tolerance:
            raise SplitlabError(f"ONNX Runtime's defended head differs from torch's by {diff:.3g} (> {tolerance:.3g}); "
                                "deployment refused")
    return onnx_bytes


def _accuracy(model, head: torch.nn.Module, tail: torch.nn.Module, ds) -> dict | None:
    """The tail's accuracy on held-out test images, with clean and with defended features."""
    if ds is None:
        return None
    from .datasets import to_tensor

    x, y = to_tensor(ds.x_test[:ACCURACY_IMAGES]), torch.as_tensor(np.asarray(ds.y_test[:ACCURACY_IMAGES]))
    with torch.no_grad():
        clean = float((model.eval()(x).argmax(1) == y).float().mean())
        defended = float((tail.eval()(head(x)).argmax(1) == y).float().mean())
    return {"images": len(y), "clean": clean, "defended": defended, "split": "test"}


def _dataset(manifest: dict, data_root):
    """The model's dataset, or None where it is not available (checks then use noise images)."""
    from .datasets import load_dataset

    try:
        return load_dataset(manifest["dataset"], data_root)
    except SplitlabError:
        return None


def _calibration(ds, chain, check_inputs, manifest) -> torch.Tensor | None:
    """Images that set a quantize defence's range: training images, else the check inputs."""
    if not any(isinstance(d, fdef.Quantize) and d.lo is None for d in chain):
        return None
    if ds is not None:
        from .datasets import to_tensor

        return to_tensor(ds.x_train[:CALIBRATION_IMAGES])
    return check_inputs if check_inputs is not None else _check_inputs(manifest, None)


def _check_inputs(manifest: dict, ds) -> torch.Tensor:
    """Eight test images of the model's dataset (when available) and eight uniform-noise images."""
    gen = torch.Generator().manual_seed(0)
    noise = torch.rand(8, *manifest["input_shape"], generator=gen)
    if ds is None:
        return noise
    from .datasets import to_tensor

    return torch.cat([to_tensor(ds.x_test[:8]), noise])

"""What runs a tail in the cloud: ONNX Runtime by default, torch on request or as the fallback.

ONNX Runtime runs this zoo's layers 2-10x faster than torch on a small CPU (measured in
``benchmarks/results/serving.md``). ``python -m models deploy`` writes each tail as ONNX
(``tail.onnx``, checked against torch to 1e-4 there), so serving it needs no torch at all: this
module imports torch only inside the functions that use it. A cloud serving one lenet5 tail from
``tail.onnx`` holds 95 MiB resident, against 712-769 MiB once torch is imported
(``python -m benchmarks.cloud_memory``). Deployments written before ``tail.onnx`` existed are
exported here when first loaded and checked the same way (:func:`make_runner`, which needs torch),
falling back to torch if the check fails. ``--runtime torch`` keeps torch.

A runner maps validated ``Features`` (still in their wire dtype) to float32 logits. With ONNX
Runtime, float16 and int8 features are converted inside the graph (a ``Cast`` or
``DequantizeLinear`` in front of the tail, exact, and ~10x faster than numpy's float16
conversion); other dtypes are converted with numpy. On CUDA (``providers`` with ONNX Runtime's
CUDA provider, or ``device="cuda"`` for torch) float16 and int8 features travel to the GPU as
they arrived and are converted there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from protos import split_inference_pb2 as pb

from .features import Features
from .logs import log

if TYPE_CHECKING:
    import torch

logger = logging.getLogger("cloud_server")

RUNTIMES = ("onnxruntime", "torch")
TOLERANCE = 1e-4
CPU = ["CPUExecutionProvider"]


@dataclass
class TailRunner:
    runtime: str
    run: Callable[[Features], np.ndarray]
    note: str = ""
    device: str = "cpu"

    def __call__(self, features: Features) -> np.ndarray:
        return self.run(features)


def _torch():
    """torch, imported on first use. Decoded float32 features are read-only views of the request
    bytes (no copy) and the tail never writes to its input; torch warns about such arrays once
    per process: have that once here, muted."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.from_numpy(np.frombuffer(bytes(4), np.float32))
    return torch


def torch_runner(tail: "torch.nn.Module", note: str = "", device: str = "cpu") -> TailRunner:
    torch = _torch()
    tail = tail.to(device)
    on_device = device != "cpu"

    def run(f: Features):
        with torch.inference_mode():
            if on_device and f.code in (pb.Tensor.FLOAT16, pb.Tensor.INT8):  # fewer bytes to copy over
                x = torch.from_numpy(f.raw).to(device).float()
                if f.code == pb.Tensor.INT8:
                    x = x * f.scale
            else:
                x = torch.from_numpy(f.float32()).to(device)
            return tail(x).float().cpu().numpy()

    return TailRunner("torch", run, note, device)


def with_input_conversion(onnx_bytes: bytes, code: int) -> bytes:
    """The tail graph taking float16 (``Cast``) or int8 + scale (``DequantizeLinear``) input."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_bytes)
    graph = model.graph
    original = graph.input[0]
    name = original.name
    dims = [d.dim_param or d.dim_value for d in original.type.tensor_type.shape.dim]
    del graph.input[:]
    if code == pb.Tensor.FLOAT16:
        graph.input.append(helper.make_tensor_value_info("wire", TensorProto.FLOAT16, dims))
        graph.node.insert(0, helper.make_node("Cast", ["wire"], [name], to=TensorProto.FLOAT))
    elif code == pb.Tensor.INT8:
        graph.input.extend([helper.make_tensor_value_info("wire", TensorProto.INT8, dims),
                            helper.make_tensor_value_info("wire_scale", TensorProto.FLOAT, [])])
        graph.initializer.append(helper.make_tensor("wire_zero", TensorProto.INT8, [], [0]))
        graph.node.insert(0, helper.make_node("DequantizeLinear", ["wire", "wire_scale", "wire_zero"], [name]))
    else:
        raise ValueError(f"no in-graph conversion for wire dtype {code}")
    return model.SerializeToString()


def onnx_runner(onnx_bytes: bytes, threads: int = 1, providers: list[str] | None = None) -> TailRunner:
    """A runner for a tail's ONNX graph (``features`` -> ``logits``); needs no torch.

    ``providers``: ONNX Runtime's execution providers, CPU only by default. The runner's
    ``device`` is ``"cuda"`` only when the session really got the CUDA provider.
    """
    from models.onnx_runtime import head_session

    providers = providers or CPU
    sess = head_session(onnx_bytes, threads, providers)
    name = sess.get_inputs()[0].name
    device = "cuda" if "CUDAExecutionProvider" in sess.get_providers() else "cpu"
    converting: dict[int, object] = {}  # wire dtype -> session with the conversion in the graph

    def run(f: Features):
        if f.code == pb.Tensor.FLOAT32:
            return sess.run(None, {name: f.raw})[0]
        if f.code in (pb.Tensor.FLOAT16, pb.Tensor.INT8):
            conv = converting.get(f.code)
            if conv is None:  # built on first use, on the compute thread
                conv = converting[f.code] = head_session(with_input_conversion(onnx_bytes, f.code), threads, providers)
            feeds = {"wire": f.raw}
            if f.code == pb.Tensor.INT8:
                feeds["wire_scale"] = np.asarray(f.scale, dtype=np.float32)
            return conv.run(None, feeds)[0]
        return sess.run(None, {name: f.float32()})[0]

    return TailRunner("onnxruntime", run, device=device)


def exported_runner(tail: "torch.nn.Module", feature_shape, threads: int = 1,
                    providers: list[str] | None = None) -> TailRunner:
    """The tail exported to ONNX now and checked against torch (what ``deploy`` does for
    ``tail.onnx``); raises ``ValueError`` if they differ."""
    from models.deploy import check_tail, export_tail_onnx, tail_probe

    onnx_bytes = export_tail_onnx(tail, feature_shape)
    diff = check_tail(onnx_bytes, tail, tail_probe(feature_shape))
    if not diff <= TOLERANCE:
        raise ValueError(f"ONNX Runtime's tail differs from torch's by {diff:.3g}")
    return onnx_runner(onnx_bytes, threads, providers)


def make_runner(tail: "torch.nn.Module", feature_shape, runtime: str = "onnxruntime", threads: int = 1,
                deployment_id: str = "", device: str = "cpu", providers: list[str] | None = None) -> TailRunner:
    """A runner for a torch tail: ``runtime="torch"`` on ``device``, else exported to ONNX (run
    with ``providers``), with torch on ``device`` as the fallback when the export is refused."""
    if runtime == "torch":
        return torch_runner(tail, device=device)
    try:
        return exported_runner(tail, feature_shape, threads, providers)
    except Exception as exc:  # noqa: BLE001 - any export or runtime problem: keep serving with torch
        log(logger, logging.WARNING, "onnx tail refused, using torch", deployment=deployment_id, error=str(exc))
        return torch_runner(tail, f"onnxruntime refused: {exc}", device)

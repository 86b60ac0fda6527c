"""What runs a tail in the cloud: ONNX Runtime by default, torch on request or as the fallback.

ONNX Runtime runs this zoo's layers 2-10x faster than torch on a small CPU (measured in
``benchmarks/results/serving.md``), so the server exports each tail to ONNX when it loads it,
checks the export against torch on random features (max |difference| <= 1e-4, else it falls back
to torch and logs why) and runs that, single-threaded with spinning off like the edge's heads.
``--runtime torch`` keeps torch.

A runner maps validated ``Features`` (still in their wire dtype) to float32 logits. With ONNX
Runtime, float16 and int8 features are converted inside the graph (a ``Cast`` or
``DequantizeLinear`` in front of the tail, exact, and ~10x faster than numpy's float16
conversion); other dtypes are converted with numpy.
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from protos import split_inference_pb2 as pb

from .logs import log
from .features import Features

logger = logging.getLogger("cloud_server")

# Decoded float32 features are read-only views of the request bytes (no copy); the tail never
# writes to its input. torch warns about such arrays once per process: have that once here, muted.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.from_numpy(np.frombuffer(bytes(4), np.float32))
RUNTIMES = ("onnxruntime", "torch")
TOLERANCE = 1e-4


@dataclass
class TailRunner:
    runtime: str
    run: Callable[[Features], np.ndarray]
    note: str = ""

    def __call__(self, features: Features) -> np.ndarray:
        return self.run(features)


def torch_runner(tail: torch.nn.Module, note: str = "") -> TailRunner:
    def run(f: Features):
        with torch.inference_mode():
            return tail(torch.from_numpy(f.float32())).numpy()

    return TailRunner("torch", run, note)


def export_onnx(tail: torch.nn.Module, feature_shape) -> bytes:
    buf = io.BytesIO()
    dummy = torch.zeros(2, *feature_shape)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but exact and fast here
        warnings.simplefilter("ignore")
        torch.onnx.export(tail.eval(), (dummy,), buf, input_names=["features"], output_names=["logits"],
                          dynamic_axes={"features": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return buf.getvalue()


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


def onnx_runner(tail: torch.nn.Module, feature_shape, threads: int = 1) -> TailRunner:
    """The tail exported to ONNX and checked against torch; raises ``ValueError`` if they differ."""
    from models.onnx_runtime import head_session

    if len(tail) == 0:  # split at the last layer: the features are the logits
        return TailRunner("identity", lambda f: f.float32())
    onnx_bytes = export_onnx(tail, feature_shape)
    sess = head_session(onnx_bytes, threads)
    name = sess.get_inputs()[0].name
    probe = np.random.default_rng(0).standard_normal((3, *feature_shape)).astype(np.float32)
    with torch.inference_mode():
        expected = tail(torch.from_numpy(probe)).numpy()
    got = sess.run(None, {name: probe})[0]
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE:
        raise ValueError(f"ONNX Runtime's tail differs from torch's by {diff:.3g}")

    converting: dict[int, object] = {}  # wire dtype -> session with the conversion in the graph

    def run(f: Features):
        if f.code == pb.Tensor.FLOAT32:
            return sess.run(None, {name: f.raw})[0]
        if f.code in (pb.Tensor.FLOAT16, pb.Tensor.INT8):
            conv = converting.get(f.code)
            if conv is None:  # built on first use, on the compute thread
                conv = converting[f.code] = head_session(with_input_conversion(onnx_bytes, f.code), threads)
            feeds = {"wire": f.raw}
            if f.code == pb.Tensor.INT8:
                feeds["wire_scale"] = np.asarray(f.scale, dtype=np.float32)
            return conv.run(None, feeds)[0]
        return sess.run(None, {name: f.float32()})[0]

    return TailRunner("onnxruntime", run)


def make_runner(tail: torch.nn.Module, feature_shape, runtime: str = "onnxruntime", threads: int = 1,
                deployment_id: str = "") -> TailRunner:
    if runtime == "torch":
        return torch_runner(tail)
    try:
        return onnx_runner(tail, feature_shape, threads)
    except Exception as exc:  # noqa: BLE001 - any export or runtime problem: keep serving with torch
        log(logger, logging.WARNING, "onnx tail refused, using torch", deployment=deployment_id, error=str(exc))
        return torch_runner(tail, f"onnxruntime refused: {exc}")

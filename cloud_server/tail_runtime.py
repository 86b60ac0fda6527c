"""What runs a tail in the cloud: ONNX Runtime by default, torch on request or as the fallback.

ONNX Runtime runs this zoo's layers 2-10x faster than torch on a small CPU (measured in
``benchmarks/results/serving.md``), so the server exports each tail to ONNX when it loads it,
checks the export against torch on random features (max |difference| <= 1e-4, else it falls back
to torch and logs why) and runs that, single-threaded with spinning off like the edge's heads.
``--runtime torch`` keeps torch. Either way a runner maps float32 features (batch, ...) to float32
logits (batch, classes).
"""

from __future__ import annotations

import io
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .logs import log

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
    run: Callable[[np.ndarray], np.ndarray]
    note: str = ""

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.run(x)


def torch_runner(tail: torch.nn.Module, note: str = "") -> TailRunner:
    def run(x):
        with torch.inference_mode():
            return tail(torch.from_numpy(x)).numpy()

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


def onnx_runner(tail: torch.nn.Module, feature_shape, threads: int = 1) -> TailRunner:
    """The tail exported to ONNX and checked against torch; raises ``ValueError`` if they differ."""
    from models.onnx_runtime import head_session

    if len(tail) == 0:  # split at the last layer: the features are the logits
        return TailRunner("identity", lambda x: x)
    sess = head_session(export_onnx(tail, feature_shape), threads)
    name = sess.get_inputs()[0].name
    probe = np.random.default_rng(0).standard_normal((3, *feature_shape)).astype(np.float32)
    with torch.inference_mode():
        expected = tail(torch.from_numpy(probe)).numpy()
    got = sess.run(None, {name: probe})[0]
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else float("inf")
    if not diff <= TOLERANCE:
        raise ValueError(f"ONNX Runtime's tail differs from torch's by {diff:.3g}")

    def run(x):
        return sess.run(None, {name: x})[0]

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

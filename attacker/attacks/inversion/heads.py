"""Turn a captured ONNX head (a ``GetHead`` payload or ``head.onnx``) into a differentiable torch module.

The white-box and query-free attacks need gradients through the head, which ONNX Runtime does not
give. Two ways are tried, and whichever is used is checked against ONNX Runtime on random inputs
before it is trusted:

1. ``onnx2torch`` converts the graph op by op (works for any head the exporter writes, including
   folded batch norms and residual blocks);
2. failing that (an op ``onnx2torch`` lacks, or a mismatch), and when the deployment record is
   known (``arch``, ``split``, ``num_classes``, ``input_shape``), the zoo architecture is rebuilt,
   cut at the split point and loaded with the ONNX initializers by name.

The returned module is in eval mode with frozen parameters.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import torch
from torch import nn

from models.errors import SplitlabError
from models.onnx_runtime import head_session

log = logging.getLogger(__name__)
TOLERANCE = 1e-4


def onnx_input_shape(onnx_bytes: bytes) -> tuple[int, int, int]:
    """The (C, H, W) of the head's input, read from the graph (batch axis excluded)."""
    model = _parse(onnx_bytes)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if len(shape) != 3 or min(shape, default=0) < 1:
        raise SplitlabError(f"the ONNX head's input is not (batch, C, H, W) with static C, H, W: {dims}")
    return shape  # type: ignore[return-value]


def _parse(onnx_bytes: bytes) -> onnx.ModelProto:
    if not isinstance(onnx_bytes, (bytes, bytearray)) or not onnx_bytes:
        raise SplitlabError("the head must be non-empty ONNX bytes")
    try:
        return onnx.load_from_string(bytes(onnx_bytes))
    except Exception as exc:  # onnx raises DecodeError and others
        raise SplitlabError(f"the head is not a readable ONNX model: {exc}") from exc


def max_difference(module: nn.Module, onnx_bytes: bytes, input_shape, count: int = 4) -> float:
    """Largest absolute difference between ``module`` and ONNX Runtime, relative to the output scale."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(count, *input_shape, generator=gen)
    got = head_session(bytes(onnx_bytes)).run(None, {_input_name(onnx_bytes): x.numpy()})[0]
    with torch.no_grad():
        mine = module(x).numpy()
    if mine.shape != got.shape:
        return float("inf")
    return float(np.max(np.abs(mine - got)) / (1.0 + np.max(np.abs(got))))


def _input_name(onnx_bytes: bytes) -> str:
    return _parse(onnx_bytes).graph.input[0].name


def _freeze(module: nn.Module) -> nn.Module:
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _via_onnx2torch(onnx_bytes: bytes) -> nn.Module:
    from onnx2torch import convert

    return convert(_parse(onnx_bytes))


def _via_rebuild(onnx_bytes: bytes, record: dict) -> nn.Module:
    from models.loading import architecture, load_onnx_weights
    from models.split import split_model

    missing = [k for k in ("arch", "split", "num_classes", "input_shape") if k not in record]
    if missing:
        raise SplitlabError(f"the deployment record lacks {missing}")
    head, _ = split_model(architecture(record), record["split"])  # the DP variant when dp_compatible
    return load_onnx_weights(head, _parse(onnx_bytes).graph)


def head_from_onnx(onnx_bytes: bytes, record: dict | None = None, input_shape=None) -> tuple[nn.Module, str]:
    """A frozen torch module computing the ONNX head, and which method built it."""
    shape = tuple(input_shape or onnx_input_shape(onnx_bytes))
    errors = []
    builders = [("onnx2torch", lambda: _via_onnx2torch(onnx_bytes))]
    if record:
        builders.append(("rebuild", lambda: _via_rebuild(onnx_bytes, record)))
    for method, build in builders:
        try:
            module = _freeze(build())
            diff = max_difference(module, onnx_bytes, shape)
        except Exception as exc:  # any failure of a converter means: try the next way
            errors.append(f"{method}: {type(exc).__name__}: {exc}")
            continue
        if diff <= TOLERANCE:
            return module, method
        errors.append(f"{method}: differs from ONNX Runtime by {diff:.3g}")
    hint = "" if record else " (pass the deployment record to allow rebuilding from the architecture)"
    raise SplitlabError("cannot turn the ONNX head into a differentiable module" + hint + ": " + "; ".join(errors))

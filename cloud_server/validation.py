"""Check an ``InferRequest`` against its deployment before anything touches the model.

Every problem a client can cause is answered with ``INVALID_ARGUMENT`` and a message naming it:
no features, an unknown dtype, a shape that is not (batch, *feature shape), an empty batch, a batch
over the server's limit, bytes that do not match shape x dtype, NaN/Inf in float features, a bad
int8 scale. (Unknown deployments are ``NOT_FOUND``, see the registry; oversized messages are
refused by gRPC itself with ``RESOURCE_EXHAUSTED``.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from protos import split_inference_pb2 as pb
from protos import wire

from .errors import RequestError
from .features import Features

if TYPE_CHECKING:  # the registry loads torch; validation (and the fuzz harness) need no model code
    from .registry import Deployment


def features_of(request: pb.InferRequest, dep: Deployment, max_batch: int) -> Features:
    """The request's validated features (batch, *feature shape), or a ``RequestError``."""
    if not request.HasField("features"):
        raise _invalid("request has no features tensor")
    t = request.features
    if t.dtype == pb.Tensor.DTYPE_UNSPECIFIED or wire.dtype_name(t.dtype).startswith("unknown"):
        raise _invalid(f"unknown features dtype {t.dtype}; expected one of {', '.join(wire.WIRE_DTYPES)}")
    shape = tuple(t.shape)
    if len(shape) != len(dep.feature_shape) + 1 or shape[1:] != dep.feature_shape:
        expected = "[batch, " + ", ".join(str(s) for s in dep.feature_shape) + "]"
        raise _invalid(f"features have shape {wire.shape_text(shape)} but deployment {dep.id!r} expects {expected}")
    batch = shape[0]
    if batch <= 0:
        raise _invalid(f"empty batch: features have shape {wire.shape_text(shape)} (batch must be at least 1)")
    if batch > max_batch:
        raise _invalid(f"batch of {batch} examples exceeds this server's limit of {max_batch} "
                       "(--max-batch); split it into smaller requests")
    try:
        return Features(*wire.decode_raw(t))
    except wire.WireError as exc:
        raise _invalid(f"features: {exc}") from None


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)

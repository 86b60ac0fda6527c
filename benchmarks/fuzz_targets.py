"""What must hold for any bytes a client sends the cloud, as checks on one input.

The cloud reads requests with its own zero-copy parser (``protos.wire.parse_infer_request``)
instead of protobuf's, then decodes and validates the features (``cloud_server.validation``). A
bug there is reachable by anyone who can open a connection, so the same properties are checked
by the property-based tests (``tests/test_hostile_input.py``, hypothesis) and by the coverage-
guided fuzz run (``benchmarks/fuzz_parser.py``, atheris), from this one definition:

* the parser agrees with protobuf: both refuse the bytes (``DecodeError``), or both read the same
  ids, dtype, shape, data and scale;
* decoding a tensor returns a float32 array of exactly its shape, finite unless non-finite values
  were allowed, no bigger than 4 bytes per byte received, or raises ``WireError`` with a short
  message; never another exception;
* validating a parsed request against a deployment returns features of shape (batch, *feature
  shape) or refuses with ``INVALID_ARGUMENT`` and a message short enough for a gRPC status.

A broken property raises ``AssertionError`` (which the fuzzer records as a crash).
"""

from __future__ import annotations

from types import SimpleNamespace

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from cloud_server.errors import MAX_MESSAGE, RequestError
from cloud_server.validation import features_of
from protos import split_inference_pb2 as pb
from protos import wire

MAX_WIRE_ERROR = 512  # characters of a WireError message
# A small deployment (what validation reads of a ``registry.Deployment``), so that random input
# reaches the valid path too; without the registry, which would load torch into the fuzzer.
DEPLOYMENT = SimpleNamespace(id="fuzz", feature_shape=(2, 3))
MAX_BATCH = 64


def same_request(view, msg: pb.InferRequest) -> None:
    """The zero-copy view holds what protobuf's message holds."""
    assert view.deployment_id == msg.deployment_id, (view.deployment_id, msg.deployment_id)
    assert view.request_id == msg.request_id, (view.request_id, msg.request_id)
    assert view.HasField("features") == msg.HasField("features")
    if msg.HasField("features"):
        f, g = view.features, msg.features
        assert f.dtype == g.dtype, (f.dtype, g.dtype)
        assert list(f.shape) == list(g.shape), (list(f.shape), list(g.shape))
        assert bytes(f.data) == g.data
        assert np.float32(f.scale).tobytes() == np.float32(g.scale).tobytes(), (f.scale, g.scale)


def check_tensor(tensor, allow_nonfinite: bool = False) -> np.ndarray | None:
    """Decode ``tensor`` (a message or a view); the array, or None when it was refused as it should be."""
    try:
        out = wire.decode(tensor, allow_nonfinite)
    except wire.WireError as exc:
        message = str(exc)
        assert 0 < len(message) <= MAX_WIRE_ERROR, f"WireError message of {len(message)} characters"
        return None
    assert out.dtype == np.float32 and out.shape == tuple(tensor.shape), (out.dtype, out.shape)
    assert out.nbytes <= 4 * len(tensor.data), f"{out.nbytes} bytes decoded from {len(tensor.data)}"
    if not allow_nonfinite:
        assert np.isfinite(out).all(), "a decoded tensor holds NaN or Inf"
    return out


def check_validation(request) -> None:
    """Validate a parsed request against :data:`DEPLOYMENT`: features of the right shape, or INVALID_ARGUMENT."""
    try:
        features = features_of(request, DEPLOYMENT, MAX_BATCH)
    except RequestError as exc:
        assert exc.code == grpc.StatusCode.INVALID_ARGUMENT, exc.code
        assert 0 < len(exc.message) <= MAX_MESSAGE, f"status message of {len(exc.message)} characters"
        return
    assert features.raw.shape[1:] == DEPLOYMENT.feature_shape and 1 <= len(features) <= MAX_BATCH
    assert np.isfinite(features.float32()).all()


def check_request_bytes(data: bytes) -> None:
    """All three properties for one input: parse (against protobuf), decode, validate."""
    try:
        expected = pb.InferRequest.FromString(data)
    except DecodeError:
        expected = None
    try:
        view = wire.parse_infer_request(data)
    except DecodeError:
        assert expected is None, "the zero-copy parser refused bytes protobuf reads"
        return
    assert expected is not None, "the zero-copy parser read bytes protobuf refuses"
    same_request(view, expected)
    if view.HasField("features"):
        check_tensor(view.features)
    check_validation(view)

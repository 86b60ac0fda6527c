"""Tensors on the wire: numpy arrays <-> the ``Tensor`` message (dtype, shape, raw bytes).

Wire dtypes: ``float32``, ``float16``, ``bfloat16`` (the top 16 bits of a float32, rounded to
nearest even), ``int8`` (symmetric: value = int8 * scale, scale = max|x| / 127) and ``uint8``.
Bytes are little-endian, C order. :func:`decode` validates everything a peer could get wrong and
raises :class:`WireError` with a message naming the problem.
"""

from __future__ import annotations

import numpy as np

from . import split_inference_pb2 as pb

WIRE_DTYPES = {"float32": pb.Tensor.FLOAT32, "float16": pb.Tensor.FLOAT16, "bfloat16": pb.Tensor.BFLOAT16,
               "int8": pb.Tensor.INT8, "uint8": pb.Tensor.UINT8}
_ITEMSIZE = {pb.Tensor.FLOAT32: 4, pb.Tensor.FLOAT16: 2, pb.Tensor.BFLOAT16: 2, pb.Tensor.INT8: 1,
             pb.Tensor.UINT8: 1}
_NUMPY = {pb.Tensor.FLOAT32: "<f4", pb.Tensor.FLOAT16: "<f2", pb.Tensor.INT8: "i1", pb.Tensor.UINT8: "u1"}


class WireError(ValueError):
    """A tensor message that cannot be decoded; the message says why."""


def dtype_name(code: int) -> str:
    for name, value in WIRE_DTYPES.items():
        if value == code:
            return name
    return f"unknown({code})"


def encode_into(tensor: pb.Tensor, array: np.ndarray, wire_dtype: str = "float32",
                scale: float | None = None) -> pb.Tensor:
    """Fill ``tensor`` (a message field, set in place to avoid copying) from ``array``.

    An array that is already in the wire dtype is sent as is (an edge can cast or quantise inside
    its head); an ``int8`` array then needs its ``scale``.
    """
    if wire_dtype not in WIRE_DTYPES:
        raise WireError(f"unknown wire dtype {wire_dtype!r}; choose one of {', '.join(WIRE_DTYPES)}")
    code = WIRE_DTYPES[wire_dtype]
    tensor.dtype = code
    del tensor.shape[:]
    tensor.shape.extend(int(s) for s in array.shape)
    tensor.scale = 0.0
    if code == pb.Tensor.BFLOAT16:
        bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
        tensor.data = (rounded >> np.uint32(16)).astype("<u2").tobytes()
    elif code == pb.Tensor.INT8 and array.dtype == np.int8:
        if scale is None or not (np.isfinite(scale) and scale > 0):
            raise WireError(f"an int8 array needs a positive finite scale, got {scale}")
        tensor.scale = float(scale)
        tensor.data = np.ascontiguousarray(array).tobytes()
    elif code == pb.Tensor.INT8:
        peak = float(np.max(np.abs(array))) if array.size else 0.0
        scale = peak / 127.0 if peak > 0 else 1.0
        tensor.scale = scale
        tensor.data = np.clip(np.rint(array / scale), -127, 127).astype("i1").tobytes()
    else:
        tensor.data = np.ascontiguousarray(array, dtype=_NUMPY[code]).tobytes()
    return tensor


def encode(array: np.ndarray, wire_dtype: str = "float32", scale: float | None = None) -> pb.Tensor:
    return encode_into(pb.Tensor(), array, wire_dtype, scale)


def decode(tensor: pb.Tensor, allow_nonfinite: bool = False) -> np.ndarray:
    """The tensor as a float32 numpy array; raises :class:`WireError` when it is malformed."""
    code = tensor.dtype
    if code not in _ITEMSIZE:
        raise WireError(f"unknown tensor dtype {code}; expected one of {', '.join(WIRE_DTYPES)}")
    shape = tuple(int(s) for s in tensor.shape)
    if not shape:
        raise WireError("tensor has no shape")
    if any(s < 0 for s in shape):
        raise WireError(f"tensor shape {list(shape)} has a negative dimension")
    count = int(np.prod(shape, dtype=np.int64))
    expected = count * _ITEMSIZE[code]
    if len(tensor.data) != expected:
        raise WireError(f"tensor data is {len(tensor.data)} bytes but shape {list(shape)} x "
                        f"{dtype_name(code)} needs {expected}")
    if code == pb.Tensor.BFLOAT16:
        out = (np.frombuffer(tensor.data, "<u2").astype("<u4") << np.uint32(16)).view("<f4")
    elif code == pb.Tensor.INT8:
        if not (np.isfinite(tensor.scale) and tensor.scale > 0):
            raise WireError(f"int8 tensor needs a positive finite scale, got {tensor.scale}")
        out = np.frombuffer(tensor.data, "i1").astype(np.float32) * np.float32(tensor.scale)
    else:
        out = np.frombuffer(tensor.data, _NUMPY[code]).astype(np.float32, copy=False)
    out = out.reshape(shape)
    if not allow_nonfinite and code in (pb.Tensor.FLOAT32, pb.Tensor.FLOAT16, pb.Tensor.BFLOAT16):
        if not np.isfinite(out).all():
            raise WireError("tensor contains NaN or Inf values")
    return out

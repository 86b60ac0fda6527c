"""Tensors on the wire: numpy arrays <-> the ``Tensor`` message (dtype, shape, raw bytes).

Wire dtypes: ``float32``, ``float16``, ``bfloat16`` (the top 16 bits of a float32, rounded to
nearest even), ``int8`` (symmetric: value = int8 * scale, scale = max|x| / 127) and ``uint8``.
Bytes are little-endian, C order. :func:`decode` validates everything a peer could get wrong and
raises :class:`WireError` with a message naming the problem. The checks run on the header alone
(dtype, shape, byte count) before any array exists, so a hostile header (a huge, negative or
overflowing shape, more dimensions than numpy has) costs nothing, and what decoding allocates is
bounded by the bytes actually received (4 bytes of float32 per byte, for int8 and uint8); the
messages abbreviate long shapes so that an error cannot be bigger than a gRPC status may carry.

Large tensors are the hot path of split inference, so copies are counted:

* :func:`infer_request_bytes` writes a serialized ``InferRequest`` straight from the array's
  buffer (one copy; byte-identical to protobuf's own ``SerializeToString``, which copies the
  payload three times and is ~30x slower at 16 MiB on this machine);
* :func:`decode_raw` returns a zero-copy view in the wire dtype (validated: size, dtype, NaN/Inf by
  bit tests, which are ~8x faster than ``np.isfinite`` on float16), so a receiver can convert
  inside its model (ONNX Runtime casts float16 ~10x faster than numpy), or call
  :func:`to_float32`.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from . import split_inference_pb2 as pb

WIRE_DTYPES = {"float32": pb.Tensor.FLOAT32, "float16": pb.Tensor.FLOAT16, "bfloat16": pb.Tensor.BFLOAT16,
               "int8": pb.Tensor.INT8, "uint8": pb.Tensor.UINT8}
_ITEMSIZE = {pb.Tensor.FLOAT32: 4, pb.Tensor.FLOAT16: 2, pb.Tensor.BFLOAT16: 2, pb.Tensor.INT8: 1,
             pb.Tensor.UINT8: 1}
# numpy dtype of the raw representation (bfloat16 travels as its 16 bits)
_NUMPY = {pb.Tensor.FLOAT32: "<f4", pb.Tensor.FLOAT16: "<f2", pb.Tensor.BFLOAT16: "<u2", pb.Tensor.INT8: "i1",
          pb.Tensor.UINT8: "u1"}


MAX_NDIM = 64  # numpy's limit
_MAX_BYTES = sys.maxsize  # the largest array numpy can describe (decoding gives float32)
_INT8_MAX_SCALE = float(np.finfo(np.float32).max) / 128  # -128 * scale still a finite float32


class WireError(ValueError):
    """A tensor message that cannot be decoded; the message says why."""


def shape_text(shape) -> str:
    """``[2, 3]``; a shape of more than 8 dimensions is abbreviated (``[1, 1, 1, ..., 1] (70 dims)``)."""
    shape = list(shape)
    if len(shape) <= 8:
        return str(shape)
    return "[" + ", ".join(str(d) for d in shape[:3]) + f", ..., {shape[-1]}] ({len(shape)} dims)"


def dtype_name(code: int) -> str:
    for name, value in WIRE_DTYPES.items():
        if value == code:
            return name
    return f"unknown({code})"


# --- encoding ---------------------------------------------------------------------------------

def wire_array(array: np.ndarray, wire_dtype: str = "float32", scale: float | None = None) -> tuple[np.ndarray, float]:
    """``array`` in its wire representation (C-contiguous) and the int8 scale (0 otherwise).

    An array that is already in the wire dtype is used as is (an edge can cast or quantise inside
    its head); an ``int8`` array then needs its ``scale``.
    """
    if wire_dtype not in WIRE_DTYPES:
        raise WireError(f"unknown wire dtype {wire_dtype!r}; choose one of {', '.join(WIRE_DTYPES)}")
    code = WIRE_DTYPES[wire_dtype]
    if code == pb.Tensor.BFLOAT16:
        bits = np.ascontiguousarray(array, dtype="<f4").view("<u4")
        rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
        return (rounded >> np.uint32(16)).astype("<u2"), 0.0
    if code == pb.Tensor.INT8 and array.dtype == np.int8:
        if scale is None or not (np.isfinite(scale) and 0 < scale <= _INT8_MAX_SCALE):
            raise WireError(f"an int8 array needs a positive finite scale of at most {_INT8_MAX_SCALE:g}, "
                            f"got {scale}")
        return np.ascontiguousarray(array), float(scale)
    if code == pb.Tensor.INT8:
        peak = float(np.max(np.abs(array))) if array.size else 0.0
        scale = min(peak / 127.0, _INT8_MAX_SCALE) if peak > 0 else 1.0
        return np.clip(np.rint(array / scale), -127, 127).astype("i1"), scale
    return np.ascontiguousarray(array, dtype=_NUMPY[code]), 0.0


def encode_into(tensor: pb.Tensor, array: np.ndarray, wire_dtype: str = "float32",
                scale: float | None = None) -> pb.Tensor:
    """Fill ``tensor`` (a message field, set in place) from ``array`` (see :func:`wire_array`)."""
    raw, scale = wire_array(array, wire_dtype, scale)
    tensor.dtype = WIRE_DTYPES[wire_dtype]
    del tensor.shape[:]
    tensor.shape.extend(int(s) for s in array.shape)
    tensor.scale = scale
    tensor.data = raw.tobytes()
    return tensor


def encode(array: np.ndarray, wire_dtype: str = "float32", scale: float | None = None) -> pb.Tensor:
    return encode_into(pb.Tensor(), array, wire_dtype, scale)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


_TAG_FEATURES = b"\x1a"  # InferRequest.features: field 3, length-delimited
_TAG_DATA = b"\x1a"      # Tensor.data: field 3, length-delimited


def infer_request_bytes(deployment_id: str, request_id: str, array: np.ndarray, wire_dtype: str = "float32",
                        scale: float | None = None) -> bytes:
    """A serialized ``InferRequest`` built from ``array``'s buffer with a single copy.

    The bytes equal ``InferRequest(..., features=encode(array, wire_dtype)).SerializeToString()``.
    """
    raw, scale = wire_array(array, wire_dtype, scale)
    head = pb.InferRequest(deployment_id=deployment_id, request_id=request_id).SerializeToString()
    before = pb.Tensor(dtype=WIRE_DTYPES[wire_dtype], shape=[int(s) for s in array.shape]).SerializeToString()
    after = pb.Tensor(scale=scale).SerializeToString()
    size = raw.nbytes
    data_field = (_TAG_DATA + _varint(size)) if size else b""  # proto3 omits empty bytes
    tensor_len = len(before) + len(data_field) + size + len(after)
    parts = [head, _TAG_FEATURES, _varint(tensor_len), before, data_field]
    if size:
        parts.append(memoryview(raw).cast("B"))
    parts.append(after)
    return b"".join(parts)


# --- decoding ---------------------------------------------------------------------------------

def decode_raw(tensor: pb.Tensor, allow_nonfinite: bool = False) -> tuple[np.ndarray, int, float]:
    """(zero-copy view in the wire representation, dtype code, int8 scale); validates everything.

    The view has the tensor's shape; bfloat16 comes as its raw ``uint16`` bits.
    """
    code = tensor.dtype
    if code not in _ITEMSIZE:
        raise WireError(f"unknown tensor dtype {code}; expected one of {', '.join(WIRE_DTYPES)}")
    shape = tuple(tensor.shape)
    if not shape:
        raise WireError("tensor has no shape")
    if len(shape) > MAX_NDIM:
        raise WireError(f"tensor shape {shape_text(shape)} has more than {MAX_NDIM} dimensions")
    if min(shape) < 0:
        raise WireError(f"tensor shape {shape_text(shape)} has a negative dimension")
    if math.prod(d for d in shape if d) * 4 > _MAX_BYTES:  # numpy refuses even empty ones
        raise WireError(f"tensor shape {shape_text(shape)} is larger than any float32 array can be")
    expected = math.prod(shape) * _ITEMSIZE[code]
    data = tensor.data
    if len(data) != expected:
        raise WireError(f"tensor data is {len(data)} bytes but shape {shape_text(shape)} x "
                        f"{dtype_name(code)} needs {expected}")
    scale = 0.0
    if code == pb.Tensor.INT8:
        scale = float(tensor.scale)
        if not (np.isfinite(scale) and scale > 0):
            raise WireError(f"int8 tensor needs a positive finite scale, got {tensor.scale}")
        if scale > _INT8_MAX_SCALE:
            raise WireError(f"int8 tensor scale {scale:g} is too large: 128 x scale overflows float32")
    raw = np.frombuffer(data, _NUMPY[code]).reshape(shape)
    if not allow_nonfinite and not _finite(raw, code):
        raise WireError("tensor contains NaN or Inf values")
    return raw, code, scale


def _finite(raw: np.ndarray, code: int) -> bool:
    if code == pb.Tensor.FLOAT32:
        return bool(np.isfinite(raw).all())
    if code == pb.Tensor.FLOAT16:  # exponent bits all ones: Inf or NaN
        return not bool(((raw.view("<u2") & np.uint16(0x7C00)) == np.uint16(0x7C00)).any())
    if code == pb.Tensor.BFLOAT16:
        return not bool(((raw & np.uint16(0x7F80)) == np.uint16(0x7F80)).any())
    return True


def to_float32(raw: np.ndarray, code: int, scale: float = 0.0) -> np.ndarray:
    """A raw wire array (from :func:`decode_raw`) as float32 (a view when it already is)."""
    if code == pb.Tensor.BFLOAT16:
        return (raw.astype("<u4") << np.uint32(16)).view("<f4")
    if code == pb.Tensor.INT8:
        return raw.astype(np.float32) * np.float32(scale)
    return raw.astype(np.float32, copy=False)


def decode(tensor: pb.Tensor, allow_nonfinite: bool = False) -> np.ndarray:
    """The tensor as a float32 numpy array; raises :class:`WireError` when it is malformed."""
    return to_float32(*decode_raw(tensor, allow_nonfinite))


# --- zero-copy request parsing ----------------------------------------------------------------

class TensorView:
    """The fields of a parsed ``Tensor``; ``data`` is a memoryview into the received bytes."""

    __slots__ = ("dtype", "shape", "data", "scale")

    def __init__(self):
        self.dtype = 0
        self.shape: list[int] = []
        self.data = memoryview(b"")
        self.scale = 0.0


class InferRequestView:
    """A parsed ``InferRequest`` that shares the features' bytes with the received message.

    Quacks like the generated message for what the server reads (``deployment_id``,
    ``request_id``, ``features``, ``HasField("features")``).
    """

    __slots__ = ("deployment_id", "request_id", "features")

    def __init__(self):
        self.deployment_id = ""
        self.request_id = ""
        self.features: TensorView | None = None

    def HasField(self, name: str) -> bool:  # noqa: N802 - the protobuf spelling
        if name != "features":
            raise ValueError(f"InferRequest has no message field {name!r}")
        return self.features is not None


class _Fallback(Exception):
    """Something the fast parser does not handle (groups, a repeated features field ...)."""


_MAX_FIELD_NUMBER = (1 << 29) - 1
_UINT64 = (1 << 64) - 1


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise _Fallback("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result & _UINT64, pos  # protobuf drops bits past 64 in a 10-byte varint
        shift += 7


def _fields(buf: memoryview):
    """(field number, wire type, value) for each field; values of length-delimited fields are slices."""
    pos, end = 0, len(buf)
    while pos < end:
        start = pos
        key, pos = _read_varint(buf, pos)
        if pos - start > 5:
            raise _Fallback("a tag longer than 5 bytes")  # protobuf refuses those
        number, wt = key >> 3, key & 7
        if wt == 0:
            value, pos = _read_varint(buf, pos)
        elif wt == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wt == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise _Fallback(f"wire type {wt}")
        if pos > end or not 0 < number <= _MAX_FIELD_NUMBER:
            raise _Fallback("truncated field or a field number protobuf refuses")
        yield number, wt, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _int32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _tensor(buf: memoryview) -> TensorView:
    t = TensorView()
    for number, wt, value in _fields(buf):
        if number == 1 and wt == 0:
            t.dtype = _int32(value)
        elif number == 2 and wt == 2:  # packed
            pos = 0
            while pos < len(value):
                v, pos = _read_varint(value, pos)
                t.shape.append(_int64(v))
        elif number == 2 and wt == 0:  # unpacked (still valid proto3)
            t.shape.append(_int64(value))
        elif number == 3 and wt == 2:
            t.data = value
        elif number == 4 and wt == 5:
            t.scale = float(np.frombuffer(value, "<f4")[0])
        elif number in (1, 2, 3, 4):
            raise _Fallback(f"field {number} with wire type {wt}")
    return t


def parse_infer_request(data: bytes):
    """Parse a serialized ``InferRequest`` without copying the features' bytes.

    Returns an :class:`InferRequestView`; input the fast path does not cover (repeated or merged
    sub-messages, groups) is handed to protobuf, and malformed input raises like protobuf does.
    """
    buf = memoryview(data)
    try:
        req = InferRequestView()
        for number, wt, value in _fields(buf):
            if number in (1, 2) and wt == 2:
                text = str(value, "utf-8")
                if number == 1:
                    req.deployment_id = text
                else:
                    req.request_id = text
            elif number == 3 and wt == 2:
                if req.features is not None:
                    raise _Fallback("features given twice (protobuf merges them)")
                req.features = _tensor(value)
            elif number in (1, 2, 3):
                raise _Fallback(f"field {number} with wire type {wt}")
        return req
    except (_Fallback, UnicodeDecodeError):
        return pb.InferRequest.FromString(data)

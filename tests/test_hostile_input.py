"""Hostile input, property-based (hypothesis): whatever a peer sends, the tensor decoder, the
zero-copy request parser and the cloud's request validation answer with a clear error or a
correct result, never another exception and never an allocation beyond what was received.

The properties themselves are in ``benchmarks/fuzz_targets.py`` (the coverage-guided fuzz run
checks the same ones); here hypothesis drives them with structured and mutated messages, checks
the decoder's memory with tracemalloc, and sends hostile requests to a real cloud server on
loopback, which must answer each with the right status and a short message and keep answering
good requests. Also: any wire dtype name, any JSON value as the edge's input array, oversized lab
bodies; and the atheris harness, run for a few seconds.
"""

from __future__ import annotations

import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from benchmarks.fuzz_targets import MAX_WIRE_ERROR, check_request_bytes, check_tensor
from cloud_server.errors import MAX_MESSAGE
from fixtures_grpc import digits_server  # noqa: F401
from protos import split_inference_pb2 as pb
from protos import split_inference_pb2_grpc as pb_grpc
from protos import wire

ROOT = Path(__file__).resolve().parents[1]
DEP = "lenet5-digits--relu2"
FEATURES = (16, 8, 8)
MAX_BATCH = 64  # the digits_server fixture's --max-batch
ITEMSIZE = {pb.Tensor.FLOAT32: 4, pb.Tensor.FLOAT16: 2, pb.Tensor.BFLOAT16: 2, pb.Tensor.INT8: 1, pb.Tensor.UINT8: 1}
WORDS = ("dtype", "shape", "dimension", "bytes", "scale", "NaN")  # what a WireError names
INT64 = st.integers(-(2**63), 2**63 - 1)
DTYPES = st.one_of(st.sampled_from(list(ITEMSIZE)), st.integers(-(2**31), 2**31 - 1))
SCALES = st.floats(width=32)
SLACK = 256 * 1024  # bytes of Python objects a decode may create besides its array


@st.composite
def tensors(draw):
    """A ``Tensor`` of any dtype code, shape (huge, negative, up to 70 dims) and byte length; often
    a consistent one (bytes = shape x dtype), so the valid path is reached too."""
    dtype = draw(DTYPES)
    if draw(st.booleans()):
        shape = draw(st.lists(st.integers(0, 6), min_size=1, max_size=4))
        size = math.prod(shape) * ITEMSIZE.get(dtype, 1)
        data = draw(st.binary(min_size=size, max_size=size))
    else:
        shape = draw(st.lists(st.one_of(INT64, st.integers(-2, 8)), max_size=70))
        data = draw(st.binary(max_size=64))
    return pb.Tensor(dtype=dtype, shape=shape, data=data, scale=draw(SCALES))


@given(tensor=tensors(), allow_nonfinite=st.booleans())
@example(tensor=pb.Tensor(dtype=1, shape=[2**40], data=b"\0" * 4), allow_nonfinite=False)  # huge, short bytes
@example(tensor=pb.Tensor(dtype=1, shape=[2**62, 2**62], data=b""), allow_nonfinite=False)  # product overflows
@example(tensor=pb.Tensor(dtype=1, shape=[0, 2**62, 2**62], data=b""), allow_nonfinite=False)  # empty but too big
@example(tensor=pb.Tensor(dtype=5, shape=[93, 127, 88, 0, 88, 88, 88, 77, 77, 77, 16], data=b""),
         allow_nonfinite=False)  # uint8 fits, its float32 does not (found by the fuzzer)
@example(tensor=pb.Tensor(dtype=1, shape=[1] * 70, data=b"\0" * 4), allow_nonfinite=False)  # over numpy's 64 dims
@example(tensor=pb.Tensor(dtype=1, shape=[-(2**63)], data=b""), allow_nonfinite=False)
@example(tensor=pb.Tensor(dtype=4, shape=[2], data=b"\x80\x7f", scale=3e38), allow_nonfinite=False)  # -128*scale=-inf
@example(tensor=pb.Tensor(dtype=0, shape=[1], data=b"\0"), allow_nonfinite=False)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decoding_any_tensor_gives_its_array_or_a_clear_error(tensor, allow_nonfinite):
    """An array of exactly shape x float32 (finite unless allowed) or a WireError naming the problem;
    memory bounded by the bytes received, so a hostile header is refused before anything is allocated."""
    tracemalloc.start()
    try:
        out = check_tensor(tensor, allow_nonfinite)  # asserts shape, dtype, finiteness, size
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 4 * len(tensor.data) + SLACK, f"decoding {len(tensor.data)} bytes peaked at {peak} bytes"
    if out is None:
        with pytest.raises(wire.WireError) as info:
            wire.decode(tensor, allow_nonfinite)
        assert any(w in str(info.value) for w in WORDS) and len(str(info.value)) <= MAX_WIRE_ERROR, info.value


@given(name=st.one_of(st.sampled_from(list(wire.WIRE_DTYPES)), st.text(max_size=12)),
       x=st.lists(st.floats(0, 1, width=32), min_size=1, max_size=8))
@settings(max_examples=100, deadline=None)
def test_encoding_with_any_dtype_name_round_trips_or_names_it(name, x):
    x = np.asarray(x, np.float32)
    if name not in wire.WIRE_DTYPES:
        with pytest.raises(wire.WireError, match="unknown wire dtype"):
            wire.encode(x, name)
        return
    out = wire.decode(wire.encode(x, name))
    tolerance = {"float32": 0, "float16": 5e-4, "bfloat16": 4e-3, "int8": 0.5 / 127, "uint8": 1}[name]
    assert out.shape == x.shape and np.all(np.abs(out - x) <= tolerance), (out, x)


# --- the zero-copy parser against protobuf ------------------------------------------------------

def varint(n: int) -> bytes:
    return wire._varint(n & ((1 << 64) - 1))


def field(number: int, wt: int, payload: bytes) -> bytes:
    key = varint((number << 3) | wt)
    return key + (varint(len(payload)) + payload if wt == 2 else payload)


def fixed(wt: int):
    return st.binary(min_size=8 if wt == 1 else 4, max_size=8 if wt == 1 else 4)


# Any field a peer may send: known numbers with right and wrong wire types, unknown numbers,
# 10-byte varints (protobuf drops bits past 64), negative values.
VARINTS = st.one_of(st.integers(-3, 9), INT64, st.integers(0, 2**70)).map(varint)
NUMBERS = st.one_of(st.sampled_from([1, 2, 3, 4]), st.integers(5, 2**29 - 1))


@st.composite
def any_field(draw, payloads):
    number, wt = draw(NUMBERS), draw(st.sampled_from([0, 1, 2, 5]))
    if wt == 0:
        return field(number, 0, draw(VARINTS))
    if wt == 2:
        return field(number, 2, draw(payloads))
    return field(number, wt, draw(fixed(wt)))


def tensor_fields():
    shape = st.lists(st.one_of(st.integers(-2, 6), INT64), max_size=4)
    return st.one_of(
        st.integers(-3, 9).map(lambda d: field(1, 0, varint(d))),
        shape.map(lambda dims: field(2, 2, b"".join(varint(d) for d in dims))),  # packed
        st.one_of(st.integers(-2, 6), INT64).map(lambda d: field(2, 0, varint(d))),  # unpacked
        st.binary(max_size=64).map(lambda b: field(3, 2, b)),
        SCALES.map(lambda s: field(4, 5, np.float32(s).tobytes())),
        any_field(st.binary(max_size=16)),
    )


def request_fields():
    tensor = st.lists(tensor_fields(), max_size=8).map(b"".join)
    text = st.one_of(st.text(max_size=12).map(str.encode), st.binary(max_size=12))  # some not UTF-8
    return st.one_of(text.map(lambda t: field(1, 2, t)), text.map(lambda t: field(2, 2, t)),
                     tensor.map(lambda t: field(3, 2, t)), any_field(st.binary(max_size=16)))


MESSAGES = st.lists(request_fields(), max_size=6).map(b"".join)  # a repeated features field merges


@st.composite
def mutated(draw, messages):
    """A message with bytes overwritten, cut out or inserted (truncated lengths, broken varints)."""
    data = bytearray(draw(messages))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["set", "cut", "insert"]))
        if op == "set" and pos < len(data):
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 4))]
        else:
            data[pos:pos] = draw(st.binary(min_size=1, max_size=11))
    return bytes(data)


@given(data=st.one_of(MESSAGES, mutated(MESSAGES), st.binary(max_size=64)))
@example(data=bytes.fromhex("0a0466757a7a1201721a0f080512030102031a06010123998d0192c6f4a2e5e6010101"))  # field 2^29+
@example(data=bytes.fromhex("e5b6f39a8c0000000000"))  # a 6-byte tag (protobuf allows 5)
@example(data=b"\x1a\x0c\x12\x0a" + b"\xff" * 9 + b"\x7f")  # a 70-bit shape varint
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_zero_copy_parser_agrees_with_protobuf_and_what_parses_validates(data):
    """Same fields as protobuf or the same DecodeError; parsed features decode and validate cleanly."""
    check_request_bytes(data)


# --- a real cloud server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stub(digits_server):
    channel = grpc.insecure_channel(digits_server.address)
    yield pb_grpc.SplitInferenceStub(channel)
    channel.close()


def is_valid(req: pb.InferRequest) -> bool:
    """The contract, written independently of the server's code."""
    t = req.features
    shape = tuple(t.shape)
    if req.deployment_id != DEP or t.dtype not in ITEMSIZE or len(shape) != 4 or shape[1:] != FEATURES:
        return False
    if not 1 <= shape[0] <= MAX_BATCH or len(t.data) != math.prod(shape) * ITEMSIZE[t.dtype]:
        return False
    if t.dtype == pb.Tensor.INT8:
        return 0 < t.scale <= float(np.finfo(np.float32).max) / 128
    raw = np.frombuffer(t.data, {1: "<f4", 2: "<f2", 3: "<u2", 5: "u1"}[t.dtype])
    if t.dtype == pb.Tensor.BFLOAT16:
        raw = (raw.astype("<u4") << 16).view("<f4")
    return t.dtype == pb.Tensor.UINT8 or bool(np.isfinite(raw).all())


@st.composite
def requests(draw):
    """Requests near the deployment's contract: wrong ids, dtypes, shapes, sizes, NaN/Inf, scales."""
    dep = draw(st.sampled_from([DEP, DEP, DEP, "lenet5-digits--conv9", "", "../etc", "x" * 5000]))
    dtype = draw(st.one_of(st.sampled_from(list(ITEMSIZE)), st.integers(-5, 2**31 - 1)))
    batch = draw(st.sampled_from([1, 2, 0, -1, MAX_BATCH, MAX_BATCH + 1, 2**40]))
    shape = [batch, *FEATURES]
    if draw(st.integers(0, 3)) == 0:  # a wrong feature shape or rank
        shape = draw(st.lists(st.one_of(st.integers(-1, 17), INT64), max_size=6))
    n = math.prod(shape) if 0 < math.prod(shape) <= 4 * 1024 else 1
    values = draw(st.sampled_from(["zeros", "random", "nan", "inf"]))
    x = np.zeros(n, np.float32) if values == "zeros" else np.random.default_rng(n).random(n, dtype=np.float32)
    if values in ("nan", "inf"):
        x[n // 2] = np.nan if values == "nan" else np.inf
    with np.errstate(invalid="ignore"):  # NaN cast to uint8
        data = wire.wire_array(x, wire.dtype_name(dtype))[0].tobytes() if dtype in ITEMSIZE else x.tobytes()
    data = data[:draw(st.sampled_from([len(data), len(data), len(data) - 1, 0]))]
    scale = draw(st.sampled_from([0.0, 0.01, -1.0, float("inf"), 3e38]))
    return pb.InferRequest(deployment_id=dep, request_id="hostile",
                           features=pb.Tensor(dtype=dtype, shape=shape, data=data, scale=scale))


GOOD = pb.InferRequest(deployment_id=DEP, request_id="good",
                       features=wire.encode(np.full((1, *FEATURES), 0.5, np.float32)))


@given(req=requests())
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_cloud_answers_hostile_requests_with_a_status_and_keeps_serving(stub, req):
    """A valid request is answered with its logits; an invalid one with INVALID_ARGUMENT or NOT_FOUND
    and a message that fits in a status; and a good request is answered right after."""
    valid = is_valid(req)
    try:
        reply = stub.Infer(req, timeout=30)
    except grpc.RpcError as exc:
        assert not valid, f"a valid request was refused: {exc.code()}: {exc.details()}"
        assert exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), exc.details()
        assert 0 < len(exc.details()) <= MAX_MESSAGE
    else:
        assert valid, "the server accepted a request the contract refuses"
        assert wire.decode(reply.logits).shape == (req.features.shape[0], 10)
    assert stub.Infer(GOOD, timeout=30).request_id == "good"


@pytest.mark.parametrize("request_", [
    pb.InferRequest(deployment_id="a" * 100_000, features=GOOD.features),
    pb.InferRequest(deployment_id="a/" * 50_000, features=GOOD.features),
    pb.InferRequest(deployment_id=DEP, features=pb.Tensor(dtype=1, shape=[1] * 100_000)),
], ids=["100 KB deployment id", "100 KB invalid deployment id", "100000-dim shape"])
def test_huge_fields_get_their_status_not_a_trailer_overflow(stub, request_):
    """The status message quotes what was sent, clipped: a 100 KB one overflowed the client's 16 KiB
    trailer limit, and the client saw RESOURCE_EXHAUSTED 'Stream removed' instead."""
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(request_, timeout=30)
    assert info.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), info.value.details()
    details = info.value.details()
    assert len(details) <= MAX_MESSAGE and ("characters left out" in details or "(100000 dims)" in details), details
    with pytest.raises(grpc.RpcError) as info:
        stub.GetHead(pb.GetHeadRequest(deployment_id="b" * 100_000), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid deployment id" in info.value.details()
    assert stub.Infer(GOOD, timeout=30).request_id == "good"


# --- the coverage-guided fuzz harness ----------------------------------------------------------

def test_fuzz_harness_runs_and_reports(tmp_path):
    """A few seconds of atheris: executions and coverage counted, no crash, report written; and
    --replay runs one saved input."""
    try:
        import atheris  # noqa: F401
    except ImportError:  # no wheel off Linux x86-64 (pyproject's marker); CI must run it
        from system_prereqs import in_ci

        (pytest.fail if in_ci() else pytest.skip)("atheris is not installed (wheels exist for Linux x86-64 only)")
    out = tmp_path / "fuzz.md"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz_parser", "--seconds", "3", "--out", str(out),
                           "--work", str(tmp_path / "work")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| 3 |"))
    seconds, executions, _, cov, ft, corpus, _, crashes = [c.strip() for c in row.strip("|").split("|")]
    assert int(executions) > 100 and int(cov) > 50 and int(ft) >= int(cov) and int(corpus) > 0
    assert crashes == "none"
    seed = next((tmp_path / "work" / "corpus").iterdir())
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fuzz_parser", "--replay", str(seed)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "every property holds" in proc.stdout, proc.stderr[-3000:]


# --- the lab API ----------------------------------------------------------------------------------

def test_lab_refuses_oversized_bodies_before_reading_them_and_keeps_serving(tmp_path):
    """413 naming the limit, for a declared length and for a chunked body that grows past it."""
    from fastapi.testclient import TestClient
    from test_lab_api import AUTH, SPEC, make_app

    from attacker.lab.app import MAX_BODY_BYTES

    big = b'{"split_points": ["' + b"x" * MAX_BODY_BYTES + b'"]}'
    json_headers = {**AUTH, "content-type": "application/json"}
    with TestClient(make_app(tmp_path)) as client:
        r = client.post("/v1/experiments", content=big, headers=json_headers)
        assert r.status_code == 413 and f"limit of {MAX_BODY_BYTES} bytes" in r.json()["error"], r.text
        chunks = (big[i:i + 65536] for i in range(0, len(big), 65536))  # no content-length
        r = client.post("/v1/experiments", content=chunks, headers=json_headers)
        assert r.status_code == 413 and r.json()["error"].startswith("the request body is over the limit"), r.text
        r = client.post("/v1/experiments", content=b"[" * 100_000, headers=json_headers)  # deep nesting
        assert r.status_code == 400, r.text
        assert client.post("/v1/experiments", json=SPEC, headers=AUTH).status_code == 202


# --- the edge's JSON input ------------------------------------------------------------------------

JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=3)),
                    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner,
                                                                                          max_size=3)),
                    max_leaves=40)


@given(value=st.one_of(JSON, st.builds(lambda n, v: np.full((1, 4, n), v).tolist(), st.integers(3, 5),
                                       st.one_of(st.floats(), st.integers(-300, 300)))))
@settings(max_examples=200, deadline=None)
def test_edge_json_array_gives_the_model_input_or_a_422(value):
    """Any JSON value as 'array' for a (1, 4, 4) input: a float32 (1, 1, 4, 4) batch in [0, 1], or
    BadInput 422 with its reason; never another exception."""
    from edge_client.rest import BadInput, array_input

    try:
        x = array_input(value, (1, 4, 4))
    except BadInput as exc:
        assert exc.status == 422 and "array" in exc.message, exc.message
        return
    assert x.dtype == np.float32 and x.shape == (1, 1, 4, 4) and x.min() >= 0 and x.max() <= 1

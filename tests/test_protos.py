"""The committed stubs are exactly what ``python -m protos.generate`` produces, and the wire codec
round-trips every wire dtype. (The zero-copy parser against protobuf on arbitrary bytes:
test_hostile_input.py.)"""


import numpy as np
import pytest

from protos import generate, wire
from protos import split_inference_pb2 as pb


def test_committed_stubs_match_regenerated(tmp_path):
    generate.generate(tmp_path)
    for name in generate.STUBS:
        fresh = (tmp_path / "protos" / name).read_bytes()
        committed = (generate.HERE / name).read_bytes()
        assert fresh == committed, f"protos/{name} is stale: run `python -m protos.generate` and commit it"


def test_proto_is_backward_compatible_with_the_first_version():
    # field numbers the first version of the protocol used must keep their meaning
    fields = {f.name: f.number for f in pb.GetHeadRequest.DESCRIPTOR.fields}
    assert fields["deployment_id"] == 1
    reply = {f.name: f.number for f in pb.HeadReply.DESCRIPTOR.fields}
    assert reply["onnx_model"] == 2 and reply["sha256"] == 6 and reply["num_classes"] == 9
    infer = {f.name: f.number for f in pb.InferRequest.DESCRIPTOR.fields}
    assert infer == {"deployment_id": 1, "request_id": 2, "features": 3}
    # an old client's GetHead (deployment id only) still parses
    old = pb.GetHeadRequest(deployment_id="d").SerializeToString()
    assert pb.GetHeadRequest.FromString(old).known_sha256 == ""


@pytest.mark.parametrize("dtype,tol", [("float32", 0), ("float16", 1e-3), ("bfloat16", 8e-3), ("int8", 1 / 127)])
def test_wire_round_trip(dtype, tol):
    x = np.random.default_rng(0).uniform(-1, 1, (3, 4, 5)).astype(np.float32)
    t = wire.encode(x, dtype)
    back = wire.decode(pb.Tensor.FromString(t.SerializeToString()))
    assert back.dtype == np.float32 and back.shape == x.shape
    assert np.max(np.abs(back - x)) <= tol * max(1.0, float(np.abs(x).max()))


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16", "int8", "uint8"])
@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 300), (0, 5)])
def test_fast_request_serialization_is_byte_identical_to_protobuf(dtype, shape):
    x = np.random.default_rng(1).uniform(0, 2, shape).astype(np.float32)
    reference = pb.InferRequest(deployment_id="dep", request_id="rid-1", features=wire.encode(x, dtype))
    fast = wire.infer_request_bytes("dep", "rid-1", x, dtype)
    assert fast == reference.SerializeToString()
    back = pb.InferRequest.FromString(fast)
    assert back.deployment_id == "dep" and list(back.features.shape) == list(shape)


def test_nonfinite_values_are_refused_for_every_float_dtype():
    for dtype in ("float32", "float16", "bfloat16"):
        for bad in (np.nan, np.inf, -np.inf):
            x = np.zeros((2, 3), np.float32)
            x[1, 2] = bad
            t = wire.encode(x, dtype)
            with pytest.raises(wire.WireError, match="NaN or Inf"):
                wire.decode(t)
            assert np.isnan(wire.decode(t, allow_nonfinite=True)[1, 2]) == np.isnan(bad)
    # the largest finite values are fine
    big = np.array([[65504.0, -3.0e38]], np.float32)
    assert wire.decode(wire.encode(big[:, :1], "float16"))[0, 0] == 65504.0
    assert np.isfinite(wire.decode(wire.encode(big, "bfloat16"))).all()


def test_raw_decode_is_a_view_in_the_wire_dtype():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    raw, code, scale = wire.decode_raw(wire.encode(x, "float16"))
    assert raw.dtype == np.float16 and raw.shape == (3, 4) and code == pb.Tensor.FLOAT16
    raw, code, scale = wire.decode_raw(wire.encode(x, "int8"))
    assert raw.dtype == np.int8 and scale == pytest.approx(11 / 127)
    assert np.allclose(wire.to_float32(raw, code, scale), x, atol=scale / 2)


def test_zero_copy_parser_shares_the_payload_and_rejects_garbage():
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    data = wire.infer_request_bytes("d", "r", x)
    view = wire.parse_infer_request(data)
    assert isinstance(view.features.data, memoryview) and view.features.data.obj is data
    raw, code, _ = wire.decode_raw(view.features)
    assert np.array_equal(raw, x)
    from google.protobuf.message import DecodeError

    with pytest.raises(DecodeError):
        wire.parse_infer_request(b"\x1a\xff\xff\xff\x0f")  # a length far past the end

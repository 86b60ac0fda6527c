"""The committed stubs are exactly what ``python -m protos.generate`` produces, and the wire codec
round-trips every wire dtype."""


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

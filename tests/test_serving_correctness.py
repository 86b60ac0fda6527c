"""Predictions through edge (ONNX Runtime head) -> gRPC on loopback -> cloud (torch tail) equal the
monolithic model's, for every split point of lenet5 and he-cifar-cnn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_client.client import CloudClient
from edge_client.edge import Edge, preprocess
from edge_client.heads import HeadCache
from edge_client.runtime import make_runner
from fixtures_grpc import MODELS, every_split_store, running_server, sample_images  # noqa: F401
from models import load_dataset, split_points

N_IMAGES = 6


@pytest.fixture(scope="module")
def cloud(every_split_store, tmp_path_factory):
    """A server running tails with ONNX Runtime (the default)."""
    store, models = every_split_store
    with running_server(store.root) as server, CloudClient(server.address) as client:
        yield store, models, client, HeadCache(tmp_path_factory.mktemp("heads"))


@pytest.fixture(scope="module")
def torch_cloud(every_split_store, tmp_path_factory):
    """A server running tails with torch (``--runtime torch``)."""
    store, models = every_split_store
    with running_server(store.root, runtime="torch") as server, CloudClient(server.address) as client:
        yield store, models, client, HeadCache(tmp_path_factory.mktemp("heads"))


@pytest.mark.parametrize("tail_runtime", ["onnxruntime", "torch"])
@pytest.mark.parametrize("arch", list(MODELS))
def test_float32_wire_equals_monolithic_at_every_split(request, arch, tail_runtime):
    store, models, client, cache = request.getfixturevalue("cloud" if tail_runtime == "onnxruntime" else "torch_cloud")
    x = preprocess(sample_images(arch, N_IMAGES)[0])
    with torch.inference_mode():
        expected = models[arch](torch.from_numpy(x)).numpy()
    edge = Edge(client, cache, wire="float32")
    unary_diffs, stream_diffs = {}, {}
    with client.stream() as stream:
        for split in split_points(arch):
            dep_id = f"{arch}--{split}"
            result = edge.infer(dep_id, x)
            assert result.logits.shape == expected.shape
            unary_diffs[split] = float(np.abs(result.logits - expected).max())
            assert np.array_equal(result.top1, expected.argmax(1)), split
            streamed = edge.infer_future(dep_id, x, stream=stream).result(timeout=30)
            stream_diffs[split] = float(np.abs(streamed.logits - expected).max())
            assert np.array_equal(streamed.top1, expected.argmax(1)), split
    print(f"\n{arch} float32 ({tail_runtime} tail) max |logit diff| per split: {unary_diffs}")
    assert max(unary_diffs.values()) <= 1e-4, unary_diffs
    assert max(stream_diffs.values()) <= 1e-4, stream_diffs
    assert len(unary_diffs) == len(split_points(arch))


@pytest.mark.parametrize("arch", list(MODELS))
def test_reduced_precision_wire_agreement_is_reported(cloud, arch):
    """float16/bfloat16/int8 wire on untrained weights: logits stay close, agreement is reported."""
    store, models, client, cache = cloud
    x = preprocess(sample_images(arch, N_IMAGES)[0])
    with torch.inference_mode():
        expected = models[arch](torch.from_numpy(x)).numpy()
    report = {}
    for wire in ("float16", "bfloat16", "int8"):
        edge = Edge(client, cache, wire=wire)
        agree = []
        for split in split_points(arch):
            result = edge.infer(f"{arch}--{split}", x)
            agree.append(np.mean(result.top1 == expected.argmax(1)))
            # features lose precision but the logits must stay near the monolithic ones
            scale = float(np.abs(expected).max())
            assert np.abs(result.logits - expected).max() <= 0.05 * scale + 1e-3, (wire, split)
        report[wire] = float(np.mean(agree))
    print(f"\n{arch} top-1 agreement with the monolithic model (untrained weights): {report}")
    assert all(v > 0.5 for v in report.values()), report


@pytest.mark.parametrize("split", ["conv1", "relu2"])
def test_reduced_precision_wire_keeps_top1_on_trained_lenet(lenet_digits, split, tmp_path):
    """float16 and int8 (and bfloat16) wire agree with float32 on >= 99% of the digits test set."""
    from models.loading import load_model

    model, _ = load_model(lenet_digits, "lenet5-digits")
    ds = load_dataset("digits")
    x = preprocess(ds.x_test)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy().argmax(1)
    dep_id = f"lenet5-digits--{split}"
    agreement = {}
    with running_server(lenet_digits.root, max_batch=512) as server, CloudClient(server.address) as client:
        for wire in ("float32", "float16", "bfloat16", "int8"):
            edge = Edge(client, HeadCache(tmp_path), wire=wire)
            top1 = np.concatenate([edge.infer(dep_id, x[i:i + 128]).top1 for i in range(0, len(x), 128)])
            agreement[wire] = float(np.mean(top1 == expected))
    print(f"\nlenet5 digits {split}: top-1 agreement over {len(x)} test images: {agreement}")
    assert agreement["float32"] == 1.0
    assert agreement["float16"] >= 0.99 and agreement["int8"] >= 0.99 and agreement["bfloat16"] >= 0.99


def test_fused_wire_cast_matches_the_codec(every_split_store):
    """The float16 / int8 conversion fused into the ONNX head equals protos.wire's numpy codec."""
    from protos import wire

    store, _ = every_split_store
    dep_id = "he-cifar-cnn--relu12"
    onnx = (store.deployment_dir(dep_id) / "head.onnx").read_bytes()
    meta = store.deployment(dep_id)
    x = preprocess(sample_images("he-cifar-cnn", 4)[0])
    plain = make_runner(onnx, meta)(x).features
    half = make_runner(onnx, meta, wire="float16")(x)
    assert half.features.dtype == np.float16 and np.array_equal(half.features, plain.astype(np.float16))
    q = make_runner(onnx, meta, wire="int8")(x)
    assert q.features.dtype == np.int8 and q.scale > 0
    ref = wire.encode(plain, "int8")
    assert abs(q.scale - ref.scale) <= 1e-6 * ref.scale
    ref_q = np.frombuffer(ref.data, np.int8).reshape(plain.shape).astype(int)
    assert np.abs(q.features.astype(int) - ref_q).max() <= 1  # rounding of x / scale at the last bit
    back = wire.decode(wire.encode(q.features, "int8", scale=q.scale))
    assert np.abs(back - plain).max() <= q.scale * 0.51

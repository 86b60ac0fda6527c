"""The cloud server's services and internals: request ids, health, reflection, GetHead,
ListDeployments, the bounded tail cache, request merging, structured logs, graceful SIGTERM."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import grpc
import numpy as np
import pytest
import torch

from cloud_server.batcher import TailBatcher
from cloud_server.features import Features
from edge_client.client import CloudClient, CloudError
from fixtures_grpc import CloudProcess, captured_logs, digits_server, running_server  # noqa: F401
from protos import split_inference_pb2 as pb
from protos import split_inference_pb2_grpc as pb_grpc
from protos import wire

DEP = "lenet5-digits--relu2"


def features(n=2, seed=0):
    return np.random.default_rng(seed).random((n, 16, 8, 8), dtype=np.float32)


def test_request_ids_travel_in_message_metadata_and_logs(digits_server):
    channel = grpc.insecure_channel(digits_server.address)
    stub = pb_grpc.SplitInferenceStub(channel)
    req = pb.InferRequest(deployment_id=DEP, request_id="rid-123")
    wire.encode_into(req.features, features(1))
    with captured_logs() as records:
        reply, call = stub.Infer.with_call(req, timeout=10)
        assert reply.request_id == "rid-123"
        assert ("x-request-id", "rid-123") in tuple(call.trailing_metadata())
        # no id in the message: the metadata's is used
        req.request_id = ""
        reply, _ = stub.Infer.with_call(req, timeout=10, metadata=(("x-request-id", "from-metadata"),))
        assert reply.request_id == "from-metadata"
        # neither: the server makes one up and says which
        reply, call = stub.Infer.with_call(req, timeout=10)
        assert len(reply.request_id) == 32 and ("x-request-id", reply.request_id) in tuple(call.trailing_metadata())
        # refused requests are logged with their id too
        bad = pb.InferRequest(deployment_id="nope", request_id="rid-bad")
        with pytest.raises(grpc.RpcError):
            stub.Infer(bad, timeout=10)
    channel.close()
    infer = [r for r in records if r["event"] == "infer"]
    assert {"rid-123", "from-metadata"} <= {r["request_id"] for r in infer}
    assert all(r["deployment"] == DEP and r["batch"] == 1 and r["tail_ms"] >= 0 for r in infer)
    refused = [r for r in records if r["event"] == "infer refused"]
    assert refused and refused[0]["request_id"] == "rid-bad" and refused[0]["code"] == "NOT_FOUND"


def test_health_reflection_and_list_deployments(digits_server, lenet_digits):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with CloudClient(digits_server.address) as client:
        assert client.health() == "SERVING"
        assert client.health("splitlab.v1.SplitInference") == "SERVING"
        deps = {d["deployment_id"]: d for d in client.list_deployments()}
    assert set(deps) == {"lenet5-digits--conv1", "lenet5-digits--relu2"}
    assert deps[DEP]["feature_shape"] == [16, 8, 8] and deps[DEP]["input_shape"] == [1, 28, 28]
    assert deps[DEP]["dataset"] == "digits" and deps[DEP]["num_classes"] == 10

    channel = grpc.insecure_channel(digits_server.address)
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = list(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                             timeout=10))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"splitlab.v1.SplitInference", "grpc.health.v1.Health"} <= names
    channel.close()


def test_several_listen_addresses_share_one_port_and_a_bad_one_is_named(lenet_digits):
    from cloud_server.server import CloudServer, ServerConfig

    server = CloudServer(ServerConfig(artifacts=str(lenet_digits.root), host="127.0.0.1, 127.0.0.2", port=0,
                                      grace_seconds=0.5)).start()
    try:
        assert server.address == f"127.0.0.1:{server.port}"
        for host in ("127.0.0.1", "127.0.0.2"):
            with CloudClient(f"{host}:{server.port}") as client:
                assert client.health() == "SERVING"
                assert client.infer(DEP, features()).logits.shape == (2, 10)
    finally:
        server.stop(grace=0.5)
    with pytest.raises(OSError, match="cannot listen on 127.0.0.300"):
        CloudServer(ServerConfig(artifacts=str(lenet_digits.root), host="127.0.0.1,127.0.0.300", port=0))


def test_get_head_and_not_modified(digits_server, lenet_digits):
    on_disk = (lenet_digits.deployment_dir(DEP) / "head.onnx").read_bytes()
    with CloudClient(digits_server.address) as client:
        head = client.get_head(DEP)
        assert head.onnx_model == on_disk and head.sha256 == hashlib.sha256(on_disk).hexdigest()
        assert list(head.input_shape) == [1, 28, 28] and head.split == "relu2" and head.arch == "lenet5"
        assert not head.not_modified and head.preprocessing and head.dataset == "digits"
        again = client.get_head(DEP, known_sha256=head.sha256)
        assert again.not_modified and again.onnx_model == b"" and again.sha256 == head.sha256
        stale = client.get_head(DEP, known_sha256="0" * 64)
        assert not stale.not_modified and stale.onnx_model == on_disk
        with pytest.raises(CloudError) as info:
            client.get_head("missing")
        assert info.value.code == grpc.StatusCode.NOT_FOUND


def test_tail_cache_is_bounded_and_lazy(lenet_digits):
    with running_server(lenet_digits.root, cache_size=1) as server, CloudClient(server.address) as client:
        assert server.registry.cached_tails() == []  # nothing loaded before the first request
        conv1 = np.random.default_rng(0).random((2, 8, 24, 24), dtype=np.float32)
        first = {}
        for round_ in range(2):
            for dep, x in (("lenet5-digits--conv1", conv1), (DEP, features(2))):
                logits = client.infer(dep, x).logits
                if round_ == 0:
                    first[dep] = logits
                else:
                    assert np.allclose(first[dep], logits, atol=1e-6)
                assert server.registry.cached_tails() == [dep]
        assert server.registry.loads == 4  # evicted and reloaded each time with room for one


def test_redeployed_model_is_picked_up(tmp_path):
    from fixtures_grpc import save_untrained
    from models import ArtifactStore
    from models.deploy import deploy

    store = ArtifactStore(tmp_path)
    save_untrained(store, "m", "lenet5", seed=1)
    deploy(store, "m", "fc1", check_inputs=torch.rand(2, 1, 28, 28))
    x = np.random.default_rng(0).random((2, 120), dtype=np.float32)
    with running_server(tmp_path) as server, CloudClient(server.address) as client:
        before, sha_before = client.infer("m--fc1", x).logits, client.get_head("m--fc1").sha256
        save_untrained(store, "m2", "lenet5", seed=2)
        deploy(store, "m2", "fc1", deployment_id="m--fc1", overwrite=True, check_inputs=torch.rand(2, 1, 28, 28))
        after, sha_after = client.infer("m--fc1", x).logits, client.get_head("m--fc1").sha256
    assert sha_before != sha_after and not np.allclose(before, after)


class BlockingTail:
    """A tail that holds the compute thread on its first call until released."""

    def __init__(self):
        self.release = threading.Event()
        self.calls: list[int] = []

    def __call__(self, f):
        if not self.calls:
            self.release.wait(10)
        self.calls.append(len(f))
        return f.raw.sum(axis=1)[:, :3]


def f32(x):
    return Features(x, pb.Tensor.FLOAT32)


def test_batcher_merges_requests_that_queue_up():
    tail = BlockingTail()
    batcher = TailBatcher(merge_rows=8, inline=False)
    try:
        xs = [np.full((n, 4, 3), i, np.float32) for i, n in enumerate([1, 1, 3, 2, 4, 1, 9])]
        first = batcher.submit("d", tail, f32(xs[0]))
        time.sleep(0.05)  # the compute thread is now blocked inside the first call
        rest = [batcher.submit("d", tail, f32(x)) for x in xs[1:]]
        other = batcher.submit("e", tail, f32(xs[1]))
        half = batcher.submit("d", tail, Features(xs[1].astype(np.float16), pb.Tensor.FLOAT16))
        tail.release.set()
        results = [first.result(10)] + [f.result(10) for f in rest]
        assert other.result(10).merged == 1 and half.result(10).merged == 1
    finally:
        batcher.close()
    # 1 alone; then [1, 3, 2] (6 rows), [4, 1] (5), the 9-row request alone (over 8), "e" alone,
    # and the float16 request of "d" alone (other wire dtype)
    assert tail.calls == [1, 6, 5, 9, 1, 1]
    for x, r in zip(xs, results):
        assert np.allclose(r.logits, x.sum(axis=1)[:, :3])  # each caller gets its own rows back
    assert [r.merged for r in results] == [1, 3, 3, 3, 2, 2, 1]


def test_lone_requests_run_inline_and_busy_ones_queue():
    threads = []

    def tail(f):
        threads.append(threading.current_thread().name)
        time.sleep(0.2 if len(threads) == 1 else 0)
        return f.raw

    batcher = TailBatcher()
    try:
        x = f32(np.ones((1, 2), np.float32))
        assert batcher.submit("d", tail, x).result(10).merged == 1  # ran during submit, on this thread
        assert threads == [threading.current_thread().name]
        threads.clear()
        first = threading.Thread(target=lambda: batcher.submit("d", tail, x), name="first")
        first.start()
        time.sleep(0.05)  # "first" is inside the tail now: the next two must queue
        later = [batcher.submit("d", tail, x) for _ in range(2)]
        assert all(f.result(10).merged == 2 for f in later)
        first.join()
        assert threads == ["first", "tail-compute"]
    finally:
        batcher.close()


def test_batcher_reports_a_failing_tail_and_keeps_running():
    def broken(x):
        raise RuntimeError("boom")

    batcher = TailBatcher()
    try:
        with pytest.raises(RuntimeError, match="boom"):
            batcher.submit("d", broken, f32(np.zeros((1, 2), np.float32))).result(10)
        ok = batcher.submit("d", lambda f: f.raw * 2, f32(np.ones((1, 2), np.float32))).result(10)
        assert np.array_equal(ok.logits, np.full((1, 2), 2, np.float32))
    finally:
        batcher.close()


def test_tail_runtimes_agree_and_unexportable_tails_fall_back_to_torch():
    from cloud_server.tail_runtime import make_runner
    from models import build_model, split_model

    torch.manual_seed(0)
    model = build_model("he-cifar-cnn", 10, (3, 32, 32)).eval()
    _, tail = split_model(model, "relu22")
    x = np.random.default_rng(0).random((3, 128, 16, 16), dtype=np.float32)
    ort = make_runner(tail, (128, 16, 16), "onnxruntime")
    ref = make_runner(tail, (128, 16, 16), "torch")
    assert ort.runtime == "onnxruntime" and ref.runtime == "torch"
    assert np.abs(ort(f32(x)) - ref(f32(x))).max() <= 1e-4
    # float16 / int8 / bfloat16 features: converted in the graph (or by numpy) exactly as wire.decode does
    for dtype in ("float16", "int8", "bfloat16"):
        raw, code, scale = wire.decode_raw(wire.encode(x, dtype))
        f = Features(raw, code, scale)
        assert np.abs(ort(f) - ref(f)).max() <= 1e-4, dtype
        with torch.inference_mode():
            assert np.abs(ref(f) - tail(torch.from_numpy(wire.to_float32(raw, code, scale))).numpy()).max() == 0

    class NotExportable(torch.nn.Module):
        def forward(self, x):
            return torch.from_numpy(x.numpy().sum(axis=1))  # leaves torch: tracing cannot follow

    with captured_logs() as records:
        fallback = make_runner(torch.nn.Sequential(NotExportable()), (4,), "onnxruntime", deployment_id="odd")
    assert fallback.runtime == "torch" and "onnxruntime refused" in fallback.note
    assert np.allclose(fallback(f32(np.ones((2, 4), np.float32))), 4.0)
    assert any(r["event"] == "onnx tail refused, using torch" and r["deployment"] == "odd" for r in records)


def test_concurrent_stream_requests_are_merged(digits_server):
    before = (digits_server.batcher.batches, digits_server.batcher.requests)
    with CloudClient(digits_server.address) as client, client.stream() as stream:
        futures = [stream.submit(DEP, features(1, seed=i)) for i in range(200)]
        results = [f.result(timeout=60) for f in futures]
    batches = digits_server.batcher.batches - before[0]
    requests = digits_server.batcher.requests - before[1]
    assert requests == 200 and len(results) == 200
    assert batches < requests  # some requests shared a tail call
    assert max(r.server_seconds for r in results) > 0


@pytest.mark.e2e
def test_sigterm_lets_inflight_calls_finish_then_exits_zero(lenet_digits):
    server = CloudProcess(lenet_digits.root)
    try:
        with CloudClient(server.address) as client, client.stream() as stream:
            assert stream.submit(DEP, features(1)).result(timeout=30).logits.shape == (1, 10)
            server.terminate()
            deadline = time.time() + 20
            while not any(e.get("event") == "shutting down" for e in server.events) and time.time() < deadline:
                time.sleep(0.02)
            # the open stream is an in-flight call: it keeps being served
            late = [stream.submit(DEP, features(1, seed=i)) for i in range(5)]
            assert all(f.result(timeout=30).logits.shape == (1, 10) for f in late)
            # while new calls are refused
            with CloudClient(server.address, retries=False) as fresh:
                with pytest.raises(CloudError) as info:
                    fresh.infer(DEP, features(1), timeout=5)
                assert info.value.code == grpc.StatusCode.UNAVAILABLE
            assert server.proc.poll() is None  # still waiting for our stream
        assert server.wait(30) == 0
    finally:
        server.kill()
    events = [e["event"] for e in server.events]
    assert events.index("serving") < events.index("shutting down") < events.index("stopped")
    assert all(json.loads(line) for line in server.lines if line.strip())  # every log line is JSON

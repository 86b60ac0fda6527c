"""Every way a request can be wrong gets the right gRPC status and a message naming the problem,
and bad requests never disturb well-behaved clients."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from edge_client.client import CloudClient, CloudError, build_request
from fixtures_grpc import digits_server, running_server  # noqa: F401
from protos import split_inference_pb2 as pb
from protos import split_inference_pb2_grpc as pb_grpc

DEP = "lenet5-digits--relu2"
SHAPE = (16, 8, 8)


def features(n=2, seed=0):
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def raw_request(dtype=pb.Tensor.FLOAT32, shape=(1, *SHAPE), data=None, scale=0.0, dep=DEP, rid="bad"):
    if data is None:
        data = np.zeros(shape, np.float32).tobytes()
    return pb.InferRequest(deployment_id=dep, request_id=rid,
                           features=pb.Tensor(dtype=dtype, shape=list(shape), data=data, scale=scale))


def nan_bytes(dtype):
    x = np.zeros((1, *SHAPE), dtype)
    x.flat[5] = np.nan
    return x.tobytes()


BAD_REQUESTS = {
    # name: (request, expected status, words the message must contain)
    "unknown deployment": (raw_request(dep="no-such-deployment"), grpc.StatusCode.NOT_FOUND, "no-such-deployment"),
    "empty deployment id": (raw_request(dep=""), grpc.StatusCode.INVALID_ARGUMENT, "deployment_id is empty"),
    "malformed deployment id": (raw_request(dep="../etc"), grpc.StatusCode.INVALID_ARGUMENT, "invalid deployment id"),
    "no features": (pb.InferRequest(deployment_id=DEP, request_id="bad"), grpc.StatusCode.INVALID_ARGUMENT,
                    "no features"),
    "size mismatch": (raw_request(data=b"\0" * 100), grpc.StatusCode.INVALID_ARGUMENT, "100 bytes"),
    "unknown dtype": (raw_request(dtype=42), grpc.StatusCode.INVALID_ARGUMENT, "unknown features dtype 42"),
    "unspecified dtype": (raw_request(dtype=0), grpc.StatusCode.INVALID_ARGUMENT, "unknown features dtype 0"),
    "wrong shape": (raw_request(shape=(1, 16, 8, 9)), grpc.StatusCode.INVALID_ARGUMENT, "[batch, 16, 8, 8]"),
    "missing batch axis": (raw_request(shape=SHAPE), grpc.StatusCode.INVALID_ARGUMENT, "expects [batch"),
    "empty batch": (raw_request(shape=(0, *SHAPE), data=b""), grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    "batch over limit": (raw_request(shape=(65, *SHAPE)), grpc.StatusCode.INVALID_ARGUMENT, "limit of 64"),
    "NaN float32": (raw_request(data=nan_bytes(np.float32)), grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "NaN float16": (raw_request(dtype=pb.Tensor.FLOAT16, data=nan_bytes(np.float16)),
                    grpc.StatusCode.INVALID_ARGUMENT, "NaN"),
    "Inf float32": (raw_request(data=np.full((1, *SHAPE), np.inf, np.float32).tobytes()),
                    grpc.StatusCode.INVALID_ARGUMENT, "Inf"),
    "int8 without scale": (raw_request(dtype=pb.Tensor.INT8, data=bytes(16 * 64)), grpc.StatusCode.INVALID_ARGUMENT,
                           "scale"),
}


def test_bytes_that_are_not_a_request_get_invalid_argument(digits_server):
    channel = grpc.insecure_channel(digits_server.address)
    infer = channel.unary_unary("/splitlab.v1.SplitInference/Infer")  # raw bytes in and out
    with pytest.raises(grpc.RpcError) as info:
        infer(b"\x1a\xff\xff\xff\x0f", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid splitlab.v1.InferRequest" in info.value.details()
    # on a stream, the garbage fails alone and the stream goes on
    stream = channel.stream_stream("/splitlab.v1.SplitInference/InferStream",
                                   response_deserializer=pb.StreamReply.FromString)
    good = raw_request(rid="fine").SerializeToString()
    replies = list(stream(iter([b"\xff", good]), timeout=10))
    assert [r.error_code for r in replies if r.request_id == "fine"] == [0]
    assert sorted(r.error_code for r in replies) == [0, grpc.StatusCode.INVALID_ARGUMENT.value[0]]
    channel.close()


@pytest.fixture(scope="module")
def stub(digits_server):
    channel = grpc.insecure_channel(digits_server.address)
    yield pb_grpc.SplitInferenceStub(channel)
    channel.close()


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_unary_request_gets_status_naming_the_problem(stub, name):
    request, code, words = BAD_REQUESTS[name]
    with pytest.raises(grpc.RpcError) as info:
        stub.Infer(request, timeout=10)
    assert info.value.code() == code, info.value.details()
    assert words in info.value.details()


def test_bad_requests_on_a_stream_fail_alone(digits_server):
    with CloudClient(digits_server.address) as client, client.stream() as stream:
        good = [stream.submit(DEP, features(seed=i), request_id=f"good-{i}") for i in range(3)]
        bad = {}
        for name, (req, _, _) in BAD_REQUESTS.items():
            copy = pb.InferRequest()
            copy.CopyFrom(req)
            copy.request_id = f"bad-{name}"
            bad[name] = stream.send_raw(copy)
        more = [stream.submit(DEP, features(seed=10 + i)) for i in range(3)]
        for fut in good + more:
            assert fut.result(timeout=30).logits.shape == (2, 10)
        for name, fut in bad.items():
            exc = fut.exception(timeout=30)
            assert isinstance(exc, CloudError), name
            assert exc.code == BAD_REQUESTS[name][1] and BAD_REQUESTS[name][2] in exc.message, (name, exc)
            assert exc.request_id == f"bad-{name}"


def test_message_over_the_server_limit_is_refused(lenet_digits):
    with running_server(lenet_digits.root, max_message_mb=0.25) as server:
        with CloudClient(server.address, max_message_mb=64) as client:
            assert client.infer(DEP, features(16)).logits.shape == (16, 10)  # 64 KiB
            with pytest.raises(CloudError) as info:
                client.infer(DEP, features(100))  # 400 KiB > 256 KiB
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            # and the server goes on serving
            assert client.infer(DEP, features(1)).logits.shape == (1, 10)
        with CloudClient(server.address, max_message_mb=0.25) as client:
            with pytest.raises(CloudError) as info:  # the client refuses to send it at all
                client.infer(DEP, features(100))
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_good_client_gets_every_reply_while_another_sends_garbage(digits_server):
    """A well-behaved client (unary and stream) runs concurrently with a flood of bad requests."""
    x = features(4, seed=99)
    with CloudClient(digits_server.address) as client:
        expected = client.infer(DEP, x).logits
    stop = threading.Event()
    bad_counts = {"sent": 0, "refused": 0}

    def attacker():
        channel = grpc.insecure_channel(digits_server.address)
        stub = pb_grpc.SplitInferenceStub(channel)
        requests = [r for r, _, _ in BAD_REQUESTS.values()]
        while not stop.is_set():
            for req in requests:
                bad_counts["sent"] += 1
                try:
                    stub.Infer(req, timeout=10)
                except grpc.RpcError:
                    bad_counts["refused"] += 1
            # and a stream of garbage too
            for reply in stub.InferStream(iter(requests), timeout=10):
                assert reply.error_code != 0
        channel.close()

    threads = [threading.Thread(target=attacker) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        with CloudClient(digits_server.address) as client:
            unary = [client.infer(DEP, x, request_id=f"u{i}") for i in range(40)]
            with client.stream() as stream:
                futures = [stream.submit(DEP, x, request_id=f"s{i}") for i in range(40)]
                streamed = [f.result(timeout=60) for f in futures]
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    for i, r in enumerate(unary):
        assert r.request_id == f"u{i}" and np.allclose(r.logits, expected, atol=1e-5)
    for i, r in enumerate(streamed):
        assert r.request_id == f"s{i}" and np.allclose(r.logits, expected, atol=1e-5)
    assert bad_counts["sent"] > 0 and bad_counts["refused"] == bad_counts["sent"]


def test_deadline_exceeded_is_reported_and_expired_work_is_skipped(lenet_digits):
    import time

    with running_server(lenet_digits.root) as server, CloudClient(server.address) as client:
        real_tail = server.registry.tail
        ran = []

        def slow(features):
            ran.append(len(features))
            time.sleep(0.5)
            return np.zeros((len(features), 10), np.float32)

        server.registry.tail = lambda dep: slow
        first = client.infer_future(DEP, features(1), timeout=0.2)      # occupies the compute thread
        second = client.infer_future(DEP, features(2), timeout=0.2)     # expires while queued
        for fut in (first, second):
            with pytest.raises(CloudError) as info:
                fut.result(timeout=10)
            assert info.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and info.value.request_id
        time.sleep(0.6)
        # whichever call reached the compute thread first ran; the other expired in the queue and
        # never reached the tail (the two calls may arrive in either order)
        assert len(ran) == 1 and ran[0] in (1, 2), ran
        server.registry.tail = real_tail
        assert client.infer(DEP, features(1)).logits.shape == (1, 10)


def test_unreachable_cloud_is_unavailable_after_retries():
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with CloudClient(f"127.0.0.1:{port}", timeout=10) as client:
        t0 = time.perf_counter()
        with pytest.raises(CloudError) as info:
            client.infer(DEP, features(1))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert time.perf_counter() - t0 < 10

"""A small real gRPC upstream for the tap's tests: implements ``SplitInference`` and health.

Behaviour chosen so that every pass-through property can be observed:
- ``Infer``: logits are per-example sums of the features over 10 chunks; replies carry initial
  metadata ``x-upstream`` and trailing metadata ``x-served-by`` / ``x-trace-bin`` (binary);
  deployment ``missing`` -> NOT_FOUND (with trailing metadata), malformed tensors ->
  INVALID_ARGUMENT, deployment ``slow`` sleeps ``slow_seconds``. The remaining deadline and
  metadata each call arrived with are kept in ``seen`` for assertions.
- ``InferStream``: one StreamReply per request (per-request NOT_FOUND for ``missing``); a request
  for deployment ``abort`` ends the stream with RESOURCE_EXHAUSTED.
- ``GetHead``: the bytes given in ``heads`` (deployment -> (onnx bytes, fields)).

Run as a script (``python tap_upstream.py HOST``) it serves on HOST, for tests that put the
cloud in another network namespace.
"""

from __future__ import annotations

import hashlib
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from protos import split_inference_pb2 as pb
from protos import split_inference_pb2_grpc as pbg
from protos import wire


def logits_for(features: np.ndarray) -> np.ndarray:
    flat = features.reshape(features.shape[0], -1)
    return np.stack([c.sum(1) for c in np.array_split(flat, 10, axis=1)], 1).astype(np.float32)


class FakeCloud(pbg.SplitInferenceServicer):
    def __init__(self, heads: dict | None = None, slow_seconds: float = 1.0):
        self.heads = heads or {}
        self.slow_seconds = slow_seconds
        self.seen: list[dict] = []

    def _note(self, context, method):
        remaining = context.time_remaining()
        self.seen.append({"method": method, "deadline": None if remaining > 1e8 else remaining,
                          "metadata": dict(context.invocation_metadata())})

    def _reply(self, request: pb.InferRequest, context) -> pb.InferReply:
        features = wire.decode(request.features)
        reply = pb.InferReply(request_id=request.request_id, server_seconds=0.001)
        logits = logits_for(features)
        wire.encode_into(reply.logits, logits)
        reply.top1.extend(int(i) for i in logits.argmax(1))
        return reply

    def Infer(self, request, context):
        self._note(context, "Infer")
        if request.deployment_id == "slow":
            time.sleep(self.slow_seconds)
        context.send_initial_metadata((("x-upstream", "fake-cloud"),))
        if request.deployment_id == "missing":
            context.set_trailing_metadata((("x-error-detail", "no-such-deployment"),))
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown deployment {request.deployment_id!r}")
        try:
            reply = self._reply(request, context)
        except wire.WireError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"bad features: {exc}")
        context.set_trailing_metadata((("x-served-by", "fake-cloud"), ("x-trace-bin", b"\x00\x01\xff")))
        return reply

    def InferStream(self, request_iterator, context):
        self._note(context, "InferStream")
        context.send_initial_metadata((("x-upstream", "fake-cloud-stream"),))
        for request in request_iterator:
            if request.deployment_id == "abort":
                context.set_trailing_metadata((("x-why", "abort-requested"),))
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "stream aborted on request")
            if request.deployment_id == "missing":
                yield pb.StreamReply(request_id=request.request_id, error_code=grpc.StatusCode.NOT_FOUND.value[0],
                                     error_message="unknown deployment 'missing'")
                continue
            try:
                reply = self._reply(request, context)
            except wire.WireError as exc:
                yield pb.StreamReply(request_id=request.request_id,
                                     error_code=grpc.StatusCode.INVALID_ARGUMENT.value[0], error_message=str(exc))
                continue
            yield pb.StreamReply(request_id=request.request_id, reply=reply)
        context.set_trailing_metadata((("x-stream-served", "yes"),))

    def GetHead(self, request, context):
        self._note(context, "GetHead")
        if request.deployment_id not in self.heads:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown deployment {request.deployment_id!r}")
        onnx_bytes, fields = self.heads[request.deployment_id]
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if request.known_sha256 == digest:
            return pb.HeadReply(deployment_id=request.deployment_id, sha256=digest, not_modified=True, **fields)
        return pb.HeadReply(deployment_id=request.deployment_id, onnx_model=onnx_bytes, sha256=digest, **fields)

    def ListDeployments(self, request, context):
        self._note(context, "ListDeployments")
        reply = pb.ListDeploymentsReply()
        for dep, (_, fields) in sorted(self.heads.items()):
            reply.deployments.add(deployment_id=dep, arch=fields.get("arch", ""), split=fields.get("split", ""),
                                  feature_shape=fields.get("feature_shape", []), num_classes=10)
        return reply


def start_fake_cloud(servicer: FakeCloud, max_message: int = 64 << 20,
                     host: str = "127.0.0.1", credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, int]:
    """Serve ``servicer`` on a free port of ``host`` (TLS with ``credentials``); (server, port)."""
    server = grpc.server(futures.ThreadPoolExecutor(8),
                         options=[("grpc.max_receive_message_length", max_message),
                                  ("grpc.max_send_message_length", max_message)])
    pbg.add_SplitInferenceServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("splitlab.v1.SplitInference", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = (server.add_secure_port(f"{host}:0", credentials) if credentials is not None
            else server.add_insecure_port(f"{host}:0"))
    server.start()
    return server, port


@pytest.fixture(scope="module")
def upstream():
    """A ``FakeCloud`` on a free loopback port for a test module: its address."""
    server, port = start_fake_cloud(FakeCloud())
    yield f"127.0.0.1:{port}"
    server.stop(0)


if __name__ == "__main__":  # python tap_upstream.py HOST: serve on HOST, print the port, stop at EOF
    import sys

    _server, _port = start_fake_cloud(FakeCloud(), host=sys.argv[1])
    print(_port, flush=True)
    sys.stdin.read()
    _server.stop(0)

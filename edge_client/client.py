"""A reusable gRPC client for the cloud's ``splitlab.v1.SplitInference`` service.

``CloudClient("host:port")`` is what the edge, the attacker and the benchmarks use to drive
traffic. Every call has a deadline and a request id (in the message and in the ``x-request-id``
metadata); calls that fail with ``UNAVAILABLE`` are retried with exponential backoff by gRPC
itself (the channel's service config). Failures surface as :class:`CloudError` with the gRPC
status code, the server's message and the request id.

    with CloudClient("localhost:50051") as cloud:
        head = cloud.get_head("lenet5-mnist--relu2")
        result = cloud.infer("lenet5-mnist--relu2", features, wire="float16")
        with cloud.stream() as s:                     # many requests in flight on one stream
            futures = [s.submit(dep, f) for f in batches]

Every stream request has a deadline too, and a stream that breaks is reopened
(``edge_client.stream``).
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import split_inference_pb2 as pb
from protos import split_inference_pb2_grpc as pb_grpc
from protos import wire
from protos.targets import open_channel
from protos.tls import TlsConfig

if TYPE_CHECKING:
    from .stream import InferStream

DEFAULT_MAX_MESSAGE_MB = 64
DEFAULT_TIMEOUT = 30.0
DEFAULT_STREAM_TIMEOUT = 3600.0
SERVICE = "splitlab.v1.SplitInference"

RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}


def service_config(retries: bool = True) -> str:
    """Unary calls are retried on UNAVAILABLE; the stream never is (a replayed stream hung, see
    ``edge_client.stream``) and waits for the connection instead, its requests bounded by their
    own deadlines."""
    config: dict = {"methodConfig": [{"name": [{"service": SERVICE}, {"service": "grpc.health.v1.Health"}],
                                      "waitForReady": False},
                                     {"name": [{"service": SERVICE, "method": "InferStream"}],
                                      "waitForReady": True}]}
    if retries:
        config["methodConfig"][0]["retryPolicy"] = RETRY_POLICY
    return json.dumps(config)


def channel_options(max_message_mb: float = DEFAULT_MAX_MESSAGE_MB, retries: bool = True,
                    own_connection: bool = False) -> list:
    """``own_connection``: a TCP connection of this channel's own. gRPC Python otherwise shares one
    connection among all channels to the same address with the same options, so K clients in one
    process would be K streams on one connection (the load benchmark needs K connections)."""
    limit = int(max_message_mb * 1024 * 1024)
    return [("grpc.use_local_subchannel_pool", 1)] * own_connection + [
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.enable_retries", 1 if retries else 0),
        ("grpc.service_config", service_config(retries)),
        # keep large requests retryable (the default buffer is 256 KiB)
        ("grpc.per_rpc_retry_buffer_size", limit),
        # reconnect within 0.1-2 s, as calls are retried: gRPC's default backoff grows to 120 s, and a
        # tap that accepts and then closes (its cloud restarting) pushed it past a request's deadline
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 2000),
    ]


def new_request_id() -> str:
    return uuid.uuid4().hex


class CloudError(Exception):
    """A call the cloud refused or that failed; ``code`` is a ``grpc.StatusCode``."""

    def __init__(self, code: grpc.StatusCode, message: str, request_id: str = ""):
        super().__init__(f"{code.name}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.code = code
        self.message = message
        self.request_id = request_id


@dataclass
class InferResult:
    request_id: str
    logits: np.ndarray      # float32 (batch, classes)
    top1: np.ndarray        # int64 (batch,)
    server_seconds: float   # time the cloud spent in the tail
    request_bytes: int      # size of the serialized request (what crossed the wire)


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def status_code(number: int) -> grpc.StatusCode:
    return _CODES.get(number, grpc.StatusCode.UNKNOWN)


def build_request(deployment_id: str, features: np.ndarray, wire_dtype: str = "float32",
                  request_id: str | None = None, scale: float | None = None) -> pb.InferRequest:
    """An ``InferRequest`` message (for inspection or for sending malformed variants in tests)."""
    req = pb.InferRequest(deployment_id=deployment_id, request_id=request_id or new_request_id())
    wire.encode_into(req.features, features, wire_dtype, scale=scale)
    return req


def request_bytes(deployment_id: str, features: np.ndarray, wire_dtype: str = "float32",
                  request_id: str | None = None, scale: float | None = None) -> tuple[str, bytes]:
    """(request id, serialized ``InferRequest``) written straight from the array (one copy)."""
    rid = request_id or new_request_id()
    return rid, wire.infer_request_bytes(deployment_id, rid, features, wire_dtype, scale)


def _result(reply: pb.InferReply, request_bytes: int) -> InferResult:
    return InferResult(reply.request_id, wire.decode(reply.logits), np.asarray(reply.top1, dtype=np.int64),
                       reply.server_seconds, request_bytes)


class CloudClient:
    def __init__(self, address: str, max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
                 timeout: float = DEFAULT_TIMEOUT, retries: bool = True, own_connection: bool = False,
                 tls: TlsConfig | None = None):
        """``address``: HOST:PORT or a comma-separated list; calls go round robin over every address
        it resolves to (``protos.targets``). ``tls``: TLS / mutual TLS (``protos.tls``); plaintext
        without it."""
        self.address = address
        self.timeout = timeout
        self.max_message_mb = max_message_mb
        self.tls = tls or TlsConfig()
        self.channel = open_channel(address, channel_options(max_message_mb, retries, own_connection), self.tls)
        self.stub = pb_grpc.SplitInferenceStub(self.channel)
        # the inference methods take pre-serialized requests (see ``request_bytes``)
        self._infer = self.channel.unary_unary(f"/{SERVICE}/Infer", request_serializer=None,
                                               response_deserializer=pb.InferReply.FromString)
        self._infer_stream = self.channel.stream_stream(f"/{SERVICE}/InferStream", request_serializer=None,
                                                        response_deserializer=pb.StreamReply.FromString)
        self._health = health_pb2_grpc.HealthStub(self.channel)

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self) -> None:
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects, or raise ``CloudError(UNAVAILABLE)``."""
        try:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            raise CloudError(grpc.StatusCode.UNAVAILABLE, f"cloud at {self.address} not reachable "
                                                           f"within {timeout:g} s") from None

    # --- calls ---------------------------------------------------------------------------------
    def _call(self, method, request, request_id: str, timeout: float | None):
        try:
            return method(request, timeout=timeout or self.timeout, metadata=(("x-request-id", request_id),))
        except grpc.RpcError as exc:
            raise self.error(exc, request_id) from None

    def error(self, exc: grpc.RpcError, request_id: str) -> CloudError:
        """A ``CloudError`` for a failed call; a refused TLS handshake says which flag may be missing."""
        details = exc.details() or ""
        if exc.code() == grpc.StatusCode.UNAVAILABLE:
            details += self.tls.hint(details)
        return CloudError(exc.code(), details, request_id)

    def unreachable(self, timeout: float = 5.0) -> str:
        """Why the cloud cannot be reached now, with the TLS hint (:meth:`error`), or "" when it
        answers: a health check that does not wait for the connection (a stream does, so its
        requests only time out; see ``edge_client.stream``)."""
        try:
            self._health.Check(health_pb2.HealthCheckRequest(), timeout=timeout, wait_for_ready=False)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                return f"the cloud at {self.address} is unreachable: {self.error(exc, '').message}"
        return ""

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """The server's health status name (``SERVING``, ``NOT_SERVING`` ...)."""
        reply = self._call(self._health.Check, health_pb2.HealthCheckRequest(service=service),
                           new_request_id(), timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def list_deployments(self) -> list[dict]:
        reply = self._call(self.stub.ListDeployments, pb.ListDeploymentsRequest(), new_request_id(), None)
        return [{"deployment_id": d.deployment_id, "model_id": d.model_id, "arch": d.arch, "split": d.split,
                 "dataset": d.dataset, "input_shape": list(d.input_shape), "feature_shape": list(d.feature_shape),
                 "num_classes": d.num_classes} for d in reply.deployments]

    def get_head(self, deployment_id: str, known_sha256: str = "", timeout: float | None = None) -> pb.HeadReply:
        return self._call(self.stub.GetHead, pb.GetHeadRequest(deployment_id=deployment_id, known_sha256=known_sha256),
                          new_request_id(), timeout)

    def infer(self, deployment_id: str, features: np.ndarray, wire: str = "float32",
              request_id: str | None = None, timeout: float | None = None, scale: float | None = None) -> InferResult:
        """Run the tail on ``features`` (batch, *feature shape); blocks until the reply."""
        rid, data = request_bytes(deployment_id, features, wire, request_id, scale)
        reply = self._call(self._infer, data, rid, timeout)
        return _result(reply, len(data))

    def infer_future(self, deployment_id: str, features: np.ndarray, wire: str = "float32",
                     request_id: str | None = None, timeout: float | None = None,
                     scale: float | None = None) -> Future:
        """Like :meth:`infer` but returns at once; the future yields an ``InferResult``."""
        rid, data = request_bytes(deployment_id, features, wire, request_id, scale)
        out: Future = Future()
        call = self._infer.future(data, timeout=timeout or self.timeout, metadata=(("x-request-id", rid),))
        size = len(data)

        def done(c):
            try:
                out.set_result(_result(c.result(), size))
            except grpc.RpcError as exc:
                out.set_exception(self.error(exc, rid))
            except Exception as exc:  # noqa: BLE001 - e.g. a reply that does not decode
                out.set_exception(exc)

        call.add_done_callback(done)
        return out

    def stream(self, timeout: float | None = None, stream_id: str | None = None,
               request_timeout: float | None = None) -> "InferStream":
        """Open an ``InferStream`` (``edge_client.stream``); use it as a context manager. ``timeout``
        bounds each underlying gRPC call (a new one opens when it ends), ``request_timeout`` each
        request (default: the client's ``timeout``)."""
        from .stream import InferStream

        return InferStream(self, timeout or DEFAULT_STREAM_TIMEOUT, stream_id or new_request_id(), request_timeout)

"""Assemble the gRPC server: the SplitInference service, grpc.health.v1, reflection, message limits
and graceful shutdown. ``CloudServer`` is what the CLI runs and what tests start in-process."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from models import ArtifactStore
from protos import split_inference_pb2 as pb
from protos import wire
from protos.tls import TlsConfig

from .batcher import TailBatcher
from .logs import log
from .placement import resolve
from .registry import Registry
from .service import MalformedRequest, SplitInferenceService

logger = logging.getLogger("cloud_server.lifecycle")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
DEFAULT_MAX_MESSAGE_MB = 64


@dataclass
class ServerConfig:
    artifacts: str = "artifacts"
    host: str = "0.0.0.0"  # several addresses, comma-separated, share one port
    port: int = 50051
    max_message_mb: float = DEFAULT_MAX_MESSAGE_MB
    workers: int = 16
    threads: int = 1
    max_batch: int = 1024
    merge_rows: int = 64
    cache_size: int = 8
    grace_seconds: float = 30.0
    runtime: str = "onnxruntime"
    device: str = "cpu"  # "cuda": tails on the GPU where a runtime can have it (see placement)
    inline: bool = True  # a lone request runs its tail on the handler thread (see TailBatcher)
    tls: TlsConfig = field(default_factory=TlsConfig)  # --tls-cert/--tls-key[/--tls-client-ca]: TLS or mutual TLS

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_mb * 1024 * 1024)


def message_options(max_bytes: int) -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes)]


def parse_request(data: bytes):
    """An ``InferRequest`` (zero-copy view), or ``MalformedRequest`` for bytes that do not parse:
    the handler answers those with INVALID_ARGUMENT (and a stream goes on) instead of gRPC's
    generic INTERNAL "Exception deserializing request!"."""
    try:
        return wire.parse_infer_request(data)
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError and anything else
        return MalformedRequest(f"request is not a valid splitlab.v1.InferRequest message ({exc})")


def add_service(service: SplitInferenceService, server: grpc.Server) -> None:
    """Register the service like the generated ``add_SplitInferenceServicer_to_server``, except that
    inference requests are parsed without copying their features (:func:`parse_request`)."""
    handlers = {
        "Infer": grpc.unary_unary_rpc_method_handler(
            service.Infer, request_deserializer=parse_request,
            response_serializer=pb.InferReply.SerializeToString),
        "InferStream": grpc.stream_stream_rpc_method_handler(
            service.InferStream, request_deserializer=parse_request,
            response_serializer=pb.StreamReply.SerializeToString),
        "GetHead": grpc.unary_unary_rpc_method_handler(
            service.GetHead, request_deserializer=pb.GetHeadRequest.FromString,
            response_serializer=pb.HeadReply.SerializeToString),
        "ListDeployments": grpc.unary_unary_rpc_method_handler(
            service.ListDeployments, request_deserializer=pb.ListDeploymentsRequest.FromString,
            response_serializer=pb.ListDeploymentsReply.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


class CloudServer:
    """A started-on-demand gRPC server for every deployment of ``config.artifacts``."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.placement = resolve(config.runtime, config.device)
        self.registry = Registry(ArtifactStore(config.artifacts), config.cache_size, config.runtime, config.threads,
                                 self.placement)
        # inline runs would give torch one OpenMP team per handler thread: only with ORT or 1 thread
        self.batcher = TailBatcher(config.merge_rows,
                                   config.inline and (self.placement.runtime == "onnxruntime" or config.threads == 1))
        self.service = SplitInferenceService(self.registry, self.batcher, config.max_batch)
        self.health = health.HealthServicer(experimental_non_blocking=True,
                                            experimental_thread_pool=ThreadPoolExecutor(max_workers=1))
        self._server = grpc.server(ThreadPoolExecutor(max_workers=config.workers, thread_name_prefix="grpc"),
                                   options=message_options(config.max_message_bytes) + [("grpc.so_reuseport", 0)])
        add_service(self.service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self._server)
        self._credentials = config.tls.server_credentials()
        self.hosts = [h.strip() for h in config.host.split(",") if h.strip()]
        if not self.hosts:
            raise OSError(f"no address to listen on (host {config.host!r})")
        self.port = self._listen(self.hosts[0], config.port)
        for host in self.hosts[1:]:  # the same port on the other addresses
            self._listen(host, self.port)

    def _listen(self, host: str, port: int) -> int:
        try:
            bound = (self._server.add_insecure_port(f"{host}:{port}") if self._credentials is None
                     else self._server.add_secure_port(f"{host}:{port}", self._credentials))
        except RuntimeError as exc:  # grpcio raises for an address it cannot resolve or bind
            raise OSError(f"cannot listen on {host}:{port}: {exc}") from exc
        if bound == 0:
            raise OSError(f"cannot listen on {host}:{port} (address in use?)")
        return bound

    @property
    def address(self) -> str:
        host = "127.0.0.1" if self.hosts[0] in ("0.0.0.0", "[::]", "::") else self.hosts[0]
        return f"{host}:{self.port}"

    def start(self) -> "CloudServer":
        self._server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        deployments = len(self.registry.store.list_deployments())
        if not deployments:  # logged before "serving", which tests and scripts wait for
            log(logger, logging.WARNING, "artifact store is empty", deployments=self.registry.deployments_root,
                hint="deployments written there later (python -m models deploy, the lab) are served without "
                     "a restart; until then every call gets NOT_FOUND")
        log(logger, logging.INFO, "serving", address=",".join(f"{h}:{self.port}" for h in self.hosts),
            artifacts=str(self.registry.store.root), deployments=deployments,
            max_message_mb=self.config.max_message_mb, workers=self.config.workers, threads=self.config.threads,
            runtime=self.placement.runtime, device=self.placement.device, tls=self.tls_mode)
        return self

    @property
    def tls_mode(self) -> str:
        """``off``, ``tls`` or ``mutual`` (client certificates required)."""
        tls = self.config.tls
        return "mutual" if tls.client_ca else "tls" if tls.server else "off"

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let in-flight calls finish (up to ``grace`` seconds), then stop."""
        grace = self.config.grace_seconds if grace is None else grace
        log(logger, logging.INFO, "shutting down", grace_seconds=grace)
        self.health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self.batcher.close(timeout=grace)
        log(logger, logging.INFO, "stopped", batches=self.batcher.batches, requests=self.batcher.requests)

    def wait(self, timeout: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(grace=1.0)

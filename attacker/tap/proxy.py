"""A transparent gRPC proxy as a generic handler (asyncio): bytes in, bytes out.

Every method is forwarded with identity (de)serialisers, so replies are byte-identical; the status
code and details, initial and trailing metadata, and the remaining deadline of each call are passed
through unchanged, and a call the client cancels is cancelled upstream. Methods of the splitlab
protocol and ``grpc.health.v1.Health`` are forwarded with their own cardinality; any other method
is forwarded as a bidirectional stream (which carries every cardinality on the wire).

Recording hooks only hand raw bytes to the :class:`~attacker.tap.recorder.Recorder`; all parsing happens
on its writer thread. Health checks are forwarded too (the edge sees the cloud's health), except
for the service name :data:`TAP_HEALTH_SERVICE`, which the tap answers itself.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2

from protos import split_inference_pb2 as pb

from .recorder import Recorder

SERVICE = pb.DESCRIPTOR.services_by_name["SplitInference"].full_name
TAP_HEALTH_SERVICE = "splitlab.attacker.Tap"
HEALTH = "grpc.health.v1.Health"
INFER = f"/{SERVICE}/Infer"
INFER_STREAM = f"/{SERVICE}/InferStream"
GET_HEAD = f"/{SERVICE}/GetHead"
LIST_DEPLOYMENTS = f"/{SERVICE}/ListDeployments"
HEALTH_CHECK = f"/{HEALTH}/Check"
HEALTH_WATCH = f"/{HEALTH}/Watch"
REQUEST_ID_KEY = "x-request-id"

# Metadata a channel sets itself; forwarding these would duplicate or corrupt them.
_RESERVED = ("user-agent", "content-type", "te", "host", "grpc-")


def _cardinalities() -> dict[str, tuple[bool, bool]]:
    out = {}
    for svc in (pb.DESCRIPTOR.services_by_name["SplitInference"],
                health_pb2.DESCRIPTOR.services_by_name["Health"]):
        for m in svc.methods:
            out[f"/{svc.full_name}/{m.name}"] = (m.client_streaming, m.server_streaming)
    return out


CARDINALITY = _cardinalities()


def forwarded_metadata(metadata) -> tuple:
    return tuple((k, v) for k, v in (metadata or ()) if not (k.startswith(":") or k.startswith(_RESERVED)))


def _timeout(context) -> float | None:
    remaining = context.time_remaining()
    if remaining is None or remaining > 1e8:  # no deadline (grpc reports ~INT64_MAX seconds)
        return None
    return max(remaining, 0.0)


def _request_id(metadata) -> str:
    for k, v in metadata:
        if k == REQUEST_ID_KEY:
            return v if isinstance(v, str) else v.decode("utf-8", "replace")
    return ""


async def _relay_error(context, err: aio.AioRpcError, initial_sent: bool) -> None:
    """Answer the client with upstream's status, details and metadata (raises to end the call)."""
    if not initial_sent:
        initial = forwarded_metadata(err.initial_metadata())
        if initial:
            await context.send_initial_metadata(initial)
    await context.abort(err.code(), err.details() or "", forwarded_metadata(err.trailing_metadata()))


class ProxyHandler(grpc.GenericRpcHandler):
    """Forward every call to ``channel``; record splitlab traffic into ``recorder`` (may be None)."""

    def __init__(self, channel: aio.Channel, recorder: Recorder | None, tap_health=None):
        self._channel = channel
        self._recorder = recorder
        self._tap_health = tap_health  # callable -> ServingStatus for TAP_HEALTH_SERVICE
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._stream_ids = itertools.count(1)
        self.counts: collections.Counter = collections.Counter()

    def service(self, details):
        method = details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._make(method)
            if len(self._handlers) < 256:
                self._handlers[method] = handler
        return handler

    # --- building handlers ---------------------------------------------------------------------
    def _make(self, method: str):
        client_streaming, server_streaming = CARDINALITY.get(method, (True, True))
        if method in (HEALTH_CHECK, HEALTH_WATCH):
            fn = self._health_check if method == HEALTH_CHECK else self._health_watch
            factory = grpc.unary_unary_rpc_method_handler if method == HEALTH_CHECK else \
                grpc.unary_stream_rpc_method_handler
            return factory(fn(method))
        if not client_streaming and not server_streaming:
            hook = {INFER: self._record_infer, GET_HEAD: self._record_head,
                    LIST_DEPLOYMENTS: self._record_deployments}.get(method)
            return grpc.unary_unary_rpc_method_handler(self._unary(method, hook))
        if not client_streaming:
            return grpc.unary_stream_rpc_method_handler(self._unary_stream(method))
        return grpc.stream_stream_rpc_method_handler(self._stream(method, record=method == INFER_STREAM))

    def _unary(self, method: str, hook):
        multicallable = self._channel.unary_unary(method)
        counts = self.counts

        async def handle(request: bytes, context):
            start = time.time()
            counts[method] += 1
            metadata = forwarded_metadata(context.invocation_metadata())
            call = multicallable(request, timeout=_timeout(context), metadata=metadata)
            try:
                reply = await call
            except aio.AioRpcError as err:
                counts["upstream_errors"] += 1
                if hook is not None:
                    hook(context.peer(), start, request, None, err.code().value[0], err.details() or "", metadata)
                await _relay_error(context, err, False)
            except asyncio.CancelledError:
                call.cancel()
                raise
            initial = forwarded_metadata(await call.initial_metadata())
            if initial:
                await context.send_initial_metadata(initial)
            trailing = forwarded_metadata(await call.trailing_metadata())
            if trailing:
                context.set_trailing_metadata(trailing)
            if hook is not None:
                hook(context.peer(), start, request, reply, 0, "", metadata)
            return reply

        return handle

    def _unary_stream(self, method: str):
        multicallable = self._channel.unary_stream(method)

        async def handle(request: bytes, context):
            self.counts[method] += 1
            call = multicallable(request, timeout=_timeout(context),
                                 metadata=forwarded_metadata(context.invocation_metadata()))
            await self._pump(call, context, None)

        return handle

    def _stream(self, method: str, record: bool):
        multicallable = self._channel.stream_stream(method)
        recorder = self._recorder if record else None

        async def handle(request_iterator, context):
            self.counts[method] += 1
            metadata = forwarded_metadata(context.invocation_metadata())
            sid = f"s{next(self._stream_ids)}"
            peer = context.peer()

            # Requests are written with call.write(), not handed over as an iterator: when the upstream
            # ends a stream with an error while an iterator is still being consumed, grpc-aio
            # sometimes reports "Internal error from Core" instead of the upstream's status.
            call = multicallable(timeout=_timeout(context), metadata=metadata)

            async def forward_requests():
                try:
                    async for message in request_iterator:
                        if recorder is not None:
                            recorder.submit("stream_request", sid, peer, time.time(), message, "", size=len(message))
                        await call.write(message)
                    await call.done_writing()
                except Exception:  # the call ended (upstream error, cancellation): nothing left to send
                    pass

            writer = asyncio.get_running_loop().create_task(forward_requests())
            try:
                await self._pump(call, context, sid if recorder is not None else None)
            finally:
                if not writer.done():
                    writer.cancel()

        return handle

    async def _pump(self, call, context, sid: str | None) -> None:
        """Relay a server stream: initial metadata before the first message, then status/trailers."""
        initial_sent = False
        recorder = self._recorder
        try:
            while True:
                message = await call.read()
                if message is aio.EOF:
                    break
                if not initial_sent:
                    initial = forwarded_metadata(await call.initial_metadata())
                    if initial:
                        await context.send_initial_metadata(initial)
                    initial_sent = True
                if sid is not None:
                    recorder.submit("stream_reply", sid, time.time(), message, size=0)
                await context.write(message)
        except aio.AioRpcError as err:
            self.counts["upstream_errors"] += 1
            if sid is not None:
                recorder.submit("stream_end", sid, time.time(), err.code().value[0], err.details() or "")
            if not initial_sent:
                initial = forwarded_metadata(err.initial_metadata())
                if initial:
                    await context.send_initial_metadata(initial)
            # set (not abort): the handler returns normally and gRPC sends this status
            context.set_trailing_metadata(forwarded_metadata(err.trailing_metadata()))
            context.set_code(err.code())
            context.set_details(err.details() or "")
            return
        except asyncio.CancelledError:
            call.cancel()
            if sid is not None:
                recorder.submit("stream_end", sid, time.time(), grpc.StatusCode.CANCELLED.value[0],
                                "cancelled by the client")
            raise
        if not initial_sent:
            initial = forwarded_metadata(await call.initial_metadata())
            if initial:
                await context.send_initial_metadata(initial)
        if sid is not None:
            recorder.submit("stream_end", sid, time.time(), 0, "")
        trailing = forwarded_metadata(await call.trailing_metadata())
        if trailing:
            context.set_trailing_metadata(trailing)

    # --- health: forwarded, except the tap's own service name ----------------------------------
    def _health_check(self, method: str):
        forward = self._unary(method, None)

        async def handle(request: bytes, context):
            if self._tap_health is not None and _health_service(request) == TAP_HEALTH_SERVICE:
                return health_pb2.HealthCheckResponse(status=self._tap_health()).SerializeToString()
            return await forward(request, context)

        return handle

    def _health_watch(self, method: str):
        forward = self._unary_stream(method)

        async def handle(request: bytes, context):
            if self._tap_health is not None and _health_service(request) == TAP_HEALTH_SERVICE:
                last = None
                while True:
                    status = self._tap_health()
                    if status != last:
                        await context.write(health_pb2.HealthCheckResponse(status=status).SerializeToString())
                        last = status
                    await asyncio.sleep(0.5)
            await forward(request, context)

        return handle

    # --- recording hooks (hot path: no parsing) ------------------------------------------------
    def _record_infer(self, peer, start, request, reply, status, details, metadata) -> None:
        if self._recorder is not None:
            self._recorder.submit("infer", peer, start, time.time(), request, reply, status, details,
                                  _request_id(metadata), size=len(request))

    def _record_head(self, peer, start, request, reply, status, details, metadata) -> None:
        if self._recorder is not None and reply is not None:
            self._recorder.submit("head", peer, start, reply, size=len(reply))

    def _record_deployments(self, peer, start, request, reply, status, details, metadata) -> None:
        if self._recorder is not None and reply is not None:
            self._recorder.submit("deployments", start, reply, size=len(reply))


def _health_service(request: bytes) -> str:
    try:
        return health_pb2.HealthCheckRequest.FromString(request).service
    except Exception:
        return ""

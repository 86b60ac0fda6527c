"""The ``splitlab.v1.SplitInference`` servicer: Infer, InferStream, GetHead, ListDeployments.

Handlers validate each request (``validation``), hand valid features to the compute thread
(``batcher``) and answer with the logits and top-1 classes. A bad request is answered with a
status and a message and never reaches the model, so it cannot disturb other clients. Every
request carries an id: the message's ``request_id``, else the ``x-request-id`` metadata, else a
fresh one; it is echoed in the reply, in the ``x-request-id`` response metadata and in the logs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid

import grpc
import numpy as np

from protos import split_inference_pb2 as pb
from protos import split_inference_pb2_grpc as pb_grpc
from protos import wire

from .batcher import Cancelled, TailBatcher
from .errors import RequestError
from .logs import log
from .registry import Registry
from .validation import features_of

logger = logging.getLogger("cloud_server")
_END = object()


class MalformedRequest:
    """Stands in for a request whose bytes did not parse (see ``server.parse_request``)."""

    deployment_id = ""
    request_id = ""

    def __init__(self, message: str):
        self.message = message


def new_request_id() -> str:
    return uuid.uuid4().hex


def metadata_request_id(context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "x-request-id":
            return value
    return ""


class SplitInferenceService(pb_grpc.SplitInferenceServicer):
    def __init__(self, registry: Registry, batcher: TailBatcher, max_batch: int = 1024):
        self.registry = registry
        self.batcher = batcher
        self.max_batch = max_batch

    # --- shared path ---------------------------------------------------------------------------
    def _submit(self, request: pb.InferRequest, context, inline: bool = True):
        """Validate ``request`` and queue it; returns the future of its ``TailResult``."""
        if isinstance(request, MalformedRequest):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        dep = self.registry.deployment(request.deployment_id)
        features = features_of(request, dep, self.max_batch)
        tail = self.registry.tail(dep)
        return self.batcher.submit(dep.id, tail, features, context.is_active, inline)

    def _reply(self, request_id: str, result) -> pb.InferReply:
        reply = pb.InferReply(request_id=request_id, server_seconds=result.seconds)
        logits = np.asarray(result.logits, dtype=np.float32)
        wire.encode_into(reply.logits, logits)
        reply.top1.extend(logits.argmax(axis=1).tolist())
        return reply

    @staticmethod
    def _failure(exc: BaseException) -> RequestError:
        if isinstance(exc, RequestError):
            return exc
        if isinstance(exc, Cancelled):
            return RequestError(grpc.StatusCode.CANCELLED, str(exc))
        logger.exception("tail failed", extra={"fields": {}})
        return RequestError(grpc.StatusCode.INTERNAL, f"the tail failed: {type(exc).__name__}: {exc}")

    # --- RPCs ----------------------------------------------------------------------------------
    def Infer(self, request, context):
        rid = request.request_id or metadata_request_id(context) or new_request_id()
        context.set_trailing_metadata((("x-request-id", rid),))
        t0 = time.perf_counter()
        try:
            result = self._submit(request, context).result()
        except BaseException as exc:  # noqa: BLE001 - every failure becomes a status
            err = self._failure(exc)
            log(logger, logging.WARNING, "infer refused", request_id=rid, deployment=request.deployment_id,
                code=err.code.name, error=err.message)
            context.abort(err.code, err.message)
        reply = self._reply(rid, result)
        log(logger, logging.INFO, "infer", request_id=rid, deployment=request.deployment_id,
            batch=len(result.logits), merged=result.merged, tail_ms=round(result.seconds * 1e3, 3),
            ms=round((time.perf_counter() - t0) * 1e3, 3))
        return reply

    def InferStream(self, request_iterator, context):
        """Replies in completion order, each tagged with its request id; errors are per request."""
        replies: queue.SimpleQueue = queue.SimpleQueue()
        stream_rid = metadata_request_id(context)
        counts = {"received": 0}

        def on_done(rid, dep_id, t0, fut):
            try:
                result = fut.result()
            except BaseException as exc:  # noqa: BLE001
                err = self._failure(exc)
                replies.put(self._stream_error(rid, dep_id, err))
                return
            reply = self._reply(rid, result)
            log(logger, logging.INFO, "infer", request_id=rid, deployment=dep_id, stream=True,
                batch=len(result.logits), merged=result.merged, tail_ms=round(result.seconds * 1e3, 3),
                ms=round((time.perf_counter() - t0) * 1e3, 3))
            replies.put(pb.StreamReply(request_id=rid, reply=reply))

        def read():
            try:
                for request in request_iterator:
                    counts["received"] += 1
                    rid = request.request_id or f"{stream_rid or 'stream'}-{counts['received']}"
                    t0 = time.perf_counter()
                    try:
                        fut = self._submit(request, context, inline=False)
                    except BaseException as exc:  # noqa: BLE001
                        replies.put(self._stream_error(rid, request.deployment_id, self._failure(exc)))
                        continue
                    fut.add_done_callback(lambda f, rid=rid, dep=request.deployment_id, t0=t0: on_done(rid, dep, t0, f))
            except grpc.RpcError:
                pass  # the client went away; what was accepted still completes
            except Exception as exc:  # noqa: BLE001 - e.g. a message that does not parse
                log(logger, logging.WARNING, "stream read failed", request_id=stream_rid, error=str(exc))
            finally:
                replies.put(_END)

        threading.Thread(target=read, name="infer-stream-reader", daemon=True).start()
        sent = 0
        ended = False
        while not ended or sent < counts["received"]:
            item = replies.get()
            if item is _END:
                ended = True
                continue
            sent += 1
            yield item

    def _stream_error(self, rid: str, dep_id: str, err: RequestError) -> pb.StreamReply:
        log(logger, logging.WARNING, "infer refused", request_id=rid, deployment=dep_id, stream=True,
            code=err.code.name, error=err.message)
        return pb.StreamReply(request_id=rid, error_code=err.code.value[0], error_message=err.message)

    def GetHead(self, request, context):
        rid = metadata_request_id(context) or new_request_id()
        try:
            dep = self.registry.deployment(request.deployment_id)
            data, digest = self.registry.head(dep)
        except RequestError as err:
            log(logger, logging.WARNING, "get_head refused", request_id=rid, deployment=request.deployment_id,
                code=err.code.name, error=err.message)
            context.abort(err.code, err.message)
        r = dep.record
        reply = pb.HeadReply(deployment_id=dep.id, input_shape=r["input_shape"], feature_shape=r["feature_shape"],
                             preprocessing=r.get("preprocessing", ""), sha256=digest, split=r["split"],
                             arch=r["arch"], num_classes=int(r["num_classes"]), dataset=r.get("dataset", ""),
                             dp_compatible=bool(r.get("dp_compatible", False)))
        if request.known_sha256 and request.known_sha256 == digest:
            reply.not_modified = True
        else:
            reply.onnx_model = data
        log(logger, logging.INFO, "get_head", request_id=rid, deployment=dep.id, sha256=digest,
            not_modified=reply.not_modified)
        return reply

    def ListDeployments(self, request, context):
        reply = pb.ListDeploymentsReply()
        for dep in self.registry.list():
            r = dep.record
            reply.deployments.add(deployment_id=dep.id, model_id=r.get("model_id", ""), arch=r["arch"],
                                  split=r["split"], input_shape=r["input_shape"], feature_shape=r["feature_shape"],
                                  num_classes=int(r["num_classes"]), dataset=r.get("dataset", ""))
        return reply

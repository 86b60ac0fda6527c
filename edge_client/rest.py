"""The edge's public REST endpoint (FastAPI): ``POST /v1/infer``, ``GET /v1/deployments``,
``GET /healthz`` and OpenAPI docs at ``/docs``.

``POST /v1/infer`` takes one image for a deployment, as any of

* ``multipart/form-data`` with a ``file`` (PNG or JPEG) and a ``deployment_id`` field;
* ``application/json`` ``{"deployment_id": ..., "array": [...]}`` where the array is either the
  model input itself, float (C, H, W) in [0, 1], or pixels, whole numbers 0..255 shaped (H, W) or
  (H, W, C);
* a raw ``image/png`` or ``image/jpeg`` body with ``?deployment_id=...``.

It answers ``{"request_id", "deployment_id", "class", "scores", "logits", ...}`` and always sets
the ``X-Request-ID`` header: the same id travels to the cloud in the gRPC message and metadata,
so traffic seen on the channel can be matched to the query (the black-box attacker relies on it).
A client may choose the id by sending ``X-Request-ID`` itself. Bad input gets a 4xx JSON body
``{"detail": ..., "request_id": ...}``; a cloud that is down gets 503.

The OpenAPI document describes every body ``/v1/infer`` takes and every answer it gives (400,
404, 413, 415, 422, 502-504 with their error body), so that schema-driven clients and fuzzers
(schemathesis, ``tests/test_api_schemas.py``) can tell a documented refusal from a bug. What the
schema cannot say (the deployment's input shape, whether bytes decode as an image, which of the
three places names the deployment) is checked here and answered with 4xx.
"""

from __future__ import annotations

import io
import re
import time
import uuid

import grpc
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from models import SplitlabError
from models.artifacts import ID_PATTERN

from .client import CloudError
from .edge import Edge, preprocess

DEFAULT_MAX_UPLOAD_MB = 4.0
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
IMAGE_TYPES = ("image/png", "image/jpeg")

_HTTP_FOR_GRPC = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

REQUEST_ID_HEADER = {"X-Request-ID": {"schema": {"type": "string"}, "description": "the request id (also in the "
                                                                          "body, and in the gRPC call to the cloud)"}}


class ErrorBody(BaseModel):
    detail: str = Field(description="what is wrong")
    request_id: str | None = Field(None, description="the request's id (as in the X-Request-ID header)")


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    request_id: str
    deployment_id: str
    class_: int = Field(alias="class", ge=0, description="the top-1 class")
    scores: list[float] = Field(description="softmax of the logits")
    logits: list[float]
    server_ms: float = Field(description="time in the cloud's tail")
    total_ms: float = Field(description="time in this endpoint, head and network included")


class Deployments(BaseModel):
    deployments: list[dict] = Field(description="what the cloud's ListDeployments answers")


class Health(BaseModel):
    status: str = Field(description="ok, or degraded when the cloud does not answer SERVING")
    cloud: str = Field(description="the cloud's health status, or the error reaching it")
    cloud_address: str


def _error(description: str, headers: bool = True) -> dict:
    out = {"model": ErrorBody, "description": description}
    return {**out, "headers": REQUEST_ID_HEADER} if headers else out


INFER_ERRORS = {
    400: _error("the body is not valid JSON, or the upload is not an image PNG or JPEG can decode"),
    404: _error("the cloud has no such deployment"),
    413: _error("the body is over the upload limit (--max-upload-mb), or the features over the cloud's message limit"),
    415: _error("a content type other than those of the request body, or an image that is not PNG or JPEG"),
    422: _error("well-formed but unusable: no deployment id or an invalid one, an image of the wrong size, an "
                "array of the wrong shape or range, features the cloud refuses"),
    502: _error("the cloud answered with an unexpected error"),
    503: _error("the cloud is unavailable"),
    504: _error("the cloud did not answer in time"),
}
DEPLOYMENT_ID = {"type": "string", "pattern": ID_PATTERN.pattern,
                 "description": "the deployment (here, in the query or the server's default)"}
ARRAY = {"type": "array", "minItems": 1, "items": {"anyOf": [{"type": "number"}, {"type": "array"}]},
         "description": "float (C, H, W) in [0, 1], or pixels 0..255 (H, W[, C])"}
BINARY = {"type": "string", "format": "binary"}
INFER_DOCS = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["file"],
                "properties": {"file": {**BINARY, "description": "PNG or JPEG image"}, "deployment_id": DEPLOYMENT_ID}}},
            "application/json": {"schema": {
                "type": "object", "required": ["array"],
                "properties": {"deployment_id": DEPLOYMENT_ID, "array": ARRAY}}},
            "image/png": {"schema": BINARY},
            "image/jpeg": {"schema": BINARY},
            "application/octet-stream": {"schema": {**BINARY, "description": "PNG or JPEG bytes"}},
        },
    },
    "parameters": [
        {"name": "deployment_id", "in": "query", "required": False, "schema": DEPLOYMENT_ID},
        {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string"},
         "description": "choose the request id (letters, digits, ._:-, at most 128; another value is replaced)"},
    ],
}


class BadInput(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def decode_image(data: bytes, input_shape: tuple[int, int, int]) -> np.ndarray:
    """PNG/JPEG bytes -> uint8 (H, W, C) matching ``input_shape`` (C, H, W), or ``BadInput``."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = input_shape
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, ValueError):
        raise BadInput(400, "the upload is not an image PNG or JPEG can decode") from None
    with img:
        if img.format not in ("PNG", "JPEG"):
            raise BadInput(415, f"images must be PNG or JPEG, got {img.format}")
        if img.size != (w, h):
            raise BadInput(422, f"image is {img.size[0]}x{img.size[1]} (WxH) but this deployment takes "
                                f"{w}x{h} images; resize it first")
        if c not in (1, 3):
            raise BadInput(422, f"this deployment takes {c}-channel inputs; send them as a JSON array")
        try:
            arr = np.asarray(img.convert("L" if c == 1 else "RGB"), dtype=np.uint8)
        except (OSError, ValueError) as exc:
            raise BadInput(400, f"the image could not be decoded: {exc}") from None
    return arr.reshape(h, w, c)


def array_input(value, input_shape: tuple[int, int, int]) -> np.ndarray:
    """A JSON array -> float32 (1, C, H, W) model input, or ``BadInput``."""
    c, h, w = input_shape
    try:
        arr = np.asarray(value)
        if arr.dtype.kind not in "iuf":  # strings, booleans, nulls, objects
            raise TypeError
        arr = arr.astype(np.float64)
    except (ValueError, TypeError, OverflowError):
        raise BadInput(422, "'array' must be a rectangular array of numbers") from None
    if not np.isfinite(arr).all():
        raise BadInput(422, "'array' contains NaN or Inf")
    if arr.shape == (c, h, w):
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 1:
            raise BadInput(422, f"a (C, H, W) = {list(arr.shape)} array is the model input and must lie in [0, 1]")
        return arr.astype(np.float32)[None]
    pixel_shapes = [(h, w, c)] + ([(h, w)] if c == 1 else [])
    if arr.shape in pixel_shapes:
        if arr.min(initial=0) < 0 or arr.max(initial=0) > 255 or not np.all(arr == np.round(arr)):
            raise BadInput(422, "an (H, W[, C]) array holds pixels and must be whole numbers in 0..255")
        return preprocess(arr.reshape(1, h, w, c).astype(np.uint8))
    raise BadInput(422, f"'array' has shape {list(arr.shape)}; this deployment takes float (C, H, W) = "
                        f"{[c, h, w]} in [0, 1] or pixels (H, W, C) = {[h, w, c]}")


def one_deployment_id(known: str | None, given, where: str) -> str | None:
    """``given`` (from ``where``) checked and reconciled with an id ``known`` from elsewhere."""
    if given is None:
        return known
    if not isinstance(given, str) or not ID_PATTERN.match(given) or ".." in given:
        shown = repr(given) if len(repr(given)) <= 140 else repr(given)[:120] + "..."
        raise BadInput(422, f"invalid deployment id {shown} ({where}): use 1-128 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit, without '..'")
    if known is not None and known != given:
        raise BadInput(422, f"deployment id {given!r} ({where}) differs from {known!r} (query parameter)")
    return given


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    e = np.exp(z)
    return e / e.sum()


def create_app(edge: Edge, default_deployment: str | None = None,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, health_timeout: float = 3.0) -> FastAPI:
    app = FastAPI(title="splitlab edge", version="1",
                  description="Split inference: the head runs here, the tail in the cloud.")
    limit = int(max_upload_mb * 1024 * 1024)

    def error(status: int, message: str, rid: str) -> JSONResponse:
        return JSONResponse({"detail": message, "request_id": rid}, status_code=status,
                            headers={"X-Request-ID": rid})

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadInput(413, f"request body of {int(declared)} bytes exceeds the {limit}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BadInput(413, f"request body exceeds the {limit}-byte limit")
            chunks.append(chunk)
        body = b"".join(chunks)
        request._body = body  # lets request.form() parse what was read
        return body

    async def parse(request: Request, rid: str):
        """(deployment id, a loader turning the input shape into a float32 (1, C, H, W) batch)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        dep_id = one_deployment_id(None, request.query_params.get("deployment_id"), "query parameter")
        body = await read_body(request)
        if ctype == "multipart/form-data":
            try:
                form = await request.form()
            except HTTPException as exc:  # starlette's answer to a malformed multipart body
                raise BadInput(400, f"malformed multipart body: {exc.detail}") from None
            dep_id = one_deployment_id(dep_id, form.get("deployment_id"), "form field")
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise BadInput(422, "multipart upload needs a 'file' part holding the image")
            data = await upload.read()
            return dep_id, lambda shape: preprocess(decode_image(data, shape)[None])
        if ctype == "application/json":
            import json

            try:
                doc = json.loads(body)
            except ValueError as exc:
                raise BadInput(400, f"body is not valid JSON: {exc}") from None
            except RecursionError:
                raise BadInput(400, "body is not valid JSON: nested too deeply") from None
            if not isinstance(doc, dict) or "array" not in doc:
                raise BadInput(422, "JSON body must be an object with an 'array' (and a 'deployment_id')")
            dep_id = one_deployment_id(dep_id, doc.get("deployment_id"), "JSON key")
            return dep_id, lambda shape: array_input(doc["array"], shape)
        if ctype in IMAGE_TYPES or ctype == "application/octet-stream":
            return dep_id, lambda shape: preprocess(decode_image(body, shape)[None])
        raise BadInput(415, f"unsupported content type {ctype or '(none)'!r}; send multipart/form-data, "
                            "application/json, image/png or image/jpeg")

    @app.post("/v1/infer", openapi_extra=INFER_DOCS, summary="Classify one image through edge -> cloud",
              response_model=Prediction, responses={200: {"headers": REQUEST_ID_HEADER}, **INFER_ERRORS})
    async def infer(request: Request):
        rid = request.headers.get("x-request-id", "")
        rid = rid if REQUEST_ID.match(rid) else uuid.uuid4().hex
        t0 = time.perf_counter()
        try:
            dep_id, load = await parse(request, rid)
            dep_id = dep_id or default_deployment
            if not dep_id:
                raise BadInput(422, "no deployment_id given (form field, JSON key or query parameter)")
            dep = await run_in_threadpool(edge.deployment, dep_id)
            x = load(dep.input_shape)
            result = await run_in_threadpool(edge.infer, dep_id, x, rid)
        except BadInput as exc:
            return error(exc.status, exc.message, rid)
        except CloudError as exc:
            return error(_HTTP_FOR_GRPC.get(exc.code, 502), f"cloud: {exc.code.name}: {exc.message}", rid)
        except SplitlabError as exc:
            return error(422 if "invalid deployment id" in str(exc) else 500, str(exc), rid)
        logits = result.logits[0]
        body = {"request_id": result.request_id, "deployment_id": dep_id, "class": int(result.top1[0]),
                "scores": softmax(logits.astype(np.float64)).tolist(), "logits": logits.tolist(),
                "server_ms": result.server_seconds * 1e3, "total_ms": (time.perf_counter() - t0) * 1e3}
        return JSONResponse(body, headers={"X-Request-ID": result.request_id})

    @app.get("/v1/deployments", summary="The deployments the cloud serves", response_model=Deployments,
             responses={503: _error("the cloud is unavailable", headers=False)})
    def deployments():
        try:
            return {"deployments": edge.client.list_deployments()}
        except CloudError as exc:
            return JSONResponse({"detail": f"cloud: {exc.code.name}: {exc.message}"}, status_code=503)

    @app.get("/healthz", summary="Liveness of the edge and reachability of the cloud", response_model=Health,
             responses={503: {"model": Health, "description": "the cloud is not reachable or not serving"}})
    def healthz():
        try:
            cloud = edge.client.health(timeout=health_timeout)
        except CloudError as exc:
            cloud = f"{exc.code.name}: {exc.message}"
        ok = cloud == "SERVING"
        return JSONResponse({"status": "ok" if ok else "degraded", "cloud": cloud, "cloud_address": edge.client.address},
                            status_code=200 if ok else 503)

    return app

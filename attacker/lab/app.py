"""The lab REST API (FastAPI), versioned under ``/v1``, plus the HTML pages.

``create_app(config, run_experiment)`` wires the experiment store, the worker pool and the
routes; :mod:`attacker.lab.serve` builds the real runner and serves it next to the tap. Every
error is a JSON body ``{"error": "...", "detail": ...}``; validation errors (422) name the field.
Mutating endpoints (``POST``, ``DELETE``) need ``Authorization: Bearer $SPLITLAB_API_TOKEN`` when a
token is configured. A request body over :data:`MAX_BODY_BYTES` is refused with 413 before it is
read into memory (a spec is a few KB; without a limit one POST could hold the service's memory).
"""

from __future__ import annotations

import logging
import re
import secrets
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from . import pages
from .schemas import ErrorBody, Experiment, ExperimentPage, Health, Status
from .kinds import KINDS, ExperimentRequest, check_experiment
from .spec import Limits, SpecError, loc_str
from .store import ExperimentStore
from .worker import WorkerPool

log = logging.getLogger("attacker.lab")
IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")
MAX_BODY_BYTES = 1 << 20
ERRORS = {400: {"model": ErrorBody, "description": "the body is not parsable JSON"},
          401: {"model": ErrorBody, "description": "missing or wrong bearer token"},
          404: {"model": ErrorBody, "description": "no such experiment"},
          413: {"model": ErrorBody, "description": f"the body is over {MAX_BODY_BYTES} bytes"},
          422: {"model": ErrorBody, "description": "invalid input; the message names the field"}}


class BodyLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes, declared (answered before the app runs)
    or streamed (raised while the app reads it, and answered by its HTTPException handler)."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

    def _message(self, size: str) -> str:
        return f"the request body{size} is over the limit of {self.limit} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            message = self._message(f" of {int(declared)} bytes")
            return await JSONResponse({"error": message, "detail": message}, 413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise HTTPException(413, self._message(""))
            return message

        await self.app(scope, limited, send)


@dataclass
class LabConfig:
    lab_dir: Path
    artifacts: Path
    data_root: str | None = None
    token: str | None = None
    limits: Limits = field(default_factory=Limits)
    workers: int = 1
    edge_url: str | None = None
    tap_status: Callable[[], dict] | None = None  # the tap's counters, shown by /healthz
    max_restarts: int = 3


def create_app(config: LabConfig, run_experiment, start_workers: bool = True) -> FastAPI:
    store = ExperimentStore(config.lab_dir)
    pool = WorkerPool(store, run_experiment, config.workers)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        rerun = store.recover(config.max_restarts)
        if rerun:
            log.warning("re-running %d experiment(s) interrupted by the last shutdown: %s",
                        len(rerun), ", ".join(rerun))
        if start_workers:
            pool.start()
        yield
        pool.stop()

    app = FastAPI(title="splitlab lab API", version="1.0.0", lifespan=lifespan,
                  openapi_url="/v1/openapi.json", docs_url="/v1/docs", redoc_url=None,
                  description="Submit experiments and read their results. Split-point experiments (kind "
                              "inversion, the default): train or reuse a model, deploy split points, send "
                              "private images through the live edge and tap, attack the captured features. "
                              "Membership experiments (kind membership): train or reuse a target, run "
                              "membership attacks against its answers (in process or through the live "
                              "pipeline), score them on its members and held-out non-members, plot the ROC. "
                              "Attribute experiments (kind attribute): infer a private attribute (race, age band) "
                              "of the victims from the split features the tap captured or the released outputs, "
                              "against the majority-class baseline. Classifier-inversion experiments (kind "
                              "classifier-inversion): reconstruct each person's face from a deployed recogniser "
                              "(MI-FACE, white-box from the captured head or API-only), scored by SSIM/PSNR to the "
                              "person's mean face and an optional evaluator.")
    app.state.store, app.state.pool, app.state.config = store, pool, config
    app.add_middleware(BodyLimit)
    bearer = HTTPBearer(auto_error=False, description="SPLITLAB_API_TOKEN (needed for POST and DELETE)")

    def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if not config.token:
            return
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "this endpoint needs 'Authorization: Bearer <token>' (SPLITLAB_API_TOKEN)")
        if not secrets.compare_digest(creds.credentials.encode(), config.token.encode()):
            raise HTTPException(401, "the bearer token is not valid")

    def view(record: dict) -> dict:
        exp_id = record["id"]
        record = dict(record)
        record["queue_position"] = store.queue_position(exp_id)
        record["links"] = {"self": f"/v1/experiments/{exp_id}", "page": f"/experiments/{exp_id}"}
        return record

    def get_or_404(exp_id: str) -> dict:
        record = store.get(exp_id)
        if record is None:
            raise HTTPException(404, f"no experiment {exp_id!r}")
        return record

    # --- errors --------------------------------------------------------------------------------
    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.status_code == 405:  # Starlette lists only the first matching route's methods
            headers["Allow"] = ", ".join(_allowed_methods(app, request.scope))
        return JSONResponse({"error": str(exc.detail), "detail": exc.detail}, exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={Exception: str, bytes: lambda b: repr(b)})
        for e in errors:  # echoing whole bodies back helps nobody
            if e.get("type") == "invalid_kind" and isinstance(e.get("input"), dict):
                e["loc"] = ["body", "kind"]  # a kind that is not one: the field is named
            if isinstance(e.get("input"), (dict, list)):
                e.pop("input")
            loc = list(e.get("loc", ()))
            if loc[:1] == ["body"] and loc[1:2] and loc[1] in KINDS:  # the union's tag: not a field
                e["loc"] = [loc[0], *loc[2:]]
        message = "; ".join(f"{loc_str(_body_loc(e.get('loc', ())))}: {e.get('msg')}" for e in errors)
        return JSONResponse({"error": message or "invalid request", "detail": errors}, 422)

    @app.exception_handler(SpecError)
    async def spec_error(request: Request, exc: SpecError):
        detail = [{"loc": ["body", *loc], "msg": msg, "type": "value_error"} for loc, msg in exc.errors]
        return JSONResponse({"error": str(exc), "detail": detail}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    # --- API -----------------------------------------------------------------------------------
    @app.post("/v1/experiments", status_code=202, response_model=Experiment, tags=["experiments"],
              dependencies=[Depends(require_token)], responses={400: ERRORS[400], 401: ERRORS[401], 413: ERRORS[413], 422: ERRORS[422]},
              summary="Submit an experiment; it is queued and runs in the background")
    def submit(spec: ExperimentRequest, response: Response):
        check_experiment(spec, config)
        record = store.create(spec.model_dump(mode="json"))
        pool.notify()
        response.headers["Location"] = f"/v1/experiments/{record['id']}"
        log.info("experiment %s queued", record["id"])
        return view(record)

    @app.get("/v1/experiments", response_model=ExperimentPage, tags=["experiments"],
             responses={422: ERRORS[422]}, summary="List experiments, newest first")
    def list_experiments(status: Status | None = Query(None, description="only experiments in this status"),
                         limit: int = Query(20, ge=1, le=100), offset: int = Query(0, ge=0, le=10**9)):
        items, total = store.list(status, limit, offset)
        nxt = None
        if offset + len(items) < total:
            nxt = f"/v1/experiments?limit={limit}&offset={offset + limit}" + (f"&status={status}" if status else "")
        return {"items": [view(r) for r in items], "total": total, "limit": limit, "offset": offset, "next": nxt}

    @app.get("/v1/experiments/{exp_id}", response_model=Experiment, tags=["experiments"],
             responses={404: ERRORS[404]}, summary="Status, progress, results when done, error when failed")
    def get_experiment(exp_id: str):
        return view(get_or_404(exp_id))

    @app.delete("/v1/experiments/{exp_id}", response_model=Experiment, tags=["experiments"],
                dependencies=[Depends(require_token)],
                responses={401: ERRORS[401], 404: ERRORS[404],
                           409: {"model": ErrorBody, "description": "already finished"}},
                summary="Cancel a queued or running experiment (running ones stop at the next step)")
    def cancel(exp_id: str):
        record = get_or_404(exp_id)
        if record["status"] in ("done", "failed", "cancelled"):
            raise HTTPException(409, f"experiment {exp_id} is already {record['status']}; nothing to cancel")
        record = store.cancel(exp_id)
        log.info("experiment %s: cancel requested (was %s)", exp_id, record["status"])
        return view(record)

    @app.get("/v1/experiments/{exp_id}/images/{name}.png", tags=["experiments"],
             responses={200: {"content": {"image/png": {}}, "description": "a PNG image"}, 404: ERRORS[404]},
             response_class=FileResponse,
             summary="An image of the experiment (grids of originals and reconstructions; a membership ROC plot)")
    def image(exp_id: str, name: str):
        get_or_404(exp_id)
        if not IMAGE_NAME.match(name) or ".." in name:
            raise HTTPException(404, f"no image {name!r}")
        path = store.image_dir(exp_id) / f"{name}.png"
        if not path.is_file():
            raise HTTPException(404, f"experiment {exp_id} has no image {name!r} (yet)")
        return FileResponse(path, media_type="image/png")

    @app.get("/healthz", response_model=Health, tags=["service"], summary="Liveness and queue counts")
    def healthz():
        tap = None
        if config.tap_status is not None:
            try:
                tap = config.tap_status()
            except Exception as exc:  # the health answer itself must not fail
                tap = {"error": str(exc)}
        alive = pool.alive() if start_workers else 0
        return {"status": "ok" if alive == config.workers or not start_workers else "degraded",
                "workers": alive, "workers_configured": config.workers, "experiments": store.counts(),
                "running": list(pool.running), "edge": config.edge_url, "tap": tap, "auth": bool(config.token)}

    # --- pages ---------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, tags=["pages"], summary="Index page (HTML)")
    def index_page(status: Status | None = None):
        items, total = store.list(status, 100, 0)
        return pages.index([view(r) for r in items], total, status)

    @app.get("/experiments/{exp_id}", response_class=HTMLResponse, tags=["pages"],
             responses={404: {"description": "no such experiment (an HTML page saying so)"}},
             summary="Experiment page (HTML)")
    def experiment_page(exp_id: str):
        record = store.get(exp_id)
        if record is None:
            return HTMLResponse(pages.not_found(exp_id), 404)
        return pages.experiment(view(record))

    return app


def _allowed_methods(app: FastAPI, scope) -> list[str]:
    from starlette.routing import Match

    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches({**scope, "method": "\x00"})
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= set(route.methods)
    return sorted(methods)


def _body_loc(loc) -> tuple:
    loc = tuple(loc)
    return loc[1:] if loc and loc[0] in ("body", "query", "path") else loc


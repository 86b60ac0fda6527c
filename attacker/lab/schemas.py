"""Response bodies of the lab API (they are what the OpenAPI document promises)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .store import STATUSES

Status = Literal[STATUSES]  # type: ignore[valid-type]


class Progress(BaseModel):
    step: str = Field(description="what the experiment is doing now, e.g. 'conv1: whitebox attack'")
    fraction: float = Field(ge=0.0, le=1.0, description="share of the experiment's steps completed")


class Event(BaseModel):
    time: str | None
    event: str


class Links(BaseModel):
    self: str
    page: str = Field(description="the human-readable HTML page")


class Experiment(BaseModel):
    id: str
    status: Status
    spec: dict[str, Any] = Field(description="the submitted spec, with defaults filled in")
    created: str | None
    started: str | None = None
    finished: str | None = None
    progress: Progress
    queue_position: int | None = Field(None, description="1-based place in the queue while waiting")
    results: dict[str, Any] | None = Field(
        None, description="inversion: model, baseline, per-split rows and per split x attack rows (PSNR, SSIM, "
                          "MSE mean/std, accuracy, bytes per image, attack seconds, image URLs); membership: "
                          "targets per seed, trials per attack x seed (AUC, TPR at 1% and 0.1% FPR, balanced "
                          "accuracy, precision, recall, F1, advantage) and rows per attack (their mean and std "
                          "over the seeds), the ROC image URL; attribute: model, victims, rows per observation x "
                          "attribute (accuracy, macro-F1, per-class F1, majority baseline, attacker images, edge "
                          "queries); classifier-inversion: model, attack, summary and baseline (SSIM/PSNR own and others, "
                          "identification, evaluator top-1/top-5), per-person rows, the faces image URL; partial "
                          "while running")
    error: str | None = None
    restarts: int = Field(0, description="times it was interrupted by a service restart and re-run")
    cancel_requested: bool = False
    events: list[Event] = []
    links: Links


class ExperimentPage(BaseModel):
    items: list[Experiment]
    total: int
    limit: int
    offset: int
    next: str | None = Field(None, description="URL of the next page, if any")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    workers: int = Field(description="worker threads alive")
    workers_configured: int
    experiments: dict[str, int] = Field(description="experiments per status")
    running: list[str]
    edge: str | None
    tap: dict[str, Any] | None = None
    auth: bool = Field(description="whether mutating endpoints require a bearer token")


class ErrorBody(BaseModel):
    error: str = Field(description="what is wrong, naming the field where there is one")
    detail: Any = None

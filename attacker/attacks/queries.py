"""Query access to a head: functions ``images (N, C, H, W) in [0, 1] -> features``.

A black-box attacker learns by asking. Three ways to ask, from the most to the least realistic:

* :func:`edge_query` - live: each chosen image goes to the edge's public ``POST /v1/infer`` under a
  fresh request id, and its features are read back where the attacker sees them, in the tap's
  capture store (the tap must be recording the edge's traffic);
* :func:`onnx_query` - offline through an ONNX head with ONNX Runtime, as the edge computes it;
* :func:`head_query` - offline through a torch head (benchmarks).

They are family-agnostic: any attack that queries the head takes one of these.
"""

from __future__ import annotations

import time
import uuid
from typing import Callable

import numpy as np
import torch
from torch import nn

from models.errors import SplitlabError


def head_query(head: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Query the head offline with torch (benchmarks): ``images -> features``."""
    head = head.eval()

    def query(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return head(images)

    return query


def onnx_query(onnx_bytes: bytes, threads: int = 1) -> Callable[[torch.Tensor], np.ndarray]:
    """Query an ONNX head with ONNX Runtime, as the edge computes it."""
    from models.onnx_runtime import head_session

    sess = head_session(bytes(onnx_bytes), threads)
    name = sess.get_inputs()[0].name

    def query(images: torch.Tensor) -> np.ndarray:
        return sess.run(None, {name: images.detach().cpu().float().numpy()})[0]

    return query


def edge_query(edge: str, deployment: str, captures, timeout: float = 10.0,
               progress: bool = False) -> Callable[[torch.Tensor], np.ndarray]:
    """Query the edge's ``POST /v1/infer`` with chosen images; read each one's features at the tap.

    ``edge`` is the edge's base URL or an ``httpx.Client`` already pointed at it (a test client);
    ``captures`` is the tap's capture store (``attacker.captures.store.CaptureStore``); ``timeout``
    is how long to wait for the tap to record one query's features.
    """
    import httpx
    from tqdm.auto import tqdm

    if isinstance(edge, httpx.Client):
        base, client = "", edge
    else:
        base, client = edge.rstrip("/"), httpx.Client(timeout=30.0)
    bar = tqdm(desc="black-box queries via the edge", unit="img", disable=not progress, leave=False)

    def query(images):
        arr = images.detach().cpu().float().numpy()
        rids = []
        for img in arr:
            rid = f"bb-{uuid.uuid4().hex[:20]}"
            try:
                resp = client.post(f"{base}/v1/infer", json={"deployment_id": deployment, "array": img.tolist()},
                                   headers={"X-Request-ID": rid})
            except httpx.HTTPError as exc:
                raise SplitlabError(f"the edge at {base or edge} did not answer: {exc}") from exc
            if resp.status_code != 200:
                raise SplitlabError(f"the edge answered {resp.status_code} to a query: {resp.text[:200]}")
            rids.append(resp.headers.get("X-Request-ID", rid))
            bar.update(1)
        feats = []
        for rid in rids:
            deadline = time.monotonic() + timeout
            while True:
                caps = captures.captures(request_id=rid, ok_only=True)
                if caps:
                    feats.append(captures.features(caps[-1]))
                    break
                if time.monotonic() > deadline:
                    raise SplitlabError(f"the tap did not record query {rid} within {timeout:.0f} s: is the edge "
                                        f"pointed at the tap, and is the tap recording into {captures.root}?")
                time.sleep(0.02)
        return np.concatenate(feats)

    return query


def probability_query(source) -> tuple[Callable, str]:
    """The target's released probabilities, ``images -> (N, classes)``, from a ``KnowledgeSource``:
    its query function, else the edge's ``/v1/infer`` (``scores``), else the stored model in-process
    (the same float64 softmax); and where they come from, in words."""
    from .knowledge import KnowledgeError
    from .membership.knowledge import edge_scores_query, model_query

    if source.query is not None:
        return source.query, f"queried through {source.query_label}"
    dep = source.require_deployment("queries")
    if source.edge_url is not None:
        query = edge_scores_query(source.edge_url, dep, max(source.query_timeout, 30.0))
        return query, f"live queries through {source.edge_url}"
    from models.loading import load_model

    model_id = (source.deployment_record() or {}).get("model_id")
    if not model_id:
        raise KnowledgeError(f"the deployment record of {dep!r} names no model")
    return model_query(load_model(source.artifacts, model_id)[0]), f"the stored model {model_id}"

"""Drive images through the live edge's REST endpoint and read their features back at the tap.

Each image goes to ``POST {edge}/v1/infer`` as a JSON array with a request id the lab chooses
(``X-Request-ID``); the edge runs the head, sends the features to the cloud through the tap, and
answers with the class. The tap records the request under the same id, so the captured features
are matched to the images that were sent by request id, never by order or time. When the tap runs
in this process its recorder is flushed first; otherwise the capture store is polled.

A 503 from the edge (its cloud, through the tap, is unavailable), or an edge that refuses the
connection (it is restarting), is sent again with the same request id for up to
``unavailable_wait`` seconds; any other answer or error fails the experiment at once. Why: after
the tap or the cloud restarts, the edge's gRPC channel waits up to 2 s between reconnection
attempts, and its own five retries of a call spend about 0.75 s; an experiment re-run right after
``attacker serve`` restarted (restart recovery) failed in CI with "the edge answered 503 ...
Connection refused" while the tap was already listening again. Only a failed attempt is lost, and
the tap records it as failed, so it is never matched.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import httpx
import numpy as np

from models import SplitlabError

from ..captures.store import CaptureStore

WIRE_ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1}
UNAVAILABLE_WAIT = 30.0   # seconds a request waits for the edge's cloud to come back
RETRY_PAUSE = (0.2, 2.0)  # first and longest pause between tries, doubling


@dataclass
class Sent:
    """What came back for a batch of images: predictions, features and their wire size."""

    request_ids: list[str]
    classes: np.ndarray          # top-1 per image, from the edge's answer
    features: np.ndarray         # (N, *feature_shape) float32, as captured at the tap
    wire_bytes: np.ndarray       # feature payload bytes per image on the wire
    wire_dtype: str
    seconds: float
    logits: np.ndarray | None = None  # (N, classes) float32: the cloud's answers as the tap recorded them


class EdgeChannel:
    def __init__(self, edge_url: str, captures: CaptureStore, flush: Callable[[], object] | None = None,
                 timeout: float = 60.0, capture_timeout: float = 20.0, unavailable_wait: float = UNAVAILABLE_WAIT,
                 http: httpx.Client | None = None):
        """``http``: the client to reach the edge with (default a new ``httpx.Client`` on ``edge_url``)."""
        if not edge_url:
            raise SplitlabError("no edge to send images through: start the service with --edge URL "
                                "(the edge's REST address, e.g. http://localhost:8001)")
        self.edge_url = edge_url.rstrip("/")
        self.captures = captures
        self.flush = flush
        self.capture_timeout = capture_timeout
        self.unavailable_wait = unavailable_wait
        self.http = http or httpx.Client(base_url=self.edge_url, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def _infer(self, deployment_id: str, image: np.ndarray, request_id: str) -> int:
        """Send one image; ``image`` is uint8 (H, W, C) pixels or float32 (C, H, W) in [0, 1]."""
        body = {"deployment_id": deployment_id, "array": image.tolist()}
        start = time.monotonic()
        give_up = start + self.unavailable_wait
        pause, tries = RETRY_PAUSE[0], 1
        while True:
            try:
                r = self.http.post("/v1/infer", json=body, headers={"X-Request-ID": request_id})
                why = f"answered {r.status_code}" if r.status_code == 503 else ""
            except httpx.ConnectError as exc:  # nothing was sent: the edge is not listening (yet)
                r, why = None, f"cannot be reached ({type(exc).__name__}: {exc})"
            except httpx.HTTPError as exc:
                raise SplitlabError(f"cannot reach the edge at {self.edge_url}: {type(exc).__name__}: {exc}") from None
            now = time.monotonic()
            if not why or now >= give_up:
                break
            time.sleep(min(pause, give_up - now))  # the last try at the end of the wait
            pause, tries = min(2 * pause, RETRY_PAUSE[1]), tries + 1
        waited = f"{tries} {'try' if tries == 1 else 'tries'} over {time.monotonic() - start:.1f} s"
        if r is None:
            raise SplitlabError(f"the edge at {self.edge_url} {why}, {waited}, for request {request_id}")
        if r.status_code != 200:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            waited = f" ({waited})" if why else ""
            raise SplitlabError(f"the edge answered {r.status_code} for request {request_id}{waited}: {detail}")
        answer = r.json()
        if answer.get("request_id") != request_id:
            raise SplitlabError(f"the edge answered request {request_id} with request id "
                                f"{answer.get('request_id')!r}; it must keep X-Request-ID")
        return int(answer["class"])

    def send(self, deployment_id: str, images: np.ndarray, request_ids: list[str],
             check: Callable[[], None] | None = None) -> Sent:
        """Send each image (its own request) and collect the features the tap captured for it."""
        if len(images) != len(request_ids):
            raise ValueError("one request id per image")
        started = time.perf_counter()
        newest = self.captures.captures(last=1)
        after = newest[-1].id if newest else 0
        classes = []
        for i, (image, rid) in enumerate(zip(images, request_ids)):
            if check is not None and i % 16 == 0:
                check()
            classes.append(self._infer(deployment_id, image, rid))
        caps = self._collect(deployment_id, request_ids, after)
        feats, sizes, logits, dtype = [], [], [], ""
        for rid in request_ids:
            cap = caps[rid]
            f = self.captures.features(cap)
            if len(f) != 1:
                raise SplitlabError(f"capture of request {rid} holds {len(f)} feature rows, expected 1")
            feats.append(f[0])
            logits.append(None if cap.logits is None else cap.logits.reshape(len(f), -1)[0])
            dtype = cap.wire_dtype
            sizes.append(math.prod(cap.shape[1:]) * WIRE_ITEMSIZE.get(cap.wire_dtype, 4))
        recorded = None if any(v is None for v in logits) else np.stack(logits).astype(np.float32)
        return Sent(list(request_ids), np.asarray(classes), np.stack(feats).astype(np.float32),
                    np.asarray(sizes), dtype, time.perf_counter() - started, recorded)

    def _collect(self, deployment_id: str, request_ids: list[str], after: int) -> dict:
        wanted = set(request_ids)
        found: dict = {}
        deadline = time.monotonic() + self.capture_timeout
        while True:
            if self.flush is not None:
                self.flush()
            caps = self.captures.captures(deployment=deployment_id, after_id=after, ok_only=True, with_logits=True)
            for cap in caps:
                if cap.request_id in wanted:
                    found[cap.request_id] = cap  # the newest wins
            if len(found) == len(wanted):
                return found
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(found))
                raise SplitlabError(
                    f"the tap captured no features for {len(missing)} of {len(wanted)} requests "
                    f"(e.g. {missing[0]}) within {self.capture_timeout:.0f} s: is the edge at {self.edge_url} "
                    f"sending to the cloud through this tap (edge-client serve --cloud <tap --listen address>)?")
            time.sleep(0.05)

    def query_function(self, deployment_id: str, prefix: str, check: Callable[[], None] | None = None):
        """A black-box query: float images (N, C, H, W) in [0, 1] -> their features via edge and tap."""
        counter = {"n": 0}

        def query(images) -> np.ndarray:
            x = images.detach().cpu().float().numpy() if hasattr(images, "detach") else np.asarray(images, np.float32)
            start = counter["n"]
            counter["n"] += len(x)
            rids = [f"{prefix}-q{start + i}" for i in range(len(x))]
            return self.send(deployment_id, np.clip(x, 0.0, 1.0), rids, check).features

        query.counter = counter
        return query

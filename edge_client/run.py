"""``edge-client run``: send dataset samples through edge -> cloud and measure accuracy, images/s,
latency percentiles and bytes on the wire.

Every request carries its own id and every reply is checked against it; each request ends answered
or failed (counted, the first error kept), and the totals add up to the images asked for. When the
cloud stays unreachable (nothing answered while calls failed with UNAVAILABLE or DEADLINE_EXCEEDED)
for longer than the client's ``timeout``, the run stops sending and counts the rest as not sent,
so a dead cloud ends a run after about one timeout instead of one timeout per request."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from tqdm.auto import tqdm

from .client import CloudError, new_request_id
from .edge import Edge, preprocess

UNREACHABLE = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q)) if values else float("nan")


def run_dataset(edge: Edge, dep_id: str, images: np.ndarray, labels: np.ndarray | None = None,
                batch: int = 1, stream: bool = False, inflight: int = 2, progress: bool = True) -> dict:
    """Send ``images`` (uint8 N, H, W, C) in batches of ``batch`` with up to ``inflight`` requests in
    flight (unary calls, or one ``InferStream``). Latency is per request: from the start of the
    head to the reply."""
    if batch < 1 or inflight < 1:
        raise ValueError("batch and inflight must be at least 1")
    dep = edge.deployment(dep_id)
    n = len(images)
    preds = np.full(n, -1, dtype=np.int64)
    latencies: list[float] = []
    sizes: list[int] = []
    server: list[float] = []
    errors: list[str] = []
    counts = {"answered": 0, "failed": 0, "mismatched": 0, "images_failed": 0}
    last_ok = [time.monotonic()]
    give_up = threading.Event()
    lock = threading.Lock()
    bar = tqdm(total=n, desc=f"{dep_id} via {edge.client.address}", unit="img", disable=not progress)
    session = edge.client.stream() if stream else None
    window: deque = deque()
    started = time.perf_counter()

    def on_done(fut, lo, hi, t0, rid):
        t1 = time.perf_counter()
        try:
            res = fut.result()
            if res.request_id != rid:
                counts["mismatched"] += 1
                raise ValueError(f"the reply to request {rid} carries the id {res.request_id!r}")
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            with lock:
                errors.append(str(exc))
                counts["failed"] += 1
                counts["images_failed"] += hi - lo
                if (isinstance(exc, CloudError) and exc.code.name in UNREACHABLE
                        and time.monotonic() - last_ok[0] > edge.client.timeout):
                    give_up.set()
            return
        with lock:
            counts["answered"] += 1
            last_ok[0] = time.monotonic()
            preds[lo:hi] = res.top1
            latencies.append(t1 - t0)
            sizes.append(res.request_bytes)
            server.append(res.server_seconds)
        bar.update(hi - lo)

    sent = 0
    try:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            while len(window) >= inflight:
                window.popleft().wait()
            if give_up.is_set():
                break
            t0 = time.perf_counter()
            x = preprocess(images[lo:hi])
            rid = new_request_id()
            fut = edge.infer_future(dep_id, x, request_id=rid, stream=session)
            sent = hi
            waiter = _Waiter(fut)
            fut.add_done_callback(lambda f, lo=lo, hi=hi, t0=t0, rid=rid, w=waiter: (on_done(f, lo, hi, t0, rid),
                                                                                       w.set()))
            window.append(waiter)
        while window:
            window.popleft().wait()
    finally:
        if session is not None:
            session.close()
        bar.close()
    wall = time.perf_counter() - started
    done = int((preds >= 0).sum())
    out = {
        "deployment": dep_id, "runtime": dep.runner.description, "wire": edge.wire, "batch": batch,
        "stream": stream, "inflight": inflight, "images": done, "errors": len(errors),
        "requests": -(-n // batch), "answered": counts["answered"], "failed": counts["failed"],
        "mismatched": counts["mismatched"], "not_sent": -(-(n - sent) // batch),
        "images_failed": counts["images_failed"], "images_not_sent": n - sent,
        "seconds": wall, "images_per_s": done / wall if wall > 0 else float("nan"),
        "latency_p50_ms": percentile_ms(latencies, 50), "latency_p90_ms": percentile_ms(latencies, 90),
        "latency_p99_ms": percentile_ms(latencies, 99),
        "server_ms_mean": float(np.mean(server) * 1e3) if server else float("nan"),
        "bytes_per_image": float(np.sum(sizes) / done) if done else float("nan"),
    }
    if labels is not None and done:
        ok = preds >= 0
        out["accuracy"] = float((preds[ok] == np.asarray(labels)[ok]).mean())
    if errors:
        out["first_error"] = errors[0]
    if give_up.is_set():
        out["gave_up"] = (f"stopped sending: nothing answered for more than {edge.client.timeout:g} s "
                          f"while requests failed with {' or '.join(sorted(UNREACHABLE))}")
    return out


class _Waiter:
    """Set once a request's reply has been recorded (its done callback has run)."""

    def __init__(self, fut):
        self.fut = fut
        self.event = threading.Event()

    def set(self):
        self.event.set()

    def wait(self):
        self.event.wait()

"""``edge-client run``: send dataset samples through edge -> cloud and measure accuracy, images/s,
latency percentiles and bytes on the wire."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from tqdm.auto import tqdm

from .edge import Edge, preprocess


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
    lock = threading.Lock()
    bar = tqdm(total=n, desc=f"{dep_id} via {edge.client.address}", unit="img", disable=not progress)
    session = edge.client.stream() if stream else None
    window: deque = deque()
    started = time.perf_counter()

    def on_done(fut, lo, hi, t0):
        t1 = time.perf_counter()
        try:
            res = fut.result()
        except Exception as exc:  # noqa: BLE001 - counted and reported, the run goes on
            with lock:
                errors.append(str(exc))
            return
        with lock:
            preds[lo:hi] = res.top1
            latencies.append(t1 - t0)
            sizes.append(res.request_bytes)
            server.append(res.server_seconds)
        bar.update(hi - lo)

    try:
        for lo in range(0, n, batch):
            hi = min(n, lo + batch)
            while len(window) >= inflight:
                window.popleft().wait()
            t0 = time.perf_counter()
            x = preprocess(images[lo:hi])
            fut = edge.infer_future(dep_id, x, stream=session)
            waiter = _Waiter(fut)
            fut.add_done_callback(lambda f, lo=lo, hi=hi, t0=t0, w=waiter: (on_done(f, lo, hi, t0), w.set()))
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

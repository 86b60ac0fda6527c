"""One compute thread that runs every tail, merging concurrent small requests into one batch.

gRPC handler threads only validate; they hand the features (a ``Features`` view of the request
bytes) to :class:`TailBatcher` and wait on a future. The compute thread takes everything that
queued up while it was busy, groups it by deployment and wire dtype, concatenates each group up to
``merge_rows`` examples, runs the tail (a callable: ``Features`` -> float32 logits) once per group
and splits the logits back. Nothing waits for a batch to fill: a lone request runs at once, and
batches form only when requests arrive faster than the tail runs (which is when merging pays).
Running all tails on one thread also keeps the runtime to one thread team instead of one per gRPC
handler thread (see PERFORMANCE-NOTES).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .features import Features


@dataclass
class TailResult:
    logits: np.ndarray    # float32 (batch, classes)
    seconds: float        # tail compute time of the (merged) batch this request ran in
    merged: int           # how many requests shared that batch


@dataclass
class _Item:
    key: object
    tail: Callable[[Features], np.ndarray]
    features: Features
    future: Future
    is_active: Callable[[], bool] | None


class Cancelled(Exception):
    """The caller went away (deadline passed, call cancelled) before its tail ran."""


class TailBatcher:
    def __init__(self, merge_rows: int = 64, inline: bool = True):
        self.merge_rows = max(1, merge_rows)
        self.inline = inline
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._compute = threading.Lock()  # held by whoever runs a tail: one tail at a time
        self._closed = False
        self.batches = 0
        self.requests = 0
        self._thread = threading.Thread(target=self._loop, name="tail-compute", daemon=True)
        self._thread.start()

    def submit(self, key, tail: Callable[[Features], np.ndarray], features: Features,
               is_active: Callable[[], bool] | None = None, inline: bool = True) -> Future:
        """Queue a request; the future yields its ``TailResult``.

        When nothing is running or queued (and ``inline`` is on, here and for the batcher) the tail
        runs right here on the caller's thread instead: a lone unary request then skips two thread
        hand-offs, which are what batch-1 latency is made of on a busy machine. It still holds the
        compute lock, so tails never run concurrently. (A stream's reader passes ``inline=False``:
        it must go on reading while the tail runs.)
        """
        fut: Future = Future()
        if inline and self.inline and not self._queue and self._compute.acquire(blocking=False):
            try:
                if not self._queue and not self._closed:
                    fut.set_running_or_notify_cancel()
                    self._execute([_Item(key, tail, features, fut, None)])
                    return fut
            finally:
                self._compute.release()
        with self._cond:
            if self._closed:
                raise RuntimeError("the tail batcher is closed")
            self._queue.append(_Item(key, tail, features, fut, is_active))
            self._cond.notify()
        return fut

    def close(self, timeout: float | None = None) -> None:
        """Finish everything queued, then stop the compute thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- compute thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                items = list(self._queue)
                self._queue.clear()
            for group in self._groups(items):
                with self._compute:
                    group = [it for it in group if self._alive(it)]  # checked once the tail is free
                    if group:
                        self._execute(group)

    @staticmethod
    def _alive(it: _Item) -> bool:
        if it.is_active is not None and not it.is_active():
            it.future.set_exception(Cancelled("the call ended before its tail ran"))
            return False
        return True

    def _groups(self, items: list[_Item]) -> list[list[_Item]]:
        live = [it for it in items if it.future.set_running_or_notify_cancel()]
        by_key: dict[object, list[list[_Item]]] = {}
        groups: list[list[_Item]] = []
        for it in live:
            chunks = by_key.setdefault((it.key, it.features.merge_key), [])
            rows = len(it.features)
            if chunks and sum(len(c.features) for c in chunks[-1]) + rows <= self.merge_rows:
                chunks[-1].append(it)
            else:
                chunk = [it]
                chunks.append(chunk)
                groups.append(chunk)
        return groups

    def _execute(self, group: list[_Item]) -> None:
        try:
            x = Features.concat([it.features for it in group])
            t0 = time.perf_counter()
            logits = group[0].tail(x)
            seconds = time.perf_counter() - t0
        except Exception as exc:  # a tail that fails must not take the compute thread down
            for it in group:
                it.future.set_exception(exc)
            return
        self.batches += 1
        self.requests += len(group)
        start = 0
        for it in group:
            n = len(it.features)
            it.future.set_result(TailResult(logits[start:start + n], seconds, len(group)))
            start += n

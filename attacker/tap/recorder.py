"""The tap's recorder: a bounded queue and one background writer thread in front of the store.

Its callers (the proxy's handlers, or the passive tap's decoder in the recorder process) only hand
raw message bytes to :meth:`Recorder.submit` (no parsing, no I/O, never blocks); the writer thread
parses them (``InferRequest`` features, the reply, ``GetHead`` payloads,
``ListDeployments``), matches InferStream replies to their requests by request id, and writes to the
:class:`~attacker.captures.store.CaptureStore` in batched transactions.

Nothing here can stop traffic: a full queue (by items or bytes) drops the event, a failing store
(disk full, locked, unwritable, missing) fails the batch, and both are counted, logged (rate
limited) and exposed by :meth:`Recorder.stats` and the stats file. A store that cannot be opened is
retried every second. Whether the store's writes fail now (``store_failing`` in the stats, from
the last write tried: set by a failed open or write, cleared by the next write that succeeds, or,
while no traffic comes, by ``CaptureStore.check_writable`` at each idle wake-up, every
``stats_interval``) is what the tap's own health service reports (:mod:`attacker.tap.service`).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from pathlib import Path

from protos import split_inference_pb2 as pb
from protos import wire

from ..captures.store import CaptureStore
from .priority import run_at_idle_priority

log = logging.getLogger("attacker.tap")

STATS_FILE = "tap-stats.json"


class Recorder:
    """Queue events for the writer thread; see the module docstring."""

    def __init__(self, store_dir: str | os.PathLike, max_queue: int = 65536,
                 max_queue_bytes: int = 512 << 20, max_captures: int | None = None,
                 max_bytes: int | None = None, busy_timeout: float = 0.2, stats_interval: float = 2.0,
                 stats_file: str | os.PathLike | None = None, batch: int = 64, linger: float = 0.02,
                 idle_priority: bool = False):
        self.store_dir = Path(store_dir)
        self.max_queue, self.max_queue_bytes = max_queue, max_queue_bytes
        self.retention = (max_captures, max_bytes)
        self.busy_timeout = busy_timeout
        self.stats_interval = stats_interval
        self.stats_file = Path(stats_file) if stats_file else self.store_dir / STATS_FILE
        self.batch = batch
        self.linger = linger  # after the first event, wait this long for more (fewer transactions)
        self.idle_priority = idle_priority  # the writer thread runs under SCHED_IDLE (attacker/tap/priority.py)
        self._queue: collections.deque = collections.deque()
        self._queued_bytes = 0
        self._cond = threading.Condition()
        self._closing = False
        self._store: CaptureStore | None = None
        self._next_open = 0.0
        self._streams: dict[str, dict] = {}
        self._counts = collections.Counter()
        self._last_error = ""
        self._last_log = 0.0
        self._store_failing = False  # the last write (or open) of the store failed
        self._started = time.time()
        self.ready = threading.Event()  # set once the writer has tried to open the store
        self.extra_stats = None  # callable -> dict of the proxy's own counters, merged into stats()
        self._thread = threading.Thread(target=self._run, name="tap-recorder", daemon=True)
        self._thread.start()

    # --- hot path ------------------------------------------------------------------------------
    def submit(self, kind: str, *payload, size: int = 0) -> bool:
        """Queue one event; returns False (and counts a drop) when the queue is full. Never blocks."""
        with self._cond:
            if (self._closing or len(self._queue) >= self.max_queue
                    or (self._queue and self._queued_bytes + size > self.max_queue_bytes)):
                self._counts["dropped_queue_full"] += 1
                drop = True
            else:
                self._queue.append((kind, payload, size))
                self._queued_bytes += size
                self._cond.notify()
                drop = False
        if drop:
            self._note_failure("recording queue full: event dropped (the writer cannot keep up)")
        return not drop

    # --- control -------------------------------------------------------------------------------
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far has been handled; True if it was in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._counts["events_seen"] + len(self._queue)
            while self._counts["events_done"] < target:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue (up to ``timeout``), flush open streams, write the stats, stop."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)
        if self._store is not None:
            self._store.close()

    def stats(self) -> dict:
        with self._cond:
            counts = dict(self._counts)
            depth, qbytes = len(self._queue), self._queued_bytes
        counts.pop("events_seen", None)
        counts.pop("events_done", None)
        out = {"store": str(self.store_dir), "uptime_s": round(time.time() - self._started, 1),
               "queue_depth": depth, "queue_bytes": qbytes,
               "recorded": counts.get("recorded", 0), "heads_recorded": counts.get("heads_recorded", 0),
               "dropped_queue_full": counts.get("dropped_queue_full", 0),
               "record_failures": counts.get("record_failures", 0),
               "malformed": counts.get("malformed", 0), "last_error": self._last_error,
               "store_failing": self._store_failing}
        if self.extra_stats is not None:
            for _ in range(5):  # the counters may change size while another thread copies them
                try:
                    out.update(self.extra_stats())
                    break
                except RuntimeError:
                    continue
        return out

    # --- writer thread -------------------------------------------------------------------------
    def _run(self) -> None:
        last_stats = 0.0
        if self.idle_priority:
            run_at_idle_priority()
        self._open()  # early, so that a bad --store is reported at start-up
        self.ready.set()
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(self.stats_interval)
                    if time.monotonic() - last_stats >= self.stats_interval:
                        break
                end = time.monotonic() + self.linger  # gather a batch: one transaction, fewer wake-ups
                while self._queue and not self._closing and len(self._queue) < self.batch:
                    left = end - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                events = [self._queue.popleft() for _ in range(min(self.batch, len(self._queue)))]
                for _, _, size in events:
                    self._queued_bytes -= size
                self._counts["events_seen"] += len(events)
                closing = self._closing and not self._queue
            try:
                self._handle(events, final=closing)
            except Exception as exc:  # a bug in parsing must not kill the writer
                log.exception("recorder error")
                self._fail(len(events), f"recorder error: {exc}")
            if not events and not closing and self._store_failing:
                self._probe()
            with self._cond:
                self._counts["events_done"] += len(events)
                self._cond.notify_all()
            if closing or time.monotonic() - last_stats >= self.stats_interval:
                self._write_stats()
                last_stats = time.monotonic()
            if closing:
                return

    def _open(self) -> CaptureStore | None:
        if self._store is None and time.monotonic() >= self._next_open:
            try:
                self._store = CaptureStore(self.store_dir, *self.retention, busy_timeout=self.busy_timeout)
            except Exception as exc:
                self._next_open = time.monotonic() + 1.0
                self._store_failing = True
                self._note_failure(f"cannot open capture store {self.store_dir}: {exc}")
        return self._store

    def _probe(self) -> None:
        """While the store fails and no traffic comes: is it writable again? (Nothing is counted as
        a failed record: nothing was lost.)"""
        store = self._open()
        if store is None:
            return
        try:
            store.check_writable()
        except Exception as exc:
            self._last_error = f"capture store still fails: {exc}"
            return
        self._store_failing = False

    def _handle(self, events: list, final: bool) -> None:
        rows: list[dict] = []
        heads, deployments = [], []
        for kind, payload, _ in events:
            if kind == "infer":
                rows.append(self._infer_row(*payload))
            elif kind == "stream_request":
                rows.extend(self._stream_request(*payload))
            elif kind == "stream_reply":
                rows.extend(self._stream_reply(*payload))
            elif kind == "stream_end":
                rows.extend(self._stream_end(*payload))
            elif kind == "head":
                heads.append(payload)
            elif kind == "deployments":
                deployments.append(payload)
        if final:
            for sid in list(self._streams):
                rows.extend(self._stream_end(sid, time.time(), 0, "tap stopped before the stream ended"))
        if not (rows or heads or deployments):
            return
        store = self._open()
        if store is None:
            self._fail(len(rows) + len(heads), self._last_error)
            return
        if rows:
            try:
                store.add_captures(rows)
                self._counts["recorded"] += len(rows)
                self._store_failing = False
            except Exception as exc:
                self._fail(len(rows), f"writing {len(rows)} capture(s) failed: {exc}", store=True)
        for peer, when, reply in heads:
            try:
                head = pb.HeadReply.FromString(reply)
            except Exception as exc:
                self._fail(1, f"recording a GetHead payload failed: {exc}")
                continue
            try:
                if head.onnx_model:
                    store.add_head(_head_fields(head), head.onnx_model, when, peer)
                    self._counts["heads_recorded"] += 1
                else:  # not_modified: the edge had it cached, no bytes on the wire this time
                    store.touch_head(head.deployment_id, head.sha256, when)
                self._store_failing = False
            except Exception as exc:
                self._fail(1, f"recording a GetHead payload failed: {exc}", store=True)
        for when, reply in deployments:
            try:
                msg = pb.ListDeploymentsReply.FromString(reply)
            except Exception as exc:
                self._fail(0, f"recording a ListDeployments reply failed: {exc}")
                continue
            try:
                store.add_deployment_info([_deployment_fields(d) for d in msg.deployments], when)
                self._store_failing = False
            except Exception as exc:
                self._fail(0, f"recording a ListDeployments reply failed: {exc}", store=True)

    # --- parsing -------------------------------------------------------------------------------
    def _request_row(self, method: str, peer: str, when: float, request, md_request_id: str) -> dict:
        row = {"method": method, "peer": peer, "time": when, "request_id": md_request_id}
        try:
            msg = wire.parse_infer_request(request)  # zero-copy: the features stay a view of the message
        except Exception as exc:
            self._counts["malformed"] += 1
            row["error"] = f"unparseable InferRequest: {exc}"
            return row
        row["request_id"] = msg.request_id or md_request_id
        row["deployment_id"] = msg.deployment_id
        if not msg.HasField("features"):
            self._counts["malformed"] += 1
            row["error"] = "request without features"
            return row
        row["wire_dtype"] = wire.dtype_name(msg.features.dtype)
        row["shape"] = list(msg.features.shape)
        try:  # stored as on the wire (float16 stays float16); decoded to float32 when read
            row["features"], _, row["scale"] = wire.decode_raw(msg.features, allow_nonfinite=True)
        except wire.WireError as exc:
            self._counts["malformed"] += 1
            row["error"] = f"malformed features: {exc}"
        return row

    @staticmethod
    def _apply_reply(row: dict, reply: pb.InferReply) -> None:
        try:
            row["logits"] = wire.decode(reply.logits, allow_nonfinite=True)
        except wire.WireError:
            pass
        row["top1"] = list(reply.top1)

    def _infer_row(self, peer, start, end, request, reply, status, details, md_request_id) -> dict:
        row = self._request_row("Infer", peer, start, request, md_request_id)
        row["latency"] = end - start
        row["status"] = status
        if status:
            row["error"] = details
        elif reply is not None:
            try:
                self._apply_reply(row, pb.InferReply.FromString(reply))
            except Exception as exc:
                row["error"] = f"unparseable InferReply: {exc}"
        return row

    def _stream_request(self, sid, peer, when, request, md_request_id) -> list[dict]:
        state = self._streams.setdefault(sid, {"pending": collections.OrderedDict(), "n": 0})
        row = self._request_row("InferStream", peer, when, request, "")
        row["stream_id"] = sid
        state["n"] += 1
        key = row["request_id"] or f"#{state['n']}"
        out = []
        if key in state["pending"] or len(state["pending"]) >= 1024:  # duplicate id or no replies coming
            out.append(state["pending"].pop(key, None) or state["pending"].popitem(last=False)[1])
        state["pending"][key] = row
        return out

    def _stream_reply(self, sid, when, reply) -> list[dict]:
        state = self._streams.get(sid)
        if state is None:
            return []
        try:
            msg = pb.StreamReply.FromString(reply)
        except Exception:
            self._counts["malformed"] += 1
            return []
        row = state["pending"].pop(msg.request_id, None)
        if row is None:
            return []
        row["latency"] = when - row["time"]
        if msg.error_code:
            row["status"], row["error"] = msg.error_code, msg.error_message
        else:
            self._apply_reply(row, msg.reply)
        return [row]

    def _stream_end(self, sid, when, status, details) -> list[dict]:
        state = self._streams.pop(sid, None)
        if state is None:
            return []
        rows = list(state["pending"].values())
        for row in rows:  # requests that never got a reply
            row["status"] = status or row.get("status", 0) or 2  # UNKNOWN when the stream ended fine
            row["error"] = details or "no reply on the stream"
        return rows

    # --- failures and stats --------------------------------------------------------------------
    def fail(self, n: int, message: str) -> None:
        """Count ``n`` recording failures found elsewhere (the passive tap's parser) and log them."""
        with self._cond:
            self._counts["record_failures"] += n
        self._note_failure(message)

    def _fail(self, n: int, message: str, store: bool = False) -> None:
        """Count ``n`` failed records; ``store``: the store's write failed (not the message)."""
        self._counts["record_failures"] += n
        if store:
            self._store_failing = True
        self._note_failure(message)

    def _note_failure(self, message: str) -> None:
        self._last_error = message
        now = time.monotonic()
        if now - self._last_log >= 5.0:
            self._last_log = now
            log.warning("%s (traffic is unaffected; failures so far: %d, drops: %d)", message,
                        self._counts["record_failures"], self._counts["dropped_queue_full"])

    def _write_stats(self) -> None:
        try:
            self.stats_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.stats_file.with_name(self.stats_file.name + ".tmp")
            tmp.write_text(json.dumps(self.stats(), indent=1, sort_keys=True))
            os.replace(tmp, self.stats_file)
        except OSError:
            pass  # the store folder itself may be what is failing; stats() still has the counts


def _head_fields(head: pb.HeadReply) -> dict:
    return {"deployment_id": head.deployment_id, "sha256": head.sha256, "arch": head.arch, "split": head.split,
            "input_shape": list(head.input_shape), "feature_shape": list(head.feature_shape),
            "num_classes": head.num_classes, "preprocessing": head.preprocessing,
            "dataset": head.dataset}


def _deployment_fields(d: pb.DeploymentInfo) -> dict:
    return {"deployment_id": d.deployment_id, "model_id": d.model_id, "arch": d.arch, "split": d.split,
            "input_shape": list(d.input_shape), "feature_shape": list(d.feature_shape),
            "num_classes": d.num_classes, "dataset": d.dataset}

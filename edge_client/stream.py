"""Many requests in flight on ``InferStream`` calls, each answered once or failed within its deadline.

Why this is more than a wrapper around one gRPC call: with the cloud killed (SIGKILL) mid-run and
started again 1.5 s later, ``edge-client run --stream`` used to hang for good while the same run
with unary calls recovered: the reply reader waited in the call's iterator forever (3 of 8 tries on
this machine; where the progress showed, the cloud was killed before its first reply, while it
was still loading the tail). The stream had no per-request deadline (only the call's, an hour), and gRPC's retry policy,
meant for unary calls, covered the stream too; with the policy off for the stream the same
experiment ended every time (5 of 5). So:

- the stream method has no retry policy (``client.service_config``) and waits for the connection
  (``waitForReady``) instead of failing at once while the cloud restarts;
- every request has a deadline (the client's ``timeout``, 30 s by default); a watchdog thread fails
  a request that is not answered by then with ``DEADLINE_EXCEEDED``, and if the call has delivered
  no reply at all since that request was sent, the call is presumed dead and cancelled;
- when a call breaks (the cloud went away), the requests pending on it are sent again on a new
  call if the status was UNAVAILABLE, as unary calls are retried: up to 5 tries, and while calls
  break without a single reply the next one waits 0.1 s, doubling to 2 s (new requests wait too).
  The old call's reader has finished, so no reply can come from it any more: a reply is never
  delivered twice, though the cloud (and a tap) may have seen the request twice. Other statuses,
  or no tries or time left, fail the request with the call's status and a message that says the
  stream broke;
- the channel reconnects within 0.1-2 s (``client.channel_options``): with gRPC's default backoff
  (up to 120 s) an edge behind a relay tap whose cloud was restarting missed its deadlines;
- the next ``submit`` opens a new call: a long run goes on once the cloud is back;
- a request that expires on a call that has delivered no reply asks once per call why (a health
  check that does not wait for the connection, :meth:`CloudClient.unreachable`): waiting for the
  connection hides a TLS misconfiguration or a cloud that is down, which its message then names
  (with the ``SPLITLAB_TLS_*`` hint of :mod:`protos.tls`).

Measured (cloud SIGKILLed 1 s into a stream of 2,154 batch-1 requests, back 1.5 s later): direct
and through the passive tap, every request answered; through the proxy tap (which answers
UNAVAILABLE itself while its cloud is down) 4 failed once their tries were used up (1,396 when
broken calls were reopened at once and nothing was sent again).

A request's future is settled by whoever removes it from its call's pending table under the lock
(the reply reader, the watchdog, or the break handler), so it is settled exactly once. ``stats``
counts calls opened and broken, requests expired and sent again, and replies that came after their
request had expired (dropped, not delivered).
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import grpc
import numpy as np

from protos import split_inference_pb2 as pb

from .client import RETRY_POLICY, CloudClient, CloudError, _result, request_bytes, status_code

_END = object()
ATTEMPTS = RETRY_POLICY["maxAttempts"]  # as for unary calls: 5 tries, backoff 0.1 s doubling to 2 s
BACKOFF = (0.1, 2.0)


@dataclass
class _Pending:
    future: Future
    data: bytes          # kept until answered, to send again on a new call (as gRPC's retry buffer does)
    sent: float          # time.monotonic() when queued
    deadline: float
    attempts: int = 1


@dataclass(eq=False)
class _Call:
    """One ``InferStream`` gRPC call: its request queue, its pending requests and its reply reader."""

    number: int
    requests: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    pending: dict[str, _Pending] = field(default_factory=dict)
    last_reply: float = field(default_factory=time.monotonic)
    replies: int = 0
    broken: bool = False
    cancelled_because: str = ""   # set when the watchdog gave up on the call
    unreachable: str | None = None  # why the cloud could not be reached, asked once when a request expired unanswered
    grpc_call: object = None
    reader: threading.Thread | None = None


class InferStream:
    """Requests in flight on a bidirectional stream; replies are matched by request id.

    ``submit`` returns a future per request that yields an ``InferResult`` or raises ``CloudError``
    (a per-request error such as ``INVALID_ARGUMENT``, ``DEADLINE_EXCEEDED`` past the request's
    deadline, or the broken stream's status); see the module docstring.
    """

    def __init__(self, client: CloudClient, timeout: float, stream_id: str, request_timeout: float | None = None):
        self.stream_id = stream_id
        self._client = client
        self._call_timeout = timeout
        self._request_timeout = request_timeout or client.timeout
        self._lock = threading.Condition()
        self._call: _Call | None = None
        self._numbers = itertools.count(1)
        self._deadlines: list[tuple[float, int, str, _Call]] = []  # heap
        self._seq = itertools.count()
        self._closed = False
        self._backoff = 0.0      # wait before the next call after calls that broke without a reply
        self._not_before = 0.0   # time.monotonic() before which no new call is opened
        self._retrying = 0       # requests between a broken call and the next one
        self._live: set[_Call] = set()  # calls whose reader has not finished
        self.stats = {"calls": 0, "broken": 0, "expired": 0, "late_replies": 0, "retried": 0}
        self._watchdog = threading.Thread(target=self._watch, name="infer-stream-deadlines", daemon=True)
        self._watchdog.start()
        with self._lock:
            self._open()

    # --- sending -------------------------------------------------------------------------------
    def submit(self, deployment_id: str, features: np.ndarray, wire: str = "float32",
               request_id: str | None = None, scale: float | None = None, timeout: float | None = None) -> Future:
        rid, data = request_bytes(deployment_id, features, wire, request_id, scale)
        return self._send(rid, data, timeout)

    def send_raw(self, request: pb.InferRequest, timeout: float | None = None) -> Future:
        """Send a prebuilt request as is (tests use it to send malformed ones)."""
        return self._send(request.request_id, request.SerializeToString(), timeout)

    def _send(self, rid: str, data: bytes, timeout: float | None) -> Future:
        fut: Future = Future()
        now = time.monotonic()
        entry = _Pending(fut, data, now, now + (timeout or self._request_timeout))
        time.sleep(max(0.0, min(self._not_before, entry.deadline) - now))  # backing off: the sender waits
        with self._lock:
            if self._closed:
                raise RuntimeError("stream is closed")
            call = self._place(rid, entry)
        call.requests.put(data)
        return fut

    def _place(self, rid: str, entry: _Pending) -> _Call:
        """Put ``entry`` on the current call, opening one if it broke (lock held); the caller sends."""
        call = self._call if self._call is not None and not self._call.broken else self._open()
        if rid in call.pending:
            raise ValueError(f"request id {rid!r} is already in flight on this stream")
        if not call.pending:  # "no reply since" counts from when something was asked: this request's
            call.last_reply = entry.sent  # sending, so that a lone request unanswered marks the call dead
        call.pending[rid] = entry
        heapq.heappush(self._deadlines, (entry.deadline, next(self._seq), rid, call))
        if self._deadlines[0][2] is rid:  # the earliest deadline now: wake the watchdog
            self._lock.notify_all()
        return call

    def _open(self) -> _Call:
        """A new gRPC call (lock held); it waits for the connection (``waitForReady``)."""
        call = _Call(next(self._numbers))
        call.grpc_call = self._client._infer_stream(iter(call.requests.get, _END), timeout=self._call_timeout,
                                                    metadata=(("x-request-id", self.stream_id),))
        call.reader = threading.Thread(target=self._read, args=(call,), name=f"infer-stream-{call.number}",
                                       daemon=True)
        call.reader.start()
        self._live.add(call)
        self._call = call
        self.stats["calls"] += 1
        return call

    # --- receiving -----------------------------------------------------------------------------
    def _read(self, call: _Call) -> None:
        try:
            for item in call.grpc_call:
                with self._lock:
                    call.last_reply = time.monotonic()
                    call.replies += 1
                    entry = call.pending.pop(item.request_id, None)
                    if entry is None:
                        self.stats["late_replies"] += 1
                    elif self._closed and not call.pending:
                        self._lock.notify_all()  # close() waits for this
                if entry is None:
                    continue
                if item.error_code:
                    entry.future.set_exception(CloudError(status_code(item.error_code), item.error_message,
                                                          item.request_id))
                    continue
                try:
                    entry.future.set_result(_result(item.reply, len(entry.data)))
                except Exception as exc:  # noqa: BLE001 - e.g. a reply that does not decode
                    entry.future.set_exception(exc)
            code, why, broke = grpc.StatusCode.CANCELLED, "the stream ended", False
        except grpc.RpcError as exc:
            details = exc.details() or exc.code().name
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                details += self._client.tls.hint(details)
            code, why, broke = exc.code(), f"the stream to {self._client.address} broke ({details})", True
            if call.cancelled_because:
                code, why = grpc.StatusCode.DEADLINE_EXCEEDED, call.cancelled_because
        self._break(call, code, why, broke)

    def _break(self, call: _Call, code: grpc.StatusCode, why: str, broke: bool) -> None:
        """``call`` is over (its reader is done, so no reply can come from it any more): send what it
        left unanswered again on a new call if it broke with UNAVAILABLE (up to ``ATTEMPTS`` tries,
        backing off while calls break without a single reply), fail the rest."""
        now = time.monotonic()
        with self._lock:
            call.broken = True
            self.stats["broken"] += broke
            pending, call.pending = call.pending, {}
            if broke and not call.replies:
                self._backoff = min(BACKOFF[1], max(BACKOFF[0], 2 * self._backoff))
            else:
                self._backoff = 0.0
            self._not_before = now + self._backoff
            self._live.discard(call)
            retry = {} if not broke or code != grpc.StatusCode.UNAVAILABLE else {
                rid: e for rid, e in pending.items() if e.attempts < ATTEMPTS and e.deadline > self._not_before}
            self._retrying += len(retry)
            self._lock.notify_all()
        call.requests.put(_END)  # ends gRPC's request-consuming thread
        for rid, entry in pending.items():
            if rid not in retry:
                entry.future.set_exception(CloudError(code, f"{why} before this request was answered", rid))
        if retry:
            self._retry(retry, why)

    def _retry(self, entries: dict[str, _Pending], why: str) -> None:
        time.sleep(max(0.0, self._not_before - time.monotonic()))
        failed, sends = [], []
        with self._lock:
            self._retrying -= len(entries)
            for rid, entry in entries.items():
                entry.attempts += 1
                try:
                    sends.append((self._place(rid, entry), entry.data))
                    self.stats["retried"] += 1
                except ValueError as exc:  # its id was reused meanwhile
                    failed.append((rid, entry, str(exc)))
            self._lock.notify_all()
        for call, data in sends:
            call.requests.put(data)
        for rid, entry, reason in failed:
            entry.future.set_exception(CloudError(grpc.StatusCode.UNAVAILABLE, f"{why}; not sent again: {reason}",
                                                  rid))

    # --- deadlines -----------------------------------------------------------------------------
    def _watch(self) -> None:
        while True:
            expired: list[tuple[str, _Pending, _Call]] = []
            stuck: list[_Call] = []
            with self._lock:
                if self._closed and not self._deadlines:
                    return
                now = time.monotonic()
                while self._deadlines and self._deadlines[0][0] <= now:
                    _, _, rid, call = heapq.heappop(self._deadlines)
                    entry = call.pending.get(rid)
                    if entry is None or entry.deadline > now:
                        continue  # answered (or the id was reused by a later request)
                    del call.pending[rid]
                    self.stats["expired"] += 1
                    expired.append((rid, entry, call))
                    if call.last_reply <= entry.sent and not call.broken:
                        call.cancelled_because = (f"the stream to {self._client.address} was given up: no reply "
                                                  f"for {now - call.last_reply:.3g} s")
                        call.broken = True  # the next submit opens a new call
                        stuck.append(call)
                if expired:
                    self._lock.notify_all()  # close() may wait for this
                if not expired:
                    wait = self._deadlines[0][0] - now if self._deadlines else None
                    self._lock.wait(wait)
                    continue
            for _, _, call in expired:
                if not call.replies and call.unreachable is None:
                    call.unreachable = self._client.unreachable()  # e.g. TLS misconfigured: the stream only waits
            for call in stuck:  # nothing came back since these were sent: presume the call dead
                if call.unreachable:
                    call.cancelled_because += f" ({call.unreachable})"
                call.grpc_call.cancel()
            for rid, entry, call in expired:
                waited = entry.deadline - entry.sent
                why = f" ({call.unreachable})" if call.unreachable else ""
                entry.future.set_exception(CloudError(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"no reply within {waited:g} s on the stream to {self._client.address}{why}", rid))

    # --- lifecycle -----------------------------------------------------------------------------
    def close(self, wait: bool = True) -> None:
        """No more requests; with ``wait``, wait until every request is answered or failed (each
        within its deadline; a request sent again after a break included) and the calls have ended."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._lock.notify_all()
        if not wait:
            self._half_close()
            return
        with self._lock:
            self._lock.wait_for(lambda: not self._retrying and not any(c.pending for c in self._live))
        for call in self._half_close():
            if call.unreachable:  # never connected: no cloud will end it
                call.grpc_call.cancel()
            call.reader.join(5.0)
            if call.reader.is_alive():  # answered everything but never ended the call
                call.grpc_call.cancel()
                call.reader.join(5.0)

    def _half_close(self) -> list[_Call]:
        """End the request side of every live call: the cloud ends each once it has answered."""
        with self._lock:
            calls = list(self._live)
            for call in calls:
                call.broken = True  # a request sent again after this goes on a new call
        for call in calls:
            call.requests.put(_END)
        return calls

    def cancel(self) -> None:
        if self._call is not None:
            self._call.grpc_call.cancel()
        self.close(wait=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

"""A bounded pool of worker threads that runs queued experiments in submission order.

Each worker claims the oldest waiting experiment from the store (a transaction, so two workers or
two processes never take the same one), runs it through ``run_experiment(record, context)`` and
stores the outcome: ``done`` with the results, ``failed`` with the error (the worker, and the
service, carry on), or ``cancelled``. Cancellation is cooperative: the runner calls
:meth:`RunContext.check` between steps, which raises :class:`Cancelled` once ``DELETE`` has asked
for it. Workers wake up when an experiment is submitted and otherwise poll the store every second.
"""

from __future__ import annotations

import logging
import threading
import traceback
from typing import Callable

from .store import ExperimentStore

log = logging.getLogger("attacker.lab")


class Cancelled(Exception):
    """Raised inside a running experiment when a cancel was requested."""


class ShuttingDown(Exception):
    """Raised inside a running experiment when the service stops; it is re-run at the next start."""


class RunContext:
    """What a running experiment may do: report progress, check for cancellation, find its folder."""

    def __init__(self, store: ExperimentStore, record: dict, stop: threading.Event):
        self.store = store
        self.id = record["id"]
        self.record = record
        self.image_dir = store.image_dir(self.id)
        self._stop = stop

    def check(self) -> None:
        if self._stop.is_set():
            raise ShuttingDown()
        if self.store.cancel_requested(self.id):
            raise Cancelled()

    def progress(self, step: str, fraction: float, partial: dict | None = None) -> None:
        self.check()
        self.store.progress(self.id, step, fraction, partial)


Runner = Callable[[dict, RunContext], dict]


class WorkerPool:
    def __init__(self, store: ExperimentStore, run_experiment: Runner, workers: int = 1, poll_s: float = 1.0):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.store = store
        self.run_experiment = run_experiment
        self.workers = workers
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._wake = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.running: dict[str, str] = {}  # experiment id -> thread name

    def start(self) -> None:
        for i in range(self.workers):
            t = threading.Thread(target=self._loop, name=f"lab-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    def notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.notify()
        for t in self._threads:
            t.join(timeout)

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                record = self.store.claim_next()
            except Exception:  # a locked or damaged database must not kill the worker
                log.exception("could not claim the next experiment")
                record = None
            if record is None:
                with self._wake:
                    self._wake.wait(self.poll_s)
                continue
            self._run(record)

    def _run(self, record: dict) -> None:
        exp_id = record["id"]
        self.running[exp_id] = threading.current_thread().name
        ctx = RunContext(self.store, record, self._stop)
        log.info("experiment %s: running (restarts %d)", exp_id, record["restarts"])
        try:
            ctx.check()
            results = self.run_experiment(record, ctx)
        except Cancelled:
            self.store.finish(exp_id, "cancelled")
            log.info("experiment %s: cancelled", exp_id)
        except ShuttingDown:
            log.info("experiment %s: interrupted by shutdown; it runs again at the next start", exp_id)
        except BaseException as exc:  # noqa: BLE001 - anything an experiment raises fails only it
            message = f"{type(exc).__name__}: {exc}"
            log.error("experiment %s failed: %s\n%s", exp_id, message, traceback.format_exc())
            try:
                self.store.finish(exp_id, "failed", error=message)
            except Exception:
                log.exception("could not record the failure of %s", exp_id)
            if not isinstance(exc, Exception):  # KeyboardInterrupt / SystemExit: let them through
                raise
        else:
            if not self.store.finish(exp_id, "done", results=results):
                log.warning("experiment %s finished but was no longer running", exp_id)
            else:
                log.info("experiment %s: done", exp_id)
        finally:
            self.running.pop(exp_id, None)

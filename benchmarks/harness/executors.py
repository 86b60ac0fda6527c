"""Executors: where trials run. ``local`` (processes on this machine) and ``ray`` (a Ray cluster).

Both hand each worker the same two plain values, a trial and a :class:`~.spec.Context`, and get
back the same outcome dict from :func:`run_trial`; a suite's results therefore do not depend on the
executor (the tests run one suite on both and compare the metrics).

Threads: every worker runs torch and ONNX Runtime with ``Context.threads`` threads (1 by default)
and the local executor starts at most ``cores // threads`` workers, so a sweep never asks for more
threads than the machine has (two processes each spinning two threads on two cores run 10-20x
slower). Workers are *spawned*, not forked: a fresh interpreter whose thread settings
(``OMP_NUM_THREADS``, ``SPLITLAB_THREADS``) are in place before torch loads. Ray tasks ask Ray for
``threads`` CPUs each (and one GPU when the trial's device is ``cuda``), so Ray's scheduler keeps
the same bound on every node.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import socket
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from typing import Iterator

from models.errors import SplitlabError

from .spec import Context, Trial

EXECUTORS = ("local", "ray")
VERSIONED = ("splitlab", "torch", "numpy", "onnxruntime", "scikit-learn", "scipy", "ray")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SPLITLAB_THREADS")


def machine_cores() -> int:
    """The cores this process may run on (its affinity, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _plain(value):
    """``value`` with numpy scalars and arrays turned into JSON's types (metrics go to SQLite as JSON)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalar or array, torch tensor
        return value.tolist()
    return value


def run_trial(trial: dict, ctx: dict) -> dict:
    """Run one trial in this process and return its outcome; the function every executor calls.

    Never raises for a failing trial: the error goes into the outcome, so one bad trial does not
    stop a sweep. Metrics whose name ends in ``_seconds`` are timings (they differ between runs);
    every other metric is a pure function of the trial and the artifact store.
    """
    context = Context(**ctx)
    for name in THREAD_VARIABLES:  # effective when torch is not loaded yet (a fresh worker)
        os.environ[name] = str(context.threads)
    from models.onnx_runtime import set_torch_threads  # noqa: loads torch

    set_torch_threads(context.threads)  # a reused worker (Ray's) has torch loaded already
    from benchmarks.suites import load_suite

    spec = Trial.from_dict(trial)
    outcome = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": socket.gethostname(),
               "versions": versions()}
    t0 = time.perf_counter()
    try:
        metrics = load_suite(spec.suite).run_trial(spec, context)
        outcome.update(status="ok", metrics=_plain(metrics), error=None)
    except Exception as exc:  # noqa: BLE001 - recorded, and the sweep goes on
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        outcome.update(status="failed", metrics={}, error=f"{type(exc).__name__}: {exc}\n{tail}")
    outcome["seconds"] = time.perf_counter() - t0
    return outcome


def versions() -> dict:
    """What a trial ran with: Python, the platform and the installed versions of the packages that
    decide its numbers (read from the installed metadata: importing them would cost a worker
    seconds)."""
    from importlib import metadata

    found = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in VERSIONED:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return found


def failed(message: str) -> dict:
    """The outcome of a trial whose worker died before it could answer."""
    return {"status": "failed", "metrics": {}, "error": message, "seconds": None}


class LocalExecutor:
    """A pool of spawned processes on this machine: ``min(workers, cores // threads, trials)``."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int = 1):
        cores = machine_cores()
        self.threads = max(1, threads)
        self.workers = max(1, min(workers or cores, cores // self.threads))

    def describe(self) -> str:
        return f"local processes, {self.workers} worker(s) x {self.threads} thread(s)"

    def run(self, trials: list[Trial], ctx: Context) -> Iterator[tuple[Trial, dict]]:
        if not trials:
            return
        pool = ProcessPoolExecutor(max_workers=min(self.workers, len(trials)),
                                   mp_context=multiprocessing.get_context("spawn"))
        try:
            futures = {pool.submit(run_trial, t.to_dict(), asdict(ctx)): t for t in trials}
            for future in as_completed(futures):
                try:
                    outcome = future.result()
                except Exception as exc:  # noqa: BLE001 - a worker killed (out of memory, a signal)
                    outcome = failed(f"worker process died: {type(exc).__name__}: {exc}")
                yield futures[future], outcome
        finally:  # interrupted (Ctrl-C): trials not started yet are dropped, not run
            pool.shutdown(wait=True, cancel_futures=True)


# Ray waits a fixed 30 s for a new local raylet to register (not configurable). The same start takes
# 5-9 s on this 2-core machine, but in one CI run the wait ran out; a local start that times out is
# therefore stopped and made once more before the run fails.
LOCAL_START_ATTEMPTS = 2


class RayExecutor:
    """Each trial a Ray task asking for ``threads`` CPUs (and a GPU for ``cuda`` trials).

    ``address`` joins a running cluster (``ray start --head`` on one node, ``ray start --address``
    on the others; every node needs this project installed and the artifact store at the same
    path, e.g. a shared file system). Without it a local Ray instance is started with
    ``workers * threads`` CPUs (the machine's cores by default) and shut down afterwards.
    """

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1):
        self.address = address or os.environ.get("RAY_ADDRESS") or None  # Ray's own variable counts too
        self.threads = max(1, threads)
        self.workers = max(1, min(workers or machine_cores(), machine_cores() // self.threads))

    def describe(self) -> str:
        if self.address:
            return f"the Ray cluster at {self.address}, {self.threads} thread(s) per trial"
        return f"a local Ray instance, {self.workers} worker(s) x {self.threads} thread(s)"

    def _init(self, ray) -> bool:
        if ray.is_initialized():
            return False
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports leave the machine
        common = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                      configure_logging=True)
        if self.address:
            ray.init(address=self.address, **common)
            return True
        for attempt in range(1, LOCAL_START_ATTEMPTS + 1):
            try:
                ray.init(num_cpus=self.workers * self.threads, **common)
                return True
            except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for this
                if "timed out during startup" not in str(exc) or attempt == LOCAL_START_ATTEMPTS:
                    raise
                ray.shutdown()  # stops whatever half-started, so the next try begins clean
                print(f"Ray: the local instance did not start within Ray's 30 s ({exc}); "
                      f"starting it again (try {attempt + 1} of {LOCAL_START_ATTEMPTS})", file=sys.stderr)
        return True  # not reached

    def run(self, trials: list[Trial], ctx: Context) -> Iterator[tuple[Trial, dict]]:
        if not trials:
            return
        try:
            import ray
        except ImportError:
            raise SplitlabError("--executor ray needs Ray: pip install 'splitlab[ray]'") from None
        started_here = self._init(ray)
        refs = {}
        try:
            task = ray.remote(run_trial)
            for t in trials:
                options = dict(num_cpus=self.threads, num_gpus=1 if t.device == "cuda" else 0, max_retries=0)
                refs[task.options(**options).remote(t.to_dict(), asdict(ctx))] = t
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for ref in done:
                    trial = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except Exception as exc:  # noqa: BLE001 - the worker or its node died
                        outcome = failed(f"Ray task failed: {type(exc).__name__}: {exc}")
                    yield trial, outcome
        finally:
            for ref in refs:  # interrupted: a cluster would otherwise run the rest for nobody
                ray.cancel(ref, force=True)
            if started_here:
                ray.shutdown()


def make_executor(name: str, address: str | None = None, workers: int | None = None, threads: int = 1):
    if name == "local":
        if address:
            raise SplitlabError("--address is for --executor ray (the local executor runs on this machine)")
        return LocalExecutor(workers, threads)
    if name == "ray":
        return RayExecutor(address, workers, threads)
    raise SplitlabError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")

"""The deployments the server knows: records and heads read from the artifact store, and tails
loaded lazily (as ONNX Runtime or torch runners, see ``tail_runtime``) into a bounded
least-recently-used cache.

With ONNX Runtime a tail is read from the deployment's ``tail.onnx`` (no torch); a deployment
without one (written before deploy exported tails) is exported from ``tail.pt`` when loaded,
which imports torch, and says so in the log.

Nothing is read at start-up: each request looks its deployment up on disk, so the store may be
empty or missing when the server starts, and a deployment written later (``python -m models
deploy``, the lab) is served on its first request without a restart. A deployment folder that
is replaced on disk (redeployed) is noticed through its ``deployment.json`` (inode and
modification time) and reloaded on the next request.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

import grpc

from models import ArtifactStore, SplitlabError

from .errors import RequestError
from .logs import log
from .placement import Placement
from .tail_runtime import RUNTIMES, TailRunner, make_runner, onnx_runner


logger = logging.getLogger("cloud_server")


@dataclass
class Deployment:
    record: dict
    stamp: tuple
    feature_shape: tuple = field(init=False)

    def __post_init__(self):
        self.feature_shape = tuple(int(s) for s in self.record["feature_shape"])

    @property
    def id(self) -> str:
        return self.record["deployment_id"]


class Registry:
    def __init__(self, store: ArtifactStore, cache_size: int = 8, runtime: str = "onnxruntime", threads: int = 1,
                 placement: Placement | None = None):
        if cache_size < 1:
            raise SplitlabError(f"the tail cache needs room for at least one tail, got {cache_size}")
        if runtime not in RUNTIMES:
            raise SplitlabError(f"unknown tail runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
        self.store = store
        self.cache_size = cache_size
        self.placement = placement or Placement(runtime, "cpu")
        self.runtime = self.placement.runtime
        self.threads = threads
        self._torch_ready = False
        self._records: dict[str, Deployment] = {}
        self._json_paths: dict[str, str] = {}
        self._tails: OrderedDict[str, tuple[tuple, TailRunner]] = OrderedDict()
        self._heads: dict[str, tuple[tuple, bytes, str]] = {}
        self._lock = threading.Lock()
        self._load_locks: dict[str, threading.Lock] = {}
        self.loads = 0  # tails loaded from disk so far (tests and logs look at it)

    # --- records -------------------------------------------------------------------------------
    def deployment(self, dep_id: str) -> Deployment:
        """The deployment record, or a ``RequestError`` (NOT_FOUND / INVALID_ARGUMENT)."""
        path = self._json_paths.get(dep_id)
        if path is None:
            if not dep_id:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "deployment_id is empty")
            try:
                path = str(self.store.deployment_dir(dep_id) / "deployment.json")
            except SplitlabError as exc:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
        try:
            st = os.stat(path)
        except OSError:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"no deployment {dep_id!r} on this server (store {self.deployments_root}; "
                               "see ListDeployments)") from None
        self._json_paths[dep_id] = path  # only ids that exist are remembered
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self._records.get(dep_id)
        if cached is not None and cached.stamp == stamp:
            return cached
        try:
            dep = Deployment(self.store.deployment(dep_id), stamp)
        except (SplitlabError, KeyError, TypeError, ValueError) as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"deployment {dep_id!r} is unreadable on the server: {exc}") from None
        self._records[dep_id] = dep
        return dep

    @property
    def deployments_root(self) -> str:
        """Where deployments are looked up (absolute), for messages: it may not exist yet."""
        return str((self.store.root / "deployments").absolute())

    def list(self) -> list[Deployment]:
        out = []
        for dep_id in self.store.list_deployments():
            try:
                out.append(self.deployment(dep_id))
            except RequestError:
                continue  # a broken or half-written folder is skipped, not fatal
        return out

    # --- heads and tails -----------------------------------------------------------------------
    def head(self, dep: Deployment) -> tuple[bytes, str]:
        """The head's ONNX bytes and their sha256 (cached in memory until redeployed)."""
        cached = self._heads.get(dep.id)
        if cached is not None and cached[0] == dep.stamp:
            return cached[1], cached[2]
        path = self.store.deployment_dir(dep.id) / "head.onnx"
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"deployment {dep.id!r} has no readable head.onnx: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        self._heads[dep.id] = (dep.stamp, data, digest)
        return data, digest

    def tail(self, dep: Deployment) -> TailRunner:
        """The deployment's tail runner (features -> logits), loading it on first use."""
        with self._lock:
            hit = self._tails.get(dep.id)
            if hit is not None and hit[0] == dep.stamp:
                self._tails.move_to_end(dep.id)
                return hit[1]
            load_lock = self._load_locks.setdefault(dep.id, threading.Lock())
        with load_lock:  # one load per deployment even when many requests arrive at once
            with self._lock:
                hit = self._tails.get(dep.id)
                if hit is not None and hit[0] == dep.stamp:
                    return hit[1]
            t0 = time.perf_counter()
            runner = self._load(dep)
            log(logger, logging.INFO, "tail loaded", deployment=dep.id, runtime=runner.runtime, device=runner.device,
                seconds=round(time.perf_counter() - t0, 3))
            with self._lock:
                self._tails[dep.id] = (dep.stamp, runner)
                self._tails.move_to_end(dep.id)
                while len(self._tails) > self.cache_size:
                    self._tails.popitem(last=False)
                self.loads += 1
            return runner

    def _load(self, dep: Deployment) -> TailRunner:
        """A runner from ``tail.onnx`` when ONNX Runtime runs tails and it is there, else from
        ``tail.pt`` (torch): run by torch, or exported to ONNX now."""
        p = self.placement
        if p.runtime == "onnxruntime":
            path = self.store.deployment_dir(dep.id) / "tail.onnx"
            try:
                return onnx_runner(path.read_bytes(), self.threads, p.providers)
            except FileNotFoundError:
                log(logger, logging.INFO, "no tail.onnx, exporting tail.pt to ONNX (needs torch)", deployment=dep.id,
                    hint="deployed before deploy wrote tail.onnx; redeploy (python -m models deploy --force) to "
                         "serve it without torch")
            except Exception as exc:  # noqa: BLE001 - unreadable or refused by ONNX Runtime: try tail.pt
                log(logger, logging.WARNING, "tail.onnx refused, exporting tail.pt to ONNX", deployment=dep.id,
                    error=str(exc))
        tail = self._torch_tail(dep)
        device = p.device if p.runtime == "torch" else "cpu"  # torch as ONNX Runtime's fallback: on the CPU
        return make_runner(tail, dep.feature_shape, p.runtime, self.threads, dep.id, device, p.providers)

    def _torch_tail(self, dep: Deployment):
        from models.loading import load_tail
        from models.onnx_runtime import set_torch_threads

        if not self._torch_ready:  # torch's thread count, once, when torch is first needed
            set_torch_threads(self.threads)
            self._torch_ready = True
        try:
            tail, _ = load_tail(self.store, dep.id)
        except (SplitlabError, KeyError, TypeError, ValueError) as exc:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"cannot load the tail of {dep.id!r}: {exc}") from None
        for param in tail.parameters():
            param.requires_grad_(False)
        return tail

    def cached_tails(self) -> list[str]:
        with self._lock:
            return list(self._tails)

"""An edge device: fetches each deployment's head, runs it on private inputs and sends the
features to the cloud. The CLI's ``run`` and ``serve`` and the REST endpoint are built on it."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np

from .client import CloudClient, InferResult
from .stream import InferStream
from .heads import Head, HeadCache
from .runtime import HeadOutput, HeadRunner, make_runner


def preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 images (N, H, W, C) -> float32 (N, C, H, W) in [0, 1] (as ``models.to_tensor``)."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)).astype(np.float32) / np.float32(255.0)


@dataclass
class EdgeDeployment:
    head: Head
    runner: HeadRunner

    @property
    def id(self) -> str:
        return self.head.deployment_id

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.head.meta["input_shape"])


class Edge:
    def __init__(self, client: CloudClient, cache: HeadCache | None = None, runtime: str = "onnxruntime",
                 device: str = "cpu", threads: int = 1, wire: str = "float32", use_cache: bool = True):
        self.client = client
        self.cache = cache or HeadCache()
        self.runtime, self.device, self.threads, self.wire = runtime, device, threads, wire
        self.use_cache = use_cache
        self._deployments: dict[str, EdgeDeployment] = {}
        self._lock = threading.Lock()

    def deployment(self, dep_id: str) -> EdgeDeployment:
        """The deployment's head, fetched (or taken from the disk cache) and loaded once."""
        with self._lock:
            dep = self._deployments.get(dep_id)
            if dep is None:
                head = self.cache.fetch(self.client, dep_id, self.use_cache)
                runner = make_runner(head.onnx, head.meta, self.runtime, self.device, self.threads, self.wire)
                dep = self._deployments[dep_id] = EdgeDeployment(head, runner)
            return dep

    def features(self, dep_id: str, x: np.ndarray) -> HeadOutput:
        """Run the head on float32 (N, C, H, W) inputs."""
        return self.deployment(dep_id).runner(x)

    def infer(self, dep_id: str, x: np.ndarray, request_id: str | None = None,
              timeout: float | None = None) -> InferResult:
        """Head on the edge, tail in the cloud: logits for float32 (N, C, H, W) inputs."""
        out = self.features(dep_id, x)
        return self.client.infer(dep_id, out.features, self.wire, request_id, timeout, out.scale)

    def infer_future(self, dep_id: str, x: np.ndarray, request_id: str | None = None,
                     stream: InferStream | None = None) -> Future:
        """Run the head now and send without waiting (on ``stream`` when given)."""
        out = self.features(dep_id, x)
        if stream is not None:
            return stream.submit(dep_id, out.features, self.wire, request_id, out.scale)
        return self.client.infer_future(dep_id, out.features, self.wire, request_id, scale=out.scale)

"""Helpers and fixtures for the serving tests: real cloud servers on free loopback ports, and
artifact stores with every split point of lenet5 and he-cifar-cnn deployed (untrained weights).

Import the fixtures you use into a test module (``from fixtures_grpc import every_split_store``).
The expensive builders are cached per test session, so several modules share one store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud_server.server import CloudServer, ServerConfig
from models import ArtifactStore, build_model, load_dataset, split_points, to_tensor
from models.deploy import deploy

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"lenet5": ("digits", (1, 28, 28)), "he-cifar-cnn": ("cifar10", (3, 32, 32))}
_CACHE: dict[str, object] = {}


@contextlib.contextmanager
def running_server(artifacts, **overrides):
    """An in-process cloud server on 127.0.0.1, a free port; stopped on exit."""
    config = ServerConfig(artifacts=str(artifacts), host="127.0.0.1", port=0, grace_seconds=1.0, **overrides)
    server = CloudServer(config).start()
    try:
        yield server
    finally:
        server.stop(grace=0.5)


def save_untrained(store: ArtifactStore, model_id: str, arch: str, seed: int = 0,
                   dataset: tuple[str, tuple[int, int, int]] | None = None) -> torch.nn.Module:
    """Store an untrained (seeded) model with the manifest fields deployment needs; ``dataset``:
    ``(name, input_shape)`` for an architecture that ``MODELS`` does not list."""
    dataset, input_shape = dataset or MODELS[arch]
    torch.manual_seed(seed)
    model = build_model(arch, 10, input_shape).eval()
    manifest = {"arch": arch, "dataset": dataset, "num_classes": 10, "input_shape": list(input_shape),
                "options": {"dropout": 0.0}, "seed": seed,
                "preprocessing": "uint8 HWC image -> float32 CHW, divided by 255 (range [0, 1])"}
    store.save_model(model_id, model.state_dict(), manifest)
    return model


def sample_images(arch: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` test images (uint8 NHWC) and labels of the dataset ``arch`` is tested on."""
    key = f"images-{arch}"
    if key not in _CACHE:
        ds = load_dataset(MODELS[arch][0])
        _CACHE[key] = (ds.x_test[:64].copy(), ds.y_test[:64].copy())
    x, y = _CACHE[key]
    return x[:n], y[:n]


@pytest.fixture(scope="session")
def every_split_store(tmp_path_factory):
    """(store, {arch: monolithic model}) with every split point of lenet5 and he-cifar-cnn deployed."""
    if "every_split" not in _CACHE:
        store = ArtifactStore(tmp_path_factory.mktemp("every-split"))
        models = {}
        for arch in MODELS:
            model = save_untrained(store, arch, arch)
            check = to_tensor(sample_images(arch, 4)[0])
            for split in split_points(arch):
                deploy(store, arch, split, check_inputs=check)
            models[arch] = model
        _CACHE["every_split"] = (store, models)
    return _CACHE["every_split"]


@pytest.fixture(scope="module")
def digits_server(lenet_digits):
    """A cloud server for the trained lenet5 (deployed at conv1 and relu2), max batch 64."""
    with running_server(lenet_digits.root, max_batch=64) as server:
        yield server


class LogCapture(logging.Handler):
    """Collects the cloud server's structured log records (event + fields)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[dict] = []

    def emit(self, record):
        self.records.append({"event": record.getMessage(), "level": record.levelname.lower(),
                             **getattr(record, "fields", {})})


@contextlib.contextmanager
def captured_logs():
    logger = logging.getLogger("cloud_server")
    handler = LogCapture()
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


class CloudProcess:
    """A real ``cloud-server`` process on a free port; its stderr (JSON logs) is collected in ``lines``."""

    def __init__(self, artifacts, *extra: str, timeout: float = 60.0):
        import json
        import threading

        env = dict(os.environ, SPLITLAB_THREADS="1", PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "cloud_server", "--host", "127.0.0.1", "--port", "0",
                                      "--artifacts", str(artifacts), *extra],
                                     stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
        self.lines: list[str] = []
        self.events: list[dict] = []
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.lines.append(line)
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                self.events.append(event)
                if event.get("event") == "serving":
                    self.address = "127.0.0.1:" + event["address"].rsplit(":", 1)[1]
                    ready.set()
            ready.set()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()
        if not ready.wait(timeout) or not hasattr(self, "address"):
            self.kill()
            raise RuntimeError("cloud-server did not start:\n" + "".join(self.lines))

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._drain.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

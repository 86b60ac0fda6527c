"""The lab on the live pipeline, in one process: a cloud server, a recording tap in front of it, the
edge's REST app (uvicorn, on a free loopback port) pointed at the tap, and the lab API (real runner
and worker pool) pointed at the edge, the tap's capture store and the cloud's artifact store.

The same wiring as ``attacker serve`` beside ``cloud-server`` and ``edge-client serve`` (which
``test_lab_e2e.py`` runs as processes), without the seconds each process takes to start: the
experiments' images travel edge -> tap -> cloud over loopback gRPC and HTTP all the same.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from fixtures_grpc import running_server

from attacker.lab.app import LabConfig, create_app
from attacker.lab.runner import ExperimentRunner, RunnerConfig
from attacker.lab.spec import Limits

TOKEN = "lab-pipeline-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FINAL = ("done", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_lab(root: Path, limits: Limits | None = None, artifacts: Path | None = None, max_message_mb: float = 256):
    """A ``TestClient`` of the lab, wired to the live pipeline; ``client.paths``: its folders. gRPC
    messages up to ``max_message_mb`` (face-mlp's head is 124 MB: over gRPC's default 64 MB)."""
    import uvicorn

    from attacker.tap import TapConfig, TapThread
    from edge_client.client import CloudClient
    from edge_client.edge import Edge
    from edge_client.heads import HeadCache
    from edge_client.rest import create_app as edge_app

    artifacts = artifacts or root / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    captures, limits = root / "captures", limits or Limits()
    with running_server(artifacts, max_message_mb=max_message_mb) as cloud:
        tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream=cloud.address, store=str(captures),
                                  max_message_bytes=int(max_message_mb * 2**20)))
        tap_port = tap.start()
        cloud_client = CloudClient(f"127.0.0.1:{tap_port}", max_message_mb=max_message_mb)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(edge_app(Edge(cloud_client, HeadCache(root / "edge-heads"))),
                                               host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while not server.started and time.monotonic() < deadline and thread.is_alive():
            time.sleep(0.05)
        edge = f"http://127.0.0.1:{port}"
        runner = ExperimentRunner(RunnerConfig(artifacts=artifacts, captures=captures, edge_url=edge, limits=limits,
                                               flush=lambda: tap.flush(10.0), capture_timeout=60.0))
        config = LabConfig(lab_dir=root / "lab", artifacts=artifacts, token=TOKEN, limits=limits, workers=1,
                           edge_url=edge)
        try:
            with TestClient(create_app(config, runner)) as client:
                client.paths = {"artifacts": artifacts, "captures": captures, "edge": edge}
                yield client
        finally:
            server.should_exit = True
            thread.join(15)
            cloud_client.close()
            tap.stop()


def submit(client, spec: dict):
    return client.post("/v1/experiments", json=spec, headers=AUTH)


def wait(client, exp_id: str, timeout: float = 900.0) -> dict:
    """The experiment once it is done, failed or cancelled (or as it is after ``timeout`` s)."""
    deadline = time.monotonic() + timeout
    while True:
        record = client.get(f"/v1/experiments/{exp_id}").json()
        if record["status"] in FINAL or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def finished(client, spec: dict) -> dict:
    """Submit ``spec`` (202) and wait until it is done; its record."""
    r = submit(client, spec)
    assert r.status_code == 202, r.json()
    record = wait(client, r.json()["id"])
    assert record["status"] == "done", record["error"]
    return record


def assert_refused(client, spec: dict, field: str) -> None:
    """``spec`` gets a 422 whose error names ``field`` (first, or after another field's error)."""
    r = client.post("/v1/experiments", json=spec, headers=AUTH)
    assert r.status_code == 422, r.json()
    message = r.json()["error"]
    assert message.startswith(field) or f"; {field}" in message, message


def experiment_fixtures(name: str, spec: dict, models: str | None = None):
    """The fixtures of a lab kind's test module, to assign at module level
    (``artifacts, lab, experiment, client = experiment_fixtures(...)``):

    * ``artifacts`` (module): the cloud's artifact store: a private copy of the session fixture
      ``models``' store (``conftest.private_copy``: what the module deploys stays its own), or empty;
    * ``lab`` (module): :func:`live_lab` on it;
    * ``experiment`` (module): ``spec`` run to done there (its record);
    * ``client``: a lab API without workers on the same artifacts and token, for the 422 tests
      (nothing runs).
    """
    from conftest import private_copy
    from test_lab_api import make_app

    @pytest.fixture(scope="module")
    def artifacts(request, tmp_path_factory) -> Path:
        if models is None:
            return tmp_path_factory.mktemp(f"{name}-artifacts")
        return Path(private_copy(request.getfixturevalue(models), tmp_path_factory).root)

    @pytest.fixture(scope="module")
    def lab(artifacts, tmp_path_factory):
        with live_lab(tmp_path_factory.mktemp(name), artifacts=artifacts) as client:
            yield client

    @pytest.fixture(scope="module")
    def experiment(lab):
        return finished(lab, spec)

    @pytest.fixture
    def client(artifacts, tmp_path):
        with TestClient(make_app(tmp_path, token=TOKEN, artifacts=artifacts)) as c:
            yield c

    return artifacts, lab, experiment, client

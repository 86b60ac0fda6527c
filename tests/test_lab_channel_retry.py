"""The lab's edge channel rides over a cloud or an edge that is down for a moment: a 503 from the edge,
or an edge that refuses the connection, is sent again (same request id) until it is back, within
``unavailable_wait``; one that stays down fails with how long it waited; any other error fails at once.

A real edge app (``edge_client.rest``) whose cloud is a real ``cloud-server`` process on a port that
nothing listens on when the first request arrives; the cloud starts on that port 2 s later. And a
real ``edge-client serve`` process, sent a request the moment it is started (before it listens).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from attacker.captures.store import CaptureStore
from attacker.lab.channel import EdgeChannel
from edge_client.client import CloudClient
from edge_client.edge import Edge
from edge_client.heads import HeadCache
from edge_client.rest import create_app
from fixtures_grpc import CloudProcess
from lab_pipeline import free_port
from models import SplitlabError

pytestmark = pytest.mark.e2e
DEP = "lenet5-bench--relu2"
IMAGE = np.random.default_rng(0).random((1, 28, 28), dtype=np.float32)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from benchmarks.tap_overhead import make_deployments

    root = tmp_path_factory.mktemp("retry-artifacts")
    make_deployments(root, {"lenet5"})
    return root


@pytest.fixture
def edge(tmp_path):
    """(channel factory, cloud port): an edge app whose cloud is not running yet."""
    port = free_port()
    client = CloudClient(f"127.0.0.1:{port}", timeout=5)
    app = create_app(Edge(client, HeadCache(tmp_path / "heads")))
    captures = CaptureStore(tmp_path / "captures")
    with TestClient(app, base_url="http://edge") as http:
        yield (lambda wait: EdgeChannel("http://edge", captures, unavailable_wait=wait, http=http)), port
    captures.close()
    client.close()


def test_a_request_waits_for_a_cloud_that_comes_back(artifacts, edge):
    make_channel, port = edge
    clouds: list[CloudProcess] = []
    starter = threading.Timer(2.0, lambda: clouds.append(CloudProcess(artifacts, "--runtime", "torch",
                                                                      "--port", str(port))))
    started = time.monotonic()
    starter.start()
    try:
        cls = make_channel(30.0)._infer(DEP, IMAGE, "retry-1")
        took = time.monotonic() - started
    finally:
        starter.join()
        for cloud in clouds:
            cloud.kill()
    assert 0 <= cls < 10
    assert took >= 2.0, f"answered after {took:.1f} s, before the cloud was started"


def test_a_cloud_that_stays_down_fails_with_the_time_waited(edge):
    make_channel, _ = edge
    started = time.monotonic()
    with pytest.raises(SplitlabError, match=r"answered 503 for request down-1 \([2-9]\d* tries over [\d.]+ s\)"):
        make_channel(4.0)._infer(DEP, IMAGE, "down-1")
    assert 3.0 < time.monotonic() - started < 15


def test_an_unusable_request_is_not_sent_again(artifacts, edge):
    make_channel, port = edge
    cloud = CloudProcess(artifacts, "--runtime", "torch", "--port", str(port))
    try:
        channel = make_channel(30.0)
        started = time.monotonic()
        with pytest.raises(SplitlabError, match=r"answered 404 for request missing-1: "):
            channel._infer("lenet5-bench--nosuch", IMAGE, "missing-1")
        assert time.monotonic() - started < 5
        assert 0 <= channel._infer(DEP, IMAGE, "ok-1") < 10
    finally:
        cloud.kill()


def test_a_request_waits_for_an_edge_that_is_starting(artifacts, tmp_path):
    cloud = CloudProcess(artifacts, "--runtime", "torch")
    port = free_port()
    env = dict(os.environ, SPLITLAB_THREADS="1")
    edge = subprocess.Popen([sys.executable, "-m", "edge_client", "serve", "--host", "127.0.0.1", "--port", str(port),
                             "--cloud", cloud.address, "--cache", str(tmp_path / "heads")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    captures = CaptureStore(tmp_path / "captures")
    try:
        channel = EdgeChannel(f"http://127.0.0.1:{port}", captures, unavailable_wait=60.0)
        assert 0 <= channel._infer(DEP, IMAGE, "starting-1") < 10
        channel.close()
    finally:
        edge.terminate()
        edge.wait(15)
        cloud.kill()
        captures.close()


def test_an_edge_that_stays_down_fails_with_the_time_waited(tmp_path):
    captures = CaptureStore(tmp_path / "captures")
    channel = EdgeChannel(f"http://127.0.0.1:{free_port()}", captures, unavailable_wait=2.0)
    started = time.monotonic()
    with pytest.raises(SplitlabError, match=r"the edge at http://127.0.0.1:\d+ cannot be reached \(ConnectError: .*\), "
                                            r"[2-9]\d* tries over [\d.]+ s, for request gone-1"):
        channel._infer(DEP, IMAGE, "gone-1")
    assert 1.5 < time.monotonic() - started < 10
    channel.close()
    captures.close()

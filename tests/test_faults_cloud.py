"""A cloud that dies, restarts or hangs mid-stream: every request is answered once or fails clearly
within its deadline, and the edge's run ends with totals that add up.

Real ``cloud-server`` processes on loopback (``fixtures_grpc.CloudProcess``), killed with SIGKILL
and started again on the same port, or stopped with SIGSTOP (a hung cloud: the connection stays up,
nothing answers). Each cloud logs every request id it answered: only a request sent again after a
break can have run on both clouds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import grpc
import numpy as np
import pytest

from edge_client.client import CloudClient, CloudError
from fixtures_grpc import ROOT, CloudProcess

pytestmark = pytest.mark.e2e
DEP = "lenet5-bench--relu2"
CLOUD = ("--runtime", "torch")  # no ONNX export of the tail at first use: a restarted cloud answers sooner


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    from benchmarks.tap_overhead import make_deployments

    root = tmp_path_factory.mktemp("fault-artifacts")
    make_deployments(root, {"lenet5"})
    return root


def feats(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((1, 16, 8, 8), dtype=np.float32)


def answered_ids(cloud: CloudProcess) -> list[str]:
    return [e["request_id"] for e in cloud.events if e.get("event") == "infer"]


def wait_for(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def restart_on_same_port(artifacts, cloud: CloudProcess, pause: float) -> CloudProcess:
    cloud.proc.send_signal(signal.SIGKILL)
    cloud.proc.wait(10)
    time.sleep(pause)
    return CloudProcess(artifacts, *CLOUD, "--port", cloud.address.rsplit(":", 1)[1])


def stream_through_a_restart(artifacts, first: CloudProcess, address: str, total: int, kill_at: int,
                             window: int = 4) -> tuple[dict, dict, CloudProcess | None]:
    """Stream ``total`` requests to ``address`` (the cloud, or a tap in front of it), ``window`` in
    flight; kill ``first`` once it has answered ``kill_at`` - 10 and start it again 1.5 s later.
    Returns (request id -> result or exception, stream stats, the restarted cloud)."""
    second = None
    settled: Counter = Counter()
    outcome: dict[str, object] = {}
    with CloudClient(address, timeout=20) as client, client.stream() as stream:
        inflight = []
        for i in range(total):
            if i == kill_at:
                wait_for(lambda: len(answered_ids(first)) >= kill_at - 10, 20, "the first cloud's replies")
                second = restart_on_same_port(artifacts, first, 1.5)
            rid = f"r{i}"
            fut = stream.submit(DEP, feats(i), request_id=rid)

            def done(f, rid=rid):
                settled[rid] += 1
                outcome[rid] = f.exception() or f.result()

            fut.add_done_callback(done)
            inflight.append(fut)
            if len(inflight) >= window:
                inflight.pop(0).exception(timeout=30)
        for fut in inflight:
            fut.exception(timeout=30)
        stats = dict(stream.stats)
    assert set(settled) == {f"r{i}" for i in range(total)} and set(settled.values()) == {1}  # each once
    failed = {rid: exc for rid, exc in outcome.items() if isinstance(exc, Exception)}
    assert len(failed) <= window, failed
    for rid, exc in failed.items():  # in flight when the cloud died, and not answered when sent again
        assert isinstance(exc, CloudError) and exc.code == grpc.StatusCode.UNAVAILABLE, exc
        assert "broke" in exc.message and exc.request_id == rid
    assert all(r.request_id == rid and r.logits.shape == (1, 10) for rid, r in outcome.items() if rid not in failed)
    return outcome, stats, second


def test_stream_requests_are_answered_once_or_fail_when_the_cloud_is_killed_and_restarted(artifacts):
    first = CloudProcess(artifacts, *CLOUD)
    second = None
    started = time.monotonic()
    try:
        outcome, stats, second = stream_through_a_restart(artifacts, first, first.address, 300, 100)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert time.monotonic() - started < 60
    ok = {rid for rid, r in outcome.items() if not isinstance(r, Exception)}
    before, after = answered_ids(first), answered_ids(second)
    assert len(set(before) & set(after)) <= stats["retried"] <= 4  # only what was sent again ran twice
    assert ok <= set(before) | set(after) and len(after) >= 300 - 100 - 4
    assert stats["calls"] >= 2 and stats["broken"] >= 1 and stats["late_replies"] == 0, stats


def test_stream_through_the_relay_tap_recovers_when_the_cloud_restarts(artifacts, tmp_path):
    """The relay accepts while its cloud is down and closes at once, so the edge's reconnects fail
    fast; the stream goes on once the cloud is back. (With gRPC's default reconnect backoff, which
    grows to 120 s, this missed its deadlines in about one try in three by hand; here the timing
    rarely lines up, so this checks the recovery, not the bound.)"""
    from attacker.tap import TapConfig, TapThread

    first = CloudProcess(artifacts, *CLOUD)
    second = None
    try:
        with TapThread(TapConfig(listen="127.0.0.1:0", upstream=first.address, store=str(tmp_path))) as tap:
            outcome, stats, second = stream_through_a_restart(artifacts, first, f"127.0.0.1:{tap.tap.port}", 200, 60)
    finally:
        first.kill()
        if second is not None:
            second.kill()
    assert len(answered_ids(second)) >= 200 - 60 - 4 and stats["broken"] >= 1, stats


@pytest.mark.parametrize("hung_requests", [1, 3])  # 1: a lone request on an idle call
def test_a_hung_cloud_fails_stream_requests_at_their_deadline_and_the_stream_recovers(artifacts, hung_requests):
    cloud = CloudProcess(artifacts, *CLOUD)
    try:
        with CloudClient(cloud.address) as client, client.stream(request_timeout=2.0) as stream:
            client.infer(DEP, feats())  # the tail loads on first use: not within 2 s on a busy machine
            assert stream.submit(DEP, feats()).result(timeout=30).logits.shape == (1, 10)
            cloud.proc.send_signal(signal.SIGSTOP)  # the connection stays open; nothing answers
            try:
                sent = time.monotonic()
                hung = [stream.submit(DEP, feats(i), request_id=f"h{i}") for i in range(hung_requests)]
                errors = [f.exception(timeout=10) for f in hung]
                waited = time.monotonic() - sent
            finally:
                cloud.proc.send_signal(signal.SIGCONT)
            assert 1.5 < waited < 6
            for i, exc in enumerate(errors):
                assert isinstance(exc, CloudError) and exc.code == grpc.StatusCode.DEADLINE_EXCEEDED, exc
                assert "no reply within 2 s" in exc.message and exc.request_id == f"h{i}"
            # the silent call was given up; the next request goes on a new one and is answered
            later = stream.submit(DEP, feats(9), request_id="after")
            assert later.result(timeout=30).request_id == "after"
            assert stream.stats["calls"] == 2 and stream.stats["expired"] == hung_requests, stream.stats
    finally:
        cloud.kill()


def edge_run(address: str, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, SPLITLAB_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "edge_client", "run", "--cloud", address, "--deployment", DEP,
                             "--dataset", "digits", "--json", "--no-progress", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def test_edge_cli_stream_run_finishes_when_the_cloud_is_killed_and_restarted(artifacts, tmp_path):
    """The issue's scenario: SIGKILL mid-`edge-client run --stream`, the cloud back 1.5 s later."""
    first = CloudProcess(artifacts, *CLOUD)
    second = None
    edge = edge_run(first.address, "--stream", "--count", "359", "--cache", str(tmp_path))
    try:
        wait_for(lambda: len(answered_ids(first)) >= 30 or edge.poll() is not None, 60, "the edge's first replies")
        assert edge.poll() is None, edge.communicate()
        second = restart_on_same_port(artifacts, first, 1.5)
        out, err = edge.communicate(timeout=60)
    finally:
        edge.kill()
        first.kill()
        if second is not None:
            second.kill()
    report = json.loads(out)
    assert report["requests"] == 359 and report["not_sent"] == 0 and report["mismatched"] == 0, report
    assert report["answered"] + report["failed"] == 359 and report["images"] == report["answered"]
    assert report["failed"] <= 2  # --inflight 2: at most the two in flight when the cloud died
    assert edge.returncode == (1 if report["failed"] else 0), err
    assert len(answered_ids(second)) >= 1  # the run went on against the restarted cloud


def test_a_run_gives_up_on_a_cloud_that_stays_dead(artifacts, tmp_path):
    from edge_client.edge import Edge
    from edge_client.heads import HeadCache
    from edge_client.run import run_dataset
    from models import load_dataset

    cloud = CloudProcess(artifacts, *CLOUD)
    images = np.concatenate([load_dataset("digits").x_test] * 20)  # far more than it can send in the test
    try:
        with CloudClient(cloud.address, timeout=2) as client:
            edge = Edge(client, HeadCache(tmp_path))
            client.infer(DEP, feats(), timeout=30)  # the tail is loaded
            killer = threading.Timer(1.0, cloud.proc.send_signal, (signal.SIGKILL,))
            killer.start()
            started = time.monotonic()
            report = run_dataset(edge, DEP, images, stream=True, progress=False)
            took = time.monotonic() - started
    finally:
        cloud.kill()
    assert took < 20, took  # about one --timeout (2 s) after the kill, not one per request
    assert "stopped sending" in report["gave_up"] and report["not_sent"] > 0, report
    assert report["answered"] + report["failed"] + report["not_sent"] == report["requests"] == len(images), report
    assert report["answered"] > 0 and report["mismatched"] == 0

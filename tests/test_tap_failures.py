"""Recording failures never stop traffic; they are counted. The tap stops gracefully on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread
from protos import split_inference_pb2 as pb
from protos import wire
from tap_upstream import upstream  # noqa: F401 - fixture

INFER = "/splitlab.v1.SplitInference/Infer"
ROOT = Path(__file__).resolve().parents[1]


def _payload(rid: str) -> bytes:
    req = pb.InferRequest(deployment_id="dep-a", request_id=rid)
    wire.encode_into(req.features, np.ones((1, 4, 4, 4), np.float32))
    return req.SerializeToString()


def _calls(port: int, n: int, prefix: str) -> list[bytes]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        call = ch.unary_unary(INFER)
        return [call(_payload(f"{prefix}-{i}"), timeout=10) for i in range(n)]


def test_locked_store_fails_recording_not_traffic(tmp_path, upstream):
    store_dir = tmp_path / "s"
    CaptureStore(store_dir).close()
    with TapThread(TapConfig(listen="127.0.0.1:0", upstream=upstream, store=str(store_dir))) as tap:
        locker = sqlite3.connect(store_dir / "index.sqlite", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # another process holds the store's write lock
        started = time.monotonic()
        replies = _calls(tap.tap.port, 10, "locked")
        assert len(replies) == 10 and all(replies)
        assert time.monotonic() - started < 2.0  # the calls never waited for the store
        assert tap.flush(20)
        stats = tap.stats()
        assert stats["record_failures"] >= 1 and "capture" in stats["last_error"]
        assert stats["recorded"] < 10
        locker.execute("ROLLBACK")
        locker.close()
        _calls(tap.tap.port, 3, "unlocked")
        assert tap.flush(10)
        assert tap.stats()["recorded"] >= 3
    store = CaptureStore(store_dir)
    assert {c.request_id for c in store.captures()} >= {"unlocked-0", "unlocked-1", "unlocked-2"}
    saved = json.loads((store_dir / "tap-stats.json").read_text())
    assert saved["record_failures"] == stats["record_failures"] or saved["record_failures"] >= 1


@pytest.mark.parametrize("mode", ["passive", "proxy"])
def test_unusable_store_path_and_full_queue_are_counted(tmp_path, upstream, mode):
    bad = tmp_path / "not-a-folder"
    bad.write_text("a file where the store should be")
    with TapThread(TapConfig(listen="127.0.0.1:0", upstream=upstream, store=str(bad), max_queue=2, mode=mode)) as tap:
        replies = _calls(tap.tap.port, 30, "bad")
        assert len(replies) == 30
        assert tap.flush(10)
        stats = tap.stats()
        assert stats["recorded"] == 0
        assert stats["record_failures"] + stats["dropped_queue_full"] == 30
        assert "not a folder" in stats["last_error"] or "queue full" in stats["last_error"]
        assert stats["forwarded"]["Infer"] == 30


@pytest.mark.parametrize("mode", ["passive", "proxy"])
def test_upstream_down_looks_the_same_as_direct(tmp_path, mode):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    with TapThread(TapConfig(listen="127.0.0.1:0", upstream=f"127.0.0.1:{dead}", store=str(tmp_path), mode=mode)) as tap:
        for port in (dead, tap.tap.port):
            with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
                with pytest.raises(grpc.RpcError) as err:
                    ch.unary_unary(INFER)(_payload("down"), timeout=5)
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_sigterm_stops_gracefully_and_keeps_captures(tmp_path, upstream):
    store_dir = tmp_path / "s"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "attacker", "tap", "--listen", "127.0.0.1:0", "--upstream",
                             upstream, "--store", str(store_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    try:
        line = proc.stdout.readline()
        assert "tap listening" in line, proc.stderr.read()
        port = int(line.split(" -> ")[0].rsplit(":", 1)[1])
        assert len(_calls(port, 2, "term")) == 2
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "tap stopped" in out and '"recorded": 2' in out
    assert [c.request_id for c in CaptureStore(store_dir).captures()] == ["term-0", "term-1"]

"""The tap under faults: killed mid-run, its store on a full or read-only disk.

- SIGKILL the tap process mid-stream, start it again on the same store and port:
  every capture in the store is readable and holds what was sent, nothing is recorded that was
  not sent, and every call answered after the restart is recorded.
- The store on a 1 MiB tmpfs (ENOSPC), then remounted read-only (EROFS): every call is still
  answered at once, the failures are counted in the tap's stats and logged, and recording resumes
  when the space / write access is back. Needs root and tmpfs mounts; skipped otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread
from benchmarks.tap_overhead import free_port
from edge_client.client import CloudClient, CloudError
from tap_upstream import upstream  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[1]


def batch(i: int, shape=(1, 4, 4, 4)) -> np.ndarray:
    """Features that say which request they belong to."""
    return np.full(shape, float(i), np.float32)


class TapProcess:
    def __init__(self, listen: str, upstream: str, store: Path):
        env = dict(os.environ, PYTHONPATH=str(ROOT), SPLITLAB_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "attacker", "tap", "--listen", listen, "--admin",
                                      f"127.0.0.1:{free_port()}", "--upstream", upstream, "--store", str(store)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        line = self.proc.stdout.readline()
        assert "tap listening" in line, line + self.proc.stderr.read()


def test_tap_killed_mid_run_leaves_a_readable_store_and_restarts_on_it(tmp_path, upstream):
    store_dir, listen = tmp_path / "store", f"127.0.0.1:{free_port()}"
    outcome: dict[str, object] = {}
    stop = threading.Event()

    def send():  # an edge streaming through the tap, 4 requests in flight
        with CloudClient(listen, timeout=10) as client, client.stream() as stream:
            window = []
            for i in range(100_000):
                if stop.is_set():
                    break
                rid = f"k-{i}"
                window.append((rid, stream.submit("dep-a", batch(i), request_id=rid)))
                if len(window) >= 4:
                    rid, fut = window.pop(0)
                    outcome[rid] = fut.exception(timeout=30) or fut.result()
            for rid, fut in window:
                outcome[rid] = fut.exception(timeout=30) or fut.result()

    tap = TapProcess(listen, upstream, store_dir)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        end = time.monotonic() + 30
        while CaptureStore(store_dir).count() < 150 and time.monotonic() < end:
            time.sleep(0.05)
        tap.proc.send_signal(signal.SIGKILL)
        tap.proc.wait(10)
        before_restart = len(outcome)
        time.sleep(0.5)
        tap = TapProcess(listen, upstream, store_dir)  # same store, same port
        end = time.monotonic() + 30
        while len(outcome) < before_restart + 150 and time.monotonic() < end:
            time.sleep(0.05)
    finally:
        stop.set()
        sender.join(20)
        tap.proc.send_signal(signal.SIGTERM)
        out, err = tap.proc.communicate(timeout=30)
    assert tap.proc.returncode == 0, err
    answered = {rid for rid, r in outcome.items() if not isinstance(r, Exception)}
    failed = {rid: r for rid, r in outcome.items() if isinstance(r, Exception)}
    assert len(answered) >= 300 and len(failed) <= 5, failed
    assert all(isinstance(r, CloudError) and r.code == grpc.StatusCode.UNAVAILABLE for r in failed.values()), failed
    with CaptureStore(store_dir) as store:
        captures = store.captures()
        assert store.count() == len(captures) >= 300
        for c in captures:  # every capture readable, holding what that request sent
            i = int(c.request_id.split("-")[1])
            assert np.array_equal(store.features(c), batch(i)), c
    captured = {c.request_id for c in captures}
    assert captured <= set(outcome)  # nothing recorded that was not sent
    after = {rid for rid in answered if int(rid.split("-")[1]) >= before_restart + 5}
    assert after and after <= captured  # the restarted tap recorded every call it answered
    final = json.loads(out.split("tap stopped: ", 1)[1])
    assert final["recorded"] >= len(after) and final["record_failures"] == 0, final


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only); yields (mount point, remount(options))."""
    point = tmp_path / "disk"
    point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)

    try:
        yield point, remount
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_full_or_read_only_store_fails_recording_not_traffic_and_recovers(small_disk, upstream, capfd):
    disk, remount = small_disk
    big = (1, 16, 32, 32)  # 64 KiB per call: the 1 MiB disk fills after about 15
    config = TapConfig(listen="127.0.0.1:0", upstream=upstream, store=str(disk / "store"))

    def calls(tap: TapThread, prefix: str, n: int) -> float:
        started = time.monotonic()
        with CloudClient(f"127.0.0.1:{tap.tap.port}", timeout=10) as client:
            for i in range(n):
                assert client.infer("dep-a", batch(i, big), request_id=f"{prefix}-{i}").request_id == f"{prefix}-{i}"
        assert tap.flush(20)
        return time.monotonic() - started

    with TapThread(config) as tap:
        assert calls(tap, "full", 40) < 20  # every call answered, none waited for the disk
        stats = tap.stats()
        assert stats["record_failures"] >= 1 and "No space left on device" in stats["last_error"], stats
        assert stats["recorded"] < 40
        assert "No space left on device" in capfd.readouterr().err  # logged (by the recorder process)
        remount("size=64m")  # space is back
        calls(tap, "roomy", 5)
        assert tap.stats()["recorded"] >= stats["recorded"] + 5

    remount("ro")  # (a store in use cannot be remounted read-only: the tap starts on one)
    with TapThread(config) as tap:
        calls(tap, "ro", 5)
        stats = tap.stats()
        assert stats["record_failures"] >= 5 and stats["recorded"] == 0, stats
        assert "the file system is read-only" in stats["last_error"], stats
        remount("rw")
        time.sleep(1.2)  # the recorder tries to open the store again once a second
        calls(tap, "back", 3)
        assert tap.stats()["recorded"] >= 3
    with CaptureStore(disk / "store") as store:
        ids = {c.request_id for c in store.captures()}
        assert {f"roomy-{i}" for i in range(5)} | {f"back-{i}" for i in range(3)} <= ids
        assert not any(rid.startswith("ro-") for rid in ids)
        for c in store.captures():  # nothing half-written is pointed at
            assert np.array_equal(store.features(c), batch(int(c.request_id.split("-")[1]), big))

"""The tap's own health (``splitlab.attacker.Tap``) follows its recording: NOT_SERVING while the
capture store's writes fail (here: a store another process holds locked, so every write raises
"database is locked"; and a store path that is a file), SERVING again once the store takes writes,
with or without traffic; each change is logged and the failed records are counted. Traffic passes
throughout."""

from __future__ import annotations

import logging
import sqlite3
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread
from attacker.tap.proxy import TAP_HEALTH_SERVICE
from test_tap_failures import _calls
from tap_upstream import upstream  # noqa: F401 - fixture

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def _health(tap: TapThread, service: str = TAP_HEALTH_SERVICE) -> int:
    port = tap.tap.admin_port or tap.tap.port  # passive: --admin; proxy: the listen port
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def _becomes(tap: TapThread, status: int, timeout: float = 30.0) -> bool:
    """Poll the tap's health until it answers ``status`` (the tap looks every 0.05 s here)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _health(tap) == status:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("mode", ["passive", "proxy"])
def test_health_is_not_serving_while_store_writes_fail_and_recovers(tmp_path, upstream, mode, caplog):
    caplog.set_level(logging.INFO, logger="attacker.tap")
    store_dir = tmp_path / "s"
    CaptureStore(store_dir).close()
    config = TapConfig(listen="127.0.0.1:0", upstream=upstream, store=str(store_dir), mode=mode, health_interval=0.05)
    with TapThread(config) as tap:
        assert _health(tap) == SERVING
        locker = sqlite3.connect(store_dir / "index.sqlite", isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")  # every write of the tap's store now raises
        try:
            assert len(_calls(tap.tap.port, 5, "locked")) == 5  # traffic passes
            assert tap.flush(20)
            assert _becomes(tap, NOT_SERVING)
            stats = tap.stats()
            assert stats["store_failing"] is True and stats["record_failures"] >= 1
            assert "locked" in stats["last_error"]
            if mode == "passive":  # the admin port's overall service: the tap runs and forwards
                assert _health(tap, "") == SERVING
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert _becomes(tap, SERVING)  # no traffic needed: the idle recorder finds the store writable
        assert tap.stats()["store_failing"] is False
        recorded = tap.stats()["recorded"]
        _calls(tap.tap.port, 2, "unlocked")
        assert tap.flush(20)
        assert _health(tap) == SERVING and tap.stats()["recorded"] == recorded + 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("tap health NOT_SERVING: capture store writes fail" in m and "locked" in m for m in messages)
    assert any("tap health SERVING again" in m for m in messages)


def test_an_unusable_store_is_not_serving_from_the_start(tmp_path, upstream):
    bad = tmp_path / "not-a-folder"
    bad.write_text("a file where the store should be")
    config = TapConfig(listen="127.0.0.1:0", upstream=upstream, store=str(bad), mode="proxy", health_interval=0.05)
    with TapThread(config) as tap:
        assert _health(tap) == NOT_SERVING
        assert len(_calls(tap.tap.port, 2, "bad")) == 2
        bad.unlink()  # the operator mends it: the store can be created now
        assert _becomes(tap, SERVING)  # without traffic
        _calls(tap.tap.port, 3, "mended")
        assert tap.flush(20) and tap.stats()["recorded"] == 3

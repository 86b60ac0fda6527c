"""``--priority idle``: the tap's recording threads run under SCHED_IDLE (only on cores nothing else
wants) and still record every call; the threads in the traffic's path keep their priority."""

from __future__ import annotations

import asyncio
import os

import grpc
import numpy as np
import pytest

from attacker.__main__ import main as attacker_main
from attacker.captures.store import CaptureStore
from attacker.tap.priority import is_idle_priority, run_at_idle_priority
from attacker.tap.sniffer import can_sniff
from attacker.tap import Tap, TapConfig, TapThread
from protos import wire
from tap_upstream import FakeCloud, start_fake_cloud
from test_tap import request, stream, unary

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux-only")


@pytest.fixture(scope="module")
def cloud():
    server, port = start_fake_cloud(FakeCloud())
    yield port
    server.stop(0)


def test_idle_priority_applies_to_the_calling_thread_only():
    import threading

    seen = {}

    def worker():
        seen["ok"] = run_at_idle_priority()
        seen["idle"] = is_idle_priority()

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert seen == {"ok": True, "idle": True}
    assert not is_idle_priority()  # this (main) thread is untouched


def _recording_tids(tap: TapThread, mode: str) -> list[int]:
    if mode == "passive":  # the recorder process, every thread of it
        pid = tap.tap._parser._process.pid
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    if mode == "proxy":  # the recorder's writer thread (the proxy's own threads are in the path)
        return [tap.recorder._thread.native_id]
    return [tap._thread.native_id, tap.recorder._thread.native_id]  # sniff: the loop that decodes, the writer


@pytest.mark.parametrize("mode", ["passive", "proxy", "sniff"])
def test_an_idle_priority_tap_records_every_call(tmp_path, cloud, mode):
    if mode == "sniff" and not can_sniff():
        pytest.skip("sniffing needs CAP_NET_RAW (run the tests as root)")
    tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream=f"127.0.0.1:{cloud}", store=str(tmp_path / "s"),
                              mode=mode, interface="lo", admin="127.0.0.1:0", priority="idle"))
    with tap:
        address = f"127.0.0.1:{cloud}" if mode == "sniff" else f"127.0.0.1:{tap.tap.port}"
        sent = [request(rid=f"p-{i}", seed=i, shape=(2, 8, 4, 4)) for i in range(5)]
        with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as ch:
            for req in sent[:3]:
                assert unary(ch, "Infer", req.SerializeToString())[0] == grpc.StatusCode.OK
            assert stream(ch, [r.SerializeToString() for r in sent[3:]])[0] == grpc.StatusCode.OK
        assert tap.flush(10)
        for tid in _recording_tids(tap, mode):
            assert is_idle_priority(tid), (mode, tid)
        store = CaptureStore(tmp_path / "s")
        for req in sent:
            (cap,) = store.captures(request_id=req.request_id)
            assert np.array_equal(store.features(cap), wire.decode(req.features))
    assert not is_idle_priority()


def test_a_bad_priority_is_refused(tmp_path, cloud, capsys):
    tap = Tap(TapConfig(listen="127.0.0.1:0", upstream=f"127.0.0.1:{cloud}", store=str(tmp_path / "s"),
                        priority="low"))
    with pytest.raises(ValueError, match="priority must be 'normal' or 'idle', got 'low'"):
        asyncio.run(tap.start())  # refused before anything is opened
    with pytest.raises(SystemExit) as exit_info:
        attacker_main(["tap", "--priority", "low", "--store", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert "invalid choice: 'low'" in capsys.readouterr().err


def test_a_bad_priority_from_the_environment_is_a_clear_error(tmp_path, monkeypatch, capsys):
    """argparse checks only flags against their choices, not defaults taken from the environment."""
    monkeypatch.setenv("SPLITLAB_TAP_PRIORITY", "low")
    assert attacker_main(["tap", "--store", str(tmp_path / "s")]) == 2
    assert "SPLITLAB_TAP_PRIORITY must be one of normal, idle, got 'low'" in capsys.readouterr().err
    monkeypatch.setenv("SPLITLAB_TAP_PRIORITY", "idle")
    from attacker.__main__ import build_parser

    assert build_parser().parse_args(["tap"]).priority == "idle"

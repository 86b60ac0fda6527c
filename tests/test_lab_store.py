"""The lab's experiment store and worker pool: FIFO order, bounded concurrency, crash isolation,
cooperative cancellation, progress, and recovery after a service died mid-run.

The runners here are small functions that use the same context (progress, cancellation checks) a
real experiment uses; the live end-to-end path is in ``test_lab_e2e.py``.
"""

from __future__ import annotations

import sqlite3
import threading
import time

from attacker.lab.store import ExperimentStore
from attacker.lab.worker import WorkerPool


def wait_for(predicate, timeout=10.0, every=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout} s")


def finished(store, ids):
    return all(store.get(i)["status"] in ("done", "failed", "cancelled") for i in ids)


def test_store_is_wal_and_survives_reopening(tmp_path):
    store = ExperimentStore(tmp_path)
    rec = store.create({"samples": 3})
    assert rec["status"] == "queued" and rec["spec"] == {"samples": 3}
    store.close()
    again = ExperimentStore(tmp_path)
    assert again.get(rec["id"])["spec"] == {"samples": 3}
    mode = sqlite3.connect(tmp_path / "experiments.sqlite").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"


def test_fifo_one_at_a_time_and_progress(tmp_path):
    store = ExperimentStore(tmp_path)
    order, active, overlap = [], [0], []
    lock = threading.Lock()

    def run(record, ctx):
        with lock:
            active[0] += 1
            overlap.append(active[0])
        order.append(record["spec"]["n"])
        ctx.progress("halfway", 0.5, {"rows": [{"n": record["spec"]["n"]}]})
        seen = store.get(record["id"])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        return {"rows": [{"n": record["spec"]["n"]}], "seen_progress": seen["progress"]}

    ids = [store.create({"n": i})["id"] for i in range(4)]
    pool = WorkerPool(store, run, workers=1, poll_s=0.05)
    pool.start()
    try:
        wait_for(lambda: finished(store, ids))
    finally:
        pool.stop()
    assert order == [0, 1, 2, 3]
    assert max(overlap) == 1
    for i in ids:
        rec = store.get(i)
        assert rec["status"] == "done"
        assert rec["results"]["seen_progress"] == {"step": "halfway", "fraction": 0.5}
        assert rec["progress"] == {"step": "done", "fraction": 1.0}
        assert [e["event"] for e in rec["events"]] == ["queued", "running", "done"]


def test_pool_bounds_concurrency_to_its_size(tmp_path):
    store = ExperimentStore(tmp_path)
    active, peak = [0], [0]
    lock = threading.Lock()

    def run(record, ctx):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.2)
        with lock:
            active[0] -= 1
        return {}

    ids = [store.create({"n": i})["id"] for i in range(5)]
    pool = WorkerPool(store, run, workers=2, poll_s=0.05)
    pool.start()
    try:
        wait_for(lambda: finished(store, ids))
    finally:
        pool.stop()
    assert peak[0] == 2


def test_a_crash_fails_only_that_experiment(tmp_path):
    store = ExperimentStore(tmp_path)

    def run(record, ctx):
        if record["spec"].get("crash"):
            ctx.progress("about to crash", 0.3)
            raise ZeroDivisionError("boom in the runner")
        return {"ok": True}

    bad = store.create({"crash": True})["id"]
    good = store.create({})["id"]
    pool = WorkerPool(store, run, workers=1, poll_s=0.05)
    pool.start()
    try:
        wait_for(lambda: finished(store, [bad, good]))
        assert pool.alive() == 1
    finally:
        pool.stop()
    failed = store.get(bad)
    assert failed["status"] == "failed"
    assert failed["error"] == "ZeroDivisionError: boom in the runner"
    assert failed["progress"]["step"] == "about to crash"
    assert store.get(good)["status"] == "done" and store.get(good)["results"] == {"ok": True}


def test_cancel_queued_and_running(tmp_path):
    store = ExperimentStore(tmp_path)
    steps = []

    def run(record, ctx):
        for i in range(500):  # a long experiment made of short steps
            ctx.progress(f"step {i}", i / 500)
            steps.append(i)
            time.sleep(0.01)
        return {}

    running = store.create({})["id"]
    queued = store.create({})["id"]
    pool = WorkerPool(store, run, workers=1, poll_s=0.05)
    pool.start()
    try:
        wait_for(lambda: store.get(running)["status"] == "running" and len(steps) > 3)
        assert store.cancel(queued)["status"] == "cancelled"
        rec = store.cancel(running)
        assert rec["status"] == "running" and rec["cancel_requested"]
        wait_for(lambda: store.get(running)["status"] == "cancelled", timeout=5)
    finally:
        pool.stop()
    assert len(steps) < 500
    assert store.get(queued)["started"] is None  # never ran
    assert store.cancel("no-such-id") is None


def test_running_experiment_is_interrupted_and_rerun_after_a_restart(tmp_path):
    first = ExperimentStore(tmp_path)
    a = first.create({"name": "a"})["id"]
    b = first.create({"name": "b"})["id"]
    assert first.claim_next()["id"] == a  # the service dies while a runs; b waits in the queue
    first.close()

    second = ExperimentStore(tmp_path)
    assert second.recover() == [a]
    rec = second.get(a)
    assert rec["status"] == "interrupted" and rec["restarts"] == 1
    assert second.queue_position(a) == 1 and second.queue_position(b) == 2
    ran = []
    pool = WorkerPool(second, lambda record, ctx: ran.append(record["spec"]["name"]) or {}, workers=1, poll_s=0.05)
    pool.start()
    try:
        wait_for(lambda: finished(second, [a, b]))
    finally:
        pool.stop()
    assert ran == ["a", "b"]
    events = [e["event"] for e in second.get(a)["events"]]
    assert events == ["queued", "running", "interrupted", "running", "done"]


def test_an_experiment_that_keeps_killing_the_service_is_given_up(tmp_path):
    store = ExperimentStore(tmp_path)
    exp = store.create({})["id"]
    for _ in range(3):
        store.claim_next()
        store.recover(max_restarts=3)
    store.claim_next()
    store.recover(max_restarts=3)
    rec = store.get(exp)
    assert rec["status"] == "failed" and "interrupted 4 times" in rec["error"]


def test_paging_and_status_filter(tmp_path):
    store = ExperimentStore(tmp_path)
    ids = [store.create({"n": i})["id"] for i in range(5)]
    store.cancel(ids[1])
    page, total = store.list(limit=2, offset=0)
    assert total == 5 and [r["id"] for r in page] == [ids[4], ids[3]]
    page, total = store.list(limit=2, offset=4)
    assert [r["id"] for r in page] == [ids[0]]
    page, total = store.list(status="cancelled")
    assert total == 1 and page[0]["id"] == ids[1]
    assert store.counts()["queued"] == 4


def test_zero_workers_only_queue(tmp_path):
    store = ExperimentStore(tmp_path)
    exp = store.create({})["id"]
    pool = WorkerPool(store, lambda r, c: {}, workers=0, poll_s=0.05)
    pool.start()
    time.sleep(0.2)
    pool.stop()
    assert store.get(exp)["status"] == "queued"


def test_results_are_stored_as_strict_json(tmp_path):
    import numpy as np

    store = ExperimentStore(tmp_path)
    exp = store.create({})["id"]
    store.claim_next()
    assert store.finish(exp, "done", results={"psnr": float("inf"), "ssim": float("nan"),
                                              "mse": np.float32(0.25), "shape": np.arange(3)})
    assert store.get(exp)["results"] == {"psnr": None, "ssim": None, "mse": 0.25, "shape": [0, 1, 2]}
    assert not store.finish(exp, "failed", error="too late")  # only a running experiment finishes

"""The capture store: queries, retention, restart, heads stored once per digest, ground truth."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from attacker.captures import store as capture_store
from attacker.captures.store import CaptureStore, load_ground_truth_file
from models.errors import SplitlabError


def _row(i, dep="dep-a", t=1000.0, batch=2, rid=None):
    feats = np.full((batch, 4, 3, 3), float(i), np.float32)
    return {"method": "Infer", "request_id": rid or f"r{i}", "deployment_id": dep, "peer": "ipv4:127.0.0.1:1",
            "time": t + i, "latency": 0.001, "features": feats, "wire_dtype": "float32", "shape": feats.shape,
            "logits": np.arange(batch * 10, dtype=np.float32).reshape(batch, 10), "top1": [9] * batch}


def test_queries_by_deployment_time_last_id_and_request(tmp_path):
    store = CaptureStore(tmp_path / "s")
    ids = store.add_captures([_row(i, dep="dep-a" if i % 2 else "dep-b") for i in range(10)])
    assert ids == list(range(1, 11))
    a = store.captures(deployment="dep-a")
    assert [c.request_id for c in a] == ["r1", "r3", "r5", "r7", "r9"]
    assert [c.request_id for c in store.captures(deployment="dep-b", last=2)] == ["r6", "r8"]
    window = store.captures(since=1003, until=1005)
    assert [c.request_id for c in window] == ["r3", "r4", "r5"]
    assert [c.id for c in store.captures(ids=[2, 4])] == [2, 4]
    (c,) = store.captures(request_id="r7", with_logits=True)
    assert c.deployment_id == "dep-a" and c.shape == [2, 4, 3, 3] and c.top1 == [9, 9] and c.batch == 2
    assert np.array_equal(store.features(c), np.full((2, 4, 3, 3), 7.0, np.float32))
    assert c.logits.shape == (2, 10) and c.logits[1, 3] == 13
    assert [x.id for x in store.captures(after_id=8)] == [9, 10]
    assert store.count() == 10 and store.count("dep-a") == 5
    assert store.deployment_ids() == ["dep-a", "dep-b"]
    with pytest.raises(SplitlabError, match="--last"):
        store.captures(last=0)


def test_retention_by_count_and_bytes_drops_oldest_and_their_segments(tmp_path, monkeypatch):
    monkeypatch.setattr(capture_store, "SEGMENT_BYTES", 1)  # a new segment file for every write
    store = CaptureStore(tmp_path / "s", max_captures=3)
    for i in range(5):
        store.add_captures([_row(i)])
    left = store.captures()
    assert [c.request_id for c in left] == ["r2", "r3", "r4"]
    assert len(list((tmp_path / "s" / "arrays").rglob("*.npys"))) == 3  # unreferenced segments deleted
    assert np.array_equal(store.features(left[0]), np.full((2, 4, 3, 3), 2.0))
    one = left[0].features_bytes
    store.close()
    small = CaptureStore(tmp_path / "s", max_bytes=2 * one)
    small.add_captures([_row(5)])
    assert [c.request_id for c in small.captures()] == ["r4", "r5"]
    assert small.total_bytes() <= 2 * one
    assert len(list((tmp_path / "s" / "arrays").rglob("*.npys"))) == 2
    with pytest.raises(SplitlabError):
        CaptureStore(tmp_path / "t", max_captures=0)


def test_every_segment_is_written_through_one_staging_buffer(tmp_path, monkeypatch):
    """A fresh buffer per segment would touch new memory for each (slow on VMs: attacker/captures/segment_file.py)."""
    from attacker.captures import segment_file

    monkeypatch.setattr(capture_store, "SEGMENT_BYTES", 1)  # a new segment file for every write
    mapped = []
    real_mmap = segment_file.mmap.mmap
    monkeypatch.setattr(segment_file.mmap, "mmap", lambda *a, **kw: mapped.append(a) or real_mmap(*a, **kw))
    store = CaptureStore(tmp_path / "s")
    for i in range(4):
        store.add_captures([_row(i)])
    assert len(list((tmp_path / "s" / "arrays").rglob("*.npys"))) == 4
    assert len(mapped) == 1
    assert [float(store.features(c).mean()) for c in store.captures()] == [0.0, 1.0, 2.0, 3.0]
    store.close()


def test_survives_restart(tmp_path):
    store = CaptureStore(tmp_path / "s")
    store.add_captures([_row(i) for i in range(3)])
    store.add_head({"deployment_id": "dep-a", "arch": "lenet5", "split": "conv1", "input_shape": [1, 28, 28]},
                   b"onnx-bytes", 5.0)
    store.attach_ground_truth("r1", np.zeros((2, 28, 28, 1), np.uint8))
    store.close()
    again = CaptureStore(tmp_path / "s", create=False)
    assert [c.request_id for c in again.captures()] == ["r0", "r1", "r2"]
    assert np.array_equal(again.features(again.captures(request_id="r2")[0]), np.full((2, 4, 3, 3), 2.0))
    assert again.heads("dep-a")[0].input_shape == [1, 28, 28]
    assert again.ground_truth("r1").shape == (2, 1, 28, 28)
    assert again.add_captures([_row(3)]) == [4]


def test_heads_once_per_digest_and_not_modified(tmp_path):
    store = CaptureStore(tmp_path / "s")
    fields = {"arch": "lenet5", "split": "conv1", "feature_shape": [8, 24, 24], "num_classes": 10}
    d1 = store.add_head({"deployment_id": "a", **fields}, b"same-head", 1.0)
    d2 = store.add_head({"deployment_id": "b", **fields}, b"same-head", 2.0)
    d3 = store.add_head({"deployment_id": "a", **fields}, b"same-head", 3.0)
    assert d1 == d2 == d3
    assert len(list((tmp_path / "s" / "heads").iterdir())) == 1
    (ha,) = store.heads("a")
    assert ha.times_seen == 2 and ha.first_seen == 1.0 and ha.last_seen == 3.0
    assert store.head_bytes(d1) == b"same-head"
    assert store.touch_head("a", d1, 4.0) and store.heads("a")[0].times_seen == 3
    assert not store.touch_head("a", "0" * 64, 4.0)
    (tmp_path / "s" / "heads" / f"{d1}.onnx").write_bytes(b"tampered")
    with pytest.raises(SplitlabError, match="corrupt"):
        store.head_bytes(d1)


def test_store_errors_are_clear(tmp_path):
    with pytest.raises(SplitlabError, match="no capture store"):
        CaptureStore(tmp_path / "missing", create=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(SplitlabError, match="not a folder"):
        CaptureStore(tmp_path / "file")
    store = CaptureStore(tmp_path / "s")
    store.add_captures([{"method": "Infer", "time": 1.0, "status": 3, "error": "bad"}])
    (c,) = store.captures()
    assert not c.ok
    with pytest.raises(SplitlabError, match="no features"):
        store.features(c)


def test_failed_transaction_records_nothing_and_the_store_goes_on(tmp_path):
    store = CaptureStore(tmp_path / "s", busy_timeout=0.05)
    other = sqlite3.connect(tmp_path / "s" / "index.sqlite", isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    with pytest.raises(sqlite3.OperationalError):
        store.add_captures([_row(1)])
    other.execute("ROLLBACK")
    assert store.count() == 0
    assert store.add_captures([_row(2)]) == [1]
    assert np.array_equal(store.features(store.captures()[0]), np.full((2, 4, 3, 3), 2.0))


def test_features_are_kept_in_their_wire_dtype(tmp_path):
    from protos import wire

    store = CaptureStore(tmp_path / "s")
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    rows = []
    for name in ("float32", "float16", "bfloat16", "int8"):
        raw, code, scale = wire.decode_raw(wire.encode(x, name))
        rows.append({"method": "Infer", "request_id": name, "time": 1.0, "features": raw, "scale": scale,
                     "wire_dtype": name, "shape": raw.shape})
    store.add_captures(rows)
    for name, tol in (("float32", 0), ("float16", 2e-3), ("bfloat16", 2e-2), ("int8", 2e-2)):
        (cap,) = store.captures(request_id=name)
        raw = store.raw_features(cap)
        assert raw.itemsize == (4 if name == "float32" else 1 if name == "int8" else 2)
        got = store.features(cap)
        assert got.dtype == np.float32 and np.allclose(got, x, atol=tol * np.abs(x).max())


def test_ground_truth_file(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "gt.npz", request_ids=np.array(["a", "b", "a", "c", "a"]), images=imgs)
    truth = load_ground_truth_file(tmp_path / "gt.npz")
    assert sorted(truth) == ["a", "b", "c"]
    assert truth["a"].shape == (3, 3, 8, 8)
    assert np.allclose(truth["a"][1], imgs[2].transpose(2, 0, 1) / 255.0)
    np.savez(tmp_path / "bad.npz", ids=np.array(["a"]), images=imgs[:1])
    with pytest.raises(SplitlabError, match="request_ids"):
        load_ground_truth_file(tmp_path / "bad.npz")
    np.savez(tmp_path / "mismatch.npz", request_ids=np.array(["a"]), images=imgs)
    with pytest.raises(SplitlabError, match="1 request ids but 5 images"):
        load_ground_truth_file(tmp_path / "mismatch.npz")
    np.savez(tmp_path / "range.npz", request_ids=np.array(["a"]), images=np.full((1, 1, 4, 4), 3.0))
    with pytest.raises(SplitlabError, match=r"\[0, 1\]"):
        load_ground_truth_file(tmp_path / "range.npz")

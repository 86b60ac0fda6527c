"""Tails as ONNX from deploy time, a cloud that serves them without torch, and ``--device``.

The torch-free check runs the real ``cloud-server`` entry point in a fresh interpreter (torch is
loaded in this one) and asks that interpreter, after it has answered float32 and float16
requests, whether torch was ever imported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cloud_server import placement
from cloud_server.features import Features
from cloud_server.registry import Registry
from cloud_server.tail_runtime import onnx_runner
from models import ArtifactStore
from models.loading import load_tail
from models.onnx_runtime import head_session
from protos import split_inference_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
DEP = "lenet5-digits--relu2"


def head_features(store, dep_id, n=5):
    shape = store.deployment(dep_id)["input_shape"]
    x = np.random.default_rng(1).random((n, *shape), dtype=np.float32)
    return head_session(str(store.deployment_dir(dep_id) / "head.onnx")).run(None, {"input": x})[0]


def torch_logits(store, dep_id, features):
    tail, _ = load_tail(store, dep_id)
    with torch.inference_mode():
        return tail(torch.from_numpy(features)).numpy()


def test_deploy_writes_a_tail_onnx_checked_against_torch(lenet_digits):
    folder = lenet_digits.deployment_dir(DEP)
    record = lenet_digits.deployment(DEP)
    data = (folder / "tail.onnx").read_bytes()
    assert record["tail_onnx_max_abs_diff"] <= 1e-4
    assert record["tail_sha256"] == hashlib.sha256(data).hexdigest()
    f = head_features(lenet_digits, DEP)
    got = onnx_runner(data)(Features(f, pb.Tensor.FLOAT32))
    np.testing.assert_allclose(got, torch_logits(lenet_digits, DEP, f), atol=1e-4)


SERVE_AND_ASK = textwrap.dedent("""
    import json, logging, os, signal, sys, threading
    import numpy as np
    from edge_client.client import CloudClient

    artifacts, features, dep_id = sys.argv[1:]
    x = np.load(features)
    found, ready = {}, threading.Event()

    class Serving(logging.Handler):
        def emit(self, record):
            if record.getMessage() == "serving":
                found["address"] = "127.0.0.1:" + record.fields["address"].rsplit(":", 1)[1]
                ready.set()

    logging.getLogger("cloud_server.lifecycle").addHandler(Serving())

    def ask():
        try:
            ready.wait(120)
            with CloudClient(found["address"], timeout=120) as client:
                found["float32"] = client.infer(dep_id, x).logits.tolist()
                found["float16"] = client.infer(dep_id, x, "float16").logits.tolist()
            found["torch"] = "torch" in sys.modules
        except Exception as exc:
            found["error"] = repr(exc)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=ask, daemon=True).start()
    from cloud_server.__main__ import main
    code = main(["--artifacts", artifacts, "--host", "127.0.0.1", "--port", "0", "--log-level", "warning"])
    print(json.dumps(dict(found, code=code)))
""")


def test_cloud_serves_tail_onnx_without_importing_torch(lenet_digits, tmp_path):
    f = head_features(lenet_digits, DEP)
    np.save(tmp_path / "x.npy", f)
    proc = subprocess.run([sys.executable, "-c", SERVE_AND_ASK, str(lenet_digits.root), str(tmp_path / "x.npy"), DEP],
                          capture_output=True, text=True, timeout=180, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SPLITLAB_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    assert out["code"] == 0
    assert out["torch"] is False, "the cloud imported torch to serve tail.onnx"
    expected = torch_logits(lenet_digits, DEP, f)
    np.testing.assert_allclose(out["float32"], expected, atol=1e-4)
    np.testing.assert_allclose(out["float16"], expected, atol=0.05)


class Events(logging.Handler):
    def __init__(self):
        super().__init__()
        self.events = []

    def emit(self, record):
        self.events.append((record.getMessage(), getattr(record, "fields", {})))


@pytest.fixture
def cloud_events():
    handler = Events()
    logger = logging.getLogger("cloud_server")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.events
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_older_deployment_without_tail_onnx_is_exported_on_load_and_says_so(lenet_digits, tmp_path, cloud_events):
    store = ArtifactStore(tmp_path)
    shutil.copytree(lenet_digits.deployment_dir(DEP), store.deployment_dir(DEP))
    (store.deployment_dir(DEP) / "tail.onnx").unlink()
    registry = Registry(store)
    runner = registry.tail(registry.deployment(DEP))
    assert runner.runtime == "onnxruntime" and runner.device == "cpu"
    f = head_features(store, DEP)
    np.testing.assert_allclose(runner(Features(f, pb.Tensor.FLOAT32)), torch_logits(store, DEP, f), atol=1e-4)
    said = [fields for event, fields in cloud_events if event.startswith("no tail.onnx")]
    assert said and said[0]["deployment"] == DEP and "redeploy" in said[0]["hint"]


def test_a_tail_onnx_onnxruntime_refuses_falls_back_to_tail_pt(lenet_digits, tmp_path, cloud_events):
    store = ArtifactStore(tmp_path)
    shutil.copytree(lenet_digits.deployment_dir(DEP), store.deployment_dir(DEP))
    (store.deployment_dir(DEP) / "tail.onnx").write_bytes(b"not an onnx graph")
    registry = Registry(store)
    f = head_features(store, DEP)
    got = registry.tail(registry.deployment(DEP))(Features(f, pb.Tensor.FLOAT32))
    np.testing.assert_allclose(got, torch_logits(store, DEP, f), atol=1e-4)
    assert any(event.startswith("tail.onnx refused") for event, _ in cloud_events)


def test_cuda_asked_for_without_it_falls_back_to_the_cpu_with_a_message(monkeypatch, capsys):
    monkeypatch.setattr(placement, "torch_cuda_status", lambda: (False, "torch.cuda.is_available() is False"))
    monkeypatch.setattr(placement, "ort_cuda_status", lambda: (False, "ONNX Runtime execution providers: CPUExecutionProvider"))
    for runtime in ("onnxruntime", "torch"):
        p = placement.resolve(runtime, "cuda")
        assert (p.runtime, p.device, p.providers) == (runtime, "cpu", ["CPUExecutionProvider"])
        err = capsys.readouterr().err
        assert "cloud-server: CUDA was requested (--device cuda)" in err and "falling back to the CPU" in err
        assert "torch.cuda.is_available() is False" in err
    assert "CPUExecutionProvider" in placement.resolve("onnxruntime", "cuda").note
    with pytest.raises(Exception, match="device must be one of|unknown device"):
        placement.resolve("onnxruntime", "tpu")


def test_cuda_placements_when_a_runtime_has_it(monkeypatch, capsys):
    monkeypatch.setattr(placement, "ort_cuda_status", lambda: (True, "CUDA listed"))
    p = placement.resolve("onnxruntime", "cuda")
    assert (p.runtime, p.device, p.providers[0]) == ("onnxruntime", "cuda", "CUDAExecutionProvider")
    monkeypatch.setattr(placement, "ort_cuda_status", lambda: (False, "no CUDA provider"))
    monkeypatch.setattr(placement, "torch_cuda_status", lambda: (True, "torch.cuda.is_available() is True"))
    p = placement.resolve("onnxruntime", "cuda")
    assert (p.runtime, p.device) == ("torch", "cuda") and "no CUDA provider" in p.note
    assert "tails run in torch on CUDA" in capsys.readouterr().err
    assert placement.resolve("torch", "cuda").device == "cuda"


def test_this_onnxruntime_reports_truthfully_whether_cuda_works():
    ok, detail = placement.ort_cuda_status()
    import onnxruntime

    assert "ONNX Runtime execution providers" in detail
    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        assert not ok


def test_a_runner_given_the_cuda_provider_says_where_it_really_runs(lenet_digits):
    data = (lenet_digits.deployment_dir(DEP) / "tail.onnx").read_bytes()
    runner = onnx_runner(data, providers=placement.ORT_CUDA)
    expected = "cuda" if placement.ort_cuda_status()[0] else "cpu"
    assert runner.device == expected
    f = head_features(lenet_digits, DEP)
    np.testing.assert_allclose(runner(Features(f, pb.Tensor.FLOAT32)), torch_logits(lenet_digits, DEP, f), atol=1e-4)


def test_cloud_device_flag_and_environment(monkeypatch):
    from cloud_server.__main__ import build_parser

    assert build_parser().parse_args([]).device == "cpu"
    monkeypatch.setenv("SPLITLAB_CLOUD_DEVICE", "cuda")
    assert build_parser().parse_args([]).device == "cuda"
    monkeypatch.setenv("SPLITLAB_CLOUD_DEVICE", "gpu")
    with pytest.raises(SystemExit, match="SPLITLAB_CLOUD_DEVICE must be one of cpu, cuda"):
        build_parser()

"""The edge: head download and disk cache, runtimes and the CUDA fallback, retries, the CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch

from edge_client.client import CloudClient
from edge_client.edge import Edge, preprocess
from edge_client.heads import HeadCache
from edge_client.runtime import cuda_status, make_runner
from fixtures_grpc import ROOT, digits_server, running_server  # noqa: F401
from models import load_dataset

DEP = "lenet5-digits--relu2"


def test_head_is_cached_on_disk_by_digest(digits_server, tmp_path):
    cache = HeadCache(tmp_path)
    with CloudClient(digits_server.address) as client:
        first = cache.fetch(client, DEP)
        assert not first.from_cache and (cache.root / f"{first.sha256}.onnx").read_bytes() == first.onnx
        second = cache.fetch(client, DEP)
        assert second.from_cache and second.onnx == first.onnx and second.meta["split"] == "relu2"
        forced = cache.fetch(client, DEP, use_cache=False)
        assert not forced.from_cache
        # a damaged cached file is noticed (digest mismatch) and downloaded again
        (cache.root / f"{first.sha256}.onnx").write_bytes(b"garbage")
        repaired = cache.fetch(client, DEP)
        assert not repaired.from_cache and repaired.onnx == first.onnx


def test_head_runtimes_agree_and_cuda_falls_back_with_a_message(digits_server, tmp_path, capfd):
    with CloudClient(digits_server.address) as client:
        head = HeadCache(tmp_path).fetch(client, DEP)
    x = preprocess(load_dataset("digits").x_test[:8])
    ort_cpu = make_runner(head.onnx, head.meta)(x).features
    torch_cpu = make_runner(head.onnx, head.meta, runtime="torch")(x).features
    assert np.allclose(ort_cpu, torch_cpu, atol=1e-5)
    torch_cuda_ok, ort_cuda_ok, _ = cuda_status()
    for runtime, available in (("onnxruntime", ort_cuda_ok), ("torch", torch_cuda_ok)):
        runner = make_runner(head.onnx, head.meta, runtime=runtime, device="cuda")
        out = runner(x).features
        assert np.allclose(out, ort_cpu, atol=1e-4)
        err = capfd.readouterr().err
        if available:
            assert runner.device == "cuda"
        else:
            assert runner.device == "cpu" and "fell back to CPU" in runner.description
            assert "CUDA was requested" in err and "falling back to the CPU" in err


def test_torch_runtime_refuses_a_head_it_cannot_reproduce(digits_server, tmp_path):
    from models import SplitlabError

    with CloudClient(digits_server.address) as client:
        head = HeadCache(tmp_path).fetch(client, DEP)
    wrong = dict(head.meta, split="conv1")  # the ONNX file holds more layers than this rebuild
    with pytest.raises(SplitlabError, match="runtime onnxruntime"):
        make_runner(head.onnx, wrong, runtime="torch")


def test_calls_are_retried_until_a_late_server_comes_up(lenet_digits):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = {}

    def start_later():
        time.sleep(0.4)
        from cloud_server.server import CloudServer, ServerConfig

        started["server"] = CloudServer(ServerConfig(artifacts=str(lenet_digits.root), host="127.0.0.1",
                                                     port=port)).start()

    t = threading.Thread(target=start_later)
    t.start()
    try:
        with CloudClient(f"127.0.0.1:{port}", timeout=20) as client:
            # the first attempts fail with UNAVAILABLE and are retried with backoff
            result = client.infer(DEP, np.zeros((1, 16, 8, 8), np.float32))
        assert result.logits.shape == (1, 10)
    finally:
        t.join()
        if "server" in started:
            started["server"].stop(0.5)


@pytest.mark.e2e
def test_cli_run_and_cuda_fallback(digits_server, tmp_path):
    env = dict(os.environ, SPLITLAB_THREADS="1", SPLITLAB_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "edge_client", "run", "--cloud", digits_server.address,
                          "--deployment", DEP, "--count", "120", "--batch", "8", "--stream", "--wire", "float16",
                          "--device", "cuda", "--json", "--no-progress"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    metrics = json.loads(out.stdout)
    assert metrics["images"] == 120 and metrics["errors"] == 0 and metrics["accuracy"] > 0.7
    assert metrics["images_per_s"] > 0 and metrics["latency_p50_ms"] <= metrics["latency_p99_ms"]
    assert metrics["bytes_per_image"] < 16 * 64 * 2 + 100  # float16 on the wire
    if not torch.cuda.is_available():
        assert "falling back to the CPU" in out.stderr


def test_cli_list_and_errors_in_process(digits_server, tmp_path, capsys, monkeypatch):
    from edge_client.__main__ import main

    monkeypatch.setenv("SPLITLAB_CACHE", str(tmp_path))
    assert main(["list", "--cloud", digits_server.address]) == 0
    listed = capsys.readouterr().out
    assert DEP in listed and "lenet5-digits--conv1" in listed
    assert main(["run", "--cloud", digits_server.address, "--deployment", "nope", "--count", "1"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["run", "--cloud", digits_server.address, "--deployment", DEP, "--count", "0"]) == 2
    assert main(["run", "--cloud", digits_server.address, "--deployment", DEP, "--count", "30", "--batch", "7",
                 "--no-progress"]) == 0
    report = capsys.readouterr().out
    assert "accuracy" in report and "images/s" in report and "p99" in report and "bytes/image" in report


def test_run_dataset_reports_accuracy_and_latency(digits_server, tmp_path):
    from edge_client.run import run_dataset

    ds = load_dataset("digits")
    with CloudClient(digits_server.address) as client:
        edge = Edge(client, HeadCache(tmp_path), wire="int8")
        for stream in (False, True):
            m = run_dataset(edge, DEP, ds.x_test[:64], ds.y_test[:64], batch=4, stream=stream, progress=False)
            assert m["images"] == 64 and m["errors"] == 0 and m["accuracy"] > 0.7
            assert m["bytes_per_image"] < 16 * 64 + 100  # int8: one byte per feature

"""Serving benchmark: the split pipeline (edge -> gRPC -> cloud) against the monolithic model.

    python -m benchmarks.serving [--quick] [--seconds 0.4] [--device cpu|cuda] [--out benchmarks/results/serving.md]

For every split point of ``lenet5`` (MNIST-sized) and ``he-cifar-cnn`` (CIFAR-10-sized), random
weights (speed does not depend on them), it measures in one run on this machine:

* the monolithic model in this process, 1 thread, in torch (the first reference) and in ONNX
  Runtime (the fastest local runtime, the second reference), re-measured next to every split
  point so that drift in the machine's load hits both sides of each ratio alike (torch with 2
  threads for context);
* head + tail compute alone at batch 1 and 64 (ONNX Runtime head, the cloud's ``tail.onnx`` or
  torch tail, this process): where the time goes when the pipeline falls short of ONNX Runtime;
* the pipeline: this process is the edge (ONNX Runtime head, 1 thread) and a real ``cloud-server``
  subprocess (``--threads 1``) runs the tails, over unary and streaming calls, float32 / float16 /
  int8 wire, batch 1 and 64: latency p50/p99 with one request in flight, images/s with requests
  pipelined (2 in flight for unary calls, 4 on a stream), and request bytes per image.

Writes a Markdown report (tables of ratios against the monolithic model, the command, where the
time goes; ``--json`` adds the raw numbers). ``--quick`` measures a few split points only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"lenet5": ("mnist", (1, 28, 28)), "he-cifar-cnn": ("cifar10", (3, 32, 32))}
QUICK_SPLITS = {"lenet5": ["conv1", "relu2"], "he-cifar-cnn": ["conv11", "relu22", "relu32"]}
WIRES = ["float32", "float16", "int8"]
CALLS = ["unary", "stream"]
BATCHES = [1, 64]
INFLIGHT = {"unary": 2, "stream": 4}


# --- measurement helpers ----------------------------------------------------------------------

def timed_loop(fn, seconds: float, min_n: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(out) < min_n:
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def stats(latencies: list[float], batch: int) -> dict:
    a = np.asarray(latencies)
    return {"p50_ms": float(np.percentile(a, 50) * 1e3), "p99_ms": float(np.percentile(a, 99) * 1e3),
            "images_per_s": batch * len(a) / float(a.sum()), "n": int(len(a))}


def min_count(batch: int) -> int:
    return 30 if batch == 1 else 5


def monolithic(model, inputs: dict[int, np.ndarray], seconds: float, ort_session=None) -> dict:
    """The torch model with 1 thread (the reference) at each batch size, and the whole model in
    ONNX Runtime (``ort_session``, 1 thread: the fastest local runtime, the second reference)."""
    import torch

    out = {}
    for batch, x in inputs.items():
        xs = [torch.from_numpy(x[i:i + batch]) for i in range(0, len(x), batch)]
        it = iter(range(10**9))
        with torch.inference_mode():
            out[f"torch1_b{batch}"] = stats(timed_loop(lambda: model(xs[next(it) % len(xs)]), seconds,
                                                        min_count(batch)), batch)
        if ort_session is not None:
            xb = np.ascontiguousarray(x[:batch])
            out[f"ort_b{batch}"] = stats(timed_loop(lambda: ort_session.run(None, {"input": xb}), seconds,
                                                    min_count(batch)), batch)
    return out


def monolithic_session(model, input_shape, device: str = "cpu"):
    """The whole model as one ONNX Runtime session (CUDA provider with ``device="cuda"``)."""
    from models.deploy import export_head_onnx
    from models.onnx_runtime import head_session

    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else None
    return head_session(export_head_onnx(model, input_shape), 1, providers)


def monolithic_context(model, input_shape, inputs: dict[int, np.ndarray], seconds: float,
                       device: str = "cpu") -> dict:
    """For context: torch with 2 threads at batch 64, the whole model in ONNX Runtime, and with
    ``device="cuda"`` (where torch has it) torch on CUDA at batch 64, copies to and from the GPU
    included."""
    import torch

    from models.onnx_runtime import set_torch_threads

    out = {}
    set_torch_threads(2)
    try:
        x = torch.from_numpy(inputs[64][:64])
        with torch.inference_mode():
            out["torch2_b64"] = stats(timed_loop(lambda: model(x), seconds, min_count(64)), 64)
    finally:
        set_torch_threads(1)
    sess = monolithic_session(model, input_shape)
    for batch in (1, 64):
        x = inputs[batch][:batch]
        out[f"ort_b{batch}"] = stats(timed_loop(lambda: sess.run(None, {"input": x}), seconds, min_count(batch)), batch)
    if device == "cuda" and torch.cuda.is_available():
        import copy

        gpu = copy.deepcopy(model).to("cuda")
        x = torch.from_numpy(inputs[64][:64])
        with torch.inference_mode():
            out["torch_cuda_b64"] = stats(timed_loop(lambda: gpu(x.to("cuda")).cpu(), seconds, min_count(64), 5), 64)
    return out


def compute_only(store, dep_id: str, x: np.ndarray, seconds: float, tail_runtime: str) -> dict:
    """Head (ONNX Runtime) and tail (what the cloud runs: ``tail.onnx``, or torch) at batch 1 and
    64, both in this process: what the two pipeline stages cost without any transport."""
    from cloud_server.features import Features
    from cloud_server.tail_runtime import onnx_runner, torch_runner
    from models.loading import load_tail
    from models.onnx_runtime import head_session
    from protos import split_inference_pb2 as pb

    folder = store.deployment_dir(dep_id)
    sess = head_session(str(folder / "head.onnx"), 1)
    runner = (onnx_runner((folder / "tail.onnx").read_bytes()) if tail_runtime == "onnxruntime"
              else torch_runner(load_tail(store, dep_id)[0]))
    out = {"tail_runtime": runner.runtime}
    for batch, key in ((1, ""), (64, "_b64")):
        xb = np.ascontiguousarray(x[:batch])
        f = Features(np.ascontiguousarray(sess.run(None, {"input": xb})[0]), pb.Tensor.FLOAT32)
        head = timed_loop(lambda: sess.run(None, {"input": xb}), seconds / 2, min_count(batch))
        tail_t = timed_loop(lambda: runner(f), seconds / 2, min_count(batch))
        out[f"head_p50_ms{key}"] = float(np.median(head) * 1e3)
        out[f"tail_p50_ms{key}"] = float(np.median(tail_t) * 1e3)
    return out


def pipeline_cell(edge, dep_id: str, x: np.ndarray, batch: int, call: str, inflight: int,
                  seconds: float) -> dict:
    """Send batches of ``x`` (float32 NCHW) through edge -> cloud with ``inflight`` requests in flight."""
    runner = edge.deployment(dep_id).runner
    client = edge.client
    batches = [np.ascontiguousarray(x[i:i + batch]) for i in range(0, len(x) - batch + 1, batch)]
    stream = client.stream() if call == "stream" else None
    lat, heads, tails, sizes = [], [], [], []

    def send(i):
        t0 = time.perf_counter()
        out = runner(batches[i % len(batches)])
        t1 = time.perf_counter()
        if stream is not None:
            fut = stream.submit(dep_id, out.features, edge.wire, scale=out.scale)
        elif inflight == 1:  # a blocking call, as a latency-bound edge would make it
            fut = Future()
            fut.set_result(client.infer(dep_id, out.features, edge.wire, scale=out.scale))
        else:
            fut = client.infer_future(dep_id, out.features, edge.wire, scale=out.scale)
        return t0, t1, fut

    def finish(item, record):
        t0, t1, fut = item
        res = fut.result(timeout=600)
        if record:
            lat.append(time.perf_counter() - t0)
            heads.append(t1 - t0)
            tails.append(res.server_seconds)
            sizes.append(res.request_bytes)

    try:
        for i in range(2):  # warm-up (also builds the server's dtype-converting session)
            finish(send(i), False)
        window: deque = deque()
        n = 0
        start = time.perf_counter()
        end = start + seconds
        while time.perf_counter() < end or n < min_count(batch):
            while len(window) >= inflight:
                finish(window.popleft(), inflight == 1)
            window.append(send(n))
            n += 1
        while window:
            finish(window.popleft(), inflight == 1)
        elapsed = time.perf_counter() - start
    finally:
        if stream is not None:
            stream.close()
    out = {"images_per_s": n * batch / elapsed, "n": n}
    if inflight == 1:
        out.update({"p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
                    "head_ms": float(np.median(heads) * 1e3), "tail_ms": float(np.median(tails) * 1e3),
                    "bytes_per_image": float(np.median(sizes) / batch)})
    return out


# --- setup ------------------------------------------------------------------------------------

def build_store(root: Path, splits: dict[str, list[str]], archs: dict = MODELS):
    """Random-weight models of ``archs`` (arch -> (dataset, input shape)) deployed at ``splits``."""
    import torch

    from models import ArtifactStore, build_model
    from models.deploy import deploy

    store = ArtifactStore(root)
    models = {}
    for arch, (dataset, shape) in archs.items():
        torch.manual_seed(0)
        model = build_model(arch, 10, shape).eval()
        manifest = {"arch": arch, "dataset": dataset, "num_classes": 10, "input_shape": list(shape),
                    "options": {"dropout": 0.0}, "seed": 0, "model_id": f"{arch}-bench",
                    "preprocessing": "uint8 HWC image -> float32 CHW, divided by 255 (range [0, 1])"}
        store.save_model(f"{arch}-bench", model.state_dict(), manifest)
        for split in splits.get(arch, []):
            deploy(store, f"{arch}-bench", split, check_inputs=torch.rand(4, *shape))
        models[arch] = model
    return store, models


def test_images(arch: str) -> np.ndarray:
    """64 float32 test images of the model's dataset (uniform noise if it is not installed)."""
    from models import SplitlabError, load_dataset
    from edge_client.edge import preprocess

    dataset, shape = MODELS[arch]
    try:
        return preprocess(load_dataset(dataset).x_test[:64])
    except SplitlabError:
        return np.random.default_rng(0).random((64, *shape), dtype=np.float32)


class CloudProcess:
    """A real ``cloud-server`` subprocess on a free loopback port (``address`` once it serves)."""

    def __init__(self, artifacts: Path, runtime: str, device: str = "cpu", threads: int = 1):
        env = dict(os.environ, SPLITLAB_THREADS=str(threads), PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen([sys.executable, "-m", "cloud_server", "--host", "127.0.0.1", "--port", "0",
                                      "--artifacts", str(artifacts), "--threads", str(threads), "--runtime", runtime,
                                      "--device", device, "--log-level", "warning"],
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        self.address = None
        self.placement = ""  # what the server says runs its tails ("onnxruntime on cuda")
        ready = threading.Event()

        def drain():
            for line in self.proc.stderr:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "serving":
                    self.address = "127.0.0.1:" + event["address"].rsplit(":", 1)[1]
                    self.placement = f"{event.get('runtime')} on {event.get('device', 'cpu')}"
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(120) or self.address is None:
            self.proc.kill()
            raise RuntimeError("cloud-server did not start")

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(60)


# --- the run ----------------------------------------------------------------------------------

def run(args) -> dict:
    from edge_client.client import CloudClient
    from edge_client.edge import Edge
    from edge_client.heads import HeadCache
    from models import split_points
    from models.onnx_runtime import set_torch_threads

    set_torch_threads(1)
    splits = QUICK_SPLITS if args.quick else {a: split_points(a) for a in MODELS}
    if args.models:
        splits = {a: s for a, s in splits.items() if a in args.models}
    results = {"settings": vars(args), "machine": machine(), "load_before": os.getloadavg(), "models": {}}
    with tempfile.TemporaryDirectory(prefix="serving-bench-") as tmp:
        tmp = Path(tmp)
        print("deploying random-weight models ...", flush=True)
        store, models = build_store(tmp / "artifacts", {a: splits.get(a, []) for a in MODELS})
        cloud = CloudProcess(tmp / "artifacts", args.tail_runtime, args.device)
        try:
            results["cloud_tails"] = cloud.placement
            client = CloudClient(cloud.address, timeout=600)
            client.wait_ready(60)
            for arch, arch_splits in splits.items():
                shape = MODELS[arch][1]
                x = test_images(arch)
                inputs = {1: x, 64: x}
                model = models[arch]
                entry = {"context": monolithic_context(model, shape, inputs, args.seconds, args.device), "splits": {}}
                mono_ort = monolithic_session(model, shape)
                results["models"][arch] = entry
                print(f"{arch}: monolithic context {short(entry['context'])}", flush=True)
                edges = {w: Edge(client, HeadCache(tmp / "heads"), edge_runtime(args.device), args.device, wire=w)
                         for w in WIRES}
                for split in arch_splits:
                    dep_id = f"{arch}-bench--{split}"
                    floor = timed_loop(lambda: client.health(), args.seconds / 2, 50)
                    row = {"mono": monolithic(model, inputs, args.seconds, mono_ort),
                           "grpc_floor_ms": float(np.median(floor) * 1e3),
                           "compute": compute_only(store, dep_id, x, args.seconds, args.tail_runtime),
                           "cells": {}}
                    for call in CALLS:
                        for wire in WIRES:
                            for batch in BATCHES:
                                cell = pipeline_cell(edges[wire], dep_id, x, batch, call, 1, args.seconds)
                                tp = pipeline_cell(edges[wire], dep_id, x, batch, call, INFLIGHT[call], args.seconds)
                                cell["images_per_s"] = tp["images_per_s"]
                                cell["pipelined_n"] = tp["n"]
                                row["cells"][f"{call}/{wire}/b{batch}"] = cell
                    entry["splits"][split] = row
                    entry["edge_head"] = edges["float32"].deployment(dep_id).runner.description
                    print(f"{arch} {split}: {summary_line(row)}", flush=True)
            client.close()
        finally:
            results["cloud_exit"] = cloud.stop()
    results["load_after"] = os.getloadavg()
    return results


def edge_runtime(device: str) -> str:
    """ONNX Runtime for the edge's heads, or torch on a GPU machine whose onnxruntime has no CUDA."""
    if device == "cpu":
        return "onnxruntime"
    from cloud_server.placement import ort_cuda_status

    return "onnxruntime" if ort_cuda_status()[0] else "torch"


def machine() -> dict:
    import onnxruntime
    import torch

    cpu = ""
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu or platform.processor(), "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def short(ctx: dict) -> str:
    return ", ".join(f"{k} {v['images_per_s']:.0f} img/s" for k, v in ctx.items())


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def best_b64(row: dict) -> tuple[str, float]:
    """The batch-64 configuration with the most images/s, and that rate."""
    return max(((k[:-4], c["images_per_s"]) for k, c in row["cells"].items() if k.endswith("b64")),
               key=lambda kc: kc[1])


def summary_line(row: dict) -> str:
    mono64 = row["mono"]["torch1_b64"]["images_per_s"]
    ort64 = row["mono"].get("ort_b64", {}).get("images_per_s", float("nan"))
    mono1 = row["mono"]["torch1_b1"]["p50_ms"]
    _, best = best_b64(row)
    p50 = row["cells"]["unary/float32/b1"]["p50_ms"]
    comp = row["compute"]["head_p50_ms"] + row["compute"]["tail_p50_ms"]
    return (f"b64 best {ratio(best, mono64):.2f}x mono torch, {ratio(best, ort64):.2f}x mono ONNX Runtime; "
            f"b1 unary f32 p50 {p50:.2f} ms (mono {mono1:.2f}, head+tail {comp:.2f})")


# --- report -----------------------------------------------------------------------------------

def fmt(v: float, digits: int = 2) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def write_report(path: Path, results: dict, command: str) -> None:
    m = results["machine"]
    lines = [
        "# Serving benchmark: split inference over gRPC vs the monolithic model",
        "",
        f"Command: `{command}`  ",
        f"Machine: {m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']}, "
        f"ONNX Runtime {m['onnxruntime']}. Load average before/after: "
        f"{', '.join(f'{v:.1f}' for v in results['load_before'])} / {', '.join(f'{v:.1f}' for v in results['load_after'])} "
        "(the machine is shared: single figures vary run to run; ratios are taken against the "
        "monolithic model measured next to each split point).  ",
        f"Edge: this process, 1 thread, heads on {'; '.join(sorted({e.get('edge_head', '') for e in results['models'].values()}))}. "
        f"Cloud: tails on {results.get('cloud_tails', '')}, `cloud-server --threads 1 --runtime "
        f"{results['settings']['tail_runtime']} --device {results['settings'].get('device', 'cpu')}` in a subprocess "
        "(edge heads on the same device). References: the whole torch model (\"mono\") and the whole model in ONNX "
        "Runtime, in the edge's process, 1 thread, on the CPU. Random weights. Latency: one request in flight, from the start of "
        "the head to the reply. images/s: requests pipelined (2 in flight for unary calls, 4 on a stream).",
        "",
    ]
    lines += goals_section(results)
    lines += context_section(results)
    lines += batch64_section(results)
    lines += against_ort_section(results)
    lines += batch1_section(results)
    lines += where_time_goes(results)
    lines += detail_section(results)
    path.write_text("\n".join(lines) + "\n")


def _cells(results):
    for arch, entry in results["models"].items():
        for split, row in entry["splits"].items():
            yield arch, split, row


def goals_section(results) -> list[str]:
    tp_total = tp_met = lat_total = lat_met = 0
    misses, lat_misses = [], []
    for arch, split, row in _cells(results):
        mono64 = row["mono"]["torch1_b64"]["images_per_s"]
        for key, c in row["cells"].items():
            if key.endswith("b64"):
                tp_total += 1
                r = ratio(c["images_per_s"], mono64)
                tp_met += r >= 1.0
                if r < 1.0:
                    misses.append(f"{arch} {split} {key[:-4]} {r:.2f}x")
            else:
                lat_total += 1
                comp = row["compute"]["head_p50_ms"] + row["compute"]["tail_p50_ms"]
                over = c["p50_ms"] - comp
                lat_met += over <= 1.0
                if over > 1.0:
                    lat_misses.append(f"{arch} {split} {key[:-3]} +{over:.2f} ms")
    out = ["## Goals", "",
           f"- Batch 64 throughput >= 1.0x the monolithic model in torch: **{tp_met} of {tp_total}** "
           "(split point x call x wire) configurations."]
    if misses:
        out.append(f"  Missed: {'; '.join(misses[:30])}{' ...' if len(misses) > 30 else ''}.")
    splits = [(arch, split, row) for arch, split, row in _cells(results) if "ort_b64" in row["mono"]]
    ort_met = [(arch, split, ratio(best_b64(row)[1], row["mono"]["ort_b64"]["images_per_s"]))
               for arch, split, row in splits]
    out.append(f"- Batch 64 throughput (best configuration) >= 1.0x the monolithic model in ONNX Runtime: "
               f"**{sum(r >= 1.0 for *_, r in ort_met)} of {len(ort_met)}** split points "
               f"({', '.join(f'{a} {sp} {r:.2f}x' for a, sp, r in ort_met)}); see \"Against the monolithic "
               "model in ONNX Runtime\" for where the time goes.")
    out.append(f"- Batch 1 p50 latency within 1 ms of head + tail compute: **{lat_met} of {lat_total}** configurations.")
    if lat_misses:
        out.append(f"  Missed: {'; '.join(lat_misses[:30])}{' ...' if len(lat_misses) > 30 else ''}.")
    return out + [""]


def context_section(results) -> list[str]:
    out = ["## The monolithic model (this process)", "",
           "| model | torch 1 thread b1 p50 / p99 ms | b1 img/s | b64 img/s | b64 p50 / p99 ms | torch 2 threads b64 img/s | ONNX Runtime b1 p50 ms | ONNX Runtime b64 img/s |",
           "|---|---|---|---|---|---|---|---|"]
    for arch, entry in results["models"].items():
        monos = [row["mono"] for row in entry["splits"].values()]
        if not monos:
            continue
        med = lambda key, f: statistics.median(mo[key][f] for mo in monos)  # noqa: E731
        ctx = entry["context"]
        out.append(f"| {arch} | {fmt(med('torch1_b1', 'p50_ms'))} / {fmt(med('torch1_b1', 'p99_ms'))} | "
                   f"{med('torch1_b1', 'images_per_s'):.0f} | {med('torch1_b64', 'images_per_s'):.0f} | "
                   f"{fmt(med('torch1_b64', 'p50_ms'), 1)} / {fmt(med('torch1_b64', 'p99_ms'), 1)} | "
                   f"{ctx['torch2_b64']['images_per_s']:.0f} | {fmt(ctx['ort_b1']['p50_ms'])} | {ctx['ort_b64']['images_per_s']:.0f} |")
    out += ["", "(Medians over the measurements taken next to each split point.)"]
    out += [f"The whole {arch} in torch on CUDA, batch 64: {entry['context']['torch_cuda_b64']['images_per_s']:.0f} img/s."
            for arch, entry in results["models"].items() if "torch_cuda_b64" in entry["context"]]
    out += [""]
    return out


def batch64_section(results) -> list[str]:
    cols = [(c, w) for c in CALLS for w in WIRES]
    out = ["## Batch 64: throughput and latency as ratios to the monolithic model", "",
           "images/s ratio (higher is better) | p50 latency ratio (lower is better); float32 bytes per image.", "",
           "| model | split | f32 bytes/img | " + " | ".join(f"{c} {w} img/s" for c, w in cols) + " | "
           + " | ".join(f"{c} {w} p50" for c, w in cols) + " |",
           "|---|---|---|" + "---|" * (2 * len(cols))]
    for arch, split, row in _cells(results):
        mono = row["mono"]["torch1_b64"]
        cells = row["cells"]
        tp = [fmt(ratio(cells[f"{c}/{w}/b64"]["images_per_s"], mono["images_per_s"])) for c, w in cols]
        lat = [fmt(ratio(cells[f"{c}/{w}/b64"]["p50_ms"], mono["p50_ms"])) for c, w in cols]
        out.append(f"| {arch} | {split} | {cells['unary/float32/b64']['bytes_per_image']:.0f} | "
                   + " | ".join(tp) + " | " + " | ".join(lat) + " |")
    return out + [""]


def against_ort_section(results) -> list[str]:
    """The pipeline at batch 64 against the whole model in ONNX Runtime, with the stages' costs."""
    out = ["## Against the monolithic model in ONNX Runtime (batch 64)", "",
           "The whole model in one ONNX Runtime session, 1 thread, in the edge's process, measured next to each "
           "split point, is the fastest local way to run it. The pipeline overlaps the edge's head with the "
           "cloud's tail on different cores, so its time per batch can approach the slower stage alone: "
           "max(head, tail) plus the share of transport that does not overlap. ms per batch of 64: mono = "
           "the monolithic ONNX Runtime model; head and tail = each stage alone in one process (ONNX "
           "Runtime head, the cloud's tail runtime); transport = unary float32 p50 with one request in flight "
           "minus head and tail as timed in the pipeline (encoding, gRPC on loopback, parsing, reply); best = "
           "the best pipelined configuration. bound: the slower stage and the transport as fractions of mono; "
           "where the slower stage alone is close to 1.0x, the split leaves the other core little to do (the "
           "pipeline can then win only with more cloud threads or a faster cloud), and where it is well below, "
           "what is missing is transport that does not overlap.", "",
           "| model | split | mono ms | head ms | tail ms | transport ms | best ms | best config | x mono ONNX Runtime | bound |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for arch, split, row in _cells(results):
        ort = row["mono"].get("ort_b64")
        comp = row["compute"]
        if ort is None or "head_p50_ms_b64" not in comp:
            continue
        mono_ms = 64e3 / ort["images_per_s"]
        head, tail = comp["head_p50_ms_b64"], comp["tail_p50_ms_b64"]
        c = row["cells"]["unary/float32/b64"]
        transport = c["p50_ms"] - c["head_ms"] - c["tail_ms"]
        key, best = best_b64(row)
        r = ratio(best, ort["images_per_s"])
        stage = "head" if head >= tail else "tail"
        bound = (f"{'beats it; ' if r >= 1.0 else ''}{stage} alone {max(head, tail) / mono_ms:.2f}x mono, "
                 f"transport {transport / mono_ms:.2f}x")
        out.append(f"| {arch} | {split} | {fmt(mono_ms)} | {fmt(head)} | {fmt(tail)} | {fmt(transport)} | "
                   f"{fmt(64e3 / best)} | {key} | {fmt(r)} | {bound} |")
    return out + [""]


def batch1_section(results) -> list[str]:
    cols = [(c, w) for c in CALLS for w in WIRES]
    out = ["## Batch 1: latency against head + tail compute", "",
           "p50 ms per configuration; \"compute\" is the ONNX Runtime head plus the cloud's tail runtime at "
           "batch 1 in one process; \"over\" is the unary float32 p50 minus compute (goal: <= 1 ms); "
           "the last columns are images/s ratios to the monolithic model at batch 1.", "",
           "| model | split | mono p50 | compute | gRPC floor | " + " | ".join(f"{c} {w}" for c, w in cols)
           + " | over | unary f32 img/s | stream f32 img/s |",
           "|---|---|---|---|---|" + "---|" * len(cols) + "---|---|---|"]
    for arch, split, row in _cells(results):
        mono = row["mono"]["torch1_b1"]
        comp = row["compute"]["head_p50_ms"] + row["compute"]["tail_p50_ms"]
        cells = row["cells"]
        p50 = [fmt(cells[f"{c}/{w}/b1"]["p50_ms"]) for c, w in cols]
        over = cells["unary/float32/b1"]["p50_ms"] - comp
        out.append(f"| {arch} | {split} | {fmt(mono['p50_ms'])} | {fmt(comp)} | {fmt(row['grpc_floor_ms'])} | "
                   + " | ".join(p50)
                   + f" | {over:+.2f} | {fmt(ratio(cells['unary/float32/b1']['images_per_s'], mono['images_per_s']))} | "
                   f"{fmt(ratio(cells['stream/float32/b1']['images_per_s'], mono['images_per_s']))} |")
    return out + [""]


def where_time_goes(results) -> list[str]:
    out = ["## Where the time goes", "",
           "Unary float32, one request in flight: the edge's head, the cloud's tail (as the server timed "
           "it) and everything else (request encoding, gRPC on loopback, parsing and validation, the hand-off "
           "to the compute thread, the reply), medians in ms.", "",
           "| model | split | batch | head | tail | other | total p50 | request MiB |", "|---|---|---|---|---|---|---|---|"]
    for arch, split, row in _cells(results):
        for batch in BATCHES:
            c = row["cells"][f"unary/float32/b{batch}"]
            other = c["p50_ms"] - c["head_ms"] - c["tail_ms"]
            out.append(f"| {arch} | {split} | {batch} | {fmt(c['head_ms'])} | {fmt(c['tail_ms'])} | {fmt(other)} | "
                       f"{fmt(c['p50_ms'])} | {c['bytes_per_image'] * batch / 2**20:.2f} |")
    return out + [""] + NOTES + [""]


NOTES = [
    "Notes on the design choices these numbers reflect:",
    "",
    "- The cloud runs tails with ONNX Runtime (each tail is exported to ONNX when first used and checked "
    "against torch to 1e-4); ONNX Runtime runs these layers several times faster than torch on this CPU, "
    "which is where most of the split pipeline's advantage over the monolithic torch model comes from "
    "(compare the ONNX Runtime column of the monolithic table). `--tail-runtime torch` measures the "
    "torch-tail server.",
    "- Requests are serialized straight from the head's output buffer (one copy, byte-identical to "
    "protobuf's encoding) and parsed on the server without copying the features; float16 and int8 are "
    "produced inside the edge's ONNX graph and converted back inside the cloud's, so the reduced-precision "
    "wire costs no numpy casts.",
    "- One compute thread runs every tail (one thread team), merging requests that queue up while it is "
    "busy; with 4 requests in flight on a stream at batch 1 this is what lifts throughput. A lone unary "
    "request runs its tail on the gRPC handler thread instead (no hand-off).",
    "- At batch 1 the fixed cost of a gRPC call between two Python processes (the \"gRPC floor\" column: "
    "a grpc.health.v1 Check against the same server, measured next to each split point; it grows with the "
    "machine's load, since every call wakes several threads in two processes) is most of \"other\"; the "
    "rest is per-request Python (encoding, parsing, validation, the reply), about 0.1 ms when quiet.",
    "- head, tail and total are medians taken separately, so \"other\" can come out slightly negative.",
    "- Pipelining (the head of the next batch runs on the edge while the cloud runs the tail of the "
    "previous one) is what lets two single-threaded processes beat one single-threaded model; with "
    "one request in flight the stages add up instead.",
]


def detail_section(results) -> list[str]:
    out = ["## Every configuration", "",
           "| model | split | call | wire | batch | img/s | x mono | p50 ms | x mono | p99 ms | x mono | bytes/img | head ms | tail ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for arch, split, row in _cells(results):
        for key, c in row["cells"].items():
            call, wire, b = key.split("/")
            batch = int(b[1:])
            mono = row["mono"][f"torch1_b{batch}"]
            out.append(f"| {arch} | {split} | {call} | {wire} | {batch} | {c['images_per_s']:.0f} | "
                       f"{fmt(ratio(c['images_per_s'], mono['images_per_s']))} | {fmt(c['p50_ms'])} | "
                       f"{fmt(ratio(c['p50_ms'], mono['p50_ms']))} | {fmt(c['p99_ms'])} | "
                       f"{fmt(ratio(c['p99_ms'], mono['p99_ms']))} | {c['bytes_per_image']:.0f} | "
                       f"{fmt(c['head_ms'])} | {fmt(c['tail_ms'])} |")
    return out + [""]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a few split points only (about 2 minutes)")
    p.add_argument("--seconds", type=float, default=None,
                   help="seconds per measurement (default 0.4, 0.25 with --quick; more requests are sent "
                        "when fewer than 30 (batch 1) or 5 (batch 64) fit)")
    p.add_argument("--models", nargs="*", choices=list(MODELS), help="only these models")
    p.add_argument("--tail-runtime", choices=["onnxruntime", "torch"], default="onnxruntime",
                   help="the cloud server's --runtime (default onnxruntime)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="edge heads and cloud tails on this device (the cloud's --device; the monolithic "
                        "references stay on the CPU, 1 thread); default cpu")
    p.add_argument("--out", default=None, help="Markdown report (default benchmarks/results/serving[-quick].md)")
    p.add_argument("--json", default=None, help="also write the raw numbers to this JSON file")
    args = p.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.25 if args.quick else 0.4
    os.environ["SPLITLAB_THREADS"] = "1"
    out = Path(args.out) if args.out else RESULTS / ("serving-quick.md" if args.quick else "serving.md")
    results = run(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m benchmarks.serving" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    write_report(out, results, command)
    print(f"wrote {out}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
        print(f"wrote {args.json}")
    return 0 if results.get("cloud_exit") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

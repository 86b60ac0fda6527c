"""Batch-64 tail throughput by runtime and device: what ``cloud-server --device cuda`` buys.

    python -m benchmarks.tail_devices [--models he-cifar-cnn resnet18] [--splits relu11 layer1 ...]
        [--batch 64] [--seconds 1] [--cpu-threads 1 16] [--out benchmarks/results/tail_devices.md] [--json F]

On a GPU machine the edge ran its head on CUDA while every tail ran on one CPU thread, the
bottleneck of the pipeline (92 ms per batch of 64 at he-cifar-cnn relu11). For each split point
this deploys the model (random weights) and times the cloud's own tail runners (``cloud_server.
tail_runtime``, exactly what the server calls, host-to-device copies included) on float32 features
of a batch: ONNX Runtime and torch on the CPU with each ``--cpu-threads`` count, ONNX Runtime's CUDA
provider and torch on CUDA where available (else "n/a" with the reason). On a machine without
CUDA it still runs, so the script is tested here; ``benchmarks/serving_gpu.sh`` runs it on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.serving import MODELS, RESULTS, build_store, machine, timed_loop

ARCHS = dict(MODELS, resnet18=("cifar10", (3, 32, 32)))
DEFAULT_SPLITS = {"he-cifar-cnn": ["relu11", "pool1", "relu22", "relu32"], "resnet18": ["stem", "layer1", "layer2", "layer3"],
                  "lenet5": ["conv1", "relu2"]}


def runners(store, dep_id: str, cpu_threads: list[int]) -> dict:
    """Column name -> (a tail runner or the reason there is none, torch's thread count for it)."""
    from cloud_server.placement import ORT_CUDA, ort_cuda_status
    from cloud_server.tail_runtime import onnx_runner, torch_runner
    from models.env import torch_cuda_status
    from models.loading import load_tail

    onnx = (store.deployment_dir(dep_id) / "tail.onnx").read_bytes()
    tail, _ = load_tail(store, dep_id)
    out: dict = {}
    for t in cpu_threads:
        out[f"onnxruntime cpu {t}t"] = (onnx_runner(onnx, t), 1)
        out[f"torch cpu {t}t"] = (torch_runner(tail), t)
    ok, detail = ort_cuda_status()
    out["onnxruntime cuda"] = (onnx_runner(onnx, 1, ORT_CUDA) if ok else detail, 1)
    ok, detail = torch_cuda_status()
    out["torch cuda"] = (torch_runner(tail, device="cuda") if ok else detail, 1)
    return out


def time_runner(runner, f, seconds: float, batch: int) -> dict:
    for _ in range(3 if runner.device == "cuda" else 1):  # warm-up: CUDA kernels, cuDNN's choice, ORT's arena
        runner(f)
    lat = timed_loop(lambda: runner(f), seconds, 3, warmup=0)  # resnet18's stem tail: ~1 s a batch on 1 CPU thread
    return {"ms": float(np.median(lat) * 1e3), "images_per_s": batch / float(np.median(lat))}


def run(args) -> dict:
    from cloud_server.features import Features
    from models.onnx_runtime import head_session, set_torch_threads
    from protos import split_inference_pb2 as pb

    splits = {a: (args.splits and [s for s in args.splits if s in _points(a)]) or DEFAULT_SPLITS[a] for a in args.models}
    results = {"settings": vars(args), "machine": machine(), "load_before": os.getloadavg(), "rows": []}
    with tempfile.TemporaryDirectory(prefix="tail-devices-") as tmp:
        store, _ = build_store(Path(tmp) / "artifacts", splits, {a: ARCHS[a] for a in args.models})
        for arch, arch_splits in splits.items():
            images = np.random.default_rng(0).random((args.batch, *ARCHS[arch][1]), dtype=np.float32)
            for split in arch_splits:
                dep_id = f"{arch}-bench--{split}"
                head = head_session(str(store.deployment_dir(dep_id) / "head.onnx"), 1)
                feats = np.ascontiguousarray(head.run(None, {"input": images})[0])
                f = Features(feats, pb.Tensor.FLOAT32)
                row = {"arch": arch, "split": split, "feature_shape": list(feats.shape[1:]), "cells": {}}
                for name, (runner, threads) in runners(store, dep_id, args.cpu_threads).items():
                    if isinstance(runner, str):
                        row["cells"][name] = {"missing": runner}
                        continue
                    set_torch_threads(threads)
                    row["cells"][name] = time_runner(runner, f, args.seconds, args.batch)
                    row["cells"][name]["device"] = runner.device
                set_torch_threads(1)
                results["rows"].append(row)
                print(f"{arch} {split}: " + ", ".join(f"{k} {c['ms']:.2f} ms" for k, c in row["cells"].items()
                                                      if "ms" in c), flush=True)
    results["load_after"] = os.getloadavg()
    return results


def _points(arch: str) -> list[str]:
    from models import split_points

    return split_points(arch)


def report(results: dict, command: str) -> str:
    m = results["machine"]
    rows = results["rows"]
    cols = list(rows[0]["cells"]) if rows else []
    base = cols[0] if cols else ""
    lines = ["# Tail throughput by runtime and device (batch %d)" % results["settings"]["batch"], "",
             f"Command: `{command}`  ",
             f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}, ONNX Runtime {m['onnxruntime']}. "
             f"Load average before/after: {', '.join(f'{v:.1f}' for v in results['load_before'])} / "
             f"{', '.join(f'{v:.1f}' for v in results['load_after'])}.  ",
             "The cloud's own tail runners on float32 features (host-to-device and back included), random "
             f"weights, median ms per batch and images/s; the last column is the fastest CUDA runner against `{base}` "
             "(the cloud's default, 1 thread).", "",
             "| model | split | features | " + " | ".join(cols) + " | best CUDA x " + base + " |",
             "|---|---|---|" + "---|" * (len(cols) + 1)]
    missing = {}
    for r in rows:
        cells = []
        for c in cols:
            cell = r["cells"][c]
            if "missing" in cell:
                missing[c] = cell["missing"]
                cells.append("n/a")
            else:
                note = "" if not c.endswith("cuda") or cell["device"] == "cuda" else " (fell back to cpu)"
                cells.append(f"{cell['ms']:.2f} ms, {cell['images_per_s']:.0f}/s{note}")
        cuda = [r["cells"][c]["images_per_s"] for c in cols
                if c.endswith("cuda") and r["cells"][c].get("device") == "cuda"]
        best = f"{max(cuda) / r['cells'][base]['images_per_s']:.1f}x" if cuda else "n/a"
        lines.append(f"| {r['arch']} | {r['split']} | {'x'.join(map(str, r['feature_shape']))} | "
                     + " | ".join(cells) + f" | {best} |")
    if missing:
        lines += [""] + [f"- {c}: n/a because {why}" for c, why in missing.items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tail_devices", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", choices=list(ARCHS), default=["he-cifar-cnn", "resnet18"])
    p.add_argument("--splits", nargs="*", help="only these split points (of whichever model has them)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seconds", type=float, default=1.0, help="seconds per runner and split point")
    p.add_argument("--cpu-threads", type=int, nargs="+", default=[1], help="CPU thread counts to time (default 1)")
    p.add_argument("--out", default=str(RESULTS / "tail_devices.md"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("SPLITLAB_THREADS", "1")
    t0 = time.perf_counter()
    results = run(args)
    command = "python -m benchmarks.tail_devices" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report(results, command))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {args.out} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reference-model training benchmark: K small models one by one vs together (vmap).

LiRA-style reference models (each on a random half of a pool of training images) are trained
twice through ``models.reference.obtain_models``, into two fresh stores: one by one
(``together=False``) and vmapped in one group (``together=True``). Prints the seconds of each,
their ratio, and how far the two sets of models are apart (largest logit difference on test
images, prediction agreement): the two must train the same models.

    python -m benchmarks.reference_training [--dataset mnist] [--models 16] [--pool 4000] [--epochs 2]
        [--arch lenet5] [--device cpu|cuda] [--threads 1] [--out FILE.md]

``--out`` also writes the lines to a Markdown report with the command, the machine and its load
average at the start and the end (timings on a shared machine depend on it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import tempfile
import time

import numpy as np
import torch

from models import ArtifactStore, load_dataset, to_tensor
from models.env import resolve_device
from models.onnx_runtime import set_torch_threads
from models.reference import obtain_models
from models.training import TrainOptions


def half_specs(arch: str, dataset: str, n_train: int, models: int, pool: int, epochs: int) -> list[TrainOptions]:
    rng = np.random.default_rng(0)
    pool_idx = rng.choice(n_train, min(pool, n_train), replace=False)
    return [TrainOptions(arch, dataset, epochs=epochs, seed=k,
                         members=tuple(rng.choice(pool_idx, len(pool_idx) // 2, replace=False)))
            for k in range(models)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.reference_training", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="lenet5")
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--models", type=int, default=16)
    p.add_argument("--pool", type=int, default=4000, help="images the halves are drawn from")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--device", default=None, help="cpu or cuda [SPLITLAB_DEVICE, default cpu]")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="also write the results to this Markdown file")
    args = p.parse_args(argv)
    load_before = os.getloadavg()
    lines: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)
    set_torch_threads(args.threads)
    device = resolve_device(args.device, "reference_training")
    ds = load_dataset(args.dataset)
    specs = half_specs(args.arch, args.dataset, len(ds.x_train), args.models, args.pool, args.epochs)
    x = to_tensor(ds.x_test[:512]).to(device)
    seconds, logits = {}, {}
    for together in (False, True):
        with tempfile.TemporaryDirectory() as root:
            t0 = time.perf_counter()
            got = obtain_models(ArtifactStore(root), specs, device, progress=False, dataset=ds, together=together)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds[together] = time.perf_counter() - t0
            with torch.no_grad():
                logits[together] = torch.stack([m(x) for m, _ in got])
            acc = np.mean([m["test_accuracy"] for _, m in got])
            # the group's time once when together, else each model's; the rest is evaluation and storing
            fitting = got[0][1]["train_seconds"] if together else sum(m["train_seconds"] for _, m in got)
        say(f"{'together (vmap)' if together else 'one by one':<16} {seconds[together]:7.1f} s "
            f"(training {fitting:6.1f} s)  mean test accuracy {acc:.4f}")
    gap = (logits[False] - logits[True]).abs().max().item()
    agree = (logits[False].argmax(-1) == logits[True].argmax(-1)).float().mean().item()
    say(f"{args.models} x {args.arch} on {args.dataset}, {args.pool // 2} images each, {args.epochs} epochs, "
        f"{device}, {args.threads} thread(s): vmap {seconds[False] / seconds[True]:.2f}x the speed of one by one; "
        f"max logit difference {gap:.1e}, predictions agree {agree:.4f}")
    if args.out:
        command = "python -m benchmarks.reference_training " + shlex.join(sys.argv[1:] if argv is None else argv)
        load = ", ".join(f"{a:.1f} -> {b:.1f}" for a, b in zip(load_before, os.getloadavg()))
        with open(args.out, "w") as f:
            f.write(f"# Reference models: one by one vs vmapped ({args.arch}, {device})\n\nCommand: `{command}`  \n"
                    f"Machine: {platform.machine()}, {os.cpu_count()} cores; load average (1, 5, 15 min) at the "
                    f"start -> end: {load}.\n\n```\n" + "\n".join(lines) + "\n```\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Training benchmark: seconds per epoch and accuracy reached for the reference targets.

Trains each target of the config (by default ``lenet5`` on MNIST and ``he-cifar-cnn`` on
CIFAR-10, the whole training set, the documented budget), stores it in the artifact store under a
fixed id so that the attack benchmarks reuse it, and writes a Markdown table to
``benchmarks/results/training.md``. A target that already exists in the store is reused and its
recorded figures are reported (pass ``--retrain`` to train again).

    python -m benchmarks.training [--config benchmarks/configs/training.yaml] [--retrain]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from pathlib import Path

import yaml

from models import ArtifactStore
from models.onnx_runtime import set_torch_threads
from models.training import TrainOptions, train

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "training.yaml"


def ensure_target(store: ArtifactStore, spec: dict, retrain: bool = False, progress: bool = True) -> dict:
    """Train the target described by ``spec`` (id, arch, dataset, options) unless it is stored."""
    model_id = spec["id"]
    if store.model_dir(model_id).exists() and not retrain:
        return store.manifest(model_id)
    opts = TrainOptions(arch=spec["arch"], dataset=spec["dataset"], **spec.get("options", {}))
    model, manifest = train(opts, progress=progress)
    manifest["model_id"] = model_id
    store.save_model(model_id, model.state_dict(), manifest, overwrite=retrain)
    return manifest


def report(rows: list[dict], threads: int, command: str) -> str:
    lines = [
        "# Training benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch threads {threads}.",
        "",
        "| model id | arch | dataset | train images | epochs | budget | s/epoch (median) | total s | train acc | test acc | target | met |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, spec = r["manifest"], r["spec"]
        opts = m["options"]
        budget = f"Adam lr {opts['lr']:g}, batch {opts['batch_size']}, cosine" + (", crop+flip" if opts["augment"] else "")
        target = spec.get("target_test_accuracy")
        met = "" if target is None else ("yes" if m["test_accuracy"] >= target else "**no**")
        lines.append(
            f"| {m['model_id']} | {m['arch']} | {m['dataset']} | {len(m['members']['indices'])} | {opts['epochs']} | "
            f"{budget} | {statistics.median(m['epoch_seconds']):.1f} | {m['train_seconds']:.0f} | "
            f"{m['train_accuracy']:.4f} | {m['test_accuracy']:.4f} | {'' if target is None else f'>= {target}'} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--artifacts", default=os.environ.get("SPLITLAB_ARTIFACTS", "artifacts"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("SPLITLAB_THREADS", os.cpu_count() or 1)))
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--only", help="train only the target with this id")
    parser.add_argument("--out", default=str(RESULTS / "training.md"))
    args = parser.parse_args(argv)
    set_torch_threads(args.threads)
    config = yaml.safe_load(Path(args.config).read_text())
    store = ArtifactStore(args.artifacts)
    rows = []
    for spec in config["targets"]:
        if args.only and spec["id"] != args.only:
            continue
        manifest = ensure_target(store, spec, args.retrain)
        rows.append({"spec": spec, "manifest": manifest})
        print(f"{spec['id']}: test accuracy {manifest['test_accuracy']:.4f}", flush=True)
    command = "python -m benchmarks.training" + ("" if args.config == str(DEFAULT_CONFIG) else f" --config {args.config}")
    Path(args.out).write_text(report(rows, args.threads, command))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

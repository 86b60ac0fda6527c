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
    curves = [(r["manifest"]["model_id"], r["manifest"].get("epoch_test_accuracy")) for r in rows]
    curves = [(name, c) for name, c in curves if c]
    if curves:
        lines += ["", "Test accuracy after each epoch (`eval_each_epoch`):", ""]
        for name, curve in curves:
            marks = sorted({1, len(curve), *range(5, len(curve), 5)})
            lines.append(f"- {name}: " + ", ".join(f"epoch {e} {curve[e - 1]:.4f}" for e in marks))
        lines += ["", "![training curves](training-curves.png)"]
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict], path: Path) -> Path | None:
    """Test accuracy per epoch of every target that recorded it, with its target line."""
    curves = [r for r in rows if r["manifest"].get("epoch_test_accuracy")]
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in curves:
        curve = r["manifest"]["epoch_test_accuracy"]
        line, = ax.plot(range(1, len(curve) + 1), curve, marker=".", label=r["manifest"]["model_id"])
        if r["spec"].get("target_test_accuracy"):
            ax.axhline(r["spec"]["target_test_accuracy"], color=line.get_color(), linestyle="--", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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
            if store.model_dir(spec["id"]).exists():  # keep its row in the report
                rows.append({"spec": spec, "manifest": store.manifest(spec["id"])})
            continue
        manifest = ensure_target(store, spec, args.retrain)
        rows.append({"spec": spec, "manifest": manifest})
        print(f"{spec['id']}: test accuracy {manifest['test_accuracy']:.4f}", flush=True)
    command = "python -m benchmarks.training" + ("" if args.config == str(DEFAULT_CONFIG) else f" --config {args.config}")
    out = Path(args.out)
    existing = out.read_text() if out.exists() else ""
    notes = existing.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in existing else ""
    text = report(rows, args.threads, command)
    out.write_text(text + ("\n<!-- notes -->" + notes if notes else ""))
    plot_curves(rows, out.parent / "training-curves.png")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

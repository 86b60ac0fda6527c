"""``make demo``: the main job of the testbed on an embedded default, in a few minutes on 2 cores.

1. Trains ``lenet5`` on MNIST when a data root has it (else on scikit-learn's digits, which needs
   no files), deploys it at every split point and prints, per split point, the feature shape, the
   bytes one image costs on the wire and the head/tail FLOPs.
2. Starts the three services of ``deploy/docker-compose.yml`` as local processes (cloud, attacker
   tap + lab API, edge), streams private test images through the edge's REST endpoint and the
   tap to the cloud, and attacks the live captures at a few split points with the white-box and
   black-box attacks through the ``attacker`` CLI.
3. Prints a table (split point x attack: PSNR, SSIM, accuracy through the pipeline, bytes per
   image), writes a PNG of originals and reconstructions, and stops the services.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from models import ArtifactStore, SplitlabError, load_dataset, split_model, to_tensor
from models.deploy import deploy
from models.flops import count_flops
from models.loading import load_model
from models.onnx_runtime import set_torch_threads
from models.training import TrainOptions, train


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def pick_dataset(data_root) -> str:
    try:
        load_dataset("mnist", data_root)
        return "mnist"
    except SplitlabError:
        return "digits"


def train_demo_model(store: ArtifactStore, dataset: str, model_id: str) -> dict:
    if store.model_dir(model_id).exists():
        print(f"reusing model {model_id} from {store.root}")
        return store.manifest(model_id)
    limit = 12000 if dataset == "mnist" else None
    opts = TrainOptions(arch="lenet5", dataset=dataset, epochs=3 if dataset == "mnist" else 15,
                        limit=limit, scheme="privacy" if dataset == "mnist" else "full", seed=0)
    model, manifest = train(opts)
    manifest["model_id"] = model_id
    store.save_model(model_id, model.state_dict(), manifest)
    return manifest


def split_table(store: ArtifactStore, model_id: str) -> list[dict]:
    model, manifest = load_model(store, model_id)
    x = torch.zeros(1, *manifest["input_shape"])
    rows = []
    for point in model.split_points:
        dep_id = f"{model_id}--{point}"
        if not store.deployment_dir(dep_id).exists():
            deploy(store, model_id, point)
        dep = store.deployment(dep_id)
        head, tail = split_model(model, point)
        with torch.no_grad():
            feats = head(x)
        values = int(feats[0].numel())
        rows.append({"split": point, "shape": "x".join(map(str, dep["feature_shape"])),
                     "bytes_f32": 4 * values, "bytes_f16": 2 * values,
                     "head_flops": count_flops(head, x), "tail_flops": count_flops(tail, feats)})
    return rows


def print_table(rows: list[dict]) -> None:
    header = f"{'split':<8} {'features':<10} {'bytes/img f32':>13} {'f16':>7} {'head MFLOPs':>12} {'tail MFLOPs':>12}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['split']:<8} {r['shape']:<10} {r['bytes_f32']:>13} {r['bytes_f16']:>7} "
              f"{r['head_flops'] / 1e6:>12.3f} {r['tail_flops'] / 1e6:>12.3f}")


def one_per_class(dataset: str, data_root, per_class: int = 1):
    ds = load_dataset(dataset, data_root)
    picks = [i for c in range(ds.num_classes) for i in np.flatnonzero(ds.y_test == c)[:per_class]]
    return ds.x_test[picks], ds.y_test[picks]


def live(args, store: ArtifactStore, model_id: str, dataset: str) -> None:
    from .demo_live import run_live

    images, labels = one_per_class(dataset, args.data_root)
    root = Path(args.out)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    rows, png = run_live(root, store.root, model_id, args.splits.split(","), images, labels, dataset, step)
    print()
    header = f"{'split':<7} {'attack':<9} {'PSNR dB':>8} {'SSIM':>6} {'accuracy':>8} {'bytes/img':>9} {'attack s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['split']:<7} {r['attack']:<9} {r['psnr']:>8.2f} {r['ssim']:>6.3f} {r['accuracy']:>8.2f} "
              f"{r['bytes']:>9} {r['seconds']:>8.1f}")
    print(legend(blank_baseline(images)))
    print(f"\noriginals and reconstructions: {png.resolve()}")


def blank_baseline(images: np.ndarray) -> dict:
    """PSNR/SSIM of an all-black image against the private images: what "recovered nothing" scores."""
    from attacker.metrics import image_metrics

    originals = to_tensor(images).numpy()
    return image_metrics(np.zeros_like(originals), originals, psnr_cap=100.0)


def legend(blank: dict) -> str:
    return f"""
Each row: the private images sent through the edge at that split point, reconstructed by one attack
from the features the tap captured, scored against the originals.
  whitebox   the attacker has the head (the edge's GetHead download, seen at the tap) and optimises
             an image whose features match the captured ones (He et al.'s rMLE)
  blackbox   the attacker only queries the edge's public /v1/infer with images like the private
             ones, reads their features at the tap and trains an inverse network features -> image
  PSNR dB    pixel fidelity, higher is better; 100 = exact (capped). An all-black image scores
             {blank['psnr_mean']:.2f} dB here: rows near that recovered nothing
  SSIM       structural similarity, 1 = identical (blank image: {blank['ssim_mean']:.3f})
  accuracy   the pipeline's top-1 on the private images (edge -> tap -> cloud)
  bytes/img  float32 features one image puts on the wire; attack s: wall time of the attack"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__)
    parser.add_argument("--artifacts", default=os.environ.get("SPLITLAB_ARTIFACTS", "artifacts"))
    parser.add_argument("--data-root", default=os.environ.get("SPLITLAB_DATA"))
    parser.add_argument("--threads", type=int, default=int(os.environ.get("SPLITLAB_THREADS", 1)))
    parser.add_argument("--out", default="out/demo", help="services' working folder, captures and the figure")
    parser.add_argument("--splits", default="conv1,relu2", help="split points attacked live (comma-separated)")
    parser.add_argument("--no-live", action="store_true", help="stop after the split-point table")
    args = parser.parse_args(argv)
    set_torch_threads(args.threads)
    store = ArtifactStore(args.artifacts)
    started = time.time()
    try:
        dataset = pick_dataset(args.data_root)
        model_id = f"demo-lenet5-{dataset}"
        step(f"1/4 train lenet5 on {dataset} (artifacts in {Path(store.root).resolve()})")
        manifest = train_demo_model(store, dataset, model_id)
        print(f"test accuracy {manifest['test_accuracy']:.4f}")
        step("2/4 deploy every split point (ONNX head checked against torch) and measure it")
        print_table(split_table(store, model_id))
        if not args.no_live:
            live(args, store, model_id, dataset)
    except SplitlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"\ndone in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

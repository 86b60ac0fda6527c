"""Feature defences: what each costs (tail accuracy) and buys (naive white-box PSNR), side by side.

    python -m benchmarks.feature_defences [--artifacts DIR] [--images 16] [--iterations 300]

Why a table of its own: a defence is only worth its accuracy loss if it stops the attack, and the
two numbers come from different places (``deployment.json`` records the tail accuracy on held-out
images at deploy time; the attack runs on the features the defended ``head.onnx`` ships). It
trains (or reuses) lenet5 on digits for 8 epochs, deploys it undefended and with each defence of
``SPECS`` at conv1 and relu2, and attacks the same test images with the white-box attack as the
model provider (``KnowledgeSource(artifacts=...)``: the defence's deterministic layers, none of
its noise). PSNR is uncapped. The table goes to stdout and ``results/feature_defences.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

from attacker.attacks import KnowledgeSource, create, knowledge_for
from attacker.metrics import image_metrics
from models import ArtifactStore, load_dataset, to_tensor
from models.deploy import deploy
from models.onnx_runtime import head_session

RESULTS = Path(__file__).resolve().parent / "results" / "feature_defences.md"
MODEL = "lenet5-digits-defences"
SPECS = {"conv1": ["", "gaussian:sigma=0.1", "gaussian:sigma=0.5", "laplace:scale=0.3", "dropout:p=0.3",
                   "quantize:bits=2", "deeper:layers=2", "nonlinear:kind=tanh"],
         "relu2": ["", "gaussian:sigma=0.1", "gaussian:sigma=0.5", "laplace:scale=0.3", "dropout:p=0.3",
                   "quantize:bits=2", "deeper:to=fc1", "nonlinear:kind=tanh"]}


def ensure_model(store: ArtifactStore) -> None:
    from models.training import TrainOptions, train

    if MODEL in store.list_models():
        return
    model, manifest = train(TrainOptions(arch="lenet5", dataset="digits", epochs=8, scheme="full", seed=0),
                            progress=False)
    manifest["model_id"] = MODEL
    store.save_model(MODEL, model.state_dict(), manifest)


def row(store: ArtifactStore, split: str, spec: str, x, iterations: int) -> dict:
    rec = deploy(store, MODEL, split, overwrite=True, defence=spec)
    dep = rec["deployment_id"]
    sent = head_session(str(store.deployment_dir(dep) / "head.onnx")).run(None, {"input": x.numpy()})[0]
    attack = create("whitebox", iterations=iterations, progress=False)
    attack.fit(knowledge_for(attack, KnowledgeSource(dep, artifacts=store)))
    m = image_metrics(attack.reconstruct(sent), x)
    acc = rec.get("accuracy") or {}
    return {"split": split, "defence": spec or "none", "features": "x".join(map(str, rec["feature_shape"])),
            "accuracy": acc.get("defended", float("nan")), "clean": acc.get("clean", float("nan")),
            "psnr": m["psnr_mean"], "ssim": m["ssim_mean"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.feature_defences", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", default=os.environ.get("SPLITLAB_ARTIFACTS", "artifacts"),
                   help="artifact store (env SPLITLAB_ARTIFACTS, default ./artifacts)")
    p.add_argument("--images", type=int, default=16, help="test images attacked (default 16)")
    p.add_argument("--iterations", type=int, default=300, help="white-box iterations (default 300)")
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args(argv)
    if args.images < 1 or args.iterations < 1:
        p.error("--images and --iterations must be at least 1")
    store = ArtifactStore(args.artifacts)
    ensure_model(store)
    x = to_tensor(load_dataset("digits").x_test[:args.images])
    lines = ["| split | defence | features | tail accuracy (clean) | white-box PSNR dB | SSIM |",
             "|---|---|---|---|---|---|"]
    print(lines[0])
    for split, specs in SPECS.items():
        for spec in specs:
            r = row(store, split, spec, x, args.iterations)
            acc = "-" if np.isnan(r["accuracy"]) else f"{r['accuracy']:.3f} ({r['clean']:.3f})"
            lines.append(f"| {r['split']} | `{r['defence']}` | {r['features']} | {acc} | {r['psnr']:.2f} | "
                         f"{r['ssim']:.3f} |")
            print(lines[-1], flush=True)
    Path(args.out).write_text(f"# Feature defences: lenet5 / digits, {args.images} test images, "
                              f"{args.iterations} white-box iterations\n\n" + "\n".join(lines) + "\n")
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

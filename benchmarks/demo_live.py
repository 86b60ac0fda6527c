"""The live half of ``make demo``: services up, private images through the tap, attacks, figure.

Uses :class:`benchmarks.local_stack.LocalStack` (the compose file's services as processes) and
the ``attacker`` CLI exactly as a user would; the demo only adds the ground truth (it knows the
images it sent) so that reconstructions can be scored.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from attacker.captures.store import CaptureStore

from .local_stack import LocalStack

WHITEBOX_ITERATIONS = 400
# The black-box budget per split point: auxiliary images (MNIST's training part: the same
# distribution as the private test images), each queried live through the edge and read back at
# the tap, and the inverse network's training parameters. conv1's inverse is nearly linear and is
# solved by least squares on the queried pairs, so its network barely trains. relu2's is not: 500
# images x 10 epochs at width 64 left it at a blank image (9.7 dB); 5000 images x 6 epochs at width
# 16 in batches of 16 (lr 2e-3) reach 16.7 dB in less CPU time (offline on the demo's MNIST model:
# width 32 in batches of 64 gave 14.2 dB for 25k image-epochs, batches of 16 at width 16 are
# cheaper and learn more per epoch). Training, not the queries, is the cost: ~0.6 ms per
# image-epoch at width 16 on one thread; a query costs ~3 ms.
BLACKBOX_BUDGET = {"conv1": {"images": 1000, "epochs": 1, "width": 32},
                   "default": {"images": 5000, "epochs": 6, "width": 16, "batch_size": 16, "lr": 0.002}}
ATTACKS = ("whitebox", "blackbox")


def attack_args(method: str, split: str, dataset: str) -> list[str]:
    """The ``attacker invert`` flags of ``method`` at ``split`` (the demo's budget)."""
    if method == "whitebox":
        return ["--param", f"iterations={WHITEBOX_ITERATIONS}"]
    params = dict(BLACKBOX_BUDGET.get(split, BLACKBOX_BUDGET["default"]))
    args = ["--aux-data", f"{dataset}:train:{params.pop('images')}", "--aux-setting", "same-distribution"]
    for name, value in params.items():
        args += ["--param", f"{name}={value}"]
    return args


def send_images(stack: LocalStack, deployment: str, images: np.ndarray, prefix: str) -> tuple[list[str], list[int]]:
    """Each image through the edge's ``/v1/infer`` (edge -> tap -> cloud); request ids and classes."""
    ids, classes = [], []
    with httpx.Client(base_url=stack.edge_url, timeout=60) as http:
        for i, image in enumerate(images):
            rid = f"{prefix}-{i}"
            r = http.post("/v1/infer", json={"deployment_id": deployment, "array": image.tolist()},
                          headers={"X-Request-ID": rid})
            r.raise_for_status()
            ids.append(rid)
            classes.append(int(r.json()["class"]))
    return ids, classes


def wait_recorded(captures: CaptureStore, request_ids: list[str], timeout: float = 30.0) -> None:
    """The tap records off the hot path: wait until every request id is in the store."""
    deadline = time.monotonic() + timeout
    while any(not captures.captures(request_id=rid) for rid in request_ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the tap did not record {request_ids} within {timeout:.0f} s")
        time.sleep(0.2)


def invert(stack: LocalStack, method: str, split: str, deployment: str, count: int, out: Path, dataset: str) -> dict:
    extra = attack_args(method, split, dataset)
    if method == "blackbox":
        extra += ["--edge", stack.edge_url]
    cmd = [sys.executable, "-m", "attacker", "invert", "--method", method, "--deployment", deployment,
           "--last", str(count), "--out", str(out), *extra]
    print("  $ attacker " + " ".join(cmd[3:]), flush=True)
    started = time.time()
    subprocess.run(cmd, env=stack.service_env("attacker"), check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    summary["seconds"] = time.time() - started
    summary["reconstructions"] = np.load(out / "batch-0001.npz")["reconstructions"]
    return summary


def run_live(root: Path, store_root: Path, model_id: str, splits: list[str], images: np.ndarray,
             labels: np.ndarray, dataset: str, step) -> tuple[list[dict], Path]:
    """Start the stack on the artifacts under ``store_root``, attack each split; rows and figure path."""
    stack = LocalStack(root, extra_env={"SPLITLAB_THREADS": "1", "OMP_NUM_THREADS": "1"})
    stack.paths["/artifacts"] = Path(store_root).resolve()
    rows, recon = [], {}
    step("3/4 start cloud, attacker (tap) and edge as in deploy/docker-compose.yml")
    stack.start()
    try:
        print(f"cloud {stack.cloud}   tap {stack.tap}   edge {stack.edge_url}   lab API {stack.api_url}")
        step(f"4/4 stream {len(images)} private images per split point through the tap, attack the captures")
        captures = CaptureStore(stack.paths["/captures"])
        for split in splits:
            deployment = f"{model_id}--{split}"
            ids, classes = send_images(stack, deployment, images, prefix=split)
            wait_recorded(captures, ids)
            for rid, image in zip(ids, images):
                captures.attach_ground_truth(rid, image[None])
            accuracy = float(np.mean(np.array(classes) == labels))
            dep = json.loads((stack.paths["/artifacts"] / "deployments" / deployment / "deployment.json").read_text())
            bytes_per_image = 4 * int(np.prod(dep["feature_shape"]))
            print(f"{split}: {len(ids)} images through edge -> tap -> cloud, accuracy {accuracy:.2f}")
            for method in ATTACKS:
                s = invert(stack, method, split, deployment, len(images), root / "attacks" / f"{split}-{method}",
                           dataset)
                recon[(split, method)] = s.pop("reconstructions")
                rows.append({"split": split, "attack": method, "psnr": s["psnr_mean"], "ssim": s["ssim_mean"],
                             "accuracy": accuracy, "bytes": bytes_per_image, "seconds": s["seconds"]})
        captures.close()
    finally:
        codes = stack.stop()
        print(f"services stopped: {codes}")
    return rows, figure(images, recon, root / "demo.png")


def figure(images: np.ndarray, recon: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = [("original", images.astype(np.float32) / 255.0)]
    rows += [(f"{split} {method}", r.transpose(0, 2, 3, 1)) for (split, method), r in recon.items()]
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0))
    for r, (name, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(imgs[c].squeeze(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

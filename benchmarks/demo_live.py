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

from attacker.capture_store import CaptureStore

from .local_stack import LocalStack

ATTACKS = {
    "whitebox": ["--param", "iterations=400"],
    "blackbox": ["--aux-data", "{dataset}:train:500", "--aux-setting", "same-distribution", "--param", "epochs=10"],
}


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


def invert(stack: LocalStack, method: str, deployment: str, count: int, out: Path, dataset: str) -> dict:
    extra = [a.format(dataset=dataset) for a in ATTACKS[method]]
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
                s = invert(stack, method, deployment, len(images), root / "attacks" / f"{split}-{method}", dataset)
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

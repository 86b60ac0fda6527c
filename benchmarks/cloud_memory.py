"""How much memory a cloud serving one tail holds, by what runs the tail.

    python -m benchmarks.cloud_memory [--arch lenet5] [--split relu2] [--out benchmarks/results/cloud_memory.md]

Deploys the architecture (random weights: memory does not depend on them) at one split point,
then starts a real ``cloud-server`` subprocess three ways and sends it 20 batches of 64:

* ``onnxruntime``, the deployment's ``tail.onnx`` (what ``python -m models deploy`` writes now):
  the server never imports torch;
* ``onnxruntime``, the same deployment without ``tail.onnx`` (deployed before tails were exported at
  deploy time): the tail is exported from ``tail.pt`` on load, which imports torch;
* ``torch``: torch runs the tail.

For each it reports the resident set (VmRSS) after start-up and after the requests, the peak
(VmHWM), and whether torch's library is mapped into the process (``/proc/PID/maps``). Linux only.

Measured on the shared 2-core machine (lenet5 at relu2): 95 MiB with ``tail.onnx``, 769 MiB when
the tail is exported on load, 712 MiB with torch. The cloud before tails were exported at deploy
time (commit b19b89a) imported torch at start-up: 672 MiB before the first request, 768 MiB after
the same requests.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.serving import MODELS, RESULTS, CloudProcess, build_store

VARIANTS = [("onnxruntime", True, "tail.onnx (deploy now writes it)"),
            ("onnxruntime", False, "no tail.onnx (older deployment): exported on load"),
            ("torch", True, "torch runs the tail")]


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM in MiB, and whether libtorch is mapped."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) / 1024
    out["torch_loaded"] = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
    return out


def deploy_one(root: Path, arch: str, split: str) -> str:
    build_store(root, {a: ([split] if a == arch else []) for a in MODELS})
    return f"{arch}-bench--{split}"


def measure(artifacts: Path, dep_id: str, runtime: str, batches: int, x: np.ndarray) -> dict:
    from edge_client.client import CloudClient

    cloud = CloudProcess(artifacts, runtime)
    try:
        time.sleep(0.5)  # let start-up settle
        idle = proc_status(cloud.proc.pid)
        with CloudClient(cloud.address, timeout=300) as client:
            client.wait_ready(60)
            for _ in range(batches):
                client.infer(dep_id, x)
        busy = proc_status(cloud.proc.pid)
    finally:
        code = cloud.stop()
    return {"idle_mib": idle["VmRSS"], "rss_mib": busy["VmRSS"], "peak_mib": busy["VmHWM"],
            "torch_loaded": busy["torch_loaded"], "exit": code}


def run(arch: str, split: str, batches: int = 20) -> list[dict]:
    from models import ArtifactStore
    from models.onnx_runtime import head_session

    rows = []
    with tempfile.TemporaryDirectory(prefix="cloud-memory-") as tmp:
        root = Path(tmp) / "artifacts"
        dep_id = deploy_one(root, arch, split)
        folder = ArtifactStore(root).deployment_dir(dep_id)
        images = np.random.default_rng(0).random((64, *MODELS[arch][1]), dtype=np.float32)
        head = head_session(str(folder / "head.onnx"))
        x = head.run(None, {"input": images})[0]
        tail_onnx = (folder / "tail.onnx").read_bytes()
        for runtime, with_onnx, label in VARIANTS:
            path = folder / "tail.onnx"
            if with_onnx:
                path.write_bytes(tail_onnx)
            else:
                path.unlink(missing_ok=True)
            row = measure(root, dep_id, runtime, batches, x)
            row.update(runtime=runtime, variant=label)
            rows.append(row)
            print(f"{runtime:12s} {label:55s} idle {row['idle_mib']:.0f} MiB, after {batches}x64 "
                  f"{row['rss_mib']:.0f} MiB (peak {row['peak_mib']:.0f}), torch loaded: {row['torch_loaded']}",
                  flush=True)
    return rows


def report(rows: list[dict], arch: str, split: str, command: str) -> str:
    lines = ["# Cloud memory: one tail served, by what runs it", "",
             f"Command: `{command}`  ",
             f"Load average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())} (memory does not depend on it).  ",
             f"One `{arch}` deployment at `{split}` (random weights), `cloud-server --threads 1` in a subprocess, "
             "20 requests of 64 float32 feature rows. RSS = VmRSS, peak = VmHWM, in MiB. For comparison, the "
             "cloud before tails were exported at deploy time (commit b19b89a, torch imported at start-up) held "
             "672 MiB after start and 768 MiB after the same requests.", "",
             "| runtime | tail | RSS after start | RSS after requests | peak | torch loaded |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['runtime']} | {r['variant']} | {r['idle_mib']:.0f} | {r['rss_mib']:.0f} | "
                     f"{r['peak_mib']:.0f} | {'yes' if r['torch_loaded'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cloud_memory", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=list(MODELS), default="lenet5")
    p.add_argument("--split", default="relu2")
    p.add_argument("--out", default=str(RESULTS / "cloud_memory.md"))
    args = p.parse_args(argv)
    if not Path("/proc/self/status").exists():
        print("cloud_memory: needs Linux's /proc to read a process's memory", file=sys.stderr)
        return 2
    os.environ["SPLITLAB_THREADS"] = "1"
    rows = run(args.arch, args.split)
    command = "python -m benchmarks.cloud_memory" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    Path(args.out).write_text(report(rows, args.arch, args.split, command))
    print(f"wrote {args.out}")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Send private test images through the edge's REST endpoint and keep them as ground truth.

The tap never sees the edge's inputs, so `attacker invert` can only score its reconstructions
(PSNR/SSIM) against images an experimenter attaches by request id. This script plays that
experimenter inside the compose stack: it sends COUNT test images of a dataset to the edge's
``POST /v1/infer`` with request ids of its own (``PREFIX-0`` ...), waits until the capture store
holds a capture for each (the tap records off the hot path), and writes ``request_ids`` and
``images`` to an .npz for ``attacker truth``. It runs in the attacker container, which has the
splitlab package, the capture store and the edge's address, without being part of the image:

    docker compose exec -T attacker python - --deployment lenet5-digits-s0--conv1 \\
        --out /captures/truth.npz < deploy/send_private.py
    docker compose exec attacker attacker truth /captures/truth.npz
    docker compose exec attacker attacker invert --method whitebox \\
        --deployment lenet5-digits-s0--conv1 --last 8 --out /captures/out     # prints PSNR

deploy/compose_check.py runs exactly this.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from attacker.captures.store import CaptureStore
from models.datasets import load_dataset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="send_private.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--deployment", required=True, help="deployment id the edge should use")
    p.add_argument("--dataset", default="digits", help="dataset of the test images (default digits)")
    p.add_argument("--count", type=int, default=8, help="images to send (default 8)")
    p.add_argument("--prefix", default="private", help="request ids are PREFIX-0, PREFIX-1, ...")
    p.add_argument("--out", type=Path, required=True, help=".npz to write for `attacker truth`")
    p.add_argument("--edge", default=os.environ.get("SPLITLAB_EDGE_URL", "http://edge:8001"),
                   help="edge REST base URL [SPLITLAB_EDGE_URL, default http://edge:8001]")
    p.add_argument("--store", default=os.environ.get("SPLITLAB_STORE", "/captures"),
                   help="capture store to wait on [SPLITLAB_STORE, default /captures]")
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait for the captures to be recorded (default 30)")
    args = p.parse_args(argv)

    images = load_dataset(args.dataset).part("test")[0][:args.count]
    ids = [f"{args.prefix}-{i}" for i in range(len(images))]
    with httpx.Client(base_url=args.edge, timeout=60) as http:
        for rid, image in zip(ids, images):
            r = http.post("/v1/infer", json={"deployment_id": args.deployment, "array": image.tolist()},
                          headers={"X-Request-ID": rid})
            if r.status_code != 200:
                print(f"error: {args.edge}/v1/infer answered {r.status_code} for {rid}: {r.text[:300]}",
                      file=sys.stderr)
                return 1

    store = CaptureStore(args.store)
    try:
        deadline = time.monotonic() + args.wait
        missing = ids
        while missing and time.monotonic() < deadline:
            time.sleep(0.2)
            missing = [rid for rid in missing if not store.captures(request_id=rid)]
    finally:
        store.close()
    if missing:
        print(f"error: no capture of {len(missing)} of {len(ids)} requests in {args.store} after "
              f"{args.wait:.0f} s (first: {missing[0]}); is a tap recording this traffic?", file=sys.stderr)
        return 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, request_ids=np.array(ids), images=images)
    print(f"{len(ids)} {args.dataset} test images through {args.edge}, all captured; ground truth -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole testbed live: the compose file's services as processes, traffic, attacks, shutdown.

The three services are started with the commands and environment of deploy/docker-compose.yml
(benchmarks.local_stack maps container names, ports and volumes onto loopback), after the
compose ``init`` step has trained and deployed the default model. Dataset images go from the
edge's REST endpoint through the tap to the cloud; the attacker CLI then inverts the live
captures white-box and black-box, and SIGTERM must stop all three cleanly.
"""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from benchmarks.local_stack import LocalStack
from models import load_dataset

pytestmark = pytest.mark.e2e
CONV1 = "lenet5-digits-s0--conv1"
RELU2 = "lenet5-digits-s0--relu2"


def attacker_cli(stack: LocalStack, *args: str) -> subprocess.CompletedProcess:
    env = stack.service_env("attacker")
    return subprocess.run([sys.executable, "-m", "attacker", *args, "--no-progress"] if args[0] == "invert"
                          else [sys.executable, "-m", "attacker", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def blank_psnr(images: np.ndarray) -> float:
    """PSNR of the best constant image (the mean pixel value): the floor an attack must beat."""
    from skimage.metrics import peak_signal_noise_ratio

    x = images.astype(np.float64) / 255.0
    return float(np.mean([peak_signal_noise_ratio(im, np.full_like(im, x.mean()), data_range=1.0) for im in x]))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    s = LocalStack(root)
    s.init(SPLITLAB_INIT_EPOCHS="15", SPLITLAB_THREADS="1", OMP_NUM_THREADS="1")
    s.start(progress=lambda *_: None)
    yield s
    s.stop()


def test_live_traffic_attacks_and_clean_shutdown(stack, tmp_path):
    ds = load_dataset("digits")
    images, labels = ds.x_test[:10], ds.y_test[:10]
    request_ids = [f"live-{i}" for i in range(len(images))]
    predictions = []
    with httpx.Client(base_url=stack.edge_url, timeout=60) as http:
        for image, rid in zip(images, request_ids):
            for dep in (CONV1, RELU2):
                r = http.post("/v1/infer", json={"deployment_id": dep, "array": image.tolist()},
                              headers={"X-Request-ID": rid})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["request_id"] == rid and len(body["scores"]) == 10
                if dep == CONV1:
                    predictions.append(body["class"])
        bad = http.post("/v1/infer", json={"deployment_id": CONV1, "array": [[1, 2], [3, 4]]})
        assert 400 <= bad.status_code < 500 and "shape" in bad.json()["detail"]
    assert len(predictions) == 10 and np.mean(np.array(predictions) == labels) >= 0.7

    # the edge's own command line, as `docker compose exec edge edge-client run` would call it
    run = subprocess.run(["edge-client", "run", "--deployment", CONV1, "--dataset", "digits", "--count", "32",
                          "--batch", "8", "--stream", "--json", "--no-progress"], capture_output=True, text=True,
                         env=stack.service_env("edge"), timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(run.stdout)
    assert report["images"] == 32 and report["errors"] == 0 and report["accuracy"] >= 0.7, report

    listing = attacker_cli(stack, "captures", "--deployment", CONV1, "--last", "50")
    assert listing.returncode == 0 and listing.stdout.count("live-") == 10, listing.stdout + listing.stderr

    np.savez(tmp_path / "truth.npz", request_ids=np.array(request_ids), images=images)
    assert attacker_cli(stack, "truth", str(tmp_path / "truth.npz")).returncode == 0
    floor = blank_psnr(images)

    white = attacker_cli(stack, "invert", "--method", "whitebox", "--deployment", CONV1, "--last", "10",
                         "--param", "iterations=300", "--out", str(tmp_path / "wb"))
    assert white.returncode == 0, white.stdout + white.stderr
    wb = json.loads((tmp_path / "wb" / "summary.json").read_text())
    assert wb["psnr_mean"] > floor + 10, (wb, floor)

    black = attacker_cli(stack, "invert", "--method", "blackbox", "--deployment", CONV1, "--last", "10",
                         "--edge", stack.edge_url, "--aux-data", "digits:train:200",
                         "--aux-setting", "same-distribution", "--param", "epochs=10",
                         "--out", str(tmp_path / "bb"))
    assert black.returncode == 0, black.stdout + black.stderr
    bb = json.loads((tmp_path / "bb" / "summary.json").read_text())
    assert bb["psnr_mean"] > floor + 3, (bb, floor)
    assert (tmp_path / "wb" / "batch-0001.png").exists() and (tmp_path / "bb" / "batch-0001.png").exists()

    procs = dict(stack.procs)
    codes = stack.stop()
    assert codes == {"edge": 0, "attacker": 0, "cloud": 0}, {n: stack.log(n)[-2000:] for n in codes}
    assert all(p.poll() is not None for p in procs.values())


def test_compose_values_are_mapped_onto_loopback(tmp_path):
    s = LocalStack(tmp_path)
    env = s.service_env("edge")
    assert env["SPLITLAB_CLOUD"] == s.tap and env["SPLITLAB_EDGE_HOST"] == "127.0.0.1"
    assert env["SPLITLAB_EDGE_PORT"] == str(s.ports["edge"])
    attacker = s.service_env("attacker")
    assert attacker["SPLITLAB_TAP_UPSTREAM"] == s.cloud and attacker["SPLITLAB_STORE"] == str(s.root / "captures")
    assert s.health_targets("cloud") == [f"grpc://{s.cloud}"]


def test_a_failed_start_leaves_nothing_running(tmp_path):
    s = LocalStack(tmp_path)
    s.services["cloud"]["command"] = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with pytest.raises(RuntimeError, match="cloud exited with code 3"):
        s.start(timeout=20, progress=lambda *_: None)
    assert all(p.poll() is not None for p in s.procs.values())

"""The lab API end to end against live services on loopback: ``cloud-server``, ``edge-client serve``
(whose cloud is the tap) and ``attacker serve`` (tap + lab API), each a real process.

* lifecycle: submit a tiny experiment (lenet5 on digits, 2 epochs, conv1, white-box, 10 images),
  poll it, check real PSNR/SSIM far above a blank image, the pipeline's accuracy against the model
  itself, bytes per image, the captures at the tap, and the PNGs served;
* the HTML page in headless Chromium: it updates itself until the experiment is done, then shows the
  results table and the grids (a screenshot is taken; ``SPLITLAB_SCREENSHOTS=DIR`` keeps it);
* cancellation of a queued and of a running experiment;
* restart recovery: the service is killed (SIGKILL) with one experiment running and one queued; after
  a restart the running one is marked interrupted and re-run, the queued one runs (it has a noise
  defence at the edge: the features at the tap are checked to carry exactly that noise).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from system_prereqs import CHROMIUM

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOKEN = "e2e-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
FINAL = ("done", "failed", "cancelled")


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tiny_spec(splits=("conv1",), iterations=200, **extra) -> dict:
    return {"arch": "lenet5", "dataset": "digits", "train": {"epochs": 2}, "split_points": list(splits),
            "attacks": [{"name": "whitebox", "params": {"iterations": iterations}}], "samples": 10,
            "seed": 0} | extra


class Services:
    """The three services as child processes in one temporary folder (logs in ``*.log``)."""

    def __init__(self, root: Path):
        self.root = root
        self.artifacts, self.captures, self.lab = root / "artifacts", root / "captures", root / "lab"
        self.artifacts.mkdir()
        self.cloud_port, self.tap_port, self.admin_port, self.edge_port, self.api_port = free_ports(5)
        self.api = f"http://127.0.0.1:{self.api_port}"
        self.edge = f"http://127.0.0.1:{self.edge_port}"
        self.env = dict(os.environ, SPLITLAB_THREADS="1", SPLITLAB_API_TOKEN=TOKEN, PYTHONUNBUFFERED="1",
                        SPLITLAB_DATA=os.environ.get("SPLITLAB_DATA", str(ROOT.parent / "shared" / "datasets")))
        self.procs: dict[str, subprocess.Popen] = {}
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=self.root, env=self.env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start_attacker(self) -> None:
        self._spawn("attacker", ["attacker", "serve", "--listen", f"127.0.0.1:{self.tap_port}",
                                 "--admin", f"127.0.0.1:{self.admin_port}",
                                 "--upstream", f"127.0.0.1:{self.cloud_port}", "--store", str(self.captures),
                                 "--api-host", "127.0.0.1", "--api-port", str(self.api_port), "--edge", self.edge,
                                 "--artifacts", str(self.artifacts), "--lab-dir", str(self.lab),
                                 "--log-level", "warning"])

    def start(self) -> None:
        self._spawn("cloud", ["cloud-server", "--host", "127.0.0.1", "--port", str(self.cloud_port),
                              "--artifacts", str(self.artifacts), "--log-level", "warning"])
        self._spawn("edge", ["edge-client", "serve", "--host", "127.0.0.1", "--port", str(self.edge_port),
                             "--cloud", f"127.0.0.1:{self.tap_port}", "--cache", str(self.root / "edge-cache")])
        self.start_attacker()
        self.wait_ready()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self.log(name)}")
            try:
                api = httpx.get(f"{self.api}/healthz", timeout=2)
                edge = httpx.get(f"{self.edge}/healthz", timeout=5)  # 200 once the cloud answers via the tap
                if api.status_code == 200 and edge.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError("services not ready:\n" + "\n".join(self.log(n) for n in self.procs))

    def kill_attacker(self) -> None:
        proc = self.procs.pop("attacker")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return f"--- {name} ---\n" + (path.read_text(errors="replace")[-4000:] if path.exists() else "")

    def stop(self) -> None:
        self.http.close()
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    # --- API helpers -------------------------------------------------------------------------
    def submit(self, spec: dict) -> dict:
        r = self.http.post("/v1/experiments", json=spec, headers=AUTH)
        assert r.status_code == 202, r.text
        return r.json()

    def get(self, exp_id: str) -> dict:
        r = self.http.get(f"/v1/experiments/{exp_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, exp_id: str, predicate, timeout: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                rec = self.get(exp_id)
                if predicate(rec):
                    return rec
            except httpx.TransportError:  # the service is restarting
                rec = None
            if time.monotonic() > deadline:
                raise AssertionError(f"experiment {exp_id} did not get there in {timeout} s: {rec}\n"
                                     + self.log("attacker"))
            time.sleep(0.25)

    def wait_final(self, exp_id: str, timeout: float = 120.0) -> dict:
        return self.wait(exp_id, lambda r: r["status"] in FINAL, timeout)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    services = Services(tmp_path_factory.mktemp("lab-e2e"))
    try:
        services.start()
        yield services
    finally:
        services.stop()


def test_lifecycle_with_real_reconstructions(lab):
    from attacker.captures.store import CaptureStore
    from models import ArtifactStore, load_dataset, to_tensor
    from models.loading import load_model
    from PIL import Image

    sub = lab.submit(tiny_spec())
    assert sub["status"] == "queued"
    rec = lab.wait_final(sub["id"])
    assert rec["status"] == "done", rec["error"]
    assert rec["progress"] == {"step": "done", "fraction": 1.0}
    res = rec["results"]
    assert res["model"]["arch"] == "lenet5" and res["model"]["reused"] is False
    (row,) = res["rows"]
    base = res["baseline"]
    assert (row["split"], row["attack"]) == ("conv1", "whitebox")
    # white-box inversion at conv1 recovers the digits; a blank image does not
    assert row["psnr_mean"] > 25 and row["psnr_mean"] > base["psnr_mean"] + 10, (row, base)
    assert row["ssim_mean"] > 0.8 > base["ssim_mean"]
    assert row["mse_mean"] < base["mse_mean"] / 10
    assert len(row["psnr"]) == 10 and row["psnr_std"] >= 0
    assert row["bytes_per_image"] == 8 * 24 * 24 * 4  # float32 features of conv1 on the wire
    assert row["attack_seconds"] > 0
    assert "captured at the tap" in row["knowledge"]

    # task accuracy through edge -> tap -> cloud equals the model's own on the same images
    store = ArtifactStore(lab.artifacts)
    model, _ = load_model(store, res["model"]["model_id"])
    idx = res["private_images"]["indices"]
    ds = load_dataset("digits")
    expected = float((model(to_tensor(ds.x_test[idx])).argmax(1).numpy() == ds.y_test[idx]).mean())
    assert row["accuracy"] == pytest.approx(expected)
    (split,) = res["splits"]
    assert store.deployment(split["deployment_id"])["split"] == "conv1"

    # every private image crossed the tap under its request id
    with CaptureStore(lab.captures, create=False) as captures:
        for rid in split["request_ids"]:
            caps = captures.captures(request_id=rid, ok_only=True)
            assert caps and caps[-1].deployment_id == split["deployment_id"]
            assert captures.ground_truth(rid) is not None

    # the grids are served as PNGs
    assert set(res["images"]) == {"originals", "conv1-whitebox"}
    for name, image in res["images"].items():
        r = lab.http.get(image["url"])
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        png = Image.open(io.BytesIO(r.content))
        assert png.width > png.height > 0
        arr = np.asarray(png.convert("L"), dtype=np.float32)
        assert arr.std() > 10  # not a blank picture
    assert lab.http.get(f"/v1/experiments/{rec['id']}/images/conv1-blackbox.png").status_code == 404

    listed = lab.http.get("/v1/experiments", params={"status": "done"}).json()
    assert rec["id"] in [e["id"] for e in listed["items"]]
    health = lab.http.get("/healthz").json()
    assert health["status"] == "ok" and health["tap"]["recorded"] >= 10


@pytest.mark.system(CHROMIUM, "chromium")
def test_experiment_page_in_headless_chromium(lab, tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            # the page's experiment waits behind another one, so the page is first seen queued
            ahead = lab.submit(tiny_spec(splits=("pool1", "conv2"), iterations=400))
            exp = lab.submit(tiny_spec(splits=("relu2",)))
            page.goto(f"{lab.api}/experiments/{exp['id']}")
            assert page.locator("h1 .status").inner_text() == "queued"
            assert "queue position" in page.locator("body").inner_text()
            # nobody reloads: the page polls the API and reloads itself as the experiment moves on
            page.wait_for_selector("h1 .status.done", timeout=120_000)
            table = page.locator("#results").inner_text()
            assert "relu2" in table and "whitebox" in table and "±" in table
            sizes = page.eval_on_selector_all("img.grid", "els => els.map(e => [e.complete, e.naturalWidth])")
            assert len(sizes) == 2 and all(done and width > 0 for done, width in sizes)
            shot = tmp_path / "experiment.png"
            page.screenshot(path=str(shot), full_page=True)
            page.goto(f"{lab.api}/")
            assert exp["id"] in page.locator("table").inner_text()
            page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
        finally:
            browser.close()
    assert shot.stat().st_size > 10_000
    keep = os.environ.get("SPLITLAB_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(keep) / "lab-experiment.png")
        shutil.copy(tmp_path / "index.png", Path(keep) / "lab-index.png")
    assert lab.get(ahead["id"])["status"] == "done"


def test_cancel_queued_and_running(lab):
    splits = ("conv1", "relu1", "pool1", "conv2", "relu2", "pool2")
    running = lab.submit(tiny_spec(splits=splits, iterations=300))
    queued = lab.submit(tiny_spec())
    r = lab.http.delete(f"/v1/experiments/{queued['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    lab.wait(running["id"], lambda e: e["status"] == "running" and len((e["results"] or {}).get("rows", [])) >= 1)
    r = lab.http.delete(f"/v1/experiments/{running['id']}", headers=AUTH)
    assert r.status_code == 200 and r.json()["cancel_requested"] is True
    rec = lab.wait_final(running["id"], timeout=60)
    assert rec["status"] == "cancelled"
    assert 1 <= len(rec["results"]["rows"]) < len(splits)  # stopped between steps
    assert lab.get(queued["id"])["started"] is None
    assert lab.http.delete(f"/v1/experiments/{queued['id']}", headers=AUTH).status_code == 409
    assert lab.http.get("/healthz").json()["workers"] == 1


def test_restart_recovers_running_and_queued_experiments(lab):
    first = lab.submit(tiny_spec(splits=("conv1", "relu1", "pool1")))
    second = lab.submit(tiny_spec(feature_defense={"type": "noise", "sigma": 0.3}))
    lab.wait(first["id"], lambda e: e["status"] == "running" and e["progress"]["fraction"] > 0.2)
    assert lab.get(second["id"])["status"] == "queued"
    lab.kill_attacker()  # no chance to clean up
    lab.start_attacker()
    lab.wait_ready()
    rec = lab.wait_final(first["id"])
    assert rec["status"] == "done", rec["error"]
    assert rec["restarts"] == 1
    events = [e["event"] for e in rec["events"]]
    assert events == ["queued", "running", "interrupted", "running", "done"]
    assert [r["split"] for r in rec["results"]["rows"]] == ["conv1", "relu1", "pool1"]
    assert rec["results"]["model"]["reused"] is True  # stored by the run that was killed
    assert rec["results"]["splits"][0]["deployment_reused"] is True  # conv1 was deployed before the kill
    later = lab.wait_final(second["id"])
    assert later["status"] == "done" and later["restarts"] == 0
    check_noise_defence(lab, later["results"], sigma=0.3)


def check_noise_defence(lab, res, sigma):
    """The queued experiment had a noise defence: the features that crossed the tap are the clean
    head's plus N(0, sigma^2), and the white-box attack (clean head) no longer recovers the images."""
    import torch

    from attacker.captures.store import CaptureStore
    from models import ArtifactStore, load_dataset, to_tensor
    from models.loading import load_model
    from models.split import split_model

    (split,) = res["splits"]
    (row,) = res["rows"]
    store = ArtifactStore(lab.artifacts)
    dep = store.deployment(split["deployment_id"])
    assert split["deployment_id"].endswith("--gaussian0.3")  # the lab's old {"type": "noise"} is an alias
    assert dep["feature_defense"] == [{"type": "gaussian", "sigma": sigma}]
    head, _ = split_model(load_model(store, dep["model_id"])[0], "conv1")
    x = to_tensor(load_dataset("digits").x_test[res["private_images"]["indices"]])
    with torch.no_grad():
        clean = head(x).numpy()
    with CaptureStore(lab.captures, create=False) as captures:
        sent = np.concatenate([captures.features(captures.captures(request_id=rid, ok_only=True)[-1])
                               for rid in split["request_ids"]])
    assert abs(float((sent - clean).std()) - sigma) < 0.05
    assert abs(float((sent - clean).mean())) < 0.05
    assert "clean head" in row["knowledge"]
    assert res["baseline"]["psnr_mean"] < row["psnr_mean"] < 40  # the clean conv1 inversion is near-exact

"""Run one split-point experiment end to end through the live services and score it.

(Membership experiments run in :mod:`.membership_runner`, attribute experiments in
:mod:`.attribute_runner`, classifier-inversion experiments in :mod:`.classifier_inversion_runner`;
:class:`ExperimentRunner` dispatches on the spec's kind.)

1. train the model (or reuse it: a stored ``model_id``, or the same training spec seen before);
2. pick ``samples`` private images from the dataset's test part (seeded, spread over the classes);
3. for each split point: deploy it into the cloud's artifact store; send the private images through
   the edge's REST endpoint (edge -> tap -> cloud); read the features the tap captured for each
   request id; then for each attack: build the knowledge its threat model allows
   (``attacker.attacks.knowledge_for`` on what the lab holds), ``fit``,
   ``reconstruct`` the captured features, score against the images that were sent (PSNR, SSIM, MSE
   with :mod:`attacker.metrics`) and save a grid (originals above reconstructions).

Knowledge per attack (``attacker.attacks.inversion.knowledge``):

* whitebox - the head the edge downloaded, as captured by the tap (``GetHead``); if the tap never
  saw the download (the edge had it cached) or the head carries a noise defence, the clean head
  from the artifact store (the model provider attacks);
* blackbox - chosen auxiliary images sent through the edge's public ``/v1/infer`` (their features
  read at the tap) to train the inverse network; aux: the target's training members
  (``same-set``), the disjoint auxiliary part of the training set recorded in the manifest
  (``same-distribution``; test images not used as private ones for models trained without it) or
  Gaussian noise images (``random-noise``);
* queryfree - the tail from the artifact store and labelled auxiliary images (no queries).

The attacks compute on the service's device (``attacker serve --device``, env ``SPLITLAB_DEVICE``,
settled once at start-up); an experiment's spec may not choose it.

Progress (step, fraction) and partial results are stored after every step; between steps the
runner checks for cancellation.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from models import ArtifactStore, SplitlabError, load_dataset, to_tensor

from ..captures.store import CaptureStore
from ..metrics import PSNR_CAP
from .attacks import attack_params
from .channel import EdgeChannel
from .images import save_grid
from .models_setup import ensure_deployment, ensure_model
from .spec import AttackSpec, Limits


@dataclass
class RunnerConfig:
    artifacts: Path
    captures: Path
    edge_url: str | None
    data_root: str | None = None
    limits: Limits = field(default_factory=Limits)
    flush: Callable[[], object] | None = None   # the in-process tap's recorder flush
    device: str | None = None                   # where attacks compute (None: each attack's default)
    capture_timeout: float = 20.0


def pick_samples(labels: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` indices, seeded, taking the classes in turn (one per class first)."""
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in np.unique(labels)]
    order = rng.permutation(len(pools))
    out: list[int] = []
    while len(out) < count and any(pools):
        for c in order:
            if pools[c] and len(out) < count:
                out.append(int(pools[c].pop()))
    return np.asarray(out, dtype=np.int64)


def summary(metrics: dict) -> dict:
    keys = ("psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "mse_mean", "mse_std", "ssim_paper_mean",
            "ssim_paper_std")
    return {k: _finite(metrics[k]) for k in keys if k in metrics} | {
        "psnr": [_finite(v) for v in metrics.get("psnr", [])]}


def _finite(v):
    v = float(v)
    return None if math.isnan(v) else max(-PSNR_CAP, min(PSNR_CAP, v))


class ExperimentRunner:
    """The ``run_experiment(record, context)`` callable the worker pool calls; the spec's kind
    picks the run (inversion here, the other kinds in their ``*_runner`` modules)."""

    def __init__(self, config: RunnerConfig):
        self.config = config
        self.store = ArtifactStore(config.artifacts)

    def __call__(self, record: dict, ctx) -> dict:
        from .kinds import kind_of

        kind = kind_of(record["spec"])
        if kind == "membership":
            from .membership_runner import MembershipRun as Run
        elif kind == "attribute":
            from .attribute_runner import AttributeRun as Run
        elif kind == "classifier-inversion":
            from .classifier_inversion_runner import ClassifierInversionRun as Run
        else:
            Run = _Run
        return Run(self, record, ctx).run()


class Steps:
    """A run of ``total`` steps: each step's name and the fraction done, with the partial results,
    reported through the worker's context (which also raises when the run is cancelled)."""

    def __init__(self, runner: ExperimentRunner, record: dict, ctx, total: int, results: dict):
        self.cfg = runner.config
        self.store = runner.store
        self.record, self.ctx = record, ctx
        self.spec = record["spec"]
        self.total, self.done, self.results = total, 0, results
        self.ctx_step = "starting"

    def step(self, text: str) -> None:
        self.ctx_step = text
        self.ctx.progress(text, self.done / self.total, self.results)

    def advance(self) -> None:
        self.done += 1
        self.ctx.progress(self.ctx_step, self.done / self.total, self.results)


class _Run(Steps):
    def __init__(self, runner: ExperimentRunner, record: dict, ctx):
        self.attacks = [AttackSpec.model_validate(a) for a in record["spec"]["attacks"]]
        per_split = 2 + len(self.attacks)
        super().__init__(runner, record, ctx, 1 + per_split * len(record["spec"]["split_points"]),
                         {"model": None, "baseline": None, "splits": [], "rows": [], "images": {}})
        self.prefix = f"lab-{record['id']}-r{record['restarts']}"

    def image(self, name: str, rows: list, caption: str) -> None:
        save_grid(self.ctx.image_dir / f"{name}.png", rows)
        self.results["images"][name] = {"url": f"/v1/experiments/{self.record['id']}/images/{name}.png",
                                        "caption": caption}

    def run(self) -> dict:
        from ..metrics import image_metrics

        spec, cfg = self.spec, self.cfg
        if not cfg.edge_url:  # fail before spending time on training
            raise SplitlabError("no edge to send images through: start the service with --edge URL "
                                "(the edge's REST address, e.g. http://localhost:8001)")
        self.step("model: train or reuse")
        model_id, manifest, reused = ensure_model(self.store, spec, cfg.data_root)
        self.results["model"] = {"model_id": model_id, "arch": manifest["arch"], "dataset": manifest["dataset"],
                                 "reused": reused, "train_accuracy": manifest.get("train_accuracy"),
                                 "test_accuracy": manifest.get("test_accuracy"),
                                 "train_seconds": manifest.get("train_seconds")}
        self.advance()

        ds = load_dataset(manifest["dataset"], cfg.data_root)
        idx = pick_samples(ds.y_test, spec["samples"], spec["seed"])
        pixels, labels = ds.x_test[idx], ds.y_test[idx]
        originals = to_tensor(pixels)
        blank = image_metrics(torch.zeros_like(originals), originals, psnr_cap=PSNR_CAP)
        self.results["baseline"] = {"kind": "blank (all-zero) image"} | summary(blank)
        self.results["private_images"] = {"split": "test", "indices": idx.tolist(), "labels": labels.tolist()}
        self.image("originals", [originals], "the private images sent through the edge")

        captures = CaptureStore(cfg.captures)
        channel = EdgeChannel(cfg.edge_url, captures, cfg.flush, capture_timeout=cfg.capture_timeout)
        try:
            for s, split in enumerate(spec["split_points"]):
                self._split(s, split, model_id, manifest, ds, pixels, labels, originals, channel, captures,
                            image_metrics)
        finally:
            channel.close()
            captures.close()
        self.results["finished_steps"] = self.done
        return self.results

    def _split(self, s, split, model_id, manifest, ds, pixels, labels, originals, channel, captures, image_metrics):
        self.step(f"{split}: deploy")
        dep, dep_reused = ensure_deployment(self.store, model_id, split, self.spec.get("feature_defense"),
                                            self.cfg.data_root)
        dep_id = dep["deployment_id"]
        self.advance()

        self.step(f"{split}: send {len(pixels)} private images through the edge")
        rids = [f"{self.prefix}-{s}-{i}" for i in range(len(pixels))]
        sent = channel.send(dep_id, pixels, rids, self.ctx.check)
        for i, rid in enumerate(rids):  # the experimenter knows the inputs: lets `attacker invert` score them
            captures.attach_ground_truth(rid, originals[i:i + 1].numpy())
        accuracy = float((sent.classes == labels).mean())
        split_row = {"split": split, "deployment_id": dep_id, "deployment_reused": dep_reused,
                     "feature_shape": dep["feature_shape"], "accuracy": accuracy,
                     "bytes_per_image": float(sent.wire_bytes.mean()), "wire_dtype": sent.wire_dtype,
                     "images_sent": len(pixels), "send_seconds": sent.seconds, "request_ids": rids}
        self.results["splits"].append(split_row)
        self.advance()

        features = torch.from_numpy(sent.features)
        for attack in self.attacks:
            self.step(f"{split}: {attack.label} attack")
            started = time.perf_counter()
            recon, info = self._attack(attack, split, dep, manifest, ds, captures, channel, features, s)
            seconds = time.perf_counter() - started
            scores = image_metrics(recon, originals, psnr_cap=PSNR_CAP)
            name = f"{split}-{attack.label}"
            self.image(name, [originals, recon], f"{split} · {attack.label}")
            self.results["rows"].append({
                "split": split, "attack": attack.label, **summary(scores), "accuracy": accuracy,
                "bytes_per_image": split_row["bytes_per_image"], "attack_seconds": seconds,
                "image": self.results["images"][name]["url"], **info})
            self.advance()

    # --- attacks -----------------------------------------------------------------------------------
    def _attack(self, attack: AttackSpec, split, dep, manifest, ds, captures, channel, features, s):
        from ..attacks import KnowledgeSource, attack_class, create, knowledge_for

        params = attack_params(attack, split, self.cfg.limits)
        if self.cfg.device is not None and "device" in attack_class(attack.name).Params.field_names():
            params["device"] = self.cfg.device  # the service's choice (attacker serve --device)
        obj = create(attack.name, params)
        info: dict = {"params": {k: v for k, v in params.items() if k != "progress"}}
        query = channel.query_function(dep["deployment_id"], f"{self.prefix}-{s}-{attack.label}", self.ctx.check)
        source = KnowledgeSource(dep["deployment_id"], artifacts=self.store, captures=captures, record=dep,
                                 query=query, query_label="the edge's /v1/infer", aux_setting=attack.aux,
                                 adaptive=attack.adaptive)
        if obj.Knowledge.AUX != "none":
            source.aux_images, source.aux_labels = self._aux_data(attack, manifest, ds, tuple(dep["input_shape"]))
        knowledge = knowledge_for(obj, source)
        info["knowledge"] = knowledge.origin
        self.ctx.check()
        obj.fit(knowledge)
        info.update(obj.fit_stats())
        self.ctx.check()
        recon = obj.reconstruct(features)
        return recon.detach().float().clamp(0, 1), info

    def _aux_data(self, attack: AttackSpec, manifest: dict, ds, input_shape) -> tuple:
        """The attack's auxiliary images (float, N, C, H, W) and labels (None for noise)."""
        from ..attacks import noise_images

        n = self._aux_count(attack)
        if attack.aux == "random-noise":
            return noise_images(n, input_shape, seed=self.spec["seed"]), None
        x, y = self._aux(attack.aux, manifest, ds, n)
        return to_tensor(x), y

    def _aux_count(self, attack: AttackSpec) -> int:
        return attack.aux_images or min(500, self.cfg.limits.max_aux_images)

    def _aux(self, setting: str, manifest: dict, ds, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Auxiliary images (uint8 N, H, W, C) and labels for ``same-set`` / ``same-distribution``."""
        rng = np.random.default_rng(self.spec["seed"] + 1)
        if setting == "same-set":
            part, pool = manifest["members"]["split"], np.asarray(manifest["members"]["indices"])
        elif "aux" in manifest.get("splits", {}):
            part, pool = "train", np.asarray(manifest["splits"]["aux"])
        else:  # a model trained on the whole training set: the test images not sent as private ones
            used = set(self.results["private_images"]["indices"])
            part, pool = "test", np.asarray([i for i in range(len(ds.y_test)) if i not in used])
        if len(pool) == 0:
            raise SplitlabError(f"no auxiliary images for the {setting} setting")
        chosen = np.sort(rng.permutation(pool)[:n])
        x, y = ds.part(part)
        return x[chosen], y[chosen]

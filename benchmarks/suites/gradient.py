"""Gradient-inversion suite: DLG, iDLG and Inverting Gradients against a client's update, per batch
size, observed layer group and seed.

    python -m benchmarks run benchmarks/configs/gradient-quick.yaml [--device cuda] [--only "b1 "]

A trial is (target x batch size x observed group, attack, seed). The target is the global model
of federated learning: :func:`models.reference.obtain_model` trains it once from its options
(model seed 0) and stores it in the artifact store, where the attacker's knowledge is read from
(``GradientKnowledge.from_store``: the weights, the observed parameters, the batch size). The
seed draws the client's private batch (distinct images of the dataset's test split, which the
server never saw) and the attack's random initialisation. The client's update is
:func:`client_gradients` (mean cross-entropy, eval mode) restricted to the observed parameters.
Reconstructions are paired with the originals by Hungarian matching on MSE before scoring
(:mod:`attacker.attacks.gradient.scoring`); the blank image's PSNR is reported as the baseline.
LPIPS is computed only when the config gives the weights (``lpips_weights``: the ``lpips``
package's ``alex.pth``; ``lpips_backbone``: torchvision's AlexNet weights, default its cache), and
reported as "not computed" otherwise. Config::

    suite: gradient
    seeds: 3
    batch_sizes: [1, 2, 4, 8]
    observe: [all]                       # layer groups (all, stem, attention, mlp, norm, head) or patterns
    targets:
      - name: lenet5-mnist
        arch: lenet5
        dataset: mnist
        options: {epochs: 1, limit: 3000, scheme: full}    # TrainOptions fields
    attacks:
      - name: gradient/inverting_gradients
        label: ig                         # optional; default the attack's short name
        params: {iterations: 300, tv_weight: 0.1}
    lpips_weights: null                   # optional path
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.harness.report import figure, fmt, group, mean_std, table, values
from benchmarks.harness.spec import Context, Trial, checked_entry, config_attack, expand, seeds_of, trial_options
from models.errors import SplitlabError

NAME = "gradient"
TITLE = "Gradient inversion"
TARGET_KEYS = {"name", "arch", "dataset", "options"}
ATTACK_KEYS = {"name", "label", "params"}
COLUMNS = [("MSE", "mse_mean", 4), ("PSNR dB", "psnr_mean", 2), ("SSIM", "ssim_mean", 3),
           ("label acc", "label_accuracy", 2), ("blank PSNR", "blank_psnr", 2), ("attack s", "attack_seconds", 1)]


def _positive_ints(name: str, value) -> list[int]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise SplitlabError(f"'{name}' must be a non-empty list of positive integers, got {value!r}")
    return value


def trials(config: dict) -> list[Trial]:
    batch_sizes = _positive_ints("batch_sizes", config.get("batch_sizes", [1]))
    groups = config.get("observe", ["all"])
    if not isinstance(groups, list) or not groups:
        raise SplitlabError(f"'observe' must be a non-empty list of layer groups or patterns, got {groups!r}")
    lpips = {"weights": config.get("lpips_weights"), "backbone": config.get("lpips_backbone")}
    targets, attacks = [], []
    for spec in config.get("targets") or []:
        spec = checked_entry("gradient target", spec, {"name", "arch", "dataset"}, TARGET_KEYS)
        options = trial_options("gradient target", spec["name"], spec)
        for b in batch_sizes:
            for observe in groups:
                label = f"{spec['name']} b{b} {observe}"
                targets.append((label, {**spec, "options": options, "batch_size": b, "observe": observe,
                                        "lpips": lpips}))
    for spec in config.get("attacks") or []:
        label, cls, spec = config_attack(NAME, spec, ATTACK_KEYS)
        attacks.append((label, {"name": cls.key(), "params": spec.get("params", {})}))
    if not targets or not attacks:
        raise SplitlabError("a gradient config needs 'targets' and 'attacks' (lists)")
    return expand(NAME, targets, attacks, seeds_of(config))


def run_trial(trial: Trial, ctx: Context) -> dict:
    import numpy as np
    import torch

    from attacker.attacks.gradient import GradientKnowledge, client_gradients
    from attacker.attacks.gradient.scoring import score
    from attacker.attacks.registry import attack_class
    from attacker.metrics import PSNR_CAP, image_metrics
    from benchmarks.suites.targets import obtain_target
    from models import ArtifactStore
    from models.datasets import to_tensor

    target, spec = trial.target, trial.attack
    store = ArtifactStore(ctx.artifacts)
    model, manifest, dataset, _ = obtain_target(target, 0, trial.device, ctx)  # one global model, all seeds
    b = target["batch_size"]
    knowledge = GradientKnowledge.from_store(store, model_id=manifest["model_id"], observe=target["observe"],
                                             batch_size=b)
    idx = np.random.default_rng(trial.seed).choice(len(dataset.x_test), b, replace=False)
    images, labels = to_tensor(dataset.x_test[idx]), torch.as_tensor(dataset.y_test[idx])
    update = client_gradients(model, images, labels, knowledge.observed)  # the client, on its own device
    cls = attack_class(spec["name"])
    attack = cls({"seed": trial.seed, "device": trial.device, **spec["params"]}).fit(knowledge)
    t0 = time.perf_counter()
    recon, rec_labels = attack.reconstruct(update)
    seconds = time.perf_counter() - t0
    lpips = None
    if target["lpips"]["weights"]:
        from attacker.lpips import LPIPS

        lpips = LPIPS(target["lpips"]["weights"], target["lpips"]["backbone"])
    result = score(recon, images, rec_labels, labels, lpips=lpips)
    blank = image_metrics(torch.zeros_like(images), images, psnr_cap=PSNR_CAP)["psnr_mean"]
    return {**{k: v for k, v in result.items() if k != "order"}, "blank_psnr": blank, "attack_seconds": seconds,
            "gradient_distance": attack.last_stats["gradient_distance"],
            "labels_from": attack.last_stats["labels_from"], "observed_parameters": len(knowledge.observed),
            "target_model": manifest["model_id"], "target_test_accuracy": manifest.get("test_accuracy"),
            "images": idx.tolist()}


def report(results: list[dict], out_dir: Path, config: dict) -> list[str]:
    groups = group(results, lambda r: (r["target"]["name"], r["target"]["observe"], r["target"]["batch_size"],
                                       r["label"].rsplit(" seed ", 1)[0].rsplit(" ", 1)[-1]))
    rows = []
    for (target, observe, b, attack), rs in groups.items():
        rows.append([target, observe, b, attack, len(rs), *(fmt(values(rs, key), d) for _, key, d in COLUMNS),
                     _lpips(rs)])
    body = ["Each row: one attack on one client batch size and observed layer group, mean ± std over the seeds "
            "(each seed draws its own private batch from the test split and its own initialisation). Per trial, "
            "reconstructions are paired with the originals by Hungarian matching on MSE, then MSE / PSNR / SSIM "
            "(scikit-image, images in [0, 1], PSNR capped at 100 dB) are averaged over the batch. `blank PSNR`: "
            "an all-black image against the same batch, the baseline an attack must beat. `label acc`: the "
            "batch's labels recovered, as a multiset. LPIPS: "
            + ("computed from the configured weights." if config.get("lpips_weights") else
               "not computed (no `lpips_weights` given; it needs pretrained AlexNet and LPIPS weights)."), ""]
    body += table(["target", "observed", "batch", "attack", "seeds", *(c for c, _, _ in COLUMNS), "LPIPS"], rows)
    body += _psnr_by_batch(groups, out_dir)
    return body


def _lpips(rs: list[dict]) -> str:
    xs = values(rs, "lpips_mean")
    return fmt(xs, 3) if xs else "not computed"


def _psnr_by_batch(groups: dict, out_dir: Path) -> list[str]:
    """PSNR (mean over seeds) per attack and observed group against the batch size, and its plot."""
    sizes = sorted({b for (_, _, b, _) in groups})
    if len(sizes) < 2:
        return []
    cells: dict = {}
    for (target, observe, b, attack), rs in groups.items():
        cells.setdefault((target, observe, attack), {})[b] = values(rs, "psnr_mean")
    targets = list(dict.fromkeys(key[0] for key in cells))
    with figure(out_dir / "gradient-psnr.png", len(targets), (3.6 * len(targets), 3.2)) as (_, axes):
        for ax, target in zip(axes if len(targets) > 1 else [axes], targets):
            blank = [v for (t, _, _, _), rs in groups.items() if t == target for v in values(rs, "blank_psnr")]
            ax.axhline(mean_std(blank)[0], color="k", linestyle="--", linewidth=0.8, label="blank image")
            for (t, observe, attack), row in cells.items():
                if t == target:
                    bs = [b for b in sizes if row.get(b)]
                    stats = [mean_std(row[b]) for b in bs]
                    ax.errorbar(bs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                                label=attack if observe == "all" else f"{attack} ({observe})")
            ax.set_xscale("log", base=2)
            ax.set(title=target, xlabel="client batch size", ylabel="PSNR (dB)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return ["", "PSNR (dB) by batch size:", "",
            *table(["target", "observed", "attack", *(f"b{b}" for b in sizes)],
                   [[*key, *(fmt(row.get(b, []), 1) for b in sizes)] for key, row in cells.items()]),
            "", "![PSNR against the client's batch size, mean and std over seeds](gradient-psnr.png)"]

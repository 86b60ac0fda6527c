"""Training suite: accuracy reached and seconds per epoch of the reference targets, per seed.

    python -m benchmarks run benchmarks/configs/training.yaml [--threads 2] [--only lenet5] [--fresh]

Trials are target x seed (``seeds:``, default ``[0]``). Each trial trains its target, or reuses the
model already in the artifact store under the trial's id (``--fresh`` trains again), so the attack
benchmarks find the targets by id: seed 0 is stored as the config's ``id``, seed ``s`` as
``<id>-s<s>``. Config::

    suite: training
    seeds: [0]                   # or a count: 3 -> 0, 1, 2
    targets:
      - id: lenet5-mnist-ref     # model id of seed 0 in the artifact store
        arch: lenet5
        dataset: mnist
        target_test_accuracy: 0.985   # reported as met / not met; not part of the trial
        options: {epochs: 12, batch_size: 128, lr: 0.001, scheme: full}   # TrainOptions fields

The report has one row per target with mean +- std over seeds and, for targets trained with
``eval_each_epoch``, the test-accuracy curve (``training-curves.png``).
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.harness.report import figure, fmt, group, table, training_budget, values
from benchmarks.harness.spec import Context, Trial, checked_entry, expand, seeds_of, trial_options
from models.errors import SplitlabError

NAME = "training"
TITLE = "Training benchmark"
TARGET_KEYS = {"id", "arch", "dataset", "options", "target_test_accuracy"}


def ensure_target(store, spec: dict, retrain: bool = False, progress: bool = True, device: str = "cpu") -> dict:
    """Train the target described by ``spec`` (id, arch, dataset, options) unless it is stored with
    these options (stored with others: an error naming them, never a silent reuse)."""
    from models.reference import obtain_model
    from models.training import TrainOptions, train

    model_id = spec["id"]
    options = {"device": device, **spec.get("options", {})}
    opts = TrainOptions(arch=spec["arch"], dataset=spec["dataset"], **options)
    if not retrain:
        return obtain_model(store, opts, device, progress=progress, model_id=model_id)[1]
    model, manifest = train(opts, progress=progress)
    manifest["model_id"] = model_id
    store.save_model(model_id, model.state_dict(), manifest, overwrite=retrain)
    return manifest


def model_id(base: str, seed: int) -> str:
    return base if seed == 0 else f"{base}-s{seed}"


def trials(config: dict) -> list[Trial]:
    targets = config.get("targets")
    if not isinstance(targets, list) or not targets:
        raise SplitlabError("a training config needs 'targets': a list of {id, arch, dataset, options}")
    pairs = []
    for spec in targets:
        spec = checked_entry("training target", spec, {"id", "arch", "dataset"}, TARGET_KEYS)
        options = trial_options("training target", spec["id"], spec)
        target = {k: spec[k] for k in ("id", "arch", "dataset")} | {"options": options}
        pairs.append((spec["id"], target))
    return expand(NAME, pairs, None, seeds_of(config))


def run_trial(trial: Trial, ctx: Context) -> dict:
    from models import ArtifactStore

    target = trial.target
    spec = {**target, "id": model_id(target["id"], trial.seed), "options": {**target["options"], "seed": trial.seed}}
    m = ensure_target(ArtifactStore(ctx.artifacts), spec, retrain=ctx.fresh, progress=ctx.progress,
                      device=trial.device)
    return {"model_id": spec["id"], "train_images": len(m["members"]["indices"]), "epochs": m["options"]["epochs"],
            "train_accuracy": m["train_accuracy"], "test_accuracy": m["test_accuracy"],
            "epoch_seconds": statistics.median(m["epoch_seconds"]), "train_seconds": m["train_seconds"],
            "epoch_test_accuracy": m.get("epoch_test_accuracy")}


def report(results: list[dict], out_dir: Path, config: dict) -> list[str]:
    goals = {t["id"]: t.get("target_test_accuracy") for t in config.get("targets", [])}
    rows = []
    for base, rs in group(results, lambda r: r["target"]["id"]).items():
        first = rs[0]
        goal = goals.get(base)
        test = values(rs, "test_accuracy")
        met = "" if goal is None else ("yes" if statistics.fmean(test) >= goal else "**no**")
        rows.append([base, first["target"]["arch"], first["target"]["dataset"], ", ".join(str(r["seed"]) for r in rs),
                     " / ".join(sorted({str(v) for v in values(rs, "train_images")})), first["metrics"]["epochs"], training_budget(first["target"]["options"]),
                     fmt(values(rs, "epoch_seconds"), 1), fmt(values(rs, "train_seconds"), 0),
                     fmt(values(rs, "train_accuracy")), fmt(test), "" if goal is None else f">= {goal}", met])
    body = ["Each row: mean ± std over the seeds (seed 0 is stored as the model id, seed s as `<id>-s<s>`); "
            "seconds are the stored model's own training time.", ""]
    body += table(["model id", "arch", "dataset", "seeds", "train images", "epochs", "budget", "s/epoch (median)",
                   "total s", "train acc", "test acc", "target", "met"], rows)
    curves = [(r["metrics"]["model_id"], r["metrics"]["epoch_test_accuracy"]) for r in results
              if r["status"] == "ok" and r["metrics"].get("epoch_test_accuracy")]
    if curves:
        body += ["", "Test accuracy after each epoch (`eval_each_epoch`):", ""]
        for name, curve in curves:
            marks = sorted({1, len(curve), *range(5, len(curve), 5)})
            body.append(f"- {name}: " + ", ".join(f"epoch {e} {curve[e - 1]:.4f}" for e in marks))
        plot_curves(curves, goals, results, out_dir / "training-curves.png")
        body += ["", "![training curves](training-curves.png)"]
    return body


def plot_curves(curves: list[tuple[str, list[float]]], goals: dict, results: list[dict], path: Path) -> Path:
    """Test accuracy per epoch of every trial that recorded it, with its target's goal as a dashed line."""
    base_of = {r["metrics"].get("model_id"): r["target"]["id"] for r in results if r["status"] == "ok"}
    with figure(path) as (_, ax):
        for name, curve in curves:
            line, = ax.plot(range(1, len(curve) + 1), curve, marker=".", label=name)
            if goals.get(base_of.get(name)):
                ax.axhline(goals[base_of[name]], color=line.get_color(), linestyle="--", linewidth=0.8)
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return path

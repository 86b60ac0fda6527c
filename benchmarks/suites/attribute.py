"""Attribute-inference suite: a private attribute (race, age band) inferred at each split point.

    python -m benchmarks run benchmarks/configs/attribute.yaml [--device cuda]

The target is the course project's gender classifier (``aia-lenet`` on UTKFace, task 3 of
``003_7cab5165b2ec823a.txt``) trained with the privacy split scheme; the attacker owns the
scheme's shadow and auxiliary parts of the train split (50%, disjoint from the target's 25% of
members) with their race and age, and the victims are the test split (people the target never
trained on). For each observation, a split point's features or the released probabilities,
the attacker learns observation -> attribute on its own images (``attribute/features``,
``attribute/outputs``) and infers the victims' attribute from theirs.

A trial is (target, observation x attribute, seed); the seed trains the target (and draws its
split) and seeds the attack. Observations are computed in-process here (the head's features,
the model's float64 softmax), which is what the tap records and the edge answers (the live test,
``tests/test_attribute_live.py``, attacks what the tap captured). Metrics: accuracy, macro-F1 and
per-class F1 (scikit-learn) against the majority-class baseline (the attacker's own majority class,
predicted for everyone). Config::

    suite: attribute
    seeds: 1
    target: {arch: aia-lenet, dataset: utkface, options: {epochs: 8}}
    observations: [conv1, pool1, outputs]       # split points of the target, or 'outputs'
    attributes: [race, age-band]
    params: {epochs: 20}                         # the attack's parameters (AttributeParams)
    aux_limit: 2000                              # optional: the attacker's images used
    victims: 1000                                # optional: victims drawn from the test split
    notes: benchmarks/results/attribute/notes.md # optional: hand-written notes, the report's last section
    published:                                   # a paper's figures, shown beside ours
      - {source: "003 task 3", attribute: race, accuracy: 0.51, baseline: 0.4252, f1: [0.64, 0.44, 0.39, 0.22, 0.01]}
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from attacker.attacks.attribute.evaluation import attacker_and_victims, attribute_metrics
from benchmarks.harness.report import figure, fmt, group, mean_std, ok, table, values
from benchmarks.harness.spec import Context, Trial, checked_entry, expand, seeds_of, trial_options
from models.errors import SplitlabError

NAME = "attribute"
TITLE = "Attribute inference"
KEYS = {"suite", "title", "seeds", "out", "target", "observations", "attributes", "params", "aux_limit", "victims",
        "published", "notes"}
PUBLISHED_KEYS = {"source", "attribute", "accuracy", "baseline", "f1"}


def trials(config: dict) -> list[Trial]:
    from attacker.attacks.attribute import AttributeParams, attribute_classes
    from models.zoo import split_points

    checked_entry("attribute config", config, {"target", "observations", "attributes"}, KEYS)
    target = checked_entry("attribute target", config["target"], {"arch", "dataset"}, {"arch", "dataset", "options"})
    options = trial_options("attribute target", target["arch"], target)
    points = split_points(target["arch"])
    observations = config["observations"]
    if not isinstance(observations, list) or not observations:
        raise SplitlabError("'observations' must be a list of split points and/or 'outputs'")
    for obs in observations:
        if obs != "outputs" and obs not in points:
            raise SplitlabError(f"observation {obs!r} is neither 'outputs' nor a split point of {target['arch']} "
                                f"({', '.join(points)})")
    for attribute in config["attributes"]:
        attribute_classes(attribute)
    params = dict(config.get("params") or {})
    AttributeParams.from_dict(params)  # a bad parameter fails before any trial runs
    for key in ("aux_limit", "victims"):
        if config.get(key) is not None and (not isinstance(config[key], int) or config[key] < 10):
            raise SplitlabError(f"'{key}' must be an integer >= 10, got {config[key]!r}")
    for row in config.get("published") or []:
        checked_entry("published row", row, {"source", "attribute"}, PUBLISHED_KEYS)
    spec = {**target, "options": options}
    attacks = [(f"{obs} {attribute}", {"name": "attribute/outputs" if obs == "outputs" else "attribute/features",
                                       "observe": obs, "attribute": attribute, "params": params,
                                       "aux_limit": config.get("aux_limit"), "victims": config.get("victims")})
               for attribute in config["attributes"] for obs in observations]
    return expand(NAME, [(target["arch"], spec)], attacks, seeds_of(config))


def run_trial(trial: Trial, ctx: Context) -> dict:
    import torch

    from attacker.attacks.attribute import attribute_classes
    from attacker.attacks.knowledge import KnowledgeSource, knowledge_for
    from attacker.attacks.membership.knowledge import model_query
    from attacker.attacks.registry import create
    from models import ArtifactStore, load_dataset, to_tensor
    from models.reference import obtain_model
    from models.split import split_model
    from models.training import TrainOptions

    target, spec = trial.target, trial.attack
    dataset = load_dataset(target["dataset"])
    options = TrainOptions(arch=target["arch"], dataset=target["dataset"],
                           **{**target["options"], "seed": trial.seed, "device": trial.device})
    model, manifest = obtain_model(ArtifactStore(ctx.artifacts), options, trial.device, progress=ctx.progress,
                                   dataset=dataset)
    classes = attribute_classes(spec["attribute"])
    aux_idx, aux_y, vic_idx, vic_y = attacker_and_victims(dataset, trial.seed, spec["attribute"],
                                                          spec.get("aux_limit"), spec.get("victims"))
    aux_x, vic_x = to_tensor(dataset.x_train[aux_idx]), to_tensor(dataset.x_test[vic_idx])
    record = {"input_shape": list(dataset.input_shape), "model_id": manifest["model_id"]}
    if spec["observe"] == "outputs":
        observe = model_query(model)
        source = KnowledgeSource(record=record, query=observe, query_label="the model in process")
    else:
        head, _ = split_model(model, spec["observe"])
        head.eval()

        def observe(images):
            with torch.no_grad():
                return head(images)

        source = KnowledgeSource(record={**record, "split": spec["observe"]}, head=head)
    source.aux_images, source.aux_labels = aux_x, aux_y
    attack = create(spec["name"], {"seed": trial.seed, "device": trial.device, **spec["params"]})
    t0 = time.perf_counter()
    attack.fit(knowledge_for(attack, source, num_classes=len(classes)))
    fit_seconds = time.perf_counter() - t0
    pred = attack.infer(np.concatenate([np.asarray(observe(vic_x[i:i + 512])) for i in range(0, len(vic_x), 512)]))
    metrics = attribute_metrics(pred, vic_y, aux_y, classes)
    metrics.update({"target_test_accuracy": manifest["test_accuracy"], "target_model": manifest["model_id"],
                    "fit_seconds": fit_seconds, **{f"fit_{k}": v for k, v in attack.fit_stats().items()}})
    return metrics


def report(results: list[dict], out_dir: Path, config: dict) -> list[str]:
    from attacker.attacks.attribute import attribute_classes

    body = ["Each row: the attack on one observation of the victims' requests (a split point's features, in "
            "depth order, or the released probabilities), mean ± std over seeds. Baseline: the attacker's "
            "majority class for everyone. Per-class F1 in the class order given.", ""]
    published = config.get("published") or []
    for attribute in config["attributes"]:
        classes = attribute_classes(attribute)
        groups = group([r for r in results if r["attack"]["attribute"] == attribute], lambda r: r["attack"]["observe"])
        if not groups:
            continue
        first = next(iter(groups.values()))[0]["metrics"]
        targets = {r["seed"]: r["metrics"]["target_test_accuracy"] for rs in groups.values() for r in rs}
        body += [f"### {attribute} ({', '.join(classes)}); target test accuracy (gender) "
                 f"{fmt(list(targets.values()), 3)}, {first['victims']} victims, "
                 f"{first.get('fit_aux_samples', '?')} attacker images", ""]
        rows = [[obs, len(rs), fmt(values(rs, "accuracy"), 3), fmt(values(rs, "baseline_accuracy"), 3),
                 fmt(values(rs, "macro_f1"), 3), *(fmt(values(rs, f"f1_{i}"), 2) for i in range(len(classes))),
                 fmt(values(rs, "fit_seconds"), 0)] for obs, rs in groups.items()]
        for row in published:
            if row["attribute"] == attribute:
                f1 = row.get("f1") or []
                rows.append([f"**{row['source']}** (published)", "", f"{row.get('accuracy', '')}",
                             f"{row.get('baseline', '')}", "", *(f"{v}" for v in f1),
                             *([""] * (len(classes) - len(f1))), ""])
        body += table(["observation", "seeds", "accuracy", "majority baseline", "macro-F1",
                       *(f"F1 {c}" for c in classes), "fit s"], rows)
        body.append("")
    if ok(results):
        plot(results, config["attributes"], out_dir / "attribute.png")
        body += ["![accuracy per observation against the majority baseline](attribute.png)"]
    return body


def plot(results: list[dict], attributes: list[str], path: Path) -> Path:
    with figure(path, len(attributes), (3.6 * len(attributes), 3.2)) as (_, axes):
        for ax, attribute in zip(np.atleast_1d(axes), attributes):
            groups = group([r for r in results if r["attack"]["attribute"] == attribute],
                           lambda r: r["attack"]["observe"])
            stats = [mean_std(values(rs, "accuracy")) for rs in groups.values()]
            base = np.mean([mean_std(values(rs, "baseline_accuracy"))[0] for rs in groups.values()]) if groups else 0
            ax.errorbar(range(len(groups)), [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o")
            ax.axhline(base, color="k", linestyle="--", linewidth=0.8, label="majority class")
            ax.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{attribute}: attack accuracy", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    return path

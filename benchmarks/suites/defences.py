"""Defences suite (issue 16): every defence against every attack family, naive and adaptive, with its cost.

    python -m benchmarks run benchmarks/configs/defences.yaml [--executor ray] [--device cuda]

Why one suite: a defence is a trade. What it costs (task accuracy, training time) and what it buys
(membership AUC and TPR at 1% FPR; the PSNR/SSIM of inverted features) only mean something side by
side, on the same target, seed and images; and a defence only counts against an attacker who knows
it. So each inversion (white-box, black-box and query-free, He et al.'s three settings) runs twice,
the choice being the attacker's knowledge (``KnowledgeSource.adaptive``, as with ``attacker invert
--adaptive`` and the lab's ``"adaptive": true``; :mod:`attacker.attacks.inversion.known_defence`):
*naive* (the attacker ignores the defence: white-box rMLE through the defence's deterministic part;
a black-box inverse network trained on clean features of its auxiliary images; a query-free shadow
head trained through the tail alone) and *adaptive* (it knows the spec from the deployment record:
white-box through the defence; the inverse network trained on those clean features with the
defence drawn afresh per batch; the shadow head, trained through the tail as the tail was, inverted
through itself followed by the defence).

A trial is (target, defence, seed), all attacks in one trial (they share the trained target):

- a *training-time* defence is ``TrainOptions`` fields (``dropout``, ``weight_decay`` and
  ``weight_decay_scope``, ``dp_epsilon`` ...); the target is trained with them (once per spec and
  seed, through the artifact store);
- a *feature* defence is a spec string (``models.defences.features``), applied to the head at each
  split point as it would be deployed (a ``quantize`` range calibrated on 256 training images), and
  membership attacks query the defended pipeline at the first split point (the tail is not
  retrained);
- both may be combined in one entry.

Task accuracy is the deployed pipeline's (head, feature defence, tail) at the first split point on
``accuracy_images`` test images drawn by the seed, the same images for every defence (the attacked
images and the black-box attacker's auxiliary images are further test images of that draw; the
query-free attacker's labelled auxiliary images are training images in an order drawn by the seed:
the cloud holds the tail and the data it was trained on). Where the adaptive attacker knows nothing
the naive one does not use, its figures are copied, not recomputed: for white-box where a defence
has nothing random or rounded (none, deeper, nonlinear, training-time ones; the white-box head
holds the deterministic layers already), for black-box and query-free where it adds no layer (none,
deeper, training-time ones).

Config::

    suite: defences
    seeds: 2
    evaluation: {members: 200, non_members: 200, images: 16, accuracy_images: 1000}
    targets:
      - {name: lenet5-mnist, arch: lenet5, dataset: mnist, options: {epochs: 5}, splits: [conv1, relu2]}
    defences:
      - {name: none}
      - {name: dp-eps8, training: {dp_epsilon: 8}}
      - {name: gaussian0.5, feature: "gaussian:sigma=0.5"}
    membership:                       # membership attacks (registry keys, params, optional label); may be empty
      - {name: membership/threshold, label: threshold, params: {metric: loss}}
    whitebox: {iterations: 300, eot_samples: 4}     # WhiteBoxParams (adaptive is set per run)
    blackbox: {epochs: 10, aux: 1000}               # BlackBoxParams, plus the auxiliary image count
    queryfree: {epochs: 10, aux: 1000, whitebox: {iterations: 300, eot_samples: 4}}  # QueryFreeParams, aux count
    notes: benchmarks/results/defences/notes.md     # optional: included at the end of the report
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.harness.report import figure, fmt, group, mean_std, ok, table, values
from benchmarks.harness.spec import Context, Trial, checked_entry, expand, seeds_of, trial_options
from models.errors import SplitlabError

NAME = "defences"
TITLE = "Defences: cost and protection, naive and adaptive attackers"
TARGET_KEYS = {"name", "arch", "dataset", "options", "splits"}
DEFENCE_KEYS = {"name", "training", "feature"}
ATTACK_KEYS = {"name", "label", "params", "aux_limit"}
EVALUATION = {"members": 200, "non_members": 200, "images": 16, "accuracy_images": 1000}
INVERSIONS = {"whitebox": "WB", "blackbox": "BB", "queryfree": "QF"}  # attack -> its short name in the report
MODES = ("naive", "adaptive")
# columns of the main table that describe the target, not an attack's success (no Pareto panel);
# the train accuracy next to the task accuracy is the generalisation gap membership attacks feed on
COSTS = ("accuracy", "target_train_accuracy", "train_seconds", "dp_spent_epsilon")


def _membership_attacks(config: dict) -> list[dict]:
    from attacker.attacks.registry import attack_class

    attacks = []
    for spec in config.get("membership") or []:
        spec = checked_entry("membership attack", spec, {"name"}, ATTACK_KEYS)
        cls = attack_class(spec["name"])
        if cls.family != "membership":
            raise SplitlabError(f"'membership' lists membership attacks, not {spec['name']!r}")
        cls.Params.from_dict(spec.get("params", {}))
        attacks.append({"name": cls.key(), "label": spec.get("label") or cls.name, "params": spec.get("params", {}),
                        "aux_limit": spec.get("aux_limit")})
    return attacks


def _inversion_params(config: dict) -> dict:
    from attacker.attacks.inversion.blackbox import BlackBoxParams
    from attacker.attacks.inversion.queryfree import QueryFreeParams
    from attacker.attacks.inversion.whitebox import WhiteBoxParams

    wb = dict(config.get("whitebox") or {})
    bb = dict(config.get("blackbox") or {})
    qf = dict(config.get("queryfree") or {})
    counts = {name: block.pop("aux", 1000) for name, block in (("blackbox", bb), ("queryfree", qf))}
    if "adaptive" in wb:
        raise SplitlabError("whitebox: 'adaptive' is set by the suite (every inversion runs naive and adaptive)")
    for name, aux in counts.items():
        if not isinstance(aux, int) or isinstance(aux, bool) or aux < 2:
            raise SplitlabError(f"{name}: 'aux' must be an image count of at least 2, got {aux!r}")
    WhiteBoxParams.from_dict({**wb, "progress": False})
    BlackBoxParams.from_dict({**bb, "progress": False})
    QueryFreeParams.from_dict({**qf, "progress": False})
    return {"whitebox": wb, "blackbox": bb, "queryfree": qf, "aux": counts["blackbox"], "qf_aux": counts["queryfree"]}


def trials(config: dict) -> list[Trial]:
    from models.defences import features as fdef
    from models.training import TrainOptions
    from models.zoo import split_points

    evaluation = {**EVALUATION, **(config.get("evaluation") or {})}
    if set(evaluation) != set(EVALUATION) or not all(isinstance(v, int) and v > 0 for v in evaluation.values()):
        raise SplitlabError(f"'evaluation' takes positive counts {', '.join(EVALUATION)}, got {evaluation!r}")
    common = {"evaluation": evaluation, "membership": _membership_attacks(config), **_inversion_params(config)}
    defences = []
    for spec in config.get("defences") or []:
        spec = checked_entry("defence", spec, {"name"}, DEFENCE_KEYS)
        training = spec.get("training") or {}
        if not isinstance(training, dict) or {"seed", "arch", "dataset"} & set(training):
            raise SplitlabError(f"defence {spec['name']}: 'training' is a mapping of TrainOptions defence fields")
        feature = fdef.to_json(fdef.defences(spec.get("feature") or None))  # a bad spec fails here
        defences.append((spec["name"], {"training": training, "feature": feature}))
    targets = []
    for spec in config.get("targets") or []:
        spec = checked_entry("defences target", spec, {"name", "arch", "dataset", "splits"}, TARGET_KEYS)
        options = trial_options("defences target", spec["name"], spec)
        points, splits = split_points(spec["arch"]), spec["splits"]
        if not isinstance(splits, list) or not splits or set(splits) - set(points):
            raise SplitlabError(f"defences target {spec['name']}: 'splits' must be a list of its split points "
                                f"({', '.join(points)}), got {splits!r}")
        for d_name, d in defences:
            merged = {**options, **d["training"]}
            TrainOptions(arch=spec["arch"], dataset=spec["dataset"], **merged).validate()
            targets.append((f"{spec['name']} {d_name}", {
                "name": spec["name"], "arch": spec["arch"], "dataset": spec["dataset"], "options": merged,
                "splits": splits, "defence": d_name, "feature": d["feature"], **common}))
    if not targets or not defences:
        raise SplitlabError("a defences config needs 'targets' and 'defences' (lists)")
    return expand(NAME, targets, None, seeds_of(config))


def run_trial(trial: Trial, ctx: Context) -> dict:
    import numpy as np
    import torch
    from torch import nn

    from attacker.attacks.membership.evaluation import evaluation_samples
    from attacker.attacks.registry import attack_class
    from attacker.membership_metrics import membership_metrics
    from benchmarks.suites.targets import obtain_target
    from models import ArtifactStore, to_tensor
    from attacker.attacks.inversion.known_defence import has_layers
    from models.defences import features as fdef
    from models.split import split_model

    t = trial.target
    store = ArtifactStore(ctx.artifacts)
    model, manifest, dataset, options = obtain_target({**t, "options": t["options"]}, trial.seed, trial.device, ctx)
    model = model.cpu().eval()
    ev = t["evaluation"]
    input_shape = dataset.input_shape
    calibration = to_tensor(dataset.x_train[:256])
    heads = {split: fdef.defended_head(model, split, t["feature"], input_shape, calibration) for split in t["splits"]}
    metrics = {"target_model": manifest.get("model_id"), "train_seconds": manifest.get("train_seconds"),
               "target_train_accuracy": manifest["train_accuracy"], "clean_test_accuracy": manifest["test_accuracy"]}
    if manifest.get("dp"):
        metrics["dp_spent_epsilon"] = manifest["dp"].get("spent_epsilon")
    # test images in an order drawn by the seed (an archive may store them sorted by class: CIFAR-10's does)
    order = np.random.default_rng(trial.seed).permutation(len(dataset.x_test))
    xa = to_tensor(dataset.x_test[order[:ev["accuracy_images"]]])
    ya = torch.as_tensor(dataset.y_test[order[:ev["accuracy_images"]]])
    torch.manual_seed(trial.seed)
    pipelines = {}
    for split, dh in heads.items():
        pipelines[split] = nn.Sequential(dh.module, split_model(model, dh.split)[1]).eval()
        with torch.no_grad():
            metrics[f"accuracy@{split}"] = float((pipelines[split](xa).argmax(1) == ya).float().mean())
    first = t["splits"][0]
    metrics["accuracy"] = metrics[f"accuracy@{first}"]  # the same images for every defence

    # membership: the deployed pipeline (at the first split point) is the target queried
    if t["membership"]:
        x, y, is_member = evaluation_samples(dataset, manifest, {"members": ev["members"],
                                                                 "non_members": ev["non_members"]}, trial.seed)
    target_model = pipelines[first] if t["feature"] else model
    for spec in t["membership"]:
        cls = attack_class(spec["name"])
        defaults = {k: v for k, v in {"seed": trial.seed, "device": trial.device}.items()
                    if k in cls.Params.field_names()}
        attack = cls({**defaults, **spec["params"]})
        knowledge = attack.Knowledge.in_process(target_model, dataset, options, store, aux_limit=spec.get("aux_limit"),
                                                device=trial.device)
        started = time.perf_counter()
        attack.fit(knowledge)
        m = membership_metrics(attack.score((x, y)), is_member, attack.threshold)
        label = spec["label"]
        metrics.update({f"{label}_auc": m["auc"], f"{label}_tpr_at_1pct_fpr": m["tpr_at_1pct_fpr"],
                        f"{label}_seconds": time.perf_counter() - started})

    # inversion at each split point, naive and adaptive
    images = to_tensor(dataset.x_test[order[:ev["images"]]])
    aux = to_tensor(dataset.x_test[order[ev["images"]:ev["images"] + t["aux"]]])
    labelled = np.random.default_rng(trial.seed + 1).permutation(len(dataset.x_train))[:t["qf_aux"]]
    labelled = (to_tensor(dataset.x_train[labelled]), torch.as_tensor(dataset.y_train[labelled]).long())
    for split, dh in heads.items():
        with torch.no_grad():
            sent = dh.module(images)  # what the defended edge sends
        # what the adaptive attacker knows beyond the naive one: for white-box the defence's random or
        # rounded parts (it holds the rest in the head), for the others any layer of the defence
        knows_more = {"whitebox": fdef.hides_from_whitebox(dh.defences)}
        knows_more |= dict.fromkeys(("blackbox", "queryfree"), has_layers(dh.defences))
        for kind in INVERSIONS:
            for mode in MODES:
                key = f"{kind}_{mode}@{split}"
                if mode == "adaptive" and not knows_more[kind]:
                    naive = f"{kind}_naive@{split}"
                    metrics.update({f"{key}_{m}": metrics[f"{naive}_{m}"] for m in ("psnr", "ssim", "seconds")})
                    continue
                started = time.perf_counter()
                recon = _invert(kind, mode, model, dh, input_shape, sent, aux if kind == "blackbox" else labelled,
                                t, trial)
                score = _image_scores(recon, images)
                metrics.update({f"{key}_psnr": score["psnr_mean"], f"{key}_ssim": score["ssim_mean"],
                                f"{key}_seconds": time.perf_counter() - started})
    return metrics


def _invert(kind: str, mode: str, model, dh, input_shape, sent, aux, t: dict, trial: Trial):
    """One inversion attack on ``sent`` with only its threat model's knowledge of the deployment; the
    attacker knows the defence (from the deployment record) when ``mode`` is adaptive."""
    import torch

    from attacker.attacks.inversion.knowledge import WhiteBoxKnowledge
    from attacker.attacks.knowledge import KnowledgeSource, knowledge_for
    from attacker.attacks.registry import create
    from models.defences import features as fdef
    from models.split import split_model

    adaptive = mode == "adaptive"
    params = {**t[kind], "device": trial.device, "progress": False}
    if kind == "whitebox":
        attack = create("whitebox", **params)
        return attack.fit(WhiteBoxKnowledge.from_defended(dh, input_shape, adaptive=adaptive)).reconstruct(sent)
    head, tail = split_model(model, dh.split)
    with torch.no_grad():
        classes = int(tail(sent[:1]).shape[1])
    record = {"input_shape": list(input_shape), "feature_shape": list(sent.shape[1:]), "split": dh.split,
              "arch": t["arch"], "num_classes": classes, "feature_defense": fdef.to_json(dh.defences)}
    if kind == "blackbox":  # the model provider's clean head: an adaptive attacker adds the defence itself
        attack = create("blackbox", **{"seed": trial.seed, **params})
        source = KnowledgeSource(record=record, head=head, clean_queries=True, adaptive=adaptive, aux_images=aux,
                                 aux_setting="same-distribution", aux_name="test images")
    else:  # the cloud: the tail and labelled training images
        attack = create("queryfree", **{"seed": trial.seed, **params,
                                        "whitebox": {**t[kind].get("whitebox", {}), "progress": False}})
        source = KnowledgeSource(record=record, tail=tail, adaptive=adaptive, aux_images=aux[0], aux_labels=aux[1],
                                 aux_name="training images")
    return attack.fit(knowledge_for(attack, source)).reconstruct(sent)


def _image_scores(recon, images) -> dict:
    from attacker.metrics import image_metrics

    return image_metrics(recon, images)


# --- report ---------------------------------------------------------------------------------------

def _columns(rs: list[dict]) -> list[tuple[str, str, int]]:
    """(caption, metric, digits) of the main table: cost, membership, then inversion per split."""
    t = rs[0]["target"]
    cols = [("task acc", "accuracy", 3), ("train acc", "target_train_accuracy", 3), ("train s", "train_seconds", 0)]
    if any("dp_spent_epsilon" in (r.get("metrics") or {}) for r in rs):
        cols.append(("DP eps spent", "dp_spent_epsilon", 2))
    for spec in t["membership"]:
        cols += [(f"{spec['label']} AUC", f"{spec['label']}_auc", 3),
                 (f"{spec['label']} TPR@1%", f"{spec['label']}_tpr_at_1pct_fpr", 3)]
    for split in t["splits"]:
        for kind in INVERSIONS:
            cols += [(f"{INVERSIONS[kind]} {split} PSNR {mode}", f"{kind}_{mode}@{split}_psnr", 1) for mode in MODES]
    return cols


def report(results: list[dict], out_dir: Path, config: dict) -> list[str]:
    by_model = group(results, lambda r: r["target"]["name"])
    body = ["One row per defence, mean ± std over seeds. Task accuracy: the deployed pipeline's (head, feature "
            "defence, tail; the tail is not retrained) at the first split point, on the same test images for every "
            "defence; train acc: the trained model's on its members, without a feature defence (a training defence "
            "changes it; a feature defence applies after training). Membership: AUC and TPR at 1% FPR of each "
            "attack on the deployed pipeline. Inversion: PSNR "
            "(dB) of white-box (WB), black-box (BB) and query-free (QF) reconstructions of the same test images, "
            "naive (the attacker ignores the defence) and adaptive (it knows the defence's spec from the deployment "
            "record: white-box optimises through it, the inverse network trains on defended features, the shadow "
            "head is inverted through it). SSIM in the second table per model.", ""]
    for name, rs in by_model.items():
        rows = group(rs, lambda r: r["target"]["defence"])
        cols = _columns(rs)
        t = rs[0]["target"]
        body += [f"## {name} ({t['arch']} on {t['dataset']}, split points {', '.join(t['splits'])})", ""]
        body += table(["defence", "seeds", *(c for c, _, _ in cols)],
                      [[d, len(g), *(fmt(values(g, k), n) for _, k, n in cols)] for d, g in rows.items()])
        ssim = [(f"{INVERSIONS[kind]} {split} SSIM {mode}", f"{kind}_{mode}@{split}_ssim")
                for split in t["splits"] for kind in INVERSIONS for mode in MODES]
        body += ["", *table(["defence", *(c for c, _ in ssim)],
                            [[d, *(fmt(values(g, k), 3) for _, k in ssim)] for d, g in rows.items()])]
        if ok(rs):
            png = f"defences-{name}.png"
            pareto_plot(rows, cols, out_dir / png)
            body += ["", f"![task accuracy against each attack's success, {name}]({png})", ""]
    return body


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (attack success, accuracy) no other point beats on both (lower success,
    higher accuracy), in order of success."""
    front = [i for i, (s, a) in enumerate(points)
             if not any((s2 <= s and a2 >= a) and (s2, a2) != (s, a) for s2, a2 in points)]
    return sorted(front, key=lambda i: points[i][0])


def pareto_plot(rows: dict, cols: list[tuple[str, str, int]], path: Path) -> Path:
    """Task accuracy (y) against each attack's success (x), one panel per attack metric, the Pareto
    front (defences no other beats on both) joined."""
    attacks = [(c, k) for c, k, _ in cols if k not in COSTS]
    ncols = min(4, len(attacks))
    nrows = -(-len(attacks) // ncols)
    with figure(path, ncols, (2.8 * ncols, 2.6 * nrows), nrows) as (_, axes):
        axes = list(getattr(axes, "flat", [axes]))
        for ax in axes[len(attacks):]:
            ax.set_visible(False)
        for ax, (caption, key) in zip(axes, attacks):
            pts, names = [], []
            for d, g in rows.items():
                s, a = mean_std(values(g, key))[0], mean_std(values(g, "accuracy"))[0]
                if s == s and a == a:
                    pts.append((s, a))
                    names.append(d)
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12)
            for (s, a), d in zip(pts, names):
                ax.annotate(d, (s, a), fontsize=5)
            front = pareto_front(pts)
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "r--", linewidth=0.8)
            ax.set_xlabel(caption, fontsize=7)
            ax.set_ylabel("task accuracy", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.grid(alpha=0.3)
    return path

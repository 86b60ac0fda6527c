"""Membership-inference suite: each attack of the config against each target, per seed.

    python -m benchmarks run benchmarks/configs/membership-quick.yaml [--executor ray] [--device cuda]

A trial is (target, attack, seed). The seed is the target's training seed (which also draws its
privacy split: members, non-members and the attacker's data), the attack's seed, and the draw of
the evaluation samples; so the spread over seeds covers all three. The target, the shadow and the
reference models come from :func:`models.reference.obtain_model` / the attack's knowledge:
trained once in the artifact store, keyed by their full training spec, and shared by every trial
that needs them (the threshold attack's shadow model is Shokri's first one; every attack of a
seed attacks the same target).

The attacker queries the target in-process (``MembershipKnowledge.in_process``: the same float64
softmax the edge's ``/v1/infer`` answers), so a sweep needs no services. It is evaluated on
``members`` training members and as many held-out ``non_members`` of the target, drawn by the seed;
metrics from :mod:`attacker.membership_metrics` (AUC, TPR at 1% and 0.1% FPR, balanced accuracy and
advantage at the threshold the attack chose on its own shadow data), the target's accuracies (the
train-test gap is the overfitting the attacks feed on) and the target queries made. Config::

    suite: membership
    seeds: 2
    evaluation: {members: 200, non_members: 200}
    targets:
      - name: mia-cnn-digits           # label in the report
        arch: mia-cnn
        dataset: digits
        options: {epochs: 30, lr: 0.002, batch_size: 64}    # TrainOptions fields (privacy scheme)
    attacks:
      - name: membership/threshold     # registry key (attacker/attacks/registry.py)
        label: threshold-loss          # optional; default the attack's short name
        params: {metric: loss}         # the attack's parameters; 'seed' and 'device' default to the trial's
        aux_limit: 400                 # optional: use only this many of the attacker's samples
    published:                         # optional: a paper's figures, reported beside ours
      - {source: "003 Table 3, case 3", target: mia-cnn-mnist, attack: shokri-all,
         accuracy: 0.5158, macro_f1: 0.51}      # any metric key of the trials (fractions)

The report's second table gives the figures at the attack's own threshold as the course project's
tables do (``003_7cab5165b2ec823a.txt``): the attack's accuracy on its shadow data (train) and on
the target's members and non-members (test), and precision, recall and F1 averaged over the two
classes (its F1 is below both its precision and its recall in some rows: macro averages).
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.harness.report import figure, fmt, group, mean_std, ok, table, values
from benchmarks.harness.spec import Context, Trial, checked_entry, config_attack, expand, seeds_of, trial_options
from models.errors import SplitlabError

NAME = "membership"
TITLE = "Membership inference"
TARGET_KEYS = {"name", "arch", "dataset", "options"}
ATTACK_KEYS = {"name", "label", "params", "aux_limit"}
PUBLISHED_KEYS = {"source", "target", "attack"}
COLUMNS = [("AUC", "auc"), ("TPR @ 1% FPR", "tpr_at_1pct_fpr"), ("TPR @ 0.1% FPR", "tpr_at_0_1pct_fpr"),
           ("balanced acc", "balanced_accuracy"), ("advantage", "advantage")]
# At the attack's own threshold, as the course project's Tables 1-4 give them (macro averages).
THRESHOLD_COLUMNS = [("target train acc", "target_train_accuracy"), ("target test acc", "target_test_accuracy"),
                     ("attack train acc", "fit_attack_train_accuracy"), ("attack test acc", "accuracy"),
                     ("precision", "macro_precision"), ("recall", "macro_recall"), ("F1", "macro_f1")]


def trials(config: dict) -> list[Trial]:
    evaluation = config.get("evaluation", {"members": 200, "non_members": 200})
    if set(evaluation) != {"members", "non_members"} or not all(
            isinstance(v, int) and v > 0 for v in evaluation.values()):
        raise SplitlabError(f"'evaluation' must give positive 'members' and 'non_members' counts, got {evaluation!r}")
    targets, attacks = [], []
    for spec in config.get("targets") or []:
        spec = checked_entry("membership target", spec, {"name", "arch", "dataset"}, TARGET_KEYS)
        options = trial_options("membership target", spec["name"], spec)
        targets.append((spec["name"], {**spec, "options": options, "evaluation": evaluation}))
    for spec in config.get("attacks") or []:
        label, cls, spec = config_attack(NAME, spec, ATTACK_KEYS)
        attack = {"name": cls.key(), "params": spec.get("params", {}), "aux_limit": spec.get("aux_limit")}
        attacks.append((label, attack))
    if not targets or not attacks:
        raise SplitlabError("a membership config needs 'targets' and 'attacks' (lists)")
    published_rows(config, {name for name, _ in targets}, {label for label, _ in attacks})
    return expand(NAME, targets, attacks, seeds_of(config))


def published_rows(config: dict, targets: set[str], attacks: set[str]) -> list[dict]:
    """The config's ``published`` figures, each naming one of its targets and attack labels."""
    rows = config.get("published") or []
    if not isinstance(rows, list):
        raise SplitlabError(f"'published' must be a list of rows, got {rows!r}")
    metric_names = {key for _, key in COLUMNS + THRESHOLD_COLUMNS}
    for row in rows:
        row = checked_entry("published row", row, PUBLISHED_KEYS, PUBLISHED_KEYS | metric_names)
        if row["target"] not in targets or row["attack"] not in attacks:
            raise SplitlabError(f"published row {row['source']!r}: target {row['target']!r} and attack "
                                f"{row['attack']!r} must be a target name and an attack label of the config")
        if not all(isinstance(row[k], (int, float)) for k in set(row) & metric_names):
            raise SplitlabError(f"published row {row['source']!r}: metric values must be numbers")
    return rows


def run_trial(trial: Trial, ctx: Context) -> dict:
    from attacker.attacks.membership.evaluation import evaluation_samples
    from attacker.attacks.registry import attack_class
    from attacker.membership_metrics import membership_metrics
    from benchmarks.suites.targets import obtain_target
    from models import ArtifactStore

    target, spec = trial.target, trial.attack
    store = ArtifactStore(ctx.artifacts)
    model, manifest, dataset, options = obtain_target(target, trial.seed, trial.device, ctx)
    cls = attack_class(spec["name"])
    trial_defaults = {"seed": trial.seed, "device": trial.device}  # where the attack has such a parameter
    attack = cls({**{k: v for k, v in trial_defaults.items() if k in cls.Params.field_names()}, **spec["params"]})
    knowledge = attack.Knowledge.in_process(model, dataset, options, store, aux_limit=spec.get("aux_limit"),
                                            device=trial.device)
    t0 = time.perf_counter()
    attack.fit(knowledge)
    fit_seconds = time.perf_counter() - t0
    x, y, is_member = evaluation_samples(dataset, manifest, target["evaluation"], trial.seed)
    t0 = time.perf_counter()
    scores = attack.score((x, y))
    score_seconds = time.perf_counter() - t0
    metrics = membership_metrics(scores, is_member, attack.threshold)
    metrics.update({"target_model": manifest.get("model_id"), "target_train_accuracy": manifest["train_accuracy"],
                    "target_test_accuracy": manifest["test_accuracy"], "target_queries": knowledge.counter["queries"],
                    "aux_samples": len(knowledge.aux_x), "fit_seconds": fit_seconds, "score_seconds": score_seconds})
    metrics.update({f"fit_{k}": v for k, v in attack.fit_stats().items() if isinstance(v, (int, float, str, bool))})
    return metrics


def report(results: list[dict], out_dir: Path, config: dict) -> list[str]:
    groups = group(results, lambda r: (r["label"].rsplit(" seed ", 1)[0], r["attack"]["name"]))
    body = ranking_table(groups)
    body += ["", "At the attack's own threshold (Shokri's and Nasr's attack networks at probability 0.5, the threshold "
             "attack's from its shadow; LiRA chooses none, so its rows are at the best threshold on the evaluated "
             "scores, an upper bound), as the course project's tables give them: the target's accuracies, attack train "
             "accuracy on the shadow models' members and non-members, test accuracy, precision, recall and F1 "
             "(macro averages over members and non-members) on the target's evaluation samples.", ""]
    body += table(["target / attack", "seeds", *(c for c, _ in THRESHOLD_COLUMNS)],
                  [[label, len(rs), *(fmt(values(rs, key), 3) for _, key in THRESHOLD_COLUMNS)]
                   for (label, _), rs in groups.items()])
    body += published_table(groups, config.get("published") or [])
    if ok(results):
        plot(groups, out_dir / "membership.png")
        body += ["", "![AUC and TPR at 1% FPR per attack, mean and std over seeds](membership.png)"]
    return body


def published_table(groups: dict, published: list[dict]) -> list[str]:
    """Each published row beside ours (same target and attack label, mean over seeds): ``ours / paper``."""
    if not published:
        return []
    by_label = {label: rs for (label, _), rs in groups.items()}
    header = {key: caption for caption, key in COLUMNS + THRESHOLD_COLUMNS}
    keys = [key for key in header if any(key in row for row in published)]
    rows = []
    for row in published:
        ours = by_label.get(f"{row['target']} {row['attack']}", [])
        cells = [f"{fmt(values(ours, k), 3) if ours else '-'} / {row[k]:.3f}" if k in row else "" for k in keys]
        rows.append([row["source"], f"{row['target']} {row['attack']}", *cells])
    return ["", "Ours / the paper's, per published row (ours: mean over seeds; `-`: no result yet).", "",
            *table(["paper", "target / attack", *(header[k] for k in keys)], rows)]


def ranking_table(groups: dict) -> list[str]:
    rows = []
    for (label, name), rs in groups.items():
        m = rs[0]["metrics"]
        rows.append([label, name, len(rs), *(fmt(values(rs, key), 3) for _, key in COLUMNS),
                     f"{m['members']} / {m['non_members']}", fmt(values(rs, "target_queries"), 0),
                     fmt(values(rs, "fit_seconds"), 1), fmt(values(rs, "score_seconds"), 1)])
    body = ["Each row: one attack on one target, mean ± std over the seeds (each seed trains its own target, "
            "draws its own evaluation samples and seeds the attack). TPR at a low FPR is the highest TPR the ROC "
            "reaches at or below it; balanced accuracy and advantage are at the threshold the attack chose on its "
            "own shadow data (`attacker/membership_metrics.py`).", ""]
    body += table(["target / attack", "attack", "seeds", *(c for c, _ in COLUMNS), "members / non-members", "target queries", "fit s", "score s"], rows)
    return body


def plot(groups: dict, path: Path) -> Path:
    """AUC and TPR at 1% FPR of every (target, attack), with the spread over seeds as error bars."""
    labels = [label for label, _ in groups]
    with figure(path, 2, (2 + 1.1 * len(labels), 3.4)) as (_, axes):
        for ax, (title, key, chance) in zip(axes, (("ROC AUC", "auc", 0.5),
                                                   ("TPR at 1% FPR", "tpr_at_1pct_fpr", 0.01))):
            stats = [mean_std(values(rs, key)) for rs in groups.values()]
            ax.bar(range(len(labels)), [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=3)
            ax.axhline(chance, color="k", linestyle="--", linewidth=0.8, label="chance")
            ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_title(title, fontsize=9)
            ax.grid(axis="y", alpha=0.3)
        axes[0].legend(fontsize=7)
    return path

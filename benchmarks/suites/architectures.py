"""Architecture study (issue 18): how a model's architecture changes what privacy attacks recover.

    python -m benchmarks run benchmarks/configs/architectures.yaml [--executor ray --address HOST:PORT] [--device cuda]

After Zhang et al., "How does a deep learning model architecture impact its privacy?"
(``../shared/papers/000_11769f52c2347cab.txt``): the same three attacks against every architecture
of the config, each trained the same way on the same data, so that differences come from the
architecture: CNNs against transformers of comparable size (their Part I: ResNet vs Swin) and the
14 steps that morph ResNet-50 into ConvNeXt-T (Part II, with its table of gradient-inversion
figures per step).

Nothing is re-implemented here. For each architecture the config's three sections become configs
of the suites that own the attacks, and their ``trials()`` expand them; a trial of this suite is
one of theirs plus the family it came from, and :func:`run_trial` hands it back to that suite:

- **gradient** (:mod:`benchmarks.suites.gradient`): DLG / iDLG / Inverting Gradients against a
  client's update of the architecture's CIFAR-10 model, per batch size; each seed a private batch
  from the test split;
- **membership** (:mod:`benchmarks.suites.membership`): threshold, LiRA (and any other membership
  attack) against the same CIFAR-10 model; its shadow / reference models are trained once per
  architecture in the artifact store and shared by every attack (the threshold attack's shadow is
  LiRA's reference model 0);
- **attribute** (:mod:`benchmarks.suites.attribute`): CIFAR-10 has no private attribute beside its
  label, so, as the paper infers a sensitive attribute from the victim's intermediate features,
  each architecture is also trained as a UTKFace *gender* classifier and the attacker infers the
  victims' *race* from its features at a split point named relative to the architecture
  (``first``: after the stem; ``last``: the deepest split point, the representation the classifier
  reads; or ``outputs``; or any split point's name), which every architecture of the zoo has.

The CIFAR-10 target of an architecture is :func:`models.reference.obtain_model` of the config's
``training`` options (privacy split scheme: members, non-members and attacker data are disjoint):
the gradient suite always attacks its seed-0 model, and membership trials of seed 0 attack the same
stored model, so one architecture costs one CIFAR-10 training, the shadow models and one UTKFace
training. Architectures learn at different rates (ViT and Swin need ten times the ResNets' steps to
reach the same accuracy, ``models/transformers.py``), so an entry's ``options`` set its budget: they
go over ``training`` for its CIFAR-10 models and over the attribute section's ``training`` for its
UTKFace model, and the report names each architecture's budget. Config::

    suite: architectures
    dataset: cifar10
    training: {epochs: 10, limit: 2000}              # TrainOptions of every CIFAR-10 target
    architectures:                                   # zoo names, or {arch, options} to change some options
      - resnet18
      - {arch: vit-tiny, options: {epochs: 20, batch_size: 64}}   # its budget, on CIFAR-10 and UTKFace
    gradient:
      architectures: [resnet18, vit-tiny]            # optional: only these (default: every one)
      seeds: 3
      batch_sizes: [1, 4]
      attacks: [{name: gradient/inverting_gradients, label: ig, params: {iterations: 300}}]
    membership:
      seeds: 1
      evaluation: {members: 250, non_members: 250}
      attacks: [{name: membership/threshold, params: {metric: loss}}, {name: membership/lira, params: {reference_models: 2}}]
    attribute:
      seeds: 1
      dataset: utkface
      training: {epochs: 6, limit: 2000}             # the gender target's TrainOptions (the entry's options over them)
      observations: [last]                           # first, last, outputs or split point names
      attributes: [race]
      params: {epochs: 20}                           # AttributeParams
      aux_limit: 2000
      victims: 1000
    compare: [[resnet18, swin-tiny]]                 # (CNN, transformer) pairs of comparable size
    morph: {prefix: "morph-", attack: ig, batch_size: 1}   # the table and plot along the morph steps
    steps:                                           # a step compared with the one before it
      morph-03-patchify: patchify stem
    notes: benchmarks/results/architectures/notes.md # included at the end of the report

Any section may be left out (that family is not run); a section's ``architectures`` limits it to
some of them (default: all). The report gives the paper's tables: task
accuracy and overfitting (train - test accuracy), membership attack accuracy and AUC, attribute
attack accuracy and macro-F1, gradient-inversion MSE / PSNR / LPIPS / SSIM, the morph steps'
table and PSNR plot, each checked finding, and the time per trial the harness recorded (what a
sweep costs: the first trial of a target includes its training).
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness.report import figure, fmt, group, mean_std, table, training_budget, values
from benchmarks.harness.spec import Context, Trial, checked_entry, trial_options
from models.errors import SplitlabError

NAME = "architectures"
TITLE = "Architecture study: CNNs, transformers and the ResNet-to-ConvNeXt morph"
FAMILIES = ("gradient", "membership", "attribute")
KEYS = {"suite", "title", "out", "seeds", "dataset", "training", "architectures", *FAMILIES, "compare", "morph",
        "steps", "notes"}
SECTION_KEYS = {
    "gradient": {"architectures", "seeds", "batch_sizes", "attacks", "lpips_weights", "lpips_backbone"},
    "membership": {"architectures", "seeds", "evaluation", "attacks"},
    "attribute": {"architectures", "seeds", "dataset", "training", "observations", "attributes", "params",
                  "aux_limit", "victims"},
}
RELATIVE_POINTS = ("first", "last")
STUDY_KEYS = ("family", "architecture", "observed")  # what this suite adds to the family's target
GIA_COLUMNS = [("MSE", "mse_mean", 4), ("PSNR dB", "psnr_mean", 2), ("SSIM", "ssim_mean", 3)]


def architectures(config: dict) -> list[tuple[str, dict]]:
    """``(arch, TrainOptions fields)`` per entry of ``architectures``, the config's ``training`` with
    the entry's ``options`` over it; unknown architectures fail here, naming the known ones."""
    base = trial_options("architectures", "training", {"options": config.get("training") or {}})
    return [(arch, {**base, **own}) for arch, own in architecture_budgets(config)]


def architecture_budgets(config: dict) -> list[tuple[str, dict]]:
    """``(arch, the entry's own options)`` per entry of ``architectures``: what sets the architecture's
    budget apart, applied over the CIFAR-10 ``training`` and over the attribute section's."""
    from models.zoo import architecture_names

    entries = config.get("architectures")
    if not isinstance(entries, list) or not entries:
        raise SplitlabError("'architectures' must be a non-empty list of zoo names or {arch, options} mappings")
    known, seen, out = architecture_names(), set(), []
    for entry in entries:
        entry = {"arch": entry} if isinstance(entry, str) else checked_entry("architecture", entry, {"arch"},
                                                                            {"arch", "options"})
        arch = entry["arch"]
        if arch not in known:
            raise SplitlabError(f"unknown architecture {arch!r} in 'architectures'; known: {', '.join(known)}")
        if arch in seen:
            raise SplitlabError(f"architecture {arch!r} is listed twice")
        seen.add(arch)
        out.append((arch, trial_options("architecture", arch, entry)))
    return out


def observation(arch: str, points: list[str], name: str) -> str:
    """A configured observation (``first``, ``last``, ``outputs`` or a split point) for ``arch``, whose
    split points are ``points``."""
    if name in RELATIVE_POINTS:
        return points[0] if name == "first" else points[-1]
    if name != "outputs" and name not in points:
        raise SplitlabError(f"observation {name!r} is none of {', '.join(RELATIVE_POINTS)}, 'outputs' or a split "
                            f"point of {arch} ({', '.join(points)})")
    return name


def _section(config: dict, family: str, arch: str) -> dict | None:
    """The config's section of ``family`` (its keys checked), or None where it does not run on ``arch``."""
    section = config.get(family)
    if section is None:
        return None
    section = dict(checked_entry(f"'{family}' section", section, set(), SECTION_KEYS[family]))
    only = section.pop("architectures", None)
    listed = [a if isinstance(a, str) else a.get("arch") for a in config["architectures"]]
    if only is not None and (not isinstance(only, list) or set(only) - set(listed)):
        raise SplitlabError(f"'{family}': 'architectures' must be a list of the config's architectures, got {only!r}")
    if only is not None and arch not in only:
        return None
    return {"seeds": config.get("seeds", [0]), **section}


def family_configs(config: dict, arch: str, options: dict, own: dict | None = None) -> dict[str, dict]:
    """The config of each family's own suite for one architecture: ``options`` its CIFAR-10 target's,
    ``own`` the architecture's entry options, laid over the attribute section's ``training`` too."""
    from models.zoo import split_points

    dataset = config.get("dataset", "cifar10")
    target = {"name": arch, "arch": arch, "dataset": dataset, "options": options}
    configs = {}
    if (s := _section(config, "gradient", arch)) is not None:
        configs["gradient"] = {**s, "suite": "gradient", "targets": [target], "observe": ["all"]}
    if (s := _section(config, "membership", arch)) is not None:
        configs["membership"] = {**s, "suite": "membership", "targets": [target]}
    if (s := _section(config, "attribute", arch)) is not None:
        observations = s.get("observations") or ["last"]
        if not isinstance(observations, list):
            raise SplitlabError(f"attribute 'observations' must be a list, got {observations!r}")
        training = {**trial_options("attribute", "training", {"options": s.get("training") or {}}), **(own or {})}
        points = split_points(arch)
        resolved = {observation(arch, points, o): o for o in observations}
        configs["attribute"] = {
            **{k: v for k, v in s.items() if k not in ("dataset", "training", "observations")}, "suite": "attribute",
            "target": {"arch": arch, "dataset": s.get("dataset", "utkface"), "options": training},
            "observations": list(resolved), "_observed": resolved}
    return configs


def trials(config: dict) -> list[Trial]:
    from benchmarks.suites import load_suite

    checked_entry("architectures config", config, {"architectures"}, KEYS)
    if not any(config.get(f) is not None for f in FAMILIES):
        raise SplitlabError(f"an architectures config needs at least one of the sections {', '.join(FAMILIES)}")
    archs = architectures(config)
    _check_study(config, {arch for arch, _ in archs})
    own = dict(architecture_budgets(config))
    configs = {arch: family_configs(config, arch, options, own[arch]) for arch, options in archs}
    out = []
    for family in FAMILIES:  # family by family: `--only "gradient "` runs one family for every architecture
        for arch, _ in archs:
            sub = configs[arch].get(family)
            if sub is None:
                continue
            observed = sub.pop("_observed", {})
            for t in load_suite(family).trials(sub):
                study = {"family": family, "architecture": arch}
                if family == "attribute":
                    study["observed"] = observed[t.attack["observe"]]
                out.append(Trial.make(NAME, {**t.target, **study}, t.attack, t.seed, t.device,
                                      f"{family} {t.label}"))
    return out


def _check_study(config: dict, archs: set[str]) -> None:
    """``compare``, ``steps`` and ``morph`` name architectures of the config."""
    pairs = config.get("compare") or []
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
        raise SplitlabError(f"'compare' must be a list of [CNN, transformer] pairs, got {pairs!r}")
    steps = config.get("steps") or {}
    if not isinstance(steps, dict):
        raise SplitlabError(f"'steps' must map a morph step's architecture to what it changes, got {steps!r}")
    named = [a for p in pairs for a in p] + list(steps)
    missing = [a for a in named if a not in archs]
    if missing:
        raise SplitlabError(f"'compare' / 'steps' name architectures the config does not list: {', '.join(missing)}")
    morph = config.get("morph") or {}
    checked_entry("'morph'", morph, set(), {"prefix", "attack", "batch_size", "paper_psnr"})
    paper = morph.get("paper_psnr") or []
    if not isinstance(paper, list) or not all(isinstance(v, (int, float)) for v in paper):
        raise SplitlabError(f"'morph': 'paper_psnr' must be a list of numbers (the paper's PSNR per step), got {paper!r}")


def study_part(trial: Trial) -> tuple[str, Trial]:
    """``(family, the family suite's own trial)`` of one of this suite's trials."""
    target = {k: v for k, v in trial.target.items() if k not in STUDY_KEYS}
    family = trial.target["family"]
    return family, Trial.make(family, target, trial.attack, trial.seed, trial.device, trial.label)


def run_trial(trial: Trial, ctx: Context) -> dict:
    from benchmarks.suites import load_suite
    from models import ArtifactStore
    from models.zoo import build_model

    family, own = study_part(trial)
    metrics = load_suite(family).run_trial(own, ctx)
    manifest = ArtifactStore(ctx.artifacts).manifest(metrics["target_model"])  # the paper compares like sizes
    model = build_model(manifest["arch"], manifest["num_classes"], manifest["input_shape"])
    metrics["parameters"] = sum(p.numel() for p in model.parameters())
    metrics.setdefault("target_train_accuracy", manifest["train_accuracy"])  # the gradient suite leaves it out
    return metrics


# --- report ------------------------------------------------------------------------------------------

def _by(results: list[dict], family: str) -> list[dict]:
    return [r for r in results if r["target"].get("family") == family]


def _attack_label(r: dict) -> str:
    """The config's label of a result's attack (the family suite's label, past the target's part)."""
    label = r["label"].rsplit(" seed ", 1)[0]
    return label.rsplit(" ", 1)[-1]


def report(results: list[dict], out_dir: Path, config: dict) -> list[str]:
    budgets = dict(architectures(config))
    order = list(budgets)
    how = ("the same way (`training` in the config)" if len({training_budget(o, epochs=True) for o in budgets.values()}) == 1 else
           "with its own budget (column `budget`: the config's `training` with the architecture's `options` over it, "
           "chosen to bring the architectures to comparable accuracy)")
    body = [f"Every architecture trained on the same data {how} (CIFAR-10 "
            "privacy split: the target's members, its non-members and the attacker's data are disjoint), then "
            "attacked by the same attacks; mean ± std over the seeds of each family (the column `seeds`). "
            "Layout of the paper's tables (`../shared/papers/000_11769f52c2347cab.txt`). LPIPS needs pretrained "
            "weights that are not available here: not computed (never a stand-in number).", ""]
    body += _coverage(results, order)
    body += _accuracy_table(results, order, budgets)
    body += _membership_table(results, order)
    body += _attribute_table(results, order)
    body += _gradient_table(results, order)
    body += _morph_section(results, order, config, out_dir)
    body += _findings(results, config)
    body += _timing_table(results)
    return body


def _coverage(results: list[dict], order: list[str]) -> list[str]:
    """Per family: the trials with results, and the architectures with none (a partial run says so)."""
    rows = []
    for family in FAMILIES:
        rs = _by(results, family)
        if not rs:
            continue
        done = {r["target"]["architecture"] for r in rs if r["status"] == "ok"}
        wanted = [a for a in order if any(r["target"]["architecture"] == a for r in rs)]
        missing = [a for a in wanted if a not in done]
        rows.append([family, f"{sum(r['status'] == 'ok' for r in rs)} of {len(rs)}", f"{len(done)} of {len(wanted)}",
                     ", ".join(missing) or "none"])
    return ["## Coverage", "", "Trials of each family with results in this run (the rest are listed at the end).", "",
            *table(["family", "trials", "architectures", "architectures without any result"], rows), ""]


def _accuracy_table(results: list[dict], order: list[str], budgets: dict[str, dict]) -> list[str]:
    rows = []
    for arch in order:
        rs = [r for r in results if r["target"].get("architecture") == arch and r["status"] == "ok"]
        # one entry per CIFAR-10 target model (gradient trials attack seed 0's, membership trials their
        # seed's), its trials' metrics merged
        models: dict[str, dict] = {}
        for r in _by(rs, "gradient") + _by(rs, "membership"):
            models.setdefault(r["metrics"]["target_model"], {}).update(r["metrics"])
        if not models:
            continue
        ms = [{"metrics": m} for m in models.values()]
        gaps = [m["target_train_accuracy"] - m["target_test_accuracy"] for m in models.values()
                if "target_train_accuracy" in m]
        aia = {r["metrics"]["target_model"]: r for r in _by(rs, "attribute")}
        rows.append([arch, f"{ms[0]['metrics']['parameters']:,}", training_budget(budgets[arch], epochs=True), len(ms),
                     fmt(values(ms, "target_test_accuracy"), 4),
                     fmt(values(ms, "target_train_accuracy"), 4), fmt(gaps, 4),
                     fmt(values(list(aia.values()), "target_test_accuracy"), 4)])
    if not rows:
        return []
    return ["## Task accuracy and overfitting", "",
            "CIFAR-10 test accuracy of each architecture's target (the paper's *task acc*), its accuracy on its "
            "members and the difference (the paper's overfitting level); the UTKFace gender model's test "
            "accuracy (the attribute-inference target). Parameters and budget: of the CIFAR-10 model.", "",
            *table(["architecture", "parameters", "budget", "models", "task acc", "train acc", "train - test", "gender task acc"],
                   rows), ""]


def _membership_table(results: list[dict], order: list[str]) -> list[str]:
    rs = _by(results, "membership")
    attacks = list(dict.fromkeys(_attack_label(r) for r in rs if r["status"] == "ok"))
    if not attacks:
        return []
    groups = group(rs, lambda r: (r["target"]["architecture"], _attack_label(r)))
    rows = []
    for arch in order:
        mine = [r for (a, _), g in groups.items() if a == arch for r in g]
        if not mine:
            continue
        cells = []
        for attack in attacks:
            g = groups.get((arch, attack), [])
            cells += [fmt(values(g, "balanced_accuracy"), 4), fmt(values(g, "auc"), 4), fmt(values(g, "tpr_at_1pct_fpr"), 3)]
        seeds = len({r["seed"] for r in mine})
        rows.append([arch, seeds, fmt(values(list({r['metrics']['target_model']: r for r in mine}.values()),
                                              "target_test_accuracy"), 4), *cells])
    first = next(r["metrics"] for r in rs if r["status"] == "ok")
    return ["## Membership inference (the paper's *Results of MIA*)", "",
            f"On {first.get('members', '?')} members and {first.get('non_members', '?')} non-members of each target. "
            "Attack acc: balanced accuracy at the threshold the attack chose on its shadow data (LiRA chooses none: "
            "its accuracy is at the best threshold on the evaluated scores, an upper bound); AUC and TPR at 1% FPR "
            "from the ROC.", "",
            *table(["architecture", "seeds", "task acc", *(f"{a} {m}" for a in attacks
                                                          for m in ("attack acc", "AUC", "TPR@1%FPR"))], rows), ""]


def _attribute_table(results: list[dict], order: list[str]) -> list[str]:
    rs = _by(results, "attribute")
    groups = group(rs, lambda r: (r["target"]["architecture"], r["target"]["observed"], r["attack"]["attribute"]))
    if not groups:
        return []
    rows = []
    for arch in order:
        for (a, observed, attribute), g in groups.items():
            if a == arch:
                rows.append([arch, f"{observed} ({g[0]['attack']['observe']})", attribute, len(g),
                             fmt(values(g, "target_test_accuracy"), 4), fmt(values(g, "accuracy"), 4),
                             fmt(values(g, "macro_f1"), 4), fmt(values(g, "baseline_accuracy"), 4),
                             fmt(values(g, "baseline_macro_f1"), 4)])
    first = next(iter(groups.values()))[0]["metrics"]
    return ["## Attribute inference (the paper's *Results of AIA*)", "",
            "Each architecture trained as a UTKFace gender classifier (task acc); the attacker trains an MLP on its "
            "own images' features at the observed split point and infers the race of "
            f"{first.get('victims', '?')} victims (test split) from theirs. Baseline: the attacker's majority "
            "class for everyone.", "",
            *table(["architecture", "observed", "attribute", "seeds", "task acc", "attack acc", "macro-F1",
                    "baseline acc", "baseline macro-F1"], rows), ""]


def _gia_groups(results: list[dict]) -> dict:
    return group(_by(results, "gradient"), lambda r: (r["target"]["architecture"], _attack_label(r),
                                                       r["target"]["batch_size"]))


def _gia_row(g: list[dict]) -> list[str]:
    lpips = values(g, "lpips_mean")
    return [fmt(values(g, "mse_mean"), 4), fmt(values(g, "psnr_mean"), 2), fmt(lpips, 4) if lpips else "not computed",
            fmt(values(g, "ssim_mean"), 4)]


def _model_accuracy(g: list[dict]) -> str:
    """The task accuracy of the one model a group of gradient trials attacked (not a spread over seeds)."""
    return fmt(sorted(set(values(g, "target_test_accuracy"))), 4)


def _gradient_table(results: list[dict], order: list[str]) -> list[str]:
    groups = _gia_groups(results)
    if not groups:
        return []
    rows = [[arch, attack, b, len(g), _model_accuracy(g), *_gia_row(g),
             fmt(values(g, "blank_psnr"), 2), fmt(values(g, "label_accuracy"), 2)]
            for arch in order for (a, attack, b), g in groups.items() if a == arch]
    return ["## Gradient inversion (the paper's *Results of GIA*)", "",
            "The client's update (mean cross-entropy of a private batch from the test split, eval mode) on the "
            "architecture's seed-0 CIFAR-10 model; every parameter observed. Reconstructions matched to the "
            "originals (Hungarian, on MSE) before scoring; images in [0, 1]. Blank PSNR: an all-black image, the "
            "baseline an attack must beat. Label acc: the batch's labels recovered.", "",
            *table(["architecture", "attack", "batch", "seeds", "task acc", "MSE ↓", "PSNR ↑", "LPIPS ↓", "SSIM ↑",
                    "blank PSNR", "label acc"], rows), ""]


def _morph_archs(order: list[str], config: dict) -> list[str]:
    prefix = (config.get("morph") or {}).get("prefix", "morph-")
    return [a for a in order if a.startswith(prefix)]


def _morph_section(results: list[dict], order: list[str], config: dict, out_dir: Path) -> list[str]:
    steps = _morph_archs(order, config)
    groups = _gia_groups(results)
    if not steps or not any(a in steps for a, _, _ in groups):
        return []
    morph = config.get("morph") or {}
    attack = morph.get("attack") or next(attack for _, attack, _ in groups)
    b = morph.get("batch_size", 1)
    paper = morph.get("paper_psnr") or []
    rows = []
    for i, arch in enumerate(steps, start=1):
        g = groups.get((arch, attack, b), [])
        rows.append([f"{i}. {arch}", *([_model_accuracy(g), *_gia_row(g)] if g else ["-"] * 5),
                     f"{paper[i - 1]:.2f}" if i <= len(paper) else "-"])
    _morph_plot(groups, steps, paper, out_dir / "morph-psnr.png")
    missing = [a for a in steps if not any(k[0] == a for k in groups)]
    pairs = [(mean_std(values(groups[(a, attack, b)], "psnr_mean"))[0], paper[i]) for i, a in enumerate(steps)
             if i < len(paper) and (a, attack, b) in groups]
    if len(pairs) > 2:
        from scipy.stats import spearmanr

        rho = spearmanr(*zip(*pairs)).statistic
        rows.append([f"Spearman rank correlation of our PSNR with the paper's over {len(pairs)} steps: {rho:.2f}",
                     "", "", "", "", "", ""])
    return [f"## Gradient inversion along the morph steps ({attack}, batch {b})", "",
            "The paper's table *GIA on 14 intermediate models from ResNet-50 to ConvNeXt-T*, in its layout; its "
            "PSNR beside ours (config `paper_psnr`; its models were trained to 82-86% and attacked for 3,000 "
            "steps).", "",
            *table(["Steps", "Task acc ↑", "MSE ↓", "PSNR ↑", "LPIPS ↓", "SSIM ↑", "paper PSNR"], rows), "",
            *([f"Steps without gradient-inversion results: {', '.join(missing)}.", ""] if missing else []),
            "![PSNR of the reconstructions along the morph steps, mean and std over seeds](morph-psnr.png)", ""]


def _morph_plot(groups: dict, steps: list[str], paper: list[float], path: Path) -> Path:
    """PSNR (mean ± std over seeds) per morph step, one line per attack and batch size; the paper's on
    its own axis (right) when given."""
    series = sorted({(attack, b) for a, attack, b in groups if a in steps}, key=lambda k: (k[1], k[0]))
    with figure(path, 1, (max(6.0, 0.55 * len(steps) + 2), 4.2)) as (_, ax):
        for attack, b in series:
            xs, stats = [], []
            for i, arch in enumerate(steps):
                if (arch, attack, b) in groups:
                    xs.append(i)
                    stats.append(mean_std(values(groups[(arch, attack, b)], "psnr_mean")))
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                        label=f"{attack}, batch {b}")
        blank = [v for (a, _, _), g in groups.items() if a in steps for v in values(g, "blank_psnr")]
        if blank:
            ax.axhline(mean_std(blank)[0], color="k", linestyle="--", linewidth=0.8, label="blank image")
        ax.set_xticks(range(len(steps)), [f"{i + 1}. {s}" for i, s in enumerate(steps)], rotation=40, ha="right",
                      fontsize=7)
        ax.set(ylabel="PSNR (dB), this run", title="Gradient inversion along the ResNet-to-ConvNeXt morph")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
        if paper:
            right = ax.twinx()
            right.plot(range(len(paper[:len(steps)])), paper[:len(steps)], color="grey", linestyle=":", marker="s",
                       label="the paper (right axis)")
            right.set_ylabel("PSNR (dB), the paper")
            right.legend(fontsize=7, loc="lower right")
    return path


def _measures(results: list[dict]) -> dict[str, dict[str, list[float]]]:
    """Per architecture, each attack figure where higher means more leakage, by name."""
    out: dict[str, dict[str, list[float]]] = {}
    for r in results:
        if r["status"] != "ok":
            continue
        family, m = r["target"]["family"], r["metrics"]
        if family == "gradient":
            key, value = f"GIA {_attack_label(r)} b{r['target']['batch_size']} PSNR", m.get("psnr_mean")
        elif family == "membership":
            key, value = f"MIA {_attack_label(r)} AUC", m.get("auc")
        else:
            key, value = f"AIA {r['target']['observed']} {r['attack']['attribute']} acc", m.get("accuracy")
        if isinstance(value, (int, float)):
            out.setdefault(r["target"]["architecture"], {}).setdefault(key, []).append(value)
    return out


def verdict(low: list[float], high: list[float]) -> str:
    """Whether ``high`` (the side the paper says leaks more) is above ``low``, and beyond the seeds' spread."""
    (m_low, s_low), (m_high, s_high) = mean_std(low), mean_std(high)
    side = "holds" if m_high > m_low else "does not hold"
    clear = abs(m_high - m_low) > s_low + s_high and len(low) > 1 and len(high) > 1
    return f"{side} ({'beyond' if clear else 'within'} the spread over seeds)" if len(low) > 1 and len(high) > 1 \
        else f"{side} (one seed: no spread to judge by)"


def _findings(results: list[dict], config: dict) -> list[str]:
    measures = _measures(results)
    rows = []
    for cnn, transformer in config.get("compare") or []:
        for key in sorted(set(measures.get(cnn, {})) & set(measures.get(transformer, {}))):
            low, high = measures[cnn][key], measures[transformer][key]
            rows.append([f"transformers leak more than CNNs: {transformer} vs {cnn}", key, fmt(low, 3), fmt(high, 3),
                         verdict(low, high)])
    order = [arch for arch, _ in architectures(config)]
    for step, change in (config.get("steps") or {}).items():
        i = order.index(step)
        if i == 0:
            continue
        before = order[i - 1]
        for key in sorted(k for k in set(measures.get(before, {})) & set(measures.get(step, {})) if k.startswith("GIA")):
            low, high = measures[before][key], measures[step][key]
            rows.append([f"{change} raises GIA success: {step} vs {before}", key, fmt(low, 3), fmt(high, 3),
                         verdict(low, high)])
    if not rows:
        return []
    return ["## The paper's directional findings, on these figures", "",
            "Each claim as a comparison of one measure (higher = more leakage): the CNN or the step before, then "
            "the transformer or the step. Computed from the trials above; the notes interpret them.", "",
            *table(["claim", "measure", "CNN / before", "transformer / step", "finding"], rows), ""]


def _timing_table(results: list[dict]) -> list[str]:
    rows = []
    for family in FAMILIES:
        rs = [r for r in _by(results, family) if r["status"] == "ok" and isinstance(r.get("seconds"), (int, float))]
        if not rs:
            continue
        secs = sorted(r["seconds"] for r in rs)
        attack = [v for key in ("attack_seconds", "fit_seconds") for v in values(rs, key)]
        rows.append([family, len(rs), f"{secs[len(secs) // 2]:.1f}", f"{mean_std(secs)[0]:.1f}", f"{secs[-1]:.1f}",
                     f"{sum(secs) / 3600:.2f}", f"{mean_std(attack)[0]:.1f}" if attack else "-"])
    if not rows:
        return []
    total = sum(r["seconds"] for r in results if r["status"] == "ok" and isinstance(r.get("seconds"), (int, float)))
    return ["## Time per trial", "",
            "Wall seconds per trial as the harness recorded them (the trial's process, data loading included). The "
            "first trial of an architecture also trains its target (and the first membership trial its shadow "
            "models), so the maximum is a training and the median an attack. Attack s: the attack alone (fit for "
            "membership and attribute). On a cluster the trials of different architectures run in parallel; "
            f"this run's trials add up to {total / 3600:.2f} h of one worker.", "",
            *table(["family", "trials", "median s", "mean s", "max s", "worker-hours", "attack s (mean)"], rows), ""]

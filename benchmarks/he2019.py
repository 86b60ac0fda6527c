"""He et al. 2019 reproduction suite: Tables 3 (white-box), 4 (black-box) and 6 (query-free).

    python -m benchmarks run benchmarks/configs/he2019.yaml [--only mnist] [--attacks whitebox,...]
                                                           [--fresh] [--report-only] [--threads N]
                                                           [--device cpu|cuda]

For each dataset of the config it trains the target or reuses the stored model with the config's
id (``benchmarks.training.ensure_target``), picks the evaluation images (one or more per class,
never training members: MNIST's test set; for CIFAR-10 the exact ``lossless_subset`` images that
are not in the JPEG-decoded training set), builds each attack's knowledge exactly as the threat
model allows, and measures PSNR / SSIM / MSE (``attacker.metrics``) and the time taken.

Auxiliary data: *same set* = the target's training members; *same distribution* = images of the
same dataset that the target never saw (its held-out parts, or the test set minus the evaluation
images for full-scheme targets); *random noise* = ``noise_images``. Each cell's result and
reconstructions are cached under ``cache`` (keyed by a hash of everything that determines them),
so an interrupted run resumes and ``--report-only`` rebuilds the report. Writes the Markdown
report (tables side by side with the paper's numbers, timings, notes), a JSON of all figures and
one PNG figure per dataset (originals and reconstructions per split point).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from attacker.attacks import KnowledgeSource, create, knowledge_for, noise_images
from attacker.attacks.registry import resolve
from attacker.metrics import PSNR_CAP, image_metrics
from models import ArtifactStore, SplitlabError, load_dataset, split_model, to_tensor
from models.env import DEVICES, resolve_device
from models.loading import load_model
from models.onnx_runtime import set_torch_threads

COLUMNS = [("mnist", "conv1"), ("mnist", "relu2"), ("cifar10", "conv11"), ("cifar10", "relu22"), ("cifar10", "relu32")]
_P = dict(zip(COLUMNS, range(5)))


def _paper(psnr, ssim):
    return {col: (psnr[i], ssim[i]) for col, i in _P.items()}


# He, Zhang, Lee (ACSAC 2019): Table 3, Table 4, Table 6 (PSNR dB, SSIM).
PAPER = {
    ("whitebox", "rMLE"): _paper([39.69, 15.10, 37.59, 19.47, 13.38], [0.9969, 0.5998, 0.9960, 0.6940, 0.1625]),
    ("blackbox", "same-set"): _paper([39.64, 20.35, 49.88, 19.81, 15.42], [0.9887, 0.7334, 0.9993, 0.6939, 0.3124]),
    ("blackbox", "same-distribution"): _paper([40.72, 20.81, 49.02, 19.36, 13.95], [0.9950, 0.8046, 0.9992, 0.6802, 0.2196]),
    ("blackbox", "random-noise"): _paper([14.76, 7.72, 48.59, 12.79, 12.37], [0.7188, 0.4310, 0.9996, 0.2930, 0.0440]),
    ("queryfree", "same-set/same-net"): _paper([17.60, 9.61, 21.16, 12.74, 11.09], [0.7423, 0.4981, 0.9104, 0.1752, 0.0419]),
    ("queryfree", "diff-set/same-net"): _paper([21.53, 9.27, 21.45, 11.51, 11.98], [0.9121, 0.4652, 0.9145, 0.1723, 0.0102]),
    ("queryfree", "same-set/diff-net"): _paper([12.59, 8.05, 17.55, 12.46, 10.68], [0.6430, 0.3790, 0.6344, 0.2714, 0.0247]),
    ("queryfree", "diff-set/diff-net"): _paper([17.86, 8.03, 13.06, 11.30, 11.47], [0.6952, 0.3226, 0.1553, 0.0467, 0.0793]),
}
# He et al.'s released white-box weights (per-element mean feature loss, fixed lambda_TV).
HE_LAMBDA = {"conv1": 0.0, "relu2": 1e1, "conv11": 0.0, "relu22": 1e1, "relu32": 1e3}


@dataclass(frozen=True)
class Setting:
    """One setting of the paper: the auxiliary set the attacker holds (a key of :func:`auxiliary_sets`,
    None for none) and the attack parameters it implies at a split point."""

    aux: str | None = None
    params: Callable[[str], dict] = lambda split: {}


def _he_lambda(split: str) -> dict:
    return {"feature_loss": "mean", "tv_weight": HE_LAMBDA.get(split, 1e1), "lr": 1e-2, "lr_decay": "none"}


def _shadow(net: str) -> Callable[[str], dict]:
    return lambda split: {"shadow": "same" if net == "same-net" else "different"}


# The settings of Tables 3, 4 and 6 per attack (registry short names of the inversion family).
SETTINGS: dict[str, dict[str, Setting]] = {
    "whitebox": {"rMLE": Setting(), "He-lambda": Setting(params=_he_lambda)},
    "blackbox": {aux: Setting(aux) for aux in ("same-set", "same-distribution", "random-noise")},
    "queryfree": {f"{data}/{net}": Setting("same-set" if data == "same-set" else "same-distribution", _shadow(net))
                  for net in ("same-net", "diff-net") for data in ("same-set", "diff-set")},
}
# Bumped when an attack's code changes its results, so that cached cells are recomputed
# (blackbox 2: the inverse network gained its linear skip path). Black-box cells whose skip path
# is solved in closed form (conv1, conv11) also carry "lstsq-skip" in their key.
CELL_VERSIONS = {"blackbox": 2}


# --- data -------------------------------------------------------------------------------------

def _first_per_class(y: np.ndarray, candidates: np.ndarray, per_class: int) -> np.ndarray:
    picks = [candidates[y[candidates] == c][:per_class] for c in np.unique(y)]
    return np.concatenate(picks)


def evaluation_images(name: str, ds, per_class: int) -> tuple[torch.Tensor, np.ndarray, str, np.ndarray | None]:
    """(images, labels, description, test-set indices used or None)."""
    if name == "cifar10":
        from models.datasets import load_cifar10_lossless

        x, y = load_cifar10_lossless()
        thumbs = lambda a: torch.nn.functional.avg_pool2d(to_tensor(a), 4).flatten(1)  # noqa: E731
        nearest = torch.cat([torch.cdist(thumbs(x[i:i + 500]), thumbs(ds.x_train)).min(1).values
                             for i in range(0, len(x), 500)]) * 255
        fresh = np.flatnonzero(nearest.numpy() > 300)  # far from every JPEG training image: not in train.npz
        idx = _first_per_class(y, fresh, per_class)
        return to_tensor(x[idx]), y[idx], (f"CIFAR-10 lossless_subset indices {idx.tolist()} (exact pixels; none of "
                                           "them is in the 25k training set, so never a member)"), None
    idx = _first_per_class(ds.y_test, np.arange(len(ds.y_test)), per_class)
    return to_tensor(ds.x_test[idx]), ds.y_test[idx], f"{name} test set indices {idx.tolist()}", idx


def auxiliary_sets(ds, manifest: dict, eval_test_idx, count: int, seed: int, input_shape) -> dict:
    """The attacker's auxiliary data per setting: (images, labels)."""
    rng = np.random.default_rng(seed)
    members = np.asarray(manifest["members"]["indices"])
    same = rng.permutation(members)[:count]
    out = {"same-set": (to_tensor(ds.x_train[same]), torch.from_numpy(ds.y_train[same]))}
    held = [np.asarray(v) for k, v in manifest.get("splits", {}).items() if k != "target_train"]
    held = np.concatenate(held) if held else np.array([], dtype=int)
    if len(held) >= count:
        pick = rng.permutation(held)[:count]
        out["same-distribution"] = (to_tensor(ds.x_train[pick]), torch.from_numpy(ds.y_train[pick]))
    else:  # full scheme: every training image is a member; use the test set minus the evaluation images
        pool = np.setdiff1d(np.arange(len(ds.x_test)), eval_test_idx if eval_test_idx is not None else [])
        pick = rng.permutation(pool)[:count]
        out["same-distribution"] = (to_tensor(ds.x_test[pick]), torch.from_numpy(ds.y_test[pick]))
    out["random-noise"] = (noise_images(count, input_shape, seed), None)
    return out


# --- cells ------------------------------------------------------------------------------------

def _merge(*dicts) -> dict:
    out: dict = {}
    for d in dicts:
        for k, v in (d or {}).items():
            out[k] = _merge(out.get(k), v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def suite_attacks(requested) -> list[str]:
    """The attacks to run, by registry name (short or ``inversion/...``); refuses those without settings here."""
    out = []
    for name in requested:
        key = resolve(name)  # an unknown name: the registry's error, listing every attack
        short = key.split("/", 1)[1]
        if not key.startswith("inversion/") or short not in SETTINGS:
            raise SplitlabError(f"the he2019 suite has no settings for {key}; it reproduces {', '.join(SETTINGS)}")
        out.append(short)
    return out


def run_cell(attack: str, setting: str, ctx: dict, params: dict, progress: bool,
             device: str | None = None) -> tuple[dict, torch.Tensor]:
    """One table cell: the attack fitted on what the setting's threat model knows of the target in hand.

    ``device`` is where the attack computes (None: ``$SPLITLAB_DEVICE``, else the CPU); it is not part
    of the cell's cache key (the same cell on another device differs by rounding only).
    """
    chosen = SETTINGS[attack][setting]
    obj = create(attack, _merge(params, chosen.params(ctx["split"])), progress=progress, device=device)
    x, y = ctx["aux"][chosen.aux] if chosen.aux else (None, None)
    source = KnowledgeSource(head=ctx["head"], tail=ctx["tail"], record=ctx["record"], aux_images=x, aux_labels=y,
                             aux_setting=chosen.aux)
    obj.fit(knowledge_for(obj, source))
    stats = obj.fit_stats()
    started = time.perf_counter()
    rec = obj.reconstruct(ctx["features"])
    stats.update(fit_seconds=obj.fit_seconds or 0.0, reconstruct_seconds=time.perf_counter() - started,
                 threads=torch.get_num_threads(), device=obj.device)
    resolved = getattr(obj, "resolved", None)
    if resolved is not None:
        stats.update(iterations=resolved.iterations, ms_per_iteration=1000 * stats["reconstruct_seconds"] / resolved.iterations,
                     whitebox=resolved.as_dict())
    m = image_metrics(rec, ctx["x_eval"], psnr_cap=PSNR_CAP)
    return {**stats, **m, "params": params}, rec


def _closed_form_skip(params: dict, feats: torch.Tensor, shape) -> bool:
    """Whether the black-box attack solves this split's skip path by least squares."""
    from attacker.attacks.inversion.blackbox import fits_in_closed_form, inverse_network

    return params.get("skip_fit", "lstsq") == "lstsq" and fits_in_closed_form(
        inverse_network(tuple(feats.shape[1:]), shape, width=1).skip)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --- report -----------------------------------------------------------------------------------

def _fmt(r: dict | None, metric: str, digits: int) -> str:
    if r is None:
        return "—"
    return f"{r[metric + '_mean']:.{digits}f} ± {r[metric + '_std']:.{digits}f}"


def table(results: dict, attack: str, settings: list[str]) -> list[str]:
    head = "| metric | setting | " + " | ".join(f"{d} {s}" for d, s in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for metric, digits in (("psnr", 2), ("ssim", 4), ("ssim_paper", 4)):
        for setting in settings:
            cells = []
            for col in COLUMNS:
                r = results.get((col[0], col[1], attack, setting))
                paper = PAPER.get((attack, setting), {}).get(col)
                ref = "" if paper is None or metric == "ssim_paper" else f" ({paper[0 if metric == 'psnr' else 1]:.{digits}f})"
                cells.append(_fmt(r, metric, digits) + ref)
            if all(c.startswith("—") for c in cells):
                continue
            label = {"psnr": "PSNR dB", "ssim": "SSIM", "ssim_paper": "SSIM (paper's range)"}[metric]
            lines.append(f"| {label} | {setting} | " + " | ".join(cells) + " |")
    return lines


def timing_table(results: dict) -> list[str]:
    lines = ["| dataset | split | attack | setting | fit s | reconstruct s | ms / iteration (10 images) | notes |",
             "|---|---|---|---|---|---|---|---|"]
    for (d, s, a, st), r in results.items():
        note = []
        if "queries" in r:
            note.append(f"{r['queries']} queries, {r['aux_count']} aux images")
        if "shadow_accuracy" in r:
            note.append(f"shadow acc on aux {r['shadow_accuracy']:.3f}")
        if "iterations" in r:
            note.append(f"{r['iterations']} it, lr {r['whitebox']['lr']}, tv {r['whitebox']['tv_weight']}, {r['whitebox']['feature_loss']} loss")
        ms = f"{r['ms_per_iteration']:.1f}" if "ms_per_iteration" in r else ""
        lines.append(f"| {d} | {s} | {a} | {st} | {r['fit_seconds']:.1f} | {r['reconstruct_seconds']:.1f} | {ms} | {'; '.join(note)} |")
    return lines


def shortfalls(results: dict) -> list[str]:
    lines = []
    for (d, s, a, st), r in results.items():
        paper = PAPER.get((a, st), {}).get((d, s))
        if paper is None:
            continue
        short = [f"PSNR {r['psnr_mean']:.2f} < {paper[0]}" for _ in [0] if r["psnr_mean"] < paper[0]]
        short += [f"SSIM {r['ssim_mean']:.4f} < {paper[1]}" for _ in [0] if r["ssim_mean"] < paper[1]]
        if short:
            lines.append(f"- {d} {s} {a} {st}: " + ", ".join(short))
    return lines or ["- none: every measured cell matches or beats the paper's PSNR and SSIM"]


def figure(results_rec: dict, x_eval: torch.Tensor, dataset: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("original", x_eval)] + [(f"{s} {a}\n{st}", rec) for (s, a, st), rec in results_rec.items()]
    n = len(x_eval)
    fig, axes = plt.subplots(len(rows), n, figsize=(0.75 * n + 1.6, 0.8 * len(rows)), squeeze=False)
    for i, (label, imgs) in enumerate(rows):
        arr = imgs.clamp(0, 1).permute(0, 2, 3, 1).numpy()
        for j in range(n):
            ax = axes[i][j]
            ax.imshow(arr[j, ..., 0] if arr.shape[-1] == 1 else arr[j], cmap="gray" if arr.shape[-1] == 1 else None,
                      vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
        axes[i][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=6)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    fig.savefig(path, dpi=70)
    plt.close(fig)
    return path


# --- main -------------------------------------------------------------------------------------

def run(config: dict, config_path: Path, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks run {config_path}", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated datasets to run (default: all in the config)")
    parser.add_argument("--attacks", help=f"comma-separated attacks ({','.join(SETTINGS)})")
    parser.add_argument("--splits", help="comma-separated split points")
    parser.add_argument("--fresh", action="store_true", help="ignore cached cell results")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from cached cells")
    parser.add_argument("--threads", type=int, default=config.get("threads", int(os.environ.get("SPLITLAB_THREADS", 1))))
    parser.add_argument("--device", choices=DEVICES, default=config.get("device"),
                        help="where targets train and attacks compute (env SPLITLAB_DEVICE, default cpu; CUDA "
                             "asked for without a GPU falls back to the CPU with a message)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--target-id", action="append", default=[], metavar="DATASET=MODEL_ID",
                        help="use this stored model as the dataset's target (else trained under that id)")
    parser.add_argument("--artifacts", default=config.get("artifacts", os.environ.get("SPLITLAB_ARTIFACTS", "artifacts")))
    args = parser.parse_args(argv)
    set_torch_threads(args.threads)
    device = resolve_device(args.device, program="he2019")
    progress = not args.no_progress
    store = ArtifactStore(args.artifacts)
    cache = Path(config.get("cache", Path(args.artifacts) / "benchmarks" / config_path.stem))
    cache.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(",")) if args.only else None
    attacks = suite_attacks(args.attacks.split(",") if args.attacks else config.get("attacks", list(SETTINGS)))
    wanted_splits = set(args.splits.split(",")) if args.splits else None
    overrides = dict(item.split("=", 1) for item in args.target_id if "=" in item)
    results: dict = {}
    targets, evals, figures = [], [], []
    for dcfg in config["datasets"]:
        name = dcfg["name"]
        spec = {**dcfg["target"], "id": overrides.get(name, dcfg["target"]["id"])}
        from benchmarks.training import ensure_target

        ds = load_dataset(spec["dataset"])
        run_it = not args.report_only and (not only or name in only)
        if run_it or store.model_dir(spec["id"]).exists():
            manifest = (ensure_target(store, spec, progress=progress, device=device) if run_it
                        else store.manifest(spec["id"]))
        else:
            continue
        model, manifest = load_model(store, spec["id"])
        targets.append(f"`{spec['id']}` ({manifest['arch']} on {manifest['dataset']}, {len(manifest['members']['indices'])} "
                       f"training images, test accuracy {manifest['test_accuracy']:.4f})")
        x_eval, _, desc, eval_test_idx = evaluation_images(spec["dataset"], ds, dcfg.get("per_class", 1))
        evals.append(f"{name}: {desc}")
        shape = tuple(manifest["input_shape"])
        aux = auxiliary_sets(ds, manifest, eval_test_idx, dcfg.get("aux_count", 5000), dcfg.get("seed", 0), shape)
        recs: dict = {}
        for split in dcfg["splits"]:
            head, tail = split_model(model, split)
            with torch.no_grad():
                feats = head(x_eval)
            record = {"input_shape": shape, "feature_shape": tuple(feats.shape[1:]), "arch": manifest["arch"],
                      "split": split, "num_classes": manifest["num_classes"]}
            ctx = dict(head=head, tail=tail, record=record, split=split, features=feats, x_eval=x_eval, aux=aux)
            for attack in attacks:
                settings = dcfg.get("settings", {}).get(attack, list(SETTINGS[attack]))
                unknown = [st for st in settings if st not in SETTINGS[attack]]
                if unknown:
                    raise SplitlabError(f"{name}: unknown {attack} setting(s) {', '.join(unknown)}; known: "
                                        f"{', '.join(SETTINGS[attack])}")
                for setting in settings:
                    params = _merge(dcfg.get(attack), dcfg.get("per_split", {}).get(split, {}).get(attack))
                    key = _key(spec, split, attack, setting, params, desc, dcfg.get("aux_count"), dcfg.get("seed", 0),
                               *([CELL_VERSIONS[attack]] if attack in CELL_VERSIONS else []),
                               *(["lstsq-skip"] if attack == "blackbox" and _closed_form_skip(params, feats, shape) else []))
                    stem = cache / f"{name}-{split}-{attack}-{setting.replace('/', '_')}"
                    cached = stem.with_suffix(".json")
                    hit = cached.exists() and json.loads(cached.read_text()).get("key") == key and not args.fresh
                    if hit:
                        r = json.loads(cached.read_text())
                        rec = torch.from_numpy(np.load(stem.with_suffix(".npy")))
                    elif run_it and (wanted_splits is None or split in wanted_splits):
                        print(f"[he2019] {name} {split} {attack} {setting} ...", flush=True)
                        r, rec = run_cell(attack, setting, ctx, params, progress, device)
                        r["key"] = key
                        cached.write_text(json.dumps(r, indent=1))
                        np.save(stem.with_suffix(".npy"), rec.numpy())
                        print(f"[he2019] {name} {split} {attack} {setting}: PSNR {r['psnr_mean']:.2f} ± {r['psnr_std']:.2f}, "
                              f"SSIM {r['ssim_mean']:.4f}, fit {r['fit_seconds']:.0f} s, reconstruct "
                              f"{r['reconstruct_seconds']:.0f} s", flush=True)
                    else:
                        continue
                    results[(name, split, attack, setting)] = r
                    if setting in ("rMLE", "same-set", "same-set/same-net"):
                        recs[(split, attack, setting)] = rec
        if recs:
            figures.append(figure(recs, x_eval, name, cache / f"he2019-{name}.png"))
    out = Path(config.get("results", "benchmarks/results/he2019.md"))
    placed = []
    for fig in figures:
        dest = out.parent / fig.name if fig.stat().st_size < 300_000 else fig
        if dest != fig:
            dest.write_bytes(fig.read_bytes())
        placed.append(dest)
    command = "python -m benchmarks run " + shlex.join([str(config_path), *argv])
    write_report(out, config, results, targets, evals, placed, command, args.threads, device)
    (cache / "results.json").write_text(json.dumps({" ".join(k): v for k, v in results.items()}, indent=1))
    print(f"wrote {out}")
    return 0


def write_report(out: Path, config: dict, results: dict, targets, evals, figures, command: str, threads: int,
                 device: str = "cpu") -> None:
    lines = [f"# {config.get('title', 'He et al. 2019 model inversion: reproduction')}", "",
             f"Command: `{command}`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), torch {torch.__version__}, "
             f"{threads} torch thread(s), " + ("attacks on the GPU (cuda).  " if device == "cuda" else "no GPU.  "),
             "Targets: " + "; ".join(targets) + ".  ",
             "Evaluation images: " + "; ".join(evals) + ".", "",
             "Each cell: ours as mean ± std over the evaluation images, the paper's figure in parentheses. "
             f"PSNR is capped at {PSNR_CAP:.0f} dB (exact reconstructions). SSIM uses a fixed data range of 1; "
             "'SSIM (paper's range)' recomputes it with the reconstruction's own range as He et al.'s code did "
             "(see `attacker/metrics.py`).", ""]
    if config.get("notes"):
        lines += [config["notes"].strip(), ""]
    lines += ["## Table 3: white-box (rMLE)", "",
              "`rMLE` is our attack (relative feature loss, per-split defaults); `He-lambda` is the same optimiser "
              "with He et al.'s per-element feature loss and fixed TV weights (0 / 1e1 / 1e3), lr 1e-2, no decay.", ""]
    lines += table(results, "whitebox", SETTINGS["whitebox"]) + [""]
    lines += ["## Table 4: black-box (inverse network)", ""] + table(results, "blackbox", SETTINGS["blackbox"]) + [""]
    lines += ["## Table 6: query-free (shadow head through the frozen tail)", ""]
    lines += table(results, "queryfree", SETTINGS["queryfree"]) + [""]
    lines += ["## Time per attack", "", "fit = training the inverse network or the shadow head (0 for white-box); "
              "reconstruct = inverting all evaluation images at once.", ""] + timing_table(results) + [""]
    lines += ["## Cells below the paper", ""] + shortfalls(results) + [""]
    if figures:
        lines += ["## Figures", ""]
        for f in figures:
            rel = os.path.relpath(f, out.parent)
            lines.append(f"![{Path(f).stem}]({rel})" if not rel.startswith("..") else f"- `{f}` (too large for the repository)")
        lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))

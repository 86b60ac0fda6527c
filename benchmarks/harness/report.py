"""Report outputs of a suite run: ``trials.jsonl``, ``trials.csv``, ``report.md`` and the helpers
suites build their tables with (mean +- std over seeds).

``trials.jsonl`` is the machine-readable record (one JSON object per trial: suite, trial, attack,
target, seed, metrics, seconds, plus status, error, device, versions), ``trials.csv`` the same
flattened for spreadsheets, ``report.md`` the tables a person reads. The report's header (command,
machine, executor) is written here so that every suite's report says how it was made; the suite
writes the body. A report is regenerated whole, never edited: hand-written analysis lives in a notes
file the config names (``notes:``), which ends the report (``notes_section``). The stand-alone
benchmarks (``benchmarks.tap_overhead``, ``benchmarks.load``) include the file beside their report
instead (``notes_beside``: ``X.md`` includes ``X.notes.md``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import platform
import statistics
from pathlib import Path

JSONL_KEYS = ("suite", "trial", "label", "attack", "target", "seed", "device", "status", "metrics", "seconds",
              "error", "executor", "host", "versions")


def write_trials(results: list[dict], out_dir: Path) -> tuple[Path, Path]:
    """``trials.jsonl`` (one object per trial) and ``trials.csv`` (target, attack and metrics flattened)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "trials.jsonl"
    jsonl.write_text("".join(json.dumps({k: r.get(k) for k in JSONL_KEYS}) + "\n" for r in results))
    flat = [_flatten(r) for r in results]
    columns = list(dict.fromkeys(key for row in flat for key in row))
    csv_path = out_dir / "trials.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(flat)
    return jsonl, csv_path


def _flatten(result: dict) -> dict:
    row = {k: result.get(k) for k in ("suite", "trial", "label", "seed", "device", "status", "seconds", "error")}
    for part in ("target", "attack", "metrics"):
        for key, value in (result.get(part) or {}).items():
            row[f"{part}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return row


def ok(results: list[dict]) -> list[dict]:
    return [r for r in results if r["status"] == "ok"]


def group(results: list[dict], key) -> dict:
    """Successful results grouped by ``key(result)``, groups in first-seen order."""
    groups: dict = {}
    for r in ok(results):
        groups.setdefault(key(r), []).append(r)
    return groups


def values(results: list[dict], metric: str) -> list[float]:
    return [r["metrics"][metric] for r in results if isinstance(r["metrics"].get(metric), (int, float))]


def mean_std(xs: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN mean for no values."""
    if not xs:
        return math.nan, math.nan
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def fmt(xs: list[float], digits: int = 4) -> str:
    """``mean ± std`` over seeds, or the single value; ``-`` when there is none."""
    if not xs:
        return "-"
    mean, std = mean_std(xs)
    return f"{mean:.{digits}f}" if len(xs) == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(header: list[str], rows: list[list]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


@contextlib.contextmanager
def figure(path: Path, ncols: int = 1, figsize: tuple[float, float] = (6, 3.5), nrows: int = 1):
    """A matplotlib figure (headless) with ``nrows`` x ``ncols`` axes, saved to ``path`` when the block ends."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=figsize)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def training_budget(options: dict, epochs: bool = False) -> str:
    """A target's training recipe in words, TrainOptions' defaults where ``options`` leaves a field out."""
    from models.training import TrainOptions

    def option(name):
        return options.get(name, TrainOptions.__dataclass_fields__[name].default)

    return ((f"{option('epochs')} epochs, " if epochs else "")
            + f"Adam lr {option('lr'):g}, batch {option('batch_size')}, cosine" + (", crop+flip" if option("augment") else ""))


def notes_section(notes: str | None) -> list[str]:
    """The hand-written notes file ``notes`` (a config's ``notes:``, relative to the repository root)
    as the report's last section; nothing when it is not given or does not exist."""
    if not notes:
        return []
    path = Path(notes) if Path(notes).is_absolute() else Path(__file__).resolve().parents[2] / notes
    return ["", path.read_text().rstrip()] if path.is_file() else []


def notes_beside(report: Path) -> list[str]:
    """The notes file beside a stand-alone benchmark's report (``X.md`` -> ``X.notes.md``), as its
    last section."""
    return notes_section(str(report.resolve().with_suffix(".notes.md")))


def failures(results: list[dict]) -> list[str]:
    """A section listing the trials that failed or never ran (empty when all succeeded)."""
    bad = [r for r in results if r["status"] != "ok"]
    if not bad:
        return []
    lines = ["", f"## Trials without results ({len(bad)} of {len(results)})", ""]
    for r in bad:
        first = (r.get("error") or "never ran").strip().splitlines()[0]
        lines.append(f"- `{r['trial']}` {r['label']}: {r['status']}: {first}")
    return lines


def write_report(out_dir: Path, title: str, body: list[str], command: str, run_info: dict,
                 notes: str | None = None) -> Path:
    """``report.md``: title, how it was made, the suite's body, then the notes file ``notes`` names."""
    path = out_dir / "report.md"
    head = [f"# {title}", "", f"Command: `{command}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} cores; this run: {run_info['executor']}; "
            f"device {run_info['device']}.  ",
            f"Trials: {run_info['ok']} of {run_info['total']} with results; per-trial records in `trials.jsonl` "
            "and `trials.csv`.", ""]
    path.write_text("\n".join(head + body + notes_section(notes)) + "\n")
    return path

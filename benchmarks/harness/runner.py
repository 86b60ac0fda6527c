"""Run a suite on the harness: expand the config into trials, run those without a finished result,
record every outcome, write the outputs.

    python -m benchmarks run CONFIG [--executor local|ray] [--address ADDR] [--device cpu|cuda]
                                    [--out DIR] [--workers N] [--threads N] [--fresh] [--only TEXT]

A failed trial does not stop the run: its error is stored, the report is still written (listing
it), and the exit status is 1. The outputs go to ``--out`` (default: the config's ``out:``, else
``benchmarks/results/<config name>/``: a suite's full config produces the figures the repository
publishes, so its outputs land beside the other results; quick configs point ``out:`` at the
git-ignored ``out/``).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import time
from pathlib import Path

from tqdm.auto import tqdm

from models.env import env_default
from models.errors import SplitlabError

from . import report as reports
from .executors import EXECUTORS, machine_cores, make_executor
from .spec import Context
from .store import ResultsStore

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEVICES = ("cpu", "cuda")


def parser_for(name: str, suite, config: dict, config_path: Path) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m benchmarks run {config_path}", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(suite.__doc__ or name) + "\n\nHarness:\n" + (__doc__ or "").split("\n\n", 1)[1])
    parser.add_argument("--executor", choices=EXECUTORS, default=config.get("executor", "local"),
                        help="where trials run: local processes (default) or a Ray cluster")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join (HOST:PORT or 'auto'); default: start a local Ray instance")
    parser.add_argument("--device", choices=DEVICES, default=env_default("SPLITLAB_DEVICE", config.get("device", "cpu"),
                                                                         choices=DEVICES),
                        help="device every trial runs on (part of the trial: cpu and cuda results are kept apart)"
                             " [$SPLITLAB_DEVICE, default cpu]")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: the config's 'out', else {RESULTS}/<config name>)")
    parser.add_argument("--workers", type=int, default=None,
                        help=f"trials at once (default and maximum: cores // threads; {machine_cores()} cores here)")
    parser.add_argument("--threads", type=int, default=env_default("SPLITLAB_THREADS", 1, int),
                        help="torch / ONNX Runtime threads per trial [$SPLITLAB_THREADS, default 1]")
    parser.add_argument("--artifacts", default=env_default("SPLITLAB_ARTIFACTS", "artifacts"),
                        help="artifact store the trials read and write [$SPLITLAB_ARTIFACTS, default ./artifacts]")
    parser.add_argument("--store", type=Path, default=None,
                        help="results store (default: <artifacts>/benchmarks/results.sqlite)")
    parser.add_argument("--fresh", action="store_true",
                        help="run every trial again, and recompute what trials would reuse from the artifact store")
    parser.add_argument("--only", default=None,
                        help="run only the trials whose label contains one of these comma-separated texts")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the outputs from the store")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(name: str, suite, config: dict, config_path: Path, argv: list[str]) -> int:
    """``python -m benchmarks run CONFIG ...`` for a harness suite; returns the exit status."""
    parser = parser_for(name, suite, config, config_path)
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error(f"--threads must be at least 1, got {args.threads}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.device == "cuda" and args.executor == "local":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device on this machine")
    trials = [t.on(args.device) for t in suite.trials(config)]
    seen: dict[str, str] = {}
    for t in trials:
        if t.trial_id in seen:
            raise SplitlabError(f"{config_path}: trials {seen[t.trial_id]!r} and {t.label!r} are the same trial")
        seen[t.trial_id] = t.label
    selected = trials
    if args.only:
        wanted = [w for w in args.only.split(",") if w]
        selected = [t for t in trials if any(w in t.label for w in wanted)]
        if not selected:
            parser.error(f"--only {args.only}: no trial label contains it; labels: "
                         + ", ".join(t.label for t in trials[:10]) + (" ..." if len(trials) > 10 else ""))
    artifacts = Path(args.artifacts).resolve()
    out_dir = (args.out or Path(config.get("out") or RESULTS / config_path.stem)).resolve()
    executor = make_executor(args.executor, args.address, args.workers, args.threads)
    ctx = Context(artifacts=str(artifacts), device=args.device, threads=args.threads, out_dir=str(out_dir),
                  fresh=args.fresh, progress=False)
    with ResultsStore(args.store or artifacts / "benchmarks" / "results.sqlite") as store:
        if not args.report_only:
            done = set() if args.fresh else store.finished([t.trial_id for t in selected])
            todo = [t for t in selected if t.trial_id not in done]
            print(f"[{name}] {len(selected)} trial(s), {len(selected) - len(todo)} already finished in {store.path}; "
                  f"running {len(todo)} on {executor.describe()}, {args.device}", flush=True)
            started = time.perf_counter()
            execute(executor, todo, ctx, store, progress=not args.no_progress)
            if todo:
                wall = time.perf_counter() - started
                print(f"[{name}] ran {len(todo)} trial(s) in {wall:.0f} s ({3600 * len(todo) / wall:.0f} trials/hour"
                      f" on {args.executor}, start-up included)", flush=True)
        results = store.rows(trials)
    reports.write_trials(results, out_dir)
    body = suite.report(results, out_dir, config) + reports.failures(results)
    command = "python -m benchmarks run " + shlex.join([str(config_path), *argv])
    wanted_ids = {t.trial_id for t in selected}
    ok = sum(r["status"] == "ok" for r in results)
    path = reports.write_report(out_dir, config.get("title", getattr(suite, "TITLE", name)), body, command,
                                {"executor": executor.describe(), "device": args.device, "ok": ok,
                                 "total": len(results)}, notes=config.get("notes"))
    print(f"[{name}] wrote {path}, {out_dir / 'trials.jsonl'}", flush=True)
    bad = [r for r in results if r["trial"] in wanted_ids and r["status"] != "ok"]
    if bad:
        print(f"[{name}] {len(bad)} trial(s) without results: " + ", ".join(r["label"] for r in bad), flush=True)
    return 1 if bad else 0


def code_commit() -> str | None:
    """The repository's commit (``-dirty`` with uncommitted changes), None outside a git checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return sha + ("-dirty" if dirty else "")


def execute(executor, trials, ctx: Context, store: ResultsStore, progress: bool = True) -> None:
    """Run ``trials`` on ``executor``, recording each outcome as it arrives (with the code's commit)."""
    for t in trials:
        store.submit(t, executor.name)
    commit = code_commit() if trials else None
    bar = tqdm(total=len(trials), unit="trial", disable=not progress or not trials)
    try:
        for trial, outcome in executor.run(trials, ctx):
            outcome["versions"] = {**(outcome.get("versions") or {}), "commit": commit}
            store.record(trial, outcome)
            bar.update(1)
            bar.set_postfix_str(trial.label)
            if outcome["status"] != "ok":
                bar.write(f"FAILED {trial.label}: {outcome['error'].splitlines()[0]}")
    finally:
        bar.close()


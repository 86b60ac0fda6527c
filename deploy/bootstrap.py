"""The compose ``init`` step: put a default model into an empty artifact store, then exit.

    python bootstrap.py [--dry-run]

When the store (``$SPLITLAB_ARTIFACTS``) already holds a deployment, it does nothing: the volume
has been initialised before, or you mounted your own artifacts. Otherwise it trains one model and
deploys it at the configured split points through the ``python -m models`` command line:

    python -m models train --arch ARCH --dataset DATASET --epochs N --seed S --scheme SCHEME --id ID --reuse
    python -m models deploy ID --split S1 --split S2 ...

A model left by an interrupted earlier run is reused rather than trained again, but only when it
was trained with these settings (``train --reuse`` compares the stored spec; a leftover model of
the same id with other options fails the step, naming the differences). Settings, all from
the environment (docker-compose.yml passes them through from .env):

    SPLITLAB_INIT_ARCH        lenet5
    SPLITLAB_INIT_DATASET     digits   (scikit-learn's digits need no data; mnist etc. need SPLITLAB_DATA)
    SPLITLAB_INIT_EPOCHS      20
    SPLITLAB_INIT_SEED        0
    SPLITLAB_INIT_SCHEME      full     (python -m models train --scheme)
    SPLITLAB_INIT_SPLITS      "conv1 relu2"   (space- or comma-separated split points)
    SPLITLAB_INIT_MODEL_ID    ARCH-DATASET-sSEED   (deployments are MODEL_ID--SPLIT)
    SPLITLAB_INIT_TRAIN_ARGS  extra arguments for train, shell-quoted (e.g. "--limit 2000")

``--dry-run`` prints the commands instead of running them. Standard library only; the training
itself is the models package's.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

DEFAULTS = {
    "SPLITLAB_INIT_ARCH": "lenet5",
    "SPLITLAB_INIT_DATASET": "digits",
    "SPLITLAB_INIT_EPOCHS": "20",
    "SPLITLAB_INIT_SEED": "0",
    "SPLITLAB_INIT_SCHEME": "full",
    "SPLITLAB_INIT_SPLITS": "conv1 relu2",
    "SPLITLAB_INIT_TRAIN_ARGS": "",
}


def setting(env: dict[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    return value or DEFAULTS[name]


def plan(env: dict[str, str]) -> tuple[Path, str, list[str], list[list[str]]]:
    """(store root, model id, split points, commands) for an empty store."""
    root = Path(env.get("SPLITLAB_ARTIFACTS") or "artifacts")
    arch = setting(env, "SPLITLAB_INIT_ARCH")
    dataset = setting(env, "SPLITLAB_INIT_DATASET")
    seed = setting(env, "SPLITLAB_INIT_SEED")
    model_id = env.get("SPLITLAB_INIT_MODEL_ID", "").strip() or f"{arch}-{dataset}-s{seed}"
    splits = [s for s in re.split(r"[\s,]+", setting(env, "SPLITLAB_INIT_SPLITS")) if s]
    py = [sys.executable, "-m", "models"]
    # --reuse: a stored model of this id is reused only if its spec is this one (else train fails)
    commands = [py + ["train", "--arch", arch, "--dataset", dataset,
                      "--epochs", setting(env, "SPLITLAB_INIT_EPOCHS"), "--seed", seed,
                      "--scheme", setting(env, "SPLITLAB_INIT_SCHEME"), "--id", model_id, "--reuse",
                      "--artifacts", str(root)]
                + shlex.split(setting(env, "SPLITLAB_INIT_TRAIN_ARGS"))]
    deploy = py + ["deploy", model_id, "--artifacts", str(root)]
    for split in splits:
        deploy += ["--split", split]
    commands.append(deploy)
    return root, model_id, splits, commands


def existing_deployments(root: Path) -> list[str]:
    folder = root / "deployments"
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / "deployment.json").is_file())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in ([], ["--dry-run"]):
        print(__doc__, file=sys.stderr)
        return 2
    dry_run = argv == ["--dry-run"]
    env = dict(os.environ)
    root, model_id, splits, commands = plan(env)
    found = existing_deployments(root)
    if found:
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        print(f"init: {root} already has {len(found)} deployment(s) ({shown}); nothing to do")
        return 0
    if not splits:
        print("init: SPLITLAB_INIT_SPLITS names no split point", file=sys.stderr)
        return 2
    print(f"init: {root} has no deployment; creating {model_id} at {', '.join(splits)}", flush=True)
    for command in commands:
        print("+ " + shlex.join(command), flush=True)
        if dry_run:
            continue
        result = subprocess.run(command, check=False)
        if result.returncode != 0:
            print(f"init: failed (exit {result.returncode}): {shlex.join(command)}", file=sys.stderr)
            return result.returncode
    if not dry_run:
        print(f"init: done; deployments {', '.join(f'{model_id}--{s}' for s in splits)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

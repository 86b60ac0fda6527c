"""``python -m benchmarks.training``: the training suite, now on the harness.

The suite lives in :mod:`benchmarks.suites.training`; this module keeps the old command and
``ensure_target`` (the He et al. suite trains its targets with it) where they were.

    python -m benchmarks.training [--config benchmarks/configs/training.yaml] [--retrain] [harness options]

is ``python -m benchmarks run CONFIG [harness options]``, with ``--retrain`` meaning ``--fresh``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks.suites.training import ensure_target

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "training.yaml"

__all__ = ["ensure_target", "main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--retrain", action="store_true")
    args, rest = parser.parse_known_args(argv)
    from benchmarks.__main__ import main as benchmarks_main

    return benchmarks_main(["run", args.config, *(["--fresh"] if args.retrain else []), *rest])


if __name__ == "__main__":
    sys.exit(main())

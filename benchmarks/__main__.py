"""Benchmark runner: ``python -m benchmarks run CONFIG.yaml [suite options]``.

The YAML's ``suite:`` key picks the suite; each suite is a module with a
``run(config: dict, config_path: Path, argv: list[str]) -> int`` function, registered in
:data:`SUITES` (imported lazily, so a suite's dependencies load only when it runs). Options after
the config path go to the suite (``python -m benchmarks run CONFIG --help`` lists them).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import yaml

SUITES: dict[str, str] = {
    "he2019": "benchmarks.he2019",
    "whitebox-speed": "benchmarks.whitebox_speed",
    "training": "benchmarks.training",
}


def _run_training(config_path: Path, argv: list[str]) -> int:
    from benchmarks.training import main

    return main(["--config", str(config_path), *argv])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suite a config file names", add_help=False)
    run.add_argument("config", type=Path)
    sub.add_parser("suites", help="list the known suites")
    args, rest = parser.parse_known_args(argv)
    if args.command == "suites":
        print("\n".join(f"{name}\t{module}" for name, module in SUITES.items()))
        return 0
    if not args.config.is_file():
        parser.error(f"config file {args.config} not found")
    config = yaml.safe_load(args.config.read_text()) or {}
    suite = config.get("suite") if isinstance(config, dict) else None
    if suite not in SUITES:
        parser.error(f"{args.config}: 'suite' must be one of {', '.join(SUITES)}, got {suite!r}")
    if suite == "training":  # the training suite has its own command line
        return _run_training(args.config, rest)
    return importlib.import_module(SUITES[suite]).run(config, args.config, rest)


if __name__ == "__main__":
    sys.exit(main())

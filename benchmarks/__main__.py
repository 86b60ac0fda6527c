"""Benchmark runner: ``python -m benchmarks run CONFIG.yaml [options]``.

The YAML's ``suite:`` key picks the suite. Harness suites (``benchmarks/suites/``: training,
membership) expand the config into trials and run them on an executor (``--executor local|ray``,
``--device``, ``--out``, ...; ``python -m benchmarks run CONFIG --help`` lists the options). The
other suites are modules with a ``run(config, config_path, argv) -> int`` function and their own
options after the config path. Suites are imported lazily, so a suite's dependencies load only
when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import yaml

from benchmarks.suites import SUITES as HARNESS_SUITES

# Suites with their own runner (``run(config, config_path, argv)``), outside the harness.
STANDALONE: dict[str, str] = {
    "he2019": "benchmarks.he2019",
    "whitebox-speed": "benchmarks.whitebox_speed",
}
SUITES: dict[str, str] = {**STANDALONE, **HARNESS_SUITES}


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
    module = importlib.import_module(SUITES[suite])
    if suite in HARNESS_SUITES:
        from benchmarks.harness.runner import run as run_on_harness
        from models.errors import SplitlabError

        try:
            return run_on_harness(suite, module, config, args.config, rest)
        except SplitlabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return module.run(config, args.config, rest)


if __name__ == "__main__":
    sys.exit(main())

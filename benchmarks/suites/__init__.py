"""The suites that run on the harness (``benchmarks/harness``): one module per suite.

A suite module exposes three functions and nothing live:

- ``trials(config) -> list[Trial]``: the config's trials (target x attack x seed), built with
  :func:`benchmarks.harness.spec.expand`;
- ``run_trial(trial, ctx) -> dict``: the metrics of one trial, a pure function of the trial and the
  artifact store at ``ctx.artifacts`` (timings are metrics whose name ends in ``_seconds``);
- ``report(results, out_dir, config) -> list[str]``: the Markdown body of ``report.md`` (and any
  plots, written into ``out_dir``) from the results of every trial of the config.

Suites that time processes against each other in one run (serving, tap overhead) and the He et
al. reproduction stay outside (see the README's Harness section).
"""

from __future__ import annotations

import importlib

SUITES: dict[str, str] = {
    "training": "benchmarks.suites.training",
    "membership": "benchmarks.suites.membership",
    "gradient": "benchmarks.suites.gradient",
    "attribute": "benchmarks.suites.attribute",
    "defences": "benchmarks.suites.defences",
    "face_inversion": "benchmarks.suites.face_inversion",
    "architectures": "benchmarks.suites.architectures",
}


def load_suite(name: str):
    if name not in SUITES:
        from models.errors import SplitlabError

        raise SplitlabError(f"unknown harness suite {name!r}; known: {', '.join(SUITES)}")
    return importlib.import_module(SUITES[name])

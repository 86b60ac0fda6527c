"""The results store: one SQLite row per trial id, so that finished work is never done twice.

A sweep is interrupted, a trial fails, a config gains a seed: the next run looks up each trial's
id here and runs only what has no finished row (``--fresh`` runs everything again). A failed
trial keeps its error message and is retried on the next run. Rows hold the trial's full spec,
the versions it ran with, its metrics, its wall time and where it ran, so a report can be rebuilt
from the store alone (``--report-only``).

The default location is ``<artifact store>/benchmarks/results.sqlite``, beside the models and
deployments the metrics were measured on: a row is only as valid as the artifacts it used, and
the repository gets the small text outputs (``trials.jsonl``, ``report.md``), never the database.
Only the driver process writes here (workers return their results), so one writer is enough.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from .spec import Trial

SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    trial_id TEXT PRIMARY KEY,
    suite TEXT NOT NULL,
    label TEXT NOT NULL,
    spec TEXT NOT NULL,
    seed INTEGER NOT NULL,
    device TEXT NOT NULL,
    status TEXT NOT NULL,          -- pending (submitted) | ok | failed
    metrics TEXT,
    seconds REAL,
    error TEXT,
    versions TEXT,
    executor TEXT,
    host TEXT,
    started TEXT,
    finished TEXT
);
CREATE INDEX IF NOT EXISTS trials_suite ON trials (suite);
"""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class ResultsStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ResultsStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _by_id(self, trial_ids: list[str]) -> dict[str, dict]:
        """Stored rows of ``trial_ids`` as dicts (SQLite takes at most 999 parameters per query)."""
        found = {}
        for i in range(0, len(trial_ids), 500):
            chunk = trial_ids[i:i + 500]
            cur = self.db.execute(f"SELECT * FROM trials WHERE trial_id IN ({','.join('?' * len(chunk))})", chunk)
            names = [d[0] for d in cur.description]
            found.update((row[0], dict(zip(names, row))) for row in cur)
        return found

    def finished(self, trial_ids: list[str]) -> set[str]:
        """The ids among ``trial_ids`` that have a successful row."""
        return {tid for tid, row in self._by_id(trial_ids).items() if row["status"] == "ok"}

    def submit(self, trial: Trial, executor: str) -> None:
        """A row for a trial handed to an executor (``pending`` until its outcome comes back)."""
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO trials (trial_id, suite, label, spec, seed, device, status, executor)"
                " VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (trial.trial_id, trial.suite, trial.label, json.dumps(trial.spec()), trial.seed, trial.device,
                 executor))

    def record(self, trial: Trial, outcome: dict) -> None:
        """Store a worker's outcome (``status``, ``metrics``, ``seconds``, ``error``, ``versions``, ``host``,
        ``started``)."""
        with self.db:
            self.db.execute(
                "UPDATE trials SET status = ?, metrics = ?, seconds = ?, error = ?, versions = ?, host = ?,"
                " started = ?, finished = ? WHERE trial_id = ?",
                (outcome["status"], json.dumps(outcome.get("metrics")), outcome.get("seconds"), outcome.get("error"),
                 json.dumps(outcome.get("versions")), outcome.get("host"), outcome.get("started"), now(),
                 trial.trial_id))

    def rows(self, trials: list[Trial]) -> list[dict]:
        """The stored results of ``trials``, in their order; a trial never run has status ``missing``."""
        by_id = self._by_id([t.trial_id for t in trials])
        return [result_record(t, by_id.get(t.trial_id)) for t in trials]


def result_record(trial: Trial, row: dict | None) -> dict:
    """One trial's result as suites, reports and ``trials.jsonl`` see it."""
    row = row or {"status": "missing"}
    return {
        "suite": trial.suite, "trial": trial.trial_id, "label": trial.label,
        "target": trial.target, "attack": trial.attack, "seed": trial.seed, "device": trial.device,
        "status": row["status"],
        "metrics": json.loads(row["metrics"]) if row.get("metrics") else {},
        "seconds": row.get("seconds"),
        "error": row.get("error"),
        "versions": json.loads(row["versions"]) if row.get("versions") else {},
        "executor": row.get("executor"), "host": row.get("host"),
        "started": row.get("started"), "finished": row.get("finished"),
    }

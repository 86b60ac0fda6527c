"""The experiment store: one SQLite database (WAL) plus a folder of images per experiment.

Layout under the lab directory (``--lab-dir``, default ``<capture store>/lab``)::

    experiments.sqlite              one row per experiment (spec, status, progress, results, error)
    experiments/<id>/images/*.png   original and reconstruction grids

Statuses: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. A running experiment
whose service died is found by :meth:`ExperimentStore.recover` at the next start, marked
``interrupted`` (and counted in ``restarts``) and picked up again like a queued one, in submission
order. Every write is a short transaction, so the store can be shared by the API, the workers and
a second process.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from pathlib import Path

STATUSES = ("queued", "running", "done", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running", "interrupted")
FINAL = ("done", "failed", "cancelled")

SCHEMA = """
CREATE TABLE IF NOT EXISTS experiments (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    step TEXT NOT NULL DEFAULT '',
    fraction REAL NOT NULL DEFAULT 0,
    results TEXT,
    error TEXT,
    restarts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    events TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS experiments_status ON experiments (status, seq);
"""


def to_json(value) -> str:
    """JSON that every client can parse: NaN/Inf become null, numpy scalars and arrays plain values."""
    return json.dumps(_clean(value), allow_nan=False)


def _clean(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return _clean(value.tolist())
    return value


def now() -> float:
    return time.time()


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


class ExperimentStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / "experiments.sqlite"
        self._local = threading.local()
        self._conn().executescript(SCHEMA)

    # --- connection ------------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    class _Tx:
        def __init__(self, conn):
            self.conn = conn

        def __enter__(self):
            self.conn.execute("BEGIN IMMEDIATE")
            return self.conn

        def __exit__(self, exc_type, *_):
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self):
        return self._Tx(self._conn())

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # --- folders -----------------------------------------------------------------------------
    def image_dir(self, exp_id: str) -> Path:
        return self.root / "experiments" / exp_id / "images"

    # --- writes ------------------------------------------------------------------------------
    def create(self, spec: dict) -> dict:
        exp_id = uuid.uuid4().hex[:16]
        t = now()
        with self._tx() as db:
            db.execute("INSERT INTO experiments (id, status, spec, created, events) VALUES (?, 'queued', ?, ?, ?)",
                       (exp_id, to_json(spec), t, json.dumps([[t, "queued"]])))
        return self.get(exp_id)

    def claim_next(self) -> dict | None:
        """Atomically move the oldest queued (or interrupted) experiment to ``running``."""
        with self._tx() as db:
            row = db.execute("SELECT id, status FROM experiments WHERE status IN ('queued', 'interrupted') "
                             "ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            t = now()
            db.execute("UPDATE experiments SET status='running', started=?, step='starting', fraction=0, "
                       "error=NULL, events=json_insert(events, '$[#]', json_array(?, ?)) WHERE id=?",
                       (t, t, "running", row["id"]))
        return self.get(row["id"])

    def progress(self, exp_id: str, step: str, fraction: float, partial: dict | None = None) -> None:
        args = [step, max(0.0, min(1.0, float(fraction)))]
        sql = "UPDATE experiments SET step=?, fraction=?"
        if partial is not None:
            sql += ", results=?"
            args.append(to_json(partial))
        with self._tx() as db:
            db.execute(sql + " WHERE id=? AND status='running'", (*args, exp_id))

    def finish(self, exp_id: str, status: str, results: dict | None = None, error: str | None = None) -> bool:
        """Set a final status (only from ``running``); returns False if it was no longer running."""
        assert status in FINAL
        t = now()
        with self._tx() as db:
            cur = db.execute(
                "UPDATE experiments SET status=?, finished=?, results=COALESCE(?, results), error=?, "
                "fraction=CASE WHEN ?='done' THEN 1 ELSE fraction END, "
                "step=CASE WHEN ?='done' THEN 'done' ELSE step END, "
                "events=json_insert(events, '$[#]', json_array(?, ?)) WHERE id=? AND status='running'",
                (status, t, to_json(results) if results is not None else None, error, status, status,
                 t, status, exp_id))
            return cur.rowcount == 1

    def cancel(self, exp_id: str) -> dict | None:
        """Cancel a queued/interrupted experiment now, or ask a running one to stop.

        Returns the record, or None if unknown. A finished experiment is returned unchanged.
        """
        t = now()
        with self._tx() as db:
            row = db.execute("SELECT status FROM experiments WHERE id=?", (exp_id,)).fetchone()
            if row is None:
                return None
            if row["status"] in ("queued", "interrupted"):
                db.execute("UPDATE experiments SET status='cancelled', finished=?, cancel_requested=1, "
                           "events=json_insert(events, '$[#]', json_array(?, 'cancelled')) WHERE id=?",
                           (t, t, exp_id))
            elif row["status"] == "running":
                db.execute("UPDATE experiments SET cancel_requested=1, "
                           "events=json_insert(events, '$[#]', json_array(?, 'cancel requested')) WHERE id=?",
                           (t, exp_id))
        return self.get(exp_id)

    def cancel_requested(self, exp_id: str) -> bool:
        row = self._conn().execute("SELECT cancel_requested FROM experiments WHERE id=?", (exp_id,)).fetchone()
        return bool(row and row["cancel_requested"])

    def recover(self, max_restarts: int = 3) -> list[str]:
        """At start-up: experiments left ``running`` by a dead service become ``interrupted``
        (to be re-run), or ``failed`` once they have been interrupted ``max_restarts`` times, or
        ``cancelled`` if a cancel had been asked for. Returns the ids that will be re-run."""
        t = now()
        rerun = []
        with self._tx() as db:
            rows = db.execute("SELECT id, restarts, cancel_requested FROM experiments WHERE status='running'").fetchall()
            for row in rows:
                if row["cancel_requested"]:
                    status, error = "cancelled", None
                elif row["restarts"] >= max_restarts:
                    status, error = "failed", (f"interrupted {row['restarts'] + 1} times by a service restart; "
                                               "giving up")
                else:
                    status, error = "interrupted", None
                    rerun.append(row["id"])
                db.execute("UPDATE experiments SET status=?, restarts=restarts+1, error=?, "
                           "finished=CASE WHEN ?='interrupted' THEN NULL ELSE ? END, "
                           "events=json_insert(events, '$[#]', json_array(?, ?)) WHERE id=?",
                           (status, error, status, t, t, status, row["id"]))
        return rerun

    # --- reads -------------------------------------------------------------------------------
    def get(self, exp_id: str) -> dict | None:
        row = self._conn().execute("SELECT * FROM experiments WHERE id=?", (exp_id,)).fetchone()
        return _record(row) if row else None

    def list(self, status: str | None = None, limit: int = 20, offset: int = 0) -> tuple[list[dict], int]:
        where, args = ("WHERE status=?", [status]) if status else ("", [])
        db = self._conn()
        total = db.execute(f"SELECT COUNT(*) FROM experiments {where}", args).fetchone()[0]
        rows = db.execute(f"SELECT * FROM experiments {where} ORDER BY seq DESC LIMIT ? OFFSET ?",
                          (*args, limit, offset)).fetchall()
        return [_record(r) for r in rows], total

    def queue_position(self, exp_id: str) -> int | None:
        """1-based position among the experiments waiting to run, or None if it is not waiting."""
        db = self._conn()
        row = db.execute("SELECT seq, status FROM experiments WHERE id=?", (exp_id,)).fetchone()
        if row is None or row["status"] not in ("queued", "interrupted"):
            return None
        return db.execute("SELECT COUNT(*) FROM experiments WHERE status IN ('queued', 'interrupted') AND seq<=?",
                          (row["seq"],)).fetchone()[0]

    def counts(self) -> dict[str, int]:
        rows = self._conn().execute("SELECT status, COUNT(*) AS n FROM experiments GROUP BY status").fetchall()
        return {s: 0 for s in STATUSES} | {r["status"]: r["n"] for r in rows}


def _record(row: sqlite3.Row) -> dict:
    return {
        "id": row["id"],
        "status": row["status"],
        "spec": json.loads(row["spec"]),
        "created": iso(row["created"]),
        "started": iso(row["started"]),
        "finished": iso(row["finished"]),
        "progress": {"step": row["step"], "fraction": round(row["fraction"], 4)},
        "results": json.loads(row["results"]) if row["results"] else None,
        "error": row["error"],
        "restarts": row["restarts"],
        "cancel_requested": bool(row["cancel_requested"]),
        "events": [{"time": iso(t), "event": e} for t, e in json.loads(row["events"])],
    }

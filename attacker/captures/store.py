"""The capture store: what the tap saw, as a SQLite index plus array files in one folder.

Layout of ``DIR`` (``--store``, env ``SPLITLAB_STORE``, default ``./captures``)::

    index.sqlite              WAL-mode index (tables below); safe to read while the tap writes
    arrays/<hour>/<name>.npys segment files: each capture's feature batch is one complete .npy record
                              (header + data) appended, with direct I/O (:mod:`attacker.captures.segment_file`),
                              at an offset kept in the index, in the wire
                              representation (float32, float16, bfloat16 as uint16 bits, int8 with
                              its scale in the index, uint8); ``features()`` returns float32
    heads/<sha256>.onnx       every distinct head seen in a GetHead reply, stored once per digest
    truth/<name>.npy          ground-truth images attached from outside (see :meth:`attach_ground_truth`)
    tap-stats.json            the tap's counters (forwarded, recorded, dropped, failed), refreshed live

Tables: ``captures`` (one row per Infer request or InferStream message: request id, deployment,
method, peer, arrival time, latency, gRPC status, wire dtype, shape, features file, logits and top-1
of the reply), ``heads`` (deployment x digest, with arch, split, shapes, preprocessing; the ONNX bytes
live in ``heads/``), ``deployments`` (the latest ``ListDeployments`` / ``GetHead`` facts per
deployment) and ``ground_truth`` (request id -> images file).

Retention: ``max_captures`` and/or ``max_bytes`` (bytes of feature records); the oldest captures
are dropped once a limit is passed, and a segment file is deleted when none of its records is
left (so disk use can exceed ``max_bytes`` by up to one segment, ``SEGMENT_BYTES``). Nothing is kept in memory, so a store survives
restarts: open the same folder again and every query sees what was written before.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.errors import SplitlabError

from .segment_file import SegmentFile

SCHEMA_VERSION = 1
DEFAULT_STORE = "captures"
SEGMENT_BYTES = 64 << 20
PROBE_BYTES = 64 << 10  # what check_writable writes and removes: a page of features, not a byte

_SCHEMA = """
CREATE TABLE IF NOT EXISTS captures (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL DEFAULT '',
    deployment_id TEXT NOT NULL DEFAULT '',
    method TEXT NOT NULL,
    peer TEXT NOT NULL DEFAULT '',
    time REAL NOT NULL,
    latency REAL,
    status INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    wire_dtype TEXT NOT NULL DEFAULT '',
    shape TEXT NOT NULL DEFAULT '[]',
    features_file TEXT,
    features_offset INTEGER NOT NULL DEFAULT 0,
    features_bytes INTEGER NOT NULL DEFAULT 0,
    scale REAL NOT NULL DEFAULT 0,
    logits BLOB,
    logits_shape TEXT NOT NULL DEFAULT '[]',
    top1 TEXT NOT NULL DEFAULT '[]',
    stream_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS captures_dep_time ON captures(deployment_id, time);
CREATE INDEX IF NOT EXISTS captures_time ON captures(time);
CREATE INDEX IF NOT EXISTS captures_request ON captures(request_id);
CREATE INDEX IF NOT EXISTS captures_file ON captures(features_file);
CREATE TABLE IF NOT EXISTS heads (
    deployment_id TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    claimed_sha256 TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT '',
    split TEXT NOT NULL DEFAULT '',
    input_shape TEXT NOT NULL DEFAULT '[]',
    feature_shape TEXT NOT NULL DEFAULT '[]',
    num_classes INTEGER NOT NULL DEFAULT 0,
    preprocessing TEXT NOT NULL DEFAULT '',
    dataset TEXT NOT NULL DEFAULT '',
    size INTEGER NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    times_seen INTEGER NOT NULL DEFAULT 1,
    peer TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (deployment_id, sha256)
);
CREATE TABLE IF NOT EXISTS deployments (
    deployment_id TEXT PRIMARY KEY,
    info TEXT NOT NULL,
    seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ground_truth (
    request_id TEXT PRIMARY KEY,
    file TEXT NOT NULL,
    count INTEGER NOT NULL,
    attached REAL NOT NULL
);
"""


@functools.lru_cache(maxsize=256)
def _npy_header_for(descr: str, shape: tuple) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": descr, "fortran_order": False, "shape": shape})
    return out.getvalue()


def _npy_header(array: np.ndarray) -> bytes:
    """The .npy header of a C-contiguous ``array`` (what ``np.save`` writes before the data)."""
    return _npy_header_for(np.lib.format.dtype_to_descr(array.dtype), array.shape)


def _unwritable(root: Path) -> str:
    """Why nothing can be written under ``root``, when the file system says so (SQLite only says
    "unable to open database file")."""
    try:
        fs = os.statvfs(root)
    except OSError:
        return ""
    if fs.f_flag & os.ST_RDONLY:
        return " (the file system is read-only)"
    if fs.f_bavail == 0:
        return " (no space left on the disk)"
    return ""


@dataclass
class Capture:
    """One recorded request (a batch of feature vectors) and what the cloud answered."""

    id: int
    request_id: str
    deployment_id: str
    method: str
    peer: str
    time: float
    latency: float | None
    status: int
    error: str
    wire_dtype: str
    shape: list[int]
    features_file: str | None
    features_bytes: int
    top1: list[int]
    stream_id: str
    logits: np.ndarray | None = field(default=None, repr=False)
    features_offset: int = field(default=0, repr=False)
    scale: float = field(default=0.0, repr=False)

    @property
    def batch(self) -> int:
        return int(self.shape[0]) if self.shape else 0

    @property
    def ok(self) -> bool:
        return self.status == 0 and self.features_file is not None


@dataclass
class Head:
    """A head seen in a GetHead reply (the ONNX bytes are read with :meth:`CaptureStore.head_bytes`)."""

    deployment_id: str
    sha256: str
    arch: str
    split: str
    input_shape: list[int]
    feature_shape: list[int]
    num_classes: int
    preprocessing: str
    dataset: str
    size: int
    first_seen: float
    last_seen: float
    times_seen: int


def default_store_dir() -> str:
    return os.environ.get("SPLITLAB_STORE") or DEFAULT_STORE


class CaptureStore:
    """Open (creating unless ``create=False``) the capture store in ``root``.

    One instance may be shared by threads (a lock serialises SQLite use). Several processes may
    open the same store: SQLite's WAL lets readers (``attacker captures``, ``invert --follow``) run
    while the tap writes. ``busy_timeout`` is how long a write waits for a lock held by another
    process before it fails (the tap keeps it short and counts the failure rather than stall).
    """

    def __init__(self, root: str | os.PathLike, max_captures: int | None = None,
                 max_bytes: int | None = None, create: bool = True, busy_timeout: float = 5.0):
        self.root = Path(root)
        if max_captures is not None and max_captures < 1:
            raise SplitlabError(f"max_captures must be at least 1, got {max_captures}")
        if max_bytes is not None and max_bytes < 1:
            raise SplitlabError(f"max_bytes must be at least 1, got {max_bytes}")
        self.max_captures = max_captures
        self.max_bytes = max_bytes
        index = self.root / "index.sqlite"
        if not create and not index.exists():
            raise SplitlabError(f"no capture store in {self.root} ({index} missing); run `attacker tap "
                                f"--store {self.root}` first, or pass --store / set SPLITLAB_STORE")
        if self.root.exists() and not self.root.is_dir():
            raise SplitlabError(f"capture store path {self.root} exists and is not a folder")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(index, timeout=busy_timeout, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise SplitlabError(f"capture store {self.root} has schema {version}, newer than this "
                                    f"splitlab ({SCHEMA_VERSION}); upgrade splitlab")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            raise SplitlabError(f"cannot open capture store {index}: {exc}{_unwritable(self.root)}") from exc
        self._seq = 0
        self._segment: tuple[str, SegmentFile] | None = None  # (relative path, open file) being appended
        self._stage = None  # the staging buffer every segment borrows in turn (see attacker/captures/segment_file.py)

    def close(self) -> None:
        with self._lock:
            self._close_segment()
            if self._stage is not None:
                self._stage.close()
                self._stage = None
            self._db.close()

    def _close_segment(self) -> None:
        if self._segment is not None:
            try:
                self._segment[1].close()
            except OSError:
                pass
            self._stage = self._segment[1].stage
            self._segment = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- writing -------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise what a write would raise now, keeping nothing: a write lock on the index (a store
        another process holds locked raises "database is locked") and a small file in the store's
        folder, flushed to disk and removed (a full disk or an unwritable folder raises). The tap's
        recorder asks this of a failing store while no traffic comes, so that its health recovers
        without waiting for the next capture."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")
            probe = self.root / f".probe-{os.getpid():x}"
            try:
                with open(probe, "wb") as f:
                    f.write(bytes(PROBE_BYTES))
                    f.flush()
                    os.fsync(f.fileno())
            finally:
                probe.unlink(missing_ok=True)

    def _new_name(self, when: float) -> str:
        self._seq += 1
        return f"{int(when * 1e6):x}-{os.getpid():x}-{self._seq:x}"

    def write_array(self, folder: str, array: np.ndarray, when: float) -> tuple[str, int]:
        """Save ``array`` as ``.npy`` under ``folder``; returns (path relative to root, bytes)."""
        hour = time.strftime("%Y%m%d-%H", time.gmtime(when))
        rel = f"{folder}/{hour}/{self._new_name(when)}.npy"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(path, "wb") as fh:
                np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return rel, path.stat().st_size

    def _append(self, arrays: list[np.ndarray], when: float) -> list[tuple[str, int, int]]:
        """Append each array as one .npy record to the current segment: (file, offset, size) each."""
        hour = time.strftime("%Y%m%d-%H", time.gmtime(when))
        seg = self._segment
        if seg is not None and (not seg[0].startswith(f"arrays/{hour}/") or seg[1].tell() >= SEGMENT_BYTES):
            self._close_segment()
        if self._segment is None:
            rel = f"arrays/{hour}/{self._new_name(when)}.npys"
            (self.root / rel).parent.mkdir(parents=True, exist_ok=True)
            self._segment = (rel, SegmentFile(self.root / rel, stage=self._stage))
        rel, segment = self._segment
        out = []
        try:
            for array in arrays:
                offset, size = segment.append([_npy_header(array), array])
                out.append((rel, offset, size))
            segment.flush()
        except BaseException:
            self._close_segment()  # a partial record is harmless (nothing points at it); start afresh
            raise
        return out

    def add_captures(self, rows: list[dict]) -> list[int]:
        """Insert capture rows (dicts; ``features`` the raw wire array or None) in one transaction.

        Feature records are appended to the current segment first; if the transaction then fails
        they are left unreferenced (and go with their segment) and the exception propagates (the
        tap counts it). Applies retention afterwards.
        """
        with self._lock:
            feats = [(i, row["features"]) for i, row in enumerate(rows) if row.get("features") is not None]
            where = dict(zip((i for i, _ in feats), self._append([np.ascontiguousarray(a) for _, a in feats],
                                                                  rows[0]["time"]))) if feats else {}
            records = []
            for i, row in enumerate(rows):
                rel, offset, size = where.get(i, (None, 0, 0))
                logits = row.get("logits")
                records.append((
                    row.get("request_id", ""), row.get("deployment_id", ""), row["method"],
                    row.get("peer", ""), row["time"], row.get("latency"), int(row.get("status", 0)),
                    row.get("error", ""), row.get("wire_dtype", ""),
                    json.dumps([int(s) for s in row.get("shape", [])]), rel, offset, size,
                    float(row.get("scale", 0.0)),
                    None if logits is None else np.ascontiguousarray(logits, "<f4").tobytes(),
                    json.dumps([] if logits is None else list(logits.shape)),
                    json.dumps([int(v) for v in row.get("top1", [])]), row.get("stream_id", "")))
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = []
                for rec in records:
                    cur = self._db.execute(
                        "INSERT INTO captures (request_id, deployment_id, method, peer, time, latency, status,"
                        " error, wire_dtype, shape, features_file, features_offset, features_bytes, scale, logits,"
                        " logits_shape, top1, stream_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rec)
                    ids.append(cur.lastrowid)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self.apply_retention()
        return ids

    def add_head(self, reply_fields: dict, onnx_bytes: bytes, when: float, peer: str = "") -> str:
        """Record a GetHead payload; the ONNX bytes are written once per digest. Returns the digest."""
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        path = self.root / "heads" / f"{digest}.onnx"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_bytes(onnx_bytes)
            os.replace(tmp, path)
        f = reply_fields
        with self._lock:
            self._db.execute(
                "INSERT INTO heads (deployment_id, sha256, claimed_sha256, arch, split, input_shape,"
                " feature_shape, num_classes, preprocessing, dataset, size, first_seen, last_seen, peer)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(deployment_id, sha256) DO UPDATE SET"
                " last_seen=excluded.last_seen, times_seen=times_seen+1",
                (f.get("deployment_id", ""), digest, f.get("sha256", ""), f.get("arch", ""),
                 f.get("split", ""), json.dumps(list(f.get("input_shape", []))),
                 json.dumps(list(f.get("feature_shape", []))), int(f.get("num_classes", 0)),
                 f.get("preprocessing", ""), f.get("dataset", ""), len(onnx_bytes), when, when, peer))
        return digest

    def touch_head(self, deployment_id: str, sha256: str, when: float) -> bool:
        """A GetHead answered ``not_modified`` (no bytes): note the sighting of a head already stored."""
        with self._lock:
            cur = self._db.execute("UPDATE heads SET last_seen=?, times_seen=times_seen+1 WHERE deployment_id=?"
                                   " AND sha256=?", (when, deployment_id, sha256))
        return cur.rowcount > 0

    def add_deployment_info(self, infos: list[dict], when: float) -> None:
        """Upsert what ``ListDeployments`` said about each deployment."""
        with self._lock:
            self._db.executemany(
                "INSERT INTO deployments (deployment_id, info, seen) VALUES (?,?,?) ON CONFLICT(deployment_id)"
                " DO UPDATE SET info=excluded.info, seen=excluded.seen",
                [(i["deployment_id"], json.dumps(i, sort_keys=True), when) for i in infos])

    def attach_ground_truth(self, request_id: str, images: np.ndarray) -> None:
        """Attach the private inputs of one request (N, C, H, W floats in [0, 1], or uint8 N, H, W, C).

        Only an experimenter who controls the edge knows these; the tap never sees them. They are
        used for side-by-side grids and PSNR/SSIM. Attaching again replaces the previous images.
        """
        imgs = normalise_images(images)
        rel, _ = self.write_array("truth", imgs, time.time())
        with self._lock:
            old = self._db.execute("SELECT file FROM ground_truth WHERE request_id=?", (request_id,)).fetchone()
            self._db.execute("INSERT OR REPLACE INTO ground_truth (request_id, file, count, attached)"
                             " VALUES (?,?,?,?)", (request_id, rel, len(imgs), time.time()))
        if old:
            (self.root / old[0]).unlink(missing_ok=True)

    def apply_retention(self) -> int:
        """Drop the oldest captures past ``max_captures`` / ``max_bytes``; returns how many went."""
        if self.max_captures is None and self.max_bytes is None:
            return 0
        with self._lock:
            count, total = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(features_bytes), 0) FROM captures").fetchone()
            victims: list[tuple[int, str | None]] = []
            if self.max_captures is not None and count > self.max_captures:
                victims = self._db.execute("SELECT id, features_file, features_bytes FROM captures ORDER BY id"
                                           " LIMIT ?", (count - self.max_captures,)).fetchall()
                total -= sum(v[2] for v in victims)
            if self.max_bytes is not None and total > self.max_bytes:
                last = victims[-1][0] if victims else 0
                for row in self._db.execute("SELECT id, features_file, features_bytes FROM captures"
                                            " WHERE id > ? ORDER BY id", (last,)):
                    if total <= self.max_bytes:
                        break
                    victims.append(row)
                    total -= row[2]
            if not victims:
                return 0
            self._db.execute("DELETE FROM captures WHERE id <= ?", (victims[-1][0],))
            current = self._segment[0] if self._segment else None
            for rel in {v[1] for v in victims if v[1]}:
                if rel != current and self._db.execute("SELECT 1 FROM captures WHERE features_file=? LIMIT 1",
                                                        (rel,)).fetchone() is None:
                    (self.root / rel).unlink(missing_ok=True)
        return len(victims)

    # --- reading -------------------------------------------------------------------------------
    def captures(self, deployment: str | None = None, since: float | None = None,
                 until: float | None = None, last: int | None = None, ids: list[int] | None = None,
                 request_id: str | None = None, after_id: int | None = None, ok_only: bool = False,
                 with_logits: bool = False) -> list[Capture]:
        """Captures matching every given filter, oldest first (``last``: the newest N of them)."""
        where, args = [], []
        if deployment is not None:
            where.append("deployment_id = ?"); args.append(deployment)
        if since is not None:
            where.append("time >= ?"); args.append(since)
        if until is not None:
            where.append("time <= ?"); args.append(until)
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})"); args.extend(int(i) for i in ids)
        if request_id is not None:
            where.append("request_id = ?"); args.append(request_id)
        if after_id is not None:
            where.append("id > ?"); args.append(after_id)
        if ok_only:
            where.append("status = 0 AND features_file IS NOT NULL")
        cols = ("id, request_id, deployment_id, method, peer, time, latency, status, error, wire_dtype,"
                " shape, features_file, features_bytes, top1, stream_id, logits, logits_shape, features_offset, scale")
        sql = f"SELECT {cols} FROM captures" + (f" WHERE {' AND '.join(where)}" if where else "")
        if last is not None:
            if last < 1:
                raise SplitlabError(f"--last must be at least 1, got {last}")
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT {int(last)}) ORDER BY id"
        else:
            sql += " ORDER BY id"
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        out = []
        for r in rows:
            logits = None
            if with_logits and r[15] is not None:
                logits = np.frombuffer(r[15], "<f4").reshape(json.loads(r[16]))
            out.append(Capture(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], json.loads(r[10]),
                               r[11], r[12], json.loads(r[13]), r[14], logits, r[17], r[18]))
        return out

    def count(self, deployment: str | None = None) -> int:
        with self._lock:
            if deployment is None:
                return self._db.execute("SELECT COUNT(*) FROM captures").fetchone()[0]
            return self._db.execute("SELECT COUNT(*) FROM captures WHERE deployment_id=?",
                                    (deployment,)).fetchone()[0]

    def total_bytes(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(features_bytes), 0) FROM captures").fetchone()[0]

    def deployment_ids(self) -> list[str]:
        """Every deployment seen in a capture, a head download or a ListDeployments reply."""
        with self._lock:
            rows = self._db.execute("SELECT deployment_id FROM captures UNION SELECT deployment_id FROM heads"
                                    " UNION SELECT deployment_id FROM deployments").fetchall()
        return sorted(r[0] for r in rows if r[0])

    def deployment_info(self, deployment: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT info FROM deployments WHERE deployment_id=?", (deployment,)).fetchone()
        return json.loads(row[0]) if row else None

    def raw_features(self, capture: Capture) -> np.ndarray:
        """The captured feature batch as it was on the wire (see the module docstring)."""
        if capture.features_file is None:
            raise SplitlabError(f"capture {capture.id} has no features ({capture.error or 'not recorded'})")
        path = self.root / capture.features_file
        try:
            with open(path, "rb") as fh:
                fh.seek(capture.features_offset)
                return np.load(fh, allow_pickle=False)
        except FileNotFoundError:
            raise SplitlabError(f"capture {capture.id}'s features file {path} is missing "
                                "(dropped by retention?)") from None
        except (ValueError, OSError, EOFError) as exc:
            raise SplitlabError(f"capture {capture.id}'s features record in {path} is unreadable: {exc}") from exc

    def features(self, capture: Capture) -> np.ndarray:
        """The captured feature batch as float32 (batch x feature shape), decoded from the wire dtype."""
        from protos import wire

        raw = self.raw_features(capture)
        code = wire.WIRE_DTYPES.get(capture.wire_dtype, wire.WIRE_DTYPES["float32"])
        return np.ascontiguousarray(wire.to_float32(raw, code, capture.scale), dtype=np.float32)

    def heads(self, deployment: str | None = None) -> list[Head]:
        """Heads seen, newest sighting first."""
        sql = ("SELECT deployment_id, sha256, arch, split, input_shape, feature_shape, num_classes,"
               " preprocessing, dataset, size, first_seen, last_seen, times_seen FROM heads")
        args: tuple = ()
        if deployment is not None:
            sql += " WHERE deployment_id = ?"
            args = (deployment,)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY last_seen DESC", args).fetchall()
        return [Head(r[0], r[1], r[2], r[3], json.loads(r[4]), json.loads(r[5]), r[6], r[7], r[8], r[9],
                     r[10], r[11], r[12]) for r in rows]

    def head_bytes(self, sha256: str) -> bytes:
        path = self.root / "heads" / f"{sha256}.onnx"
        if not path.exists():
            raise SplitlabError(f"head {sha256} is missing from {path.parent}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise SplitlabError(f"head file {path} is corrupt (digest mismatch)")
        return data

    def ground_truth(self, request_id: str) -> np.ndarray | None:
        """Attached images for ``request_id`` (N, C, H, W float32 in [0, 1]), or None."""
        with self._lock:
            row = self._db.execute("SELECT file FROM ground_truth WHERE request_id=?", (request_id,)).fetchone()
        if not row or not (self.root / row[0]).exists():
            return None
        return np.load(self.root / row[0], allow_pickle=False)


def normalise_images(images: np.ndarray) -> np.ndarray:
    """Images as float32 (N, C, H, W) in [0, 1]: accepts uint8 (N, H, W, C) / (N, C, H, W) or floats."""
    imgs = np.asarray(images)
    if imgs.ndim == 3:
        imgs = imgs[:, None]
    if imgs.ndim != 4:
        raise SplitlabError(f"ground-truth images must be 3-D or 4-D, got shape {list(imgs.shape)}")
    if imgs.dtype == np.uint8:
        if imgs.shape[-1] in (1, 3) and imgs.shape[1] not in (1, 3):
            imgs = imgs.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(imgs, dtype=np.float32) / 255.0
    imgs = imgs.astype(np.float32)
    if imgs.shape[-1] in (1, 3) and imgs.shape[1] not in (1, 3):
        imgs = imgs.transpose(0, 3, 1, 2)
    if imgs.size and (imgs.min() < -1e-6 or imgs.max() > 1 + 1e-6):
        raise SplitlabError("float ground-truth images must lie in [0, 1]")
    return np.ascontiguousarray(np.clip(imgs, 0, 1))


def load_ground_truth_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an ``.npz`` of ground truth: ``request_ids`` (one per image) and ``images``.

    Images of one request appear in the order of its batch; the result maps request id ->
    (N, C, H, W) float32 images in [0, 1].
    """
    p = Path(path)
    if not p.exists():
        raise SplitlabError(f"ground-truth file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "request_ids" not in z or "images" not in z:
                raise SplitlabError(f"ground-truth file {p} needs arrays 'request_ids' and 'images' "
                                    f"(has {', '.join(z.files) or 'none'})")
            rids = [str(r) for r in z["request_ids"]]
            images = normalise_images(z["images"])
    except (ValueError, OSError) as exc:
        raise SplitlabError(f"cannot read ground-truth file {p}: {exc}") from exc
    if len(rids) != len(images):
        raise SplitlabError(f"ground-truth file {p}: {len(rids)} request ids but {len(images)} images")
    out: dict[str, list[int]] = {}
    for i, rid in enumerate(rids):
        out.setdefault(rid, []).append(i)
    return {rid: images[idx] for rid, idx in out.items()}

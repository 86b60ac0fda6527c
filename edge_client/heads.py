"""The edge's heads: fetched from the cloud with ``GetHead`` and cached on disk by sha256.

Layout under ``$SPLITLAB_CACHE`` (default ``./.splitlab-cache``)::

    heads/<sha256>.onnx            the head, named by the digest of its bytes
    heads/<deployment_id>.json     the deployment's head metadata and current sha256

The edge sends the digest it holds (``known_sha256``); the cloud answers ``not_modified`` without
the bytes when it is still current, so a warm edge downloads nothing. (An eavesdropper on the
channel sees the head only when it is actually downloaded: use ``use_cache=False`` to force it.)
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from models import SplitlabError
from models.artifacts import validate_id

from .client import CloudClient


@dataclass
class Head:
    deployment_id: str
    onnx: bytes
    sha256: str
    meta: dict          # arch, split, dataset, input_shape, feature_shape, num_classes, preprocessing, dp_compatible
    from_cache: bool


def cache_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root or os.environ.get("SPLITLAB_CACHE") or ".splitlab-cache") / "heads"


class HeadCache:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = cache_root(root)

    def _blob(self, sha: str) -> Path:
        return self.root / f"{sha}.onnx"

    def _index(self, dep_id: str) -> Path:
        return self.root / f"{validate_id('deployment', dep_id)}.json"

    def cached(self, dep_id: str) -> Head | None:
        """The cached head of ``dep_id`` if its bytes are present and intact."""
        try:
            meta = json.loads(self._index(dep_id).read_text())
            data = self._blob(meta["sha256"]).read_bytes()
        except (OSError, ValueError, KeyError):
            return None
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            return None
        return Head(dep_id, data, meta["sha256"], meta, True)

    def fetch(self, client: CloudClient, dep_id: str, use_cache: bool = True) -> Head:
        """The current head of ``dep_id``; downloads only when the cached copy is missing or stale."""
        have = self.cached(dep_id) if use_cache else None
        reply = client.get_head(dep_id, known_sha256=have.sha256 if have else "")
        meta = {"deployment_id": reply.deployment_id, "arch": reply.arch, "split": reply.split,
                "dataset": reply.dataset, "input_shape": list(reply.input_shape),
                "feature_shape": list(reply.feature_shape), "num_classes": reply.num_classes,
                "preprocessing": reply.preprocessing, "sha256": reply.sha256, "dp_compatible": reply.dp_compatible}
        if reply.not_modified and have is not None and have.sha256 == reply.sha256:
            return Head(dep_id, have.onnx, have.sha256, meta, True)
        if reply.not_modified:  # the server thinks we have it, but we do not: ask again in full
            reply = client.get_head(dep_id)
        data = bytes(reply.onnx_model)
        digest = hashlib.sha256(data).hexdigest()
        if digest != reply.sha256:
            raise SplitlabError(f"head of {dep_id!r} arrived corrupted: sha256 {digest} but the cloud "
                                f"announced {reply.sha256}")
        self._write(self._blob(digest), data)
        self._write(self._index(dep_id), json.dumps(meta, indent=2, sort_keys=True).encode())
        return Head(dep_id, data, digest, meta, False)

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

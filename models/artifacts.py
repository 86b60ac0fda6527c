"""The artifact store: trained models and deployments as plain folders on disk.

Layout under the root (``$SPLITLAB_ARTIFACTS``, default ``./artifacts``)::

    models/<model_id>/weights.pt          state dict (torch.load(..., weights_only=True))
    models/<model_id>/manifest.json       arch, dataset, seed, options, members, accuracies ...
    deployments/<deployment_id>/head.onnx the edge's head (dynamic batch axis)
    deployments/<deployment_id>/tail.onnx the cloud's tail as ONNX (checked against torch on deploy)
    deployments/<deployment_id>/tail.pt   the cloud's tail, state dict of the tail layers only
    deployments/<deployment_id>/deployment.json

Ids are checked (letters, digits, ``.``, ``_``, ``-``; no ``/`` or ``..``), folders are written
to a temporary name and renamed into place, and nothing existing is overwritten unless asked.
torch is imported only to save or load weights: a cloud serving ``tail.onnx`` reads its
deployments through this store without ever loading torch (over 600 MiB resident).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SplitlabError

if TYPE_CHECKING:
    import torch

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def validate_id(kind: str, value: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.match(value) or ".." in value:
        raise SplitlabError(
            f"invalid {kind} id {value!r}: use 1-128 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit, without '/' or '..'")
    return value


def deployment_id_for(model_id: str, split: str, suffix: str = "") -> str:
    return f"{model_id}--{split}{suffix}"


class ArtifactStore:
    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root or os.environ.get("SPLITLAB_ARTIFACTS", "artifacts"))

    # --- paths ---------------------------------------------------------------------------------
    def model_dir(self, model_id: str) -> Path:
        return self.root / "models" / validate_id("model", model_id)

    def deployment_dir(self, deployment_id: str) -> Path:
        return self.root / "deployments" / validate_id("deployment", deployment_id)

    def list_models(self) -> list[str]:
        return _list(self.root / "models", "manifest.json")

    def list_deployments(self) -> list[str]:
        return _list(self.root / "deployments", "deployment.json")

    # --- writing -------------------------------------------------------------------------------
    def write_folder(self, final: Path, files: dict[str, object], overwrite: bool = False) -> Path:
        """Write ``files`` (name -> bytes, dict for JSON, or a callable(path)) atomically as ``final``."""
        if final.exists() and not overwrite:
            raise SplitlabError(f"{final} already exists; pass --force to replace it")
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        try:
            for name, content in files.items():
                path = tmp / name
                if isinstance(content, dict):
                    path.write_text(json.dumps(content, indent=2, sort_keys=True))
                elif isinstance(content, bytes):
                    path.write_bytes(content)
                else:
                    content(path)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def save_model(self, model_id: str, state_dict: dict, manifest: dict, overwrite: bool = False) -> Path:
        import torch

        return self.write_folder(self.model_dir(model_id), {
            "weights.pt": lambda p: torch.save(state_dict, p),
            "manifest.json": manifest,
        }, overwrite)

    # --- reading -------------------------------------------------------------------------------
    def read_json(self, folder: Path, name: str) -> dict:
        path = folder / name
        if not path.exists():
            kind = "model" if name == "manifest.json" else "deployment"
            raise SplitlabError(f"no {kind} {folder.name!r} in {folder.parent} ({path} missing)")
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise SplitlabError(f"{path} is corrupt: {exc}") from exc

    def manifest(self, model_id: str) -> dict:
        return self.read_json(self.model_dir(model_id), "manifest.json")

    def deployment(self, deployment_id: str) -> dict:
        return self.read_json(self.deployment_dir(deployment_id), "deployment.json")

    def load_state_dict(self, path: Path) -> dict:
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError as exc:
            raise SplitlabError(f"checkpoint {path} is missing") from exc
        except Exception as exc:  # torch raises many types for a damaged file
            raise SplitlabError(f"checkpoint {path} is corrupt or not a state dict: {exc}") from exc
        if not isinstance(state, dict):
            raise SplitlabError(f"checkpoint {path} holds {type(state).__name__}, not a state dict")
        return state


def load_into(module: torch.nn.Module, state: dict, source: Path) -> None:
    """Load ``state`` into ``module`` strictly, turning a mismatch into a clear error."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SplitlabError(f"checkpoint {source} does not match the architecture: "
                            f"{str(exc).splitlines()[0]} ...") from exc


def _list(folder: Path, marker: str) -> list[str]:
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / marker).is_file())

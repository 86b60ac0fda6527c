"""Build helper for deploy/Dockerfile: pyproject.toml's pins as requirement files, and a torch check.

    python requirements.py split pyproject.toml OUT_DIR
        writes OUT_DIR/torch.txt (the torch and torchvision pins, installed first from the PyTorch
        index of the chosen variant) and OUT_DIR/requirements.txt (every runtime dependency,
        torch included, so that pip resolves torch's own dependencies from PyPI).
    python requirements.py check-torch VARIANT
        exits non-zero unless the installed torch is the VARIANT build (``2.14.1+cpu`` for ``cpu``;
        for ``pypi``, whatever build PyPI has, e.g. ``2.14.1+cu130``: it is only reported).

pyproject.toml stays the only place the versions are written. Standard library only.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

TORCH_PACKAGES = ("torch", "torchvision")
# The TORCH_VARIANT meaning "torch from PyPI, not from a PyTorch index" (deploy/Dockerfile).
PYPI = "pypi"


def _name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    if not match:
        raise SystemExit(f"cannot read a package name from requirement {requirement!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def split(pyproject: Path, out: Path) -> int:
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    torch = [d for d in deps if _name(d) in TORCH_PACKAGES]
    if {_name(d) for d in torch} != set(TORCH_PACKAGES):
        raise SystemExit(f"{pyproject} must pin {' and '.join(TORCH_PACKAGES)}; found {torch}")
    unpinned = [d for d in deps if "==" not in d]
    if unpinned:
        raise SystemExit(f"{pyproject}: the image wants exact pins, these are not: {unpinned}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "torch.txt").write_text("\n".join(torch) + "\n")
    (out / "requirements.txt").write_text("\n".join(deps) + "\n")
    print(f"{len(torch)} torch pins, {len(deps)} requirements -> {out}")
    return 0


def check_torch(variant: str) -> int:
    import torch

    version = torch.__version__
    # PyPI's build labels itself too (2.14.1+cu130 on Linux x86_64): with `pypi`, any label will do.
    if variant != PYPI and not version.endswith(f"+{variant}"):
        print(f"error: installed torch {version} is not the {variant!r} build "
              f"(expected a version ending in +{variant})", file=sys.stderr)
        return 1
    print(f"torch {version} (CUDA {torch.version.cuda or 'none'})")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "split":
        return split(Path(argv[1]), Path(argv[2]))
    if len(argv) == 2 and argv[0] == "check-torch":
        return check_torch(argv[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Shared fixtures: real datasets from ../shared/datasets, a small trained model, a temp store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("SPLITLAB_DATA", str(ROOT.parent / "shared" / "datasets"))
os.environ.setdefault("SPLITLAB_THREADS", "1")

try:
    import torch  # noqa: E402
except ModuleNotFoundError:  # tests/oldest_python.sh runs the tap's torch-free tests without torch
    pass
else:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return Path(os.environ["SPLITLAB_DATA"])


@pytest.fixture(scope="session")
def lenet_digits(tmp_path_factory):
    """lenet5 trained briefly on digits (full scheme), stored and deployed at conv1 and relu2."""
    from models.artifacts import ArtifactStore
    from models.deploy import deploy
    from models.training import TrainOptions, train

    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    opts = TrainOptions(arch="lenet5", dataset="digits", epochs=8, scheme="full", seed=0)
    model, manifest = train(opts, progress=False)
    manifest["model_id"] = "lenet5-digits"
    store.save_model("lenet5-digits", model.state_dict(), manifest)
    for split in ("conv1", "relu2"):
        deploy(store, "lenet5-digits", split)
    return store


def private_copy(store, tmp_path_factory):
    """A copy of a session store for a module that deploys into it: what one module deploys must
    not show up in another's listings, nor collide with its deployment ids."""
    import shutil

    from models.artifacts import ArtifactStore

    root = tmp_path_factory.mktemp("artifacts-copy")
    shutil.copytree(store.root, root, dirs_exist_ok=True)
    return ArtifactStore(root)


def pytest_configure(config):
    config.addinivalue_line("markers", "system(path, package): needs a system package (tests/system_prereqs.py)")


def pytest_runtest_setup(item):
    """Skip (fail under CI) a test marked ``system`` whose package is missing, before its fixtures."""
    from system_prereqs import missing_prerequisite

    for mark in item.iter_markers("system"):
        missing = missing_prerequisite(*mark.args)
        if missing:
            (pytest.fail if missing[0] == "fail" else pytest.skip)(missing[1])

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


def quick_models(suite: str) -> dict:
    """The models ``benchmarks/configs/<suite>-quick.yaml`` trains, as its suite builds their options
    (first trial's seed): role ("target", and "evaluator" where the config has one) -> TrainOptions."""
    import yaml

    from benchmarks.suites import load_suite
    from models.training import TrainOptions

    config = yaml.safe_load((ROOT / "benchmarks" / "configs" / f"{suite}-quick.yaml").read_text())
    trial = load_suite(suite).trials(config)[0]
    target = trial.target
    roles = {"target": target, **({"evaluator": target["evaluator"]} if "evaluator" in target else {})}
    return {role: TrainOptions(arch=m["arch"], dataset=target["dataset"], **{**m["options"], "seed": trial.seed})
            for role, m in roles.items()}


def quick_model_id(suite: str, role: str = "target") -> str:
    """The id a quick config's model is stored under (where its suite looks it up)."""
    from models.training import default_model_id

    return default_model_id(quick_models(suite)[role])


def trained_quick_models(tmp_path_factory, suite: str):
    """A store holding the quick config's models, trained here under their default ids."""
    from models.artifacts import ArtifactStore
    from models.reference import obtain_models

    store = ArtifactStore(tmp_path_factory.mktemp(f"{suite}-models"))
    obtain_models(store, list(quick_models(suite).values()), progress=False)
    return store


@pytest.fixture(scope="session")
def face_models(tmp_path_factory):
    """face-mlp and its evaluator (lenet5) on the AT&T faces, trained once per session as
    ``face_inversion-quick.yaml`` says: the suite's test finds them in its private copy instead of
    training them, and the lab's classifier-inversion test attacks the same target by model id."""
    return trained_quick_models(tmp_path_factory, "face_inversion")


@pytest.fixture(scope="session")
def utkface_models(tmp_path_factory):
    """aia-lenet (gender) on UTKFace, trained once per session as ``attribute-quick.yaml`` says:
    shared by the attribute suite's test, its live test and the lab's attribute test."""
    return trained_quick_models(tmp_path_factory, "attribute")


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

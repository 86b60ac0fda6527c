"""Training, the artifact store and ONNX deployment, through the library and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from models import ArtifactStore, SplitlabError, load_dataset, to_tensor
from models.deploy import TOLERANCE, deploy
from models.loading import load_model, load_tail
from models.onnx_runtime import head_session
from models.training import TrainOptions, train


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "models", *args], capture_output=True, text=True, cwd=cwd)


def test_trained_model_learns_and_records_membership(lenet_digits):
    store = lenet_digits
    model, manifest = load_model(store, "lenet5-digits")
    assert manifest["test_accuracy"] > 0.8  # 10 classes: chance is 0.1
    assert manifest["members"]["split"] == "train" and manifest["non_members"]["split"] == "test"
    assert len(manifest["members"]["indices"]) == 1438
    state = torch.load(store.model_dir("lenet5-digits") / "weights.pt", weights_only=True)
    assert set(state) == set(model.state_dict())


def test_training_is_deterministic_for_a_seed():
    ds = load_dataset("digits")
    opts = TrainOptions(arch="lenet5", dataset="digits", epochs=1, limit=200, seed=5)
    a, ma = train(opts, progress=False, dataset=ds)
    b, mb = train(opts, progress=False, dataset=ds)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert ma["members"] == mb["members"] and len(ma["members"]["indices"]) == 200
    # privacy scheme: members and non-members are disjoint parts of the train set
    assert not set(ma["members"]["indices"]) & set(ma["non_members"]["indices"])


def test_eval_each_epoch_records_the_accuracy_curve():
    ds = load_dataset("digits")
    opts = TrainOptions(arch="lenet5", dataset="digits", epochs=3, seed=1, eval_each_epoch=True)
    model, manifest = train(opts, progress=False, dataset=ds)
    curve = manifest["epoch_test_accuracy"]
    assert len(curve) == 3 and curve[-1] == manifest["test_accuracy"]
    assert curve[-1] > curve[0]  # it learns
    assert all(p.is_contiguous() for p in model.parameters())  # stored in the default layout
    plain, m2 = train(TrainOptions(arch="lenet5", dataset="digits", epochs=1, limit=50), progress=False, dataset=ds)
    assert m2["epoch_test_accuracy"] is None


def test_deployment_head_matches_and_tail_completes_the_model(lenet_digits):
    store = lenet_digits
    model, _ = load_model(store, "lenet5-digits")
    ds = load_dataset("digits")
    x = to_tensor(ds.x_test[:16])
    for split in ("conv1", "relu2"):
        dep = store.deployment(f"lenet5-digits--{split}")
        assert dep["onnx_max_abs_diff"] <= TOLERANCE
        sess = head_session(str(store.deployment_dir(dep["deployment_id"]) / "head.onnx"))
        feats = sess.run(None, {"input": x.numpy()})[0]
        assert feats.shape == (16, *dep["feature_shape"])
        # a dynamic batch axis: a batch of one works too
        assert sess.run(None, {"input": x[:1].numpy()})[0].shape[0] == 1
        tail, _ = load_tail(store, dep["deployment_id"])
        with torch.no_grad():
            diff = (tail(torch.from_numpy(feats)) - model(x)).abs().max().item()
        assert diff <= 1e-4
        # the tail file holds only tail layers: the cloud never gets the head's weights
        tail_state = torch.load(store.deployment_dir(dep["deployment_id"]) / "tail.pt", weights_only=True)
        assert not any(k.startswith("conv1.") for k in tail_state)


def test_deploy_refuses_mismatching_onnx(lenet_digits, monkeypatch):
    store = lenet_digits
    monkeypatch.setattr("models.deploy.check_head", lambda *a, **k: 0.5)
    with pytest.raises(SplitlabError, match="deployment refused"):
        deploy(store, "lenet5-digits", "pool1")
    assert not store.deployment_dir("lenet5-digits--pool1").exists()


def test_existing_artifacts_are_not_overwritten(lenet_digits):
    with pytest.raises(SplitlabError, match="already exists"):
        deploy(lenet_digits, "lenet5-digits", "conv1")


@pytest.mark.parametrize("bad", ["../evil", "a/b", "..", "", "x" * 200, ".hidden"])
def test_ids_with_path_tricks_are_rejected(tmp_path, bad):
    store = ArtifactStore(tmp_path)
    with pytest.raises(SplitlabError, match="invalid model id"):
        store.model_dir(bad)


def test_corrupt_and_mismatched_checkpoints(lenet_digits, tmp_path):
    import shutil

    store = ArtifactStore(tmp_path)
    shutil.copytree(lenet_digits.model_dir("lenet5-digits"), store.model_dir("m"))
    (store.model_dir("m") / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SplitlabError, match="corrupt"):
        load_model(store, "m")
    manifest = json.loads((store.model_dir("m") / "manifest.json").read_text())
    manifest["arch"] = "he-cifar-cnn"
    shutil.copy(lenet_digits.model_dir("lenet5-digits") / "weights.pt", store.model_dir("m") / "weights.pt")
    (store.model_dir("m") / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SplitlabError, match="does not match"):
        load_model(store, "m")


def test_cli_train_deploy_and_errors(tmp_path):
    art = str(tmp_path / "art")
    r = run_cli("train", "--arch", "lenet5", "--dataset", "digits", "--epochs", "1", "--limit", "100",
                "--artifacts", art)
    assert r.returncode == 0, r.stderr
    assert "test accuracy" in r.stdout
    r = run_cli("deploy", "lenet5-digits-s0", "--split", "pool2", "--artifacts", art)
    assert r.returncode == 0, r.stderr
    assert "lenet5-digits-s0--pool2" in r.stdout
    for args, message in [
        (("train", "--arch", "nope", "--dataset", "digits"), "unknown architecture"),
        (("train", "--arch", "lenet5", "--dataset", "nope"), "unknown dataset"),
        (("train", "--arch", "lenet5", "--dataset", "digits", "--id", "../x"), "invalid model id"),
        (("deploy", "lenet5-digits-s0", "--split", "conv7"), "unknown split point"),
        (("deploy", "missing-model", "--split", "conv1"), "no model 'missing-model'"),
    ]:
        r = run_cli(*args, "--artifacts", art)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    assert sorted(p.name for p in (tmp_path / "art" / "models").iterdir()) == ["lenet5-digits-s0"]


def test_cli_list_prints_feature_shapes():
    r = run_cli("list", "--arch", "he-cifar-cnn")
    assert r.returncode == 0
    assert "relu22" in r.stdout and "128x16x16" in r.stdout

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
from models.training import TrainOptions, default_model_id, train


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
    model_id = default_model_id(TrainOptions("lenet5", "digits", epochs=1, limit=100))
    assert model_id.startswith("lenet5-digits-s0-") and f"model {model_id} ->" in r.stdout
    r = run_cli("deploy", model_id, "--split", "pool2", "--artifacts", art)
    assert r.returncode == 0, r.stderr
    assert f"{model_id}--pool2" in r.stdout
    for args, message in [
        (("train", "--arch", "nope", "--dataset", "digits"), "unknown architecture"),
        (("train", "--arch", "lenet5", "--dataset", "nope"), "unknown dataset"),
        (("train", "--arch", "lenet5", "--dataset", "digits", "--id", "../x"), "invalid model id"),
        (("deploy", model_id, "--split", "conv7"), "unknown split point"),
        (("deploy", "missing-model", "--split", "conv1"), "no model 'missing-model'"),
    ]:
        r = run_cli(*args, "--artifacts", art)
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr)
    assert sorted(p.name for p in (tmp_path / "art" / "models").iterdir()) == [model_id]


def test_cli_list_prints_feature_shapes():
    r = run_cli("list", "--arch", "he-cifar-cnn")
    assert r.returncode == 0
    assert "relu22" in r.stdout and "128x16x16" in r.stdout


def test_default_ids_cover_every_option_that_changes_the_weights():
    base = TrainOptions("lenet5", "digits", seed=2)
    assert default_model_id(base) == "lenet5-digits-s2"  # the all-defaults spec keeps its plain id
    changed = [dict(epochs=6), dict(limit=10), dict(batch_size=64), dict(lr=2e-3), dict(augment=True),
               dict(scheme="full"), dict(members=[1, 2]), dict(dropout=0.5), dict(weight_decay=1e-4)]
    ids = {default_model_id(TrainOptions("lenet5", "digits", seed=2, **kw)) for kw in changed}
    assert len(ids) == len(changed) and default_model_id(base) not in ids
    assert all(i.startswith("lenet5-digits-s2-") for i in ids)
    assert "lenet5-digits-s2-do0.5-" in " ".join(ids)  # defences stay readable
    # what does not change the weights does not change the id; equal values spelled apart neither
    assert default_model_id(TrainOptions("lenet5", "digits", seed=2, eval_each_epoch=True, device="cuda")) \
        == "lenet5-digits-s2"
    assert default_model_id(TrainOptions("lenet5", "digits", members=[3, 1], dropout=0)) \
        == default_model_id(TrainOptions("lenet5", "digits", members=(1, 3), dropout=0.0))


def test_explicit_members_and_their_errors():
    ds = load_dataset("digits")
    members = list(range(0, 1438, 7))
    model, manifest = train(TrainOptions("lenet5", "digits", epochs=1, members=members), progress=False, dataset=ds)
    assert manifest["members"]["indices"] == members
    assert sorted(manifest["non_members"]["indices"] + members) == list(range(1438))
    assert manifest["options"]["members"].startswith(f"{len(members)}:")  # a digest, not the list twice
    for bad, message in [([5, 5], "distinct"), ([-1], ">= 0"), ([], "empty"), ([1438], "outside digits")]:
        with pytest.raises(SplitlabError, match=message):
            train(TrainOptions("lenet5", "digits", epochs=1, members=bad), progress=False, dataset=ds)


def test_cli_members_device_and_a_changed_spec_under_an_existing_id(tmp_path):
    art = str(tmp_path / "art")
    (tmp_path / "members.txt").write_text("0, 5, 9\n12 40")
    r = run_cli("train", "--arch", "lenet5", "--dataset", "digits", "--epochs", "1", "--members",
                str(tmp_path / "members.txt"), "--device", "cpu", "--id", "m", "--artifacts", art)
    assert r.returncode == 0, r.stderr
    assert "on cpu" in r.stdout
    assert ArtifactStore(art).manifest("m")["members"]["indices"] == [0, 5, 9, 12, 40]
    r = run_cli("train", "--arch", "lenet5", "--dataset", "digits", "--epochs", "1", "--members",
                str(tmp_path / "members.txt"), "--id", "m", "--reuse", "--artifacts", art)
    assert r.returncode == 0 and "already stored with these options; reusing it" in r.stdout, r.stderr
    r = run_cli("train", "--arch", "lenet5", "--dataset", "digits", "--epochs", "2", "--id", "m", "--reuse",
                "--artifacts", art)
    assert r.returncode == 2 and "trained with other options" in r.stderr and "epochs: stored 1, asked 2" in r.stderr


def test_resolve_device(monkeypatch, capsys):
    from models.env import resolve_device

    monkeypatch.setenv("SPLITLAB_DEVICE", "tpu")
    with pytest.raises(SplitlabError, match="SPLITLAB_DEVICE must be one of cpu, cuda, got 'tpu'"):
        resolve_device(None)
    assert resolve_device("cpu") == "cpu"  # a flag wins over the environment
    with pytest.raises(SplitlabError, match="device must be one of cpu, cuda, got 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setenv("SPLITLAB_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None, "models train") == "cpu"
    assert "models train: CUDA was requested (--device cuda) but is not available to torch" in capsys.readouterr().err


def test_augment_batch_crops_and_flips_each_image_as_drawn():
    from models.training import augment_batch

    x = torch.rand(16, 3, 10, 12)
    got = augment_batch(x, torch.Generator().manual_seed(4), pad=3)
    gen = torch.Generator().manual_seed(4)  # the same draws, applied one image at a time
    offs, flips = torch.randint(0, 7, (16, 2), generator=gen), torch.rand(16, generator=gen) < 0.5
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    for i in range(16):
        crop = padded[i, :, offs[i, 0]:offs[i, 0] + 10, offs[i, 1]:offs[i, 1] + 12]
        assert torch.equal(got[i], crop.flip(-1) if flips[i] else crop)
    assert flips.any() and not flips.all()

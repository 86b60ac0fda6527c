"""Deployments of a DP-SGD-trained mia-cnn (stored as its GroupNorm variant, ``dp_compatible``).

The edge's ``--runtime torch``: deployed, served and run by the edge with both runtimes, it gives
the full model's predictions, with and without feature defences; a plain (BatchNorm) mia-cnn
too; heads it cannot rebuild are refused saying why. The query-free attacker's ``same`` shadow
head is built like the target's head, GroupNorm included (issue 16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edge_client.client import CloudClient
from edge_client.edge import Edge, preprocess
from edge_client.heads import HeadCache
from edge_client.runtime import make_runner
from attacker.attacks.inversion.knowledge import QueryFreeKnowledge
from attacker.attacks.inversion.queryfree import QueryFreeAttack, QueryFreeParams
from fixtures_grpc import running_server
from models import ArtifactStore, SplitlabError, load_dataset, to_tensor
from models.deploy import deploy, export_onnx
from models.loading import load_model
from models.split import split_model
from models.training import TrainOptions, train

RUNTIMES = ("onnxruntime", "torch")
DEEPER, NOISY = "mia-dp--relu1--deeper-pool2", "mia-dp--relu2--gaussian0.5"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def store(digits, tmp_path_factory):
    """mia-cnn trained one short epoch on digits with DP-SGD (eps 8) and without, deployed at relu2
    (after both normalisation layers), plus the DP model with two feature defences."""
    store = ArtifactStore(tmp_path_factory.mktemp("mia-dp"))
    for model_id, dp in (("mia-dp", 8.0), ("mia-plain", None)):
        opts = TrainOptions(arch="mia-cnn", dataset="digits", epochs=1, limit=128, seed=0, dp_epsilon=dp)
        model, manifest = train(opts, progress=False, dataset=digits)
        manifest["model_id"] = model_id
        store.save_model(model_id, model.state_dict(), manifest)
        deploy(store, model_id, "relu2")
    deeper = deploy(store, "mia-dp", "relu1", defence="deeper:to=pool2")["deployment_id"]
    noisy = deploy(store, "mia-dp", "relu2", defence="gaussian:sigma=0.5")["deployment_id"]
    assert (deeper, noisy) == (DEEPER, NOISY)
    return store


@pytest.fixture(scope="module")
def server(store):
    with running_server(store.root) as srv:
        yield srv


def _full(store, model_id, x):
    with torch.no_grad():
        return load_model(store, model_id)[0](torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("dep_id, model_id", [("mia-dp--relu2", "mia-dp"), (DEEPER, "mia-dp"),
                                              ("mia-plain--relu2", "mia-plain")])
def test_both_edge_runtimes_give_the_full_models_predictions(store, server, digits, tmp_path, dep_id, model_id):
    x = preprocess(digits.x_test[:32])
    full = _full(store, model_id, x)
    with CloudClient(server.address) as client:
        for runtime in RUNTIMES:
            edge = Edge(client, HeadCache(tmp_path / runtime), runtime=runtime)
            result = edge.infer(dep_id, x)
            assert edge.deployment(dep_id).head.meta["dp_compatible"] is (model_id == "mia-dp")
            assert edge.deployment(dep_id).runner.runtime == runtime
            np.testing.assert_allclose(result.logits, full, atol=1e-3)
            assert np.array_equal(np.asarray(result.top1), full.argmax(1)), runtime


def test_a_noise_defence_on_a_dp_head_runs_in_torch_as_specified(store, server, digits, tmp_path):
    dep_id = NOISY
    x = preprocess(digits.x_test[:32])
    head, _ = split_model(load_model(store, "mia-dp")[0], "relu2")
    with torch.no_grad():
        clean = head(torch.from_numpy(x)).numpy()
    with CloudClient(server.address) as client:
        for runtime in RUNTIMES:
            edge = Edge(client, HeadCache(tmp_path / runtime), runtime=runtime)
            noise = edge.features(dep_id, x).features - clean
            assert abs(noise.std() - 0.5) < 0.02 and abs(noise.mean()) < 0.02, runtime
            if runtime == "torch":
                assert "feature defence gaussian0.5 rebuilt in torch" in edge.deployment(dep_id).runner.description


def test_a_dp_head_without_dp_compatible_is_refused_naming_it(store):
    rec = store.deployment("mia-dp--relu2")
    onnx_bytes = (store.deployment_dir("mia-dp--relu2") / "head.onnx").read_bytes()
    with pytest.raises(SplitlabError, match="GroupNorm layers .* does not say dp_compatible"):
        make_runner(onnx_bytes, dict(rec, dp_compatible=False), runtime="torch")


def test_a_head_exported_with_folded_normalisation_is_refused_saying_redeploy(store, digits):
    rec = store.deployment("mia-plain--relu2")
    head, _ = split_model(load_model(store, "mia-plain")[0], "relu2")
    folded = export_onnx(head, tuple(rec["input_shape"]))  # as heads were exported before
    assert make_runner(folded, rec)(to_tensor(digits.x_test[:2]).numpy()).features.shape[1:] == tuple(
        rec["feature_shape"])
    with pytest.raises(SplitlabError, match="folded into other constants: deploy it again"):
        make_runner(folded, rec, runtime="torch")


def test_the_queryfree_same_shadow_of_a_dp_target_is_built_like_its_head(store, digits):
    x, y = to_tensor(digits.x_train[:64]), torch.as_tensor(digits.y_train[:64])
    knowledge = QueryFreeKnowledge.from_store(store, "mia-dp--relu2", x, y)
    assert knowledge.dp_compatible is True
    attack = QueryFreeAttack(QueryFreeParams(epochs=1, batch_size=32, progress=False)).fit(knowledge)
    target, _ = split_model(load_model(store, "mia-dp")[0], "relu2")
    assert [type(m) for m in attack.shadow.modules()][1:] == [type(m) for m in target.modules()][1:]
    assert isinstance(attack.shadow.bn1, torch.nn.GroupNorm)
    attack.shadow.load_state_dict(target.state_dict(), strict=True)  # the same parameters, named alike
    with torch.no_grad():
        assert torch.equal(attack.shadow.eval()(x), target(x))
    plain = QueryFreeKnowledge.from_store(store, "mia-plain--relu2", x, y)
    assert plain.dp_compatible is False

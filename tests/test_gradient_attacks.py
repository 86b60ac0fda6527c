"""Gradient inversion (issue 18): DLG, iDLG and Inverting Gradients recover a private MNIST image
from a client's update far above a blank image; iDLG's labels; Hungarian matching; partial
gradients; what the knowledge holds; parameters; the CUDA fallback; LPIPS from given weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacker.attacks import AttackParameterError, KnowledgeSource, create, keys, knowledge_for
from attacker.attacks.gradient import (GradientKnowledge, client_gradients, observed_parameters, parameter_groups,
                                       recover_labels)
from attacker.attacks.gradient.scoring import LPIPS_NOT_COMPUTED, match, score
from attacker.metrics import image_metrics
from models import build_model
from models.artifacts import ArtifactStore
from models.datasets import load_dataset, to_tensor


@pytest.fixture(scope="module")
def mnist():
    ds = load_dataset("mnist")
    return to_tensor(ds.x_test[:8]), torch.as_tensor(ds.y_test[:8])


def _model(arch: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(arch, 10, (1, 28, 28)).eval()


def _blank_psnr(images) -> float:
    return image_metrics(torch.zeros_like(images), images)["psnr_mean"]


def test_registry_names_the_three_attacks():
    assert {"gradient/dlg", "gradient/idlg", "gradient/inverting_gradients"} <= set(keys("gradient"))


@pytest.mark.parametrize("name, params", [
    ("gradient/dlg", {"iterations": 40}),                                     # labels optimised jointly
    ("gradient/inverting_gradients", {"iterations": 60, "tv_weight": 0.0}),
])
def test_batch_one_image_is_recovered_far_above_a_blank_image(mnist, name, params):
    """face-mlp (the zoo's Sigmoid MLP) on MNIST: its first layer's gradient holds the image. (On the
    ReLU / max-pool lenet5 the attacks reach far less: see benchmarks/results/gradient/report.md.)"""
    images, labels = mnist
    model = _model("face-mlp")
    knowledge = GradientKnowledge(model, (1, 28, 28), 10, batch_size=1, arch="face-mlp")
    update = client_gradients(model, images[:1], labels[:1], knowledge.observed)
    recon, rec_labels = create(name, **params).fit(knowledge).reconstruct(update)
    result = score(recon, images[:1], rec_labels, labels[:1])
    assert result["psnr_mean"] > _blank_psnr(images[:1]) + 10
    assert result["label_accuracy"] == 1.0
    assert recon.shape == (1, 1, 28, 28) and recon.min() >= 0 and recon.max() <= 1


def test_idlg_labels_are_exact_at_batch_one(mnist):
    images, labels = mnist
    model = _model("lenet5")
    for i in range(8):
        update = client_gradients(model, images[i:i + 1], labels[i:i + 1])
        assert recover_labels(model, update, 1, 10).tolist() == [int(labels[i])]
    # the weight alone (bias not observed) gives it too
    update = client_gradients(model, images[:1], labels[:1], ["fc3.weight"])
    assert recover_labels(model, update, 1, 10).tolist() == [int(labels[0])]


def test_idlg_recovers_the_label_set_of_a_batch(mnist):
    images, labels = mnist
    model = _model("lenet5")
    batch = [0, 1, 2, 3]  # digits 7, 2, 1, 0: all different
    update = client_gradients(model, images[batch], labels[batch])
    assert recover_labels(model, update, 4, 10).tolist() == sorted(labels[batch].tolist())


def test_hungarian_matching_undoes_a_permutation(mnist):
    images, _ = mnist
    perm = torch.tensor([3, 0, 6, 1, 7, 2, 5, 4])
    noisy = (images[perm] + 0.05 * torch.randn_like(images)).clamp(0, 1)
    order = match(noisy, images)
    assert torch.equal(perm[torch.as_tensor(order)], torch.arange(8))
    result = score(noisy, images)
    assert result["psnr_mean"] > 20 and result["lpips"] is None and result["lpips_note"] == LPIPS_NOT_COMPUTED


def test_layer_groups_map_onto_the_zoo_and_refuse_what_an_arch_lacks():
    lenet = parameter_groups(_model("lenet5"))
    assert lenet["stem"] == ["conv1.weight", "conv1.bias"] and lenet["head"] == ["fc3.weight", "fc3.bias"]
    assert lenet["attention"] == lenet["mlp"] == lenet["norm"] == []
    resnet = build_model("resnet18", 10, (3, 32, 32))
    groups = parameter_groups(resnet)
    assert all(n.startswith("stem.") for n in groups["stem"]) and groups["head"] == ["fc.weight", "fc.bias"]
    assert "layer1.0.bn1.weight" in groups["norm"] and "stem.1.weight" in groups["norm"]
    assert observed_parameters(resnet, "stem,head") == tuple(groups["stem"] + groups["head"])
    assert observed_parameters(resnet, ["layer4.1", "fc.weight"])[-1] == "fc.weight"
    with pytest.raises(AttackParameterError, match="lenet5 has no 'attention' layers; its groups are all, stem, head"):
        GradientKnowledge(_model("lenet5"), (1, 28, 28), 10, observe="attention", arch="lenet5")
    with pytest.raises(AttackParameterError, match="'convolution' is no group"):
        observed_parameters(_model("lenet5"), "convolution")


def test_partial_gradients_only_the_observed_ones_are_accepted(mnist):
    images, labels = mnist
    model = _model("lenet5")
    knowledge = GradientKnowledge(model, (1, 28, 28), 10, observe="stem", arch="lenet5")
    full = client_gradients(model, images[:1], labels[:1])
    attack = create("gradient/inverting_gradients", iterations=2).fit(knowledge)
    with pytest.raises(AttackParameterError, match="not observed by this attacker: conv2.bias"):
        attack.reconstruct(full)
    partial = client_gradients(model, images[:1], labels[:1], knowledge.observed)
    _, rec_labels = attack.reconstruct(partial)  # no classifier gradient: labels optimised ('auto')
    assert attack.last_stats["labels_from"] == "optimised" and rec_labels.shape == (1,)
    with pytest.raises(AttackParameterError, match="does not observe"):
        create("gradient/idlg", iterations=2).fit(knowledge).reconstruct(partial)


def test_knowledge_is_the_servers_model_never_the_batch(tmp_path, mnist):
    images, _ = mnist
    store = ArtifactStore(tmp_path)
    model = _model("lenet5")
    store.save_model("lenet5-g", model.state_dict(),
                     {"model_id": "lenet5-g", "arch": "lenet5", "num_classes": 10, "input_shape": [1, 28, 28]})
    source = KnowledgeSource(record={"model_id": "lenet5-g"}, artifacts=store, aux_images=images)
    knowledge = knowledge_for("gradient/idlg", source, observe="head", batch_size=2)
    assert knowledge.observed == ("fc3.weight", "fc3.bias") and knowledge.batch_size == 2
    held = [v for v in vars(knowledge).values() if isinstance(v, (torch.Tensor, np.ndarray))]
    assert held == []  # the model, shapes, names and the batch size: no images anywhere
    for a, b in zip(knowledge.model.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    (tmp_path / "deployments" / "lenet5-g--fc1").mkdir(parents=True)  # a deployment names the model it cut
    (tmp_path / "deployments" / "lenet5-g--fc1" / "deployment.json").write_text('{"model_id": "lenet5-g"}')
    by_deployment = knowledge_for("gradient/dlg", KnowledgeSource("lenet5-g--fc1", artifacts=store))
    assert by_deployment.observed == observed_parameters(model) and "lenet5-g" in by_deployment.origin
    with pytest.raises(Exception, match="artifact store"):
        knowledge_for("gradient/dlg", KnowledgeSource(record={"model_id": "lenet5-g"}))


def test_parameters_are_validated_up_front():
    with pytest.raises(AttackParameterError, match="iterations"):
        create("gradient/dlg", iterations=0)
    with pytest.raises(AttackParameterError, match="labels"):
        create("gradient/inverting_gradients", labels="guess")
    with pytest.raises(AttackParameterError, match="labels of iDLG"):
        create("gradient/idlg", labels="optimise")
    with pytest.raises(AttackParameterError, match="cosine"):
        create("gradient/inverting_gradients", cosine="angular")
    with pytest.raises(AttackParameterError, match="device"):
        create("gradient/dlg", device="tpu")
    with pytest.raises(AttackParameterError, match="batch_size"):
        GradientKnowledge(_model("lenet5"), (1, 28, 28), 10, batch_size=0)


def test_cuda_falls_back_to_the_cpu_with_the_message(monkeypatch, capsys, mnist):
    images, labels = mnist
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    model = _model("lenet5")
    attack = create("gradient/idlg", iterations=2, device="cuda").fit(GradientKnowledge(model, (1, 28, 28), 10))
    assert attack.device == "cpu" and "cuda" in capsys.readouterr().err.lower()
    assert attack.model is model  # already on the CPU: not copied
    recon, _ = attack.reconstruct(client_gradients(model, images[:1], labels[:1]))
    assert recon.device.type == "cpu"


def test_lpips_is_computed_from_given_weights_only(tmp_path, mnist):
    from torchvision.models import alexnet

    from attacker.lpips import CHANNELS, LPIPS

    images, _ = mnist
    torch.manual_seed(0)
    torch.save(alexnet(weights=None).features.state_dict(), tmp_path / "alexnet.pth")  # the conv part only
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate(CHANNELS)},
               tmp_path / "alex.pth")
    metric = LPIPS(tmp_path / "alex.pth", tmp_path / "alexnet.pth")
    same = metric(images[:2], images[:2])
    assert torch.allclose(same, torch.zeros(2), atol=1e-6)
    assert (metric(images[:2], images[2:4]) > 0).all()
    result = score(images[2:4], images[:2], lpips=metric)
    assert result["lpips_mean"] > 0 and "lpips_note" not in result


def test_suite_expands_batch_sizes_and_groups_and_refuses_bad_configs():
    import yaml

    from benchmarks.suites import gradient
    from models.errors import SplitlabError

    config = yaml.safe_load(open("benchmarks/configs/gradient.yaml"))
    trials = gradient.trials(config)
    assert len(trials) == 3 * 4 * 4 * 2  # targets x batch sizes x attacks x seeds
    assert {t.target["batch_size"] for t in trials} == {1, 2, 4, 8}
    assert trials[0].label == "lenet5-mnist b1 all dlg seed 0"
    with pytest.raises(SplitlabError, match="gradient attacks"):
        gradient.trials({**config, "attacks": [{"name": "membership/lira"}]})
    with pytest.raises(SplitlabError, match="batch_sizes"):
        gradient.trials({**config, "batch_sizes": [0]})
    with pytest.raises(AttackParameterError, match="tv_weight"):
        gradient.trials({**config, "attacks": [{"name": "gradient/inverting_gradients", "params": {"tv_weight": -1}}]})

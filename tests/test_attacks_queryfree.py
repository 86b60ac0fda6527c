"""Query-free inversion: a shadow head trained through the frozen tail recovers more than a blank image."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import baseline_psnr, mnist_target

from attacker.attacks import QueryFreeAttack, QueryFreeKnowledge, QueryFreeParams, create, shadow_head
from attacker.attacks.inversion.queryfree import DIFFERENT_SHADOWS
from attacker.metrics import image_metrics
from models import build_model, feature_shapes, split_model


def _knowledge(split, n=6000):
    t = mnist_target()
    head, tail = split_model(t.model, split)
    with torch.no_grad():
        feats = head(t.x_eval)
    kn = QueryFreeKnowledge(tail, t.x_train[:n], t.y_train[:n], (1, 28, 28), tuple(feats.shape[1:]), "lenet5", split, 10)
    return t, kn, feats


@pytest.mark.parametrize("shadow", ["same", "different"])
def test_shadow_head_inversion_beats_blank_and_mean(shadow):
    t, kn, feats = _knowledge("conv1")
    attack = QueryFreeAttack(shadow=shadow, epochs=3, progress=False,
                             whitebox=dict(iterations=200, progress=False)).fit(kn)
    assert attack.shadow_accuracy > 0.5  # the shadow head really drives the frozen tail
    rec = attack.reconstruct(feats)
    assert rec.shape == t.x_eval.shape and rec.min() >= 0 and rec.max() <= 1
    m = image_metrics(rec, t.x_eval)
    blank = image_metrics(torch.zeros_like(t.x_eval), t.x_eval)["psnr_mean"]
    assert m["psnr_mean"] > max(blank, baseline_psnr(t)) + 2.5, m
    # the tail is frozen: training the shadow must not have changed it
    assert all(not p.requires_grad for p in kn.tail.parameters())


@pytest.mark.parametrize("arch, split", list(DIFFERENT_SHADOWS))
def test_shadow_structures_fit_the_tail(arch, split):
    model = build_model(arch)
    shape = model_input = (1, 28, 28) if arch == "lenet5" else (3, 32, 32)
    want = feature_shapes(model, model_input)[split]
    for structure in ("same", "different"):
        shadow = shadow_head(arch, split, structure, shape, 10)
        assert tuple(shadow(torch.zeros(1, *shape)).shape[1:]) == want
    same = shadow_head(arch, split, "same", shape, 10)
    target_head = split_model(model, split)[0]
    assert type(same[0]) is type(target_head[0])


def test_from_store_gives_the_cloud_view(lenet_digits):
    x = torch.rand(20, 1, 28, 28)
    kn = QueryFreeKnowledge.from_store(lenet_digits, "lenet5-digits--relu2", x, torch.arange(20) % 10)
    assert (kn.arch, kn.split, kn.feature_shape, kn.num_classes) == ("lenet5", "relu2", (16, 8, 8), 10)
    assert not hasattr(kn, "head")


@pytest.mark.parametrize("bad, name", [
    (dict(shadow="bigger"), "shadow"), (dict(epochs=0), "epochs"), (dict(lr=-1), "lr"),
    (dict(whitebox=dict(iterations=0)), "iterations"), (dict(whitebox=dict(typo=1)), "typo"),
    (dict(whitebox=3), "whitebox"),
])
def test_bad_parameters_are_clear_errors(bad, name):
    with pytest.raises(ValueError, match=name):
        create("queryfree", **bad)


def test_unknown_different_shadow_and_bad_labels_are_clear_errors():
    t, kn, _ = _knowledge("pool1", n=20)
    with pytest.raises(ValueError, match="different"):
        QueryFreeAttack(QueryFreeParams(shadow="different", epochs=1, progress=False)).fit(kn)
    with pytest.raises(ValueError, match="aux_labels"):
        QueryFreeKnowledge(kn.tail, t.x_train[:5], t.y_train[:4], (1, 28, 28), (8, 12, 12))

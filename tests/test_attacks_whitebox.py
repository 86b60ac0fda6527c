"""White-box rMLE: recovers MNIST from conv1 features, batched == one at a time, ONNX head == torch head."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import baseline_psnr, mnist_target

from attacker.attacks import (SPLIT_DEFAULTS, AttackParameterError, WhiteBoxAttack, WhiteBoxKnowledge,
                              WhiteBoxParams, create, total_variation)
from attacker.attacks.inversion.heads import head_from_onnx
from attacker.metrics import image_metrics
from models import SplitlabError, split_model
from models.deploy import export_head_onnx


def _features(split):
    t = mnist_target()
    head, _ = split_model(t.model, split)
    with torch.no_grad():
        return t, head, head(t.x_eval)


def test_conv1_reaches_25db_in_a_test_budget():
    t, head, feats = _features("conv1")
    attack = WhiteBoxAttack(iterations=150, progress=False).fit(WhiteBoxKnowledge(head, (1, 28, 28), "conv1"))
    rec = attack.reconstruct(feats.numpy())  # ndarray features are accepted
    assert rec.shape == t.x_eval.shape and rec.dtype == torch.float32
    assert rec.min() >= 0 and rec.max() <= 1
    m = image_metrics(rec, t.x_eval)
    assert m["psnr_mean"] > 25 and m["ssim_mean"] > 0.9, m
    assert attack.resolved.tv_weight == SPLIT_DEFAULTS["conv1"]["tv_weight"]


def test_relu2_beats_the_mean_image_clearly():
    t, head, feats = _features("relu2")
    attack = WhiteBoxAttack(iterations=300, lr=0.1, progress=False).fit(WhiteBoxKnowledge(head, (1, 28, 28), "relu2"))
    m = image_metrics(attack.reconstruct(feats), t.x_eval)
    assert m["psnr_mean"] > baseline_psnr(t) + 6, m


def test_batched_follows_the_one_at_a_time_trajectories():
    t, head, feats = _features("relu2")
    kn = WhiteBoxKnowledge(head, (1, 28, 28), "relu2")
    params = WhiteBoxParams(iterations=60, lr=0.05, tv_weight=0.05, progress=False)
    batched = WhiteBoxAttack(params).fit(kn).reconstruct(feats[:4])
    single = torch.cat([WhiteBoxAttack(params).fit(kn).reconstruct(feats[i:i + 1]) for i in range(4)])
    chunked = WhiteBoxAttack(params.replace(batch_size=3)).fit(kn).reconstruct(feats[:4])
    assert torch.allclose(batched, single, atol=1e-4)
    assert torch.allclose(batched, chunked, atol=1e-4)


def test_sigmoid_parametrisation_and_paper_loss_run_in_range():
    t, head, feats = _features("conv1")
    kn = WhiteBoxKnowledge(head, (1, 28, 28), "conv1")
    for params in (dict(parametrization="sigmoid"), dict(feature_loss="mean", lr_decay="none", tv_weight=1.0)):
        rec = WhiteBoxAttack(iterations=100, progress=False, **params).fit(kn).reconstruct(feats[:2])
        assert rec.min() >= 0 and rec.max() <= 1
        assert image_metrics(rec, t.x_eval[:2])["psnr_mean"] > baseline_psnr(t)


def test_onnx_head_equals_torch_head():
    t, head, feats = _features("relu2")
    onnx_bytes = export_head_onnx(head, (1, 28, 28))
    kn_onnx = WhiteBoxKnowledge.from_onnx(onnx_bytes)
    assert kn_onnx.source == "onnx2torch"
    assert kn_onnx.input_shape == (1, 28, 28) and kn_onnx.feature_shape == (16, 8, 8)
    params = WhiteBoxParams(iterations=80, lr=0.05, tv_weight=0.0, progress=False)
    a = WhiteBoxAttack(params).fit(WhiteBoxKnowledge(head, (1, 28, 28))).reconstruct(feats[:3])
    b = WhiteBoxAttack(params).fit(kn_onnx).reconstruct(feats[:3])
    assert torch.allclose(a, b, atol=1e-5)


def test_rebuild_fallback_when_onnx2torch_fails(monkeypatch):
    t, head, feats = _features("conv1")
    onnx_bytes = export_head_onnx(head, (1, 28, 28))
    import attacker.attacks.inversion.heads as heads

    def broken(_):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(heads, "_via_onnx2torch", broken)
    record = {"arch": "lenet5", "split": "conv1", "num_classes": 10, "input_shape": [1, 28, 28]}
    module, method = head_from_onnx(onnx_bytes, record)
    assert method == "rebuild"
    with torch.no_grad():
        assert torch.allclose(module(t.x_eval), feats, atol=1e-5)
    with pytest.raises(SplitlabError, match="deployment record"):
        head_from_onnx(onnx_bytes)  # no record: nothing to fall back on


def test_from_store_reads_the_deployed_head(lenet_digits):
    kn = WhiteBoxKnowledge.from_store(lenet_digits, "lenet5-digits--relu2")
    assert kn.split == "relu2" and kn.feature_shape == (16, 8, 8) and kn.input_shape == (1, 28, 28)
    with pytest.raises(SplitlabError):
        WhiteBoxKnowledge.from_onnx(b"not an onnx model")


def test_total_variation_is_zero_on_flat_and_positive_on_edges():
    flat = torch.full((2, 1, 8, 8), 0.3)
    edge = flat.clone()
    edge[1, :, :, 4:] = 1.0
    tv = total_variation(edge)
    assert total_variation(flat).abs().max() == 0 and tv[0] == 0 and tv[1] > 0


@pytest.mark.parametrize("bad, name", [
    (dict(iterations=0), "iterations"), (dict(lr=-1.0), "lr"), (dict(tv_weight=float("nan")), "tv_weight"),
    (dict(feature_loss="l1"), "feature_loss"), (dict(parametrization="tanh"), "parametrization"),
    (dict(init=1.5), "init"), (dict(batch_size=0), "batch_size"), (dict(lr_decay="step"), "lr_decay"),
    (dict(iterations=True), "iterations"), (dict(bogus=1), "bogus"),
])
def test_bad_parameters_are_clear_errors(bad, name):
    with pytest.raises(ValueError, match=name):
        create("whitebox", **bad)
    with pytest.raises(AttackParameterError, match=name):
        WhiteBoxAttack(**bad)


def test_bad_features_and_order_of_calls():
    t, head, feats = _features("conv1")
    attack = WhiteBoxAttack(iterations=5, progress=False)
    with pytest.raises(SplitlabError, match="fit"):
        attack.reconstruct(feats)
    attack.fit(WhiteBoxKnowledge(head, (1, 28, 28), "conv1"))
    with pytest.raises(ValueError, match="shape"):
        attack.reconstruct(feats[:, :4])
    nan = feats.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attack.reconstruct(nan)
    with pytest.raises(ValueError, match="WhiteBoxKnowledge"):
        WhiteBoxAttack(iterations=5).fit(object())

"""Black-box inversion: an inverse network trained on queried pairs beats the mean image clearly."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import baseline_psnr, mnist_target

from attacker.attacks import (BlackBoxAttack, BlackBoxKnowledge, BlackBoxParams, create, head_query,
                              inverse_network, noise_images, onnx_query)
from attacker.attacks.inversion.blackbox import fit_linear_skip, fits_in_closed_form
from attacker.metrics import image_metrics
from models import split_model
from models.deploy import export_head_onnx


def test_same_set_inverse_net_beats_mean_image_at_conv1():
    t = mnist_target()
    head, _ = split_model(t.model, "conv1")
    aux = t.x_train[:2000]
    attack = BlackBoxAttack(epochs=2, width=32, progress=False)
    attack.fit(BlackBoxKnowledge(head_query(head), aux, (1, 28, 28), "same-set", "conv1"))
    assert attack.queries == len(aux) + 1  # one probe for the feature shape, then cached
    with torch.no_grad():
        rec = attack.reconstruct(head(t.x_eval))
    assert rec.shape == t.x_eval.shape and rec.min() >= 0 and rec.max() <= 1
    m = image_metrics(rec, t.x_eval)
    assert m["psnr_mean"] > baseline_psnr(t) + 6, m


def test_closed_form_skip_beats_the_trained_one_at_conv1():
    t = mnist_target()
    head, _ = split_model(t.model, "conv1")
    aux = t.x_train[:1000]
    scores = {}
    for fit in ("lstsq", "none"):
        attack = BlackBoxAttack(epochs=1, width=16, skip_fit=fit, progress=False)
        attack.fit(BlackBoxKnowledge(head_query(head), aux, (1, 28, 28), "same-set", "conv1"))
        with torch.no_grad():
            scores[fit] = image_metrics(attack.reconstruct(head(t.x_eval)), t.x_eval, psnr_cap=100)["psnr_mean"]
    assert attack.skip_mse is None  # "none": trained with the body
    assert scores["lstsq"] > 35 and scores["lstsq"] > scores["none"] + 5, scores


@pytest.mark.parametrize("skip", [torch.nn.Conv2d(6, 2, 3, padding=1), torch.nn.ConvTranspose2d(6, 2, 5)],
                         ids=["conv3x3", "transposed5x5"])
def test_least_squares_recovers_a_linear_map(skip):
    torch.manual_seed(0)
    feats = torch.randn(40, 6, 10, 10)
    with torch.no_grad():
        images = skip(feats)
    fresh = type(skip)(6, 2, skip.kernel_size, padding=skip.padding)
    assert fits_in_closed_form(fresh)
    mse = fit_linear_skip(fresh, feats, images, ridge=1e-9)
    assert mse < 1e-6
    assert torch.allclose(fresh.weight, skip.weight, atol=1e-4) and torch.allclose(fresh.bias, skip.bias, atol=1e-4)
    chosen = type(skip)(6, 2, skip.kernel_size, padding=skip.padding)
    assert fit_linear_skip(chosen, feats, images) < 1e-6  # ridge picked on held-out images
    assert not fits_in_closed_form(torch.nn.Conv2d(6, 2, 3, stride=2))
    with pytest.raises(ValueError, match="closed-form"):
        fit_linear_skip(torch.nn.Linear(6, 2), feats, images)


def test_onnx_queries_without_cache_also_learn():
    t = mnist_target()
    head, _ = split_model(t.model, "conv1")
    query = onnx_query(export_head_onnx(head, (1, 28, 28)))
    aux = t.x_train[:1000]
    attack = BlackBoxAttack(epochs=2, width=16, batch_size=32, lr=3e-3, max_cache_mb=0, progress=False)
    attack.fit(BlackBoxKnowledge(query, aux, (1, 28, 28), "same-distribution"))
    assert attack.queries == 1 + 2 * len(aux)  # every mini-batch queried again
    m = image_metrics(attack.reconstruct(query(t.x_eval)), t.x_eval)
    assert m["psnr_mean"] > baseline_psnr(t) + 2, m


@pytest.mark.parametrize("feature_shape, input_shape", [
    ((8, 24, 24), (1, 28, 28)), ((16, 8, 8), (1, 28, 28)), ((8, 12, 12), (1, 28, 28)), ((120,), (1, 28, 28)),
    ((64, 32, 32), (3, 32, 32)), ((128, 16, 16), (3, 32, 32)), ((128, 8, 8), (3, 32, 32)), ((512,), (3, 32, 32)),
])
def test_inverse_network_maps_features_to_images(feature_shape, input_shape):
    net = inverse_network(feature_shape, input_shape, width=8)
    assert net(torch.zeros(2, *feature_shape)).shape == (2, *input_shape)


def test_noise_images_are_images():
    x = noise_images(50, (3, 8, 8), seed=1)
    assert x.shape == (50, 3, 8, 8) and x.min() >= 0 and x.max() <= 1 and 0.2 < x.std() < 0.3
    assert torch.equal(x, noise_images(50, (3, 8, 8), seed=1))
    u = noise_images(5, (1, 4, 4), kind="uniform")
    assert u.min() >= 0 and u.max() <= 1
    with pytest.raises(ValueError, match="kind"):
        noise_images(5, (1, 4, 4), kind="pink")


@pytest.mark.parametrize("bad, name", [
    (dict(epochs=0), "epochs"), (dict(batch_size=-1), "batch_size"), (dict(lr=0), "lr"), (dict(width=0), "width"),
    (dict(weight_decay=-1e-4), "weight_decay"), (dict(max_cache_mb=-1), "max_cache_mb"), (dict(shadow="same"), "shadow"),
    (dict(skip_fit="svd"), "skip_fit"), (dict(lstsq_samples=0), "lstsq_samples"),
])
def test_bad_parameters_are_clear_errors(bad, name):
    with pytest.raises(ValueError, match=name):
        create("blackbox", **bad)


def test_bad_knowledge_is_a_clear_error():
    t = mnist_target()
    head, _ = split_model(t.model, "conv1")
    with pytest.raises(ValueError, match="aux_images"):
        BlackBoxKnowledge(head_query(head), t.x_train[:4] * 2, (1, 28, 28))
    with pytest.raises(ValueError, match="aux_images"):
        BlackBoxKnowledge(head_query(head), t.x_train[:4], (3, 28, 28))
    with pytest.raises(ValueError, match="setting"):
        BlackBoxKnowledge(head_query(head), t.x_train[:4], (1, 28, 28), "stolen")
    with pytest.raises(ValueError, match="query"):
        BlackBoxKnowledge("not callable", t.x_train[:4], (1, 28, 28))
    assert BlackBoxParams().epochs >= 1

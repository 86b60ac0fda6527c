"""Adaptive white-box inversion (issue 16): an attacker who knows the deployment's defence spec
optimises through it (noise: expectation over draws; dropout: the mask read off the captured zeros;
quantisation: straight-through). A defence counts only if it holds against that attacker."""

from __future__ import annotations

import pytest
import torch

from attacker.attacks import KnowledgeSource, create, knowledge_for
from attacker.attacks.base import AttackParameterError
from attacker.metrics import image_metrics
from models.datasets import load_dataset, to_tensor
from models.defences import features as fdef
from models.deploy import deploy
from models.onnx_runtime import head_session
from conftest import private_copy

MODEL = "lenet5-digits"


@pytest.fixture(scope="module")
def lenet_digits(lenet_digits, tmp_path_factory):
    """This module deploys defended heads: it gets its own copy of the shared store."""
    return private_copy(lenet_digits, tmp_path_factory)


@pytest.fixture(scope="module")
def images():
    return to_tensor(load_dataset("digits").x_test[:8])


def _psnr(store, dep, x, sent, adaptive: bool) -> float:
    attack = create("whitebox", iterations=150, progress=False, adaptive=adaptive, eot_samples=4)
    attack.fit(knowledge_for(attack, KnowledgeSource(dep, artifacts=store)))
    return image_metrics(attack.reconstruct(sent), x)["psnr_mean"]


def _sent(store, dep, x):
    return head_session(str(store.deployment_dir(dep) / "head.onnx")).run(None, {"input": x.numpy()})[0]


@pytest.fixture(scope="module")
def undefended_psnr(lenet_digits, images):
    dep = f"{MODEL}--conv1"
    return _psnr(lenet_digits, dep, images, _sent(lenet_digits, dep, images), adaptive=False)


@pytest.mark.parametrize("spec, gain", [("dropout:p=0.5", 10.0), ("quantize:bits=2", 1.0),
                                        ("gaussian:sigma=0.5", -0.5)])
def test_defence_lowers_naive_psnr_and_the_adaptive_attack_does_at_least_as_well(lenet_digits, images, spec, gain,
                                                                                 undefended_psnr):
    """Same 8 test images, conv1: the defended deployment's naive PSNR is well below the undefended
    one's; the adaptive attack gains where the defence is not zero-mean noise (dropout, rounding)
    and is no worse (within 0.5 dB) where it is (Gaussian: E||f+n-f0||^2 = ||f-f0||^2 + const)."""
    x, clean = images, undefended_psnr
    dep = deploy(lenet_digits, MODEL, "conv1", defence=spec, overwrite=True)["deployment_id"]
    sent = _sent(lenet_digits, dep, x)
    naive, adaptive = (_psnr(lenet_digits, dep, x, sent, a) for a in (False, True))
    assert naive < clean - 10, (clean, naive)
    assert adaptive >= naive + gain, (naive, adaptive)


def test_knowledge_carries_the_spec_and_a_head_that_draws_per_call(lenet_digits):
    dep = deploy(lenet_digits, MODEL, "conv1", defence="gaussian:sigma=0.5+quantize:bits=3",
                 overwrite=True)["deployment_id"]
    k = knowledge_for("whitebox", KnowledgeSource(dep, artifacts=lenet_digits))
    assert [d.type for d in k.defences] == ["gaussian", "quantize"]
    x = torch.rand(2, 1, 8, 8, requires_grad=True)
    a, b = k.defended_head(x), k.defended_head(x)
    assert not torch.equal(a, b)                      # fresh noise per call
    assert torch.equal(k.head(x), k.head(x))          # the naive head is deterministic
    a.sum().backward()                                # rounding passes gradients straight through
    assert x.grad is not None and x.grad.abs().sum() > 0
    clean = knowledge_for("whitebox", KnowledgeSource(f"{MODEL}--conv1", artifacts=lenet_digits))
    assert clean.defended_head is None and clean.defences == ()


def test_adaptive_against_an_undefended_deployment_is_the_naive_attack(lenet_digits, images):
    dep = f"{MODEL}--conv1"
    k = knowledge_for("whitebox", KnowledgeSource(dep, artifacts=lenet_digits))
    attack = create("whitebox", iterations=5, progress=False, adaptive=True).fit(k)
    assert attack.head is k.head and attack.samples == 1 and not attack.skip_zeros


@pytest.mark.parametrize("params, message", [({"adaptive": "yes"}, "adaptive"), ({"eot_samples": 0}, "eot_samples")])
def test_bad_adaptive_parameters_fail_up_front(params, message):
    with pytest.raises(AttackParameterError, match=message):
        create("whitebox", **params)


def test_straight_through_rounds_forward_and_passes_gradients_back():
    layer = fdef.StraightThrough(fdef.Quantise(4, 0.0, 3.0))
    x = torch.tensor([0.2, 1.4, 2.9, 5.0], requires_grad=True)
    y = layer(x)
    assert y.tolist() == [0.0, 1.0, 3.0, 3.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0]

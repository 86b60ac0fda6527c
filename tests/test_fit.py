"""models.fit: the one training loop (classification, regression, frozen parts, hooks) and its
vmapped form for many models, which must train what one-by-one training trains."""

import copy
import math

import pytest
import torch
from torch import nn

from models import SplitlabError, build_model, load_dataset, to_tensor
from models.fit import fit, fit_many


def data(n=96):
    ds = load_dataset("digits")
    return to_tensor(ds.x_train[:n]), torch.from_numpy(ds.y_train[:n])


def mlp(seed):
    """Small enough that the loop's tests take milliseconds."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10))


def state_gap(a: nn.Module, b: nn.Module) -> float:
    return max((a.state_dict()[k].float() - b.state_dict()[k].float()).abs().max().item() for k in a.state_dict())


def test_fit_learns_and_is_deterministic_for_a_seed():
    x, y = data()
    runs = []
    for seed in (3, 3, 4):
        model = mlp(0)
        result = fit(model, x, y, epochs=4, batch_size=16, lr=1e-2, seed=seed, progress=False)
        runs.append((model, result))
    (a, ra), (b, rb), (c, _) = runs
    assert state_gap(a, b) == 0.0
    assert state_gap(a, c) > 0  # the seed draws the example order
    assert len(ra.losses) == 4 and len(ra.epoch_seconds) == 4 and ra.steps == 24
    assert ra.losses[-1] < 0.7 * ra.losses[0]  # it learns
    assert not a.training  # ends in eval mode


def test_regression_loss_frozen_parameters_and_inputs_computed_per_batch():
    """The black-box attack's shape: features -> images, per-image sum of squares, a frozen part,
    features queried per batch instead of precomputed."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(64, 12, generator=g)
    mixing = torch.randn(12, 20, generator=g)
    features = images @ mixing
    losses = {}
    for how in ("tensor", "callable"):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 12))
        net[0].requires_grad_(False)
        frozen = net[0].weight.clone()
        inputs = features if how == "tensor" else (lambda idx: images[idx] @ mixing)
        result = fit(net, inputs, images, loss=lambda out, t: (out - t).pow(2).flatten(1).sum(1).mean(),
                     epochs=30, batch_size=16, lr=1e-2, seed=5, progress=False)
        assert torch.equal(net[0].weight, frozen)
        losses[how] = result.losses
    assert losses["tensor"] == losses["callable"]
    assert losses["tensor"][-1] < 0.2 * losses["tensor"][0]


def test_loss_through_a_frozen_tail():
    """The query-free attack's shape: train a head so that a fixed tail classifies its output."""
    x, y = data()
    full = mlp(0)
    fit(full, x, y, epochs=4, batch_size=32, lr=3e-3, progress=False)
    tail = copy.deepcopy(full[2:]).requires_grad_(False)
    tail_before = copy.deepcopy(tail.state_dict())
    shadow = mlp(9)[:2]
    result = fit(shadow, x, y, loss=lambda out, t: nn.functional.cross_entropy(tail(out), t), epochs=4,
                 batch_size=32, progress=False)
    assert all(torch.equal(tail_before[k], v) for k, v in tail.state_dict().items())
    assert result.losses[-1] < result.losses[0]


def test_hooks_zero_epochs_and_errors():
    x, y = data(40)
    model = mlp(0)
    before = copy.deepcopy(model.state_dict())
    steps, epochs = [], []
    result = fit(model, x, y, epochs=2, batch_size=16, progress=False,
                 on_step=lambda step, loss: steps.append((step, float(loss))),
                 on_epoch=lambda epoch, m: (epochs.append(epoch), m.eval()))
    assert [s for s, _ in steps] == [1, 2, 3, 4, 5, 6] and epochs == [1, 2]
    assert steps[-1][1] == pytest.approx(result.last_loss)
    stopped = fit(mlp(0), x, y, epochs=5, batch_size=16, progress=False, on_epoch=lambda epoch, m: epoch == 2)
    assert len(stopped.losses) == 2 and stopped.steps == 6  # True from on_epoch ends training there
    model.load_state_dict(before)
    nothing = fit(model, x, y, epochs=0, progress=False)
    assert nothing.steps == 0 and math.isnan(nothing.last_loss)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(SplitlabError, match="diverged"):
        fit(model, x, y, loss=lambda out, t: out.sum() * float("nan"), epochs=1, progress=False, desc="probe")
    with pytest.raises(SplitlabError, match="unknown loss 'hinge'"):
        fit(model, x, y, loss="hinge", epochs=1, progress=False)
    with pytest.raises(SplitlabError, match="39 inputs for 40 targets"):
        fit(model, x[:39], y, epochs=1, progress=False)
    with pytest.raises(SplitlabError, match="probe: nothing to train"):
        fit(model.requires_grad_(False), x, y, epochs=1, progress=False, desc="probe")


@pytest.mark.parametrize("arch", ["lenet5", "mia-cnn"])
def test_fit_many_trains_what_fit_trains(arch):
    """K models vmapped together = K models trained one by one (own subset, own seed)."""
    x, y = data(120)
    subsets = [torch.arange(0, 60), torch.arange(60, 120), torch.arange(30, 90)]
    seeds = [0, 1, 2]

    def build(k):
        torch.manual_seed(k)
        model = build_model(arch, 10, (1, 28, 28))
        # mia-cnn: a conv bias right before batch norm has a zero gradient up to rounding, which Adam
        # normalises into lr-sized steps in a random direction (in either path; batch norm cancels
        # the bias). Frozen, the comparison is exact, batch-norm buffers included.
        for name in ("conv1", "conv2") if arch == "mia-cnn" else ():
            getattr(model, name).bias.requires_grad_(False)
        return model

    together = [build(k) for k in seeds]
    apart = [copy.deepcopy(m) for m in together]
    results = fit_many(together, x, y, subsets, seeds, epochs=2, batch_size=16, progress=False)
    for m, single, subset, seed, res in zip(together, apart, subsets, seeds, results):
        one = fit(single, x[subset], y[subset], epochs=2, batch_size=16, seed=seed, progress=False)
        assert res.losses == pytest.approx(one.losses, rel=1e-4)
        with torch.no_grad():
            assert torch.allclose(m(x), single(x), atol=1e-4)
        assert state_gap(m, single) < 1e-3  # Adam divides tiny gradients by their size: rounding shows


def test_fit_many_refuses_unequal_subsets():
    x, y = data(40)
    with pytest.raises(SplitlabError, match="subsets of one size"):
        fit_many([mlp(0), mlp(1)], x, y, [torch.arange(10), torch.arange(12)], [0, 1], epochs=1,
                 progress=False)


def test_fit_many_with_dropout_and_augmentation_is_deterministic():
    """Dropout under vmap: each model its own masks (two identical models part), and the group's
    result is the same on every run when the global seed is."""
    from models.training import augment_batch

    x, y = data(48)

    def run():
        torch.manual_seed(0)
        models = [build_model("lenet5", 10, (1, 28, 28), dropout=0.5) for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        same = torch.arange(48)
        fit_many(models, x, y, [same, same], [5, 5], epochs=1, batch_size=16, augment=augment_batch,
                 progress=False)
        return models

    a, b = run(), run()
    assert state_gap(a[0], b[0]) == 0.0 and state_gap(a[1], b[1]) == 0.0
    assert state_gap(a[0], a[1]) > 0

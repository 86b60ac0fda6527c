"""How the membership attacks ask for their models: LiRA's K reference models and Shokri's shadows
in one ``obtain_models`` call (so CUDA can train them together), observed training on the resolved
device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacker.attacks.membership import LiRAAttack, MembershipKnowledge, ShokriAttack
from attacker.attacks.membership.knowledge import attacker_side
from attacker.attacks.membership.observations import train_observed
from models import load_dataset
from models.training import TrainOptions
from models.zoo import build_model

TARGET = TrainOptions(arch="lenet5", dataset="digits", epochs=2, batch_size=32, limit=40, seed=0)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def calls(digits, monkeypatch) -> list:
    """The spec lists ``models.reference.obtain_models`` is called with (it answers untrained models)."""
    seen = []

    def obtain_models(store, specs, device, progress=True, dataset=None, **_):
        seen.append(specs)
        return [(build_model("lenet5", 10, digits.input_shape), {}) for _ in specs]

    monkeypatch.setattr("models.reference.obtain_models", obtain_models)
    return seen


def _knowledge(digits, store) -> MembershipKnowledge:
    aux_x, aux_y, recipe = attacker_side(digits, TARGET, store, 200, "cpu")
    uniform = lambda x: np.full((len(x), 10), 0.1)  # noqa: E731 - the target's answers do not matter here
    return MembershipKnowledge(uniform, aux_x, aux_y, 10, digits.input_shape, recipe)


@pytest.mark.parametrize("online", [False, True])
def test_lira_asks_for_its_reference_models_in_one_call(digits, calls, online):
    k = _knowledge(digits, store="a store")
    attack = LiRAAttack(reference_models=4, online=online, shadow_size=30).fit(k)
    x, y = k.aux_x[:10], k.aux_y[:10]
    scores = attack.score((x, y))
    assert scores.shape == (10,) and np.isfinite(scores).all()
    assert len(calls) == 1 and len(calls[0]) == 4, [len(c) for c in calls]
    assert len({s.seed for s in calls[0]}) == 4 and all(len(s.members) == 30 for s in calls[0])
    # asked again, the recipe's models are in hand: no second call
    LiRAAttack(reference_models=4, online=online, shadow_size=30).fit(k).score((x, y))
    assert len(calls) == 1


def test_shokri_asks_for_its_shadow_models_in_one_call(digits, calls):
    k = _knowledge(digits, store="a store")
    ShokriAttack(shadow_models=3, shadow_size=30, epochs=5).fit(k)
    assert [len(c) for c in calls] == [3] and [s.seed for s in calls[0]] == [0, 1, 2]


def test_train_observed_resolves_its_device(digits, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = TrainOptions(arch="lenet5", dataset="digits", epochs=2, batch_size=32, limit=40, seed=0, device="cuda")
    models = train_observed(spec, digits, [1, 2])
    assert len(models) == 2 and all(next(m.parameters()).device.type == "cpu" for m in models)
    assert "falling back to the CPU" in capsys.readouterr().err

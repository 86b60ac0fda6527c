"""Nasr et al.'s attacker who watches the model change: federated (epochs observed) and fine-tuning.

Federated, at our scale (one training run stands for the federation, see
``attacker.attacks.membership.observations``): the passive global attacker that observes late
epochs, where the model has memorised its members, does better than one that observed only the
first epochs, as in the paper's "observed epochs" table (57% for epochs 5-25, 85% for 100-300).
Fine-tuning: a model fine-tuned on a specialised set, observed before and after, gives its
specialised set away against non-members.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

from attacker.attacks.base import AttackParameterError
from attacker.attacks.membership import NasrAttack, WhiteBoxMembershipKnowledge
from attacker.attacks.membership.knowledge import attacker_side
from attacker.attacks.membership.observations import (epoch_snapshot_trainer, fine_tune, fine_tune_snapshot_trainer,
                                                      train_observed)
from membership_target import AUX, CHANCE_MARGIN, SHADOW, TARGET, evaluate
from membership_target import overfit_target  # noqa: F401
from models import SplitlabError, to_tensor
from models.splits import privacy_splits

EARLY, LATE = [1, 2], [36, 40]
FINE_TUNE = {"epochs": 20, "lr": 3e-3}  # the recipe's learning rate, half its epochs


def test_federated_attack_accuracy_grows_with_the_epochs_observed(overfit_target):  # noqa: F811
    t = overfit_target
    snapshots = train_observed(TARGET, t["ds"], EARLY + LATE)
    results = {}
    for name, epochs in (("early", EARLY), ("late", LATE)):
        observed = [snapshots[(EARLY + LATE).index(e)] for e in epochs]
        k = WhiteBoxMembershipKnowledge.in_process(observed[-1], t["ds"], TARGET, t["store"], aux_limit=AUX,
                                                   observed=observed,
                                                   snapshots=functools.partial(epoch_snapshot_trainer, observe=epochs))
        attack = NasrAttack(shadow_size=SHADOW, shadow_models=2, gradients="norm").fit(k)
        assert attack.fit_stats()["observations"] == len(epochs)
        results[name] = evaluate(attack, t["samples"], t["is_member"])
    assert results["late"]["auc"] > CHANCE_MARGIN, results
    assert results["late"]["auc"] > results["early"]["auc"] + 0.05, results


def test_fine_tuning_gives_the_specialised_set_away(overfit_target):  # noqa: F811
    t = overfit_target
    ds = t["ds"]
    held_out = privacy_splits(len(ds.x_train), TARGET.seed)["target_out"]
    special, non_members = held_out[100:200], held_out[200:300]  # neither member nor candidate of the target
    tuned = fine_tune(t["model"], to_tensor(ds.x_train[special]).numpy(), ds.y_train[special], **FINE_TUNE)
    # the attacker's general shadow data: its own aux images beyond the ones it draws shadows from
    aux_x, aux_y, _ = attacker_side(ds, TARGET, None, None, "cpu")
    general = functools.partial(fine_tune_snapshot_trainer, general_x=aux_x[AUX:AUX + 100],
                                general_y=aux_y[AUX:AUX + 100], **FINE_TUNE)
    k = WhiteBoxMembershipKnowledge.in_process(tuned, ds, TARGET, t["store"], aux_limit=AUX,
                                               observed=[t["model"], tuned], snapshots=general)
    idx = np.r_[special, non_members]
    samples = (to_tensor(ds.x_train[idx]).numpy(), ds.y_train[idx])
    is_member = np.r_[np.ones(len(special), bool), np.zeros(len(non_members), bool)]
    result = evaluate(NasrAttack(shadow_size=SHADOW, shadow_models=2, gradients="norm").fit(k), samples, is_member)
    assert result["auc"] > CHANCE_MARGIN, result


def test_observation_errors(overfit_target):  # noqa: F811
    t = overfit_target
    with pytest.raises(AttackParameterError, match="observed epochs"):
        train_observed(TARGET, t["ds"], [0, 5])
    with pytest.raises(AttackParameterError, match="observed epochs"):
        epoch_snapshot_trainer(t["knowledge"].trainer, [41])
    with pytest.raises(AttackParameterError, match="epochs"):
        fine_tune(t["model"], *t["samples"], epochs=0, lr=1e-3)
    k = WhiteBoxMembershipKnowledge.in_process(t["model"], t["ds"], TARGET, t["store"], aux_limit=AUX,
                                               observed=[t["model"], t["model"]])
    with pytest.raises(SplitlabError, match="snapshot_trainer"):
        NasrAttack(shadow_size=SHADOW, shadow_models=1).fit(k)
    with pytest.raises(AttackParameterError, match="observed"):
        WhiteBoxMembershipKnowledge.in_process(t["model"], t["ds"], TARGET, t["store"], observed=["weights"])

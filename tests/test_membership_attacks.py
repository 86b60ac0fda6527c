"""Membership inference against a real overfit target: each attack recovers membership.

The target, the candidates and the margin over chance are described in ``membership_target``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attacker.attacks.base import AttackParameterError
from attacker.attacks.membership import (THRESHOLD_METRICS, LiRAAttack, MembershipKnowledge, NasrAttack, ShokriAttack,
                                         ThresholdAttack)
from attacker.attacks.registry import create
from membership_target import CHANCE_MARGIN, SHADOW, TARGET
from membership_target import evaluate as evaluate_on
from membership_target import overfit_target  # noqa: F401
from models import SplitlabError, to_tensor


@pytest.fixture
def target(overfit_target):  # noqa: F811
    return overfit_target


def evaluate(attack, target) -> dict:
    return evaluate_on(attack, target["samples"], target["is_member"])


def test_knowledge_holds_no_member_list(target):
    k = target["knowledge"]
    names = {f.name for f in dataclasses.fields(k)}
    assert names == {"query", "aux_x", "aux_y", "num_classes", "input_shape", "trainer", "source", "device",
                     "counter", "observed", "snapshot_trainer"}
    # the auxiliary data is disjoint from every candidate (members and non-members alike)
    aux = {a.tobytes() for a in k.aux_x}
    assert not aux & {c.tobytes() for c in target["samples"][0]}
    # shadows train on as many samples as the target (the recipe), and on all the members they are given
    assert k.trainer.train_size == TARGET.limit == k.shadow_size() and k.shadow_size(150) == 150
    spec = k.trainer.spec(np.arange(150), 3)
    assert spec.limit is None and len(spec.members) == 150 and spec.seed == 3 and spec.epochs == TARGET.epochs


@pytest.mark.parametrize("metric", THRESHOLD_METRICS)
def test_threshold_attacks_beat_chance_with_a_threshold_from_shadow_data(target, metric):
    k = target["knowledge"]
    before = k.counter["queries"]
    attack = ThresholdAttack(metric=metric, shadow_size=SHADOW).fit(k)
    assert k.counter["queries"] == before  # fitting (choosing the threshold) never asks the target
    result = evaluate(attack, target)
    assert result["auc"] > CHANCE_MARGIN, result
    assert result["threshold_source"] == "given" and result["advantage"] > 0.15, result
    assert np.array_equal(attack.predict(target["samples"]), attack.score(target["samples"]) >= attack.threshold)

    # the same threshold whatever the target is: a knowledge whose target refuses every query
    def refuse(images):
        raise AssertionError("the threshold must not depend on the target")

    other = dataclasses.replace(k, query=refuse, counter={"queries": 0})
    assert ThresholdAttack(metric=metric, shadow_size=SHADOW).fit(other).threshold == attack.threshold


@pytest.mark.parametrize("posteriors", ["all", "top3"])
def test_shokri_shadow_models_beat_chance(target, posteriors):
    attack = ShokriAttack(shadow_models=2, posteriors=posteriors, shadow_size=SHADOW).fit(target["knowledge"])
    result = evaluate(attack, target)
    assert result["auc"] > CHANCE_MARGIN and result["balanced_accuracy"] > 0.58, result
    assert attack.fit_stats()["shadow_samples"] == 4 * SHADOW


def test_lira_offline_and_online_beat_chance(target):
    results = {}
    for online in (False, True):
        for variance in ("fixed", "per-example"):
            attack = LiRAAttack(reference_models=4, online=online, variance=variance, shadow_size=SHADOW)
            results[(online, variance)] = evaluate(attack.fit(target["knowledge"]), target)
    for (online, variance), result in results.items():
        # per-example variance online rests on 2 IN and 2 OUT models per sample here (AUC 0.63 measured;
        # Carlini et al. use the fixed variance below 64 models): asked for 2 standard deviations only
        margin = 0.5 + 2 * 0.041 if online and variance == "per-example" else CHANCE_MARGIN
        assert result["auc"] > margin, (online, variance, result)
    # online LiRA at a low false-positive rate: some members found with (almost) no false alarm
    assert results[(True, "fixed")]["tpr_at_1pct_fpr"] > 0.02, results


def test_nasr_white_box_against_black_box_on_the_same_target(target):
    k = target["knowledge"]
    gradients = evaluate(NasrAttack(shadow_size=SHADOW).fit(k), target)
    outputs = evaluate(NasrAttack(shadow_size=SHADOW, gradients="none").fit(k), target)
    black_box = evaluate(ThresholdAttack(metric="loss", shadow_size=SHADOW).fit(k), target)
    assert gradients["auc"] > CHANCE_MARGIN and outputs["auc"] > CHANCE_MARGIN, (gradients, outputs)
    # on a model this small the gradients add little (the paper's gap is a few points on large models):
    # white-box is at least about as good as the black-box loss attack
    assert gradients["auc"] > black_box["auc"] - 0.08, (gradients, black_box)


def test_registry_builds_every_membership_attack():
    for name, cls in [("threshold", ThresholdAttack), ("shokri", ShokriAttack), ("lira", LiRAAttack),
                      ("nasr", NasrAttack)]:
        attack = create(f"membership/{name}")
        assert type(attack) is cls and attack.key() == f"membership/{name}"


@pytest.mark.parametrize("cls, bad", [
    (ThresholdAttack, {"metric": "accuracy"}), (ThresholdAttack, {"shadow_size": 0}), (ThresholdAttack, {"seed": -1}),
    (ShokriAttack, {"shadow_models": 0}), (ShokriAttack, {"posteriors": "top5"}), (ShokriAttack, {"lr": 0}),
    (LiRAAttack, {"reference_models": 1}), (LiRAAttack, {"online": True, "reference_models": 5}),
    (LiRAAttack, {"variance": "global"}), (LiRAAttack, {"online": "yes"}),
    (LiRAAttack, {"online": True, "variance": "per-example", "reference_models": 2}),
    (NasrAttack, {"gradient_layers": 0}), (NasrAttack, {"device": "tpu"}), (NasrAttack, {"epochs": 1.5}),
    (ThresholdAttack, {"unknown": 1}),
])
def test_bad_parameters_are_refused_up_front(cls, bad):
    with pytest.raises(AttackParameterError, match=next(iter(bad))):
        cls(**bad)


def test_misuse_is_refused(target):
    k = target["knowledge"]
    black_box = MembershipKnowledge(k.query, k.aux_x, k.aux_y, k.num_classes, k.input_shape, k.trainer)
    with pytest.raises(AttackParameterError, match="WhiteBoxMembershipKnowledge"):
        NasrAttack().fit(black_box)
    with pytest.raises(SplitlabError, match="fit"):
        ThresholdAttack().score(target["samples"])
    with pytest.raises(AttackParameterError, match="shadow_size"):
        ThresholdAttack(shadow_size=300).fit(k)  # 600 shadow samples from 400
    with pytest.raises(AttackParameterError, match="gradient_layers"):
        NasrAttack(gradient_layers=99, shadow_models=1).fit(k)
    fitted = ThresholdAttack(shadow_size=SHADOW).fit(k)
    x, y = target["samples"]
    for bad, match in [((x[:, :, :10], y), "shape"), ((x * 2, y), r"\[0, 1\]"), ((x, y[:5]), "labels"),
                       ((x, y + 10), "labels"), (x, "pair")]:
        with pytest.raises(AttackParameterError, match=match):
            fitted.score(bad)
    with pytest.raises(AttackParameterError, match="threshold"):
        LiRAAttack(reference_models=2, shadow_size=SHADOW).fit(k).predict(target["samples"])


def test_the_attacker_trains_only_on_train_split_images_of_a_privacy_split_target(target):
    k = target["knowledge"]
    ds = target["ds"]
    with pytest.raises(SplitlabError, match="train split"):
        k.shadow_model_on(to_tensor(ds.x_test[:5]).numpy(), ds.y_test[:5], 0)
    with pytest.raises(SplitlabError, match="privacy split"):
        MembershipKnowledge.in_process(target["model"], ds, dataclasses.replace(TARGET, scheme="full"))
    with pytest.raises(SplitlabError, match="training recipe"):
        MembershipKnowledge(k.query, k.aux_x, k.aux_y, 10, k.input_shape).shadow_model([0, 1], 0)

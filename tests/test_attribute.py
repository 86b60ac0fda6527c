"""Attribute inference on real UTKFace: race inferred from a gender classifier's split features
beats the majority class, the attack takes only its own knowledge, parameters are checked up front.

One trial of ``benchmarks/configs/attribute-quick.yaml`` (a small target, 1500 attacker images,
600 victims): at pool1 about 0.60 accuracy against a 0.43 majority baseline (observed); the
released probabilities (two gender scores) carry much less: 0.425. The margin asked is three standard deviations of the
baseline's accuracy over the victims.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import quick_model_id

from attacker.attacks.attribute import FeatureKnowledge, OutputKnowledge, attribute_labels
from attacker.attacks.base import AttackParameterError
from attacker.attacks.knowledge import KnowledgeError, KnowledgeSource, knowledge_for
from attacker.attacks.registry import create
from benchmarks.harness.spec import Context
from benchmarks.suites import attribute as suite
from models import load_dataset

QUICK = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "attribute-quick.yaml"


@pytest.fixture(scope="module")
def results(utkface_models):
    """The quick config's pool1 and outputs trials on the session's aia-lenet (conftest
    ``utkface_models``: the suite finds it there; it deploys nothing, so no private copy)."""
    config = yaml.safe_load(QUICK.read_text())
    ctx = Context(artifacts=str(utkface_models.root))
    return {t.attack["observe"]: suite.run_trial(t, ctx) for t in suite.trials(config)
            if t.attack["observe"] in ("pool1", "outputs")}


def test_features_beat_the_majority_class(results):
    m = results["pool1"]
    sd = np.sqrt(m["baseline_accuracy"] * (1 - m["baseline_accuracy"]) / m["victims"])
    assert m["accuracy"] > m["baseline_accuracy"] + 3 * sd, m
    assert m["macro_f1"] > m["baseline_macro_f1"] + 0.15, m
    assert m["fit_queries"] == m["fit_aux_samples"] == 1500
    assert m["target_model"] == quick_model_id("attribute")  # the session's model, not one trained here


def test_outputs_leak_less_than_features(results):
    # two gender probabilities: at this scale the attack on them stays at the majority class (observed 0.425)
    out, feats = results["outputs"], results["pool1"]
    assert out["accuracy"] < feats["accuracy"] - 0.05, (out, feats)


def test_attribute_labels():
    ds = load_dataset("utkface")
    idx, race = attribute_labels(ds, "train", "race")
    assert (ds.attributes_train["race"][idx] >= 0).all() and len(idx) < len(ds.x_train) and set(race) == set(range(5))
    _, band = attribute_labels(ds, "test", "age-band")
    assert set(band) == {0, 1, 2, 3}
    with pytest.raises(Exception, match="unknown attribute"):
        attribute_labels(ds, "train", "eye-colour")


@pytest.mark.parametrize("params", [{"hidden": [0]}, {"hidden": "wide"}, {"epochs": 0}, {"pool": 0}, {"lr": -1},
                                    {"device": "tpu"}, {"seed": -1}, {"nope": 1}])
def test_parameters_are_checked(params):
    with pytest.raises(AttackParameterError):
        create("attribute/features", **params)


def test_each_attack_takes_only_its_knowledge():
    x, y = np.random.default_rng(0).random((8, 3, 4, 4), dtype=np.float32), np.arange(8) % 2
    outputs = OutputKnowledge(lambda im: np.full((len(im), 2), 0.5), x, y, 2)
    features = FeatureKnowledge(lambda im: np.asarray(im).reshape(len(im), -1), x, y, 2)
    with pytest.raises(AttackParameterError, match="FeatureKnowledge"):
        create("attribute/features").fit(outputs)
    with pytest.raises(AttackParameterError, match="OutputKnowledge"):
        create("attribute/outputs").fit(features)
    with pytest.raises(AttackParameterError, match="aux_labels"):
        FeatureKnowledge(lambda im: im, x, y + 5, 2)
    with pytest.raises(KnowledgeError, match="labelled"):
        knowledge_for("attribute/features", KnowledgeSource("d", query=lambda im: im, aux_images=x))
    with pytest.raises(AttackParameterError, match="softmax"):
        create("attribute/outputs", epochs=1).fit(
            OutputKnowledge(lambda im: np.full((len(im), 2), 3.0), x, y, 2))


def test_cuda_asked_for_runs_where_there_is_none_or_on_it():
    import torch

    x, y = np.random.default_rng(0).random((16, 3, 4, 4), dtype=np.float32), np.arange(16) % 2
    attack = create("attribute/features", epochs=1, device="cuda")
    attack.fit(FeatureKnowledge(lambda im: np.asarray(im).reshape(len(im), -1), x, y, 2))
    assert attack.infer(x.reshape(16, -1)).shape == (16,)
    assert attack.device == ("cuda" if torch.cuda.is_available() else "cpu")

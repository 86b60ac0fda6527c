"""Classifier model inversion (Fredrikson et al.) on the real AT&T faces: the reconstruction of a
person is closer to that person's mean face than to anyone else's (a recogniser of another
architecture that the attack never saw names the person far above chance (1/40) on the full
suite's target (``benchmarks/results/face_inversion``; the quick target here trains 6 epochs, too
few for its reconstructions to fool another network)).

One trial of ``benchmarks/configs/face_inversion-quick.yaml`` per kind of knowledge (white-box:
the head joined to the tail; api: probabilities only, NES estimates). The baseline is the mean face
of everyone, judged the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from attacker.attacks.base import AttackParameterError
from attacker.attacks.inversion.classifier_knowledge import ClassifierQueryKnowledge, ClassifierWhiteBoxKnowledge
from attacker.attacks.knowledge import KnowledgeError, KnowledgeSource, knowledge_for
from attacker.attacks.registry import create
from benchmarks.harness.spec import Context
from benchmarks.suites import face_inversion as suite

QUICK = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "face_inversion-quick.yaml"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    config = yaml.safe_load(QUICK.read_text())
    ctx = Context(artifacts=str(tmp_path_factory.mktemp("faces") / "artifacts"))
    return {t.attack["knowledge"]: suite.run_trial(t, ctx) for t in suite.trials(config)}


@pytest.mark.parametrize("knowledge", ["white-box", "api"])
def test_reconstructions_look_like_the_person(results, knowledge):
    m = results[knowledge]
    assert m["ssim_own"] > m["ssim_others"] + 0.01, m
    assert m["ssim_identified"] >= 0.5 > m["baseline_ssim_identified"] + 0.3, m


@pytest.mark.parametrize("params", [{"iterations": 0}, {"step": 0}, {"loss": "hinge"}, {"start": 2.0},
                                    {"denoise": -1}, {"samples": 0}, {"downsample": 0}, {"max_queries": 1},
                                    {"device": "tpu"}])
def test_parameters_are_checked(params):
    with pytest.raises(AttackParameterError):
        create("classifier-inversion/mi-face", **params)


def test_knowledge_and_classes_are_checked():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    white = ClassifierWhiteBoxKnowledge((1, 4, 4), 3, model)
    attack = create("classifier-inversion/mi-face", iterations=3).fit(white)
    assert attack.reconstruct([0, 2]).shape == (2, 1, 4, 4)
    with pytest.raises(AttackParameterError, match="class indices"):
        attack.reconstruct([3])
    api = ClassifierQueryKnowledge((1, 4, 4), 3, lambda x: torch.softmax(model(torch.as_tensor(x)), 1).numpy())
    images = create("classifier-inversion/mi-face", iterations=5, samples=2, downsample=2).fit(api).reconstruct([1])
    assert images.shape == (1, 1, 4, 4) and api.queries == 5 * 5
    with pytest.raises(KnowledgeError, match="tail alone"):
        knowledge_for("classifier-inversion/mi-face", KnowledgeSource("d", tail=model, record={"num_classes": 3}))
    with pytest.raises(AttackParameterError, match="ClassifierKnowledge"):
        create("classifier-inversion/mi-face").fit(object())


def test_post_processing_keeps_a_face():
    from attacker.attacks.inversion.classifier import postprocess
    from models import load_dataset, to_tensor

    face = to_tensor(load_dataset("olivetti").x_train[:2])
    out = postprocess(face, 0.05, 1.0)
    assert out.shape == face.shape and 0 <= out.min() and out.max() <= 1
    assert 0.001 < (out - face).abs().mean() < 0.05  # it changed the image, and only a little


def test_cuda_asked_for_runs_where_there_is_none_or_on_it():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    attack = create("classifier-inversion/mi-face", iterations=3, device="cuda")
    images = attack.fit(ClassifierWhiteBoxKnowledge((1, 4, 4), 3, model)).reconstruct([0, 1])
    assert images.device.type == "cpu" and images.shape == (2, 1, 4, 4)
    assert attack.device == ("cuda" if torch.cuda.is_available() else "cpu")

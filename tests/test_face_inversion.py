"""Classifier model inversion (Fredrikson et al.) on the real AT&T faces: the reconstruction of a
person is closer to that person's mean face than to anyone else's, and a recogniser of another
architecture that the attack never saw names the person above the mean face's rate.

One trial of ``benchmarks/configs/face_inversion-quick.yaml`` per kind of knowledge (white-box:
the head joined to the tail; api: probabilities only, NES on eigenfaces of the attacker's held-out
photos of *other* people, 110 queries a person; query-free: the tail only, a shadow head trained
briefly through it on the held-out photos). The quick target trains 6 epochs: its white-box
reconstructions are identified by SSIM but do not fool the evaluator (on the full suite's target
they do, ``benchmarks/results/face_inversion``); the API's eigenface images are face-like, and
named by the evaluator, but close to every mean face (SSIM identification is not their measure).
The baseline is the mean face of everyone, judged the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import private_copy

from attacker.attacks.base import AttackParameterError
from attacker.attacks.inversion.classifier_knowledge import (ClassifierQueryFreeKnowledge, ClassifierQueryKnowledge,
                                                             ClassifierWhiteBoxKnowledge)
from attacker.attacks.inversion.search_space import FaceBasis
from attacker.attacks.knowledge import KnowledgeError, KnowledgeSource, knowledge_for
from attacker.attacks.registry import create
from benchmarks.harness.spec import Context
from benchmarks.suites import face_inversion as suite

QUICK = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "face_inversion-quick.yaml"


@pytest.fixture(scope="module")
def results(face_models, tmp_path_factory):
    """Every trial of the quick config on a private copy of the session's face models (conftest
    ``face_models``: the suite finds its target and evaluator there and trains neither)."""
    config = yaml.safe_load(QUICK.read_text())
    store = private_copy(face_models, tmp_path_factory)
    out = {t.attack["knowledge"]: suite.run_trial(t, Context(artifacts=str(store.root))) for t in suite.trials(config)}
    assert sorted(store.list_models()) == sorted(face_models.list_models())  # nothing trained here
    return out


@pytest.mark.parametrize("knowledge", ["white-box", "query-free"])
def test_reconstructions_look_like_the_person(results, knowledge):
    m = results[knowledge]
    assert m["ssim_own"] > m["ssim_others"] + 0.01, m
    assert m["ssim_identified"] >= 0.5 > m["baseline_ssim_identified"] + 0.3, m


@pytest.mark.parametrize("knowledge", ["api", "query-free"])
def test_another_recogniser_names_the_person(results, knowledge):
    m = results[knowledge]
    assert m["ssim_own"] > m["ssim_others"] + 0.01, m
    assert m["eval_top5"] >= m["baseline_eval_top5"] + 0.25, m
    assert m["eval_top1"] >= m["baseline_eval_top1"] + 0.1, m


def test_api_attack_stays_in_its_query_budget(results):
    assert results["api"]["fit_queries_per_class"] <= 110
    assert results["api"]["fit_search_dimensions"] == 40


@pytest.mark.parametrize("params", [{"iterations": 0}, {"step": 0}, {"loss": "hinge"}, {"start": 2.0},
                                    {"denoise": -1}, {"samples": 0}, {"downsample": 0}, {"max_queries": 1},
                                    {"basis": "pca"}, {"components": 0}, {"shadow_folds": 0}, {"shadow": {"seed": 3}},
                                    {"shadow": {"epochs": 0}}, {"shadow": {"shadow": "other"}}, {"shadow": [1]},
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
    with pytest.raises(KnowledgeError, match="setting"):
        knowledge_for("classifier-inversion/mi-face", KnowledgeSource("d", head=model, record={"num_classes": 3}),
                      setting="grey-box")
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


def test_tail_and_labelled_photos_give_query_free_knowledge():
    tail = torch.nn.Linear(6, 3)
    record = {"num_classes": 3, "input_shape": [1, 4, 4], "feature_shape": [6], "arch": "face-mlp", "split": "fc1"}
    photos, labels = torch.rand(9, 1, 4, 4), np.arange(9) % 3
    k = knowledge_for("classifier-inversion/mi-face",
                      KnowledgeSource("d", tail=tail, record=record, aux_images=photos, aux_labels=labels))
    assert isinstance(k, ClassifierQueryFreeKnowledge) and k.queryfree.tail is tail and k.num_classes == 3
    with pytest.raises(AttackParameterError, match="aux_labels"):
        ClassifierQueryFreeKnowledge((1, 4, 4), 2, k.queryfree)  # a label (2) outside the classes


def test_eigenface_basis_of_a_person_leaves_their_photos_out():
    photos = torch.rand(12, 1, 4, 4)
    labels = np.arange(12) % 3
    basis = FaceBasis((1, 4, 4), torch.tensor([0, 2]), photos, labels, components=4)
    start = basis.image(basis.start())
    assert torch.allclose(start[0], photos[labels != 0].mean(0), atol=1e-5)
    assert torch.allclose(start[1], photos[labels != 2].mean(0), atol=1e-5)
    with pytest.raises(AttackParameterError, match="fewer than"):
        FaceBasis((1, 4, 4), torch.tensor([0]), photos, labels, components=8)
    with pytest.raises(AttackParameterError, match="auxiliary face images"):
        FaceBasis((1, 4, 4), torch.tensor([0]), None, None, components=2)

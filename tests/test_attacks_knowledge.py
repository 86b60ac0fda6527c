"""knowledge_for: each attack gets its own threat model's knowledge from a KnowledgeSource, or a clear refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacker.attacks import (AttackParameterError, BlackBoxKnowledge, KnowledgeError, KnowledgeSource,
                              QueryFreeKnowledge, WhiteBoxKnowledge, create, knowledge_for, noise_images)
from attacker.captures.store import CaptureStore
from models import SplitlabError, split_model
from models.loading import load_model

DEP = "lenet5-digits--relu2"
SHAPE = (1, 28, 28)


@pytest.fixture()
def captures(tmp_path):
    store = CaptureStore(tmp_path / "captures")
    yield store
    store.close()


def _capture_head(store: CaptureStore, arts, onnx_bytes: bytes | None = None) -> str:
    record = arts.deployment(DEP)
    fields = {k: record[k] for k in ("deployment_id", "arch", "split", "input_shape", "feature_shape", "num_classes")}
    head = onnx_bytes if onnx_bytes is not None else (arts.deployment_dir(DEP) / "head.onnx").read_bytes()
    return store.add_head(fields, head, when=1.0)


def _clean_head(arts):
    model, _ = load_model(arts, "lenet5-digits")
    return split_model(model, "relu2")[0].eval()


@pytest.mark.parametrize("name, cls", [("whitebox", WhiteBoxKnowledge), ("blackbox", BlackBoxKnowledge),
                                       ("queryfree", QueryFreeKnowledge)])
def test_each_attack_gets_its_own_knowledge_from_the_artifact_store(lenet_digits, name, cls):
    x = torch.rand(40, *SHAPE)
    source = KnowledgeSource(DEP, artifacts=lenet_digits, aux_images=x, aux_labels=torch.arange(40) % 10,
                             aux_setting="same-distribution")
    knowledge = knowledge_for(create(name), source)
    assert type(knowledge) is cls and knowledge.input_shape == SHAPE
    head = _clean_head(lenet_digits)
    probe = x[:4]
    with torch.no_grad():
        expected = head(probe)
    if cls is WhiteBoxKnowledge:  # the model provider's clean head
        assert "clean head" in knowledge.origin and knowledge.feature_shape == (16, 8, 8)
        assert torch.allclose(knowledge.head(probe), expected, atol=1e-5)
    elif cls is BlackBoxKnowledge:  # queries through the deployed head, aux images only (no labels)
        assert "artifact store's head" in knowledge.origin and knowledge.setting == "same-distribution"
        assert np.allclose(np.asarray(knowledge.query(probe)), expected.numpy(), atol=1e-4)
        assert not hasattr(knowledge, "aux_labels") and not hasattr(knowledge, "head")
    else:  # the tail and labelled aux, no head, no queries
        assert knowledge.feature_shape == (16, 8, 8) and knowledge.split == "relu2" and knowledge.arch == "lenet5"
        assert torch.equal(knowledge.aux_labels, torch.arange(40) % 10)
        assert not hasattr(knowledge, "head") and not hasattr(knowledge, "query")


def test_a_head_in_hand_serves_white_and_black_box(lenet_digits):
    head = _clean_head(lenet_digits)
    source = KnowledgeSource(head=head, record={"input_shape": SHAPE, "split": "relu2"},
                             aux_images=noise_images(8, SHAPE), aux_setting="random-noise")
    white = knowledge_for("whitebox", source)
    assert white.head is head and white.split == "relu2" and white.origin == "the head in hand"
    black = knowledge_for("inversion/blackbox", source)
    x = torch.rand(3, *SHAPE)
    assert torch.equal(black.query(x), head(x).detach()) and "head in hand" in black.origin


def test_white_box_prefers_the_captured_head_and_falls_back_to_the_store(lenet_digits, captures):
    digest = _capture_head(captures, lenet_digits)
    source = KnowledgeSource(DEP, artifacts=lenet_digits, captures=captures)
    k = knowledge_for("whitebox", source)
    assert "captured at the tap" in k.origin and digest[:16] in k.origin
    # a deployment with a feature defence: the captured head carries its noise; the provider's is clean
    defended = {**lenet_digits.deployment(DEP), "feature_defense": {"type": "noise", "sigma": 0.1}}
    k = knowledge_for("whitebox", KnowledgeSource(DEP, artifacts=lenet_digits, captures=captures, record=defended))
    assert "clean head" in k.origin and "noise of the defence" in k.origin
    # only the artifact store when asked
    k = knowledge_for("whitebox", KnowledgeSource(DEP, artifacts=lenet_digits, captures=captures,
                                                  head_from="artifacts"))
    assert "clean head" in k.origin


def test_an_unusable_captured_head(lenet_digits, captures, caplog):
    _capture_head(captures, lenet_digits, b"not an onnx model")
    k = knowledge_for("whitebox", KnowledgeSource(DEP, artifacts=lenet_digits, captures=captures))
    assert "clean head" in k.origin and "unusable" in caplog.text
    with pytest.raises(SplitlabError, match="not a readable ONNX model"):  # asked for the capture: no fallback
        knowledge_for("whitebox", KnowledgeSource(DEP, artifacts=lenet_digits, captures=captures, head_from="capture"))


@pytest.mark.parametrize("name, source, message", [
    ("whitebox", KnowledgeSource(DEP), "the white-box attack needs the head"),
    ("whitebox", KnowledgeSource(DEP, head_from="artifacts"), "needs the artifact store"),
    ("whitebox", KnowledgeSource(DEP, head_from="capture"), "needs the tap's capture store"),
    ("blackbox", KnowledgeSource(DEP, aux_images=torch.rand(2, *SHAPE)), "needs a query source"),
    ("blackbox", KnowledgeSource(DEP, edge_url="http://edge:8001", aux_images=torch.rand(2, *SHAPE)),
     "need the tap's capture store"),
    ("blackbox", KnowledgeSource(DEP, query=lambda x: x), "needs auxiliary images"),
    ("queryfree", KnowledgeSource(DEP, aux_images=torch.rand(2, *SHAPE), aux_labels=torch.zeros(2)),
     "needs the tail"),
    ("queryfree", KnowledgeSource(tail=torch.nn.Identity(), aux_images=torch.rand(2, *SHAPE)),
     "needs labelled auxiliary images"),
    ("queryfree", KnowledgeSource(tail=torch.nn.Identity(), aux_images=torch.rand(2, *SHAPE),
                                  aux_labels=torch.zeros(2), record={"input_shape": SHAPE}), "feature_shape"),
])
def test_a_source_missing_what_the_threat_model_needs_is_refused(name, source, message):
    with pytest.raises(KnowledgeError, match=message):
        knowledge_for(name, source)


def test_nothing_captured_and_no_store(captures):
    with pytest.raises(KnowledgeError, match="no captured head for .* and no artifact store"):
        knowledge_for("whitebox", KnowledgeSource(DEP, captures=captures))
    with pytest.raises(KnowledgeError, match="no GetHead payload"):
        knowledge_for("whitebox", KnowledgeSource(DEP, captures=captures, head_from="capture"))
    with pytest.raises(KnowledgeError, match="input shape of .* is unknown"):
        knowledge_for("blackbox", KnowledgeSource(DEP, captures=captures, query=lambda x: x,
                                                  aux_images=torch.rand(2, *SHAPE)))


def test_source_settings_are_checked():
    with pytest.raises(KnowledgeError, match="head_from must be one of auto, capture, artifacts"):
        KnowledgeSource(DEP, head_from="cloud")
    with pytest.raises(KnowledgeError, match="query must be callable"):
        KnowledgeSource(DEP, query="http://edge")


def test_an_attack_refuses_knowledge_of_another_threat_model(lenet_digits):
    head = _clean_head(lenet_digits)
    white = WhiteBoxKnowledge(head, SHAPE, "relu2")
    black = BlackBoxKnowledge(lambda x: head(x), torch.rand(4, *SHAPE), SHAPE)
    with pytest.raises(AttackParameterError, match="inversion/whitebox attack needs a WhiteBoxKnowledge"):
        create("whitebox").fit(black)
    with pytest.raises(AttackParameterError, match="inversion/blackbox attack needs a BlackBoxKnowledge"):
        create("blackbox").fit(white)
    with pytest.raises(AttackParameterError, match="inversion/queryfree attack needs a QueryFreeKnowledge"):
        create("queryfree").fit(white)

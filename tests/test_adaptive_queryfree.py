"""Adaptive attackers in the attacker's knowledge (issue 16): the query-free attack against a defended
deployment, naive and adaptive, and the ``adaptive`` knowledge of the black-box attack, the CLI and
the lab's spec."""

from __future__ import annotations

import pytest
import torch
from attack_helpers import mnist_target

from attacker.attacks import AttackParameterError, KnowledgeError, KnowledgeSource, create, knowledge_for
from attacker.attacks.inversion.known_defence import defence_layers, known_chain
from attacker.metrics import image_metrics
from models.defences import features as fdef
from models.split import split_model

SPLIT = "conv1"
SHAPE = (1, 28, 28)


def _queryfree(tail, record, target, adaptive: bool):
    """A query-free attack (the cloud's view: tail, record, labelled training images) fitted."""
    attack = create("queryfree", epochs=3, progress=False, whitebox=dict(iterations=200, eot_samples=4))
    source = KnowledgeSource(record=record, tail=tail, aux_images=target.x_train[:6000],
                             aux_labels=target.y_train[:6000], adaptive=adaptive)
    return attack.fit(knowledge_for(attack, source))


@pytest.fixture(scope="module")
def deployed():
    """lenet5 on MNIST cut at conv1, its head defended by dropout (p=0.5) as the edge would run it."""
    t = mnist_target()
    dh = fdef.defended_head(t.model, SPLIT, "dropout:p=0.5", SHAPE)
    head, tail = split_model(t.model, SPLIT)
    torch.manual_seed(0)
    with torch.no_grad():
        clean, sent = head(t.x_eval), dh.module(t.x_eval)
    record = {"input_shape": list(SHAPE), "feature_shape": list(clean.shape[1:]), "split": SPLIT, "arch": "lenet5",
              "num_classes": 10, "feature_defense": fdef.to_json(dh.defences)}
    return t, tail, record, clean, sent


def test_defence_lowers_naive_queryfree_psnr_and_the_adaptive_attack_does_at_least_as_well(deployed):
    """Same ten test images: the naive shadow head (trained through the tail alone) inverts the
    defended features far worse than the clean ones; the adaptive one (trained through the defence,
    inverting through the defence with dropout's mask read off the zeros) does at least as well."""
    t, tail, record, clean, sent = deployed
    naive = _queryfree(tail, record, t, adaptive=False)
    assert naive.knowledge.defences == () and naive.shadow_accuracy > 0.5  # the shadow head drives the tail
    undefended = image_metrics(naive.reconstruct(clean), t.x_eval)["psnr_mean"]
    naive_psnr = image_metrics(naive.reconstruct(sent), t.x_eval)["psnr_mean"]
    adaptive = _queryfree(tail, record, t, adaptive=True)
    assert [d.type for d in adaptive.knowledge.defences] == ["dropout"]
    adaptive_psnr = image_metrics(adaptive.reconstruct(sent), t.x_eval)["psnr_mean"]
    assert naive_psnr < undefended - 3, (undefended, naive_psnr)
    assert adaptive_psnr >= naive_psnr - 0.5, (naive_psnr, adaptive_psnr)  # ten images: half a dB of tolerance


def test_known_defence_layers_draw_per_call_and_round_straight_through():
    chain = fdef.defences("gaussian:sigma=0.5+quantize:bits=2,lo=0,hi=3")
    layers = defence_layers(chain, 4, straight_through=True)
    x = torch.rand(2, 4, 3, 3, requires_grad=True)
    a, b = layers(x), layers(x)
    assert not torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0, 2.0, 3.0}
    a.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # a naive attacker knows nothing; deeper moved the split point and is no layer
    record = {"feature_defense": fdef.to_json(fdef.defences("deeper:layers=1+dropout:p=0.2"))}
    assert known_chain(record, False) == () and [d.type for d in known_chain(record, True)] == ["dropout"]


def test_blackbox_knowledge_applies_the_defence_only_to_clean_queries(deployed):
    t, tail, record, clean, sent = deployed
    head = split_model(t.model, SPLIT)[0]
    base = dict(record=record, head=head, aux_images=t.x_eval, aux_setting="same-distribution")
    adaptive = knowledge_for("blackbox", KnowledgeSource(**base, clean_queries=True, adaptive=True))
    assert [d.type for d in adaptive.defences] == ["dropout"] and "dropout0.5" in adaptive.origin
    assert knowledge_for("blackbox", KnowledgeSource(**base, clean_queries=True)).defences == ()
    # queries through the deployed head carry the defence already: nothing is added
    defended = knowledge_for("blackbox", KnowledgeSource(**base, adaptive=True))
    assert defended.defences == () and "carry the deployment's defence already" in defended.origin
    attack = create("blackbox", epochs=1, progress=False).fit(adaptive)
    assert attack.reconstruct(sent).shape == t.x_eval.shape


def test_adaptive_whitebox_from_the_knowledge_is_the_adaptive_parameter(deployed):
    t, tail, record, clean, sent = deployed
    dh = fdef.defended_head(t.model, SPLIT, record["feature_defense"], SHAPE)
    from attacker.attacks import WhiteBoxKnowledge

    by_knowledge = create("whitebox", iterations=5, progress=False).fit(
        WhiteBoxKnowledge.from_defended(dh, SHAPE, adaptive=True))
    by_param = create("whitebox", iterations=5, progress=False, adaptive=True).fit(WhiteBoxKnowledge.from_defended(dh, SHAPE))
    naive = create("whitebox", iterations=5, progress=False).fit(WhiteBoxKnowledge.from_defended(dh, SHAPE))
    assert by_knowledge.adaptive and by_param.adaptive and by_knowledge.skip_zeros and not naive.adaptive


def test_bad_adaptive_settings_are_clear_errors(deployed):
    t, tail, record, clean, sent = deployed
    with pytest.raises(AttackParameterError, match="whitebox.adaptive"):
        create("queryfree", whitebox={"adaptive": True})
    with pytest.raises(AttackParameterError, match="train_through_defence"):
        create("queryfree", train_through_defence="yes")
    with pytest.raises(KnowledgeError, match="adaptive"):
        KnowledgeSource(record=record, tail=tail, adaptive="yes")
    with pytest.raises(KnowledgeError, match="clean_queries"):
        KnowledgeSource(record=record, clean_queries=1)
    uncalibrated = {**record, "feature_defense": [{"type": "quantize", "bits": 2}]}
    attack = create("queryfree", epochs=1, progress=False)
    k = knowledge_for(attack, KnowledgeSource(record=uncalibrated, tail=tail, aux_images=t.x_train[:8],
                                              aux_labels=t.y_train[:8], adaptive=True))
    with pytest.raises(fdef.DefenceError, match="not calibrated"):
        attack.fit(k)


def test_cli_and_lab_accept_the_adaptive_attacker(capsys):
    from attacker.__main__ import main
    from attacker.lab.spec import AttackSpec

    with pytest.raises(SystemExit):
        main(["invert", "--help"])
    assert "--adaptive" in capsys.readouterr().out
    for name in ("whitebox", "blackbox", "queryfree"):
        spec = AttackSpec(name=name, adaptive=True)
        assert spec.adaptive and spec.label.endswith("-adaptive")
        assert not AttackSpec(name=name).label.endswith("adaptive")
    with pytest.raises(ValueError, match="adaptive"):
        AttackSpec(name="queryfree", adaptive="yes")


def test_a_shadow_head_trained_through_the_defence_drives_the_tail(deployed):
    """``train_through_defence``: tail(D(g(x))) with dropout drawn per step (the attack against a tail
    retrained on defended features); it still learns to drive the tail."""
    t, tail, record, clean, sent = deployed
    attack = create("queryfree", epochs=2, progress=False, train_through_defence=True, whitebox=dict(iterations=5))
    attack.fit(knowledge_for(attack, KnowledgeSource(record=record, tail=tail, aux_images=t.x_train[:6000],
                                                     aux_labels=t.y_train[:6000], adaptive=True)))
    assert attack.shadow_accuracy > 0.5 and attack.reconstruct(sent).shape == t.x_eval.shape


@pytest.fixture(scope="module")
def defended_captures(lenet_digits, tmp_path_factory):
    """A dropout-defended lenet5 / digits deployment (private store) and a capture store holding what
    its edge sent for four test images."""
    import numpy as np

    from attacker.captures.store import CaptureStore
    from conftest import private_copy
    from models.datasets import load_dataset
    from models.deploy import deploy
    from models.onnx_runtime import head_session

    store = private_copy(lenet_digits, tmp_path_factory)
    dep = deploy(store, "lenet5-digits", SPLIT, defence="dropout:p=0.5")["deployment_id"]
    x = load_dataset("digits").x_test[:4]
    from models.datasets import to_tensor

    sent = head_session(str(store.deployment_dir(dep) / "head.onnx")).run(None, {"input": to_tensor(x).numpy()})[0]
    captures = CaptureStore(tmp_path_factory.mktemp("captures") / "store")
    captures.add_captures([{"method": "Infer", "request_id": "req-0", "deployment_id": dep, "time": 1.0,
                            "latency": 0.001, "features": np.asarray(sent), "shape": sent.shape,
                            "wire_dtype": "float32", "top1": [0] * len(sent)}])
    captures.close()
    return store, dep, captures.root


@pytest.mark.parametrize("method, extra", [
    ("whitebox", ["--head-from", "artifacts", "--param", "iterations=5"]),
    ("queryfree", ["--aux-data", "digits:train:200", "--param", "epochs=1", "--param", 'whitebox={"iterations": 5}']),
])
def test_attacker_invert_adaptive_knows_the_defence(defended_captures, method, extra, tmp_path, capsys):
    from attacker.__main__ import main

    store, dep, captures = defended_captures
    argv = ["invert", "--method", method, "--deployment", dep, "--artifacts", str(store.root), "--store",
            str(captures), "--out", str(tmp_path / "out"), "--no-progress", *extra]
    assert main(argv + ["--adaptive"]) == 0
    out = capsys.readouterr().out
    assert "dropout0.5" in out and (tmp_path / "out" / "summary.json").is_file()
    if method == "queryfree":  # only the adaptive attacker's knowledge names the defence
        assert main(argv) == 0 and "dropout0.5" not in capsys.readouterr().out

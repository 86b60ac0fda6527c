"""Where the inversion attacks compute: a ``device`` parameter (cpu / cuda, else $SPLITLAB_DEVICE)
that reaches every module an attack works through, with the CPU fallback where CUDA is missing.

This machine has no GPU, so the CUDA path is checked by its plumbing: the device each attack
settles on is the one handed to the training loop and to the modules it places, modules are
copied (never moved in place) onto another device, the pixels of rMLE live where the head is, and
CUDA asked for without one falls back to the CPU with the message and still runs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from attacker.__main__ import main
from attacker.attacks import (AttackParameterError, BlackBoxAttack, BlackBoxKnowledge, QueryFreeAttack,
                              QueryFreeKnowledge, WhiteBoxAttack, WhiteBoxKnowledge, create, head_query, names,
                              noise_images)
from attacker.attacks.inversion import blackbox, queryfree
from attacker.attacks.inversion.base import module_device, placed
from attacker.attacks.inversion.heads import head_from_onnx
from attacker.attacks.inversion.whitebox import WhiteBoxParams, _invert_chunk
from attacker.captures.store import CaptureStore
from models import build_model, split_model
from models.deploy import export_head_onnx


def _lenet(split: str):
    torch.manual_seed(0)
    return split_model(build_model("lenet5", 10, (1, 28, 28)).eval(), split)


def _no_cuda(monkeypatch):
    """CUDA asked for on a machine without it, whatever machine runs the test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("SPLITLAB_DEVICE", "cuda")


@pytest.mark.parametrize("name", names("inversion"))
def test_device_is_validated_up_front_and_named(name):
    with pytest.raises(AttackParameterError, match="device must be one of.*'tpu'"):
        create(name, device="tpu")
    assert create(name, device="cpu").params.device == "cpu"
    assert create(name).params.device is None  # $SPLITLAB_DEVICE, else the CPU, settled at fit


def test_queryfree_inversion_runs_where_its_shadow_head_is():
    with pytest.raises(AttackParameterError, match="whitebox.device"):
        create("queryfree", device="cpu", whitebox={"device": "cuda"})


def test_placed_copies_onto_another_device_and_leaves_the_original():
    head, _ = _lenet("conv1")
    assert placed(head, "cpu") is head
    onnx_head, method = head_from_onnx(export_head_onnx(head, (1, 28, 28)))
    assert method == "onnx2torch"
    for module in (head, onnx_head):  # a zoo head and an ONNX-converted one move alike
        moved = placed(module, "meta")
        assert moved is not module and module_device(moved).type == "meta"
        assert module_device(module).type == "cpu"
    assert module_device(nn.ReLU()).type == "cpu"


class _NoBar:
    def update(self, n):
        pass


def test_rmle_pixels_are_optimised_where_the_head_is():
    head, _ = _lenet("conv1")
    meta = placed(head, "meta")
    target = torch.zeros(2, 8, 24, 24, device="meta")
    params = WhiteBoxParams(iterations=2, lr=0.1, tv_weight=0.1, progress=False)
    x, loss = _invert_chunk(meta, target, (1, 28, 28), params, bar=_NoBar())
    assert x.device.type == "meta" and loss.device.type == "meta" and x.shape == (2, 1, 28, 28)


def test_cuda_without_a_gpu_falls_back_to_the_cpu_and_every_attack_runs(monkeypatch, capsys):
    _no_cuda(monkeypatch)
    head, tail = _lenet("conv1")
    x = noise_images(40, (1, 28, 28), seed=3)
    y = torch.arange(40) % 10
    with torch.no_grad():
        feats = head(x[:4])
    attacks = [
        (WhiteBoxAttack(iterations=3, progress=False), WhiteBoxKnowledge(head, (1, 28, 28), "conv1")),
        (BlackBoxAttack(epochs=1, width=4, progress=False),
         BlackBoxKnowledge(head_query(head), x, (1, 28, 28), "random-noise", "conv1")),
        (QueryFreeAttack(epochs=1, progress=False, whitebox={"iterations": 3, "progress": False}),
         QueryFreeKnowledge(tail, x, y, (1, 28, 28), (8, 24, 24), "lenet5", "conv1", 10)),
    ]
    for attack, knowledge in attacks:
        attack.fit(knowledge)
        err = capsys.readouterr().err
        assert attack.device == "cpu"
        assert f"attacker {attack.key()}: CUDA was requested" in err and "falling back to the CPU" in err, err
        rec = attack.reconstruct(feats)
        assert rec.device.type == "cpu" and rec.shape == (4, 1, 28, 28)


def test_the_attacks_hand_their_device_to_the_loop_and_their_modules(monkeypatch):
    """What reaches models.fit.fit and the modules is the attack's settled device (here: the CPU)."""
    seen = []
    real_fit = blackbox.train_network

    def spy(model, *args, device, **kwargs):
        seen.append(device)
        return real_fit(model, *args, device=device, **kwargs)

    monkeypatch.setattr(blackbox, "train_network", spy)
    monkeypatch.setattr(queryfree, "train_network", spy)
    head, tail = _lenet("conv1")
    x = noise_images(20, (1, 28, 28))
    bb = BlackBoxAttack(epochs=1, width=4, progress=False, device="cpu")
    bb.fit(BlackBoxKnowledge(head_query(head), x, (1, 28, 28), "random-noise", "conv1"))
    qf = QueryFreeAttack(epochs=1, progress=False, device="cpu", whitebox={"iterations": 2, "progress": False})
    qf.fit(QueryFreeKnowledge(tail, x, torch.arange(20) % 10, (1, 28, 28), (8, 24, 24), "lenet5", "conv1", 10))
    wb = WhiteBoxAttack(iterations=2, progress=False, device="cpu").fit(WhiteBoxKnowledge(head, (1, 28, 28)))
    assert seen == ["cpu", "cpu"]
    assert module_device(bb.inverse_net).type == module_device(qf.shadow).type == "cpu"
    assert wb.head is head  # already on the device: used as it is, not copied


def test_invert_cli_device_flag_falls_back_and_is_recorded(lenet_digits, tmp_path, monkeypatch, capsys):
    dep = "lenet5-digits--conv1"
    store = CaptureStore(tmp_path / "captures")
    feats = np.random.default_rng(0).random((2, 8, 24, 24), dtype=np.float32)
    store.add_captures([{"method": "Infer", "request_id": "r0", "deployment_id": dep, "time": 1.0, "latency": 0.001,
                         "features": feats, "shape": feats.shape, "wire_dtype": "float32", "top1": [0, 0]}])
    store.close()
    base = ["invert", "--method", "whitebox", "--deployment", dep, "--artifacts", str(lenet_digits.root),
            "--head-from", "artifacts", "--store", str(tmp_path / "captures"), "--param", "iterations=3",
            "--no-progress"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(base + ["--out", str(tmp_path / "out"), "--device", "cuda"]) == 0
    err = capsys.readouterr().err
    assert "CUDA was requested" in err and "falling back to the CPU" in err, err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["device"] == "cpu" and summary["params"]["device"] == "cuda" and summary["images"] == 2
    assert main(base + ["--out", str(tmp_path / "bad"), "--param", "device=tpu"]) == 2
    assert "device must be one of" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "bad"), "--device", "cpu", "--param", "device=cuda"]) == 2
    assert "--device cpu and --param device=cuda disagree" in capsys.readouterr().err

"""Transformer (token) features through the pipeline: deploy -> cloud -> tap -> edge on both runtimes,
then the inversion attacks and the feature defences on what the tap captured.

vit-mini's features at a split are ``(65, 64)`` token tensors and swin-mini's channel-last
``(H, W, C)`` grids, where every earlier model had ``(C, H, W)`` or flat features. The models are
untrained (seeded): their LayerNorm weights (ones) and zero biases are identical tensors, which the
ONNX exporter stores once, so the torch runtime's edge rebuilding the head by name exercises
:func:`models.loading.load_onnx_weights` finding the duplicates. Attack figures on untrained models
mean nothing: the attacks must run and give finite PSNR.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from fixtures_grpc import running_server, save_untrained

from attacker.__main__ import main
from attacker.attacks.base import AttackParameterError
from attacker.attacks.inversion.blackbox import BlackBoxAttack, inverse_network
from attacker.attacks.inversion.knowledge import BlackBoxKnowledge
from attacker.attacks.knowledge import KnowledgeSource
from attacker.captures.store import CaptureStore
from attacker.tap import TapConfig, TapThread
from models import ArtifactStore
from models.defences.features import DefenceError, MixedActivation, defended_head
from models.split import split_model
from models.zoo import build_model
from models.deploy import deploy

CIFAR = ("cifar10", (3, 32, 32))
SPLITS = {"vit-mini": ("block2", (65, 64)), "swin-mini": ("stage1", (16, 16, 32)),
          "morph-12-layernorm": ("stage1", (24, 16, 16))}
VIT = "vit-mini--block2"


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).random((n, 3, 32, 32), dtype=np.float32)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Both transformers deployed (untrained), a cloud, a recording tap, and four images sent through
    the tap by an edge on each runtime."""
    from edge_client.client import CloudClient
    from edge_client.edge import Edge
    from edge_client.heads import HeadCache

    tmp = tmp_path_factory.mktemp("tokens")
    store = ArtifactStore(tmp / "artifacts")
    x = _images(4)
    for arch, (split, _) in SPLITS.items():
        save_untrained(store, arch, arch, dataset=CIFAR)
        deploy(store, arch, split, check_inputs=torch.from_numpy(x))
    replies = {}
    with running_server(store.root) as cloud:
        tap = TapThread(TapConfig(listen="127.0.0.1:0", upstream=cloud.address, store=str(tmp / "captures")))
        port = tap.start()
        try:
            for runtime in ("onnxruntime", "torch"):
                edge = Edge(CloudClient(f"127.0.0.1:{port}"), HeadCache(tmp / f"cache-{runtime}"), runtime=runtime)
                for arch, (split, _) in SPLITS.items():
                    dep = f"{arch}--{split}"
                    replies[runtime, dep] = edge.infer(dep, x, request_id=f"{dep}-{runtime}")
                edge.client.close()
            assert tap.flush(30)
        finally:
            tap.stop()
    yield {"store": store, "captures": tmp / "captures", "replies": replies, "images": x, "tmp": tmp}


def test_edge_runs_token_heads_on_both_runtimes_and_the_tap_records_them(stack):
    captures = CaptureStore(stack["captures"])
    for arch, (split, shape) in SPLITS.items():
        dep = f"{arch}--{split}"
        onnx, rebuilt = stack["replies"]["onnxruntime", dep], stack["replies"]["torch", dep]
        assert np.allclose(onnx.logits, rebuilt.logits, atol=1e-4)
        for runtime in ("onnxruntime", "torch"):
            (cap,) = captures.captures(request_id=f"{dep}-{runtime}")
            assert captures.features(cap).shape == (4, *shape)


def _invert(stack, method: str, *extra: str, capsys) -> float:
    captures = CaptureStore(stack["captures"])
    (cap,) = captures.captures(request_id=f"{VIT}-onnxruntime")
    truth = stack["tmp"] / "truth.npz"
    np.savez(truth, request_ids=np.repeat([f"{VIT}-onnxruntime"], 4), images=stack["images"])
    code = main(["invert", "--method", method, "--deployment", VIT, "--store", str(stack["captures"]), "--out",
                 str(stack["tmp"] / f"out-{method}"), "--capture", str(cap.id), "--ground-truth", str(truth),
                 "--no-progress", *extra])
    out = capsys.readouterr().out
    assert code == 0, out
    psnr = float(out.split("overall:")[1].split("PSNR ")[1].split(" ")[0])
    assert math.isfinite(psnr), out
    return psnr


def test_whitebox_inverts_captured_vit_tokens(stack, capsys):
    _invert(stack, "whitebox", "--param", "iterations=5", capsys=capsys)


def test_blackbox_and_queryfree_invert_captured_vit_tokens(stack, capsys):
    aux = ["--artifacts", str(stack["store"].root), "--aux-data", "cifar10:train:32"]
    _invert(stack, "blackbox", *aux, "--param", "epochs=1", capsys=capsys)
    _invert(stack, "queryfree", *aux, "--param", "epochs=1", "--param", "shadow=same", "--param",
            'whitebox={"iterations": 5}', capsys=capsys)


def test_inverse_network_flattens_tokens_and_refuses_other_shapes():
    net = inverse_network((65, 64), (3, 32, 32), width=8)
    assert net(torch.zeros(2, 65, 64)).shape == (2, 3, 32, 32)
    with pytest.raises(AttackParameterError, match=r"features of shape \(2, 3, 4, 5\) are neither flat"):
        inverse_network((2, 3, 4, 5), (3, 32, 32))


def test_feature_defences_keep_the_token_shape(stack):
    """Noise, dropout, rounding and the mixed activation in one chain (one deploy: each measures the
    tail's accuracy on held-out images); the mixing runs over the last axis, the ViT's channels."""
    spec = "gaussian:sigma=0.1+laplace:scale=0.1+dropout:p=0.3+quantize:bits=4+nonlinear:kind=tanh"
    record = deploy(stack["store"], "vit-mini", "block6", defence=spec,
                    check_inputs=torch.from_numpy(stack["images"]))
    assert record["feature_shape"] == [65, 64]
    assert [d["type"] for d in record["feature_defense"]] == ["gaussian", "laplace", "dropout", "quantize", "nonlinear"]


def test_deeper_refuses_at_the_last_transformer_block(stack):
    with pytest.raises(DefenceError, match="'block6' has only 0 split points after it, asked for 1"):
        deploy(stack["store"], "vit-mini", "block6", defence="deeper:layers=1",
               check_inputs=torch.from_numpy(stack["images"]))


def test_deployments_record_the_feature_layout_and_attackers_read_it(stack):
    layouts = {"vit-mini": "tokens", "swin-mini": "nhwc", "morph-12-layernorm": "nchw"}
    for arch, (split, _) in SPLITS.items():
        record = stack["store"].deployment(f"{arch}--{split}")
        assert record.get("feature_layout", "nchw") == layouts[arch]
        assert KnowledgeSource(record=record).feature_layout() == layouts[arch]
        # what the tap sees has no layout: the public architecture's at the split
        seen = {k: record[k] for k in ("arch", "split", "input_shape", "feature_shape")}
        assert KnowledgeSource(record=seen).feature_layout() == layouts[arch]
    assert "feature_layout" not in stack["store"].deployment("morph-12-layernorm--stage1")  # nchw records unchanged


def test_swin_inverse_network_sees_32_channels_on_a_16x16_grid(stack):
    """swin-mini's stage1 features are (16, 16, 32) channel-last: read as (C, H, W) they would be
    16 channels on a 16 x 32 grid; the inverse network permutes them to 32 channels on 16 x 16."""
    net = inverse_network((16, 16, 32), (3, 32, 32), width=8, layout="nhwc")
    seen = []
    net.body[0].register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    assert net(torch.zeros(2, 16, 16, 32)).shape == (2, 3, 32, 32)
    assert net.body[0].in_channels == 32 and seen == [(2, 32, 16, 16)]
    # the attack takes the layout from the deployment record and trains on the permuted features
    model = build_model("swin-mini")
    head, _ = split_model(model.eval(), "stage1")
    record = stack["store"].deployment("swin-mini--stage1")
    aux = torch.from_numpy(_images(8))
    knowledge = BlackBoxKnowledge.from_source(KnowledgeSource(record=record, head=head, aux_images=aux))
    assert knowledge.feature_layout == "nhwc"
    attack = BlackBoxAttack(epochs=1, width=8, progress=False).fit(knowledge)
    assert attack.inverse_net.body[0].in_channels == 32
    with torch.no_grad():
        assert attack.reconstruct(head(aux[:2])).shape == (2, 3, 32, 32)


def test_inverse_network_refuses_shapes_its_layout_does_not_allow():
    with pytest.raises(AttackParameterError, match=r"layout nhwc must be \(H, W, C\) grids, got shape \(65, 64\)"):
        inverse_network((65, 64), (3, 32, 32), layout="nhwc")
    with pytest.raises(AttackParameterError, match=r"layout tokens must be \(tokens, dim\), got shape \(16, 16, 32\)"):
        inverse_network((16, 16, 32), (3, 32, 32), layout="tokens")
    with pytest.raises(AttackParameterError, match="unknown feature layout 'nwhc'"):
        inverse_network((16, 16, 32), (3, 32, 32), layout="nwhc")
    with pytest.raises(AttackParameterError, match="feature_layout must be one of nchw, nhwc, tokens, got 'hwc'"):
        BlackBoxKnowledge(lambda x: x, torch.zeros(1, 3, 32, 32), (3, 32, 32), feature_layout="hwc")


@pytest.mark.parametrize("arch,split,position", [("swin-mini", "stage1", (3, 5)), ("vit-mini", "block2", (10,))])
def test_nonlinear_mixes_swin_and_vit_features_over_the_channel_axis(arch, split, position):
    """Changing one channel at one position (a grid cell, a token) changes that position's outputs
    only, all of its channels: the mixing is over channels, never over positions."""
    defended = defended_head(build_model(arch), split, "nonlinear:kind=tanh", (3, 32, 32))
    mix = defended.module[-1]
    assert isinstance(mix, MixedActivation) and mix.q.shape == (SPLITS[arch][1][-1],) * 2
    f = torch.randn(2, *SPLITS[arch][1], generator=torch.Generator().manual_seed(0))
    g = f.clone()
    g[(0, *position, 3)] += 1.0
    with torch.no_grad():
        changed = (mix(g) - mix(f)).abs() > 1e-6
    assert changed[(0, *position)].all()  # every channel of the changed position
    assert changed.sum() == changed[(0, *position)].numel()  # and nothing else

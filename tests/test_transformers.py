"""The architecture study's families: ViT-like and Swin-like transformers (models/transformers.py)
and the ResNet depths (models/architectures.py). Head-then-tail equality for every split point is
tests/test_zoo.py's (parametrised over the whole zoo)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attacker.attacks.gradient.layers import GROUPS, parameter_groups
from fixtures_grpc import save_untrained
from models import ArtifactStore, SplitlabError, build_model, split_model
from models.deploy import deploy
from models.onnx_runtime import head_session
from models.transformers import WindowAttention

STUDY = ("resnet10-w16", "resnet18-w16", "vit-mini", "swin-mini")


def _count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_are_the_documented_ones_and_comparable():
    import models.transformers as module

    millions = {arch: round(_count(build_model(arch)) / 1e6, 2) for arch in STUDY}
    for arch, m in millions.items():
        assert f"{arch:<13}" in module.__doc__ and f"{m:.2f} M" in module.__doc__, (arch, m)
    # two pairs of about equal size (as ResNet-50 / Swin-T and ResNet-101 / Swin-S), all within 2.3x
    assert millions["vit-mini"] == pytest.approx(millions["resnet10-w16"], rel=0.05)
    assert millions["swin-mini"] == pytest.approx(millions["resnet18-w16"], rel=0.25)
    assert max(millions.values()) / min(millions.values()) < 2.3


def test_resnet_depths_share_one_builder_and_resnet18_keeps_its_layers():
    r18, r10 = build_model("resnet18"), build_model("resnet10-w16")
    assert r10.split_points == r18.split_points == ["stem", "layer1", "layer2", "layer3", "layer4"]
    keys18 = set(r18.state_dict())
    assert {"layer1.1.conv2.weight", "layer4.0.shortcut.0.weight", "fc.weight"} <= keys18
    assert len(keys18) == 122  # as before the builder was generalised
    assert [len(getattr(r10, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    assert r10.stem[0].out_channels == 16 and r10.fc.in_features == 128
    assert _count(build_model("resnet18-w16")) * 16 == pytest.approx(_count(r18), rel=0.01)  # width^2


def _timm_window_attention(a: WindowAttention, x: torch.Tensor) -> torch.Tensor:
    """Swin's window attention in the original order: shift the grid, cut windows, then qkv."""
    b, h, w, c = x.shape
    s, n, heads = a.window, a.window ** 2, a.heads
    if a.shift:
        x = torch.roll(x, (-a.shift, -a.shift), (1, 2))
    win = x.view(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
    q, k, v = a.qkv(win).reshape(-1, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
    att = (q * (c // heads) ** -0.5) @ k.transpose(-2, -1)
    table = a.relative_position_bias.table
    att = att + table[a.relative_position_bias.index("cpu").view(-1)].view(n, n, -1).permute(2, 0, 1)
    if a.shift:
        att = (att.view(b, -1, heads, n, n) + a.mask[None, :, None]).view(-1, heads, n, n)
    out = a.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c))
    out = out.view(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
    return torch.roll(out, (a.shift, a.shift), (1, 2)) if a.shift else out


def test_swin_attention_is_swins_with_shifted_windows_in_alternate_blocks():
    torch.manual_seed(0)
    model = build_model("swin-mini").eval()
    assert [blk.attn.shift for blk in model.stage1] == [0, 2] and [blk.attn.shift for blk in model.stage2] == [0, 2]
    assert [blk.attn.shift for blk in model.stage3] == [0, 0]  # 4 x 4 tokens: one window, nothing to shift
    x = torch.randn(2, 16, 16, 32)
    with torch.no_grad():
        for attn in (model.stage1[0].attn, model.stage1[1].attn):
            assert torch.allclose(attn(x), _timm_window_attention(attn, x), atol=1e-6)
        # the shifted block: a token at the top-left corner sees its neighbour, not the token the
        # cyclic shift put next to it from the opposite corner
        shifted, moved = model.stage1[1].attn, x.clone()
        moved[:, 0, 0] += 5.0
        diff = (shifted(moved) - shifted(x)).abs().amax(-1)
        assert diff[:, 1, 1].min() > 1e-3 and diff[:, 15, 15].max() < 1e-6
        plain = model.stage1[0].attn  # unshifted: window (0..3, 0..3) only
        diff = (plain(moved) - plain(x)).abs().amax(-1)
        assert diff[:, :4, :4].min() > 0 and diff[:, 4:].max() == 0 and diff[:, :, 4:].max() == 0


def test_patch_merging_halves_the_grid_and_doubles_the_channels():
    model = build_model("swin-mini").eval()
    head, _ = split_model(model, "stage2")
    with torch.no_grad():
        assert head(torch.rand(1, 3, 32, 32)).shape == (1, 8, 8, 64)
    vit = build_model("vit-mini")
    assert vit.patch_embed.pos_embed.shape == (1, 65, 64) and len(vit.split_points) == 7


@pytest.mark.parametrize("arch, split", [("vit-mini", "block2"), ("swin-mini", "stage2"), ("resnet10-w16", "layer2")])
def test_a_head_of_each_family_deploys_and_runs_on_onnx_runtime(tmp_path, arch, split):
    store = ArtifactStore(tmp_path)
    model = save_untrained(store, arch, arch, dataset=("cifar10", (3, 32, 32)))
    record = deploy(store, arch, split, check_inputs=torch.rand(4, 3, 32, 32))
    assert record["onnx_max_abs_diff"] <= 1e-4 and record["tail_onnx_max_abs_diff"] <= 1e-4
    folder = store.deployment_dir(record["deployment_id"])
    x = torch.rand(3, 3, 32, 32)  # another batch size than the export's
    features = head_session((folder / "head.onnx").read_bytes()).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        expected = split_model(model, split)[0](x).numpy()
    assert features.shape == expected.shape == (3, *record["feature_shape"])
    np.testing.assert_allclose(features, expected, atol=1e-4)


@pytest.mark.parametrize("arch", ["vit-mini", "swin-mini"])
def test_partial_gradient_groups_find_every_part_of_the_transformers(arch):
    model = build_model(arch)
    groups = parameter_groups(model)
    assert all(groups[g] for g in GROUPS), {g: len(groups[g]) for g in GROUPS}
    assert all(n.startswith("patch_embed.") for n in groups["stem"])
    assert all(".attn." in n for n in groups["attention"]) and all(".mlp." in n for n in groups["mlp"])
    assert groups["head"] == ["head.weight", "head.bias"] and "norm.weight" in groups["norm"]
    assert not set(groups["norm"]) & (set(groups["attention"]) | set(groups["mlp"]))
    if arch == "vit-mini":
        assert {"patch_embed.cls_token", "patch_embed.pos_embed"} <= set(groups["stem"])
        parts = [n for g in GROUPS[1:] for n in groups[g]]
        assert sorted(parts) == sorted(groups["all"])  # stem, attention, MLP, norm and head: the whole ViT
    else:
        assert "stage1.0.attn.relative_position_bias.table" in groups["attention"]


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")  # the images need no gradient
@pytest.mark.parametrize("arch", ["vit-mini", "swin-mini"])
def test_dp_sgd_trains_the_transformers_with_exact_per_sample_gradients(arch):
    """make_compatible has nothing to replace (LayerNorm only), and Opacus' per-sample gradients
    (its own for Linear, LayerNorm and Conv2d; functorch for the class token, position embedding and
    relative position bias) equal each image's own gradient."""
    from opacus import GradSampleModule

    from models.defences.dp import make_compatible

    torch.manual_seed(0)
    model, replaced = make_compatible(build_model(arch))
    assert replaced == []
    x, y = torch.rand(3, 3, 32, 32), torch.tensor([1, 4, 7])
    gsm = GradSampleModule(model, loss_reduction="sum")
    torch.nn.functional.cross_entropy(gsm(x), y, reduction="sum").backward()
    samples = {n: p.grad_sample.clone() for n, p in model.named_parameters()}
    gsm._close()
    for i in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        for name, p in model.named_parameters():
            assert torch.allclose(samples[name][i], p.grad, atol=1e-5, rtol=1e-3), (name, i)


def test_inputs_the_transformers_cannot_take_are_clear_errors():
    with pytest.raises(SplitlabError, match="multiple of the patch size 4"):
        build_model("vit-mini", input_shape=(3, 30, 30))
    with pytest.raises(SplitlabError, match=r"14 x 14 tokens do not divide into 4 x 4 windows"):
        build_model("swin-mini", input_shape=(1, 28, 28))


@pytest.mark.parametrize("arch", ["vit-mini", "swin-mini"])
def test_gradient_inversion_can_differentiate_the_transformers_gradients(arch):
    """The attacks differentiate a gradient distance with respect to the dummy image: a small step
    against that second-order gradient brings the dummy's gradients closer to the client's."""
    from attacker.attacks.gradient.gradients import client_gradients, loss_gradients

    torch.manual_seed(0)
    model = build_model(arch).eval()
    x, y = torch.rand(1, 3, 32, 32), torch.tensor([3])
    names = parameter_groups(model)["all"]
    target = client_gradients(model, x, y, names)
    dummy = torch.rand(1, 3, 32, 32, requires_grad=True)

    def distance(image):
        grads = loss_gradients(model, image, y, names, create_graph=True)
        return sum(((g - target[n]) ** 2).sum() for n, g in zip(names, grads))

    before = distance(dummy)
    (step,) = torch.autograd.grad(before, dummy)
    assert torch.isfinite(step).all() and step.abs().sum() > 0
    after = distance((dummy - 1e-2 * step / step.norm()).detach().requires_grad_())
    assert after.item() < before.item()
